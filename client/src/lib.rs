//! The client side of the agent wallet: everything an agent or an admin tool needs to talk to
//! the gateway (`wallet.gateway.v1`).
//!
//! * [`credential`]: the agent's session [`Credential`] (a 0600 file holding the session's
//!   Ed25519 key) and the signed requests it makes: `SignPaymentRequest`, and the read-only
//!   `GetBudgetRequest`, `ListPaymentsRequest` and `PreviewPaymentRequest` (its own budget,
//!   history and a dry run, answered by the enclave for its session).
//! * [`admin`]: the admin's [`AdminKey`] and the `AdminAuth` it puts on state-changing requests.
//! * [`gateway`]: [`GatewayClient`], a typed client whose errors ([`ClientError`]) carry the gRPC
//!   code, the stable [`Reason`](wallet_proto::Reason) and `walletctl`'s exit code.
//! * [`util`]: small helpers shared by every client (idempotency keys, header input, home).
//!
//! Used by `walletctl` today, and by `walletctl fetch` and an MCP server next.
//!
//! Boundary: this crate runs where the agent or the admin runs, and holds their keys (never
//! printed, zeroized on drop). It depends on `wallet-proto` (messages, signed bytes, reasons),
//! tonic's *client* channel and the `google.rpc` error types: no gRPC server, no health or
//! reflection service, no policy engine, and nothing of the enclave or the gateway.

pub mod admin;
pub mod credential;
pub mod error;
pub mod gateway;
pub mod util;

pub use admin::AdminKey;
pub use credential::{new_session_key, Credential, CREDENTIAL_VERSION};
pub use error::{ClientError, REASON_METADATA};
pub use gateway::GatewayClient;
pub use util::{clean_header_input, default_home, now_ms, random_idempotency_key};
pub use wallet_proto::{AdminRpc, Reason};

use std::{fs, os::unix::fs::DirBuilderExt as _, path::Path};

/// Creates the parent directory of a key file (0700) if it is missing.
fn create_parent(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    Ok(())
}

/// Fails with a sentence naming `path` when anyone but the owner may read it.
fn check_owner_only(path: &Path, what: &str, meta: &fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{what} {} is readable by others; run: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}
