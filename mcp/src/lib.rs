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
//! stdout of the stdio server is the MCP channel: this crate writes nothing else there.
//! Operator notices (an upstream tool renamed, a generated HTTP token) go to stderr with
//! `eprintln!` (walletctl installs no tracing subscriber); debug logs go through `tracing`.
//!
//! # Limits
//!
//! * **The wallet's tool names are the wallet's.** With an upstream, `x402_fetch`,
//!   `x402_inspect`, `get_budget` and `list_payments` always run the wallet's tools: an upstream
//!   tool of the same name cannot take them over (and see the URLs, headers and bodies meant for
//!   the wallet, or lie about the budget). It is listed as `upstream_<name>` instead
//!   ([`server::UPSTREAM_PREFIX`]; dropped if the upstream also has that name), its description
//!   saying whose it is, and the operator is told on stderr. With `--no-wallet-tools` the
//!   upstream's names pass through untouched.
//! * **Two limits per call.** `x402_fetch`'s and `x402_inspect`'s `maxAmount` and the operator's
//!   `--max-amount` both hold ([`server::combined_max_amount`]): the smaller amount in the
//!   narrower unit; a call whose limits no token can satisfy at once is refused.
//! * **Relayed payment requirements (by design).** The x402 MCP binding has servers answer
//!   with a `PaymentRequired` in `structuredContent`, in `content[0].text` or in
//!   `_meta["x402/error"]`, and the proxy must recognise all of them. So an honest upstream tool
//!   that relays third-party text (a web page, a document, another API's answer) shaped like a
//!   `PaymentRequired` in `content[0].text` can make the proxy pay that third party, once per
//!   call, within `--max-amount` and the enclave's policy. For sessions that proxy MCP servers,
//!   set a payee allowlist in the wallet's policy (`[payees] allow = [...]`, or a rule's
//!   `payees`) to the payees of those servers, keep `--max-amount` low, and consider
//!   `[approval] first_time_payee = true`.
//! * **Upstream bounds.** Each request to the upstream (handshake, listing, a call, the paid
//!   retry) must be answered within `--upstream-timeout` ([`proxy::DEFAULT_UPSTREAM_TIMEOUT`]);
//!   a paid retry that times out is reported as an unknown outcome (calling again resends the
//!   same payment, never charged twice). A message larger than
//!   [`proxy::UPSTREAM_MAX_MESSAGE_BYTES`] is refused by the transport.
//! * **HTTP transport.** `--http` always requires a bearer token: the operator's, or one
//!   generated for the run and printed once on stderr ([`http`]).

pub mod binding;
pub mod http;
pub mod payer;
pub mod proxy;
pub mod server;
pub mod tools;
pub mod wallet;

pub use binding::PaymentEncoding;
pub use http::{serve_http, HttpOptions, HttpServer};
pub use payer::PayerWallet;
pub use proxy::Upstream;
pub use server::{McpServer, Options, DEFAULT_MAX_BODY_BYTES, UPSTREAM_PREFIX};
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
