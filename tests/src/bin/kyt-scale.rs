//! `kyt-scale`: a million-entry KYT list, measured — `walletctl kyt import` of the file
//! (wall time, exit code), the enclave's peak and resident memory during the import and at rest,
//! its start-up time with the list, and that a listed payee is refused after the restart.
//!
//! Run by `scripts/kyt-scale.sh` (release binaries, simulated enclave; figures in
//! BENCHMARKS.md). `KYT_ENTRIES` changes the count (default 1,000,000). It measures; the only
//! checks are that the import succeeds, the list holds every entry and screening refuses a
//! listed payee.

use std::{path::Path, time::Instant};

use wallet_e2e::{header_json, memory_kib, now_ms, Stack};
use wallet_proto::gateway::v1 as gw;

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `n` distinct random addresses, one per line, lower-case hex.
fn write_list(path: &Path, n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut text = String::with_capacity(n * 43);
    let mut first = String::new();
    for i in 0..n {
        let (a, b, c) = (next(), next(), next());
        let line = format!("0x{a:016x}{b:016x}{:08x}", c as u32);
        if i == 0 {
            first.clone_from(&line);
        }
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write the list");
    first
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize =
        std::env::var("KYT_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut stack = Stack::start();
    let file = stack.dir.path().join("kyt.txt");
    let listed = write_list(&file, n);
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let pid = stack.enclave.0.id();
    let (rss0, _) = memory_kib(pid);
    println!("entries = {n} (file {} bytes; {} of addresses)", bytes, mib(n as u64 * 20 / 1024));
    println!("enclave rss before import = {}", mib(rss0));

    let t = Instant::now();
    let out = stack.walletctl(&["kyt", "import", file.to_str().expect("utf-8 path")], "");
    let took = t.elapsed();
    let (rss1, hwm1) = memory_kib(pid);
    println!(
        "import: exit {:?} in {:.2} s; {}",
        out.status.code(),
        took.as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!("enclave peak rss during import (VmHWM) = {}", mib(hwm1));
    println!("enclave rss after import = {}", mib(rss1));
    assert_eq!(stack.status().await.kyt_entries, n as u64);

    // Start-up with the list: from the process start until it answers.
    stack.enclave.terminate();
    let t = Instant::now();
    stack.start_enclave_again();
    let listening = t.elapsed();
    let mut client = stack.client().await;
    loop {
        if client.get_status(gw::GetStatusRequest {}).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let startup = t.elapsed();
    let pid = stack.enclave.0.id();
    let (rss2, hwm2) = memory_kib(pid);
    println!(
        "start-up with the list = {:.2} s (process start to its socket open, state loaded)",
        listening.as_secs_f64()
    );
    println!(
        "first answer through the gateway = {:.2} s after the start (its reconnect included)",
        startup.as_secs_f64()
    );
    println!("enclave peak rss during start-up (VmHWM) = {}", mib(hwm2));
    println!("enclave rss at rest with the list = {}", mib(rss2));

    // Screening still refuses a listed payee.
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    let req = header_json(&format!(
        r#"{{"x402Version":2,"resource":{{"url":"https://api.example.com/x"}},"accepts":[{{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"{listed}","maxTimeoutSeconds":60,"extra":{{"name":"USDC","version":"2"}}}}]}}"#
    ));
    let denied = client
        .sign_payment(cred.sign_request(&req, "", "", "listed", now_ms()))
        .await
        .expect_err("a listed payee is refused");
    assert!(denied.message().contains("KYT_DENIED"), "{denied:?}");
    println!("a listed payee after the restart: refused (KYT_DENIED)");
}
