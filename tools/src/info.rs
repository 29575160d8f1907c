//! `hyphae info` and `hyphae pubkey IP`: what the node says about itself and about the key
//! behind an overlay address (`/api/v1/admin`, `/api/v1/pubkey/...`).

use std::net::Ipv6Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

use crate::client::{Client, DEFAULT_TIMEOUT};
use crate::output::{self, print_json, text};

/// `info`: the node's subnet, address, public key and start time.
pub fn info(api: &Client, json: bool) -> Result<()> {
    let v = api
        .json("GET", "/api/v1/admin", None)
        .context("cannot get the node's info")?;
    if json {
        return print_json(&v);
    }
    println!("Node subnet:  {}", text(&v["nodeSubnet"]));
    println!("Node address: {}", text(&v["nodeIp"]));
    println!("Public key:   {}", text(&v["nodePubkey"]));
    if let Some(t) = v["nodeStartTime"].as_u64() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        println!(
            "Started:      {t} (up {})",
            output::seconds(now.saturating_sub(t))
        );
    }
    Ok(())
}

/// `pubkey IP`: the public key behind an overlay address, as far as the node knows it.
pub fn pubkey(api: &Client, ip: &str, json: bool) -> Result<()> {
    let addr: Ipv6Addr = ip
        .parse()
        .map_err(|_| anyhow!("invalid address '{ip}': expected an IPv6 address in 400::/7"))?;
    let r = api.request(
        "GET",
        &format!("/api/v1/pubkey/{addr}"),
        None,
        DEFAULT_TIMEOUT,
    )?;
    if r.status == 404 {
        bail!("the node has no route to {addr}, so it does not know its public key");
    }
    let v = r.ok_json().context("cannot look up the public key")?;
    if json {
        return print_json(&v);
    }
    println!("Public key: {}", text(&v["publicKey"]));
    Ok(())
}
