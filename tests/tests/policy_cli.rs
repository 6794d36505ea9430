//! The policy controls through walletctl and the real binaries: a policy file, a human approval,
//! a KYT list import.

use wallet_e2e::{field, header, ok, stderr, Stack, PAYEE};

const POLICY: &str = r#"# Test policy
version = 1

[wallet]
max_per_payment = "0.10"
budgets = [{ per = "1d", max = "1" }]

[approval]
above = "0.05"        # a human looks at anything bigger

[[rule]]
name = "USDC on Base Sepolia"
networks = ["eip155:84532"]
assets = ["USDC"]
action = "allow"
"#;

#[test]
fn policy_file_approvals_and_kyt_import_through_walletctl() {
    let stack = Stack::start();
    ok(&stack.walletctl(&["init"], ""));
    let created = ok(&stack.walletctl(&["wallet", "create", "--label", "policy"], ""));
    let wallet = field(&created, "wallet").to_owned();
    let dir = stack.dir.path();

    // A bad document: exit 2, line and reason, nothing changes.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, POLICY.replace("max = \"1\"", "max = 1.5")).unwrap();
    let out = stack.walletctl(&["policy", "check", bad.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("line 6") && stderr(&out).contains("float"), "{}", stderr(&out));
    let out = stack
        .walletctl(&["policy", "set", "--wallet", &wallet, "--file", bad.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let none = stack.walletctl(&["policy", "show", "--wallet", &wallet], "");
    assert!(!none.status.success(), "still no policy");

    // The good document is set, and shown as written (comments included).
    let file = dir.join("policy.toml");
    std::fs::write(&file, POLICY).unwrap();
    ok(&stack
        .walletctl(&["policy", "set", "--wallet", &wallet, "--file", file.to_str().unwrap()], ""));
    let shown = ok(&stack.walletctl(&["policy", "show", "--wallet", &wallet], ""));
    assert!(shown.contains("# a human looks at anything bigger"), "{shown}");
    assert!(shown.contains("policy version 1"), "{shown}");

    let cred = dir.join("agent.json");
    ok(&stack.walletctl(
        &["session", "issue", "--wallet", &wallet, "--cap", "1", "--out", cred.to_str().unwrap()],
        "",
    ));
    let cred = cred.to_str().unwrap();

    // Small: paid at once.
    ok(&stack.walletctl(&["pay", "--session", cred], &header("10000")));
    // Above the approval threshold: held (exit 6), with the key to retry with.
    let held = stack.walletctl(&["pay", "--session", cred], &header("60000"));
    assert_eq!(held.status.code(), Some(6), "{}", stderr(&held));
    assert!(held.stdout.is_empty());
    let msg = stderr(&held);
    assert!(msg.contains("APPROVAL_PENDING"), "{msg}");
    let key = msg.split("--idempotency-key ").nth(1).unwrap().trim().to_owned();
    let list = ok(&stack.walletctl(&["approvals", "list"], ""));
    let id = list.split_whitespace().next().unwrap().to_owned();
    assert!(
        id.starts_with("ap_") && list.contains("pending") && list.contains("0.06 USDC"),
        "{list}"
    );
    ok(&stack.walletctl(&["approvals", "approve", &id, "--note", "expected invoice"], ""));
    let paid =
        ok(&stack
            .walletctl(&["pay", "--session", cred, "--idempotency-key", &key], &header("60000")));
    assert!(!paid.trim().is_empty());
    assert!(ok(&stack.walletctl(&["approvals", "list", "--all"], "")).contains("used"));
    // A denied hold: the retry gets a clear denial (exit 3).
    let held = stack
        .walletctl(&["pay", "--session", cred, "--idempotency-key", "second"], &header("70000"));
    assert_eq!(held.status.code(), Some(6));
    let id = ok(&stack.walletctl(&["approvals", "list"], ""))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    ok(&stack.walletctl(&["approvals", "deny", &id, "--note", "not ours"], ""));
    let denied = stack
        .walletctl(&["pay", "--session", cred, "--idempotency-key", "second"], &header("70000"));
    assert_eq!(denied.status.code(), Some(3));
    assert!(stderr(&denied).contains("APPROVAL_DENIED") && stderr(&denied).contains("not ours"));

    // A KYT list import: CSV with a bad line and a duplicate; the payee is then refused.
    let csv = dir.join("kyt.csv");
    std::fs::write(
        &csv,
        format!(
            "name,address\nsomeone,{PAYEE}\nsame again,{}\nbitcoin,bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh\nother,0x00000000000000000000000000000000000000aa\n",
            PAYEE.to_lowercase()
        ),
    )
    .unwrap();
    let dry = ok(&stack.walletctl(&["kyt", "import", csv.to_str().unwrap(), "--dry-run"], ""));
    assert!(dry.contains("2 addresses, 1 duplicates, 1 bad"), "{dry}");
    ok(&stack.walletctl(&["pay", "--session", cred], &header("10000")));
    let strict = stack.walletctl(&["kyt", "import", csv.to_str().unwrap(), "--strict"], "");
    assert_eq!(strict.status.code(), Some(2));
    assert!(stderr(&strict).contains(":4:"), "bad line named: {}", stderr(&strict));
    let imported = ok(&stack.walletctl(&["kyt", "import", csv.to_str().unwrap()], ""));
    assert!(imported.contains("2 added") && imported.contains("denylist now 2"), "{imported}");
    let refused = stack.walletctl(&["pay", "--session", cred], &header("10000"));
    assert_eq!(refused.status.code(), Some(3));
    assert!(stderr(&refused).contains("KYT_DENIED"));
    let listed = ok(&stack.walletctl(&["kyt", "list"], ""));
    assert_eq!(listed.lines().count(), 2);
}
