//! walletctl against a compromised gateway that tampers with what it relays: an old signed head
//! replayed, a head signed by another key, an edited record, a revocation or a freeze answered
//! by the gateway itself without reaching the enclave, an invented status. Each must fail with
//! the host named as untrusted (the enclave signs every answer, bound to the request and the
//! caller's challenge) — and a faithful relay must work.

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
    /// Answers revocations, freezes and status itself, never reaching the enclave.
    ForgeAnswers,
    /// Relays a payment, keeps the signed answer, and tells the agent it was denied.
    HideSignedPayment,
    /// Relays the first KYT import commit and answers it with the gateway's timeout (the
    /// enclave applied it; the admin was told nothing); later calls pass.
    LoseFirstCommitAnswer,
    /// Answers the first KYT import commit with the gateway's timeout without relaying it (the
    /// enclave never saw it); later calls pass.
    DropFirstCommit,
}

/// The gateway's own error when the enclave does not answer in time.
fn enclave_timeout() -> Status {
    let mut s = Status::deadline_exceeded("ENCLAVE_TIMEOUT: the enclave did not answer in time");
    s.metadata_mut().insert("x-wallet-reason", "ENCLAVE_TIMEOUT".parse().unwrap());
    s
}

/// The request as the client sent it, metadata (its challenge) included, for the upstream call.
fn forward<T>(r: Request<T>) -> Request<T> {
    let (metadata, _, message) = r.into_parts();
    let mut out = Request::new(message);
    if let Some(c) = metadata.get_bin(wallet_proto::answer::CHALLENGE_METADATA) {
        out.metadata_mut().insert_bin(wallet_proto::answer::CHALLENGE_METADATA, c.clone());
    }
    out
}

#[derive(Clone)]
struct Mitm {
    upstream: WalletGatewayClient<Channel>,
    mode: Arc<Mutex<Mode>>,
    saved: Arc<Mutex<Option<(tonic::metadata::MetadataMap, gw::AuditHead)>>>,
    /// KYT import commits seen.
    commits: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl WalletGateway for Mitm {
    async fn sign_payment(
        &self,
        r: Request<gw::SignPaymentRequest>,
    ) -> Result<Response<gw::SignPaymentResponse>, Status> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::ForgeAnswers => Ok(Response::new(gw::SignPaymentResponse {
                payment_signature: "forged".into(),
                ..Default::default()
            })),
            Mode::HideSignedPayment => {
                let _kept = self.upstream.clone().sign_payment(forward(r)).await?;
                let mut s = Status::permission_denied("PER_TX_LIMIT: made up by the gateway");
                s.metadata_mut().insert("x-wallet-reason", "PER_TX_LIMIT".parse().unwrap());
                Err(s)
            }
            _ => self.upstream.clone().sign_payment(forward(r)).await,
        }
    }
    async fn get_budget(
        &self,
        r: Request<gw::GetBudgetRequest>,
    ) -> Result<Response<gw::SessionBudget>, Status> {
        self.upstream.clone().get_budget(forward(r)).await
    }
    async fn list_payments(
        &self,
        r: Request<gw::ListPaymentsRequest>,
    ) -> Result<Response<gw::ListPaymentsResponse>, Status> {
        self.upstream.clone().list_payments(forward(r)).await
    }
    async fn preview_payment(
        &self,
        r: Request<gw::PreviewPaymentRequest>,
    ) -> Result<Response<gw::PaymentPreview>, Status> {
        self.upstream.clone().preview_payment(forward(r)).await
    }
    async fn create_wallet(
        &self,
        r: Request<gw::CreateWalletRequest>,
    ) -> Result<Response<gw::Wallet>, Status> {
        self.upstream.clone().create_wallet(forward(r)).await
    }
    async fn list_wallets(
        &self,
        r: Request<gw::ListWalletsRequest>,
    ) -> Result<Response<gw::ListWalletsResponse>, Status> {
        self.upstream.clone().list_wallets(forward(r)).await
    }
    async fn set_policy(
        &self,
        r: Request<gw::SetPolicyRequest>,
    ) -> Result<Response<gw::Policy>, Status> {
        self.upstream.clone().set_policy(forward(r)).await
    }
    async fn get_policy(
        &self,
        r: Request<gw::GetPolicyRequest>,
    ) -> Result<Response<gw::Policy>, Status> {
        self.upstream.clone().get_policy(forward(r)).await
    }
    async fn add_asset(
        &self,
        r: Request<gw::AddAssetRequest>,
    ) -> Result<Response<gw::Asset>, Status> {
        self.upstream.clone().add_asset(forward(r)).await
    }
    async fn list_assets(
        &self,
        r: Request<gw::ListAssetsRequest>,
    ) -> Result<Response<gw::ListAssetsResponse>, Status> {
        self.upstream.clone().list_assets(forward(r)).await
    }
    async fn add_kyt(
        &self,
        r: Request<gw::KytRequest>,
    ) -> Result<Response<gw::KytResponse>, Status> {
        self.upstream.clone().add_kyt(forward(r)).await
    }
    async fn remove_kyt(
        &self,
        r: Request<gw::KytRequest>,
    ) -> Result<Response<gw::KytResponse>, Status> {
        self.upstream.clone().remove_kyt(forward(r)).await
    }
    async fn list_kyt(
        &self,
        r: Request<gw::ListKytRequest>,
    ) -> Result<Response<gw::ListKytResponse>, Status> {
        self.upstream.clone().list_kyt(forward(r)).await
    }
    async fn import_kyt(
        &self,
        r: Request<gw::ImportKytRequest>,
    ) -> Result<Response<gw::ImportKytResponse>, Status> {
        let mode = *self.mode.lock().unwrap();
        if r.get_ref().commit
            && self.commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
            && matches!(mode, Mode::LoseFirstCommitAnswer | Mode::DropFirstCommit)
        {
            if mode == Mode::LoseFirstCommitAnswer {
                let _applied = self.upstream.clone().import_kyt(forward(r)).await?;
            }
            return Err(enclave_timeout());
        }
        self.upstream.clone().import_kyt(forward(r)).await
    }
    async fn list_approvals(
        &self,
        r: Request<gw::ListApprovalsRequest>,
    ) -> Result<Response<gw::ListApprovalsResponse>, Status> {
        self.upstream.clone().list_approvals(forward(r)).await
    }
    async fn decide_approval(
        &self,
        r: Request<gw::DecideApprovalRequest>,
    ) -> Result<Response<gw::Approval>, Status> {
        self.upstream.clone().decide_approval(forward(r)).await
    }
    async fn issue_session(
        &self,
        r: Request<gw::IssueSessionRequest>,
    ) -> Result<Response<gw::Session>, Status> {
        self.upstream.clone().issue_session(forward(r)).await
    }
    async fn list_sessions(
        &self,
        r: Request<gw::ListSessionsRequest>,
    ) -> Result<Response<gw::ListSessionsResponse>, Status> {
        self.upstream.clone().list_sessions(forward(r)).await
    }
    async fn revoke_session(
        &self,
        r: Request<gw::RevokeSessionRequest>,
    ) -> Result<Response<gw::Session>, Status> {
        if *self.mode.lock().unwrap() == Mode::ForgeAnswers {
            let r = r.into_inner();
            return Ok(Response::new(gw::Session {
                session_id: r.session_id,
                revoked: true,
                ..Default::default()
            }));
        }
        self.upstream.clone().revoke_session(forward(r)).await
    }
    async fn freeze_wallet(
        &self,
        r: Request<gw::FreezeWalletRequest>,
    ) -> Result<Response<gw::Wallet>, Status> {
        if *self.mode.lock().unwrap() == Mode::ForgeAnswers {
            let r = r.into_inner();
            return Ok(Response::new(gw::Wallet {
                wallet_id: r.wallet_id,
                frozen: true,
                ..Default::default()
            }));
        }
        self.upstream.clone().freeze_wallet(forward(r)).await
    }
    async fn unfreeze_wallet(
        &self,
        r: Request<gw::FreezeWalletRequest>,
    ) -> Result<Response<gw::Wallet>, Status> {
        self.upstream.clone().unfreeze_wallet(forward(r)).await
    }
    async fn get_status(
        &self,
        r: Request<gw::GetStatusRequest>,
    ) -> Result<Response<gw::Status>, Status> {
        if *self.mode.lock().unwrap() == Mode::ForgeAnswers {
            return Ok(Response::new(gw::Status {
                mode: "nitro".into(),
                enclave_reachable: true,
                ..Default::default()
            }));
        }
        self.upstream.clone().get_status(forward(r)).await
    }
    async fn add_admin(
        &self,
        r: Request<gw::AddAdminRequest>,
    ) -> Result<Response<gw::Admin>, Status> {
        self.upstream.clone().add_admin(forward(r)).await
    }
    async fn remove_admin(
        &self,
        r: Request<gw::RemoveAdminRequest>,
    ) -> Result<Response<gw::Admin>, Status> {
        self.upstream.clone().remove_admin(forward(r)).await
    }
    async fn list_admins(
        &self,
        r: Request<gw::ListAdminsRequest>,
    ) -> Result<Response<gw::ListAdminsResponse>, Status> {
        self.upstream.clone().list_admins(forward(r)).await
    }

    async fn get_audit_head(
        &self,
        r: Request<gw::GetAuditHeadRequest>,
    ) -> Result<Response<gw::AuditHead>, Status> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::ReplayHead => {
                let (metadata, head) =
                    self.saved.lock().unwrap().clone().expect("a head was saved");
                let mut replayed = Response::new(head);
                *replayed.metadata_mut() = metadata;
                Ok(replayed)
            }
            Mode::ForeignKeyHead => {
                use ed25519_dalek::Signer as _;
                let real = self.upstream.clone().get_audit_head(forward(r)).await?;
                let (metadata, real, _) = real.into_parts();
                let other = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
                let hash: [u8; 32] = real.hash.as_slice().try_into().unwrap();
                let sig = other.sign(&wallet_policy::audit::head_message(real.count, &hash, &[]));
                let mut forged = Response::new(gw::AuditHead {
                    signature: sig.to_bytes().to_vec(),
                    public_key: other.verifying_key().to_bytes().to_vec(),
                    ..real
                });
                *forged.metadata_mut() = metadata;
                Ok(forged)
            }
            _ => {
                let head = self.upstream.clone().get_audit_head(forward(r)).await?;
                let (metadata, head, _) = head.into_parts();
                *self.saved.lock().unwrap() = Some((metadata.clone(), head.clone()));
                let mut out = Response::new(head);
                *out.metadata_mut() = metadata;
                Ok(out)
            }
        }
    }

    async fn get_attestation(
        &self,
        r: Request<gw::GetAttestationRequest>,
    ) -> Result<Response<gw::Attestation>, Status> {
        self.upstream.clone().get_attestation(forward(r)).await
    }
    async fn prepare_anchor(
        &self,
        r: Request<gw::PrepareAnchorRequest>,
    ) -> Result<Response<gw::AnchorInfo>, Status> {
        self.upstream.clone().prepare_anchor(forward(r)).await
    }
    async fn provision_anchor(
        &self,
        r: Request<gw::ProvisionAnchorRequest>,
    ) -> Result<Response<gw::AnchorInfo>, Status> {
        self.upstream.clone().provision_anchor(forward(r)).await
    }
    async fn list_audit(
        &self,
        r: Request<gw::ListAuditRequest>,
    ) -> Result<Response<gw::ListAuditResponse>, Status> {
        let (metadata, mut page, _) =
            self.upstream.clone().list_audit(forward(r)).await?.into_parts();
        if *self.mode.lock().unwrap() == Mode::EditRecord {
            if let Some(first) = page.records.get_mut(1) {
                *first = first.replacen("CreateWallet", "CreateWalleT", 1);
            }
        }
        let mut out = Response::new(page);
        *out.metadata_mut() = metadata;
        Ok(out)
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
    let mitm = Mitm {
        upstream: stack.client().await,
        mode: Arc::clone(&mode),
        saved: Arc::default(),
        commits: Arc::default(),
    };
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
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UNTRUSTED_ANSWER") && err.contains("challenge"), "{err}");

    *mode.lock().unwrap() = Mode::ForeignKeyHead;
    let out = verify(Arc::clone(&stack), mitm_url.clone()).await;
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UNTRUSTED_ANSWER") && err.contains("GetAuditHead"), "{err}");

    *mode.lock().unwrap() = Mode::EditRecord;
    let out = verify(Arc::clone(&stack), mitm_url.clone()).await;
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UNTRUSTED_ANSWER") && err.contains("ListAudit"), "{err}");

    // The kill switches answered by the gateway itself: walletctl must not say "revoked" or
    // "frozen", and the agent must still be able to pay (the enclave never saw them).
    *mode.lock().unwrap() = Mode::ForgeAnswers;
    let walletctl = |stack: Arc<Stack>, args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            stack.walletctl(&args, "")
        })
        .await
        .unwrap()
    };
    for args in [
        vec!["session".to_owned(), "revoke".to_owned(), cred.session_id.clone()],
        vec!["wallet".to_owned(), "freeze".to_owned(), w.wallet_id.clone()],
        vec!["status".to_owned()],
    ] {
        let mut full = vec!["--gateway".to_owned(), mitm_url.clone()];
        full.extend(args.iter().cloned());
        let out = walletctl(Arc::clone(&stack), full).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {err}");
        assert!(err.contains("UNTRUSTED_ANSWER"), "{args:?}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("revoked"), "{args:?}");
    }
    stack
        .client()
        .await
        .sign_payment(cred.sign_request(&header("10000"), "", "", "after-forgery", now_ms()))
        .await
        .expect("the enclave never saw the forged revocation");

    // An agent paying through the gateway with a credential that pins the enclave.
    let cred_path = stack.dir.path().join("agent.json");
    cred.with_enclave_id(&hex::encode(&stack.enclave_id)).write(&cred_path).unwrap();
    let pay = |stack: Arc<Stack>, url: String, key: &'static str| {
        let cred_path = cred_path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                stack.walletctl(
                    &[
                        "--gateway",
                        &url,
                        "pay",
                        "--session",
                        cred_path.to_str().unwrap(),
                        "--idempotency-key",
                        key,
                    ],
                    &header("10000"),
                )
            })
            .await
            .unwrap()
        }
    };
    // A forged payment answer is refused.
    let out = pay(Arc::clone(&stack), mitm_url.clone(), "forged-pay").await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("UNTRUSTED_ANSWER") && err.contains("SignPayment"), "{err}");
    // A signed payment hidden behind a made-up denial: the agent is told the payment may have
    // been signed and which key to retry with (never a second payment).
    *mode.lock().unwrap() = Mode::HideSignedPayment;
    let out = pay(Arc::clone(&stack), mitm_url.clone(), "hidden-pay").await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--idempotency-key hidden-pay"), "{err}");
    // The genuine relay: the retry gets the same payment, verified.
    *mode.lock().unwrap() = Mode::Pass;
    let out = pay(Arc::clone(&stack), mitm_url.clone(), "hidden-pay").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());

    *mode.lock().unwrap() = Mode::Pass;
    let out = verify(Arc::clone(&stack), mitm_url).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A KYT import whose commit answer is lost (the gateway times out while the enclave applies
/// it, or drops the commit before the enclave sees it) is followed by walletctl under its
/// operation id until the enclave says what happened: walletctl reports the import applied,
/// with its counts, exit 0, and the list is in force exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kyt_import_whose_answer_is_lost_is_followed_to_the_end() {
    let stack = Arc::new(Stack::start());
    let file = stack.dir.path().join("list.txt");
    let listed: Vec<String> = (1..=50_001u32).map(|i| format!("0x{i:040x}")).collect();
    std::fs::write(&file, listed.join("\n")).unwrap();
    for mode in [Mode::LoseFirstCommitAnswer, Mode::DropFirstCommit] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mitm = Mitm {
            upstream: stack.client().await,
            mode: Arc::new(Mutex::new(mode)),
            saved: Arc::default(),
            commits: Arc::default(),
        };
        let commits = Arc::clone(&mitm.commits);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WalletGatewayServer::new(mitm))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let (s, f) = (Arc::clone(&stack), file.clone());
        let out = tokio::task::spawn_blocking(move || {
            s.walletctl(&["--gateway", &url, "kyt", "import", "--replace", f.to_str().unwrap()], "")
        })
        .await
        .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{mode:?}: {stderr}");
        assert!(commits.load(std::sync::atomic::Ordering::SeqCst) >= 2, "{mode:?}: followed up");
        assert!(stderr.contains("asking the enclave again"), "{mode:?}: {stderr}");
        assert!(stderr.contains("confirmed applied"), "{mode:?}: {stderr}");
        // Replacing with the same list a second time adds nothing: the counts are the import's.
        let want = if mode == Mode::LoseFirstCommitAnswer {
            "imported: 50001 added, 0 removed, denylist now 50001"
        } else {
            "imported: 0 added, 0 removed, denylist now 50001"
        };
        assert!(stdout.contains(want), "{mode:?}: {stdout}");
        assert_eq!(stack.status().await.kyt_entries, 50_001);
    }
}
