//! The wallet's own tools: `x402_fetch`, `x402_inspect`, `get_budget`, `list_payments`.
//!
//! None of them can change a limit, approve a hold or export anything: the session credential
//! cannot, and the enclave enforces every limit. Each result carries `structuredContent` (a JSON
//! object) and a text block for clients that show only text.

use std::{borrow::Cow, sync::Arc};

use base64::Engine as _;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::wallet::{ErrorKind, Fetched, HttpCall, WalletError};

/// `x402_fetch`.
pub const X402_FETCH: &str = "x402_fetch";
/// `x402_inspect`.
pub const X402_INSPECT: &str = "x402_inspect";
/// `get_budget`.
pub const GET_BUDGET: &str = "get_budget";
/// `list_payments`.
pub const LIST_PAYMENTS: &str = "list_payments";

/// The wallet tools' names, in listing order.
pub const NAMES: [&str; 4] = [X402_FETCH, X402_INSPECT, GET_BUDGET, LIST_PAYMENTS];

/// Default and largest `limit` of `list_payments`.
pub const DEFAULT_PAYMENTS_LIMIT: u32 = 20;
/// Largest `limit` of `list_payments`.
pub const MAX_PAYMENTS_LIMIT: u32 = 100;

const FETCH_DESCRIPTION: &str = "Fetch an HTTP(S) URL and, if the server answers 402 Payment Required (x402), pay it from the user's wallet and retry, all within the spending policy the wallet enforces (per-payment limit, session cap, time-window budgets, allowed networks and payees; you cannot change these). \
Returns the HTTP status, response headers, the body (text, truncated past a size limit) and, when a payment was made, what was paid: amount, asset, network, payee and the settlement transaction. \
Use maxAmount (in the token's units, e.g. \"0.05\" for 0.05 USDC) to refuse anything pricier; use x402_inspect first to see the price without paying, and get_budget to see what is left. \
If the payment is held for a human's approval, the result has outcome \"held\" with a holdId and an idempotencyKey: tell the user the hold id, and once they have approved it call x402_fetch again with the same arguments plus that idempotencyKey (the approved payment is used; nothing is paid twice). \
A payment denied by policy is an error result with a reason code (PER_TX_LIMIT, SESSION_CAP, SESSION_BUDGET, NETWORK_NOT_ALLOWED, ...): do not retry it unchanged.";

const INSPECT_DESCRIPTION: &str = "See what a URL costs without paying: sends one unpaid GET (or HEAD) request, with no body (as the first attempt of x402_fetch would), and if the server answers 402 Payment Required reports what it asks (x402 version, each accepted option with its price in the token's units, network, asset and payee) and what the wallet's policy would do: whether the payment would be allowed, held for a human's approval or denied (with the reason code), and which option it would pay. Signs and pays nothing. Only GET and HEAD are sent (other methods are refused, so this tool changes nothing on the server); to price an endpoint that needs another method, use x402_fetch with a maxAmount.";

const BUDGET_DESCRIPTION: &str = "The spending limits of this agent session and what is left, answered by the wallet's enclave: the per-payment limit, the session cap (spent and left), each rolling time window (spent and left), the policy's rules with the networks, assets and payees each allows, the session's own scope (empty: no restriction beyond the policy) and the session's expiry. Read-only; call it before paying to know what you can afford.";

const PAYMENTS_DESCRIPTION: &str = "This session's recent payments and refusals, newest first: time, amount, asset, network, payee, outcome (paid, denied with its reason code, held for approval) and idempotency key. Read-only.";

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(o) => Arc::new(o),
        _ => unreachable!("tool schemas are objects"),
    }
}

fn headers_schema() -> Value {
    json!({
        "type": "object",
        "description": "Request headers, name to value (for example {\"Accept\": \"application/json\"}). The payment header is added by the wallet.",
        "additionalProperties": {"type": "string"}
    })
}

/// The four wallet tools, with their input schemas and annotations.
#[must_use]
pub fn definitions() -> Vec<Tool> {
    let url = json!({"type": "string", "description": "The http:// or https:// URL."});
    let method = json!({"type": "string", "description": "HTTP method: GET (the default without a body), POST (the default with a body), PUT, PATCH, DELETE, HEAD."});
    let body = json!({"type": "string", "description": "Request body, sent identically on the paid retry (set a Content-Type header to match)."});
    let fetch = Tool::new(
        X402_FETCH,
        FETCH_DESCRIPTION,
        schema(json!({
            "type": "object",
            "properties": {
                "url": url,
                "method": method,
                "headers": headers_schema(),
                "body": body,
                "maxAmount": {"type": "string", "description": "The most to pay for this request, in the token's units: \"0.05\", \"0.05 USDC\" or \"$0.05\". Nothing above it is signed or paid."},
                "idempotencyKey": {"type": "string", "description": "Reuse the idempotencyKey of an earlier result to retry the same payment: after a human approved a held payment, or when an answer was lost. The same key never pays twice. Omit it for a new payment."}
            },
            "required": ["url"]
        })),
    )
    .with_title("Fetch a URL, paying with x402")
    .with_annotations(
        ToolAnnotations::with_title("Fetch a URL, paying with x402")
            .read_only(false)
            // Spends money, and sends the method it is given (DELETE, PUT, ...) to the server.
            .destructive(true)
            .idempotent(false)
            .open_world(true),
    );
    let inspect = Tool::new(
        X402_INSPECT,
        INSPECT_DESCRIPTION,
        schema(json!({
            "type": "object",
            "properties": {
                "url": url,
                "method": {"type": "string", "enum": ["GET", "HEAD"], "description": "GET (the default) or HEAD: the only methods this read-only tool sends."},
                "headers": headers_schema(),
                "maxAmount": {"type": "string", "description": "Report whether the price is within this amount, in the token's units (\"0.05\", \"0.05 USDC\" or \"$0.05\")."}
            },
            "required": ["url"]
        })),
    )
    .with_title("Price check an x402 URL (pays nothing)")
    .with_annotations(
        ToolAnnotations::with_title("Price check an x402 URL (pays nothing)")
            .read_only(true)
            .destructive(false)
            .idempotent(true)
            .open_world(true),
    );
    let budget = Tool::new(
        GET_BUDGET,
        BUDGET_DESCRIPTION,
        schema(json!({"type": "object", "properties": {}})),
    )
    .with_title("Spending limits and what is left")
    .with_annotations(
        ToolAnnotations::with_title("Spending limits and what is left")
            .read_only(true)
            .destructive(false)
            .idempotent(true)
            .open_world(false),
    );
    let payments = Tool::new(
        LIST_PAYMENTS,
        PAYMENTS_DESCRIPTION,
        schema(json!({
            "type": "object",
            "properties": {
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAYMENTS_LIMIT, "description": format!("How many entries, newest first (default {DEFAULT_PAYMENTS_LIMIT}, at most {MAX_PAYMENTS_LIMIT}).")}
            }
        })),
    )
    .with_title("This session's payments and refusals")
    .with_annotations(
        ToolAnnotations::with_title("This session's payments and refusals")
            .read_only(true)
            .destructive(false)
            .idempotent(true)
            .open_world(false),
    );
    vec![fetch, inspect, budget, payments]
}

/// Request headers as given: `{"Name": "value"}`, or `["Name: value", ...]` (some models write
/// them so).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HeadersInput {
    Map(Map<String, Value>),
    Lines(Vec<String>),
}

/// An amount as given: `"0.05"`, `"0.05 USDC"`, or a bare number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AmountInput {
    Text(String),
    Number(serde_json::Number),
}

/// `x402_fetch` and `x402_inspect` arguments.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpInput {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Option<HeadersInput>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    max_amount: Option<AmountInput>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// `list_payments` arguments.
#[derive(Debug, Deserialize)]
struct PaymentsInput {
    #[serde(default)]
    limit: Option<serde_json::Number>,
}

/// Reads `x402_fetch` / `x402_inspect` arguments into an [`HttpCall`].
///
/// # Errors
/// A sentence for the model (a tool error result, not a protocol error).
pub fn http_call(arguments: Option<&JsonObject>) -> Result<HttpCall, String> {
    let args = Value::Object(arguments.cloned().unwrap_or_default());
    let input: HttpInput = serde_json::from_value(args).map_err(|e| {
        format!("invalid arguments: {e} (url is required; headers is an object of strings)")
    })?;
    let url = input.url.trim().to_owned();
    if url.is_empty() {
        return Err("invalid arguments: url is empty".to_owned());
    }
    let headers = match input.headers {
        None => Vec::new(),
        Some(HeadersInput::Map(m)) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(_) | Value::Bool(_) => Ok((k, v.to_string())),
                _ => Err(format!("invalid arguments: header {k:?} must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(HeadersInput::Lines(lines)) => lines
            .into_iter()
            .map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| {
                        format!("invalid arguments: header {l:?} is not \"Name: value\"")
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let max_amount = match input.max_amount {
        None => None,
        Some(AmountInput::Text(t)) if t.trim().is_empty() => None,
        Some(AmountInput::Text(t)) => Some(t.trim().to_owned()),
        Some(AmountInput::Number(n)) => Some(n.to_string()),
    };
    Ok(HttpCall {
        method: input.method.map(|m| m.trim().to_ascii_uppercase()).unwrap_or_default(),
        url,
        headers,
        body: input.body.map(String::into_bytes),
        max_amount,
        idempotency_key: input
            .idempotency_key
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty()),
    })
}

/// Reads `x402_inspect` arguments: as [`http_call`], but only `GET` (the default) or `HEAD`
/// and no body, so the tool's read-only annotation holds.
///
/// # Errors
/// A sentence for the model: another method, a body, or what [`http_call`] refuses.
pub fn inspect_call(arguments: Option<&JsonObject>) -> Result<HttpCall, String> {
    let mut call = http_call(arguments)?;
    match call.method.as_str() {
        "" | "GET" => call.method = "GET".to_owned(),
        "HEAD" => {}
        other => {
            return Err(format!(
                "invalid arguments: {X402_INSPECT} only sends GET or HEAD (it is read-only), not {other}; to price an endpoint that needs {other}, use {X402_FETCH} with a maxAmount"
            ))
        }
    }
    if call.body.is_some() {
        return Err(format!(
            "invalid arguments: {X402_INSPECT} sends no body (it only sends GET or HEAD); use {X402_FETCH} with a maxAmount for a request with a body"
        ));
    }
    Ok(call)
}

/// Reads `list_payments`' `limit` (default [`DEFAULT_PAYMENTS_LIMIT`], at most
/// [`MAX_PAYMENTS_LIMIT`]).
///
/// # Errors
/// A sentence for the model.
pub fn payments_limit(arguments: Option<&JsonObject>) -> Result<u32, String> {
    let args = Value::Object(arguments.cloned().unwrap_or_default());
    let input: PaymentsInput =
        serde_json::from_value(args).map_err(|e| format!("invalid arguments: {e}"))?;
    match input.limit {
        None => Ok(DEFAULT_PAYMENTS_LIMIT),
        Some(n) => match n.as_u64() {
            Some(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(u32::MAX).min(MAX_PAYMENTS_LIMIT)),
            _ => Err(format!(
                "invalid arguments: limit must be an integer from 1 to {MAX_PAYMENTS_LIMIT}"
            )),
        },
    }
}

/// A tool error result for bad arguments.
#[must_use]
pub fn invalid_arguments(message: &str) -> CallToolResult {
    let v =
        json!({"outcome": "failed", "error": {"code": "INVALID_ARGUMENTS", "message": message}});
    with_text(CallToolResult::structured_error(v), message.to_owned())
}

/// Replaces the content of `r` with one text block.
fn with_text(mut r: CallToolResult, text: String) -> CallToolResult {
    r.content = vec![ContentBlock::text(text)];
    r
}

/// The body as the model sees it: UTF-8 text up to `max` bytes (cut at a character boundary),
/// else base64 of the first `max` bytes.
fn body_view(body: &[u8], max: usize) -> (Value, &'static str, bool) {
    match std::str::from_utf8(body) {
        Ok(text) => {
            let mut end = text.len().min(max);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            (Value::String(text[..end].to_owned()), "utf-8", end < text.len())
        }
        Err(_) => {
            let end = body.len().min(max);
            (
                Value::String(base64::engine::general_purpose::STANDARD.encode(&body[..end])),
                "base64",
                end < body.len(),
            )
        }
    }
}

/// Response headers as an object (repeated names joined with `, `, names lowercased).
fn headers_object(headers: &[(String, String)]) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        match m.get_mut(&k) {
            Some(Value::String(s)) => {
                s.push_str(", ");
                s.push_str(v);
            }
            _ => {
                m.insert(k, Value::String(v.clone()));
            }
        }
    }
    m
}

/// The `x402_fetch` result for a response (paid or not).
#[must_use]
pub fn fetched(f: &Fetched, max_body_bytes: usize) -> CallToolResult {
    let (body, encoding, truncated) = body_view(&f.body, max_body_bytes);
    let mut s = Map::new();
    s.insert("outcome".into(), json!(if f.payment.is_some() { "paid" } else { "not_required" }));
    s.insert("status".into(), json!(f.status));
    s.insert("headers".into(), Value::Object(headers_object(&f.headers)));
    s.insert("body".into(), body.clone());
    s.insert("bodyEncoding".into(), json!(encoding));
    s.insert("bodyBytes".into(), json!(f.body.len()));
    s.insert("truncated".into(), json!(truncated));
    let note = truncated.then(|| {
        format!("the body is {} bytes; only the first {max_body_bytes} are shown", f.body.len())
    });
    if let Some(n) = &note {
        s.insert("note".into(), json!(n));
    }
    s.insert("payment".into(), f.payment.as_ref().map_or(Value::Null, |p| json!(p)));
    let mut text = format!("HTTP {}", f.status);
    match &f.payment {
        Some(p) => text.push_str(&format!(". {}.", capitalize(&p.summary()))),
        None => text.push_str(". No payment was needed."),
    }
    if let Some(n) = note {
        text.push_str(&format!(" Note: {n}."));
    }
    text.push_str(&format!("\n\n{}", body.as_str().unwrap_or_default()));
    if encoding == "base64" {
        text.push_str("\n(binary body, base64)");
    }
    // An HTTP error status is still a successful fetch (not `isError`): the model reads it.
    with_text(CallToolResult::structured(Value::Object(s)), text)
}

fn capitalize(s: &str) -> Cow<'_, str> {
    let mut c = s.chars();
    match c.next() {
        Some(f) if f.is_lowercase() => Cow::Owned(f.to_uppercase().chain(c).collect()),
        _ => Cow::Borrowed(s),
    }
}

/// The result for a held payment: not an error (nothing failed: a human must decide), clearly
/// marked `outcome: "held"`, with the hold id and the idempotency key to retry with.
#[must_use]
pub fn held(e: &WalletError, tool: &str, is_error: bool) -> CallToolResult {
    let hold = e.hold_id.clone().unwrap_or_default();
    let key = e.idempotency_key.clone().unwrap_or_default();
    let retry = if tool == X402_FETCH {
        format!("once a human approved it, call {X402_FETCH} again with the same arguments and \"idempotencyKey\": \"{key}\"")
    } else {
        format!("once a human approved it, call {tool} again with the same arguments: the approved payment is used")
    };
    let v = json!({
        "outcome": "held",
        "status": 402,
        "holdId": hold,
        "idempotencyKey": key,
        "message": e.message,
        "next": retry,
    });
    let text = format!(
        "PAYMENT HELD FOR A HUMAN'S APPROVAL (hold {}). Nothing was paid. Tell the user: the wallet's policy holds this payment until someone approves it (walletctl approvals approve {}). Then {}; it is paid once, never twice.\n{}",
        if hold.is_empty() { "id unknown" } else { &hold },
        if hold.is_empty() { "HOLD_ID" } else { &hold },
        retry,
        e.message
    );
    let r =
        if is_error { CallToolResult::structured_error(v) } else { CallToolResult::structured(v) };
    with_text(r, text)
}

/// The error result for a failed wallet call (`isError`): the reason code and the message the
/// model reads, the payment if one was made, the server's answer if it gave one.
#[must_use]
pub fn failure(e: &WalletError, max_body_bytes: usize) -> CallToolResult {
    let outcome = match e.kind {
        ErrorKind::Denied => "denied",
        ErrorKind::OverMaxAmount => "over_max_amount",
        ErrorKind::ServerRefused => "server_refused",
        ErrorKind::Network | ErrorKind::OutcomeUnknown => "outcome_unknown",
        _ => "failed",
    };
    let mut v = Map::new();
    v.insert("outcome".into(), json!(outcome));
    v.insert("error".into(), json!({"code": e.code, "message": e.message}));
    if let Some(k) = &e.idempotency_key {
        v.insert("idempotencyKey".into(), json!(k));
    }
    if let Some(p) = &e.payment {
        v.insert("payment".into(), json!(p));
    }
    if let Some((status, body)) = &e.response {
        let (body, encoding, truncated) = body_view(body, max_body_bytes);
        v.insert("status".into(), json!(status));
        v.insert("body".into(), body);
        v.insert("bodyEncoding".into(), json!(encoding));
        v.insert("truncated".into(), json!(truncated));
    }
    let advice = match e.kind {
        ErrorKind::Denied => " The wallet's policy refused this payment; nothing was signed or paid. Do not retry it unchanged: tell the user, or check get_budget.",
        // The payer's message says what was signed or charged (nothing, or a payment signed
        // but not sent).
        ErrorKind::OverMaxAmount => "",
        ErrorKind::ServerRefused => " The server refused the payment; it is not paid again automatically.",
        ErrorKind::Network | ErrorKind::OutcomeUnknown => " Whether the payment went through is unknown: retry with the same idempotencyKey to resend the same payment (never charged twice).",
        ErrorKind::Held | ErrorKind::Usage | ErrorKind::Other => "",
    };
    let message = strip_code(&e.message, &e.code);
    let message = message.as_str();
    let stop = if advice.is_empty() || message.ends_with('.') { "" } else { "." };
    let mut text = format!("{}: {message}{stop}{advice}", e.code);
    if let Some(k) = &e.idempotency_key {
        if matches!(e.kind, ErrorKind::Network | ErrorKind::OutcomeUnknown) {
            text.push_str(&format!(" idempotencyKey: {k}"));
        }
    }
    with_text(CallToolResult::structured_error(Value::Object(v)), text)
}

/// `message` without the `CODE: ` that repeats `code` (at its start, or after a label such as
/// `session not accepted: `): the text already starts with the code.
fn strip_code(message: &str, code: &str) -> String {
    if code.is_empty() {
        return message.to_owned();
    }
    message.replacen(&format!("{code}: "), "", 1)
}

/// A read-only tool's result: `value` as `structuredContent` (wrapped as `{"result": value}`
/// when it is not an object) and `text` (or the pretty JSON) as text.
#[must_use]
pub fn report(value: Value, text: Option<String>) -> CallToolResult {
    let value = match value {
        Value::Object(_) => value,
        other => json!({ "result": other }),
    };
    let text = text.unwrap_or_else(|| serde_json::to_string_pretty(&value).unwrap_or_default());
    with_text(CallToolResult::structured(value), text)
}

/// The text of an `x402_inspect` result, from its JSON (`wallet_agent::Inspection`, camelCase).
#[must_use]
pub fn inspection_text(v: &Value) -> String {
    let status = v.get("status").and_then(Value::as_u64).unwrap_or(0);
    if status != 402 {
        let why = v.get("previewUnavailable").and_then(Value::as_str).unwrap_or("");
        return format!("HTTP {status}: no payment is asked. {why}\n{}", pretty(v));
    }
    let mut t = format!(
        "HTTP 402: the server asks for a payment (x402 v{}).",
        v.get("x402Version").and_then(Value::as_u64).unwrap_or(0)
    );
    if let Some(options) = v.get("options").and_then(Value::as_array) {
        for o in options {
            let amount = o
                .get("amountHuman")
                .and_then(Value::as_str)
                .map(|h| {
                    format!("{h} {}", o.get("assetSymbol").and_then(Value::as_str).unwrap_or(""))
                })
                .unwrap_or_else(|| {
                    format!(
                        "{} atomic units of {}",
                        o.get("amount").and_then(Value::as_str).unwrap_or("?"),
                        o.get("asset").and_then(Value::as_str).unwrap_or("?")
                    )
                });
            t.push_str(&format!(
                "\n- option {}: {} on {} to {}",
                o.get("index").and_then(Value::as_u64).unwrap_or(0),
                amount.trim(),
                o.get("network").and_then(Value::as_str).unwrap_or("?"),
                o.get("payTo").and_then(Value::as_str).unwrap_or("?")
            ));
        }
    }
    match v.get("preview").filter(|p| !p.is_null()) {
        Some(p) => {
            let verdict = if p.get("allowed").and_then(Value::as_bool) == Some(true) {
                "the wallet would pay it"
            } else if p.get("wouldHold").and_then(Value::as_bool) == Some(true) {
                "the wallet would hold it for a human's approval"
            } else {
                "the wallet would refuse it"
            };
            t.push_str(&format!("\nPolicy: {verdict}"));
            if let Some(r) = p.get("reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
                t.push_str(&format!(" ({r})"));
            }
            if let Some(m) = p.get("message").and_then(Value::as_str).filter(|m| !m.is_empty()) {
                t.push_str(&format!(": {m}"));
            }
            if let Some(c) = p.get("chosen").filter(|c| !c.is_null()) {
                t.push_str(&format!(
                    "\nIt would pay option {}: {} {} on {}.",
                    c.get("index").and_then(Value::as_u64).unwrap_or(0),
                    c.get("charged").and_then(Value::as_str).unwrap_or("?"),
                    c.get("assetSymbol").and_then(Value::as_str).unwrap_or(""),
                    c.get("network").and_then(Value::as_str).unwrap_or("?")
                ));
            }
        }
        None => {
            if let Some(why) = v.get("previewUnavailable").and_then(Value::as_str) {
                t.push_str(&format!("\nPolicy preview unavailable: {why}"));
            }
        }
    }
    t.push_str("\nNothing was paid.");
    t
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_code_is_said_once() {
        assert_eq!(
            strip_code(
                "session not accepted: SESSION_REVOKED: the session was revoked",
                "SESSION_REVOKED"
            ),
            "session not accepted: the session was revoked"
        );
        assert_eq!(
            strip_code("PER_TX_LIMIT: 0.2 is above 0.1", "PER_TX_LIMIT"),
            "0.2 is above 0.1"
        );
        assert_eq!(strip_code("no code here", "PER_TX_LIMIT"), "no code here");
    }
    use crate::wallet::Payment;

    fn args(v: Value) -> JsonObject {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn definitions_are_what_the_contract_says() {
        let tools = definitions();
        let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, NAMES);
        let by = |n: &str| tools.iter().find(|t| t.name == n).unwrap().clone();
        let fetch = by(X402_FETCH);
        let props: Vec<_> =
            fetch.input_schema["properties"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(props, ["url", "method", "headers", "body", "maxAmount", "idempotencyKey"]);
        assert_eq!(fetch.input_schema["required"], json!(["url"]));
        let a = fetch.annotations.unwrap();
        assert_eq!(
            (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint),
            (Some(false), Some(true), Some(false), Some(true))
        );
        let inspect = by(X402_INSPECT);
        let props: Vec<_> =
            inspect.input_schema["properties"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(props, ["url", "method", "headers", "maxAmount"]);
        assert_eq!(inspect.input_schema["properties"]["method"]["enum"], json!(["GET", "HEAD"]));
        let a = inspect.annotations.unwrap();
        assert_eq!((a.read_only_hint, a.open_world_hint), (Some(true), Some(true)));
        for n in [GET_BUDGET, LIST_PAYMENTS] {
            let a = by(n).annotations.unwrap();
            assert_eq!((a.read_only_hint, a.open_world_hint), (Some(true), Some(false)), "{n}");
        }
        assert!(by(GET_BUDGET).input_schema["properties"].as_object().unwrap().is_empty());
        for t in &tools {
            assert_eq!(t.input_schema["type"], "object");
            assert!(t.description.as_ref().unwrap().len() > 80, "{} is described", t.name);
        }
    }

    #[test]
    fn http_arguments_are_read_leniently() {
        let c = http_call(Some(&args(json!({
            "url": " https://api.example.com/x ",
            "method": "post",
            "headers": {"Content-Type": "application/json", "X-N": 3},
            "body": "{\"a\":1}",
            "maxAmount": 0.05,
            "idempotencyKey": "k-1"
        }))))
        .unwrap();
        assert_eq!((c.method.as_str(), c.url.as_str()), ("POST", "https://api.example.com/x"));
        assert_eq!(
            c.headers,
            [("Content-Type".into(), "application/json".into()), ("X-N".into(), "3".into())]
        );
        assert_eq!(c.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(
            (c.max_amount.as_deref(), c.idempotency_key.as_deref()),
            (Some("0.05"), Some("k-1"))
        );
        let c = http_call(Some(&args(
            json!({"url": "http://x", "headers": ["Accept: text/plain"], "maxAmount": "0.1 USDC"}),
        )))
        .unwrap();
        assert_eq!(c.headers, [("Accept".into(), "text/plain".into())]);
        assert_eq!((c.method.as_str(), c.max_amount.as_deref()), ("", Some("0.1 USDC")));
        // Unknown fields are ignored (models add them); a missing url is not.
        assert!(http_call(Some(&args(json!({"url": "http://x", "extra": 1})))).is_ok());
        assert!(http_call(None).unwrap_err().contains("url"));
        assert!(http_call(Some(&args(json!({"url": "  "})))).is_err());
        assert!(http_call(Some(&args(json!({"url": "http://x", "headers": {"A": {}}})))).is_err());
        assert!(http_call(Some(&args(json!({"url": "http://x", "headers": ["nocolon"]})))).is_err());
    }

    /// Finding: x402_inspect was annotated read-only but sent any method and body.
    #[test]
    fn inspect_sends_only_get_or_head() {
        let c = inspect_call(Some(&args(json!({"url": "http://x"})))).unwrap();
        assert_eq!(c.method, "GET", "explicit: never the payer's POST-with-a-body default");
        let c = inspect_call(Some(&args(json!({"url": "http://x", "method": "head"})))).unwrap();
        assert_eq!(c.method, "HEAD");
        for m in ["POST", "delete", "PUT", "PATCH", "OPTIONS"] {
            let e = inspect_call(Some(&args(json!({"url": "http://x", "method": m})))).unwrap_err();
            assert!(e.contains("only sends GET or HEAD"), "{m}: {e}");
        }
        let e = inspect_call(Some(&args(json!({"url": "http://x", "body": "{}"})))).unwrap_err();
        assert!(e.contains("sends no body"), "{e}");
        let e = inspect_call(Some(&args(json!({"url": "http://x", "method": "GET", "body": "x"}))))
            .unwrap_err();
        assert!(e.contains("sends no body"), "{e}");
    }

    #[test]
    fn payments_limit_is_bounded() {
        assert_eq!(payments_limit(None), Ok(DEFAULT_PAYMENTS_LIMIT));
        assert_eq!(payments_limit(Some(&args(json!({"limit": 5})))), Ok(5));
        assert_eq!(payments_limit(Some(&args(json!({"limit": 5000})))), Ok(MAX_PAYMENTS_LIMIT));
        for bad in [
            json!({"limit": 0}),
            json!({"limit": -1}),
            json!({"limit": 1.5}),
            json!({"limit": "x"}),
        ] {
            assert!(payments_limit(Some(&args(bad.clone()))).is_err(), "{bad}");
        }
    }

    #[test]
    fn fetched_results_bound_the_body_and_show_the_payment() {
        let body = "é".repeat(100).into_bytes(); // 200 bytes
        let f = Fetched {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "text/plain".into()),
                ("set".into(), "a".into()),
                ("Set".into(), "b".into()),
            ],
            body,
            payment: Some(Payment {
                x402_version: 2,
                amount: "10000".into(),
                charged: "0.01".into(),
                asset_symbol: "USDC".into(),
                network: "eip155:84532".into(),
                pay_to: "0xpay".into(),
                transaction: Some("0xtx".into()),
                idempotency_key: "k".into(),
                session_spent: "0.01".into(),
                session_remaining: "0.04".into(),
                ..Payment::default()
            }),
        };
        let r = fetched(&f, 51);
        let s = r.structured_content.clone().unwrap();
        assert_eq!(s["outcome"], "paid");
        assert_eq!(s["body"].as_str().unwrap().len(), 50, "cut at a character boundary");
        assert_eq!((s["truncated"].as_bool(), s["bodyBytes"].as_u64()), (Some(true), Some(200)));
        assert_eq!(s["headers"]["set"], "a, b");
        assert_eq!(s["payment"]["transaction"], "0xtx");
        assert_eq!(s["payment"]["payTo"], "0xpay");
        assert_eq!(r.is_error, Some(false));
        let text = r.content[0].as_text().unwrap().text.clone();
        assert!(text.starts_with("HTTP 200. Paid 0.01 USDC"), "{text}");
        assert!(
            text.contains("settlement transaction 0xtx") && text.contains("0.04 left"),
            "{text}"
        );
        let free = fetched(&Fetched { status: 404, body: vec![0xff, 0], ..Fetched::default() }, 10);
        let s = free.structured_content.unwrap();
        assert_eq!(
            (s["outcome"].as_str(), s["bodyEncoding"].as_str()),
            (Some("not_required"), Some("base64"))
        );
        assert_eq!(s["payment"], Value::Null);
    }

    #[test]
    fn held_and_denied_results() {
        let e = WalletError::held(
            "ap_1",
            "k1",
            "APPROVAL_PENDING: held for human approval as ap_1 (first payment to this payee)",
        );
        let r = held(&e, X402_FETCH, false);
        assert_eq!(r.is_error, Some(false), "a hold is not an error");
        let s = r.structured_content.clone().unwrap();
        assert_eq!(
            (s["outcome"].as_str(), s["holdId"].as_str(), s["idempotencyKey"].as_str()),
            (Some("held"), Some("ap_1"), Some("k1"))
        );
        let text = &r.content[0].as_text().unwrap().text;
        assert!(text.contains("ap_1") && text.contains("\"idempotencyKey\": \"k1\""), "{text}");
        let denied = WalletError::new(
            ErrorKind::Denied,
            "PER_TX_LIMIT",
            "PER_TX_LIMIT: 0.2 USDC is over the per-payment limit 0.1",
        );
        let r = failure(&denied, 100);
        assert_eq!(r.is_error, Some(true));
        let s = r.structured_content.clone().unwrap();
        assert_eq!(
            (s["outcome"].as_str(), s["error"]["code"].as_str()),
            (Some("denied"), Some("PER_TX_LIMIT"))
        );
        let text = &r.content[0].as_text().unwrap().text;
        assert!(text.starts_with("PER_TX_LIMIT: 0.2 USDC is over"), "{text}");
        assert!(text.contains("Do not retry it unchanged"), "{text}");
    }

    #[test]
    fn reports_are_objects() {
        let r = report(json!([1, 2]), None);
        assert_eq!(r.structured_content.unwrap(), json!({"result": [1, 2]}));
        let r = report(json!({"a": 1}), Some("t".into()));
        assert_eq!(r.content[0].as_text().unwrap().text, "t");
    }
}
