//! The local application socket: a Unix stream socket (owner-only permissions unless
//! `--local-socket-mode` opens it to the router's group) speaking
//! hyphae's internal framing (`hyphae_wire::framing`). Applications such as the federation
//! edge push messages (optionally waiting for the reply), subscribe to topics (messages are
//! streamed to them as they arrive), reply and ask for status.
//!
//! Every request carries a tag that its answer repeats: [`Pushed`] for an accepted push or
//! reply, [`Deliver`] for a message (with `reply_tag` set when it answers a waiting push),
//! [`Status`], or [`ErrorMsg`]. A connection reads and writes many frames per system call;
//! payloads reach the message task (same thread) as slices of the read buffer, without copies.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyphae_proto::message::{ReceivedMessage, State};
use hyphae_wire::framing::{
    self, Deliver, Destination, ErrorCode, ErrorMsg, Message, MessageState, Pushed, Status,
};
use hyphae_wire::identity::PublicKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::error::StartError;
use super::inbox::{MsgCmd, Pushed as PushOutcome, ReplyError, unix_secs};
use super::link::{READ_MAX, ReadSizer};
use super::shared::Shared;

/// Largest frame body accepted from an application (a 64 MiB payload and its envelope).
const MAX_BODY: usize = framing::DEFAULT_MAX_BODY;
/// How long one subscription poll parks in the message task before it is renewed.
const SUBSCRIPTION_POLL: Duration = Duration::from_secs(30);
/// Requests of one connection being worked on at once; the connection is not read further
/// until one finishes (an application sending faster than the node answers is slowed down).
const MAX_IN_FLIGHT: usize = 1024;
/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: usize = 64;
/// Longest wait for a reply to a push (as the HTTP API's).
const MAX_REPLY_WAIT: Duration = Duration::from_secs(3600);
/// How long the error that closes a connection for bad framing may take to go out.
const LAST_WORDS: Duration = Duration::from_secs(5);

/// Why a connection's reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The application closed its side (or the read failed).
    Closed,
    /// It did not read its answers.
    Unread,
    /// It sent something that is not a frame.
    Corrupt,
}
/// Payloads this size and above keep the receive buffer they were read into (see [`kept`]).
const READ_BUFFER: usize = READ_MAX;

/// Where one connection's answers wait for its writer, bounded in bytes.
#[derive(Debug, Clone)]
struct Outbox {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    /// Told when an answer does not fit.
    overflow: Arc<Notify>,
    /// Told each time the writer has written a batch.
    drained: Arc<Notify>,
    /// Answer bytes that may wait for the application to read them (`--local-socket-outbox-mib`);
    /// past this the application is not reading, and its connection is closed.
    limit: usize,
}

impl Outbox {
    /// Queues an answer; false if the connection is gone or its outbox is full (then the
    /// connection is closed).
    fn send(&self, b: Bytes) -> bool {
        let n = b.len();
        if self.queued.fetch_add(n, Relaxed) + n > self.limit {
            self.queued.fetch_sub(n, Relaxed);
            self.overflow.notify_one();
            return false;
        }
        if self.tx.send(b).is_err() {
            self.queued.fetch_sub(n, Relaxed);
            return false;
        }
        true
    }

    /// Queues a message a subscription has taken from the node's inbox: never refused for
    /// the limit, which a subscription respects by taking a message only when the outbox has
    /// room ([`Outbox::room`]), so the outbox holds at most half the limit plus one message
    /// per subscription ([`MAX_SUBSCRIPTIONS`], each message at most the message subsystem's
    /// largest). False if the connection is gone.
    fn send_taken(&self, b: Bytes) -> bool {
        let n = b.len();
        self.queued.fetch_add(n, Relaxed);
        if self.tx.send(b).is_err() {
            self.queued.fetch_sub(n, Relaxed);
            return false;
        }
        true
    }

    /// Waits until the outbox holds less than half its limit, or the connection is gone: an
    /// application that reads slowly slows its subscriptions down, and the messages wait in the
    /// node's inbox instead of being taken and lost with a connection cut off for not reading.
    async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            if self.queued.load(Relaxed) < self.limit / 2 || self.is_closed() {
                return;
            }
            drained.await;
        }
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The bound local socket. Dropping it removes its file, unless another process has replaced
/// the file since.
#[derive(Debug)]
pub(crate) struct LocalListener {
    listener: Option<std::os::unix::net::UnixListener>,
    path: PathBuf,
    /// (device, inode) of the file we bound.
    id: Option<(u64, u64)>,
    /// Held for the router's lifetime: routers starting at the same instant on one path take
    /// turns deciding whether the socket there is stale.
    _lock: std::fs::File,
}

impl LocalListener {
    /// The listener, for the serving task. The file stays until `self` is dropped.
    pub(crate) fn take(&mut self) -> Option<std::os::unix::net::UnixListener> {
        self.listener.take()
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| Some((m.dev(), m.ino())) == self.id)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket at `path` with permissions `mode` (0600 by default, see
/// `--local-socket-mode`). A socket file nobody listens on (left by a
/// crash) is replaced; one that another process still serves is an error, never stolen. The
/// decision is taken under an exclusive lock on `<path>.lock`, held until the router exits, so
/// two routers starting together on one path cannot both take it.
pub(crate) fn bind(path: &Path, mode: u32) -> Result<LocalListener, StartError> {
    let fail =
        |e: std::io::Error| StartError::Other(format!("local socket {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(fail)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StartError::Other(format!(
                "local socket {}: another router is serving it (or starting on it); stop it, \
                 or give this one its own path with --local-socket (or \"none\")",
                path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(fail(e)),
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(StartError::Other(format!(
                "local socket {}: exists and is not a socket; remove it or pick another path \
                 with --local-socket",
                path.display()
            )));
        }
        Ok(_) => match probe(path) {
            Ok(()) => {
                return Err(StartError::Other(format!(
                    "local socket {}: another process is serving it (a second router?); stop \
                     it, or give this one its own path with --local-socket (or \"none\")",
                    path.display()
                )));
            }
            // Nobody listens: a stale file from a process that did not clean up.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(fail(e)),
                }
            }
            Err(e) => return Err(fail(e)),
        },
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(fail)?;
    let mut bound = LocalListener {
        listener: None,
        path: path.to_owned(),
        id: None,
        _lock: lock,
    };
    let m = std::fs::symlink_metadata(path).map_err(|e| {
        let _ = std::fs::remove_file(path);
        fail(e)
    })?;
    bound.id = Some((m.dev(), m.ino()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    l.set_nonblocking(true).map_err(fail)?;
    bound.listener = Some(l);
    Ok(bound)
}

/// Whether a process serves the socket at `path`: `Ok` if it accepts (or its backlog is full),
/// the connect error otherwise. Never blocks.
fn probe(path: &Path) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    match s.connect(&socket2::SockAddr::unix(path)?) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Accepts applications until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, l: std::os::unix::net::UnixListener) {
    let l = match tokio::net::UnixListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("local socket: {e}");
            return;
        }
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        let conn = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            c = l.accept() => c,
        };
        match conn {
            Ok((s, _)) => {
                tokio::spawn(connection(shared.clone(), s));
            }
            Err(e) => {
                tracing::warn!("local socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Encodes `m` into one frame (an error frame if it cannot be encoded).
fn frame(tag: u64, m: &Message<'_>) -> Bytes {
    let mut b = BytesMut::new();
    if m.encode(MAX_BODY, &mut b).is_err() {
        b.clear();
        let e = ErrorMsg {
            tag,
            code: ErrorCode::TOO_LARGE,
            message: "answer too large to frame",
        };
        let _ = Message::Error(e).encode(MAX_BODY, &mut b);
    }
    b.freeze()
}

fn error(tag: u64, code: ErrorCode, message: &str) -> Bytes {
    frame(tag, &Message::Error(ErrorMsg { tag, code, message }))
}

fn deliver(shared: &Shared, m: &ReceivedMessage, reply_tag: Option<u64>) -> Bytes {
    let d = Deliver {
        id: m.id,
        src_ip: m.src.address().octets(),
        src_pk: *m.src.as_bytes(),
        dst_ip: shared.node.address.octets(),
        dst_pk: *shared.node.public.as_bytes(),
        topic: &m.topic,
        payload: &m.payload,
        reply_tag,
    };
    frame(0, &Message::Deliver(d))
}

async fn connection(shared: Arc<Shared>, stream: UnixStream) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
    let out = Outbox {
        tx,
        queued: Arc::default(),
        overflow: Arc::default(),
        drained: Arc::default(),
        limit: shared.settings.local_socket_outbox,
    };
    let (queued, drained) = (out.queued.clone(), out.drained.clone());
    let mut writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        while out_rx.recv_many(&mut batch, 256).await > 0 {
            let mut buf = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
            for b in batch.drain(..) {
                buf.extend_from_slice(&b);
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            queued.fetch_sub(buf.len(), Relaxed);
            drained.notify_waiters();
        }
    });
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // The room each read is offered follows what the reads return, as on a peer link: an
    // application that sends now and then holds 4 KiB, a busy one up to `READ_MAX` at a time.
    let mut sizer = ReadSizer::new();
    let mut buf = BytesMut::new();
    let mut subscriptions = Vec::new();
    let end = 'conn: loop {
        sizer.prepare(&mut buf);
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = out.overflow.notified() => {
                shared.local_socket_unread_closes.fetch_add(1, Relaxed);
                tracing::warn!("local socket: closing a connection that does not read its answers");
                break End::Unread;
            }
        };
        match read {
            Ok(0) | Err(_) => break End::Closed,
            Ok(n) => {
                sizer.record(n);
            }
        }
        loop {
            let (kind, body) = match framing::split_frame(&mut buf, MAX_BODY) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    out.send(error(0, ErrorCode::BAD_REQUEST, &format!("closing: {e}")));
                    break 'conn End::Corrupt;
                }
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break 'conn End::Closed;
            };
            match Message::decode(kind, &body) {
                Ok(m) => request(&shared, &out, &body, m, &mut subscriptions, permit),
                Err(e) => {
                    out.send(error(
                        0,
                        ErrorCode::BAD_REQUEST,
                        &format!("bad {kind:?} frame: {e}"),
                    ));
                }
            }
        }
    };
    for s in subscriptions {
        s.abort();
    }
    drop(out);
    // An application that only closed its sending side still gets the answers in flight (a
    // reply waits at most MAX_REPLY_WAIT); one that is gone, or is being cut off, does not
    // keep its connection or their answers. Its requests already read still go through (a
    // push written just before the close is sent): their tasks end on their own, and a
    // reply wait whose caller is gone is dropped by the message task.
    let peer_gone = hung_up(&rd);
    match end {
        End::Closed if !peer_gone => {
            let _ = writer.await;
            return;
        }
        End::Corrupt if !peer_gone => {
            let _ = tokio::time::timeout(LAST_WORDS, &mut writer).await;
        }
        _ => {}
    }
    writer.abort();
}

/// Whether the application closed both directions of the connection (not just its sending
/// side): `POLLHUP` on the socket.
#[allow(unsafe_code)]
fn hung_up(rd: &tokio::net::unix::OwnedReadHalf) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: rd.as_ref().as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor `rd` keeps open, and no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// A payload the message subsystem will hold until the message is done (minutes, for a
/// receiver that never acknowledges). A slice of `body` would keep the whole receive buffer it
/// was read into alive that long, up to [`READ_BUFFER`] for a 1 KiB message, so a payload
/// smaller than that gets an allocation of its own. A larger one had the buffer grown for it
/// and is most of its allocation anyway.
fn kept(body: &Bytes, payload: &[u8]) -> Bytes {
    if payload.len() < READ_BUFFER {
        Bytes::copy_from_slice(payload)
    } else {
        body.slice_ref(payload)
    }
}

/// Starts the work for one request; answers go to `out` when ready.
fn request(
    shared: &Arc<Shared>,
    out: &Outbox,
    body: &Bytes,
    m: Message<'_>,
    subscriptions: &mut Vec<tokio::task::JoinHandle<()>>,
    permit: OwnedSemaphorePermit,
) {
    let (shared, out) = (shared.clone(), out.clone());
    match m {
        Message::Push(p) => {
            let (tag, dst, reply_to) = (p.tag, p.dst, p.reply_to);
            let topic = body.slice_ref(p.topic);
            let payload = kept(body, p.payload);
            let wait = p
                .reply_timeout_ms
                .map(|ms| Duration::from_millis(u64::from(ms)).min(MAX_REPLY_WAIT));
            tokio::spawn(async move {
                let _permit = permit;
                let dst = match destination(&shared, dst).await {
                    Ok(d) => d,
                    Err(msg) => {
                        out.send(error(tag, ErrorCode::UNREACHABLE, &msg));
                        return;
                    }
                };
                let answer = match reply_to {
                    Some(id) => send_reply(&shared, tag, id, Some(dst), payload).await,
                    None => match shared.inbox.push(dst, topic, payload, wait).await {
                        Ok(Ok(PushOutcome::Queued(id))) => {
                            frame(tag, &Message::Pushed(Pushed { tag, id }))
                        }
                        Ok(Ok(PushOutcome::Reply(m))) => deliver(&shared, &m, Some(tag)),
                        Ok(Ok(PushOutcome::TimedOut(_))) => {
                            error(tag, ErrorCode::TIMEOUT, "no reply in time")
                        }
                        Ok(Err(e)) => error(tag, ErrorCode::TOO_LARGE, &e.to_string()),
                        Err(_) => error(tag, ErrorCode::UNAVAILABLE, "message subsystem busy"),
                    },
                };
                out.send(answer);
            });
        }
        Message::Subscribe(s) => {
            drop(permit);
            subscriptions.retain(|t| !t.is_finished());
            if subscriptions.len() >= MAX_SUBSCRIPTIONS {
                let msg = format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection");
                out.send(error(s.tag, ErrorCode::BAD_REQUEST, &msg));
                return;
            }
            if s.topic.is_some_and(|t| t.len() > 255) {
                out.send(error(
                    s.tag,
                    ErrorCode::BAD_REQUEST,
                    "topic longer than 255 bytes",
                ));
                return;
            }
            let topic = s.topic.map(|t| body.slice_ref(t));
            subscriptions.push(tokio::spawn(async move {
                loop {
                    out.room().await;
                    if out.is_closed() {
                        return;
                    }
                    let t = topic.clone();
                    let cmd = |tx| MsgCmd::Receive {
                        topic: t,
                        peek: false,
                        timeout: SUBSCRIPTION_POLL,
                        tx,
                    };
                    match shared.inbox.ask_messages(cmd, SUBSCRIPTION_POLL).await {
                        Ok(Some(m)) => {
                            if !out.send_taken(deliver(&shared, &m, None)) {
                                // Gone meanwhile: the message goes back for other receivers.
                                let _ = shared.inbox.messages.send(MsgCmd::Unforwarded(m)).await;
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    if out.is_closed() {
                        return;
                    }
                }
            }));
        }
        Message::Reply(r) => {
            let (tag, id) = (r.tag, r.id);
            let payload = kept(body, r.payload);
            tokio::spawn(async move {
                let _permit = permit;
                let answer = send_reply(&shared, tag, id, None, payload).await;
                out.send(answer);
            });
        }
        Message::StatusQuery(q) => {
            let (tag, id) = (q.tag, q.id);
            tokio::spawn(async move {
                let _permit = permit;
                let answer = match shared
                    .inbox
                    .ask_messages(|tx| MsgCmd::Status { id, tx }, Duration::ZERO)
                    .await
                {
                    Ok(Some((st, at))) => {
                        let unix = |t: std::time::Instant| unix_secs(t, at);
                        let state = match st.state {
                            State::Pending => MessageState::Pending,
                            State::Sending {
                                pending,
                                sent,
                                acked,
                            } => MessageState::Sending {
                                pending: pending as u64,
                                sent: sent as u64,
                                acked: acked as u64,
                            },
                            State::Received => MessageState::Received,
                            State::Read => MessageState::Read,
                            State::Aborted => MessageState::Aborted,
                        };
                        let s = Status {
                            tag,
                            id,
                            dst_ip: st.dst.address().octets(),
                            state,
                            created: unix(st.created),
                            deadline: unix(st.deadline),
                            msg_len: st.len,
                        };
                        frame(tag, &Message::Status(s))
                    }
                    Ok(None) => error(tag, ErrorCode::NOT_FOUND, "unknown message id"),
                    Err(_) => error(tag, ErrorCode::UNAVAILABLE, "message subsystem busy"),
                };
                out.send(answer);
            });
        }
        other => {
            out.send(error(
                0,
                ErrorCode::BAD_REQUEST,
                &format!("{:?} is not a request", other.kind()),
            ));
        }
    }
}

/// Sends a reply to message `id` (to `dst`, or to the message's sender) and returns the answer
/// frame for the application.
async fn send_reply(
    shared: &Shared,
    tag: u64,
    id: hyphae_wire::message::MessageId,
    dst: Option<PublicKey>,
    payload: Bytes,
) -> Bytes {
    let cmd = |tx| MsgCmd::Reply {
        id,
        dst,
        payload,
        tx,
    };
    match shared.inbox.ask_messages(cmd, Duration::ZERO).await {
        Ok(Ok(())) => frame(tag, &Message::Pushed(Pushed { tag, id })),
        Ok(Err(ReplyError::UnknownId)) => error(tag, ErrorCode::NOT_FOUND, "unknown message id"),
        Ok(Err(ReplyError::Push(e))) => error(tag, ErrorCode::BAD_REQUEST, &e.to_string()),
        Err(_) => error(tag, ErrorCode::UNAVAILABLE, "message subsystem busy"),
    }
}

async fn destination(shared: &Shared, d: Destination) -> Result<PublicKey, String> {
    match d {
        Destination::PublicKey(pk) => Ok(PublicKey::from(pk)),
        Destination::Ip(ip) => {
            let ip = std::net::Ipv6Addr::from(ip).into();
            shared.inbox.resolve_key(ip).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(outer: &[u8], inner: &[u8]) -> bool {
        let o = outer.as_ptr() as usize;
        let i = inner.as_ptr() as usize;
        (o..o + outer.len()).contains(&i)
    }

    #[test]
    fn a_held_payload_does_not_keep_its_receive_buffer() {
        let mut read = BytesMut::with_capacity(READ_BUFFER);
        read.extend_from_slice(&[7; 4096]);
        let body = read.freeze();
        let small = kept(&body, &body[100..1124]);
        assert_eq!(&small[..], &body[100..1124]);
        assert!(
            !within(&body, &small),
            "a 1 KiB payload gets its own allocation"
        );

        let big = Bytes::from(vec![9u8; READ_BUFFER + 16]);
        let held = kept(&big, &big[8..]);
        assert!(
            within(&big, &held),
            "a payload that fills its buffer is not copied"
        );
    }
}
