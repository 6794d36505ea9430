//! The trusted signer of the agent wallet.
//!
//! It holds every private key, sealed at rest; evaluates the owner's policy on the exact payment
//! it signs; records each spend durably before the signature leaves; and talks to the untrusted
//! host only through length-prefixed protobuf frames. It serves no HTTP or gRPC and has no CLI
//! framework; its one gRPC client is the rollback anchor's, to etcd ([`anchor`]).
//!
//! Where to start reading: [`service`] is the trust boundary (`Enclave::handle`) and the map of
//! flows; `service::payment` is the life of one payment, top to bottom; `service::ledger` names
//! the stages of a spend and the ledger's invariants.
//!
//! Modules:
//! * [`service`]: request handling, one file per flow.
//! * [`platform`]: the seam to the machine — NSM (randomness, attestation), clock, sealing key,
//!   and the stores behind traits. The simulated platform is behind the `simulated` feature.
//! * [`store`] (sled state, sealed, group-committed fsync), [`journal`] (the append-only spend
//!   log), [`audit`] (the hash-chained audit log), [`head`] (the commit head), [`commit`] (group
//!   commit), [`seal`] (authenticated encryption at rest): the file-backed stores.
//! * [`hostfile`] (the file under the journal, the audit log and the head: local, or stored by
//!   the host), [`hoststorage`] (the client of the host's storage server, `wallet.storage.v1`)
//!   and [`logstore`] (the state store as a log of sealed batches, on host storage).
//! * [`keys`]: the only code touching wallet key bytes.
//! * [`anchor`]: the rollback anchor (the ledger head in etcd, over TLS that ends here).
//! * [`transport`]: frames over a Unix socket (simulated) or vsock (Nitro).
//!
//! Dependencies: `wallet-policy` and `wallet-proto` (messages and the frame codec only), and a
//! few small crates, each with its reason in `Cargo.toml`. Never `wallet-host`.

pub mod anchor;
pub mod audit;
pub mod chain;
pub mod commit;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod head;
pub mod hostfile;
pub mod hoststorage;
pub mod init;
pub mod journal;
pub mod keys;
pub mod logstore;
pub mod platform;
pub mod seal;
pub mod service;
pub mod smallwrites;
pub mod snapshot;
pub mod store;
pub mod transport;

use std::{path::PathBuf, sync::Arc};

/// How to run.
#[derive(Debug)]
pub struct Config {
    /// Simulated platform (must be asked for, and built with the `simulated` feature).
    pub simulated: bool,
    /// State directory (with `host_storage`, in simulated mode, only the sealing key file).
    pub data_dir: PathBuf,
    /// Keep the state on storage the host provides at this address instead of files in
    /// `data_dir` (`--host-storage`).
    pub host_storage: Option<hoststorage::HostAddress>,
    /// Seal with a data key from KMS (`--kms-key`, `--service-id`, `--kms-relay`): the Nitro
    /// configuration, which needs `host_storage`.
    pub kms: Option<platform::boot::KmsOptions>,
    /// Unix socket to listen on (simulated mode).
    pub socket: Option<PathBuf>,
    /// vsock port to listen on (Nitro mode).
    pub vsock_port: Option<u32>,
    /// How long idempotency keys are remembered, seconds.
    pub idempotency_ttl_seconds: u64,
    /// Spend-journal records between ledger snapshots (`--snapshot-every`).
    pub snapshot_every: u64,
    /// The host's relays to the rollback anchor's members, in order (`--anchor-relay`).
    pub anchor_relays: Vec<hoststorage::HostAddress>,
    /// Do not start the stored anchor: this process runs a copy of a group member's state to
    /// join the group under a head of its own (`--await-join`). It signs and changes nothing
    /// until the join is provisioned.
    pub await_join: bool,
}

/// Default data directory: `$WALLET_DATA_DIR`, else `$XDG_DATA_HOME/agent-wallet`, else
/// `~/.local/share/agent-wallet`.
#[must_use]
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WALLET_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("agent-wallet");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".agent-wallet"),
        |h| PathBuf::from(h).join(".local/share/agent-wallet"),
    )
}

/// Whether this build has the simulated platform (`--simulated`).
pub const HAS_SIMULATED_PLATFORM: bool = cfg!(feature = "simulated");

/// Opens the enclave on the simulated platform under `data_dir` with the system clock (also
/// used by tests and benches).
///
/// # Errors
/// When the directory, the sealing key or a store cannot be used.
#[cfg(feature = "simulated")]
pub async fn open_simulated(
    data_dir: &std::path::Path,
) -> Result<service::Enclave, Box<dyn std::error::Error + Send + Sync>> {
    let (platform, _) = platform::simulated::platform(data_dir, Arc::new(platform::SystemClock))?;
    let enclave = service::Enclave::open(platform).await?;
    enclave.set_sealing(service::Sealing::key_file());
    Ok(enclave)
}

/// Opens the enclave on the simulated platform with its state on the host's storage at `addr`
/// (waiting up to [`hoststorage::DEFAULT_CONNECT_WAIT`] for it) and its sealing key in the file
/// `data_dir/sealing.key` (simulation only: Nitro mode takes its key from KMS), with the system
/// clock.
///
/// # Errors
/// When the storage server does not answer, or the key or a store cannot be used.
#[cfg(feature = "simulated")]
pub async fn open_simulated_on_host(
    data_dir: &std::path::Path,
    addr: &hoststorage::HostAddress,
) -> Result<service::Enclave, Box<dyn std::error::Error + Send + Sync>> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir)?;
    let key = platform::simulated::FileSealingKey(data_dir.join("sealing.key"));
    let addr = addr.clone();
    // Blocking (the wait for the host, and the reads): off the runtime's workers.
    let (platform, _) = tokio::task::spawn_blocking(move || {
        platform::Platform::open_host_storage(
            &addr,
            &key,
            Arc::new(platform::simulated::SimulatedNsm),
            Arc::new(platform::SystemClock),
        )
    })
    .await??;
    let enclave = service::Enclave::open(platform).await?;
    enclave.set_sealing(service::Sealing::key_file());
    Ok(enclave)
}

/// Opens the enclave on the host's storage at `storage` with its sealing key released by KMS
/// (`kms`), drawing randomness and attestation documents from `nsm`: the Nitro configuration
/// (with the simulated NSM, against the stand-ins). No local file is read or written.
///
/// # Errors
/// When the storage server does not answer, KMS does not release the key, or a store fails its
/// checks.
pub async fn open_with_kms(
    storage: hoststorage::HostAddress,
    kms: platform::boot::KmsOptions,
    nsm: Arc<dyn platform::Nsm>,
) -> Result<service::Enclave, Box<dyn std::error::Error + Send + Sync>> {
    let sealing = service::Sealing {
        kind: "kms".into(),
        kms_key_id: kms.config.key_id.clone(),
        service_id: kms.config.service_id.clone(),
    };
    tracing::info!(storage = %storage, relay = %kms.relay, kms_key = %sealing.kms_key_id, service = %sealing.service_id, "opening: state on host storage, sealing key from KMS");
    // Blocking (the wait for the host, the KMS exchange, the reads): off the runtime's workers.
    let (platform, _) = tokio::task::spawn_blocking(move || {
        platform::boot::open_host_kms(&storage, kms, nsm, Arc::new(platform::SystemClock))
    })
    .await??;
    let enclave = service::Enclave::open(platform).await?;
    enclave.set_sealing(sealing);
    Ok(enclave)
}

/// Runs the enclave until the process is stopped.
///
/// # Errors
/// On any start-up failure, with a sentence saying what to do.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if config.kms.is_some() && config.host_storage.is_none() {
        return Err("--kms-key needs --host-storage: the wrapped sealing key and the state live on storage the host provides".into());
    }
    if !config.simulated {
        return run_nitro(config).await;
    }
    run_simulated(config).await
}

/// Nitro mode: the NSM from `/dev/nsm`, state on host storage, the sealing key from KMS, vsock.
async fn run_nitro(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (Some(storage), Some(kms), Some(port)) =
        (config.host_storage, config.kms, config.vsock_port)
    else {
        return Err("Nitro mode needs --vsock-port PORT, --host-storage vsock:PORT and --kms-key ARN --service-id ID (the enclave has no disk: its state lives on the host, sealed with a KMS key released only to its measurements). For local use, run a build with the `simulated` feature with --simulated".into());
    };
    #[cfg(target_os = "linux")]
    {
        let nsm: Arc<dyn platform::Nsm> = Arc::new(platform::nsm::NitroNsm::open()?);
        let enclave = open_with_kms(storage, kms, nsm).await?;
        enclave.set_idempotency_ttl(config.idempotency_ttl_seconds);
        enclave.set_snapshot_every(config.snapshot_every);
        let enclave = Arc::new(enclave);
        enclave.start_anchor(config.anchor_relays, config.await_join).await;
        enclave.snapshot_if_behind();
        transport::serve_vsock(port, enclave).await?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (storage, kms, port);
        Err("Nitro mode runs on Linux only".into())
    }
}

#[cfg(not(feature = "simulated"))]
async fn run_simulated(_: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("this build has no simulated mode (a production build): build with `--features simulated` for local use (scripts/dev-up.sh does)".into())
}

#[cfg(feature = "simulated")]
async fn run_simulated(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let enclave = match (&config.host_storage, config.kms) {
        (Some(addr), Some(kms)) => {
            tracing::warn!("SIMULATED NSM: the Nitro configuration (host storage, KMS sealing) with attestation documents signed by the TEST root. Not for real funds.");
            open_with_kms(addr.clone(), kms, Arc::new(platform::simulated::SimulatedNsm)).await?
        }
        (storage, _) => {
            tracing::warn!(
                "SIMULATED ENCLAVE: keys are sealed with a key file on this machine. Not for real funds."
            );
            match storage {
                None => open_simulated(&config.data_dir).await?,
                Some(addr) => {
                    tracing::info!(storage = %addr, "state on host storage (the sealing key stays in the data directory: simulation only)");
                    open_simulated_on_host(&config.data_dir, addr).await?
                }
            }
        }
    };
    enclave.set_idempotency_ttl(config.idempotency_ttl_seconds);
    enclave.set_snapshot_every(config.snapshot_every);
    let enclave = Arc::new(enclave);
    enclave.start_anchor(config.anchor_relays, config.await_join).await;
    enclave.snapshot_if_behind();
    let socket = config.socket.unwrap_or_else(|| config.data_dir.join("enclave.sock"));
    let serve = transport::serve_unix(&socket, Arc::clone(&enclave));
    tokio::select! {
        r = serve => r?,
        () = shutdown_signal() => tracing::info!("shutting down"),
    }
    enclave.stop_anchor().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

#[cfg(feature = "simulated")]
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
