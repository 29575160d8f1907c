//! Thin drivers to a router: push a message, ask whether it reached its destination's router,
//! and receive the messages on the relay's topics.
//!
//! * [`RouterAddr::Unix`]: a hyphae-router's local socket (hyphae framing: `Push` -> `Pushed`,
//!   `Subscribe` -> a stream of `Deliver`, `StatusQuery` -> `Status`). One connection, many
//!   frames per system call, reconnected with backoff when the router restarts.
//! * [`RouterAddr::Http`]: any mycelium 0.7 node's message API (`POST /api/v1/messages`,
//!   `GET /api/v1/messages?timeout=&topic=`, `GET /api/v1/messages/status/{id}`), with a few
//!   long polls per topic.
//!
//! What arrives goes to one bounded channel; when the relay cannot keep up the reader waits,
//! so the router's own bounded queues push back instead of this process growing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyphae_wire::framing::{
    self, Destination, Message, MessageState, Push, StatusQuery, Subscribe,
};
use hyphae_wire::message::MessageId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::config::RouterAddr;
use crate::relay::{PeerKey, TOPIC};

/// How long a push or a status query may wait for the router's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued toward the local socket before pushes wait.
const WRITE_QUEUE: usize = 1024;
/// Largest frame accepted from the router.
const MAX_FRAME: usize = framing::DEFAULT_MAX_BODY;
/// Polling a message API: a stock node (0.7.10) answers nothing else while a long poll is
/// pending (a push or a status query waits it out), so the edge polls without waiting
/// (`timeout=0`), again at once after a message, and after an empty answer waits from
/// `HTTP_IDLE_MIN` doubling up to `HTTP_IDLE_MAX`; a push starts the short waits again, since
/// an answer usually follows it.
const HTTP_IDLE_MIN: Duration = Duration::from_millis(1);
/// See [`HTTP_IDLE_MIN`].
const HTTP_IDLE_MAX: Duration = Duration::from_millis(50);

/// A message for this edge.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The sender (its router's public key).
    pub src: PeerKey,
    /// The topic.
    pub topic: Bytes,
    /// The payload.
    pub payload: Bytes,
}

/// Why the router did not take a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OverlayError {
    /// No connection to the router.
    #[error("router not connected")]
    Disconnected,
    /// The router did not answer in time.
    #[error("router did not answer in time")]
    Timeout,
    /// The router refused (its message).
    #[error("router refused: {0}")]
    Refused(String),
}

/// A connection to a router, kept up in the background.
#[derive(Debug, Clone)]
pub struct Overlay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: RouterAddr,
    connected: AtomicBool,
    /// Unix: the current connection's writer and the answers awaited by tag.
    writer: Mutex<Option<mpsc::Sender<Bytes>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_tag: AtomicU64,
    /// HTTP: the client.
    http: Option<Client<HttpConnector, Full<Bytes>>>,
    /// Messages pushed, failed pushes, messages received.
    pushed: AtomicU64,
    push_failed: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// HTTP: a push happened (the poll loop shortens its wait).
    pushed_now: tokio::sync::Notify,
}

#[derive(Debug)]
enum Answer {
    Pushed(MessageId),
    Status(MessageState),
    Error(String),
}

/// Counters of the router connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct OverlayStats {
    /// Messages the router accepted.
    pub pushed: u64,
    /// Pushes that failed.
    pub push_failed: u64,
    /// Messages received.
    pub received: u64,
    /// Connections made to the router after the first.
    pub reconnects: u64,
}

impl Overlay {
    /// Starts the connection to `addr`; received messages go to `incoming`.
    pub fn start(addr: RouterAddr, incoming: mpsc::Sender<Incoming>) -> Self {
        let http = matches!(addr, RouterAddr::Http(_)).then(|| {
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(c)
        });
        let inner = Arc::new(Inner {
            addr: addr.clone(),
            connected: AtomicBool::new(false),
            writer: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            next_tag: AtomicU64::new(1),
            http,
            pushed: AtomicU64::new(0),
            push_failed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
            pushed_now: tokio::sync::Notify::new(),
        });
        let mut tasks = Vec::new();
        match addr {
            RouterAddr::Unix(path) => {
                tasks.push(tokio::spawn(unix_loop(inner.clone(), path, incoming)));
            }
            RouterAddr::Http(_) => {
                tasks.push(tokio::spawn(http_poll(inner.clone(), incoming)));
            }
        }
        *inner.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        Self { inner }
    }

    /// Closes the connection to the router for good (subscriptions end with it).
    pub fn close(&self) {
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.inner.connected.store(false, Ordering::Relaxed);
    }

    /// Whether the router is reachable (local socket connected, or the last API call worked).
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// The router's address as configured.
    pub fn addr(&self) -> &RouterAddr {
        &self.inner.addr
    }

    /// Counters.
    pub fn stats(&self) -> OverlayStats {
        let i = &self.inner;
        OverlayStats {
            pushed: i.pushed.load(Ordering::Relaxed),
            push_failed: i.push_failed.load(Ordering::Relaxed),
            received: i.received.load(Ordering::Relaxed),
            reconnects: i.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Pushes `payload` to `dst` on the relay's topic; the id it travels under.
    pub async fn push(&self, dst: PeerKey, payload: Bytes) -> Result<MessageId, OverlayError> {
        let topic = TOPIC;
        let r = match &self.inner.addr {
            RouterAddr::Unix(_) => {
                let tag = self.inner.next_tag.fetch_add(1, Ordering::Relaxed);
                let mut frame = BytesMut::with_capacity(payload.len() + 96);
                let push = Push {
                    tag,
                    dst: Destination::PublicKey(dst),
                    topic,
                    payload: &payload,
                    reply_to: None,
                    reply_timeout_ms: None,
                };
                match Message::Push(push).encode(MAX_FRAME, &mut frame) {
                    Ok(()) => match self.inner.ask(tag, frame.freeze()).await {
                        Ok(Answer::Pushed(id)) => Ok(id),
                        Ok(Answer::Error(e)) => Err(OverlayError::Refused(e)),
                        Ok(Answer::Status(_)) => Err(OverlayError::Refused("bad answer".into())),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(OverlayError::Refused(e.to_string())),
                }
            }
            RouterAddr::Http(_) => {
                let r = self.inner.http_push(dst, topic, &payload).await;
                self.inner.pushed_now.notify_one();
                r
            }
        };
        match &r {
            Ok(_) => self.inner.pushed.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.inner.push_failed.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    /// Whether message `id` reached its destination's router (its INIT was acknowledged).
    pub async fn delivered(&self, id: MessageId) -> Result<bool, OverlayError> {
        let state = match &self.inner.addr {
            RouterAddr::Unix(_) => {
                let tag = self.inner.next_tag.fetch_add(1, Ordering::Relaxed);
                let mut frame = BytesMut::new();
                let q = Message::StatusQuery(StatusQuery { tag, id });
                q.encode(MAX_FRAME, &mut frame)
                    .map_err(|e| OverlayError::Refused(e.to_string()))?;
                match self.inner.ask(tag, frame.freeze()).await? {
                    Answer::Status(s) => {
                        !matches!(s, MessageState::Pending | MessageState::Aborted)
                    }
                    // An unknown id: the router restarted; it certainly did not deliver.
                    Answer::Error(_) | Answer::Pushed(_) => false,
                }
            }
            RouterAddr::Http(_) => {
                let path = format!("/api/v1/messages/status/{id}");
                let (status, body) = self.inner.http_call("GET", &path, None).await?;
                if status != 200 {
                    return Ok(false);
                }
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| OverlayError::Refused(e.to_string()))?;
                !matches!(v["state"].as_str(), Some("pending" | "aborted"))
            }
        };
        Ok(state)
    }
}

impl Inner {
    /// Sends a framed request on the local socket and waits for the answer with its tag.
    async fn ask(&self, tag: u64, frame: Bytes) -> Result<Answer, OverlayError> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(OverlayError::Disconnected)?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tag, tx);
        let forget = || {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&tag);
        };
        if tokio::time::timeout(ANSWER_TIMEOUT, writer.send(frame))
            .await
            .map_or(true, |r| r.is_err())
        {
            forget();
            return Err(OverlayError::Disconnected);
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err(OverlayError::Disconnected),
            Err(_) => {
                forget();
                Err(OverlayError::Timeout)
            }
        }
    }

    fn answer(&self, tag: u64, a: Answer) {
        let tx = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tag);
        if let Some(tx) = tx {
            let _ = tx.send(a);
        }
    }

    async fn http_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), OverlayError> {
        let (Some(client), RouterAddr::Http(addr)) = (&self.http, &self.addr) else {
            return Err(OverlayError::Disconnected);
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| OverlayError::Refused(e.to_string()))?;
        let Ok(res) = client.request(req).await else {
            self.connected.store(false, Ordering::Relaxed);
            return Err(OverlayError::Disconnected);
        };
        self.connected.store(true, Ordering::Relaxed);
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|_| OverlayError::Disconnected)?
            .to_bytes();
        Ok((status, body))
    }

    async fn http_push(
        &self,
        dst: PeerKey,
        topic: &[u8],
        payload: &[u8],
    ) -> Result<MessageId, OverlayError> {
        let body = serde_json::json!({
            "dst": {"pk": hex::encode(dst)},
            "topic": B64.encode(topic),
            "payload": B64.encode(payload),
        });
        let (status, res) = tokio::time::timeout(
            ANSWER_TIMEOUT,
            self.http_call(
                "POST",
                "/api/v1/messages",
                Some(body.to_string().into_bytes()),
            ),
        )
        .await
        .map_err(|_| OverlayError::Timeout)??;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&res).into_owned();
            return Err(OverlayError::Refused(format!("{status}: {text}")));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&res).map_err(|e| OverlayError::Refused(e.to_string()))?;
        v["id"]
            .as_str()
            .and_then(parse_message_id)
            .ok_or_else(|| OverlayError::Refused("no message id in the answer".into()))
    }
}

fn parse_message_id(s: &str) -> Option<MessageId> {
    let mut id = [0u8; 8];
    hex::decode_to_slice(s, &mut id).ok()?;
    Some(MessageId(id))
}

/// Keeps a connection to the local socket: subscribes to the relay's topics, reads answers
/// and messages, and reconnects with backoff.
async fn unix_loop(inner: Arc<Inner>, path: std::path::PathBuf, incoming: mpsc::Sender<Incoming>) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        let stream = match tokio::net::UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("router socket {}: {e}", path.display());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if !first {
            inner.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        backoff = Duration::from_millis(50);
        tracing::info!("connected to the router at {}", path.display());
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        // The subscription goes first on the new connection.
        let mut b = BytesMut::new();
        let s = Subscribe {
            tag: 0,
            topic: Some(TOPIC),
        };
        if Message::Subscribe(s).encode(MAX_FRAME, &mut b).is_ok() {
            let _ = tx.try_send(b.freeze());
        }
        *inner.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        inner.connected.store(true, Ordering::Relaxed);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            let mut buf = BytesMut::new();
            while rx.recv_many(&mut batch, 256).await > 0 {
                buf.clear();
                for b in batch.drain(..) {
                    buf.extend_from_slice(&b);
                }
                if wr.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = BytesMut::with_capacity(256 * 1024);
        'conn: loop {
            buf.reserve(64 * 1024);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            loop {
                let (kind, body) = match framing::split_frame(&mut buf, MAX_FRAME) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("router socket: bad frame, reconnecting: {e}");
                        break 'conn;
                    }
                };
                match Message::decode(kind, &body) {
                    Ok(Message::Pushed(p)) => inner.answer(p.tag, Answer::Pushed(p.id)),
                    Ok(Message::Status(s)) => inner.answer(s.tag, Answer::Status(s.state)),
                    Ok(Message::Error(e)) => {
                        if e.tag == 0 {
                            tracing::warn!("router socket: {}", e.message);
                        }
                        inner.answer(e.tag, Answer::Error(e.message.to_owned()));
                    }
                    Ok(Message::Deliver(d)) if d.reply_tag.is_none() => {
                        inner.received.fetch_add(1, Ordering::Relaxed);
                        let m = Incoming {
                            src: d.src_pk,
                            topic: body.slice_ref(d.topic),
                            payload: if d.payload.is_empty() {
                                Bytes::new()
                            } else {
                                body.slice_ref(d.payload)
                            },
                        };
                        if incoming.send(m).await.is_err() {
                            return;
                        }
                    }
                    Ok(other) => tracing::debug!("router socket: ignoring {:?}", other.kind()),
                    Err(e) => tracing::warn!("router socket: undecodable {kind:?} frame: {e}"),
                }
            }
        }
        inner.connected.store(false, Ordering::Relaxed);
        *inner.writer.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // Everything awaited on this connection is lost.
        inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        writer.abort();
        tracing::warn!("lost the router at {}; reconnecting", path.display());
    }
}

/// The long poll loop on a message API.
async fn http_poll(inner: Arc<Inner>, incoming: mpsc::Sender<Incoming>) {
    let topic_q = percent_encode(&B64.encode(TOPIC));
    let path = format!("/api/v1/messages?timeout=0&topic={topic_q}");
    let mut idle = HTTP_IDLE_MIN;
    loop {
        match inner.http_call("GET", &path, None).await {
            Ok((200, body)) => {
                idle = HTTP_IDLE_MIN;
                let Some(m) = parse_received(&body) else {
                    tracing::warn!("message API: undecodable message");
                    continue;
                };
                inner.received.fetch_add(1, Ordering::Relaxed);
                if incoming.send(m).await.is_err() {
                    return;
                }
            }
            Ok((204, _)) => {
                tokio::select! {
                    () = tokio::time::sleep(idle) => idle = (idle * 2).min(HTTP_IDLE_MAX),
                    () = inner.pushed_now.notified() => idle = HTTP_IDLE_MIN,
                }
            }
            Ok((status, _)) => {
                tracing::warn!("message API answered {status} to a receive");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn parse_received(body: &[u8]) -> Option<Incoming> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut src = [0u8; 32];
    hex::decode_to_slice(v["srcPk"].as_str()?, &mut src).ok()?;
    let topic = match v["topic"].as_str() {
        Some(t) => B64.decode(t).ok()?,
        None => Vec::new(),
    };
    let payload = B64.decode(v["payload"].as_str()?).ok()?;
    Some(Incoming {
        src,
        topic: Bytes::from(topic),
        payload: Bytes::from(payload),
    })
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_messages_from_the_api_parse() {
        let body = serde_json::json!({
            "id": "0011223344556677",
            "srcIp": "400::1",
            "srcPk": "ab".repeat(32),
            "dstIp": "400::2",
            "dstPk": "cd".repeat(32),
            "topic": B64.encode(TOPIC),
            "payload": B64.encode(b"HY\x01"),
        });
        let m = parse_received(body.to_string().as_bytes()).unwrap();
        assert_eq!(m.src, [0xab; 32]);
        assert_eq!(&m.topic[..], TOPIC);
        assert_eq!(&m.payload[..], b"HY\x01");
        assert!(parse_received(b"{\"srcPk\": \"zz\"}").is_none());
        assert_eq!(percent_encode("a+b/c="), "a%2Bb%2Fc%3D");
        assert_eq!(
            parse_message_id("0011223344556677").map(|i| i.0[7]),
            Some(0x77)
        );
        assert!(parse_message_id("xyz").is_none());
    }
}
