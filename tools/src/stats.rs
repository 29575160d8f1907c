//! `hyphae stats packets`: the node's traffic counters (`/api/v1/admin/stats/...`).

use anyhow::{Context, Result};

use crate::cli::StatsCmd;
use crate::client::Client;
use crate::output::{self, Table, array, print_json, text};

/// Runs one `stats` command.
pub fn run(cmd: &StatsCmd, api: &Client, json: bool) -> Result<()> {
    match cmd {
        StatsCmd::Packets => packets(api, json),
    }
}

fn packets(api: &Client, json: bool) -> Result<()> {
    let v = api
        .json("GET", "/api/v1/admin/stats/packets", None)
        .context("cannot get packet statistics")?;
    if json {
        return print_json(&v);
    }
    for (key, title) in [
        ("bySource", "By source"),
        ("byDestination", "By destination"),
    ] {
        let mut t = Table::new(&["Address", "Packets", "Bytes"]);
        for e in array(&v[key], key)? {
            t.row(vec![
                text(&e["ip"]),
                text(&e["packetCount"]),
                e["byteCount"]
                    .as_u64()
                    .map_or_else(|| text(&e["byteCount"]), output::bytes),
            ]);
        }
        if key == "byDestination" {
            println!();
        }
        println!("{title}:");
        print!("{}", t.render());
    }
    Ok(())
}
