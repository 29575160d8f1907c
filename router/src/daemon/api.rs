//! The admin HTTP API on `--api-addr`, with the reference's paths and JSON (WIRE.md section 6),
//! and Prometheus metrics on `--metrics-api-address`. Handlers only message the control thread
//! and the workers, with a timeout: a busy data plane can delay an answer, never block the API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::endpoint::{Endpoint, Proto};
use super::error::StartError;
use super::inbox::{Admin, Busy, MsgCmd, Pushed, ReplyError, TopicAnswer, TopicOp, unix_secs};
use super::metrics;
use super::shared::Shared;
use super::worker::Workers;
use bytes::Bytes;
use hyphae_proto::message::{PushError, ReceivedMessage, State as MsgState};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::MessageId;

/// What the handlers reach: the shared state (through `Deref`) and the workers.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    shared: Arc<Shared>,
    workers: Workers,
}

impl std::ops::Deref for Api {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

pub(crate) fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<std::net::TcpListener, StartError> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind {
        what,
        addr,
        source,
    })?;
    l.set_nonblocking(true)
        .map_err(|source| StartError::Bind { what, addr, source })?;
    Ok(l)
}

/// The API thread's body: serves the admin API, and the metrics if asked, until shutdown.
pub(crate) fn run(
    shared: Arc<Shared>,
    workers: Workers,
    api: std::net::TcpListener,
    metrics: Option<std::net::TcpListener>,
) {
    let state = Api { shared, workers };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("API runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let app = axum::Router::new()
            .route("/api/v1/admin", get(info))
            .route("/api/v1/admin/peers", get(peers).post(add_peer))
            .route("/api/v1/admin/peers/{endpoint}", delete(remove_peer))
            .route("/api/v1/admin/routes/selected", get(selected))
            .route("/api/v1/admin/routes/fallback", get(fallback))
            .route("/api/v1/admin/routes/queried", get(queried))
            .route("/api/v1/admin/stats/packets", get(packets))
            .route("/api/v1/pubkey/{ip}", get(pubkey))
            .route("/api/v1/messages", get(msg_receive).post(msg_push))
            .route(
                "/api/v1/messages/reply/{id}",
                axum::routing::post(msg_reply),
            )
            .route("/api/v1/messages/status/{id}", get(msg_status))
            .route(
                "/api/v1/messages/topics/default",
                get(topic_default_get).put(topic_default_set),
            )
            .route("/api/v1/messages/topics", get(topics_list).post(topic_add))
            .route("/api/v1/messages/topics/{topic}", delete(topic_remove))
            .route(
                "/api/v1/messages/topics/{topic}/sources",
                get(topic_sources).post(topic_source_add),
            )
            .route(
                "/api/v1/messages/topics/{topic}/sources/{subnet}",
                delete(topic_source_remove),
            )
            .route(
                "/api/v1/messages/topics/{topic}/forward",
                get(topic_forward_get)
                    .put(topic_forward_set)
                    .delete(topic_forward_remove),
            )
            .layer(axum::extract::DefaultBodyLimit::max(MAX_HTTP_BODY))
            .with_state(state.clone());
        tokio::spawn(super::memory::trim_periodically());
        let mut tasks = Vec::new();
        tasks.push(serve(state.shared.clone(), api, app));
        if let Some(m) = metrics {
            let app = axum::Router::new()
                .route("/metrics", get(metrics::prometheus))
                .with_state(state.shared.clone());
            tasks.push(serve(state.shared.clone(), m, app));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn serve(
    shared: Arc<Shared>,
    l: std::net::TcpListener,
    app: axum::Router,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let l = match tokio::net::TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("API listener: {e}");
                return;
            }
        };
        let mut shutdown = shared.shutdown.clone();
        let r = axum::serve(l, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!("API server: {e}");
        }
    })
}

/// 503 for a task that is busy or shutting down.
fn unavailable(e: Busy) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
}

/// Asks the control thread.
async fn ask<T>(
    shared: &Shared,
    f: impl FnOnce(oneshot::Sender<T>) -> Admin,
) -> Result<T, Response> {
    shared.inbox.ask_control(f).await.map_err(unavailable)
}

/// Asks the message task, waiting up to `wait` beyond the usual answer timeout.
async fn to_msg<T>(
    s: &Shared,
    f: impl FnOnce(oneshot::Sender<T>) -> MsgCmd,
    wait: Duration,
) -> Result<T, Response> {
    s.inbox.ask_messages(f, wait).await.map_err(unavailable)
}

async fn info(State(s): State<Api>) -> Json<Value> {
    let n = &s.node;
    Json(json!({
        "nodeSubnet": n.subnet.to_string(),
        "nodeIp": n.address.to_string(),
        "nodePubkey": n.public.to_string(),
        "nodeStartTime": n.start_time,
    }))
}

async fn peers(State(s): State<Api>) -> Result<Json<Value>, Response> {
    let v = ask(&s, Admin::Peers).await?;
    let v: Vec<Value> = v
        .into_iter()
        .map(|p| {
            json!({
                "endpoint": {"proto": p.endpoint.proto.as_str(), "addr": {"socket": p.endpoint.addr.to_string()}},
                "type": p.kind.as_str(),
                "connectionState": p.state,
                "txBytes": p.tx_bytes,
                "rxBytes": p.rx_bytes,
                "discovered": p.discovered,
                "lastConnected": p.last_connected,
            })
        })
        .collect();
    Ok(Json(Value::Array(v)))
}

#[derive(serde::Deserialize)]
struct AddPeer {
    endpoint: String,
}

async fn add_peer(State(s): State<Api>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<AddPeer>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {\"endpoint\": \"proto://address:port\"}",
        )
            .into_response();
    };
    let ep: Endpoint = match req.endpoint.parse() {
        Ok(e) => e,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    // As at startup: a peer this node could never dial is refused, not retried for ever.
    if ep.proto == Proto::Quic && s.settings.quic_port.is_none() {
        let msg = format!("peer {ep}: QUIC is disabled (--disable-quic)");
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    match ask(&s, |tx| Admin::AddPeer(ep, tx)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => (StatusCode::CONFLICT, e).into_response(),
        Err(r) => r,
    }
}

async fn remove_peer(State(s): State<Api>, Path(endpoint): Path<String>) -> Response {
    let ep: Endpoint = match endpoint.parse() {
        Ok(e) => e,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}")).into_response(),
    };
    match ask(&s, |tx| Admin::RemovePeer(ep, tx)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => (StatusCode::NOT_FOUND, e).into_response(),
        Err(r) => r,
    }
}

/// The route list as JSON, written one route at a time: a table of 100k routes is answered
/// without a JSON tree of it in memory (a tree cost about 630 B per route).
async fn routes(s: &Shared, selected: bool) -> Result<Response, Response> {
    let v = ask(s, |tx| Admin::Routes(selected, tx)).await?;
    let mut out = Vec::with_capacity(2 + v.len() * 120);
    out.push(b'[');
    for (i, r) in v.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let metric = if r.metric.is_infinite() {
            json!("infinite")
        } else {
            json!(r.metric.0)
        };
        let route = json!({"subnet": r.subnet.to_string(), "nextHop": r.next_hop, "metric": metric, "seqno": r.seqno});
        if let Err(e) = serde_json::to_writer(&mut out, &route) {
            return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response());
        }
    }
    out.push(b']');
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response())
}

async fn selected(State(s): State<Api>) -> Result<Response, Response> {
    routes(&s, true).await
}

async fn fallback(State(s): State<Api>) -> Result<Response, Response> {
    routes(&s, false).await
}

async fn queried(State(s): State<Api>) -> Result<Json<Value>, Response> {
    let v = ask(&s, Admin::Queried).await?;
    Ok(Json(Value::Array(
        v.into_iter()
            .map(|(sub, secs)| json!({"subnet": sub.to_string(), "expiration": secs.to_string()}))
            .collect(),
    )))
}

async fn pubkey(State(s): State<Api>, Path(ip): Path<String>) -> Result<Response, Response> {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return Ok((StatusCode::BAD_REQUEST, "not an IP address").into_response());
    };
    Ok(match ask(&s, |tx| Admin::PubKey(ip, tx)).await? {
        Some(pk) => Json(json!({"publicKey": pk.to_string()})).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

async fn packets(State(s): State<Api>) -> Json<Value> {
    let mut src = std::collections::BTreeMap::new();
    let mut dst = std::collections::BTreeMap::new();
    for w in s.workers.packet_stats().await {
        for (ip, t) in w.by_source {
            let e: &mut (u64, u64) = src.entry(ip).or_default();
            e.0 += t.packets;
            e.1 += t.bytes;
        }
        for (ip, t) in w.by_destination {
            let e: &mut (u64, u64) = dst.entry(ip).or_default();
            e.0 += t.packets;
            e.1 += t.bytes;
        }
    }
    let list = |m: std::collections::BTreeMap<std::net::Ipv6Addr, (u64, u64)>| {
        m.into_iter()
            .map(|(ip, (n, b))| json!({"ip": ip.to_string(), "packetCount": n, "byteCount": b}))
            .collect::<Vec<_>>()
    };
    Json(json!({"bySource": list(src), "byDestination": list(dst)}))
}

// ---- the message API (WIRE.md section 5.2; binary fields are standard base64) ----

/// Largest message payload the API takes (64 MiB, the subsystem's limit).
const MAX_PAYLOAD: usize = 64 << 20;
/// Largest request body: the payload in base64 plus room for the JSON around it.
const MAX_HTTP_BODY: usize = MAX_PAYLOAD / 3 * 4 + 64 * 1024;
/// Longest a long-poll or a wait for a reply may last.
const MAX_WAIT: Duration = Duration::from_secs(3600);

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

#[derive(serde::Deserialize)]
struct PushBody {
    dst: Option<Dst>,
    topic: Option<String>,
    payload: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Dst {
    Ip(IpAddr),
    Pk(String),
}

#[derive(serde::Deserialize)]
struct PushQuery {
    reply_timeout: Option<u64>,
}

#[derive(serde::Deserialize)]
struct RecvQuery {
    peek: Option<bool>,
    timeout: Option<u64>,
    topic: Option<String>,
}

async fn resolve(s: &Shared, ip: IpAddr) -> Result<PublicKey, Response> {
    s.inbox
        .resolve_key(ip)
        .await
        .map_err(|e| err(StatusCode::NOT_FOUND, e))
}

async fn decode_push(
    s: &Shared,
    body: &[u8],
) -> Result<(Option<PublicKey>, Bytes, Bytes), Response> {
    let req: PushBody = serde_json::from_slice(body).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            format!("invalid message body: {e}"),
        )
    })?;
    let payload =
        unb64(&req.payload).ok_or_else(|| err(StatusCode::BAD_REQUEST, "payload is not base64"))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("payload over {MAX_PAYLOAD} bytes"),
        ));
    }
    let topic = match &req.topic {
        Some(t) => unb64(t).ok_or_else(|| err(StatusCode::BAD_REQUEST, "topic is not base64"))?,
        None => Vec::new(),
    };
    if topic.len() > 255 {
        return Err(err(StatusCode::BAD_REQUEST, "topic longer than 255 bytes"));
    }
    let dst = match req.dst {
        None => None,
        Some(Dst::Pk(hex)) => Some(
            PublicKey::from_hex(&hex)
                .ok_or_else(|| err(StatusCode::BAD_REQUEST, "pk is not 64 hex digits"))?,
        ),
        Some(Dst::Ip(ip)) => Some(resolve(s, ip).await?),
    };
    Ok((dst, Bytes::from(topic), Bytes::from(payload)))
}

fn receive_info(s: &Shared, m: &ReceivedMessage) -> Value {
    let mut v = json!({
        "id": m.id.to_string(),
        "srcIp": m.src.address().to_string(),
        "srcPk": m.src.to_string(),
        "dstIp": s.node.address.to_string(),
        "dstPk": s.node.public.to_string(),
        "payload": b64(&m.payload),
    });
    if !m.topic.is_empty() {
        v["topic"] = json!(b64(&m.topic));
    }
    v
}

fn push_error(e: PushError) -> Response {
    match e {
        PushError::MessageTooLarge => err(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        PushError::TopicTooLarge => err(StatusCode::BAD_REQUEST, e.to_string()),
        _ => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn msg_push(
    State(s): State<Api>,
    axum::extract::Query(q): axum::extract::Query<PushQuery>,
    body: Bytes,
) -> Response {
    let (dst, topic, payload) = match decode_push(&s, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(dst) = dst else {
        return err(StatusCode::BAD_REQUEST, "missing dst");
    };
    let wait = q
        .reply_timeout
        .map(|t| Duration::from_secs(t).min(MAX_WAIT));
    match s
        .inbox
        .push(dst, topic, payload, wait)
        .await
        .map_err(unavailable)
    {
        Ok(Ok(Pushed::Queued(id))) => {
            (StatusCode::CREATED, Json(json!({"id": id.to_string()}))).into_response()
        }
        Ok(Ok(Pushed::Reply(m))) => Json(receive_info(&s, &m)).into_response(),
        Ok(Ok(Pushed::TimedOut(id))) => (
            StatusCode::REQUEST_TIMEOUT,
            Json(json!({"id": id.to_string()})),
        )
            .into_response(),
        Ok(Err(e)) => push_error(e),
        Err(r) => r,
    }
}

async fn msg_receive(
    State(s): State<Api>,
    axum::extract::Query(q): axum::extract::Query<RecvQuery>,
) -> Response {
    let topic = match &q.topic {
        Some(t) => match unb64(t) {
            // No message has a longer topic: such a filter could only hold memory.
            Some(t) if t.len() > 255 => {
                return err(StatusCode::BAD_REQUEST, "topic longer than 255 bytes");
            }
            Some(t) => Some(Bytes::from(t)),
            None => return err(StatusCode::BAD_REQUEST, "topic is not base64"),
        },
        None => None,
    };
    let timeout = Duration::from_secs(q.timeout.unwrap_or(0)).min(MAX_WAIT);
    let peek = q.peek.unwrap_or(false);
    match to_msg(
        &s,
        |tx| MsgCmd::Receive {
            topic,
            peek,
            timeout,
            tx,
        },
        timeout,
    )
    .await
    {
        Ok(Some(m)) => Json(receive_info(&s, &m)).into_response(),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

fn parse_id(id: &str) -> Option<MessageId> {
    let pk =
        (id.len() == 16).then(|| PublicKey::from_hex(&format!("{id}{}", "0".repeat(48))))??;
    let mut b = [0u8; 8];
    b.copy_from_slice(&pk.as_bytes()[..8]);
    Some(MessageId(b))
}

async fn msg_reply(State(s): State<Api>, Path(id): Path<String>, body: Bytes) -> Response {
    let Some(id) = parse_id(&id) else {
        return err(StatusCode::BAD_REQUEST, "id is not 16 hex digits");
    };
    let (dst, _, payload) = match decode_push(&s, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match to_msg(
        &s,
        |tx| MsgCmd::Reply {
            id,
            dst,
            payload,
            tx,
        },
        Duration::ZERO,
    )
    .await
    {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(ReplyError::UnknownId)) => {
            err(StatusCode::NOT_FOUND, "no received message with that id")
        }
        Ok(Err(ReplyError::Push(e))) => push_error(e),
        Err(r) => r,
    }
}

async fn msg_status(State(s): State<Api>, Path(id): Path<String>) -> Response {
    let Some(id) = parse_id(&id) else {
        return err(StatusCode::BAD_REQUEST, "id is not 16 hex digits");
    };
    let (st, at) = match to_msg(&s, |tx| MsgCmd::Status { id, tx }, Duration::ZERO).await {
        Ok(Some(v)) => v,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(r) => return r,
    };
    let to_unix = |t: std::time::Instant| unix_secs(t, at);
    let state = match st.state {
        MsgState::Pending => json!("pending"),
        MsgState::Sending {
            pending,
            sent,
            acked,
        } => {
            json!({"sending": {"pending": pending, "sent": sent, "acked": acked}})
        }
        MsgState::Received => json!("received"),
        MsgState::Read => json!("read"),
        MsgState::Aborted => json!("aborted"),
    };
    Json(json!({
        "dst": st.dst.address().to_string(),
        "state": state,
        "created": to_unix(st.created),
        "deadline": to_unix(st.deadline),
        "msgLen": st.len,
    }))
    .into_response()
}

// ---- topic configuration (the reference's endpoints; topics are base64 in paths) ----

async fn topic_op(s: &Shared, op: TopicOp) -> Result<TopicAnswer, Response> {
    to_msg(s, |tx| MsgCmd::Topics { op, tx }, Duration::ZERO).await
}

// The error is the HTTP answer itself, as for the async handlers' helpers.
#[allow(clippy::result_large_err)]
fn topic_path(t: &str) -> Result<Vec<u8>, Response> {
    match unb64(t) {
        None => Err(err(StatusCode::BAD_REQUEST, "topic is not base64")),
        // As `POST /topics`: no message has a longer topic.
        Some(t) if t.len() > 255 => {
            Err(err(StatusCode::BAD_REQUEST, "topic longer than 255 bytes"))
        }
        Some(t) => Ok(t),
    }
}

#[derive(serde::Deserialize)]
struct AcceptBody {
    accept: bool,
}

#[derive(serde::Deserialize)]
struct SourceBody {
    subnet: String,
}

async fn topic_default_get(State(s): State<Api>) -> Response {
    match topic_op(&s, TopicOp::GetDefault).await {
        Ok(TopicAnswer::Default(a)) => Json(json!({"accept": a})).into_response(),
        Ok(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Err(r) => r,
    }
}

async fn topic_default_set(State(s): State<Api>, body: Bytes) -> Response {
    let Ok(b) = serde_json::from_slice::<AcceptBody>(&body) else {
        return err(StatusCode::BAD_REQUEST, "expected {\"accept\": true|false}");
    };
    match topic_op(&s, TopicOp::SetDefault(b.accept)).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

async fn topics_list(State(s): State<Api>) -> Response {
    match topic_op(&s, TopicOp::List).await {
        Ok(TopicAnswer::Topics(t)) => {
            Json(t.iter().map(|t| b64(t)).collect::<Vec<_>>()).into_response()
        }
        Ok(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Err(r) => r,
    }
}

async fn topic_add(State(s): State<Api>, body: Bytes) -> Response {
    // The reference takes the topic as a JSON array of bytes.
    let Ok(t) = serde_json::from_slice::<Vec<u8>>(&body) else {
        return err(
            StatusCode::BAD_REQUEST,
            "expected the topic as a JSON array of bytes",
        );
    };
    if t.len() > 255 {
        return err(StatusCode::BAD_REQUEST, "topic longer than 255 bytes");
    }
    match topic_op(&s, TopicOp::Add(t)).await {
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(r) => r,
    }
}

async fn topic_remove(State(s): State<Api>, Path(topic): Path<String>) -> Response {
    topic_change(&s, &topic, TopicOp::Remove).await
}

/// Decodes the topic in the path, applies `op` to it, answers 204.
async fn topic_change(s: &Shared, topic: &str, op: impl FnOnce(Vec<u8>) -> TopicOp) -> Response {
    let t = match topic_path(topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match topic_op(s, op(t)).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

async fn topic_sources(State(s): State<Api>, Path(topic): Path<String>) -> Response {
    let t = match topic_path(&topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match topic_op(&s, TopicOp::Sources(t)).await {
        Ok(TopicAnswer::Sources(Some(v))) => {
            Json(v.iter().map(ToString::to_string).collect::<Vec<_>>()).into_response()
        }
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
        Err(r) => r,
    }
}

async fn topic_source_add(
    State(s): State<Api>,
    Path(topic): Path<String>,
    body: Bytes,
) -> Response {
    let t = match topic_path(&topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(b) = serde_json::from_slice::<SourceBody>(&body) else {
        return err(StatusCode::BAD_REQUEST, "expected {\"subnet\": \"...\"}");
    };
    let Ok(subnet) = b.subnet.parse::<hyphae_wire::Subnet>() else {
        return err(StatusCode::BAD_REQUEST, "not a subnet");
    };
    match topic_op(&s, TopicOp::AddSource(t, subnet)).await {
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(r) => r,
    }
}

async fn topic_source_remove(
    State(s): State<Api>,
    Path((topic, subnet)): Path<(String, String)>,
) -> Response {
    let t = match topic_path(&topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(subnet) = subnet.parse::<hyphae_wire::Subnet>() else {
        return err(StatusCode::BAD_REQUEST, "not a subnet");
    };
    match topic_op(&s, TopicOp::RemoveSource(t, subnet)).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

async fn topic_forward_get(State(s): State<Api>, Path(topic): Path<String>) -> Response {
    let t = match topic_path(&topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match topic_op(&s, TopicOp::GetForward(t)).await {
        Ok(TopicAnswer::Forward(p)) => {
            Json(p.map(|p| p.to_string_lossy().into_owned())).into_response()
        }
        Ok(_) => Json(Value::Null).into_response(),
        Err(r) => r,
    }
}

/// The reference's body for a topic's forward socket.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ForwardSocket {
    socket_path: std::path::PathBuf,
}

async fn topic_forward_set(
    State(s): State<Api>,
    Path(topic): Path<String>,
    body: Bytes,
) -> Response {
    let f: ForwardSocket = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return err(StatusCode::UNPROCESSABLE_ENTITY, format!("body: {e}")),
    };
    if f.socket_path.as_os_str().is_empty() {
        return err(StatusCode::UNPROCESSABLE_ENTITY, "socketPath is empty");
    }
    let dir = &s.settings.topic_forward_dir;
    let escapes = f
        .socket_path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if !f.socket_path.is_absolute() || escapes || !f.socket_path.starts_with(dir) {
        return err(
            StatusCode::FORBIDDEN,
            format!(
                "forward sockets must live under {} (--topic-forward-dir)",
                dir.display()
            ),
        );
    }
    topic_change(&s, &topic, |t| TopicOp::SetForward(t, Some(f.socket_path))).await
}

async fn topic_forward_remove(State(s): State<Api>, Path(topic): Path<String>) -> Response {
    topic_change(&s, &topic, |t| TopicOp::SetForward(t, None)).await
}
