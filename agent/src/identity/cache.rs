//! The pieces the resolver's caches are built from: a bounded least-recently-used map, a clock
//! tests can move by hand, and a file's "has it changed" stamp.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    fs::Metadata,
    hash::Hash,
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

/// The resolver's sense of time, injectable so tests can expire entries without sleeping.
pub trait Clock: fmt::Debug + Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (for tests, and anything replaying time).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at the moment it was made.
    pub fn new() -> Self {
        Self { start: Instant::now(), offset: Mutex::new(Duration::ZERO) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What tells a file's versions apart without reading it: modification time, size, and inode
/// (an atomic replace by rename is a new inode even within one mtime tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    /// The stamp of the regular file at `path` (not following a symlink), or `None` when there
    /// is none.
    pub fn of(path: &Path) -> Option<Self> {
        std::fs::symlink_metadata(path).ok().filter(Metadata::is_file).map(|m| Self::from_metadata(&m))
    }

    /// The stamp of the file `m` describes.
    pub fn from_metadata(m: &Metadata) -> Self {
        Self { modified: m.modified().ok(), len: m.len(), dev: m.dev(), ino: m.ino() }
    }
}

/// A map holding at most `capacity` entries; inserting into a full one evicts the least
/// recently used. Lookups and inserts are O(log n).
#[derive(Debug)]
pub struct Lru<K, V> {
    capacity: usize,
    /// Ever increasing use counter: an entry's last use.
    clock: u64,
    slots: HashMap<K, (u64, V)>,
    /// Last use -> key, oldest first.
    order: BTreeMap<u64, K>,
}

impl<K: Copy + Eq + Hash, V> Lru<K, V> {
    /// An empty map holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), clock: 0, slots: HashMap::new(), order: BTreeMap::new() }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The entry for `key`, which becomes the most recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let now = self.tick();
        let (used, _) = self.slots.get_mut(key)?;
        self.order.remove(used);
        *used = now;
        self.order.insert(now, *key);
        self.slots.get(key).map(|(_, v)| v)
    }

    /// The entry for `key`, leaving the order alone.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.slots.get(key).map(|(_, v)| v)
    }

    /// Inserts or replaces `key`'s entry as the most recently used; returns the entry evicted to
    /// make room, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        let now = self.tick();
        if let Some((used, old)) = self.slots.get_mut(&key) {
            self.order.remove(used);
            *used = now;
            *old = value;
            self.order.insert(now, key);
            return None;
        }
        let evicted = if self.slots.len() >= self.capacity {
            self.order.pop_first().and_then(|(_, k)| self.slots.remove(&k).map(|(_, v)| (k, v)))
        } else {
            None
        };
        self.slots.insert(key, (now, value));
        self.order.insert(now, key);
        evicted
    }

    /// Removes `key`'s entry.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (used, value) = self.slots.remove(key)?;
        self.order.remove(&used);
        Some(value)
    }

    /// Keeps only the entries for which `keep` is true; returns how many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) -> usize {
        let before = self.slots.len();
        let order = &mut self.order;
        self.slots.retain(|k, (used, v)| {
            let kept = keep(k, v);
            if !kept {
                order.remove(used);
            }
            kept
        });
        before - self.slots.len()
    }

    /// Every key with its entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().map(|(k, (_, v))| (k, v))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_goes_first() {
        let mut lru = Lru::new(3);
        for k in 1..=3 {
            assert_eq!(lru.insert(k, k * 10), None);
        }
        assert_eq!(lru.get(&1), Some(&10)); // 2 is now the oldest
        assert_eq!(lru.insert(4, 40), Some((2, 20)));
        assert_eq!(lru.peek(&3), Some(&30)); // peeking does not save 3
        assert_eq!(lru.insert(5, 50), Some((3, 30)));
        assert_eq!(lru.insert(1, 11), None); // replacing is not growing
        assert_eq!(lru.len(), 3);
        assert_eq!(lru.remove(&4), Some(40));
        assert_eq!(lru.retain(|k, _| *k != 5), 1);
        assert_eq!(lru.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), vec![(1, 11)]);
        // Order bookkeeping stays in step with the entries.
        assert_eq!(lru.order.len(), lru.len());
    }

    #[test]
    fn capacity_holds_under_churn() {
        let mut lru = Lru::new(16);
        for k in 0..10_000u64 {
            lru.insert(k, ());
            if k % 3 == 0 {
                lru.get(&(k / 2));
            }
            assert!(lru.len() <= 16);
        }
        assert_eq!(lru.order.len(), lru.len());
        assert!(lru.peek(&9_999).is_some());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now() - t0, Duration::from_secs(5));
    }
}
