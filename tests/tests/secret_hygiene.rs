//! The whole flow at trace log level, then a search of every log line, every CLI output and every
//! file in the data directory for the wallet's private key, the agent's session secret and the
//! admin's key (each allowed only in its own 0600 file).

use std::path::{Path, PathBuf};

use wallet_e2e::{header, Stack};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_key_or_session_secret_in_logs_outputs_or_files_at_trace_level() {
    let mut stack = Stack::start_logging("trace");
    let mut transcript = String::new();
    let mut run = |args: &[&str], stdin: &str| {
        let out = stack.walletctl(args, stdin);
        transcript.push_str(&String::from_utf8_lossy(&out.stdout));
        transcript.push_str(&String::from_utf8_lossy(&out.stderr));
        out
    };
    let created = ok(&run(&["wallet", "create", "--label", "hygiene"], ""));
    let wallet = created.split_whitespace().nth(1).unwrap().to_owned();
    ok(&run(&["policy", "set", "--wallet", &wallet, "--max-per-payment", "0.05"], ""));
    let cred = stack.dir.path().join("agent.json");
    ok(&run(
        &["session", "issue", "--wallet", &wallet, "--cap", "1", "--out", cred.to_str().unwrap()],
        "",
    ));
    ok(&run(&["pay", "--session", cred.to_str().unwrap(), "-v"], &header("10000")));
    ok(&run(
        &["pay", "--session", cred.to_str().unwrap(), "--idempotency-key", "again"],
        &header("20000"),
    ));
    ok(&run(
        &["pay", "--session", cred.to_str().unwrap(), "--idempotency-key", "again"],
        &header("20000"),
    ));
    let denied = run(&["pay", "--session", cred.to_str().unwrap()], &header("990000"));
    assert_eq!(denied.status.code(), Some(3));
    ok(&run(&["session", "list"], ""));
    ok(&run(&["status"], ""));
    assert!(
        std::fs::read_to_string(stack.enclave_log()).unwrap().contains("TRACE"),
        "the enclave really logged at trace level"
    );

    // The secrets to look for: the session key from the agent's credential, and the wallet key,
    // unsealed here with the enclave's own code after stopping it.
    let credential: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cred).unwrap()).unwrap();
    let session_secret = hex::decode(credential["session_secret"].as_str().unwrap()).unwrap();
    stack.enclave.kill();
    stack.gateway.kill();
    // Sled in DATA/state, or the host's DATA/state.log (WALLET_E2E_STORAGE=host).
    let store = stack.open_state_store();
    let audit_key = store
        .get(wallet_enclave::store::Table::Keys, b"audit-key")
        .unwrap()
        .expect("audit key")
        .to_vec();
    let wallet_key = store
        .get(wallet_enclave::store::Table::Keys, wallet.as_bytes())
        .unwrap()
        .expect("wallet key")
        .to_vec();
    drop(store);
    assert_eq!(wallet_key.len(), 32);

    // The search can find what it looks for: the credential file does hold the session secret.
    let cred_text = std::fs::read_to_string(&cred).unwrap();
    assert!(cred_text.contains(&hex::encode(&session_secret)));

    let admin_file = stack.dir.path().join("home/admin.key");
    let admin_secret = hex::decode(std::fs::read_to_string(&admin_file).unwrap().trim()).unwrap();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("wallet key", wallet_key),
        ("session secret", session_secret),
        ("admin key", admin_secret),
        ("audit signing key", audit_key),
    ];
    let mut haystacks: Vec<(String, Vec<u8>)> =
        vec![("walletctl output".into(), transcript.into_bytes())];
    for f in files(stack.dir.path()) {
        // The agent's own credential file is where the session secret is meant to be.
        if f == cred || f == admin_file {
            continue;
        }
        haystacks.push((f.display().to_string(), std::fs::read(&f).unwrap()));
    }
    assert!(haystacks.iter().any(|(n, _)| n.ends_with("gateway.log")));
    assert!(haystacks.iter().any(|(n, _)| n.ends_with("spends.journal")));
    for (what, secret) in &secrets {
        let hex_lower = hex::encode(secret);
        let hex_upper = hex_lower.to_uppercase();
        for (name, hay) in &haystacks {
            assert!(
                !hay.windows(secret.len()).any(|w| w == secret.as_slice()),
                "{what} found raw in {name}"
            );
            let text = String::from_utf8_lossy(hay);
            assert!(
                !text.contains(&hex_lower) && !text.contains(&hex_upper),
                "{what} found as hex in {name}"
            );
        }
    }
}
