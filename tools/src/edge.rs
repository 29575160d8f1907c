//! `hyphae edge ...`: a federation edge's bridge API (`/api/v1/bridge/...`), its status and its
//! routes from Matrix server names to the overlay public keys that serve them.
//!
//! The edge answers errors as `{"error": "..."}`; that text is the whole error line.

use std::env::VarError;

use anyhow::{Result, anyhow, bail};
use hyphae_wire::identity::PublicKey;
use serde_json::{Value, json};

use crate::cli::{EDGE_TOKEN_ENV, EdgeArgs, EdgeCmd, EdgeRoutesCmd, Fallback, check_bearer_token};
use crate::client::{Client, DEFAULT_TIMEOUT, Response, encode_component, status_text};
use crate::output::{self, Table, array, print_json, text};

/// The edge's status.
const STATUS_PATH: &str = "/api/v1/bridge/status";
/// The edge's routes; one route is `ROUTES_PATH/{server name, percent-encoded}`.
const ROUTES_PATH: &str = "/api/v1/bridge/routes";

/// Runs one `edge` command.
pub fn run(a: &EdgeArgs, json: bool) -> Result<()> {
    let api = client(a)?;
    match &a.command {
        EdgeCmd::Status => status(&api, json),
        EdgeCmd::Routes(EdgeRoutesCmd::List) => list(&api, json),
        EdgeCmd::Routes(EdgeRoutesCmd::Add {
            name,
            pubkey,
            fallback,
        }) => add(&api, name, pubkey, *fallback, json),
        EdgeCmd::Routes(EdgeRoutesCmd::Remove { name }) => remove(&api, name, json),
    }
}

/// The edge's API, with the token from `--edge-token` or else `$HYPHAE_EDGE_TOKEN` (empty:
/// none).
fn client(a: &EdgeArgs) -> Result<Client> {
    let token = match &a.edge_token {
        Some(t) => Some(t.clone()),
        None => match std::env::var(EDGE_TOKEN_ENV) {
            Ok(t) if t.is_empty() => None,
            Ok(t) => {
                check_bearer_token(&t).map_err(|why| anyhow!("invalid {EDGE_TOKEN_ENV}: {why}"))?;
                Some(t)
            }
            Err(VarError::NotPresent) => None,
            Err(VarError::NotUnicode(_)) => {
                bail!("invalid {EDGE_TOKEN_ENV}: a token is visible ASCII without spaces")
            }
        },
    };
    Ok(Client::named(&a.edge_api, "edge API")?.with_bearer(token))
}

/// The answer if it is a 2xx; else its error: the `error` text of its JSON body, or the
/// status (and the first line of a body that is not such JSON).
fn check(r: Response) -> Result<Response> {
    if r.is_success() {
        return Ok(r);
    }
    if let Ok(v) = r.body_json()
        && let Some(e) = v["error"].as_str().filter(|e| !e.trim().is_empty())
    {
        bail!("{e}");
    }
    let body = String::from_utf8_lossy(&r.body);
    match body.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) => bail!("the edge API answered {}: {l}", status_text(r.status)),
        None => bail!("the edge API answered {}", status_text(r.status)),
    }
}

fn call(api: &Client, method: &str, path: &str, body: Option<&Value>) -> Result<Response> {
    check(api.request(method, path, body, DEFAULT_TIMEOUT)?)
}

fn status(api: &Client, json: bool) -> Result<()> {
    let v = call(api, "GET", STATUS_PATH, None)?.body_json()?;
    if json {
        return print_json(&v);
    }
    if !v.is_object() {
        bail!("the edge API's status is not a JSON object");
    }
    let mut t = Table::new(&["Server name", "Public key", "Fallback", "State"]);
    for d in array(&v["destinations"], "destinations")? {
        t.row(vec![
            text(&d["server_name"]),
            text(&d["pubkey"]),
            text(&d["fallback"]),
            text(&d["state"]),
        ]);
    }
    let router = &v["router"];
    let connected = match router["connected"].as_bool() {
        Some(true) => " (connected)",
        Some(false) => " (not connected)",
        None => "",
    };
    let names = match v["server_names"].as_array() {
        Some(a) if a.is_empty() => "-".to_owned(),
        Some(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        None => text(&v["server_names"]),
    };
    println!("Version:      {}", text(&v["version"]));
    println!(
        "Uptime:       {}",
        v["uptime_secs"]
            .as_u64()
            .map_or_else(|| text(&v["uptime_secs"]), output::seconds)
    );
    println!("Proxy:        {}", text(&v["proxy"]));
    println!("Router:       {}{connected}", text(&router["address"]));
    println!("Server names: {names}");
    println!("In flight:    {}", text(&v["in_flight"]));
    println!("\nDestinations:");
    print!("{}", t.render());
    Ok(())
}

/// The route list as a table.
fn print_routes(v: &Value) -> Result<()> {
    let mut t = Table::new(&["Server name", "Public key", "Fallback"]);
    for r in array(v, "routes")? {
        t.row(vec![
            text(&r["server_name"]),
            text(&r["pubkey"]),
            text(&r["fallback"]),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

fn list(api: &Client, json: bool) -> Result<()> {
    let v = call(api, "GET", ROUTES_PATH, None)?.body_json()?;
    if json {
        return print_json(&v);
    }
    print_routes(&v)
}

fn add(api: &Client, name: &str, pubkey: &PublicKey, fallback: Fallback, json: bool) -> Result<()> {
    let body = json!({
        "server_name": name,
        "pubkey": pubkey.to_string(),
        "fallback": fallback.as_str(),
    });
    let v = call(api, "POST", ROUTES_PATH, Some(&body))?.body_json()?;
    if json {
        return print_json(&v);
    }
    println!(
        "Added route {name} to {pubkey} (fallback {})",
        fallback.as_str()
    );
    Ok(())
}

fn remove(api: &Client, name: &str, json: bool) -> Result<()> {
    let path = format!("{ROUTES_PATH}/{}", encode_component(name));
    call(api, "DELETE", &path, None)?;
    if json {
        return print_json(&json!({"removed": name}));
    }
    println!("Removed route {name}");
    Ok(())
}
