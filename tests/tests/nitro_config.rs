//! The Nitro configuration against the stand-ins, with the real binaries: the enclave keeps no
//! local file (its state on the storage the gateway serves, its sealing key a KMS data key from
//! `wallet-kms-sim` through the gateway's relay, released only to the PCRs the key policy
//! names), the admin's first contact checks the KMS key and service id it binds, payments are
//! counted across a restart (the wrapped key opened again by KMS), and an enclave whose PCR0 the
//! key policy does not name cannot get its key and does not start. The NSM is the simulated one
//! (its documents are signed by the TEST root): only real hardware can run the real NSM.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha384};
use wallet_e2e::{bin, header, ok, stderr, ChildGuard};

fn walletctl(url: &str, home: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(bin("walletctl"))
        .args(args)
        .env("WALLET_GATEWAY", url)
        .env("WALLETCTL_HOME", home)
        .env_remove("WALLET_ADMIN_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("walletctl runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `wallet-kms-sim` with the recommended key policy naming `pcr0`; its address and key ARN.
fn start_kms(dir: &Path, name: &str, pcr0: &[u8]) -> (ChildGuard, String, String) {
    let policy = dir.join(format!("{name}-policy.json"));
    std::fs::write(
        &policy,
        wallet_kms_sim::policy::recommended_policy_json(
            wallet_kms_sim::TEST_PRINCIPAL,
            &[wallet_kms_sim::TEST_KEY_ADMIN],
            &[(0, pcr0)],
        ),
    )
    .unwrap();
    let mut child = Command::new(bin("wallet-kms-sim"))
        .arg("--policy")
        .arg(&policy)
        .arg("--state")
        .arg(dir.join(format!("{name}-key.json")))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kms-sim starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("kms-sim announces itself");
    (
        ChildGuard(child),
        v["listen"].as_str().unwrap().to_owned(),
        v["key_arn"].as_str().unwrap().to_owned(),
    )
}

/// The gateway serving storage and relaying to KMS at `kms`; its URL.
fn start_gateway(dir: &Path, kms: &str) -> (ChildGuard, String) {
    let mut child = Command::new(bin("wallet-gateway"))
        .args(["--listen", "127.0.0.1:0", "--enclave-socket"])
        .arg(dir.join("enclave.sock"))
        .arg("--data-dir")
        .arg(dir.join("host"))
        .arg("--serve-storage")
        .arg(format!("unix:{}", dir.join("storage.sock").display()))
        .arg("--kms-relay")
        .arg(format!("unix:{}", dir.join("kms.sock").display()))
        .args(["--kms-target", kms])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("gateway.log")).unwrap())
        .spawn()
        .expect("gateway starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line:?}");
    (ChildGuard(child), url)
}

/// The enclave in the Nitro configuration (simulated NSM). `Ok` once it listens; `Err` with its
/// log when it exits first.
fn start_enclave(dir: &Path, key_arn: &str, nowhere: &Path) -> Result<ChildGuard, String> {
    let sock = dir.join("enclave.sock");
    let _ = std::fs::remove_file(&sock);
    let log = dir.join("enclave.log");
    let child = Command::new(bin("wallet-enclave"))
        .arg("--simulated")
        .arg("--socket")
        .arg(&sock)
        .arg("--host-storage")
        .arg(format!("unix:{}", dir.join("storage.sock").display()))
        .args(["--kms-key", key_arn, "--service-id", "wallet-e2e"])
        .arg("--kms-relay")
        .arg(format!("unix:{}", dir.join("kms.sock").display()))
        // Nothing may be written locally: the default data directory points nowhere.
        .arg("--data-dir")
        .arg(nowhere)
        .env("HOME", nowhere)
        .env("AWS_ACCESS_KEY_ID", wallet_kms_sim::TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", wallet_kms_sim::TEST_SECRET_ACCESS_KEY)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("enclave starts");
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        if let Ok(Some(status)) = guard.0.try_wait() {
            return Err(format!(
                "exited with {status}: {}",
                std::fs::read_to_string(&log).unwrap()
            ));
        }
        assert!(Instant::now() < deadline, "the enclave did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(guard)
}

fn spent(url: &str, home: &Path, wallet: &str) -> String {
    ok(&walletctl(url, home, &["session", "list", "--wallet", wallet], ""))
}

#[test]
fn the_nitro_configuration_runs_on_host_storage_with_a_kms_sealed_key_and_no_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nowhere: PathBuf = d.join("no-local-disk");
    let pcr0 = Sha384::digest(std::fs::read(bin("wallet-enclave")).unwrap()).to_vec();
    let (_kms, kms_addr, key_arn) = start_kms(d, "right", &pcr0);
    let (_gateway, url) = start_gateway(d, &kms_addr);
    let mut enclave = start_enclave(d, &key_arn, &nowhere).expect("the enclave gets its key");

    // The first contact: the admin names the KMS key and service the sealing key is bound to.
    let home = d.join("home");
    let out = walletctl(
        &url,
        &home,
        &["init", "--simulated", "--expect-kms-key", &key_arn, "--expect-service", "other"],
        "",
    );
    assert_eq!(out.status.code(), Some(5), "another service id is refused: {}", stderr(&out));
    assert!(!home.join("audit.pub").exists());
    let init = ok(&walletctl(
        &url,
        &home,
        &["init", "--simulated", "--expect-kms-key", &key_arn, "--expect-service", "wallet-e2e"],
        "",
    ));
    assert!(
        init.contains(&format!("sealing:        KMS data key (key {key_arn}, service wallet-e2e)")),
        "{init}"
    );
    assert!(ok(&walletctl(&url, &home, &["status"], "")).contains("sealing:  KMS data key"));

    // A wallet, a session, a payment.
    let created = ok(&walletctl(&url, &home, &["wallet", "create", "--label", "n"], ""));
    let wallet = created.split_whitespace().nth(1).unwrap().to_owned();
    ok(&walletctl(
        &url,
        &home,
        &[
            "policy",
            "set",
            "--wallet",
            &wallet,
            "--max-per-payment",
            "1",
            "--networks",
            "eip155:84532",
        ],
        "",
    ));
    let cred = d.join("agent.json");
    ok(&walletctl(
        &url,
        &home,
        &[
            "session",
            "issue",
            "--wallet",
            &wallet,
            "--cap",
            "1",
            "--ttl",
            "1h",
            "--out",
            cred.to_str().unwrap(),
        ],
        "",
    ));
    ok(&walletctl(&url, &home, &["pay", "--session", cred.to_str().unwrap()], &header("10000")));
    assert!(spent(&url, &home, &wallet).contains("0.01"), "{}", spent(&url, &home, &wallet));

    // The host keeps only sealed files (the wrapped key among them); the enclave wrote nothing
    // locally.
    let host = d.join("host");
    for f in ["state.log", "spends.journal", "audit.log", "commit.head", "sealing-key.kms"] {
        assert!(host.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} on the host");
    }
    assert!(!nowhere.exists(), "the enclave wrote to a local directory");

    // Restart: KMS opens the wrapped key again; the spend is still counted; same identity.
    assert!(enclave.terminate());
    let pinned = std::fs::read_to_string(home.join("audit.pub")).unwrap();
    let _enclave = start_enclave(d, &key_arn, &nowhere).expect("restarts with the stored key");
    assert!(spent(&url, &home, &wallet).contains("0.01"));
    let attest = ok(&walletctl(&url, &home, &["attest"], ""));
    assert!(attest.contains(pinned.trim()) && attest.contains("the one pinned"), "{attest}");
    assert!(!nowhere.exists());
}

#[test]
fn an_enclave_whose_pcr0_the_key_policy_does_not_name_gets_no_key_and_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_kms, kms_addr, key_arn) = start_kms(d, "other-image", &[0x5a; 48]);
    let (_gateway, _url) = start_gateway(d, &kms_addr);
    let err = start_enclave(d, &key_arn, &d.join("nowhere")).expect_err("no key, no start");
    assert!(err.contains("AccessDenied"), "{err}");
    assert!(
        !d.join("host/sealing-key.kms").exists()
            || std::fs::read(d.join("host/sealing-key.kms")).unwrap().is_empty()
    );
}
