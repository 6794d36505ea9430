//! `walletctl approvals`: list, approve and deny payments held for a human.

use std::path::Path;

use clap::Subcommand;
use wallet_client::AdminRpc;
use wallet_proto::gateway::v1 as gw;

use crate::{admin::signed, client, output::minutes_seconds_until, Out};

/// The `walletctl approvals` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCmd {
    /// Payments waiting for a decision (all holds, decided or not, with --all).
    List {
        /// Only this wallet's holds.
        #[arg(long, default_value = "")]
        wallet: String,
        /// Include approved, denied, used and expired holds.
        #[arg(long)]
        all: bool,
    },
    /// Approve a held payment: the agent gets the signature when it retries with the same
    /// idempotency key (every limit still applies then).
    Approve {
        /// Hold id (ap_...).
        id: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Deny a held payment: the agent's retry is refused with APPROVAL_DENIED.
    Deny {
        /// Hold id (ap_...).
        id: String,
        /// Why, for the audit log and the agent.
        #[arg(long, default_value = "")]
        note: String,
    },
}

pub(crate) fn print_approval(a: &gw::Approval) {
    let left = minutes_seconds_until(a.expires_at_ms);
    println!(
        "{}  {:<8} {} {} to {} on {}  session {}  ({}){}{}",
        a.approval_id,
        a.state,
        a.amount,
        a.asset_symbol,
        a.pay_to,
        a.network,
        a.session_id,
        a.reason,
        match a.state.as_str() {
            "pending" => format!("  expires in {left}"),
            "approved" => format!("  agent must retry within {left}"),
            _ => String::new(),
        },
        if a.note.is_empty() { String::new() } else { format!("  note: {}", a.note) }
    );
}

/// Runs one `walletctl approvals` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: ApprovalsCmd) -> Out {
    let mut cl = client(url).await?;
    let (id, approve, note) = match c {
        ApprovalsCmd::List { wallet, all } => {
            let l = cl.list_approvals(gw::ListApprovalsRequest { wallet_id: wallet, all }).await?;
            if l.approvals.is_empty() {
                println!("{}", if all { "no holds" } else { "no payments waiting for approval" });
            }
            for a in &l.approvals {
                print_approval(a);
            }
            return Ok(());
        }
        ApprovalsCmd::Approve { id, note } => (id, true, note),
        ApprovalsCmd::Deny { id, note } => (id, false, note),
    };
    let a = cl
        .decide_approval(signed(
            home,
            AdminRpc::DecideApproval,
            gw::DecideApprovalRequest { approval_id: id, approve, note, auth: None },
        )?)
        .await?;
    print_approval(&a);
    Ok(())
}
