//! Opening the platform with its sealing key from KMS and its state on the host's storage: the
//! Nitro configuration (no disk in the enclave), which a simulated build can also run against
//! the stand-ins (`kms-sim` through the host's relay, storage over a Unix socket).
//!
//! Everything here comes from the host: the storage and relay addresses, the KMS key, region,
//! endpoint and service id, the AWS credentials. None of it can give the host the sealing key:
//! the key is released by KMS only inside a TLS session that ends in the enclave (built-in roots,
//! pinned endpoint names), encrypted to an RSA key that never leaves it, for an attestation
//! document with the enclave's PCRs; the KMS key and service id are bound into the identity
//! document the admin checks at first contact (`walletctl init --expect-kms-key/--expect-service`).

use std::{io, sync::Arc, time::Duration};

use super::{
    kms::{AwsCredentials, Connector, KmsConfig, KmsSealingKey, ReadWrite, WrappedKeyStore},
    Clock, Handles, Nsm, OpenError, Platform,
};
use crate::{
    hostfile::{names, StorageFile},
    hoststorage::{HostAddress, HostStorage, DEFAULT_CONNECT_WAIT},
};

/// How long one read or write on the KMS relay may wait before the exchange fails.
pub const RELAY_IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the sealing key comes from in the Nitro configuration.
#[derive(Debug)]
pub struct KmsOptions {
    /// The KMS key, region, endpoint and service id (the encryption context).
    pub config: KmsConfig,
    /// Credentials for the KMS calls (they authorise; the key policy's attestation conditions
    /// decide who may have the key).
    pub credentials: AwsCredentials,
    /// Where the host relays the enclave's TLS bytes to the KMS endpoint (vsock on Nitro; a
    /// Unix socket under simulation).
    pub relay: HostAddress,
}

/// A connector that opens a blocking byte stream to the host's relay at `addr`, with
/// [`RELAY_IO_TIMEOUT`] on every read and write.
#[must_use]
pub fn relay_connector(addr: HostAddress) -> Connector {
    Box::new(move || stream_to(&addr, RELAY_IO_TIMEOUT))
}

/// Opens a blocking byte stream to the host at `addr` (a Unix socket, or vsock on Linux), with
/// `timeout` on every read and write.
///
/// # Errors
/// When the connection fails (or vsock is asked for off Linux).
pub fn stream_to(addr: &HostAddress, timeout: Duration) -> io::Result<Box<dyn ReadWrite + Send>> {
    match addr {
        HostAddress::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Ok(Box::new(s))
        }
        #[cfg(target_os = "linux")]
        HostAddress::Vsock { cid, port } => {
            let s = vsock::VsockStream::connect_with_cid_port(*cid, *port)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Ok(Box::new(crate::smallwrites::SmallWrites(s)))
        }
        #[cfg(not(target_os = "linux"))]
        HostAddress::Vsock { .. } => {
            Err(io::Error::new(io::ErrorKind::Unsupported, "vsock is only available on Linux"))
        }
    }
}

/// The wrapped sealing key (KMS `CiphertextBlob`) in a file the host keeps. The host may delete,
/// replace or roll it back: KMS then refuses it (another key or encryption context), or it opens
/// to another data key, under which the sealed state does not open — the enclave refuses to
/// start either way; it never seals with a key the host knows.
#[derive(Debug)]
pub struct HostKeyStore(pub Arc<dyn StorageFile>);

impl WrappedKeyStore for HostKeyStore {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        let len = self.0.size()?;
        if len == 0 {
            return Ok(None);
        }
        if len > super::kms::MAX_CIPHERTEXT_BLOB as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the wrapped sealing key on the host is {len} bytes: not a KMS ciphertext"),
            ));
        }
        self.0.read_all().map(Some)
    }
    fn store(&self, blob: &[u8]) -> io::Result<()> {
        self.0.write_all_at(blob, 0)?;
        self.0.set_len(blob.len() as u64)?;
        self.0.sync_all()
    }
}

/// Opens the platform on the host's storage at `storage` (waiting up to
/// [`DEFAULT_CONNECT_WAIT`] for it), with the sealing key released by KMS as `kms` says: a
/// blocking call (run it off the async workers).
///
/// # Errors
/// When the storage server does not answer, KMS does not release the key (wrong PCRs, another
/// key or context, a fake endpoint, no answer within the timeouts), or a store fails its checks.
pub fn open_host_kms(
    storage: &HostAddress,
    kms: KmsOptions,
    nsm: Arc<dyn Nsm>,
    clock: Arc<dyn Clock>,
) -> Result<(Platform, Handles), OpenError> {
    let host = HostStorage::connect(storage.clone(), DEFAULT_CONNECT_WAIT)?;
    let wrapped = HostKeyStore(host.file(names::SEALING_KEY)?);
    let key = KmsSealingKey::new(
        kms.config,
        kms.credentials,
        relay_connector(kms.relay),
        Arc::clone(&nsm),
        Arc::clone(&clock),
        Box::new(wrapped),
    )
    .map_err(|e| OpenError::from(format!("KMS sealing: {e}")))?;
    Platform::open_on_host(&host, &key, nsm, clock)
}
