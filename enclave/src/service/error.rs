//! [`Failure`]: how a request fails, in the vocabulary of the boundary ([`Reason`]).

use wallet_policy::{rules::Denial, x402::HeaderError};
use wallet_proto::{
    enclave::v1::{self as en, ErrorCode},
    Reason,
};

use crate::{journal::JournalError, store::StoreError};

/// A failed request: a gRPC-style code, a stable [`Reason`] and one sentence for people. It
/// never carries secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Maps to the gRPC status code.
    pub code: ErrorCode,
    /// The stable reason code.
    pub reason: Reason,
    /// For people.
    pub message: String,
}

/// Longest error message that leaves the enclave, in bytes.
pub const MAX_WIRE_MESSAGE: usize = 1024;

/// Results of the enclave's request handling.
pub type Result<T, E = Failure> = std::result::Result<T, E>;

impl Failure {
    /// A failure with this code, reason and message.
    pub(crate) fn new(code: ErrorCode, reason: Reason, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }
    pub(crate) fn invalid(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, reason, message)
    }
    pub(crate) fn bad_argument(message: impl Into<String>) -> Self {
        Self::invalid(Reason::InvalidArgument, message)
    }
    pub(crate) fn unauthenticated(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, reason, message)
    }
    pub(crate) fn denied(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Denied, reason, message)
    }
    pub(crate) fn precondition(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, reason, message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, Reason::NotFound, message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, Reason::Internal, message)
    }

    /// The error as it crosses the boundary. The message is clipped to
    /// [`MAX_WIRE_MESSAGE`] bytes (it may echo a long request field, and it travels in gRPC
    /// trailers, which clients cap).
    #[must_use]
    pub fn into_wire(self) -> en::EnclaveError {
        let mut message = self.message;
        if message.len() > MAX_WIRE_MESSAGE {
            let mut end = MAX_WIRE_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        en::EnclaveError {
            code: self.code.into(),
            reason: self.reason.as_str().to_owned(),
            message,
        }
    }
}

/// The [`Reason`] of a policy denial. Every `DenyReason` has one (a test checks them all).
fn reason_of_denial(code: &str) -> Reason {
    Reason::from_code(code).unwrap_or(Reason::Internal)
}

impl From<Denial> for Failure {
    fn from(d: Denial) -> Self {
        Self::denied(reason_of_denial(d.reason.code()), d.message)
    }
}

impl From<HeaderError> for Failure {
    fn from(e: HeaderError) -> Self {
        Self::invalid(Reason::from_code(e.code()).unwrap_or(Reason::MalformedHeader), e.to_string())
    }
}

impl From<JournalError> for Failure {
    fn from(e: JournalError) -> Self {
        let text = e.to_string();
        if let Some(reason) = crate::anchor::failure_reason(&text) {
            tracing::warn!(error = %text, "a round was not anchored");
            return Self::precondition(reason, format!("the signature was withheld: {text}"));
        }
        tracing::error!(error = %e, "spend journal failure");
        Self::internal("the spend could not be made durable; the signature was withheld")
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let text = e.to_string();
        if let Some(reason) = crate::anchor::failure_reason(&text) {
            tracing::warn!(error = %text, "a state change was not anchored");
            return Self::precondition(reason, format!("not confirmed: {text}"));
        }
        tracing::error!(error = %e, "storage failure");
        Self::internal("storage failure; nothing was signed")
    }
}

#[cfg(test)]
mod tests {
    use wallet_policy::rules::DenyReason;

    use super::*;

    #[test]
    fn every_policy_denial_and_header_error_has_a_reason() {
        for d in DenyReason::ALL {
            assert_eq!(Reason::from_code(d.code()).map(Reason::as_str), Some(d.code()));
        }
        for e in [
            HeaderError::Empty,
            HeaderError::TooLarge(1),
            HeaderError::UnsupportedVersion("1".into()),
            HeaderError::NoAccepts,
            HeaderError::BadField("x"),
            HeaderError::TooManyOptions(33),
        ] {
            assert_eq!(Reason::from_code(e.code()).map(Reason::as_str), Some(e.code()));
        }
    }
}
