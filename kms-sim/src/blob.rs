//! kms-sim's own `CiphertextBlob` format (KMS's is opaque and different):
//!
//! ```text
//! "KSB1" | key id length (1 byte) | key id (ASCII) | nonce (12) | AES-256-GCM ciphertext + tag
//! ```
//!
//! sealed under the key's 32-byte secret, with additional data = the header (magic, length,
//! key id) followed by the EncryptionContext, canonical: its entries sorted by key, each as
//! `u32-be length | key | u32-be length | value`. A different context, key or any altered byte
//! fails like KMS's `InvalidCiphertextException`.

use std::collections::BTreeMap;

use aes_gcm::{aead::Aead as _, aead::Payload, Aes256Gcm, KeyInit as _, Nonce};
use rand_core::{OsRng, RngCore as _};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"KSB1";

/// The key id a blob names, and where its ciphertext starts.
fn header(blob: &[u8]) -> Option<(&str, usize)> {
    let rest = blob.strip_prefix(MAGIC)?;
    let (&len, rest) = rest.split_first()?;
    let id = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
    Some((id, MAGIC.len() + 1 + usize::from(len)))
}

/// The key id a blob was made under, if it is one of ours at all.
#[must_use]
pub fn key_id(blob: &[u8]) -> Option<&str> {
    header(blob).map(|(id, _)| id)
}

fn aad(head: &[u8], context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = head.to_vec();
    for (k, v) in context {
        for s in [k, v] {
            out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// Seals `plaintext` under `secret` for key `key_id` and `context`.
///
/// # Panics
/// When `key_id` is longer than 255 bytes (the sim's key ids are 36).
#[must_use]
pub fn seal(
    secret: &[u8; 32],
    key_id: &str,
    plaintext: &[u8],
    context: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut head = MAGIC.to_vec();
    head.push(u8::try_from(key_id.len()).expect("key ids are short"));
    head.extend_from_slice(key_id.as_bytes());
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(secret.into());
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad(&head, context) })
        .expect("AES-GCM encryption of a small message");
    let mut blob = head;
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ct);
    blob
}

/// Opens a blob made by [`seal`] with the same secret and context.
#[must_use]
pub fn open(
    secret: &[u8; 32],
    blob: &[u8],
    context: &BTreeMap<String, String>,
) -> Option<Zeroizing<Vec<u8>>> {
    let (_, start) = header(blob)?;
    let nonce = blob.get(start..start + 12)?;
    let ct = blob.get(start + 12..)?;
    let cipher = Aes256Gcm::new(secret.into());
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad(&blob[..start], context) })
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_and_context_binding() {
        let secret = [7u8; 32];
        let ctx = BTreeMap::from([("a".to_owned(), "1".to_owned())]);
        let blob = seal(&secret, "key-1", b"data key", &ctx);
        assert_eq!(key_id(&blob), Some("key-1"));
        assert_eq!(open(&secret, &blob, &ctx).unwrap().as_slice(), b"data key");
        // Another context (value, extra entry, none), another secret, any flipped byte.
        let other = BTreeMap::from([("a".to_owned(), "2".to_owned())]);
        assert!(open(&secret, &blob, &other).is_none());
        let mut more = ctx.clone();
        more.insert("b".into(), String::new());
        assert!(open(&secret, &blob, &more).is_none());
        assert!(open(&secret, &blob, &BTreeMap::new()).is_none());
        assert!(open(&[8u8; 32], &blob, &ctx).is_none());
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(open(&secret, &bad, &ctx).is_none(), "byte {i}");
        }
        for n in 0..blob.len() {
            assert!(open(&secret, &blob[..n], &ctx).is_none());
        }
    }
}
