//! Statement records: the session hooks that turn what the protocol state machine saw into
//! audit records (text, parameters per config, class, relations, verdict, rows, duration,
//! SQLSTATE, sqlcommenter tags).

use std::sync::Arc;

use super::{AuditLog, Event, SessionId, Statement, Verdict};
use crate::{
    config::{AuditConfig, Literals},
    pg::error::sqlstate,
    proxy::postgres::{
        hooks::{SessionHooks, StatementInfo, Verdict as HookVerdict},
        state::{QueryProtocol, Running},
    },
    sql::{DescriptionCache, split_statements, sqlcommenter_tags},
};

/// Audit settings every session shares.
pub struct StatementAuditing {
    pub log: AuditLog,
    pub literals: Literals,
    pub parameters: bool,
    pub descriptions: DescriptionCache,
}

impl StatementAuditing {
    pub fn new(log: AuditLog, config: &AuditConfig) -> Self {
        Self {
            log,
            literals: config.literals,
            parameters: config.parameters,
            descriptions: DescriptionCache::new(4096),
        }
    }
}

/// One session's statement hooks.
pub struct SessionAudit {
    shared: Arc<StatementAuditing>,
    session: SessionId,
    database: Arc<str>,
    /// The statement boundaries of the simple-query string being answered: split once per
    /// string, not once per statement (a 10,000-statement string would otherwise be rescanned
    /// 10,000 times).
    split: std::sync::Mutex<Option<SplitString>>,
}

/// A simple-query string and the byte ranges of its statements.
type SplitString = (Arc<str>, Vec<std::ops::Range<usize>>);

impl SessionAudit {
    pub fn new(shared: Arc<StatementAuditing>, session: SessionId, database: String) -> Self {
        Self { shared, session, database: Arc::from(database), split: std::sync::Mutex::new(None) }
    }

    fn record(
        &self,
        running: Option<&Running>,
        tag: Option<&str>,
        error: Option<&str>,
        verdict: Verdict,
        full: &str,
        protocol: QueryProtocol,
    ) {
        // A simple query string holding several statements: this record is for the current one.
        let sql = match (protocol, running) {
            (QueryProtocol::Simple, Some(r)) if full.contains(';') => self.nth_statement(&r.sql, r.completed as usize),
            _ => full,
        };
        let described = self.shared.descriptions.describe(sql);
        let analysis = &described.analysis;
        let text = match self.shared.literals {
            Literals::Keep => Arc::from(sql),
            Literals::Normalise => described.normalised.clone(),
        };
        let params = if self.shared.parameters {
            running.and_then(|r| r.bind()).map(|bind| {
                bind.params()
                    .map(|(value, binary)| {
                        value.map(|v| {
                            if binary {
                                format!("\\x{}", v.iter().map(|b| format!("{b:02x}")).collect::<String>())
                            } else {
                                String::from_utf8_lossy(v).into_owned()
                            }
                        })
                    })
                    .collect()
            })
        } else {
            None
        };
        let tag_rows = tag.and_then(|t| t.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let statement = Statement {
            session: self.session,
            database: self.database.clone(),
            protocol: match protocol {
                QueryProtocol::Simple => "simple",
                QueryProtocol::Extended => "extended",
                QueryProtocol::FunctionCall => "function_call",
            },
            text,
            params,
            class: analysis.class,
            class_reason: analysis.class_reason.clone(),
            relations: analysis.relations.clone(),
            verdict,
            masked: Vec::new(),
            rows: running.map_or(0, |r| r.rows).max(tag_rows),
            command_tag: tag.map(str::to_string),
            duration_us: running.map_or(0, |r| r.started.elapsed().as_micros() as u64),
            error: error.map(str::to_string),
            tags: sqlcommenter_tags(full),
        };
        self.shared.log.record(Event::Statement(Box::new(statement)));
    }
}

impl SessionAudit {
    /// Statement `n` of a simple-query string (the whole string if it holds only one).
    fn nth_statement<'a>(&self, full: &'a Arc<str>, n: usize) -> &'a str {
        let mut split = self.split.lock().unwrap_or_else(|p| p.into_inner());
        let ranges = match &*split {
            Some((text, ranges)) if Arc::ptr_eq(text, full) => ranges,
            _ => {
                let base = full.as_ptr() as usize;
                let ranges = split_statements(full)
                    .into_iter()
                    .map(|part| {
                        let start = part.as_ptr() as usize - base;
                        start..start + part.len()
                    })
                    .collect();
                &split.insert((full.clone(), ranges)).1
            }
        };
        match ranges.get(n) {
            Some(range) if ranges.len() > 1 => &full[range.clone()],
            _ => full,
        }
    }
}

impl SessionHooks for SessionAudit {
    /// Only `audit.required` needs to see statements before they run (to refuse them while the
    /// trail is down); recording happens on completion, so the relay keeps its fast path.
    fn inspects_statements(&self) -> bool {
        self.shared.log.required()
    }

    fn before_statement(&self, statement: &StatementInfo<'_>) -> HookVerdict {
        if self.shared.log.admits_statements() {
            return HookVerdict::Allow;
        }
        let message = "warden: the audit trail is unavailable and audit is required; statement refused".to_string();
        let verdict = Verdict { decision: "deny", rule: Some("audit.required".into()), reason: Some(message.clone()) };
        self.record(None, None, Some("53000"), verdict, statement.sql, statement.protocol);
        HookVerdict::Deny { sqlstate: sqlstate::INSUFFICIENT_RESOURCES.into(), message }
    }

    fn on_complete(&self, running: Option<&Running>, tag: &str) {
        if let Some(r) = running {
            self.record(Some(r), Some(tag), None, Verdict::allow(), &r.sql, r.protocol);
        }
    }

    fn on_error(&self, running: Option<&Running>, sqlstate: &str) {
        if let Some(r) = running {
            self.record(Some(r), None, Some(sqlstate), Verdict::allow(), &r.sql, r.protocol);
        }
    }
}
