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
//! from another journal without failing authentication. Inside the seal, each record starts with
//! a *watermark*: how many records were known durable when it was appended.
//!
//! Recovery: records are read in order until the first frame that is missing, cut off or fails
//! authentication. If that frame's index is below the highest watermark seen, it had been
//! acknowledged durable: that is tampering or corruption, and the enclave refuses to start rather
//! than forget spends. Otherwise it is a *torn tail* left by a crash — never acknowledged, so no
//! signature was released for it or anything after it — and it is cleared (and synced) before new
//! records are written. The file is preallocated with zeros; a zero length header ends the data.
//!
//! The file is a [`StorageFile`]: a local file in the data directory, or the host's
//! `spends.journal` on host storage (Nitro mode), with the same writes, syncs and recovery. The
//! state store on host storage (`crate::logstore`) uses the same framing and recovery.

use std::{path::Path, sync::Arc, sync::Mutex};

use zeroize::Zeroizing;

use crate::{
    commit::GroupCommit,
    hostfile::{LocalFile, StorageFile},
    seal::Sealer,
};

/// One record as read back on open.
pub type Record = Zeroizing<Vec<u8>>;

/// Largest sealed record, written or read. A spend record echoes at most a 64 KiB header's JSON
/// (about 48 KiB), which JSON escaping can at most double; this leaves a wide margin.
pub const MAX_RECORD: usize = 1 << 20;

/// Journal failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// File system error.
    #[error("spend journal {0}")]
    Io(String),
    /// Fewer records than the commit head says were durable: the journal was cut or rolled back.
    #[error("spend journal holds {found} records but the commit head says {durable} were durable: records acknowledged as durable are missing (cut, rolled back or corrupted); refusing to start")]
    BehindHead {
        /// Records found.
        found: u64,
        /// Records the head says were durable.
        durable: u64,
    },
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
fn preallocate(file: &dyn StorageFile, allocated: u64, needed: u64) -> std::io::Result<u64> {
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

/// A file synced (`fdatasync`) on a thread of its own, in parallel with the caller's own sync:
/// [`Self::start`], then the caller's sync, then [`Self::finish`] waits for this one. The thread
/// ends when this is dropped.
struct ParallelSync {
    go: std::sync::mpsc::SyncSender<()>,
    done: std::sync::mpsc::Receiver<std::io::Result<()>>,
}

impl ParallelSync {
    fn spawn(file: Arc<dyn StorageFile>) -> std::io::Result<Self> {
        let (go, go_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name("audit-sync".into()).spawn(move || {
            while go_rx.recv().is_ok() {
                if done_tx.send(file.sync_data()).is_err() {
                    return;
                }
            }
        })?;
        Ok(Self { go, done })
    }

    /// Starts a sync of the file.
    fn start(&self) -> std::io::Result<()> {
        self.go.send(()).map_err(|_| std::io::Error::other("audit sync thread stopped"))
    }

    /// Waits for the sync [`Self::start`] started; its result.
    fn finish(&self) -> std::io::Result<()> {
        self.done.recv().map_err(|_| std::io::Error::other("audit sync thread stopped"))?
    }
}

/// How a log of sealed frames is laid out: the associated data of frame `n`, and the largest
/// frame. The spend journal's ([`JOURNAL_FRAMING`]) and the host state log's
/// (`crate::logstore`) share the format and [`recover_frames`].
#[derive(Clone, Copy)]
pub(crate) struct Framing {
    /// Associated data of frame `n` (from 0).
    pub aad: fn(u64) -> Vec<u8>,
    /// Largest sealed frame, written or read.
    pub max_record: usize,
}

/// The spend journal's framing.
pub(crate) const JOURNAL_FRAMING: Framing = Framing { aad, max_record: MAX_RECORD };

/// Where a record lies in the spend journal: its number (from 0) and its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// Record number, from 0 (its seal's associated data).
    pub index: u64,
    /// Byte offset of its frame (the length header).
    pub offset: u64,
    /// Length of the sealed blob after the 4-byte header, bytes.
    pub len: u32,
}

/// Where the journal continues: the next record's number, its frame's byte offset, and the
/// chain's hash after the records before it ([`crate::chain`]). All zeros: the journal's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalStart {
    /// Number of the next record (the records before it are covered by a ledger snapshot).
    pub index: u64,
    /// Byte offset of its frame.
    pub offset: u64,
    /// The chain's hash after record `index - 1` (zeros for 0).
    pub chain: [u8; 32],
}

/// Bytes read at an offset: a whole log in memory, or a [`StorageFile`].
pub(crate) trait ReadAt {
    /// Reads up to `buf.len()` bytes at `at`; fewer only at the end of the data.
    fn read_up_to(&self, buf: &mut [u8], at: u64) -> std::io::Result<usize>;
}

impl ReadAt for &[u8] {
    fn read_up_to(&self, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
        let start = usize::try_from(at).unwrap_or(usize::MAX).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for &dyn StorageFile {
    fn read_up_to(&self, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
        crate::hostfile::read_up_to(*self, buf, at)
    }
}

/// How much a recovery reads at a time: start-up holds this much of the log, not all of it.
const READ_WINDOW: usize = 4 << 20;

/// A window onto a log read front to back: at most [`READ_WINDOW`] (or one frame) in memory.
struct Window<'a> {
    src: &'a dyn ReadAt,
    /// Offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
    /// Whether `buf` reaches the end of the data.
    at_end: bool,
}

impl<'a> Window<'a> {
    fn new(src: &'a dyn ReadAt) -> Self {
        Self { src, start: 0, buf: Vec::new(), at_end: false }
    }

    /// The bytes at `at..at + n`, fewer where the data ends.
    fn get(&mut self, at: u64, n: usize) -> std::io::Result<&[u8]> {
        let have_end = self.start + self.buf.len() as u64;
        if at < self.start || (at + n as u64 > have_end && !self.at_end) {
            let want = n.max(READ_WINDOW);
            self.buf.resize(want, 0);
            let got = self.src.read_up_to(&mut self.buf, at)?;
            self.buf.truncate(got);
            self.start = at;
            self.at_end = got < want;
        }
        let lo = usize::try_from(at - self.start).unwrap_or(usize::MAX).min(self.buf.len());
        let hi = lo.saturating_add(n).min(self.buf.len());
        Ok(&self.buf[lo..hi])
    }

    /// Everything from `at` to the end of the data (read only where recovery fails or ends).
    fn rest(&mut self, at: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut pos = at;
        loop {
            let chunk = self.get(pos, READ_WINDOW)?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(chunk);
            pos += chunk.len() as u64;
        }
    }

    /// Whether the data from `at` on is all zeros (preallocated space), read a window at a time.
    fn zeros_from(&mut self, at: u64) -> std::io::Result<bool> {
        Ok(self.data_end_if_not_zeros(at)?.is_none())
    }

    /// Where the data ends (as read, not as claimed), when any byte from `at` on is not zero.
    fn data_end_if_not_zeros(&mut self, at: u64) -> std::io::Result<Option<u64>> {
        let mut pos = at;
        let mut nonzero = false;
        loop {
            let chunk = self.get(pos, READ_WINDOW)?;
            if chunk.is_empty() {
                return Ok(nonzero.then_some(pos));
            }
            nonzero = nonzero || chunk.iter().any(|b| *b != 0);
            pos += chunk.len() as u64;
        }
    }
}

/// What a visitor of recovered records is given: where the record lies, and its plaintext
/// (without the watermark). An error refuses the log as corrupt at that record.
pub type Visit<'v> = dyn FnMut(RecordRef, &[u8]) -> Result<(), String> + 'v;

/// Reads frames laid out by `framing` from `src` until the end of the data, front to back a
/// window at a time, with the journal's recovery rules (see the module docs): a bad frame below
/// the highest watermark, or vouched for by a later frame, is corruption; otherwise it is a torn
/// tail. Each opened record goes to `visit` in order. Returns the number of records and where
/// the valid data ends.
pub(crate) fn scan_frames(
    src: &dyn ReadAt,
    sealer: &Sealer,
    framing: Framing,
    visit: &mut Visit<'_>,
) -> Result<(u64, u64), JournalError> {
    scan_frames_from(src, sealer, framing, (0, 0), u64::MAX, visit)
}

/// [`scan_frames`] from record number `from.0` at byte `from.1` (a ledger snapshot's position),
/// stopping before record `until`.
pub(crate) fn scan_frames_from(
    src: &dyn ReadAt,
    sealer: &Sealer,
    framing: Framing,
    from: (u64, u64),
    until: u64,
    visit: &mut Visit<'_>,
) -> Result<(u64, u64), JournalError> {
    let Framing { aad, max_record } = framing;
    let io = |e: std::io::Error| JournalError::Io(e.to_string());
    let mut window = Window::new(src);
    let (mut index, mut offset) = from;
    let mut watermark = 0u64;
    loop {
        if index >= until {
            return Ok((index, offset));
        }
        let header = window.get(offset, 4).map_err(io)?;
        let failure = if header.len() < 4 {
            None
        } else {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len == 0 && window.zeros_from(offset).map_err(io)? {
                None
            } else if len == 0 || len > max_record {
                Some(format!("impossible record length {len}"))
            } else {
                let frame = window.get(offset, 4 + len).map_err(io)?;
                if frame.len() < 4 + len {
                    Some("record cut off by the end of the file".to_owned())
                } else {
                    match sealer.open(&aad(index), &frame[4..]) {
                        Ok(plain) if plain.len() >= 8 => {
                            let mark =
                                u64::from_be_bytes(plain[..8].try_into().unwrap_or_default());
                            watermark = watermark.max(mark);
                            #[allow(clippy::cast_possible_truncation)] // len <= max_record
                            let at = RecordRef { index, offset, len: len as u32 };
                            visit(at, &plain[8..]).map_err(|reason| JournalError::Corrupt {
                                index,
                                offset,
                                reason,
                            })?;
                            offset += 4 + len as u64;
                            index += 1;
                            continue;
                        }
                        Ok(_) => Some("record too short".to_owned()),
                        Err(e) => Some(e.to_string()),
                    }
                }
            }
        };
        match failure {
            Some(reason) => {
                let rest = window.rest(offset).map_err(io)?;
                if index < watermark || acknowledged_later(&rest, index, sealer, framing) {
                    return Err(JournalError::Corrupt { index, offset, reason });
                }
                if until == u64::MAX {
                    tracing::warn!(index, offset, %reason, "clearing a torn journal tail (never acknowledged as durable)");
                }
                return Ok((index, offset));
            }
            // A zero length header (preallocated space) or the end of the file: no more records.
            None => return Ok((index, offset)),
        }
    }
}

/// Reads frames laid out by `framing` from a whole log in memory ([`scan_frames`]). Returns the
/// opened records (without their watermarks) and where the valid data ends.
pub(crate) fn recover_frames(
    bytes: &[u8],
    sealer: &Sealer,
    framing: Framing,
) -> Result<(Vec<Record>, usize), JournalError> {
    let mut records = Vec::new();
    let (_, end) = scan_frames(&bytes, sealer, framing, &mut |_, plain| {
        records.push(Zeroizing::new(plain.to_vec()));
        Ok(())
    })?;
    Ok((records, usize::try_from(end).unwrap_or(usize::MAX)))
}

/// How far ahead [`acknowledged_later`] looks for the true index of a displaced record.
const LOOKAHEAD: u64 = 64;

/// Whether any complete frame at or after a failed record `index` shows that `index` had been
/// acknowledged durable: a frame that authenticates (at any index up to [`LOOKAHEAD`] past it,
/// to see through deletions and swaps) and carries a watermark above `index`. A crash leaves no
/// such frame: everything after an unacknowledged record was appended before it became durable.
fn acknowledged_later(mut rest: &[u8], index: u64, sealer: &Sealer, framing: Framing) -> bool {
    let Framing { aad, max_record } = framing;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 || len > max_record || rest.len() < 4 + len {
            return false;
        }
        let frame = &rest[4..4 + len];
        for k in index..index.saturating_add(LOOKAHEAD) {
            if let Ok(plain) = sealer.open(&aad(k), frame) {
                if plain.len() >= 8
                    && u64::from_be_bytes(plain[..8].try_into().unwrap_or_default()) > index
                {
                    return true;
                }
            }
        }
        rest = &rest[4 + len..];
    }
    false
}

fn aad(index: u64) -> Vec<u8> {
    format!("spend-journal/v1/{index}").into_bytes()
}

/// Clears what follows the valid data (`bytes[end..]`, a torn tail) by writing zeros over it, and
/// syncs, before anything new is written: a second crash then cannot leave a new frame on top
/// of old bytes. Nothing is written when it is all zeros already.
///
/// # Errors
/// The I/O error.
pub(crate) fn clear_tail(file: &dyn StorageFile, bytes: &[u8], end: usize) -> std::io::Result<()> {
    if bytes[end..].iter().any(|b| *b != 0) {
        file.write_all_at(&vec![0u8; bytes.len() - end], end as u64)?;
        file.sync_all()?;
    }
    Ok(())
}

/// [`clear_tail`] for a file read a window at a time: zeros over what follows `end` (up to
/// where the data read ends) unless they are zeros already, then a sync.
fn clear_tail_from(file: &dyn StorageFile, end: u64) -> std::io::Result<()> {
    if let Some(size) = Window::new(&file).data_end_if_not_zeros(end)? {
        let zeros = vec![0u8; 1 << 20];
        let mut at = end;
        while at < size {
            let n = usize::try_from(size - at).unwrap_or(usize::MAX).min(zeros.len());
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()?;
    }
    Ok(())
}

struct Writer {
    file: Arc<dyn StorageFile>,
    next: u64,
    /// End of the last record.
    pos: u64,
    /// Bytes of the file already written (records, then zeros).
    allocated: u64,
    /// Set when a write failed: a partial frame may be on disk, so nothing may follow it.
    poisoned: bool,
}

/// Faults a test can inject into the journal's durability rounds (feature `fault-injection`;
/// never in a default build).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default)]
pub struct Faults {
    /// Milliseconds each round waits before its `fdatasync`.
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// Make the next round's `fdatasync` fail.
    pub fail: std::sync::atomic::AtomicBool,
}

/// What the journal's durability rounds record in the commit head (see [`crate::head`]) and,
/// once attached, anchor ([`crate::anchor`]).
#[derive(Debug)]
pub struct HeadHook {
    /// The head file.
    pub head: crate::head::CommitHead,
    /// The audit log's record count and chain hash (synced in the same round).
    pub audit_tip: crate::audit::Tip,
    /// The state store's last durable batch and its chain hash ([`crate::chain`]).
    pub store_tip: crate::chain::Tip,
}

/// The spend journal's chain tag ([`crate::chain`]).
const CHAIN_TAG: &[u8] = b"x402-wallet/spend-journal-chain/v1\0";

/// The append-only spend journal.
pub struct Journal {
    /// Records known durable (recovered, then advanced by each round): each record's watermark.
    durable_records: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether rounds write the commit head yet (see [`Self::arm_head`]).
    head_armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The anchor rounds end with (see [`Self::attach_anchor`]).
    anchor: crate::anchor::AnchorCell,
    /// What the last round that wrote the commit head recorded.
    last_round: std::sync::Arc<Mutex<Option<crate::anchor::Local>>>,
    /// What the last round that completed recorded (durable, in the commit head), and whether
    /// it was anchored. A ledger snapshot covers at most this.
    confirmed: std::sync::Arc<Mutex<Option<(crate::anchor::Local, bool)>>>,
    /// The chain's hash after every record ([`crate::chain`]), and the count and hash a round
    /// records (set with each append, under the writer's lock).
    history: crate::chain::History,
    tip: crate::chain::Tip,
    writer: Mutex<Writer>,
    /// The same file, for reading records back ([`Self::read`]) without the writer's lock.
    reader: Arc<dyn StorageFile>,
    sealer: Sealer,
    commit: GroupCommit,
    #[cfg(feature = "fault-injection")]
    faults: std::sync::Arc<Faults>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Before the group commit's last round (a field, dropped after this): that round must
        // not wait for etcd while the runtime stops.
        if let Some(anchor) = self.anchor.get() {
            anchor.close();
        }
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens the journal at `path` (a local file, created 0600), returning it and every record
    /// in order (opened). For tools and tests: the enclave visits records as they are read
    /// ([`Self::open_with`]) rather than holding them all.
    ///
    /// # Errors
    /// [`JournalError`] on I/O failure or a corrupt record.
    pub fn open(path: &Path, sealer: Sealer) -> Result<(Self, Vec<Record>), JournalError> {
        let file = LocalFile::open(path).map_err(|e| JournalError::Io(e.to_string()))?;
        let mut records = Vec::new();
        let start = JournalStart::default();
        let journal = Self::open_with(file, sealer, None, None, 0, start, &mut |_, plain| {
            records.push(Zeroizing::new(plain.to_vec()));
            Ok(())
        })?;
        Ok((journal, records))
    }

    /// Opens the journal in `file` (local, or stored by the host), also syncing `also` (the
    /// audit log) in every durability round, in parallel with the journal, then writing the
    /// commit head (`head`) once both are durable. `min_records` is what the commit head says
    /// was durable: fewer records is an error (checked before a torn tail is cleared, so the
    /// evidence stays). Reading starts at `start` (a ledger snapshot's position: the records
    /// before it are not read; the journal's start without one). Each record is handed to
    /// `visit` as it is read (where it lies, and its plaintext), so start-up holds a window of
    /// the file rather than all of it; an error from `visit` refuses the journal as corrupt at
    /// that record.
    ///
    /// # Errors
    /// As [`Self::open`]; [`JournalError::BehindHead`].
    pub fn open_with(
        file: Arc<dyn StorageFile>,
        sealer: Sealer,
        also: Option<Arc<dyn StorageFile>>,
        mut head: Option<HeadHook>,
        min_records: u64,
        start: JournalStart,
        visit: &mut Visit<'_>,
    ) -> Result<Self, JournalError> {
        let label = file.label().to_owned();
        let io = |e: std::io::Error| JournalError::Io(format!("{label}: {e}"));
        let history = crate::chain::History::starting_at(CHAIN_TAG, start.index, start.chain);
        let (count, end) = scan_frames_from(
            &file.as_ref(),
            &sealer,
            JOURNAL_FRAMING,
            (start.index, start.offset),
            u64::MAX,
            &mut |at, plain| {
                history.push(at.index + 1, plain);
                visit(at, plain)
            },
        )?;
        if count < min_records {
            return Err(JournalError::BehindHead { found: count, durable: min_records });
        }
        let size = file.size().map_err(io)?;
        clear_tail_from(file.as_ref(), end).map_err(io)?;
        let allocated = preallocate(file.as_ref(), size, end).map_err(io)?;
        let sync_file = Arc::clone(&file);
        #[cfg(feature = "fault-injection")]
        let faults = std::sync::Arc::new(Faults::default());
        #[cfg(feature = "fault-injection")]
        let round_faults = std::sync::Arc::clone(&faults);
        let (n, h) = history.tip();
        let tip = crate::chain::Tip::new(n, h);
        let round_tip = tip.clone();
        // Records known durable, counted from the start of the file: what each new record's
        // watermark says (never a count of rounds or of this run's writes).
        let durable = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(count));
        let round_durable = std::sync::Arc::clone(&durable);
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let round_armed = std::sync::Arc::clone(&armed);
        let anchor = crate::anchor::AnchorCell::default();
        let round_anchor = anchor.clone();
        let last_round = std::sync::Arc::new(Mutex::new(None));
        let round_last = std::sync::Arc::clone(&last_round);
        let confirmed = std::sync::Arc::new(Mutex::new(None));
        let round_confirmed = std::sync::Arc::clone(&confirmed);
        // The audit log's syncs run on a thread of their own, started once: spawning one per
        // round (as before) cost a clone, a stack mapping and a join on every payment's path.
        let also = match also {
            Some(f) => Some(ParallelSync::spawn(f).map_err(io)?),
            None => None,
        };
        let commit = GroupCommit::spawn("journal-sync", move || {
            use std::sync::atomic::Ordering as O;
            // What this round covers, read before its syncs: every record and audit line counted
            // here is already written, so the syncs below make it durable.
            let (covered, journal_chain) = round_tip.get();
            let local = head.as_ref().map(|h| {
                let (audit_records, chain) = h.audit_tip.get();
                let (store_seq, state_chain) = h.store_tip.get();
                crate::anchor::Local {
                    facts: crate::head::Facts {
                        journal_records: covered,
                        audit_records,
                        store_seq,
                    },
                    chain,
                    journal_chain,
                    state_chain,
                }
            });
            #[cfg(feature = "fault-injection")]
            {
                use std::sync::atomic::Ordering;
                let delay = round_faults.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(delay));
                }
                if round_faults.fail.swap(false, Ordering::SeqCst) {
                    return Err(std::io::Error::other("injected fdatasync failure").into());
                }
            }
            match &also {
                // Both files' flushes in parallel: the round costs the slower one, not the sum.
                Some(other) => {
                    other.start()?;
                    let mine = sync_file.sync_data();
                    other.finish()?;
                    mine?;
                }
                None => sync_file.sync_data()?,
            }
            // Then, and only then, the head: nothing of this round is released before it. Only
            // once armed: until the enclave has verified the stores (audit MACs, ledger), a round
            // — such as the last one when a refused start drops the journal — must not record
            // what they hold.
            let mut anchored = None;
            if let (Some(h), Some(local)) = (head.as_mut(), local) {
                if round_armed.load(O::SeqCst) {
                    h.head.write(local.facts)?;
                    if let Ok(mut last) = round_last.lock() {
                        *last = Some(local);
                    }
                    anchored = Some(local);
                }
            }
            round_durable.fetch_max(covered, O::SeqCst);
            // Locally durable; with an anchor, confirmed only once etcd has the head (its
            // failure fails this round's writers, not the journal).
            let mut sent_to_anchor = false;
            if let Some(anchor) = round_anchor.get() {
                let Some(local) = anchored else {
                    return Err(crate::commit::RoundError::Transient(
                        "ANCHOR_UNAVAILABLE: the round was not recorded in the commit head".into(),
                    ));
                };
                anchor.round(local).map_err(crate::commit::RoundError::Transient)?;
                sent_to_anchor = true;
            }
            if let (Some(local), Ok(mut c)) = (anchored, round_confirmed.lock()) {
                *c = Some((local, sent_to_anchor));
            }
            Ok(())
        })
        .map_err(io)?;
        let reader = Arc::clone(&file);
        let writer = Mutex::new(Writer { file, next: count, pos: end, allocated, poisoned: false });
        Ok(Self {
            durable_records: durable,
            head_armed: armed,
            anchor,
            last_round,
            confirmed,
            history,
            tip,
            writer,
            reader,
            sealer,
            commit,
            #[cfg(feature = "fault-injection")]
            faults,
        })
    }

    /// Appends one record (not yet durable: await [`Self::durable`]); returns where it lies.
    ///
    /// # Errors
    /// [`JournalError::Io`]; the journal is then unusable until restart (fail closed).
    pub fn append(&self, plaintext: &[u8]) -> Result<RecordRef, JournalError> {
        let mut w = self.writer.lock().map_err(|_| JournalError::Io("writer poisoned".into()))?;
        if w.poisoned {
            return Err(JournalError::Io(
                "an earlier write failed; restart the enclave to recover the journal".into(),
            ));
        }
        let mut body = Zeroizing::new(Vec::with_capacity(8 + plaintext.len()));
        body.extend_from_slice(
            &self.durable_records.load(std::sync::atomic::Ordering::SeqCst).to_be_bytes(),
        );
        body.extend_from_slice(plaintext);
        let sealed = self.sealer.seal(&aad(w.next), &body);
        if sealed.len() > MAX_RECORD {
            return Err(JournalError::Io(format!(
                "record of {} bytes exceeds the {MAX_RECORD}-byte limit",
                sealed.len()
            )));
        }
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
            match preallocate(w.file.as_ref(), w.allocated, end) {
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
        #[allow(clippy::cast_possible_truncation)] // sealed.len() <= MAX_RECORD
        let at = RecordRef { index: w.next, offset: w.pos, len: sealed.len() as u32 };
        w.pos = end;
        w.next += 1;
        let hash = self.history.push(w.next, plaintext);
        self.tip.set(w.next, hash);
        self.commit.wrote();
        drop(w);
        Ok(at)
    }

    /// What the last completed round recorded (durable, in the commit head), and whether it was
    /// anchored; `None` before the first.
    #[must_use]
    pub fn confirmed(&self) -> Option<(crate::anchor::Local, bool)> {
        self.confirmed.lock().ok().and_then(|c| *c)
    }

    /// Reads the records from `from` up to record `until` (exclusive; durable ones: see
    /// [`Self::confirmed`]) a window at a time, handing each to `visit`, and returns where the
    /// journal continues after them, its chain hash computed from `from`'s.
    ///
    /// # Errors
    /// [`JournalError::Corrupt`] when a record is missing or does not open at its number, or
    /// `visit` refuses one; [`JournalError::Io`].
    pub fn scan(
        &self,
        from: JournalStart,
        until: u64,
        visit: &mut Visit<'_>,
    ) -> Result<JournalStart, JournalError> {
        let mut chain = from.chain;
        let (index, offset) = scan_frames_from(
            &self.reader.as_ref(),
            &self.sealer,
            JOURNAL_FRAMING,
            (from.index, from.offset),
            until,
            &mut |at, plain| {
                chain = crate::chain::next(CHAIN_TAG, &chain, at.index + 1, plain);
                visit(at, plain)
            },
        )?;
        if index != until {
            return Err(JournalError::Corrupt {
                index,
                offset,
                reason: format!("record {index} of {until} durable ones is missing"),
            });
        }
        Ok(JournalStart { index, offset, chain })
    }

    /// Reads record `at` back (its plaintext, without the watermark): the frame must have the
    /// length `at` says and open under record number `at.index`, so the host can only answer
    /// with the genuine record or be caught.
    ///
    /// # Errors
    /// [`JournalError::Io`] when it cannot be read; [`JournalError::Corrupt`] when what was
    /// read is not that record.
    pub fn read(&self, at: RecordRef) -> Result<Record, JournalError> {
        let corrupt =
            |reason: String| JournalError::Corrupt { index: at.index, offset: at.offset, reason };
        let mut frame = vec![0u8; 4 + at.len as usize];
        let got = crate::hostfile::read_up_to(self.reader.as_ref(), &mut frame, at.offset)
            .map_err(|e| JournalError::Io(format!("{}: {e}", self.reader.label())))?;
        if got < frame.len() || frame[..4] != at.len.to_be_bytes() {
            return Err(corrupt("the record read back is cut off or of another length".into()));
        }
        let plain =
            self.sealer.open(&aad(at.index), &frame[4..]).map_err(|e| corrupt(e.to_string()))?;
        if plain.len() < 8 {
            return Err(corrupt("record too short".into()));
        }
        Ok(Zeroizing::new(plain[8..].to_vec()))
    }

    /// Fault injection for tests (delays and failures of the durability rounds).
    #[cfg(feature = "fault-injection")]
    #[must_use]
    pub fn faults(&self) -> std::sync::Arc<Faults> {
        std::sync::Arc::clone(&self.faults)
    }

    /// From now on, every durability round writes the commit head. Call once the stores were
    /// verified (until then a round records nothing, so a refused start cannot move the head).
    pub fn arm_head(&self) {
        self.head_armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Where the anchor every round ends with is kept (empty: rounds are not anchored).
    #[must_use]
    pub fn anchor_cell(&self) -> crate::anchor::AnchorCell {
        self.anchor.clone()
    }

    /// The chain's hash after `n` records (`None` beyond the end).
    #[must_use]
    pub fn chain_at(&self, n: u64) -> Option<[u8; 32]> {
        self.history.at(n)
    }

    /// What the last round that wrote the commit head recorded (`None` before the first).
    #[must_use]
    pub fn last_round(&self) -> Option<crate::anchor::Local> {
        self.last_round.lock().ok().and_then(|l| *l)
    }

    /// Runs a durability round now, whether or not anything was appended: the audit log is
    /// synced and the commit head records the stores' current durable state (used after state
    /// changes and audit records that must be covered by the head before they are answered).
    ///
    /// # Errors
    /// [`JournalError::Io`] when the round failed.
    pub async fn checkpoint(&self) -> Result<(), JournalError> {
        self.commit.wrote();
        self.durable().await
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
    //! Every case runs on both backends: local files, and the same files stored by a host.
    use super::*;
    use crate::hoststorage::fake_host::{Files, BACKENDS};

    fn sealer() -> Sealer {
        Sealer::new(&Zeroizing::new([9u8; 32]), crate::platform::nsm::test_entropy())
    }

    const NAME: &str = "spends.journal";

    fn open(files: &Files) -> Result<(Journal, Vec<Record>), JournalError> {
        open_at(files, 0)
    }

    /// Opens with the commit head saying `min_records` were durable; the records visited.
    fn open_at(files: &Files, min_records: u64) -> Result<(Journal, Vec<Record>), JournalError> {
        let mut records = Vec::new();
        let journal = Journal::open_with(
            files.file(NAME),
            sealer(),
            None,
            None,
            min_records,
            JournalStart::default(),
            &mut |_, r| {
                records.push(Zeroizing::new(r.to_vec()));
                Ok(())
            },
        )?;
        Ok((journal, records))
    }

    /// Start-up reads the journal a window at a time: records that straddle windows come back
    /// whole and in order, each where `append` said it lies, and `read` gives each back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_across_read_windows_come_back_where_they_lie() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let bodies: Vec<Vec<u8>> = (0..12u8)
                .map(|i| vec![i; if i % 3 == 0 { 950_000 } else { 90_000 + usize::from(i) }])
                .collect();
            let mut refs = Vec::new();
            {
                let (j, _) = open(&files).unwrap();
                for b in &bodies {
                    refs.push(j.append(b).unwrap());
                }
                j.durable().await.unwrap();
            }
            assert!(
                refs.last().unwrap().offset > READ_WINDOW as u64,
                "the records span more than one window"
            );
            let mut seen = Vec::new();
            let j = Journal::open_with(
                files.file(NAME),
                sealer(),
                None,
                None,
                12,
                JournalStart::default(),
                &mut |at, r| {
                    seen.push((at, r.to_vec()));
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(seen.len(), bodies.len(), "{backend:?}");
            for ((at, body), (r, b)) in seen.iter().zip(refs.iter().zip(&bodies)) {
                assert_eq!((at, body), (r, b), "{backend:?}");
                assert_eq!(j.read(*r).unwrap().as_slice(), b.as_slice());
            }
            // A reference to another record's place, or a wrong length, is not read as it.
            let wrong_index = RecordRef { index: refs[1].index + 1, ..refs[1] };
            assert!(matches!(j.read(wrong_index), Err(JournalError::Corrupt { .. })));
            let wrong_len = RecordRef { len: refs[1].len - 1, ..refs[1] };
            assert!(matches!(j.read(wrong_len), Err(JournalError::Corrupt { .. })));
            // A host that changes a record's bytes after it was written is caught on read (here
            // by the head's count: these records were all appended before their one round).
            drop(j);
            let mut bytes = std::fs::read(files.path(NAME)).unwrap();
            #[allow(clippy::cast_possible_truncation)]
            let inside = refs[2].offset as usize + 100;
            bytes[inside] ^= 1;
            std::fs::write(files.path(NAME), &bytes).unwrap();
            let reopened = open_at(&files, 12);
            assert!(
                matches!(reopened, Err(JournalError::BehindHead { found: 2, durable: 12 })),
                "{backend:?}: {reopened:?}"
            );
        }
    }

    /// A visitor's refusal (a record that does not parse) refuses the journal at that record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_the_visitor_refuses_refuses_the_journal() {
        let files = Files::new(BACKENDS[0]);
        {
            let (j, _) = open(&files).unwrap();
            j.append(b"fine").unwrap();
            j.append(b"not a spend").unwrap();
            j.durable().await.unwrap();
        }
        let r = Journal::open_with(
            files.file(NAME),
            sealer(),
            None,
            None,
            0,
            JournalStart::default(),
            &mut |_, r| {
                if r == b"fine" {
                    Ok(())
                } else {
                    Err("does not parse".into())
                }
            },
        );
        assert!(
            matches!(&r, Err(JournalError::Corrupt { index: 1, reason, .. }) if reason == "does not parse"),
            "{r:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_come_back_in_order_after_reopen() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            {
                let (j, recs) = open(&files).unwrap();
                assert!(recs.is_empty());
                for i in 0..10u8 {
                    j.append(&[i; 100]).unwrap();
                }
                j.durable().await.unwrap();
            }
            let (j, recs) = open(&files).unwrap();
            assert_eq!(recs.len(), 10, "{backend:?}");
            assert!(recs
                .iter()
                .enumerate()
                .all(|(i, r)| r.as_slice() == [u8::try_from(i).unwrap(); 100]));
            j.append(b"eleventh").unwrap();
            j.durable().await.unwrap();
            drop(j);
            assert_eq!(open(&files).unwrap().1.len(), 11, "{backend:?}");
        }
        // The local path of old still opens the same file.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(NAME);
        Journal::open(&p, sealer()).unwrap().0.append(b"x").unwrap();
        assert_eq!(Journal::open(&p, sealer()).unwrap().1.len(), 1);
    }

    /// Five records, each made durable before the next, as under real load.
    async fn five(files: &Files) -> Vec<u8> {
        let (j, _) = open(files).unwrap();
        for i in 0..5u8 {
            j.append(&[i + 1; 50]).unwrap();
            j.durable().await.unwrap();
        }
        drop(j);
        let full = std::fs::read(files.path(NAME)).unwrap();
        let frame = 4 + u32::from_be_bytes(full[..4].try_into().unwrap()) as usize;
        assert!(full[5 * frame..].iter().all(|b| *b == 0), "preallocated with zeros");
        full[..5 * frame].to_vec()
    }

    fn reopen(files: &Files, bytes: &[u8]) -> Result<usize, JournalError> {
        let mut b = bytes.to_vec();
        b.extend_from_slice(&[0u8; 4096]);
        std::fs::write(files.path(NAME), &b).unwrap();
        open(files).map(|(_, r)| r.len())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn torn_tails_are_cleared_whatever_their_shape() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let full = five(&files).await;
            let frame = full.len() / 5;
            // A crash while writing record 5: its first half, its last few bytes missing, or
            // only a length header.
            for torn_len in [frame / 2, frame - 3, 4, 2] {
                let mut torn = full.clone();
                torn.extend_from_slice(&full[..torn_len]);
                assert_eq!(reopen(&files, &torn).unwrap(), 5, "{backend:?}: torn {torn_len}");
                let cleared = std::fs::read(files.path(NAME)).unwrap();
                assert!(cleared[full.len()..].iter().all(|b| *b == 0), "{backend:?}: cleared");
            }
            // The last acknowledged record's successor lost a middle page while a later,
            // unacknowledged one reached the disk.
            let mut two = full.clone();
            let mut broken = full[..frame].to_vec();
            broken[frame / 2] ^= 0xff;
            two.extend_from_slice(&broken);
            two.extend_from_slice(&full[frame..2 * frame]);
            assert_eq!(reopen(&files, &two).unwrap(), 5, "{backend:?}");
            // After clearing, appends continue the sequence.
            {
                let (j, recs) = open(&files).unwrap();
                assert_eq!(recs.len(), 5);
                j.append(b"after the crash").unwrap();
                j.durable().await.unwrap();
            }
            let recs = open(&files).unwrap().1;
            assert_eq!(recs.len(), 6, "{backend:?}");
            assert_eq!(recs[5].as_slice(), b"after the crash");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tampering_with_acknowledged_records_refuses_to_start() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let full = five(&files).await;
            let frame = full.len() / 5;
            let corrupt_at = |r: Result<usize, JournalError>| match r {
                Err(JournalError::Corrupt { index, .. }) => index,
                other => panic!("{backend:?}: expected Corrupt, got {other:?}"),
            };
            let mut edited = full.clone();
            edited[frame + 10] ^= 1;
            assert_eq!(corrupt_at(reopen(&files, &edited)), 1, "an edited byte");
            let mut deleted = full[..frame].to_vec();
            deleted.extend_from_slice(&full[2 * frame..]);
            assert_eq!(corrupt_at(reopen(&files, &deleted)), 1, "a deleted record");
            let mut swapped = full[frame..2 * frame].to_vec();
            swapped.extend_from_slice(&full[..frame]);
            swapped.extend_from_slice(&full[2 * frame..]);
            assert_eq!(corrupt_at(reopen(&files, &swapped)), 0, "two records swapped");
            let mut edited_last_but_one = full.clone();
            edited_last_but_one[3 * frame + 20] ^= 1;
            assert_eq!(corrupt_at(reopen(&files, &edited_last_but_one)), 3);
        }
    }

    /// Fewer records than the commit head says were durable is refused before anything is
    /// cleared (the evidence stays).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_behind_the_head_is_refused_and_left_as_found() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let full = five(&files).await;
            let frame = full.len() / 5;
            let mut torn = full[..4 * frame].to_vec();
            torn.extend_from_slice(&full[4 * frame..4 * frame + frame / 2]);
            torn.extend_from_slice(&[0u8; 4096]);
            std::fs::write(files.path(NAME), &torn).unwrap();
            let r = open_at(&files, 5);
            assert!(
                matches!(r, Err(JournalError::BehindHead { found: 4, durable: 5 })),
                "{backend:?}: {r:?}"
            );
            assert_eq!(std::fs::read(files.path(NAME)).unwrap(), torn, "{backend:?}: untouched");
        }
    }

    /// Rounds that wrote no record (checkpoints) must not raise watermarks: a record torn by a
    /// crash after them is still a torn tail, cleared, not "tampering" that bricks the enclave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rounds_without_records_do_not_make_a_torn_tail_look_acknowledged() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            {
                let (j, _) = open(&files).unwrap();
                for _ in 0..10 {
                    j.checkpoint().await.unwrap();
                }
                j.append(&[1; 50]).unwrap();
                j.durable().await.unwrap();
            }
            let full = std::fs::read(files.path(NAME)).unwrap();
            let frame = 4 + u32::from_be_bytes(full[..4].try_into().unwrap()) as usize;
            let mut torn = full[..frame].to_vec();
            torn.extend_from_slice(&full[..frame / 2]);
            assert_eq!(
                reopen(&files, &torn).unwrap(),
                1,
                "{backend:?}: the torn record is cleared"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_records_are_refused_before_writing() {
        for backend in BACKENDS {
            let files = Files::new(backend);
            let (j, _) = open(&files).unwrap();
            assert!(j.append(&vec![7u8; MAX_RECORD]).is_err(), "{backend:?}");
            j.append(b"still fine").unwrap();
            j.durable().await.unwrap();
        }
    }

    /// A host that confirms writes and syncs it never did: the records are gone at the next
    /// open, and the commit head's count (here `min_records`) refuses the journal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_that_drops_writes_is_caught_by_the_head_count() {
        let files = Files::new(crate::hoststorage::fake_host::Backend::Host);
        let host = files.host().unwrap();
        {
            let (j, _) = open(&files).unwrap();
            host.set(crate::hoststorage::fake_host::Mode::DropWrites);
            for i in 0..3u8 {
                j.append(&[i; 40]).unwrap();
                j.durable().await.unwrap();
            }
            host.set(crate::hoststorage::fake_host::Mode::Honest);
        }
        let r = open_at(&files, 3);
        assert!(matches!(r, Err(JournalError::BehindHead { found: 0, durable: 3 })), "{r:?}");
    }
}
