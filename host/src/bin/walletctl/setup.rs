//! `walletctl init` and `walletctl status`.

use std::path::Path;

use wallet_client::{now_ms, AdminKey, AdminRpc};
use wallet_proto::gateway::v1 as gw;

use crate::{admin::admin_key, audit::pin_audit_key, client, Fail, Out};

pub(crate) async fn init(url: &str, home: &Path) -> Out {
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
    status(url, home).await?;
    let mut cl = client(url).await?;
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
    let mut cl = client(url).await?;
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
    // Whole-directory rollback: the enclave cannot see it; the head verified last can.
    if let Some(audit) = crate::audit::check_against_last_verified(&mut cl, home).await? {
        println!("audit:    {audit}");
    }
    Ok(())
}
