//! Sealing: authenticated encryption of every value at rest, bound to the record's identity.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per write (no nonce bookkeeping, no birthday
//! risk at our volumes). The associated data is the record's table and key, so a sealed blob
//! moved to another record (a key swapped between wallets, a policy copied onto another wallet)
//! fails to open.
//!
//! In simulated mode the 32-byte sealing key lives in `<data-dir>/sealing.key` (0600). In Nitro
//! mode it would come from KMS bound to the enclave's PCRs (not built yet; see ARCHITECTURE.md).

use std::{fs, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use rand_core::{OsRng, RngCore as _};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// Why sealing or unsealing failed. Never carries key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The blob was altered, truncated, or belongs to another record.
    #[error("sealed record {0} failed authentication (tampered, truncated or swapped)")]
    Tampered(String),
    /// The key file is unusable.
    #[error("sealing key file {path}: {reason}")]
    KeyFile {
        /// Path of the file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Holds the sealing key. No `Debug` of the key, no `Clone`.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// From raw key bytes (zeroized by the caller's `Zeroizing`).
    #[must_use]
    pub fn new(key: &Zeroizing<[u8; 32]>) -> Self {
        Self { cipher: XChaCha20Poly1305::new(key.as_ref().into()) }
    }

    /// Loads the key file, or creates it (0600, 32 random bytes) if it does not exist.
    ///
    /// # Errors
    /// [`SealError::KeyFile`] if the file exists with the wrong size or permissions.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let err = |reason: String| SealError::KeyFile { path: path.display().to_string(), reason };
        match fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                use std::os::unix::fs::PermissionsExt as _;
                let mode = fs::metadata(path).map_err(|e| err(e.to_string()))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "permissions {:o} are too open; it must be 0600",
                        mode & 0o777
                    )));
                }
                let key: Zeroizing<[u8; 32]> = Zeroizing::new(
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| err(format!("expected 32 bytes, found {}", bytes.len())))?,
                );
                Ok(Self::new(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(key.as_mut());
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(key.as_ref())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err(e.to_string()))?;
                Ok(Self::new(&key))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Seals `plaintext` for the record named by `aad`.
    #[must_use]
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers. qed");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a blob sealed for `aad`.
    ///
    /// # Errors
    /// [`SealError::Tampered`] if it was altered or belongs to another record.
    pub fn open(&self, aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let tampered = || SealError::Tampered(String::from_utf8_lossy(aad).into_owned());
        if blob.len() < 1 + NONCE_LEN + 16 || blob[0] != VERSION {
            return Err(tampered());
        }
        let (nonce, ct) = blob[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| tampered())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::new(&Zeroizing::new([7u8; 32]));
        let blob = s.seal(b"keys/w1", b"secret");
        assert_eq!(s.open(b"keys/w1", &blob).unwrap().as_slice(), b"secret");
        assert!(s.open(b"keys/w2", &blob).is_err(), "swapped to another record");
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(s.open(b"keys/w1", &bad).is_err(), "tampered");
        assert!(s.open(b"keys/w1", &blob[..blob.len() - 1]).is_err(), "truncated");
        let other = Sealer::new(&Zeroizing::new([8u8; 32]));
        assert!(other.open(b"keys/w1", &blob).is_err(), "another sealing key");
        assert!(
            !blob.windows(6).any(|w| w == b"secret"),
            "ciphertext does not contain the plaintext"
        );
    }

    #[test]
    fn key_file_is_0600_and_reloads() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sealing.key");
        let a = Sealer::load_or_create(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let b = Sealer::load_or_create(&p).unwrap();
        assert_eq!(b.open(b"x", &a.seal(b"x", b"y")).unwrap().as_slice(), b"y");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Sealer::load_or_create(&p).is_err(), "a world-readable key file is refused");
        assert!(!format!("{a:?}").contains('7'));
    }
}
