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
    /init in an enclave image (scripts/build-eif.sh): as PID 1 it mounts /dev, /proc, /sys,
    loads lib/modules/modules.load, sends the Nitro heartbeat and takes its arguments from the
    parent instance (vsock port 7001, wallet-gateway --serve-boot)

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
    --anchor-relay ADDR Where the host relays the enclave's TLS connection to one member of the
                        rollback anchor (etcd), once per member, in the provisioned order:
                        unix:/path or vsock:[CID:]PORT (wallet-gateway --anchor-relay). Only
                        used once the anchor is provisioned (walletctl anchor provision); an
                        anchored state signs nothing until the anchor confirms it.
    --await-join        This state is a copy of a group member's, started to join the group
                        under a head of its own (walletctl anchor provision --join): the stored
                        anchor (the other member's head) is not started, and nothing is signed
                        or changed until the join is provisioned.
    --idempotency-ttl SECONDS
                        How long a payment's idempotency key is remembered; a retry after
                        that is a new payment [default: 86400]
    --snapshot-every RECORDS
                        Spend-journal records between ledger snapshots: start-up reads the
                        newest snapshot and at most about this many records after it
                        [default: 50000]. Smaller: faster start-up, more snapshot work.
    -h, --help          Print this help

Logging: RUST_LOG, directives `level` or `target=level` separated by commas (for example
`info,wallet_enclave=debug`); default info. Payloads, keys and secrets are never logged.";

/// Parses the arguments (without the program name); `env` looks up the environment (the
/// process's, or the boot configuration's inside an enclave image).
fn parse(
    args: impl Iterator<Item = String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<wallet_enclave::Config, String> {
    let mut c = wallet_enclave::Config {
        idempotency_ttl_seconds: wallet_enclave::service::DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        snapshot_every: wallet_enclave::service::DEFAULT_SNAPSHOT_EVERY,
        simulated: false,
        data_dir: wallet_enclave::default_data_dir(),
        socket: None,
        vsock_port: None,
        host_storage: None,
        kms: None,
        anchor_relays: Vec::new(),
        await_join: false,
    };
    let mut host_storage = None;
    let mut anchor_relays = Vec::new();
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
            "--snapshot-every" => {
                c.snapshot_every =
                    value("--snapshot-every")?.parse().ok().filter(|s| *s > 0).ok_or_else(
                        || "--snapshot-every takes a positive number of records".to_owned(),
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
            "--anchor-relay" => anchor_relays.push(value("--anchor-relay")?),
            "--await-join" => c.await_join = true,
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
    c.anchor_relays = anchor_relays
        .iter()
        .map(|a| wallet_enclave::hoststorage::HostAddress::parse(a, parent_cid))
        .collect::<Result<_, _>>()?;
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
            let env = |name: &str| env(name).filter(|v| !v.is_empty());
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
fn log_filter(rust_log: Option<String>) -> tracing_subscriber::filter::Targets {
    rust_log.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::INFO)
    })
}

/// The process environment.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn init_logging(filter: tracing_subscriber::filter::Targets) {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    if wallet_enclave::init::is_image_init(
        std::process::id(),
        std::env::args_os().next().as_deref(),
        std::path::Path::new("/proc/self").exists(),
    ) {
        as_init();
    }
    let config = match parse(std::env::args().skip(1), &process_env) {
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
    init_logging(log_filter(process_env("RUST_LOG")));
    if config.simulated && !wallet_enclave::HAS_SIMULATED_PLATFORM {
        eprintln!(
            "wallet-enclave: this is a production build without the simulated platform; \
             --simulated needs a build with `--features simulated` (scripts/dev-up.sh builds one)"
        );
        return ExitCode::from(2);
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wallet-enclave: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the enclave on a multi-threaded runtime until it stops.
fn serve(config: wallet_enclave::Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(wallet_enclave::run(config))
}

/// The configuration of an enclave image from the parent's boot configuration: its arguments
/// after `--parent-cid CID` (the command line's; the parent's own arguments may override it), its
/// environment for the credentials. `--simulated` and `--help` are refused.
#[cfg(target_os = "linux")]
fn image_config(
    cid: u32,
    boot: &wallet_enclave::init::BootConfig,
) -> Result<wallet_enclave::Config, String> {
    let args =
        ["--parent-cid".to_owned(), cid.to_string()].into_iter().chain(boot.args.iter().cloned());
    let config = parse(args, &|name| boot.env(name)).map_err(|e| {
        if e.is_empty() {
            "the parent asked for --help".to_owned()
        } else {
            format!("bad arguments from the parent: {e}")
        }
    })?;
    if config.simulated {
        return Err(
            "the parent asked for --simulated: an enclave image runs the Nitro configuration only"
                .into(),
        );
    }
    Ok(config)
}

/// PID 1 in the enclave image: prepare the machine, get the arguments from the parent, run the
/// wallet; never returns (the enclave ends when PID 1 does). Each step's outcome is one console
/// line starting `wallet-enclave init:`; the last line is `wallet-enclave init: halting: REASON`.
#[cfg(target_os = "linux")]
fn as_init() -> ! {
    use wallet_enclave::{hoststorage::HostAddress, init};
    let say = |what: &str| eprintln!("wallet-enclave init: {what}");
    let reason = (|| -> Result<String, String> {
        init::mount_filesystems()?;
        let cmdline = std::fs::read_to_string("/proc/cmdline")
            .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
        let loaded = init::load_modules(std::path::Path::new("/lib/modules"), &cmdline)?;
        say(&format!("{loaded} kernel modules loaded"));
        let cid = init::parent_cid(&cmdline)?;
        let parent = |port| HostAddress::Vsock { cid, port };
        match init::heartbeat(&parent(init::HEARTBEAT_PORT)) {
            Ok(()) => say(&format!("heartbeat answered by the parent (cid {cid})")),
            Err(e) => say(&format!("no heartbeat answer from cid {cid} port {}: {e} (nitro-cli waits for one; ignored)", init::HEARTBEAT_PORT)),
        }
        let boot =
            init::fetch_boot_config(&parent(init::BOOT_CONFIG_PORT), init::BOOT_CONFIG_WAIT)?;
        say(&format!("{} arguments from the parent", boot.args.len()));
        let config = image_config(cid, &boot)?;
        init_logging(log_filter(boot.env("RUST_LOG")));
        drop(boot);
        serve(config).map(|()| "the wallet stopped".to_owned()).map_err(|e| e.to_string())
    })();
    match reason {
        Ok(r) | Err(r) => say(&format!("halting: {r}")),
    }
    init::halt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_enclave::hoststorage::HostAddress;

    fn args(a: &[&str]) -> Result<wallet_enclave::Config, String> {
        parse(a.iter().map(|s| (*s).to_owned()), &|_| None)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_image_takes_the_parents_arguments_but_never_simulated() {
        use wallet_enclave::init::BootConfig;
        let boot = |json: &str| BootConfig::parse(json.as_bytes()).unwrap();
        let base = r#""--vsock-port","5000","--host-storage","vsock:7000","--kms-key","arn:aws:kms:us-east-1:111122223333:key/k","--service-id","s""#;
        let creds = r#""env":{"AWS_ACCESS_KEY_ID":"AKID","AWS_SECRET_ACCESS_KEY":"x"}"#;
        let c = image_config(2, &boot(&format!(r#"{{"args":[{base}],{creds}}}"#))).unwrap();
        assert_eq!(c.host_storage, Some(HostAddress::Vsock { cid: 2, port: 7000 }));
        assert!(c.kms.is_some() && !c.simulated);
        // The parent may name another CID: its arguments come after the command line's.
        let other = boot(&format!(r#"{{"args":[{base},"--parent-cid","9"],{creds}}}"#));
        assert_eq!(
            image_config(2, &other).unwrap().host_storage,
            Some(HostAddress::Vsock { cid: 9, port: 7000 })
        );
        let simulated = boot(&format!(r#"{{"args":[{base},"--simulated"],{creds}}}"#));
        assert!(image_config(3, &simulated).unwrap_err().contains("--simulated"));
        assert!(image_config(3, &boot(r#"{"args":["--help"]}"#)).unwrap_err().contains("--help"));
        // The KMS key without credentials from the parent is refused.
        let no_creds = boot(&format!(r#"{{"args":[{base}]}}"#));
        assert!(image_config(3, &no_creds).unwrap_err().contains("AWS credentials"));
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
