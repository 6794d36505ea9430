//! [`GatewayClient`]: the typed client of `wallet.gateway.v1`. Each call takes the request
//! message and returns the response message, or a [`ClientError`] with the gRPC code, the
//! [`Reason`](wallet_proto::Reason) and the exit code.

use tonic::transport::{Channel, Endpoint};
use wallet_proto::gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient};

use crate::ClientError;

/// Largest response accepted, in bytes (audit and KYT pages can be large).
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// A connection to the gateway. Cloning is cheap (the channel is shared).
#[derive(Debug, Clone)]
pub struct GatewayClient {
    inner: WalletGatewayClient<Channel>,
    url: String,
}

macro_rules! calls {
    ($( $(#[doc = $doc:literal])* $name:ident($req:ty) -> $resp:ty; )*) => {
        impl GatewayClient {
            $(
                $(#[doc = $doc])*
                ///
                /// # Errors
                /// The gateway's error status, as a [`ClientError`].
                pub async fn $name(&mut self, request: $req) -> Result<$resp, ClientError> {
                    Ok(self.inner.$name(request).await?.into_inner())
                }
            )*
        }
    };
}

impl GatewayClient {
    /// Connects to the gateway at `url` (e.g. `http://127.0.0.1:7402`).
    ///
    /// # Errors
    /// [`ClientError::bad_url`] for a malformed URL; [`ClientError::connect`] (`Unavailable`,
    /// saying how to start the stack) when nothing answers there.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|e| ClientError::bad_url(url, &e))?;
        let channel = endpoint.connect().await.map_err(|e| ClientError::connect(url, &e))?;
        Ok(Self::from_channel(channel, url))
    }

    /// A client over an existing channel (an in-memory transport in tests, a custom TLS
    /// channel); `url` is only for messages.
    #[must_use]
    pub fn from_channel(channel: Channel, url: &str) -> Self {
        let inner = WalletGatewayClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        Self { inner, url: url.to_owned() }
    }

    /// The gateway's URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The generated tonic client, for calls that need request metadata or raw statuses.
    pub fn raw(&mut self) -> &mut WalletGatewayClient<Channel> {
        &mut self.inner
    }
}

calls! {
    /// Agent: signs a payment if the policy allows it (`SignPayment`).
    sign_payment(gw::SignPaymentRequest) -> gw::SignPaymentResponse;
    /// Creates a wallet (admin-signed).
    create_wallet(gw::CreateWalletRequest) -> gw::Wallet;
    /// Lists wallets.
    list_wallets(gw::ListWalletsRequest) -> gw::ListWalletsResponse;
    /// Replaces a wallet's policy (admin-signed).
    set_policy(gw::SetPolicyRequest) -> gw::Policy;
    /// Reads a wallet's policy.
    get_policy(gw::GetPolicyRequest) -> gw::Policy;
    /// Registers an asset (admin-signed).
    add_asset(gw::AddAssetRequest) -> gw::Asset;
    /// Lists registered assets.
    list_assets(gw::ListAssetsRequest) -> gw::ListAssetsResponse;
    /// Adds KYT denylist entries (admin-signed).
    add_kyt(gw::KytRequest) -> gw::KytResponse;
    /// Removes KYT denylist entries (admin-signed).
    remove_kyt(gw::KytRequest) -> gw::KytResponse;
    /// One page of the KYT denylist.
    list_kyt(gw::ListKytRequest) -> gw::ListKytResponse;
    /// One chunk of a KYT import (admin-signed).
    import_kyt(gw::ImportKytRequest) -> gw::ImportKytResponse;
    /// Lists approval holds.
    list_approvals(gw::ListApprovalsRequest) -> gw::ListApprovalsResponse;
    /// Approves or denies a hold (admin-signed).
    decide_approval(gw::DecideApprovalRequest) -> gw::Approval;
    /// Issues a session (admin-signed).
    issue_session(gw::IssueSessionRequest) -> gw::Session;
    /// Lists sessions.
    list_sessions(gw::ListSessionsRequest) -> gw::ListSessionsResponse;
    /// Revokes a session (admin-signed).
    revoke_session(gw::RevokeSessionRequest) -> gw::Session;
    /// Freezes a wallet (admin-signed).
    freeze_wallet(gw::FreezeWalletRequest) -> gw::Wallet;
    /// Lifts a freeze (admin-signed).
    unfreeze_wallet(gw::FreezeWalletRequest) -> gw::Wallet;
    /// Adds an admin key (admin-signed).
    add_admin(gw::AddAdminRequest) -> gw::Admin;
    /// Removes an admin key (admin-signed).
    remove_admin(gw::RemoveAdminRequest) -> gw::Admin;
    /// Lists admin keys.
    list_admins(gw::ListAdminsRequest) -> gw::ListAdminsResponse;
    /// The audit head, signed by the enclave over the caller's challenge.
    get_audit_head(gw::GetAuditHeadRequest) -> gw::AuditHead;
    /// One page of audit records.
    list_audit(gw::ListAuditRequest) -> gw::ListAuditResponse;
    /// The gateway's and the enclave's status.
    get_status(gw::GetStatusRequest) -> gw::Status;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_errors_are_clear() {
        let e = GatewayClient::connect("not a url").await.unwrap_err();
        assert_eq!((e.code(), e.exit_code()), (tonic::Code::InvalidArgument, 2));
        assert!(e.to_string().starts_with("bad gateway URL \"not a url\""), "{e}");
        // Nothing listens on port 1.
        let e = GatewayClient::connect("http://127.0.0.1:1").await.unwrap_err();
        assert!(e.is_connect());
        assert_eq!((e.code(), e.exit_code(), e.reason()), (tonic::Code::Unavailable, 1, None));
        assert!(e.to_string().contains("is the stack running?"), "{e}");
    }
}
