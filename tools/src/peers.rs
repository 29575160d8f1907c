//! `hyphae peers list | add | remove`: the node's peers (`/api/v1/admin/peers`).

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use crate::cli::PeersCmd;
use crate::client::{Client, DEFAULT_TIMEOUT, encode_component};
use crate::output::{self, Table, array, print_json, text};

/// Runs one `peers` command.
pub fn run(cmd: &PeersCmd, api: &Client, json: bool) -> Result<()> {
    match cmd {
        PeersCmd::List => list(api, json),
        PeersCmd::Add { endpoints } => add(api, endpoints, json),
        PeersCmd::Remove { endpoints } => remove(api, endpoints, json),
    }
}

fn list(api: &Client, json: bool) -> Result<()> {
    let v = api
        .json("GET", "/api/v1/admin/peers", None)
        .context("cannot list peers")?;
    if json {
        return print_json(&v);
    }
    let mut t = Table::new(&[
        "Protocol",
        "Socket",
        "Type",
        "Connection",
        "Rx total",
        "Tx total",
        "Discovered",
        "Last connection",
    ]);
    for p in array(&v, "peers")? {
        let ep = &p["endpoint"];
        t.row(vec![
            text(&ep["proto"]),
            socket(ep),
            text(&p["type"]),
            text(&p["connectionState"]),
            p["rxBytes"]
                .as_u64()
                .map_or_else(|| text(&p["rxBytes"]), output::bytes),
            p["txBytes"]
                .as_u64()
                .map_or_else(|| text(&p["txBytes"]), output::bytes),
            ago(&p["discovered"]),
            match &p["lastConnected"] {
                Value::Null => "never".into(),
                v => ago(v),
            },
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// The address part of a PeerStats endpoint, in all the shapes the reference has used.
fn socket(ep: &Value) -> String {
    let addr = &ep["addr"];
    if let Some(s) = addr["socket"].as_str() {
        return s.to_owned();
    }
    if let Some(v) = addr.get("vsock") {
        return format!("vsock {}:{}", text(&v["cid"]), text(&v["port"]));
    }
    if let Some(s) = ep["socketAddr"].as_str() {
        return s.to_owned();
    }
    text(addr)
}

fn ago(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| text(v), |s| format!("{} ago", output::seconds(s)))
}

fn add(api: &Client, endpoints: &[String], json: bool) -> Result<()> {
    for ep in endpoints {
        let r = api.request(
            "POST",
            "/api/v1/admin/peers",
            Some(&json!({"endpoint": ep})),
            DEFAULT_TIMEOUT,
        )?;
        if !r.is_success() {
            return Err(anyhow!(r.into_error())).context(format!("cannot add peer {ep}"));
        }
        if !json {
            println!("Added peer {ep}");
        }
    }
    if json {
        print_json(&json!({"added": endpoints}))?;
    }
    Ok(())
}

fn remove(api: &Client, endpoints: &[String], json: bool) -> Result<()> {
    for ep in endpoints {
        let path = format!("/api/v1/admin/peers/{}", encode_component(ep));
        let r = api.request("DELETE", &path, None, DEFAULT_TIMEOUT)?;
        if !r.is_success() {
            return Err(anyhow!(r.into_error())).context(format!("cannot remove peer {ep}"));
        }
        if !json {
            println!("Removed peer {ep}");
        }
    }
    if json {
        print_json(&json!({"removed": endpoints}))?;
    }
    Ok(())
}
