//! `warden audit ...`: read the ring (while the agent writes it, or a copied file offline).
//!
//! Records hold text the governed clients chose (statements, user and database names,
//! application_name, labels, error messages). Table and replay output passes every such field
//! through `escape_controls`, so a statement cannot move the cursor, retitle or clear the
//! operator's terminal, or reorder what is shown with bidi overrides. JSON output is left to
//! serde's escaping.

use std::{
    borrow::Cow,
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    SEAL_INTERVAL,
    ring::{Kind, RingFile, Unsealed, Verification},
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
    /// How the dry-run verdict differs from the real one: deny, hold, allow or mask.
    pub would: Option<String>,
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
        .filter(|e| filter.would.as_ref().is_none_or(|w| e.value["would"]["change"].as_str() == Some(w)))
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
    let scale: u64 = match unit {
        "" => return Ok(n),
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => bail!("--since {s:?}: unknown unit {other:?} (s, m, h, d)"),
    };
    // Longer ago than can be said: since the beginning.
    Ok(n.checked_mul(scale).map_or(0, |ms| now_ms.saturating_sub(ms)))
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

/// Whether a character must not reach a terminal as is: C0 controls (all of them, tab and
/// newline too: a table row is one line), DEL, C1 controls (U+0080..U+009F; some terminals take
/// U+009B as CSI), and the bidi embeddings, overrides and isolates of "Trojan Source"
/// (U+202A..U+202E, U+2066..U+2069).
fn is_unsafe_for_terminal(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text as it may be printed on a terminal: every character `is_unsafe_for_terminal` names
/// becomes a visible escape (`\n`, `\t`, `\r`, `\x1b` for the other C0 and DEL, `\u{9b}` or
/// `\u{202e}` for the rest). Backslashes are left alone: SQL text is shown as written.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_for_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c <= '\x7f' && is_unsafe_for_terminal(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_unsafe_for_terminal(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn colour(on: bool, code: &str, text: &str) -> String {
    if on { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
}

/// The DETAIL column of a record, safe for a terminal: the one place table and replay output
/// formats record fields.
fn summary(e: &Entry) -> String {
    escape_controls(&summary_raw(e)).into_owned()
}

fn summary_raw(e: &Entry) -> String {
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
            // A dry-run verdict that differs: what enforcing it would change, and by which rule.
            let would = match v["would"]["change"].as_str() {
                Some(change) => format!(
                    " (dryrun: would {change} by {}/{})",
                    v["would"]["policy"].as_str().unwrap_or("-"),
                    v["would"]["rule"].as_str().unwrap_or("default")
                ),
                None => String::new(),
            };
            format!(
                "{} {}{would} rows={} {}us{} {}",
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
            let kind_width = entries.iter().map(|e| escape_controls(e.kind()).len()).max().unwrap_or(4).max(4);
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
                // The kind is the agent's own word, but a ring copied from elsewhere is not.
                let kind = escape_controls(e.kind());
                let kind = kind.as_ref();
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
    for e in mine
        .iter()
        .filter(|e| matches!(e.kind(), "statement" | "approval_requested" | "approval_decided" | "session_terminated"))
    {
        let at = e.at_ms().saturating_sub(start);
        match e.kind() {
            "approval_requested" => {
                let line = format!(
                    "      +{at:>8} ms  approval requested {}: {} (by {}{}; decided within {} s)",
                    e.value["id"].as_str().unwrap_or("?"),
                    e.value["statement"].as_str().unwrap_or(""),
                    e.value["policy"].as_str().unwrap_or("policy"),
                    e.value["rule"].as_str().map(|r| format!("/{r}")).unwrap_or_default(),
                    e.value["timeout_s"],
                );
                println!("{}", escape_controls(&line));
                continue;
            }
            "approval_decided" => {
                let who = match (e.value["by"]["user"].as_str(), e.value["by"]["uid"].as_u64()) {
                    (Some(user), Some(uid)) => format!(" by {user} (uid {uid})"),
                    (None, Some(uid)) => format!(" by uid {uid}"),
                    _ => String::new(),
                };
                let why = e.value["reason"]
                    .as_str()
                    .or(e.value["why"].as_str())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let line = format!(
                    "      +{at:>8} ms  approval {} {}{who}{why}",
                    e.value["request"].as_str().unwrap_or("?"),
                    e.value["outcome"].as_str().unwrap_or("?").replace('_', " "),
                );
                println!("{}", escape_controls(&line));
                continue;
            }
            "session_terminated" => {
                let line = format!(
                    "      +{at:>8} ms  session terminated by {} (uid {})",
                    e.value["by"]["user"].as_str().unwrap_or("?"),
                    e.value["by"]["uid"]
                );
                println!("{}", escape_controls(&line));
                continue;
            }
            _ => {}
        }
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
        let line = format!(
            "#{statements:<4} +{:>8} ms  {:>9.3} ms  {:<11} {:<5} rows={:<7} {}{}",
            e.at_ms().saturating_sub(start),
            e.value["duration_us"].as_u64().unwrap_or(0) as f64 / 1000.0,
            e.value["class"].as_str().unwrap_or("?"),
            decision,
            e.value["rows"],
            e.value["text"].as_str().unwrap_or(""),
            error.map(|c| format!("   -> error {c}")).unwrap_or_default()
        );
        println!("{}", escape_controls(&line));
    }
    // A request with no decision in the ring: its agent ended without one (killed), and nothing
    // of it ran (held statements live only in the agent that holds them).
    let decided: std::collections::HashSet<&str> =
        mine.iter().filter(|e| e.kind() == "approval_decided").filter_map(|e| e.value["request"].as_str()).collect();
    let closed = mine.iter().any(|e| e.kind() == "connection_close");
    for e in mine.iter().filter(|e| e.kind() == "approval_requested") {
        let id = e.value["id"].as_str().unwrap_or("?");
        if !decided.contains(id) {
            let line = if closed {
                format!("approval {id}: no decision recorded (the session ended first); nothing of it ran")
            } else {
                format!(
                    "approval {id}: no decision recorded yet (held now, or its agent was killed: then nothing of it ran)"
                )
            };
            println!("{}", escape_controls(&line));
        }
    }
    if let Some(close) = mine.iter().find(|e| e.kind() == "connection_close") {
        println!("closed after {} ms: {}", close.value["duration_ms"], summary(close));
    }
    println!("{statements} statements, {rows} rows, {errors} errors, {denied} refused");
    Ok(())
}

/// The longest stretch of record time an unsealed tail may span: the writer seals at least
/// every `SEAL_INTERVAL` while records arrive, plus slack for a busy writer and clock jitter.
pub const MAX_UNSEALED_SPAN_MS: u64 = SEAL_INTERVAL.as_millis() as u64 + 5_000;

/// Verifies checksums, the hash chain and (with the key) the seals, and how much of the ring no
/// genuine seal covers. `problems` are failures; `notices` are not (a live ring or a crash
/// leaves a short unsealed tail).
///
/// A record is covered when its seq is at most the largest `upto_seq` of a seal that checks
/// (that seal's HMAC pins the chain hash, which commits to every record before it). The event
/// records after it are the unsealed tail. A tail longer than the writer's `every` records or
/// spanning more than `MAX_UNSEALED_SPAN_MS` of record time cannot have been left by a writer
/// that kept sealing: seals were stripped or the chain rewritten after the last genuine one.
pub fn verify(path: &Path, key_path: Option<&Path>) -> Result<Verification> {
    verify_with(path, key_path, None)
}

/// `verify`, knowing the writer's `audit.seal_every` from its configuration: what a ring without
/// a single genuine seal is held to (its seals could all have been removed).
pub fn verify_with(path: &Path, key_path: Option<&Path>, configured_every: Option<u64>) -> Result<Verification> {
    let ring = RingFile::open(path)?;
    let mut v = ring.verify();
    let Some(key_path) = key_path else {
        v.notices.push("no sealing key: seals were not checked".into());
        return Ok(v);
    };
    let key = load_key(key_path)?;
    v.key = Some(key_path.display().to_string());
    let records = ring.records(0);
    let by_seq: HashMap<u64, &super::ring::Record> = records.iter().map(|r| (r.seq, r)).collect();
    // The newest genuine seal: (upto_seq, every).
    let mut newest: Option<(u64, u64)> = None;
    // `every` of the genuine seals only: an unchecked one could claim any cadence.
    let mut every_seen = 0;
    let first_seq = records.first().map_or(0, |r| r.seq);
    for r in records.iter().filter(|r| r.kind == Kind::Seal) {
        let Ok(seal) = serde_json::from_slice::<Seal>(&r.payload) else {
            v.problems.push(format!("record {}: unreadable seal", r.seq));
            continue;
        };
        match by_seq.get(&seal.upto_seq) {
            Some(sealed) if key.check(&seal, &sealed.hash) && seal.every > 0 => every_seen = seal.every,
            _ => {}
        }
        match by_seq.get(&seal.upto_seq) {
            Some(sealed) if key.check(&seal, &sealed.hash) => {
                v.seals_checked += 1;
                if newest.is_none_or(|(upto, _)| seal.upto_seq > upto) {
                    newest = Some((seal.upto_seq, seal.every));
                }
            }
            Some(_) => v
                .problems
                .push(format!("seal {}: does not match records up to {} (altered or forged)", r.seq, seal.upto_seq)),
            // The sealed record was overwritten (ring wrap): nothing left to check against.
            None if seal.upto_seq < first_seq => {}
            None => v.problems.push(format!(
                "seal {}: covers record {}, which should be in the ring and is not (removed or forged)",
                r.seq, seal.upto_seq
            )),
        }
    }
    // Seals of earlier versions do not say how often they were made: assume the default.
    let every = newest
        .map(|(_, every)| every)
        .filter(|e| *e > 0)
        .or((every_seen > 0).then_some(every_seen))
        .or(configured_every)
        .unwrap_or_else(|| crate::config::AuditConfig::default().seal_every);
    let covered = newest.map_or(0, |(upto, _)| upto);
    let tail: Vec<&super::ring::Record> = records.iter().filter(|r| r.kind == Kind::Event && r.seq > covered).collect();
    if let (Some(first), Some(last)) = (tail.first(), tail.last()) {
        let times = tail.iter().map(|r| r.at_ms);
        let span_ms = times.clone().max().unwrap_or(0) - times.min().unwrap_or(0);
        let unsealed = Unsealed { first_seq: first.seq, last_seq: last.seq, records: tail.len() as u64, span_ms };
        let writer = format!("the writer seals every {every} records and at least every {} s", SEAL_INTERVAL.as_secs());
        if unsealed.records > every || span_ms > MAX_UNSEALED_SPAN_MS {
            let cause = match newest {
                None => "no seal checks, so seals were removed or the ring rewritten".to_string(),
                Some((upto, _)) => format!(
                    "the newest genuine seal covers records up to {upto}, so later seals were removed or the \
                     records after it rewritten"
                ),
            };
            v.problems.push(format!(
                "{unsealed}, more than a running writer leaves ({writer}; {} s allowed): {cause}",
                MAX_UNSEALED_SPAN_MS / 1000
            ));
        } else {
            v.notices.push(format!("{unsealed} ({writer}: a live ring or a crash leaves such a tail)"));
        }
        v.unsealed = Some(unsealed);
    }
    Ok(v)
}

/// Prints the outcome of `verify`: JSON, or a summary, its notices and its problems.
pub fn print_verification(v: &Verification, output: Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if output == Output::Json {
        writeln!(out, "{}", serde_json::to_string(v)?)?;
        return Ok(());
    }
    // Without a key, a notice says the seals were not checked.
    writeln!(out, "{} records, {} seals checked", v.records, v.seals_checked)?;
    for notice in &v.notices {
        writeln!(out, "notice: {notice}")?;
    }
    for problem in &v.problems {
        writeln!(out, "PROBLEM: {problem}")?;
    }
    writeln!(out, "{}", if v.problems.is_empty() { "ok" } else { "FAILED" })?;
    Ok(())
}

/// What the `audit_flood` records still in the ring say about one identity.
#[derive(Debug, Default, serde::Serialize)]
struct FloodTotals {
    condensed: u64,
    dropped: u64,
    written_bytes: u64,
    /// Summaries (one per window in which it went over its share, and one at shutdown).
    summaries: u64,
    first_at: String,
    last_at: String,
}

/// Counts and sizes, and per identity what fair shares condensed or dropped (`floods`, from the
/// `audit_flood` records still in the ring). Those drops are not in `lost`, which counts only
/// records the agent failed to keep (queue full, write errors).
pub fn stats(path: &Path) -> Result<Value> {
    let ring = RingFile::open(path)?;
    let entries = load(path, 0)?;
    let mut by_kind: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut floods: std::collections::BTreeMap<String, FloodTotals> = std::collections::BTreeMap::new();
    for e in &entries {
        *by_kind.entry(e.kind().to_string()).or_default() += 1;
        if e.kind() == "audit_flood" {
            let v = &e.value;
            let identity = v["identity"].as_str().unwrap_or("?").to_string();
            let totals = floods.entry(identity).or_default();
            totals.condensed += v["condensed"].as_u64().unwrap_or(0);
            totals.dropped += v["dropped"].as_u64().unwrap_or(0);
            totals.written_bytes += v["written_bytes"].as_u64().unwrap_or(0);
            totals.summaries += 1;
            if totals.first_at.is_empty() {
                totals.first_at = utc(e.at_ms());
            }
            totals.last_at = utc(e.at_ms());
        }
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
        "floods": floods,
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

    #[test]
    fn control_characters_and_bidi_overrides_are_shown_not_obeyed() {
        let nasty = "select 1 \x1b[2J\x1b]0;pwned\x07 -- \u{202e}gnp.exe\u{2066}x\u{2069} \u{9b}31m \x7f\ttab\r\nnext";
        let shown = escape_controls(nasty);
        assert_eq!(
            shown,
            r"select 1 \x1b[2J\x1b]0;pwned\x07 -- \u{202e}gnp.exe\u{2066}x\u{2069} \u{9b}31m \x7f\ttab\r\nnext"
        );
        assert!(!shown.chars().any(is_unsafe_for_terminal), "nothing unsafe left: {shown}");
        assert!(matches!(escape_controls(r"plain é 日本 \x1b"), Cow::Borrowed(_)), "safe text is not copied");
        for c in ['\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{2067}', '\u{2068}', '\u{80}', '\u{9f}', '\0'] {
            assert!(is_unsafe_for_terminal(c), "{:x}", c as u32);
        }
        for c in ['\u{a0}', '\u{2029}', 'é', ' ', '~'] {
            assert!(!is_unsafe_for_terminal(c), "{:x}", c as u32);
        }
    }

    #[test]
    fn table_and_replay_fields_are_escaped() {
        let nasty = "\x1b[2J\x1b]0;pwned\x07\u{202e}";
        let open = Entry {
            seq: 1,
            value: serde_json::json!({"kind": "connection_open", "session": 7, "database": "main",
                "orig_dst": "127.0.0.1:5432", "db_user": nasty, "db_name": nasty,
                "identity": {"comm": nasty, "pid": 1, "uid": 0, "labels": {"warden/identity": nasty}}}),
        };
        let statement = Entry {
            seq: 2,
            value: serde_json::json!({"kind": "statement", "session": 7, "class": nasty, "text": nasty,
                "verdict": {"decision": nasty}, "error": nasty, "rows": 0, "duration_us": 1}),
        };
        let close =
            Entry { seq: 3, value: serde_json::json!({"kind": "connection_close", "session": 7, "error": nasty}) };
        let other = Entry { seq: 4, value: serde_json::json!({"kind": "proxy_refused", "reason": "\u{9b}2J\u{202e}"}) };
        for e in [&open, &statement, &close, &other] {
            let shown = summary(e);
            assert!(!shown.chars().any(is_unsafe_for_terminal), "{} printed raw: {shown:?}", e.kind());
        }
        assert!(summary(&statement).contains(r"\x1b[2J\x1b]0;pwned\x07\u{202e}"), "{}", summary(&statement));
    }

    mod verify {
        use super::super::super::{ring::Ring, seal::SealKey};
        use super::*;

        /// A ring (1 MiB) and its key in a fresh directory, removed when the guard drops.
        fn new_ring(name: &str) -> (tempfile::TempDir, Ring, SealKey, std::path::PathBuf, std::path::PathBuf) {
            let dir = crate::test_dir(&format!("warden-verify-test-{name}-"));
            let (path, key_path) = (dir.path().join("audit.ring"), dir.path().join("audit.ring.key"));
            let ring = Ring::open(&path, 1024 * 1024).unwrap();
            let key = super::super::super::seal::load_or_create_key(&key_path).unwrap();
            (dir, ring, key, path, key_path)
        }

        fn events(ring: &mut Ring, n: u64, first_ms: u64, step_ms: u64) {
            for i in 0..n {
                ring.append(Kind::Event, first_ms + i * step_ms, br#"{"kind":"statement"}"#).unwrap();
            }
        }

        fn seal(ring: &mut Ring, key: &SealKey, every: u64, at_ms: u64) {
            let seal = key.seal(ring.next_seq() - 1, &ring.head_hash(), every);
            ring.append(Kind::Seal, at_ms, &serde_json::to_vec(&seal).unwrap()).unwrap();
        }

        #[test]
        fn a_sealed_ring_passes_and_a_short_tail_is_a_notice() {
            let (_dir, mut ring, key, path, key_path) = new_ring("short");
            events(&mut ring, 10, 1_000, 500);
            seal(&mut ring, &key, 10, 6_000);
            let v = verify(&path, Some(&key_path)).unwrap();
            assert!(v.problems.is_empty() && v.notices.is_empty() && v.unsealed.is_none(), "{v:?}");
            assert_eq!((v.records, v.seals_checked), (11, 1));
            // What a crash (or a live writer) leaves: fewer than `every` records, seconds apart.
            events(&mut ring, 3, 7_000, 1_000);
            let v = verify(&path, Some(&key_path)).unwrap();
            assert!(v.problems.is_empty(), "a short tail is not a failure: {v:?}");
            assert_eq!(v.unsealed, Some(Unsealed { first_seq: 12, last_seq: 14, records: 3, span_ms: 2_000 }));
            assert!(
                v.notices.iter().any(|n| n.starts_with("records 12..14 (3 records, spanning 2.0 s) are not sealed")),
                "{v:?}"
            );
            let json = serde_json::to_value(&v).unwrap();
            assert_eq!(json["unsealed"]["first_seq"], 12, "-o json shows the range: {json}");
        }

        #[test]
        fn a_ring_whose_seals_were_stripped_fails() {
            // 40 records over a minute and no seal: a writer seals at least every 10 s.
            let (_dir, mut ring, _key, path, key_path) = new_ring("stripped-time");
            events(&mut ring, 40, 1_000, 1_500);
            let v = verify(&path, Some(&key_path)).unwrap();
            assert!(
                v.problems.iter().any(|p| p.starts_with("records 1..40 (40 records, spanning 58.5 s) are not sealed")
                    && p.contains("no seal checks")),
                "{v:?}"
            );
            // 1,200 records within a second and no seal: more than the default `every` (1,000).
            let (_dir, mut ring, _key, path, key_path) = new_ring("stripped-count");
            events(&mut ring, 1_200, 1_000, 0);
            let v = verify(&path, Some(&key_path)).unwrap();
            assert!(v.problems.iter().any(|p| p.contains("records 1..1200 (1200 records")), "{v:?}");
        }

        #[test]
        fn a_tail_longer_than_the_writer_leaves_fails() {
            let (_dir, mut ring, key, path, key_path) = new_ring("long-tail");
            events(&mut ring, 10, 1_000, 10);
            seal(&mut ring, &key, 10, 1_100);
            events(&mut ring, 10, 1_200, 10);
            seal(&mut ring, &key, 10, 1_300);
            // Seals after this point were stripped: 25 records where the writer seals every 10.
            events(&mut ring, 25, 1_400, 10);
            let v = verify(&path, Some(&key_path)).unwrap();
            assert_eq!(v.seals_checked, 2);
            assert_eq!(v.unsealed.map(|u| (u.first_seq, u.last_seq, u.records)), Some((23, 47, 25)));
            assert!(
                v.problems.iter().any(|p| p.contains("records 23..47") && p.contains("covers records up to 21")),
                "{v:?}"
            );
        }

        #[test]
        fn a_tail_spanning_more_than_the_seal_interval_fails() {
            let (_dir, mut ring, key, path, key_path) = new_ring("slow-tail");
            events(&mut ring, 2, 1_000, 10);
            seal(&mut ring, &key, 1_000, 1_100);
            events(&mut ring, 3, 2_000, 10_000);
            let v = verify(&path, Some(&key_path)).unwrap();
            assert!(v.problems.iter().any(|p| p.contains("records 4..6 (3 records, spanning 20.0 s)")), "{v:?}");
        }

        #[test]
        fn a_forged_every_does_not_widen_the_window() {
            let (_dir, mut ring, key, path, key_path) = new_ring("forged-every");
            events(&mut ring, 5, 1_000, 10);
            let mut forged = key.seal(ring.next_seq() - 1, &ring.head_hash(), 10);
            forged.every = 1_000_000;
            ring.append(Kind::Seal, 1_100, &serde_json::to_vec(&forged).unwrap()).unwrap();
            events(&mut ring, 50, 1_200, 10);
            let v = verify(&path, Some(&key_path)).unwrap();
            assert_eq!(v.seals_checked, 0);
            assert!(v.problems.iter().any(|p| p.contains("altered or forged")), "{v:?}");
        }

        #[test]
        fn without_a_key_seals_are_not_checked_and_that_is_said() {
            let (_dir, mut ring, _key, path, _) = new_ring("no-key");
            events(&mut ring, 40, 1_000, 1_500);
            let v = verify(&path, None).unwrap();
            assert!(v.problems.is_empty() && v.unsealed.is_none() && v.key.is_none(), "{v:?}");
            assert!(v.notices.iter().any(|n| n.contains("seals were not checked")), "{v:?}");
        }
    }
}
