//! The `hyphae-edge` binary: `hyphae-edge --config FILE [init]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyphae_edge::config::Config;

/// hyphae-edge: relays a Matrix homeserver's federation over the Mycelium overlay.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the site CA (ca.crt, ca.key) in state_dir when missing, and print the lines to
    /// add to the homeserver's configuration.
    Init,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hyphae-edge: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Cmd::Init) = args.cmd {
        return match hyphae_edge::ca::init(&config.state_dir) {
            Ok(created) => match init_text(&config, created) {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hyphae-edge: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("hyphae-edge: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hyphae-edge")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyphae-edge: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(hyphae_edge::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyphae-edge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `init` prints: the homeserver settings that send its federation through this edge.
fn init_text(config: &Config, created: bool) -> Result<String, String> {
    let (crt, _) = hyphae_edge::ca::paths(&config.state_dir);
    let bundle = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .into_iter()
    .map(std::path::Path::new)
    .find(|p| p.exists());
    let system = match bundle {
        Some(b) => hyphae_edge::ca::system_ca_files(&config.state_dir, b)?,
        None => Vec::new(),
    };
    let what = if created {
        format!("created {}", crt.display())
    } else {
        format!("{} already exists; nothing changed", crt.display())
    };
    let mut out = format!(
        "# hyphae-edge: {what}\n\
         # Synapse: run it with this in its environment (e.g. systemd Environment=):\n\
         https_proxy=http://{proxy}\n\
         # and add this to homeserver.yaml. The list replaces the system trust for federation\n\
         # and Synapse reads one certificate per file, so the system CAs are listed one by one\n\
         # ({n} files under {dir}) to keep ordinary federation working:\n\
         federation_custom_ca_list:\n  - {crt}\n",
        proxy = config.proxy,
        crt = crt.display(),
        n = system.len(),
        dir = config.state_dir.join("system-ca").display(),
    );
    for f in &system {
        out.push_str(&format!("  - {}\n", f.display()));
    }
    if bundle.is_none() {
        out.push_str("# (no system CA bundle found: add your system CAs, one file each)\n");
    }
    Ok(out)
}
