//! The simulated platform's PKI and mock signer: **tests and development only**.
//!
//! Exists only with the feature `test-pki`, which also makes [`crate::verify`] accept
//! [`crate::Root::Test`]. A production build has neither this module nor the test root.
//!
//! The chain (generated once by `testdata/gen-test-pki.sh` and committed under
//! `testdata/test-pki/`) is root → intermediate → leaf, all P-384 with ecdsa-with-SHA384,
//! valid 2020-01-01 to 2120-01-01, each named "x402-wallet TEST … — simulated, never
//! production". Its private keys are public: anyone can sign documents under this root.

use std::collections::BTreeMap;

use crate::mock;

/// The test root certificate (DER): `CN=x402-wallet TEST ROOT — simulated, never production`.
pub const TEST_ROOT_DER: &[u8] = include_bytes!("../testdata/test-pki/root.der");
/// The test intermediate certificate (DER), issued by the test root; CA, pathlen 0.
pub const TEST_INTERMEDIATE_DER: &[u8] = include_bytes!("../testdata/test-pki/intermediate.der");
/// The test NSM signing certificate (DER), issued by the intermediate; KeyUsage
/// digitalSignature, not a CA.
pub const TEST_LEAF_DER: &[u8] = include_bytes!("../testdata/test-pki/leaf.der");
/// The test leaf's private key (PKCS#8 DER, P-384). Committed on purpose: test material only.
pub const TEST_LEAF_KEY_PKCS8_DER: &[u8] = include_bytes!("../testdata/test-pki/leaf.key.pk8.der");

/// Signs a real `COSE_Sign1` the way an NSM does, with the test leaf key.
///
/// The result is untagged, with protected header `{1: -35}` (ES384), unprotected header `{}`,
/// and as payload the AttestationDoc CBOR map in the NSM's format and field order: module_id,
/// digest (`"SHA384"`), timestamp (`timestamp_ms`, Unix milliseconds), pcrs, certificate (the
/// test leaf), cabundle (`[test root, test intermediate]`), public_key, user_data, nonce
/// (absent ones as null). Deterministic (RFC 6979 signatures): the same arguments give the
/// same bytes.
///
/// Nothing is validated here: out-of-bounds values (a 47-byte PCR, 2 KiB of user data) give a
/// signed document that [`crate::verify`] then refuses.
pub fn sign_document(
    module_id: &str,
    timestamp_ms: u64,
    pcrs: &BTreeMap<u8, Vec<u8>>,
    public_key: Option<&[u8]>,
    user_data: Option<&[u8]>,
    nonce: Option<&[u8]>,
) -> Vec<u8> {
    let fields = mock::aws_fields(
        module_id,
        timestamp_ms,
        pcrs,
        TEST_LEAF_DER,
        &[TEST_ROOT_DER, TEST_INTERMEDIATE_DER],
        public_key,
        user_data,
        nonce,
    );
    mock::sign_cose(
        &mock::signing_key(TEST_LEAF_KEY_PKCS8_DER),
        &mock::es384_protected(),
        &mock::encode_payload(&fields),
    )
}
