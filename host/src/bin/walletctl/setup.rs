//! `walletctl init` and `walletctl status`.

use std::path::Path;

use clap::Args;
use wallet_client::{now_ms, AdminKey, AdminRpc};
use wallet_proto::gateway::v1 as gw;

use crate::{admin::admin_key, audit::pin_audit_key, client, pinned_identity, Fail, Out};

/// `walletctl init` flags.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The enclave presents a new identity because you started it over with a new data
    /// directory: pin the new one. The old pin (HOME/audit.pub) and the audit head verified
    /// with it (HOME/audit.head) are kept beside them as *.replaced-TIME. Use it only for an
    /// enclave you started yourself: a changed identity is also what a host you do not control
    /// would present.
    #[arg(long)]
    reset_identity: bool,
    #[command(flatten)]
    expect: crate::attest::Expect,
}

/// What happened when the enclave presents `presented` while `pinned` is pinned in
/// `HOME/audit.pub`, and what to do.
pub(crate) fn identity_changed(url: &str, home: &Path, pinned: &str, presented: &str) -> String {
    format!(
        "the enclave at {url} presents a new identity ({presented}), not the one pinned in {} ({pinned}).\n\
         A new data directory makes a new enclave with a new identity: that is what happens when you start over (dev-up.sh with another WALLET_DATA_DIR, or after removing the old one). A host you do not control would look exactly the same, so walletctl does not re-pin by itself.\n\
         If you started this enclave yourself, pin the new identity with:\n\
         \x20 walletctl init --reset-identity\n\
         (the wallets, sessions and credentials of the old enclave do not exist in the new one). Otherwise, do not use this host.",
        home.join("audit.pub").display()
    )
}

/// Moves `HOME/NAME` aside as `NAME.replaced-UNIX_SECONDS` (if it exists); returns the new path.
fn move_aside(home: &Path, name: &str) -> Result<Option<std::path::PathBuf>, Fail> {
    let from = home.join(name);
    if !from.exists() {
        return Ok(None);
    }
    let to = home.join(format!("{name}.replaced-{}", now_ms() / 1000));
    std::fs::rename(&from, &to)
        .map_err(|e| Fail(1, format!("cannot move {} to {}: {e}", from.display(), to.display())))?;
    Ok(Some(to))
}

/// What to do with the identity the enclave's verified attestation document binds.
enum Pin {
    /// It is the pinned one.
    Keep,
    /// Nothing is pinned yet: pin it.
    New,
    /// Another one is pinned and the admin asked to replace it (`--reset-identity`).
    Replace(String),
}

/// Compares the identity the enclave's verified attestation document binds (`presented`, hex)
/// with the pinned one. A changed one is refused (exit code 5) saying what to do, unless
/// `reset`. Nothing is written here: the pin changes once the enclave has answered under the
/// new identity.
fn check_identity(url: &str, home: &Path, reset: bool, presented: &str) -> Result<Pin, Fail> {
    let Some(pinned) = pinned_identity() else {
        return Ok(Pin::New);
    };
    if presented == pinned {
        if reset {
            println!("identity:       unchanged ({presented}); nothing to reset");
        }
        return Ok(Pin::Keep);
    }
    if !reset {
        return Err(Fail(5, identity_changed(url, home, &pinned, presented)));
    }
    Ok(Pin::Replace(pinned))
}

/// Pins the attested identity `presented` (hex) in `HOME/audit.pub`.
fn pin_identity(home: &Path, presented: &str) -> Out {
    let path = home.join("audit.pub");
    std::fs::write(&path, format!("{presented}\n"))
        .map_err(|e| Fail(1, format!("cannot write {}: {e}", path.display())))?;
    println!(
        "identity:       pinned in {} (bound by the verified attestation document)",
        path.display()
    );
    Ok(())
}

pub(crate) async fn init(url: &str, home: &Path, args: &InitArgs) -> Out {
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
    // The verified first contact: nothing the enclave says is trusted before its attestation
    // document verifies, matches the expected measurements and binds the identity key.
    let attested = crate::attest::first_contact(url, home, &args.expect).await?;
    let identity = attested.identity_hex();
    let pin = check_identity(url, home, args.reset_identity, &identity)?;
    // Every answer from here on must be signed by the attested identity; it is pinned only
    // once the enclave has answered under it.
    let mut cl = crate::with_identity(crate::unpinned_client(url).await?, &identity)?;
    println!();
    status_with(&mut cl, url, home, matches!(pin, Pin::Keep)).await?;
    match pin {
        Pin::Keep => attested.pin(home)?,
        Pin::New => {
            pin_identity(home, &identity)?;
            attested.pin(home)?;
        }
        Pin::Replace(old) => {
            let old_pin = move_aside(home, "audit.pub")?;
            move_aside(home, "audit.head")?;
            move_aside(home, "audit.heads")?;
            move_aside(home, crate::attest::ENCLAVE_FILE)?;
            println!(
                "identity:       the enclave's identity changed from {old} to {identity}; re-pinning it as you asked (--reset-identity){}",
                old_pin.map(|p| format!("; the old pin is in {}", p.display())).unwrap_or_default()
            );
            pin_identity(home, &identity)?;
            attested.pin(home)?;
        }
    }
    let head = cl.get_audit_head(gw::GetAuditHeadRequest::default()).await?;
    pin_audit_key(home, &head.public_key)?;
    let admins = cl.list_admins(gw::ListAdminsRequest {}).await?.admins;
    if admins.is_empty() {
        let mut req = gw::AddAdminRequest {
            public_key: key.public_key().to_vec(),
            label: "first admin".into(),
            auth: None,
        };
        key.sign(&head.public_key, AdminRpc::AddAdmin, &mut req, now_ms());
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

pub(crate) async fn status(url: &str, home: &Path) -> Out {
    status_with(&mut client(url).await?, url, home, true).await
}

/// `walletctl status` through `cl` (which checks answers against the identity it was given);
/// `history`: also compare the audit head with the one this machine verified last (not while
/// `init` replaces the pinned identity: that head belongs to the old enclave).
async fn status_with(
    cl: &mut wallet_client::GatewayClient,
    url: &str,
    home: &Path,
    history: bool,
) -> Out {
    let s = match cl.get_status(gw::GetStatusRequest {}).await {
        Ok(s) => s,
        // The gateway answers for itself when it cannot reach the enclave: unsigned, so it is
        // only the host's word — report that, not a forgery.
        Err(e) if e.is_untrusted() => {
            let raw =
                cl.raw().get_status(gw::GetStatusRequest {}).await.map(tonic::Response::into_inner);
            match raw {
                Ok(s) if !s.enclave_reachable => {
                    return Err(Fail(1, format!("unavailable: the gateway says it cannot reach the enclave (data dir {}; an unsigned answer: the host's word)", s.data_dir)));
                }
                _ => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
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
    let mode = match s.mode.as_str() {
        "simulated" => {
            "SIMULATED (development only: keys sealed with a local key file, not for real funds)"
                .to_owned()
        }
        "emulated" => "EMULATED Nitro (QEMU's nitro-enclave machine, TEST attestation root: development only, not for real funds)".to_owned(),
        other => other.to_owned(),
    };
    println!("enclave:  {mode}");
    for p in &s.pcrs {
        println!(
            "PCR{}:{:width$}{}",
            p.index,
            "",
            hex::encode(&p.value),
            width = 6 - p.index.to_string().len()
        );
    }
    match s.sealing.as_str() {
        "" => {}
        "kms" => println!("sealing:  KMS data key released only to the attested measurements"),
        "key-file" => println!("sealing:  key file on the host (simulated)"),
        other => println!("sealing:  {other}"),
    }
    println!("version:  {} (protocol {})", s.enclave_version, s.protocol_version);
    println!("data dir: {}", s.data_dir);
    println!(
        "admins {} · wallets {} · sessions {} · assets {} · kyt entries {} · payments signed {}",
        s.admins, s.wallets, s.sessions, s.assets, s.kyt_entries, s.payments_signed
    );
    println!("anchor:   {}", crate::anchor::status_line(home, s.anchor.as_ref())?);
    // Whole-directory rollback: the enclave cannot see it; the head verified last can.
    if history {
        if let Some(audit) = crate::audit::check_against_last_verified(cl, home).await? {
            println!("audit:    {audit}");
        }
    }
    Ok(())
}
