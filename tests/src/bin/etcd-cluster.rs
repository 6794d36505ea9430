//! `wallet-etcd-cluster`: runs a throwaway etcd cluster with mutual TLS on 127.0.0.1 (the test
//! harness `wallet_e2e::etcd`) for scripts, until SIGTERM or SIGINT, then stops every member.
//!
//! Usage: `wallet-etcd-cluster --dir DIR [--members N] [--grant CN=PREFIX]...`. Writes
//! `DIR/ca.pem` and `DIR/ca-key.pem` (the anchor CA) and `DIR/endpoints` (one `127.0.0.1:PORT`
//! per member, in order), grants each CN read-write on its prefix (etcd auth on), then prints
//! `ready` on stdout. `scripts/nitro-e2e.sh` uses it for the anchored boots.

use std::path::PathBuf;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut members, mut grants) = (None, 3usize, Vec::new());
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(value())),
            "--members" => members = value().parse().expect("--members takes a number"),
            "--grant" => {
                let v = value();
                let (cn, prefix) = v.split_once('=').expect("--grant CN=PREFIX");
                grants.push((cn.to_owned(), prefix.to_owned()));
            }
            other => panic!("unknown argument {other:?} (usage: --dir DIR [--members N] [--grant CN=PREFIX]...)"),
        }
    }
    let dir = dir.expect("--dir DIR");
    std::fs::create_dir_all(&dir).expect("create --dir");
    let cluster = wallet_e2e::etcd::EtcdCluster::start(members);
    for (cn, prefix) in &grants {
        cluster.grant_prefix(cn, prefix);
    }
    std::fs::write(dir.join("ca.pem"), cluster.ca_cert_pem()).expect("write ca.pem");
    std::fs::write(dir.join("ca-key.pem"), cluster.ca_key_pem()).expect("write ca-key.pem");
    let endpoints: Vec<String> =
        cluster.client_endpoints().iter().map(ToString::to_string).collect();
    std::fs::write(dir.join("endpoints"), endpoints.join("\n") + "\n").expect("write endpoints");
    println!("ready");
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(cluster);
}
