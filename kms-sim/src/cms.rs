//! `CiphertextForRecipient`: a CMS (RFC 5652) `ContentInfo` / `EnvelopedData` to an RSA public
//! key, as KMS makes it: one `KeyTransRecipientInfo` (rid = subjectKeyIdentifier, RSAES-OAEP
//! with SHA-256 and MGF1-SHA-256), content AES-256-CBC under a fresh key.
//!
//! Encoded as BER with indefinite lengths and a chunked `encryptedContent` by default
//! ([`Encoding::Ber`]), the way real KMS reportedly sends it, so the enclave's BER path runs in
//! every end-to-end test; [`Encoding::Der`] on request.

use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut as _, KeyIvInit as _};
use rand_core::{OsRng, RngCore as _};
use rsa::{pkcs8::DecodePublicKey as _, traits::PublicKeyParts as _, Oaep, RsaPublicKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The smallest recipient key accepted, bits.
pub const MIN_RSA_BITS: usize = 2048;

/// How the envelope is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Definite lengths, primitive strings.
    Der,
    /// Indefinite lengths for constructed elements, the content in 16-byte chunks.
    Ber,
}

const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

/// A definite-length element.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A constructed element of `children`, definite (DER) or indefinite (BER).
fn cons(tag: u8, children: &[Vec<u8>], enc: Encoding) -> Vec<u8> {
    let body = children.concat();
    match enc {
        Encoding::Der => tlv(tag, &body),
        Encoding::Ber => [vec![tag, 0x80], body, vec![0, 0]].concat(),
    }
}

fn algorithm(oid: &[u8], params: Option<Vec<u8>>) -> Vec<u8> {
    let mut children = vec![tlv(0x06, oid)];
    children.extend(params);
    tlv(0x30, &children.concat())
}

/// Why an envelope cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The attested public key is not an RSA `SubjectPublicKeyInfo` of at least 2048 bits.
    #[error("the attestation document's public_key is not an RSA key of at least 2048 bits")]
    BadPublicKey,
}

/// The envelope of `content` to `public_key_der` (DER `SubjectPublicKeyInfo`, RSA).
///
/// # Errors
/// [`EnvelopeError::BadPublicKey`].
pub fn envelope(
    public_key_der: &[u8],
    content: &[u8],
    enc: Encoding,
) -> Result<Vec<u8>, EnvelopeError> {
    let key = RsaPublicKey::from_public_key_der(public_key_der)
        .map_err(|_| EnvelopeError::BadPublicKey)?;
    if key.size() * 8 < MIN_RSA_BITS {
        return Err(EnvelopeError::BadPublicKey);
    }
    let mut cek = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(cek.as_mut());
    let mut iv = [0u8; 16];
    OsRng.fill_bytes(&mut iv);
    let encrypted_key = key
        .encrypt(&mut OsRng, Oaep::new::<Sha256>(), cek.as_ref())
        .map_err(|_| EnvelopeError::BadPublicKey)?;
    let ciphertext = cbc::Encryptor::<aes::Aes256>::new(cek.as_ref().into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(content);
    // rid: a subjectKeyIdentifier (the first 20 bytes of SHA-256 of the key: the enclave does not
    // compare it; it opens the one envelope it asked for).
    let ski = &Sha256::digest(public_key_der)[..20];
    let oaep_params = tlv(
        0x30,
        &[
            tlv(0xa0, &algorithm(OID_SHA256, None)),
            tlv(0xa1, &algorithm(OID_MGF1, Some(algorithm(OID_SHA256, None)))),
        ]
        .concat(),
    );
    let ktri = cons(
        0x30,
        &[
            tlv(0x02, &[2]),
            tlv(0x80, ski),
            algorithm(OID_RSAES_OAEP, Some(oaep_params)),
            tlv(0x04, &encrypted_key),
        ],
        enc,
    );
    let content_field = match enc {
        Encoding::Der => tlv(0x80, &ciphertext),
        Encoding::Ber => {
            let chunks: Vec<Vec<u8>> = ciphertext.chunks(16).map(|c| tlv(0x04, c)).collect();
            cons(0xa0, &chunks, enc)
        }
    };
    let eci = cons(
        0x30,
        &[tlv(0x06, OID_DATA), algorithm(OID_AES256_CBC, Some(tlv(0x04, &iv))), content_field],
        enc,
    );
    let enveloped = cons(0x30, &[tlv(0x02, &[2]), cons(0x31, &[ktri], enc), eci], enc);
    Ok(cons(0x30, &[tlv(0x06, OID_ENVELOPED_DATA), cons(0xa0, &[enveloped], enc)], enc))
}
