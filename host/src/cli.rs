//! Pieces of `walletctl`: session credential files, durations, and request signing.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signer as _, SigningKey};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use wallet_policy::auth::{admin_message, sign_payment_message, SignPaymentFields};
use wallet_proto::{
    gateway::v1::{AdminAuth, SignPaymentRequest},
    AdminSigned,
};
use zeroize::{Zeroize as _, Zeroizing};

/// Version of the credential file format.
pub const CREDENTIAL_VERSION: u32 = 1;

/// What an agent holds: its session id and the session's private key. Never printed.
pub struct Credential {
    /// Session id.
    pub session_id: String,
    /// Wallet id.
    pub wallet_id: String,
    /// Wallet address (for display).
    pub wallet_address: String,
    /// Gateway URL.
    pub gateway: String,
    /// Unix seconds.
    pub expires_at: u64,
    key: SigningKey,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("session_id", &self.session_id)
            .field("wallet_id", &self.wallet_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct CredentialFile {
    version: u32,
    session_id: String,
    wallet_id: String,
    wallet_address: String,
    gateway: String,
    expires_at: u64,
    /// Ed25519 private key, hex. The file is 0600.
    session_secret: String,
}

impl Drop for CredentialFile {
    fn drop(&mut self) {
        self.session_secret.zeroize();
    }
}

/// A fresh session key pair, made where the admin runs `walletctl`.
#[must_use]
pub fn new_session_key() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

impl Credential {
    /// Assembles a credential.
    #[must_use]
    pub fn new(
        session_id: String,
        wallet_id: String,
        wallet_address: String,
        gateway: String,
        expires_at: u64,
        key: SigningKey,
    ) -> Self {
        Self { session_id, wallet_id, wallet_address, gateway, expires_at, key }
    }

    /// Writes the credential file, owner read/write only (0600); refuses to overwrite.
    ///
    /// # Errors
    /// I/O errors, or the file already exists.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt as _;
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let file = CredentialFile {
            version: CREDENTIAL_VERSION,
            session_id: self.session_id.clone(),
            wallet_id: self.wallet_id.clone(),
            wallet_address: self.wallet_address.clone(),
            gateway: self.gateway.clone(),
            expires_at: self.expires_at,
            session_secret: hex::encode(self.key.to_bytes()),
        };
        let body = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?);
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()
    }

    /// Reads a credential file.
    ///
    /// # Errors
    /// A sentence saying what is wrong (never the secret).
    pub fn read(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = fs::metadata(path)
            .map_err(|e| format!("cannot read session credential {}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "session credential {} is readable by others; run: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
        let bytes = Zeroizing::new(
            fs::read(path)
                .map_err(|e| format!("cannot read session credential {}: {e}", path.display()))?,
        );
        let file: CredentialFile = serde_json::from_slice(&bytes)
            .map_err(|_| format!("{} is not a walletctl session credential", path.display()))?;
        if file.version != CREDENTIAL_VERSION {
            return Err(format!(
                "{} has credential version {}, this walletctl reads {CREDENTIAL_VERSION}",
                path.display(),
                file.version
            ));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(&file.session_secret, secret.as_mut())
            .map_err(|_| format!("{} has a malformed session secret", path.display()))?;
        let key = SigningKey::from_bytes(&secret);
        Ok(Self {
            session_id: file.session_id.clone(),
            wallet_id: file.wallet_id.clone(),
            wallet_address: file.wallet_address.clone(),
            gateway: file.gateway.clone(),
            expires_at: file.expires_at,
            key,
        })
    }

    /// Builds a `SignPaymentRequest` signed by the session key, fresh (timestamp, random nonce).
    #[must_use]
    pub fn sign_request(
        &self,
        payment_required: &str,
        preferred_network: &str,
        preferred_asset: &str,
        idempotency_key: &str,
        now_ms: u64,
    ) -> SignPaymentRequest {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let mut r = SignPaymentRequest {
            session_id: self.session_id.clone(),
            payment_required: payment_required.to_owned(),
            preferred_network: preferred_network.to_owned(),
            preferred_asset: preferred_asset.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
            timestamp_ms: now_ms,
            request_nonce: nonce.to_vec(),
            signature: Vec::new(),
        };
        let msg = sign_payment_message(&SignPaymentFields {
            session_id: &r.session_id,
            payment_required: &r.payment_required,
            preferred_network: &r.preferred_network,
            preferred_asset: &r.preferred_asset,
            idempotency_key: &r.idempotency_key,
            timestamp_ms: r.timestamp_ms,
            request_nonce: &r.request_nonce,
        });
        r.signature = self.key.sign(&msg).to_bytes().to_vec();
        r
    }
}

/// The admin's signing key: made by `walletctl init` where the admin runs it, kept in a 0600
/// file (or given in `WALLET_ADMIN_KEY` as hex). Only its public key reaches the enclave.
pub struct AdminKey {
    key: SigningKey,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKey")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl AdminKey {
    /// A new random key.
    #[must_use]
    pub fn generate() -> Self {
        Self { key: SigningKey::generate(&mut OsRng) }
    }

    /// From 32 secret bytes (hex).
    ///
    /// # Errors
    /// A sentence (never the secret) when the text is not 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), secret.as_mut())
            .map_err(|_| "admin key must be 64 hex digits".to_owned())?;
        Ok(Self { key: SigningKey::from_bytes(&secret) })
    }

    /// Reads the key file (must be 0600).
    ///
    /// # Errors
    /// A sentence naming the file.
    pub fn read(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = fs::metadata(path)
            .map_err(|e| format!("no admin key at {} ({e}); run walletctl init", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "admin key {} is readable by others; run: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .map_err(|e| format!("cannot read admin key {}: {e}", path.display()))?,
        );
        Self::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the key file (0600), refusing to overwrite.
    ///
    /// # Errors
    /// I/O errors, or the file exists.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt as _;
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let text = Zeroizing::new(format!("{}\n", hex::encode(self.key.to_bytes())));
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    }

    /// The public key.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key, hex.
    #[must_use]
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    /// Signs a state-changing request for `rpc` at the enclave identified by `enclave_id` (its
    /// audit public key), fresh (timestamp, random nonce).
    pub fn sign<R: AdminSigned>(&self, enclave_id: &[u8], rpc: &str, req: &mut R, now_ms: u64) {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let msg = admin_message(enclave_id, rpc, now_ms, &nonce, &req.unsigned_bytes());
        *req.auth_mut() = Some(AdminAuth {
            public_key: self.public_key().to_vec(),
            timestamp_ms: now_ms,
            nonce: nonce.to_vec(),
            signature: self.key.sign(&msg).to_bytes().to_vec(),
        });
    }
}

/// Parses a duration: `90s`, `15m`, `24h`, `7d`, or plain seconds (the policy document's own
/// parser, so the CLI and the enclave agree).
pub use wallet_policy::document::parse_duration;

/// A random idempotency key (`pay_` + 32 hex).
#[must_use]
pub fn random_idempotency_key() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    format!("pay_{}", hex::encode(b))
}

/// Strips whitespace and an optional `PAYMENT-REQUIRED:` prefix from what was pasted on stdin.
#[must_use]
pub fn clean_header_input(input: &str) -> &str {
    let t = input.trim();
    match t.split_once(':') {
        Some((name, rest)) if name.trim().eq_ignore_ascii_case("payment-required") => rest.trim(),
        _ => t,
    }
}

/// Default home of walletctl: `$WALLETCTL_HOME`, else `$XDG_CONFIG_HOME/agent-wallet`, else
/// `~/.config/agent-wallet`.
#[must_use]
pub fn default_home() -> PathBuf {
    if let Some(d) = std::env::var_os("WALLETCTL_HOME") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(d).join("agent-wallet");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".agent-wallet"),
        |h| PathBuf::from(h).join(".config/agent-wallet"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_key_file_round_trip_is_0600_and_redacted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.key");
        let k = AdminKey::generate();
        k.write(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(k.write(&p).is_err(), "never overwrites a key");
        let back = AdminKey::read(&p).unwrap();
        assert_eq!(back.public_key(), k.public_key());
        let secret = fs::read_to_string(&p).unwrap();
        assert!(!format!("{back:?}").contains(secret.trim()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(AdminKey::read(&p).unwrap_err().contains("chmod 600"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        for bad in ["", "h", "-1h", "1.5h", "0", "1w", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_input() {
        assert_eq!(clean_header_input("  abc=\n"), "abc=");
        assert_eq!(clean_header_input("PAYMENT-REQUIRED: abc="), "abc=");
        assert_eq!(clean_header_input("payment-required:abc"), "abc");
    }

    #[test]
    fn credential_file_round_trip_is_0600_and_redacted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/agent.json");
        let key = new_session_key();
        let secret_hex = hex::encode(key.to_bytes());
        let c = Credential::new(
            "s_1".into(),
            "w_1".into(),
            "0xabc".into(),
            "http://127.0.0.1:7402".into(),
            5,
            key,
        );
        c.write(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(c.write(&p).is_err(), "never overwrites a credential");
        let back = Credential::read(&p).unwrap();
        assert_eq!(back.session_id, "s_1");
        assert!(!format!("{back:?}").contains(&secret_hex));
        let r = back.sign_request("hdr", "", "", "k", 1);
        assert_eq!(r.signature.len(), 64);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Credential::read(&p).unwrap_err();
        assert!(err.contains("chmod 600") && !err.contains(&secret_hex));
    }
}
