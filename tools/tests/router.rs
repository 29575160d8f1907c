//! The CLI against hyphae-router nodes started in this process (the portable driver, one
//! worker each): inspect, info, pubkey, peers list/add/remove, routes, stats, message send and
//! receive (topics, request and reply), and the one-line errors for an unreachable API, a bad
//! key and a bad address.

mod common;

use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use common::{free_port, hyphae, hyphae_env, scratch, wait_until};
use hyphae_router::daemon::{self, Running};
use hyphae_wire::identity::SecretKey;
use serde_json::Value;

struct Node {
    running: Option<Running>,
    api: String,
    port: u16,
}

impl Node {
    fn start(dir: &Path, name: &str, seed: u8) -> Self {
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&key, [seed; 32]).unwrap();
        let sock = dir.join(format!("{name}.sock"));
        // A port found free can be taken by a parallel test before the router binds it: then
        // start again on new ports.
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let api = format!("127.0.0.1:{}", free_port());
            let settings = daemon::config::Cli::try_parse_from([
                "hyphae-router",
                "-k",
                key.to_str().unwrap(),
                "-t",
                &port.to_string(),
                "-q",
                &port.to_string(),
                "--api-addr",
                &api,
                "--disable-peer-discovery",
                "--no-tun",
                "--workers",
                "1",
                "--driver",
                "portable",
                "--local-socket",
                sock.to_str().unwrap(),
            ])
            .unwrap()
            .settings()
            .unwrap();
            match daemon::start(settings) {
                Ok(running) => {
                    return Self {
                        running: Some(running),
                        api,
                        port,
                    };
                }
                Err(e) if e.to_string().contains("in use") => last = e.to_string(),
                Err(e) => panic!("router starts: {e}"),
            }
        }
        panic!("router starts: {last}")
    }

    fn cli(&self, args: &[&str]) -> common::Run {
        let mut v = vec!["--api-addr", self.api.as_str()];
        v.extend_from_slice(args);
        hyphae(&v)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut v = args.to_vec();
        v.push("--json");
        serde_json::from_str(self.cli(&v).ok()).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

#[test]
fn the_cli_drives_a_running_router() {
    let dir = scratch("router");
    let a = Node::start(&dir, "a", 0x11);
    let b = Node::start(&dir, "b", 0x22);
    let (pk_a, pk_b) = (
        SecretKey::from_bytes([0x11; 32]).public_key(),
        SecretKey::from_bytes([0x22; 32]).public_key(),
    );
    assert_eq!(a.running.as_ref().unwrap().public_key(), pk_a);

    // inspect: local, from the key file or a given key, as the reference computes it.
    let key_a = dir.join("a.key");
    let out = hyphae(&["inspect", "-k", key_a.to_str().unwrap()]);
    assert_eq!(
        out.ok(),
        format!("Public key: {pk_a}\nAddress: {}\n", pk_a.address())
    );
    let v: Value =
        serde_json::from_str(hyphae(&["inspect", "--json", &pk_b.to_string()]).ok()).unwrap();
    assert_eq!(v["publicKey"], pk_b.to_string());
    assert_eq!(v["address"], pk_b.address().to_string());
    // The default key file: $XDG_DATA_HOME/hyphae/priv_key.bin.
    let home = scratch("xdg");
    let out = hyphae_env(&["inspect"], None, Some(&home));
    let line = out.fails(1).to_owned();
    assert!(
        line.contains(&format!("{}/hyphae/priv_key.bin", home.display())),
        "{line}"
    );
    std::fs::create_dir_all(home.join("hyphae")).unwrap();
    std::fs::copy(&key_a, home.join("hyphae/priv_key.bin")).unwrap();
    let out = hyphae_env(&["inspect"], None, Some(&home));
    assert_eq!(
        out.ok(),
        format!("Public key: {pk_a}\nAddress: {}\n", pk_a.address())
    );

    // info
    let info = a.json(&["info"]);
    assert_eq!(info["nodePubkey"], pk_a.to_string());
    assert_eq!(info["nodeIp"], pk_a.address().to_string());
    let text = a.cli(&["info"]).ok().to_owned();
    assert!(text.contains(&format!("Public key:   {pk_a}")), "{text}");

    // peers: none, then b, then none again.
    let out = a.cli(&["peers", "list"]);
    assert_eq!(out.ok().lines().count(), 2, "header and rule only: {out:?}");
    assert_eq!(a.json(&["peers", "list"]), Value::Array(vec![]));
    let ep = format!("tcp://127.0.0.1:{}", b.port);
    assert_eq!(
        a.cli(&["peers", "add", &ep]).ok(),
        format!("Added peer {ep}\n")
    );
    let alive = wait_until(Duration::from_secs(10), || {
        let v = a.json(&["peers", "list"]);
        (v[0]["connectionState"] == "alive").then_some(v)
    })
    .expect("the peer comes up");
    assert_eq!(alive[0]["endpoint"]["proto"], "tcp");
    assert_eq!(
        alive[0]["endpoint"]["addr"]["socket"],
        format!("127.0.0.1:{}", b.port)
    );
    assert_eq!(alive[0]["type"], "static");
    let table = a.cli(&["peers", "list"]).ok().to_owned();
    let row = table.lines().nth(2).unwrap();
    assert!(
        row.starts_with(&format!("tcp       127.0.0.1:{}  static  alive", b.port)),
        "{table}"
    );
    // Adding it again is refused by the router: one line, status 1.
    let line = a.cli(&["peers", "add", &ep]).fails(1).to_owned();
    assert!(
        line.starts_with(&format!(
            "hyphae: cannot add peer {ep}: the API answered 409"
        )),
        "{line}"
    );

    // routes: b's /64 is selected on a; pubkey finds b's key through it.
    let subnet_b = pk_b.subnet().to_string();
    let routes = wait_until(Duration::from_secs(10), || {
        let v = a.json(&["routes", "selected"]);
        v.as_array()?
            .iter()
            .any(|r| r["subnet"] == subnet_b.as_str())
            .then_some(v)
    })
    .expect("a selects a route to b");
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("nextHop").is_some())
    );
    let table = a.cli(&["routes", "selected"]).ok().to_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{subnet_b}  "))),
        "{table}"
    );
    assert!(a.json(&["routes", "fallback"]).is_array());
    assert!(a.json(&["routes", "queried"]).is_array());
    let text = a.cli(&["routes", "queried"]).ok().to_owned();
    assert!(text.starts_with("Subnet"), "{text}");
    let out = a.cli(&["pubkey", &pk_b.address().to_string()]);
    assert_eq!(out.ok(), format!("Public key: {pk_b}\n"));
    let line = a.cli(&["pubkey", "5ff::1"]).fails(1).to_owned();
    assert!(line.contains("no route to 5ff::1"), "{line}");

    // stats
    let stats = a.json(&["stats", "packets"]);
    assert!(stats["bySource"].is_array() && stats["byDestination"].is_array());
    let text = a.cli(&["stats", "packets"]).ok().to_owned();
    assert!(
        text.starts_with("By source:\n") && text.contains("\nBy destination:\n"),
        "{text}"
    );

    // remove: the endpoint goes URL-encoded in the path.
    assert_eq!(
        a.cli(&["peers", "remove", &ep]).ok(),
        format!("Removed peer {ep}\n")
    );
    assert_eq!(a.json(&["peers", "list"]), Value::Array(vec![]));
    let line = a.cli(&["peers", "remove", &ep]).fails(1).to_owned();
    assert!(line.contains("the API answered 404"), "{line}");
    let line = a
        .cli(&["peers", "add", "carrier-pigeon://x"])
        .fails(1)
        .to_owned();
    assert!(line.contains("the API answered 400"), "{line}");
}

#[test]
fn an_unreachable_api_is_one_line_and_status_1() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    for cmd in [
        &["peers", "list"][..],
        &["routes", "selected"][..],
        &["stats", "packets"][..],
        &["info"][..],
        &["message", "receive", "--timeout", "1"][..],
    ] {
        let mut args = vec!["--api-addr", addr.as_str()];
        args.extend_from_slice(cmd);
        let out = hyphae(&args);
        assert_eq!(
            out.fails(1),
            format!("hyphae: cannot reach the API at {addr}: connection refused")
        );
        assert_eq!(out.stdout, "");
    }
    // --api-addr after the subcommand works the same.
    let out = hyphae(&["peers", "list", "--api-addr", &addr]);
    assert!(out.fails(1).contains(&addr));
}

#[test]
fn bad_keys_and_addresses_are_one_line() {
    let dir = scratch("bad");
    let line = hyphae(&["inspect", "abcd"]).fails(1).to_owned();
    assert_eq!(
        line,
        "hyphae: invalid public key 'abcd': expected 64 hex digits"
    );
    let short = dir.join("short.key");
    std::fs::write(&short, [1u8; 31]).unwrap();
    let line = hyphae(&["inspect", "-k", short.to_str().unwrap()])
        .fails(1)
        .to_owned();
    assert!(line.ends_with("expected 32 bytes, found 31"), "{line}");
    let missing = dir.join("missing.key");
    let line = hyphae(&["inspect", "-k", missing.to_str().unwrap()])
        .fails(1)
        .to_owned();
    assert!(
        line.contains("missing.key") && line.contains("No such file"),
        "{line}"
    );
    let line = hyphae(&["--api-addr", "nonsense", "peers", "list"])
        .fails(1)
        .to_owned();
    assert!(
        line.starts_with("hyphae: bad API address 'nonsense'"),
        "{line}"
    );
    let line = hyphae(&["pubkey", "not-an-ip"]).fails(1).to_owned();
    assert!(line.contains("invalid address 'not-an-ip'"), "{line}");
    // Usage errors: status 2, one line.
    hyphae(&["frobnicate"]).fails(2);
    hyphae(&["routes", "sideways"]).fails(2);
    assert_eq!(hyphae(&["peers"]).code, 2);
}

#[test]
fn messages_cross_between_two_routers() {
    let dir = scratch("messages");
    let a = Node::start(&dir, "a", 0x33);
    let b = Node::start(&dir, "b", 0x44);
    let pk_b = SecretKey::from_bytes([0x44; 32]).public_key();
    let pk_a = SecretKey::from_bytes([0x33; 32]).public_key();
    a.cli(&["peers", "add", &format!("tcp://127.0.0.1:{}", b.port)])
        .ok();
    let subnet_b = pk_b.subnet().to_string();
    wait_until(Duration::from_secs(10), || {
        let v = a.json(&["routes", "selected"]);
        v.as_array()?
            .iter()
            .any(|r| r["subnet"] == subnet_b.as_str())
            .then_some(())
    })
    .expect("a selects a route to b");

    // A message on a topic, to b's public key; b receives it with that topic.
    let b_api = b.api.clone();
    let rx = std::thread::spawn(move || {
        hyphae(&[
            "--api-addr",
            &b_api,
            "message",
            "receive",
            "--timeout",
            "20",
            "-t",
            "cli.topic",
        ])
    });
    std::thread::sleep(Duration::from_millis(200));
    let out = a.cli(&[
        "message",
        "send",
        "-t",
        "cli.topic",
        &pk_b.to_string(),
        "hello b",
    ]);
    assert!(out.ok().starts_with("Message id: "), "{out:?}");
    let got = rx.join().unwrap();
    let text = got.ok();
    assert!(
        text.contains(&format!("From:    {} ({pk_a})", pk_a.address())),
        "{text}"
    );
    assert!(text.contains("Topic:   cli.topic\n"), "{text}");
    assert!(text.ends_with("Payload: hello b\n"), "{text}");

    // Request and reply: a waits, b receives (JSON, to learn the id) and replies.
    let a_api = a.api.clone();
    let dest = pk_b.address().to_string();
    let tx = std::thread::spawn(move || {
        hyphae(&[
            "--api-addr",
            &a_api,
            "message",
            "send",
            "--wait",
            "--timeout",
            "20",
            &dest,
            "ping",
        ])
    });
    let req = b.json(&["message", "receive", "--timeout", "20"]);
    let id = req["id"].as_str().unwrap().to_owned();
    assert_eq!(req["payload"], "cGluZw==");
    let out = b.cli(&[
        "message",
        "send",
        "--reply-to",
        &id,
        &pk_a.to_string(),
        "pong",
    ]);
    assert_eq!(out.ok(), format!("Replied to message {id}\n"));
    let reply = tx.join().unwrap();
    let text = reply.ok();
    assert!(text.starts_with(&format!("Message {id}\n")), "{text}");
    assert!(text.ends_with("Payload: pong\n"), "{text}");
}
