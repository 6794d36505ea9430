//! The untrusted host side of the agent wallet: the gRPC gateway.
//!
//! * [`gateway`]: the tonic service `wallet.gateway.v1`, relaying every call to the enclave and
//!   mapping its errors to gRPC statuses (with `google.rpc.ErrorInfo`).
//! * [`enclave_client`]: the multiplexed link to the enclave, at an
//!   [`EnclaveAddress`](enclave_client::EnclaveAddress) (Unix socket or vsock).
//! * [`kyt_import`]: the KYT denylist file parser used by `walletctl kyt import`.
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

pub mod enclave_client;
pub mod gateway;
pub mod kyt_import;

use std::{net::SocketAddr, sync::Arc};

use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::server::Connected;

pub use enclave_client::{EnclaveAddress, EnclaveClient};

/// Default gateway address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7402";

/// Largest request the gateway decodes (a KYT import chunk is the largest).
pub const MAX_REQUEST_BYTES: usize = 2 << 20;

/// An error of the gateway server.
pub type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the gateway on `listener` until `shutdown` resolves, relaying to the enclave at
/// `enclave`.
///
/// # Errors
/// When the server fails.
pub async fn serve_gateway(
    listener: tokio::net::TcpListener,
    enclave: EnclaveAddress,
    data_dir: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let client = Arc::new(EnclaveClient::new(enclave));
    serve_incoming(nodelay_incoming(listener), client, data_dir, shutdown).await
}

/// Runs the gateway (with gRPC health and reflection) on any stream of connections, e.g. an
/// in-memory `tokio::io::duplex` transport in tests, until `shutdown` resolves.
///
/// # Errors
/// When the server fails.
pub async fn serve_incoming<I, IO, IE>(
    incoming: I,
    enclave: Arc<EnclaveClient>,
    data_dir: String,
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
        .add_service(health)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Accepted connections with `TCP_NODELAY`: without it, the small trailers frame of each gRPC
/// response waits for the client's delayed ACK (~40 ms a call). `serve_with_incoming` ignores
/// the builder's own nodelay setting.
fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    })
}

/// Whether an address is loopback. The gateway listens only on loopback unless told otherwise:
/// state changes are admin-signed and payments session-signed (both verified in the enclave),
/// but reads (wallets, sessions, policies, the audit log) are open to anyone who reaches the
/// gateway, and it speaks plaintext HTTP/2.
#[must_use]
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
