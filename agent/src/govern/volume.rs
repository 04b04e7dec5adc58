//! Volume limits in a session's judgement: the limits each statement is judged to have
//! (recorded with it), the per-tenant windows the host's sessions share, and the counter each
//! result is measured against while it streams.
//!
//! What is counted: rows and bytes of DataRows, and of COPY data (PostgreSQL sends one CopyData
//! per row), as the client gets them. A statement's count runs across the Executes of a portal
//! read in pieces, and a cursor's across its FETCHes (reset when a DECLARE of its name
//! succeeds, which the server allows only once the old cursor is gone). A window's count is
//! per tenant (`Identity::tenant_key`: a pod's namespace, else its `warden/identity` label,
//! else its container, else its user), policy and rule, on this host; it starts with the
//! first row counted and lasts `per`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use crate::{
    policy::limits::{Cap, Limit},
    session::{
        SqlState,
        hooks::{Cut, ResultLimit},
    },
};

/// Windows kept host-wide (beyond it, expired ones are forgotten; then new ones start full).
const MAX_WINDOWS: usize = 100_000;
/// The most one result takes from a window at a time (rows, bytes).
const WINDOW_CHUNK: (u64, u64) = (1024, 4 << 20);

/// Rows and bytes sent so far (a statement's, or a cursor's).
#[derive(Debug, Default)]
pub struct Volume {
    rows: AtomicU64,
    bytes: AtomicU64,
}

impl Volume {
    /// A volume already at `cap` (what stands for a count that was forgotten: fail closed).
    pub fn exhausted() -> Arc<Volume> {
        Arc::new(Volume { rows: AtomicU64::new(u64::MAX / 2), bytes: AtomicU64::new(u64::MAX / 2) })
    }

    fn get(&self) -> (u64, u64) {
        (self.rows.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    fn add(&self, rows: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One tenant's window of a `per` limit.
#[derive(Debug)]
pub struct Window {
    state: Mutex<WindowState>,
}

#[derive(Debug, Default)]
struct WindowState {
    /// The cap in force (a reload changes it in place: what the window counted stays).
    cap: Option<Cap>,
    started: Option<Instant>,
    /// Sent in the window.
    rows: u64,
    bytes: u64,
    /// Taken by results that have not sent it yet.
    taken_rows: u64,
    taken_bytes: u64,
}

impl WindowState {
    fn per(&self) -> Duration {
        self.cap.and_then(|c| c.per).unwrap_or(Duration::from_secs(60))
    }

    fn passed(&self) -> bool {
        self.started.is_some_and(|t| t.elapsed() >= self.per())
    }

    fn reset(&mut self, started: Option<Instant>) {
        *self = WindowState { cap: self.cap, started, ..WindowState::default() };
    }
}

impl Window {
    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.passed() {
            s.reset(None);
        }
        s
    }

    /// Rows and bytes sent in the window now, and when it ends (`None`: not started).
    fn used(&self) -> (u64, u64, Option<Instant>) {
        let s = self.lock();
        (s.rows, s.bytes, s.started.map(|t| t + s.per()))
    }

    /// Takes up to `want` (rows, bytes) from what the window has left: what it took, and the
    /// window it was taken in (by its start). What one result takes at a time is a sixteenth of
    /// the cap (at most 1,024 rows or 4 MiB; at least the row about to be sent), so that the
    /// tenant's other sessions find some left.
    fn take(&self, want: (u64, u64), next_row: u64) -> (u64, u64, Option<Instant>) {
        let mut s = self.lock();
        if s.started.is_none() {
            s.reset(Some(Instant::now()));
        }
        let cap = s.cap.unwrap_or(Cap { rows: None, bytes: None, per: None });
        let chunk_rows = cap.rows.map_or(WINDOW_CHUNK.0, |c| (c / 16).clamp(1, WINDOW_CHUNK.0));
        let chunk_bytes = cap.bytes.map_or(WINDOW_CHUNK.1, |c| (c / 16).clamp(1, WINDOW_CHUNK.1)).max(next_row);
        let rows =
            want.0.min(chunk_rows).min(cap.rows.map_or(u64::MAX / 2, |c| c.saturating_sub(s.rows + s.taken_rows)));
        let bytes =
            want.1.min(chunk_bytes).min(cap.bytes.map_or(u64::MAX / 2, |c| c.saturating_sub(s.bytes + s.taken_bytes)));
        s.taken_rows = s.taken_rows.saturating_add(rows);
        s.taken_bytes = s.taken_bytes.saturating_add(bytes);
        (rows, bytes, s.started)
    }

    /// Rows and bytes taken in the window that started at `started` were sent.
    fn settle(&self, started: Option<Instant>, rows: u64, bytes: u64) {
        let mut s = self.lock();
        if s.started.is_none() {
            s.reset(Some(Instant::now()));
        }
        if s.started == started {
            s.taken_rows = s.taken_rows.saturating_sub(rows);
            s.taken_bytes = s.taken_bytes.saturating_sub(bytes);
        }
        s.rows = s.rows.saturating_add(rows);
        s.bytes = s.bytes.saturating_add(bytes);
    }

    /// Gives back what was taken in the window that started at `started` and not sent (a
    /// window that passed meanwhile has nothing to give back to).
    fn give_back(&self, started: Option<Instant>, rows: u64, bytes: u64) {
        let mut s = self.lock();
        if s.started == started {
            s.taken_rows = s.taken_rows.saturating_sub(rows);
            s.taken_bytes = s.taken_bytes.saturating_sub(bytes);
        }
    }

    /// Whether the window has nothing left, and until when.
    fn exhausted(&self) -> Option<Instant> {
        let s = self.lock();
        let cap = s.cap?;
        let full = cap.rows.is_some_and(|c| s.rows >= c) || cap.bytes.is_some_and(|c| s.bytes >= c);
        if full { s.started.map(|t| t + s.per()) } else { None }
    }

    fn expired(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.started.is_none() || s.passed()
    }
}

/// A window's key: (policy, rule, tenant).
type WindowKey = (Arc<str>, Arc<str>, String);

/// The host's windows.
#[derive(Default)]
pub struct Windows {
    map: Mutex<HashMap<WindowKey, Arc<Window>>>,
}

impl Windows {
    /// The window of `limit` for `tenant` (made when first asked; a reloaded cap applies to it
    /// in place).
    pub fn get(&self, limit: &Limit, tenant: &str) -> Arc<Window> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (limit.policy.clone(), limit.rule.clone(), tenant.to_string());
        if let Some(w) = map.get(&key) {
            let mut s = w.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.cap != Some(limit.cap) {
                s.cap = Some(limit.cap);
            }
            drop(s);
            return w.clone();
        }
        if map.len() >= MAX_WINDOWS {
            map.retain(|_, w| !w.expired());
        }
        let window =
            Arc::new(Window { state: Mutex::new(WindowState { cap: Some(limit.cap), ..WindowState::default() }) });
        map.insert(key, window.clone());
        window
    }
}

/// The limits a statement was judged to have, with the windows and cursor count they use.
#[derive(Debug)]
pub struct PartLimit {
    /// Every limit that applies (for the record).
    pub limits: Vec<Limit>,
    /// The `per` limits' windows, in the order of `limits` that have one.
    pub windows: Vec<(Limit, Arc<Window>)>,
    /// A FETCH: the count of its cursor, which every FETCH of it adds to.
    pub cursor: Option<Arc<Volume>>,
}

/// Until when a window is exhausted, as people read it.
fn until(ends: Instant) -> String {
    let left = ends.saturating_duration_since(Instant::now());
    let at = SystemTime::now() + left;
    let ms = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    format!("{} UTC (in {}s)", crate::audit::cli::utc(ms), left.as_secs() + 1)
}

impl PartLimit {
    /// The limits of both (a cursor name two DECLAREs may stand for).
    pub fn join(&self, other: &PartLimit) -> PartLimit {
        let mut limits = self.limits.clone();
        let mut windows = self.windows.clone();
        for l in &other.limits {
            if !limits.iter().any(|m| m.policy == l.policy && m.rule == l.rule) {
                limits.push(l.clone());
            }
        }
        for (l, w) in &other.windows {
            if !windows.iter().any(|(m, _)| m.policy == l.policy && m.rule == l.rule) {
                windows.push((l.clone(), w.clone()));
            }
        }
        PartLimit { limits, windows, cursor: self.cursor.clone().or_else(|| other.cursor.clone()) }
    }

    /// Why the statement is refused before it runs, if it is: a window with nothing left, or a
    /// cursor that returned its cap already.
    pub fn refusal(&self) -> Option<(Limit, String)> {
        for (limit, window) in &self.windows {
            if let Some(ends) = window.exhausted() {
                return Some((
                    limit.clone(),
                    format!(
                        "this identity read its limit of {} from what the rule matches; such statements are refused until {}",
                        limit.cap,
                        until(ends)
                    ),
                ));
            }
        }
        let cursor = self.cursor.as_ref()?;
        let (rows, bytes) = cursor.get();
        self.limits.iter().filter(|l| l.cap.per.is_none()).find_map(|l| {
            let full = l.cap.rows.is_some_and(|c| rows >= c) || l.cap.bytes.is_some_and(|c| bytes >= c);
            full.then(|| (l.clone(), format!("its cursor returned its limit of {} already", l.cap)))
        })
    }

    /// The counter a result of the statement is measured against: `volume` (the statement's
    /// count, or its cursor's), and the windows.
    pub fn measure(self: &Arc<Self>, volume: Arc<Volume>) -> Arc<dyn ResultLimit> {
        let taken = Mutex::new(vec![(0, 0, None); self.windows.len()]);
        Arc::new(Measured { part: self.clone(), volume, taken, sent: Volume::default() })
    }
}

/// Rows and bytes taken from a window and not sent yet, and the window (by its start).
type Taken = (u64, u64, Option<Instant>);

/// One result measured against its statement's limits.
struct Measured {
    part: Arc<PartLimit>,
    /// The statement's (or cursor's) count so far.
    volume: Arc<Volume>,
    /// Per window (in the order of `part.windows`): what this result took from it. Rows are
    /// taken before they are sent, so concurrent sessions of a tenant never read past a window
    /// together; what is not sent goes back when the result ends.
    taken: Mutex<Vec<Taken>>,
    /// What this result sent (a FETCH's own rows; `volume` counts its cursor's in all).
    sent: Volume,
}

impl Drop for Measured {
    fn drop(&mut self) {
        let taken = std::mem::take(self.taken.get_mut().unwrap_or_else(|p| p.into_inner()));
        for ((_, window), (rows, bytes, started)) in self.part.windows.iter().zip(taken) {
            window.give_back(started, rows, bytes);
        }
    }
}

impl Measured {
    /// Rows and bytes left under each per-statement limit.
    fn statement_left(&self) -> Vec<(&Limit, u64, u64)> {
        let (rows, bytes) = self.volume.get();
        self.part
            .limits
            .iter()
            .filter(|l| l.cap.per.is_none())
            .map(|limit| {
                (
                    limit,
                    limit.cap.rows.map_or(u64::MAX, |c| c.saturating_sub(rows)),
                    limit.cap.bytes.map_or(u64::MAX, |c| c.saturating_sub(bytes)),
                )
            })
            .collect()
    }
}

impl ResultLimit for Measured {
    fn allowance(&self, next_row: u64) -> (u64, u64) {
        let (mut rows, mut bytes) =
            self.statement_left().iter().fold((u64::MAX, u64::MAX), |(r, b), (_, lr, lb)| (r.min(*lr), b.min(*lb)));
        // From a window, what this result took from it: topped up to a chunk (never more than
        // the statement may still send).
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        for ((_, window), held) in self.part.windows.iter().zip(taken.iter_mut()) {
            if held.0 > 0 || held.1 > 0 {
                let now = window.lock().started;
                if held.2 != now {
                    // The window passed: what was held in it went with it (sending it would
                    // count in the new window without having been taken from it).
                    *held = (0, 0, now);
                }
            }
            let want = (
                WINDOW_CHUNK.0.min(rows).saturating_sub(held.0),
                WINDOW_CHUNK.1.max(next_row).min(bytes).saturating_sub(held.1),
            );
            if want.0 > 0 || want.1 > 0 {
                let (r, b, started) = window.take(want, next_row);
                if held.2 != started {
                    // The window passed: what was held in it went with it.
                    (held.0, held.1) = (0, 0);
                }
                *held = (held.0 + r, held.1 + b, started);
            }
            rows = rows.min(held.0);
            bytes = bytes.min(held.1);
        }
        (rows, bytes)
    }

    fn sent(&self, rows: u64, bytes: u64) {
        self.volume.add(rows, bytes);
        self.sent.add(rows, bytes);
        // Sent from what was taken from the windows.
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        for ((_, window), held) in self.part.windows.iter().zip(taken.iter_mut()) {
            window.settle(held.2, rows.min(held.0), bytes.min(held.1));
            held.0 = held.0.saturating_sub(rows);
            held.1 = held.1.saturating_sub(bytes);
        }
    }

    fn crossed(&self) -> Cut {
        // The limit with the least left decides (rows first: a row that does not fit).
        let mut left: Vec<(&Limit, u64, u64, Option<Instant>)> =
            self.statement_left().into_iter().map(|(l, r, b)| (l, r, b, None)).collect();
        let taken = self.taken.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ((limit, window), held) in self.part.windows.iter().zip(taken) {
            let (_, _, ends) = window.used();
            left.push((limit, held.0, held.1, ends));
        }
        let (limit, _, _, ends) = left.iter().min_by_key(|(_, rows, bytes, _)| (*rows, *bytes)).copied().unwrap_or((
            &self.part.limits[0],
            0,
            0,
            None,
        ));
        // What this result sent; a cursor's (or a portal read in pieces) in all, over every
        // FETCH or Execute.
        let (rows, bytes) = self.sent.get();
        let (all_rows, all_bytes) = self.volume.get();
        let why = match (limit.cap.per, ends) {
            (Some(_), ends) => format!(
                "this identity read its limit of {} from what the rule matches{}",
                limit.cap,
                ends.map(|e| format!("; such statements are refused until {}", until(e))).unwrap_or_default()
            ),
            (None, _) if self.part.cursor.is_some() => format!(
                "its cursor returns more than its limit of {} ({all_rows} rows, {all_bytes} bytes in all)",
                limit.cap
            ),
            (None, _) => format!("it returns more than its limit of {}", limit.cap),
        };
        Cut {
            sqlstate: SqlState::PROGRAM_LIMIT_EXCEEDED,
            message: format!(
                "warden: statement stopped by policy \"{}\" rule \"{}\": {why}; {rows} rows ({bytes} bytes) were sent",
                limit.policy, limit.rule
            ),
            policy: limit.policy.clone(),
            rule: limit.rule.clone(),
            rows,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rows: u64, per: Option<u64>) -> Limit {
        Limit {
            policy: Arc::from("p"),
            rule: Arc::from("r"),
            cap: Cap { rows: Some(rows), bytes: None, per: per.map(Duration::from_secs) },
        }
    }

    #[test]
    fn a_statement_gets_its_cap_and_is_cut_with_the_count_sent() {
        let part = Arc::new(PartLimit { limits: vec![limit(10, None)], windows: Vec::new(), cursor: None });
        let m = part.measure(Arc::new(Volume::default()));
        assert_eq!(m.allowance(0).0, 10);
        m.sent(7, 70);
        assert_eq!(m.allowance(0).0, 3);
        m.sent(3, 30);
        assert_eq!(m.allowance(0), (0, u64::MAX));
        let cut = m.crossed();
        assert_eq!((cut.rows, cut.bytes, cut.sqlstate), (10, 100, SqlState::PROGRAM_LIMIT_EXCEEDED));
        assert!(
            cut.message.contains("rule \"r\": it returns more than its limit of 10 rows per statement"),
            "{}",
            cut.message
        );
    }

    #[test]
    fn windows_are_shared_and_refuse_until_they_pass() {
        let windows = Windows::default();
        // 32 rows a minute: a result takes 2 at a time.
        let l = limit(32, Some(60));
        let part = |tenant: &str| {
            Arc::new(PartLimit {
                limits: vec![l.clone()],
                windows: vec![(l.clone(), windows.get(&l, tenant))],
                cursor: None,
            })
        };
        let (a1, a2, b) = (part("identity:a"), part("identity:a"), part("identity:b"));
        let first = a1.measure(Arc::new(Volume::default()));
        assert_eq!(first.allowance(0).0, 2);
        // A concurrent result of the tenant finds some left.
        let concurrent = a2.measure(Arc::new(Volume::default()));
        assert_eq!(concurrent.allowance(0).0, 2);
        first.sent(2, 0);
        drop(first);
        drop(concurrent);
        // What was taken and not sent went back: 30 of 32 are left, and no more.
        let second = a2.measure(Arc::new(Volume::default()));
        let mut read = 0;
        loop {
            let (rows, _) = second.allowance(0);
            if rows == 0 {
                break;
            }
            second.sent(rows, 0);
            read += rows;
        }
        assert_eq!(read, 30);
        assert_eq!(b.measure(Arc::new(Volume::default())).allowance(0).0, 2, "another tenant has its own");
        let (refused, why) = a2.refusal().expect("exhausted");
        assert_eq!(&*refused.rule, "r");
        assert!(why.contains("refused until"), "{why}");
        // A reload that raises the cap applies to the same window, counted so far.
        let raised = Limit { cap: Cap { rows: Some(64), ..l.cap }, ..l.clone() };
        let window = windows.get(&raised, "identity:a");
        assert!(window.exhausted().is_none());
        assert_eq!(window.used().0, 32);
    }

    #[test]
    fn a_share_of_a_window_that_passed_is_not_sent_in_the_next() {
        let windows = Windows::default();
        let l = limit(32, Some(60));
        // The statement may send 2 rows: all of them taken from the window at once.
        let part = Arc::new(PartLimit {
            limits: vec![limit(2, None), l.clone()],
            windows: vec![(l.clone(), windows.get(&l, "identity:a"))],
            cursor: None,
        });
        let m = part.measure(Arc::new(Volume::default()));
        assert_eq!(m.allowance(0).0, 2);
        // The window passes; another session of the tenant uses all of the next one.
        let window = &part.windows[0].1;
        window.state.lock().unwrap().started = Some(Instant::now() - Duration::from_secs(61));
        let other = Arc::new(PartLimit {
            limits: vec![l.clone()],
            windows: vec![(l.clone(), windows.get(&l, "identity:a"))],
            cursor: None,
        })
        .measure(Arc::new(Volume::default()));
        let mut read = 0;
        loop {
            let (rows, _) = other.allowance(0);
            if rows == 0 {
                break;
            }
            other.sent(rows, 0);
            read += rows;
        }
        assert_eq!(read, 32);
        assert_eq!(m.allowance(0).0, 0, "the old share is gone with its window");
        assert_eq!(window.used().0, 32);
    }

    #[test]
    fn a_cursor_counts_across_fetches() {
        let cursor = Arc::new(Volume::default());
        let part =
            Arc::new(PartLimit { limits: vec![limit(10, None)], windows: Vec::new(), cursor: Some(cursor.clone()) });
        part.measure(cursor.clone()).sent(6, 0);
        let next = part.measure(cursor);
        assert_eq!(next.allowance(0).0, 4);
        next.sent(4, 0);
        assert!(part.refusal().is_some_and(|(_, why)| why.contains("cursor")));
    }
}
