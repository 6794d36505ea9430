//! The tamper-evident audit log: one hash-chained JSON line per decision (payment, denial,
//! withheld signature, admin change), in `DATA_DIR/audit.log` (or the host's `audit.log` on host
//! storage: a [`StorageFile`] either way). Format and chain:
//! [`wallet_policy::audit`]. The enclave signs the head with its audit key on request.
//!
//! The log is for verification outside the enclave, so it is not sealed; it holds no secret
//! (no signature, no key). On open the chain is verified: a torn last line (a crash mid-write)
//! is cut off; any other break stops the enclave, naming the record. While running, a read
//! checks what it returns against what the enclave wrote: the enclave keeps, every
//! [`MARK_EVERY`] records, the record's byte offset and the chain's hash before it (40 bytes per
//! 1,024 records), and a read re-reads and re-verifies only the stretch between the checkpoints
//! around the page it returns (at most about 1,024 records more than the page), ending at a hash
//! the enclave holds. So editing or truncating the records a read covers is reported by that
//! read, in time independent of the log's length; a change elsewhere is reported by the read that
//! covers it (`walletctl audit verify` reads every page) and at the next start-up.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use wallet_policy::audit::{clip, verify_chain_from, ChainError, Record};
use zeroize::Zeroizing;

use crate::hostfile::{LocalFile, StorageFile};

/// Largest page of records returned by one read, in bytes (well under a 1 MiB frame).
const MAX_PAGE_BYTES: usize = 512 * 1024;
/// Records between two read checkpoints (see the module docs).
pub const MARK_EVERY: u64 = 1024;
/// Most records one read verifies beyond its checkpoints: a page is at most [`MAX_PAGE_BYTES`]
/// anyway, and records are at least tens of bytes.
const MAX_PAGE_RECORDS: u64 = 16 * 1024;

/// A read checkpoint: where record `i × MARK_EVERY` starts, and the chain's hash before it.
#[derive(Debug, Clone, Copy)]
struct Mark {
    offset: u64,
    prev: [u8; 32],
}

fn mac(key: &[u8; 32], hash_hex: &str) -> String {
    let mut m =
        <Hmac<Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key length. qed");
    m.update(b"x402-wallet/audit-mac/v1\0");
    m.update(hash_hex.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// Audit log failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// File system error.
    #[error("audit log {0}")]
    Io(String),
    /// The chain on disk is broken.
    #[error("audit log {path}: {source}")]
    Broken {
        /// The file.
        path: String,
        /// The first bad record.
        source: ChainError,
    },
    /// The file holds fewer records than the enclave wrote.
    #[error(
        "audit log {path} was truncated: it holds {on_disk} records, the enclave wrote {written}"
    )]
    Truncated {
        /// The file.
        path: String,
        /// Records on disk.
        on_disk: u64,
        /// Records written.
        written: u64,
    },
}

/// Where the audit log's verification starts, from a ledger snapshot (`crate::snapshot`):
/// record `count` (a multiple of [`MARK_EVERY`]) at byte `offset`, the chain's hash before it,
/// and every read checkpoint up to it (`(byte offset, hash before)` of records `0`,
/// `MARK_EVERY`, …, `count`). Start-up verifies the records from there on only; reads of
/// earlier records check them against these checkpoints, as any read does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Start {
    /// First record verified at open.
    pub count: u64,
    /// Its byte offset.
    pub offset: u64,
    /// The chain's hash before it.
    pub prev: [u8; 32],
    /// The checkpoints up to and including `count`'s.
    pub marks: Vec<(u64, [u8; 32])>,
}

struct Writer {
    /// First record and its byte offset verified at open (0 and 0 without a snapshot).
    first: (u64, u64),
    file: Arc<dyn StorageFile>,
    count: u64,
    last: [u8; 32],
    /// Length of the file up to the last complete record.
    len: u64,
    /// Set when a write failed and could not be undone: nothing more is appended.
    poisoned: bool,
    /// MAC key (derived from the sealed audit key); set by [`AuditLog::attach_key`].
    key: Option<Zeroizing<[u8; 32]>>,
    /// Checkpoint `i` is at record `i × MARK_EVERY` (one per started stretch).
    marks: Vec<Mark>,
}

/// The count and hash of the last record written, read together (for the commit head and the
/// anchor).
#[derive(Debug, Clone, Default)]
pub struct Tip(Arc<Mutex<(u64, [u8; 32])>>);

impl Tip {
    /// Count and hash of the last record (hash all zeros when empty).
    #[must_use]
    pub fn get(&self) -> (u64, [u8; 32]) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn set(&self, count: u64, last: [u8; 32]) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (count, last);
    }
}

/// The audit log.
pub struct AuditLog {
    writer: Mutex<Writer>,
    /// The file, for reads (which do not take the writer's lock).
    file: Arc<dyn StorageFile>,
    /// What to call the file in errors (its path, or its name on the host).
    path: String,
    /// Count and hash together, for the commit head and the anchor.
    tip: Tip,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates, 0600) the log at `path` and verifies its chain.
    ///
    /// # Errors
    /// [`AuditError`] when it cannot be read or its chain is broken.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_file(LocalFile::open(path).map_err(|e| AuditError::Io(e.to_string()))?)
    }

    /// Opens the log in `file` (local, or stored by the host) and verifies its chain.
    ///
    /// # Errors
    /// [`AuditError`] when it cannot be read or its chain is broken.
    pub fn open_file(file: Arc<dyn StorageFile>) -> Result<Self, AuditError> {
        Self::open_file_from(file, None)
    }

    /// Opens the log in `file`, verifying its chain from `start` on (a ledger snapshot's
    /// position; from the first record without one): the records before it are not read.
    ///
    /// # Errors
    /// [`AuditError`] when it cannot be read, its chain is broken, or it is shorter than
    /// `start` says.
    pub fn open_file_from(
        file: Arc<dyn StorageFile>,
        start: Option<Start>,
    ) -> Result<Self, AuditError> {
        let path = file.label().to_owned();
        let io = |e: std::io::Error| AuditError::Io(format!("{path}: {e}"));
        let (first, base, prev, mut marks) = match start {
            None => (0, 0, [0; 32], Vec::new()),
            Some(s) => {
                let fits = s.count.is_multiple_of(MARK_EVERY)
                    && s.marks.len() as u64 == s.count / MARK_EVERY + 1
                    && s.marks.last() == Some(&(s.offset, s.prev));
                if !fits {
                    return Err(AuditError::Io(format!(
                        "{path}: the snapshot's audit position does not fit its checkpoints"
                    )));
                }
                let mut marks: Vec<Mark> = s
                    .marks
                    .iter()
                    .map(|(offset, prev)| Mark { offset: *offset, prev: *prev })
                    .collect();
                marks.pop();
                (s.count, s.offset, s.prev, marks)
            }
        };
        if file.size().map_err(io)? < base {
            return Err(AuditError::Truncated { path, on_disk: 0, written: first });
        }
        // Read as the bytes arrive (not sized by the host's claim), 4 MiB at a time.
        let mut text = Vec::new();
        loop {
            let at = text.len();
            text.resize(at + (4 << 20), 0);
            let got = crate::hostfile::read_up_to(file.as_ref(), &mut text[at..], base + at as u64)
                .map_err(io)?;
            text.truncate(at + got);
            if got < 4 << 20 {
                break;
            }
        }
        let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            tracing::warn!(
                dropped = text.len() - complete,
                "cutting a torn last audit line (a crash mid-write)"
            );
            file.set_len(base + complete as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let body = String::from_utf8_lossy(&text[..complete]).into_owned();
        drop(text);
        // Lines end at '\n' only (as reads split them): a '\r' the host added is an edit.
        let (count, last) = verify_chain_from(body.split_terminator('\n'), first, prev)
            .map_err(|source| AuditError::Broken { path: path.clone(), source })?;
        marks.extend(marks_of(&body, &path, (first, base), prev)?);
        let writer = Writer {
            first: (first, base),
            file: Arc::clone(&file),
            count,
            last,
            len: base + complete as u64,
            poisoned: false,
            key: None,
            marks,
        };
        Ok(Self {
            writer: Mutex::new(writer),
            file,
            path,
            tip: Tip(Arc::new(Mutex::new((count, last)))),
        })
    }

    /// Sets the MAC key and checks every record's MAC: a log rewritten at rest, even with
    /// correctly recomputed hashes, is refused.
    ///
    /// # Errors
    /// [`AuditError::Broken`] naming the first record whose MAC fails.
    pub fn attach_key(&self, key: Zeroizing<[u8; 32]>) -> Result<(), AuditError> {
        let mut w = self.writer.lock().map_err(|_| AuditError::Io("writer poisoned".into()))?;
        let (first, base) = w.first;
        let mut bytes = vec![0u8; usize::try_from(w.len - base).unwrap_or(0)];
        let got = crate::hostfile::read_up_to(self.file.as_ref(), &mut bytes, base)
            .map_err(|e| AuditError::Io(format!("{}: {e}", self.path)))?;
        bytes.truncate(got);
        let text = String::from_utf8(bytes)
            .map_err(|e| AuditError::Io(format!("{}: not UTF-8: {e}", self.path)))?;
        check_macs_from(&key, text.split_terminator('\n'), first, &self.path)?;
        w.key = Some(key);
        Ok(())
    }

    /// Where a snapshot whose records up to `durable` are durable may start the log's
    /// verification: the last checkpoint at or before `durable` (`None` before the first).
    #[must_use]
    pub fn start_at(&self, durable: u64) -> Option<Start> {
        let w = self.writer.lock().ok()?;
        let k = usize::try_from(durable / MARK_EVERY).ok()?.min(w.marks.len().checked_sub(1)?);
        let m = w.marks[k];
        Some(Start {
            count: k as u64 * MARK_EVERY,
            offset: m.offset,
            prev: m.prev,
            marks: w.marks[..=k].iter().map(|m| (m.offset, m.prev)).collect(),
        })
    }

    /// Appends a record (its `seq`, `prev` and `hash` are filled in). Made durable with the next
    /// spend-journal round, or by [`Self::sync`].
    ///
    /// # Errors
    /// [`AuditError::Io`].
    pub fn append(&self, mut r: Record) -> Result<(), AuditError> {
        let mut w = self.writer.lock().map_err(|_| AuditError::Io("writer poisoned".into()))?;
        if w.poisoned {
            return Err(AuditError::Io("an earlier write failed; restart the enclave".into()));
        }
        let key = w.key.clone().ok_or_else(|| AuditError::Io("audit key not attached".into()))?;
        r.seq = w.count;
        r.prev = hex::encode(w.last);
        r.detail = clip(&r.detail);
        r.reason = clip(&r.reason);
        let h = r.compute_hash();
        r.hash = hex::encode(h);
        r.mac = mac(&key, &r.hash);
        let mut line = serde_json::to_string(&r).map_err(|e| AuditError::Io(e.to_string()))?;
        line.push('\n');
        let mark =
            w.count.is_multiple_of(MARK_EVERY).then_some(Mark { offset: w.len, prev: w.last });
        // At the end of the last complete record, as the enclave knows it (not wherever the
        // file ends now: a line is never chained after bytes this enclave did not write).
        if let Err(e) = w.file.write_all_at(line.as_bytes(), w.len) {
            // Undo a partial line, so the chain on disk stays whole; if even that fails, stop.
            let len = w.len;
            if w.file.set_len(len).is_err() {
                w.poisoned = true;
            }
            return Err(AuditError::Io(e.to_string()));
        }
        if let Some(m) = mark {
            w.marks.push(m);
        }
        w.count += 1;
        w.last = h;
        w.len += line.len() as u64;
        self.tip.set(w.count, w.last);
        Ok(())
    }

    /// A handle on the count and hash of the last record, for the commit head and the anchor.
    #[must_use]
    pub fn tip_handle(&self) -> Tip {
        self.tip.clone()
    }

    /// The chain's hash after `n` records, read back from the stored log (all zeros for 0;
    /// `None` when it holds fewer records or cannot be read).
    #[must_use]
    pub fn hash_at(&self, n: u64) -> Option<[u8; 32]> {
        if n == 0 {
            return Some([0; 32]);
        }
        // At a checkpoint the enclave holds the hash: no read (the stretch before a snapshot's
        // checkpoint may be archived).
        if n.is_multiple_of(MARK_EVERY) {
            let w = self.writer.lock().ok()?;
            if n < w.count {
                return w.marks.get(usize::try_from(n / MARK_EVERY).ok()?).map(|m| m.prev);
            }
        }
        let (lines, _) = self.read(n - 1, 1).ok()?;
        let record: Record = serde_json::from_str(lines.first()?).ok()?;
        let mut h = [0u8; 32];
        hex::decode_to_slice(&record.hash, &mut h).ok()?;
        Some(h)
    }

    /// Count and hash of the last record.
    #[must_use]
    pub fn head(&self) -> (u64, [u8; 32]) {
        self.writer.lock().map_or((0, [0; 32]), |w| (w.count, w.last))
    }

    /// The file, whose `sync_data` makes appended records durable (the journal's rounds sync
    /// it).
    #[must_use]
    pub fn sync_handle(&self) -> Arc<dyn StorageFile> {
        Arc::clone(&self.file)
    }

    /// `fdatasync` now.
    ///
    /// # Errors
    /// [`AuditError::Io`].
    pub fn sync(&self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(|e| AuditError::Io(e.to_string()))
    }

    /// The whole file as text.
    fn read_text(&self) -> Result<String, AuditError> {
        let bytes = self.file.read_all().map_err(|e| AuditError::Io(e.to_string()))?;
        String::from_utf8(bytes)
            .map_err(|e| AuditError::Io(format!("{}: not UTF-8: {e}", self.path)))
    }

    /// Reads records `from..from + limit` from the file, checks them (and the records around
    /// them up to the nearest checkpoints) against what this enclave wrote, and returns them
    /// (at most [`MAX_PAGE_BYTES`]; at least one when any is asked for) and the number written.
    ///
    /// # Errors
    /// [`AuditError`] when the stretch read was edited or cut.
    pub fn read(&self, from: u64, limit: u64) -> Result<(Vec<String>, u64), AuditError> {
        let (written, first, start, end, end_hash, key) = {
            let w = self.writer.lock().map_err(|_| AuditError::Io("writer poisoned".into()))?;
            if from >= w.count || limit == 0 {
                return Ok((Vec::new(), w.count));
            }
            let mark = |i: u64| w.marks.get(usize::try_from(i).unwrap_or(usize::MAX)).copied();
            let internal = || AuditError::Io("audit checkpoints missing".into());
            let at = mark(from / MARK_EVERY).ok_or_else(internal)?;
            let want = from.saturating_add(limit.min(MAX_PAGE_RECORDS)).min(w.count);
            let check = want.div_ceil(MARK_EVERY).saturating_mul(MARK_EVERY).min(w.count);
            let (end, end_hash) = if check == w.count {
                (w.len, w.last)
            } else {
                let m = mark(check / MARK_EVERY).ok_or_else(internal)?;
                (m.offset, m.prev)
            };
            (w.count, from - from % MARK_EVERY, at, (check, end), end_hash, w.key.clone())
        };
        let (check, end_offset) = end;
        let path = self.path.clone();
        let mut bytes = vec![0u8; usize::try_from(end_offset - start.offset).unwrap_or(0)];
        let mut got = 0;
        while got < bytes.len() {
            let n = self
                .file
                .read_at(&mut bytes[got..], start.offset + got as u64)
                .map_err(|e| AuditError::Io(format!("{path}: {e}")))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got < bytes.len() {
            // Cut short: count what the file holds now for the message (the rare path).
            let on_disk = self
                .read_text()
                .map(|t| t.lines().count() as u64)
                .unwrap_or(0)
                .min(written.saturating_sub(1));
            return Err(AuditError::Truncated { path, on_disk, written });
        }
        // Exactly the bytes the enclave wrote, if nothing was changed: the lines' content is
        // checked below (a change of length shows as a record out of place).
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.strip_suffix('\n').unwrap_or(&text).split('\n').collect();
        let broken = |seq: u64, why: &str| AuditError::Broken {
            path: path.clone(),
            source: ChainError::Broken { seq, why: why.to_owned() },
        };
        let (next, hash) = verify_chain_from(lines.iter().copied(), first, start.prev)
            .map_err(|source| AuditError::Broken { path: path.clone(), source })?;
        if next != check {
            return Err(broken(next.min(check), "records added or removed"));
        }
        if hash != end_hash {
            return Err(broken(check - 1, "not the record this enclave wrote"));
        }
        if let Some(key) = &key {
            check_macs_from(key, lines.iter().copied(), first, &self.path)?;
        }
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        let take = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut size = 0;
        for l in lines.iter().skip(skip).take(take) {
            size += l.len();
            if size > MAX_PAGE_BYTES && !out.is_empty() {
                break;
            }
            out.push((*l).to_owned());
        }
        Ok((out, written))
    }
}

/// The read checkpoints of a verified log's text (see [`Mark`]).
/// The checkpoints of `body`, whose first line is record `first.0` at byte `first.1`, the
/// chain's hash before it being `prev`.
fn marks_of(
    body: &str,
    path: &str,
    first: (u64, u64),
    prev: [u8; 32],
) -> Result<Vec<Mark>, AuditError> {
    let mut marks = Vec::new();
    let (first, mut offset) = first;
    let first_prev = prev;
    for (i, line) in (first..).zip(body.split_inclusive('\n')) {
        if i.is_multiple_of(MARK_EVERY) {
            let prev = if i == first {
                first_prev
            } else {
                // Checked by the chain's verification: the hash of the record before.
                let r: Record =
                    serde_json::from_str(line.trim_end()).map_err(|e| AuditError::Broken {
                        path: path.to_owned(),
                        source: ChainError::Malformed { seq: i, why: e.to_string() },
                    })?;
                let mut h = [0u8; 32];
                hex::decode_to_slice(&r.prev, &mut h)
                    .map_err(|e| AuditError::Io(format!("{path}: record {i}: {e}")))?;
                h
            };
            marks.push(Mark { offset, prev });
        }
        offset += line.len() as u64;
    }
    Ok(marks)
}

fn check_macs_from<'a>(
    key: &[u8; 32],
    lines: impl Iterator<Item = &'a str>,
    first: u64,
    path: &str,
) -> Result<(), AuditError> {
    for (i, line) in (first..).zip(lines) {
        let r: Record = serde_json::from_str(line).map_err(|e| AuditError::Broken {
            path: path.to_owned(),
            source: ChainError::Malformed { seq: i, why: e.to_string() },
        })?;
        if r.mac != mac(key, &r.hash) {
            return Err(AuditError::Broken {
                path: path.to_owned(),
                source: ChainError::Broken {
                    seq: i,
                    why: "MAC does not match: not written by this enclave".into(),
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hoststorage::fake_host::{Files, BACKENDS};

    fn rec(kind: &str) -> Record {
        Record { kind: kind.into(), detail: "x".into(), ..Default::default() }
    }

    #[test]
    fn chain_survives_reopen_torn_lines_are_cut_and_edits_refuse_to_open() {
        for backend in BACKENDS {
            chain_survives_reopen_torn_lines_are_cut_and_edits_refuse_to_open_on(&Files::new(
                backend,
            ));
        }
        // The local path of old opens the same format.
        let dir = tempfile::tempdir().unwrap();
        let a = AuditLog::open(&dir.path().join("audit.log")).unwrap();
        a.attach_key(Zeroizing::new([3u8; 32])).unwrap();
        a.append(rec("admin")).unwrap();
        drop(a);
        assert_eq!(AuditLog::open(&dir.path().join("audit.log")).unwrap().head().0, 1);
    }

    /// Appends `n` payment records.
    fn append_payments(a: &AuditLog, n: u64) {
        for i in 0..n {
            a.append(Record {
                kind: "payment".into(),
                detail: format!("r{i}"),
                ..Default::default()
            })
            .unwrap();
        }
    }

    /// A file that counts the bytes read from it.
    #[derive(Debug)]
    struct Counting(Arc<LocalFile>, std::sync::atomic::AtomicU64);

    impl StorageFile for Counting {
        fn label(&self) -> &str {
            self.0.label()
        }
        fn size(&self) -> std::io::Result<u64> {
            self.0.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            let n = self.0.read_at(buf, offset)?;
            self.1.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
            Ok(n)
        }
        fn read_all(&self) -> std::io::Result<Vec<u8>> {
            let v = self.0.read_all()?;
            self.1.fetch_add(v.len() as u64, std::sync::atomic::Ordering::SeqCst);
            Ok(v)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.0.write_all_at(buf, offset)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.0.sync_data()
        }
        fn sync_all(&self) -> std::io::Result<()> {
            self.0.sync_all()
        }
    }

    /// Opened from a snapshot's start, the log is read and verified from that checkpoint on
    /// only: the records before it may be archived (zeroed), the hash at the checkpoint comes
    /// from the enclave's own checkpoints, later records are checked as usual, and a start that
    /// does not fit its checkpoints, or a file shorter than it, is refused.
    #[test]
    fn a_log_opened_at_a_snapshots_checkpoint_reads_only_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let key = Zeroizing::new([3u8; 32]);
        let n = 2 * MARK_EVERY + 5;
        let a = AuditLog::open(&p).unwrap();
        a.attach_key(key.clone()).unwrap();
        append_payments(&a, n);
        let start = a.start_at(2 * MARK_EVERY + 3).unwrap();
        assert_eq!((start.count, start.marks.len()), (2 * MARK_EVERY, 3));
        assert_eq!(a.start_at(MARK_EVERY - 1).unwrap().count, 0);
        let at_mark = a.hash_at(2 * MARK_EVERY).unwrap();
        drop(a);
        // The records before the checkpoint archived.
        let mut bytes = std::fs::read(&p).unwrap();
        let cut = usize::try_from(start.offset).unwrap();
        bytes[..cut].fill(0);
        std::fs::write(&p, &bytes).unwrap();
        assert!(AuditLog::open(&p).is_err(), "without the start, the archived stretch is broken");
        let file = Arc::new(Counting(LocalFile::open(&p).unwrap(), Default::default()));
        let a = AuditLog::open_file_from(
            Arc::clone(&file) as Arc<dyn StorageFile>,
            Some(start.clone()),
        )
        .unwrap();
        a.attach_key(key.clone()).unwrap();
        let read = file.1.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            read,
            2 * (bytes.len() - cut) as u64,
            "open and the MAC check read the tail only"
        );
        assert_eq!(a.head().0, n);
        assert_eq!(a.hash_at(2 * MARK_EVERY), Some(at_mark), "from the checkpoint, no read");
        assert_eq!(a.read(2 * MARK_EVERY, 3).unwrap().0.len(), 3);
        assert!(a.read(0, 3).is_err(), "the archived stretch is reported, not answered");
        a.append(rec("admin")).unwrap();
        assert_eq!(a.read(n, 1).unwrap().0.len(), 1);
        drop(a);
        // A start that does not fit its checkpoints, or lies past the file's end.
        let mut wrong = start.clone();
        wrong.count += 1;
        assert!(AuditLog::open_file_from(LocalFile::open(&p).unwrap(), Some(wrong)).is_err());
        let mut past = start;
        past.offset = std::fs::metadata(&p).unwrap().len() + 10;
        if let Some(last) = past.marks.last_mut() {
            last.0 = past.offset;
        }
        assert!(matches!(
            AuditLog::open_file_from(LocalFile::open(&p).unwrap(), Some(past)),
            Err(AuditError::Truncated { .. })
        ));
    }

    /// Reads check the stretch between the checkpoints around the page, whatever the log's
    /// length, and catch an edit or a cut there; the rest of the file is not read.
    #[test]
    fn reads_verify_only_around_the_page_and_catch_what_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let n = 5 * MARK_EVERY + 17;
        let file = Arc::new(Counting(LocalFile::open(&p).unwrap(), Default::default()));
        let a = AuditLog::open_file(Arc::clone(&file) as Arc<dyn StorageFile>).unwrap();
        a.attach_key(Zeroizing::new([3u8; 32])).unwrap();
        append_payments(&a, n);
        let size = std::fs::metadata(&p).unwrap().len();
        let read = |from: u64, limit: u64| {
            let before = file.1.load(std::sync::atomic::Ordering::SeqCst);
            let page = a.read(from, limit);
            (page, file.1.load(std::sync::atomic::Ordering::SeqCst) - before)
        };
        // Every page, anywhere, is what was written; each read costs one stretch or two.
        for from in [0, 1, MARK_EVERY - 1, MARK_EVERY, 3 * MARK_EVERY + 5, n - 3] {
            let (page, bytes) = read(from, 10);
            let (lines, total) = page.unwrap();
            assert_eq!(total, n);
            let want = (n - from).min(10);
            assert_eq!(lines.len() as u64, want, "from {from}");
            for (i, l) in lines.iter().enumerate() {
                let r: Record = serde_json::from_str(l).unwrap();
                assert_eq!(r.seq, from + i as u64);
            }
            assert!(bytes < size / 2, "from {from}: read {bytes} of {size} bytes");
        }
        assert_eq!(a.hash_at(n).unwrap(), a.head().1);
        assert_eq!(a.read(n, 10).unwrap(), (Vec::new(), n));
        // An edit in the fourth stretch: pages there fail, pages elsewhere do not.
        let text = std::fs::read_to_string(&p).unwrap();
        let victim = 3 * MARK_EVERY + 100;
        let edited = text.replacen(&format!("\"r{victim}\""), &format!("\"R{victim}\""), 1);
        assert_ne!(edited, text);
        std::fs::write(&p, &edited).unwrap();
        assert!(matches!(
            read(victim - 50, 10).0,
            Err(AuditError::Broken { source: ChainError::Broken { seq, .. }, .. }) if seq == victim
        ));
        assert!(read(0, 10).0.is_ok());
        assert!(read(5 * MARK_EVERY, 10).0.is_ok());
        // Put back: the page reads again.
        std::fs::write(&p, &text).unwrap();
        assert!(read(victim, 1).0.is_ok());
        // Cut in the middle: a page beyond the cut says truncated.
        let keep: String = text.split_inclusive('\n').take(2 * MARK_EVERY as usize).collect();
        std::fs::write(&p, &keep).unwrap();
        assert!(matches!(
            read(4 * MARK_EVERY, 10).0,
            Err(AuditError::Truncated { on_disk, written, .. }) if on_disk == 2 * MARK_EVERY && written == n
        ));
        std::fs::write(&p, &text).unwrap();
        drop(a);
        // Reopened: the checkpoints are rebuilt from the file.
        let a = AuditLog::open(&p).unwrap();
        a.attach_key(Zeroizing::new([3u8; 32])).unwrap();
        let (lines, _) = a.read(4 * MARK_EVERY + 1, 3).unwrap();
        let r: Record = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(r.seq, 4 * MARK_EVERY + 1);
        a.append(rec("admin")).unwrap();
        assert_eq!(a.read(n, 5).unwrap().0.len(), 1);
    }

    /// A MAC changed in place is caught by the read that covers it; a log of an exact multiple of
    /// the checkpoint stretch reads to its end; CRLF line ends are an edit.
    #[test]
    fn reads_check_macs_and_boundaries_and_open_refuses_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let a = AuditLog::open(&p).unwrap();
        a.attach_key(Zeroizing::new([3u8; 32])).unwrap();
        for _ in 0..2 * MARK_EVERY {
            a.append(rec("payment")).unwrap();
        }
        let (lines, total) = a.read(2 * MARK_EVERY - 2, 10).unwrap();
        assert_eq!((lines.len(), total), (2, 2 * MARK_EVERY));
        assert_eq!(a.read(MARK_EVERY, 1).unwrap().0.len(), 1);
        let text = std::fs::read_to_string(&p).unwrap();
        let victim = MARK_EVERY + 3;
        let line = text.lines().nth(usize::try_from(victim).unwrap()).unwrap();
        let r: Record = serde_json::from_str(line).unwrap();
        let flipped = if r.mac.starts_with('0') { "1" } else { "0" };
        let forged = line.replacen(&r.mac, &format!("{flipped}{}", &r.mac[1..]), 1);
        std::fs::write(&p, text.replacen(line, &forged, 1)).unwrap();
        assert!(matches!(
            a.read(victim, 1),
            Err(AuditError::Broken { source: ChainError::Broken { seq, .. }, .. }) if seq == victim
        ));
        assert!(a.read(0, 5).is_ok());
        std::fs::write(&p, &text).unwrap();
        drop(a);
        std::fs::write(&p, text.replace('\n', "\r\n")).unwrap();
        assert!(matches!(AuditLog::open(&p), Err(AuditError::Broken { .. })));
    }

    fn chain_survives_reopen_torn_lines_are_cut_and_edits_refuse_to_open_on(files: &Files) {
        let p = files.path("audit.log");
        let open = || AuditLog::open_file(files.file("audit.log"));
        {
            let a = open().unwrap();
            a.attach_key(Zeroizing::new([3u8; 32])).unwrap();
            for k in ["payment", "deny", "admin"] {
                a.append(rec(k)).unwrap();
            }
            assert_eq!(a.read(0, 10).unwrap().1, 3);
        }
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{\"seq\":3,\"kind\":\"pay"); // torn
        std::fs::write(&p, &text).unwrap();
        let a = open().unwrap();
        a.attach_key(Zeroizing::new([3u8; 32])).unwrap();
        assert_eq!(a.head().0, 3);
        a.append(rec("payment")).unwrap();
        // Edited while running: reads report it.
        let good = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, good.replacen("\"deny\"", "\"admin\"", 1)).unwrap();
        assert!(matches!(a.read(0, 10), Err(AuditError::Broken { .. })));
        // Truncated while running: reads report it.
        let first_two: String = good.lines().take(2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&p, &first_two).unwrap();
        assert!(matches!(a.read(0, 10), Err(AuditError::Truncated { on_disk: 2, written: 4, .. })));
        drop(a);
        // Edited at rest: the enclave will not start on it.
        std::fs::write(&p, good.replacen("\"deny\"", "\"admin\"", 1)).unwrap();
        assert!(matches!(open(), Err(AuditError::Broken { .. })));
        // Rewritten at rest with correctly recomputed hashes: the chain verifies, the MACs do not.
        let mut prev = [0u8; 32];
        let forged: String = (0..2)
            .map(|seq| {
                let mut r = Record {
                    seq,
                    kind: "admin".into(),
                    detail: "forged".into(),
                    prev: hex::encode(prev),
                    ..Default::default()
                };
                prev = r.compute_hash();
                r.hash = hex::encode(prev);
                format!("{}\n", serde_json::to_string(&r).unwrap())
            })
            .collect();
        std::fs::write(&p, &forged).unwrap();
        let reopened = open().expect("a self-consistent chain parses");
        assert!(matches!(
            reopened.attach_key(Zeroizing::new([3u8; 32])),
            Err(AuditError::Broken { .. })
        ));
    }
}
