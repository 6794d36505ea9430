//! Opening KMS's `CiphertextForRecipient`: a CMS (RFC 5652) `ContentInfo` holding an
//! `EnvelopedData` with one `KeyTransRecipientInfo` (RSAES-OAEP, SHA-256, MGF1-SHA-256) and
//! content encrypted with AES-256-CBC.
//!
//! KMS reportedly sends BER with indefinite lengths (and a streamed, chunked
//! `encryptedContent`), so this reads BER: definite and indefinite lengths, constructed
//! (chunked) OCTET STRINGs. It is a small reader of exactly this structure, not a general
//! ASN.1 library: the RustCrypto `cms` crate reads DER only (`der` 0.7 refuses indefinite
//! lengths), and this structure is eight fields deep. Bounds: input at most [`MAX_INPUT`] bytes,
//! nesting at most [`MAX_DEPTH`], lengths at most 4 bytes, single-byte tags only. Every path
//! returns an error rather than panicking (the truncation and corruption tests below).
//!
//! What is checked: the content type (envelopedData), exactly one recipient, of the key
//! transport kind, with RSAES-OAEP whose hash and MGF1 hash are SHA-256 and whose label is
//! empty (no SHA-1 defaults), the content type (id-data), the AES-256-CBC algorithm and a
//! 16-byte IV. The recipient identifier is not compared: the enclave made one key and this is
//! the only envelope it opens with it; a wrong key fails OAEP.
//!
//! CMS EnvelopedData has no integrity of its own (AES-CBC without a MAC): whoever could alter
//! the envelope could flip bits of the key inside. Its integrity is the TLS session's, which
//! ends in the enclave and authenticates KMS; the host only ever relays ciphertext.

use std::borrow::Cow;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut as _, KeyIvInit as _};
use rsa::{Oaep, RsaPrivateKey};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The largest envelope read, bytes (KMS's for a 32-byte key is about 500).
pub(crate) const MAX_INPUT: usize = 16 * 1024;
/// The deepest nesting read (the structure needs 10).
pub(crate) const MAX_DEPTH: usize = 16;
/// The largest plaintext returned, bytes.
const MAX_CONTENT: usize = 4096;

// DER contents of the object identifiers (RFC 5652, RFC 8017, NIST CSOR).
/// id-envelopedData, 1.2.840.113549.1.7.3.
const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
/// id-data, 1.2.840.113549.1.7.1.
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
/// id-RSAES-OAEP, 1.2.840.113549.1.1.7.
const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
/// id-mgf1, 1.2.840.113549.1.1.8.
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
/// id-pSpecified, 1.2.840.113549.1.1.9.
const OID_P_SPECIFIED: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x09];
/// id-sha256, 2.16.840.1.101.3.4.2.1.
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
/// id-aes256-CBC, 2.16.840.1.101.3.4.1.42.
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

// Tags (single byte: class, constructed bit, number).
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const CONSTRUCTED: u8 = 0x20;
/// `[n]` context-specific, constructed.
const fn ctx_cons(n: u8) -> u8 {
    0xa0 | n
}
/// `[n]` context-specific, primitive.
const fn ctx_prim(n: u8) -> u8 {
    0x80 | n
}

/// Why an envelope was refused. The messages name the field; they never contain key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmsError {
    /// Not well-formed BER, or past a bound.
    #[error("malformed CMS: {0}")]
    Malformed(&'static str),
    /// Well-formed, but not the envelope KMS sends (algorithm, version, structure).
    #[error("unsupported CMS envelope: {0}")]
    Unsupported(&'static str),
    /// RSAES-OAEP or AES-CBC failed: not for this key, or altered.
    #[error("the envelope does not open with this enclave's key ({0})")]
    Decrypt(&'static str),
}

/// One BER element: its tag and its contents (for an indefinite length, without the
/// end-of-contents octets).
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
    depth: usize,
}

/// Reads the element at the start of `input`; returns it and what follows.
fn read_tlv(input: &[u8], depth: usize) -> Result<(Tlv<'_>, &[u8]), CmsError> {
    if depth > MAX_DEPTH {
        return Err(CmsError::Malformed("nested too deeply"));
    }
    let (&tag, rest) = input.split_first().ok_or(CmsError::Malformed("truncated (tag)"))?;
    if tag & 0x1f == 0x1f {
        return Err(CmsError::Malformed("multi-byte tag"));
    }
    if tag == 0 {
        return Err(CmsError::Malformed("unexpected end-of-contents"));
    }
    let (&first, rest) = rest.split_first().ok_or(CmsError::Malformed("truncated (length)"))?;
    if first == 0x80 {
        // Indefinite length: constructed only; the contents run to the matching 00 00.
        if tag & CONSTRUCTED == 0 {
            return Err(CmsError::Malformed("indefinite length on a primitive element"));
        }
        let mut cursor = rest;
        loop {
            if let [0, 0, after @ ..] = cursor {
                let body = &rest[..rest.len() - cursor.len()];
                return Ok((Tlv { tag, body, depth }, after));
            }
            if cursor.is_empty() {
                return Err(CmsError::Malformed("truncated (no end-of-contents)"));
            }
            let (_, after) = read_tlv(cursor, depth + 1)?;
            cursor = after;
        }
    }
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n > 4 {
            return Err(CmsError::Malformed("length of more than 4 bytes"));
        }
        if rest.len() < n {
            return Err(CmsError::Malformed("truncated (long length)"));
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if len > rest.len() {
        return Err(CmsError::Malformed("truncated (contents)"));
    }
    Ok((Tlv { tag, body: &rest[..len], depth }, &rest[len..]))
}

/// The elements inside a constructed element, in order.
#[derive(Debug)]
struct Children<'a> {
    rest: &'a [u8],
    depth: usize,
}

impl<'a> Children<'a> {
    fn next(&mut self) -> Result<Option<Tlv<'a>>, CmsError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (tlv, rest) = read_tlv(self.rest, self.depth)?;
        self.rest = rest;
        Ok(Some(tlv))
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element, which must have tag `tag`.
    fn expect(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, CmsError> {
        match self.next()? {
            Some(t) if t.tag == tag => Ok(t),
            _ => Err(CmsError::Unsupported(what)),
        }
    }

    /// The next element if it has tag `tag`.
    fn optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>, CmsError> {
        if self.peek_tag() == Some(tag) {
            self.next()
        } else {
            Ok(None)
        }
    }

    fn end(&self, what: &'static str) -> Result<(), CmsError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CmsError::Unsupported(what))
        }
    }
}

impl<'a> Tlv<'a> {
    fn children(&self) -> Result<Children<'a>, CmsError> {
        if self.tag & CONSTRUCTED == 0 {
            return Err(CmsError::Malformed("expected a constructed element"));
        }
        Ok(Children { rest: self.body, depth: self.depth + 1 })
    }

    /// The value of an OCTET STRING (or of an implicitly tagged one), primitive or
    /// constructed from chunks (BER).
    fn octets(&self) -> Result<Cow<'a, [u8]>, CmsError> {
        if self.tag & CONSTRUCTED == 0 {
            return Ok(Cow::Borrowed(self.body));
        }
        let mut out = Vec::new();
        let mut chunks = self.children()?;
        while let Some(chunk) = chunks.next()? {
            if chunk.tag & !CONSTRUCTED != OCTET_STRING {
                return Err(CmsError::Malformed("a string chunk that is not an OCTET STRING"));
            }
            out.extend_from_slice(&chunk.octets()?);
            if out.len() > MAX_INPUT {
                return Err(CmsError::Malformed("string too long"));
            }
        }
        Ok(Cow::Owned(out))
    }

    /// An INTEGER that must be one of `allowed` (small versions).
    fn small_int(&self, allowed: &[u8], what: &'static str) -> Result<(), CmsError> {
        match self.body {
            [v] if self.tag == INTEGER && allowed.contains(v) => Ok(()),
            _ => Err(CmsError::Unsupported(what)),
        }
    }
}

/// An `AlgorithmIdentifier`: its OID must be `oid`; returns its parameters, if any.
fn algorithm<'a>(
    alg: &Tlv<'a>,
    oid: &[u8],
    what: &'static str,
) -> Result<Option<Tlv<'a>>, CmsError> {
    if alg.tag != SEQUENCE {
        return Err(CmsError::Unsupported(what));
    }
    let mut c = alg.children()?;
    if c.expect(OID, what)?.body != oid {
        return Err(CmsError::Unsupported(what));
    }
    let params = c.next()?;
    c.end(what)?;
    Ok(params)
}

/// SHA-256 as an `AlgorithmIdentifier` (parameters absent or NULL).
fn expect_sha256(alg: &Tlv<'_>, what: &'static str) -> Result<(), CmsError> {
    match algorithm(alg, OID_SHA256, what)? {
        None => Ok(()),
        Some(p) if p.tag == NULL && p.body.is_empty() => Ok(()),
        Some(_) => Err(CmsError::Unsupported(what)),
    }
}

/// `RSAES-OAEP-params` (RFC 8017 A.2.1), which must say SHA-256, MGF1 with SHA-256 and an
/// empty label. Absent fields mean SHA-1: refused.
fn expect_oaep_sha256(params: Option<Tlv<'_>>) -> Result<(), CmsError> {
    const WHAT: &str = "key encryption must be RSAES-OAEP with SHA-256 and MGF1-SHA-256";
    let params = params.ok_or(CmsError::Unsupported(WHAT))?;
    if params.tag != SEQUENCE {
        return Err(CmsError::Unsupported(WHAT));
    }
    let mut c = params.children()?;
    // hashFunc [0]
    let hash = c.expect(ctx_cons(0), WHAT)?;
    let mut h = hash.children()?;
    expect_sha256(&h.next()?.ok_or(CmsError::Unsupported(WHAT))?, WHAT)?;
    h.end(WHAT)?;
    // maskGenFunc [1]: MGF1 with SHA-256
    let mgf = c.expect(ctx_cons(1), WHAT)?;
    let mut m = mgf.children()?;
    let mgf_alg = m.next()?.ok_or(CmsError::Unsupported(WHAT))?;
    m.end(WHAT)?;
    let mgf_hash = algorithm(&mgf_alg, OID_MGF1, WHAT)?.ok_or(CmsError::Unsupported(WHAT))?;
    expect_sha256(&mgf_hash, WHAT)?;
    // pSourceFunc [2]: absent, or pSpecified with an empty label.
    if let Some(source) = c.optional(ctx_cons(2))? {
        const LABEL: &str = "RSAES-OAEP with a non-empty label";
        let mut s = source.children()?;
        let alg = s.next()?.ok_or(CmsError::Unsupported(LABEL))?;
        s.end(LABEL)?;
        let label = algorithm(&alg, OID_P_SPECIFIED, LABEL)?.ok_or(CmsError::Unsupported(LABEL))?;
        if label.tag & !CONSTRUCTED != OCTET_STRING || !label.octets()?.is_empty() {
            return Err(CmsError::Unsupported(LABEL));
        }
    }
    c.end(WHAT)
}

/// The three things an envelope carries. `Debug` shows their lengths only.
struct Envelope<'a> {
    /// RSAES-OAEP ciphertext of the content-encryption key.
    encrypted_key: Cow<'a, [u8]>,
    /// AES-CBC IV.
    iv: [u8; 16],
    /// AES-256-CBC ciphertext of the content.
    ciphertext: Cow<'a, [u8]>,
}

impl std::fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("encrypted_key_len", &self.encrypted_key.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Parses `ContentInfo { envelopedData, EnvelopedData }` (BER or DER).
fn parse(input: &[u8]) -> Result<Envelope<'_>, CmsError> {
    if input.len() > MAX_INPUT {
        return Err(CmsError::Malformed("envelope too large"));
    }
    let (content_info, trailing) = read_tlv(input, 0)?;
    if !trailing.is_empty() {
        return Err(CmsError::Malformed("bytes after the envelope"));
    }
    if content_info.tag != SEQUENCE {
        return Err(CmsError::Unsupported("not a CMS ContentInfo"));
    }
    let mut ci = content_info.children()?;
    if ci.expect(OID, "not a CMS ContentInfo")?.body != OID_ENVELOPED_DATA {
        return Err(CmsError::Unsupported("content type is not envelopedData"));
    }
    let explicit = ci.expect(ctx_cons(0), "ContentInfo without content")?;
    ci.end("ContentInfo has extra fields")?;
    let mut ex = explicit.children()?;
    let enveloped = ex.expect(SEQUENCE, "EnvelopedData is not a SEQUENCE")?;
    ex.end("ContentInfo content has extra fields")?;

    let mut ed = enveloped.children()?;
    ed.expect(INTEGER, "EnvelopedData version")?.small_int(&[0, 2], "EnvelopedData version")?;
    if ed.peek_tag() == Some(ctx_cons(0)) {
        return Err(CmsError::Unsupported("originatorInfo"));
    }
    let recipients = ed.expect(SET, "recipientInfos")?;
    let mut rs = recipients.children()?;
    let ktri = rs.expect(SEQUENCE, "the recipient must be a KeyTransRecipientInfo")?;
    rs.end("more than one recipient")?;

    let mut kt = ktri.children()?;
    kt.expect(INTEGER, "KeyTransRecipientInfo version")?
        .small_int(&[0, 2], "KeyTransRecipientInfo version")?;
    // rid: issuerAndSerialNumber (SEQUENCE) or subjectKeyIdentifier ([0] IMPLICIT).
    match kt.next()? {
        Some(rid) if rid.tag == SEQUENCE || rid.tag == ctx_prim(0) || rid.tag == ctx_cons(0) => {}
        _ => return Err(CmsError::Unsupported("recipient identifier")),
    }
    let key_alg = kt.expect(SEQUENCE, "keyEncryptionAlgorithm")?;
    expect_oaep_sha256(algorithm(&key_alg, OID_RSAES_OAEP, "key encryption is not RSAES-OAEP")?)?;
    let encrypted_key = kt.next()?.ok_or(CmsError::Unsupported("encryptedKey"))?;
    if encrypted_key.tag & !CONSTRUCTED != OCTET_STRING {
        return Err(CmsError::Unsupported("encryptedKey"));
    }
    kt.end("KeyTransRecipientInfo has extra fields")?;

    let eci = ed.expect(SEQUENCE, "encryptedContentInfo")?;
    // unprotectedAttrs [1] may follow; nothing else.
    let _ = ed.optional(ctx_cons(1))?;
    ed.end("EnvelopedData has extra fields")?;
    let mut ec = eci.children()?;
    if ec.expect(OID, "encrypted content type")?.body != OID_DATA {
        return Err(CmsError::Unsupported("encrypted content type is not id-data"));
    }
    let content_alg = ec.expect(SEQUENCE, "contentEncryptionAlgorithm")?;
    let iv = algorithm(&content_alg, OID_AES256_CBC, "content encryption is not AES-256-CBC")?
        .ok_or(CmsError::Unsupported("AES-CBC without an IV"))?;
    if iv.tag != OCTET_STRING {
        return Err(CmsError::Unsupported("AES-CBC IV"));
    }
    let iv: [u8; 16] =
        iv.body.try_into().map_err(|_| CmsError::Unsupported("AES-CBC IV is not 16 bytes"))?;
    let content = match ec.next()? {
        Some(c) if c.tag == ctx_prim(0) || c.tag == ctx_cons(0) => c,
        _ => return Err(CmsError::Unsupported("no encryptedContent")),
    };
    ec.end("EncryptedContentInfo has extra fields")?;
    Ok(Envelope { encrypted_key: encrypted_key.octets()?, iv, ciphertext: content.octets()? })
}

/// Opens `envelope` (BER or DER) with `key`: RSAES-OAEP-SHA256 recovers the AES-256 key, which
/// decrypts the AES-256-CBC content. Returns the content (zeroized on drop).
///
/// RSA decryption is blinded with randomness from `rng`.
///
/// # Errors
/// [`CmsError`]: malformed, not KMS's kind of envelope, or not for this key.
pub(crate) fn open(
    key: &RsaPrivateKey,
    envelope: &[u8],
    rng: &mut (impl rand_core::CryptoRng + rand_core::RngCore),
) -> Result<Zeroizing<Vec<u8>>, CmsError> {
    let env = parse(envelope)?;
    if env.ciphertext.is_empty()
        || env.ciphertext.len() % 16 != 0
        || env.ciphertext.len() > MAX_CONTENT + 16
    {
        return Err(CmsError::Unsupported("encrypted content length"));
    }
    let cek = Zeroizing::new(
        key.decrypt_blinded(rng, Oaep::new::<Sha256>(), &env.encrypted_key)
            .map_err(|_| CmsError::Decrypt("RSAES-OAEP"))?,
    );
    if cek.len() != 32 {
        return Err(CmsError::Decrypt("the content key is not 32 bytes"));
    }
    let cipher = cbc::Decryptor::<aes::Aes256>::new_from_slices(&cek, &env.iv)
        .map_err(|_| CmsError::Decrypt("AES-256-CBC key"))?;
    let plain = cipher
        .decrypt_padded_vec_mut::<Pkcs7>(&env.ciphertext)
        .map_err(|_| CmsError::Decrypt("AES-256-CBC padding"))?;
    Ok(Zeroizing::new(plain))
}

#[cfg(test)]
mod tests {
    use rsa::pkcs8::DecodePrivateKey as _;

    use super::*;

    const KEY: &[u8] = include_bytes!("testdata/recipient.key.der");
    const DATA_KEY: &[u8] = include_bytes!("testdata/data-key.bin");
    const DER: &[u8] = include_bytes!("testdata/envelope.der");
    const BER: &[u8] = include_bytes!("testdata/envelope.ber");
    const ISSUER: &[u8] = include_bytes!("testdata/envelope-issuer.der");
    const SHORT: &[u8] = include_bytes!("testdata/envelope-short.der");
    const SHA1: &[u8] = include_bytes!("testdata/envelope-sha1.der");

    fn key() -> RsaPrivateKey {
        RsaPrivateKey::from_pkcs8_der(KEY).unwrap()
    }

    fn rng() -> crate::platform::Entropy {
        crate::platform::nsm::test_entropy()
    }

    #[test]
    fn cms_envelope_debug_shows_lengths_only() {
        let env = parse(DER).unwrap();
        let shown = format!("{env:?}");
        assert!(shown.contains("encrypted_key_len: 256"), "{shown}");
        // Not one byte of the wrapped key, the IV or the ciphertext.
        assert!(!shown.contains(&format!("{:?}", &env.iv[..4])), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &env.encrypted_key[..4])), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &env.ciphertext[..4])), "{shown}");
    }

    #[test]
    fn cms_der_envelope_opens() {
        let k = key();
        assert_eq!(open(&k, DER, &mut rng()).unwrap().as_slice(), DATA_KEY);
        assert_eq!(open(&k, ISSUER, &mut rng()).unwrap().as_slice(), DATA_KEY);
        assert_eq!(open(&k, SHORT, &mut rng()).unwrap().len(), 16);
    }

    #[test]
    fn cms_ber_envelope_with_indefinite_lengths_opens() {
        // The fixture really is BER: indefinite lengths (0x80) and a chunked content.
        assert_eq!(&BER[..2], &[0x30, 0x80]);
        assert!(BER.ends_with(&[0, 0, 0, 0]));
        let env = parse(BER).unwrap();
        assert!(matches!(env.ciphertext, Cow::Owned(_)), "chunks were joined");
        assert_eq!(open(&key(), BER, &mut rng()).unwrap().as_slice(), DATA_KEY);
    }

    #[test]
    fn cms_refuses_sha1_oaep_and_foreign_keys() {
        assert!(matches!(open(&key(), SHA1, &mut rng()), Err(CmsError::Unsupported(_))));
        let other = RsaPrivateKey::new(&mut rng(), 2048).unwrap();
        assert_eq!(open(&other, DER, &mut rng()), Err(CmsError::Decrypt("RSAES-OAEP")));
    }

    #[test]
    fn cms_truncated_or_extended_never_panics_and_never_opens() {
        let k = key();
        for input in [DER, BER] {
            for n in 0..input.len() {
                assert!(open(&k, &input[..n], &mut rng()).is_err(), "prefix of {n} bytes");
            }
            let mut longer = input.to_vec();
            longer.push(0);
            assert!(open(&k, &longer, &mut rng()).is_err());
        }
    }

    #[test]
    fn cms_corrupted_bytes_never_panic() {
        // Every byte flipped in turn. CMS EnvelopedData has no integrity of its own (AES-CBC, no
        // MAC: a flipped IV bit flips a key bit), so what matters here is that nothing panics;
        // the envelope's integrity is TLS's, end to end with KMS.
        let k = key();
        for input in [DER, BER] {
            for i in 0..input.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = input.to_vec();
                    bad[i] ^= flip;
                    let _ = open(&k, &bad, &mut rng());
                }
            }
        }
    }

    #[test]
    fn ber_reader_bounds() {
        // Nesting past the bound.
        let mut deep = Vec::new();
        for _ in 0..(MAX_DEPTH + 2) {
            deep.extend_from_slice(&[0x30, 0x80]);
        }
        deep.extend(std::iter::repeat_n(0u8, 2 * (MAX_DEPTH + 2)));
        assert_eq!(read_tlv(&deep, 0).unwrap_err(), CmsError::Malformed("nested too deeply"));
        // Indefinite length on a primitive, 5-byte lengths, lengths past the input.
        assert!(read_tlv(&[0x04, 0x80, 0, 0], 0).is_err());
        assert!(read_tlv(&[0x04, 0x85, 0, 0, 0, 0, 1, 0], 0).is_err());
        assert!(read_tlv(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff], 0).is_err());
        // Too large.
        assert_eq!(
            parse(&vec![0u8; MAX_INPUT + 1]).unwrap_err(),
            CmsError::Malformed("envelope too large")
        );
    }
}
