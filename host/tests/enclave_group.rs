//! The gateway in front of several enclaves of one group: the real tonic server (on loopback,
//! port 0) relaying to fake enclaves that speak the frame protocol on Unix sockets in a tempdir.
//!
//! What is checked: routing by session or wallet id is stable and spreads keys over the members;
//! a member that cannot be connected is passed over (and tried last for a while); and — the
//! double-pay guard — a request that may have reached a member is never sent to another, however
//! that member fails. Every test is bounded by [`bounded`].

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use prost::Message as _;
use tokio::{io::AsyncWriteExt as _, net::UnixListener, sync::oneshot};
use tonic::Code;
use wallet_client::{GatewayClient, REASON_METADATA};
use wallet_host::{
    enclave_client::{
        fnv1a_64, ring_order, route_key, CallError, NotSentCause, RouteKey, DEFAULT_RETRY_AFTER,
    },
    EnclaveClient, EnclaveGroup, Limits,
};
use wallet_proto::{
    enclave::v1::{
        enclave_request::Body as Req, enclave_response::Body as Resp, EnclaveError, EnclaveRequest,
        EnclaveResponse, ErrorCode,
    },
    encode_frame,
    frame::read_frame,
    gateway::v1 as gw,
    ENCLAVE_PROTOCOL_VERSION,
};

/// Runs a test body with a hard limit, so a hang fails instead of blocking the run.
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(30), body).await.expect("the test took over 30 s");
}

/// How a fake enclave treats each request it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers (see [`answer`]).
    Answer,
    /// Reads one request, then closes the connection without answering.
    DropAfterRead,
    /// Reads requests and never answers (keeps the connection open).
    Silent,
}

/// A fake member: how many requests it read, and the routing keys of those requests.
#[derive(Debug, Clone, Default)]
struct Fake {
    seen: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// The answer of the fake member `name`: it says who answered in a field the test can read.
fn answer(name: &str, req: Req) -> Resp {
    match req {
        Req::GetBudget(r) => Resp::SessionBudget(gw::SessionBudget {
            session_id: r.session_id,
            wallet_id: name.into(),
            ..Default::default()
        }),
        Req::SignPayment(_) => {
            Resp::SignPayment(gw::SignPaymentResponse { payer: name.into(), ..Default::default() })
        }
        Req::GetPolicy(r) => Resp::Policy(gw::Policy {
            wallet_id: r.wallet_id,
            document: name.into(),
            ..Default::default()
        }),
        Req::GetStatus(_) => Resp::Status(gw::Status {
            mode: name.into(),
            enclave_reachable: true,
            ..Default::default()
        }),
        Req::ListWallets(_) => Resp::Wallets(gw::ListWalletsResponse {
            wallets: vec![gw::Wallet { label: name.into(), ..Default::default() }],
        }),
        _ => Resp::Error(EnclaveError {
            code: ErrorCode::Internal.into(),
            reason: "INTERNAL".into(),
            message: "the fake does not know this call".into(),
        }),
    }
}

/// A fake enclave named `name` on a Unix socket at `socket`.
fn fake(socket: &Path, name: &'static str, mode: Mode) -> Fake {
    let listener = UnixListener::bind(socket).unwrap();
    let fake = Fake::default();
    let state = fake.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut rd = tokio::io::BufReader::new(rd);
                while let Ok(Some(frame)) = read_frame(&mut rd).await {
                    let req = EnclaveRequest::decode(frame.as_slice()).unwrap();
                    assert_eq!(req.protocol_version, ENCLAVE_PROTOCOL_VERSION);
                    let body = req.body.unwrap();
                    let key = match route_key(&body) {
                        RouteKey::Session(s) | RouteKey::Wallet(s) => s.to_owned(),
                        RouteKey::Fixed => String::new(),
                    };
                    state.keys.lock().unwrap().push(key);
                    state.seen.fetch_add(1, Ordering::SeqCst);
                    match mode {
                        Mode::DropAfterRead => return,
                        Mode::Silent => continue,
                        Mode::Answer => {}
                    }
                    let resp = EnclaveResponse {
                        answer_signature: Vec::new(),
                        request_id: req.request_id,
                        body: Some(answer(name, body)),
                    };
                    if wr.write_all(&encode_frame(&resp).unwrap()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    fake
}

/// A running gateway; stops when dropped.
struct Gateway {
    client: GatewayClient,
    _stop: oneshot::Sender<()>,
}

async fn gateway(group: EnclaveGroup) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(wallet_host::serve_group(
        listener,
        group,
        "/data".into(),
        Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    Gateway { client: GatewayClient::connect(&url).await.unwrap(), _stop: stop }
}

fn sockets(dir: &tempfile::TempDir, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| dir.path().join(format!("member-{i}.sock"))).collect()
}

fn group_of(paths: &[PathBuf]) -> EnclaveGroup {
    EnclaveGroup::new(paths.iter().map(|p| Arc::new(EnclaveClient::new(p.clone()))))
}

/// The first session id `sess_N` whose first choice among `n` members is `member`.
fn session_preferring(member: usize, n: usize) -> String {
    (0..)
        .map(|i| format!("sess_{i}"))
        .find(|s| ring_order(RouteKey::Session(s), n)[0] == member)
        .unwrap()
}

async fn budget_from(client: &mut GatewayClient, session: &str) -> Result<String, tonic::Status> {
    let req = gw::GetBudgetRequest { session_id: session.into(), ..Default::default() };
    client.raw().get_budget(req).await.map(|r| r.into_inner().wallet_id)
}

async fn sign(client: &mut GatewayClient, session: &str) -> Result<String, tonic::Status> {
    let req = gw::SignPaymentRequest { session_id: session.into(), ..Default::default() };
    client.raw().sign_payment(req).await.map(|r| r.into_inner().payer)
}

fn assert_unavailable(s: &tonic::Status) {
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(s.metadata().get(REASON_METADATA).unwrap(), "ENCLAVE_UNAVAILABLE");
}

/// The hash is the documented one (FNV-1a 64: published test vectors), and the order is the
/// ring from `hash mod n`.
#[test]
fn the_routing_rule_is_fnv1a_mod_n_then_the_ring() {
    assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    for (key, n) in [("a", 3), ("foobar", 4), ("sess_7", 5)] {
        let primary = usize::try_from(fnv1a_64(key.as_bytes()) % n as u64).unwrap();
        let expected: Vec<usize> = (0..n).map(|i| (primary + i) % n).collect();
        assert_eq!(ring_order(RouteKey::Session(key), n), expected);
        assert_eq!(ring_order(RouteKey::Wallet(key), n), expected, "same hash for wallets");
    }
    assert_eq!(ring_order(RouteKey::Fixed, 3), vec![0, 1, 2]);
    assert_eq!(ring_order(RouteKey::Session("x"), 1), vec![0]);
    assert!(ring_order(RouteKey::Fixed, 0).is_empty());
    // Which calls carry which key.
    let sign =
        Req::SignPayment(gw::SignPaymentRequest { session_id: "s_1".into(), ..Default::default() });
    assert_eq!(route_key(&sign), RouteKey::Session("s_1"));
    let revoke =
        Req::RevokeSession(gw::RevokeSessionRequest { session_id: "s_2".into(), auth: None });
    assert_eq!(route_key(&revoke), RouteKey::Session("s_2"));
    let policy = Req::SetPolicy(gw::SetPolicyRequest {
        policy: Some(gw::Policy { wallet_id: "w_1".into(), ..Default::default() }),
        auth: None,
    });
    assert_eq!(route_key(&policy), RouteKey::Wallet("w_1"));
    let freeze = Req::FreezeWallet(gw::FreezeWalletRequest { wallet_id: "w_2".into(), auth: None });
    assert_eq!(route_key(&freeze), RouteKey::Wallet("w_2"));
    let all_approvals = Req::ListApprovals(gw::ListApprovalsRequest::default());
    assert_eq!(route_key(&all_approvals), RouteKey::Fixed, "an empty id is no key");
    assert_eq!(route_key(&Req::GetStatus(gw::GetStatusRequest {})), RouteKey::Fixed);
    assert_eq!(DEFAULT_RETRY_AFTER, Duration::from_secs(1));
}

/// (a) Each session (and wallet) is answered by its first-choice member, every time, and the
/// keys spread over all members; a call without a key goes to member 0.
#[tokio::test]
async fn routing_is_stable_and_spreads_keys_over_the_members() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let paths = sockets(&dir, 3);
        let names = ["m0", "m1", "m2"];
        let fakes: Vec<Fake> =
            paths.iter().zip(names).map(|(p, n)| fake(p, n, Mode::Answer)).collect();
        let mut gw = gateway(group_of(&paths)).await;
        let mut per_member = [0usize; 3];
        for i in 0..30 {
            let session = format!("sess_{i}");
            let primary = ring_order(RouteKey::Session(&session), 3)[0];
            per_member[primary] += 1;
            for _ in 0..2 {
                assert_eq!(budget_from(&mut gw.client, &session).await.unwrap(), names[primary]);
                assert_eq!(sign(&mut gw.client, &session).await.unwrap(), names[primary]);
            }
        }
        assert!(per_member.iter().all(|&n| n > 0), "30 sessions over 3 members: {per_member:?}");
        for (m, f) in fakes.iter().enumerate() {
            assert_eq!(f.seen(), 4 * per_member[m], "member {m}");
            // Each member saw only the sessions that prefer it.
            for key in f.keys.lock().unwrap().iter() {
                assert_eq!(ring_order(RouteKey::Session(key), 3)[0], m, "{key} at member {m}");
            }
        }
        // Admin calls with a wallet id: by the wallet id.
        for i in 0..10 {
            let wallet = format!("w_{i}");
            let primary = ring_order(RouteKey::Wallet(&wallet), 3)[0];
            let req = gw::GetPolicyRequest { wallet_id: wallet.clone() };
            let policy = gw.client.raw().get_policy(req).await.unwrap().into_inner();
            assert_eq!(policy.document, names[primary], "{wallet}");
        }
        // No key: member 0, every time.
        for _ in 0..3 {
            let l = gw.client.raw().list_wallets(gw::ListWalletsRequest {}).await.unwrap();
            assert_eq!(l.into_inner().wallets[0].label, "m0");
            let st = gw.client.raw().get_status(gw::GetStatusRequest {}).await.unwrap();
            assert_eq!(st.into_inner().mode, "m0");
        }
    })
    .await;
}

/// (b) Member 0 has no socket: its sessions are answered by member 1. During the back-off the
/// down member is passed over even once it is back (it is tried last, not first); after the
/// back-off it is preferred again.
#[tokio::test]
async fn a_member_that_cannot_be_connected_is_passed_over_then_tried_again() {
    bounded(async {
        let retry_after = Duration::from_secs(2);
        let dir = tempfile::tempdir().unwrap();
        let paths = sockets(&dir, 2);
        let m1 = fake(&paths[1], "m1", Mode::Answer);
        let mut gw = gateway(group_of(&paths).with_retry_after(retry_after)).await;
        let session = session_preferring(0, 2);

        let failed_at = std::time::Instant::now();
        assert_eq!(budget_from(&mut gw.client, &session).await.unwrap(), "m1");
        assert_eq!(m1.seen(), 1);

        // Member 0 comes up within the back-off: still passed over.
        let m0 = fake(&paths[0], "m0", Mode::Answer);
        assert_eq!(sign(&mut gw.client, &session).await.unwrap(), "m1");
        let st = gw.client.raw().get_status(gw::GetStatusRequest {}).await.unwrap().into_inner();
        assert_eq!(st.mode, "m1", "GetStatus: the first member that takes it");
        assert!(failed_at.elapsed() < retry_after, "the machine is too slow for this test");
        assert_eq!(m0.seen(), 0, "skipped during the back-off");
        assert_eq!(m1.seen(), 3);

        // After the back-off, member 0 is first again.
        tokio::time::sleep(
            retry_after.saturating_sub(failed_at.elapsed()) + Duration::from_millis(100),
        )
        .await;
        assert_eq!(sign(&mut gw.client, &session).await.unwrap(), "m0");
        assert_eq!(budget_from(&mut gw.client, &session).await.unwrap(), "m0");
        assert_eq!((m0.seen(), m1.seen()), (2, 3));
    })
    .await;
}

/// (c) The double-pay guard. Member 0 reads the payment request and drops the connection
/// without answering: it may have signed, so the call fails with UNAVAILABLE and member 1 never
/// sees the request — not at once, not later, not on a second try. A blanket retry would make
/// member 1's counter move.
#[tokio::test]
async fn a_request_that_may_have_reached_a_member_is_never_sent_to_another() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let paths = sockets(&dir, 2);
        let m0 = fake(&paths[0], "m0", Mode::DropAfterRead);
        let m1 = fake(&paths[1], "m1", Mode::Answer);
        let mut gw = gateway(group_of(&paths)).await;
        let session = session_preferring(0, 2);

        let s = sign(&mut gw.client, &session).await.unwrap_err();
        assert_unavailable(&s);
        assert!(s.message().contains("closed before it answered"), "{}", s.message());
        assert_eq!(m0.seen(), 1);
        assert_eq!(m1.seen(), 0, "the payment request must not reach a second member");

        // The member is reachable (it accepts connections): the next call goes to it again,
        // and fails again, without ever reaching member 1.
        let s = sign(&mut gw.client, &session).await.unwrap_err();
        assert_unavailable(&s);
        let s = budget_from(&mut gw.client, &session).await.unwrap_err();
        assert_unavailable(&s);
        // GetStatus (no key: member 0 first) is not resent either; the gateway says so itself.
        let st = gw.client.raw().get_status(gw::GetStatusRequest {}).await.unwrap().into_inner();
        assert!(!st.enclave_reachable);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(m0.seen(), 4);
        assert_eq!(m1.seen(), 0, "nothing reached member 1, not even late");
        // Member 1 is fine: its own sessions are answered.
        let other = session_preferring(1, 2);
        assert_eq!(sign(&mut gw.client, &other).await.unwrap(), "m1");
    })
    .await;
}

/// (c, the timeout) A member that reads the request and never answers: DEADLINE_EXCEEDED after
/// the link's timeout, and the other member never sees the request.
#[tokio::test]
async fn a_member_that_never_answers_times_out_and_nothing_is_resent() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let paths = sockets(&dir, 2);
        let m0 = fake(&paths[0], "m0", Mode::Silent);
        let m1 = fake(&paths[1], "m1", Mode::Answer);
        let group = EnclaveGroup::new(paths.iter().map(|p| {
            Arc::new(EnclaveClient::new(p.clone()).with_timeout(Duration::from_millis(300)))
        }));
        let mut gw = gateway(group).await;
        let s = sign(&mut gw.client, &session_preferring(0, 2)).await.unwrap_err();
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert_eq!(s.metadata().get(REASON_METADATA).unwrap(), "ENCLAVE_TIMEOUT");
        assert_eq!((m0.seen(), m1.seen()), (1, 0));
    })
    .await;
}

/// (d) Every member down: UNAVAILABLE, naming every member tried; GetStatus says no enclave is
/// reachable.
#[tokio::test]
async fn every_member_down_is_unavailable_naming_the_members() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let paths = sockets(&dir, 2);
        let mut gw = gateway(group_of(&paths)).await;
        for _ in 0..2 {
            // The second time both are in their back-off: still both tried.
            let s = sign(&mut gw.client, "sess_1").await.unwrap_err();
            assert_unavailable(&s);
            for p in &paths {
                assert!(s.message().contains(&p.display().to_string()), "{}", s.message());
            }
            assert!(s.message().contains("none of the 2 enclaves"), "{}", s.message());
        }
        let st = gw.client.raw().get_status(gw::GetStatusRequest {}).await.unwrap().into_inner();
        assert!(!st.enclave_reachable);
        assert_eq!(st.data_dir, "/data");
        // One comes up: answered by it.
        let m1 = fake(&paths[1], "m1", Mode::Answer);
        assert_eq!(sign(&mut gw.client, &session_preferring(1, 2)).await.unwrap(), "m1");
        assert_eq!(m1.seen(), 1);
    })
    .await;
}

/// A link whose in-flight slots stay taken for the queue wait did not send the request: the
/// next member takes it. The call holding the slot is not resent.
#[tokio::test]
async fn a_saturated_link_passes_the_call_to_the_next_member() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let paths = sockets(&dir, 2);
        let m0 = fake(&paths[0], "m0", Mode::Silent);
        let m1 = fake(&paths[1], "m1", Mode::Answer);
        let group = EnclaveGroup::new(paths.iter().map(|p| {
            Arc::new(
                EnclaveClient::new(p.clone())
                    .with_max_in_flight(1)
                    .with_queue_wait(Duration::from_millis(100))
                    .with_timeout(Duration::from_secs(2)),
            )
        }));
        let gw = gateway(group).await;
        let session = session_preferring(0, 2);
        let mut first = gw.client.clone();
        let held = {
            let session = session.clone();
            tokio::spawn(async move { sign(&mut first, &session).await })
        };
        while m0.seen() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut second = gw.client.clone();
        assert_eq!(sign(&mut second, &session).await.unwrap(), "m1");
        let s = held.await.unwrap().unwrap_err();
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert_eq!((m0.seen(), m1.seen()), (1, 1));
    })
    .await;
}

/// The typed outcome of one link, at each point where it is decided.
#[tokio::test]
async fn a_link_says_whether_a_failed_request_was_sent() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let paths = sockets(&dir, 2);
        let request = |session: &str| EnclaveRequest {
            challenge: vec![7; 16],
            protocol_version: 0,
            request_id: 0,
            body: Some(Req::SignPayment(gw::SignPaymentRequest {
                session_id: session.into(),
                ..Default::default()
            })),
        };

        // No socket: not sent, unreachable; the request is left for another link.
        let link = EnclaveClient::new(paths[0].clone());
        let mut req = request("s");
        match link.send(&mut req).await {
            Err(CallError::NotSent(n)) => {
                assert_eq!(n.cause, NotSentCause::Unreachable);
                assert!(n.detail.contains(&paths[0].display().to_string()), "{}", n.detail);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((req.challenge.len(), req.body.is_some()), (16, true));

        // Read, then dropped: failed (may have been sent), never `NotSent`.
        let m0 = fake(&paths[0], "m0", Mode::DropAfterRead);
        match link.send(&mut req).await {
            Err(CallError::Failed(s)) => assert_eq!(s.code(), Code::Unavailable),
            other => panic!("{other:?}"),
        }
        assert_eq!(m0.seen(), 1);

        // Too large for a frame: failed before sending, but not `NotSent` (every member would
        // refuse it alike).
        let mut huge = EnclaveRequest {
            body: Some(Req::ImportKyt(gw::ImportKytRequest {
                addresses: vec![0; 2 << 20],
                ..Default::default()
            })),
            ..request("s")
        };
        match link.send(&mut huge).await {
            Err(CallError::Failed(s)) => assert_eq!(s.code(), Code::InvalidArgument),
            other => panic!("{other:?}"),
        }
        assert_eq!(m0.seen(), 1);

        // Every slot taken for the queue wait: not sent, saturated.
        let m1 = fake(&paths[1], "m1", Mode::Silent);
        let busy = Arc::new(
            EnclaveClient::new(paths[1].clone())
                .with_max_in_flight(1)
                .with_queue_wait(Duration::from_millis(50))
                .with_timeout(Duration::from_millis(500)),
        );
        let holder = {
            let busy = Arc::clone(&busy);
            tokio::spawn(async move { busy.send(&mut request("t")).await.map(|_| ()) })
        };
        while m1.seen() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match busy.send(&mut request("u")).await {
            Err(CallError::NotSent(n)) => assert_eq!(n.cause, NotSentCause::Saturated),
            other => panic!("{other:?}"),
        }
        match holder.await.unwrap() {
            Err(CallError::Failed(s)) => assert_eq!(s.code(), Code::DeadlineExceeded),
            other => panic!("{other:?}"),
        }
    })
    .await;
}
