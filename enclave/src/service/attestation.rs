//! The enclave's word about itself: its attestation document (`GetAttestation`) and the
//! measurements and sealing it reports in its status and audit head.
//!
//! The document comes from the NSM: the hardware signs the PCRs (what was booted) together with
//! what the enclave asks it to bind — its identity key as `public_key`, the verifier's nonce,
//! and [`IdentityClaims`] (mode, sealing, the KMS key and service id it was started with) as
//! `user_data`. A verifier that checks the chain, the nonce and the PCRs it expects can then
//! pin the identity key: every answer the enclave signs is rooted in attested hardware.

use wallet_proto::{
    attest::{identity_user_data, NONCE_LEN},
    gateway::v1 as gw,
    Reason,
};

use super::{Enclave, Failure, Result};

/// How this enclave's state is sealed at rest, as bound into its identity documents. The
/// values come from the enclave's start-up flags (the host's word): binding them lets the admin
/// check them at first contact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sealing {
    /// `"kms"` (a KMS data key released only to the expected PCRs) or `"key-file"` (simulated:
    /// a key file on the host, which protects nothing).
    pub kind: String,
    /// The KMS key (id or ARN) wrapping the sealing key; empty for `key-file`.
    pub kms_key_id: String,
    /// This wallet service's id (the KMS encryption context); empty for `key-file`.
    pub service_id: String,
}

impl Sealing {
    /// Sealing with a key file in the data directory (simulated mode).
    #[must_use]
    pub fn key_file() -> Self {
        Self { kind: "key-file".into(), ..Self::default() }
    }
}

impl Enclave {
    /// Records how the state is sealed, for attestation documents and status. Call once after
    /// opening, before serving (no document is made before it); later calls are ignored.
    pub fn set_sealing(&self, sealing: Sealing) {
        let _ = self.sealing.set(sealing);
    }

    fn sealing(&self) -> Option<Sealing> {
        self.sealing.get().cloned()
    }

    /// The measured PCRs as the wire lists them (index order).
    pub(super) fn wire_pcrs(&self) -> Vec<gw::Pcr> {
        self.pcrs
            .iter()
            .map(|(index, value)| gw::Pcr { index: *index, value: value.clone() })
            .collect()
    }

    /// The sealing kind, for status.
    pub(super) fn sealing_kind(&self) -> String {
        self.sealing().map(|s| s.kind).unwrap_or_default()
    }

    /// `GetAttestation`: an NSM document over the caller's nonce binding the identity key and
    /// [`gw::IdentityClaims`].
    pub(super) fn attestation(&self, r: &gw::GetAttestationRequest) -> Result<gw::Attestation> {
        if !NONCE_LEN.contains(&r.nonce.len()) {
            return Err(Failure::invalid(
                Reason::InvalidNonce,
                format!(
                    "the attestation nonce must be {} to {} random bytes, not {}",
                    NONCE_LEN.start(),
                    NONCE_LEN.end(),
                    r.nonce.len()
                ),
            ));
        }
        // No default: a document must never claim a sealing the enclave was not opened with.
        let sealing = self.sealing().ok_or_else(|| {
            Failure::internal(
                "the enclave's sealing is not recorded yet (set_sealing): no attestation",
            )
        })?;
        let identity = self.identity();
        let claims = gw::IdentityClaims {
            mode: self.nsm.mode().as_str().to_owned(),
            identity: identity.to_vec(),
            sealing: sealing.kind,
            kms_key_id: sealing.kms_key_id,
            service_id: sealing.service_id,
            enclave_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        };
        let document = self
            .nsm
            .attest(Some(&identity_user_data(&claims)), Some(&r.nonce), Some(&identity))
            .map_err(|e| {
                tracing::error!(error = %e, "attestation failed");
                Failure::internal(format!("the NSM could not attest: {e}"))
            })?;
        Ok(gw::Attestation { document })
    }
}
