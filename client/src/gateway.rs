//! [`GatewayClient`]: the typed client of `wallet.gateway.v1`. Each call takes the request
//! message and returns the response message, or a [`ClientError`] with the gRPC code, the
//! [`Reason`](wallet_proto::Reason) and the exit code.

use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message as _;
use tonic::{
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use wallet_proto::{
    answer::{answer_message, CHALLENGE_METADATA, ERROR_KIND, ERROR_METADATA, SIGNATURE_METADATA},
    gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient},
};

use crate::ClientError;

/// Largest response accepted, in bytes (audit and KYT pages can be large).
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// A connection to the gateway. Cloning is cheap (the channel is shared).
///
/// With a pinned enclave identity ([`Self::with_identity`]), every call sends a fresh challenge
/// and checks the enclave's signature over it, the request and the answer
/// (`wallet_proto::answer`): a success answer that does not verify is refused with
/// [`ClientError::untrusted`]; an error the enclave signed is checked the same way; an unsigned
/// error is the gateway's own (the enclave unreachable, ...) and reported as such.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    inner: WalletGatewayClient<Channel>,
    url: String,
    identity: Option<VerifyingKey>,
}

macro_rules! calls {
    ($( $(#[doc = $doc:literal])* $name:ident($req:ty) -> $resp:ty = $kind:ident => $answer:ident; )*) => {
        impl GatewayClient {
            $(
                $(#[doc = $doc])*
                ///
                /// # Errors
                /// The gateway's error status, as a [`ClientError`]; an answer not signed by
                /// the pinned enclave, [`ClientError::untrusted`].
                pub async fn $name(&mut self, request: $req) -> Result<$resp, ClientError> {
                    let challenge = fresh_challenge();
                    let request_bytes = request.encode_to_vec();
                    let mut call = tonic::Request::new(request);
                    call.metadata_mut()
                        .insert_bin(CHALLENGE_METADATA, MetadataValue::from_bytes(&challenge));
                    let kind = stringify!($kind);
                    match self.inner.$name(call).await {
                        Ok(response) => {
                            let signature = signature_of(response.metadata());
                            let body = response.into_inner();
                            self.verify(kind, &challenge, &request_bytes, stringify!($answer), &body.encode_to_vec(), signature.as_deref())?;
                            Ok(body)
                        }
                        Err(status) => Err(self.verify_error(kind, &challenge, &request_bytes, &status)),
                    }
                }
            )*
        }
    };
}

/// 16 random bytes.
fn fresh_challenge() -> [u8; 16] {
    let mut c = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut c);
    c
}

fn signature_of(metadata: &tonic::metadata::MetadataMap) -> Option<Vec<u8>> {
    metadata.get_bin(SIGNATURE_METADATA).and_then(|v| v.to_bytes().ok()).map(|b| b.to_vec())
}

impl GatewayClient {
    /// Connects to the gateway at `url` (e.g. `http://127.0.0.1:7402`).
    ///
    /// # Errors
    /// [`ClientError::bad_url`] for a malformed URL; [`ClientError::connect`] (`Unavailable`,
    /// saying how to start the stack) when nothing answers there.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        // `HOST:PORT` is read as `http://HOST:PORT` (util::normalize_gateway_url), for every
        // client: walletctl, fetch and the MCP server alike.
        let url = crate::util::normalize_gateway_url(url)
            .map_err(|e| ClientError::bad_url(url, &e as &dyn std::fmt::Display))?;
        let endpoint =
            Endpoint::from_shared(url.clone()).map_err(|e| ClientError::bad_url(&url, &e))?;
        let channel = endpoint.connect().await.map_err(|e| ClientError::connect(&url, &e))?;
        Ok(Self::from_channel(channel, &url))
    }

    /// A client over an existing channel (an in-memory transport in tests, a custom TLS
    /// channel); `url` is only for messages.
    #[must_use]
    pub fn from_channel(channel: Channel, url: &str) -> Self {
        let inner = WalletGatewayClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        Self { inner, url: url.to_owned(), identity: None }
    }

    /// Checks every answer against the enclave identity `key` (its Ed25519 public key, as
    /// `walletctl init` pins it).
    ///
    /// # Errors
    /// `key` is not an Ed25519 public key.
    pub fn with_identity(mut self, key: &[u8]) -> Result<Self, ClientError> {
        let key: [u8; 32] = key.try_into().map_err(|_| {
            ClientError::untrusted("(setup)", "the pinned identity is not 32 bytes")
        })?;
        self.identity = Some(VerifyingKey::from_bytes(&key).map_err(|_| {
            ClientError::untrusted("(setup)", "the pinned identity is not an Ed25519 key")
        })?);
        Ok(self)
    }

    /// Whether answers are checked against a pinned identity.
    #[must_use]
    pub fn verifies_answers(&self) -> bool {
        self.identity.is_some()
    }

    fn verify(
        &self,
        kind: &str,
        challenge: &[u8],
        request: &[u8],
        answer_kind: &str,
        answer: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        let Some(key) = &self.identity else { return Ok(()) };
        let signature =
            signature.ok_or_else(|| ClientError::untrusted(kind, "it carries no signature"))?;
        let signature = Signature::from_slice(signature)
            .map_err(|_| ClientError::untrusted(kind, "its signature is malformed"))?;
        let message = answer_message(challenge, kind, request, answer_kind, answer);
        key.verify_strict(&message, &signature).map_err(|_| {
            ClientError::untrusted(
                kind,
                "its signature does not verify over this request, this challenge and this answer",
            )
        })
    }

    /// An error status: signed by the enclave (checked, and then its reason is the enclave's),
    /// or the gateway's own (unsigned: the host's word, e.g. the enclave is unreachable).
    fn verify_error(
        &self,
        kind: &str,
        challenge: &[u8],
        request: &[u8],
        status: &tonic::Status,
    ) -> ClientError {
        let signature = signature_of(status.metadata());
        let error = status
            .metadata()
            .get_bin(ERROR_METADATA)
            .and_then(|v| v.to_bytes().ok())
            .map(|b| b.to_vec());
        match (signature, error) {
            (Some(signature), Some(error)) if self.identity.is_some() => {
                match self.verify(kind, challenge, request, ERROR_KIND, &error, Some(&signature)) {
                    // The enclave's own error: take its code and reason from the signed bytes,
                    // not from the status the gateway wrote around them.
                    Ok(()) => {
                        match wallet_proto::enclave::v1::EnclaveError::decode(error.as_slice()) {
                            Ok(e) => ClientError::from_enclave(&e),
                            Err(_) => {
                                ClientError::untrusted(kind, "its signed error does not decode")
                            }
                        }
                    }
                    Err(untrusted) => untrusted,
                }
            }
            (Some(_), None) => ClientError::untrusted(kind, "a signed error without its body"),
            _ => ClientError::from_status(status),
        }
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
    sign_payment(gw::SignPaymentRequest) -> gw::SignPaymentResponse = SignPayment => SignPayment;
    /// Agent: its session's budget — limits, cap, rolling windows, expiry (`GetBudget`; build
    /// the request with [`Credential::budget_request`](crate::Credential::budget_request)).
    /// Read-only; answered for a revoked or expired session too.
    get_budget(gw::GetBudgetRequest) -> gw::SessionBudget = GetBudget => SessionBudget;
    /// Agent: its session's recent payments, denials and holds, newest first (`ListPayments`;
    /// [`Credential::payments_request`](crate::Credential::payments_request)). Read-only.
    list_payments(gw::ListPaymentsRequest) -> gw::ListPaymentsResponse = ListPayments => Payments;
    /// Agent: what `SignPayment` would do with a `PAYMENT-REQUIRED` value — the option chosen,
    /// allowed, held or denied — without signing or reserving anything (`PreviewPayment`;
    /// [`Credential::preview_request`](crate::Credential::preview_request)).
    preview_payment(gw::PreviewPaymentRequest) -> gw::PaymentPreview = PreviewPayment => PaymentPreview;
    /// Creates a wallet (admin-signed).
    create_wallet(gw::CreateWalletRequest) -> gw::Wallet = CreateWallet => Wallet;
    /// Lists wallets.
    list_wallets(gw::ListWalletsRequest) -> gw::ListWalletsResponse = ListWallets => Wallets;
    /// Replaces a wallet's policy (admin-signed).
    set_policy(gw::SetPolicyRequest) -> gw::Policy = SetPolicy => Policy;
    /// Reads a wallet's policy.
    get_policy(gw::GetPolicyRequest) -> gw::Policy = GetPolicy => Policy;
    /// Registers an asset (admin-signed).
    add_asset(gw::AddAssetRequest) -> gw::Asset = AddAsset => Asset;
    /// Lists registered assets.
    list_assets(gw::ListAssetsRequest) -> gw::ListAssetsResponse = ListAssets => Assets;
    /// Adds KYT denylist entries (admin-signed).
    add_kyt(gw::KytRequest) -> gw::KytResponse = AddKyt => Kyt;
    /// Removes KYT denylist entries (admin-signed).
    remove_kyt(gw::KytRequest) -> gw::KytResponse = RemoveKyt => Kyt;
    /// One page of the KYT denylist.
    list_kyt(gw::ListKytRequest) -> gw::ListKytResponse = ListKyt => KytList;
    /// One chunk of a KYT import (admin-signed).
    import_kyt(gw::ImportKytRequest) -> gw::ImportKytResponse = ImportKyt => KytImport;
    /// Lists approval holds.
    list_approvals(gw::ListApprovalsRequest) -> gw::ListApprovalsResponse = ListApprovals => Approvals;
    /// Approves or denies a hold (admin-signed).
    decide_approval(gw::DecideApprovalRequest) -> gw::Approval = DecideApproval => Approval;
    /// Issues a session (admin-signed).
    issue_session(gw::IssueSessionRequest) -> gw::Session = IssueSession => Session;
    /// Lists sessions.
    list_sessions(gw::ListSessionsRequest) -> gw::ListSessionsResponse = ListSessions => Sessions;
    /// Revokes a session (admin-signed).
    revoke_session(gw::RevokeSessionRequest) -> gw::Session = RevokeSession => Session;
    /// Freezes a wallet (admin-signed).
    freeze_wallet(gw::FreezeWalletRequest) -> gw::Wallet = FreezeWallet => Wallet;
    /// Lifts a freeze (admin-signed).
    unfreeze_wallet(gw::FreezeWalletRequest) -> gw::Wallet = UnfreezeWallet => Wallet;
    /// Adds an admin key (admin-signed).
    add_admin(gw::AddAdminRequest) -> gw::Admin = AddAdmin => Admin;
    /// Removes an admin key (admin-signed).
    remove_admin(gw::RemoveAdminRequest) -> gw::Admin = RemoveAdmin => Admin;
    /// Lists admin keys.
    list_admins(gw::ListAdminsRequest) -> gw::ListAdminsResponse = ListAdmins => Admins;
    /// The audit head, signed by the enclave over the caller's challenge.
    get_audit_head(gw::GetAuditHeadRequest) -> gw::AuditHead = GetAuditHead => AuditHead;
    /// One page of audit records.
    list_audit(gw::ListAuditRequest) -> gw::ListAuditResponse = ListAudit => Audit;
    /// The enclave's attestation document over the caller's nonce (verify it with
    /// wallet-attestation before trusting anything it binds).
    get_attestation(gw::GetAttestationRequest) -> gw::Attestation = GetAttestation => Attestation;
    /// Makes (once) the enclave's anchor client key and returns its public key (admin-signed).
    prepare_anchor(gw::PrepareAnchorRequest) -> gw::AnchorInfo = PrepareAnchor => Anchor;
    /// Configures the rollback anchor and writes its first head (admin-signed).
    provision_anchor(gw::ProvisionAnchorRequest) -> gw::AnchorInfo = ProvisionAnchor => Anchor;
    /// The gateway's and the enclave's status.
    get_status(gw::GetStatusRequest) -> gw::Status = GetStatus => Status;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_checked_against_the_pinned_identity() {
        use ed25519_dalek::Signer as _;
        let enclave = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let unpinned = GatewayClient::from_channel(channel, "test");
        let pinned = unpinned.clone().with_identity(&enclave.verifying_key().to_bytes()).unwrap();
        let sign = |c: &[u8], kind: &str, req: &[u8], ans_kind: &str, ans: &[u8]| {
            enclave.sign(&answer_message(c, kind, req, ans_kind, ans)).to_bytes().to_vec()
        };
        let good = sign(b"c1", "RevokeSession", b"req", "Session", b"ans");
        let check = |cl: &GatewayClient, c: &[u8], ans: &[u8], sig: Option<&[u8]>| {
            cl.verify("RevokeSession", c, b"req", "Session", ans, sig)
        };
        assert!(check(&pinned, b"c1", b"ans", Some(&good)).is_ok());
        for (what, result) in [
            ("no signature", check(&pinned, b"c1", b"ans", None)),
            ("another challenge (a replay)", check(&pinned, b"c2", b"ans", Some(&good))),
            ("another answer", check(&pinned, b"c1", b"forged", Some(&good))),
            ("malformed", check(&pinned, b"c1", b"ans", Some(&good[..10]))),
        ] {
            let e = result.expect_err(what);
            assert!(e.is_untrusted() && e.exit_code() == 5, "{what}: {e}");
            assert_eq!(e.reason(), Some(wallet_proto::Reason::UntrustedAnswer));
        }
        // Another key's signature over the same answer.
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let theirs = other
            .sign(&answer_message(b"c1", "RevokeSession", b"req", "Session", b"ans"))
            .to_bytes();
        assert!(check(&pinned, b"c1", b"ans", Some(&theirs)).is_err());
        // Without a pinned identity (first contact) nothing is checked.
        assert!(check(&unpinned, b"c1", b"forged", None).is_ok());
        assert!(!unpinned.verifies_answers() && pinned.verifies_answers());
    }

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
