//! `walletctl approvals`: list, approve and deny payments held for a human.

use std::path::Path;

use clap::{Args, Subcommand};
use wallet_client::{AdminRpc, GatewayClient};
use wallet_proto::gateway::v1 as gw;

use crate::{
    admin::signed,
    client,
    output::{minutes_seconds_until, print_json, Format},
    Fail, Out,
};

/// The `walletctl approvals` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCmd {
    /// Payments waiting for a decision (all holds, decided or not, with --all), with the
    /// session and the idempotency key each was asked with.
    List {
        /// Only this wallet's holds.
        #[arg(long, value_parser = crate::wallet_id)]
        wallet: Option<String>,
        /// Only this session's holds.
        #[arg(long, value_parser = crate::session_id)]
        session: Option<String>,
        /// Only holds asked with this idempotency key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Include approved, denied, used and expired holds.
        #[arg(long)]
        all: bool,
        /// text: for people; json: the raw fields (times in Unix milliseconds).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Approve a held payment: the agent gets the signature when it retries with the same
    /// idempotency key (every limit still applies then).
    ///
    /// Name the hold by its id, or by the agent's session and idempotency key (the pending
    /// hold they match; more than one is refused).
    #[command(
        after_help = "Examples:\n  walletctl approvals approve ap_3f9c0e1d2b4a5968 --note \"invoice 42\"\n  walletctl approvals approve --session s_.. --idempotency-key order-1"
    )]
    Approve(DecideArgs),
    /// Deny a held payment: the agent's retry is refused with APPROVAL_DENIED. The hold is
    /// named as for `approve`.
    Deny(DecideArgs),
}

/// Which hold to decide, and why.
#[derive(Debug, Args)]
pub(crate) struct DecideArgs {
    /// Hold id (ap_...), as `walletctl approvals list` shows it.
    #[arg(required_unless_present_any = ["session", "idempotency_key"], conflicts_with_all = ["session", "idempotency_key"])]
    id: Option<String>,
    /// The pending hold of this session (with --idempotency-key: of that request).
    #[arg(long)]
    session: Option<String>,
    /// The pending hold asked with this idempotency key (`walletctl pay` prints it).
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Why, for the audit log (and, when denying, for the agent).
    #[arg(long, default_value = "")]
    note: String,
}

pub(crate) fn print_approval(a: &gw::Approval) {
    let left = minutes_seconds_until(a.expires_at_ms);
    println!(
        "{}  {:<8} {} {} to {} on {}  session {}  key {}  ({}){}{}",
        a.approval_id,
        a.state,
        a.amount,
        a.asset_symbol,
        a.pay_to,
        a.network,
        a.session_id,
        if a.idempotency_key.is_empty() { "-" } else { &a.idempotency_key },
        a.reason,
        match a.state.as_str() {
            "pending" => format!("  expires in {left}"),
            "approved" => format!("  agent must retry within {left}"),
            _ => String::new(),
        },
        if a.note.is_empty() { String::new() } else { format!("  note: {}", a.note) }
    );
}

/// A hold for `--output json`: the raw fields.
fn approval_json(a: &gw::Approval) -> serde_json::Value {
    serde_json::json!({
        "approval_id": a.approval_id,
        "state": a.state,
        "wallet_id": a.wallet_id,
        "session_id": a.session_id,
        "idempotency_key": a.idempotency_key,
        "network": a.network,
        "asset": a.asset,
        "asset_symbol": a.asset_symbol,
        "pay_to": a.pay_to,
        "amount": a.amount,
        "reason": a.reason,
        "created_at_ms": a.created_at_ms,
        "expires_at_ms": a.expires_at_ms,
        "decided_by": a.decided_by,
        "note": a.note,
    })
}

/// Whether `a` is one of the holds `session` and `key` select (unset: any).
fn selected(a: &gw::Approval, session: Option<&str>, key: Option<&str>) -> bool {
    session.is_none_or(|s| a.session_id == s) && key.is_none_or(|k| a.idempotency_key == k)
}

/// Refuses an empty or malformed hold id before asking the enclave (`approve ""` or the word
/// `no` from "no payments waiting" got `no hold "no"`).
fn check_hold_id(id: &str) -> Result<(), Fail> {
    if id.trim().is_empty() {
        return Err(Fail(2, "invalid: the hold id is empty (was it taken from a listing with nothing pending?); list holds with: walletctl approvals list, or name the hold with --session and --idempotency-key".into()));
    }
    if !id.starts_with("ap_") {
        return Err(Fail(
            2,
            format!("invalid: {id:?} is not a hold id (ap_...); list holds with: walletctl approvals list"),
        ));
    }
    Ok(())
}

/// The one pending hold `session` and `key` select.
async fn select_hold(
    cl: &mut GatewayClient,
    session: Option<&str>,
    key: Option<&str>,
) -> Result<String, Fail> {
    for (flag, v) in [("--session", session), ("--idempotency-key", key)] {
        if v.is_some_and(|v| v.trim().is_empty()) {
            return Err(Fail(2, format!("invalid: {flag} is empty (was the variable holding it set by a command that failed?)")));
        }
    }
    let what = match (session, key) {
        (Some(s), Some(k)) => format!("session {s} with idempotency key {k}"),
        (Some(s), None) => format!("session {s}"),
        (None, Some(k)) => format!("idempotency key {k}"),
        (None, None) => unreachable!("clap requires an id, --session or --idempotency-key"),
    };
    let pending = cl
        .list_approvals(gw::ListApprovalsRequest { wallet_id: String::new(), all: false })
        .await?
        .approvals;
    let matching: Vec<&gw::Approval> =
        pending.iter().filter(|a| selected(a, session, key)).collect();
    match matching.as_slice() {
        [one] => Ok(one.approval_id.clone()),
        [] => Err(Fail(
            1,
            format!("not found: no pending hold for {what} (walletctl approvals list --all shows decided and expired ones)"),
        )),
        many => Err(Fail(
            2,
            format!(
                "invalid: {} pending holds match {what} ({}); name one by its id, or add --idempotency-key",
                many.len(),
                many.iter().map(|a| a.approval_id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Runs one `walletctl approvals` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: ApprovalsCmd) -> Out {
    let (args, approve) = match c {
        ApprovalsCmd::List { wallet, session, idempotency_key, all, output } => {
            let mut cl = client(url).await?;
            let l = cl
                .list_approvals(gw::ListApprovalsRequest {
                    wallet_id: wallet.unwrap_or_default(),
                    all,
                })
                .await?;
            let shown: Vec<&gw::Approval> = l
                .approvals
                .iter()
                .filter(|a| selected(a, session.as_deref(), idempotency_key.as_deref()))
                .collect();
            let none = if all { "no holds" } else { "no payments waiting for approval" };
            if output == Format::Json {
                print_json(&serde_json::Value::Array(
                    shown.iter().map(|a| approval_json(a)).collect(),
                ));
                if shown.is_empty() {
                    eprintln!("{none}");
                }
                return Ok(());
            }
            if shown.is_empty() {
                println!("{none}");
            }
            for a in shown {
                print_approval(a);
            }
            return Ok(());
        }
        ApprovalsCmd::Approve(a) => (a, true),
        ApprovalsCmd::Deny(a) => (a, false),
    };
    if let Some(id) = &args.id {
        check_hold_id(id)?;
    }
    let mut cl = client(url).await?;
    let id = match args.id {
        Some(id) => id,
        None => {
            select_hold(&mut cl, args.session.as_deref(), args.idempotency_key.as_deref()).await?
        }
    };
    let a = cl
        .decide_approval(signed(
            home,
            AdminRpc::DecideApproval,
            gw::DecideApprovalRequest { approval_id: id, approve, note: args.note, auth: None },
        )?)
        .await?;
    print_approval(&a);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_ids_are_checked_before_asking() {
        assert!(check_hold_id("ap_0123456789abcdef").is_ok());
        let Fail(code, msg) = check_hold_id("").unwrap_err();
        assert_eq!(code, 2);
        assert!(msg.contains("hold id is empty"), "{msg}");
        let Fail(code, msg) = check_hold_id("no").unwrap_err();
        assert_eq!(code, 2);
        assert!(msg.contains("\"no\" is not a hold id"), "{msg}");
    }

    #[test]
    fn holds_are_selected_by_session_and_key() {
        let a = gw::Approval {
            session_id: "s_1".into(),
            idempotency_key: "order-1".into(),
            ..Default::default()
        };
        assert!(selected(&a, Some("s_1"), Some("order-1")));
        assert!(selected(&a, Some("s_1"), None));
        assert!(selected(&a, None, Some("order-1")));
        assert!(!selected(&a, Some("s_2"), Some("order-1")));
        assert!(!selected(&a, Some("s_1"), Some("order-2")));
    }
}
