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
    /// Operator's ceiling per paid call (token units): the proxy's paid calls, and every
    /// `x402_fetch` / `x402_inspect` (whose `maxAmount`, when given, must hold too:
    /// [`combined_max_amount`]).
    pub max_amount: Option<String>,
    /// How the proxy sends payments (the spec's object by default).
    pub encoding: PaymentEncoding,
    /// List the wallet's own tools next to the upstream's. The wallet's names always mean the
    /// wallet's tools then: an upstream tool of the same name is listed as `upstream_<name>`
    /// ([`UPSTREAM_PREFIX`]). Without them, the upstream's names pass through untouched.
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
    /// Tool names whose collision with the upstream was already said on stderr.
    warned: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Where a tool call goes.
enum Route<'a> {
    Wallet,
    /// The upstream's tool of this name.
    Upstream(&'a str),
    Unknown,
}

/// The prefix under which an upstream tool named like one of the wallet's tools is listed
/// (`upstream_get_budget`), when the wallet's tools are listed too.
pub const UPSTREAM_PREFIX: &str = "upstream_";

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
        Self {
            inner: Arc::new(Inner {
                wallet,
                options,
                upstream,
                pending: Pending::default(),
                warned: std::sync::Mutex::default(),
            }),
        }
    }

    /// Every tool this server lists.
    ///
    /// The wallet's four names always mean the wallet's tools (unless `options.wallet_tools` is
    /// false): an upstream tool of the same name is never listed under it; it is listed as
    /// `upstream_<name>` ([`UPSTREAM_PREFIX`]), routed to the upstream's own name, with a
    /// description that says it is the upstream's, not the wallet's (and dropped if the
    /// upstream also has a tool of that name). Each such collision is said once on stderr.
    ///
    /// # Errors
    /// The upstream could not list its tools.
    pub async fn tools(&self) -> Result<Vec<Tool>, ErrorData> {
        let Some(up) = &self.inner.upstream else { return Ok(tools::definitions()) };
        let listed = up.tools().await?;
        if !self.inner.options.wallet_tools {
            return Ok(listed);
        }
        let names: std::collections::HashSet<String> =
            listed.iter().map(|t| t.name.to_string()).collect();
        let mut all = Vec::with_capacity(listed.len() + tools::NAMES.len());
        for mut t in listed {
            if !tools::NAMES.contains(&t.name.as_ref()) {
                all.push(t);
                continue;
            }
            let original = t.name.to_string();
            let alias = format!("{UPSTREAM_PREFIX}{original}");
            if names.contains(&alias) {
                self.warn_once(&original, &format!(
                    "walletctl mcp: warning: the upstream MCP server {} lists a tool named {original:?}, one of the wallet's own tools: the wallet's {original} is listed, and the upstream's is NOT (it also has a tool named {alias:?}, so it cannot be renamed)",
                    up.url()
                ));
                continue;
            }
            self.warn_once(&original, &format!(
                "walletctl mcp: warning: the upstream MCP server {} lists a tool named {original:?}, one of the wallet's own tools: the wallet's {original} is listed, and the upstream's is listed as {alias:?}",
                up.url()
            ));
            t.description = Some(
                format!(
                    "[The tool {original:?} of the MCP server {}, renamed because the wallet has a tool of that name: this is NOT the wallet's {original}; calls to it go to that server.] {}",
                    up.url(),
                    t.description.as_deref().unwrap_or("")
                )
                .into(),
            );
            t.name = alias.into();
            t.title = t.title.map(|title| format!("{title} (upstream server)"));
            all.push(t);
        }
        all.extend(tools::definitions());
        Ok(all)
    }

    /// Says `message` on stderr once per tool `name` (stdout is the MCP channel, and walletctl
    /// installs no tracing subscriber).
    fn warn_once(&self, name: &str, message: &str) {
        let mut warned =
            self.inner.warned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.insert(name.to_owned()) {
            eprintln!("{message}");
        }
    }

    /// Where a call to `name` goes: the wallet's tool, or the upstream's tool of that name.
    fn route<'a>(&self, name: &'a str) -> Route<'a> {
        let Some(up) = &self.inner.upstream else {
            return if tools::NAMES.contains(&name) { Route::Wallet } else { Route::Unknown };
        };
        if !self.inner.options.wallet_tools {
            return Route::Upstream(name);
        }
        if tools::NAMES.contains(&name) {
            return Route::Wallet;
        }
        match name.strip_prefix(UPSTREAM_PREFIX) {
            // `upstream_get_budget` is the upstream's `get_budget`, unless the upstream has a
            // tool of that very name.
            Some(original) if tools::NAMES.contains(&original) && !up.has_tool(name) => {
                Route::Upstream(original)
            }
            _ => Route::Upstream(name),
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
        let (upstream_name, up) = match (self.route(&name), &self.inner.upstream) {
            (Route::Wallet, _) => {
                return Ok(self.wallet_tool(&name, arguments.as_ref()).await.into())
            }
            (Route::Upstream(n), Some(up)) => (n.to_owned(), up),
            _ => return Err(ErrorData::invalid_params(format!("no tool named {name:?}"), None)),
        };
        let options = ProxyOptions {
            max_amount: self.inner.options.max_amount.clone(),
            encoding: self.inner.options.encoding,
        };
        proxy::call(
            up,
            &self.inner.wallet,
            &options,
            &self.inner.pending,
            std::borrow::Cow::Owned(upstream_name),
            arguments,
        )
        .await
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
                call.max_amount = match self.max_amount(call.max_amount.as_deref()) {
                    Ok(m) => m,
                    Err(e) => return tools::invalid_arguments(&e),
                };
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
                let mut call = match tools::inspect_call(arguments) {
                    Ok(c) => c,
                    Err(e) => return tools::invalid_arguments(&e),
                };
                call.max_amount = match self.max_amount(call.max_amount.as_deref()) {
                    Ok(m) => m,
                    Err(e) => return tools::invalid_arguments(&e),
                };
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

    /// The limit a wallet tool's call runs under: the agent's `maxAmount` and the operator's
    /// `--max-amount` both hold ([`combined_max_amount`]).
    fn max_amount(&self, agent: Option<&str>) -> Result<Option<String>, String> {
        combined_max_amount(agent, self.inner.options.max_amount.as_deref())
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
        s.push_str("A payment held for a human's approval returns its hold id: tell the user, and once it is approved make the same call again with the idempotencyKey the held result gave (it is paid once). A payment denied by policy returns its reason code: do not retry it unchanged.");
        s
    }
}

/// The one limit that satisfies both the agent's `maxAmount` and the operator's
/// `--max-amount`: the smaller amount, in the narrower unit. A bare number (`0.5`) limits an
/// option in any token; `$0.5` (or `0.5 USD`) only USD stablecoins (a symbol starting with
/// `USD`, as `wallet-agent` reads it); `0.5 USDC` only that token. Both limits are always
/// enforced: the operator's is never loosened, the agent's is never ignored.
///
/// # Errors
/// A sentence for the model: a limit does not read as an amount, or the two are in units no
/// payment can satisfy at once (`0.1 EURC` and `$0.5`): nothing is sent or paid then.
pub fn combined_max_amount(
    agent: Option<&str>,
    operator: Option<&str>,
) -> Result<Option<String>, String> {
    let (agent, operator) = match (agent, operator) {
        (None, None) => return Ok(None),
        (Some(a), None) => return parse_limit(a, "maxAmount").map(|_| Some(a.trim().to_owned())),
        (None, Some(o)) => {
            return parse_limit(o, "the operator's --max-amount").map(|_| Some(o.trim().to_owned()))
        }
        (Some(a), Some(o)) => (a, o),
    };
    let a = parse_limit(agent, "maxAmount")?;
    let o = parse_limit(operator, "the operator's --max-amount")?;
    let unit = narrower_unit(a.symbol.as_deref(), o.symbol.as_deref()).ok_or_else(|| {
        format!(
            "maxAmount {agent:?} and the operator's --max-amount {operator:?} are in different units: no payment can satisfy both, so nothing is paid. Give maxAmount in the operator's unit, or omit it"
        )
    })?;
    let number = wallet_policy::amount::format_units(a.units.min(o.units));
    Ok(Some(match unit {
        None => number,
        Some(u) if u == wallet_policy::amount::USD => format!("${number}"),
        Some(u) => format!("{number} {u}"),
    }))
}

/// Checks that `text` reads as an amount (any unit: the payer checks it against the enclave's
/// asset registry).
///
/// # Errors
/// A sentence naming `what`.
pub fn check_max_amount(text: &str) -> Result<(), String> {
    parse_limit(text, "--max-amount").map(|_| ())
}

fn parse_limit(text: &str, what: &str) -> Result<wallet_policy::amount::HumanAmount, String> {
    // The unit written is accepted here (the payer checks it against the enclave's registry).
    let unit = text.trim().trim_start_matches('$').split_whitespace().nth(1).unwrap_or("");
    wallet_policy::amount::parse_human_in(text, &[unit]).map_err(|e| {
        format!(
            "{what} {text:?} is not an amount such as \"0.05\", \"0.05 USDC\" or \"$0.05\": {e}"
        )
    })
}

/// The unit of the options both limits allow: `None` (any token) is the widest, `USD` (any
/// USD stablecoin) is narrower, a symbol the narrowest. `None`: no token satisfies both.
fn narrower_unit(a: Option<&str>, b: Option<&str>) -> Option<Option<String>> {
    use wallet_policy::amount::USD;
    let usd_token = |s: &str| s.to_uppercase().starts_with(USD);
    match (a, b) {
        (None, x) | (x, None) => Some(x.map(str::to_owned)),
        (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => Some(Some(x.to_uppercase())),
        (Some(x), Some(y)) if x == USD && usd_token(y) => Some(Some(y.to_uppercase())),
        (Some(x), Some(y)) if y == USD && usd_token(x) => Some(Some(x.to_uppercase())),
        _ => None,
    }
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
        let c = |a: Option<&str>, o: Option<&str>| combined_max_amount(a, o).unwrap();
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(c(None, None), None);
        assert_eq!(c(Some("0.5"), None), s("0.5"));
        assert_eq!(c(None, Some("0.1")), s("0.1"));
        assert_eq!(c(Some("0.05"), Some("0.1")), s("0.05"));
        assert_eq!(c(Some("0.5"), Some("0.1")), s("0.1"));
        assert_eq!(c(Some("0.10 USDC"), Some("0.1 usdc")), s("0.1 USDC"));
        assert_eq!(c(Some("$0.01"), Some("$0.02")), s("$0.01"));
        assert_eq!(c(Some("10"), Some("9.99")), s("9.99"));
        assert_eq!(c(Some("010.5"), Some("10.50")), s("10.5"));
        assert_eq!(c(Some("0.5 USD"), Some("$0.2")), s("$0.2"));
    }

    /// Finding: with the limits in different units, only the operator's was enforced.
    #[test]
    fn the_agents_max_amount_holds_in_another_unit() {
        let c = |a: &str, o: &str| combined_max_amount(Some(a), Some(o));
        let s = |v: &str| Ok(Some(v.to_owned()));
        // The agent's 0.01 (any token) under the operator's $0.5: at most $0.01.
        assert_eq!(c("0.01", "$0.5"), s("$0.01"));
        // The agent's $0.5 under the operator's bare 0.01: still $0.01, never $0.5.
        assert_eq!(c("$0.5", "0.01"), s("$0.01"));
        assert_eq!(c("$0.01", "0.5"), s("$0.01"));
        assert_eq!(c("0.02 USDC", "$0.5"), s("0.02 USDC"));
        assert_eq!(c("$0.02", "0.5 USDC"), s("0.02 USDC"));
        assert_eq!(c("0.5", "0.02 EURC"), s("0.02 EURC"));
        // No payment satisfies both: refused, with the reason.
        for (a, o) in [("0.01 EURC", "0.1 USDC"), ("$0.01", "0.5 EURC"), ("0.5 EURC", "$1")] {
            let e = c(a, o).unwrap_err();
            assert!(e.contains("different units") && e.contains("nothing is paid"), "{e}");
        }
        // An unreadable limit is refused, not dropped.
        assert!(c("lots", "0.1").unwrap_err().contains("maxAmount \"lots\""));
        assert!(combined_max_amount(Some("-1"), None).is_err());
        assert!(check_max_amount("0.05 USDC").is_ok() && check_max_amount("five").is_err());
    }
}
