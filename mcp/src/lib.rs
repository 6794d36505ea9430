//! The wallet's MCP servers: the agent's payment tools and the paying proxy for remote paid
//! MCP tools (the x402 MCP binding).
//!
//! * `walletctl mcp --session FILE`: an MCP server (stdio, or streamable HTTP with `--http`)
//!   with the tools `x402_fetch`, `x402_inspect`, `get_budget` and `list_payments`
//!   ([`tools`]). The agent's host holds only the session credential; every limit is enforced by
//!   the enclave, and no tool can change a limit, approve a hold or export anything.
//! * `walletctl mcp --session FILE --upstream URL`: the same server, which also lists the tools
//!   of a remote MCP server (streamable HTTP) and forwards their calls, paying those answered
//!   with an x402 payment requirement ([`binding`], [`proxy`]).
//!
//! [`McpServer`] is the handler, generic over the [`Wallet`] it pays with: [`PayerWallet`]
//! (a `wallet_agent::Payer`: the session credential and the enclave through the gateway) in
//! production, a stand-in in tests. [`serve_stdio`] and [`serve_http`] run it.
//!
//! stdout of the stdio server is the MCP channel: this crate writes nothing else there (logs go
//! through `tracing`, to stderr when a subscriber is installed).

pub mod binding;
pub mod http;
pub mod payer;
pub mod proxy;
pub mod server;
pub mod tools;
pub mod wallet;

pub use binding::PaymentEncoding;
pub use http::{serve_http, HttpOptions};
pub use payer::PayerWallet;
pub use proxy::Upstream;
pub use server::{McpServer, Options, DEFAULT_MAX_BODY_BYTES};
pub use wallet::{HttpCall, Wallet, WalletError};

use rmcp::ServiceExt as _;

/// Serves `server` over stdin/stdout until the client closes the stream.
///
/// # Errors
/// The MCP handshake failed, or the transport broke.
pub async fn serve_stdio<W: Wallet>(server: McpServer<W>) -> Result<(), String> {
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("MCP handshake on stdio failed: {e}"))?;
    running.waiting().await.map_err(|e| format!("the MCP stdio session ended: {e}"))?;
    Ok(())
}

/// Installs ring as rustls' process-wide crypto provider, once (reqwest is built without a
/// bundled provider, as in `wallet-agent`). If another provider was installed first, that one
/// is used.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
