//! Seals: an HMAC-SHA256 of the chain head under a key kept outside the ring (root-only file).
//! Anyone able to rewrite the ring can recompute checksums and chain hashes, but not seals.

use std::{
    fs,
    io::{self, Read as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// The sealing secret.
pub struct SealKey([u8; 32]);

/// A seal record's payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seal {
    pub kind: String,
    /// The newest record the seal covers.
    pub upto_seq: u64,
    /// That record's chain hash (hex).
    pub head: String,
    /// HMAC-SHA256(key, upto_seq || head) (hex).
    pub hmac: String,
}

#[derive(Debug, thiserror::Error)]
#[error("audit seal key {path}: {source}")]
pub struct KeyError {
    path: PathBuf,
    source: io::Error,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the key, creating a random one (mode 0600) if the file does not exist.
pub fn load_or_create_key(path: &Path) -> Result<SealKey, KeyError> {
    let err = |source| KeyError { path: path.to_path_buf(), source };
    match fs::read(path) {
        Ok(bytes) if bytes.len() == 32 => Ok(SealKey(bytes.try_into().expect("32 bytes"))),
        Ok(bytes) => {
            Err(err(io::Error::new(io::ErrorKind::InvalidData, format!("{} bytes, expected 32", bytes.len()))))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).map_err(err)?;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(err)?;
            }
            let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
            io::Write::write_all(&mut file, &key).map_err(err)?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
            Ok(SealKey(key))
        }
        Err(e) => Err(err(e)),
    }
}

/// Reads an existing key (for verification).
pub fn load_key(path: &Path) -> Result<SealKey, KeyError> {
    let bytes = fs::read(path).map_err(|source| KeyError { path: path.to_path_buf(), source })?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, "expected 32 bytes"),
    })?;
    Ok(SealKey(key))
}

impl SealKey {
    fn mac(&self, upto_seq: u64, head: &[u8; 32]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(&upto_seq.to_le_bytes());
        mac.update(head);
        hex(&mac.finalize().into_bytes())
    }

    pub fn seal(&self, upto_seq: u64, head: &[u8; 32]) -> Seal {
        Seal { kind: "seal".into(), upto_seq, head: hex(head), hmac: self.mac(upto_seq, head) }
    }

    /// Whether `seal` is genuine and matches the chain hash of its record.
    pub fn check(&self, seal: &Seal, head: &[u8; 32]) -> bool {
        seal.head == hex(head) && seal.hmac == self.mac(seal.upto_seq, head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_check_and_forgeries_do_not() {
        let key = SealKey([7; 32]);
        let head = [1u8; 32];
        let seal = key.seal(42, &head);
        assert!(key.check(&seal, &head));
        assert!(!key.check(&seal, &[2u8; 32]), "another chain head");
        assert!(!SealKey([8; 32]).check(&seal, &head), "another key");
        let mut forged = seal.clone();
        forged.upto_seq = 43;
        assert!(!key.check(&forged, &head));
    }
}
