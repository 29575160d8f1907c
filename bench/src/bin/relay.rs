//! A plain TCP relay, the floor of any forwarding hop on a machine: `transit` runs it beside the
//! router and measures it the same way.
//!
//! It binds an ephemeral loopback port and prints it on one line, accepts one connection, dials
//! `--to`, and then copies bytes as they come: one blocking read and one write per wake, with
//! no parsing, no routing and no queues. It exits when the sending side closes or a write fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Loopback TCP port to relay to.
    #[arg(long)]
    to: u16,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let (mut from, _) = listener.accept()?;
    let mut to = TcpStream::connect(("127.0.0.1", args.to))
        .with_context(|| format!("connecting to 127.0.0.1:{}", args.to))?;
    from.set_nodelay(true)?;
    to.set_nodelay(true)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf)? {
            0 => return Ok(()),
            n => to.write_all(&buf[..n])?,
        }
    }
}
