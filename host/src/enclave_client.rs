//! The gateway's links to the enclave: one multiplexed connection per link, reconnected on
//! demand, to an [`EnclaveAddress`] (a Unix socket in simulated mode, vsock on Nitro). Requests
//! are tagged with ids; responses may come back in any order. Frames are
//! [`wallet_proto::frame`]'s, read with [`read_frame`].
//!
//! Bounded: at most [`EnclaveClient::max_in_flight`] requests are in flight on a link (default
//! [`DEFAULT_MAX_IN_FLIGHT`], the enclave's own per-connection cap, so the enclave never has to
//! push back on a healthy gateway). A call that finds no free slot within the queue wait (default
//! [`DEFAULT_QUEUE_WAIT`]) fails at once with `UNAVAILABLE` / `ENCLAVE_UNAVAILABLE` and a message
//! saying the gateway is saturated; a flood of gRPC calls therefore queues briefly and is shed,
//! instead of piling up without bound.
//!
//! **Sent or not.** [`EnclaveClient::send`] says how a call failed with a [`CallError`]:
//! [`CallError::NotSent`] only when the request frame certainly never reached the link's writer
//! (the link could not connect, its connection was already closed, or no in-flight slot freed
//! within the queue wait); [`CallError::Failed`] for everything else, in particular every failure
//! after the frame was handed to the writer, when the enclave may have received the request and
//! acted on it (signed a payment) even though its answer is lost.
//!
//! **Several enclaves of one group.** An [`EnclaveGroup`] holds one link per member (copies of
//! one sealed state serving the same wallets, with one identity key) and routes each call by
//! [`route_key`]: the members in [`ring_order`] of the key (FNV-1a 64 of the key's UTF-8 bytes,
//! modulo the number of members, then the next members in list order, wrapping), members that
//! could not be connected within the last [`DEFAULT_RETRY_AFTER`] moved to the end. A call goes
//! on to the next member only on [`CallError::NotSent`]; once the frame may have been sent it is
//! never sent elsewhere (a second member would sign the same payment again: the agent would pay
//! twice for one request), and the caller gets `UNAVAILABLE` / `ENCLAVE_UNAVAILABLE` (or
//! `DEADLINE_EXCEEDED` / `ENCLAVE_TIMEOUT`) as from a single link; the agent's retry with the same
//! idempotency key decides.

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, oneshot, Mutex, Semaphore},
};
use tonic::Status;
use wallet_proto::{
    enclave::v1::{
        enclave_request::Body as Req, enclave_response::Body as Resp, EnclaveRequest,
        EnclaveResponse,
    },
    encode_frame,
    frame::{read_frame, write_joined},
    Reason, ENCLAVE_PROTOCOL_VERSION,
};

use crate::gateway::reason_status;

/// Where the enclave listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnclaveAddress {
    /// A Unix socket (the simulated enclave, or a vsock-to-Unix bridge).
    Unix(PathBuf),
    /// An `AF_VSOCK` address (Nitro): context id and port.
    Vsock {
        /// Context id of the enclave.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A guest's vsock port behind a Unix socket that speaks Firecracker's "hybrid vsock"
    /// handshake (`CONNECT PORT\n`, answered `OK N\n`), as `vhost-device-vsock --vm
    /// ...,uds-path=PATH` does for a VM under QEMU (the emulated Nitro enclave).
    HybridVsock {
        /// The backend's Unix socket (`uds-path`).
        path: PathBuf,
        /// The guest's port.
        port: u32,
    },
}

/// Why a string is not an [`EnclaveAddress`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad enclave address {0:?}: expected unix:/path, a socket path, vsock:CID:PORT or hybrid-vsock:/path:PORT")]
pub struct AddressError(String);

impl FromStr for EnclaveAddress {
    type Err = AddressError;

    /// `unix:/path`, a bare path, `vsock:CID:PORT` or `hybrid-vsock:/path:PORT` (decimal).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddressError(s.to_owned());
        if let Some(rest) = s.strip_prefix("hybrid-vsock:") {
            let (path, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            if path.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let port = port.parse().map_err(|_| bad())?;
            return Ok(Self::HybridVsock { path: PathBuf::from(path), port });
        }
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
            let num = |t: &str| {
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                t.parse::<u32>().map_err(|_| bad())
            };
            return Ok(Self::Vsock { cid: num(cid)?, port: num(port)? });
        }
        let path = s.strip_prefix("unix:").unwrap_or(s);
        if path.is_empty() {
            return Err(bad());
        }
        Ok(Self::Unix(PathBuf::from(path)))
    }
}

impl fmt::Display for EnclaveAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Self::HybridVsock { path, port } => write!(f, "hybrid-vsock:{}:{port}", path.display()),
        }
    }
}

impl From<PathBuf> for EnclaveAddress {
    fn from(p: PathBuf) -> Self {
        Self::Unix(p)
    }
}

/// A connected byte stream to the enclave.
trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

impl EnclaveAddress {
    async fn connect(&self) -> std::io::Result<Box<dyn Link>> {
        match self {
            Self::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
            #[cfg(target_os = "linux")]
            Self::Vsock { cid, port } => Ok(Box::new(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
            )),
            #[cfg(not(target_os = "linux"))]
            Self::Vsock { .. } => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "vsock is only available on Linux",
            )),
            Self::HybridVsock { path, port } => Ok(Box::new(
                hybrid_vsock_connect(tokio::net::UnixStream::connect(path).await?, *port).await?,
            )),
        }
    }
}

/// Longest handshake answer read (`OK 4294967295\n` is 14 bytes).
const HYBRID_VSOCK_MAX_ANSWER: usize = 32;

/// The hybrid vsock handshake on a connected Unix stream: sends `CONNECT port\n` and reads the
/// answer byte by byte (nothing past its newline belongs to it), which must be `OK <n>\n`.
async fn hybrid_vsock_connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    port: u32,
) -> std::io::Result<S> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let refused = |what: String| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, what);
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut answer = Vec::new();
    let read = async {
        loop {
            let b = stream.read_u8().await?;
            if b == b'\n' {
                return Ok::<_, std::io::Error>(());
            }
            answer.push(b);
            if answer.len() > HYBRID_VSOCK_MAX_ANSWER {
                return Err(refused("hybrid vsock: answer too long".into()));
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .map_err(|_| refused(format!("hybrid vsock: no answer to CONNECT {port}")))??;
    let answer = String::from_utf8_lossy(&answer);
    let port_ok = answer
        .strip_prefix("OK ")
        .is_some_and(|n| !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()));
    if !port_ok {
        return Err(refused(format!("hybrid vsock: CONNECT {port} answered {answer:?} (is the enclave listening on that port?)")));
    }
    Ok(stream)
}

type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<EnclaveResponse>>>>;

struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    dead: Arc<AtomicBool>,
}

impl Conn {
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::SeqCst) && !self.tx.is_closed()
    }
}

/// Marks a connection dead, then fails every waiter (their senders drop). The order matters:
/// a caller that registers after the clear sees `dead` and fails at once.
fn kill(dead: &AtomicBool, pending: &Pending) {
    dead.store(true, Ordering::SeqCst);
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
}

struct Cleanup<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

/// Default cap on requests in flight to the enclave (equal to the enclave's per-connection cap).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Default time a call waits for a free in-flight slot before it is refused.
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// Client for the enclave.
pub struct EnclaveClient {
    address: EnclaveAddress,
    conn: Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    queue_wait: Duration,
}

impl std::fmt::Debug for EnclaveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnclaveClient").field("address", &self.address).finish_non_exhaustive()
    }
}

impl EnclaveClient {
    /// A client for the enclave listening at `address`. Connects on first use.
    #[must_use]
    pub fn new(address: impl Into<EnclaveAddress>) -> Self {
        Self {
            address: address.into(),
            conn: Mutex::new(None),
            next_id: AtomicU64::new(1),
            timeout: Duration::from_secs(30),
            in_flight: Arc::new(Semaphore::new(DEFAULT_MAX_IN_FLIGHT)),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            queue_wait: DEFAULT_QUEUE_WAIT,
        }
    }

    /// The same, with at most `max` requests in flight to the enclave (at least 1; default
    /// [`DEFAULT_MAX_IN_FLIGHT`]).
    #[must_use]
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        self.in_flight = Arc::new(Semaphore::new(max));
        self.max_in_flight = max;
        self
    }

    /// The same, refusing a call that waits longer than `wait` for an in-flight slot (default
    /// [`DEFAULT_QUEUE_WAIT`]).
    #[must_use]
    pub fn with_queue_wait(mut self, wait: Duration) -> Self {
        self.queue_wait = wait;
        self
    }

    /// The cap on requests in flight to the enclave.
    #[must_use]
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The same, giving up on a request after `timeout` (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where the enclave is.
    #[must_use]
    pub fn address(&self) -> &EnclaveAddress {
        &self.address
    }

    async fn connection(&self) -> Result<Arc<Conn>, CallError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.alive()) {
            return Ok(Arc::clone(c));
        }
        // Nothing of the request has been written: a failure here is `NotSent`.
        let stream = self.address.connect().await.map_err(|e| {
            CallError::NotSent(NotSent {
                cause: NotSentCause::Unreachable,
                detail: format!("cannot reach the enclave at {}: {e}", self.address),
            })
        })?;
        let (rd, mut wr) = tokio::io::split(stream);
        // Buffered: several responses arriving together cost one read.
        let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let (writer_dead, writer_pending) = (Arc::clone(&dead), Arc::clone(&pending));
        tokio::spawn(async move {
            // Requests queued together leave in one write.
            let mut batch = Vec::new();
            while let Some(frame) = rx.recv().await {
                if write_joined(&mut wr, &mut batch, frame, || rx.try_recv().ok()).await.is_err() {
                    break;
                }
            }
            kill(&writer_dead, &writer_pending);
        });
        let (reader_dead, reader_pending) = (Arc::clone(&dead), Arc::clone(&pending));
        tokio::spawn(async move {
            // Ends on a clean close, a broken stream, an oversized frame or an undecodable one.
            while let Ok(Some(buf)) = read_frame(&mut rd).await {
                let Ok(resp) = EnclaveResponse::decode(buf.as_slice()) else { break };
                let waiter =
                    reader_pending.lock().ok().and_then(|mut p| p.remove(&resp.request_id));
                if let Some(w) = waiter {
                    let _ = w.send(resp);
                }
            }
            kill(&reader_dead, &reader_pending);
        });
        let conn = Arc::new(Conn { tx, pending, dead });
        *guard = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Sends one request and waits for its response.
    ///
    /// # Errors
    /// `Unavailable` when the enclave cannot be reached or drops the connection, or when the
    /// link stays saturated (all in-flight slots taken) for the queue wait; `InvalidArgument`
    /// when the request is too large for a frame; `DeadlineExceeded` after the timeout.
    pub async fn call(&self, body: Req) -> Result<Resp, Status> {
        self.call_signed(Vec::new(), body).await.map(|(resp, _)| resp)
    }

    /// [`Self::call`] with the caller's challenge (`wallet_proto::answer`): returns the answer
    /// and the enclave's signature over it.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn call_signed(
        &self,
        challenge: Vec<u8>,
        body: Req,
    ) -> Result<(Resp, Vec<u8>), Status> {
        let mut request = EnclaveRequest {
            challenge,
            protocol_version: ENCLAVE_PROTOCOL_VERSION,
            request_id: 0,
            body: Some(body),
        };
        self.send(&mut request).await.map_err(Status::from)
    }

    /// Sends `request` on this link (setting its `request_id` and `protocol_version`; its
    /// challenge and body are left as they are, so the same request can be offered to another
    /// link after [`CallError::NotSent`]) and returns the answer and the enclave's signature.
    ///
    /// # Errors
    /// [`CallError::NotSent`] when the request frame certainly never reached this link's
    /// writer: no in-flight slot freed within the queue wait ([`NotSentCause::Saturated`]), the
    /// enclave could not be connected ([`NotSentCause::Unreachable`]), or the connection was
    /// closed before the frame was handed over ([`NotSentCause::LinkClosed`]).
    /// [`CallError::Failed`] otherwise: the frame was handed to the writer and the connection
    /// closed before the answer (`Unavailable`) or no answer came within the timeout
    /// (`DeadlineExceeded`) — the enclave may have acted on it —, or the request is too large for
    /// a frame (`InvalidArgument`), or the timeout passed while the enclave pushed back
    /// (`DeadlineExceeded`: not sent, but the call's time is spent).
    pub async fn send(&self, request: &mut EnclaveRequest) -> Result<(Resp, Vec<u8>), CallError> {
        let not_sent = |cause, detail: String| CallError::NotSent(NotSent { cause, detail });
        let failed =
            |code, reason, message: &str| CallError::Failed(reason_status(code, reason, message));
        let _slot = match tokio::time::timeout(self.queue_wait, self.in_flight.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) | Err(_) => {
                return Err(not_sent(
                    NotSentCause::Saturated,
                    format!(
                        "the gateway is saturated: {} requests already in flight to the enclave at {} and none finished within {} ms; retry later",
                        self.max_in_flight,
                        self.address,
                        self.queue_wait.as_millis()
                    ),
                ))
            }
        };
        request.request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.protocol_version = ENCLAVE_PROTOCOL_VERSION;
        let frame = encode_frame(&*request).map_err(|e| {
            failed(tonic::Code::InvalidArgument, Reason::RequestTooLarge, &e.to_string())
        })?;
        let conn = self.connection().await?;
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .map_err(|_| {
                failed(tonic::Code::Internal, Reason::Internal, "enclave client poisoned")
            })?
            .insert(request.request_id, tx);
        // Removes the waiter however this call ends (answered, failed, timed out, or cancelled
        // because the gRPC client went away), so waiters never pile up.
        let _cleanup = Cleanup { pending: &conn.pending, id: request.request_id };
        let closed = || {
            not_sent(
                NotSentCause::LinkClosed,
                format!("the enclave connection to {} closed", self.address),
            )
        };
        if conn.dead.load(Ordering::SeqCst) {
            return Err(closed());
        }
        let timed_out = || {
            failed(
                tonic::Code::DeadlineExceeded,
                Reason::EnclaveTimeout,
                "the enclave did not answer in time",
            )
        };
        // One deadline for queueing the frame (the enclave may push back) and the answer.
        let deadline = tokio::time::Instant::now() + self.timeout;
        // The point of no return. Until `send` completes the frame is ours: a closed channel
        // hands it back unwritten, and a `send` given up on (the deadline) never queued it
        // (tokio's `Sender::send` is cancel-safe). Once it completes, the writer may put it on
        // the wire at any moment, so every failure after this line is `Failed`, never
        // `NotSent`: the enclave may have signed.
        match tokio::time::timeout_at(deadline, conn.tx.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(closed()),
            Err(_) => return Err(timed_out()),
        }
        let resp = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => {
                return Err(failed(
                    tonic::Code::Unavailable,
                    Reason::EnclaveUnavailable,
                    &format!(
                        "the enclave connection to {} closed before it answered",
                        self.address
                    ),
                ))
            }
            Err(_) => return Err(timed_out()),
        };
        let signature = resp.answer_signature;
        let body = resp.body.ok_or_else(|| {
            failed(tonic::Code::Internal, Reason::Internal, "enclave sent an empty response")
        })?;
        Ok((body, signature))
    }
}

/// How a call on one link ([`EnclaveClient::send`]) failed: whether the request can have reached
/// the enclave. Decided in `send` at the points where it is known for sure (see
/// [`CallError::NotSent`]); never inferred from a message.
#[derive(Debug)]
pub enum CallError {
    /// The request frame certainly never reached the link's writer, for a reason of this link's
    /// own: another member of the group may take the request. Maps to `UNAVAILABLE` /
    /// `ENCLAVE_UNAVAILABLE`.
    NotSent(NotSent),
    /// Anything else. The request may have reached the enclave and taken effect (a payment
    /// signed whose answer was lost), or it failed for a reason every member would share (too
    /// large for a frame), or its time is spent. It must not be sent to another member.
    Failed(Status),
}

/// A request that certainly never reached the enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSent {
    /// Why.
    pub cause: NotSentCause,
    /// One sentence naming the link's address, for the caller.
    pub detail: String,
}

/// Why a request was not sent ([`CallError::NotSent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSentCause {
    /// The link could not connect (refused, no socket, vsock or handshake error): nothing was
    /// written. An [`EnclaveGroup`] tries this member last for a while.
    Unreachable,
    /// The link's connection was found closed before the frame was handed to its writer.
    LinkClosed,
    /// No in-flight slot freed within the queue wait: the frame was not even encoded.
    Saturated,
}

impl From<CallError> for Status {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NotSent(n) => {
                reason_status(tonic::Code::Unavailable, Reason::EnclaveUnavailable, &n.detail)
            }
            CallError::Failed(status) => status,
        }
    }
}

/// Default time a member that could not be connected is tried last (after every other member)
/// before it is preferred again.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a call is routed by ([`route_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKey<'a> {
    /// The session id of a call carrying one (agent calls and `RevokeSession`).
    Session(&'a str),
    /// The wallet id of an admin call carrying one.
    Wallet(&'a str),
    /// No key (or an empty one): the members in list order, from the first.
    Fixed,
}

/// The routing key of a request: the session id for `SignPayment`, `PreviewPayment`,
/// `GetBudget`, `ListPayments` and `RevokeSession`; the wallet id for `SetPolicy` (its policy's),
/// `GetPolicy`, `IssueSession`, `ListSessions`, `FreezeWallet`, `UnfreezeWallet` and
/// `ListApprovals`; [`RouteKey::Fixed`] for every other call and for an empty id.
#[must_use]
pub fn route_key(body: &Req) -> RouteKey<'_> {
    fn session(id: &str) -> RouteKey<'_> {
        if id.is_empty() {
            RouteKey::Fixed
        } else {
            RouteKey::Session(id)
        }
    }
    fn wallet(id: &str) -> RouteKey<'_> {
        if id.is_empty() {
            RouteKey::Fixed
        } else {
            RouteKey::Wallet(id)
        }
    }
    match body {
        Req::SignPayment(r) => session(&r.session_id),
        Req::PreviewPayment(r) => session(&r.session_id),
        Req::GetBudget(r) => session(&r.session_id),
        Req::ListPayments(r) => session(&r.session_id),
        Req::RevokeSession(r) => session(&r.session_id),
        Req::SetPolicy(r) => wallet(r.policy.as_ref().map_or("", |p| p.wallet_id.as_str())),
        Req::GetPolicy(r) => wallet(&r.wallet_id),
        Req::IssueSession(r) => wallet(&r.wallet_id),
        Req::ListSessions(r) => wallet(&r.wallet_id),
        Req::FreezeWallet(r) | Req::UnfreezeWallet(r) => wallet(&r.wallet_id),
        Req::ListApprovals(r) => wallet(&r.wallet_id),
        // Listed one by one, so that a new call needs a decision here.
        Req::CreateWallet(_)
        | Req::ListWallets(_)
        | Req::AddAsset(_)
        | Req::ListAssets(_)
        | Req::AddKyt(_)
        | Req::RemoveKyt(_)
        | Req::ListKyt(_)
        | Req::ImportKyt(_)
        | Req::GetStatus(_)
        | Req::AddAdmin(_)
        | Req::RemoveAdmin(_)
        | Req::ListAdmins(_)
        | Req::GetAuditHead(_)
        | Req::ListAudit(_)
        | Req::DecideApproval(_)
        | Req::GetAttestation(_)
        | Req::PrepareAnchor(_)
        | Req::ProvisionAnchor(_) => RouteKey::Fixed,
    }
}

/// 64-bit FNV-1a (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`): the routing hash,
/// fixed so that every gateway (and every restart of one) routes a key alike.
#[must_use]
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The members `0..n` in the order a call with `key` prefers them: the primary
/// `fnv1a_64(key) mod n` (member 0 for [`RouteKey::Fixed`]), then the next members in list
/// order, wrapping around.
#[must_use]
pub fn ring_order(key: RouteKey<'_>, n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let primary = match key {
        RouteKey::Session(id) | RouteKey::Wallet(id) => {
            // `n` fits in u64 and the remainder is below `n`: both conversions are lossless.
            usize::try_from(fnv1a_64(id.as_bytes()) % n as u64).unwrap_or(0)
        }
        RouteKey::Fixed => 0,
    };
    (0..n).map(|i| (primary + i) % n).collect()
}

/// One member of an [`EnclaveGroup`]: its link and whether it could be connected lately.
struct Member {
    link: Arc<EnclaveClient>,
    /// Set when a connect failed: the member is tried last until then. Cleared by an answer.
    retry_at: std::sync::Mutex<Option<Instant>>,
}

impl Member {
    fn health(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.retry_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.health().is_some_and(|t| now < t)
    }
}

/// The links to the members of one enclave group (copies of one sealed state that serve the same
/// wallets and sign with the same identity key), and the routing between them: see the module
/// documentation. With one member it behaves exactly as that member's [`EnclaveClient`].
pub struct EnclaveGroup {
    members: Vec<Member>,
    retry_after: Duration,
}

impl fmt::Debug for EnclaveGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnclaveGroup")
            .field("members", &self.members.iter().map(|m| m.link.address()).collect::<Vec<_>>())
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl From<EnclaveClient> for EnclaveGroup {
    fn from(link: EnclaveClient) -> Self {
        Self::new([Arc::new(link)])
    }
}

impl From<Arc<EnclaveClient>> for EnclaveGroup {
    fn from(link: Arc<EnclaveClient>) -> Self {
        Self::new([link])
    }
}

impl EnclaveGroup {
    /// A group of `links`, in the order given (the ring order of [`ring_order`]). An empty
    /// group answers every call with `UNAVAILABLE`.
    #[must_use]
    pub fn new(links: impl IntoIterator<Item = Arc<EnclaveClient>>) -> Self {
        let members = links
            .into_iter()
            .map(|link| Member { link, retry_at: std::sync::Mutex::new(None) })
            .collect();
        Self { members, retry_after: DEFAULT_RETRY_AFTER }
    }

    /// The same, trying a member that could not be connected last for `retry_after` (default
    /// [`DEFAULT_RETRY_AFTER`]).
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The members' addresses, in ring order.
    pub fn addresses(&self) -> impl Iterator<Item = &EnclaveAddress> {
        self.members.iter().map(|m| m.link.address())
    }

    /// How many members.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the group has no member.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The order in which a call with `body` tries the members now: [`ring_order`] of its
    /// [`route_key`], with the members that could not be connected in the last
    /// [`Self::with_retry_after`] moved to the end (in ring order among themselves).
    #[must_use]
    pub fn preference(&self, body: &Req) -> Vec<usize> {
        let now = Instant::now();
        let (up, down): (Vec<usize>, Vec<usize>) = ring_order(route_key(body), self.members.len())
            .into_iter()
            .partition(|&i| self.members.get(i).is_some_and(|m| !m.backing_off(now)));
        up.into_iter().chain(down).collect()
    }

    /// [`EnclaveClient::call`] on the group.
    ///
    /// # Errors
    /// As [`Self::call_signed`].
    pub async fn call(&self, body: Req) -> Result<Resp, Status> {
        self.call_signed(Vec::new(), body).await.map(|(resp, _)| resp)
    }

    /// Sends the request to the members in [`Self::preference`] order until one takes it: the
    /// next member is tried only after [`CallError::NotSent`]. Returns the answer and its
    /// signature.
    ///
    /// # Errors
    /// The first [`CallError::Failed`] as it is (never retried elsewhere: the request may have
    /// reached that member); when no member took the request, `UNAVAILABLE` /
    /// `ENCLAVE_UNAVAILABLE` — with one member its own message, with several a message naming
    /// every member tried and why.
    pub async fn call_signed(
        &self,
        challenge: Vec<u8>,
        body: Req,
    ) -> Result<(Resp, Vec<u8>), Status> {
        let order = self.preference(&body);
        let mut request = EnclaveRequest {
            challenge,
            protocol_version: ENCLAVE_PROTOCOL_VERSION,
            request_id: 0,
            body: Some(body),
        };
        let mut missed = Vec::new();
        for i in order {
            let Some(member) = self.members.get(i) else { continue };
            match member.link.send(&mut request).await {
                Ok(answer) => {
                    if member.health().take().is_some() && self.members.len() > 1 {
                        tracing::info!(enclave = %member.link.address(), "enclave group member reachable again");
                    }
                    return Ok(answer);
                }
                Err(CallError::Failed(status)) => return Err(status),
                Err(CallError::NotSent(n)) => {
                    if n.cause == NotSentCause::Unreachable {
                        let was_up =
                            member.health().replace(Instant::now() + self.retry_after).is_none();
                        if was_up && self.members.len() > 1 {
                            tracing::warn!(enclave = %member.link.address(), error = %n.detail, retry_after_ms = self.retry_after.as_millis(), "enclave group member unreachable: tried last for a while");
                        }
                    }
                    tracing::debug!(enclave = %member.link.address(), cause = ?n.cause, "request not sent to this member; trying the next");
                    missed.push(n);
                }
            }
        }
        Err(match missed.len() {
            0 => reason_status(
                tonic::Code::Unavailable,
                Reason::EnclaveUnavailable,
                "no enclave is configured",
            ),
            1 => reason_status(
                tonic::Code::Unavailable,
                Reason::EnclaveUnavailable,
                &missed.remove(0).detail,
            ),
            n => reason_status(
                tonic::Code::Unavailable,
                Reason::EnclaveUnavailable,
                &format!(
                    "none of the {n} enclaves of the group took the call (it reached none of them): {}",
                    missed.iter().map(|m| m.detail.as_str()).collect::<Vec<_>>().join("; ")
                ),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Parsing only: no AF_VSOCK socket is ever opened by the tests.
    #[test]
    fn addresses_parse_and_print() {
        let unix = |p: &str| EnclaveAddress::Unix(PathBuf::from(p));
        assert_eq!("unix:/run/e.sock".parse(), Ok(unix("/run/e.sock")));
        assert_eq!("/run/e.sock".parse(), Ok(unix("/run/e.sock")));
        assert_eq!("rel/e.sock".parse(), Ok(unix("rel/e.sock")));
        assert_eq!("vsock:3:5000".parse(), Ok(EnclaveAddress::Vsock { cid: 3, port: 5000 }));
        assert_eq!(
            "vsock:4294967295:1".parse(),
            Ok(EnclaveAddress::Vsock { cid: u32::MAX, port: 1 })
        );
        for bad in
            ["", "unix:", "vsock:", "vsock:3", "vsock:3:", "vsock::5", "vsock:x:5", "vsock:-1:5"]
        {
            assert!(bad.parse::<EnclaveAddress>().is_err(), "{bad:?}");
        }
        assert!("vsock:4294967296:1".parse::<EnclaveAddress>().is_err());
        assert!("vsock:+3:1".parse::<EnclaveAddress>().is_err());
        assert_eq!(
            "hybrid-vsock:/run/vm:4.vsock:5000".parse(),
            Ok(EnclaveAddress::HybridVsock { path: "/run/vm:4.vsock".into(), port: 5000 })
        );
        assert_eq!(
            EnclaveAddress::HybridVsock { path: "/r/v".into(), port: 1 }.to_string(),
            "hybrid-vsock:/r/v:1"
        );
        for bad in [
            "hybrid-vsock:",
            "hybrid-vsock:/p",
            "hybrid-vsock::5",
            "hybrid-vsock:/p:",
            "hybrid-vsock:/p:x",
            "hybrid-vsock:/p:-1",
        ] {
            assert!(bad.parse::<EnclaveAddress>().is_err(), "{bad}");
        }
        let err = "vsock:3".parse::<EnclaveAddress>().unwrap_err().to_string();
        assert!(err.contains("vsock:CID:PORT"), "{err}");
        for a in [unix("/run/e.sock"), EnclaveAddress::Vsock { cid: 16, port: 5000 }] {
            assert_eq!(a.to_string().parse(), Ok(a));
        }
        assert_eq!(EnclaveAddress::from(PathBuf::from("/x")), unix("/x"));
    }
    /// The handshake vhost-device-vsock's uds-path speaks: the stream carries the guest's bytes
    /// after `OK`, and anything else is refused.
    #[tokio::test]
    async fn hybrid_vsock_handshake() {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let backend = tokio::spawn(async move {
            for answer in ["OK 1073741824\n", "ERR no listener\n", "OK \n", "OK 12x\n"] {
                let (s, _) = listener.accept().await.unwrap();
                let mut s = tokio::io::BufReader::new(s);
                let mut line = String::new();
                s.read_line(&mut line).await.unwrap();
                assert_eq!(line, "CONNECT 5000\n");
                s.get_mut().write_all(answer.as_bytes()).await.unwrap();
                s.get_mut().write_all(b"guest-bytes").await.unwrap();
                let _ = s.get_mut().shutdown().await;
            }
        });
        let addr = EnclaveAddress::HybridVsock { path, port: 5000 };
        let mut link = addr.connect().await.unwrap();
        let mut rest = Vec::new();
        link.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"guest-bytes");
        let err = addr.connect().await.err().unwrap();
        assert!(err.to_string().contains("ERR no listener"), "{err}");
        for _ in 0..2 {
            assert!(addr.connect().await.is_err(), "a malformed OK is refused");
        }
        backend.await.unwrap();
    }
}
