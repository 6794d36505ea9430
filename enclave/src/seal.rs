//! Sealing: authenticated encryption of every value at rest, bound to the record's identity.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per write (no nonce bookkeeping, no birthday
//! risk at our volumes). The associated data is the record's table and key, so a sealed blob
//! moved to another record (a key swapped between wallets, a policy copied onto another wallet)
//! fails to open.
//!
//! The 32-byte sealing key comes from the platform's [`crate::platform::SealingKeySource`] (a
//! key file in simulated mode; in Nitro mode a KMS data key bound to the enclave's PCRs, not built
//! yet); seal nonces come from the platform's [`Entropy`].

use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use zeroize::Zeroizing;

use crate::platform::Entropy;

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
    /// KMS did not release the sealing key (Nitro mode).
    #[error("the sealing key from KMS (key {key_id}, service {service_id}): {reason}")]
    Kms {
        /// The KMS key id or ARN.
        key_id: String,
        /// The wallet service id (the encryption context).
        service_id: String,
        /// What went wrong.
        reason: String,
    },
}

/// Holds the sealing key. No `Debug` of the key, no `Clone`.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    entropy: Entropy,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// From raw key bytes (zeroized by the caller's `Zeroizing`), drawing nonces from
    /// `entropy`.
    #[must_use]
    pub fn new(key: &Zeroizing<[u8; 32]>, entropy: Entropy) -> Self {
        Self { cipher: XChaCha20Poly1305::new(key.as_ref().into()), entropy }
    }

    /// Seals `plaintext` for the record named by `aad`.
    #[must_use]
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = self.entropy.bytes();
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
        let s = Sealer::new(&Zeroizing::new([7u8; 32]), crate::platform::nsm::test_entropy());
        let blob = s.seal(b"keys/w1", b"secret");
        assert_eq!(s.open(b"keys/w1", &blob).unwrap().as_slice(), b"secret");
        assert!(s.open(b"keys/w2", &blob).is_err(), "swapped to another record");
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(s.open(b"keys/w1", &bad).is_err(), "tampered");
        assert!(s.open(b"keys/w1", &blob[..blob.len() - 1]).is_err(), "truncated");
        let other = Sealer::new(&Zeroizing::new([8u8; 32]), crate::platform::nsm::test_entropy());
        assert!(other.open(b"keys/w1", &blob).is_err(), "another sealing key");
        assert!(
            !blob.windows(6).any(|w| w == b"secret"),
            "ciphertext does not contain the plaintext"
        );
        assert!(!format!("{s:?}").contains('7'), "Debug shows no key");
    }
}
