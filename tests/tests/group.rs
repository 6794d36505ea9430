//! One budget, several enclaves: two enclaves serving the same wallet (the second a copy of the
//! first's sealed state, joined to the group under a head of its own) share its session caps,
//! window budgets and freezes through books in a real 3-member etcd cluster (mutual TLS on
//! 127.0.0.1), with the real binaries.
//!
//! What each test tries:
//! * 64 agents paying through both members at once, while either enclave is SIGKILLed and
//!   restarted and an etcd member is killed: together they never sign more than a session's
//!   cap or the wallet's hourly budget allows;
//! * without crashes, the members spend a shared cap exactly (what one member's grant did not
//!   use returns to the book), and a revocation or a freeze at one member stops the other
//!   within a grant's lease;
//! * a request the host delivers to both members gets one EIP-3009 nonce (settled once);
//! * a hostile host replaying an old unfreeze to the other member does not lift the group's
//!   freeze; a member that missed a policy change takes no more grants; a book the anchor's
//!   operator deletes is refused, not started over;
//! * joining is deliberate: a copy of a state that shares nothing, a serving member, and a copy
//!   the member has moved on from (a stale backup) are refused; a copy waiting to join signs
//!   and changes nothing.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use wallet_e2e::{
    anchor::{anchored_stack_with, enclave_relay_args, gateway_relay_args},
    etcd::EtcdCluster,
    group::{anchor_state, copy_state, join, join_args, walletctl_at, Member},
    header, now_ms, reason, EnclaveStorage, Stack,
};
use wallet_proto::{
    gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient},
    AdminRpc,
};

const A_KEY: &str = "/x402-wallet/t1/a/head";
const B_KEY: &str = "/x402-wallet/t1/b/head";
const SHARED: &str = "/x402-wallet/t1/shared/";
/// 0.01 USDC (6 decimals).
const CENT: &str = "10000";

/// Payments up to 0.10 each; a session may spend 4.50 an hour, the wallet 8.00, whoever signs.
const POLICY: &str = r#"version = 1
[session]
budgets = [{ per = "1h", max = "4.50" }]
[wallet]
max_per_payment = "0.10"
budgets = [{ per = "1h", max = "8.00" }]

[[rule]]
name = "USDC on Base Sepolia"
networks = ["eip155:84532"]
assets = ["USDC"]
action = "allow"
"#;

/// A group of two: the first member provisioned with a shared prefix, a wallet with
/// [`POLICY`], and the second member joined from a copy of the first's state.
struct Group {
    cluster: EtcdCluster,
    a: Stack,
    b: Member,
    files: tempfile::TempDir,
    wallet: gw::Wallet,
}

async fn pay(
    url: &str,
    cred: &wallet_client::Credential,
    key: &str,
) -> Result<gw::SignPaymentResponse, tonic::Status> {
    let mut c = WalletGatewayClient::connect(url.to_owned())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.sign_payment(cred.sign_request(&header(CENT), "", "", key, now_ms()))
        .await
        .map(tonic::Response::into_inner)
}

fn nonce(r: &gw::SignPaymentResponse) -> String {
    let v: serde_json::Value = serde_json::from_str(&r.payment_payload_json).unwrap();
    v["payload"]["authorization"]["nonce"].as_str().unwrap().to_owned()
}

/// Denials that mean "the shared limit is spent".
fn spent(reason: &str) -> bool {
    matches!(reason, "SESSION_CAP" | "SESSION_BUDGET" | "WALLET_BUDGET")
}

/// A group whose sessions exist on both members (issued before the copy).
async fn group_with_sessions(
    cluster: EtcdCluster,
    caps: &[&str],
) -> (Group, Vec<Arc<wallet_client::Credential>>) {
    let files = tempfile::tempdir().expect("tempdir");
    let mut a =
        anchored_stack_with(&cluster, files.path(), true, A_KEY, &["--shared-prefix", SHARED]);
    let wallet = a.wallet("0.10").await;
    a.set_document(&wallet, POLICY).await;
    let mut creds = Vec::new();
    for cap in caps {
        creds.push(Arc::new(a.session(&wallet, cap, gw::IssueSessionRequest::default()).await));
    }
    let dir = files.path().join("b");
    copy_state(&mut a, &dir);
    let b = join(&cluster, &a, files.path(), &dir, B_KEY, SHARED).await;
    (Group { cluster, a, b, files, wallet }, creds)
}

/// What the agents got: the nonces of the signatures each session received.
#[derive(Default)]
struct Signed {
    per_session: Vec<HashSet<String>>,
}

/// `agents` agents, alternating between the members and the sessions, each paying 0.01 with
/// fresh idempotency keys until the shared limits refuse it three times in a row (or
/// `within` passes).
async fn load(
    urls: [String; 2],
    creds: &[Arc<wallet_client::Credential>],
    agents: usize,
    within: Duration,
    signed: Arc<Mutex<Signed>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    signed.lock().unwrap().per_session.resize(creds.len(), HashSet::new());
    let deadline = Instant::now() + within;
    (0..agents)
        .map(|i| {
            let url = urls[i % 2].clone();
            let s = (i / 2) % creds.len();
            let cred = Arc::clone(&creds[s]);
            let signed = Arc::clone(&signed);
            tokio::spawn(async move {
                let mut refused = 0;
                let mut n = 0;
                while refused < 3 && Instant::now() < deadline {
                    n += 1;
                    match pay(&url, &cred, &format!("a{i}-{n}-{}", now_ms())).await {
                        Ok(r) => {
                            refused = 0;
                            assert!(
                                signed.lock().unwrap().per_session[s].insert(nonce(&r)),
                                "one signature received twice"
                            );
                        }
                        Err(e) if spent(&reason(&e)) => refused += 1,
                        // A member being killed, or the anchor unreachable for a moment.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_agents_on_two_enclaves_never_overspend_across_sigkills() {
    // Two sessions of 5.00 each (4.50 an hour) on a wallet allowed 8.00 an hour: the sessions
    // could sign 900 payments of 0.01 between them, the wallet's budget allows 800, whichever
    // member signs.
    let (mut g, creds) = group_with_sessions(EtcdCluster::start(3), &["5.00", "5.00"]).await;
    // A third gateway in front of both members (routing by session, failing over to the
    // other member when one is down), beside each member's own gateway.
    let both = [g.a.dir.path().join("enclave.sock"), g.b.dir.join("enclave.sock")];
    let front_dir = g.files.path().join("front");
    std::fs::create_dir_all(&front_dir).unwrap();
    let (_front, front) = wallet_e2e::start_group_gateway(&front_dir, &both);
    let signed = Arc::new(Mutex::new(Signed::default()));
    let agents = load(
        [front.clone(), g.b.url.clone()],
        &creds,
        64,
        Duration::from_secs(120),
        Arc::clone(&signed),
    )
    .await;
    let count = |s: &Arc<Mutex<Signed>>| -> usize {
        s.lock().unwrap().per_session.iter().map(HashSet::len).sum()
    };
    let wait_for = |n: usize| {
        let signed = Arc::clone(&signed);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while count(&signed) < n {
                assert!(Instant::now() < deadline, "the agents stalled at {}", count(&signed));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Kill each enclave once, and an etcd member, while the agents pay.
    wait_for(100).await;
    g.b.enclave.kill();
    g.b.start_enclave(&[]);
    wait_for(250).await;
    g.cluster.kill(0);
    g.a.enclave.kill();
    wait_for(400).await; // paid through the front gateway's failover and the second member
    g.a.start_enclave_again();
    g.cluster.restart(0);
    for t in agents {
        t.await.unwrap();
    }
    let per: Vec<usize> = signed.lock().unwrap().per_session.iter().map(HashSet::len).collect();
    let total: usize = per.iter().sum();
    eprintln!("signed per session: {per:?} (total {total})");
    assert!(per.iter().all(|n| *n <= 450), "a session's budget was overspent: {per:?}");
    assert!(total <= 800, "the wallet's hourly budget was overspent: {total}");
    assert!(total >= 400, "the group kept paying across the kills: {total}");
    // Both members are serving again (the kills left their stores ahead, never behind).
    for url in [&g.a.url, &g.b.url] {
        let info = anchor_state(url).await;
        assert_eq!(info.state, "serving", "{info:?}");
    }
    assert!(g.files.path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_spend_a_shared_cap_exactly_and_stop_on_a_revocation_or_freeze_at_either() {
    let (g, creds) = group_with_sessions(EtcdCluster::start(3), &["0.20", "0.50", "0.50"]).await;
    // 1. Without crashes the cap is spent exactly: 20 payments of 0.01 between the members.
    let signed = Arc::new(Mutex::new(Signed::default()));
    let agents = load(
        [g.a.url.clone(), g.b.url.clone()],
        &creds[..1],
        16,
        Duration::from_secs(60),
        Arc::clone(&signed),
    )
    .await;
    for t in agents {
        t.await.unwrap();
    }
    // What a member's grant did not use returns to the book once the grant's lease ends: pay
    // on at each member until the cap refuses both.
    let mut total = signed.lock().unwrap().per_session[0].len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused_by = HashSet::new();
    let mut n = 0;
    while refused_by.len() < 2 {
        assert!(Instant::now() < deadline, "the cap's leftover never came back: {total} signed");
        for url in [&g.a.url, &g.b.url] {
            n += 1;
            match pay(url, &creds[0], &format!("rest-{n}")).await {
                Ok(_) => {
                    total += 1;
                    refused_by.clear();
                }
                Err(e) if reason(&e) == "SESSION_CAP" => {
                    refused_by.insert(url.clone());
                }
                Err(e) => panic!("unexpected refusal: {e:?}"),
            }
        }
        if refused_by.len() < 2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(total <= 20, "the shared cap was overspent: {total}");
    // The refusals above may come while a member still holds an unexpired grant; by the time
    // both refuse after the leases ended, everything was spent.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for (i, url) in [&g.a.url, &g.b.url].into_iter().enumerate() {
        if pay(url, &creds[0], &format!("late-{i}")).await.is_ok() {
            total += 1;
        }
    }
    assert_eq!(total, 20, "the members spent the cap exactly");

    // A request the host delivers to both members is signed by both (each accepts it once),
    // but both authorizations carry the same EIP-3009 nonce: the token settles one.
    let twice = creds[2].sign_request(&header(CENT), "", "", "twice", now_ms());
    let mut ca = WalletGatewayClient::connect(g.a.url.clone()).await.unwrap();
    let mut cb = WalletGatewayClient::connect(g.b.url.clone()).await.unwrap();
    let ra = ca.sign_payment(twice.clone()).await.expect("first member").into_inner();
    let rb = cb.sign_payment(twice).await.expect("second member").into_inner();
    assert_eq!(nonce(&ra), nonce(&rb), "one request, one authorization nonce");

    // 2. A revocation at the first member stops the second within a grant's lease.
    pay(&g.b.url, &creds[1], "before-revoke").await.expect("the second member pays");
    let out = walletctl_at(&g.a, &g.a.url, &["session", "revoke", &creds[1].session_id]);
    wallet_e2e::ok(&out);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        match pay(&g.b.url, &creds[1], &format!("after-revoke-{n}")).await {
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the second member kept signing for a session revoked at the first"
            ),
            Err(e) => {
                assert_eq!(reason(&e), "SESSION_REVOKED", "{e:?}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 3. A freeze at the second member stops the first the same way; unfreezing at both
    //    brings payments back.
    pay(&g.a.url, &creds[2], "before-freeze").await.expect("the first member pays");
    let out = walletctl_at(&g.a, &g.b.url, &["wallet", "freeze", &g.wallet.wallet_id]);
    wallet_e2e::ok(&out);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        match pay(&g.a.url, &creds[2], &format!("after-freeze-{n}")).await {
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the first member kept signing for a wallet frozen at the second"
            ),
            Err(e) => {
                assert_eq!(reason(&e), "WALLET_FROZEN", "{e:?}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = walletctl_at(&g.a, &g.b.url, &["wallet", "unfreeze", &g.wallet.wallet_id]);
    wallet_e2e::ok(&out);
    pay(&g.a.url, &creds[2], "after-unfreeze").await.expect("unfrozen for the group");
    pay(&g.b.url, &creds[2], "after-unfreeze-b").await.expect("and at the second member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_group_is_deliberate() {
    let cluster = EtcdCluster::start(3);
    let files = tempfile::tempdir().expect("tempdir");
    // A first member without a shared prefix: no copy of it can join a group.
    let mut a = anchored_stack_with(&cluster, files.path(), true, A_KEY, &[]);
    let _wallet = a.wallet("0.10").await;
    let dir = files.path().join("b");
    copy_state(&mut a, &dir);
    let mut args = enclave_relay_args(&dir, 3);
    args.push("--await-join".into());
    let _enclave =
        wallet_e2e::start_enclave_with(&dir, "info", None, &EnclaveStorage::Local, &args);
    let (_gateway, url) =
        wallet_e2e::start_gateway_with(&dir, "info", None, &gateway_relay_args(&cluster, &dir));
    let args = join_args(files.path(), B_KEY, SHARED);
    let out = walletctl_at(&a, &url, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(
        wallet_e2e::stderr(&out).contains("shares its budgets"),
        "{}",
        wallet_e2e::stderr(&out)
    );
    // While waiting to join, the copy signs nothing and changes nothing.
    let out = walletctl_at(&a, &url, &["wallet", "create"]);
    assert!(!out.status.success());
    assert!(
        wallet_e2e::stderr(&out).contains("ANCHOR_UNAVAILABLE"),
        "{}",
        wallet_e2e::stderr(&out)
    );
    // The first member was not disturbed.
    assert_eq!(anchor_state(&a.url).await.state, "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_current_copy_waiting_to_join_joins() {
    let (mut g, creds) = group_with_sessions(EtcdCluster::start(3), &["1"]).await;
    // A serving member is not moved to another head by a join sent to it.
    let args = join_args(g.files.path(), "/x402-wallet/t1/c/head", SHARED);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = walletctl_at(&g.a, &g.a.url, &args);
    assert!(!out.status.success());
    assert!(wallet_e2e::stderr(&out).contains("--await-join"), "{}", wallet_e2e::stderr(&out));
    assert_eq!(anchor_state(&g.a.url).await.key, A_KEY);
    // A copy that the member it was taken from has moved on from (a stale backup, with older
    // sessions and policies) does not join.
    let dir = g.files.path().join("c");
    copy_state(&mut g.a, &dir);
    pay(&g.a.url, &creds[0], "moves-on").await.expect("the first member pays");
    let mut eargs = enclave_relay_args(&dir, 3);
    eargs.push("--await-join".into());
    let _enclave =
        wallet_e2e::start_enclave_with(&dir, "info", None, &EnclaveStorage::Local, &eargs);
    let (_gateway, url) =
        wallet_e2e::start_gateway_with(&dir, "info", None, &gateway_relay_args(&g.cluster, &dir));
    let out = walletctl_at(&g.a, &url, &args);
    assert!(!out.status.success());
    assert!(
        wallet_e2e::stderr(&out)
            .contains("not the state the member it was copied from has anchored"),
        "{}",
        wallet_e2e::stderr(&out)
    );
    let err = pay(&url, &creds[0], "stale-copy").await.expect_err("the stale copy signs nothing");
    assert_eq!(reason(&err), "ANCHOR_UNAVAILABLE", "{err:?}");
    // The group is undisturbed.
    pay(&g.b.url, &creds[0], "still").await.expect("the second member pays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_unfreeze_or_a_missed_policy_change_does_not_loosen_the_group() {
    let (g, creds) = group_with_sessions(EtcdCluster::start(3), &["1"]).await;
    let mut a = WalletGatewayClient::connect(g.a.url.clone()).await.unwrap();
    let mut b = WalletGatewayClient::connect(g.b.url.clone()).await.unwrap();
    let wallet = || gw::FreezeWalletRequest { wallet_id: g.wallet.wallet_id.clone(), auth: None };
    // An unfreeze the admin once sent to the first member, which the host keeps...
    let old_unfreeze = g.a.signed(AdminRpc::UnfreezeWallet, wallet());
    a.unfreeze_wallet(old_unfreeze.clone()).await.expect("unfreeze at the first member");
    // ... then the admin freezes the wallet there (the kill switch, for the group).
    a.freeze_wallet(g.a.signed(AdminRpc::FreezeWallet, wallet())).await.expect("freeze");
    // The host replays the old unfreeze to the second member, which never saw it: it applies
    // there, but the group's freeze is newer and stays.
    let err = b.unfreeze_wallet(old_unfreeze).await.expect_err("the group stays frozen");
    assert!(err.message().contains("newer freeze"), "{err:?}");
    let err = pay(&g.b.url, &creds[0], "after-replay").await.expect_err("frozen for the group");
    assert_eq!(reason(&err), "WALLET_FROZEN", "{err:?}");
    a.unfreeze_wallet(g.a.signed(AdminRpc::UnfreezeWallet, wallet())).await.expect("unfreeze");
    pay(&g.b.url, &creds[0], "unfrozen").await.expect("unfrozen for the group");

    // A policy change that reaches one member only: the other takes no more grants until it
    // has it too (once its current grant's lease ends).
    let tighter = POLICY.replace("max_per_payment = \"0.10\"", "max_per_payment = \"0.05\"");
    g.a.set_document(&g.wallet, &tighter).await;
    tokio::time::sleep(Duration::from_millis(sharing_lease_ms() + 1_500)).await;
    let err = pay(&g.b.url, &creds[0], "stale-policy").await.expect_err("a stale member");
    assert!(err.message().contains("newer policy"), "{err:?}");
    let set = g.a.signed(
        AdminRpc::SetPolicy,
        gw::SetPolicyRequest {
            auth: None,
            policy: Some(gw::Policy {
                wallet_id: g.wallet.wallet_id.clone(),
                document: tighter.clone(),
                ..Default::default()
            }),
        },
    );
    b.set_policy(set).await.expect("the policy reaches the second member");
    pay(&g.b.url, &creds[0], "current-policy").await.expect("current again");

    // The anchor's operator deletes the session's book: a member that saw it refuses rather
    // than start the cap over.
    tokio::time::sleep(Duration::from_millis(sharing_lease_ms() + 1_500)).await;
    let book = format!("{SHARED}s/{}", creds[0].session_id);
    g.cluster.etcdctl_ok(&["del", &book]);
    let err = pay(&g.b.url, &creds[0], "deleted").await.expect_err("a deleted book");
    assert_eq!(reason(&err), "ANCHOR_HALTED", "{err:?}");
    assert!(err.message().contains("deleted"), "{err:?}");
}

/// A grant's lease (`sharing::LEASE_MS` in the enclave).
fn sharing_lease_ms() -> u64 {
    5_000
}
