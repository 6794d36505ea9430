//! The untrusted host side of the agent wallet.
//!
//! * [`gateway`]: the tonic service `wallet.gateway.v1`, relaying to the enclave.
//! * [`enclave_client`]: the multiplexed link to the enclave.
//! * [`cli`]: pieces of `walletctl` worth testing on their own (credential files, durations,
//!   request signing).
//!
//! Binaries: `wallet-gateway` and `walletctl`.

pub mod cli;
pub mod enclave_client;
pub mod gateway;
pub mod kyt_import;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

/// Default gateway address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7402";

/// Runs the gateway until `shutdown` resolves.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve_gateway(
    listener: tokio::net::TcpListener,
    enclave_socket: PathBuf,
    data_dir: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use wallet_proto::gateway::v1::wallet_gateway_server::WalletGatewayServer;
    let client = Arc::new(enclave_client::EnclaveClient::new(enclave_socket));
    let service = WalletGatewayServer::new(gateway::Gateway::new(client, data_dir))
        .max_decoding_message_size(2 << 20);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<WalletGatewayServer<gateway::Gateway>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(wallet_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let incoming = tokio_stream_from(listener);
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
fn tokio_stream_from(
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

/// Whether an address is loopback: admin RPCs are not authenticated yet, so the gateway only
/// listens on loopback unless told otherwise.
#[must_use]
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
