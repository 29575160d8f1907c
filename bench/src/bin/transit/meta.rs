//! What a result needs beside its figures: the machine, the exact command, the binaries.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::procs::first_line_of;

/// The machine: CPU model, vCPUs (online, and those this process may use), memory, kernel,
/// whether it is a virtual machine, and the load average now.
#[derive(Debug)]
pub(crate) struct Machine {
    cpu_model: String,
    vcpus: usize,
    allowed: Vec<usize>,
    mem_gib: f64,
    kernel: String,
    virtual_machine: bool,
    loadavg: String,
}

impl Machine {
    pub(crate) fn probe(allowed: &[usize]) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_owned())
        };
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        // SAFETY: sysconf reads a configuration value and touches no memory of ours.
        #[allow(unsafe_code)]
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        Self {
            cpu_model: field("model name").unwrap_or_else(|| "unknown CPU".into()),
            vcpus: usize::try_from(online).unwrap_or(0),
            allowed: allowed.to_vec(),
            mem_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            virtual_machine: field("flags")
                .is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor")),
            loadavg: crate::procs::loadavg(),
        }
    }

    /// `2 vCPU AMD EPYC 7763 64-Core Processor (virtual machine), 23.4 GiB, Linux 6.18.44`.
    pub(crate) fn line(&self) -> String {
        format!(
            "{} vCPU {}{}, {:.1} GiB, Linux {}",
            self.vcpus,
            self.cpu_model,
            if self.virtual_machine {
                " (virtual machine)"
            } else {
                ""
            },
            self.mem_gib,
            self.kernel
        )
    }

    pub(crate) fn loadavg(&self) -> &str {
        &self.loadavg
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "line": self.line(), "cpu_model": self.cpu_model, "vcpus": self.vcpus,
            "allowed_cpus": self.allowed, "mem_gib": self.mem_gib, "kernel": self.kernel,
            "virtual_machine": self.virtual_machine, "loadavg_at_start": self.loadavg,
        })
    }
}

/// This process's command line, quoted for a POSIX shell.
pub(crate) fn command_line() -> String {
    std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `a` as one shell word.
fn shell_quote(a: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !a.is_empty() && a.chars().all(plain) {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// A hyphae router binary: its path, `--version`, and the commit of the git work tree it sits
/// in (with `dirty` when tracked files differ from that commit; the binary may still be older
/// than the tree, so this names the source it was most likely built from).
pub(crate) fn hyphae_identity(bin: &Path) -> Value {
    let dir = bin
        .parent()
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| Path::new("."));
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = commit
        .as_ref()
        .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    json!({
        "path": bin.display().to_string(),
        "version": first_line_of(bin, &["--version"]),
        "git_commit": commit, "git_dirty": dirty,
    })
}

/// The stock binary: its path and `--version` (for example `mycelium 0.7.10`).
pub(crate) fn stock_identity(bin: &Path) -> Value {
    json!({
        "path": bin.display().to_string(),
        "version": first_line_of(bin, &["--version"]),
    })
}

/// A short name for the hyphae build, e.g. `5e0b1da (dirty)`.
pub(crate) fn short_commit(identity: &Value) -> String {
    let commit = identity["git_commit"].as_str().unwrap_or("unknown commit");
    let short = commit.get(..7).unwrap_or(commit);
    if identity["git_dirty"].as_bool() == Some(true) {
        format!("{short} + uncommitted changes")
    } else {
        short.to_owned()
    }
}

/// Seconds since the Unix epoch, and the same as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn now_utc() -> (u64, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (proleptic Gregorian), after Howard Hinnant's `civil_from_days`.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (secs, format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("--seconds"), "--seconds");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn utc_date_is_well_formed() {
        let (secs, s) = now_utc();
        assert!(secs > 1_700_000_000);
        assert_eq!(s.len(), 20);
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T');
    }
}
