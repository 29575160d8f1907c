//! The HTTP client for the node's API and the edge's bridge API: plain HTTP/1.1 (all the
//! reference's API and ours speak), JSON bodies, one request per connection.
//!
//! hyper does the HTTP (request heads, `Content-Length`, chunked and read-until-close bodies)
//! over a tokio current-thread runtime that lives as long as one request. This module adds what
//! the CLI needs around it: the address resolved before anything is sent (a bad address is its
//! own error), a connect timeout per resolved address, one deadline for the whole answer, and
//! errors in a few plain words: [`Unreachable`] when no connection could be made at all,
//! [`ApiError`] for a status that the command did not expect.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// How long to wait for a connection, and for an ordinary answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's API (or another API of ours) at one address.
#[derive(Clone)]
pub struct Client {
    shown: String,
    addrs: Vec<SocketAddr>,
    what: &'static str,
    bearer: Option<String>,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The whole body (de-chunked).
    pub body: Bytes,
}

/// The API answered with a status that the command did not expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status code.
    pub status: u16,
    /// The body as text (the reference and hyphae answer errors in plain text).
    pub body: String,
}

/// The API could not be reached at all (nothing listens, no route, timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// Which API, in a word or two ("API", "edge API").
    pub what: &'static str,
    /// The address as given.
    pub addr: String,
    /// Why, in a few words.
    pub reason: String,
}

impl Client {
    /// Resolves `addr` (`IP:PORT` or `HOST:PORT`).
    pub fn new(addr: &str) -> Result<Self> {
        Self::named(addr, "API")
    }

    /// Resolves `addr`, for an API that messages call `what` ("edge API").
    pub fn named(addr: &str, what: &'static str) -> Result<Self> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| anyhow!("bad {what} address '{addr}': {}", io_reason(&e)))?
            .collect();
        if addrs.is_empty() {
            bail!("bad {what} address '{addr}': it resolves to nothing");
        }
        Ok(Self {
            shown: addr.to_owned(),
            addrs,
            what,
            bearer: None,
        })
    }

    /// Sends `Authorization: Bearer TOKEN` with every request (the token must fit in a header
    /// value: visible ASCII, no spaces; the CLI checks it when it reads it).
    pub fn with_bearer(mut self, token: Option<String>) -> Self {
        self.bearer = token;
        self
    }

    /// The address as the user gave it.
    pub fn addr(&self) -> &str {
        &self.shown
    }

    /// Sends one request and reads the whole answer. `timeout` bounds the wait for all of it
    /// once connected (a long poll's own timeout plus some slack, or [`DEFAULT_TIMEOUT`]).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Response> {
        let request = self.build(method, path, body)?;
        // A runtime for this request only: dropping it ends the connection's task too, in
        // whatever state the server left the connection.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("cannot start the I/O runtime")?;
        rt.block_on(async {
            let stream = self.connect().await?;
            match tokio::time::timeout(timeout, exchange(stream, request)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(self.failed(e, method, path)),
                Err(_elapsed) => Err(anyhow!(
                    "the {} at {} did not answer {method} {path} in time",
                    self.what,
                    self.shown
                )),
            }
        })
    }

    /// A request whose answer must be a 2xx with a JSON body (or no body: `Value::Null`).
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.request(method, path, body, DEFAULT_TIMEOUT)?.ok_json()
    }

    /// The request as it goes out: `Host` as the user gave the address, `Connection: close`,
    /// and a `Content-Length` on everything but a GET without a body.
    fn build(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>> {
        let method = Method::from_bytes(method.as_bytes())
            .with_context(|| format!("bad method '{method}'"))?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, &self.shown)
            .header(header::CONNECTION, "close")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("hyphae/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.bearer {
            let mut v = HeaderValue::try_from(format!("Bearer {t}")).map_err(|_| {
                anyhow!("the bearer token cannot be sent: it is not a header value")
            })?;
            v.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, v);
        }
        let body = body.map(|b| Bytes::from(b.to_string()));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if body.is_some() || method != Method::GET {
            let len = body.as_ref().map_or(0, Bytes::len);
            req = req.header(header::CONTENT_LENGTH, len);
        }
        req.body(Full::new(body.unwrap_or_default()))
            .with_context(|| format!("cannot send {method} {path} to the {}", self.what))
    }

    /// A connection to the first address that takes one.
    async fn connect(&self) -> Result<TcpStream, Unreachable> {
        let mut last = None;
        for a in &self.addrs {
            match tokio::time::timeout(DEFAULT_TIMEOUT, TcpStream::connect(a)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = Some(e),
                Err(_elapsed) => last = Some(io::ErrorKind::TimedOut.into()),
            }
        }
        let e = last.unwrap_or_else(|| io::Error::other("no address"));
        Err(Unreachable {
            what: self.what,
            addr: self.shown.clone(),
            reason: io_reason(&e),
        })
    }

    /// The error for an exchange that failed once connected: an answer that is not HTTP (or
    /// whose body framing is broken), or a connection that ended too soon.
    fn failed(&self, e: hyper::Error, method: &str, path: &str) -> anyhow::Error {
        let io = io_source(&e);
        let malformed = e.is_parse()
            || io.is_some_and(|io| {
                matches!(
                    io.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                )
            });
        if malformed {
            return anyhow::Error::new(e).context(format!(
                "the {} at {} sent a malformed answer to {method} {path}",
                self.what, self.shown
            ));
        }
        let reason = io.map_or_else(|| e.to_string(), io_reason);
        anyhow!(
            "the {} at {} broke off the answer to {method} {path}: {reason}",
            self.what,
            self.shown
        )
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the token.
        f.debug_struct("Client")
            .field("shown", &self.shown)
            .field("addrs", &self.addrs)
            .field("what", &self.what)
            .field("bearer", &self.bearer.as_ref().map(|_| "..."))
            .finish()
    }
}

impl Response {
    /// Whether the status is a 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON if the status is 2xx, else an [`ApiError`].
    pub fn ok_json(self) -> Result<Value> {
        if !self.is_success() {
            return Err(self.into_error().into());
        }
        self.body_json()
    }

    /// The body as JSON whatever the status (`Value::Null` when empty).
    pub fn body_json(&self) -> Result<Value> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).context("the API's answer is not JSON")
    }

    /// This answer as an error.
    pub fn into_error(self) -> ApiError {
        ApiError {
            status: self.status,
            body: String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the API answered {}", status_text(self.status))?;
        let body = self.body.trim();
        if !body.is_empty() {
            write!(f, ": {}", body.lines().next().unwrap_or_default())?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reach the {} at {}: {}",
            self.what, self.addr, self.reason
        )
    }
}

impl std::error::Error for Unreachable {}

/// A status for people: `404 Not Found`, or just the number when it has no standard reason.
pub fn status_text(status: u16) -> String {
    match StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(r) => format!("{status} {r}"),
        None => status.to_string(),
    }
}

/// Percent-encodes one path segment or query value (everything but RFC 3986 unreserved).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(c));
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Sends `request` on `stream` and reads the whole answer.
async fn exchange(stream: TcpStream, request: Request<Full<Bytes>>) -> hyper::Result<Response> {
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    // The connection does the reading and writing; it ends with the answer (`Connection:
    // close`), or with the runtime.
    tokio::spawn(connection);
    let answer = sender.send_request(request).await?;
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await?.to_bytes();
    Ok(Response { status, body })
}

/// The I/O error under a hyper error, if there is one.
fn io_source(e: &hyper::Error) -> Option<&io::Error> {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cause = c.source();
    }
    None
}

/// An I/O error in a few words ("connection refused", not "Connection refused (os error 111)").
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_lowercase(),
                None => s,
            }
        }
    }
}

#[cfg(test)]
mod tests;
