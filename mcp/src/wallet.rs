//! What the MCP servers need from the wallet, as a trait ([`Wallet`]) so the servers are tested
//! without an enclave; [`crate::payer::PayerWallet`] implements it with `wallet-agent`'s
//! `Payer` (the session credential, the enclave through the gateway).
//!
//! Every limit is enforced by the enclave: nothing here decides whether a payment is allowed.

use std::future::Future;

use serde::Serialize;
use serde_json::Value;

/// An HTTP request to make, paying a 402 within policy.
#[derive(Debug, Clone, Default)]
pub struct HttpCall {
    /// `GET`, `POST`, ...
    pub method: String,
    /// `http://` or `https://` URL.
    pub url: String,
    /// Request headers, in order.
    pub headers: Vec<(String, String)>,
    /// Request body (sent again, identical, on the paid retry).
    pub body: Option<Vec<u8>>,
    /// Refuse to pay more than this, in the token's units (`"0.05"`, `"0.05 USDC"`).
    pub max_amount: Option<String>,
    /// The idempotency key of the payment: a retry with the same key returns the same payment,
    /// never charged twice (and pays a hold once a human approved it).
    pub idempotency_key: Option<String>,
}

/// A payment the enclave signed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    /// x402 version of the payment (1 or 2).
    pub x402_version: u32,
    /// Atomic units of the asset.
    pub amount: String,
    /// The same amount in the token's units (`0.01`).
    pub charged: String,
    /// Token contract address.
    pub asset: String,
    /// Token symbol (`USDC`).
    pub asset_symbol: String,
    /// CAIP-2 network (`eip155:84532`).
    pub network: String,
    /// Payee.
    pub pay_to: String,
    /// The wallet's address.
    pub payer: String,
    /// The settlement transaction, when the server reported one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    /// The server's settlement response, as sent (`PAYMENT-RESPONSE`,
    /// `_meta["x402/payment-response"]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settlement: Option<Value>,
    /// The payment's idempotency key.
    pub idempotency_key: String,
    /// An idempotent replay of an earlier signature (not charged again).
    pub replayed: bool,
    /// The session's spend after this payment, token units.
    pub session_spent: String,
    /// What the session's cap still allows, token units.
    pub session_remaining: String,
}

impl Payment {
    /// One line for a person or a model: `paid 0.01 USDC on eip155:84532 to 0x…`.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = format!(
            "paid {} {} ({} atomic units) on {} to {}",
            self.charged, self.asset_symbol, self.amount, self.network, self.pay_to
        );
        if let Some(tx) = &self.transaction {
            s.push_str(&format!(", settlement transaction {tx}"));
        }
        if self.replayed {
            s.push_str(" [the same payment as before, not charged again]");
        }
        if !self.session_spent.is_empty() {
            s.push_str(&format!(
                "; session spent {}, {} left",
                self.session_spent, self.session_remaining
            ));
        }
        s
    }
}

/// The response to an [`HttpCall`].
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
    /// The payment made, if the server asked for one.
    pub payment: Option<Payment>,
}

/// A signed payment for a payment requirement.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The `PaymentPayload` object (what `_meta["x402/payment"]` carries).
    pub payload: Value,
    /// Standard base64 of the payload's compact JSON (the `PAYMENT-SIGNATURE` / `X-PAYMENT`
    /// value; the compatibility encodings send this).
    pub header_value: String,
    /// What was signed.
    pub payment: Payment,
}

/// Why a wallet call did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input (a malformed URL, header, amount).
    Usage,
    /// The policy denied the payment: nothing signed or charged.
    Denied,
    /// Held for a human's approval: nothing paid yet.
    Held,
    /// Over the caller's `maxAmount`: refused before signing.
    OverMaxAmount,
    /// The paid server could not be reached or its answer was lost.
    Network,
    /// The server refused the payment.
    ServerRefused,
    /// The signing call's outcome is unknown: retry with the same idempotency key.
    OutcomeUnknown,
    /// Anything else (session not accepted, gateway down, an unreadable requirement).
    Other,
}

/// A failed wallet call: a stable code for programs, a sentence for people and models.
#[derive(Debug, Clone)]
pub struct WalletError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A stable code: the enclave's reason (`PER_TX_LIMIT`, `SESSION_CAP`, ...) or
    /// `APPROVAL_PENDING`, `OVER_MAX_AMOUNT`, `NETWORK_ERROR`, `SERVER_REFUSED`,
    /// `OUTCOME_UNKNOWN`, `USAGE`, `ERROR`.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
    /// The hold's id (`ap_...`) when held.
    pub hold_id: Option<String>,
    /// The idempotency key to retry with (held, outcome unknown, a payment sent and lost).
    pub idempotency_key: Option<String>,
    /// The payment made before the failure, if any.
    pub payment: Option<Payment>,
    /// The server's HTTP status and body (bounded), when it answered.
    pub response: Option<(u16, Vec<u8>)>,
}

impl WalletError {
    /// An error of `kind` with `code` and `message` and nothing else.
    #[must_use]
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.to_owned(),
            message: message.into(),
            hold_id: None,
            idempotency_key: None,
            payment: None,
            response: None,
        }
    }

    /// Something else went wrong (`ERROR`).
    #[must_use]
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, "ERROR", message)
    }

    /// Held for approval as `hold_id`; retry with `idempotency_key`.
    #[must_use]
    pub fn held(hold_id: &str, idempotency_key: &str, message: impl Into<String>) -> Self {
        Self {
            hold_id: Some(hold_id.to_owned()).filter(|h| !h.is_empty()),
            idempotency_key: Some(idempotency_key.to_owned()),
            ..Self::new(ErrorKind::Held, "APPROVAL_PENDING", message)
        }
    }
}

impl std::fmt::Display for WalletError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.starts_with(&self.code) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// The wallet as the MCP servers use it: the agent's session, policy enforced in the enclave.
pub trait Wallet: Send + Sync + 'static {
    /// Makes `call`, paying a 402 within policy.
    fn fetch(&self, call: HttpCall) -> impl Future<Output = Result<Fetched, WalletError>> + Send;

    /// What `call`'s server asks and what the policy would do with it; pays nothing. The JSON
    /// is the tool's `structuredContent`.
    fn inspect(&self, call: HttpCall) -> impl Future<Output = Result<Value, WalletError>> + Send;

    /// Signs a payment for `payment_required` (a `PaymentRequired` object, echoed as given)
    /// with idempotency key `idempotency_key`, refusing above `max_amount`.
    fn sign(
        &self,
        payment_required: &Value,
        max_amount: Option<&str>,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<Signed, WalletError>> + Send;

    /// The session's budget, answered by the enclave (per-payment limit, session cap spent and
    /// left, rolling windows, expiry).
    fn budget(&self) -> impl Future<Output = Result<Value, WalletError>> + Send;

    /// The session's latest payments and denials, newest first, at most `limit`.
    fn payments(&self, limit: u32) -> impl Future<Output = Result<Value, WalletError>> + Send;

    /// The session's id and wallet, for the server's instructions (never a secret).
    fn describe(&self) -> String;
}
