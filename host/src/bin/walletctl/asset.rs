//! `walletctl asset`: the registry of tokens the wallet may sign for.

use std::path::Path;

use clap::Subcommand;
use wallet_client::{AdminRpc, GatewayClient};
use wallet_policy::{
    amount::{default_units, format_units, parse_human_in, AmountError},
    registry::AssetInfo,
};
use wallet_proto::gateway::v1 as gw;

use crate::{admin::signed, client, Fail, Out};

/// The enclave's asset registry (`ListAssets`), as the policy engine sees it. Entries that do
/// not validate are skipped (the enclave validated them when they were added).
pub(crate) async fn registry(cl: &mut GatewayClient) -> Result<Vec<AssetInfo>, Fail> {
    let assets = cl.list_assets(gw::ListAssetsRequest {}).await?.assets;
    Ok(assets
        .into_iter()
        .filter_map(|a| {
            AssetInfo::new(&a.network, &a.address, &a.name, &a.version, a.decimals, &a.symbol).ok()
        })
        .collect())
}

/// An amount flag (`--cap`, `--max-per-payment`) read with the one amount parser: `0.25`,
/// `$0.25`, or `0.25 SYMBOL` where SYMBOL is `USD` or a symbol of the enclave's registry
/// (asked only when the symbol is not a built-in one). Returns the amount as a plain decimal,
/// which is what is sent: the unit is checked here, never dropped silently.
pub(crate) async fn amount_flag(
    cl: &mut GatewayClient,
    flag: &str,
    text: &str,
) -> Result<String, Fail> {
    let bad = |e: AmountError| Fail(2, format!("invalid: {flag}: {e}"));
    let parsed = match parse_human_in(text, &default_units()) {
        Err(AmountError::UnknownUnit { .. }) => {
            let symbols: Vec<String> = registry(cl).await?.into_iter().map(|a| a.symbol).collect();
            parse_human_in(text, &symbols).map_err(bad)?
        }
        other => other.map_err(bad)?,
    };
    Ok(format_units(parsed.units))
}

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
