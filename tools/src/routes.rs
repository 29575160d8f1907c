//! `hyphae routes selected | fallback | queried`: the node's routing table
//! (`/api/v1/admin/routes/...`).

use anyhow::{Context, Result};

use crate::cli::RoutesCmd;
use crate::client::Client;
use crate::output::{self, Table, array, print_json, text};

/// Runs one `routes` command.
pub fn run(cmd: &RoutesCmd, api: &Client, json: bool) -> Result<()> {
    match cmd {
        RoutesCmd::Selected => routes(api, "selected", json),
        RoutesCmd::Fallback => routes(api, "fallback", json),
        RoutesCmd::Queried => queried(api, json),
    }
}

/// The selected or the fallback routes.
fn routes(api: &Client, which: &str, json: bool) -> Result<()> {
    let v = api
        .json("GET", &format!("/api/v1/admin/routes/{which}"), None)
        .with_context(|| format!("cannot list {which} routes"))?;
    if json {
        return print_json(&v);
    }
    let mut t = Table::new(&["Subnet", "Next Hop", "Metric", "Seq No"]);
    for r in array(&v, "routes")? {
        t.row(vec![
            text(&r["subnet"]),
            text(&r["nextHop"]),
            text(&r["metric"]),
            text(&r["seqno"]),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

fn queried(api: &Client, json: bool) -> Result<()> {
    let v = api
        .json("GET", "/api/v1/admin/routes/queried", None)
        .context("cannot list queried subnets")?;
    if json {
        return print_json(&v);
    }
    let mut t = Table::new(&["Subnet", "Query expiration"]);
    for r in array(&v, "queried subnets")? {
        let exp = text(&r["expiration"]);
        let exp = exp.parse::<u64>().map_or(exp, output::seconds);
        t.row(vec![text(&r["subnet"]), exp]);
    }
    print!("{}", t.render());
    Ok(())
}
