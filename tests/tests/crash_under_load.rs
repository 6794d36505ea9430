//! No overspend and no lost spend, with the enclave SIGKILLed repeatedly under concurrent load.
//!
//! Agents pay concurrently (retrying with the same idempotency key when the enclave is down)
//! while the enclave is killed and restarted. Afterwards the journal is read directly: every
//! signature an agent received must be in the ledger, and the ledger must stay within the cap.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use wallet_e2e::{header, now_ms, Stack};
use wallet_proto::gateway::v1 as gw;

const KILLS: usize = 8;
const AGENTS: usize = 16;

fn nonce_of(payload_json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(payload_json).unwrap();
    v["payload"]["authorization"]["nonce"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_never_overspends_or_loses_a_released_spend() {
    let mut stack = Stack::start();
    let w = stack.wallet("1").await;
    // 300 payments of 0.01.
    let cred = Arc::new(stack.session(&w, "3", gw::IssueSessionRequest::default()).await);
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = stack.url.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let (cred, received, url, failures) =
            (Arc::clone(&cred), Arc::clone(&received), url.clone(), Arc::clone(&failures));
        agents.push(tokio::spawn(async move {
            let mut client =
                wallet_proto::gateway::v1::wallet_gateway_client::WalletGatewayClient::connect(url)
                    .await
                    .unwrap();
            let mut n = 0;
            'payments: loop {
                n += 1;
                let key = format!("agent{a}-{n}");
                // Retry the same key until the enclave answers: a spend recorded before a crash
                // comes back as an idempotent replay, never as a second charge.
                loop {
                    assert!(Instant::now() < deadline, "agents did not finish in time");
                    match client
                        .sign_payment(cred.sign_request(&header("10000"), "", "", &key, now_ms()))
                        .await
                    {
                        Ok(r) => {
                            received.lock().unwrap().push(r.into_inner().payment_payload_json);
                            // Pace the agents so that payments span all the crashes.
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            break;
                        }
                        Err(e) if e.message().starts_with("SESSION_CAP") => break 'payments,
                        Err(_) => {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
        }));
    }
    for i in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(10 + 5 * (i as u64 % 4))).await;
        stack.crash_and_restart_enclave();
    }
    for a in agents {
        a.await.unwrap();
    }

    let failures = failures.load(std::sync::atomic::Ordering::Relaxed);
    assert!(failures > 0, "the crashes must have hit requests in flight");
    let received = Arc::try_unwrap(received).unwrap().into_inner().unwrap();
    let distinct: HashSet<String> = received.iter().map(|p| nonce_of(p)).collect();
    assert!(
        distinct.len() <= 300,
        "agents received {} distinct authorizations for a cap worth 300",
        distinct.len()
    );
    let spent = stack.spent(&cred.session_id).await;

    // Read the ledger itself.
    stack.enclave.kill();
    let data = stack.data_dir();
    let sealer = wallet_enclave::seal::Sealer::load_or_create(&data.join("sealing.key")).unwrap();
    let (_journal, records) =
        wallet_enclave::journal::Journal::open(&data.join("spends.journal"), sealer).unwrap();
    let spends: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap())
        .filter(|v| v["kind"] == "spend")
        .collect();
    let ledger: HashSet<String> =
        spends.iter().map(|v| nonce_of(v["payload_json"].as_str().unwrap())).collect();
    assert_eq!(ledger.len(), spends.len(), "no authorization is recorded twice");
    assert_eq!(
        spends.len(),
        300,
        "agents paid until the cap: the ledger holds exactly the cap's worth"
    );
    assert_eq!(spent, "3", "the session total agrees with the ledger");
    for n in &distinct {
        assert!(ledger.contains(n), "a released signature ({n}) is missing from the ledger");
    }
    eprintln!("{KILLS} kills, {failures} failed calls retried: {} released, {} in the ledger (the difference: spends whose signature was lost in a crash)", distinct.len(), ledger.len());
}
