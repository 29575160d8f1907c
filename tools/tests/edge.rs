//! `hyphae edge ...` against a fake federation edge bridge API (`/api/v1/bridge/...`, served
//! in this process): the requests it sends (method, path, JSON body, bearer token), what it
//! prints, and its errors (the API's `error` text, usage errors that send nothing).

mod common;

use clap::Parser as _;
use common::{FakeApi, Run, canned, free_port, hyphae_vars};
use hyphae_tools::cli::{Cli, Command, EdgeCmd, EdgeRoutesCmd, Fallback};
use serde_json::{Value, json};

const PK_B: &str = "12df34a26d768ada613a711c904cf972106182716dffc25afd5b66868990541c";
const PK_C: &str = "8e08f198dcea2bf9ae8678eb92cd7cf6d0fbb6ea5e5c9a48491778d01bf2be01";

fn routes_json() -> String {
    json!([
        {"server_name": "b.example:8448", "pubkey": PK_B, "fallback": "direct"},
        {"server_name": "c.example", "pubkey": PK_C, "fallback": "never"},
    ])
    .to_string()
}

fn status_json() -> String {
    json!({
        "version": "0.1.0",
        "uptime_secs": 185,
        "proxy": "127.0.0.1:8450",
        "router": {"address": "unix:/run/hyphae/router.sock", "connected": true},
        "server_names": ["a.example", "a2.example"],
        "in_flight": 2,
        "destinations": [
            {"server_name": "b.example:8448", "pubkey": PK_B, "fallback": "direct", "state": "up"},
            {"server_name": "c.example", "pubkey": PK_C, "fallback": "never", "state": "down"},
        ],
    })
    .to_string()
}

/// `hyphae edge --edge-api ADDR ARGS...`, no token in the environment.
fn edge(api: &FakeApi, rest: &[&str]) -> Run {
    edge_env(api, rest, None)
}

fn edge_env(api: &FakeApi, rest: &[&str], token_env: Option<&str>) -> Run {
    let mut v = vec!["edge", "--edge-api", api.addr.as_str()];
    v.extend_from_slice(rest);
    hyphae_vars(&v, None, &[("HYPHAE_EDGE_TOKEN", token_env)])
}

fn body(s: &common::Seen) -> Value {
    serde_json::from_str(&s.body).unwrap_or_else(|e| panic!("body not JSON ({e}): {s:?}"))
}

#[test]
fn routes_add_posts_the_route_with_the_bearer_token() {
    let api = FakeApi::start(vec![canned(
        "POST /api/v1/bridge/routes",
        200,
        &routes_json(),
    )]);
    // Upper-case hex is taken and sent lower-case.
    let upper = PK_C.to_ascii_uppercase();
    let out = edge(
        &api,
        &[
            "--edge-token",
            "s3cr3t-T0ken",
            "routes",
            "add",
            "c.example",
            &upper,
            "--fallback",
            "never",
        ],
    );
    assert_eq!(
        out.ok(),
        format!("Added route c.example to {PK_C} (fallback never)\n")
    );
    // Without a token, flags after the subcommand, the default fallback.
    let out = hyphae_vars(
        &[
            "edge",
            "routes",
            "add",
            "b.example:8448",
            PK_B,
            "--edge-api",
            &api.addr,
        ],
        None,
        &[],
    );
    assert_eq!(
        out.ok(),
        format!("Added route b.example:8448 to {PK_B} (fallback direct)\n")
    );
    // The token from the environment; --edge-token wins over it.
    edge_env(
        &api,
        &["routes", "add", "b.example:8448", PK_B],
        Some("from-env"),
    )
    .ok();
    edge_env(
        &api,
        &[
            "routes",
            "add",
            "b.example:8448",
            PK_B,
            "--edge-token",
            "flag",
        ],
        Some("from-env"),
    )
    .ok();
    // --json: the route list the edge answered, as it is.
    let out = edge(&api, &["routes", "add", "b.example:8448", PK_B, "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(out.ok()).unwrap(),
        serde_json::from_str::<Value>(&routes_json()).unwrap()
    );

    let seen = api.seen();
    assert_eq!(seen.len(), 5, "{seen:?}");
    for s in &seen {
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("POST", "/api/v1/bridge/routes")
        );
        assert_eq!(s.header("content-type"), Some("application/json"));
        assert_eq!(
            s.header("content-length"),
            Some(s.body.len().to_string().as_str())
        );
    }
    assert_eq!(
        body(&seen[0]),
        json!({"server_name": "c.example", "pubkey": PK_C, "fallback": "never"})
    );
    assert_eq!(seen[0].header("authorization"), Some("Bearer s3cr3t-T0ken"));
    let b_direct = json!({"server_name": "b.example:8448", "pubkey": PK_B, "fallback": "direct"});
    for s in &seen[1..] {
        assert_eq!(body(s), b_direct);
    }
    assert_eq!(seen[1].header("authorization"), None);
    assert_eq!(seen[2].header("authorization"), Some("Bearer from-env"));
    assert_eq!(seen[3].header("authorization"), Some("Bearer flag"));
    assert_eq!(seen[4].header("authorization"), None);
}

#[test]
fn routes_list_prints_a_table_or_the_json() {
    let api = FakeApi::start(vec![canned(
        "GET /api/v1/bridge/routes",
        200,
        &routes_json(),
    )]);
    let out = edge(&api, &["--edge-token", "t", "routes", "list"]);
    assert_eq!(
        out.ok(),
        format!(
            "Server name     Public key{pad}  Fallback\n\
             --------------  {rule}  --------\n\
             b.example:8448  {PK_B}  direct\n\
             c.example       {PK_C}  never\n",
            pad = " ".repeat(54),
            rule = "-".repeat(64),
        )
    );
    for args in [
        &["routes", "list", "--json"][..],
        &["--json", "routes", "list"][..],
    ] {
        let out = edge(&api, args);
        assert_eq!(
            serde_json::from_str::<Value>(out.ok()).unwrap(),
            serde_json::from_str::<Value>(&routes_json()).unwrap()
        );
    }
    // --json before `edge` works too.
    let out = hyphae_vars(
        &["--json", "edge", "routes", "list", "--edge-api", &api.addr],
        None,
        &[],
    );
    assert_eq!(
        serde_json::from_str::<Value>(out.ok()).unwrap()[1]["fallback"],
        "never"
    );
    let seen = api.seen();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter()
            .all(|s| s.method == "GET" && s.path == "/api/v1/bridge/routes")
    );
    assert_eq!(seen[0].header("authorization"), Some("Bearer t"));
    assert_eq!(seen[0].body, "");

    // No routes: the header only.
    let empty = FakeApi::start(vec![canned("GET /api/v1/bridge/routes", 200, "[]")]);
    let out = edge(&empty, &["routes", "list"]);
    assert_eq!(out.ok().lines().count(), 2, "{out:?}");
    assert!(out.ok().starts_with("Server name  Public key  Fallback\n"));
}

#[test]
fn routes_remove_percent_encodes_the_name_and_404_is_an_error() {
    let api = FakeApi::start(vec![
        canned("DELETE /api/v1/bridge/routes/b.example%3A8448", 204, ""),
        canned(
            "DELETE /api/v1/bridge/routes/",
            404,
            r#"{"error":"no route for c.example:8448"}"#,
        ),
    ]);
    let out = edge(
        &api,
        &["--edge-token", "t", "routes", "remove", "b.example:8448"],
    );
    assert_eq!(out.ok(), "Removed route b.example:8448\n");
    let out = edge(&api, &["routes", "remove", "b.example:8448", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(out.ok()).unwrap(),
        json!({"removed": "b.example:8448"})
    );
    let out = edge(&api, &["routes", "remove", "c.example:8448"]);
    assert_eq!(out.fails(1), "hyphae: no route for c.example:8448");
    assert_eq!(out.stdout, "");
    // Anything but unreserved characters is escaped: the name stays one path segment.
    edge(&api, &["routes", "remove", "x/y z?"]).fails(1);

    let seen = api.seen();
    let got: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("DELETE", "/api/v1/bridge/routes/b.example%3A8448"),
            ("DELETE", "/api/v1/bridge/routes/b.example%3A8448"),
            ("DELETE", "/api/v1/bridge/routes/c.example%3A8448"),
            ("DELETE", "/api/v1/bridge/routes/x%2Fy%20z%3F"),
        ]
    );
    assert_eq!(seen[0].header("authorization"), Some("Bearer t"));
    assert_eq!(seen[1].header("authorization"), None);
}

#[test]
fn bad_arguments_are_usage_errors_and_send_nothing() {
    let api = FakeApi::start(vec![canned("POST /api/v1/bridge/routes", 200, "[]")]);
    for bad in [
        &PK_B[1..],                   // 63 digits
        &format!("{PK_B}0"),          // 65
        &format!("{}g", &PK_B[1..]),  // not hex
        &format!("0x{}", &PK_B[2..]), // a prefix
        "",
    ] {
        let out = edge(&api, &["routes", "add", "b.example", bad]);
        let line = out.fails(2);
        assert!(
            line.contains("expected a public key, 64 hex digits"),
            "{bad:?}: {line}"
        );
        assert_eq!(out.stdout, "");
    }
    let line = edge(
        &api,
        &[
            "routes",
            "add",
            "b.example",
            PK_B,
            "--fallback",
            "sometimes",
        ],
    )
    .fails(2)
    .to_owned();
    assert!(line.contains("sometimes"), "{line}");
    edge(&api, &["routes", "add", "b.example"]).fails(2);
    edge(&api, &["routes", "remove"]).fails(2);
    edge(&api, &["routes", "frobnicate"]).fails(2);
    // A token that cannot be a header value; the error does not repeat it.
    let out = edge(&api, &["--edge-token", "two words", "routes", "list"]);
    let line = out.fails(2);
    assert!(line.contains("invalid --edge-token"), "{line}");
    assert!(!line.contains("two words"), "{line}");
    edge(&api, &["--edge-token", "", "routes", "list"]).fails(2);
    // The same from the environment: an error (status 1), before any request.
    let out = edge_env(&api, &["routes", "list"], Some("bad\ttoken"));
    let line = out.fails(1);
    assert_eq!(
        line,
        "hyphae: invalid HYPHAE_EDGE_TOKEN: a token is visible ASCII without spaces"
    );
    assert!(api.seen().is_empty(), "{:?}", api.seen());
}

#[test]
fn status_shows_the_edge_and_its_destinations() {
    let api = FakeApi::start(vec![canned(
        "GET /api/v1/bridge/status",
        200,
        &status_json(),
    )]);
    let out = edge(&api, &["status"]);
    assert_eq!(
        out.ok(),
        format!(
            "Version:      0.1.0\n\
             Uptime:       3m 05s\n\
             Proxy:        127.0.0.1:8450\n\
             Router:       unix:/run/hyphae/router.sock (connected)\n\
             Server names: a.example, a2.example\n\
             In flight:    2\n\
             \n\
             Destinations:\n\
             Server name     Public key{pad}  Fallback  State\n\
             --------------  {rule}  --------  -----\n\
             b.example:8448  {PK_B}  direct    up\n\
             c.example       {PK_C}  never     down\n",
            pad = " ".repeat(54),
            rule = "-".repeat(64),
        )
    );
    let out = edge(&api, &["status", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(out.ok()).unwrap(),
        serde_json::from_str::<Value>(&status_json()).unwrap()
    );
    assert!(
        api.seen()
            .iter()
            .all(|s| s.method == "GET" && s.path == "/api/v1/bridge/status")
    );

    // A disconnected router, no server names, no destinations.
    let mut v: Value = serde_json::from_str(&status_json()).unwrap();
    v["router"]["connected"] = json!(false);
    v["server_names"] = json!([]);
    v["destinations"] = json!([]);
    let api = FakeApi::start(vec![canned(
        "GET /api/v1/bridge/status",
        200,
        &v.to_string(),
    )]);
    let out = edge(&api, &["status"]);
    let text = out.ok();
    assert!(
        text.contains("Router:       unix:/run/hyphae/router.sock (not connected)\n"),
        "{text}"
    );
    assert!(text.contains("Server names: -\n"), "{text}");
    assert!(text.ends_with("Destinations:\nServer name  Public key  Fallback  State\n-----------  ----------  --------  -----\n"), "{text}");
}

#[test]
fn api_errors_are_one_line() {
    let api = FakeApi::start(vec![
        canned(
            "POST /api/v1/bridge/routes",
            400,
            r#"{"error":"server name 'B..example' is not a valid server name"}"#,
        ),
        canned(
            "GET /api/v1/bridge/routes",
            401,
            r#"{"error":"missing or bad bearer token"}"#,
        ),
        canned(
            "GET /api/v1/bridge/status",
            403,
            "forbidden here\nsecond line",
        ),
        canned("DELETE /api/v1/bridge/routes/", 500, ""),
    ]);
    let out = edge(&api, &["routes", "add", "B..example", PK_B]);
    assert_eq!(
        out.fails(1),
        "hyphae: server name 'B..example' is not a valid server name"
    );
    let out = edge(&api, &["routes", "list", "--json"]);
    assert_eq!(out.fails(1), "hyphae: missing or bad bearer token");
    assert_eq!(out.stdout, "");
    let out = edge(&api, &["status"]);
    assert_eq!(
        out.fails(1),
        "hyphae: the edge API answered 403 Forbidden: forbidden here"
    );
    let out = edge(&api, &["routes", "remove", "b.example"]);
    assert_eq!(
        out.fails(1),
        "hyphae: the edge API answered 500 Internal Server Error"
    );
    // A 2xx that is not JSON.
    let junk = FakeApi::start(vec![canned("GET /api/v1/bridge/routes", 200, "not json")]);
    let line = edge(&junk, &["routes", "list"]).fails(1).to_owned();
    assert!(line.contains("not JSON"), "{line}");
}

#[test]
fn an_edge_that_does_not_listen_is_said_plainly() {
    let addr = format!("127.0.0.1:{}", free_port());
    for cmd in [
        &["status"][..],
        &["routes", "list"][..],
        &["routes", "remove", "x"][..],
    ] {
        let mut args = vec!["edge", "--edge-api", addr.as_str()];
        args.extend_from_slice(cmd);
        let out = hyphae_vars(&args, None, &[]);
        assert_eq!(
            out.fails(1),
            format!("hyphae: cannot reach the edge API at {addr}: connection refused")
        );
        assert_eq!(out.stdout, "");
    }
    let out = hyphae_vars(&["edge", "--edge-api", "no-port", "status"], None, &[]);
    assert!(
        out.fails(1)
            .starts_with("hyphae: bad edge API address 'no-port': "),
        "{out:?}"
    );
}

#[test]
fn edge_options_parse_anywhere_under_edge_with_their_defaults() {
    let cli = Cli::try_parse_from(["hyphae", "edge", "status"]).unwrap();
    let Command::Edge(e) = cli.command else {
        panic!("{cli:?}")
    };
    assert_eq!(e.edge_api, "127.0.0.1:8460");
    assert_eq!(e.edge_token, None);
    assert!(matches!(e.command, EdgeCmd::Status));

    for args in [
        &[
            "hyphae",
            "edge",
            "--edge-api",
            "[::1]:9",
            "--edge-token",
            "tk",
            "routes",
            "add",
            "n",
            PK_B,
        ][..],
        &[
            "hyphae",
            "edge",
            "routes",
            "--edge-token",
            "tk",
            "add",
            "n",
            PK_B,
            "--edge-api",
            "[::1]:9",
        ][..],
    ] {
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Edge(e) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(e.edge_api, "[::1]:9");
        assert_eq!(e.edge_token.as_deref(), Some("tk"));
        let EdgeCmd::Routes(EdgeRoutesCmd::Add {
            name,
            pubkey,
            fallback,
        }) = e.command
        else {
            panic!("{args:?}")
        };
        assert_eq!((name.as_str(), fallback), ("n", Fallback::Direct));
        assert_eq!(pubkey.to_string(), PK_B);
    }
    // The edge's options belong to `edge`.
    assert!(Cli::try_parse_from(["hyphae", "--edge-api", "x:1", "edge", "status"]).is_err());
    assert!(Cli::try_parse_from(["hyphae", "info", "--edge-token", "t"]).is_err());
}
