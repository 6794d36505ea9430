//! The security rule of the test PKI, through the public API only: a document signed by the
//! simulated platform (`testdata/simulated-document.cbor`, made once by
//! `test_pki::sign_document` and committed) verifies in a build with `test-pki` and is
//! REJECTED by a build without it.
//!
//! `cargo test -p wallet-attestation` and `cargo test -p wallet-attestation --features
//! test-pki` each run their half.

/// The committed document (see `testdata/README.md`).
const SIMULATED_DOCUMENT: &[u8] = include_bytes!("../testdata/simulated-document.cbor");
/// Its nonce, as recorded in `testdata/README.md`.
const NONCE: &[u8] = b"x402-wallet simulated-document nonce 0001";
/// Its timestamp: 2026-01-01T00:00:00Z, in Unix milliseconds.
const TIMESTAMP_MS: u64 = 1_767_225_600_000;
/// A time of verification inside the test chain's validity (2020 to 2120): 2030-01-01.
const NOW_MS: u64 = 1_893_456_000_000;

#[cfg(not(feature = "test-pki"))]
#[test]
fn a_build_without_test_pki_rejects_the_simulated_document() {
    use wallet_attestation::{verify, VerifyError};

    let err = verify(SIMULATED_DOCUMENT, NOW_MS, Some(NONCE)).unwrap_err();
    assert!(matches!(err, VerifyError::UntrustedRoot { .. }), "refused, but why? {err}");
    let msg = err.to_string();
    assert!(msg.contains("cabundle[0]") && msg.contains("test-pki"), "{msg}");
    // Also at the document's own time, and without a nonce.
    assert!(verify(SIMULATED_DOCUMENT, TIMESTAMP_MS, None).is_err());
}

#[cfg(feature = "test-pki")]
mod with_test_pki {
    use std::collections::BTreeMap;

    use wallet_attestation::test_pki::sign_document;
    use wallet_attestation::{verify, verify_with, Root, VerifyError};

    use super::{NONCE, NOW_MS, SIMULATED_DOCUMENT, TIMESTAMP_MS};

    const MODULE_ID: &str = "i-0123456789abcdef0-enc0123456789abcdef";
    const PUBLIC_KEY: &[u8] = b"simulated enclave public key";
    const USER_DATA: &[u8] = b"x402-wallet simulated-document";

    /// PCR0, PCR1, PCR2 = 48 bytes of 0xa0, 0xa1, 0xa2.
    fn pcrs() -> BTreeMap<u8, Vec<u8>> {
        (0..3u8).map(|i| (i, vec![0xa0 + i; 48])).collect()
    }

    fn sign() -> Vec<u8> {
        sign_document(
            MODULE_ID,
            TIMESTAMP_MS,
            &pcrs(),
            Some(PUBLIC_KEY),
            Some(USER_DATA),
            Some(NONCE),
        )
    }

    #[test]
    fn a_build_with_test_pki_accepts_the_simulated_document() {
        let doc = verify(SIMULATED_DOCUMENT, NOW_MS, Some(NONCE)).expect("the simulated document");
        assert_eq!(doc.root, Root::Test);
        assert_eq!(doc.module_id, MODULE_ID);
        assert_eq!(doc.timestamp_ms, TIMESTAMP_MS);
        assert_eq!(doc.pcrs, pcrs());
        assert_eq!(doc.public_key.as_deref(), Some(PUBLIC_KEY));
        assert_eq!(doc.user_data.as_deref(), Some(USER_DATA));
        assert_eq!(doc.nonce.as_deref(), Some(NONCE));
        // Still not a production document.
        let err = verify_with(SIMULATED_DOCUMENT, &[Root::AwsNitroG1], NOW_MS, None).unwrap_err();
        assert!(matches!(err, VerifyError::UntrustedRoot { .. }), "{err}");
    }

    #[test]
    fn the_committed_document_is_what_sign_document_makes() {
        assert!(
            sign() == SIMULATED_DOCUMENT,
            "testdata/simulated-document.cbor is stale (was the test PKI regenerated?): run \
             cargo test -p wallet-attestation --features test-pki -- --ignored \
             regenerate_simulated_document"
        );
    }

    /// Rewrites `testdata/simulated-document.cbor` (after `testdata/gen-test-pki.sh`).
    #[test]
    #[ignore = "writes testdata/; run by hand after regenerating the test PKI"]
    fn regenerate_simulated_document() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/simulated-document.cbor");
        std::fs::write(path, sign()).unwrap();
    }
}
