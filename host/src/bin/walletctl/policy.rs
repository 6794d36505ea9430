//! `walletctl policy`: set, show and check a wallet's policy document.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use wallet_client::AdminRpc;
use wallet_policy::{
    document::{parse_duration, Policy},
    registry::{default_assets, AssetInfo},
};
use wallet_proto::gateway::v1 as gw;

use crate::{
    admin::signed,
    asset::{amount_flag, registry},
    client, Fail, Out,
};

/// The `walletctl policy` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Replace a wallet's policy. Until one is set, every payment is denied.
    ///
    /// Either a policy document (--file, TOML: ordered rules, budgets per hour or day, payee
    /// lists, rate limits, approval holds; see README "Policy file") or the basic policy from
    /// flags (one per-payment limit, optional network and asset lists). A document with a mistake
    /// is rejected with its line and reason, and the running policy stays as it was.
    #[command(
        after_help = "Examples:\n  walletctl policy set --wallet w_.. --file policy.toml\n  walletctl policy set --wallet w_.. --max-per-payment 0.25 --networks eip155:8453"
    )]
    Set {
        /// Wallet id (from `wallet create`).
        #[arg(long, value_parser = crate::wallet_id)]
        wallet: String,
        /// Policy document (TOML). Replaces the flags below.
        #[arg(long, short, conflicts_with_all = ["max_per_payment", "networks", "assets", "max_validity"])]
        file: Option<PathBuf>,
        /// Largest single payment, e.g. 0.25, "$0.25" or "0.25 USDC" (the unit must be USD or a
        /// registered asset's symbol).
        #[arg(long, required_unless_present = "file", allow_negative_numbers = true)]
        max_per_payment: Option<String>,
        /// Allowed networks, comma-separated CAIP-2 ids (eip155:8453). Default: every network in the registry.
        #[arg(long, value_delimiter = ',')]
        networks: Vec<String>,
        /// Allowed token addresses, comma-separated. Default: every asset in the registry.
        #[arg(long, value_delimiter = ',')]
        assets: Vec<String>,
        /// Longest validity of a signed authorization (e.g. 60s, 5m). Default 5m, at most 1h.
        #[arg(long)]
        max_validity: Option<String>,
    },
    /// Print a wallet's policy document (valid TOML: `policy show > policy.toml` to edit it).
    Show {
        /// Wallet id.
        #[arg(long, value_parser = crate::wallet_id)]
        wallet: String,
    },
    /// Check a policy document without sending it (exit code 2 with line and reason if bad).
    ///
    /// Also warns (on stderr, exit code still 0) about a valid document that denies every
    /// payment (no rule, or only deny rules) or has a rule that can never match (a network
    /// with no registered asset, an asset not in the registry). The registry is the enclave's
    /// (asked through the gateway); when the gateway cannot be reached, or with --offline,
    /// the built-in registry is used and the output says so.
    Check {
        /// Policy document (TOML).
        file: PathBuf,
        /// Fail (exit code 2) on warnings too.
        #[arg(long)]
        strict: bool,
        /// Do not ask the gateway: check against the built-in asset registry.
        #[arg(long)]
        offline: bool,
    },
}

pub(crate) fn print_policy(p: &gw::Policy) {
    println!("# wallet {}, policy version {}", p.wallet_id, p.version);
    print!("{}", p.document);
    if !p.document.ends_with('\n') {
        println!();
    }
}

pub(crate) fn read_policy_file(path: &Path) -> Result<String, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail(2, format!("invalid: cannot read {}: {e}", path.display())))?;
    wallet_policy::document::Policy::parse(&text)
        .map_err(|e| Fail(2, format!("invalid: {}: {e}", path.display())))?;
    Ok(text)
}

/// The asset registry a `policy check` compares against: the enclave's, or the built-in one
/// (offline, or when the gateway does not answer), with words saying which.
async fn check_registry(url: &str, offline: bool) -> (Vec<AssetInfo>, String) {
    if !offline {
        let ask = async {
            let mut cl = client(url).await?;
            registry(&mut cl).await
        };
        let asked = tokio::time::timeout(std::time::Duration::from_secs(5), ask)
            .await
            .unwrap_or_else(|_| Err(Fail(1, "no answer within 5 s".into())));
        match asked {
            Ok(assets) => return (assets, format!("the enclave's asset registry at {url}")),
            Err(Fail(_, why)) => {
                eprintln!("note: the gateway did not answer ({why}): checking against the built-in asset registry");
            }
        }
    }
    (default_assets(), "the built-in asset registry (offline: assets added with `walletctl asset add` are not known)".to_owned())
}

/// Runs one `walletctl policy` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: PolicyCmd) -> Out {
    if let PolicyCmd::Check { file, strict, offline } = &c {
        let text = read_policy_file(file)?;
        let p = Policy::parse(&text).map_err(|e| Fail(2, e.to_string()))?;
        let (assets, source) = check_registry(url, *offline).await;
        println!(
            "{}: ok ({} rules, {} wallet budgets, {} session budgets, approval {})",
            file.display(),
            p.rules.len(),
            p.wallet.budgets.len(),
            p.session.budgets.len(),
            if p.approval.above.is_some() || p.approval.first_time_payee { "on" } else { "off" }
        );
        let warnings = p.warnings(&assets);
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        if !warnings.is_empty() || *offline {
            eprintln!("(assets checked against {source})");
        }
        if *strict && !warnings.is_empty() {
            return Err(Fail(2, format!("invalid: {} warnings (--strict)", warnings.len())));
        }
        return Ok(());
    }
    let mut cl = client(url).await?;
    match c {
        PolicyCmd::Set { wallet, file, max_per_payment, networks, assets, max_validity } => {
            let document = file.as_deref().map(read_policy_file).transpose()?.unwrap_or_default();
            let max_validity_seconds = max_validity
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| Fail(2, e))?
                .unwrap_or(0);
            let max_per_payment = match max_per_payment {
                Some(m) => amount_flag(&mut cl, "--max-per-payment", &m).await?,
                None => String::new(),
            };
            let p = gw::Policy {
                wallet_id: wallet,
                version: 0,
                max_per_payment,
                networks,
                assets,
                max_validity_seconds,
                document,
            };
            let p = cl
                .set_policy(signed(
                    home,
                    AdminRpc::SetPolicy,
                    gw::SetPolicyRequest { policy: Some(p), auth: None },
                )?)
                .await?;
            eprintln!("policy version {} set for wallet {}", p.version, p.wallet_id);
            // The enclave took it; say what it will not do as its author may think.
            if let (Ok(doc), Ok(assets)) = (Policy::parse(&p.document), registry(&mut cl).await) {
                for w in doc.warnings(&assets) {
                    eprintln!("warning: {w}");
                }
            }
            print_policy(&p);
        }
        PolicyCmd::Show { wallet } => {
            print_policy(&cl.get_policy(gw::GetPolicyRequest { wallet_id: wallet }).await?)
        }
        PolicyCmd::Check { .. } => unreachable!("handled above"),
    }
    Ok(())
}
