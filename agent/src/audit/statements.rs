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

use std::{collections::BTreeMap, sync::Arc};

use sha2::{Digest as _, Sha256};

use super::{AuditLog, Event, Outcome, SessionId, Statement, StatementEnd, Verdict};
use crate::{
    config::{AuditConfig, Literals},
    govern::describe::{MAX_PARTS, describe_parts},
    session::{
        Decision, Judgement, Parameters, PartJudgement, QueryProtocol, Running, SqlState,
        hooks::{SessionHooks, StatementInfo, Verdict as HookVerdict},
    },
    sql::{Described, DescriptionCache, split_statements_with, sqlcommenter_tags},
};

/// At most this many bind parameters are recorded, each cut to `MAX_PARAM_BYTES`.
const MAX_PARAMS: usize = 64;
const MAX_PARAM_BYTES: usize = 1024;
/// Relations named beyond this count are not listed, and each name is cut to
/// `MAX_RELATION_BYTES`.
const MAX_RELATIONS: usize = 256;
const MAX_RELATION_BYTES: usize = 256;

/// Audit settings every session shares.
pub struct StatementAuditing {
    pub log: AuditLog,
    pub literals: Literals,
    pub parameters: bool,
    pub max_text_bytes: usize,
    /// The descriptions judgement made (shared with govern): a statement forwarded without a
    /// judgement (the server skips it) is described from here.
    pub descriptions: Arc<DescriptionCache>,
}

impl StatementAuditing {
    pub fn new(log: AuditLog, config: &AuditConfig, descriptions: Arc<DescriptionCache>) -> Self {
        Self {
            log,
            literals: config.literals,
            parameters: config.parameters,
            max_text_bytes: config.max_text_bytes,
            descriptions,
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
        RecordedText { text: Arc::from(&full[..cut]), bytes: full.len(), sha256: Some(sha256_hex(full)) }
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
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

/// The message a statement came in, as its record describes it.
struct Subject<'a> {
    id: u64,
    sql: &'a str,
    /// The portal an Execute runs (for the record of one the proxy does not know).
    portal: String,
    protocol: QueryProtocol,
    function_oid: Option<u32>,
    params: Option<Vec<Option<String>>>,
    /// sqlcommenter tags of the message's trailing comment: they annotate every statement it
    /// carries.
    tags: Arc<BTreeMap<String, String>>,
    /// The role the session acted as when judged.
    role: Option<Arc<str>>,
}

/// One session's statement hooks: they record what govern judged.
pub struct SessionAudit {
    shared: Arc<StatementAuditing>,
    session: SessionId,
    database: Arc<str>,
    /// The relations of the analyses last recorded, as recorded: a session running the same
    /// statements again (prepared, or with other literals) shares them instead of formatting
    /// them per statement. A few, replaced in turn: a transaction runs several statements.
    recent_relations: std::sync::Mutex<RecentRelations>,
}

/// How many analyses' recorded relations a session keeps.
const RECENT_RELATIONS: usize = 8;

/// Analyses with their relations as recorded, and the slot replaced next.
#[derive(Default)]
struct RecentRelations {
    entries: Vec<(Arc<crate::sql::Analysis>, Arc<[String]>)>,
    next: usize,
}

impl RecentRelations {
    /// The relations `analysis` names, as recorded (at most `MAX_RELATIONS`, each cut to
    /// `MAX_RELATION_BYTES` on a character boundary): kept ones shared, others formatted and
    /// kept in place of the oldest.
    fn of(&mut self, analysis: &Arc<crate::sql::Analysis>) -> Arc<[String]> {
        // Each kept analysis is held: its address cannot be another's meanwhile.
        if let Some((_, relations)) = self.entries.iter().find(|(of, _)| Arc::ptr_eq(of, analysis)) {
            return relations.clone();
        }
        let relations: Arc<[String]> = analysis
            .relations
            .iter()
            .take(MAX_RELATIONS)
            .map(|r| {
                let mut r = r.to_string();
                let mut cut = r.len().min(MAX_RELATION_BYTES);
                while !r.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.truncate(cut);
                r
            })
            .collect();
        let entry = (analysis.clone(), relations.clone());
        if self.entries.len() < RECENT_RELATIONS {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % RECENT_RELATIONS;
        }
        relations
    }
}

impl SessionAudit {
    pub fn new(shared: Arc<StatementAuditing>, session: SessionId, database: String) -> Self {
        Self { shared, session, database: Arc::from(database), recent_relations: Default::default() }
    }

    /// The relations an analysis names, as recorded.
    fn relations(&self, analysis: &Arc<crate::sql::Analysis>) -> Arc<[String]> {
        self.recent_relations.lock().unwrap_or_else(|p| p.into_inner()).of(analysis)
    }

    /// What was judged of `running`'s message; for one forwarded unjudged (the server skips
    /// it: an earlier message of its batch was refused), its description, allowed.
    fn judgement(&self, running: &Running) -> Arc<Judgement> {
        if let Some(j) = &running.judgement {
            return j.clone();
        }
        let parts = match running.protocol {
            QueryProtocol::FunctionCall => Vec::new(),
            QueryProtocol::Extended if running.parameters.is_none() => Vec::new(),
            protocol => describe_parts(
                &self.shared.descriptions,
                &running.sql,
                running.lexing,
                protocol == QueryProtocol::Simple,
            ),
        };
        let reason: Arc<str> =
            Arc::from("not judged: the server skips it (an earlier message of its batch was refused)");
        let parts = if parts.is_empty() {
            vec![PartJudgement {
                span: 0..running.sql.len(),
                described: crate::govern::describe::unknown_described(&reason),
                ambiguous: true,
                class: crate::sql::Class::Unknown,
                effects: crate::sql::ClassSet::of(&[crate::sql::Class::Unknown]),
                class_reason: Some(reason.clone()),
                decision: Decision::Allow,
                policy: None,
                rule: None,
                reason,
                approval: None,
                mask: None,
                would: None,
                names: None,
                limit: None,
                raw_reads: None,
            }]
        } else {
            parts
                .into_iter()
                .map(|p| PartJudgement {
                    class: p.described.analysis.class,
                    effects: p.described.analysis.effects,
                    class_reason: p.described.analysis.class_reason.clone(),
                    span: p.span,
                    described: p.described,
                    ambiguous: p.ambiguous,
                    decision: Decision::Allow,
                    policy: None,
                    rule: None,
                    reason: reason.clone(),
                    approval: None,
                    mask: None,
                    would: None,
                    names: None,
                    limit: None,
                    raw_reads: None,
                })
                .collect()
        };
        Arc::new(Judgement { parts, role: None, basis: (0, 0) })
    }

    fn params(&self, parameters: Option<Parameters<'_>>) -> Option<Vec<Option<String>>> {
        if !self.shared.parameters {
            return None;
        }
        parameters.map(|parameters| parameters.rendered(MAX_PARAMS, MAX_PARAM_BYTES))
    }

    /// The subject of a message refused before it was forwarded: it has no statement number (0).
    fn refused_subject<'s>(
        statement: &StatementInfo<'s>,
        params: Option<Vec<Option<String>>>,
        tags: Arc<BTreeMap<String, String>>,
        role: Option<Arc<str>>,
    ) -> Subject<'s> {
        Subject {
            id: 0,
            sql: statement.sql,
            portal: String::new(),
            protocol: statement.protocol,
            function_oid: statement.function_oid,
            params,
            tags,
            role,
        }
    }

    fn protocol_name(protocol: QueryProtocol) -> &'static str {
        protocol.as_str()
    }

    /// sqlcommenter tags of a message: a single statement's come from the description cache.
    fn tags(sql: &str, ascii_safe: bool, judgement: &Judgement) -> Arc<BTreeMap<String, String>> {
        match &judgement.parts[..] {
            // In an encoding that can hide quote bytes a "comment" may be a literal's inside.
            _ if !ascii_safe => Arc::default(),
            [only] => only.described.tags.clone(),
            _ => Arc::new(sqlcommenter_tags(sql)),
        }
    }

    /// The record of one statement (or part of a simple-query string).
    fn statement(&self, subject: &Subject<'_>, part: u32, judged: &PartJudgement, verdict: Verdict) -> Statement {
        let (text, bytes, sha256) = if !judged.ambiguous {
            let raw = subject.sql.get(judged.span.clone()).unwrap_or_default();
            let t = self.shared.recorded_text(raw, &judged.described);
            (t.text, t.bytes, t.sha256)
        } else if !subject.sql.is_empty() {
            // A text whose reading is ambiguous: its length and hash only.
            (Arc::from(""), subject.sql.len(), Some(sha256_hex(subject.sql)))
        } else {
            // A fast-path call has no SQL text: what runs is the function. An Execute of a
            // portal the proxy does not know runs what it never saw.
            let what = match subject.protocol {
                QueryProtocol::FunctionCall => {
                    format!("<fast-path call of function {}>", subject.function_oid.unwrap_or(0))
                }
                _ => format!("<execute of portal \"{}\">", subject.portal),
            };
            (Arc::from(what), 0, None)
        };
        let relations = self.relations(&judged.described.analysis);
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
            class: judged.class.as_str(),
            class_reason: judged.class_reason.clone(),
            relations,
            verdict,
            masked: judged.mask.as_ref().map(|m| m.masked.clone()).unwrap_or_default(),
            tags: subject.tags.clone(),
            role: subject.role.clone(),
            would: judged.would.as_ref().map(|w| super::Would {
                decision: w.decision.as_str(),
                policy: w.policy.clone(),
                rule: w.rule.clone(),
                reason: reason(&w.reason),
                masked: w.mask.as_ref().map(|m| m.masked.clone()).unwrap_or_default(),
                change: judged.would_change(),
            }),
            facts: judged
                .names
                .as_ref()
                .map(|names| super::JudgedFacts { effects: judged.effects.with(judged.class), names: names.clone() }),
            limits: judged
                .limit
                .as_ref()
                .map(|l| {
                    l.limits
                        .iter()
                        .map(|l| super::LimitApplied {
                            policy: l.policy.to_string(),
                            rule: l.rule.to_string(),
                            limit: l.cap.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn end(&self, running: &Running, part: u32, outcome: Outcome, tag: Option<&str>, error: Option<&str>) {
        self.end_with(running, part, outcome, tag, error, None);
    }

    fn end_with(
        &self,
        running: &Running,
        part: u32,
        outcome: Outcome,
        tag: Option<&str>,
        error: Option<&str>,
        stopped: Option<super::Stopped>,
    ) {
        // Completions past the cap belong to the last part (the rest of the string).
        let part = part.min(MAX_PARTS as u32 - 1);
        // EmptyQueryResponse has no command tag.
        let tag = tag.filter(|t| !t.is_empty());
        let tag_rows = tag.and_then(|t| t.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let rows = match &stopped {
            Some(s) => s.rows,
            None => running.rows.max(tag_rows),
        };
        self.shared.log.record(Event::StatementEnd(Box::new(StatementEnd {
            session: self.session,
            statement: running.resumes.unwrap_or(running.id),
            part,
            outcome,
            rows,
            command_tag: tag.map(str::to_string),
            duration_us: running.started.elapsed().as_micros() as u64,
            error: error.map(str::to_string),
            stopped,
        })));
    }

    /// Ends every part from `from` on with `outcome` (the rest of a simple-query string).
    fn end_rest(&self, running: &Running, from: u32, outcome: Outcome) {
        let parts = match (&running.judgement, running.protocol) {
            (Some(j), QueryProtocol::Simple) => j.parts.len() as u32,
            (None, QueryProtocol::Simple) => self.judgement(running).parts.len() as u32,
            _ => 1,
        };
        for part in from..parts {
            self.end(running, part, outcome, None, None);
        }
    }
}

/// Reasons are recorded up to this many bytes (one that names many relations can be long).
const MAX_REASON_BYTES: usize = 1024;

/// A reason as recorded: shared when it fits in `MAX_REASON_BYTES`, else cut there and marked
/// with an ellipsis.
fn reason(text: &Arc<str>) -> Arc<str> {
    if text.len() <= MAX_REASON_BYTES {
        return text.clone();
    }
    let mut cut = MAX_REASON_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Arc::from(format!("{}…", &text[..cut]))
}

/// The record of a verdict.
fn verdict_of(judged: &PartJudgement) -> Verdict {
    Verdict {
        decision: judged.decision.as_str(),
        policy: judged.policy.clone(),
        rule: judged.rule.clone(),
        reason: Some(reason(&judged.reason)),
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
            let options = statement.lexing.options();
            2 * split_statements_with(statement.sql, options).len().clamp(1, MAX_PARTS) + 2
        } else {
            2
        };
        if self.shared.log.admits_records(records) {
            return HookVerdict::Allow(None);
        }
        let message = "warden: the audit trail is unavailable and audit is required; statement refused".to_string();
        let verdict = Verdict {
            decision: Decision::Deny.as_str(),
            policy: None,
            rule: Some("audit.required".into()),
            reason: Some(Arc::from(message.as_str())),
        };
        // Refused before it had a number: statement 0.
        let subject = Self::refused_subject(statement, None, Arc::new(sqlcommenter_tags(statement.sql)), None);
        let first = match statement.protocol {
            QueryProtocol::FunctionCall => None,
            _ => describe_parts(&self.shared.descriptions, statement.sql, statement.lexing, false).into_iter().next(),
        };
        let judged = PartJudgement {
            span: first.as_ref().map_or(0..statement.sql.len(), |p| p.span.clone()),
            class: first.as_ref().map_or(crate::sql::Class::Unknown, |p| p.described.analysis.class),
            effects: first
                .as_ref()
                .map_or(crate::sql::ClassSet::of(&[crate::sql::Class::Unknown]), |p| p.described.analysis.effects),
            class_reason: first.as_ref().and_then(|p| p.described.analysis.class_reason.clone()),
            ambiguous: first.as_ref().is_none_or(|p| p.ambiguous),
            described: first
                .map_or_else(|| crate::govern::describe::unknown_described("fast-path call"), |p| p.described),
            decision: Decision::Deny,
            policy: None,
            rule: None,
            reason: Arc::from(message.as_str()),
            approval: None,
            mask: None,
            would: None,
            names: None,
            limit: None,
            raw_reads: None,
        };
        let record = self.statement(&subject, 0, &judged, verdict);
        let _ = self.shared.log.try_record(Event::Statement(Box::new(record)));
        HookVerdict::Deny { sqlstate: SqlState::INSUFFICIENT_RESOURCES, message }
    }

    fn on_refused(&self, statement: &StatementInfo<'_>, judgement: &Judgement) {
        // Refused before it had a number: statement 0. Every statement of the message is
        // recorded; those policy allowed did not run either.
        let subject = Self::refused_subject(
            statement,
            self.params(statement.parameters),
            Self::tags(statement.sql, statement.lexing.ascii_safe, judgement),
            judgement.role.clone(),
        );
        let refusing = judgement.refusing_part();
        for (i, judged) in judgement.parts.iter().enumerate() {
            let verdict = match (judged.decision, refusing) {
                (Decision::Allow, Some((k, by))) => Verdict {
                    decision: by.decision.as_str(),
                    policy: by.policy.clone(),
                    rule: by.rule.clone(),
                    reason: Some(Arc::from(format!("not run: statement {} of the same message was refused", k + 1))),
                },
                _ => verdict_of(judged),
            };
            let record = self.statement(&subject, i as u32, judged, verdict);
            self.shared.log.record(Event::Statement(Box::new(record)));
        }
    }

    fn on_forward(&self, running: &Running) {
        if running.resumes.is_some() {
            // More rows of a statement already recorded.
            return;
        }
        let judgement = self.judgement(running);
        let subject = Subject {
            id: running.id,
            sql: &running.sql,
            portal: String::from_utf8_lossy(running.portal_name()).chars().take(64).collect(),
            protocol: running.protocol,
            function_oid: running.function_oid,
            params: self.params(running.parameters()),
            tags: Self::tags(&running.sql, running.lexing.ascii_safe, &judgement),
            role: judgement.role.clone(),
        };
        for (i, judged) in judgement.parts.iter().enumerate() {
            let record = self.statement(&subject, i as u32, judged, verdict_of(judged));
            self.shared.log.record(Event::Statement(Box::new(record)));
        }
    }

    fn on_complete(&self, running: Option<&Running>, tag: &str) {
        if let Some(r) = running {
            self.end(r, r.completed, Outcome::Completed, Some(tag), None);
        }
    }

    fn on_error(&self, running: Option<&Running>, sqlstate: SqlState) {
        if let Some(r) = running {
            self.end(r, r.completed, Outcome::Failed, None, Some(sqlstate.as_str()));
        }
    }

    fn on_suspended(&self, running: &Running) {
        self.end(running, 0, Outcome::Suspended, None, None);
    }

    fn on_stopped(&self, running: &Running, cut: &crate::session::hooks::Cut) {
        let stopped = super::Stopped {
            policy: cut.policy.to_string(),
            rule: cut.rule.to_string(),
            rows: cut.rows,
            bytes: cut.bytes,
            reason: cut.message.clone(),
        };
        self.end_with(running, running.completed, Outcome::Stopped, None, Some(cut.sqlstate.as_str()), Some(stopped));
    }

    fn on_query_end(&self, running: &Running) {
        // Statements after a failed one did not run. Without a failure, fewer completions than
        // parts means the server saw other statement boundaries than the splitter (a function
        // body with semicolons): what became of the rest is not known.
        let outcome = if running.failed { Outcome::NotRun } else { Outcome::Unknown };
        self.end_rest(running, running.completed + u32::from(running.failed), outcome);
    }

    fn on_not_run(&self, running: &Running) {
        self.end_rest(running, 0, Outcome::NotRun);
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
    fn verdicts_name_their_policy_and_rule() {
        let judged = PartJudgement {
            span: 0..0,
            described: crate::govern::describe::unknown_described("why"),
            ambiguous: true,
            class: crate::sql::Class::Unknown,
            effects: crate::sql::ClassSet::of(&[crate::sql::Class::Unknown]),
            class_reason: None,
            decision: Decision::Deny,
            policy: Some(Arc::from("baseline")),
            rule: Some(Arc::from("no-unknown")),
            reason: Arc::from("class unknown"),
            approval: None,
            mask: None,
            would: None,
            names: None,
            limit: None,
            raw_reads: None,
        };
        let v = verdict_of(&judged);
        assert_eq!(
            (v.decision, v.policy.as_deref(), v.rule.as_deref()),
            ("deny", Some("baseline"), Some("no-unknown"))
        );
    }

    #[test]
    fn recorded_relations_are_each_statements_own_however_statements_alternate() {
        let cache = DescriptionCache::new(64);
        let texts: Vec<String> =
            (0..2 * RECENT_RELATIONS).map(|i| format!("select * from s.t{i} join u{i} using (id)")).collect();
        let analyses: Vec<_> = texts.iter().map(|t| cache.describe(t).analysis).collect();
        let mut recent = RecentRelations::default();
        // Three passes over more statements than are kept.
        for pass in 0..3 {
            for (i, analysis) in analyses.iter().enumerate() {
                let want = [format!("s.t{i}"), format!("u{i}")];
                assert_eq!(&*recent.of(analysis), want.as_slice(), "pass {pass}, statement {i}");
            }
            let first = recent.of(&analyses[0]);
            assert!(Arc::ptr_eq(&first, &recent.of(&analyses[0])), "a kept analysis is shared");
        }
    }
}
