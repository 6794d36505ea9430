//! `history-scale`: what a long history costs at start-up. Pays `HISTORY_PAYMENTS` payments
//! (default 1,000,000; each with its own idempotency key, as the agent tools send) through the
//! release stack, then restarts the enclave and measures its start-up time, its peak and
//! resident memory, and the sizes of the spend journal, the audit log and the ledger snapshots
//! (start-up reads the newest snapshot and what follows it). `HISTORY_IDEMPOTENCY_TTL` (seconds)
//! sets the enclave's `--idempotency-ttl`: shorter than the run, it stands for a history much
//! longer than the TTL, whose keys a snapshot no longer holds.
//!
//! Run by `scripts/history-scale.sh`; figures in BENCHMARKS.md ("A long history at start-up").
//! It measures; the only checks are that every payment is signed and the restarted enclave
//! counts them all.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use wallet_e2e::{header, memory_kib, now_ms, Stack};
use wallet_proto::gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient};

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn size_of(path: &std::path::Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.filter_map(Result::ok).map(|e| size_of(&e.path())).sum())
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

#[tokio::main]
async fn main() {
    let n: u64 =
        std::env::var("HISTORY_PAYMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let clients = 32u64;
    let ttl: Option<u64> =
        std::env::var("HISTORY_IDEMPOTENCY_TTL").ok().and_then(|v| v.parse().ok());
    let mut stack = Stack::start_with(wallet_e2e::StackOptions {
        log_level: Some("warn".to_owned()),
        enclave_args: ttl
            .map(|t| vec!["--idempotency-ttl".to_owned(), t.to_string()])
            .unwrap_or_default(),
        ..wallet_e2e::StackOptions::default()
    });
    println!("idempotency ttl = {}", ttl.map_or("default (24 h)".to_owned(), |t| format!("{t} s")));
    let w = stack.wallet("1").await;
    let cred = Arc::new(
        stack
            .session(
                &w,
                "1000000000",
                gw::IssueSessionRequest { ttl_seconds: 7 * 86_400, ..Default::default() },
            )
            .await,
    );
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(stack.client().await);
    }
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let payment = header("1");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (next, failed, cred, payment) =
            (Arc::clone(&next), Arc::clone(&failed), Arc::clone(&cred), payment.clone());
        let mut client: WalletGatewayClient<_> = conns[(c % 4) as usize].clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let r = cred.sign_request(&payment, "", "", &format!("h{i}"), now_ms());
                if client.sign_payment(r).await.is_err() {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                if (i + 1) % 100_000 == 0 {
                    eprintln!("{} payments in {:.0} s", i + 1, start.elapsed().as_secs_f64());
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let took = start.elapsed();
    let failed = failed.load(Ordering::SeqCst);
    println!(
        "payments = {n} in {:.0} s ({:.0}/s), {failed} failed",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    assert_eq!(failed, 0, "every payment must be signed");
    let data = stack.data_dir();
    let pid = stack.enclave.0.id();
    let (rss, hwm) = memory_kib(pid);
    println!("enclave rss after the payments = {} (peak {})", mib(rss * 1024), mib(hwm * 1024));
    for (what, path) in [
        ("spend journal", data.join("spends.journal")),
        ("audit log", data.join("audit.log")),
        ("state store", data.join("state")),
        ("ledger snapshot 0", data.join("ledger.snapshot.0")),
        ("ledger snapshot 1", data.join("ledger.snapshot.1")),
    ] {
        println!("{what} = {} ({} bytes)", mib(size_of(&path)), size_of(&path));
    }

    stack.enclave.terminate();
    let t = Instant::now();
    stack.start_enclave_again();
    let started = t.elapsed();
    let pid = stack.enclave.0.id();
    let (rss, hwm) = memory_kib(pid);
    println!(
        "start-up with {n} past payments = {:.2} s (process start to its socket open)",
        started.as_secs_f64()
    );
    println!("enclave peak rss during start-up (VmHWM) = {}", mib(hwm * 1024));
    println!("enclave rss at rest after start-up = {}", mib(rss * 1024));
    let mut client = stack.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match client.get_status(gw::GetStatusRequest {}).await {
            Ok(s) => break s.into_inner(),
            Err(e) => {
                assert!(Instant::now() < deadline, "the restarted enclave does not answer: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(status.payments_signed, n, "the restarted enclave counts every payment");
}
