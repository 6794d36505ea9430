//! `walletctl audit verify` against a compromised gateway that tampers with what it relays: an
//! old signed head replayed, a head signed by another key, an edited record. Each must fail.

use std::sync::{Arc, Mutex};
use wallet_proto::AdminRpc;

use tonic::{transport::Channel, Request, Response, Status};
use wallet_e2e::{header, now_ms, Stack};
use wallet_proto::gateway::v1::{
    self as gw,
    wallet_gateway_client::WalletGatewayClient,
    wallet_gateway_server::{WalletGateway, WalletGatewayServer},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    ReplayHead,
    ForeignKeyHead,
    EditRecord,
}

#[derive(Clone)]
struct Mitm {
    upstream: WalletGatewayClient<Channel>,
    mode: Arc<Mutex<Mode>>,
    saved: Arc<Mutex<Option<gw::AuditHead>>>,
}

#[tonic::async_trait]
impl WalletGateway for Mitm {
    async fn sign_payment(
        &self,
        r: Request<gw::SignPaymentRequest>,
    ) -> Result<Response<gw::SignPaymentResponse>, Status> {
        self.upstream.clone().sign_payment(r.into_inner()).await
    }
    async fn create_wallet(
        &self,
        r: Request<gw::CreateWalletRequest>,
    ) -> Result<Response<gw::Wallet>, Status> {
        self.upstream.clone().create_wallet(r.into_inner()).await
    }
    async fn list_wallets(
        &self,
        r: Request<gw::ListWalletsRequest>,
    ) -> Result<Response<gw::ListWalletsResponse>, Status> {
        self.upstream.clone().list_wallets(r.into_inner()).await
    }
    async fn set_policy(
        &self,
        r: Request<gw::SetPolicyRequest>,
    ) -> Result<Response<gw::Policy>, Status> {
        self.upstream.clone().set_policy(r.into_inner()).await
    }
    async fn get_policy(
        &self,
        r: Request<gw::GetPolicyRequest>,
    ) -> Result<Response<gw::Policy>, Status> {
        self.upstream.clone().get_policy(r.into_inner()).await
    }
    async fn add_asset(
        &self,
        r: Request<gw::AddAssetRequest>,
    ) -> Result<Response<gw::Asset>, Status> {
        self.upstream.clone().add_asset(r.into_inner()).await
    }
    async fn list_assets(
        &self,
        r: Request<gw::ListAssetsRequest>,
    ) -> Result<Response<gw::ListAssetsResponse>, Status> {
        self.upstream.clone().list_assets(r.into_inner()).await
    }
    async fn add_kyt(
        &self,
        r: Request<gw::KytRequest>,
    ) -> Result<Response<gw::KytResponse>, Status> {
        self.upstream.clone().add_kyt(r.into_inner()).await
    }
    async fn remove_kyt(
        &self,
        r: Request<gw::KytRequest>,
    ) -> Result<Response<gw::KytResponse>, Status> {
        self.upstream.clone().remove_kyt(r.into_inner()).await
    }
    async fn list_kyt(
        &self,
        r: Request<gw::ListKytRequest>,
    ) -> Result<Response<gw::ListKytResponse>, Status> {
        self.upstream.clone().list_kyt(r.into_inner()).await
    }
    async fn import_kyt(
        &self,
        r: Request<gw::ImportKytRequest>,
    ) -> Result<Response<gw::ImportKytResponse>, Status> {
        self.upstream.clone().import_kyt(r.into_inner()).await
    }
    async fn list_approvals(
        &self,
        r: Request<gw::ListApprovalsRequest>,
    ) -> Result<Response<gw::ListApprovalsResponse>, Status> {
        self.upstream.clone().list_approvals(r.into_inner()).await
    }
    async fn decide_approval(
        &self,
        r: Request<gw::DecideApprovalRequest>,
    ) -> Result<Response<gw::Approval>, Status> {
        self.upstream.clone().decide_approval(r.into_inner()).await
    }
    async fn issue_session(
        &self,
        r: Request<gw::IssueSessionRequest>,
    ) -> Result<Response<gw::Session>, Status> {
        self.upstream.clone().issue_session(r.into_inner()).await
    }
    async fn list_sessions(
        &self,
        r: Request<gw::ListSessionsRequest>,
    ) -> Result<Response<gw::ListSessionsResponse>, Status> {
        self.upstream.clone().list_sessions(r.into_inner()).await
    }
    async fn revoke_session(
        &self,
        r: Request<gw::RevokeSessionRequest>,
    ) -> Result<Response<gw::Session>, Status> {
        self.upstream.clone().revoke_session(r.into_inner()).await
    }
    async fn freeze_wallet(
        &self,
        r: Request<gw::FreezeWalletRequest>,
    ) -> Result<Response<gw::Wallet>, Status> {
        self.upstream.clone().freeze_wallet(r.into_inner()).await
    }
    async fn unfreeze_wallet(
        &self,
        r: Request<gw::FreezeWalletRequest>,
    ) -> Result<Response<gw::Wallet>, Status> {
        self.upstream.clone().unfreeze_wallet(r.into_inner()).await
    }
    async fn get_status(
        &self,
        r: Request<gw::GetStatusRequest>,
    ) -> Result<Response<gw::Status>, Status> {
        self.upstream.clone().get_status(r.into_inner()).await
    }
    async fn add_admin(
        &self,
        r: Request<gw::AddAdminRequest>,
    ) -> Result<Response<gw::Admin>, Status> {
        self.upstream.clone().add_admin(r.into_inner()).await
    }
    async fn remove_admin(
        &self,
        r: Request<gw::RemoveAdminRequest>,
    ) -> Result<Response<gw::Admin>, Status> {
        self.upstream.clone().remove_admin(r.into_inner()).await
    }
    async fn list_admins(
        &self,
        r: Request<gw::ListAdminsRequest>,
    ) -> Result<Response<gw::ListAdminsResponse>, Status> {
        self.upstream.clone().list_admins(r.into_inner()).await
    }

    async fn get_audit_head(
        &self,
        r: Request<gw::GetAuditHeadRequest>,
    ) -> Result<Response<gw::AuditHead>, Status> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::ReplayHead => {
                Ok(Response::new(self.saved.lock().unwrap().clone().expect("a head was saved")))
            }
            Mode::ForeignKeyHead => {
                use ed25519_dalek::Signer as _;
                let real = self.upstream.clone().get_audit_head(r.into_inner()).await?.into_inner();
                let other = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
                let hash: [u8; 32] = real.hash.as_slice().try_into().unwrap();
                let sig = other.sign(&wallet_policy::audit::head_message(real.count, &hash, &[]));
                Ok(Response::new(gw::AuditHead {
                    signature: sig.to_bytes().to_vec(),
                    public_key: other.verifying_key().to_bytes().to_vec(),
                    ..real
                }))
            }
            _ => {
                let head = self.upstream.clone().get_audit_head(r.into_inner()).await?.into_inner();
                *self.saved.lock().unwrap() = Some(head.clone());
                Ok(Response::new(head))
            }
        }
    }

    async fn list_audit(
        &self,
        r: Request<gw::ListAuditRequest>,
    ) -> Result<Response<gw::ListAuditResponse>, Status> {
        let mut page = self.upstream.clone().list_audit(r.into_inner()).await?.into_inner();
        if *self.mode.lock().unwrap() == Mode::EditRecord {
            if let Some(first) = page.records.get_mut(1) {
                *first = first.replacen("CreateWallet", "CreateWalleT", 1);
            }
        }
        Ok(Response::new(page))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_rejects_what_a_compromised_gateway_fakes() {
    let stack = Arc::new(Stack::start());
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    stack
        .client()
        .await
        .sign_payment(cred.sign_request(&header("10000"), "", "", "a", now_ms()))
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_url = format!("http://{}", listener.local_addr().unwrap());
    let mode = Arc::new(Mutex::new(Mode::Pass));
    let mitm =
        Mitm { upstream: stack.client().await, mode: Arc::clone(&mode), saved: Arc::default() };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WalletGatewayServer::new(mitm))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let verify = |stack: Arc<Stack>, url: String| async move {
        tokio::task::spawn_blocking(move || {
            stack.walletctl(&["--gateway", &url, "audit", "verify"], "")
        })
        .await
        .unwrap()
    };

    let out = verify(Arc::clone(&stack), mitm_url.clone()).await;
    assert!(out.status.success(), "genuine relay: {}", String::from_utf8_lossy(&out.stderr));

    // More happens; the gateway replays the head it relayed before (signed for another challenge).
    stack
        .client()
        .await
        .add_kyt(stack.signed(
            AdminRpc::AddKyt,
            gw::KytRequest {
                auth: None,
                addresses: vec!["0x000000000000000000000000000000000000dEaD".into()],
            },
        ))
        .await
        .unwrap();
    *mode.lock().unwrap() = Mode::ReplayHead;
    let out = verify(Arc::clone(&stack), mitm_url.clone()).await;
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("challenge"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    *mode.lock().unwrap() = Mode::ForeignKeyHead;
    let out = verify(Arc::clone(&stack), mitm_url.clone()).await;
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit key changed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    *mode.lock().unwrap() = Mode::EditRecord;
    let out = verify(Arc::clone(&stack), mitm_url.clone()).await;
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("record 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    *mode.lock().unwrap() = Mode::Pass;
    let out = verify(Arc::clone(&stack), mitm_url).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
