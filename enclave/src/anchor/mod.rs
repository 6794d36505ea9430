//! The external rollback anchor: this enclave's ledger head kept in etcd, where the host cannot
//! roll it back.
//!
//! The local commit head ([`crate::head`]) catches any one store rolled back or cut; it cannot
//! catch the host putting back the *whole* state (every store and the head) from an older copy,
//! because nothing local remembers that a newer state existed. The anchor does: a replicated
//! store run by parties independent of the host (see ARCHITECTURE.md, "The external anchor", for
//! the trust assumption).
//!
//! * **Every durability round** ends with one compare-and-swap of the head ([`value::Head`]:
//!   epoch, the writing instance's lineage, the stores' durable counts and each store's hash at
//!   them — the audit chain's and [`crate::chain`]'s for the journal and the state — a MAC) against the etcd
//!   `mod_revision` this enclave last wrote, *after* the local syncs and the local commit head
//!   and *before* anything the round covers is released ([`Anchor::round`], called by the
//!   journal's round thread). A payment's signature therefore leaves only once etcd's quorum has
//!   its spend counted.
//! * **An error that may have committed** (a timeout, a lost connection) is retried with the
//!   same compare; a conflict that shows the value this enclave tried to write is taken as
//!   committed. A conflict showing anything else means another instance (a clone, or this state
//!   started twice) advanced the anchor: this one halts for good ([`Phase::Halted`]).
//! * **Fail closed**: a round the anchor does not confirm within [`ROUND_WAIT`] fails (its
//!   signatures are withheld, the spends stay counted), and until a probe reaches the anchor
//!   again new payments, state changes and agents' reads are refused at once ([`Anchor::gate`]) instead of
//!   reserving budget they cannot use. There is no "bounded lag" mode, on purpose: a host that
//!   can make the enclave sign K payments ahead of the anchor can roll it back to the anchored
//!   head, let the start-up read through, and repeat — K per cycle, unbounded over cycles.
//! * **At start-up**, before the first signature ([`Anchor::start`]): a linearizable read of the
//!   head. Local state *behind* it (any count lower) is a rollback, local state of equal or
//!   greater counts whose audit log, spend journal or state store does not have the anchored
//!   hash at the anchored count is a fork: both halt. Nothing is written before this check. Local state ahead and consistent (a crash after local sync, before the CAS: nothing of
//!   it was released) is rolled forward. The same CAS bumps the epoch, so an older or cloned
//!   instance still running halts at its next round.

pub mod etcd;
pub mod value;

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use wallet_proto::{gateway::v1 as gw, Reason};
use zeroize::Zeroizing;

use crate::head::Facts;
pub use value::Head;

/// How long a round waits for the anchor to confirm before its signatures are withheld.
pub const ROUND_WAIT: Duration = Duration::from_secs(5);
/// How often an unreachable anchor is probed (start-up, and after a failed round).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// The longest etcd key accepted for the head.
pub const MAX_KEY_LEN: usize = 200;
/// The most members (relays) accepted.
pub const MAX_MEMBERS: u32 = 7;
/// The longest shared prefix accepted (book keys add a scope and an id to it).
pub const MAX_SHARED_PREFIX_LEN: usize = 100;
/// How long a write of shared budgets may take before the payment waiting for it is refused.
pub const SHARED_WAIT: Duration = Duration::from_secs(2);

/// The anchor's configuration, as the admin provisioned it (sealed in the state store).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnchorConfig {
    /// The anchor CA (PEM).
    pub ca_pem: String,
    /// The enclave's client certificate (PEM).
    pub client_cert_pem: String,
    /// The name on etcd's server certificates.
    pub server_name: String,
    /// The etcd key of the head.
    pub key: String,
    /// How many members (relays) there are.
    pub members: u32,
    /// Where the budgets shared with the other members of this enclave's group live (an etcd
    /// prefix ending in `/`, e.g. `/x402-wallet/prod/shared/`); empty: this enclave shares
    /// nothing (a group of one). See [`crate::service`]'s `sharing`.
    #[serde(default)]
    pub shared_prefix: String,
}

impl AnchorConfig {
    /// Checks the shape of what an admin sent (the TLS material is checked by [`etcd::Kv::new`]).
    ///
    /// # Errors
    /// A sentence naming the bad field.
    pub fn check(&self) -> Result<(), String> {
        if self.key.len() > MAX_KEY_LEN
            || !self.key.starts_with('/')
            || !self.key.bytes().all(|b| b.is_ascii_graphic())
            || self.key.split('/').skip(1).filter(|p| !p.is_empty()).count() < 2
            || self.key.ends_with('/')
        {
            return Err(format!(
                "anchor key must be at most {MAX_KEY_LEN} printable ASCII characters, a path of at least two parts under a prefix of its own (e.g. /x402-wallet/prod-1/anchor/head): the prefix is what etcd's RBAC grants this enclave"
            ));
        }
        if self.members == 0 || self.members > MAX_MEMBERS {
            return Err(format!("anchor members must be 1 to {MAX_MEMBERS}"));
        }
        if self.server_name.is_empty() || self.server_name.len() > 253 {
            return Err("anchor server name must be a DNS name".into());
        }
        let p = &self.shared_prefix;
        if !p.is_empty()
            && (p.len() > MAX_SHARED_PREFIX_LEN
                || !p.starts_with('/')
                || !p.ends_with('/')
                || !p.bytes().all(|b| b.is_ascii_graphic())
                || p.split('/').filter(|x| !x.is_empty()).count() < 2
                || self.key.starts_with(p.as_str()))
        {
            return Err(format!(
                "shared prefix must be at most {MAX_SHARED_PREFIX_LEN} printable ASCII characters, start and end with '/', have at least two parts (e.g. /x402-wallet/prod/shared/), and not contain the head's key"
            ));
        }
        Ok(())
    }
}

/// What the local stores hold durably: the commit head's facts and each store's hash at them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// The stores' durable counts.
    pub facts: Facts,
    /// The audit chain's hash after `facts.audit_records`.
    pub chain: [u8; 32],
    /// The spend journal's chain hash after `facts.journal_records`.
    pub journal_chain: [u8; 32],
    /// The state store's chain hash after batch `facts.store_seq`.
    pub state_chain: [u8; 32],
}

impl Local {
    /// The head of this state: `epoch`, written by `lineage`.
    #[must_use]
    pub fn head(&self, epoch: u64, lineage: [u8; 16]) -> Head {
        Head {
            epoch,
            lineage,
            facts: self.facts,
            chain: self.chain,
            journal_chain: self.journal_chain,
            state_chain: self.state_chain,
        }
    }
}

/// Where the anchor stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not (or no longer) confirmed reachable: payments and state changes are refused, a probe
    /// runs.
    Waiting(String),
    /// Rounds are anchored.
    Serving,
    /// Refuses to sign for good (until an operator acts): the reason.
    Halted(String),
}

/// Why [`Anchor::start`] did not reach [`Phase::Serving`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The anchor could not be read or written: try again later.
    Unavailable(String),
    /// The local state must not be served (rolled back, forked, or the head is missing).
    Halted(String),
}

#[derive(Debug)]
struct St {
    /// The head this enclave last wrote or read, and its `mod_revision`.
    last: Option<(Head, i64)>,
    phase: Phase,
    /// Values a failed round tried to write (they may have committed), newest last.
    unknown: Vec<Vec<u8>>,
    rounds: u64,
    /// What etcd held at the last read or conflict (for re-anchoring: `--replace-head`).
    seen: Option<Vec<u8>>,
}

/// The most values of failed rounds remembered (138 bytes each): a round gives up after
/// [`ROUND_WAIT`], so this covers well over an hour of failing rounds.
const MAX_UNKNOWN: usize = 1024;

/// The anchor of one enclave instance.
pub struct Anchor {
    config: AnchorConfig,
    /// What every head's MAC binds besides the head (etcd key, CA, server name).
    binding: [u8; 32],
    /// This instance's lineage (random per instance; see [`value`]).
    lineage: [u8; 16],
    kv: etcd::Kv,
    mac_key: Zeroizing<[u8; 32]>,
    client_public_key: String,
    /// The anchor's own runtime (one worker): every etcd exchange runs here, so rounds depend
    /// neither on how busy the enclave's runtime is nor on the order it shuts down in.
    runtime: Option<tokio::runtime::Runtime>,
    st: Mutex<St>,
    probing: std::sync::atomic::AtomicBool,
    /// Set when the enclave stops or this anchor is replaced: rounds and background tasks stop
    /// talking to etcd.
    closed: std::sync::atomic::AtomicBool,
    /// A round is talking to etcd (on the runtime; [`Self::close_and_wait`] waits for it).
    in_round: std::sync::atomic::AtomicBool,
    /// Held by a round's compare-and-swap and by a write of shared budgets: each compares the
    /// head's revision this instance knows, so they take turns rather than fail each other.
    io: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor")
            .field("key", &self.config.key)
            .field("phase", &self.st().phase)
            .finish_non_exhaustive()
    }
}

/// The reason code a failure message carries, if it came from the anchor: anchor failures
/// travel as text through the durability round (`ANCHOR_UNAVAILABLE: …`, `ANCHOR_HALTED: …`).
#[must_use]
pub fn failure_reason(message: &str) -> Option<Reason> {
    if message.contains(Reason::AnchorHalted.as_str()) {
        Some(Reason::AnchorHalted)
    } else if message.contains(Reason::AnchorUnavailable.as_str()) {
        Some(Reason::AnchorUnavailable)
    } else {
        None
    }
}

fn unavailable(why: impl std::fmt::Display) -> String {
    format!("{}: the rollback anchor did not confirm: {why}", Reason::AnchorUnavailable.as_str())
}

fn halted(why: impl std::fmt::Display) -> String {
    format!("{}: {why}", Reason::AnchorHalted.as_str())
}

/// Checks that the local state holds an anchored head: the audit log, the spend journal and the
/// state store each have the head's hash at the head's count. `Err` says what does not match.
pub type Verify = Arc<dyn Fn(&Head) -> Result<(), String> + Send + Sync>;

/// Why [`Anchor::create`] did not write the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// etcd did not confirm in time.
    Unavailable(String),
    /// The key holds something else than what the request expects.
    Refused(String),
}

impl Anchor {
    /// Builds the anchor (no connection yet) in [`Phase::Waiting`], with its own runtime;
    /// `lineage` is this instance's (draw it from the NSM).
    ///
    /// # Errors
    /// A sentence when the configuration or the TLS material cannot be used.
    pub fn new(
        config: AnchorConfig,
        setup: etcd::ClientSetup,
        client_public_key: String,
        mac_key: Zeroizing<[u8; 32]>,
        lineage: [u8; 16],
    ) -> Result<Self, String> {
        config.check()?;
        let kv = etcd::Kv::new(setup)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("anchor-io")
            .enable_all()
            .build()
            .map_err(|e| format!("anchor runtime: {e}"))?;
        Ok(Self {
            binding: value::binding(&config.key, &config.ca_pem, &config.server_name),
            config,
            lineage,
            kv,
            mac_key,
            client_public_key,
            runtime: Some(runtime),
            st: Mutex::new(St {
                last: None,
                phase: Phase::Waiting("starting: the anchor has not been read yet".into()),
                unknown: Vec::new(),
                rounds: 0,
                seen: None,
            }),
            probing: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            in_round: std::sync::atomic::AtomicBool::new(false),
            io: tokio::sync::Mutex::new(()),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        #[allow(clippy::expect_used)]
        self.runtime.as_ref().expect("the runtime is taken only on drop")
    }

    /// Runs `f` on the anchor's runtime and waits for it (from any runtime).
    async fn on_io<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, String> {
        self.rt().spawn(f).await.map_err(|e| format!("anchor task: {e}"))
    }

    fn st(&self) -> MutexGuard<'_, St> {
        // Every critical section leaves `St` consistent.
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self) -> &[u8] {
        self.config.key.as_bytes()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &AnchorConfig {
        &self.config
    }

    /// This instance's lineage.
    #[must_use]
    pub fn lineage(&self) -> [u8; 16] {
        self.lineage
    }

    /// The current phase.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.st().phase.clone()
    }

    /// Refuses (with its reason and a sentence) unless rounds are being anchored.
    ///
    /// # Errors
    /// [`Reason::AnchorUnavailable`] while waiting for the anchor, [`Reason::AnchorHalted`] once
    /// halted.
    pub fn gate(&self) -> Result<(), (Reason, String)> {
        match &self.st().phase {
            Phase::Serving => Ok(()),
            Phase::Waiting(why) => Err((
                Reason::AnchorUnavailable,
                format!("the rollback anchor is not confirmed ({why}); nothing is signed or changed until it is"),
            )),
            Phase::Halted(why) => Err((Reason::AnchorHalted, why.clone())),
        }
    }

    fn halt(&self, why: String) -> String {
        tracing::error!(reason = %why, "anchor: halted; no signature or state change until an operator acts");
        self.st().phase = Phase::Halted(why.clone());
        halted(why)
    }

    /// Decodes a stored value under this anchor's MAC key and binding.
    ///
    /// # Errors
    /// [`value::ValueError`] when it is not a head this enclave wrote for this anchor.
    pub fn decode(&self, bytes: &[u8]) -> Result<Head, value::ValueError> {
        Head::decode(bytes, &self.mac_key, &self.binding)
    }

    fn encode(&self, head: &Head) -> Vec<u8> {
        head.encode(&self.mac_key, &self.binding)
    }

    /// Compares `local` with an anchored head: not behind in any count, and `verify` (the audit
    /// chain and the lineage) holds. `Err` is the reason to halt.
    fn judge(local: Local, anchored: &Head, verify: &Verify) -> Result<(), String> {
        let (a, l) = (anchored.facts, local.facts);
        if l.journal_records < a.journal_records
            || l.audit_records < a.audit_records
            || l.store_seq < a.store_seq
        {
            return Err(format!(
                "ROLLED BACK: the local state is behind the anchored head (local: {} spend records, {} audit records, state batch {}; anchored at epoch {}: {}, {}, {}). The host restored an older copy of the state, or this is a stale clone. Nothing is signed.",
                l.journal_records, l.audit_records, l.store_seq,
                anchored.epoch, a.journal_records, a.audit_records, a.store_seq
            ));
        }
        verify(anchored).map_err(|why| {
            format!("FORKED: the local state is not the history anchored at epoch {}: {why}. Nothing is signed.", anchored.epoch)
        })
    }

    /// The start-up check (see the module docs): a linearizable read, the comparison with
    /// `local` ([`Verify`] for the content), and the epoch bump, with this instance's lineage,
    /// that fences any other instance.
    ///
    /// # Errors
    /// [`StartError::Unavailable`] when etcd did not answer in time (the caller probes again);
    /// [`StartError::Halted`] when the state must not be served (the phase is then halted).
    pub async fn start(self: &Arc<Self>, local: Local, verify: Verify) -> Result<(), StartError> {
        let this = Arc::clone(self);
        self.on_io(async move { this.start_here(local, &verify).await })
            .await
            .map_err(StartError::Unavailable)?
    }

    async fn start_here(&self, local: Local, verify: &Verify) -> Result<(), StartError> {
        let deadline = Instant::now() + ROUND_WAIT;
        // Two tries: a conflict on the bump means someone wrote between the read and the CAS.
        for _ in 0..2 {
            if self.is_closed() {
                return Err(StartError::Unavailable("the anchor was replaced or stopped".into()));
            }
            let current = retry(deadline, || self.kv.get(self.key()))
                .await
                .map_err(|e| StartError::Unavailable(e.to_string()))?;
            let Some(current) = current else {
                let why = format!("the anchor holds no head at {}: it was lost, or never provisioned for this enclave. Nothing is signed. If the anchor was lost, re-anchor deliberately (walletctl anchor provision --reanchor)", self.config.key);
                return Err(StartError::Halted(self.halt_silently(why)));
            };
            self.st().seen = Some(current.value.clone());
            let anchored = match self.decode(&current.value) {
                Ok(h) => h,
                Err(e) => {
                    return Err(StartError::Halted(
                        self.halt_silently(format!("{e} (at {})", self.config.key)),
                    ))
                }
            };
            if let Err(why) = Self::judge(local, &anchored, verify) {
                return Err(StartError::Halted(self.halt_silently(why)));
            }
            let bumped = local.head(anchored.epoch.saturating_add(1), self.lineage);
            let value = self.encode(&bumped);
            // A start held back while this anchor was replaced (re-anchoring) must not write.
            if self.is_closed() {
                return Err(StartError::Unavailable("the anchor was replaced or stopped".into()));
            }
            match retry(deadline, || self.kv.cas(self.key(), Some(current.revision), &value)).await
            {
                Ok(etcd::Cas::Committed(rev)) => {
                    let mut st = self.st();
                    st.last = Some((bumped, rev));
                    st.seen = Some(value);
                    st.phase = Phase::Serving;
                    tracing::info!(
                        epoch = bumped.epoch,
                        journal = local.facts.journal_records,
                        audit = local.facts.audit_records,
                        rolled_forward = (local.facts != anchored.facts),
                        "anchor: head verified and epoch bumped; serving"
                    );
                    return Ok(());
                }
                Ok(etcd::Cas::Conflict(Some(now))) if now.value == value => {
                    let mut st = self.st();
                    st.last = Some((bumped, now.revision));
                    st.seen = Some(value);
                    st.phase = Phase::Serving;
                    return Ok(());
                }
                Ok(etcd::Cas::Conflict(_)) => continue,
                Err(e) => return Err(StartError::Unavailable(e.to_string())),
            }
        }
        Err(StartError::Halted(self.halt_silently(
            "another instance keeps advancing the anchored head while this one starts: two instances of this state are running. Nothing is signed.".into(),
        )))
    }

    fn halt_silently(&self, why: String) -> String {
        let _ = self.halt(why.clone());
        why
    }

    /// What etcd holds at another `key` now (a linearizable read, within [`ROUND_WAIT`]): the
    /// head of the member a joining copy was taken from.
    ///
    /// # Errors
    /// A sentence when etcd did not answer.
    pub async fn read_key(self: &Arc<Self>, key: String) -> Result<Option<Vec<u8>>, String> {
        let this = Arc::clone(self);
        self.on_io(async move {
            let deadline = Instant::now() + ROUND_WAIT;
            retry(deadline, || this.kv.get(key.as_bytes())).await.map_err(|e| e.to_string())
        })
        .await?
        .map(|v| v.map(|v| v.value))
    }

    /// What etcd holds at the key now (a linearizable read, within [`ROUND_WAIT`]).
    ///
    /// # Errors
    /// A sentence when etcd did not answer.
    pub async fn read(self: &Arc<Self>) -> Result<Option<Vec<u8>>, String> {
        let this = Arc::clone(self);
        self.on_io(async move {
            let deadline = Instant::now() + ROUND_WAIT;
            retry(deadline, || this.kv.get(this.key())).await.map_err(|e| e.to_string())
        })
        .await?
        .map(|v| v.map(|v| v.value))
    }

    /// Provisioning (and re-anchoring): writes the first head for `local` with `epoch` and this
    /// instance's lineage, only if the key is absent (`replace: None`) or holds exactly
    /// `replace`.
    ///
    /// # Errors
    /// [`CreateError`].
    pub async fn create(
        self: &Arc<Self>,
        local: Local,
        epoch: u64,
        replace: Option<Vec<u8>>,
    ) -> Result<Head, CreateError> {
        let this = Arc::clone(self);
        self.on_io(async move { this.create_here(local, epoch, replace.as_deref()).await })
            .await
            .map_err(CreateError::Unavailable)?
    }

    async fn create_here(
        &self,
        local: Local,
        epoch: u64,
        replace: Option<&[u8]>,
    ) -> Result<Head, CreateError> {
        let deadline = Instant::now() + ROUND_WAIT;
        let unavailable_err = |e: etcd::EtcdError| CreateError::Unavailable(unavailable(e));
        let expected = match replace {
            None => None,
            Some(old) => {
                let current =
                    retry(deadline, || self.kv.get(self.key())).await.map_err(unavailable_err)?;
                match current {
                    Some(c) if c.value == old => Some(c.revision),
                    Some(_) => return Err(CreateError::Refused(format!("the anchor's head at {} is not the one named to replace (it changed, or another enclave writes there)", self.config.key))),
                    None => return Err(CreateError::Refused(format!("the anchor holds no head at {}: re-anchor without --replace-head", self.config.key))),
                }
            }
        };
        let head = local.head(epoch, self.lineage);
        let value = self.encode(&head);
        match retry(deadline, || self.kv.cas(self.key(), expected, &value))
            .await
            .map_err(unavailable_err)?
        {
            etcd::Cas::Committed(rev) => {
                let mut st = self.st();
                st.last = Some((head, rev));
                st.seen = Some(value);
                st.phase = Phase::Serving;
                Ok(head)
            }
            etcd::Cas::Conflict(Some(now)) if now.value == value => {
                let mut st = self.st();
                st.last = Some((head, now.revision));
                st.seen = Some(value);
                st.phase = Phase::Serving;
                Ok(head)
            }
            etcd::Cas::Conflict(Some(_)) => Err(CreateError::Refused(format!("the anchor already holds a head at {} (another enclave's, or an earlier provisioning's): choose another key, or re-anchor naming it (--reanchor --replace-head HEX)", self.config.key))),
            etcd::Cas::Conflict(None) => Err(CreateError::Refused(format!("the anchor holds no head at {} any more", self.config.key))),
        }
    }

    /// One durability round's anchoring (blocking; called by the journal's round thread, never
    /// on a runtime): compare-and-swap the head to `local`. Returns once etcd confirmed.
    ///
    /// # Errors
    /// `ANCHOR_UNAVAILABLE: …` when etcd did not confirm within [`ROUND_WAIT`] (the phase turns
    /// to waiting and a probe starts), or this anchor was closed; `ANCHOR_HALTED: …` when
    /// another instance advanced the head.
    pub fn round(self: &Arc<Self>, local: Local) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        self.in_round.store(true, Ordering::SeqCst);
        // Checked after marking the round: `close_and_wait` either sees it or it sees `closed`.
        let result = if self.is_closed() {
            Err(unavailable("the enclave is stopping, or this anchor was replaced"))
        } else {
            let this = Arc::clone(self);
            self.rt().block_on(async move { this.advance(local).await })
        };
        self.in_round.store(false, Ordering::SeqCst);
        result
    }

    async fn advance(self: &Arc<Self>, local: Local) -> Result<(), String> {
        let _turn = self.io.lock().await;
        // From when this round has etcd to itself (a shared write may have held it).
        let deadline = Instant::now() + ROUND_WAIT;
        loop {
            if self.is_closed() {
                return Err(unavailable("the enclave is stopping, or this anchor was replaced"));
            }
            let (mut head, mut rev) = {
                let st = self.st();
                if let Phase::Halted(why) = &st.phase {
                    return Err(halted(why));
                }
                match st.last {
                    Some(last) => last,
                    None => return Err(unavailable("the anchor was not read at start-up")),
                }
            };
            if local.head(head.epoch, head.lineage) == head {
                return Ok(());
            }
            let next = local.head(head.epoch, self.lineage);
            let value = self.encode(&next);
            let outcome = loop {
                match self.kv.cas(self.key(), Some(rev), &value).await {
                    Ok(o) => break o,
                    Err(e) if Instant::now() < deadline && !self.is_closed() => {
                        tracing::debug!(error = %e, "anchor: round not confirmed; retrying the same compare-and-swap");
                        tokio::time::sleep(Duration::from_millis(if e.member % 2 == 0 {
                            20
                        } else {
                            40
                        }))
                        .await;
                    }
                    Err(e) => {
                        let mut st = self.st();
                        st.unknown.push(value);
                        if st.unknown.len() > MAX_UNKNOWN {
                            st.unknown.remove(0);
                        }
                        if st.phase == Phase::Serving {
                            st.phase = Phase::Waiting(format!(
                                "a round was not confirmed within {} s: {e}",
                                ROUND_WAIT.as_secs()
                            ));
                        }
                        drop(st);
                        tracing::error!(error = %e, "anchor: round not confirmed in time; its signatures are withheld");
                        self.probe();
                        return Err(unavailable(e));
                    }
                }
            };
            match outcome {
                etcd::Cas::Committed(new_rev) => {
                    let mut st = self.st();
                    st.last = Some((next, new_rev));
                    st.rounds += 1;
                    st.unknown.clear();
                    return Ok(());
                }
                etcd::Cas::Conflict(Some(now)) if now.value == value => {
                    // An attempt that "failed" had committed (the lineage makes the bytes ours).
                    tracing::info!(revision = now.revision, "anchor: an unconfirmed attempt had committed (its own value is the head); confirmed once");
                    let mut st = self.st();
                    st.last = Some((next, now.revision));
                    st.rounds += 1;
                    st.unknown.clear();
                    return Ok(());
                }
                etcd::Cas::Conflict(Some(now)) if self.st().unknown.contains(&now.value) => {
                    // An earlier round's unconfirmed write did commit: continue from it.
                    match self.decode(&now.value) {
                        Ok(h) => {
                            head = h;
                            rev = now.revision;
                            self.st().last = Some((head, rev));
                        }
                        Err(e) => return Err(self.halt(format!("{e}"))),
                    }
                }
                etcd::Cas::Conflict(now) => {
                    let why = match now.as_ref() {
                        None => format!("the anchored head at {} was deleted while this instance served (the anchor lost it, or someone removed it). Nothing more is signed here; re-anchor deliberately", self.config.key),
                        Some(v) => {
                            self.st().seen = Some(v.value.clone());
                            let who = self.decode(&v.value).map_or_else(
                                |_| "a value this enclave did not write".to_owned(),
                                |h| format!("epoch {}", h.epoch),
                            );
                            format!(
                                "another instance advanced the anchored head ({who}; this instance is at epoch {}): this copy of the state is stale or cloned. Nothing more is signed here.",
                                head.epoch
                            )
                        }
                    };
                    return Err(self.halt(why));
                }
            }
        }
    }

    /// Takes this anchor out of service for a re-anchoring (a new certificate, say): no more
    /// rounds, payments refused until the new anchor is in force. Returns the value this
    /// instance last wrote (or confirmed) and its head, which the new anchor replaces.
    pub async fn retire(&self) -> Option<(Vec<u8>, Head)> {
        self.close_and_wait().await;
        let mut st = self.st();
        if !matches!(st.phase, Phase::Halted(_)) {
            st.phase = Phase::Waiting(
                "re-anchoring in progress (or it failed: re-anchor again, or restart)".into(),
            );
        }
        st.last.map(|(h, _)| (self.encode(&h), h))
    }

    /// The enclave is stopping, or this anchor was replaced: later rounds fail at once, and
    /// background tasks stop. What rounds made durable locally is ahead of the anchored head,
    /// nothing of it released: the next start rolls it forward.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// [`Self::close`], then waits (up to [`ROUND_WAIT`] and a second) for a round talking to
    /// etcd to end: call it while the runtime still runs, before the enclave is dropped.
    pub async fn close_and_wait(&self) {
        self.close();
        let deadline = Instant::now() + ROUND_WAIT + Duration::from_secs(1);
        while self.in_round.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After a failed round: reads the head until etcd answers, then serves again if it holds
    /// what this instance last confirmed or an unconfirmed write of its own, else halts. One
    /// probe at a time; a round that changes what this instance knows meanwhile makes it read
    /// again rather than decide.
    fn probe(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        self.rt().spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if this.is_closed() {
                    break;
                }
                let before = {
                    let st = this.st();
                    if matches!(st.phase, Phase::Halted(_) | Phase::Serving) {
                        break;
                    }
                    st.last
                };
                let Ok(current) = this.kv.get(this.key()).await else { continue };
                let mut st = this.st();
                if matches!(st.phase, Phase::Halted(_) | Phase::Serving) {
                    break;
                }
                if st.last.map(|l| l.1) != before.map(|l| l.1) {
                    continue;
                }
                let Some(c) = current else {
                    drop(st);
                    let _ = this.halt(format!("the anchored head at {} was deleted while the anchor was unreachable. Nothing more is signed here; re-anchor deliberately", this.config.key));
                    break;
                };
                st.seen = Some(c.value.clone());
                let confirmed = before.is_some_and(|(_, rev)| rev == c.revision);
                let mine = st.unknown.contains(&c.value);
                if confirmed || mine {
                    if mine {
                        if let Ok(h) = this.decode(&c.value) {
                            st.last = Some((h, c.revision));
                        }
                    }
                    st.phase = Phase::Serving;
                    drop(st);
                    tracing::info!("anchor: reachable again; serving");
                } else {
                    drop(st);
                    let _ = this.halt("the anchored head changed while the anchor was unreachable: another instance advanced it. Nothing more is signed here.".into());
                }
                break;
            }
            this.probing.store(false, Ordering::SeqCst);
        });
    }

    /// Probes until the start-up check passes or halts (the anchor was unreachable at start).
    pub fn start_in_background(
        self: &Arc<Self>,
        local: impl Fn() -> Option<Local> + Send + 'static,
        verify: Verify,
    ) {
        let this = Arc::clone(self);
        self.rt().spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if this.is_closed() {
                    break;
                }
                let Some(l) = local() else { continue };
                match this.start_here(l, &verify).await {
                    Ok(()) => {
                        tracing::info!("anchor: start-up check passed");
                        break;
                    }
                    Err(StartError::Halted(_)) => break,
                    Err(StartError::Unavailable(why)) => {
                        this.st().phase = Phase::Waiting(format!("starting: {why}"));
                    }
                }
            }
        });
    }

    /// This instance's member id in shared budgets: the first 16 bytes of SHA-256 over a tag
    /// and the head's key (each member of a group has a head key of its own, so the id is
    /// stable across restarts and distinct between members).
    #[must_use]
    pub fn member(&self) -> [u8; 16] {
        use sha2::Digest as _;
        let h = sha2::Sha256::new()
            .chain_update(b"x402-wallet/member/v1\0")
            .chain_update(self.config.key.as_bytes())
            .finalize();
        let mut m = [0u8; 16];
        m.copy_from_slice(&h[..16]);
        m
    }

    /// The shared budgets' prefix, when this enclave shares its budgets with a group.
    #[must_use]
    pub fn shared_prefix(&self) -> Option<&str> {
        Some(self.config.shared_prefix.as_str()).filter(|p| !p.is_empty())
    }

    /// A shared value as stored at `key`: `bytes` ‖ HMAC-SHA-256 under the anchor MAC key over
    /// the binding of `key` (with the CA and server name) and `bytes`. Every member of a group
    /// holds the same MAC key (they run copies of one sealed state), so each reads what the
    /// others wrote; the anchor's operator can neither invent a value nor move one to another
    /// key.
    #[must_use]
    pub fn seal_shared(&self, key: &str, bytes: &[u8]) -> Vec<u8> {
        value::seal_shared(&self.mac_key, &self.shared_binding(key), bytes)
    }

    /// The bytes of a value [`Self::seal_shared`] wrote at `key`.
    ///
    /// # Errors
    /// [`value::ValueError`] when the MAC does not verify (not written by this group for this
    /// key).
    pub fn open_shared<'v>(
        &self,
        key: &str,
        stored: &'v [u8],
    ) -> Result<&'v [u8], value::ValueError> {
        value::open_shared(&self.mac_key, &self.shared_binding(key), stored)
    }

    fn shared_binding(&self, key: &str) -> [u8; 32] {
        value::binding(key, &self.config.ca_pem, &self.config.server_name)
    }

    /// Linearizable reads of shared keys, in order (`None`: absent).
    ///
    /// # Errors
    /// `ANCHOR_UNAVAILABLE` (with the reason code) when etcd did not answer within
    /// [`SHARED_WAIT`], or the anchor does not serve.
    pub async fn read_shared(
        self: &Arc<Self>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<etcd::Versioned>>, (Reason, String)> {
        self.gate()?;
        let this = Arc::clone(self);
        let keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
        self.on_io(async move {
            let deadline = Instant::now() + SHARED_WAIT;
            retry(deadline, || this.kv.get_all(&keys)).await
        })
        .await
        .map_err(|e| (Reason::AnchorUnavailable, unavailable(e)))?
        .map_err(|e| (Reason::AnchorUnavailable, unavailable(e)))
    }

    /// Writes shared keys in one etcd transaction guarded by this instance's head (an instance
    /// whose head another one superseded — a clone, a stale copy — takes nothing). Takes turns
    /// with the rounds. An error that may have committed is retried with the same compare; a
    /// conflict that shows every key holding the value this call wrote is that write, confirmed.
    ///
    /// # Errors
    /// `ANCHOR_UNAVAILABLE` when etcd did not confirm within [`SHARED_WAIT`] (the write may
    /// have committed: what it wrote stays counted, the caller must not use it), or the anchor
    /// does not serve; `ANCHOR_HALTED` when the head moved (another instance).
    pub async fn write_shared(
        self: &Arc<Self>,
        puts: Vec<etcd::Put>,
    ) -> Result<etcd::Multi, (Reason, String)> {
        self.gate()?;
        let this = Arc::clone(self);
        self.on_io(async move { this.write_shared_here(&puts).await })
            .await
            .map_err(|e| (Reason::AnchorUnavailable, unavailable(e)))?
    }

    async fn write_shared_here(&self, puts: &[etcd::Put]) -> Result<etcd::Multi, (Reason, String)> {
        let _turn = self.io.lock().await;
        let deadline = Instant::now() + SHARED_WAIT;
        let mut uncertain = false;
        loop {
            if self.is_closed() {
                return Err((
                    Reason::AnchorUnavailable,
                    unavailable("the anchor was replaced or stopped"),
                ));
            }
            let Some((_, head_rev)) = self.st().last else {
                return Err((
                    Reason::AnchorUnavailable,
                    unavailable("the anchor was not read at start-up"),
                ));
            };
            match self.kv.txn_put_all(self.key(), head_rev, puts).await {
                Ok(etcd::Multi::Committed(rev)) => return Ok(etcd::Multi::Committed(rev)),
                Ok(etcd::Multi::Conflict { guard, keys }) => {
                    let ours = keys
                        .iter()
                        .zip(puts)
                        .all(|(k, p)| k.as_ref().is_some_and(|k| k.value == p.value));
                    if uncertain && ours {
                        let rev = keys.iter().flatten().map(|k| k.revision).max().unwrap_or(0);
                        tracing::info!(revision = rev, "anchor: an unconfirmed write of shared budgets had committed; confirmed once");
                        return Ok(etcd::Multi::Committed(rev));
                    }
                    if guard.as_ref().map(|g| g.revision) != Some(head_rev) {
                        // Rounds take turns with this write: only another instance moves it.
                        return Err((Reason::AnchorHalted, halted(format!(
                            "the anchored head at {} moved under this instance (another instance advanced it): it takes no shared budget",
                            self.config.key
                        ))));
                    }
                    return Ok(etcd::Multi::Conflict { guard, keys });
                }
                Err(e)
                    if Instant::now() < deadline && !e.permission_denied && !self.is_closed() =>
                {
                    uncertain = true;
                    tracing::debug!(error = %e, "anchor: shared write not confirmed; retrying the same transaction");
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                Err(e) => return Err((Reason::AnchorUnavailable, unavailable(e))),
            }
        }
    }

    /// What `GetStatus` shows.
    #[must_use]
    pub fn info(&self) -> gw::AnchorInfo {
        let st = self.st();
        let (head, rev) = st.last.map_or((None, 0), |(h, r)| (Some(h), r));
        gw::AnchorInfo {
            configured: true,
            client_public_key: self.client_public_key.clone(),
            key: self.config.key.clone(),
            server_name: self.config.server_name.clone(),
            members: self.config.members,
            state: match &st.phase {
                Phase::Serving => "serving".into(),
                Phase::Waiting(why) => format!("waiting: {why}"),
                Phase::Halted(why) => format!("halted: {why}"),
            },
            epoch: head.map_or(0, |h| h.epoch),
            journal_records: head.map_or(0, |h| h.facts.journal_records),
            audit_records: head.map_or(0, |h| h.facts.audit_records),
            store_seq: head.map_or(0, |h| h.facts.store_seq),
            chain_hash: head.map_or_else(String::new, |h| hex::encode(h.chain)),
            revision: u64::try_from(rev).unwrap_or(0),
            head: head.map_or_else(String::new, |h| hex::encode(self.encode(&h))),
            rounds: st.rounds,
            etcd_head: st.seen.as_ref().map_or_else(String::new, hex::encode),
            shared_prefix: self.config.shared_prefix.clone(),
            member: hex::encode(self.member()),
            // The enclave fills in its local state.
            ..Default::default()
        }
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        // Dropping a runtime may block; this may run inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Where the anchor in force is kept: shared by the journal's round thread (which anchors every
/// round with it) and the enclave's flows (the gate, status, provisioning). Replaced only by
/// provisioning or re-anchoring.
#[derive(Debug, Clone, Default)]
pub struct AnchorCell(Arc<std::sync::RwLock<Option<Arc<Anchor>>>>);

impl AnchorCell {
    /// The anchor in force.
    #[must_use]
    pub fn get(&self) -> Option<Arc<Anchor>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `anchor` in force; the one it replaces is closed (its rounds fail from now on).
    pub fn set(&self, anchor: Arc<Anchor>) {
        let old = self.0.write().unwrap_or_else(PoisonError::into_inner).replace(anchor);
        if let Some(old) = old {
            old.close();
        }
    }
}

/// Calls `f` until it succeeds or `deadline` passes (then returns the last error).
async fn retry<T, F, Fut>(deadline: Instant, mut f: F) -> Result<T, etcd::EtcdError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd::EtcdError>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline && !e.permission_denied => {
                tracing::debug!(error = %e, "anchor: retrying");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The client key's PKCS#8 v1 DER (RFC 8410) for an Ed25519 seed.
#[must_use]
pub fn ed25519_pkcs8(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(48));
    v.extend_from_slice(&[
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ]);
    v.extend_from_slice(seed);
    v
}

/// The SubjectPublicKeyInfo DER (RFC 8410) of an Ed25519 public key.
#[must_use]
pub fn ed25519_spki(public: &[u8; 32]) -> Vec<u8> {
    let mut v = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    v.extend_from_slice(public);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_key_encodings_are_what_rustls_loads_and_certifies() {
        let seed = [42u8; 32];
        let pkcs8 = ed25519_pkcs8(&seed);
        let key = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8.to_vec().into()))
            .expect("an Ed25519 PKCS#8 key rustls signs with");
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let spki = key.public_key().expect("rustls derives the public key");
        assert_eq!(spki.as_ref(), ed25519_spki(&public).as_slice(), "the SPKI the CA certifies");
    }

    #[test]
    fn configurations_are_checked_and_failures_keep_their_reason() {
        let ok = AnchorConfig {
            ca_pem: String::new(),
            client_cert_pem: String::new(),
            server_name: "etcd.anchor.test".into(),
            key: "/x402-wallet/a/anchor/head".into(),
            members: 3,
            shared_prefix: String::new(),
        };
        assert!(ok.check().is_ok());
        assert!(AnchorConfig { shared_prefix: "/x402-wallet/shared/".into(), ..ok.clone() }
            .check()
            .is_ok());
        for bad in [
            AnchorConfig { key: "no-slash".into(), ..ok.clone() },
            AnchorConfig { key: "/head".into(), ..ok.clone() },
            AnchorConfig { key: "/a/".into(), ..ok.clone() },
            AnchorConfig { key: "/with space".into(), ..ok.clone() },
            AnchorConfig { key: format!("/{}", "k".repeat(MAX_KEY_LEN)), ..ok.clone() },
            AnchorConfig { members: 0, ..ok.clone() },
            AnchorConfig { members: MAX_MEMBERS + 1, ..ok.clone() },
            AnchorConfig { server_name: String::new(), ..ok.clone() },
            AnchorConfig { shared_prefix: "/x402-wallet/shared".into(), ..ok.clone() },
            AnchorConfig { shared_prefix: "/shared/".into(), ..ok.clone() },
            AnchorConfig { shared_prefix: "/x402-wallet/a/".into(), ..ok.clone() },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert_eq!(failure_reason(&unavailable("x")), Some(Reason::AnchorUnavailable));
        assert_eq!(failure_reason(&format!("flush: {}", halted("y"))), Some(Reason::AnchorHalted));
        assert_eq!(failure_reason("disk full"), None);
    }
}
