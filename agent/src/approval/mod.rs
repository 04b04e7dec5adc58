//! Approvals: a statement whose verdict is `require_approval` is held inside its own session
//! (the client simply waits) while a request waits here for an approver's decision, the
//! policy's timeout, the client's departure or the agent's stop, whichever comes first.
//!
//! The registry is the only place a hold is decided: `decide`, `expire`, `cancel` and
//! `refuse_all` each remove the request under one lock, so exactly one of them wins, and the
//! session is told through a one-shot channel. Requests live only in this agent's memory: a held
//! statement is never run by a later agent (a stopping agent refuses every hold first). Every
//! step is recorded in the audit ring, and each new request is announced to `watch`ers and to
//! the policy's webhook (queued, never waited for).
//!
//! An approval with `grant: <duration>` also lets through, until it expires, statements of the
//! same identity, database and role with the same fingerprint (the SHA-256 of the normalised
//! text: literals and parameters may differ).

pub mod webhook;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::{
    audit::{AuditLog, Event, SessionId, now_ms},
    identity::Identity,
    policy::{ApprovalTerms, Grant},
};
use webhook::{WebhookUrl, Webhooks};

/// Grants remembered at most (the oldest to expire is dropped beyond it).
const MAX_GRANTS: usize = 10_000;
/// Requests held at once, host-wide: beyond it a statement that needs approval is refused at
/// once (an adversary cannot grow the agent's memory by holding statements).
pub const MAX_PENDING: usize = 10_000;
/// Requests one identity may have held at once: one workload cannot flood the approvers or
/// take every place.
pub const MAX_PENDING_PER_IDENTITY: usize = 100;
/// The normalised statement a request shows (lists, records, webhooks) is cut to this; its
/// full length and hash are kept.
pub const MAX_STATEMENT_SHOWN: usize = 4096;

/// Who decided: the admin API's peer, from its socket credentials and /proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approver {
    pub uid: u32,
    pub user: Option<String>,
    pub pid: Option<u32>,
    pub exe: Option<String>,
}

impl std::fmt::Display for Approver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(user) => write!(f, "{user} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Approved {
        by: Approver,
        reason: Option<String>,
        /// When the approval also lets the same statement through (`grant: <duration>`).
        grant_until_ms: Option<u64>,
    },
    Denied {
        by: Approver,
        reason: Option<String>,
    },
    /// Nobody decided within the policy's timeout.
    TimedOut {
        after_s: u64,
    },
    /// The session went away while held (the client disconnected, or an operator ended it).
    Cancelled {
        why: String,
    },
    /// The agent refused it without an approver (it is stopping).
    Refused {
        why: String,
    },
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Approved { .. } => "approved",
            Outcome::Denied { .. } => "denied",
            Outcome::TimedOut { .. } => "timed_out",
            Outcome::Cancelled { .. } => "cancelled",
            Outcome::Refused { .. } => "refused",
        }
    }

    /// What the refused client is told (42501), naming who or what decided.
    pub fn refusal(&self, id: &str) -> Option<String> {
        let because = |reason: &Option<String>| reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        Some(match self {
            Outcome::Approved { .. } => return None,
            Outcome::Denied { by, reason } => {
                format!("warden: statement denied by approver {by}{} (approval request {id})", because(reason))
            }
            Outcome::TimedOut { after_s } => format!(
                "warden: statement refused: no approver decided within {} (approval request {id})",
                crate::policy::format_duration(Duration::from_secs(*after_s))
            ),
            Outcome::Cancelled { why } | Outcome::Refused { why } => {
                format!("warden: statement refused: {why} (approval request {id})")
            }
        })
    }
}

/// What a held statement's session knows when it asks: everything a request shows.
pub struct Draft {
    pub session: SessionId,
    pub identity: Arc<Identity>,
    pub database: Arc<str>,
    /// The role the session acts as, when known.
    pub role: Option<Arc<str>>,
    /// Normalised (literals as `?`): what everybody sees (cut for showing).
    pub statement: String,
    /// What the grant fingerprint hashes: the statement as analysis reads it (literals that
    /// decide what it does kept) with how it was judged.
    pub fingerprinted: String,
    /// The text as sent and its bind parameters: shown to approvers only, never announced.
    pub text: String,
    pub params: Option<Params>,
    pub function_oid: Option<u32>,
    pub protocol: &'static str,
    pub asked: Asked,
    pub terms: Arc<ApprovalTerms>,
    /// Why an approval of it grants nothing beyond it, whatever the terms say.
    pub once_because: Option<String>,
}

/// What the analysis and the policy said of a held statement: its class, the relations it
/// names, and the policies and rules that asked for approval, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Asked {
    pub class: String,
    pub class_reason: Option<String>,
    pub relations: Vec<String>,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub reason: String,
}

/// A held statement's bind parameters as the approver sees them.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// At most 64, each at most 1 KiB (`None`: NULL).
    pub shown: Vec<Option<String>>,
    /// How many there are.
    pub count: usize,
    /// Some were not shown, or shown cut: the approver did not see everything that runs.
    pub cut: bool,
    /// SHA-256 of the whole parameter message, to compare with what ran.
    pub sha256: String,
}

/// A held statement's request, as the admin API lists it (no full text).
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: String,
    pub session: SessionId,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub database: String,
    pub role: Option<String>,
    pub identity: Arc<Identity>,
    /// Cut to `MAX_STATEMENT_SHOWN` (then `statement_bytes` is larger and `statement_sha256`
    /// hashes the whole).
    pub statement: String,
    pub statement_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement_sha256: Option<String>,
    pub fingerprint: String,
    pub protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_oid: Option<u32>,
    #[serde(flatten)]
    pub asked: Asked,
    pub timeout_s: u64,
    pub grant: String,
    #[serde(skip)]
    pub text: String,
    #[serde(skip)]
    pub params: Option<Params>,
    #[serde(skip)]
    grant_key: GrantKey,
    /// Whose share of the pending places it takes (`Identity::tenant_key`).
    #[serde(skip)]
    tenant: String,
    #[serde(skip)]
    grant_for: Option<Duration>,
    #[serde(skip)]
    webhook: Option<Arc<str>>,
}

impl Request {
    /// The request with what only approvers see: the text as sent and its parameters.
    pub fn detail(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["text"] = serde_json::Value::from(self.text.clone());
        v["params"] = serde_json::to_value(&self.params).unwrap_or_default();
        v
    }
}

/// What `watch` followers see.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notice {
    Requested {
        request: Arc<Request>,
    },
    Decided {
        id: String,
        session: SessionId,
        at_ms: u64,
        #[serde(flatten)]
        outcome: Outcome,
    },
}

/// Same identity, database, role and statement shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct GrantKey {
    identity: String,
    database: String,
    role: Option<String>,
    fingerprint: String,
}

struct Pending {
    request: Arc<Request>,
    tx: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Inner {
    pending: BTreeMap<String, Pending>,
    grants: HashMap<GrantKey, (Instant, String)>,
    /// Pending requests per tenant.
    per_tenant: HashMap<String, usize>,
    stopping: bool,
}

/// Why a statement cannot be held.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("the agent is stopping")]
    Stopping,
    #[error("{MAX_PENDING} statements are already held on this host")]
    Full,
    #[error("this identity already has {MAX_PENDING_PER_IDENTITY} statements held")]
    IdentityFull,
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("no pending approval request {0} (decided, timed out, cancelled, or never made)")]
    NotPending(String),
}

/// The host's approval requests and grants.
pub struct Approvals {
    inner: Mutex<Inner>,
    audit: AuditLog,
    webhooks: Webhooks,
    notices: broadcast::Sender<Notice>,
    ids: AtomicU64,
    id_base: u64,
    /// Holds whose session has not yet taken its outcome (the stop waits for them briefly).
    outstanding: Arc<AtomicU64>,
}

/// A held statement's side: its request, and the decision when it comes. Dropping it before the
/// decision (the session ended) cancels the request.
pub struct Held {
    pub request: Arc<Request>,
    rx: Option<oneshot::Receiver<Outcome>>,
    approvals: Arc<Approvals>,
    outstanding: Arc<AtomicU64>,
}

impl Held {
    /// Waits for the decision, or the request's timeout.
    pub async fn decision(mut self) -> Outcome {
        let timeout = Duration::from_secs(self.request.timeout_s);
        let outcome = match self.rx.as_mut() {
            None => Outcome::Refused { why: "the request was already decided".into() },
            Some(rx) => match tokio::time::timeout(timeout, &mut *rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Outcome::Refused { why: "the approval registry went away".into() },
                Err(_) => {
                    let outcome = Outcome::TimedOut { after_s: self.request.timeout_s };
                    if self.approvals.finish(&self.request.id, outcome.clone()) {
                        outcome
                    } else {
                        // Decided in the same instant: that decision stands (it is on its way).
                        (&mut *rx).await.unwrap_or(outcome)
                    }
                }
            },
        };
        // Decided: nothing left to cancel when this is dropped.
        if self.rx.take().is_some() {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        outcome
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
            self.approvals.finish(&self.request.id, Outcome::Cancelled { why: "the session ended while held".into() });
        }
    }
}

/// The fingerprint of a normalised statement: hex SHA-256, first 16 bytes.
pub fn fingerprint(normalised: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(normalised.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whose approvals a grant covers: the workload's labels (its identity), else its tenant key.
fn identity_key(identity: &Identity) -> String {
    if identity.labels.is_empty() {
        identity.tenant_key()
    } else {
        identity.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

impl Approvals {
    pub fn new(audit: AuditLog, webhooks: Webhooks) -> Arc<Self> {
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            audit,
            webhooks,
            notices: broadcast::channel(256).0,
            ids: AtomicU64::new(1),
            id_base: (start & 0xff_ffff) << 16,
            outstanding: Arc::new(AtomicU64::new(0)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The webhook deliveries' counters.
    pub fn webhook_stats(&self) -> webhook::WebhookStats {
        self.webhooks.stats()
    }

    /// Whether an unexpired grant lets this statement through without asking (`fingerprinted`
    /// as in `Draft`): the request id that granted it.
    pub fn granted(
        &self,
        identity: &Identity,
        database: &str,
        role: Option<&str>,
        fingerprinted: &str,
    ) -> Option<String> {
        let key = GrantKey {
            identity: identity_key(identity),
            database: database.to_string(),
            role: role.map(str::to_string),
            fingerprint: fingerprint(fingerprinted),
        };
        let mut inner = self.lock();
        match inner.grants.get(&key) {
            Some((until, id)) if *until > Instant::now() => Some(id.clone()),
            Some(_) => {
                inner.grants.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Creates a request for a held statement, records and announces it.
    pub fn hold(self: &Arc<Self>, draft: Draft) -> Result<Held, HoldError> {
        let now = now_ms();
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}", self.id_base.wrapping_add(n));
        let fingerprint = fingerprint(&draft.fingerprinted);
        let statement_bytes = draft.statement.len();
        let (statement, statement_sha256) = if statement_bytes > MAX_STATEMENT_SHOWN {
            let mut cut = MAX_STATEMENT_SHOWN;
            while !draft.statement.is_char_boundary(cut) {
                cut -= 1;
            }
            let whole = {
                use sha2::{Digest as _, Sha256};
                Sha256::digest(draft.statement.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
            };
            (format!("{}…", &draft.statement[..cut]), Some(whole))
        } else {
            (draft.statement, None)
        };
        let grant = match (&draft.once_because, draft.terms.grant) {
            (Some(why), Grant::For(_)) => format!("once ({why})"),
            (_, grant) => grant.to_string(),
        };
        let grant_key = GrantKey {
            identity: identity_key(&draft.identity),
            database: draft.database.to_string(),
            role: draft.role.as_deref().map(str::to_string),
            fingerprint: fingerprint.clone(),
        };
        let tenant = draft.identity.tenant_key();
        let request = Arc::new(Request {
            tenant,
            id: id.clone(),
            session: draft.session,
            created_ms: now,
            expires_ms: now + draft.terms.timeout.as_millis() as u64,
            database: draft.database.to_string(),
            role: draft.role.as_deref().map(str::to_string),
            identity: draft.identity,
            statement,
            statement_bytes,
            statement_sha256,
            fingerprint,
            protocol: draft.protocol,
            function_oid: draft.function_oid,
            asked: draft.asked,
            timeout_s: draft.terms.timeout.as_secs(),
            grant,
            text: draft.text,
            params: draft.params,
            grant_key,
            grant_for: match (draft.terms.grant, &draft.once_because) {
                (Grant::For(d), None) => Some(d),
                _ => None,
            },
            webhook: draft.terms.webhook.clone(),
        });
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.lock();
            if inner.stopping {
                return Err(HoldError::Stopping);
            }
            if inner.pending.len() >= MAX_PENDING {
                return Err(HoldError::Full);
            }
            // Counted by tenant (its `warden/identity` label, else container, else uid), as
            // connection limits are: a label set per run does not make a new tenant.
            let held = inner.per_tenant.entry(request.tenant.clone()).or_default();
            if *held >= MAX_PENDING_PER_IDENTITY {
                return Err(HoldError::IdentityFull);
            }
            *held += 1;
            inner.pending.insert(id.clone(), Pending { request: request.clone(), tx });
            self.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        self.audit.record(Event::ApprovalRequested(Box::new(request.clone())));
        let _ = self.notices.send(Notice::Requested { request: request.clone() });
        if let Some(url) = &request.webhook {
            match WebhookUrl::parse(url) {
                Ok(url) => {
                    let body = announcement(&request);
                    self.webhooks.announce(&url, body.into());
                }
                Err(e) => tracing::warn!(request = %request.id, error = %e, "approval webhook url unusable"),
            }
        }
        Ok(Held { request, rx: Some(rx), approvals: self.clone(), outstanding: self.outstanding.clone() })
    }

    /// Ends a pending request with `outcome`: false when it is no longer pending.
    fn finish(&self, id: &str, outcome: Outcome) -> bool {
        let pending = {
            let mut inner = self.lock();
            let Some(pending) = inner.pending.remove(id) else {
                return false;
            };
            if let Some(held) = inner.per_tenant.get_mut(&pending.request.tenant) {
                *held -= 1;
                if *held == 0 {
                    inner.per_tenant.remove(&pending.request.tenant);
                }
            }
            if let Outcome::Approved { grant_until_ms: Some(_), .. } = &outcome
                && let Some(d) = pending.request.grant_for
            {
                let now = Instant::now();
                if inner.grants.len() >= MAX_GRANTS {
                    inner.grants.retain(|_, (until, _)| *until > now);
                }
                if inner.grants.len() < MAX_GRANTS {
                    inner.grants.insert(pending.request.grant_key.clone(), (now + d, id.to_string()));
                }
            }
            pending
        };
        let request = &pending.request;
        self.audit.record(Event::ApprovalDecided {
            session: request.session,
            request: request.id.clone(),
            database: request.database.clone(),
            statement: request.statement.clone(),
            fingerprint: request.fingerprint.clone(),
            outcome: outcome.clone(),
        });
        let _ = self.notices.send(Notice::Decided {
            id: request.id.clone(),
            session: request.session,
            at_ms: now_ms(),
            outcome: outcome.clone(),
        });
        let _ = pending.tx.send(outcome);
        true
    }

    /// An approver's decision.
    pub fn decide(
        &self,
        id: &str,
        by: Approver,
        approve: bool,
        reason: Option<String>,
    ) -> Result<Outcome, DecideError> {
        let grant_for = self.lock().pending.get(id).map(|p| p.request.grant_for);
        let Some(grant_for) = grant_for else {
            return Err(DecideError::NotPending(id.to_string()));
        };
        let outcome = if approve {
            Outcome::Approved { by, reason, grant_until_ms: grant_for.map(|d| now_ms() + d.as_millis() as u64) }
        } else {
            Outcome::Denied { by, reason }
        };
        if self.finish(id, outcome.clone()) { Ok(outcome) } else { Err(DecideError::NotPending(id.to_string())) }
    }

    /// The pending requests, oldest first.
    pub fn pending(&self) -> Vec<Arc<Request>> {
        let mut list: Vec<Arc<Request>> = self.lock().pending.values().map(|p| p.request.clone()).collect();
        list.sort_by_key(|r| (r.created_ms, r.id.clone()));
        list
    }

    pub fn get(&self, id: &str) -> Option<Arc<Request>> {
        self.lock().pending.get(id).map(|p| p.request.clone())
    }

    /// A client's CancelRequest for a session: its held statement, if any, is cancelled (refused,
    /// never run later). Returns whether one was.
    pub fn cancel_session(&self, session: SessionId) -> bool {
        let ids: Vec<String> = self
            .lock()
            .pending
            .values()
            .filter(|p| p.request.session == session)
            .map(|p| p.request.id.clone())
            .collect();
        ids.iter()
            .filter(|id| self.finish(id, Outcome::Cancelled { why: "the client cancelled the held statement".into() }))
            .count()
            > 0
    }

    /// Follows new requests and decisions.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// The agent is stopping: every pending request is refused (never run by a later agent),
    /// and no new one is made. Returns how many were refused.
    pub fn refuse_all(&self, why: &str) -> usize {
        let ids: Vec<String> = {
            let mut inner = self.lock();
            inner.stopping = true;
            inner.pending.keys().cloned().collect()
        };
        ids.iter().filter(|id| self.finish(id, Outcome::Refused { why: why.to_string() })).count()
    }

    /// Waits (at most `limit`) until every refused hold's session took its outcome.
    pub async fn settled(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.outstanding.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The webhook's JSON: the request (normalised statement only, no text or parameters) and a
/// self-contained line for chat tools (no link: the approver acts with the CLI on the host).
fn announcement(request: &Request) -> Vec<u8> {
    let who = match request.identity.labels.get("warden/identity") {
        Some(name) => name.clone(),
        None if !request.identity.labels.is_empty() => {
            request.identity.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
        }
        None => format!("{} (uid {})", request.identity.comm, request.identity.uid),
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let text = format!(
        "Warden on {host}: {who} waits for approval to run on {}: {} ({} by {}). Approve on the host: \
         warden approvals approve {} (or deny). Expires in {}.",
        request.database,
        request.statement,
        request.asked.class,
        request.asked.rule.as_deref().or(request.asked.policy.as_deref()).unwrap_or("policy"),
        request.id,
        crate::policy::format_duration(Duration::from_secs(request.timeout_s)),
    );
    serde_json::to_vec(
        &serde_json::json!({ "kind": "approval_requested", "host": host, "text": text, "request": request }),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests;
