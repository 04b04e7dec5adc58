//! Statement records: the session hooks that turn what the protocol state machine saw into
//! audit records.
//!
//! A statement is recorded when it is forwarded to the server (`statement`: text, parameters
//! per config, class, relations, verdict), because from that moment it runs whatever the client
//! does next; its outcome follows in a second record when the server reports it
//! (`statement_end`: completed, failed, suspended at a row limit, not run, or unknown when the
//! session ended first). The two share (session, statement, part): `part` numbers the
//! statements of one simple-query string. Recorded text is capped (`audit.max_text_bytes`): a
//! longer statement keeps a prefix, its full length and the SHA-256 of the whole recorded text.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use sha2::{Digest as _, Sha256};

use super::{AuditLog, Event, Outcome, SessionId, Statement, StatementEnd, Verdict};
use crate::{
    config::{AuditConfig, Literals},
    pg::error::sqlstate,
    proxy::postgres::{
        hooks::{SessionHooks, StatementInfo, Verdict as HookVerdict},
        state::{Lexing, QueryProtocol, Running},
    },
    sql::{
        Analysis, Described, DescriptionCache, LexOptions, normalise_with_options, split_statements_with,
        sqlcommenter_tags,
    },
};

/// Statements longer than this are described on the blocking pool, not on the proxy worker that
/// relays other sessions' traffic (normalising, splitting and hashing are linear, but a long
/// string of many statements is parsed statement by statement).
const DESCRIBE_INLINE_MAX: usize = 16 * 1024;
/// At most this many bind parameters are recorded, each cut to `MAX_PARAM_BYTES`.
const MAX_PARAMS: usize = 64;
const MAX_PARAM_BYTES: usize = 1024;
/// Relations named beyond this count are not listed, and each name is cut to
/// `MAX_RELATION_BYTES`.
const MAX_RELATIONS: usize = 256;
const MAX_RELATION_BYTES: usize = 256;
/// Statements of one simple-query string recorded one by one; the rest of a longer string is
/// recorded as one part (a string of millions of statements would otherwise cost gigabytes).
const MAX_PARTS: usize = 10_000;
/// Statements whose parts are kept for their outcome records (pipelined strings overlap).
const KEPT_STATEMENTS: usize = 8;

/// Audit settings every session shares.
pub struct StatementAuditing {
    pub log: AuditLog,
    pub literals: Literals,
    pub parameters: bool,
    pub max_text_bytes: usize,
    pub descriptions: DescriptionCache,
}

impl StatementAuditing {
    pub fn new(log: AuditLog, config: &AuditConfig) -> Self {
        Self {
            log,
            literals: config.literals,
            parameters: config.parameters,
            max_text_bytes: config.max_text_bytes,
            descriptions: DescriptionCache::new(4096),
        }
    }

    /// The text as recorded: literals per config, capped, with the hash of the whole when cut.
    fn recorded_text(&self, raw: &str, described: &Described) -> RecordedText {
        let full: &str = match self.literals {
            Literals::Keep => raw,
            Literals::Normalise => &described.normalised,
        };
        if full.len() <= self.max_text_bytes {
            // The normalised text is shared with the description cache: no copy per statement.
            let text = match self.literals {
                Literals::Normalise => described.normalised.clone(),
                Literals::Keep => Arc::from(full),
            };
            return RecordedText { text, bytes: full.len(), sha256: None };
        }
        let mut cut = self.max_text_bytes;
        while !full.is_char_boundary(cut) {
            cut -= 1;
        }
        let digest = Sha256::digest(full.as_bytes());
        RecordedText {
            text: Arc::from(&full[..cut]),
            bytes: full.len(),
            sha256: Some(digest.iter().map(|b| format!("{b:02x}")).collect()),
        }
    }

    /// Describes each statement of a (simple-query) string: its recorded text and analysis.
    fn describe_parts(&self, sql: &str, lexing: Lexing, simple: bool) -> Vec<Part> {
        let options = LexOptions { standard_conforming_strings: lexing.standard_conforming_strings };
        if !lexing.ascii_safe {
            // A quote or backslash byte may be the second half of a character: the text cannot
            // be split or normalised from its bytes (the wrong reading could hide a statement or
            // leak literals).
            return vec![ambiguous_part(sql, "the client encoding lets quote bytes hide inside characters")];
        }
        if !lexing.settled && sql.contains('\\') && lexes_both_ways_differently(sql, simple) {
            // A SET of standard_conforming_strings may be ahead of it in the pipeline, and the
            // text means something else under each setting: neither reading can be trusted
            // (and the wrong one could leak literals into the record).
            return vec![ambiguous_part(
                sql,
                "standard_conforming_strings may change before it runs, and the text reads differently under each",
            )];
        }
        let mut parts = if simple { split_statements_with(sql, options) } else { vec![sql] };
        if parts.is_empty() {
            parts = vec![sql];
        }
        if parts.len() > MAX_PARTS {
            // Past the cap the rest of the string is one part: described (and recorded) as a
            // whole, with its outcome the last one the server reports.
            let start = parts[MAX_PARTS - 1].as_ptr() as usize - sql.as_ptr() as usize;
            parts.truncate(MAX_PARTS - 1);
            parts.push(&sql[start..]);
        }
        parts
            .into_iter()
            .map(|part| {
                let described = self.descriptions.describe_with(part, options);
                Part { text: self.recorded_text(part, &described), described }
            })
            .collect()
    }
}

/// Whether `sql` splits or normalises differently with `standard_conforming_strings` on and off.
fn lexes_both_ways_differently(sql: &str, simple: bool) -> bool {
    let on = LexOptions { standard_conforming_strings: true };
    let off = LexOptions { standard_conforming_strings: false };
    (simple && split_statements_with(sql, on) != split_statements_with(sql, off))
        || normalise_with_options(sql, on) != normalise_with_options(sql, off)
}

/// The record of a text whose reading is ambiguous: its length and hash only, class unknown.
fn ambiguous_part(sql: &str, reason: &str) -> Part {
    let digest = Sha256::digest(sql.as_bytes());
    Part {
        text: RecordedText {
            text: Arc::from(""),
            bytes: sql.len(),
            sha256: Some(digest.iter().map(|b| format!("{b:02x}")).collect()),
        },
        described: Described {
            tags: Arc::default(),
            normalised: Arc::from(""),
            analysis: Arc::new(Analysis {
                class: "unknown",
                class_reason: Some(Arc::from(reason)),
                relations: Arc::from(Vec::new()),
            }),
        },
    }
}

/// A statement's text as the ring keeps it.
#[derive(Debug, Clone)]
struct RecordedText {
    text: Arc<str>,
    /// Length of the whole recorded text (normalised or kept), before any cut.
    bytes: usize,
    /// SHA-256 (hex) of the whole recorded text, when `text` is only its prefix.
    sha256: Option<String>,
}

/// A statement described ahead of its forwarding (text, how it lexes, parts).
type Prepared = (Arc<str>, Lexing, Arc<[Part]>);

/// One statement of a forwarded message, described.
#[derive(Debug, Clone)]
struct Part {
    text: RecordedText,
    described: Described,
}

/// The message a statement came in, as its record describes it.
struct Subject {
    id: u64,
    /// The portal an Execute runs (for the record of one the proxy does not know).
    portal: String,
    protocol: QueryProtocol,
    function_oid: Option<u32>,
    params: Option<Vec<Option<String>>>,
    /// sqlcommenter tags of the message's trailing comment: they annotate every statement it
    /// carries.
    tags: Arc<BTreeMap<String, String>>,
}

/// One session's statement hooks.
pub struct SessionAudit {
    shared: Arc<StatementAuditing>,
    session: SessionId,
    database: Arc<str>,
    /// The parts of the statements being answered (keyed by id): described once when forwarded,
    /// not again per completion (a 10,000-statement string is split once).
    current: Mutex<std::collections::VecDeque<(u64, Arc<[Part]>)>>,
    /// A long statement described on the blocking pool while it was held, for `on_forward`.
    prepared: Arc<Mutex<Option<Prepared>>>,
}

impl SessionAudit {
    pub fn new(shared: Arc<StatementAuditing>, session: SessionId, database: String) -> Self {
        Self {
            shared,
            session,
            database: Arc::from(database),
            current: Mutex::new(std::collections::VecDeque::new()),
            prepared: Arc::new(Mutex::new(None)),
        }
    }

    /// The parts of `running`'s statement (described now if it was not at forward).
    fn parts(&self, running: &Running) -> Arc<[Part]> {
        let id = running.resumes.unwrap_or(running.id);
        if let Some((_, parts)) = self.current.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(i, _)| *i == id)
        {
            return parts.clone();
        }
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_if(|(sql, lexing, _)| *lexing == running.lexing && **sql == *running.sql)
            .map(|(_, _, parts)| parts);
        let parts = prepared.unwrap_or_else(|| match running.protocol {
            // A fast-path call has no text; an Execute of a portal no Bind of this session
            // created (a SQL cursor, a refused Bind) runs something the proxy never saw.
            QueryProtocol::FunctionCall => Arc::from(Vec::new()),
            QueryProtocol::Extended if running.bind().is_none() => Arc::from(Vec::new()),
            protocol => {
                Arc::from(self.shared.describe_parts(&running.sql, running.lexing, protocol == QueryProtocol::Simple))
            }
        });
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.len() >= KEPT_STATEMENTS {
            current.pop_front();
        }
        current.push_back((id, parts.clone()));
        parts
    }

    fn params(&self, running: &Running) -> Option<Vec<Option<String>>> {
        if !self.shared.parameters {
            return None;
        }
        running.bind().map(|bind| {
            bind.params()
                .take(MAX_PARAMS)
                .map(|(value, binary)| {
                    value.map(|v| {
                        let v = &v[..v.len().min(MAX_PARAM_BYTES)];
                        if binary {
                            format!("\\x{}", v.iter().map(|b| format!("{b:02x}")).collect::<String>())
                        } else {
                            String::from_utf8_lossy(v).into_owned()
                        }
                    })
                })
                .collect()
        })
    }

    fn protocol_name(protocol: QueryProtocol) -> &'static str {
        match protocol {
            QueryProtocol::Simple => "simple",
            QueryProtocol::Extended => "extended",
            QueryProtocol::FunctionCall => "function_call",
        }
    }

    /// What a record says about the message a statement came in.
    fn subject(&self, running: &Running, parts: &[Part]) -> Subject {
        // sqlcommenter tags of the message's trailing comment annotate every statement of it: a
        // single statement's come from the description cache.
        let tags = match parts {
            _ if !running.lexing.ascii_safe => Arc::default(),
            [only] => only.described.tags.clone(),
            _ => Arc::new(sqlcommenter_tags(&running.sql)),
        };
        Subject {
            id: running.id,
            portal: crate::pg::text(running.portal_name()).chars().take(64).collect(),
            protocol: running.protocol,
            function_oid: running.function_oid,
            params: self.params(running),
            // In an encoding that can hide quote bytes a "comment" may be a literal's inside.
            tags,
        }
    }

    /// The record of one forwarded statement (or part of a simple-query string).
    fn statement(&self, subject: &Subject, part: u32, described: Option<&Part>, verdict: Verdict) -> Statement {
        let (text, bytes, sha256, class, class_reason, relations) = match described {
            Some(p) => {
                let a = &p.described.analysis;
                let long =
                    a.relations.len() > MAX_RELATIONS || a.relations.iter().any(|r| r.len() > MAX_RELATION_BYTES);
                let relations: Arc<[String]> = if long {
                    a.relations
                        .iter()
                        .take(MAX_RELATIONS)
                        .map(|r| {
                            let mut cut = r.len().min(MAX_RELATION_BYTES);
                            while !r.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            r[..cut].to_string()
                        })
                        .collect()
                } else {
                    a.relations.clone()
                };
                (p.text.text.clone(), p.text.bytes, p.text.sha256.clone(), a.class, a.class_reason.clone(), relations)
            }
            // A fast-path function call has no SQL text: what runs is the function. An Execute
            // of a portal no Bind of this session created runs what the proxy never saw.
            None => match subject.protocol {
                QueryProtocol::FunctionCall => (
                    Arc::from(format!("<fast-path call of function {}>", subject.function_oid.unwrap_or(0))),
                    0,
                    None,
                    "unknown",
                    Some(Arc::from("fast-path function call: any function, run without SQL")),
                    Arc::from(Vec::new()),
                ),
                _ => (
                    Arc::from(format!("<execute of portal \"{}\">", subject.portal)),
                    0,
                    None,
                    "unknown",
                    Some(Arc::from(
                        "a portal whose statement the proxy does not know: not created by a Bind it saw (a SQL cursor?), or of a name whose text the server had not yet confirmed",
                    )),
                    Arc::from(Vec::new()),
                ),
            },
        };
        Statement {
            session: self.session,
            statement: subject.id,
            part,
            database: self.database.clone(),
            protocol: Self::protocol_name(subject.protocol),
            text,
            text_bytes: bytes,
            text_sha256: sha256,
            params: subject.params.clone(),
            function_oid: subject.function_oid,
            class,
            class_reason,
            relations,
            verdict,
            masked: Vec::new(),
            tags: subject.tags.clone(),
        }
    }

    fn end(&self, running: &Running, part: u32, outcome: Outcome, tag: Option<&str>, error: Option<&str>) {
        // Completions past the cap belong to the last part (the rest of the string).
        let part = part.min(MAX_PARTS as u32 - 1);
        // EmptyQueryResponse has no command tag.
        let tag = tag.filter(|t| !t.is_empty());
        let tag_rows = tag.and_then(|t| t.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        self.shared.log.record(Event::StatementEnd(Box::new(StatementEnd {
            session: self.session,
            statement: running.resumes.unwrap_or(running.id),
            part,
            outcome,
            rows: running.rows.max(tag_rows),
            command_tag: tag.map(str::to_string),
            duration_us: running.started.elapsed().as_micros() as u64,
            error: error.map(str::to_string),
        })));
    }

    /// Ends every part from `from` on with `outcome` (the rest of a simple-query string).
    fn end_rest(&self, running: &Running, from: u32, outcome: Outcome) {
        let parts = if running.protocol == QueryProtocol::Simple { self.parts(running).len() as u32 } else { 1 };
        for part in from.min(MAX_PARTS as u32 - 1)..parts {
            self.end(running, part, outcome, None, None);
        }
    }
}

impl SessionHooks for SessionAudit {
    /// Statements are recorded as they are forwarded, so every one is seen before it runs.
    fn inspects_statements(&self) -> bool {
        true
    }

    fn before_statement(&self, statement: &StatementInfo<'_>) -> HookVerdict {
        // With audit.required every statement of the message must find room: a string of many
        // statements is measured, not just one slot checked.
        let records = if self.shared.log.required() && statement.protocol == QueryProtocol::Simple {
            let options = LexOptions { standard_conforming_strings: statement.lexing.standard_conforming_strings };
            2 * split_statements_with(statement.sql, options).len().clamp(1, MAX_PARTS) + 2
        } else {
            2
        };
        if !self.shared.log.admits_records(records) {
            let message = "warden: the audit trail is unavailable and audit is required; statement refused".to_string();
            let verdict =
                Verdict { decision: "deny", rule: Some("audit.required".into()), reason: Some(message.clone()) };
            // Refused before it had a number: statement 0.
            let subject = Subject {
                id: 0,
                portal: String::new(),
                protocol: statement.protocol,
                function_oid: statement.function_oid,
                params: None,
                tags: Arc::new(sqlcommenter_tags(statement.sql)),
            };
            let described = match statement.protocol {
                QueryProtocol::FunctionCall => Vec::new(),
                _ => self.shared.describe_parts(statement.sql, statement.lexing, false),
            };
            let record = self.statement(&subject, 0, described.first(), verdict);
            let _ = self.shared.log.try_record(Event::Statement(Box::new(record)));
            return HookVerdict::Deny { sqlstate: sqlstate::INSUFFICIENT_RESOURCES.into(), message };
        }
        let options = LexOptions { standard_conforming_strings: statement.lexing.standard_conforming_strings };
        if statement.sql.len() > DESCRIBE_INLINE_MAX
            && statement.protocol == QueryProtocol::Extended
            && self.shared.descriptions.is_cached(statement.sql, options)
        {
            // A prepared statement executed again: its description is one lookup away.
            return HookVerdict::Allow;
        }
        if statement.sql.len() > DESCRIBE_INLINE_MAX && statement.protocol != QueryProtocol::FunctionCall {
            // Held (the client waits) while a blocking thread describes it: the worker keeps
            // relaying other sessions.
            let shared = self.shared.clone();
            let sql: Arc<str> = Arc::from(statement.sql);
            let slot = self.prepared.clone();
            let lexing = statement.lexing;
            let protocol = statement.protocol;
            return HookVerdict::Hold(Box::pin(async move {
                let text = sql.clone();
                let simple = protocol == QueryProtocol::Simple;
                let parts = tokio::task::spawn_blocking(move || shared.describe_parts(&text, lexing, simple))
                    .await
                    .unwrap_or_default();
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((sql, lexing, Arc::from(parts)));
                HookVerdict::Allow
            }));
        }
        HookVerdict::Allow
    }

    fn on_forward(&self, running: &Running) {
        if running.resumes.is_some() {
            // More rows of a statement already recorded.
            return;
        }
        let parts = self.parts(running);
        let subject = self.subject(running, &parts);
        if parts.is_empty() {
            self.shared.log.record(Event::Statement(Box::new(self.statement(&subject, 0, None, Verdict::allow()))));
        }
        for (i, part) in parts.iter().enumerate() {
            let record = self.statement(&subject, i as u32, Some(part), Verdict::allow());
            self.shared.log.record(Event::Statement(Box::new(record)));
        }
    }

    fn on_complete(&self, running: Option<&Running>, tag: &str) {
        if let Some(r) = running {
            self.end(r, r.completed, Outcome::Completed, Some(tag), None);
        }
    }

    fn on_error(&self, running: Option<&Running>, sqlstate: &str) {
        if let Some(r) = running {
            self.end(r, r.completed, Outcome::Failed, None, Some(sqlstate));
        }
    }

    fn on_suspended(&self, running: &Running) {
        self.end(running, 0, Outcome::Suspended, None, None);
    }

    fn on_query_end(&self, running: &Running) {
        // Statements after a failed one did not run. Without a failure, fewer completions than
        // parts means the server saw other statement boundaries than the splitter (a function
        // body with semicolons): what became of the rest is not known.
        let outcome = if running.failed { Outcome::NotRun } else { Outcome::Unknown };
        self.end_rest(running, running.completed + u32::from(running.failed), outcome);
    }

    fn on_not_run(&self, running: &Running) {
        self.end(running, 0, Outcome::NotRun, None, None);
    }

    fn on_abandoned(&self, running: &Running) {
        // A part that already failed keeps its outcome.
        self.end_rest(running, running.completed + u32::from(running.failed), Outcome::Unknown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_that_read_differently_under_each_setting_are_found() {
        assert!(lexes_both_ways_differently("select 'a\\'; drop table t; --'", true));
        assert!(lexes_both_ways_differently("select 'a\\' -- ' , 'secret'", false), "normalised differently");
        assert!(!lexes_both_ways_differently("select E'a\\'b' from t", true), "E-strings read alike");
        assert!(!lexes_both_ways_differently("select 1; select 2", true));
        let part = ambiguous_part("select 'secret\\'", "why");
        assert!(part.text.text.is_empty() && part.text.sha256.is_some(), "no text of an ambiguous statement");
        assert_eq!(part.described.analysis.class, "unknown");
    }
}
