//! Audit records and their writer. Sessions hand records to a single writer thread through a
//! bounded queue, so the proxy never waits on the disk; the writer appends them to the per-host
//! ring (`ring`), seals the hash chain periodically (`seal`), and flushes per `durability`.
//! It also keeps each identity to its fair share of the ring, so one tenant's flood cannot
//! overwrite everyone's history (`share`). Exporters read the ring, never the sessions (`export`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub mod cli;
pub mod export;
mod queue;
pub mod ring;
pub mod seal;
pub mod share;
pub mod statements;
pub mod view;

use serde::Serialize;

use crate::{
    config::{AuditConfig, Durability},
    identity::{Identity, MonotonicClock},
};

/// The writer seals at least this often while records arrive (and every `audit.seal_every`
/// records): what `warden audit verify` expects of an unsealed tail.
pub const SEAL_INTERVAL: Duration = Duration::from_secs(10);

/// Identifies one proxied or observed connection across its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

/// What happened, with who did it. Field names are stable: tests and operators read them.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A redirected connection reached the proxy and was attributed.
    ConnectionOpen {
        session: SessionId,
        database: String,
        orig_dst: SocketAddr,
        client: SocketAddr,
        /// The agent's local address toward the database (what the server sees as its client).
        upstream_local: Option<SocketAddr>,
        /// The database user and database name from the start-up message.
        db_user: Option<String>,
        db_name: Option<String>,
        /// The role the start-up packet asks the session to act as (`-c role=...`).
        db_role: Option<String>,
        application_name: Option<String>,
        client_tls: bool,
        upstream_tls: bool,
        /// The connection carried a CancelRequest, not a session.
        cancel_request: bool,
        identity: Box<Identity>,
    },
    /// A proxied connection ended.
    ConnectionClose {
        session: SessionId,
        database: String,
        bytes_from_client: u64,
        bytes_from_server: u64,
        /// Statements the server completed, and rows it returned.
        statements: u64,
        rows: u64,
        duration_ms: u64,
        /// Why it ended abnormally, and who caused it.
        error: Option<String>,
    },
    /// The proxy refused a connection (not created by the redirect, or a loop).
    ProxyRefused { client: SocketAddr, reason: String },
    /// An attributed connection was refused before its session began (a connection limit).
    ConnectionRefused {
        database: String,
        orig_dst: SocketAddr,
        client: SocketAddr,
        reason: String,
        identity: Box<Identity>,
    },
    /// A governed connection went direct because the agent was not serving (`fail: open`).
    Ungoverned { database: String, orig_dst: SocketAddr, identity: Box<Identity> },
    /// A governed connection was refused because the agent was not serving (`fail: closed`).
    RefusedNotServing { database: String, orig_dst: SocketAddr, identity: Box<Identity> },
    /// A connection to an observe-only database was established (not redirected).
    Observed { session: SessionId, database: String, orig_dst: SocketAddr, client: SocketAddr, identity: Box<Identity> },
    /// An observed connection closed.
    ObservedClose { session: SessionId, database: String, duration_ms: u64, established: bool },
    /// A statement forwarded to the server (or refused).
    Statement(Box<Statement>),
    /// What became of a statement.
    StatementEnd(Box<StatementEnd>),
    /// A statement was held for approval (recorded when held; the decision follows): its
    /// normalised text, analysis, the rule that asked and the identity.
    ApprovalRequested(Box<Arc<crate::approval::Request>>),
    /// How a held statement's request ended: approved or denied (by whom, why), timed out,
    /// cancelled (the session ended) or refused (the agent stopped).
    ApprovalDecided {
        session: SessionId,
        request: String,
        database: String,
        /// What was decided on (as the request showed it): the record stands alone even where
        /// the request's record was shed.
        statement: String,
        fingerprint: String,
        #[serde(flatten)]
        outcome: crate::approval::Outcome,
    },
    /// An operator ended a live session from the admin API: both legs were closed.
    SessionTerminated { session: SessionId, database: String, by: crate::approval::Approver },
    /// A database's host name resolves to other addresses; the kernel governs `added` (and no
    /// longer `removed`, unless another database still names them) from this record on.
    EndpointsChanged { database: String, host: String, added: Vec<SocketAddr>, removed: Vec<SocketAddr> },
    /// A session's pod was relabelled: its statements from here on are judged by `labels`.
    IdentityRelabelled { session: SessionId, database: String, labels: std::collections::BTreeMap<String, String> },
    /// An identity went over its fair share of the ring: how many of its statement records were
    /// condensed or dropped (written by the writer once per window, and at shutdown).
    AuditFlood(share::Flood),
}

/// A statement as it was forwarded to the server (its outcome follows in `StatementEnd`).
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub session: SessionId,
    /// Numbers the statements of the session in the order they were forwarded (0: refused
    /// before it was forwarded).
    pub statement: u64,
    /// The statement's index within a simple-query string (0 otherwise).
    pub part: u32,
    pub database: Arc<str>,
    /// "simple", "extended" or "function_call".
    pub protocol: &'static str,
    /// The statement text, literals kept or replaced by `?` per `audit.literals`; at most
    /// `audit.max_text_bytes` of it.
    pub text: Arc<str>,
    /// Length of the whole text; when longer than `text`, `text_sha256` is the SHA-256 of it.
    pub text_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_sha256: Option<String>,
    /// Bind parameters, when `audit.parameters` is on (NULL as null).
    pub params: Option<Vec<Option<String>>>,
    /// The function a fast-path FunctionCall runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_oid: Option<u32>,
    /// The most consequential effect: read, write, ddl, dcl, transaction, session, utility,
    /// unknown (with `class_reason`).
    pub class: &'static str,
    pub class_reason: Option<Arc<str>>,
    /// Tables and views the statement names.
    pub relations: Arc<[String]>,
    pub verdict: Verdict,
    /// Columns masked in the results, and why (never the values): shared with the mask plan.
    pub masked: Arc<[MaskedColumn]>,
    /// sqlcommenter-style tags from a trailing comment (traceparent, application, route, ...).
    pub tags: Arc<BTreeMap<String, String>>,
    /// The role the session acted as when the statement was judged (absent: not known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Arc<str>>,
    /// What dry-run policies and rules would have decided (absent: none selects the identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would: Option<Would>,
    /// What policy judged it by (absent: not judged by policy): `warden policy simulate`
    /// judges it again from these.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<JudgedFacts>,
    /// The volume limits its results are measured against.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitApplied>,
}

/// A volume limit that applies to a statement.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LimitApplied {
    pub policy: String,
    pub rule: String,
    /// As people read it: "10000 rows per statement", "64MiB per 1m".
    pub limit: String,
}

/// A statement stopped at a volume limit: by which rule, and how much of it was sent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stopped {
    pub policy: String,
    pub rule: String,
    pub rows: u64,
    pub bytes: u64,
    pub reason: String,
}

/// The would-be verdict of the dry-run policies and rules selecting a statement's identity:
/// what enforcing them would have done. Recorded beside `verdict`, never enforced.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Would {
    /// "allow", "deny" or "hold".
    pub decision: &'static str,
    pub policy: Option<Arc<str>>,
    pub rule: Option<Arc<str>>,
    pub reason: Arc<str>,
    /// Columns it would mask (or exempt).
    #[serde(skip_serializing_if = "<[MaskedColumn]>::is_empty")]
    pub masked: Arc<[MaskedColumn]>,
    /// How it differs from the real verdict: "deny", "hold", "allow" (another decision) or
    /// "mask" (columns masked that are not now); absent when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<&'static str>,
}

/// The facts policy judged a statement by, as `warden policy simulate` reads them back: its
/// effects, and each relation and function named with the places it may resolve to, as
/// `[schema, name]` pairs (`schema` null: any schema).
#[derive(Debug, Clone)]
pub struct JudgedFacts {
    pub effects: crate::sql::ClassSet,
    pub names: Arc<crate::session::JudgedNames>,
}

/// At most this many places (names times the places each may resolve to) are recorded, each
/// part at most this long (PostgreSQL keeps 63 bytes of an identifier); a statement naming more
/// is recorded with `incomplete: true`, and simulation says so.
const MAX_FACT_PLACES: usize = 256;
const MAX_FACT_NAME_BYTES: usize = 128;
/// And at most this many bytes of them, as JSON may spell them (a control character takes
/// six).
const MAX_FACT_BYTES: usize = 16 * 1024;

impl JudgedFacts {
    /// Whether the names fit the record (one pass over them).
    fn fits(&self) -> bool {
        let (mut places, mut bytes) = (0usize, 0usize);
        for n in self.names.relations.iter().chain(&self.names.functions).flatten() {
            let schema = n.schema.as_ref().map_or(0, String::len);
            places += 1;
            bytes += 6 * (n.name.len() + schema) + 8;
            if places > MAX_FACT_PLACES
                || n.name.len() > MAX_FACT_NAME_BYTES
                || schema > MAX_FACT_NAME_BYTES
                || bytes > MAX_FACT_BYTES
            {
                return false;
            }
        }
        true
    }
}

impl Serialize for JudgedFacts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        // Written as they are walked: a record is serialised on the writer's hot path.
        struct Places<'a>(&'a [crate::sql::ObjectName]);
        impl Serialize for Places<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|n| (n.schema.as_deref(), n.name.as_str())))
            }
        }
        struct Names<'a>(&'a [Vec<crate::sql::ObjectName>]);
        impl Serialize for Names<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|c| Places(c)))
            }
        }
        struct Effects(crate::sql::ClassSet);
        impl Serialize for Effects {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(crate::sql::Class::as_str))
            }
        }
        let names = &self.names;
        let complete = self.fits();
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("effects", &Effects(self.effects))?;
        if complete {
            map.serialize_entry("relations", &Names(&names.relations))?;
            map.serialize_entry("functions", &Names(&names.functions))?;
        } else {
            map.serialize_entry("incomplete", &true)?;
        }
        if names.unscoped {
            map.serialize_entry("unscoped", &true)?;
        }
        if !names.catalog {
            map.serialize_entry("catalog", &false)?;
        }
        map.end()
    }
}

/// How a forwarded statement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Failed,
    /// An Execute stopped at its row limit (PortalSuspended); more may follow.
    Suspended,
    /// Forwarded, but the server skipped it (an earlier statement of its batch failed).
    NotRun,
    /// The session ended before the server said.
    Unknown,
    /// Stopped mid-stream at a volume limit (its server work cancelled).
    Stopped,
}

/// The outcome of a statement recorded earlier (same session, statement and part).
#[derive(Debug, Clone, Serialize)]
pub struct StatementEnd {
    pub session: SessionId,
    pub statement: u64,
    pub part: u32,
    pub outcome: Outcome,
    /// Rows returned (or affected, from the command tag).
    pub rows: u64,
    pub command_tag: Option<String>,
    pub duration_us: u64,
    /// SQLSTATE of the error the statement ended with.
    pub error: Option<String>,
    /// Stopped at a volume limit (`outcome: stopped`; `rows` is what the client got).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
}

/// The policy decision about a statement.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// "allow", "deny" or "hold".
    pub decision: &'static str,
    /// The policy that decided (none: no policy selects the identity).
    pub policy: Option<Arc<str>>,
    /// The rule that decided (none: the policy's default applied).
    pub rule: Option<Arc<str>>,
    pub reason: Option<Arc<str>>,
}

impl Verdict {
    pub fn allow() -> Self {
        Self { decision: "allow", policy: None, rule: None, reason: None }
    }
}

/// A masking decision about one result column.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MaskedColumn {
    pub column: String,
    pub rule: String,
    pub method: String,
}

/// What the writer is asked to do. Records are held in the queue's buffer as they are, not boxed:
/// a box per record was an allocation on the session's thread freed on the writer's.
#[allow(clippy::large_enum_variant, reason = "the queue's elements are records; a tick is rare")]
enum WriterMsg {
    Record(u64, Event),
    /// Once a second: flush (periodic durability) and seal if due.
    Tick,
}

/// Counters an operator watches: a non-zero `dropped` or `write_errors` means records were lost.
/// `share_condensed` and `share_dropped` are not losses but fair-share decisions, each also in
/// an `audit_flood` record.
#[derive(Debug, Default)]
pub struct AuditCounters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
    /// Statement records written condensed, or not written, because their identity was over its
    /// share of the ring.
    pub share_condensed: AtomicU64,
    pub share_dropped: AtomicU64,
    /// Outcomes written in their statement's record (`statement_end` records saved).
    pub outcomes_merged: AtomicU64,
    /// Sequence number of the newest record in the ring.
    pub last_seq: AtomicU64,
}

/// The sessions' handle to the audit writer.
#[derive(Clone)]
pub struct AuditLog {
    /// The writer ends once the last handle (and with it the sender) is gone.
    tx: Arc<queue::Sender<WriterMsg>>,
    counters: Arc<AuditCounters>,
    /// The writer is up and its last write succeeded.
    healthy: Arc<AtomicBool>,
    required: bool,
}

/// Whether the audit writer is healthy, for probes that must not keep it alive.
#[derive(Clone, Debug)]
pub struct AuditProbe {
    healthy: Arc<AtomicBool>,
}

impl AuditProbe {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// The audit trail cannot take a record now (queue full or writer failing).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit trail is unavailable (queue full or ring write failing)")]
pub struct AuditUnavailable;

/// The writer thread; joined at shutdown after every `AuditLog` is dropped.
pub struct AuditWriter(std::thread::JoinHandle<()>);

impl AuditWriter {
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl AuditLog {
    /// Opens (or creates) the ring and its sealing key, and starts the writer thread.
    pub fn open(config: &AuditConfig) -> anyhow::Result<(Self, AuditWriter)> {
        Self::open_beside(config, false)
    }

    /// Like `open`; `shared` when another agent writes the ring too (the one this agent takes
    /// over from): its newest records are then unsealed because it is still writing, not because
    /// it crashed.
    pub fn open_beside(config: &AuditConfig, shared: bool) -> anyhow::Result<(Self, AuditWriter)> {
        let mut writer = Writer::open(config)?;
        let (counters, healthy) = (writer.counters.clone(), writer.healthy.clone());
        let (tx, rx) = queue::channel(config.queue);
        if !shared && writer.ring.last_kind() == Some(ring::Kind::Event) {
            // The last writer did not stop cleanly (a crash, kill -9): seal its tail now, so it
            // is not joined to this run's records into a tail longer than verify accepts. This
            // covers nothing the next seal would not have covered anyway.
            tracing::warn!(
                path = %config.path.display(),
                "the audit ring's newest records were not sealed (the agent did not stop cleanly); sealing them"
            );
            writer.ring.acquire()?;
            writer.seal(&mut Vec::new());
            writer.ring.release();
        }
        let thread = std::thread::Builder::new().name("warden-audit".into()).spawn(move || writer.run(rx))?;
        Ok((Self { tx: Arc::new(tx), counters, healthy, required: config.required }, AuditWriter(thread)))
    }

    /// Queues a record; never waits. When it cannot be queued it is dropped and counted.
    pub fn record(&self, event: Event) {
        let _ = self.try_record(event);
    }

    /// Like `record`, telling the caller when the record was dropped (with `audit.required`,
    /// the statement is then refused).
    pub fn try_record(&self, event: Event) -> Result<(), AuditUnavailable> {
        if self.tx.try_send(WriterMsg::Record(now_ms(), event)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(AuditUnavailable);
        }
        Ok(())
    }

    /// Whether statements may proceed: always, unless `audit.required` and the trail is down.
    pub fn admits_statements(&self) -> bool {
        self.admits_records(1)
    }

    /// Whether a message that will produce `records` records may proceed: always, unless
    /// `audit.required` and the queue cannot take them now (or the trail is failing).
    pub fn admits_records(&self, records: usize) -> bool {
        !self.required || (self.healthy.load(Ordering::Relaxed) && self.tx.capacity() >= records)
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// Whether the writer is up and its last write succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The writer's health, without a handle that keeps the writer running.
    pub fn probe(&self) -> AuditProbe {
        AuditProbe { healthy: self.healthy.clone() }
    }

    pub fn counters(&self) -> &AuditCounters {
        &self.counters
    }

    /// Starts the once-a-second tick (flush and seal) on the current runtime.
    pub fn spawn_ticker(&self) -> tokio::task::JoinHandle<()> {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                // A full queue is busy anyway: the tick is only a nudge.
                if tx.try_send(WriterMsg::Tick).is_err() && tx.is_closed() {
                    return;
                }
            }
        })
    }
}

/// A record as stored: sequence and time around the event's own fields.
#[derive(Serialize)]
struct Envelope<'a> {
    at_ms: u64,
    #[serde(flatten)]
    event: &'a Event,
    /// A statement's outcome, when it came before the statement was written (`Held`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    end: Option<Outcomes<'a>>,
    /// Written condensed because its identity was over its share of the ring (`share`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    condensed: bool,
}

/// The fields of a `statement_end` that a `statement` record carries when both are written as
/// one.
#[derive(Serialize)]
struct Outcomes<'a> {
    outcome: Outcome,
    rows: u64,
    command_tag: &'a Option<String>,
    duration_us: u64,
    error: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: &'a Option<Stopped>,
}

impl<'a> From<&'a StatementEnd> for Outcomes<'a> {
    fn from(e: &'a StatementEnd) -> Self {
        Outcomes {
            outcome: e.outcome,
            rows: e.rows,
            command_tag: &e.command_tag,
            duration_us: e.duration_us,
            error: &e.error,
            stopped: &e.stopped,
        }
    }
}

/// Statements the writer has taken and not yet written, waiting (until the end of the batch)
/// for their outcome: a statement whose `statement_end` is queued in the same batch is written
/// as one record with its outcome's fields. Most statements end within a batch (records
/// gather for 2 ms between batches): each saves a record, 169 bytes of the ring. A session's
/// records keep their order.
#[derive(Default)]
struct Held {
    statements: Vec<Taken>,
}

/// A statement held for its outcome: when it was recorded, and the statement (its box, so
/// that taking one out of the middle of the held ones moves 16 bytes a place, not an event).
type Taken = (u64, Box<Statement>);

/// Statements held at most (beyond, the oldest is written without its outcome).
const MAX_HELD: usize = 256;

impl Held {
    /// Takes the statement `end` is the outcome of, with what must be written before it: the
    /// session's statements held ahead of it.
    fn take_for(&mut self, end: &StatementEnd) -> (Vec<Taken>, Option<Taken>) {
        let key = (end.session, end.statement, end.part);
        let Some(i) = self.statements.iter().position(|(_, s)| (s.session, s.statement, s.part) == key) else {
            return (Vec::new(), None);
        };
        let found = self.statements.remove(i);
        (self.take_session(end.session, i), Some(found))
    }

    /// The statements of `session` among the first `before` held, in order.
    fn take_session(&mut self, session: SessionId, before: usize) -> Vec<Taken> {
        let mut taken = Vec::new();
        let mut i = 0;
        let mut seen = 0;
        while i < self.statements.len() && seen < before {
            seen += 1;
            if self.statements[i].1.session == session {
                taken.push(self.statements.remove(i));
            } else {
                i += 1;
            }
        }
        taken
    }
}

struct Writer {
    ring: ring::Ring,
    key: seal::SealKey,
    durability: Durability,
    seal_every: u64,
    since_seal: u64,
    last_seal: Instant,
    counters: Arc<AuditCounters>,
    healthy: Arc<AtomicBool>,
    path: PathBuf,
    /// Losses already added to the ring's header.
    reported_lost: u64,
    /// Each identity's use of the ring (none: `audit.identity_share` is 1, no limit).
    share: Option<share::FairShare>,
}

impl Writer {
    fn open(config: &AuditConfig) -> anyhow::Result<Writer> {
        let ring = ring::Ring::open(&config.path, config.ring_bytes)?;
        let key = seal::load_or_create_key(&config.key_path())?;
        let counters = Arc::new(AuditCounters::default());
        counters.last_seq.store(ring.next_seq().saturating_sub(1), Ordering::Relaxed);
        Ok(Writer {
            ring,
            key,
            durability: config.durability,
            seal_every: config.seal_every,
            since_seal: 0,
            last_seal: Instant::now(),
            counters,
            healthy: Arc::new(AtomicBool::new(true)),
            path: config.path.clone(),
            reported_lost: 0,
            share: share::FairShare::new(config, Arc::new(MonotonicClock)),
        })
    }

    fn run(mut self, mut rx: queue::Receiver<WriterMsg>) {
        let mut buf = Vec::with_capacity(2048);
        let mut held = Held::default();
        // Records taken from the queue, handled from `next` on.
        let mut taken: Vec<WriterMsg> = Vec::new();
        let mut next = 0;
        loop {
            if next == taken.len() {
                taken.clear();
                next = 0;
                if !rx.take_all(&mut taken) {
                    break;
                }
            }
            let mut tick = false;
            // Handle what was taken in batches (bounded, so seals and flushes keep happening
            // under sustained load), then flush once: group commit.
            let mut batch = 0;
            // One writer at a time appends (the agent that replaces this one shares the ring):
            // the lock is held for the batch, not per record.
            match self.ring.acquire() {
                // Records another writer appended count toward this writer's next seal (or are
                // covered by one it wrote): verify expects seals this often whoever writes.
                Ok(others) if others > 0 => {
                    self.since_seal =
                        if self.ring.last_kind() == Some(ring::Kind::Seal) { 0 } else { self.since_seal + others };
                }
                Ok(_) => {}
                Err(err) => self.failed(&err.to_string()),
            }
            while next < taken.len() {
                // A tick in its place costs nothing to leave behind.
                match std::mem::replace(&mut taken[next], WriterMsg::Tick) {
                    WriterMsg::Record(at_ms, event) => self.take(&mut buf, &mut held, at_ms, event),
                    WriterMsg::Tick => tick = true,
                }
                next += 1;
                batch += 1;
                if batch >= 1024 || self.since_seal >= self.seal_every {
                    break;
                }
            }
            rx.handled(batch);
            for (at_ms, s) in std::mem::take(&mut held.statements) {
                self.append(&mut buf, at_ms, Event::Statement(s), None);
            }
            // Checked after every batch, as seals are: under load ticks are dropped.
            let floods = self.share.as_mut().map(share::FairShare::due).unwrap_or_default();
            self.write_floods(&mut buf, floods);
            // Time-based seals are checked after every batch, not only on ticks: under sustained
            // load the queue is full and ticks are dropped, and verify relies on this interval.
            let seal_due = self.since_seal >= self.seal_every
                || (self.since_seal > 0 && self.last_seal.elapsed() >= SEAL_INTERVAL);
            if seal_due {
                self.seal(&mut buf);
            }
            // Losses are counted in the ring itself, where `warden audit stats` shows them.
            let dropped =
                self.counters.dropped.load(Ordering::Relaxed) + self.counters.write_errors.load(Ordering::Relaxed);
            if self.ring.add_lost(dropped - self.reported_lost) {
                self.reported_lost = dropped;
            }
            self.ring.release();
            if self.durability == Durability::Always || (tick && self.durability == Durability::Periodic) {
                self.sync();
            }
            if next == taken.len() && batch < 1024 {
                // Let records accumulate instead of being woken for each one: a wake-up is a
                // cross-CPU interrupt, which costs the sessions more than the write itself.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Shutdown: summarise floods of the unfinished window, seal what is there and flush.
        let floods = self.share.as_mut().map(share::FairShare::summarise).unwrap_or_default();
        if let Err(err) = self.ring.acquire() {
            self.failed(&err.to_string());
        }
        self.write_floods(&mut buf, floods);
        if self.since_seal > 0 {
            self.seal(&mut buf);
        }
        self.ring.release();
        self.sync();
    }

    /// Writes a record taken from the queue, or holds a statement for its outcome (`Held`).
    fn take(&mut self, buf: &mut Vec<u8>, held: &mut Held, at_ms: u64, event: Event) {
        let event = match event {
            // Statement 0 is a refusal: it has no outcome to wait for.
            Event::Statement(s) if s.statement != 0 => {
                if held.statements.len() >= MAX_HELD {
                    let (at_ms, oldest) = held.statements.remove(0);
                    self.append(buf, at_ms, Event::Statement(oldest), None);
                }
                held.statements.push((at_ms, s));
                return;
            }
            event => event,
        };
        match &event {
            Event::StatementEnd(end) => {
                let (mut before, statement) = held.take_for(end);
                if statement.is_none() {
                    // Its statement was written already: the session's statements taken since
                    // come before it.
                    before = held.take_session(end.session, held.statements.len());
                }
                for (at_ms, s) in before {
                    self.append(buf, at_ms, Event::Statement(s), None);
                }
                if let Some((at_ms, statement)) = statement {
                    self.counters.outcomes_merged.fetch_add(1, Ordering::Relaxed);
                    self.append(buf, at_ms, Event::Statement(statement), Some(end));
                    return;
                }
            }
            // Anything else comes after every statement taken before it.
            _ => {
                for (at_ms, s) in std::mem::take(&mut held.statements) {
                    self.append(buf, at_ms, Event::Statement(s), None);
                }
            }
        }
        self.append(buf, at_ms, event, None);
    }

    fn append(&mut self, buf: &mut Vec<u8>, at_ms: u64, mut event: Event, end: Option<&StatementEnd>) {
        // Records it stands for, as losses are counted: a statement with its outcome is two.
        let records = 1 + u64::from(end.is_some());
        if !self.ring.holds_lock() {
            // The writers' lock could not be had for this batch (another writer held it past
            // the wait): its records are counted lost (added to the ring's count once the lock
            // is had again) rather than each waiting for it in turn.
            self.failed_records("the audit ring's writers' lock is held by another process", records);
            return;
        }
        // Whose share the record is charged to, and whether that identity is over it.
        let mut condensed = false;
        let charge = match &mut self.share {
            None => None,
            Some(share) => {
                let charge = share.charge_for(&event);
                // Until the ring is full, writing a record evicts nobody's: nothing is shed.
                let stats = self.ring.stats();
                let evicting = stats.overwritten > 0 || stats.used + 4096 > stats.capacity;
                match share.admit(&charge, evicting) {
                    share::Admission::Keep => {}
                    share::Admission::Condense => {
                        share::condense(&mut event);
                        condensed = true;
                    }
                    share::Admission::Drop => {
                        // Counted per identity for its `audit_flood` record; not a loss (`lost`).
                        self.counters.share_dropped.fetch_add(records, Ordering::Relaxed);
                        if records > 1 {
                            share.dropped_also(&charge, records - 1);
                        }
                        return;
                    }
                }
                Some(charge)
            }
        };
        buf.clear();
        // Serialising our own types cannot fail (string-keyed maps only).
        let _ = serde_json::to_writer(
            &mut *buf,
            &Envelope { at_ms, event: &event, end: end.map(Outcomes::from), condensed },
        );
        match self.ring.append(ring::Kind::Event, at_ms, buf) {
            Ok(seq) => {
                self.counters.written.fetch_add(1, Ordering::Relaxed);
                self.counters.last_seq.store(seq, Ordering::Relaxed);
                self.since_seal += 1;
                self.healthy.store(true, Ordering::Relaxed);
                let condensed = if condensed { records } else { 0 };
                if let (Some(share), Some(charge)) = (&mut self.share, &charge) {
                    share.written(charge, share::ring_bytes_of(buf.len()), condensed);
                }
                self.counters.share_condensed.fetch_add(condensed, Ordering::Relaxed);
                if self.since_seal >= self.seal_every {
                    self.seal(buf);
                }
            }
            Err(err) => self.failed_records(&err.to_string(), records),
        }
    }

    /// Writes flood summaries into the ring (they are charged to no one, so never shed).
    fn write_floods(&mut self, buf: &mut Vec<u8>, floods: Vec<share::Flood>) {
        for flood in floods {
            tracing::warn!(
                identity = %flood.identity,
                condensed = flood.condensed,
                dropped = flood.dropped,
                written_bytes = flood.written_bytes,
                share_bytes = flood.share_bytes,
                "an identity wrote more than its share of the audit ring; its statement records were condensed or dropped"
            );
            self.append(buf, now_ms(), Event::AuditFlood(flood), None);
        }
    }

    fn seal(&mut self, buf: &mut Vec<u8>) {
        let upto = self.ring.next_seq().saturating_sub(1);
        let seal = self.key.seal(upto, &self.ring.head_hash(), self.seal_every);
        buf.clear();
        let _ = serde_json::to_writer(&mut *buf, &seal);
        match self.ring.append(ring::Kind::Seal, now_ms(), buf) {
            Ok(seq) => {
                self.counters.last_seq.store(seq, Ordering::Relaxed);
                self.since_seal = 0;
                self.last_seal = Instant::now();
            }
            Err(err) => self.failed(&err.to_string()),
        }
    }

    fn sync(&mut self) {
        if let Err(err) = self.ring.sync() {
            self.failed(&err.to_string());
        }
    }

    fn failed(&mut self, error: &str) {
        self.failed_records(error, 1);
    }

    /// A write of `records` records failed (each counted lost).
    fn failed_records(&mut self, error: &str, records: u64) {
        self.healthy.store(false, Ordering::Relaxed);
        if self.counters.write_errors.fetch_add(records, Ordering::Relaxed) == 0 {
            tracing::error!(path = %self.path.display(), %error, "audit write failed; counting further failures");
        }
    }
}

/// Appends `n` representative statement records, each with its outcome (serialised one by one, as the writer does,
/// under the writers' lock taken once per batch of 1,024) to a new ring at `path`; returns
/// records per second.
pub fn bench_append(path: &std::path::Path, n: u64) -> anyhow::Result<f64> {
    let mut ring = ring::Ring::open(path, 64 * 1024 * 1024)?;
    let started = Instant::now();
    let mut buf = Vec::with_capacity(2048);
    for i in 0..n {
        if i % 1024 == 0 {
            ring.release();
            ring.acquire()?;
        }
        let event = Event::Statement(Box::new(sample_statement(SessionId(7_713_002_265_585_385_473 + i % 64), i)));
        buf.clear();
        let at_ms = now_ms();
        let end = sample_end(SessionId(7_713_002_265_585_385_473 + i % 64), i);
        serde_json::to_writer(
            &mut buf,
            &Envelope { at_ms, event: &event, end: Some((&end).into()), condensed: false },
        )?;
        ring.append(ring::Kind::Event, at_ms, &buf)?;
    }
    ring.release();
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// A representative statement record (for the bench and tests): judged by a policy's rule,
/// one column masked.
fn sample_statement(session: SessionId, statement: u64) -> Statement {
    let name = |schema: Option<&str>, name: &str| crate::sql::ObjectName::new(schema, name);
    Statement {
        session,
        statement,
        part: 0,
        database: "orders".into(),
        protocol: "extended",
        text: "select o.id, o.total, c.email from orders o join customers c on c.id = o.customer_id where o.id = $1"
            .into(),
        text_bytes: 101,
        text_sha256: None,
        params: None,
        function_oid: None,
        class: "read",
        class_reason: None,
        relations: Arc::from(vec!["orders".to_string(), "customers".to_string()]),
        verdict: Verdict {
            decision: "allow",
            policy: Some("baseline".into()),
            rule: None,
            reason: Some("no rule matched; the policy's default applies".into()),
        },
        masked: Arc::from(vec![MaskedColumn {
            column: "public.customers.email".to_string(),
            rule: "pii-email".to_string(),
            method: "token".to_string(),
        }]),
        tags: Arc::new(BTreeMap::from([("application".to_string(), "recsys".to_string())])),
        role: Some("recsys".into()),
        would: None,
        facts: Some(JudgedFacts {
            effects: crate::sql::ClassSet::of(&[crate::sql::Class::Read]),
            names: Arc::new(crate::session::JudgedNames {
                relations: vec![vec![name(Some("public"), "orders")], vec![name(Some("public"), "customers")]],
                functions: Vec::new(),
                unscoped: false,
                catalog: true,
            }),
        }),
        limits: Vec::new(),
    }
}

/// The outcome of `sample_statement`.
fn sample_end(session: SessionId, statement: u64) -> StatementEnd {
    StatementEnd {
        session,
        statement,
        part: 0,
        outcome: Outcome::Completed,
        rows: 1,
        command_tag: Some("SELECT 1".to_string()),
        duration_us: 180,
        error: None,
        stopped: None,
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration whose ring is in a fresh directory, removed when the guard drops.
    fn config(name: &str, seal_every: u64) -> (tempfile::TempDir, AuditConfig) {
        let dir = crate::test_dir(&format!("warden-writer-test-{name}-"));
        let config = AuditConfig {
            path: dir.path().join("audit.ring"),
            ring_bytes: ring::MIN_CAPACITY,
            seal_every,
            ..AuditConfig::default()
        };
        (dir, config)
    }

    fn refused(i: u64) -> Event {
        Event::ProxyRefused { client: "127.0.0.1:1".parse().expect("address"), reason: format!("test {i}") }
    }

    fn seals(config: &AuditConfig) -> Vec<(u64, seal::Seal)> {
        let ring = ring::RingFile::open(&config.path).expect("ring");
        ring.records(0)
            .into_iter()
            .filter(|r| r.kind == ring::Kind::Seal)
            .map(|r| (r.seq, serde_json::from_slice(&r.payload).expect("seal payload")))
            .collect()
    }

    #[test]
    fn seals_say_how_often_they_come_and_cover_everything_at_shutdown() {
        let (_dir, config) = config("every", 3);
        let (log, writer) = AuditLog::open(&config).expect("open");
        for i in 0..7 {
            log.try_record(refused(i)).expect("queued");
        }
        drop(log);
        writer.join();
        let seals = seals(&config);
        assert_eq!(
            seals.iter().map(|(seq, s)| (*seq, s.upto_seq, s.every)).collect::<Vec<_>>(),
            vec![(4, 3, 3), (8, 7, 3), (10, 9, 3)],
            "a seal after every 3 records, and one at shutdown for the last"
        );
        let v = cli::verify(&config.path, Some(&config.key_path())).expect("verify");
        assert!(v.problems.is_empty() && v.unsealed.is_none() && v.seals_checked == 3, "{v:?}");
    }

    fn end(session: u64, statement: u64, outcome: Outcome, rows: u64) -> Event {
        Event::StatementEnd(Box::new(StatementEnd {
            session: SessionId(session),
            statement,
            part: 0,
            outcome,
            rows,
            command_tag: Some(format!("SELECT {rows}")),
            duration_us: 40,
            error: None,
            stopped: None,
        }))
    }

    #[test]
    fn judged_facts_are_written_as_places_or_as_incomplete_past_the_cap() {
        let facts = sample_statement(SessionId(1), 1).facts.expect("facts");
        assert_eq!(
            serde_json::to_value(&facts).expect("json"),
            serde_json::json!({
                "effects": ["read"],
                "relations": [[["public", "orders"]], [["public", "customers"]]],
                "functions": []
            })
        );
        let unscoped = |n: usize| JudgedFacts {
            effects: crate::sql::ClassSet::of(&[crate::sql::Class::Read, crate::sql::Class::Write]),
            names: Arc::new(crate::session::JudgedNames {
                relations: vec![(0..n).map(|i| crate::sql::ObjectName::new(None, &format!("t{i}"))).collect()],
                functions: Vec::new(),
                unscoped: true,
                catalog: false,
            }),
        };
        let at_cap = serde_json::to_value(unscoped(MAX_FACT_PLACES)).expect("json");
        assert_eq!(at_cap["relations"][0].as_array().map(Vec::len), Some(MAX_FACT_PLACES));
        assert_eq!(at_cap["relations"][0][0], serde_json::json!([null, "t0"]));
        assert_eq!((&at_cap["unscoped"], &at_cap["catalog"]), (&serde_json::json!(true), &serde_json::json!(false)));
        let over = serde_json::to_value(unscoped(MAX_FACT_PLACES + 1)).expect("json");
        assert_eq!(
            over,
            serde_json::json!({"effects": ["read", "write"], "incomplete": true, "unscoped": true, "catalog": false})
        );
        let long = JudgedFacts {
            effects: crate::sql::ClassSet::of(&[crate::sql::Class::Read]),
            names: Arc::new(crate::session::JudgedNames {
                relations: vec![vec![crate::sql::ObjectName::new(Some(&"s".repeat(MAX_FACT_NAME_BYTES + 1)), "t")]],
                functions: Vec::new(),
                unscoped: false,
                catalog: true,
            }),
        };
        assert_eq!(serde_json::to_value(long).expect("json")["incomplete"], serde_json::json!(true));
    }

    /// A statement whose outcome is queued in the same batch is written with it, as one record;
    /// the others as they came, each session's records in order, and every seal on time.
    #[test]
    fn a_statement_that_ended_before_it_was_written_is_one_record_with_its_outcome() {
        let (_dir, config) = config("held", 4);
        // Queued before the writer runs: one batch.
        let (tx, rx) = queue::channel(64);
        let statement = |session: u64, n: u64| Event::Statement(Box::new(sample_statement(SessionId(session), n)));
        let mut refused_statement = sample_statement(SessionId(3), 0);
        refused_statement.verdict.decision = "deny";
        for event in [
            statement(1, 1),
            statement(2, 1),
            statement(1, 2),
            end(2, 1, Outcome::Completed, 2),
            end(1, 2, Outcome::Completed, 3),
            Event::Statement(Box::new(refused_statement)),
            statement(2, 2),
            refused(9),
            end(2, 2, Outcome::Failed, 0),
            statement(1, 3),
            end(1, 1, Outcome::Completed, 1),
            end(5, 5, Outcome::Unknown, 0),
        ] {
            assert!(tx.try_send(WriterMsg::Record(now_ms(), event)).is_ok(), "queued");
        }
        drop(tx);
        Writer::open(&config).expect("open").run(rx);
        let ring = ring::RingFile::open(&config.path).expect("ring");
        let records: Vec<serde_json::Value> = ring
            .records(0)
            .into_iter()
            .filter(|r| r.kind == ring::Kind::Event)
            .map(|r| serde_json::from_slice(&r.payload).expect("JSON"))
            .collect();
        let shape: Vec<String> = records
            .iter()
            .map(|r| {
                format!(
                    "{} {}/{}{}",
                    r["kind"].as_str().unwrap_or("?"),
                    r["session"],
                    r["statement"],
                    r["outcome"].as_str().map(|o| format!(" {o} {}", r["rows"])).unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                // Written when its outcome came; session 1's first statement (still held)
                // comes before its second, which ended first.
                "statement 2/1 completed 2",
                "statement 1/1",
                "statement 1/2 completed 3",
                // A refusal has no outcome to wait for.
                "statement 3/0",
                // Another kind of record comes after every statement queued before it.
                "statement 2/2",
                "proxy_refused null/null",
                "statement_end 2/2 failed 0",
                // An outcome whose statement was written comes after the session's statements
                // taken before it.
                "statement 1/3",
                "statement_end 1/1 completed 1",
                "statement_end 5/5 unknown 0",
            ],
            "{records:#?}"
        );
        let combined = &records[2];
        assert_eq!((combined["command_tag"].as_str(), combined["duration_us"].as_u64()), (Some("SELECT 3"), Some(40)));
        assert_eq!(combined["text"], records[1]["text"], "the statement's own fields are all there");
        let v = cli::verify(&config.path, Some(&config.key_path())).expect("verify");
        assert!(v.problems.is_empty() && v.unsealed.is_none(), "{v:?}");
        let gaps: Vec<u64> = seals(&config).windows(2).map(|w| w[1].0 - w[0].0 - 1).collect();
        assert!(gaps.iter().all(|g| *g <= 4), "a seal at least every 4 records: {gaps:?}");
    }

    /// The writer gives the queue its room back as it handles what it took: four turns of 1,500
    /// records through a queue of 2,048 each fit only if the turn before was handled.
    #[test]
    fn the_writer_gives_the_queue_its_room_back_as_it_writes() {
        let (_dir, mut config) = config("room", 1000);
        config.queue = 2048;
        let (log, writer) = AuditLog::open(&config).expect("open");
        let counters = log.counters.clone();
        for turn in 0..4u64 {
            for i in 0..1500 {
                log.try_record(refused(turn * 1500 + i)).expect("room in the queue");
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while log.tx.capacity() < 2048 {
                assert!(Instant::now() < deadline, "turn {turn}: the queue's room came back to {}", log.tx.capacity());
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(log);
        writer.join();
        assert_eq!(counters.written.load(Ordering::Relaxed), 6000);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        // The smallest ring holds the newest of them, in order.
        let ring = ring::RingFile::open(&config.path).expect("ring");
        let numbers: Vec<u64> = ring
            .records(0)
            .into_iter()
            .filter(|r| r.kind == ring::Kind::Event)
            .filter_map(|r| {
                let record: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
                record["reason"].as_str()?.strip_prefix("test ")?.parse().ok()
            })
            .collect();
        let first = numbers.first().copied().unwrap_or(6000);
        assert!(numbers.len() > 100 && numbers.iter().copied().eq(first..6000), "not the newest in order");
        let v = cli::verify(&config.path, Some(&config.key_path())).expect("verify");
        assert!(v.problems.is_empty() && v.unsealed.is_none(), "{v:?}");
    }

    #[test]
    fn a_tail_left_by_a_crash_is_sealed_when_the_agent_starts_again() {
        let (_dir, config) = config("crash", 100);
        let (log, writer) = AuditLog::open(&config).expect("open");
        log.try_record(refused(0)).expect("queued");
        drop(log);
        writer.join();
        // Records written after that seal by an agent that then died (no seal at shutdown).
        let mut ring = ring::Ring::open(&config.path, config.ring_bytes).expect("ring");
        for i in 1..=4 {
            ring.append(ring::Kind::Event, now_ms(), format!("{{\"kind\":\"crash {i}\"}}").as_bytes()).unwrap();
        }
        drop(ring);
        let v = cli::verify(&config.path, Some(&config.key_path())).expect("verify");
        assert_eq!(v.unsealed.map(|u| (u.first_seq, u.last_seq)), Some((3, 6)), "{v:?}");

        let (log, writer) = AuditLog::open(&config).expect("reopen");
        let last = seals(&config).last().cloned().expect("a seal");
        assert_eq!((last.0, last.1.upto_seq, last.1.every), (7, 6, 100), "the crash tail sealed at start");
        drop(log);
        writer.join();
        let v = cli::verify(&config.path, Some(&config.key_path())).expect("verify");
        assert!(v.problems.is_empty() && v.unsealed.is_none(), "{v:?}");
    }
}
