//! hyphae-router beside stock mycelium 0.7.10, the real thing: links over TCP and QUIC, dialed
//! from either side, carry routes and sealed messages both ways. Needs the stock binary
//! (`HYPHAE_STOCK_MYCELIUM`); where it is missing each test prints one `SKIPPED:` line.

mod common;

use std::time::Duration;

use common::{Node, http, wait_until};
use hyphae_test_support::{Capability, require, stock_mycelium};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(15);

/// Sends `payload` from `from` to `to` with the message API and reads it at `to`.
fn message_crosses(from: &Node, to: &Node, payload: &str) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dst = to.info()["nodePubkey"].as_str().unwrap().to_owned();
    let body = format!(
        r#"{{"dst":{{"pk":"{dst}"}},"payload":"{}"}}"#,
        b64.encode(payload)
    );
    // The first push may find no route yet on the sender's side: pushes are retried.
    wait_until(CONVERGE, || {
        http(from.api, "POST", "/api/v1/messages", Some(&body)).is_some_and(|(s, _)| s < 300)
    })
    .unwrap_or_else(|| panic!("{} takes the push", from.name));
    let got = wait_until(CONVERGE, || {
        let (status, body) = http(to.api, "GET", "/api/v1/messages?timeout=1", None)?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        b64.decode(v["payload"].as_str()?).ok()
    })
    .unwrap_or_else(|| panic!("{} receives the message from {}", to.name, from.name));
    assert_eq!(got, payload.as_bytes(), "{} -> {}", from.name, to.name);
}

fn link_with_stock(test: &str, proto: &str, hyphae_dials: bool) {
    if !require(test, Capability::StockMycelium) {
        return;
    }
    let bin = stock_mycelium();
    let (hyphae, stock) = if hyphae_dials {
        let stock = Node::start_stock("stock", &bin, 61, &[]);
        let ep = format!("{proto}://127.0.0.1:{}", stock.port);
        let hyphae = Node::start("hyphae", "portable", 62, &["--peers".to_owned(), ep]);
        (hyphae, stock)
    } else {
        let hyphae = Node::start("hyphae", "portable", 62, &[]);
        let ep = format!("{proto}://127.0.0.1:{}", hyphae.port);
        let stock = Node::start_stock("stock", &bin, 61, &[ep]);
        (hyphae, stock)
    };
    let (sh, ss) = (hyphae.subnet(), stock.subnet());
    wait_until(CONVERGE, || hyphae.has_route(&ss) && stock.has_route(&sh))
        .unwrap_or_else(|| panic!("routes both ways over {proto}: {}", stock.log()));
    let link = hyphae.get("/api/v1/admin/peers");
    assert!(
        link.as_array()
            .unwrap()
            .iter()
            .any(|p| p["endpoint"]["proto"] == proto && p["connectionState"] == "alive"),
        "{link}"
    );
    message_crosses(&hyphae, &stock, &format!("to stock over {proto}"));
    message_crosses(&stock, &hyphae, &format!("from stock over {proto}"));
}

#[test]
fn hyphae_dials_stock_over_tcp() {
    link_with_stock("hyphae_dials_stock_over_tcp", "tcp", true);
}

#[test]
fn hyphae_dials_stock_over_quic() {
    link_with_stock("hyphae_dials_stock_over_quic", "quic", true);
}

#[test]
fn stock_dials_hyphae_over_tcp() {
    link_with_stock("stock_dials_hyphae_over_tcp", "tcp", false);
}

#[test]
fn stock_dials_hyphae_over_quic() {
    link_with_stock("stock_dials_hyphae_over_quic", "quic", false);
}
