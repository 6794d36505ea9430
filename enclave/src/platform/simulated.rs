//! The simulated platform (cargo feature `simulated`, off by default): the enclave as a local
//! process, for development and tests. Its NSM draws randomness from the OS and cannot attest
//! yet; its sealing key is a file beside the data. Everything it makes says SIMULATED.

use std::sync::Arc;
use std::{fs, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path, path::PathBuf};

use rand_core::{OsRng, RngCore as _};
use zeroize::Zeroizing;

use super::{Clock, Handles, Mode, Nsm, NsmError, Platform, SealingKeySource, TrustRoot};
use crate::seal::SealError;

/// Simulated NSM: randomness from the OS CSPRNG. Attestation documents come with the Nitro
/// issue (a test-rooted `COSE_Sign1`); until then [`Nsm::attest`] is unsupported.
#[derive(Debug, Default)]
pub struct SimulatedNsm;

impl Nsm for SimulatedNsm {
    fn mode(&self) -> Mode {
        Mode::Simulated
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        OsRng.try_fill_bytes(buf).map_err(|e| NsmError::Device(e.to_string()))
    }
    fn attest(
        &self,
        _user_data: Option<&[u8]>,
        _nonce: Option<&[u8]>,
        _public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        Err(NsmError::Unsupported("attestation (simulated)"))
    }
    fn trust_root(&self) -> TrustRoot {
        TrustRoot::SimulatedTest
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
    fn simulated_is_labelled_random_and_cannot_attest_yet() {
        let n = SimulatedNsm;
        assert_eq!(n.mode().as_str(), "simulated");
        assert_eq!(n.trust_root(), TrustRoot::SimulatedTest);
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        n.fill_random(&mut a).unwrap();
        n.fill_random(&mut b).unwrap();
        assert_ne!(a, b);
        assert!(matches!(n.attest(None, None, None), Err(NsmError::Unsupported(_))));
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
