//! The message API across routers (multi-process, loopback): request and reply over two hops
//! through the HTTP API, a 10 MB message, a receiver that vanishes mid-transfer, and long-polls
//! that never hold up other API calls. The tests on the uring driver print one `SKIPPED:` line
//! where io_uring is missing (a failure under `HYPHAE_REQUIRE_CAPABILITIES=1`).

mod common;

use std::time::Duration;

use common::{Node, http, wait_until};
use serde_json::{Value, json};

fn b64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn json_req(n: &Node, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(Value::to_string);
    let (status, text) = http(n.api, method, path, body.as_deref()).expect("API answers");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// a --tcp-- b --quic-- c
fn line(driver: &str) -> (Node, Node, Node) {
    line_with(driver, &[])
}

/// [`line`], with `c_extra` flags for c.
fn line_with(driver: &str, c_extra: &[String]) -> (Node, Node, Node) {
    let a = Node::start("a", driver, 101, &[]);
    let b = Node::start("b", driver, 102, &["--peers".into(), a.tcp()]);
    let mut c_args = vec!["--peers".into(), b.quic()];
    c_args.extend_from_slice(c_extra);
    let c = Node::start("c", driver, 103, &c_args);
    let (sa, sc) = (a.subnet(), c.subnet());
    wait_until(Duration::from_secs(10), || {
        a.has_route(&sc) && b.has_route(&sa)
    })
    .expect("line up");
    (a, b, c)
}

#[test]
fn request_and_reply_over_two_hops_through_the_http_api() {
    for driver in common::drivers("request_and_reply_over_two_hops_through_the_http_api") {
        let (a, _b, c) = line(driver);
        let c_pk = c.info()["nodePubkey"].as_str().unwrap().to_owned();
        let c_api = c.api;
        // c answers whatever arrives on its topic.
        let responder = std::thread::spawn(move || {
            let (status, body) =
                http(c_api, "GET", "/api/v1/messages?timeout=10&topic=cmVx", None).unwrap();
            assert_eq!(status, 200, "{body}");
            let m: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(m["payload"], b64(b"ping"));
            assert_eq!(m["topic"], "cmVx");
            let id = m["id"].as_str().unwrap();
            let reply = json!({"dst": {"pk": m["srcPk"]}, "payload": b64(b"pong")}).to_string();
            let (st, _) = http(
                c_api,
                "POST",
                &format!("/api/v1/messages/reply/{id}"),
                Some(&reply),
            )
            .unwrap();
            assert_eq!(st, 204);
        });
        let push = json!({"dst": {"pk": c_pk}, "topic": "cmVx", "payload": b64(b"ping")});
        let (status, reply) =
            json_req(&a, "POST", "/api/v1/messages?reply_timeout=10", Some(&push));
        responder.join().unwrap();
        assert_eq!(status, 200, "{reply}");
        assert_eq!(
            reply["payload"],
            b64(b"pong"),
            "[{driver}] the reply reaches the waiting sender"
        );
        assert_eq!(reply["srcPk"], c_pk);

        // Without reply_timeout: 201 and an id whose status becomes "read" once taken.
        let c_ip = c.info()["nodeIp"].as_str().unwrap().to_owned();
        let push = json!({"dst": {"ip": c_ip}, "payload": b64(b"by address")});
        let (status, v) = json_req(&a, "POST", "/api/v1/messages", Some(&push));
        assert_eq!(status, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        let (st, got) = json_req(&c, "GET", "/api/v1/messages?timeout=10", None);
        assert_eq!(
            (st, got["payload"].as_str()),
            (200, Some(b64(b"by address").as_str()))
        );
        let read = wait_until(Duration::from_secs(10), || {
            let (_, s) = json_req(&a, "GET", &format!("/api/v1/messages/status/{id}"), None);
            (s["state"] == "read").then_some(s)
        });
        let s = read.expect("status reaches read");
        assert_eq!(s["msgLen"], 10);
        assert_eq!(s["dst"], c_ip);
        assert_eq!(
            json_req(&a, "GET", "/api/v1/messages/status/0011223344556677", None).0,
            404
        );
    }
}

#[test]
fn a_10_mb_message_crosses_intact() {
    if !common::driver_here("a_10_mb_message_crosses_intact", "uring") {
        return;
    }
    let (a, _b, c) = line("uring");
    let payload: Vec<u8> = (0..10_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let c_pk = c.info()["nodePubkey"].as_str().unwrap().to_owned();
    let push = json!({"dst": {"pk": c_pk}, "payload": b64(&payload)});
    let (status, v) = json_req(&a, "POST", "/api/v1/messages", Some(&push));
    assert_eq!(status, 201, "{v}");
    let (st, got) = json_req(&c, "GET", "/api/v1/messages?timeout=60", None);
    assert_eq!(st, 200);
    assert!(
        got["payload"].as_str().unwrap() == b64(&payload),
        "10 MB arrive intact"
    );
    // Over the configured limit: a clear 413.
    let big =
        json!({"dst": {"pk": c.info()["nodePubkey"]}, "payload": b64(&vec![0u8; (64 << 20) + 1])});
    assert_eq!(json_req(&a, "POST", "/api/v1/messages", Some(&big)).0, 413);
}

#[test]
fn long_polls_block_nothing_and_a_receiver_crash_aborts_the_sender_cleanly() {
    // a --tcp-- b --tcp-- c (TCP, so that c's death is seen at once)
    let a = Node::start("a", "portable", 111, &[]);
    let b = Node::start("b", "portable", 112, &["--peers".into(), a.tcp()]);
    let mut c = Node::start("c", "portable", 113, &["--peers".into(), b.tcp()]);
    let sc = c.subnet();
    wait_until(Duration::from_secs(10), || a.has_route(&sc)).expect("line up");

    // A long-poll on a is pending while other calls are answered.
    let a_api = a.api;
    let poll = std::thread::spawn(move || {
        http(a_api, "GET", "/api/v1/messages?timeout=4", None)
            .unwrap()
            .0
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!poll.is_finished(), "the long-poll is waiting");
    assert_eq!(json_req(&a, "GET", "/api/v1/admin", None).0, 200);
    assert_eq!(json_req(&a, "GET", "/api/v1/admin/peers", None).0, 200);
    assert!(
        !poll.is_finished(),
        "other calls were answered while the long-poll still waits"
    );
    assert_eq!(poll.join().unwrap(), 204, "nothing arrived: 204");

    // c dies in the middle of a 20 MB transfer: the sender reports the message aborted (once
    // the route is gone for 15 s), never received, and stays healthy.
    let c_pk = c.info()["nodePubkey"].as_str().unwrap().to_owned();
    let push = json!({"dst": {"pk": c_pk}, "payload": b64(&vec![7u8; 20_000_000])});
    let (status, v) = json_req(&a, "POST", "/api/v1/messages", Some(&push));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let status_of = |a: &Node| json_req(a, "GET", &format!("/api/v1/messages/status/{id}"), None).1;
    wait_until(Duration::from_secs(10), || {
        status_of(&a)["state"]["sending"]["acked"]
            .as_u64()
            .is_some_and(|n| n > 0)
    })
    .expect("the transfer is under way");
    c.kill();
    let end = wait_until(Duration::from_secs(40), || {
        let s = status_of(&a);
        (s["state"] == "aborted" || s["state"] == "received" || s["state"] == "read").then_some(s)
    });
    let s = end.expect("the sender reaches a final state");
    assert_eq!(s["state"], "aborted", "{s}");
    assert!(
        a.get("/api/v1/admin").is_object(),
        "the sender is still healthy"
    );
}

mod local {
    //! The local application socket, speaking hyphae's framing.

    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use bytes::BytesMut;
    use hyphae_wire::framing::{self, Destination, Message, Push, Reply, StatusQuery, Subscribe};
    use hyphae_wire::identity::PublicKey;

    pub(super) struct App {
        s: UnixStream,
        buf: BytesMut,
    }

    impl App {
        pub(super) fn connect(path: &std::path::Path) -> Self {
            let s = UnixStream::connect(path).expect("local socket");
            s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            Self {
                s,
                buf: BytesMut::new(),
            }
        }

        pub(super) fn send(&mut self, m: &Message<'_>) {
            let mut b = BytesMut::new();
            m.encode(framing::DEFAULT_MAX_BODY, &mut b).unwrap();
            self.s.write_all(&b).unwrap();
        }

        /// The next frame's kind and body.
        pub(super) fn recv(&mut self) -> (framing::Kind, bytes::Bytes) {
            loop {
                if let Some(f) =
                    framing::split_frame(&mut self.buf, framing::DEFAULT_MAX_BODY).unwrap()
                {
                    return f;
                }
                let mut chunk = vec![0u8; 1 << 16];
                let n = self.s.read(&mut chunk).expect("an answer");
                assert!(n > 0, "socket closed");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        pub(super) fn push(
            &mut self,
            tag: u64,
            dst: &PublicKey,
            topic: &[u8],
            payload: &[u8],
            wait_ms: Option<u32>,
        ) {
            let p = Push {
                tag,
                dst: Destination::PublicKey(*dst.as_bytes()),
                topic,
                payload,
                reply_to: None,
                reply_timeout_ms: wait_ms,
            };
            self.send(&Message::Push(p));
        }

        pub(super) fn subscribe(&mut self, topic: &[u8]) {
            self.send(&Message::Subscribe(Subscribe {
                tag: 1,
                topic: Some(topic),
            }));
        }

        pub(super) fn reply(
            &mut self,
            tag: u64,
            id: hyphae_wire::message::MessageId,
            payload: &[u8],
        ) {
            self.send(&Message::Reply(Reply { tag, id, payload }));
        }

        pub(super) fn status(&mut self, tag: u64, id: hyphae_wire::message::MessageId) {
            self.send(&Message::StatusQuery(StatusQuery { tag, id }));
        }
    }
}

#[test]
fn request_and_reply_over_two_hops_through_the_local_socket() {
    use hyphae_wire::framing::{Kind, Message, MessageState};
    use hyphae_wire::identity::SecretKey;

    let test = "request_and_reply_over_two_hops_through_the_local_socket";
    if !common::driver_here(test, "uring") {
        return;
    }
    let (a, _b, c) = line("uring");
    let c_pk = SecretKey::from_bytes([103; 32]).public_key();
    let a_pk = SecretKey::from_bytes([101; 32]).public_key();
    let mut server = local::App::connect(&c.local_socket());
    server.subscribe(b"rpc");
    let mut client = local::App::connect(&a.local_socket());
    std::thread::sleep(Duration::from_millis(100));

    // Several requests in flight at once, each answered by tag.
    for tag in 10..14u64 {
        client.push(
            tag,
            &c_pk,
            b"rpc",
            format!("request {tag}").as_bytes(),
            Some(10_000),
        );
    }
    // The server sees the four requests and its four reply acknowledgements, in any order.
    let (mut requests, mut acks) = (0, 0);
    while requests < 4 || acks < 4 {
        let (kind, body) = server.recv();
        match Message::decode(kind, &body) {
            Ok(Message::Deliver(d)) => {
                assert_eq!((d.topic, d.src_pk), (&b"rpc"[..], *a_pk.as_bytes()));
                assert_eq!(d.reply_tag, None);
                let answer = [b"reply to ", d.payload].concat();
                server.reply(7, d.id, &answer);
                requests += 1;
            }
            Ok(Message::Pushed(p)) => {
                assert_eq!(p.tag, 7, "reply accepted");
                acks += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut tags = Vec::new();
    for _ in 0..4 {
        let (kind, body) = client.recv();
        let Ok(Message::Deliver(d)) = Message::decode(kind, &body) else {
            panic!("{kind:?}")
        };
        let tag = d.reply_tag.expect("a reply to a waiting push");
        assert_eq!(d.payload, format!("reply to request {tag}").as_bytes());
        assert_eq!(d.src_pk, *c_pk.as_bytes());
        tags.push(tag);
    }
    tags.sort_unstable();
    assert_eq!(tags, vec![10, 11, 12, 13]);

    // A push without waiting is accepted with an id whose status can be asked for.
    client.push(20, &c_pk, b"rpc", b"fire and forget", None);
    let (kind, body) = client.recv();
    let Ok(Message::Pushed(p)) = Message::decode(kind, &body) else {
        panic!("{kind:?}")
    };
    assert_eq!(p.tag, 20);
    let (kind, body) = server.recv();
    assert!(
        matches!(Message::decode(kind, &body), Ok(Message::Deliver(d)) if d.payload == b"fire and forget")
    );
    let done = wait_until(Duration::from_secs(10), || {
        client.status(21, p.id);
        let (kind, body) = client.recv();
        match Message::decode(kind, &body) {
            Ok(Message::Status(s)) if s.tag == 21 && s.state == MessageState::Read => Some(()),
            _ => None,
        }
    });
    assert!(done.is_some(), "status reaches read");

    // A malformed frame gets an error answer and the connection goes on.
    let mut bad = bytes::BytesMut::new();
    bad.extend_from_slice(b"HY\x01\x01\x00\x00\x00\x02\xff\xff");
    std::io::Write::write_all(
        &mut std::os::unix::net::UnixStream::connect(a.local_socket()).unwrap(),
        &bad,
    )
    .unwrap();
    client.push(30, &c_pk, b"rpc", b"still here", None);
    let (kind, _) = client.recv();
    assert_eq!(kind, Kind::PUSHED);
    // The socket is the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(a.local_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn topic_configuration_admits_whitelisted_sources_only() {
    let (a, _b, c) = line("portable");
    let c_pk = c.info()["nodePubkey"].as_str().unwrap().to_owned();
    let sa = a.subnet();
    let put = http(
        c.api,
        "PUT",
        "/api/v1/messages/topics/default",
        Some(r#"{"accept":false}"#),
    )
    .unwrap();
    assert_eq!(put.0, 204);
    assert_eq!(
        json_req(&c, "GET", "/api/v1/messages/topics/default", None).1,
        json!({"accept": false})
    );
    // Topic "x" (base64 eA==) takes messages from a's /64.
    assert_eq!(
        http(c.api, "POST", "/api/v1/messages/topics", Some("[120]"))
            .unwrap()
            .0,
        201
    );
    assert_eq!(
        json_req(&c, "GET", "/api/v1/messages/topics", None).1,
        json!(["eA=="])
    );
    let src = json!({"subnet": sa}).to_string();
    assert_eq!(
        http(
            c.api,
            "POST",
            "/api/v1/messages/topics/eA==/sources",
            Some(&src)
        )
        .unwrap()
        .0,
        201
    );
    assert_eq!(
        json_req(&c, "GET", "/api/v1/messages/topics/eA==/sources", None).1,
        json!([sa])
    );

    let push = |topic: &str, payload: &[u8]| {
        let body = json!({"dst": {"pk": c_pk}, "topic": topic, "payload": b64(payload)});
        assert_eq!(json_req(&a, "POST", "/api/v1/messages", Some(&body)).0, 201);
    };
    push("eQ==", b"on y: refused");
    push("eA==", b"on x: admitted");
    let (st, m) = json_req(&c, "GET", "/api/v1/messages?timeout=10", None);
    assert_eq!(
        (st, m["payload"].as_str()),
        (200, Some(b64(b"on x: admitted").as_str()))
    );
    let (st, _) = json_req(&c, "GET", "/api/v1/messages?timeout=1", None);
    assert_eq!(st, 204, "the message on an unlisted topic was refused");

    let del = |p: &str| http(c.api, "DELETE", p, None).unwrap().0;
    let subnet_path = sa.replace('/', "%2F");
    assert_eq!(
        del(&format!(
            "/api/v1/messages/topics/eA==/sources/{subnet_path}"
        )),
        204
    );
    assert_eq!(
        json_req(&c, "GET", "/api/v1/messages/topics/eA==/sources", None).1,
        json!([])
    );
    assert_eq!(del("/api/v1/messages/topics/eA=="), 204);
    assert_eq!(
        json_req(&c, "GET", "/api/v1/messages/topics", None).1,
        json!([])
    );
    assert_eq!(
        http(c.api, "GET", "/api/v1/messages/topics/!!/sources", None)
            .unwrap()
            .0,
        400
    );
}

/// Runs `hyphae-router` on loopback with its local socket at `sock`.
fn router_at(sock: &std::path::Path, key: &std::path::Path) -> std::process::Command {
    let port = common::free_port().to_string();
    let api = format!("127.0.0.1:{}", common::free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hyphae-router"));
    cmd.arg("-k")
        .arg(key)
        .args([
            "-t",
            &port,
            "--disable-quic",
            "--disable-peer-discovery",
            "--no-tun",
        ])
        .args(["--api-addr", &api, "--driver", "portable", "--workers", "1"])
        .arg("--local-socket")
        .arg(sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[test]
fn a_served_local_socket_is_never_taken_and_a_stale_one_is_replaced() {
    let mut a = Node::start("a", "portable", 41, &[]);
    let sock = a.local_socket();
    let key = a.dir.join("second.key");
    std::fs::write(&key, [42u8; 32]).unwrap();

    // A second router pointed at the same socket refuses to start, with a one-line reason.
    // (Started again if a parallel test took one of its ports in between.)
    let second = (0..5)
        .map(|_| router_at(&sock, &key).output().unwrap())
        .find(|o| !String::from_utf8_lossy(&o.stderr).contains("Address already in use"))
        .expect("free ports");
    assert!(!second.status.success(), "the second router must not start");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("is serving it") && err.lines().count() <= 2,
        "stderr: {err}"
    );
    // ...and the first still serves its applications on that path.
    let b_pk = hyphae_wire::identity::SecretKey::from_bytes([43; 32]).public_key();
    let mut app = local::App::connect(&sock);
    app.push(1, &b_pk, b"t", b"hello", None);
    assert_eq!(app.recv().0, hyphae_wire::framing::Kind::PUSHED);
    drop(app);

    // A clean stop removes the socket file.
    assert!(a.terminate().success());
    assert!(!sock.exists(), "socket file left behind after SIGTERM");

    // A mode that would open the socket to every user is refused before anything is bound,
    // with one line naming the flag.
    let open = router_at(&sock, &key)
        .args(["--local-socket-mode", "0666"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&open.stderr);
    assert_eq!(open.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("--local-socket-mode") && err.lines().count() == 1,
        "stderr: {err}"
    );
    assert!(!sock.exists());

    // A socket file nobody listens on (a crashed router's) is replaced, here with the group
    // allowed in by --local-socket-mode.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut up = None;
    let mut mode = 0;
    for _ in 0..5 {
        let mut child = router_at(&sock, &key)
            .args(["--local-socket-mode", "0660"])
            .spawn()
            .unwrap();
        up = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(|_| true)
        });
        if up == Some(true) {
            use std::os::unix::fs::PermissionsExt;
            mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        if up != Some(false) || !err.contains("Address already in use") {
            assert_ne!(up, Some(false), "the router exited: {err}");
            break;
        }
    }
    let up = up.filter(|u| *u);
    assert!(
        up.is_some(),
        "the router did not take over the stale socket"
    );
    assert_eq!(mode, 0o660, "--local-socket-mode 0660: mode {mode:o}");
}

/// A topic with a forward socket (the reference's `/topics/{topic}/forward`): each message goes
/// to the application on that Unix socket, whose answer returns to the waiting sender as the
/// reply; without a listener the message falls back to the ordinary queue; the socket can be
/// read back and removed, and one cannot be set on a topic that is not configured.
#[test]
fn a_topic_forward_socket_answers_requests() {
    if !common::driver_here("a_topic_forward_socket_answers_requests", "uring") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hyphae-fwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let flag = ["--topic-forward-dir".into(), dir.to_str().unwrap().into()];
    let (a, _b, c) = line_with("uring", &flag);
    let c_pk = c.info()["nodePubkey"].as_str().unwrap().to_owned();
    let sock = dir.join("app.sock");
    // Topic "f" is base64 "Zg==".
    let fwd = "/api/v1/messages/topics/Zg==/forward";
    let set = json!({"socketPath": sock.to_str().unwrap()}).to_string();
    assert_eq!(http(c.api, "PUT", fwd, Some(&set)).unwrap().0, 204);
    assert_eq!(
        json_req(&c, "GET", fwd, None).1,
        Value::Null,
        "not set on an unconfigured topic"
    );
    assert_eq!(
        http(c.api, "POST", "/api/v1/messages/topics", Some("[102]"))
            .unwrap()
            .0,
        201
    );
    // A configured topic admits only its listed sources: a's /64.
    let src = json!({"subnet": a.subnet()}).to_string();
    let sources = "/api/v1/messages/topics/Zg==/sources";
    assert_eq!(http(c.api, "POST", sources, Some(&src)).unwrap().0, 201);
    assert_eq!(http(c.api, "PUT", fwd, Some(&set)).unwrap().0, 204);
    assert_eq!(
        json_req(&c, "GET", fwd, None).1,
        json!(sock.to_str().unwrap())
    );
    assert_eq!(
        http(c.api, "PUT", fwd, Some("{\"path\":1}")).unwrap().0,
        422
    );
    // The API cannot point the router at sockets outside the forward directory.
    for outside in [
        c.local_socket().to_str().unwrap().to_owned(),
        format!("{}/../x.sock", dir.display()),
        "app.sock".to_owned(),
    ] {
        let body = json!({"socketPath": outside}).to_string();
        assert_eq!(
            http(c.api, "PUT", fwd, Some(&body)).unwrap().0,
            403,
            "{outside}"
        );
    }
    assert_eq!(
        json_req(&c, "GET", fwd, None).1,
        json!(sock.to_str().unwrap())
    );

    // The application: reads a request to its end, answers, closes; twice.
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let app = std::thread::spawn(move || {
        use std::io::{Read, Write};
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).unwrap();
            let mut answer = b"answer to ".to_vec();
            answer.extend_from_slice(&req);
            s.write_all(&answer).unwrap();
        }
    });
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for payload in [b"question".to_vec(), big] {
        let push = json!({"dst": {"pk": c_pk}, "topic": "Zg==", "payload": b64(&payload)});
        let (status, reply) =
            json_req(&a, "POST", "/api/v1/messages?reply_timeout=10", Some(&push));
        assert_eq!(status, 200, "{reply}");
        let mut want = b"answer to ".to_vec();
        want.extend_from_slice(&payload);
        assert_eq!(reply["payload"], b64(&want));
    }
    app.join().unwrap();
    let (st, _) = json_req(&c, "GET", "/api/v1/messages?timeout=0", None);
    assert_eq!(st, 204, "forwarded messages are not queued as well");

    // Nobody listens any more: the message is queued instead.
    let push = json!({"dst": {"pk": c_pk}, "topic": "Zg==", "payload": b64(b"no app")});
    assert_eq!(json_req(&a, "POST", "/api/v1/messages", Some(&push)).0, 201);
    let (st, m) = json_req(&c, "GET", "/api/v1/messages?timeout=10", None);
    assert_eq!(
        (st, m["payload"].as_str()),
        (200, Some(b64(b"no app").as_str()))
    );

    // A link in the directory to a socket outside it is not followed: queued, not forwarded.
    let outside = c.dir.join("outside.sock");
    let trap = std::os::unix::net::UnixListener::bind(&outside).unwrap();
    trap.set_nonblocking(true).unwrap();
    std::fs::remove_file(&sock).unwrap();
    std::os::unix::fs::symlink(&outside, &sock).unwrap();
    let push = json!({"dst": {"pk": c_pk}, "topic": "Zg==", "payload": b64(b"via link")});
    assert_eq!(json_req(&a, "POST", "/api/v1/messages", Some(&push)).0, 201);
    let (st, m) = json_req(&c, "GET", "/api/v1/messages?timeout=10", None);
    assert_eq!(
        (st, m["payload"].as_str()),
        (200, Some(b64(b"via link").as_str()))
    );
    assert!(
        trap.accept().is_err(),
        "the router connected through the link"
    );

    assert_eq!(http(c.api, "DELETE", fwd, None).unwrap().0, 204);
    assert_eq!(json_req(&c, "GET", fwd, None).1, Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An application that asks and asks but never reads its answers cannot make the node hold
/// them without bound: past `--local-socket-outbox-mib` (4 here) of unread answers its
/// connection is closed. Another
/// application on the same socket is served all the while. An application also holds at most
/// 64 subscriptions per connection.
#[test]
fn a_local_application_that_never_reads_is_cut_off() {
    use hyphae_wire::framing::{Kind, Message, StatusQuery, Subscribe};
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    let metrics = format!("127.0.0.1:{}", common::free_port());
    let n = Node::start(
        "outbox",
        "portable",
        45,
        &[
            "--local-socket-outbox-mib".into(),
            "4".into(),
            "--metrics-api-address".into(),
            metrics.clone(),
        ],
    );
    // 65 subscriptions on one connection: the last is refused.
    let mut app = local::App::connect(&n.local_socket());
    for i in 0..65u8 {
        app.send(&Message::Subscribe(Subscribe {
            tag: u64::from(i),
            topic: Some(&[b't', i]),
        }));
    }
    let (kind, body) = app.recv();
    assert_eq!(kind, Kind::ERROR, "the 65th subscription is refused");
    assert!(String::from_utf8_lossy(&body).contains("at most 64 subscriptions"));
    drop(app);

    // Status queries for unknown ids, each answered with an error, never read.
    let mut flood = UnixStream::connect(n.local_socket()).unwrap();
    let mut frame = bytes::BytesMut::new();
    Message::StatusQuery(StatusQuery {
        tag: 7,
        id: hyphae_wire::message::MessageId([9; 8]),
    })
    .encode(hyphae_wire::framing::DEFAULT_MAX_BODY, &mut frame)
    .unwrap();
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 4096)
        .collect();
    flood
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = std::time::Instant::now();
    let mut sent = 0usize;
    let cut_off = loop {
        if start.elapsed() > Duration::from_secs(120) {
            break false;
        }
        match flood.write_all(&burst) {
            Ok(()) => sent += 4096,
            Err(_) => break true,
        }
    };
    assert!(cut_off, "the connection is closed ({sent} queries sent)");
    assert!(
        n.log().contains("does not read its answers"),
        "and the node says why:\n{}",
        n.log()
    );
    let (_, page) = http(metrics.parse().unwrap(), "GET", "/metrics", None).unwrap();
    assert!(
        page.lines()
            .any(|l| l == "hyphae_local_socket_unread_closes_total 1"),
        "and counts it:\n{page}"
    );
    // Others are still served.
    let b_pk = hyphae_wire::identity::SecretKey::from_bytes([46; 32]).public_key();
    let mut other = local::App::connect(&n.local_socket());
    other.push(1, &b_pk, b"t", b"hello", None);
    assert_eq!(other.recv().0, Kind::PUSHED);
}

/// A subscriber that reads late loses nothing. While its outbox (1 MiB here) holds half of
/// that, its subscription takes no more messages: they wait in the node's inbox, their senders
/// still see them as received, not read, and the subscriber gets every one, in order, once it
/// reads. (A subscription used to take each message and queue it whatever the outbox held:
/// the connection was cut off for not reading, and what it had taken was gone, reported read.)
#[test]
fn a_subscriber_that_reads_late_loses_nothing() {
    use hyphae_wire::framing::{Message, MessageState};
    use hyphae_wire::identity::SecretKey;

    const N: usize = 1500;
    let payload = |i: usize| {
        let mut p = vec![(i % 251) as u8; 2048];
        p[..4].copy_from_slice(&(i as u32).to_be_bytes());
        p
    };
    let a = Node::start("late-a", "portable", 121, &[]);
    let b = Node::start(
        "late-b",
        "portable",
        122,
        &[
            "--peers".into(),
            a.tcp(),
            "--local-socket-outbox-mib".into(),
            "1".into(),
        ],
    );
    let (sa, sb) = (a.subnet(), b.subnet());
    wait_until(Duration::from_secs(10), || {
        a.has_route(&sb) && b.has_route(&sa)
    })
    .expect("up");
    let b_pk = SecretKey::from_bytes([122; 32]).public_key();
    let mut sub = local::App::connect(&b.local_socket());
    sub.subscribe(b"late");
    std::thread::sleep(Duration::from_millis(100));

    let mut client = local::App::connect(&a.local_socket());
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        client.push(i as u64, &b_pk, b"late", &payload(i), None);
        let (kind, body) = client.recv();
        match Message::decode(kind, &body) {
            Ok(Message::Pushed(p)) if p.tag == i as u64 => ids.push(p.id),
            other => panic!("push {i}: {other:?}"),
        }
    }
    // Every message reaches b's node; the subscriber has read nothing yet.
    let states = |client: &mut local::App| -> Vec<MessageState> {
        for (i, id) in ids.iter().enumerate() {
            client.status(i as u64, *id);
        }
        (0..N)
            .map(|_| {
                let (kind, body) = client.recv();
                match Message::decode(kind, &body) {
                    Ok(Message::Status(s)) => s.state,
                    other => panic!("status: {other:?}"),
                }
            })
            .collect()
    };
    let all_there = wait_until(Duration::from_secs(60), || {
        let st = states(&mut client);
        st.iter()
            .all(|s| matches!(s, MessageState::Received | MessageState::Read))
            .then_some(st)
    })
    .expect("every message reaches b");
    let read = all_there
        .iter()
        .filter(|s| **s == MessageState::Read)
        .count();
    assert!(
        read < N,
        "all {N} were taken by a subscriber that reads nothing (its outbox is 1 MiB)"
    );
    // Now it reads: every message, in order, none twice.
    for i in 0..N {
        let (kind, body) = sub.recv();
        match Message::decode(kind, &body) {
            Ok(Message::Deliver(d)) => assert_eq!(
                d.payload,
                payload(i).as_slice(),
                "message {i} of {N} ({read} were taken before the subscriber read)"
            ),
            other => panic!("message {i}: {other:?}"),
        }
    }
    let done = wait_until(Duration::from_secs(20), || {
        states(&mut client)
            .iter()
            .all(|s| *s == MessageState::Read)
            .then_some(())
    });
    assert!(done.is_some(), "every message is read in the end");
}

/// How a local-socket connection ends: an application cut off for not reading, or gone with
/// requests still waiting, leaves nothing behind.
mod local_socket_ends {

    use std::io::{ErrorKind, Write};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use super::common::{self, Node, http, wait_until};
    use bytes::BytesMut;
    use hyphae_wire::framing::{self, Destination, Message, Push, StatusQuery};

    fn fds(n: &Node) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", n.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn encode(m: &Message<'_>) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode(framing::DEFAULT_MAX_BODY, &mut b).unwrap();
        b.to_vec()
    }

    fn metric(addr: &str, name: &str) -> Option<u64> {
        let (_, page) = http(addr.parse().unwrap(), "GET", "/metrics", None)?;
        page.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
    }

    /// An application that never reads its answers is closed (counted, logged), and its socket
    /// and outbox of answers (up to `--local-socket-outbox-mib`) really go: the router must not
    /// wait for a writer stuck on the very application that does not read.
    #[test]
    fn a_connection_closed_for_not_reading_is_really_closed() {
        let metrics = format!("127.0.0.1:{}", common::free_port());
        let n = Node::start(
            "stall",
            "portable",
            61,
            &[
                "--local-socket-outbox-mib".into(),
                "1".into(),
                "--metrics-api-address".into(),
                metrics.clone(),
            ],
        );
        let before = fds(&n);
        let mut flood = UnixStream::connect(n.local_socket()).unwrap();
        let one = encode(&Message::StatusQuery(StatusQuery {
            tag: 7,
            id: hyphae_wire::message::MessageId([9; 8]),
        }));
        let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
        flood.set_nonblocking(true).unwrap();
        // Write until the router says it closed us for not reading.
        let start = Instant::now();
        let mut written = 0usize;
        while metric(&metrics, "hyphae_local_socket_unread_closes_total") != Some(1) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "never cut off ({written} bytes written, counter {:?})\n{}",
                metric(&metrics, "hyphae_local_socket_unread_closes_total"),
                n.log()
            );
            match flood.write(&burst[written % burst.len()..]) {
                Ok(k) => written += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        eprintln!(
            "cut off after {written} bytes of queries; router fds {before} -> {}",
            fds(&n)
        );
        // The router says it closed the connection: a write must now fail with a broken pipe. If
        // the router still holds its end, the write only finds the (full) socket buffer.
        let closed = wait_until(Duration::from_secs(10), || match flood.write(&one) {
            Err(e)
                if e.kind() == ErrorKind::BrokenPipe || e.kind() == ErrorKind::ConnectionReset =>
            {
                Some(true)
            }
            _ => None,
        });
        assert!(
            closed.is_some(),
            "10 s after counting the close, the router still holds the connection open \
             (router fds {before} -> {}, the write still gets WouldBlock)",
            fds(&n)
        );
    }

    /// Applications that push with a reply wait (here u32::MAX ms) and then go away: the
    /// router's end of each socket, its buffers and its tasks go with them, not when the wait
    /// runs out.
    #[test]
    fn a_departed_application_does_not_pin_its_connection() {
        let n = Node::start("leak", "portable", 62, &[]);
        // A destination with no route: the push is accepted, nobody will ever reply.
        let nobody = hyphae_wire::identity::SecretKey::from_bytes([63; 32]).public_key();
        let push = |wait| {
            encode(&Message::Push(Push {
                tag: 1,
                dst: Destination::PublicKey(*nobody.as_bytes()),
                topic: b"t",
                payload: b"hello",
                reply_to: None,
                reply_timeout_ms: wait,
            }))
        };
        let base = fds(&n);
        let round = |wait: Option<u32>| {
            let conns: Vec<UnixStream> = (0..100)
                .map(|_| {
                    let mut s = UnixStream::connect(n.local_socket()).unwrap();
                    s.write_all(&push(wait)).unwrap();
                    s
                })
                .collect();
            std::thread::sleep(Duration::from_millis(500));
            drop(conns);
            // Well past the 15 s after which a message without a route is aborted.
            let settled = wait_until(Duration::from_secs(20), || fds(&n) <= base + 5);
            (settled.is_some(), fds(&n))
        };
        let (ok, after_plain) = round(None);
        assert!(ok, "plain pushes: router fds {base} -> {after_plain}");
        let (ok, after_wait) = round(Some(u32::MAX));
        assert!(
            ok,
            "100 applications pushed with a reply wait and left 20 s ago: router fds {base} -> \
             {after_wait} (their sockets are still held)"
        );
    }
}

/// An application that writes a push (no reply wait) and closes its socket at once —
/// fire and forget — must still have its message sent: the router read the whole request
/// before the close.
#[test]
fn a_push_then_close_is_still_sent() {
    use hyphae_wire::identity::SecretKey;
    let a = Node::start("ffa", "portable", 111, &[]);
    let b = Node::start("ffb", "portable", 112, &["--peers".into(), a.tcp()]);
    let (sa, sb) = (a.subnet(), b.subnet());
    wait_until(Duration::from_secs(10), || {
        a.has_route(&sb) && b.has_route(&sa)
    })
    .expect("up");
    let b_pk = SecretKey::from_bytes([112; 32]).public_key();
    let mut lost = 0;
    for i in 0..5u8 {
        let mut app = local::App::connect(&a.local_socket());
        app.push(1, &b_pk, b"ff", &[i; 8], None);
        drop(app); // fire and forget: the application closes at once
        let (st, got) = json_req(&b, "GET", "/api/v1/messages?timeout=5", None);
        if st != 200 || got["payload"].as_str() != Some(b64(&[i; 8]).as_str()) {
            lost += 1;
        }
    }
    assert_eq!(
        lost, 0,
        "{lost} of 5 pushes written and then closed were never sent"
    );
}
