//! `wallet-kms-sim`: serves the simulated KMS over HTTPS on loopback (TESTS AND SIMULATION ONLY).
//!
//! ```text
//! wallet-kms-sim --policy key-policy.json [--listen 127.0.0.1:0] [--state kms-sim-key.json]
//!                [--bypass-policy-lockout-safety-check]
//! wallet-kms-sim --print-policy --measurements wallet.pcrs.json --principal ARN --key-admin ARN
//! ```
//!
//! `--print-policy` prints the recommended key policy (`policy::recommended_policy_json`, the
//! production policy) pinning PCR0, PCR1 and PCR2 of an image's measurements file (nitro-cli's
//! format, as `scripts/build-eif.sh` writes it) and exits.
//!
//! `testdata/key-policy.example.json` is the recommended policy (see
//! `policy::recommended_policy_json`) for example PCRs; put the image's PCRs in it. The policy
//! is set by the test key administrator (`TEST_KEY_ADMIN`) and must pass KMS's lockout safety
//! check for it (it must let that administrator change it again) unless the check is bypassed.
//!
//! Prints one JSON line on stdout once listening: `{"listen": "127.0.0.1:PORT", "key_arn":
//! ..., "region": ..., "access_key_id": ..., "secret_access_key": ..., "server_name": ...}`
//! (the secret is the public test secret), then serves until killed. With `--state`, the key's
//! id and secret persist in that file (created 0600), so wrapped keys survive a restart.

use std::{io::Write as _, path::PathBuf, sync::Arc};

use clap::Parser;
use rand_core::{OsRng, RngCore as _};
use wallet_kms_sim::{KeyPolicy, LockoutCheck, Server, Sim, SimConfig};
use zeroize::Zeroizing;

/// A local KMS stand-in that enforces kms:RecipientAttestation key policies (tests only).
#[derive(Debug, Parser)]
#[command(name = "wallet-kms-sim", version)]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The key policy (JSON, as in production).
    #[arg(long, required_unless_present = "print_policy")]
    policy: Option<PathBuf>,
    /// Print the recommended key policy for --measurements and exit.
    #[arg(long, requires = "measurements", conflicts_with = "policy")]
    print_policy: bool,
    /// The image's measurements (nitro-cli's JSON): the PCRs --print-policy pins (0, 1, 2).
    #[arg(long)]
    measurements: Option<PathBuf>,
    /// The principal (the parent instance's role ARN) --print-policy lets use the key. No
    /// default: a policy naming the test account's role would be useless in production.
    #[arg(long, requires = "print_policy")]
    principal: Option<String>,
    /// The key administrator (role ARN) --print-policy names; repeat for several.
    #[arg(long, requires = "print_policy")]
    key_admin: Vec<String>,
    /// Where the key's id and secret persist (created if missing); without it the key lives
    /// only as long as the process.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Accept a policy that does not let the key administrator change it again (KMS's
    /// `BypassPolicyLockoutSafetyCheck`): the key may become unmanageable.
    #[arg(long)]
    bypass_policy_lockout_safety_check: bool,
}

/// Errors of the binary (printed by `main`).
type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args = Args::parse();
    if args.print_policy {
        let path = args.measurements.as_ref().ok_or("--print-policy needs --measurements")?;
        let measurements =
            wallet_attestation::Measurements::from_json(&std::fs::read_to_string(path)?)?;
        let pcrs: Vec<(u8, Vec<u8>)> =
            (0u8..=2).filter_map(|i| measurements.0.get(&i).map(|v| (i, v.clone()))).collect();
        if pcrs.first().is_none_or(|(i, _)| *i != 0) {
            return Err(format!("{}: no PCR0", path.display()).into());
        }
        let pcrs: Vec<(u8, &[u8])> = pcrs.iter().map(|(i, v)| (*i, v.as_slice())).collect();
        let principal = args.principal.as_deref().ok_or("--print-policy needs --principal")?;
        let admins: Vec<&str> = args.key_admin.iter().map(String::as_str).collect();
        if admins.is_empty() {
            return Err("--print-policy needs --key-admin".into());
        }
        println!("{}", wallet_kms_sim::policy::recommended_policy_json(principal, &admins, &pcrs));
        return Ok(());
    }
    let policy_path = args.policy.as_ref().ok_or("--policy is required")?;
    let policy = KeyPolicy::from_json(&std::fs::read_to_string(policy_path)?)?;
    let sim = Arc::new(Sim::new(SimConfig::test()));
    let lockout = if args.bypass_policy_lockout_safety_check {
        LockoutCheck::Bypass
    } else {
        LockoutCheck::Enforce
    };
    let arn = match &args.state {
        Some(path) => {
            let (id, secret) = load_or_create(path)?;
            sim.add_key(&id, secret, policy, lockout)?
        }
        None => sim.create_key_with(policy, lockout)?,
    };
    let server = Server::start(Arc::clone(&sim), &args.listen)?;
    let line = serde_json::json!({
        "listen": server.addr().to_string(),
        "key_arn": arn,
        "region": wallet_kms_sim::TEST_REGION,
        "access_key_id": wallet_kms_sim::TEST_ACCESS_KEY_ID,
        "secret_access_key": wallet_kms_sim::TEST_SECRET_ACCESS_KEY,
        "server_name": wallet_kms_sim::TEST_ENDPOINT,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    drop(out);
    eprintln!("wallet-kms-sim: SIMULATED KMS (test credentials, test CA) on {}", server.addr());
    loop {
        std::thread::park();
    }
}

/// The key id and secret in `path`, or new ones written there (0600).
fn load_or_create(path: &std::path::Path) -> Result<(String, Zeroizing<[u8; 32]>), Error> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = Zeroizing::new(text);
        let mut v: serde_json::Value = serde_json::from_str(&text)?;
        let id = v["KeyId"].as_str().ok_or("state: no KeyId")?.to_owned();
        let secret_hex = match v["Secret"].take() {
            serde_json::Value::String(s) => Zeroizing::new(s),
            _ => return Err("state: no Secret".into()),
        };
        let secret = Zeroizing::new(hex::decode(secret_hex.as_str())?);
        let secret: [u8; 32] =
            secret.as_slice().try_into().map_err(|_| "state: Secret is not 32 bytes")?;
        return Ok((id, Zeroizing::new(secret)));
    }
    let mut raw = [0u8; 16];
    OsRng.fill_bytes(&mut raw);
    let h = hex::encode(raw);
    let id = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
    let mut secret = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(secret.as_mut());
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let text = Zeroizing::new(
        serde_json::json!({"KeyId": id, "Secret": hex::encode(secret.as_ref())}).to_string(),
    );
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok((id, secret))
}
