//! The trusted signer of the agent wallet.
//!
//! It holds every private key, sealed at rest; evaluates the owner's policy on the exact payment
//! it signs; records each spend durably before the signature leaves; and talks to the untrusted
//! host only through length-prefixed protobuf frames. No HTTP, no gRPC stack, no CLI framework.
//!
//! Modules: [`seal`] (authenticated encryption at rest), [`store`] (the one storage interface,
//! group-committed fsync), [`keys`] (the only code touching key bytes), [`nsm`] (Nitro NSM or
//! simulation), [`service`] (state and the payment path), [`transport`] (Unix socket / vsock).

pub mod audit;
pub mod commit;
pub mod journal;
pub mod keys;
pub mod nsm;
pub mod seal;
pub mod service;
pub mod store;
pub mod transport;

use std::{path::PathBuf, sync::Arc};

/// How to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Simulated NSM (must be asked for explicitly).
    pub simulated: bool,
    /// State directory.
    pub data_dir: PathBuf,
    /// Unix socket to listen on (simulated mode).
    pub socket: Option<PathBuf>,
    /// vsock port to listen on (Nitro mode).
    pub vsock_port: Option<u32>,
    /// How long idempotency keys are remembered, seconds.
    pub idempotency_ttl_seconds: u64,
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

/// Opens the state under `data_dir` with a simulated NSM (also used by tests and benches).
///
/// # Errors
/// When the directory, the sealing key or the store cannot be used.
pub async fn open_simulated(
    data_dir: &std::path::Path,
) -> Result<service::Enclave, Box<dyn std::error::Error + Send + Sync>> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir)?;
    let key_file = data_dir.join("sealing.key");
    let store =
        store::Store::open(&data_dir.join("state"), seal::Sealer::load_or_create(&key_file)?)?;
    let audit = audit::AuditLog::open(&data_dir.join("audit.log"))?;
    let (journal, spends) = journal::Journal::open_with(
        &data_dir.join("spends.journal"),
        seal::Sealer::load_or_create(&key_file)?,
        Some(audit.sync_handle()?),
    )?;
    let enclave = service::Enclave::open(
        store,
        journal,
        spends,
        audit,
        Box::new(nsm::SimulatedNsm),
        service::system_clock(),
        data_dir.display().to_string(),
    )
    .await?;
    Ok(enclave)
}

/// Runs the enclave until the process is stopped.
///
/// # Errors
/// On any start-up failure, with a sentence saying what to do.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if !config.simulated {
        #[cfg(target_os = "linux")]
        {
            let _nsm = nsm::NitroNsm::open()?;
        }
        return Err("Nitro mode needs sealed storage provided by the host, which is not built yet; run with --simulated for local use".into());
    }
    tracing::warn!(
        "SIMULATED ENCLAVE: keys are sealed with a key file on this machine. Not for real funds."
    );
    let enclave = open_simulated(&config.data_dir).await?;
    enclave.set_idempotency_ttl(config.idempotency_ttl_seconds);
    let enclave = Arc::new(enclave);
    let socket = config.socket.unwrap_or_else(|| config.data_dir.join("enclave.sock"));
    let serve = transport::serve_unix(&socket, enclave);
    tokio::select! {
        r = serve => r?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
