//! [`ClientError`]: a failed gateway call, with its gRPC code, its stable [`Reason`] and the
//! exit code `walletctl` uses for it.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::StatusExt as _;
pub use wallet_proto::REASON_METADATA;
use wallet_proto::{Reason, ERROR_DOMAIN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The gateway answered with an error status.
    Status,
    /// No connection could be made.
    Connect,
    /// The gateway URL is malformed.
    BadUrl,
    /// The answer did not verify against the pinned enclave identity.
    Untrusted,
    /// An error the enclave signed, verified against the pinned identity.
    Enclave,
    /// The connection broke during the call (the gateway died or the network dropped): no
    /// answer came back, so whether the call took effect is unknown.
    Transport,
}

/// A failed call: the gRPC code, the reason code (if the error carried one) and the message.
#[derive(Debug, Clone)]
pub struct ClientError {
    code: Code,
    reason_code: Option<String>,
    message: String,
    origin: Origin,
}

impl ClientError {
    /// The error carried by a gRPC status. The reason is read from the `google.rpc.ErrorInfo`
    /// detail of this product's domain, else the `x-wallet-reason` metadata, else the `CODE: `
    /// prefix of the message.
    #[must_use]
    pub fn from_status(status: &Status) -> Self {
        let reason_code = reason_code_of(status);
        // A status the client library made from a broken connection carries the I/O error as
        // its source; one the gateway sent never does.
        if reason_code.is_none() {
            if let Some(source) = std::error::Error::source(status) {
                return Self::transport(status, source);
            }
        }
        Self {
            code: status.code(),
            reason_code,
            message: status.message().to_owned(),
            origin: Origin::Status,
        }
    }

    /// The connection to the gateway broke during the call (`Unavailable`): what broke, and
    /// that the service is unavailable rather than refusing anything.
    fn transport(status: &Status, source: &(dyn std::error::Error + 'static)) -> Self {
        let mut why = status.message().to_owned();
        let mut next = Some(source);
        while let Some(e) = next {
            let text = e.to_string();
            if !text.is_empty() && !why.contains(&text) {
                why = format!("{why}: {text}");
            }
            next = e.source();
        }
        Self {
            code: Code::Unavailable,
            reason_code: None,
            message: format!(
                "the connection to the gateway was lost during the call ({why}). The service is unavailable (this is not a refusal): retry once it is back; whether this call took effect is unknown"
            ),
            origin: Origin::Transport,
        }
    }

    /// Whether the connection broke during the call (the gateway died or the network
    /// dropped): nothing was refused, and whether the call took effect is unknown — retry it
    /// (a payment with the same idempotency key, so it is never charged twice).
    #[must_use]
    pub fn is_connection_lost(&self) -> bool {
        self.origin == Origin::Transport
    }

    /// Whether the enclave did not accept the agent's session: revoked, expired, unknown to
    /// this enclave, or a request signature that does not verify (exit code 4).
    #[must_use]
    pub fn is_session_not_accepted(&self) -> bool {
        matches!(
            self.reason(),
            Some(
                Reason::SessionRevoked
                    | Reason::SessionExpired
                    | Reason::UnknownSession
                    | Reason::BadSignature
                    | Reason::StaleRequest
                    | Reason::ReplayedRequest
            )
        )
    }

    /// An error the enclave signed and the client verified: its code, reason and message are the
    /// enclave's, not the gateway's.
    #[must_use]
    pub fn from_enclave(e: &wallet_proto::enclave::v1::EnclaveError) -> Self {
        Self {
            code: wallet_proto::answer::grpc_code(e.code()),
            reason_code: Some(e.reason.clone()).filter(|r| is_code(r)),
            message: format!("{}: {}", e.reason, e.message),
            origin: Origin::Enclave,
        }
    }

    /// Whether this error is the enclave's own, signed and verified (else it is the gateway's
    /// word: an error the gateway made itself, or one that could not be checked because no
    /// enclave identity is pinned).
    #[must_use]
    pub fn is_enclave_signed(&self) -> bool {
        self.origin == Origin::Enclave
    }

    /// Whether a `SignPayment` call that failed this way may have reached the enclave and been
    /// signed without its answer coming back, so that only a retry with the same idempotency
    /// key is safe: the answer was lost (`Unavailable`, `DeadlineExceeded`, `Unknown`,
    /// `Cancelled`, `Internal`), the enclave said the attempt is still in flight
    /// (`IDEMPOTENCY_IN_PROGRESS`), or the error is not the enclave's signed word (a gateway can
    /// turn a signed payment into a made-up denial to get it paid twice). False when the gateway
    /// was never reached.
    #[must_use]
    pub fn outcome_unknown(&self) -> bool {
        !self.is_connect()
            && (!self.is_enclave_signed()
                || matches!(
                    self.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Unknown
                        | Code::Cancelled
                        | Code::Internal
                )
                || self.reason() == Some(Reason::IdempotencyInProgress))
    }

    /// The gateway at `url` could not be reached (`Unavailable`).
    #[must_use]
    pub fn connect(url: &str, err: &dyn fmt::Display) -> Self {
        Self {
            code: Code::Unavailable,
            reason_code: None,
            message: format!(
                "cannot reach the gateway at {url} ({err}); is the stack running? (scripts/dev-up.sh)"
            ),
            origin: Origin::Connect,
        }
    }

    /// `url` is not a gateway URL (`InvalidArgument`).
    #[must_use]
    pub fn bad_url(url: &str, err: &dyn fmt::Display) -> Self {
        Self {
            code: Code::InvalidArgument,
            reason_code: None,
            message: format!("bad gateway URL {url:?}: {err}"),
            origin: Origin::BadUrl,
        }
    }

    /// The answer to `rpc` is not signed by the pinned enclave (`DataLoss`,
    /// [`Reason::UntrustedAnswer`], exit code 5): `why` says what was wrong.
    #[must_use]
    pub fn untrusted(rpc: &str, why: &str) -> Self {
        Self {
            code: Code::DataLoss,
            reason_code: Some(Reason::UntrustedAnswer.as_str().to_owned()),
            message: format!(
                "UNTRUSTED_ANSWER: the answer to {rpc} is not signed by the pinned enclave ({why}): the host (gateway) invented, replayed or altered it, and whether the request took effect is unknown. Do not trust this host"
            ),
            origin: Origin::Untrusted,
        }
    }

    /// Whether the answer failed verification against the pinned enclave identity.
    #[must_use]
    pub fn is_untrusted(&self) -> bool {
        self.origin == Origin::Untrusted
    }

    /// The gRPC code.
    #[must_use]
    pub fn code(&self) -> Code {
        self.code
    }

    /// The stable reason, when the error carried one this build knows.
    #[must_use]
    pub fn reason(&self) -> Option<Reason> {
        self.reason_code.as_deref().and_then(Reason::from_code)
    }

    /// The reason code as sent, known to this build or not (a newer gateway may send new ones).
    #[must_use]
    pub fn reason_code(&self) -> Option<&str> {
        self.reason_code.as_deref()
    }

    /// The message (for gateway errors, `REASON: sentence`).
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the gateway could not be reached at all (no call was made).
    #[must_use]
    pub fn is_connect(&self) -> bool {
        self.origin == Origin::Connect
    }

    /// `walletctl`'s exit code for this error: 6 held for approval (`APPROVAL_PENDING`); 5 an
    /// answer not signed by the pinned enclave (`UNTRUSTED_ANSWER`); 4 the session is not
    /// accepted (`SESSION_REVOKED`, `SESSION_EXPIRED`, `UNKNOWN_SESSION`, `BAD_SIGNATURE`,
    /// [`Self::is_session_not_accepted`]) or another authentication failure
    /// (`Unauthenticated`); 3 denied by policy (`PermissionDenied`); 2 bad input
    /// (`InvalidArgument`, `FailedPrecondition`); 1 anything else (unavailable, lost
    /// connection, not found, internal).
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        if self.reason() == Some(Reason::ApprovalPending) {
            return 6;
        }
        if self.origin == Origin::Untrusted {
            return 5;
        }
        if self.is_session_not_accepted() {
            return 4;
        }
        match self.code {
            Code::PermissionDenied => 3,
            Code::InvalidArgument | Code::FailedPrecondition => 2,
            Code::Unauthenticated => 4,
            _ => 1,
        }
    }

    /// A word for the kind of failure, as `walletctl` prints it before the message:
    /// `session not accepted`, `denied`, `unavailable`, `not authenticated`, `not found`,
    /// `invalid` or `error`.
    #[must_use]
    pub fn label(&self) -> &'static str {
        if self.is_session_not_accepted() {
            return "session not accepted";
        }
        match self.code {
            Code::PermissionDenied => "denied",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "not authenticated",
            Code::NotFound => "not found",
            Code::InvalidArgument => "invalid",
            _ => "error",
        }
    }
}

impl fmt::Display for ClientError {
    /// `label: message` (a malformed URL: the message alone).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            Origin::BadUrl => f.write_str(&self.message),
            Origin::Status | Origin::Connect | Origin::Enclave | Origin::Transport => {
                write!(f, "{}: {}", self.label(), self.message)
            }
            Origin::Untrusted => write!(f, "untrusted: {}", self.message),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::from_status(&status)
    }
}

/// The reason code of `status`: `ErrorInfo` (this product's domain), else metadata, else the
/// message's `CODE: ` prefix.
fn reason_code_of(status: &Status) -> Option<String> {
    if let Some(info) = status.get_details_error_info() {
        if info.domain == ERROR_DOMAIN && is_code(&info.reason) {
            return Some(info.reason);
        }
    }
    if let Some(v) = status.metadata().get(REASON_METADATA).and_then(|v| v.to_str().ok()) {
        if is_code(v) {
            return Some(v.to_owned());
        }
    }
    status.message().split_once(": ").map(|(p, _)| p).filter(|p| is_code(p)).map(str::to_owned)
}

/// `SCREAMING_SNAKE_CASE`, 1 to 64 bytes.
fn is_code(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        && s.as_bytes()[0].is_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic::metadata::{MetadataMap, MetadataValue};
    use tonic_types::ErrorDetails;

    fn with_info(code: Code, msg: &str, reason: &str, domain: &str) -> Status {
        Status::with_error_details(
            code,
            msg,
            ErrorDetails::with_error_info(reason, domain, HashMap::new()),
        )
    }

    #[test]
    fn reason_comes_from_error_info_first() {
        let mut s =
            with_info(Code::PermissionDenied, "SESSION_CAP: over", "PER_TX_LIMIT", ERROR_DOMAIN);
        s.metadata_mut().insert(REASON_METADATA, MetadataValue::from_static("KYT_DENIED"));
        let e = ClientError::from_status(&s);
        assert_eq!(e.reason(), Some(Reason::PerTxLimit));
        assert_eq!(e.code(), Code::PermissionDenied);
        assert_eq!(e.message(), "SESSION_CAP: over");
    }

    #[test]
    fn error_info_of_another_domain_is_ignored() {
        let s = with_info(Code::PermissionDenied, "KYT_DENIED: no", "PER_TX_LIMIT", "example.com");
        assert_eq!(ClientError::from_status(&s).reason(), Some(Reason::KytDenied));
    }

    #[test]
    fn reason_falls_back_to_metadata_then_message_prefix() {
        let mut md = MetadataMap::new();
        md.insert(REASON_METADATA, MetadataValue::from_static("SESSION_REVOKED"));
        let s = Status::with_metadata(Code::PermissionDenied, "revoked", md);
        assert_eq!(ClientError::from_status(&s).reason(), Some(Reason::SessionRevoked));

        let s = Status::invalid_argument("HEADER_TOO_LARGE: the value is 70000 bytes");
        assert_eq!(ClientError::from_status(&s).reason(), Some(Reason::HeaderTooLarge));

        for msg in ["no reason here", "Not A Code: x", ": empty", "error: lower"] {
            let e = ClientError::from_status(&Status::internal(msg));
            assert_eq!((e.reason(), e.reason_code()), (None, None), "{msg}");
        }
    }

    #[test]
    fn unknown_codes_are_kept_but_not_typed() {
        let e = ClientError::from_status(&Status::permission_denied("FUTURE_LIMIT: later"));
        assert_eq!(e.reason_code(), Some("FUTURE_LIMIT"));
        assert_eq!(e.reason(), None);
        assert_eq!(e.exit_code(), 3);
    }

    #[test]
    fn exit_codes_match_walletctl() {
        let exit = |s: Status| ClientError::from_status(&s).exit_code();
        assert_eq!(exit(Status::permission_denied("PER_TX_LIMIT: x")), 3);
        assert_eq!(exit(Status::invalid_argument("MALFORMED_HEADER: x")), 2);
        assert_eq!(exit(Status::failed_precondition("APPROVAL_DECIDED: x")), 2);
        assert_eq!(exit(Status::unauthenticated("BAD_SIGNATURE: x")), 4);
        // The session is not accepted: 4, whatever gRPC code carries it (README, pay --help).
        for s in [
            Status::permission_denied("SESSION_REVOKED: the session was revoked"),
            Status::permission_denied("SESSION_EXPIRED: the session has expired"),
            Status::unauthenticated("UNKNOWN_SESSION: unknown session"),
        ] {
            let e = ClientError::from_status(&s);
            assert_eq!(e.exit_code(), 4, "{e}");
            assert!(e.is_session_not_accepted());
            assert!(e.to_string().starts_with("session not accepted: "), "{e}");
        }
        assert_eq!(exit(Status::permission_denied("WALLET_FROZEN: x")), 3);
        assert_eq!(exit(Status::failed_precondition("APPROVAL_PENDING: held")), 6);
        assert_eq!(
            exit(with_info(Code::FailedPrecondition, "held", "APPROVAL_PENDING", ERROR_DOMAIN)),
            6
        );
        for s in [
            Status::unavailable("ENCLAVE_UNAVAILABLE: x"),
            Status::internal("INTERNAL: x"),
            Status::not_found("NOT_FOUND: x"),
            Status::already_exists("ALREADY_EXISTS: x"),
            Status::aborted("IDEMPOTENCY_IN_PROGRESS: x"),
            Status::deadline_exceeded("ENCLAVE_TIMEOUT: x"),
        ] {
            assert_eq!(exit(s), 1);
        }
        assert_eq!(ClientError::connect("http://x", &"refused").exit_code(), 1);
        assert_eq!(ClientError::bad_url("x", &"bad").exit_code(), 2);
    }

    #[test]
    fn display_is_what_walletctl_prints() {
        let e = ClientError::from_status(&Status::permission_denied("PER_TX_LIMIT: too much"));
        assert_eq!(e.to_string(), "denied: PER_TX_LIMIT: too much");
        let e = ClientError::connect("http://127.0.0.1:1", &"refused");
        assert!(e
            .to_string()
            .starts_with("unavailable: cannot reach the gateway at http://127.0.0.1:1"));
        assert!(e.is_connect());
        let e = ClientError::bad_url("nope", &"invalid uri");
        assert_eq!(e.to_string(), "bad gateway URL \"nope\": invalid uri");
    }

    /// A connection that breaks mid-call (the gateway died): the client library's status
    /// carries the I/O error as its source. It reads as "unavailable", names what broke, and
    /// says the call can be retried, not "transport error" alone.
    #[test]
    fn a_lost_connection_says_the_service_is_unavailable() {
        let io =
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        let status = Status::from_error(Box::new(io));
        let e = ClientError::from_status(&status);
        assert!(e.is_connection_lost() && !e.is_connect() && !e.is_enclave_signed());
        assert_eq!((e.code(), e.exit_code(), e.reason()), (Code::Unavailable, 1, None));
        let shown = e.to_string();
        assert!(
            shown.starts_with("unavailable: the connection to the gateway was lost"),
            "{shown}"
        );
        assert!(shown.contains("connection reset by peer"), "{shown}");
        assert!(shown.contains("The service is unavailable") && shown.contains("retry"), "{shown}");
        // A status the gateway sent (no source) is the gateway's word, as before.
        let e = ClientError::from_status(&Status::unavailable("ENCLAVE_UNAVAILABLE: down"));
        assert!(!e.is_connection_lost());
        assert_eq!(e.to_string(), "unavailable: ENCLAVE_UNAVAILABLE: down");
    }
}
