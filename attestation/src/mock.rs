//! Building and signing documents in the NSM's exact format (tests and `test-pki` only).

use std::collections::BTreeMap;

use ciborium::value::Value;
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey};
use p384::pkcs8::DecodePrivateKey;

use crate::cose::{sig_structure, ES384};

/// The protected header the NSM writes: the map `{1: -35}` (alg: ES384).
pub(crate) fn es384_protected() -> Vec<u8> {
    encode(&Value::Map(vec![(Value::Integer(1.into()), Value::Integer(ES384.into()))]))
}

/// One CBOR item, shortest-form heads.
pub(crate) fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and every `Value` has an encoding.
    ciborium::ser::into_writer(value, &mut out).expect("CBOR encoding into a Vec");
    out
}

/// A P-384 signing key from PKCS#8 DER (the committed test keys).
pub(crate) fn signing_key(pkcs8_der: &[u8]) -> SigningKey {
    SigningKey::from_pkcs8_der(pkcs8_der).expect("a committed P-384 PKCS#8 test key")
}

/// The payload fields in the NSM's order, optional ones as null when absent (as the NSM writes
/// them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn aws_fields(
    module_id: &str,
    timestamp_ms: u64,
    pcrs: &BTreeMap<u8, Vec<u8>>,
    certificate: &[u8],
    cabundle: &[&[u8]],
    public_key: Option<&[u8]>,
    user_data: Option<&[u8]>,
    nonce: Option<&[u8]>,
) -> Vec<(String, Value)> {
    let opt = |b: Option<&[u8]>| b.map_or(Value::Null, |b| Value::Bytes(b.to_vec()));
    vec![
        ("module_id".to_owned(), Value::Text(module_id.to_owned())),
        ("digest".to_owned(), Value::Text("SHA384".to_owned())),
        ("timestamp".to_owned(), Value::Integer(timestamp_ms.into())),
        (
            "pcrs".to_owned(),
            Value::Map(
                pcrs.iter()
                    .map(|(i, v)| (Value::Integer((*i).into()), Value::Bytes(v.clone())))
                    .collect(),
            ),
        ),
        ("certificate".to_owned(), Value::Bytes(certificate.to_vec())),
        (
            "cabundle".to_owned(),
            Value::Array(cabundle.iter().map(|c| Value::Bytes(c.to_vec())).collect()),
        ),
        ("public_key".to_owned(), opt(public_key)),
        ("user_data".to_owned(), opt(user_data)),
        ("nonce".to_owned(), opt(nonce)),
    ]
}

/// The payload as the NSM encodes it: an indefinite-length map (`0xbf` .. `0xff`) of text keys.
pub(crate) fn encode_payload(fields: &[(String, Value)]) -> Vec<u8> {
    let mut out = vec![0xbf];
    for (key, value) in fields {
        out.extend(encode(&Value::Text(key.clone())));
        out.extend(encode(value));
    }
    out.push(0xff);
    out
}

/// An untagged `COSE_Sign1` `[protected, {}, payload, ES384 signature]`, as the NSM returns it.
pub(crate) fn sign_cose(key: &SigningKey, protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let signature: Signature = key.sign(&sig_structure(protected, payload));
    encode(&Value::Array(vec![
        Value::Bytes(protected.to_vec()),
        Value::Map(Vec::new()),
        Value::Bytes(payload.to_vec()),
        Value::Bytes(signature.to_bytes().to_vec()),
    ]))
}
