//! The commands that talk to a node's API, and `inspect`.

use std::io::Write;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hyphae_wire::identity::{PublicKey, key_file};
use serde_json::{Value, json};

use crate::cli::{Cli, Command, MessageCmd, PeersCmd, ReceiveArgs, RoutesCmd, SendArgs, StatsCmd};
use crate::http::{Client, DEFAULT_TIMEOUT, encode_component};
use crate::table::{self, Table};

/// How long `message receive` waits without `--timeout` (the reference's default).
const RECEIVE_DEFAULT_TIMEOUT: u64 = 365 * 24 * 3600;
/// Extra time the HTTP read waits beyond a long poll's own timeout.
const POLL_SLACK: Duration = Duration::from_secs(10);

/// Runs one parsed command line.
pub fn run(cli: &Cli) -> Result<()> {
    let api = || Client::new(&cli.api_addr);
    let json = cli.json;
    match &cli.command {
        Command::Inspect { pubkey } => inspect(pubkey.as_deref(), cli.key_file.as_ref(), json),
        Command::Info => info(&api()?, json),
        Command::Pubkey { ip } => pubkey(&api()?, ip, json),
        Command::Peers(PeersCmd::List) => peers_list(&api()?, json),
        Command::Peers(PeersCmd::Add { endpoints }) => peers_add(&api()?, endpoints, json),
        Command::Peers(PeersCmd::Remove { endpoints }) => peers_remove(&api()?, endpoints, json),
        Command::Routes(RoutesCmd::Selected) => routes(&api()?, "selected", json),
        Command::Routes(RoutesCmd::Fallback) => routes(&api()?, "fallback", json),
        Command::Routes(RoutesCmd::Queried) => queried(&api()?, json),
        Command::Stats(StatsCmd::Packets) => packets(&api()?, json),
        Command::Message(MessageCmd::Send(a)) => send(&api()?, a, json),
        Command::Message(MessageCmd::Receive(a)) => receive(&api()?, a, json),
        Command::Decode(a) => crate::decode::run(a, cli.key_file.as_deref()),
        Command::Edge(a) => crate::edge::run(a, json),
    }
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

/// Parses a public key given on the command line.
pub fn parse_pubkey(s: &str) -> Result<PublicKey> {
    PublicKey::from_hex(s.trim())
        .ok_or_else(|| anyhow!("invalid public key '{s}': expected 64 hex digits"))
}

pub(crate) fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A JSON scalar as text: strings without quotes, null as `-`.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

pub(crate) fn array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| anyhow!("the API's answer for {what} is not a list"))
}

fn inspect(pubkey: Option<&str>, key_file: Option<&PathBuf>, json: bool) -> Result<()> {
    let pk = match pubkey {
        Some(s) => parse_pubkey(s)?,
        None => {
            let path = match key_file {
                Some(p) => p.clone(),
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

fn info(api: &Client, json: bool) -> Result<()> {
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        println!(
            "Started:      {t} (up {})",
            table::seconds(now.saturating_sub(t))
        );
    }
    Ok(())
}

fn pubkey(api: &Client, ip: &str, json: bool) -> Result<()> {
    let addr: Ipv6Addr = ip
        .parse()
        .map_err(|_| anyhow!("invalid address '{ip}': expected an IPv6 address in 400::/7"))?;
    let r = api.request(
        "GET",
        &format!("/api/v1/pubkey/{addr}"),
        None,
        Some(DEFAULT_TIMEOUT),
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

fn peers_list(api: &Client, json: bool) -> Result<()> {
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
                .map_or_else(|| text(&p["rxBytes"]), table::bytes),
            p["txBytes"]
                .as_u64()
                .map_or_else(|| text(&p["txBytes"]), table::bytes),
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
        .map_or_else(|| text(v), |s| format!("{} ago", table::seconds(s)))
}

fn peers_add(api: &Client, endpoints: &[String], json: bool) -> Result<()> {
    for ep in endpoints {
        let r = api.request(
            "POST",
            "/api/v1/admin/peers",
            Some(&json!({"endpoint": ep})),
            Some(DEFAULT_TIMEOUT),
        )?;
        if !(200..300).contains(&r.status) {
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

fn peers_remove(api: &Client, endpoints: &[String], json: bool) -> Result<()> {
    for ep in endpoints {
        let path = format!("/api/v1/admin/peers/{}", encode_component(ep));
        let r = api.request("DELETE", &path, None, Some(DEFAULT_TIMEOUT))?;
        if !(200..300).contains(&r.status) {
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
        let exp = exp.parse::<u64>().map_or(exp, table::seconds);
        t.row(vec![text(&r["subnet"]), exp]);
    }
    print!("{}", t.render());
    Ok(())
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
                    .map_or_else(|| text(&e["byteCount"]), table::bytes),
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

/// A message destination as the API takes it: `{"pk": hex}` or `{"ip": addr}`.
pub fn destination(s: &str) -> Result<Value> {
    if let Some(pk) = PublicKey::from_hex(s) {
        return Ok(json!({"pk": pk.to_string()}));
    }
    match s.parse::<Ipv6Addr>() {
        Ok(ip) if ip.octets()[0] & 0xfe == 0x04 => Ok(json!({"ip": ip.to_string()})),
        Ok(ip) => bail!("invalid destination '{s}': {ip} is not an overlay address (400::/7)"),
        Err(_) => bail!(
            "invalid destination '{s}': expected a public key (64 hex digits) or an overlay address in 400::/7"
        ),
    }
}

fn topic_bytes(topic: Option<&str>) -> Result<Option<Vec<u8>>> {
    let Some(t) = topic else {
        return Ok(None);
    };
    if t.len() > 255 {
        bail!("topic too long: {} bytes, at most 255", t.len());
    }
    Ok(Some(t.as_bytes().to_vec()))
}

fn message_id(s: &str) -> Result<String> {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(s.to_ascii_lowercase());
    }
    bail!("invalid message id '{s}': expected 16 hex digits")
}

fn send(api: &Client, a: &SendArgs, json: bool) -> Result<()> {
    let dst = destination(&a.destination)?;
    let payload = match (&a.msg_path, &a.msg) {
        (Some(p), _) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        (None, Some(m)) => m.as_bytes().to_vec(),
        (None, None) => bail!("nothing to send: give MSG or --msg-path FILE"),
    };
    let mut body = json!({"dst": dst, "payload": B64.encode(&payload)});
    if let Some(t) = topic_bytes(a.topic.as_deref())? {
        body["topic"] = json!(B64.encode(t));
    }
    if let Some(id) = &a.reply_to {
        let id = message_id(id)?;
        let r = api.request(
            "POST",
            &format!("/api/v1/messages/reply/{id}"),
            Some(&body),
            Some(DEFAULT_TIMEOUT),
        )?;
        if !(200..300).contains(&r.status) {
            return Err(anyhow!(r.into_error())).context(format!("cannot reply to message {id}"));
        }
        return match json {
            true => print_json(&json!({"id": id})),
            false => {
                println!("Replied to message {id}");
                Ok(())
            }
        };
    }
    let (path, read_timeout) = match a.wait {
        true => {
            let t = a.timeout.unwrap_or(RECEIVE_DEFAULT_TIMEOUT);
            (
                format!("/api/v1/messages?reply_timeout={t}"),
                Duration::from_secs(t) + POLL_SLACK,
            )
        }
        false => ("/api/v1/messages".to_owned(), DEFAULT_TIMEOUT),
    };
    let r = api.request("POST", &path, Some(&body), Some(read_timeout))?;
    match r.status {
        // With a reply timeout: the reply.
        200 => {
            let v = r.body_json()?;
            print_message(&v, None, false, json)
        }
        201 => {
            let v = r.body_json()?;
            match json {
                true => print_json(&v),
                false => {
                    println!("Message id: {}", text(&v["id"]));
                    Ok(())
                }
            }
        }
        408 => {
            let id = r
                .body_json()
                .ok()
                .map(|v| text(&v["id"]))
                .unwrap_or_default();
            bail!(
                "no reply within {} s (message id {id})",
                a.timeout.unwrap_or(RECEIVE_DEFAULT_TIMEOUT)
            )
        }
        _ => Err(anyhow!(r.into_error())).context("cannot send the message"),
    }
}

fn receive(api: &Client, a: &ReceiveArgs, json: bool) -> Result<()> {
    let timeout = a.timeout.unwrap_or(RECEIVE_DEFAULT_TIMEOUT);
    let mut path = format!("/api/v1/messages?peek=false&timeout={timeout}");
    if let Some(t) = topic_bytes(a.topic.as_deref())? {
        path.push_str(&format!("&topic={}", encode_component(&B64.encode(t))));
    }
    let r = api.request(
        "GET",
        &path,
        None,
        Some(Duration::from_secs(timeout) + POLL_SLACK),
    )?;
    match r.status {
        200 => {
            let v = r.body_json()?;
            print_message(&v, a.msg_path.as_ref(), a.raw, json)
        }
        204 => {
            if !json && !a.raw {
                eprintln!("No message within {timeout} s.");
            }
            Ok(())
        }
        _ => Err(anyhow!(r.into_error())).context("cannot receive a message"),
    }
}

/// Text if the bytes are UTF-8, else `base64:` and their base64.
pub fn text_or_base64(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("base64:{}", B64.encode(b)),
    }
}

fn b64_field(v: &Value, field: &str) -> Result<Option<Vec<u8>>> {
    match &v[field] {
        Value::Null => Ok(None),
        Value::String(s) => B64
            .decode(s)
            .map(Some)
            .with_context(|| format!("the message's {field} is not base64")),
        _ => bail!("the message's {field} is not a string"),
    }
}

fn print_message(v: &Value, msg_path: Option<&PathBuf>, raw: bool, json: bool) -> Result<()> {
    let payload = b64_field(v, "payload")?.unwrap_or_default();
    if let Some(p) = msg_path {
        std::fs::write(p, &payload).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if raw {
        let mut out = std::io::stdout().lock();
        out.write_all(&payload)?;
        return Ok(out.flush()?);
    }
    if json {
        return print_json(v);
    }
    let topic = b64_field(v, "topic")?;
    println!("Message {}", text(&v["id"]));
    println!("From:    {} ({})", text(&v["srcIp"]), text(&v["srcPk"]));
    println!("To:      {} ({})", text(&v["dstIp"]), text(&v["dstPk"]));
    if let Some(t) = topic {
        println!("Topic:   {}", text_or_base64(&t));
    }
    match msg_path {
        Some(p) => println!(
            "Payload: written to {} ({} bytes)",
            p.display(),
            payload.len()
        ),
        None => println!("Payload: {}", text_or_base64(&payload)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let pk = "8e08f198dcea2bf9ae8678eb92cd7cf6d0fbb6ea5e5c9a48491778d01bf2be01";
        assert_eq!(destination(pk).unwrap(), json!({"pk": pk}));
        assert_eq!(
            destination("4a9:5947:6719:badc:8460:a53d:bfb9:aafc").unwrap(),
            json!({"ip": "4a9:5947:6719:badc:8460:a53d:bfb9:aafc"})
        );
        assert!(destination("5ff::1").is_ok());
        assert!(destination("2001:db8::1").is_err());
        assert!(destination("xyz").is_err());
        assert!(destination(&pk[1..]).is_err());
    }

    #[test]
    fn payload_text() {
        assert_eq!(text_or_base64(b"hello"), "hello");
        assert_eq!(text_or_base64(&[0xff, 0]), "base64:/wA=");
    }
}
