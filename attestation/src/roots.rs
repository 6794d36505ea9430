//! The production trust anchor.

use sha2::{Digest, Sha256};

/// The AWS Nitro Enclaves Root-G1 certificate (DER, 533 bytes): `CN=aws.nitro-enclaves, C=US,
/// O=Amazon, OU=AWS`, P-384, valid 2019-10-28 13:28:05 UTC to 2049-10-28 14:28:05 UTC.
///
/// Source: `AWS_NitroEnclaves_Root-G1.zip`, published by AWS (docs: "Verifying the root of
/// trust", enclaves user guide); `roots/aws-nitro-enclaves-root-g1.pem` is the PEM as published
/// and this file its DER. A unit test checks that the SHA-256 fingerprint equals AWS's
/// published value [`AWS_NITRO_ROOT_G1_SHA256`], and that both real documents under
/// `testdata/aws/` carry exactly these bytes as `cabundle[0]`.
pub const AWS_NITRO_ROOT_G1_DER: &[u8] = include_bytes!("../roots/aws-nitro-enclaves-root-g1.der");

/// SHA-256 fingerprint of [`AWS_NITRO_ROOT_G1_DER`] as AWS publishes it (uppercase hex, no
/// separators): `64:1A:03:21:…:79:BB:5B`.
pub const AWS_NITRO_ROOT_G1_SHA256: &str =
    "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B";

/// SHA-256 of `der` in uppercase hex, the form of [`AWS_NITRO_ROOT_G1_SHA256`].
pub(crate) fn sha256_hex(der: &[u8]) -> String {
    hex::encode_upper(Sha256::digest(der))
}
