//! `hyphae inspect [PUBKEY]`: a public key and its overlay address, computed here (no API), for
//! a key given on the command line or the key file's own.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use hyphae_wire::identity::key_file;
use serde_json::json;

use crate::cli::parse_pubkey;
use crate::output::print_json;

/// Runs `inspect`: `pubkey` if given, else the public key of `key_file` (or of the
/// [`default_key_file`]).
pub fn run(pubkey: Option<&str>, key_file: Option<&Path>, json: bool) -> Result<()> {
    let pk = match pubkey {
        Some(s) => parse_pubkey(s)?,
        None => {
            let path = match key_file {
                Some(p) => p.to_owned(),
                None => default_key_file()?,
            };
            key_file::load(&path)?.public_key()
        }
    };
    let address = pk.address();
    if json {
        return print_json(&json!({"publicKey": pk.to_string(), "address": address.to_string()}));
    }
    println!("Public key: {pk}\nAddress: {address}");
    Ok(())
}

/// The default key file: `$XDG_DATA_HOME/hyphae/priv_key.bin`, else
/// `~/.local/share/hyphae/priv_key.bin` (the reference's layout under our name).
pub fn default_key_file() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    anyhow!("no key file: give -k FILE (neither XDG_DATA_HOME nor HOME is set)")
                })?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(base.join("hyphae/priv_key.bin"))
}
