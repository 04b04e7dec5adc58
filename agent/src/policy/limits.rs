//! Volume limits: rules with `limit:` instead of `action:` cap how much a statement may return
//! (rows, bytes), or how much an identity may read from what they match per time window.
//!
//! ```yaml
//! rules:
//!   - {name: big-results, match: {class: [read]}, limit: {rows: 100000, bytes: 64MiB}}
//!   - {name: crm-budget, match: {relations: ["crm.*"]}, limit: {rows: 10000, per: 1m}}
//! ```
//!
//! Limits take no part in "first match decides": every limit rule whose `match` holds applies
//! (ANY matching, as for deny rules: a limit only restricts), and the tightest cap stops first.

use std::{sync::Arc, time::Duration};

use super::{Match, StatementFacts};

/// A compiled limit rule.
#[derive(Debug, Clone)]
pub(crate) struct LimitRule {
    pub name: Arc<str>,
    pub matcher: Match,
    pub cap: Cap,
}

/// What a limit allows: rows and bytes (at least one), per statement or per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    /// `None`: per statement (a cursor counts as one statement across its FETCHes). `Some`:
    /// per identity (its tenant) and window, on this host.
    pub per: Option<Duration>,
}

/// A limit that applies to a statement: the rule and its cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub policy: Arc<str>,
    pub rule: Arc<str>,
    pub cap: Cap,
}

impl LimitRule {
    pub(crate) fn applies(&self, facts: &StatementFacts<'_>) -> bool {
        self.matcher.matches(false, facts)
    }
}

impl std::fmt::Display for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(rows) = self.rows {
            parts.push(format!("{rows} rows"));
        }
        if let Some(bytes) = self.bytes {
            parts.push(format_size(bytes));
        }
        write!(f, "{}", parts.join(" or "))?;
        match self.per {
            Some(per) => write!(f, " per {}", super::format_duration(per)),
            None => write!(f, " per statement"),
        }
    }
}

/// `512`, `10KB`, `64MiB`, `1GB` (decimal KB/MB/GB, binary KiB/MiB/GiB), as written in policies.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 =
        number.parse().map_err(|_| format!("`{text}`: expected a size such as 1048576, 10MB or 64MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("`{text}`: unknown unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)")),
    };
    match number.checked_mul(scale) {
        Some(0) => Err(format!("`{text}`: a limit of nothing refuses every row; deny the statements instead")),
        Some(n) => Ok(n),
        None => Err(format!("`{text}`: too large")),
    }
}

/// A size for people: `64MiB`, `10MB`, `512B`.
pub fn format_size(bytes: u64) -> String {
    for (unit, scale) in [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
    ] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert!(parse_size("0").is_err() && parse_size("1TB").is_err() && parse_size("MB").is_err());
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(10_000), "10KB");
        assert_eq!(format_size(1234), "1234B");
        let cap = Cap { rows: Some(10_000), bytes: None, per: Some(Duration::from_secs(60)) };
        assert_eq!(cap.to_string(), "10000 rows per 1m");
    }
}
