//! Host<->enclave transport: length-prefixed protobuf frames over a Unix socket (simulated) or
//! vsock (Nitro). Connection handling is generic over `AsyncRead + AsyncWrite`, so tests drive it
//! over in-memory pipes.
//!
//! Many requests share one connection: each is handled in its own task and answered when done,
//! tagged with its request id. Oversized frames are refused before allocation and end the
//! connection (the stream can no longer be trusted to be in sync).
//!
//! Bounded resources ([`Limits`]): no peer, however it misbehaves, can make the enclave exit.
//! * At most [`Limits::max_connections`] connections are served at once; one accepted past that
//!   is closed at once (logged at warn, at most once a second with a count).
//! * At most [`Limits::max_in_flight_per_connection`] requests are handled at once per
//!   connection, and at most [`Limits::max_in_flight_bytes`] bytes of request frames across all
//!   connections. Past either, the enclave stops reading that connection until a request
//!   finishes: backpressure, not an error (the peer's writes block; nothing is refused, so no
//!   reason code is needed and a well-behaved gateway never notices).
//! * A connection with nothing in flight that sends no complete frame for
//!   [`Limits::idle_timeout`] is closed (the gateway reconnects on its next call).
//! * An accept error (`EMFILE`, `ENFILE`, `ENOBUFS`, ...) is logged and retried after
//!   [`Limits::accept_backoff`]; it never ends the accept loop.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
};
use wallet_proto::{
    enclave::v1::{self as en, enclave_response::Body as Resp, ErrorCode},
    encode_frame,
    frame::{read_frame, write_joined, ReadError, MAX_FRAME},
    Reason,
};

use crate::service::Enclave;

/// Default cap on concurrent connections (the gateway normally holds one).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default cap on requests handled at once on one connection (the gateway keeps at most as many
/// in flight, so it never meets the enclave's backpressure).
pub const DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;
/// Default cap on the bytes of request frames being handled, all connections together.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Default time after which a connection with nothing in flight and no new frame is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default pause after a failed `accept` (for example `EMFILE`) before accepting again.
pub const DEFAULT_ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Resource limits of the enclave's listener. [`Limits::default`] holds the `DEFAULT_*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; one accepted past that is closed at once.
    pub max_connections: usize,
    /// Requests handled at once on one connection; past that, the connection is not read until
    /// one finishes.
    pub max_in_flight_per_connection: usize,
    /// Bytes of request frames handled at once, all connections; past that, no connection is
    /// read until a request finishes. Raised to one maximal frame if smaller.
    pub max_in_flight_bytes: usize,
    /// A connection with nothing in flight that sends no complete frame for this long is closed.
    pub idle_timeout: Duration,
    /// Pause after a failed `accept` before accepting again.
    pub accept_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight_per_connection: DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            accept_backoff: DEFAULT_ACCEPT_BACKOFF,
        }
    }
}

/// What the connections of one listener share: the connection slots and the byte budget.
#[derive(Debug, Clone)]
struct Shared {
    limits: Limits,
    connections: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    bytes_cap: usize,
}

impl Shared {
    fn new(limits: Limits) -> Self {
        let bytes_cap = limits.max_in_flight_bytes.clamp(MAX_FRAME, Semaphore::MAX_PERMITS);
        Self {
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            bytes: Arc::new(Semaphore::new(bytes_cap)),
            bytes_cap,
        }
    }
}

/// Serves one connection until the peer closes it or sends a bad frame, with the default
/// [`Limits`] (a byte budget of its own; listeners share one across their connections).
pub async fn serve_connection<S>(stream: S, enclave: Arc<Enclave>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    serve_limited(stream, enclave, Shared::new(Limits::default()), None).await;
}

/// Serves one connection within `shared`'s limits; `_slot` is its connection slot, released
/// when the connection ends.
async fn serve_limited<S>(
    stream: S,
    enclave: Arc<Enclave>,
    shared: Shared,
    _slot: Option<OwnedSemaphorePermit>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let limits = shared.limits;
    let per_conn = limits.max_in_flight_per_connection.max(1);
    let in_flight = Arc::new(Semaphore::new(per_conn));
    let (rd, mut wr) = tokio::io::split(stream);
    // Buffered: several frames arriving together cost one read.
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(per_conn);
    let writer = tokio::spawn(async move {
        // The answers ready together leave in one write (one system call, and the gateway's
        // buffered reader takes them in one read).
        let mut batch = Vec::new();
        while let Some(frame) = rx.recv().await {
            if write_joined(&mut wr, &mut batch, frame, || rx.try_recv().ok()).await.is_err() {
                break;
            }
        }
    });
    loop {
        // Backpressure: no more reading until one of this connection's requests finishes.
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let read = {
            let read = read_frame(&mut rd);
            tokio::pin!(read);
            loop {
                tokio::select! {
                    r = &mut read => break Some(r),
                    () = tokio::time::sleep(limits.idle_timeout) => {
                        // Only this loop's own permit is out: nothing in flight.
                        if in_flight.available_permits() + 1 >= per_conn {
                            break None;
                        }
                    }
                }
            }
        };
        let buf = match read {
            Some(Ok(Some(buf))) => buf,
            Some(Ok(None) | Err(ReadError::Io(_))) => break,
            Some(Err(ReadError::Frame(e))) => {
                tracing::warn!(error = %e, "closing connection on an oversized frame");
                break;
            }
            None => {
                tracing::info!(idle = ?limits.idle_timeout, "closing an idle connection");
                break;
            }
        };
        // The shared byte budget; a frame is at most MAX_FRAME, never above the budget.
        let want = u32::try_from(buf.len().clamp(1, shared.bytes_cap)).unwrap_or(u32::MAX);
        let Ok(bytes) = Arc::clone(&shared.bytes).acquire_many_owned(want).await else { break };
        let tx = tx.clone();
        let enclave = Arc::clone(&enclave);
        tokio::spawn(async move {
            let resp = match en::EnclaveRequest::decode(buf.as_slice()) {
                Ok(req) => {
                    drop(buf);
                    // Boxed: the payment path's state machine is tens of kilobytes, and tokio
                    // copies a spawned future whole (into its task cell, and again when the task
                    // finishes); this task then holds only the box.
                    Box::pin(enclave.handle(req)).await
                }
                Err(e) => en::EnclaveResponse {
                    answer_signature: Vec::new(),
                    request_id: 0,
                    body: Some(Resp::Error(en::EnclaveError {
                        code: ErrorCode::InvalidArgument.into(),
                        reason: Reason::MalformedFrame.as_str().into(),
                        message: format!("frame is not an EnclaveRequest: {e}"),
                    })),
                },
            };
            // The request is handled: its bytes no longer count. Its slot on this connection
            // is held until the answer is queued, so a peer that never reads its answers
            // stops being read itself.
            drop(bytes);
            match encode_frame(&resp) {
                Ok(frame) => {
                    let _ = tx.send(frame).await;
                }
                Err(e) => tracing::error!(error = %e, "response too large to send"),
            }
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// Rate-limited warnings: at most one a second, with how many were folded into it.
#[derive(Debug)]
struct Throttle {
    last: Option<Instant>,
    folded: u64,
}

impl Throttle {
    const fn new() -> Self {
        Self { last: None, folded: 0 }
    }

    /// Whether to log now, and how many events since the last line (this one included).
    fn tick(&mut self) -> Option<u64> {
        self.folded += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.folded))
    }
}

/// The accept loop's bookkeeping, common to the Unix and vsock listeners.
#[derive(Debug)]
struct Gate {
    shared: Shared,
    refused: Throttle,
    failed: Throttle,
}

impl Gate {
    fn new(limits: Limits) -> Self {
        Self { shared: Shared::new(limits), refused: Throttle::new(), failed: Throttle::new() }
    }

    /// Serves an accepted connection if a slot is free; closes it at once otherwise.
    fn admit<S>(&mut self, stream: S, enclave: &Arc<Enclave>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        match Arc::clone(&self.shared.connections).try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(serve_limited(
                    stream,
                    Arc::clone(enclave),
                    self.shared.clone(),
                    Some(slot),
                ));
            }
            Err(_) => {
                drop(stream);
                if let Some(n) = self.refused.tick() {
                    tracing::warn!(
                        max_connections = self.shared.limits.max_connections,
                        refused = n,
                        "connection limit reached: closing new connections"
                    );
                }
            }
        }
    }

    /// Logs a failed `accept` and waits before the next one. Never fatal: a peer that
    /// exhausts descriptors must not end the enclave.
    async fn accept_failed(&mut self, e: &std::io::Error) {
        if let Some(n) = self.failed.tick() {
            tracing::error!(error = %e, failures = n, backoff = ?self.shared.limits.accept_backoff, "accept failed; retrying");
        }
        tokio::time::sleep(self.shared.limits.accept_backoff).await;
    }
}

/// Listens on a Unix socket (0600) and serves every connection, within the default
/// [`Limits`].
///
/// # Errors
/// When the socket cannot be bound.
pub async fn serve_unix(path: &Path, enclave: Arc<Enclave>) -> std::io::Result<()> {
    serve_unix_with(path, enclave, Limits::default()).await
}

/// Listens on a Unix socket (0600) and serves every connection within `limits`. Returns only
/// when the socket cannot be bound: accept errors are logged and retried.
///
/// # Errors
/// When the socket cannot be bound.
pub async fn serve_unix_with(
    path: &Path,
    enclave: Arc<Enclave>,
    limits: Limits,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), ?limits, "listening");
    let mut gate = Gate::new(limits);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => gate.admit(stream, &enclave),
            Err(e) => gate.accept_failed(&e).await,
        }
    }
}

/// Listens on vsock (Nitro) and serves every connection within the default [`Limits`]. Never
/// used on development machines.
///
/// # Errors
/// When the port cannot be bound.
#[cfg(target_os = "linux")]
pub async fn serve_vsock(port: u32, enclave: Arc<Enclave>) -> std::io::Result<()> {
    let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
        tokio_vsock::VMADDR_CID_ANY,
        port,
    ))?;
    let limits = Limits::default();
    tracing::info!(port, ?limits, "listening on vsock");
    let mut gate = Gate::new(limits);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => gate.admit(crate::smallwrites::SmallWrites(stream), &enclave),
            Err(e) => gate.accept_failed(&e).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::UnixStream,
    };
    use wallet_proto::gateway::v1::GetStatusRequest;

    fn status_frame(id: u64) -> Vec<u8> {
        encode_frame(&en::EnclaveRequest {
            challenge: Vec::new(),
            protocol_version: wallet_proto::ENCLAVE_PROTOCOL_VERSION,
            request_id: id,
            body: Some(en::enclave_request::Body::GetStatus(GetStatusRequest {})),
        })
        .expect("frame")
    }

    /// Sends `n` status requests at once on `conn` and reads their `n` answers.
    async fn statuses(conn: &mut UnixStream, first: u64, n: u64) {
        let mut out = Vec::new();
        for id in first..first + n {
            out.extend(status_frame(id));
        }
        conn.write_all(&out).await.expect("write");
        let mut ids = Vec::new();
        for _ in 0..n {
            let buf = tokio::time::timeout(Duration::from_secs(20), read_frame(conn))
                .await
                .expect("answered in time")
                .expect("frame")
                .expect("not closed");
            let resp = en::EnclaveResponse::decode(buf.as_slice()).expect("response");
            assert!(matches!(resp.body, Some(Resp::Status(_))), "{resp:?}");
            ids.push(resp.request_id);
        }
        ids.sort_unstable();
        assert_eq!(ids, (first..first + n).collect::<Vec<_>>());
    }

    /// Whether the enclave closed `conn` (EOF or reset) within 10 s.
    async fn closed(conn: &mut UnixStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), conn.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// The attack of issue 9 item 4: a flood of idle connections far past the cap. The connection
    /// already served keeps its answers, connections past the cap are closed at once, the accept
    /// loop lives on, and freed slots are usable again. Per-connection backpressure does not
    /// deadlock: more requests than the in-flight cap on one connection are all answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_flood_is_bounded_and_the_legitimate_peer_is_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let enclave =
            Arc::new(crate::open_simulated(&dir.path().join("data")).await.expect("enclave"));
        let sock = dir.path().join("e.sock");
        let limits = Limits {
            max_connections: 8,
            max_in_flight_per_connection: 4,
            max_in_flight_bytes: 0, // raised to one frame: every request waits its turn
            idle_timeout: Duration::from_secs(600),
            accept_backoff: Duration::from_millis(50),
        };
        let server = tokio::spawn({
            let (sock, enclave) = (sock.clone(), Arc::clone(&enclave));
            async move { serve_unix_with(&sock, enclave, limits).await }
        });
        while !sock.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut legit = UnixStream::connect(&sock).await.expect("connect");
        statuses(&mut legit, 1, 50).await;

        let mut flood = Vec::new();
        for _ in 0..2_000 {
            match UnixStream::connect(&sock).await {
                Ok(c) => flood.push(c),
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        assert!(flood.len() > 1_000, "only {} connections opened", flood.len());
        // The legitimate connection is still served, with many requests in flight.
        statuses(&mut legit, 100, 50).await;
        // Past the cap (8, one of them the legitimate peer): closed by the enclave.
        let mut refused = 0;
        for c in flood.iter_mut().rev().take(100) {
            refused += usize::from(closed(c).await);
        }
        assert_eq!(refused, 100, "connections past the cap are closed");
        assert!(!server.is_finished(), "the accept loop must never end");

        // The flood goes away: a new peer gets a slot and answers.
        drop(flood);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut later = UnixStream::connect(&sock).await.expect("connect");
        statuses(&mut later, 1, 10).await;
        statuses(&mut legit, 200, 10).await;
        server.abort();
    }

    /// A connection that sends nothing is closed after the idle timeout; one with requests is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let enclave =
            Arc::new(crate::open_simulated(&dir.path().join("data")).await.expect("enclave"));
        let sock = dir.path().join("e.sock");
        let limits = Limits { idle_timeout: Duration::from_millis(500), ..Limits::default() };
        let server = tokio::spawn({
            let sock = sock.clone();
            async move { serve_unix_with(&sock, enclave, limits).await }
        });
        while !sock.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut idle = UnixStream::connect(&sock).await.expect("connect");
        let mut busy = UnixStream::connect(&sock).await.expect("connect");
        // Busy for three times the idle timeout: never closed.
        for i in 0..15 {
            statuses(&mut busy, i * 10, 3).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(closed(&mut idle).await, "an idle connection is closed");
        server.abort();
    }
}
