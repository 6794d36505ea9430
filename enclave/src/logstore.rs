//! The state store on host storage: an append-only log of sealed batches in one
//! [`StorageFile`] (`state.log`), replayed into memory at open. sled needs a directory of its
//! own; a Nitro enclave has none, so on host storage this takes its place behind
//! [`crate::platform::StateStore`], with the same meaning of batch sequence numbers (what the
//! commit head pins) as [`crate::store::Store`].
//!
//! Format: the spend journal's ([`crate::journal`]): frames of a `u32` big-endian length and a
//! sealed blob; frame `n` (from 0) holds batch `n + 1` and is sealed with associated data
//! `state-log/v1/<n>`, so batches cannot be reordered, dropped from the middle, swapped or spliced
//! in from another log without failing authentication. Inside the seal: a watermark (how many
//! batches were durable when it was written), then the batch: a version byte, an operation count
//! (`u32`) and per operation a tag (1 put, 2 delete), the full key (`u32` length, table prefix and
//! key) and, for a put, the value (`u32` length, plaintext).
//!
//! Recovery is the journal's, with its rules: a frame that is cut off, impossible or unauthentic
//! below the highest watermark (or vouched for by a later frame) is corruption, and the store
//! refuses to open; otherwise it is the torn last batch of a crash, never acknowledged, and it is
//! cleared (zeroed and synced) before anything new is written. A log that holds fewer batches than
//! the commit head says were durable (the last batch — a revocation, say — dropped by the host)
//! is refused before anything is cleared.
//!
//! The records live in memory (a `BTreeMap` of full key to plaintext, zeroized on drop), so the
//! state's size is bounded by the enclave's memory, and the log grows with every batch and is
//! read whole at start-up: compaction (a sealed snapshot and a fresh log) is issue 14, not built.
//! A batch is at most [`MAX_BATCH`] sealed bytes (a two-million-entry KYT import is about 70 MB).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
};

use zeroize::Zeroizing;

use crate::{
    commit::GroupCommit,
    hostfile::StorageFile,
    journal::{clear_tail, recover_frames, Framing, JournalError},
    seal::Sealer,
    store::{full_key, Op, Record, StoreError, Table},
};

/// Largest sealed batch, written or read: 256 MiB.
pub const MAX_BATCH: usize = 256 << 20;

const VERSION: u8 = 1;
const PUT: u8 = 1;
const DELETE: u8 = 2;

fn aad(index: u64) -> Vec<u8> {
    format!("state-log/v1/{index}").into_bytes()
}

pub(crate) const FRAMING: Framing = Framing { aad, max_record: MAX_BATCH };

/// One decoded operation: the full key, and the value for a put.
type Change = (Vec<u8>, Option<Zeroizing<Vec<u8>>>);

struct Writer {
    /// End of the last batch written.
    pos: u64,
    /// Set when a write failed: a partial frame may be in the file, so nothing may follow it.
    poisoned: bool,
}

/// The state store on one file (see the module docs).
pub struct LogStore {
    // Declared first: dropped first, so its last round runs while the file is still open.
    commit: GroupCommit,
    file: Arc<dyn StorageFile>,
    sealer: Sealer,
    /// Serialises writers: batches are written in sequence order.
    writer: Mutex<Writer>,
    /// Every record, by full key (table prefix and key), as of the last batch applied.
    records: RwLock<BTreeMap<Vec<u8>, Zeroizing<Vec<u8>>>>,
    /// Batches applied (the sequence number of the last one), and known durable.
    applied_seq: Arc<AtomicU64>,
    durable_seq: Arc<AtomicU64>,
    /// The chain's hash after every batch ([`crate::chain`]); the last batch applied and the
    /// last durable one, each with its hash.
    history: crate::chain::History,
    applied_tip: crate::chain::Tip,
    durable_tip: crate::chain::Tip,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("file", &self.file.label())
            .field("seq", &self.applied_seq.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// Encodes a batch (the plaintext sealed in its frame, after the watermark).
fn encode(changes: &[Change], out: &mut Vec<u8>) -> Result<(), StoreError> {
    let len32 = |n: usize| u32::try_from(n).map_err(|_| engine("batch too large"));
    out.push(VERSION);
    out.extend_from_slice(&len32(changes.len())?.to_be_bytes());
    for (key, value) in changes {
        out.push(if value.is_some() { PUT } else { DELETE });
        out.extend_from_slice(&len32(key.len())?.to_be_bytes());
        out.extend_from_slice(key);
        if let Some(v) = value {
            out.extend_from_slice(&len32(v.len())?.to_be_bytes());
            out.extend_from_slice(v);
        }
    }
    Ok(())
}

/// Decodes a batch written by [`encode`] (authenticated, but read defensively all the same).
fn decode(mut b: &[u8]) -> Result<Vec<Change>, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err("batch cut short".into());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> Result<usize, String> {
        let v = take(b, 4)?;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize)
    }
    if take(&mut b, 1)? != [VERSION] {
        return Err("unknown batch version".into());
    }
    let count = len(&mut b)?;
    let mut out = Vec::with_capacity(count.min(b.len()));
    for _ in 0..count {
        let tag = take(&mut b, 1)?[0];
        let n = len(&mut b)?;
        let key = take(&mut b, n)?.to_vec();
        let value = match tag {
            PUT => {
                let n = len(&mut b)?;
                Some(Zeroizing::new(take(&mut b, n)?.to_vec()))
            }
            DELETE => None,
            t => return Err(format!("unknown operation {t}")),
        };
        out.push((key, value));
    }
    if !b.is_empty() {
        return Err("trailing bytes after the batch".into());
    }
    Ok(out)
}

/// The state log's chain tag ([`crate::chain`]).
const CHAIN_TAG: &[u8] = b"x402-wallet/state-log-chain/v1\0";

impl LogStore {
    /// Opens the store in `file`, replaying every batch. `min_seq` is the batch the commit head
    /// says was durable: a log holding fewer is refused before a torn tail is cleared (so the
    /// evidence stays).
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure, a corrupt batch before the tail, or a log behind
    /// `min_seq`.
    pub fn open(
        file: Arc<dyn StorageFile>,
        sealer: Sealer,
        min_seq: u64,
    ) -> Result<Self, StoreError> {
        let label = file.label().to_owned();
        let io = |e: std::io::Error| StoreError::Engine(format!("state log {label}: {e}"));
        let bytes = file.read_all().map_err(io)?;
        let (batches, end) = recover_frames(&bytes, &sealer, FRAMING).map_err(|e| match e {
            JournalError::Corrupt { index, offset, reason } => StoreError::Engine(format!(
                "state log {label}: batch {} at byte {offset} is corrupt or was tampered with ({reason}); refusing to start",
                index + 1
            )),
            other => StoreError::Engine(format!("state log {label}: {other}")),
        })?;
        let seq = batches.len() as u64;
        if seq < min_seq {
            return Err(StoreError::Engine(format!(
                "the state store is behind the commit head: it holds batch {seq} but batch {min_seq} was durable — it lost writes or was rolled back (a revocation, a freeze or a policy change could be undone). Refusing to start."
            )));
        }
        let mut records = BTreeMap::new();
        for (i, batch) in batches.iter().enumerate() {
            let changes = decode(batch).map_err(|why| {
                StoreError::Engine(format!(
                    "state log {label}: batch {} cannot be read ({why}); refusing to start",
                    i + 1
                ))
            })?;
            for (key, value) in changes {
                match value {
                    Some(v) => records.insert(key, v),
                    None => records.remove(&key),
                };
            }
        }
        let history = crate::chain::History::of(CHAIN_TAG, &batches);
        drop(batches);
        clear_tail(file.as_ref(), &bytes, end).map_err(io)?;
        drop(bytes);
        let applied_seq = Arc::new(AtomicU64::new(seq));
        let durable_seq = Arc::new(AtomicU64::new(seq));
        let (n, h) = history.tip();
        let (applied_tip, durable_tip) =
            (crate::chain::Tip::new(n, h), crate::chain::Tip::new(n, h));
        let (round_file, round_durable) = (Arc::clone(&file), Arc::clone(&durable_seq));
        let (round_applied_tip, round_durable_tip) = (applied_tip.clone(), durable_tip.clone());
        let commit = GroupCommit::spawn("state-log-sync", move || {
            // Every batch counted here was written before this sync began, so it covers them.
            let (covered, hash) = round_applied_tip.get();
            round_file.sync_data()?;
            round_durable.fetch_max(covered, Ordering::SeqCst);
            round_durable_tip.advance(covered, hash);
            Ok(())
        })
        .map_err(engine)?;
        Ok(Self {
            commit,
            file,
            sealer,
            writer: Mutex::new(Writer { pos: end as u64, poisoned: false }),
            records: RwLock::new(records),
            applied_seq,
            durable_seq,
            history,
            applied_tip,
            durable_tip,
        })
    }

    /// Applies the writes as one batch (all or none): written to the log, then visible. Not
    /// yet durable: call [`Self::sync`].
    ///
    /// # Errors
    /// [`StoreError::Engine`]: a batch over [`MAX_BATCH`] (nothing written), or a failed write
    /// (the store then refuses every later batch until restart: fail closed).
    pub fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let changes: Vec<Change> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put(t, k, v) => (full_key(t, &k), Some(v)),
                Op::Delete(t, k) => (full_key(t, &k), None),
            })
            .collect();
        let mut w = self.writer.lock().map_err(|_| engine("writer poisoned"))?;
        if w.poisoned {
            return Err(engine(
                "an earlier write to the state log failed; restart the enclave to recover it",
            ));
        }
        let seq = self.applied_seq.load(Ordering::SeqCst) + 1;
        let mut body = Zeroizing::new(Vec::new());
        body.extend_from_slice(&self.durable_seq.load(Ordering::SeqCst).to_be_bytes());
        encode(&changes, &mut body)?;
        let sealed = self.sealer.seal(&aad(seq - 1), &body);
        let content = Zeroizing::new(body[8..].to_vec());
        drop(body);
        if sealed.len() > MAX_BATCH {
            return Err(engine(format!(
                "a state batch of {} bytes exceeds the {MAX_BATCH}-byte limit; nothing was changed",
                sealed.len()
            )));
        }
        let mut frame = Vec::with_capacity(4 + sealed.len());
        frame.extend_from_slice(
            &u32::try_from(sealed.len()).map_err(|_| engine("batch too large"))?.to_be_bytes(),
        );
        frame.extend_from_slice(&sealed);
        drop(sealed);
        if let Err(e) = self.file.write_all_at(&frame, w.pos) {
            w.poisoned = true;
            return Err(engine(format!("state log {}: {e}", self.file.label())));
        }
        w.pos += frame.len() as u64;
        {
            let mut records = self.records.write().map_err(|_| engine("records poisoned"))?;
            for (key, value) in changes {
                match value {
                    Some(v) => records.insert(key, v),
                    None => records.remove(&key),
                };
            }
        }
        let hash = self.history.push(seq, &content);
        self.applied_tip.set(seq, hash);
        self.applied_seq.store(seq, Ordering::SeqCst);
        self.commit.wrote();
        drop(w);
        Ok(())
    }

    /// The chain's hash after batch `seq` (`None` beyond the last).
    #[must_use]
    pub fn chain_at(&self, seq: u64) -> Option<[u8; 32]> {
        self.history.at(seq)
    }

    /// The last durable batch and its chain hash, for the commit head and the anchor.
    #[must_use]
    pub fn durable_tip(&self) -> crate::chain::Tip {
        self.durable_tip.clone()
    }

    /// Waits until every batch applied before this call is durable (one `fdatasync` per round,
    /// shared by callers arriving together).
    ///
    /// # Errors
    /// [`StoreError::Sync`] if the round covering this call failed.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.commit.durable().await.map_err(StoreError::Sync)
    }

    /// The sequence number of the last batch applied (0 for a store never written).
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.applied_seq.load(Ordering::SeqCst)
    }

    /// A handle on the sequence number of the last batch known durable, for the commit head.
    #[must_use]
    pub fn durable_seq(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.durable_seq)
    }

    /// One record's value.
    ///
    /// # Errors
    /// [`StoreError::Engine`] when the store's lock is poisoned.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let records = self.records.read().map_err(|_| engine("records poisoned"))?;
        Ok(records.get(&full_key(table, key)).cloned())
    }

    /// Every record of a table, in key order.
    ///
    /// # Errors
    /// As [`Self::get`].
    pub fn scan(&self, table: Table) -> Result<Vec<Record>, StoreError> {
        let prefix = full_key(table, b"");
        let records = self.records.read().map_err(|_| engine("records poisoned"))?;
        Ok(records
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k[prefix.len()..].to_vec(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    //! Every case runs on both backends: a local file, and the same file stored by a host.
    use super::*;
    use crate::hoststorage::fake_host::{Backend, Files, Mode, BACKENDS};

    const NAME: &str = "state.log";

    fn sealer() -> Sealer {
        Sealer::new(&Zeroizing::new([5u8; 32]), crate::platform::nsm::test_entropy())
    }

    fn open(files: &Files, min_seq: u64) -> Result<LogStore, StoreError> {
        LogStore::open(files.file(NAME), sealer(), min_seq)
    }

    fn put(t: Table, k: &str, v: &str) -> Op {
        Op::Put(t, k.as_bytes().to_vec(), v.as_bytes().to_vec().into())
    }

    /// Three batches, each made durable before the next; returns the file's bytes and where each
    /// batch's frame starts and ends.
    async fn three(files: &Files) -> (Vec<u8>, Vec<(usize, usize)>) {
        let s = open(files, 0).unwrap();
        s.apply(vec![put(Table::Sessions, "s1", "active"), put(Table::Kyt, "a", "")]).unwrap();
        s.sync().await.unwrap();
        s.apply(vec![put(Table::Wallets, "w1", "wallet")]).unwrap();
        s.sync().await.unwrap();
        // The revocation.
        s.apply(vec![put(Table::Sessions, "s1", "revoked")]).unwrap();
        s.sync().await.unwrap();
        assert_eq!(s.seq(), 3);
        drop(s);
        let bytes = std::fs::read(files.path(NAME)).unwrap();
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 4 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            frames.push((at, at + 4 + len));
            at += 4 + len;
        }
        assert_eq!(frames.len(), 3);
        (bytes, frames)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_replay_in_order_and_scan_by_table() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            {
                let s = open(&files, 0).unwrap();
                assert_eq!(s.seq(), 0);
                s.apply(vec![
                    put(Table::Kyt, "a", "1"),
                    put(Table::Sessions, "a", "2"),
                    put(Table::Sessions, "b", "3"),
                    // Later operations of a batch see earlier ones.
                    Op::Delete(Table::Sessions, b"b".to_vec()),
                    put(Table::Keys, "w", "secret"),
                ])
                .unwrap();
                s.sync().await.unwrap();
                assert_eq!(s.durable_seq().load(Ordering::SeqCst), 1);
                assert_eq!(s.get(Table::Kyt, b"a").unwrap().unwrap().as_slice(), b"1");
                s.apply(vec![Op::Delete(Table::Kyt, b"a".to_vec())]).unwrap();
                s.sync().await.unwrap();
            }
            let s = open(&files, 2).unwrap();
            assert_eq!(s.seq(), 2, "{backend:?}");
            assert!(s.get(Table::Kyt, b"a").unwrap().is_none());
            let sessions = s.scan(Table::Sessions).unwrap();
            assert_eq!(sessions.len(), 1, "{backend:?}");
            assert_eq!(
                (sessions[0].0.as_slice(), sessions[0].1.as_slice()),
                (&b"a"[..], &b"2"[..])
            );
            assert!(s.scan(Table::Kyt).unwrap().is_empty());
            // Sealed at rest: no value in clear in the file.
            let at_rest = std::fs::read(files.path(NAME)).unwrap();
            assert!(!at_rest.windows(6).any(|w| w == b"secret"), "{backend:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_last_batch_is_cleared_and_the_sequence_goes_on() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let (bytes, frames) = three(&files).await;
            let (_, end) = frames[2];
            // A crash while writing a fourth batch: part of its frame reached the file.
            for torn_len in [2, 4, 40, (end - frames[1].1) / 2] {
                let mut torn = bytes[..end].to_vec();
                torn.extend_from_slice(&bytes[frames[1].1..frames[1].1 + torn_len]);
                torn.extend_from_slice(&[0u8; 512]);
                std::fs::write(files.path(NAME), &torn).unwrap();
                let s = open(&files, 3).unwrap();
                assert_eq!(s.seq(), 3, "{backend:?}: torn {torn_len}");
                let cleared = std::fs::read(files.path(NAME)).unwrap();
                assert!(cleared[end..].iter().all(|b| *b == 0), "{backend:?}: cleared");
            }
            let s = open(&files, 3).unwrap();
            s.apply(vec![put(Table::Admins, "k", "admin")]).unwrap();
            s.sync().await.unwrap();
            drop(s);
            let s = open(&files, 4).unwrap();
            assert_eq!(s.seq(), 4, "{backend:?}");
            assert_eq!(s.get(Table::Sessions, b"s1").unwrap().unwrap().as_slice(), b"revoked");
        }
    }

    /// The host drops the last batch (the revocation): with the commit head's count the store
    /// refuses to open, and the file is left as found.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_that_lost_its_last_batch_is_refused() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let (bytes, frames) = three(&files).await;
            let cut = bytes[..frames[1].1].to_vec();
            std::fs::write(files.path(NAME), &cut).unwrap();
            let e = open(&files, 3).unwrap_err().to_string();
            assert!(e.contains("state store is behind the commit head"), "{backend:?}: {e}");
            assert_eq!(std::fs::read(files.path(NAME)).unwrap(), cut);
            // Without the head it would have opened, the session live again: the head is what
            // catches it.
            let s = open(&files, 0).unwrap();
            assert_eq!(s.get(Table::Sessions, b"s1").unwrap().unwrap().as_slice(), b"active");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_or_reordered_batches_before_the_tail_are_refused() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let (bytes, frames) = three(&files).await;
            let refused = |b: &[u8]| {
                std::fs::write(files.path(NAME), b).unwrap();
                open(&files, 0).unwrap_err().to_string()
            };
            // A byte of the second batch changed.
            let mut edited = bytes.clone();
            edited[frames[1].0 + 20] ^= 1;
            let e = refused(&edited);
            assert!(e.contains("batch 2") && e.contains("tampered"), "{backend:?}: {e}");
            // The first two batches swapped.
            let mut swapped = bytes[frames[1].0..frames[1].1].to_vec();
            swapped.extend_from_slice(&bytes[..frames[0].1]);
            swapped.extend_from_slice(&bytes[frames[2].0..]);
            assert!(refused(&swapped).contains("batch 1"), "{backend:?}");
            // The second batch deleted from the middle.
            let mut deleted = bytes[..frames[0].1].to_vec();
            deleted.extend_from_slice(&bytes[frames[2].0..]);
            assert!(refused(&deleted).contains("batch 2"), "{backend:?}");
            // The last batch corrupted although a round had made it durable: only the head
            // knows (no later batch vouches for it).
            let mut last = bytes.clone();
            last[frames[2].0 + 30] ^= 1;
            std::fs::write(files.path(NAME), &last).unwrap();
            let e = open(&files, 3).unwrap_err().to_string();
            assert!(e.contains("behind the commit head"), "{backend:?}: {e}");
            // A batch from another log (another key) at the end: not authentic, never written
            // by this enclave, cleared as a torn tail — and still refused when the head counts it.
            let other = Files::new(Backend::Local);
            let (foreign, _) = {
                let s = LogStore::open(
                    other.file(NAME),
                    Sealer::new(&Zeroizing::new([6u8; 32]), crate::platform::nsm::test_entropy()),
                    0,
                )
                .unwrap();
                s.apply(vec![put(Table::Admins, "evil", "admin")]).unwrap();
                (std::fs::read(other.path(NAME)).unwrap(), ())
            };
            let mut spliced = bytes[..frames[2].1].to_vec();
            spliced.extend_from_slice(&foreign);
            std::fs::write(files.path(NAME), &spliced).unwrap();
            let s = open(&files, 3).unwrap();
            assert!(s.get(Table::Admins, b"evil").unwrap().is_none(), "{backend:?}");
        }
    }

    /// The host fails a write: the batch is never confirmed durable, nothing is written after
    /// it, and the store reopens on what the host kept (at least what was durable).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_fails_closed() {
        let files = Files::new(Backend::Host);
        let s = open(&files, 0).unwrap();
        s.apply(vec![put(Table::Kyt, "a", "1")]).unwrap();
        s.sync().await.unwrap();
        files.host().unwrap().set(Mode::Close);
        // The write is queued (write-behind) or fails at once; either way the sync fails.
        let applied = s.apply(vec![put(Table::Sessions, "s", "revoked")]);
        assert!(applied.is_err() || s.sync().await.is_err(), "never confirmed durable");
        files.host().unwrap().set(Mode::Honest);
        let e = s.apply(vec![put(Table::Kyt, "b", "")]).unwrap_err().to_string();
        assert!(e.contains("restart the enclave"), "{e}");
        assert!(s.sync().await.is_err(), "a failed round is final");
        drop(s);
        // A restarted enclave (a new connection; here, the host's file read directly).
        let local = crate::hostfile::LocalFile::open(&files.path(NAME)).unwrap();
        let s = LogStore::open(local, sealer(), 1).unwrap();
        assert!(s.seq() >= 1);
        assert_eq!(s.get(Table::Kyt, b"a").unwrap().unwrap().as_slice(), b"1");
    }

    #[test]
    fn batches_decode_only_as_written() {
        let changes: Vec<Change> =
            vec![(b"kyt/a".to_vec(), Some(Zeroizing::new(vec![1, 2]))), (b"kyt/b".to_vec(), None)];
        let mut buf = Vec::new();
        encode(&changes, &mut buf).unwrap();
        let back = decode(&buf).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].1.as_deref().map(Vec::as_slice), Some(&[1u8, 2][..]));
        assert!(decode(&buf[..buf.len() - 1]).is_err());
        let mut extra = buf.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut huge_count = buf.clone();
        huge_count[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&huge_count).is_err(), "a count larger than the bytes is no allocation");
    }

    #[tokio::test]
    async fn the_chain_binds_each_batch_and_is_rebuilt_on_replay() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let put = |v: &str| vec![put(Table::Kyt, "k", v)];
            let (at1, at2) = {
                let s = open(&files, 0).unwrap();
                s.apply(put("1")).unwrap();
                s.apply(put("2")).unwrap();
                s.sync().await.unwrap();
                assert_eq!(s.durable_tip().get().0, 2, "{backend:?}");
                (s.chain_at(1).unwrap(), s.chain_at(2).unwrap())
            };
            assert_ne!(at1, at2);
            let s = open(&files, 0).unwrap();
            assert_eq!((s.chain_at(1), s.chain_at(2), s.chain_at(3)), (Some(at1), Some(at2), None));
            assert_eq!(s.durable_tip().get(), (2, at2), "{backend:?}");
        }
    }
}
