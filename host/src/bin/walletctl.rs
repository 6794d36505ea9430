//! `walletctl`: the one CLI for admins and agents.

use std::{
    io::Read as _,
    path::PathBuf,
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use clap::{Args, Parser, Subcommand};
use tonic::transport::Channel;
use wallet_host::cli::{
    clean_header_input, default_home, new_session_key, parse_duration, random_idempotency_key,
    AdminKey, Credential,
};
use wallet_policy::x402::MAX_HEADER_LEN;
use wallet_proto::{
    gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient},
    AdminSigned,
};

/// Admin and agent CLI of the agent wallet.
///
/// Admins create wallets, set policies and issue session credentials. Agents pay x402
/// `402 Payment Required` responses with `walletctl pay`. Keys never leave the enclave.
///
/// Amounts are written in token units: 0.25, "0.25 USDC" or $0.25.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Gateway URL.
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
    /// Set up walletctl: create the admin key (HOME/admin.key, 0600), check the gateway and
    /// enclave, and register the key as the enclave's first admin if it has none.
    Init,
    /// Show the gateway and enclave status (simulated or Nitro).
    Status,
    /// Create and list wallets.
    #[command(subcommand)]
    Wallet(WalletCmd),
    /// Set and show a wallet's policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Manage the asset registry (tokens the wallet may sign for).
    #[command(subcommand)]
    Asset(AssetCmd),
    /// Manage the KYT denylist of payees.
    #[command(subcommand)]
    Kyt(KytCmd),
    /// Decide payments the policy held for a human's approval.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// Issue, list and revoke agent sessions.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Admin keys: every state change is signed by one, and verified in the enclave.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// The tamper-evident audit log of every decision.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Agent: read a PAYMENT-REQUIRED value on stdin, print the PAYMENT-SIGNATURE value.
    ///
    /// Example: curl -si URL | grep -i '^payment-required:' | walletctl pay --session agent.json
    ///
    /// Exit codes: 0 signed; 3 denied by policy (reason code on stderr); 2 bad input;
    /// 4 session not accepted; 6 held for a human's approval (retry with the idempotency key
    /// printed on stderr once `walletctl approvals approve` was run); 1 anything else.
    Pay(PayArgs),
}

#[derive(Debug, Subcommand)]
enum WalletCmd {
    /// Create a wallet: the enclave generates its key, which never leaves it.
    Create {
        /// A name for people.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List wallets.
    List,
    /// Kill switch: no signature is released for the wallet once this returns.
    Freeze {
        /// Wallet id.
        wallet: String,
    },
    /// Lift a freeze.
    Unfreeze {
        /// Wallet id.
        wallet: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
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
        #[arg(long)]
        wallet: String,
        /// Policy document (TOML). Replaces the flags below.
        #[arg(long, short, conflicts_with_all = ["max_per_payment", "networks", "assets", "max_validity"])]
        file: Option<PathBuf>,
        /// Largest single payment, e.g. 0.25 or "$0.25".
        #[arg(long, required_unless_present = "file")]
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
        #[arg(long)]
        wallet: String,
    },
    /// Check a policy document without sending it (exit code 2 with line and reason if bad).
    Check {
        /// Policy document (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ApprovalsCmd {
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

#[derive(Debug, Subcommand)]
enum AssetCmd {
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

#[derive(Debug, Subcommand)]
enum KytCmd {
    /// Deny payments to these addresses (any letter case).
    Add {
        /// Addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Allow these addresses again.
    Remove {
        /// Addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// List denied addresses (every page).
    List,
    /// Load a denylist file: plain (one address per line, # comments), CSV (a column named
    /// address, or --column) or JSON (an array of addresses, as in the published lists of
    /// sanctioned digital-currency addresses, or of objects with an address field).
    ///
    /// Addresses are deduplicated; bad lines are reported with their line numbers and skipped
    /// (or refused, with --strict). The whole file is applied at once: payments see the old list
    /// or the new one, never part of it.
    Import {
        /// The file ("-" for stdin).
        file: PathBuf,
        /// Input format.
        #[arg(long, value_enum, default_value_t = wallet_host::kyt_import::Format::Auto)]
        format: wallet_host::kyt_import::Format,
        /// CSV/JSON field holding the address.
        #[arg(long)]
        column: Option<String>,
        /// Make the list exactly this file (remove addresses not in it).
        #[arg(long)]
        replace: bool,
        /// Refuse the whole file if any line is bad.
        #[arg(long)]
        strict: bool,
        /// Parse and report, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Show audit records, newest last.
    Show {
        /// Only this session.
        #[arg(long)]
        session: Option<String>,
        /// Only this wallet.
        #[arg(long)]
        wallet: Option<String>,
        /// Only this kind: payment, deny, withheld or admin.
        #[arg(long)]
        kind: Option<String>,
        /// How many of the newest matching records.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
    /// Check the whole chain, the enclave's signature on its head (key pinned at init), and that
    /// it still contains the head verified last time. Names the first bad record. Exit code 5 on
    /// any failure.
    Verify,
}

#[derive(Debug, Subcommand)]
enum AdminCmd {
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

#[derive(Debug, Subcommand)]
enum SessionCmd {
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
struct IssueArgs {
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

#[derive(Debug, Args)]
struct PayArgs {
    /// Session credential file.
    #[arg(long, env = "WALLET_SESSION")]
    session: PathBuf,
    /// Reuse on retries: the same key and header return the same signature, charged once.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Prefer this network among the server's options.
    #[arg(long, default_value = "")]
    network: String,
    /// Prefer this token address among the server's options.
    #[arg(long, default_value = "")]
    asset: String,
    /// Also print what was paid (to stderr).
    #[arg(long, short)]
    verbose: bool,
}

/// A failure with its exit code.
struct Fail(u8, String);

impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Self {
        let code = match s.code() {
            tonic::Code::PermissionDenied => 3,
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => 2,
            tonic::Code::Unauthenticated => 4,
            _ => 1,
        };
        let what = match s.code() {
            tonic::Code::PermissionDenied => "denied",
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::Unauthenticated => "not authenticated",
            tonic::Code::NotFound => "not found",
            tonic::Code::InvalidArgument => "invalid",
            _ => "error",
        };
        Fail(code, format!("{what}: {}", s.message()))
    }
}

type Out = Result<(), Fail>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn client(url: &str) -> Result<WalletGatewayClient<Channel>, Fail> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| Fail(2, format!("bad gateway URL {url:?}: {e}")))?;
    let channel = endpoint.connect().await.map_err(|e| Fail(1, format!("unavailable: cannot reach the gateway at {url} ({e}); is the stack running? (scripts/dev-up.sh)")))?;
    Ok(WalletGatewayClient::new(channel).max_decoding_message_size(4 << 20))
}

fn when(unix: u64) -> String {
    let now = now_ms() / 1000;
    if unix <= now {
        format!("{unix} (past)")
    } else {
        let d = unix - now;
        format!("{unix} (in {}h{:02}m)", d / 3600, (d % 3600) / 60)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("walletctl: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Out {
    let home = cli.home.clone().unwrap_or_else(default_home);
    match cli.command {
        Command::Init => init(&cli.gateway, &home).await,
        Command::Status => status(&cli.gateway).await,
        Command::Wallet(c) => wallet(&cli.gateway, &home, c).await,
        Command::Policy(c) => policy(&cli.gateway, &home, c).await,
        Command::Asset(c) => asset(&cli.gateway, &home, c).await,
        Command::Kyt(c) => kyt(&cli.gateway, &home, c).await,
        Command::Approvals(c) => approvals(&cli.gateway, &home, c).await,
        Command::Admin(c) => admin(&cli.gateway, &home, c).await,
        Command::Audit(c) => audit(&cli.gateway, &home, c).await,
        Command::Session(c) => session(&cli.gateway, &home, c).await,
        Command::Pay(a) => pay(&cli.gateway, a).await,
    }
}

/// Every audit record, in order (paged).
async fn audit_records(cl: &mut WalletGatewayClient<Channel>) -> Result<Vec<String>, Fail> {
    let mut all = Vec::new();
    loop {
        let page = cl
            .list_audit(gw::ListAuditRequest { from_seq: all.len() as u64, limit: 1000 })
            .await?
            .into_inner();
        let n = page.records.len();
        all.extend(page.records);
        if n == 0 || all.len() as u64 >= page.total {
            return Ok(all);
        }
        if all.len() > 50_000_000 {
            return Err(Fail(5, "the audit log is larger than walletctl will read".into()));
        }
    }
}

/// Pins the enclave's audit key in `HOME/audit.pub` on first use; afterwards checks it.
fn pin_audit_key(home: &std::path::Path, key: &[u8]) -> Result<(), Fail> {
    let path = home.join("audit.pub");
    match std::fs::read_to_string(&path) {
        Ok(pinned) if pinned.trim() == hex::encode(key) => Ok(()),
        Ok(pinned) => Err(Fail(5, format!("the enclave's audit key changed (pinned {} in {}, now {}): a different enclave or its state was replaced", pinned.trim(), path.display(), hex::encode(key)))),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Fail(1, format!("cannot read {}: {e}", path.display()))),
        Err(_) => {
            std::fs::write(&path, format!("{}\n", hex::encode(key))).map_err(|e| Fail(1, format!("cannot write {}: {e}", path.display())))?;
            println!("pinned the enclave's audit key {} in {} (trust on first use)", hex::encode(key), path.display());
            Ok(())
        }
    }
}

async fn audit(url: &str, home: &std::path::Path, c: AuditCmd) -> Out {
    let mut cl = client(url).await?;
    match c {
        AuditCmd::Show { session, wallet, kind, last } => {
            let records = audit_records(&mut cl).await?;
            let matching: Vec<wallet_policy::audit::Record> = records
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|r: &wallet_policy::audit::Record| {
                    session.as_ref().is_none_or(|s| &r.session == s)
                        && wallet.as_ref().is_none_or(|w| &r.wallet == w)
                        && kind.as_ref().is_none_or(|k| &r.kind == k)
                })
                .collect();
            for r in &matching[matching.len().saturating_sub(last)..] {
                let mut who = String::new();
                if !r.wallet.is_empty() {
                    who.push_str(&format!(" wallet {}", r.wallet));
                }
                if !r.session.is_empty() {
                    who.push_str(&format!(" session {}", r.session));
                }
                println!("#{:<6} {} {:<8}{who} {} {}", r.seq, r.at_ms, r.kind, r.reason, r.detail);
            }
        }
        AuditCmd::Verify => {
            use ed25519_dalek::Verifier as _;
            let mut challenge = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut challenge);
            let head = cl
                .get_audit_head(gw::GetAuditHeadRequest { challenge: challenge.to_vec() })
                .await?
                .into_inner();
            pin_audit_key(home, &head.public_key)?;
            let hash: [u8; 32] = head
                .hash
                .as_slice()
                .try_into()
                .map_err(|_| Fail(5, "malformed audit head".into()))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(
                &head
                    .public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| Fail(5, "malformed audit key".into()))?,
            )
            .map_err(|_| Fail(5, "malformed audit key".into()))?;
            let sig = ed25519_dalek::Signature::from_slice(&head.signature)
                .map_err(|_| Fail(5, "malformed head signature".into()))?;
            key.verify(&wallet_policy::audit::head_message(head.count, &hash, &challenge), &sig).map_err(|_| Fail(5, "the audit head's signature does not verify with the pinned enclave key and this challenge".into()))?;
            let mut records = audit_records(&mut cl).await.map_err(|Fail(_, m)| Fail(5, m))?;
            // Payments may have been audited since the head was read: check up to the head.
            let n = usize::try_from(head.count).unwrap_or(usize::MAX);
            if records.len() < n {
                return Err(Fail(
                    5,
                    format!(
                        "the log holds {} records, fewer than the signed head's {}",
                        records.len(),
                        head.count
                    ),
                ));
            }
            records.truncate(n);
            let (count, last) =
                wallet_policy::audit::verify_chain(records.iter().map(String::as_str))
                    .map_err(|e| Fail(5, format!("audit log broken: {e}")))?;
            if count != head.count || last != hash {
                return Err(Fail(
                    5,
                    format!(
                        "the records ({count}) do not end at the signed head ({} records)",
                        head.count
                    ),
                ));
            }
            let head_file = home.join("audit.head");
            if let Ok(prev) = std::fs::read_to_string(&head_file) {
                let mut it = prev.split_whitespace();
                let (n, h) = (
                    it.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0),
                    it.next().unwrap_or(""),
                );
                let still_there = n == 0
                    || records
                        .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                        .and_then(|l| serde_json::from_str::<wallet_policy::audit::Record>(l).ok())
                        .is_some_and(|r| r.hash == h);
                if !still_there {
                    return Err(Fail(5, format!("the log no longer contains record {} as verified before (hash {h}): records were deleted or rewritten", n.saturating_sub(1))));
                }
            }
            std::fs::write(&head_file, format!("{count} {}\n", hex::encode(last)))
                .map_err(|e| Fail(1, format!("cannot write {}: {e}", head_file.display())))?;
            println!(
                "audit log OK: {count} records, head {} signed by the enclave",
                hex::encode(last)
            );
        }
    }
    Ok(())
}

/// The admin key: `WALLET_ADMIN_KEY` (hex) or `HOME/admin.key`.
fn admin_key(home: &std::path::Path) -> Result<AdminKey, Fail> {
    if let Ok(hex) = std::env::var("WALLET_ADMIN_KEY") {
        return AdminKey::from_hex(&hex).map_err(|e| Fail(2, format!("WALLET_ADMIN_KEY: {e}")));
    }
    AdminKey::read(&home.join("admin.key")).map_err(|e| Fail(2, e))
}

/// The enclave this admin talks to: its audit public key, pinned by `walletctl init`.
fn enclave_id(home: &std::path::Path) -> Result<Vec<u8>, Fail> {
    let path = home.join("audit.pub");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Fail(2, format!("no pinned enclave identity in {}: run walletctl init", path.display()))
    })?;
    hex::decode(text.trim()).map_err(|_| Fail(2, format!("{} is not a hex key", path.display())))
}

/// Signs a state-changing request with the admin key, for the pinned enclave.
fn signed<R: AdminSigned>(home: &std::path::Path, rpc: &str, mut req: R) -> Result<R, Fail> {
    admin_key(home)?.sign(&enclave_id(home)?, rpc, &mut req, now_ms());
    Ok(req)
}

async fn admin(url: &str, home: &std::path::Path, c: AdminCmd) -> Out {
    match c {
        AdminCmd::Key => {
            println!("{}", admin_key(home)?.public_key_hex());
            return Ok(());
        }
        AdminCmd::List => {
            let l = client(url).await?.list_admins(gw::ListAdminsRequest {}).await?.into_inner();
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
                "AddAdmin",
                gw::AddAdminRequest { public_key: pk, label, auth: None },
            )?;
            let a = client(url).await?.add_admin(req).await?.into_inner();
            println!("admin {} added", hex::encode(a.public_key));
        }
        AdminCmd::Remove { public_key } => {
            let pk = hex::decode(public_key.trim())
                .map_err(|_| Fail(2, "the public key must be 64 hex digits".into()))?;
            let req =
                signed(home, "RemoveAdmin", gw::RemoveAdminRequest { public_key: pk, auth: None })?;
            let a = client(url).await?.remove_admin(req).await?.into_inner();
            println!("admin {} removed", hex::encode(a.public_key));
        }
    }
    Ok(())
}

async fn init(url: &str, home: &std::path::Path) -> Out {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home.join("sessions"))
        .map_err(|e| Fail(1, format!("cannot create {}: {e}", home.display())))?;
    println!("walletctl home: {}", home.display());
    let key_file = home.join("admin.key");
    let key = if std::env::var_os("WALLET_ADMIN_KEY").is_some() || key_file.exists() {
        admin_key(home)?
    } else {
        let k = AdminKey::generate();
        k.write(&key_file)
            .map_err(|e| Fail(1, format!("cannot write {}: {e}", key_file.display())))?;
        println!("admin key:      created {} (0600)", key_file.display());
        k
    };
    println!("admin public:   {}", key.public_key_hex());
    status(url).await?;
    let mut cl = client(url).await?;
    let head = cl.get_audit_head(gw::GetAuditHeadRequest::default()).await?.into_inner();
    pin_audit_key(home, &head.public_key)?;
    let admins = cl.list_admins(gw::ListAdminsRequest {}).await?.into_inner().admins;
    if admins.is_empty() {
        let mut req = gw::AddAdminRequest {
            public_key: key.public_key().to_vec(),
            label: "first admin".into(),
            auth: None,
        };
        key.sign(&head.public_key, "AddAdmin", &mut req, now_ms());
        cl.add_admin(req).await?;
        println!("\nRegistered this key as the enclave's first admin: every change is now signed with it.");
    } else if admins.iter().any(|a| a.public_key == key.public_key()) {
        println!("\nThis key is an admin of this enclave.");
    } else {
        return Err(Fail(
            4,
            format!("this enclave already has admins and this key is not one; ask an admin to run: walletctl admin add {}", key.public_key_hex()),
        ));
    }
    println!("Next: walletctl wallet create --label my-agent");
    Ok(())
}

async fn status(url: &str) -> Out {
    let s = client(url).await?.get_status(gw::GetStatusRequest {}).await?.into_inner();
    println!("gateway:  {url} (up)");
    if !s.enclave_reachable {
        return Err(Fail(
            1,
            format!(
                "unavailable: the gateway is up but cannot reach the enclave (data dir {})",
                s.data_dir
            ),
        ));
    }
    let mode = if s.mode == "simulated" {
        "SIMULATED (development only: keys sealed with a local key file, not for real funds)"
            .to_owned()
    } else {
        s.mode.clone()
    };
    println!("enclave:  {mode}");
    println!("version:  {} (protocol {})", s.enclave_version, s.protocol_version);
    println!("data dir: {}", s.data_dir);
    println!(
        "admins {} · wallets {} · sessions {} · assets {} · kyt entries {} · payments signed {}",
        s.admins, s.wallets, s.sessions, s.assets, s.kyt_entries, s.payments_signed
    );
    Ok(())
}

async fn wallet(url: &str, home: &std::path::Path, c: WalletCmd) -> Out {
    let mut cl = client(url).await?;
    match c {
        WalletCmd::Create { label } => {
            let w = cl
                .create_wallet(signed(
                    home,
                    "CreateWallet",
                    gw::CreateWalletRequest { label, auth: None },
                )?)
                .await?
                .into_inner();
            println!("wallet {}  address {}", w.wallet_id, w.address);
            println!("Next: walletctl policy set --wallet {} --max-per-payment 0.10", w.wallet_id);
        }
        WalletCmd::Freeze { wallet } => {
            let req = signed(
                home,
                "FreezeWallet",
                gw::FreezeWalletRequest { wallet_id: wallet, auth: None },
            )?;
            let w = cl.freeze_wallet(req).await?.into_inner();
            println!(
                "wallet {} FROZEN: no signature is released until `walletctl wallet unfreeze {}`",
                w.wallet_id, w.wallet_id
            );
        }
        WalletCmd::Unfreeze { wallet } => {
            let req = signed(
                home,
                "UnfreezeWallet",
                gw::FreezeWalletRequest { wallet_id: wallet, auth: None },
            )?;
            let w = cl.unfreeze_wallet(req).await?.into_inner();
            println!("wallet {} unfrozen", w.wallet_id);
        }
        WalletCmd::List => {
            let l = cl.list_wallets(gw::ListWalletsRequest {}).await?.into_inner();
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

fn print_policy(p: &gw::Policy) {
    println!("# wallet {}, policy version {}", p.wallet_id, p.version);
    print!("{}", p.document);
    if !p.document.ends_with('\n') {
        println!();
    }
}

fn read_policy_file(path: &std::path::Path) -> Result<String, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail(2, format!("invalid: cannot read {}: {e}", path.display())))?;
    wallet_policy::document::Policy::parse(&text)
        .map_err(|e| Fail(2, format!("invalid: {}: {e}", path.display())))?;
    Ok(text)
}

async fn policy(url: &str, home: &std::path::Path, c: PolicyCmd) -> Out {
    if let PolicyCmd::Check { file } = &c {
        let text = read_policy_file(file)?;
        let p =
            wallet_policy::document::Policy::parse(&text).map_err(|e| Fail(2, e.to_string()))?;
        println!(
            "{}: ok ({} rules, {} wallet budgets, {} session budgets, approval {})",
            file.display(),
            p.rules.len(),
            p.wallet.budgets.len(),
            p.session.budgets.len(),
            if p.approval.above.is_some() || p.approval.first_time_payee { "on" } else { "off" }
        );
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
            let p = gw::Policy {
                wallet_id: wallet,
                version: 0,
                max_per_payment: max_per_payment.unwrap_or_default(),
                networks,
                assets,
                max_validity_seconds,
                document,
            };
            let p = cl
                .set_policy(signed(
                    home,
                    "SetPolicy",
                    gw::SetPolicyRequest { policy: Some(p), auth: None },
                )?)
                .await?
                .into_inner();
            eprintln!("policy version {} set for wallet {}", p.version, p.wallet_id);
            print_policy(&p);
        }
        PolicyCmd::Show { wallet } => print_policy(
            &cl.get_policy(gw::GetPolicyRequest { wallet_id: wallet }).await?.into_inner(),
        ),
        PolicyCmd::Check { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn print_approval(a: &gw::Approval) {
    let left = a.expires_at_ms.saturating_sub(now_ms()) / 1000;
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
            "pending" => format!("  expires in {}m{:02}s", left / 60, left % 60),
            "approved" => format!("  agent must retry within {}m{:02}s", left / 60, left % 60),
            _ => String::new(),
        },
        if a.note.is_empty() { String::new() } else { format!("  note: {}", a.note) }
    );
}

async fn approvals(url: &str, home: &std::path::Path, c: ApprovalsCmd) -> Out {
    let mut cl = client(url).await?;
    let (id, approve, note) = match c {
        ApprovalsCmd::List { wallet, all } => {
            let l = cl
                .list_approvals(gw::ListApprovalsRequest { wallet_id: wallet, all })
                .await?
                .into_inner();
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
            "DecideApproval",
            gw::DecideApprovalRequest { approval_id: id, approve, note, auth: None },
        )?)
        .await?
        .into_inner();
    print_approval(&a);
    Ok(())
}

async fn asset(url: &str, home: &std::path::Path, c: AssetCmd) -> Out {
    let mut cl = client(url).await?;
    match c {
        AssetCmd::Add { network, address, name, version, decimals, symbol } => {
            let asset = Some(gw::Asset { network, address, name, version, decimals, symbol });
            let a = cl
                .add_asset(signed(home, "AddAsset", gw::AddAssetRequest { asset, auth: None })?)
                .await?
                .into_inner();
            println!(
                "registered {} {} on {} (EIP-712 {:?} v{}, {} decimals)",
                a.symbol, a.address, a.network, a.name, a.version, a.decimals
            );
        }
        AssetCmd::List => {
            for a in cl.list_assets(gw::ListAssetsRequest {}).await?.into_inner().assets {
                println!(
                    "{:<18} {}  {:<6} {:?} v{}  {} decimals",
                    a.network, a.address, a.symbol, a.name, a.version, a.decimals
                );
            }
        }
    }
    Ok(())
}

async fn kyt(url: &str, home: &std::path::Path, c: KytCmd) -> Out {
    let mut cl = client(url).await?;
    match c {
        KytCmd::Add { addresses } => {
            let r = cl
                .add_kyt(signed(home, "AddKyt", gw::KytRequest { addresses, auth: None })?)
                .await?
                .into_inner();
            println!("added {} (denylist now {})", r.changed, r.total);
        }
        KytCmd::Remove { addresses } => {
            let r = cl
                .remove_kyt(signed(home, "RemoveKyt", gw::KytRequest { addresses, auth: None })?)
                .await?
                .into_inner();
            println!("removed {} (denylist now {})", r.changed, r.total);
        }
        KytCmd::List => {
            let mut offset = 0u64;
            loop {
                let page =
                    cl.list_kyt(gw::ListKytRequest { offset, limit: 10_000 }).await?.into_inner();
                let n = page.addresses.len() as u64;
                for a in page.addresses {
                    println!("{a}");
                }
                offset += n;
                if n == 0 || offset >= page.total {
                    break;
                }
            }
        }
        KytCmd::Import { file, format, column, replace, strict, dry_run } => {
            kyt_import(&mut cl, home, &file, format, column.as_deref(), replace, strict, dry_run)
                .await?;
        }
    }
    Ok(())
}

/// Addresses per `ImportKyt` chunk: 40,000 × 20 bytes stays well under the 1 MiB frame.
const KYT_CHUNK: usize = 40_000;

#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
async fn kyt_import(
    cl: &mut WalletGatewayClient<Channel>,
    home: &std::path::Path,
    file: &std::path::Path,
    format: wallet_host::kyt_import::Format,
    column: Option<&str>,
    replace: bool,
    strict: bool,
    dry_run: bool,
) -> Out {
    use wallet_host::kyt_import::{parse, MAX_INPUT_BYTES};
    let mut text = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().take(MAX_INPUT_BYTES as u64 + 1).read_to_string(&mut text)
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_INPUT_BYTES as u64 + 1).read_to_string(&mut text))
    };
    read.map_err(|e| Fail(2, format!("invalid: cannot read {}: {e}", file.display())))?;
    let parsed = parse(&text, format, column)
        .map_err(|e| Fail(2, format!("invalid: {}: {e}", file.display())))?;
    for b in parsed.bad.iter().take(20) {
        eprintln!("{}:{}: {} ({:?})", file.display(), b.line, b.reason, b.text);
    }
    if parsed.bad.len() > 20 {
        eprintln!("... and {} more bad lines", parsed.bad.len() - 20);
    }
    println!(
        "{}: {:?} format, {} entries: {} addresses, {} duplicates, {} bad",
        file.display(),
        parsed.format,
        parsed.entries,
        parsed.addresses.len(),
        parsed.duplicates,
        parsed.bad.len()
    );
    if strict && !parsed.bad.is_empty() {
        return Err(Fail(
            2,
            format!("invalid: {} bad lines (--strict); nothing was changed", parsed.bad.len()),
        ));
    }
    if parsed.addresses.is_empty() && !replace {
        return Err(Fail(2, "invalid: no addresses to import".into()));
    }
    if dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    let import_id = random_idempotency_key();
    let chunks: Vec<&[[u8; 20]]> = if parsed.addresses.is_empty() {
        vec![&[]]
    } else {
        parsed.addresses.chunks(KYT_CHUNK).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let req = gw::ImportKytRequest {
            import_id: import_id.clone(),
            addresses: chunk.concat(),
            commit: i == last,
            replace,
            expected_total: parsed.addresses.len() as u64,
            auth: None,
        };
        let r = cl.import_kyt(signed(home, "ImportKyt", req)?).await?.into_inner();
        if r.committed {
            println!(
                "imported: {} added, {} removed, denylist now {}",
                r.added, r.removed, r.total
            );
        }
    }
    Ok(())
}

async fn session(url: &str, home: &std::path::Path, c: SessionCmd) -> Out {
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
            let wallets = cl.list_wallets(gw::ListWalletsRequest {}).await?.into_inner().wallets;
            let address = wallets
                .iter()
                .find(|w| w.wallet_id == a.wallet)
                .map(|w| w.address.clone())
                .unwrap_or_default();
            let key = new_session_key();
            let req = signed(
                home,
                "IssueSession",
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
            let s = cl.issue_session(req).await?.into_inner();
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
            );
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
            let l =
                cl.list_sessions(gw::ListSessionsRequest { wallet_id: wallet }).await?.into_inner();
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
                    "RevokeSession",
                    gw::RevokeSessionRequest { session_id: session, auth: None },
                )?)
                .await?
                .into_inner();
            println!("session {} revoked (spent {} of {})", s.session_id, s.spent, s.cap);
        }
    }
    Ok(())
}

async fn pay(default_url: &str, a: PayArgs) -> Out {
    let cred = Credential::read(&a.session).map_err(|e| Fail(2, e))?;
    let mut input = String::new();
    std::io::stdin()
        .take((MAX_HEADER_LEN as u64) * 2 + 1)
        .read_to_string(&mut input)
        .map_err(|e| Fail(2, format!("invalid: cannot read stdin: {e}")))?;
    let header = clean_header_input(&input);
    if header.is_empty() {
        return Err(Fail(2, "invalid: no PAYMENT-REQUIRED value on stdin".into()));
    }
    if header.len() > MAX_HEADER_LEN {
        return Err(Fail(2, format!("invalid: HEADER_TOO_LARGE: the PAYMENT-REQUIRED value is larger than {MAX_HEADER_LEN} bytes")));
    }
    let idem = a.idempotency_key.unwrap_or_else(random_idempotency_key);
    // The gateway flag/env wins over the one recorded in the credential only when set explicitly.
    let url =
        if std::env::var_os("WALLET_GATEWAY").is_some() || default_url != "http://127.0.0.1:7402" {
            default_url.to_owned()
        } else {
            cred.gateway.clone()
        };
    let req = cred.sign_request(header, &a.network, &a.asset, &idem, now_ms());
    let resp = match client(&url).await?.sign_payment(req).await {
        Ok(r) => r.into_inner(),
        Err(s)
            if s.metadata()
                .get(wallet_host::gateway::REASON_METADATA)
                .and_then(|v| v.to_str().ok())
                == Some("APPROVAL_PENDING") =>
        {
            return Err(Fail(
                6,
                format!(
                    "pending: {}\nretry once approved with: --idempotency-key {idem}",
                    s.message()
                ),
            ));
        }
        Err(s) => return Err(s.into()),
    };
    println!("{}", resp.payment_signature);
    if a.verbose {
        eprintln!(
            "paid {} {} to {} on {} from {} (session spent {}, {} left){}",
            resp.charged,
            resp.asset_symbol,
            resp.pay_to,
            resp.network,
            resp.payer,
            resp.session_spent,
            resp.session_remaining,
            if resp.replayed { " [idempotent replay, not charged again]" } else { "" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
