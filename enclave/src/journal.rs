//! The spend journal: an append-only file of sealed spend records, made durable by group commit.
//!
//! Why not sled for spends: every released signature needs a durable spend record first, so the
//! ledger's write path is the payment's critical path. sled 0.34's `flush()` under load took
//! ~2 ms per round here (its I/O thread pool and `sync_file_range`), and its open issues include
//! corruption after abrupt stops. An append-only file needs one `write` per record and one
//! `fdatasync` per round, and its recovery is simple enough to reason about.
//!
//! Format: frames of `u32` big-endian length + sealed blob. Record `n` (from 0) is sealed with
//! associated data `spend-journal/v1/<n>`, so records cannot be reordered, swapped or spliced in
//! from another journal without failing authentication.
//!
//! Recovery: records are read in order. A *torn tail* (a final frame cut short by a crash) was
//! never acknowledged as durable, so no signature was released for it: it is truncated away. Any
//! other failure (a complete frame that does not authenticate, a gap) is tampering or corruption:
//! the enclave refuses to start rather than forget spends.

use std::{
    fs::{File, OpenOptions},
    io::Read as _,
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::Path,
    sync::Mutex,
};

use zeroize::Zeroizing;

use crate::{commit::GroupCommit, seal::Sealer};

/// One record as read back on open.
pub type Record = Zeroizing<Vec<u8>>;

/// Largest record accepted on recovery.
const MAX_RECORD: usize = 64 * 1024;

/// Journal failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// File system error.
    #[error("spend journal {0}")]
    Io(String),
    /// A complete record failed authentication or is out of place.
    #[error("spend journal record {index} at byte {offset} is corrupt or was tampered with ({reason}); refusing to start without a complete ledger")]
    Corrupt {
        /// Record number.
        index: u64,
        /// Byte offset.
        offset: u64,
        /// What failed.
        reason: String,
    },
}

/// Zeros written ahead of the records at a time.
const CHUNK: u64 = 8 << 20;

/// Writes zeros from `allocated` to past `needed` (one [`CHUNK`] beyond) and syncs the file, so
/// that appends overwrite already-written blocks: the file's size and extents then do not change
/// on the hot path, and `fdatasync` has no metadata to commit (on ext4 that halves its cost or
/// better). Returns the new allocated size.
fn preallocate(file: &File, allocated: u64, needed: u64) -> std::io::Result<u64> {
    let target = needed.saturating_add(CHUNK);
    if allocated >= needed.saturating_add(CHUNK / 2) {
        return Ok(allocated);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = allocated;
    while at < target {
        let n = (target - at).min(zeros.len() as u64);
        #[allow(clippy::cast_possible_truncation)] // n <= 1 MiB
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    file.sync_all()?;
    Ok(at)
}

/// Reads records until the end of the data. Returns them and where the data ends.
///
/// The data ends at a zero length header (preallocated zeros), or at a *torn* final frame: one cut
/// off by the end of the file, or failing authentication while containing a run of zero bytes (the
/// part a crash left unwritten) with nothing but zeros after it. A frame that fails otherwise is
/// tampering or corruption.
fn recover(bytes: &[u8], sealer: &Sealer) -> Result<(Vec<Record>, usize), JournalError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    loop {
        let rest = &bytes[offset..];
        if rest.len() < 4 {
            return Ok((records, offset));
        }
        let index = records.len() as u64;
        let corrupt =
            |reason: String| JournalError::Corrupt { index, offset: offset as u64, reason };
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 {
            if rest.iter().all(|b| *b == 0) {
                return Ok((records, offset));
            }
            return Err(corrupt("data after an empty record header".into()));
        }
        if len > MAX_RECORD {
            return Err(corrupt(format!("impossible record length {len}")));
        }
        if rest.len() < 4 + len {
            return Ok((records, offset)); // cut off by the end of the file
        }
        let frame = &rest[4..4 + len];
        match sealer.open(&aad(index), frame) {
            Ok(plain) => {
                records.push(plain);
                offset += 4 + len;
            }
            Err(e) => {
                let zero_run = frame.windows(16).any(|w| w.iter().all(|b| *b == 0));
                let nothing_after = rest[4 + len..].iter().all(|b| *b == 0);
                if zero_run && nothing_after {
                    return Ok((records, offset));
                }
                return Err(corrupt(e.to_string()));
            }
        }
    }
}

fn aad(index: u64) -> Vec<u8> {
    format!("spend-journal/v1/{index}").into_bytes()
}

struct Writer {
    file: File,
    next: u64,
    /// End of the last record.
    pos: u64,
    /// Bytes of the file already written (records, then zeros).
    allocated: u64,
    /// Set when a write failed: a partial frame may be on disk, so nothing may follow it.
    poisoned: bool,
}

/// The append-only spend journal.
pub struct Journal {
    writer: Mutex<Writer>,
    sealer: Sealer,
    commit: GroupCommit,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens the journal at `path`, returning it and every record in order (opened).
    ///
    /// # Errors
    /// [`JournalError`] on I/O failure or a corrupt record.
    pub fn open(path: &Path, sealer: Sealer) -> Result<(Self, Vec<Record>), JournalError> {
        let io = |e: std::io::Error| JournalError::Io(format!("{}: {e}", path.display()));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (records, end) = recover(&bytes, &sealer)?;
        if bytes[end..].iter().any(|b| *b != 0) {
            tracing::warn!(
                offset = end,
                "clearing a torn journal tail (a record never acknowledged as durable)"
            );
            file.write_all_at(&vec![0u8; bytes.len() - end], end as u64).map_err(io)?;
        }
        let end = end as u64;
        let allocated = preallocate(&file, bytes.len() as u64, end).map_err(io)?;
        let sync_file = file.try_clone().map_err(io)?;
        let commit =
            GroupCommit::spawn("journal-sync", move || sync_file.sync_data()).map_err(io)?;
        let next = records.len() as u64;
        Ok((
            Self {
                writer: Mutex::new(Writer { file, next, pos: end, allocated, poisoned: false }),
                sealer,
                commit,
            },
            records,
        ))
    }

    /// Appends one record (not yet durable: await [`Self::durable`]).
    ///
    /// # Errors
    /// [`JournalError::Io`]; the journal is then unusable until restart (fail closed).
    pub fn append(&self, plaintext: &[u8]) -> Result<(), JournalError> {
        let mut w = self.writer.lock().map_err(|_| JournalError::Io("writer poisoned".into()))?;
        if w.poisoned {
            return Err(JournalError::Io(
                "an earlier write failed; restart the enclave to recover the journal".into(),
            ));
        }
        let sealed = self.sealer.seal(&aad(w.next), plaintext);
        let mut frame = Vec::with_capacity(4 + sealed.len());
        frame.extend_from_slice(
            &u32::try_from(sealed.len())
                .map_err(|_| JournalError::Io("record too large".into()))?
                .to_be_bytes(),
        );
        frame.extend_from_slice(&sealed);
        // A failed or partial write leaves a torn tail: poison the writer so nothing is appended
        // after it (recovery truncates it).
        let end = w.pos + frame.len() as u64;
        if end > w.allocated {
            match preallocate(&w.file, w.allocated, end) {
                Ok(a) => w.allocated = a,
                Err(e) => {
                    w.poisoned = true;
                    return Err(JournalError::Io(e.to_string()));
                }
            }
        }
        if let Err(e) = w.file.write_all_at(&frame, w.pos) {
            w.poisoned = true;
            return Err(JournalError::Io(e.to_string()));
        }
        w.pos = end;
        w.next += 1;
        self.commit.wrote();
        drop(w);
        Ok(())
    }

    /// Waits until every record appended before this call is on disk (`fdatasync`).
    ///
    /// # Errors
    /// [`JournalError::Io`] when the round failed.
    pub async fn durable(&self) -> Result<(), JournalError> {
        self.commit.durable().await.map_err(JournalError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&Zeroizing::new([9u8; 32]))
    }

    #[tokio::test]
    async fn records_come_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("spends.journal");
        {
            let (j, recs) = Journal::open(&p, sealer()).unwrap();
            assert!(recs.is_empty());
            for i in 0..10u8 {
                j.append(&[i; 100]).unwrap();
            }
            j.durable().await.unwrap();
        }
        let (j, recs) = Journal::open(&p, sealer()).unwrap();
        assert_eq!(recs.len(), 10);
        assert!(recs
            .iter()
            .enumerate()
            .all(|(i, r)| r.as_slice() == [u8::try_from(i).unwrap(); 100]));
        j.append(b"eleventh").unwrap();
        j.durable().await.unwrap();
        drop(j);
        assert_eq!(Journal::open(&p, sealer()).unwrap().1.len(), 11);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cleared_but_tampering_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("spends.journal");
        {
            let (j, _) = Journal::open(&p, sealer()).unwrap();
            for i in 0..3u8 {
                j.append(&[i; 50]).unwrap();
            }
            j.durable().await.unwrap();
        }
        let full = std::fs::read(&p).unwrap();
        let frame = 4 + u32::from_be_bytes(full[..4].try_into().unwrap()) as usize;
        assert!(full[3 * frame..].iter().all(|b| *b == 0), "preallocated with zeros");
        let full = full[..3 * frame].to_vec();

        // Crash in the middle of writing the fourth record: at the end of the file...
        let mut torn = full[..3 * frame].to_vec();
        torn.extend_from_slice(&full[..frame / 2]);
        std::fs::write(&p, &torn).unwrap();
        assert_eq!(Journal::open(&p, sealer()).unwrap().1.len(), 3);
        // ...and inside the preallocated zeros (its second half never reached the disk).
        let mut torn = full[..3 * frame].to_vec();
        torn.extend_from_slice(&full[frame..frame + frame / 2]);
        torn.extend_from_slice(&vec![0u8; 4096]);
        std::fs::write(&p, &torn).unwrap();
        {
            let (j, recs) = Journal::open(&p, sealer()).unwrap();
            assert_eq!(recs.len(), 3);
            j.append(b"after the crash").unwrap();
            j.durable().await.unwrap();
        }
        let recs = Journal::open(&p, sealer()).unwrap().1;
        assert_eq!(
            recs.len(),
            4,
            "the torn tail was cleared and the next record follows the third"
        );
        assert_eq!(recs[3].as_slice(), b"after the crash");

        // An edited byte inside a complete record.
        let mut edited = full.clone();
        edited[frame + 10] ^= 1;
        std::fs::write(&p, &edited).unwrap();
        assert!(matches!(Journal::open(&p, sealer()), Err(JournalError::Corrupt { index: 1, .. })));

        // A deleted record: the next one sits at the wrong index.
        let mut deleted = full[..frame].to_vec();
        deleted.extend_from_slice(&full[2 * frame..]);
        std::fs::write(&p, &deleted).unwrap();
        assert!(matches!(Journal::open(&p, sealer()), Err(JournalError::Corrupt { index: 1, .. })));

        // Two records swapped.
        let mut swapped = full[frame..2 * frame].to_vec();
        swapped.extend_from_slice(&full[..frame]);
        swapped.extend_from_slice(&full[2 * frame..]);
        std::fs::write(&p, &swapped).unwrap();
        assert!(matches!(Journal::open(&p, sealer()), Err(JournalError::Corrupt { index: 0, .. })));
    }
}
