//! The `hyphae` operator CLI: talks to a node's HTTP API (hyphae-router or a stock mycelium node:
//! same paths, same JSON) and decodes peer-link frames offline.
//!
//! ```text
//! hyphae [--api-addr ADDR] [--json] [-k KEYFILE] COMMAND
//!   inspect [PUBKEY]                  public key and overlay address (computed locally)
//!   info                              the node's subnet, address, key and start time
//!   pubkey IP                         the public key behind an overlay address (API)
//!   peers list | add EP... | remove EP...
//!   routes selected | fallback | queried
//!   stats packets
//!   message send [-w] [--timeout S] [-t TOPIC] [--msg-path F] [--reply-to ID] DEST [MSG]
//!   message receive [--timeout S] [-t TOPIC] [--msg-path F] [--raw]
//!   decode [--hex HEX | --pcap FILE] [--peer-key PUBKEY...]   (-k opens data frames)
//!
//! hyphae edge [--edge-api ADDR] [--edge-token TOKEN] [--json] COMMAND   (a federation edge)
//!   status                            version, uptime, router connection, destinations
//!   routes list | add NAME PUBKEY [--fallback direct|never] | remove NAME
//! ```
//!
//! Errors are one line on stderr and exit status 1; usage errors exit 2. Nothing here is on a
//! hot path: one connection per request, each on a runtime of its own.
//!
//! The modules, each using only those below it:
//!
//! ```text
//! lib.rs       main, the dispatch of a parsed command line, the one-line error
//!   peers, routes, stats, info, messages, edge    one command group each, over the API
//!   inspect, decode (-> pcap)                     the commands that need no API
//!     cli      the clap definitions and the parsers of their values
//!     client   the HTTP client (hyper), its errors
//!     output   JSON and text output: tables, units
//! ```

pub mod cli;
pub mod client;
pub mod decode;
pub mod edge;
pub mod info;
pub mod inspect;
pub mod messages;
pub mod output;
pub mod pcap;
pub mod peers;
pub mod routes;
pub mod stats;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::client::{Client, Unreachable};

/// Runs the CLI with the process's arguments.
pub fn main() -> ExitCode {
    let args = match Cli::try_parse() {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyphae: {}", error_line(&e));
            ExitCode::from(1)
        }
    }
}

/// Runs one parsed command line.
pub fn run(cli: &Cli) -> Result<()> {
    // Resolved only by the commands that talk to the node.
    let api = || Client::new(&cli.api_addr);
    let json = cli.json;
    match &cli.command {
        Command::Inspect { pubkey } => {
            inspect::run(pubkey.as_deref(), cli.key_file.as_deref(), json)
        }
        Command::Info => info::info(&api()?, json),
        Command::Pubkey { ip } => info::pubkey(&api()?, ip, json),
        Command::Peers(c) => peers::run(c, &api()?, json),
        Command::Routes(c) => routes::run(c, &api()?, json),
        Command::Stats(c) => stats::run(c, &api()?, json),
        Command::Message(c) => messages::run(c, &api()?, json),
        Command::Decode(a) => decode::run(a, cli.key_file.as_deref()),
        Command::Edge(a) => edge::run(a, json),
    }
}

/// Help and version go to stdout as clap prints them; anything else is one line and status 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        // `hyphae peers`: the help of `peers`, on stderr, and a usage status.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad usage");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("hyphae: {} (see 'hyphae --help')", first.trim());
            ExitCode::from(2)
        }
    }
}

/// An error chain on one line. An unreachable API is said plainly, whatever the command was;
/// causes whose text the previous message already holds are not repeated; "(os error N)" goes.
pub fn error_line(e: &anyhow::Error) -> String {
    if let Some(u) = e.downcast_ref::<Unreachable>() {
        return u.to_string();
    }
    let mut line = String::new();
    for cause in e.chain() {
        let c = strip_os_error(&cause.to_string());
        if line.contains(&c) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&c);
    }
    one_line(&line)
}

fn strip_os_error(s: &str) -> String {
    let mut out = s.to_owned();
    while let Some(i) = out.find(" (os error ") {
        let Some(j) = out[i..].find(')') else {
            break;
        };
        out.replace_range(i..i + j + 1, "");
    }
    out
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
