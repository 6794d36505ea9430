//! Ledger snapshots: the ledger the spend journal made up to some record
//! ([`crate::service::replay::Ledger`]), sealed, so that start-up reads the newest snapshot and
//! the records after it rather than the whole journal, and verifies the audit log from the
//! checkpoint the snapshot names rather than from its first record.
//!
//! Two files, `ledger.snapshot.0` and `ledger.snapshot.1` (in the data directory, or kept by the
//! host on host storage), written in turn: each holds one frame, a `u32` big-endian length and a
//! blob sealed with associated data [`AAD`]. A write goes to the slot that does not hold the
//! newest snapshot and is synced; a crash mid-write tears that slot only.
//!
//! What the host can do with them, and why it does not matter:
//! * **Forge or alter one**: it does not open (sealed); it is ignored, with a warning.
//! * **Roll one back, swap or delete them**: a snapshot is a cache of a pure function of the
//!   journal's records, bound to its position (record number, byte offset, chain hash). An older
//!   snapshot means replaying more records, and no snapshot means replaying all of them: the
//!   ledger is the same. The records after the position open only at their own numbers, and the
//!   chain continued from the snapshot's hash is what the commit head and the anchor check.
//! * **Give a snapshot with journal records deleted before its position** (archived): start-up
//!   does not read them; a retry whose payload was there fails rather than being answered with
//!   other bytes (the payload is read back sealed to its record number).

use std::sync::{Arc, Mutex};

use crate::{hostfile::StorageFile, seal::Sealer, service::replay::Ledger};

/// The snapshot files' names (in the data directory, or on host storage).
pub const FILES: [&str; 2] = ["ledger.snapshot.0", "ledger.snapshot.1"];

/// Associated data of a snapshot's seal.
const AAD: &[u8] = b"x402-wallet/ledger-snapshot/v1";

/// The two snapshot slots.
pub struct Snapshots {
    files: [Arc<dyn StorageFile>; 2],
    sealer: Sealer,
    /// The slot holding the newest snapshot that opened or was written, and its position.
    newest: Mutex<Option<(usize, u64)>>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").finish_non_exhaustive()
    }
}

impl Snapshots {
    /// Opens both slots and returns the newest ledger that opens (the one covering the most
    /// records), if any; a slot that does not open is ignored with a warning (see the module
    /// docs).
    #[must_use]
    pub fn open(files: [Arc<dyn StorageFile>; 2], sealer: Sealer) -> (Self, Option<Ledger>) {
        let mut best: Option<(usize, Ledger)> = None;
        for (slot, file) in files.iter().enumerate() {
            match read(file.as_ref(), &sealer) {
                Ok(None) => {}
                Ok(Some(ledger)) => {
                    if best.as_ref().is_none_or(|(_, b)| ledger.start.index > b.start.index) {
                        best = Some((slot, ledger));
                    }
                }
                Err(e) => {
                    tracing::warn!(file = file.label(), error = %e, "ignoring a ledger snapshot that does not open (start-up replays more of the journal)")
                }
            }
        }
        let newest = best.as_ref().map(|(slot, l)| (*slot, l.start.index));
        (Self { files, sealer, newest: Mutex::new(newest) }, best.map(|(_, l)| l))
    }

    /// The newest snapshot, read again (`None`: none, or it no longer opens).
    #[must_use]
    pub fn newest(&self) -> Option<Ledger> {
        let (slot, _) = (*self.newest.lock().ok()?)?;
        read(self.files[slot].as_ref(), &self.sealer).ok().flatten()
    }

    /// Position of the newest snapshot (records it covers; 0 without one).
    #[must_use]
    pub fn covers(&self) -> u64 {
        self.newest.lock().ok().and_then(|n| *n).map_or(0, |(_, index)| index)
    }

    /// Seals `content` (a [`Ledger::saved`] covering `index` records) into the slot that does
    /// not hold the newest snapshot, and syncs it.
    ///
    /// # Errors
    /// The I/O error (the other slot is untouched).
    pub fn write(&self, content: &[u8], index: u64) -> std::io::Result<()> {
        let slot = self.newest.lock().ok().and_then(|n| *n).map_or(0, |(s, _)| 1 - s);
        let sealed = self.sealer.seal(AAD, content);
        let len = u32::try_from(sealed.len())
            .map_err(|_| std::io::Error::other("a ledger snapshot over 4 GiB"))?;
        let mut frame = Vec::with_capacity(4 + sealed.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&sealed);
        drop(sealed);
        let file = &self.files[slot];
        file.write_all_at(&frame, 0)?;
        file.set_len(frame.len() as u64)?;
        file.sync_all()?;
        if let Ok(mut n) = self.newest.lock() {
            *n = Some((slot, index));
        }
        Ok(())
    }
}

/// The ledger in one slot (`None` when the slot is empty).
fn read(file: &dyn StorageFile, sealer: &Sealer) -> Result<Option<Ledger>, String> {
    let bytes = file.read_all().map_err(|e| e.to_string())?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let len = bytes
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("cut off")?;
    let sealed = bytes.get(4..4 + len).ok_or("cut off")?;
    let plain = sealer.open(AAD, sealed).map_err(|e| e.to_string())?;
    Ledger::from_saved(&plain).map(Some)
}
