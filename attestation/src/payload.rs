//! The signed payload: AWS's `AttestationDocument` CBOR map, checked field by field
//! (`attestation_process.md` section 3.2.2).

use std::collections::BTreeMap;

use ciborium::value::Value;

use crate::cose::{decode_exact, describe};
use crate::{VerifyError, MAX_CERTIFICATE_BYTES, MAX_PCRS, MAX_USER_FIELD_BYTES};

/// The only digest Nitro PCRs use.
const SHA384: &str = "SHA384";

/// The payload's fields after the syntactic checks; nothing is authenticated yet.
#[derive(Debug)]
pub(crate) struct Fields {
    pub(crate) module_id: String,
    pub(crate) digest: String,
    pub(crate) timestamp_ms: u64,
    pub(crate) pcrs: BTreeMap<u8, Vec<u8>>,
    pub(crate) certificate: Vec<u8>,
    /// Non-empty: `cabundle[0]` is the root.
    pub(crate) cabundle: Vec<Vec<u8>>,
    pub(crate) public_key: Option<Vec<u8>>,
    pub(crate) user_data: Option<Vec<u8>>,
    pub(crate) nonce: Option<Vec<u8>>,
}

/// The field names AWS defines, in the NSM's order.
const FIELDS: [&str; 9] = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
];

pub(crate) fn parse(payload: &[u8]) -> Result<Fields, VerifyError> {
    let Value::Map(entries) = decode_exact(payload).map_err(VerifyError::MalformedPayload)? else {
        return Err(VerifyError::MalformedPayload("not a map".to_owned()));
    };
    let mut slots: [Option<Value>; 9] = Default::default();
    for (key, value) in entries {
        let Value::Text(name) = key else {
            return Err(VerifyError::MalformedPayload(format!(
                "a key is {}, not text",
                describe(&key)
            )));
        };
        let Some(i) = FIELDS.iter().position(|f| *f == name) else {
            return Err(VerifyError::UnknownField(name));
        };
        if slots[i].replace(value).is_some() {
            return Err(VerifyError::DuplicateField(name));
        }
    }
    let [module_id, digest, timestamp, pcrs, certificate, cabundle, public_key, user_data, nonce] =
        slots;

    let module_id = text(mandatory(module_id, "module_id")?, "module_id")?;
    if module_id.is_empty() {
        return Err(VerifyError::EmptyModuleId);
    }
    let digest = text(mandatory(digest, "digest")?, "digest")?;
    if digest != SHA384 {
        return Err(VerifyError::UnsupportedDigest(digest));
    }
    let timestamp_ms = match mandatory(timestamp, "timestamp")? {
        Value::Integer(i) => u64::try_from(i).map_err(|_| field_type("timestamp", UINT64))?,
        _ => return Err(field_type("timestamp", UINT64)),
    };
    if timestamp_ms == 0 {
        return Err(VerifyError::ZeroTimestamp);
    }
    let pcrs = parse_pcrs(mandatory(pcrs, "pcrs")?)?;
    let certificate = bytes(mandatory(certificate, "certificate")?, "certificate")?;
    check_len("certificate", &certificate, 1, MAX_CERTIFICATE_BYTES)?;
    let Value::Array(entries) = mandatory(cabundle, "cabundle")? else {
        return Err(field_type("cabundle", "an array of byte strings"));
    };
    if entries.is_empty() {
        return Err(VerifyError::EmptyCabundle);
    }
    let mut cabundle = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let name = format!("cabundle[{i}]");
        let cert = bytes(entry, &name)?;
        check_len(&name, &cert, 1, MAX_CERTIFICATE_BYTES)?;
        cabundle.push(cert);
    }
    let public_key = optional_bytes(public_key, "public_key", 1)?;
    let user_data = optional_bytes(user_data, "user_data", 0)?;
    let nonce = optional_bytes(nonce, "nonce", 0)?;

    Ok(Fields {
        module_id,
        digest,
        timestamp_ms,
        pcrs,
        certificate,
        cabundle,
        public_key,
        user_data,
        nonce,
    })
}

const UINT64: &str = "an unsigned integer (64 bits)";

fn field_type(field: &str, expected: &'static str) -> VerifyError {
    VerifyError::FieldType { field: field.to_owned(), expected }
}

/// A mandatory field: present and not null.
fn mandatory(value: Option<Value>, field: &'static str) -> Result<Value, VerifyError> {
    match value {
        None => Err(VerifyError::MissingField(field)),
        Some(Value::Null) => Err(field_type(field, "present, not null (it is mandatory)")),
        Some(value) => Ok(value),
    }
}

fn text(value: Value, field: &str) -> Result<String, VerifyError> {
    match value {
        Value::Text(t) => Ok(t),
        _ => Err(field_type(field, "a text string")),
    }
}

fn bytes(value: Value, field: &str) -> Result<Vec<u8>, VerifyError> {
    match value {
        Value::Bytes(b) => Ok(b),
        _ => Err(field_type(field, "a byte string")),
    }
}

fn check_len(field: &str, value: &[u8], min: usize, max: usize) -> Result<(), VerifyError> {
    if (min..=max).contains(&value.len()) {
        Ok(())
    } else {
        Err(VerifyError::FieldLength { field: field.to_owned(), len: value.len(), min, max })
    }
}

/// `public_key`, `user_data`, `nonce`. AWS's text says an absent optional field is left out,
/// but the NSM writes it as null (both real documents under `testdata/aws/` do): both mean
/// absent.
fn optional_bytes(
    value: Option<Value>,
    field: &str,
    min: usize,
) -> Result<Option<Vec<u8>>, VerifyError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            let b = bytes(value, field)?;
            check_len(field, &b, min, MAX_USER_FIELD_BYTES)?;
            Ok(Some(b))
        }
    }
}

fn parse_pcrs(value: Value) -> Result<BTreeMap<u8, Vec<u8>>, VerifyError> {
    let Value::Map(entries) = value else {
        return Err(field_type("pcrs", "a map of integer index to byte string"));
    };
    if entries.is_empty() || entries.len() > MAX_PCRS {
        return Err(VerifyError::PcrCount(entries.len()));
    }
    let mut pcrs = BTreeMap::new();
    for (key, value) in entries {
        let Value::Integer(index) = key else {
            return Err(field_type("pcrs", "a map whose keys are integers"));
        };
        let index = i128::from(index);
        let index = u8::try_from(index)
            .ok()
            .filter(|i| usize::from(*i) < MAX_PCRS)
            .ok_or_else(|| VerifyError::PcrIndex(index.to_string()))?;
        let Value::Bytes(value) = value else {
            return Err(field_type(&format!("pcrs[{index}]"), "a byte string"));
        };
        if ![32, 48, 64].contains(&value.len()) {
            return Err(VerifyError::PcrLength { index, len: value.len() });
        }
        if pcrs.insert(index, value).is_some() {
            return Err(VerifyError::DuplicatePcr(index));
        }
    }
    Ok(pcrs)
}
