//! The tamper-evident audit log: one hash-chained JSON line per decision (payment, denial,
//! withheld signature, admin change), in `DATA_DIR/audit.log`. Format and chain:
//! [`wallet_policy::audit`]. The enclave signs the head with its audit key on request.
//!
//! The log is for verification outside the enclave, so it is not sealed; it holds no secret
//! (no signature, no key). On open the chain is verified: a torn last line (a crash mid-write)
//! is cut off; any other break stops the enclave, naming the record. While running, every read
//! re-reads the file and checks it against the head in memory, so editing or truncating the file
//! under a running enclave is reported too.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use wallet_policy::audit::{verify_chain, ChainError, Record};

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
    file: File,
    count: u64,
    last: [u8; 32],
}

/// The audit log.
pub struct AuditLog {
    writer: Mutex<Writer>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the log and verifies its chain.
    ///
    /// # Errors
    /// [`AuditError`] when it cannot be read or its chain is broken.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |e: std::io::Error| AuditError::Io(format!("{}: {e}", path.display()));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let text = std::fs::read(path).map_err(io)?;
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
            .map_err(|source| AuditError::Broken { path: path.display().to_string(), source })?;
        Ok(Self { writer: Mutex::new(Writer { file, count, last }), path: path.to_owned() })
    }

    /// Appends a record (its `seq`, `prev` and `hash` are filled in). Made durable with the next
    /// spend-journal round, or by [`Self::sync`].
    ///
    /// # Errors
    /// [`AuditError::Io`].
    pub fn append(&self, mut r: Record) -> Result<(), AuditError> {
        let mut w = self.writer.lock().map_err(|_| AuditError::Io("writer poisoned".into()))?;
        r.seq = w.count;
        r.prev = hex::encode(w.last);
        let h = r.compute_hash();
        r.hash = hex::encode(h);
        let mut line = serde_json::to_string(&r).map_err(|e| AuditError::Io(e.to_string()))?;
        line.push('\n');
        w.file.write_all(line.as_bytes()).map_err(|e| AuditError::Io(e.to_string()))?;
        w.count += 1;
        w.last = h;
        Ok(())
    }

    /// Count and hash of the last record.
    #[must_use]
    pub fn head(&self) -> (u64, [u8; 32]) {
        self.writer.lock().map_or((0, [0; 32]), |w| (w.count, w.last))
    }

    /// A handle whose `sync_data` makes appended records durable.
    ///
    /// # Errors
    /// [`AuditError::Io`].
    pub fn sync_handle(&self) -> Result<File, AuditError> {
        let w = self.writer.lock().map_err(|_| AuditError::Io("writer poisoned".into()))?;
        w.file.try_clone().map_err(|e| AuditError::Io(e.to_string()))
    }

    /// `fdatasync` now.
    ///
    /// # Errors
    /// [`AuditError::Io`].
    pub fn sync(&self) -> Result<(), AuditError> {
        self.sync_handle()?.sync_data().map_err(|e| AuditError::Io(e.to_string()))
    }

    /// Reads the log from disk, checks it against what was written, and returns lines
    /// `from..from + limit` and the total.
    ///
    /// # Errors
    /// [`AuditError`] when the file was edited or truncated.
    pub fn read(&self, from: u64, limit: u64) -> Result<(Vec<String>, u64), AuditError> {
        let (written, head) = self.head();
        let text =
            std::fs::read_to_string(&self.path).map_err(|e| AuditError::Io(e.to_string()))?;
        let lines: Vec<&str> = text.lines().collect();
        let path = self.path.display().to_string();
        let (count, last) = verify_chain(lines.iter().copied())
            .map_err(|source| AuditError::Broken { path: path.clone(), source })?;
        if count < written || (count == written && last != head) {
            return Err(AuditError::Truncated { path, on_disk: count, written });
        }
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(lines.len());
        let to = from.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)).min(lines.len());
        Ok((lines[from..to].iter().map(|l| (*l).to_owned()).collect(), count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: &str) -> Record {
        Record { kind: kind.into(), detail: "x".into(), ..Default::default() }
    }

    #[test]
    fn chain_survives_reopen_torn_lines_are_cut_and_edits_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        {
            let a = AuditLog::open(&p).unwrap();
            for k in ["payment", "deny", "admin"] {
                a.append(rec(k)).unwrap();
            }
            assert_eq!(a.read(0, 10).unwrap().1, 3);
        }
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{\"seq\":3,\"kind\":\"pay"); // torn
        std::fs::write(&p, &text).unwrap();
        let a = AuditLog::open(&p).unwrap();
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
        assert!(matches!(AuditLog::open(&p), Err(AuditError::Broken { .. })));
    }
}
