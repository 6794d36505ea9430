//! The enclave's request handler: admin state changes and the payment path.
//!
//! Life of one `SignPayment`:
//! 1. verify the session's Ed25519 signature over the canonical request, its freshness and the
//!    replay cache (no lock held while verifying);
//! 2. decode `PAYMENT-REQUIRED` and, under the state lock, check idempotency, evaluate policy on
//!    the exact requirement and *reserve* the charge against the session — so concurrent
//!    requests can never jointly exceed a cap;
//! 3. build and sign the EIP-712 digest (outside the lock);
//! 4. write the spend record (with the signed payload, for idempotent replays) and wait until it is
//!    durable (group commit);
//! 5. re-check revocation and freeze under the lock, then release the signature.
//!
//! A crash anywhere before step 5 loses no money: either the spend is durable (counted on
//! restart; the signature was perhaps never released) or it is not, and then no signature left.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use alloy_primitives::{Address, B256, U256};
use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use wallet_policy::{
    address::parse_address,
    amount::{format_decimal, format_units, parse_human},
    audit::{head_message, Record as AuditRecord},
    auth::{admin_message, sign_payment_message, SignPaymentFields, FRESHNESS_WINDOW_MS},
    eip712::Authorization,
    registry::{chain_id, default_assets, AssetInfo},
    rules::{
        self, AssetLookup, Context, Denial, Policy, Scope, SessionState,
        DEFAULT_MAX_VALIDITY_SECONDS, MAX_VALIDITY_SECONDS, MIN_VALIDITY_SECONDS,
    },
    window::{History, ScopeLedger, WalletHistory},
    x402::{decode_payment_required, encode_header, payment_payload_json, PaymentRequired},
};
use wallet_proto::{
    enclave::v1::{
        self as en, enclave_request::Body as Req, enclave_response::Body as Resp, ErrorCode,
    },
    gateway::v1 as gw,
    AdminSigned, ENCLAVE_PROTOCOL_VERSION,
};
use zeroize::Zeroizing;

use crate::{
    audit::AuditLog,
    journal::{Journal, JournalError},
    keys::WalletKey,
    nsm::{Nsm, NsmRng},
    store::{Op, Store, StoreError, Table},
};

/// Record id of the audit key in the key table (wallet ids start with `w_`).
const AUDIT_KEY_ID: &[u8] = b"audit-key";

/// Most entries a KYT list may hold.
pub const MAX_KYT_ENTRIES: usize = 2_000_000;
/// Most KYT entries one `ListKyt` page returns (keeps the answer under one frame).
const MAX_KYT_PAGE: u64 = 10_000;

/// Longest session lifetime an admin may grant: one year.
pub const MAX_SESSION_TTL_SECONDS: u64 = 366 * 24 * 3600;

/// A failed request: gRPC-style code, stable reason, one sentence. Never secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Code.
    pub code: ErrorCode,
    /// Stable reason code.
    pub reason: String,
    /// For people.
    pub message: String,
}

impl Failure {
    fn new(code: ErrorCode, reason: &str, message: impl Into<String>) -> Self {
        Self { code, reason: reason.to_owned(), message: message.into() }
    }
    fn invalid(reason: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, reason, message)
    }
    fn unauthenticated(reason: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, reason, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, "NOT_FOUND", message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, "INTERNAL", message)
    }
}

impl From<Denial> for Failure {
    fn from(d: Denial) -> Self {
        Self::new(ErrorCode::Denied, d.reason.code(), d.message)
    }
}

impl From<JournalError> for Failure {
    fn from(e: JournalError) -> Self {
        tracing::error!(error = %e, "spend journal failure");
        Self::internal("the spend could not be made durable; the signature was withheld")
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure");
        Self::internal("storage failure; nothing was signed")
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WalletRecord {
    id: String,
    address: Address,
    label: String,
    frozen: bool,
    created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AdminRecord {
    label: String,
    added_at: u64,
    /// Timestamp of the last request accepted from this admin.
    last_ts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    id: String,
    wallet_id: String,
    public_key: String,
    cap: U256,
    expires_at: u64,
    revoked: bool,
    scope: Scope,
    created_at: u64,
    label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpendRecord {
    seq: u64,
    session_id: String,
    wallet_id: String,
    charge: U256,
    amount: U256,
    network: String,
    asset: Address,
    pay_to: Address,
    valid_before: u64,
    at_ms: u64,
    idempotency_key: String,
    request_hash: String,
    /// What is needed to answer an idempotent retry with the same response.
    payload_json: String,
    accepted_index: u32,
    charged: String,
    asset_symbol: String,
    session_spent: String,
    session_remaining: String,
    payer: String,
}

impl SpendRecord {
    /// The response this spend was released with.
    fn response(&self) -> gw::SignPaymentResponse {
        let accepted_json = serde_json::from_str::<serde_json::Value>(&self.payload_json)
            .map(|v| v["accepted"].to_string())
            .unwrap_or_default();
        gw::SignPaymentResponse {
            payment_signature: encode_header(&self.payload_json),
            payment_payload_json: self.payload_json.clone(),
            accepted_json,
            accepted_index: self.accepted_index,
            network: self.network.clone(),
            asset: self.asset.to_checksum(None),
            pay_to: self.pay_to.to_checksum(None),
            amount: self.amount.to_string(),
            charged: self.charged.clone(),
            asset_symbol: self.asset_symbol.clone(),
            session_spent: self.session_spent.clone(),
            session_remaining: self.session_remaining.clone(),
            payer: self.payer.clone(),
            valid_before: self.valid_before,
            replayed: false,
        }
    }
}

struct WalletEntry {
    record: WalletRecord,
    key: Arc<WalletKey>,
}

struct SessionEntry {
    record: SessionRecord,
    key: VerifyingKey,
    spent: U256,
    /// The session's spends, for its time-window budgets and rate limit.
    history: History,
}

/// A policy as stored: the document and the version the enclave gave it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredPolicy {
    version: u64,
    document: String,
}

/// A policy as stored before policy documents: converted to the basic document when read.
#[derive(Debug, Deserialize)]
struct LegacyPolicy {
    version: u64,
    max_per_payment: U256,
    networks: Vec<String>,
    assets: Vec<Address>,
    max_validity_seconds: u64,
}

fn load_policy(bytes: &[u8]) -> Result<Policy, StoreError> {
    let stored = match serde_json::from_slice::<StoredPolicy>(bytes) {
        Ok(s) => s,
        Err(_) => {
            let l: LegacyPolicy = from_json("policy", bytes)?;
            StoredPolicy {
                version: l.version,
                document: Policy::basic_document(
                    l.max_per_payment,
                    &l.networks,
                    &l.assets,
                    l.max_validity_seconds,
                ),
            }
        }
    };
    let mut p = Policy::parse(&stored.document)
        .map_err(|e| StoreError::Engine(format!("stored policy does not parse: {e}")))?;
    p.version = stored.version;
    Ok(p)
}

/// Where a hold for approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HoldState {
    Pending,
    Approved,
    Denied,
    /// Signed after approval.
    Used,
}

/// A payment held for a human's approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApprovalRecord {
    id: String,
    wallet_id: String,
    session_id: String,
    idempotency_key: String,
    request_hash: String,
    network: String,
    asset: Address,
    asset_symbol: String,
    pay_to: Address,
    amount: String,
    reason: String,
    state: HoldState,
    created_ms: u64,
    /// Pending: decided by then or expired. Approved: retried by then or expired.
    expires_ms: u64,
    /// How long a decision or a retry may take, ms.
    hold_ms: u64,
    decided_by: String,
    note: String,
    /// The `accepts[]` option held: the only one an approval lets the retry sign.
    #[serde(default)]
    accepted_index: usize,
}

impl ApprovalRecord {
    fn expired(&self, now_ms: u64) -> bool {
        matches!(self.state, HoldState::Pending | HoldState::Approved) && now_ms >= self.expires_ms
    }
    fn state_name(&self, now_ms: u64) -> &'static str {
        if self.expired(now_ms) {
            return "expired";
        }
        match self.state {
            HoldState::Pending => "pending",
            HoldState::Approved => "approved",
            HoldState::Denied => "denied",
            HoldState::Used => "used",
        }
    }
}

struct Reserved {
    approval: rules::Approval,
    key: Arc<WalletKey>,
    domain: B256,
    wallet_id: String,
    done_tx: watch::Sender<bool>,
}

/// The next step of a payment after a look at the state.
enum Step {
    Sign(Reserved),
    Hold(ApprovalRecord),
    Wait(watch::Receiver<bool>),
}

/// What the decision under the lock came to.
enum Reservation {
    /// Allowed and charged: sign it.
    Sign(Reserved),
    /// Held for a human's approval (in memory; to be made durable).
    Hold(ApprovalRecord),
}

enum Idem {
    /// Being decided, signed or made durable.
    InFlight { hash: [u8; 32], done: watch::Receiver<bool> },
    /// Released; a retry gets the same payload.
    Done { hash: [u8; 32], record: Arc<SpendRecord> },
    /// Charged, but revoked or frozen before release: never released.
    Withheld { hash: [u8; 32], reason: String, at_ms: u64 },
    /// Failed after the spend may have been recorded: the key cannot be reused.
    Failed { hash: [u8; 32], at_ms: u64 },
    /// Held for a human's approval (see `Inner::approvals`).
    Held { hash: [u8; 32], approval_id: String },
}

impl Idem {
    /// When a settled entry was decided (`None` while in flight).
    fn at_ms(&self) -> Option<u64> {
        match self {
            Self::InFlight { .. } | Self::Held { .. } => None,
            Self::Done { record, .. } => Some(record.at_ms),
            Self::Withheld { at_ms, .. } | Self::Failed { at_ms, .. } => Some(*at_ms),
        }
    }
}

/// Default time an idempotency key is remembered: 24 hours.
pub const DEFAULT_IDEMPOTENCY_TTL_SECONDS: u64 = 24 * 3600;

/// A journal record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    /// An authorization the enclave signed and decided to release.
    Spend(Box<SpendRecord>),
    /// A spend whose signature was withheld (revoked or frozen in flight).
    Withheld {
        session_id: String,
        idempotency_key: String,
        request_hash: String,
        reason: String,
        #[serde(default)]
        at_ms: u64,
    },
}

#[derive(Default)]
struct Registry {
    assets: HashMap<(String, Address), AssetInfo>,
    domains: HashMap<(String, Address), B256>,
}

impl Registry {
    fn insert(&mut self, a: AssetInfo) {
        let k = (a.network.clone(), a.address);
        self.domains.insert(k.clone(), a.domain_separator());
        self.assets.insert(k, a);
    }
}

impl AssetLookup for Registry {
    fn lookup(&self, network: &str, asset: &Address) -> Option<&AssetInfo> {
        self.assets.get(&(network.to_owned(), *asset))
    }
}

#[derive(Default)]
struct Inner {
    admins: HashMap<[u8; 32], AdminRecord>,
    wallets: HashMap<String, WalletEntry>,
    policies: HashMap<String, Policy>,
    registry: Registry,
    kyt: HashSet<Address>,
    sessions: HashMap<String, SessionEntry>,
    /// Each wallet's spends, for its time-window budgets, payee caps and rate limit.
    wallet_history: HashMap<String, WalletHistory>,
    /// Payments held for approval, by id.
    approvals: HashMap<String, ApprovalRecord>,
    idem: HashMap<(String, String), Idem>,
    /// Settled idempotency keys in the order they were settled, to forget them after the TTL.
    idem_order: VecDeque<(u64, (String, String))>,
    /// Request nonces seen within the freshness window, and the same in expiry order (pruned
    /// from the front in O(1) per request).
    replay: HashSet<(String, Vec<u8>)>,
    replay_order: VecDeque<(u64, (String, Vec<u8>))>,
}

impl Inner {
    /// Records a settled idempotency key (and when, to forget it after the TTL).
    fn settle(&mut self, key: (String, String), entry: Idem) {
        if let Some(at) = entry.at_ms() {
            self.idem_order.push_back((at, key.clone()));
        }
        self.idem.insert(key, entry);
    }

    /// Forgets settled idempotency keys older than `ttl_ms` (O(1) per settled key).
    fn prune_idem(&mut self, now_ms: u64, ttl_ms: u64) {
        while self.idem_order.front().is_some_and(|(at, _)| at.saturating_add(ttl_ms) <= now_ms) {
            if let Some((at, key)) = self.idem_order.pop_front() {
                // Only if the key was not settled again since (a newer entry has a later time).
                if self.idem.get(&key).and_then(Idem::at_ms) == Some(at) {
                    self.idem.remove(&key);
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
#[must_use]
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// The enclave's state and request handler.
pub struct Enclave {
    store: Store,
    journal: Journal,
    audit: AuditLog,
    /// Signs audit heads. Generated at first start, sealed in the store; zeroized on drop.
    audit_key: ed25519_dalek::SigningKey,
    nsm: Box<dyn Nsm>,
    clock: Clock,
    inner: Mutex<Inner>,
    admin: tokio::sync::Mutex<()>,
    spend_seq: AtomicU64,
    signed: AtomicU64,
    data_dir: String,
    /// How long a settled idempotency key is remembered, ms.
    idem_ttl_ms: AtomicU64,
    /// A KYT import being uploaded: its id and the addresses so far.
    kyt_staging: Mutex<Option<(String, HashSet<Address>)>>,
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enclave")
            .field("mode", &self.nsm.mode())
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

fn json<T: Serialize>(v: &T) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(serde_json::to_vec(v).expect("records serialize infallibly. qed"))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Engine(format!("corrupt {what} record: {e}")))
}

fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

fn parse_list<T>(
    items: &[String],
    what: &str,
    f: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    items
        .iter()
        .map(|s| {
            f(s.trim()).map_err(|e| Failure::invalid("INVALID_ARGUMENT", format!("{what}: {e}")))
        })
        .collect()
}

fn parse_networks(items: &[String]) -> Result<Vec<String>> {
    parse_list(items, "network", |s| chain_id(s).map(|_| s.to_owned()))
}

fn parse_amount(s: &str, what: &str) -> Result<U256> {
    let a =
        parse_human(s).map_err(|e| Failure::invalid("INVALID_AMOUNT", format!("{what}: {e}")))?;
    if a.units.is_zero() {
        return Err(Failure::invalid(
            "INVALID_AMOUNT",
            format!("{what} must be greater than zero"),
        ));
    }
    Ok(a.units)
}

/// KYT entries are matched case- and checksum-insensitively.
fn parse_kyt_address(s: &str) -> std::result::Result<Address, String> {
    parse_address(&s.to_ascii_lowercase())
}

fn valid_idempotency_key(k: &str) -> bool {
    (1..=128).contains(&k.len())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

impl Enclave {
    /// Opens the state in `store`, loading everything into memory.
    ///
    /// # Errors
    /// [`StoreError`] when a record is corrupt or fails authentication: the enclave refuses to
    /// run on state it cannot trust.
    pub async fn open(
        store: Store,
        journal: Journal,
        spends: Vec<Zeroizing<Vec<u8>>>,
        audit: AuditLog,
        nsm: Box<dyn Nsm>,
        clock: Clock,
        data_dir: String,
    ) -> Result<Self, StoreError> {
        let mut inner = Inner::default();
        if store.get(Table::Meta, b"initialized")?.is_none() {
            let mut ops: Vec<Op> = default_assets()
                .into_iter()
                .map(|a| Op::Put(Table::Assets, asset_key(&a.network, &a.address), json(&a)))
                .collect();
            ops.push(Op::Put(Table::Meta, b"initialized".to_vec(), b"1".to_vec().into()));
            store.apply(ops)?;
            store.sync().await?;
        }
        for (_, v) in store.scan(Table::Assets)? {
            inner.registry.insert(from_json("asset", &v)?);
        }
        for (k, v) in store.scan(Table::Admins)? {
            if let Ok(pk) = <[u8; 32]>::try_from(k.as_slice()) {
                inner.admins.insert(pk, from_json("admin", &v)?);
            }
        }
        for (k, v) in store.scan(Table::Wallets)? {
            let record: WalletRecord = from_json("wallet", &v)?;
            let secret = store
                .get(Table::Keys, &k)?
                .ok_or_else(|| StoreError::Engine(format!("wallet {} has no key", record.id)))?;
            let key =
                WalletKey::from_bytes(&secret).map_err(|e| StoreError::Engine(e.to_string()))?;
            if key.address() != record.address {
                return Err(StoreError::Engine(format!(
                    "wallet {} key does not match its address",
                    record.id
                )));
            }
            inner.wallets.insert(record.id.clone(), WalletEntry { record, key: Arc::new(key) });
        }
        for (k, v) in store.scan(Table::Policies)? {
            inner.policies.insert(String::from_utf8_lossy(&k).into_owned(), load_policy(&v)?);
        }
        for (k, _) in store.scan(Table::Kyt)? {
            if let Ok(a) = <[u8; 20]>::try_from(k.as_slice()) {
                inner.kyt.insert(Address::from(a));
            }
        }
        for (_, v) in store.scan(Table::Sessions)? {
            let record: SessionRecord = from_json("session", &v)?;
            let key = session_key(&record.public_key).map_err(|e| StoreError::Engine(e.message))?;
            inner.sessions.insert(
                record.id.clone(),
                SessionEntry { record, key, spent: U256::ZERO, history: History::new() },
            );
        }
        // Holds for approval; a retry of a held request finds its hold by idempotency key.
        let now_ms = clock();
        let mut stale = Vec::new();
        for (k, v) in store.scan(Table::Approvals)? {
            let a: ApprovalRecord = from_json("approval", &v)?;
            // Settled holds are forgotten a day after they stopped mattering.
            if a.expires_ms.saturating_add(DEFAULT_IDEMPOTENCY_TTL_SECONDS * 1000) <= now_ms {
                stale.push(Op::Delete(Table::Approvals, k));
                continue;
            }
            let hash = hex::decode(&a.request_hash)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .unwrap_or_default();
            inner.idem.insert(
                (a.session_id.clone(), a.idempotency_key.clone()),
                Idem::Held { hash, approval_id: a.id.clone() },
            );
            inner.approvals.insert(a.id.clone(), a);
        }
        if !stale.is_empty() {
            store.apply(stale)?;
        }
        let mut max_seq = 0;
        let mut signed: u64 = 0;
        for v in &spends {
            let hash_of = |h: &str| {
                hex::decode(h).ok().and_then(|h| <[u8; 32]>::try_from(h).ok()).unwrap_or_default()
            };
            match from_json::<Entry>("journal", v)? {
                Entry::Spend(s) => {
                    max_seq = max_seq.max(s.seq);
                    signed += 1;
                    if let Some(sess) = inner.sessions.get_mut(&s.session_id) {
                        sess.spent = sess
                            .spent
                            .checked_add(s.charge)
                            .ok_or_else(|| StoreError::Engine("spend total overflows".into()))?;
                        sess.history.record(s.at_ms / 1000, s.charge);
                    }
                    inner.wallet_history.entry(s.wallet_id.clone()).or_default().record(
                        s.pay_to,
                        s.at_ms / 1000,
                        s.charge,
                    );
                    let key = (s.session_id.clone(), s.idempotency_key.clone());
                    inner.settle(
                        key,
                        Idem::Done { hash: hash_of(&s.request_hash), record: Arc::from(s) },
                    );
                }
                Entry::Withheld { session_id, idempotency_key, request_hash, reason, at_ms } => {
                    signed = signed.saturating_sub(1);
                    inner.settle(
                        (session_id, idempotency_key),
                        Idem::Withheld { hash: hash_of(&request_hash), reason, at_ms },
                    );
                }
            }
        }
        tracing::info!(
            wallets = inner.wallets.len(),
            sessions = inner.sessions.len(),
            spends = signed,
            assets = inner.registry.assets.len(),
            kyt = inner.kyt.len(),
            "state loaded"
        );
        let audit_key = match store.get(Table::Keys, AUDIT_KEY_ID)? {
            Some(bytes) => {
                let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Engine("audit key is not 32 bytes".into()))?,
                );
                ed25519_dalek::SigningKey::from_bytes(&secret)
            }
            None => {
                let key = ed25519_dalek::SigningKey::generate(&mut NsmRng(nsm.as_ref()));
                store.apply(vec![Op::Put(
                    Table::Keys,
                    AUDIT_KEY_ID.to_vec(),
                    Zeroizing::new(key.to_bytes().to_vec()),
                )])?;
                store.sync().await?;
                key
            }
        };
        let mac_key: Zeroizing<[u8; 32]> = Zeroizing::new(
            Sha256::new()
                .chain_update(b"x402-wallet/audit-mac-key/v1\0")
                .chain_update(audit_key.to_bytes())
                .finalize()
                .into(),
        );
        audit.attach_key(mac_key).map_err(|e| StoreError::Engine(e.to_string()))?;
        if inner.admins.is_empty()
            && (!inner.wallets.is_empty()
                || !inner.sessions.is_empty()
                || signed > 0
                || audit.head().0 > 0)
        {
            return Err(StoreError::Engine(
                "the state has wallets, sessions, spends or audit records but no admin: the admin records were removed. Refusing to start (a new admin could take over).".into(),
            ));
        }
        Ok(Self {
            store,
            journal,
            audit,
            audit_key,
            nsm,
            clock,
            inner: Mutex::new(inner),
            admin: tokio::sync::Mutex::new(()),
            spend_seq: AtomicU64::new(max_seq + 1),
            signed: AtomicU64::new(signed),
            data_dir,
            idem_ttl_ms: AtomicU64::new(DEFAULT_IDEMPOTENCY_TTL_SECONDS * 1000),
            kyt_staging: Mutex::new(None),
        })
    }

    /// Sets how long idempotency keys are remembered (default 24 h). A retry after that is a new
    /// payment.
    pub fn set_idempotency_ttl(&self, seconds: u64) {
        self.idem_ttl_ms.store(seconds.saturating_mul(1000), Ordering::Relaxed);
    }

    /// Applies a batch of state changes atomically and waits until it is durable.
    async fn persist(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.store.apply(ops)?;
        self.store.sync().await
    }

    /// Fault injection into the spend journal, for tests.
    #[doc(hidden)]
    #[must_use]
    pub fn journal_faults(&self) -> &crate::journal::Faults {
        self.journal.faults()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent in-memory state (every mutation is a
        // single assignment), so recovering from poisoning is sound.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_s(&self) -> u64 {
        (self.clock)() / 1000
    }

    /// Handles one request.
    pub async fn handle(&self, req: en::EnclaveRequest) -> en::EnclaveResponse {
        let request_id = req.request_id;
        let result = if req.protocol_version == ENCLAVE_PROTOCOL_VERSION {
            self.dispatch(req.body).await
        } else {
            Err(Failure::invalid(
                "PROTOCOL_VERSION",
                format!(
                    "protocol version {} is not {ENCLAVE_PROTOCOL_VERSION}",
                    req.protocol_version
                ),
            ))
        };
        let body = result.unwrap_or_else(|f| {
            Resp::Error(en::EnclaveError {
                code: f.code.into(),
                reason: f.reason,
                message: f.message,
            })
        });
        en::EnclaveResponse { request_id, body: Some(body) }
    }

    async fn dispatch(&self, body: Option<Req>) -> Result<Resp> {
        let Some(body) = body else {
            return Err(Failure::invalid("EMPTY_REQUEST", "request has no body"));
        };
        // State changes are signed by an admin and applied one at a time: the admin lock makes
        // "check the admin's last timestamp, then apply" atomic.
        macro_rules! admin {
            ($rpc:literal, $r:ident, $op:expr) => {{
                let _admin = self.admin.lock().await;
                self.authorize($rpc, &$r, false).await?;
                let admin = $r
                    .auth
                    .as_ref()
                    .map(|a| hex::encode(&a.public_key[..a.public_key.len().min(8)]))
                    .unwrap_or_default();
                let resp = $op;
                self.audit_admin($rpc, &admin, &resp);
                resp
            }};
        }
        Ok(match body {
            Req::SignPayment(r) => Resp::SignPayment(self.sign_payment(r).await?),
            Req::ListWallets(_) => Resp::Wallets(self.list_wallets()),
            Req::GetPolicy(r) => Resp::Policy(self.get_policy(&r.wallet_id)?),
            Req::ListAssets(_) => Resp::Assets(self.list_assets()),
            Req::ListKyt(r) => Resp::KytList(self.list_kyt(&r)),
            Req::ListApprovals(r) => Resp::Approvals(self.list_approvals(&r)),
            Req::ListSessions(r) => Resp::Sessions(self.list_sessions(&r.wallet_id)),
            Req::GetStatus(_) => Resp::Status(self.status()),
            Req::ListAdmins(_) => Resp::Admins(self.list_admins()),
            Req::GetAuditHead(r) => Resp::AuditHead(self.audit_head(&r.challenge)),
            Req::ListAudit(r) => Resp::Audit(self.list_audit(r.from_seq, r.limit)?),
            Req::CreateWallet(r) => {
                admin!("CreateWallet", r, Resp::Wallet(self.create_wallet(r).await?))
            }
            Req::SetPolicy(r) => admin!("SetPolicy", r, Resp::Policy(self.set_policy(r).await?)),
            Req::AddAsset(r) => admin!("AddAsset", r, Resp::Asset(self.add_asset(r).await?)),
            Req::AddKyt(r) => admin!("AddKyt", r, Resp::Kyt(self.change_kyt(r, true).await?)),
            Req::RemoveKyt(r) => {
                admin!("RemoveKyt", r, Resp::Kyt(self.change_kyt(r, false).await?))
            }
            Req::IssueSession(r) => {
                admin!("IssueSession", r, Resp::Session(self.issue_session(r).await?))
            }
            Req::ImportKyt(r) => {
                admin!("ImportKyt", r, Resp::KytImport(self.import_kyt(r).await?))
            }
            Req::DecideApproval(r) => {
                admin!("DecideApproval", r, Resp::Approval(self.decide_approval(&r).await?))
            }
            Req::RevokeSession(r) => {
                admin!("RevokeSession", r, Resp::Session(self.revoke_session(&r.session_id).await?))
            }
            Req::FreezeWallet(r) => {
                admin!("FreezeWallet", r, Resp::Wallet(self.set_frozen(&r.wallet_id, true).await?))
            }
            Req::UnfreezeWallet(r) => admin!(
                "UnfreezeWallet",
                r,
                Resp::Wallet(self.set_frozen(&r.wallet_id, false).await?)
            ),
            Req::RemoveAdmin(r) => {
                admin!("RemoveAdmin", r, Resp::Admin(self.remove_admin(&r.public_key).await?))
            }
            Req::AddAdmin(r) => {
                let _admin = self.admin.lock().await;
                // The first admin registers itself (self-signed); later ones need an admin.
                let self_signed = r.auth.as_ref().is_some_and(|a| a.public_key == r.public_key);
                self.authorize("AddAdmin", &r, self_signed).await?;
                let admin = r
                    .auth
                    .as_ref()
                    .map(|a| hex::encode(&a.public_key[..a.public_key.len().min(8)]))
                    .unwrap_or_default();
                let resp = Resp::Admin(self.add_admin(r).await?);
                self.audit_admin("AddAdmin", &admin, &resp);
                resp
            }
        })
    }

    /// Audits an admin change (made durable at once: admin changes are rare).
    fn audit_admin(&self, rpc: &str, admin: &str, resp: &Resp) {
        let (wallet, session, what) = match resp {
            Resp::Wallet(w) => (
                w.wallet_id.clone(),
                String::new(),
                format!(
                    "wallet {} {}{}",
                    w.wallet_id,
                    w.address,
                    if w.frozen { " frozen" } else { "" }
                ),
            ),
            Resp::Policy(p) => (
                p.wallet_id.clone(),
                String::new(),
                format!(
                    "policy v{}, document sha256 {}",
                    p.version,
                    hex::encode(Sha256::digest(p.document.as_bytes()))
                ),
            ),
            // Staged chunks are not changes; only the commit is.
            Resp::KytImport(k) if !k.committed => return,
            Resp::KytImport(k) => (
                String::new(),
                String::new(),
                format!("import: {} added, {} removed, {} listed", k.added, k.removed, k.total),
            ),
            Resp::Approval(a) => (
                a.wallet_id.clone(),
                a.session_id.clone(),
                format!(
                    "hold {} {}: {} {} to {} ({}){}",
                    a.approval_id,
                    a.state,
                    a.amount,
                    a.asset_symbol,
                    a.pay_to,
                    a.reason,
                    if a.note.is_empty() { String::new() } else { format!(", note: {}", a.note) }
                ),
            ),
            Resp::Asset(a) => (
                String::new(),
                String::new(),
                format!(
                    "asset {} {} on {} ({:?} v{})",
                    a.symbol, a.address, a.network, a.name, a.version
                ),
            ),
            Resp::Kyt(k) => {
                (String::new(), String::new(), format!("{} changed, {} listed", k.changed, k.total))
            }
            Resp::Session(s) => (
                s.wallet_id.clone(),
                s.session_id.clone(),
                format!(
                    "cap {}, spent {}, expires {}{}",
                    s.cap,
                    s.spent,
                    s.expires_at,
                    if s.revoked { ", revoked" } else { "" }
                ),
            ),
            Resp::Admin(a) => {
                (String::new(), String::new(), format!("admin key {}", hex::encode(&a.public_key)))
            }
            _ => (String::new(), String::new(), String::new()),
        };
        let r = AuditRecord {
            at_ms: (self.clock)(),
            kind: "admin".into(),
            session,
            wallet,
            reason: rpc.into(),
            detail: format!("{what} (by admin {admin})"),
            ..Default::default()
        };
        if let Err(e) = self.audit.append(r).and_then(|()| self.audit.sync()) {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    fn audit_head(&self, challenge: &[u8]) -> gw::AuditHead {
        use ed25519_dalek::Signer as _;
        let (count, hash) = self.audit.head();
        gw::AuditHead {
            count,
            hash: hash.to_vec(),
            signature: self
                .audit_key
                .sign(&head_message(count, &hash, challenge))
                .to_bytes()
                .to_vec(),
            public_key: self.audit_key.verifying_key().to_bytes().to_vec(),
        }
    }

    fn list_audit(&self, from: u64, limit: u64) -> Result<gw::ListAuditResponse> {
        let limit = if limit == 0 { 1000 } else { limit.min(1000) };
        let (records, total) = self.audit.read(from, limit).map_err(|e| {
            tracing::error!(error = %e, "audit log check failed");
            Failure::new(ErrorCode::FailedPrecondition, "AUDIT_TAMPERED", e.to_string())
        })?;
        Ok(gw::ListAuditResponse { records, total })
    }

    /// Verifies an admin's signature over a state-changing request, its freshness, and that its
    /// timestamp is newer than the last one accepted from that admin (persisted, so a request
    /// cannot be replayed after a restart either). `bootstrap` allows a self-signed request from
    /// an unknown key when the enclave has no admin yet. Called with the admin lock held.
    async fn authorize<R: AdminSigned>(&self, rpc: &str, req: &R, bootstrap: bool) -> Result<()> {
        let deny = |reason: &str, message: &str| Failure::unauthenticated(reason, message);
        let auth = req.auth().ok_or_else(|| {
            deny(
                "ADMIN_SIGNATURE_REQUIRED",
                "state-changing requests must be signed by an admin key (see walletctl init)",
            )
        })?;
        let pk: [u8; 32] = auth
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| deny("BAD_ADMIN_SIGNATURE", "admin public key must be 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&pk)
            .map_err(|_| deny("BAD_ADMIN_SIGNATURE", "admin public key is not an Ed25519 point"))?;
        if !(16..=64).contains(&auth.nonce.len()) {
            return Err(Failure::invalid("INVALID_NONCE", "admin nonce must be 16 to 64 bytes"));
        }
        let last_ts =
            {
                let inner = self.lock();
                // One clock for all admins: requests from different admins cannot be reordered.
                let newest = inner.admins.values().map(|a| a.last_ts).max();
                let fresh_enclave =
                    inner.admins.is_empty() && inner.wallets.is_empty() && self.audit.head().0 == 0;
                match (inner.admins.contains_key(&pk), newest) {
                    (true, Some(newest)) => Some(newest),
                    (false, None) if bootstrap && fresh_enclave => None,
                    (false, None) if fresh_enclave => {
                        return Err(deny(
                            "NO_ADMIN",
                            "this enclave has no admin yet: register one with walletctl init",
                        ))
                    }
                    (false, None) => return Err(deny(
                        "NO_ADMIN",
                        "this enclave has state but no admin; refusing to let a new key take over",
                    )),
                    _ => {
                        return Err(deny(
                            "UNKNOWN_ADMIN",
                            "the signing key is not an admin of this enclave",
                        ))
                    }
                }
            };
        let sig = Signature::from_slice(&auth.signature)
            .map_err(|_| deny("BAD_ADMIN_SIGNATURE", "admin signature is not 64 bytes"))?;
        let enclave_id = self.audit_key.verifying_key().to_bytes();
        let msg =
            admin_message(&enclave_id, rpc, auth.timestamp_ms, &auth.nonce, &req.unsigned_bytes());
        key.verify_strict(&msg, &sig).map_err(|_| {
            deny("BAD_ADMIN_SIGNATURE", "admin signature does not verify over this request")
        })?;
        let now_ms = (self.clock)();
        if now_ms.abs_diff(auth.timestamp_ms) > FRESHNESS_WINDOW_MS {
            return Err(deny(
                "STALE_ADMIN_REQUEST",
                "admin request timestamp is more than 120 s from the enclave clock",
            ));
        }
        if let Some(last) = last_ts {
            if auth.timestamp_ms <= last {
                return Err(deny(
                    "REPLAYED_ADMIN_REQUEST",
                    "admin request is not newer than the last admin request this enclave accepted",
                ));
            }
            let record = {
                let mut inner = self.lock();
                let a =
                    inner.admins.get_mut(&pk).ok_or_else(|| Failure::internal("admin vanished"))?;
                a.last_ts = auth.timestamp_ms;
                a.clone()
            };
            self.persist(vec![Op::Put(Table::Admins, pk.to_vec(), json(&record))]).await?;
        }
        tracing::info!(rpc, admin = %hex::encode(&pk[..8]), "admin request authorized");
        Ok(())
    }

    async fn add_admin(&self, r: gw::AddAdminRequest) -> Result<gw::Admin> {
        let pk = ed25519_key(&r.public_key, "admin public key")?.to_bytes();
        if self.lock().admins.contains_key(&pk) {
            return Err(Failure::new(
                ErrorCode::AlreadyExists,
                "ALREADY_EXISTS",
                "that key is already an admin",
            ));
        }
        // A self-registered first admin starts at the timestamp it registered with.
        let last_ts =
            r.auth.as_ref().filter(|a| a.public_key == r.public_key).map_or(0, |a| a.timestamp_ms);
        let record =
            AdminRecord { label: r.label.trim().to_owned(), added_at: self.now_s(), last_ts };
        self.persist(vec![Op::Put(Table::Admins, pk.to_vec(), json(&record))]).await?;
        tracing::info!(admin = %hex::encode(&pk[..8]), "admin added");
        let out = admin_proto(&pk, &record);
        self.lock().admins.insert(pk, record);
        Ok(out)
    }

    async fn remove_admin(&self, public_key: &[u8]) -> Result<gw::Admin> {
        let pk: [u8; 32] = public_key.try_into().map_err(|_| {
            Failure::invalid("INVALID_PUBLIC_KEY", "admin public key must be 32 bytes")
        })?;
        let record = {
            let inner = self.lock();
            let record = inner
                .admins
                .get(&pk)
                .cloned()
                .ok_or_else(|| Failure::not_found("that key is not an admin"))?;
            if inner.admins.len() == 1 {
                return Err(Failure::new(
                    ErrorCode::FailedPrecondition,
                    "LAST_ADMIN",
                    "cannot remove the last admin: add another one first",
                ));
            }
            record
        };
        self.persist(vec![Op::Delete(Table::Admins, pk.to_vec())]).await?;
        self.lock().admins.remove(&pk);
        tracing::info!(admin = %hex::encode(&pk[..8]), "admin removed");
        Ok(admin_proto(&pk, &record))
    }

    fn list_admins(&self) -> gw::ListAdminsResponse {
        let inner = self.lock();
        let mut admins: Vec<_> = inner.admins.iter().map(|(pk, r)| admin_proto(pk, r)).collect();
        admins.sort_by_key(|a| (a.added_at, a.public_key.clone()));
        gw::ListAdminsResponse { admins }
    }

    // ---- payments ----------------------------------------------------------------------------

    /// The payment path (module docs).
    ///
    /// # Errors
    /// A [`Failure`]; nothing is charged unless a signature may still be released.
    pub async fn sign_payment(&self, r: gw::SignPaymentRequest) -> Result<gw::SignPaymentResponse> {
        if !valid_idempotency_key(&r.idempotency_key) {
            return Err(Failure::invalid(
                "INVALID_IDEMPOTENCY_KEY",
                "idempotency_key must be 1-128 characters of [A-Za-z0-9_.:-]",
            ));
        }
        if !(16..=64).contains(&r.request_nonce.len()) {
            return Err(Failure::invalid("INVALID_NONCE", "request_nonce must be 16 to 64 bytes"));
        }
        let preferred_asset = if r.preferred_asset.is_empty() {
            None
        } else {
            Some(parse_address(&r.preferred_asset).map_err(|e| {
                Failure::invalid("INVALID_ARGUMENT", format!("preferred_asset: {e}"))
            })?)
        };
        // 1. Authenticate: who signed, untouched, fresh.
        let session_key = self.lock().sessions.get(&r.session_id).map(|s| s.key);
        let Some(session_key) = session_key else {
            return Err(Failure::unauthenticated("UNKNOWN_SESSION", "unknown session"));
        };
        let fields = SignPaymentFields {
            session_id: &r.session_id,
            payment_required: &r.payment_required,
            preferred_network: &r.preferred_network,
            preferred_asset: &r.preferred_asset,
            idempotency_key: &r.idempotency_key,
            timestamp_ms: r.timestamp_ms,
            request_nonce: &r.request_nonce,
        };
        let sig = Signature::from_slice(&r.signature).map_err(|_| {
            Failure::unauthenticated("BAD_SIGNATURE", "request signature is not 64 bytes")
        })?;
        session_key.verify_strict(&sign_payment_message(&fields), &sig).map_err(|_| {
            Failure::unauthenticated(
                "BAD_SIGNATURE",
                "request signature does not verify with the session key",
            )
        })?;
        let now_ms = (self.clock)();
        if now_ms.abs_diff(r.timestamp_ms) > FRESHNESS_WINDOW_MS {
            return Err(Failure::unauthenticated(
                "STALE_REQUEST",
                format!(
                    "request timestamp is more than {} s from the enclave clock",
                    FRESHNESS_WINDOW_MS / 1000
                ),
            ));
        }
        // A signed request is used once, whatever its outcome: a denied request replayed after
        // a policy change must not be signed.
        {
            let mut inner = self.lock();
            let nonce_key = (r.session_id.clone(), r.request_nonce.clone());
            if inner.replay.contains(&nonce_key) {
                return Err(Failure::unauthenticated(
                    "REPLAYED_REQUEST",
                    "this signed request was already used",
                ));
            }
            Self::remember_nonce(&mut inner, nonce_key, now_ms);
        }
        // 2. Parse what the server asked for.
        let required = decode_payment_required(&r.payment_required)
            .map_err(|e| Failure::invalid(e.code(), e.to_string()))?;
        let request_hash: [u8; 32] = Sha256::new()
            .chain_update(b"idem/v1\0")
            .chain_update((r.payment_required.len() as u64).to_be_bytes())
            .chain_update(r.payment_required.as_bytes())
            .chain_update((r.preferred_network.len() as u64).to_be_bytes())
            .chain_update(r.preferred_network.as_bytes())
            .chain_update(r.preferred_asset.as_bytes())
            .finalize()
            .into();
        let idem_key = (r.session_id.clone(), r.idempotency_key.clone());

        // Decide and reserve, atomically.
        let mut held: Option<ApprovalRecord> = None;
        let reserved = loop {
            let step = {
                let mut inner = self.lock();
                inner.prune_idem(now_ms, self.idem_ttl_ms.load(Ordering::Relaxed));
                let waiting = match inner.idem.get(&idem_key) {
                    None => None,
                    Some(
                        Idem::Done { hash, .. }
                        | Idem::InFlight { hash, .. }
                        | Idem::Failed { hash, .. }
                        | Idem::Withheld { hash, .. }
                        | Idem::Held { hash, .. },
                    ) if *hash != request_hash => {
                        return Err(Failure::new(
                            ErrorCode::FailedPrecondition,
                            "IDEMPOTENCY_CONFLICT",
                            "idempotency key was already used for a different request",
                        ));
                    }
                    Some(Idem::Done { record, .. }) => {
                        // A replay is a release too: revocation and freeze apply to it.
                        let record = Arc::clone(record);
                        Self::check_release(&inner, &r.session_id, &record.wallet_id)?;
                        let mut resp = record.response();
                        resp.replayed = true;
                        return Ok(resp);
                    }
                    Some(Idem::Withheld { reason, .. }) => {
                        return Err(Failure::new(ErrorCode::Denied, reason, "this payment's signature was withheld (revoked or frozen in flight) and is never released"));
                    }
                    Some(Idem::Failed { .. }) => {
                        return Err(Failure::new(
                            ErrorCode::Aborted,
                            "IDEMPOTENCY_KEY_FAILED",
                            "an earlier attempt with this idempotency key failed after its spend may have been recorded; use a new key",
                        ));
                    }
                    Some(Idem::Held { approval_id: id, .. }) => {
                        let hold = inner
                            .approvals
                            .get(id)
                            .ok_or_else(|| Failure::internal("approval record missing"))?;
                        Self::check_hold(hold, now_ms)?;
                        held = Some(hold.clone());
                        None
                    }
                    Some(Idem::InFlight { done, .. }) => Some(done.clone()),
                };
                match waiting {
                    Some(rx) => Step::Wait(rx),
                    None => match Self::reserve(
                        &mut inner,
                        &r,
                        &required,
                        preferred_asset.as_ref(),
                        now_ms,
                        request_hash,
                        held.as_ref(),
                    ) {
                        Ok(Reservation::Sign(reserved)) => Step::Sign(reserved),
                        Ok(Reservation::Hold(hold)) => Step::Hold(hold),
                        Err(f) => {
                            if f.code == ErrorCode::Denied {
                                let wallet = inner
                                    .sessions
                                    .get(&r.session_id)
                                    .map(|s| s.record.wallet_id.clone())
                                    .unwrap_or_default();
                                drop(inner);
                                let rec = AuditRecord {
                                    at_ms: now_ms,
                                    kind: "deny".into(),
                                    session: r.session_id.clone(),
                                    wallet,
                                    reason: f.reason.clone(),
                                    detail: f.message.clone(),
                                    ..Default::default()
                                };
                                if let Err(e) = self.audit.append(rec) {
                                    tracing::error!(error = %e, "audit append failed");
                                }
                            }
                            return Err(f);
                        }
                    },
                }
            };
            match step {
                Step::Sign(reserved) => break reserved,
                Step::Hold(hold) => return Err(self.hold(hold).await),
                Step::Wait(mut rx) => {
                    // The same request is in flight under this key: wait for it, then look again.
                    if rx.wait_for(|d| *d).await.is_err() {
                        return Err(Failure::new(
                            ErrorCode::Aborted,
                            "IDEMPOTENCY_IN_PROGRESS",
                            "the earlier attempt with this key did not finish; retry",
                        ));
                    }
                }
            }
        };
        let Reserved { approval, key, domain, wallet_id, done_tx } = reserved;

        // 3. Sign (outside the lock).
        let released = self
            .sign_reserved(
                &r,
                &required,
                &approval,
                &key,
                &domain,
                &wallet_id,
                request_hash,
                now_ms,
            )
            .await;
        let outcome = match released {
            Ok(record) => {
                // 5. Revocation and freeze are final: re-check before release.
                let check = Self::check_release(&self.lock(), &r.session_id, &wallet_id);
                match check {
                    Err(denial) => {
                        // Withheld for good, durably: a retry after a restart (or an unfreeze)
                        // must not release it either.
                        let entry = Entry::Withheld {
                            session_id: r.session_id.clone(),
                            idempotency_key: r.idempotency_key.clone(),
                            request_hash: hex::encode(request_hash),
                            reason: denial.reason.clone(),
                            at_ms: now_ms,
                        };
                        let durable = match self.journal.append(&json(&entry)) {
                            Ok(()) => self.journal.durable().await.map_err(Failure::from),
                            Err(e) => Err(Failure::from(e)),
                        };
                        let mut inner = self.lock();
                        inner.settle(
                            idem_key,
                            if durable.is_ok() {
                                Idem::Withheld {
                                    hash: request_hash,
                                    reason: denial.reason.clone(),
                                    at_ms: now_ms,
                                }
                            } else {
                                Idem::Failed { hash: request_hash, at_ms: now_ms }
                            },
                        );
                        tracing::info!(session = %r.session_id, reason = %denial.reason, "signature withheld");
                        let rec = AuditRecord {
                            at_ms: (self.clock)(),
                            kind: "withheld".into(),
                            session: r.session_id.clone(),
                            wallet: wallet_id.clone(),
                            reason: denial.reason.clone(),
                            detail: format!("idempotency key {}", r.idempotency_key),
                            ..Default::default()
                        };
                        if let Err(e) = self.audit.append(rec).and_then(|()| self.audit.sync()) {
                            tracing::error!(error = %e, "audit append failed");
                        }
                        Err(Failure { message: "revoked or frozen while the payment was in flight; signature withheld".into(), ..denial })
                    }
                    Ok(()) => {
                        let resp = record.response();
                        self.lock().settle(
                            idem_key,
                            Idem::Done { hash: request_hash, record: Arc::new(record) },
                        );
                        if let Some(hold) = &held {
                            self.mark_hold_used(&hold.id).await;
                        }
                        self.signed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(session = %r.session_id, network = %resp.network, amount = %resp.amount, "payment signed");
                        Ok(resp)
                    }
                }
            }
            Err(f) => {
                // The reservation stays and the key is spent: the record may be on disk. Fail
                // closed.
                self.lock().settle(idem_key, Idem::Failed { hash: request_hash, at_ms: now_ms });
                Err(f)
            }
        };
        let _ = done_tx.send(true);
        outcome
    }

    /// Whether the retry of a held payment may go ahead: only once approved, before expiry.
    fn check_hold(hold: &ApprovalRecord, now_ms: u64) -> Result<()> {
        let denied =
            |reason: &str, message: String| Failure::new(ErrorCode::Denied, reason, message);
        if hold.expired(now_ms) {
            return Err(denied(
                "APPROVAL_EXPIRED",
                format!(
                    "the hold {} expired before it was {}",
                    hold.id,
                    if hold.state == HoldState::Pending { "decided" } else { "used" }
                ),
            ));
        }
        match hold.state {
            HoldState::Approved => Ok(()),
            HoldState::Pending => Err(Self::pending(hold, now_ms)),
            HoldState::Denied => Err(denied(
                "APPROVAL_DENIED",
                format!(
                    "a human denied this payment (hold {}){}",
                    hold.id,
                    if hold.note.is_empty() { String::new() } else { format!(": {}", hold.note) }
                ),
            )),
            HoldState::Used => Err(Failure::internal("approved hold already used")),
        }
    }

    fn pending(hold: &ApprovalRecord, now_ms: u64) -> Failure {
        Failure::new(
            ErrorCode::FailedPrecondition,
            "APPROVAL_PENDING",
            format!(
                "held for human approval as {} ({}); retry with the same idempotency key once it is approved (walletctl approvals approve {}); the hold expires in {} s",
                hold.id,
                hold.reason,
                hold.id,
                hold.expires_ms.saturating_sub(now_ms) / 1000
            ),
        )
    }

    /// Makes a new hold durable and audits it. Returns the answer for the agent.
    async fn hold(&self, hold: ApprovalRecord) -> Failure {
        let key = (hold.session_id.clone(), hold.idempotency_key.clone());
        if let Err(e) = self
            .persist(vec![Op::Put(Table::Approvals, hold.id.as_bytes().to_vec(), json(&hold))])
            .await
        {
            let mut inner = self.lock();
            inner.approvals.remove(&hold.id);
            if matches!(inner.idem.get(&key), Some(Idem::Held { approval_id, .. }) if *approval_id == hold.id)
            {
                inner.idem.remove(&key);
            }
            return Failure::from(e);
        }
        tracing::info!(session = %hold.session_id, approval = %hold.id, "payment held for approval");
        let rec = AuditRecord {
            at_ms: hold.created_ms,
            kind: "hold".into(),
            session: hold.session_id.clone(),
            wallet: hold.wallet_id.clone(),
            reason: "APPROVAL_PENDING".into(),
            detail: format!(
                "{} {} {} to {} on {}: {}",
                hold.id,
                hold.amount,
                hold.asset_symbol,
                hold.pay_to.to_checksum(None),
                hold.network,
                hold.reason
            ),
            ..Default::default()
        };
        if let Err(e) = self.audit.append(rec) {
            tracing::error!(error = %e, "audit append failed");
        }
        Self::pending(&hold, hold.created_ms)
    }

    /// Marks an approved hold as used once its payment was released.
    async fn mark_hold_used(&self, id: &str) {
        let record = {
            let mut inner = self.lock();
            let Some(a) = inner.approvals.get_mut(id) else { return };
            a.state = HoldState::Used;
            a.clone()
        };
        // The spend journal already says the payment was released; this is bookkeeping.
        if let Err(e) = self
            .persist(vec![Op::Put(Table::Approvals, id.as_bytes().to_vec(), json(&record))])
            .await
        {
            tracing::error!(error = %e, approval = %id, "could not record the hold as used");
        }
    }

    fn list_approvals(&self, r: &gw::ListApprovalsRequest) -> gw::ListApprovalsResponse {
        let now_ms = (self.clock)();
        let inner = self.lock();
        let mut approvals: Vec<_> = inner
            .approvals
            .values()
            .filter(|a| r.wallet_id.is_empty() || a.wallet_id == r.wallet_id)
            .filter(|a| r.all || (a.state == HoldState::Pending && !a.expired(now_ms)))
            .map(|a| approval_proto(a, now_ms))
            .collect();
        approvals.sort_by_key(|a| (a.created_at_ms, a.approval_id.clone()));
        gw::ListApprovalsResponse { approvals }
    }

    async fn decide_approval(&self, r: &gw::DecideApprovalRequest) -> Result<gw::Approval> {
        let now_ms = (self.clock)();
        if r.note.len() > 200 {
            return Err(Failure::invalid("INVALID_ARGUMENT", "note may be at most 200 bytes"));
        }
        let by = r
            .auth
            .as_ref()
            .map(|a| hex::encode(&a.public_key[..a.public_key.len().min(8)]))
            .unwrap_or_default();
        let record = {
            let inner = self.lock();
            let a = inner.approvals.get(&r.approval_id).ok_or_else(|| {
                Failure::not_found(format!(
                    "no hold {:?} (see walletctl approvals list)",
                    r.approval_id
                ))
            })?;
            if a.expired(now_ms) {
                return Err(Failure::new(
                    ErrorCode::FailedPrecondition,
                    "APPROVAL_EXPIRED",
                    format!("hold {} expired; the agent must ask again", a.id),
                ));
            }
            if a.state != HoldState::Pending {
                return Err(Failure::new(
                    ErrorCode::FailedPrecondition,
                    "APPROVAL_DECIDED",
                    format!("hold {} was already decided ({})", a.id, a.state_name(now_ms)),
                ));
            }
            let mut a = a.clone();
            a.state = if r.approve { HoldState::Approved } else { HoldState::Denied };
            a.decided_by = by;
            a.note = r.note.trim().to_owned();
            // An approval gives the agent as long to retry as the hold had to be decided.
            a.expires_ms = now_ms.saturating_add(a.hold_ms);
            a
        };
        self.persist(vec![Op::Put(Table::Approvals, record.id.as_bytes().to_vec(), json(&record))])
            .await?;
        tracing::info!(approval = %record.id, approve = r.approve, "hold decided");
        let out = approval_proto(&record, now_ms);
        self.lock().approvals.insert(record.id.clone(), record);
        Ok(out)
    }

    /// Whether a signature may leave now: session not revoked or expired, wallet not frozen.
    fn check_release(inner: &Inner, session_id: &str, wallet_id: &str) -> Result<()> {
        let session = inner
            .sessions
            .get(session_id)
            .ok_or_else(|| Failure::unauthenticated("UNKNOWN_SESSION", "unknown session"))?;
        if session.record.revoked {
            return Err(Failure::new(
                ErrorCode::Denied,
                rules::DenyReason::SessionRevoked.code(),
                "the session was revoked",
            ));
        }
        if inner.wallets.get(wallet_id).is_none_or(|w| w.record.frozen) {
            return Err(Failure::new(
                ErrorCode::Denied,
                rules::DenyReason::WalletFrozen.code(),
                "the wallet is frozen",
            ));
        }
        Ok(())
    }

    /// Evaluates policy and reserves the charge (or holds the payment for approval). Called with
    /// the state lock held. `approval` is the id of an approved hold this request is the retry of.
    #[allow(clippy::too_many_lines)]
    fn reserve(
        inner: &mut Inner,
        r: &gw::SignPaymentRequest,
        required: &PaymentRequired,
        preferred_asset: Option<&Address>,
        now_ms: u64,
        request_hash: [u8; 32],
        approval: Option<&ApprovalRecord>,
    ) -> Result<Reservation> {
        let Inner { sessions, wallets, policies, kyt, registry, wallet_history, .. } = &mut *inner;
        let session = sessions
            .get_mut(&r.session_id)
            .ok_or_else(|| Failure::unauthenticated("UNKNOWN_SESSION", "unknown session"))?;
        let wallet = wallets
            .get(&session.record.wallet_id)
            .ok_or_else(|| Failure::internal("session's wallet is missing"))?;
        let policy = policies.get(&wallet.record.id);
        let SessionEntry { record, spent, history, .. } = session;
        let ctx = Context {
            policy,
            wallet_frozen: wallet.record.frozen,
            session: SessionState {
                cap: record.cap,
                spent: *spent,
                expires_at: record.expires_at,
                revoked: record.revoked,
                scope: &record.scope,
            },
            kyt: &*kyt,
            registry: &*registry,
            now: now_ms / 1000,
            approved: approval.is_some(),
        };
        let preferred_network =
            (!r.preferred_network.is_empty()).then_some(r.preferred_network.as_str());
        if !wallet_history.contains_key(&wallet.record.id) {
            wallet_history.insert(wallet.record.id.clone(), WalletHistory::default());
        }
        let wallet_spends = wallet_history
            .get_mut(&wallet.record.id)
            .ok_or_else(|| Failure::internal("wallet history missing"))?;
        let mut ledger = ScopeLedger { wallet: wallet_spends, session: history };
        // The retry of an approved hold may sign only the option the human saw.
        let only_held;
        let options = match approval {
            Some(hold) => {
                let option = required
                    .accepts
                    .get(hold.accepted_index)
                    .ok_or_else(|| Failure::internal("held option missing"))?;
                only_held = PaymentRequired { accepts: vec![option.clone()], ..required.clone() };
                &only_held
            }
            None => required,
        };
        let mut approved = rules::choose(
            &ctx,
            &mut ledger,
            options,
            preferred_network,
            preferred_asset,
        )
        .inspect_err(|d| {
            tracing::debug!(session = %r.session_id, reason = d.reason.code(), "payment denied");
        })?;
        if let Some(hold) = approval {
            approved.index = hold.accepted_index;
        }
        let wallet_id = wallet.record.id.clone();
        if let Some(reason) = approved.hold.clone() {
            let hold_ms = policy.map_or(0, |p| p.approval.expires_seconds).saturating_mul(1000);
            let req = &approved.requirement;
            let hold = ApprovalRecord {
                id: random_id("ap_"),
                wallet_id,
                session_id: r.session_id.clone(),
                idempotency_key: r.idempotency_key.clone(),
                request_hash: hex::encode(request_hash),
                network: req.network.clone(),
                asset: req.asset,
                asset_symbol: approved.asset.symbol.clone(),
                pay_to: req.pay_to,
                amount: format_decimal(req.amount, approved.asset.decimals),
                reason,
                state: HoldState::Pending,
                created_ms: now_ms,
                expires_ms: now_ms.saturating_add(hold_ms),
                hold_ms,
                decided_by: String::new(),
                note: String::new(),
                accepted_index: approved.index,
            };
            inner.idem.insert(
                (r.session_id.clone(), r.idempotency_key.clone()),
                Idem::Held { hash: request_hash, approval_id: hold.id.clone() },
            );
            inner.approvals.insert(hold.id.clone(), hold.clone());
            return Ok(Reservation::Hold(hold));
        }
        let key = Arc::clone(&wallet.key);
        let domain = *registry
            .domains
            .get(&(approved.asset.network.clone(), approved.asset.address))
            .ok_or_else(|| Failure::internal("registry domain missing"))?;
        // Reserve: the session total, and the windows of the wallet, the session and the payee.
        *spent = spent
            .checked_add(approved.charge)
            .ok_or_else(|| Failure::internal("spend overflow"))?;
        let now_s = now_ms / 1000;
        ledger.session.record(now_s, approved.charge);
        ledger.wallet.record(approved.requirement.pay_to, now_s, approved.charge);
        let (done_tx, rx) = watch::channel(false);
        inner.idem.insert(
            (r.session_id.clone(), r.idempotency_key.clone()),
            Idem::InFlight { hash: request_hash, done: rx },
        );
        Ok(Reservation::Sign(Reserved { approval: approved, key, domain, wallet_id, done_tx }))
    }

    fn remember_nonce(inner: &mut Inner, key: (String, Vec<u8>), now_ms: u64) {
        // A request is accepted until `timestamp + window`, and `timestamp <= now + window`.
        while inner.replay_order.front().is_some_and(|(exp, _)| *exp <= now_ms) {
            if let Some((_, old)) = inner.replay_order.pop_front() {
                inner.replay.remove(&old);
            }
        }
        inner.replay.insert(key.clone());
        inner.replay_order.push_back((now_ms.saturating_add(2 * FRESHNESS_WINDOW_MS), key));
    }

    #[allow(clippy::too_many_arguments)]
    async fn sign_reserved(
        &self,
        r: &gw::SignPaymentRequest,
        required: &PaymentRequired,
        approval: &rules::Approval,
        key: &WalletKey,
        domain: &B256,
        wallet_id: &str,
        request_hash: [u8; 32],
        now_ms: u64,
    ) -> Result<SpendRecord> {
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let req = &approval.requirement;
        let auth = Authorization {
            from: key.address(),
            to: req.pay_to,
            value: req.amount,
            valid_after: 0,
            valid_before: approval.valid_before,
            nonce,
        };
        let digest = auth.signing_hash(domain);
        let signature = key.sign_digest(&digest).map_err(|e| Failure::internal(e.to_string()))?;
        let payload_json = payment_payload_json(
            required,
            &required.accepts[approval.index],
            &auth,
            &signature,
            &payment_id(&r.session_id, &r.idempotency_key),
        );
        let (spent, cap) = {
            let inner = self.lock();
            inner
                .sessions
                .get(&r.session_id)
                .map_or((U256::ZERO, U256::ZERO), |s| (s.spent, s.record.cap))
        };
        let record = SpendRecord {
            seq: self.spend_seq.fetch_add(1, Ordering::SeqCst),
            session_id: r.session_id.clone(),
            wallet_id: wallet_id.to_owned(),
            charge: approval.charge,
            amount: req.amount,
            network: req.network.clone(),
            asset: req.asset,
            pay_to: req.pay_to,
            valid_before: approval.valid_before,
            at_ms: now_ms,
            idempotency_key: r.idempotency_key.clone(),
            request_hash: hex::encode(request_hash),
            payload_json,
            accepted_index: u32::try_from(approval.index).unwrap_or(u32::MAX),
            charged: format_decimal(req.amount, approval.asset.decimals),
            asset_symbol: approval.asset.symbol.clone(),
            session_spent: format_units(spent),
            session_remaining: format_units(cap.saturating_sub(spent)),
            payer: key.address().to_checksum(None),
        };
        // Audited in the same durability round as the spend.
        self.audit
            .append(AuditRecord {
                at_ms: now_ms,
                kind: "payment".into(),
                session: record.session_id.clone(),
                wallet: record.wallet_id.clone(),
                detail: format!(
                    "{} {} to {} on {}, valid before {}, nonce 0x{}",
                    record.charged,
                    record.asset_symbol,
                    record.pay_to.to_checksum(None),
                    record.network,
                    record.valid_before,
                    hex::encode(nonce)
                ),
                ..Default::default()
            })
            .map_err(|e| Failure::internal(format!("audit: {e}")))?;
        // 4. Durable before release.
        let entry = Entry::Spend(Box::new(record));
        self.journal.append(&json(&entry))?;
        self.journal.durable().await?;
        let Entry::Spend(record) = entry else { unreachable!("constructed as a spend above") };
        Ok(*record)
    }

    // ---- admin -------------------------------------------------------------------------------

    async fn create_wallet(&self, r: gw::CreateWalletRequest) -> Result<gw::Wallet> {
        let key = WalletKey::generate(&mut NsmRng(self.nsm.as_ref()));
        let record = WalletRecord {
            id: random_id("w_"),
            address: key.address(),
            label: r.label.trim().to_owned(),
            frozen: false,
            created_at: self.now_s(),
        };
        self.persist(vec![
            Op::Put(Table::Keys, record.id.as_bytes().to_vec(), key.secret_bytes()),
            Op::Put(Table::Wallets, record.id.as_bytes().to_vec(), json(&record)),
        ])
        .await?;
        tracing::info!(wallet = %record.id, address = %record.address, "wallet created");
        let out = wallet_proto(&record);
        self.lock().wallets.insert(record.id.clone(), WalletEntry { record, key: Arc::new(key) });
        Ok(out)
    }

    fn list_wallets(&self) -> gw::ListWalletsResponse {
        let inner = self.lock();
        let mut wallets: Vec<_> = inner.wallets.values().map(|w| wallet_proto(&w.record)).collect();
        wallets.sort_by_key(|w| (w.created_at, w.wallet_id.clone()));
        gw::ListWalletsResponse { wallets }
    }

    async fn set_policy(&self, r: gw::SetPolicyRequest) -> Result<gw::Policy> {
        let p =
            r.policy.ok_or_else(|| Failure::invalid("INVALID_ARGUMENT", "policy is required"))?;
        let document = if p.document.trim().is_empty() {
            let max_per_payment = parse_amount(&p.max_per_payment, "max_per_payment")?;
            let networks = parse_networks(&p.networks)?;
            let assets = parse_list(&p.assets, "asset", parse_address)?;
            let max_validity_seconds = match p.max_validity_seconds {
                0 => DEFAULT_MAX_VALIDITY_SECONDS,
                s if !(MIN_VALIDITY_SECONDS..=MAX_VALIDITY_SECONDS).contains(&s) => {
                    return Err(Failure::invalid(
                        "INVALID_ARGUMENT",
                        format!("max_validity_seconds {s} must be between {MIN_VALIDITY_SECONDS} and {MAX_VALIDITY_SECONDS}"),
                    ));
                }
                s => s,
            };
            Policy::basic_document(max_per_payment, &networks, &assets, max_validity_seconds)
        } else {
            p.document
        };
        // Parsed here, in the enclave: what is enforced is what the admin signed.
        let mut policy = Policy::parse(&document)
            .map_err(|e| Failure::invalid("INVALID_POLICY", format!("policy document: {e}")))?;
        policy.version = {
            let inner = self.lock();
            if !inner.wallets.contains_key(&p.wallet_id) {
                return Err(Failure::not_found(format!("wallet {:?} does not exist", p.wallet_id)));
            }
            inner.policies.get(&p.wallet_id).map_or(1, |old| old.version + 1)
        };
        let stored = StoredPolicy { version: policy.version, document };
        self.persist(vec![Op::Put(
            Table::Policies,
            p.wallet_id.as_bytes().to_vec(),
            json(&stored),
        )])
        .await?;
        tracing::info!(wallet = %p.wallet_id, version = policy.version, "policy set");
        let out = policy_proto(&p.wallet_id, &policy);
        self.lock().policies.insert(p.wallet_id, policy);
        Ok(out)
    }

    fn get_policy(&self, wallet_id: &str) -> Result<gw::Policy> {
        let inner = self.lock();
        if !inner.wallets.contains_key(wallet_id) {
            return Err(Failure::not_found(format!("wallet {wallet_id:?} does not exist")));
        }
        inner.policies.get(wallet_id).map(|p| policy_proto(wallet_id, p)).ok_or_else(|| {
            Failure::not_found(format!(
                "wallet {wallet_id} has no policy yet: every payment is denied (NO_POLICY)"
            ))
        })
    }

    async fn add_asset(&self, r: gw::AddAssetRequest) -> Result<gw::Asset> {
        let a = r.asset.ok_or_else(|| Failure::invalid("INVALID_ARGUMENT", "asset is required"))?;
        let info = AssetInfo::new(
            a.network.trim(),
            a.address.trim(),
            &a.name,
            &a.version,
            a.decimals,
            &a.symbol,
        )
        .map_err(|e| Failure::invalid("INVALID_ARGUMENT", e))?;
        self.persist(vec![Op::Put(
            Table::Assets,
            asset_key(&info.network, &info.address),
            json(&info),
        )])
        .await?;
        tracing::info!(network = %info.network, asset = %info.address, "asset registered");
        let out = asset_proto(&info);
        self.lock().registry.insert(info);
        Ok(out)
    }

    fn list_assets(&self) -> gw::ListAssetsResponse {
        let inner = self.lock();
        let mut assets: Vec<_> = inner.registry.assets.values().map(asset_proto).collect();
        assets.sort_by(|a, b| {
            (chain_id(&a.network).unwrap_or(0), &a.address)
                .cmp(&(chain_id(&b.network).unwrap_or(0), &b.address))
        });
        gw::ListAssetsResponse { assets }
    }

    async fn change_kyt(&self, r: gw::KytRequest, add: bool) -> Result<gw::KytResponse> {
        if r.addresses.is_empty() {
            return Err(Failure::invalid("INVALID_ARGUMENT", "no addresses given"));
        }
        let addrs: HashSet<Address> =
            parse_list(&r.addresses, "address", parse_kyt_address)?.into_iter().collect();
        let changes: Vec<Address> = {
            let inner = self.lock();
            addrs.into_iter().filter(|a| inner.kyt.contains(a) != add).collect()
        };
        let ops = changes
            .iter()
            .map(|a| {
                if add {
                    Op::Put(Table::Kyt, a.to_vec(), Zeroizing::default())
                } else {
                    Op::Delete(Table::Kyt, a.to_vec())
                }
            })
            .collect::<Vec<_>>();
        if !ops.is_empty() {
            self.store.apply(ops)?;
            self.store.sync().await?;
        }
        let mut inner = self.lock();
        for a in &changes {
            if add {
                inner.kyt.insert(*a);
            } else {
                inner.kyt.remove(a);
            }
        }
        tracing::info!(
            added = add,
            changed = changes.len(),
            total = inner.kyt.len(),
            "kyt list changed"
        );
        Ok(gw::KytResponse { changed: changes.len() as u64, total: inner.kyt.len() as u64 })
    }

    fn list_kyt(&self, r: &gw::ListKytRequest) -> gw::ListKytResponse {
        let limit = if r.limit == 0 { MAX_KYT_PAGE } else { r.limit.min(MAX_KYT_PAGE) };
        let inner = self.lock();
        let mut all: Vec<&Address> = inner.kyt.iter().collect();
        all.sort_unstable();
        let addresses = all
            .into_iter()
            .skip(usize::try_from(r.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|a| a.to_checksum(None))
            .collect();
        gw::ListKytResponse { addresses, total: inner.kyt.len() as u64 }
    }

    /// Bulk KYT load: chunks accumulate under an import id (one import at a time; a new id
    /// discards an unfinished one); the committing chunk applies them in one atomic, durable
    /// batch, then swaps the in-memory list, so a payment sees the old list or the new one.
    async fn import_kyt(&self, r: gw::ImportKytRequest) -> Result<gw::ImportKytResponse> {
        if r.import_id.is_empty() || r.import_id.len() > 64 {
            return Err(Failure::invalid("INVALID_ARGUMENT", "import_id must be 1-64 bytes"));
        }
        if !r.addresses.len().is_multiple_of(20) {
            return Err(Failure::invalid(
                "INVALID_ARGUMENT",
                "addresses must be a multiple of 20 bytes",
            ));
        }
        let staged = {
            let mut staging =
                self.kyt_staging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if staging.as_ref().is_none_or(|(id, _)| *id != r.import_id) {
                if let Some((old, _)) = staging.as_ref() {
                    tracing::warn!(import = %old, "unfinished KYT import discarded");
                }
                *staging = Some((r.import_id.clone(), HashSet::new()));
            }
            let (_, set) = staging.as_mut().ok_or_else(|| Failure::internal("staging vanished"))?;
            for chunk in r.addresses.chunks_exact(20) {
                let a = Address::from_slice(chunk);
                if a == Address::ZERO {
                    return Err(Failure::invalid(
                        "INVALID_ARGUMENT",
                        "the zero address cannot be listed",
                    ));
                }
                set.insert(a);
            }
            if set.len() > MAX_KYT_ENTRIES {
                *staging = None;
                return Err(Failure::invalid(
                    "KYT_TOO_LARGE",
                    format!("a KYT list may hold at most {MAX_KYT_ENTRIES} addresses"),
                ));
            }
            if !r.commit {
                return Ok(gw::ImportKytResponse {
                    staged: set.len() as u64,
                    ..Default::default()
                });
            }
            let (_, set) = staging.take().ok_or_else(|| Failure::internal("staging vanished"))?;
            set
        };
        if r.expected_total != staged.len() as u64 {
            return Err(Failure::new(
                ErrorCode::Aborted,
                "KYT_IMPORT_INCOMPLETE",
                format!(
                    "the enclave received {} distinct addresses but the client sent {}; nothing was changed",
                    staged.len(),
                    r.expected_total
                ),
            ));
        }
        let (added, removed): (Vec<Address>, Vec<Address>) = {
            let inner = self.lock();
            let added = staged.iter().filter(|a| !inner.kyt.contains(*a)).copied().collect();
            let removed = if r.replace {
                inner.kyt.iter().filter(|a| !staged.contains(*a)).copied().collect()
            } else {
                Vec::new()
            };
            (added, removed)
        };
        let ops: Vec<Op> = added
            .iter()
            .map(|a| Op::Put(Table::Kyt, a.to_vec(), Zeroizing::default()))
            .chain(removed.iter().map(|a| Op::Delete(Table::Kyt, a.to_vec())))
            .collect();
        if !ops.is_empty() {
            self.persist(ops).await?;
        }
        let total = {
            let mut inner = self.lock();
            if r.replace {
                inner.kyt = staged;
            } else {
                inner.kyt.extend(added.iter().copied());
            }
            inner.kyt.len() as u64
        };
        tracing::info!(added = added.len(), removed = removed.len(), total, "kyt list imported");
        Ok(gw::ImportKytResponse {
            staged: r.expected_total,
            committed: true,
            added: added.len() as u64,
            removed: removed.len() as u64,
            total,
        })
    }

    async fn issue_session(&self, r: gw::IssueSessionRequest) -> Result<gw::Session> {
        let public_key = hex::encode(&r.public_key);
        session_key(&public_key)?;
        let cap = parse_amount(&r.cap, "cap")?;
        if r.ttl_seconds == 0 || r.ttl_seconds > MAX_SESSION_TTL_SECONDS {
            return Err(Failure::invalid(
                "INVALID_ARGUMENT",
                format!("ttl_seconds must be between 1 and {MAX_SESSION_TTL_SECONDS}"),
            ));
        }
        let scope = Scope {
            networks: parse_networks(&r.networks)?,
            assets: parse_list(&r.assets, "asset", parse_address)?,
            payees: parse_list(&r.payees, "payee", parse_address)?,
        };
        if !self.lock().wallets.contains_key(&r.wallet_id) {
            return Err(Failure::not_found(format!("wallet {:?} does not exist", r.wallet_id)));
        }
        let now = self.now_s();
        let record = SessionRecord {
            id: random_id("s_"),
            wallet_id: r.wallet_id,
            public_key,
            cap,
            expires_at: now.saturating_add(r.ttl_seconds),
            revoked: false,
            scope,
            created_at: now,
            label: r.label.trim().to_owned(),
        };
        self.persist(vec![Op::Put(Table::Sessions, record.id.as_bytes().to_vec(), json(&record))])
            .await?;
        tracing::info!(session = %record.id, wallet = %record.wallet_id, "session issued");
        let entry = SessionEntry {
            key: session_key(&record.public_key)?,
            record,
            spent: U256::ZERO,
            history: History::new(),
        };
        let out = session_proto(&entry);
        self.lock().sessions.insert(entry.record.id.clone(), entry);
        Ok(out)
    }

    fn list_sessions(&self, wallet_id: &str) -> gw::ListSessionsResponse {
        let inner = self.lock();
        let mut sessions: Vec<_> = inner
            .sessions
            .values()
            .filter(|s| wallet_id.is_empty() || s.record.wallet_id == wallet_id)
            .map(session_proto)
            .collect();
        sessions.sort_by_key(|s| (s.created_at, s.session_id.clone()));
        gw::ListSessionsResponse { sessions }
    }

    /// The kill switch. Effective in memory before it is made durable and before it returns:
    /// every payment in flight re-checks it before release.
    async fn set_frozen(&self, wallet_id: &str, frozen: bool) -> Result<gw::Wallet> {
        // Freezing takes effect in memory at once (before it is durable: fail safe); unfreezing
        // only once it is durable.
        let mut record =
            self.lock().wallets.get(wallet_id).map(|w| w.record.clone()).ok_or_else(|| {
                Failure::not_found(format!("wallet {wallet_id:?} does not exist"))
            })?;
        record.frozen = frozen;
        if frozen {
            if let Some(w) = self.lock().wallets.get_mut(wallet_id) {
                w.record.frozen = true;
            }
        }
        self.persist(vec![Op::Put(Table::Wallets, record.id.as_bytes().to_vec(), json(&record))])
            .await?;
        if !frozen {
            if let Some(w) = self.lock().wallets.get_mut(wallet_id) {
                w.record.frozen = false;
            }
        }
        tracing::info!(wallet = %wallet_id, frozen, "wallet freeze changed");
        Ok(wallet_proto(&record))
    }

    async fn revoke_session(&self, session_id: &str) -> Result<gw::Session> {
        // Effective in memory at once (no signature is released after this point), then durable.
        let record = {
            let mut inner = self.lock();
            let s = inner.sessions.get_mut(session_id).ok_or_else(|| {
                Failure::not_found(format!("session {session_id:?} does not exist"))
            })?;
            s.record.revoked = true;
            s.record.clone()
        };
        self.persist(vec![Op::Put(Table::Sessions, record.id.as_bytes().to_vec(), json(&record))])
            .await?;
        tracing::info!(session = %session_id, "session revoked");
        let inner = self.lock();
        inner
            .sessions
            .get(session_id)
            .map(session_proto)
            .ok_or_else(|| Failure::internal("session vanished"))
    }

    fn status(&self) -> gw::Status {
        let inner = self.lock();
        gw::Status {
            mode: self.nsm.mode().as_str().to_owned(),
            enclave_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: ENCLAVE_PROTOCOL_VERSION,
            wallets: inner.wallets.len() as u64,
            sessions: inner.sessions.len() as u64,
            assets: inner.registry.assets.len() as u64,
            kyt_entries: inner.kyt.len() as u64,
            admins: inner.admins.len() as u64,
            payments_signed: self.signed.load(Ordering::Relaxed),
            data_dir: self.data_dir.clone(),
            enclave_reachable: true,
        }
    }
}

/// The x402 `payment-identifier` id for a request: stable across retries with the same
/// idempotency key, and revealing neither.
fn payment_id(session_id: &str, idempotency_key: &str) -> String {
    let h = Sha256::new()
        .chain_update(b"payment-id/v1\0")
        .chain_update(session_id)
        .chain_update([0])
        .chain_update(idempotency_key)
        .finalize();
    format!("pay_{}", hex::encode(&h[..16]))
}

fn approval_proto(a: &ApprovalRecord, now_ms: u64) -> gw::Approval {
    gw::Approval {
        approval_id: a.id.clone(),
        wallet_id: a.wallet_id.clone(),
        session_id: a.session_id.clone(),
        network: a.network.clone(),
        asset: a.asset.to_checksum(None),
        asset_symbol: a.asset_symbol.clone(),
        pay_to: a.pay_to.to_checksum(None),
        amount: a.amount.clone(),
        reason: a.reason.clone(),
        state: a.state_name(now_ms).to_owned(),
        created_at_ms: a.created_ms,
        expires_at_ms: a.expires_ms,
        decided_by: a.decided_by.clone(),
        note: a.note.clone(),
        idempotency_key: a.idempotency_key.clone(),
    }
}

fn admin_proto(pk: &[u8; 32], r: &AdminRecord) -> gw::Admin {
    gw::Admin { public_key: pk.to_vec(), label: r.label.clone(), added_at: r.added_at }
}

fn asset_key(network: &str, address: &Address) -> Vec<u8> {
    format!("{network}/{address:#x}").into_bytes()
}

/// Validates an Ed25519 public key given to the enclave (`what` names it in errors): 32 bytes,
/// a valid point, not of small order.
fn ed25519_key(bytes: &[u8], what: &str) -> Result<VerifyingKey> {
    let bad = |why: &str| Failure::invalid("INVALID_PUBLIC_KEY", format!("{what} {why}"));
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("must be a 32-byte Ed25519 key"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("is not a valid Ed25519 point"))?;
    if key.is_weak() {
        return Err(bad("is a weak (small-order) key"));
    }
    Ok(key)
}

fn session_key(public_key_hex: &str) -> Result<VerifyingKey> {
    ed25519_key(&hex::decode(public_key_hex).unwrap_or_default(), "session public_key")
}

fn wallet_proto(w: &WalletRecord) -> gw::Wallet {
    gw::Wallet {
        wallet_id: w.id.clone(),
        address: w.address.to_checksum(None),
        label: w.label.clone(),
        frozen: w.frozen,
        created_at: w.created_at,
    }
}

fn policy_proto(wallet_id: &str, p: &Policy) -> gw::Policy {
    // The basic fields summarise the document where it has one clear value.
    let allowing: Vec<_> = p.rules.iter().filter(|r| r.action != rules::Action::Deny).collect();
    let (networks, assets) = match allowing.as_slice() {
        [only] => (
            only.networks.clone(),
            only.assets
                .iter()
                .map(|a| match a {
                    wallet_policy::document::AssetMatch::Address(a) => a.to_checksum(None),
                    wallet_policy::document::AssetMatch::Symbol(s) => s.clone(),
                })
                .collect(),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    gw::Policy {
        wallet_id: wallet_id.to_owned(),
        version: p.version,
        max_per_payment: p.wallet.max_per_payment.map(format_units).unwrap_or_default(),
        networks,
        assets,
        max_validity_seconds: p.wallet.max_validity_seconds,
        document: p.source.clone(),
    }
}

fn asset_proto(a: &AssetInfo) -> gw::Asset {
    gw::Asset {
        network: a.network.clone(),
        address: a.address.to_checksum(None),
        name: a.name.clone(),
        version: a.version.clone(),
        decimals: u32::from(a.decimals),
        symbol: a.symbol.clone(),
    }
}

fn session_proto(s: &SessionEntry) -> gw::Session {
    let r = &s.record;
    gw::Session {
        session_id: r.id.clone(),
        wallet_id: r.wallet_id.clone(),
        public_key: s.key.to_bytes().to_vec(),
        cap: format_units(r.cap),
        spent: format_units(s.spent),
        expires_at: r.expires_at,
        revoked: r.revoked,
        networks: r.scope.networks.clone(),
        assets: r.scope.assets.iter().map(|a| a.to_checksum(None)).collect(),
        payees: r.scope.payees.iter().map(|a| a.to_checksum(None)).collect(),
        created_at: r.created_at,
        label: r.label.clone(),
    }
}
