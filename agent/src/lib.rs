//! The paying x402 HTTP client that runs beside the agent (`walletctl fetch`, the MCP server's
//! `x402_fetch` and `x402_inspect`): it sends a request, reads a `402 Payment Required` answer
//! (x402 v2 `PAYMENT-REQUIRED` header or v1 JSON body), has the enclave sign within policy
//! through `wallet-client`, and retries with the payment.
//!
//! The agent's process holds only a session [`Credential`]: the wallet key and the policy are in
//! the enclave, which parses the server's requirement itself and decides. This crate adds what
//! a paying HTTP client needs on top, and nothing it adds can make the wallet pay more than the
//! policy allows.
//!
//! # Use
//!
//! ```no_run
//! # async fn demo() -> Result<(), wallet_agent::PayError> {
//! use wallet_agent::{FetchRequest, PayOptions, Payer};
//!
//! let credential = wallet_client::Credential::read("agent.json".as_ref())
//!     .map_err(wallet_agent::PayError::Usage)?;
//! let payer = Payer::connect(credential, None).await?; // the gateway named in the credential
//! let outcome = payer
//!     .fetch(FetchRequest {
//!         options: PayOptions { max_amount: Some("0.05 USDC".into()), ..PayOptions::default() },
//!         ..FetchRequest::get("https://api.example.com/premium-data")
//!     })
//!     .await?;
//! if let Some(paid) = &outcome.payment {
//!     println!("paid {} {} to {} (tx {:?})", paid.charged, paid.asset_symbol, paid.pay_to, paid.transaction);
//! }
//! # Ok(()) }
//! ```
//!
//! # What [`Payer::fetch`] does
//!
//! 1. Buffers the request (method, headers, body) so that the paid retry sends **the same
//!    bytes** (the lost-body-on-retry bug of other clients cannot happen here), and sends it.
//!    Redirects are followed only with [`FetchRequest::follow_redirects`], by hand: a `POST`
//!    becomes a `GET` on 301/302/303 as in curl. To another origin only `Accept`,
//!    `Accept-Language`, `Content-Type` and `User-Agent` go: every other header (`Authorization`,
//!    `Cookie`, `X-Api-Key`, ...) and the payment header never do, and a redirect that would
//!    carry the request body to another origin (307/308) is not followed (it is the answer).
//! 2. Anything but 402 is returned as is ([`FetchOutcome`], `payment: None`).
//! 3. A 402 is read: the `PAYMENT-REQUIRED` header (v2, at most
//!    [`wallet_policy::x402::MAX_HEADER_LEN`] bytes), else a JSON body with `x402Version` (v1).
//!    Neither: [`PayError::BadRequirement`].
//! 4. With [`PayOptions::max_amount`], every option is priced (atomic amount and the asset's
//!    decimals from the enclave's asset registry, compared as integers) **before anything is
//!    signed**: when none fits, [`PayError::OverMaxAmount`] and nothing is charged; when only
//!    some fit, the enclave is asked to choose among those only (the requirement is passed on
//!    with the other options removed; `resource`, `extensions` and each option stay verbatim).
//!    The enclave's answer is checked again, and a payment above the limit is never sent.
//!    Prices and the signed amount are read from the enclave's signed answers, so
//!    `max_amount` needs a credential that pins the enclave's identity: without one it is
//!    refused ([`PayError::Usage`]) before anything is sent, rather than claimed and unchecked.
//!    The amount priced is the one the enclave charges: `maxAmountRequired` in x402 v1,
//!    `amount` in v2.
//! 5. The enclave signs (`SignPayment`, signed with the session key, with the idempotency key
//!    [`PayOptions::idempotency_key`] or a fresh one): it chooses the option within policy,
//!    echoes `resource` and `extensions`, fills the `payment-identifier` extension when the
//!    server declares it, and tells the x402 version. A denial is [`PayError::Denied`], a hold
//!    for a human's approval [`PayError::Held`] (retry with the same idempotency key once
//!    approved: that retry pays). A lost answer is retried with the same key (never charged
//!    twice).
//! 6. The same request is sent again with the payment: `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT`
//!    (v1). If that answer is lost (connection error, timeout), the request is sent again with
//!    **the identical payment** up to [`HttpConfig::lost_response_retries`] more times — the
//!    server settles one authorization at most once, and the enclave charged it once. If it is
//!    still lost: [`PayError::Network`] with the payment (retrying later with its idempotency
//!    key gets the same payment from the enclave, never a second charge).
//! 7. A 402 again is [`PayError::ServerRefused`] (the server's `errorReason`/`error`): never
//!    paid a second time automatically. Otherwise the response is returned with
//!    [`PaymentDetails`], including the settlement (`PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`:
//!    success, transaction, network, payer) when the server sent one.
//!
//! [`Payer::inspect`] does steps 1–4 and then asks the enclave what it would do (its
//! `PreviewPayment`: the same decision on the same state, nothing signed or charged), paying
//! nothing; [`Payer::inspect_outcome`] does the same for the 402 of a `dry_run` fetch (one
//! request), and [`Payer::preview`] for a requirement handed over directly. [`Payer::sign`]
//! signs a requirement handed over directly (an MCP tool's `PaymentRequired`, as JSON or
//! base64) and returns the payload object and the header. [`wire`] has the x402 HTTP wire
//! helpers (header names, reading a 402, decoding a settlement response).
//!
//! # Errors and exit codes
//!
//! [`PayError::exit_code`] is `walletctl fetch`'s exit code; [`exit`] lists them:
//! 0 ok, 1 other, 2 usage, 3 denied by policy, 4 session not accepted, 5 untrusted gateway
//! answer, 6 held for approval, 7 over `max_amount`, 8 network error, 9 server refused the
//! payment.
//!
//! Boundary: no key but the session's, and that one only through [`Credential`] (whose `Debug`
//! prints ids only; so does [`Payer`]'s). HTTP is reqwest with rustls (ring provider) and the
//! platform's certificate verifier.

mod amount;
mod error;
mod http;
mod payer;
pub mod wire;

use serde::Serialize;
use serde_json::Value;

pub use error::{exit, PayError};
pub use http::{install_crypto_provider, HttpConfig, DEFAULT_MAX_BODY_BYTES};
pub use payer::Payer;
pub use wallet_client::{Credential, GatewayClient};

/// A body as JSON fields: `{"body": "<text>"}` when it is UTF-8, else
/// `{"body": null, "body_base64": "<standard base64>"}` (binary safe).
#[must_use]
pub fn body_fields(body: &[u8]) -> serde_json::Map<String, Value> {
    use base64::Engine as _;
    let mut m = serde_json::Map::new();
    match std::str::from_utf8(body) {
        Ok(s) => {
            m.insert("body".to_owned(), Value::String(s.to_owned()));
        }
        Err(_) => {
            m.insert("body".to_owned(), Value::Null);
            m.insert(
                "body_base64".to_owned(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            );
        }
    }
    m
}

/// What the caller will pay under, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayOptions {
    /// The most to pay for this request, human units: `0.05`, `0.05 USDC` or `$0.05` (any USD
    /// stablecoin). Checked before signing; nothing above it is signed or sent.
    pub max_amount: Option<String>,
    /// Preferred network among the server's options (`eip155:84532`; the enclave decides how
    /// a preference it cannot read is treated).
    pub network: Option<String>,
    /// Preferred token address among the server's options.
    pub asset: Option<String>,
    /// Idempotency key: the same key and the same requirement return the same payment,
    /// charged once. Fresh (`pay_` + 32 hex) when not given. Reuse it to retry after a hold was
    /// approved or an answer was lost.
    pub idempotency_key: Option<String>,
    /// Pay nothing: [`Payer::fetch`] stops at the 402 and returns it unpaid; use
    /// [`Payer::inspect`] to learn what would be paid.
    pub dry_run: bool,
}

/// A request to fetch, paying if the server asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchRequest {
    /// HTTP method; empty means `GET`, or `POST` when there is a body (as curl).
    pub method: String,
    /// An `http` or `https` URL.
    pub url: String,
    /// Request headers, in order (repeats allowed). `PAYMENT-SIGNATURE` and `X-PAYMENT` are
    /// refused: the payer adds them.
    pub headers: Vec<(String, String)>,
    /// The body, sent identically on the first attempt and the paid retry.
    pub body: Option<Vec<u8>>,
    /// Payment options.
    pub options: PayOptions,
    /// Follow redirects (curl's `-L`). To another origin only `Accept`, `Accept-Language`,
    /// `Content-Type` and `User-Agent` follow (never the payment header, credentials or custom
    /// headers), and a redirect that would carry the body there is not followed.
    pub follow_redirects: bool,
}

impl FetchRequest {
    /// A `GET` of `url` with default options.
    #[must_use]
    pub fn get(url: &str) -> Self {
        Self { method: "GET".to_owned(), url: url.to_owned(), ..Self::default() }
    }
}

/// The final response, and the payment made for it.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOutcome {
    /// The URL that answered (after redirects).
    pub url: String,
    /// HTTP status.
    pub status: u16,
    /// The HTTP version of the answer (`HTTP/1.1`, `HTTP/2`).
    pub http_version: String,
    /// Response headers in order (values that are not UTF-8 are shown lossily).
    pub headers: Vec<(String, String)>,
    /// The body (at most [`HttpConfig::max_body_bytes`]).
    pub body: Vec<u8>,
    /// The payment, when one was made.
    pub payment: Option<PaymentDetails>,
}

/// A payment the enclave signed and the client sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaymentDetails {
    /// x402 version of the payment (1: `X-PAYMENT`, 2: `PAYMENT-SIGNATURE`).
    pub x402_version: u32,
    /// Atomic units of the asset.
    pub amount: String,
    /// The same amount in human units (`0.01`).
    pub charged: String,
    /// Token address.
    pub asset: String,
    /// Token symbol (`USDC`).
    pub asset_symbol: String,
    /// Network as the server wrote it.
    pub network: String,
    /// Payee.
    pub pay_to: String,
    /// The wallet that paid.
    pub payer: String,
    /// The settlement transaction, from the server's settlement response.
    pub transaction: Option<String>,
    /// The server's settlement response (`PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`), decoded.
    pub settle_response: Option<Value>,
    /// The idempotency key: retrying with it returns this same payment, never charged twice.
    pub idempotency_key: String,
    /// The enclave returned an earlier payment for this key (not charged again).
    pub replayed: bool,
    /// The session's total spent after this payment, human units.
    pub session_spent: String,
    /// What the session may still spend, human units.
    pub session_remaining: String,
}

/// A signed payment, for callers that send it themselves (a paid MCP tool call).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignedPayment {
    /// x402 version (1 or 2).
    pub x402_version: u32,
    /// The HTTP header it goes in: `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1).
    pub header_name: &'static str,
    /// The header value (standard base64 of the compact payload JSON).
    pub header_value: String,
    /// The `PaymentPayload` JSON object (what MCP's `_meta["x402/payment"]` carries).
    pub payload: Value,
    /// The `accepts[]` option the enclave chose, verbatim, and its index.
    pub accepted: Value,
    /// Its index in the requirement the enclave saw.
    pub accepted_index: u32,
    /// What was paid.
    pub details: PaymentDetails,
}

/// What a server asks and what the wallet would do about it; nothing is paid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    /// The URL that answered (after redirects).
    pub url: String,
    /// HTTP status (402 when the server asks for a payment).
    pub status: u16,
    /// x402 version of the requirement (0 when the answer is not a 402).
    pub x402_version: u32,
    /// The server's `error` sentence.
    pub error: Option<String>,
    /// `accepts[]`, verbatim.
    pub accepts: Vec<Value>,
    /// `resource` (v2), verbatim.
    pub resource: Option<Value>,
    /// `extensions` (v2), verbatim.
    pub extensions: Option<Value>,
    /// Each option, read and priced with the enclave's asset registry.
    pub options: Vec<OptionSummary>,
    /// What the enclave would do, when it could be asked.
    pub preview: Option<Preview>,
    /// Why there is no preview (the gateway or enclave cannot preview yet, not a 402, ...).
    pub preview_unavailable: Option<String>,
}

/// One `accepts[]` option, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OptionSummary {
    /// Index in `accepts`.
    pub index: usize,
    /// `scheme`.
    pub scheme: String,
    /// `network` as written.
    pub network: String,
    /// Token address.
    pub asset: String,
    /// The registry's symbol, when the asset is registered.
    pub asset_symbol: Option<String>,
    /// Atomic units.
    pub amount: String,
    /// Human units, when the asset is registered.
    pub amount_human: Option<String>,
    /// Payee.
    pub pay_to: String,
    /// Whether it is within [`PayOptions::max_amount`] (`None`: no limit given, or not priced).
    pub within_max_amount: Option<bool>,
}

/// What the enclave would do with a requirement (its policy decision, nothing charged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preview {
    /// It would sign now.
    pub allowed: bool,
    /// It would hold the payment for a human's approval.
    pub would_hold: bool,
    /// The reason code when not allowed (`PER_TX_LIMIT`, `OVER_MAX_AMOUNT`, ...) or held.
    pub reason: String,
    /// A sentence.
    pub message: String,
    /// The option it would pay (allowed or held).
    pub chosen: Option<ChosenOption>,
    /// What the session would have spent after it, human units (empty when denied).
    pub session_spent: String,
    /// What the session would have left of its cap after it, human units (empty when denied).
    pub session_remaining: String,
}

/// The option the enclave would pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChosenOption {
    /// Index in `accepts`.
    pub index: u32,
    /// Network.
    pub network: String,
    /// Token address.
    pub asset: String,
    /// Token symbol.
    pub asset_symbol: String,
    /// Payee.
    pub pay_to: String,
    /// Atomic units.
    pub amount: String,
    /// Human units.
    pub charged: String,
}
