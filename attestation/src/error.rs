//! Why a document was refused: one variant per check.

use crate::Root;

/// Why [`verify`](crate::verify) refused a document: the first check that failed, in the order
/// the checks run. Certificates are named as in the document: `cabundle[0]` (the root),
/// `cabundle[i]` (intermediates, root side first) and `certificate` (the one that signs the
/// document). Byte strings are shown in lowercase hex, fingerprints in uppercase hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The document is larger than [`MAX_DOCUMENT_BYTES`](crate::MAX_DOCUMENT_BYTES); it was
    /// not parsed.
    #[error(
        "attestation document is {size} bytes, over the {max}-byte limit: not an NSM document"
    )]
    DocumentTooLarge {
        /// The document's size in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The bytes are not one complete CBOR item.
    #[error("attestation document is not valid CBOR ({0}): pass the raw bytes the NSM returned, not base64 or hex")]
    MalformedCbor(String),
    /// The CBOR is not a `COSE_Sign1` as the NSM emits it.
    #[error("attestation document is not a COSE_Sign1 structure: {0}")]
    NotCoseSign1(String),
    /// The protected header does not say ES384.
    #[error("protected header algorithm is {found}; Nitro documents are signed with ES384 (COSE alg -35), and no other algorithm is accepted")]
    UnsupportedAlgorithm {
        /// What the header holds instead (`absent`, a number or a description).
        found: String,
    },
    /// The protected header holds more than `{1: -35}`.
    #[error(
        "protected header has parameters other than alg ({0}); the NSM's is exactly {{1: -35}}"
    )]
    UnexpectedHeader(String),
    /// The signed payload is not a CBOR map.
    #[error("attestation payload is not a CBOR map of text keys: {0}")]
    MalformedPayload(String),
    /// A mandatory field is absent.
    #[error("attestation payload lacks the mandatory field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong CBOR type (or is null where a value is mandatory).
    #[error("attestation payload field `{field}` must be {expected}")]
    FieldType {
        /// The field (or `pcrs[…]` / `cabundle[…]` entry).
        field: String,
        /// The type it must have.
        expected: &'static str,
    },
    /// A field appears twice in the payload map.
    #[error("attestation payload has the field `{0}` twice")]
    DuplicateField(String),
    /// A field AWS's format does not define.
    #[error("attestation payload has the unknown field `{0}` (AWS defines module_id, digest, timestamp, pcrs, certificate, cabundle, public_key, user_data, nonce)")]
    UnknownField(String),
    /// `module_id` is the empty string.
    #[error("module_id is empty; an NSM always names itself")]
    EmptyModuleId,
    /// `digest` is not `"SHA384"`.
    #[error("digest is {0:?}; Nitro PCRs are \"SHA384\"")]
    UnsupportedDigest(String),
    /// `timestamp` is 0.
    #[error("timestamp is 0; an NSM stamps documents with Unix milliseconds > 0")]
    ZeroTimestamp,
    /// `pcrs` has no entry or more than 32.
    #[error("pcrs has {0} entries; a document carries 1 to 32")]
    PcrCount(usize),
    /// A PCR index is outside `0..32`.
    #[error("PCR index {0} is outside 0..=31")]
    PcrIndex(String),
    /// A PCR index appears twice.
    #[error("PCR{0} appears twice in pcrs")]
    DuplicatePcr(u8),
    /// A PCR value is not 32, 48 or 64 bytes.
    #[error("PCR{index} is {len} bytes; a PCR is 32, 48 or 64 bytes")]
    PcrLength {
        /// The PCR index.
        index: u8,
        /// Its length in bytes.
        len: usize,
    },
    /// A byte-string field is outside its size bounds.
    #[error("`{field}` is {len} bytes; allowed: {min} to {max}")]
    FieldLength {
        /// The field (`certificate`, `cabundle[i]`, `public_key`, `user_data`, `nonce`).
        field: String,
        /// Its length in bytes.
        len: usize,
        /// The smallest length allowed.
        min: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// `cabundle` has no entry, so there is no root.
    #[error("cabundle is empty; it must start with the root certificate")]
    EmptyCabundle,
    /// `cabundle[0]` is not byte-equal to any root this build accepts.
    #[error("cabundle[0] (SHA-256 {fingerprint}) is not a root this build accepts ({accepted}): the document was not signed by that PKI (a simulated enclave's document verifies only in a build with the feature `test-pki`)")]
    UntrustedRoot {
        /// SHA-256 of the document's `cabundle[0]`, uppercase hex.
        fingerprint: String,
        /// The roots that were acceptable, comma-separated.
        accepted: String,
    },
    /// A caller named a root this build does not contain.
    #[error(
        "the root {0} is not compiled into this build (the test root needs the feature `test-pki`)"
    )]
    RootNotInBuild(Root),
    /// A certificate is not canonical DER X.509 v3.
    #[error("{cert}: not a valid DER X.509 v3 certificate: {reason}")]
    MalformedCertificate {
        /// Which certificate.
        cert: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate uses an algorithm other than ecdsa-with-SHA384 over P-384.
    #[error("{cert}: {what} is {found}; only ecdsa-with-SHA384 with P-384 keys is accepted")]
    UnsupportedCertificateAlgorithm {
        /// Which certificate.
        cert: String,
        /// Which algorithm (signature, public key, curve).
        what: &'static str,
        /// The OID (or description) found.
        found: String,
    },
    /// A certificate carries a critical extension this verifier does not process.
    #[error("{cert}: unsupported critical extension {oid}")]
    UnknownCriticalExtension {
        /// Which certificate.
        cert: String,
        /// The extension's OID.
        oid: String,
    },
    /// A certificate is malformed in an extension this verifier does process.
    #[error("{cert}: {reason}")]
    BadExtension {
        /// Which certificate.
        cert: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate's issuer name is not its predecessor's subject name.
    #[error("{cert}: its issuer is not {issuer} (issuer and subject names differ): the chain root -> cabundle[1..] -> certificate is broken (a missing, extra or reordered intermediate, or another PKI's certificate)")]
    IssuerMismatch {
        /// The certificate whose issuer name is wrong.
        cert: String,
        /// The certificate before it in the chain.
        issuer: String,
    },
    /// A certificate in the issuer position is not a CA.
    #[error("{cert} issues {subject} but is not a CA ({reason})")]
    NotACa {
        /// The would-be issuer.
        cert: String,
        /// The certificate it issued.
        subject: String,
        /// What is missing (BasicConstraints CA=true, KeyUsage keyCertSign).
        reason: String,
    },
    /// A CA's pathLenConstraint is smaller than the number of CAs below it.
    #[error("{cert}: pathLenConstraint {path_len}, but {below} intermediate CA(s) follow it in the chain")]
    PathLenExceeded {
        /// The constrained CA.
        cert: String,
        /// Its pathLenConstraint.
        path_len: u8,
        /// The number of CA certificates after it, before `certificate`.
        below: usize,
    },
    /// A certificate's signature does not verify with its issuer's key.
    #[error("{cert}: signature does not verify with the key of {issuer}: the certificate was altered or issued by another key")]
    CertificateSignature {
        /// The certificate whose signature failed.
        cert: String,
        /// Its issuer in the chain.
        issuer: String,
    },
    /// The signing certificate may not sign documents.
    #[error("{cert}: may not sign attestation documents ({reason})")]
    LeafUsage {
        /// Always `certificate`.
        cert: String,
        /// Why (a CA, or no KeyUsage digitalSignature).
        reason: String,
    },
    /// `now_ms` is before a certificate's notBefore.
    #[error("{cert}: not valid before {not_before}, and the time of verification is {now}: check this machine's clock")]
    CertificateNotYetValid {
        /// Which certificate.
        cert: String,
        /// Its notBefore (UTC).
        not_before: String,
        /// The time of verification (UTC).
        now: String,
    },
    /// `now_ms` is after a certificate's notAfter.
    #[error("{cert}: expired at {not_after}, and the time of verification is {now}: ask the enclave for a fresh document (NSM signing certificates live about 3 hours)")]
    CertificateExpired {
        /// Which certificate.
        cert: String,
        /// Its notAfter (UTC).
        not_after: String,
        /// The time of verification (UTC).
        now: String,
    },
    /// The COSE signature does not verify with the signing certificate's key.
    #[error("the COSE signature does not verify with the key of `certificate`: the document was altered, or signed by another key")]
    BadSignature,
    /// A nonce was expected but the document has none.
    #[error("the document has no nonce, but nonce {expected} was expected: ask the enclave for a document with that nonce")]
    NonceMissing {
        /// The expected nonce, hex.
        expected: String,
    },
    /// The document's nonce differs from the expected one.
    #[error("nonce mismatch: expected {expected}, the document has {found} (a replayed or stale document)")]
    NonceMismatch {
        /// The expected nonce, hex.
        expected: String,
        /// The document's nonce, hex.
        found: String,
    },
}
