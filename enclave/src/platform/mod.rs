//! The platform seam: everything the enclave takes from the machine it runs on, passed in as one
//! [`Platform`] value.
//!
//! * [`Nsm`]: the security module (mode, randomness, attestation documents).
//! * [`Entropy`]: every random byte, drawn from the NSM.
//! * [`Clock`]: the time, typed ([`UnixMillis`]).
//! * [`SealingKeySource`]: the key that seals state at rest.
//! * The stores, behind traits: [`StateStore`] (sealed key-value state), [`SpendLog`] (the
//!   append-only spend ledger) and [`AuditSink`] (the hash-chained audit log).
//!
//! [`Platform::open_dir`] opens the file-backed stores under a data directory (sled, the spend
//! journal, `audit.log`, the commit head); [`Platform::open_host_storage`] opens them on storage
//! the host provides (Nitro mode has no disk: [`crate::hoststorage`]), with the state store as a
//! log of sealed batches ([`crate::logstore`]) instead of sled. Both run the same checks: every
//! store against the commit head, with the same tamper, rollback and torn-tail rules. The
//! simulated platform (a local process, a key file, an NSM without
//! hardware) is behind the cargo feature `simulated`, and the journal's fault injection behind
//! `fault-injection`: a default build of `wallet-enclave` contains neither (`scripts/test.sh`
//! checks the binary).

pub mod boot;
pub mod clock;
pub mod kms;
pub mod nsm;
#[cfg(feature = "simulated")]
pub mod simulated;

use std::{fmt::Debug, future::Future, path::Path, pin::Pin, sync::Arc};

use zeroize::Zeroizing;

pub use clock::{Clock, SystemClock, UnixMillis};
pub use nsm::{Entropy, Mode, Nsm, NsmError, TrustRoot};

use crate::{
    audit::{AuditError, AuditLog},
    head::{CommitHead, Facts},
    hostfile::{names, LocalFile, StorageFile},
    hoststorage::{HostAddress, HostStorage, DEFAULT_CONNECT_WAIT},
    journal::{HeadHook, Journal, JournalError},
    logstore::LogStore,
    seal::{SealError, Sealer},
    store::{Op, Record, Store, StoreError, Table},
};

/// A start-up error: a sentence saying what is wrong (and, where it helps, what to do).
pub type OpenError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, sendable future: the async methods of the store traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The sealed key-value state (wallets, keys, policies, sessions, admins, KYT, holds).
pub trait StateStore: Send + Sync + Debug {
    /// The opened value of `key` in `table`.
    ///
    /// # Errors
    /// [`StoreError`] on engine failure or a record that fails authentication.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;
    /// Every record of `table`, opened.
    ///
    /// # Errors
    /// As [`Self::get`].
    fn scan(&self, table: Table) -> Result<Vec<Record>, StoreError>;
    /// Applies `ops` as one atomic batch (not yet durable: await [`Self::sync`]).
    ///
    /// # Errors
    /// [`StoreError`]; nothing of the batch is applied.
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError>;
    /// Waits until everything applied before the call is durable.
    ///
    /// # Errors
    /// [`StoreError::Sync`] when durability cannot be confirmed.
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The chain's hash after batch `seq` ([`crate::chain`]; `None` when not known).
    fn chain_at(&self, seq: u64) -> Option<[u8; 32]>;
}

/// The append-only spend log: one record per authorization the enclave decided to release.
/// Only [`crate::service::ledger`] writes to it, and only it turns a write into the proof of
/// durability that releasing a signature requires.
pub trait SpendLog: Send + Sync + Debug {
    /// Appends one record (not yet durable: await [`Self::durable`]).
    ///
    /// # Errors
    /// [`JournalError`]; the log is then unusable until restart (fail closed).
    fn append(&self, record: &[u8]) -> Result<crate::journal::RecordRef, JournalError>;
    /// Reads a record back (a durable one, where [`Self::append`] said it lies).
    ///
    /// # Errors
    /// [`JournalError`] when it cannot be read or is not that record.
    fn read(&self, at: crate::journal::RecordRef) -> Result<Zeroizing<Vec<u8>>, JournalError>;
    /// Waits until every record appended before this call is durable.
    ///
    /// # Errors
    /// [`JournalError::Io`] when the durability round failed.
    fn durable(&self) -> BoxFuture<'_, Result<(), JournalError>>;
    /// Runs a durability round now, appended or not, so that the commit head covers every store's
    /// current durable state (state changes and synced audit records wait for it).
    ///
    /// # Errors
    /// [`JournalError::Io`] when the round failed.
    fn checkpoint(&self) -> BoxFuture<'_, Result<(), JournalError>>;
    /// Starts recording the commit head in every round: call once the stores were verified.
    fn arm_head(&self);
    /// Where the anchor every round ends with is kept (see [`crate::anchor::AnchorCell`]).
    fn anchor_cell(&self) -> crate::anchor::AnchorCell;
    /// What the last round that wrote the commit head recorded.
    fn last_round(&self) -> Option<crate::anchor::Local>;
    /// The chain's hash after `n` records ([`crate::chain`]).
    fn chain_at(&self, n: u64) -> Option<[u8; 32]>;
    /// What the last completed round recorded (durable, in the commit head), and whether it was
    /// anchored.
    fn confirmed(&self) -> Option<(crate::anchor::Local, bool)>;
    /// Reads records `from..until` (durable ones) into `visit`; where the log continues after.
    ///
    /// # Errors
    /// [`JournalError`] when one is missing, does not open or is refused by `visit`.
    fn scan(
        &self,
        from: crate::journal::JournalStart,
        until: u64,
        visit: &mut crate::journal::Visit<'_>,
    ) -> Result<crate::journal::JournalStart, JournalError>;
}

/// The audit log: hash-chained records, MACed under a key derived from the sealed audit key.
pub trait AuditSink: Send + Sync + Debug {
    /// Sets the MAC key and checks every record's MAC.
    ///
    /// # Errors
    /// [`AuditError`] when a record's MAC does not verify.
    fn attach_key(&self, key: Zeroizing<[u8; 32]>) -> Result<(), AuditError>;
    /// Appends a record (chained and MACed here).
    ///
    /// # Errors
    /// [`AuditError`]; a failed write is undone.
    fn append(&self, record: wallet_policy::audit::Record) -> Result<(), AuditError>;
    /// Makes every appended record durable now.
    ///
    /// # Errors
    /// [`AuditError::Io`].
    fn sync(&self) -> Result<(), AuditError>;
    /// Count and hash of the last record.
    fn head(&self) -> (u64, [u8; 32]);
    /// The chain's hash after `n` records as stored (`None`: fewer records, or unreadable).
    fn hash_at(&self, n: u64) -> Option<[u8; 32]>;
    /// Where a snapshot covering `durable` records may start verification (see
    /// [`crate::audit::Start`]).
    fn start_at(&self, durable: u64) -> Option<crate::audit::Start>;
    /// Records `from..from + limit` as stored, and the total, after checking the stored log
    /// against the head.
    ///
    /// # Errors
    /// [`AuditError`] when the stored log was edited or truncated.
    fn read(&self, from: u64, limit: u64) -> Result<(Vec<String>, u64), AuditError>;
}

/// Where the 32-byte key that seals state at rest comes from (a key file in simulated mode; a
/// KMS data key released to the measured enclave in Nitro mode).
pub trait SealingKeySource: Send + Sync + Debug {
    /// The sealing key.
    ///
    /// # Errors
    /// [`SealError::KeyFile`] when it cannot be had.
    fn sealing_key(&self) -> Result<Zeroizing<[u8; 32]>, SealError>;
}

/// Everything the enclave takes from its platform.
pub struct Platform {
    /// The security module (and, through [`Entropy`], every random byte).
    pub nsm: Arc<dyn Nsm>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Sealed state (sled in a data directory; a [`LogStore`] on host storage).
    pub state: Box<dyn StateStore>,
    /// The spend ledger.
    pub spend_log: Box<dyn SpendLog>,
    /// The ledger the spend journal made: the newest snapshot and the records after it.
    pub spends: crate::service::replay::Ledger,
    /// The ledger snapshot slots ([`crate::snapshot`]).
    pub snapshots: crate::snapshot::Snapshots,
    /// The audit log.
    pub audit: Box<dyn AuditSink>,
    /// Where the state lives, for `status` (a path, or a description).
    pub location: String,
}

impl Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("mode", &self.nsm.mode())
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Handles a test keeps on the file-backed stores it opened.
#[derive(Debug, Default)]
pub struct Handles {
    /// The journal's fault injection (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub faults: Option<Arc<crate::journal::Faults>>,
}

/// The opened stores, before they are checked against the commit head and assembled.
struct Opened {
    head: CommitHead,
    /// What the head says was durable (`None`: never written).
    durable: Option<Facts>,
    state: Box<dyn StateStore>,
    /// The state store's last batch, and its durable batch with its chain hash (for the head).
    store_seq: u64,
    store_durable_tip: crate::chain::Tip,
    audit: AuditLog,
    journal: Arc<dyn StorageFile>,
    snapshots: crate::snapshot::Snapshots,
    /// The newest snapshot's ledger (an empty one at the journal's start without one).
    ledger: crate::service::replay::Ledger,
}

impl Platform {
    /// Opens the file-backed stores under `dir` (created 0700): sled in `state/`, the spend
    /// journal `spends.journal`, `audit.log` and the commit head `commit.head`, sealed with
    /// `key`'s key and drawing randomness from `nsm`. The audit log is synced in the journal's
    /// durability rounds, which then write the commit head; each store is checked against the
    /// head first (a store behind it refuses to open).
    ///
    /// # Errors
    /// When the directory, the key or a store cannot be used (a store that fails its checks
    /// included: the enclave refuses to start on state it cannot trust).
    pub fn open_dir(
        dir: &Path,
        key: &dyn SealingKeySource,
        nsm: Arc<dyn Nsm>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Handles), OpenError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let entropy = Entropy::new(Arc::clone(&nsm));
        let sealing_key = key.sealing_key()?;
        let sealer = || Sealer::new(&sealing_key, entropy.clone());
        let (head, durable) = CommitHead::open(&dir.join(names::COMMIT_HEAD), sealer())?;
        let store = Store::open(&dir.join("state"), sealer())?;
        let (store_seq, store_durable_tip) = (store.seq(), store.durable_tip());
        let slots: [Arc<dyn StorageFile>; 2] = [
            LocalFile::open(&dir.join(crate::snapshot::FILES[0]))?,
            LocalFile::open(&dir.join(crate::snapshot::FILES[1]))?,
        ];
        let (snapshots, ledger) = crate::snapshot::Snapshots::open(slots, sealer());
        let ledger = ledger.unwrap_or_default();
        let audit = AuditLog::open_file_from(
            LocalFile::open(&dir.join(names::AUDIT_LOG))?,
            ledger.audit.clone(),
        )?;
        let journal: Arc<dyn StorageFile> = LocalFile::open(&dir.join(names::SPEND_JOURNAL))?;
        let opened = Opened {
            head,
            durable,
            state: Box::new(store),
            store_seq,
            store_durable_tip,
            audit,
            journal,
            snapshots,
            ledger,
        };
        Self::assemble(opened, sealer(), nsm, clock, dir.display().to_string())
    }

    /// Opens the stores on the storage the host provides at `addr` (Nitro mode: the enclave has
    /// no disk; simulated mode over a Unix socket, so tests run the same path): the host's files
    /// `commit.head`, `state.log` (the state store, [`LogStore`]), `audit.log` and
    /// `spends.journal`, sealed with `key`'s key, with exactly the checks of
    /// [`Self::open_dir`]. Waits up to [`DEFAULT_CONNECT_WAIT`] for the host's storage server.
    ///
    /// # Errors
    /// When nothing answers at `addr` in time (the error says what to run on the host), when
    /// the key cannot be had, or when a store fails its checks or the host's answers do.
    pub fn open_host_storage(
        addr: &HostAddress,
        key: &dyn SealingKeySource,
        nsm: Arc<dyn Nsm>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Handles), OpenError> {
        let storage = HostStorage::connect(addr.clone(), DEFAULT_CONNECT_WAIT)?;
        Self::open_on_host(&storage, key, nsm, clock)
    }

    /// [`Self::open_host_storage`] on a connection already made (tests choose its limits).
    ///
    /// # Errors
    /// As [`Self::open_host_storage`].
    pub fn open_on_host(
        storage: &HostStorage,
        key: &dyn SealingKeySource,
        nsm: Arc<dyn Nsm>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Handles), OpenError> {
        let entropy = Entropy::new(Arc::clone(&nsm));
        let sealing_key = key.sealing_key()?;
        let sealer = || Sealer::new(&sealing_key, entropy.clone());
        let (head, durable) = CommitHead::open_file(storage.file(names::COMMIT_HEAD)?, sealer())?;
        let store = LogStore::open(
            storage.file(names::STATE_LOG)?,
            sealer(),
            durable.map_or(0, |f| f.store_seq),
        )?;
        let (store_seq, store_durable_tip) = (store.seq(), store.durable_tip());
        let slots: [Arc<dyn StorageFile>; 2] =
            [storage.file(crate::snapshot::FILES[0])?, storage.file(crate::snapshot::FILES[1])?];
        let (snapshots, ledger) = crate::snapshot::Snapshots::open(slots, sealer());
        let ledger = ledger.unwrap_or_default();
        let audit =
            AuditLog::open_file_from(storage.file(names::AUDIT_LOG)?, ledger.audit.clone())?;
        let journal: Arc<dyn StorageFile> = storage.file(names::SPEND_JOURNAL)?;
        let opened = Opened {
            head,
            durable,
            state: Box::new(store),
            store_seq,
            store_durable_tip,
            audit,
            journal,
            snapshots,
            ledger,
        };
        let location = format!("host storage at {}", storage.address());
        Self::assemble(opened, sealer(), nsm, clock, location)
    }

    /// Checks each store against the commit head (each must hold at least what it says was
    /// durable; see `head`), then opens the journal with the head hook.
    fn assemble(
        o: Opened,
        journal_sealer: Sealer,
        nsm: Arc<dyn Nsm>,
        clock: Arc<dyn Clock>,
        location: String,
    ) -> Result<(Self, Handles), OpenError> {
        match o.durable {
            None if o.store_seq > 0 => {
                return Err("the commit head (commit.head) is missing or empty, but this state was written with one: it was deleted or replaced. Refusing to start.".into());
            }
            None => {}
            Some(f) => {
                if o.store_seq < f.store_seq {
                    return Err(format!(
                        "the state store is behind the commit head: it holds batch {} but batch {} was durable — it lost writes or was rolled back (a revocation, a freeze or a policy change could be undone). Refusing to start.",
                        o.store_seq,
                        f.store_seq
                    )
                    .into());
                }
                let audit_records = o.audit.head().0;
                if audit_records < f.audit_records {
                    return Err(format!(
                        "the audit log holds {audit_records} records but the commit head says {} were durable: records were deleted from its end or it was rolled back. Refusing to start.",
                        f.audit_records
                    )
                    .into());
                }
            }
        }
        let hook = HeadHook {
            head: o.head,
            audit_tip: o.audit.tip_handle(),
            store_tip: o.store_durable_tip,
        };
        let mut spends = o.ledger;
        let start = spends.start;
        let journal = Journal::open_with(
            o.journal,
            journal_sealer,
            Some(o.audit.sync_handle()),
            Some(hook),
            o.durable.map_or(0, |f| f.journal_records),
            start,
            &mut |at, record| spends.visit(at, record),
        )?;
        let handles = Handles {
            #[cfg(feature = "fault-injection")]
            faults: Some(journal.faults()),
        };
        Ok((
            Self {
                nsm,
                clock,
                state: o.state,
                spend_log: Box::new(journal),
                spends,
                snapshots: o.snapshots,
                audit: Box::new(o.audit),
                location,
            },
            handles,
        ))
    }
}

impl StateStore for Store {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        Store::get(self, table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Record>, StoreError> {
        Store::scan(self, table)
    }
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        Store::apply(self, ops)
    }
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(Store::sync(self))
    }
    fn chain_at(&self, seq: u64) -> Option<[u8; 32]> {
        Store::chain_at(self, seq)
    }
}

impl StateStore for LogStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        LogStore::get(self, table, key)
    }
    fn scan(&self, table: Table) -> Result<Vec<Record>, StoreError> {
        LogStore::scan(self, table)
    }
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        LogStore::apply(self, ops)
    }
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(LogStore::sync(self))
    }
    fn chain_at(&self, seq: u64) -> Option<[u8; 32]> {
        LogStore::chain_at(self, seq)
    }
}

impl SpendLog for Journal {
    fn append(&self, record: &[u8]) -> Result<crate::journal::RecordRef, JournalError> {
        Journal::append(self, record)
    }
    fn read(&self, at: crate::journal::RecordRef) -> Result<Zeroizing<Vec<u8>>, JournalError> {
        Journal::read(self, at)
    }
    fn durable(&self) -> BoxFuture<'_, Result<(), JournalError>> {
        Box::pin(Journal::durable(self))
    }
    fn checkpoint(&self) -> BoxFuture<'_, Result<(), JournalError>> {
        Box::pin(Journal::checkpoint(self))
    }
    fn arm_head(&self) {
        Journal::arm_head(self);
    }
    fn anchor_cell(&self) -> crate::anchor::AnchorCell {
        Journal::anchor_cell(self)
    }
    fn last_round(&self) -> Option<crate::anchor::Local> {
        Journal::last_round(self)
    }
    fn chain_at(&self, n: u64) -> Option<[u8; 32]> {
        Journal::chain_at(self, n)
    }
    fn confirmed(&self) -> Option<(crate::anchor::Local, bool)> {
        Journal::confirmed(self)
    }
    fn scan(
        &self,
        from: crate::journal::JournalStart,
        until: u64,
        visit: &mut crate::journal::Visit<'_>,
    ) -> Result<crate::journal::JournalStart, JournalError> {
        Journal::scan(self, from, until, visit)
    }
}

impl AuditSink for AuditLog {
    fn attach_key(&self, key: Zeroizing<[u8; 32]>) -> Result<(), AuditError> {
        AuditLog::attach_key(self, key)
    }
    fn append(&self, record: wallet_policy::audit::Record) -> Result<(), AuditError> {
        AuditLog::append(self, record)
    }
    fn sync(&self) -> Result<(), AuditError> {
        AuditLog::sync(self)
    }
    fn head(&self) -> (u64, [u8; 32]) {
        AuditLog::head(self)
    }
    fn hash_at(&self, n: u64) -> Option<[u8; 32]> {
        AuditLog::hash_at(self, n)
    }
    fn start_at(&self, durable: u64) -> Option<crate::audit::Start> {
        AuditLog::start_at(self, durable)
    }
    fn read(&self, from: u64, limit: u64) -> Result<(Vec<String>, u64), AuditError> {
        AuditLog::read(self, from, limit)
    }
}
