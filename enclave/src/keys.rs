//! Wallet keys: the only module that touches secp256k1 private key bytes.
//!
//! `k256::ecdsa::SigningKey` zeroizes itself on drop. Raw bytes only exist in `Zeroizing`
//! buffers while being sealed or unsealed. No `Debug`, `Clone` or `Serialize` exposes a key:
//! `Debug` prints the address only.

use alloy_primitives::{keccak256, Address, B256};
use k256::ecdsa::SigningKey;
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

/// A wallet's secp256k1 signing key and its Ethereum address.
pub struct WalletKey {
    key: SigningKey,
    address: Address,
}

impl std::fmt::Debug for WalletKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletKey").field("address", &self.address).finish_non_exhaustive()
    }
}

/// Key failures. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Stored bytes are not a valid scalar.
    #[error("stored key is not a valid secp256k1 scalar")]
    Invalid,
    /// Signing failed (should not happen with a valid key).
    #[error("signing failed")]
    Sign,
}

impl WalletKey {
    /// Generates a key from a cryptographically secure RNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::from_key(SigningKey::random(rng))
    }

    fn from_key(key: SigningKey) -> Self {
        let point = key.verifying_key().to_encoded_point(false);
        let hash = keccak256(&point.as_bytes()[1..]);
        let address = Address::from_slice(&hash[12..]);
        Self { key, address }
    }

    /// From the 32-byte scalar (as unsealed).
    ///
    /// # Errors
    /// [`KeyError::Invalid`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        SigningKey::from_slice(bytes).map(Self::from_key).map_err(|_| KeyError::Invalid)
    }

    /// The scalar, for sealing only.
    #[must_use]
    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.to_bytes().to_vec())
    }

    /// The Ethereum address.
    #[must_use]
    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs an EIP-712 digest the enclave computed itself from policy-checked fields.
    /// Returns `r ‖ s ‖ v` with `v = 27 + recovery id`. Deliberately not exposed over the wire.
    ///
    /// # Errors
    /// [`KeyError::Sign`].
    pub fn sign_digest(&self, digest: &B256) -> Result<[u8; 65], KeyError> {
        let (sig, recid) =
            self.key.sign_prehash_recoverable(digest.as_slice()).map_err(|_| KeyError::Sign)?;
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&sig.to_bytes());
        out[64] = 27 + recid.to_byte();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardhat_key_address_and_redacted_debug() {
        let secret =
            hex_literal("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80");
        let k = WalletKey::from_bytes(&secret).unwrap();
        assert_eq!(k.address().to_checksum(None), "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
        let dbg = format!("{k:?}");
        assert!(!dbg.to_lowercase().contains("ac0974"), "Debug must not show the key");
        assert_eq!(k.secret_bytes().as_slice(), secret.as_slice());
    }

    #[test]
    fn signature_recovers_to_the_address() {
        let k = WalletKey::generate(&mut rand_core::OsRng);
        let digest = keccak256(b"x");
        let sig = k.sign_digest(&digest).unwrap();
        assert!(sig[64] == 27 || sig[64] == 28);
        let rs = k256::ecdsa::Signature::from_slice(&sig[..64]).unwrap();
        let recid = k256::ecdsa::RecoveryId::from_byte(sig[64] - 27).unwrap();
        let vk =
            k256::ecdsa::VerifyingKey::recover_from_prehash(digest.as_slice(), &rs, recid).unwrap();
        let point = vk.to_encoded_point(false);
        assert_eq!(Address::from_slice(&keccak256(&point.as_bytes()[1..])[12..]), k.address());
    }

    fn hex_literal(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }
}
