//! The x402 MCP binding, as a paying client reads and writes it.
//!
//! **Payment required.** The official binding (`specs/transports-v2/mcp.md`, `@x402/mcp`) answers
//! an unpaid call to a paid tool with a *tool result* whose `isError` is true and whose
//! `structuredContent` (and `content[0].text`, as JSON) is a `PaymentRequired` object
//! (`x402Version`, `accepts`, `resource`, `error`). The variants in use are read too
//! ([`from_tool_result`], [`from_error`]), in the order of the robust client algorithm:
//!
//! 1. a JSON-RPC error with code `402`, or `-32042` (SEP-1036), carrying the `PaymentRequired`
//!    in `error.data` or `error.data.x402`;
//! 2. on an `isError` result: `structuredContent`; `_meta["x402/error"]` (Cloudflare `agents`,
//!    MCPay); `content[0].text` parsed as JSON, directly or as `{"x402/error":{"code":402,
//!    "data":{...}}}` (the older `@x402/mcp` README and the v1 MCP spec).
//!
//! Anything else, including an `isError` result that is not a payment requirement, is not a
//! payment signal and passes through untouched.
//!
//! **Paid retry.** The same `tools/call` with `params._meta["x402/payment"]` set to the
//! `PaymentPayload` as a JSON **object** ([`PaymentEncoding::Object`], the spec). Servers that
//! parse a base64 string instead (Cloudflare `withX402`, MCPay: [`PaymentEncoding::Base64`];
//! Vercel `x402-mcp`, under `x402.payment`: [`PaymentEncoding::Vercel`]) are paid that way
//! only when the operator says so (`walletctl mcp --compat`), never by guessing.
//!
//! **Settlement.** `result._meta["x402/payment-response"]` (`x402.payment-response` for Vercel),
//! an object or a base64 JSON string: [`settlement`].

use base64::Engine as _;
use serde_json::{Map, Value};

/// `params._meta` key of the payment on the paid retry.
pub const PAYMENT_META: &str = "x402/payment";
/// `result._meta` key of the settlement response.
pub const PAYMENT_RESPONSE_META: &str = "x402/payment-response";
/// `_meta` key of a payment requirement (Cloudflare `agents`, MCPay), and the wrapper key of
/// the older text form.
pub const ERROR_META: &str = "x402/error";
/// Vercel `x402-mcp`'s payment key (a base64 `X-PAYMENT` string).
pub const VERCEL_PAYMENT_META: &str = "x402.payment";
/// Vercel `x402-mcp`'s settlement key.
pub const VERCEL_PAYMENT_RESPONSE_META: &str = "x402.payment-response";
/// `MCP_PAYMENT_REQUIRED_CODE` of `@x402/mcp`: a JSON-RPC error whose `data` is the
/// `PaymentRequired`.
pub const MCP_PAYMENT_REQUIRED_CODE: i32 = 402;
/// `JSONRPC_PAYMENT_REQUIRED_CODE` of `@x402/mcp` (SEP-1036's code): `data` or `data.x402`.
pub const JSONRPC_PAYMENT_REQUIRED_CODE: i32 = -32042;

/// Where a payment requirement was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `isError` result, `structuredContent` (the official binding).
    StructuredContent,
    /// `isError` result, `_meta["x402/error"]` (Cloudflare `agents`, MCPay).
    MetaError,
    /// `isError` result, `content[0].text` holding the `PaymentRequired` JSON.
    ContentText,
    /// `isError` result, `content[0].text` holding `{"x402/error":{"code":402,"data":...}}`.
    ContentTextError,
    /// JSON-RPC error `402`.
    RpcError402,
    /// JSON-RPC error `-32042`.
    RpcError32042,
}

impl Signal {
    /// A short name for logs and tool results.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StructuredContent => "structuredContent",
            Self::MetaError => "_meta[\"x402/error\"]",
            Self::ContentText => "content[0].text",
            Self::ContentTextError => "content[0].text[\"x402/error\"]",
            Self::RpcError402 => "JSON-RPC error 402",
            Self::RpcError32042 => "JSON-RPC error -32042",
        }
    }
}

/// A payment requirement found in a tool's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRequired {
    /// The `PaymentRequired` object, exactly as the server sent it (its `resource`, such as
    /// `mcp://tool/NAME`, and `extensions` are echoed as given).
    pub value: Value,
    /// Where it was found.
    pub signal: Signal,
}

impl PaymentRequired {
    /// The compact JSON the enclave is asked to sign for.
    #[must_use]
    pub fn json(&self) -> String {
        self.value.to_string()
    }

    /// `x402Version`.
    #[must_use]
    pub fn x402_version(&self) -> Option<u64> {
        self.value.get("x402Version").and_then(Value::as_u64)
    }

    /// The server's `error` sentence, if any.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.value.get("error").and_then(Value::as_str)
    }
}

/// Whether `v` has the shape of a `PaymentRequired`: an object with a numeric `x402Version`
/// and an `accepts` array.
#[must_use]
pub fn is_payment_required(v: &Value) -> bool {
    v.get("x402Version").is_some_and(Value::is_number)
        && v.get("accepts").is_some_and(Value::is_array)
}

fn found(v: &Value, signal: Signal) -> Option<PaymentRequired> {
    is_payment_required(v).then(|| PaymentRequired { value: v.clone(), signal })
}

/// The payment requirement in a `tools/call` result (`result` is the result object as JSON),
/// if it is one: `isError` must be true; then `structuredContent`, `_meta["x402/error"]`,
/// `content[0].text` (directly or under `"x402/error"`), in that order.
#[must_use]
pub fn from_tool_result(result: &Value) -> Option<PaymentRequired> {
    if result.get("isError").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    if let Some(p) =
        result.get("structuredContent").and_then(|v| found(v, Signal::StructuredContent))
    {
        return Some(p);
    }
    if let Some(e) = result.get("_meta").and_then(|m| m.get(ERROR_META)) {
        // The PaymentRequired itself, or wrapped as {code: 402, data: PaymentRequired}.
        if let Some(p) = found(e, Signal::MetaError)
            .or_else(|| e.get("data").and_then(|d| found(d, Signal::MetaError)))
        {
            return Some(p);
        }
    }
    let first = result.get("content")?.as_array()?.first()?;
    if first.get("type").and_then(Value::as_str) != Some("text") {
        return None;
    }
    let parsed: Value = serde_json::from_str(first.get("text")?.as_str()?.trim()).ok()?;
    if let Some(p) = found(&parsed, Signal::ContentText) {
        return Some(p);
    }
    let wrapped = parsed.get(ERROR_META)?;
    found(wrapped.get("data")?, Signal::ContentTextError)
        .or_else(|| found(wrapped, Signal::ContentTextError))
}

/// The payment requirement in a JSON-RPC error, if it is one: code `402` or `-32042`, with the
/// `PaymentRequired` in `data` or `data.x402`. Any other code, or data of another shape (a
/// SEP-1036 URL elicitation), is not.
#[must_use]
pub fn from_error(code: i32, data: Option<&Value>) -> Option<PaymentRequired> {
    let signal = match code {
        MCP_PAYMENT_REQUIRED_CODE => Signal::RpcError402,
        JSONRPC_PAYMENT_REQUIRED_CODE => Signal::RpcError32042,
        _ => return None,
    };
    let data = data?;
    found(data, signal).or_else(|| data.get("x402").and_then(|x| found(x, signal)))
}

/// How the paid retry carries the payment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PaymentEncoding {
    /// `_meta["x402/payment"]` = the `PaymentPayload` object (the x402 MCP spec, `@x402/mcp`).
    #[default]
    Object,
    /// `_meta["x402/payment"]` = base64 of the payload JSON (Cloudflare `agents`, MCPay).
    Base64,
    /// `_meta["x402.payment"]` = base64 of the payload JSON (Vercel `x402-mcp`).
    Vercel,
}

impl PaymentEncoding {
    /// The `_meta` key and value that carry `payload` (the `PaymentPayload` object) whose
    /// header encoding (standard base64 of its compact JSON, the `PAYMENT-SIGNATURE` /
    /// `X-PAYMENT` value) is `header_value`.
    #[must_use]
    pub fn meta_entry(self, payload: &Value, header_value: &str) -> (&'static str, Value) {
        match self {
            Self::Object => (PAYMENT_META, payload.clone()),
            Self::Base64 => (PAYMENT_META, Value::String(header_value.to_owned())),
            Self::Vercel => (VERCEL_PAYMENT_META, Value::String(header_value.to_owned())),
        }
    }

    /// Sets the payment in a request's `_meta` map (other keys are kept; a payment key left
    /// there by the caller is replaced).
    pub fn insert(self, meta: &mut Map<String, Value>, payload: &Value, header_value: &str) {
        meta.remove(PAYMENT_META);
        meta.remove(VERCEL_PAYMENT_META);
        let (key, value) = self.meta_entry(payload, header_value);
        meta.insert(key.to_owned(), value);
    }
}

/// The settlement response in a result's `_meta` (`x402/payment-response`, else
/// `x402.payment-response`): an object as sent, or a base64 JSON string decoded (a string that
/// does not decode is returned as it is).
#[must_use]
pub fn settlement(meta: Option<&Map<String, Value>>) -> Option<Value> {
    let meta = meta?;
    let v = meta.get(PAYMENT_RESPONSE_META).or_else(|| meta.get(VERCEL_PAYMENT_RESPONSE_META))?;
    match v {
        Value::String(s) => Some(decode_base64_json(s).unwrap_or_else(|| v.clone())),
        Value::Null => None,
        other => Some(other.clone()),
    }
}

fn decode_base64_json(s: &str) -> Option<Value> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    let bytes = STANDARD
        .decode(s)
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn requirement() -> Value {
        json!({
            "x402Version": 2,
            "error": "Payment required to access this resource",
            "resource": {"url": "mcp://tool/financial_analysis", "description": "Financial analysis", "mimeType": "application/json"},
            "accepts": [{
                "scheme": "exact", "network": "eip155:84532", "amount": "10000",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}
            }]
        })
    }

    fn v1_requirement() -> Value {
        json!({
            "x402Version": 1,
            "error": "_meta.x402.payment is required",
            "accepts": [{
                "scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "10000",
                "resource": "mcp://tool/weather", "description": "", "mimeType": "application/json",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}
            }]
        })
    }

    /// Parses `result` as rmcp does (the fixture must be a valid `CallToolResult`), and detects
    /// on the JSON rmcp would hand on.
    fn detect(result: Value) -> Option<PaymentRequired> {
        let parsed: rmcp::model::CallToolResult =
            serde_json::from_value(result).expect("a valid CallToolResult");
        from_tool_result(&serde_json::to_value(&parsed).unwrap())
    }

    #[test]
    fn official_binding_structured_content() {
        let pr = requirement();
        let got = detect(json!({
            "isError": true,
            "structuredContent": pr,
            "content": [{"type": "text", "text": pr.to_string()}]
        }))
        .unwrap();
        assert_eq!(got.signal, Signal::StructuredContent);
        assert_eq!(got.value, pr, "echoed exactly, resource.url included");
        assert_eq!(got.value["resource"]["url"], "mcp://tool/financial_analysis");
        assert_eq!(got.x402_version(), Some(2));
        assert_eq!(got.error(), Some("Payment required to access this resource"));
    }

    #[test]
    fn official_binding_text_fallback() {
        let pr = requirement();
        let got = detect(json!({
            "isError": true,
            "content": [{"type": "text", "text": pr.to_string()}]
        }))
        .unwrap();
        assert_eq!((got.signal, &got.value), (Signal::ContentText, &pr));
        // structuredContent present but not a PaymentRequired: the text still counts.
        let got = detect(json!({
            "isError": true,
            "structuredContent": {"message": "see text"},
            "content": [{"type": "text", "text": format!("  {pr}\n")}]
        }))
        .unwrap();
        assert_eq!(got.signal, Signal::ContentText);
    }

    #[test]
    fn cloudflare_and_mcpay_meta_error() {
        let pr = requirement();
        let got = detect(json!({
            "isError": true,
            "content": [{"type": "text", "text": "Payment required"}],
            "_meta": {"x402/error": pr}
        }))
        .unwrap();
        assert_eq!((got.signal, &got.value), (Signal::MetaError, &pr));
        // MCPay: v1 requirements; and the {code, data} wrapper.
        let v1 = v1_requirement();
        let got = detect(json!({
            "isError": true,
            "content": [{"type": "text", "text": "payment required"}],
            "_meta": {"x402/error": {"code": 402, "data": v1}}
        }))
        .unwrap();
        assert_eq!((got.signal, got.x402_version()), (Signal::MetaError, Some(1)));
        assert_eq!(got.value, v1);
    }

    #[test]
    fn older_text_wrapper() {
        let pr = requirement();
        let text = json!({"x402/error": {"code": 402, "data": pr}}).to_string();
        let got =
            detect(json!({"isError": true, "content": [{"type": "text", "text": text}]})).unwrap();
        assert_eq!((got.signal, &got.value), (Signal::ContentTextError, &pr));
    }

    #[test]
    fn vercel_v1_structured() {
        let v1 = v1_requirement();
        let got = detect(json!({
            "isError": true,
            "structuredContent": v1,
            "content": [{"type": "text", "text": v1.to_string()}]
        }))
        .unwrap();
        assert_eq!((got.signal, got.x402_version()), (Signal::StructuredContent, Some(1)));
    }

    #[test]
    fn json_rpc_errors() {
        let pr = requirement();
        let got = from_error(402, Some(&pr)).unwrap();
        assert_eq!((got.signal, &got.value), (Signal::RpcError402, &pr));
        let got = from_error(-32042, Some(&pr)).unwrap();
        assert_eq!((got.signal, &got.value), (Signal::RpcError32042, &pr));
        let got = from_error(-32042, Some(&json!({"x402": pr}))).unwrap();
        assert_eq!((got.signal, &got.value), (Signal::RpcError32042, &pr));
        // Parsed from the wire as rmcp's ErrorData.
        let e: rmcp::model::ErrorData = serde_json::from_value(
            json!({"code": -32042, "message": "Payment required", "data": {"x402": pr}}),
        )
        .unwrap();
        assert!(from_error(e.code.0, e.data.as_ref()).is_some());
    }

    #[test]
    fn negatives_pass_through() {
        let pr = requirement();
        // Not an error result: even a PaymentRequired-shaped structuredContent is data.
        for result in [
            json!({"content": [{"type": "text", "text": pr.to_string()}], "structuredContent": pr}),
            json!({"isError": false, "structuredContent": pr, "content": []}),
            // Ordinary tool errors.
            json!({"isError": true, "content": [{"type": "text", "text": "city not found"}]}),
            json!({"isError": true, "content": [{"type": "text", "text": "{\"error\":\"bad input\",\"code\":400}"}]}),
            json!({"isError": true, "structuredContent": {"error": "quota", "accepts": []}, "content": []}),
            json!({"isError": true, "structuredContent": {"x402Version": 2}, "content": []}),
            json!({"isError": true, "structuredContent": {"x402Version": "2", "accepts": []}, "content": []}),
            json!({"isError": true, "content": [{"type": "image", "data": "AAAA", "mimeType": "image/png"}]}),
            json!({"isError": true, "content": [], "_meta": {"x402/error": {"code": 500, "data": {"reason": "x"}}}}),
            json!({"isError": true, "content": [{"type": "text", "text": "{\"x402/error\":{\"code\":402}}"}]}),
            // The PaymentRequired in the second block only: content[0] is what is read.
            json!({"isError": true, "content": [{"type": "text", "text": "oops"}, {"type": "text", "text": pr.to_string()}]}),
        ] {
            assert_eq!(detect(result.clone()), None, "{result}");
        }
        for (code, data) in [
            (402, None),
            (
                -32042,
                Some(json!({"elicitations": [{"mode": "url", "url": "https://example.com"}]})),
            ),
            (-32603, Some(pr.clone())),
            (-32602, Some(json!({"x402": pr}))),
            (402, Some(json!({"message": "pay"}))),
        ] {
            assert_eq!(from_error(code, data.as_ref()), None, "{code} {data:?}");
        }
    }

    #[test]
    fn payment_meta_shapes() {
        let payload = json!({
            "x402Version": 2,
            "resource": {"url": "mcp://tool/financial_analysis"},
            "accepted": requirement()["accepts"][0],
            "payload": {"signature": "0xabc", "authorization": {"from": "0x1", "to": "0x2", "value": "10000", "validAfter": "0", "validBefore": "9", "nonce": "0x00"}}
        });
        let header = base64::engine::general_purpose::STANDARD.encode(payload.to_string());
        // The spec: an object, not a string.
        let mut meta = Map::new();
        meta.insert("progressToken".into(), json!(7));
        meta.insert(VERCEL_PAYMENT_META.into(), json!("stale"));
        PaymentEncoding::default().insert(&mut meta, &payload, &header);
        assert_eq!(meta[PAYMENT_META], payload);
        assert!(meta[PAYMENT_META].is_object());
        assert_eq!(meta["progressToken"], 7, "other keys kept");
        assert!(!meta.contains_key(VERCEL_PAYMENT_META), "one payment key only");
        // Compatibility encodings, only when asked for.
        let mut meta = Map::new();
        PaymentEncoding::Base64.insert(&mut meta, &payload, &header);
        assert_eq!(meta[PAYMENT_META], json!(header));
        let mut meta = Map::new();
        PaymentEncoding::Vercel.insert(&mut meta, &payload, &header);
        assert_eq!((meta.len(), &meta[VERCEL_PAYMENT_META]), (1, &json!(header)));
    }

    #[test]
    fn settlement_is_read_from_result_meta() {
        let s = json!({"success": true, "transaction": "0xfeed", "network": "eip155:84532", "payer": "0x1"});
        let meta = |k: &str, v: Value| json!({ k: v }).as_object().cloned();
        assert_eq!(settlement(meta(PAYMENT_RESPONSE_META, s.clone()).as_ref()), Some(s.clone()));
        let b64 = base64::engine::general_purpose::STANDARD.encode(s.to_string());
        assert_eq!(settlement(meta(PAYMENT_RESPONSE_META, json!(b64)).as_ref()), Some(s.clone()));
        assert_eq!(
            settlement(meta(VERCEL_PAYMENT_RESPONSE_META, json!(b64)).as_ref()),
            Some(s.clone())
        );
        assert_eq!(
            settlement(meta(PAYMENT_RESPONSE_META, json!("not base64!")).as_ref()),
            Some(json!("not base64!"))
        );
        assert_eq!(settlement(meta("other", s).as_ref()), None);
        assert_eq!(settlement(None), None);
    }
}
