//! A byte relay from the enclave to one fixed TCP target, like AWS's `vsock-proxy`: the enclave's
//! TLS sessions with KMS (and later etcd) cross the host through it, so the host only ever
//! carries ciphertext.
//!
//! [`Relay`] accepts connections on a Unix socket ([`Relay::serve_unix`]: tests, and the
//! simulated enclave) or, on Linux, on vsock ([`Relay::serve_vsock`]: Nitro; the caller binds
//! the listener, and tests never do), and pipes each, both ways, to a new TCP connection to its
//! target (`host:port`, resolved by the host). It is deliberately dumb: no parsing, no TLS, no
//! choice of destination per connection. What it relays is not trusted by the enclave either;
//! the enclave authenticates KMS itself.
//!
//! Bounds: at most [`Relay::with_max_connections`] relayed connections at once (one accepted past
//! that is closed at once), [`CONNECT_TIMEOUT`] to reach the target, and an idle timeout per
//! direction ([`DEFAULT_IDLE_TIMEOUT`]). A [`Tap`] sees every byte relayed, for tests that assert
//! what the host could see ([`RecordingTap`]). These bounds protect the host; the enclave does
//! not rely on them: it bounds each KMS call with a deadline of its own, since a hostile host
//! can stall or drip the bytes whatever this relay says.
//!
//! Nothing relayed is logged or shown by `Debug` (the relay logs the target, counts and errors;
//! [`RecordingTap`]'s `Debug` shows counts only).

use std::{
    fmt::Debug,
    future::Future,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};

/// Default [`Relay::with_max_connections`]: the enclave makes one KMS connection at a time; a few
/// more leave room for other TLS clients behind the same relay.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// How long a connection to the target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Relay::with_idle_timeout`]: a direction with no bytes for this long ends its
/// connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes read per chunk.
const CHUNK: usize = 16 * 1024;
/// The pause after a failed `accept` (for example `EMFILE`).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the accepted connection (the enclave) to the target.
    ToTarget,
    /// From the target back to the accepted connection.
    FromTarget,
}

/// Sees every chunk relayed (test hook): `connection` numbers the accepted connections from 0.
pub trait Tap: Send + Sync + Debug {
    /// Called with each chunk before it is forwarded.
    fn record(&self, connection: u64, direction: Direction, bytes: &[u8]);
}

/// The recorded streams: (connection, direction) and the bytes, in order of first use.
type Streams = Vec<((u64, Direction), Vec<u8>)>;

/// A [`Tap`] that keeps every byte, per connection and direction, in memory (tests). Its
/// `Debug` shows how many streams and bytes it holds, never the bytes.
#[derive(Default)]
pub struct RecordingTap {
    streams: Mutex<Streams>,
}

impl Debug for RecordingTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let streams = self.lock();
        f.debug_struct("RecordingTap")
            .field("streams", &streams.len())
            .field("bytes", &streams.iter().map(|(_, v)| v.len()).sum::<usize>())
            .finish()
    }
}

impl RecordingTap {
    /// An empty recording, shareable with [`Relay::with_tap`].
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The bytes relayed on `connection` in `direction`, in order.
    #[must_use]
    pub fn stream(&self, connection: u64, direction: Direction) -> Vec<u8> {
        self.lock()
            .iter()
            .find(|(k, _)| *k == (connection, direction))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Every recorded stream: (connection, direction, bytes).
    #[must_use]
    pub fn streams(&self) -> Vec<(u64, Direction, Vec<u8>)> {
        self.lock().iter().map(|((c, d), v)| (*c, *d, v.clone())).collect()
    }

    /// Total bytes recorded.
    #[must_use]
    pub fn total_bytes(&self) -> usize {
        self.lock().iter().map(|(_, v)| v.len()).sum()
    }

    /// Whether `needle` occurs in any one stream (across chunk boundaries).
    #[must_use]
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty()
            && self.lock().iter().any(|(_, v)| v.windows(needle.len()).any(|w| w == needle))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tap for RecordingTap {
    fn record(&self, connection: u64, direction: Direction, bytes: &[u8]) {
        let mut streams = self.lock();
        match streams.iter_mut().find(|(k, _)| *k == (connection, direction)) {
            Some((_, v)) => v.extend_from_slice(bytes),
            None => streams.push(((connection, direction), bytes.to_vec())),
        }
    }
}

/// The relay: where to, how many at once, and an optional [`Tap`].
#[derive(Debug, Clone)]
pub struct Relay {
    target: String,
    max_connections: usize,
    idle_timeout: Duration,
    tap: Option<Arc<dyn Tap>>,
}

impl Relay {
    /// A relay to `target` (`host:port`, e.g. `kms.us-east-1.amazonaws.com:443`, resolved for
    /// each connection), with the default bounds and no tap.
    #[must_use]
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            tap: None,
        }
    }

    /// At most `n` relayed connections at once (at least 1).
    #[must_use]
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// A direction idle for `d` ends its connection.
    #[must_use]
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Every relayed byte is shown to `tap` first.
    #[must_use]
    pub fn with_tap(mut self, tap: Arc<dyn Tap>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// The target, `host:port`.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Relays every connection accepted on `listener` until `shutdown` resolves; then stops
    /// accepting and closes the connections still open.
    ///
    /// # Errors
    /// None today (accept errors are logged and retried); the `Result` leaves room for setup
    /// failures.
    pub async fn serve_unix(
        self,
        listener: tokio::net::UnixListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        self.serve(listener, shutdown).await
    }

    /// As [`Self::serve_unix`], on a vsock listener the caller bound (Nitro: the enclave
    /// connects to the parent's CID and this port).
    ///
    /// # Errors
    /// As [`Self::serve_unix`].
    #[cfg(target_os = "linux")]
    pub async fn serve_vsock(
        self,
        listener: tokio_vsock::VsockListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        self.serve(listener, shutdown).await
    }

    async fn serve<L: Accept>(
        self,
        listener: L,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let mut tasks = JoinSet::new();
        let mut next = 0u64;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept_stream() => match accepted {
                    Ok(stream) => {
                        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                            tracing::warn!(
                                max_connections = self.max_connections,
                                "relay: connection limit reached; closing a new connection"
                            );
                            drop(stream);
                            continue;
                        };
                        let id = next;
                        next += 1;
                        tasks.spawn(relay_one(self.clone(), stream, id, slot));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "relay: accept failed; retrying");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
        tasks.shutdown().await;
        Ok(())
    }
}

/// A listener the relay accepts from.
trait Accept: Send {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_stream(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_stream(&self) -> io::Result<Self::Stream> {
        Ok(self.accept().await?.0)
    }
}

#[cfg(target_os = "linux")]
impl Accept for tokio_vsock::VsockListener {
    type Stream = tokio_vsock::VsockStream;
    async fn accept_stream(&self) -> io::Result<Self::Stream> {
        Ok(self.accept().await?.0)
    }
}

/// Relays one accepted connection until both directions end (or one fails).
async fn relay_one<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    relay: Relay,
    client: S,
    id: u64,
    _slot: OwnedSemaphorePermit,
) {
    let target = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&relay.target))
        .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(target = %relay.target, error = %e, "relay: cannot reach the target");
            return;
        }
        Err(_) => {
            tracing::warn!(target = %relay.target, "relay: connecting to the target timed out");
            return;
        }
    };
    let _ = target.set_nodelay(true);
    let (client_r, client_w) = tokio::io::split(client);
    let (target_r, target_w) = target.into_split();
    let up = pump(client_r, target_w, &relay, id, Direction::ToTarget);
    let down = pump(target_r, client_w, &relay, id, Direction::FromTarget);
    match tokio::try_join!(up, down) {
        Ok((sent, received)) => {
            tracing::debug!(connection = id, sent, received, "relay: connection closed");
        }
        Err(e) => tracing::debug!(connection = id, error = %e, "relay: connection ended"),
    }
}

/// Copies `from` to `to` until end of stream (then half-closes `to`); each chunk is shown to
/// the tap first. Returns the byte count.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    relay: &Relay,
    id: u64,
    direction: Direction,
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = tokio::time::timeout(relay.idle_timeout, from.read(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "relay: idle"))??;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
        if let Some(tap) = &relay.tap {
            tap.record(id, direction, &buf[..n]);
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, UnixListener, UnixStream};

    use super::*;

    /// A TCP target on loopback that answers each connection with "echo:" and what it read,
    /// until the client half-closes.
    async fn echo_target() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    s.write_all(b"echo:").await.unwrap();
                    s.write_all(&got).await.unwrap();
                });
            }
        });
        addr
    }

    async fn start(
        relay: Relay,
    ) -> (tempfile::TempDir, std::path::PathBuf, tokio::sync::oneshot::Sender<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(relay.serve_unix(listener, async move {
            let _ = stopped.await;
        }));
        (dir, path, stop)
    }

    async fn exchange(path: &std::path::Path, msg: &[u8]) -> Vec<u8> {
        let mut c = UnixStream::connect(path).await.unwrap();
        c.write_all(msg).await.unwrap();
        c.shutdown().await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn relay_pipes_both_ways_and_records_every_byte() {
        let target = echo_target().await;
        let tap = RecordingTap::new();
        let (_dir, path, _stop) =
            start(Relay::new(target.to_string()).with_tap(tap.clone() as Arc<dyn Tap>)).await;
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(exchange(&path, b"hello").await, b"echo:hello");
        assert_eq!(exchange(&path, &big).await, [b"echo:".as_slice(), &big].concat());
        assert_eq!(tap.stream(0, Direction::ToTarget), b"hello");
        assert_eq!(tap.stream(0, Direction::FromTarget), b"echo:hello");
        assert_eq!(tap.stream(1, Direction::ToTarget), big);
        assert_eq!(tap.total_bytes(), 5 + 10 + 2 * big.len() + 5);
        // Found across chunk boundaries, and only what was relayed.
        assert!(tap.contains(&big[CHUNK - 3..CHUNK + 3]));
        assert!(!tap.contains(b"never sent"));
    }

    #[tokio::test]
    async fn relay_debug_never_shows_relayed_bytes() {
        let target = echo_target().await;
        let tap = RecordingTap::new();
        let relay = Relay::new(target.to_string()).with_tap(tap.clone() as Arc<dyn Tap>);
        let (_dir, path, _stop) = start(relay.clone()).await;
        assert_eq!(exchange(&path, b"secret-bytes").await, b"echo:secret-bytes");
        for shown in [format!("{tap:?}"), format!("{relay:?}")] {
            assert!(shown.contains("streams: 2") && shown.contains("bytes: 29"), "{shown}");
            assert!(!shown.contains("secret") && !shown.contains("115, 101, 99"), "{shown}");
        }
    }

    #[tokio::test]
    async fn relay_bounds_connections_and_stops_on_shutdown() {
        let target = echo_target().await;
        let (_dir, path, stop) =
            start(Relay::new(target.to_string()).with_max_connections(1)).await;
        // The first connection holds the only slot (it stays open: no half-close yet).
        let mut first = UnixStream::connect(&path).await.unwrap();
        first.write_all(b"a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A second is closed at once, without reaching the target.
        let mut second = UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf)).await.unwrap();
        assert!(matches!(n, Ok(0) | Err(_)));
        // The first still works; once done, its slot is free again.
        first.shutdown().await.unwrap();
        let mut out = Vec::new();
        first.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"echo:a");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(exchange(&path, b"b").await, b"echo:b");
        // After shutdown nothing is relayed.
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(mut c) = UnixStream::connect(&path).await {
            let _ = c.write_all(b"c").await;
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            assert!(out.is_empty());
        }
    }

    #[tokio::test]
    async fn relay_closes_when_the_target_is_unreachable_or_idle() {
        // A port nothing listens on.
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let (_dir, path, _stop) = start(Relay::new(unused.to_string())).await;
        let mut c = UnixStream::connect(&path).await.unwrap();
        let _ = c.write_all(b"x").await; // may already be closed
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await.unwrap();
        assert!(out.is_empty());
        // Idle: a target that never answers and a client that never closes.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let (_dir2, path2, _stop2) = start(
            Relay::new(silent_addr.to_string()).with_idle_timeout(Duration::from_millis(200)),
        )
        .await;
        let mut c = UnixStream::connect(&path2).await.unwrap();
        let mut buf = [0u8; 4];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "closed after the idle timeout");
    }
}
