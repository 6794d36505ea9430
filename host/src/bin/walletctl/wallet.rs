//! `walletctl wallet`: create, list, freeze and unfreeze wallets.

use std::path::Path;

use clap::Subcommand;
use wallet_client::AdminRpc;
use wallet_proto::gateway::v1 as gw;

use crate::{admin::signed, client, Out};

/// The `walletctl wallet` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum WalletCmd {
    /// Create a wallet: the enclave generates its key, which never leaves it.
    Create {
        /// A name for people.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List wallets.
    List,
    /// Kill switch: no signature is released for the wallet once this returns (in a group of
    /// enclaves: by this member; the others stop within a grant's lease, 5 s).
    Freeze {
        /// Wallet id.
        #[arg(value_parser = crate::wallet_id)]
        wallet: String,
    },
    /// Lift a freeze.
    Unfreeze {
        /// Wallet id.
        #[arg(value_parser = crate::wallet_id)]
        wallet: String,
    },
}

/// Runs one `walletctl wallet` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: WalletCmd) -> Out {
    let mut cl = client(url).await?;
    match c {
        WalletCmd::Create { label } => {
            let w = cl
                .create_wallet(signed(
                    home,
                    AdminRpc::CreateWallet,
                    gw::CreateWalletRequest { label, auth: None },
                )?)
                .await?;
            println!("wallet {}  address {}", w.wallet_id, w.address);
            println!("Next: walletctl policy set --wallet {} --max-per-payment 0.10", w.wallet_id);
        }
        WalletCmd::Freeze { wallet } => {
            let req = signed(
                home,
                AdminRpc::FreezeWallet,
                gw::FreezeWalletRequest { wallet_id: wallet, auth: None },
            )?;
            let w = cl.freeze_wallet(req).await?;
            println!(
                "wallet {} FROZEN: no signature is released until `walletctl wallet unfreeze {}`",
                w.wallet_id, w.wallet_id
            );
        }
        WalletCmd::Unfreeze { wallet } => {
            let req = signed(
                home,
                AdminRpc::UnfreezeWallet,
                gw::FreezeWalletRequest { wallet_id: wallet, auth: None },
            )?;
            let w = cl.unfreeze_wallet(req).await?;
            println!("wallet {} unfrozen", w.wallet_id);
        }
        WalletCmd::List => {
            let l = cl.list_wallets(gw::ListWalletsRequest {}).await?;
            if l.wallets.is_empty() {
                println!("no wallets yet: walletctl wallet create");
            }
            for w in l.wallets {
                println!(
                    "{}  {}  {}{}",
                    w.wallet_id,
                    w.address,
                    w.label,
                    if w.frozen { "  FROZEN" } else { "" }
                );
            }
        }
    }
    Ok(())
}
