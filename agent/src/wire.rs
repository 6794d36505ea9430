//! The x402 HTTP wire as a payer reads it: the 402 (v2 `PAYMENT-REQUIRED` header, v1 JSON
//! body), the header the payment goes in, and the settlement response.
//!
//! The enclave parses and checks the requirement itself; what is read here is only what the
//! client needs to route the payment, to enforce `max_amount` before asking for a signature,
//! and to show people what a server asks.

use base64::{
    alphabet,
    engine::{general_purpose::STANDARD, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use serde_json::{Map, Value};
use wallet_policy::x402::{decode_payment_required, option_network, MAX_HEADER_LEN};

use crate::PayError;

/// The v2 402 header (base64 JSON `PaymentRequired`).
pub const PAYMENT_REQUIRED: &str = "PAYMENT-REQUIRED";
/// The v2 payment header (base64 JSON `PaymentPayload`).
pub const PAYMENT_SIGNATURE: &str = "PAYMENT-SIGNATURE";
/// The v1 payment header.
pub const X_PAYMENT: &str = "X-PAYMENT";
/// The v2 settlement header (base64 JSON `SettleResponse`).
pub const PAYMENT_RESPONSE: &str = "PAYMENT-RESPONSE";
/// The v1 settlement header.
pub const X_PAYMENT_RESPONSE: &str = "X-PAYMENT-RESPONSE";

/// The header a payment of x402 version `version` is sent in (`X-PAYMENT` for 1,
/// `PAYMENT-SIGNATURE` otherwise; 0, from enclaves older than v1 support, means 2):
/// [`wallet_policy::x402::payment_header_name`], the enclave's own rule.
#[must_use]
pub fn payment_header_name(version: u32) -> &'static str {
    wallet_policy::x402::payment_header_name(u64::from(version))
}

/// Standard base64, `=` padding optional, unused trailing bits ignored: used only on a value
/// [`decode_payment_required`] (the official decoder's rules) has already accepted, to keep
/// its JSON object for display.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A server's payment requirement, as read from its 402.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    /// 1 (JSON body) or 2 (`PAYMENT-REQUIRED` header).
    pub x402_version: u32,
    /// What the enclave is asked to sign for: the header value exactly as received (v2), or the
    /// JSON body text (v1).
    pub enclave_value: String,
    /// The decoded object.
    pub json: Map<String, Value>,
}

impl Requirement {
    /// `accepts[]`, verbatim.
    #[must_use]
    pub fn accepts(&self) -> &[Value] {
        self.json.get("accepts").and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    /// `resource` (v2), verbatim.
    #[must_use]
    pub fn resource(&self) -> Option<&Value> {
        self.json.get("resource")
    }

    /// `extensions` (v2), verbatim.
    #[must_use]
    pub fn extensions(&self) -> Option<&Value> {
        self.json.get("extensions")
    }

    /// The server's `error` sentence.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.json.get("error").and_then(Value::as_str)
    }

    /// The same requirement offering only `keep` (indices into `accepts`), in the form the
    /// enclave reads for this version: base64 JSON for v2, JSON for v1. `resource`,
    /// `extensions` and every other field stay as the server sent them.
    #[must_use]
    pub fn restricted_to(&self, keep: &[usize]) -> String {
        let accepts = self.accepts();
        let mut json = self.json.clone();
        json.insert(
            "accepts".to_owned(),
            Value::Array(keep.iter().filter_map(|&i| accepts.get(i).cloned()).collect()),
        );
        let text = Value::Object(json).to_string();
        if self.x402_version == 1 {
            text
        } else {
            STANDARD.encode(text)
        }
    }
}

/// Reads the payment requirement of a 402: the `PAYMENT-REQUIRED` header first (v2), then a
/// JSON body with `x402Version` (v1; the official client reads the same two, in this order).
/// `header` is the `PAYMENT-REQUIRED` value if there was one.
///
/// # Errors
/// [`PayError::BadRequirement`] when neither is there, or what is there does not decode.
pub fn read_requirement(header: Option<&[u8]>, body: &[u8]) -> Result<Requirement, PayError> {
    let bad = |m: String| PayError::BadRequirement(m);
    if let Some(h) = header {
        if h.len() > MAX_HEADER_LEN {
            return Err(bad(format!(
                "the PAYMENT-REQUIRED header is {} bytes, more than the {MAX_HEADER_LEN}-byte limit",
                h.len()
            )));
        }
        let value = std::str::from_utf8(h)
            .map_err(|_| bad("the PAYMENT-REQUIRED header is not text".to_owned()))?
            .trim();
        if value.starts_with('{') {
            // The official client base64-decodes the header; JSON there is not a requirement.
            return Err(bad(
                "the PAYMENT-REQUIRED header is JSON; it must be standard base64 of the JSON"
                    .to_owned(),
            ));
        }
        return validated(value, "the PAYMENT-REQUIRED header");
    }
    let text = std::str::from_utf8(body).map(str::trim).unwrap_or("");
    if !text.starts_with('{') {
        return Err(bad(
            "the 402 has no PAYMENT-REQUIRED header and no x402 JSON body (this server may use another payment protocol)"
                .to_owned(),
        ));
    }
    if text.len() > MAX_HEADER_LEN {
        return Err(bad(format!(
            "the 402 body is {} bytes, more than the {MAX_HEADER_LEN}-byte limit for a payment requirement",
            text.len()
        )));
    }
    let json = object(text.as_bytes(), "the 402 body")?;
    if !json.contains_key("x402Version") || !json.contains_key("accepts") {
        return Err(bad(
            "the 402 has no PAYMENT-REQUIRED header, and its JSON body has no x402Version and accepts"
                .to_owned(),
        ));
    }
    validated(text, "the 402 body")
}

/// Reads a payment requirement handed over directly (an MCP tool result): JSON text, or the
/// base64 of JSON (a `PAYMENT-REQUIRED` header value).
///
/// # Errors
/// [`PayError::BadRequirement`] when it does not decode.
pub fn parse_requirement_text(text: &str) -> Result<Requirement, PayError> {
    let t = wallet_client::clean_header_input(text);
    if t.starts_with('{') {
        if t.len() > MAX_HEADER_LEN {
            return Err(PayError::BadRequirement(format!(
                "the payment requirement is {} bytes, more than the {MAX_HEADER_LEN}-byte limit",
                t.len()
            )));
        }
        return validated(t, "the payment requirement");
    }
    read_requirement(Some(t.as_bytes()), b"")
}

/// Validates `value` (JSON text, or base64 of it) with [`decode_payment_required`], the
/// enclave's own decoder (it accepts exactly what the official client's decoder does:
/// unpadded base64, `"x402Version": 2.0`, ...), and keeps its JSON object for display.
fn validated(value: &str, what: &str) -> Result<Requirement, PayError> {
    let decoded = decode_payment_required(value)
        .map_err(|e| PayError::BadRequirement(format!("{what}: {e}")))?;
    let x402_version = u32::try_from(decoded.x402_version).map_err(|_| {
        PayError::BadRequirement(format!("{what} has x402Version {}", decoded.x402_version))
    })?;
    let json = if value.trim_start().starts_with('{') {
        object(value.as_bytes(), what)?
    } else {
        let bytes = LENIENT
            .decode(value.trim_end_matches('='))
            .map_err(|e| PayError::BadRequirement(format!("{what} is not base64 ({e})")))?;
        object(&bytes, what)?
    };
    Ok(Requirement { x402_version, enclave_value: value.to_owned(), json })
}

fn object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, PayError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(PayError::BadRequirement(format!("{what} is not a JSON object"))),
        Err(e) => Err(PayError::BadRequirement(format!("{what} is not JSON ({e})"))),
    }
}

/// One `accepts[]` option, read loosely for display and the `max_amount` check (the enclave
/// reads it strictly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Index in `accepts`.
    pub index: usize,
    /// `scheme`.
    pub scheme: String,
    /// `network` as written (CAIP-2 in v2, a name such as `base-sepolia` in v1).
    pub network: String,
    /// The CAIP-2 id of `network` (v1 names mapped by the official table), if known.
    pub caip2: Option<String>,
    /// `asset` (token address).
    pub asset: String,
    /// Atomic units: `amount` (v2) or `maxAmountRequired` (v1).
    pub amount: String,
    /// `payTo`.
    pub pay_to: String,
}

impl Requirement {
    /// Every `accepts[]` option, read for this requirement's x402 version.
    #[must_use]
    pub fn offers(&self) -> Vec<Offer> {
        self.accepts().iter().enumerate().map(|(i, v)| offer(self.x402_version, i, v)).collect()
    }
}

/// Reads option `index` of the `accepts` of an x402 `version` requirement, with the fields the
/// enclave reads for that version (`wallet_policy::x402::parse_requirement_for`): the amount
/// is `maxAmountRequired` in v1 and `amount` in v2, never the other (a server cannot show one
/// price and be charged another); the network is a v1 name in v1 and a CAIP-2 id in v2. A
/// missing amount is left empty: such an option cannot be priced.
#[must_use]
pub fn offer(version: u32, index: usize, v: &Value) -> Offer {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let amount = s(if version == 1 { "maxAmountRequired" } else { "amount" });
    let network = s("network");
    Offer {
        index,
        scheme: s("scheme"),
        caip2: caip2(version, &network),
        network,
        asset: s("asset"),
        amount,
        pay_to: s("payTo"),
    }
}

/// The CAIP-2 id of an option's `network` under x402 `version`, as the enclave reads it
/// ([`option_network`]): in v1 an official v1 name
/// ([`wallet_policy::x402::V1_EVM_NETWORKS`]) mapped to `eip155:<id>`; in v2 an `eip155:<id>`
/// as is. `None` for anything else (a CAIP-2 id in v1, a v1 name in v2, a non-EVM network).
#[must_use]
pub fn caip2(version: u32, network: &str) -> Option<String> {
    option_network(u64::from(version), network).ok().map(|(caip2, _)| caip2)
}

/// Decodes a `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE` value (base64 JSON `SettleResponse`).
/// Read leniently (padding optional): it is only shown, never signed.
#[must_use]
pub fn decode_settle_response(value: &[u8]) -> Option<Value> {
    let v = std::str::from_utf8(value).ok()?.trim();
    if v.len() > MAX_HEADER_LEN {
        return None;
    }
    let bytes = LENIENT.decode(v.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok().filter(Value::is_object)
}

/// The settlement transaction of a settle response (`transaction`, when not empty).
#[must_use]
pub fn settle_transaction(settle: &Value) -> Option<String> {
    settle.get("transaction").and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x402-wire.md §2.3.
    const SPEC_HEADER: &str = "eyJ4NDAyVmVyc2lvbiI6MiwiZXJyb3IiOiJQQVlNRU5ULVNJR05BVFVSRSBoZWFkZXIgaXMgcmVxdWlyZWQiLCJyZXNvdXJjZSI6eyJ1cmwiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS9wcmVtaXVtLWRhdGEiLCJkZXNjcmlwdGlvbiI6IkFjY2VzcyB0byBwcmVtaXVtIG1hcmtldCBkYXRhIiwibWltZVR5cGUiOiJhcHBsaWNhdGlvbi9qc29uIn0sImFjY2VwdHMiOlt7InNjaGVtZSI6ImV4YWN0IiwibmV0d29yayI6ImVpcDE1NTo4NDUzMiIsImFtb3VudCI6IjEwMDAwIiwiYXNzZXQiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMxOGYzZENGN2UiLCJwYXlUbyI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsIm1heFRpbWVvdXRTZWNvbmRzIjo2MCwiZXh0cmEiOnsibmFtZSI6IlVTREMiLCJ2ZXJzaW9uIjoiMiJ9fV19";

    /// x402-next.md §2.1.
    const V1_BODY: &str = r#"{"x402Version":1,"error":"Payment required to access this resource","accepts":[{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","resource":"https://api.example.com/premium-data","description":"Access to premium market data","mimeType":"application/json","outputSchema":null,"maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]}"#;

    #[test]
    fn v2_header_is_read_and_kept_verbatim() {
        let r = read_requirement(Some(SPEC_HEADER.as_bytes()), b"{}").unwrap();
        assert_eq!(r.x402_version, 2);
        assert_eq!(r.enclave_value, SPEC_HEADER, "the enclave gets the exact header");
        assert_eq!(r.accepts().len(), 1);
        assert_eq!(r.resource().unwrap()["url"], "https://api.example.com/premium-data");
        assert_eq!(r.error(), Some("PAYMENT-SIGNATURE header is required"));
        let o = offer(2, 0, &r.accepts()[0]);
        assert_eq!(
            (o.amount.as_str(), o.caip2.as_deref(), o.pay_to.as_str()),
            ("10000", Some("eip155:84532"), "0x209693Bc6afc0C5328bA36FaF03C514EF312287C")
        );
    }

    #[test]
    fn v1_body_is_read_when_there_is_no_header() {
        let r = read_requirement(None, format!("  {V1_BODY}\n").as_bytes()).unwrap();
        assert_eq!(r.x402_version, 1);
        assert_eq!(r.enclave_value, V1_BODY, "the enclave gets the JSON text");
        let o = offer(1, 0, &r.accepts()[0]);
        assert_eq!((o.amount.as_str(), o.network.as_str()), ("10000", "base-sepolia"));
        assert_eq!(r.offers(), vec![o.clone()]);
        assert_eq!(o.caip2.as_deref(), Some("eip155:84532"));
        // The header wins over the body.
        let r = read_requirement(Some(SPEC_HEADER.as_bytes()), V1_BODY.as_bytes()).unwrap();
        assert_eq!(r.x402_version, 2);
        assert_eq!(payment_header_name(1), "X-PAYMENT");
        assert_eq!(payment_header_name(2), "PAYMENT-SIGNATURE");
        assert_eq!(payment_header_name(0), "PAYMENT-SIGNATURE");
    }

    #[test]
    fn what_is_not_a_requirement_is_refused_clearly() {
        for (header, body, says) in [
            (None, &b"Pay us"[..], "no PAYMENT-REQUIRED header"),
            (None, b"{\"error\":\"pay\"}", "no x402Version"),
            (Some(&b"not base64!"[..]), b"", "not standard base64"),
            (Some(b"e30="), b"", "x402Version (missing)"),
            (Some(b"e30"), b"", "x402Version (missing)"),
            (Some(b"{\"x402Version\":2}"), b"", "header is JSON"),
            (Some(b"e30=="), b"", "not standard base64"),
            (Some(b"e 30="), b"", "not standard base64"),
            (None, b"{\"x402Version\":3,\"accepts\":[{}]}", "x402Version 3"),
            (None, b"{\"x402Version\":1,\"accepts\":[]}", "no accepts"),
        ] {
            let e = read_requirement(header, body).unwrap_err();
            assert!(matches!(e, PayError::BadRequirement(_)));
            assert!(e.to_string().contains(says), "{e} / {says}");
        }
        let huge = "A".repeat(MAX_HEADER_LEN + 4);
        let e = read_requirement(Some(huge.as_bytes()), b"").unwrap_err();
        assert!(e.to_string().contains("byte limit"), "{e}");
    }

    #[test]
    fn requirements_handed_over_as_json_or_base64() {
        let r = parse_requirement_text(V1_BODY).unwrap();
        assert_eq!(r.x402_version, 1);
        let r = parse_requirement_text(&format!("PAYMENT-REQUIRED: {SPEC_HEADER}\n")).unwrap();
        assert_eq!((r.x402_version, r.enclave_value.as_str()), (2, SPEC_HEADER));
    }

    #[test]
    fn restricting_options_keeps_everything_else_verbatim() {
        let json = r#"{"x402Version":2,"resource":{"url":"u"},"accepts":[{"amount":"1"},{"amount":"2"},{"amount":"3"}],"extensions":{"payment-identifier":{"info":{"required":false}}}}"#;
        let r = read_requirement(Some(STANDARD.encode(json).as_bytes()), b"").unwrap();
        let restricted = r.restricted_to(&[0, 2]);
        let back: Value = serde_json::from_slice(&STANDARD.decode(&restricted).unwrap()).unwrap();
        assert_eq!(
            back.to_string(),
            r#"{"x402Version":2,"resource":{"url":"u"},"accepts":[{"amount":"1"},{"amount":"3"}],"extensions":{"payment-identifier":{"info":{"required":false}}}}"#
        );
        let v1 = read_requirement(None, V1_BODY.as_bytes()).unwrap();
        assert!(v1.restricted_to(&[0]).starts_with('{'), "v1 stays JSON");
    }

    #[test]
    fn settle_responses_decode() {
        // x402-wire.md V-5.
        let v5 = "eyJzdWNjZXNzIjp0cnVlLCJ0cmFuc2FjdGlvbiI6IjB4MTIzNDU2Nzg5MGFiY2RlZjEyMzQ1Njc4OTBhYmNkZWYxMjM0NTY3ODkwYWJjZGVmMTIzNDU2Nzg5MGFiY2RlZiIsIm5ldHdvcmsiOiJlaXAxNTU6ODQ1MzIiLCJwYXllciI6IjB4ZjM5RmQ2ZTUxYWFkODhGNkY0Y2U2YUI4ODI3Mjc5Y2ZmRmI5MjI2NiJ9";
        let s = decode_settle_response(v5.as_bytes()).unwrap();
        assert_eq!(s["success"], true);
        assert_eq!(s["payer"], "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
        assert_eq!(
            settle_transaction(&s).as_deref(),
            Some("0x1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef")
        );
        let failed = STANDARD.encode(r#"{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"eip155:84532"}"#);
        let s = decode_settle_response(failed.as_bytes()).unwrap();
        assert_eq!(settle_transaction(&s), None);
        assert_eq!(decode_settle_response(b"%%%"), None);
    }

    #[test]
    fn networks_are_read_per_version() {
        assert_eq!(caip2(1, "base").as_deref(), Some("eip155:8453"));
        assert_eq!(caip2(2, "eip155:1").as_deref(), Some("eip155:1"));
        // Each version's form only, as the enclave (and the official client) reads them.
        assert_eq!(caip2(2, "base"), None, "a v1 name in v2");
        assert_eq!(caip2(1, "eip155:8453"), None, "a CAIP-2 id in v1");
        assert_eq!(caip2(1, "solana"), None);
        assert_eq!(caip2(2, "eip155:"), None);
        // The table is the policy's (no copy of it here).
        for (name, id) in wallet_policy::x402::V1_EVM_NETWORKS {
            assert_eq!(caip2(1, name), Some(format!("eip155:{id}")));
        }
    }

    /// A v1 server showing a small `amount` beside a large `maxAmountRequired` (which the
    /// enclave charges) is priced at `maxAmountRequired`; a v2 server the other way round at
    /// `amount`. An option without its version's amount field has no amount (not priced).
    #[test]
    fn the_amount_is_the_field_the_enclave_charges() {
        let both = serde_json::json!({"network": "base-sepolia", "amount": "1", "maxAmountRequired": "60000"});
        assert_eq!(offer(1, 0, &both).amount, "60000");
        let both = serde_json::json!({"network": "eip155:84532", "amount": "60000", "maxAmountRequired": "1"});
        assert_eq!(offer(2, 0, &both).amount, "60000");
        assert_eq!(offer(1, 0, &serde_json::json!({"amount": "1"})).amount, "");
        assert_eq!(offer(2, 0, &serde_json::json!({"maxAmountRequired": "1"})).amount, "");
    }

    /// What the official decoder (and the enclave) accepts is read: unpadded base64 and a
    /// whole `2.0` version.
    #[test]
    fn unpadded_headers_and_whole_float_versions_are_read() {
        use base64::engine::general_purpose::STANDARD_NO_PAD;
        let json = String::from_utf8(STANDARD.decode(SPEC_HEADER).unwrap()).unwrap();
        // `2.0` is 2 (JSON.parse); the JSON is then 440 bytes, so its base64 has padding.
        let float = json.replacen("\"x402Version\":2", "\"x402Version\":2.0", 1);
        assert_ne!(float, json);
        let padded = STANDARD.encode(&float);
        let unpadded = STANDARD_NO_PAD.encode(&float);
        assert!(padded.ends_with('=') && !unpadded.ends_with('='));
        for value in [&padded, &unpadded] {
            let r = read_requirement(Some(value.as_bytes()), b"").unwrap();
            assert_eq!((r.x402_version, r.enclave_value.as_str()), (2, value.as_str()));
            assert_eq!(r.error(), Some("PAYMENT-SIGNATURE header is required"));
            assert_eq!(offer(r.x402_version, 0, &r.accepts()[0]).amount, "10000");
        }
        assert_eq!(parse_requirement_text(&float).unwrap().x402_version, 2);
        assert_eq!(parse_requirement_text(&unpadded).unwrap().x402_version, 2);
        let v1 = V1_BODY.replacen("\"x402Version\":1", "\"x402Version\":1.0", 1);
        assert_eq!(read_requirement(None, v1.as_bytes()).unwrap().x402_version, 1);
        let half = json.replacen("\"x402Version\":2", "\"x402Version\":2.5", 1);
        let e = parse_requirement_text(&half).unwrap_err();
        assert!(e.to_string().contains("x402Version 2.5"), "{e}");
    }
}
