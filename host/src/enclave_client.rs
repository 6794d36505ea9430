//! The gateway's link to the enclave: one multiplexed connection, reconnected on demand, to an
//! [`EnclaveAddress`] (a Unix socket in simulated mode, vsock on Nitro). Requests are tagged with
//! ids; responses may come back in any order. Frames are [`wallet_proto::frame`]'s, read with
//! [`read_frame`].
//!
//! Bounded: at most [`EnclaveClient::max_in_flight`] requests are in flight on the link (default
//! [`DEFAULT_MAX_IN_FLIGHT`], the enclave's own per-connection cap, so the enclave never has to
//! push back on a healthy gateway). A call that finds no free slot within the queue wait (default
//! [`DEFAULT_QUEUE_WAIT`]) fails at once with `UNAVAILABLE` / `ENCLAVE_UNAVAILABLE` and a message
//! saying the gateway is saturated; a flood of gRPC calls therefore queues briefly and is shed,
//! instead of piling up without bound.

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    sync::{mpsc, oneshot, Mutex, Semaphore},
};
use tonic::Status;
use wallet_proto::{
    enclave::v1::{
        enclave_request::Body as Req, enclave_response::Body as Resp, EnclaveRequest,
        EnclaveResponse,
    },
    encode_frame,
    frame::read_frame,
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

    async fn connection(&self) -> Result<Arc<Conn>, Status> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.alive()) {
            return Ok(Arc::clone(c));
        }
        let stream = self.address.connect().await.map_err(|e| {
            reason_status(
                tonic::Code::Unavailable,
                Reason::EnclaveUnavailable,
                &format!("cannot reach the enclave at {}: {e}", self.address),
            )
        })?;
        let (rd, mut wr) = tokio::io::split(stream);
        // Buffered: several responses arriving together cost one read.
        let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let (writer_dead, writer_pending) = (Arc::clone(&dead), Arc::clone(&pending));
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if wr.write_all(&frame).await.is_err() {
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
        let saturated = || {
            reason_status(
                tonic::Code::Unavailable,
                Reason::EnclaveUnavailable,
                &format!(
                    "the gateway is saturated: {} requests already in flight to the enclave and none finished within {} ms; retry later",
                    self.max_in_flight,
                    self.queue_wait.as_millis()
                ),
            )
        };
        let _slot = match tokio::time::timeout(self.queue_wait, self.in_flight.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) | Err(_) => return Err(saturated()),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&EnclaveRequest {
            challenge,
            protocol_version: ENCLAVE_PROTOCOL_VERSION,
            request_id: id,
            body: Some(body),
        })
        .map_err(|e| {
            reason_status(tonic::Code::InvalidArgument, Reason::RequestTooLarge, &e.to_string())
        })?;
        let conn = self.connection().await?;
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .map_err(|_| {
                reason_status(tonic::Code::Internal, Reason::Internal, "enclave client poisoned")
            })?
            .insert(id, tx);
        // Removes the waiter however this call ends (answered, failed, timed out, or cancelled
        // because the gRPC client went away), so waiters never pile up.
        let _cleanup = Cleanup { pending: &conn.pending, id };
        let closed = || {
            reason_status(
                tonic::Code::Unavailable,
                Reason::EnclaveUnavailable,
                "the enclave connection closed",
            )
        };
        if conn.dead.load(Ordering::SeqCst) {
            return Err(closed());
        }
        // One deadline for queueing the frame (the enclave may push back) and the answer.
        let exchange = async {
            conn.tx.send(frame).await.map_err(|_| None)?;
            rx.await.map_err(|_| Some(()))
        };
        let resp = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(None)) => return Err(closed()),
            Ok(Err(Some(()))) => {
                return Err(reason_status(
                    tonic::Code::Unavailable,
                    Reason::EnclaveUnavailable,
                    "the enclave connection closed before it answered",
                ))
            }
            Err(_) => {
                return Err(reason_status(
                    tonic::Code::DeadlineExceeded,
                    Reason::EnclaveTimeout,
                    "the enclave did not answer in time",
                ))
            }
        };
        let signature = resp.answer_signature;
        let body = resp.body.ok_or_else(|| {
            reason_status(tonic::Code::Internal, Reason::Internal, "enclave sent an empty response")
        })?;
        Ok((body, signature))
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
