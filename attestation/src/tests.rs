//! The verifier's own tests: each builds a document that attacks one check and fails if that
//! check no longer refuses it. They run with and without `test-pki`: documents are signed
//! with the committed test keys, and verified through the crate-private `verify_against`
//! with the test root as the only anchor (the library itself only has it with `test-pki`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use ciborium::value::Value;
use p384::ecdsa::SigningKey;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use crate::mock::{aws_fields, encode, encode_payload, es384_protected, sign_cose, signing_key};
use crate::{
    accepted_roots, hex_pcr, verify, verify_against, verify_with, AttestationDoc, Measurements,
    MeasurementsError, Root, VerifyError, AWS_NITRO_ROOT_G1_DER, AWS_NITRO_ROOT_G1_SHA256,
    MAX_DOCUMENT_BYTES,
};

const ROOT: &[u8] = include_bytes!("../testdata/test-pki/root.der");
const INTERMEDIATE: &[u8] = include_bytes!("../testdata/test-pki/intermediate.der");
const LEAF: &[u8] = include_bytes!("../testdata/test-pki/leaf.der");
const LEAF_KEY: &[u8] = include_bytes!("../testdata/test-pki/leaf.key.pk8.der");
const EXPIRED_LEAF: &[u8] = include_bytes!("../testdata/test-pki/attacks/expired-leaf.der");
const FOREIGN_ROOT: &[u8] = include_bytes!("../testdata/test-pki/attacks/foreign-root.der");
const FOREIGN_LEAF: &[u8] = include_bytes!("../testdata/test-pki/attacks/foreign-leaf.der");
const FOREIGN_LEAF_KEY: &[u8] =
    include_bytes!("../testdata/test-pki/attacks/foreign-leaf.key.pk8.der");
const IMPOSTOR_INTERMEDIATE: &[u8] =
    include_bytes!("../testdata/test-pki/attacks/impostor-intermediate.der");
const IMPOSTOR_LEAF: &[u8] = include_bytes!("../testdata/test-pki/attacks/impostor-leaf.der");
const SUB_CA: &[u8] = include_bytes!("../testdata/test-pki/attacks/sub-ca.der");
const SUB_CA_LEAF: &[u8] = include_bytes!("../testdata/test-pki/attacks/sub-ca-leaf.der");
const EE_UNDER_ROOT: &[u8] = include_bytes!("../testdata/test-pki/attacks/ee-under-root.der");
const ISSUED_BY_EE: &[u8] = include_bytes!("../testdata/test-pki/attacks/issued-by-ee.der");
const LEAF_SHA256: &[u8] = include_bytes!("../testdata/test-pki/attacks/leaf-sha256.der");
const LEAF_P256: &[u8] = include_bytes!("../testdata/test-pki/attacks/leaf-p256.der");

/// Two real documents from AWS Nitro hardware (see testdata/README.md).
const AWS_DOC_2025: &[u8] = include_bytes!("../testdata/aws/real-2025-09-eu-west-1.cbor");
const AWS_DOC_2026: &[u8] = include_bytes!("../testdata/aws/real-2026-02-ap-southeast-2.cbor");
const AWS_ROOT_PEM: &str = include_str!("../roots/aws-nitro-enclaves-root-g1.pem");

/// 2030-01-01T00:00:00Z: inside every test certificate's validity but the expired leaf's.
const NOW: u64 = 1_893_456_000_000;
const NONCE: &[u8] = b"nonce-1234";
const ANCHORS: &[(Root, &[u8])] = &[(Root::Test, ROOT)];

fn pcrs() -> BTreeMap<u8, Vec<u8>> {
    (0..3u8).map(|i| (i, vec![0xa0 + i; 48])).collect()
}

/// A document under construction: payload fields, protected header, signing key.
struct Doc {
    fields: Vec<(String, Value)>,
    protected: Vec<u8>,
    key: SigningKey,
}

impl Doc {
    /// A valid document under the test chain.
    fn new() -> Self {
        Doc::with_chain(LEAF, &[ROOT, INTERMEDIATE], LEAF_KEY)
    }

    fn with_chain(certificate: &[u8], cabundle: &[&[u8]], key: &[u8]) -> Self {
        let fields = aws_fields(
            "i-0123456789abcdef0-enc0123456789abcdef",
            NOW - 1000,
            &pcrs(),
            certificate,
            cabundle,
            Some(b"enclave public key"),
            Some(b"user data"),
            Some(NONCE),
        );
        Doc { fields, protected: es384_protected(), key: signing_key(key) }
    }

    fn set(mut self, name: &str, value: Value) -> Self {
        match self.fields.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name.to_owned(), value)),
        }
        self
    }

    fn push(mut self, name: &str, value: Value) -> Self {
        self.fields.push((name.to_owned(), value));
        self
    }

    fn remove(mut self, name: &str) -> Self {
        self.fields.retain(|(k, _)| k != name);
        self
    }

    fn protected(mut self, header: Value) -> Self {
        self.protected = encode(&header);
        self
    }

    fn sign(&self) -> Vec<u8> {
        sign_cose(&self.key, &self.protected, &encode_payload(&self.fields))
    }
}

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn text(t: &str) -> Value {
    Value::Text(t.to_owned())
}

fn pcr_map(entries: impl IntoIterator<Item = (Value, Value)>) -> Value {
    Value::Map(entries.into_iter().collect())
}

fn check(document: &[u8]) -> Result<AttestationDoc, VerifyError> {
    verify_against(document, ANCHORS, NOW, Some(NONCE))
}

fn check_at(document: &[u8], now_ms: u64) -> Result<AttestationDoc, VerifyError> {
    verify_against(document, ANCHORS, now_ms, Some(NONCE))
}

static GOOD: LazyLock<Vec<u8>> = LazyLock::new(|| Doc::new().sign());

/// Asserts that `result` is an error matching `pattern`, showing the error otherwise.
macro_rules! assert_refused {
    ($result:expr, $pattern:pat $(if $guard:expr)?) => {
        match $result {
            Err(e) => assert!(matches!(&e, $pattern $(if $guard)?), "refused for another reason: {e}"),
            Ok(doc) => panic!("accepted: {doc:?}"),
        }
    };
}

// --- the happy path ----------------------------------------------------------------------

#[test]
fn mock_document_verifies_and_returns_its_fields() {
    let doc = check(&GOOD).expect("valid mock document");
    assert_eq!(doc.module_id, "i-0123456789abcdef0-enc0123456789abcdef");
    assert_eq!(doc.digest, "SHA384");
    assert_eq!(doc.timestamp_ms, NOW - 1000);
    assert_eq!(doc.pcrs, pcrs());
    assert_eq!(doc.public_key.as_deref(), Some(&b"enclave public key"[..]));
    assert_eq!(doc.user_data.as_deref(), Some(&b"user data"[..]));
    assert_eq!(doc.nonce.as_deref(), Some(NONCE));
    assert_eq!(doc.root, Root::Test);
}

#[test]
fn mock_document_has_the_nsm_envelope() {
    // Untagged array of 4, protected header bstr {1: -35}, empty unprotected map, then the
    // payload as an indefinite-length map: byte for byte the shape of the real documents.
    assert_eq!(&GOOD[..7], &[0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0]);
    assert_eq!(&AWS_DOC_2025[..7], &GOOD[..7]);
    for doc in [&GOOD[..], AWS_DOC_2025] {
        assert_eq!(doc[7], 0x59, "a payload of 256 to 65535 bytes");
        assert_eq!(&doc[10..21], b"\xbfimodule_id");
    }
}

#[test]
fn tagged_cose_sign1_verifies() {
    let mut tagged = vec![0xd2]; // tag(18)
    tagged.extend_from_slice(&GOOD);
    check(&tagged).expect("tag 18 is COSE_Sign1");
}

#[test]
fn without_an_expected_nonce_any_nonce_or_none_is_fine() {
    verify_against(&GOOD, ANCHORS, NOW, None).unwrap();
    let no_nonce = Doc::new().set("nonce", Value::Null).sign();
    let doc = verify_against(&no_nonce, ANCHORS, NOW, None).unwrap();
    assert_eq!(doc.nonce, None);
    let absent = Doc::new().remove("nonce").remove("user_data").remove("public_key").sign();
    let doc = verify_against(&absent, ANCHORS, NOW, None).unwrap();
    assert_eq!((doc.public_key, doc.user_data, doc.nonce), (None, None, None));
}

#[test]
fn bounds_are_inclusive() {
    let doc = Doc::new()
        .set("user_data", bytes(&[7; 1024]))
        .set("nonce", bytes(&[]))
        .set("public_key", bytes(&[1; 1024]))
        .set("pcrs", pcr_map([(int(0), bytes(&[0; 32])), (int(31), bytes(&[0; 64]))]))
        .sign();
    let doc = verify_against(&doc, ANCHORS, NOW, Some(b"")).unwrap();
    assert_eq!(doc.user_data.unwrap().len(), 1024);
    let all = pcr_map((0..32).map(|i| (int(i), bytes(&[0; 48]))));
    check(&Doc::new().set("pcrs", all).sign()).expect("32 PCRs");
}

// --- nonce -----------------------------------------------------------------------------------

#[test]
fn wrong_nonce_is_refused() {
    let result = verify_against(&GOOD, ANCHORS, NOW, Some(b"nonce-9999"));
    assert_refused!(result, VerifyError::NonceMismatch { .. });
    let msg = verify_against(&GOOD, ANCHORS, NOW, Some(b"x")).unwrap_err().to_string();
    assert!(msg.contains(&hex::encode(NONCE)) && msg.contains("78"), "{msg}");
}

#[test]
fn missing_nonce_is_refused_when_one_is_expected() {
    assert_refused!(
        check(&Doc::new().set("nonce", Value::Null).sign()),
        VerifyError::NonceMissing { .. }
    );
    assert_refused!(check(&Doc::new().remove("nonce").sign()), VerifyError::NonceMissing { .. });
}

// --- tampering and signatures ---------------------------------------------------------------

#[test]
fn tampered_payload_byte_is_refused() {
    let mut doc = GOOD.clone();
    let at = doc.windows(9).position(|w| w == b"i-0123456").unwrap();
    doc[at + 2] = b'9';
    assert_refused!(check(&doc), VerifyError::BadSignature);
    // A PCR value, deeper in the payload.
    let mut doc = GOOD.clone();
    let at = doc.windows(48).position(|w| w == [0xa1; 48]).unwrap();
    doc[at] ^= 1;
    assert_refused!(check(&doc), VerifyError::BadSignature);
}

#[test]
fn tampered_signature_is_refused() {
    let mut doc = GOOD.clone();
    let last = doc.len() - 1;
    doc[last] ^= 0x01;
    assert_refused!(check(&doc), VerifyError::BadSignature);
    let mut doc = GOOD.clone();
    let sig_start = doc.len() - 96;
    doc[sig_start..].fill(0); // r = s = 0
    assert_refused!(check(&doc), VerifyError::BadSignature);
}

#[test]
fn signature_by_another_key_with_the_right_chain_is_refused() {
    let doc = Doc::with_chain(LEAF, &[ROOT, INTERMEDIATE], FOREIGN_LEAF_KEY).sign();
    assert_refused!(check(&doc), VerifyError::BadSignature);
}

// --- roots -----------------------------------------------------------------------------------

#[test]
fn foreign_root_is_refused() {
    let doc = Doc::with_chain(FOREIGN_LEAF, &[FOREIGN_ROOT], FOREIGN_LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    let VerifyError::UntrustedRoot { fingerprint, accepted } = &err else { panic!("{err}") };
    assert_eq!(*fingerprint, hex::encode_upper(Sha256::digest(FOREIGN_ROOT)));
    assert_eq!(accepted, "TEST ROOT (simulated; never production)");
}

#[test]
fn cabundle0_must_be_an_accepted_root() {
    // The genuine intermediate in the root's place.
    let doc = Doc::with_chain(LEAF, &[INTERMEDIATE], LEAF_KEY).sign();
    assert_refused!(check(&doc), VerifyError::UntrustedRoot { .. });
    // The root, but not first.
    let doc = Doc::with_chain(LEAF, &[INTERMEDIATE, ROOT], LEAF_KEY).sign();
    assert_refused!(check(&doc), VerifyError::UntrustedRoot { .. });
    // The root with one byte more (still one CBOR byte string).
    let mut longer = ROOT.to_vec();
    longer.push(0);
    let doc = Doc::with_chain(LEAF, &[&longer, INTERMEDIATE], LEAF_KEY).sign();
    assert_refused!(check(&doc), VerifyError::UntrustedRoot { .. });
    // No anchors at all.
    assert_refused!(verify_against(&GOOD, &[], NOW, None), VerifyError::UntrustedRoot { .. });
    // The AWS root only: a simulated document is not a production one.
    let only_aws = [(Root::AwsNitroG1, AWS_NITRO_ROOT_G1_DER)];
    assert_refused!(verify_against(&GOOD, &only_aws, NOW, None), VerifyError::UntrustedRoot { .. });
}

#[test]
fn stock_qemu_document_is_refused() {
    // What QEMU's emulated NSM returns (reference notes 2.4): alg -1, zero certificate,
    // zero cabundle, 64 zero bytes of signature.
    let fields = aws_fields("qemu", NOW, &pcrs(), &[0; 64], &[&[0; 64]], None, None, Some(NONCE));
    let qemu = encode(&Value::Array(vec![
        bytes(&encode(&Value::Map(vec![(int(1), int(-1))]))),
        Value::Map(vec![]),
        bytes(&encode_payload(&fields)),
        bytes(&[0; 64]),
    ]));
    assert_refused!(check(&qemu), VerifyError::UnsupportedAlgorithm { .. });
    // Even with the right alg, the zero "root" is no root.
    let patched = encode(&Value::Array(vec![
        bytes(&es384_protected()),
        Value::Map(vec![]),
        bytes(&encode_payload(&fields)),
        bytes(&[0; 96]),
    ]));
    assert_refused!(check(&patched), VerifyError::UntrustedRoot { .. });
}

// --- the chain -------------------------------------------------------------------------------

#[test]
fn intermediate_removed_is_refused() {
    let doc = Doc::with_chain(LEAF, &[ROOT], LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    assert!(
        matches!(&err, VerifyError::IssuerMismatch { cert, issuer }
            if cert == "certificate" && issuer == "cabundle[0] (the root)"),
        "{err}"
    );
}

#[test]
fn certificate_from_another_pki_does_not_chain() {
    let doc = Doc::with_chain(FOREIGN_LEAF, &[ROOT, INTERMEDIATE], FOREIGN_LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    assert!(
        matches!(&err, VerifyError::IssuerMismatch { cert, issuer }
            if cert == "certificate" && issuer == "cabundle[1]"),
        "{err}"
    );
}

#[test]
fn intermediate_with_the_right_name_but_another_key_is_refused() {
    // The impostor intermediate names the test root as its issuer, but another key signed it.
    let doc = Doc::with_chain(IMPOSTOR_LEAF, &[ROOT, IMPOSTOR_INTERMEDIATE], LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    assert!(
        matches!(&err, VerifyError::CertificateSignature { cert, .. } if cert == "cabundle[1]"),
        "{err}"
    );
    // The impostor leaf under the genuine intermediate: names match, signature does not.
    let doc = Doc::with_chain(IMPOSTOR_LEAF, &[ROOT, INTERMEDIATE], LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    assert!(
        matches!(&err, VerifyError::CertificateSignature { cert, .. } if cert == "certificate"),
        "{err}"
    );
}

#[test]
fn tampered_certificate_is_refused() {
    // One bit of the leaf's serial number: still canonical DER, no longer what was signed.
    let mut leaf = LEAF.to_vec();
    leaf[20] ^= 0x01;
    let doc = Doc::with_chain(&leaf, &[ROOT, INTERMEDIATE], LEAF_KEY).sign();
    assert_refused!(check(&doc), VerifyError::CertificateSignature { .. });
}

#[test]
fn malformed_certificates_are_refused() {
    let mut trailing = LEAF.to_vec();
    trailing.push(0);
    for leaf in [&trailing[..], &LEAF[..LEAF.len() - 1], &[0x30, 0x00][..]] {
        let doc = Doc::with_chain(leaf, &[ROOT, INTERMEDIATE], LEAF_KEY).sign();
        assert_refused!(check(&doc), VerifyError::MalformedCertificate { .. });
    }
}

#[test]
fn expired_leaf_is_refused() {
    let doc = Doc::with_chain(EXPIRED_LEAF, &[ROOT, INTERMEDIATE], LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    assert!(matches!(&err, VerifyError::CertificateExpired { cert, .. } if cert == "certificate"));
    assert!(err.to_string().contains("2021-01-01T00:00:00Z"), "{err}");
    // The same leaf verifies while it was valid.
    let mid_2020 = 1_593_561_600_000;
    let doc = Doc::with_chain(EXPIRED_LEAF, &[ROOT, INTERMEDIATE], LEAF_KEY)
        .set("timestamp", int(mid_2020 as i64))
        .sign();
    check_at(&doc, mid_2020).expect("valid in 2020");
}

#[test]
fn time_outside_the_chain_validity_is_refused() {
    let before = 1_559_347_200_000; // 2019-06-01, before every notBefore (2020-01-01)
    assert_refused!(check_at(&GOOD, before), VerifyError::CertificateNotYetValid { .. });
    let after = 4_765_132_800_001; // just after 2121-01-01
    assert_refused!(check_at(&GOOD, after), VerifyError::CertificateExpired { .. });
    assert_refused!(check_at(&GOOD, u64::MAX), VerifyError::CertificateExpired { .. });
    // The validity bounds themselves are inside (RFC 5280: "through").
    check_at(&GOOD, 1_577_836_800_000).expect("at notBefore 2020-01-01T00:00:00Z");
    check_at(&GOOD, 4_733_510_400_000).expect("at notAfter 2120-01-01T00:00:00Z");
    assert_refused!(check_at(&GOOD, 4_733_510_401_000), VerifyError::CertificateExpired { .. });
}

#[test]
fn path_length_is_enforced() {
    // The intermediate has pathlen 0; a sub-CA under it breaks that.
    let doc = Doc::with_chain(SUB_CA_LEAF, &[ROOT, INTERMEDIATE, SUB_CA], LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    assert!(
        matches!(&err, VerifyError::PathLenExceeded { cert, path_len: 0, below: 1 }
            if cert == "cabundle[1]"),
        "{err}"
    );
}

#[test]
fn an_end_entity_cannot_issue() {
    let doc = Doc::with_chain(ISSUED_BY_EE, &[ROOT, EE_UNDER_ROOT], LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    assert!(matches!(&err, VerifyError::NotACa { cert, .. } if cert == "cabundle[1]"), "{err}");
}

#[test]
fn a_ca_cannot_sign_documents() {
    // The root itself as the signing certificate (self-issued, so the chain holds).
    let doc = Doc::with_chain(ROOT, &[ROOT], LEAF_KEY).sign();
    assert_refused!(check(&doc), VerifyError::LeafUsage { .. });
    let doc = Doc::with_chain(INTERMEDIATE, &[ROOT], LEAF_KEY).sign();
    assert_refused!(check(&doc), VerifyError::LeafUsage { .. });
}

#[test]
fn other_algorithms_are_refused() {
    let doc = Doc::with_chain(LEAF_SHA256, &[ROOT, INTERMEDIATE], LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    assert!(
        matches!(&err, VerifyError::UnsupportedCertificateAlgorithm { found, .. }
            if found == "1.2.840.10045.4.3.2"),
        "{err}"
    );
    let doc = Doc::with_chain(LEAF_P256, &[ROOT, INTERMEDIATE], LEAF_KEY).sign();
    let err = check(&doc).unwrap_err();
    assert!(
        matches!(&err, VerifyError::UnsupportedCertificateAlgorithm { found, .. }
            if found == "1.2.840.10045.3.1.7"),
        "{err}"
    );
}

// --- sizes -----------------------------------------------------------------------------------

#[test]
fn oversize_fields_are_refused() {
    let too_long = |field: &str, len: usize| {
        let doc = Doc::new().set(field, bytes(&vec![1; len])).sign();
        let err = check(&doc).unwrap_err();
        assert!(
            matches!(&err, VerifyError::FieldLength { field: f, len: l, .. } if f == field && *l == len),
            "{field} {len}: {err}"
        );
    };
    too_long("user_data", 1025);
    too_long("nonce", 1025);
    too_long("public_key", 1025);
    too_long("public_key", 0);
    too_long("certificate", 1025);
    too_long("certificate", 0);

    let doc = Doc::with_chain(LEAF, &[ROOT, &[0; 1025]], LEAF_KEY).sign();
    assert_refused!(check(&doc), VerifyError::FieldLength { .. });
    let doc = Doc::with_chain(LEAF, &[ROOT, &[]], LEAF_KEY).sign();
    assert_refused!(check(&doc), VerifyError::FieldLength { .. });
}

#[test]
fn pcr_bounds_are_enforced() {
    let with = |pcrs: Value| check(&Doc::new().set("pcrs", pcrs).sign());
    assert_refused!(
        with(pcr_map([(int(0), bytes(&[0; 47]))])),
        VerifyError::PcrLength { index: 0, len: 47 }
    );
    assert_refused!(
        with(pcr_map([(int(3), bytes(&[0; 0]))])),
        VerifyError::PcrLength { index: 3, len: 0 }
    );
    assert_refused!(with(pcr_map([(int(1), bytes(&[0; 96]))])), VerifyError::PcrLength { .. });
    assert_refused!(
        with(pcr_map((0..33).map(|i| (int(i), bytes(&[0; 48]))))),
        VerifyError::PcrCount(33)
    );
    assert_refused!(with(pcr_map([])), VerifyError::PcrCount(0));
    assert_refused!(with(pcr_map([(int(32), bytes(&[0; 48]))])), VerifyError::PcrIndex(_));
    assert_refused!(with(pcr_map([(int(-1), bytes(&[0; 48]))])), VerifyError::PcrIndex(_));
    assert_refused!(with(pcr_map([(int(256), bytes(&[0; 48]))])), VerifyError::PcrIndex(_));
    assert_refused!(
        with(pcr_map([(int(0), bytes(&[0; 48])), (int(0), bytes(&[1; 48]))])),
        VerifyError::DuplicatePcr(0)
    );
    assert_refused!(with(pcr_map([(text("0"), bytes(&[0; 48]))])), VerifyError::FieldType { .. });
    assert_refused!(with(pcr_map([(int(0), text("00"))])), VerifyError::FieldType { .. });
    assert_refused!(with(Value::Array(vec![bytes(&[0; 48])])), VerifyError::FieldType { .. });
}

#[test]
fn oversize_document_is_refused_before_parsing() {
    let big = Doc::new().set("module_id", text(&"x".repeat(MAX_DOCUMENT_BYTES))).sign();
    assert_refused!(check(&big), VerifyError::DocumentTooLarge { .. });
    let garbage = vec![0xff; MAX_DOCUMENT_BYTES + 1];
    assert_refused!(check(&garbage), VerifyError::DocumentTooLarge { size, max: MAX_DOCUMENT_BYTES } if *size == MAX_DOCUMENT_BYTES + 1);
}

// --- header and payload syntax --------------------------------------------------------------

#[test]
fn only_es384_is_accepted() {
    let with = |header: Value| check(&Doc::new().protected(header).sign());
    let err = with(Value::Map(vec![(int(1), int(-7))])).unwrap_err(); // ES256
    assert!(matches!(&err, VerifyError::UnsupportedAlgorithm { found } if found == "-7"), "{err}");
    assert_refused!(
        with(Value::Map(vec![(int(1), int(-36))])),
        VerifyError::UnsupportedAlgorithm { .. }
    );
    assert_refused!(
        with(Value::Map(vec![(int(1), text("ES384"))])),
        VerifyError::UnsupportedAlgorithm { .. }
    );
    assert_refused!(with(Value::Map(vec![])), VerifyError::UnsupportedAlgorithm { found } if found == "absent");
    assert_refused!(
        with(Value::Map(vec![(int(1), int(-35)), (int(4), bytes(b"kid"))])),
        VerifyError::UnexpectedHeader(_)
    );
    assert_refused!(
        with(Value::Map(vec![(int(1), int(-35)), (int(1), int(-35))])),
        VerifyError::NotCoseSign1(_)
    );
    assert_refused!(with(Value::Array(vec![int(1), int(-35)])), VerifyError::NotCoseSign1(_));
    // A zero-length protected header is the empty map: no alg.
    let mut doc = Doc::new();
    doc.protected = Vec::new();
    assert_refused!(check(&doc.sign()), VerifyError::UnsupportedAlgorithm { .. });
}

#[test]
fn digest_must_be_sha384() {
    for digest in ["SHA256", "sha384", "SHA512", ""] {
        let doc = Doc::new().set("digest", text(digest)).sign();
        assert_refused!(check(&doc), VerifyError::UnsupportedDigest(_));
    }
}

#[test]
fn payload_fields_are_checked() {
    for field in ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"] {
        let doc = Doc::new().remove(field).sign();
        assert_refused!(check(&doc), VerifyError::MissingField(f) if *f == field);
        let doc = Doc::new().set(field, Value::Null).sign();
        assert_refused!(check(&doc), VerifyError::FieldType { .. });
    }
    let cases = [
        ("module_id", bytes(b"i-0")),
        ("digest", bytes(b"SHA384")),
        ("timestamp", int(-1)),
        ("timestamp", text("1700000000000")),
        ("certificate", text("MIIC")),
        ("cabundle", bytes(ROOT)),
        ("cabundle", Value::Array(vec![text("root")])),
        ("public_key", text("key")),
        ("user_data", Value::Array(vec![])),
        ("nonce", int(1234)),
    ];
    for (field, value) in cases {
        let doc = Doc::new().set(field, value).sign();
        assert_refused!(check(&doc), VerifyError::FieldType { .. });
    }
    assert_refused!(
        check(&Doc::new().set("module_id", text("")).sign()),
        VerifyError::EmptyModuleId
    );
    assert_refused!(check(&Doc::new().set("timestamp", int(0)).sign()), VerifyError::ZeroTimestamp);
    assert_refused!(
        check(&Doc::new().set("cabundle", Value::Array(vec![])).sign()),
        VerifyError::EmptyCabundle
    );
    assert_refused!(
        check(&Doc::new().push("extra", int(1)).sign()),
        VerifyError::UnknownField(f) if f == "extra"
    );
    assert_refused!(
        check(&Doc::new().push("nonce", bytes(b"second nonce")).sign()),
        VerifyError::DuplicateField(f) if f == "nonce"
    );
}

#[test]
fn payload_must_be_a_map_of_text_keys() {
    let key = signing_key(LEAF_KEY);
    let sign = |payload: &Value| sign_cose(&key, &es384_protected(), &encode(payload));
    assert_refused!(check(&sign(&Value::Array(vec![]))), VerifyError::MalformedPayload(_));
    assert_refused!(
        check(&sign(&Value::Map(vec![(int(1), int(1))]))),
        VerifyError::MalformedPayload(_)
    );
    // A payload with bytes after its map.
    let mut payload = encode_payload(&Doc::new().fields);
    payload.push(0);
    assert_refused!(
        check(&sign_cose(&key, &es384_protected(), &payload)),
        VerifyError::MalformedPayload(_)
    );
}

#[test]
fn envelope_shape_is_checked() {
    let protected = bytes(&es384_protected());
    let payload = bytes(&encode_payload(&Doc::new().fields));
    let sig = bytes(&[1; 96]);
    let array = |items: Vec<Value>| encode(&Value::Array(items));
    let m = || Value::Map(vec![]);
    let cases = [
        array(vec![protected.clone(), m(), payload.clone()]),
        array(vec![protected.clone(), m(), payload.clone(), sig.clone(), sig.clone()]),
        array(vec![text("x"), m(), payload.clone(), sig.clone()]),
        array(vec![protected.clone(), Value::Array(vec![]), payload.clone(), sig.clone()]),
        array(vec![protected.clone(), m(), Value::Null, sig.clone()]),
        array(vec![protected.clone(), m(), bytes(&[]), sig.clone()]),
        array(vec![protected.clone(), m(), text("payload"), sig.clone()]),
        array(vec![protected.clone(), m(), payload.clone(), text("sig")]),
        array(vec![protected.clone(), m(), payload.clone(), bytes(&[1; 64])]),
        array(vec![protected.clone(), m(), payload.clone(), bytes(&[1; 97])]),
        encode(&Value::Tag(
            17,
            Box::new(Value::Array(vec![protected.clone(), m(), payload.clone(), sig.clone()])),
        )),
        encode(&Value::Tag(18, Box::new(m()))),
        encode(&m()),
        encode(&bytes(&GOOD)),
    ];
    for (i, case) in cases.iter().enumerate() {
        let err = check(case).expect_err(&format!("case {i} accepted"));
        assert!(matches!(err, VerifyError::NotCoseSign1(_)), "case {i}: {err}");
    }
}

// --- garbage: errors, never panics -----------------------------------------------------------

#[test]
fn garbage_and_truncations_are_refused() {
    assert_refused!(check(&[]), VerifyError::MalformedCbor(_));
    assert_refused!(
        check(b"not cbor at all"),
        VerifyError::MalformedCbor(_) | VerifyError::NotCoseSign1(_)
    );
    // The document as base64 text, a common mistake.
    assert_refused!(
        check(b"hEShATgioFkRIr9p"),
        VerifyError::MalformedCbor(_) | VerifyError::NotCoseSign1(_)
    );
    for len in 0..GOOD.len() {
        assert!(check(&GOOD[..len]).is_err(), "a {len}-byte prefix was accepted");
    }
    let mut trailing = GOOD.clone();
    trailing.push(0);
    assert_refused!(check(&trailing), VerifyError::MalformedCbor(_));
    // Deep nesting and absurd declared lengths.
    assert!(check(&[0x81; 10_000]).is_err());
    assert!(check(&[0x9f; 10_000]).is_err());
    assert!(check(&[0x84, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    assert!(check(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    assert!(check(&[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_changed_byte_is_refused(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut doc = GOOD.clone();
        let i = at.index(doc.len());
        doc[i] ^= xor;
        prop_assert!(check(&doc).is_err(), "byte {} ^ {:#04x} accepted", i, xor);
    }

    #[test]
    fn random_bytes_are_refused(doc in prop::collection::vec(any::<u8>(), 0..4096)) {
        prop_assert!(check(&doc).is_err());
    }

    #[test]
    fn truncated_or_extended_documents_are_refused(cut in 1usize..200, extra in prop::collection::vec(any::<u8>(), 1..16)) {
        let cut = GOOD.len() - cut.min(GOOD.len());
        prop_assert!(check(&GOOD[..cut]).is_err());
        let mut longer = GOOD.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(check(&longer).is_err());
    }
}

// --- the production root and real documents --------------------------------------------------

#[test]
fn aws_root_fingerprint_is_the_published_one() {
    assert_eq!(hex::encode_upper(Sha256::digest(AWS_NITRO_ROOT_G1_DER)), AWS_NITRO_ROOT_G1_SHA256);
    assert_eq!(
        AWS_NITRO_ROOT_G1_SHA256,
        "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B"
    );
    assert_eq!(Root::AwsNitroG1.der(), Some(AWS_NITRO_ROOT_G1_DER));
}

#[test]
fn aws_root_der_is_the_published_pem() {
    use base64::Engine as _;
    let body: String = AWS_ROOT_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    assert_eq!(der, AWS_NITRO_ROOT_G1_DER);
}

/// The first real document's timestamp (2025-09-09T17:59:41.958Z).
const AWS_DOC_2025_TS: u64 = 1_757_440_781_958;

#[test]
fn real_aws_documents_verify_against_the_aws_root() {
    let doc = verify_with(AWS_DOC_2025, &[Root::AwsNitroG1], AWS_DOC_2025_TS, None).unwrap();
    assert_eq!(doc.root, Root::AwsNitroG1);
    assert_eq!(doc.module_id, "i-01464dfc66ef2a314-enc0198f62377ead51d");
    assert_eq!(doc.timestamp_ms, AWS_DOC_2025_TS);
    assert_eq!(doc.pcrs.len(), 16);
    assert_eq!(
        hex_pcr(&doc.pcrs[&0]),
        "94b74422daddb8f503fcd69df064c7cde5d053001b9cd153c75ec34484283496a37e89c7287a00f467759a6863362b60"
    );
    assert_eq!(
        doc.public_key.as_deref().map(hex::encode).as_deref(),
        Some("03637e4a2d6b8325ec60e0ccd53ca0f05f67e3356535c45656403aee207d4694d8")
    );
    assert_eq!((doc.user_data, doc.nonce), (None, None));

    let ts_2026 = 0x0000_019c_320d_4d14; // the second document's timestamp
    let doc = verify(AWS_DOC_2026, ts_2026, None).unwrap();
    assert_eq!(doc.root, Root::AwsNitroG1);
    assert_eq!(
        hex_pcr(&doc.pcrs[&0]),
        "6165855369654a587bdad59fa532f430d7defa38ecf57eeac6d29c7e87a32b621891862d04fb64423f6bb1e1626fc026"
    );
    assert_eq!(doc.nonce.as_ref().map(Vec::len), Some(32));
    assert!(doc.user_data.unwrap().starts_with(b"{\"job_id\""));
    assert_eq!(doc.public_key, None);

    // Checking the nonce of a real document.
    let nonce = doc.nonce.unwrap();
    verify(AWS_DOC_2026, ts_2026, Some(&nonce)).unwrap();
    assert_refused!(
        verify(AWS_DOC_2026, ts_2026, Some(b"other")),
        VerifyError::NonceMismatch { .. }
    );
}

#[test]
fn real_aws_documents_are_refused_when_stale_or_altered() {
    // Today its 3-hour leaf has long expired.
    let dec_2026 = 1_796_083_200_000;
    assert_refused!(verify(AWS_DOC_2025, dec_2026, None), VerifyError::CertificateExpired { .. });
    // Only the test root: not this PKI.
    assert_refused!(
        verify_against(AWS_DOC_2025, ANCHORS, AWS_DOC_2025_TS, None),
        VerifyError::UntrustedRoot { .. }
    );
    // A flipped PCR bit.
    let mut doc = AWS_DOC_2025.to_vec();
    let at = doc.windows(4).position(|w| w == [0x94, 0xb7, 0x44, 0x22]).unwrap();
    doc[at] ^= 1;
    assert_refused!(verify(&doc, AWS_DOC_2025_TS, None), VerifyError::BadSignature);
}

// --- which roots a build has -----------------------------------------------------------------

#[test]
fn roots_display_as_documented() {
    assert_eq!(Root::AwsNitroG1.to_string(), "AWS Nitro Enclaves Root-G1");
    assert_eq!(Root::Test.to_string(), "TEST ROOT (simulated; never production)");
    assert!(Root::AwsNitroG1.is_production() && !Root::Test.is_production());
}

#[cfg(not(feature = "test-pki"))]
#[test]
fn without_test_pki_the_test_root_does_not_exist() {
    assert_eq!(accepted_roots(), &[Root::AwsNitroG1]);
    assert_eq!(Root::Test.der(), None);
    assert_refused!(
        verify_with(&GOOD, &[Root::Test], NOW, None),
        VerifyError::RootNotInBuild(Root::Test)
    );
    assert_refused!(verify(&GOOD, NOW, Some(NONCE)), VerifyError::UntrustedRoot { .. });
}

#[cfg(feature = "test-pki")]
#[test]
fn with_test_pki_the_test_root_is_accepted() {
    assert_eq!(accepted_roots(), &[Root::AwsNitroG1, Root::Test]);
    assert_eq!(Root::Test.der(), Some(ROOT));
    assert_eq!(verify(&GOOD, NOW, Some(NONCE)).unwrap().root, Root::Test);
    assert_eq!(verify_with(&GOOD, &[Root::Test], NOW, None).unwrap().root, Root::Test);
    // A caller that wants production documents only can still say so.
    assert_refused!(
        verify_with(&GOOD, &[Root::AwsNitroG1], NOW, None),
        VerifyError::UntrustedRoot { .. }
    );
}

#[cfg(feature = "test-pki")]
#[test]
fn sign_document_is_the_mock_signer() {
    use crate::test_pki::{sign_document, TEST_INTERMEDIATE_DER, TEST_LEAF_DER, TEST_ROOT_DER};
    assert_eq!((TEST_ROOT_DER, TEST_INTERMEDIATE_DER, TEST_LEAF_DER), (ROOT, INTERMEDIATE, LEAF));
    let signed = sign_document(
        "i-0123456789abcdef0-enc0123456789abcdef",
        NOW - 1000,
        &pcrs(),
        Some(b"enclave public key"),
        Some(b"user data"),
        Some(NONCE),
    );
    assert_eq!(signed, *GOOD, "sign_document and the tests' builder agree (RFC 6979)");
    let doc = verify(&signed, NOW, Some(NONCE)).unwrap();
    assert_eq!(doc.pcrs, pcrs());
    // Out-of-bounds input is signed as given, and refused by the verifier.
    let bad = sign_document("m", NOW, &pcrs(), None, Some(&[0; 1025]), None);
    assert_refused!(verify(&bad, NOW, None), VerifyError::FieldLength { .. });
}

// --- measurements ----------------------------------------------------------------------------

const PCR0: &str = "94b74422daddb8f503fcd69df064c7cde5d053001b9cd153c75ec34484283496a37e89c7287a00f467759a6863362b60";
const PCR1: &str = "927e084e583f5c2d60a39e2b9cd9728bfb390aa9f83dee4b6ac768509850ba273ea8b019ccfbf3180eb18a2dd0c4a678";
const PCR2: &str = "07c20c057d5c10cb732b273b7fa26a2b67e333344ccda49be939a6b7c5bed5e46f0b0703386dd2d0f6104a13a4894cb2";

fn aws_doc() -> AttestationDoc {
    verify_with(AWS_DOC_2025, &[Root::AwsNitroG1], AWS_DOC_2025_TS, None).unwrap()
}

#[test]
fn measurements_read_nitro_cli_output() {
    let text = format!(
        r#"{{"Measurements": {{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "{PCR0}", "PCR1": "{PCR1}", "PCR2": "{}"}}}}"#,
        PCR2.to_uppercase()
    );
    let m = Measurements::from_json(&text).unwrap();
    assert_eq!(m.0.len(), 3);
    assert_eq!(hex_pcr(&m.0[&2]), PCR2);
    m.check(&aws_doc()).unwrap();
    // describe-eif prints more next to "Measurements".
    let text =
        format!(r#"{{"EifVersion": 4, "Measurements": {{"PCR0": "{PCR0}"}}, "IsSigned": false}}"#);
    Measurements::from_json(&text).unwrap().check(&aws_doc()).unwrap();
}

#[test]
fn measurements_read_a_plain_map() {
    let text = format!(r#"{{"PCR0": "{PCR0}", "pcr2": " {PCR2} "}}"#);
    let m = Measurements::from_json(&text).unwrap();
    assert_eq!(m.0.keys().copied().collect::<Vec<_>>(), [0, 2]);
    m.check(&aws_doc()).unwrap();
}

#[test]
fn measurements_refuse_bad_files() {
    let err = |text: &str| Measurements::from_json(text).unwrap_err();
    assert!(matches!(err("not json"), MeasurementsError::Json(_)));
    assert!(matches!(err("[]"), MeasurementsError::Shape(_)));
    assert!(matches!(err(r#"{"Measurements": []}"#), MeasurementsError::Shape(_)));
    assert!(matches!(err("{}"), MeasurementsError::Empty));
    assert!(matches!(
        err(r#"{"Measurements": {"HashAlgorithm": "Sha384"}}"#),
        MeasurementsError::Empty
    ));
    assert!(matches!(
        err(&format!(r#"{{"PCR0": "{PCR0}", "PCRX": "00"}}"#)),
        MeasurementsError::UnknownKey(_)
    ));
    assert!(matches!(err(&format!(r#"{{"PCR00": "{PCR0}"}}"#)), MeasurementsError::UnknownKey(_)));
    assert!(matches!(err(&format!(r#"{{"PCR32": "{PCR0}"}}"#)), MeasurementsError::Index(32)));
    assert!(matches!(err(r#"{"PCR0": "zz"}"#), MeasurementsError::Hex { index: 0, .. }));
    assert!(matches!(err(r#"{"PCR0": "abcd"}"#), MeasurementsError::Length { index: 0, len: 2 }));
    assert!(matches!(err(r#"{"PCR0": 5}"#), MeasurementsError::Shape(_)));
    assert!(matches!(
        err(&format!(r#"{{"HashAlgorithm": "Sha256", "PCR0": "{PCR0}"}}"#)),
        MeasurementsError::HashAlgorithm(_)
    ));
    assert!(matches!(
        err(&format!(r#"{{"PCR0": "{PCR0}", "pcr0": "{PCR1}"}}"#)),
        MeasurementsError::Conflict(0)
    ));
}

#[test]
fn measurements_insert_hex() {
    let mut m = Measurements::default();
    m.insert_hex(0, PCR0).unwrap();
    m.insert_hex(0, &PCR0.to_uppercase()).unwrap(); // the same value again
    assert!(matches!(m.insert_hex(0, PCR1), Err(MeasurementsError::Conflict(0))));
    assert!(matches!(m.insert_hex(32, PCR1), Err(MeasurementsError::Index(32))));
    assert!(matches!(
        m.insert_hex(1, &PCR1[2..]),
        Err(MeasurementsError::Length { .. } | MeasurementsError::Hex { .. })
    ));
    m.insert_hex(1, PCR1).unwrap();
    m.check(&aws_doc()).unwrap();
}

#[test]
fn measurements_mismatch_lists_each_pcr_with_both_values() {
    let mut m = Measurements::default();
    m.insert_hex(0, PCR0).unwrap();
    m.insert_hex(1, PCR2).unwrap(); // wrong on purpose
    m.insert_hex(16, PCR0).unwrap(); // the document has only PCR0..15
    let err = m.check(&aws_doc()).unwrap_err();
    assert_eq!(err.0.len(), 2);
    assert_eq!((err.0[0].index, err.0[1].index), (1, 16));
    assert_eq!(err.0[1].found, None);
    let msg = err.to_string();
    assert!(msg.contains(&format!("PCR1 expected {PCR2}, found {PCR1}")), "{msg}");
    assert!(msg.contains(&format!("PCR16 expected {PCR0}, found (absent)")), "{msg}");
    assert!(!msg.contains("PCR0 "), "{msg}");
}

#[test]
fn empty_measurements_accept_nothing() {
    let m = Measurements::default();
    assert!(m.is_empty());
    let err = m.check(&aws_doc()).unwrap_err();
    assert!(err.0.is_empty() && err.to_string().contains("no expected PCR"), "{err}");
}

#[test]
fn hex_pcr_is_lowercase_hex() {
    assert_eq!(hex_pcr(&[0xAB, 0x01]), "ab01");
    assert_eq!(hex_pcr(&[]), "");
}
