//! The enclave's request handler, driven directly: the payment path and its invariants.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use ed25519_dalek::{Signer as _, SigningKey};
use k256::ecdsa::{RecoveryId, Signature as EcdsaSig, VerifyingKey as EcdsaKey};
use serde_json::{json, Value};
use wallet_enclave::{
    journal::Faults,
    platform::{simulated, Clock, Mode, Nsm, NsmError, Platform, TrustRoot, UnixMillis},
    service::{Enclave, Failure},
    store::{Op, Store, Table},
};
use wallet_policy::{
    address::parse_address, eip712::Authorization, registry::default_assets, U256,
};
use wallet_proto::{
    auth::sign_payment_message,
    enclave::v1::{
        enclave_request::Body as Req, enclave_response::Body as Resp, EnclaveRequest, ErrorCode,
    },
    gateway::v1 as gw,
    AdminRpc, AdminSigned, Reason,
};

const PAYEE: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const USDC_BASE_SEPOLIA: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const T0_MS: u64 = 1_800_000_000_000;

struct Harness {
    dir: tempfile::TempDir,
    now: Arc<AtomicU64>,
    enclave: Arc<Enclave>,
    admin: Arc<Admin>,
    faults: Arc<Faults>,
}

/// The test's clock: the harness moves it by hand.
#[derive(Debug)]
struct TestClock(Arc<AtomicU64>);

impl Clock for TestClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(Ordering::SeqCst))
    }
}

/// The admin's key, the enclave it signs for, and its last timestamp (admin timestamps must
/// increase).
struct Admin {
    key: SigningKey,
    enclave: Vec<u8>,
    last: AtomicU64,
}

/// A request denied for `PER_TX_LIMIT` (a 0.01 payment on a wallet limited to 0.001 a payment),
/// after which the admin raises the limit to 1: a captured copy of it must never be signed.
async fn denied_then_allowed(h: &Harness) -> (Agent, gw::SignPaymentRequest) {
    let w = h.wallet("0.001").await;
    let agent = h.session(&w, "1").await;
    let req = agent.request(&header("10000"), "k");
    assert_eq!(h.pay(req.clone()).await.unwrap_err().reason, "PER_TX_LIMIT");
    h.call(Req::SetPolicy(gw::SetPolicyRequest {
        auth: None,
        policy: Some(gw::Policy {
            wallet_id: w.wallet_id.clone(),
            max_per_payment: "1".into(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    (agent, req)
}

/// The enclave's identity (audit public key), as walletctl init pins it.
async fn enclave_id(e: &Enclave) -> Vec<u8> {
    let r = e
        .handle(EnclaveRequest {
            challenge: Vec::new(),
            protocol_version: 1,
            request_id: 1,
            body: Some(Req::GetAuditHead(gw::GetAuditHeadRequest::default())),
        })
        .await;
    let Some(Resp::AuditHead(h)) = r.body else { panic!("no audit head") };
    h.public_key
}

impl Admin {
    fn new(enclave: &[u8]) -> Self {
        Self {
            key: SigningKey::generate(&mut rand_core::OsRng),
            enclave: enclave.to_vec(),
            last: AtomicU64::new(0),
        }
    }

    fn sign<R: AdminSigned>(&self, rpc: AdminRpc, req: &mut R, now_ms: u64) {
        let ts = now_ms.max(self.last.fetch_add(1, Ordering::SeqCst) + 1);
        self.last.store(ts, Ordering::SeqCst);
        let nonce = [7u8; 16];
        let msg = req.signed_message(&self.enclave, rpc, ts, &nonce);
        *req.auth_mut() = Some(gw::AdminAuth {
            public_key: self.key.verifying_key().to_bytes().to_vec(),
            timestamp_ms: ts,
            nonce: nonce.to_vec(),
            signature: self.key.sign(&msg).to_bytes().to_vec(),
        });
    }

    /// Signs a state-changing request (others pass through unchanged).
    fn sign_body(&self, body: &mut Req, now_ms: u64) {
        match body {
            Req::CreateWallet(r) => self.sign(AdminRpc::CreateWallet, r, now_ms),
            Req::SetPolicy(r) => self.sign(AdminRpc::SetPolicy, r, now_ms),
            Req::AddAsset(r) => self.sign(AdminRpc::AddAsset, r, now_ms),
            Req::AddKyt(r) => self.sign(AdminRpc::AddKyt, r, now_ms),
            Req::RemoveKyt(r) => self.sign(AdminRpc::RemoveKyt, r, now_ms),
            Req::IssueSession(r) => self.sign(AdminRpc::IssueSession, r, now_ms),
            Req::RevokeSession(r) => self.sign(AdminRpc::RevokeSession, r, now_ms),
            Req::FreezeWallet(r) => self.sign(AdminRpc::FreezeWallet, r, now_ms),
            Req::UnfreezeWallet(r) => self.sign(AdminRpc::UnfreezeWallet, r, now_ms),
            Req::AddAdmin(r) => self.sign(AdminRpc::AddAdmin, r, now_ms),
            Req::RemoveAdmin(r) => self.sign(AdminRpc::RemoveAdmin, r, now_ms),
            Req::ImportKyt(r) => self.sign(AdminRpc::ImportKyt, r, now_ms),
            Req::DecideApproval(r) => self.sign(AdminRpc::DecideApproval, r, now_ms),
            _ => {}
        }
    }
}

async fn open(dir: &std::path::Path, now: &Arc<AtomicU64>) -> (Enclave, Arc<Faults>) {
    open_with(dir, now, Arc::new(simulated::SimulatedNsm)).await
}

async fn open_with(
    dir: &std::path::Path,
    now: &Arc<AtomicU64>,
    nsm: Arc<dyn Nsm>,
) -> (Enclave, Arc<Faults>) {
    let (platform, handles) = open_platform(dir, now, nsm);
    (Enclave::open(platform).await.unwrap(), handles.faults.unwrap())
}

/// `Platform::open_dir`, retried while the enclave dropped just before still holds sled's
/// directory lock: a dropped `sled::Db` releases it from a background thread, a moment later.
fn open_platform(
    dir: &std::path::Path,
    now: &Arc<AtomicU64>,
    nsm: Arc<dyn Nsm>,
) -> (Platform, wallet_enclave::platform::Handles) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Platform::open_dir(
            dir,
            &simulated::FileSealingKey(dir.join("sealing.key")),
            Arc::clone(&nsm),
            Arc::new(TestClock(Arc::clone(now))),
        ) {
            Err(e)
                if format!("{e:?}").contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

impl Harness {
    async fn new() -> Self {
        Self::with_nsm(Arc::new(simulated::SimulatedNsm)).await
    }

    async fn with_nsm(nsm: Arc<dyn Nsm>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(T0_MS));
        let (enclave, faults) = open_with(dir.path(), &now, nsm).await;
        let enclave = Arc::new(enclave);
        let admin = Arc::new(Admin::new(&enclave_id(&enclave).await));
        let h = Self { dir, now, enclave, admin, faults };
        let pk = h.admin.key.verifying_key().to_bytes().to_vec();
        h.call(Req::AddAdmin(gw::AddAdminRequest {
            public_key: pk,
            label: "first".into(),
            auth: None,
        }))
        .await
        .expect("bootstrap admin");
        h
    }

    /// Drops the enclave and opens the same state again: a restart.
    async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// Stops the enclave, lets `edit` change its data directory (the host's files), and starts
    /// it again.
    async fn restart_with(self, edit: impl FnOnce(&std::path::Path)) -> Self {
        let Self { dir, now, enclave, admin, .. } = self;
        drop(Arc::try_unwrap(enclave).expect("no other users"));
        edit(dir.path());
        // A restart takes time: requests signed after it are newer than the replay floor.
        now.fetch_add(wallet_enclave::service::REPLAY_FLOOR_MARGIN_MS + 1, Ordering::SeqCst);
        let (enclave, faults) = open(dir.path(), &now).await;
        Self { dir, now, enclave: Arc::new(enclave), admin, faults }
    }

    /// Sends a request, signed by the admin when it changes state.
    async fn call(&self, mut body: Req) -> Result<Resp, Failure> {
        self.admin.sign_body(&mut body, self.now.load(Ordering::SeqCst));
        self.raw(body).await
    }

    /// Sends a request as is (as a compromised host would).
    async fn raw(&self, body: Req) -> Result<Resp, Failure> {
        let resp = self
            .enclave
            .handle(EnclaveRequest {
                challenge: Vec::new(),
                protocol_version: 1,
                request_id: 1,
                body: Some(body),
            })
            .await;
        match resp.body.unwrap() {
            Resp::Error(e) => Err(Failure {
                code: e.code(),
                reason: Reason::from_code(&e.reason).expect("a known reason"),
                message: e.message,
            }),
            ok => Ok(ok),
        }
    }

    async fn wallet(&self, max_per_payment: &str) -> gw::Wallet {
        let Resp::Wallet(w) = self
            .call(Req::CreateWallet(gw::CreateWalletRequest { auth: None, label: "test".into() }))
            .await
            .unwrap()
        else {
            panic!()
        };
        self.call(Req::SetPolicy(gw::SetPolicyRequest {
            auth: None,
            policy: Some(gw::Policy {
                wallet_id: w.wallet_id.clone(),
                max_per_payment: max_per_payment.into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
        w
    }

    async fn session(&self, wallet: &gw::Wallet, cap: &str) -> Agent {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let Resp::Session(s) = self
            .call(Req::IssueSession(gw::IssueSessionRequest {
                wallet_id: wallet.wallet_id.clone(),
                public_key: key.verifying_key().to_bytes().to_vec(),
                cap: cap.into(),
                ttl_seconds: 3600,
                ..Default::default()
            }))
            .await
            .unwrap()
        else {
            panic!()
        };
        Agent { id: s.session_id, key, now: Arc::clone(&self.now) }
    }

    async fn pay(&self, req: gw::SignPaymentRequest) -> Result<gw::SignPaymentResponse, Failure> {
        match self.call(Req::SignPayment(req)).await? {
            Resp::SignPayment(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    /// Starts a payment that is held at its durability round (1.5 s), and returns once it is
    /// reserved: the test can then act while it is in flight. The hold is lifted by the caller.
    async fn start_held_payment(
        &self,
        agent: &Agent,
        key: &str,
    ) -> tokio::task::JoinHandle<wallet_proto::enclave::v1::EnclaveResponse> {
        self.faults.delay_ms.store(1_500, Ordering::SeqCst);
        let enclave = Arc::clone(&self.enclave);
        let req = agent.request(&header("10000"), key);
        let pending = tokio::spawn(async move {
            enclave
                .handle(EnclaveRequest {
                    challenge: Vec::new(),
                    protocol_version: 1,
                    request_id: 1,
                    body: Some(Req::SignPayment(req)),
                })
                .await
        });
        self.wait_until_in_flight(&agent.id).await;
        pending
    }

    /// Waits until a payment of the session has been reserved (it is then signing or waiting for
    /// its durability round), so a test can act while it is in flight.
    async fn wait_until_in_flight(&self, session: &str) {
        for _ in 0..500 {
            if self.spent(session).await != "0" {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("the payment never got in flight");
    }

    async fn spent(&self, session: &str) -> String {
        let Resp::Sessions(l) =
            self.call(Req::ListSessions(gw::ListSessionsRequest::default())).await.unwrap()
        else {
            panic!()
        };
        l.sessions.into_iter().find(|s| s.session_id == session).unwrap().spent
    }
}

struct Agent {
    id: String,
    key: SigningKey,
    now: Arc<AtomicU64>,
}

impl Agent {
    fn request(&self, header: &str, idem: &str) -> gw::SignPaymentRequest {
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let mut r = gw::SignPaymentRequest {
            session_id: self.id.clone(),
            payment_required: header.to_owned(),
            idempotency_key: idem.to_owned(),
            timestamp_ms: self.now.load(Ordering::SeqCst),
            request_nonce: nonce.to_vec(),
            ..Default::default()
        };
        self.sign(&mut r);
        r
    }

    fn sign(&self, r: &mut gw::SignPaymentRequest) {
        let msg = sign_payment_message(r);
        r.signature = self.key.sign(&msg).to_bytes().to_vec();
    }
}

fn header(amount: &str) -> String {
    STANDARD.encode(
        json!({"x402Version":2,"resource":{"url":"https://api.example.com/x"},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":amount,"asset":USDC_BASE_SEPOLIA,"payTo":PAYEE,"maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]})
            .to_string(),
    )
}

fn recover(resp: &gw::SignPaymentResponse) -> String {
    let v: Value = serde_json::from_str(&resp.payment_payload_json).unwrap();
    let a = &v["payload"]["authorization"];
    let nonce: [u8; 32] =
        hex::decode(&a["nonce"].as_str().unwrap()[2..]).unwrap().try_into().unwrap();
    let auth = Authorization {
        from: parse_address(a["from"].as_str().unwrap()).unwrap(),
        to: parse_address(a["to"].as_str().unwrap()).unwrap(),
        value: a["value"].as_str().unwrap().parse::<U256>().unwrap(),
        valid_after: a["validAfter"].as_str().unwrap().parse().unwrap(),
        valid_before: a["validBefore"].as_str().unwrap().parse().unwrap(),
        nonce,
    };
    let asset = default_assets().into_iter().find(|x| x.network == "eip155:84532").unwrap();
    let digest = auth.signing_hash(&asset.domain_separator());
    let sig = hex::decode(&v["payload"]["signature"].as_str().unwrap()[2..]).unwrap();
    let vk = EcdsaKey::recover_from_prehash(
        digest.as_slice(),
        &EcdsaSig::from_slice(&sig[..64]).unwrap(),
        RecoveryId::from_byte(sig[64] - 27).unwrap(),
    )
    .unwrap();
    let point = vk.to_encoded_point(false);
    wallet_policy::Address::from_slice(&alloy_primitives::keccak256(&point.as_bytes()[1..])[12..])
        .to_checksum(None)
}

#[tokio::test]
async fn signs_a_payment_that_recovers_to_the_wallet() {
    let h = Harness::new().await;
    let w = h.wallet("0.10").await;
    let agent = h.session(&w, "1").await;
    let resp = h.pay(agent.request(&header("10000"), "k1")).await.unwrap();
    assert_eq!(
        recover(&resp),
        w.address,
        "the signature is the wallet's, over the exact authorization"
    );
    assert_eq!(resp.payer, w.address);
    assert_eq!(
        (
            resp.amount.as_str(),
            resp.charged.as_str(),
            resp.session_spent.as_str(),
            resp.session_remaining.as_str()
        ),
        ("10000", "0.01", "0.01", "0.99")
    );
    assert_eq!(resp.valid_before, T0_MS / 1000 + 60);
    let v: Value =
        serde_json::from_slice(&STANDARD.decode(&resp.payment_signature).unwrap()).unwrap();
    assert_eq!(v["accepted"]["payTo"], PAYEE);
    assert_eq!(v["payload"]["authorization"]["validAfter"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_exceed_the_cap() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    // Cap worth exactly 5 payments of 0.01.
    let agent = Arc::new(h.session(&w, "0.05").await);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let enclave = Arc::clone(&h.enclave);
        let req = agent.request(&header("10000"), &format!("k{i}"));
        tasks.push(tokio::spawn(async move {
            enclave
                .handle(EnclaveRequest {
                    challenge: Vec::new(),
                    protocol_version: 1,
                    request_id: i,
                    body: Some(Req::SignPayment(req)),
                })
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap().body.unwrap() {
            Resp::SignPayment(_) => ok += 1,
            Resp::Error(e) => assert_eq!(e.reason, "SESSION_CAP"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(h.spent(&agent.id).await, "0.05");
    let id = agent.id.clone();
    drop(agent);
    let h = h.restart().await;
    assert_eq!(h.spent(&id).await, "0.05", "the ledger survives restart");
}

#[tokio::test]
async fn idempotent_retry_returns_the_same_payload_and_charges_once() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    let first = h.pay(agent.request(&header("10000"), "same")).await.unwrap();
    let again = h.pay(agent.request(&header("10000"), "same")).await.unwrap();
    assert!(again.replayed && !first.replayed);
    assert_eq!(again.payment_signature, first.payment_signature);
    assert_eq!(h.spent(&agent.id).await, "0.01");
    let conflict = h.pay(agent.request(&header("20000"), "same")).await.unwrap_err();
    assert_eq!(
        (conflict.code, conflict.reason.as_str()),
        (ErrorCode::FailedPrecondition, "IDEMPOTENCY_CONFLICT")
    );
    // Also after a restart.
    let id = agent.id.clone();
    let h = h.restart().await;
    let agent = Agent { id, ..agent };
    let after = h.pay(agent.request(&header("10000"), "same")).await.unwrap();
    assert_eq!(after.payment_signature, first.payment_signature);
    assert_eq!(h.spent(&agent.id).await, "0.01");
}

#[tokio::test]
async fn a_relaying_host_cannot_alter_or_replay_requests() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    let good = agent.request(&header("10000"), "k");
    let mut altered = good.clone();
    altered.payment_required = header("990000");
    let mut retargeted = good.clone();
    retargeted.preferred_network = "eip155:8453".into();
    let mut forged = good.clone();
    forged.signature[0] ^= 1;
    let mut other_session = good.clone();
    let other = h.session(&w, "1").await;
    other_session.session_id = other.id.clone();
    for bad in [altered, retargeted, forged, other_session] {
        let e = h.pay(bad).await.unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (ErrorCode::Unauthenticated, "BAD_SIGNATURE"));
    }
    h.pay(good.clone()).await.unwrap();
    let e = h.pay(good).await.unwrap_err();
    assert_eq!(e.reason, "REPLAYED_REQUEST");
    let mut stale = agent.request(&header("10000"), "k2");
    stale.timestamp_ms -= 121_000;
    agent.sign(&mut stale);
    assert_eq!(h.pay(stale).await.unwrap_err().reason, "STALE_REQUEST");
    assert_eq!(h.spent(&agent.id).await, "0.01");
    assert_eq!(h.spent(&other.id).await, "0");
}

#[tokio::test]
async fn denials_charge_nothing() {
    let h = Harness::new().await;
    let w = h.wallet("0.10").await;
    let agent = h.session(&w, "0.15").await;
    let e = h.pay(agent.request(&header("100001"), "a")).await.unwrap_err();
    assert_eq!((e.code, e.reason.as_str()), (ErrorCode::Denied, "PER_TX_LIMIT"));
    h.pay(agent.request(&header("100000"), "b")).await.unwrap();
    let e = h.pay(agent.request(&header("60000"), "c")).await.unwrap_err();
    assert_eq!(e.reason, "SESSION_CAP");
    let e = h.pay(agent.request("%%%", "d")).await.unwrap_err();
    assert_eq!((e.code, e.reason.as_str()), (ErrorCode::InvalidArgument, "MALFORMED_HEADER"));
    assert_eq!(h.spent(&agent.id).await, "0.1");
}

#[tokio::test]
async fn revoked_and_expired_sessions_get_nothing() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    h.call(Req::RevokeSession(gw::RevokeSessionRequest {
        auth: None,
        session_id: agent.id.clone(),
    }))
    .await
    .unwrap();
    assert_eq!(
        h.pay(agent.request(&header("1"), "a")).await.unwrap_err().reason,
        "SESSION_REVOKED"
    );
    let h = h.restart().await;
    assert_eq!(
        h.pay(agent.request(&header("1"), "b")).await.unwrap_err().reason,
        "SESSION_REVOKED",
        "revocation survives restart"
    );
    let agent2 = h.session(&w, "1").await;
    h.now.fetch_add(3_601_000, Ordering::SeqCst);
    assert_eq!(
        h.pay(agent2.request(&header("1"), "c")).await.unwrap_err().reason,
        "SESSION_EXPIRED"
    );
}

#[tokio::test]
async fn state_and_keys_survive_restart_and_nothing_is_stored_in_clear() {
    let h = Harness::new().await;
    let w = h.wallet("0.10").await;
    let agent = h.session(&w, "1").await;
    let first = h.pay(agent.request(&header("10000"), "a")).await.unwrap();
    let h = h.restart().await;
    let Resp::Wallets(l) = h.call(Req::ListWallets(gw::ListWalletsRequest {})).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(l.wallets[0].address, w.address);
    let second = h.pay(agent.request(&header("10000"), "b")).await.unwrap();
    assert_eq!(recover(&second), recover(&first));
    assert_eq!(h.spent(&agent.id).await, "0.02");
    // The payee and the wallet address appear in records, but only sealed.
    let needle = PAYEE.to_lowercase()[2..].to_owned();
    for entry in walk(h.dir.path()).into_iter().filter(|p| !p.ends_with("sealing.key")) {
        let bytes = std::fs::read(&entry).unwrap();
        let hexed = hex::encode(&bytes);
        assert!(!hexed.contains(&needle), "{} holds a payee in clear", entry.display());
        assert!(
            !bytes.windows(10).any(|w| w == b"session_id"),
            "{} holds a record in clear",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn admin_input_is_validated_and_changes_nothing_when_bad() {
    let h = Harness::new().await;
    let w = h.wallet("0.10").await;
    let bad_policies = [
        gw::Policy {
            wallet_id: w.wallet_id.clone(),
            max_per_payment: "-1".into(),
            ..Default::default()
        },
        gw::Policy {
            wallet_id: w.wallet_id.clone(),
            max_per_payment: "0".into(),
            ..Default::default()
        },
        gw::Policy {
            wallet_id: w.wallet_id.clone(),
            max_per_payment: "1".into(),
            networks: vec!["base".into()],
            ..Default::default()
        },
        gw::Policy {
            wallet_id: w.wallet_id.clone(),
            max_per_payment: "1".into(),
            max_validity_seconds: 99_999,
            ..Default::default()
        },
    ];
    for p in bad_policies {
        let e = h
            .call(Req::SetPolicy(gw::SetPolicyRequest { auth: None, policy: Some(p) }))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}");
    }
    let e = h
        .call(Req::SetPolicy(gw::SetPolicyRequest {
            auth: None,
            policy: Some(gw::Policy {
                wallet_id: "w_nope".into(),
                max_per_payment: "1".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let Resp::Policy(p) = h
        .call(Req::GetPolicy(gw::GetPolicyRequest { wallet_id: w.wallet_id.clone() }))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((p.version, p.max_per_payment.as_str()), (1, "0.1"));
    let e = h
        .call(Req::AddKyt(gw::KytRequest {
            auth: None,
            addresses: vec![PAYEE.into(), "0xnope".into()],
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    let Resp::KytList(k) = h.call(Req::ListKyt(gw::ListKytRequest::default())).await.unwrap()
    else {
        panic!()
    };
    assert!(k.addresses.is_empty(), "a bad batch adds nothing");
    let e = h
        .call(Req::IssueSession(gw::IssueSessionRequest {
            wallet_id: w.wallet_id.clone(),
            public_key: vec![0; 32],
            cap: "1".into(),
            ttl_seconds: 60,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.reason, "INVALID_PUBLIC_KEY");
}

#[tokio::test]
async fn kyt_is_case_insensitive_and_registry_entries_can_be_added() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    h.call(Req::AddKyt(gw::KytRequest {
        auth: None,
        addresses: vec![PAYEE.to_uppercase().replace("0X", "0x")],
    }))
    .await
    .unwrap();
    assert_eq!(h.pay(agent.request(&header("1"), "a")).await.unwrap_err().reason, "KYT_DENIED");
    let Resp::Kyt(k) = h
        .call(Req::RemoveKyt(gw::KytRequest { auth: None, addresses: vec![PAYEE.to_lowercase()] }))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((k.changed, k.total), (1, 0));
    h.pay(agent.request(&header("1"), "b")).await.unwrap();
    // A local chain token, unknown until added.
    let local = STANDARD.encode(json!({"x402Version":2,"resource":{"url":"http://localhost/"},"accepts":[{"scheme":"exact","network":"eip155:31337","amount":"5","asset":"0x5FbDB2315678afecb367f032d93F642f64180aa3","payTo":PAYEE,"maxTimeoutSeconds":30,"extra":{"name":"Test USD","version":"1"}}]}).to_string());
    assert_eq!(h.pay(agent.request(&local, "c")).await.unwrap_err().reason, "ASSET_NOT_ALLOWED");
    h.call(Req::AddAsset(gw::AddAssetRequest {
        auth: None,
        asset: Some(gw::Asset {
            network: "eip155:31337".into(),
            address: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            name: "Test USD".into(),
            version: "1".into(),
            decimals: 6,
            symbol: "TUSD".into(),
        }),
    }))
    .await
    .unwrap();
    let resp = h.pay(agent.request(&local, "d")).await.unwrap();
    assert_eq!((resp.asset_symbol.as_str(), resp.charged.as_str()), ("TUSD", "0.000005"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_in_flight_is_withheld_for_good_even_after_restart() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    // Hold the payment at its durability round while the admin revokes the session.
    let pending = h.start_held_payment(&agent, "k").await;
    h.call(Req::RevokeSession(gw::RevokeSessionRequest {
        auth: None,
        session_id: agent.id.clone(),
    }))
    .await
    .unwrap();
    h.faults.delay_ms.store(0, Ordering::SeqCst);
    match pending.await.unwrap().body.unwrap() {
        Resp::Error(e) => assert_eq!(e.reason, "SESSION_REVOKED"),
        other => panic!("a signature left after revocation: {other:?}"),
    }
    assert_eq!(
        h.spent(&agent.id).await,
        "0.01",
        "charged (the record is durable) but never released"
    );
    let e = h.pay(agent.request(&header("10000"), "k")).await.unwrap_err();
    assert_eq!(e.reason, "SESSION_REVOKED");
    let id = agent.id.clone();
    let h = h.restart().await;
    let agent = Agent { id, ..agent };
    let e = h.pay(agent.request(&header("10000"), "k")).await.unwrap_err();
    assert_eq!(
        e.reason, "SESSION_REVOKED",
        "the withheld signature does not come back after a restart"
    );
}

#[tokio::test]
async fn a_denied_request_cannot_be_replayed_after_the_policy_changes() {
    let h = Harness::new().await;
    let (agent, req) = denied_then_allowed(&h).await;
    assert_eq!(h.pay(req).await.unwrap_err().reason, "REPLAYED_REQUEST");
    assert_eq!(h.spent(&agent.id).await, "0");
}

/// The host restarts the enclave (emptying its in-memory replay cache) and re-sends a captured
/// request that was denied before the admin raised the limit — with the clock as it is, and with
/// the clock set back so that the request looks fresh. Neither is signed.
#[tokio::test]
async fn a_denied_request_cannot_be_replayed_after_a_restart_even_with_the_clock_set_back() {
    for clock_back_ms in [0, 30_000] {
        let h = Harness::new().await;
        let (agent, req) = denied_then_allowed(&h).await;
        let id = agent.id.clone();
        let h = h.restart().await;
        h.now.fetch_sub(clock_back_ms, Ordering::SeqCst);
        let e = h.pay(req).await.unwrap_err();
        assert_eq!(
            (e.code, e.reason.as_str()),
            (ErrorCode::Unauthenticated, "STALE_REQUEST"),
            "clock set back by {clock_back_ms} ms"
        );
        assert_eq!(h.spent(&id).await, "0");
        // Freshly signed requests are served once the clock is past the floor.
        h.now.fetch_add(clock_back_ms + 1_000, Ordering::SeqCst);
        let agent = Agent { id, ..agent };
        h.pay(agent.request(&header("10000"), "k2")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_key_share_one_charge() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = Arc::new(h.session(&w, "1").await);
    h.faults.delay_ms.store(100, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let enclave = Arc::clone(&h.enclave);
        let req = agent.request(&header("10000"), "same-key");
        tasks.push(tokio::spawn(async move {
            enclave
                .handle(EnclaveRequest {
                    challenge: Vec::new(),
                    protocol_version: 1,
                    request_id: i,
                    body: Some(Req::SignPayment(req)),
                })
                .await
        }));
    }
    let mut signatures = Vec::new();
    for t in tasks {
        match t.await.unwrap().body.unwrap() {
            Resp::SignPayment(r) => signatures.push(r.payment_signature),
            other => panic!("{other:?}"),
        }
    }
    signatures.dedup();
    assert_eq!(signatures.len(), 1, "every retry got the same payload");
    assert_eq!(h.spent(&agent.id).await, "0.01", "charged once");
}

#[tokio::test]
async fn a_failed_fsync_withholds_the_signature_and_keeps_the_charge() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    // A first request (denied) advances the replay floor, so the failure injected next hits the
    // spend's own durability round.
    let e = h.pay(agent.request(&header("2000000"), "warm-up")).await.unwrap_err();
    assert_eq!(e.reason, "PER_TX_LIMIT");
    h.faults.fail.store(true, Ordering::SeqCst);
    let e = h.pay(agent.request(&header("10000"), "k")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal, "no signature without a durable record");
    assert_eq!(h.spent(&agent.id).await, "0.01", "fail closed: the reservation stays");
    let e = h.pay(agent.request(&header("10000"), "k")).await.unwrap_err();
    assert_eq!(e.reason, "IDEMPOTENCY_KEY_FAILED", "the key is not charged a second time");
    let e = h.pay(agent.request(&header("10000"), "k2")).await.unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::Internal,
        "after a failed fsync nothing is reported durable until restart"
    );
    let id = agent.id.clone();
    let h = h.restart().await;
    let agent = Agent { id, ..agent };
    h.pay(agent.request(&header("10000"), "k3")).await.unwrap();
}

#[tokio::test]
async fn the_largest_header_a_server_can_send_survives_restart() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    // A resource description of backslashes and quotes: every one is escaped again inside the
    // spend record, the worst case for its size.
    let filler = "\\\"".repeat(11_800);
    let json = json!({"x402Version":2,"resource":{"url":"https://x","description":filler},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":USDC_BASE_SEPOLIA,"payTo":PAYEE,"maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]}).to_string();
    let hdr = STANDARD.encode(&json);
    assert!(
        hdr.len() > 60_000 && hdr.len() <= wallet_policy::x402::MAX_HEADER_LEN,
        "{}",
        hdr.len()
    );
    h.pay(agent.request(&hdr, "big")).await.unwrap();
    let id = agent.id.clone();
    let h = h.restart().await;
    assert_eq!(h.spent(&id).await, "0.01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_is_a_kill_switch_for_new_and_in_flight_payments() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    let freeze = |frozen: bool| {
        let id = w.wallet_id.clone();
        let body = if frozen {
            Req::FreezeWallet(gw::FreezeWalletRequest { auth: None, wallet_id: id })
        } else {
            Req::UnfreezeWallet(gw::FreezeWalletRequest { auth: None, wallet_id: id })
        };
        h.call(body)
    };
    // In flight when the freeze lands: withheld.
    let pending = h.start_held_payment(&agent, "in-flight").await;
    let Resp::Wallet(frozen) = freeze(true).await.unwrap() else { panic!() };
    assert!(frozen.frozen);
    h.faults.delay_ms.store(0, Ordering::SeqCst);
    match pending.await.unwrap().body.unwrap() {
        Resp::Error(e) => assert_eq!(e.reason, "WALLET_FROZEN"),
        other => panic!("a signature left a frozen wallet: {other:?}"),
    }
    // New payments, and idempotent replays of earlier ones, are refused too.
    assert_eq!(
        h.pay(agent.request(&header("10000"), "new")).await.unwrap_err().reason,
        "WALLET_FROZEN"
    );
    // The freeze survives a restart.
    let id = agent.id.clone();
    let h = h.restart().await;
    let agent = Agent { id, ..agent };
    assert_eq!(
        h.pay(agent.request(&header("10000"), "after-restart")).await.unwrap_err().reason,
        "WALLET_FROZEN"
    );
    let Resp::Wallet(w2) = h
        .call(Req::UnfreezeWallet(gw::FreezeWalletRequest {
            auth: None,
            wallet_id: w.wallet_id.clone(),
        }))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(!w2.frozen);
    h.pay(agent.request(&header("10000"), "unfrozen")).await.unwrap();
    // The payment withheld by the freeze stays withheld after the unfreeze.
    assert_eq!(
        h.pay(agent.request(&header("10000"), "in-flight")).await.unwrap_err().reason,
        "WALLET_FROZEN"
    );
    let e = h
        .call(Req::FreezeWallet(gw::FreezeWalletRequest { auth: None, wallet_id: "w_nope".into() }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}

/// A compromised host tries to change state without the admin key.
#[tokio::test]
async fn forged_altered_replayed_and_stale_admin_requests_are_rejected() {
    let h = Harness::new().await;
    let w = h.wallet("0.10").await;
    let policy = |max: &str| gw::SetPolicyRequest {
        auth: None,
        policy: Some(gw::Policy {
            wallet_id: w.wallet_id.clone(),
            max_per_payment: max.into(),
            ..Default::default()
        }),
    };
    let now = h.now.load(Ordering::SeqCst);
    let reason = |r: Result<Resp, Failure>| r.unwrap_err().reason;

    // Unsigned.
    assert_eq!(reason(h.raw(Req::SetPolicy(policy("1000"))).await), "ADMIN_SIGNATURE_REQUIRED");
    // Signed by a key that is not an admin.
    let intruder = Admin::new(&h.admin.enclave);
    let mut forged = policy("1000");
    intruder.sign(AdminRpc::SetPolicy, &mut forged, now);
    assert_eq!(reason(h.raw(Req::SetPolicy(forged)).await), "UNKNOWN_ADMIN");
    // The intruder cannot make itself an admin either (the enclave already has one).
    let mut self_add = gw::AddAdminRequest {
        public_key: intruder.key.verifying_key().to_bytes().to_vec(),
        label: "x".into(),
        auth: None,
    };
    intruder.sign(AdminRpc::AddAdmin, &mut self_add, now);
    assert_eq!(reason(h.raw(Req::AddAdmin(self_add)).await), "UNKNOWN_ADMIN");
    // A genuine request, altered in flight.
    let mut altered = policy("0.20");
    h.admin.sign(AdminRpc::SetPolicy, &mut altered, now);
    altered.policy.as_mut().unwrap().max_per_payment = "1000".into();
    assert_eq!(reason(h.raw(Req::SetPolicy(altered)).await), "BAD_ADMIN_SIGNATURE");
    // A genuine signature moved to another RPC that shares its message type.
    let mut add = gw::KytRequest { auth: None, addresses: vec![PAYEE.into()] };
    h.admin.sign(AdminRpc::AddKyt, &mut add, now);
    assert_eq!(reason(h.raw(Req::RemoveKyt(add.clone())).await), "BAD_ADMIN_SIGNATURE");
    // Replayed: accepted once, refused after.
    let mut genuine = policy("0.20");
    h.admin.sign(AdminRpc::SetPolicy, &mut genuine, now);
    h.raw(Req::SetPolicy(genuine.clone())).await.unwrap();
    assert_eq!(reason(h.raw(Req::SetPolicy(genuine.clone())).await), "REPLAYED_ADMIN_REQUEST");
    // ...also after a restart.
    let h = h.restart().await;
    assert_eq!(reason(h.raw(Req::SetPolicy(genuine)).await), "REPLAYED_ADMIN_REQUEST");
    // Stale: signed long ago (or far ahead), even if never used.
    let mut old = policy("5");
    h.admin.sign(AdminRpc::SetPolicy, &mut old, now);
    h.now.fetch_add(121_000, Ordering::SeqCst);
    assert_eq!(reason(h.raw(Req::SetPolicy(old)).await), "STALE_ADMIN_REQUEST");
    // Nothing moved: the policy is the one genuine change.
    let Resp::Policy(p) = h
        .call(Req::GetPolicy(gw::GetPolicyRequest { wallet_id: w.wallet_id.clone() }))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((p.version, p.max_per_payment.as_str()), (2, "0.2"));
    let Resp::KytList(k) = h.call(Req::ListKyt(gw::ListKytRequest::default())).await.unwrap()
    else {
        panic!()
    };
    assert!(k.addresses.is_empty());
}

#[tokio::test]
async fn admins_can_be_added_rotated_and_not_all_removed() {
    let h = Harness::new().await;
    let first = h.admin.key.verifying_key().to_bytes().to_vec();
    let second = Admin::new(&h.admin.enclave);
    // Admin timestamps are one clock across admins: the new admin signs after the first.
    second.last.store(h.admin.last.load(Ordering::SeqCst) + 100, Ordering::SeqCst);
    let second_pk = second.key.verifying_key().to_bytes().to_vec();
    h.call(Req::AddAdmin(gw::AddAdminRequest {
        public_key: second_pk.clone(),
        label: "new laptop".into(),
        auth: None,
    }))
    .await
    .unwrap();
    // Rotation: the new key removes the old one.
    let mut remove = gw::RemoveAdminRequest { public_key: first.clone(), auth: None };
    second.sign(AdminRpc::RemoveAdmin, &mut remove, h.now.load(Ordering::SeqCst));
    h.raw(Req::RemoveAdmin(remove)).await.unwrap();
    // The old key no longer works; the new one does.
    let e = h
        .call(Req::CreateWallet(gw::CreateWalletRequest { auth: None, label: "x".into() }))
        .await
        .unwrap_err();
    assert_eq!(e.reason, "UNKNOWN_ADMIN");
    let mut create = gw::CreateWalletRequest { auth: None, label: "y".into() };
    second.sign(AdminRpc::CreateWallet, &mut create, h.now.load(Ordering::SeqCst));
    h.raw(Req::CreateWallet(create)).await.unwrap();
    // The last admin cannot be removed.
    let mut last = gw::RemoveAdminRequest { public_key: second_pk, auth: None };
    second.sign(AdminRpc::RemoveAdmin, &mut last, h.now.load(Ordering::SeqCst));
    assert_eq!(h.raw(Req::RemoveAdmin(last)).await.unwrap_err().reason, "LAST_ADMIN");
    let Resp::Admins(l) = h.call(Req::ListAdmins(gw::ListAdminsRequest {})).await.unwrap() else {
        panic!()
    };
    assert_eq!(l.admins.len(), 1);
}

#[tokio::test]
async fn an_enclave_without_admin_accepts_only_a_self_signed_first_admin() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(T0_MS));
    let (enclave, _) = open(dir.path(), &now).await;
    let send = |body| {
        enclave.handle(EnclaveRequest {
            challenge: Vec::new(),
            protocol_version: 1,
            request_id: 1,
            body: Some(body),
        })
    };
    let a = Admin::new(&enclave_id(&enclave).await);
    let mut create = gw::CreateWalletRequest { auth: None, label: "x".into() };
    a.sign(AdminRpc::CreateWallet, &mut create, T0_MS);
    let Resp::Error(e) = send(Req::CreateWallet(create)).await.body.unwrap() else { panic!() };
    assert_eq!(e.reason, "NO_ADMIN");
    // Adding someone else's key, even signed, is not a bootstrap.
    let other = SigningKey::generate(&mut rand_core::OsRng).verifying_key().to_bytes().to_vec();
    let mut add_other = gw::AddAdminRequest { public_key: other, label: String::new(), auth: None };
    a.sign(AdminRpc::AddAdmin, &mut add_other, T0_MS);
    let Resp::Error(e) = send(Req::AddAdmin(add_other)).await.body.unwrap() else { panic!() };
    assert_eq!(e.reason, "NO_ADMIN");
    let mut add_self = gw::AddAdminRequest {
        public_key: a.key.verifying_key().to_bytes().to_vec(),
        label: String::new(),
        auth: None,
    };
    a.sign(AdminRpc::AddAdmin, &mut add_self, T0_MS);
    assert!(matches!(send(Req::AddAdmin(add_self.clone())).await.body.unwrap(), Resp::Admin(_)));
    let Resp::Error(e) = send(Req::AddAdmin(add_self)).await.body.unwrap() else { panic!() };
    assert_eq!(e.reason, "REPLAYED_ADMIN_REQUEST", "the bootstrap request cannot be replayed");
}

#[tokio::test]
async fn admin_requests_are_bound_to_one_enclave_and_one_clock() {
    let h = Harness::new().await;
    let w = h.wallet("0.10").await;
    let policy = |max: &str| gw::SetPolicyRequest {
        auth: None,
        policy: Some(gw::Policy {
            wallet_id: w.wallet_id.clone(),
            max_per_payment: max.into(),
            ..Default::default()
        }),
    };
    let now = h.now.load(Ordering::SeqCst);
    // Signed by our admin, but for another enclave.
    let elsewhere = Admin {
        key: h.admin.key.clone(),
        enclave: vec![9u8; 32],
        last: AtomicU64::new(h.admin.last.load(Ordering::SeqCst)),
    };
    let mut other = policy("1000");
    elsewhere.sign(AdminRpc::SetPolicy, &mut other, now);
    assert_eq!(h.raw(Req::SetPolicy(other)).await.unwrap_err().reason, "BAD_ADMIN_SIGNATURE");
    // Two admins: B's later request delivered before A's earlier one; A's is refused.
    let b = Admin::new(&h.admin.enclave);
    h.call(Req::AddAdmin(gw::AddAdminRequest {
        public_key: b.key.verifying_key().to_bytes().to_vec(),
        label: "b".into(),
        auth: None,
    }))
    .await
    .unwrap();
    let mut from_a = policy("0.30");
    h.admin.sign(AdminRpc::SetPolicy, &mut from_a, now + 10);
    let mut from_b = policy("0.05");
    b.sign(AdminRpc::SetPolicy, &mut from_b, now + 20);
    h.raw(Req::SetPolicy(from_b)).await.unwrap();
    assert_eq!(h.raw(Req::SetPolicy(from_a)).await.unwrap_err().reason, "REPLAYED_ADMIN_REQUEST");
    // An older timestamp from the same admin is refused too (not only the identical request).
    let mut newer = policy("0.06");
    h.admin.sign(AdminRpc::SetPolicy, &mut newer, now + 40);
    let mut older = policy("0.07");
    h.admin.sign(AdminRpc::SetPolicy, &mut older, now + 30);
    let older_ts = older.auth.as_ref().unwrap().timestamp_ms;
    let newer_ts = newer.auth.as_ref().unwrap().timestamp_ms;
    assert!(older_ts > 0 && newer_ts > 0);
    let (first, second) = if newer_ts > older_ts { (newer, older) } else { (older, newer) };
    h.raw(Req::SetPolicy(first)).await.unwrap();
    assert_eq!(h.raw(Req::SetPolicy(second)).await.unwrap_err().reason, "REPLAYED_ADMIN_REQUEST");
}

#[tokio::test]
async fn deleting_the_admin_records_at_rest_does_not_reopen_bootstrap() {
    let h = Harness::new().await;
    h.wallet("1").await;
    let pk = h.admin.key.verifying_key().to_bytes().to_vec();
    let Harness { dir, enclave, .. } = h;
    drop(Arc::try_unwrap(enclave).expect("no other users"));
    // The host deletes the admin record from the store (no sealing key needed to delete).
    {
        let store = Store::open(
            &dir.path().join("state"),
            simulated::sealer_from_key_file(&dir.path().join("sealing.key")).unwrap(),
        )
        .unwrap();
        store
            .apply(vec![wallet_enclave::store::Op::Delete(
                wallet_enclave::store::Table::Admins,
                pk,
            )])
            .unwrap();
        store.sync().await.unwrap();
    }
    let now = Arc::new(AtomicU64::new(T0_MS));
    let (platform, _) = simulated::platform(dir.path(), Arc::new(TestClock(now))).unwrap();
    let err = Enclave::open(platform).await.unwrap_err();
    assert!(err.to_string().contains("no admin"), "{err}");
}

#[tokio::test]
async fn idempotency_keys_are_remembered_for_the_configured_time_only() {
    let h = Harness::new().await;
    h.enclave.set_idempotency_ttl(600);
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    let first = h.pay(agent.request(&header("10000"), "k")).await.unwrap();
    // Within the ten minutes: the same payload, charged once.
    h.now.fetch_add(599_000, Ordering::SeqCst);
    let again = h.pay(agent.request(&header("10000"), "k")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.payment_signature, first.payment_signature);
    assert_eq!(h.spent(&agent.id).await, "0.01");
    // After it: the key is forgotten; the same key is a new payment.
    h.now.fetch_add(2_000, Ordering::SeqCst);
    let later = h.pay(agent.request(&header("10000"), "k")).await.unwrap();
    assert!(!later.replayed);
    assert_ne!(later.payment_signature, first.payment_signature);
    assert_eq!(h.spent(&agent.id).await, "0.02");
    // A restart does not bring the forgotten entry back as a replay of the old payment: the
    // newest payment under the key is the one replayed.
    let id = agent.id.clone();
    let h = h.restart().await;
    h.enclave.set_idempotency_ttl(600);
    let agent = Agent { id, ..agent };
    let after = h.pay(agent.request(&header("10000"), "k")).await.unwrap();
    assert!(after.replayed);
    assert_eq!(after.payment_signature, later.payment_signature);
}

// ---- policy documents, windows, approvals, KYT import ------------------------------------

impl Harness {
    async fn set_document(&self, wallet: &gw::Wallet, doc: &str) -> Result<gw::Policy, Failure> {
        match self
            .call(Req::SetPolicy(gw::SetPolicyRequest {
                auth: None,
                policy: Some(gw::Policy {
                    wallet_id: wallet.wallet_id.clone(),
                    document: doc.into(),
                    ..Default::default()
                }),
            }))
            .await?
        {
            Resp::Policy(p) => Ok(p),
            other => panic!("{other:?}"),
        }
    }

    async fn approvals(&self, all: bool) -> Vec<gw::Approval> {
        let Resp::Approvals(l) = self
            .call(Req::ListApprovals(gw::ListApprovalsRequest { wallet_id: String::new(), all }))
            .await
            .unwrap()
        else {
            panic!()
        };
        l.approvals
    }

    async fn decide(&self, id: &str, approve: bool) -> Result<Resp, Failure> {
        self.call(Req::DecideApproval(gw::DecideApprovalRequest {
            approval_id: id.into(),
            approve,
            note: "checked".into(),
            auth: None,
        }))
        .await
    }

    fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_bad_policy_document_is_rejected_with_its_line_and_changes_nothing() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let good = "version = 1\n[wallet]\nmax_per_payment = \"0.02\"\n[[rule]]\naction = \"allow\"\n";
    let p = h.set_document(&w, good).await.unwrap();
    assert_eq!((p.version, p.document.as_str(), p.max_per_payment.as_str()), (2, good, "0.02"));
    let bad = "version = 1\n[wallet]\nmax_per_payment = \"0.02\"\n[[rule]]\naction = \"alow\"\n";
    let e = h.set_document(&w, bad).await.unwrap_err();
    assert_eq!((e.code, e.reason.as_str()), (ErrorCode::InvalidArgument, "INVALID_POLICY"));
    assert!(e.message.contains("line 5") && e.message.contains("alow"), "{}", e.message);
    let Resp::Policy(now) = h
        .call(Req::GetPolicy(gw::GetPolicyRequest { wallet_id: w.wallet_id.clone() }))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((now.version, now.document.as_str()), (2, good), "the running policy is unchanged");
    let agent = h.session(&w, "1").await;
    assert!(h.pay(agent.request(&header("20000"), "a")).await.is_ok());
    assert_eq!(
        h.pay(agent.request(&header("20001"), "b")).await.unwrap_err().reason,
        "PER_TX_LIMIT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn window_budgets_hold_across_concurrency_and_restart() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    h.set_document(
        &w,
        "version = 1\n[wallet]\nbudgets = [{ per = \"1h\", max = \"0.05\" }]\n[[rule]]\naction = \"allow\"\n",
    )
    .await
    .unwrap();
    let agents = [h.session(&w, "1").await, h.session(&w, "1").await];
    let h = Arc::new(h);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let req = agents[i % 2].request(&header("10000"), &format!("k{i}"));
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move { h.pay(req).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(f) => assert_eq!(f.reason, "WALLET_BUDGET", "{}", f.message),
        }
    }
    assert_eq!(ok, 5, "0.05 per hour in payments of 0.01, across two sessions");
    let h = Arc::try_unwrap(h).ok().unwrap().restart().await;
    let e = h.pay(agents[0].request(&header("10000"), "after-restart")).await.unwrap_err();
    assert_eq!(e.reason, "WALLET_BUDGET", "the window survives a restart: {}", e.message);
    h.advance(3_600_000);
    // (The test sessions live one hour: a fresh one.)
    let later = h.session(&w, "1").await;
    h.pay(later.request(&header("10000"), "an-hour-later")).await.unwrap();
}

#[tokio::test]
async fn rate_limits_and_payee_caps_are_enforced() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    h.set_document(
        &w,
        "version = 1\n[session]\npayments_per_minute = 3\n[wallet]\nper_payee = [{ per = \"1d\", max = \"0.05\" }]\n[[rule]]\naction = \"allow\"\n",
    )
    .await
    .unwrap();
    let a = h.session(&w, "1").await;
    for i in 0..3 {
        h.pay(a.request(&header("10000"), &format!("r{i}"))).await.unwrap();
    }
    assert_eq!(h.pay(a.request(&header("10000"), "r3")).await.unwrap_err().reason, "RATE_LIMITED");
    h.advance(60_000);
    h.pay(a.request(&header("10000"), "r4")).await.unwrap();
    h.advance(60_000);
    // 0.04 paid to PAYEE today; 0.02 more would pass 0.05.
    assert_eq!(h.pay(a.request(&header("20000"), "r5")).await.unwrap_err().reason, "PAYEE_CAP");
    h.pay(a.request(&header("10000"), "r6")).await.unwrap();
}

#[tokio::test]
async fn held_payments_wait_for_a_human_and_the_retry_gets_the_signature() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    h.set_document(
        &w,
        "version = 1\n[approval]\nabove = \"0.05\"\nexpires = \"10m\"\n[[rule]]\naction = \"allow\"\n",
    )
    .await
    .unwrap();
    let a = h.session(&w, "1").await;
    // Below the threshold: signed at once.
    h.pay(a.request(&header("50000"), "small")).await.unwrap();
    // Above: held, not signed, not charged.
    let e = h.pay(a.request(&header("60000"), "big")).await.unwrap_err();
    assert_eq!((e.code, e.reason.as_str()), (ErrorCode::FailedPrecondition, "APPROVAL_PENDING"));
    assert_eq!(h.spent(&a.id).await, "0.05");
    let held = h.approvals(false).await;
    assert_eq!(held.len(), 1);
    let id = held[0].approval_id.clone();
    assert!(e.message.contains(&id));
    assert_eq!((held[0].amount.as_str(), held[0].state.as_str()), ("0.06", "pending"));
    // Retrying before a decision: still pending, still one hold.
    assert_eq!(
        h.pay(a.request(&header("60000"), "big")).await.unwrap_err().reason,
        "APPROVAL_PENDING"
    );
    assert_eq!(h.approvals(true).await.len(), 1);
    // The same key for another payment is a conflict, not a way around the hold.
    assert_eq!(
        h.pay(a.request(&header("60001"), "big")).await.unwrap_err().reason,
        "IDEMPOTENCY_CONFLICT"
    );
    // A forged decision (a key that is not an admin) is refused.
    let mallory = Admin::new(&h.admin.enclave);
    let mut forged = Req::DecideApproval(gw::DecideApprovalRequest {
        approval_id: id.clone(),
        approve: true,
        note: String::new(),
        auth: None,
    });
    mallory.sign_body(&mut forged, h.now.load(Ordering::SeqCst));
    assert_eq!(h.raw(forged).await.unwrap_err().reason, "UNKNOWN_ADMIN");
    // An unsigned one too.
    let unsigned = Req::DecideApproval(gw::DecideApprovalRequest {
        approval_id: id.clone(),
        approve: true,
        note: String::new(),
        auth: None,
    });
    assert_eq!(h.raw(unsigned).await.unwrap_err().reason, "ADMIN_SIGNATURE_REQUIRED");
    // The hold survives a restart; the admin approves it.
    let h = h.restart().await;
    let Resp::Approval(ap) = h.decide(&id, true).await.unwrap() else { panic!() };
    assert_eq!(ap.state, "approved");
    assert_eq!(h.decide(&id, false).await.unwrap_err().reason, "APPROVAL_DECIDED");
    let signed = h.pay(a.request(&header("60000"), "big")).await.unwrap();
    assert_eq!(recover(&signed), w.address);
    assert_eq!(h.spent(&a.id).await, "0.11");
    let again = h.pay(a.request(&header("60000"), "big")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.payment_signature, signed.payment_signature);
    assert_eq!(h.spent(&a.id).await, "0.11", "charged once");
    assert_eq!(h.approvals(true).await[0].state, "used");
}

#[tokio::test]
async fn denied_and_expired_holds_are_never_signed() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    h.set_document(
        &w,
        "version = 1\n[approval]\nfirst_time_payee = true\nexpires = \"5m\"\n[[rule]]\naction = \"allow\"\n",
    )
    .await
    .unwrap();
    let a = h.session(&w, "1").await;
    assert_eq!(
        h.pay(a.request(&header("10000"), "p1")).await.unwrap_err().reason,
        "APPROVAL_PENDING"
    );
    let id = h.approvals(false).await[0].approval_id.clone();
    h.decide(&id, false).await.unwrap();
    let e = h.pay(a.request(&header("10000"), "p1")).await.unwrap_err();
    assert_eq!((e.code, e.reason.as_str()), (ErrorCode::Denied, "APPROVAL_DENIED"));
    assert!(e.message.contains("checked"), "the admin's note reaches the agent: {}", e.message);
    // A new request to the same payee is held again (it is still a first-time payee).
    assert_eq!(
        h.pay(a.request(&header("10000"), "p2")).await.unwrap_err().reason,
        "APPROVAL_PENDING"
    );
    let id2 = h.approvals(false).await[0].approval_id.clone();
    h.advance(5 * 60_000);
    assert!(h.approvals(false).await.is_empty(), "expired holds are no longer pending");
    assert_eq!(h.decide(&id2, true).await.unwrap_err().reason, "APPROVAL_EXPIRED");
    assert_eq!(
        h.pay(a.request(&header("10000"), "p2")).await.unwrap_err().reason,
        "APPROVAL_EXPIRED"
    );
    // An approval not used in time expires too.
    assert_eq!(
        h.pay(a.request(&header("10000"), "p3")).await.unwrap_err().reason,
        "APPROVAL_PENDING"
    );
    let id3 = h.approvals(false).await[0].approval_id.clone();
    h.decide(&id3, true).await.unwrap();
    h.advance(5 * 60_000);
    assert_eq!(
        h.pay(a.request(&header("10000"), "p3")).await.unwrap_err().reason,
        "APPROVAL_EXPIRED"
    );
    assert_eq!(h.spent(&a.id).await, "0", "nothing held, denied or expired was charged");
    // Once the payee was paid, it is no longer a first-time payee.
    assert_eq!(
        h.pay(a.request(&header("10000"), "p4")).await.unwrap_err().reason,
        "APPROVAL_PENDING"
    );
    let id4 = h.approvals(false).await[0].approval_id.clone();
    h.decide(&id4, true).await.unwrap();
    h.pay(a.request(&header("10000"), "p4")).await.unwrap();
    h.pay(a.request(&header("10000"), "p5")).await.unwrap();
}

async fn kyt_list(h: &Harness) -> Vec<String> {
    let Resp::KytList(l) = h.call(Req::ListKyt(gw::ListKytRequest::default())).await.unwrap()
    else {
        panic!()
    };
    l.addresses
}

fn packed(addrs: &[&str]) -> Vec<u8> {
    addrs.iter().flat_map(|a| parse_address(&a.to_lowercase()).unwrap().to_vec()).collect()
}

#[tokio::test]
async fn kyt_imports_are_chunked_checked_and_atomic() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let a = h.session(&w, "1").await;
    let other = "0x00000000000000000000000000000000000000aa";
    let import = |id: &str, addrs: Vec<u8>, commit: bool, replace: bool, expected: u64| {
        Req::ImportKyt(gw::ImportKytRequest {
            import_id: id.into(),
            addresses: addrs,
            commit,
            replace,
            expected_total: expected,
            auth: None,
        })
    };
    h.call(Req::AddKyt(gw::KytRequest { addresses: vec![other.into()], auth: None }))
        .await
        .unwrap();
    // A staged chunk changes nothing yet.
    let Resp::KytImport(r) = h.call(import("i1", packed(&[PAYEE]), false, true, 0)).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((r.staged, r.committed), (1, false));
    h.pay(a.request(&header("10000"), "before")).await.unwrap();
    // A commit whose count disagrees with what arrived (a chunk lost or added by the host)
    // changes nothing.
    let e = h.call(import("i1", packed(&[PAYEE]), true, true, 3)).await.unwrap_err();
    assert_eq!(e.reason, "KYT_IMPORT_INCOMPLETE");
    h.pay(a.request(&header("10000"), "still-allowed")).await.unwrap();
    // Chunks, then a replacing commit: the list is exactly the import.
    h.call(import("i2", packed(&[PAYEE]), false, true, 0)).await.unwrap();
    let third = "0x00000000000000000000000000000000000000bb";
    let Resp::KytImport(r) =
        h.call(import("i2", packed(&[third, PAYEE]), true, true, 2)).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((r.committed, r.added, r.removed, r.total), (true, 2, 1, 2));
    assert_eq!(h.pay(a.request(&header("10000"), "after")).await.unwrap_err().reason, "KYT_DENIED");
    let Resp::KytList(l) =
        h.call(Req::ListKyt(gw::ListKytRequest { offset: 1, limit: 1 })).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((l.total, l.addresses.len()), (2, 1));
    // Bad input: not whole addresses, the zero address.
    assert_eq!(
        h.call(import("i3", vec![1; 21], true, false, 1)).await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        h.call(import("i4", vec![0; 20], true, false, 1)).await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    // Durable: after a restart the imported list is in force.
    let h = h.restart().await;
    assert_eq!(
        h.pay(a.request(&header("10000"), "restarted")).await.unwrap_err().reason,
        "KYT_DENIED"
    );
}

/// A commit whose answer was lost is asked again under the same import id (the operation id):
/// the enclave answers with what it applied and applies nothing twice, also after a restart; a
/// commit whose chunks are gone is refused with nothing changed.
#[tokio::test]
async fn a_repeated_kyt_commit_answers_with_the_import_it_applied() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let a = h.session(&w, "1").await;
    let import = |id: &str, addrs: Vec<u8>, commit: bool, expected: u64| {
        Req::ImportKyt(gw::ImportKytRequest {
            import_id: id.into(),
            addresses: addrs,
            commit,
            replace: true,
            expected_total: expected,
            auth: None,
        })
    };
    let third = "0x00000000000000000000000000000000000000bb";
    h.call(import("op-1", packed(&[third]), false, 0)).await.unwrap();
    let Resp::KytImport(first) = h.call(import("op-1", packed(&[PAYEE]), true, 2)).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((first.committed, first.added, first.removed, first.total), (true, 2, 0, 2));
    // The list changes after the import; asking about the import again changes nothing back.
    let other = "0x00000000000000000000000000000000000000aa";
    h.call(Req::RemoveKyt(gw::KytRequest { addresses: vec![PAYEE.into()], auth: None }))
        .await
        .unwrap();
    h.call(Req::AddKyt(gw::KytRequest { addresses: vec![other.into()], auth: None }))
        .await
        .unwrap();
    let Resp::KytImport(again) = h.call(import("op-1", packed(&[PAYEE]), true, 2)).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(again, first);
    assert_eq!(kyt_list(&h).await.len(), 2, "{third} and {other}: the repeat re-applied nothing");
    h.pay(a.request(&header("10000"), "payee-removed")).await.unwrap();
    // After a restart the result is still known (it is stored with the import).
    let h = h.restart().await;
    let Resp::KytImport(after) = h.call(import("op-1", packed(&[PAYEE]), true, 2)).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(after, first);
    assert_eq!(kyt_list(&h).await.len(), 2);
    // A commit for an import whose chunks the enclave no longer holds (it restarted, or the
    // first commit failed) applies nothing and says so.
    h.call(import("op-2", packed(&[PAYEE]), false, 0)).await.unwrap();
    let h = h.restart().await;
    let e = h.call(import("op-2", packed(&[third]), true, 2)).await.unwrap_err();
    assert_eq!(e.reason, "KYT_IMPORT_INCOMPLETE");
    assert_eq!(kyt_list(&h).await.len(), 2);
    h.pay(a.request(&header("10000"), "still-allowed")).await.unwrap();
}

/// Import ids are operation ids: the last 16 imports' results are kept, so one asked about after
/// another import was applied is still known; chunks staged again under an id already applied
/// are refused (an id names one import).
#[tokio::test]
async fn kyt_import_ids_name_one_import_each() {
    let h = Harness::new().await;
    let import = |id: &str, addrs: Vec<u8>, commit: bool, expected: u64| {
        Req::ImportKyt(gw::ImportKytRequest {
            import_id: id.into(),
            addresses: addrs,
            commit,
            replace: false,
            expected_total: expected,
            auth: None,
        })
    };
    let (x, y) = (
        "0x00000000000000000000000000000000000000aa",
        "0x00000000000000000000000000000000000000bb",
    );
    let Resp::KytImport(first) = h.call(import("X", packed(&[x]), true, 1)).await.unwrap() else {
        panic!()
    };
    h.call(import("Y", packed(&[y]), true, 1)).await.unwrap();
    let Resp::KytImport(again) = h.call(import("X", packed(&[x]), true, 1)).await.unwrap() else {
        panic!()
    };
    assert_eq!(again, first, "X is known after Y");
    let e = h.call(import("X", packed(&[PAYEE]), false, 1)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}");
    assert_eq!(kyt_list(&h).await.len(), 2);
}

/// A KYT change whose batch was applied but whose durability round failed: the list in force is
/// the stored one (not the old one), so the next change's diff is right, and the import's result
/// is known when asked again after the restart.
#[tokio::test]
async fn a_kyt_import_whose_confirmation_fails_is_in_force_and_known() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let a = h.session(&w, "1").await;
    let e = h.pay(a.request(&header("2000000"), "warm-up")).await.unwrap_err();
    assert_eq!(e.reason, "PER_TX_LIMIT");
    let other = "0x00000000000000000000000000000000000000aa";
    let import = || {
        Req::ImportKyt(gw::ImportKytRequest {
            import_id: "op".into(),
            addresses: packed(&[PAYEE, other]),
            commit: true,
            replace: true,
            expected_total: 2,
            auth: None,
        })
    };
    h.faults.fail.store(true, Ordering::SeqCst);
    let e = h.call(import()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal, "{e:?}");
    assert_eq!(kyt_list(&h).await.len(), 2, "memory follows the applied batch");
    let h = h.restart().await;
    assert_eq!(kyt_list(&h).await.len(), 2);
    let Resp::KytImport(r) = h.call(import()).await.unwrap() else { panic!() };
    assert_eq!((r.committed, r.added, r.total), (true, 2, 2));
    assert_eq!(
        h.pay(a.request(&header("10000"), "listed")).await.unwrap_err().reason,
        "KYT_DENIED"
    );
}

/// A state store of the layout before buckets (one record per address) is read whole and
/// moved to buckets at start-up.
#[tokio::test]
async fn a_per_address_kyt_store_is_moved_to_buckets() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let a = h.session(&w, "1").await;
    let Harness { dir, now, enclave, admin, .. } = h;
    drop(Arc::try_unwrap(enclave).expect("no other users"));
    {
        let (platform, _) = open_platform(dir.path(), &now, Arc::new(simulated::SimulatedNsm));
        let legacy: Vec<Op> = [PAYEE, "0x00000000000000000000000000000000000000aa"]
            .iter()
            .map(|s| {
                Op::Put(
                    Table::Kyt,
                    parse_address(&s.to_lowercase()).unwrap().to_vec(),
                    Vec::new().into(),
                )
            })
            .collect();
        platform.state.apply(legacy).unwrap();
        platform.state.sync().await.unwrap();
    }
    now.fetch_add(wallet_enclave::service::REPLAY_FLOOR_MARGIN_MS + 1, Ordering::SeqCst);
    let (enclave, faults) = open(dir.path(), &now).await;
    let h = Harness { dir, now, enclave: Arc::new(enclave), admin, faults };
    assert_eq!(
        h.pay(a.request(&header("10000"), "listed")).await.unwrap_err().reason,
        "KYT_DENIED"
    );
    assert_eq!(
        kyt_list(&h).await,
        vec!["0x00000000000000000000000000000000000000AA".to_owned(), PAYEE.to_owned()],
        "both entries moved"
    );
    let Harness { dir, now, enclave, admin, .. } = h;
    drop(Arc::try_unwrap(enclave).expect("no other users"));
    let (platform, _) = open_platform(dir.path(), &now, Arc::new(simulated::SimulatedNsm));
    let keys: Vec<usize> =
        platform.state.scan(Table::Kyt).unwrap().iter().map(|(k, _)| k.len()).collect();
    assert_eq!(keys, vec![2, 2], "two buckets, no per-address record left");
    drop(platform);
    drop(admin);
}

#[tokio::test]
async fn an_approval_signs_only_the_option_the_human_saw() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let hold_policy = "version = 1\n[approval]\nabove = \"0.05\"\n[[rule]]\nnetworks = [\"eip155:8453\"]\naction = \"deny\"\n[[rule]]\naction = \"allow\"\n";
    h.set_document(&w, hold_policy).await.unwrap();
    let a = h.session(&w, "1").await;
    // Option 0: 0.50 on Base (denied by a rule for now); option 1: 0.06 on Base Sepolia (held).
    let two = STANDARD.encode(
        json!({"x402Version":2,"resource":{"url":"https://api.example.com/x"},"accepts":[
            {"scheme":"exact","network":"eip155:8453","amount":"500000","asset":"0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913","payTo":PAYEE,"maxTimeoutSeconds":60,"extra":{"name":"USD Coin","version":"2"}},
            {"scheme":"exact","network":"eip155:84532","amount":"60000","asset":USDC_BASE_SEPOLIA,"payTo":PAYEE,"maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}
        ]})
        .to_string(),
    );
    assert_eq!(h.pay(a.request(&two, "k")).await.unwrap_err().reason, "APPROVAL_PENDING");
    let hold = h.approvals(false).await.remove(0);
    assert_eq!((hold.network.as_str(), hold.amount.as_str()), ("eip155:84532", "0.06"));
    // The policy changes so that option 0 would now be allowed; the human approves the hold.
    h.set_document(&w, "version = 1\n[approval]\nabove = \"0.05\"\n[[rule]]\naction = \"allow\"\n")
        .await
        .unwrap();
    h.decide(&hold.approval_id, true).await.unwrap();
    let signed = h.pay(a.request(&two, "k")).await.unwrap();
    assert_eq!(
        (signed.network.as_str(), signed.amount.as_str(), signed.accepted_index),
        ("eip155:84532", "60000", 1),
        "the approval is for the 0.06 the human saw, not the 0.50 the policy now allows"
    );
    assert_eq!(h.spent(&a.id).await, "0.06");
}

/// An NSM that hands out the OS's randomness and records every byte it gave.
#[derive(Debug, Default)]
struct RecordingNsm(std::sync::Mutex<Vec<u8>>);

impl Nsm for RecordingNsm {
    fn mode(&self) -> Mode {
        Mode::Simulated
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, buf);
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(())
    }
    fn attest(
        &self,
        _: Option<&[u8]>,
        _: Option<&[u8]>,
        _: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        Err(NsmError::Unsupported("attestation"))
    }
    fn trust_root(&self) -> TrustRoot {
        TrustRoot::SimulatedTest
    }
}

#[tokio::test]
async fn every_random_byte_comes_from_the_platform() {
    let nsm = Arc::new(RecordingNsm::default());
    let h = Harness::with_nsm(nsm.clone()).await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "5").await;
    let paid = h.pay(agent.request(&header("10000"), "a")).await.unwrap();
    let drawn = nsm.0.lock().unwrap().clone();
    let came_from_nsm = |bytes: &[u8]| drawn.windows(bytes.len()).any(|w| w == bytes);
    // The EIP-3009 nonce is not drawn: it is derived from the payment (session, idempotency
    // key, request: `ledger::authorization_nonce`), so one payment signed twice — a group's two
    // members — settles once. Two payments still get two.
    let nonce_of = |p: &wallet_proto::gateway::v1::SignPaymentResponse| {
        let v: Value = serde_json::from_str(&p.payment_payload_json).unwrap();
        v["payload"]["authorization"]["nonce"].as_str().unwrap().to_owned()
    };
    let again = h.pay(agent.request(&header("10000"), "b")).await.unwrap();
    assert_ne!(nonce_of(&paid), nonce_of(&again), "two payments, two EIP-3009 nonces");
    // Record ids.
    assert!(came_from_nsm(&hex::decode(&w.wallet_id[2..]).unwrap()), "wallet id");
    assert!(came_from_nsm(&hex::decode(&agent.id[2..]).unwrap()), "session id");
    // The seal nonce of the spend-journal record (frame: 4-byte length, version, 24-byte nonce).
    let journal = std::fs::read(h.dir.path().join("spends.journal")).unwrap();
    assert!(came_from_nsm(&journal[5..29]), "seal nonce of the spend record");
    // The wallet's key: the enclave signs with a key whose secret the NSM drew.
    let key_drawn = drawn.windows(32).any(|k| {
        k256::ecdsa::SigningKey::from_slice(k).is_ok_and(|sk| {
            let point = sk.verifying_key().to_encoded_point(false);
            wallet_policy::Address::from_slice(
                &alloy_primitives::keccak256(&point.as_bytes()[1..])[12..],
            )
            .to_checksum(None)
                == w.address
        })
    });
    assert!(key_drawn, "wallet key");
}

/// Opens the enclave on `dir` and returns why it refused (panics if it started).
async fn refused(dir: &std::path::Path) -> String {
    let now = Arc::new(AtomicU64::new(T0_MS + 10_000));
    let opened = match simulated::platform(dir, Arc::new(TestClock(now))) {
        Ok((platform, _)) => Enclave::open(platform).await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    opened.expect_err("the enclave started on state that lost acknowledged records")
}

/// The frames of the spend journal: (offset, length including the 4-byte header).
fn journal_frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push((at, 4 + len));
        at += 4 + len;
    }
    out
}

/// A stopped enclave with payments on record, and a copy of its data directory taken before the
/// last state change (a session revocation).
async fn stopped_with_history() -> (tempfile::TempDir, tempfile::TempDir) {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "0.05").await;
    for i in 0..3 {
        h.pay(agent.request(&header("10000"), &format!("k{i}"))).await.unwrap();
    }
    let before_revoke = tempfile::tempdir().unwrap();
    copy_dir(h.dir.path(), before_revoke.path());
    h.call(Req::RevokeSession(gw::RevokeSessionRequest {
        auth: None,
        session_id: agent.id.clone(),
    }))
    .await
    .unwrap();
    let Harness { dir, enclave, .. } = h;
    drop(Arc::try_unwrap(enclave).expect("no other users"));
    (dir, before_revoke)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "enclave.sock" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_spend_journal_cut_at_a_record_boundary_or_with_its_last_record_corrupted_is_refused() {
    let (dir, _) = stopped_with_history().await;
    let path = dir.path().join("spends.journal");
    let original = std::fs::read(&path).unwrap();
    let frames = journal_frames(&original);
    assert_eq!(frames.len(), 3);
    // Cut the last record (the preallocated file ends in zeros, so zeroing it is a clean cut).
    let (at, len) = frames[2];
    let mut cut = original.clone();
    cut[at..at + len].fill(0);
    std::fs::write(&path, &cut).unwrap();
    let why = refused(dir.path()).await;
    assert!(
        why.contains("spend journal holds 2 records") && why.contains("3 were durable"),
        "{why}"
    );
    // One byte of the last record changed: before, "a torn tail" that was cleared.
    let mut flipped = original.clone();
    flipped[at + len / 2] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    let why = refused(dir.path()).await;
    assert!(why.contains("spend journal"), "{why}");
    // The same with the records in one durability round (no later record's watermark vouches
    // for the last one): only the commit head knows it was acknowledged.
    // The untouched journal opens (the checks above were not false alarms).
    std::fs::write(&path, &original).unwrap();
    let (platform, _) = simulated::platform(
        dir.path(),
        Arc::new(TestClock(Arc::new(AtomicU64::new(T0_MS + 10_000)))),
    )
    .unwrap();
    Enclave::open(platform).await.unwrap();
}

#[tokio::test]
async fn audit_lines_deleted_from_the_end_are_refused() {
    let (dir, _) = stopped_with_history().await;
    let path = dir.path().join("audit.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Drop the last two lines (the revocation and the last payment).
    let kept = lines[..lines.len() - 2].join("\n") + "\n";
    std::fs::write(&path, kept).unwrap();
    let why = refused(dir.path()).await;
    assert!(why.contains("audit log holds") && why.contains("deleted from its end"), "{why}");
}

#[tokio::test]
async fn a_state_store_that_lost_its_last_write_is_refused() {
    // The host puts back the state store as it was before the session was revoked (the journal,
    // the audit log and the commit head are current): the revocation would be undone.
    let (dir, before_revoke) = stopped_with_history().await;
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    copy_dir(&before_revoke.path().join("state"), &dir.path().join("state"));
    let why = refused(dir.path()).await;
    assert!(why.contains("state store is behind the commit head"), "{why}");
}

#[tokio::test]
async fn a_deleted_commit_head_is_refused() {
    let (dir, _) = stopped_with_history().await;
    std::fs::remove_file(dir.path().join("commit.head")).unwrap();
    let why = refused(dir.path()).await;
    assert!(why.contains("commit head (commit.head) is missing"), "{why}");
}

/// The host steps the clock forward (so the nonce of a captured, denied request is pruned from
/// the replay cache) and back (so the request looks fresh again), within one run, after the
/// admin raised the limit. The request is not signed.
#[tokio::test]
async fn stepping_the_clock_forward_and_back_does_not_reopen_a_replay() {
    let h = Harness::new().await;
    let (agent, captured) = denied_then_allowed(&h).await;
    h.now.fetch_add(241_000, Ordering::SeqCst);
    h.pay(agent.request(&header("10000"), "prunes-the-cache")).await.unwrap();
    h.now.fetch_sub(181_000, Ordering::SeqCst);
    let e = h.pay(captured).await.unwrap_err();
    assert_eq!((e.code, e.reason.as_str()), (ErrorCode::Unauthenticated, "STALE_REQUEST"));
    assert_eq!(h.spent(&agent.id).await, "0.01", "only the fresh payment was charged");
}

/// Audit lines with forged MACs appended at rest: the enclave refuses to start — and once they
/// are removed, it starts again (it must not have counted them in its commit head first).
#[tokio::test]
async fn forged_audit_lines_are_refused_without_bricking_the_enclave() {
    let (dir, _) = stopped_with_history().await;
    let path = dir.path().join("audit.log");
    let genuine = std::fs::read_to_string(&path).unwrap();
    let last: wallet_policy::audit::Record =
        serde_json::from_str(genuine.lines().last().unwrap()).unwrap();
    let mut forged = wallet_policy::audit::Record {
        seq: last.seq + 1,
        at_ms: last.at_ms + 1,
        kind: "admin".into(),
        detail: "forged".into(),
        prev: last.hash.clone(),
        ..Default::default()
    };
    forged.hash = hex::encode(forged.compute_hash());
    forged.mac = "00".repeat(32);
    std::fs::write(&path, format!("{genuine}{}\n", serde_json::to_string(&forged).unwrap()))
        .unwrap();
    let why = refused(dir.path()).await;
    assert!(why.contains("audit log"), "{why}");
    std::fs::write(&path, &genuine).unwrap();
    let now = Arc::new(AtomicU64::new(T0_MS + 10_000));
    let (platform, _) = simulated::platform(dir.path(), Arc::new(TestClock(now))).unwrap();
    Enclave::open(platform).await.expect("the genuine log opens again");
}

/// What is left of a session is reported against the cap in force: the policy's session cap
/// when it is lower than the cap the session was issued with (as `GetBudget` reports it).
#[tokio::test]
async fn session_remaining_is_reported_against_the_policy_cap_when_lower() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    h.set_document(&w, "version = 1\n[session]\ncap = \"0.5\"\n[[rule]]\naction = \"allow\"\n")
        .await
        .unwrap();
    let a = h.session(&w, "5").await;
    let resp = h.pay(a.request(&header("100000"), "k")).await.unwrap();
    assert_eq!((resp.session_spent.as_str(), resp.session_remaining.as_str()), ("0.1", "0.4"));
}

/// A retry's payload is read back from the spend journal (the idempotency index keeps only
/// where it lies): a host that changes the record or puts another one in its place makes the
/// retry fail, never answers it with other bytes, and the genuine record answers it again.
#[tokio::test]
async fn a_retry_reads_its_payload_back_and_a_host_cannot_swap_it() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    let first = h.pay(agent.request(&header("10000"), "a")).await.unwrap();
    let second = h.pay(agent.request(&header("10000"), "b")).await.unwrap();
    let path = h.dir.path().join("spends.journal");
    let original = std::fs::read(&path).unwrap();
    let frames = journal_frames(&original);
    assert_eq!(frames.len(), 2, "one record per payment");
    let retry = || h.pay(agent.request(&header("10000"), "a"));
    // One bit of the first record changed.
    let mut flipped = original.clone();
    flipped[frames[0].0 + 40] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    let e = retry().await.unwrap_err();
    assert_eq!((e.code, e.reason.as_str()), (ErrorCode::Internal, "INTERNAL"), "{e:?}");
    // The second record (same length: same amounts and key lengths) in the first one's place.
    assert_eq!(frames[0].1, frames[1].1);
    let mut swapped = original.clone();
    swapped.copy_within(frames[1].0..frames[1].0 + frames[1].1, frames[0].0);
    std::fs::write(&path, &swapped).unwrap();
    let e = retry().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal, "{e:?}");
    assert_ne!(second.payment_signature, first.payment_signature);
    // The genuine bytes back: the retry gets the payment it made, once charged.
    std::fs::write(&path, &original).unwrap();
    let again = retry().await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.payment_signature, first.payment_signature);
    assert_eq!(h.spent(&agent.id).await, "0.02");
}

/// The ledger snapshot slots of a data directory.
fn snapshot_slots(dir: &std::path::Path) -> [Vec<u8>; 2] {
    wallet_enclave::snapshot::FILES.map(|f| std::fs::read(dir.join(f)).unwrap_or_default())
}

/// Start-up reads the newest ledger snapshot and the journal records after it: the records
/// before it may be gone (archived) and the ledger is the same; a retry whose payload was among
/// them fails rather than being answered with other bytes. A snapshot the host rolls back,
/// forges or deletes only means replaying more: the ledger is the same again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_replays_the_records_after_the_newest_snapshot_only() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let (a, b) = (h.session(&w, "5").await, h.session(&w, "5").await);
    let mut first = Vec::new();
    for (agent, key) in [(&a, "k0"), (&a, "k1"), (&b, "k2")] {
        first.push(h.pay(agent.request(&header("10000"), key)).await.unwrap());
    }
    assert_eq!(h.enclave.snapshot().await.unwrap(), Some(3));
    let oldest = snapshot_slots(h.dir.path());
    for (agent, key, amount) in [(&a, "k3", "20000"), (&b, "k4", "30000"), (&b, "k5", "10000")] {
        h.pay(agent.request(&header(amount), key)).await.unwrap();
    }
    assert_eq!(h.enclave.snapshot().await.unwrap(), Some(6));
    assert_eq!(h.enclave.snapshot().await.unwrap(), None, "nothing new to cover");
    let tail = h.pay(b.request(&header("40000"), "k6")).await.unwrap();
    h.pay(a.request(&header("10000"), "k7")).await.unwrap();
    let spent = (h.spent(&a.id).await, h.spent(&b.id).await);
    assert_eq!(spent, ("0.05".to_owned(), "0.09".to_owned()));
    let journal = std::fs::read(h.dir.path().join("spends.journal")).unwrap();
    let frames = journal_frames(&journal);
    assert_eq!(frames.len(), 8);

    // The journal before the newest snapshot's position zeroed (archived by the host).
    let h = h
        .restart_with(|dir| {
            let mut archived = journal.clone();
            archived[..frames[6].0].fill(0);
            std::fs::write(dir.join("spends.journal"), archived).unwrap();
        })
        .await;
    assert_eq!((h.spent(&a.id).await, h.spent(&b.id).await), spent);
    let again = h.pay(b.request(&header("40000"), "k6")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.payment_signature, tail.payment_signature);
    let gone = h.pay(a.request(&header("10000"), "k0")).await.unwrap_err();
    assert_eq!(gone.code, ErrorCode::Internal, "{gone:?}");
    // A conflicting request under an archived key is still refused: the index kept its hash.
    let conflict = h.pay(a.request(&header("20000"), "k0")).await.unwrap_err();
    assert_eq!(conflict.reason, "IDEMPOTENCY_CONFLICT");

    // The journal whole again, the newest snapshot rolled back to the oldest and the other
    // slot forged: the same ledger, and the early payload is back.
    let h = h
        .restart_with(|dir| {
            std::fs::write(dir.join("spends.journal"), &journal).unwrap();
            let [f0, f1] = wallet_enclave::snapshot::FILES;
            let (old, forged) = if oldest[0].is_empty() { (f1, f0) } else { (f0, f1) };
            std::fs::write(dir.join(old), oldest.iter().find(|s| !s.is_empty()).unwrap()).unwrap();
            let mut bad = std::fs::read(dir.join(old)).unwrap();
            let at = bad.len() / 2;
            bad[at] ^= 1;
            std::fs::write(dir.join(forged), bad).unwrap();
        })
        .await;
    assert_eq!((h.spent(&a.id).await, h.spent(&b.id).await), spent);
    let early = h.pay(a.request(&header("10000"), "k0")).await.unwrap();
    assert!(early.replayed);
    assert_eq!(early.payment_signature, first[0].payment_signature);

    // No snapshot at all: a replay from the first record, the same ledger.
    let h = h
        .restart_with(|dir| {
            for f in wallet_enclave::snapshot::FILES {
                std::fs::remove_file(dir.join(f)).unwrap();
            }
        })
        .await;
    assert_eq!((h.spent(&a.id).await, h.spent(&b.id).await), spent);
    // Budgets hold across all of it: the session cap counts every payment once.
    h.pay(a.request(&header("10000"), "k8")).await.unwrap();
    assert_eq!(h.spent(&a.id).await, "0.06");
}

/// With a snapshot, start-up verifies the audit log from the snapshot's checkpoint on: a log
/// whose earlier records were archived still opens, its recent pages read, and reading the
/// archived stretch is reported, not answered. Without the snapshot the same log is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_verifies_the_audit_log_from_the_snapshots_checkpoint() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "20").await;
    let mark = wallet_enclave::audit::MARK_EVERY as usize;
    for i in 0..mark + 8 {
        h.pay(agent.request(&header("10000"), &format!("k{i}"))).await.unwrap();
    }
    let covered = h.enclave.snapshot().await.unwrap().unwrap();
    assert_eq!(covered, mark as u64 + 8);
    let log = std::fs::read(h.dir.path().join("audit.log")).unwrap();
    let at: usize = log.split_inclusive(|b| *b == b'\n').take(mark).map(<[u8]>::len).sum();
    let list = |from: u64| Req::ListAudit(gw::ListAuditRequest { from_seq: from, limit: 10 });
    let h = h
        .restart_with(|dir| {
            let mut archived = log.clone();
            archived[..at].fill(b' ');
            std::fs::write(dir.join("audit.log"), archived).unwrap();
        })
        .await;
    let Ok(Resp::Audit(page)) = h.call(list(mark as u64)).await else {
        panic!("recent pages read")
    };
    assert_eq!(page.records.len(), 10);
    let old = h.call(list(0)).await.map(|_| ()).unwrap_err();
    assert_eq!(old.reason, "AUDIT_TAMPERED", "{old:?}");
    let spent = h.spent(&agent.id).await;
    let Harness { dir, enclave, .. } = h;
    drop(Arc::try_unwrap(enclave).expect("no other users"));
    for f in wallet_enclave::snapshot::FILES {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let e = refused(dir.path()).await;
    assert!(e.contains("audit"), "{e}");
    assert_eq!(spent, "10.32");
}

/// A host that forks the journal (restores an older copy of everything and lets the agent pay
/// again under the same key) holds two genuine records sealed at the same number. A retry is
/// answered only with the one this enclave posted: the other, served in its place, is refused
/// by its digest rather than released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_not_answered_with_a_forked_journals_record() {
    let h = Harness::new().await;
    let w = h.wallet("1").await;
    let agent = h.session(&w, "1").await;
    let before = tempfile::tempdir().unwrap();
    let h = h.restart_with(|dir| copy_dir(dir, before.path())).await;
    let first = h.pay(agent.request(&header("10000"), "a")).await.unwrap();
    let mut forked_away = Vec::new();
    let h = h
        .restart_with(|dir| {
            forked_away = std::fs::read(dir.join("spends.journal")).unwrap();
            std::fs::remove_dir_all(dir.join("state")).unwrap();
            copy_dir(before.path(), dir);
        })
        .await;
    // The fork forgot the first payment: the same request is signed again, later.
    h.now.fetch_add(5_000, Ordering::SeqCst);
    let second = h.pay(agent.request(&header("10000"), "a")).await.unwrap();
    assert!(!second.replayed);
    assert_ne!(second.payment_signature, first.payment_signature, "signed at another time");
    let current = std::fs::read(h.dir.path().join("spends.journal")).unwrap();
    let (a, b) = (journal_frames(&forked_away)[0], journal_frames(&current)[0]);
    assert_eq!(a, b, "both are record 0, of the same length");
    let mut swapped = current.clone();
    swapped[b.0..b.0 + b.1].copy_from_slice(&forked_away[a.0..a.0 + a.1]);
    std::fs::write(h.dir.path().join("spends.journal"), &swapped).unwrap();
    let e = h.pay(agent.request(&header("10000"), "a")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal, "{e:?}");
    std::fs::write(h.dir.path().join("spends.journal"), &current).unwrap();
    let again = h.pay(agent.request(&header("10000"), "a")).await.unwrap();
    assert_eq!(again.payment_signature, second.payment_signature);
}
