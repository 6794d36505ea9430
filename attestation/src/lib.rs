//! The one verifier of AWS Nitro Enclaves attestation documents.
//!
//! An attestation document is the `COSE_Sign1` blob an enclave's Nitro Security Module (NSM)
//! returns: a CBOR map (module id, PCRs, the enclave's public key, user data, nonce) signed
//! with ES384 by a short-lived P-384 certificate that chains, through the `cabundle`, to the
//! AWS Nitro Enclaves Root-G1. [`verify`] checks all of it, in the order of AWS's
//! `attestation_process.md` (aws-nitro-enclaves-nsm-api, `docs/`), and returns what the
//! document says only when every check passed:
//!
//! 1. size (at most [`MAX_DOCUMENT_BYTES`], before any parsing);
//! 2. `COSE_Sign1` structure (tag 18 or untagged), protected header `{1: -35}` (ES384);
//! 3. the payload's fields, their types and bounds (see [`AttestationDoc`]);
//! 4. `cabundle[0]` byte-equal to a root built into this binary ([`accepted_roots`]);
//! 5. the chain root → `cabundle[1..]` → `certificate`: names, CA flags, path lengths, key
//!    usages, ecdsa-with-SHA384 signatures over P-384 keys, every validity period at `now_ms`;
//! 6. the COSE signature with the signing certificate's key;
//! 7. the nonce, when the caller expects one.
//!
//! Expected PCRs are a separate step: [`Measurements::check`].
//!
//! ```no_run
//! # fn demo(document: &[u8], nonce: &[u8], now_ms: u64) -> Result<(), Box<dyn std::error::Error>> {
//! use wallet_attestation::{verify, Measurements};
//!
//! let expected = Measurements::from_json(r#"{"PCR0": "…", "PCR1": "…", "PCR2": "…"}"#)?;
//! let doc = verify(document, now_ms, Some(nonce))?; // signature, chain, root, nonce
//! expected.check(&doc)?; // the enclave runs the expected image
//! println!("{} attested by {}", doc.module_id, doc.root);
//! # Ok(())
//! # }
//! ```
//!
//! The trust anchors are compiled in and cannot be changed at run time. The test root of the
//! simulated platform exists only in a build with the feature `test-pki` (module `test_pki`,
//! which also signs mock documents); a build without it does not contain the test root at all.

mod chain;
mod cose;
mod error;
mod measurements;
mod payload;
mod roots;

#[cfg(any(test, feature = "test-pki"))]
mod mock;
#[cfg(feature = "test-pki")]
pub mod test_pki;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

pub use error::VerifyError;
pub use measurements::{Measurements, MeasurementsError, PcrDiff, PcrMismatch};
pub use roots::{AWS_NITRO_ROOT_G1_DER, AWS_NITRO_ROOT_G1_SHA256};

/// The largest attestation document [`verify`] parses, in bytes (16 KiB). Real documents are
/// about 4.5 KiB; AWS bounds the signed payload at 16384 bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

/// The largest DER certificate accepted in `certificate` and in each `cabundle` entry, in bytes
/// (AWS: `cert = bytes .size (1..1024)`).
pub const MAX_CERTIFICATE_BYTES: usize = 1024;

/// The largest `public_key`, `user_data` or `nonce`, in bytes: the NSM's own limit for each.
/// (AWS's `attestation_process.md` says 512 for `user_data` and `nonce` in one place and
/// 1024 in another; the NSM accepts 1024, so documents it signs may carry 1024.)
pub const MAX_USER_FIELD_BYTES: usize = 1024;

/// The number of PCRs an NSM has; indexes are `0..MAX_PCRS` and a document carries
/// `1..=MAX_PCRS` of them.
pub const MAX_PCRS: usize = 32;

/// A trust anchor built into this binary: which root verified a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Root {
    /// AWS Nitro Enclaves Root-G1 (`CN=aws.nitro-enclaves`, valid 2019-10-28 to 2049-10-28),
    /// the root of every real Nitro attestation document in the commercial AWS partitions.
    /// SHA-256 fingerprint [`AWS_NITRO_ROOT_G1_SHA256`].
    AwsNitroG1,
    /// The committed test root of the simulated platform (`testdata/test-pki/root.der`). Its
    /// certificate is compiled in only with the feature `test-pki`; in any other build this
    /// root accepts nothing ([`Root::der`] is `None`).
    Test,
}

impl Root {
    /// The root certificate (DER) this build pins for this root, or `None` when it is not
    /// compiled in ([`Root::Test`] without the feature `test-pki`).
    pub fn der(self) -> Option<&'static [u8]> {
        match self {
            Root::AwsNitroG1 => Some(AWS_NITRO_ROOT_G1_DER),
            #[cfg(feature = "test-pki")]
            Root::Test => Some(test_pki::TEST_ROOT_DER),
            #[cfg(not(feature = "test-pki"))]
            Root::Test => None,
        }
    }

    /// Whether documents under this root come from real Nitro hardware.
    pub fn is_production(self) -> bool {
        matches!(self, Root::AwsNitroG1)
    }
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Root::AwsNitroG1 => "AWS Nitro Enclaves Root-G1",
            Root::Test => "TEST ROOT (simulated; never production)",
        })
    }
}

/// What a verified attestation document says. Only [`verify`] and [`verify_with`] produce one
/// from a document; every field has passed the checks listed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationDoc {
    /// The issuing NSM's module id (for an enclave, `i-<instance>-enc<enclave>`); non-empty.
    pub module_id: String,
    /// The PCR hash function; always `"SHA384"` (any other value is refused).
    pub digest: String,
    /// When the NSM produced the document, in milliseconds since the Unix epoch (UTC); > 0.
    /// Not compared with `now_ms`: a freshness policy is the caller's (a nonce, or a maximum
    /// age measured against this).
    pub timestamp_ms: u64,
    /// PCR index (`0..32`) to value (32, 48 or 64 bytes; 48 for SHA-384). 1 to 32 entries.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The public key the enclave asked to be attested (DER `SubjectPublicKeyInfo` by
    /// convention), 1 to 1024 bytes, if any.
    pub public_key: Option<Vec<u8>>,
    /// Data the enclave bound into the document, 0 to 1024 bytes, if any.
    pub user_data: Option<Vec<u8>>,
    /// The nonce the enclave was asked to include, 0 to 1024 bytes, if any.
    pub nonce: Option<Vec<u8>>,
    /// The built-in root the document's chain ends in.
    pub root: Root,
}

/// The roots this build accepts: [`Root::AwsNitroG1`] always, [`Root::Test`] only when compiled
/// with the feature `test-pki`. Never configurable at run time.
pub fn accepted_roots() -> &'static [Root] {
    #[cfg(feature = "test-pki")]
    {
        &[Root::AwsNitroG1, Root::Test]
    }
    #[cfg(not(feature = "test-pki"))]
    {
        &[Root::AwsNitroG1]
    }
}

/// Verifies `document` (the raw `COSE_Sign1` bytes from the NSM) at time `now_ms` (Unix
/// milliseconds) against the built-in roots of this build ([`accepted_roots`]). When
/// `expected_nonce` is `Some`, the document's nonce must be present and equal to it.
///
/// Returns what the document says, with the root that verified it, or the first check that
/// failed (see [`VerifyError`]). Never panics, whatever the bytes.
pub fn verify(
    document: &[u8],
    now_ms: u64,
    expected_nonce: Option<&[u8]>,
) -> Result<AttestationDoc, VerifyError> {
    verify_with(document, accepted_roots(), now_ms, expected_nonce)
}

/// [`verify`] against an explicit subset of the built-in roots (for tests of the verifier, or a
/// caller that wants production documents only: `&[Root::AwsNitroG1]`). Naming a root this
/// build does not contain ([`Root::Test`] without `test-pki`) is
/// [`VerifyError::RootNotInBuild`].
pub fn verify_with(
    document: &[u8],
    roots: &[Root],
    now_ms: u64,
    expected_nonce: Option<&[u8]>,
) -> Result<AttestationDoc, VerifyError> {
    let mut anchors = Vec::with_capacity(roots.len());
    for &root in roots {
        let der = root.der().ok_or(VerifyError::RootNotInBuild(root))?;
        anchors.push((root, der));
    }
    verify_against(document, &anchors, now_ms, expected_nonce)
}

/// The verifier itself, against the given (root, DER) anchors. Crate-private: outside this
/// crate, anchors can only be built-in roots.
pub(crate) fn verify_against(
    document: &[u8],
    anchors: &[(Root, &[u8])],
    now_ms: u64,
    expected_nonce: Option<&[u8]>,
) -> Result<AttestationDoc, VerifyError> {
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(VerifyError::DocumentTooLarge {
            size: document.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    let cose = cose::parse(document)?;
    let fields = payload::parse(&cose.payload)?;

    let root_der = &fields.cabundle[0];
    let root = anchors
        .iter()
        .find(|(_, der)| *der == root_der.as_slice())
        .map(|(root, _)| *root)
        .ok_or_else(|| VerifyError::UntrustedRoot {
        fingerprint: roots::sha256_hex(root_der),
        accepted: anchors.iter().map(|(root, _)| root.to_string()).collect::<Vec<_>>().join(", "),
    })?;

    let leaf_key = chain::verify(&fields.cabundle, &fields.certificate, now_ms)?;
    cose::verify_signature(&cose, &leaf_key)?;

    if let Some(expected) = expected_nonce {
        match &fields.nonce {
            None => return Err(VerifyError::NonceMissing { expected: hex::encode(expected) }),
            Some(found) if found.as_slice() != expected => {
                return Err(VerifyError::NonceMismatch {
                    expected: hex::encode(expected),
                    found: hex::encode(found),
                })
            }
            Some(_) => {}
        }
    }

    Ok(AttestationDoc {
        module_id: fields.module_id,
        digest: fields.digest,
        timestamp_ms: fields.timestamp_ms,
        pcrs: fields.pcrs,
        public_key: fields.public_key,
        user_data: fields.user_data,
        nonce: fields.nonce,
        root,
    })
}

/// A PCR value as people read it: lowercase hex, no prefix (the form of nitro-cli's output and
/// of [`Measurements`] files).
pub fn hex_pcr(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
