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
//!   epoch, the stores' durable counts, the audit chain's hash, a MAC) against the etcd
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
//!   again new payments and state changes are refused at once ([`Anchor::gate`]) instead of
//!   reserving budget they cannot use. There is no "bounded lag" mode, on purpose: a host that
//!   can make the enclave sign K payments ahead of the anchor can roll it back to the anchored
//!   head, let the start-up read through, and repeat — K per cycle, unbounded over cycles.
//! * **At start-up**, before the first signature ([`Anchor::start`]): a linearizable read of the
//!   head. Local state *behind* it (any count lower) is a rollback, local state of equal or
//!   greater counts whose audit chain does not pass through the anchored hash is a fork: both
//!   halt. Local state ahead and consistent (a crash after local sync, before the CAS: nothing of
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
}

impl AnchorConfig {
    /// Checks the shape of what an admin sent (the TLS material is checked by [`etcd::Kv::new`]).
    ///
    /// # Errors
    /// A sentence naming the bad field.
    pub fn check(&self) -> Result<(), String> {
        if self.key.is_empty()
            || self.key.len() > MAX_KEY_LEN
            || !self.key.starts_with('/')
            || !self.key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "anchor key must be 1 to {MAX_KEY_LEN} printable ASCII characters starting with '/'"
            ));
        }
        if self.members == 0 || self.members > MAX_MEMBERS {
            return Err(format!("anchor members must be 1 to {MAX_MEMBERS}"));
        }
        if self.server_name.is_empty() || self.server_name.len() > 253 {
            return Err("anchor server name must be a DNS name".into());
        }
        Ok(())
    }
}

/// What the local stores hold durably: the commit head's facts and the audit chain's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// The stores' durable counts.
    pub facts: Facts,
    /// The audit chain's hash after `facts.audit_records`.
    pub chain: [u8; 32],
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
}

/// The anchor of one enclave.
pub struct Anchor {
    config: AnchorConfig,
    kv: etcd::Kv,
    mac_key: Zeroizing<[u8; 32]>,
    client_public_key: String,
    /// The anchor's own runtime (one worker): every etcd exchange runs here, so rounds depend
    /// neither on how busy the enclave's runtime is nor on the order it shuts down in.
    runtime: Option<tokio::runtime::Runtime>,
    st: Mutex<St>,
    probing: std::sync::atomic::AtomicBool,
    /// Set when the enclave stops: rounds no longer reach etcd (the runtime is going away).
    closed: std::sync::atomic::AtomicBool,
    /// A round is talking to etcd (on the runtime; [`Self::close`] waits for it).
    in_round: std::sync::atomic::AtomicBool,
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

impl Anchor {
    /// Builds the anchor (no connection yet) in [`Phase::Waiting`], with its own runtime.
    ///
    /// # Errors
    /// A sentence when the configuration or the TLS material cannot be used.
    pub fn new(
        config: AnchorConfig,
        setup: etcd::ClientSetup,
        client_public_key: String,
        mac_key: Zeroizing<[u8; 32]>,
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
            config,
            kv,
            mac_key,
            client_public_key,
            runtime: Some(runtime),
            st: Mutex::new(St {
                last: None,
                phase: Phase::Waiting("starting: the anchor has not been read yet".into()),
                unknown: Vec::new(),
                rounds: 0,
            }),
            probing: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            in_round: std::sync::atomic::AtomicBool::new(false),
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

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &AnchorConfig {
        &self.config
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

    fn decode(&self, v: &etcd::Versioned) -> Result<Head, value::ValueError> {
        Head::decode(&v.value, &self.mac_key, self.key())
    }

    /// The start-up check (see the module docs): a linearizable read, the comparison with
    /// `local`, and the epoch bump that fences any other instance. `chain_at(n)` is the local
    /// audit chain's hash after `n` records (`None`: fewer records, or unreadable).
    ///
    /// # Errors
    /// [`StartError::Unavailable`] when etcd did not answer in time (the caller probes again);
    /// [`StartError::Halted`] when the state must not be served (the phase is then halted).
    pub async fn start(
        self: &Arc<Self>,
        local: Local,
        chain_at: ChainAt,
    ) -> Result<(), StartError> {
        let this = Arc::clone(self);
        self.on_io(async move { this.start_here(local, &*chain_at).await })
            .await
            .map_err(StartError::Unavailable)?
    }

    async fn start_here(
        &self,
        local: Local,
        chain_at: &(dyn Fn(u64) -> Option<[u8; 32]> + Send + Sync),
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + ROUND_WAIT;
        // Two tries: a conflict on the bump means someone wrote between the read and the CAS.
        for _ in 0..2 {
            let current = retry(deadline, || self.kv.get(self.key()))
                .await
                .map_err(|e| StartError::Unavailable(e.to_string()))?;
            let Some(current) = current else {
                let why = format!("the anchor holds no head at {}: it was lost, or never provisioned for this enclave. Nothing is signed. If the anchor was lost, re-anchor deliberately (walletctl anchor provision --reanchor)", self.config.key);
                return Err(StartError::Halted(self.halt_silently(why)));
            };
            let anchored = match self.decode(&current) {
                Ok(h) => h,
                Err(e) => {
                    return Err(StartError::Halted(
                        self.halt_silently(format!("{e} (at {})", self.config.key)),
                    ))
                }
            };
            let (a, l) = (anchored.facts, local.facts);
            if l.journal_records < a.journal_records
                || l.audit_records < a.audit_records
                || l.store_seq < a.store_seq
            {
                let why = format!(
                    "ROLLED BACK: the local state is behind the anchored head (local: {} spend records, {} audit records, state batch {}; anchored at epoch {}: {}, {}, {}). The host restored an older copy of the state, or this is a stale clone. Nothing is signed.",
                    l.journal_records, l.audit_records, l.store_seq,
                    anchored.epoch, a.journal_records, a.audit_records, a.store_seq
                );
                return Err(StartError::Halted(self.halt_silently(why)));
            }
            if chain_at(a.audit_records) != Some(anchored.chain) {
                let why = format!(
                    "FORKED: the local audit chain does not pass through the anchored head (audit record {} differs from what was anchored at epoch {}): another instance wrote a different history. Nothing is signed.",
                    a.audit_records, anchored.epoch
                );
                return Err(StartError::Halted(self.halt_silently(why)));
            }
            let bumped =
                Head { epoch: anchored.epoch.saturating_add(1), facts: l, chain: local.chain };
            let value = bumped.encode(&self.mac_key, self.key());
            match retry(deadline, || self.kv.cas(self.key(), Some(current.revision), &value)).await
            {
                Ok(etcd::Cas::Committed(rev)) => {
                    let mut st = self.st();
                    st.last = Some((bumped, rev));
                    st.phase = Phase::Serving;
                    tracing::info!(
                        epoch = bumped.epoch,
                        journal = l.journal_records,
                        audit = l.audit_records,
                        rolled_forward = (l != a),
                        "anchor: head verified and epoch bumped; serving"
                    );
                    return Ok(());
                }
                Ok(etcd::Cas::Conflict(Some(now))) if now.value == value => {
                    let mut st = self.st();
                    st.last = Some((bumped, now.revision));
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

    /// Provisioning (and re-anchoring): writes the first head for `local` with `epoch`, only if
    /// the key is absent (`replace: None`) or holds exactly `replace`.
    ///
    /// # Errors
    /// A sentence: the key holds another head, or etcd did not confirm.
    pub async fn create(
        self: &Arc<Self>,
        local: Local,
        epoch: u64,
        replace: Option<Vec<u8>>,
    ) -> Result<Head, String> {
        let this = Arc::clone(self);
        self.on_io(async move { this.create_here(local, epoch, replace.as_deref()).await }).await?
    }

    async fn create_here(
        &self,
        local: Local,
        epoch: u64,
        replace: Option<&[u8]>,
    ) -> Result<Head, String> {
        let deadline = Instant::now() + ROUND_WAIT;
        let expected = match replace {
            None => None,
            Some(old) => {
                let current =
                    retry(deadline, || self.kv.get(self.key())).await.map_err(unavailable)?;
                match current {
                    Some(c) if c.value == old => Some(c.revision),
                    Some(_) => return Err(format!("the anchor's head at {} is not the one named to replace (it changed, or another enclave writes there)", self.config.key)),
                    None => return Err(format!("the anchor holds no head at {}: re-anchor without --replace-head", self.config.key)),
                }
            }
        };
        let head = Head { epoch, facts: local.facts, chain: local.chain };
        let value = head.encode(&self.mac_key, self.key());
        match retry(deadline, || self.kv.cas(self.key(), expected, &value)).await.map_err(unavailable)? {
            etcd::Cas::Committed(rev) => {
                let mut st = self.st();
                st.last = Some((head, rev));
                st.phase = Phase::Serving;
                Ok(head)
            }
            etcd::Cas::Conflict(Some(now)) if now.value == value => {
                let mut st = self.st();
                st.last = Some((head, now.revision));
                st.phase = Phase::Serving;
                Ok(head)
            }
            etcd::Cas::Conflict(Some(_)) => Err(format!("the anchor already holds a head at {} (another enclave's, or an earlier provisioning's): choose another key, or re-anchor naming it (--reanchor --replace-head HEX)", self.config.key)),
            etcd::Cas::Conflict(None) => Err(format!("the anchor holds no head at {} any more", self.config.key)),
        }
    }

    /// One durability round's anchoring (blocking; called by the journal's round thread, never
    /// on the runtime): compare-and-swap the head to `local`. Returns once etcd confirmed.
    ///
    /// # Errors
    /// `ANCHOR_UNAVAILABLE: …` when etcd did not confirm within [`ROUND_WAIT`] (the phase turns
    /// to waiting and a probe starts); `ANCHOR_HALTED: …` when another instance advanced the
    /// head.
    pub fn round(self: &Arc<Self>, local: Local) -> Result<(), String> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(unavailable("the enclave is stopping"));
        }
        use std::sync::atomic::Ordering;
        self.in_round.store(true, Ordering::SeqCst);
        // Checked again after marking the round: `close` either sees it or it sees `closed`.
        let result = if self.closed.load(Ordering::SeqCst) {
            Err(unavailable("the enclave is stopping"))
        } else {
            let this = Arc::clone(self);
            self.rt().block_on(async move { this.advance(local).await })
        };
        self.in_round.store(false, Ordering::SeqCst);
        result
    }

    async fn advance(self: &Arc<Self>, local: Local) -> Result<(), String> {
        let deadline = Instant::now() + ROUND_WAIT;
        loop {
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(unavailable("the enclave is stopping"));
            }
            let (mut head, mut rev) = {
                let st = self.st();
                match &st.phase {
                    Phase::Halted(why) => return Err(halted(why)),
                    Phase::Waiting(_) | Phase::Serving => {}
                }
                match st.last {
                    Some(last) => last,
                    None => return Err(unavailable("the anchor was not read at start-up")),
                }
            };
            if head.facts == local.facts && head.chain == local.chain {
                return Ok(());
            }
            let next = Head { epoch: head.epoch, facts: local.facts, chain: local.chain };
            let value = next.encode(&self.mac_key, self.key());
            let outcome = loop {
                match self.kv.cas(self.key(), Some(rev), &value).await {
                    Ok(o) => break o,
                    Err(e) if Instant::now() < deadline => {
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
                        if st.unknown.len() > 16 {
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
                    // An attempt that "failed" had committed.
                    tracing::info!(revision = now.revision, "anchor: an unconfirmed attempt had committed (its own value is the head); confirmed once");
                    let mut st = self.st();
                    st.last = Some((next, now.revision));
                    st.rounds += 1;
                    st.unknown.clear();
                    return Ok(());
                }
                etcd::Cas::Conflict(Some(now)) if self.st().unknown.contains(&now.value) => {
                    // An earlier round's unconfirmed write did commit: continue from it.
                    match self.decode(&now) {
                        Ok(h) => {
                            head = h;
                            rev = now.revision;
                            self.st().last = Some((head, rev));
                        }
                        Err(e) => return Err(self.halt(format!("{e}"))),
                    }
                }
                etcd::Cas::Conflict(now) => {
                    let who = now.as_ref().and_then(|v| self.decode(v).ok()).map_or_else(
                        || "a value this enclave did not write".to_owned(),
                        |h| format!("epoch {}", h.epoch),
                    );
                    return Err(self.halt(format!(
                        "another instance advanced the anchored head ({who}; this instance is at epoch {}): this copy of the state is stale or cloned. Nothing more is signed here.",
                        head.epoch
                    )));
                }
            }
        }
    }

    /// The enclave is stopping: later rounds fail at once instead of waiting for etcd on a
    /// runtime that is going away. What they made durable locally is ahead of the anchored
    /// head, nothing of it released: the next start rolls it forward.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// [`Self::close`], then waits (up to [`ROUND_WAIT`] and a second) for a round talking to
    /// etcd to end: call it while the runtime still runs, before the enclave is dropped — a round
    /// blocked on a runtime that has stopped would never end.
    pub async fn close_and_wait(&self) {
        self.close();
        let deadline = Instant::now() + ROUND_WAIT + Duration::from_secs(1);
        while self.in_round.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After a failed round: reads the head until etcd answers, then serves again (or halts if
    /// someone else advanced it). One probe at a time.
    fn probe(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        self.rt().spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if matches!(this.st().phase, Phase::Halted(_)) {
                    break;
                }
                let Ok(current) = this.kv.get(this.key()).await else { continue };
                let mut st = this.st();
                let ours = match (&current, st.last) {
                    (Some(c), Some((_, rev))) if c.revision == rev => true,
                    (Some(c), _) => st.unknown.contains(&c.value),
                    (None, _) => false,
                };
                if ours {
                    if let Some(c) = &current {
                        if let Ok(h) = Head::decode(&c.value, &this.mac_key, this.key()) {
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
        chain_at: ChainAt,
        on_serving: impl FnOnce() + Send + 'static,
    ) {
        let this = Arc::clone(self);
        self.rt().spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(l) = local() else { continue };
                match this.start_here(l, &*chain_at).await {
                    Ok(()) => {
                        on_serving();
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
            head: head
                .map_or_else(String::new, |h| hex::encode(h.encode(&self.mac_key, self.key()))),
            rounds: st.rounds,
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

/// The local audit chain's hash after `n` records (`None`: fewer, or unreadable).
pub type ChainAt = Arc<dyn Fn(u64) -> Option<[u8; 32]> + Send + Sync>;

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
