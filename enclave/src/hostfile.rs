//! The file abstraction under the enclave's file-backed stores (the spend journal, the audit log,
//! the commit head and, on host storage, the state log): [`StorageFile`], positional reads and
//! writes, truncation and durable syncs on one file.
//!
//! Two implementations:
//! * [`LocalFile`]: a `std::fs::File` in the data directory (simulated mode, and what the stores
//!   always did: `pwrite`, `fdatasync`, preallocation by writing zeros);
//! * [`crate::hoststorage::RemoteFile`]: a file the host keeps for the enclave (Nitro mode has no
//!   disk), reached over a framed connection (`wallet.storage.v1`).
//!
//! Either way the bytes are untrusted when read back: the stores check them (seals, hash chains,
//! the commit head) exactly as before. An error of any call is an `std::io::Error` whose message
//! names the file.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

/// One file a store keeps its bytes in. Offsets and lengths are in bytes. Calls may come from
/// several threads at once (a writer and a durability round); a sync covers every write that
/// returned before it was called.
pub trait StorageFile: Send + Sync + std::fmt::Debug {
    /// What to call the file in errors and logs (a path, or the host's file name).
    fn label(&self) -> &str;
    /// The file's length in bytes.
    ///
    /// # Errors
    /// The I/O error (for a remote file, also a malformed or missing answer).
    fn size(&self) -> std::io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at or past the end).
    ///
    /// # Errors
    /// As [`Self::size`].
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
    /// The whole file, read from its start to its end.
    ///
    /// # Errors
    /// As [`Self::size`]; a remote file larger than its client's limit is an error, found before
    /// anything is allocated for it.
    fn read_all(&self) -> std::io::Result<Vec<u8>>;
    /// Writes all of `buf` at `offset` (not yet durable: see [`Self::sync_data`]).
    ///
    /// # Errors
    /// As [`Self::size`]; part of `buf` may then have been written.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Truncates (or extends with zeros) the file to `len` bytes.
    ///
    /// # Errors
    /// As [`Self::size`].
    fn set_len(&self, len: u64) -> std::io::Result<()>;
    /// Makes the data written so far durable (`fdatasync`).
    ///
    /// # Errors
    /// As [`Self::size`]: durability is then unknown, and the caller must fail closed.
    fn sync_data(&self) -> std::io::Result<()>;
    /// Makes the data and all metadata durable (`fsync`).
    ///
    /// # Errors
    /// As [`Self::sync_data`].
    fn sync_all(&self) -> std::io::Result<()>;
}

/// The names of the files a store may keep, on a host or in a data directory. The host refuses
/// any other name (`wallet_proto::storage::FILES`).
pub mod names {
    /// The state store's log (host storage; a local data directory keeps sled in `state/`).
    pub const STATE_LOG: &str = "state.log";
    /// The spend journal.
    pub const SPEND_JOURNAL: &str = "spends.journal";
    /// The audit log.
    pub const AUDIT_LOG: &str = "audit.log";
    /// The commit head.
    pub const COMMIT_HEAD: &str = "commit.head";
    /// The sealing key wrapped by KMS (its `CiphertextBlob`; host storage with KMS sealing).
    pub const SEALING_KEY: &str = "sealing-key.kms";
}

/// A file in a local directory: the journal, audit log and commit head of a data directory, with
/// exactly the system calls they always made (`pread`/`pwrite`, `fdatasync`, `fsync`).
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    label: String,
}

impl LocalFile {
    /// Opens (or creates, mode 0600) the file at `path` for reading and writing.
    ///
    /// # Errors
    /// The I/O error, with the path.
    pub fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| with_label(&path.display().to_string(), &e))?;
        Ok(Arc::new(Self { file, label: path.display().to_string() }))
    }

    /// The path the file was opened at.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.label)
    }
}

/// `e` with the file's label in front (the kind kept).
fn with_label(label: &str, e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{label}: {e}"))
}

impl StorageFile for LocalFile {
    fn label(&self) -> &str {
        &self.label
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn read_all(&self) -> std::io::Result<Vec<u8>> {
        // Positional reads only: several threads may read the file at once (no shared cursor).
        let len = usize::try_from(self.size()?).map_err(std::io::Error::other)?;
        let mut bytes = vec![0u8; len];
        let n = read_up_to(self, &mut bytes, 0)?;
        bytes.truncate(n);
        // It may have grown meanwhile: read on to its end, as `read_to_end` would.
        let mut more = vec![0u8; 64 * 1024];
        loop {
            match self.file.read_at(&mut more, bytes.len() as u64)? {
                0 => return Ok(bytes),
                k => bytes.extend_from_slice(&more[..k]),
            }
        }
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
    fn sync_all(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// Reads up to `buf.len()` bytes at `at`, looping over short reads; returns how many (fewer
/// only at the end of the file).
///
/// # Errors
/// The I/O error.
pub fn read_up_to(file: &dyn StorageFile, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_file_reads_writes_and_truncates_where_asked() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = LocalFile::open(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        f.write_all_at(b"hello", 3).unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.size().unwrap(), 8);
        assert_eq!(f.read_all().unwrap(), b"\0\0\0hello");
        let mut buf = [0u8; 16];
        assert_eq!(read_up_to(f.as_ref(), &mut buf, 4).unwrap(), 4);
        assert_eq!(&buf[..4], b"ello");
        f.set_len(4).unwrap();
        f.sync_all().unwrap();
        assert_eq!(f.read_all().unwrap(), b"\0\0\0h");
        assert!(f.label().ends_with("/f"));
    }
}
