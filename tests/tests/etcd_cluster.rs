//! The etcd test cluster itself (`wallet_e2e::etcd`), against the real etcd (3.4 from Debian,
//! `scripts/etcd/install.sh`):
//!
//! * three members with mutual TLS start on 127.0.0.1, elect a leader and replicate a write;
//! * one member down (a follower, then the leader) leaves writes working; two down stops them
//!   (no false success); restarting them brings writes back, with every earlier write intact;
//! * per-wallet roles: an Ed25519 client certificate (the enclave's key type) issued by the
//!   P-256 anchor CA reaches its own prefix only; a certificate of another CA, even with the
//!   same CA name and CN=root, is refused at the TLS handshake.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PublicKeyData as _,
};
use wallet_e2e::etcd::EtcdCluster;

fn text(out: &Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// etcdctl as root against member `i` alone.
fn on_member(cluster: &EtcdCluster, i: usize, args: &[&str]) -> Output {
    let pki = cluster.dir().join("pki");
    std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{}", cluster.client_endpoints()[i]))
        .arg(format!("--cacert={}", pki.join("ca.pem").display()))
        .arg(format!("--cert={}", pki.join("root.pem").display()))
        .arg(format!("--key={}", pki.join("root-key.pem").display()))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("run etcdctl")
}

/// Puts `key=value`, retrying until it succeeds or `timeout` passes; whether it succeeded.
fn put_within(cluster: &EtcdCluster, key: &str, value: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let out = cluster.etcdctl(&["put", key, value, "--command-timeout", "2s"]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{}", text(&out));
            return true;
        }
        if Instant::now() >= deadline {
            eprintln!("put {key} still failing: {}", text(&out));
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A linearizable read of `key` as root (empty when absent).
fn get(cluster: &EtcdCluster, key: &str) -> String {
    cluster.etcdctl_ok(&["get", key, "--print-value-only"]).trim().to_owned()
}

/// Waits until a leader is reported that is not `not`; returns it.
fn leader_other_than(cluster: &EtcdCluster, not: Option<usize>, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        match cluster.leader() {
            Some(l) if Some(l) != not => return l,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no new leader within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_members_start_replicate_and_elect_a_leader() {
    let t = Instant::now();
    let cluster = EtcdCluster::start(3);
    eprintln!("3 members healthy after {:?}", t.elapsed());

    let endpoints = cluster.client_endpoints();
    assert_eq!(endpoints.len(), 3);
    for (i, e) in endpoints.iter().enumerate() {
        assert!(e.ip().is_loopback(), "{e}");
        assert!(cluster.is_running(i));
        assert!(endpoints[..i].iter().all(|o| o.port() != e.port()), "distinct ports");
    }
    // The files are where the module says, keys private.
    let pki = cluster.dir().join("pki");
    assert_eq!(fs::read_to_string(pki.join("ca.pem")).expect("ca.pem"), cluster.ca_cert_pem());
    assert_eq!(fs::read_to_string(pki.join("ca-key.pem")).expect("ca key"), cluster.ca_key_pem());
    assert!(cluster.ca_key_pem().starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    for key in ["ca-key.pem", "server-key.pem", "peer-key.pem", "root-key.pem"] {
        let mode = fs::metadata(pki.join(key)).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    for i in 0..3 {
        assert!(cluster.dir().join(format!("data/m{i}/member")).is_dir(), "data dir of m{i}");
        assert!(cluster.dir().join(format!("logs/m{i}.log")).is_file(), "log of m{i}");
    }

    // All three joined one cluster.
    let members = cluster.etcdctl_ok(&["member", "list"]);
    assert_eq!(members.lines().filter(|l| l.contains(", started, ")).count(), 3, "{members}");

    assert_eq!(cluster.etcdctl_ok(&["put", "/harness/k", "v1"]).trim(), "OK");
    assert_eq!(get(&cluster, "/harness/k"), "v1");
    // Replicated: every member serves it from its own copy (serializable read, one endpoint).
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = on_member(
                &cluster,
                i,
                &["get", "/harness/k", "--print-value-only", "--consistency=s"],
            );
            if String::from_utf8_lossy(&out.stdout).trim() == "v1" {
                break;
            }
            assert!(Instant::now() < deadline, "m{i} lacks the write: {}", text(&out));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let leader = cluster.leader().expect("a leader");
    assert!(leader < 3);
    eprintln!("leader m{leader}; test took {:?}", t.elapsed());
}

#[test]
fn one_member_down_is_tolerated_two_down_is_not() {
    let t = Instant::now();
    let mut cluster = EtcdCluster::start(3);
    let leader = cluster.leader().expect("a leader");
    let follower = (leader + 1) % 3;

    // A follower down: writes go on (the client may first try the dead endpoint).
    cluster.kill(follower);
    assert!(!cluster.is_running(follower));
    assert!(put_within(&cluster, "/harness/a", "1", Duration::from_secs(10)), "follower down");
    let still = cluster.leader().expect("a leader with a follower down");
    assert_ne!(still, follower, "the dead follower is no leader");
    cluster.restart(follower);
    assert!(cluster.wait_healthy(follower, Duration::from_secs(15)), "follower back");
    eprintln!("follower m{follower} killed and back at {:?}", t.elapsed());

    // The leader down: after an election among the other two, writes go on.
    let killed = Instant::now();
    cluster.kill(leader);
    assert!(put_within(&cluster, "/harness/b", "2", Duration::from_secs(10)), "leader down");
    let new_leader = leader_other_than(&cluster, Some(leader), Duration::from_secs(10));
    eprintln!("leader m{leader} killed: m{new_leader} leads, write after {:?}", killed.elapsed());

    // A second member down (the new leader): no quorum, so a write fails, within its timeout.
    // (Failed is not "not applied": a write refused by a lone *leader* sits in its log and
    // commits once a quorum is back. Here the lone member is a follower.)
    cluster.kill(new_leader);
    let alone = (0..3).find(|&i| cluster.is_running(i)).expect("one member left");
    assert_eq!((0..3).filter(|&i| cluster.is_running(i)).count(), 1);
    let attempt = Instant::now();
    let out = cluster.etcdctl(&["put", "/harness/c", "3", "--command-timeout", "2s"]);
    assert!(!out.status.success(), "a write without quorum succeeded: {}", text(&out));
    let refused_in = attempt.elapsed();
    assert!(refused_in < Duration::from_secs(8), "bounded: {refused_in:?}");
    // A linearizable read fails likewise; the lone member still has the data (serializable).
    let read = cluster.etcdctl(&["get", "/harness/a", "--command-timeout", "2s"]);
    assert!(!read.status.success(), "a linearizable read without quorum: {}", text(&read));
    let stale = cluster.etcdctl_ok(&["get", "/harness/a", "--print-value-only", "--consistency=s"]);
    assert_eq!(stale.trim(), "1");
    assert_eq!(cluster.leader(), None, "m{alone} alone is no leader");
    eprintln!("no quorum: write refused in {refused_in:?}");

    // Both back (on their data dirs): writes resume, nothing was lost.
    cluster.restart(leader);
    cluster.restart(new_leader);
    assert!(put_within(&cluster, "/harness/d", "4", Duration::from_secs(15)), "quorum back");
    for i in 0..3 {
        assert!(cluster.wait_healthy(i, Duration::from_secs(15)), "m{i} healthy");
    }
    assert_eq!(get(&cluster, "/harness/a"), "1");
    assert_eq!(get(&cluster, "/harness/b"), "2");
    assert_eq!(get(&cluster, "/harness/d"), "4");
    assert!(cluster.leader().is_some());
    eprintln!("test took {:?}", t.elapsed());
}

/// Writes a client certificate and its key (0600) into `dir`; returns their paths.
fn write_identity(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    fs::write(&cert, cert_pem).expect("write cert");
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .and_then(|mut f| f.write_all(key_pem.as_bytes()))
        .expect("write key");
    (cert, key)
}

fn denied(out: &Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("permission denied")
}

#[test]
fn per_wallet_prefixes_with_ed25519_client_certificates() {
    let t = Instant::now();
    let cluster = EtcdCluster::start(3);
    let files = tempfile::tempdir().expect("temp dir");
    cluster.grant_prefix("wallet-w1", "/wallet/w1/");

    // The enclave's kind of key: Ed25519, certified by the P-256 anchor CA.
    let w1_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let w1_cert = cluster.issue_client_cert("wallet-w1", &w1_key.subject_public_key_info());
    let (cert, key) = write_identity(files.path(), "w1", &w1_cert, &w1_key.serialize_pem());
    let w1 = |args: &[&str]| cluster.etcdctl_as(&cert, &key, args);

    let out = w1(&["put", "/wallet/w1/anchor/head", "h1"]);
    assert!(out.status.success(), "w1 writes its own prefix: {}", text(&out));
    let out = w1(&["get", "/wallet/w1/anchor/head", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "h1", "{}", text(&out));
    let out = w1(&["put", "/wallet/w2/anchor/head", "forged"]);
    assert!(denied(&out), "w1 must not write w2's prefix: {}", text(&out));
    let out = w1(&["get", "/wallet/w2/anchor/head"]);
    assert!(denied(&out), "w1 must not read w2's prefix: {}", text(&out));
    let out = w1(&["put", "/wallet/w1", "no trailing slash"]);
    assert!(denied(&out), "the prefix is /wallet/w1/ exactly: {}", text(&out));

    // Granting again changes nothing.
    cluster.grant_prefix("wallet-w1", "/wallet/w1/");
    let out = w1(&["put", "/wallet/w1/anchor/head", "h1"]);
    assert!(out.status.success(), "w1 after a second grant: {}", text(&out));

    // A second wallet (auth is already on: the call is idempotent), its certificate issued with
    // ca_key_pem as a test or walletctl would, for a P-256 key this time.
    cluster.grant_prefix("wallet-w2", "/wallet/w2/");
    let ca_key = KeyPair::from_pem(&cluster.ca_key_pem()).expect("CA key PEM");
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::CommonName, "x402-wallet test anchor CA");
    let anchor = Issuer::new(ca_params, ca_key);
    let w2_key = KeyPair::generate().expect("p-256 key");
    let w2_cert = client_params("wallet-w2").signed_by(&w2_key, &anchor).expect("sign").pem();
    let (cert2, key2) = write_identity(files.path(), "w2", &w2_cert, &w2_key.serialize_pem());
    let out = cluster.etcdctl_as(&cert2, &key2, &["put", "/wallet/w2/anchor/head", "h2"]);
    assert!(out.status.success(), "w2 writes its own prefix: {}", text(&out));
    let out = cluster.etcdctl_as(&cert2, &key2, &["get", "/wallet/w1/anchor/head"]);
    assert!(denied(&out), "w2 must not read w1's prefix: {}", text(&out));
    assert_eq!(get(&cluster, "/wallet/w1/anchor/head"), "h1", "root reads everything");
    assert_eq!(get(&cluster, "/wallet/w2/anchor/head"), "h2");

    // A valid certificate whose CN is no user gets nothing.
    let w9_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let w9_cert = cluster.issue_client_cert("wallet-w9", &w9_key.subject_public_key_info());
    let (cert9, key9) = write_identity(files.path(), "w9", &w9_cert, &w9_key.serialize_pem());
    let out = cluster.etcdctl_as(&cert9, &key9, &["put", "/wallet/w1/anchor/head", "forged"]);
    assert!(!out.status.success(), "an unknown CN wrote: {}", text(&out));

    // Another CA, even with the anchor CA's name, and a client certificate CN=root from it: the
    // members refuse the handshake.
    let evil_key = KeyPair::generate().expect("key");
    let mut evil_params = CertificateParams::default();
    evil_params.distinguished_name = rcgen::DistinguishedName::new();
    evil_params.distinguished_name.push(DnType::CommonName, "x402-wallet test anchor CA");
    evil_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let evil = Issuer::new(evil_params, evil_key);
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let root_cert = client_params("root").signed_by(&root_key, &evil).expect("sign").pem();
    let (cert_e, key_e) =
        write_identity(files.path(), "evil", &root_cert, &root_key.serialize_pem());
    let attempt = Instant::now();
    let out = cluster.etcdctl_as(
        &cert_e,
        &key_e,
        &["put", "/wallet/w1/anchor/head", "forged", "--command-timeout", "2s"],
    );
    assert!(!out.status.success(), "a foreign CA's client certificate wrote: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "foreign CA refused in {:?}: {}",
        attempt.elapsed(),
        stderr.lines().last().unwrap_or("")
    );
    assert_eq!(get(&cluster, "/wallet/w1/anchor/head"), "h1", "nothing was forged");
    let logs = (0..3)
        .map(|i| {
            fs::read_to_string(cluster.dir().join(format!("logs/m{i}.log"))).unwrap_or_default()
        })
        .collect::<String>();
    assert!(
        logs.contains("certificate signed by unknown authority"),
        "the members log why they refused the foreign certificate"
    );
    eprintln!("test took {:?}", t.elapsed());
}

/// A client certificate's parameters: CN=`cn`, EKU clientAuth (default validity).
fn client_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}
