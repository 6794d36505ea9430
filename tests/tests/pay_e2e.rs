//! The whole product path with the real binaries: walletctl as admin and as agent.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use wallet_e2e::{field, header, ok, recover_payer, Stack, PAYEE};

/// The official spec's PAYMENT-REQUIRED header (x402-wire.md §2.3).
const SPEC_HEADER: &str = "eyJ4NDAyVmVyc2lvbiI6MiwiZXJyb3IiOiJQQVlNRU5ULVNJR05BVFVSRSBoZWFkZXIgaXMgcmVxdWlyZWQiLCJyZXNvdXJjZSI6eyJ1cmwiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS9wcmVtaXVtLWRhdGEiLCJkZXNjcmlwdGlvbiI6IkFjY2VzcyB0byBwcmVtaXVtIG1hcmtldCBkYXRhIiwibWltZVR5cGUiOiJhcHBsaWNhdGlvbi9qc29uIn0sImFjY2VwdHMiOlt7InNjaGVtZSI6ImV4YWN0IiwibmV0d29yayI6ImVpcDE1NTo4NDUzMiIsImFtb3VudCI6IjEwMDAwIiwiYXNzZXQiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMxOGYzZENGN2UiLCJwYXlUbyI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsIm1heFRpbWVvdXRTZWNvbmRzIjo2MCwiZXh0cmEiOnsibmFtZSI6IlVTREMiLCJ2ZXJzaW9uIjoiMiJ9fV19";

#[test]
fn operator_walkthrough_pays_a_402_with_walletctl() {
    let mut stack = Stack::start();
    let status = ok(&stack.walletctl(&["init"], ""));
    assert!(status.contains("SIMULATED"), "simulated mode must say so: {status}");

    let created = ok(&stack.walletctl(&["wallet", "create", "--label", "demo"], ""));
    let wallet = field(&created, "wallet").to_owned();
    let address = field(&created, "address").to_owned();
    ok(&stack.walletctl(
        &[
            "policy",
            "set",
            "--wallet",
            &wallet,
            "--max-per-payment",
            "$0.10",
            "--networks",
            "eip155:84532",
        ],
        "",
    ));
    let shown = ok(&stack.walletctl(&["policy", "show", "--wallet", &wallet], ""));
    assert!(shown.contains("max_per_payment = \"0.1\""), "{shown}");

    let cred = stack.dir.path().join("agent.json");
    let issued = ok(&stack.walletctl(
        &[
            "session",
            "issue",
            "--wallet",
            &wallet,
            "--cap",
            "0.05 USDC",
            "--ttl",
            "1h",
            "--out",
            cred.to_str().unwrap(),
        ],
        "",
    ));
    assert!(issued.contains("0600"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cred).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // The agent pays the spec's own 402 header.
    let out =
        stack.walletctl(&["pay", "--session", cred.to_str().unwrap()], &format!("{SPEC_HEADER}\n"));
    let sig = ok(&out);
    let sig = sig.trim();
    assert!(!sig.contains('\n'), "stdout is exactly the header value");
    let payload: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(sig).expect("standard base64")).expect("json");
    assert_eq!(payload["x402Version"], 2);
    assert_eq!(payload["payload"]["authorization"]["from"], address.as_str());
    assert_eq!(payload["payload"]["authorization"]["to"], PAYEE);
    assert_eq!(payload["payload"]["authorization"]["value"], "10000");
    let original: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(SPEC_HEADER).unwrap()).unwrap();
    assert_eq!(payload["accepted"], original["accepts"][0], "accepted is copied verbatim");
    assert_eq!(payload["resource"], original["resource"], "resource is echoed");
    assert_eq!(
        recover_payer(sig),
        address,
        "signed by the wallet's key, over the exact authorization"
    );

    // Over the limit: reason code on stderr, non-zero exit, nothing on stdout.
    let denied = stack.walletctl(&["pay", "--session", cred.to_str().unwrap()], &header("100001"));
    assert_eq!(denied.status.code(), Some(3));
    assert!(denied.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PER_TX_LIMIT"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // Garbage on stdin: a clear error, exit 2.
    let bad =
        stack.walletctl(&["pay", "--session", cred.to_str().unwrap()], "this is not a header");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("MALFORMED_HEADER"));

    let sessions = ok(&stack.walletctl(&["session", "list"], ""));
    assert!(sessions.contains("spent 0.01 of 0.05"), "{sessions}");

    // Kill switch: freeze the wallet, nothing is signed; unfreeze, payments resume.
    let frozen = ok(&stack.walletctl(&["wallet", "freeze", &wallet], ""));
    assert!(frozen.contains("FROZEN"));
    let refused = stack.walletctl(&["pay", "--session", cred.to_str().unwrap()], SPEC_HEADER);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("WALLET_FROZEN"));
    ok(&stack.walletctl(&["wallet", "unfreeze", &wallet], ""));
    ok(&stack.walletctl(&["pay", "--session", cred.to_str().unwrap()], SPEC_HEADER));

    // Revocation: effective once the command returns.
    let session_id = field(&issued, "session").to_owned();
    ok(&stack.walletctl(&["session", "revoke", &session_id], ""));
    let after = stack.walletctl(&["pay", "--session", cred.to_str().unwrap()], SPEC_HEADER);
    assert_eq!(after.status.code(), Some(4), "the session is not accepted: exit code 4");
    assert!(String::from_utf8_lossy(&after.stderr).contains("SESSION_REVOKED"));

    // Both processes stop cleanly on SIGTERM.
    assert!(stack.gateway.terminate(), "gateway exits 0 on SIGTERM");
    assert!(stack.enclave.terminate(), "enclave exits 0 on SIGTERM");
}

#[test]
fn admin_commands_explain_bad_input() {
    let stack = Stack::start();
    let created = ok(&stack.walletctl(&["wallet", "create"], ""));
    let wallet = field(&created, "wallet").to_owned();
    let bad =
        stack.walletctl(&["policy", "set", "--wallet", &wallet, "--max-per-payment", "0.1.2"], "");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a decimal number"));
    let missing = stack.walletctl(&["policy", "show", "--wallet", &wallet], "");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NO_POLICY"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let ok_asset = ok(&stack.walletctl(
        &[
            "asset",
            "add",
            "--network",
            "eip155:31337",
            "--address",
            "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "--name",
            "Test USD",
            "--version",
            "1",
            "--symbol",
            "TUSD",
        ],
        "",
    ));
    assert!(ok_asset.contains("TUSD"));
    assert!(ok(&stack.walletctl(&["asset", "list"], "")).contains("eip155:31337"));
    let kyt = ok(&stack.walletctl(&["kyt", "add", &PAYEE.to_lowercase()], ""));
    assert!(kyt.contains("added 1"));
    assert!(ok(&stack.walletctl(&["kyt", "list"], "")).contains(PAYEE));
    let bad_kyt = stack.walletctl(&["kyt", "add", "0x1234"], "");
    assert_eq!(bad_kyt.status.code(), Some(2));
}
