//! The client against one-shot servers on loopback that answer with bytes given as they are.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};

use serde_json::json;

use super::*;

/// A server that takes one connection, reads one request, writes `answer` and closes after
/// `linger`. Its thread returns the request as it arrived.
fn serve_once(answer: &'static [u8], linger: Duration) -> (String, JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let request = read_request(&mut s);
        let _ = s.write_all(answer);
        thread::sleep(linger);
        request
    });
    (addr, t)
}

fn answer(raw: &'static [u8]) -> (String, JoinHandle<String>) {
    serve_once(raw, Duration::ZERO)
}

/// The head and a `Content-Length` body.
fn read_request(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8(buf).unwrap()
}

fn get(addr: &str, path: &str) -> Result<Response> {
    Client::new(addr)?.request("GET", path, None, DEFAULT_TIMEOUT)
}

/// The error as `hyphae` prints it: the whole chain.
fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

#[test]
fn chunked_answers_are_read_whole() {
    let (addr, server) = answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let r = get(&addr, "/api/v1/admin").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_json().unwrap(), json!({"a": 1}));
    let request = server.join().unwrap();
    let head = request.to_ascii_lowercase();
    assert!(
        request.starts_with("GET /api/v1/admin HTTP/1.1\r\n"),
        "{request}"
    );
    for line in [
        format!("host: {addr}\r\n"),
        "connection: close\r\n".into(),
        "accept: application/json\r\n".into(),
        format!("user-agent: hyphae/{}\r\n", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(head.contains(&line), "{line:?} in {request}");
    }
    // A GET without a body says nothing about one.
    assert!(!head.contains("content-length"), "{request}");
    assert!(!head.contains("authorization"), "{request}");
}

#[test]
fn length_and_close_delimited_answers() {
    let (addr, _) = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]");
    assert_eq!(get(&addr, "/").unwrap().body_json().unwrap(), json!([]));
    let (addr, _) = answer(b"HTTP/1.0 200 OK\r\n\r\nuntil close");
    assert_eq!(get(&addr, "/").unwrap().body, &b"until close"[..]);
    // No body at all: JSON null.
    let (addr, _) = answer(b"HTTP/1.1 204 No Content\r\n\r\n");
    let r = get(&addr, "/").unwrap();
    assert_eq!((r.status, r.body_json().unwrap()), (204, Value::Null));
    // A server that ignores `Connection: close` does not make us wait.
    let (addr, _) = serve_once(
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnull",
        Duration::from_secs(30),
    );
    let c = Client::new(&addr).unwrap();
    let r = c.request("GET", "/", None, Duration::from_secs(3)).unwrap();
    assert_eq!(r.body_json().unwrap(), Value::Null);
}

#[test]
fn bodies_go_as_json_with_their_length_and_the_token() {
    let (addr, server) = answer(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n");
    let c = Client::named(&addr, "edge API")
        .unwrap()
        .with_bearer(Some("s3cr3t".into()));
    assert!(!format!("{c:?}").contains("s3cr3t"), "{c:?}");
    let body = json!({"endpoint": "tcp://192.0.2.1:9651"});
    let r = c
        .request("POST", "/p", Some(&body), DEFAULT_TIMEOUT)
        .unwrap();
    assert_eq!((r.status, r.is_success()), (201, true));
    let request = server.join().unwrap();
    let (head, sent) = request.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("post /p http/1.1\r\n"), "{request}");
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{request}"
    );
    assert!(
        head.contains(&format!("\r\ncontent-length: {}", sent.len())),
        "{request}"
    );
    assert!(
        head.contains("\r\nauthorization: bearer s3cr3t"),
        "{request}"
    );
    assert_eq!(serde_json::from_str::<Value>(sent).unwrap(), body);

    // No body on a DELETE: a length of 0, and no content type.
    let (addr, server) = answer(b"HTTP/1.1 204 No Content\r\n\r\n");
    let r = Client::new(&addr)
        .unwrap()
        .request("DELETE", "/p/x%2Fy", None, DEFAULT_TIMEOUT)
        .unwrap();
    assert_eq!(r.status, 204);
    let request = server.join().unwrap().to_ascii_lowercase();
    assert!(
        request.starts_with("delete /p/x%2fy http/1.1\r\n"),
        "{request}"
    );
    assert!(request.contains("\r\ncontent-length: 0\r\n"), "{request}");
    assert!(!request.contains("content-type"), "{request}");
}

#[test]
fn error_statuses_are_api_errors() {
    let (addr, _) =
        answer(b"HTTP/1.1 409 Whatever\r\ncontent-length: 24\r\n\r\npeer already exists\nmore");
    let e = Client::new(&addr)
        .unwrap()
        .json("GET", "/", None)
        .unwrap_err();
    let api = e.downcast_ref::<ApiError>().expect("an ApiError");
    assert_eq!(api.status, 409);
    assert_eq!(
        chain(&e),
        "the API answered 409 Conflict: peer already exists"
    );
    // A status without a standard reason, and no body.
    let (addr, _) = answer(b"HTTP/1.1 599 Odd\r\ncontent-length: 0\r\n\r\n");
    let e = Client::new(&addr)
        .unwrap()
        .json("GET", "/", None)
        .unwrap_err();
    assert_eq!(chain(&e), "the API answered 599");
    // A 2xx that is not JSON.
    let (addr, _) = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnot");
    let e = Client::new(&addr)
        .unwrap()
        .json("GET", "/", None)
        .unwrap_err();
    assert!(
        chain(&e).starts_with("the API's answer is not JSON"),
        "{e:#}"
    );
}

#[test]
fn nothing_listening_is_unreachable() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let e = Client::named(&addr, "edge API")
        .unwrap()
        .json("GET", "/", None)
        .context("cannot list routes")
        .unwrap_err();
    let u = e
        .downcast_ref::<Unreachable>()
        .expect("Unreachable under the context");
    assert_eq!(
        u.to_string(),
        format!("cannot reach the edge API at {addr}: connection refused")
    );
    let e = Client::new("no-port").unwrap_err();
    assert!(
        chain(&e).starts_with("bad API address 'no-port': "),
        "{e:#}"
    );
}

#[test]
fn answers_that_are_not_http_or_cut_short() {
    let (addr, _) = answer(b"SSH-2.0-OpenSSH_9.6\r\n");
    let e = get(&addr, "/x").unwrap_err();
    assert!(
        chain(&e).starts_with(&format!(
            "the API at {addr} sent a malformed answer to GET /x: "
        )),
        "{e:#}"
    );
    let (addr, _) = answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n");
    let e = get(&addr, "/x").unwrap_err();
    assert!(
        chain(&e).contains("sent a malformed answer to GET /x"),
        "{e:#}"
    );
    // Closed without a word, and closed in the middle of the body.
    let (addr, _) = answer(b"");
    let e = get(&addr, "/x").unwrap_err();
    assert_eq!(
        chain(&e),
        format!(
            "the API at {addr} broke off the answer to GET /x: connection closed before message completed"
        )
    );
    let (addr, _) = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n[]");
    let e = get(&addr, "/x").unwrap_err();
    assert!(
        chain(&e).starts_with(&format!(
            "the API at {addr} broke off the answer to GET /x: "
        )),
        "{e:#}"
    );
}

#[test]
fn a_silent_server_times_out() {
    let (addr, _) = serve_once(b"", Duration::from_secs(5));
    let e = Client::new(&addr)
        .unwrap()
        .request("GET", "/x", None, Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(
        chain(&e),
        format!("the API at {addr} did not answer GET /x in time")
    );
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
fn statuses_for_people() {
    assert_eq!(status_text(404), "404 Not Found");
    assert_eq!(status_text(413), "413 Payload Too Large");
    assert_eq!(status_text(599), "599");
    let e = ApiError {
        status: 409,
        body: "peer already exists\nmore".into(),
    };
    assert_eq!(
        e.to_string(),
        "the API answered 409 Conflict: peer already exists"
    );
}
