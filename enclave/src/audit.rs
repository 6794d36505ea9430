//! The tamper-evident audit log: one hash-chained JSON line per decision (payment, denial,
//! withheld signature, admin change), in `DATA_DIR/audit.log` (or the host's `audit.log` on host
//! storage: a [`StorageFile`] either way). Format and chain:
//! [`wallet_policy::audit`]. The enclave signs the head with its audit key on request.
//!
//! The log is for verification outside the enclave, so it is not sealed; it holds no secret
//! (no signature, no key). On open the chain is verified: a torn last line (a crash mid-write)
//! is cut off; any other break stops the enclave, naming the record. While running, every read
//! re-reads the file and checks it against the head in memory, so editing or truncating the file
//! under a running enclave is reported too.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use wallet_policy::audit::{clip, verify_chain, ChainError, Record};
use zeroize::Zeroizing;

use crate::hostfile::{LocalFile, StorageFile};

/// Largest page of records returned by one read, in bytes (well under a 1 MiB frame).
const MAX_PAGE_BYTES: usize = 512 * 1024;

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

struct Writer {
    file: Arc<dyn StorageFile>,
    count: u64,
    last: [u8; 32],
    /// Length of the file up to the last complete record.
    len: u64,
    /// Set when a write failed and could not be undone: nothing more is appended.
    poisoned: bool,
    /// MAC key (derived from the sealed audit key); set by [`AuditLog::attach_key`].
    key: Option<Zeroizing<[u8; 32]>>,
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
        let path = file.label().to_owned();
        let io = |e: std::io::Error| AuditError::Io(format!("{path}: {e}"));
        let text = file.read_all().map_err(io)?;
        let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            tracing::warn!(
                dropped = text.len() - complete,
                "cutting a torn last audit line (a crash mid-write)"
            );
            file.set_len(complete as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let body = String::from_utf8_lossy(&text[..complete]).into_owned();
        let (count, last) = verify_chain(body.lines())
            .map_err(|source| AuditError::Broken { path: path.clone(), source })?;
        let writer = Writer {
            file: Arc::clone(&file),
            count,
            last,
            len: complete as u64,
            poisoned: false,
            key: None,
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
        let text = self.read_text()?;
        check_macs(&key, text.lines(), &self.path)?;
        self.writer.lock().map_err(|_| AuditError::Io("writer poisoned".into()))?.key = Some(key);
        Ok(())
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

    /// Reads the log from disk, checks it against what was written, and returns lines
    /// `from..from + limit` and the total.
    ///
    /// # Errors
    /// [`AuditError`] when the file was edited or truncated.
    pub fn read(&self, from: u64, limit: u64) -> Result<(Vec<String>, u64), AuditError> {
        let (written, head, key) = {
            let w = self.writer.lock().map_err(|_| AuditError::Io("writer poisoned".into()))?;
            (w.count, w.last, w.key.clone())
        };
        let text = self.read_text()?;
        let lines: Vec<&str> = text.lines().collect();
        let path = self.path.clone();
        let (count, _) = verify_chain(lines.iter().copied())
            .map_err(|source| AuditError::Broken { path: path.clone(), source })?;
        if let Some(key) = &key {
            check_macs(key, lines.iter().copied(), &self.path)?;
        }
        // The file must hold exactly what this enclave wrote, up to its head.
        let at_head = written == 0
            || lines
                .get(usize::try_from(written - 1).unwrap_or(usize::MAX))
                .and_then(|l| serde_json::from_str::<Record>(l).ok())
                .is_some_and(|r| r.hash == hex::encode(head));
        if count < written || !at_head {
            return Err(AuditError::Truncated { path, on_disk: count, written });
        }
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(lines.len());
        let mut out = Vec::new();
        let mut bytes = 0;
        for l in lines[from..].iter().take(usize::try_from(limit).unwrap_or(usize::MAX)) {
            bytes += l.len();
            if bytes > MAX_PAGE_BYTES && !out.is_empty() {
                break;
            }
            out.push((*l).to_owned());
        }
        Ok((out, count))
    }
}

fn check_macs<'a>(
    key: &[u8; 32],
    lines: impl Iterator<Item = &'a str>,
    path: &str,
) -> Result<(), AuditError> {
    for (i, line) in lines.enumerate() {
        let r: Record = serde_json::from_str(line).map_err(|e| AuditError::Broken {
            path: path.to_owned(),
            source: ChainError::Malformed { seq: i as u64, why: e.to_string() },
        })?;
        if r.mac != mac(key, &r.hash) {
            return Err(AuditError::Broken {
                path: path.to_owned(),
                source: ChainError::Broken {
                    seq: i as u64,
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
