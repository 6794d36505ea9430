//! The x402 wire format (`exact` scheme, EIP-3009), versions 1 and 2: decoding what a server
//! asks for, reading one `accepts[]` entry, and emitting the payment the official client emits.
//!
//! # What the enclave is given
//!
//! One string (`SignPaymentRequest.payment_required`) carries either version:
//!
//! * **x402 v2**: the `PAYMENT-REQUIRED` header value, standard base64 of the `PaymentRequired`
//!   JSON (`{"x402Version":2,"resource":{…},"accepts":[{scheme, network (CAIP-2), amount, asset,
//!   payTo, maxTimeoutSeconds, extra}],"extensions":{…}}`);
//! * **x402 v1**: the 402 response's JSON body (`{"x402Version":1,"error":…,"accepts":[{scheme,
//!   network (a v1 name such as base-sepolia), maxAmountRequired, resource, description,
//!   mimeType, outputSchema, payTo, maxTimeoutSeconds, asset, extra}]}`).
//!
//! The rule ([`decode_payment_required`]): when the value, leading whitespace ignored, starts
//! with `{` it is the JSON itself (a v1 body, or a v2 `PaymentRequired` object as the MCP
//! binding carries it); otherwise it is base64 of that JSON. The version is the JSON's
//! `x402Version`, never the transport.
//!
//! # What is accepted, and the judge
//!
//! The official `@x402/core` 2.27.0 client (`decodePaymentRequiredHeader`, then the `x402Client`)
//! is the judge: what it pays, this wallet reads; what its verifier refuses, this wallet never
//! signs. So base64 may omit its `=` padding (the official decoder is `atob`, which is
//! forgiving about it), JSON numbers are read as the client's `JSON.parse` reads them (`2.0` is
//! 2 and `60.0` is 60; `60.5` is not a whole number and is refused), and addresses are as
//! strict as viem's ([`crate::address::parse_address`]).
//!
//! `accepts[i]`, `resource` and `extensions` are kept as raw JSON and echoed as the official
//! client echoes them: servers compare `accepted` field by field with what they offered.

use std::borrow::Cow;

use alloy_primitives::{Address, U256};
use base64::{
    alphabet,
    engine::{general_purpose::STANDARD, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use serde_json::{Map, Number, Value};

use crate::{
    address::{checksummed, parse_address},
    eip712::Authorization,
    registry::chain_id,
};

/// Largest payment-requirements value accepted (base64 characters, or bytes of JSON). Real
/// ones are ~1 KiB.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// Most `accepts[]` options considered. Real servers offer a handful.
pub const MAX_ACCEPTS: usize = 32;

/// The x402 versions this wallet speaks.
pub const SUPPORTED_VERSIONS: [u64; 2] = [1, 2];

/// How long before `now` an x402 v1 authorization becomes valid, seconds: the official v1 client
/// signs `validAfter = now - 600` (`@x402/evm` 2.27.0 `exact/v1/client/scheme.ts`, "10 minutes
/// before"). The v2 client signs `validAfter = 0`.
pub const V1_VALID_AFTER_LEEWAY_SECONDS: u64 = 600;

/// The x402 v1 names of EVM networks and their chain ids: the official table,
/// `EVM_NETWORK_CHAIN_ID_MAP` of `@x402/evm` 2.27.0 (`@x402/evm/v1`), in its order. x402 v1
/// requirements name their network this way; policies, limits and the registry use the CAIP-2
/// id `eip155:<chain id>` it maps to. `tests/tests/x402_conformance.rs` compares this table with
/// the installed package.
pub const V1_EVM_NETWORKS: &[(&str, u64)] = &[
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

/// x402 v1 network names of non-EVM chains (`@x402/svm` 2.27.0 `v1`): known, but not payable by
/// this wallet (it signs EIP-3009 on EVM chains only).
const V1_NON_EVM_NETWORKS: &[&str] = &["solana", "solana-devnet", "solana-testnet"];

/// The chain id of an x402 v1 EVM network name ([`V1_EVM_NETWORKS`]; exact, case-sensitive
/// match, as the official client's map lookup).
#[must_use]
pub fn v1_chain_id(name: &str) -> Option<u64> {
    V1_EVM_NETWORKS.iter().find(|(n, _)| *n == name).map(|(_, id)| *id)
}

/// Reads a network the way a person or an agent may write a preference: a CAIP-2 EVM id
/// (`eip155:8453`) or an x402 v1 name (`base`, mapped by [`V1_EVM_NETWORKS`]). Returns the
/// CAIP-2 id.
///
/// # Errors
/// A sentence when it is neither (never silently ignored): a non-EVM network, an unknown name,
/// a malformed id.
pub fn caip2_network(network: &str) -> Result<String, String> {
    if network.starts_with("eip155:") {
        return chain_id(network).map(|_| network.to_owned());
    }
    if let Some(id) = v1_chain_id(network) {
        return Ok(format!("eip155:{id}"));
    }
    if V1_NON_EVM_NETWORKS.contains(&network) || network.starts_with("solana:") {
        return Err(format!(
            "network {network:?} is not an EVM network: this wallet pays on eip155 networks only"
        ));
    }
    Err(format!(
        "network {network:?} is neither a CAIP-2 id (eip155:<chain id>, e.g. eip155:8453) nor an x402 v1 network name ({})",
        V1_EVM_NETWORKS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    ))
}

/// Why a payment-requirements value could not be read. Each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Empty input.
    #[error("the payment requirements are empty (expected a PAYMENT-REQUIRED value or an x402 v1 402 body)")]
    Empty,
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("the payment requirements are {0} bytes, more than the {MAX_HEADER_LEN}-byte limit")]
    TooLarge(usize),
    /// Neither base64 (standard alphabet, padding optional) nor a JSON object.
    #[error("PAYMENT-REQUIRED value is not standard base64: {0}")]
    NotBase64(String),
    /// The JSON (given, or decoded from base64) is not a JSON object.
    #[error("the payment requirements are not a JSON object: {0}")]
    NotJson(String),
    /// `x402Version` missing, or not 1 or 2.
    #[error("unsupported x402Version {0} (this wallet speaks x402 v1 and v2)")]
    UnsupportedVersion(String),
    /// `accepts` missing, not an array, or empty.
    #[error("the payment requirements have no accepts[] options")]
    NoAccepts,
    /// A field has the wrong JSON type.
    #[error("the payment requirements' field {0} is malformed")]
    BadField(&'static str),
    /// More options than [`MAX_ACCEPTS`].
    #[error(
        "the payment requirements offer {0} options, more than the {MAX_ACCEPTS} this wallet considers"
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

/// A decoded x402 `PaymentRequired` (v1 or v2).
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRequired {
    /// 1 or 2 ([`SUPPORTED_VERSIONS`]): which requirement fields are read
    /// ([`parse_requirement_for`]), which payload is built ([`payment_payload_json`]) and which
    /// header carries it ([`payment_header_name`]).
    pub x402_version: u64,
    /// `resource` (v2), echoed. Always `None` for v1 (its resource is inside each option).
    pub resource: Option<Value>,
    /// `accepts[]`, each kept verbatim.
    pub accepts: Vec<Value>,
    /// `extensions` (v2), echoed. Always `None` for v1.
    pub extensions: Option<Value>,
}

/// The header a payment of this x402 version is sent in: `PAYMENT-SIGNATURE` for v2,
/// `X-PAYMENT` for v1 (`@x402/core` 2.27.0 `x402HTTPClient.encodePaymentSignatureHeader`).
#[must_use]
pub fn payment_header_name(x402_version: u64) -> &'static str {
    if x402_version == 1 {
        "X-PAYMENT"
    } else {
        "PAYMENT-SIGNATURE"
    }
}

/// The base64 decoder matching the official one (`atob` after the regex
/// `^[A-Za-z0-9+/]*={0,2}$`): standard alphabet, `=` padding complete or absent, unused trailing
/// bits ignored.
const FORGIVING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes base64 exactly as `@x402/core` 2.27.0 `decodePaymentRequiredHeader` does: the
/// regex `^[A-Za-z0-9+/]*={0,2}$` (no whitespace, no URL-safe alphabet), then WHATWG forgiving
/// base64 (`atob`): padding either complete (length a multiple of 4) or absent, a length of
/// 4n+1 refused.
fn decode_base64(s: &str) -> Result<Vec<u8>, HeaderError> {
    if let Some((i, c)) =
        s.char_indices().find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')))
    {
        return Err(HeaderError::NotBase64(format!(
            "character {c:?} at offset {i} is not in the standard base64 alphabet (A-Z a-z 0-9 + /)"
        )));
    }
    let body = s.trim_end_matches('=');
    let padding = s.len() - body.len();
    if body.contains('=') || padding > 2 {
        return Err(HeaderError::NotBase64("'=' may only end the value, at most twice".to_owned()));
    }
    if padding > 0 && !s.len().is_multiple_of(4) {
        return Err(HeaderError::NotBase64(
            "'=' padding must make the length a multiple of 4 (or be left out)".to_owned(),
        ));
    }
    if body.len() % 4 == 1 {
        return Err(HeaderError::NotBase64(format!(
            "{} characters cannot be base64 (the value is cut or has a character too many)",
            body.len()
        )));
    }
    FORGIVING.decode(body).map_err(|e| HeaderError::NotBase64(e.to_string()))
}

/// Why a JSON number is not a whole number a field can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotWhole {
    /// Has a fraction (`60.5`).
    Fraction,
    /// Below zero.
    Negative,
    /// Larger than `u64::MAX`.
    TooLarge,
}

/// A JSON number as the official client's `JSON.parse` reads it: `60`, `60.0` and `6e1` are all
/// 60. Only whole, non-negative values that fit a `u64` are returned.
fn whole_number(n: &Number) -> Result<u64, NotWhole> {
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    if n.is_i64() {
        return Err(NotWhole::Negative);
    }
    let f = n.as_f64().ok_or(NotWhole::Fraction)?;
    if f.fract() != 0.0 {
        return Err(NotWhole::Fraction);
    }
    if f < 0.0 {
        return Err(NotWhole::Negative);
    }
    // 2^64 is exactly representable; every whole f64 below it fits a u64.
    if f >= 18_446_744_073_709_551_616.0 {
        return Err(NotWhole::TooLarge);
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole, in range: exact
    Ok(f as u64)
}

/// Decodes payment requirements: the JSON itself when `value` (leading whitespace ignored)
/// starts with `{`, otherwise a `PAYMENT-REQUIRED` header value (standard base64 of UTF-8 JSON;
/// `=` padding optional, no whitespace). `x402Version` must be 1 or 2 (a whole JSON number:
/// `2.0` is 2). See the module docs.
///
/// # Errors
/// [`HeaderError`] with a stable code and a precise message.
pub fn decode_payment_required(value: &str) -> Result<PaymentRequired, HeaderError> {
    if value.trim().is_empty() {
        return Err(HeaderError::Empty);
    }
    if value.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge(value.len()));
    }
    let bytes: Cow<'_, [u8]> = if value.trim_start().starts_with('{') {
        Cow::Borrowed(value.as_bytes())
    } else {
        Cow::Owned(decode_base64(value)?)
    };
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| HeaderError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(HeaderError::NotJson("top level is not an object".to_owned()));
    };
    let x402_version = match obj.get("x402Version") {
        None => return Err(HeaderError::UnsupportedVersion("(missing)".to_owned())),
        Some(Value::Number(n)) => match whole_number(n) {
            Ok(v) if SUPPORTED_VERSIONS.contains(&v) => v,
            _ => return Err(HeaderError::UnsupportedVersion(n.to_string())),
        },
        Some(v) => return Err(HeaderError::UnsupportedVersion(v.to_string())),
    };
    let accepts = match obj.remove("accepts") {
        Some(Value::Array(a)) if a.len() > MAX_ACCEPTS => {
            return Err(HeaderError::TooManyOptions(a.len()))
        }
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) | None => return Err(HeaderError::NoAccepts),
        Some(_) => return Err(HeaderError::BadField("accepts")),
    };
    if x402_version == 1 {
        // v1 has no top-level resource or extensions (the resource is in each option).
        return Ok(PaymentRequired { x402_version, resource: None, accepts, extensions: None });
    }
    let resource = obj.remove("resource");
    if resource.as_ref().is_some_and(|r| !r.is_object()) {
        return Err(HeaderError::BadField("resource"));
    }
    let extensions = obj.remove("extensions");
    if extensions.as_ref().is_some_and(|e| !e.is_object() && !e.is_null()) {
        return Err(HeaderError::BadField("extensions"));
    }
    Ok(PaymentRequired { x402_version, resource, accepts, extensions })
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

/// When the server settles (`extra.paymentFlow`, `@x402/core` 2.27.0 `server/paymentFlow.ts`).
/// The payer's signature is the same for each; what differs is whether the resource is served
/// before the payment settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentFlow {
    /// `authorization`, or no `paymentFlow` at all: verified before the handler, settled after
    /// it (the payer is charged only for a served request). The official client prefers it.
    Authorization,
    /// `upfront`: settled before the handler runs.
    Upfront,
    /// `escrow`: settled before and after. The official `exact` EVM server does not support it
    /// (`ExactEvmScheme.paymentFlows` of `@x402/evm` 2.27.0: `authorization` and `upfront`
    /// only, for EIP-3009 and Permit2) and refuses such a payment, so this wallet, which signs
    /// `exact` only, never signs it.
    Escrow,
    /// A value the official client does not know (kept, as JSON, for the message): it drops
    /// such options, and so does this wallet.
    Unknown(String),
}

impl PaymentFlow {
    /// Reads `extra.paymentFlow` as the official client does (`extra?.paymentFlow`: absent or
    /// `null` is `authorization`; an `extra` that is not an object has none).
    fn of(extra: Option<&Map<String, Value>>) -> Self {
        match extra.and_then(|e| e.get("paymentFlow")) {
            None | Some(Value::Null) => Self::Authorization,
            Some(Value::String(s)) if s == "authorization" => Self::Authorization,
            Some(Value::String(s)) if s == "upfront" => Self::Upfront,
            Some(Value::String(s)) if s == "escrow" => Self::Escrow,
            Some(other) => Self::Unknown(other.to_string()),
        }
    }

    /// Selection rank: the official client prefers `authorization` over the flows it knows
    /// (`x402Client.selectPaymentRequirements` step 5); lower is preferred.
    #[must_use]
    pub fn rank(&self) -> u8 {
        match self {
            Self::Authorization => 0,
            Self::Upfront | Self::Escrow => 1,
            Self::Unknown(_) => 2,
        }
    }
}

/// One `accepts[]` entry, read and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// `scheme` (`exact`).
    pub scheme: String,
    /// CAIP-2 `network` (`eip155:<chain id>`): as written for v2, mapped from the v1 name
    /// ([`V1_EVM_NETWORKS`]) for v1. Policy, limits and the registry use this.
    pub network: String,
    /// Chain id from `network`.
    pub chain_id: u64,
    /// Token contract.
    pub asset: Address,
    /// Atomic units: `amount` (v2) or `maxAmountRequired` (v1).
    pub amount: U256,
    /// Payee.
    pub pay_to: Address,
    /// `maxTimeoutSeconds` (a whole JSON number: `60.0` is 60).
    pub max_timeout_seconds: u64,
    /// `extra.name` (EIP-712 domain name).
    pub extra_name: Option<String>,
    /// `extra.version`.
    pub extra_version: Option<String>,
    /// `extra.assetTransferMethod`.
    pub transfer_method: TransferMethod,
    /// `extra.paymentFlow`.
    pub payment_flow: PaymentFlow,
}

/// Reads one x402 v2 `accepts[]` entry ([`parse_requirement_for`] with version 2).
///
/// # Errors
/// [`RequirementError`].
pub fn parse_requirement(v: &Value) -> Result<Requirement, RequirementError> {
    parse_requirement_for(2, v)
}

/// The CAIP-2 network of an option's `network` field under this x402 version: v2 requires
/// `eip155:<chain id>`; v1 requires a v1 name of [`V1_EVM_NETWORKS`] (the official clients
/// read each version's form only).
///
/// # Errors
/// A sentence for a network this wallet cannot pay on.
pub fn option_network(x402_version: u64, network: &str) -> Result<(String, u64), String> {
    if x402_version == 1 {
        if let Some(id) = v1_chain_id(network) {
            return Ok((format!("eip155:{id}"), id));
        }
        if network.starts_with("eip155:") {
            return Err(format!(
                "network {network:?} is a CAIP-2 id, but x402 v1 names networks by their v1 names (such as base-sepolia)"
            ));
        }
        return Err(format!(
            "network {network:?} is not an EVM network of the official x402 v1 table"
        ));
    }
    if let Some(id) = v1_chain_id(network) {
        return Err(format!(
            "network {network:?} is an x402 v1 name; x402 v2 names networks by CAIP-2 id (eip155:{id})"
        ));
    }
    chain_id(network).map(|id| (network.to_owned(), id))
}

/// Reads one `accepts[]` entry of an x402 `x402_version` (1 or 2) `PaymentRequired`. The error
/// is a sentence; the caller files it under `UNSUPPORTED_SCHEME`, `NETWORK_NOT_ALLOWED` or
/// `INVALID_REQUIREMENT`.
///
/// # Errors
/// [`RequirementError`].
pub fn parse_requirement_for(
    x402_version: u64,
    v: &Value,
) -> Result<Requirement, RequirementError> {
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
    let (network, chain_id) =
        option_network(x402_version, network).map_err(RequirementError::UnsupportedNetwork)?;
    let asset = parse_address(
        s("asset").ok_or_else(|| RequirementError::Invalid("asset missing".to_owned()))?,
    )
    .map_err(|e| RequirementError::Invalid(format!("asset: {e}")))?;
    let pay_to = parse_address(
        s("payTo").ok_or_else(|| RequirementError::Invalid("payTo missing".to_owned()))?,
    )
    .map_err(|e| RequirementError::Invalid(format!("payTo: {e}")))?;
    let amount_key = if x402_version == 1 { "maxAmountRequired" } else { "amount" };
    let amount_s = s(amount_key).ok_or_else(|| {
        RequirementError::Invalid(format!("{amount_key} missing or not a string"))
    })?;
    if amount_s.is_empty() || amount_s.len() > 78 || !amount_s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequirementError::Invalid(format!(
            "{amount_key} {amount_s:?} is not a decimal integer string"
        )));
    }
    let amount = U256::from_str_radix(amount_s, 10).map_err(|_| {
        RequirementError::Invalid(format!("{amount_key} {amount_s:?} is too large"))
    })?;
    if amount.is_zero() {
        return Err(RequirementError::Invalid(format!("{amount_key} is zero")));
    }
    let max_timeout_seconds = match obj.get("maxTimeoutSeconds") {
        Some(Value::Number(n)) => match whole_number(n) {
            Ok(t) if t > 0 => t,
            Ok(_) => return Err(RequirementError::Invalid("maxTimeoutSeconds is zero".to_owned())),
            Err(NotWhole::Fraction) => {
                return Err(RequirementError::Invalid(format!(
                    "maxTimeoutSeconds {n} is not a whole number of seconds"
                )))
            }
            Err(NotWhole::Negative) => {
                return Err(RequirementError::Invalid(format!("maxTimeoutSeconds {n} is negative")))
            }
            Err(NotWhole::TooLarge) => {
                return Err(RequirementError::Invalid(format!(
                    "maxTimeoutSeconds {n} is too large"
                )))
            }
        },
        Some(other) => {
            return Err(RequirementError::Invalid(format!(
                "maxTimeoutSeconds {other} is not a JSON number"
            )))
        }
        None => return Err(RequirementError::Invalid("maxTimeoutSeconds missing".to_owned())),
    };
    let extra = obj.get("extra").and_then(Value::as_object);
    let ex = |k: &str| extra.and_then(|e| e.get(k)).and_then(Value::as_str).map(str::to_owned);
    let transfer_method = match ex("assetTransferMethod").as_deref() {
        None | Some("eip3009") => TransferMethod::Eip3009,
        Some("permit2") => TransferMethod::Permit2,
        Some(_) => TransferMethod::Other,
    };
    Ok(Requirement {
        scheme: scheme.to_owned(),
        network,
        chain_id,
        asset,
        amount,
        pay_to,
        max_timeout_seconds,
        extra_name: ex("name"),
        extra_version: ex("version"),
        transfer_method,
        payment_flow: PaymentFlow::of(extra),
    })
}

/// Why an `accepts[]` entry cannot be paid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequirementError {
    /// A scheme other than `exact`.
    #[error("scheme {0:?} is not supported (only \"exact\")")]
    UnsupportedScheme(String),
    /// A network this wallet cannot pay on under the version's naming.
    #[error("{0}")]
    UnsupportedNetwork(String),
    /// A missing or malformed field.
    #[error("{0}")]
    Invalid(String),
}

/// A JSON value as the official client re-emits it (`JSON.stringify(JSON.parse(…))`): the same
/// values in the same order, with whole numbers written as integers (`60.0` becomes `60`), so
/// the echo is what the TypeScript client would send.
fn as_official_client_echoes(v: &Value) -> Value {
    match v {
        Value::Number(n) if !n.is_u64() && !n.is_i64() => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
            .map_or_else(
                || v.clone(),
                #[allow(clippy::cast_possible_truncation)] // whole and below 2^53: exact
                |f| Value::from(f as i64),
            ),
        Value::Array(a) => Value::Array(a.iter().map(as_official_client_echoes).collect()),
        Value::Object(o) => Value::Object(
            o.iter().map(|(k, v)| (k.clone(), as_official_client_echoes(v))).collect(),
        ),
        _ => v.clone(),
    }
}

/// Builds the compact `PaymentPayload` JSON in the key order of the official TypeScript client.
///
/// * x402 v2 (`PAYMENT-SIGNATURE`): `x402Version, payload{authorization, signature},
///   extensions?, resource, accepted`. When the server offers the `payment-identifier`
///   extension, `payment_id` is added as its `info.id` (an id the server already set is kept),
///   as the official client does.
/// * x402 v1 (`X-PAYMENT`): `x402Version, scheme, network, payload{authorization, signature}`,
///   with `scheme` and `network` copied from `accepted` (the v1 name, e.g. `base-sepolia`), as
///   `ExactEvmSchemeV1.createPaymentPayload` does; `payment_id` is not used.
///
/// `authorization` is `from, to, value, validAfter, validBefore, nonce`: the addresses
/// EIP-55-checksummed, the numbers decimal strings, the nonce `0x` + 64 lowercase hex.
#[must_use]
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
    if required.x402_version == 1 {
        root.insert("x402Version".into(), Value::from(1u64));
        root.insert("scheme".into(), as_official_client_echoes(&accepted["scheme"]));
        root.insert("network".into(), as_official_client_echoes(&accepted["network"]));
        root.insert("payload".into(), Value::Object(payload));
        return Value::Object(root).to_string();
    }
    root.insert("x402Version".into(), Value::from(2u64));
    root.insert("payload".into(), Value::Object(payload));
    if let Some(ext) = required.extensions.as_ref().filter(|e| !e.is_null()) {
        let mut ext = as_official_client_echoes(ext);
        if let Some(pid) = ext.get_mut("payment-identifier").and_then(Value::as_object_mut) {
            let info = pid.entry("info").or_insert_with(|| Value::Object(Map::new()));
            if let Some(info) = info.as_object_mut() {
                info.entry("id").or_insert_with(|| Value::String(payment_id.to_owned()));
            }
        }
        root.insert("extensions".into(), ext);
    }
    if let Some(resource) = &required.resource {
        root.insert("resource".into(), as_official_client_echoes(resource));
    }
    root.insert("accepted".into(), as_official_client_echoes(accepted));
    Value::Object(root).to_string()
}

/// Standard base64 (with padding) of the payload JSON: the `PAYMENT-SIGNATURE` (v2) or
/// `X-PAYMENT` (v1) header value.
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
            (b64(r#"{"x402Version":3,"accepts":[{}]}"#), "UNSUPPORTED_VERSION"),
            (b64(r#"{"x402Version":0,"accepts":[{}]}"#), "UNSUPPORTED_VERSION"),
            (b64(r#"{"x402Version":2.5,"accepts":[{}]}"#), "UNSUPPORTED_VERSION"),
            (b64(r#"{"x402Version":-2,"accepts":[{}]}"#), "UNSUPPORTED_VERSION"),
            (b64(r#"{"x402Version":"2","accepts":[{}]}"#), "UNSUPPORTED_VERSION"),
            (r#"{"x402Version":1,"accepts":[]}"#.to_owned(), "NO_ACCEPTS"),
            ("{not json".to_owned(), "MALFORMED_HEADER"),
            ("  \n ".to_owned(), "MALFORMED_HEADER"),
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
            ("maxTimeoutSeconds", Value::from(60.5)),
            ("maxTimeoutSeconds", Value::from(-60)),
            ("maxTimeoutSeconds", Value::from(1e20)),
            ("payTo", "0X209693Bc6afc0C5328bA36FaF03C514EF312287C".into()),
            ("asset", "0X036CbD53842c5426634e7929541eC2318f3dCF7e".into()),
        ] {
            assert!(matches!(with(k, v.clone()), Err(RequirementError::Invalid(_))), "{k}={v}");
        }
    }

    /// Issue 10, item 5: what the official `@x402/core` 2.27.0 decoder accepts
    /// (`^[A-Za-z0-9+/]*={0,2}$`, then `atob`) is read; what it refuses is refused.
    #[test]
    fn base64_is_read_as_the_official_decoder_reads_it() {
        // A JSON whose base64 needs padding.
        let json = r#"{"x402Version":2,"accepts":[{"a":1}]}"#;
        let padded = b64(json);
        assert!(padded.ends_with('='), "{padded}");
        let unpadded = padded.trim_end_matches('=').to_owned();
        assert_eq!(
            decode_payment_required(&unpadded).unwrap(),
            decode_payment_required(&padded).unwrap(),
            "padding is optional, as atob makes it"
        );
        // Unused trailing bits set (atob ignores them): "QR" decodes as "QQ" does.
        assert_eq!(decode_base64("QR").unwrap(), b"A");
        assert_eq!(decode_base64("QQ==").unwrap(), b"A");
        assert_eq!(decode_base64("QUI").unwrap(), b"AB");
        for (bad, why) in [
            (format!("{unpadded}="), "'=' padding"), // partial padding: atob refuses
            (format!("{padded}="), "'='"),           // three '='
            (unpadded[..unpadded.len() / 4 * 4 + 1].to_owned(), "cannot be base64"), // 4n+1
            (format!("{padded} "), "not in the standard base64 alphabet"),
            (padded.replace('=', "").replace('e', "-"), "not in the standard base64 alphabet"),
            (format!("{}=A", &padded[..padded.len() - 1]), "'=' may only end"),
        ] {
            let e = decode_payment_required(&bad).unwrap_err();
            assert_eq!(e.code(), "MALFORMED_HEADER", "{bad}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    /// Issue 10, item 5: `"x402Version": 2.0` is version 2 (the official client's `JSON.parse`
    /// makes it 2), and the refusal of another version names the versions spoken.
    #[test]
    fn versions_are_whole_json_numbers() {
        let pr = decode_payment_required(&b64(r#"{"x402Version":2.0,"accepts":[{}]}"#)).unwrap();
        assert_eq!(pr.x402_version, 2);
        let pr = decode_payment_required(r#"{"x402Version":1.0,"accepts":[{}]}"#).unwrap();
        assert_eq!(pr.x402_version, 1);
        let e = decode_payment_required(&b64(r#"{"x402Version":3,"accepts":[{}]}"#)).unwrap_err();
        assert_eq!(e.to_string(), "unsupported x402Version 3 (this wallet speaks x402 v1 and v2)");
        let e = decode_payment_required(&b64(r#"{"accepts":[{}]}"#)).unwrap_err();
        assert!(e.to_string().contains("(missing)"), "{e}");
        // A number beyond a double is refused with the parser's position.
        let e = decode_payment_required(&b64(
            r#"{"x402Version":2,"accepts":[{"maxTimeoutSeconds":1e400}]}"#,
        ))
        .unwrap_err();
        assert_eq!(e.code(), "MALFORMED_HEADER");
        assert!(e.to_string().contains("number out of range"), "{e}");
    }

    /// Issue 10, item 5: `"maxTimeoutSeconds": 60.0` is 60; `60.5` is refused with a reason.
    #[test]
    fn timeouts_are_whole_json_numbers() {
        let mut v: Value = serde_json::from_str(REQ).unwrap();
        for n in [Value::from(60.0), serde_json::from_str("6e1").unwrap(), Value::from(60)] {
            v["maxTimeoutSeconds"] = n;
            assert_eq!(parse_requirement(&v).unwrap().max_timeout_seconds, 60);
        }
        v["maxTimeoutSeconds"] = Value::from(60.5);
        let e = parse_requirement(&v).unwrap_err().to_string();
        assert_eq!(e, "maxTimeoutSeconds 60.5 is not a whole number of seconds");
    }

    const REQ: &str = r#"{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}"#;

    /// x402-next.md §2.1: the v1 402 body, given as JSON (not base64).
    const V1_BODY: &str = r#"{"x402Version":1,"error":"Payment required to access this resource","accepts":[{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","resource":"https://api.example.com/premium-data","description":"Access to premium market data","mimeType":"application/json","outputSchema":null,"maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]}"#;

    #[test]
    fn reads_a_v1_body_as_json_or_base64() {
        for input in [V1_BODY.to_owned(), format!("\n  {V1_BODY}\n"), b64(V1_BODY)] {
            let pr = decode_payment_required(&input).unwrap();
            assert_eq!(
                (pr.x402_version, pr.resource.clone(), pr.extensions.clone()),
                (1, None, None)
            );
            let r = parse_requirement_for(1, &pr.accepts[0]).unwrap();
            assert_eq!((r.network.as_str(), r.chain_id), ("eip155:84532", 84532));
            assert_eq!(r.amount, U256::from(10000u64));
            assert_eq!(r.payment_flow, PaymentFlow::Authorization);
        }
        // The v2 object as JSON (the MCP binding's form) reads as its base64 does.
        let v2 = String::from_utf8(STANDARD.decode(SPEC_HEADER).unwrap()).unwrap();
        assert_eq!(
            decode_payment_required(&v2).unwrap(),
            decode_payment_required(SPEC_HEADER).unwrap()
        );
    }

    #[test]
    fn each_version_reads_its_own_network_names_and_amount_field() {
        let v1: Value = serde_json::from_str::<Value>(V1_BODY).unwrap()["accepts"][0].clone();
        let mut caip_in_v1 = v1.clone();
        caip_in_v1["network"] = "eip155:84532".into();
        let e = parse_requirement_for(1, &caip_in_v1).unwrap_err();
        assert!(
            matches!(e, RequirementError::UnsupportedNetwork(_))
                && e.to_string().contains("v1 names"),
            "{e}"
        );
        let mut unknown = v1.clone();
        unknown["network"] = "base-mainnet".into();
        assert!(matches!(
            parse_requirement_for(1, &unknown),
            Err(RequirementError::UnsupportedNetwork(_))
        ));
        // v1 reads maxAmountRequired, not amount.
        let e = parse_requirement_for(2, &v1).unwrap_err().to_string();
        assert!(e.contains("x402 v1 name") && e.contains("eip155:84532"), "{e}");
        let mut amount_only = v1.clone();
        amount_only.as_object_mut().unwrap().remove("maxAmountRequired");
        amount_only["amount"] = "10000".into();
        assert!(parse_requirement_for(1, &amount_only)
            .unwrap_err()
            .to_string()
            .contains("maxAmountRequired"));
        // Every name of the official table maps to its CAIP-2 id.
        for (name, id) in V1_EVM_NETWORKS {
            let mut o = v1.clone();
            o["network"] = (*name).into();
            assert_eq!(parse_requirement_for(1, &o).unwrap().network, format!("eip155:{id}"));
        }
    }

    #[test]
    fn preferences_are_caip2_or_v1_names_and_nothing_else() {
        assert_eq!(caip2_network("eip155:8453").unwrap(), "eip155:8453");
        assert_eq!(caip2_network("base-sepolia").unwrap(), "eip155:84532");
        assert_eq!(caip2_network("flare").unwrap(), "eip155:14");
        for bad in ["Base Sepolia", "basesepolia", "", "eip155:", "eip155:0x14", "84532", "BASE"] {
            let e = caip2_network(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(caip2_network("base-sepolia-typo").unwrap_err().contains("base-sepolia"));
        assert!(caip2_network("solana").unwrap_err().contains("not an EVM network"));
        assert!(caip2_network("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp")
            .unwrap_err()
            .contains("EVM"));
    }

    #[test]
    fn payment_flow_is_read_like_the_official_client() {
        let mut v: Value = serde_json::from_str(REQ).unwrap();
        for (flow, want) in [
            (Value::Null, PaymentFlow::Authorization),
            ("authorization".into(), PaymentFlow::Authorization),
            ("upfront".into(), PaymentFlow::Upfront),
            ("escrow".into(), PaymentFlow::Escrow),
            ("later".into(), PaymentFlow::Unknown("\"later\"".into())),
            (Value::from(1), PaymentFlow::Unknown("1".into())),
        ] {
            v["extra"]["paymentFlow"] = flow;
            assert_eq!(parse_requirement(&v).unwrap().payment_flow, want);
        }
        v["extra"] = "not an object".into();
        assert_eq!(parse_requirement(&v).unwrap().payment_flow, PaymentFlow::Authorization);
    }

    /// What is echoed is what the TypeScript client would send: `60.0` is written `60`.
    #[test]
    fn echo_writes_whole_numbers_as_integers() {
        let json = r#"{"x402Version":2.0,"resource":{"url":"u","n":1.0},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60.0,"extra":{"name":"USDC","version":"2","fee":1.5}}]}"#;
        let pr = decode_payment_required(json).unwrap();
        let auth = Authorization {
            from: Address::ZERO,
            to: Address::ZERO,
            value: U256::from(1u8),
            valid_after: 0,
            valid_before: 1,
            nonce: [0; 32],
        };
        let out = payment_payload_json(&pr, &pr.accepts[0], &auth, &[0; 65], "p");
        assert!(out.starts_with(r#"{"x402Version":2,"#), "{out}");
        assert!(out.contains(r#""maxTimeoutSeconds":60,"#), "{out}");
        assert!(out.contains(r#""n":1}"#) && out.contains(r#""fee":1.5"#), "{out}");
    }
}
