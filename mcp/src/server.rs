//! [`McpServer`]: the MCP server handler. Lists and runs the wallet's tools and, with an
//! upstream, lists and forwards the upstream's tools, paying their x402 calls.

use std::sync::Arc;

use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ErrorData, Implementation,
        JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
        Tool,
    },
    service::RequestContext,
    RoleServer, ServerHandler,
};

use crate::{
    binding::PaymentEncoding,
    proxy::{self, Pending, ProxyOptions, Upstream},
    tools,
    wallet::{ErrorKind, Wallet},
};

/// Largest body shown to the model by default (`--max-body-bytes`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest response body shown by `x402_fetch` (the rest is cut, with a note).
    pub max_body_bytes: usize,
    /// Operator's ceiling per paid call (token units): the proxy's paid calls, and
    /// `x402_fetch` when its `maxAmount` is absent or larger.
    pub max_amount: Option<String>,
    /// How the proxy sends payments (the spec's object by default).
    pub encoding: PaymentEncoding,
    /// List the wallet's own tools next to the upstream's (a tool of the upstream with the
    /// same name wins).
    pub wallet_tools: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_amount: None,
            encoding: PaymentEncoding::Object,
            wallet_tools: true,
        }
    }
}

/// The MCP server: cheap to clone (one per HTTP session shares the wallet and the upstream).
#[derive(Debug)]
pub struct McpServer<W: Wallet> {
    inner: Arc<Inner<W>>,
}

impl<W: Wallet> Clone for McpServer<W> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

#[derive(Debug)]
struct Inner<W> {
    wallet: W,
    options: Options,
    upstream: Option<Upstream>,
    pending: Pending,
}

impl<W: Wallet> McpServer<W> {
    /// The wallet's tools only.
    #[must_use]
    pub fn new(wallet: W, options: Options) -> Self {
        Self::build(wallet, options, None)
    }

    /// The upstream's tools (paid through the wallet), and the wallet's unless
    /// `options.wallet_tools` is false.
    #[must_use]
    pub fn with_upstream(wallet: W, options: Options, upstream: Upstream) -> Self {
        Self::build(wallet, options, Some(upstream))
    }

    fn build(wallet: W, options: Options, upstream: Option<Upstream>) -> Self {
        Self { inner: Arc::new(Inner { wallet, options, upstream, pending: Pending::default() }) }
    }

    /// Every tool this server lists.
    ///
    /// # Errors
    /// The upstream could not list its tools.
    pub async fn tools(&self) -> Result<Vec<Tool>, ErrorData> {
        let Some(up) = &self.inner.upstream else { return Ok(tools::definitions()) };
        let mut all = up.tools().await?;
        if self.inner.options.wallet_tools {
            for t in tools::definitions() {
                if up.has_tool(&t.name) {
                    tracing::warn!(tool = %t.name, "the upstream has a tool of this name: the wallet's is not listed");
                } else {
                    all.push(t);
                }
            }
        }
        Ok(all)
    }

    /// Whether `name` is the wallet's own tool here.
    fn is_wallet_tool(&self, name: &str) -> bool {
        tools::NAMES.contains(&name)
            && match &self.inner.upstream {
                None => true,
                Some(up) => self.inner.options.wallet_tools && !up.has_tool(name),
            }
    }

    /// Runs the tool `name` with `arguments`.
    ///
    /// # Errors
    /// Protocol errors only (an unknown tool; the upstream's own errors): everything the model
    /// should read is a tool result.
    pub async fn call(
        &self,
        name: std::borrow::Cow<'static, str>,
        arguments: Option<JsonObject>,
    ) -> Result<CallToolResponse, ErrorData> {
        if self.is_wallet_tool(&name) {
            return Ok(self.wallet_tool(&name, arguments.as_ref()).await.into());
        }
        match &self.inner.upstream {
            Some(up) => {
                let options = ProxyOptions {
                    max_amount: self.inner.options.max_amount.clone(),
                    encoding: self.inner.options.encoding,
                };
                proxy::call(up, &self.inner.wallet, &options, &self.inner.pending, name, arguments)
                    .await
            }
            None => Err(ErrorData::invalid_params(format!("no tool named {name:?}"), None)),
        }
    }

    async fn wallet_tool(&self, name: &str, arguments: Option<&JsonObject>) -> CallToolResult {
        let max_body = self.inner.options.max_body_bytes;
        let wallet = &self.inner.wallet;
        match name {
            tools::X402_FETCH => {
                let mut call = match tools::http_call(arguments) {
                    Ok(c) => c,
                    Err(e) => return tools::invalid_arguments(&e),
                };
                call.max_amount = tighter(call.max_amount, self.inner.options.max_amount.clone());
                let fingerprint = Pending::fingerprint(&[
                    b"fetch",
                    call.method.as_bytes(),
                    call.url.as_bytes(),
                    call.body.as_deref().unwrap_or_default(),
                ]);
                let pending = &self.inner.pending;
                let key = call
                    .idempotency_key
                    .clone()
                    .or_else(|| pending.key_for(fingerprint))
                    .unwrap_or_else(wallet_client::random_idempotency_key);
                call.idempotency_key = Some(key.clone());
                match wallet.fetch(call).await {
                    Ok(f) => {
                        pending.forget(fingerprint);
                        tools::fetched(&f, max_body)
                    }
                    Err(e) if e.kind == ErrorKind::Held => {
                        pending.remember(fingerprint, &key);
                        tools::held(&e, tools::X402_FETCH, false)
                    }
                    Err(e) => {
                        if matches!(e.kind, ErrorKind::Network | ErrorKind::OutcomeUnknown) {
                            pending.remember(fingerprint, &key);
                        } else {
                            pending.forget(fingerprint);
                        }
                        tools::failure(&e, max_body)
                    }
                }
            }
            tools::X402_INSPECT => {
                let mut call = match tools::http_call(arguments) {
                    Ok(c) => c,
                    Err(e) => return tools::invalid_arguments(&e),
                };
                call.max_amount = tighter(call.max_amount, self.inner.options.max_amount.clone());
                call.idempotency_key = None;
                match wallet.inspect(call).await {
                    Ok(v) => {
                        let text = tools::inspection_text(&v);
                        tools::report(v, Some(text))
                    }
                    Err(e) => tools::failure(&e, max_body),
                }
            }
            tools::GET_BUDGET => match wallet.budget().await {
                Ok(v) => tools::report(v, None),
                Err(e) => tools::failure(&e, max_body),
            },
            tools::LIST_PAYMENTS => {
                let limit = match tools::payments_limit(arguments) {
                    Ok(l) => l,
                    Err(e) => return tools::invalid_arguments(&e),
                };
                match wallet.payments(limit).await {
                    Ok(v) => tools::report(v, None),
                    Err(e) => tools::failure(&e, max_body),
                }
            }
            other => tools::invalid_arguments(&format!("no tool named {other:?}")),
        }
    }

    fn instructions(&self) -> String {
        let mut s = format!(
            "Pays x402 (HTTP 402 Payment Required) APIs{} from the user's wallet ({}). The wallet's enclave enforces the spending policy (per-payment limit, session cap, time-window budgets, allowed networks and payees): no tool can change a limit, approve a held payment or export a key. ",
            if self.inner.upstream.is_some() { " and paid MCP tools" } else { "" },
            self.inner.wallet.describe(),
        );
        if self.inner.upstream.is_none() || self.inner.options.wallet_tools {
            s.push_str("Use x402_inspect to see a price without paying, x402_fetch to fetch a URL and pay, get_budget to see what is left, list_payments for this session's history. ");
        }
        if let Some(up) = &self.inner.upstream {
            s.push_str(&format!(
                "The tools of the MCP server {} are forwarded; a call it answers with an x402 payment requirement is paid through the wallet once and sent again with the payment{}; the result then says what was paid. ",
                up.url(),
                match &self.inner.options.max_amount {
                    Some(m) => format!(" (at most {m} per call)"),
                    None => String::new(),
                }
            ));
        }
        s.push_str("A payment held for a human's approval returns its hold id: tell the user, and make the same call again once it is approved (it is paid once). A payment denied by policy returns its reason code: do not retry it unchanged.");
        s
    }
}

/// The tighter of the caller's and the operator's `max_amount`, when both are plain amounts
/// in the same unit; otherwise the operator's wins (the operator's guard is never loosened).
fn tighter(caller: Option<String>, operator: Option<String>) -> Option<String> {
    match (caller, operator) {
        (None, o) => o,
        (c, None) => c,
        (Some(c), Some(o)) => match (split_amount(&c), split_amount(&o)) {
            (Some((cn, cu)), Some((on, ou))) if cu.eq_ignore_ascii_case(&ou) => {
                if decimal_le(&cn, &on) {
                    Some(c)
                } else {
                    Some(o)
                }
            }
            _ => Some(o),
        },
    }
}

/// `"0.05 USDC"` → `("0.05", "USDC")`, `"$0.05"` → `("0.05", "$")`, `"0.05"` → `("0.05", "")`.
fn split_amount(s: &str) -> Option<(String, String)> {
    let s = s.trim();
    let (s, unit) = match s.strip_prefix('$') {
        Some(rest) => (rest.trim(), "$".to_owned()),
        None => match s.split_once(char::is_whitespace) {
            Some((n, u)) => (n, u.trim().to_owned()),
            None => (s, String::new()),
        },
    };
    let valid = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
        && s.matches('.').count() <= 1
        && s.chars().any(|c| c.is_ascii_digit());
    valid.then(|| (s.to_owned(), unit))
}

/// `a <= b` for plain decimal strings.
fn decimal_le(a: &str, b: &str) -> bool {
    let parts = |s: &str| {
        let (i, f) = s.split_once('.').unwrap_or((s, ""));
        (i.trim_start_matches('0').to_owned(), f.trim_end_matches('0').to_owned())
    };
    let ((ai, af), (bi, bf)) = (parts(a), parts(b));
    if ai.len() != bi.len() {
        return ai.len() < bi.len();
    }
    if ai != bi {
        return ai < bi;
    }
    let width = af.len().max(bf.len());
    format!("{af:0<width$}") <= format!("{bf:0<width$}")
}

impl<W: Wallet> ServerHandler for McpServer<W> {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("walletctl-mcp", env!("CARGO_PKG_VERSION"))
                    .with_title("x402 agent wallet")
                    .with_description(
                        "Pays x402 APIs and paid MCP tools within limits enforced in the wallet's enclave",
                    ),
            )
            .with_instructions(self.instructions())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools().await?))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request.name, request.arguments).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_max_amount_is_never_loosened() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(tighter(None, None), None);
        assert_eq!(tighter(s("0.5"), None), s("0.5"));
        assert_eq!(tighter(None, s("0.1")), s("0.1"));
        assert_eq!(tighter(s("0.05"), s("0.1")), s("0.05"));
        assert_eq!(tighter(s("0.5"), s("0.1")), s("0.1"));
        assert_eq!(tighter(s("0.10 USDC"), s("0.1 usdc")), s("0.10 USDC"));
        assert_eq!(tighter(s("$0.01"), s("$0.02")), s("$0.01"));
        assert_eq!(tighter(s("10"), s("9.99")), s("9.99"));
        assert_eq!(tighter(s("010.5"), s("10.50")), s("010.5"));
        // Different units or unreadable: the operator's.
        assert_eq!(tighter(s("0.01 EURC"), s("0.1 USDC")), s("0.1 USDC"));
        assert_eq!(tighter(s("lots"), s("0.1")), s("0.1"));
        assert!(decimal_le("0.1", "0.10") && decimal_le("0.10", "0.1"));
        assert!(!decimal_le("1", "0.999") && decimal_le("0.999", "1"));
    }
}
