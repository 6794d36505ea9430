//! The stable reason codes of every error the enclave or the gateway returns.
//!
//! A reason travels as its `SCREAMING_SNAKE_CASE` name: in `EnclaveError.reason` on the
//! host↔enclave link, and on the public gRPC API at the start of the status message, in the
//! `x-wallet-reason` metadata and in the `google.rpc.ErrorInfo` detail (`reason`, with domain
//! [`ERROR_DOMAIN`]). README.md lists every code with its meaning; a test keeps the two equal.

use std::fmt;

/// The `domain` of the `google.rpc.ErrorInfo` details this product attaches to gRPC errors.
pub const ERROR_DOMAIN: &str = "x402-wallet";

/// The gRPC metadata key that also carries an error's reason code (for clients that do not read
/// `google.rpc.ErrorInfo`).
pub const REASON_METADATA: &str = "x-wallet-reason";

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident = $code:literal, )*) => {
        /// A stable reason code. New codes may be added; existing ones never change meaning.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The wire name, e.g. `"PER_TX_LIMIT"`.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }

            /// The reason named `code`, or `None` for a code this build does not know (a newer
            /// enclave or gateway may send one: treat it by its gRPC status).
            #[must_use]
            pub fn from_code(code: &str) -> Option<Self> {
                match code {
                    $($code => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    // ---- policy denials (gRPC PERMISSION_DENIED) ----
    /// The wallet has no policy: every payment is denied.
    NoPolicy = "NO_POLICY",
    /// Over the per-payment limit of the wallet or of the matching rule.
    PerTxLimit = "PER_TX_LIMIT",
    /// Over what the session's cap still allows.
    SessionCap = "SESSION_CAP",
    /// The payee is on the KYT denylist.
    KytDenied = "KYT_DENIED",
    /// The network is outside the session's scope or no rule allows it.
    NetworkNotAllowed = "NETWORK_NOT_ALLOWED",
    /// The asset is not in the registry, or not allowed.
    AssetNotAllowed = "ASSET_NOT_ALLOWED",
    /// The server's EIP-712 `extra.name`/`version` differ from the registry's.
    DomainMismatch = "DOMAIN_MISMATCH",
    /// Not the x402 `exact` scheme with EIP-3009.
    UnsupportedScheme = "UNSUPPORTED_SCHEME",
    /// The payee is outside the session's scope or the policy's allowlist.
    PayeeNotAllowed = "PAYEE_NOT_ALLOWED",
    /// The session has expired.
    SessionExpired = "SESSION_EXPIRED",
    /// The session was revoked.
    SessionRevoked = "SESSION_REVOKED",
    /// The wallet is frozen.
    WalletFrozen = "WALLET_FROZEN",
    /// A requirement field is out of range (amount, timeout, address).
    InvalidRequirement = "INVALID_REQUIREMENT",
    /// No rule of the policy matches: default deny.
    NoMatchingRule = "NO_MATCHING_RULE",
    /// A `deny` rule matched.
    RuleDenied = "RULE_DENIED",
    /// The payee is on the policy's denylist.
    PayeeDenied = "PAYEE_DENIED",
    /// Over a wallet time-window budget.
    WalletBudget = "WALLET_BUDGET",
    /// Over a session time-window budget.
    SessionBudget = "SESSION_BUDGET",
    /// Over a per-payee budget.
    PayeeCap = "PAYEE_CAP",
    /// Over a payments-per-minute limit.
    RateLimited = "RATE_LIMITED",
    /// The request's network or asset preference matches no `accepts[]` option, or names no
    /// network the wallet knows (preferences filter the options; they never fall back).
    PreferenceNotOffered = "PREFERENCE_NOT_OFFERED",
    /// A human denied the held payment.
    ApprovalDenied = "APPROVAL_DENIED",
    /// The hold expired before it was decided or used.
    ApprovalExpired = "APPROVAL_EXPIRED",

    // ---- approvals (gRPC FAILED_PRECONDITION) ----
    /// Held for human approval: retry with the same idempotency key once approved.
    ApprovalPending = "APPROVAL_PENDING",
    /// The hold was already approved or denied.
    ApprovalDecided = "APPROVAL_DECIDED",

    // ---- bad input (gRPC INVALID_ARGUMENT) ----
    /// A request field is malformed.
    InvalidArgument = "INVALID_ARGUMENT",
    /// The policy document does not parse or check (line, column and reason in the message).
    InvalidPolicy = "INVALID_POLICY",
    /// An amount is malformed or zero.
    InvalidAmount = "INVALID_AMOUNT",
    /// A public key is not a valid Ed25519 key.
    InvalidPublicKey = "INVALID_PUBLIC_KEY",
    /// A request nonce is not 16 to 64 bytes.
    InvalidNonce = "INVALID_NONCE",
    /// An idempotency key is not 1-128 characters of `[A-Za-z0-9_.:-]`.
    InvalidIdempotencyKey = "INVALID_IDEMPOTENCY_KEY",
    /// The `PAYMENT-REQUIRED` value is not base64 JSON of the x402 shape.
    MalformedHeader = "MALFORMED_HEADER",
    /// `x402Version` is not supported.
    UnsupportedVersion = "UNSUPPORTED_VERSION",
    /// `accepts[]` is empty.
    NoAccepts = "NO_ACCEPTS",
    /// The `PAYMENT-REQUIRED` value is larger than 64 KiB.
    HeaderTooLarge = "HEADER_TOO_LARGE",
    /// `accepts[]` has more than 32 options.
    TooManyOptions = "TOO_MANY_OPTIONS",
    /// The request has no body.
    EmptyRequest = "EMPTY_REQUEST",
    /// A host↔enclave frame is not a valid message.
    MalformedFrame = "MALFORMED_FRAME",
    /// The host↔enclave protocol versions differ.
    ProtocolVersion = "PROTOCOL_VERSION",
    /// The request does not fit in one host↔enclave frame.
    RequestTooLarge = "REQUEST_TOO_LARGE",
    /// A KYT import exceeds the list's maximum size.
    KytTooLarge = "KYT_TOO_LARGE",

    // ---- authentication (gRPC UNAUTHENTICATED) ----
    /// The session signature does not verify.
    BadSignature = "BAD_SIGNATURE",
    /// The session does not exist in this enclave.
    UnknownSession = "UNKNOWN_SESSION",
    /// The request's timestamp is more than 120 s from the enclave clock.
    StaleRequest = "STALE_REQUEST",
    /// The signed request was already used.
    ReplayedRequest = "REPLAYED_REQUEST",
    /// A state change without an admin signature.
    AdminSignatureRequired = "ADMIN_SIGNATURE_REQUIRED",
    /// Signed by a key that is not an admin of this enclave.
    UnknownAdmin = "UNKNOWN_ADMIN",
    /// The admin signature does not verify over this request.
    BadAdminSignature = "BAD_ADMIN_SIGNATURE",
    /// The admin request is not newer than the last one accepted.
    ReplayedAdminRequest = "REPLAYED_ADMIN_REQUEST",
    /// The admin request's timestamp is more than 120 s from the enclave clock.
    StaleAdminRequest = "STALE_ADMIN_REQUEST",
    /// The enclave has no admin (register one with `walletctl init`), or refuses a new one.
    NoAdmin = "NO_ADMIN",

    // ---- state (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED) ----
    /// The wallet, session, hold or admin does not exist.
    NotFound = "NOT_FOUND",
    /// It exists already.
    AlreadyExists = "ALREADY_EXISTS",
    /// The last admin cannot be removed.
    LastAdmin = "LAST_ADMIN",
    /// The idempotency key was used for a different request.
    IdempotencyConflict = "IDEMPOTENCY_CONFLICT",
    /// An earlier attempt with this idempotency key failed after its spend may have been
    /// recorded: use a new key.
    IdempotencyKeyFailed = "IDEMPOTENCY_KEY_FAILED",
    /// The earlier attempt with this idempotency key did not finish: retry.
    IdempotencyInProgress = "IDEMPOTENCY_IN_PROGRESS",
    /// A KYT import's commit saw fewer addresses than were sent: nothing changed.
    KytImportIncomplete = "KYT_IMPORT_INCOMPLETE",
    /// The audit log on disk does not match the enclave's record of it.
    AuditTampered = "AUDIT_TAMPERED",

    // ---- infrastructure (INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED) ----
    /// A failure inside the enclave (storage, durability); nothing was released.
    Internal = "INTERNAL",
    /// The gateway cannot reach the enclave.
    EnclaveUnavailable = "ENCLAVE_UNAVAILABLE",
    /// The rollback anchor (etcd) did not confirm in time, or is not confirmed yet: nothing was
    /// released (fail closed). A payment whose round was not confirmed stays counted against
    /// its budget; one refused before (the anchor known unavailable) reserved nothing. Retry
    /// with a new idempotency key once the anchor is back.
    AnchorUnavailable = "ANCHOR_UNAVAILABLE",
    /// The enclave refuses to sign: its state is behind or forked from the anchored head (a
    /// rollback or a clone), or another instance took the anchor over. Needs an operator.
    AnchorHalted = "ANCHOR_HALTED",
    /// The enclave did not answer in time (the request may still complete: retry with the
    /// same idempotency key).
    EnclaveTimeout = "ENCLAVE_TIMEOUT",
    /// Found by the client, not sent: the answer is not signed by the pinned enclave identity
    /// over this request and challenge — the host invented, replayed or altered it. Whether the
    /// request took effect is unknown.
    UntrustedAnswer = "UNTRUSTED_ANSWER",
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::str::FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_code(s).ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// A reason code this build does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownReason(pub String);

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown reason code {:?}", self.0)
    }
}

impl std::error::Error for UnknownReason {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{r} twice");
            assert_eq!(Reason::from_code(r.as_str()), Some(*r));
            assert_eq!(r.as_str().parse::<Reason>(), Ok(*r));
            assert!(r.as_str().bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
        assert_eq!(Reason::from_code("NOT_A_CODE"), None);
    }
}

#[cfg(test)]
mod readme {
    use super::Reason;

    /// The README's table of reason codes is the user's list: it names every code and no other.
    #[test]
    fn the_readme_lists_exactly_the_reasons() {
        let readme = include_str!("../../README.md");
        let start = readme.find("### Reason codes").expect("README has a Reason codes section");
        let section = &readme[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        let listed: std::collections::BTreeSet<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let known: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        let missing: Vec<_> = known.difference(&listed).collect();
        let unknown: Vec<_> = listed.difference(&known).collect();
        assert!(missing.is_empty(), "README lacks {missing:?}");
        assert!(unknown.is_empty(), "README lists codes the code does not have: {unknown:?}");
    }
}
