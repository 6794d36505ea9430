//! `walletctl asset`: the registry of tokens the wallet may sign for.

use std::path::Path;

use clap::Subcommand;
use wallet_client::AdminRpc;
use wallet_proto::gateway::v1 as gw;

use crate::{admin::signed, client, Out};

/// The `walletctl asset` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AssetCmd {
    /// Register a token (for another chain, or a local test chain such as eip155:31337).
    #[command(disable_version_flag = true)]
    Add {
        /// CAIP-2 network, e.g. eip155:31337.
        #[arg(long)]
        network: String,
        /// Token contract address.
        #[arg(long)]
        address: String,
        /// EIP-712 domain name of the token (what servers put in extra.name).
        #[arg(long)]
        name: String,
        /// EIP-712 domain version (extra.version).
        #[arg(long)]
        version: String,
        /// Token decimals.
        #[arg(long, default_value_t = 6)]
        decimals: u32,
        /// Display symbol.
        #[arg(long, default_value = "USDC")]
        symbol: String,
    },
    /// List registered assets.
    List,
}

/// Runs one `walletctl asset` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: AssetCmd) -> Out {
    let mut cl = client(url).await?;
    match c {
        AssetCmd::Add { network, address, name, version, decimals, symbol } => {
            let asset = Some(gw::Asset { network, address, name, version, decimals, symbol });
            let a = cl
                .add_asset(signed(
                    home,
                    AdminRpc::AddAsset,
                    gw::AddAssetRequest { asset, auth: None },
                )?)
                .await?;
            println!(
                "registered {} {} on {} (EIP-712 {:?} v{}, {} decimals)",
                a.symbol, a.address, a.network, a.name, a.version, a.decimals
            );
        }
        AssetCmd::List => {
            for a in cl.list_assets(gw::ListAssetsRequest {}).await?.assets {
                println!(
                    "{:<18} {}  {:<6} {:?} v{}  {} decimals",
                    a.network, a.address, a.symbol, a.name, a.version, a.decimals
                );
            }
        }
    }
    Ok(())
}
