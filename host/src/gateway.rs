//! The gRPC gateway: serves `wallet.gateway.v1` and relays to the enclave — to one member of an
//! [`EnclaveGroup`], chosen per call by its session or wallet id (see
//! [`crate::enclave_client`] for the routing and when a call goes on to another member).
//!
//! The gateway is untrusted. It checks nothing that matters for money — the enclave does — but
//! it maps errors to precise gRPC statuses and rejects oversized input early.
//!
//! Every error it returns carries its stable reason three ways: the standard
//! `google.rpc.ErrorInfo` detail (`reason`, `domain` = [`wallet_proto::ERROR_DOMAIN`]) that any
//! gRPC client can read, the `x-wallet-reason` metadata, and the `REASON: ` prefix of the message.

use std::{collections::HashMap, sync::Arc};

use prost::Message as _;

use tonic::{
    metadata::{MetadataMap, MetadataValue},
    Code, Request, Response, Status,
};
use tonic_types::{ErrorDetails, StatusExt as _};
use wallet_policy::x402::MAX_HEADER_LEN;
use wallet_proto::{
    answer::{CHALLENGE_METADATA, ERROR_METADATA, SIGNATURE_METADATA},
    enclave::v1::{enclave_request::Body as Req, enclave_response::Body as Resp, EnclaveError},
    gateway::v1::{self as gw, wallet_gateway_server::WalletGateway},
    Reason, ERROR_DOMAIN,
};

use crate::enclave_client::EnclaveGroup;

/// Metadata key carrying the stable reason code of an error (the client reads the same key).
pub use wallet_client::REASON_METADATA;

/// A status with `reason` in the message (`REASON: message`), in `x-wallet-reason` metadata and
/// in a `google.rpc.ErrorInfo` detail of domain [`ERROR_DOMAIN`]. `reason` is passed through as
/// the enclave sent it (a newer enclave may send codes this build does not know).
///
/// The message is clipped to [`MAX_ERROR_MESSAGE`] bytes and the reason to 64: the message
/// travels twice (in `grpc-message` and inside the details), both in the trailers, and a message
/// echoing a long request field must not push the trailers past what clients accept (hyper's
/// default is 16 KiB, grpc-java's 8 KiB), which would turn the error into a protocol failure.
#[must_use]
pub fn status_with_reason(code: Code, reason: &str, message: &str) -> Status {
    let reason = clip(reason, 64);
    let message = clip(message, MAX_ERROR_MESSAGE);
    let mut metadata = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(reason.as_ref()) {
        metadata.insert(REASON_METADATA, v);
    }
    Status::with_error_details_and_metadata(
        code,
        format!("{reason}: {message}"),
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
        metadata,
    )
}

/// Longest error message the gateway sends, in bytes (longer ones are clipped, marked `…`).
pub const MAX_ERROR_MESSAGE: usize = 1024;

fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

/// [`status_with_reason`] for a [`Reason`] of this build.
#[must_use]
pub fn reason_status(code: Code, reason: Reason, message: &str) -> Status {
    status_with_reason(code, reason.as_str(), message)
}

/// The service.
#[derive(Debug, Clone)]
pub struct Gateway {
    enclave: Arc<EnclaveGroup>,
    data_dir: String,
}

impl Gateway {
    /// A gateway relaying to `enclave`: one link (an `Arc<EnclaveClient>`) or an
    /// [`EnclaveGroup`].
    #[must_use]
    pub fn new(enclave: impl Into<EnclaveGroup>, data_dir: String) -> Self {
        Self { enclave: Arc::new(enclave.into()), data_dir }
    }

    /// Relays one request with the caller's challenge (from [`CHALLENGE_METADATA`]) and returns
    /// the answer with the enclave's signature in [`SIGNATURE_METADATA`] — for an error, also
    /// the enclave's error encoding in [`ERROR_METADATA`], which the signature covers.
    async fn relay<T>(
        &self,
        request: Request<T>,
        wrap: fn(T) -> Req,
    ) -> Result<(Resp, MetadataMap), Status> {
        let challenge = request
            .metadata()
            .get_bin(CHALLENGE_METADATA)
            .and_then(|v| v.to_bytes().ok())
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let (resp, signature) =
            self.enclave.call_signed(challenge, wrap(request.into_inner())).await?;
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(SIGNATURE_METADATA, MetadataValue::from_bytes(&signature));
        match resp {
            Resp::Error(e) => {
                let mut status = status_from(&e);
                status
                    .metadata_mut()
                    .insert_bin(SIGNATURE_METADATA, MetadataValue::from_bytes(&signature));
                status
                    .metadata_mut()
                    .insert_bin(ERROR_METADATA, MetadataValue::from_bytes(&e.encode_to_vec()));
                Err(status)
            }
            ok => Ok((ok, metadata)),
        }
    }
}

/// Maps an enclave error to a gRPC status: `PermissionDenied` for policy denials, and so on,
/// with the stable reason as [`status_with_reason`] puts it.
#[must_use]
pub fn status_from(e: &EnclaveError) -> Status {
    let code = wallet_proto::answer::grpc_code(e.code());
    let reason = if e.reason.is_empty() { Reason::Internal.as_str() } else { e.reason.as_str() };
    status_with_reason(code, reason, &e.message)
}

/// A `PAYMENT-REQUIRED` value larger than the enclave reads is refused here, before the relay.
fn header_fits(payment_required: &str) -> Result<(), Status> {
    let len = payment_required.len();
    if len > MAX_HEADER_LEN {
        return Err(reason_status(
            Code::InvalidArgument,
            Reason::HeaderTooLarge,
            &format!(
                "PAYMENT-REQUIRED value is {len} bytes, more than the {MAX_HEADER_LEN}-byte limit"
            ),
        ));
    }
    Ok(())
}

/// The enclave answered a request with a response of another type.
fn wrong_message() -> Status {
    reason_status(Code::Internal, Reason::Internal, "enclave answered with the wrong message")
}

macro_rules! relay {
    ($self:ident, $req:ident, $variant:ident => $out:ident) => {{
        match $self.relay($req, Req::$variant).await? {
            (Resp::$out(v), metadata) => {
                let mut response = Response::new(v);
                *response.metadata_mut() = metadata;
                Ok(response)
            }
            _ => Err(wrong_message()),
        }
    }};
}

#[tonic::async_trait]
impl WalletGateway for Gateway {
    async fn sign_payment(
        &self,
        request: Request<gw::SignPaymentRequest>,
    ) -> Result<Response<gw::SignPaymentResponse>, Status> {
        header_fits(&request.get_ref().payment_required)?;
        relay!(self, request, SignPayment => SignPayment)
    }
    async fn get_budget(
        &self,
        request: Request<gw::GetBudgetRequest>,
    ) -> Result<Response<gw::SessionBudget>, Status> {
        relay!(self, request, GetBudget => SessionBudget)
    }
    async fn list_payments(
        &self,
        request: Request<gw::ListPaymentsRequest>,
    ) -> Result<Response<gw::ListPaymentsResponse>, Status> {
        relay!(self, request, ListPayments => Payments)
    }
    async fn preview_payment(
        &self,
        request: Request<gw::PreviewPaymentRequest>,
    ) -> Result<Response<gw::PaymentPreview>, Status> {
        header_fits(&request.get_ref().payment_required)?;
        relay!(self, request, PreviewPayment => PaymentPreview)
    }
    async fn create_wallet(
        &self,
        request: Request<gw::CreateWalletRequest>,
    ) -> Result<Response<gw::Wallet>, Status> {
        relay!(self, request, CreateWallet => Wallet)
    }
    async fn list_wallets(
        &self,
        request: Request<gw::ListWalletsRequest>,
    ) -> Result<Response<gw::ListWalletsResponse>, Status> {
        relay!(self, request, ListWallets => Wallets)
    }
    async fn set_policy(
        &self,
        request: Request<gw::SetPolicyRequest>,
    ) -> Result<Response<gw::Policy>, Status> {
        relay!(self, request, SetPolicy => Policy)
    }
    async fn get_policy(
        &self,
        request: Request<gw::GetPolicyRequest>,
    ) -> Result<Response<gw::Policy>, Status> {
        relay!(self, request, GetPolicy => Policy)
    }
    async fn add_asset(
        &self,
        request: Request<gw::AddAssetRequest>,
    ) -> Result<Response<gw::Asset>, Status> {
        relay!(self, request, AddAsset => Asset)
    }
    async fn list_assets(
        &self,
        request: Request<gw::ListAssetsRequest>,
    ) -> Result<Response<gw::ListAssetsResponse>, Status> {
        relay!(self, request, ListAssets => Assets)
    }
    async fn add_kyt(
        &self,
        request: Request<gw::KytRequest>,
    ) -> Result<Response<gw::KytResponse>, Status> {
        relay!(self, request, AddKyt => Kyt)
    }
    async fn remove_kyt(
        &self,
        request: Request<gw::KytRequest>,
    ) -> Result<Response<gw::KytResponse>, Status> {
        relay!(self, request, RemoveKyt => Kyt)
    }
    async fn list_kyt(
        &self,
        request: Request<gw::ListKytRequest>,
    ) -> Result<Response<gw::ListKytResponse>, Status> {
        relay!(self, request, ListKyt => KytList)
    }
    async fn import_kyt(
        &self,
        request: Request<gw::ImportKytRequest>,
    ) -> Result<Response<gw::ImportKytResponse>, Status> {
        relay!(self, request, ImportKyt => KytImport)
    }
    async fn list_approvals(
        &self,
        request: Request<gw::ListApprovalsRequest>,
    ) -> Result<Response<gw::ListApprovalsResponse>, Status> {
        relay!(self, request, ListApprovals => Approvals)
    }
    async fn decide_approval(
        &self,
        request: Request<gw::DecideApprovalRequest>,
    ) -> Result<Response<gw::Approval>, Status> {
        relay!(self, request, DecideApproval => Approval)
    }
    async fn issue_session(
        &self,
        request: Request<gw::IssueSessionRequest>,
    ) -> Result<Response<gw::Session>, Status> {
        relay!(self, request, IssueSession => Session)
    }
    async fn list_sessions(
        &self,
        request: Request<gw::ListSessionsRequest>,
    ) -> Result<Response<gw::ListSessionsResponse>, Status> {
        relay!(self, request, ListSessions => Sessions)
    }
    async fn revoke_session(
        &self,
        request: Request<gw::RevokeSessionRequest>,
    ) -> Result<Response<gw::Session>, Status> {
        relay!(self, request, RevokeSession => Session)
    }
    async fn freeze_wallet(
        &self,
        request: Request<gw::FreezeWalletRequest>,
    ) -> Result<Response<gw::Wallet>, Status> {
        relay!(self, request, FreezeWallet => Wallet)
    }
    async fn unfreeze_wallet(
        &self,
        request: Request<gw::FreezeWalletRequest>,
    ) -> Result<Response<gw::Wallet>, Status> {
        relay!(self, request, UnfreezeWallet => Wallet)
    }
    async fn add_admin(
        &self,
        request: Request<gw::AddAdminRequest>,
    ) -> Result<Response<gw::Admin>, Status> {
        relay!(self, request, AddAdmin => Admin)
    }
    async fn remove_admin(
        &self,
        request: Request<gw::RemoveAdminRequest>,
    ) -> Result<Response<gw::Admin>, Status> {
        relay!(self, request, RemoveAdmin => Admin)
    }
    async fn list_admins(
        &self,
        request: Request<gw::ListAdminsRequest>,
    ) -> Result<Response<gw::ListAdminsResponse>, Status> {
        relay!(self, request, ListAdmins => Admins)
    }
    async fn get_audit_head(
        &self,
        request: Request<gw::GetAuditHeadRequest>,
    ) -> Result<Response<gw::AuditHead>, Status> {
        relay!(self, request, GetAuditHead => AuditHead)
    }
    async fn list_audit(
        &self,
        request: Request<gw::ListAuditRequest>,
    ) -> Result<Response<gw::ListAuditResponse>, Status> {
        relay!(self, request, ListAudit => Audit)
    }
    async fn get_attestation(
        &self,
        request: Request<gw::GetAttestationRequest>,
    ) -> Result<Response<gw::Attestation>, Status> {
        relay!(self, request, GetAttestation => Attestation)
    }
    async fn prepare_anchor(
        &self,
        request: Request<gw::PrepareAnchorRequest>,
    ) -> Result<Response<gw::AnchorInfo>, Status> {
        relay!(self, request, PrepareAnchor => Anchor)
    }
    async fn provision_anchor(
        &self,
        request: Request<gw::ProvisionAnchorRequest>,
    ) -> Result<Response<gw::AnchorInfo>, Status> {
        relay!(self, request, ProvisionAnchor => Anchor)
    }
    /// Routed like every call without a key: to the first member (in list order) that takes it,
    /// members that could not be connected lately last. `enclave_reachable: false` (an unsigned
    /// answer of the gateway's own) when none took it, or when the one that did dropped the
    /// connection before answering (never resent, as for every call).
    async fn get_status(
        &self,
        request: Request<gw::GetStatusRequest>,
    ) -> Result<Response<gw::Status>, Status> {
        match self.relay(request, Req::GetStatus).await {
            Ok((Resp::Status(s), metadata)) => {
                let mut response = Response::new(s);
                *response.metadata_mut() = metadata;
                Ok(response)
            }
            Ok(_) => Err(wrong_message()),
            // The gateway is up; say plainly that the enclave is not.
            Err(s) if s.code() == Code::Unavailable => Ok(Response::new(gw::Status {
                enclave_reachable: false,
                data_dir: self.data_dir.clone(),
                ..Default::default()
            })),
            Err(s) => Err(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_error_messages_are_clipped_so_the_trailers_stay_small() {
        let id = "é".repeat(10_000);
        let s = status_with_reason(Code::NotFound, "NOT_FOUND", &format!("wallet {id:?}"));
        assert!(s.message().len() <= "NOT_FOUND: ".len() + MAX_ERROR_MESSAGE + "…".len());
        assert!(s.message().starts_with("NOT_FOUND: wallet \"é"));
        assert!(s.details().len() < 2 * MAX_ERROR_MESSAGE);
        assert_eq!(s.get_error_details().error_info().unwrap().reason, "NOT_FOUND");
        let short = status_with_reason(Code::NotFound, "NOT_FOUND", "no such wallet");
        assert_eq!(short.message(), "NOT_FOUND: no such wallet");
    }
}
