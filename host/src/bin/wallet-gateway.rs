//! `wallet-gateway`: the host's gRPC gateway (`wallet.gateway.v1`), relaying to the enclave.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use wallet_host::{storage::StorageListen, EnclaveAddress};

/// The agent wallet's gRPC gateway. Agents call SignPayment here; admins use walletctl.
/// It relays every request to the enclave, which checks and signs.
#[derive(Debug, Parser)]
#[command(name = "wallet-gateway", version, about, long_about = None)]
struct Args {
    /// Address to listen on. Only loopback unless --allow-non-loopback.
    #[arg(long, env = "WALLET_GATEWAY_LISTEN", default_value = wallet_host::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where the enclave listens: a Unix socket (unix:/path or a path; the simulated enclave),
    /// vsock:CID:PORT (Nitro), or hybrid-vsock:/path:PORT (an enclave image under QEMU behind
    /// vhost-device-vsock, scripts/nitro-e2e.sh). Repeat it for the members of one enclave
    /// group [env: WALLET_ENCLAVE_SOCKET, comma-separated] [default: DATA_DIR/enclave.sock].
    ///
    /// Several: the members of ONE group, copies of one sealed state that serve the same
    /// wallets and sign with the same identity key (answers verify whichever member signed);
    /// never unrelated enclaves. The gateway keeps one link to each.
    ///
    /// Routing: the members are numbered 0..N-1 in the order given. A call's key is its
    /// session id when it carries one (SignPayment, PreviewPayment, GetBudget, ListPayments,
    /// RevokeSession), else its wallet id when it carries one (SetPolicy, GetPolicy,
    /// IssueSession, ListSessions, FreezeWallet, UnfreezeWallet, ListApprovals for a wallet);
    /// it goes first to member FNV-1a-64(key) mod N (64-bit FNV-1a of the key's UTF-8 bytes),
    /// then to the next members in order, wrapping. A call without a key (GetStatus,
    /// ListWallets, admins, assets, KYT, audit, attestation, anchor, ...) starts at member 0.
    /// So one session's payments go to one member while it is up, and sessions spread over
    /// the members.
    ///
    /// Failover: a call goes on to the next member only when it certainly reached no enclave:
    /// the member could not be connected, its link was already closed, or no in-flight slot
    /// freed within 2 s (--max-enclave-in-flight). Once the request was handed to a member's
    /// link it is never sent to another (that member may have signed; a second signature
    /// would pay twice): a lost answer is UNAVAILABLE (ENCLAVE_UNAVAILABLE), a late one
    /// DEADLINE_EXCEEDED, and the agent retries with the same idempotency key. A member that
    /// could not be connected is tried last for 1 s, then preferred again. GetStatus answers
    /// from the first member that takes it (enclave_reachable false when none does); gRPC
    /// health says the gateway serves, whichever members are up.
    ///
    /// With several members, --serve-storage and --serve-boot are refused (each serves one
    /// enclave: run one wallet-gateway per member for them); --kms-relay and --anchor-relay
    /// serve every member.
    #[arg(long, visible_alias = "enclave", value_name = "ADDR")]
    enclave_socket: Vec<EnclaveAddress>,
    /// Data directory of the local stack [default: $XDG_DATA_HOME/agent-wallet or ~/.local/share/agent-wallet].
    #[arg(long, env = "WALLET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Listen on a non-loopback address. State changes are admin-signed and payments
    /// session-signed (verified in the enclave), but reads are open and the transport is
    /// plaintext: put the gateway behind TLS and access control.
    #[arg(long)]
    allow_non_loopback: bool,
    /// TCP connections served at once; one past that is closed at once.
    #[arg(long, env = "WALLET_GATEWAY_MAX_CONNECTIONS", default_value_t = wallet_host::DEFAULT_MAX_CONNECTIONS, value_parser = positive)]
    max_connections: usize,
    /// HTTP/2 streams (concurrent calls) per connection.
    #[arg(long, env = "WALLET_GATEWAY_MAX_STREAMS", default_value_t = wallet_host::DEFAULT_MAX_STREAMS_PER_CONNECTION, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// Requests in flight to each enclave link, all clients together; a call that waits 2 s
    /// for a slot goes on to the next member of the group, and with none left fails with
    /// UNAVAILABLE (ENCLAVE_UNAVAILABLE).
    #[arg(long, env = "WALLET_GATEWAY_MAX_ENCLAVE_IN_FLIGHT", default_value_t = wallet_host::enclave_client::DEFAULT_MAX_IN_FLIGHT, value_parser = positive)]
    max_enclave_in_flight: usize,
    /// Also serve the enclave's storage (a Nitro enclave has no disk; `wallet-enclave
    /// --host-storage` uses it), at unix:/path (or a path) or vsock:PORT. The files (state.log,
    /// spends.journal, audit.log, commit.head) are kept in the data directory (0700, files
    /// 0600) and synced for real (fdatasync) when the enclave asks. The enclave seals and
    /// checks everything in them: this host can deny service, not change what it signs. Start
    /// the gateway before the enclave. On vsock only the enclave's context id (from --enclave
    /// vsock:CID:PORT) is served. One enclave's files: refused with several --enclave.
    #[arg(long, env = "WALLET_SERVE_STORAGE", value_name = "ADDR")]
    serve_storage: Option<StorageListen>,
    /// Also relay the enclave's connections to KMS, like AWS's vsock-proxy: accept at
    /// unix:/path (or a path) or vsock:PORT and pipe each connection's bytes to --kms-target.
    /// TLS ends inside the enclave: this host carries only ciphertext. Any peer is piped, so
    /// it serves every member of a group.
    #[arg(long, env = "WALLET_KMS_RELAY", value_name = "ADDR", requires = "kms_target")]
    kms_relay: Option<StorageListen>,
    /// Where the KMS relay connects: HOST:PORT, e.g. kms.us-east-1.amazonaws.com:443.
    #[arg(long, env = "WALLET_KMS_TARGET", value_name = "HOST:PORT", requires = "kms_relay")]
    kms_target: Option<String>,
    /// Also serve the boot configuration of an enclave image (EIF): the enclave's /init asks
    /// the parent for its arguments at start-up (vsock port 7001), at unix:/path (or a path)
    /// or vsock:PORT. The answer is --enclave-args, plus this process's AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN when set (they sign the enclave's KMS calls)
    /// and WALLET_ENCLAVE_LOG as its RUST_LOG. On vsock only the enclave's context id (from
    /// --enclave vsock:CID:PORT) is answered. Nothing in it is trusted by the enclave: the
    /// KMS key and service id it ends up with are in its attestation (walletctl init checks
    /// them). One enclave's configuration: refused with several --enclave.
    #[arg(long, env = "WALLET_SERVE_BOOT", value_name = "ADDR", requires = "enclave_args")]
    serve_boot: Option<StorageListen>,
    /// The enclave image's arguments, split at white space, e.g. "--vsock-port 5000
    /// --host-storage vsock:7000 --kms-key arn:aws:kms:REGION:ACCOUNT:key/ID --service-id ID".
    #[arg(
        long,
        env = "WALLET_ENCLAVE_ARGS",
        value_name = "ARGS",
        requires = "serve_boot",
        allow_hyphen_values = true
    )]
    enclave_args: Option<String>,
    /// Also relay the enclave's TLS connections to one member of its rollback anchor (etcd):
    /// LISTEN=HOST:PORT, accepting at LISTEN (unix:/path or vsock:PORT) and piping to the
    /// member at HOST:PORT. Give it once per member, in the order the anchor was provisioned
    /// with (the enclave gets the same LISTEN addresses as --anchor-relay, in order). TLS ends
    /// inside the enclave and etcd checks its client certificate: this host carries only
    /// ciphertext, and blocking it stops the enclave signing, never makes it sign more. Any
    /// peer is piped, so it serves every member of a group.
    #[arg(long = "anchor-relay", value_name = "LISTEN=HOST:PORT", value_parser = relay_pair)]
    anchor_relays: Vec<(StorageListen, String)>,
    /// Storage connections served at once (the enclave holds one).
    #[arg(long, default_value_t = wallet_host::storage::Limits::default().max_connections, value_parser = positive)]
    max_storage_connections: usize,
}

/// `LISTEN=HOST:PORT` of `--anchor-relay`.
fn relay_pair(s: &str) -> Result<(StorageListen, String), String> {
    let (listen, target) = s.split_once('=').ok_or_else(|| {
        "expected LISTEN=HOST:PORT, e.g. unix:/run/anchor-0.sock=10.0.0.5:2379".to_owned()
    })?;
    if !target.contains(':') {
        return Err(format!("{target:?} is not HOST:PORT"));
    }
    Ok((listen.parse().map_err(|e| format!("{e}"))?, target.to_owned()))
}

/// Binds a relay's listener at `address` and serves it in the background, piping each
/// connection to `target` (KMS, or a member of the anchor).
async fn start_relay(address: &StorageListen, target: &str, what: &str) -> std::io::Result<()> {
    let relay = wallet_host::relay::Relay::new(target);
    let forever = std::future::pending::<()>();
    match address {
        StorageListen::Unix(path) => {
            let listener = wallet_host::bind_unix_0600(path)?;
            tokio::spawn(relay.serve_unix(listener, forever));
        }
        #[cfg(target_os = "linux")]
        StorageListen::Vsock(port) => {
            let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                tokio_vsock::VMADDR_CID_ANY,
                *port,
            ))?;
            tokio::spawn(relay.serve_vsock(listener, forever));
        }
        #[cfg(not(target_os = "linux"))]
        StorageListen::Vsock(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "vsock is only available on Linux",
            ))
        }
    }
    tracing::info!(%address, target, "relaying the enclave's {what} connections");
    Ok(())
}

/// The environment variable holding the enclave addresses when no --enclave is given.
const ENCLAVE_ENV: &str = "WALLET_ENCLAVE_SOCKET";

/// The enclave group's addresses: the --enclave flags, else [`ENCLAVE_ENV`] (comma-separated;
/// blanks around and empty items are ignored), else none. Duplicates are refused.
fn enclave_addresses(
    flags: Vec<EnclaveAddress>,
    env: Option<std::ffi::OsString>,
) -> Result<Vec<EnclaveAddress>, String> {
    let addresses = if !flags.is_empty() {
        flags
    } else if let Some(value) = env {
        let value = value.into_string().map_err(|_| format!("{ENCLAVE_ENV} is not valid UTF-8"))?;
        value
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| a.parse::<EnclaveAddress>().map_err(|e| format!("{ENCLAVE_ENV}: {e}")))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    for (i, a) in addresses.iter().enumerate() {
        if addresses[..i].contains(a) {
            return Err(format!("enclave {a} is given twice"));
        }
    }
    Ok(addresses)
}

/// A whole number above zero.
fn positive(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "expected a whole number above 0".to_owned())
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("agent-wallet");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".agent-wallet"),
        |h| PathBuf::from(h).join(".local/share/agent-wallet"),
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if !wallet_host::is_loopback(&args.listen) && !args.allow_non_loopback {
        eprintln!("wallet-gateway: refusing to listen on {} (not loopback); pass --allow-non-loopback if it is protected", args.listen);
        return ExitCode::from(2);
    }
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let mut enclaves = match enclave_addresses(args.enclave_socket, std::env::var_os(ENCLAVE_ENV)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wallet-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if enclaves.is_empty() {
        enclaves.push(EnclaveAddress::Unix(data_dir.join("enclave.sock")));
    }
    if enclaves.len() > 1 {
        // Both serve one enclave: the storage server one data directory's files (two enclaves
        // writing the same state.log would destroy each other's state) and, on vsock, one
        // context id; the boot configuration one enclave's arguments and credentials, on vsock
        // to one context id.
        for (given, flag) in [
            (args.serve_storage.is_some(), "--serve-storage"),
            (args.serve_boot.is_some(), "--serve-boot"),
        ] {
            if given {
                eprintln!("wallet-gateway: {flag} serves one enclave, but {} enclaves are given; run one wallet-gateway with {flag} per member, with that member as its only --enclave", enclaves.len());
                return ExitCode::from(2);
            }
        }
    }
    let enclave = &enclaves[0];
    // The storage server first: bound (or failed) before anything is announced, so an enclave
    // started after the announcement finds it.
    if let Some(address) = &args.serve_storage {
        let limits = wallet_host::storage::Limits {
            max_connections: args.max_storage_connections,
            ..wallet_host::storage::Limits::default()
        };
        match wallet_host::storage::StorageServer::bind(address, &data_dir, limits) {
            Ok(server) => {
                // On vsock, answer the enclave's context id only.
                let server = match enclave {
                    EnclaveAddress::Vsock { cid, .. } => server.only_peer(*cid),
                    _ => server,
                };
                tokio::spawn(server.serve());
            }
            Err(e) => {
                eprintln!(
                    "wallet-gateway: cannot serve the enclave's storage at {address} from {}: {e}",
                    data_dir.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    if let (Some(address), Some(line)) = (&args.serve_boot, &args.enclave_args) {
        let config = wallet_host::boot::BootConfig::new(
            line.split_ascii_whitespace().map(str::to_owned).collect(),
        )
        .with_env(|name| std::env::var(name).ok());
        let served = match address {
            StorageListen::Unix(path) => config.serve_unix(path).map(|f| {
                tokio::spawn(f);
            }),
            #[cfg(target_os = "linux")]
            StorageListen::Vsock(port) => match enclave {
                EnclaveAddress::Vsock { cid, .. } => config.serve_vsock(*port, *cid).map(|f| {
                    tokio::spawn(f);
                }),
                other => {
                    eprintln!("wallet-gateway: --serve-boot vsock:{port} answers only the enclave's context id, so it needs --enclave vsock:CID:PORT (not {other})");
                    return ExitCode::from(2);
                }
            },
            #[cfg(not(target_os = "linux"))]
            StorageListen::Vsock(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "vsock is only available on Linux",
            )),
        };
        if let Err(e) = served {
            eprintln!(
                "wallet-gateway: cannot serve the enclave's boot configuration at {address}: {e}"
            );
            return ExitCode::FAILURE;
        }
        tracing::info!(%address, "serving the enclave image's boot configuration");
    }
    if let (Some(address), Some(target)) = (&args.kms_relay, &args.kms_target) {
        if let Err(e) = start_relay(address, target, "KMS").await {
            eprintln!("wallet-gateway: cannot relay to KMS at {address}: {e}");
            return ExitCode::FAILURE;
        }
    }
    for (address, target) in &args.anchor_relays {
        if let Err(e) = start_relay(address, target, "anchor").await {
            eprintln!("wallet-gateway: cannot relay to the anchor at {address}: {e}");
            return ExitCode::FAILURE;
        }
    }
    for member in &enclaves {
        tokio::spawn(wallet_host::log_attestation(member.clone()));
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wallet-gateway: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or_else(|_| args.listen.to_string(), |a| a.to_string());
    let members = enclaves.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    tracing::info!(listen = %addr, enclave = %members, "gateway listening");
    // One line on stdout, for scripts and tests that start the gateway on port 0.
    println!("wallet-gateway listening on http://{addr}");
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
    };
    let limits = wallet_host::Limits {
        max_connections: args.max_connections,
        max_concurrent_streams: args.max_streams_per_connection,
        concurrency_limit_per_connection: args.max_streams_per_connection as usize,
        max_enclave_in_flight: args.max_enclave_in_flight,
    };
    tracing::info!(?limits, "limits");
    match wallet_host::serve_gateway_with(
        listener,
        enclaves,
        data_dir.display().to_string(),
        limits,
        shutdown,
    )
    .await
    {
        Ok(()) => {
            if let Some(StorageListen::Unix(path)) = &args.serve_storage {
                let _ = std::fs::remove_file(path);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wallet-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enclave_addresses_come_from_the_flags_else_the_comma_separated_env() {
        let unix = |p: &str| EnclaveAddress::Unix(PathBuf::from(p));
        let env = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(enclave_addresses(vec![], None), Ok(vec![]));
        assert_eq!(
            enclave_addresses(vec![], env(" /a.sock, vsock:16:5000 ,,unix:/b,")),
            Ok(vec![unix("/a.sock"), EnclaveAddress::Vsock { cid: 16, port: 5000 }, unix("/b")])
        );
        // The flags win over the environment, and a flag is never split at commas.
        assert_eq!(enclave_addresses(vec![unix("/x,y")], env("/a,/b")), Ok(vec![unix("/x,y")]));
        assert!(enclave_addresses(vec![], env("/a,vsock:x")).unwrap_err().contains("vsock:x"));
        let twice = enclave_addresses(vec![unix("/a"), unix("/b"), unix("/a")], None);
        assert!(twice.unwrap_err().contains("unix:/a is given twice"));
        assert!(enclave_addresses(vec![], env("/a,unix:/a")).is_err());
    }

    #[test]
    fn several_enclaves_parse_from_repeated_flags_and_the_alias() {
        let args = Args::try_parse_from([
            "wallet-gateway",
            "--enclave",
            "/a.sock",
            "--enclave-socket",
            "vsock:16:5000",
            "--enclave",
            "hybrid-vsock:/run/vm.vsock:5000",
        ])
        .unwrap();
        assert_eq!(args.enclave_socket.len(), 3);
        assert_eq!(args.enclave_socket[0], EnclaveAddress::Unix(PathBuf::from("/a.sock")));
        let none = Args::try_parse_from(["wallet-gateway"]).unwrap();
        assert!(none.enclave_socket.is_empty());
    }
}
