//! The paying proxy (`walletctl mcp --upstream URL`): a remote MCP server reached over
//! streamable HTTP, whose tools are listed as they are (schemas, annotations, `_meta`) and
//! whose calls are forwarded; a call answered with an x402 payment requirement
//! ([`crate::binding`]) is paid through the wallet and sent once more with the payment.
//!
//! Bounded: one paid retry per call, never a second payment for one call. The idempotency key of
//! a call whose payment is held for approval, or whose outcome is unknown, is remembered
//! ([`Pending`]), so the agent's retry of the same call (same tool, same arguments) gets the
//! same payment from the enclave — approved, or replayed and never charged twice.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    hash::{Hash as _, Hasher as _},
    sync::Mutex,
    time::{Duration, Instant},
};

use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ClientConfig,
        ContentBlock, ErrorData, Implementation, JsonObject, MetaObject, RequestMetaObject, Tool,
    },
    service::RunningService,
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
    Peer, RoleClient, ServiceError, ServiceExt as _,
};
use serde_json::{json, Map, Value};

use crate::{
    binding::{self, PaymentEncoding, PaymentRequired},
    tools,
    wallet::{ErrorKind, Payment, Wallet, WalletError},
};

/// `result._meta` key under which the proxy adds what it paid (next to the server's
/// `x402/payment-response`).
pub const WALLET_PAYMENT_META: &str = "walletctl/payment";

/// How long a remembered idempotency key is kept (longer than any hold lives).
const PENDING_TTL: Duration = Duration::from_secs(24 * 3600);
/// How many remembered keys at most (the oldest go first).
const PENDING_MAX: usize = 1024;

/// How long one request to the upstream may take by default (`--upstream-timeout`): listing
/// its tools, or one call (the unpaid call and the paid retry each get this much).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest message read from the upstream: a JSON response body, or one SSE event. rmcp
/// refuses a larger one (its own default is the same 16 MiB; set here so it stays bounded).
pub const UPSTREAM_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The idempotency keys of calls whose payment is held or whose outcome is unknown, by the
/// call's fingerprint (tool or URL, arguments): the agent's retry of the same call reuses the
/// key, so it is paid once.
#[derive(Debug, Default)]
pub struct Pending {
    keys: Mutex<HashMap<u64, (String, Instant)>>,
}

impl Pending {
    /// The fingerprint of a call made of `parts`.
    #[must_use]
    pub fn fingerprint(parts: &[&[u8]]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for p in parts {
            p.len().hash(&mut h);
            p.hash(&mut h);
        }
        h.finish()
    }

    /// The key remembered for `fingerprint`, if any (and not expired).
    #[must_use]
    pub fn key_for(&self, fingerprint: u64) -> Option<String> {
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match keys.get(&fingerprint) {
            Some((k, at)) if at.elapsed() < PENDING_TTL => Some(k.clone()),
            Some(_) => {
                keys.remove(&fingerprint);
                None
            }
            None => None,
        }
    }

    /// Remembers `key` for `fingerprint`.
    pub fn remember(&self, fingerprint: u64, key: &str) {
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.retain(|_, (_, at)| at.elapsed() < PENDING_TTL);
        if keys.len() >= PENDING_MAX && !keys.contains_key(&fingerprint) {
            if let Some(oldest) = keys.iter().min_by_key(|(_, (_, at))| *at).map(|(f, _)| *f) {
                keys.remove(&oldest);
            }
        }
        keys.insert(fingerprint, (key.to_owned(), Instant::now()));
    }

    /// Forgets `fingerprint` (the call was paid, or refused for good).
    pub fn forget(&self, fingerprint: u64) {
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&fingerprint);
    }
}

/// A connected upstream MCP server.
#[derive(Debug)]
pub struct Upstream {
    url: String,
    service: RunningService<RoleClient, ClientConfig>,
    names: Mutex<HashSet<String>>,
    timeout: Duration,
}

/// The proxy's client identity towards the upstream.
#[must_use]
pub fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("walletctl-mcp", env!("CARGO_PKG_VERSION"))
            .with_title("walletctl paying MCP proxy"),
    )
}

impl Upstream {
    /// Connects to the MCP server at `url` over streamable HTTP, sending `headers` (for
    /// example its own `Authorization`) with every request. Each request to it (the handshake,
    /// a listing, a call) must be answered within `timeout`; a message larger than
    /// [`UPSTREAM_MAX_MESSAGE_BYTES`] is refused.
    ///
    /// # Errors
    /// A sentence: a bad URL or header, or the server did not complete the MCP handshake.
    pub async fn connect(
        url: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Self, String> {
        use reqwest::header::{HeaderName, HeaderValue};
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| format!("--upstream {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("--upstream {url:?} must be an http:// or https:// URL"));
        }
        let mut custom = HashMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| format!("--upstream-header: {k:?} is not a header name"))?;
            let value = HeaderValue::from_str(v.trim()).map_err(|_| {
                format!("--upstream-header: the value of {k} is not a header value")
            })?;
            custom.insert(name, value);
        }
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("walletctl-mcp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned())
            .custom_headers(custom)
            .max_json_response_size(UPSTREAM_MAX_MESSAGE_BYTES)
            .max_sse_event_size(UPSTREAM_MAX_MESSAGE_BYTES)
            .reinit_on_expired_session(true);
        let transport = StreamableHttpClientTransport::with_client(http, config);
        let service = tokio::time::timeout(timeout, client_config().serve(transport))
            .await
            .map_err(|_| {
                format!(
                    "the MCP server at {url} did not complete the handshake within {} s",
                    timeout.as_secs_f64()
                )
            })?
            .map_err(|e| format!("cannot connect to the MCP server at {url}: {e}"))?;
        let upstream = Self::new(url, service).with_timeout(timeout);
        // Learn the upstream's tool names now, so that `upstream_<name>` (an upstream tool
        // named like one of the wallet's) is routed before any listing.
        upstream.tools().await.map_err(|e| {
            format!("the MCP server at {url} did not list its tools: {}", e.message)
        })?;
        Ok(upstream)
    }

    /// An upstream over an already running client `service` (`url` is for messages), with
    /// [`DEFAULT_UPSTREAM_TIMEOUT`].
    #[must_use]
    pub fn new(url: &str, service: RunningService<RoleClient, ClientConfig>) -> Self {
        Self {
            url: url.to_owned(),
            service,
            names: Mutex::new(HashSet::new()),
            timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }

    /// Each request to the upstream must be answered within `timeout` (at least 1 ms).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long one request to the upstream may take.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One `tools/call`, within the timeout; `Err(None)` when it timed out (the request is
    /// cancelled: rmcp sends `notifications/cancelled` when its future is dropped).
    async fn call_tool(
        &self,
        params: CallToolRequestParams,
    ) -> Result<Result<CallToolResponse, ServiceError>, Duration> {
        tokio::time::timeout(self.timeout, self.peer().call_tool_once(params))
            .await
            .map_err(|_| self.timeout)
    }

    /// The upstream's URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client peer.
    #[must_use]
    pub fn peer(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }

    /// The upstream's tools, all pages, as it describes them.
    ///
    /// # Errors
    /// The upstream's error, as a protocol error.
    pub async fn tools(&self) -> Result<Vec<Tool>, ErrorData> {
        let tools = tokio::time::timeout(self.timeout, self.peer().list_all_tools())
            .await
            .map_err(|_| {
                ErrorData::internal_error(
                    format!(
                        "the upstream MCP server {} did not list its tools within {} s",
                        self.url,
                        self.timeout.as_secs_f64()
                    ),
                    None,
                )
            })?
            .map_err(|e| self.unavailable(&e))?;
        let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        names.clear();
        names.extend(tools.iter().map(|t| t.name.to_string()));
        Ok(tools)
    }

    /// Whether the upstream listed a tool named `name` (as of the last listing).
    #[must_use]
    pub fn has_tool(&self, name: &str) -> bool {
        self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(name)
    }

    fn unavailable(&self, e: &ServiceError) -> ErrorData {
        match e {
            ServiceError::McpError(e) => e.clone(),
            other => ErrorData::internal_error(
                format!("the upstream MCP server {} did not answer: {other}", self.url),
                None,
            ),
        }
    }
}

/// What the proxy pays with.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// The most one paid call may cost, token units (checked before signing; the enclave's
    /// limits apply in any case).
    pub max_amount: Option<String>,
    /// How the payment is sent (the spec's JSON object unless the operator chose a
    /// compatibility encoding).
    pub encoding: PaymentEncoding,
}

/// The payment requirement in a tool result, if it is one.
fn detect(result: &CallToolResult) -> Option<PaymentRequired> {
    binding::from_tool_result(&serde_json::to_value(result).ok()?)
}

/// Forwards the call `name(arguments)` to the upstream, paying an x402 payment requirement
/// once through `wallet`.
///
/// # Errors
/// The upstream's JSON-RPC error (passed through), or an internal error when it cannot be
/// reached. Wallet refusals are tool error results the model can read.
pub async fn call<W: Wallet>(
    upstream: &Upstream,
    wallet: &W,
    options: &ProxyOptions,
    pending: &Pending,
    name: Cow<'static, str>,
    arguments: Option<JsonObject>,
) -> Result<CallToolResponse, ErrorData> {
    let mut base = CallToolRequestParams::new(name.clone());
    base.arguments = arguments;
    let args_json = base.arguments.as_ref().map(|a| Value::Object(a.clone()).to_string());
    let fingerprint = Pending::fingerprint(&[
        b"tool",
        name.as_bytes(),
        args_json.as_deref().unwrap_or("").as_bytes(),
    ]);
    let first = upstream.call_tool(base.clone()).await.map_err(|t| {
        // Nothing was paid yet: a protocol error, as when the upstream cannot be reached.
        ErrorData::internal_error(
            format!(
                "the upstream MCP server {} did not answer the call to {name} within {} s (--upstream-timeout); nothing was paid",
                upstream.url(),
                t.as_secs_f64()
            ),
            None,
        )
    })?;
    let required = match first {
        Ok(CallToolResponse::Complete(result)) => match detect(&result) {
            Some(r) => r,
            None => return Ok(result.into()),
        },
        Ok(other) => return Ok(other),
        Err(ServiceError::McpError(e)) => match binding::from_error(e.code.0, e.data.as_ref()) {
            Some(r) => r,
            None => return Err(e),
        },
        Err(e) => return Err(upstream.unavailable(&e)),
    };
    tracing::info!(tool = %name, signal = required.signal.as_str(), "paid tool: payment required");
    let key = pending.key_for(fingerprint).unwrap_or_else(wallet_client::random_idempotency_key);
    let signed = match wallet.sign(&required.value, options.max_amount.as_deref(), &key).await {
        Ok(s) => s,
        Err(e) => {
            return Ok(match e.kind {
                ErrorKind::Held => {
                    pending.remember(fingerprint, &key);
                    tools::held(&e, &name, true)
                }
                ErrorKind::OutcomeUnknown | ErrorKind::Network => {
                    pending.remember(fingerprint, &key);
                    with_requirement(tools::failure(&e, 0), &required)
                }
                _ => {
                    pending.forget(fingerprint);
                    with_requirement(tools::failure(&e, 0), &required)
                }
            }
            .into())
        }
    };
    // Until the paid call's outcome is known, a retry of this call must reuse the payment.
    pending.remember(fingerprint, &key);
    let mut meta = Map::new();
    options.encoding.insert(&mut meta, &signed.payload, &signed.header_value);
    let mut paid = base;
    paid.meta = Some(RequestMetaObject::from(meta));
    let answer = match upstream.call_tool(paid).await {
        Ok(a) => a,
        // The key stays: calling again resends this same payment.
        Err(t) => {
            return Ok(lost(
                &format!(
                    "the paid call to {} got no answer within {} s (--upstream-timeout)",
                    upstream.url(),
                    t.as_secs_f64()
                ),
                signed.payment,
                &key,
            )
            .into())
        }
    };
    match answer {
        Ok(CallToolResponse::Complete(result)) => {
            pending.forget(fingerprint);
            match detect(&result) {
                Some(again) => Ok(refused(&again, signed.payment).into()),
                None => Ok(paid_result(result, signed.payment).into()),
            }
        }
        Ok(other) => {
            pending.forget(fingerprint);
            Ok(other)
        }
        Err(ServiceError::McpError(e)) => {
            if let Some(again) = binding::from_error(e.code.0, e.data.as_ref()) {
                pending.forget(fingerprint);
                return Ok(refused(&again, signed.payment).into());
            }
            // The server failed the paid call; the x402 binding settles only successful calls.
            // The key stays: calling again resends this same payment.
            Ok(lost(
                &format!(
                    "the upstream answered the paid call with an error: {} ({})",
                    e.message, e.code.0
                ),
                signed.payment,
                &key,
            )
            .into())
        }
        Err(e) => Ok(lost(
            &format!("the paid call to {} got no answer: {e}", upstream.url()),
            signed.payment,
            &key,
        )
        .into()),
    }
}

/// Adds the server's requirement to a refusal result, for the model to see what was asked.
fn with_requirement(mut r: CallToolResult, required: &PaymentRequired) -> CallToolResult {
    if let Some(Value::Object(o)) = r.structured_content.as_mut() {
        o.insert("paymentRequired".into(), required.value.clone());
    }
    r
}

/// The paid call succeeded (as far as the payment goes): the tool's result, untouched, plus
/// what was paid in `_meta["walletctl/payment"]` and one text block the agent sees.
fn paid_result(mut result: CallToolResult, mut payment: Payment) -> CallToolResult {
    let settlement = binding::settlement(result.meta.as_deref());
    if let Some(s) = &settlement {
        payment.transaction = s
            .get("transaction")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        payment.settlement = Some(s.clone());
    }
    let mut note = format!("[x402] {} for this call", payment.summary());
    if settlement.is_none() {
        note.push_str("; the server reported no settlement");
    }
    if result.is_error == Some(true) {
        note.push_str(". The tool reported an error: servers that follow the x402 MCP binding do not settle failed calls");
    }
    result
        .meta
        .get_or_insert_with(MetaObject::new)
        .insert(WALLET_PAYMENT_META.into(), json!(payment));
    result.content.push(ContentBlock::text(note));
    result
}

/// The server asked for a payment again after being paid: it refused the payment (or its
/// settlement failed). Not paid again.
fn refused(again: &PaymentRequired, payment: Payment) -> CallToolResult {
    let why = again.error().unwrap_or("payment refused");
    let mut e = WalletError::new(
        ErrorKind::ServerRefused,
        "SERVER_REFUSED",
        format!(
            "the MCP server refused the payment: {why} (sent {} {} to {} on {})",
            payment.charged, payment.asset_symbol, payment.pay_to, payment.network
        ),
    );
    e.payment = Some(payment);
    with_requirement(tools::failure(&e, 0), again)
}

/// The paid call's outcome is unknown: calling the tool again with the same arguments resends
/// the same payment (never charged twice).
fn lost(message: &str, payment: Payment, key: &str) -> CallToolResult {
    let mut e = WalletError::new(
        ErrorKind::OutcomeUnknown,
        "OUTCOME_UNKNOWN",
        format!(
            "{message}. Calling the tool again with the same arguments resends the same payment"
        ),
    );
    e.payment = Some(payment);
    e.idempotency_key = Some(key.to_owned());
    tools::failure(&e, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keys_are_per_call_and_bounded() {
        let p = Pending::default();
        let a = Pending::fingerprint(&[b"tool", b"weather", b"{\"city\":\"Paris\"}"]);
        let b = Pending::fingerprint(&[b"tool", b"weather", b"{\"city\":\"Rome\"}"]);
        // Length-prefixed parts: moving bytes between parts changes the fingerprint.
        assert_ne!(Pending::fingerprint(&[b"ab", b"c"]), Pending::fingerprint(&[b"a", b"bc"]));
        assert_ne!(a, b);
        assert_eq!(p.key_for(a), None);
        p.remember(a, "k1");
        assert_eq!((p.key_for(a).as_deref(), p.key_for(b)), (Some("k1"), None));
        p.forget(a);
        assert_eq!(p.key_for(a), None);
        for i in 0..(PENDING_MAX as u64 + 10) {
            p.remember(i, "k");
        }
        assert!(p.keys.lock().unwrap().len() <= PENDING_MAX);
    }
}
