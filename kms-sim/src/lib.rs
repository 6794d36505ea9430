//! `wallet-kms-sim`: a local stand-in for AWS KMS that **enforces** `kms:RecipientAttestation`
//! key policies, so that the enclave's KMS sealing (Nitro mode) is tested end to end on a
//! machine without Nitro hardware. Tests and simulation only; never in production.
//!
//! # What it models
//! * The AWS JSON 1.1 protocol over HTTPS/1.1 (`POST /`, `X-Amz-Target: TrentService.<op>`,
//!   `Content-Type: application/x-amz-json-1.1`), on loopback, with a server certificate from a
//!   committed TEST CA (`testdata/`, made by `testdata/generate.sh`; the enclave trusts it only
//!   in builds with its `simulated` feature) ([`server`]).
//! * SigV4 checked against one fixed set of credentials ([`SimConfig::test`]): unknown key,
//!   wrong signature, scope or token, or a clock skew past 15 minutes are refused as KMS refuses
//!   them ([`sigv4`]).
//! * The operations the enclave needs: `GenerateDataKey`, `Decrypt`, `GenerateRandom`, and
//!   `Encrypt` (setup), with `EncryptionContext` and `Recipient`.
//! * Keys in memory (the binary keeps their secrets in a file). A `CiphertextBlob` is the sim's
//!   own format ([`blob`]): AES-256-GCM under the key's secret, the key id in a header, the
//!   EncryptionContext as additional data, so a context mismatch fails like KMS's
//!   `InvalidCiphertextException`.
//! * A key policy per key, in the JSON of a production key policy ([`policy`]): `Principal`
//!   `"*"`, principal ARNs and account principals (AWS's default "Enable IAM User Permissions"
//!   statement, which delegates to the caller's IAM policies: [`SimConfig::identity_policies`]);
//!   `Action` with IAM's `*` and `?` wildcards anywhere; `Resource` required; the `Condition`
//!   operators `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`,
//!   `StringNotEqualsIgnoreCase`, `ArnEquals`/`ArnLike`, `ArnNotEquals`/`ArnNotLike` and
//!   `Null` on `kms:RecipientAttestation:ImageSha384` (PCR0),
//!   `kms:RecipientAttestation:PCR0`..`PCR31`, `kms:EncryptionContext:<key>` and
//!   `aws:PrincipalArn`. Each request is evaluated against it; a request whose allowing
//!   statement needs attestation but that has no `Recipient` is denied.
//! * KMS's key policy lockout safety check when a key is created or its policy replaced: the
//!   policy must let the key administrator who sets it ([`SimConfig::key_admin`]) change it
//!   again, unless bypassed on purpose ([`LockoutCheck::Bypass`], KMS's
//!   `BypassPolicyLockoutSafetyCheck`).
//! * `Recipient`: the attestation document is verified by the one verifier,
//!   [`wallet_attestation::verify`] (signature, chain to a built-in root, here also the test
//!   root), then refused if more than five minutes from the sim's clock
//!   ([`MAX_DOCUMENT_AGE_MS`], the sim's own assumption: AWS documents no such limit); any
//!   failure is `AccessDeniedException`. On success the answer carries
//!   `CiphertextForRecipient`, a CMS EnvelopedData to the document's `public_key`
//!   (RSAES-OAEP-SHA256, AES-256-CBC; BER with indefinite lengths, as KMS reportedly sends),
//!   and never `Plaintext` ([`cms`]).
//! * Errors as KMS sends them: HTTP 400 with `{"__type": "AccessDeniedException", "message":
//!   ...}`.
//!
//! # What it does not model
//! * Real KMS evaluates full IAM: identity policies in detail, grants, SCPs, VPC endpoint
//!   policies, most `aws:` global keys, `StringLike` and the other operators, `NotAction`,
//!   `NotPrincipal`. The sim has one caller (the test credentials' principal), whose IAM
//!   policies are a list of action patterns ([`SimConfig::identity_policies`], none by
//!   default), and refuses key policies that use anything it does not model, so a policy never
//!   means less here than it says.
//! * Real attestation documents chain to the AWS Nitro Enclaves root; the sim's verifier also
//!   accepts the test root (feature `test-pki` of `wallet-attestation`), whose keys are public.
//! * Key rotation, aliases, multi-region keys, key states, quotas, `GenerateDataKeyPair`,
//!   `ReEncrypt`, `CreateGrant`, `PutKeyPolicy` as requests (the policy evaluates those
//!   actions; [`Sim::set_policy`] stands for `PutKeyPolicy`), asymmetric keys, CloudTrail.
//!   KMS's real `CiphertextBlob` format and its exact error wording.
//! * Whether real KMS's CMS encoding matches byte for byte: the enclave's parser accepts BER and
//!   DER; check it against one real KMS response at the first real Nitro test.

pub mod blob;
pub mod cms;
pub mod policy;
pub mod server;
pub mod sigv4;

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use rand_core::{OsRng, RngCore as _};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

pub use policy::{Decision, KeyPolicy, PolicyError};
pub use server::Server;

/// Attestation documents further than this from the sim's clock (older, or dated ahead) are
/// refused, milliseconds.
///
/// Five minutes is **kms-sim's own assumption**, not a documented KMS limit: AWS's KMS
/// documentation (the `Recipient` parameter of `Decrypt` and `GenerateDataKey`, "Cryptographic
/// attestation support in AWS KMS") states no maximum age for the attestation document, and
/// AWS attributes replay protection to the TLS session rather than to the document. The
/// enclave makes a fresh document for every request, so it never depends on the value; the
/// limit only lets the tests show that an old document is not replayed here.
pub const MAX_DOCUMENT_AGE_MS: u64 = 5 * 60 * 1000;
/// The test region.
pub const TEST_REGION: &str = "us-east-1";
/// The test account.
pub const TEST_ACCOUNT: &str = "111122223333";
/// The test credentials' access key id (not an AWS key).
pub const TEST_ACCESS_KEY_ID: &str = "AKIAKMSSIMTEST000001";
/// The test credentials' secret (public; it authorises requests to kms-sim only).
pub const TEST_SECRET_ACCESS_KEY: &str = "kms-sim/test/secret/not+an+aws+key/0000000";
/// The principal the test credentials act as.
pub const TEST_PRINCIPAL: &str = "arn:aws:iam::111122223333:role/wallet-enclave-parent";
/// The test key administrator: who creates the sim's keys and sets their policies (the caller
/// of `CreateKey` / `PutKeyPolicy` that the lockout safety check is about).
pub const TEST_KEY_ADMIN: &str = "arn:aws:iam::111122223333:role/wallet-key-admin";
/// The TLS server name of the test certificate (also `localhost` and `127.0.0.1`).
pub const TEST_ENDPOINT: &str = "kms.us-east-1.amazonaws.com";
/// The largest request body read, bytes.
pub const MAX_REQUEST_BODY: usize = 256 * 1024;

/// The sim's settings.
#[derive(Clone)]
pub struct SimConfig {
    /// Region (SigV4 scope, key ARNs).
    pub region: String,
    /// Account id (key ARNs).
    pub account: String,
    /// The credentials every request must be signed with.
    pub credentials: sigv4::Credentials,
    /// The principal those credentials act as (matched against policies' `Principal`).
    pub principal: String,
    /// The key administrator who creates keys and sets their policies: the principal KMS's
    /// lockout safety check requires a policy to keep able to change it.
    pub key_admin: String,
    /// Principals' IAM (identity) policies: principal ARN to the action patterns (`kms:*`,
    /// `kms:Encrypt`, ...) its IAM policies allow on every key. They count only where a key
    /// policy's `Allow` names the principal's account (AWS's "Enable IAM User Permissions").
    /// Empty by default: no principal has IAM grants of its own.
    pub identity_policies: BTreeMap<String, Vec<String>>,
    /// The clock: Unix milliseconds (SigV4 skew, document age, attestation chain validity).
    pub now_ms: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("region", &self.region)
            .field("account", &self.account)
            .field("credentials", &self.credentials)
            .field("principal", &self.principal)
            .field("key_admin", &self.key_admin)
            .field("identity_policies", &self.identity_policies)
            .finish_non_exhaustive()
    }
}

impl SimConfig {
    /// The test settings: [`TEST_REGION`], [`TEST_ACCOUNT`], [`TEST_ACCESS_KEY_ID`] /
    /// [`TEST_SECRET_ACCESS_KEY`] (no session token), [`TEST_PRINCIPAL`], [`TEST_KEY_ADMIN`], no
    /// IAM policies, the system clock.
    #[must_use]
    pub fn test() -> Self {
        Self {
            region: TEST_REGION.into(),
            account: TEST_ACCOUNT.into(),
            credentials: sigv4::Credentials {
                access_key_id: TEST_ACCESS_KEY_ID.into(),
                secret_access_key: Zeroizing::new(TEST_SECRET_ACCESS_KEY.into()),
                session_token: None,
            },
            principal: TEST_PRINCIPAL.into(),
            key_admin: TEST_KEY_ADMIN.into(),
            identity_policies: BTreeMap::new(),
            now_ms: Arc::new(system_now_ms),
        }
    }
}

impl SimConfig {
    /// Whether `principal`'s IAM policies allow `action` ([`Self::identity_policies`]).
    #[must_use]
    pub fn identity_allows(&self, principal: &str, action: &str) -> bool {
        let action = action.to_ascii_lowercase();
        self.identity_policies.get(principal).is_some_and(|patterns| {
            patterns.iter().any(|p| policy::wildcard_match(&p.to_ascii_lowercase(), &action))
        })
    }
}

/// Whether creating a key or replacing its policy runs KMS's key policy lockout safety check
/// ([`KeyPolicy::lockout_safety_check`]) for [`SimConfig::key_admin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockoutCheck {
    /// Refuse a policy that would not let the key administrator change it again (KMS's
    /// default).
    #[default]
    Enforce,
    /// Skip the check, as KMS's `BypassPolicyLockoutSafetyCheck: true` does: the key may become
    /// unmanageable.
    Bypass,
}

/// The system clock, Unix milliseconds.
#[must_use]
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One key: its secret and policy.
struct Key {
    secret: Zeroizing<[u8; 32]>,
    policy: KeyPolicy,
}

/// A reply: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 200, or 400/500 with a KMS error body.
    pub status: u16,
    /// The JSON body.
    pub body: Vec<u8>,
}

impl Reply {
    fn ok(body: &Value) -> Self {
        Self { status: 200, body: body.to_string().into_bytes() }
    }

    /// A KMS error: `{"__type": error_type, "message": message}`.
    #[must_use]
    pub fn error(status: u16, error_type: &str, message: &str) -> Self {
        Self {
            status,
            body: json!({ "__type": error_type, "message": message }).to_string().into_bytes(),
        }
    }

    /// The error type when this is an error reply.
    #[must_use]
    pub fn error_type(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v.get("__type")?.as_str().map(str::to_owned)
    }
}

fn fail(error_type: &str, message: impl AsRef<str>) -> Reply {
    Reply::error(400, error_type, message.as_ref())
}

/// A verified `Recipient`.
struct Recipient {
    pcrs: BTreeMap<u8, Vec<u8>>,
    public_key: Vec<u8>,
}

/// The simulated KMS: keys, policies, the request handler. Share it (`Arc`) with a [`Server`].
pub struct Sim {
    config: SimConfig,
    keys: RwLock<BTreeMap<String, Key>>,
    envelope_encoding: RwLock<cms::Encoding>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Sim {
    /// An empty sim.
    #[must_use]
    pub fn new(config: SimConfig) -> Self {
        Self {
            config,
            keys: RwLock::new(BTreeMap::new()),
            envelope_encoding: RwLock::new(cms::Encoding::Ber),
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// A key's ARN from its id.
    #[must_use]
    pub fn arn(&self, key_id: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{key_id}", self.config.region, self.config.account)
    }

    /// Creates a key with a random id and secret under `policy` (the lockout safety check
    /// enforced); returns its ARN.
    ///
    /// # Errors
    /// When `policy` fails the lockout safety check ([`LockoutCheck::Enforce`]).
    pub fn create_key(&self, policy: KeyPolicy) -> Result<String, PolicyError> {
        self.create_key_with(policy, LockoutCheck::Enforce)
    }

    /// As [`Self::create_key`], with the lockout safety check enforced or bypassed.
    ///
    /// # Errors
    /// When `policy` fails an enforced lockout safety check.
    pub fn create_key_with(
        &self,
        policy: KeyPolicy,
        lockout: LockoutCheck,
    ) -> Result<String, PolicyError> {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let h = hex::encode(id);
        let key_id =
            format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
        let mut secret = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(secret.as_mut());
        self.add_key(&key_id, secret, policy, lockout)
    }

    /// Adds (or replaces) key `key_id` with `secret` and `policy`; returns its ARN.
    ///
    /// # Errors
    /// When `policy` fails an enforced lockout safety check.
    pub fn add_key(
        &self,
        key_id: &str,
        secret: Zeroizing<[u8; 32]>,
        policy: KeyPolicy,
        lockout: LockoutCheck,
    ) -> Result<String, PolicyError> {
        self.lockout_safety_check(&policy, lockout)?;
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_id.to_owned(), Key { secret, policy });
        Ok(self.arn(key_id))
    }

    /// Replaces a key's policy (for example after an image update), as `PutKeyPolicy` by
    /// [`SimConfig::key_admin`].
    ///
    /// # Errors
    /// When there is no such key, or `policy` fails an enforced lockout safety check.
    pub fn set_policy(
        &self,
        key: &str,
        policy: KeyPolicy,
        lockout: LockoutCheck,
    ) -> Result<(), String> {
        self.lockout_safety_check(&policy, lockout).map_err(|e| e.to_string())?;
        let id = self.key_id_of(key).ok_or_else(|| format!("no key {key}"))?;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let k = keys.get_mut(&id).ok_or_else(|| format!("no key {key}"))?;
        k.policy = policy;
        Ok(())
    }

    fn lockout_safety_check(
        &self,
        policy: &KeyPolicy,
        lockout: LockoutCheck,
    ) -> Result<(), PolicyError> {
        match lockout {
            LockoutCheck::Bypass => Ok(()),
            LockoutCheck::Enforce => {
                let admin = &self.config.key_admin;
                policy.lockout_safety_check(
                    admin,
                    self.config.identity_allows(admin, "kms:PutKeyPolicy"),
                )
            }
        }
    }

    /// Sends envelopes as DER instead of BER (the default).
    pub fn set_envelope_encoding(&self, encoding: cms::Encoding) {
        *self.envelope_encoding.write().unwrap_or_else(PoisonError::into_inner) = encoding;
    }

    /// Encrypts `plaintext` under `key` and `context` directly, with no request and no policy:
    /// the setup an administrator does (and what a host that is allowed `kms:Encrypt` could do).
    ///
    /// # Errors
    /// When there is no such key.
    pub fn encrypt_for_setup(
        &self,
        key: &str,
        plaintext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, String> {
        let id = self.key_id_of(key).ok_or_else(|| format!("no key {key}"))?;
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let k = keys.get(&id).ok_or_else(|| format!("no key {key}"))?;
        Ok(blob::seal(&k.secret, &id, plaintext, context))
    }

    /// The key id that a KeyId parameter (id or ARN of this region and account) names, if the
    /// key exists.
    fn key_id_of(&self, key: &str) -> Option<String> {
        let prefix = format!("arn:aws:kms:{}:{}:key/", self.config.region, self.config.account);
        let id = key.strip_prefix(&prefix).unwrap_or(key);
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(id)
            .then(|| id.to_owned())
    }

    /// Handles one HTTP request: `headers` as received (any case), `body` the raw body.
    #[must_use]
    pub fn handle(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Reply {
        let now = (self.config.now_ms)();
        let get = |name: &str| {
            headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        };
        if method != "POST" || path != "/" {
            return fail("UnknownOperationException", "POST / only");
        }
        if let Err((kind, message)) =
            sigv4::verify(&self.config.credentials, &self.config.region, now, method, headers, body)
        {
            return fail(kind, message);
        }
        if get("content-type") != Some("application/x-amz-json-1.1") {
            return fail(
                "SerializationException",
                "Content-Type must be application/x-amz-json-1.1",
            );
        }
        let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
            return fail("SerializationException", "the body is not a JSON object");
        };
        let result = match get("x-amz-target") {
            Some("TrentService.GenerateDataKey") => self.generate_data_key(&req, now),
            Some("TrentService.Decrypt") => self.decrypt(&req, now),
            Some("TrentService.Encrypt") => self.encrypt(&req),
            Some("TrentService.GenerateRandom") => self.generate_random(&req, now),
            _ => Err(fail("UnknownOperationException", "unknown X-Amz-Target")),
        };
        result.unwrap_or_else(|reply| reply)
    }

    fn context(req: &Map<String, Value>) -> Result<BTreeMap<String, String>, Reply> {
        match req.get("EncryptionContext") {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(s) => Ok((k.clone(), s.to_owned())),
                    None => {
                        Err(fail("ValidationException", "EncryptionContext values are strings"))
                    }
                })
                .collect(),
            Some(_) => Err(fail("ValidationException", "EncryptionContext is a map")),
        }
    }

    /// Verifies a `Recipient`, if any.
    fn recipient(req: &Map<String, Value>, now: u64) -> Result<Option<Recipient>, Reply> {
        let Some(r) = req.get("Recipient").filter(|r| !r.is_null()) else {
            return Ok(None);
        };
        let alg = r.get("KeyEncryptionAlgorithm").and_then(Value::as_str);
        if alg != Some("RSAES_OAEP_SHA_256") {
            return Err(fail(
                "ValidationException",
                "KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256",
            ));
        }
        let doc = r
            .get("AttestationDocument")
            .and_then(Value::as_str)
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| fail("ValidationException", "AttestationDocument is not base64"))?;
        let doc = wallet_attestation::verify(&doc, now, None).map_err(|e| {
            fail(
                "AccessDeniedException",
                format!("the Recipient's attestation document is not valid: {e}"),
            )
        })?;
        if now.saturating_sub(doc.timestamp_ms) > MAX_DOCUMENT_AGE_MS
            || doc.timestamp_ms.saturating_sub(now) > MAX_DOCUMENT_AGE_MS
        {
            return Err(fail(
                "AccessDeniedException",
                "the Recipient's attestation document is stale (more than 5 minutes from now)",
            ));
        }
        let public_key = doc.public_key.ok_or_else(|| {
            fail("ValidationException", "the attestation document has no public_key")
        })?;
        Ok(Some(Recipient { pcrs: doc.pcrs, public_key }))
    }

    /// Evaluates `key`'s policy for `action`.
    fn authorize(
        &self,
        key_id: &str,
        action: &str,
        recipient: Option<&Recipient>,
        context: &BTreeMap<String, String>,
    ) -> Result<(), Reply> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = keys.get(key_id).ok_or_else(|| fail("NotFoundException", "no such key"))?;
        let decision = key.policy.evaluate(&policy::RequestContext {
            action,
            principal: &self.config.principal,
            identity_allows: self.config.identity_allows(&self.config.principal, action),
            recipient_pcrs: recipient.map(|r| &r.pcrs),
            encryption_context: context,
        });
        let arn = self.arn(key_id);
        let who = &self.config.principal;
        match decision {
            Decision::Allow(_) => Ok(()),
            Decision::ExplicitDeny(sid) => Err(fail(
                "AccessDeniedException",
                format!("User: {who} is not authorized to perform: {action} on resource: {arn} with an explicit deny in a resource-based policy ({sid})"),
            )),
            Decision::ImplicitDeny => Err(fail(
                "AccessDeniedException",
                format!("User: {who} is not authorized to perform: {action} on resource: {arn} because no resource-based policy allows the {action} action"),
            )),
        }
    }

    /// The plaintext or, with a recipient, the envelope to it.
    fn release(
        &self,
        recipient: Option<&Recipient>,
        plaintext: &[u8],
        out: &mut Map<String, Value>,
    ) -> Result<(), Reply> {
        match recipient {
            None => {
                out.insert("Plaintext".into(), B64.encode(plaintext).into());
            }
            Some(r) => {
                let encoding =
                    *self.envelope_encoding.read().unwrap_or_else(PoisonError::into_inner);
                let env = cms::envelope(&r.public_key, plaintext, encoding)
                    .map_err(|e| fail("ValidationException", e.to_string()))?;
                out.insert("CiphertextForRecipient".into(), B64.encode(env).into());
            }
        }
        Ok(())
    }

    fn key_param(&self, req: &Map<String, Value>) -> Result<String, Reply> {
        let key = req
            .get("KeyId")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("ValidationException", "KeyId is required"))?;
        self.key_id_of(key)
            .ok_or_else(|| fail("NotFoundException", format!("Key '{key}' does not exist")))
    }

    fn generate_data_key(&self, req: &Map<String, Value>, now: u64) -> Result<Reply, Reply> {
        let key_id = self.key_param(req)?;
        let len = match (
            req.get("KeySpec").and_then(Value::as_str),
            req.get("NumberOfBytes").and_then(Value::as_u64),
        ) {
            (Some("AES_256"), None) => 32,
            (Some("AES_128"), None) => 16,
            (None, Some(n @ 1..=1024)) => usize::try_from(n).unwrap_or(32),
            _ => {
                return Err(fail(
                    "ValidationException",
                    "give KeySpec (AES_256, AES_128) or NumberOfBytes (1..1024)",
                ))
            }
        };
        let context = Self::context(req)?;
        let recipient = Self::recipient(req, now)?;
        self.authorize(&key_id, "kms:GenerateDataKey", recipient.as_ref(), &context)?;
        let mut data_key = Zeroizing::new(vec![0u8; len]);
        OsRng.fill_bytes(&mut data_key);
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = keys.get(&key_id).ok_or_else(|| fail("NotFoundException", "no such key"))?;
        let blob = blob::seal(&key.secret, &key_id, &data_key, &context);
        drop(keys);
        let mut out = Map::new();
        out.insert("CiphertextBlob".into(), B64.encode(blob).into());
        out.insert("KeyId".into(), self.arn(&key_id).into());
        self.release(recipient.as_ref(), &data_key, &mut out)?;
        Ok(Reply::ok(&Value::Object(out)))
    }

    fn decrypt(&self, req: &Map<String, Value>, now: u64) -> Result<Reply, Reply> {
        let invalid = || fail("InvalidCiphertextException", "");
        let blob = req
            .get("CiphertextBlob")
            .and_then(Value::as_str)
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| fail("ValidationException", "CiphertextBlob is required (base64)"))?;
        let blob_key = blob::key_id(&blob).ok_or_else(invalid)?.to_owned();
        if let Some(k) = req.get("KeyId").and_then(Value::as_str) {
            if self.key_id_of(k).as_deref() != Some(blob_key.as_str()) {
                return Err(fail("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation."));
            }
        }
        if self.key_id_of(&blob_key).is_none() {
            return Err(invalid());
        }
        let context = Self::context(req)?;
        let recipient = Self::recipient(req, now)?;
        self.authorize(&blob_key, "kms:Decrypt", recipient.as_ref(), &context)?;
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = keys.get(&blob_key).ok_or_else(invalid)?;
        let plaintext = blob::open(&key.secret, &blob, &context).ok_or_else(invalid)?;
        drop(keys);
        let mut out = Map::new();
        out.insert("KeyId".into(), self.arn(&blob_key).into());
        out.insert("EncryptionAlgorithm".into(), "SYMMETRIC_DEFAULT".into());
        self.release(recipient.as_ref(), &plaintext, &mut out)?;
        Ok(Reply::ok(&Value::Object(out)))
    }

    fn encrypt(&self, req: &Map<String, Value>) -> Result<Reply, Reply> {
        let key_id = self.key_param(req)?;
        let plaintext = req
            .get("Plaintext")
            .and_then(Value::as_str)
            .and_then(|s| B64.decode(s).ok())
            .filter(|p| !p.is_empty() && p.len() <= 4096)
            .map(Zeroizing::new)
            .ok_or_else(|| fail("ValidationException", "Plaintext is 1 to 4096 bytes, base64"))?;
        let context = Self::context(req)?;
        if req.get("Recipient").is_some_and(|r| !r.is_null()) {
            return Err(fail("ValidationException", "Encrypt takes no Recipient"));
        }
        self.authorize(&key_id, "kms:Encrypt", None, &context)?;
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = keys.get(&key_id).ok_or_else(|| fail("NotFoundException", "no such key"))?;
        let blob = blob::seal(&key.secret, &key_id, &plaintext, &context);
        drop(keys);
        Ok(Reply::ok(&json!({
            "CiphertextBlob": B64.encode(blob),
            "KeyId": self.arn(&key_id),
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        })))
    }

    /// `GenerateRandom` is not a key operation (IAM only): always allowed here; with a
    /// `Recipient`, the bytes go in an envelope.
    fn generate_random(&self, req: &Map<String, Value>, now: u64) -> Result<Reply, Reply> {
        let n = req
            .get("NumberOfBytes")
            .and_then(Value::as_u64)
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| fail("ValidationException", "NumberOfBytes is 1 to 1024"))?;
        let recipient = Self::recipient(req, now)?;
        let mut bytes = Zeroizing::new(vec![0u8; usize::try_from(n).unwrap_or(1)]);
        OsRng.fill_bytes(&mut bytes);
        let mut out = Map::new();
        self.release(recipient.as_ref(), &bytes, &mut out)?;
        Ok(Reply::ok(&Value::Object(out)))
    }
}

#[cfg(test)]
mod tests;
