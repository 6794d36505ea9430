//! `wallet-enclave`: the trusted signer process.

use std::{path::PathBuf, process::ExitCode};

const USAGE: &str = "wallet-enclave: the trusted signer of the agent wallet

USAGE:
    wallet-enclave --simulated [--data-dir DIR] [--socket PATH]
    wallet-enclave --vsock-port PORT            (inside an AWS Nitro Enclave)

OPTIONS:
    --simulated         Run as a local process with a simulated NSM. Keys are sealed with a key
                        file in the data directory: for development and tests, never real funds.
                        Only in builds with the `simulated` feature (scripts/dev-up.sh builds one).
    --data-dir DIR      State directory [env: WALLET_DATA_DIR]
                        [default: $XDG_DATA_HOME/agent-wallet or ~/.local/share/agent-wallet]
    --socket PATH       Unix socket to listen on [default: DIR/enclave.sock]
    --vsock-port PORT   vsock port to listen on (Nitro)
    --idempotency-ttl SECONDS
                        How long a payment's idempotency key is remembered; a retry after
                        that is a new payment [default: 86400]
    -h, --help          Print this help

Logging: RUST_LOG, directives `level` or `target=level` separated by commas (for example
`info,wallet_enclave=debug`); default info. Payloads, keys and secrets are never logged.";

fn parse(args: impl Iterator<Item = String>) -> Result<wallet_enclave::Config, String> {
    let mut c = wallet_enclave::Config {
        idempotency_ttl_seconds: wallet_enclave::service::DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        simulated: false,
        data_dir: wallet_enclave::default_data_dir(),
        socket: None,
        vsock_port: None,
    };
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--simulated" => c.simulated = true,
            "--data-dir" => c.data_dir = PathBuf::from(value("--data-dir")?),
            "--socket" => c.socket = Some(PathBuf::from(value("--socket")?)),
            "--idempotency-ttl" => {
                c.idempotency_ttl_seconds =
                    value("--idempotency-ttl")?.parse().ok().filter(|s| *s > 0).ok_or_else(
                        || "--idempotency-ttl takes a positive number of seconds".to_owned(),
                    )?;
            }
            "--vsock-port" => {
                c.vsock_port = Some(
                    value("--vsock-port")?
                        .parse()
                        .map_err(|_| "--vsock-port takes a number".to_owned())?,
                )
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(c)
}

/// The log filter: `RUST_LOG` as a list of `level` and `target=level` directives (no regular
/// expressions: the enclave does not link a regex engine); `info` when unset or malformed.
fn log_filter() -> tracing_subscriber::filter::Targets {
    std::env::var("RUST_LOG").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::INFO)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    {
        use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(log_filter())
            .init();
    }
    if config.simulated && !wallet_enclave::HAS_SIMULATED_PLATFORM {
        eprintln!(
            "wallet-enclave: this is a production build without the simulated platform; \
             --simulated needs a build with `--features simulated` (scripts/dev-up.sh builds one)"
        );
        return ExitCode::from(2);
    }
    match wallet_enclave::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wallet-enclave: {e}");
            ExitCode::FAILURE
        }
    }
}
