//! The anchored head as stored in etcd: what this enclave had made durable at its last round.
//!
//! Layout (202 bytes): [`MAGIC`] (27 bytes) ‖ `epoch` (u64) ‖ `lineage` (16 bytes) ‖
//! `journal_records` ‖ `audit_records` ‖ `store_seq` (u64 big-endian each) ‖ `chain` (32
//! bytes: the audit chain's hash after record `audit_records`, all zeros for none) ‖
//! `journal_chain` ‖ `state_chain` (32 bytes each: the spend journal's and the state store's
//! running hashes at their counts, [`crate::chain`]) ‖ `mac` (32 bytes): HMAC-SHA-256 under
//! the enclave's anchor MAC key over everything before it *and* the anchor's binding ([`binding`]: the etcd key, the CA, the server name). So the anchor's operator
//! can store an old genuine head (the trust assumption excludes that), but never invent one, move
//! one from another key, or serve one written under another anchor configuration.
//!
//! `lineage` is a random value each enclave instance draws when it starts (or provisions): the
//! instance that wrote the head. Two instances never write the same bytes, so "the value I tried
//! to write" is never mistaken for another instance's. The three hashes bind each store's
//! content at the anchored counts, so a store (or a single record) taken from another copy's
//! history does not pass the start-up check.

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

use crate::head::Facts;

/// The value's tag and version.
pub const MAGIC: &[u8; 27] = b"x402-wallet/anchor-head/v1\0";
const LEN: usize = MAGIC.len() + 8 + 16 + 3 * 8 + 3 * 32 + 32;

/// What a head's MAC binds besides the head itself: the etcd key, the anchor CA (PEM) and the
/// server name, length-prefixed under a domain tag, hashed.
#[must_use]
pub fn binding(etcd_key: &str, ca_pem: &str, server_name: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"x402-wallet/anchor-binding/v1\0");
    for part in [etcd_key, ca_pem, server_name] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// One anchored head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Bumped by every start of an enclave (and by re-anchoring): an instance whose epoch is
    /// older halts at its next compare-and-swap.
    pub epoch: u64,
    /// The instance that wrote it (random per start).
    pub lineage: [u8; 16],
    /// What the stores held durably (the commit head's facts).
    pub facts: Facts,
    /// The audit chain's hash after `facts.audit_records` records.
    pub chain: [u8; 32],
    /// The spend journal's chain hash after `facts.journal_records` ([`crate::chain`]).
    pub journal_chain: [u8; 32],
    /// The state store's chain hash after batch `facts.store_seq` ([`crate::chain`]).
    pub state_chain: [u8; 32],
}

/// Why a stored value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    /// Not this format.
    #[error("the anchored value is not an x402-wallet head ({0} bytes)")]
    Format(usize),
    /// The MAC does not verify: not written by this enclave's key for this etcd key.
    #[error(
        "the anchored head's MAC does not verify: it was not written by this enclave for this key"
    )]
    Mac,
}

fn mac(mac_key: &[u8; 32], binding: &[u8; 32], body: &[u8]) -> [u8; 32] {
    #[allow(clippy::expect_used)]
    let mut m = <Hmac<Sha256>>::new_from_slice(mac_key).expect("HMAC takes any key length");
    m.update(binding);
    m.update(body);
    m.finalize().into_bytes().into()
}

impl Head {
    /// The stored bytes, MACed for `binding`.
    #[must_use]
    pub fn encode(&self, mac_key: &[u8; 32], binding: &[u8; 32]) -> Vec<u8> {
        let mut v = Vec::with_capacity(LEN);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.extend_from_slice(&self.lineage);
        for w in [self.facts.journal_records, self.facts.audit_records, self.facts.store_seq] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(&self.chain);
        v.extend_from_slice(&self.journal_chain);
        v.extend_from_slice(&self.state_chain);
        let tag = mac(mac_key, binding, &v);
        v.extend_from_slice(&tag);
        v
    }

    /// Reads and authenticates a stored value.
    ///
    /// # Errors
    /// [`ValueError`] when it is not a head or its MAC does not verify.
    pub fn decode(
        bytes: &[u8],
        mac_key: &[u8; 32],
        binding: &[u8; 32],
    ) -> Result<Self, ValueError> {
        if bytes.len() != LEN || !bytes.starts_with(MAGIC) {
            return Err(ValueError::Format(bytes.len()));
        }
        let (body, tag) = bytes.split_at(LEN - 32);
        let want = mac(mac_key, binding, body);
        // Constant-time comparison of the tag.
        let diff = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ValueError::Mac);
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let m = MAGIC.len();
        let mut lineage = [0u8; 16];
        lineage.copy_from_slice(&body[m + 8..m + 24]);
        let hash = |at: usize| {
            let mut h = [0u8; 32];
            h.copy_from_slice(&body[at..at + 32]);
            h
        };
        Ok(Self {
            epoch: word(m),
            lineage,
            facts: Facts {
                journal_records: word(m + 24),
                audit_records: word(m + 32),
                store_seq: word(m + 40),
            },
            chain: hash(m + 48),
            journal_chain: hash(m + 80),
            state_chain: hash(m + 112),
        })
    }
}

/// A shared value's stored form: `bytes` ‖ HMAC-SHA-256(`mac_key`, `binding` ‖ `bytes`).
#[must_use]
pub fn seal_shared(mac_key: &[u8; 32], binding: &[u8; 32], bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 32);
    v.extend_from_slice(bytes);
    v.extend_from_slice(&mac(mac_key, binding, bytes));
    v
}

/// The bytes of a value [`seal_shared`] made for `binding`.
///
/// # Errors
/// [`ValueError::Format`] when it is too short to carry a MAC, [`ValueError::Mac`] when the
/// MAC does not verify.
pub fn open_shared<'v>(
    mac_key: &[u8; 32],
    binding: &[u8; 32],
    stored: &'v [u8],
) -> Result<&'v [u8], ValueError> {
    if stored.len() < 32 {
        return Err(ValueError::Format(stored.len()));
    }
    let (bytes, tag) = stored.split_at(stored.len() - 32);
    let want = mac(mac_key, binding, bytes);
    let diff = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(ValueError::Mac);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_forgeries() {
        let key = [7u8; 32];
        let (a, b) = (binding("/a/head", "CA", "etcd"), binding("/b/head", "CA", "etcd"));
        let h = Head {
            epoch: 3,
            lineage: [5; 16],
            journal_chain: [6; 32],
            state_chain: [7; 32],
            facts: Facts { journal_records: 10, audit_records: 12, store_seq: 40 },
            chain: [9; 32],
        };
        let v = h.encode(&key, &a);
        assert_eq!(v.len(), LEN);
        assert_eq!(Head::decode(&v, &key, &a), Ok(h));
        // Another binding (etcd key, CA, server name), another MAC key, a flipped byte anywhere,
        // a cut value: refused.
        assert_eq!(Head::decode(&v, &key, &b), Err(ValueError::Mac));
        assert_eq!(
            Head::decode(&v, &key, &binding("/a/head", "CA2", "etcd")),
            Err(ValueError::Mac)
        );
        assert_eq!(
            Head::decode(&v, &key, &binding("/a/head", "CA", "etcd2")),
            Err(ValueError::Mac)
        );
        assert_eq!(Head::decode(&v, &[8; 32], &a), Err(ValueError::Mac));
        for i in MAGIC.len()..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 1;
            assert_eq!(Head::decode(&bad, &key, &a), Err(ValueError::Mac), "byte {i}");
        }
        assert_eq!(Head::decode(&v[..LEN - 1], &key, &a), Err(ValueError::Format(LEN - 1)));
        assert!(Head::decode(b"", &key, &a).is_err());
    }

    #[test]
    fn shared_values_are_bound_to_their_key() {
        let key = [7u8; 32];
        let (a, b) = (binding("/g/s/s_1", "CA", "etcd"), binding("/g/s/s_2", "CA", "etcd"));
        let v = seal_shared(&key, &a, b"book");
        assert_eq!(open_shared(&key, &a, &v), Ok(&b"book"[..]));
        assert_eq!(open_shared(&key, &b, &v), Err(ValueError::Mac), "moved to another key");
        assert_eq!(open_shared(&[8; 32], &a, &v), Err(ValueError::Mac), "another group");
        for i in 0..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 1;
            assert_eq!(open_shared(&key, &a, &bad), Err(ValueError::Mac), "byte {i}");
        }
        assert_eq!(open_shared(&key, &a, &v[..31]), Err(ValueError::Format(31)));
    }
}
