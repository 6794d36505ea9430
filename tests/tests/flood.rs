//! Issue 9, item 4: resource exhaustion must never take the signer (or the gateway) down. Each
//! test floods one process of the real stack, started under a low descriptor limit of its own
//! (`ulimit -n` in the shell that execs it), and shows that the others are still served and
//! that the process still runs.

use std::time::{Duration, Instant};

use wallet_e2e::{header, now_ms, Stack, StackOptions};
use wallet_proto::gateway::v1 as gw;

/// The descriptor limit the flooded process runs under.
const NOFILE: u32 = 256;
/// Connections the flood opens: far above both the limit and the process's connection cap.
const FLOOD: usize = 2_000;

async fn pay(stack: &Stack, cred: &wallet_client::Credential, key: &str) {
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        stack.client().await.sign_payment(cred.sign_request(
            &header("10000"),
            "",
            "",
            key,
            now_ms(),
        )),
    )
    .await
    .expect("payment answered in time");
    let r = r.unwrap_or_else(|e| panic!("payment {key} failed: {e:?}"));
    assert!(!r.into_inner().payment_signature.is_empty());
}

/// CPU time (user + system, clock ticks) of a process, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state field.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enclave_survives_a_connection_flood_and_keeps_signing() {
    let mut stack =
        Stack::start_with(StackOptions { enclave_nofile: Some(NOFILE), ..StackOptions::default() });
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "100", gw::IssueSessionRequest::default()).await;
    pay(&stack, &cred, "before").await;

    // The flood: idle connections straight to the enclave socket, as a buggy or hostile host
    // process would open them. Without a connection cap, the enclave runs out of descriptors
    // after ~250 of them and its accept loop ended the process.
    let sock = stack.dir.path().join("enclave.sock");
    let mut flood = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while flood.len() < FLOOD && Instant::now() < deadline {
        match tokio::net::UnixStream::connect(&sock).await {
            Ok(c) => flood.push(c),
            Err(_) => {
                if let Ok(Some(status)) = stack.enclave.0.try_wait() {
                    panic!(
                        "the enclave exited ({status}) after {} flood connections; see {}",
                        flood.len(),
                        stack.enclave_log().display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    assert!(flood.len() > 2 * NOFILE as usize, "the flood opened only {} connections", flood.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        matches!(stack.enclave.0.try_wait(), Ok(None)),
        "the enclave exited under the flood; see {}",
        stack.enclave_log().display()
    );

    // The gateway's connection is still served, while the flood is held open.
    for i in 0..20 {
        pay(&stack, &cred, &format!("during-{i}")).await;
    }
    let log = std::fs::read_to_string(stack.enclave_log()).expect("enclave log");
    assert!(log.contains("connection limit reached"), "the refusals are logged:\n{log}");

    // The flood ends: the enclave is still the same process, serves, and stops cleanly.
    drop(flood);
    pay(&stack, &cred, "after").await;
    assert!(matches!(stack.enclave.0.try_wait(), Ok(None)), "the enclave still runs");
    assert!(stack.enclave.terminate(), "the enclave stops cleanly after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sheds_a_flood_and_serves_the_others() {
    let stack = Stack::start_with(StackOptions {
        gateway_nofile: Some(NOFILE),
        gateway_args: ["--max-connections", "128", "--max-enclave-in-flight", "64"]
            .map(str::to_owned)
            .to_vec(),
        ..StackOptions::default()
    });
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "100", gw::IssueSessionRequest::default()).await;
    // Clients connected before the flood.
    let mut legit = stack.client().await;
    let flooder = stack.client().await;
    legit.get_status(gw::GetStatusRequest {}).await.expect("status");

    // Flood 1: idle TCP connections, far past the connection cap and the descriptor limit.
    let addr = stack.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while idle.len() < FLOOD && Instant::now() < deadline {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(c) => idle.push(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    assert!(idle.len() > 2 * NOFILE as usize, "the flood opened only {}", idle.len());
    // With the flood held, the gateway is quiet: connections past its cap were closed, so its
    // accept loop does not spin on EMFILE (tonic's own loop retries at once, burning a core).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = stack.gateway.0.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(pid) - before;
    assert!(spent < 60, "the gateway burnt {spent} ticks in 2 s with the flood held (spinning)");

    // Flood 2: 2,000 concurrent calls on one connection, against an enclave link of 64 slots.
    let mut calls = Vec::new();
    for _ in 0..FLOOD {
        let mut c = flooder.clone();
        calls.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(60), c.get_status(gw::GetStatusRequest {}))
                .await
        }));
    }
    // Meanwhile the other client pays, and every payment goes through.
    for i in 0..10 {
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            legit.sign_payment(cred.sign_request(
                &header("10000"),
                "",
                "",
                &format!("k{i}"),
                now_ms(),
            )),
        )
        .await
        .expect("payment answered in time during the flood");
        match r {
            Ok(_) => {}
            // Shed by the gateway: a clear, retryable refusal, never a hang.
            Err(e) if e.code() == tonic::Code::Unavailable && e.message().contains("saturated") => {
            }
            Err(e) => panic!("payment {i} failed: {e:?}"),
        }
    }
    let (mut ok, mut shed) = (0, 0);
    for c in calls {
        match c.await.expect("task").expect("every flood call ends within 60 s") {
            Ok(_) => ok += 1,
            Err(e) if e.code() == tonic::Code::Unavailable && e.message().contains("saturated") => {
                shed += 1;
            }
            Err(e) => panic!("unexpected failure {e:?}"),
        }
    }
    assert_eq!(ok + shed, FLOOD);
    assert!(ok > 0);
    eprintln!("flood calls: {ok} answered, {shed} shed");

    // The floods end: new clients are served by the same gateway process.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    pay(&stack, &cred, "after").await;
    let mut gateway = stack.gateway;
    assert!(matches!(gateway.0.try_wait(), Ok(None)), "the gateway still runs");
}
