//! Seals: an HMAC-SHA256 of the chain head under a key kept outside the ring (root-only file).
//! Anyone able to rewrite the ring can recompute checksums and chain hashes, but not seals.
//!
//! A seal also states how often its writer seals (`every`), so `warden audit verify` can tell a
//! short unsealed tail (a crash, a live ring) from seals stripped out of the ring. `every` is
//! authenticated: seals that carry it use the second HMAC input below; seals of earlier
//! versions (no `every`) are checked with the first.

use std::{
    fs::OpenOptions,
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
};

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use super::ring::{PrivateFileError, open_private, private_dir};

/// The sealing secret.
pub struct SealKey([u8; 32]);

/// Domain separation for the second HMAC input (seals that carry `every`).
const SEAL_V2: &[u8] = b"warden seal v2\0";

/// A seal record's payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seal {
    pub kind: String,
    /// The newest record the seal covers.
    pub upto_seq: u64,
    /// That record's chain hash (hex).
    pub head: String,
    /// How many records the writer lets pass between seals (`audit.seal_every`); 0 in seals
    /// written before it was recorded.
    #[serde(default)]
    pub every: u64,
    /// HMAC-SHA256(key, upto_seq || head) when `every` is 0 (earlier versions), else
    /// HMAC-SHA256(key, "warden seal v2\0" || upto_seq || head || every); integers are
    /// little-endian u64 (hex).
    pub hmac: String,
}

/// The sealing key could not be used; says which file and who must fix what.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("audit seal key {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("audit seal key {path}: {len} bytes, expected 32 (an administrator must restore the key or remove it)")]
    WrongSize { path: PathBuf, len: usize },
    #[error(
        "audit seal key {path} is a symbolic link; the agent does not follow links to its secrets. An administrator \
         must replace the link with the key itself or point audit.key at the real file"
    )]
    Symlink { path: PathBuf },
    #[error(
        "audit seal key {path} is not a regular file; an administrator must remove it or point audit.key elsewhere"
    )]
    NotAFile { path: PathBuf },
    #[error(
        "audit seal key {path} is owned by uid {owner}, not by the agent (uid {agent}): that user could forge seals. \
         An administrator must remove the key (seals made with it then cannot be checked) or chown it to uid {agent}"
    )]
    ForeignOwner { path: PathBuf, owner: u32, agent: u32 },
    #[error(
        "directory {dir} of the audit seal key is writable by group or others (mode {mode:04o}) without the sticky \
         bit: another user could replace the key. An administrator must `chmod go-w` it or point audit.key at a \
         private directory"
    )]
    WritableDirectory { dir: PathBuf, mode: u32 },
    #[error(
        "directory {dir} of the audit seal key is owned by uid {owner}, neither root nor the agent (uid {agent}): \
         that user could replace the key. An administrator must chown it to root or point audit.key elsewhere"
    )]
    ForeignDirectory { dir: PathBuf, owner: u32, agent: u32 },
}

impl KeyError {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the key, creating a random one (mode 0600) if the file does not exist. Like the ring,
/// the key is never opened through a link, must be the agent's own regular file in a directory
/// others cannot write, and is tightened to 0600 (with a warning) if group or others could read it.
pub fn load_or_create_key(path: &Path) -> Result<SealKey, KeyError> {
    let private = |problem| KeyError::from_private(path, problem);
    private_dir(path).map_err(private)?;
    match open_private(path, OpenOptions::new().read(true), "audit seal key") {
        Ok(file) => read_key(path, file),
        Err(PrivateFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            let io = |source| KeyError::Io { path: path.to_path_buf(), source };
            let mut key = [0u8; 32];
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).map_err(io)?;
            match open_private(path, OpenOptions::new().write(true).create_new(true), "audit seal key") {
                Ok(mut file) => {
                    // Synced: losing the key makes every seal made with it uncheckable.
                    file.write_all(&key).and_then(|()| file.sync_all()).map_err(io)?;
                    Ok(SealKey(key))
                }
                // Another process created it between our two opens: use theirs.
                Err(PrivateFileError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let file = open_private(path, OpenOptions::new().read(true), "audit seal key").map_err(private)?;
                    read_key(path, file)
                }
                Err(problem) => Err(private(problem)),
            }
        }
        Err(problem) => Err(private(problem)),
    }
}

fn read_key(path: &Path, file: std::fs::File) -> Result<SealKey, KeyError> {
    let mut bytes = Vec::with_capacity(33);
    file.take(4096).read_to_end(&mut bytes).map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
    let len = bytes.len();
    let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::WrongSize { path: path.to_path_buf(), len })?;
    Ok(SealKey(key))
}

/// Reads an existing key (for verification: an operator may point at a copy, so links are
/// followed and the file's mode is not judged here).
pub fn load_key(path: &Path) -> Result<SealKey, KeyError> {
    let file = std::fs::File::open(path).map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
    read_key(path, file)
}

impl SealKey {
    fn mac(&self, upto_seq: u64, head: &[u8; 32], every: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        if every == 0 {
            // Seals written before `every` existed.
            mac.update(&upto_seq.to_le_bytes());
            mac.update(head);
        } else {
            mac.update(SEAL_V2);
            mac.update(&upto_seq.to_le_bytes());
            mac.update(head);
            mac.update(&every.to_le_bytes());
        }
        hex(&mac.finalize().into_bytes())
    }

    /// Seals the chain up to `upto_seq` (whose chain hash is `head`), written by a writer that
    /// seals every `every` records.
    pub fn seal(&self, upto_seq: u64, head: &[u8; 32], every: u64) -> Seal {
        Seal { kind: "seal".into(), upto_seq, head: hex(head), every, hmac: self.mac(upto_seq, head, every) }
    }

    /// Whether `seal` is genuine and matches the chain hash of its record.
    pub fn check(&self, seal: &Seal, head: &[u8; 32]) -> bool {
        seal.head == hex(head) && seal.hmac == self.mac(seal.upto_seq, head, seal.every)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    /// A key's path in a fresh directory, removed when the guard drops.
    fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = crate::test_dir(&format!("warden-seal-test-{name}-"));
        let path = dir.path().join("audit.ring.key");
        (dir, path)
    }

    #[test]
    fn seals_check_and_forgeries_do_not() {
        let key = SealKey([7; 32]);
        let head = [1u8; 32];
        let seal = key.seal(42, &head, 1000);
        assert!(key.check(&seal, &head));
        assert!(!key.check(&seal, &[2u8; 32]), "another chain head");
        assert!(!SealKey([8; 32]).check(&seal, &head), "another key");
        let mut forged = seal.clone();
        forged.upto_seq = 43;
        assert!(!key.check(&forged, &head), "another record");
        let mut forged = seal.clone();
        forged.every = 1_000_000;
        assert!(!key.check(&forged, &head), "every is authenticated: raising it would hide stripped seals");
        let mut forged = seal.clone();
        forged.every = 0;
        assert!(!key.check(&forged, &head), "nor can a seal pass for one of an earlier version");
    }

    #[test]
    fn seals_of_earlier_versions_still_check() {
        let key = SealKey([7; 32]);
        let head = [1u8; 32];
        // The payload an earlier writer produced: no `every`, HMAC over upto_seq || head.
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
        mac.update(&42u64.to_le_bytes());
        mac.update(&head);
        let old = format!(
            r#"{{"kind":"seal","upto_seq":42,"head":"{}","hmac":"{}"}}"#,
            hex(&head),
            hex(&mac.finalize().into_bytes())
        );
        let seal: Seal = serde_json::from_str(&old).expect("an old seal parses");
        assert_eq!(seal.every, 0);
        assert!(key.check(&seal, &head), "an old seal checks");
    }

    #[test]
    fn a_new_key_is_private_and_loaded_again() {
        let (dir, _) = temp("new");
        let path = dir.path().join("made/for/key/audit.ring.key");
        let key = load_or_create_key(&path).expect("created");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600, "key file mode");
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o7777, 0o700, "directory made");
        let again = load_or_create_key(&path).expect("loaded");
        assert_eq!(key.0, again.0, "the same key, not a new one");
        assert_eq!(load_key(&path).expect("verification reads it").0, key.0);
    }

    #[test]
    fn a_key_behind_a_symlink_is_refused() {
        let (_dir, path) = temp("symlink");
        let real = path.with_file_name("real.key");
        load_or_create_key(&real).unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let err = load_or_create_key(&path).err().expect("a link to a key is refused");
        assert!(matches!(err, KeyError::Symlink { .. }), "{err:?}");
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        // A dangling link: the key must not be created wherever it points.
        let dangling = path.with_file_name("dangling.key");
        let target = path.with_file_name("attacker-reads-this.key");
        std::os::unix::fs::symlink(&target, &dangling).unwrap();
        assert!(matches!(load_or_create_key(&dangling), Err(KeyError::Symlink { .. })));
        assert!(!target.exists(), "no key written through the link");
    }

    #[test]
    fn a_readable_key_is_tightened_and_a_bad_one_refused() {
        let (_dir, path) = temp("loose");
        let key = load_or_create_key(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_key(&path).expect("still loaded").0, key.0);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600, "tightened");

        let short = path.with_file_name("short.key");
        std::fs::write(&short, [1u8; 31]).unwrap();
        let err = load_or_create_key(&short).err().expect("a 31-byte key is refused, not replaced");
        assert!(matches!(err, KeyError::WrongSize { len: 31, .. }), "{err:?}");
        assert_eq!(std::fs::read(&short).unwrap().len(), 31, "left as it was");

        let dir = path.with_file_name("dir.key");
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(load_or_create_key(&dir), Err(KeyError::NotAFile { .. })), "a directory is not a key");
    }

    #[test]
    fn a_key_in_a_directory_others_can_write_is_refused() {
        let (_dir, path) = temp("opendir");
        std::fs::set_permissions(path.parent().unwrap(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = load_or_create_key(&path).err().expect("refused");
        assert!(matches!(err, KeyError::WritableDirectory { mode: 0o777, .. }), "{err:?}");
        assert!(!path.exists(), "no key created there");
    }
}
