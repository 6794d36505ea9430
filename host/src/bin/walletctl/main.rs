//! `walletctl`: the one CLI for admins and agents, one module per command group. It talks to
//! the gateway through `wallet-client` (keys, request signing, typed errors); this file holds
//! the command line, the exit codes and the dispatch.

mod admin;
mod anchor;
mod approvals;
mod asset;
mod attest;
mod audit;
mod fetch;
mod kyt;
mod mcp;
mod output;
mod pay;
mod policy;
mod session;
mod setup;
mod wallet;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{parser::ValueSource, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use wallet_client::{default_home, util::normalize_gateway_url, ClientError, GatewayClient};

/// Admin and agent CLI of the agent wallet.
///
/// Admins create wallets, set policies and issue session credentials. Agents pay x402
/// `402 Payment Required` responses with `walletctl fetch` (a paying curl), `walletctl mcp`
/// (payment tools for MCP clients such as Claude Desktop and Cursor) or `walletctl pay` (one
/// header in, one out). Keys never leave the enclave.
///
/// Agent commands use the gateway recorded in the session credential unless --gateway or
/// WALLET_GATEWAY is given.
///
/// Amounts are written in token units: 0.25, "0.25 USDC" or $0.25.
#[derive(Debug, Parser)]
#[command(name = "walletctl", version, propagate_version = true)]
struct Cli {
    /// Gateway URL (HOST:PORT is read as http://HOST:PORT).
    #[arg(long, global = true, env = "WALLET_GATEWAY", default_value = "http://127.0.0.1:7402")]
    gateway: String,
    /// walletctl's own directory (config and issued credentials).
    #[arg(long, global = true, env = "WALLETCTL_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up walletctl: create the admin key (HOME/admin.key, 0600), verify the enclave's
    /// attestation document, pin its identity (HOME/audit.pub), and register the key as the
    /// enclave's first admin if it has none.
    ///
    /// The first contact trusts nothing the host says: the enclave's attestation document over a
    /// fresh nonce must verify to a built-in root, bind the identity key, and (Nitro) match what
    /// you expect: --expect-pcr0 HEX (PCR1, PCR2 optional) or --measurements FILE, from
    /// scripts/build-eif.sh or nitro-cli describe-eif, and --expect-kms-key ARN and
    /// --expect-service ID. Without them a Nitro enclave is refused; they are pinned in
    /// HOME/enclave.json. A simulated enclave's document is signed by the project's TEST root
    /// (only development builds accept it, with --simulated) and proves nothing.
    ///
    /// A new data directory is a new enclave with a new identity; `init` then refuses it (exit
    /// code 5) until you confirm it is one you started: `walletctl init --reset-identity`.
    Init(setup::InitArgs),
    /// Show the gateway and enclave status (simulated or Nitro, measurements, sealing).
    Status,
    /// Verify the enclave's attestation document over a fresh nonce and show what it proves:
    /// the PCRs (what runs), the identity key it binds, how state is sealed. Checks the PCRs
    /// against --expect-pcrN / --measurements, else those pinned by `walletctl init`, and the
    /// identity against the pinned one. Exit code 5 when anything does not verify or match.
    Attest(attest::AttestArgs),
    /// Create and list wallets.
    #[command(subcommand)]
    Wallet(wallet::WalletCmd),
    /// Set and show a wallet's policy.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Manage the asset registry (tokens the wallet may sign for).
    #[command(subcommand)]
    Asset(asset::AssetCmd),
    /// Manage the KYT denylist of payees.
    #[command(subcommand)]
    Kyt(kyt::KytCmd),
    /// Decide payments the policy held for a human's approval.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
    /// Issue, list and revoke agent sessions.
    #[command(subcommand)]
    Session(session::SessionCmd),
    /// Admin keys: every state change is signed by one, and verified in the enclave.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// The tamper-evident audit log of every decision.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// The rollback anchor (etcd): the enclave's head kept where the host cannot roll it back.
    #[command(subcommand)]
    Anchor(anchor::AnchorCmd),
    /// Agent: read what a 402 asked on stdin, print the payment header value to send back.
    ///
    /// x402 v2: the PAYMENT-REQUIRED value in, the PAYMENT-SIGNATURE value out. x402 v1: the
    /// 402's JSON body in, the X-PAYMENT value out (-v says which header). To fetch and pay in
    /// one step, use `walletctl fetch`.
    ///
    /// Example: curl -si URL | grep -i '^payment-required:' | walletctl pay --session agent.json
    ///
    /// Exit codes: 0 signed; 3 denied by policy (reason code on stderr); 2 bad input;
    /// 4 session not accepted; 6 held for a human's approval (retry with the idempotency key
    /// printed on stderr once `walletctl approvals approve` was run); 1 anything else.
    Pay(pay::PayArgs),
    /// Agent: a paying curl for x402 endpoints (v1 and v2), within the session's policy.
    Fetch(fetch::FetchArgs),
    /// Agent: an MCP server with the wallet's payment tools (stdio), or a paying proxy for a
    /// remote paid MCP server (--upstream).
    Mcp(mcp::McpArgs),
}

/// An id given on the command line, refused when empty: an empty `$WALLET` or `$SESSION` (left
/// by a command that failed) is named as such, not sent to the enclave as `""`.
fn non_empty(what: &str, list: &str, s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err(format!("the {what} id is empty (was the variable holding it set by a command that failed?); list them with: walletctl {list}"))
    } else {
        Ok(s.trim().to_owned())
    }
}

/// `--wallet` and the other wallet-id arguments ([`non_empty`]).
pub(crate) fn wallet_id(s: &str) -> Result<String, String> {
    non_empty("wallet", "wallet list", s)
}

/// `--session` and the other session-id arguments ([`non_empty`]).
pub(crate) fn session_id(s: &str) -> Result<String, String> {
    non_empty("session", "session list", s)
}

/// A failure with its exit code.
pub(crate) struct Fail(pub(crate) u8, pub(crate) String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        Fail(e.exit_code(), e.to_string())
    }
}

/// What a command returns.
pub(crate) type Out = Result<(), Fail>;

/// walletctl's home, for the enclave identity pinned there (`audit.pub`).
static HOME: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The enclave identity pinned in walletctl's home, if any (hex in `audit.pub`).
pub(crate) fn pinned_identity() -> Option<String> {
    let path = HOME.get()?.join("audit.pub");
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The gateway URL as given (`--gateway`, `WALLET_GATEWAY`, a credential), normalised:
/// `HOST:PORT` becomes `http://HOST:PORT`; what cannot be a gateway URL is refused (exit 2)
/// with the reason, instead of a failed connection.
pub(crate) fn gateway_url(url: &str) -> Result<String, Fail> {
    normalize_gateway_url(url)
        .map_err(|e| Fail(2, format!("invalid: --gateway (or WALLET_GATEWAY): {e}")))
}

/// A gateway client that checks nothing (first contact, and identity probes).
pub(crate) async fn unpinned_client(url: &str) -> Result<GatewayClient, Fail> {
    Ok(GatewayClient::connect(&gateway_url(url)?).await?)
}

/// A gateway client that checks every answer against the pinned enclave identity (when one is
/// pinned: before `walletctl init`, the first contact, there is none).
pub(crate) async fn client(url: &str) -> Result<GatewayClient, Fail> {
    let cl = unpinned_client(url).await?;
    match pinned_identity() {
        Some(id) => with_identity(cl, &id),
        None => Ok(cl),
    }
}

/// `cl`, checking answers against the hex identity `id`.
pub(crate) fn with_identity(cl: GatewayClient, id: &str) -> Result<GatewayClient, Fail> {
    let key = hex::decode(id)
        .map_err(|_| Fail(5, format!("the pinned enclave identity {id:?} is not hex")))?;
    Ok(cl.with_identity(&key)?)
}

/// Whether `--gateway` or `WALLET_GATEWAY` was given (rather than the default).
static GATEWAY_GIVEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// The gateway an agent command (`pay`, `fetch`, `mcp`) talks to: `--gateway` or
/// `WALLET_GATEWAY` when given (even when equal to the default), else the one recorded in the
/// session credential, else the default.
pub(crate) fn agent_gateway(
    flag_or_default: &str,
    credential_gateway: &str,
) -> Result<String, Fail> {
    if GATEWAY_GIVEN.get().copied().unwrap_or(false) || credential_gateway.is_empty() {
        gateway_url(flag_or_default)
    } else {
        gateway_url(credential_gateway)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let _ = GATEWAY_GIVEN.set(matches!(
        matches.value_source("gateway"),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    ));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let home = cli.home.clone().unwrap_or_else(default_home);
    let _ = HOME.set(home.clone());
    let url = gateway_url(&cli.gateway).unwrap_or_else(|_| cli.gateway.clone());
    let init = matches!(cli.command, Command::Init(_));
    match run(cli, &home).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            // An answer that does not verify, or an admin signature refused: when the enclave
            // now presents another identity than the pinned one, say that, and what to do.
            let msg = match code {
                4 | 5 if !init => identity_change(&url, &home).await.unwrap_or(msg),
                _ => msg,
            };
            eprintln!("walletctl: {msg}");
            ExitCode::from(code)
        }
    }
}

/// When an identity is pinned and the enclave at `url` presents another one (proven by its
/// signature over a fresh challenge): the explanation of [`setup::identity_changed`].
async fn identity_change(url: &str, home: &Path) -> Option<String> {
    let pinned = pinned_identity()?;
    let presented = audit::presented_identity(url).await.ok()?;
    (presented != pinned).then(|| setup::identity_changed(url, home, &pinned, &presented))
}

async fn run(mut cli: Cli, home: &Path) -> Out {
    cli.gateway = gateway_url(&cli.gateway)?;
    let home = home.to_path_buf();
    match cli.command {
        Command::Init(a) => setup::init(&cli.gateway, &home, &a).await,
        Command::Status => setup::status(&cli.gateway, &home).await,
        Command::Attest(a) => attest::run(&cli.gateway, &home, &a).await,
        Command::Wallet(c) => wallet::run(&cli.gateway, &home, c).await,
        Command::Policy(c) => policy::run(&cli.gateway, &home, c).await,
        Command::Asset(c) => asset::run(&cli.gateway, &home, c).await,
        Command::Kyt(c) => kyt::run(&cli.gateway, &home, c).await,
        Command::Approvals(c) => approvals::run(&cli.gateway, &home, c).await,
        Command::Admin(c) => admin::run(&cli.gateway, &home, c).await,
        Command::Audit(c) => audit::run(&cli.gateway, &home, c).await,
        Command::Anchor(c) => anchor::run(&cli.gateway, &home, c).await,
        Command::Session(c) => session::run(&cli.gateway, &home, c).await,
        Command::Pay(a) => pay::run(&cli.gateway, a).await,
        Command::Fetch(a) => fetch::run(&cli.gateway, a).await,
        Command::Mcp(a) => mcp::run(&cli.gateway, a).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// `--version` named the package (`wallet-host`), not the program.
    #[test]
    fn the_program_is_named_walletctl() {
        let cmd = super::Cli::command();
        assert_eq!(cmd.get_name(), "walletctl");
        assert!(cmd.render_version().starts_with("walletctl "), "{}", cmd.render_version());
    }

    /// walletctl parses `--ttl` and `--max-validity` with the policy document's own parser.
    #[test]
    fn durations() {
        use wallet_policy::document::parse_duration;
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        for bad in ["", "h", "-1h", "1.5h", "0", "1w", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
