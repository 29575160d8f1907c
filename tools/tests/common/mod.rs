//! Helpers shared by the CLI tests: running the `hyphae` binary, free ports, scratch folders
//! and a fake HTTP server that answers with recorded reference JSON.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(unused_imports, reason = "not every test file binds ports")]
pub use hyphae_test_support::free_port;

/// What one run of the CLI did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "hyphae failed: {self:?}");
        &self.stdout
    }

    /// Asserts failure with `code` and exactly one line on stderr, and returns that line.
    #[track_caller]
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "unexpected status: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "want one error line: {self:?}");
        assert!(lines[0].starts_with("hyphae: "), "{self:?}");
        lines[0]
    }
}

pub fn hyphae(args: &[&str]) -> Run {
    hyphae_stdin(args, None)
}

pub fn hyphae_stdin(args: &[&str], stdin: Option<&str>) -> Run {
    hyphae_env(args, stdin, None)
}

/// Runs the CLI with `XDG_DATA_HOME` set to `data_home` (or unset).
pub fn hyphae_env(args: &[&str], stdin: Option<&str>, data_home: Option<&std::path::Path>) -> Run {
    let data_home = data_home.map(|d| d.to_str().unwrap());
    hyphae_vars(args, stdin, &[("XDG_DATA_HOME", data_home)])
}

/// Runs the CLI with these environment variables set (`Some`) or unset (`None`).
/// `HYPHAE_EDGE_TOKEN` and `XDG_DATA_HOME` are unset unless given.
pub fn hyphae_vars(args: &[&str], stdin: Option<&str>, vars: &[(&str, Option<&str>)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hyphae"));
    cmd.env_remove("XDG_DATA_HOME")
        .env_remove("HYPHAE_EDGE_TOKEN");
    for (k, v) in vars {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run hyphae");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stdout_bytes: stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A fresh scratch folder under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "hyphae-tools-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request the fake server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Header lines as sent, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    /// The value of the one header `name` (lowercase), if sent.
    #[track_caller]
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "header {name} sent twice: {self:?}");
        first
    }
}

/// One canned answer: for requests whose `METHOD path` starts with `prefix`.
#[derive(Debug, Clone)]
pub struct Canned {
    pub prefix: String,
    pub status: u16,
    pub body: String,
    pub chunked: bool,
}

pub fn canned(prefix: &str, status: u16, body: &str) -> Canned {
    Canned {
        prefix: prefix.into(),
        status,
        body: body.into(),
        chunked: false,
    }
}

/// A fake node API on loopback that answers from a fixed list (first match wins) and records
/// what it was asked. 404 for anything else.
#[derive(Debug)]
pub struct FakeApi {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeApi {
    pub fn start(answers: Vec<Canned>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                serve(s, &answers, &log);
            }
        });
        Self { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(mut s: TcpStream, answers: &[Canned], log: &Mutex<Vec<Seen>>) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, len) = loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut first = head.lines().next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers,
        body,
    });
    let key = format!("{method} {path}");
    let a = answers
        .iter()
        .find(|a| key.starts_with(&a.prefix))
        .cloned()
        .unwrap_or_else(|| canned("", 404, "no such thing"));
    let ctype = if a.body.starts_with(['{', '[', '"']) {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!("HTTP/1.1 {} X\r\ncontent-type: {ctype}\r\n", a.status);
    if a.chunked {
        out.push_str("transfer-encoding: chunked\r\n\r\n");
        for piece in a.body.as_bytes().chunks(7) {
            out.push_str(&format!(
                "{:x}\r\n{}\r\n",
                piece.len(),
                String::from_utf8_lossy(piece)
            ));
        }
        out.push_str("0\r\n\r\n");
    } else {
        out.push_str(&format!(
            "content-length: {}\r\n\r\n{}",
            a.body.len(),
            a.body
        ));
    }
    let _ = s.write_all(out.as_bytes());
}
