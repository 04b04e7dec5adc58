//! Masking keys: the secrets behind deterministic tokens and format-preserving values. They live
//! outside policies (a policy file is configuration anyone reviewing it reads), in a directory
//! only root can read, one file per version: `mask-1.key`, `mask-2.key`, ... (32 random bytes
//! each). The highest version masks; rotating is adding the next version (tokens change with it,
//! so joins across a rotation do not match, by design: an old token no longer names a value).
//! The directory is created with the first key when there is none.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
};

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use crate::audit::ring::{PrivateFileError, open_private, private_dir};

/// One key version.
#[derive(Clone)]
pub struct Key {
    pub version: u32,
    /// HMAC-SHA-256 keyed with the key's bytes, before any input.
    keyed: Hmac<Sha256>,
    /// The SipHash-2-4 key of tokens: 16 bytes derived from the key (HMAC-SHA-256 of a label).
    token_key: [u8; 16],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bytes.
        write!(f, "Key(version {})", self.version)
    }
}

impl Key {
    /// A key from bytes (tests, and keys read from files).
    pub fn new(version: u32, bytes: [u8; 32]) -> Key {
        let keyed = Hmac::<Sha256>::new_from_slice(&bytes).expect("HMAC takes any key length");
        let mut derive = keyed.clone();
        derive.update(b"warden token prf v1");
        let derived: [u8; 32] = derive.finalize().into_bytes().into();
        let mut token_key = [0u8; 16];
        token_key.copy_from_slice(&derived[..16]);
        Key { version, keyed, token_key }
    }

    /// A key of random bytes that lives only in memory (version 0): tokens made with it change
    /// when the agent restarts. For agents without a key directory, and tests.
    pub fn ephemeral() -> Key {
        let mut bytes = [0u8; 32];
        use std::io::Read;
        // /dev/urandom does not fail on Linux once the pool is initialised; a failure leaves
        // zeros only if the device is missing, which `load_or_create` reports for real keys.
        if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
            tracing::error!(error = %e, "cannot read /dev/urandom for an in-memory mask key");
        }
        Key::new(0, bytes)
    }

    /// HMAC-SHA-256 of `value` under this key, in the domain `purpose` (so a token and a
    /// format-preserving value of the same input are unrelated).
    /// The keyed pseudo-random function of tokens: SipHash-2-4 with 128-bit output under a key
    /// derived from this one. A PRF is what a token needs (nobody without the key can tell
    /// which value gave it, nor make the token of a value), and on short values it costs a
    /// quarter of an HMAC-SHA-256, which matters on a result of millions of rows.
    pub fn token_prf(&self, value: &[u8]) -> [u8; 16] {
        use std::hash::Hasher as _;
        let mut h = siphasher::sip128::SipHasher24::new_with_key(&self.token_key);
        h.write(value);
        siphasher::sip128::Hasher128::finish128(&h).as_bytes()
    }

    pub fn mac(&self, purpose: &str, value: &[u8]) -> [u8; 32] {
        // The keyed state is computed once (a clone costs a copy, not two hash blocks).
        let mut mac = self.keyed.clone();
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        mac.finalize().into_bytes().into()
    }
}

/// Every key version found.
#[derive(Debug, Clone)]
pub struct MaskKeys {
    versions: BTreeMap<u32, Key>,
}

/// Why the keys could not be used; names the file and who must fix what.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("masking key {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("masking key {path}: {len} bytes, expected 32 (an administrator must restore the key or remove it)")]
    WrongSize { path: PathBuf, len: usize },
    #[error(
        "masking key {path}: {problem} (keys must be regular files owned by the agent's user, in a directory only it and root can write)"
    )]
    NotPrivate { path: PathBuf, problem: String },
}

fn describe(problem: PrivateFileError) -> String {
    match problem {
        PrivateFileError::Io(e) => e.to_string(),
        PrivateFileError::Symlink => "a symbolic link (links to secrets are not followed)".into(),
        PrivateFileError::NotAFile => "not a regular file".into(),
        PrivateFileError::ForeignOwner { owner, agent } => format!("owned by uid {owner}, not the agent's uid {agent}"),
        PrivateFileError::WritableDirectory { dir, mode } => {
            format!("its directory {} is writable by others (mode {mode:04o})", dir.display())
        }
        PrivateFileError::ForeignDirectory { dir, owner, agent } => {
            format!("its directory {} is owned by uid {owner}, neither root nor the agent's uid {agent}", dir.display())
        }
    }
}

/// `mask-N.key` → N.
fn version_of(name: &str) -> Option<u32> {
    name.strip_prefix("mask-")?.strip_suffix(".key")?.parse().ok().filter(|v| *v > 0)
}

impl MaskKeys {
    /// Reads every `mask-N.key` of `dir`; creates `mask-1.key` (32 random bytes, 0600, in a
    /// 0700 directory) when there is none.
    pub fn load_or_create(dir: &Path) -> Result<MaskKeys, KeyError> {
        let first = dir.join("mask-1.key");
        private_dir(&first).map_err(|p| KeyError::NotPrivate { path: first.clone(), problem: describe(p) })?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        let mut versions = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(version_of) else { continue };
            let path = entry.path();
            versions.insert(version, read(&path, version)?);
        }
        if versions.is_empty() {
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(io(&first))?;
            match open_private(&first, OpenOptions::new().write(true).create_new(true), "masking key") {
                Ok(mut file) => {
                    file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io(&first))?;
                    versions.insert(1, Key::new(1, bytes));
                }
                // Created meanwhile by another process: use it.
                Err(PrivateFileError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
                    versions.insert(1, read(&first, 1)?);
                }
                Err(problem) => return Err(KeyError::NotPrivate { path: first, problem: describe(problem) }),
            }
        }
        Ok(MaskKeys { versions })
    }

    /// Keys given directly (tests).
    pub fn from_keys(keys: impl IntoIterator<Item = Key>) -> MaskKeys {
        MaskKeys { versions: keys.into_iter().map(|k| (k.version, k)).collect() }
    }

    /// The key that masks now: the highest version.
    pub fn current(&self) -> Option<&Key> {
        self.versions.values().next_back()
    }

    pub fn get(&self, version: u32) -> Option<&Key> {
        self.versions.get(&version)
    }
}

fn read(path: &Path, version: u32) -> Result<Key, KeyError> {
    let file = open_private(path, OpenOptions::new().read(true), "masking key")
        .map_err(|p| KeyError::NotPrivate { path: path.to_path_buf(), problem: describe(p) })?;
    let mut bytes = Vec::with_capacity(33);
    file.take(4096).read_to_end(&mut bytes).map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
    let len = bytes.len();
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::WrongSize { path: path.to_path_buf(), len })?;
    Ok(Key::new(version, bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A keys directory not yet made, in a fresh directory removed when the guard drops.
    fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = crate::test_dir(&format!("warden-mask-keys-{name}-"));
        let keys = dir.path().join("keys");
        (dir, keys)
    }

    #[test]
    fn the_first_key_is_created_private_and_found_again() {
        let (_scratch, dir) = scratch("create");
        let keys = MaskKeys::load_or_create(&dir).unwrap();
        let key = keys.current().unwrap().clone();
        assert_eq!(key.version, 1);
        let meta = std::fs::metadata(dir.join("mask-1.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let again = MaskKeys::load_or_create(&dir).unwrap();
        assert_eq!(again.current().unwrap().mac("t", b"v"), key.mac("t", b"v"), "the same key");
        let bytes = std::fs::read(dir.join("mask-1.key")).unwrap();
        assert!(!format!("{key:?}").contains(&format!("{:?}", &bytes[0..4])), "Debug shows no key bytes");
    }

    #[test]
    fn the_highest_version_masks_and_older_ones_stay_readable() {
        let (_scratch, dir) = scratch("rotate");
        MaskKeys::load_or_create(&dir).unwrap();
        std::fs::write(dir.join("mask-2.key"), [7u8; 32]).unwrap();
        std::fs::set_permissions(dir.join("mask-2.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a key").unwrap();
        let keys = MaskKeys::load_or_create(&dir).unwrap();
        assert_eq!(keys.current().unwrap().version, 2);
        assert!(keys.get(1).is_some());
        assert_ne!(keys.get(1).unwrap().mac("t", b"v"), keys.get(2).unwrap().mac("t", b"v"));
    }

    #[test]
    fn a_key_of_the_wrong_size_is_refused_naming_the_file() {
        let (_scratch, dir) = scratch("size");
        MaskKeys::load_or_create(&dir).unwrap();
        std::fs::write(dir.join("mask-3.key"), [1u8; 16]).unwrap();
        std::fs::set_permissions(dir.join("mask-3.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = MaskKeys::load_or_create(&dir).unwrap_err().to_string();
        assert!(err.contains("mask-3.key") && err.contains("16 bytes"), "{err}");
    }

    #[test]
    fn purposes_separate_macs() {
        let key = Key::new(1, [9; 32]);
        assert_ne!(key.mac("token", b"a"), key.mac("fpe", b"a"));
        assert_eq!(key.mac("token", b"a"), key.mac("token", b"a"));
    }
}
