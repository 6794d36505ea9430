//! The enclave's trust boundary on arbitrary frame bodies: an `EnclaveRequest` decoded from the
//! bytes and handled by a simulated enclave (`Enclave::handle`), which holds one admin, one wallet
//! with a policy and one session. Every state change goes through the admin signature check
//! (`authorize`: key, nonce, Ed25519 signature over the request, freshness, replay), every agent
//! request through the session signature check; reads answer. The answer must carry the
//! request's id and a signature by the enclave's identity over it.
//!
//! The enclave is deterministic (its randomness is a counter, its clock stands still), so the
//! seeds — every request kind, validly signed by the admin or the session, but replayed or stale,
//! so that none changes the state — verify on every run: the fuzzer starts past the signature
//! check, and nothing it can produce without the keys gets through.

#![no_main]

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, OnceLock,
};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use wallet_enclave::{
    platform::{simulated, Clock, Mode, Nsm, NsmError, Platform, TrustRoot, UnixMillis},
    service::{Enclave, Sealing},
};
use wallet_proto::{
    answer,
    enclave::v1::{enclave_request::Body as Req, enclave_response::Body as Resp, EnclaveRequest},
    encode_frame,
    gateway::v1 as gw,
    AdminRpc, AdminSigned, SessionSigned,
};

#[path = "seeds.rs"]
mod seeds;

/// The enclave's clock, standing still.
const T0_MS: u64 = 1_800_000_000_000;

/// Randomness from a counter: the enclave's identity, wallet key and ids are the same on every
/// run, so the seeds' signatures (over the identity) verify.
#[derive(Debug, Default)]
struct CounterNsm(AtomicU64);

impl Nsm for CounterNsm {
    fn mode(&self) -> Mode {
        Mode::Simulated
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        for chunk in buf.chunks_mut(32) {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            chunk.copy_from_slice(&Sha256::digest(n.to_be_bytes())[..chunk.len()]);
        }
        Ok(())
    }
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        simulated::SimulatedNsm.attest(user_data, nonce, public_key)
    }
    fn trust_root(&self) -> TrustRoot {
        simulated::SimulatedNsm.trust_root()
    }
}

#[derive(Debug)]
struct StillClock;

impl Clock for StillClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(T0_MS)
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    enclave: Enclave,
    identity: VerifyingKey,
    admin: SigningKey,
    session_key: SigningKey,
    wallet_id: String,
    session_id: String,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        // A fresh directory per process (libFuzzer's exit skips destructors: it is left behind,
        // a few hundred KB, under the system's temporary directory).
        let dir = std::env::temp_dir().join(format!("wallet-fuzz-admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (platform, _) = Platform::open_dir(
            &dir,
            &simulated::FileSealingKey(dir.join("sealing.key")),
            Arc::new(CounterNsm::default()),
            Arc::new(StillClock),
        )
        .expect("platform");
        let enclave = rt.block_on(Enclave::open(platform)).expect("enclave");
        enclave.set_sealing(Sealing::key_file());
        let identity = VerifyingKey::from_bytes(&enclave.identity()).expect("identity");
        let admin = SigningKey::from_bytes(&[1; 32]);
        let session_key = SigningKey::from_bytes(&[2; 32]);
        let mut w = World {
            rt,
            enclave,
            identity,
            admin,
            session_key,
            wallet_id: String::new(),
            session_id: String::new(),
        };
        // Set up at T0 - 60 s onwards: later admin requests must be newer.
        let ok = |w: &World, body: Req| match w.call(body).body {
            Some(Resp::Error(e)) => panic!("set-up failed: {e:?}"),
            Some(r) => r,
            None => panic!("no answer"),
        };
        let mut add = Req::AddAdmin(gw::AddAdminRequest {
            public_key: w.admin.verifying_key().to_bytes().to_vec(),
            label: "fuzz".into(),
            auth: None,
        });
        w.sign(&mut add, T0_MS - 60_000);
        ok(&w, add);
        let mut create = Req::CreateWallet(gw::CreateWalletRequest { label: "fuzz".into(), auth: None });
        w.sign(&mut create, T0_MS - 59_000);
        let Resp::Wallet(wallet) = ok(&w, create) else { panic!("not a wallet") };
        w.wallet_id = wallet.wallet_id;
        let mut policy = Req::SetPolicy(gw::SetPolicyRequest {
            policy: Some(gw::Policy {
                wallet_id: w.wallet_id.clone(),
                document: "version = 1\n[wallet]\nmax_per_payment = \"0.10\"\n[[rule]]\naction = \"allow\"\n".into(),
                ..Default::default()
            }),
            auth: None,
        });
        w.sign(&mut policy, T0_MS - 58_000);
        ok(&w, policy);
        let mut issue = Req::IssueSession(gw::IssueSessionRequest {
            wallet_id: w.wallet_id.clone(),
            public_key: w.session_key.verifying_key().to_bytes().to_vec(),
            cap: "1".into(),
            ttl_seconds: 86_400,
            label: "fuzz".into(),
            ..Default::default()
        });
        w.sign(&mut issue, T0_MS - 57_000);
        let Resp::Session(session) = ok(&w, issue) else { panic!("not a session") };
        w.session_id = session.session_id;
        w
    })
}

impl World {
    fn call(&self, body: Req) -> wallet_proto::enclave::v1::EnclaveResponse {
        self.rt.block_on(self.enclave.handle(EnclaveRequest {
            challenge: vec![9; 16],
            protocol_version: 1,
            request_id: 1,
            body: Some(body),
        }))
    }

    fn admin_sign<R: AdminSigned>(&self, rpc: AdminRpc, r: &mut R, ts: u64) {
        let nonce = ts.to_be_bytes().repeat(2);
        let msg = r.signed_message(self.identity.as_bytes(), rpc, ts, &nonce);
        *r.auth_mut() = Some(gw::AdminAuth {
            public_key: self.admin.verifying_key().to_bytes().to_vec(),
            timestamp_ms: ts,
            nonce,
            signature: self.admin.sign(&msg).to_bytes().to_vec(),
        });
    }

    fn session_sign<R: SessionSigned>(&self, r: &mut R) {
        let sig = self.session_key.sign(&r.signed_message()).to_bytes().to_vec();
        *r.signature_mut() = sig;
    }

    /// Signs a request of any kind with the key that signs that kind, at `ts`.
    fn sign(&self, body: &mut Req, ts: u64) {
        match body {
            Req::CreateWallet(r) => self.admin_sign(AdminRpc::CreateWallet, r, ts),
            Req::SetPolicy(r) => self.admin_sign(AdminRpc::SetPolicy, r, ts),
            Req::AddAsset(r) => self.admin_sign(AdminRpc::AddAsset, r, ts),
            Req::AddKyt(r) => self.admin_sign(AdminRpc::AddKyt, r, ts),
            Req::RemoveKyt(r) => self.admin_sign(AdminRpc::RemoveKyt, r, ts),
            Req::IssueSession(r) => self.admin_sign(AdminRpc::IssueSession, r, ts),
            Req::RevokeSession(r) => self.admin_sign(AdminRpc::RevokeSession, r, ts),
            Req::FreezeWallet(r) => self.admin_sign(AdminRpc::FreezeWallet, r, ts),
            Req::UnfreezeWallet(r) => self.admin_sign(AdminRpc::UnfreezeWallet, r, ts),
            Req::AddAdmin(r) => self.admin_sign(AdminRpc::AddAdmin, r, ts),
            Req::RemoveAdmin(r) => self.admin_sign(AdminRpc::RemoveAdmin, r, ts),
            Req::ImportKyt(r) => self.admin_sign(AdminRpc::ImportKyt, r, ts),
            Req::DecideApproval(r) => self.admin_sign(AdminRpc::DecideApproval, r, ts),
            Req::PrepareAnchor(r) => self.admin_sign(AdminRpc::PrepareAnchor, r, ts),
            Req::ProvisionAnchor(r) => self.admin_sign(AdminRpc::ProvisionAnchor, r, ts),
            Req::SignPayment(r) => {
                r.timestamp_ms = ts;
                self.session_sign(r);
            }
            Req::GetBudget(r) => {
                r.timestamp_ms = ts;
                self.session_sign(r);
            }
            Req::ListPayments(r) => {
                r.timestamp_ms = ts;
                self.session_sign(r);
            }
            Req::PreviewPayment(r) => {
                r.timestamp_ms = ts;
                self.session_sign(r);
            }
            _ => {}
        }
    }

    /// Every kind of request, the signed ones signed at `ts`.
    fn requests(&self, ts: u64) -> Vec<Req> {
        let wallet_id = self.wallet_id.clone();
        let session_id = self.session_id.clone();
        let payee = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".to_owned();
        let header = "eyJ4NDAyVmVyc2lvbiI6MiwicmVzb3VyY2UiOnsidXJsIjoiaHR0cHM6Ly94In0sImFjY2VwdHMiOlt7InNjaGVtZSI6ImV4YWN0IiwibmV0d29yayI6ImVpcDE1NTo4NDUzMiIsImFtb3VudCI6IjEwMDAwIiwiYXNzZXQiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMxOGYzZENGN2UiLCJwYXlUbyI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsIm1heFRpbWVvdXRTZWNvbmRzIjo2MCwiZXh0cmEiOnsibmFtZSI6IlVTREMiLCJ2ZXJzaW9uIjoiMiJ9fV19".to_owned();
        let nonce = vec![5u8; 16];
        let mut out = vec![
            Req::CreateWallet(gw::CreateWalletRequest { label: "second".into(), auth: None }),
            Req::SetPolicy(gw::SetPolicyRequest {
                policy: Some(gw::Policy {
                    wallet_id: wallet_id.clone(),
                    max_per_payment: "1".into(),
                    ..Default::default()
                }),
                auth: None,
            }),
            Req::AddAsset(gw::AddAssetRequest {
                asset: Some(gw::Asset {
                    network: "eip155:84532".into(),
                    address: "0x1111111111111111111111111111111111111111".into(),
                    ..Default::default()
                }),
                auth: None,
            }),
            Req::AddKyt(gw::KytRequest { addresses: vec![payee.clone()], auth: None }),
            Req::RemoveKyt(gw::KytRequest { addresses: vec![payee.clone()], auth: None }),
            Req::ImportKyt(gw::ImportKytRequest {
                import_id: "i1".into(),
                addresses: vec![0x20; 40],
                commit: true,
                ..Default::default()
            }),
            Req::IssueSession(gw::IssueSessionRequest {
                wallet_id: wallet_id.clone(),
                public_key: vec![3; 32],
                cap: "0.5".into(),
                ttl_seconds: 60,
                networks: vec!["eip155:84532".into()],
                payees: vec![payee.clone()],
                ..Default::default()
            }),
            Req::RevokeSession(gw::RevokeSessionRequest {
                session_id: session_id.clone(),
                auth: None,
            }),
            Req::FreezeWallet(gw::FreezeWalletRequest { wallet_id: wallet_id.clone(), auth: None }),
            Req::UnfreezeWallet(gw::FreezeWalletRequest {
                wallet_id: wallet_id.clone(),
                auth: None,
            }),
            Req::AddAdmin(gw::AddAdminRequest {
                public_key: vec![4; 32],
                label: "second".into(),
                auth: None,
            }),
            Req::RemoveAdmin(gw::RemoveAdminRequest { public_key: vec![4; 32], auth: None }),
            Req::DecideApproval(gw::DecideApprovalRequest {
                approval_id: "a_1".into(),
                approve: true,
                note: "ok".into(),
                auth: None,
            }),
            Req::PrepareAnchor(gw::PrepareAnchorRequest { auth: None }),
            Req::ProvisionAnchor(gw::ProvisionAnchorRequest {
                server_name: "etcd.anchor.test".into(),
                ..Default::default()
            }),
            Req::SignPayment(gw::SignPaymentRequest {
                session_id: session_id.clone(),
                payment_required: header.clone(),
                preferred_network: "eip155:84532".into(),
                idempotency_key: "k1".into(),
                request_nonce: nonce.clone(),
                ..Default::default()
            }),
            Req::GetBudget(gw::GetBudgetRequest {
                session_id: session_id.clone(),
                request_nonce: nonce.clone(),
                ..Default::default()
            }),
            Req::ListPayments(gw::ListPaymentsRequest {
                session_id: session_id.clone(),
                limit: 5,
                request_nonce: nonce.clone(),
                ..Default::default()
            }),
            Req::PreviewPayment(gw::PreviewPaymentRequest {
                session_id: session_id.clone(),
                payment_required: header,
                request_nonce: nonce,
                ..Default::default()
            }),
            Req::ListWallets(gw::ListWalletsRequest {}),
            Req::GetPolicy(gw::GetPolicyRequest { wallet_id: wallet_id.clone() }),
            Req::ListAssets(gw::ListAssetsRequest {}),
            Req::ListKyt(gw::ListKytRequest::default()),
            Req::ListSessions(gw::ListSessionsRequest { wallet_id }),
            Req::GetStatus(gw::GetStatusRequest {}),
            Req::ListAdmins(gw::ListAdminsRequest {}),
            Req::GetAuditHead(gw::GetAuditHeadRequest { challenge: vec![1; 16] }),
            Req::ListAudit(gw::ListAuditRequest { from_seq: 0, limit: 10 }),
            Req::ListApprovals(gw::ListApprovalsRequest::default()),
            Req::GetAttestation(gw::GetAttestationRequest { nonce: vec![1; 16] }),
        ];
        out.iter_mut().for_each(|b| self.sign(b, ts));
        out
    }

    /// The seeds: every kind signed at a stale time, and the admin requests also at a replayed
    /// one (fresh, but before the set-up's last admin request). A fresh session-signed request
    /// would be used (and a payment signed): the state would change under the fuzzer.
    fn seeds(&self) -> Vec<Vec<u8>> {
        let session_signed = |b: &Req| {
            matches!(
                b,
                Req::SignPayment(_)
                    | Req::GetBudget(_)
                    | Req::ListPayments(_)
                    | Req::PreviewPayment(_)
            )
        };
        let replayed = self.requests(T0_MS - 90_000).into_iter().filter(|b| !session_signed(b));
        replayed
            .chain(self.requests(T0_MS - 3_600_000))
            .map(|body| {
                EnclaveRequest {
                    challenge: vec![9; 16],
                    protocol_version: 1,
                    request_id: 7,
                    body: Some(body),
                }
                .encode_to_vec()
            })
            .collect()
    }
}

fuzz_target!(
    init: {
        let w = world();
        seeds::write(w.seeds());
        // The frame codec's seeds: each request framed, followed by its answer framed.
        if std::env::var_os("WALLET_FUZZ_FRAME_SEED_DIR").is_some() {
            let frames = w.seeds().into_iter().map(|body| {
                let req = EnclaveRequest::decode(body.as_slice()).expect("a seed decodes");
                let resp = w.rt.block_on(w.enclave.handle(req.clone()));
                [encode_frame(&req).expect("fits"), encode_frame(&resp).expect("fits")].concat()
            });
            seeds::write_in("WALLET_FUZZ_FRAME_SEED_DIR", frames.collect::<Vec<_>>());
        }
    },
    |data: &[u8]| {
        let Ok(req) = EnclaveRequest::decode(data) else { return };
        let w = world();
        let (request_id, challenge) = (req.request_id, req.challenge.clone());
        let request = req.body.as_ref().map(answer::request::parts);
        let resp = w.rt.block_on(w.enclave.handle(req));
        assert_eq!(resp.request_id, request_id);
        let body = resp.body.expect("every request is answered");
        if let Resp::Error(e) = &body {
            assert!(!e.reason.is_empty(), "an error without a reason: {e:?}");
        }
        let (request_kind, request_bytes) = request.unwrap_or(("", Vec::new()));
        let (answer_kind, answer_bytes) = answer::response::parts(&body);
        let message =
            answer::answer_message(&challenge, request_kind, &request_bytes, answer_kind, &answer_bytes);
        let sig = Signature::from_slice(&resp.answer_signature).expect("a 64-byte signature");
        w.identity.verify_strict(&message, &sig).expect("the answer is signed by the enclave");
    }
);
