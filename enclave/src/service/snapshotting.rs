//! Taking ledger snapshots ([`crate::snapshot`]) in the background, every
//! [`DEFAULT_SNAPSHOT_EVERY`] journal records: start-up then replays at most about that many
//! records after the newest snapshot, whatever the history's length.
//!
//! A snapshot is built from the journal alone, never from the running state: the newest
//! snapshot is read back and the durable records after it (up to the last completed round:
//! durable, in the commit head, anchored when there is an anchor) are replayed into it with the
//! code start-up uses ([`super::replay::Ledger::visit`]). So it holds exactly what start-up would
//! compute at that record, and no reservation in flight can leak into it. The chain hash it
//! reaches must equal the one the round recorded, or nothing is written.

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
    ) -> Arc<Self> {
        let covers = snapshots.covers();
        Arc::new(Self {
            log: Arc::downgrade(log),
            audit: Arc::downgrade(audit),
            snapshots,
            every: AtomicU64::new(DEFAULT_SNAPSHOT_EVERY),
            due: AtomicU64::new(covers + DEFAULT_SNAPSHOT_EVERY),
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
            take(&*log, &*audit, &this.snapshots, ttl_ms)
        })
        .await
        .map_err(|e| format!("the snapshot task failed: {e}"))
        .and_then(|r| r);
        if let Ok(Some(covers)) = r {
            self.due.store(covers + self.every.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.running.store(false, Ordering::Release);
        r
    }
}

/// Builds and writes a snapshot covering the journal up to its last completed round. Returns
/// the records it covers (`None`: nothing new to cover).
fn take(
    log: &dyn SpendLog,
    audit: &dyn AuditSink,
    snapshots: &Snapshots,
    ttl_ms: u64,
) -> Result<Option<u64>, String> {
    let Some(round) = log.confirmed() else { return Ok(None) };
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
    Ok(Some(until))
}

impl Enclave {
    /// Sets how many journal records are written between ledger snapshots (default
    /// [`DEFAULT_SNAPSHOT_EVERY`]; at least 1).
    pub fn set_snapshot_every(&self, records: u64) {
        let s = &self.snapshotting;
        let records = records.max(1);
        s.every.store(records, Ordering::Relaxed);
        s.due.store(s.snapshots.covers() + records, Ordering::Relaxed);
    }

    /// Takes a ledger snapshot now, covering the journal up to its last completed round, and
    /// waits for it. Returns the records it covers (`None`: nothing new).
    ///
    /// # Errors
    /// A sentence, when the journal cannot be read back or the snapshot cannot be written.
    pub async fn snapshot(&self) -> Result<Option<u64>, String> {
        Arc::clone(&self.snapshotting).run(self.idem_ttl_ms.load(Ordering::Relaxed)).await
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
