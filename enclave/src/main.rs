//! `wallet-enclave`: the trusted signer process.

use std::{path::PathBuf, process::ExitCode};

const USAGE: &str = "wallet-enclave: the trusted signer of the agent wallet

USAGE:
    wallet-enclave --simulated [--data-dir DIR] [--socket PATH] [--host-storage ADDR]
    wallet-enclave --vsock-port PORT --host-storage vsock:PORT --kms-key ARN --service-id ID
                                                (inside an AWS Nitro Enclave)
    wallet-enclave --simulated --socket PATH --host-storage unix:PATH --kms-key ARN
                   --service-id ID --kms-relay unix:PATH --kms-endpoint localhost
                                                (the same, with the simulated NSM and kms-sim)

OPTIONS:
    --simulated         Run as a local process with a simulated NSM. Keys are sealed with a key
                        file in the data directory: for development and tests, never real funds.
                        Only in builds with the `simulated` feature (scripts/dev-up.sh builds one).
    --data-dir DIR      State directory [env: WALLET_DATA_DIR]
                        [default: $XDG_DATA_HOME/agent-wallet or ~/.local/share/agent-wallet]
    --socket PATH       Unix socket to listen on [default: DIR/enclave.sock]
    --vsock-port PORT   vsock port to listen on (Nitro)
    --host-storage ADDR Keep the state (state log, spend journal, audit log, commit head) on
                        storage the host serves at ADDR instead of files in the data directory:
                        unix:/path, vsock:CID:PORT, or vsock:PORT (at --parent-cid). Start the
                        host first (wallet-gateway --serve-storage ...); the enclave waits up to
                        30 s for it. Everything stored is sealed and checked on reading: the host
                        can refuse service, not alter state unnoticed. In simulated mode the
                        sealing key file stays in the data directory.
    --parent-cid N      vsock context id of the host, for --host-storage and --kms-relay
                        vsock:PORT [default: 3, the parent instance on AWS Nitro]
    --kms-key ARN       Seal the state with a data key from this KMS key (an ARN, not an alias),
                        released only to an enclave whose attestation document carries the PCRs
                        the key policy names; the wrapped key is kept on the host storage. The
                        Nitro configuration; needs --host-storage and --service-id. AWS
                        credentials for the calls: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
                        AWS_SESSION_TOKEN.
    --service-id ID     This wallet service's id: the KMS encryption context the wrapped key is
                        bound to. The admin checks it (walletctl init --expect-service).
    --kms-relay ADDR    Where the host relays the enclave's TLS connection to KMS (TLS ends in
                        the enclave; the host sees ciphertext): unix:/path or vsock:[CID:]PORT
                        [default: vsock:8000 at --parent-cid]
    --kms-endpoint HOST KMS endpoint name [default: kms.REGION.amazonaws.com, REGION from the ARN]
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
        host_storage: None,
        kms: None,
    };
    let mut host_storage = None;
    let (mut kms_key, mut service_id, mut kms_relay, mut kms_endpoint) = (None, None, None, None);
    let mut parent_cid = wallet_enclave::hoststorage::DEFAULT_PARENT_CID;
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
            "--host-storage" => host_storage = Some(value("--host-storage")?),
            "--kms-key" => kms_key = Some(value("--kms-key")?),
            "--service-id" => service_id = Some(value("--service-id")?),
            "--kms-relay" => kms_relay = Some(value("--kms-relay")?),
            "--kms-endpoint" => kms_endpoint = Some(value("--kms-endpoint")?),
            "--parent-cid" => {
                parent_cid = value("--parent-cid")?
                    .parse()
                    .map_err(|_| "--parent-cid takes a number".to_owned())?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // After every argument: --parent-cid may come after --host-storage.
    c.host_storage = host_storage
        .map(|a| wallet_enclave::hoststorage::HostAddress::parse(&a, parent_cid))
        .transpose()?;
    c.kms = match (kms_key, service_id) {
        (None, None) if kms_relay.is_none() && kms_endpoint.is_none() => None,
        (Some(key), Some(service)) => {
            use wallet_enclave::{hoststorage::HostAddress, platform::kms};
            // arn:aws:kms:REGION:ACCOUNT:key/ID
            let region = key.split(':').nth(3).filter(|r| !r.is_empty()).ok_or_else(|| {
                format!(
                    "--kms-key {key:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"
                )
            })?;
            let mut config = kms::KmsConfig::new(region, key.clone(), service);
            if let Some(e) = kms_endpoint {
                config.endpoint = e;
            }
            let relay =
                HostAddress::parse(kms_relay.as_deref().unwrap_or("vsock:8000"), parent_cid)?;
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
            else {
                return Err("--kms-key needs AWS credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for a role)".into());
            };
            let credentials = kms::AwsCredentials::new(id, secret, env("AWS_SESSION_TOKEN"));
            Some(wallet_enclave::platform::boot::KmsOptions { config, credentials, relay })
        }
        _ => return Err(
            "--kms-key and --service-id go together (and --kms-relay, --kms-endpoint need them)"
                .into(),
        ),
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_enclave::hoststorage::HostAddress;

    fn args(a: &[&str]) -> Result<wallet_enclave::Config, String> {
        parse(a.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn host_storage_takes_an_address_and_the_parent_cid_in_any_order() {
        assert_eq!(args(&[]).unwrap().host_storage, None);
        assert_eq!(
            args(&["--host-storage", "unix:/run/s.sock"]).unwrap().host_storage,
            Some(HostAddress::Unix("/run/s.sock".into()))
        );
        assert_eq!(
            args(&["--host-storage", "vsock:7000"]).unwrap().host_storage,
            Some(HostAddress::Vsock { cid: 3, port: 7000 })
        );
        assert_eq!(
            args(&["--host-storage", "vsock:7000", "--parent-cid", "5"]).unwrap().host_storage,
            Some(HostAddress::Vsock { cid: 5, port: 7000 })
        );
        assert_eq!(
            args(&["--parent-cid", "5", "--host-storage", "vsock:9:7000"]).unwrap().host_storage,
            Some(HostAddress::Vsock { cid: 9, port: 7000 })
        );
        assert!(args(&["--host-storage", "/no/scheme"]).unwrap_err().contains("unix:/path"));
        assert!(args(&["--parent-cid", "x"]).is_err());
        assert!(args(&["--host-storage"]).is_err());
    }
}
