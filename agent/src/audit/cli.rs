//! `warden audit ...`: read the ring (while the agent writes it, or a copied file offline).

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    ring::{Kind, RingFile},
    seal::{Seal, load_key},
};

/// A record as the CLI sees it: its sequence number and its JSON.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub value: Value,
}

impl Entry {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn session(&self) -> Option<u64> {
        self.value["session"].as_u64()
    }
    fn at_ms(&self) -> u64 {
        self.value["at_ms"].as_u64().unwrap_or(0)
    }
}

/// Every record of the ring from `from_seq`, oldest first (seals included).
pub fn load(path: &Path, from_seq: u64) -> Result<Vec<Entry>> {
    let ring = RingFile::open(path)?;
    Ok(ring.records(from_seq).into_iter().map(entry).collect())
}

fn entry(r: super::ring::Record) -> Entry {
    let mut value: Value =
        serde_json::from_slice(&r.payload).unwrap_or_else(|_| serde_json::json!({"kind": "unreadable"}));
    if let Value::Object(map) = &mut value {
        map.insert("seq".into(), r.seq.into());
        if r.kind == Kind::Seal {
            map.insert("at_ms".into(), r.at_ms.into());
        }
    }
    Entry { seq: r.seq, value }
}

/// Filters for `query`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Matches the `warden/identity` label, the command name or the executable's file name.
    pub identity: Option<String>,
    /// KEY=VALUE labels that must all match.
    pub labels: Vec<(String, String)>,
    pub database: Option<String>,
    /// allow, deny or hold (statements only).
    pub verdict: Option<String>,
    pub kind: Option<String>,
    pub session: Option<u64>,
    pub since_ms: Option<u64>,
}

/// Applies `filter`, joining statement records to the identity of their session.
pub fn query(entries: &[Entry], filter: &Filter) -> Vec<Entry> {
    let identities: HashMap<u64, &Value> = entries
        .iter()
        .filter(|e| matches!(e.kind(), "connection_open" | "observed"))
        .filter_map(|e| Some((e.session()?, &e.value["identity"])))
        .collect();
    entries
        .iter()
        .filter(|e| e.kind() != "seal" || filter.kind.as_deref() == Some("seal"))
        .filter(|e| filter.kind.as_ref().is_none_or(|k| e.kind() == k))
        .filter(|e| filter.session.is_none_or(|s| e.session() == Some(s)))
        .filter(|e| filter.database.as_ref().is_none_or(|d| e.value["database"].as_str() == Some(d)))
        .filter(|e| filter.since_ms.is_none_or(|t| e.at_ms() >= t))
        .filter(|e| filter.verdict.as_ref().is_none_or(|v| e.value["verdict"]["decision"].as_str() == Some(v)))
        .filter(|e| {
            if filter.identity.is_none() && filter.labels.is_empty() {
                return true;
            }
            let identity = match &e.value["identity"] {
                Value::Null => e.session().and_then(|s| identities.get(&s).copied()),
                v => Some(v),
            };
            let Some(identity) = identity else { return false };
            let identity_ok = filter.identity.as_ref().is_none_or(|want| {
                identity["labels"]["warden/identity"].as_str() == Some(want)
                    || identity["comm"].as_str() == Some(want)
                    || identity["exe"].as_str().and_then(|x| x.rsplit('/').next()) == Some(want)
            });
            let labels_ok = filter.labels.iter().all(|(k, v)| identity["labels"][k].as_str() == Some(v));
            identity_ok && labels_ok
        })
        .cloned()
        .collect()
}

/// Parses `--since`: `30s`, `10m`, `2h`, `7d` ago, or milliseconds since the epoch.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64> {
    let (num, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: u64 =
        num.parse().with_context(|| format!("--since {s:?}: expected e.g. 30s, 10m, 2h, 7d or epoch milliseconds"))?;
    let ms = match unit {
        "" => return Ok(n),
        "s" => n * 1_000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        other => bail!("--since {s:?}: unknown unit {other:?} (s, m, h, d)"),
    };
    Ok(now_ms.saturating_sub(ms))
}

/// Formats Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS.mmm`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Output style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

fn colour(on: bool, code: &str, text: &str) -> String {
    if on { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
}

fn summary(e: &Entry) -> String {
    let v = &e.value;
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    match e.kind() {
        "connection_open" | "observed" => {
            let id = &v["identity"];
            let who = id["labels"]["warden/identity"].as_str().or(id["comm"].as_str()).unwrap_or("?");
            format!(
                "{who} pid={} uid={} -> {} ({}) user={} db={}",
                id["pid"],
                id["uid"],
                s("database"),
                s("orig_dst"),
                v["db_user"].as_str().unwrap_or("-"),
                v["db_name"].as_str().unwrap_or("-")
            )
        }
        "connection_close" => format!(
            "{} statements, {} rows, {} ms{}",
            v["statements"],
            v["rows"],
            v["duration_ms"],
            v["error"].as_str().map(|e| format!(", error: {e}")).unwrap_or_default()
        ),
        "statement" => {
            let text: String = s("text").chars().take(80).collect();
            format!(
                "{} {} rows={} {}us{} {}",
                v["class"].as_str().unwrap_or("?"),
                v["verdict"]["decision"].as_str().unwrap_or("?"),
                v["rows"],
                v["duration_us"],
                v["error"].as_str().map(|e| format!(" error={e}")).unwrap_or_default(),
                text
            )
        }
        "seal" => format!("chain sealed up to record {}", v["upto_seq"]),
        _ => {
            let mut m = v.clone();
            if let Value::Object(map) = &mut m {
                for k in ["kind", "seq", "at_ms", "session"] {
                    map.remove(k);
                }
            }
            m.to_string()
        }
    }
}

/// Prints records as an aligned table (colour on a terminal) or as JSON lines.
pub fn print(entries: &[Entry], output: Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            for e in entries {
                writeln!(out, "{}", e.value)?;
            }
        }
        Output::Table => {
            let tty = std::io::stdout().is_terminal();
            let kind_width = entries.iter().map(|e| e.kind().len()).max().unwrap_or(4).max(4);
            writeln!(
                out,
                "{}",
                colour(
                    tty,
                    "1",
                    &format!("{:>8}  {:<23}  {:<kind_width$}  {:>20}  DETAIL", "SEQ", "TIME (UTC)", "KIND", "SESSION")
                )
            )?;
            for e in entries {
                let kind = e.kind();
                let kind_col = match kind {
                    "statement" if e.value["verdict"]["decision"] == "deny" => {
                        colour(tty, "31", &format!("{kind:<kind_width$}"))
                    }
                    "proxy_refused" | "refused_not_serving" | "ungoverned" => {
                        colour(tty, "33", &format!("{kind:<kind_width$}"))
                    }
                    _ => format!("{kind:<kind_width$}"),
                };
                let session = e.session().map(|s| s.to_string()).unwrap_or_default();
                writeln!(out, "{:>8}  {:<23}  {}  {:>20}  {}", e.seq, utc(e.at_ms()), kind_col, session, summary(e))?;
            }
        }
    }
    Ok(())
}

/// `tail -f`: prints new records as they are written, until interrupted. Follows the chain
/// from the last record shown rather than rereading the ring.
pub fn follow(path: &Path, mut next_seq: u64, output: Output) -> Result<()> {
    let mut cursor: Option<(u64, u64)> = None;
    loop {
        let ring = RingFile::open(path)?;
        let records =
            cursor.and_then(|(pos, seq)| ring.records_after(pos, seq)).unwrap_or_else(|| ring.records(next_seq));
        if let Some(last) = records.last() {
            cursor = Some((last.position, last.seq));
            next_seq = last.seq + 1;
        }
        let fresh: Vec<Entry> = records.into_iter().map(entry).filter(|e| e.kind() != "seal").collect();
        if !fresh.is_empty() {
            print(&fresh, output)?;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A session's statements in order, with timings: what an auditor steps through.
pub fn replay(entries: &[Entry], session: u64, output: Output) -> Result<()> {
    let mine: Vec<&Entry> = entries.iter().filter(|e| e.session() == Some(session)).collect();
    if mine.is_empty() {
        bail!("no records for session {session} in the ring");
    }
    if output == Output::Json {
        for e in &mine {
            println!("{}", e.value);
        }
        return Ok(());
    }
    let start = mine.first().map_or(0, |e| e.at_ms());
    if let Some(open) = mine.iter().find(|e| matches!(e.kind(), "connection_open" | "observed")) {
        println!("session {session}: {}", summary(open));
    }
    let mut statements = 0;
    let mut rows = 0u64;
    let mut errors = 0;
    let mut denied = 0;
    for e in mine.iter().filter(|e| e.kind() == "statement") {
        statements += 1;
        rows += e.value["rows"].as_u64().unwrap_or(0);
        let decision = e.value["verdict"]["decision"].as_str().unwrap_or("allow");
        if decision == "deny" {
            denied += 1;
        }
        let error = e.value["error"].as_str();
        if error.is_some() {
            errors += 1;
        }
        println!(
            "#{statements:<4} +{:>8} ms  {:>9.3} ms  {:<11} {:<5} rows={:<7} {}{}",
            e.at_ms().saturating_sub(start),
            e.value["duration_us"].as_u64().unwrap_or(0) as f64 / 1000.0,
            e.value["class"].as_str().unwrap_or("?"),
            decision,
            e.value["rows"],
            e.value["text"].as_str().unwrap_or(""),
            error.map(|c| format!("   -> error {c}")).unwrap_or_default()
        );
    }
    if let Some(close) = mine.iter().find(|e| e.kind() == "connection_close") {
        println!("closed after {} ms: {}", close.value["duration_ms"], summary(close));
    }
    println!("{statements} statements, {rows} rows, {errors} errors, {denied} refused");
    Ok(())
}

/// Verifies checksums, the hash chain and (with the key) the seals. Returns the problems.
pub fn verify(path: &Path, key_path: Option<&Path>) -> Result<super::ring::Verification> {
    let ring = RingFile::open(path)?;
    let mut v = ring.verify();
    if let Some(key_path) = key_path {
        let key = load_key(key_path)?;
        let records = ring.records(0);
        let by_seq: HashMap<u64, &super::ring::Record> = records.iter().map(|r| (r.seq, r)).collect();
        for r in records.iter().filter(|r| r.kind == Kind::Seal) {
            let Ok(seal) = serde_json::from_slice::<Seal>(&r.payload) else {
                v.problems.push(format!("record {}: unreadable seal", r.seq));
                continue;
            };
            match by_seq.get(&seal.upto_seq) {
                Some(sealed) if key.check(&seal, &sealed.hash) => v.seals_checked += 1,
                Some(_) => v.problems.push(format!(
                    "seal {}: does not match records up to {} (altered or forged)",
                    r.seq, seal.upto_seq
                )),
                // The sealed record was overwritten (ring wrap): nothing left to check against.
                None => {}
            }
        }
    }
    Ok(v)
}

/// Counts and sizes.
pub fn stats(path: &Path) -> Result<Value> {
    let ring = RingFile::open(path)?;
    let entries = load(path, 0)?;
    let mut by_kind: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for e in &entries {
        *by_kind.entry(e.kind().to_string()).or_default() += 1;
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(serde_json::json!({
        "path": path.display().to_string(),
        "capacity_bytes": ring.capacity(),
        "file_bytes": size,
        "records": entries.len(),
        "first_seq": entries.first().map(|e| e.seq),
        "last_seq": entries.last().map(|e| e.seq),
        "first_at": entries.first().map(|e| utc(e.at_ms())),
        "last_at": entries.last().map(|e| utc(e.at_ms())),
        "overwritten": ring.overwritten(),
        "lost": ring.lost(),
        "by_kind": by_kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(1_795_823_284_062), "2026-11-27 23:48:04.062");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
    }

    #[test]
    fn since_parsing() {
        assert_eq!(parse_since("10m", 1_000_000).unwrap(), 400_000);
        assert_eq!(parse_since("1700000000000", 0).unwrap(), 1_700_000_000_000);
        assert!(parse_since("10y", 0).is_err());
        assert!(parse_since("soon", 0).is_err());
    }

    #[test]
    fn query_joins_statements_to_their_session_identity() {
        let e = |seq, v: Value| Entry { seq, value: v };
        let entries = vec![
            e(
                1,
                serde_json::json!({"kind": "connection_open", "session": 7, "database": "main", "identity": {"comm": "psql", "labels": {"warden/identity": "etl", "team": "data"}}}),
            ),
            e(
                2,
                serde_json::json!({"kind": "statement", "session": 7, "database": "main", "verdict": {"decision": "allow"}}),
            ),
            e(
                3,
                serde_json::json!({"kind": "connection_open", "session": 8, "database": "other", "identity": {"comm": "java", "labels": {}}}),
            ),
            e(
                4,
                serde_json::json!({"kind": "statement", "session": 8, "database": "other", "verdict": {"decision": "deny"}}),
            ),
            e(5, serde_json::json!({"kind": "seal"})),
        ];
        let seqs = |f: &Filter| query(&entries, f).iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&Filter::default()), vec![1, 2, 3, 4]);
        assert_eq!(seqs(&Filter { identity: Some("etl".into()), ..Filter::default() }), vec![1, 2]);
        assert_eq!(seqs(&Filter { labels: vec![("team".into(), "data".into())], ..Filter::default() }), vec![1, 2]);
        assert_eq!(
            seqs(&Filter { identity: Some("java".into()), kind: Some("statement".into()), ..Filter::default() }),
            vec![4]
        );
        assert_eq!(seqs(&Filter { verdict: Some("deny".into()), ..Filter::default() }), vec![4]);
        assert_eq!(seqs(&Filter { database: Some("main".into()), ..Filter::default() }), vec![1, 2]);
        assert_eq!(seqs(&Filter { session: Some(8), ..Filter::default() }), vec![3, 4]);
    }
}
