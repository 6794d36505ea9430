//! `walletctl anchor`: provision the rollback anchor (etcd) and re-anchor after losing it.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use wallet_client::AdminRpc;
use wallet_proto::gateway::v1 as gw;

use crate::{admin::signed, client, Fail, Out};

/// The `walletctl anchor` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AnchorCmd {
    /// Provision the rollback anchor: have the enclave make its anchor client key (sealed; it
    /// never leaves), certify it (with --ca-key, or give the certificate your anchor's CA
    /// issued with --client-cert), and write the enclave's first head into etcd. From then on
    /// the enclave signs only what etcd's quorum has counted, and a host that restores an older
    /// copy of the state gets an enclave that refuses to sign.
    ///
    /// Do it right after `walletctl init`, before creating wallets (the enclave refuses
    /// otherwise). Without --ca-key and --client-cert it prints the public key to certify (a
    /// SubjectPublicKeyInfo in PEM) and stops. It also prints the etcdctl commands that give
    /// the certificate's user (its CN) read-write access to the key's prefix and nothing else.
    ///
    /// Re-anchoring (the anchor's data was lost, or you deliberately accept an older state):
    /// --reanchor, with --replace-head HEX naming the head etcd holds now (from `walletctl
    /// status`) if it holds one. The audit log records which head was accepted.
    ///
    /// A group (several enclaves serving the same wallets under one budget): provision the
    /// first member with --shared-prefix before creating wallets. A further member runs a copy
    /// of a member's sealed state, started with `wallet-enclave --await-join`, and joins with
    /// --join and a --key of its own under the same --shared-prefix.
    Provision(ProvisionArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ProvisionArgs {
    /// The anchor CA's certificate (PEM): the only root the enclave will trust for etcd.
    #[arg(long, value_name = "FILE")]
    ca_cert: PathBuf,
    /// The anchor CA's private key (PEM, PKCS#8): certify the enclave's key here. Only where
    /// the CA's operator runs this; otherwise use --client-cert.
    #[arg(long, value_name = "FILE", conflicts_with = "client_cert")]
    ca_key: Option<PathBuf>,
    /// The enclave's client certificate (PEM), issued by the anchor CA for the printed key.
    #[arg(long, value_name = "FILE")]
    client_cert: Option<PathBuf>,
    /// The certificate's common name: the etcd user whose role grants this enclave's prefix
    /// and nothing else (--ca-key). One per enclave: a user shared by two enclaves could write
    /// both anchors.
    #[arg(long, value_name = "CN")]
    client_name: String,
    /// The etcd key of the head, e.g. /x402-wallet/prod-1/anchor/head.
    #[arg(long, value_name = "KEY")]
    key: String,
    /// The name on etcd's server certificates.
    #[arg(long, value_name = "DNS", default_value = "etcd.anchor.test")]
    server_name: String,
    /// How many etcd members (the enclave gets one --anchor-relay each, in this order).
    #[arg(long, value_name = "N", default_value_t = 3)]
    members: u32,
    /// Re-anchor: accept this enclave's state as the head (the anchor lost it, or holds the
    /// head given with --replace-head).
    #[arg(long)]
    reanchor: bool,
    /// With --reanchor: the head etcd holds now (hex: `etcd head` in `walletctl status`), to
    /// replace.
    #[arg(long, value_name = "HEX", requires = "reanchor")]
    replace_head: Option<String>,
    /// With --replace-head: accept this enclave's state even though it is behind (or forked
    /// from) the head it replaces, undoing what was anchored since. Only after a disaster, on
    /// purpose; without it such a re-anchoring is refused (a host routing a certificate renewal
    /// to an old copy of the state gains nothing).
    #[arg(long, requires = "replace_head")]
    accept_older_state: bool,
    /// Share this enclave's budgets with a group under this etcd prefix (ending in "/", e.g.
    /// /x402-wallet/prod/shared/): session caps, window budgets and rate limits are then
    /// charged through grants in etcd, so several enclaves serving the same wallets never
    /// spend more together than the policy allows.
    #[arg(long, value_name = "PREFIX")]
    shared_prefix: Option<String>,
    /// Join a group: this enclave runs a copy of a member's state (started with
    /// `wallet-enclave --await-join`) and takes --key as its own head (absent in etcd) under
    /// the same --shared-prefix. Implies --reanchor.
    #[arg(long, requires = "shared_prefix", conflicts_with_all = ["replace_head", "accept_older_state"])]
    join: bool,
}

fn read(path: &Path, what: &str) -> Result<String, Fail> {
    std::fs::read_to_string(path)
        .map_err(|e| Fail(2, format!("cannot read the {what} {}: {e}", path.display())))
}

/// Issues a client certificate for the SubjectPublicKeyInfo `spki_der` with the CA.
fn issue(ca_cert: &str, ca_key: &str, cn: &str, spki_der: &[u8]) -> Result<String, Fail> {
    let bad = |what: &str, e: rcgen::Error| Fail(2, format!("{what}: {e}"));
    let key = rcgen::KeyPair::from_pem(ca_key).map_err(|e| bad("the CA key", e))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(ca_cert, key).map_err(|e| bad("the CA certificate", e))?;
    let subject =
        rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| bad("the enclave's key", e))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| bad("certificate", e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(2 * 365 * 86_400)).into();
    let cert = params.signed_by(&subject, &issuer).map_err(|e| bad("signing", e))?;
    Ok(cert.pem())
}

fn spki_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

/// The prefix the role grants: the key up to and including its last `/`.
fn prefix_of(key: &str) -> &str {
    key.rfind('/').map_or(key, |i| &key[..=i])
}

/// Runs one `walletctl anchor` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: AnchorCmd) -> Out {
    let AnchorCmd::Provision(a) = c;
    let mut cl = client(url).await?;
    let prepared = cl
        .prepare_anchor(signed(
            home,
            AdminRpc::PrepareAnchor,
            gw::PrepareAnchorRequest { auth: None },
        )?)
        .await?;
    let spki = hex::decode(&prepared.client_public_key)
        .map_err(|_| Fail(1, "the enclave returned no anchor client key".into()))?;
    let ca_pem = read(&a.ca_cert, "anchor CA certificate")?;
    let client_pem = match (&a.ca_key, &a.client_cert) {
        (Some(k), _) => issue(&ca_pem, &read(k, "anchor CA key")?, &a.client_name, &spki)?,
        (None, Some(c)) => read(c, "client certificate")?,
        (None, None) => {
            print!("{}", spki_pem(&spki));
            eprintln!("The enclave's anchor client key (above, an Ed25519 SubjectPublicKeyInfo). Have the anchor CA issue a client certificate for it (CN = the etcd user, extended key usage clientAuth), then run this again with --client-cert FILE.");
            return Ok(());
        }
    };
    // Accepting an older state names the state accepted, as this enclave's signed status shows
    // it: the enclave refuses a request that reaches another copy.
    let (mut ej, mut ea, mut es, mut eh) = (0, 0, 0, String::new());
    if a.accept_older_state {
        let s = cl.get_status(gw::GetStatusRequest {}).await?;
        let info = s.anchor.unwrap_or_default();
        (ej, ea, es, eh) = (
            info.local_journal_records,
            info.local_audit_records,
            info.local_store_seq,
            info.local_audit_hash,
        );
        eprintln!(
            "accepting this enclave's state: {ej} spend records, {ea} audit records, state batch {es} (what was anchored after it is undone)"
        );
    }
    let req = gw::ProvisionAnchorRequest {
        auth: None,
        ca_certificate_pem: ca_pem,
        client_certificate_pem: client_pem.clone(),
        server_name: a.server_name.clone(),
        key: a.key.clone(),
        members: a.members,
        reanchor: a.reanchor || a.join,
        replace_head: a.replace_head.clone().unwrap_or_default(),
        accept_older_state: a.accept_older_state,
        expect_journal_records: ej,
        expect_audit_records: ea,
        expect_store_seq: es,
        expect_audit_hash: eh,
        shared_prefix: a.shared_prefix.clone().unwrap_or_default(),
        join: a.join,
    };
    let info = cl.provision_anchor(signed(home, AdminRpc::ProvisionAnchor, req)?).await?;
    let cert_path = home.join("anchor-client.pem");
    std::fs::write(&cert_path, &client_pem)
        .map_err(|e| Fail(1, format!("cannot write {}: {e}", cert_path.display())))?;
    let pin = serde_json::json!({ "key": info.key, "epoch": info.epoch });
    std::fs::write(home.join("anchor.json"), pin.to_string())
        .map_err(|e| Fail(1, format!("cannot write the anchor pin: {e}")))?;
    println!(
        "anchor {} at epoch {}: {} spend records, {} audit records, state batch {} (etcd revision {})",
        info.key, info.epoch, info.journal_records, info.audit_records, info.store_seq, info.revision
    );
    println!("client certificate: {}", cert_path.display());
    let cn = &a.client_name;
    let prefix = prefix_of(&info.key);
    println!("The anchor's operator scopes this enclave to its prefix (etcd RBAC by certificate CN), once:");
    println!("  etcdctl user add {cn} --no-password");
    println!("  etcdctl role add {cn}");
    println!("  etcdctl role grant-permission {cn} --prefix=true readwrite {prefix}");
    if !info.shared_prefix.is_empty() {
        println!(
            "  etcdctl role grant-permission {cn} --prefix=true readwrite {}",
            info.shared_prefix
        );
    }
    println!("  etcdctl user grant-role {cn} {cn}");
    println!("Start the enclave with one --anchor-relay per member from now on; `walletctl status` shows the anchored head.");
    Ok(())
}

/// What `walletctl status` adds about the anchor; an error when the enclave refuses to sign
/// because of it, or when this machine provisioned an anchor the enclave no longer has (its
/// whole state was rolled back to before provisioning).
pub(crate) fn status_line(home: &Path, anchor: Option<&gw::AnchorInfo>) -> Result<String, Fail> {
    let pinned = std::fs::read_to_string(home.join("anchor.json")).ok();
    let Some(a) = anchor.filter(|a| a.configured) else {
        if let Some(p) = pinned {
            return Err(Fail(5, format!("ROLLED BACK: this machine provisioned a rollback anchor ({p}) but the enclave has none: its whole state was restored from before provisioning. Do not use it; restore the current state.")));
        }
        return Ok("none: no protection against a rollback of the whole state (walletctl anchor provision)".into());
    };
    let mut line = format!(
        "{} · {} epoch {} · head: {} spend records, {} audit records, state batch {} · etcd revision {} · {} rounds since start",
        a.state, a.key, a.epoch, a.journal_records, a.audit_records, a.store_seq, a.revision, a.rounds
    );
    if !a.shared_prefix.is_empty() {
        line.push_str(&format!(
            " · budgets shared under {} as member {}",
            a.shared_prefix, a.member
        ));
    }
    if a.state.starts_with("halted") {
        return Err(Fail(
            5,
            format!(
                "ANCHOR HALTED: {line}\netcd head: {}\n(to accept this enclave's state deliberately: walletctl anchor provision --reanchor --replace-head <etcd head> ...)",
                if a.etcd_head.is_empty() { "(not read)" } else { &a.etcd_head }
            ),
        ));
    }
    Ok(line)
}
