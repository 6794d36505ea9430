//! The audit log, end to end: every decision is recorded; `walletctl audit verify` accepts the
//! genuine log and names what was deleted, edited or truncated, whether the enclave was running
//! or restarted; the enclave will not start on an edited log.

use wallet_e2e::{header, Stack};

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "walletctl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(5),
        "expected verification failure, got: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_decision_is_audited_and_tampering_is_detected() {
    let mut stack = Stack::start();
    let wallet = ok(&stack.walletctl(&["wallet", "create"], ""))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    ok(&stack.walletctl(&["policy", "set", "--wallet", &wallet, "--max-per-payment", "0.05"], ""));
    let cred = stack.dir.path().join("agent.json");
    let issued = ok(&stack.walletctl(
        &["session", "issue", "--wallet", &wallet, "--cap", "1", "--out", cred.to_str().unwrap()],
        "",
    ));
    let session = issued.split_whitespace().nth(1).unwrap().to_owned();
    ok(&stack.walletctl(&["pay", "--session", cred.to_str().unwrap()], &header("10000")));
    assert_eq!(
        stack
            .walletctl(&["pay", "--session", cred.to_str().unwrap()], &header("990000"))
            .status
            .code(),
        Some(3)
    );
    ok(&stack.walletctl(&["session", "revoke", &session], ""));

    let shown = ok(&stack.walletctl(&["audit", "show", "--last", "100"], ""));
    for needle in [
        "admin",
        "AddAdmin",
        "CreateWallet",
        "SetPolicy",
        "IssueSession",
        "payment",
        "0.01 USDC",
        "deny",
        "PER_TX_LIMIT",
        "RevokeSession",
    ] {
        assert!(shown.contains(needle), "audit show lacks {needle:?}:\n{shown}");
    }
    let only_denials = ok(&stack.walletctl(&["audit", "show", "--kind", "deny"], ""));
    assert_eq!(only_denials.lines().count(), 1, "{only_denials}");
    assert!(ok(&stack.walletctl(&["audit", "verify"], "")).contains("audit log OK"));

    let log = stack.data_dir().join("audit.log");
    let genuine = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = genuine.lines().collect();
    assert_eq!(
        lines.len(),
        7,
        "AddAdmin, CreateWallet, SetPolicy, IssueSession, payment, deny, RevokeSession"
    );

    // Edited while the enclave runs: the amount of the payment.
    let edited = genuine.replacen("0.01 USDC", "0.00 USDC", 1);
    std::fs::write(&log, &edited).unwrap();
    let err = failed(&stack.walletctl(&["audit", "verify"], ""));
    assert!(err.contains("record") && err.contains("AUDIT_TAMPERED"), "{err}");

    // Reordered.
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    std::fs::write(&log, swapped.join("\n") + "\n").unwrap();
    assert!(failed(&stack.walletctl(&["audit", "verify"], "")).contains("record 2"));

    // Truncated while running.
    std::fs::write(&log, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    assert!(failed(&stack.walletctl(&["audit", "verify"], "")).contains("truncated"));

    // Truncated at rest: the enclave refuses to start (the commit head counts the audit records
    // that were durable), naming the log.
    stack.enclave.kill();
    std::fs::write(&log, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let stderr = stack.enclave_refusal();
    assert!(stderr.contains("audit log holds 5 records"), "{stderr}");
    std::fs::write(&log, &genuine).unwrap();

    // The whole data directory put back to an older copy, commit head included: consistent, so
    // the enclave starts — but walletctl remembers the head it verified last.
    let older = tempfile::tempdir().unwrap();
    copy_dir(&stack.data_dir(), older.path());
    stack.crash_and_restart_enclave();
    ok(&stack.walletctl(&["kyt", "add", "0x1111111111111111111111111111111111111111"], ""));
    assert!(ok(&stack.walletctl(&["audit", "verify"], "")).contains("audit log OK"));
    stack.enclave.kill();
    let newer = tempfile::tempdir().unwrap();
    copy_dir(&stack.data_dir(), newer.path());
    replace_dir(&stack.data_dir(), older.path());
    stack.crash_and_restart_enclave();
    let err = failed(&stack.walletctl(&["audit", "verify"], ""));
    assert!(err.contains("no longer contains"), "{err}");
    let out = stack.walletctl(&["status"], "");
    assert_eq!(out.status.code(), Some(5), "status must fail after a rollback");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ROLLED BACK") && err.contains("fewer than the 8"), "{err}");
    stack.enclave.kill();
    replace_dir(&stack.data_dir(), newer.path());
    stack.crash_and_restart_enclave();
    assert!(ok(&stack.walletctl(&["status"], ""))
        .contains("audit:    8 records (signed; 8 verified last)"));
    let genuine = std::fs::read_to_string(&log).unwrap();
    let edited = genuine.replacen("0.01 USDC", "0.00 USDC", 1);

    // Edited at rest: the enclave refuses to start and names the record.
    stack.enclave.kill();
    std::fs::write(&log, &edited).unwrap();
    let stderr = stack.enclave_refusal();
    assert!(stderr.contains("audit log") && stderr.contains("record"), "{stderr}");

    // Restoring the genuine log restores service; nothing was lost.
    std::fs::write(&log, &genuine).unwrap();
    stack.crash_and_restart_enclave();
    assert!(ok(&stack.walletctl(&["audit", "verify"], "")).contains("audit log OK"));
}

/// Starts a second enclave on the stack's (stopped) data directory and returns its stderr; it
/// must refuse to start.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replaces the contents of `dir` by a copy of `from` (sockets are left alone).
fn replace_dir(dir: &std::path::Path, from: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(entry.path()).unwrap();
        } else if entry.file_type().unwrap().is_file() {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    copy_dir(from, dir);
}

/// An archived audit log. With a ledger snapshot past its first 1,024 records, the enclave
/// starts on a log whose beginning the host archived (zeroed) and verifies what follows; a
/// whole-log `audit verify` reports the archived stretch; `audit verify --since-last` checks the
/// records after the head verified last up to the enclave's signed head; and `audit verify
/// --archive FILE` checks the archived copy, offline, against the heads verified before — and
/// refuses an edited copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_audit_log_is_verified_against_its_signed_checkpoints() {
    use wallet_proto::gateway::v1 as gw;
    let mut stack = Stack::start_with(wallet_e2e::StackOptions {
        enclave_args: vec!["--snapshot-every".into(), "1100".into()],
        ..wallet_e2e::StackOptions::default()
    });
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "100", gw::IssueSessionRequest::default()).await;
    let mut client = stack.client().await;
    let payment = header("10000");
    let mut paid = 0;
    let mut pay = |n: usize| {
        let keys: Vec<String> = (paid..paid + n).map(|i| format!("k{i}")).collect();
        paid += n;
        keys
    };
    for key in pay(10) {
        let r = cred.sign_request(&payment, "", "", &key, wallet_e2e::now_ms());
        client.sign_payment(r).await.unwrap();
    }
    assert!(ok(&stack.walletctl(&["audit", "verify"], "")).contains("audit log OK"));
    for key in pay(1090) {
        let r = cred.sign_request(&payment, "", "", &key, wallet_e2e::now_ms());
        client.sign_payment(r).await.unwrap();
    }
    let slots = ["ledger.snapshot.0", "ledger.snapshot.1"].map(|f| stack.data_dir().join(f));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while slots.iter().all(|s| std::fs::metadata(s).map_or(0, |m| m.len()) == 0) {
        assert!(std::time::Instant::now() < deadline, "no snapshot after 1,100 payments");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok(&stack.walletctl(&["audit", "verify"], "")).contains("audit log OK"));
    let log = stack.data_dir().join("audit.log");
    let archive = stack.dir.path().join("archived-audit.log");
    std::fs::copy(&log, &archive).unwrap();
    for key in pay(20) {
        let r = cred.sign_request(&payment, "", "", &key, wallet_e2e::now_ms());
        client.sign_payment(r).await.unwrap();
    }
    drop(client);

    // The host archives the first 1,024 records (zeroed in place).
    stack.enclave.kill();
    let longer = stack.dir.path().join("longer-audit.log");
    std::fs::copy(&log, &longer).unwrap();
    let mut bytes = std::fs::read(&log).unwrap();
    let first: usize = bytes.split_inclusive(|b| *b == b'\n').take(1024).map(<[u8]>::len).sum();
    bytes[..first].fill(0);
    std::fs::write(&log, &bytes).unwrap();
    stack.start_enclave_again();
    let err = failed(&stack.walletctl(&["audit", "verify"], ""));
    assert!(err.contains("AUDIT_TAMPERED") || err.contains("tampered"), "{err}");
    // A copy going past the heads verified here: its last records are vouched for by nothing.
    let err =
        failed(&stack.walletctl(&["audit", "verify", "--archive", longer.to_str().unwrap()], ""));
    assert!(err.contains("UNVERIFIED"), "{err}");
    let since = ok(&stack.walletctl(&["audit", "verify", "--since-last"], ""));
    assert!(since.contains("chained from the head verified last"), "{since}");
    let offline =
        ok(&stack.walletctl(&["audit", "verify", "--archive", archive.to_str().unwrap()], ""));
    assert!(offline.contains("archive OK"), "{offline}");
    // An edited archive is refused.
    let genuine = std::fs::read_to_string(&archive).unwrap();
    std::fs::write(&archive, genuine.replacen("0.01 USDC", "0.02 USDC", 1)).unwrap();
    failed(&stack.walletctl(&["audit", "verify", "--archive", archive.to_str().unwrap()], ""));
}
