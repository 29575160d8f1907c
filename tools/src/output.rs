//! What the commands print: the API's JSON as it is for scripts (`--json`), and for people
//! plain aligned tables, JSON scalars as text, byte counts and durations in units.

use anyhow::{Result, anyhow};
use serde_json::Value;

/// Prints a JSON value, pretty, on stdout.
pub fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A JSON scalar as text: strings without quotes, null as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The items of a JSON list from an API; `what` names it in the error when it is no list.
pub fn array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| anyhow!("the API's answer for {what} is not a list"))
}

/// A table: a header row and data rows, printed with columns padded to their widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells print empty, extra cells are kept).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no rows were added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: header, a rule, the rows; two spaces between columns, no trailing
    /// blanks.
    pub fn render(&self) -> String {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; cols];
        for r in self.rows.iter().chain([&self.header]) {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                if i > 0 {
                    s.push_str("  ");
                }
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', w - c.chars().count()));
            }
            s.truncate(s.trim_end().len());
            s.push('\n');
            s
        };
        let mut out = line(&self.header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// Bytes for people: `512 B`, `1.50 KiB`, `3.20 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

/// A number of seconds for people: `45s`, `3m 05s`, `2h 00m 10s`, `4d 01h 00m`.
pub fn seconds(s: u64) -> String {
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match () {
        () if d > 0 => format!("{d}d {h:02}h {m:02}m"),
        () if h > 0 => format!("{h}h {m:02}m {sec:02}s"),
        () if m > 0 => format!("{m}m {sec:02}s"),
        () => format!("{sec}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_as_text() {
        assert_eq!(text(&Value::from("a b")), "a b");
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(text(&Value::from(1000)), "1000");
        assert_eq!(text(&Value::from(true)), "true");
        assert!(array(&Value::from(1), "routes").is_err());
    }

    #[test]
    fn columns_align() {
        let mut t = Table::new(&["Subnet", "Metric"]);
        t.row(vec!["4a9:5947:6719:badc::/64".into(), "0".into()]);
        t.row(vec!["5::/64".into(), "infinite".into()]);
        assert_eq!(
            t.render(),
            "Subnet                   Metric\n\
             -----------------------  --------\n\
             4a9:5947:6719:badc::/64  0\n\
             5::/64                   infinite\n"
        );
    }

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.00 MiB");
        assert_eq!(seconds(45), "45s");
        assert_eq!(seconds(185), "3m 05s");
        assert_eq!(seconds(7210), "2h 00m 10s");
    }
}
