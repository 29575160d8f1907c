//! `hyphae message send | receive`: the node's message API (`/api/v1/messages`), as the
//! reference has it: base64 payloads and topics, long polls for replies and for incoming
//! messages.

use std::io::Write;
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hyphae_wire::identity::PublicKey;
use serde_json::{Value, json};

use crate::cli::{MessageCmd, ReceiveArgs, SendArgs};
use crate::client::{Client, DEFAULT_TIMEOUT, encode_component};
use crate::output::{print_json, text};

/// How long `message receive` and `message send --wait` wait without `--timeout` (the
/// reference's default).
const RECEIVE_DEFAULT_TIMEOUT: u64 = 365 * 24 * 3600;
/// Extra time the HTTP exchange may take beyond a long poll's own timeout.
const POLL_SLACK: Duration = Duration::from_secs(10);

/// Runs one `message` command.
pub fn run(cmd: &MessageCmd, api: &Client, json: bool) -> Result<()> {
    match cmd {
        MessageCmd::Send(a) => send(api, a, json),
        MessageCmd::Receive(a) => receive(api, a, json),
    }
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

/// Text if the bytes are UTF-8, else `base64:` and their base64.
pub fn text_or_base64(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("base64:{}", B64.encode(b)),
    }
}

/// How long the HTTP exchange of a long poll of `seconds` may take.
fn poll_timeout(seconds: u64) -> Duration {
    Duration::from_secs(seconds).saturating_add(POLL_SLACK)
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
            DEFAULT_TIMEOUT,
        )?;
        if !r.is_success() {
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
    let (path, timeout) = match a.wait {
        true => {
            let t = a.timeout.unwrap_or(RECEIVE_DEFAULT_TIMEOUT);
            (
                format!("/api/v1/messages?reply_timeout={t}"),
                poll_timeout(t),
            )
        }
        false => ("/api/v1/messages".to_owned(), DEFAULT_TIMEOUT),
    };
    let r = api.request("POST", &path, Some(&body), timeout)?;
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
    let r = api.request("GET", &path, None, poll_timeout(timeout))?;
    match r.status {
        200 => {
            let v = r.body_json()?;
            print_message(&v, a.msg_path.as_deref(), a.raw, json)
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

fn print_message(v: &Value, msg_path: Option<&Path>, raw: bool, json: bool) -> Result<()> {
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

    #[test]
    fn long_polls_wait_a_little_longer_and_never_overflow() {
        assert_eq!(poll_timeout(5), Duration::from_secs(15));
        assert_eq!(poll_timeout(u64::MAX), Duration::MAX);
    }
}
