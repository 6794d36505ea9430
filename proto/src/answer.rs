//! Signed answers: every answer of the enclave is signed by its identity key (the Ed25519 key
//! `walletctl init` pins), bound to the request it answers and to the caller's challenge, so the
//! untrusted host can neither invent an answer ("revoked", "frozen", a spent figure) nor replay
//! an old one, nor pass off the answer to one request as the answer to another.
//!
//! The envelope, end to end:
//! 1. the client draws a random challenge (16 bytes) and sends it in the gRPC metadata
//!    [`CHALLENGE_METADATA`] with its request;
//! 2. the gateway puts it in `EnclaveRequest.challenge` and relays the request unchanged;
//! 3. the enclave signs [`answer_message`] over the challenge, the request (its kind and
//!    protobuf encoding) and its answer (kind and encoding), and returns the signature in
//!    `EnclaveResponse.answer_signature`;
//! 4. the gateway relays it in [`SIGNATURE_METADATA`] — and, for an error, the enclave's
//!    `EnclaveError` encoding in [`ERROR_METADATA`], since a gRPC status does not carry it
//!    byte for byte;
//! 5. the client re-encodes what it sent and what it received (prost's encoding of a message is
//!    deterministic and these messages have no maps) and verifies the signature with the pinned
//!    key. A success answer that does not verify is refused: nothing is known about whether the
//!    request took effect, and the host is not to be trusted.
//!
//! Errors the gateway makes itself (the enclave unreachable, a request too large) carry no
//! signature: they are the host's word, and a client treats them as such.

use crate::enclave::v1::{enclave_request::Body as Req, enclave_response::Body as Resp};

/// Domain tag of answer signatures.
pub const ANSWER_TAG: &[u8] = b"x402-wallet/answer/v1\0";

/// gRPC metadata (binary) carrying the client's challenge to the gateway.
pub const CHALLENGE_METADATA: &str = "x-wallet-challenge-bin";
/// gRPC metadata (binary) carrying the enclave's answer signature back to the client.
pub const SIGNATURE_METADATA: &str = "x-wallet-answer-sig-bin";
/// gRPC metadata (binary) carrying the enclave's `EnclaveError` encoding with an error status.
pub const ERROR_METADATA: &str = "x-wallet-error-bin";

/// The kind of an error answer in [`answer_message`].
pub const ERROR_KIND: &str = "Error";

fn push(buf: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(field);
}

/// The bytes the enclave's identity key signs for an answer: [`ANSWER_TAG`], then, each
/// length-prefixed (4 bytes big-endian): the challenge, the request's kind (its `EnclaveRequest`
/// body variant, e.g. `RevokeSession`), the request's protobuf encoding, the answer's kind (its
/// `EnclaveResponse` body variant, e.g. `Session`, or [`ERROR_KIND`]) and the answer's encoding.
#[must_use]
pub fn answer_message(
    challenge: &[u8],
    request_kind: &str,
    request: &[u8],
    answer_kind: &str,
    answer: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(ANSWER_TAG.len() + 64 + request.len() + answer.len());
    buf.extend_from_slice(ANSWER_TAG);
    push(&mut buf, challenge);
    push(&mut buf, request_kind.as_bytes());
    push(&mut buf, request);
    push(&mut buf, answer_kind.as_bytes());
    push(&mut buf, answer);
    buf
}

macro_rules! kinds {
    ($ty:ident: $($variant:ident),* $(,)?) => {
        /// The body's kind (its variant name) and its protobuf encoding.
        #[must_use]
        pub fn parts(body: &$ty) -> (&'static str, Vec<u8>) {
            use prost::Message as _;
            match body {
                $($ty::$variant(m) => (stringify!($variant), m.encode_to_vec()),)*
            }
        }
    };
}

/// The request side of [`answer_message`].
pub mod request {
    use super::Req;
    kinds!(Req: SignPayment, CreateWallet, ListWallets, SetPolicy, GetPolicy, AddAsset,
        ListAssets, AddKyt, RemoveKyt, ListKyt, IssueSession, ListSessions, RevokeSession,
        GetStatus, FreezeWallet, UnfreezeWallet, AddAdmin, RemoveAdmin, ListAdmins, GetAuditHead,
        ListAudit, ImportKyt, ListApprovals, DecideApproval, GetBudget, ListPayments,
        PreviewPayment, GetAttestation, PrepareAnchor, ProvisionAnchor);
}

/// The answer side of [`answer_message`].
pub mod response {
    use super::Resp;
    kinds!(Resp: Error, SignPayment, Wallet, Wallets, Policy, Asset, Assets, Kyt, KytList,
        Session, Sessions, Status, Admin, Admins, AuditHead, Audit, KytImport, Approvals,
        Approval, SessionBudget, Payments, PaymentPreview, Attestation, Anchor);
}

/// The gRPC status code of an enclave error code (the gateway answers with it; a client that
/// verified the enclave's signed error takes it from there).
#[cfg(feature = "grpc")]
#[must_use]
pub fn grpc_code(code: crate::enclave::v1::ErrorCode) -> tonic::Code {
    use crate::enclave::v1::ErrorCode;
    match code {
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::Denied => tonic::Code::PermissionDenied,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorCode::Aborted => tonic::Code::Aborted,
        ErrorCode::Internal | ErrorCode::Unspecified => tonic::Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::v1 as gw;

    #[test]
    fn every_part_of_the_answer_is_bound() {
        let base = answer_message(b"c", "RevokeSession", b"req", "Session", b"ans");
        assert!(base.starts_with(ANSWER_TAG));
        for other in [
            answer_message(b"d", "RevokeSession", b"req", "Session", b"ans"),
            answer_message(b"c", "ListSessions", b"req", "Session", b"ans"),
            answer_message(b"c", "RevokeSession", b"reg", "Session", b"ans"),
            answer_message(b"c", "RevokeSession", b"req", "Error", b"ans"),
            answer_message(b"c", "RevokeSession", b"req", "Session", b"and"),
            answer_message(b"c", "RevokeSession", b"re", "qSession", b"ans"),
        ] {
            assert_ne!(base, other);
        }
        // Two empty requests of different kinds encode alike; the kind tells them apart.
        let (a, ab) = request::parts(&Req::ListWallets(gw::ListWalletsRequest {}));
        let (b, bb) = request::parts(&Req::GetStatus(gw::GetStatusRequest {}));
        assert_eq!(ab, bb);
        assert_ne!(a, b);
        assert_eq!(response::parts(&Resp::Session(gw::Session::default())).0, "Session");
    }
}
