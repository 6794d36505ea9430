//! The host's storage server for the enclave (`wallet.storage.v1`): a Nitro enclave has no disk,
//! so the host keeps its files. `wallet-gateway --serve-storage ADDR` serves them from its data
//! directory, over a Unix socket (simulated mode, tests) or vsock (Nitro).
//!
//! What it serves: four files by name (`wallet_proto::storage::FILES`: `state.log`,
//! `spends.journal`, `audit.log`, `commit.head`), in one directory (created 0700; files created
//! 0600); no other name and no path. Operations: length, positional read and write, truncation,
//! and `sync` with a real `fdatasync` (or `fsync` when asked for metadata); a file created is
//! followed by an `fsync` of the directory, so it survives a crash too.
//!
//! What it does not do: trust or interpret the bytes. The enclave seals every record, chains the
//! audit log, and checks each file against its commit head when it starts: this server (like the
//! whole host) is untrusted, and whatever it does wrong — lose, reorder or corrupt data — makes
//! the enclave refuse to start or fail closed, never sign more.
//!
//! Bounded: at most [`Limits::max_connections`] connections (the enclave holds one; more are
//! closed at once, logged at most once a second), at most [`Limits::max_in_flight`] requests at
//! once per connection (past that the connection is not read until one finishes), frames of at
//! most 1 MiB (refused before allocation; the connection is then closed), reads and writes of at
//! most [`MAX_CHUNK`] bytes, and files of at most [`MAX_FILE_BYTES`]. Requests of one connection
//! are served concurrently (the enclave sends a request that depends on another only after its
//! answer); a file is opened once per connection, so files replaced on disk between two enclave
//! runs are read anew by the next.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use crate::Throttle;
use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    sync::Semaphore,
};
use wallet_proto::{
    encode_frame,
    frame::{read_frame, ReadError},
    storage::{
        v1::{self as st, storage_request::Op, storage_response::Result as Answer},
        FILES, MAX_CHUNK, STORAGE_PROTOCOL_VERSION,
    },
};

/// Largest file the server writes, in bytes (1 TiB): a write or truncation past it is refused.
pub const MAX_FILE_BYTES: u64 = 1 << 40;

/// Resource limits of the storage server; [`Limits::default`] holds the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (default 4: the enclave holds one, and a restarted enclave's
    /// new connection may overlap its old one briefly). One past that is closed at once.
    pub max_connections: usize,
    /// Requests served at once per connection (default 64).
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 4, max_in_flight: 64 }
    }
}

/// Where the storage server listens: `unix:/path` (or a path) or `vsock:PORT` (any CID: the
/// enclave connects to the parent's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageListen {
    /// A Unix socket (created 0600; a stale socket at the path is replaced).
    Unix(PathBuf),
    /// A vsock port on this (parent) instance.
    Vsock(u32),
}

/// Why a string is not a [`StorageListen`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad storage address {0:?}: expected unix:/path, a socket path, or vsock:PORT")]
pub struct ListenError(String);

impl FromStr for StorageListen {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ListenError(s.to_owned());
        if let Some(port) = s.strip_prefix("vsock:") {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            return port.parse().map(Self::Vsock).map_err(|_| bad());
        }
        let path = s.strip_prefix("unix:").unwrap_or(s);
        if path.is_empty() {
            return Err(bad());
        }
        Ok(Self::Unix(PathBuf::from(path)))
    }
}

impl std::fmt::Display for StorageListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Vsock(port) => write!(f, "vsock:{port}"),
        }
    }
}

/// The directory the files are kept in.
#[derive(Debug)]
pub struct StorageDir {
    dir: PathBuf,
}

impl StorageDir {
    /// Uses `dir` (created 0700 if missing; made 0700 if it is open to others).
    ///
    /// # Errors
    /// When it cannot be created or its permissions set.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "storage directory open to others: setting 0700");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self { dir: dir.to_owned() })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Opens (or creates, 0600, and then syncs the directory) the whitelisted file `name`.
    fn open_file(&self, name: &str) -> std::io::Result<File> {
        let path = self.dir.join(name);
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return OpenOptions::new().read(true).write(true).open(&path)
                    }
                    Err(e) => return Err(e),
                };
                // The new name is durable too, not only what is written in it.
                File::open(&self.dir)?.sync_all()?;
                Ok(f)
            }
            Err(e) => Err(e),
        }
    }
}

/// A bound listener, ready to serve ([`StorageServer::serve`]).
#[derive(Debug)]
pub struct StorageServer {
    listener: Listener,
    dir: Arc<StorageDir>,
    limits: Limits,
    address: StorageListen,
    /// On vsock: the only context id served (the enclave's), when known.
    peer_cid: Option<u32>,
}

#[derive(Debug)]
enum Listener {
    Unix(tokio::net::UnixListener),
    #[cfg(target_os = "linux")]
    Vsock(tokio_vsock::VsockListener),
}

impl StorageServer {
    /// Binds `address` and prepares `dir` (see [`StorageDir::open`]). Binding first lets the
    /// caller fail before announcing anything.
    ///
    /// # Errors
    /// When the directory cannot be used, the address cannot be bound, or a file that is not a
    /// socket is in the way of the Unix socket.
    pub fn bind(address: &StorageListen, dir: &Path, limits: Limits) -> std::io::Result<Self> {
        let dir = Arc::new(StorageDir::open(dir)?);
        let listener = match address {
            StorageListen::Unix(path) => Listener::Unix(crate::bind_unix_0600(path)?),
            #[cfg(target_os = "linux")]
            StorageListen::Vsock(port) => Listener::Vsock(tokio_vsock::VsockListener::bind(
                tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port),
            )?),
            #[cfg(not(target_os = "linux"))]
            StorageListen::Vsock(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "vsock is only available on Linux",
                ))
            }
        };
        Ok(Self { listener, dir, limits, address: address.clone(), peer_cid: None })
    }

    /// Serves only the vsock peer with context id `cid` (the enclave's): another enclave on
    /// the same parent, or a local process, is refused and logged. No effect on a Unix socket.
    #[must_use]
    pub fn only_peer(mut self, cid: u32) -> Self {
        self.peer_cid = Some(cid);
        self
    }

    /// Serves every connection, within the limits, until the task is dropped. Accept errors
    /// (`EMFILE`, ...) are logged and retried after 100 ms; they never end the server.
    pub async fn serve(self) {
        let Self { listener, dir, limits, address, peer_cid } = self;
        tracing::info!(%address, dir = %dir.path().display(), ?limits, "serving the enclave's storage");
        let slots =
            Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
        let (mut refused, mut failed) = (Throttle::default(), Throttle::default());
        loop {
            let accepted: std::io::Result<Box<dyn Link>> = match &listener {
                Listener::Unix(l) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Link>),
                #[cfg(target_os = "linux")]
                Listener::Vsock(l) => match l.accept().await {
                    Ok((_, peer)) if peer_cid.is_some_and(|cid| cid != peer.cid()) => {
                        if let Some(n) = refused.tick() {
                            tracing::warn!(
                                peer_cid = peer.cid(),
                                enclave_cid = peer_cid,
                                refused = n,
                                "storage: refused a vsock peer that is not the enclave"
                            );
                        }
                        continue;
                    }
                    other => other.map(|(s, _)| Box::new(s) as Box<dyn Link>),
                },
            };
            match accepted {
                Ok(stream) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        let dir = Arc::clone(&dir);
                        tokio::spawn(async move {
                            serve_connection(stream, dir, limits).await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        drop(stream);
                        if let Some(n) = refused.tick() {
                            tracing::warn!(
                                max = limits.max_connections,
                                refused = n,
                                "storage connection limit reached: closing new connections"
                            );
                        }
                    }
                },
                Err(e) => {
                    if let Some(n) = failed.tick() {
                        tracing::error!(error = %e, failures = n, "storage accept failed; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A connected byte stream from the enclave.
trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// The files one connection opened, by name.
type Files = Arc<Mutex<HashMap<&'static str, Arc<File>>>>;

/// Serves one connection until the peer closes it or sends a bad frame.
pub async fn serve_connection<S>(stream: S, dir: Arc<StorageDir>, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    let per_conn = limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
    let in_flight = Arc::new(Semaphore::new(per_conn));
    // Answers are written by whoever has one (this loop, or a sync's task), one at a time. A
    // peer that does not read its answers stops being read itself.
    let tx: Writer = Arc::new(tokio::sync::Mutex::new(Box::new(wr)));
    let files: Files = Arc::default();
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let body = match read_frame(&mut rd).await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(ReadError::Frame(e)) => {
                tracing::warn!(error = %e, "closing a storage connection on an oversized frame");
                break;
            }
            Err(ReadError::Io(e)) => {
                tracing::debug!(error = %e, "storage connection ended");
                break;
            }
        };
        let req = match st::StorageRequest::decode(body.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "closing a storage connection on a frame that is not a StorageRequest");
                break;
            }
        };
        let id = req.request_id;
        if !matches!(req.op, Some(Op::Sync(_))) {
            // Length, reads and writes touch the page cache only (microseconds): served here,
            // in order, without a thread hand-off (it showed in every payment's latency).
            let result = handle(&dir, &files, req);
            if !answer(&tx, id, result).await {
                break;
            }
            drop(permit);
            continue;
        }
        // A sync waits for the disk: on a blocking thread, while other requests go on.
        let (tx, dir, files) = (Arc::clone(&tx), Arc::clone(&dir), Arc::clone(&files));
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || handle(&dir, &files, req))
                .await
                .unwrap_or_else(|e| error(format!("internal error: {e}")));
            answer(&tx, id, result).await;
            drop(permit);
        });
    }
    // Sync tasks still running finish on their own (each holds the writer).
}

/// The write half of a connection, shared by the request loop and the syncs in flight.
type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

/// Writes the answer to request `id`; false when the connection can no longer be written.
async fn answer(tx: &Writer, id: u64, result: Answer) -> bool {
    match encode_frame(&st::StorageResponse { request_id: id, result: Some(result) }) {
        Ok(frame) => tx.lock().await.write_all(&frame).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "storage answer too large to send");
            true
        }
    }
}

fn error(message: String) -> Answer {
    Answer::Error(st::StorageError { message })
}

/// Serves one request (blocking file I/O).
fn handle(
    dir: &StorageDir,
    files: &Mutex<HashMap<&'static str, Arc<File>>>,
    req: st::StorageRequest,
) -> Answer {
    if req.protocol_version != STORAGE_PROTOCOL_VERSION {
        return error(format!(
            "storage protocol version {} is not supported (this host speaks {STORAGE_PROTOCOL_VERSION})",
            req.protocol_version
        ));
    }
    let Some(name) = FILES.iter().copied().find(|f| *f == req.file) else {
        return error(format!("{:?} is not a file this host stores for the enclave", req.file));
    };
    let Some(op) = req.op else { return error("the request names no operation".into()) };
    let file = {
        let mut open = files.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get(name) {
            Some(f) => Arc::clone(f),
            None => match dir.open_file(name) {
                Ok(f) => {
                    let f = Arc::new(f);
                    open.insert(name, Arc::clone(&f));
                    f
                }
                Err(e) => return error(format!("{name}: open: {e}")),
            },
        }
    };
    let io = |what: &str, e: std::io::Error| {
        tracing::error!(file = name, error = %e, "storage {what} failed");
        error(format!("{name}: {what}: {e}"))
    };
    let within =
        |offset: u64, len: u64| offset.checked_add(len).is_some_and(|end| end <= MAX_FILE_BYTES);
    match op {
        Op::Len(_) => match file.metadata() {
            Ok(m) => Answer::Length(m.len()),
            Err(e) => io("len", e),
        },
        Op::Read(r) => {
            let want = r.length as usize;
            if want > MAX_CHUNK {
                return error(format!("a read of {want} bytes exceeds the {MAX_CHUNK}-byte limit"));
            }
            let mut buf = vec![0u8; want];
            let mut n = 0;
            while n < want {
                match file.read_at(&mut buf[n..], r.offset.saturating_add(n as u64)) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return io("read", e),
                }
            }
            buf.truncate(n);
            Answer::Data(buf)
        }
        Op::Write(w) => {
            if w.data.len() > MAX_CHUNK {
                return error(format!(
                    "a write of {} bytes exceeds the {MAX_CHUNK}-byte limit",
                    w.data.len()
                ));
            }
            if !within(w.offset, w.data.len() as u64) {
                return error(format!("a write past {MAX_FILE_BYTES} bytes is refused"));
            }
            match file.write_all_at(&w.data, w.offset) {
                Ok(()) => Answer::Done(st::Done {}),
                Err(e) => io("write", e),
            }
        }
        Op::SetLen(s) => {
            if !within(s.length, 0) {
                return error(format!("a length past {MAX_FILE_BYTES} bytes is refused"));
            }
            match file.set_len(s.length) {
                Ok(()) => Answer::Done(st::Done {}),
                Err(e) => io("set_len", e),
            }
        }
        Op::Sync(s) => match if s.metadata { file.sync_all() } else { file.sync_data() } {
            Ok(()) => Answer::Done(st::Done {}),
            Err(e) => io("sync", e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[test]
    fn addresses_parse() {
        assert_eq!("unix:/a/b".parse(), Ok(StorageListen::Unix("/a/b".into())));
        assert_eq!("/a/b".parse(), Ok(StorageListen::Unix("/a/b".into())));
        assert_eq!("vsock:7000".parse(), Ok(StorageListen::Vsock(7000)));
        for bad in ["", "unix:", "vsock:", "vsock:1:2", "vsock:x"] {
            assert!(bad.parse::<StorageListen>().is_err(), "{bad:?}");
        }
        assert_eq!(StorageListen::Vsock(5).to_string(), "vsock:5");
    }

    async fn ask(conn: &mut tokio::net::UnixStream, id: u64, file: &str, op: Op) -> Answer {
        let frame = encode_frame(&st::StorageRequest {
            protocol_version: STORAGE_PROTOCOL_VERSION,
            request_id: id,
            file: file.into(),
            op: Some(op),
        })
        .unwrap();
        conn.write_all(&frame).await.unwrap();
        let body = read_frame(conn).await.unwrap().unwrap();
        let resp = st::StorageResponse::decode(body.as_slice()).unwrap();
        assert_eq!(resp.request_id, id);
        resp.result.unwrap()
    }

    #[tokio::test]
    async fn serves_whitelisted_files_0600_in_a_0700_directory_and_refuses_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let sock = tmp.path().join("storage.sock");
        let server =
            StorageServer::bind(&StorageListen::Unix(sock.clone()), &dir, Limits::default())
                .unwrap();
        let task = tokio::spawn(server.serve());
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
        let mut c = tokio::net::UnixStream::connect(&sock).await.unwrap();
        assert_eq!(ask(&mut c, 1, "spends.journal", Op::Len(st::Len {})).await, Answer::Length(0));
        let w = Op::Write(st::Write { offset: 2, data: b"abc".to_vec() });
        assert_eq!(ask(&mut c, 2, "spends.journal", w).await, Answer::Done(st::Done {}));
        let sync = Op::Sync(st::Sync { metadata: false });
        assert_eq!(ask(&mut c, 3, "spends.journal", sync).await, Answer::Done(st::Done {}));
        let r = Op::Read(st::Read { offset: 0, length: 100 });
        assert_eq!(ask(&mut c, 4, "spends.journal", r).await, Answer::Data(b"\0\0abc".to_vec()));
        let r = Op::Read(st::Read { offset: 99, length: 1 });
        assert_eq!(ask(&mut c, 5, "spends.journal", r).await, Answer::Data(Vec::new()));
        let t = Op::SetLen(st::SetLen { length: 3 });
        assert_eq!(ask(&mut c, 6, "spends.journal", t).await, Answer::Done(st::Done {}));
        assert_eq!(std::fs::read(dir.join("spends.journal")).unwrap(), b"\0\0a");
        assert_eq!(
            std::fs::metadata(dir.join("spends.journal")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for (file, op) in [
            ("../x", Op::Len(st::Len {})),
            ("sealing.key", Op::Len(st::Len {})),
            ("audit.log", Op::Read(st::Read { offset: 0, length: MAX_CHUNK as u32 + 1 })),
            ("audit.log", Op::Write(st::Write { offset: MAX_FILE_BYTES, data: vec![1] })),
            ("audit.log", Op::Write(st::Write { offset: u64::MAX, data: vec![1] })),
            ("audit.log", Op::SetLen(st::SetLen { length: MAX_FILE_BYTES + 1 })),
        ] {
            assert!(matches!(ask(&mut c, 7, file, op).await, Answer::Error(_)), "{file}");
        }
        assert!(!tmp.path().join("x").exists() && !dir.join("sealing.key").exists());
        // Another protocol version.
        let frame = encode_frame(&st::StorageRequest {
            protocol_version: 2,
            request_id: 8,
            file: "audit.log".into(),
            op: Some(Op::Len(st::Len {})),
        })
        .unwrap();
        c.write_all(&frame).await.unwrap();
        let body = read_frame(&mut c).await.unwrap().unwrap();
        let resp = st::StorageResponse::decode(body.as_slice()).unwrap();
        assert!(matches!(resp.result, Some(Answer::Error(_))));
        // A frame that is not a request, or too large: the connection is closed.
        c.write_all(&[0, 0, 0, 2, 0xff, 0xff]).await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).await.unwrap(), 0);
        let mut c = tokio::net::UnixStream::connect(&sock).await.unwrap();
        c.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert_eq!(c.read(&mut b).await.unwrap(), 0);
        task.abort();
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_a_file_in_the_way_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("storage.sock");
        let limits = Limits { max_connections: 2, max_in_flight: 4 };
        let server =
            StorageServer::bind(&StorageListen::Unix(sock.clone()), tmp.path(), limits).unwrap();
        let task = tokio::spawn(server.serve());
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::UnixStream::connect(&sock).await.unwrap());
        }
        let mut extra = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(extra.read(&mut b).await.unwrap(), 0, "closed at once");
        assert_eq!(ask(&mut held[0], 1, "audit.log", Op::Len(st::Len {})).await, Answer::Length(0));
        task.abort();
        // A regular file where the socket should go is not deleted.
        let file = tmp.path().join("not-a-socket");
        std::fs::write(&file, b"keep").unwrap();
        assert!(
            StorageServer::bind(&StorageListen::Unix(file.clone()), tmp.path(), limits).is_err()
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
