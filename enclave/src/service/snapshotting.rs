//! Taking ledger snapshots ([`crate::snapshot`]) in the background, every
//! [`DEFAULT_SNAPSHOT_EVERY`] journal records, or every N records after a snapshot of N KiB when
//! that is more (so a big one, many idempotency keys, is not rewritten too often): start-up then
//! replays a bounded number of records after the newest snapshot, whatever the history's length.
//!
//! A snapshot is built from the journal alone, never from the running state: the newest
//! snapshot is read back and the durable records after it (up to the last completed round:
//! durable, in the commit head, anchored when there is an anchor) are replayed into it with the
//! code start-up uses ([`super::replay::Ledger::visit`]). So it holds exactly what start-up would
//! compute at that record, and no reservation in flight can leak into it. The chain hash it
//! reaches must equal the one the round recorded, or nothing is written. With an anchor
//! configured, only a round the anchor confirmed counts (never one from before its start-up
//! check passed): a snapshot then never covers records the anchor does not hold, whose chain
//! hash the start-up check could not look up.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Weak,
};

use super::Enclave;
use crate::{
    platform::{AuditSink, SpendLog},
    snapshot::Snapshots,
};

/// Journal records between two ledger snapshots by default (at the measured ~30,000 records a
/// second of start-up replay, about 2 s at most; see BENCHMARKS.md, "A long history at
/// start-up").
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 50_000;

/// The snapshot slots, the stores a snapshot reads, and when the next one is due.
#[derive(Debug)]
pub(super) struct Snapshotting {
    /// Weak: a snapshot in the background does not keep the stores of a stopped enclave open
    /// (beyond the snapshot it is taking).
    log: Weak<dyn SpendLog>,
    audit: Weak<dyn AuditSink>,
    snapshots: Snapshots,
    /// The anchor the journal's rounds end with (empty: not attached).
    anchor: crate::anchor::AnchorCell,
    /// The state holds an anchor configuration.
    anchor_required: bool,
    every: AtomicU64,
    /// Journal records at which the next snapshot starts.
    due: AtomicU64,
    running: AtomicBool,
}

impl Snapshotting {
    pub(super) fn new(
        log: &Arc<dyn SpendLog>,
        audit: &Arc<dyn AuditSink>,
        snapshots: Snapshots,
        anchor: crate::anchor::AnchorCell,
        anchor_required: bool,
    ) -> Arc<Self> {
        let covers = snapshots.covers();
        Arc::new(Self {
            log: Arc::downgrade(log),
            audit: Arc::downgrade(audit),
            snapshots,
            anchor,
            anchor_required,
            every: AtomicU64::new(DEFAULT_SNAPSHOT_EVERY),
            due: AtomicU64::new(covers.saturating_add(DEFAULT_SNAPSHOT_EVERY)),
            running: AtomicBool::new(false),
        })
    }

    /// Takes a snapshot (one at a time) and waits for it.
    async fn run(self: Arc<Self>, ttl_ms: u64) -> Result<Option<u64>, String> {
        while self.running.swap(true, Ordering::AcqRel) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let this = Arc::clone(&self);
        let r = tokio::task::spawn_blocking(move || {
            let (Some(log), Some(audit)) = (this.log.upgrade(), this.audit.upgrade()) else {
                return Ok(None);
            };
            let anchored = this.anchor_required || this.anchor.get().is_some();
            take(&*log, &*audit, &this.snapshots, anchored, ttl_ms)
        })
        .await
        .map_err(|e| format!("the snapshot task failed: {e}"))
        .and_then(|r| r);
        if let Ok(Some((covers, bytes))) = r {
            // Amortized: a snapshot is rewritten at most once per its size in KiB of records, so
            // its cost per payment stays bounded however many keys the TTL keeps (start-up then
            // reads at most about 2.6 times the snapshot's size of records after it).
            let every = self.every.load(Ordering::Relaxed).max(bytes as u64 / 1024);
            self.due.store(covers.saturating_add(every), Ordering::Relaxed);
        }
        self.running.store(false, Ordering::Release);
        r.map(|done| done.map(|(covers, _)| covers))
    }
}

/// Builds and writes a snapshot covering the journal up to its last completed round (an
/// anchored one when `anchored`). Returns the records it covers and its size in bytes (`None`:
/// nothing new to cover, or no round to cover it with).
fn take(
    log: &dyn SpendLog,
    audit: &dyn AuditSink,
    snapshots: &Snapshots,
    anchored: bool,
    ttl_ms: u64,
) -> Result<Option<(u64, usize)>, String> {
    let Some((round, was_anchored)) = log.confirmed() else { return Ok(None) };
    if anchored && !was_anchored {
        return Ok(None);
    }
    let until = round.facts.journal_records;
    let mut ledger = snapshots.newest().unwrap_or_default();
    if until <= ledger.start.index {
        return Ok(None);
    }
    let next = log
        .scan(ledger.start, until, &mut |at, bytes| ledger.visit(at, bytes))
        .map_err(|e| e.to_string())?;
    if next.chain != round.journal_chain {
        return Err(format!(
            "the journal read back up to record {until} does not hash to what its round recorded; no snapshot written"
        ));
    }
    let audit_start = audit.start_at(round.facts.audit_records);
    let content = ledger.saved(next, audit_start.as_ref(), ttl_ms);
    drop(ledger);
    snapshots.write(&content, until).map_err(|e| format!("writing a ledger snapshot: {e}"))?;
    Ok(Some((until, content.len())))
}

impl Enclave {
    /// Sets how many journal records are written between ledger snapshots (default
    /// [`DEFAULT_SNAPSHOT_EVERY`]; at least 1).
    pub fn set_snapshot_every(&self, records: u64) {
        let s = &self.snapshotting;
        let records = records.max(1);
        s.every.store(records, Ordering::Relaxed);
        s.due.store(s.snapshots.covers().saturating_add(records), Ordering::Relaxed);
    }

    /// Takes a ledger snapshot now, covering the journal up to its last completed round, and
    /// waits for it. Returns the records it covers (`None`: nothing new).
    ///
    /// # Errors
    /// A sentence, when the journal cannot be read back or the snapshot cannot be written.
    pub async fn snapshot(&self) -> Result<Option<u64>, String> {
        Arc::clone(&self.snapshotting).run(self.idem_ttl_ms.load(Ordering::Relaxed)).await
    }

    /// At start-up, once configured (the idempotency TTL) and the anchor started: starts a
    /// snapshot in the background when the records replayed since the newest one make it due.
    pub fn snapshot_if_behind(&self) {
        if let Some((round, _)) = self.spend_log.confirmed() {
            self.snapshot_if_due(round.facts.journal_records);
        }
    }

    /// After the journal reached `records` records: starts a snapshot in the background when
    /// one is due (and none is running). A failure is logged; a later record tries again.
    pub(super) fn snapshot_if_due(&self, records: u64) {
        let s = &self.snapshotting;
        if records < s.due.load(Ordering::Relaxed) || s.running.load(Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let run = Arc::clone(s).run(self.idem_ttl_ms.load(Ordering::Relaxed));
        handle.spawn(async move {
            match run.await {
                Ok(Some(covers)) => tracing::info!(covers, "ledger snapshot written"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "ledger snapshot failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::{
        anchor::Local,
        head::Facts,
        journal::{JournalError, JournalStart, RecordRef, Visit},
        platform::BoxFuture,
    };

    /// A spend log whose last completed round is `round`, counting the scans asked of it.
    #[derive(Debug)]
    struct Log {
        round: Option<(Local, bool)>,
        scans: AtomicU64,
    }

    impl SpendLog for Log {
        fn append(&self, _: &[u8]) -> Result<RecordRef, JournalError> {
            unreachable!("a snapshot never writes the journal")
        }
        fn read(&self, _: RecordRef) -> Result<zeroize::Zeroizing<Vec<u8>>, JournalError> {
            unreachable!("a snapshot scans")
        }
        fn durable(&self) -> BoxFuture<'_, Result<(), JournalError>> {
            unreachable!()
        }
        fn checkpoint(&self) -> BoxFuture<'_, Result<(), JournalError>> {
            unreachable!()
        }
        fn arm_head(&self) {}
        fn anchor_cell(&self) -> crate::anchor::AnchorCell {
            crate::anchor::AnchorCell::default()
        }
        fn last_round(&self) -> Option<Local> {
            None
        }
        fn chain_at(&self, _: u64) -> Option<[u8; 32]> {
            None
        }
        fn confirmed(&self) -> Option<(Local, bool)> {
            self.round
        }
        fn scan(
            &self,
            from: JournalStart,
            until: u64,
            _: &mut Visit<'_>,
        ) -> Result<JournalStart, JournalError> {
            self.scans.fetch_add(1, Ordering::SeqCst);
            // No records: the chain stays where it was, which is not what the round recorded.
            Ok(JournalStart { index: until, ..from })
        }
    }

    #[derive(Debug)]
    struct Audit;

    impl AuditSink for Audit {
        fn attach_key(
            &self,
            _: zeroize::Zeroizing<[u8; 32]>,
        ) -> Result<(), crate::audit::AuditError> {
            unreachable!()
        }
        fn append(&self, _: wallet_policy::audit::Record) -> Result<(), crate::audit::AuditError> {
            unreachable!()
        }
        fn sync(&self) -> Result<(), crate::audit::AuditError> {
            unreachable!()
        }
        fn head(&self) -> (u64, [u8; 32]) {
            (0, [0; 32])
        }
        fn hash_at(&self, _: u64) -> Option<[u8; 32]> {
            None
        }
        fn read(&self, _: u64, _: u64) -> Result<(Vec<String>, u64), crate::audit::AuditError> {
            unreachable!()
        }
        fn start_at(&self, _: u64) -> Option<crate::audit::Start> {
            None
        }
    }

    fn round(anchored: bool) -> Option<(Local, bool)> {
        let local = Local {
            facts: Facts { journal_records: 5, audit_records: 5, store_seq: 1 },
            chain: [0; 32],
            journal_chain: [7; 32],
            state_chain: [0; 32],
        };
        Some((local, anchored))
    }

    /// With an anchor, a snapshot covers only rounds the anchor confirmed (never the rounds of
    /// start-up, before its check passed); without one, any completed round. A chain that does
    /// not reach the round's hash writes nothing.
    #[test]
    fn with_an_anchor_only_anchored_rounds_are_snapshotted() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = || {
            crate::seal::Sealer::new(
                &zeroize::Zeroizing::new([5u8; 32]),
                crate::platform::nsm::test_entropy(),
            )
        };
        let files = crate::snapshot::FILES.map(|f| {
            crate::hostfile::LocalFile::open(&dir.path().join(f)).unwrap()
                as Arc<dyn crate::hostfile::StorageFile>
        });
        let (snapshots, none) = Snapshots::open(files, sealer());
        assert!(none.is_none());
        for (anchored, was_anchored, scans) in
            [(true, false, 0), (true, true, 1), (false, false, 1), (false, true, 1)]
        {
            let log = Log { round: round(was_anchored), scans: AtomicU64::new(0) };
            let r = take(&log, &Audit, &snapshots, anchored, u64::MAX);
            assert_eq!(log.scans.load(Ordering::SeqCst), scans, "{anchored} {was_anchored}");
            if scans == 0 {
                assert_eq!(r, Ok(None));
            } else {
                assert!(r.unwrap_err().contains("does not hash"), "{anchored} {was_anchored}");
            }
        }
        assert_eq!(snapshots.covers(), 0, "nothing was written");
        let log = Log { round: None, scans: AtomicU64::new(0) };
        assert_eq!(take(&log, &Audit, &snapshots, false, u64::MAX), Ok(None));
    }
}
