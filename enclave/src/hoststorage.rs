//! Storage the host provides (Nitro mode has no disk): the enclave's client of
//! `wallet.storage.v1`. The host keeps four files by name (`state.log`, `spends.journal`,
//! `audit.log`, `commit.head`); the enclave reads, writes and syncs them over one framed
//! connection (vsock on Nitro, a Unix socket in simulated mode), each as a [`RemoteFile`] behind
//! [`StorageFile`], so the stores above run unchanged and check everything they read back.
//!
//! The host is untrusted. What this client does about it:
//! * every answer is bounded before anything is allocated: frames at most 1 MiB (the codec), a
//!   read's bytes at most what was asked, a file read whole at most [`HostStorage::max_file_bytes`]
//!   (checked against the length the host claims, and again as bytes arrive);
//! * an answer that is malformed, of the wrong kind, for a request never made, or missing after
//!   [`CALL_TIMEOUT`] fails the call with a sentence naming the file, and ends the connection;
//! * a call that failed leaves its effect unknown, so a file with a write or truncation not
//!   confirmed synced (or whose outcome is unknown) makes a lost connection final: the client
//!   reconnects only when every file's writes were synced (for example after the host restarted
//!   while the enclave was idle). The stores fail closed on their own as well: a failed write
//!   poisons the journal, a failed sync fails its group commit until restart.
//!
//! Writes are queued and sent before the file's next other operation (write-behind, see
//! `Behind`): a write is not durable before a sync anyway, and a round of payments then costs one
//! write request per file instead of one per payment. A queue that cannot be sent fails its file
//! for good, and the sync that sent it fails: nothing is confirmed durable that is not.
//!
//! The calls block their thread (as local file I/O does); the connection itself runs on a
//! thread of its own with a single-threaded runtime, so a caller on a runtime worker never waits
//! on its own runtime.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use wallet_proto::{
    encode_frame,
    frame::{read_frame, ReadError},
    storage::{
        v1::{self as st, storage_request::Op, storage_response::Result as Answer},
        FILES, MAX_CHUNK, STORAGE_PROTOCOL_VERSION,
    },
};

use crate::hostfile::StorageFile;

/// The parent instance's vsock context id, where a Nitro enclave finds its host
/// (`--parent-cid`, used when the address is `vsock:PORT`).
pub const DEFAULT_PARENT_CID: u32 = 3;
/// How long start-up waits for the host's storage server before giving up.
pub const DEFAULT_CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long one call waits for the host's answer; past that the connection is ended and the call
/// fails (its effect unknown).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest file read whole (the journal and the logs are read whole at start-up):
/// 4 GiB. A host claiming more is refused before anything is allocated.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;
/// Longest piece of a host's error message kept in the enclave's errors and logs.
const MAX_HOST_MESSAGE: usize = 200;

/// Where the host's storage server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAddress {
    /// A Unix socket (simulated mode, or a vsock-to-Unix bridge).
    Unix(PathBuf),
    /// `AF_VSOCK` (Nitro): the parent's context id and a port.
    Vsock {
        /// Context id of the parent instance.
        cid: u32,
        /// Port.
        port: u32,
    },
}

impl HostAddress {
    /// Parses `unix:/path`, `vsock:CID:PORT` or `vsock:PORT` (then at `parent_cid`).
    ///
    /// # Errors
    /// A sentence naming the accepted forms.
    pub fn parse(s: &str, parent_cid: u32) -> Result<Self, String> {
        let bad = || {
            format!(
                "bad host storage address {s:?}: expected unix:/path, vsock:CID:PORT or vsock:PORT"
            )
        };
        let num = |t: &str| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<u32>().map_err(|_| bad())
        };
        if let Some(rest) = s.strip_prefix("vsock:") {
            return match rest.split_once(':') {
                Some((cid, port)) => Ok(Self::Vsock { cid: num(cid)?, port: num(port)? }),
                None => Ok(Self::Vsock { cid: parent_cid, port: num(rest)? }),
            };
        }
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Self::Unix(PathBuf::from(path))),
            _ => Err(bad()),
        }
    }

    /// What to run on the host to serve this address (for error messages).
    fn server_flag(&self) -> String {
        match self {
            Self::Unix(p) => format!("--serve-storage unix:{}", p.display()),
            Self::Vsock { port, .. } => format!("--serve-storage vsock:{port}"),
        }
    }
}

impl std::fmt::Display for HostAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// A sentence as an I/O error.
fn err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// A host-chosen text, clipped and stripped of control characters, for errors and logs.
fn clip(s: &str) -> String {
    let mut out: String =
        s.chars().filter(|c| !c.is_control()).take(MAX_HOST_MESSAGE).collect::<String>();
    if s.chars().count() > MAX_HOST_MESSAGE {
        out.push('…');
    }
    out
}

/// The state of one connection, shared by callers and its I/O thread.
#[derive(Default)]
struct ConnState {
    /// Callers waiting for an answer, by request id.
    pending: HashMap<u64, std::sync::mpsc::SyncSender<Result<st::StorageResponse, String>>>,
    /// Why the connection ended (it is then never used again).
    broken: Option<String>,
}

/// One connection: frames go to its I/O thread; answers come back through `state.pending`.
struct Conn {
    /// `Some(frame)` to send; `None` ends the connection.
    frames: tokio::sync::mpsc::UnboundedSender<Option<Vec<u8>>>,
    state: Arc<Mutex<ConnState>>,
}

fn lock(state: &Mutex<ConnState>) -> std::sync::MutexGuard<'_, ConnState> {
    // Every critical section leaves the state consistent; a poisoned lock is still usable.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends a connection for good: every waiting caller gets `why`.
fn break_with(state: &Mutex<ConnState>, why: &str) {
    let waiters = {
        let mut st = lock(state);
        if st.broken.is_none() {
            st.broken = Some(why.to_owned());
        }
        std::mem::take(&mut st.pending)
    };
    for (_, tx) in waiters {
        let _ = tx.try_send(Err(why.to_owned()));
    }
}

impl Conn {
    fn broken(&self) -> Option<String> {
        lock(&self.state).broken.clone()
    }

    fn close(&self, why: &str) {
        break_with(&self.state, why);
        let _ = self.frames.send(None);
    }

    /// Connects to `addr` (one attempt, at most 5 s) and starts the connection's I/O thread.
    fn open(addr: &HostAddress) -> std::io::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let (frames, frames_rx) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(ConnState::default()));
        let io_state = Arc::clone(&state);
        let addr = addr.clone();
        std::thread::Builder::new().name("host-storage".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let connect = tokio::time::timeout(Duration::from_secs(5), connect(&addr));
                match connect.await {
                    Ok(Ok(stream)) => {
                        let _ = ready_tx.send(Ok(()));
                        let why = run(stream, frames_rx, &io_state).await;
                        break_with(&io_state, &why);
                    }
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                    }
                    Err(_) => {
                        let _ = ready_tx.send(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connect timed out",
                        )));
                    }
                }
            });
        })?;
        ready_rx.recv().map_err(|_| err("the host storage thread stopped".into()))??;
        Ok(Self { frames, state })
    }
}

/// A connected byte stream to the host.
/// A byte stream to the host (Unix socket or vsock).
pub(crate) trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// Connects to `addr` (vsock writes kept small: see `smallwrites`).
pub(crate) async fn connect(addr: &HostAddress) -> std::io::Result<Box<dyn Link>> {
    match addr {
        HostAddress::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        #[cfg(target_os = "linux")]
        HostAddress::Vsock { cid, port } => Ok(Box::new(crate::smallwrites::SmallWrites(
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
        ))),
        #[cfg(not(target_os = "linux"))]
        HostAddress::Vsock { .. } => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "vsock is only available on Linux",
        )),
    }
}

/// Runs one connection until it fails or is closed; returns why it ended.
async fn run(
    stream: Box<dyn Link>,
    mut frames: tokio::sync::mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    state: &Mutex<ConnState>,
) -> String {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    let writer = async {
        while let Some(Some(frame)) = frames.recv().await {
            if let Err(e) = wr.write_all(&frame).await {
                return format!("sending to the host failed: {e}");
            }
        }
        "the connection was closed by the enclave".to_owned()
    };
    let reader = async {
        loop {
            let body = match read_frame(&mut rd).await {
                Ok(Some(body)) => body,
                Ok(None) => return "the host closed the connection".to_owned(),
                Err(ReadError::Frame(e)) => {
                    return format!("the host sent an oversized frame ({e})")
                }
                Err(ReadError::Io(e)) => return format!("reading from the host failed: {e}"),
            };
            let resp = match st::StorageResponse::decode(body.as_slice()) {
                Ok(r) => r,
                Err(e) => return format!("the host sent a malformed answer ({e})"),
            };
            let waiter = lock(state).pending.remove(&resp.request_id);
            match waiter {
                // A caller that gave up (timed out) no longer listens: nothing to do.
                Some(tx) => {
                    let _ = tx.try_send(Ok(resp));
                }
                None => {
                    return format!(
                        "the host answered request {} that is not in flight",
                        resp.request_id
                    )
                }
            }
        }
    };
    tokio::select! {
        why = writer => why,
        why = reader => why,
    }
}

/// What is known of one file's writes, to decide whether a lost connection can be resumed.
#[derive(Debug, Default)]
struct FileState {
    /// Writes and truncations sent and not yet answered.
    in_flight: AtomicU64,
    /// Writes and truncations the host confirmed.
    acked: AtomicU64,
    /// The highest `acked` count a confirmed sync covered.
    synced: AtomicU64,
    /// A write, truncation or sync failed: its effect is unknown, for good.
    unknown: AtomicBool,
}

impl FileState {
    fn dirty(&self) -> bool {
        self.unknown.load(Ordering::SeqCst)
            || self.in_flight.load(Ordering::SeqCst) > 0
            || self.acked.load(Ordering::SeqCst) > self.synced.load(Ordering::SeqCst)
    }
}

struct Client {
    addr: HostAddress,
    conn: Mutex<Arc<Conn>>,
    next_id: AtomicU64,
    files: Mutex<Vec<(&'static str, Arc<FileState>)>>,
    timeout: Duration,
    max_file_bytes: u64,
}

impl Client {
    /// The live connection, or a new one when the last was lost and every file is clean.
    fn connection(&self) -> std::io::Result<Arc<Conn>> {
        let mut cur = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(why) = cur.broken() else { return Ok(Arc::clone(&cur)) };
        let dirty = self
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(_, s)| s.dirty())
            .map(|(n, _)| *n);
        if let Some(name) = dirty {
            return Err(err(format!(
                "the connection to host storage at {} was lost ({why}) while {name} had writes not confirmed durable: what the host kept is unknown, so the enclave stops using its storage (fail closed); restart the enclave",
                self.addr
            )));
        }
        let conn = Conn::open(&self.addr).map_err(|e| {
            err(format!(
                "the connection to host storage at {} was lost ({why}) and reconnecting failed: {e}",
                self.addr
            ))
        })?;
        tracing::warn!(address = %self.addr, lost = %why, "reconnected to host storage (every file was synced)");
        *cur = Arc::new(conn);
        Ok(Arc::clone(&cur))
    }

    /// Sends one request and waits for its answer (at most the call timeout); checks that the
    /// answer is of the `expected` kind, and ends the connection when it is not.
    fn call(&self, file: &str, op: Op, expected: Expect) -> std::io::Result<Answer> {
        self.call_tracked(file, op, expected, None)
    }

    /// [`Self::call`] for a write or truncation of the file whose state is `writes`: counted in
    /// flight from the moment it may be sent (after the connection is chosen, so a request never
    /// makes its own reconnection impossible), then confirmed, or of unknown effect for good.
    fn call_tracked(
        &self,
        file: &str,
        op: Op,
        expected: Expect,
        writes: Option<&FileState>,
    ) -> std::io::Result<Answer> {
        let what = match &op {
            Op::Len(_) => "len",
            Op::Read(_) => "read",
            Op::Write(_) => "write",
            Op::SetLen(_) => "set_len",
            Op::Sync(_) => "sync",
        };
        let fail = |why: &str| err(format!("host storage {file}: {what} failed: {why}"));
        let conn = self.connection().map_err(|e| fail(&e.to_string()))?;
        let Some(w) = writes else { return self.send(&conn, file, op, expected, &fail) };
        w.in_flight.fetch_add(1, Ordering::SeqCst);
        let r = self.send(&conn, file, op, expected, &fail);
        if r.is_ok() {
            w.acked.fetch_add(1, Ordering::SeqCst);
        } else {
            w.unknown.store(true, Ordering::SeqCst);
        }
        w.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// Sends one request on `conn` and waits for its answer (see [`Self::call`]).
    fn send(
        &self,
        conn: &Conn,
        file: &str,
        op: Op,
        expected: Expect,
        fail: &dyn Fn(&str) -> std::io::Error,
    ) -> std::io::Result<Answer> {
        let what = match &op {
            Op::Len(_) => "len",
            Op::Read(_) => "read",
            Op::Write(_) => "write",
            Op::SetLen(_) => "set_len",
            Op::Sync(_) => "sync",
        };
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let frame = encode_frame(&st::StorageRequest {
            protocol_version: STORAGE_PROTOCOL_VERSION,
            request_id: id,
            file: file.to_owned(),
            op: Some(op),
        })
        .map_err(|e| fail(&e.to_string()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        {
            let mut st = lock(&conn.state);
            if let Some(why) = &st.broken {
                return Err(fail(why));
            }
            st.pending.insert(id, tx);
        }
        if conn.frames.send(Some(frame)).is_err() {
            lock(&conn.state).pending.remove(&id);
            return Err(fail("the connection's thread stopped"));
        }
        let resp = match rx.recv_timeout(self.timeout) {
            Ok(Ok(resp)) => resp,
            Ok(Err(why)) => return Err(fail(&why)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let why = format!("no answer from the host within {:?}", self.timeout);
                conn.close(&why);
                return Err(fail(&why));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(fail(&conn.broken().unwrap_or_else(|| "connection lost".into())))
            }
        };
        let malformed = match (resp.result, expected) {
            (Some(Answer::Error(e)), _) => {
                return Err(fail(&format!("the host reports: {}", clip(&e.message))))
            }
            (Some(a @ Answer::Length(_)), Expect::Length)
            | (Some(a @ Answer::Done(_)), Expect::Done) => return Ok(a),
            (Some(Answer::Data(d)), Expect::Data(max)) if d.len() <= max => {
                return Ok(Answer::Data(d))
            }
            (Some(Answer::Data(d)), Expect::Data(max)) => {
                format!("{} bytes for a read of at most {max}", d.len())
            }
            (None, _) => "no result".to_owned(),
            (Some(_), _) => format!("not the kind of answer a {what} gets"),
        };
        let why = format!("malformed answer ({malformed}); failing closed");
        conn.close(&why);
        Err(fail(&why))
    }
}

/// The kind of answer a request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `length` (to `len`).
    Length,
    /// `data` of at most this many bytes (to `read`).
    Data(usize),
    /// `done` (to `write`, `set_len`, `sync`).
    Done,
}

/// The enclave's connection to the host's storage server, from which [`RemoteFile`]s are had.
#[derive(Clone)]
pub struct HostStorage {
    client: Arc<Client>,
}

impl std::fmt::Debug for HostStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostStorage").field("address", &self.client.addr).finish_non_exhaustive()
    }
}

impl HostStorage {
    /// Connects to the storage server at `addr`, retrying every 100 ms for up to `wait` (it may
    /// still be starting).
    ///
    /// # Errors
    /// A sentence saying nothing answered and what to run on the host.
    pub fn connect(addr: HostAddress, wait: Duration) -> std::io::Result<Self> {
        let started = Instant::now();
        let mut logged = false;
        let conn = loop {
            match Conn::open(&addr) {
                Ok(c) => break c,
                Err(e) if started.elapsed() < wait => {
                    if !logged {
                        tracing::info!(address = %addr, error = %e, wait = ?wait, "waiting for the host's storage server");
                        logged = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "no storage server answered at {addr} within {} s ({e}): start the host's storage server first (wallet-gateway {} --data-dir DIR on the host), then this enclave",
                            wait.as_secs(),
                            addr.server_flag()
                        ),
                    ))
                }
            }
        };
        tracing::info!(address = %addr, "connected to host storage");
        Ok(Self {
            client: Arc::new(Client {
                addr,
                conn: Mutex::new(Arc::new(conn)),
                next_id: AtomicU64::new(1),
                files: Mutex::new(Vec::new()),
                timeout: CALL_TIMEOUT,
                max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            }),
        })
    }

    /// The same, with a different time limit per call and largest file read whole (tests;
    /// operators keep the defaults). Call before taking files.
    #[must_use]
    pub fn with_limits(self, timeout: Duration, max_file_bytes: u64) -> Self {
        match Arc::try_unwrap(self.client) {
            Ok(mut c) => {
                c.timeout = timeout;
                c.max_file_bytes = max_file_bytes;
                Self { client: Arc::new(c) }
            }
            Err(client) => Self { client },
        }
    }

    /// Where the storage server is.
    #[must_use]
    pub fn address(&self) -> &HostAddress {
        &self.client.addr
    }

    /// The largest file read whole, in bytes.
    #[must_use]
    pub fn max_file_bytes(&self) -> u64 {
        self.client.max_file_bytes
    }

    /// The host's file `name`, one of `wallet_proto::storage::FILES`.
    ///
    /// # Errors
    /// Any other name.
    pub fn file(&self, name: &str) -> std::io::Result<Arc<RemoteFile>> {
        let name: &'static str = FILES
            .iter()
            .find(|f| **f == name)
            .ok_or_else(|| err(format!("{name:?} is not a file the host stores")))?;
        let state = Arc::new(FileState::default());
        self.client
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, Arc::clone(&state)));
        Ok(Arc::new(RemoteFile {
            client: Arc::clone(&self.client),
            name,
            label: format!("{name} (host storage at {})", self.client.addr),
            state,
            behind: Mutex::new(Behind::default()),
        }))
    }
}

/// A file the host stores for the enclave (see the module docs).
pub struct RemoteFile {
    client: Arc<Client>,
    name: &'static str,
    label: String,
    state: Arc<FileState>,
    /// Writes not sent yet (write-behind; see [`Behind`]). Held while they are sent, so every
    /// other operation on the file comes after them.
    behind: Mutex<Behind>,
}

/// Write-behind: a write returns once queued; the queue is sent, contiguous writes coalesced,
/// before any other operation on the file (a sync, a read, a length, a truncation) or once it
/// holds [`FLUSH_AT`] bytes. A write is not durable before a sync anyway, so the stores'
/// contract is unchanged, and a payment round sends its journal records and audit lines in one
/// request each instead of one per payment. A queue that cannot be sent fails the file for good
/// (its writes may be partly on the host: nothing may follow them).
#[derive(Debug, Default)]
struct Behind {
    writes: Vec<(u64, Vec<u8>)>,
    bytes: usize,
    failed: Option<String>,
}

/// Bytes queued before a write sends the queue itself.
const FLUSH_AT: usize = 1 << 20;

impl std::fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFile").field("file", &self.label).finish_non_exhaustive()
    }
}

impl RemoteFile {
    /// A write-like call (write, truncation): tracked for the reconnection rule.
    fn mutate(&self, op: Op) -> std::io::Result<()> {
        self.client.call_tracked(self.name, op, Expect::Done, Some(&self.state)).map(|_| ())
    }

    /// The write-behind queue, once every write in it has been sent (confirmed by the host).
    ///
    /// # Errors
    /// When a write of the queue (now or before) failed: the file is then unusable.
    fn flushed(&self) -> std::io::Result<std::sync::MutexGuard<'_, Behind>> {
        let mut b = self.behind.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &b.failed {
            return Err(err(format!(
                "host storage {}: an earlier write failed ({why}); restart the enclave",
                self.name
            )));
        }
        let writes = std::mem::take(&mut b.writes);
        b.bytes = 0;
        // Contiguous writes go as one request (up to a chunk).
        let mut pieces: Vec<(u64, Vec<u8>)> = Vec::new();
        for (offset, data) in writes {
            for (i, part) in data.chunks(MAX_CHUNK).enumerate() {
                let at = offset + (i * MAX_CHUNK) as u64;
                match pieces.last_mut() {
                    Some((o, d))
                        if *o + d.len() as u64 == at && d.len() + part.len() <= MAX_CHUNK =>
                    {
                        d.extend_from_slice(part);
                    }
                    _ => pieces.push((at, part.to_vec())),
                }
            }
        }
        for (offset, data) in pieces {
            if let Err(e) = self.mutate(Op::Write(st::Write { offset, data })) {
                b.failed = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(b)
    }

    fn sync(&self, metadata: bool) -> std::io::Result<()> {
        // Every write queued before this call is sent (by us, or by a flush we waited for).
        drop(self.flushed()?);
        let covers = self.state.acked.load(Ordering::SeqCst);
        match self.client.call(self.name, Op::Sync(st::Sync { metadata }), Expect::Done) {
            Ok(_) => {
                self.state.synced.fetch_max(covers, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.state.unknown.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

impl StorageFile for RemoteFile {
    fn label(&self) -> &str {
        &self.label
    }

    fn size(&self) -> std::io::Result<u64> {
        drop(self.flushed()?);
        match self.client.call(self.name, Op::Len(st::Len {}), Expect::Length)? {
            Answer::Length(n) => Ok(n),
            _ => Err(err("unreachable: checked by call".into())),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let want = buf.len().min(MAX_CHUNK);
        if want == 0 {
            return Ok(0);
        }
        let length = u32::try_from(want).map_err(|e| err(e.to_string()))?;
        drop(self.flushed()?);
        match self.client.call(
            self.name,
            Op::Read(st::Read { offset, length }),
            Expect::Data(want),
        )? {
            Answer::Data(d) => {
                buf[..d.len()].copy_from_slice(&d);
                Ok(d.len())
            }
            _ => Err(err("unreachable: checked by call".into())),
        }
    }

    fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let max = self.client.max_file_bytes;
        let claimed = self.size()?;
        if claimed > max {
            return Err(err(format!(
                "host storage {}: the host says it holds {claimed} bytes, more than the {max}-byte limit: refusing to read it",
                self.name
            )));
        }
        // Grown as bytes arrive (never from the host's claim), and never past the limit.
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; MAX_CHUNK];
        loop {
            let n = self.read_at(&mut chunk, bytes.len() as u64)?;
            if bytes.len() as u64 + n as u64 > max {
                return Err(err(format!(
                    "host storage {}: the host sent more than the {max}-byte limit",
                    self.name
                )));
            }
            bytes.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                return Ok(bytes);
            }
        }
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none() {
            return Err(err(format!("host storage {}: offset overflow", self.name)));
        }
        let mut b = self.behind.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &b.failed {
            return Err(err(format!(
                "host storage {}: an earlier write failed ({why}); restart the enclave",
                self.name
            )));
        }
        b.writes.push((offset, buf.to_vec()));
        b.bytes += buf.len();
        if b.bytes >= FLUSH_AT {
            drop(b);
            drop(self.flushed()?);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        // Held across the truncation: no queued write may be sent after it.
        let _queue = self.flushed()?;
        self.mutate(Op::SetLen(st::SetLen { length: len }))
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.sync(false)
    }

    fn sync_all(&self) -> std::io::Result<()> {
        self.sync(true)
    }
}

/// A storage server for the enclave's own tests (the real one is the host's,
/// `wallet_host::storage`): serves a directory over a Unix socket, honestly or, on request, as a
/// hostile host would.
#[cfg(test)]
pub(crate) mod fake_host {
    use std::{
        io::{Read as _, Write as _},
        os::unix::{
            fs::FileExt as _,
            net::{UnixListener, UnixStream},
        },
        path::{Path, PathBuf},
        sync::{Arc, Mutex},
    };

    use prost::Message as _;
    use wallet_proto::storage::v1::{
        self as st, storage_request::Op, storage_response::Result as Answer,
    };

    /// How the fake host answers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Mode {
        /// As the real host does.
        Honest,
        /// `len` answers 2^62.
        HugeLength,
        /// Answers a frame that is not a `StorageResponse`.
        Garbage,
        /// Declares a frame of 4 GiB.
        HugeFrame,
        /// Closes the connection instead of answering.
        Close,
        /// Answers reads with more bytes than asked.
        LongRead,
        /// Answers with another request's id.
        WrongId,
        /// Answers writes and syncs "done" without doing them.
        DropWrites,
    }

    /// A running fake host; `mode` can be changed while it runs.
    pub(crate) struct FakeHost {
        pub(crate) socket: PathBuf,
        pub(crate) mode: Arc<Mutex<Mode>>,
        /// Requests received.
        pub(crate) requests: Arc<std::sync::atomic::AtomicU64>,
    }

    impl FakeHost {
        /// Serves `dir` on `dir/../<name>.sock`.
        pub(crate) fn start(dir: &Path, socket: &Path) -> Self {
            std::fs::create_dir_all(dir).unwrap();
            let listener = UnixListener::bind(socket).unwrap();
            let mode = Arc::new(Mutex::new(Mode::Honest));
            let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (dir, m, n) = (dir.to_path_buf(), Arc::clone(&mode), Arc::clone(&requests));
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    let (dir, m, n) = (dir.clone(), Arc::clone(&m), Arc::clone(&n));
                    std::thread::spawn(move || serve(conn, &dir, &m, &n));
                }
            });
            Self { socket: socket.to_path_buf(), mode, requests }
        }

        pub(crate) fn set(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }
    }

    /// Where a store's files are, for tests run over both backends.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Backend {
        /// Local files in a directory.
        Local,
        /// The same directory served by a [`FakeHost`].
        Host,
    }

    /// Both backends.
    pub(crate) const BACKENDS: [Backend; 2] = [Backend::Local, Backend::Host];

    /// A directory of store files, opened locally or through a fake host serving it.
    pub(crate) struct Files {
        dir: tempfile::TempDir,
        host: Option<(FakeHost, super::HostStorage)>,
    }

    impl Files {
        pub(crate) fn new(backend: Backend) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let files = dir.path().join("files");
            std::fs::create_dir_all(&files).unwrap();
            let host = (backend == Backend::Host).then(|| {
                let h = FakeHost::start(&files, &dir.path().join("storage.sock"));
                let s = super::HostStorage::connect(
                    super::HostAddress::Unix(h.socket.clone()),
                    std::time::Duration::from_secs(5),
                )
                .unwrap();
                (h, s)
            });
            Self { dir, host }
        }

        /// The file's path on disk (the host's copy, for a fake host).
        pub(crate) fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join("files").join(name)
        }

        /// Opens the file `name` on this backend.
        pub(crate) fn file(&self, name: &str) -> Arc<dyn crate::hostfile::StorageFile> {
            match &self.host {
                None => crate::hostfile::LocalFile::open(&self.path(name)).unwrap(),
                Some((_, s)) => s.file(name).unwrap(),
            }
        }

        /// The fake host (for a [`Backend::Host`]).
        pub(crate) fn host(&self) -> Option<&FakeHost> {
            self.host.as_ref().map(|(h, _)| h)
        }
    }

    fn serve(
        mut conn: UnixStream,
        dir: &Path,
        mode: &Mutex<Mode>,
        requests: &std::sync::atomic::AtomicU64,
    ) {
        loop {
            let mut header = [0u8; 4];
            if conn.read_exact(&mut header).is_err() {
                return;
            }
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            if conn.read_exact(&mut body).is_err() {
                return;
            }
            let req = st::StorageRequest::decode(body.as_slice()).unwrap();
            requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mode = *mode.lock().unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(&req.file))
                .unwrap();
            let result = match (req.op.unwrap(), mode) {
                (Op::Len(_), Mode::HugeLength) => Answer::Length(1 << 62),
                (Op::Len(_), _) => Answer::Length(file.metadata().unwrap().len()),
                (Op::Read(r), _) => {
                    let mut buf = vec![0u8; r.length as usize];
                    let mut n = 0;
                    while n < buf.len() {
                        match file.read_at(&mut buf[n..], r.offset + n as u64).unwrap() {
                            0 => break,
                            k => n += k,
                        }
                    }
                    buf.truncate(n);
                    if mode == Mode::LongRead {
                        buf = vec![7u8; r.length as usize + 1];
                    }
                    Answer::Data(buf)
                }
                (_, Mode::DropWrites) => Answer::Done(st::Done {}),
                (Op::Write(w), _) => {
                    file.write_all_at(&w.data, w.offset).unwrap();
                    Answer::Done(st::Done {})
                }
                (Op::SetLen(s), _) => {
                    file.set_len(s.length).unwrap();
                    Answer::Done(st::Done {})
                }
                (Op::Sync(_), _) => {
                    file.sync_all().unwrap();
                    Answer::Done(st::Done {})
                }
            };
            let id = if mode == Mode::WrongId { req.request_id + 1000 } else { req.request_id };
            let frame = match mode {
                Mode::Close => return,
                Mode::Garbage => vec![0, 0, 0, 3, 0xff, 0xff, 0xff],
                Mode::HugeFrame => vec![0xff, 0xff, 0xff, 0xff],
                _ => wallet_proto::encode_frame(&st::StorageResponse {
                    request_id: id,
                    result: Some(result),
                })
                .unwrap(),
            };
            if conn.write_all(&frame).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake_host::*, *};

    fn host(dir: &std::path::Path) -> (FakeHost, HostStorage) {
        let h = FakeHost::start(&dir.join("host"), &dir.join("storage.sock"));
        let s = HostStorage::connect(HostAddress::Unix(h.socket.clone()), Duration::from_secs(5))
            .unwrap()
            .with_limits(Duration::from_secs(2), 64 << 20);
        (h, s)
    }

    #[test]
    fn addresses_parse_with_the_parent_cid_by_default() {
        assert_eq!(
            HostAddress::parse("unix:/tmp/s", 3).unwrap(),
            HostAddress::Unix("/tmp/s".into())
        );
        assert_eq!(
            HostAddress::parse("vsock:7:5000", 3).unwrap(),
            HostAddress::Vsock { cid: 7, port: 5000 }
        );
        assert_eq!(
            HostAddress::parse("vsock:5000", 9).unwrap(),
            HostAddress::Vsock { cid: 9, port: 5000 }
        );
        for bad in ["", "unix:", "/tmp/s", "vsock:", "vsock:x", "vsock:1:2:3", "vsock:-1", "tcp:1"]
        {
            assert!(HostAddress::parse(bad, 3).is_err(), "{bad:?}");
        }
        assert_eq!(HostAddress::Vsock { cid: 3, port: 1 }.to_string(), "vsock:3:1");
    }

    #[test]
    fn a_remote_file_round_trips_in_chunks_and_only_whitelisted_names_exist() {
        let dir = tempfile::tempdir().unwrap();
        let (_h, s) = host(dir.path());
        assert!(s.file("../etc/passwd").is_err());
        assert!(s.file("sealing.key").is_err());
        let f = s.file("spends.journal").unwrap();
        assert_eq!(f.size().unwrap(), 0);
        assert!(f.read_all().unwrap().is_empty());
        // Larger than a frame: written and read in pieces.
        let big: Vec<u8> = (0..3 * MAX_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&big, 5).unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.size().unwrap(), big.len() as u64 + 5);
        let all = f.read_all().unwrap();
        assert_eq!(&all[5..], big.as_slice());
        assert_eq!(std::fs::read(dir.path().join("host/spends.journal")).unwrap(), all);
        let mut buf = [0u8; 10];
        assert_eq!(f.read_at(&mut buf, all.len() as u64 - 4).unwrap(), 4);
        assert_eq!(f.read_at(&mut buf, all.len() as u64 + 100).unwrap(), 0);
        f.set_len(6).unwrap();
        f.sync_all().unwrap();
        assert_eq!(f.read_all().unwrap(), vec![0, 0, 0, 0, 0, 0]);
    }

    /// Writes are queued, coalesced and sent before anything else on the file: a round of many
    /// appends costs one write request, and reads see every write made before them.
    #[test]
    fn writes_are_sent_behind_coalesced_and_before_any_read_or_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (h, s) = host(dir.path());
        let f = s.file("spends.journal").unwrap();
        let before = h.requests.load(Ordering::SeqCst);
        for i in 0..100u8 {
            f.write_all_at(&[i; 100], u64::from(i) * 100).unwrap();
        }
        assert_eq!(h.requests.load(Ordering::SeqCst), before, "queued");
        let mut buf = [0u8; 100];
        assert_eq!(f.read_at(&mut buf, 9_900).unwrap(), 100, "a read sees queued writes");
        assert_eq!(buf, [99u8; 100]);
        assert_eq!(h.requests.load(Ordering::SeqCst), before + 2, "one write, then the read");
        f.write_all_at(b"tail", 10_000).unwrap();
        f.sync_data().unwrap();
        assert_eq!(std::fs::read(dir.path().join("host/spends.journal")).unwrap().len(), 10_004);
        // A large queue is sent by the write that fills it.
        let big = vec![5u8; FLUSH_AT];
        let n = h.requests.load(Ordering::SeqCst);
        f.write_all_at(&big, 20_000).unwrap();
        assert!(h.requests.load(Ordering::SeqCst) > n, "sent without waiting for a sync");
        f.sync_data().unwrap();
    }

    #[test]
    fn nothing_answers_within_the_wait_and_the_error_says_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let addr = HostAddress::Unix(dir.path().join("none.sock"));
        let t = Instant::now();
        let e = HostStorage::connect(addr, Duration::from_millis(300)).unwrap_err().to_string();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(e.contains("no storage server answered"), "{e}");
        assert!(e.contains("wallet-gateway --serve-storage unix:"), "{e}");
    }

    /// Each way a hostile host can answer fails the call closed, with a sentence, without a
    /// panic and without allocating what the host claims.
    #[test]
    fn a_hostile_host_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (h, s) = host(dir.path());
        let f = s.file("audit.log").unwrap();
        f.write_all_at(b"line\n", 0).unwrap();
        f.sync_data().unwrap();

        h.set(Mode::HugeLength);
        let e = f.read_all().unwrap_err().to_string();
        assert!(e.contains("more than the") && e.contains("limit"), "{e}");
        h.set(Mode::LongRead);
        let e = f.read_all().unwrap_err().to_string();
        assert!(e.contains("malformed answer"), "{e}");
        for (mode, words) in [
            (Mode::Garbage, "malformed answer"),
            (Mode::HugeFrame, "oversized frame"),
            (Mode::Close, "closed the connection"),
            (Mode::WrongId, "not in flight"),
        ] {
            // Nothing unsynced: the client may reconnect (to a host still hostile).
            h.set(mode);
            let e = f.size().unwrap_err().to_string();
            assert!(e.contains(words), "{mode:?}: {e}");
            h.set(Mode::Honest);
            assert_eq!(f.size().unwrap(), 5, "{mode:?}: reconnected once clean");
        }
        // Lost while clean, then a write: the write reconnects (it does not count against itself).
        h.set(Mode::Close);
        assert!(f.size().is_err());
        h.set(Mode::Honest);
        f.write_all_at(b"ok\n", 5).unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.size().unwrap(), 8);
        // A write whose answer never came: its effect is unknown, so the storage is given up
        // for good, even once the host behaves again.
        // (Writes are queued: the failure shows at the sync that sends them.)
        h.set(Mode::Close);
        f.write_all_at(b"more\n", 8).unwrap();
        assert!(f.sync_data().is_err());
        h.set(Mode::Honest);
        let e = f.size().unwrap_err().to_string();
        assert!(e.contains("earlier write failed") && e.contains("restart the enclave"), "{e}");
        assert!(f.write_all_at(b"x", 0).is_err(), "no write after a failed one");
        let other = s.file("commit.head").unwrap();
        let e = other.size().unwrap_err().to_string();
        assert!(e.contains("not confirmed durable") && e.contains("restart the enclave"), "{e}");
    }

    #[test]
    fn a_silent_host_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("silent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let held = std::thread::spawn(move || {
            let (c, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(1));
            drop(c);
        });
        let s = HostStorage::connect(HostAddress::Unix(sock), Duration::from_secs(1))
            .unwrap()
            .with_limits(Duration::from_millis(300), 1 << 20);
        let f = s.file("commit.head").unwrap();
        let e = f.size().unwrap_err().to_string();
        assert!(e.contains("no answer from the host"), "{e}");
        held.join().unwrap();
    }
}
