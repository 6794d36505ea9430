//! `walletctl session`: issue (key pair made here, credential file written), list, revoke.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use wallet_client::{new_session_key, AdminRpc, Credential};
use wallet_policy::document::parse_duration;
use wallet_proto::gateway::v1 as gw;

use crate::{
    admin::signed,
    asset::amount_flag,
    client,
    output::{at_secs, print_json, when, Format},
    Fail, Out,
};

/// The `walletctl session` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SessionCmd {
    /// Issue a session: makes its key pair here, registers the public key and scope with the
    /// enclave, and writes the agent's credential file (0600).
    Issue(IssueArgs),
    /// List sessions with what they have spent.
    List {
        /// Only this wallet's sessions.
        #[arg(long, value_parser = crate::wallet_id)]
        wallet: Option<String>,
        /// text: times in RFC 3339; json: the raw fields (Unix seconds).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Revoke a session: no signature is released for it once this returns (in a group of
    /// enclaves: by this member; the others stop within a grant's lease, 5 s).
    Revoke {
        /// Session id (s_...).
        session: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// Wallet id.
    #[arg(long, value_parser = crate::wallet_id)]
    wallet: String,
    /// Most the session may spend in total: 5, "$5" or "5 USDC" (the unit must be USD or a
    /// registered asset's symbol).
    #[arg(long, allow_negative_numbers = true)]
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
    /// Replace the credential file at --out if it exists (it must be a walletctl session
    /// credential; it is replaced in one step, and the session it held is named so it can be
    /// revoked). Without it an existing file is never overwritten.
    #[arg(long, requires = "out")]
    force: bool,
}

/// Refuses an empty or malformed session id before asking the enclave (an empty `$SESSION`
/// from a failed command gave `session "" does not exist`).
pub(crate) fn check_session_id(id: &str) -> Result<(), Fail> {
    if id.trim().is_empty() {
        return Err(Fail(
            2,
            "invalid: the session id is empty (was the variable holding it set by a command that failed?); list sessions with: walletctl session list".into(),
        ));
    }
    if !id.starts_with("s_") {
        return Err(Fail(
            2,
            format!("invalid: {id:?} is not a session id (s_...); list sessions with: walletctl session list"),
        ));
    }
    Ok(())
}

/// What is at `--out` before a session is issued: nothing, or (with --force) an existing
/// credential, whose session id is returned. Anything else is refused before the enclave is
/// asked, so no session is issued without a place for its credential.
fn check_out(out: &Path, force: bool) -> Result<Option<String>, Fail> {
    if !out.exists() {
        return Ok(None);
    }
    if !force {
        return Err(Fail(
            2,
            format!(
                "{} already exists; credentials are never overwritten without --force (which replaces an existing credential file), or choose another --out",
                out.display()
            ),
        ));
    }
    match Credential::read(out) {
        Ok(old) => Ok(Some(old.session_id.clone())),
        Err(e) => Err(Fail(
            2,
            format!("{} exists and is not a readable walletctl session credential ({e}); --force only replaces credential files: not replaced", out.display()),
        )),
    }
}

/// Writes `cred` to `path`: 0600, never partly written; with `replace`, the existing file is
/// swapped for the new one in one step (written beside it, then renamed over it).
fn write_credential(cred: &Credential, path: &Path, replace: bool) -> std::io::Result<()> {
    if !replace {
        return cred.write(path);
    }
    let name = path.file_name().map_or_else(|| "credential".into(), |n| n.to_string_lossy());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    cred.write(&tmp)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Runs one `walletctl session` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: SessionCmd) -> Out {
    if let SessionCmd::Revoke { session } = &c {
        check_session_id(session)?;
    }
    let mut cl = client(url).await?;
    match c {
        SessionCmd::Issue(a) => {
            let ttl_seconds = parse_duration(&a.ttl).map_err(|e| Fail(2, e))?;
            let cap = amount_flag(&mut cl, "--cap", &a.cap).await?;
            let replaced = match a.out.as_deref() {
                Some(out) => check_out(out, a.force)?,
                None => None,
            };
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
                    cap,
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
            write_credential(&cred, &path, replaced.is_some()).map_err(|e| Fail(1, format!("session {} was issued but its credential could not be written to {}: {e}; revoke it with: walletctl session revoke {}", s.session_id, path.display(), s.session_id)))?;
            println!(
                "session {}  wallet {}  cap {}  expires {}",
                s.session_id,
                s.wallet_id,
                s.cap,
                when(s.expires_at)
            );
            if let Some(old) = replaced {
                eprintln!(
                    "replaced {}: it held session {old}; if nothing uses that session any more, revoke it: walletctl session revoke {old}",
                    path.display()
                );
            }
            println!("credential written to {} (0600). Give it to the agent:", path.display());
            println!("  export WALLET_SESSION={}", path.display());
        }
        SessionCmd::List { wallet, output } => {
            let l = cl
                .list_sessions(gw::ListSessionsRequest { wallet_id: wallet.unwrap_or_default() })
                .await?;
            if output == Format::Json {
                print_json(&serde_json::Value::Array(
                    l.sessions.iter().map(session_json).collect(),
                ));
                if l.sessions.is_empty() {
                    eprintln!("no sessions");
                }
                return Ok(());
            }
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
                    "{}  wallet {}  spent {} of {}  issued {}  {}  {}",
                    s.session_id,
                    s.wallet_id,
                    s.spent,
                    s.cap,
                    at_secs(s.created_at),
                    state,
                    s.label
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

/// A session for `--output json`: the raw fields (times in Unix seconds).
fn session_json(s: &gw::Session) -> serde_json::Value {
    serde_json::json!({
        "session_id": s.session_id,
        "wallet_id": s.wallet_id,
        "public_key": hex::encode(&s.public_key),
        "cap": s.cap,
        "spent": s.spent,
        "created_at": s.created_at,
        "expires_at": s.expires_at,
        "revoked": s.revoked,
        "networks": s.networks,
        "assets": s.assets,
        "payees": s.payees,
        "label": s.label,
    })
}
