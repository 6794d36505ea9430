//! The x402 HTTP wire as a payer reads it: the 402 (v2 `PAYMENT-REQUIRED` header, v1 JSON
//! body), the header the payment goes in, and the settlement response.
//!
//! The enclave parses and checks the requirement itself; what is read here is only what the
//! client needs to route the payment, to enforce `max_amount` before asking for a signature,
//! and to show people what a server asks.

use base64::{
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
    Engine as _,
};
use serde_json::{Map, Value};
use wallet_policy::x402::{MAX_ACCEPTS, MAX_HEADER_LEN};

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
/// `PAYMENT-SIGNATURE` otherwise; 0, from enclaves older than v1 support, means 2).
#[must_use]
pub fn payment_header_name(version: u32) -> &'static str {
    if version == 1 {
        X_PAYMENT
    } else {
        PAYMENT_SIGNATURE
    }
}

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
        let bytes = STANDARD.decode(value).map_err(|e| {
            bad(format!("the PAYMENT-REQUIRED header is not standard base64 ({e})"))
        })?;
        let json = object(&bytes, "the PAYMENT-REQUIRED header")?;
        let x402_version = version(&json, "the PAYMENT-REQUIRED header")?;
        return Ok(Requirement { x402_version, enclave_value: value.to_owned(), json });
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
    let x402_version = version(&json, "the 402 body")?;
    Ok(Requirement { x402_version, enclave_value: text.to_owned(), json })
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
        let json = object(t.as_bytes(), "the payment requirement")?;
        let x402_version = version(&json, "the payment requirement")?;
        return Ok(Requirement { x402_version, enclave_value: t.to_owned(), json });
    }
    read_requirement(Some(t.as_bytes()), b"")
}

fn object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, PayError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(PayError::BadRequirement(format!("{what} is not a JSON object"))),
        Err(e) => Err(PayError::BadRequirement(format!("{what} is not JSON ({e})"))),
    }
}

fn version(json: &Map<String, Value>, what: &str) -> Result<u32, PayError> {
    let v = json.get("x402Version").cloned().unwrap_or(Value::Null);
    match v.as_u64() {
        Some(n @ (1 | 2)) => {
            let accepts = json.get("accepts").and_then(Value::as_array);
            match accepts {
                Some(a) if !a.is_empty() && a.len() <= MAX_ACCEPTS => {
                    Ok(u32::try_from(n).unwrap_or(2))
                }
                Some(a) if a.len() > MAX_ACCEPTS => Err(PayError::BadRequirement(format!(
                    "{what} offers {} options, more than the {MAX_ACCEPTS} this wallet considers",
                    a.len()
                ))),
                _ => Err(PayError::BadRequirement(format!("{what} has no accepts[] options"))),
            }
        }
        _ => Err(PayError::BadRequirement(format!(
            "{what} has x402Version {v}; this wallet speaks x402 v1 and v2"
        ))),
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

/// Reads option `index` of `accepts`.
#[must_use]
pub fn offer(index: usize, v: &Value) -> Offer {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let amount = v
        .get("amount")
        .or_else(|| v.get("maxAmountRequired"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let network = s("network");
    Offer {
        index,
        scheme: s("scheme"),
        caip2: caip2(&network),
        network,
        asset: s("asset"),
        amount,
        pay_to: s("payTo"),
    }
}

/// The official v1 network names of EVM chains and their chain ids (`@x402/evm`
/// `EVM_NETWORK_CHAIN_ID_MAP`, x402-next.md §2.3).
pub const V1_NETWORKS: &[(&str, u64)] = &[
    ("ethereum", 1),
    ("sepolia", 11_155_111),
    ("abstract", 2741),
    ("abstract-testnet", 11_124),
    ("base-sepolia", 84_532),
    ("base", 8453),
    ("avalanche-fuji", 43_113),
    ("avalanche", 43_114),
    ("iotex", 4689),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("polygon", 137),
    ("polygon-amoy", 80_002),
    ("peaq", 3338),
    ("story", 1514),
    ("educhain", 41_923),
    ("skale-base-sepolia", 324_705_682),
    ("megaeth", 4326),
    ("monad", 143),
    ("stable", 988),
    ("stable-testnet", 2201),
    ("celo", 42_220),
    ("flare", 14),
];

/// The CAIP-2 id of a network as a server writes it: `eip155:<id>` as is, a v1 name mapped.
#[must_use]
pub fn caip2(network: &str) -> Option<String> {
    if wallet_policy::registry::chain_id(network).is_ok() {
        return Some(network.to_owned());
    }
    V1_NETWORKS.iter().find(|(n, _)| *n == network).map(|(_, id)| format!("eip155:{id}"))
}

/// Decodes a `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE` value (base64 JSON `SettleResponse`).
/// Read leniently (padding optional): it is only shown, never signed.
#[must_use]
pub fn decode_settle_response(value: &[u8]) -> Option<Value> {
    let v = std::str::from_utf8(value).ok()?.trim();
    if v.len() > MAX_HEADER_LEN {
        return None;
    }
    let bytes =
        STANDARD.decode(v).or_else(|_| STANDARD_NO_PAD.decode(v.trim_end_matches('='))).ok()?;
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
        let o = offer(0, &r.accepts()[0]);
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
        let o = offer(0, &r.accepts()[0]);
        assert_eq!((o.amount.as_str(), o.network.as_str()), ("10000", "base-sepolia"));
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
            (Some(b"e30="), b"", "x402Version null"),
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
    fn v1_network_names() {
        assert_eq!(caip2("base").as_deref(), Some("eip155:8453"));
        assert_eq!(caip2("eip155:1").as_deref(), Some("eip155:1"));
        assert_eq!(caip2("solana"), None);
        assert_eq!(caip2("eip155:"), None);
    }
}
