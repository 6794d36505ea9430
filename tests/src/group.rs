//! A group of enclaves sharing budgets (ARCHITECTURE.md, "One budget, several enclaves"): the
//! first member is an anchored [`Stack`] provisioned with a shared prefix; a further member is a
//! copy of its state joined under a head of its own ([`join`]), with its own gateway. For tests
//! and the bench.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use wallet_proto::gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient};

use crate::{
    anchor::{enclave_relay_args, gateway_relay_args, CN},
    bin,
    etcd::{EtcdCluster, SERVER_NAME},
    ChildGuard, EnclaveStorage, Stack,
};

/// A further member: an enclave on a copy of a member's state under `dir`, and its own gateway
/// (which relays its TLS to etcd).
#[derive(Debug)]
pub struct Member {
    /// Its directory (`data/`, `enclave.sock`, logs, relay sockets).
    pub dir: PathBuf,
    /// The enclave process.
    pub enclave: ChildGuard,
    /// Its gateway.
    pub gateway: ChildGuard,
    /// The gateway's URL.
    pub url: String,
}

impl Member {
    /// Starts the enclave again (after a kill) on its state, with `extra` arguments.
    pub fn start_enclave(&mut self, extra: &[&str]) {
        let mut args = enclave_relay_args(&self.dir, 3);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.enclave =
            crate::start_enclave_with(&self.dir, "info", None, &EnclaveStorage::Local, &args);
    }
}

/// `walletctl` with `a`'s home (its admin key and pinned identity, which a copy shares) against
/// the gateway at `url`.
///
/// # Panics
/// When walletctl cannot be started.
#[must_use]
pub fn walletctl_at(a: &Stack, url: &str, args: &[&str]) -> Output {
    Command::new(bin("walletctl"))
        .args(args)
        .env("WALLET_GATEWAY", url)
        .env("WALLETCTL_HOME", a.dir.path().join("home"))
        .env_remove("WALLET_SESSION")
        .output()
        .expect("walletctl")
}

/// The `walletctl anchor provision --join` arguments for a member taking `key`, with the CA
/// files under `files`.
#[must_use]
pub fn join_args(files: &Path, key: &str, shared_prefix: &str) -> Vec<String> {
    [
        "anchor",
        "provision",
        "--ca-cert",
        &files.join("ca.pem").display().to_string(),
        "--ca-key",
        &files.join("ca-key.pem").display().to_string(),
        "--client-name",
        CN,
        "--key",
        key,
        "--server-name",
        SERVER_NAME,
        "--members",
        "3",
        "--shared-prefix",
        shared_prefix,
        "--join",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Stops `a`'s enclave (SIGTERM, cleanly), copies its data directory to `dir/data`, and starts
/// it again.
///
/// # Panics
/// When the enclave does not stop cleanly or the copy fails.
pub fn copy_state(a: &mut Stack, dir: &Path) {
    assert!(
        a.enclave.terminate(),
        "the enclave did not stop cleanly: {}",
        std::fs::read_to_string(a.enclave_log()).unwrap_or_default()
    );
    std::fs::create_dir_all(dir).expect("member dir");
    let to = dir.join("data");
    let _ = std::fs::remove_dir_all(&to);
    let st = Command::new("cp").arg("-a").arg(a.data_dir()).arg(&to).status().expect("cp");
    assert!(st.success(), "cp -a {} {}", a.data_dir().display(), to.display());
    a.start_enclave_again();
}

/// The anchor as the enclave behind `url` reports it.
///
/// # Panics
/// When the gateway cannot be reached or answers without an anchor.
pub async fn anchor_state(url: &str) -> gw::AnchorInfo {
    let mut c = WalletGatewayClient::connect(url.to_owned()).await.expect("connect");
    c.get_status(gw::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .anchor
        .expect("anchor")
}

/// Starts the copy of `a`'s state under `dir` ([`copy_state`]) with `--await-join` and its own
/// gateway, and joins it to `a`'s group under `key` with `a`'s admin key; the CA files are under
/// `files`.
///
/// # Panics
/// When the copy does not wait to join, the join fails, or either member does not serve after.
pub async fn join(
    cluster: &EtcdCluster,
    a: &Stack,
    files: &Path,
    dir: &Path,
    key: &str,
    shared_prefix: &str,
) -> Member {
    let mut args = enclave_relay_args(dir, 3);
    args.push("--await-join".into());
    let enclave = crate::start_enclave_with(dir, "info", None, &EnclaveStorage::Local, &args);
    let (gateway, url) =
        crate::start_gateway_with(dir, "info", None, &gateway_relay_args(cluster, dir));
    let waiting = anchor_state(&url).await;
    assert!(waiting.state.contains("--await-join"), "{waiting:?}");
    let args = join_args(files, key, shared_prefix);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = crate::ok(&walletctl_at(a, &url, &args));
    assert!(text.contains("at epoch 1"), "{text}");
    let info = anchor_state(&url).await;
    assert_eq!(info.state, "serving", "{info:?}");
    assert_eq!(info.shared_prefix, shared_prefix);
    let first = anchor_state(&a.url).await;
    assert_ne!(info.member, first.member, "each member has an id of its own");
    assert_eq!(first.state, "serving", "joining did not disturb the first member: {first:?}");
    Member { dir: dir.to_owned(), enclave, gateway, url }
}
