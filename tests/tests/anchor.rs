//! The rollback anchor (etcd) against a real 3-member etcd cluster with mutual TLS on
//! 127.0.0.1 (`wallet_e2e::etcd`), with the real binaries: the enclave's TLS to etcd is carried
//! by the gateway's `--anchor-relay` or by relays in this test that misbehave on demand (a
//! hostile host: blackholing, or swallowing etcd's answers after forwarding the request).
//!
//! What each test tries:
//! * the whole state directory rolled back to an older copy: the enclave refuses to sign, and
//!   `walletctl status` says so (exit 5);
//! * a copy of the state started as a second enclave: behind → refused at start-up; level →
//!   it takes over and the first halts at its next round (never both signing);
//! * etcd members killed: one → payments continue; two → refused with `ANCHOR_UNAVAILABLE`,
//!   nothing released, back when they return; the host blackholing the anchor → refused;
//!   etcd's answer to a committed compare-and-swap lost → resolved, released once.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wallet_e2e::{
    anchor::{anchored_stack, enclave_relay_args, relay_path},
    etcd::EtcdCluster,
    group::anchor_state,
    header, now_ms, ok, reason, Stack,
};
use wallet_proto::{
    gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient},
    AdminRpc,
};

const KEY: &str = "/x402-wallet/t1/anchor/head";
/// 0.01 USDC (6 decimals).
const CENT: &str = "10000";

/// What a test relay does with the bytes.
const FORWARD: u8 = 0;
/// Drop everything, both ways (the connection stays open).
const BLACKHOLE: u8 = 1;
/// Forward the enclave's bytes to etcd, drop etcd's answers.
const SWALLOW_ANSWERS: u8 = 2;

/// A relay in the test: a Unix socket the enclave connects to, piped to one etcd member, doing
/// what its mode says.
struct TestRelay {
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestRelay {
    fn spawn(path: PathBuf, target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::UnixListener::bind(&path).expect("bind test relay");
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let m = Arc::clone(&mode);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let m = Arc::clone(&m);
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let (mut ir, mut iw) = inbound.into_split();
                    let (mut or, mut ow) = outbound.into_split();
                    let m2 = Arc::clone(&m);
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match ir.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if m2.load(Ordering::SeqCst) != BLACKHOLE
                                && ow.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match or.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if m.load(Ordering::SeqCst) == FORWARD
                                && iw.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self { mode, task }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// An anchored stack, where its relays and PKI files are, and the test's own relays.
struct Anchored {
    stack: Stack,
    files: tempfile::TempDir,
    relays: Vec<TestRelay>,
}

/// Who carries the enclave's TLS to etcd.
#[derive(PartialEq)]
enum Relays {
    /// The gateway (`--anchor-relay`), as in production.
    Gateway,
    /// This test ([`TestRelay`]).
    Test,
}

fn anchored(cluster: &EtcdCluster, relays: Relays) -> Anchored {
    let files = tempfile::tempdir().expect("tempdir");
    let test_relays = match relays {
        Relays::Test => cluster
            .client_endpoints()
            .iter()
            .enumerate()
            .map(|(i, e)| TestRelay::spawn(relay_path(files.path(), i), *e))
            .collect(),
        Relays::Gateway => Vec::new(),
    };
    let stack = anchored_stack(cluster, files.path(), relays == Relays::Gateway, KEY);
    Anchored { stack, files, relays: test_relays }
}

async fn pay(
    url: &str,
    cred: &wallet_client::Credential,
    key: &str,
) -> Result<gw::SignPaymentResponse, tonic::Status> {
    let mut c = WalletGatewayClient::connect(url.to_owned()).await.expect("connect");
    c.sign_payment(cred.sign_request(&header(CENT), "", "", key, now_ms()))
        .await
        .map(tonic::Response::into_inner)
}

/// Pays with fresh idempotency keys until one is signed (or `within` passes).
async fn pay_until_signed(
    url: &str,
    cred: &wallet_client::Credential,
    tag: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let mut n = 0;
    loop {
        n += 1;
        match pay(url, cred, &format!("{tag}-{n}")).await {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "no payment signed within {within:?}: {e:?}")
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the stack's enclave with SIGTERM; it must exit cleanly.
fn stop_enclave(stack: &mut Stack) {
    let pid = stack.enclave.0.id();
    let clean = stack.enclave.terminate();
    if !clean && std::env::var_os("ANCHOR_TEST_GDB").is_some() {
        let bt = Command::new("gdb")
            .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&bt.stdout));
    }
    assert!(
        clean,
        "the enclave did not stop cleanly: {}",
        std::fs::read_to_string(stack.enclave_log()).unwrap_or_default()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_of_the_whole_state_buys_no_payment() {
    let cluster = EtcdCluster::start(3);
    let mut a = anchored(&cluster, Relays::Gateway);
    let s = &mut a.stack;
    let status = anchor_state(&s.url).await;
    assert_eq!(status.state, "serving", "{status:?}");
    let w = s.wallet("1").await;
    let cred = s.session(&w, "0.05", gw::IssueSessionRequest::default()).await;
    // The host copies the whole state (every store and the commit head, consistently).
    stop_enclave(s);
    let snapshot = a.files.path().join("snapshot");
    copy_dir(&s.data_dir(), &snapshot);
    s.start_enclave_again();
    for i in 0..5 {
        pay(&s.url, &cred, &format!("p{i}")).await.expect("within the cap");
    }
    let err = pay(&s.url, &cred, "p5").await.expect_err("the cap is spent");
    assert_eq!(reason(&err), "SESSION_CAP");
    let before = anchor_state(&s.url).await;
    assert!(before.epoch >= 2 && before.journal_records >= 5, "{before:?}");
    // ... and puts it back: every payment since would be spendable again.
    stop_enclave(s);
    std::fs::remove_dir_all(s.data_dir()).unwrap();
    copy_dir(&snapshot, &s.data_dir());
    s.start_enclave_again();
    let info = anchor_state(&s.url).await;
    assert!(info.state.starts_with("halted") && info.state.contains("ROLLED BACK"), "{info:?}");
    for i in 0..3 {
        let err = pay(&s.url, &cred, &format!("again{i}"))
            .await
            .expect_err("no payment after a rollback");
        assert_eq!(reason(&err), "ANCHOR_HALTED", "{err:?}");
    }
    // State changes are refused too (the rolled-back admin state must not be built on).
    let out = s.walletctl(&["wallet", "create"], "");
    assert!(
        !out.status.success() && wallet_e2e::stderr(&out).contains("ANCHOR_HALTED"),
        "{}",
        wallet_e2e::stderr(&out)
    );
    let out = s.walletctl(&["status"], "");
    assert_eq!(out.status.code(), Some(5), "{}", wallet_e2e::stderr(&out));
    assert!(wallet_e2e::stderr(&out).contains("ANCHOR HALTED"), "{}", wallet_e2e::stderr(&out));
    // The anchored head did not move.
    let etcd_value = cluster.etcdctl_ok(&["get", KEY, "--print-value-only", "--hex"]);
    assert!(!etcd_value.trim().is_empty());
    assert!(a.relays.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_started_as_a_second_enclave_never_signs_beside_the_first() {
    let cluster = EtcdCluster::start(3);
    let mut a = anchored(&cluster, Relays::Test);
    let w = a.stack.wallet("1").await;
    let cred = a.stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    pay(&a.stack.url, &cred, "first").await.expect("signed");
    // Copy the state while the first enclave is stopped.
    stop_enclave(&mut a.stack);
    let clone_dir = a.files.path().join("clone");
    std::fs::create_dir_all(&clone_dir).unwrap();
    copy_dir(&a.stack.data_dir(), &clone_dir.join("data"));
    a.stack.start_enclave_again();
    // 1. The first enclave moves on; a clone of the older copy is behind: refused at start-up.
    pay(&a.stack.url, &cred, "second").await.expect("signed");
    let args = enclave_relay_args(a.files.path(), 3);
    let level_dir = a.files.path().join("level");
    {
        let _enclave = wallet_e2e::start_enclave_with(
            &clone_dir,
            "info",
            None,
            &wallet_e2e::EnclaveStorage::Local,
            &args,
        );
        let (_gateway, url) = wallet_e2e::start_gateway_with(&clone_dir, "info", None, &[]);
        let info = anchor_state(&url).await;
        assert!(info.state.contains("ROLLED BACK"), "{info:?}");
        let err = pay(&url, &cred, "clone-1").await.expect_err("the stale clone signs nothing");
        assert_eq!(reason(&err), "ANCHOR_HALTED");
    }
    // 2. A copy level with the first enclave (taken while it was stopped; it restarted since
    //    without writing anything): whichever started last holds the anchor; the other halts
    //    at its next round. Never both.
    stop_enclave(&mut a.stack);
    std::fs::create_dir_all(&level_dir).unwrap();
    copy_dir(&a.stack.data_dir(), &level_dir.join("data"));
    a.stack.start_enclave_again();
    let first = anchor_state(&a.stack.url).await;
    assert_eq!(first.state, "serving", "{first:?}");
    let _enclave = wallet_e2e::start_enclave_with(
        &level_dir,
        "info",
        None,
        &wallet_e2e::EnclaveStorage::Local,
        &args,
    );
    let (_gateway, clone_url) = wallet_e2e::start_gateway_with(&level_dir, "info", None, &[]);
    let clone = anchor_state(&clone_url).await;
    assert_eq!(clone.state, "serving", "{clone:?}");
    assert!(clone.epoch > first.epoch, "the clone bumped the epoch: {clone:?} vs {first:?}");
    let err =
        pay(&a.stack.url, &cred, "third").await.expect_err("the fenced enclave signs nothing");
    assert_eq!(reason(&err), "ANCHOR_HALTED", "{err:?}");
    let err = pay(&a.stack.url, &cred, "fourth").await.expect_err("and stays halted");
    assert_eq!(reason(&err), "ANCHOR_HALTED");
    pay(&clone_url, &cred, "clone-2").await.expect("the instance holding the anchor signs");
    let halted = anchor_state(&a.stack.url).await;
    assert!(
        halted.state.starts_with("halted") && halted.state.contains("another instance"),
        "{halted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_failures_and_a_hostile_relay_never_release_an_unanchored_signature() {
    let mut cluster = EtcdCluster::start(3);
    let a = anchored(&cluster, Relays::Test);
    let url = a.stack.url.clone();
    let w = a.stack.wallet("1").await;
    let cred = Arc::new(a.stack.session(&w, "100", gw::IssueSessionRequest::default()).await);
    let mut signed = 0u64;

    // One member killed (the leader) while 8 agents pay: every payment is signed.
    let mut agents = Vec::new();
    for agent in 0..8 {
        let (url, cred) = (url.clone(), Arc::clone(&cred));
        agents.push(tokio::spawn(async move {
            for n in 0..6 {
                pay(&url, &cred, &format!("load-{agent}-{n}"))
                    .await
                    .expect("signed despite a dead member");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader = cluster.leader().expect("a leader");
    cluster.kill(leader);
    for t in agents {
        t.await.unwrap();
    }
    signed += 48;

    // A second member killed: no quorum. Refused, nothing released.
    let second = (0..3).find(|i| cluster.is_running(*i)).unwrap();
    cluster.kill(second);
    let err = pay(&url, &cred, "no-quorum").await.expect_err("no quorum, no signature");
    assert_eq!(reason(&err), "ANCHOR_UNAVAILABLE", "{err:?}");
    let err = pay(&url, &cred, "no-quorum-2").await.expect_err("refused at once while waiting");
    assert_eq!(reason(&err), "ANCHOR_UNAVAILABLE", "{err:?}");
    // Back when they return.
    cluster.restart(leader);
    cluster.restart(second);
    pay_until_signed(&url, &cred, "back", Duration::from_secs(40)).await;
    signed += 1;

    // The host blackholes the anchor: refused; then lets it through again.
    for r in &a.relays {
        r.set(BLACKHOLE);
    }
    let err = pay(&url, &cred, "blackholed").await.expect_err("no anchor, no signature");
    assert_eq!(reason(&err), "ANCHOR_UNAVAILABLE", "{err:?}");
    for r in &a.relays {
        r.set(FORWARD);
    }
    pay_until_signed(&url, &cred, "unblocked", Duration::from_secs(30)).await;
    signed += 1;

    // etcd's answer to a compare-and-swap that committed is lost (the host drops it): the
    // enclave retries the same compare elsewhere, recognises its own value, releases once.
    // First pin the enclave to member 0.
    a.relays[1].set(BLACKHOLE);
    a.relays[2].set(BLACKHOLE);
    pay_until_signed(&url, &cred, "pin", Duration::from_secs(30)).await;
    signed += 1;
    a.relays[0].set(SWALLOW_ANSWERS);
    a.relays[1].set(FORWARD);
    a.relays[2].set(FORWARD);
    pay(&url, &cred, "ambiguous").await.expect("resolved: signed once");
    signed += 1;
    a.relays[0].set(FORWARD);
    let log = std::fs::read_to_string(a.stack.enclave_log()).unwrap();
    assert!(log.contains("had committed"), "the ambiguous round was recognised as committed");

    // Nothing was released twice or without its round: the enclave counts exactly what the
    // agents received, and the anchored head counts every spend record.
    let status = a.stack.status().await;
    assert_eq!(status.payments_signed, signed, "{status:?}");
    let info = status.anchor.expect("anchor");
    assert_eq!(info.state, "serving", "{info:?}");
    assert!(info.journal_records >= signed, "{info:?}");
}

fn provision(a: &Anchored, extra: &[&str]) -> std::process::Output {
    wallet_e2e::anchor::provision(&a.stack, a.files.path(), KEY, 3, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_head_and_re_anchoring_is_deliberate_and_audited() {
    let cluster = EtcdCluster::start(3);
    let mut a = anchored(&cluster, Relays::Test);
    let w = a.stack.wallet("1").await;
    let cred = a.stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    pay(&a.stack.url, &cred, "p1").await.expect("signed");
    let out = a.stack.walletctl(&["status"], "");
    let text = ok(&out);
    assert!(text.contains("anchor:   serving · /x402-wallet/t1/anchor/head epoch 1"), "{text}");
    // Provisioning twice is refused; a second provisioning needs --reanchor.
    let out = provision(&a, &[]);
    assert!(
        !out.status.success() && wallet_e2e::stderr(&out).contains("already provisioned"),
        "{}",
        wallet_e2e::stderr(&out)
    );

    // The anchor loses the head (its data is gone): the enclave refuses to sign after a restart.
    cluster.etcdctl_ok(&["del", KEY]);
    stop_enclave(&mut a.stack);
    a.stack.start_enclave_again();
    let info = anchor_state(&a.stack.url).await;
    assert!(info.state.contains("holds no head"), "{info:?}");
    let err = pay(&a.stack.url, &cred, "p2").await.expect_err("no head, no signature");
    assert_eq!(reason(&err), "ANCHOR_HALTED");
    // A deliberate, admin-signed re-anchoring accepts the local state.
    let text = ok(&provision(&a, &["--reanchor"]));
    assert!(text.contains("at epoch 1"), "{text}");
    pay(&a.stack.url, &cred, "p3").await.expect("signed again");

    // Deliberately accepting an older state: roll the whole state back, see it refused, then
    // re-anchor naming the head etcd holds (from status).
    stop_enclave(&mut a.stack);
    let snapshot = a.files.path().join("snapshot");
    copy_dir(&a.stack.data_dir(), &snapshot);
    a.stack.start_enclave_again();
    pay(&a.stack.url, &cred, "p4").await.expect("signed");
    let current = anchor_state(&a.stack.url).await;
    stop_enclave(&mut a.stack);
    std::fs::remove_dir_all(a.stack.data_dir()).unwrap();
    copy_dir(&snapshot, &a.stack.data_dir());
    a.stack.start_enclave_again();
    let out = a.stack.walletctl(&["status"], "");
    assert_eq!(out.status.code(), Some(5));
    let err_text = wallet_e2e::stderr(&out);
    assert!(err_text.contains("ROLLED BACK"), "{err_text}");
    // The halted enclave shows what etcd holds: the head to name.
    let halted = anchor_state(&a.stack.url).await;
    assert_eq!(halted.etcd_head, current.head, "{halted:?}");
    assert!(err_text.contains(&current.head), "{err_text}");
    // Re-anchoring without naming the head is refused (the key is not empty).
    let out = provision(&a, &["--reanchor"]);
    assert!(!out.status.success(), "re-anchoring over a head needs --replace-head");
    // Naming a head that is not the one etcd holds is refused.
    let out =
        provision(&a, &["--reanchor", "--replace-head", &"00".repeat(138), "--accept-older-state"]);
    let e = wallet_e2e::stderr(&out);
    assert!(!out.status.success() && e.contains("not the one named"), "{e}");
    // Naming the right head, but onto this older state: refused unless accepted on purpose (a
    // certificate renewal a host routes to an old copy must not roll the anchor back).
    let out = provision(&a, &["--reanchor", "--replace-head", &halted.etcd_head]);
    let e = wallet_e2e::stderr(&out);
    assert!(!out.status.success() && e.contains("older than"), "{e}");
    // An acceptance that names another state than this copy's (delivered by the host to another
    // copy than the one the admin inspected) is refused.
    let mut c = a.stack.client().await;
    c.prepare_anchor(a.stack.signed(AdminRpc::PrepareAnchor, gw::PrepareAnchorRequest::default()))
        .await
        .expect("prepare");
    let other_copy = gw::ProvisionAnchorRequest {
        auth: None,
        ca_certificate_pem: std::fs::read_to_string(a.files.path().join("ca.pem")).unwrap(),
        client_certificate_pem: std::fs::read_to_string(
            a.stack.dir.path().join("home/anchor-client.pem"),
        )
        .unwrap(),
        server_name: wallet_e2e::etcd::SERVER_NAME.into(),
        key: KEY.into(),
        members: 3,
        reanchor: true,
        replace_head: halted.etcd_head.clone(),
        accept_older_state: true,
        expect_journal_records: halted.local_journal_records,
        expect_audit_records: halted.local_audit_records,
        expect_store_seq: halted.local_store_seq,
        // Another copy: same counts, another audit history.
        expect_audit_hash: "00".repeat(32),
        shared_prefix: String::new(),
        join: false,
    };
    let err = c
        .provision_anchor(a.stack.signed(AdminRpc::ProvisionAnchor, other_copy))
        .await
        .expect_err("another state than the one named");
    assert!(err.message().contains("another copy"), "{err:?}");
    let text = ok(&provision(
        &a,
        &["--reanchor", "--replace-head", &halted.etcd_head, "--accept-older-state"],
    ));
    assert!(text.contains(&format!("at epoch {}", current.epoch + 1)), "{text}");
    pay(&a.stack.url, &cred, "p5").await.expect("the accepted state signs");
    // The audit log records which head was accepted, each time.
    let out = a.stack.walletctl(&["audit", "show", "--kind", "admin", "--last", "100"], "");
    let log = ok(&out);
    assert!(log.matches("ProvisionAnchor").count() >= 3, "{log}");
    assert!(log.contains("accepted head"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_rolls_forward_and_keeps_every_released_spend() {
    let cluster = EtcdCluster::start(3);
    let mut a = anchored(&cluster, Relays::Test);
    let w = a.stack.wallet("1").await;
    let cred = Arc::new(a.stack.session(&w, "100", gw::IssueSessionRequest::default()).await);
    let received = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    for round in 0..4 {
        let mut agents = Vec::new();
        for agent in 0..8 {
            let (url, cred, received) =
                (a.stack.url.clone(), Arc::clone(&cred), Arc::clone(&received));
            agents.push(tokio::spawn(async move {
                for n in 0..40 {
                    let key = format!("r{round}-a{agent}-{n}");
                    if let Ok(r) = pay(&url, &cred, &key).await {
                        let v: serde_json::Value =
                            serde_json::from_str(&r.payment_payload_json).unwrap();
                        let nonce =
                            v["payload"]["authorization"]["nonce"].as_str().unwrap().to_owned();
                        assert!(
                            received.lock().unwrap().insert(nonce),
                            "a signature received twice"
                        );
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(400 + 150 * round)).await;
        a.stack.enclave.kill();
        for t in agents {
            t.await.unwrap();
        }
        a.stack.start_enclave_again();
        let info = anchor_state(&a.stack.url).await;
        assert_eq!(
            info.state, "serving",
            "a crash leaves the stores ahead of the anchor, never behind: {info:?}"
        );
    }
    pay_until_signed(&a.stack.url, &cred, "after", Duration::from_secs(20)).await;
    let info = anchor_state(&a.stack.url).await;
    let received = received.lock().unwrap().clone();
    assert!(!received.is_empty(), "some payments were signed between the kills");
    // Every signature an agent received is in the ledger, once; the anchored head never
    // counts more than the ledger holds.
    a.stack.enclave.kill();
    let data = a.stack.data_dir();
    let sealer =
        wallet_enclave::platform::simulated::sealer_from_key_file(&data.join("sealing.key"))
            .unwrap();
    let (_journal, records) =
        wallet_enclave::journal::Journal::open(&data.join("spends.journal"), sealer).unwrap();
    let mut ledger = std::collections::HashSet::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(r).unwrap();
        if v["kind"] == "spend" {
            let p: serde_json::Value =
                serde_json::from_str(v["payload_json"].as_str().unwrap()).unwrap();
            let nonce = p["payload"]["authorization"]["nonce"].as_str().unwrap().to_owned();
            assert!(ledger.insert(nonce), "an authorization is recorded twice");
        }
    }
    for n in &received {
        assert!(ledger.contains(n), "a released signature ({n}) is missing from the ledger");
    }
    assert!(info.journal_records <= records.len() as u64, "{info:?} vs {} records", records.len());
    assert!(info.journal_records >= received.len() as u64, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_from_two_histories_are_refused_even_when_every_count_is_high_enough() {
    let cluster = EtcdCluster::start(3);
    let mut a = anchored(&cluster, Relays::Test);
    let w = a.stack.wallet("1").await;
    let cred = Arc::new(a.stack.session(&w, "1", gw::IssueSessionRequest::default()).await);
    // Three requests signed before p1: p1 moves the replay floor past them, so while the anchor
    // is blocked they go straight to their spend records (no floor advance to wait for it).
    let early: Vec<gw::SignPaymentRequest> = (0..3)
        .map(|i| cred.sign_request(&header(CENT), "", "", &format!("unanchored-{i}"), now_ms()))
        .collect();
    pay(&a.stack.url, &cred, "p1").await.expect("signed");
    // The host copies the running (idle) enclave's state: level with the anchored head.
    let copy = a.files.path().join("copy");
    copy_dir(&a.stack.data_dir(), &copy);
    // It blocks the anchor and has the enclave write spends that are never anchored (three in
    // one round, so that this journal ends up longer than the other history's).
    for r in &a.relays {
        r.set(BLACKHOLE);
    }
    let mut tries = Vec::new();
    for req in early {
        let url = a.stack.url.clone();
        tries.push(tokio::spawn(async move {
            let mut c = WalletGatewayClient::connect(url).await.expect("connect");
            c.sign_payment(req).await
        }));
    }
    for t in tries {
        let err = t.await.unwrap().expect_err("not released");
        assert_eq!(reason(&err), "ANCHOR_UNAVAILABLE");
    }
    stop_enclave(&mut a.stack);
    let first_journal = a.files.path().join("first.journal");
    std::fs::copy(a.stack.data_dir().join("spends.journal"), &first_journal).unwrap();
    assert_eq!(
        frames(&std::fs::read(&first_journal).unwrap()).len(),
        4,
        "p1 and the three unanchored spends are in the first instance's journal"
    );
    // A second instance from the copy takes the anchor over and anchors a payment of its own.
    for r in &a.relays {
        r.set(FORWARD);
    }
    std::fs::remove_dir_all(a.stack.data_dir()).unwrap();
    copy_dir(&copy, &a.stack.data_dir());
    a.stack.start_enclave_again();
    assert_eq!(anchor_state(&a.stack.url).await.state, "serving");
    pay(&a.stack.url, &cred, "p2").await.expect("signed by the instance holding the anchor");
    stop_enclave(&mut a.stack);
    // The host now puts the first instance's journal (longer, none of p2) under the second's
    // audit log, state and commit head: p2 would be forgotten by the budget.
    let second = a.files.path().join("second");
    copy_dir(&a.stack.data_dir(), &second);
    let second_journal = std::fs::read(second.join("spends.journal")).unwrap();
    std::fs::copy(&first_journal, a.stack.data_dir().join("spends.journal")).unwrap();
    a.stack.start_enclave_again();
    let info = anchor_state(&a.stack.url).await;
    assert!(info.state.starts_with("halted") && info.state.contains("FORKED"), "{info:?}");
    let err = pay(&a.stack.url, &cred, "p3").await.expect_err("a mixed state signs nothing");
    assert_eq!(reason(&err), "ANCHOR_HALTED");
    stop_enclave(&mut a.stack);
    // Finer: only p2's record replaced by the first instance's record at the same position
    // (sealed with the same key and position, so it opens): same count, same everything else.
    let restore = |stack: &Stack| {
        std::fs::remove_dir_all(stack.data_dir()).unwrap();
        copy_dir(&second, &stack.data_dir());
    };
    restore(&a.stack);
    let first = frames(&std::fs::read(&first_journal).unwrap());
    let mut records = frames(&second_journal);
    let at = records.len() - 1;
    assert!(first.len() > at, "the first journal has a record at p2's position");
    assert_ne!(first[at], records[at]);
    records[at] = first[at].clone();
    let mut spliced: Vec<u8> = records.concat();
    spliced.resize(second_journal.len(), 0);
    std::fs::write(a.stack.data_dir().join("spends.journal"), &spliced).unwrap();
    a.stack.start_enclave_again();
    let info = anchor_state(&a.stack.url).await;
    assert!(
        info.state.contains("FORKED") && info.state.contains("spend journal"),
        "a spliced record is caught by the journal's chain: {info:?}"
    );
    // The genuine state back: the enclave serves again.
    stop_enclave(&mut a.stack);
    restore(&a.stack);
    a.stack.start_enclave_again();
    assert_eq!(anchor_state(&a.stack.url).await.state, "serving");
    pay(&a.stack.url, &cred, "p4").await.expect("signed");
}

/// The journal's frames (4-byte big-endian length and sealed record), up to the zeros after
/// the last one.
fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push(bytes[at..at + 4 + len].to_vec());
        at += 4 + len;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_enclave_renews_its_certificate_by_re_anchoring() {
    let cluster = EtcdCluster::start(3);
    let a = anchored(&cluster, Relays::Test);
    let w = a.stack.wallet("1").await;
    let cred = a.stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    pay(&a.stack.url, &cred, "before").await.expect("signed");
    let before = anchor_state(&a.stack.url).await;
    // A payment after the admin read the head: the head moved on; renewal still works.
    pay(&a.stack.url, &cred, "between").await.expect("signed");
    let text = ok(&provision(&a, &["--reanchor", "--replace-head", &before.etcd_head]));
    assert!(text.contains(&format!("at epoch {}", before.epoch + 1)), "{text}");
    let after = anchor_state(&a.stack.url).await;
    assert_eq!(after.state, "serving", "{after:?}");
    assert_ne!(after.client_public_key, "", "{after:?}");
    pay(&a.stack.url, &cred, "after").await.expect("signed under the new certificate");
    assert_eq!(a.stack.status().await.payments_signed, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_the_host_runs_with_its_own_ca_is_not_believed() {
    let cluster = EtcdCluster::start(3);
    let mut a = anchored(&cluster, Relays::Test);
    let w = a.stack.wallet("1").await;
    let cred = a.stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    pay(&a.stack.url, &cred, "p1").await.expect("signed");
    // The host starts an etcd of its own (its own CA, certificates for the same name) and
    // points the enclave's relays at it.
    let evil = EtcdCluster::start(1);
    stop_enclave(&mut a.stack);
    a.relays.clear();
    for i in 0..3 {
        let path = relay_path(a.files.path(), i);
        let _ = std::fs::remove_file(&path);
        a.relays.push(TestRelay::spawn(path, evil.client_endpoints()[0]));
    }
    a.stack.start_enclave_again();
    let info = anchor_state(&a.stack.url).await;
    assert!(info.state.starts_with("waiting"), "{info:?}");
    let err = pay(&a.stack.url, &cred, "p2").await.expect_err("no anchor it trusts, no signature");
    assert_eq!(reason(&err), "ANCHOR_UNAVAILABLE", "{err:?}");
    let log = std::fs::read_to_string(a.stack.enclave_log()).unwrap();
    assert!(
        log.contains("invalid peer certificate"),
        "the enclave refused the server certificate itself: {log}"
    );
    assert!(evil.etcdctl_ok(&["get", KEY]).trim().is_empty(), "nothing was written to it");
}
