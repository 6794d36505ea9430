//! The untrusted host side of the agent wallet: the gRPC gateway.
//!
//! * [`gateway`]: the tonic service `wallet.gateway.v1`, relaying every call to the enclave and
//!   mapping its errors to gRPC statuses (with `google.rpc.ErrorInfo`).
//! * [`enclave_client`]: the multiplexed link to the enclave, at an [`EnclaveAddress`] (Unix
//!   socket or vsock), and the [`EnclaveGroup`] of several links to the members of one group
//!   (routing by session or wallet id; a call goes on to the next member only when it certainly
//!   reached no enclave).
//! * [`kyt_import`]: the KYT denylist file parser used by `walletctl kyt import`.
//! * [`storage`]: the storage server the enclave keeps its sealed files on (Nitro mode has no
//!   disk): `wallet-gateway --serve-storage`.
//!
//! Binaries: `wallet-gateway` (this library) and `walletctl` (the CLI, built on
//! `wallet-client`).
//!
//! Boundary: everything here is untrusted. The gateway holds no key and decides nothing that
//! matters for money: payment requests are signed by the agent's session key and every state
//! change by an admin key (Ed25519), and the enclave verifies both. The gateway can only relay,
//! delay or drop. It depends on `wallet-proto` (messages and frames), `wallet-policy` (header
//! size limit, policy documents and audit records for walletctl) and `wallet-client`; never on
//! the enclave.

pub mod boot;
pub mod enclave_client;
pub mod gateway;
pub mod kyt_import;
pub mod relay;
pub mod storage;

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::transport::server::{Connected, TcpConnectInfo};

pub use enclave_client::{EnclaveAddress, EnclaveClient, EnclaveGroup};

/// Default gateway address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7402";

/// Largest request the gateway decodes (a KYT import chunk is the largest).
pub const MAX_REQUEST_BYTES: usize = 2 << 20;

/// The gateway's resource limits. A flood of clients is bounded by them; normal loads (the
/// benchmark: 64 concurrent clients on 4 HTTP/2 connections) stay far below.
///
/// * `max_connections`: TCP connections served at once; one accepted past that is closed at
///   once (logged at warn, at most once a second). An accept error (`EMFILE`, ...) is logged and
///   retried after 100 ms; it never ends the server.
/// * `max_concurrent_streams`: HTTP/2 streams a client may open on one connection
///   (advertised in SETTINGS; the client queues past it).
/// * `concurrency_limit_per_connection`: requests handled at once per connection (more wait).
/// * `max_enclave_in_flight`: requests in flight to each enclave link, all clients together; a
///   call that finds no free slot within [`enclave_client::DEFAULT_QUEUE_WAIT`] goes on to the
///   next member of the group (it was not sent), and with none left fails with `UNAVAILABLE` /
///   `ENCLAVE_UNAVAILABLE` ("the gateway is saturated").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TCP connections served at once.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Requests handled at once per connection.
    pub concurrency_limit_per_connection: usize,
    /// Requests in flight to each enclave link.
    pub max_enclave_in_flight: usize,
}

/// Default [`Limits::max_connections`] (below the common 1024 soft limit on descriptors).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default [`Limits::max_concurrent_streams`] and [`Limits::concurrency_limit_per_connection`].
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 256;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            concurrency_limit_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION as usize,
            max_enclave_in_flight: enclave_client::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// How long the accept loop pauses after a failed `accept` (for example `EMFILE`).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// An error of the gateway server.
pub type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the gateway on `listener` until `shutdown` resolves, relaying to the enclave at
/// `enclave`, within the default [`Limits`].
///
/// # Errors
/// When the server fails.
pub async fn serve_gateway(
    listener: tokio::net::TcpListener,
    enclave: EnclaveAddress,
    data_dir: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_gateway_with(listener, [enclave], data_dir, Limits::default(), shutdown).await
}

/// Logs what the enclave attests, once it answers (retrying for about a minute): the root that
/// verified its document, its PCR0..2 and `module_id`, or why the document does not verify with
/// this build's roots. Informational only: the gateway is untrusted and decides nothing on it —
/// `walletctl init` and `walletctl attest` check for themselves. `wallet-gateway` runs it at
/// start for each member of the group, on a connection of its own to `enclave`.
pub async fn log_attestation(enclave: EnclaveAddress) {
    let address = enclave.to_string();
    let client = EnclaveClient::new(enclave);
    use rand_core::{OsRng, RngCore as _};
    use wallet_proto::enclave::v1::{enclave_request::Body as Req, enclave_response::Body as Resp};
    for _ in 0..60 {
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let asked = Req::GetAttestation(wallet_proto::gateway::v1::GetAttestationRequest {
            nonce: nonce.to_vec(),
        });
        match client.call(asked).await {
            Ok(Resp::Attestation(a)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                match wallet_attestation::verify(&a.document, now, Some(&nonce)) {
                    Ok(doc) => {
                        let pcr = |i: u8| {
                            doc.pcrs
                                .get(&i)
                                .map(|v| wallet_attestation::hex_pcr(v))
                                .unwrap_or_default()
                        };
                        tracing::info!(enclave = %address, root = %doc.root, module_id = %doc.module_id.escape_debug(), pcr0 = %pcr(0), pcr1 = %pcr(1), pcr2 = %pcr(2), "the enclave's attestation document verifies");
                    }
                    Err(e) => {
                        tracing::warn!(enclave = %address, error = %e.to_string().escape_debug(), "the enclave's attestation document does not verify with this build's roots")
                    }
                }
                return;
            }
            Ok(other) => {
                tracing::warn!(
                    enclave = %address,
                    answer = wallet_proto::answer::response::parts(&other).0,
                    "the enclave did not attest"
                );
                return;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
    }
}

/// [`serve_gateway`] within `limits`, relaying to the members of one enclave group at
/// `enclaves` (one link each, in this order: see [`EnclaveGroup`] for the routing).
///
/// # Errors
/// When the server fails.
pub async fn serve_gateway_with(
    listener: tokio::net::TcpListener,
    enclaves: impl IntoIterator<Item = EnclaveAddress>,
    data_dir: String,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let group = EnclaveGroup::new(enclaves.into_iter().map(|address| {
        Arc::new(EnclaveClient::new(address).with_max_in_flight(limits.max_enclave_in_flight))
    }));
    serve_group(listener, group, data_dir, limits, shutdown).await
}

/// [`serve_gateway_with`] relaying to links made by the caller (their in-flight caps, queue
/// waits and timeouts are theirs; `limits.max_enclave_in_flight` is not used).
///
/// # Errors
/// When the server fails.
pub async fn serve_group(
    listener: tokio::net::TcpListener,
    group: EnclaveGroup,
    data_dir: String,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let incoming = limited_incoming(listener, limits.max_connections);
    serve_incoming_with(incoming, group, data_dir, limits, shutdown).await
}

/// Runs the gateway (with gRPC health and reflection) on any stream of connections, e.g. an
/// in-memory `tokio::io::duplex` transport in tests, until `shutdown` resolves, with the default
/// per-connection [`Limits`] (the connection cap and the enclave link's cap are the caller's:
/// the stream and the client). `enclave` is one link (`Arc<EnclaveClient>`) or an
/// [`EnclaveGroup`].
///
/// # Errors
/// When the server fails.
pub async fn serve_incoming<I, IO, IE>(
    incoming: I,
    enclave: impl Into<EnclaveGroup>,
    data_dir: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<ServeError>,
{
    serve_incoming_with(incoming, enclave, data_dir, Limits::default(), shutdown).await
}

/// [`serve_incoming`] with the per-connection limits of `limits` (streams and concurrency).
///
/// Health and reflection are the gateway's own and never touch an enclave: health reports
/// `wallet.gateway.v1.WalletGateway` SERVING while the gateway runs, whichever members of the
/// group are up (`GetStatus` says whether an enclave answers).
///
/// # Errors
/// When the server fails.
pub async fn serve_incoming_with<I, IO, IE>(
    incoming: I,
    enclave: impl Into<EnclaveGroup>,
    data_dir: String,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<ServeError>,
{
    use wallet_proto::gateway::v1::wallet_gateway_server::WalletGatewayServer;
    let service = WalletGatewayServer::new(gateway::Gateway::new(enclave, data_dir))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<WalletGatewayServer<gateway::Gateway>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(wallet_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams.max(1))
        .concurrency_limit_per_connection(limits.concurrency_limit_per_connection.max(1))
        .add_service(health)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Accepted connections with `TCP_NODELAY` (without it, the small trailers frame of each gRPC
/// response waits for the client's delayed ACK, ~40 ms a call; `serve_with_incoming` ignores the
/// builder's own nodelay setting), at most `max` at once: one accepted past that is closed at
/// once. Accept errors are logged and retried after a pause (tonic would retry at once, spinning
/// while descriptors are exhausted); they never end the server. The accept task ends when the
/// server drops the stream.
fn limited_incoming(
    listener: tokio::net::TcpListener,
    max: usize,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Limited>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let slots = Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)));
    tokio::spawn(async move {
        let (mut refused, mut failed) = (Throttle::default(), Throttle::default());
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        drop(stream);
                        if let Some(n) = refused.tick() {
                            tracing::warn!(
                                max_connections = max,
                                refused = n,
                                "connection limit reached: closing new connections"
                            );
                        }
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    if tx.send(Ok(Limited { stream, _slot: slot })).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if let Some(n) = failed.tick() {
                        tracing::error!(error = %e, failures = n, "accept failed; retrying");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Rate-limited warnings: at most one a second, with how many were folded into it.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    folded: u64,
}

impl Throttle {
    /// Counts one event; `Some(n)` (the events since the last warning) when one may be logged.
    pub(crate) fn tick(&mut self) -> Option<u64> {
        self.folded += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.folded))
    }
}

/// A TCP connection holding one of the gateway's connection slots until it is dropped.
#[derive(Debug)]
struct Limited {
    stream: tokio::net::TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Whether an address is loopback. The gateway listens only on loopback unless told otherwise:
/// state changes are admin-signed and payments session-signed (both verified in the enclave),
/// but reads (wallets, sessions, policies, the audit log) are open to anyone who reaches the
/// gateway, and it speaks plaintext HTTP/2.
#[must_use]
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Binds a Unix socket at `path` and makes it 0600. A socket file left there (by an earlier run)
/// is replaced; anything else at `path` is an error, so a mistyped flag never deletes a file.
///
/// # Errors
/// When `path` holds something other than a socket, or binding fails.
pub fn bind_unix_0600(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
