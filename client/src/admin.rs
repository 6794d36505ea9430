//! The admin's signing key. Every state-changing request carries an `AdminAuth` made here: an
//! Ed25519 signature over [`AdminSigned::signed_message`] (the enclave's identity, the
//! [`AdminRpc`], a timestamp, a nonce and the request without `auth`), verified in the enclave.

use std::{fs, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use ed25519_dalek::{Signer as _, SigningKey};
use rand_core::{OsRng, RngCore as _};
use wallet_proto::{gateway::v1::AdminAuth, AdminRpc, AdminSigned};
use zeroize::Zeroizing;

/// The admin's signing key: made by `walletctl init` where the admin runs it, kept in a 0600
/// file (or given in `WALLET_ADMIN_KEY` as hex). Only its public key reaches the enclave.
/// `Debug` prints the public key only; the secret is zeroized on drop.
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
        let meta = fs::metadata(path)
            .map_err(|e| format!("no admin key at {} ({e}); run walletctl init", path.display()))?;
        crate::check_owner_only(path, "admin key", &meta)?;
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
        crate::create_parent(path)?;
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
    /// identity public key, pinned by `walletctl init`), fresh (`now_ms`, a random nonce): fills
    /// in `req`'s `auth`.
    pub fn sign<R: AdminSigned>(&self, enclave_id: &[u8], rpc: AdminRpc, req: &mut R, now_ms: u64) {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let msg = req.signed_message(enclave_id, rpc, now_ms, &nonce);
        *req.auth_mut() = Some(AdminAuth {
            public_key: self.public_key().to_vec(),
            timestamp_ms: now_ms,
            nonce: nonce.to_vec(),
            signature: self.key.sign(&msg).to_bytes().to_vec(),
        });
    }

    /// [`Self::sign`], taking and returning the request.
    #[must_use]
    pub fn signed<R: AdminSigned>(
        &self,
        enclave_id: &[u8],
        rpc: AdminRpc,
        mut req: R,
        now_ms: u64,
    ) -> R {
        self.sign(enclave_id, rpc, &mut req, now_ms);
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier as _;
    use wallet_proto::gateway::v1::KytRequest;

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
        assert!(AdminKey::from_hex("zz").unwrap_err().contains("64 hex digits"));
    }

    #[test]
    fn admin_signatures_bind_the_rpc_and_the_enclave() {
        let k = AdminKey::generate();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&k.public_key()).unwrap();
        let req = k.signed(
            b"enclave",
            AdminRpc::AddKyt,
            KytRequest { addresses: vec!["0x1".into()], auth: None },
            7,
        );
        let auth = req.auth.clone().unwrap();
        assert_eq!((auth.timestamp_ms, auth.public_key.as_slice()), (7, &k.public_key()[..]));
        let sig = ed25519_dalek::Signature::from_slice(&auth.signature).unwrap();
        let msg = |rpc, id: &[u8]| req.signed_message(id, rpc, 7, &auth.nonce);
        vk.verify(&msg(AdminRpc::AddKyt, b"enclave"), &sig).unwrap();
        assert!(vk.verify(&msg(AdminRpc::RemoveKyt, b"enclave"), &sig).is_err());
        assert!(vk.verify(&msg(AdminRpc::AddKyt, b"other"), &sig).is_err());
    }
}
