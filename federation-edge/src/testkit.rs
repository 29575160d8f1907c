//! Test and benchmark kit (feature `testkit`): not part of the edge daemon.
//!
//! * [`TestCa`] / [`TlsIdentity`]: a throwaway certificate authority and leaf certificates
//!   minted from it (rcgen), self-contained (the edge's own CA code lives in `ca`).
//! * [`FakeHomeserver`]: an HTTPS (TLS + HTTP/1.1 keep-alive) server that behaves like the
//!   federation side of a Matrix homeserver as far as the edge can tell. It has an ed25519
//!   [`SigningKey`] and serves its signed key document at `GET /_matrix/key/v2/server` and
//!   `GET /_matrix/federation/v1/version` without authentication. Every other request must carry
//!   a valid `X-Matrix` header from a peer key registered with [`FakeHomeserver::trust`],
//!   checked against the *raw* request target; failures get 401 `M_UNAUTHORIZED`. Valid
//!   requests are recorded ([`Recorded`]) and answered 200
//!   `{"ok":true,"method":…,"target":…,"len":N,"origin":…}`, except the signed
//!   `GET /_matrix/media/v1/download/test/big?size=N`, which streams N bytes of
//!   [`big_body_byte`] pattern as `application/octet-stream`.
//! * [`FederationClient`]: sends signed federation requests the way Synapse does behind
//!   `https_proxy` (CONNECT, then TLS with SNI = destination host, then HTTP/1.1 keep-alive,
//!   connections reused per destination), or straight to an address ([`Connect::Direct`]) for
//!   baselines. Raw request targets go out byte for byte.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::xmatrix::{self, SigningKey, XMatrix};

/// Largest request body the fake homeserver reads (bigger ones get 413).
const MAX_REQUEST_BODY: usize = 64 << 20;

/// How long a TLS handshake may take on the fake homeserver.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The media target that streams a body of the requested size.
pub const BIG_DOWNLOAD_PATH: &str = "/_matrix/media/v1/download/test/big";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A throwaway certificate authority for tests (ECDSA P-256, self-signed).
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose subject common name is `common_name`.
    pub fn generate(common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        Ok(Self { issuer, key_pem })
    }

    /// The CA certificate in PEM (what clients put in their trust roots).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA's private key in PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The rcgen issuer, to sign other certificates with it.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// A leaf certificate for these DNS names and/or IP literals.
    pub fn leaf(&self, names: &[&str]) -> anyhow::Result<TlsIdentity> {
        TlsIdentity::issue(&self.issuer, names)
    }
}

/// A TLS certificate chain and its private key (server or client side).
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Mints a leaf certificate for `names` (DNS names or IP literals; a server name's port,
    /// if any, must be left off) signed by `issuer`.
    pub fn issue(
        issuer: &Issuer<'_, impl rcgen::SigningKey>,
        names: &[&str],
    ) -> anyhow::Result<Self> {
        let Some(first) = names.first() else {
            bail!("a leaf certificate needs at least one name");
        };
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, *first);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, issuer)?;
        let key =
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow!("leaf key: {e}"))?;
        Ok(Self {
            chain: vec![cert.der().clone()],
            key,
        })
    }

    /// Loads a chain (leaf first) and key from PEM.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("certificate PEM: {e}"))?;
        if chain.is_empty() {
            bail!("no certificate in PEM");
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| anyhow!("key PEM: {e}"))?;
        Ok(Self { chain, key })
    }

    /// The chain in PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c.as_ref()))
            .collect()
    }

    /// The private key in PEM (PKCS#8 for minted keys).
    pub fn key_pem(&self) -> String {
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem_block(label, self.key.secret_der())
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// A rustls server configuration presenting this identity (ring, HTTP/1.1 ALPN).
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A rustls client configuration trusting only the certificates in `ca_pems` (ring, HTTP/1.1
/// ALPN).
pub fn client_config(ca_pems: &[&str]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| anyhow!("CA PEM: {e}"))?)
                .context("adding a CA certificate")?;
        }
    }
    if roots.is_empty() {
        bail!("no CA certificate given");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------
// Server names
// ---------------------------------------------------------------------------------------------

/// Splits a Matrix server name into host and port (8448 when absent). IPv6 literals keep no
/// brackets in the host. `None` if the name is malformed.
pub fn split_server_name(name: &str) -> Option<(&str, u16)> {
    if let Some(rest) = name.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => 8448,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return (!host.is_empty()).then_some((host, port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse().ok()?;
            (!host.is_empty() && !host.contains(':')).then_some((host, port))
        }
        None => (!name.is_empty()).then_some((name, 8448)),
    }
}

/// The `host:port` authority of a server name (port 8448 when absent, IPv6 in brackets).
fn authority(name: &str) -> Option<String> {
    let (host, port) = split_server_name(name)?;
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

// ---------------------------------------------------------------------------------------------
// Fake homeserver
// ---------------------------------------------------------------------------------------------

/// A request the fake homeserver accepted (valid X-Matrix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The request method.
    pub method: String,
    /// The raw request target (path and query exactly as received).
    pub target: String,
    /// The X-Matrix origin.
    pub origin: String,
    /// The body length in bytes.
    pub body_len: usize,
    /// [`checksum`] of the body bytes.
    pub checksum: u64,
}

/// A simple 64-bit checksum (FNV-1a) of a body, to compare what was sent with what arrived.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Byte `i` of the big-download body (a repeating 0..=250 pattern).
pub fn big_body_byte(i: u64) -> u8 {
    (i % 251) as u8
}

struct Shared {
    name: String,
    key: SigningKey,
    trusted: Mutex<HashMap<(String, String), [u8; 32]>>,
    recorded: Mutex<Vec<Recorded>>,
}

/// A fake Matrix homeserver's federation listener (HTTPS, HTTP/1.1 keep-alive) on loopback.
///
/// Stops on [`FakeHomeserver::shutdown`] or when dropped.
pub struct FakeHomeserver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FakeHomeserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHomeserver")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("key_id", &self.shared.key.key_id())
            .finish_non_exhaustive()
    }
}

impl FakeHomeserver {
    /// Starts serving `name`'s federation API with `tls` on `listen` (port 0 picks one), with a
    /// fresh signing key `ed25519:fake`.
    pub async fn start(name: &str, tls: TlsIdentity, listen: SocketAddr) -> io::Result<Self> {
        let key = SigningKey::generate("fake").map_err(io::Error::other)?;
        Self::start_with_key(name, key, tls, listen).await
    }

    /// Like [`FakeHomeserver::start`] with a given signing key.
    pub async fn start_with_key(
        name: &str,
        key: SigningKey,
        tls: TlsIdentity,
        listen: SocketAddr,
    ) -> io::Result<Self> {
        let config = tls.server_config().map_err(io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            key,
            trusted: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone(), stopped));
        Ok(Self {
            shared,
            addr,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The signing key's public half.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.key.public_key()
    }

    /// The signing key's ID (`ed25519:fake` unless given).
    pub fn key_id(&self) -> &str {
        self.shared.key.key_id()
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.shared.key
    }

    /// Accepts requests from `server_name` signed with `key_id` / `public_key`.
    pub fn trust(&self, server_name: &str, key_id: &str, public_key: [u8; 32]) {
        lock(&self.shared.trusted).insert((server_name.to_owned(), key_id.to_owned()), public_key);
    }

    /// The requests accepted so far, in arrival order.
    pub fn recorded(&self) -> Vec<Recorded> {
        lock(&self.shared.recorded).clone()
    }

    /// The signed key document served at `/_matrix/key/v2/server`.
    pub fn key_document(&self) -> Value {
        key_document(&self.shared)
    }

    /// Stops accepting, closes every connection and waits for the server task to end.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for FakeHomeserver {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = async { let _ = stopped.wait_for(|s| *s).await; } => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(serve_connection(tcp, acceptor.clone(), shared.clone()));
                }
                // Out of descriptors or similar: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
    conns.shutdown().await;
}

async fn serve_connection(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
    else {
        return;
    };
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

type RespBody = BoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, value: &Value) -> hyper::Response<RespBody> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(status: StatusCode, errcode: &str, error: &str) -> hyper::Response<RespBody> {
    json_response(status, &json!({"errcode": errcode, "error": error}))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn key_document(shared: &Shared) -> Value {
    let mut doc = json!({
        "server_name": shared.name,
        "verify_keys": { shared.key.key_id(): { "key": shared.key.public_base64() } },
        "old_verify_keys": {},
        "valid_until_ts": unix_ms().saturating_add(24 * 3600 * 1000),
    });
    // Cannot fail: an object of strings and a small integer.
    let _ = shared.key.sign_json_in_place(&mut doc, &shared.name);
    doc
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> hyper::Response<RespBody> {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let method = req.method().clone();

    if method == Method::GET
        && (path == "/_matrix/key/v2/server" || path.starts_with("/_matrix/key/v2/server/"))
    {
        return json_response(StatusCode::OK, &key_document(shared));
    }
    if method == Method::GET && path == "/_matrix/federation/v1/version" {
        return json_response(
            StatusCode::OK,
            &json!({"server": {"name": "hyphae-testkit", "version": env!("CARGO_PKG_VERSION")}}),
        );
    }

    let auth = req.headers().get(AUTHORIZATION).cloned();
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "body too large",
            );
        }
        Err(_) => return error_response(StatusCode::BAD_REQUEST, "M_UNKNOWN", "body read error"),
    };
    let content: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(_) => {
                return error_response(StatusCode::BAD_REQUEST, "M_NOT_JSON", "body is not JSON");
            }
        }
    };

    let origin = match authenticate(
        shared,
        auth.as_ref(),
        method.as_str(),
        &target,
        content.as_ref(),
    ) {
        Ok(origin) => origin,
        Err(why) => return error_response(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", &why),
    };
    lock(&shared.recorded).push(Recorded {
        method: method.as_str().to_owned(),
        target: target.clone(),
        origin: origin.clone(),
        body_len: body.len(),
        checksum: checksum(&body),
    });

    if path == BIG_DOWNLOAD_PATH {
        if method != Method::GET {
            return error_response(StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "GET only");
        }
        let size = req_query_param(&target, "size").and_then(|s| s.parse::<u64>().ok());
        let Some(size) = size else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
                "size=N required",
            );
        };
        let mut resp = hyper::Response::new(PatternBody { remaining: size }.boxed());
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(size));
        return resp;
    }

    json_response(
        StatusCode::OK,
        &json!({"ok": true, "method": method.as_str(), "target": target, "len": body.len(),
                "origin": origin}),
    )
}

/// Checks X-Matrix like Synapse: own name as destination, raw target, parsed content.
fn authenticate(
    shared: &Shared,
    auth: Option<&HeaderValue>,
    method: &str,
    target: &str,
    content: Option<&Value>,
) -> Result<String, String> {
    let auth = auth.ok_or("Missing Authorization headers")?;
    let x = XMatrix::parse(auth.as_bytes()).map_err(|e| e.to_string())?;
    let key = lock(&shared.trusted)
        .get(&(x.origin.clone(), x.key.clone()))
        .copied()
        .ok_or_else(|| format!("unknown key {} of {}", x.key, x.origin))?;
    xmatrix::verify_request(&x, &shared.name, method, target, content, &key)
        .map_err(|e| e.to_string())?;
    Ok(x.origin)
}

fn req_query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// 251 × 256 bytes of the pattern: every chunk but the last is the whole buffer, so each chunk
/// starts at a multiple of 251 and can be a zero-copy slice of it.
fn pattern_chunk() -> Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN
        .get_or_init(|| {
            (0..251u64 * 256)
                .map(big_body_byte)
                .collect::<Vec<u8>>()
                .into()
        })
        .clone()
}

/// The streamed big-download body.
struct PatternBody {
    remaining: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let chunk = pattern_chunk();
        let n = usize::try_from(this.remaining).map_or(chunk.len(), |r| r.min(chunk.len()));
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

// ---------------------------------------------------------------------------------------------
// Federation client
// ---------------------------------------------------------------------------------------------

/// How a [`FederationClient`] reaches destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// Through an HTTP CONNECT proxy at this address (like Synapse with `https_proxy`).
    Proxy(SocketAddr),
    /// Straight to this address, whatever the destination (baselines); TLS still uses the
    /// destination's host as SNI and for certificate checks.
    Direct(SocketAddr),
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestBody {
    /// JSON, sent compactly and signed as `content`.
    Json(Value),
    /// Bytes sent verbatim; signed as `content` if they parse as JSON, otherwise left out of
    /// the signature.
    Raw(Bytes),
}

impl From<Value> for RequestBody {
    fn from(v: Value) -> Self {
        Self::Json(v)
    }
}

impl From<Bytes> for RequestBody {
    fn from(b: Bytes) -> Self {
        Self::Raw(b)
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Result<Value> {
        serde_json::from_slice(&self.body)
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A homeserver's federation client: signs requests as `origin` and sends them over TLS +
/// HTTP/1.1 keep-alive, through a CONNECT proxy or directly. Idle connections are kept per
/// destination and reused; a closed one is replaced by a new connection.
pub struct FederationClient {
    origin: String,
    key: SigningKey,
    connect: Connect,
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<HashMap<String, Vec<Sender>>>,
    opened: AtomicU64,
    timeout: Duration,
}

impl std::fmt::Debug for FederationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationClient")
            .field("origin", &self.origin)
            .field("connect", &self.connect)
            .finish_non_exhaustive()
    }
}

impl FederationClient {
    /// A client for homeserver `origin` with signing key `key`, trusting only `ca_pems`.
    pub fn new(
        origin: &str,
        key: SigningKey,
        ca_pems: &[&str],
        connect: Connect,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            origin: origin.to_owned(),
            key,
            connect,
            tls: tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_pems)?)),
            idle: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            timeout: Duration::from_secs(60),
        })
    }

    /// Through the CONNECT proxy at `proxy`.
    pub fn via_proxy(
        origin: &str,
        key: SigningKey,
        ca_pems: &[&str],
        proxy: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::new(origin, key, ca_pems, Connect::Proxy(proxy))
    }

    /// Straight to `addr` for every destination.
    pub fn direct(
        origin: &str,
        key: SigningKey,
        ca_pems: &[&str],
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::new(origin, key, ca_pems, Connect::Direct(addr))
    }

    /// Sets the whole-request timeout (connect, send and full response; default 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The origin server name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// How many connections this client has opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The X-Matrix header for a request to `destination` (to send it, or to tamper with it).
    pub fn sign(
        &self,
        destination: &str,
        method: &str,
        raw_uri: &str,
        content: Option<&Value>,
    ) -> anyhow::Result<XMatrix> {
        Ok(xmatrix::sign_request(
            &self.key,
            &self.origin,
            destination,
            method,
            raw_uri,
            content,
        )?)
    }

    /// Sends a request to `destination` signed by this client's homeserver, with
    /// `Host: destination` and `Content-Type: application/json` when there is a body.
    /// `raw_uri` (path and query) goes out unchanged.
    pub async fn request(
        &self,
        destination: &str,
        method: &str,
        raw_uri: &str,
        body: Option<RequestBody>,
    ) -> anyhow::Result<Response> {
        let (bytes, content) = encode_body(body)?;
        let auth = self
            .sign(destination, method, raw_uri, content.as_ref())?
            .to_string();
        self.send(destination, method, raw_uri, bytes, Some(&auth))
            .await
    }

    /// Like [`FederationClient::request`] but with the given `Authorization` value (or none)
    /// instead of a correct signature.
    pub async fn request_with_authorization(
        &self,
        destination: &str,
        method: &str,
        raw_uri: &str,
        body: Option<RequestBody>,
        authorization: Option<&str>,
    ) -> anyhow::Result<Response> {
        let (bytes, _) = encode_body(body)?;
        self.send(destination, method, raw_uri, bytes, authorization)
            .await
    }

    async fn send(
        &self,
        destination: &str,
        method: &str,
        raw_uri: &str,
        body: Option<Bytes>,
        authorization: Option<&str>,
    ) -> anyhow::Result<Response> {
        let method = Method::from_bytes(method.as_bytes()).context("method")?;
        let uri: hyper::Uri = raw_uri.parse().context("request target")?;
        if uri.scheme().is_some() || uri.path_and_query().map(|p| p.as_str()) != Some(raw_uri) {
            bail!("request target must be origin-form (path and query): {raw_uri:?}");
        }
        let host = HeaderValue::from_str(destination).context("destination")?;
        let auth = authorization
            .map(HeaderValue::from_str)
            .transpose()
            .context("authorization")?;
        let build = || {
            let mut req = Request::new(Full::new(body.clone().unwrap_or_default()));
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri.clone();
            let headers = req.headers_mut();
            headers.insert(HOST, host.clone());
            if let Some(auth) = &auth {
                headers.insert(AUTHORIZATION, auth.clone());
            }
            if body.is_some() {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            req
        };
        tokio::time::timeout(self.timeout, self.exchange(destination, build))
            .await
            .map_err(|_| anyhow!("request to {destination} timed out"))?
    }

    async fn exchange(
        &self,
        destination: &str,
        build: impl Fn() -> Request<Full<Bytes>>,
    ) -> anyhow::Result<Response> {
        // Reuse an idle connection if one still works; a request that never left on it is
        // retried on the next one.
        loop {
            let sender = lock(&self.idle).get_mut(destination).and_then(Vec::pop);
            let Some(mut sender) = sender else { break };
            if sender.is_closed() || sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(build()).await {
                Ok(resp) => return self.finish(destination, sender, resp).await,
                Err(mut e) => {
                    if e.take_message().is_none() {
                        return Err(e.into_error().into());
                    }
                }
            }
        }
        let mut sender = self.open(destination).await?;
        sender.ready().await?;
        let resp = sender.send_request(build()).await?;
        self.finish(destination, sender, resp).await
    }

    async fn finish(
        &self,
        destination: &str,
        sender: Sender,
        resp: hyper::Response<Incoming>,
    ) -> anyhow::Result<Response> {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        if !sender.is_closed() {
            lock(&self.idle)
                .entry(destination.to_owned())
                .or_default()
                .push(sender);
        }
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn open(&self, destination: &str) -> anyhow::Result<Sender> {
        let (host, _) = split_server_name(destination)
            .ok_or_else(|| anyhow!("bad server name {destination:?}"))?;
        let authority =
            authority(destination).ok_or_else(|| anyhow!("bad server name {destination:?}"))?;
        let tcp = match self.connect {
            Connect::Direct(addr) => TcpStream::connect(addr).await?,
            Connect::Proxy(proxy) => {
                let mut tcp = TcpStream::connect(proxy).await?;
                tcp.write_all(
                    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
                )
                .await?;
                read_connect_reply(&mut tcp).await?;
                tcp
            }
        };
        tcp.set_nodelay(true)?;
        let server_name =
            ServerName::try_from(host.to_owned()).context("destination host for TLS")?;
        let tls = self.tls.connect(server_name, tcp).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }
}

fn encode_body(body: Option<RequestBody>) -> anyhow::Result<(Option<Bytes>, Option<Value>)> {
    Ok(match body {
        None => (None, None),
        Some(RequestBody::Json(v)) => (Some(Bytes::from(serde_json::to_vec(&v)?)), Some(v)),
        Some(RequestBody::Raw(b)) => {
            let content = serde_json::from_slice(&b).ok();
            (Some(b), content)
        }
    })
}

/// Reads a CONNECT reply up to the blank line (byte by byte, so nothing of the tunnel is
/// consumed) and requires a 2xx status.
async fn read_connect_reply(tcp: &mut TcpStream) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            bail!("CONNECT reply header too long");
        }
        let b = tcp.read_u8().await.context("proxy closed during CONNECT")?;
        head.push(b);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("bad CONNECT reply {line:?}");
    };
    if !version.starts_with("HTTP/1.") || !code.starts_with('2') || code.len() != 3 {
        bail!("proxy refused CONNECT: {line:?}");
    }
    Ok(())
}
