//! A small HTTP/1.1 client for the node's API on loopback: one request per connection
//! (`Connection: close`), JSON bodies, `Content-Length` or chunked responses. Plain HTTP is all
//! the reference's API and ours speak, so no TLS and no HTTP library are needed.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// How long to wait for the connection and for an ordinary answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's API (or another API of ours) at one address.
#[derive(Clone)]
pub struct Client {
    shown: String,
    addrs: Vec<SocketAddr>,
    what: &'static str,
    bearer: Option<String>,
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

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// The API answered with a status that the command did not expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status code.
    pub status: u16,
    /// The body as text (the reference and hyphae answer errors in plain text).
    pub body: String,
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

    /// Sends `Authorization: Bearer TOKEN` with every request (the token must be a header value:
    /// see [`crate::cli::check_bearer_token`]).
    pub fn with_bearer(mut self, token: Option<String>) -> Self {
        self.bearer = token;
        self
    }

    /// The address as the user gave it.
    pub fn addr(&self) -> &str {
        &self.shown
    }

    /// Sends one request and reads the whole answer. `read_timeout` bounds the wait for the
    /// answer (`None`: wait as long as it takes, for long polls).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        read_timeout: Option<Duration>,
    ) -> Result<Response> {
        let unreachable = |e: &io::Error| {
            anyhow::Error::new(Unreachable {
                what: self.what,
                addr: self.shown.clone(),
                reason: io_reason(e),
            })
        };
        let mut last = None;
        let mut stream = None;
        for a in &self.addrs {
            match TcpStream::connect_timeout(a, DEFAULT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(mut stream) = stream else {
            let e = last.unwrap_or_else(|| io::Error::other("no address"));
            return Err(unreachable(&e));
        };
        stream
            .set_read_timeout(read_timeout)
            .and_then(|()| stream.set_write_timeout(Some(DEFAULT_TIMEOUT)))
            .map_err(|e| unreachable(&e))?;
        let body = body.map(Value::to_string);
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: hyphae/{}\r\n",
            self.shown,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(t) = &self.bearer {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        match &body {
            Some(b) => {
                req.push_str("Content-Type: application/json\r\n");
                req.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
                req.push_str(b);
            }
            None if method != "GET" => req.push_str("Content-Length: 0\r\n\r\n"),
            None => req.push_str("\r\n"),
        }
        stream
            .write_all(req.as_bytes())
            .map_err(|e| unreachable(&e))?;
        let mut raw = Vec::new();
        if let Err(e) = read_answer(&mut stream, &mut raw) {
            // A server that closes without reading our whole request can reset the connection
            // after answering; keep what arrived if it is a whole answer.
            if raw.is_empty() || parse_response(&raw).is_err() {
                return Err(match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => anyhow!(
                        "the {} at {} did not answer {method} {path} in time",
                        self.what,
                        self.shown
                    ),
                    _ => anyhow!(
                        "the {} at {} broke off the answer to {method} {path}: {}",
                        self.what,
                        self.shown,
                        io_reason(&e)
                    ),
                });
            }
        }
        parse_response(&raw).with_context(|| {
            format!(
                "the {} at {} sent a malformed answer to {method} {path}",
                self.what, self.shown
            )
        })
    }

    /// A request whose answer must be a 2xx with a JSON body (or no body: `Value::Null`).
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let r = self.request(method, path, body, Some(DEFAULT_TIMEOUT))?;
        r.ok_json()
    }
}

impl Response {
    /// The body as JSON if the status is 2xx, else an [`ApiError`].
    pub fn ok_json(self) -> Result<Value> {
        if !(200..300).contains(&self.status) {
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

/// Reads until the server closes, or until the answer is whole by its own framing (a server
/// that ignores `Connection: close` must not make us wait for the read timeout).
fn read_answer(stream: &mut TcpStream, raw: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        raw.extend_from_slice(&buf[..n]);
        if is_whole(raw) {
            return Ok(());
        }
    }
}

/// Whether `raw` holds a whole answer with a `Content-Length` or a chunked body.
fn is_whole(raw: &[u8]) -> bool {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    for l in head.split("\r\n").skip(1) {
        if let Some(v) = l.strip_prefix("content-length:") {
            return v.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            return dechunk(body).is_ok();
        }
    }
    // 204 and 304 have no body.
    head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304")
}

/// Parses a whole HTTP/1.x response.
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| anyhow!("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).context("headers are not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 status line: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad Content-Length")?);
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if rest.len() < n {
            bail!("body cut short: {} of {n} bytes", rest.len());
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

/// Decodes a chunked body (RFC 9112 section 7.1); trailers are ignored.
pub fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(b, b"\r\n").ok_or_else(|| anyhow!("chunk size line cut short"))?;
        let line = std::str::from_utf8(&b[..eol]).context("bad chunk size")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).context("bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("chunk cut short");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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

/// A status for people: `404 Not Found`, or just the number for the rarer ones.
pub fn status_text(status: u16) -> String {
    match reason(status) {
        Some(r) => format!("{status} {r}"),
        None => status.to_string(),
    }
}

fn reason(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_chunked_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]trailing").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[]"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body_json().unwrap(), serde_json::json!({"a": 1}));
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(r.status, 204);
        assert_eq!(r.body_json().unwrap(), Value::Null);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n[]").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(dechunk(b"5\r\nab").is_err());
        assert!(is_whole(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"));
        assert!(!is_whole(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n[]"));
        assert!(is_whole(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"
        ));
        assert!(!is_whole(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[]\r\n"
        ));
        assert!(is_whole(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!is_whole(b"HTTP/1.0 200 OK\r\n\r\nuntil close"));
    }

    #[test]
    fn endpoints_are_percent_encoded() {
        assert_eq!(
            encode_component("tcp://[::1]:9651"),
            "tcp%3A%2F%2F%5B%3A%3A1%5D%3A9651"
        );
        assert_eq!(encode_component("dmVj+/="), "dmVj%2B%2F%3D");
    }

    #[test]
    fn api_errors_are_one_line() {
        let e = ApiError {
            status: 409,
            body: "peer already exists\nmore".into(),
        };
        assert_eq!(
            e.to_string(),
            "the API answered 409 Conflict: peer already exists"
        );
    }
}
