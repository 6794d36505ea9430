//! The simulated platform (cargo feature `simulated`, off by default): the enclave as a local
//! process, for development and tests. Its NSM draws randomness from the OS and signs real
//! attestation documents with the project's TEST chain (which only builds with this feature
//! accept); its sealing key is a file beside the data. Everything it makes says SIMULATED.

use std::sync::Arc;
use std::{fs, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path, path::PathBuf};

use rand_core::{OsRng, RngCore as _};
use zeroize::Zeroizing;

use super::{Clock, Handles, Mode, Nsm, NsmError, Platform, SealingKeySource, TrustRoot};
use crate::seal::SealError;

/// Simulated NSM: randomness from the OS CSPRNG, and attestation documents that are real
/// `COSE_Sign1` (ES384) documents signed by the project's P-384 TEST chain
/// (`wallet_attestation::test_pki`), over PCRs measured from what really runs:
///
/// * PCR0 and PCR2: SHA-384 of this process's executable (`/proc/self/exe`), so a changed
///   enclave binary changes them (on Nitro, PCR0 covers the whole image and PCR2 the app);
/// * PCR1: SHA-384 of [`SIMULATED_PCR1_INPUT`] (there is no kernel or boot ramdisk to measure).
///
/// Its `module_id` is [`SIMULATED_MODULE_ID`]; only a verifier built with the test root accepts
/// its documents.
#[derive(Debug, Default)]
pub struct SimulatedNsm;

/// The simulated NSM's `module_id` (says SIMULATED wherever it is shown).
pub const SIMULATED_MODULE_ID: &str = "SIMULATED-x402-wallet-enclave";

/// What the simulated PCR1 is the SHA-384 of.
pub const SIMULATED_PCR1_INPUT: &[u8] =
    b"x402-wallet SIMULATED platform: no kernel or boot ramdisk measured";

/// The simulated PCRs (see [`SimulatedNsm`]), measured once per process.
///
/// # Errors
/// When the executable cannot be read.
pub fn simulated_pcrs() -> Result<&'static std::collections::BTreeMap<u8, Vec<u8>>, NsmError> {
    use sha2::{Digest as _, Sha384};
    static PCRS: std::sync::OnceLock<Result<std::collections::BTreeMap<u8, Vec<u8>>, String>> =
        std::sync::OnceLock::new();
    PCRS.get_or_init(|| {
        let mut exe = fs::File::open("/proc/self/exe")
            .map_err(|e| format!("cannot read the enclave executable to measure it: {e}"))?;
        let mut h = Sha384::new();
        std::io::copy(&mut exe, &mut h)
            .map_err(|e| format!("cannot read the enclave executable to measure it: {e}"))?;
        let app = h.finalize().to_vec();
        Ok([(0u8, app.clone()), (1, Sha384::digest(SIMULATED_PCR1_INPUT).to_vec()), (2, app)]
            .into_iter()
            .collect())
    })
    .as_ref()
    .map_err(|e| NsmError::Device(e.clone()))
}

impl Nsm for SimulatedNsm {
    fn mode(&self) -> Mode {
        Mode::Simulated
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        OsRng.try_fill_bytes(buf).map_err(|e| NsmError::Device(e.to_string()))
    }
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        // The NSM's own limits (aws-nitro-enclaves-nsm-api: 1 KiB per field).
        for (name, field) in
            [("user_data", user_data), ("nonce", nonce), ("public_key", public_key)]
        {
            if field.is_some_and(|f| f.len() > 1024) {
                return Err(NsmError::Device(format!("{name} is over 1024 bytes")));
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| NsmError::Device(e.to_string()))?
            .as_millis();
        Ok(wallet_attestation::test_pki::sign_document(
            SIMULATED_MODULE_ID,
            u64::try_from(now_ms).unwrap_or(u64::MAX),
            simulated_pcrs()?,
            public_key,
            user_data,
            nonce,
        ))
    }
    fn trust_root(&self) -> TrustRoot {
        TrustRoot::SimulatedTest
    }
    fn pcrs(&self) -> Result<Vec<(u32, Vec<u8>)>, NsmError> {
        Ok(simulated_pcrs()?.iter().map(|(i, v)| (u32::from(*i), v.clone())).collect())
    }
}

/// The sealing key in a file (32 bytes, 0600), created on first use. Development only: whoever
/// reads the data directory can read it.
#[derive(Debug, Clone)]
pub struct FileSealingKey(pub PathBuf);

impl SealingKeySource for FileSealingKey {
    fn sealing_key(&self) -> Result<Zeroizing<[u8; 32]>, SealError> {
        let path = &self.0;
        let err = |reason: String| SealError::KeyFile { path: path.display().to_string(), reason };
        match fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                use std::os::unix::fs::PermissionsExt as _;
                let mode = fs::metadata(path).map_err(|e| err(e.to_string()))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "permissions {:o} are too open; it must be 0600",
                        mode & 0o777
                    )));
                }
                Ok(Zeroizing::new(
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| err(format!("expected 32 bytes, found {}", bytes.len())))?,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                SimulatedNsm.fill_random(key.as_mut()).map_err(|e| err(e.to_string()))?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(key.as_ref())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err(e.to_string()))?;
                Ok(key)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }
}

/// A [`Sealer`](crate::seal::Sealer) keyed from the key file at `path` (created if missing), for
/// tools and tests that read a simulated enclave's files.
///
/// # Errors
/// As [`FileSealingKey::sealing_key`].
pub fn sealer_from_key_file(path: &Path) -> Result<crate::seal::Sealer, SealError> {
    let key = FileSealingKey(path.to_path_buf()).sealing_key()?;
    Ok(crate::seal::Sealer::new(&key, super::Entropy::new(Arc::new(SimulatedNsm))))
}

/// The simulated platform on `data_dir`: [`SimulatedNsm`], the key file `sealing.key`, and the
/// file-backed stores ([`Platform::open_dir`]).
///
/// # Errors
/// As [`Platform::open_dir`].
pub fn platform(
    data_dir: &Path,
    clock: Arc<dyn Clock>,
) -> Result<(Platform, Handles), Box<dyn std::error::Error + Send + Sync>> {
    Platform::open_dir(
        data_dir,
        &FileSealingKey(data_dir.join("sealing.key")),
        Arc::new(SimulatedNsm),
        clock,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_is_labelled_random_and_attests_under_the_test_root() {
        let n = SimulatedNsm;
        assert_eq!(n.mode().as_str(), "simulated");
        assert_eq!(n.trust_root(), TrustRoot::SimulatedTest);
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        n.fill_random(&mut a).unwrap();
        n.fill_random(&mut b).unwrap();
        assert_ne!(a, b);
        let doc = n.attest(Some(b"user"), Some(b"nonce-0123456789"), Some(&[9; 32])).unwrap();
        let now = u64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
        )
        .unwrap();
        let v = wallet_attestation::verify(&doc, now, Some(b"nonce-0123456789")).unwrap();
        assert_eq!(v.root, wallet_attestation::Root::Test);
        assert_eq!(v.module_id, SIMULATED_MODULE_ID);
        assert_eq!(v.user_data.as_deref(), Some(&b"user"[..]));
        assert_eq!(v.public_key.as_deref(), Some(&[9u8; 32][..]));
        // PCR0 is the SHA-384 of the running executable: a changed binary changes it.
        use sha2::{Digest as _, Sha384};
        let exe = fs::read("/proc/self/exe").unwrap();
        assert_eq!(v.pcrs[&0], Sha384::digest(&exe).to_vec());
        assert_eq!(v.pcrs[&2], v.pcrs[&0]);
        assert_eq!(n.pcrs().unwrap().len(), 3);
        assert!(n.attest(Some(&[0; 1025]), None, None).is_err());
    }

    #[test]
    fn key_file_is_created_0600_and_refused_when_open_to_others() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sealing.key");
        let k1 = FileSealingKey(p.clone()).sealing_key().unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(*FileSealingKey(p.clone()).sealing_key().unwrap(), *k1);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(FileSealingKey(p).sealing_key().is_err());
    }
}
