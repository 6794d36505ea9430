//! `walletctl session`: issue (key pair made here, credential file written), list, revoke.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use wallet_client::{new_session_key, AdminRpc, Credential};
use wallet_policy::document::parse_duration;
use wallet_proto::gateway::v1 as gw;

use crate::{admin::signed, client, output::when, Fail, Out};

/// The `walletctl session` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SessionCmd {
    /// Issue a session: makes its key pair here, registers the public key and scope with the
    /// enclave, and writes the agent's credential file (0600).
    Issue(IssueArgs),
    /// List sessions with what they have spent.
    List {
        /// Only this wallet's sessions.
        #[arg(long, default_value = "")]
        wallet: String,
    },
    /// Revoke a session: no signature is released for it once this returns.
    Revoke {
        /// Session id.
        session: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// Wallet id.
    #[arg(long)]
    wallet: String,
    /// Most the session may spend in total, e.g. 5 or "$5".
    #[arg(long)]
    cap: String,
    /// Lifetime, e.g. 1h, 24h, 7d.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// Narrow to these networks (comma-separated).
    #[arg(long, value_delimiter = ',')]
    networks: Vec<String>,
    /// Narrow to these token addresses (comma-separated).
    #[arg(long, value_delimiter = ',')]
    assets: Vec<String>,
    /// Only pay these addresses (comma-separated).
    #[arg(long, value_delimiter = ',')]
    payees: Vec<String>,
    /// A name for people.
    #[arg(long, default_value = "")]
    label: String,
    /// Where to write the credential [default: HOME/sessions/SESSION_ID.json].
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// Runs one `walletctl session` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: SessionCmd) -> Out {
    let mut cl = client(url).await?;
    match c {
        SessionCmd::Issue(a) => {
            let ttl_seconds = parse_duration(&a.ttl).map_err(|e| Fail(2, e))?;
            if let Some(out) = a.out.as_ref().filter(|p| p.exists()) {
                return Err(Fail(
                    2,
                    format!("{} already exists; credentials are never overwritten", out.display()),
                ));
            }
            let wallets = cl.list_wallets(gw::ListWalletsRequest {}).await?.wallets;
            let address = wallets
                .iter()
                .find(|w| w.wallet_id == a.wallet)
                .map(|w| w.address.clone())
                .unwrap_or_default();
            let key = new_session_key();
            let req = signed(
                home,
                AdminRpc::IssueSession,
                gw::IssueSessionRequest {
                    wallet_id: a.wallet,
                    public_key: key.verifying_key().to_bytes().to_vec(),
                    cap: a.cap,
                    ttl_seconds,
                    networks: a.networks,
                    assets: a.assets,
                    payees: a.payees,
                    label: a.label,
                    auth: None,
                },
            )?;
            let s = cl.issue_session(req).await?;
            let path = a
                .out
                .unwrap_or_else(|| home.join("sessions").join(format!("{}.json", s.session_id)));
            let cred = Credential::new(
                s.session_id.clone(),
                s.wallet_id.clone(),
                address,
                url.to_owned(),
                s.expires_at,
                key,
            )
            .with_enclave_id(&crate::pinned_identity().unwrap_or_default());
            cred.write(&path).map_err(|e| Fail(1, format!("session {} was issued but its credential could not be written to {}: {e}; revoke it with: walletctl session revoke {}", s.session_id, path.display(), s.session_id)))?;
            println!(
                "session {}  wallet {}  cap {}  expires {}",
                s.session_id,
                s.wallet_id,
                s.cap,
                when(s.expires_at)
            );
            println!("credential written to {} (0600). Give it to the agent:", path.display());
            println!("  export WALLET_SESSION={}", path.display());
        }
        SessionCmd::List { wallet } => {
            let l = cl.list_sessions(gw::ListSessionsRequest { wallet_id: wallet }).await?;
            if l.sessions.is_empty() {
                println!("no sessions");
            }
            for s in l.sessions {
                let state = if s.revoked {
                    "REVOKED".to_owned()
                } else {
                    format!("expires {}", when(s.expires_at))
                };
                println!(
                    "{}  wallet {}  spent {} of {}  {}  {}",
                    s.session_id, s.wallet_id, s.spent, s.cap, state, s.label
                );
            }
        }
        SessionCmd::Revoke { session } => {
            let s = cl
                .revoke_session(signed(
                    home,
                    AdminRpc::RevokeSession,
                    gw::RevokeSessionRequest { session_id: session, auth: None },
                )?)
                .await?;
            println!("session {} revoked (spent {} of {})", s.session_id, s.spent, s.cap);
        }
    }
    Ok(())
}
