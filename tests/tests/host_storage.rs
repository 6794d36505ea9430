//! The enclave on storage the host provides (`wallet-enclave --host-storage`, served by
//! `wallet-gateway --serve-storage`), as a Nitro enclave runs without a disk, here over a Unix
//! socket: every test here uses host storage whatever `WALLET_E2E_STORAGE` says.
//!
//! * payments are durable across crashes (SIGKILL) and restarts; the host's files hold no secret;
//! * the host rolling back, cutting or deleting any one file is refused at start-up;
//! * a hostile host (garbage, huge lengths, a closed connection) makes the enclave fail closed:
//!   no signature, no crash, no spend lost, and a clear error.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use prost::Message as _;
use wallet_client::Credential;
use wallet_e2e::{header, now_ms, Stack, StackOptions, Storage};
use wallet_proto::{
    gateway::v1 as gw,
    storage::v1::{self as st, storage_request::Op, storage_response::Result as Answer},
    AdminRpc,
};

/// The four files the host keeps for the enclave.
const HOST_FILES: [&str; 4] = ["state.log", "spends.journal", "audit.log", "commit.head"];

fn host_stack(options: StackOptions) -> Stack {
    Stack::start_with(StackOptions { storage: Some(Storage::Host), ..options })
}

async fn pay(
    stack: &Stack,
    cred: &Credential,
    amount: &str,
    idem: &str,
) -> Result<gw::SignPaymentResponse, tonic::Status> {
    stack
        .client()
        .await
        .sign_payment(cred.sign_request(&header(amount), "", "", idem, now_ms()))
        .await
        .map(tonic::Response::into_inner)
}

fn reason(s: &tonic::Status) -> String {
    s.metadata().get("x-wallet-reason").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

async fn revoke(stack: &Stack, session: &str) {
    stack
        .client()
        .await
        .revoke_session(stack.signed(
            AdminRpc::RevokeSession,
            gw::RevokeSessionRequest { session_id: session.to_owned(), auth: None },
        ))
        .await
        .expect("revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_over_host_storage_survive_crashes_and_the_host_holds_no_secret() {
    let mut stack = host_stack(StackOptions::default());
    let status = stack.status().await;
    assert!(status.data_dir.starts_with("host storage at unix:"), "{}", status.data_dir);
    let data = stack.data_dir();
    for f in HOST_FILES {
        assert!(data.join(f).is_file(), "the host keeps {f}");
    }
    assert!(!data.join("state").exists(), "no sled directory: the state is the host's log");

    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "0.03", gw::IssueSessionRequest::default()).await;
    let first = pay(&stack, &cred, "10000", "k1").await.expect("first payment");
    pay(&stack, &cred, "10000", "k2").await.expect("second payment");
    assert_eq!(stack.spent(&cred.session_id).await, "0.02");

    // A crash: the spends are on the host, durable before their signatures left.
    stack.crash_and_restart_enclave();
    assert_eq!(stack.spent(&cred.session_id).await, "0.02", "counted after a crash");
    let again = pay(&stack, &cred, "10000", "k1").await.expect("idempotent retry");
    assert_eq!(again.payment_signature, first.payment_signature, "the same payload, charged once");
    pay(&stack, &cred, "10000", "k3").await.expect("third payment");
    let e = pay(&stack, &cred, "10000", "k4").await.expect_err("over the cap");
    assert_eq!(reason(&e), "SESSION_CAP");
    // A clean stop and start.
    assert!(stack.enclave.terminate(), "the enclave stops cleanly on SIGTERM");
    stack.crash_and_restart_enclave();
    assert_eq!(stack.spent(&cred.session_id).await, "0.03");
    let e = pay(&stack, &cred, "10000", "k5").await.expect_err("still over the cap");
    assert_eq!(reason(&e), "SESSION_CAP");

    // What the host holds: no secret, raw or hex. The secrets, unsealed here with the enclave's
    // own code once it is stopped (the sealing key is beside the data in simulated mode only).
    let cred_file = stack.dir.path().join("agent.json");
    cred.write(&cred_file).unwrap();
    let cred_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cred_file).unwrap()).unwrap();
    let session_secret = hex::decode(cred_json["session_secret"].as_str().unwrap()).unwrap();
    stack.enclave.kill();
    stack.gateway.kill();
    let sealing_key = std::fs::read(data.join("sealing.key")).unwrap();
    assert_eq!(sealing_key.len(), 32);
    let state = stack.open_state_store();
    let wallet_key = state
        .get(wallet_enclave::store::Table::Keys, w.wallet_id.as_bytes())
        .unwrap()
        .expect("wallet key")
        .to_vec();
    let audit_key = state
        .get(wallet_enclave::store::Table::Keys, b"audit-key")
        .unwrap()
        .expect("audit key")
        .to_vec();
    drop(state);
    assert_eq!(wallet_key.len(), 32);
    let admin_secret = hex::decode(
        std::fs::read_to_string(stack.dir.path().join("home/admin.key")).unwrap().trim(),
    )
    .unwrap();
    let secrets: [(&str, &[u8]); 5] = [
        ("wallet key", &wallet_key),
        ("session secret", &session_secret),
        ("sealing key", &sealing_key),
        ("admin key", &admin_secret),
        ("audit signing key", &audit_key),
    ];
    // The search can find what it looks for: the credential file holds the session secret.
    assert!(std::fs::read_to_string(&cred_file).unwrap().contains(&hex::encode(&session_secret)));
    let mut haystacks: Vec<(String, Vec<u8>)> = HOST_FILES
        .iter()
        .map(|f| ((*f).to_owned(), std::fs::read(data.join(f)).unwrap()))
        .collect();
    haystacks
        .push(("gateway.log".into(), std::fs::read(stack.dir.path().join("gateway.log")).unwrap()));
    assert!(haystacks[1].1.len() > 1000, "the journal holds the spends");
    for (what, secret) in secrets {
        let (lower, upper) = (hex::encode(secret), hex::encode_upper(secret));
        for (name, hay) in &haystacks {
            assert!(!hay.windows(secret.len()).any(|w| w == secret), "{what} found raw in {name}");
            let text = String::from_utf8_lossy(hay);
            assert!(
                !text.contains(&lower) && !text.contains(&upper),
                "{what} found as hex in {name}"
            );
        }
    }
}

/// The frames of a journal or state log: (start, end).
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push((at, at + 4 + len));
        at += 4 + len;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_back_cutting_or_deleting_a_host_file_is_refused_at_start_up() {
    let mut stack = host_stack(StackOptions::default());
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    for i in 0..3 {
        pay(&stack, &cred, "10000", &format!("k{i}")).await.expect("payment");
    }
    let data = stack.data_dir();
    let before_revoke = std::fs::read(data.join("state.log")).unwrap();
    revoke(&stack, &cred.session_id).await;
    stack.enclave.kill();
    let genuine: HashMap<&str, Vec<u8>> =
        HOST_FILES.iter().map(|f| (*f, std::fs::read(data.join(f)).unwrap())).collect();
    let restore = || {
        for (f, b) in &genuine {
            std::fs::write(data.join(f), b).unwrap();
        }
    };

    // The state log put back to before the revocation (its last batch dropped): the session
    // would be live again.
    std::fs::write(data.join("state.log"), &before_revoke).unwrap();
    let why = stack.enclave_refusal();
    assert!(why.contains("state store is behind the commit head"), "{why}");
    // The state log's last batch cut off whole.
    let log = &genuine["state.log"];
    let last = *frames(log).last().unwrap();
    std::fs::write(data.join("state.log"), &log[..last.0]).unwrap();
    let why = stack.enclave_refusal();
    assert!(why.contains("state store is behind the commit head"), "{why}");
    restore();

    // The journal's last record cut, then corrupted.
    let journal = &genuine["spends.journal"];
    let records = frames(journal);
    assert_eq!(records.len(), 3);
    let (at, end) = records[2];
    let mut cut = journal.clone();
    cut[at..end].fill(0);
    std::fs::write(data.join("spends.journal"), &cut).unwrap();
    let why = stack.enclave_refusal();
    assert!(
        why.contains("spend journal holds 2 records") && why.contains("3 were durable"),
        "{why}"
    );
    let mut flipped = journal.clone();
    flipped[(at + end) / 2] ^= 1;
    std::fs::write(data.join("spends.journal"), &flipped).unwrap();
    let why = stack.enclave_refusal();
    assert!(why.contains("spend journal"), "{why}");
    restore();

    // Audit lines deleted from the end.
    let text = String::from_utf8(genuine["audit.log"].clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(data.join("audit.log"), lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let why = stack.enclave_refusal();
    assert!(why.contains("audit log holds") && why.contains("deleted from its end"), "{why}");
    restore();

    // The commit head deleted.
    std::fs::remove_file(data.join("commit.head")).unwrap();
    let why = stack.enclave_refusal();
    assert!(why.contains("commit head (commit.head) is missing"), "{why}");
    restore();

    // Everything as it was: the enclave starts; nothing was lost, the revocation holds.
    stack.crash_and_restart_enclave();
    assert_eq!(stack.spent(&cred.session_id).await, "0.03");
    let e = pay(&stack, &cred, "10000", "after").await.expect_err("revoked");
    assert_eq!(reason(&e), "SESSION_REVOKED");
}

/// How the proxy between the enclave and its host misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostility {
    /// Relays faithfully.
    Pass,
    /// Answers writes with bytes that are not a `StorageResponse`.
    GarbleWriteAnswers,
    /// Answers every request with garbage.
    GarbleAll,
    /// Answers `len` with 2^62 bytes.
    HugeLength,
    /// Declares an answer frame of 4 GiB.
    HugeFrame,
    /// Closes the connection on the first request.
    CloseOnRequest,
}

fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn frame(m: &impl prost::Message) -> Vec<u8> {
    wallet_proto::encode_frame(m).unwrap()
}

/// A host in the middle: listens on `front` and relays to `upstream`, misbehaving as `mode`
/// says.
fn start_proxy(front: &Path, upstream: PathBuf, mode: Arc<Mutex<Hostility>>) {
    let listener = UnixListener::bind(front).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(down) = conn else { return };
            let Ok(up) = UnixStream::connect(&upstream) else { continue };
            let kinds: Arc<Mutex<HashMap<u64, &'static str>>> = Arc::default();
            let (mut down_rd, mut down_wr) = (down.try_clone().unwrap(), down);
            let (mut up_rd, mut up_wr) = (up.try_clone().unwrap(), up);
            let (m, k) = (Arc::clone(&mode), Arc::clone(&kinds));
            let closer = (down_wr.try_clone().unwrap(), up_wr.try_clone().unwrap());
            std::thread::spawn(move || {
                while let Some(body) = read_frame(&mut down_rd) {
                    let req = st::StorageRequest::decode(body.as_slice()).unwrap();
                    let kind = match req.op {
                        Some(Op::Len(_)) => "len",
                        Some(Op::Write(_)) => "write",
                        _ => "other",
                    };
                    k.lock().unwrap().insert(req.request_id, kind);
                    if *m.lock().unwrap() == Hostility::CloseOnRequest {
                        break;
                    }
                    if up_wr.write_all(&frame(&req)).is_err() {
                        break;
                    }
                }
                let _ = closer.0.shutdown(std::net::Shutdown::Both);
                let _ = closer.1.shutdown(std::net::Shutdown::Both);
            });
            let m = Arc::clone(&mode);
            std::thread::spawn(move || {
                while let Some(body) = read_frame(&mut up_rd) {
                    let mut resp = st::StorageResponse::decode(body.as_slice()).unwrap();
                    let kind = kinds.lock().unwrap().remove(&resp.request_id).unwrap_or("other");
                    let out = match (*m.lock().unwrap(), kind) {
                        (Hostility::GarbleAll, _) | (Hostility::GarbleWriteAnswers, "write") => {
                            vec![0, 0, 0, 3, 0xff, 0xff, 0xff]
                        }
                        (Hostility::HugeFrame, _) => vec![0xff; 4],
                        (Hostility::HugeLength, "len") => {
                            resp.result = Some(Answer::Length(1 << 62));
                            frame(&resp)
                        }
                        _ => frame(&resp),
                    };
                    if down_wr.write_all(&out).is_err() {
                        break;
                    }
                }
                let _ = down_wr.shutdown(std::net::Shutdown::Both);
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_host_makes_the_enclave_fail_closed_without_losing_a_spend() {
    let sockets = tempfile::tempdir().unwrap();
    let (real, front) = (sockets.path().join("real.sock"), sockets.path().join("front.sock"));
    let mode = Arc::new(Mutex::new(Hostility::Pass));
    start_proxy(&front, real.clone(), Arc::clone(&mode));
    let set = |m: Hostility| *mode.lock().unwrap() = m;
    let mut stack = host_stack(StackOptions {
        storage_socket: Some(real),
        enclave_storage_socket: Some(front),
        ..StackOptions::default()
    });
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    pay(&stack, &cred, "10000", "k1").await.expect("a payment through an honest host");

    // The host garbles the answer to a write during a payment: no signature.
    set(Hostility::GarbleWriteAnswers);
    let e = pay(&stack, &cred, "10000", "k2").await.expect_err("fails closed");
    assert_ne!(e.code(), tonic::Code::Ok);
    // The host behaves again: still nothing signed until a restart (a write's effect on the
    // host is unknown), and the enclave is alive and answering.
    set(Hostility::Pass);
    let e = pay(&stack, &cred, "10000", "k3").await.expect_err("still closed");
    assert!(!e.message().is_empty());
    assert!(stack.enclave.0.try_wait().unwrap().is_none(), "the enclave did not exit");
    assert!(stack.status().await.enclave_reachable);

    // Restart: the durable spend is counted; the failed payment's record may be counted too
    // (charged, never released), never less.
    stack.crash_and_restart_enclave();
    let spent = stack.spent(&cred.session_id).await;
    assert!(spent == "0.01" || spent == "0.02", "{spent}");
    pay(&stack, &cred, "10000", "k4").await.expect("served again once restarted");

    // At start-up, each hostile answer is a refusal with a sentence: no panic, no allocation
    // of what the host claims.
    stack.enclave.kill();
    for (hostility, words) in [
        (Hostility::HugeLength, "more than the"),
        (Hostility::HugeFrame, "oversized frame"),
        (Hostility::GarbleAll, "malformed answer"),
        (Hostility::CloseOnRequest, "closed the connection"),
    ] {
        set(hostility);
        let why = stack.enclave_refusal();
        assert!(why.contains(words), "{hostility:?}: {why}");
        assert!(!why.contains("panicked"), "{hostility:?}: {why}");
    }
    set(Hostility::Pass);
    stack.crash_and_restart_enclave();
    let after = stack.spent(&cred.session_id).await;
    let before: f64 = spent.parse().unwrap();
    assert_eq!(after.parse::<f64>().unwrap(), before + 0.01, "{spent} then {after}");
}

/// The host's storage server restarts (the gateway serves it) while the enclave is idle, with
/// everything synced: the enclave reconnects and goes on, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_restarting_while_the_enclave_is_idle_is_survived() {
    let mut stack = host_stack(StackOptions::default());
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    pay(&stack, &cred, "10000", "k1").await.expect("payment");
    stack.gateway.kill();
    let socket = wallet_e2e::storage_socket(stack.dir.path());
    let (gateway, url) =
        wallet_e2e::start_gateway_on(stack.dir.path(), "info", None, &[], Some(&socket));
    stack.gateway = gateway;
    stack.url = url;
    pay(&stack, &cred, "10000", "k2").await.expect("a payment after the host restarted");
    assert_eq!(stack.spent(&cred.session_id).await, "0.02");
    stack.crash_and_restart_enclave();
    assert_eq!(stack.spent(&cred.session_id).await, "0.02");
}
