//! The certificate chain `cabundle[0]` (the root) → `cabundle[1..]` → `certificate`
//! (`attestation_process.md` section 3.2.3), with ecdsa-with-SHA384 over P-384 only.

use std::time::Duration;

use der::asn1::{ObjectIdentifier, UintRef};
use der::{Decode, Encode, Reader, SliceReader};
use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};
use x509_cert::certificate::Version;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::time::Time;
use x509_cert::Certificate;

use crate::VerifyError;

/// ecdsa-with-SHA384 (RFC 5758 section 3.2).
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// id-ecPublicKey (RFC 5480 section 2.1.1).
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1, the named curve P-384 (RFC 5480 section 2.1.1.1).
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// id-ce-basicConstraints (RFC 5280 section 4.2.1.9).
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
/// id-ce-keyUsage (RFC 5280 section 4.2.1.3).
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// A P-384 scalar, in bytes.
const SCALAR_BYTES: usize = 48;

/// One parsed certificate, with its place in the chain.
struct Cert {
    name: String,
    cert: Certificate,
    basic_constraints: Option<BasicConstraints>,
    key_usage: Option<KeyUsage>,
}

/// Verifies the chain at `now_ms` and returns the signing certificate's P-384 key.
/// `cabundle[0]` must already be known to be a pinned root.
pub(crate) fn verify(
    cabundle: &[Vec<u8>],
    certificate: &[u8],
    now_ms: u64,
) -> Result<VerifyingKey, VerifyError> {
    let mut chain = Vec::with_capacity(cabundle.len() + 1);
    for (i, der) in cabundle.iter().enumerate() {
        let name =
            if i == 0 { "cabundle[0] (the root)".to_owned() } else { format!("cabundle[{i}]") };
        chain.push(parse(der, name)?);
    }
    chain.push(parse(certificate, "certificate".to_owned())?);

    let now = Duration::from_millis(now_ms);
    for cert in &chain {
        check_validity(cert, now, now_ms)?;
    }

    let n = chain.len();
    for i in 1..n {
        let (issuer, cert) = (&chain[i - 1], &chain[i]);
        let issuer_name = issuer.cert.tbs_certificate.subject.to_der();
        let cert_issuer = cert.cert.tbs_certificate.issuer.to_der();
        if issuer_name.is_err() || issuer_name != cert_issuer {
            return Err(VerifyError::IssuerMismatch {
                cert: cert.name.clone(),
                issuer: issuer.name.clone(),
            });
        }
        check_ca(issuer, cert)?;
        // CA certificates after the issuer, not counting `certificate` (RFC 5280 4.2.1.9).
        let below = n - 1 - i;
        if let Some(path_len) =
            issuer.basic_constraints.as_ref().and_then(|bc| bc.path_len_constraint)
        {
            if below > usize::from(path_len) {
                return Err(VerifyError::PathLenExceeded {
                    cert: issuer.name.clone(),
                    path_len,
                    below,
                });
            }
        }
        let key = p384_key(issuer)?;
        let signed = cert.cert.tbs_certificate.to_der().map_err(|e| malformed(cert, e))?;
        let signature = ecdsa_der_signature(&cert.cert)
            .and_then(|sig| key.verify(&signed, &sig).ok())
            .is_some();
        if !signature {
            return Err(VerifyError::CertificateSignature {
                cert: cert.name.clone(),
                issuer: issuer.name.clone(),
            });
        }
    }

    let leaf = &chain[n - 1];
    if leaf.basic_constraints.as_ref().is_some_and(|bc| bc.ca) {
        return Err(leaf_usage(leaf, "it is a CA (BasicConstraints CA=true)"));
    }
    if !leaf.key_usage.as_ref().is_some_and(KeyUsage::digital_signature) {
        return Err(leaf_usage(leaf, "KeyUsage lacks digitalSignature"));
    }
    p384_key(leaf)
}

fn malformed(cert: &Cert, reason: impl ToString) -> VerifyError {
    VerifyError::MalformedCertificate { cert: cert.name.clone(), reason: reason.to_string() }
}

fn leaf_usage(cert: &Cert, reason: &str) -> VerifyError {
    VerifyError::LeafUsage { cert: cert.name.clone(), reason: reason.to_owned() }
}

/// Parses one certificate and runs the checks that concern it alone: canonical DER, v3, the
/// signature algorithm, and the extensions.
fn parse(der: &[u8], name: String) -> Result<Cert, VerifyError> {
    let bad = |reason: String| VerifyError::MalformedCertificate { cert: name.clone(), reason };
    let cert = Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    // The signature covers the TBS bytes as re-encoded here: they must be the received bytes.
    if cert.to_der().map_err(|e| bad(e.to_string()))? != der {
        return Err(bad("not in canonical DER".to_owned()));
    }
    let tbs = &cert.tbs_certificate;
    if tbs.version != Version::V3 {
        return Err(bad(format!("version {:?}; X.509 v3 is required", tbs.version)));
    }
    if tbs.signature != cert.signature_algorithm {
        return Err(bad("the inner and outer signature algorithms differ".to_owned()));
    }
    let alg = &cert.signature_algorithm;
    if alg.oid != ECDSA_WITH_SHA384 || alg.parameters.is_some() {
        return Err(VerifyError::UnsupportedCertificateAlgorithm {
            cert: name,
            what: "the signature algorithm",
            found: alg.oid.to_string(),
        });
    }

    let mut basic_constraints = None;
    let mut key_usage = None;
    let mut seen = Vec::new();
    for ext in tbs.extensions.as_deref().unwrap_or_default() {
        if seen.contains(&ext.extn_id) {
            return Err(bad(format!("extension {} appears twice", ext.extn_id)));
        }
        seen.push(ext.extn_id);
        let value = ext.extn_value.as_bytes();
        let bad_ext = |what: &str, e: der::Error| VerifyError::BadExtension {
            cert: name.clone(),
            reason: format!("malformed {what} extension: {e}"),
        };
        if ext.extn_id == BASIC_CONSTRAINTS {
            basic_constraints = Some(
                BasicConstraints::from_der(value).map_err(|e| bad_ext("BasicConstraints", e))?,
            );
        } else if ext.extn_id == KEY_USAGE {
            key_usage = Some(KeyUsage::from_der(value).map_err(|e| bad_ext("KeyUsage", e))?);
        } else if ext.critical {
            return Err(VerifyError::UnknownCriticalExtension {
                cert: name,
                oid: ext.extn_id.to_string(),
            });
        }
    }
    Ok(Cert { name, cert, basic_constraints, key_usage })
}

/// notBefore <= now <= notAfter (RFC 5280 section 4.1.2.5).
fn check_validity(cert: &Cert, now: Duration, now_ms: u64) -> Result<(), VerifyError> {
    let validity = &cert.cert.tbs_certificate.validity;
    if now < validity.not_before.to_unix_duration() {
        return Err(VerifyError::CertificateNotYetValid {
            cert: cert.name.clone(),
            not_before: show_time(validity.not_before),
            now: show_now(now_ms),
        });
    }
    if now > validity.not_after.to_unix_duration() {
        return Err(VerifyError::CertificateExpired {
            cert: cert.name.clone(),
            not_after: show_time(validity.not_after),
            now: show_now(now_ms),
        });
    }
    Ok(())
}

fn show_time(time: Time) -> String {
    time.to_date_time().to_string()
}

fn show_now(now_ms: u64) -> String {
    match der::DateTime::from_unix_duration(Duration::from_millis(now_ms)) {
        Ok(t) => format!("{t} ({now_ms} ms)"),
        Err(_) => format!("{now_ms} ms after the Unix epoch"),
    }
}

/// `issuer` may issue certificates: BasicConstraints CA=true and KeyUsage keyCertSign, both
/// present (AWS's CA certificates carry both, critical).
fn check_ca(issuer: &Cert, subject: &Cert) -> Result<(), VerifyError> {
    let reason = if !issuer.basic_constraints.as_ref().is_some_and(|bc| bc.ca) {
        "no BasicConstraints CA=true"
    } else if !issuer.key_usage.as_ref().is_some_and(KeyUsage::key_cert_sign) {
        "no KeyUsage keyCertSign"
    } else {
        return Ok(());
    };
    Err(VerifyError::NotACa {
        cert: issuer.name.clone(),
        subject: subject.name.clone(),
        reason: reason.to_owned(),
    })
}

/// The certificate's public key, which must be an id-ecPublicKey on secp384r1.
fn p384_key(cert: &Cert) -> Result<VerifyingKey, VerifyError> {
    let spki = &cert.cert.tbs_certificate.subject_public_key_info;
    let unsupported = |what: &'static str, found: String| {
        VerifyError::UnsupportedCertificateAlgorithm { cert: cert.name.clone(), what, found }
    };
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
        return Err(unsupported("the public key algorithm", spki.algorithm.oid.to_string()));
    }
    let curve =
        spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if curve != Some(SECP384R1) {
        let found = curve.map_or_else(|| "not a named curve".to_owned(), |c| c.to_string());
        return Err(unsupported("the public key's curve", found));
    }
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| malformed(cert, "the public key is not a whole number of bytes"))?;
    VerifyingKey::from_sec1_bytes(point)
        .map_err(|_| malformed(cert, "the public key is not a valid P-384 point"))
}

/// The certificate's signature: DER `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`
/// (RFC 5480 section 2.2 / RFC 3279), as a fixed-size P-384 signature.
fn ecdsa_der_signature(cert: &Certificate) -> Option<Signature> {
    let bytes = cert.signature.as_bytes()?;
    let mut reader = SliceReader::new(bytes).ok()?;
    let (r, s) = reader.sequence(|seq| Ok((UintRef::decode(seq)?, UintRef::decode(seq)?))).ok()?;
    reader.finish(()).ok()?;
    let (r, s) = (r.as_bytes(), s.as_bytes());
    if r.len() > SCALAR_BYTES || s.len() > SCALAR_BYTES {
        return None;
    }
    let mut raw = [0u8; 2 * SCALAR_BYTES];
    raw[SCALAR_BYTES - r.len()..SCALAR_BYTES].copy_from_slice(r);
    raw[2 * SCALAR_BYTES - s.len()..].copy_from_slice(s);
    Signature::from_slice(&raw).ok()
}
