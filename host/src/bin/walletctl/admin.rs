//! `walletctl admin`: admin keys, and the signing of every state-changing request.

use std::path::Path;

use clap::Subcommand;
use wallet_client::{now_ms, AdminKey, AdminRpc};
use wallet_proto::{gateway::v1 as gw, AdminSigned};

use crate::{client, Fail, Out};

/// The `walletctl admin` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCmd {
    /// Print this machine's admin public key (to give to another admin).
    Key,
    /// List the enclave's admin keys.
    List,
    /// Add an admin key (signed by this admin). To rotate: add the new key, switch to it, then
    /// remove the old one with the new key.
    Add {
        /// Ed25519 public key, 64 hex digits (`walletctl admin key` on the other machine).
        public_key: String,
        /// A name for people.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Remove an admin key (the last one cannot be removed).
    Remove {
        /// Ed25519 public key, 64 hex digits.
        public_key: String,
    },
}

/// The admin key: `WALLET_ADMIN_KEY` (hex) or `HOME/admin.key`.
pub(crate) fn admin_key(home: &Path) -> Result<AdminKey, Fail> {
    if let Ok(hex) = std::env::var("WALLET_ADMIN_KEY") {
        return AdminKey::from_hex(&hex).map_err(|e| Fail(2, format!("WALLET_ADMIN_KEY: {e}")));
    }
    AdminKey::read(&home.join("admin.key")).map_err(|e| Fail(2, e))
}

/// The enclave this admin talks to: its audit public key, pinned by `walletctl init`.
pub(crate) fn enclave_id(home: &Path) -> Result<Vec<u8>, Fail> {
    let path = home.join("audit.pub");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Fail(2, format!("no pinned enclave identity in {}: run walletctl init", path.display()))
    })?;
    hex::decode(text.trim()).map_err(|_| Fail(2, format!("{} is not a hex key", path.display())))
}

/// Signs a state-changing request with the admin key, for the pinned enclave.
pub(crate) fn signed<R: AdminSigned>(home: &Path, rpc: AdminRpc, req: R) -> Result<R, Fail> {
    Ok(admin_key(home)?.signed(&enclave_id(home)?, rpc, req, now_ms()))
}

/// Runs one `walletctl admin` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: AdminCmd) -> Out {
    match c {
        AdminCmd::Key => {
            println!("{}", admin_key(home)?.public_key_hex());
            return Ok(());
        }
        AdminCmd::List => {
            let l = client(url).await?.list_admins(gw::ListAdminsRequest {}).await?;
            let mine = admin_key(home).ok().map(|k| k.public_key_hex());
            for a in l.admins {
                let pk = hex::encode(&a.public_key);
                let you = if mine.as_deref() == Some(pk.as_str()) { "  (this key)" } else { "" };
                println!("{pk}  {}{you}", a.label);
            }
        }
        AdminCmd::Add { public_key, label } => {
            let pk = hex::decode(public_key.trim())
                .map_err(|_| Fail(2, "the public key must be 64 hex digits".into()))?;
            let req = signed(
                home,
                AdminRpc::AddAdmin,
                gw::AddAdminRequest { public_key: pk, label, auth: None },
            )?;
            let a = client(url).await?.add_admin(req).await?;
            println!("admin {} added", hex::encode(a.public_key));
        }
        AdminCmd::Remove { public_key } => {
            let pk = hex::decode(public_key.trim())
                .map_err(|_| Fail(2, "the public key must be 64 hex digits".into()))?;
            let req = signed(
                home,
                AdminRpc::RemoveAdmin,
                gw::RemoveAdminRequest { public_key: pk, auth: None },
            )?;
            let a = client(url).await?.remove_admin(req).await?;
            println!("admin {} removed", hex::encode(a.public_key));
        }
    }
    Ok(())
}
