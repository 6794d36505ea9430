//! `soak`: hours of operation compressed into a bounded run (issue 14, deliverable 4). Usage:
//! `scripts/soak.sh` (30 minutes, release binaries), `SOAK_SECONDS=100 SOAK_PROFILE=debug
//! scripts/soak.sh` (CI), or `target/<profile>/soak --seconds N` on binaries already built.
//!
//! 1. Starts the simulated stack (enclave + gateway in a temporary directory: the binaries beside
//!    this one, so the profile it was built in).
//! 2. Measures the maximum throughput: a closed loop of 64 clients over 4 connections for a few
//!    seconds, with requests signed before the timed phase (as `wallet-bench` does).
//! 3. Runs an open loop at half of it (`SOAK_RATE_FRACTION`) for the rest of the duration: each
//!    request is signed when it is due, with its own idempotency key and an amount of 1,000 to
//!    9,999 atomic units, on one of the live sessions of two wallets. A small share goes to a
//!    session with a small cap, which it runs into (`SESSION_CAP` is expected there only).
//! 4. Along the way: every few seconds a session is issued and the oldest revoked (while
//!    traffic still flows to it), policies change (two documents alternate on each wallet), and
//!    the enclave is restarted, alternately gracefully (SIGTERM) and with SIGKILL.
//! 5. Samples VmRSS (`/proc/PID/status`) and open descriptors (`/proc/PID/fd`) of the enclave and
//!    the gateway, and judges them flat (see [`judge`]) per process incarnation.
//! 6. Checks the ledger: per session and per wallet, what the soak received against what the
//!    enclave reports live (`ListSessions`, `GetBudget`'s wallet window) and, after a graceful
//!    stop, against its spend journal, payment by payment (idempotency keys): every signature
//!    received is recorded with its amount; every recorded spend was either received or its
//!    answer was lost to a restart (in flight: "client-seen <= recorded <= client-seen +
//!    in-flight") or it was withheld by a revocation; no key twice; no cap or budget exceeded.
//!
//! Expected failures: `ENCLAVE_UNAVAILABLE` / `ENCLAVE_TIMEOUT` (and the replay floor's refusals)
//! of requests that overlapped a restart; `SESSION_REVOKED` on a session whose revocation had
//! started; `SESSION_CAP` on the capped sessions. Anything else is a failure, and any failure or
//! violation makes the exit code 1.
//!
//! The enclave runs with `--idempotency-ttl` of `SOAK_IDEMPOTENCY_TTL` seconds (default a tenth
//! of the run, 10 to 60): the index keeps every posted payment for that long by design, so with
//! the product's 24 hours its memory grows for 24 hours and no bounded run could see it level
//! off. Set it to 86400 to measure what the default retains per payment.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use tonic::transport::Channel;
use wallet_client::Credential;
use wallet_e2e::{
    header, now_ms, reason, rss_and_fds, start_enclave_patiently, EnclaveStorage, Stack,
    StackOptions,
};
use wallet_policy::{amount::parse_decimal, U256};
use wallet_proto::{
    gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient},
    AdminRpc,
};

/// USDC's decimals: amounts the soak pays are in its atomic units.
const USDC_DECIMALS: u8 = 6;
/// Each regular session's cap, human units: never reached in a soak.
const SESSION_CAP: &str = "1000000";
/// The capped sessions' cap, human units: about 9 payments.
const SMALL_CAP: &str = "0.05";
/// Every `CAPPED_EVERY`-th request goes to the capped session.
const CAPPED_EVERY: u64 = 50;
/// The wallets' hourly budget in both policy documents, human units: never reached.
const WALLET_HOURLY: &str = "1000000";
/// Regular sessions live at once.
const LIVE_SESSIONS: usize = 8;
/// How long the enclave's bounded per-request state takes to fill (the replay cache keeps a
/// request nonce 240 s), plus a margin: the strict judgment starts after it.
const FILL_MS: u64 = 250_000;
/// How long a restarted enclave may take to open its socket (it reads its whole history).
const RESTART_WAIT_S: u64 = 300;
/// Requests the open loop keeps in flight at most; beyond, the generator sheds (a failure).
const MAX_IN_FLIGHT: usize = 4096;

fn policy(variant: usize) -> String {
    if variant.is_multiple_of(2) {
        format!(
            r#"version = 1
[wallet]
max_per_payment = "1"
budgets = [{{ per = "1h", max = "{WALLET_HOURLY}" }}, {{ per = "1d", max = "10000000" }}]
[session]
budgets = [{{ per = "1h", max = "100000" }}]
[[rule]]
action = "allow"
"#
        )
    } else {
        format!(
            r#"version = 1
[wallet]
max_per_payment = "0.5"
payments_per_minute = 1000000
budgets = [{{ per = "1h", max = "{WALLET_HOURLY}" }}]
per_payee = [{{ per = "1d", max = "1000000" }}]
[session]
payments_per_minute = 1000000
[payees]
deny = ["0x000000000000000000000000000000000000dead"]
[[rule]]
name = "no mainnet"
networks = ["eip155:1"]
action = "deny"
[[rule]]
name = "USDC"
assets = ["USDC"]
action = "allow"
"#
        )
    }
}

// ---- configuration -----------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Config {
    seconds: u64,
    measure_seconds: u64,
    measure_clients: usize,
    rate_fraction: f64,
    fixed_rate: Option<f64>,
    sample_ms: u64,
    idempotency_ttl: u64,
    restarts: usize,
    rotate_ms: u64,
    /// Flatness: absolute slack (KiB) and relative slack of the resident set.
    rss_slack_kib: u64,
    rss_slack_pct: f64,
    /// Growth per payment below which a rise is not judged a leak (bytes).
    leak_floor_bytes: f64,
    /// The same, for an enclave incarnation too short to be past the fill.
    loose_floor_bytes: f64,
    fd_slack: u64,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(x) => Some(x),
        Err(_) => {
            eprintln!("soak: {name}={v:?} is not a number");
            std::process::exit(2);
        }
    }
}

impl Config {
    fn load() -> Self {
        let mut seconds: u64 = env_num("SOAK_SECONDS").unwrap_or(1800);
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--seconds" => {
                    seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                        eprintln!("soak: --seconds takes a number");
                        std::process::exit(2)
                    });
                }
                "-h" | "--help" => {
                    println!("usage: soak [--seconds N]   (env: SOAK_SECONDS, SOAK_MEASURE_SECONDS, SOAK_RATE, SOAK_RATE_FRACTION, SOAK_SAMPLE_SECONDS, SOAK_IDEMPOTENCY_TTL, SOAK_RESTARTS)");
                    std::process::exit(0);
                }
                other => {
                    eprintln!("soak: unknown argument {other:?} (try --help)");
                    std::process::exit(2);
                }
            }
        }
        if seconds < 30 {
            eprintln!("soak: at least 30 seconds");
            std::process::exit(2);
        }
        let measure_seconds = env_num("SOAK_MEASURE_SECONDS").unwrap_or((seconds / 30).clamp(3, 8));
        let sample_ms = env_num::<f64>("SOAK_SAMPLE_SECONDS")
            .map_or_else(|| (seconds * 1000 / 120).clamp(1000, 5000), |s| (s * 1000.0) as u64);
        Self {
            seconds,
            measure_seconds,
            measure_clients: 64,
            rate_fraction: env_num("SOAK_RATE_FRACTION").unwrap_or(0.5),
            fixed_rate: env_num("SOAK_RATE"),
            sample_ms,
            idempotency_ttl: env_num("SOAK_IDEMPOTENCY_TTL")
                .unwrap_or((seconds / 10).clamp(10, 60)),
            restarts: env_num("SOAK_RESTARTS").unwrap_or(((seconds / 300) as usize).clamp(2, 6)),
            rotate_ms: (seconds * 1000 / 90).clamp(4000, 20_000),
            rss_slack_kib: 8 * 1024,
            rss_slack_pct: 0.05,
            leak_floor_bytes: 512.0,
            loose_floor_bytes: 4096.0,
            fd_slack: 16,
        }
    }
}

// ---- sessions and requests ---------------------------------------------------------------------

/// A session the soak issued.
#[derive(Debug)]
struct SessionInfo {
    cred: Credential,
    wallet: usize,
    capped: bool,
    /// Cap, 18-decimal units.
    cap_units: U256,
    /// When its revocation was sent (unix ms; 0: never).
    revoke_started_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Signed,
    /// Signed, but the answer's amount is not the one asked for.
    WrongAmount,
    /// `ENCLAVE_UNAVAILABLE`, the request certainly not sent to the enclave.
    NotSent,
    /// The answer was lost (the connection closed before it, or a timeout): maybe charged.
    Lost,
    Revoked,
    Cap,
    /// Refused by freshness or the replay floor (`STALE_REQUEST`, `REPLAYED_REQUEST`).
    Floor,
    /// Shed by the generator (too many in flight).
    Shed,
    /// Anything else: index into the list of distinct errors.
    Other(u32),
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    session: u32,
    amount: u64,
    sent_ms: u64,
    done_ms: u64,
    latency_us: u32,
    outcome: Outcome,
}

#[derive(Debug, Default)]
struct Shared {
    sessions: RwLock<Vec<Arc<SessionInfo>>>,
    /// Indices into `sessions` of the live regular sessions, in issue order.
    live: RwLock<Vec<u32>>,
    /// The capped session now in use.
    capped: RwLock<Option<u32>>,
    recs: Mutex<Vec<Rec>>,
    errors: Mutex<Vec<String>>,
    /// Restart windows (unix ms): from just before the stop to a grace after the start.
    outages: Mutex<Vec<(u64, u64)>>,
    outage_open: AtomicU64,
    in_flight: AtomicUsize,
    signed: AtomicU64,
    enclave_pid: AtomicU32,
    incarnation: AtomicU32,
}

impl Shared {
    fn session(&self, i: u32) -> Arc<SessionInfo> {
        Arc::clone(&self.sessions.read().expect("sessions")[i as usize])
    }

    fn error_index(&self, text: String) -> u32 {
        let mut e = self.errors.lock().expect("errors");
        let key: String = text.chars().take(160).collect();
        if let Some(i) = e.iter().position(|x| *x == key) {
            return u32::try_from(i).unwrap_or(u32::MAX);
        }
        e.push(key);
        u32::try_from(e.len() - 1).unwrap_or(u32::MAX)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The session request `seq` goes to (`None`: no live session).
fn pick(shared: &Shared, seq: u64) -> Option<u32> {
    if seq % CAPPED_EVERY == CAPPED_EVERY - 1 {
        if let Some(c) = *shared.capped.read().expect("capped") {
            return Some(c);
        }
    }
    let live = shared.live.read().expect("live");
    if live.is_empty() {
        return None;
    }
    Some(live[usize::try_from(splitmix(seq ^ 0x5eed) % live.len() as u64).unwrap_or(0)])
}

fn classify(
    res: &Result<tonic::Response<gw::SignPaymentResponse>, tonic::Status>,
    amount: u64,
    shared: &Shared,
) -> Outcome {
    match res {
        Ok(r) if r.get_ref().amount == amount.to_string() => Outcome::Signed,
        Ok(_) => Outcome::WrongAmount,
        Err(s) => match reason(s).as_str() {
            "ENCLAVE_UNAVAILABLE" if s.message().contains("before it answered") => Outcome::Lost,
            "ENCLAVE_UNAVAILABLE" => Outcome::NotSent,
            "ENCLAVE_TIMEOUT" => Outcome::Lost,
            "SESSION_REVOKED" => Outcome::Revoked,
            "SESSION_CAP" => Outcome::Cap,
            "STALE_REQUEST" | "REPLAYED_REQUEST" => Outcome::Floor,
            r => Outcome::Other(shared.error_index(format!("{:?} {r}: {}", s.code(), s.message()))),
        },
    }
}

/// Sends request `seq` now (signed now) and records what came back.
async fn one_request(
    shared: Arc<Shared>,
    mut client: WalletGatewayClient<Channel>,
    seq: u64,
    session: u32,
) {
    let info = shared.session(session);
    let amount = 1000 + splitmix(seq) % 9000;
    let req = info.cred.sign_request(
        &header(&amount.to_string()),
        "",
        "",
        &format!("soak-{seq}"),
        now_ms(),
    );
    let sent_ms = now_ms();
    let t = Instant::now();
    let res = client.sign_payment(req).await;
    let latency_us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
    let outcome = classify(&res, amount, &shared);
    if outcome == Outcome::Signed {
        shared.signed.fetch_add(1, Ordering::Relaxed);
    }
    let rec = Rec { session, amount, sent_ms, done_ms: now_ms(), latency_us, outcome };
    let i = usize::try_from(seq).unwrap_or(usize::MAX);
    shared.recs.lock().expect("recs")[i] = rec;
}

/// A new request number (its record pending).
fn new_rec(shared: &Shared, session: u32) -> u64 {
    let mut recs = shared.recs.lock().expect("recs");
    recs.push(Rec {
        session,
        amount: 0,
        sent_ms: now_ms(),
        done_ms: 0,
        latency_us: 0,
        outcome: Outcome::Pending,
    });
    (recs.len() - 1) as u64
}

async fn connect(url: &str, n: usize) -> Vec<WalletGatewayClient<Channel>> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let ch = tonic::transport::Endpoint::from_shared(url.to_owned())
            .expect("url")
            .connect()
            .await
            .expect("connect to the gateway");
        conns.push(WalletGatewayClient::new(ch));
    }
    conns
}

/// The closed loop: `clients` clients, each with requests signed before the timed phase, for
/// `seconds`; returns payments signed per second.
#[allow(clippy::cast_precision_loss)]
async fn measure_max(shared: &Arc<Shared>, url: &str, clients: usize, seconds: u64) -> f64 {
    let conns = connect(url, 4).await;
    // Room for 10,000 payments per second, more than this machine does.
    let per_client = usize::try_from(seconds).unwrap_or(8) * 10_000 / clients + 1;
    let live = shared.live.read().expect("live").clone();
    let mut batches = Vec::new();
    for c in 0..clients {
        let mut b = Vec::with_capacity(per_client);
        for _ in 0..per_client {
            let session = live[c % live.len()];
            let seq = new_rec(shared, session);
            let info = shared.session(session);
            let amount = 1000 + splitmix(seq) % 9000;
            let req = info.cred.sign_request(
                &header(&amount.to_string()),
                "",
                "",
                &format!("soak-{seq}"),
                now_ms(),
            );
            b.push((seq, session, amount, req));
        }
        batches.push(b);
    }
    let start = Instant::now();
    let stop = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (c, batch) in batches.into_iter().enumerate() {
        let mut client = conns[c % conns.len()].clone();
        let shared = Arc::clone(shared);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            let mut unsent = Vec::new();
            let mut it = batch.into_iter();
            for (seq, session, amount, req) in it.by_ref() {
                if Instant::now() >= stop {
                    unsent.push(seq);
                    break;
                }
                let sent_ms = now_ms();
                let t = Instant::now();
                let res = client.sign_payment(req).await;
                let latency_us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                let outcome = classify(&res, amount, &shared);
                if outcome == Outcome::Signed {
                    ok += 1;
                    shared.signed.fetch_add(1, Ordering::Relaxed);
                }
                let rec = Rec { session, amount, sent_ms, done_ms: now_ms(), latency_us, outcome };
                shared.recs.lock().expect("recs")[usize::try_from(seq).unwrap_or(usize::MAX)] = rec;
            }
            unsent.extend(it.map(|r| r.0));
            (ok, unsent)
        }));
    }
    let mut ok = 0;
    let mut unsent = Vec::new();
    for t in tasks {
        let (o, u) = t.await.expect("client task");
        ok += o;
        unsent.extend(u);
    }
    let elapsed = start.elapsed();
    // Requests never sent are not requests: mark them so (amount 0, a distinct outcome).
    let mut recs = shared.recs.lock().expect("recs");
    for seq in unsent {
        let r = &mut recs[usize::try_from(seq).unwrap_or(usize::MAX)];
        r.outcome = Outcome::NotSent;
        r.amount = 0;
        r.done_ms = r.sent_ms;
    }
    ok as f64 / elapsed.as_secs_f64()
}

/// The open loop: request `n` is due at `start + n / rate`, whatever happened to the others.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
async fn open_loop(
    shared: Arc<Shared>,
    url: String,
    rate: f64,
    until: Instant,
    stop: Arc<AtomicBool>,
) -> u64 {
    let conns = connect(&url, 4).await;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tick.tick().await;
        while tasks.try_join_next().is_some() {}
        let now = Instant::now();
        if now >= until || stop.load(Ordering::Relaxed) {
            break;
        }
        let due = ((now - start).as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let Some(session) = pick(&shared, sent) else { continue };
            let seq = new_rec(&shared, session);
            if shared.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                let mut recs = shared.recs.lock().expect("recs");
                let r = &mut recs[usize::try_from(seq).unwrap_or(usize::MAX)];
                r.outcome = Outcome::Shed;
                r.done_ms = r.sent_ms;
                continue;
            }
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let client = conns[(seq % conns.len() as u64) as usize].clone();
            let shared = Arc::clone(&shared);
            tasks.spawn(async move {
                one_request(Arc::clone(&shared), client, seq, session).await;
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
    // Wait for what is in flight (the gateway gives up on the enclave after 30 s).
    let drain = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        eprintln!("soak: requests still in flight 60 s after the load stopped");
    }
    sent
}

// ---- admin operations --------------------------------------------------------------------------

type AdminResult<T> = Result<T, String>;

async fn create_wallet(stack: &Stack) -> AdminResult<gw::Wallet> {
    let mut c = stack.client().await;
    c.create_wallet(stack.signed(
        AdminRpc::CreateWallet,
        gw::CreateWalletRequest { auth: None, label: "soak".into() },
    ))
    .await
    .map(tonic::Response::into_inner)
    .map_err(|e| format!("create wallet: {e}"))
}

async fn set_policy(stack: &Stack, wallet: &gw::Wallet, doc: &str) -> AdminResult<()> {
    let mut c = stack.client().await;
    c.set_policy(stack.signed(
        AdminRpc::SetPolicy,
        gw::SetPolicyRequest {
            auth: None,
            policy: Some(gw::Policy {
                wallet_id: wallet.wallet_id.clone(),
                document: doc.into(),
                ..Default::default()
            }),
        },
    ))
    .await
    .map(|_| ())
    .map_err(|e| format!("set policy: {e}"))
}

async fn issue(
    stack: &Stack,
    shared: &Shared,
    wallets: &[gw::Wallet],
    w: usize,
    capped: bool,
) -> AdminResult<u32> {
    let key = wallet_client::new_session_key();
    let cap = if capped { SMALL_CAP } else { SESSION_CAP };
    let s = stack
        .client()
        .await
        .issue_session(stack.signed(
            AdminRpc::IssueSession,
            gw::IssueSessionRequest {
                wallet_id: wallets[w].wallet_id.clone(),
                public_key: key.verifying_key().to_bytes().to_vec(),
                cap: cap.into(),
                ttl_seconds: 24 * 3600,
                label: if capped { "soak-capped" } else { "soak" }.into(),
                ..Default::default()
            },
        ))
        .await
        .map_err(|e| format!("issue session: {e}"))?
        .into_inner();
    let cred = Credential::new(
        s.session_id,
        s.wallet_id,
        wallets[w].address.clone(),
        stack.url.clone(),
        s.expires_at,
        key,
    );
    let info = SessionInfo {
        cred,
        wallet: w,
        capped,
        cap_units: parse_decimal(cap, 18).map_err(|e| e.to_string())?,
        revoke_started_ms: AtomicU64::new(0),
    };
    let mut all = shared.sessions.write().expect("sessions");
    all.push(Arc::new(info));
    Ok(u32::try_from(all.len() - 1).unwrap_or(u32::MAX))
}

async fn revoke(stack: &Stack, shared: &Shared, i: u32) -> AdminResult<()> {
    let info = shared.session(i);
    info.revoke_started_ms.store(now_ms(), Ordering::SeqCst);
    stack
        .client()
        .await
        .revoke_session(stack.signed(
            AdminRpc::RevokeSession,
            gw::RevokeSessionRequest { session_id: info.cred.session_id.clone(), auth: None },
        ))
        .await
        .map(|_| ())
        .map_err(|e| format!("revoke session: {e}"))
}

// ---- resource samples --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Sample {
    t_ms: u64,
    signed: u64,
    incarnation: u32,
    enclave: Option<(u64, u64)>,
    gateway: Option<(u64, u64)>,
    /// Peak resident sets so far (`VmHWM`, KiB): the enclave's includes its start-up.
    enclave_hwm: Option<u64>,
    gateway_hwm: Option<u64>,
}

/// `MemAvailable` of this machine, KiB.
fn mem_available_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `VmHWM` (peak resident set, KiB) of a process.
fn peak_rss(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// (VmRSS KiB, open descriptors) of a process (none for pid 0: no process).
fn resources(pid: u32) -> Option<(u64, u64)> {
    if pid == 0 {
        return None;
    }
    rss_and_fds(pid)
}

async fn sampler(
    shared: Arc<Shared>,
    gateway_pid: u32,
    every: Duration,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let incarnation = shared.incarnation.load(Ordering::SeqCst);
        let enclave_pid = shared.enclave_pid.load(Ordering::SeqCst);
        let enclave = resources(enclave_pid);
        let enclave_hwm = peak_rss(enclave_pid);
        // A sample taken while a restart was under way belongs to no incarnation.
        if incarnation != shared.incarnation.load(Ordering::SeqCst) {
            continue;
        }
        out.push(Sample {
            t_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            signed: shared.signed.load(Ordering::Relaxed),
            incarnation,
            enclave,
            gateway: resources(gateway_pid),
            enclave_hwm,
            gateway_hwm: peak_rss(gateway_pid),
        });
    }
    out
}

/// How one process (incarnation) fared: first, last, max, and the flatness verdict.
#[derive(Debug)]
struct Judgment {
    name: String,
    samples: usize,
    first: (u64, u64),
    last: (u64, u64),
    max: (u64, u64),
    /// Peak resident set (`VmHWM`, KiB), start-up included.
    peak: u64,
    /// Post-warm-up: medians of the second and last quarters (RSS KiB, fds), payments between
    /// them, the RSS limit (KiB), and the smallest leak per payment the limit lets through.
    verdict: Option<Verdict>,
    violations: Vec<String>,
}

#[derive(Debug)]
struct Verdict {
    rss_q2: u64,
    rss_q4: u64,
    fd_q2: u64,
    fd_q4: u64,
    payments: u64,
    rss_limit: u64,
    per_payment: Option<f64>,
    detectable: Option<f64>,
    strict: bool,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Flat, precisely: after a warm-up (`warmup_ms` from the incarnation's first sample, at most
/// half its span), split the remaining samples (at least 8) in quarters; let R2, R4 be the median
/// RSS of the second and the last quarter, F2, F4 the median descriptor counts, and P the
/// payments signed between the middles of those quarters. The resident set is flat unless R4 −
/// R2 exceeds `rss_slack_kib` + `rss_slack_pct` × R2 **and** (R4 − R2) / P exceeds a floor per
/// payment; descriptors are flat unless F4 − F2 exceeds `fd_slack`. Medians of quarters ignore
/// single spikes (an allocator's burst, a restart's replay). The floor keeps state that is
/// bounded by design but still filling from being called a leak: the enclave remembers every
/// request nonce for 240 s (the replay cache, two copies of the key: about 250-300 bytes per
/// request, and its tables double as they grow), its last 32,768 decisions, and each payment
/// for the idempotency TTL. An enclave incarnation whose judged window starts at least
/// `FILL_MS` after its start is judged strictly (`leak_floor_bytes`, 512 B: a leak of 1 KB per
/// payment breaks it); a shorter one loosely (`loose_floor_bytes`, 4 KiB: the fill itself
/// measured up to about 1.9 KB per payment in such windows). The gateway keeps no per-payment
/// state and is always judged strictly. The summary prints, per process, the smallest leak per
/// payment the run could see.
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn judge(
    name: String,
    pts: &[(u64, u64, (u64, u64))],
    warmup_ms: u64,
    strict_after_ms: u64,
    cfg: &Config,
) -> Option<Judgment> {
    let first = pts.first()?;
    let last = pts.last()?;
    let max = (pts.iter().map(|p| p.2 .0).max()?, pts.iter().map(|p| p.2 .1).max()?);
    let span = last.0 - first.0;
    let from = first.0 + warmup_ms.min(span / 2);
    let strict = from - first.0 >= strict_after_ms;
    let floor = if strict { cfg.leak_floor_bytes } else { cfg.loose_floor_bytes };
    let post: Vec<_> = pts.iter().filter(|p| p.0 >= from).collect();
    let mut j = Judgment {
        name,
        samples: pts.len(),
        first: first.2,
        last: last.2,
        max,
        peak: 0,
        verdict: None,
        violations: Vec::new(),
    };
    if post.len() < 8 {
        return Some(j);
    }
    let n = post.len();
    let q2 = &post[n / 4..n / 2];
    let q4 = &post[3 * n / 4..];
    let rss_q2 = median(q2.iter().map(|p| p.2 .0).collect());
    let rss_q4 = median(q4.iter().map(|p| p.2 .0).collect());
    let fd_q2 = median(q2.iter().map(|p| p.2 .1).collect());
    let fd_q4 = median(q4.iter().map(|p| p.2 .1).collect());
    let payments = q4[q4.len() / 2].1.saturating_sub(q2[q2.len() / 2].1);
    let rss_limit = cfg.rss_slack_kib + (rss_q2 as f64 * cfg.rss_slack_pct) as u64;
    let grew = rss_q4.saturating_sub(rss_q2);
    let per_payment = (payments > 0).then(|| grew as f64 * 1024.0 / payments as f64);
    let detectable =
        (payments > 0).then(|| (rss_limit as f64 * 1024.0 / payments as f64).max(floor));
    if grew > rss_limit && per_payment.is_none_or(|b| b > floor) {
        j.violations.push(format!(
            "{}: resident set grew from {rss_q2} KiB to {rss_q4} KiB (limit +{rss_limit} KiB){}",
            j.name,
            per_payment.map_or_else(String::new, |b| format!(
                ", {b:.0} bytes per payment over {payments} payments"
            ))
        ));
    }
    if fd_q4 > fd_q2 + cfg.fd_slack {
        j.violations.push(format!(
            "{}: open descriptors grew from {fd_q2} to {fd_q4} (limit +{})",
            j.name, cfg.fd_slack
        ));
    }
    j.verdict = Some(Verdict {
        rss_q2,
        rss_q4,
        fd_q2,
        fd_q4,
        payments,
        rss_limit,
        per_payment,
        detectable,
        strict,
    });
    Some(j)
}

// ---- the ledger --------------------------------------------------------------------------------

fn units_of_atomic(atomic: U256) -> Option<U256> {
    wallet_policy::amount::atomic_to_units(atomic, USDC_DECIMALS)
}

fn human(units: U256) -> String {
    wallet_policy::amount::format_units(units)
}

#[derive(Debug, Default, Clone)]
struct Book {
    /// Signatures received: count and atomic sum.
    seen: u64,
    seen_sum: U256,
    /// Answers lost (maybe charged).
    lost: u64,
    lost_sum: U256,
    /// Revocation denials (maybe withheld: charged).
    revoked: u64,
    revoked_sum: U256,
}

fn add(a: U256, b: u64) -> U256 {
    a.checked_add(U256::from(b)).expect("sum fits U256")
}

/// What the enclave says, live: per session `ListSessions.spent`, per wallet the hourly window
/// of `GetBudget` (asked with a live session of that wallet). 18-decimal units.
async fn enclave_live(
    stack: &Stack,
    shared: &Shared,
    wallets: usize,
) -> Result<(HashMap<String, U256>, Vec<Option<(U256, u64)>>), String> {
    let l = stack
        .client()
        .await
        .list_sessions(gw::ListSessionsRequest::default())
        .await
        .map_err(|e| format!("list sessions: {e}"))?
        .into_inner();
    let mut per_session = HashMap::new();
    for s in l.sessions {
        let v =
            parse_decimal(&s.spent, 18).map_err(|e| format!("session spent {:?}: {e}", s.spent))?;
        per_session.insert(s.session_id, v);
    }
    let mut per_wallet = vec![None; wallets];
    let live = shared.live.read().expect("live").clone();
    for (w, slot) in per_wallet.iter_mut().enumerate() {
        let Some(i) = live.iter().copied().find(|i| shared.session(*i).wallet == w) else {
            continue;
        };
        let info = shared.session(i);
        let b = stack
            .client()
            .await
            .get_budget(info.cred.budget_request(now_ms()))
            .await
            .map_err(|e| format!("get budget: {e}"))?
            .into_inner();
        if let Some(win) =
            b.windows.iter().find(|x| x.scope == "wallet" && x.window_seconds == 3600)
        {
            let v = parse_decimal(&win.spent, 18)
                .map_err(|e| format!("window spent {:?}: {e}", win.spent))?;
            *slot = Some((v, win.payments));
        }
    }
    Ok((per_session, per_wallet))
}

/// The spend journal, read with the enclave's own code: `(session id, idempotency key,
/// wallet, atomic amount)` of every spend, and the keys withheld.
#[allow(clippy::type_complexity)]
fn journal(
    data: &Path,
) -> Result<(Vec<(String, String, String, U256)>, HashSet<(String, String)>), String> {
    let sealer =
        wallet_enclave::platform::simulated::sealer_from_key_file(&data.join("sealing.key"))
            .map_err(|e| format!("sealing key: {e}"))?;
    let (_j, records) =
        wallet_enclave::journal::Journal::open(&data.join("spends.journal"), sealer)
            .map_err(|e| format!("open journal: {e}"))?;
    let mut spends = Vec::new();
    let mut withheld = HashSet::new();
    for r in &records {
        let v: serde_json::Value =
            serde_json::from_slice(r).map_err(|e| format!("journal record: {e}"))?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        match v["kind"].as_str() {
            Some("spend") => {
                let amount: U256 = s("amount")
                    .parse()
                    .map_err(|e| format!("journal amount {:?}: {e}", s("amount")))?;
                spends.push((s("session_id"), s("idempotency_key"), s("wallet_id"), amount));
            }
            Some("withheld") => {
                withheld.insert((s("session_id"), s("idempotency_key")));
            }
            other => return Err(format!("journal record of unknown kind {other:?}")),
        }
    }
    Ok((spends, withheld))
}

// ---- the run -----------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Restart {
    graceful: bool,
    clean_exit: bool,
    at_s: f64,
    took: Duration,
    /// Signatures received before it (about what the journal held).
    history: u64,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(us: u32) -> String {
    format!("{:.1} ms", f64::from(us) / 1000.0)
}

/// Kills the stack's processes if the soak overruns its bound by far (a hang): the soak must stop
/// by itself.
fn watchdog(shared: Arc<Shared>, gateway_pid: u32, dir: std::path::PathBuf, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "soak: VIOLATION: still running {} s after it started: stopping everything",
            limit.as_secs()
        );
        for pid in [shared.enclave_pid.load(Ordering::SeqCst), gateway_pid] {
            if pid != 0 {
                let _ =
                    std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
        // Exiting skips the stack's drop: remove its directory (the journal can be gigabytes).
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(3);
    });
}

#[tokio::main]
#[allow(
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
async fn main() {
    let cfg = Config::load();
    let t0 = Instant::now();
    let started_at = now_ms();
    let mut violations: Vec<String> = Vec::new();
    let exe = std::env::current_exe().unwrap_or_default();
    println!(
        "soak: {} s, binaries in {}, idempotency TTL {} s, {} restarts, sample every {} ms",
        cfg.seconds,
        exe.parent().map(|p| p.display().to_string()).unwrap_or_default(),
        cfg.idempotency_ttl,
        cfg.restarts,
        cfg.sample_ms
    );
    let enclave_args = vec!["--idempotency-ttl".to_owned(), cfg.idempotency_ttl.to_string()];
    let mut stack = Stack::start_with(StackOptions {
        storage: Some(wallet_e2e::Storage::Local),
        log_level: Some("info".into()),
        enclave_args: enclave_args.clone(),
        ..StackOptions::default()
    });
    let shared = Arc::new(Shared::default());
    let gateway_pid = stack.gateway.0.id();
    shared.enclave_pid.store(stack.enclave.0.id(), Ordering::SeqCst);
    watchdog(
        Arc::clone(&shared),
        gateway_pid,
        stack.dir.path().to_path_buf(),
        Duration::from_secs(cfg.seconds + 300),
    );
    let stop = Arc::new(AtomicBool::new(false));
    // SIGINT or SIGTERM (`timeout`, Ctrl-C): stop the load, check what there is, stop the stack.
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let (interrupt, load_stop) = (Arc::clone(&interrupt), Arc::clone(&stop));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .expect("SIGINT handler");
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("soak: interrupted: stopping the load");
            interrupt.store(true, Ordering::SeqCst);
            load_stop.store(true, Ordering::SeqCst);
        });
    }
    let sampler_task = tokio::spawn(sampler(
        Arc::clone(&shared),
        gateway_pid,
        Duration::from_millis(cfg.sample_ms),
        t0,
        Arc::clone(&stop),
    ));

    // Two wallets, each with a policy; LIVE_SESSIONS sessions over them; one capped session.
    let mut wallets = Vec::new();
    for w in 0..2 {
        let wallet = create_wallet(&stack).await.expect("create wallet");
        set_policy(&stack, &wallet, &policy(w)).await.expect("set policy");
        wallets.push(wallet);
    }
    let mut policy_variant = [0usize, 1usize];
    for i in 0..LIVE_SESSIONS {
        let s = issue(&stack, &shared, &wallets, i % 2, false).await.expect("issue session");
        shared.live.write().expect("live").push(s);
    }

    // The maximum, closed loop.
    let max_rate = measure_max(&shared, &stack.url, cfg.measure_clients, cfg.measure_seconds).await;
    let rate = cfg.fixed_rate.unwrap_or(max_rate * cfg.rate_fraction).max(1.0);
    println!(
        "soak: maximum {max_rate:.0} payments/s ({} clients, closed loop, {} s); open loop at {rate:.0}/s for the rest",
        cfg.measure_clients, cfg.measure_seconds
    );
    let capped = issue(&stack, &shared, &wallets, 0, true).await.expect("issue capped session");
    *shared.capped.write().expect("capped") = Some(capped);

    // The open loop.
    let open_start = t0.elapsed();
    let end = t0 + Duration::from_secs(cfg.seconds);
    let load_until = end.checked_sub(Duration::from_secs(3)).unwrap_or(end);
    let load = tokio::spawn(open_loop(
        Arc::clone(&shared),
        stack.url.clone(),
        rate,
        load_until,
        Arc::clone(&stop),
    ));
    let load_span = load_until.saturating_duration_since(Instant::now());
    // Restarts spread over the first 60 % of the open loop (from 10 %): the last incarnation runs
    // the remaining 40 %, the longest steady window.
    let restart_at: Vec<Instant> = (0..cfg.restarts)
        .map(|i| {
            let f = if cfg.restarts == 1 {
                0.3
            } else {
                0.1 + 0.5 * i as f64 / (cfg.restarts - 1) as f64
            };
            Instant::now() + load_span.mul_f64(f)
        })
        .collect();
    let mut restarts: Vec<Restart> = Vec::new();
    let mut next_rotate = Instant::now() + Duration::from_millis(cfg.rotate_ms);
    let (mut issued, mut revoked, mut policy_changes) = (LIVE_SESSIONS + 1, 0usize, 0usize);
    let mut rotation = 0usize;
    while Instant::now() < load_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if interrupt.load(Ordering::SeqCst) {
            violations.push("interrupted before the end".into());
            break;
        }
        if restarts.len() < restart_at.len() && Instant::now() >= restart_at[restarts.len()] {
            let graceful = restarts.len().is_multiple_of(2);
            let at_s = t0.elapsed().as_secs_f64();
            let t = Instant::now();
            let history = shared.signed.load(Ordering::Relaxed);
            shared.outage_open.store(now_ms(), Ordering::SeqCst);
            shared.enclave_pid.store(0, Ordering::SeqCst);
            shared.incarnation.fetch_add(1, Ordering::SeqCst);
            let clean_exit = if graceful {
                stack.enclave.terminate()
            } else {
                stack.enclave.kill();
                true
            };
            if !clean_exit {
                violations.push(format!("graceful stop at {at_s:.0} s: the enclave did not exit cleanly within 10 s of SIGTERM"));
                stack.enclave.kill();
            }
            match start_enclave_patiently(
                stack.dir.path(),
                "info",
                &EnclaveStorage::Local,
                &enclave_args,
                Duration::from_secs(RESTART_WAIT_S),
            ) {
                Ok(e) => stack.enclave = e,
                Err(e) => {
                    violations.push(format!("restart at {at_s:.0} s: {e}"));
                    shared
                        .outages
                        .lock()
                        .expect("outages")
                        .push((shared.outage_open.swap(0, Ordering::SeqCst), u64::MAX));
                    break;
                }
            }
            shared.enclave_pid.store(stack.enclave.0.id(), Ordering::SeqCst);
            shared.incarnation.fetch_add(1, Ordering::SeqCst);
            let opened = shared.outage_open.swap(0, Ordering::SeqCst);
            // A grace after the socket is back: the gateway reconnects on demand.
            shared.outages.lock().expect("outages").push((opened, now_ms() + 2000));
            restarts.push(Restart { graceful, clean_exit, at_s, took: t.elapsed(), history });
            println!(
                "soak: {:>6.1} s: enclave restarted ({}) in {:.2} s",
                at_s,
                if graceful { "SIGTERM" } else { "SIGKILL" },
                t.elapsed().as_secs_f64()
            );
            continue;
        }
        if Instant::now() >= next_rotate {
            next_rotate = Instant::now() + Duration::from_millis(cfg.rotate_ms);
            rotation += 1;
            // A new session on alternating wallets; the oldest live one revoked while traffic
            // still goes to it, and taken out of rotation a second later.
            let w = rotation % 2;
            match issue(&stack, &shared, &wallets, w, false).await {
                Ok(s) => {
                    issued += 1;
                    shared.live.write().expect("live").push(s);
                }
                Err(e) => violations.push(format!("{:.0} s: {e}", t0.elapsed().as_secs_f64())),
            }
            let oldest = shared.live.read().expect("live").first().copied();
            if let Some(old) = oldest {
                match revoke(&stack, &shared, old).await {
                    Ok(()) => revoked += 1,
                    Err(e) => violations.push(format!("{:.0} s: {e}", t0.elapsed().as_secs_f64())),
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
                shared.live.write().expect("live").retain(|i| *i != old);
            }
            // A fresh capped session (the old one has usually run into its cap).
            match issue(&stack, &shared, &wallets, w, true).await {
                Ok(s) => {
                    issued += 1;
                    *shared.capped.write().expect("capped") = Some(s);
                }
                Err(e) => violations.push(format!("{:.0} s: {e}", t0.elapsed().as_secs_f64())),
            }
            if rotation.is_multiple_of(2) {
                let pw = (rotation / 2) % 2;
                policy_variant[pw] += 1;
                match set_policy(&stack, &wallets[pw], &policy(policy_variant[pw])).await {
                    Ok(()) => policy_changes += 1,
                    Err(e) => violations.push(format!("{:.0} s: {e}", t0.elapsed().as_secs_f64())),
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let sent = load.await.expect("open loop");
    let open_secs = (t0.elapsed() - open_start).as_secs_f64();
    let samples = sampler_task.await.expect("sampler");
    let elapsed_run = t0.elapsed();

    // ---- classify ------------------------------------------------------------------------------
    let recs = std::mem::take(&mut *shared.recs.lock().expect("recs"));
    let outages = shared.outages.lock().expect("outages").clone();
    let sessions = shared.sessions.read().expect("sessions").clone();
    let errors = shared.errors.lock().expect("errors").clone();
    let in_outage = |r: &Rec| outages.iter().any(|(a, b)| r.sent_ms <= *b && r.done_ms >= *a);
    let mut kinds: HashMap<String, u64> = HashMap::new();
    let mut failures: HashMap<String, u64> = HashMap::new();
    let mut books: Vec<Book> = vec![Book::default(); sessions.len()];
    let mut lat_steady = Vec::new();
    let mut requests = 0u64;
    let mut maybe_charged: HashSet<usize> = HashSet::new();
    let mut not_sent: HashSet<usize> = HashSet::new();
    for (seq, r) in recs.iter().enumerate() {
        if r.amount == 0 && r.outcome == Outcome::NotSent {
            continue; // prepared for the closed loop, never sent
        }
        requests += 1;
        let s = &sessions[r.session as usize];
        let b = &mut books[r.session as usize];
        let mut fail = |k: &str| *failures.entry(k.to_owned()).or_default() += 1;
        let kind = match r.outcome {
            Outcome::Signed => {
                b.seen += 1;
                b.seen_sum = add(b.seen_sum, r.amount);
                if !in_outage(r) {
                    lat_steady.push(r.latency_us);
                }
                "signed"
            }
            Outcome::Pending => {
                fail("no answer by the end of the run");
                maybe_charged.insert(seq);
                "pending"
            }
            Outcome::WrongAmount => {
                fail("signed a different amount");
                "wrong amount"
            }
            Outcome::NotSent => {
                not_sent.insert(seq);
                if in_outage(r) {
                    "enclave down (not sent): expected"
                } else {
                    fail("ENCLAVE_UNAVAILABLE outside a restart");
                    "enclave unavailable"
                }
            }
            Outcome::Lost => {
                maybe_charged.insert(seq);
                b.lost += 1;
                b.lost_sum = add(b.lost_sum, r.amount);
                if in_outage(r) {
                    "answer lost in a restart (in flight): expected"
                } else {
                    fail("answer lost outside a restart");
                    "answer lost"
                }
            }
            Outcome::Floor => {
                if in_outage(r) {
                    "refused by the replay floor after a restart: expected"
                } else {
                    fail("STALE_REQUEST/REPLAYED_REQUEST outside a restart");
                    "stale"
                }
            }
            Outcome::Revoked => {
                maybe_charged.insert(seq);
                b.revoked += 1;
                b.revoked_sum = add(b.revoked_sum, r.amount);
                let started = s.revoke_started_ms.load(Ordering::SeqCst);
                if started != 0 && started <= r.done_ms {
                    "session just revoked: expected"
                } else {
                    fail("SESSION_REVOKED on a session not revoked");
                    "revoked"
                }
            }
            Outcome::Cap => {
                if s.capped {
                    "capped session at its cap: expected"
                } else {
                    fail("SESSION_CAP on a session far from its cap");
                    "cap"
                }
            }
            Outcome::Shed => {
                if in_outage(r) {
                    "shed by the generator during a restart: expected"
                } else {
                    fail("shed by the generator (4096 in flight)");
                    "shed"
                }
            }
            Outcome::Other(i) => {
                fail(&errors.get(i as usize).cloned().unwrap_or_default());
                "other"
            }
        };
        *kinds.entry(kind.to_owned()).or_default() += 1;
    }
    lat_steady.sort_unstable();

    // ---- the ledger: live, then the journal ------------------------------------------------------
    let mut ledger_notes: Vec<String> = Vec::new();
    let to_units = |a: U256| units_of_atomic(a).expect("atomic amount in units");
    match enclave_live(&stack, &shared, wallets.len()).await {
        Err(e) => violations.push(format!("ledger: could not read the enclave's figures: {e}")),
        Ok((per_session, per_wallet)) => {
            let mut wallet_books = vec![Book::default(); wallets.len()];
            for (i, s) in sessions.iter().enumerate() {
                let b = &books[i];
                let wb = &mut wallet_books[s.wallet];
                wb.seen_sum = wb.seen_sum.checked_add(b.seen_sum).expect("sum");
                wb.seen += b.seen;
                wb.lost_sum = wb.lost_sum.checked_add(b.lost_sum).expect("sum");
                wb.revoked_sum = wb.revoked_sum.checked_add(b.revoked_sum).expect("sum");
                let Some(spent) = per_session.get(&s.cred.session_id) else {
                    violations.push(format!("ledger: session {} is not listed", s.cred.session_id));
                    continue;
                };
                let lo = to_units(b.seen_sum);
                let hi = to_units(
                    b.seen_sum
                        .checked_add(b.lost_sum)
                        .and_then(|x| x.checked_add(b.revoked_sum))
                        .expect("sum"),
                );
                if *spent < lo || *spent > hi {
                    violations.push(format!(
                        "ledger: session {}: the enclave says spent {}, the soak received {} (+ {} in flight at a restart, + {} denied as revoked)",
                        s.cred.session_id, human(*spent), human(lo), human(to_units(b.lost_sum)), human(to_units(b.revoked_sum))
                    ));
                }
                if *spent > s.cap_units {
                    violations.push(format!(
                        "ledger: session {} spent {} over its cap {}",
                        s.cred.session_id,
                        human(*spent),
                        human(s.cap_units)
                    ));
                }
            }
            for (w, wb) in wallet_books.iter().enumerate() {
                let lo = to_units(wb.seen_sum);
                let hi = to_units(
                    wb.seen_sum
                        .checked_add(wb.lost_sum)
                        .and_then(|x| x.checked_add(wb.revoked_sum))
                        .expect("sum"),
                );
                match per_wallet[w] {
                    None => ledger_notes
                        .push(format!("wallet {w}: no hourly window to compare (no live session)")),
                    Some(_) if elapsed_run > Duration::from_secs(3300) => {
                        ledger_notes.push(format!(
                            "wallet {w}: the run is longer than the hourly window: not compared"
                        ))
                    }
                    Some((spent, payments)) => {
                        if spent < lo || spent > hi {
                            violations.push(format!(
                                "ledger: wallet {w}: the enclave's hourly window says spent {} ({payments} payments), the soak received {} ({} payments) + {} in flight + {} revoked",
                                human(spent), human(lo), wb.seen, human(to_units(wb.lost_sum)), human(to_units(wb.revoked_sum))
                            ));
                        }
                        let budget = parse_decimal(WALLET_HOURLY, 18).expect("budget");
                        if spent > budget {
                            violations.push(format!(
                                "ledger: wallet {w} spent {} over its hourly budget",
                                human(spent)
                            ));
                        }
                        ledger_notes.push(format!(
                            "wallet {w}: enclave {} in {payments} payments; received {} in {} payments",
                            human(spent), human(lo), wb.seen
                        ));
                    }
                }
            }
        }
    }
    // The journal itself, after a graceful stop, payment by payment.
    let clean = stack.enclave.terminate();
    if !clean {
        violations.push("final graceful stop: the enclave did not exit cleanly".into());
        stack.enclave.kill();
    }
    let mut journal_summary = String::new();
    // The enclave's reader holds the whole file and its records at once: on a machine without
    // the room for that, the journal is not read (and the summary says so).
    let journal_bytes =
        std::fs::metadata(stack.data_dir().join("spends.journal")).map_or(0, |m| m.len());
    let available = mem_available_kib().unwrap_or(u64::MAX / 4);
    let needed = journal_bytes / 1024 * 5 / 2 + 2 * 1024 * 1024;
    let read = if needed > available {
        journal_summary = format!(
            "NOT READ: reading a {} MiB journal needs about {} MiB, {} MiB available; checked on the live figures only",
            journal_bytes >> 20,
            needed >> 10,
            available >> 10
        );
        Err(None)
    } else {
        let t = Instant::now();
        let r = journal(&stack.data_dir());
        println!(
            "soak: journal of {} MiB read in {:.1} s",
            journal_bytes >> 20,
            t.elapsed().as_secs_f64()
        );
        r.map_err(Some)
    };
    match read {
        Err(None) => {}
        Err(Some(e)) => violations.push(format!("ledger: {e}")),
        Ok((spends, withheld)) => {
            let by_id: HashMap<&str, usize> =
                sessions.iter().enumerate().map(|(i, s)| (s.cred.session_id.as_str(), i)).collect();
            let mut keys = HashSet::new();
            let mut per_session = vec![U256::ZERO; sessions.len()];
            let (mut unseen_lost, mut unseen_withheld) = (0u64, 0u64);
            let mut bad = 0usize;
            let mut complain = |v: &mut Vec<String>, m: String| {
                bad += 1;
                if bad <= 10 {
                    v.push(m);
                }
            };
            for (sid, key, _wallet, amount) in &spends {
                if !keys.insert((sid.clone(), key.clone())) {
                    complain(&mut violations, format!("journal: {sid}/{key} recorded twice"));
                }
                let Some(&si) = by_id.get(sid.as_str()) else {
                    complain(
                        &mut violations,
                        format!("journal: a spend of an unknown session {sid}"),
                    );
                    continue;
                };
                per_session[si] = per_session[si].checked_add(*amount).expect("sum");
                let Some(seq) = key.strip_prefix("soak-").and_then(|k| k.parse::<usize>().ok())
                else {
                    complain(
                        &mut violations,
                        format!("journal: a spend under a key the soak never used: {key}"),
                    );
                    continue;
                };
                let Some(r) = recs.get(seq) else {
                    complain(
                        &mut violations,
                        format!("journal: a spend under a key the soak never used: {key}"),
                    );
                    continue;
                };
                if r.session as usize != si || U256::from(r.amount) != *amount {
                    complain(
                        &mut violations,
                        format!(
                            "journal: {key} is {amount} on {sid}; the soak asked {} on {}",
                            r.amount, sessions[r.session as usize].cred.session_id
                        ),
                    );
                }
                match r.outcome {
                    Outcome::Signed => {}
                    Outcome::Revoked if withheld.contains(&(sid.clone(), key.clone())) => unseen_withheld += 1,
                    _ if maybe_charged.contains(&seq) && r.outcome != Outcome::Revoked => unseen_lost += 1,
                    o => complain(&mut violations, format!("journal: {key} is recorded, but the soak was told {o:?} (not a lost answer)")),
                }
            }
            // Every signature received is recorded.
            let mut missing = 0u64;
            for (seq, r) in recs.iter().enumerate() {
                if r.outcome == Outcome::Signed
                    && !keys.contains(&(
                        sessions[r.session as usize].cred.session_id.clone(),
                        format!("soak-{seq}"),
                    ))
                {
                    missing += 1;
                }
            }
            if missing > 0 {
                violations.push(format!(
                    "journal: {missing} signatures the soak received are not in the spend journal"
                ));
            }
            let mut sum_seen = U256::ZERO;
            let mut sum_journal = U256::ZERO;
            for (i, s) in sessions.iter().enumerate() {
                let b = &books[i];
                sum_seen = sum_seen.checked_add(b.seen_sum).expect("sum");
                sum_journal = sum_journal.checked_add(per_session[i]).expect("sum");
                let hi = b
                    .seen_sum
                    .checked_add(b.lost_sum)
                    .and_then(|x| x.checked_add(b.revoked_sum))
                    .expect("sum");
                if per_session[i] < b.seen_sum || per_session[i] > hi {
                    violations.push(format!("journal: session {}: recorded {} atomic, received {} (+ {} in flight, + {} revoked)", s.cred.session_id, per_session[i], b.seen_sum, b.lost_sum, b.revoked_sum));
                }
                if to_units(per_session[i]) > s.cap_units {
                    violations.push(format!("journal: session {} over its cap", s.cred.session_id));
                }
            }
            journal_summary = format!(
                "{} spends recorded, {} atomic units; received {} signatures, {} atomic units; recorded but not received: {unseen_lost} answers lost in restarts, {unseen_withheld} withheld at a revocation; {} withheld records; requests that may have been charged unseen (answers lost, revocation denials): {}; not sent: {}",
                spends.len(),
                sum_journal,
                recs.iter().filter(|r| r.outcome == Outcome::Signed).count(),
                sum_seen,
                withheld.len(),
                maybe_charged.len(),
                not_sent.len(),
            );
        }
    }

    // SOAK_KEEP_LOGS=DIR: the enclave's and the gateway's logs, kept for a look afterwards.
    if let Some(keep) = std::env::var_os("SOAK_KEEP_LOGS") {
        let keep = std::path::PathBuf::from(keep);
        let _ = std::fs::create_dir_all(&keep);
        for f in ["enclave.log", "gateway.log"] {
            if let Err(e) = std::fs::copy(stack.dir.path().join(f), keep.join(f)) {
                eprintln!("soak: could not keep {f}: {e}");
            }
        }
    }

    // ---- resources ---------------------------------------------------------------------------------
    let warmup_ms = ((cfg.idempotency_ttl + 20) * 1000).max(FILL_MS);
    let mut judgments = Vec::new();
    let gw_pts: Vec<(u64, u64, (u64, u64))> =
        samples.iter().filter_map(|s| s.gateway.map(|g| (s.t_ms, s.signed, g))).collect();
    if let Some(mut j) =
        judge("gateway".into(), &gw_pts, elapsed_run.as_millis() as u64 / 4, 0, &cfg)
    {
        j.peak = samples.iter().filter_map(|s| s.gateway_hwm).max().unwrap_or(0);
        judgments.push(j);
    }
    let mut incs: Vec<u32> =
        samples.iter().filter(|s| s.enclave.is_some()).map(|s| s.incarnation).collect();
    incs.dedup();
    for (n, inc) in incs.iter().enumerate() {
        let pts: Vec<_> = samples
            .iter()
            .filter(|s| s.incarnation == *inc)
            .filter_map(|s| s.enclave.map(|e| (s.t_ms, s.signed, e)))
            .collect();
        if let Some(mut j) = judge(format!("enclave #{}", n + 1), &pts, warmup_ms, FILL_MS, &cfg) {
            j.peak = samples
                .iter()
                .filter(|s| s.incarnation == *inc)
                .filter_map(|s| s.enclave_hwm)
                .max()
                .unwrap_or(0);
            judgments.push(j);
        }
    }
    let judged = judgments.iter().filter(|j| j.verdict.is_some()).count();
    if judged == 0 {
        violations.push("resources: no process ran long enough to be judged".into());
    }
    let strict_enclave = judgments
        .iter()
        .any(|j| j.name.starts_with("enclave") && j.verdict.as_ref().is_some_and(|v| v.strict));
    if cfg.seconds >= 900 && !strict_enclave {
        violations
            .push("resources: no enclave incarnation ran long enough to be judged strictly".into());
    }
    for j in &judgments {
        violations.extend(j.violations.iter().cloned());
    }
    let failed: u64 = failures.values().sum();

    // ---- summary -----------------------------------------------------------------------------------
    let open_requests = sent;
    println!();
    println!("## soak summary");
    println!(
        "started at unix ms {started_at}; ran {:.0} s of {} s; binaries {}",
        elapsed_run.as_secs_f64(),
        cfg.seconds,
        exe.display()
    );
    println!(
        "maximum (closed loop, {} clients, {} s): {max_rate:.0}/s; open loop at {rate:.0}/s for {open_secs:.0} s: {open_requests} scheduled ({:.0}/s)",
        cfg.measure_clients,
        cfg.measure_seconds,
        open_requests as f64 / open_secs.max(1.0)
    );
    println!(
        "requests {requests}, signed {}, failures {failed}; latency of signed payments outside restarts: p50 {}, p99 {}, p99.9 {}, max {}",
        recs.iter().filter(|r| r.outcome == Outcome::Signed).count(),
        ms(percentile(&lat_steady, 0.5)),
        ms(percentile(&lat_steady, 0.99)),
        ms(percentile(&lat_steady, 0.999)),
        ms(lat_steady.last().copied().unwrap_or(0))
    );
    let mut k: Vec<_> = kinds.into_iter().collect();
    k.sort();
    for (kind, n) in &k {
        println!("  {kind}: {n}");
    }
    if !failures.is_empty() {
        println!("failures by kind:");
        for (kind, n) in &failures {
            println!("  {n} × {kind}");
        }
    }
    println!("sessions issued {issued}, revoked {revoked}; policy changes {policy_changes}");
    println!("restarts {}:", restarts.len());
    for r in &restarts {
        println!(
            "  at {:.0} s, {}, after {} payments: back in {:.2} s{}",
            r.at_s,
            if r.graceful { "graceful (SIGTERM)" } else { "SIGKILL" },
            r.history,
            r.took.as_secs_f64(),
            if r.graceful && !r.clean_exit { " (did not exit cleanly)" } else { "" }
        );
    }
    println!("resources (RSS KiB / fds: first, last, max; flat: median of the 2nd and last quarter after warm-up):");
    for j in &judgments {
        let v = j.verdict.as_ref().map_or_else(
            || "too short to judge".to_owned(),
            |v| {
                format!(
                    "{}: RSS {} -> {} KiB (limit +{} KiB{}), fds {} -> {}; {} payments between{}",
                    if v.strict { "strict" } else { "loose (still filling)" },
                    v.rss_q2,
                    v.rss_q4,
                    v.rss_limit,
                    v.per_payment.map_or_else(String::new, |b| format!(", {b:.0} B/payment")),
                    v.fd_q2,
                    v.fd_q4,
                    v.payments,
                    v.detectable.map_or_else(String::new, |d| format!(
                        "; detects leaks >= {d:.0} B/payment"
                    ))
                )
            },
        );
        println!(
            "  {}: {} samples, RSS {}/{}/{} (peak incl. start-up {}), fds {}/{}/{}; {v}",
            j.name, j.samples, j.first.0, j.last.0, j.max.0, j.peak, j.first.1, j.last.1, j.max.1
        );
    }
    println!("ledger:");
    for n in &ledger_notes {
        println!("  {n}");
    }
    println!("  journal: {journal_summary}");
    if violations.is_empty() && failed == 0 {
        println!("soak: PASS");
    } else {
        for v in &violations {
            println!("VIOLATION: {v}");
        }
        println!("soak: FAIL ({} violations, {failed} failed requests)", violations.len());
        drop(stack);
        std::process::exit(1);
    }
}
