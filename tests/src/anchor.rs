//! A stack whose enclave is anchored in an [`EtcdCluster`]: relays, provisioning with
//! `walletctl anchor provision` (the cluster's CA key at hand, as the anchor's operator would
//! have it) and the RBAC role (for tests and the bench).

use std::path::{Path, PathBuf};

use crate::{etcd::EtcdCluster, ok, Stack, StackOptions, Storage};

/// The etcd user (the client certificate's CN) the anchored stacks use.
pub const CN: &str = "wallet-t1";
/// The prefix that user may read and write.
pub const PREFIX: &str = "/x402-wallet/t1/";

/// The Unix socket of relay `i` under `files`.
#[must_use]
pub fn relay_path(files: &Path, i: usize) -> PathBuf {
    files.join(format!("anchor-{i}.sock"))
}

/// The enclave's `--anchor-relay` arguments for `members` relays under `files`.
#[must_use]
pub fn enclave_relay_args(files: &Path, members: usize) -> Vec<String> {
    (0..members)
        .flat_map(|i| {
            ["--anchor-relay".to_owned(), format!("unix:{}", relay_path(files, i).display())]
        })
        .collect()
}

/// Starts a stack (local storage) whose enclave is given relays under `files` to `cluster`'s
/// members: the gateway's (`--anchor-relay`) when `gateway_relays`, else whatever the caller
/// listens with there. Then provisions the anchor at `key` ([`provision`]).
///
/// # Panics
/// When the stack does not start or provisioning fails.
#[must_use]
pub fn anchored_stack(
    cluster: &EtcdCluster,
    files: &Path,
    gateway_relays: bool,
    key: &str,
) -> Stack {
    anchored_stack_with(cluster, files, gateway_relays, key, &[])
}

/// The `--anchor-relay LISTEN=MEMBER` arguments of a gateway that relays for an enclave whose
/// relays are under `files`.
#[must_use]
pub fn gateway_relay_args(cluster: &EtcdCluster, files: &Path) -> Vec<String> {
    cluster
        .client_endpoints()
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            ["--anchor-relay".to_owned(), format!("unix:{}={e}", relay_path(files, i).display())]
        })
        .collect()
}

/// [`anchored_stack`], provisioning with `extra` arguments (e.g. `--shared-prefix P`).
///
/// # Panics
/// When the stack does not start or provisioning fails.
#[must_use]
pub fn anchored_stack_with(
    cluster: &EtcdCluster,
    files: &Path,
    gateway_relays: bool,
    key: &str,
    extra: &[&str],
) -> Stack {
    let endpoints = cluster.client_endpoints();
    let gateway_args = if gateway_relays { gateway_relay_args(cluster, files) } else { Vec::new() };
    let stack = Stack::start_with(StackOptions {
        // Tests swap the data directory under a stopped enclave.
        storage: Some(Storage::Local),
        gateway_args,
        enclave_args: enclave_relay_args(files, endpoints.len()),
        ..StackOptions::default()
    });
    cluster.grant_prefix(CN, PREFIX);
    std::fs::write(files.join("ca.pem"), cluster.ca_cert_pem()).expect("write CA");
    std::fs::write(files.join("ca-key.pem"), cluster.ca_key_pem()).expect("write CA key");
    let text = ok(&provision(&stack, files, key, endpoints.len(), extra));
    assert!(text.contains("at epoch 1"), "{text}");
    stack
}

/// `walletctl anchor provision` for `key` with the CA files under `files`, plus `extra`.
#[must_use]
pub fn provision(
    stack: &Stack,
    files: &Path,
    key: &str,
    members: usize,
    extra: &[&str],
) -> std::process::Output {
    let ca = files.join("ca.pem").display().to_string();
    let ca_key = files.join("ca-key.pem").display().to_string();
    let members = members.to_string();
    let mut args = vec![
        "anchor",
        "provision",
        "--ca-cert",
        &ca,
        "--ca-key",
        &ca_key,
        "--client-name",
        CN,
        "--key",
        key,
        "--server-name",
        crate::etcd::SERVER_NAME,
        "--members",
        &members,
    ];
    args.extend_from_slice(extra);
    stack.walletctl(&args, "")
}
