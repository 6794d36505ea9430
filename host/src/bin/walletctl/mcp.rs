//! `walletctl mcp`: the wallet's MCP servers (wallet-mcp): the payment tools over stdio (or
//! streamable HTTP with `--http`), and with `--upstream` a paying proxy for a remote paid MCP
//! server. stdout is the MCP channel: everything else goes to stderr.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, ValueEnum};
use wallet_agent::{HttpConfig, Payer};
use wallet_client::{Credential, GatewayClient};
use wallet_mcp::{
    serve_http, serve_stdio, HttpOptions, McpServer, Options, PayerWallet, PaymentEncoding,
    Upstream,
};

use crate::{Fail, Out};

/// How a paid MCP call carries its payment.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Compat {
    /// `_meta["x402/payment"]` = the PaymentPayload object (the x402 MCP spec; the default).
    Spec,
    /// `_meta["x402/payment"]` = base64 of the payload JSON (Cloudflare `agents`, MCPay).
    Base64,
    /// `_meta["x402.payment"]` = base64 of the payload JSON (Vercel `x402-mcp`).
    Vercel,
}

/// `walletctl mcp` arguments.
#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    /// Session credential file (the only secret the agent's host holds).
    #[arg(long, env = "WALLET_SESSION")]
    session: PathBuf,
    /// Serve over streamable HTTP at http://ADDR/mcp instead of stdio (e.g. 127.0.0.1:8402).
    /// Loopback only unless --allow-non-loopback. A bearer token is always required: without
    /// WALLET_MCP_HTTP_TOKEN / --http-token, one is generated and printed once on stderr.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Allow --http on an address that is not loopback (anyone who reaches it can spend within
    /// the session's limits). Requires an explicit token (WALLET_MCP_HTTP_TOKEN).
    #[arg(long, requires = "http")]
    allow_non_loopback: bool,
    /// The bearer token HTTP clients must send (`Authorization: Bearer TOKEN`). Prefer the
    /// environment variable WALLET_MCP_HTTP_TOKEN: a flag's value shows in `ps`. Default: a
    /// random token for this run, printed once on stderr.
    #[arg(
        long,
        env = "WALLET_MCP_HTTP_TOKEN",
        hide_env_values = true,
        requires = "http",
        value_name = "TOKEN"
    )]
    http_token: Option<String>,
    /// Proxy this remote MCP server (streamable HTTP URL): list its tools and pay its x402 tool
    /// calls through the wallet.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// A header sent to the upstream with every request ("Name: value"; repeatable), e.g. its
    /// own Authorization.
    #[arg(long = "upstream-header", value_name = "HEADER", requires = "upstream")]
    upstream_headers: Vec<String>,
    /// Seconds the upstream has to answer each request (handshake, tools/list, a call, the
    /// paid retry). A paid retry that times out is reported as an unknown outcome: calling the
    /// tool again resends the same payment.
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0, requires = "upstream")]
    upstream_timeout: f64,
    /// The most one paid call may cost, in token units (0.05, "0.05 USDC", $0.05): a guard on
    /// top of the enclave's limits, for proxied calls and for x402_fetch (whose maxAmount must
    /// hold too: it can only lower it; one in a unit no payment can satisfy with this one is
    /// refused).
    #[arg(long, value_name = "AMOUNT")]
    max_amount: Option<String>,
    /// How proxied paid calls carry the payment. Only the spec's JSON object unless you know
    /// the upstream reads another encoding.
    #[arg(long, value_enum, default_value = "spec", requires = "upstream")]
    compat: Compat,
    /// With --upstream, list only the upstream's tools (not x402_fetch, x402_inspect,
    /// get_budget, list_payments), under their own names. Without it, an upstream tool named
    /// like one of the wallet's is listed as upstream_<name> (said on stderr).
    #[arg(long, requires = "upstream")]
    no_wallet_tools: bool,
    /// Largest response body x402_fetch shows the model, in bytes (the rest is cut, with a
    /// note).
    #[arg(long, default_value_t = wallet_mcp::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
}

/// Largest response body x402_fetch reads from a server (what is shown is bounded by
/// --max-body-bytes).
const READ_BODY_LIMIT: usize = 16 << 20;

/// Runs the MCP server until the client goes away (stdio) or Ctrl-C (HTTP).
pub(crate) async fn run(default_url: &str, a: McpArgs) -> Out {
    if let Some(addr) = &a.http {
        wallet_mcp::http::check_bind(addr, a.allow_non_loopback, a.http_token.is_some())
            .map_err(|e| Fail(2, format!("mcp: {e}")))?;
        if let Some(t) = &a.http_token {
            wallet_mcp::http::check_token(t).map_err(|e| Fail(2, format!("mcp: {e}")))?;
        }
    }
    if let Some(m) = &a.max_amount {
        wallet_mcp::server::check_max_amount(m).map_err(|e| Fail(2, format!("mcp: {e}")))?;
    }
    let upstream_timeout = std::time::Duration::try_from_secs_f64(a.upstream_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Fail(2, "mcp: --upstream-timeout must be a positive number of seconds".to_owned())
        })?;
    let cred = Credential::read(&a.session).map_err(|e| Fail(2, e))?;
    let url = crate::agent_gateway(default_url, &cred.gateway)?;
    // Connected lazily: an MCP host starts its servers when it starts, maybe before the wallet's
    // stack; the tools report an unreachable gateway until it is up.
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| Fail(2, format!("mcp: bad gateway URL {url:?}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let mut gateway = GatewayClient::from_channel(endpoint.connect_lazy(), &url);
    // Answers are checked against the identity the credential pins (the payer does that), else
    // the one pinned in walletctl's home.
    if cred.enclave_id.is_empty() {
        match crate::pinned_identity() {
            Some(id) => gateway = crate::with_identity(gateway, &id)?,
            None => eprintln!("walletctl mcp: warning: this credential does not pin the enclave's identity (issued before signed answers), so the gateway's answers cannot be checked; issue a new session to pin it"),
        }
    }
    let config = HttpConfig { max_body_bytes: READ_BODY_LIMIT, ..HttpConfig::default() };
    let payer = Payer::new(cred, gateway, config)
        .map_err(|e| Fail(e.exit_code().max(1), format!("mcp: {e}")))?;
    // A first signed read: says at once (on stderr) if the session is not accepted or the
    // gateway is down, and serves anyway.
    let mut probe = payer.gateway();
    let first = probe.get_budget(payer.credential().budget_request(wallet_client::now_ms()));
    match tokio::time::timeout(std::time::Duration::from_secs(10), first).await {
        Err(_) => eprintln!("walletctl mcp: warning: the gateway at {url} did not answer within 10 s; serving anyway"),
        Ok(Ok(b)) if b.revoked || b.expired || b.wallet_frozen => eprintln!(
            "walletctl mcp: warning: session {} of wallet {} is {}: every payment will be refused; issue a new session (walletctl session issue)",
            b.session_id,
            b.wallet_id,
            if b.revoked { "REVOKED" } else if b.expired { "EXPIRED" } else { "on a FROZEN wallet" }
        ),
        Ok(Ok(b)) => eprintln!(
            "walletctl mcp: session {} of wallet {} ({} left of the session cap)",
            b.session_id, b.wallet_id, b.session_left
        ),
        Ok(Err(e)) if e.is_connection_lost() || e.is_connect() => eprintln!(
            "walletctl mcp: warning: cannot reach the gateway at {url} (is the wallet's stack running?); serving anyway, the tools will say so until it is up"
        ),
        Ok(Err(e)) => {
            eprintln!("walletctl mcp: warning: {e}; the tools will say so until it is fixed")
        }
    }
    let wallet = PayerWallet::new(payer);
    let options = Options {
        max_body_bytes: a.max_body_bytes.max(1),
        max_amount: a.max_amount.clone(),
        encoding: match a.compat {
            Compat::Spec => PaymentEncoding::Object,
            Compat::Base64 => PaymentEncoding::Base64,
            Compat::Vercel => PaymentEncoding::Vercel,
        },
        wallet_tools: !a.no_wallet_tools,
    };
    let server = match &a.upstream {
        None => McpServer::new(wallet, options),
        Some(url) => {
            let headers = a
                .upstream_headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .ok_or_else(|| {
                            Fail(2, format!("--upstream-header {h:?}: expected \"Name: value\""))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let upstream = Upstream::connect(url, &headers, upstream_timeout)
                .await
                .map_err(|e| Fail(1, format!("mcp: {e}")))?;
            McpServer::with_upstream(wallet, options, upstream)
        }
    };
    match a.http {
        Some(addr) => {
            let http =
                HttpOptions { allow_non_loopback: a.allow_non_loopback, token: a.http_token };
            serve_http(server, addr, http).await.map_err(|e| Fail(2, format!("mcp: {e}")))
        }
        None => serve_stdio(server).await.map_err(|e| Fail(1, format!("mcp: {e}"))),
    }
}
