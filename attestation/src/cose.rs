//! `COSE_Sign1` (RFC 9052) as the NSM emits it: `[protected {1: -35}, unprotected {}, payload,
//! signature]`, tagged 18 or untagged.

use ciborium::value::Value;
use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};

use crate::VerifyError;

/// COSE algorithm id of ES384 (ECDSA P-384 with SHA-384; RFC 9053 table 1).
pub(crate) const ES384: i64 = -35;
/// The CBOR tag of a tagged `COSE_Sign1` (RFC 9052 section 2).
const COSE_SIGN1_TAG: u64 = 18;
/// An ES384 signature: `r || s`, 48 bytes each (RFC 9053 section 2.1).
const ES384_SIGNATURE_BYTES: usize = 96;

/// A structurally valid `COSE_Sign1` whose protected header is exactly `{1: -35}`.
#[derive(Debug)]
pub(crate) struct CoseSign1 {
    /// The protected header's bytes, as signed.
    pub(crate) protected: Vec<u8>,
    /// The payload's bytes, as signed.
    pub(crate) payload: Vec<u8>,
    /// The raw 96-byte `r || s`.
    pub(crate) signature: Vec<u8>,
}

/// Decodes one CBOR item that must span all of `bytes`.
pub(crate) fn decode_exact(bytes: &[u8]) -> Result<Value, String> {
    let mut rest = bytes;
    let value: Value = ciborium::de::from_reader(&mut rest).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the end of the CBOR item", rest.len()));
    }
    Ok(value)
}

/// Parses the envelope and checks the algorithm; nothing is verified yet.
pub(crate) fn parse(document: &[u8]) -> Result<CoseSign1, VerifyError> {
    let items = match decode_exact(document).map_err(VerifyError::MalformedCbor)? {
        Value::Tag(COSE_SIGN1_TAG, inner) => match *inner {
            Value::Array(items) => items,
            _ => return Err(not_cose("tag 18 does not hold an array")),
        },
        Value::Tag(tag, _) => {
            return Err(not_cose(&format!("CBOR tag {tag}; COSE_Sign1 is tag 18 or untagged")))
        }
        Value::Array(items) => items,
        _ => return Err(not_cose("not an array")),
    };
    let Ok([protected, unprotected, payload, signature]) = <[Value; 4]>::try_from(items) else {
        return Err(not_cose("not an array of 4 items"));
    };
    let Value::Bytes(protected) = protected else {
        return Err(not_cose("the protected header is not a byte string"));
    };
    if !matches!(unprotected, Value::Map(_)) {
        return Err(not_cose("the unprotected header is not a map"));
    }
    let payload = match payload {
        Value::Bytes(payload) if !payload.is_empty() => payload,
        Value::Bytes(_) => return Err(not_cose("the payload is empty")),
        Value::Null => return Err(not_cose("detached payload (nil); the NSM embeds it")),
        _ => return Err(not_cose("the payload is not a byte string")),
    };
    let Value::Bytes(signature) = signature else {
        return Err(not_cose("the signature is not a byte string"));
    };
    check_protected(&protected)?;
    if signature.len() != ES384_SIGNATURE_BYTES {
        return Err(not_cose(&format!(
            "the signature is {} bytes; an ES384 signature is {ES384_SIGNATURE_BYTES} (r || s)",
            signature.len()
        )));
    }
    Ok(CoseSign1 { protected, payload, signature })
}

fn not_cose(why: &str) -> VerifyError {
    VerifyError::NotCoseSign1(why.to_owned())
}

/// The protected header must be exactly the map `{1: -35}`.
fn check_protected(protected: &[u8]) -> Result<(), VerifyError> {
    let absent = || VerifyError::UnsupportedAlgorithm { found: "absent".to_owned() };
    if protected.is_empty() {
        // A zero-length protected header stands for the empty map (RFC 9052 section 3).
        return Err(absent());
    }
    let Value::Map(entries) = decode_exact(protected).map_err(|e| {
        VerifyError::NotCoseSign1(format!("the protected header is not one CBOR map: {e}"))
    })?
    else {
        return Err(not_cose("the protected header is not a map"));
    };
    let mut alg = None;
    let mut others = Vec::new();
    for (key, value) in &entries {
        match key {
            Value::Integer(k) if i128::from(*k) == 1 => {
                if alg.replace(value).is_some() {
                    return Err(not_cose("alg appears twice in the protected header"));
                }
            }
            other => others.push(describe(other)),
        }
    }
    let alg = alg.ok_or_else(absent)?;
    match alg {
        Value::Integer(a) if i128::from(*a) == i128::from(ES384) => {}
        Value::Integer(a) => {
            return Err(VerifyError::UnsupportedAlgorithm { found: i128::from(*a).to_string() })
        }
        other => return Err(VerifyError::UnsupportedAlgorithm { found: describe(other) }),
    }
    if !others.is_empty() {
        return Err(VerifyError::UnexpectedHeader(others.join(", ")));
    }
    Ok(())
}

/// A short description of a CBOR value for error messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Integer(i) => i128::from(*i).to_string(),
        Value::Text(t) => format!("{t:?}"),
        Value::Bytes(b) => format!("a {}-byte string", b.len()),
        Value::Float(_) => "a float".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Tag(t, _) => format!("a value with tag {t}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Map(_) => "a map".to_owned(),
        _ => "an unknown CBOR value".to_owned(),
    }
}

/// The bytes an ES384 `COSE_Sign1` signature covers: the CBOR array
/// `["Signature1", protected, external_aad = h'', payload]` (RFC 9052 section 4.4).
pub(crate) fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"Signature1";
    let mut out = Vec::with_capacity(protected.len() + payload.len() + 32);
    out.push(0x84); // array(4)
    cbor_head(&mut out, 3, CONTEXT.len());
    out.extend_from_slice(CONTEXT);
    cbor_head(&mut out, 2, protected.len());
    out.extend_from_slice(protected);
    cbor_head(&mut out, 2, 0); // external_aad: empty
    cbor_head(&mut out, 2, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A CBOR item head (major type and length, shortest form; RFC 8949 section 3).
fn cbor_head(out: &mut Vec<u8>, major: u8, len: usize) {
    let major = major << 5;
    let len = len as u64;
    if len < 24 {
        out.push(major | len as u8);
    } else if let Ok(l) = u8::try_from(len) {
        out.extend_from_slice(&[major | 24, l]);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(major | 25);
        out.extend_from_slice(&l.to_be_bytes());
    } else if let Ok(l) = u32::try_from(len) {
        out.push(major | 26);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Checks the ES384 signature over the `Sig_structure` with the signing certificate's key.
pub(crate) fn verify_signature(cose: &CoseSign1, key: &VerifyingKey) -> Result<(), VerifyError> {
    let signature =
        Signature::from_slice(&cose.signature).map_err(|_| VerifyError::BadSignature)?;
    key.verify(&sig_structure(&cose.protected, &cose.payload), &signature)
        .map_err(|_| VerifyError::BadSignature)
}
