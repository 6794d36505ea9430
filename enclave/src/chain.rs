//! Running hashes over a store's history, for the rollback anchor: the anchored head binds the
//! *content* of the spend journal and of the state store at its counts, not only the counts
//! (records are sealed to their position, and every copy of the state has the same sealing key,
//! so a genuine record from another copy's history would otherwise fit at the same position).
//!
//! `H_0 = 0³²`, `H_n = SHA-256(tag ‖ H_{n−1} ‖ n ‖ record_n)`, with `n` big-endian u64 and a tag
//! per store. [`History`] keeps the hash after every record since the store was opened (32 bytes
//! each) so that the start-up check can ask for the hash at the anchored count; [`Tip`] is the
//! count and hash a durability round records.

use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};

/// The hash after record `n`, given the hash before it.
#[must_use]
pub fn next(tag: &[u8], prev: &[u8; 32], n: u64, record: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(tag)
        .chain_update(prev)
        .chain_update(n.to_be_bytes())
        .chain_update(record)
        .finalize()
        .into()
}

/// A count and the chain's hash after that many records, read and written together.
#[derive(Debug, Clone, Default)]
pub struct Tip(Arc<Mutex<(u64, [u8; 32])>>);

impl Tip {
    /// A tip at `count` with `hash`.
    #[must_use]
    pub fn new(count: u64, hash: [u8; 32]) -> Self {
        Self(Arc::new(Mutex::new((count, hash))))
    }
    /// The count and the hash.
    #[must_use]
    pub fn get(&self) -> (u64, [u8; 32]) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
    /// Sets them (both at once).
    pub fn set(&self, count: u64, hash: [u8; 32]) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = (count, hash);
    }
    /// Sets them unless the tip is already at a later count.
    pub fn advance(&self, count: u64, hash: [u8; 32]) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if count >= t.0 {
            *t = (count, hash);
        }
    }
}

/// The hash after every record since `base`: `at(n)` for `n` in `base..=len` (`base` is 0, or
/// the position of a ledger snapshot the store was opened from).
#[derive(Debug, Clone)]
pub struct History {
    tag: &'static [u8],
    base: u64,
    hashes: Arc<Mutex<Vec<[u8; 32]>>>,
}

impl History {
    /// The history of `records` under `tag`.
    #[must_use]
    pub fn of<R: AsRef<[u8]>>(tag: &'static [u8], records: &[R]) -> Self {
        let mut hashes = Vec::with_capacity(records.len() + 1);
        let mut h = [0u8; 32];
        hashes.push(h);
        for (i, r) in records.iter().enumerate() {
            h = next(tag, &h, i as u64 + 1, r.as_ref());
            hashes.push(h);
        }
        Self { tag, base: 0, hashes: Arc::new(Mutex::new(hashes)) }
    }

    /// A history that starts after `base` records, whose chain hash there is `hash`.
    #[must_use]
    pub fn starting_at(tag: &'static [u8], base: u64, hash: [u8; 32]) -> Self {
        Self { tag, base, hashes: Arc::new(Mutex::new(vec![hash])) }
    }

    /// Appends record number `n` (must be the next one); returns the new hash.
    pub fn push(&self, n: u64, record: &[u8]) -> [u8; 32] {
        let mut hashes = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        let prev = hashes.last().copied().unwrap_or_default();
        debug_assert_eq!(self.base + hashes.len() as u64, n, "records are chained in order");
        let h = next(self.tag, &prev, n, record);
        hashes.push(h);
        h
    }

    /// The hash after `n` records (`None` beyond the end, or before the base).
    #[must_use]
    pub fn at(&self, n: u64) -> Option<[u8; 32]> {
        let hashes = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        n.checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| hashes.get(i).copied())
    }

    /// The number of records and the last hash.
    #[must_use]
    pub fn tip(&self) -> (u64, [u8; 32]) {
        let hashes = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        (self.base + (hashes.len() - 1) as u64, hashes.last().copied().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_bind_content_and_order() {
        let a = History::of(b"t", &[b"one".as_slice(), b"two"]);
        assert_eq!(a.at(0), Some([0; 32]));
        assert_eq!(a.tip().0, 2);
        let b = History::of(b"t", &[b"one".as_slice()]);
        assert_eq!(b.push(2, b"two"), a.at(2).unwrap(), "appending equals recomputing");
        let swapped = History::of(b"t", &[b"two".as_slice(), b"one"]);
        assert_ne!(swapped.at(2), a.at(2));
        let other = History::of(b"t", &[b"one".as_slice(), b"TWO"]);
        assert_eq!(other.at(1), a.at(1));
        assert_ne!(other.at(2), a.at(2));
        assert_ne!(History::of(b"u", &[b"one".as_slice()]).at(1), a.at(1), "tags separate stores");
        assert_eq!(a.at(3), None);
        // A history opened at a snapshot's position continues the same chain.
        let c = History::starting_at(b"t", 1, a.at(1).unwrap());
        assert_eq!(c.push(2, b"two"), a.at(2).unwrap());
        assert_eq!((c.at(0), c.at(1), c.tip()), (None, a.at(1), (2, a.at(2).unwrap())));
        let t = Tip::new(1, [1; 32]);
        t.advance(0, [0; 32]);
        assert_eq!(t.get(), (1, [1; 32]), "a tip never goes back");
        t.advance(2, [2; 32]);
        assert_eq!(t.get(), (2, [2; 32]));
    }
}
