//! The enclave's request handling, split by flow. This file is the trust boundary: every byte
//! the host sends arrives at [`Enclave::handle`], and [`Enclave::dispatch`] sends it to its flow.
//!
//! | flow | file |
//! |---|---|
//! | a payment, top to bottom | [`payment`] (steps), [`ledger`] (the spend's stages and invariants) |
//! | an agent's own reads: budget, history, dry run (session-signed, read-only) | [`agent`] |
//! | who is asking (session and admin signatures) | [`auth`] |
//! | idempotency keys and the replay cache | [`idempotency`] |
//! | holds for human approval | [`approvals`] |
//! | wallets, freeze, policies, assets | [`wallets`] |
//! | sessions | [`sessions`] |
//! | the KYT list | [`kyt`] |
//! | the admin set | [`admin`] |
//! | the audit log's records and answers | [`audit_trail`] |
//! | attestation documents, measurements, sealing | [`attestation`] |
//! | state in memory and its recovery | [`state`], [`records`] (on disk), [`wire`] (answers) |
//!
//! Reads are open to the host, except an agent's reads of its own session, which its session
//! key signs; every state change is signed by an admin and applied one at a time; every
//! answer's failure is a [`Failure`] with a stable [`Reason`].

mod admin;
mod agent;
mod anchoring;
mod approvals;
mod attestation;
mod audit_trail;
mod auth;
mod error;
mod idempotency;
mod kyt;
pub mod ledger;
mod payment;
mod records;
pub mod replay;
mod sessions;
mod sharing;
mod snapshotting;
mod state;
mod wallets;
mod wire;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

use alloy_primitives::{Address, U256};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest as _, Sha256};
use wallet_policy::{address::parse_address, amount::parse_human, registry::chain_id};
use wallet_proto::{
    answer,
    enclave::v1::{self as en, enclave_request::Body as Req, enclave_response::Body as Resp},
    gateway::v1 as gw,
    AdminRpc, Reason, ENCLAVE_PROTOCOL_VERSION,
};
use zeroize::Zeroizing;

pub use agent::{DEFAULT_LIST_PAYMENTS, MAX_ACTIVITY_RECORDS, MAX_LIST_PAYMENTS};
pub use attestation::Sealing;
pub use auth::REPLAY_FLOOR_MARGIN_MS;
pub use error::{Failure, Result};
pub use idempotency::DEFAULT_IDEMPOTENCY_TTL_SECONDS;
pub use kyt::MAX_KYT_ENTRIES;
pub use sessions::MAX_SESSION_TTL_SECONDS;
pub use snapshotting::DEFAULT_SNAPSHOT_EVERY;

use crate::{
    platform::{AuditSink, Clock, Entropy, Nsm, Platform, SpendLog, StateStore},
    store::{Op, StoreError, Table},
};

/// The enclave: its state, its stores and its platform.
pub struct Enclave {
    state: Box<dyn StateStore>,
    spend_log: Arc<dyn SpendLog>,
    audit: Arc<dyn AuditSink>,
    /// Ledger snapshots (see `snapshotting`).
    snapshotting: Arc<snapshotting::Snapshotting>,
    /// The enclave's identity: signs audit heads; admins bind their requests to its public key.
    /// Generated at first start, sealed in the store; zeroized on drop.
    identity_key: ed25519_dalek::SigningKey,
    nsm: Arc<dyn Nsm>,
    entropy: Entropy,
    clock: Arc<dyn Clock>,
    inner: Mutex<state::Inner>,
    /// Serialises state changes: "check the admin's last timestamp, then apply" is atomic.
    admin: tokio::sync::Mutex<()>,
    spend_seq: AtomicU64,
    signed: AtomicU64,
    location: String,
    /// How long a settled idempotency key is remembered, ms.
    idem_ttl_ms: AtomicU64,
    /// Requests signed at or before this time are refused: the replay cache of the previous run
    /// is gone (fixed at start-up from the durable high-water mark and the spend log).
    replay_floor: crate::platform::UnixMillis,
    /// The durable high-water mark of request timestamps, Unix ms (see `auth.rs`).
    replay_high_water: AtomicU64,
    replay_high_water_lock: tokio::sync::Mutex<()>,
    /// The latest time the clock showed in this run (Unix ms): freshness and the replay cache
    /// use it, so stepping the clock back does not make an old request fresh again.
    max_now: AtomicU64,
    /// A KYT import being uploaded: its id and the addresses so far (duplicates included).
    kyt_staging: Mutex<Option<(String, Vec<Address>)>>,
    /// Each session's recent payments, denials and holds (bounded; see `agent`). Never held
    /// together with `inner`.
    activity: Mutex<agent::Activity>,
    /// How the state is sealed (set once after opening; see `attestation`).
    sealing: std::sync::OnceLock<Sealing>,
    /// The PCRs the NSM reported at start-up (index, value), for status and the audit head.
    pcrs: Vec<(u32, Vec<u8>)>,
    /// The rollback anchor in force, once started or provisioned (see `anchoring`); the
    /// journal's rounds use the same cell.
    anchor: crate::anchor::AnchorCell,
    /// The state holds an anchor configuration: nothing is signed or changed until it serves.
    anchor_required: bool,
    /// Why the configured anchor could not be started.
    anchor_problem: Mutex<Option<String>>,
    /// The host's relays to the anchor's members (`--anchor-relay`), given at start-up.
    anchor_relays: std::sync::OnceLock<Vec<crate::hoststorage::HostAddress>>,
    /// Started with `--await-join`: the stored anchor is not running, and only a join (a head
    /// of this copy's own) may be provisioned.
    awaiting_join: std::sync::atomic::AtomicBool,
    /// The shared budgets' books as last read or written; held while taking grants, so one
    /// payment at a time talks to etcd for them (see `sharing`).
    books: tokio::sync::Mutex<sharing::BookCache>,
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enclave")
            .field("mode", &self.nsm.mode())
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

// ---- the trust boundary ------------------------------------------------------------------------

impl Enclave {
    /// Handles one request from the host: checks the protocol version, dispatches, and answers
    /// with the result or an `EnclaveError` carrying the failure's [`Reason`] — signed by the
    /// enclave's identity key over the caller's challenge, the request and the answer
    /// (`wallet_proto::answer`), so the host can neither invent nor replay an answer.
    pub async fn handle(&self, req: en::EnclaveRequest) -> en::EnclaveResponse {
        let request_id = req.request_id;
        let challenge = req.challenge;
        let request = req.body.as_ref().map(answer::request::parts);
        let result = if req.protocol_version != ENCLAVE_PROTOCOL_VERSION {
            Err(Failure::invalid(
                Reason::ProtocolVersion,
                format!(
                    "protocol version {} is not {ENCLAVE_PROTOCOL_VERSION}",
                    req.protocol_version
                ),
            ))
        } else if challenge.len() > 64 {
            Err(Failure::invalid(Reason::InvalidNonce, "challenge may be at most 64 bytes"))
        } else {
            self.dispatch(req.body).await
        };
        let body = result.unwrap_or_else(|f| Resp::Error(f.into_wire()));
        let answer_signature = {
            use ed25519_dalek::Signer as _;
            let (request_kind, request_bytes) = request.unwrap_or(("", Vec::new()));
            let (answer_kind, answer_bytes) = answer::response::parts(&body);
            let message = answer::answer_message(
                &challenge,
                request_kind,
                &request_bytes,
                answer_kind,
                &answer_bytes,
            );
            self.identity_key.sign(&message).to_bytes().to_vec()
        };
        en::EnclaveResponse { request_id, body: Some(body), answer_signature }
    }

    /// Sends a request to its flow. State changes are admin-signed and applied one at a time.
    async fn dispatch(&self, body: Option<Req>) -> Result<Resp> {
        let Some(body) = body else {
            return Err(Failure::invalid(Reason::EmptyRequest, "request has no body"));
        };
        // A state change: authorize under the admin lock (the flow takes the proof), apply,
        // audit.
        macro_rules! admin {
            ($rpc:ident, $r:ident, |$by:ident| $op:expr) => {{
                let _serial = self.admin.lock().await;
                self.anchor_gate()?;
                let $by = self.authorize(AdminRpc::$rpc, &$r, false).await?;
                let resp = $op;
                self.audit_admin(AdminRpc::$rpc, &$by, &resp).await;
                resp
            }};
        }
        Ok(match body {
            // Agents.
            Req::SignPayment(r) => {
                // What was asked, for the session's history (its own reads list it).
                let asked = r.clone();
                let result = match self.anchor_gate() {
                    Ok(()) => self.sign_payment(r).await,
                    Err(f) => Err(f),
                };
                self.note_payment(&asked, &result);
                Resp::SignPayment(result?)
            }
            // An agent's reads of its own session (session-signed; no state changes).
            // They write the replay floor: not while the anchor does not confirm.
            Req::GetBudget(r) => {
                self.anchor_gate()?;
                Resp::SessionBudget(self.get_budget(r).await?)
            }
            Req::ListPayments(r) => {
                self.anchor_gate()?;
                Resp::Payments(self.list_payments(r).await?)
            }
            Req::PreviewPayment(r) => {
                self.anchor_gate()?;
                Resp::PaymentPreview(self.preview_payment(r).await?)
            }
            // Reads.
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
            Req::GetAttestation(r) => Resp::Attestation(self.attestation(&r)?),
            // State changes.
            Req::CreateWallet(r) => {
                admin!(CreateWallet, r, |by| Resp::Wallet(self.create_wallet(&by, r).await?))
            }
            Req::SetPolicy(r) => {
                admin!(SetPolicy, r, |by| Resp::Policy(self.set_policy(&by, r).await?))
            }
            Req::AddAsset(r) => {
                admin!(AddAsset, r, |by| Resp::Asset(self.add_asset(&by, r).await?))
            }
            Req::AddKyt(r) => {
                admin!(AddKyt, r, |by| Resp::Kyt(self.change_kyt(&by, r, true).await?))
            }
            Req::RemoveKyt(r) => {
                admin!(RemoveKyt, r, |by| Resp::Kyt(self.change_kyt(&by, r, false).await?))
            }
            Req::ImportKyt(r) => {
                admin!(ImportKyt, r, |by| Resp::KytImport(self.import_kyt(&by, r).await?))
            }
            Req::IssueSession(r) => {
                admin!(IssueSession, r, |by| Resp::Session(self.issue_session(&by, r).await?))
            }
            Req::RevokeSession(r) => admin!(RevokeSession, r, |by| Resp::Session(
                self.revoke_session(&by, &r.session_id).await?
            )),
            Req::FreezeWallet(r) => admin!(FreezeWallet, r, |by| Resp::Wallet(
                self.set_frozen(&by, &r.wallet_id, true).await?
            )),
            Req::UnfreezeWallet(r) => admin!(UnfreezeWallet, r, |by| Resp::Wallet(
                self.set_frozen(&by, &r.wallet_id, false).await?
            )),
            Req::DecideApproval(r) => {
                admin!(DecideApproval, r, |by| Resp::Approval(self.decide_approval(&by, &r).await?))
            }
            Req::RemoveAdmin(r) => {
                admin!(RemoveAdmin, r, |by| Resp::Admin(
                    self.remove_admin(&by, &r.public_key).await?
                ))
            }
            Req::PrepareAnchor(r) => {
                let _serial = self.admin.lock().await;
                let by = self.authorize(AdminRpc::PrepareAnchor, &r, false).await?;
                let resp = Resp::Anchor(self.prepare_anchor(&by).await?);
                self.audit_admin(AdminRpc::PrepareAnchor, &by, &resp).await;
                resp
            }
            Req::ProvisionAnchor(r) => {
                // Not gated: re-anchoring is how a halted enclave is brought back.
                let _serial = self.admin.lock().await;
                let by = self.authorize(AdminRpc::ProvisionAnchor, &r, false).await?;
                let resp = Resp::Anchor(self.provision_anchor(&by, r).await?);
                self.audit_admin(AdminRpc::ProvisionAnchor, &by, &resp).await;
                resp
            }
            Req::AddAdmin(r) => {
                let _serial = self.admin.lock().await;
                self.anchor_gate()?;
                // The first admin registers itself (self-signed); later ones need an admin.
                let self_signed = r.auth.as_ref().is_some_and(|a| a.public_key == r.public_key);
                let by = self.authorize(AdminRpc::AddAdmin, &r, self_signed).await?;
                let resp = Resp::Admin(self.add_admin(&by, r).await?);
                self.audit_admin(AdminRpc::AddAdmin, &by, &resp).await;
                resp
            }
        })
    }
}

// ---- opening -----------------------------------------------------------------------------------

/// Record id of the identity (audit) key in the key table (wallet ids start with `w_`).
const IDENTITY_KEY_ID: &[u8] = b"audit-key";

impl Enclave {
    /// Opens the enclave on `platform`: loads the state, replays the spend log, loads (or on a
    /// fresh enclave, makes) the identity key, and checks the audit log's MACs.
    ///
    /// # Errors
    /// [`StoreError`] when a record is corrupt or fails authentication, or the state has been
    /// stripped of its admins: the enclave refuses to run on state it cannot trust.
    pub async fn open(platform: Platform) -> std::result::Result<Self, StoreError> {
        let Platform { nsm, clock, state, spend_log, spends, snapshots, audit, location } =
            platform;
        let (spend_log, audit): (Arc<dyn SpendLog>, Arc<dyn AuditSink>) =
            (Arc::from(spend_log), Arc::from(audit));
        let entropy = Entropy::new(Arc::clone(&nsm));
        let checkpoint = |e: crate::journal::JournalError| StoreError::Sync(e.to_string());
        // Verify before anything is written: the identity key (read only here) and, with it, the
        // MAC of every audit record — so a log with forged lines appended is refused before a
        // commit head could count them.
        let stored_identity =
            match state.get(Table::Keys, IDENTITY_KEY_ID)? {
                Some(bytes) => {
                    let secret: Zeroizing<[u8; 32]> =
                        Zeroizing::new(bytes.as_slice().try_into().map_err(|_| {
                            StoreError::Engine("identity key is not 32 bytes".into())
                        })?);
                    Some(ed25519_dalek::SigningKey::from_bytes(&secret))
                }
                None => None,
            };
        let mac_key = |key: &ed25519_dalek::SigningKey| -> Zeroizing<[u8; 32]> {
            Zeroizing::new(
                Sha256::new()
                    .chain_update(b"x402-wallet/audit-mac-key/v1\0")
                    .chain_update(key.to_bytes())
                    .finalize()
                    .into(),
            )
        };
        if let Some(key) = &stored_identity {
            audit.attach_key(mac_key(key)).map_err(|e| StoreError::Engine(e.to_string()))?;
        }
        // The stores are verified: the commit head exists (and covers them as they are) before
        // anything is written.
        spend_log.arm_head();
        spend_log.checkpoint().await.map_err(checkpoint)?;
        let mut inner = state::Inner::load(&*state, clock.now()).await?;
        let activity = agent::Activity::rebuild(&spends.recent, &inner);
        let (snapshot, replayed) = (spends.start.index, spends.visited);
        let summary = inner.load_ledger(spends);
        tracing::info!(
            wallets = inner.wallets.len(),
            sessions = inner.sessions.len(),
            spends = summary.released,
            assets = inner.registry.assets.len(),
            kyt = inner.kyt.len(),
            snapshot,
            replayed,
            "state loaded"
        );
        let identity_key = match stored_identity {
            Some(key) => key,
            None => {
                // A fresh enclave (or one whose identity record is gone: then the audit log's
                // MACs do not verify below, and it refuses to start).
                let key = ed25519_dalek::SigningKey::generate(&mut entropy.clone());
                state.apply(vec![Op::Put(
                    Table::Keys,
                    IDENTITY_KEY_ID.to_vec(),
                    Zeroizing::new(key.to_bytes().to_vec()),
                )])?;
                state.sync().await?;
                audit.attach_key(mac_key(&key)).map_err(|e| StoreError::Engine(e.to_string()))?;
                key
            }
        };
        // Requests of the previous run must not be replayed into this one: refuse everything
        // signed up to the durable high-water mark, or up to the last spend if that is later.
        let stored_floor = match state.get(Table::Floors, auth::REPLAY_FLOOR_KEY)? {
            Some(v) => records::from_json::<u64>("replay floor", &v)?,
            None => 0,
        };
        let replay_floor = crate::platform::UnixMillis(stored_floor).max(summary.last_at);
        // The floor is at most a margin ahead of the last request accepted: wait that out (in
        // real time) before serving, so that requests signed after the restart are not refused.
        // A floor further ahead (an agent's clock ran fast) is not waited for.
        let ahead = replay_floor.as_millis().saturating_sub(clock.now().as_millis());
        if ahead > 0 && ahead <= 2 * auth::REPLAY_FLOOR_MARGIN_MS {
            tokio::time::sleep(std::time::Duration::from_millis(ahead + 1)).await;
        }
        if inner.admins.is_empty()
            && (!inner.wallets.is_empty()
                || !inner.sessions.is_empty()
                || summary.released > 0
                || audit.head().0 > 0)
        {
            return Err(StoreError::Engine(
                "the state has wallets, sessions, spends or audit records but no admin: the admin records were removed. Refusing to start (a new admin could take over).".into(),
            ));
        }
        spend_log.checkpoint().await.map_err(checkpoint)?;
        let anchor_required = state.get(Table::Anchor, b"config")?.is_some();
        let anchor = spend_log.anchor_cell();
        let pcrs = match nsm.pcrs() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "the NSM did not report PCRs");
                Vec::new()
            }
        };
        let snapshotting = snapshotting::Snapshotting::new(
            &spend_log,
            &audit,
            snapshots,
            anchor.clone(),
            anchor_required,
        );
        Ok(Self {
            state,
            spend_log,
            audit,
            snapshotting,
            identity_key,
            nsm,
            entropy,
            clock,
            inner: Mutex::new(inner),
            admin: tokio::sync::Mutex::new(()),
            spend_seq: AtomicU64::new(summary.next_seq),
            signed: AtomicU64::new(summary.released),
            location,
            idem_ttl_ms: AtomicU64::new(DEFAULT_IDEMPOTENCY_TTL_SECONDS * 1000),
            replay_floor,
            replay_high_water: AtomicU64::new(replay_floor.as_millis()),
            replay_high_water_lock: tokio::sync::Mutex::new(()),
            max_now: AtomicU64::new(0),
            kyt_staging: Mutex::new(None),
            activity: Mutex::new(activity),
            sealing: std::sync::OnceLock::new(),
            pcrs,
            anchor,
            anchor_required,
            anchor_problem: Mutex::new(None),
            anchor_relays: std::sync::OnceLock::new(),
            awaiting_join: std::sync::atomic::AtomicBool::new(false),
            books: tokio::sync::Mutex::new(sharing::BookCache::default()),
        })
    }

    /// Sets how long idempotency keys are remembered (default 24 h). A retry after that is a new
    /// payment.
    pub fn set_idempotency_ttl(&self, seconds: u64) {
        let ms = seconds.saturating_mul(1000);
        self.idem_ttl_ms.store(ms, Ordering::Relaxed);
        // Keys replayed from the journal at start-up that are already past it go now.
        self.lock().idem.prune(self.clock.now(), ms);
    }

    /// The enclave's identity: the Ed25519 public key that signs its audit heads and that admins
    /// bind their requests to.
    #[must_use]
    pub fn identity(&self) -> [u8; 32] {
        self.identity_key.verifying_key().to_bytes()
    }

    /// Applies a batch of state changes atomically and waits until it is durable and covered by
    /// the commit head (so a state store that later loses it is refused at start-up).
    async fn persist(&self, ops: Vec<Op>) -> std::result::Result<(), StoreError> {
        self.persist_state(ops).await?;
        self.checkpoint().await
    }

    /// Applies a batch and waits until the state store made it durable, without waiting for a
    /// commit-head round (the next round covers it). For bookkeeping on the way to a change —
    /// an admin's last timestamp, the replay floor — so that a kill switch never waits behind a
    /// spend-journal round before it takes effect.
    async fn persist_state(&self, ops: Vec<Op>) -> std::result::Result<(), StoreError> {
        self.state.apply(ops)?;
        self.state.sync().await
    }

    /// A durability round now: the audit log synced and the commit head written (see `head`).
    async fn checkpoint(&self) -> std::result::Result<(), StoreError> {
        self.spend_log.checkpoint().await.map_err(|e| StoreError::Sync(e.to_string()))
    }

    fn lock(&self) -> MutexGuard<'_, state::Inner> {
        // A panic while holding the lock leaves consistent in-memory state (every mutation is a
        // single assignment), so recovering from poisoning is sound.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
            data_dir: self.location.clone(),
            enclave_reachable: true,
            pcrs: self.wire_pcrs(),
            sealing: self.sealing_kind(),
            anchor: Some(self.anchor_info()),
        }
    }
}

// ---- input checks shared by the flows ----------------------------------------------------------

/// `prefix` and 16 random hex digits: wallet, session and hold ids.
fn random_id(entropy: &Entropy, prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(entropy.bytes::<8>()))
}

fn parse_list<T>(
    items: &[String],
    what: &str,
    f: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    items
        .iter()
        .map(|s| f(s.trim()).map_err(|e| Failure::bad_argument(format!("{what}: {e}"))))
        .collect()
}

fn parse_networks(items: &[String]) -> Result<Vec<String>> {
    parse_list(items, "network", |s| chain_id(s).map(|_| s.to_owned()))
}

/// A human amount (`0.25`, `$0.25`, `0.25 USDC`) in token units; zero is refused.
fn parse_amount(s: &str, what: &str) -> Result<U256> {
    let a = parse_human(s)
        .map_err(|e| Failure::invalid(Reason::InvalidAmount, format!("{what}: {e}")))?;
    if a.units.is_zero() {
        return Err(Failure::invalid(
            Reason::InvalidAmount,
            format!("{what} must be greater than zero"),
        ));
    }
    Ok(a.units)
}

/// KYT entries are matched case- and checksum-insensitively.
fn parse_kyt_address(s: &str) -> std::result::Result<Address, String> {
    parse_address(&s.to_ascii_lowercase())
}

/// Validates an Ed25519 public key given to the enclave (`what` names it in errors): 32 bytes,
/// a valid point, not of small order.
fn ed25519_key(bytes: &[u8], what: &str) -> Result<VerifyingKey> {
    let bad = |why: &str| Failure::invalid(Reason::InvalidPublicKey, format!("{what} {why}"));
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
