//! X-Matrix signing and verification against the spec's vectors and Synapse's header, and the
//! testkit's fake homeserver and federation client (direct and through a CONNECT proxy).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyphae_edge::testkit::{
    BIG_DOWNLOAD_PATH, FakeHomeserver, FederationClient, RequestBody, TestCa, big_body_byte,
    checksum, split_server_name,
};
use hyphae_edge::xmatrix::{
    CanonicalError, SigningKey, XMatrix, XMatrixError, canonical_json, public_key_from_base64,
    sign_request, verify_json, verify_request,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";
const SYNAPSE_HEADER: &str = r#"X-Matrix origin="localhost:8481",key="ed25519:a_XQZH",sig="4N3rfvsBglwZXU4UTv0PFTH2ZK7AyvQwnrP5xTf/eTIEWwrNCSOsYPSMwR9wQgKO+KcOv/lhGjO/DyW94TYYDA",destination="localhost:8482""#;

#[test]
fn spec_signing_vectors() {
    let key = SigningKey::from_seed_base64("ed25519:1", SPEC_SEED).unwrap();
    assert_eq!(key.key_id(), "ed25519:1");
    assert_eq!(
        key.sign_json(&json!({})).unwrap(),
        "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
    );
    assert_eq!(
        key.sign_json(&json!({"two": "Two", "one": 1})).unwrap(),
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
    );
    // The spec's signed form of the second vector verifies, with `unsigned` ignored.
    let signed = json!({
        "one": 1, "two": "Two", "unsigned": {"age_ts": 1},
        "signatures": {"domain": {"ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}}
    });
    verify_json(&signed, "domain", "ed25519:1", &key.public_key()).unwrap();
}

#[test]
fn canonical_json_sorts_and_rejects_non_integers() {
    assert_eq!(
        canonical_json(&json!({"b": [1, {"d": 1, "c": "\u{7}"}], "a": "é"})).unwrap(),
        r#"{"a":"é","b":[1,{"c":"\u0007","d":1}]}"#
    );
    assert!(matches!(
        canonical_json(&json!({"x": 2.5})),
        Err(CanonicalError::Float(_))
    ));
    assert!(matches!(
        canonical_json(&json!({"x": 1i64 << 53})),
        Err(CanonicalError::IntegerOutOfRange(_))
    ));
}

#[test]
fn synapse_header_parses() {
    let x = XMatrix::parse(SYNAPSE_HEADER.as_bytes()).unwrap();
    assert_eq!(
        x,
        XMatrix {
            origin: "localhost:8481".into(),
            destination: Some("localhost:8482".into()),
            key: "ed25519:a_XQZH".into(),
            sig: "4N3rfvsBglwZXU4UTv0PFTH2ZK7AyvQwnrP5xTf/eTIEWwrNCSOsYPSMwR9wQgKO+KcOv/lhGjO/DyW94TYYDA"
                .into(),
        }
    );
    assert_eq!(x.to_string(), SYNAPSE_HEADER);
}

#[test]
fn sign_verify_round_trip_and_tampering() {
    let key = SigningKey::generate("rt").unwrap();
    let pk = key.public_key();
    let origin = "localhost:8481";
    let dest = "localhost:8482";
    let uri = "/_matrix/federation/v1/send/1795777616311?x=%21room%3Aexample.org";
    let body = json!({"origin": origin, "origin_server_ts": 1_795_777_616_311i64, "pdus": [],
                      "edus": [{"edu_type": "m.typing", "content": {"typing": true}}]});
    let header = sign_request(&key, origin, dest, "PUT", uri, Some(&body))
        .unwrap()
        .to_string();
    assert!(header.starts_with(r#"X-Matrix origin="localhost:8481",key="ed25519:rt",sig=""#));
    assert!(header.ends_with(r#",destination="localhost:8482""#));
    let x = XMatrix::parse(header.as_bytes()).unwrap();
    verify_request(&x, dest, "PUT", uri, Some(&body), &pk).unwrap();

    // A re-encoded body is the same JSON value: still valid.
    let reencoded: Value =
        serde_json::from_str(&serde_json::to_string_pretty(&body).unwrap()).unwrap();
    verify_request(&x, dest, "PUT", uri, Some(&reencoded), &pk).unwrap();

    let changed_uri = "/_matrix/federation/v1/send/1795777616312?x=%21room%3Aexample.org";
    assert_eq!(
        verify_request(&x, dest, "PUT", changed_uri, Some(&body), &pk),
        Err(XMatrixError::BadSignature)
    );
    let decoded_uri = "/_matrix/federation/v1/send/1795777616311?x=!room:example.org";
    assert_eq!(
        verify_request(&x, dest, "PUT", decoded_uri, Some(&body), &pk),
        Err(XMatrixError::BadSignature)
    );
    let mut changed_body = body.clone();
    changed_body["origin_server_ts"] = json!(1_795_777_616_312i64);
    assert_eq!(
        verify_request(&x, dest, "PUT", uri, Some(&changed_body), &pk),
        Err(XMatrixError::BadSignature)
    );
    assert_eq!(
        verify_request(&x, dest, "PUT", uri, None, &pk),
        Err(XMatrixError::BadSignature)
    );
    assert_eq!(
        verify_request(&x, dest, "POST", uri, Some(&body), &pk),
        Err(XMatrixError::BadSignature)
    );
    assert!(matches!(
        verify_request(&x, "localhost:8483", "PUT", uri, Some(&body), &pk),
        Err(XMatrixError::DestinationMismatch { .. })
    ));
    // Rewriting the header's destination to the receiver does not help: the signature
    // covers the original destination.
    let mut rewritten = x.clone();
    rewritten.destination = Some("localhost:8483".into());
    assert_eq!(
        verify_request(&rewritten, "localhost:8483", "PUT", uri, Some(&body), &pk),
        Err(XMatrixError::BadSignature)
    );
    let mut other_origin = x.clone();
    other_origin.origin = "evil:8481".into();
    assert_eq!(
        verify_request(&other_origin, dest, "PUT", uri, Some(&body), &pk),
        Err(XMatrixError::BadSignature)
    );
}

#[test]
fn malformed_headers_are_errors_not_panics() {
    let cases: &[&[u8]] = &[
        b"",
        b" ",
        b"X-Matrix ",
        b"Basic dXNlcjpwYXNz",
        b"X-Matrix origin",
        b"X-Matrix origin=",
        b"X-Matrix origin=\"",
        b"X-Matrix origin=\"\\",
        b"X-Matrix origin=a,key=ed25519:1",
        b"X-Matrix origin=a;key=ed25519:1;sig=x",
        b"X-Matrix origin=a,key=ed25519:1,sig=x,key=ed25519:2",
        b"X-Matrix origin=\"a\"b,key=ed25519:1,sig=x",
        b"X-Matrix origin=\xc3\x28,key=ed25519:1,sig=x",
        b"X-Matrix origin=a\r\n,key=ed25519:1,sig=x",
        b"\xff\xff\xff",
    ];
    for case in cases {
        assert!(
            XMatrix::parse(case).is_err(),
            "{:?} parsed",
            String::from_utf8_lossy(case)
        );
    }
    // Deterministic pseudo-random garbage around a valid header never panics.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let mut bytes = SYNAPSE_HEADER.as_bytes().to_vec();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % bytes.len() as u64) as usize;
            bytes[at] = (state >> 32) as u8;
        }
        if let Ok(x) = XMatrix::parse(&bytes) {
            // Whatever parses prints back to something that parses to the same thing.
            assert_eq!(XMatrix::parse(x.to_string().as_bytes()).unwrap(), x);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// testkit: fake homeserver + federation client
// ---------------------------------------------------------------------------------------------

const HS_B: &str = "hs-b.test:8448";
const HS_A: &str = "hs-a.test:8448";

struct Setup {
    ca: TestCa,
    hs: FakeHomeserver,
    key_a: SigningKey,
}

async fn setup() -> Setup {
    let ca = TestCa::generate("hyphae test CA").unwrap();
    let (host, _) = split_server_name(HS_B).unwrap();
    let tls = ca.leaf(&[host, "127.0.0.1"]).unwrap();
    let hs = FakeHomeserver::start(HS_B, tls, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let key_a = SigningKey::generate("a1").unwrap();
    hs.trust(HS_A, key_a.key_id(), key_a.public_key());
    Setup { ca, hs, key_a }
}

fn direct_client(s: &Setup) -> FederationClient {
    FederationClient::direct(HS_A, s.key_a.clone(), &[&s.ca.cert_pem()], s.hs.addr())
        .unwrap()
        .with_timeout(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_homeserver_serves_keys_and_version_unsigned() {
    let s = setup().await;
    let client = direct_client(&s);
    let resp = client
        .request_with_authorization(HS_B, "GET", "/_matrix/key/v2/server", None, None)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let doc = resp.json().unwrap();
    assert_eq!(doc["server_name"], HS_B);
    let published = doc["verify_keys"][s.hs.key_id()]["key"].as_str().unwrap();
    assert_eq!(
        public_key_from_base64(published).unwrap(),
        s.hs.public_key()
    );
    verify_json(&doc, HS_B, s.hs.key_id(), &s.hs.public_key()).unwrap();
    assert!(doc["valid_until_ts"].as_u64().unwrap() > 1_700_000_000_000);

    let resp = client
        .request_with_authorization(HS_B, "GET", "/_matrix/federation/v1/version", None, None)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.json().unwrap()["server"]["name"].is_string());
    assert!(s.hs.recorded().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_signed_requests() {
    let s = setup().await;
    let client = direct_client(&s);

    // Signed PUT with a body.
    let txn = json!({"origin": HS_A, "origin_server_ts": 1_700_000_000_000i64,
                     "pdus": [], "edus": [{"edu_type": "m.presence", "content": {"push": []}}]});
    let sent = serde_json::to_vec(&txn).unwrap();
    let resp = client
        .request(
            HS_B,
            "PUT",
            "/_matrix/federation/v1/send/17",
            Some(txn.clone().into()),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(
        resp.headers.get("content-type").unwrap(),
        "application/json"
    );
    let echo = resp.json().unwrap();
    assert_eq!(echo["ok"], true);
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["target"], "/_matrix/federation/v1/send/17");
    assert_eq!(echo["len"], sent.len());
    assert_eq!(echo["origin"], HS_A);
    let rec = s.hs.recorded();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].method, "PUT");
    assert_eq!(rec[0].origin, HS_A);
    assert_eq!(rec[0].body_len, sent.len());
    assert_eq!(rec[0].checksum, checksum(&sent));

    // A percent-escaped target arrives byte for byte.
    let target =
        "/_matrix/federation/v1/state_ids/%21abc%3Ahs-a.test%3A8448?event_id=%24ev%2Bx%2F1";
    let resp = client.request(HS_B, "GET", target, None).await.unwrap();
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(resp.json().unwrap()["target"], target);
    assert_eq!(s.hs.recorded()[1].target, target);
    assert_eq!(s.hs.recorded()[1].body_len, 0);

    // The same JSON re-encoded differently (pretty, raw bytes) verifies: the signature covers
    // the parsed value.
    let pretty = Bytes::from(serde_json::to_vec_pretty(&txn).unwrap());
    let header = client
        .sign(HS_B, "PUT", "/_matrix/federation/v1/send/18", Some(&txn))
        .unwrap()
        .to_string();
    let resp = client
        .request_with_authorization(
            HS_B,
            "PUT",
            "/_matrix/federation/v1/send/18",
            Some(RequestBody::Raw(pretty.clone())),
            Some(&header),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(s.hs.recorded()[2].checksum, checksum(&pretty));

    // All of that went over one kept-alive connection.
    assert_eq!(client.connections_opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_rejections_are_401() {
    let s = setup().await;
    let client = direct_client(&s);
    let uri = "/_matrix/federation/v1/query/profile?user_id=%40u%3Ahs-b.test";
    let expect_401 = |resp: hyphae_edge::testkit::Response| {
        assert_eq!(resp.status, 401, "{:?}", resp.body);
        assert_eq!(resp.json().unwrap()["errcode"], "M_UNAUTHORIZED");
    };

    // Signed for another destination.
    let other = client.sign("hs-c.test:8448", "GET", uri, None).unwrap();
    expect_401(
        client
            .request_with_authorization(HS_B, "GET", uri, None, Some(&other.to_string()))
            .await
            .unwrap(),
    );
    // Same signature with the header's destination rewritten to the receiver.
    let mut rewritten = other.clone();
    rewritten.destination = Some(HS_B.into());
    expect_401(
        client
            .request_with_authorization(HS_B, "GET", uri, None, Some(&rewritten.to_string()))
            .await
            .unwrap(),
    );
    // Signed for the percent-decoded target.
    let decoded = client
        .sign(
            HS_B,
            "GET",
            "/_matrix/federation/v1/query/profile?user_id=@u:hs-b.test",
            None,
        )
        .unwrap();
    expect_401(
        client
            .request_with_authorization(HS_B, "GET", uri, None, Some(&decoded.to_string()))
            .await
            .unwrap(),
    );
    // Signed over another body.
    let signed_body = json!({"a": 1});
    let header = client
        .sign(HS_B, "POST", uri, Some(&signed_body))
        .unwrap()
        .to_string();
    expect_401(
        client
            .request_with_authorization(
                HS_B,
                "POST",
                uri,
                Some(json!({"a": 2}).into()),
                Some(&header),
            )
            .await
            .unwrap(),
    );
    // No header, a garbage header, an untrusted key.
    expect_401(
        client
            .request_with_authorization(HS_B, "GET", uri, None, None)
            .await
            .unwrap(),
    );
    expect_401(
        client
            .request_with_authorization(HS_B, "GET", uri, None, Some("X-Matrix origin=\"x"))
            .await
            .unwrap(),
    );
    let stranger = FederationClient::direct(
        "hs-z.test",
        SigningKey::generate("z").unwrap(),
        &[&s.ca.cert_pem()],
        s.hs.addr(),
    )
    .unwrap();
    expect_401(stranger.request(HS_B, "GET", uri, None).await.unwrap());
    // Nothing was accepted, and the signed request itself still is.
    assert!(s.hs.recorded().is_empty());
    let ok = client.request(HS_B, "GET", uri, None).await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(s.hs.recorded().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_download_streams_exactly_n_bytes() {
    let s = setup().await;
    let client = direct_client(&s);
    for size in [0u64, 1, 250, 251 * 256, 5 * 1024 * 1024 + 7] {
        let target = format!("{BIG_DOWNLOAD_PATH}?size={size}");
        let resp = client.request(HS_B, "GET", &target, None).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.headers.get("content-type").unwrap(),
            "application/octet-stream"
        );
        assert_eq!(resp.body.len() as u64, size);
        assert!(
            resp.body
                .iter()
                .enumerate()
                .all(|(i, &b)| b == big_body_byte(i as u64)),
            "pattern of size {size}"
        );
    }
    // The download needs a signature too.
    let resp = client
        .request_with_authorization(
            HS_B,
            "GET",
            &format!("{BIG_DOWNLOAD_PATH}?size=10"),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(client.connections_opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_a_small_pool() {
    let s = setup().await;
    let client = Arc::new(direct_client(&s));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .request(
                    HS_B,
                    "PUT",
                    &format!("/_matrix/federation/v1/send/{i}"),
                    Some(json!({"i": i}).into()),
                )
                .await
                .unwrap()
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(s.hs.recorded().len(), 8);
    let opened = client.connections_opened();
    assert!((1..=8).contains(&opened), "{opened}");
    // Later sequential requests reuse the pooled connections.
    for _ in 0..4 {
        let r = client
            .request(HS_B, "GET", "/_matrix/federation/v1/event/%24x", None)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(client.connections_opened(), opened);
}

/// A minimal HTTPS CONNECT proxy: reads `CONNECT host:port`, connects to the mapped address,
/// answers 200 and copies bytes both ways.
struct ConnectProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    tunnels: Arc<Mutex<Vec<AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    async fn start(routes: HashMap<String, SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let (seen2, tunnels2) = (seen.clone(), tunnels.clone());
        let task = tokio::spawn(async move {
            let routes = Arc::new(routes);
            while let Ok((mut client, _)) = listener.accept().await {
                let (routes, seen) = (routes.clone(), seen2.clone());
                let handle = tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        match client.read_u8().await {
                            Ok(b) => head.push(b),
                            Err(_) => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let mut words = head.split_whitespace();
                    let (Some("CONNECT"), Some(authority)) = (words.next(), words.next()) else {
                        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        return;
                    };
                    seen.lock().unwrap().push(head.clone());
                    let Some(target) = routes.get(authority) else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
                tunnels2.lock().unwrap().push(handle.abort_handle());
            }
        });
        Self {
            addr,
            seen,
            tunnels,
            task,
        }
    }

    fn kill_tunnels(&self) {
        for t in self.tunnels.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.kill_tunnels();
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_connect_proxy() {
    let s = setup().await;
    let proxy = ConnectProxy::start(HashMap::from([(HS_B.to_owned(), s.hs.addr())])).await;
    let client =
        FederationClient::via_proxy(HS_A, s.key_a.clone(), &[&s.ca.cert_pem()], proxy.addr)
            .unwrap()
            .with_timeout(Duration::from_secs(30));

    let target = "/_matrix/federation/v2/send_join/%21r%3Ahs-b.test/%24e?omit_members=true";
    let body = json!({"type": "m.room.member", "content": {"membership": "join"}});
    let resp = client
        .request(HS_B, "PUT", target, Some(body.clone().into()))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(resp.json().unwrap()["target"], target);
    let resp = client
        .request(
            HS_B,
            "GET",
            &format!("{BIG_DOWNLOAD_PATH}?size=300000"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.body.len(), 300_000);
    assert_eq!(
        proxy.seen.lock().unwrap().clone(),
        vec![format!("CONNECT {HS_B} HTTP/1.1\r\nHost: {HS_B}\r\n\r\n")]
    );
    assert_eq!(client.connections_opened(), 1);

    // A closed tunnel is replaced by a new one.
    proxy.kill_tunnels();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // On a loaded machine the pooled connection may not have seen the close yet: a request
    // sent on it fails and is tried again, as a homeserver would.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let resp = loop {
        match client
            .request(HS_B, "PUT", target, Some(body.clone().into()))
            .await
        {
            Ok(r) => break r,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "no new tunnel after 10 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(resp.status, 200);
    assert_eq!(client.connections_opened(), 2);
    assert_eq!(proxy.seen.lock().unwrap().len(), 2);

    // A destination the proxy refuses is an error, not a hang.
    let err = client
        .request("hs-c.test", "GET", "/_matrix/federation/v1/version", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("502"), "{err:#}");
    assert_eq!(
        proxy.seen.lock().unwrap().last().unwrap(),
        "CONNECT hs-c.test:8448 HTTP/1.1\r\nHost: hs-c.test:8448\r\n\r\n"
    );

    s.hs.shutdown().await;
    // After shutdown the homeserver's connections are gone: a fresh tunnel cannot reach it.
    proxy.kill_tunnels();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        client
            .request(HS_B, "GET", "/_matrix/federation/v1/event/%24x", None)
            .await
            .is_err()
    );
}

#[test]
fn server_names_split() {
    assert_eq!(split_server_name("hs.test"), Some(("hs.test", 8448)));
    assert_eq!(
        split_server_name("localhost:8481"),
        Some(("localhost", 8481))
    );
    assert_eq!(split_server_name("1.2.3.4:99"), Some(("1.2.3.4", 99)));
    assert_eq!(split_server_name("[::1]:8448"), Some(("::1", 8448)));
    assert_eq!(split_server_name("[::1]"), Some(("::1", 8448)));
    assert_eq!(split_server_name(""), None);
    assert_eq!(split_server_name("a:b"), None);
    assert_eq!(split_server_name("::1"), None);
    assert_eq!(split_server_name("[::1]x"), None);
}
