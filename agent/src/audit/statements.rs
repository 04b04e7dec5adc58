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
        state::{QueryProtocol, Running},
    },
    sql::{Described, DescriptionCache, LexOptions, split_statements_with, sqlcommenter_tags},
};

/// Statements longer than this are described on the blocking pool, not on the proxy worker that
/// relays other sessions' traffic (normalising and hashing are linear, but 256 MiB is long).
const DESCRIBE_INLINE_MAX: usize = 256 * 1024;
/// At most this many bind parameters are recorded, each cut to `MAX_PARAM_BYTES`.
const MAX_PARAMS: usize = 64;
const MAX_PARAM_BYTES: usize = 1024;
/// Relations named beyond this count are not listed (the record says how many there were).
const MAX_RELATIONS: usize = 256;

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
            return RecordedText { text: Arc::from(full), bytes: full.len(), sha256: None };
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
    fn describe_parts(&self, sql: &str, options: LexOptions, simple: bool) -> Vec<Part> {
        let parts = if simple { split_statements_with(sql, options) } else { vec![sql] };
        let parts = if parts.is_empty() { vec![sql] } else { parts };
        parts
            .into_iter()
            .map(|part| {
                let described = self.descriptions.describe_with(part, options);
                Part { text: self.recorded_text(part, &described), described }
            })
            .collect()
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

/// A statement described ahead of its forwarding (text, lexing options, parts).
type Prepared = (Arc<str>, bool, Arc<[Part]>);

/// One statement of a forwarded message, described.
#[derive(Debug, Clone)]
struct Part {
    text: RecordedText,
    described: Described,
}

/// The message a statement came in, as its record describes it.
struct Subject {
    id: u64,
    protocol: QueryProtocol,
    function_oid: Option<u32>,
    params: Option<Vec<Option<String>>>,
    /// sqlcommenter tags of the message's trailing comment: they annotate every statement it
    /// carries.
    tags: BTreeMap<String, String>,
}

/// One session's statement hooks.
pub struct SessionAudit {
    shared: Arc<StatementAuditing>,
    session: SessionId,
    database: Arc<str>,
    /// The parts of the statement being answered (keyed by its id): described once when it is
    /// forwarded, not again per completion (a 10,000-statement string is split once).
    current: Mutex<Option<(u64, Arc<[Part]>)>>,
    /// A long statement described on the blocking pool while it was held, for `on_forward`.
    prepared: Arc<Mutex<Option<Prepared>>>,
}

impl SessionAudit {
    pub fn new(shared: Arc<StatementAuditing>, session: SessionId, database: String) -> Self {
        Self {
            shared,
            session,
            database: Arc::from(database),
            current: Mutex::new(None),
            prepared: Arc::new(Mutex::new(None)),
        }
    }

    fn options(running: &Running) -> LexOptions {
        LexOptions { standard_conforming_strings: running.standard_conforming_strings }
    }

    /// The parts of `running`'s statement (described now if it was not at forward).
    fn parts(&self, running: &Running) -> Arc<[Part]> {
        let id = running.resumes.unwrap_or(running.id);
        if let Some((current, parts)) = &*self.current.lock().unwrap_or_else(|p| p.into_inner())
            && *current == id
        {
            return parts.clone();
        }
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_if(|(sql, scs, _)| *scs == running.standard_conforming_strings && **sql == *running.sql)
            .map(|(_, _, parts)| parts);
        let parts = prepared.unwrap_or_else(|| match running.protocol {
            QueryProtocol::FunctionCall => Arc::from(Vec::new()),
            protocol => Arc::from(self.shared.describe_parts(
                &running.sql,
                Self::options(running),
                protocol == QueryProtocol::Simple,
            )),
        });
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, parts.clone()));
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
    fn subject(&self, running: &Running) -> Subject {
        Subject {
            id: running.id,
            protocol: running.protocol,
            function_oid: running.function_oid,
            params: self.params(running),
            tags: sqlcommenter_tags(&running.sql),
        }
    }

    /// The record of one forwarded statement (or part of a simple-query string).
    fn statement(&self, subject: &Subject, part: u32, described: Option<&Part>, verdict: Verdict) -> Statement {
        let (text, bytes, sha256, class, class_reason, relations) = match described {
            Some(p) => {
                let a = &p.described.analysis;
                let relations: Arc<[String]> = if a.relations.len() > MAX_RELATIONS {
                    Arc::from(&a.relations[..MAX_RELATIONS])
                } else {
                    a.relations.clone()
                };
                (p.text.text.clone(), p.text.bytes, p.text.sha256.clone(), a.class, a.class_reason.clone(), relations)
            }
            // A fast-path function call has no SQL text: what runs is the function.
            None => (
                Arc::from(format!("<fast-path call of function {}>", subject.function_oid.unwrap_or(0))),
                0,
                None,
                "unknown",
                Some(Arc::from("fast-path function call: any function, run without SQL")),
                Arc::from(Vec::new()),
            ),
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
        for part in from..parts.max(from + u32::from(running.protocol != QueryProtocol::Simple)) {
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
        if !self.shared.log.admits_statements() {
            let message = "warden: the audit trail is unavailable and audit is required; statement refused".to_string();
            let verdict =
                Verdict { decision: "deny", rule: Some("audit.required".into()), reason: Some(message.clone()) };
            // Refused before it had a number: statement 0.
            let subject = Subject {
                id: 0,
                protocol: statement.protocol,
                function_oid: statement.function_oid,
                params: None,
                tags: sqlcommenter_tags(statement.sql),
            };
            let described = match statement.protocol {
                QueryProtocol::FunctionCall => Vec::new(),
                _ => self.shared.describe_parts(
                    statement.sql,
                    LexOptions { standard_conforming_strings: statement.standard_conforming_strings },
                    false,
                ),
            };
            let record = self.statement(&subject, 0, described.first(), verdict);
            let _ = self.shared.log.try_record(Event::Statement(Box::new(record)));
            return HookVerdict::Deny { sqlstate: sqlstate::INSUFFICIENT_RESOURCES.into(), message };
        }
        if statement.sql.len() > DESCRIBE_INLINE_MAX && statement.protocol != QueryProtocol::FunctionCall {
            // Held (the client waits) while a blocking thread describes it: the worker keeps
            // relaying other sessions.
            let shared = self.shared.clone();
            let sql: Arc<str> = Arc::from(statement.sql);
            let slot = self.prepared.clone();
            let scs = statement.standard_conforming_strings;
            let protocol = statement.protocol;
            return HookVerdict::Hold(Box::pin(async move {
                let text = sql.clone();
                let options = LexOptions { standard_conforming_strings: scs };
                let simple = protocol == QueryProtocol::Simple;
                let parts = tokio::task::spawn_blocking(move || shared.describe_parts(&text, options, simple))
                    .await
                    .unwrap_or_default();
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((sql, scs, Arc::from(parts)));
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
        if running.protocol == QueryProtocol::Extended && running.bind().is_none() {
            // An Execute of a portal the session never created (or one whose Bind was refused):
            // the server runs nothing.
            return;
        }
        let parts = self.parts(running);
        let subject = self.subject(running);
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
        // Statements after a failed one (or never reached) did not run.
        self.end_rest(running, running.completed + u32::from(running.failed), Outcome::NotRun);
    }

    fn on_not_run(&self, running: &Running) {
        if running.bind().is_some() {
            self.end(running, 0, Outcome::NotRun, None, None);
        }
    }

    fn on_abandoned(&self, running: &Running) {
        if running.protocol == QueryProtocol::Extended && running.bind().is_none() {
            return;
        }
        self.end_rest(running, running.completed, Outcome::Unknown);
    }
}
