//! The gateway's link to the enclave: one multiplexed connection (Unix socket in simulated mode),
//! reconnected on demand. Requests are tagged with ids; responses may come back in any order.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use prost::Message as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
    sync::{mpsc, oneshot, Mutex},
};
use tonic::Status;
use wallet_proto::{
    enclave::v1::{
        enclave_request::Body as Req, enclave_response::Body as Resp, EnclaveRequest,
        EnclaveResponse,
    },
    encode_frame, frame_len, ENCLAVE_PROTOCOL_VERSION,
};

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

/// Client for the enclave.
pub struct EnclaveClient {
    socket: PathBuf,
    conn: Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
    timeout: Duration,
}

impl std::fmt::Debug for EnclaveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnclaveClient").field("socket", &self.socket).finish_non_exhaustive()
    }
}

impl EnclaveClient {
    /// A client for the enclave listening on `socket`. Connects on first use.
    #[must_use]
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            conn: Mutex::new(None),
            next_id: AtomicU64::new(1),
            timeout: Duration::from_secs(30),
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, Status> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.alive()) {
            return Ok(Arc::clone(c));
        }
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            Status::unavailable(format!(
                "ENCLAVE_UNAVAILABLE: cannot reach the enclave at {}: {e}",
                self.socket.display()
            ))
        })?;
        let (rd, mut wr) = stream.into_split();
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
            loop {
                let mut header = [0u8; 4];
                if rd.read_exact(&mut header).await.is_err() {
                    break;
                }
                let Ok(len) = frame_len(header) else { break };
                let mut buf = vec![0u8; len];
                if rd.read_exact(&mut buf).await.is_err() {
                    break;
                }
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
    /// `Unavailable` when the enclave cannot be reached or drops the connection; `InvalidArgument`
    /// when the request is too large for a frame; `DeadlineExceeded` after the timeout.
    pub async fn call(&self, body: Req) -> Result<Resp, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&EnclaveRequest {
            protocol_version: ENCLAVE_PROTOCOL_VERSION,
            request_id: id,
            body: Some(body),
        })
        .map_err(|e| Status::invalid_argument(format!("REQUEST_TOO_LARGE: {e}")))?;
        let conn = self.connection().await?;
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .map_err(|_| Status::internal("enclave client poisoned"))?
            .insert(id, tx);
        // Removes the waiter however this call ends (answered, failed, timed out, or cancelled
        // because the gRPC client went away), so waiters never pile up.
        let _cleanup = Cleanup { pending: &conn.pending, id };
        if conn.dead.load(Ordering::SeqCst) || conn.tx.send(frame).await.is_err() {
            return Err(Status::unavailable("ENCLAVE_UNAVAILABLE: the enclave connection closed"));
        }
        let resp = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => {
                return Err(Status::unavailable(
                    "ENCLAVE_UNAVAILABLE: the enclave connection closed before it answered",
                ))
            }
            Err(_) => return Err(Status::deadline_exceeded("the enclave did not answer in time")),
        };
        resp.body.ok_or_else(|| Status::internal("enclave sent an empty response"))
    }
}
