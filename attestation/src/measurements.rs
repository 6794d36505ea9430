//! Expected PCR values, and the comparison with a verified document.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::{hex_pcr, AttestationDoc, MAX_PCRS};

/// Expected PCR values: index (`0..32`) to value (32, 48 or 64 bytes). Built from
/// `--expect-pcrN HEX` arguments ([`Measurements::insert_hex`]) or from a measurements file
/// ([`Measurements::from_json`]); compared with a verified document by
/// [`Measurements::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measurements(pub BTreeMap<u8, Vec<u8>>);

/// Why a measurements file or a `--expect-pcrN` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeasurementsError {
    /// The text is not JSON.
    #[error("measurements file is not JSON: {0}")]
    Json(String),
    /// The JSON has the wrong shape.
    #[error("measurements file must be {{\"Measurements\": {{\"PCR0\": \"hex\", ...}}}} (nitro-cli's output) or {{\"PCR0\": \"hex\", ...}}: {0}")]
    Shape(String),
    /// A key is not `PCR<n>` or `HashAlgorithm`.
    #[error("measurements file has the key {0:?}; expected PCR0 .. PCR31 (and optionally HashAlgorithm)")]
    UnknownKey(String),
    /// `HashAlgorithm` names something other than SHA-384.
    #[error("HashAlgorithm is {0:?}; Nitro PCRs are SHA-384")]
    HashAlgorithm(String),
    /// A PCR index is outside `0..32`.
    #[error("PCR index {0} is outside 0..=31")]
    Index(u32),
    /// A value is not hex.
    #[error("PCR{index}: {value:?} is not hex ({reason})")]
    Hex {
        /// The PCR index.
        index: u8,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is not 32, 48 or 64 bytes.
    #[error("PCR{index} is {len} bytes ({} hex digits); a PCR is 32, 48 or 64 bytes (SHA-384: 96 hex digits)", len * 2)]
    Length {
        /// The PCR index.
        index: u8,
        /// Its length in bytes.
        len: usize,
    },
    /// The same PCR was given twice with different values.
    #[error("PCR{0} is given twice, with different values")]
    Conflict(u8),
    /// The file names no PCR at all.
    #[error("measurements file names no PCR: an empty expectation would accept any enclave")]
    Empty,
}

impl Measurements {
    /// Parses a measurements file: nitro-cli's `{"Measurements": {"HashAlgorithm": "Sha384 { ..
    /// }", "PCR0": "hex", "PCR1": "hex", "PCR2": "hex"}}` (other top-level keys, as in
    /// `describe-eif` output, are ignored), or a plain `{"PCR0": "hex", ...}` map. Keys are
    /// `PCR0` .. `PCR31` (any case) and an optional `HashAlgorithm`, which must mention 384.
    /// Values are hex (either case). At least one PCR is required.
    pub fn from_json(text: &str) -> Result<Self, MeasurementsError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| MeasurementsError::Json(e.to_string()))?;
        let Value::Object(top) = value else {
            return Err(MeasurementsError::Shape("the top level is not an object".to_owned()));
        };
        let map = match top.get("Measurements") {
            Some(Value::Object(inner)) => inner,
            Some(_) => {
                return Err(MeasurementsError::Shape(
                    "\"Measurements\" is not an object".to_owned(),
                ))
            }
            None => &top,
        };
        let mut out = Measurements::default();
        for (key, value) in map {
            if key == "HashAlgorithm" {
                let Value::String(alg) = value else {
                    return Err(MeasurementsError::Shape(
                        "HashAlgorithm is not a string".to_owned(),
                    ));
                };
                if !alg.contains("384") {
                    return Err(MeasurementsError::HashAlgorithm(alg.clone()));
                }
                continue;
            }
            let index = pcr_key(key).ok_or_else(|| MeasurementsError::UnknownKey(key.clone()))?;
            let index = u8::try_from(index)
                .ok()
                .filter(|i| usize::from(*i) < MAX_PCRS)
                .ok_or(MeasurementsError::Index(index))?;
            let Value::String(hex) = value else {
                return Err(MeasurementsError::Shape(format!("{key} is not a string")));
            };
            out.insert_hex(index, hex)?;
        }
        if out.0.is_empty() {
            return Err(MeasurementsError::Empty);
        }
        Ok(out)
    }

    /// Adds the expected value of PCR `index` (`0..32`) from hex (either case, surrounding
    /// whitespace ignored), 32, 48 or 64 bytes. Giving the same PCR again with the same value
    /// is fine; with another value it is [`MeasurementsError::Conflict`].
    pub fn insert_hex(&mut self, index: u8, hex: &str) -> Result<(), MeasurementsError> {
        if usize::from(index) >= MAX_PCRS {
            return Err(MeasurementsError::Index(u32::from(index)));
        }
        let value = hex::decode(hex.trim()).map_err(|e| MeasurementsError::Hex {
            index,
            value: hex.to_owned(),
            reason: e.to_string(),
        })?;
        if ![32, 48, 64].contains(&value.len()) {
            return Err(MeasurementsError::Length { index, len: value.len() });
        }
        match self.0.get(&index) {
            Some(existing) if *existing != value => Err(MeasurementsError::Conflict(index)),
            _ => {
                self.0.insert(index, value);
                Ok(())
            }
        }
    }

    /// Whether no PCR is expected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when every expected PCR is present in `doc` and equal. Otherwise the error lists
    /// each mismatch (index, expected, found) in hex. An empty expectation fails too: it would
    /// accept any enclave.
    pub fn check(&self, doc: &AttestationDoc) -> Result<(), PcrMismatch> {
        let diffs: Vec<PcrDiff> = self
            .0
            .iter()
            .filter(|(index, expected)| doc.pcrs.get(index) != Some(*expected))
            .map(|(index, expected)| PcrDiff {
                index: *index,
                expected: expected.clone(),
                found: doc.pcrs.get(index).cloned(),
            })
            .collect();
        if diffs.is_empty() && !self.0.is_empty() {
            Ok(())
        } else {
            Err(PcrMismatch(diffs))
        }
    }
}

/// `PCR<n>` (any case) to n.
fn pcr_key(key: &str) -> Option<u32> {
    let digits = key.get(..3).filter(|p| p.eq_ignore_ascii_case("PCR")).map(|_| &key[3..])?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if canonical {
        digits.parse().ok()
    } else {
        None
    }
}

/// One PCR that differs from its expected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrDiff {
    /// The PCR index.
    pub index: u8,
    /// The expected value.
    pub expected: Vec<u8>,
    /// The document's value, or `None` when the document lacks this PCR.
    pub found: Option<Vec<u8>>,
}

/// The PCRs of a document differ from the expected measurements: every difference, by index.
/// An empty list means nothing was expected (which is refused as well).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PcrMismatch(pub Vec<PcrDiff>);

impl fmt::Display for PcrMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(
                "no expected PCR values were given, so no enclave can be accepted: pass \
                 --expect-pcrN or a measurements file",
            );
        }
        f.write_str("the enclave's measurements differ from the expected ones:")?;
        for (i, diff) in self.0.iter().enumerate() {
            let found = diff.found.as_deref().map_or_else(|| "(absent)".to_owned(), hex_pcr);
            let sep = if i == 0 { " " } else { "; " };
            write!(
                f,
                "{sep}PCR{} expected {}, found {found}",
                diff.index,
                hex_pcr(&diff.expected)
            )?;
        }
        Ok(())
    }
}
