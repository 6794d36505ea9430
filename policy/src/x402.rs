//! The x402 v2 wire format (`exact` scheme, EIP-3009): decoding `PAYMENT-REQUIRED`, reading one
//! `accepts[]` entry, and emitting the `PAYMENT-SIGNATURE` value the official client emits.
//!
//! `accepts[i]`, `resource` and `extensions` are kept as raw JSON and echoed verbatim: servers
//! compare `accepted` field by field with what they offered.

use alloy_primitives::{Address, U256};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::{Map, Value};

use crate::{
    address::{checksummed, parse_address},
    eip712::Authorization,
    registry::chain_id,
};

/// Largest `PAYMENT-REQUIRED` value accepted (base64 characters). Real ones are ~1 KiB.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// Most `accepts[]` options considered. Real servers offer a handful.
pub const MAX_ACCEPTS: usize = 32;

/// Why a `PAYMENT-REQUIRED` value could not be read. Each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Empty input.
    #[error("PAYMENT-REQUIRED value is empty")]
    Empty,
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("PAYMENT-REQUIRED value is {0} bytes, more than the {MAX_HEADER_LEN}-byte limit")]
    TooLarge(usize),
    /// Not standard base64 with padding.
    #[error("PAYMENT-REQUIRED value is not standard base64: {0}")]
    NotBase64(String),
    /// Decoded bytes are not a JSON object.
    #[error("PAYMENT-REQUIRED value does not decode to a JSON object: {0}")]
    NotJson(String),
    /// `x402Version` missing or not 2.
    #[error("unsupported x402Version {0} (this wallet speaks x402 v2)")]
    UnsupportedVersion(String),
    /// `accepts` missing, not an array, or empty.
    #[error("PAYMENT-REQUIRED has no accepts[] options")]
    NoAccepts,
    /// A field has the wrong JSON type.
    #[error("PAYMENT-REQUIRED field {0} is malformed")]
    BadField(&'static str),
    /// More options than [`MAX_ACCEPTS`].
    #[error(
        "PAYMENT-REQUIRED offers {0} options, more than the {MAX_ACCEPTS} this wallet considers"
    )]
    TooManyOptions(usize),
}

impl HeaderError {
    /// Stable reason code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty | Self::NotBase64(_) | Self::NotJson(_) | Self::BadField(_) => {
                "MALFORMED_HEADER"
            }
            Self::TooLarge(_) => "HEADER_TOO_LARGE",
            Self::UnsupportedVersion(_) => "UNSUPPORTED_VERSION",
            Self::NoAccepts => "NO_ACCEPTS",
            Self::TooManyOptions(_) => "TOO_MANY_OPTIONS",
        }
    }
}

/// A decoded x402 v2 `PaymentRequired`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRequired {
    /// Always 2.
    pub x402_version: u64,
    /// `resource`, echoed verbatim.
    pub resource: Option<Value>,
    /// `accepts[]`, each kept verbatim.
    pub accepts: Vec<Value>,
    /// `extensions`, echoed verbatim.
    pub extensions: Option<Value>,
}

/// Decodes a `PAYMENT-REQUIRED` header value (standard base64 of UTF-8 JSON).
///
/// # Errors
/// [`HeaderError`] with a stable code and a precise message.
pub fn decode_payment_required(header: &str) -> Result<PaymentRequired, HeaderError> {
    if header.is_empty() {
        return Err(HeaderError::Empty);
    }
    if header.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge(header.len()));
    }
    let bytes = STANDARD.decode(header).map_err(|e| HeaderError::NotBase64(e.to_string()))?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| HeaderError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(HeaderError::NotJson("top level is not an object".to_owned()));
    };
    let version = obj.get("x402Version").cloned().unwrap_or(Value::Null);
    if version.as_u64() != Some(2) {
        return Err(HeaderError::UnsupportedVersion(version.to_string()));
    }
    let accepts = match obj.remove("accepts") {
        Some(Value::Array(a)) if a.len() > MAX_ACCEPTS => {
            return Err(HeaderError::TooManyOptions(a.len()))
        }
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) | None => return Err(HeaderError::NoAccepts),
        Some(_) => return Err(HeaderError::BadField("accepts")),
    };
    let resource = obj.remove("resource");
    if resource.as_ref().is_some_and(|r| !r.is_object()) {
        return Err(HeaderError::BadField("resource"));
    }
    let extensions = obj.remove("extensions");
    if extensions.as_ref().is_some_and(|e| !e.is_object() && !e.is_null()) {
        return Err(HeaderError::BadField("extensions"));
    }
    Ok(PaymentRequired { x402_version: 2, resource, accepts, extensions })
}

/// How the token is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferMethod {
    /// EIP-3009 `transferWithAuthorization` (the default).
    Eip3009,
    /// Permit2 (not signed by this wallet).
    Permit2,
    /// Anything else.
    Other,
}

/// One `accepts[]` entry, read and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// `scheme` (`exact`).
    pub scheme: String,
    /// CAIP-2 `network`.
    pub network: String,
    /// Chain id from `network`.
    pub chain_id: u64,
    /// Token contract.
    pub asset: Address,
    /// Atomic units.
    pub amount: U256,
    /// Payee.
    pub pay_to: Address,
    /// `maxTimeoutSeconds`.
    pub max_timeout_seconds: u64,
    /// `extra.name` (EIP-712 domain name).
    pub extra_name: Option<String>,
    /// `extra.version`.
    pub extra_version: Option<String>,
    /// `extra.assetTransferMethod`.
    pub transfer_method: TransferMethod,
}

/// Reads one `accepts[]` entry. The error is a sentence; the caller files it under
/// `UNSUPPORTED_SCHEME` or `INVALID_REQUIREMENT`.
///
/// # Errors
/// [`RequirementError`].
pub fn parse_requirement(v: &Value) -> Result<Requirement, RequirementError> {
    let obj = v
        .as_object()
        .ok_or_else(|| RequirementError::Invalid("accepts entry is not an object".to_owned()))?;
    let s = |k: &str| obj.get(k).and_then(Value::as_str);
    let scheme =
        s("scheme").ok_or_else(|| RequirementError::Invalid("scheme missing".to_owned()))?;
    if scheme != "exact" {
        return Err(RequirementError::UnsupportedScheme(scheme.to_owned()));
    }
    let network =
        s("network").ok_or_else(|| RequirementError::Invalid("network missing".to_owned()))?;
    let chain_id = chain_id(network).map_err(RequirementError::UnsupportedNetwork)?;
    let asset = parse_address(
        s("asset").ok_or_else(|| RequirementError::Invalid("asset missing".to_owned()))?,
    )
    .map_err(RequirementError::Invalid)?;
    let pay_to = parse_address(
        s("payTo").ok_or_else(|| RequirementError::Invalid("payTo missing".to_owned()))?,
    )
    .map_err(RequirementError::Invalid)?;
    let amount_s = s("amount")
        .ok_or_else(|| RequirementError::Invalid("amount missing or not a string".to_owned()))?;
    if amount_s.is_empty() || amount_s.len() > 78 || !amount_s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequirementError::Invalid(format!(
            "amount {amount_s:?} is not a decimal integer string"
        )));
    }
    let amount = U256::from_str_radix(amount_s, 10)
        .map_err(|_| RequirementError::Invalid(format!("amount {amount_s:?} is too large")))?;
    if amount.is_zero() {
        return Err(RequirementError::Invalid("amount is zero".to_owned()));
    }
    let max_timeout_seconds =
        obj.get("maxTimeoutSeconds").and_then(Value::as_u64).filter(|t| *t > 0).ok_or_else(
            || {
                RequirementError::Invalid(
                    "maxTimeoutSeconds missing or not a positive integer".to_owned(),
                )
            },
        )?;
    let extra = obj.get("extra").and_then(Value::as_object);
    let ex = |k: &str| extra.and_then(|e| e.get(k)).and_then(Value::as_str).map(str::to_owned);
    let transfer_method = match ex("assetTransferMethod").as_deref() {
        None | Some("eip3009") => TransferMethod::Eip3009,
        Some("permit2") => TransferMethod::Permit2,
        Some(_) => TransferMethod::Other,
    };
    Ok(Requirement {
        scheme: scheme.to_owned(),
        network: network.to_owned(),
        chain_id,
        asset,
        amount,
        pay_to,
        max_timeout_seconds,
        extra_name: ex("name"),
        extra_version: ex("version"),
        transfer_method,
    })
}

/// Why an `accepts[]` entry cannot be paid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequirementError {
    /// A scheme other than `exact`.
    #[error("scheme {0:?} is not supported (only \"exact\")")]
    UnsupportedScheme(String),
    /// A network that is not `eip155:<id>`.
    #[error("{0}")]
    UnsupportedNetwork(String),
    /// A missing or malformed field.
    #[error("{0}")]
    Invalid(String),
}

/// Builds the compact `PaymentPayload` JSON in the key order of the official TypeScript client:
/// `x402Version, payload{authorization, signature}, extensions?, resource, accepted`.
#[must_use]
///
/// When the server offers the `payment-identifier` extension, `payment_id` is added as its
/// `info.id` (an id the server already set is kept), as the official client does.
pub fn payment_payload_json(
    required: &PaymentRequired,
    accepted: &Value,
    auth: &Authorization,
    signature: &[u8; 65],
    payment_id: &str,
) -> String {
    let mut authorization = Map::new();
    authorization.insert("from".into(), Value::String(checksummed(&auth.from)));
    authorization.insert("to".into(), Value::String(checksummed(&auth.to)));
    authorization.insert("value".into(), Value::String(auth.value.to_string()));
    authorization.insert("validAfter".into(), Value::String(auth.valid_after.to_string()));
    authorization.insert("validBefore".into(), Value::String(auth.valid_before.to_string()));
    authorization.insert("nonce".into(), Value::String(format!("0x{}", hex::encode(auth.nonce))));
    let mut payload = Map::new();
    payload.insert("authorization".into(), Value::Object(authorization));
    payload.insert("signature".into(), Value::String(format!("0x{}", hex::encode(signature))));
    let mut root = Map::new();
    root.insert("x402Version".into(), Value::from(2u64));
    root.insert("payload".into(), Value::Object(payload));
    if let Some(ext) = required.extensions.as_ref().filter(|e| !e.is_null()) {
        let mut ext = ext.clone();
        if let Some(pid) = ext.get_mut("payment-identifier").and_then(Value::as_object_mut) {
            let info = pid.entry("info").or_insert_with(|| Value::Object(Map::new()));
            if let Some(info) = info.as_object_mut() {
                info.entry("id").or_insert_with(|| Value::String(payment_id.to_owned()));
            }
        }
        root.insert("extensions".into(), ext);
    }
    if let Some(resource) = &required.resource {
        root.insert("resource".into(), resource.clone());
    }
    root.insert("accepted".into(), accepted.clone());
    Value::Object(root).to_string()
}

/// Standard base64 (with padding) of the payload JSON: the `PAYMENT-SIGNATURE` header value.
#[must_use]
pub fn encode_header(json: &str) -> String {
    STANDARD.encode(json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x402-wire.md §2.3: the spec's PAYMENT-REQUIRED header.
    pub(crate) const SPEC_HEADER: &str = "eyJ4NDAyVmVyc2lvbiI6MiwiZXJyb3IiOiJQQVlNRU5ULVNJR05BVFVSRSBoZWFkZXIgaXMgcmVxdWlyZWQiLCJyZXNvdXJjZSI6eyJ1cmwiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS9wcmVtaXVtLWRhdGEiLCJkZXNjcmlwdGlvbiI6IkFjY2VzcyB0byBwcmVtaXVtIG1hcmtldCBkYXRhIiwibWltZVR5cGUiOiJhcHBsaWNhdGlvbi9qc29uIn0sImFjY2VwdHMiOlt7InNjaGVtZSI6ImV4YWN0IiwibmV0d29yayI6ImVpcDE1NTo4NDUzMiIsImFtb3VudCI6IjEwMDAwIiwiYXNzZXQiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMxOGYzZENGN2UiLCJwYXlUbyI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsIm1heFRpbWVvdXRTZWNvbmRzIjo2MCwiZXh0cmEiOnsibmFtZSI6IlVTREMiLCJ2ZXJzaW9uIjoiMiJ9fV19";

    #[test]
    fn decodes_spec_header() {
        let pr = decode_payment_required(SPEC_HEADER).unwrap();
        assert_eq!(pr.accepts.len(), 1);
        let r = parse_requirement(&pr.accepts[0]).unwrap();
        assert_eq!(r.chain_id, 84532);
        assert_eq!(r.amount, U256::from(10000u64));
        assert_eq!(r.max_timeout_seconds, 60);
        assert_eq!(r.extra_name.as_deref(), Some("USDC"));
        assert_eq!(r.transfer_method, TransferMethod::Eip3009);
        assert_eq!(checksummed(&r.pay_to), "0x209693Bc6afc0C5328bA36FaF03C514EF312287C");
    }

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn malformed_headers_have_stable_codes() {
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "MALFORMED_HEADER"),
            ("not base64 !!".to_owned(), "MALFORMED_HEADER"),
            (SPEC_HEADER.replace('+', "-").replace('/', "_") + "-_", "MALFORMED_HEADER"),
            (format!(" {SPEC_HEADER}"), "MALFORMED_HEADER"),
            (b64("not json"), "MALFORMED_HEADER"),
            (b64("[1,2]"), "MALFORMED_HEADER"),
            (b64(r#"{"x402Version":1,"accepts":[{}]}"#), "UNSUPPORTED_VERSION"),
            (b64(r#"{"x402Version":"2","accepts":[{}]}"#), "UNSUPPORTED_VERSION"),
            (b64(r#"{"accepts":[{}]}"#), "UNSUPPORTED_VERSION"),
            (b64(r#"{"x402Version":2,"accepts":[]}"#), "NO_ACCEPTS"),
            (b64(r#"{"x402Version":2}"#), "NO_ACCEPTS"),
            (b64(r#"{"x402Version":2,"accepts":{}}"#), "MALFORMED_HEADER"),
            (b64(r#"{"x402Version":2,"accepts":[{}],"resource":"x"}"#), "MALFORMED_HEADER"),
            ("A".repeat(MAX_HEADER_LEN + 4), "HEADER_TOO_LARGE"),
            (
                b64(&format!(
                    r#"{{"x402Version":2,"accepts":[{}]}}"#,
                    vec!["1"; MAX_ACCEPTS + 1].join(",")
                )),
                "TOO_MANY_OPTIONS",
            ),
        ];
        for (input, code) in cases {
            let err = decode_payment_required(&input).unwrap_err();
            assert_eq!(err.code(), code, "{input:.60} -> {err}");
        }
    }

    #[test]
    fn requirement_errors() {
        let base: Value = serde_json::from_str(r#"{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}"#).unwrap();
        assert!(parse_requirement(&base).is_ok());
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            parse_requirement(&b)
        };
        assert!(matches!(
            with("scheme", "upto".into()),
            Err(RequirementError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            with("network", "solana:mainnet".into()),
            Err(RequirementError::UnsupportedNetwork(_))
        ));
        for (k, v) in [
            ("amount", Value::from(10000)),
            ("amount", "-1".into()),
            ("amount", "0".into()),
            ("amount", "0x10".into()),
            ("amount", "1.5".into()),
            ("amount", "9".repeat(79).into()),
            ("payTo", "0x209693bc6afc0C5328bA36FaF03C514EF312287C".into()),
            ("asset", "nope".into()),
            ("maxTimeoutSeconds", Value::from(0)),
            ("maxTimeoutSeconds", "60".into()),
        ] {
            assert!(matches!(with(k, v.clone()), Err(RequirementError::Invalid(_))), "{k}={v}");
        }
    }
}
