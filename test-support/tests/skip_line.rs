//! The convention end to end, through libtest itself: this binary runs its own
//! `needs_a_missing_binary` test in a child process, with the stock mycelium path pointed at
//! nothing. The SKIPPED line must reach the child's stderr although libtest captures a passing
//! test's output, the test must pass, and with `HYPHAE_REQUIRE_CAPABILITIES` set it must fail.

use std::process::{Command, Output};

use hyphae_test_support::{Capability, Missing, REQUIRE_VAR, STOCK_MYCELIUM_VAR, decide, require};

/// Set in the child's environment only.
const CHILD_VAR: &str = "HYPHAE_TEST_SUPPORT_CHILD";
const NOWHERE: &str = "/nonexistent/hyphae-test-support/mycelium-0.7.10";

/// In the child (run by the test below): a test that needs a binary that is not there. In the
/// ordinary run, where the environment is the real one: the decision it relies on, with the
/// probe's answer given, one SKIPPED line and `false` for a missing capability.
#[test]
fn needs_a_missing_binary() {
    if std::env::var_os(CHILD_VAR).is_some() {
        if !require("needs_a_missing_binary", Capability::StockMycelium) {
            return;
        }
        panic!("a stock mycelium binary was found at {NOWHERE}");
    }
    let mut out = Vec::new();
    let missing = Err(Missing::new("needs a thing\nthat is not here"));
    assert!(!decide("t", missing, false, &mut out));
    assert_eq!(out, b"SKIPPED: t: needs a thing; that is not here\n");
}

/// The helper test in a child process, with `REQUIRE_VAR` set to `strict` (or unset).
fn child(strict: Option<&str>) -> (Output, String, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["needs_a_missing_binary", "--exact"])
        .env(CHILD_VAR, "1")
        .env(STOCK_MYCELIUM_VAR, NOWHERE)
        .env_remove(REQUIRE_VAR)
        .env_remove("RUST_TEST_NOCAPTURE");
    if let Some(v) = strict {
        cmd.env(REQUIRE_VAR, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn skip_is_one_visible_line_and_fails_when_required() {
    let reason = format!("needs the stock mycelium 0.7.10 binary: {NOWHERE}: ");
    for unset in [None, Some(""), Some("0")] {
        let (out, stdout, stderr) = child(unset);
        assert!(out.status.success(), "{unset:?}: {stdout}{stderr}");
        assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
        // Exactly one line on stderr, although libtest captured the test's output.
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{unset:?}: {stderr}");
        let line = lines[0];
        assert!(
            line.starts_with(&format!("SKIPPED: needs_a_missing_binary: {reason}"))
                && line.ends_with("(set HYPHAE_STOCK_MYCELIUM)"),
            "{line}"
        );
    }
    for strict in ["1", "yes"] {
        let (out, stdout, stderr) = child(Some(strict));
        assert!(!out.status.success(), "{strict}: {stdout}{stderr}");
        assert!(stdout.contains("test result: FAILED"), "{stdout}");
        let all = format!("{stdout}{stderr}");
        assert!(
            all.contains(&format!("needs_a_missing_binary: {reason}"))
                && all.contains("HYPHAE_REQUIRE_CAPABILITIES is set"),
            "{all}"
        );
        assert!(!all.contains("SKIPPED:"), "{all}");
    }
}
