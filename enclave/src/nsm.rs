//! The Nitro Security Module behind a trait: the real `/dev/nsm` or a simulation.

use rand_core::{OsRng, RngCore as _};

/// Which kind of enclave this is. Simulated mode must never be mistaken for production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Local process, simulated NSM, keys sealed with a key file. For development and tests.
    Simulated,
    /// AWS Nitro Enclave.
    Nitro,
}

impl Mode {
    /// `simulated` or `nitro`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Simulated => "simulated",
            Self::Nitro => "nitro",
        }
    }
}

/// NSM failure.
#[derive(Debug, thiserror::Error)]
#[error("NSM: {0}")]
pub struct NsmError(pub String);

/// What the enclave asks of its security module.
pub trait Nsm: Send + Sync + std::fmt::Debug {
    /// Which mode this is.
    fn mode(&self) -> Mode;
    /// Fills `buf` with entropy for key generation.
    ///
    /// # Errors
    /// [`NsmError`] when the device fails.
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError>;
}

/// Simulated NSM: entropy from the OS CSPRNG.
#[derive(Debug, Default)]
pub struct SimulatedNsm;

impl Nsm for SimulatedNsm {
    fn mode(&self) -> Mode {
        Mode::Simulated
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        OsRng.try_fill_bytes(buf).map_err(|e| NsmError(e.to_string()))
    }
}

/// The real NSM through `aws-nitro-enclaves-nsm-api` (its driver holds the only `unsafe`).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct NitroNsm {
    fd: i32,
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
            return Err(NsmError("cannot open /dev/nsm: not running in a Nitro Enclave (use --simulated for local use)".into()));
        }
        Ok(Self { fd })
    }
}

#[cfg(target_os = "linux")]
impl Nsm for NitroNsm {
    fn mode(&self) -> Mode {
        Mode::Nitro
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
                other => return Err(NsmError(format!("GetRandom failed: {other:?}"))),
            }
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
impl Drop for NitroNsm {
    fn drop(&mut self) {
        aws_nitro_enclaves_nsm_api::driver::nsm_exit(self.fd);
    }
}

/// A CSPRNG view of an [`Nsm`], for key generation.
#[derive(Debug)]
pub struct NsmRng<'a>(pub &'a dyn Nsm);

impl rand_core::RngCore for NsmRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0
            .fill_random(dest)
            .expect("entropy source failed; refusing to generate a key without entropy");
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill_random(dest).map_err(rand_core::Error::new)
    }
}

impl rand_core::CryptoRng for NsmRng<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_is_labelled_and_random() {
        let n = SimulatedNsm;
        assert_eq!(n.mode().as_str(), "simulated");
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        n.fill_random(&mut a).unwrap();
        n.fill_random(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn nitro_nsm_refuses_outside_an_enclave() {
        if std::path::Path::new("/dev/nsm").exists() {
            return;
        }
        let err = NitroNsm::open().unwrap_err();
        assert!(err.to_string().contains("--simulated"));
    }
}
