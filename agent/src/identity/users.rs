//! uid -> user name, from the passwd file, re-read when it changes.
//!
//! The whole file is parsed into a map (bounded in bytes and entries), so a lookup of a uid
//! that has no name costs nothing and grows nothing. Whether the file changed is checked at
//! most once per refresh interval, on the resolver's slow path.

use std::{
    collections::HashMap,
    fs::File,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use super::cache::FileStamp;

/// Bytes of the passwd file read at most: far above any real one.
pub const MAX_PASSWD_BYTES: u64 = 8 << 20;
/// Names kept at most.
pub const MAX_USERS: usize = 65_536;

#[derive(Debug, Default)]
struct Names {
    by_uid: HashMap<u32, String>,
    stamp: Option<FileStamp>,
    checked: Option<Instant>,
}

/// The uid -> name map.
#[derive(Debug)]
pub struct UserNames {
    path: PathBuf,
    refresh: Duration,
    names: Mutex<Names>,
}

impl UserNames {
    /// Names from the passwd file at `path`, checked for changes at most every `refresh`.
    pub fn new(path: &Path, refresh: Duration) -> Self {
        Self { path: path.to_path_buf(), refresh, names: Mutex::new(Names::default()) }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `uid`'s name when the map was checked within the refresh interval (`Some(None)`: the
    /// uid has no name); `None` when it is due a check.
    pub fn cached(&self, uid: u32, now: Instant) -> Option<Option<String>> {
        let names = self.names();
        let fresh = names.checked.is_some_and(|t| now.saturating_duration_since(t) < self.refresh);
        fresh.then(|| names.by_uid.get(&uid).cloned())
    }

    /// `uid`'s name, checking the file first if that is due.
    pub fn lookup(&self, uid: u32, now: Instant) -> Option<String> {
        self.refresh(now);
        self.names().by_uid.get(&uid).cloned()
    }

    /// Re-reads the file if it is due a check and has changed since it was read.
    pub fn refresh(&self, now: Instant) {
        let known = {
            let names = self.names();
            if names.checked.is_some_and(|t| now.saturating_duration_since(t) < self.refresh) {
                return;
            }
            names.stamp
        };
        // Read outside the lock: the fast path must not wait on a file read.
        let stamp = FileStamp::of(&self.path);
        let reread = (stamp != known).then(|| match stamp {
            Some(_) => read_passwd(&self.path),
            None => HashMap::new(),
        });
        let mut names = self.names();
        if let Some(by_uid) = reread {
            names.by_uid = by_uid;
            names.stamp = stamp;
        }
        names.checked = Some(now);
    }
}

/// Parses a passwd file: `name:password:uid:...`, the first entry for a uid winning (as
/// getpwuid(3) answers). NIS `+`/`-` lines and malformed lines are skipped.
fn read_passwd(path: &Path) -> HashMap<u32, String> {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|f| f.take(MAX_PASSWD_BYTES + 1).read_to_end(&mut bytes));
    if let Err(err) = read {
        tracing::warn!(path = %path.display(), error = %err, "cannot read the passwd file; user names stay unknown");
        return HashMap::new();
    }
    if bytes.len() as u64 > MAX_PASSWD_BYTES {
        tracing::warn!(path = %path.display(), limit = MAX_PASSWD_BYTES, "passwd file too large; reading only its start");
        bytes.truncate(MAX_PASSWD_BYTES as usize);
        // The last line is cut short: drop it rather than read a truncated name.
        let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(end);
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut by_uid = HashMap::new();
    for line in text.lines() {
        if by_uid.len() >= MAX_USERS {
            tracing::warn!(path = %path.display(), limit = MAX_USERS, "passwd file has too many entries; the rest are ignored");
            break;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(_password), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if name.is_empty() || name.starts_with(['+', '-', '#']) {
            continue;
        }
        if let Ok(uid) = uid.parse::<u32>() {
            by_uid.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    by_uid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_file_after_the_refresh_interval() {
        let dir = crate::test_dir("warden-users-test-");
        let path = dir.path().join("passwd");
        std::fs::write(&path, "root:x:0:0::/root:/bin/sh\n+nis::::::\nalice:x:1000:1000::/home/alice:/bin/sh\nshadow:x:1000:1000::/:/bin/false\nbroken line\n").unwrap();
        let users = UserNames::new(&path, Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(users.cached(0, t0), None, "never read: due a check");
        assert_eq!(users.lookup(1000, t0).as_deref(), Some("alice"), "first entry wins");
        assert_eq!(users.cached(0, t0), Some(Some("root".into())));
        assert_eq!(users.cached(4242, t0), Some(None));

        std::fs::write(&path, "root:x:0:0::/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n").unwrap();
        // Not checked again within the interval ...
        assert_eq!(users.lookup(1000, t0 + Duration::from_secs(1)).as_deref(), Some("alice"));
        // ... and re-read after it.
        let later = t0 + Duration::from_secs(6);
        assert_eq!(users.cached(1000, later), None);
        assert_eq!(users.lookup(1000, later).as_deref(), Some("bob"));

        std::fs::remove_file(&path).unwrap();
        assert_eq!(users.lookup(1000, later + Duration::from_secs(6)), None);
    }
}
