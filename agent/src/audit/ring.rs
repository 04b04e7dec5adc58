//! The per-host audit ring: one fixed-size, memory-mapped file of length-prefixed, checksummed,
//! hash-chained records. The oldest records are overwritten when it is full (and counted).
//!
//! Layout: a 4 KiB header, then the data region. Positions are logical (they only grow); the
//! physical offset is `logical % capacity`. A record never straddles the end of the region: when
//! one would, a WRAP marker is written and the record starts the next lap.
//!
//! Record (8-byte aligned): magic "WREC" | kind u8 | 3 pad | len u32 | crc32 u32 | seq u64 |
//! at_ms u64 | prev_hash [32] | payload [len]. The CRC covers everything after itself; the magic
//! is written last, so a record torn by a crash is never taken for a whole one. `prev_hash` is
//! the SHA-256 chain hash of the record before: editing any record breaks the chain after it, and
//! seal records (HMAC of the chain head with a key kept outside the ring) catch a rewritten chain.
//!
//! The header holds hints (head, tail, next sequence number, overwritten count, the newest
//! record's chain hash and kind) updated after each append; on open the chain is followed from
//! the tail hint to find the true head, so a crash between a record and its hint loses nothing
//! that was completely written.
//!
//! Several writers may share a ring (an agent and the one replacing it, during a hand-over):
//! each appends only while it holds the file's exclusive lock (`acquire` / `release`), and first
//! takes up what the others wrote since from the header (and any whole record beyond it). One
//! writer at a time, one chain: records of both agents interleave in the order they were
//! written, and a writer that dies holding the lock releases it with its process.
//!
//! The ring and its sealing key are private files: created 0600 in a directory created 0700,
//! never opened through a symbolic link, refused when another user owns them or could replace
//! them (the governed workloads are hostile local users). See "Opening private files" below.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use memmap2::{Mmap, MmapMut};
use sha2::{Digest as _, Sha256};

const MAGIC_FILE: &[u8; 8] = b"WARDRING";
const VERSION: u32 = 1;
const HEADER_SIZE: u64 = 4096;
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"WREC");
const WRAP_MAGIC: u32 = u32::from_le_bytes(*b"WRAP");
const RECORD_HEADER: usize = 64;
/// The smallest ring worth having.
pub const MIN_CAPACITY: u64 = 64 * 1024;
/// How long a writer waits for the writers' lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

// Header field offsets.
const H_VERSION: usize = 8;
const H_CAPACITY: usize = 16;
const H_HEAD: usize = 24;
const H_TAIL: usize = 32;
const H_NEXT_SEQ: usize = 40;
const H_TAIL_SEQ: usize = 48;
const H_OVERWRITTEN: usize = 56;
/// Records the agent could not write (queue full, write error), kept across restarts.
const H_LOST: usize = 64;
/// The newest record's chain hash (32 bytes) and kind (0: none), for the next writer.
const H_LAST_HASH: usize = 72;
const H_LAST_KIND: usize = 104;
/// The newest record's position: hints torn by a writer killed while writing them do not
/// match the record there, and are then recovered from the chain.
const H_LAST_POS: usize = 112;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An audit event (JSON).
    Event = 1,
    /// A seal: HMAC of the chain head, proving the chain up to here was written by the agent.
    Seal = 2,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Event),
            2 => Some(Self::Seal),
            _ => None,
        }
    }
}

/// Problems with the ring file.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("audit ring {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "audit ring {path} is a symbolic link; the agent does not follow links to the files only it may write. \
         An administrator must replace the link with the ring itself or point audit.path at the real file"
    )]
    Symlink { path: PathBuf },
    #[error("audit ring {path} is not a regular file; an administrator must remove it or point audit.path elsewhere")]
    NotAFile { path: PathBuf },
    #[error(
        "audit ring {path} is owned by uid {owner}, not by the agent (uid {agent}): that user could rewrite the \
         trail. An administrator must remove the file (or chown it to uid {agent}) after checking it"
    )]
    ForeignOwner { path: PathBuf, owner: u32, agent: u32 },
    #[error(
        "directory {dir} of the audit ring is writable by group or others (mode {mode:04o}) without the sticky \
         bit: another user could replace the ring. An administrator must `chmod go-w` it or point audit.path \
         at a private directory"
    )]
    WritableDirectory { dir: PathBuf, mode: u32 },
    #[error(
        "directory {dir} of the audit ring is owned by uid {owner}, neither root nor the agent (uid {agent}): that \
         user could replace the ring. An administrator must chown it to root or point audit.path elsewhere"
    )]
    ForeignDirectory { dir: PathBuf, owner: u32, agent: u32 },
    #[error("audit ring {path}: not a Warden audit ring (bad magic or version)")]
    NotARing { path: PathBuf },
    #[error("audit ring {path}: capacity {found} differs from the configured {configured}")]
    CapacityMismatch { path: PathBuf, found: u64, configured: u64 },
    #[error("audit record of {0} bytes is larger than a quarter of the ring")]
    TooLarge(usize),
    #[error("audit ring {path}: taking the writers' lock: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("audit ring capacity must be at least {MIN_CAPACITY} bytes")]
    TooSmall,
}

impl RingError {
    fn from_private(path: &Path, problem: PrivateFileError) -> Self {
        let path = path.to_path_buf();
        match problem {
            PrivateFileError::Io(source) => Self::Io { path, source },
            PrivateFileError::Symlink => Self::Symlink { path },
            PrivateFileError::NotAFile => Self::NotAFile { path },
            PrivateFileError::ForeignOwner { owner, agent } => Self::ForeignOwner { path, owner, agent },
            PrivateFileError::WritableDirectory { dir, mode } => Self::WritableDirectory { dir, mode },
            PrivateFileError::ForeignDirectory { dir, owner, agent } => Self::ForeignDirectory { dir, owner, agent },
        }
    }
}

// Opening private files (the ring, the sealing key).
//
// A local user who can replace either file, or point it elsewhere with a link, can rewrite the
// trail or forge seals. So: the directory must be one only root or the agent can change (or a
// sticky one, where others cannot rename our file); the file itself is opened with O_NOFOLLOW,
// must be a regular file the agent owns, and loose permissions (rings made by earlier versions
// were 0644) are tightened to 0600 on the open descriptor, never through the path.

/// Why a private file could not be used. Each caller turns it into its own error, which names
/// the file and who must fix what.
#[derive(Debug)]
pub(crate) enum PrivateFileError {
    Io(io::Error),
    Symlink,
    NotAFile,
    ForeignOwner { owner: u32, agent: u32 },
    WritableDirectory { dir: PathBuf, mode: u32 },
    ForeignDirectory { dir: PathBuf, owner: u32, agent: u32 },
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What is wrong with a directory of mode `mode` owned by `owner` for holding a file of the
/// agent running as `agent`, if anything.
fn directory_problem(dir: &Path, mode: u32, owner: u32, agent: u32) -> Option<PrivateFileError> {
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Some(PrivateFileError::WritableDirectory { dir: dir.to_path_buf(), mode: mode & 0o7777 });
    }
    if owner != agent && owner != 0 {
        return Some(PrivateFileError::ForeignDirectory { dir: dir.to_path_buf(), owner, agent });
    }
    None
}

/// Creates the directory that holds `path` (mode 0700) if it is missing, and checks that no
/// one but root or the agent can replace files in it.
pub(crate) fn private_dir(path: &Path) -> Result<(), PrivateFileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(PrivateFileError::Io)?;
    }
    // The directory the file really lands in (a link to it is the administrator's choice).
    let meta = std::fs::metadata(dir).map_err(PrivateFileError::Io)?;
    match directory_problem(dir, meta.mode(), meta.uid(), effective_uid()) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// Opens `path` with `options` (plus mode 0600 when created, and O_NOFOLLOW), refuses what is
/// not a regular file owned by the agent, and tightens permissions open to group or others to
/// 0600 with a warning. `what` names the file in that warning.
pub(crate) fn open_private(path: &Path, options: &mut OpenOptions, what: &str) -> Result<File, PrivateFileError> {
    let file = match options.mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(file) => file,
        // ELOOP is what O_NOFOLLOW answers for a link (it also means a loop of links among
        // the directories, which lstat tells apart).
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP)
                && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            return Err(PrivateFileError::Symlink);
        }
        Err(e) => return Err(PrivateFileError::Io(e)),
    };
    let meta = file.metadata().map_err(PrivateFileError::Io)?;
    if !meta.file_type().is_file() {
        return Err(PrivateFileError::NotAFile);
    }
    let agent = effective_uid();
    if meta.uid() != agent {
        return Err(PrivateFileError::ForeignOwner { owner: meta.uid(), agent });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(PrivateFileError::Io)?;
        tracing::warn!(
            path = %path.display(),
            old_mode = %format!("{mode:04o}"),
            "{what} was open to group or others; tightened to 0600"
        );
    }
    Ok(file)
}

/// A record read back from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: Kind,
    pub payload: Vec<u8>,
    pub prev_hash: [u8; 32],
    /// Logical position (for diagnostics).
    pub position: u64,
}

impl Record {
    /// The chain hash of this record (what the next record's `prev_hash` must be). Computed
    /// when asked: reading the ring to show it does not need it, checking the chain does.
    pub fn hash(&self) -> [u8; 32] {
        chain_hash(&self.prev_hash, self.seq, self.at_ms, self.kind as u8, &self.payload)
    }
}

fn align8(n: u64) -> u64 {
    (n + 7) & !7
}

fn chain_hash(prev: &[u8; 32], seq: u64, at_ms: u64, kind: u8, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(at_ms.to_le_bytes());
    h.update([kind]);
    h.update(payload);
    h.finalize().into()
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Where an intact record lies, checked (magic, kind, length, checksum) but neither copied nor
/// hashed: what reading needs to find its way before it copies the few records it shows.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Physical offset in the data region.
    off: usize,
    /// Logical position.
    position: u64,
    seq: u64,
    /// The record's length in the ring, header and alignment included.
    size: usize,
}

/// The frame of the record at physical offset `off` of `data`, if a complete, intact one is
/// there.
fn frame_at(data: &[u8], off: usize, position: u64) -> Option<Frame> {
    if off + RECORD_HEADER > data.len() || u32_at(data, off) != RECORD_MAGIC {
        return None;
    }
    Kind::from_u8(data[off + 4])?;
    let len = u32_at(data, off + 8) as usize;
    let end = off.checked_add(RECORD_HEADER)?.checked_add(len)?;
    if end > data.len() {
        return None;
    }
    let crc = u32_at(data, off + 12);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&data[off + 4..off + 12]);
    hasher.update(&data[off + 16..end]);
    if hasher.finalize() != crc {
        return None;
    }
    let size = align8((RECORD_HEADER + len) as u64) as usize;
    Some(Frame { off, position, seq: u64_at(data, off + 16), size })
}

/// The record a frame found (its bytes copied out of the ring).
fn record_of(data: &[u8], frame: &Frame) -> Record {
    let off = frame.off;
    let len = u32_at(data, off + 8) as usize;
    Record {
        seq: frame.seq,
        at_ms: u64_at(data, off + 24),
        kind: Kind::from_u8(data[off + 4]).expect("checked by frame_at"),
        payload: data[off + RECORD_HEADER..off + RECORD_HEADER + len].to_vec(),
        prev_hash: data[off + 32..off + 64].try_into().expect("32 bytes"),
        position: frame.position,
    }
}

/// Parses the record at physical offset `off` of `data`, if a complete, intact one is there.
fn parse_at(data: &[u8], off: usize, position: u64) -> Option<Record> {
    frame_at(data, off, position).map(|f| record_of(data, &f))
}

/// The writer's view of the ring (one writer per file).
pub struct Ring {
    path: PathBuf,
    _file: File,
    map: MmapMut,
    capacity: u64,
    head: u64,
    tail: u64,
    next_seq: u64,
    tail_seq: u64,
    overwritten: u64,
    last_hash: [u8; 32],
    /// What the newest record is (none: the ring is empty), and where.
    last_kind: Option<Kind>,
    last_pos: u64,
    /// Records found intact when the ring was opened.
    pub recovered: u64,
    /// Whether this writer holds the writers' lock now.
    locked: bool,
}

impl Ring {
    /// Opens the ring at `path`, creating it with `capacity` data bytes if it does not exist,
    /// and recovers the chain (skipping a torn last record).
    pub fn open(path: &Path, capacity: u64) -> Result<Self, RingError> {
        if capacity < MIN_CAPACITY {
            return Err(RingError::TooSmall);
        }
        let io = |source| RingError::Io { path: path.to_path_buf(), source };
        let private = |problem| RingError::from_private(path, problem);
        private_dir(path).map_err(private)?;
        let file =
            open_private(path, OpenOptions::new().read(true).write(true).create(true).truncate(false), "audit ring")
                .map_err(private)?;
        let len = file.metadata().map_err(io)?.len();
        let fresh = len == 0;
        let capacity = align8(capacity);
        if fresh {
            file.set_len(HEADER_SIZE + capacity).map_err(io)?;
            // Reserve the blocks now: a full disk is an error at start-up, not a SIGBUS when a
            // page of the ring is first written back.
            // SAFETY: plain syscall on an open file descriptor.
            let rc = unsafe {
                libc::posix_fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                    (HEADER_SIZE + capacity) as libc::off_t,
                )
            };
            if rc != 0 && rc != libc::EOPNOTSUPP {
                let _ = std::fs::remove_file(path);
                return Err(io(io::Error::from_raw_os_error(rc)));
            }
        }
        // SAFETY: the file is ours (one writer); readers only read. Nothing truncates it while
        // mapped. Populated up front, so reading takes no page faults; writing does, once per
        // page it makes writable (ext4's page_mkwrite: see docs/decisions.md, "Audit trail").
        let mut map = unsafe { memmap2::MmapOptions::new().populate().map_mut(&file) }.map_err(io)?;
        if fresh {
            map[..8].copy_from_slice(MAGIC_FILE);
            map[H_VERSION..H_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
            map[H_CAPACITY..H_CAPACITY + 8].copy_from_slice(&capacity.to_le_bytes());
            map.flush().map_err(io)?;
        }
        if &map[..8] != MAGIC_FILE || u32_at(&map, H_VERSION) != VERSION {
            return Err(RingError::NotARing { path: path.to_path_buf() });
        }
        let found = u64_at(&map, H_CAPACITY);
        if found != capacity || len != 0 && len != HEADER_SIZE + found {
            return Err(RingError::CapacityMismatch { path: path.to_path_buf(), found, configured: capacity });
        }
        let mut ring = Ring {
            path: path.to_path_buf(),
            _file: file,
            map,
            capacity,
            head: 0,
            tail: 0,
            next_seq: 1,
            tail_seq: 1,
            overwritten: 0,
            last_hash: [0; 32],
            last_kind: None,
            last_pos: 0,
            recovered: 0,
            locked: false,
        };
        // Another writer may be appending (the agent this one replaces): recovered under the lock.
        ring.lock_file()?;
        ring.recover();
        ring.release();
        Ok(ring)
    }

    /// Takes the writers' lock, waiting at most `LOCK_WAIT` (a writer holds it for a batch:
    /// milliseconds; longer means something else holds it, and the records are not kept waiting
    /// for it: they are counted lost).
    fn lock_file(&mut self) -> Result<(), RingError> {
        let until = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match self._file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let source = io::Error::new(io::ErrorKind::TimedOut, "held by another process for too long");
                    return Err(RingError::Lock { path: self.path.clone(), source });
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(RingError::Lock { path: self.path.clone(), source });
                }
            }
        }
        self.locked = true;
        Ok(())
    }

    /// Takes the writers' lock (waiting for another writer's batch), then takes up whatever
    /// other writers appended since this one last held it: returns how many records that was.
    /// Appends need it.
    pub fn acquire(&mut self) -> Result<u64, RingError> {
        if self.locked {
            return Ok(0);
        }
        self.lock_file()?;
        Ok(self.refresh())
    }

    /// Whether this writer holds the writers' lock now.
    pub fn holds_lock(&self) -> bool {
        self.locked
    }

    /// Lets other writers append.
    pub fn release(&mut self) {
        if self.locked {
            // Unlocking an open file we locked cannot fail in a way that leaves it locked: the
            // lock goes with the descriptor at the latest.
            let _ = self._file.unlock();
            self.locked = false;
        }
    }

    /// Reloads the positions from the header (another writer may have moved them), then
    /// follows any whole record beyond the head (one written by a writer that died before its
    /// hints). Returns how many records other writers appended since this one last held the
    /// lock.
    fn refresh(&mut self) -> u64 {
        let before = self.next_seq;
        let head = u64_at(&self.map, H_HEAD);
        let next_seq = u64_at(&self.map, H_NEXT_SEQ);
        if head != self.head || next_seq != self.next_seq {
            self.head = head;
            self.next_seq = next_seq.max(1);
            self.last_hash.copy_from_slice(&self.map[H_LAST_HASH..H_LAST_HASH + 32]);
            self.last_kind = Kind::from_u8(self.map[H_LAST_KIND]);
            self.last_pos = u64_at(&self.map, H_LAST_POS);
            if !self.hints_hold() {
                // Torn by a writer killed while writing them: the chain says where things are.
                self.recover();
                return self.next_seq.saturating_sub(before);
            }
        }
        self.tail = u64_at(&self.map, H_TAIL);
        self.tail_seq = u64_at(&self.map, H_TAIL_SEQ).max(1);
        self.overwritten = u64_at(&self.map, H_OVERWRITTEN);
        let capacity = self.capacity;
        let reader = Reader { data: &self.map[HEADER_SIZE as usize..], capacity };
        let mut moved = false;
        while let Some((p, r)) = reader.record_at(self.head) {
            if r.seq != self.next_seq || r.prev_hash != self.last_hash {
                break;
            }
            self.head = p + align8(RECORD_HEADER as u64 + r.payload.len() as u64);
            self.next_seq = r.seq + 1;
            self.last_hash = r.hash();
            self.last_kind = Some(r.kind);
            self.last_pos = p;
            moved = true;
        }
        if moved {
            while self.head - self.tail > self.capacity {
                self.advance_tail();
            }
            self.write_hints();
        }
        self.next_seq.saturating_sub(before)
    }

    fn data(&self) -> &[u8] {
        &self.map[HEADER_SIZE as usize..]
    }

    /// Whether the header's newest record is the one at its position, ending at its head.
    fn hints_hold(&self) -> bool {
        if self.last_kind.is_none() {
            return self.next_seq <= 1 || self.head == self.tail;
        }
        let reader = Reader { data: &self.map[HEADER_SIZE as usize..], capacity: self.capacity };
        reader.record_at(self.last_pos).is_some_and(|(p, r)| {
            r.seq + 1 == self.next_seq
                && r.hash() == self.last_hash
                && p + align8(RECORD_HEADER as u64 + r.payload.len() as u64) == self.head
        })
    }

    /// Finds the chain from the tail hint and follows it to the true head.
    fn recover(&mut self) {
        let hint_tail = u64_at(&self.map, H_TAIL);
        let hint_tail_seq = u64_at(&self.map, H_TAIL_SEQ).max(1);
        self.overwritten = u64_at(&self.map, H_OVERWRITTEN);
        let reader = Reader { data: &self.map[HEADER_SIZE as usize..], capacity: self.capacity };
        let start = match reader.record_at(hint_tail) {
            Some((pos, r)) if r.seq == hint_tail_seq => Some((pos, r)),
            // Hints unusable (fresh ring, or a damaged header): find the oldest intact record.
            _ => reader.scan_oldest(),
        };
        let Some((pos, first)) = start else {
            self.head = 0;
            self.tail = 0;
            self.next_seq = u64_at(&self.map, H_NEXT_SEQ).max(1);
            self.tail_seq = self.next_seq;
            return;
        };
        let tail_seq = first.seq;
        let mut last = first;
        let mut last_pos = pos;
        let mut count = 1;
        let mut next = pos + align8(RECORD_HEADER as u64 + last.payload.len() as u64);
        while let Some((p, r)) = reader.record_at(next) {
            if r.seq != last.seq + 1 || r.prev_hash != last.hash() || p >= pos + self.capacity {
                break;
            }
            next = p + align8(RECORD_HEADER as u64 + r.payload.len() as u64);
            last = r;
            last_pos = p;
            count += 1;
        }
        self.last_pos = last_pos;
        self.tail = pos;
        self.tail_seq = tail_seq;
        self.head = next;
        self.next_seq = last.seq + 1;
        self.last_hash = last.hash();
        self.last_kind = Some(last.kind);
        self.recovered = count;
        self.write_hints();
    }

    fn write_hints(&mut self) {
        let h = &mut self.map[..HEADER_SIZE as usize];
        h[H_HEAD..H_HEAD + 8].copy_from_slice(&self.head.to_le_bytes());
        h[H_TAIL..H_TAIL + 8].copy_from_slice(&self.tail.to_le_bytes());
        h[H_NEXT_SEQ..H_NEXT_SEQ + 8].copy_from_slice(&self.next_seq.to_le_bytes());
        h[H_TAIL_SEQ..H_TAIL_SEQ + 8].copy_from_slice(&self.tail_seq.to_le_bytes());
        h[H_OVERWRITTEN..H_OVERWRITTEN + 8].copy_from_slice(&self.overwritten.to_le_bytes());
        h[H_LAST_HASH..H_LAST_HASH + 32].copy_from_slice(&self.last_hash);
        h[H_LAST_KIND] = self.last_kind.map_or(0, |k| k as u8);
        h[H_LAST_POS..H_LAST_POS + 8].copy_from_slice(&self.last_pos.to_le_bytes());
    }

    /// Appends a record; returns its sequence number. Overwrites the oldest records as needed.
    /// Takes the writers' lock for this record when the caller does not hold it.
    pub fn append(&mut self, kind: Kind, at_ms: u64, payload: &[u8]) -> Result<u64, RingError> {
        if self.locked {
            return self.append_locked(kind, at_ms, payload);
        }
        self.acquire()?;
        let appended = self.append_locked(kind, at_ms, payload);
        self.release();
        appended
    }

    fn append_locked(&mut self, kind: Kind, at_ms: u64, payload: &[u8]) -> Result<u64, RingError> {
        let total = align8(RECORD_HEADER as u64 + payload.len() as u64);
        if total > self.capacity / 4 {
            return Err(RingError::TooLarge(payload.len()));
        }
        let mut head = self.head;
        let wrap_at = (head % self.capacity) + total > self.capacity;
        if wrap_at {
            head += self.capacity - head % self.capacity;
        }
        // Make room: drop records (oldest first) until [head, head + total) fits.
        while self.tail < self.head && head + total - self.tail > self.capacity {
            self.advance_tail();
        }
        if self.tail >= self.head {
            // Empty ring: the tail follows the head.
            self.tail = head;
            self.tail_seq = self.next_seq;
        }
        // Hints first: a reader (or a crash) must never trust a tail about to be overwritten.
        self.write_hints();
        if wrap_at {
            let off = (self.head % self.capacity) as usize;
            if off + 4 <= self.capacity as usize {
                let d = &mut self.map[HEADER_SIZE as usize..];
                d[off..off + 4].copy_from_slice(&WRAP_MAGIC.to_le_bytes());
            }
        }
        let seq = self.next_seq;
        let off = (head % self.capacity) as usize;
        let hash = chain_hash(&self.last_hash, seq, at_ms, kind as u8, payload);
        let d = &mut self.map[HEADER_SIZE as usize..];
        let rec = &mut d[off..off + RECORD_HEADER + payload.len()];
        rec[4] = kind as u8;
        rec[5..8].fill(0);
        rec[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        rec[16..24].copy_from_slice(&seq.to_le_bytes());
        rec[24..32].copy_from_slice(&at_ms.to_le_bytes());
        rec[32..64].copy_from_slice(&self.last_hash);
        rec[RECORD_HEADER..].copy_from_slice(payload);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&rec[4..12]);
        crc.update(&rec[16..]);
        let crc = crc.finalize();
        rec[12..16].copy_from_slice(&crc.to_le_bytes());
        // The magic last: until it is there, this is not a record.
        rec[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        self.head = head + total;
        self.next_seq += 1;
        self.last_hash = hash;
        self.last_kind = Some(kind);
        self.last_pos = head;
        self.write_hints();
        Ok(seq)
    }

    fn advance_tail(&mut self) {
        let reader = Reader { data: self.data(), capacity: self.capacity };
        let next = reader
            .record_at(self.tail)
            .map(|(pos, r)| (pos + align8(RECORD_HEADER as u64 + r.payload.len() as u64), r.seq + 1));
        match next {
            Some((tail, seq)) => {
                self.tail = tail;
                self.tail_seq = seq;
            }
            // Unreadable (should not happen): drop the rest of this lap.
            None => self.tail += self.capacity - self.tail % self.capacity,
        }
        self.overwritten += 1;
    }

    /// Writes dirty pages to disk (msync). Costs a disk flush: see `audit.durability`.
    pub fn sync(&self) -> Result<(), RingError> {
        self.map.flush().map_err(|source| RingError::Io { path: self.path.clone(), source })
    }

    pub fn stats(&self) -> RingStats {
        RingStats {
            capacity: self.capacity,
            used: self.head - self.tail,
            first_seq: self.tail_seq,
            next_seq: self.next_seq,
            overwritten: self.overwritten,
        }
    }

    /// Adds to the count of records lost before reaching the ring (queue full, write errors).
    /// Only under the writers' lock (the count is shared by them).
    /// Returns whether it was added (it is not without the lock).
    pub fn add_lost(&mut self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        if !self.locked {
            return false;
        }
        let lost = u64_at(&self.map, H_LOST) + n;
        self.map[H_LOST..H_LOST + 8].copy_from_slice(&lost.to_le_bytes());
        true
    }

    /// The chain hash of the newest record.
    pub fn head_hash(&self) -> [u8; 32] {
        self.last_hash
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The kind of the newest record (none when the ring is empty): an event there means the
    /// last writer stopped without sealing.
    pub fn last_kind(&self) -> Option<Kind> {
        self.last_kind
    }
}

/// Sizes and counters of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RingStats {
    pub capacity: u64,
    pub used: u64,
    pub first_seq: u64,
    pub next_seq: u64,
    pub overwritten: u64,
}

/// Reads records from a ring's data region (a live ring being written, or a copied file).
pub struct Reader<'a> {
    data: &'a [u8],
    capacity: u64,
}

impl<'a> Reader<'a> {
    /// The record at logical position `pos`, following a WRAP marker (or a too-short remainder)
    /// to the next lap. Returns the position where it was found.
    pub fn record_at(&self, pos: u64) -> Option<(u64, Record)> {
        self.frame_at(pos).map(|f| (f.position, record_of(self.data, &f)))
    }

    /// The frame of the record at logical position `pos`, as `record_at` finds it.
    fn frame_at(&self, pos: u64) -> Option<Frame> {
        let mut pos = pos;
        let off = (pos % self.capacity) as usize;
        let wraps = off + RECORD_HEADER > self.capacity as usize || u32_at(self.data, off) == WRAP_MAGIC;
        if wraps {
            pos += self.capacity - pos % self.capacity;
        }
        frame_at(self.data, (pos % self.capacity) as usize, pos)
    }

    /// Every intact record in the data region, by physical offset (for recovery and verify).
    pub fn scan(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let mut off = 0usize;
        while off + RECORD_HEADER <= self.data.len() {
            match parse_at(self.data, off, off as u64) {
                Some(r) => {
                    off += align8(RECORD_HEADER as u64 + r.payload.len() as u64) as usize;
                    out.push(r);
                }
                None => off += 8,
            }
        }
        out
    }

    fn scan_oldest(&self) -> Option<(u64, Record)> {
        let oldest = self.scan().into_iter().min_by_key(|r| r.seq)?;
        Some((oldest.position, oldest))
    }
}

/// A read-only view of a ring file (works while the agent writes it, and on a copy).
pub struct RingFile {
    map: Mmap,
    capacity: u64,
    tail: u64,
    tail_seq: u64,
    overwritten: u64,
}

impl RingFile {
    pub fn open(path: &Path) -> Result<Self, RingError> {
        let io = |source| RingError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: read-only mapping; records are validated (CRC) before use, so concurrent
        // writes by the agent can only make a record unreadable, never misread.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        if map.len() < HEADER_SIZE as usize || &map[..8] != MAGIC_FILE || u32_at(&map, H_VERSION) != VERSION {
            return Err(RingError::NotARing { path: path.to_path_buf() });
        }
        let capacity = u64_at(&map, H_CAPACITY);
        if capacity < MIN_CAPACITY || map.len() as u64 != HEADER_SIZE + capacity {
            return Err(RingError::NotARing { path: path.to_path_buf() });
        }
        Ok(Self {
            capacity,
            tail: u64_at(&map, H_TAIL),
            tail_seq: u64_at(&map, H_TAIL_SEQ),
            overwritten: u64_at(&map, H_OVERWRITTEN),
            map,
        })
    }

    fn reader(&self) -> Reader<'_> {
        Reader { data: &self.map[HEADER_SIZE as usize..], capacity: self.capacity }
    }

    /// The records in order, oldest first, from `from_seq` on (0: all). Follows the chain; a
    /// break (torn or damaged record) ends it, and reading resumes at the next intact record.
    pub fn records(&self, from_seq: u64) -> Vec<Record> {
        let mut out = Vec::new();
        self.each(from_seq, |r| out.push(r));
        out
    }

    /// What `records` returns, handed to `f` one record at a time, so that a reader of a large
    /// ring holds only what it keeps. Only those records are copied out: finding the way costs
    /// a checksum per record and nothing more. Returns the sequence numbers of the oldest and
    /// newest intact records read (none: the ring holds no record).
    pub fn each(&self, from_seq: u64, mut f: impl FnMut(Record)) -> Option<(u64, u64)> {
        let reader = self.reader();
        // Where the chain lies in the data region: runs of adjacent records.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut span = None;
        let mut last = 0;
        if let Some(first) = reader.frame_at(self.tail).filter(|f| f.seq == self.tail_seq) {
            let mut frame = first;
            loop {
                if frame.seq >= from_seq {
                    f(record_of(reader.data, &frame));
                }
                match runs.last_mut() {
                    Some((_, end)) if *end == frame.off => *end += frame.size,
                    _ => runs.push((frame.off, frame.off + frame.size)),
                }
                last = frame.seq;
                match reader.frame_at(frame.position + frame.size as u64) {
                    Some(next) if next.seq == frame.seq + 1 && next.position < first.position + self.capacity => {
                        frame = next
                    }
                    _ => break,
                }
            }
            span = Some((first.seq, last));
        }
        // Anything intact beyond a break in the chain (damage) is still shown, in order. The
        // scan goes by physical offset and steps over every intact record whole (its payload,
        // client-controlled text, may hold the magic too); where it reaches the start of a run
        // of the chain it steps over the run, whose records it would step over one by one.
        let mut rest: Vec<Frame> = Vec::new();
        let data = reader.data;
        runs.sort_unstable();
        let mut runs = runs.into_iter().peekable();
        let mut off = 0usize;
        while off + RECORD_HEADER <= data.len() {
            while runs.next_if(|&(start, _)| start < off).is_some() {}
            if let Some((_, end)) = runs.next_if(|&(start, _)| start == off) {
                off = end;
                continue;
            }
            match frame_at(data, off, off as u64) {
                Some(frame) => {
                    off += frame.size;
                    if frame.seq > last {
                        rest.push(frame);
                    }
                }
                None => off += 8,
            }
        }
        rest.sort_by_key(|f| f.seq);
        if let (Some(oldest), Some(newest)) = (rest.first(), rest.last()) {
            span = Some(span.map_or((oldest.seq, newest.seq), |(first, _)| (first, newest.seq)));
        }
        for frame in rest.iter().filter(|f| f.seq >= from_seq) {
            f(record_of(data, frame));
        }
        span
    }

    /// The records after one already read (its position and sequence number), following the
    /// chain: what a follower reads without rescanning the ring. `None` when that record is no
    /// longer there (overwritten): start again with `records`.
    pub fn records_after(&self, position: u64, seq: u64) -> Option<Vec<Record>> {
        let reader = self.reader();
        let (pos, first) = reader.record_at(position)?;
        if first.seq != seq {
            return None;
        }
        let mut out = Vec::new();
        let mut last_seq = seq;
        let mut next = pos + align8(RECORD_HEADER as u64 + first.payload.len() as u64);
        while let Some((p, r)) = reader.record_at(next) {
            if r.seq != last_seq + 1 || p >= pos + self.capacity {
                break;
            }
            next = p + align8(RECORD_HEADER as u64 + r.payload.len() as u64);
            last_seq = r.seq;
            out.push(r);
        }
        Some(out)
    }

    /// The record at logical position `position` (a record's `position`), if one is intact there.
    pub fn record_at(&self, position: u64) -> Option<Record> {
        self.reader().record_at(position).map(|(_, r)| r)
    }

    /// The sequence number the writer will give its next record, as the header says (a hint:
    /// where to start looking for the newest records, never what they are).
    pub fn next_seq_hint(&self) -> u64 {
        u64_at(&self.map, H_NEXT_SEQ)
    }

    pub fn overwritten(&self) -> u64 {
        self.overwritten
    }

    /// Bytes of records in the ring now (at most the capacity).
    pub fn used(&self) -> u64 {
        u64_at(&self.map, H_HEAD).saturating_sub(u64_at(&self.map, H_TAIL)).min(self.capacity)
    }

    /// Records the agent could not write (dropped from a full queue, failed writes).
    pub fn lost(&self) -> u64 {
        u64_at(&self.map, H_LOST)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Checks every record: checksum (scan), sequence continuity and the hash chain. Seals are
    /// checked by the caller (it holds the key).
    pub fn verify(&self) -> Verification {
        self.verify_each(|_, _| {})
    }

    /// `verify`, handing each record (in the order `records` gives) and its chain hash to `f`
    /// as it goes: the ring is checked in the memory of one record.
    pub fn verify_each(&self, mut f: impl FnMut(&Record, &[u8; 32])) -> Verification {
        let mut v = Verification::default();
        let mut chain = Vec::new();
        let mut previous: Option<(u64, [u8; 32])> = None;
        self.each(0, |r| {
            let hash = r.hash();
            v.records += 1;
            match previous {
                Some((seq, _)) if r.seq != seq + 1 => {
                    chain.push(format!("records {} to {} are missing", seq + 1, r.seq - 1))
                }
                Some((seq, prev)) if r.prev_hash != prev => {
                    chain.push(format!("record {}: hash chain broken (record {seq} was altered)", r.seq))
                }
                _ => {}
            }
            f(&r, &hash);
            previous = Some((r.seq, hash));
        });
        // Checksum failures: magic present but the record does not parse. An intact record is
        // stepped over whole: its payload (client-controlled text) may hold the magic too.
        let data = self.reader().data;
        let mut off = 0usize;
        while off + RECORD_HEADER <= data.len() {
            if u32_at(data, off) == RECORD_MAGIC {
                match frame_at(data, off, 0) {
                    Some(frame) => {
                        off += frame.size;
                        continue;
                    }
                    None => {
                        let seq = u64_at(data, off + 16);
                        v.problems.push(format!("record at offset {off} (seq {seq}): checksum mismatch"));
                    }
                }
            }
            off += 8;
        }
        v.problems.extend(chain);
        v
    }
}

/// The outcome of `RingFile::verify` (checksums and chain) and `cli::verify` (seals).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Verification {
    pub records: u64,
    pub seals_checked: u64,
    /// The sealing key the seals were checked with (none: seals were not checked).
    pub key: Option<String>,
    /// The newest records no genuine seal covers, if any.
    pub unsealed: Option<Unsealed>,
    /// Findings that are not failures (a short unsealed tail, seals not checked).
    pub notices: Vec<String>,
    pub problems: Vec<String>,
}

/// Event records after the newest seal that checks (seal records themselves are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Unsealed {
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    /// From the oldest to the newest of them, by their own timestamps.
    pub span_ms: u64,
}

impl std::fmt::Display for Unsealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records {}..{} ({} records, spanning {:.1} s) are not sealed",
            self.first_seq,
            self.last_seq,
            self.records,
            self.span_ms as f64 / 1000.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring's path in a fresh directory, removed when the guard drops.
    fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = crate::test_dir(&format!("warden-ring-test-{name}-"));
        let path = dir.path().join("audit.ring");
        (dir, path)
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat((i % 50) as usize)).into_bytes()
    }

    #[test]
    fn append_reopen_and_read_in_order() {
        let (_dir, path) = temp("reopen");
        let mut ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        for i in 1..=100 {
            assert_eq!(ring.append(Kind::Event, i, &payload(i)).unwrap(), i);
        }
        drop(ring);
        let ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        assert_eq!((ring.recovered, ring.next_seq()), (100, 101));
        let file = RingFile::open(&path).unwrap();
        let records = file.records(0);
        assert_eq!(records.len(), 100);
        assert!(records.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1 && r.payload == payload(r.seq)));
        assert!(file.verify().problems.is_empty());
        let tenth = &records[9];
        let after = file.records_after(tenth.position, tenth.seq).unwrap();
        assert_eq!(after.iter().map(|r| r.seq).collect::<Vec<_>>(), (11..=100).collect::<Vec<_>>());
        assert!(file.records_after(tenth.position, 999).is_none(), "a stale cursor is refused");
    }

    #[test]
    fn two_writers_share_one_chain_one_batch_at_a_time() {
        const CAPACITY: u64 = 1 << 20;
        let (_dir, path) = temp("two-writers");
        let mut first = Ring::open(&path, CAPACITY).unwrap();
        first.append(Kind::Event, 1, &payload(1)).unwrap();
        // The agent taking over opens the ring while the first still writes.
        let mut second = Ring::open(&path, CAPACITY).unwrap();
        assert_eq!(second.next_seq(), 2);
        // Batches interleave; each writer takes up what the other wrote.
        let mut written = 1;
        for round in 0..40u64 {
            let ring = if round % 2 == 0 { &mut first } else { &mut second };
            ring.acquire().unwrap();
            for i in 0..(round % 7 + 1) {
                written += 1;
                assert_eq!(ring.append(Kind::Event, 2, &payload(round * 10 + i)).unwrap(), written);
            }
            ring.release();
        }
        // Threads appending record by record (each append takes the lock on its own).
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut ring = Ring::open(&path, CAPACITY).unwrap();
                    for i in 0..500 {
                        ring.append(Kind::Event, 100 + w, &payload(i)).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let last = first.append(Kind::Seal, 9, b"{}").unwrap();
        assert_eq!(last, written + 1000 + 1);
        let file = RingFile::open(&path).unwrap();
        let verified = file.verify();
        assert!(verified.problems.is_empty(), "{verified:?}");
        let records = file.records(0);
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>());
        for w in [100, 101] {
            let theirs: Vec<Vec<u8>> = records.iter().filter(|r| r.at_ms == w).map(|r| r.payload.clone()).collect();
            assert_eq!(theirs, (0..500).map(payload).collect::<Vec<_>>(), "writer {w}: every record once, in order");
        }
    }

    #[test]
    fn a_writer_that_died_after_a_record_but_before_its_hints_is_followed() {
        let (_dir, path) = temp("died-before-hints");
        let mut first = Ring::open(&path, MIN_CAPACITY).unwrap();
        let mut second = Ring::open(&path, MIN_CAPACITY).unwrap();
        first.append(Kind::Event, 1, &payload(1)).unwrap();
        // The first writer's hints are rolled back as if it died between record and hints.
        let saved: Vec<u8> = first.map[..HEADER_SIZE as usize].to_vec();
        first.append(Kind::Event, 2, &payload(2)).unwrap();
        first.map[..HEADER_SIZE as usize].copy_from_slice(&saved);
        drop(first);
        assert_eq!(second.append(Kind::Event, 3, &payload(3)).unwrap(), 3, "record 2 is kept, not overwritten");
        let file = RingFile::open(&path).unwrap();
        assert!(file.verify().problems.is_empty());
        assert_eq!(file.records(0).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn hints_torn_by_a_killed_writer_are_recovered_from_the_chain() {
        let (_dir, path) = temp("torn-hints");
        let mut first = Ring::open(&path, MIN_CAPACITY).unwrap();
        let mut second = Ring::open(&path, MIN_CAPACITY).unwrap();
        for i in 1..=3 {
            first.append(Kind::Event, i, &payload(i)).unwrap();
        }
        // Killed half-way through its hints: the new head is written, the rest is the last
        // record's.
        let stale_seq = u64_at(&first.map, H_NEXT_SEQ);
        first.append(Kind::Event, 4, &payload(4)).unwrap();
        first.map[H_NEXT_SEQ..H_NEXT_SEQ + 8].copy_from_slice(&stale_seq.to_le_bytes());
        drop(first);
        assert_eq!(second.append(Kind::Event, 5, &payload(5)).unwrap(), 5, "no sequence number is reused");
        let file = RingFile::open(&path).unwrap();
        assert!(file.verify().problems.is_empty(), "{:?}", file.verify());
        assert_eq!(file.records(0).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn wrap_around_keeps_the_newest_and_counts_the_rest() {
        let (_dir, path) = temp("wrap");
        let mut ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        for i in 1..=5000 {
            ring.append(Kind::Event, i, &payload(i)).unwrap();
        }
        let stats = ring.stats();
        assert!(stats.overwritten > 0 && stats.used <= MIN_CAPACITY);
        let file = RingFile::open(&path).unwrap();
        let records = file.records(0);
        assert_eq!(records.last().unwrap().seq, 5000);
        assert_eq!(records.len() as u64 + file.overwritten(), 5000);
        assert!(records.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert!(file.verify().problems.is_empty(), "{:?}", file.verify().problems);
        drop(ring);
        let mut ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        assert_eq!(ring.append(Kind::Event, 0, b"after").unwrap(), 5001);
    }

    /// What `RingFile::records` did before it went by frames: parse (copy, hash) every record
    /// on the chain and every intact record the scan finds, then keep those asked for.
    fn records_the_long_way(file: &RingFile, from_seq: u64) -> Vec<Record> {
        let reader = file.reader();
        let mut all = match reader.record_at(file.tail) {
            Some((pos, r)) if r.seq == file.tail_seq => {
                let mut out = vec![r];
                let mut next = pos + align8(RECORD_HEADER as u64 + out[0].payload.len() as u64);
                while let Some((p, r)) = reader.record_at(next) {
                    if r.seq != out.last().unwrap().seq + 1 || p >= pos + file.capacity {
                        break;
                    }
                    next = p + align8(RECORD_HEADER as u64 + r.payload.len() as u64);
                    out.push(r);
                }
                out
            }
            _ => Vec::new(),
        };
        let last = all.last().map_or(0, |r| r.seq);
        let mut rest: Vec<Record> = reader.scan().into_iter().filter(|r| r.seq > last).collect();
        rest.sort_by_key(|r| r.seq);
        all.extend(rest);
        all.retain(|r| r.seq >= from_seq);
        all
    }

    #[test]
    fn reading_by_frames_finds_what_parsing_every_record_found() {
        // A whole record, to be carried inside payloads as client text can carry one.
        let (_forge_dir, forge_path) = temp("forge");
        let mut forge = Ring::open(&forge_path, MIN_CAPACITY).unwrap();
        forge.append(Kind::Event, 1, b"{\"forged\":true}").unwrap();
        let forged = forge.data()[..align8(RECORD_HEADER as u64 + 15) as usize].to_vec();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for case in 0..60 {
            let (_dir, path) = temp(&format!("frames-{case}"));
            let mut ring = Ring::open(&path, MIN_CAPACITY).unwrap();
            let count = 1 + next(2500);
            for i in 1..=count {
                let mut p = payload(i);
                if next(8) == 0 {
                    p.extend_from_slice(&forged);
                }
                ring.append(Kind::Event, i, &p).unwrap();
            }
            let (tail, head) = (ring.tail, ring.head);
            drop(ring);
            let mut bytes = std::fs::read(&path).unwrap();
            let data = HEADER_SIZE as usize;
            match case % 4 {
                // A byte flipped somewhere among the records (a broken chain, a forged record
                // laid open inside a damaged one).
                0 | 1 => {
                    let at = tail + next(head - tail);
                    bytes[data + (at % MIN_CAPACITY) as usize] ^= 0x5a;
                }
                // The oldest record unreadable: no chain at all, only the scan.
                2 => bytes[data + (tail % MIN_CAPACITY) as usize] ^= 0xff,
                _ => {}
            }
            std::fs::write(&path, &bytes).unwrap();
            let file = RingFile::open(&path).unwrap();
            for from in [0, count / 2, count.saturating_sub(3), count + 1] {
                let want = records_the_long_way(&file, from);
                let mut got = Vec::new();
                file.each(from, |r| got.push(r));
                assert_eq!(got, want, "case {case}, from {from}");
            }
            let everything = records_the_long_way(&file, 0);
            let span = file.each(0, |_| {});
            let (oldest, newest) = (everything.iter().map(|r| r.seq).min(), everything.iter().map(|r| r.seq).max());
            assert_eq!(span, oldest.zip(newest), "case {case}");
        }
    }

    #[test]
    fn a_torn_record_is_skipped_never_misread() {
        let (_dir, path) = temp("torn");
        let mut ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        for i in 1..=10 {
            ring.append(Kind::Event, i, &payload(i)).unwrap();
        }
        let head = ring.head;
        ring.append(Kind::Event, 11, &payload(11)).unwrap();
        // Tear the last record: its payload half written (as a kill -9 mid-copy would).
        let off = (HEADER_SIZE + head % ring.capacity) as usize + RECORD_HEADER + 3;
        ring.map[off] ^= 0xff;
        drop(ring);
        let ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        assert_eq!(ring.next_seq(), 11, "record 11 was torn and is not counted");
        let records = RingFile::open(&path).unwrap().records(0);
        assert_eq!(records.len(), 10);
    }

    #[test]
    fn a_flipped_byte_is_found_by_verify() {
        let (_dir, path) = temp("flip");
        let mut ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        for i in 1..=20 {
            ring.append(Kind::Event, i, &payload(i)).unwrap();
        }
        let pos = RingFile::open(&path).unwrap().records(0)[9].position;
        let off = (HEADER_SIZE + pos) as usize + RECORD_HEADER + 2;
        ring.map[off] ^= 0x01;
        drop(ring);
        let problems = RingFile::open(&path).unwrap().verify().problems;
        assert!(problems.iter().any(|p| p.contains("seq 10") && p.contains("checksum")), "{problems:?}");
    }

    #[test]
    fn a_rewritten_record_with_a_fixed_checksum_breaks_the_chain() {
        let (_dir, path) = temp("chain");
        let mut ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        for i in 1..=20 {
            ring.append(Kind::Event, i, &payload(i)).unwrap();
        }
        let rec = RingFile::open(&path).unwrap().records(0)[4].clone();
        let off = (HEADER_SIZE + rec.position) as usize;
        ring.map[off + RECORD_HEADER + 2] ^= 0x01;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&ring.map[off + 4..off + 12]);
        crc.update(&ring.map[off + 16..off + RECORD_HEADER + rec.payload.len()]);
        let crc = crc.finalize().to_le_bytes();
        ring.map[off + 12..off + 16].copy_from_slice(&crc);
        drop(ring);
        let problems = RingFile::open(&path).unwrap().verify().problems;
        assert!(problems.iter().any(|p| p.contains("record 6: hash chain broken")), "{problems:?}");
    }

    #[test]
    fn the_magic_inside_a_payload_is_not_a_damaged_record() {
        let (_dir, path) = temp("magic");
        let mut ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        for i in 1..=5 {
            let payload = format!("{{\"text\":\"{}\"}}", "WREC".repeat(40 + i));
            ring.append(Kind::Event, i as u64, payload.as_bytes()).unwrap();
        }
        drop(ring);
        let problems = RingFile::open(&path).unwrap().verify().problems;
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn bad_files_are_refused() {
        let (_dir, path) = temp("bad");
        std::fs::write(&path, b"not a ring at all").unwrap();
        assert!(matches!(Ring::open(&path, MIN_CAPACITY), Err(RingError::NotARing { .. })));
        assert!(RingFile::open(&path).is_err());
        let (_zero, path) = temp("zero");
        let mut header = vec![0u8; HEADER_SIZE as usize];
        header[..8].copy_from_slice(MAGIC_FILE);
        header[H_VERSION..H_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
        std::fs::write(&path, header).unwrap();
        assert!(RingFile::open(&path).is_err(), "a zero-capacity header is refused, not divided by");
        let (_cap, path) = temp("cap");
        Ring::open(&path, MIN_CAPACITY).unwrap();
        assert!(matches!(Ring::open(&path, 2 * MIN_CAPACITY), Err(RingError::CapacityMismatch { .. })));
        let (_small, path) = temp("small");
        assert!(matches!(Ring::open(&path, 1024), Err(RingError::TooSmall)));
    }

    #[test]
    fn a_new_ring_is_private_and_so_is_a_directory_made_for_it() {
        let (dir, _) = temp("private");
        let root = dir.path().to_path_buf();
        let path = root.join("made/for/it/audit.ring");
        let mut ring = Ring::open(&path, MIN_CAPACITY).expect("a ring in a missing directory");
        assert_eq!(ring.last_kind(), None, "an empty ring has no newest record");
        ring.append(Kind::Event, 1, b"{}").unwrap();
        ring.append(Kind::Seal, 2, b"{}").unwrap();
        drop(ring);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&path), 0o600, "ring file mode");
        assert_eq!(mode(path.parent().unwrap()), 0o700, "directory created for the ring");
        assert_eq!(mode(&root.join("made")), 0o700, "every directory created on the way");
        assert_eq!(Ring::open(&path, MIN_CAPACITY).unwrap().last_kind(), Some(Kind::Seal), "recovered");
    }

    #[test]
    fn a_ring_behind_a_symlink_is_refused() {
        let (_dir, path) = temp("symlink");
        let real = path.with_file_name("real.ring");
        Ring::open(&real, MIN_CAPACITY).unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let err = Ring::open(&path, MIN_CAPACITY).err().expect("a link to a ring is refused");
        assert!(matches!(err, RingError::Symlink { .. }), "{err:?}");
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        // A dangling link would otherwise create the file wherever it points.
        let dangling = path.with_file_name("dangling.ring");
        let target = path.with_file_name("elsewhere.ring");
        std::os::unix::fs::symlink(&target, &dangling).unwrap();
        assert!(matches!(Ring::open(&dangling, MIN_CAPACITY), Err(RingError::Symlink { .. })));
        assert!(!target.exists(), "nothing was created through the link");
    }

    #[test]
    fn a_ring_open_to_others_is_tightened_to_0600() {
        let (_dir, path) = temp("loose");
        let mut ring = Ring::open(&path, MIN_CAPACITY).unwrap();
        ring.append(Kind::Event, 1, &payload(1)).unwrap();
        drop(ring);
        // What earlier versions left behind.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let ring = Ring::open(&path, MIN_CAPACITY).expect("an existing 0644 ring is still opened");
        assert_eq!(ring.next_seq(), 2, "and its records kept");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600, "tightened");
    }

    #[test]
    fn a_directory_others_can_write_is_refused_unless_sticky() {
        let (_dir, path) = temp("opendir");
        let dir = path.parent().unwrap().to_path_buf();
        for mode in [0o777, 0o775, 0o757] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Ring::open(&path, MIN_CAPACITY).err().unwrap_or_else(|| panic!("mode {mode:o} accepted"));
            assert!(matches!(err, RingError::WritableDirectory { mode: m, .. } if m == mode), "{err:?}");
            assert!(err.to_string().contains(&dir.display().to_string()), "the directory is named: {err}");
        }
        assert!(!path.exists(), "nothing was created in a directory others could write");
        // Sticky (like /tmp): others cannot rename or remove our file there.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        Ring::open(&path, MIN_CAPACITY).expect("a sticky directory is acceptable");
    }

    #[test]
    fn directories_owned_by_another_user_are_refused() {
        let dir = Path::new("/some/dir");
        assert!(directory_problem(dir, 0o40755, 0, 1000).is_none(), "root's directory");
        assert!(directory_problem(dir, 0o40700, 1000, 1000).is_none(), "the agent's own");
        assert!(matches!(
            directory_problem(dir, 0o40755, 1001, 0),
            Some(PrivateFileError::ForeignDirectory { owner: 1001, agent: 0, .. })
        ));
        assert!(matches!(
            directory_problem(dir, 0o40770, 0, 0),
            Some(PrivateFileError::WritableDirectory { mode: 0o770, .. })
        ));
        assert!(directory_problem(dir, 0o41777, 0, 0).is_none(), "sticky");
    }
}
