//! The gRPC gateway: serves `wallet.gateway.v1` and relays to the enclave.
//!
//! The gateway is untrusted. It checks nothing that matters for money — the enclave does — but
//! it maps errors to precise gRPC statuses and rejects oversized input early.

use std::sync::Arc;

use tonic::{metadata::MetadataValue, Request, Response, Status};
use wallet_policy::x402::MAX_HEADER_LEN;
use wallet_proto::{
    enclave::v1::{
        enclave_request::Body as Req, enclave_response::Body as Resp, EnclaveError, ErrorCode,
    },
    gateway::v1::{self as gw, wallet_gateway_server::WalletGateway},
};

use crate::enclave_client::EnclaveClient;

/// Metadata key carrying the stable reason code of an error.
pub const REASON_METADATA: &str = "x-wallet-reason";

/// The service.
#[derive(Debug, Clone)]
pub struct Gateway {
    enclave: Arc<EnclaveClient>,
    data_dir: String,
}

impl Gateway {
    /// A gateway relaying to `enclave`.
    #[must_use]
    pub fn new(enclave: Arc<EnclaveClient>, data_dir: String) -> Self {
        Self { enclave, data_dir }
    }

    async fn relay(&self, body: Req) -> Result<Resp, Status> {
        match self.enclave.call(body).await? {
            Resp::Error(e) => Err(status_from(&e)),
            ok => Ok(ok),
        }
    }
}

/// Maps an enclave error to a gRPC status: `PermissionDenied` for policy denials, with the
/// stable reason in the message (`PER_TX_LIMIT: ...`) and in `x-wallet-reason` metadata.
#[must_use]
pub fn status_from(e: &EnclaveError) -> Status {
    let code = match e.code() {
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::Denied => tonic::Code::PermissionDenied,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorCode::Aborted => tonic::Code::Aborted,
        ErrorCode::Internal | ErrorCode::Unspecified => tonic::Code::Internal,
    };
    let mut status = Status::new(code, format!("{}: {}", e.reason, e.message));
    if let Ok(v) = MetadataValue::try_from(e.reason.as_str()) {
        status.metadata_mut().insert(REASON_METADATA, v);
    }
    status
}

macro_rules! relay {
    ($self:ident, $req:ident, $variant:ident => $out:ident) => {{
        match $self.relay(Req::$variant($req.into_inner())).await? {
            Resp::$out(v) => Ok(Response::new(v)),
            _ => Err(Status::internal("enclave answered with the wrong message")),
        }
    }};
}

#[tonic::async_trait]
impl WalletGateway for Gateway {
    async fn sign_payment(
        &self,
        request: Request<gw::SignPaymentRequest>,
    ) -> Result<Response<gw::SignPaymentResponse>, Status> {
        let len = request.get_ref().payment_required.len();
        if len > MAX_HEADER_LEN {
            let mut s = Status::invalid_argument(format!("HEADER_TOO_LARGE: PAYMENT-REQUIRED value is {len} bytes, more than the {MAX_HEADER_LEN}-byte limit"));
            s.metadata_mut()
                .insert(REASON_METADATA, MetadataValue::from_static("HEADER_TOO_LARGE"));
            return Err(s);
        }
        relay!(self, request, SignPayment => SignPayment)
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
    async fn get_status(
        &self,
        request: Request<gw::GetStatusRequest>,
    ) -> Result<Response<gw::Status>, Status> {
        match self.relay(Req::GetStatus(request.into_inner())).await {
            Ok(Resp::Status(s)) => Ok(Response::new(s)),
            Ok(_) => Err(Status::internal("enclave answered with the wrong message")),
            // The gateway is up; say plainly that the enclave is not.
            Err(s) if s.code() == tonic::Code::Unavailable => Ok(Response::new(gw::Status {
                enclave_reachable: false,
                data_dir: self.data_dir.clone(),
                ..Default::default()
            })),
            Err(s) => Err(s),
        }
    }
}
