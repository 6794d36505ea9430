//! The sealing key in Nitro mode: an AWS KMS data key that KMS releases only to an enclave whose
//! measurements (PCRs) the key policy names ([`KmsSealingKey`]).
//!
//! # Flow (once, at start-up)
//! 1. Make an ephemeral RSA-2048 key in the enclave (randomness from the NSM, [`Entropy`]).
//! 2. Ask the NSM for an attestation document binding its public key (DER
//!    `SubjectPublicKeyInfo`) to this image's PCRs ([`Nsm::attest`]).
//! 3. No wrapped key stored yet: `TrentService.GenerateDataKey` {KeyId, KeySpec `AES_256`,
//!    EncryptionContext, Recipient {AttestationDocument, `RSAES_OAEP_SHA_256`}}; open
//!    `CiphertextForRecipient`; store `CiphertextBlob` ([`WrappedKeyStore`]). A wrapped key
//!    stored: `TrentService.Decrypt` {CiphertextBlob, KeyId, EncryptionContext, Recipient}.
//! 4. `CiphertextForRecipient` is a CMS envelope to the RSA key (`kms::cms`); its content is
//!    the 32-byte data key, the sealing key. The RSA key is then dropped (zeroized).
//!
//! The requests are AWS JSON 1.1 (`POST /`, `X-Amz-Target`), signed with SigV4 (`kms::sigv4`),
//! over HTTPS/1.1 whose TLS ends in the enclave (`kms::https`). The host only relays bytes
//! ([`Connector`]: vsock to the parent's relay in Nitro, a Unix socket in tests).
//!
//! # Why the host can neither learn nor choose the data key
//! * KMS returns the key only inside `CiphertextForRecipient`, encrypted to an RSA key that
//!   exists only in this enclave, for this boot; KMS checks that the key is bound to an
//!   attestation document signed by the Nitro PKI whose PCRs satisfy the key policy. A
//!   response carrying `Plaintext` is refused ([`KmsError::PlaintextInResponse`]): KMS never
//!   returns it to a `Recipient` request, so it means something else is answering.
//! * TLS authenticates KMS under roots built into the binary (Amazon's; kms-sim's test CA only
//!   when the enclave's own NSM signs under the project's test root, which real hardware never
//!   does: `https::client_config`), never taken from configuration. The endpoint must be a KMS host
//!   name (`kms.<region>.amazonaws.com`, `kms-fips.…`; checked in [`KmsSealingKey::new`]):
//!   Amazon's roots also certify customers' own domains (ACM), and a host that could point the
//!   enclave at such a server could answer with an envelope holding a key it chose.
//! * The response must name the configured key ARN.
//! * The EncryptionContext ([`KmsConfig::encryption_context`]:
//!   `{"x402-wallet:purpose": "state-sealing-key/v1", "x402-wallet:service": <service id>}`) is
//!   bound into the wrapped key: KMS refuses to `Decrypt` a blob made under another service's
//!   context (`InvalidCiphertextException`), so the host cannot swap in another service's
//!   wrapped key, nor one made for another purpose.
//! * The AWS credentials come from the host and only authorise the calls: secrecy of the data
//!   key never depends on them (they are still zeroized and never printed).
//!
//! # What the deployment's key policy must say (otherwise the above does not hold)
//! The enclave cannot check any of this; whoever creates the key and writes its policy must.
//! `wallet_kms_sim::policy::recommended_policy_json` writes such a policy
//! (`kms-sim/testdata/key-policy.example.json` is one), and kms-sim's tests check each point
//! against it, AWS's default "Enable IAM User Permissions" statement included.
//!
//! Why every denial names `"Principal": "*"`: AWS's default key policy statement gives the
//! account (`arn:aws:iam::<account>:root`) `kms:*`, which delegates the key to IAM: **any**
//! principal of the account whose IAM policies allow an action may then perform it, although
//! the key policy never names it. A `Deny` naming only the parent instance's role leaves all of
//! them able to do what it denies. An explicit `Deny` to `"*"` binds every principal, the
//! account root and the key administrators included, whatever IAM or other statements allow.
//! * **The key**: symmetric, origin `AWS_KMS` (never `EXTERNAL`: imported material someone
//!   else holds), single-Region (a multi-Region key can be replicated under another policy).
//!   Both are fixed at creation.
//! * **Release only to this image**: allow `kms:Decrypt` and `kms:GenerateDataKey` to the
//!   parent instance's role only with `StringEqualsIgnoreCase` on
//!   `kms:RecipientAttestation:ImageSha384` (= PCR0) and on the other PCRs the deployment pins
//!   (PCR1, PCR2; PCR3 for the parent's role, PCR8 for the signing certificate), as AWS
//!   documents for Nitro Enclaves; never the all-zero PCRs of a debug-mode enclave.
//! * **No plaintext to anyone**: `Deny` to `"*"` of `kms:Decrypt` and `kms:GenerateDataKey*`
//!   when `"Null": {"kms:RecipientAttestation:ImageSha384": "true"}` (no attestation, hence a
//!   `Plaintext` answer).
//! * **No key to another image**: `Deny` to `"*"` of `kms:Decrypt` and `kms:GenerateDataKey*`
//!   when `"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": <PCR0>}`, and
//!   one such statement per other pinned PCR (`kms:RecipientAttestation:PCR<n>`): the keys of
//!   one condition block must all match for a statement to apply, so one statement for all
//!   PCRs would deny only when every PCR differs. A negated operator also holds when the key is
//!   absent. Without these, a principal allowed through IAM attests an enclave image of its
//!   own (or a debug-mode one) and has the data key sealed to that.
//! * **Nobody plants, moves or delegates**: `Deny` to `"*"` of `kms:Encrypt` (whoever encrypts
//!   a key of their choosing under this context can have the host store it as the wrapped key;
//!   the enclave then `Decrypt`s it, with `Recipient`, and seals its state under a key they
//!   know), `kms:ReEncrypt*` (`ReEncryptTo` moves a blob whose plaintext someone knows into
//!   this key; `ReEncryptFrom` moves the wrapped key out, to a key someone can `Decrypt`
//!   plainly), `kms:CreateGrant` (grants bypass the key policy's conditions), and, as guards
//!   against a key created with the wrong origin or as multi-Region, `kms:ImportKeyMaterial`
//!   and `kms:ReplicateKey`.
//! * **Only the named key administrators change the policy**: allow them the administrative
//!   actions (never `Decrypt`, `GenerateDataKey*`, `Encrypt`), and `Deny` `kms:PutKeyPolicy`
//!   to `"*"` with `"ArnNotEquals": {"aws:PrincipalArn": [<administrators>]}`. They can still
//!   rewrite the policy, so they are trusted with the key: keep them few, never the parent
//!   instance's role, and watch `PutKeyPolicy` in CloudTrail. KMS's lockout safety check
//!   refuses a policy that would not let its author change it again; do not bypass it.
//!
//! # Host-controlled inputs, and what the lead must attest
//! The region, endpoint, key id, service id, timeout and credentials are the host's flags. The
//! endpoint is checked against the region; the region is pinned by the key ARN; the timeout
//! only decides how soon a stalled start-up fails. The **key id** and the
//! **service id** cannot be checked here: with a key of its own, the host could read the data
//! key with a plain `Decrypt`; with another service id, it could cross-wire two deployments.
//! Both therefore belong in the attested identity document that the admin verifies at first
//! contact ([`KmsConfig::key_id`], [`KmsConfig::service_id`]).
//!
//! # A stalled relay
//! The host relays the bytes, so it can also withhold them, or drip them. One deadline,
//! [`KmsConfig::timeout`] (30 s by default), bounds each KMS call as a whole: connecting,
//! the TLS handshake, the request and the response. The client enforces it itself whatever the
//! [`Connector`] returns: every read and write first checks the time left and, on a Unix or TCP
//! socket, sets it as the socket's timeout; and the call runs on a thread of its own that is
//! abandoned at the deadline, so even a connector that never returns, or a stream whose read
//! never returns, fails start-up with [`KmsError::Timeout`] ("KMS did not answer within N s
//! through the host relay") instead of hanging it.
//!
//! # RSA and RUSTSEC-2023-0071
//! The `rsa` crate's private-key operation is not constant-time (the Marvin attack,
//! RUSTSEC-2023-0071). Exploiting it takes many decryptions of chosen ciphertexts under one key,
//! timed. This key is generated at start-up, decrypts exactly one envelope (which arrives over
//! TLS from KMS, not from the host) and is dropped: there is no oracle to query. Its decryption
//! is blinded all the same.
//!
//! # Randomness
//! The RSA key and its blinding use the NSM ([`Entropy`]). TLS's own randomness (handshake
//! nonces, ECDHE) comes from ring's system RNG, which in a Nitro Enclave is the kernel's,
//! seeded by the NSM's hardware RNG.

mod cms;
mod https;
mod sigv4;

use std::{
    any::Any,
    collections::BTreeMap,
    fmt,
    io::{self, Read, Write},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use rsa::{pkcs8::EncodePublicKey as _, RsaPrivateKey};
use serde_json::{json, Value};
use zeroize::Zeroizing;

pub use cms::CmsError;

use super::{Clock, Entropy, Nsm, NsmError, SealingKeySource};
use crate::seal::SealError;

/// EncryptionContext key naming what the data key is for.
pub const CONTEXT_PURPOSE_KEY: &str = "x402-wallet:purpose";
/// EncryptionContext value: the state sealing key, version 1 of this scheme.
pub const CONTEXT_PURPOSE: &str = "state-sealing-key/v1";
/// EncryptionContext key naming the wallet service (its value: [`KmsConfig::service_id`]).
pub const CONTEXT_SERVICE_KEY: &str = "x402-wallet:service";
/// `user_data` of the attestation document sent to KMS: says what the document is for, so it
/// cannot be mistaken for the enclave's identity attestation.
pub const ATTESTATION_USER_DATA: &[u8] = b"x402-wallet:kms-recipient/v1";
/// The only `KeyEncryptionAlgorithm` KMS accepts for a `Recipient`.
pub const KEY_ENCRYPTION_ALGORITHM: &str = "RSAES_OAEP_SHA_256";
/// Size of the ephemeral recipient key, bits.
pub const RSA_BITS: usize = 2048;
/// Largest `CiphertextBlob` sent or stored, bytes (KMS's own limit is 6144).
pub const MAX_CIPHERTEXT_BLOB: usize = 6144;
/// Default [`KmsConfig::timeout`]: how long one KMS call may take, all included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest [`KmsConfig::timeout`] accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// A byte stream both ways: what the host's relay gives the enclave. Every `Read + Write` type
/// is one.
///
/// The KMS client bounds each call by [`KmsConfig::timeout`] itself, whatever the stream. When
/// the stream is a `std::os::unix::net::UnixStream` or a `std::net::TcpStream` (a vsock socket
/// held as a `UnixStream` included), it also sets the socket's read and write timeouts to the
/// time left before each read and write, so a blocked read returns at the deadline. Any other
/// stream whose read blocks past the deadline is abandoned on its thread (the call still fails
/// at the deadline); give such a stream timeouts of its own so that the thread ends too.
pub trait ReadWrite: Read + Write + Any {}
impl<T: Read + Write + Any> ReadWrite for T {}

/// Sets the read and write timeouts of `stream` to `timeout` when it is a socket whose timeouts
/// the client knows how to set; `Ok(false)` when it is not.
fn set_socket_timeouts(stream: &dyn ReadWrite, timeout: Duration) -> io::Result<bool> {
    let any: &dyn Any = stream;
    if let Some(s) = any.downcast_ref::<std::os::unix::net::UnixStream>() {
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        return Ok(true);
    }
    if let Some(s) = any.downcast_ref::<std::net::TcpStream>() {
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        return Ok(true);
    }
    Ok(false)
}

/// Opens a new byte stream to the KMS endpoint through the host's relay (vsock to the parent in
/// Nitro, a Unix socket in tests). Called once per KMS request, on the call's own thread and
/// within its deadline ([`KmsConfig::timeout`]): a connector that does not return in time is
/// abandoned there.
pub type Connector = Box<dyn Fn() -> io::Result<Box<dyn ReadWrite + Send>> + Send + Sync>;

/// The connector as the calls' threads share it.
type SharedConnector = Arc<dyn Fn() -> io::Result<Box<dyn ReadWrite + Send>> + Send + Sync>;

/// Where the wrapped data key (KMS's `CiphertextBlob`) lives: storage the host provides. It is
/// not secret (only KMS can unwrap it, and only to this enclave image), but the host may
/// replace or delete it: a replaced blob is refused by KMS (context, key, or authentication),
/// a deleted one makes the enclave generate a new key under which the old state does not open.
pub trait WrappedKeyStore: Send + Sync {
    /// The stored blob, `None` before the first start.
    ///
    /// # Errors
    /// When the storage cannot be read.
    fn load(&self) -> io::Result<Option<Vec<u8>>>;
    /// Stores `blob` durably (replacing any before).
    ///
    /// # Errors
    /// When it cannot be stored; start-up then fails (a key whose blob is lost would leave the
    /// state unopenable at the next start).
    fn store(&self, blob: &[u8]) -> io::Result<()>;
}

/// A [`WrappedKeyStore`] in memory (tests and tools). Clones share the blob.
#[derive(Debug, Clone, Default)]
pub struct MemoryKeyStore(Arc<Mutex<Option<Vec<u8>>>>);

impl MemoryKeyStore {
    /// Empty (the first start).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Holding `blob`.
    #[must_use]
    pub fn with(blob: Vec<u8>) -> Self {
        Self(Arc::new(Mutex::new(Some(blob))))
    }

    /// The blob now stored.
    #[must_use]
    pub fn get(&self) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl WrappedKeyStore for MemoryKeyStore {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.get())
    }
    fn store(&self, blob: &[u8]) -> io::Result<()> {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(blob.to_vec());
        Ok(())
    }
}

/// AWS credentials handed in by the host (the parent instance's role). They authorise the KMS
/// calls and nothing more. The secret and the session token are zeroized on drop and never
/// shown by `Debug`.
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl AwsCredentials {
    /// From the access key id, the secret access key and, for temporary credentials (an
    /// instance role), the session token.
    #[must_use]
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: session_token.map(Zeroizing::new),
        }
    }

    /// The access key id (not secret: it appears in every request).
    #[must_use]
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Which KMS key, where, for which wallet service. Every field is a host-controlled flag; see
/// the module documentation for what is checked and what must be attested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsConfig {
    /// AWS region, e.g. `us-east-1` (the SigV4 scope; must match the key ARN's).
    pub region: String,
    /// KMS endpoint host name: the TLS server name and the `Host` header, e.g.
    /// `kms.us-east-1.amazonaws.com`. The relay decides where the bytes go; TLS decides whether
    /// the other end is KMS.
    pub endpoint: String,
    /// The KMS key's ARN, `arn:aws:kms:<region>:<account>:key/<key id>` (an alias would be
    /// repointable, so it is refused).
    pub key_id: String,
    /// This wallet service's id, bound into the EncryptionContext.
    pub service_id: String,
    /// The longest one KMS call may take through the relay, everything included: connect, TLS
    /// handshake, request and response ([`DEFAULT_TIMEOUT`]; more than zero, at most
    /// [`MAX_TIMEOUT`]). Past it the call fails with [`KmsError::Timeout`].
    pub timeout: Duration,
}

impl KmsConfig {
    /// The configuration for `key_arn` in `region`, at the region's standard endpoint, with the
    /// default timeout ([`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn new(
        region: impl Into<String>,
        key_arn: impl Into<String>,
        service_id: impl Into<String>,
    ) -> Self {
        let region = region.into();
        Self {
            endpoint: format!("kms.{region}.amazonaws.com"),
            region,
            key_id: key_arn.into(),
            service_id: service_id.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The EncryptionContext bound into the wrapped key:
    /// `{CONTEXT_PURPOSE_KEY: CONTEXT_PURPOSE, CONTEXT_SERVICE_KEY: service_id}`.
    #[must_use]
    pub fn encryption_context(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CONTEXT_PURPOSE_KEY.to_owned(), CONTEXT_PURPOSE.to_owned()),
            (CONTEXT_SERVICE_KEY.to_owned(), self.service_id.clone()),
        ])
    }

    /// Checks every field (see [`KmsSealingKey::new`]).
    fn validate(&self) -> Result<(), KmsError> {
        let bad = |m: String| Err(KmsError::InvalidConfig(m));
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 32
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.region.starts_with('-')
            && !self.region.ends_with('-');
        if !region_ok {
            return bad(format!("region {:?} is not an AWS region name", self.region));
        }
        let r = &self.region;
        let mut endpoints =
            vec![format!("kms.{r}.amazonaws.com"), format!("kms-fips.{r}.amazonaws.com")];
        if r.starts_with("cn-") {
            endpoints.push(format!("kms.{r}.amazonaws.com.cn"));
        }
        #[cfg(feature = "simulated")]
        endpoints.push("localhost".to_owned());
        if !endpoints.contains(&self.endpoint) {
            return bad(format!(
                "endpoint {:?} is not a KMS endpoint of region {r} (expected one of {}): the \
                 built-in roots also certify non-KMS servers, so only KMS names are accepted",
                self.endpoint,
                endpoints.join(", ")
            ));
        }
        // arn:<partition>:kms:<region>:<12-digit account>:key/<key id>
        let parts: Vec<&str> = self.key_id.splitn(6, ':').collect();
        let key_ok = matches!(
            parts.as_slice(),
            ["arn", partition, "kms", region, account, resource]
                if ["aws", "aws-cn", "aws-us-gov"].contains(partition)
                    && region == r
                    && account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && resource.strip_prefix("key/").is_some_and(|id| {
                        !id.is_empty()
                            && id.len() <= 64
                            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
        );
        if !key_ok {
            return bad(format!(
                "key id {:?} is not a KMS key ARN of region {r} \
                 (arn:aws:kms:{r}:<account>:key/<id>; aliases are refused)",
                self.key_id
            ));
        }
        let service_ok = !self.service_id.is_empty()
            && self.service_id.len() <= 128
            && self.service_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b));
        if !service_ok {
            return bad(format!(
                "service id {:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : / @ -",
                self.service_id
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return bad(format!(
                "timeout {:?} must be more than zero and at most {} s",
                self.timeout,
                MAX_TIMEOUT.as_secs()
            ));
        }
        Ok(())
    }
}

/// Why the data key could not be had. Messages never contain key material or secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// A configuration field (or credential) is unusable.
    #[error("KMS sealing configuration: {0}")]
    InvalidConfig(String),
    /// The NSM could not attest (or give randomness).
    #[error("attestation for KMS: {0}")]
    Attestation(#[from] NsmError),
    /// The ephemeral RSA key could not be made.
    #[error("ephemeral RSA key: {0}")]
    Rsa(String),
    /// The wrapped-key storage failed.
    #[error("wrapped key storage: {0}")]
    Storage(io::Error),
    /// No stream to KMS through the relay.
    #[error("cannot reach KMS through the host relay: {0}")]
    Connect(io::Error),
    /// The call (connect, TLS, request and response) did not finish within
    /// [`KmsConfig::timeout`], given here: the relay stalled or dripped, or KMS did not answer.
    #[error(
        "KMS did not answer within {} s through the host relay (a stalled or slow relay, or \
         KMS unreachable from the host)",
        .0.as_secs_f64()
    )]
    Timeout(Duration),
    /// TLS refused the server (not KMS under the built-in roots) or failed.
    #[error("TLS with KMS: {0}")]
    Tls(String),
    /// The stream broke or the answer is not bounded HTTP/1.1.
    #[error("HTTP with KMS: {0}")]
    Http(String),
    /// KMS answered with an error, e.g. `AccessDeniedException` (the key policy does not allow
    /// this image's PCRs) or `InvalidCiphertextException` (a wrapped key of another service).
    #[error("KMS refused {operation}: {error_type}: {message}{hint}", hint = refusal_hint(error_type))]
    Refused {
        /// `GenerateDataKey` or `Decrypt`.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// KMS's error type (`__type` without its namespace).
        error_type: String,
        /// KMS's message (control characters removed, at most 500 characters).
        message: String,
    },
    /// The answer carried `Plaintext`: KMS never returns it to a `Recipient` request.
    #[error(
        "the answer to {0} carried Plaintext, which KMS never returns to a Recipient request: \
         refusing it (something other than KMS answered)"
    )]
    PlaintextInResponse(&'static str),
    /// The answer is not what KMS sends (missing or malformed fields, another key's ARN).
    #[error("unexpected answer to {operation}: {reason}")]
    BadResponse {
        /// `GenerateDataKey` or `Decrypt`.
        operation: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `CiphertextForRecipient` did not open.
    #[error("CiphertextForRecipient: {0}")]
    Envelope(#[from] CmsError),
    /// The data key is not 32 bytes.
    #[error("the data key is {0} bytes, not 32")]
    DataKeyLength(usize),
}

fn refusal_hint(error_type: &str) -> &'static str {
    match error_type {
        "AccessDeniedException" => {
            " (does the key policy allow this enclave image's PCRs, with a fresh attestation \
             document from the right root?)"
        }
        "InvalidCiphertextException" => {
            " (the stored wrapped key was not made for this key and service: replaced or \
             corrupted)"
        }
        _ => "",
    }
}

impl KmsError {
    /// KMS's error type when KMS refused (`AccessDeniedException`, ...).
    #[must_use]
    pub fn kms_error_type(&self) -> Option<&str> {
        match self {
            Self::Refused { error_type, .. } => Some(error_type),
            _ => None,
        }
    }
}

impl KmsError {
    fn from_https(e: https::HttpsError, timeout: Duration) -> Self {
        match e {
            https::HttpsError::Tls(m) => Self::Tls(m),
            https::HttpsError::Http(m) => Self::Http(m),
            https::HttpsError::Timeout => Self::Timeout(timeout),
        }
    }
}

/// The sealing key from KMS, released only to an enclave with the expected PCRs. See the
/// module documentation for the flow and what it relies on.
pub struct KmsSealingKey {
    config: KmsConfig,
    credentials: AwsCredentials,
    connector: SharedConnector,
    nsm: Arc<dyn Nsm>,
    clock: Arc<dyn Clock>,
    store: Box<dyn WrappedKeyStore>,
    tls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for KmsSealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsSealingKey")
            .field("config", &self.config)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl KmsSealingKey {
    /// A sealing-key source for `config`, calling KMS with `credentials` through `connector`,
    /// attesting and drawing randomness with `nsm`, timing SigV4 with `clock`, keeping the
    /// wrapped key in `store`. Nothing is fetched yet.
    ///
    /// # Errors
    /// [`KmsError::InvalidConfig`] when the region is not a region name, the endpoint is not a
    /// KMS endpoint of that region (`kms.<region>.amazonaws.com`, `kms-fips.<region>…`, and
    /// `localhost` in `simulated` builds), the key id is not a key ARN of that region, the
    /// service id is empty or has characters outside `A-Za-z0-9._:/@-`, the timeout is zero or
    /// above [`MAX_TIMEOUT`], or a credential is empty or has characters that do not belong in
    /// an HTTP header.
    pub fn new(
        config: KmsConfig,
        credentials: AwsCredentials,
        connector: Connector,
        nsm: Arc<dyn Nsm>,
        clock: Arc<dyn Clock>,
        store: Box<dyn WrappedKeyStore>,
    ) -> Result<Self, KmsError> {
        config.validate()?;
        let header_safe =
            |s: &str| !s.is_empty() && s.len() <= 4096 && s.bytes().all(|b| b.is_ascii_graphic());
        if !header_safe(&credentials.access_key_id)
            || !credentials.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric())
            || !header_safe(&credentials.secret_access_key)
            || !credentials.session_token.as_deref().is_none_or(|t| header_safe(t))
        {
            return Err(KmsError::InvalidConfig(
                "AWS credentials: empty, or characters that do not belong in a header".into(),
            ));
        }
        // Named, not "anything but AWS": a root added later trusts the test CA only if listed.
        let test_ca = matches!(
            nsm.trust_root(),
            super::TrustRoot::SimulatedTest | super::TrustRoot::EmulatedTest
        );
        let tls =
            https::client_config(test_ca).map_err(|e| KmsError::from_https(e, config.timeout))?;
        Ok(Self { config, credentials, connector: Arc::from(connector), nsm, clock, store, tls })
    }

    /// The configuration (for the attested identity document: key id and service id).
    #[must_use]
    pub fn config(&self) -> &KmsConfig {
        &self.config
    }

    /// Fetches the 32-byte data key: `GenerateDataKey` on the first start (storing the wrapped
    /// key), `Decrypt` of the stored wrapped key after. One KMS call, one attestation, one
    /// fresh RSA key per call.
    ///
    /// The KMS call is bounded by [`KmsConfig::timeout`] (see the module documentation, "A
    /// stalled relay").
    ///
    /// # Errors
    /// [`KmsError`]: attestation, storage, transport or TLS failures, the deadline
    /// ([`KmsError::Timeout`]), KMS's refusal ([`KmsError::Refused`]), or an answer that is not
    /// KMS's.
    pub fn data_key(&self) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let mut rng = Entropy::new(Arc::clone(&self.nsm));
        let key =
            RsaPrivateKey::new(&mut rng, RSA_BITS).map_err(|e| KmsError::Rsa(e.to_string()))?;
        let spki =
            key.to_public_key().to_public_key_der().map_err(|e| KmsError::Rsa(e.to_string()))?;
        let document = self.nsm.attest(Some(ATTESTATION_USER_DATA), None, Some(spki.as_bytes()))?;
        let recipient = json!({
            "AttestationDocument": B64.encode(&document),
            "KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM,
        });
        let context = self.config.encryption_context();
        match self.store.load().map_err(KmsError::Storage)? {
            None => {
                const OP: &str = "GenerateDataKey";
                let answer = self.call(
                    OP,
                    &json!({
                        "KeyId": self.config.key_id,
                        "KeySpec": "AES_256",
                        "EncryptionContext": context,
                        "Recipient": recipient,
                    }),
                )?;
                let data_key = self.open_answer(OP, &answer, &key, &mut rng)?;
                let blob = b64_field(OP, &answer, "CiphertextBlob")?;
                if blob.is_empty() || blob.len() > MAX_CIPHERTEXT_BLOB {
                    return Err(KmsError::BadResponse {
                        operation: OP,
                        reason: format!("CiphertextBlob of {} bytes", blob.len()),
                    });
                }
                self.store.store(&blob).map_err(KmsError::Storage)?;
                Ok(data_key)
            }
            Some(blob) => {
                const OP: &str = "Decrypt";
                if blob.is_empty() || blob.len() > MAX_CIPHERTEXT_BLOB {
                    return Err(KmsError::Storage(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the stored wrapped key is {} bytes", blob.len()),
                    )));
                }
                let answer = self.call(
                    OP,
                    &json!({
                        "CiphertextBlob": B64.encode(&blob),
                        "KeyId": self.config.key_id,
                        "EncryptionContext": context,
                        "Recipient": recipient,
                    }),
                )?;
                self.open_answer(OP, &answer, &key, &mut rng)
            }
        }
    }

    /// Checks an answer and opens its `CiphertextForRecipient`.
    fn open_answer(
        &self,
        operation: &'static str,
        answer: &serde_json::Map<String, Value>,
        key: &RsaPrivateKey,
        rng: &mut Entropy,
    ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        if answer.get("Plaintext").is_some_and(|p| !p.is_null()) {
            return Err(KmsError::PlaintextInResponse(operation));
        }
        match answer.get("KeyId").and_then(Value::as_str) {
            Some(id) if id == self.config.key_id => {}
            other => {
                return Err(KmsError::BadResponse {
                    operation,
                    reason: format!(
                        "it names key {:?}, not {}",
                        other.map(|s| sanitize(s, 200)),
                        self.config.key_id
                    ),
                })
            }
        }
        let envelope = b64_field(operation, answer, "CiphertextForRecipient")?;
        let content = cms::open(key, &envelope, rng)?;
        if content.len() != 32 {
            return Err(KmsError::DataKeyLength(content.len()));
        }
        let mut data_key = Zeroizing::new([0u8; 32]);
        data_key.copy_from_slice(&content);
        Ok(data_key)
    }

    /// One signed `TrentService.<operation>` call; the answer's JSON object on HTTP 200.
    fn call(
        &self,
        operation: &'static str,
        body: &Value,
    ) -> Result<serde_json::Map<String, Value>, KmsError> {
        let body = serde_json::to_vec(body).map_err(|e| KmsError::InvalidConfig(e.to_string()))?;
        let request = Zeroizing::new(self.signed_request(operation, &body));
        let response = self.exchange(request)?;
        let bad = |reason: String| KmsError::BadResponse { operation, reason };
        let parsed: Option<serde_json::Map<String, Value>> =
            serde_json::from_slice(&response.body).ok();
        if response.status != 200 {
            let field = |k: &str| {
                parsed.as_ref().and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_owned)
            };
            let error_type = field("__type")
                .map(|t| t.rsplit('#').next().unwrap_or_default().to_owned())
                .unwrap_or_else(|| "UnknownError".to_owned());
            let message = field("message").or_else(|| field("Message")).unwrap_or_default();
            return Err(KmsError::Refused {
                operation,
                status: response.status,
                error_type: sanitize(&error_type, 100),
                message: sanitize(&message, 500),
            });
        }
        parsed.ok_or_else(|| bad("the body is not a JSON object".into()))
    }

    /// Connects through the relay and exchanges `request` for the response, within
    /// [`KmsConfig::timeout`] from now. The exchange runs on a thread of its own, so that the
    /// deadline holds even when the connector or the stream blocks and ignores it; such a
    /// thread is abandoned (it holds the stream and the signed request, nothing secret to the
    /// enclave's state) and ends when its stream does.
    fn exchange(&self, request: Zeroizing<Vec<u8>>) -> Result<https::Response, KmsError> {
        let timeout = self.config.timeout;
        let deadline = Instant::now() + timeout;
        let (tx, rx) = mpsc::sync_channel(1);
        let connector = Arc::clone(&self.connector);
        let tls = Arc::clone(&self.tls);
        let endpoint = self.config.endpoint.clone();
        std::thread::Builder::new()
            .name("kms-exchange".into())
            .spawn(move || {
                let result = match connector() {
                    Ok(stream) => https::exchange(tls, &endpoint, stream, &request, deadline)
                        .map_err(|e| KmsError::from_https(e, timeout)),
                    Err(e) => Err(KmsError::Connect(e)),
                };
                // The caller may have given up (the deadline): nobody to tell then.
                let _ = tx.send(result);
            })
            .map_err(KmsError::Connect)?;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(KmsError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(KmsError::Http("the KMS exchange ended without an answer".into()))
            }
        }
    }

    /// The complete HTTP/1.1 request for `operation` with `body`, signed.
    fn signed_request(&self, operation: &str, body: &[u8]) -> Vec<u8> {
        let amz_date = sigv4::amz_date(self.clock.now().as_secs());
        let target = format!("TrentService.{operation}");
        let mut headers = vec![
            ("Content-Type", "application/x-amz-json-1.1"),
            ("Host", self.config.endpoint.as_str()),
            ("X-Amz-Date", amz_date.as_str()),
            ("X-Amz-Target", target.as_str()),
        ];
        if let Some(token) = &self.credentials.session_token {
            headers.push(("X-Amz-Security-Token", token.as_str()));
        }
        let scope = sigv4::Scope {
            access_key_id: &self.credentials.access_key_id,
            secret_access_key: &self.credentials.secret_access_key,
            region: &self.config.region,
            service: "kms",
            amz_date: &amz_date,
        };
        let req = sigv4::Request { method: "POST", path: "/", query: "", headers: &headers, body };
        let authorization = sigv4::authorization(&scope, &req);
        let mut out = Vec::with_capacity(1024 + body.len());
        out.extend_from_slice(b"POST / HTTP/1.1\r\n");
        for (name, value) in &headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "Authorization: {authorization}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
        out
    }
}

impl SealingKeySource for KmsSealingKey {
    fn sealing_key(&self) -> Result<Zeroizing<[u8; 32]>, SealError> {
        self.data_key().map_err(|e| SealError::Kms {
            key_id: self.config.key_id.clone(),
            service_id: self.config.service_id.clone(),
            reason: e.to_string(),
        })
    }
}

/// A base64 string field of an answer, decoded.
fn b64_field(
    operation: &'static str,
    answer: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Vec<u8>, KmsError> {
    let s = answer
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| KmsError::BadResponse { operation, reason: format!("no {name}") })?;
    B64.decode(s)
        .map_err(|_| KmsError::BadResponse { operation, reason: format!("{name} is not base64") })
}

/// `s` without control characters, at most `max` characters (text from the other end).
fn sanitize(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests;
