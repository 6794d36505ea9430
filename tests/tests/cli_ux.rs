//! What a new user hit running the README twice and making natural mistakes (issue 10, item 6),
//! each kept as a test against the real binaries: the README walk-through run twice in one shell,
//! amounts with units and signs, a second `dev-up.sh`, a new enclave identity, a gateway without
//! `http://`, empty and unknown filters, exit codes of sessions not accepted, `policy check`
//! warnings, times for people, `--version`, and a connection lost mid-payment.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use wallet_e2e::{bin, field, header, ok, start_enclave, start_gateway, stderr, ChildGuard, Stack};

/// The repository's root (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The directory holding the built binaries (target/<profile>).
fn bin_dir() -> PathBuf {
    bin("walletctl").parent().expect("bin dir").to_path_buf()
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs walletctl against `url` with walletctl's home `home`.
fn walletctl_at(url: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(bin("walletctl"))
        .args(args)
        .env("WALLET_GATEWAY", url)
        .env("WALLETCTL_HOME", home)
        .env_remove("WALLET_SESSION")
        .env_remove("WALLET_ADMIN_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run walletctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fenced block of README.md's "## Walk-through" section.
fn readme_walk_through() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = &readme[readme.find("\n## Walk-through").expect("a Walk-through section")..];
    let start = section.find("```sh\n").expect("a sh block in the Walk-through") + 6;
    let end = start + section[start..].find("\n```").expect("the block ends");
    section[start..=end].to_owned()
}

/// The README walk-through, exactly as written, pasted twice into one shell on a fresh stack
/// and a fresh walletctl home (a new machine). Before: `session issue --out` refused the file the
/// first run left, `$SESSION` was empty, and the rest cascaded into `SESSION_REVOKED`,
/// `no hold "no"` and `session "" does not exist`; the approve line took the oldest hold.
#[test]
fn the_readme_walk_through_runs_twice_in_one_shell() {
    for tool in ["bash", "curl", "python3", "awk", "grep"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "the walk-through needs {tool} on PATH");
    }
    let dir = tempfile::tempdir().unwrap();
    let _enclave = start_enclave(dir.path(), "info");
    let (_gateway, url) = start_gateway(dir.path());

    // A checkout as the README assumes: scripts/ and target/release (here: this build's binaries).
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("scripts")).unwrap();
    std::fs::create_dir_all(checkout.join("target")).unwrap();
    std::os::unix::fs::symlink(
        repo().join("scripts/demo-402-server.py"),
        checkout.join("scripts/demo-402-server.py"),
    )
    .unwrap();
    std::os::unix::fs::symlink(bin_dir(), checkout.join("target/release")).unwrap();

    let block = readme_walk_through();
    assert!(block.contains("8402"), "the demo server's port");
    // The only change: the demo server's port, so tests running at once do not collide.
    let block = block.replace("8402", &free_port().to_string());
    let script = format!("{block}\necho '=== first run done ==='\n{block}");
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&checkout)
        .env("HOME", dir.path())
        .env("WALLETCTL_HOME", dir.path().join("walletctl-home"))
        .env("WALLET_GATEWAY", &url)
        .env_remove("WALLET_SESSION")
        .env_remove("WALLET_ADMIN_KEY")
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    let (so, se) = (stdout(&out), stderr(&out));
    let all = format!("--- stdout\n{so}\n--- stderr\n{se}");
    assert!(out.status.success(), "the last command (kill %1) failed:\n{all}");
    assert!(so.contains("=== first run done ==="), "{all}");
    assert_eq!(so.matches("\"premium content\"").count(), 4, "two paid requests per run:\n{all}");
    assert_eq!(so.matches("audit log OK").count(), 2, "{all}");
    assert_eq!(so.matches(" revoked (spent 0.02 of 1)").count(), 2, "{all}");
    for cascade in ["SESSION_REVOKED", "no hold", "does not exist", "already exists", "warning:"] {
        assert!(!se.contains(cascade), "{cascade:?} in:\n{all}");
    }
    assert_eq!(se.matches("replaced ./agent-session.json").count(), 1, "{all}");

    // The only errors are the two the README shows (`#   walletctl: denied: KYT_DENIED: ...`),
    // in each run, as it shows them.
    let shown: Vec<String> = block
        .lines()
        .filter_map(|l| l.strip_prefix("#   walletctl: "))
        .map(|l| {
            let mut it = l.splitn(3, ": ");
            format!("walletctl: {}: {}: ", it.next().unwrap(), it.next().unwrap_or_default())
        })
        .collect();
    assert_eq!(shown.len(), 2, "the README shows a denial and a hold: {shown:?}");
    let actual: Vec<&str> = se.lines().filter(|l| l.starts_with("walletctl: ")).collect();
    assert_eq!(actual.len(), 4, "{all}");
    for (i, line) in actual.iter().enumerate() {
        assert!(line.starts_with(&shown[i % 2]), "{line:?} is not {:?}:\n{all}", shown[i % 2]);
    }
}

/// `session issue --out` over an existing file: refused (naming --force); --force replaces a
/// credential in one step (0600, the old session named) but never another file.
#[test]
fn credentials_are_replaced_only_on_purpose_and_ids_are_checked() {
    let stack = Stack::start();
    let wallet = field(&ok(&stack.walletctl(&["wallet", "create"], "")), "wallet").to_owned();
    let cred = stack.dir.path().join("agent.json");
    let c = cred.to_str().unwrap();
    let issue = |extra: &[&str]| {
        let mut args = vec!["session", "issue", "--wallet", &wallet, "--cap", "1", "--out", c];
        args.extend_from_slice(extra);
        stack.walletctl(&args, "")
    };
    let first = field(&ok(&issue(&[])), "session").to_owned();
    let again = issue(&[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let replaced = issue(&["--force"]);
    let second = field(&ok(&replaced), "session").to_owned();
    assert_ne!(first, second);
    assert!(
        stderr(&replaced).contains(&format!("it held session {first}")),
        "{}",
        stderr(&replaced)
    );
    let text = std::fs::read_to_string(&cred).unwrap();
    assert!(text.contains(&second) && !text.contains(&first));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cred).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(stack.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left behind");

    // --force does not replace what is not a credential.
    let notes = stack.dir.path().join("notes.txt");
    std::fs::write(&notes, "mine\n").unwrap();
    let out = stack.walletctl(
        &[
            "session",
            "issue",
            "--wallet",
            &wallet,
            "--cap",
            "1",
            "--out",
            notes.to_str().unwrap(),
            "--force",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not replaced"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine\n");

    // Empty and malformed ids are refused before the enclave is asked.
    for (args, words) in [
        (vec!["session", "revoke", ""], "session id is empty"),
        (vec!["policy", "show", "--wallet", ""], "wallet id is empty"),
        (vec!["session", "issue", "--wallet", "", "--cap", "1"], "wallet id is empty"),
        (vec!["audit", "show", "--session", ""], "session id is empty"),
        (vec!["approvals", "approve", ""], "hold id is empty"),
        (vec!["approvals", "approve", "no"], "\"no\" is not a hold id"),
        (vec!["approvals", "deny", "--session", ""], "--session is empty"),
    ] {
        let out = stack.walletctl(&args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(words), "{args:?}: {}", stderr(&out));
    }
    let out = stack.walletctl(&["approvals", "approve", "--session", &second], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no pending hold for session"), "{}", stderr(&out));
}

/// `approvals list` shows each hold's session and idempotency key, and a hold is approved by
/// session and key (the agent's, not the oldest pending one); an ambiguous choice is refused.
#[test]
fn holds_are_chosen_by_session_and_idempotency_key() {
    let stack = Stack::start();
    let wallet = field(&ok(&stack.walletctl(&["wallet", "create"], "")), "wallet").to_owned();
    let doc = stack.dir.path().join("p.toml");
    std::fs::write(
        &doc,
        "version = 1\n[approval]\nabove = \"0.005\"\n[[rule]]\nnetworks = [\"eip155:84532\"]\naction = \"allow\"\n",
    )
    .unwrap();
    ok(&stack
        .walletctl(&["policy", "set", "--wallet", &wallet, "--file", doc.to_str().unwrap()], ""));
    let mut sessions = Vec::new();
    for name in ["a.json", "b.json"] {
        let path = stack.dir.path().join(name);
        let out = ok(&stack.walletctl(
            &[
                "session",
                "issue",
                "--wallet",
                &wallet,
                "--cap",
                "1",
                "--out",
                path.to_str().unwrap(),
            ],
            "",
        ));
        sessions.push((field(&out, "session").to_owned(), path));
    }
    for (_, path) in &sessions {
        let held = stack.walletctl(
            &["pay", "--session", path.to_str().unwrap(), "--idempotency-key", "order-1"],
            &header("10000"),
        );
        assert_eq!(held.status.code(), Some(6), "{}", stderr(&held));
    }
    let list = ok(&stack.walletctl(&["approvals", "list"], ""));
    for (id, _) in &sessions {
        assert!(list.contains(&format!("session {id}  key order-1")), "{list}");
    }
    let json = ok(&stack.walletctl(&["approvals", "list", "--output", "json"], ""));
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["idempotency_key"], "order-1");
    assert!(v[0]["created_at_ms"].is_u64());

    let both = stack.walletctl(&["approvals", "approve", "--idempotency-key", "order-1"], "");
    assert_eq!(both.status.code(), Some(2));
    assert!(stderr(&both).contains("2 pending holds match"), "{}", stderr(&both));

    // The second session's hold, although the first one's is older.
    let (second, path) = &sessions[1];
    let approved = ok(&stack.walletctl(
        &["approvals", "approve", "--session", second, "--idempotency-key", "order-1"],
        "",
    ));
    assert!(approved.contains("approved") && approved.contains(second.as_str()), "{approved}");
    ok(&stack.walletctl(
        &["pay", "--session", path.to_str().unwrap(), "--idempotency-key", "order-1"],
        &header("10000"),
    ));
    let pending = ok(&stack.walletctl(&["approvals", "list", "--session", &sessions[0].0], ""));
    assert!(pending.contains("pending"), "the first session's hold still waits: {pending}");
}

/// `--cap "1 FOO"` and `--max-per-payment "0.5 ETH"` were read as 1 and 0.5; `--cap -1` got
/// clap's "unexpected argument".
#[test]
fn amount_flags_check_their_unit_and_sign() {
    let stack = Stack::start();
    let wallet = field(&ok(&stack.walletctl(&["wallet", "create"], "")), "wallet").to_owned();
    let out = stack.dir.path().join("s.json");
    let o = out.to_str().unwrap();
    for (args, words) in [
        (
            vec!["policy", "set", "--wallet", &wallet, "--max-per-payment", "0.5 ETH"],
            "unknown unit \"ETH\"",
        ),
        (
            vec!["policy", "set", "--wallet", &wallet, "--max-per-payment", "-1"],
            "amount must not be negative",
        ),
        (
            vec!["session", "issue", "--wallet", &wallet, "--cap", "1 FOO", "--out", o],
            "unknown unit \"FOO\"",
        ),
        (
            vec!["session", "issue", "--wallet", &wallet, "--cap", "-1", "--out", o],
            "amount must not be negative",
        ),
        (
            vec!["session", "issue", "--wallet", &wallet, "--cap", "-0.5", "--out", o],
            "amount must not be negative",
        ),
    ] {
        let r = stack.walletctl(&args, "");
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", stderr(&r));
        assert!(stderr(&r).contains(words), "{args:?}: {}", stderr(&r));
        assert!(!stderr(&r).contains("unexpected argument"), "{}", stderr(&r));
    }
    assert!(!out.exists(), "nothing was issued");
    // Known units: USD, $, and the registry's symbols (those an admin added too).
    ok(&stack
        .walletctl(&["policy", "set", "--wallet", &wallet, "--max-per-payment", "0.5 usd"], ""));
    let shown = ok(&stack.walletctl(&["policy", "show", "--wallet", &wallet], ""));
    assert!(shown.contains("max_per_payment = \"0.5\""), "{shown}");
    ok(&stack.walletctl(
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
    let issued = ok(&stack
        .walletctl(&["session", "issue", "--wallet", &wallet, "--cap", "2 TUSD", "--out", o], ""));
    assert!(issued.contains("cap 2 "), "{issued}");
}

/// After starting over with a new data directory, `init` exited 5 ("audit key changed") without
/// saying what to do, and `wallet create` sent the user back to `init`. Now every command says
/// what happened and the command that re-pins; nothing is re-pinned without it.
#[test]
fn a_new_enclave_identity_is_explained_and_re_pinned_only_when_asked() {
    let first = tempfile::tempdir().unwrap();
    let home = first.path().join("home");
    let url = {
        let _enclave = start_enclave(first.path(), "info");
        let (_gateway, url) = start_gateway(first.path());
        ok(&walletctl_at(&url, &home, &["init", "--simulated"]));
        ok(&walletctl_at(&url, &home, &["audit", "verify"]));
        url
    };
    let pinned = std::fs::read_to_string(home.join("audit.pub")).unwrap();

    // Started over: a new data directory.
    let second = tempfile::tempdir().unwrap();
    let _enclave = start_enclave(second.path(), "info");
    let (_gateway, url2) = start_gateway(second.path());
    assert_ne!(url, url2);
    for args in [&["init"][..], &["wallet", "create"], &["status"], &["audit", "verify"]] {
        let out = walletctl_at(&url2, &home, args);
        assert_eq!(out.status.code(), Some(5), "{args:?}");
        let msg = stderr(&out);
        assert!(msg.contains("presents a new identity"), "{args:?}: {msg}");
        assert!(msg.contains("walletctl init --reset-identity"), "{args:?}: {msg}");
        assert!(msg.contains("A host you do not control"), "{args:?}: {msg}");
    }
    assert_eq!(std::fs::read_to_string(home.join("audit.pub")).unwrap(), pinned, "not re-pinned");

    let reset = ok(&walletctl_at(&url2, &home, &["init", "--reset-identity"]));
    assert!(reset.contains("re-pinning") && reset.contains("first admin"), "{reset}");
    assert_ne!(std::fs::read_to_string(home.join("audit.pub")).unwrap(), pinned);
    let kept = std::fs::read_dir(&home)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit.pub.replaced-"))
        .count();
    assert_eq!(kept, 1, "the old pin is kept");
    ok(&walletctl_at(&url2, &home, &["wallet", "create"]));
    let again = ok(&walletctl_at(&url2, &home, &["init", "--reset-identity"]));
    assert!(again.contains("nothing to reset"), "{again}");
}

/// A gateway given as host:port was reported as "is the stack running?" while it ran.
#[test]
fn gateway_urls_without_a_scheme_are_read_as_http() {
    let stack = Stack::start();
    let bare = stack.url.trim_start_matches("http://").to_owned();
    let status = ok(&stack.walletctl(&["--gateway", &bare, "status"], ""));
    assert!(status.contains("(up)"), "{status}");
    let out = stack.walletctl(&["--gateway", "ftp://127.0.0.1:7402", "status"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("scheme \"ftp\""), "{}", stderr(&out));
    let out = stack.walletctl(&["--gateway", &format!("{}/v1", stack.url), "status"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has a path"), "{}", stderr(&out));
}

/// `audit show --kind bogus`, `--wallet w_nope` and an empty `kyt list` printed nothing.
#[test]
fn unknown_filters_are_errors_and_empty_results_say_so() {
    let stack = Stack::start();
    let out = stack.walletctl(&["audit", "show", "--kind", "bogus"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("payment, deny, withheld, hold, admin"), "{}", stderr(&out));
    for (flag, id, words) in [
        ("--wallet", "w_nope", "no wallet \"w_nope\""),
        ("--session", "s_nope", "no session \"s_nope\""),
    ] {
        let out = stack.walletctl(&["audit", "show", flag, id], "");
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(words), "{}", stderr(&out));
    }
    // Empty results: a sentence on stderr, stdout clean (for scripts and --output json).
    let out = stack.walletctl(&["kyt", "list"], "");
    assert!(out.status.success() && out.stdout.is_empty());
    assert!(stderr(&out).contains("the KYT denylist is empty"), "{}", stderr(&out));
    let out = stack.walletctl(&["audit", "show", "--kind", "withheld"], "");
    assert!(out.status.success() && out.stdout.is_empty());
    assert!(stderr(&out).contains("no audit records match"));
    for args in
        [&["session", "list", "--output", "json"][..], &["approvals", "list", "--output", "json"]]
    {
        let out = stack.walletctl(args, "");
        let v: serde_json::Value = serde_json::from_str(&ok(&out)).expect("only JSON on stdout");
        assert_eq!(v, serde_json::json!([]));
        assert!(stderr(&out).starts_with("no "), "{args:?}: {}", stderr(&out));
    }
    assert!(ok(&stack.walletctl(&["session", "list"], "")).contains("no sessions"));
}

/// Revoked and expired sessions exited 3 where the README says 4.
#[test]
fn sessions_not_accepted_exit_4_as_documented() {
    let stack = Stack::start();
    let wallet = field(&ok(&stack.walletctl(&["wallet", "create"], "")), "wallet").to_owned();
    ok(&stack.walletctl(&["policy", "set", "--wallet", &wallet, "--max-per-payment", "1"], ""));
    let issue = |name: &str, ttl: &str| {
        let path = stack.dir.path().join(name);
        let out = ok(&stack.walletctl(
            &[
                "session",
                "issue",
                "--wallet",
                &wallet,
                "--cap",
                "1",
                "--ttl",
                ttl,
                "--out",
                path.to_str().unwrap(),
            ],
            "",
        ));
        (field(&out, "session").to_owned(), path)
    };
    let (revoked, revoked_cred) = issue("revoked.json", "1h");
    let (_, expired_cred) = issue("expired.json", "1s");
    ok(&stack.walletctl(&["session", "revoke", &revoked], ""));
    std::thread::sleep(Duration::from_millis(2100));
    for (cred, reason) in [(&revoked_cred, "SESSION_REVOKED"), (&expired_cred, "SESSION_EXPIRED")] {
        let out = stack.walletctl(&["pay", "--session", cred.to_str().unwrap()], &header("10000"));
        assert_eq!(out.status.code(), Some(4), "{reason}: {}", stderr(&out));
        assert!(stderr(&out).contains(reason), "{}", stderr(&out));
    }
    // The help and the README say the same.
    let help = ok(&stack.walletctl(&["pay", "--help"], ""));
    assert!(help.contains("4 session not accepted"), "{help}");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("4 when the session is not accepted (`SESSION_REVOKED`, `SESSION_EXPIRED`")
    );
}

/// `policy check` passed, without a word, a policy that denies everything, an unregistered asset
/// and a network with no registered asset.
#[test]
fn policy_check_warns_about_policies_that_cannot_pay() {
    let stack = Stack::start();
    let dir = stack.dir.path();
    let check = |doc: &str, extra: &[&str]| {
        let path = dir.join("p.toml");
        std::fs::write(&path, doc).unwrap();
        let mut args = vec!["policy", "check", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        stack.walletctl(&args, "")
    };
    let no_rules = "version = 1\n[wallet]\nmax_per_payment = \"1\"\n";
    let out = check(no_rules, &[]);
    assert!(out.status.success(), "a warning keeps exit code 0");
    assert!(
        stderr(&out).contains("warning: no [[rule]]: every payment is denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(check(no_rules, &["--strict"]).status.code(), Some(2));

    let local = "version = 1\n[[rule]]\nnetworks = [\"eip155:31337\"]\nassets = [\"TUSD\"]\naction = \"allow\"\n";
    let msg = stderr(&check(local, &[]));
    assert!(msg.contains("network eip155:31337 has no registered asset"), "{msg}");
    assert!(msg.contains("asset TUSD is not in the asset registry"), "{msg}");
    assert!(msg.contains("the enclave's asset registry"), "{msg}");
    // Registered in the enclave: no warning online; offline, the built-in registry, said so.
    ok(&stack.walletctl(
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
    let out = check(local, &["--strict"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let msg = stderr(&check(local, &["--offline"]));
    assert!(msg.contains("warning: ") && msg.contains("built-in asset registry"), "{msg}");
    let out = check(local, &["--gateway", "http://127.0.0.1:1"]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("the gateway did not answer"), "{}", stderr(&out));
    assert!(stderr(&out).contains("built-in asset registry"), "{}", stderr(&out));
}

/// `session list` and `audit show` printed raw Unix timestamps.
#[test]
fn times_are_shown_for_people_and_raw_in_json() {
    let stack = Stack::start();
    let wallet = field(&ok(&stack.walletctl(&["wallet", "create"], "")), "wallet").to_owned();
    let cred = stack.dir.path().join("s.json");
    ok(&stack.walletctl(
        &["session", "issue", "--wallet", &wallet, "--cap", "1", "--out", cred.to_str().unwrap()],
        "",
    ));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&stack.walletctl(&["session", "list", "--output", "json"], "")))
            .unwrap();
    let expires = json[0]["expires_at"].as_u64().expect("raw Unix seconds in JSON");
    let text = ok(&stack.walletctl(&["session", "list"], ""));
    assert!(!text.contains(&expires.to_string()), "{text}");
    let rfc3339 = |s: &str| {
        s.split_whitespace().any(|w| w.len() >= 20 && w.ends_with('Z') && w.as_bytes()[10] == b'T')
    };
    assert!(rfc3339(&text), "{text}");

    let audit = ok(&stack.walletctl(&["audit", "show", "--wallet", &wallet], ""));
    assert!(audit.contains("IssueSession") && !audit.contains(&expires.to_string()), "{audit}");
    assert!(rfc3339(&audit), "{audit}");
    let lines =
        ok(&stack.walletctl(&["audit", "show", "--wallet", &wallet, "--output", "json"], ""));
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert!(last["at_ms"].is_u64());
    assert!(last["detail"].as_str().unwrap().contains(&expires.to_string()), "stored as written");
}

/// `--version` said `wallet-host`.
#[test]
fn versions_name_the_programs() {
    for name in ["walletctl", "wallet-gateway"] {
        let out = Command::new(bin(name)).arg("--version").output().unwrap();
        assert!(stdout(&out).starts_with(&format!("{name} ")), "{name}: {}", stdout(&out));
    }
}

/// The gateway died during `pay`: "transport error" became a sentence saying the service is
/// unavailable and the payment can be retried with the same idempotency key.
#[test]
fn a_connection_lost_mid_payment_says_unavailable_and_how_to_retry() {
    let mut stack = Stack::start();
    let wallet = field(&ok(&stack.walletctl(&["wallet", "create"], "")), "wallet").to_owned();
    ok(&stack.walletctl(&["policy", "set", "--wallet", &wallet, "--max-per-payment", "1"], ""));
    let cred = stack.dir.path().join("s.json");
    ok(&stack.walletctl(
        &["session", "issue", "--wallet", &wallet, "--cap", "1", "--out", cred.to_str().unwrap()],
        "",
    ));
    // The enclave stops answering, so the call waits in the gateway; then the gateway dies.
    let enclave = stack.enclave.0.id().to_string();
    let signal = |sig: &str| {
        Command::new("kill").arg(format!("-{sig}")).arg(&enclave).status().unwrap();
    };
    signal("STOP");
    let mut pay = Command::new(bin("walletctl"))
        .args(["pay", "--session", cred.to_str().unwrap(), "--idempotency-key", "k-lost"])
        .env("WALLET_GATEWAY", &stack.url)
        .env("WALLETCTL_HOME", stack.dir.path().join("home"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut pay.stdin.take().unwrap(), header("10000").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(3)); // connected, and waiting (up to 30 s) on the enclave
    stack.gateway.kill();
    let out = pay.wait_with_output().unwrap();
    signal("CONT");
    let msg = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(
        msg.starts_with("walletctl: unavailable: the connection to the gateway was lost"),
        "{msg}"
    );
    assert!(msg.contains("The service is unavailable"), "{msg}");
    assert!(msg.contains("retry with --idempotency-key k-lost"), "{msg}");
}

/// A second `dev-up.sh` printed the ready banner, then died on a raw storage-lock error. Now a
/// running stack (its data directory's lock, or its address) is found before building, and
/// "ready" is printed only when both processes run. The build is a stand-in `cargo` (the
/// binaries are this build's), so nothing is rebuilt.
#[test]
fn dev_up_finds_a_running_stack_and_says_ready_only_when_ready() {
    let dir = tempfile::tempdir().unwrap();
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("scripts")).unwrap();
    std::fs::create_dir_all(checkout.join("target")).unwrap();
    std::fs::copy(repo().join("scripts/dev-up.sh"), checkout.join("scripts/dev-up.sh")).unwrap();
    std::os::unix::fs::symlink(bin_dir(), checkout.join("target/debug")).unwrap();
    let fake = dir.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("cargo"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(
        fake.join("cargo"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default());
    let dev_up = |data: &Path, port: u16| {
        let mut c = Command::new("bash");
        c.arg(checkout.join("scripts/dev-up.sh"))
            .env("PATH", &path)
            .env("PROFILE", "debug")
            .env("WALLET_DATA_DIR", data)
            .env("WALLET_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    };
    let data = dir.path().join("data");
    let port = free_port();

    // The first stack: ready, with a build-time warning.
    let mut first =
        dev_up(&data, port).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let out = first.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let err = first.stderr.take().unwrap();
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    let mut first = ChildGuard(first);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = String::new();
    while !banner.contains("ready") {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("the first dev-up.sh says ready");
        banner.push_str(&line);
        banner.push('\n');
    }
    let building: Vec<String> = erx.try_iter().collect();
    assert!(
        building.iter().any(|l| l.starts_with("building (") && l.contains("first build takes")),
        "{building:?}"
    );

    // A second one on the same data directory (another port), or on the same port: refused at
    // once, before building, saying what to do; never "ready".
    for (d, p, words) in [
        (data.clone(), free_port(), "a stack is already running on"),
        (dir.path().join("other-data"), port, "already listens on"),
    ] {
        let out = dev_up(&d, p).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(!stdout(&out).contains("ready"), "{}", stdout(&out));
        let msg = stderr(&out);
        assert!(msg.contains(words) && msg.contains("WALLET_GATEWAY_LISTEN="), "{msg}");
        assert!(!msg.contains("building ("), "refused before building: {msg}");
    }
    assert!(first.terminate(), "Ctrl-C (SIGTERM) stops the first stack");

    // An enclave that cannot start: no "ready" banner, the error, exit 1.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("state"), "not a directory").unwrap();
    let out = dev_up(&broken, free_port()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!stdout(&out).contains("ready"), "{}", stdout(&out));
    assert!(stderr(&out).contains("the enclave failed to start"), "{}", stderr(&out));
}

/// An agent command given `--gateway` uses it even when it equals the default (it was taken for
/// "not given" and the credential's gateway was used instead); without it, the credential's.
#[test]
fn an_explicit_gateway_flag_wins_over_the_credential_even_when_it_is_the_default() {
    let home = tempfile::tempdir().unwrap();
    let cred = home.path().join("agent.json");
    let credential_port = free_port();
    std::fs::write(
        &cred,
        format!(
            r#"{{"version":1,"session_id":"s_x","wallet_id":"w_x","wallet_address":"0x0000000000000000000000000000000000000001","gateway":"http://127.0.0.1:{credential_port}","expires_at":9999999999,"enclave_id":"00","session_secret":"{}"}}"#,
            "11".repeat(32)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cred, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cred = cred.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(bin("walletctl"))
            .args(args)
            .env_remove("WALLET_GATEWAY")
            .env("WALLETCTL_HOME", home.path())
            .env_remove("WALLET_SESSION")
            .stdin(Stdio::null())
            .output()
            .expect("run walletctl")
    };
    let target = "http://127.0.0.1:1/x";
    // No flag: the credential's gateway.
    let out = run(&["fetch", "--session", cred, "--dry-run", target]);
    assert!(stderr(&out).contains(&format!(":{credential_port}")), "{}", stderr(&out));
    // The flag, equal to the default, before or after the subcommand: never the credential's.
    for args in [
        vec!["--gateway", "127.0.0.1:7402", "fetch", "--session", cred, "--dry-run", target],
        vec!["fetch", "--gateway", "http://127.0.0.1:7402", "--session", cred, "--dry-run", target],
    ] {
        let out = run(&args);
        assert!(
            !stderr(&out).contains(&format!(":{credential_port}")),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}
