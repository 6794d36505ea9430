//! The commit head: after each durability round, what the enclave knows is durable in each of
//! its three stores, sealed in a small file of its own (`DATA_DIR/commit.head`, or the host's
//! `commit.head` on host storage: a [`StorageFile`] either way):
//!
//! * how many spend-journal records,
//! * how many audit-log records,
//! * the state store's batch sequence number (the last durable one).
//!
//! It is written *after* the round's `fdatasync` of the journal and the audit log (and the state
//! store's own sync) returned, and synced *before* any signature of the round is released. So
//! every acknowledged spend, audit record and state change is counted in it, and at start-up each
//! store must hold at least what the head says: a journal cut at a record boundary, a last record
//! corrupted, audit lines deleted from the end, or a state store that lost its last write (a
//! revocation, say) makes the enclave refuse to start, naming the store. A crash between a
//! round's data sync and its head write leaves the stores *ahead* of the head, which is fine.
//!
//! The file lives apart from the stores it counts, so rolling back any one file alone is caught;
//! rolling back all of them together is not (see ARCHITECTURE.md, and the external anchor that
//! will close it plugs in at [`CommitHead::write`] and [`CommitHead::open`]).
//!
//! Format: two 4 KiB slots written in turn (a write touches one 512-byte sector, so a crash
//! leaves each slot either old or new, never torn). Each slot is all zeros (never written) or a
//! 2-byte big-endian length and a sealed blob (associated data `commit-head/v1/<slot>`) of
//! `counter ‖ journal_records ‖ audit_records ‖ store_seq` (u64 big-endian each). The newest
//! valid slot wins; a slot that is neither zeros nor authentic is tampering.

use std::{path::Path, sync::Arc};

use crate::{
    hostfile::{read_up_to, LocalFile, StorageFile},
    seal::Sealer,
};

const SLOT: u64 = 4096;
const SECTOR: usize = 512;

/// What the head says is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// Spend-journal records.
    pub journal_records: u64,
    /// Audit-log records.
    pub audit_records: u64,
    /// The state store's batch sequence number.
    pub store_seq: u64,
}

/// Commit head failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// File system error.
    #[error("commit head {0}")]
    Io(String),
    /// A slot is neither empty nor authentic.
    #[error("commit head slot {0} is corrupt or was tampered with; refusing to start")]
    Corrupt(u64),
}

/// The commit head file.
pub struct CommitHead {
    file: Arc<dyn StorageFile>,
    sealer: Sealer,
    counter: u64,
}

impl std::fmt::Debug for CommitHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitHead").field("counter", &self.counter).finish_non_exhaustive()
    }
}

fn aad(slot: u64) -> Vec<u8> {
    format!("commit-head/v1/{slot}").into_bytes()
}

impl CommitHead {
    /// Opens (or creates, 0600) the head at `path` and returns the newest facts it holds
    /// (`None` when it was never written).
    ///
    /// # Errors
    /// [`HeadError`] on I/O failure or a slot that fails authentication.
    pub fn open(path: &Path, sealer: Sealer) -> Result<(Self, Option<Facts>), HeadError> {
        Self::open_file(LocalFile::open(path).map_err(|e| HeadError::Io(e.to_string()))?, sealer)
    }

    /// Opens the head in `file` (local, or stored by the host) and returns the newest facts it
    /// holds (`None` when it was never written). Only the two slots' first sectors are read,
    /// whatever length the file claims.
    ///
    /// # Errors
    /// [`HeadError`] on I/O failure or a slot that fails authentication.
    pub fn open_file(
        file: Arc<dyn StorageFile>,
        sealer: Sealer,
    ) -> Result<(Self, Option<Facts>), HeadError> {
        let label = file.label().to_owned();
        let io = |e: std::io::Error| HeadError::Io(format!("{label}: {e}"));
        let mut newest: Option<(u64, Facts)> = None;
        for slot in 0..2 {
            let mut buf = [0u8; SECTOR];
            let n = read_up_to(file.as_ref(), &mut buf, slot * SLOT).map_err(io)?;
            if buf[..n].iter().all(|b| *b == 0) {
                continue;
            }
            let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            let blob = buf.get(2..2 + len).ok_or(HeadError::Corrupt(slot))?;
            let plain = sealer.open(&aad(slot), blob).map_err(|_| HeadError::Corrupt(slot))?;
            let word = |i: usize| -> Result<u64, HeadError> {
                plain
                    .get(i * 8..i * 8 + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or(HeadError::Corrupt(slot))
            };
            let (counter, facts) = (
                word(0)?,
                Facts { journal_records: word(1)?, audit_records: word(2)?, store_seq: word(3)? },
            );
            if counter % 2 != slot {
                return Err(HeadError::Corrupt(slot));
            }
            if newest.is_none_or(|(c, _)| counter > c) {
                newest = Some((counter, facts));
            }
        }
        let counter = newest.map_or(0, |(c, _)| c);
        Ok((Self { file, sealer, counter }, newest.map(|(_, f)| f)))
    }

    /// Records `facts` as durable: writes the next slot and syncs it. Call only after the stores'
    /// own syncs covering `facts` returned.
    ///
    /// # Errors
    /// The I/O error; the round then fails (nothing it covers is released).
    pub fn write(&mut self, facts: Facts) -> std::io::Result<()> {
        let counter = self.counter + 1;
        let slot = counter % 2;
        let mut plain = Vec::with_capacity(32);
        for w in [counter, facts.journal_records, facts.audit_records, facts.store_seq] {
            plain.extend_from_slice(&w.to_be_bytes());
        }
        let blob = self.sealer.seal(&aad(slot), &plain);
        let mut sector = [0u8; SECTOR];
        let len = u16::try_from(blob.len()).map_err(std::io::Error::other)?;
        sector[..2].copy_from_slice(&len.to_be_bytes());
        sector[2..2 + blob.len()].copy_from_slice(&blob);
        self.file.write_all_at(&sector, slot * SLOT)?;
        self.file.sync_data()?;
        self.counter = counter;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;
    use crate::hoststorage::fake_host::{Files, BACKENDS};

    fn sealer() -> Sealer {
        Sealer::new(&Zeroizing::new([3u8; 32]), crate::platform::nsm::test_entropy())
    }

    #[test]
    fn the_newest_slot_wins_and_a_tampered_slot_is_refused() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let p = files.path("commit.head");
            let open = |s: Sealer| CommitHead::open_file(files.file("commit.head"), s);
            let (mut h, none) = open(sealer()).unwrap();
            assert_eq!(none, None);
            for i in 1..=5 {
                h.write(Facts { journal_records: i, audit_records: 2 * i, store_seq: 3 * i })
                    .unwrap();
            }
            drop(h);
            let (_, facts) = open(sealer()).unwrap();
            assert_eq!(
                facts,
                Some(Facts { journal_records: 5, audit_records: 10, store_seq: 15 }),
                "{backend:?}"
            );
            // Each slot authenticates only where it is: swapping them is tampering.
            let bytes = std::fs::read(&p).unwrap();
            let mut swapped = bytes[4096..].to_vec();
            swapped.resize(4096, 0);
            swapped.extend_from_slice(&bytes[..4096]);
            std::fs::write(&p, &swapped).unwrap();
            assert!(matches!(open(sealer()), Err(HeadError::Corrupt(_))), "{backend:?}");
            let mut edited = bytes.clone();
            edited[20] ^= 1;
            std::fs::write(&p, &edited).unwrap();
            assert!(matches!(open(sealer()), Err(HeadError::Corrupt(0))), "{backend:?}");
            // Another sealing key: corrupt.
            std::fs::write(&p, &bytes).unwrap();
            let other =
                Sealer::new(&Zeroizing::new([4u8; 32]), crate::platform::nsm::test_entropy());
            assert!(open(other).is_err(), "{backend:?}");
            // Deleted: a fresh, empty head (the platform refuses it for a store written before).
            std::fs::remove_file(&p).unwrap();
            assert_eq!(open(sealer()).unwrap().1, None, "{backend:?}");
        }
        // The local path of old reads the same format.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("commit.head");
        let (mut h, _) = CommitHead::open(&p, sealer()).unwrap();
        h.write(Facts { journal_records: 1, audit_records: 1, store_seq: 1 }).unwrap();
        drop(h);
        assert!(CommitHead::open(&p, sealer()).unwrap().1.is_some());
    }
}
