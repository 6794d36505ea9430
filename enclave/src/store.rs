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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("commit", &self.commit).finish_non_exhaustive()
    }
}

fn full_key(table: Table, key: &[u8]) -> Vec<u8> {
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
            // We flush (and fsync) ourselves, in group-commit rounds; no competing flusher thread.
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError::Engine(e.to_string()))?;
        let log = File::open(dir.join("db"))
            .map_err(|e| StoreError::Engine(format!("open sled log for fsync: {e}")))?;
        let dir_handle = File::open(dir).map_err(|e| StoreError::Engine(e.to_string()))?;
        let flush_db = db.clone();
        let commit = GroupCommit::spawn("store-sync", move || {
            flush_db.flush().map_err(std::io::Error::other)?;
            log.sync_data()?;
            dir_handle.sync_all()
        })
        .map_err(|e| StoreError::Engine(e.to_string()))?;
        Ok(Self { commit, db, sealer })
    }

    fn aad(table: Table, key: &[u8]) -> Vec<u8> {
        full_key(table, key)
    }

    /// Applies the writes atomically (all or none). Not yet durable: call [`Self::sync`].
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(t, k, v) => {
                    let fk = full_key(t, &k);
                    let sealed = self.sealer.seal(&fk, &v);
                    batch.insert(fk, sealed);
                }
                Op::Delete(t, k) => batch.remove(full_key(t, &k)),
            }
        }
        self.db.apply_batch(batch).map_err(|e| StoreError::Engine(e.to_string()))?;
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
        Store::open(dir, Sealer::new(&Zeroizing::new([1u8; 32]))).unwrap()
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
