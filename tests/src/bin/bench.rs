//! `wallet-bench`: measures, in one run on this machine,
//!
//! 1. raw k256 signing (RFC 6979, recoverable, prehash) on one core: the ceiling of one signer;
//! 2. end-to-end `SignPayment` through the real gateway and simulated enclave (release binaries,
//!    durable spend record with fsync before release) at 1 and 64 concurrent clients:
//!    throughput, p50, p99.
//!
//! 3. the cost of the full policy: the same end-to-end runs on a second stack whose enclave holds
//!    a million-entry KYT list and whose wallet has a policy document with time-window budgets,
//!    a payee cap, rate limits, payee lists, ordered rules and an approval threshold (not reached),
//!    interleaved with the basic-policy stack, round after round, at 64 clients and at 1: first
//!    right after the import, then after a restart of that enclave (the steady state).
//!
//! Agents' requests are signed by their session keys before the timed phase (the agent's own
//! CPU is not the wallet's). Usage: `scripts/bench.sh` (builds release first).
//!
//! `scripts/bench.sh anchor` measures the rollback anchor instead (a 3-member etcd cluster with
//! mutual TLS on this machine, `scripts/etcd/install.sh`): the same payments on an unanchored
//! stack and on an anchored one (the gateway relaying the enclave's TLS to etcd), interleaved
//! round after round, at 1 and 64 clients; then 16 clients paying on the anchored stack while
//! etcd's leader is killed: the latency of payments around the leader change.
//!
//! `scripts/bench.sh group` measures one wallet's budgets shared by a group of enclaves: an
//! anchored enclave that shares nothing, the first member of a group alone, and both members
//! (the second a copy of the first's state, joined), interleaved, at 1 and 64 clients.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use wallet_proto::AdminRpc;

use k256::ecdsa::SigningKey;
use rand_core::{OsRng, RngCore as _};
use tokio::sync::Mutex;
use wallet_e2e::{header, now_ms, Stack};
use wallet_proto::gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

#[allow(clippy::cast_precision_loss)]
fn raw_k256(n: usize) -> (f64, Duration) {
    let key = SigningKey::random(&mut OsRng);
    let mut digests = vec![[0u8; 32]; n];
    for d in &mut digests {
        OsRng.fill_bytes(d);
    }
    // Warm up.
    for d in digests.iter().take(200) {
        let _ = key.sign_prehash_recoverable(d).expect("sign");
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for d in &digests {
        let t = Instant::now();
        let _ = std::hint::black_box(key.sign_prehash_recoverable(d).expect("sign"));
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    (n as f64 / total.as_secs_f64(), percentile(&lat, 0.5))
}

struct Run {
    ok: usize,
    throughput: f64,
    p50: Duration,
    p99: Duration,
}

/// Pre-signed payment requests (fresh: well inside the 120 s window), one batch per client, for a
/// new wallet and session with room for all of them.
async fn batches(
    stack: &Stack,
    tag: &str,
    clients: usize,
    per_client: usize,
    policy: Option<&str>,
) -> Vec<Vec<gw::SignPaymentRequest>> {
    let w = stack.wallet("1").await;
    if let Some(doc) = policy {
        stack.set_document(&w, doc).await;
    }
    let cred = stack
        .session(
            &w,
            "1000000000",
            gw::IssueSessionRequest { ttl_seconds: 3600, ..Default::default() },
        )
        .await;
    let hdr = header("1000");
    (0..clients)
        .map(|c| {
            (0..per_client)
                .map(|i| {
                    cred.sign_request(&hdr, "", "", &format!("{tag}{clients}-{c}-{i}"), now_ms())
                })
                .collect()
        })
        .collect()
}

/// Runs each batch on its own task through `pay` (true when signed), timing every call.
#[allow(clippy::cast_precision_loss)]
async fn drive<F, Fut>(batches: Vec<Vec<gw::SignPaymentRequest>>, pay: F) -> Run
where
    F: Fn(usize, gw::SignPaymentRequest) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let lat = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, reqs) in batches.into_iter().enumerate() {
        let (lat, pay) = (Arc::clone(&lat), pay.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(reqs.len());
            let mut ok = 0;
            for r in reqs {
                let t = Instant::now();
                if pay(c, r).await {
                    ok += 1;
                }
                mine.push(t.elapsed());
            }
            lat.lock().await.extend(mine);
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("client task");
    }
    let total = start.elapsed();
    let mut lat = Arc::try_unwrap(lat).expect("all tasks done").into_inner();
    lat.sort();
    Run {
        ok,
        throughput: ok as f64 / total.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    }
}

/// `SignPayment` over gRPC through the gateway, clients spread over `channels` HTTP/2 connections.
async fn end_to_end(
    stack: &Stack,
    clients: usize,
    per_client: usize,
    channels: usize,
    policy: Option<&str>,
) -> Run {
    let batches = batches(stack, "b", clients, per_client, policy).await;
    let mut conns = Vec::new();
    for _ in 0..channels {
        let ch = tonic::transport::Endpoint::from_shared(stack.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        conns.push(WalletGatewayClient::new(ch));
    }
    let conns = Arc::new(conns);
    drive(batches, move |c, r| {
        let mut client = conns[c % conns.len()].clone();
        async move { client.sign_payment(r).await.is_ok() }
    })
    .await
}

/// The same payments sent straight to the enclave's socket (no gRPC, no gateway): the enclave's
/// own ceiling.
async fn enclave_only(stack: &Stack, clients: usize, per_client: usize) -> Run {
    use wallet_proto::enclave::v1::{enclave_request::Body as Req, enclave_response::Body as Resp};
    let batches = batches(stack, "e", clients, per_client, None).await;
    let client = Arc::new(wallet_host::enclave_client::EnclaveClient::new(
        stack.dir.path().join("enclave.sock"),
    ));
    drive(batches, move |_, r| {
        let client = Arc::clone(&client);
        async move { matches!(client.call(Req::SignPayment(r)).await, Ok(Resp::SignPayment(_))) }
    })
    .await
}

/// The full policy of the comparison: every control on, none of them binding.
fn full_policy() -> String {
    let mut deny = String::new();
    for i in 1..=100u32 {
        deny.push_str(&format!("\"0x{:040x}\", ", 0xdead_0000u64 + u64::from(i)));
    }
    format!(
        r#"version = 1
[wallet]
max_per_payment = "1"
payments_per_minute = 1000000
budgets = [{{ per = "1h", max = "1000000" }}, {{ per = "1d", max = "10000000" }}]
per_payee = [{{ per = "1d", max = "1000000" }}]
[session]
cap = "1000000000"
payments_per_minute = 1000000
budgets = [{{ per = "1h", max = "1000000" }}]
[approval]
above = "100"
[payees]
deny = [{deny}]
[[rule]]
name = "no mainnet"
networks = ["eip155:1"]
action = "deny"
[[rule]]
name = "big ones"
above = "10"
action = "approve"
[[rule]]
name = "USDC"
assets = ["USDC"]
action = "allow"
"#
    )
}

/// Loads `n` random addresses into the stack's KYT list (chunked, committed at once); returns
/// how long it took.
async fn load_kyt(stack: &Stack, n: usize) -> Duration {
    let mut addrs = vec![0u8; n * 20];
    OsRng.fill_bytes(&mut addrs);
    let mut client = stack.client().await;
    let chunks: Vec<&[u8]> = addrs.chunks(40_000 * 20).collect();
    let last = chunks.len() - 1;
    let start = Instant::now();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let req = gw::ImportKytRequest {
            import_id: "bench".into(),
            addresses: chunk.to_vec(),
            commit: i == last,
            replace: false,
            expected_total: n as u64,
            auth: None,
        };
        client.import_kyt(stack.signed(AdminRpc::ImportKyt, req)).await.expect("kyt import");
    }
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interleaved rounds of the basic and the full policy, at 64 clients and at 1.
struct Comparison {
    rounds: Vec<(Run, Run, Run, Run)>,
}

async fn compare(basic: &Stack, full: &Stack, doc: &str, n: usize) -> Comparison {
    let mut rounds = Vec::new();
    for _ in 0..n {
        let b = end_to_end(basic, 64, 150, 4, None).await;
        let f = end_to_end(full, 64, 150, 4, Some(doc)).await;
        let b1 = end_to_end(basic, 1, 1_000, 1, None).await;
        let f1 = end_to_end(full, 1, 1_000, 1, Some(doc)).await;
        assert_eq!((b.ok, f.ok), (64 * 150, 64 * 150), "every request must be signed");
        assert_eq!((b1.ok, f1.ok), (1_000, 1_000), "every request must be signed");
        rounds.push((b, f, b1, f1));
    }
    Comparison { rounds }
}

impl Comparison {
    fn print(&self) {
        println!("| round | 64 clients: basic | full | full / basic | basic p99 | full p99 | 1 client: basic | full | full / basic | basic p99 | full p99 |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (i, (b, f, b1, f1)) in self.rounds.iter().enumerate() {
            println!(
                "| {} | {:.0} /s | {:.0} /s | {:.2} | {} | {} | {:.0} /s | {:.0} /s | {:.2} | {} | {} |",
                i + 1,
                b.throughput,
                f.throughput,
                f.throughput / b.throughput,
                us(b.p99),
                us(f.p99),
                b1.throughput,
                f1.throughput,
                f1.throughput / b1.throughput,
                us(b1.p99),
                us(f1.p99)
            );
        }
        let pick =
            |g: fn(&(Run, Run, Run, Run)) -> f64| median(self.rounds.iter().map(g).collect());
        let (mb, mf) = (pick(|r| r.0.throughput), pick(|r| r.1.throughput));
        let (mb1, mf1) = (pick(|r| r.2.throughput), pick(|r| r.3.throughput));
        println!();
        println!("median, 64 clients: basic {mb:.0} /s, full {mf:.0} /s: full / basic = {:.2} (target >= 0.90)", mf / mb);
        println!("median, 1 client: basic {mb1:.0} /s, full {mf1:.0} /s: full / basic = {:.2} (target >= 0.90)", mf1 / mb1);
    }
}

/// Anchor on against anchor off, and a leader change under load (`wallet-bench anchor`).
#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
async fn anchor_bench() {
    use wallet_e2e::{anchor::anchored_stack, etcd::EtcdCluster};
    let mut cluster = EtcdCluster::start(3);
    let files = tempfile::tempdir().expect("tempdir");
    let anchored = anchored_stack(&cluster, files.path(), true, "/x402-wallet/t1/anchor/head");
    let plain = Stack::start();
    let _ = end_to_end(&plain, 8, 50, 2, None).await;
    let _ = end_to_end(&anchored, 8, 50, 2, None).await;
    let rounds = 3;
    let (mut off1, mut on1, mut off64, mut on64) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        off1.push(end_to_end(&plain, 1, 400, 1, None).await);
        on1.push(end_to_end(&anchored, 1, 400, 1, None).await);
        off64.push(end_to_end(&plain, 64, 40, 4, None).await);
        on64.push(end_to_end(&anchored, 64, 40, 4, None).await);
    }
    let median = |runs: &[Run], f: &dyn Fn(&Run) -> f64| -> f64 {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let row = |name: &str, runs: &[Run]| {
        println!(
            "| {name} | {} | {:.0} /s | {:.0} µs | {:.0} µs |",
            runs.iter().map(|r| r.ok).sum::<usize>(),
            median(runs, &|r| r.throughput),
            median(runs, &|r| r.p50.as_secs_f64() * 1e6),
            median(runs, &|r| r.p99.as_secs_f64() * 1e6),
        );
    };
    // A leader change under load: 16 clients pay for 8 s; the leader is killed after 2 s.
    let batches = batches(&anchored, "l", 16, 4_000, None).await;
    let ch = tonic::transport::Endpoint::from_shared(anchored.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let start = Instant::now();
    let stop = start + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for reqs in batches {
        let mut client = WalletGatewayClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for r in reqs {
                if Instant::now() >= stop {
                    break;
                }
                let t = Instant::now();
                let ok = client.sign_payment(r).await.is_ok();
                out.push((t - start, t.elapsed(), ok));
            }
            out
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.leader().expect("a leader");
    let killed_at = start.elapsed();
    cluster.kill(leader);
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("client"));
    }
    cluster.restart(leader);
    let failed = samples.iter().filter(|s| !s.2).count();
    let mut all: Vec<Duration> = samples.iter().filter(|s| s.2).map(|s| s.1).collect();
    all.sort();
    // Payments that started in the 3 s after the kill.
    let mut around: Vec<Duration> = samples
        .iter()
        .filter(|s| s.2 && s.0 >= killed_at && s.0 < killed_at + Duration::from_secs(3))
        .map(|s| s.1)
        .collect();
    around.sort();
    println!("Anchor on (3-member etcd, mutual TLS, the gateway relaying) against off, interleaved, {rounds} rounds each, medians:");
    println!();
    println!("| measurement | requests | throughput | p50 | p99 |");
    println!("|---|---|---|---|---|");
    row("anchor off, 1 client", &off1);
    row("anchor on, 1 client", &on1);
    row("anchor off, 64 clients", &off64);
    row("anchor on, 64 clients", &on64);
    println!();
    println!(
        "ratio anchor_on_over_off_throughput_1client = {:.2}",
        median(&on1, &|r| r.throughput) / median(&off1, &|r| r.throughput)
    );
    println!(
        "ratio anchor_on_over_off_throughput_64clients = {:.2}",
        median(&on64, &|r| r.throughput) / median(&off64, &|r| r.throughput)
    );
    println!();
    println!(
        "Leader change: 16 clients for 8 s, leader killed at {:.1} s: {} signed, {failed} refused; p50 {}, p99 {}, max {}; payments started within 3 s of the kill: {}, p99 {}, max {}",
        killed_at.as_secs_f64(),
        all.len(),
        us(percentile(&all, 0.5)),
        us(percentile(&all, 0.99)),
        us(all.last().copied().unwrap_or_default()),
        around.len(),
        us(percentile(&around, 0.99)),
        us(around.last().copied().unwrap_or_default()),
    );
}

/// `clients` clients, client `c` paying through `urls[c % urls.len()]` with session
/// `creds[c % creds.len()]`, `per_client` payments each, requests signed just before.
async fn pay_through(
    urls: &[String],
    creds: &[wallet_client::Credential],
    tag: &str,
    clients: usize,
    per_client: usize,
) -> Run {
    let hdr = header("1000");
    let batches: Vec<Vec<gw::SignPaymentRequest>> = (0..clients)
        .map(|c| {
            let cred = &creds[c % creds.len()];
            (0..per_client)
                .map(|i| cred.sign_request(&hdr, "", "", &format!("{tag}-{c}-{i}"), now_ms()))
                .collect()
        })
        .collect();
    let mut conns = Vec::new();
    for url in urls {
        let ch = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        conns.push(WalletGatewayClient::new(ch));
    }
    let conns = Arc::new(conns);
    drive(batches, move |c, r| {
        let mut client = conns[c % conns.len()].clone();
        async move { client.sign_payment(r).await.is_ok() }
    })
    .await
}

/// One wallet's budget on one enclave against two (`wallet-bench group`): an anchored enclave
/// that shares nothing, the first member of a group alone, and both members of the group.
#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
async fn group_bench() {
    use wallet_e2e::{anchor::anchored_stack_with, etcd::EtcdCluster, group};
    const SHARED: &str = "/x402-wallet/t1/shared/";
    // Budgets in every scope a payment draws on: the session's cap and window, the wallet's.
    const POLICY: &str = r#"version = 1
[session]
budgets = [{ per = "1h", max = "1000000" }]
[wallet]
budgets = [{ per = "1h", max = "1000000" }]
[[rule]]
action = "allow"
"#;
    let cluster = EtcdCluster::start(3);
    let files = tempfile::tempdir().expect("tempdir");
    let solo_files = files.path().join("solo");
    std::fs::create_dir_all(&solo_files).expect("dir");
    let solo = wallet_e2e::anchor::anchored_stack(
        &cluster,
        &solo_files,
        true,
        "/x402-wallet/t1/solo/head",
    );
    let mut a = anchored_stack_with(
        &cluster,
        files.path(),
        true,
        "/x402-wallet/t1/a/head",
        &["--shared-prefix", SHARED],
    );
    let sessions = 16;
    let mut solo_creds = Vec::new();
    let w = solo.wallet("1").await;
    solo.set_document(&w, POLICY).await;
    for _ in 0..sessions {
        solo_creds.push(solo.session(&w, "1000000", gw::IssueSessionRequest::default()).await);
    }
    let w = a.wallet("1").await;
    a.set_document(&w, POLICY).await;
    let mut creds = Vec::new();
    for _ in 0..sessions {
        creds.push(a.session(&w, "1000000", gw::IssueSessionRequest::default()).await);
    }
    let dir = files.path().join("b");
    group::copy_state(&mut a, &dir);
    let b = group::join(&cluster, &a, files.path(), &dir, "/x402-wallet/t1/b/head", SHARED).await;
    let solo_url = [solo.url.clone()];
    let a_url = [a.url.clone()];
    let both = [a.url.clone(), b.url.clone()];
    let _ = pay_through(&solo_url, &solo_creds, "warm-s", 8, 50).await;
    let _ = pay_through(&both, &creds, "warm-g", 8, 50).await;
    let rounds = 3;
    let (mut solo1, mut a1, mut solo64, mut a64, mut both64) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        solo1.push(pay_through(&solo_url, &solo_creds, &format!("s1-{r}"), 1, 400).await);
        a1.push(pay_through(&a_url, &creds, &format!("a1-{r}"), 1, 400).await);
        solo64.push(pay_through(&solo_url, &solo_creds, &format!("s64-{r}"), 64, 40).await);
        a64.push(pay_through(&a_url, &creds, &format!("a64-{r}"), 64, 40).await);
        both64.push(pay_through(&both, &creds, &format!("b64-{r}"), 64, 40).await);
    }
    let median = |runs: &[Run], f: &dyn Fn(&Run) -> f64| -> f64 {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let row = |name: &str, runs: &[Run]| {
        println!(
            "| {name} | {} | {:.0} /s | {:.0} µs | {:.0} µs |",
            runs.iter().map(|r| r.ok).sum::<usize>(),
            median(runs, &|r| r.throughput),
            median(runs, &|r| r.p50.as_secs_f64() * 1e6),
            median(runs, &|r| r.p99.as_secs_f64() * 1e6),
        );
    };
    println!("One wallet (session and wallet budgets) on anchored enclaves, 3-member etcd, {sessions} sessions, interleaved, {rounds} rounds each, medians:");
    println!();
    println!("| measurement | requests | throughput | p50 | p99 |");
    println!("|---|---|---|---|---|");
    row("one enclave, not shared, 1 client", &solo1);
    row("group member alone (shared budgets), 1 client", &a1);
    row("one enclave, not shared, 64 clients", &solo64);
    row("group member alone (shared budgets), 64 clients", &a64);
    row("two group members, 64 clients (32 each)", &both64);
    println!();
    let t = |runs: &[Run]| median(runs, &|r| r.throughput);
    println!("ratio shared_over_unshared_throughput_1client = {:.2}", t(&a1) / t(&solo1));
    println!("ratio shared_over_unshared_throughput_64clients = {:.2}", t(&a64) / t(&solo64));
    println!("ratio two_members_over_one_throughput_64clients = {:.2}", t(&both64) / t(&a64));
    drop(b);
}

#[tokio::main]
#[allow(clippy::too_many_lines)]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("anchor") {
        anchor_bench().await;
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("group") {
        group_bench().await;
        return;
    }
    let raw_n = 20_000;
    let (raw_tps, raw_p50) = raw_k256(raw_n);
    let stack = Stack::start();
    let _warm = end_to_end(&stack, 8, 50, 2, None).await;
    let one = end_to_end(&stack, 1, 2_000, 1, None).await;
    let many = end_to_end(&stack, 64, 150, 4, None).await;
    let direct = enclave_only(&stack, 64, 150).await;
    if let Some(keep) = std::env::var_os("WALLET_BENCH_KEEP_LOG") {
        let _ = std::fs::copy(stack.enclave_log(), keep);
    }

    // Basic policy against the full one, interleaved on two stacks.
    let full = Stack::start();
    // WALLET_BENCH_KYT=N loads N entries instead (0: none, to separate the list's cost).
    let kyt_n: usize =
        std::env::var("WALLET_BENCH_KYT").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let kyt_time = if kyt_n == 0 { Duration::ZERO } else { load_kyt(&full, kyt_n).await };
    let listed = full.status().await.kyt_entries;
    assert!(listed + 10 >= kyt_n as u64, "the KYT list holds {listed}");
    let doc = full_policy();
    let _warm = end_to_end(&full, 8, 50, 2, Some(&doc)).await;
    // Right after the import, then (the steady state) after a restart: start-up reads and
    // unseals the whole state, a million KYT entries included.
    let after_import = compare(&stack, &full, &doc, 3).await;
    let mut full = full;
    let restart = Instant::now();
    full.crash_and_restart_enclave();
    let restart = restart.elapsed();
    let _warm = end_to_end(&full, 8, 50, 2, Some(&doc)).await;
    let steady = compare(&stack, &full, &doc, 5).await;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!();
    println!("| measurement | requests | throughput | p50 | p99 |");
    println!("|---|---|---|---|---|");
    println!(
        "| raw k256 sign_prehash_recoverable, 1 core | {raw_n} | {raw_tps:.0} /s | {} | |",
        us(raw_p50)
    );
    println!(
        "| SignPayment end to end, 1 client | {} | {:.0} /s | {} | {} |",
        one.ok,
        one.throughput,
        us(one.p50),
        us(one.p99)
    );
    println!(
        "| SignPayment end to end, 64 clients | {} | {:.0} /s | {} | {} |",
        many.ok,
        many.throughput,
        us(many.p50),
        us(many.p99)
    );
    println!("| SignPayment enclave only (Unix socket frames, no gateway), 64 clients | {} | {:.0} /s | {} | {} |", direct.ok, direct.throughput, us(direct.p50), us(direct.p99));
    println!();
    println!("Full policy ({kyt_n} KYT entries loaded in {:.1} s, enclave restart with them {:.1} s; windows, payee cap, rate limits, payee list, rules, approval threshold) against the basic policy, interleaved:", kyt_time.as_secs_f64(), restart.as_secs_f64());
    println!();
    println!(
        "After a restart of the full-policy enclave (steady state), {} rounds:",
        steady.rounds.len()
    );
    println!();
    steady.print();
    println!();
    println!("Right after the import (same process), {} rounds:", after_import.rounds.len());
    println!();
    after_import.print();
    println!();
    let ratio = many.throughput / raw_tps;
    println!("64-client throughput / raw k256 throughput = {ratio:.2} (target >= 0.25); p99 at 64 clients = {} (target < 10 ms)", us(many.p99));
    assert_eq!(one.ok, 2_000, "every request of the 1-client run must be signed");
    assert_eq!(many.ok, 64 * 150, "every request of the 64-client run must be signed");
}
