//! The homeserver's HTTPS CONNECT proxy.
//!
//! * `CONNECT name:port` for a routed name (the port defaults to 8448 for a route without
//!   one): the edge terminates TLS with a certificate for the name minted from the site CA and
//!   relays every HTTP/1.1 request on the kept-alive connection over the overlay.
//! * `CONNECT name:443` for a routed name without a port: the edge answers the well-known
//!   fetch itself (`{"m.server": "name:8448"}`) and 404 to anything else.
//! * Anything else, and a routed destination that is down with `fallback = "direct"`: a plain
//!   byte tunnel (ordinary federation, TLS end to end), refused with 403 when the target
//!   address is not public and not in `tunnel_allow` (the homeserver's own IP blacklist does not
//!   apply behind a proxy).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::auth::constant_time_eq;
use crate::body::{ChannelBody, FirstPart, read_first, send_rest};
use crate::config::canonical_ip;
use crate::edge::{Edge, RequestEvent};
use crate::egress::{REQUEST_HEADERS, RESPONSE_HEADERS};
use crate::relay::{Failure, RequestHead, ResponseHead};
use crate::routes::{DEFAULT_PORT, Entry, Fallback, Target};

/// A response body.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// How long a tunnel's target may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a body may pause between two frames.
const BODY_IDLE: Duration = Duration::from_secs(60);
/// How long a homeserver may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts homeserver connections until `shutdown` turns true.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("proxy accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let edge = edge.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let edge = edge.clone();
                async move { Ok::<_, Infallible>(connect(edge, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|e| match e {}).boxed()
}

/// Matrix-style JSON error.
fn matrix_error(status: u16, msg: &str) -> Response<Body> {
    let body = serde_json::json!({"errcode": "M_UNKNOWN", "error": msg}).to_string();
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn connect(edge: Arc<Edge>, mut req: Request<Incoming>) -> Response<Body> {
    let m = &edge.metrics;
    if req.method() != Method::CONNECT {
        m.inc(&m.proxy_bad_requests);
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "this proxy only takes CONNECT (federation is always HTTPS)",
        );
    }
    if let Some((user, pass)) = &edge.config.proxy_auth
        && !proxy_auth_ok(&req, user, pass)
    {
        m.inc(&m.proxy_auth_failed);
        let mut r = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy credentials needed",
        );
        r.headers_mut().insert(
            hyper::header::PROXY_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"hyphae-edge\""),
        );
        return r;
    }
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| Some((a.host().to_owned(), a.port_u16()?)))
    else {
        m.inc(&m.proxy_bad_requests);
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let host_bare = host.trim_matches(['[', ']']).to_owned();
    let mut target = edge.routes.target(&host, port);
    if let Some(e) = route_of(&edge, &target)
        && e.fallback == Fallback::Direct
        && edge.is_down(&e.pubkey)
    {
        target = Target::Tunnel;
    }
    match target {
        Target::Relay(entry) => {
            m.inc(&m.connects_relayed);
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match upgrade.await {
                    Ok(up) => serve_relayed(edge, entry, host_bare, up).await,
                    Err(e) => tracing::debug!("CONNECT upgrade: {e}"),
                }
            });
            Response::new(full(Bytes::new()))
        }
        Target::WellKnown(name) => {
            m.inc(&m.connects_well_known);
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match upgrade.await {
                    Ok(up) => serve_well_known(edge, name, up).await,
                    Err(e) => tracing::debug!("CONNECT upgrade: {e}"),
                }
            });
            Response::new(full(Bytes::new()))
        }
        Target::Tunnel => {
            let upstream = match open_tunnel(&edge, &host_bare, port).await {
                Ok(s) => s,
                Err((status, msg)) => {
                    if status == StatusCode::FORBIDDEN {
                        m.inc(&m.tunnels_refused);
                        tracing::info!("tunnel to {host}:{port} refused: {msg}");
                    } else {
                        m.inc(&m.tunnels_failed);
                    }
                    return text(status, &msg);
                }
            };
            m.inc(&m.connects_tunnelled);
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    tunnel(TokioIo::new(up), upstream).await;
                }
            });
            Response::new(full(Bytes::new()))
        }
    }
}

/// A direct tunnel with nothing moving either way for this long is closed.
const TUNNEL_IDLE: Duration = Duration::from_secs(300);
/// Once one side of a tunnel has closed, the other has this long after the last byte moved to
/// finish (a target that never answers nor closes must not hold the tunnel).
const TUNNEL_HALF_CLOSED: Duration = Duration::from_secs(10);

/// Copies both ways between our homeserver's connection `a` and the target `b` until both
/// have closed, one has been closed for [`TUNNEL_HALF_CLOSED`] without bytes moving, or
/// nothing moved for [`TUNNEL_IDLE`].
async fn tunnel<A, B>(a: A, b: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Copies `r` to `w` until `r` ends (then closes `w`'s sending side), noting in `moved`
    /// when bytes last went.
    async fn pump(
        mut r: impl AsyncRead + Unpin,
        mut w: impl AsyncWrite + Unpin,
        moved: &AtomicU64,
        t0: tokio::time::Instant,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return w.shutdown().await;
            }
            w.write_all(&buf[..n]).await?;
            moved.store(t0.elapsed().as_millis() as u64, Relaxed);
        }
    }

    let t0 = tokio::time::Instant::now();
    // Milliseconds from t0 to the last byte moved, either way.
    let moved = AtomicU64::new(0);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let up = pump(ar, bw, &moved, t0);
    let down = pump(br, aw, &moved, t0);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        let last = t0 + Duration::from_millis(moved.load(Relaxed));
        let limit = if up_done || down_done {
            TUNNEL_HALF_CLOSED
        } else {
            TUNNEL_IDLE
        };
        let deadline = last + limit;
        let ended: std::io::Result<()> = tokio::select! {
            r = &mut up, if !up_done => { up_done = true; r }
            r = &mut down, if !down_done => { down_done = true; r }
            () = tokio::time::sleep_until(deadline) => {
                // Unless bytes moved while this slept.
                if t0 + Duration::from_millis(moved.load(Relaxed)) + limit <= tokio::time::Instant::now() {
                    return;
                }
                Ok(())
            }
        };
        if ended.is_err() || (up_done && down_done) {
            return;
        }
    }
}

/// The route behind a CONNECT target, if any.
fn route_of(edge: &Edge, target: &Target) -> Option<Arc<Entry>> {
    match target {
        Target::Relay(e) => Some(e.clone()),
        Target::WellKnown(h) => edge
            .routes
            .get(h)
            .or_else(|| edge.routes.get(&format!("{h}:{DEFAULT_PORT}"))),
        Target::Tunnel => None,
    }
}

fn proxy_auth_ok(req: &Request<Incoming>, user: &str, pass: &str) -> bool {
    let Some(v) = req
        .headers()
        .get(hyper::header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let want = format!("{user}:{pass}");
    constant_time_eq(&raw, want.as_bytes())
}

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // site-local (deprecated, still routed on some networks)
                || (s[0] & 0xffc0) == 0xfec0
                // IPv4-compatible (::a.b.c.d) and IPv4-translated (::ffff:0:a.b.c.d)
                || s[..6] == [0; 6]
                || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0)
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] & 0xfe00) == 0x0400
                || (s[0] == 0x64 && s[1] == 0xff9b)
                || (s[0] == 0x2002)
                || s[0] == 0x0100)
        }
    }
}

/// Resolves and connects a tunnel's target: the first allowed address that accepts.
async fn open_tunnel(
    edge: &Edge,
    host: &str,
    port: u16,
) -> Result<TcpStream, (StatusCode, String)> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("cannot resolve {host}: {e}"),
                )
            })?
            .collect(),
    };
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| {
            is_public(a.ip()) || edge.config.tunnel_allow.iter().any(|c| c.contains(a.ip()))
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            StatusCode::FORBIDDEN,
            format!("{host}:{port} is not a public address (add it to tunnel_allow to allow it)"),
        ));
    }
    let mut last = String::new();
    for a in allowed {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("{a}: {e}"),
            Err(_) => last = format!("{a}: timed out"),
        }
    }
    Err((
        StatusCode::BAD_GATEWAY,
        format!("cannot reach {host}:{port}: {last}"),
    ))
}

async fn tls_accept(
    edge: &Edge,
    name: &str,
    up: hyper::upgrade::Upgraded,
) -> Option<tokio_rustls::server::TlsStream<TokioIo<hyper::upgrade::Upgraded>>> {
    let cfg = match edge.ca.server_config(name) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("certificate for {name}: {e}");
            return None;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(TokioIo::new(up))).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::info!("TLS from the homeserver for {name}: {e}");
            None
        }
        Err(_) => None,
    }
}

async fn serve_well_known(edge: Arc<Edge>, name: String, up: hyper::upgrade::Upgraded) {
    let Some(tls) = tls_accept(&edge, &name, up).await else {
        return;
    };
    let m_server = format!("{name}:{DEFAULT_PORT}");
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let m_server = m_server.clone();
        async move {
            let r = if req.method() == Method::GET
                && req.uri().path() == "/.well-known/matrix/server"
            {
                let body = serde_json::json!({"m.server": m_server}).to_string();
                let mut r = Response::new(full(Bytes::from(body)));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            } else {
                matrix_error(404, "not found")
            };
            Ok::<_, Infallible>(r)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

async fn serve_relayed(
    edge: Arc<Edge>,
    entry: Arc<Entry>,
    name: String,
    up: hyper::upgrade::Upgraded,
) {
    let Some(tls) = tls_accept(&edge, &name, up).await else {
        return;
    };
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (edge, entry) = (edge.clone(), entry.clone());
        async move { Ok::<_, Infallible>(relay(edge, entry, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

/// Relays one request over the overlay and returns the destination's real response (or
/// 502/504 when the overlay or the destination edge fails).
async fn relay(edge: Arc<Edge>, entry: Arc<Entry>, req: Request<Incoming>) -> Response<Body> {
    // Counted until the last body byte is handed over (a shutdown waits for it).
    let active = edge.enter();
    let m = &edge.metrics;
    m.inc(&m.requests_relayed);
    let t0 = Instant::now();
    let (parts, mut body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .as_bytes();
    let head = RequestHead {
        method: parts.method.as_str().to_owned(),
        target: Bytes::copy_from_slice(target),
        headers: parts
            .headers
            .iter()
            .filter(|(n, _)| REQUEST_HEADERS.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    };
    // The connection was opened for the route as it was then: if the operator has since
    // re-pinned the name to another key (or removed it, or changed its fallback), the request
    // is refused and the connection closed, and the homeserver's retry takes the route as it
    // is now.
    let current = edge.routes.get(&entry.server_name);
    if current
        .as_deref()
        .is_none_or(|c| c.pubkey != entry.pubkey || c.fallback != entry.fallback)
    {
        let mut r = matrix_error(502, "the route to this server changed: reconnect");
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return r;
    }
    let inline = edge.limits().inline_body;
    let part_size = edge.limits().part_size;
    // The body up to one inline part travels with the head; the rest streams.
    let Ok(FirstPart { first, carry, more }) = read_first(&mut body, inline, BODY_IDLE).await
    else {
        return matrix_error(400, "could not read the request body");
    };
    let (mut guard, mut events) = match edge.start_request(entry.pubkey, head, first, more).await {
        Ok(v) => v,
        Err(f) => return failed(&edge, &entry, f),
    };
    let id = guard.id();
    // Our upload streams in its own task as credit arrives.
    let (credit_tx, credit_rx) = mpsc::channel::<u64>(64);
    let uploader = more.then(|| {
        let edge = edge.clone();
        tokio::spawn(upload(edge, id, body, carry, part_size, credit_rx))
    });
    let response = loop {
        match events.recv().await {
            Some(RequestEvent::Credit(c)) => {
                let _ = credit_tx.try_send(c);
            }
            Some(RequestEvent::Response { head, body, more }) => break (head, body, more),
            Some(RequestEvent::Failed(f)) => {
                guard.disarm();
                if let Some(u) = uploader {
                    u.abort();
                }
                return failed(&edge, &entry, f);
            }
            Some(RequestEvent::Body { .. }) => {}
            None => {
                guard.disarm();
                return failed(&edge, &entry, Failure::Busy);
            }
        }
    };
    if let Some(u) = uploader {
        u.abort();
    }
    m.inc(&m.responses_relayed);
    m.observe_relay(t0.elapsed());
    let (rhead, first, more) = response;
    let mut r = if more {
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.try_send(Ok(hyper::body::Frame::data(first)));
        let edge2 = edge.clone();
        tokio::spawn(async move {
            let _active = active;
            while let Some(ev) = events.recv().await {
                match ev {
                    RequestEvent::Body { data, more } => {
                        let n = data.len() as u64;
                        if tx.send(Ok(hyper::body::Frame::data(data))).await.is_err() {
                            return; // The homeserver went away: the guard cancels.
                        }
                        edge2.consumed(id, n);
                        if !more {
                            guard.disarm();
                            return;
                        }
                    }
                    RequestEvent::Failed(_) => {
                        guard.disarm();
                        break;
                    }
                    _ => {}
                }
            }
            // The body ended before its last part: the homeserver must see a broken response,
            // never a short one that looks whole.
            let _ = tx
                .send(Err(std::io::Error::other("response body cut off")))
                .await;
        });
        Response::new(ChannelBody(rx).boxed())
    } else {
        guard.disarm();
        Response::new(full(first))
    };
    let (status, headers) = relayed_head(&rhead);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// The status and headers our homeserver gets from a peer edge's response head: a final
/// status (200-599, else 502) and only the headers the serving side relays
/// ([`RESPONSE_HEADERS`]). A peer's framing headers (`content-length`, `transfer-encoding`,
/// `connection`) would otherwise reach our homeserver's connection.
fn relayed_head(rhead: &ResponseHead) -> (StatusCode, hyper::HeaderMap) {
    let status = StatusCode::from_u16(rhead.status)
        .ok()
        .filter(|s| (200..600).contains(&s.as_u16()))
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = hyper::HeaderMap::new();
    for (n, v) in &rhead.headers {
        if !RESPONSE_HEADERS.contains(&n.as_str()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(n.as_bytes()),
            hyper::header::HeaderValue::from_bytes(v),
        ) {
            headers.append(n, v);
        }
    }
    (status, headers)
}

/// Sends the rest of a request body as credit allows.
async fn upload(
    edge: Arc<Edge>,
    id: u64,
    mut body: Incoming,
    carry: Bytes,
    part_size: usize,
    mut credits: mpsc::Receiver<u64>,
) {
    let send = |data, more| edge.send_body(id, data, more);
    send_rest(&mut body, carry, part_size, BODY_IDLE, &mut credits, send).await;
}

/// The homeserver's answer when a relayed request failed. With `fallback = "direct"` the
/// connection is closed too, so the homeserver's retry opens a new CONNECT, which is tunnelled
/// while the destination is down.
fn failed(edge: &Edge, entry: &Entry, f: Failure) -> Response<Body> {
    let m = &edge.metrics;
    let msg = match f {
        Failure::Unreachable => {
            m.inc(&m.failed_502);
            "the overlay has no path to the destination".to_owned()
        }
        Failure::Timeout => {
            m.inc(&m.failed_504);
            "the destination's edge did not answer in time".to_owned()
        }
        Failure::Peer(s) => {
            m.inc(&m.failed_other);
            format!("the destination's edge refused the request ({s})")
        }
        Failure::Busy => {
            m.inc(&m.failed_other);
            "the edge is busy".to_owned()
        }
    };
    let mut r = matrix_error(f.status(), &msg);
    if entry.fallback == Fallback::Direct && matches!(f, Failure::Unreachable | Failure::Timeout) {
        m.inc(&m.fallback_closes);
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_response_head_carries_only_relayed_headers_and_a_final_status() {
        let h = |n: &str, v: &'static str| (n.to_owned(), Bytes::from_static(v.as_bytes()));
        let head = ResponseHead {
            status: 200,
            headers: vec![
                h("content-type", "application/json"),
                h("content-length", "5"),
                h("transfer-encoding", "chunked"),
                h("connection", "close"),
                h("set-cookie", "a=b"),
                h("retry-after", "3"),
            ],
        };
        let (status, headers) = relayed_head(&head);
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "retry-after"]);
        for (code, want) in [(101, 502), (199, 502), (204, 204), (599, 599), (600, 502)] {
            let head = ResponseHead {
                status: code,
                headers: vec![],
            };
            assert_eq!(relayed_head(&head).0.as_u16(), want, "{code}");
        }
    }

    #[test]
    fn public_addresses() {
        for a in ["8.8.8.8", "1.1.1.1", "2a01:4f8::1", "::ffff:8.8.8.8"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "400::1",
            "5ff:1::1",
            "2001:db8::1",
            "198.18.0.1",
            "fec0::1",
            "::127.0.0.1",
            "::10.1.2.3",
            "::ffff:0:127.0.0.1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
    }
}
