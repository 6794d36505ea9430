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
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    sync::Mutex,
};

use zeroize::Zeroizing;

use crate::{
    commit::GroupCommit,
    seal::{SealError, Sealer},
};

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

fn aad(index: u64) -> Vec<u8> {
    format!("spend-journal/v1/{index}").into_bytes()
}

struct Writer {
    file: File,
    next: u64,
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
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut records = Vec::new();
        let mut offset = 0usize;
        let mut index = 0u64;
        while offset < bytes.len() {
            let rest = &bytes[offset..];
            let torn = rest.len() < 4 || {
                let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                len <= MAX_RECORD && rest.len() < 4 + len
            };
            let zero_tail = rest.iter().all(|b| *b == 0);
            if torn || zero_tail {
                tracing::warn!(
                    offset,
                    dropped = rest.len(),
                    "truncating a torn journal tail (a record never acknowledged as durable)"
                );
                file.set_len(offset as u64).map_err(io)?;
                file.sync_all().map_err(io)?;
                break;
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let corrupt =
                |reason: String| JournalError::Corrupt { index, offset: offset as u64, reason };
            if len == 0 || len > MAX_RECORD {
                return Err(corrupt(format!("impossible record length {len}")));
            }
            let plain = sealer
                .open(&aad(index), &rest[4..4 + len])
                .map_err(|e: SealError| corrupt(e.to_string()))?;
            records.push(plain);
            offset += 4 + len;
            index += 1;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let sync_file = file.try_clone().map_err(io)?;
        let commit =
            GroupCommit::spawn("journal-sync", move || sync_file.sync_data()).map_err(io)?;
        Ok((
            Self {
                writer: Mutex::new(Writer { file, next: index, poisoned: false }),
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
        if let Err(e) = w.file.write_all(&frame) {
            w.poisoned = true;
            return Err(JournalError::Io(e.to_string()));
        }
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
    async fn a_torn_tail_is_truncated_but_tampering_refuses_to_start() {
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
        let frame = full.len() / 3;

        // Crash in the middle of writing the fourth record.
        let mut torn = full.clone();
        torn.extend_from_slice(&full[..frame / 2]);
        std::fs::write(&p, &torn).unwrap();
        assert_eq!(Journal::open(&p, sealer()).unwrap().1.len(), 3);
        assert_eq!(std::fs::read(&p).unwrap(), full, "the torn tail was cut off");

        // Zero-filled tail (size extended, data never written).
        let mut zeros = full.clone();
        zeros.extend_from_slice(&[0u8; 300]);
        std::fs::write(&p, &zeros).unwrap();
        assert_eq!(Journal::open(&p, sealer()).unwrap().1.len(), 3);

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
