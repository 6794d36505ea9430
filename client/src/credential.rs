//! The agent's session credential: a 0600 JSON file with the session id and the session's
//! Ed25519 private key, written where the admin runs `walletctl session issue`. The enclave only
//! ever holds the public key.
//!
//! The credential signs the agent's requests, each fresh (a timestamp and a random nonce, usable
//! once) and under its RPC's own domain tag: [`Credential::sign_request`] (a payment),
//! [`Credential::budget_request`], [`Credential::payments_request`] and
//! [`Credential::preview_request`] (read-only).

use std::{fs, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use ed25519_dalek::{Signer as _, SigningKey};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use wallet_proto::{
    gateway::v1::{
        GetBudgetRequest, ListPaymentsRequest, PreviewPaymentRequest, SignPaymentRequest,
    },
    SessionSigned,
};
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

    /// Signs `r` with the session key over its [`SessionSigned::signed_message`], after filling
    /// in the session id, `now_ms` and a fresh random 16-byte nonce.
    fn signed<R: SessionSigned + SessionFields>(&self, mut r: R, now_ms: u64) -> R {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        r.set(self.session_id.clone(), now_ms, nonce.to_vec());
        *r.signature_mut() = self.key.sign(&r.signed_message()).to_bytes().to_vec();
        r
    }

    /// A signed `GetBudgetRequest` (for [`GatewayClient::get_budget`](crate::GatewayClient::get_budget)):
    /// this session's budget as the enclave enforces it. `now_ms` is the time of signing (unix
    /// milliseconds, [`now_ms`](crate::now_ms)); the enclave refuses it 120 s later, and once it
    /// was used.
    #[must_use]
    pub fn budget_request(&self, now_ms: u64) -> GetBudgetRequest {
        self.signed(GetBudgetRequest::default(), now_ms)
    }

    /// A signed `ListPaymentsRequest` (for
    /// [`GatewayClient::list_payments`](crate::GatewayClient::list_payments)): this session's
    /// newest `limit` payments, denials and holds (0: 20; at most 200).
    #[must_use]
    pub fn payments_request(&self, limit: u32, now_ms: u64) -> ListPaymentsRequest {
        self.signed(ListPaymentsRequest { limit, ..Default::default() }, now_ms)
    }

    /// A signed `PreviewPaymentRequest` (for
    /// [`GatewayClient::preview_payment`](crate::GatewayClient::preview_payment)): what a
    /// payment of `payment_required` (the `PAYMENT-REQUIRED` value as received) with these
    /// preferences (empty: none) would do, without paying.
    #[must_use]
    pub fn preview_request(
        &self,
        payment_required: &str,
        preferred_network: &str,
        preferred_asset: &str,
        now_ms: u64,
    ) -> PreviewPaymentRequest {
        self.signed(
            PreviewPaymentRequest {
                payment_required: payment_required.to_owned(),
                preferred_network: preferred_network.to_owned(),
                preferred_asset: preferred_asset.to_owned(),
                ..Default::default()
            },
            now_ms,
        )
    }

    /// Builds a `SignPaymentRequest` signed by the session key over
    /// [`wallet_proto::auth::sign_payment_message`], fresh (the given timestamp, a random
    /// 16-byte nonce).
    #[must_use]
    pub fn sign_request(
        &self,
        payment_required: &str,
        preferred_network: &str,
        preferred_asset: &str,
        idempotency_key: &str,
        now_ms: u64,
    ) -> SignPaymentRequest {
        self.signed(
            SignPaymentRequest {
                payment_required: payment_required.to_owned(),
                preferred_network: preferred_network.to_owned(),
                preferred_asset: preferred_asset.to_owned(),
                idempotency_key: idempotency_key.to_owned(),
                ..Default::default()
            },
            now_ms,
        )
    }
}

/// The fields every session-signed request carries, filled in before signing.
trait SessionFields {
    fn set(&mut self, session_id: String, timestamp_ms: u64, request_nonce: Vec<u8>);
}

macro_rules! session_fields {
    ($($t:ty),*) => {$(
        impl SessionFields for $t {
            fn set(&mut self, session_id: String, timestamp_ms: u64, request_nonce: Vec<u8>) {
                self.session_id = session_id;
                self.timestamp_ms = timestamp_ms;
                self.request_nonce = request_nonce;
            }
        }
    )*};
}

session_fields!(SignPaymentRequest, GetBudgetRequest, ListPaymentsRequest, PreviewPaymentRequest);

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier as _;
    use wallet_proto::auth::sign_payment_message;

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
    fn read_requests_verify_over_their_own_messages_only() {
        use wallet_proto::auth::{get_budget_message, list_payments_message};
        let key = new_session_key();
        let vk = key.verifying_key();
        let c = Credential::new("s".into(), "w".into(), String::new(), String::new(), 0, key);
        let b = c.budget_request(7);
        let l = c.payments_request(5, 7);
        let p = c.preview_request("hdr", "eip155:84532", "", 7);
        for r in [&b.request_nonce, &l.request_nonce, &p.request_nonce] {
            assert_eq!(r.len(), 16);
        }
        assert_eq!((b.session_id.as_str(), b.timestamp_ms, l.limit), ("s", 7, 5));
        let sig = |s: &[u8]| ed25519_dalek::Signature::from_slice(s).unwrap();
        vk.verify(&b.signed_message(), &sig(&b.signature)).unwrap();
        vk.verify(&l.signed_message(), &sig(&l.signature)).unwrap();
        vk.verify(&p.signed_message(), &sig(&p.signature)).unwrap();
        // A budget signature is not a list signature, even over the same session and nonce.
        let as_list = ListPaymentsRequest {
            session_id: b.session_id.clone(),
            limit: 0,
            timestamp_ms: b.timestamp_ms,
            request_nonce: b.request_nonce.clone(),
            signature: b.signature.clone(),
        };
        assert!(vk.verify(&list_payments_message(&as_list), &sig(&b.signature)).is_err());
        assert!(vk.verify(&get_budget_message(&b), &sig(&b.signature)).is_ok());
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
