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
    let mut out = Vec::new();
    ring.each(from_seq, |r| out.push(entry(r)));
    Ok(out)
}

/// The newest `lines` entries as every command but `export --raw` shows them (statements with
/// their outcomes merged in; no seals), and the newest record's sequence number.
///
/// Reads a window of the newest records, not the ring: a 1 GiB ring holds millions of records,
/// and parsing them all to show twenty took tens of seconds and gigabytes. An outcome the
/// window shows alone among the last `lines` may belong to a statement before it (a
/// long-running one), into which the whole ring's view merges it: a pass over the older
/// records, reading only their kind and key, finds those. The window grows (fourfold) until it
/// holds `lines` entries. The header's next sequence number only says where the first window
/// starts.
pub fn tail(path: &Path, lines: usize) -> Result<(Vec<Entry>, Option<u64>)> {
    tail_from_window(path, lines, 2 * lines as u64 + 256)
}

fn tail_from_window(path: &Path, lines: usize, mut window: u64) -> Result<(Vec<Entry>, Option<u64>)> {
    use super::view::{Key, key, merged};
    let ring = RingFile::open(path)?;
    let mut newest = ring.next_seq_hint().saturating_sub(1);
    loop {
        let from = newest.saturating_sub(window);
        let mut entries = Vec::new();
        let Some((oldest, last)) = ring.each(from, |r| entries.push(entry(r))) else {
            return Ok((Vec::new(), None));
        };
        let mut shown: Vec<Entry> = merged(entries).into_iter().filter(|e| e.kind() != "seal").collect();
        let outcome_key = |e: &Entry| if e.kind() == "statement_end" { key(&e.value) } else { None };
        // Only outcomes among the last `lines` matter (the window's first records usually
        // include some whose statement lies just before it); each one found to belong to an
        // earlier statement goes, which brings earlier entries into the last `lines`.
        let mut checked: std::collections::HashSet<Key> = std::collections::HashSet::new();
        let partial = from > oldest;
        loop {
            let start = shown.len().saturating_sub(lines);
            let alone: std::collections::HashSet<Key> =
                shown[start..].iter().filter_map(outcome_key).filter(|k| !checked.contains(k)).collect();
            if !partial || alone.is_empty() {
                break;
            }
            let earlier = statements_before(&ring, from, &alone);
            shown.retain(|e| outcome_key(e).is_none_or(|k| !earlier.contains(&k)));
            checked.extend(alone);
        }
        if !partial || shown.len() >= lines {
            let start = shown.len().saturating_sub(lines);
            shown.drain(..start);
            return Ok((shown, Some(last)));
        }
        newest = last;
        window = window.saturating_mul(4);
    }
}

/// What joins a statement and its outcomes, read from a record without building the rest.
enum Joining {
    Statement(Option<super::view::Key>),
    Outcome(Option<super::view::Key>),
    Other,
}

fn joining(r: &super::ring::Record) -> Joining {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        kind: Option<Cow<'a, str>>,
        session: Option<u64>,
        statement: Option<u64>,
        part: Option<u64>,
    }
    let (kind, key) = match serde_json::from_slice::<Head>(&r.payload) {
        Ok(head) => {
            let key = match (head.session, head.statement, head.part) {
                (Some(s), Some(n), Some(p)) => Some((s, n, p)),
                _ => None,
            };
            (head.kind, key)
        }
        // Not the usual shape: read as every other command reads it.
        Err(_) => {
            let e = entry(r.clone());
            (Some(Cow::Owned(e.kind().to_string())), super::view::key(&e.value))
        }
    };
    match kind.as_deref() {
        Some("statement") => Joining::Statement(key),
        Some("statement_end") => Joining::Outcome(key),
        _ => Joining::Other,
    }
}

/// Which of `keys` a statement record before `before_seq` has (statement 0, a refusal that
/// never got a number, takes no outcome). Reads each record's kind and key, nothing else.
fn statements_before(
    ring: &RingFile,
    before_seq: u64,
    keys: &std::collections::HashSet<super::view::Key>,
) -> std::collections::HashSet<super::view::Key> {
    let mut found = std::collections::HashSet::new();
    ring.each(0, |r| {
        if r.seq >= before_seq {
            return;
        }
        if let Joining::Statement(Some(k)) = joining(&r)
            && k.1 != 0
            && keys.contains(&k)
        {
            found.insert(k);
        }
    });
    found
}

/// `export` (not `--raw`): the merged view of every record but seals, one JSON object per
/// line, written as it is read. A first pass reads each record's kind and key to find which
/// statement each outcome joins and where that outcome lies; the second writes each statement
/// with its outcomes read from the ring there, and skips them where they lie. It holds those
/// positions (two numbers an outcome), never the records: a ring of millions of records is
/// exported in the memory of its index. A live ring's newest records are those of the moment
/// each pass reaches them.
pub fn export(path: &Path) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    export_to(path, &mut out)?;
    Ok(out.flush()?)
}

fn export_to(path: &Path, out: &mut impl std::io::Write) -> Result<()> {
    let ring = RingFile::open(path)?;
    let mut latest: HashMap<super::view::Key, u64> = HashMap::new();
    let mut outcomes: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    let mut joined: std::collections::HashSet<u64> = std::collections::HashSet::new();
    ring.each(0, |r| match joining(&r) {
        // Statement 0 is a refusal that never got a number: nothing joins it.
        Joining::Statement(Some(k)) if k.1 != 0 => {
            latest.insert(k, r.seq);
        }
        Joining::Outcome(Some(k)) => {
            if let Some(&statement) = latest.get(&k) {
                outcomes.entry(statement).or_default().push((r.seq, r.position));
                joined.insert(r.seq);
            }
        }
        _ => {}
    });
    drop(latest);
    let mut failed = None;
    ring.each(0, |r| {
        if failed.is_some() || joined.contains(&r.seq) {
            return;
        }
        let seq = r.seq;
        let mut merging = super::view::Merging::default();
        merging.push(entry(r), |_| true);
        for &(end_seq, position) in outcomes.get(&seq).into_iter().flatten() {
            // Gone (overwritten since the first pass) only if the statement went before it.
            if let Some(end) = ring.record_at(position).filter(|end| end.seq == end_seq) {
                merging.push(entry(end), |_| true);
            }
        }
        for e in merging.finish().iter().filter(|e| e.kind() != "seal") {
            if let Err(e) = writeln!(out, "{}", e.value) {
                failed = Some(e);
                return;
            }
        }
    });
    failed.map_or(Ok(()), |e| Err(e.into()))
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

impl Filter {
    fn needs_identities(&self) -> bool {
        self.identity.is_some() || !self.labels.is_empty()
    }

    /// Whether `e` passes every filter; `identities` holds each session's identity (from its
    /// `connection_open` or `observed` record), which statement records do not repeat.
    pub fn matches(&self, e: &Entry, identities: &HashMap<u64, Value>) -> bool {
        let kind = e.kind();
        if (kind == "seal" && self.kind.as_deref() != Some("seal"))
            || self.kind.as_ref().is_some_and(|k| kind != k)
            || self.session.is_some_and(|s| e.session() != Some(s))
            || self.database.as_ref().is_some_and(|d| e.value["database"].as_str() != Some(d))
            || self.since_ms.is_some_and(|t| e.at_ms() < t)
            || self.verdict.as_ref().is_some_and(|v| e.value["verdict"]["decision"].as_str() != Some(v))
            || self.would.as_ref().is_some_and(|w| e.value["would"]["change"].as_str() != Some(w))
        {
            return false;
        }
        if !self.needs_identities() {
            return true;
        }
        let identity = match &e.value["identity"] {
            Value::Null => e.session().and_then(|s| identities.get(&s)),
            v => Some(v),
        };
        let Some(identity) = identity else { return false };
        let identity_ok = self.identity.as_ref().is_none_or(|want| {
            identity["labels"]["warden/identity"].as_str() == Some(want)
                || identity["comm"].as_str() == Some(want)
                || identity["exe"].as_str().and_then(|x| x.rsplit('/').next()) == Some(want)
        });
        identity_ok && self.labels.iter().all(|(k, v)| identity["labels"][k].as_str() == Some(v))
    }
}

/// Whether a record says who a session is (statement records refer to it by session).
fn names_identity(kind: &str) -> bool {
    matches!(kind, "connection_open" | "observed")
}

/// Applies `filter`, joining statement records to the identity of their session.
pub fn query(entries: &[Entry], filter: &Filter) -> Vec<Entry> {
    let identities: HashMap<u64, Value> = entries
        .iter()
        .filter(|e| filter.needs_identities() && names_identity(e.kind()))
        .filter_map(|e| Some((e.session()?, e.value["identity"].clone())))
        .collect();
    entries.iter().filter(|e| filter.matches(e, &identities)).cloned().collect()
}

/// `query` over the ring's merged view (`view::merged`), read one record at a time: what it
/// holds is what it returns (and, with an identity or label filter, each session's identity,
/// read in a first pass).
pub fn select(path: &Path, filter: &Filter) -> Result<Vec<Entry>> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        kind: Option<Cow<'a, str>>,
    }
    let ring = RingFile::open(path)?;
    let mut identities: HashMap<u64, Value> = HashMap::new();
    if filter.needs_identities() {
        ring.each(0, |r| {
            let named = match serde_json::from_slice::<Head>(&r.payload) {
                Ok(head) => head.kind.is_some_and(|k| names_identity(&k)),
                Err(_) => true,
            };
            let e = if named { entry(r) } else { return };
            if let (true, Some(session)) = (names_identity(e.kind()), e.session()) {
                identities.insert(session, e.value["identity"].clone());
            }
        });
    }
    let mut merging = super::view::Merging::default();
    ring.each(0, |r| {
        let e = entry(r);
        // Sessions opened since the first pass (the agent may be writing the ring).
        if let (true, true, Some(session)) = (filter.needs_identities(), names_identity(e.kind()), e.session()) {
            identities.entry(session).or_insert_with(|| e.value["identity"].clone());
        }
        merging.push(e, |e| filter.matches(e, &identities));
    });
    Ok(merging.finish())
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
/// `export --raw`: every record as written but seals, one JSON object per line, written as it
/// is read.
pub fn export_raw(path: &Path) -> Result<()> {
    let ring = RingFile::open(path)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    ring.each(0, |r| {
        if failed.is_some() {
            return;
        }
        let e = entry(r);
        if e.kind() != "seal" {
            failed = writeln!(out, "{}", e.value).err();
        }
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(out.flush()?),
    }
}

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
    let Some(key_path) = key_path else {
        let mut v = ring.verify();
        v.notices.push("no sealing key: seals were not checked".into());
        return Ok(v);
    };
    let key = load_key(key_path)?;
    // The seals first, then the chain, keeping the hashes of the records seals cover: the
    // ring is checked in the memory of its seals, not of its records.
    let mut seals: Vec<(u64, Option<Seal>)> = Vec::new();
    ring.each(0, |r| {
        if r.kind == Kind::Seal {
            seals.push((r.seq, serde_json::from_slice::<Seal>(&r.payload).ok()));
        }
    });
    let covers: std::collections::HashSet<u64> =
        seals.iter().flat_map(|(_, s)| s.as_ref().map(|s| s.upto_seq)).collect();
    let mut hashes: HashMap<u64, [u8; 32]> = HashMap::new();
    let mut first_seq = None;
    let mut v = ring.verify_each(|r, hash| {
        first_seq.get_or_insert(r.seq);
        if covers.contains(&r.seq) {
            hashes.insert(r.seq, *hash);
        }
    });
    v.key = Some(key_path.display().to_string());
    let first_seq = first_seq.unwrap_or(0);
    // The newest genuine seal: (upto_seq, every).
    let mut newest: Option<(u64, u64)> = None;
    // `every` of the genuine seals only: an unchecked one could claim any cadence.
    let mut every_seen = 0;
    for (seq, seal) in &seals {
        let Some(seal) = seal else {
            v.problems.push(format!("record {seq}: unreadable seal"));
            continue;
        };
        match hashes.get(&seal.upto_seq) {
            Some(sealed) if key.check(seal, sealed) && seal.every > 0 => every_seen = seal.every,
            _ => {}
        }
        match hashes.get(&seal.upto_seq) {
            Some(sealed) if key.check(seal, sealed) => {
                v.seals_checked += 1;
                if newest.is_none_or(|(upto, _)| seal.upto_seq > upto) {
                    newest = Some((seal.upto_seq, seal.every));
                }
            }
            Some(_) => v
                .problems
                .push(format!("seal {seq}: does not match records up to {} (altered or forged)", seal.upto_seq)),
            // The sealed record was overwritten (ring wrap): nothing left to check against.
            None if seal.upto_seq < first_seq => {}
            None => v.problems.push(format!(
                "seal {seq}: covers record {}, which should be in the ring and is not (removed or forged)",
                seal.upto_seq
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
    // The events no genuine seal covers: (first seq, last seq, count, earliest and latest time).
    let mut tail: Option<(u64, u64, u64, u64, u64)> = None;
    ring.each(covered + 1, |r| {
        if r.kind == Kind::Event && r.seq > covered {
            let t = tail.get_or_insert((r.seq, r.seq, 0, r.at_ms, r.at_ms));
            *t = (t.0, r.seq, t.2 + 1, t.3.min(r.at_ms), t.4.max(r.at_ms));
        }
    });
    if let Some((first, last, records, earliest, latest)) = tail {
        let span_ms = latest - earliest;
        let unsealed = Unsealed { first_seq: first, last_seq: last, records, span_ms };
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
    /// What stats reads of most records: their kind and time, without building the rest.
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        kind: Option<Cow<'a, str>>,
        at_ms: Option<u64>,
    }
    let ring = RingFile::open(path)?;
    let mut by_kind: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut floods: std::collections::BTreeMap<String, FloodTotals> = std::collections::BTreeMap::new();
    let (mut records, mut first, mut last) = (0u64, None, None);
    ring.each(0, |r| {
        let (kind, at_ms) = match serde_json::from_slice::<Head>(&r.payload) {
            Ok(head) => (head.kind.unwrap_or_default(), head.at_ms),
            // Not the usual shape: read as every other command reads it.
            Err(_) => {
                let e = entry(r.clone());
                (Cow::Owned(e.kind().to_string()), e.value["at_ms"].as_u64())
            }
        };
        let at_ms = if r.kind == Kind::Seal { r.at_ms } else { at_ms.unwrap_or(0) };
        records += 1;
        first.get_or_insert((r.seq, at_ms));
        last = Some((r.seq, at_ms));
        if kind == "audit_flood" {
            let e = entry(r.clone());
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
        match by_kind.get_mut(kind.as_ref()) {
            Some(n) => *n += 1,
            None => {
                by_kind.insert(kind.into_owned(), 1);
            }
        }
    });
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(serde_json::json!({
        "path": path.display().to_string(),
        "capacity_bytes": ring.capacity(),
        "file_bytes": size,
        "records": records,
        "first_seq": first.map(|(seq, _)| seq),
        "last_seq": last.map(|(seq, _)| seq),
        "first_at": first.map(|(_, at)| utc(at)),
        "last_at": last.map(|(_, at)| utc(at)),
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

    /// A ring holding what `tail` and `select` must get right: outcomes far from their
    /// statements (beyond any first window), statements still running, statements refused,
    /// seals, resumed portals, a key used twice, outcomes whose statement was overwritten
    /// (the ring wraps), identities named once per session.
    fn busy_ring(path: &Path) -> u64 {
        let mut ring = super::super::ring::Ring::open(path, super::super::ring::MIN_CAPACITY).unwrap();
        let mut put = |v: Value| ring.append(Kind::Event, 5, v.to_string().as_bytes()).unwrap();
        let mut last = 0;
        let mut long_running = Vec::new();
        for session in 0..40u64 {
            let labels = serde_json::json!({"warden/identity": if session % 3 == 0 { "etl" } else { "web" }});
            put(serde_json::json!({"kind": "connection_open", "session": session, "database": "main",
                "identity": {"comm": "psql", "labels": labels}}));
            for statement in 1..=12u64 {
                // Statement 12 reuses statement 1's key, with another verdict.
                let decision = if statement % 5 == 0 || statement == 12 { "deny" } else { "allow" };
                let key = serde_json::json!({"session": session, "statement": statement % 11, "part": 0});
                let mut v = serde_json::json!({"kind": "statement", "database": if session % 2 == 0 { "main" } else { "other" },
                    "verdict": {"decision": decision}, "at_ms": session * 100 + statement});
                v.as_object_mut().unwrap().extend(key.as_object().unwrap().clone());
                put(v);
                let mut end = serde_json::json!({"kind": "statement_end", "outcome": "completed", "rows": statement,
                    "command_tag": "SELECT", "duration_us": 3, "error": null});
                end.as_object_mut().unwrap().extend(key.as_object().unwrap().clone());
                match statement % 4 {
                    // Statement 11 has number 0, a refusal's: its outcome is never merged.
                    _ if statement == 11 => long_running.push(end),
                    0 => long_running.push(end),
                    1 => {}
                    _ => {
                        if statement % 3 == 0 {
                            let mut suspended = end.clone();
                            suspended["outcome"] = "suspended".into();
                            put(suspended);
                        }
                        put(end);
                    }
                }
            }
            if session % 7 == 6 {
                last = put(serde_json::json!({"kind": "seal"}));
            }
        }
        // The long-running statements end last, in a burst.
        for end in long_running {
            last = put(end);
        }
        ring.append(Kind::Seal, 6, b"{\"kind\":\"seal\"}").unwrap();
        for i in 0..30 {
            last = ring
                .append(Kind::Event, 7, format!("{{\"kind\":\"connection_close\",\"session\":{i}}}").as_bytes())
                .unwrap();
        }
        last
    }

    #[test]
    fn tail_select_and_export_answer_as_the_whole_ring_does() {
        let dir = crate::test_dir("warden-cli-view-");
        let path = dir.path().join("audit.ring");
        let last = busy_ring(&path);
        let whole = super::super::view::merged(load(&path, 0).unwrap());
        assert!(RingFile::open(&path).unwrap().overwritten() > 0, "the ring wrapped");
        assert!(whole.iter().any(|e| e.kind() == "statement_end"), "an outcome outlived its statement");
        let shown: Vec<&Entry> = whole.iter().filter(|e| e.kind() != "seal").collect();
        for n in [0, 1, 5, 20, 31, 45, 100, 400, 5000] {
            let want = &shown[shown.len().saturating_sub(n)..];
            // The first window as tail takes it, and narrower ones (it grows from any).
            for window in [None, Some(1), Some(7), Some(60)] {
                let (got, newest) = match window {
                    None => tail(&path, n).unwrap(),
                    Some(w) => tail_from_window(&path, n, w).unwrap(),
                };
                assert_eq!(newest, Some(last));
                assert_eq!(
                    got.iter().map(|e| &e.value).collect::<Vec<_>>(),
                    want.iter().map(|e| &e.value).collect::<Vec<_>>(),
                    "tail -n {n}, first window {window:?}"
                );
            }
        }
        let filters = [
            Filter::default(),
            Filter { identity: Some("etl".into()), ..Filter::default() },
            Filter {
                labels: vec![("warden/identity".into(), "web".into())],
                kind: Some("statement".into()),
                ..Filter::default()
            },
            Filter { verdict: Some("deny".into()), ..Filter::default() },
            Filter { verdict: Some("allow".into()), ..Filter::default() },
            Filter { database: Some("other".into()), ..Filter::default() },
            Filter { session: Some(39), ..Filter::default() },
            Filter { kind: Some("statement_end".into()), ..Filter::default() },
            Filter { kind: Some("seal".into()), ..Filter::default() },
            Filter { since_ms: Some(3_000), ..Filter::default() },
        ];
        let mut exported = Vec::new();
        export_to(&path, &mut exported).unwrap();
        let want: String = shown.iter().map(|e| format!("{}\n", e.value)).collect();
        assert_eq!(String::from_utf8(exported).unwrap(), want, "export is the merged view, seals left out");
        for filter in filters {
            let want = query(&whole, &filter);
            let got = select(&path, &filter).unwrap();
            assert!(!want.is_empty(), "{filter:?} selects something");
            assert_eq!(
                got.iter().map(|e| (e.seq, &e.value)).collect::<Vec<_>>(),
                want.iter().map(|e| (e.seq, &e.value)).collect::<Vec<_>>(),
                "{filter:?}"
            );
        }
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
        fn an_unsealed_tail_spans_its_earliest_to_its_latest_time_in_any_order() {
            let (_dir, mut ring, key, path, key_path) = new_ring("span");
            events(&mut ring, 4, 1_000, 500);
            seal(&mut ring, &key, 10, 3_000);
            // The clock stepped back between records.
            for at_ms in [9_000, 6_000, 7_500] {
                ring.append(Kind::Event, at_ms, br#"{"kind":"statement"}"#).unwrap();
            }
            let v = verify(&path, Some(&key_path)).unwrap();
            assert_eq!(v.unsealed, Some(Unsealed { first_seq: 6, last_seq: 8, records: 3, span_ms: 3_000 }), "{v:?}");
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
