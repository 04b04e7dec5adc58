//! Fair shares of the audit ring. The ring is shared by every tenant of the host and overwrites
//! its oldest records when full, so one identity flooding the proxy with statements would
//! overwrite everyone else's history. The writer therefore charges each record to the identity
//! that caused it and keeps, per identity, the bytes it wrote within a sliding window
//! (`audit.identity_window_s`, default 60 s). Within one window an identity may write
//! `audit.identity_share` of `audit.ring_bytes` (default a quarter) as it is; beyond that its
//! `statement` and `statement_end` records are condensed (a short text prefix, no parameters or
//! tags, `condensed: true`), and beyond twice that they are dropped. Connection records are
//! never condensed or dropped. What was condensed or dropped is counted per identity and written
//! into the ring itself as `audit_flood` records, once per window and at shutdown: the flood is
//! in the trail it was kept out of.
//!
//! So one flooding identity writes at most twice its share per window, and the ring keeps at
//! least `window / (2 × share)` of everyone else's history (two minutes with the defaults)
//! however fast it floods; an identity writing less than its share per window is never touched.
//!
//! The window is fixed time, not "the time in which the ring writes its own capacity": that
//! time is set by what is written, so when the flooder is the only writer its own throttling
//! lengthens the window, which lowers its rate, which lengthens the window again, until it is
//! dropped indefinitely; a single busy tenant would lose its trail to protect records no one
//! else is adding to.
//!
//! The window is six fixed sub-windows (10 s each by default): an identity's usage is the bytes
//! of its records in the current sub-window and the five before it, so bytes leave the window
//! 50 to 60 s after they were written. Time is the writer's monotonic clock, not the records'
//! wall-clock `at_ms`, so a clock step neither resets nor extends a window.
//!
//! Records are charged to the identity's key: its `warden/identity` label, else its container,
//! else its user (`identity:NAME`, `container:ID`, `uid:N`), the key the proxy counts
//! connections under (`Identity::tenant_key`), so one tenant has one name in both. The
//! prefixes keep a label from sharing a container's or a cgroup's budget. Statement records name
//! only their session: the writer learns each session's key from its `connection_open` (or
//! `observed`) record and forgets it at the close. Records of sessions it does not know (their
//! opening record was dropped from a full queue, or the session map overflowed) are charged to
//! one shared key, `unattributed`, so they cannot escape the accounting.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{Event, SessionId};
use crate::{
    config::AuditConfig,
    identity::{Clock, Identity, cache::Lru},
};

/// Sub-windows per window: the window slides in steps of a sixth of its length.
const SUB_WINDOWS: usize = 6;
/// Sessions whose identity the writer remembers. Far above `proxy.max_connections` (16,384 by
/// default): the map overflows only when closing records are lost (dropped from a full queue),
/// and then the oldest sessions are forgotten first.
pub const MAX_SESSIONS: usize = 65_536;
/// Statement text a condensed record keeps: enough to recognise the statement (its whole
/// length and SHA-256 are kept too).
pub const CONDENSED_TEXT_BYTES: usize = 64;
/// The key of records whose session is not known.
pub const UNATTRIBUTED: &str = "unattributed";
/// The ring's framing around a record's payload (`ring.rs`: a 64-byte header, records 8-byte
/// aligned): what a record costs the ring, and so what it is charged.
const RECORD_HEADER_BYTES: u64 = 64;

/// The bytes a record with a payload of `payload` bytes takes in the ring.
pub fn ring_bytes_of(payload: usize) -> u64 {
    (RECORD_HEADER_BYTES + payload as u64 + 7) & !7
}

/// The key an identity's records are charged to: its tenant (`Identity::tenant_key`), the
/// same key the proxy's connection limits count under.
pub fn identity_key(identity: &Identity) -> String {
    identity.tenant_key()
}

/// What the writer does with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Write it as it is.
    Keep,
    /// Write it condensed (`condense`): its identity is over its share.
    Condense,
    /// Do not write it (counted): its identity is over twice its share.
    Drop,
}

/// Who a record is charged to, and whether it may be condensed or dropped.
#[derive(Debug, Clone)]
pub struct Charge {
    /// None: the agent's own records (seals, flood summaries, refusals of unattributed flows).
    key: Option<Arc<str>>,
    /// What may be done to the record when its identity is over its share.
    shed: Shed,
}

/// How a record may be shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shed {
    /// Never (the agent's own records, an operator's actions).
    Never,
    /// Statements and their outcomes: condensed over the share, dropped over twice it.
    Statement,
    /// Connection and approval records: whole, until an identity is over four times its share
    /// (opening connections, or holding statements, in a loop is a flood too); then dropped and
    /// counted.
    Connection,
}

/// One identity's flood over one summary period: written into the ring as `audit_flood`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flood {
    /// The identity's key (`identity:NAME`, `container:ID`, `uid:N` or `unattributed`).
    pub identity: String,
    /// How long the period was (the window, or less at shutdown).
    pub window_ms: u64,
    /// Bytes of the identity's records written into the ring in the period.
    pub written_bytes: u64,
    /// Its records written condensed, and those not written, in the period.
    pub condensed: u64,
    pub dropped: u64,
    /// The identity's share per window (`identity_share` × `ring_bytes`); condensing starts
    /// above it and dropping above twice it.
    pub share_bytes: u64,
}

/// One identity's usage: bytes per sub-window, and what happened since the last summary.
#[derive(Debug)]
struct Account {
    /// Bytes written in sub-window `e` are in `slots[e % SUB_WINDOWS]`.
    slots: [u64; SUB_WINDOWS],
    /// The sub-window `slots` were last brought up to.
    epoch: u64,
    written: u64,
    condensed: u64,
    dropped: u64,
}

impl Account {
    fn new(epoch: u64) -> Self {
        Self { slots: [0; SUB_WINDOWS], epoch, written: 0, condensed: 0, dropped: 0 }
    }

    /// Moves to sub-window `epoch`, emptying the slots of the sub-windows that left the window.
    fn advance(&mut self, epoch: u64) {
        if epoch <= self.epoch {
            return;
        }
        if epoch - self.epoch >= SUB_WINDOWS as u64 {
            self.slots = [0; SUB_WINDOWS];
        } else {
            for e in self.epoch + 1..=epoch {
                self.slots[(e % SUB_WINDOWS as u64) as usize] = 0;
            }
        }
        self.epoch = epoch;
    }

    /// Bytes written within the window.
    fn used(&self) -> u64 {
        self.slots.iter().sum()
    }
}

/// The writer's per-identity accounting (one per writer; not shared).
#[derive(Debug)]
pub struct FairShare {
    share_bytes: u64,
    window: Duration,
    sub_window_ms: u64,
    clock: Arc<dyn Clock>,
    started: Instant,
    /// The identity key of each open session.
    sessions: Lru<SessionId, Arc<str>>,
    accounts: HashMap<Arc<str>, Account>,
    /// When the current summary period began (ms since `started`).
    period_start_ms: u64,
    unattributed: Arc<str>,
    /// False with `audit.required`: every statement must have its record, so an identity over
    /// twice its share is condensed, never dropped.
    may_drop: bool,
}

impl FairShare {
    /// The accounting `config` asks for; none when `audit.identity_share` is 1 (disabled).
    pub fn new(config: &AuditConfig, clock: Arc<dyn Clock>) -> Option<Self> {
        if config.identity_share >= 1.0 {
            return None;
        }
        let window = Duration::from_secs(config.identity_window_s.max(1));
        let started = clock.now();
        Some(Self {
            share_bytes: (config.ring_bytes as f64 * config.identity_share) as u64,
            window,
            sub_window_ms: (window.as_millis() as u64 / SUB_WINDOWS as u64).max(1),
            clock,
            started,
            sessions: Lru::new(MAX_SESSIONS),
            accounts: HashMap::new(),
            period_start_ms: 0,
            unattributed: Arc::from(UNATTRIBUTED),
            // With an exporter the off-host trail is the complete one: records are condensed for
            // the local ring, never dropped before the exporter could ship them.
            may_drop: !config.required && config.export.is_none(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.clock.now().saturating_duration_since(self.started).as_millis() as u64
    }

    /// The shared copy of `key` (one allocation per identity, not per session).
    fn intern(&self, key: String) -> Arc<str> {
        match self.accounts.get_key_value(key.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        }
    }

    fn session_key(&self, session: SessionId) -> Arc<str> {
        self.sessions.peek(&session).cloned().unwrap_or_else(|| self.unattributed.clone())
    }

    /// Says who `event` is charged to; learns a session's identity from its opening record and
    /// forgets it at its close.
    pub fn charge_for(&mut self, event: &Event) -> Charge {
        let (key, shed) = match event {
            Event::ConnectionOpen { session, identity, .. } => {
                let key = self.intern(identity_key(identity));
                // Learnt even when the record itself is shed: its statements are charged here.
                // The oldest session is forgotten when the map is full (its close was lost).
                self.sessions.insert(*session, key.clone());
                (Some(key), Shed::Connection)
            }
            // Observed sessions carry no statements: not worth a place in the session map.
            Event::Observed { identity, .. } => (Some(self.intern(identity_key(identity))), Shed::Connection),
            Event::ConnectionClose { session, .. } => {
                (Some(self.sessions.remove(session).unwrap_or_else(|| self.unattributed.clone())), Shed::Connection)
            }
            Event::ObservedClose { .. } => (None, Shed::Never),
            Event::Statement(s) => (Some(self.session_key(s.session)), Shed::Statement),
            Event::StatementEnd(e) => (Some(self.session_key(e.session)), Shed::Statement),
            // A workload makes its own approval records (holding and leaving in a loop): they
            // are charged to it like its connections.
            Event::ApprovalRequested(request) => (Some(self.session_key(request.session)), Shed::Connection),
            // An approver's decision is an operator's action: never shed.
            Event::ApprovalDecided { session, outcome, .. } => {
                let shed = match outcome {
                    crate::approval::Outcome::Approved { .. } | crate::approval::Outcome::Denied { .. } => Shed::Never,
                    _ => Shed::Connection,
                };
                (Some(self.session_key(*session)), shed)
            }
            Event::SessionTerminated { session, .. } => (Some(self.session_key(*session)), Shed::Never),
            Event::IdentityRelabelled { session, .. } => (Some(self.session_key(*session)), Shed::Connection),
            Event::ConnectionRefused { identity, .. } => (Some(self.intern(identity_key(identity))), Shed::Connection),
            Event::Ungoverned { identity, .. } | Event::RefusedNotServing { identity, .. } => {
                (Some(self.intern(identity_key(identity))), Shed::Never)
            }
            Event::ProxyRefused { .. } | Event::EndpointsChanged { .. } | Event::AuditFlood(_) => (None, Shed::Never),
        };
        Charge { key, shed }
    }

    fn account(&mut self, key: &Arc<str>, epoch: u64) -> &mut Account {
        let account = self.accounts.entry(key.clone()).or_insert_with(|| Account::new(epoch));
        account.advance(epoch);
        account
    }

    /// What to do with a record charged `charge`, by what its identity wrote within the window
    /// so far. A dropped record is counted here.
    pub fn admit(&mut self, charge: &Charge, evicting: bool) -> Admission {
        let Some(key) = charge.key.as_ref().filter(|_| charge.shed != Shed::Never && evicting) else {
            return Admission::Keep;
        };
        let (share, epoch, may_drop) = (self.share_bytes, self.now_ms() / self.sub_window_ms, self.may_drop);
        let shed = charge.shed;
        let account = self.account(key, epoch);
        let used = account.used();
        match shed {
            Shed::Connection if used > share.saturating_mul(4) && may_drop => {
                account.dropped += 1;
                Admission::Drop
            }
            Shed::Statement if used > share.saturating_mul(2) && may_drop => {
                account.dropped += 1;
                Admission::Drop
            }
            Shed::Statement if used > share => Admission::Condense,
            _ => Admission::Keep,
        }
    }

    /// Counts `n` more records dropped with one `admit` dropped (a statement written with its
    /// outcome is two).
    pub fn dropped_also(&mut self, charge: &Charge, n: u64) {
        let Some(key) = &charge.key else { return };
        let epoch = self.now_ms() / self.sub_window_ms;
        self.account(key, epoch).dropped += n;
    }

    /// Accounts a record written into the ring: `bytes` of it (`ring_bytes_of`), and how many
    /// records it stands for were condensed (none; one; two for a statement written with its
    /// outcome, counted as drops are).
    pub fn written(&mut self, charge: &Charge, bytes: u64, condensed: u64) {
        let Some(key) = &charge.key else { return };
        let epoch = self.now_ms() / self.sub_window_ms;
        let account = self.account(key, epoch);
        account.slots[(epoch % SUB_WINDOWS as u64) as usize] += bytes;
        account.written += bytes;
        account.condensed += condensed;
    }

    /// The flood summaries of the period that just ended, once a window has passed since the
    /// last ones (none otherwise, and none for identities that stayed within their share).
    pub fn due(&mut self) -> Vec<Flood> {
        let now = self.now_ms();
        if now.saturating_sub(self.period_start_ms) < self.window.as_millis() as u64 {
            return Vec::new();
        }
        self.summarise_at(now)
    }

    /// The flood summaries of the period so far, whether or not a window has passed (at
    /// shutdown), starting a new period.
    pub fn summarise(&mut self) -> Vec<Flood> {
        let now = self.now_ms();
        self.summarise_at(now)
    }

    fn summarise_at(&mut self, now: u64) -> Vec<Flood> {
        let (window_ms, share_bytes) = (now - self.period_start_ms, self.share_bytes);
        let epoch = now / self.sub_window_ms;
        let mut floods = Vec::new();
        self.accounts.retain(|key, account| {
            if account.condensed > 0 || account.dropped > 0 {
                floods.push(Flood {
                    identity: key.to_string(),
                    window_ms,
                    written_bytes: account.written,
                    condensed: account.condensed,
                    dropped: account.dropped,
                    share_bytes,
                });
            }
            (account.written, account.condensed, account.dropped) = (0, 0, 0);
            // Identities with nothing left in the window are forgotten: the map holds only
            // those active within the last window.
            account.advance(epoch);
            account.used() > 0
        });
        floods.sort_by(|a, b| a.identity.cmp(&b.identity));
        self.period_start_ms = now;
        floods
    }
}

/// Condenses a statement record: the text cut to `CONDENSED_TEXT_BYTES` (with the whole text's
/// length and SHA-256, as for text over `audit.max_text_bytes`), no parameters, no tags. Class,
/// relations, verdict and masking stay: they say what the statement did. A `statement_end` is
/// small already and is only flagged (by the writer).
pub fn condense(event: &mut Event) {
    let Event::Statement(statement) = event else { return };
    if statement.text.len() > CONDENSED_TEXT_BYTES {
        if statement.text_sha256.is_none() {
            // The text is still whole here (`text_bytes` is its length): hash it before cutting.
            let digest = Sha256::digest(statement.text.as_bytes());
            statement.text_sha256 = Some(digest.iter().map(|b| format!("{b:02x}")).collect());
        }
        let mut cut = CONDENSED_TEXT_BYTES;
        while !statement.text.is_char_boundary(cut) {
            cut -= 1;
        }
        statement.text = Arc::from(&statement.text[..cut]);
    }
    statement.params = None;
    statement.tags = Arc::default();
    // What simulation judges again by: a condensed record is not judged again.
    statement.facts = None;
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path, sync::atomic::Ordering};

    use super::*;
    use crate::{
        audit::{AuditLog, Envelope, Outcome, Statement, StatementEnd, Verdict, ring},
        cgroup::CgroupId,
        config::Config,
        identity::ManualClock,
    };

    fn identity(label: Option<&str>, container: Option<&str>, cgroup: u64) -> Identity {
        Identity {
            pid: 42,
            comm: "psql".into(),
            exe: None,
            uid: 1000,
            user: None,
            gid: 1000,
            cgroup_id: CgroupId(cgroup),
            cgroup: None,
            container_id: container.map(str::to_string),
            container_runtime: None,
            pod_uid: None,
            pod: None,
            labels: label.map(|l| BTreeMap::from([("warden/identity".to_string(), l.to_string())])).unwrap_or_default(),
            netns_cookie: 1,
        }
    }

    fn open(session: u64, name: &str) -> Event {
        Event::ConnectionOpen {
            session: SessionId(session),
            database: "main".into(),
            orig_dst: "127.0.0.1:5432".parse().expect("address"),
            client: "127.0.0.1:40000".parse().expect("address"),
            upstream_local: None,
            db_user: Some("app".into()),
            db_name: Some("app".into()),
            db_role: None,
            application_name: None,
            client_tls: false,
            upstream_tls: false,
            cancel_request: false,
            identity: Box::new(identity(Some(name), None, 7)),
        }
    }

    fn close(session: u64) -> Event {
        Event::ConnectionClose {
            session: SessionId(session),
            database: "main".into(),
            bytes_from_client: 0,
            bytes_from_server: 0,
            statements: 0,
            rows: 0,
            duration_ms: 0,
            error: None,
        }
    }

    fn statement(session: u64, n: u64, text: &str) -> Event {
        Event::Statement(Box::new(Statement {
            session: SessionId(session),
            statement: n,
            part: 0,
            database: "main".into(),
            protocol: "extended",
            text: Arc::from(text),
            text_bytes: text.len(),
            text_sha256: None,
            params: Some(vec![Some("4711".into()), None]),
            function_oid: None,
            class: "read",
            class_reason: None,
            relations: Arc::from(vec!["orders".to_string()]),
            verdict: Verdict::allow(),
            masked: Arc::default(),
            tags: Arc::new(BTreeMap::from([("application".to_string(), "recsys".to_string())])),
            role: None,
            would: None,
            facts: None,
            limits: Vec::new(),
        }))
    }

    fn end(session: u64, n: u64) -> Event {
        Event::StatementEnd(Box::new(StatementEnd {
            session: SessionId(session),
            statement: n,
            part: 0,
            outcome: Outcome::Completed,
            rows: 1,
            command_tag: Some("SELECT 1".into()),
            duration_us: 10,
            error: None,
            stopped: None,
        }))
    }

    /// Fair shares of a 100,000-byte ring: 25,000 bytes per identity per 60 s window.
    fn fair_share(clock: &Arc<ManualClock>) -> FairShare {
        let config = AuditConfig { ring_bytes: 100_000, identity_share: 0.25, ..AuditConfig::default() };
        FairShare::new(&config, clock.clone()).expect("enabled")
    }

    /// Offers `event` as the writer does, charging `bytes` if it is written.
    fn offer(share: &mut FairShare, event: &Event, bytes: u64) -> Admission {
        let charge = share.charge_for(event);
        let admission = share.admit(&charge, true);
        if admission != Admission::Drop {
            share.written(&charge, bytes, u64::from(admission == Admission::Condense));
        }
        admission
    }

    #[test]
    fn a_flood_is_condensed_then_dropped_and_a_bystander_is_untouched() {
        let clock = Arc::new(ManualClock::new());
        let mut share = fair_share(&clock);
        assert_eq!(offer(&mut share, &open(1, "flood"), 600), Admission::Keep);
        assert_eq!(offer(&mut share, &open(2, "bystander"), 600), Admission::Keep);
        let mut seen = Vec::new();
        for n in 1..=200 {
            // 500-byte records, 10 ms apart: the whole flood lies within one window.
            clock.advance(Duration::from_millis(10));
            seen.push(offer(&mut share, &statement(1, n, "select ?"), 500));
            if n % 20 == 0 {
                assert_eq!(offer(&mut share, &statement(2, n, "select ?"), 500), Admission::Keep, "bystander");
            }
        }
        // 600 bytes of connection record, then records are kept while usage is at most the
        // share (25,000), condensed while at most twice it, then dropped.
        let count = |a: Admission| seen.iter().filter(|s| **s == a).count();
        assert_eq!((count(Admission::Keep), count(Admission::Condense), count(Admission::Drop)), (49, 50, 101));
        assert!(seen.windows(2).all(|w| w[0] as u8 <= w[1] as u8), "keep, then condense, then drop: {seen:?}");
        // Connection records are never condensed or dropped, however far over its share.
        assert_eq!(offer(&mut share, &open(3, "flood"), 600), Admission::Keep);
        assert_eq!(offer(&mut share, &close(3), 300), Admission::Keep);

        let floods = share.summarise();
        assert_eq!(
            floods,
            vec![Flood {
                identity: "identity:flood".into(),
                window_ms: 2_000,
                written_bytes: 600 + 99 * 500 + 600 + 300,
                condensed: 50,
                dropped: 101,
                share_bytes: 25_000,
            }],
            "only the flooding identity has a summary, and its counts add up to what it offered"
        );
        assert_eq!(share.summarise(), Vec::new(), "counts start again after a summary");
    }

    #[test]
    fn a_flood_of_connections_is_dropped_past_four_shares() {
        let clock = Arc::new(ManualClock::new());
        let mut share = fair_share(&clock);
        // 600-byte opening records: the share is 25,000 bytes, four shares 100,000.
        let seen: Vec<Admission> = (1..=200).map(|n| offer(&mut share, &open(n, "churn"), 600)).collect();
        assert!(!seen.contains(&Admission::Condense), "connection records are whole or not at all");
        assert_eq!(seen.iter().filter(|a| **a == Admission::Keep).count(), 167);
        assert_eq!(offer(&mut share, &open(999, "bystander"), 600), Admission::Keep);
    }

    #[test]
    fn with_audit_required_a_flood_is_condensed_but_never_dropped() {
        let clock = Arc::new(ManualClock::new());
        let config =
            AuditConfig { ring_bytes: 100_000, identity_share: 0.25, required: true, ..AuditConfig::default() };
        let mut share = FairShare::new(&config, clock.clone()).expect("enabled");
        offer(&mut share, &open(1, "flood"), 600);
        let seen: Vec<Admission> = (1..=200).map(|n| offer(&mut share, &statement(1, n, "select ?"), 500)).collect();
        assert!(!seen.contains(&Admission::Drop), "a statement lost its record under audit.required");
        assert_eq!(seen.iter().filter(|a| **a == Admission::Condense).count(), 151);
    }

    #[test]
    fn summaries_come_once_per_window_and_the_window_moves_on() {
        let clock = Arc::new(ManualClock::new());
        let mut share = fair_share(&clock);
        offer(&mut share, &open(1, "flood"), 0);
        // 20,000 bytes at 0 s and 10,000 at 30 s: over the share (25,000) from then on.
        assert_eq!(offer(&mut share, &statement(1, 1, "a"), 20_000), Admission::Keep);
        clock.advance(Duration::from_secs(30));
        assert_eq!(offer(&mut share, &statement(1, 2, "b"), 10_000), Admission::Keep);
        assert_eq!(offer(&mut share, &end(1, 2), 100), Admission::Condense);
        clock.advance(Duration::from_millis(29_999));
        assert_eq!(share.due(), Vec::new(), "no summary before a window has passed");

        clock.advance(Duration::from_millis(1));
        let floods = share.due();
        assert_eq!(
            floods
                .iter()
                .map(|f| (f.identity.as_str(), f.window_ms, f.written_bytes, f.condensed, f.dropped))
                .collect::<Vec<_>>(),
            vec![("identity:flood", 60_000, 30_100, 1, 0)]
        );
        assert_eq!(share.due(), Vec::new(), "the next summary comes a window later");

        // At 60 s the bytes of the first sub-window (0-10 s) have left the window; those of
        // 30 s have not: 10,100 bytes are in it.
        assert_eq!(offer(&mut share, &statement(1, 3, "c"), 20_000), Admission::Keep);
        assert_eq!(offer(&mut share, &statement(1, 4, "d"), 100), Admission::Condense);
        assert_eq!(offer(&mut share, &statement(1, 5, "e"), 30_000), Admission::Condense);
        // Over twice the share (50,000): dropped.
        assert_eq!(offer(&mut share, &end(1, 5), 100), Admission::Drop);
        clock.advance(Duration::from_secs(60));
        let floods = share.due();
        assert_eq!(
            floods.iter().map(|f| (f.window_ms, f.written_bytes, f.condensed, f.dropped)).collect::<Vec<_>>(),
            vec![(60_000, 50_100, 2, 1)]
        );

        // A window after the flood its bytes have left the window: records are whole again, and
        // a window without condensing or dropping has no summary.
        assert_eq!(offer(&mut share, &statement(1, 6, "f"), 100), Admission::Keep);
        clock.advance(Duration::from_secs(60));
        assert_eq!(share.due(), Vec::new());
    }

    #[test]
    fn sessions_are_learnt_from_connection_records_and_forgotten_at_close() {
        let clock = Arc::new(ManualClock::new());
        let mut share = fair_share(&clock);
        let key = |c: &Charge| c.key.as_deref().map(str::to_string);
        assert_eq!(key(&share.charge_for(&open(1, "etl"))), Some("identity:etl".into()));
        assert_eq!(key(&share.charge_for(&statement(1, 1, "x"))), Some("identity:etl".into()));
        assert_eq!(key(&share.charge_for(&close(1))), Some("identity:etl".into()), "the close is charged too");
        assert_eq!(key(&share.charge_for(&end(1, 1))), Some(UNATTRIBUTED.into()), "forgotten at close");
        let refused = Event::ProxyRefused { client: "127.0.0.1:1".parse().expect("address"), reason: "x".into() };
        assert_eq!(key(&share.charge_for(&refused)), None, "the agent's own records are charged to no one");

        // The map is bounded: past MAX_SESSIONS open sessions the oldest is forgotten.
        for s in 10..10 + MAX_SESSIONS as u64 + 1 {
            share.charge_for(&open(s, "many"));
        }
        assert_eq!(share.sessions.len(), MAX_SESSIONS);
        assert_eq!(key(&share.charge_for(&statement(10, 1, "x"))), Some(UNATTRIBUTED.into()));
        assert_eq!(key(&share.charge_for(&statement(11, 1, "x"))), Some("identity:many".into()));
    }

    #[test]
    fn identity_keys_match_the_connection_limit_keys() {
        assert_eq!(identity_key(&identity(Some("etl"), Some("abc123"), 7)), "identity:etl");
        assert_eq!(identity_key(&identity(None, Some("abc123"), 7)), "container:abc123");
        assert_eq!(identity_key(&identity(None, None, 7)), "uid:1000", "cgroups are cheap to make; users are not");
        assert_eq!(identity_key(&identity(None, None, 8)), identity_key(&identity(None, None, 7)));
        // A label cannot take another tenant's container or user budget.
        assert_ne!(identity_key(&identity(Some("uid:1000"), None, 8)), identity_key(&identity(None, None, 7)));
    }

    #[test]
    fn a_condensed_statement_keeps_what_an_auditor_needs() {
        let text = format!("select {} from orders where note = ?", "é".repeat(60));
        let mut event = statement(1, 1, &text);
        condense(&mut event);
        let Event::Statement(s) = &event else { panic!("a statement") };
        assert!(s.text.len() <= CONDENSED_TEXT_BYTES && text.starts_with(&*s.text), "{}", s.text);
        assert_eq!(s.text.len(), CONDENSED_TEXT_BYTES - 1, "cut at a character boundary");
        assert_eq!(s.text_bytes, text.len(), "the whole length");
        let digest: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s.text_sha256.as_deref(), Some(digest.as_str()), "the hash of the whole text");
        assert!(s.params.is_none() && s.tags.is_empty());
        assert_eq!((&*s.relations, s.class), (&["orders".to_string()][..], "read"));

        let json =
            serde_json::to_value(Envelope { at_ms: 1, event: &event, end: None, condensed: true }).expect("json");
        assert_eq!((json["kind"].as_str(), json["condensed"].as_bool()), (Some("statement"), Some(true)));
        let whole =
            serde_json::to_value(Envelope { at_ms: 1, event: &statement(1, 1, "x"), end: None, condensed: false });
        assert!(whole.expect("json").get("condensed").is_none(), "whole records do not carry the flag");
    }

    #[test]
    fn the_writer_condenses_drops_and_says_so_in_the_ring() {
        let dir = crate::test_dir("warden-share-test-");
        // 1 MiB ring, a share of 1/16: 64 KiB per identity per window.
        let config = AuditConfig {
            path: dir.path().join("audit.ring"),
            ring_bytes: 1024 * 1024,
            identity_share: 1.0 / 16.0,
            ..AuditConfig::default()
        };
        let (log, writer) = AuditLog::open(&config).expect("open");
        // Nothing is shed before the ring is full: an earlier workload fills it first.
        log.try_record(open(3, "earlier")).expect("queued");
        let filler = format!("select * from history where id = ? /* {} */", "y".repeat(300));
        for n in 1..=3_000 {
            log.try_record(statement(3, n, &filler)).expect("queued");
        }
        log.try_record(open(1, "bystander")).expect("queued");
        log.try_record(statement(1, 1, "select 'the bystander was here'")).expect("queued");
        log.try_record(open(2, "flood")).expect("queued");
        let long = format!("select * from orders where id = ? /* {} */", "x".repeat(200));
        for n in 1..=1_000 {
            log.try_record(statement(2, n, &long)).expect("queued");
            log.try_record(end(2, n)).expect("queued");
        }
        log.try_record(statement(1, 2, "select 'still here'")).expect("queued");
        log.try_record(close(2)).expect("queued");
        let counters = log.counters.clone();
        drop(log);
        writer.join();

        let records: Vec<serde_json::Value> = ring::RingFile::open(&config.path)
            .expect("ring")
            .records(0)
            .into_iter()
            .filter(|r| r.kind == ring::Kind::Event)
            .map(|r| serde_json::from_slice(&r.payload).expect("JSON"))
            .collect();
        let of = |session: u64| records.iter().filter(move |r| r["session"] == session);
        let bystander: Vec<_> = of(1).collect();
        assert_eq!(bystander.len(), 3, "{bystander:?}");
        assert!(bystander.iter().all(|r| r.get("condensed").is_none()), "{bystander:?}");
        // Events a record stands for: a statement written with its outcome is two.
        let events = |r: &serde_json::Value| 1 + u64::from(r["kind"] == "statement" && r["outcome"].is_string());
        let condensed = of(2).filter(|r| r["condensed"] == true).map(events).sum::<u64>();
        let whole = of(2)
            .filter(|r| matches!(r["kind"].as_str(), Some("statement" | "statement_end")))
            .map(events)
            .sum::<u64>()
            - condensed;
        assert!(whole > 0 && condensed > 0, "whole {whole}, condensed {condensed}");
        assert!(of(2).any(|r| r["kind"] == "connection_close"), "connection records stay");
        assert!(
            of(2).filter(|r| r["condensed"] == true && r["kind"] == "statement").all(|r| r["text"]
                .as_str()
                .is_some_and(|t| t.len() <= CONDENSED_TEXT_BYTES)
                && r["params"].is_null()
                && r["tags"] == serde_json::json!({})),
            "condensed statements keep a prefix, no parameters, no tags"
        );

        // The shutdown summary: every record of the flood is accounted for.
        let floods: Vec<_> =
            records.iter().filter(|r| r["kind"] == "audit_flood" && r["identity"] == "identity:flood").collect();
        assert_eq!(floods.len(), 1, "{floods:?}");
        let flood = floods[0];
        assert_eq!(flood["identity"], "identity:flood");
        assert_eq!(flood["share_bytes"], 64 * 1024);
        // Condensed, dropped and whole alike count events: 2,000 of them.
        assert_eq!(flood["condensed"].as_u64(), Some(condensed));
        assert_eq!(whole + condensed + flood["dropped"].as_u64().expect("dropped"), 2_000, "{flood}");
        let written: u64 = ring::RingFile::open(&config.path)
            .expect("ring")
            .records(0)
            .iter()
            .filter(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).is_ok_and(|v| v["session"] == 2))
            .map(|r| ring_bytes_of(r.payload.len()))
            .sum();
        assert_eq!(flood["written_bytes"].as_u64(), Some(written), "written bytes are the ring's bytes");
        assert!(written <= 2 * 64 * 1024 + 2 * 1024, "at most twice the share, and one record over: {written}");
        let dropped = flood["dropped"].as_u64().expect("dropped");
        // The counters add up every identity's summaries (the earlier workload was shed too once
        // the ring was full).
        let all: Vec<_> = records.iter().filter(|r| r["kind"] == "audit_flood").collect();
        let sum = |k: &str| all.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
        assert_eq!(
            (counters.share_condensed.load(Ordering::Relaxed), counters.share_dropped.load(Ordering::Relaxed)),
            (sum("condensed"), sum("dropped"))
        );
        assert!(dropped > 0);
        // `warden audit stats` shows them per identity. Fair-share drops are policy, not loss:
        // `lost` stays 0, and the chain has no gap (dropped records never got a sequence number).
        let stats = crate::audit::cli::stats(&config.path).expect("stats");
        assert_eq!(
            (
                stats["floods"]["identity:flood"]["condensed"].as_u64(),
                stats["floods"]["identity:flood"]["dropped"].as_u64()
            ),
            (Some(condensed), Some(dropped)),
            "{stats}"
        );
        assert_eq!(stats["floods"].as_object().map(|f| f.len()), Some(2), "the flood and the earlier filler: {stats}");
        assert_eq!(stats["lost"], 0, "{stats}");
        let v = crate::audit::cli::verify(&config.path, Some(&config.key_path())).expect("verify");
        assert!(v.problems.is_empty(), "{v:?}");
    }

    #[test]
    fn a_share_of_one_disables_the_accounting_and_bad_values_are_refused() {
        let config = |audit: &str| {
            Config::parse(
                Path::new("warden.yaml"),
                &format!("databases:\n  - {{name: a, address: '*:1'}}\naudit:\n{audit}\n"),
            )
        };
        let c = config("  durability: periodic").expect("defaults");
        assert_eq!((c.audit.identity_share, c.audit.identity_window_s), (0.25, 60));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new());
        assert!(FairShare::new(&c.audit, clock.clone()).is_some());
        let c = config("  identity_share: 1.0").expect("disabled");
        assert!(FairShare::new(&c.audit, clock).is_none());
        for bad in ["0", "1.5", "-0.25", ".nan"] {
            let err = config(&format!("  identity_share: {bad}")).expect_err(bad).to_string();
            assert!(err.contains("audit.identity_share") && err.contains("expected a fraction"), "{bad}: {err}");
        }
        let err = config("  identity_window_s: 0").expect_err("zero").to_string();
        assert!(err.contains("audit.identity_window_s: expected 1 to 86400 seconds"), "{err}");
    }
}
