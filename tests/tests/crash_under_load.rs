//! No overspend and no lost spend, with the enclave SIGKILLed repeatedly under concurrent load.
//!
//! 64 agents over 8 sessions pay concurrently (retrying with the same idempotency key when the
//! enclave is down) against tight limits: a session cap, a per-session hourly budget and a
//! wallet-wide daily budget, while the enclave is killed with SIGKILL and restarted 50 times.
//! Afterwards the journal is read directly: every signature an agent received must be in the
//! ledger, and neither the ledger nor what the agents received may exceed any limit. A spend
//! recorded whose signature was lost in a crash is allowed (it is in the ledger but no agent
//! holds it) and is reported.

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::AtomicUsize, atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use wallet_e2e::{header, now_ms, Stack};
use wallet_proto::gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient};

const KILLS: usize = 50;
const SESSIONS: usize = 8;
const AGENTS_PER_SESSION: usize = 8;
/// Each session's cap: 40 payments of 0.01.
const CAP: &str = "0.40";
/// The policy: at most 30 payments of 0.01 per session per hour, 150 per wallet per day. The
/// windows bind first (8 × 30 = 240 > 150 < 8 × 40): they must survive every restart.
const POLICY: &str = r#"version = 1
[session]
budgets = [{ per = "1h", max = "0.30" }]
[wallet]
budgets = [{ per = "1d", max = "1.50" }]
[[rule]]
action = "allow"
"#;
const SESSION_PAYMENTS: usize = 30;
const WALLET_PAYMENTS: usize = 150;

fn nonce_of(payload_json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(payload_json).unwrap();
    v["payload"]["authorization"]["nonce"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_never_overspends_or_loses_a_released_spend() {
    let mut stack = Stack::start();
    let w = stack.wallet("1").await;
    stack.set_document(&w, POLICY).await;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(Arc::new(stack.session(&w, CAP, gw::IssueSessionRequest::default()).await));
    }
    // Signatures received, per session.
    let received: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut agents = Vec::new();
    for (s, cred) in sessions.iter().enumerate() {
        for a in 0..AGENTS_PER_SESSION {
            let (cred, received, url, failures) =
                (Arc::clone(cred), Arc::clone(&received), stack.url.clone(), Arc::clone(&failures));
            agents.push(tokio::spawn(async move {
                let mut client = WalletGatewayClient::connect(url).await.unwrap();
                let mut n = 0;
                'payments: loop {
                    n += 1;
                    let key = format!("s{s}-agent{a}-{n}");
                    // Retry the same key until the enclave answers: a spend recorded before a
                    // crash comes back as an idempotent replay, never as a second charge.
                    loop {
                        assert!(Instant::now() < deadline, "agents did not finish in time");
                        match client
                            .sign_payment(cred.sign_request(
                                &header("10000"),
                                "",
                                "",
                                &key,
                                now_ms(),
                            ))
                            .await
                        {
                            Ok(r) => {
                                received
                                    .lock()
                                    .unwrap()
                                    .entry(cred.session_id.clone())
                                    .or_default()
                                    .push(r.into_inner().payment_payload_json);
                                // Pace the agents so that payments span the crashes.
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                break;
                            }
                            Err(e)
                                if ["SESSION_CAP", "SESSION_BUDGET", "WALLET_BUDGET"]
                                    .iter()
                                    .any(|r| e.message().starts_with(r)) =>
                            {
                                break 'payments
                            }
                            Err(_) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                }
            }));
        }
    }
    for i in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(5 + 5 * (i as u64 % 4))).await;
        stack.crash_and_restart_enclave();
    }
    for a in agents {
        a.await.unwrap();
    }
    let failures = failures.load(Ordering::Relaxed);
    assert!(failures > 0, "the crashes must have hit requests in flight");
    let received = Arc::try_unwrap(received).unwrap().into_inner().unwrap();
    let mut spent = HashMap::new();
    for cred in &sessions {
        spent.insert(cred.session_id.clone(), stack.spent(&cred.session_id).await);
    }

    // Read the ledger itself.
    stack.enclave.kill();
    let data = stack.data_dir();
    let sealer =
        wallet_enclave::platform::simulated::sealer_from_key_file(&data.join("sealing.key"))
            .unwrap();
    let (_journal, records) =
        wallet_enclave::journal::Journal::open(&data.join("spends.journal"), sealer).unwrap();
    let spends: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap())
        .filter(|v| v["kind"] == "spend")
        .collect();
    let mut ledger: HashMap<String, HashSet<String>> = HashMap::new();
    for v in &spends {
        let new = ledger
            .entry(v["session_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(nonce_of(v["payload_json"].as_str().unwrap()));
        assert!(new, "an authorization is recorded twice");
    }
    let mut lost = 0;
    let (mut ledger_total, mut received_total) = (0, 0);
    for cred in &sessions {
        let id = &cred.session_id;
        let in_ledger = ledger.get(id).map_or(0, HashSet::len);
        let got: HashSet<String> =
            received.get(id).map(|v| v.iter().map(|p| nonce_of(p)).collect()).unwrap_or_default();
        assert!(
            got.len() <= SESSION_PAYMENTS,
            "session {id}: agents received {} authorizations for an hourly budget worth {SESSION_PAYMENTS}",
            got.len()
        );
        assert!(
            in_ledger <= SESSION_PAYMENTS,
            "session {id}: the ledger holds {in_ledger} spends for an hourly budget worth {SESSION_PAYMENTS}"
        );
        assert_eq!(
            spent[id],
            wallet_policy::amount::format_decimal(wallet_policy::U256::from(in_ledger), 2),
            "session {id}: the session total agrees with the ledger after {KILLS} restarts"
        );
        for n in &got {
            assert!(
                ledger[id].contains(n),
                "session {id}: a released signature ({n}) is missing from the ledger"
            );
        }
        ledger_total += in_ledger;
        received_total += got.len();
        lost += in_ledger - got.len();
    }
    assert!(
        received_total <= WALLET_PAYMENTS,
        "agents received {received_total} for a daily budget worth {WALLET_PAYMENTS}"
    );
    assert_eq!(
        ledger_total, WALLET_PAYMENTS,
        "agents paid until the wallet's daily budget was used up, and not one payment further"
    );
    eprintln!("{KILLS} kills, {failures} failed calls retried; {lost} spends recorded whose signature no agent received (allowed)");
}
