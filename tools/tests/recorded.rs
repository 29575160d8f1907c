//! The CLI against recorded responses of a stock mycelium 0.7 node (the shapes of WIRE.md
//! sections 5.2 and 6), served by a fake HTTP server: the CLI must work against the reference's
//! API as well as hyphae-router's (tests/router.rs drives a real router, messages included).

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{FakeApi, canned, hyphae, scratch};
use serde_json::{Value, json};

const PK_B: &str = "12df34a26d768ada613a711c904cf972106182716dffc25afd5b66868990541c";
const IP_A: &str = "4a9:5947:6719:badc:8460:a53d:bfb9:aafc";
const PK_A: &str = "8e08f198dcea2bf9ae8678eb92cd7cf6d0fbb6ea5e5c9a48491778d01bf2be01";
const IP_B: &str = "4d4:2461:ba86:3cd4:b700:3f9f:4e98:bfb4";

const PEERS: &str = r#"[{"endpoint":{"proto":"tcp","addr":{"socket":"127.0.0.1:19651"}},"type":"static","connectionState":"alive","txBytes":1536,"rxBytes":3145728,"discovered":185,"lastConnected":12},{"endpoint":{"proto":"quic","addr":{"socket":"[2001:db8::1]:9651"}},"type":"inbound","connectionState":"connecting","txBytes":0,"rxBytes":0,"discovered":4,"lastConnected":null},{"endpoint":{"proto":"vsock","addr":{"vsock":{"cid":3,"port":9651}}},"type":"linkLocalDiscovery","connectionState":"dead","txBytes":10,"rxBytes":20,"discovered":7210,"lastConnected":null}]"#;

fn args<'a>(api: &'a FakeApi, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--api-addr", api.addr.as_str()];
    v.extend_from_slice(rest);
    v
}

#[test]
fn peers_list_shows_the_reference_peer_stats() {
    let api = FakeApi::start(vec![canned("GET /api/v1/admin/peers", 200, PEERS)]);
    let out = hyphae(&args(&api, &["peers", "list"]));
    let lines: Vec<&str> = out.ok().lines().collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    let cols: Vec<&str> = lines[0].split("  ").filter(|c| !c.is_empty()).collect();
    let cols: Vec<&str> = cols.iter().map(|c| c.trim()).collect();
    assert_eq!(
        cols,
        [
            "Protocol",
            "Socket",
            "Type",
            "Connection",
            "Rx total",
            "Tx total",
            "Discovered",
            "Last connection"
        ]
    );
    let row = |i: usize| -> Vec<String> {
        lines[i]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        row(2),
        [
            "tcp",
            "127.0.0.1:19651",
            "static",
            "alive",
            "3.00 MiB",
            "1.50 KiB",
            "3m 05s ago",
            "12s ago"
        ]
    );
    assert_eq!(
        row(3)[..4],
        ["quic", "[2001:db8::1]:9651", "inbound", "connecting"]
    );
    assert_eq!(row(3)[7], "never");
    assert_eq!(row(4)[..2], ["vsock", "vsock 3:9651"]);
    assert_eq!(row(4)[6], "2h 00m 10s ago");
    // Columns line up: every cell of a column starts at the same offset.
    let at = lines[0].find("Connection").unwrap();
    assert_eq!(&lines[2][at..at + 5], "alive");
    // --json (after or before the subcommand) is the API's JSON.
    for a in [
        &["peers", "list", "--json"][..],
        &["--json", "peers", "list"][..],
    ] {
        let v: Value = serde_json::from_str(hyphae(&args(&api, a)).ok()).unwrap();
        assert_eq!(v, serde_json::from_str::<Value>(PEERS).unwrap());
    }
    assert!(
        api.seen()
            .iter()
            .all(|s| s.method == "GET" && s.path == "/api/v1/admin/peers")
    );
}

#[test]
fn routes_show_infinite_metrics_and_queried_subnets() {
    let selected = r#"[{"subnet":"4d4:2461:ba86:3cd4::/64","nextHop":"TCP 127.0.0.1:9651 <-> 127.0.0.1:40522","metric":1000,"seqno":3}]"#;
    let fallback = r#"[{"subnet":"54b:1d19:38ca:efdd::/64","nextHop":"QUIC [::1]:9651 <-> [::1]:51000","metric":"infinite","seqno":0}]"#;
    let queried = r#"[{"subnet":"57a:545c:db11:96::/64","expiration":"4"}]"#;
    let api = FakeApi::start(vec![
        canned("GET /api/v1/admin/routes/selected", 200, selected),
        canned("GET /api/v1/admin/routes/fallback", 200, fallback),
        canned("GET /api/v1/admin/routes/queried", 200, queried),
    ]);
    let out = hyphae(&args(&api, &["routes", "selected"]));
    let lines: Vec<&str> = out.ok().lines().collect();
    assert!(lines[0].starts_with("Subnet") && lines[0].contains("Next Hop"));
    assert!(lines[0].contains("Metric") && lines[0].ends_with("Seq No"));
    assert!(
        lines[2]
            .starts_with("4d4:2461:ba86:3cd4::/64  TCP 127.0.0.1:9651 <-> 127.0.0.1:40522  1000")
    );
    assert!(lines[2].ends_with(" 3"));
    let out = hyphae(&args(&api, &["routes", "fallback"]));
    let row = out.ok().lines().nth(2).unwrap().to_owned();
    assert!(row.contains("  infinite  "), "{row}");
    let v: Value =
        serde_json::from_str(hyphae(&args(&api, &["routes", "fallback", "--json"])).ok()).unwrap();
    assert_eq!(v[0]["metric"], "infinite");
    let out = hyphae(&args(&api, &["routes", "queried"]));
    let lines: Vec<&str> = out.ok().lines().collect();
    assert_eq!(lines[0], "Subnet                 Query expiration");
    assert_eq!(lines[2], "57a:545c:db11:96::/64  4s");
}

#[test]
fn stats_packets_read_a_chunked_answer() {
    let body = r#"{"bySource":[{"ip":"4a9:5947:6719:badc:8460:a53d:bfb9:aafc","packetCount":12,"byteCount":4441}],"byDestination":[{"ip":"4d4:2461:ba86:3cd4:b700:3f9f:4e98:bfb4","packetCount":3,"byteCount":100}]}"#;
    let mut c = canned("GET /api/v1/admin/stats/packets", 200, body);
    c.chunked = true;
    let api = FakeApi::start(vec![c]);
    let out = hyphae(&args(&api, &["stats", "packets"]));
    let text = out.ok();
    assert!(text.starts_with("By source:\nAddress"), "{text}");
    assert!(
        text.contains(&format!("{IP_A}  12       4.34 KiB")),
        "{text}"
    );
    assert!(text.contains("By destination:\nAddress"), "{text}");
    assert!(text.contains(&format!("{IP_B}  3        100 B")), "{text}");
    let v: Value =
        serde_json::from_str(hyphae(&args(&api, &["stats", "packets", "--json"])).ok()).unwrap();
    assert_eq!(v, serde_json::from_str::<Value>(body).unwrap());
}

#[test]
fn peers_add_and_remove_send_the_reference_requests() {
    let api = FakeApi::start(vec![
        canned("POST /api/v1/admin/peers", 204, ""),
        canned(
            "DELETE /api/v1/admin/peers/tcp%3A%2F%2F%5B2001%3Adb8%3A%3A1%5D%3A9651",
            204,
            "",
        ),
        canned("DELETE /api/v1/admin/peers/", 404, "Peer not found"),
    ]);
    let out = hyphae(&args(
        &api,
        &[
            "peers",
            "add",
            "tcp://192.0.2.1:9651",
            "quic://[2001:db8::1]:9651",
        ],
    ));
    assert_eq!(
        out.ok(),
        "Added peer tcp://192.0.2.1:9651\nAdded peer quic://[2001:db8::1]:9651\n"
    );
    let out = hyphae(&args(
        &api,
        &["peers", "remove", "tcp://[2001:db8::1]:9651"],
    ));
    assert_eq!(out.ok(), "Removed peer tcp://[2001:db8::1]:9651\n");
    let line = hyphae(&args(&api, &["peers", "remove", "tcp://192.0.2.9:9651"]))
        .fails(1)
        .to_owned();
    assert_eq!(
        line,
        "hyphae: cannot remove peer tcp://192.0.2.9:9651: the API answered 404 Not Found: Peer not found"
    );
    let seen = api.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].body).unwrap(),
        json!({"endpoint": "tcp://192.0.2.1:9651"})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&seen[1].body).unwrap(),
        json!({"endpoint": "quic://[2001:db8::1]:9651"})
    );
    assert_eq!(seen[2].method, "DELETE");
    // A usage error: no endpoint.
    let out = hyphae(&args(&api, &["peers", "add"]));
    out.fails(2);
}

#[test]
fn message_send_posts_base64_and_prints_the_id() {
    let api = FakeApi::start(vec![canned(
        "POST /api/v1/messages",
        201,
        r#"{"id":"54d79a07138638ca"}"#,
    )]);
    let out = hyphae(&args(
        &api,
        &[
            "message",
            "send",
            "-t",
            "vector.topic",
            PK_B,
            "hello from A",
        ],
    ));
    assert_eq!(out.ok(), "Message id: 54d79a07138638ca\n");
    let out = hyphae(&args(&api, &["message", "send", "--json", IP_B, "x"]));
    assert_eq!(
        serde_json::from_str::<Value>(out.ok()).unwrap(),
        json!({"id": "54d79a07138638ca"})
    );
    // The payload from a file, bytes as they are.
    let dir = scratch("send");
    let f = dir.join("payload.bin");
    std::fs::write(&f, [0u8, 0xff, 0x10, b'a']).unwrap();
    hyphae(&args(
        &api,
        &["message", "send", "--msg-path", f.to_str().unwrap(), PK_B],
    ))
    .ok();
    let seen = api.seen();
    assert!(
        seen.iter()
            .all(|s| s.method == "POST" && s.path == "/api/v1/messages")
    );
    let bodies: Vec<Value> = seen
        .iter()
        .map(|s| serde_json::from_str(&s.body).unwrap())
        .collect();
    assert_eq!(
        bodies[0],
        json!({"dst": {"pk": PK_B}, "topic": B64.encode("vector.topic"), "payload": B64.encode("hello from A")})
    );
    assert_eq!(bodies[1], json!({"dst": {"ip": IP_B}, "payload": "eA=="}));
    assert_eq!(bodies[2]["payload"], B64.encode([0u8, 0xff, 0x10, b'a']));
    // Bad destinations and topics never reach the API.
    let line = hyphae(&args(&api, &["message", "send", "2001:db8::1", "x"]))
        .fails(1)
        .to_owned();
    assert!(line.contains("not an overlay address (400::/7)"), "{line}");
    let line = hyphae(&args(&api, &["message", "send", "nonsense", "x"]))
        .fails(1)
        .to_owned();
    assert!(line.contains("invalid destination 'nonsense'"), "{line}");
    let long = "t".repeat(256);
    let line = hyphae(&args(&api, &["message", "send", "-t", &long, PK_B, "x"]))
        .fails(1)
        .to_owned();
    assert!(line.contains("topic too long"), "{line}");
    hyphae(&args(&api, &["message", "send", PK_B])).fails(1);
    assert_eq!(api.seen().len(), 3);
}

fn reply_json(payload: &[u8], topic: Option<&[u8]>) -> String {
    let mut v = json!({
        "id": "54d79a07138638ca",
        "srcIp": IP_B,
        "srcPk": PK_B,
        "dstIp": IP_A,
        "dstPk": PK_A,
        "payload": B64.encode(payload),
    });
    if let Some(t) = topic {
        v["topic"] = json!(B64.encode(t));
    }
    v.to_string()
}

#[test]
fn message_send_waits_for_the_reply_or_times_out() {
    let reply = reply_json(b"pong", Some(b"vector.topic"));
    let api = FakeApi::start(vec![
        canned("POST /api/v1/messages?reply_timeout=5", 200, &reply),
        canned(
            "POST /api/v1/messages?reply_timeout=1",
            408,
            r#"{"id":"0011223344556677"}"#,
        ),
        canned("POST /api/v1/messages/reply/54d79a07138638ca", 204, ""),
    ]);
    let out = hyphae(&args(
        &api,
        &[
            "message",
            "send",
            "-w",
            "--timeout",
            "5",
            "-t",
            "vector.topic",
            PK_B,
            "ping",
        ],
    ));
    assert_eq!(
        out.ok(),
        format!(
            "Message 54d79a07138638ca\nFrom:    {IP_B} ({PK_B})\nTo:      {IP_A} ({PK_A})\nTopic:   vector.topic\nPayload: pong\n"
        )
    );
    let line = hyphae(&args(
        &api,
        &["message", "send", "--wait", "--timeout", "1", PK_B, "ping"],
    ))
    .fails(1)
    .to_owned();
    assert_eq!(
        line,
        "hyphae: no reply within 1 s (message id 0011223344556677)"
    );
    let out = hyphae(&args(
        &api,
        &[
            "message",
            "send",
            "--reply-to",
            "54d79a07138638ca",
            PK_B,
            "pong",
        ],
    ));
    assert_eq!(out.ok(), "Replied to message 54d79a07138638ca\n");
    let line = hyphae(&args(
        &api,
        &["message", "send", "--reply-to", "xyz", PK_B, "pong"],
    ))
    .fails(1)
    .to_owned();
    assert!(line.contains("invalid message id"), "{line}");
    let seen = api.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        serde_json::from_str::<Value>(&seen[2].body).unwrap(),
        json!({"dst": {"pk": PK_B}, "payload": B64.encode("pong")})
    );
}

#[test]
fn message_receive_prints_text_raw_base64_or_to_a_file() {
    let topic_q = "dmVjdG9yLnRvcGlj"; // base64("vector.topic"), nothing to escape
    let api = FakeApi::start(vec![
        canned(
            &format!("GET /api/v1/messages?peek=false&timeout=3&topic={topic_q}"),
            200,
            &reply_json(b"hello from B", Some(b"vector.topic")),
        ),
        canned(
            "GET /api/v1/messages?peek=false&timeout=4",
            200,
            &reply_json(&[0xff, 0x00, 0x61], None),
        ),
        canned("GET /api/v1/messages?peek=false&timeout=0", 204, ""),
    ]);
    let out = hyphae(&args(
        &api,
        &["message", "receive", "--timeout", "3", "-t", "vector.topic"],
    ));
    assert_eq!(
        out.ok(),
        format!(
            "Message 54d79a07138638ca\nFrom:    {IP_B} ({PK_B})\nTo:      {IP_A} ({PK_A})\nTopic:   vector.topic\nPayload: hello from B\n"
        )
    );
    let out = hyphae(&args(&api, &["message", "receive", "--timeout", "4"]));
    assert!(out.ok().ends_with("Payload: base64:/wBh\n"), "{out:?}");
    let out = hyphae(&args(
        &api,
        &["message", "receive", "--timeout", "4", "--raw"],
    ));
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout_bytes, [0xff, 0x00, 0x61]);
    let dir = scratch("recv");
    let f = dir.join("got.bin");
    let out = hyphae(&args(
        &api,
        &[
            "message",
            "receive",
            "--timeout",
            "4",
            "--msg-path",
            f.to_str().unwrap(),
        ],
    ));
    assert!(out.ok().contains("(3 bytes)"), "{out:?}");
    assert_eq!(std::fs::read(&f).unwrap(), [0xff, 0x00, 0x61]);
    let out = hyphae(&args(
        &api,
        &["message", "receive", "--timeout", "4", "--json"],
    ));
    assert_eq!(
        serde_json::from_str::<Value>(out.ok()).unwrap()["payload"],
        "/wBh"
    );
    // Nothing within the timeout: no output, status 0.
    let out = hyphae(&args(&api, &["message", "receive", "--timeout", "0"]));
    assert_eq!(out.ok(), "");
    assert_eq!(out.stderr, "No message within 0 s.\n");
    assert!(api.seen().iter().all(|s| s.method == "GET"));
}

#[test]
fn api_errors_are_one_line() {
    let api = FakeApi::start(vec![
        canned(
            "POST /api/v1/admin/peers",
            409,
            "A peer identified by tcp://192.0.2.1:9651 already exists",
        ),
        canned("GET /api/v1/admin/peers", 200, "this is not json"),
    ]);
    let line = hyphae(&args(&api, &["peers", "add", "tcp://192.0.2.1:9651"]))
        .fails(1)
        .to_owned();
    assert_eq!(
        line,
        "hyphae: cannot add peer tcp://192.0.2.1:9651: the API answered 409 Conflict: A peer identified by tcp://192.0.2.1:9651 already exists"
    );
    let line = hyphae(&args(&api, &["peers", "list"])).fails(1).to_owned();
    assert!(line.contains("not JSON"), "{line}");
}
