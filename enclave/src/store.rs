//! The one narrow storage interface of the enclave. Ledger and state logic never see sled types.
//!
//! * Every value is sealed ([`crate::seal`]) with its table and key as associated data.
//! * Writes of one logical change go in one atomic batch.
//! * [`Store::sync`] makes everything written so far durable *for real*: sled 0.34's `flush()`
//!   only issues `sync_file_range`, which flushes neither metadata nor the disk cache, so after it
//!   we `fdatasync` sled's log file ourselves. Concurrent callers share one flush+fsync (group
//!   commit): a dedicated thread runs rounds, each round covering every write applied before it
//!   started.

use std::{fs::File, path::Path};

use zeroize::Zeroizing;

use crate::{
    commit::GroupCommit,
    seal::{SealError, Sealer},
};

/// Logical tables (one sled tree, key prefix per table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Store metadata.
    Meta,
    /// Wallet records (public).
    Wallets,
    /// Wallet private keys.
    Keys,
    /// Policies by wallet id.
    Policies,
    /// Asset registry.
    Assets,
    /// KYT denylist.
    Kyt,
    /// Sessions.
    Sessions,
    /// Admin public keys.
    Admins,
    /// Payments held for a human's approval.
    Approvals,
    /// Monotonic floors (the replay floor): covered by the digest, so one cannot be deleted or
    /// put back on its own.
    Floors,
    /// The rollback anchor's configuration.
    Anchor,
}

impl Table {
    fn prefix(self) -> &'static [u8] {
        match self {
            Self::Meta => b"meta/",
            Self::Wallets => b"wallet/",
            Self::Keys => b"key/",
            Self::Policies => b"policy/",
            Self::Assets => b"asset/",
            Self::Kyt => b"kyt/",
            Self::Sessions => b"session/",
            Self::Admins => b"admin/",
            Self::Approvals => b"approval/",
            Self::Floors => b"floor/",
            Self::Anchor => b"anchor/",
        }
    }
}

/// Storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled failed.
    #[error("storage engine: {0}")]
    Engine(String),
    /// A record failed authentication.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Durability could not be confirmed.
    #[error("durable sync failed: {0}")]
    Sync(String),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Put(t, k, v) => {
                write!(f, "Put({t:?}, {}, <{} bytes>)", String::from_utf8_lossy(k), v.len())
            }
            Self::Delete(t, k) => write!(f, "Delete({t:?}, {})", String::from_utf8_lossy(k)),
        }
    }
}

/// A record as read back: its key within the table and its opened value.
pub type Record = (Vec<u8>, Zeroizing<Vec<u8>>);

/// One write of a batch. The value is plaintext until sealed (it may be a key), so it lives in
/// a zeroizing buffer and `Debug` never shows it.
pub enum Op {
    /// Insert or replace.
    Put(Table, Vec<u8>, Zeroizing<Vec<u8>>),
    /// Remove.
    Delete(Table, Vec<u8>),
}

/// The sealed, durable key-value store.
pub struct Store {
    // Declared before `db`: dropped first, so its last round runs and its thread (which holds a
    // handle on the database) exits before the database closes.
    commit: GroupCommit,
    db: sled::Db,
    sealer: Sealer,
    /// Digest of the whole state (see [`Digest`]) and the batch sequence number, kept sealed
    /// under `meta/state-digest` and updated in the same batch as every change. Also serialises
    /// writers.
    digest: std::sync::Mutex<DigestState>,
    /// The sequence number of the last batch applied, and of the last one known durable (what
    /// the commit head records: a store that lost a durable batch is behind it).
    applied_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
    durable_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The last batch applied and the last durable one, each with its chain hash.
    applied_tip: crate::chain::Tip,
    durable_tip: crate::chain::Tip,
}

/// The state's chain tag ([`crate::chain`]): each batch's entry is the state digest after it.
const CHAIN_TAG: &[u8] = b"x402-wallet/state-chain/v1\0";
/// How many earlier (batch, chain hash) pairs the digest record keeps: the anchor's start-up
/// check finds the hash at the anchored batch among them (a store may be ahead of its anchor by
/// the batches of one unconfirmed round, never by this many).
const CHAIN_RING: usize = 128;

/// The sealed digest record's content, in memory.
#[derive(Debug, Clone, Default)]
struct DigestState {
    digest: Digest,
    seq: u64,
    /// The chain's hash after batch `seq`: `H(tag ‖ previous ‖ seq ‖ digest)`.
    chain: [u8; 32],
    /// Earlier batches and their chain hashes, oldest first (at most [`CHAIN_RING`]).
    ring: std::collections::VecDeque<(u64, [u8; 32])>,
}

impl DigestState {
    /// `digest ‖ seq ‖ chain ‖ (seq ‖ chain)*` (a record written before the chain was 40 bytes).
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(72 + 40 * self.ring.len());
        v.extend_from_slice(&self.digest.0);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.chain);
        for (seq, chain) in &self.ring {
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(chain);
        }
        v
    }

    fn decode(d: &[u8]) -> Option<Self> {
        let digest = Digest(d.get(..32)?.try_into().ok()?);
        let seq = d.get(32..40).map_or(Some(0), |b| b.try_into().ok().map(u64::from_be_bytes))?;
        let chain = match d.get(40..72) {
            Some(c) => c.try_into().ok()?,
            None => [0; 32],
        };
        let mut ring = std::collections::VecDeque::new();
        let mut rest = d.get(72..).unwrap_or_default();
        while !rest.is_empty() {
            let entry = rest.get(..40)?;
            ring.push_back((
                u64::from_be_bytes(entry[..8].try_into().ok()?),
                entry[8..].try_into().ok()?,
            ));
            rest = &rest[40..];
        }
        Some(Self { digest, seq, chain, ring })
    }

    fn chain_at(&self, seq: u64) -> Option<[u8; 32]> {
        if seq == self.seq {
            return Some(self.chain);
        }
        self.ring.iter().find(|(s, _)| *s == seq).map(|(_, c)| *c)
    }
}

/// An order-independent digest of every record (table, key, plaintext): the sum modulo 2^256 of
/// their SHA-256 hashes. Updating it costs two hashes per changed record. A sealed record can
/// only be opened under its own table and key, but without this an old copy of it (a session
/// before its revocation, a wallet before its freeze, a removed admin) could be put back, or a
/// record deleted, unnoticed; with it, the enclave refuses to start on such a state. (Replacing
/// the *whole* state by an older copy, digest included, is not detected: that needs a monotonic
/// counter from the platform.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Digest([u8; 32]);

impl Digest {
    fn term(table: Table, key: &[u8], plain: &[u8]) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::new()
            .chain_update(full_key(table, key))
            .chain_update((plain.len() as u64).to_be_bytes())
            .chain_update(plain)
            .finalize()
            .into()
    }

    fn add(&mut self, t: &[u8; 32]) {
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let v = u16::from(self.0[i]) + u16::from(t[i]) + carry;
            self.0[i] = (v & 0xff) as u8;
            carry = v >> 8;
        }
    }

    fn sub(&mut self, t: &[u8; 32]) {
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let v = i16::from(self.0[i]) - i16::from(t[i]) - borrow;
            borrow = i16::from(v < 0);
            self.0[i] = v.rem_euclid(256) as u8;
        }
    }
}

/// sled's page cache, bytes.
const CACHE_BYTES: u64 = 16 << 20;

/// Tables covered by the state digest (everything but `Meta`).
const DIGESTED: [Table; 10] = [
    Table::Wallets,
    Table::Keys,
    Table::Policies,
    Table::Assets,
    Table::Kyt,
    Table::Sessions,
    Table::Admins,
    Table::Approvals,
    Table::Floors,
    Table::Anchor,
];
const DIGEST_KEY: &[u8] = b"state-digest";

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("commit", &self.commit).finish_non_exhaustive()
    }
}

/// The key a record is stored under: its table's prefix, then its key.
pub(crate) fn full_key(table: Table, key: &[u8]) -> Vec<u8> {
    let mut k = table.prefix().to_vec();
    k.extend_from_slice(key);
    k
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// [`StoreError::Engine`] when sled cannot open the directory.
    pub fn open(dir: &Path, sealer: Sealer) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // The state is held in memory once loaded (`service::state`); sled's page cache
            // (1 GiB by default) would otherwise keep a second copy of everything it read, in
            // an enclave whose memory is fixed.
            .cache_capacity(CACHE_BYTES)
            // We flush (and fsync) ourselves, in group-commit rounds; no competing flusher thread.
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError::Engine(e.to_string()))?;
        let log = File::open(dir.join("db"))
            .map_err(|e| StoreError::Engine(format!("open sled log for fsync: {e}")))?;
        let dir_handle = File::open(dir).map_err(|e| StoreError::Engine(e.to_string()))?;
        let flush_db = db.clone();
        let applied_seq = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let durable_seq = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (round_applied, round_durable) =
            (std::sync::Arc::clone(&applied_seq), std::sync::Arc::clone(&durable_seq));
        let (applied_tip, durable_tip) =
            (crate::chain::Tip::default(), crate::chain::Tip::default());
        let (round_applied_tip, round_durable_tip) = (applied_tip.clone(), durable_tip.clone());
        let commit = GroupCommit::spawn("store-sync", move || {
            use std::sync::atomic::Ordering;
            // Every batch counted here was applied before this flush began, so it covers them.
            let covered = round_applied.load(Ordering::SeqCst);
            let (tip_seq, tip_chain) = round_applied_tip.get();
            flush_db.flush().map_err(std::io::Error::other)?;
            log.sync_data()?;
            dir_handle.sync_all()?;
            round_durable.fetch_max(covered, Ordering::SeqCst);
            round_durable_tip.advance(tip_seq, tip_chain);
            Ok(())
        })
        .map_err(|e| StoreError::Engine(e.to_string()))?;
        let store = Self {
            commit,
            db,
            sealer,
            digest: std::sync::Mutex::new(DigestState::default()),
            applied_seq,
            durable_seq,
            applied_tip,
            durable_tip,
        };
        // Recompute the digest of what is on disk and compare it with the sealed one.
        let mut computed = Digest::default();
        let mut records = 0usize;
        for t in DIGESTED {
            for (k, v) in store.scan(t)? {
                computed.add(&Digest::term(t, &k, &v));
                records += 1;
            }
        }
        // The sealed value: the digest, then (since the commit head) the batch sequence number,
        // then (since the anchor) the chain and its ring.
        let state = match store.get(Table::Meta, DIGEST_KEY)? {
            Some(d) => match DigestState::decode(&d) {
                Some(st) if st.digest == computed => st,
                _ => {
                    return Err(StoreError::Engine(
                        "the state on disk does not match its sealed digest: a record was deleted, or an older copy of it was put back. Refusing to start.".into(),
                    ))
                }
            },
            None if records == 0 => DigestState::default(),
            None => {
                return Err(StoreError::Engine(
                    "the state on disk does not match its sealed digest: a record was deleted, or an older copy of it was put back. Refusing to start.".into(),
                ))
            }
        };
        let seq = state.seq;
        store.applied_tip.set(seq, state.chain);
        store.durable_tip.set(seq, state.chain);
        *store.digest.lock().map_err(|_| StoreError::Engine("digest poisoned".into()))? = state;
        store.applied_seq.store(seq, std::sync::atomic::Ordering::SeqCst);
        store.durable_seq.store(seq, std::sync::atomic::Ordering::SeqCst);
        Ok(store)
    }

    fn aad(table: Table, key: &[u8]) -> Vec<u8> {
        full_key(table, key)
    }

    /// Applies the writes atomically (all or none). Not yet durable: call [`Self::sync`].
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut digest =
            self.digest.lock().map_err(|_| StoreError::Engine("digest poisoned".into()))?;
        let (mut next, seq) = (digest.digest, digest.seq);
        let seq = seq + 1;
        let mut batch = sled::Batch::default();
        // Later ops on the same key see earlier ones of this batch (their digest terms: not
        // a second copy of every value).
        let mut pending: std::collections::HashMap<Vec<u8>, Option<[u8; 32]>> =
            std::collections::HashMap::new();
        for op in ops {
            let (t, k, new) = match op {
                Op::Put(t, k, v) => (t, k, Some(v)),
                Op::Delete(t, k) => (t, k, None),
            };
            let fk = full_key(t, &k);
            if t != Table::Meta {
                let old = match pending.get(&fk) {
                    Some(term) => *term,
                    None => self.get(t, &k)?.map(|v| Digest::term(t, &k, &v)),
                };
                if let Some(old) = &old {
                    next.sub(old);
                }
                let term = new.as_ref().map(|v| Digest::term(t, &k, v));
                if let Some(term) = &term {
                    next.add(term);
                }
                pending.insert(fk.clone(), term);
            }
            match new {
                Some(v) => batch.insert(fk.clone(), self.sealer.seal(&fk, &v)),
                None => batch.remove(fk),
            }
        }
        let dk = full_key(Table::Meta, DIGEST_KEY);
        let mut after = digest.clone();
        after.ring.push_back((after.seq, after.chain));
        if after.ring.len() > CHAIN_RING {
            after.ring.pop_front();
        }
        after.chain = crate::chain::next(CHAIN_TAG, &after.chain, seq, &next.0);
        after.digest = next;
        after.seq = seq;
        batch.insert(dk.clone(), self.sealer.seal(&dk, &after.encode()));
        self.db.apply_batch(batch).map_err(|e| StoreError::Engine(e.to_string()))?;
        self.applied_tip.set(seq, after.chain);
        *digest = after;
        self.applied_seq.store(seq, std::sync::atomic::Ordering::SeqCst);
        self.commit.wrote();
        Ok(())
    }

    /// Waits until every write applied before this call is durable (flush + fdatasync). Callers
    /// arriving together share one round.
    ///
    /// # Errors
    /// [`StoreError::Sync`] if the round covering this call failed.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.commit.durable().await.map_err(StoreError::Sync)
    }

    /// The sequence number of the last batch applied (0 for a store never written).
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.applied_seq.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The chain's hash after batch `seq`, if it is the last one or among the
    /// [`CHAIN_RING`] before it.
    #[must_use]
    pub fn chain_at(&self, seq: u64) -> Option<[u8; 32]> {
        self.digest.lock().ok().and_then(|d| d.chain_at(seq))
    }

    /// The last durable batch and its chain hash, for the commit head and the anchor.
    #[must_use]
    pub fn durable_tip(&self) -> crate::chain::Tip {
        self.durable_tip.clone()
    }

    /// A handle on the sequence number of the last batch known durable, for the commit head.
    #[must_use]
    pub fn durable_seq(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        std::sync::Arc::clone(&self.durable_seq)
    }

    /// Reads and opens one record.
    ///
    /// # Errors
    /// [`StoreError`] on engine failure or a tampered record.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let fk = full_key(table, key);
        match self.db.get(&fk).map_err(|e| StoreError::Engine(e.to_string()))? {
            Some(v) => Ok(Some(self.sealer.open(&Self::aad(table, key), &v)?)),
            None => Ok(None),
        }
    }

    /// Every record of a table, opened, in key order.
    ///
    /// # Errors
    /// [`StoreError`] on engine failure or the first tampered record.
    pub fn scan(&self, table: Table) -> Result<Vec<Record>, StoreError> {
        let prefix = table.prefix();
        let mut out = Vec::new();
        for item in self.db.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| StoreError::Engine(e.to_string()))?;
            let plain = self.sealer.open(&k, &v)?;
            out.push((k[prefix.len()..].to_vec(), plain));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn open(dir: &Path) -> Store {
        try_open(dir).unwrap()
    }

    /// `Store::open`, retried while another handle in this process still holds sled's directory
    /// lock (a dropped `sled::Db` releases it from a background thread, a moment later).
    fn try_open(dir: &Path) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(
                dir,
                Sealer::new(&Zeroizing::new([1u8; 32]), crate::platform::nsm::test_entropy()),
            ) {
                Err(e) if is_lock_error(&e.to_string()) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn is_lock_error(e: &str) -> bool {
        e.contains("WouldBlock") || e.contains("lock") || e.contains("temporarily unavailable")
    }

    /// A raw sled handle on `dir` (no flusher thread), retried like [`try_open`].
    fn raw_sled(dir: &Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::Config::new().path(dir).flush_every_ms(None).open() {
                Err(e) if is_lock_error(&e.to_string()) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
    }

    #[tokio::test]
    async fn the_chain_binds_each_batch_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let put = |v: &str| vec![Op::Put(Table::Kyt, b"k".to_vec(), v.as_bytes().to_vec().into())];
        let (at1, at2, durable) = {
            let s = open(dir.path());
            s.apply(put("1")).unwrap();
            s.apply(put("2")).unwrap();
            s.sync().await.unwrap();
            (s.chain_at(1).unwrap(), s.chain_at(2).unwrap(), s.durable_tip().get())
        };
        assert_ne!(at1, at2);
        assert_eq!(durable, (2, at2), "the durable tip is the last synced batch and its hash");
        let s = open(dir.path());
        assert_eq!((s.chain_at(1), s.chain_at(2), s.chain_at(3)), (Some(at1), Some(at2), None));
        for i in 0..(CHAIN_RING as u64 + 5) {
            s.apply(put(&i.to_string())).unwrap();
        }
        assert_eq!(s.chain_at(2), None, "older than the ring: cannot be vouched for");
        assert!(s.chain_at(s.seq() - CHAIN_RING as u64).is_some());
        // The same writes in another store from the same start give the same hashes; another
        // value at batch 2 does not.
        let other = tempfile::tempdir().unwrap();
        let o = open(other.path());
        o.apply(put("1")).unwrap();
        assert_eq!(o.chain_at(1), Some(at1));
        o.apply(put("two")).unwrap();
        assert_ne!(o.chain_at(2), Some(at2));
        // A digest record written before the chain (digest and seq only) still opens.
        let legacy =
            DigestState::decode(&[[7u8; 32].as_slice(), &5u64.to_be_bytes()].concat()).unwrap();
        assert_eq!((legacy.seq, legacy.chain, legacy.ring.len()), (5, [0; 32], 0));
        let round = DigestState {
            digest: Digest([1; 32]),
            seq: 9,
            chain: [2; 32],
            ring: [(8, [3; 32])].into(),
        };
        let back = DigestState::decode(&round.encode()).unwrap();
        assert_eq!((back.seq, back.chain, back.chain_at(8)), (9, [2; 32], Some([3; 32])));
    }

    #[tokio::test]
    async fn batch_is_sealed_durable_and_scans_by_table() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.apply(vec![
                Op::Put(Table::Kyt, b"a".to_vec(), b"1".to_vec().into()),
                Op::Put(Table::Sessions, b"a".to_vec(), b"2".to_vec().into()),
            ])
            .unwrap();
            s.sync().await.unwrap();
            assert_eq!(s.get(Table::Kyt, b"a").unwrap().unwrap().as_slice(), b"1");
            assert_eq!(s.scan(Table::Sessions).unwrap().len(), 1);
            s.apply(vec![Op::Delete(Table::Kyt, b"a".to_vec())]).unwrap();
            s.sync().await.unwrap();
        }
        let s = open(dir.path());
        assert!(s.get(Table::Kyt, b"a").unwrap().is_none());
        assert_eq!(s.get(Table::Sessions, b"a").unwrap().unwrap().as_slice(), b"2");
    }

    #[tokio::test]
    async fn concurrent_syncs_share_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(open(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let s = Arc::clone(&s);
            tasks.push(tokio::spawn(async move {
                s.apply(vec![Op::Put(
                    Table::Sessions,
                    i.to_be_bytes().to_vec(),
                    vec![0; 100].into(),
                )])
                .unwrap();
                s.sync().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.scan(Table::Sessions).unwrap().len(), 64);
    }

    #[tokio::test]
    async fn deleting_or_restoring_a_record_at_rest_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let old_blob;
        {
            let s = open(dir.path());
            s.apply(vec![
                Op::Put(Table::Sessions, b"s1".to_vec(), b"active".to_vec().into()),
                Op::Put(Table::Kyt, b"a".to_vec(), b"".to_vec().into()),
            ])
            .unwrap();
            old_blob = s.db.get(full_key(Table::Sessions, b"s1")).unwrap().unwrap();
            s.apply(vec![Op::Put(Table::Sessions, b"s1".to_vec(), b"revoked".to_vec().into())])
                .unwrap();
            s.sync().await.unwrap();
        }
        drop(open(dir.path()));
        // Put the session back as it was before its revocation.
        {
            let db = raw_sled(dir.path());
            db.insert(full_key(Table::Sessions, b"s1"), old_blob.clone()).unwrap();
            db.flush().unwrap();
        }
        let err = try_open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("digest"), "{err}");
        // Delete a KYT entry instead.
        let dir2 = tempfile::tempdir().unwrap();
        {
            let s = open(dir2.path());
            s.apply(vec![Op::Put(Table::Kyt, b"a".to_vec(), b"".to_vec().into())]).unwrap();
            s.sync().await.unwrap();
        }
        {
            let db = raw_sled(dir2.path());
            db.remove(full_key(Table::Kyt, b"a")).unwrap();
            db.flush().unwrap();
        }
        let err = try_open(dir2.path()).unwrap_err();
        assert!(err.to_string().contains("digest"), "{err}");
    }

    #[test]
    fn a_record_moved_to_another_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.apply(vec![Op::Put(Table::Keys, b"w1".to_vec(), b"k1".to_vec().into())]).unwrap();
        let raw = s.db.get(full_key(Table::Keys, b"w1")).unwrap().unwrap();
        s.db.insert(full_key(Table::Keys, b"w2"), raw).unwrap();
        assert!(matches!(s.get(Table::Keys, b"w2"), Err(StoreError::Seal(_))));
    }
}
