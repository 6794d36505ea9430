//! What an enclave's identity attestation document binds, besides its PCRs.
//!
//! `GetAttestation` returns an NSM attestation document whose `public_key` is the enclave's
//! identity key (Ed25519, 32 bytes), whose `nonce` is the verifier's nonce, and whose
//! `user_data` is [`IDENTITY_TAG`] followed by a protobuf [`IdentityClaims`]. The tag keeps a
//! document the enclave made for another purpose (its KMS requests, whose `public_key` is an
//! ephemeral RSA key) from being taken for an identity document.

use prost::Message as _;

use crate::gateway::v1::IdentityClaims;

/// The bytes that start an identity document's `user_data` (and [`IdentityClaims::purpose`]).
pub const IDENTITY_PURPOSE: &str = "x402-wallet/enclave-identity/v1";

/// [`IDENTITY_PURPOSE`] and a zero byte: the `user_data` prefix.
pub const IDENTITY_TAG: &[u8] = b"x402-wallet/enclave-identity/v1\0";

/// The NSM's limit on `user_data`, `nonce` and `public_key` (bytes).
pub const MAX_FIELD: usize = 1024;

/// Nonce length the enclave accepts in `GetAttestationRequest` (bytes, inclusive).
pub const NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// `user_data` for an identity document: [`IDENTITY_TAG`] then `claims` (with `purpose` set to
/// [`IDENTITY_PURPOSE`]).
#[must_use]
pub fn identity_user_data(claims: &IdentityClaims) -> Vec<u8> {
    let mut claims = claims.clone();
    IDENTITY_PURPOSE.clone_into(&mut claims.purpose);
    let mut out = IDENTITY_TAG.to_vec();
    out.extend_from_slice(&claims.encode_to_vec());
    out
}

/// Why a document's `user_data` is not an identity claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimsError {
    /// No `user_data`, or it does not start with [`IDENTITY_TAG`].
    NotIdentity,
    /// The claims do not decode.
    Malformed,
    /// `purpose` is not [`IDENTITY_PURPOSE`].
    Purpose,
    /// The claimed identity differs from the document's `public_key`.
    IdentityMismatch,
}

impl std::fmt::Display for ClaimsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotIdentity => "the document's user_data is not an enclave identity claim (a document made for another purpose)",
            Self::Malformed => "the document's identity claims do not decode",
            Self::Purpose => "the document's identity claims name another purpose",
            Self::IdentityMismatch => "the identity in the claims differs from the document's public_key",
        })
    }
}

impl std::error::Error for ClaimsError {}

/// The claims of an identity document whose `public_key` is `public_key` and whose `user_data`
/// is `user_data`; the identity in them must equal `public_key` (32 bytes).
///
/// # Errors
/// [`ClaimsError`] naming what does not hold.
pub fn identity_claims(
    user_data: Option<&[u8]>,
    public_key: Option<&[u8]>,
) -> Result<IdentityClaims, ClaimsError> {
    let body =
        user_data.and_then(|u| u.strip_prefix(IDENTITY_TAG)).ok_or(ClaimsError::NotIdentity)?;
    let claims = IdentityClaims::decode(body).map_err(|_| ClaimsError::Malformed)?;
    if claims.purpose != IDENTITY_PURPOSE {
        return Err(ClaimsError::Purpose);
    }
    if claims.identity.len() != 32 || public_key != Some(claims.identity.as_slice()) {
        return Err(ClaimsError::IdentityMismatch);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> IdentityClaims {
        IdentityClaims {
            mode: "nitro".into(),
            identity: vec![7; 32],
            sealing: "kms".into(),
            kms_key_id: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
            service_id: "prod".into(),
            enclave_version: "0.1.0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let ud = identity_user_data(&claims());
        assert!(ud.len() < MAX_FIELD);
        let got = identity_claims(Some(&ud), Some(&[7; 32])).unwrap();
        assert_eq!(got.purpose, IDENTITY_PURPOSE);
        assert_eq!(got.kms_key_id, claims().kms_key_id);
        assert_eq!(identity_claims(Some(&ud), Some(&[8; 32])), Err(ClaimsError::IdentityMismatch));
        assert_eq!(identity_claims(Some(&ud), None), Err(ClaimsError::IdentityMismatch));
        assert_eq!(identity_claims(None, Some(&[7; 32])), Err(ClaimsError::NotIdentity));
        assert_eq!(identity_claims(Some(&ud[1..]), Some(&[7; 32])), Err(ClaimsError::NotIdentity));
        let mut other = IDENTITY_TAG.to_vec();
        other.extend_from_slice(
            &IdentityClaims { purpose: "kms-recipient".into(), ..claims() }.encode_to_vec(),
        );
        assert_eq!(identity_claims(Some(&other), Some(&[7; 32])), Err(ClaimsError::Purpose));
        let mut bad = IDENTITY_TAG.to_vec();
        bad.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(identity_claims(Some(&bad), Some(&[7; 32])), Err(ClaimsError::Malformed));
    }
}
