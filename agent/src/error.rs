//! [`PayError`]: why a paid fetch did not end in a response, with the exit code `walletctl
//! fetch` uses for each kind of failure ([`exit`]).

use std::fmt;

use wallet_client::{ClientError, Reason};

use crate::PaymentDetails;

/// The exit codes of `walletctl fetch` (and what [`PayError::exit_code`] returns).
///
/// | code | meaning |
/// |---|---|
/// | 0 | the request was made (paid or not); the body is on stdout, whatever the HTTP status |
/// | 1 | anything else (a 402 that is not a readable x402 requirement, the gateway unreachable) |
/// | 2 | usage: bad flags, URL, header or file |
/// | 3 | denied by the wallet's policy (reason code on stderr) |
/// | 4 | the session was not accepted (unknown session, bad signature) |
/// | 5 | the gateway's answer is not signed by the pinned enclave: do not trust this host |
/// | 6 | held for a human's approval: retry with the printed idempotency key once approved |
/// | 7 | over `--max-amount`: refused before signing, nothing charged |
/// | 8 | network error talking to the paid server (if a payment was sent, retry with the printed idempotency key: same payment, never charged twice) |
/// | 9 | the server refused the payment (it answered 402 again); never paid twice automatically |
pub mod exit {
    /// The request was made.
    pub const OK: u8 = 0;
    /// Anything else.
    pub const OTHER: u8 = 1;
    /// Bad flags, URL, header or file.
    pub const USAGE: u8 = 2;
    /// Denied by the wallet's policy.
    pub const DENIED: u8 = 3;
    /// The session was not accepted.
    pub const SESSION: u8 = 4;
    /// The gateway's answer is not signed by the pinned enclave.
    pub const UNTRUSTED: u8 = 5;
    /// Held for a human's approval.
    pub const HELD: u8 = 6;
    /// Over `--max-amount`.
    pub const OVER_MAX_AMOUNT: u8 = 7;
    /// Network error talking to the paid server.
    pub const NETWORK: u8 = 8;
    /// The server refused the payment.
    pub const SERVER_REFUSED: u8 = 9;
}

/// Why a fetch, an inspection or a signature did not succeed.
///
/// `Display` is one or two sentences for a person (never a secret); [`Self::exit_code`] is the
/// `walletctl fetch` exit code; [`Self::reason_code`] a stable code for programs.
#[derive(Debug)]
#[non_exhaustive]
pub enum PayError {
    /// Bad input from the caller: a malformed URL, method, header, amount or option.
    Usage(String),
    /// The wallet's policy denied the payment (nothing was signed or charged).
    Denied {
        /// The stable reason code (`PER_TX_LIMIT`, `SESSION_CAP`, ...).
        reason: String,
        /// The enclave's sentence.
        message: String,
    },
    /// The policy held the payment for a human's approval. Nothing was paid. Once a human
    /// approves (`walletctl approvals approve APPROVAL_ID`), the same request with the same
    /// idempotency key pays.
    Held {
        /// The hold's id (`ap_...`), empty if the enclave's message did not name it.
        approval_id: String,
        /// The idempotency key to retry with once approved.
        idempotency_key: String,
        /// The enclave's sentence.
        message: String,
    },
    /// Every option the server offers costs more than `max_amount`: refused before signing,
    /// nothing charged (or, if `signed_not_sent`, signed by the enclave, so charged to the
    /// session's budget, but never sent to the server, so no money moved).
    OverMaxAmount {
        /// The limit as given.
        max_amount: String,
        /// The cheapest price asked, human units with its symbol (`0.10 USDC`), if known.
        asked: String,
        /// The enclave signed a payment above the limit, so the session's budget was charged
        /// with it, but it was not sent: no money moved. Only when the enclave chose an option
        /// the pre-check could not price.
        signed_not_sent: bool,
    },
    /// The paid server could not be reached, or its answer was lost.
    Network {
        /// What failed.
        message: String,
        /// When a payment had been sent: the payment (its `idempotency_key` retries the same
        /// payment, never charged twice). The server may or may not have accepted it.
        payment: Option<Box<PaymentDetails>>,
    },
    /// The server answered the paid request with 402 again: it refused the payment. It is never
    /// paid a second time automatically.
    ServerRefused {
        /// The HTTP status (402).
        status: u16,
        /// The server's reason (`errorReason` of its settlement response, else the `error` of
        /// its new payment requirement), or `"payment refused"`.
        reason: String,
        /// The settlement response, when the server sent one.
        settle_response: Option<Box<serde_json::Value>>,
        /// The payment that was sent and refused.
        payment: Box<PaymentDetails>,
        /// The 402's HTTP version (`HTTP/1.1`) and headers, for the caller to show (`-i`).
        http_version: String,
        /// The 402's headers, in order.
        headers: Vec<(String, String)>,
        /// The 402's body (bounded), for the caller to show.
        body: Vec<u8>,
    },
    /// The server answered 402 but not with a readable x402 payment requirement (no
    /// `PAYMENT-REQUIRED` header and no v1 JSON body, or one that does not decode).
    BadRequirement(String),
    /// The gateway or the enclave refused for another reason (its exit code is kept: 4 session
    /// not accepted, 5 untrusted answer, 2 a requirement the enclave cannot read, 1 otherwise).
    Client(ClientError),
    /// Signing failed in a way that leaves its outcome unknown (the answer was lost, or is
    /// not the enclave's signed word): the same idempotency key returns the same payment if one
    /// was signed, and is never charged twice.
    OutcomeUnknown {
        /// The gateway's error.
        error: ClientError,
        /// The key to retry with.
        idempotency_key: String,
    },
    /// Something else (an HTTP client that could not be built, a response too large, ...).
    Other(String),
}

impl PayError {
    /// The `walletctl fetch` exit code ([`exit`]).
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Denied { .. } => exit::DENIED,
            Self::Held { .. } => exit::HELD,
            Self::OverMaxAmount { .. } => exit::OVER_MAX_AMOUNT,
            Self::Network { .. } => exit::NETWORK,
            Self::ServerRefused { .. } => exit::SERVER_REFUSED,
            Self::Client(e) | Self::OutcomeUnknown { error: e, .. } => match e.exit_code() {
                0 => exit::OTHER,
                c => c,
            },
            Self::BadRequirement(_) | Self::Other(_) => exit::OTHER,
        }
    }

    /// A stable code for programs (MCP tool results): the enclave's reason code for denials
    /// and gateway errors, else one of `USAGE`, `APPROVAL_PENDING`, `OVER_MAX_AMOUNT`,
    /// `NETWORK_ERROR`, `SERVER_REFUSED`, `BAD_REQUIREMENT`, `OUTCOME_UNKNOWN`, `ERROR`.
    #[must_use]
    pub fn reason_code(&self) -> String {
        match self {
            Self::Usage(_) => "USAGE".to_owned(),
            Self::Denied { reason, .. } => reason.clone(),
            Self::Held { .. } => Reason::ApprovalPending.as_str().to_owned(),
            Self::OverMaxAmount { .. } => "OVER_MAX_AMOUNT".to_owned(),
            Self::Network { .. } => "NETWORK_ERROR".to_owned(),
            Self::ServerRefused { .. } => "SERVER_REFUSED".to_owned(),
            Self::BadRequirement(_) => "BAD_REQUIREMENT".to_owned(),
            Self::Client(e) => e.reason_code().unwrap_or("ERROR").to_owned(),
            Self::OutcomeUnknown { .. } => "OUTCOME_UNKNOWN".to_owned(),
            Self::Other(_) => "ERROR".to_owned(),
        }
    }

    /// The payment that was signed and sent, when the failure came after one was (a lost
    /// answer, a refusal).
    #[must_use]
    pub fn payment(&self) -> Option<&PaymentDetails> {
        match self {
            Self::Network { payment, .. } => payment.as_deref(),
            Self::ServerRefused { payment, .. } => Some(payment),
            _ => None,
        }
    }

    /// A gateway error from the signing call, sorted into [`Self::Denied`], [`Self::Held`],
    /// [`Self::OutcomeUnknown`] or [`Self::Client`].
    pub(crate) fn from_sign(e: ClientError, idempotency_key: &str) -> Self {
        if e.reason() == Some(Reason::ApprovalPending) {
            return Self::Held {
                approval_id: approval_id_in(e.message()).unwrap_or_default(),
                idempotency_key: idempotency_key.to_owned(),
                message: e.message().to_owned(),
            };
        }
        if e.outcome_unknown() {
            return Self::OutcomeUnknown { error: e, idempotency_key: idempotency_key.to_owned() };
        }
        Self::from_client(e)
    }

    /// A gateway error outside signing (no payment can have been made).
    pub(crate) fn from_client(e: ClientError) -> Self {
        if e.code() == tonic::Code::PermissionDenied
            && !e.is_untrusted()
            && !e.is_session_not_accepted()
        {
            return Self::Denied {
                reason: e.reason_code().unwrap_or("DENIED").to_owned(),
                message: e.message().to_owned(),
            };
        }
        Self::Client(e)
    }
}

impl fmt::Display for PayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) => write!(f, "usage: {m}"),
            Self::Denied { reason, message } => {
                if message.starts_with(reason.as_str()) {
                    write!(f, "denied by policy: {message}")
                } else {
                    write!(f, "denied by policy: {reason}: {message}")
                }
            }
            Self::Held { approval_id, idempotency_key, message } => {
                writeln!(f, "held for approval: {message}")?;
                if !approval_id.is_empty() {
                    write!(f, "once `walletctl approvals approve {approval_id}` is run, ")?;
                }
                write!(f, "retry with --idempotency-key {idempotency_key} to pay")
            }
            Self::OverMaxAmount { max_amount, asked, signed_not_sent } => {
                if *signed_not_sent {
                    write!(f, "over --max-amount {max_amount}: the enclave signed a payment of {asked}, so the session's budget was charged with it, but it was NOT sent: nothing was sent to the server and no money moved")
                } else if asked.is_empty() {
                    write!(f, "over --max-amount {max_amount}: no option the server offers can be priced within it; nothing was signed or charged")
                } else {
                    write!(f, "over --max-amount {max_amount}: the server asks {asked}; nothing was signed or charged")
                }
            }
            Self::Network { message, payment } => {
                write!(f, "network error: {message}")?;
                if let Some(p) = payment {
                    write!(f, "\na payment of {} {} was sent and may have been accepted: retry with --idempotency-key {} to resend the same payment (never charged twice)", p.charged, p.asset_symbol, p.idempotency_key)?;
                }
                Ok(())
            }
            Self::ServerRefused { status, reason, payment, .. } => write!(
                f,
                "server refused the payment (HTTP {status}): {reason} (sent {} {} to {} on {}; not paid again)",
                payment.charged, payment.asset_symbol, payment.pay_to, payment.network
            ),
            Self::BadRequirement(m) => write!(f, "not an x402 payment requirement: {m}"),
            Self::Client(e) => write!(f, "{e}"),
            Self::OutcomeUnknown { error, idempotency_key } => write!(
                f,
                "{error}\nthe payment may have been signed: retry with --idempotency-key {idempotency_key} to get the same payment (never charged twice)"
            ),
            Self::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PayError {}

impl From<ClientError> for PayError {
    fn from(e: ClientError) -> Self {
        Self::from_client(e)
    }
}

/// Whether a signing error is worth retrying at once with the same idempotency key (the answer
/// was lost in transit, or the first attempt is still in flight).
pub(crate) fn transient(e: &ClientError) -> bool {
    use tonic::Code;
    !e.is_untrusted()
        && (matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
            || e.reason() == Some(Reason::IdempotencyInProgress))
}

/// The hold id (`ap_...`) named in an `APPROVAL_PENDING` message.
fn approval_id_in(message: &str) -> Option<String> {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("ap_") && w.len() > 3)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_ids_are_read_from_the_enclave_sentence() {
        let m = "APPROVAL_PENDING: held for human approval as ap_7f3a (above 0.5); retry with the same idempotency key once it is approved (walletctl approvals approve ap_7f3a); the hold expires in 899 s";
        assert_eq!(approval_id_in(m).as_deref(), Some("ap_7f3a"));
        assert_eq!(approval_id_in("nothing here"), None);
    }

    #[test]
    fn errors_map_to_distinct_exit_codes() {
        let held = PayError::from_sign(
            ClientError::from_status(&tonic::Status::failed_precondition(
                "APPROVAL_PENDING: held for human approval as ap_1 (x)",
            )),
            "k1",
        );
        assert!(
            matches!(&held, PayError::Held { approval_id, idempotency_key, .. } if approval_id == "ap_1" && idempotency_key == "k1")
        );
        assert_eq!(held.exit_code(), exit::HELD);
        assert!(held.to_string().contains("--idempotency-key k1"), "{held}");
        let denied = PayError::from_client(ClientError::from_status(
            &tonic::Status::permission_denied("PER_TX_LIMIT: too much"),
        ));
        assert!(matches!(&denied, PayError::Denied { reason, .. } if reason == "PER_TX_LIMIT"));
        assert_eq!(denied.exit_code(), exit::DENIED);
        assert_eq!(denied.to_string(), "denied by policy: PER_TX_LIMIT: too much");
        let codes = [
            PayError::Usage(String::new()).exit_code(),
            denied.exit_code(),
            held.exit_code(),
            PayError::OverMaxAmount {
                max_amount: "1".into(),
                asked: String::new(),
                signed_not_sent: false,
            }
            .exit_code(),
            PayError::Network { message: String::new(), payment: None }.exit_code(),
            PayError::BadRequirement(String::new()).exit_code(),
        ];
        assert_eq!(codes, [2, 3, 6, 7, 8, 1]);
        let unauth = PayError::from_client(ClientError::from_status(
            &tonic::Status::unauthenticated("UNKNOWN_SESSION: who"),
        ));
        assert_eq!(unauth.exit_code(), exit::SESSION);
    }

    #[test]
    fn a_payment_signed_but_not_sent_says_the_budget_was_charged() {
        let e = PayError::OverMaxAmount {
            max_amount: "0.05".into(),
            asked: "0.06 USDC".into(),
            signed_not_sent: true,
        };
        let s = e.to_string();
        assert!(s.contains("the session's budget was charged"), "{s}");
        assert!(s.contains("nothing was sent") && s.contains("no money moved"), "{s}");
        let e = PayError::OverMaxAmount {
            max_amount: "0.05".into(),
            asked: "0.06 USDC".into(),
            signed_not_sent: false,
        };
        assert!(e.to_string().contains("nothing was signed or charged"), "{e}");
    }

    #[test]
    fn a_lost_signing_answer_is_outcome_unknown() {
        let e = PayError::from_sign(
            ClientError::from_status(&tonic::Status::unavailable("ENCLAVE_UNAVAILABLE: gone")),
            "k2",
        );
        assert!(matches!(e, PayError::OutcomeUnknown { .. }));
        assert!(e.to_string().contains("--idempotency-key k2"));
    }
}
