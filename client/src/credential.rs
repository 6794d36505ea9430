//! The agent's session credential: a 0600 JSON file with the session id and the session's
//! Ed25519 private key, written where the admin runs `walletctl session issue`. The enclave only
//! ever holds the public key.

use std::{fs, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use ed25519_dalek::{Signer as _, SigningKey};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use wallet_proto::{auth::sign_payment_message, gateway::v1::SignPaymentRequest};
use zeroize::{Zeroize as _, Zeroizing};

/// Version of the credential file format.
pub const CREDENTIAL_VERSION: u32 = 1;

/// What an agent holds: its session id and the session's private key. `Debug` prints the ids
/// only; the key is zeroized when the credential is dropped.
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
    /// The enclave's identity (Ed25519 public key, hex) pinned when the session was issued:
    /// answers are checked against it. Empty in credentials issued before signed answers.
    pub enclave_id: String,
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
    /// The enclave's identity, hex (absent in older files).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    enclave_id: String,
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
        Self {
            session_id,
            wallet_id,
            wallet_address,
            gateway,
            expires_at,
            enclave_id: String::new(),
            key,
        }
    }

    /// Pins the enclave identity (hex Ed25519 public key) whose signed answers this credential
    /// accepts.
    #[must_use]
    pub fn with_enclave_id(mut self, enclave_id: &str) -> Self {
        enclave_id.trim().clone_into(&mut self.enclave_id);
        self
    }

    /// The session's public key (what the enclave holds).
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Writes the credential file, owner read/write only (0600); refuses to overwrite.
    ///
    /// # Errors
    /// I/O errors, or the file already exists.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::create_parent(path)?;
        let file = CredentialFile {
            version: CREDENTIAL_VERSION,
            session_id: self.session_id.clone(),
            wallet_id: self.wallet_id.clone(),
            wallet_address: self.wallet_address.clone(),
            gateway: self.gateway.clone(),
            expires_at: self.expires_at,
            enclave_id: self.enclave_id.clone(),
            session_secret: hex::encode(self.key.to_bytes()),
        };
        let body = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?);
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()
    }

    /// Reads a credential file (it must be 0600).
    ///
    /// # Errors
    /// A sentence saying what is wrong (never the secret).
    pub fn read(path: &Path) -> Result<Self, String> {
        let meta = fs::metadata(path)
            .map_err(|e| format!("cannot read session credential {}: {e}", path.display()))?;
        crate::check_owner_only(path, "session credential", &meta)?;
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
            enclave_id: file.enclave_id.clone(),
            key,
        })
    }

    /// Builds a `SignPaymentRequest` signed by the session key over
    /// [`sign_payment_message`], fresh (the given timestamp, a random 16-byte nonce).
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
        r.signature = self.key.sign(&sign_payment_message(&r)).to_bytes().to_vec();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier as _;

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
        assert_eq!(back.public_key(), c.public_key());
        assert!(!format!("{back:?}").contains(&secret_hex));
        let r = back.sign_request("hdr", "", "", "k", 1);
        assert_eq!(r.signature.len(), 64);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Credential::read(&p).unwrap_err();
        assert!(err.contains("chmod 600") && !err.contains(&secret_hex));
    }

    #[test]
    fn payment_requests_verify_over_the_canonical_message() {
        let key = new_session_key();
        let vk = key.verifying_key();
        let c = Credential::new("s".into(), "w".into(), String::new(), String::new(), 0, key);
        let r = c.sign_request("hdr", "eip155:8453", "", "idem", 42);
        assert_eq!((r.timestamp_ms, r.request_nonce.len()), (42, 16));
        let sig = ed25519_dalek::Signature::from_slice(&r.signature).unwrap();
        vk.verify(&sign_payment_message(&r), &sig).unwrap();
        let altered = SignPaymentRequest { preferred_network: String::new(), ..r };
        assert!(vk.verify(&sign_payment_message(&altered), &sig).is_err());
    }
}
