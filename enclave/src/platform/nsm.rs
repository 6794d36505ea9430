//! The Nitro Security Module behind a trait: the real `/dev/nsm`, or (feature `simulated`) a
//! simulation for local use and tests.

use std::sync::Arc;

/// Which kind of enclave this is. Simulated mode must never be mistaken for production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Local process, simulated NSM, keys sealed with a key file. For development and tests.
    Simulated,
    /// AWS Nitro Enclave.
    Nitro,
    /// The Nitro configuration on an emulated NSM (QEMU's `nitro-enclave` machine signing under
    /// the project's TEST root: [`TrustRoot::EmulatedTest`]). For tests; nothing is protected.
    Emulated,
}

impl Mode {
    /// `simulated`, `nitro` or `emulated`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Simulated => "simulated",
            Self::Nitro => "nitro",
            Self::Emulated => "emulated",
        }
    }
}

/// The certificate authority whose chain signs an NSM's attestation documents. A verifier maps
/// it to the pinned root certificate; the test root is never accepted by a production build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustRoot {
    /// The AWS Nitro Enclaves root CA (G1).
    AwsNitro,
    /// The project's test CA (simulated NSM only).
    SimulatedTest,
    /// The project's test CA, signing for an emulated NSM: the production binary on QEMU's
    /// `nitro-enclave` machine with the project's signing patch (`scripts/nitro-sim/`). Real
    /// hardware never signs under it, so the enclave only treats itself as emulated on this
    /// positive sign ([`signed_by_test_root`]), never for lack of the AWS root.
    EmulatedTest,
}

/// SHA-256 of the project's TEST attestation root certificate (DER,
/// `attestation/testdata/test-pki/root.der`; a test checks it). Only its digest is built in, so
/// a production binary does not carry the test root itself.
pub const TEST_ROOT_SHA256: [u8; 32] = [
    0x7c, 0xfc, 0x46, 0x60, 0xdc, 0x5a, 0x41, 0x88, 0xc5, 0xf2, 0xf9, 0x8a, 0x0f, 0x58, 0x6f, 0xab,
    0x33, 0x21, 0xb3, 0xdc, 0xd7, 0x98, 0x8d, 0xfa, 0x47, 0x4e, 0x65, 0xd5, 0x21, 0x3f, 0xab, 0xe3,
];

/// Whether an attestation document this enclave's own NSM produced names the project's TEST root
/// as the first certificate of its `cabundle` (the root, as AWS orders it).
///
/// Sound for the enclave's own documents only: they come from the device, not from the host. A
/// real Nitro NSM puts the AWS root there, and nothing the parent instance does changes that; an
/// NSM that signs under the test root is an emulator whose operator already holds everything
/// (QEMU's memory, the NSM), for whom no secret exists to protect. Any document that cannot be
/// read answers `false`.
#[must_use]
pub fn signed_by_test_root(document: &[u8]) -> bool {
    use serde_cbor::Value;
    use sha2::Digest as _;
    let cose = match serde_cbor::from_slice::<Value>(document) {
        Ok(Value::Tag(18, inner)) => *inner,
        Ok(v) => v,
        Err(_) => return false,
    };
    let Value::Array(parts) = cose else { return false };
    let Some(Value::Bytes(payload)) = parts.get(2) else { return false };
    let Ok(Value::Map(map)) = serde_cbor::from_slice::<Value>(payload) else { return false };
    let Some(Value::Array(bundle)) = map.get(&Value::Text("cabundle".to_owned())) else {
        return false;
    };
    let Some(Value::Bytes(root)) = bundle.first() else { return false };
    sha2::Sha256::digest(root).as_slice() == TEST_ROOT_SHA256
}

/// NSM failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NsmError {
    /// The device failed or refused the request.
    #[error("NSM: {0}")]
    Device(String),
    /// This NSM cannot do that (yet).
    #[error("NSM: {0} is not supported by this NSM")]
    Unsupported(&'static str),
}

/// What the enclave asks of its security module.
pub trait Nsm: Send + Sync + std::fmt::Debug {
    /// Which mode this is.
    fn mode(&self) -> Mode;

    /// Fills `buf` with cryptographically secure random bytes. Every random byte the enclave
    /// uses (keys, EIP-3009 nonces, ids, seal nonces) comes from here, through [`Entropy`].
    ///
    /// # Errors
    /// [`NsmError`] when the device fails.
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError>;

    /// An attestation document (`COSE_Sign1`, CBOR) binding `user_data`, `nonce` and
    /// `public_key` (each at most 1 KiB, as the NSM API allows) to the measured image (PCRs).
    ///
    /// # Errors
    /// [`NsmError::Device`] when the device fails; [`NsmError::Unsupported`] where the NSM
    /// cannot attest.
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError>;

    /// Whose chain signs this NSM's attestation documents.
    fn trust_root(&self) -> TrustRoot;

    /// The measured PCRs worth reporting, as `(index, value)` in index order: PCR0 (the whole
    /// image), PCR1 (kernel and boot ramdisk), PCR2 (the application), and on Nitro PCR3, PCR4
    /// and PCR8 when set. Values are SHA-384 digests (48 bytes). For status and the audit head;
    /// the attestation document is what proves them.
    ///
    /// # Errors
    /// [`NsmError`] when the device fails; [`NsmError::Unsupported`] by default.
    fn pcrs(&self) -> Result<Vec<(u32, Vec<u8>)>, NsmError> {
        Err(NsmError::Unsupported("describing PCRs"))
    }
}

/// The real NSM through `aws-nitro-enclaves-nsm-api` (its driver holds the only `unsafe`).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct NitroNsm {
    fd: i32,
    emulated: bool,
}

#[cfg(target_os = "linux")]
impl NitroNsm {
    /// Opens `/dev/nsm`.
    ///
    /// # Errors
    /// [`NsmError`] outside a Nitro Enclave.
    pub fn open() -> Result<Self, NsmError> {
        let fd = aws_nitro_enclaves_nsm_api::driver::nsm_init();
        if fd < 0 {
            return Err(NsmError::Device(
                "cannot open /dev/nsm: not running in a Nitro Enclave (a build with the \
                 `simulated` feature runs locally with --simulated)"
                    .into(),
            ));
        }
        let mut nsm = Self { fd, emulated: false };
        nsm.emulated = nsm.attest(None, None, None).is_ok_and(|doc| signed_by_test_root(&doc));
        if nsm.emulated {
            tracing::warn!("EMULATED NSM: attestation documents are signed by the TEST root (QEMU's nitro-enclave machine); nothing here is protected from whoever runs the emulator. Not for real funds.");
        }
        Ok(nsm)
    }
}

#[cfg(target_os = "linux")]
impl Nsm for NitroNsm {
    fn mode(&self) -> Mode {
        if self.emulated {
            Mode::Emulated
        } else {
            Mode::Nitro
        }
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        use aws_nitro_enclaves_nsm_api::api::{Request, Response};
        let mut filled = 0;
        while filled < buf.len() {
            match aws_nitro_enclaves_nsm_api::driver::nsm_process_request(
                self.fd,
                Request::GetRandom,
            ) {
                Response::GetRandom { random } if !random.is_empty() => {
                    let n = random.len().min(buf.len() - filled);
                    buf[filled..filled + n].copy_from_slice(&random[..n]);
                    filled += n;
                }
                other => return Err(NsmError::Device(format!("GetRandom failed: {other:?}"))),
            }
        }
        Ok(())
    }
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        use aws_nitro_enclaves_nsm_api::api::{Request, Response};
        let field = |b: Option<&[u8]>| b.map(|b| serde_bytes::ByteBuf::from(b.to_vec()));
        match aws_nitro_enclaves_nsm_api::driver::nsm_process_request(
            self.fd,
            Request::Attestation {
                user_data: field(user_data),
                nonce: field(nonce),
                public_key: field(public_key),
            },
        ) {
            Response::Attestation { document } => Ok(document),
            other => Err(NsmError::Device(format!("Attestation failed: {other:?}"))),
        }
    }
    fn trust_root(&self) -> TrustRoot {
        if self.emulated {
            TrustRoot::EmulatedTest
        } else {
            TrustRoot::AwsNitro
        }
    }
    fn pcrs(&self) -> Result<Vec<(u32, Vec<u8>)>, NsmError> {
        use aws_nitro_enclaves_nsm_api::api::{Request, Response};
        let mut out = Vec::new();
        for index in [0u16, 1, 2, 3, 4, 8] {
            match aws_nitro_enclaves_nsm_api::driver::nsm_process_request(
                self.fd,
                Request::DescribePCR { index },
            ) {
                Response::DescribePCR { data, .. } => {
                    // PCR0..2 always; the others only when something was measured into them.
                    if index <= 2 || data.iter().any(|b| *b != 0) {
                        out.push((u32::from(index), data));
                    }
                }
                other => {
                    return Err(NsmError::Device(format!("DescribePCR {index} failed: {other:?}")))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(target_os = "linux")]
impl Drop for NitroNsm {
    fn drop(&mut self) {
        aws_nitro_enclaves_nsm_api::driver::nsm_exit(self.fd);
    }
}

/// The enclave's one source of randomness: a CSPRNG view of the platform's [`Nsm`]. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Entropy(Arc<dyn Nsm>);

impl Entropy {
    /// Randomness from `nsm`.
    #[must_use]
    pub fn new(nsm: Arc<dyn Nsm>) -> Self {
        Self(nsm)
    }

    /// `N` random bytes.
    ///
    /// # Panics
    /// When the entropy source fails: nothing may be keyed, sealed or signed without entropy,
    /// so the enclave stops rather than go on.
    #[must_use]
    pub fn bytes<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        rand_core::RngCore::fill_bytes(&mut self.clone(), &mut b);
        b
    }
}

impl rand_core::RngCore for Entropy {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_random(dest).expect("entropy source failed; refusing to go on without entropy");
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill_random(dest).map_err(rand_core::Error::new)
    }
}

impl rand_core::CryptoRng for Entropy {}

/// Randomness from the simulated NSM, for unit tests of code that takes an [`Entropy`] (the
/// crate's own tests always build with the `simulated` feature: see its dev-dependencies).
#[cfg(test)]
pub(crate) fn test_entropy() -> Entropy {
    Entropy::new(Arc::new(super::simulated::SimulatedNsm))
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn nitro_nsm_refuses_outside_an_enclave() {
        if std::path::Path::new("/dev/nsm").exists() {
            return;
        }
        let err = super::NitroNsm::open().unwrap_err();
        assert!(err.to_string().contains("--simulated"));
    }

    #[test]
    fn the_built_in_digest_is_the_test_roots() {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(wallet_attestation::test_pki::TEST_ROOT_DER);
        assert_eq!(digest.as_slice(), super::TEST_ROOT_SHA256);
    }

    /// Only a document whose cabundle starts with the test root counts as emulated: real AWS
    /// documents, a test document re-rooted elsewhere, and anything unreadable do not.
    #[test]
    fn only_test_rooted_documents_count_as_emulated() {
        use super::signed_by_test_root;
        use wallet_attestation::test_pki;
        let doc = test_pki::sign_document("m", 1, &Default::default(), None, None, None);
        assert!(signed_by_test_root(&doc));
        for real in ["real-2025-09-eu-west-1.cbor", "real-2026-02-ap-southeast-2.cbor"] {
            let path = format!("{}/../attestation/testdata/aws/{real}", env!("CARGO_MANIFEST_DIR"));
            let bytes = std::fs::read(&path).unwrap();
            assert!(!signed_by_test_root(&bytes), "{real}");
        }
        // The same document with the intermediate first: no longer the test root.
        let mut value: serde_cbor::Value = serde_cbor::from_slice(&doc).unwrap();
        if let serde_cbor::Value::Array(parts) = &mut value {
            let serde_cbor::Value::Bytes(payload) = &parts[2] else { panic!() };
            let mut map: serde_cbor::Value = serde_cbor::from_slice(payload).unwrap();
            if let serde_cbor::Value::Map(m) = &mut map {
                let key = serde_cbor::Value::Text("cabundle".into());
                let Some(serde_cbor::Value::Array(b)) = m.get_mut(&key) else { panic!() };
                b.reverse();
            }
            parts[2] = serde_cbor::Value::Bytes(serde_cbor::to_vec(&map).unwrap());
        }
        assert!(!signed_by_test_root(&serde_cbor::to_vec(&value).unwrap()));
        for junk in [&b""[..], &b"\x84"[..], &doc[..doc.len() / 2]] {
            assert!(!signed_by_test_root(junk));
        }
    }
}
