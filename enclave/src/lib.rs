//! The trusted signer of the agent wallet.
//!
//! It holds every private key, sealed at rest; evaluates the owner's policy on the exact payment
//! it signs; records each spend durably before the signature leaves; and talks to the untrusted
//! host only through length-prefixed protobuf frames. No HTTP, no gRPC stack, no CLI framework.
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
//!   log), [`audit`] (the hash-chained audit log), [`commit`] (group commit), [`seal`]
//!   (authenticated encryption at rest): the file-backed stores.
//! * [`keys`]: the only code touching wallet key bytes.
//! * [`transport`]: frames over a Unix socket (simulated) or vsock (Nitro).
//!
//! Dependencies: `wallet-policy` and `wallet-proto` (messages and the frame codec only), and a
//! few small crates, each with its reason in `Cargo.toml`. Never `wallet-host`.

pub mod audit;
pub mod commit;
pub mod head;
pub mod journal;
pub mod keys;
pub mod platform;
pub mod seal;
pub mod service;
pub mod store;
pub mod transport;

use std::path::PathBuf;
#[cfg(feature = "simulated")]
use std::sync::Arc;

/// How to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Simulated platform (must be asked for, and built with the `simulated` feature).
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
    Ok(service::Enclave::open(platform).await?)
}

/// Runs the enclave until the process is stopped.
///
/// # Errors
/// On any start-up failure, with a sentence saying what to do.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if !config.simulated {
        #[cfg(target_os = "linux")]
        {
            let _nsm = platform::nsm::NitroNsm::open()?;
        }
        return Err("Nitro mode needs sealed storage provided by the host, which is not built yet; run a build with the `simulated` feature with --simulated for local use".into());
    }
    run_simulated(config).await
}

#[cfg(not(feature = "simulated"))]
async fn run_simulated(_: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("this build has no simulated mode (a production build): build with `--features simulated` for local use (scripts/dev-up.sh does)".into())
}

#[cfg(feature = "simulated")]
async fn run_simulated(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
        () = shutdown_signal() => tracing::info!("shutting down"),
    }
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
