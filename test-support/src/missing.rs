//! Why a capability is missing.

use std::fmt;

/// Why a capability is missing: what follows `SKIPPED: <test>: `. Always one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing(String);

impl Missing {
    /// A reason; line breaks in it (a tool's stderr, say) become `; `.
    pub fn new(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let lines: Vec<&str> = reason
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        Self(lines.join("; "))
    }

    /// The reason, as the SKIPPED line and the failure give it.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
