//! The audit log's record format and hash chain, shared by the enclave (which writes it) and
//! walletctl (which verifies it).
//!
//! One JSON line per decision. `hash = SHA-256(tag ‖ prev ‖ JSON of the record without hash)`,
//! where `prev` is the previous record's hash (32 zero bytes for the first). The enclave signs
//! the head `(count, hash)` with its audit key, so deleting, editing, reordering or truncating
//! records is detected by anyone holding the audit public key.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Domain tag of record hashes.
pub const RECORD_TAG: &[u8] = b"x402-wallet/audit/v1\0";
/// Domain tag of head signatures.
pub const HEAD_TAG: &[u8] = b"x402-wallet/audit-head/v1\0";

/// Longest `detail` kept in a record: untrusted text (a server's scheme or token name) is cut.
pub const MAX_DETAIL: usize = 512;

/// Cuts `s` to at most [`MAX_DETAIL`] bytes on a character boundary.
#[must_use]
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_owned();
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One audited decision. Field order is the serialization order, part of the hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Unix milliseconds (enclave clock).
    pub at_ms: u64,
    /// `payment`, `deny`, `withheld` or `admin`.
    pub kind: String,
    /// Session, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Wallet, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wallet: String,
    /// Stable reason code (denials) or RPC name (admin changes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Free text for people: amounts, payee, network, what changed. Never secrets.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Previous record's hash, hex.
    pub prev: String,
    /// This record's hash, hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// The enclave's MAC over `hash` (HMAC-SHA-256 under a sealed key), hex. Only the enclave
    /// can check it; it stops a host from rewriting the log at rest with recomputed hashes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

impl Record {
    /// The chain hash of this record (its `hash` field is ignored).
    #[must_use]
    pub fn compute_hash(&self) -> [u8; 32] {
        let body = Self { hash: String::new(), mac: String::new(), ..self.clone() };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let prev = hex::decode(&self.prev).unwrap_or_default();
        Sha256::new()
            .chain_update(RECORD_TAG)
            .chain_update(&prev)
            .chain_update(&json)
            .finalize()
            .into()
    }
}

/// The bytes the enclave's audit key signs for a head, with the verifier's fresh `challenge`
/// (so an old signed head cannot be replayed).
#[must_use]
pub fn head_message(count: u64, hash: &[u8; 32], challenge: &[u8]) -> Vec<u8> {
    let mut m = HEAD_TAG.to_vec();
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&u32::try_from(challenge.len()).unwrap_or(u32::MAX).to_be_bytes());
    m.extend_from_slice(challenge);
    m
}

/// Why a log failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A line is not a record.
    #[error("record {seq}: not a valid audit record ({why})")]
    Malformed {
        /// Position of the line.
        seq: u64,
        /// Parser message.
        why: String,
    },
    /// A record is out of place, or its `prev` or `hash` does not match.
    #[error("record {seq}: {why} (deleted, edited or reordered)")]
    Broken {
        /// Position of the bad record.
        seq: u64,
        /// What does not match.
        why: String,
    },
}

/// Verifies a chain of lines from the start; returns the count and head hash.
///
/// # Errors
/// [`ChainError`] naming the first bad record.
pub fn verify_chain<'a>(
    lines: impl IntoIterator<Item = &'a str>,
) -> Result<(u64, [u8; 32]), ChainError> {
    verify_chain_from(lines, 0, [0; 32])
}

/// Verifies a stretch of a chain: its first line must be record `first` and chain from `prev`
/// (the hash of record `first - 1`; all zeros for record 0). Returns the number after the last
/// record (`first` plus the lines) and the last hash (`prev` for no lines).
///
/// # Errors
/// [`ChainError`] naming the first bad record by its number in the whole chain.
pub fn verify_chain_from<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    first: u64,
    prev: [u8; 32],
) -> Result<(u64, [u8; 32]), ChainError> {
    let mut prev = prev;
    let mut count = first;
    for line in lines {
        let r: Record = serde_json::from_str(line)
            .map_err(|e| ChainError::Malformed { seq: count, why: e.to_string() })?;
        if serde_json::to_string(&r).ok().as_deref() != Some(line) {
            return Err(ChainError::Malformed {
                seq: count,
                why: "not in canonical form (extra fields, spacing or escapes)".into(),
            });
        }
        if r.seq != count {
            return Err(ChainError::Broken {
                seq: count,
                why: format!("expected seq {count}, found {}", r.seq),
            });
        }
        if r.prev != hex::encode(prev) {
            return Err(ChainError::Broken {
                seq: count,
                why: "prev does not match the previous record".into(),
            });
        }
        let h = r.compute_hash();
        if r.hash != hex::encode(h) {
            return Err(ChainError::Broken {
                seq: count,
                why: "hash does not match its content".into(),
            });
        }
        prev = h;
        count += 1;
    }
    Ok((count, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<String> {
        let mut prev = [0u8; 32];
        (0..n)
            .map(|seq| {
                let mut r = Record {
                    seq,
                    at_ms: seq,
                    kind: "payment".into(),
                    detail: format!("0.0{seq} USDC"),
                    prev: hex::encode(prev),
                    ..Default::default()
                };
                prev = r.compute_hash();
                r.hash = hex::encode(prev);
                serde_json::to_string(&r).unwrap()
            })
            .collect()
    }

    #[test]
    fn detects_edits_deletions_and_reordering() {
        let lines = chain(5);
        assert_eq!(verify_chain(lines.iter().map(String::as_str)).unwrap().0, 5);
        let mut edited = lines.clone();
        edited[2] = edited[2].replace("0.02", "0.00");
        assert!(matches!(
            verify_chain(edited.iter().map(String::as_str)),
            Err(ChainError::Broken { seq: 2, .. })
        ));
        let mut deleted = lines.clone();
        deleted.remove(1);
        assert!(matches!(
            verify_chain(deleted.iter().map(String::as_str)),
            Err(ChainError::Broken { seq: 1, .. })
        ));
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        assert!(matches!(
            verify_chain(swapped.iter().map(String::as_str)),
            Err(ChainError::Broken { seq: 3, .. })
        ));
        assert!(matches!(verify_chain(["{not json"]), Err(ChainError::Malformed { seq: 0, .. })));
        let spaced = lines[0].replacen(':', ": ", 1);
        assert!(
            matches!(verify_chain([spaced.as_str()]), Err(ChainError::Malformed { seq: 0, .. })),
            "only the canonical form verifies"
        );
        assert!(clip(&"é".repeat(400)).len() <= MAX_DETAIL + 3);
    }
}
