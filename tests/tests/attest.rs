//! The verified first contact, with the real binaries: `walletctl init` and `walletctl attest`
//! verify the enclave's attestation document (COSE_Sign1 to a built-in root, the nonce, the
//! identity it binds, the PCRs the admin expects) before trusting anything. The attacks: an
//! enclave whose measurements differ from the expected ones, and a gateway that replays an old
//! document, alters one, answers with garbage, forges one binding its own key, or strips the
//! identity claims. Each is refused with exit code 5 and nothing pinned.

use std::{
    path::Path,
    process::{Command, Output},
    sync::{Arc, Mutex},
};

use sha2::{Digest as _, Sha384};
use tonic::{transport::Channel, Request, Response, Status};
use wallet_e2e::{bin, start_enclave, start_gateway, stderr};
use wallet_proto::gateway::v1::{
    self as gw,
    wallet_gateway_client::WalletGatewayClient,
    wallet_gateway_server::{WalletGateway, WalletGatewayServer},
};

fn walletctl(url: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(bin("walletctl"))
        .args(args)
        .env("WALLET_GATEWAY", url)
        .env("WALLETCTL_HOME", home)
        .env_remove("WALLET_ADMIN_KEY")
        .output()
        .expect("walletctl runs")
}

/// What the simulated NSM measures as PCR0 and PCR2: the SHA-384 of the enclave binary.
fn enclave_pcr() -> String {
    hex::encode(Sha384::digest(std::fs::read(bin("wallet-enclave")).unwrap()))
}

fn now_ms() -> u64 {
    wallet_e2e::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_verifies_the_enclave_before_pinning_and_refuses_unexpected_measurements() {
    let dir = tempfile::tempdir().unwrap();
    let _enclave = start_enclave(dir.path(), "info");
    let (_gateway, url) = start_gateway(dir.path());
    let home = dir.path().join("home");
    let right = enclave_pcr();
    let wrong = "ab".repeat(48);

    // A simulated enclave is refused unless the admin says it started one (the TEST key is
    // public: anyone can sign such a document).
    let out = walletctl(&url, &home, &["init"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("TEST root") && err.contains("--simulated"), "{err}");
    assert!(!home.join("audit.pub").exists());

    // Unexpected PCR0: refused, nothing pinned, no admin registered.
    let out = walletctl(&url, &home, &["init", "--simulated", "--expect-pcr0", &wrong]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("does not run what you expect") && err.contains("PCR0"), "{err}");
    assert!(err.contains(&wrong) && err.contains(&right), "both values named: {err}");
    assert!(!home.join("audit.pub").exists(), "no identity pinned after a refusal");
    assert!(!home.join("enclave.json").exists());
    let mut raw = WalletGatewayClient::connect(url.clone()).await.unwrap();
    let admins = raw.list_admins(gw::ListAdminsRequest {}).await.unwrap().into_inner().admins;
    assert!(admins.is_empty(), "no admin registered with an enclave that was refused");

    // Malformed or weak expectations are usage errors: not hex; PCR2 alone (another kernel or
    // boot ramdisk would pass); all zeros (what a debug-mode enclave reports).
    for args in [
        &["--expect-pcr0", "not-hex"][..],
        &["--expect-pcr2", &right],
        &["--expect-pcr0", &"00".repeat(48)],
    ] {
        let mut full = vec!["init", "--simulated"];
        full.extend_from_slice(args);
        let out = walletctl(&url, &home, &full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!home.join("audit.pub").exists());
    }

    // The right measurements: verified, shown as SIMULATED, pinned with the identity.
    let out = walletctl(
        &url,
        &home,
        &["init", "--simulated", "--expect-pcr0", &right, "--expect-pcr2", &right],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(text.contains("VERIFIED under the TEST ROOT") && text.contains("SIMULATED"), "{text}");
    assert!(text.contains("match what you expect (PCR0, PCR2)"), "{text}");
    let pinned = std::fs::read_to_string(home.join("audit.pub")).unwrap().trim().to_owned();
    assert!(text.contains(&format!("identity:       {pinned}")), "{text}");
    let pinned_file = std::fs::read_to_string(home.join("enclave.json")).unwrap();
    assert!(pinned_file.contains(&right) && pinned_file.contains("simulated"), "{pinned_file}");

    // `attest` checks the pinned measurements and identity; a wrong expectation is refused.
    let doc_path = dir.path().join("doc.cbor");
    let out = walletctl(&url, &home, &["attest", "--save-document", doc_path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("match what you expect") && text.contains("the one pinned"), "{text}");
    let doc = wallet_attestation::verify(&std::fs::read(&doc_path).unwrap(), now_ms(), None)
        .expect("the saved document verifies on its own");
    assert_eq!(hex::encode(doc.public_key.unwrap()), pinned);
    assert_eq!(hex::encode(&doc.pcrs[&0]), right);
    let out = walletctl(&url, &home, &["attest", "--expect-pcr0", &wrong]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));

    // The gateway checked the document too (with the same verifier) and logged what it says.
    let log = dir.path().join("gateway.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("attestation document verifies")
    {
        assert!(std::time::Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(std::fs::read_to_string(&log).unwrap().contains(&right), "PCR0 in the gateway's log");

    // Status reports the measurements and the sealing, in a signed answer.
    let out = walletctl(&url, &home, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains(&format!("PCR0:     {right}")), "{text}");
    assert!(text.contains("sealing:  key file on the host (simulated)"), "{text}");
}

// ---- a gateway that lies about the document ---------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Answers with the first document it relayed (made for another nonce).
    Replay,
    /// Flips a byte of the document.
    Tamper,
    /// Answers with bytes that are no document.
    Garbage,
    /// Signs its own document (the TEST key is public) binding a key of its own, with the
    /// enclave's real PCRs and the caller's nonce.
    ForgeIdentity,
    /// The same, with no identity claims in `user_data`.
    NoClaims,
}

#[derive(Clone)]
struct Mitm {
    upstream: WalletGatewayClient<Channel>,
    mode: Arc<Mutex<Mode>>,
    saved: Arc<Mutex<Option<Vec<u8>>>>,
}

fn forward<T>(r: Request<T>) -> Request<T> {
    let (metadata, _, message) = r.into_parts();
    let mut out = Request::new(message);
    if let Some(c) = metadata.get_bin(wallet_proto::answer::CHALLENGE_METADATA) {
        out.metadata_mut().insert_bin(wallet_proto::answer::CHALLENGE_METADATA, c.clone());
    }
    out
}

impl Mitm {
    async fn attestation(&self, r: Request<gw::GetAttestationRequest>) -> Result<Vec<u8>, Status> {
        let mode = *self.mode.lock().unwrap();
        let nonce = r.get_ref().nonce.clone();
        let real = self.upstream.clone().get_attestation(forward(r)).await?.into_inner().document;
        let saved = self.saved.lock().unwrap().get_or_insert_with(|| real.clone()).clone();
        let forge = |claims: bool| {
            let doc = wallet_attestation::verify(&real, now_ms(), None).unwrap();
            let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
            let identity = key.verifying_key().to_bytes();
            let user_data = wallet_proto::attest::identity_user_data(&gw::IdentityClaims {
                mode: "simulated".into(),
                identity: identity.to_vec(),
                sealing: "key-file".into(),
                ..Default::default()
            });
            wallet_attestation::test_pki::sign_document(
                &doc.module_id,
                now_ms(),
                &doc.pcrs,
                Some(&identity),
                claims.then_some(user_data.as_slice()),
                Some(&nonce),
            )
        };
        Ok(match mode {
            Mode::Pass => real,
            Mode::Replay => saved,
            Mode::Tamper => {
                let mut d = real;
                let at = d.len() / 2;
                d[at] ^= 1;
                d
            }
            Mode::Garbage => b"\xd2\x84not a document".to_vec(),
            Mode::ForgeIdentity => forge(true),
            Mode::NoClaims => forge(false),
        })
    }
}

macro_rules! relay_all_but_attestation {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl WalletGateway for Mitm {
            async fn get_attestation(&self, r: Request<gw::GetAttestationRequest>) -> Result<Response<gw::Attestation>, Status> {
                Ok(Response::new(gw::Attestation { document: self.attestation(r).await? }))
            }
            $(
                async fn $name(&self, r: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.upstream.clone().$name(forward(r)).await
                }
            )*
        }
    };
}

relay_all_but_attestation! {
    sign_payment(gw::SignPaymentRequest) -> gw::SignPaymentResponse;
    get_budget(gw::GetBudgetRequest) -> gw::SessionBudget;
    list_payments(gw::ListPaymentsRequest) -> gw::ListPaymentsResponse;
    preview_payment(gw::PreviewPaymentRequest) -> gw::PaymentPreview;
    create_wallet(gw::CreateWalletRequest) -> gw::Wallet;
    list_wallets(gw::ListWalletsRequest) -> gw::ListWalletsResponse;
    set_policy(gw::SetPolicyRequest) -> gw::Policy;
    get_policy(gw::GetPolicyRequest) -> gw::Policy;
    add_asset(gw::AddAssetRequest) -> gw::Asset;
    list_assets(gw::ListAssetsRequest) -> gw::ListAssetsResponse;
    add_kyt(gw::KytRequest) -> gw::KytResponse;
    remove_kyt(gw::KytRequest) -> gw::KytResponse;
    list_kyt(gw::ListKytRequest) -> gw::ListKytResponse;
    import_kyt(gw::ImportKytRequest) -> gw::ImportKytResponse;
    issue_session(gw::IssueSessionRequest) -> gw::Session;
    list_sessions(gw::ListSessionsRequest) -> gw::ListSessionsResponse;
    revoke_session(gw::RevokeSessionRequest) -> gw::Session;
    freeze_wallet(gw::FreezeWalletRequest) -> gw::Wallet;
    unfreeze_wallet(gw::FreezeWalletRequest) -> gw::Wallet;
    get_status(gw::GetStatusRequest) -> gw::Status;
    list_approvals(gw::ListApprovalsRequest) -> gw::ListApprovalsResponse;
    decide_approval(gw::DecideApprovalRequest) -> gw::Approval;
    add_admin(gw::AddAdminRequest) -> gw::Admin;
    remove_admin(gw::RemoveAdminRequest) -> gw::Admin;
    list_admins(gw::ListAdminsRequest) -> gw::ListAdminsResponse;
    get_audit_head(gw::GetAuditHeadRequest) -> gw::AuditHead;
    list_audit(gw::ListAuditRequest) -> gw::ListAuditResponse;
    prepare_anchor(gw::PrepareAnchorRequest) -> gw::AnchorInfo;
    provision_anchor(gw::ProvisionAnchorRequest) -> gw::AnchorInfo;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_replays_alters_or_forges_the_document_is_refused_and_nothing_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let _enclave = start_enclave(dir.path(), "info");
    let (_gateway, url) = start_gateway(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_url = format!("http://{}", listener.local_addr().unwrap());
    let mode = Arc::new(Mutex::new(Mode::Pass));
    let mitm = Mitm {
        upstream: WalletGatewayClient::connect(url.clone()).await.unwrap(),
        mode: Arc::clone(&mode),
        saved: Arc::default(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WalletGatewayServer::new(mitm))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let init = |home: std::path::PathBuf| {
        let url = mitm_url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = walletctl(&url, &home, &["init", "--simulated"]);
                (out, home.join("audit.pub").exists())
            })
            .await
            .unwrap()
        }
    };

    // A first document passes through (and is saved for the replay).
    let out = walletctl(&mitm_url, &dir.path().join("probe"), &["attest", "--simulated"]);
    assert!(out.status.success(), "genuine relay: {}", stderr(&out));

    for (m, expect) in [
        (Mode::Replay, "nonce"),
        (Mode::Tamper, "does not verify"),
        (Mode::Garbage, "does not verify"),
        // Its document verifies (the TEST key is public: a simulated enclave proves nothing),
        // but the enclave's signed answers are not made with the key it binds.
        (Mode::ForgeIdentity, "UNTRUSTED_ANSWER"),
        (Mode::NoClaims, "does not bind an identity"),
    ] {
        *mode.lock().unwrap() = m;
        let home = dir.path().join(format!("home-{m:?}"));
        let (out, pinned) = init(home).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{m:?}: {err}");
        assert!(err.contains(expect), "{m:?}: expected {expect:?} in {err}");
        assert!(!pinned, "{m:?}: nothing may be pinned after a refused first contact");
    }

    // The same relay, honest again: the first contact succeeds.
    *mode.lock().unwrap() = Mode::Pass;
    let (out, pinned) = init(dir.path().join("home-pass")).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(pinned);
}
