//! The anchored head as stored in etcd: what this enclave had made durable at its last round.
//!
//! Layout (122 bytes): [`MAGIC`] (27 bytes) ‖ `epoch` ‖ `journal_records` ‖ `audit_records` ‖
//! `store_seq` (u64 big-endian each) ‖ `chain` (32 bytes: the audit chain's hash after record
//! `audit_records`, all zeros for none) ‖ `mac` (32 bytes): HMAC-SHA-256 under the enclave's
//! anchor MAC key over everything before it *and* the etcd key it is stored under. So the
//! anchor's operator can store an old genuine head (the trust assumption excludes that), but
//! never invent one or move one from another key.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::head::Facts;

/// The value's tag and version.
pub const MAGIC: &[u8; 27] = b"x402-wallet/anchor-head/v1\0";
const LEN: usize = MAGIC.len() + 4 * 8 + 32 + 32;

/// One anchored head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Bumped by every start of an enclave (and by re-anchoring): an instance whose epoch is
    /// older halts at its next compare-and-swap.
    pub epoch: u64,
    /// What the stores held durably (the commit head's facts).
    pub facts: Facts,
    /// The audit chain's hash after `facts.audit_records` records.
    pub chain: [u8; 32],
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

fn mac(mac_key: &[u8; 32], etcd_key: &[u8], body: &[u8]) -> [u8; 32] {
    #[allow(clippy::expect_used)]
    let mut m = <Hmac<Sha256>>::new_from_slice(mac_key).expect("HMAC takes any key length");
    m.update(&(etcd_key.len() as u64).to_be_bytes());
    m.update(etcd_key);
    m.update(body);
    m.finalize().into_bytes().into()
}

impl Head {
    /// The stored bytes, MACed for `etcd_key`.
    #[must_use]
    pub fn encode(&self, mac_key: &[u8; 32], etcd_key: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(LEN);
        v.extend_from_slice(MAGIC);
        for w in
            [self.epoch, self.facts.journal_records, self.facts.audit_records, self.facts.store_seq]
        {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(&self.chain);
        let tag = mac(mac_key, etcd_key, &v);
        v.extend_from_slice(&tag);
        v
    }

    /// Reads and authenticates a stored value.
    ///
    /// # Errors
    /// [`ValueError`] when it is not a head or its MAC does not verify.
    pub fn decode(bytes: &[u8], mac_key: &[u8; 32], etcd_key: &[u8]) -> Result<Self, ValueError> {
        if bytes.len() != LEN || !bytes.starts_with(MAGIC) {
            return Err(ValueError::Format(bytes.len()));
        }
        let (body, tag) = bytes.split_at(LEN - 32);
        let want = mac(mac_key, etcd_key, body);
        // Constant-time comparison of the tag.
        let diff = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ValueError::Mac);
        }
        let word = |i: usize| {
            let at = MAGIC.len() + i * 8;
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let mut chain = [0u8; 32];
        chain.copy_from_slice(&body[MAGIC.len() + 32..]);
        Ok(Self {
            epoch: word(0),
            facts: Facts { journal_records: word(1), audit_records: word(2), store_seq: word(3) },
            chain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_forgeries() {
        let key = [7u8; 32];
        let h = Head {
            epoch: 3,
            facts: Facts { journal_records: 10, audit_records: 12, store_seq: 40 },
            chain: [9; 32],
        };
        let v = h.encode(&key, b"/a/head");
        assert_eq!(v.len(), LEN);
        assert_eq!(Head::decode(&v, &key, b"/a/head"), Ok(h));
        // Another key (etcd's or the MAC's), a flipped byte anywhere, a cut value: refused.
        assert_eq!(Head::decode(&v, &key, b"/b/head"), Err(ValueError::Mac));
        assert_eq!(Head::decode(&v, &[8; 32], b"/a/head"), Err(ValueError::Mac));
        for i in MAGIC.len()..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 1;
            assert_eq!(Head::decode(&bad, &key, b"/a/head"), Err(ValueError::Mac), "byte {i}");
        }
        assert_eq!(Head::decode(&v[..LEN - 1], &key, b"/a/head"), Err(ValueError::Format(LEN - 1)));
        assert!(Head::decode(b"", &key, b"/a/head").is_err());
    }
}
