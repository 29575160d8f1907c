//! The command line, as clap sees it, and the parsers of its values (public keys, bearer
//! tokens). Global flags are accepted before or after the subcommand.

use std::ffi::OsStr;
use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyphae_wire::identity::PublicKey;

/// Default address of the node's HTTP API (the reference's and hyphae-router's).
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:8989";
/// Default address of the federation edge's bridge API.
pub const DEFAULT_EDGE_API: &str = "127.0.0.1:8460";
/// The environment variable `--edge-token` falls back to.
pub const EDGE_TOKEN_ENV: &str = "HYPHAE_EDGE_TOKEN";

/// The hyphae operator CLI, for hyphae-router and stock mycelium nodes alike.
#[derive(Debug, Parser)]
#[command(name = "hyphae", version, about, propagate_version = true)]
pub struct Cli {
    /// Address of the node's HTTP API.
    #[arg(long, global = true, value_name = "ADDR", default_value = DEFAULT_API_ADDR)]
    pub api_addr: String,
    /// Print JSON (for scripts) instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
    /// Key file (raw 32-byte x25519 secret) for `inspect` without a key and for `decode`
    /// [default: $XDG_DATA_HOME/hyphae/priv_key.bin].
    #[arg(short = 'k', long = "key-file", global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a public key and its overlay address (the local key file's without PUBKEY).
    Inspect {
        /// A public key, 64 hex digits.
        pubkey: Option<String>,
    },
    /// Show the node's subnet, address, public key and start time.
    Info,
    /// Ask the node for the public key behind an overlay address.
    Pubkey {
        /// An address in 400::/7.
        ip: String,
    },
    /// List, add or remove peers.
    #[command(subcommand)]
    Peers(PeersCmd),
    /// Show routes.
    #[command(subcommand)]
    Routes(RoutesCmd),
    /// Send and receive messages.
    #[command(subcommand)]
    Message(MessageCmd),
    /// Show statistics.
    #[command(subcommand)]
    Stats(StatsCmd),
    /// Decode peer-link frames from hex or a pcap capture.
    Decode(DecodeArgs),
    /// Talk to a federation edge's bridge API: its status and its routes to Matrix servers.
    Edge(EdgeArgs),
}

/// `peers ...`
#[derive(Debug, Subcommand)]
pub enum PeersCmd {
    /// List the node's peers.
    List,
    /// Add peers, e.g. `tcp://192.0.2.1:9651` or `quic://[2001:db8::1]:9651`.
    Add {
        /// Peer endpoints.
        #[arg(required = true, value_name = "ENDPOINT")]
        endpoints: Vec<String>,
    },
    /// Remove peers.
    Remove {
        /// Peer endpoints, as `peers list` shows them.
        #[arg(required = true, value_name = "ENDPOINT")]
        endpoints: Vec<String>,
    },
}

/// `routes ...`
#[derive(Debug, Subcommand)]
pub enum RoutesCmd {
    /// Routes in use.
    Selected,
    /// Known routes not in use.
    Fallback,
    /// Subnets the node is looking for.
    Queried,
}

/// `stats ...`
#[derive(Debug, Subcommand)]
pub enum StatsCmd {
    /// Packets and bytes by source and destination.
    Packets,
}

/// `message ...`
#[derive(Debug, Subcommand)]
pub enum MessageCmd {
    /// Send a message (prints its id, or the reply with --wait).
    Send(SendArgs),
    /// Wait for a message and print it.
    Receive(ReceiveArgs),
}

/// `message send`
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Wait for a reply.
    #[arg(short = 'w', long, conflicts_with = "reply_to")]
    pub wait: bool,
    /// With --wait: seconds to wait for the reply.
    #[arg(long, value_name = "SECONDS", requires = "wait")]
    pub timeout: Option<u64>,
    /// Topic (at most 255 bytes).
    #[arg(short = 't', long)]
    pub topic: Option<String>,
    /// Send the contents of this file.
    #[arg(long, value_name = "FILE", conflicts_with = "msg")]
    pub msg_path: Option<PathBuf>,
    /// Send this as the reply to the received message with this id (16 hex digits).
    #[arg(long, value_name = "ID")]
    pub reply_to: Option<String>,
    /// Destination: a public key (64 hex digits) or an overlay address in 400::/7.
    pub destination: String,
    /// The message text.
    pub msg: Option<String>,
}

/// `message receive`
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Seconds to wait for a message [default: a year].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Only messages on this topic.
    #[arg(short = 't', long)]
    pub topic: Option<String>,
    /// Write the payload to this file.
    #[arg(long, value_name = "FILE")]
    pub msg_path: Option<PathBuf>,
    /// Print only the payload, as it is.
    #[arg(long)]
    pub raw: bool,
}

/// `decode`
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Frames as hex (one direction of a link; whitespace and ':' are ignored). Without --hex
    /// or --pcap, hex is read from standard input.
    #[arg(long, value_name = "HEX", conflicts_with = "pcap")]
    pub hex: Option<String>,
    /// A pcap file (libpcap format) of TCP peer links.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Public keys of other nodes, to open their data frames with -k (keys announced in the
    /// capture's Updates are learned).
    #[arg(long = "peer-key", value_name = "PUBKEY")]
    pub peer_keys: Vec<String>,
}

/// `edge ...`: its own API address and token, accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// Address of the edge's bridge API.
    #[arg(long, global = true, value_name = "ADDR", default_value = DEFAULT_EDGE_API)]
    pub edge_api: String,
    /// Bearer token for the edge's bridge API [env: HYPHAE_EDGE_TOKEN].
    #[arg(long, global = true, value_name = "TOKEN", value_parser = BearerToken)]
    pub edge_token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: EdgeCmd,
}

/// `edge ...`
#[derive(Debug, Subcommand)]
pub enum EdgeCmd {
    /// Show the edge's version, uptime, router connection and destinations.
    Status,
    /// List, add or remove the edge's routes (Matrix server name to overlay public key).
    #[command(subcommand)]
    Routes(EdgeRoutesCmd),
}

/// `edge routes ...`
#[derive(Debug, Subcommand)]
pub enum EdgeRoutesCmd {
    /// List the routes.
    List,
    /// Add a route, or replace the route for NAME.
    Add {
        /// The Matrix server name, e.g. `b.example:8448`.
        name: String,
        /// The public key of the overlay node that serves it, 64 hex digits.
        #[arg(value_parser = pubkey_arg)]
        pubkey: PublicKey,
        /// What to do when the overlay cannot reach it: go direct over the internet, or never.
        #[arg(long, value_enum, default_value_t = Fallback::Direct)]
        fallback: Fallback,
    },
    /// Remove the route for NAME.
    Remove {
        /// The Matrix server name, as `edge routes list` shows it.
        name: String,
    },
}

/// What the edge does when a destination is down on the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fallback {
    /// Go direct, over the internet.
    Direct,
    /// Never leave the overlay.
    Never,
}

impl Fallback {
    /// As the bridge API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Never => "never",
        }
    }
}

/// Parses a public key given on the command line (64 hex digits, surrounding blanks ignored).
pub fn parse_pubkey(s: &str) -> Result<PublicKey> {
    PublicKey::from_hex(s.trim())
        .ok_or_else(|| anyhow!("invalid public key '{s}': expected 64 hex digits"))
}

/// A public key as a clap value (a usage error if it is not 64 hex digits).
fn pubkey_arg(s: &str) -> Result<PublicKey, String> {
    parse_pubkey(s).map_err(|_| "expected a public key, 64 hex digits".into())
}

/// A bearer token: visible ASCII, no spaces (it goes into a header line as it is).
pub fn check_bearer_token(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token is visible ASCII without spaces");
    }
    Ok(())
}

/// `--edge-token`, checked by [`check_bearer_token`]. A parser of its own because clap's usual
/// error repeats the value, and this one is a secret.
#[derive(Debug, Clone, Copy)]
pub struct BearerToken;

impl TypedValueParser for BearerToken {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        let checked = value
            .to_str()
            .ok_or("a token is visible ASCII without spaces")
            .and_then(|s| check_bearer_token(s).map(|()| s));
        match checked {
            Ok(s) => Ok(s.to_owned()),
            Err(why) => Err(clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid --edge-token: {why}\n"),
            )
            .with_cmd(cmd)),
        }
    }
}

#[cfg(test)]
mod send_args_tests {
    use super::*;

    /// `message send --timeout S` without `--wait` would be ignored: it is a usage error.
    #[test]
    fn a_send_timeout_without_wait_is_a_usage_error() {
        let pk = "8e08f198dcea2bf9ae8678eb92cd7cf6d0fbb6ea5e5c9a48491778d01bf2be01";
        let r = Cli::try_parse_from(["hyphae", "message", "send", "--timeout", "30", pk, "hi"]);
        assert!(
            r.is_err(),
            "--timeout without --wait accepted: {:?}",
            r.map(|c| c.command)
        );
    }
}
