//! Connection limits: one tenant must not exhaust the proxy for the others. A connection holds a
//! slot from the moment it is attributed until it closes; past the global limit, or past its
//! identity's limit, it is refused with SQLSTATE 53300 (too many connections) before anything
//! else is read from it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// A connection could not be admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("the proxy already serves {0} connections (proxy.max_connections)")]
    Global(usize),
    #[error("identity {identity} already has {limit} connections (proxy.max_connections_per_identity)")]
    Identity { identity: String, limit: usize },
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_identity: HashMap<String, usize>,
}

/// Live connection counts, global and per identity key.
pub struct Limits {
    global: usize,
    per_identity: usize,
    counts: Mutex<Counts>,
}

/// A connection's slot; released when dropped.
pub struct Slot {
    limits: Arc<Limits>,
    identity: String,
}

impl Limits {
    pub fn new(global: usize, per_identity: usize) -> Arc<Self> {
        Arc::new(Self { global, per_identity, counts: Mutex::new(Counts::default()) })
    }

    /// Takes a slot for a connection of `identity` (a key such as `identity:etl` or
    /// `uid:1000`).
    pub fn admit(self: &Arc<Self>, identity: &str) -> Result<Slot, LimitExceeded> {
        let mut counts = self.lock();
        if counts.total >= self.global {
            return Err(LimitExceeded::Global(self.global));
        }
        let mine = counts.by_identity.get(identity).copied().unwrap_or(0);
        if mine >= self.per_identity {
            return Err(LimitExceeded::Identity { identity: identity.to_string(), limit: self.per_identity });
        }
        counts.total += 1;
        counts.by_identity.insert(identity.to_string(), mine + 1);
        Ok(Slot { limits: self.clone(), identity: identity.to_string() })
    }

    /// Connections currently holding a slot.
    pub fn total(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_identity.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                counts.by_identity.remove(&self.identity);
            }
        }
    }
}

/// Refusals of connections the redirect did not create cost nothing to provoke (anyone can dial
/// the proxy's address): each source address gets a few records a second, the rest are counted
/// and said in one record when its next second begins, so they cannot flush the audit ring.
pub struct RefusalRecords {
    per_second: u32,
    sources: Mutex<HashMap<RefusalSource, (u64, u32, u64)>>,
}

/// Whose refusals are counted together: an address (refused before any identity is known) or
/// an identity's tenant key (over its limits: pods behind one address are apart).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefusalSource {
    Address(std::net::IpAddr),
    Tenant(String),
}

/// What to record for a refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum RefusalRecord {
    /// Record this refusal (and, first, that `suppressed` earlier ones were not).
    Record { suppressed: u64 },
    /// Count it only.
    Suppress,
}

impl RefusalRecords {
    pub fn new(per_second: u32) -> Self {
        Self { per_second, sources: Mutex::new(HashMap::new()) }
    }

    /// Whether a refusal from `source` at `now_s` (seconds) is recorded.
    pub fn admit(&self, source: RefusalSource, now_s: u64) -> RefusalRecord {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if sources.len() > 65_536 {
            // Bounded: a spray of source addresses restarts the counts (a burst is recorded).
            sources.retain(|_, (second, _, suppressed)| *second == now_s || *suppressed > 0);
            if sources.len() > 65_536 {
                sources.clear();
            }
        }
        let (second, count, suppressed) = sources.entry(source).or_insert((now_s, 0, 0));
        if *second != now_s {
            *second = now_s;
            *count = 0;
        }
        *count += 1;
        if *count > self.per_second {
            *suppressed += 1;
            return RefusalRecord::Suppress;
        }
        RefusalRecord::Record { suppressed: std::mem::take(suppressed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_recorded_a_few_a_second_and_the_rest_counted() {
        let r = RefusalRecords::new(2);
        let a = || RefusalSource::Address("10.0.0.1".parse().unwrap());
        let b = RefusalSource::Tenant("identity:b".into());
        assert_eq!(r.admit(a(), 1), RefusalRecord::Record { suppressed: 0 });
        assert_eq!(r.admit(a(), 1), RefusalRecord::Record { suppressed: 0 });
        assert_eq!(r.admit(a(), 1), RefusalRecord::Suppress);
        assert_eq!(r.admit(a(), 1), RefusalRecord::Suppress);
        assert_eq!(r.admit(b, 1), RefusalRecord::Record { suppressed: 0 }, "another source is not affected");
        assert_eq!(r.admit(a(), 2), RefusalRecord::Record { suppressed: 2 }, "the next second says what was not");
    }

    #[test]
    fn identities_are_limited_apart_and_slots_come_back() {
        let limits = Limits::new(5, 2);
        let a1 = limits.admit("identity:a").expect("first");
        let _a2 = limits.admit("identity:a").expect("second");
        assert_eq!(
            limits.admit("identity:a").err(),
            Some(LimitExceeded::Identity { identity: "identity:a".into(), limit: 2 })
        );
        let _b = limits.admit("identity:b").expect("another identity is not affected");
        drop(a1);
        let _a3 = limits.admit("identity:a").expect("a released slot is reusable");
        let _c1 = limits.admit("identity:c").unwrap();
        let _c2 = limits.admit("identity:c").unwrap();
        assert_eq!(limits.admit("identity:d").err(), Some(LimitExceeded::Global(5)));
        assert_eq!(limits.total(), 5);
    }
}
