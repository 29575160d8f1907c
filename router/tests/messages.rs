//! The message API across routers (multi-process, loopback): request and reply over two hops
//! through the HTTP API, a 10 MB message, a receiver that vanishes mid-transfer, and long-polls
//! that never hold up other API calls.

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
    let a = Node::start("a", driver, 101, &[]);
    let b = Node::start("b", driver, 102, &["--peers".into(), a.tcp()]);
    let c = Node::start("c", driver, 103, &["--peers".into(), b.quic()]);
    let (sa, sc) = (a.subnet(), c.subnet());
    wait_until(Duration::from_secs(10), || {
        a.has_route(&sc) && b.has_route(&sa)
    })
    .expect("line up");
    (a, b, c)
}

#[test]
fn request_and_reply_over_two_hops_through_the_http_api() {
    for driver in common::drivers() {
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
