//! The sessions an agent serves, kept where they outlive it: a small memory-mapped file per
//! agent in the state directory (`sessions/PID-STARTTIME`), one 64-byte slot per live session.
//!
//! A session's close record is written by the session itself when it ends, or by its entry
//! here when the session is cut with its task (the agent stopping). An agent killed or crashed
//! writes neither: the next agent to look (at start, then every few seconds) finds the file of
//! an agent no longer running and records each session left in it as ended by the crash. The
//! kernel closed both legs when the process died (the client sees its connection closed, the
//! server ends the backend and rolls back its transaction).
//!
//! Writing an entry is two stores into a shared mapping: no system call on the session path.

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use memmap2::MmapMut;

use crate::audit::{AuditLog, Event, SessionId, now_ms};

const MAGIC: &[u8; 8] = b"WLEDGER1";
const HEADER: usize = 64;
const SLOT: usize = 64;
/// Bytes of a database name kept in a slot (names are short: letters, digits, `-_.`).
const NAME: usize = SLOT - 17;

/// The directory of the agents' ledgers.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("sessions")
}

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: i32,
    start: u64,
}

impl Owner {
    fn myself() -> Option<Self> {
        let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
        Some(Self { pid: stat.pid, start: stat.starttime })
    }

    fn running(&self) -> bool {
        procfs::process::Process::new(self.pid)
            .and_then(|p| p.stat())
            .is_ok_and(|s| s.starttime == self.start && s.state != 'Z')
    }

    fn file_name(&self) -> String {
        format!("{}-{}", self.pid, self.start)
    }

    fn parse(name: &str) -> Option<Self> {
        let (pid, start) = name.split_once('-')?;
        Some(Self { pid: pid.parse().ok()?, start: start.parse().ok()? })
    }
}

/// This agent's ledger.
pub struct Ledger {
    path: PathBuf,
    map: Mutex<MmapMut>,
    free: Mutex<Vec<u32>>,
    audit: AuditLog,
}

impl Ledger {
    /// Creates this agent's ledger with room for `slots` sessions. `None` (with a warning)
    /// where it cannot be made: sessions are then not recorded after a crash.
    pub fn create(state_dir: &Path, slots: usize, audit: AuditLog) -> Option<Arc<Self>> {
        match Self::try_create(state_dir, slots, audit) {
            Ok(l) => Some(Arc::new(l)),
            Err(err) => {
                tracing::warn!(error = %err, "no session ledger: sessions cut by a crash of this agent will not be recorded as such");
                None
            }
        }
    }

    fn try_create(state_dir: &Path, slots: usize, audit: AuditLog) -> std::io::Result<Self> {
        let owner = Owner::myself().ok_or_else(|| std::io::Error::other("reading /proc/self/stat"))?;
        let path = dir(state_dir).join(owner.file_name());
        // A private file in a private directory (0700), created new and never through a link:
        // what is planted at its name is refused, not truncated.
        crate::audit::ring::private_dir(&path).map_err(private)?;
        let file = crate::audit::ring::open_private(
            &path,
            OpenOptions::new().read(true).write(true).create_new(true),
            "ledger",
        )
        .map_err(private)?;
        file.set_len((HEADER + SLOT * slots) as u64)?;
        // SAFETY: a file this agent just created and alone writes; readers map it read-only.
        let mut map = unsafe { MmapMut::map_mut(&file) }?;
        map[..8].copy_from_slice(MAGIC);
        Ok(Self { path, map: Mutex::new(map), free: Mutex::new((0..slots as u32).rev().collect()), audit })
    }

    /// Enters a session; its entry records the session's close if it is dropped unfinished.
    pub fn enter(self: &Arc<Self>, session: SessionId, database: &str) -> Entry {
        let slot = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let opened_ms = now_ms();
        if let Some(slot) = slot {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let at = HEADER + slot as usize * SLOT;
            let s = &mut map[at..at + SLOT];
            let name = &database.as_bytes()[..database.len().min(NAME)];
            s[8..16].copy_from_slice(&opened_ms.to_le_bytes());
            s[16] = name.len() as u8;
            s[17..17 + name.len()].copy_from_slice(name);
            // The id last: a slot is used once it has one.
            s[..8].copy_from_slice(&session.0.to_le_bytes());
        }
        Entry { ledger: self.clone(), slot, session, database: database.to_string(), opened_ms, finished: false }
    }

    fn release(&self, slot: u32) {
        {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let at = HEADER + slot as usize * SLOT;
            map[at..at + 8].fill(0);
        }
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Every session has ended (and been recorded) by the time the last handle goes.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A live session's place in the ledger.
pub struct Entry {
    ledger: Arc<Ledger>,
    slot: Option<u32>,
    session: SessionId,
    database: String,
    opened_ms: u64,
    finished: bool,
}

impl Entry {
    /// The session recorded its own close.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if !self.finished {
            // The session's task was dropped before it could record its end.
            self.ledger.audit.record(Event::ConnectionClose {
                session: self.session,
                database: std::mem::take(&mut self.database),
                bytes_from_client: 0,
                bytes_from_server: 0,
                statements: 0,
                rows: 0,
                duration_ms: now_ms().saturating_sub(self.opened_ms),
                error: Some("cut when the agent stopped (its counters were not kept)".into()),
            });
        }
        if let Some(slot) = self.slot {
            self.ledger.release(slot);
        }
    }
}

/// Records the sessions of agents that ended without closing them (killed, crashed) as ended by
/// that, and removes their ledgers. Returns how many sessions were recorded.
pub fn reap(state_dir: &Path, audit: &AuditLog) -> usize {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else { return 0 };
    let mut recorded = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // A ledger another agent claimed to reap (NAME.reaping-PID-START) is left to it while
        // it runs.
        let (ledger, reaper) = match name.split_once(".reaping-") {
            Some((ledger, reaper)) => (ledger, Owner::parse(reaper)),
            None => (name, None),
        };
        let Some(owner) = Owner::parse(ledger) else { continue };
        let me = Owner::myself();
        if owner.running() || reaper.is_some_and(|r| Some(r) != me && r.running()) {
            continue;
        }
        // Claimed by renaming it: two agents (one replacing the other) never both record it.
        let claim = me.map_or_else(|| std::process::id().to_string(), |m| m.file_name());
        let path = entry.path().with_file_name(format!("{ledger}.reaping-{claim}"));
        if std::fs::rename(entry.path(), &path).is_err() {
            continue;
        }
        match read_sessions(&path) {
            Ok(sessions) => {
                let now = now_ms();
                for (session, database, opened_ms) in &sessions {
                    audit.record(Event::ConnectionClose {
                        session: *session,
                        database: database.clone(),
                        bytes_from_client: 0,
                        bytes_from_server: 0,
                        statements: 0,
                        rows: 0,
                        duration_ms: now.saturating_sub(*opened_ms),
                        error: Some(format!(
                            "ended by the crash of the agent serving it (pid {}, killed or crashed): the kernel closed \
                             both legs; its counters were not kept",
                            owner.pid
                        )),
                    });
                }
                if !sessions.is_empty() {
                    tracing::warn!(
                        pid = owner.pid,
                        sessions = sessions.len(),
                        "recorded the sessions of an agent that ended without closing them"
                    );
                }
                recorded += sessions.len();
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "an ended agent's session ledger could not be read")
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    recorded
}

/// Why a ledger file could not be used, as an I/O error.
fn private(problem: crate::audit::ring::PrivateFileError) -> std::io::Error {
    std::io::Error::other(format!("{problem:?}"))
}

/// Most slots a ledger read back may have (a file larger is not one this agent wrote).
const MAX_SLOTS: u64 = 1 << 22;

fn read_sessions(path: &Path) -> std::io::Result<Vec<(SessionId, String, u64)>> {
    use std::io::Read as _;
    // A regular file the agent's user owns, opened without following a link.
    let mut file = crate::audit::ring::open_private(path, OpenOptions::new().read(true), "ledger").map_err(private)?;
    let len = file.metadata()?.len();
    if len > HEADER as u64 + SLOT as u64 * MAX_SLOTS || !(len as usize).saturating_sub(HEADER).is_multiple_of(SLOT) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a session ledger (its size)"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes)?;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a session ledger"));
    }
    Ok(bytes[HEADER..]
        .chunks_exact(SLOT)
        .filter_map(|s| {
            let session = u64::from_le_bytes(s[..8].try_into().ok()?);
            if session == 0 {
                return None;
            }
            let opened_ms = u64::from_le_bytes(s[8..16].try_into().ok()?);
            let len = usize::from(s[16]).min(NAME);
            Some((SessionId(session), String::from_utf8_lossy(&s[17..17 + len]).into_owned(), opened_ms))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_agents_sessions_are_read_back_and_a_live_ones_are_not() {
        let tmp = crate::test_dir("warden-ledger-test-");
        let dir = tmp.path().to_path_buf();
        let config = crate::config::AuditConfig {
            path: dir.join("audit.ring"),
            ring_bytes: 1 << 20,
            ..crate::config::AuditConfig::default()
        };
        let (audit, writer) = AuditLog::open(&config).unwrap();
        let ledger = Ledger::create(&dir, 4, audit.clone()).unwrap();
        let a = ledger.enter(SessionId(11), "main");
        let b = ledger.enter(SessionId(12), "a-database-name-longer-than-a-slot-keeps-of-it-entirely");
        let c = ledger.enter(SessionId(13), "other");
        c.finish();
        let file = dir.join("sessions").join(Owner::myself().unwrap().file_name());
        let mut found = read_sessions(&file).unwrap();
        found.sort_by_key(|(s, _, _)| s.0);
        assert_eq!(
            found.iter().map(|(s, d, _)| (s.0, d.as_str())).collect::<Vec<_>>(),
            vec![(11, "main"), (12, &"a-database-name-longer-than-a-slot-keeps-of-it-entirely"[..NAME])]
        );
        assert_eq!(reap(&dir, &audit), 0, "the owner runs: nothing is reaped");
        // The same file under the name of a process that is not running.
        let dead = dir.join("sessions").join(Owner { pid: i32::MAX, start: 1 }.file_name());
        std::fs::copy(&file, &dead).unwrap();
        assert_eq!(reap(&dir, &audit), 2);
        assert!(!dead.exists() && file.exists());
        drop(a);
        drop(b);
        assert!(read_sessions(&file).unwrap().is_empty(), "ended sessions leave no entry");
        drop(ledger);
        assert!(!file.exists(), "a ledger goes with its agent");
        drop(audit);
        writer.join();
        let ring = crate::audit::ring::RingFile::open(&config.path).unwrap();
        let closes: Vec<String> = ring
            .records(0)
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
            .filter(|v| v["kind"] == "connection_close")
            .map(|v| format!("{} {}", v["session"], v["error"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(closes.len(), 4, "two for the crash, two for the entries dropped unfinished: {closes:#?}");
        assert_eq!(closes.iter().filter(|c| c.contains("ended by the crash")).count(), 2);
        assert_eq!(closes.iter().filter(|c| c.contains("cut when the agent stopped")).count(), 2);
    }

    #[test]
    fn a_link_planted_in_the_ledgers_place_or_among_dead_ledgers_is_never_followed() {
        let tmp = crate::test_dir("warden-ledger-link-");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("sessions")).unwrap();
        // Private whatever the umask: refused for the link, not for the directory.
        std::fs::set_permissions(dir.join("sessions"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let config = crate::config::AuditConfig {
            path: dir.join("audit.ring"),
            ring_bytes: 1 << 20,
            ..crate::config::AuditConfig::default()
        };
        let (audit, writer) = AuditLog::open(&config).unwrap();
        // A precious file (shaped as a ledger with one session), and a link to it where this
        // agent's ledger will be made.
        let precious = dir.join("precious");
        let mut shaped = vec![0u8; HEADER + SLOT];
        shaped[..8].copy_from_slice(MAGIC);
        shaped[HEADER..HEADER + 8].copy_from_slice(&77u64.to_le_bytes());
        std::fs::write(&precious, &shaped).unwrap();
        let own = dir.join("sessions").join(Owner::myself().unwrap().file_name());
        std::os::unix::fs::symlink(&precious, &own).unwrap();
        assert!(Ledger::create(&dir, 4, audit.clone()).is_none(), "refused, not followed");
        assert_eq!(std::fs::read(&precious).unwrap(), shaped, "not truncated");
        // A link named as a dead agent's ledger: removed, never read as one.
        std::fs::remove_file(&own).unwrap();
        let dead = dir.join("sessions").join(Owner { pid: i32::MAX, start: 1 }.file_name());
        std::os::unix::fs::symlink(&precious, &dead).unwrap();
        assert_eq!(reap(&dir, &audit), 0, "no session read through a link");
        assert!(std::fs::symlink_metadata(&dead).is_err() && precious.exists());
        drop(audit);
        writer.join();
    }
}
