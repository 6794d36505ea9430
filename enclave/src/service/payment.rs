//! The payment path: one request, top to bottom. The stages and their invariants are named in
//! [`super::ledger`]; each step below takes the proof the step before it made.
//!
//! 1. **authenticate** ([`Enclave::authenticate`]): the session's signature, freshness, the
//!    nonce used once → [`Authenticated`];
//! 2. **decode** what the enclave will sign for — an x402 v2 `PAYMENT-REQUIRED` value or an
//!    x402 v1 402 body — and the request's network preference → [`Decoded`];
//! 3. **decide and reserve** under the state lock: an idempotent replay of a posted spend, a
//!    wait for the same request in flight, a hold for a human's approval, a denial, or the
//!    charge reserved → [`Reservation`];
//! 4. **sign** ([`ledger::sign`]) and write the audit line → [`ledger::SignedSpend`];
//! 5. **make durable** ([`ledger::post`]) → [`ledger::DurableSpend`];
//! 6. **release or withhold**: revocation and freeze re-checked under the lock, then the
//!    response made from the durable spend — or the spend withheld for good.
//!
//! A crash anywhere loses no money: before step 5 completes the spend is either durable
//! (counted on restart; its signature perhaps never released) or not, and then no signature
//! left.

use std::sync::{atomic::Ordering, Arc};

use alloy_primitives::U256;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use wallet_policy::{
    amount::format_decimal, audit::Record as AuditRecord, rules, x402::PaymentRequired,
};
use wallet_proto::{enclave::v1::ErrorCode, gateway::v1 as gw, Reason};

use super::{
    auth::Authenticated,
    idempotency::{IdemEntry, IdemKey, Stage},
    ledger::{self, DurableSpend, SignContext, SignedSpend},
    records::{ApprovalRecord, HoldState},
    sharing,
    state::Inner,
    Enclave, Failure, Result,
};
use crate::{
    keys::WalletKey,
    platform::{Entropy, UnixMillis},
};

impl Enclave {
    /// Handles `SignPayment` (the module docs give the steps).
    ///
    /// # Errors
    /// A [`Failure`] with its [`Reason`]; nothing is charged unless a signature may still be
    /// released.
    pub async fn sign_payment(&self, r: gw::SignPaymentRequest) -> Result<gw::SignPaymentResponse> {
        // 1. Authenticate: the session's signature, freshness, the nonce used once.
        let authenticated = self.authenticate(r).await?;
        // 2. Decode what the server asks for.
        let payment = Decoded::new(authenticated)?;
        // 3. Decide and reserve under the state lock (or answer a replay, or hold, or deny).
        let reservation = match self.decide_and_reserve(&payment).await? {
            Decision::Replay(posted) => {
                let spend = ledger::read_back(
                    &*self.spend_log,
                    &posted,
                    payment.session_id(),
                    &payment.key.1,
                    &payment.hash,
                )
                .map_err(|e| {
                    tracing::error!(error = %e, "a retry's spend record could not be read back");
                    Failure::internal(
                        "this payment's record could not be read back from the spend journal (the host changed or lost it); nothing was released",
                    )
                })?;
                return Ok(replayed(&spend));
            }
            Decision::Reserved(reservation) => *reservation,
        };
        // 4. Sign.
        let signed = self.sign_reserved(&payment, &reservation)?;
        // 5. Make durable.
        let durable = ledger::post(&*self.spend_log, signed).await?;
        self.snapshot_if_due(durable.record().index + 1);
        // 6. Release, or withhold if revoked or frozen meanwhile.
        self.release_or_withhold(&payment, reservation, durable).await
    }
}

/// Step 2's result: the authenticated request and what it asks for.
#[derive(Debug)]
pub(crate) struct Decoded {
    auth: Authenticated,
    /// x402 v2 (`PAYMENT-REQUIRED` value) or v1 (402 body): see `wallet_policy::x402`.
    required: PaymentRequired,
    /// The network preference as a CAIP-2 id (a v1 name mapped by the official table).
    preferred_network: Option<String>,
    /// What an idempotency key is bound to: the header bytes and the preferences.
    hash: [u8; 32],
    key: IdemKey,
}

impl Decoded {
    /// Decodes the payment requirements (`payment_required`: the JSON itself when it starts
    /// with `{` — an x402 v1 402 body or a v2 `PaymentRequired` — else the base64
    /// `PAYMENT-REQUIRED` value) and reads the network preference. A preference the wallet
    /// cannot read is refused here (`INVALID_ARGUMENT`), never ignored: the request is the
    /// agent's, signed by its session key, so this is where it is enforced.
    fn new(auth: Authenticated) -> Result<Self> {
        let r = auth.request();
        let (required, preferred_network) =
            super::agent::read_payment_ask(&r.payment_required, &r.preferred_network)?;
        let hash: [u8; 32] = Sha256::new()
            .chain_update(b"idem/v1\0")
            .chain_update((r.payment_required.len() as u64).to_be_bytes())
            .chain_update(r.payment_required.as_bytes())
            .chain_update((r.preferred_network.len() as u64).to_be_bytes())
            .chain_update(r.preferred_network.as_bytes())
            .chain_update(r.preferred_asset.as_bytes())
            .finalize()
            .into();
        let key = (r.session_id.clone(), r.idempotency_key.clone());
        Ok(Self { auth, required, preferred_network, hash, key })
    }
    fn session_id(&self) -> &str {
        &self.auth.request().session_id
    }
    fn now(&self) -> UnixMillis {
        self.auth.now()
    }
}

/// A charge reserved under the state lock (step 3): the only input [`ledger::sign`] takes.
/// While it lives, its idempotency key is "reserved"; dropped without being settled (signing or
/// durability failed), the key is marked failed and the charge stays (fail closed).
#[derive(Debug)]
pub(crate) struct Reservation<'e> {
    /// What was charged.
    pub charge: Charge,
    /// The approved hold this payment is the retry of.
    hold: Option<String>,
    in_flight: InFlight<'e>,
}

/// What the decision allowed and charged.
#[derive(Debug)]
pub(crate) struct Charge {
    /// What the policy allowed.
    pub approval: rules::Approval,
    /// The wallet's key.
    pub key: Arc<WalletKey>,
    /// The asset's EIP-712 domain separator (registry).
    pub domain: ledger::Domain,
    /// The paying wallet.
    pub wallet_id: String,
    /// The session's total and cap after this charge, token units.
    pub session_spent: U256,
    pub session_cap: U256,
}

/// The idempotency key of a reserved payment until it settles.
#[derive(Debug)]
struct InFlight<'e> {
    enclave: &'e Enclave,
    key: IdemKey,
    hash: [u8; 32],
    at: UnixMillis,
    done: watch::Sender<bool>,
    settled: bool,
}

impl InFlight<'_> {
    /// Settles the key at `stage` and wakes retries waiting on it.
    fn settle(mut self, stage: Stage) {
        self.enclave.lock().idem.settle(self.key.clone(), IdemEntry { hash: self.hash, stage });
        self.settled = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.settled {
            // Signing or durability failed: the record may be on disk. Fail closed.
            let stage = Stage::Failed { at: self.at };
            self.enclave.lock().idem.settle(self.key.clone(), IdemEntry { hash: self.hash, stage });
        }
        let _ = self.done.send(true);
    }
}

/// What step 3 came to.
enum Decision<'e> {
    /// The key's spend is posted: answer with it again.
    Replay(ledger::Posted),
    /// Charged: sign it.
    Reserved(Box<Reservation<'e>>),
}

/// The answer to an idempotent retry: the posted spend's response, marked as a replay.
fn replayed(spend: &DurableSpend) -> gw::SignPaymentResponse {
    let mut resp = spend.response();
    resp.replayed = true;
    resp
}

/// What the lock-held part of step 3 decided.
enum Next {
    Reserve,
    Wait(watch::Receiver<bool>),
    Hold(Box<ApprovalRecord>),
    Grants { needs: sharing::Needs, charge: U256, generation: u64 },
}

/// What [`reserve`] decided.
#[allow(clippy::large_enum_variant)] // made once per payment, moved once
enum Reserved {
    Charge(Charge, watch::Sender<bool>),
    Hold(Box<ApprovalRecord>),
    /// A shared wallet: this member's grants do not cover the charge; take grants for these
    /// scopes and decide again, or, if the books have no room, the denial stands.
    NeedGrants {
        needs: sharing::Needs,
        charge: U256,
        /// The grants' generation when decided (a policy change since voids what is taken).
        generation: u64,
    },
}

/// Whether the wallet's budgets are shared with a group ([`sharing`]), and whether the payment
/// may still take grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shared {
    No,
    Yes { may_take: bool, now_ms: u64 },
}

/// How many times a payment on a shared wallet takes grants and decides again before its
/// denial stands (a grant it took may be used up by concurrent payments meanwhile).
const GRANT_ROUNDS: usize = 4;

impl Enclave {
    /// Step 3: idempotency, then the decision and the reservation, atomically.
    async fn decide_and_reserve<'e>(&'e self, p: &Decoded) -> Result<Decision<'e>> {
        let now = p.now();
        let mut approved_hold: Option<ApprovalRecord> = None;
        let shared = self.sharing();
        let mut grant_rounds = 0;
        loop {
            let next = {
                let mut inner = self.lock();
                inner.idem.prune(now, self.idem_ttl_ms.load(Ordering::Relaxed));
                let next = match inner.idem.get(&p.key) {
                    None => Next::Reserve,
                    Some(e) if e.hash != p.hash => {
                        return Err(Failure::precondition(
                            Reason::IdempotencyConflict,
                            "idempotency key was already used for a different request",
                        ));
                    }
                    Some(e) => match &e.stage {
                        Stage::Posted(posted) => {
                            // A replay is a release too: revocation and freeze apply to it.
                            check_release(&inner, p.session_id(), &posted.wallet_id)?;
                            return Ok(Decision::Replay(posted.clone()));
                        }
                        Stage::Withheld { reason, .. } => {
                            return Err(Failure::denied(
                                *reason,
                                "this payment's signature was withheld (revoked or frozen in flight) and is never released",
                            ));
                        }
                        Stage::Failed { .. } => {
                            return Err(Failure::new(
                                ErrorCode::Aborted,
                                Reason::IdempotencyKeyFailed,
                                "an earlier attempt with this idempotency key failed after its spend may have been recorded; use a new key",
                            ));
                        }
                        Stage::Held { approval_id } => {
                            let hold = inner
                                .approvals
                                .get(approval_id)
                                .ok_or_else(|| Failure::internal("approval record missing"))?;
                            super::approvals::check_hold(hold, now)?;
                            approved_hold = Some(hold.clone());
                            Next::Reserve
                        }
                        Stage::Reserved { done } => Next::Wait(done.clone()),
                    },
                };
                match next {
                    Next::Wait(_) | Next::Hold(_) | Next::Grants { .. } => next,
                    Next::Reserve => {
                        // Grants are spent at the time of the decision, on the clock that never
                        // goes back (the request's authentication may be long past by now).
                        let sharing = match shared {
                            None => Shared::No,
                            Some(_) => Shared::Yes {
                                may_take: grant_rounds < GRANT_ROUNDS,
                                now_ms: self.monotonic_now().as_millis(),
                            },
                        };
                        match reserve(&mut inner, p, approved_hold.as_ref(), &self.entropy, sharing)
                        {
                            Ok(Reserved::Charge(charge, done)) => {
                                return Ok(Decision::Reserved(Box::new(Reservation {
                                    charge,
                                    hold: approved_hold.map(|h| h.id),
                                    in_flight: InFlight {
                                        enclave: self,
                                        key: p.key.clone(),
                                        hash: p.hash,
                                        at: now,
                                        done,
                                        settled: false,
                                    },
                                })));
                            }
                            Ok(Reserved::Hold(hold)) => Next::Hold(hold),
                            Ok(Reserved::NeedGrants { needs, charge, generation }) => {
                                Next::Grants { needs, charge, generation }
                            }
                            Err(f) => {
                                if f.code == ErrorCode::Denied {
                                    let wallet = inner
                                        .sessions
                                        .get(p.session_id())
                                        .map(|s| s.record.wallet_id.clone())
                                        .unwrap_or_default();
                                    drop(inner);
                                    self.audit_denial(now, p.session_id(), &wallet, &f);
                                }
                                return Err(f);
                            }
                        }
                    }
                }
            };
            let mut rx = match next {
                Next::Wait(rx) => rx,
                Next::Hold(hold) => return Err(self.hold(*hold).await),
                Next::Grants { needs, charge, generation } => {
                    grant_rounds += 1;
                    let anchor = shared
                        .as_ref()
                        .ok_or_else(|| Failure::internal("grants asked for without sharing"))?;
                    match self
                        .take_grants(anchor, &needs, charge, now.as_millis(), generation)
                        .await?
                    {
                        sharing::Taken::Granted => {}
                        // The books have no room: decide once more on the grants as they are,
                        // without taking more, so the denial names the limit that binds.
                        sharing::Taken::Exhausted => grant_rounds = GRANT_ROUNDS,
                        sharing::Taken::Closed(scope) => {
                            let (f, wallet) = match scope {
                                sharing::Scope::Session(_) => (
                                    Failure::denied(Reason::SessionRevoked, "the session was revoked (at a member of this wallet's group)"),
                                    needs.wallet_id().unwrap_or_default(),
                                ),
                                sharing::Scope::Wallet(w) | sharing::Scope::Payee(w, _) => (
                                    Failure::denied(Reason::WalletFrozen, "the wallet is frozen (at a member of its group)"),
                                    w,
                                ),
                            };
                            self.audit_denial(now, p.session_id(), &wallet, &f);
                            return Err(f);
                        }
                    }
                    continue;
                }
                Next::Reserve => unreachable!("a reservation returns above. qed"),
            };
            // The same request is in flight under this key: wait for it, then look again.
            if rx.wait_for(|d| *d).await.is_err() {
                return Err(Failure::new(
                    ErrorCode::Aborted,
                    Reason::IdempotencyInProgress,
                    "the earlier attempt with this key did not finish; retry",
                ));
            }
        }
    }

    /// Step 4: sign the reserved payment; its audit line rides on the spend's durability round.
    fn sign_reserved(&self, p: &Decoded, r: &Reservation<'_>) -> Result<SignedSpend> {
        let req = p.auth.request();
        let payment_id = payment_id(&req.session_id, &req.idempotency_key);
        let cx = SignContext {
            required: &p.required,
            session_id: &req.session_id,
            idempotency_key: &req.idempotency_key,
            request_hash: p.hash,
            payment_id: &payment_id,
            seq: self.spend_seq.fetch_add(1, Ordering::SeqCst),
            now: p.now(),
            session_spent: r.charge.session_spent,
            session_cap: r.charge.session_cap,
        };
        let (signed, nonce) = ledger::sign(r, &cx).map_err(Failure::internal)?;
        self.audit
            .append(AuditRecord {
                at_ms: p.now().as_millis(),
                kind: "payment".into(),
                session: req.session_id.clone(),
                wallet: signed.wallet_id().to_owned(),
                detail: signed.audit_detail(&nonce),
                ..Default::default()
            })
            .map_err(|e| Failure::internal(format!("audit: {e}")))?;
        Ok(signed)
    }

    /// Step 6: revocation and freeze are final, so they are checked again now; then the
    /// signature is released, or withheld for good (durably: a retry after a restart or an
    /// unfreeze must not release it either).
    async fn release_or_withhold(
        &self,
        p: &Decoded,
        reservation: Reservation<'_>,
        durable: DurableSpend,
    ) -> Result<gw::SignPaymentResponse> {
        let Reservation { in_flight, hold, .. } = reservation;
        let check = check_release(&self.lock(), p.session_id(), durable.wallet_id());
        match check {
            Ok(()) => {
                let resp = durable.response();
                in_flight.settle(Stage::Posted(durable.posted()));
                if let Some(id) = hold {
                    self.mark_hold_used(&id).await;
                }
                self.signed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(session = %p.session_id(), network = %resp.network, amount = %resp.amount, "payment signed");
                Ok(resp)
            }
            Err(denial) => {
                let now = p.now();
                let recorded =
                    ledger::withhold(&*self.spend_log, &durable, denial.reason, now).await;
                in_flight.settle(match recorded {
                    Ok(()) => Stage::Withheld { reason: denial.reason, at: now },
                    Err(e) => {
                        tracing::error!(error = %e, "could not record a withheld spend");
                        Stage::Failed { at: now }
                    }
                });
                tracing::info!(session = %p.session_id(), reason = %denial.reason, "signature withheld");
                self.audit_withheld(
                    p.session_id(),
                    durable.wallet_id(),
                    &denial,
                    &p.auth.request().idempotency_key,
                )
                .await;
                Err(Failure {
                    message:
                        "revoked or frozen while the payment was in flight; signature withheld"
                            .into(),
                    ..denial
                })
            }
        }
    }
}

/// Whether a signature may leave now: session not revoked, wallet not frozen.
pub(super) fn check_release(inner: &Inner, session_id: &str, wallet_id: &str) -> Result<()> {
    let session = inner
        .sessions
        .get(session_id)
        .ok_or_else(|| Failure::unauthenticated(Reason::UnknownSession, "unknown session"))?;
    if session.record.revoked {
        return Err(Failure::denied(Reason::SessionRevoked, "the session was revoked"));
    }
    if inner.wallets.get(wallet_id).is_none_or(|w| w.record.frozen) {
        return Err(Failure::denied(Reason::WalletFrozen, "the wallet is frozen"));
    }
    Ok(())
}

/// The decision (`wallet_policy::rules::choose`) and the reservation, under the state lock:
/// the charge is added to the session's total and to the windows of the session, the wallet
/// and the payee — or the payment is held for approval. `approved` is the approved hold this
/// request is the retry of: it may sign only the option the human saw.
fn reserve(
    inner: &mut Inner,
    p: &Decoded,
    approved: Option<&ApprovalRecord>,
    entropy: &Entropy,
    shared: Shared,
) -> Result<Reserved> {
    // The grants sit beside the state the decision borrows.
    let mut grants = std::mem::take(&mut inner.grants);
    let out = reserve_with(inner, &mut grants, p, approved, entropy, shared);
    inner.grants = grants;
    out
}

/// Whether a denial is a limit that more of the shared budgets could lift.
fn is_budget(reason: rules::DenyReason) -> bool {
    use rules::DenyReason as D;
    matches!(
        reason,
        D::SessionCap | D::SessionBudget | D::WalletBudget | D::PayeeCap | D::RateLimited
    )
}

fn reserve_with(
    inner: &mut Inner,
    grants: &mut sharing::Grants,
    p: &Decoded,
    approved: Option<&ApprovalRecord>,
    entropy: &Entropy,
    shared: Shared,
) -> Result<Reserved> {
    let now = p.now();
    let r = p.auth.request();
    let mut d = super::agent::decision_inputs(inner, &r.session_id, now, approved.is_some())?;
    let only_held;
    let options = match approved {
        Some(hold) => {
            let option = p
                .required
                .accepts
                .get(hold.accepted_index)
                .ok_or_else(|| Failure::internal("held option missing"))?;
            only_held = PaymentRequired { accepts: vec![option.clone()], ..p.required.clone() };
            &only_held
        }
        None => &p.required,
    };
    let cap = super::agent::effective_cap(d.session, d.policy);
    let (preferred_network, preferred_asset) =
        (p.preferred_network.as_deref(), p.auth.preferred_asset());
    // A shared wallet decides on this member's grants; without a policy nothing is charged
    // (the decision denies), so there is nothing to share.
    let (shared_policy, grants_now_ms) = match (shared, d.policy) {
        (Shared::Yes { may_take, now_ms }, Some(policy)) => (Some((may_take, policy)), now_ms),
        _ => (None, 0),
    };
    let mut decision = match shared_policy {
        None => rules::choose(&d.ctx, &mut d.ledger, options, preferred_network, preferred_asset),
        Some((may_take, policy)) => {
            let mut ledger = sharing::SharedLedger {
                local: wallet_policy::window::ScopeLedger {
                    wallet: &mut *d.ledger.wallet,
                    session: &mut *d.ledger.session,
                },
                grants: &*grants,
                policy,
                session: sharing::Scope::Session(r.session_id.clone()),
                wallet: sharing::Scope::Wallet(d.wallet.record.id.clone()),
                wallet_id: &d.wallet.record.id,
                now_ms: grants_now_ms,
            };
            let mut ctx = d.ctx;
            ctx.session.spent = ledger.session_spent(cap);
            match rules::choose(&ctx, &mut ledger, options, preferred_network, preferred_asset) {
                Err(denial) if may_take && is_budget(denial.reason) => {
                    // What this payment would charge, and to whom, were the budgets open: the
                    // grants to take for it.
                    let mut open = ctx;
                    open.session.spent = U256::ZERO;
                    let mut empty = rules::EmptyLedger;
                    match rules::choose(
                        &open,
                        &mut empty,
                        options,
                        preferred_network,
                        preferred_asset,
                    ) {
                        Ok(a) => {
                            let needs =
                                sharing::needs(policy, d.session, cap, Some(a.requirement.pay_to));
                            return Ok(Reserved::NeedGrants {
                                needs,
                                charge: a.charge,
                                generation: grants.generation(),
                            });
                        }
                        Err(_) => Err(denial),
                    }
                }
                other => other,
            }
        }
    }
    .inspect_err(|e| {
        tracing::debug!(session = %r.session_id, reason = e.reason.code(), "payment denied");
    })?;
    if let Some(hold) = approved {
        decision.index = hold.accepted_index;
    }
    let wallet_id = d.wallet.record.id.clone();
    if let Some(reason) = decision.hold.clone() {
        let hold_ms = d.policy.map_or(0, |p| p.approval.expires_seconds).saturating_mul(1000);
        let req = &decision.requirement;
        let hold = ApprovalRecord {
            id: super::random_id(entropy, "ap_"),
            wallet_id,
            session_id: r.session_id.clone(),
            idempotency_key: r.idempotency_key.clone(),
            request_hash: hex::encode(p.hash),
            network: req.network.clone(),
            asset: req.asset,
            asset_symbol: decision.asset.symbol.clone(),
            pay_to: req.pay_to,
            amount: format_decimal(req.amount, decision.asset.decimals),
            reason,
            state: HoldState::Pending,
            created_ms: now.as_millis(),
            expires_ms: now.as_millis().saturating_add(hold_ms),
            hold_ms,
            decided_by: String::new(),
            note: String::new(),
            accepted_index: decision.index,
        };
        inner.idem.start(
            p.key.clone(),
            IdemEntry { hash: p.hash, stage: Stage::Held { approval_id: hold.id.clone() } },
        );
        inner.approvals.insert(hold.id.clone(), hold.clone());
        return Ok(Reserved::Hold(Box::new(hold)));
    }
    // A shared wallet: the scopes the payment draws on, computed once (checked here, charged
    // below).
    let mut shared_needs = None;
    if let Some((may_take, policy)) = shared_policy {
        // Every scope the payment draws on needs a grant, limited or not: the wallet's book
        // also carries its freeze for the group.
        let needs = sharing::needs(policy, d.session, cap, Some(decision.requirement.pay_to));
        if !needs.scopes.iter().all(|(s, _)| grants.covers(s, grants_now_ms, decision.charge)) {
            if may_take {
                return Ok(Reserved::NeedGrants {
                    needs,
                    charge: decision.charge,
                    generation: grants.generation(),
                });
            }
            return Err(Failure::precondition(
                Reason::AnchorUnavailable,
                "the grants of the shared budgets this payment needs could not be kept long enough to use them; retry",
            ));
        }
        shared_needs = Some(needs);
    }
    let key = Arc::clone(&d.wallet.key);
    let domain = *d
        .registry
        .domains
        .get(&(decision.asset.network.clone(), decision.asset.address))
        .ok_or_else(|| Failure::internal("registry domain missing"))?;
    // Reserve: the session total, and the windows of the wallet, the session and the payee.
    *d.spent =
        d.spent.checked_add(decision.charge).ok_or_else(|| Failure::internal("spend overflow"))?;
    // What is left is reported against the cap in force (the policy's session cap may be lower
    // than the issued one), as `GetBudget` reports it.
    let (session_spent, session_cap) = (*d.spent, cap);
    d.ledger.session.record(now.as_secs(), decision.charge);
    d.ledger.wallet.record(decision.requirement.pay_to, now.as_secs(), decision.charge);
    if let Some(needs) = shared_needs {
        grants.charge(needs.scopes.iter().map(|(s, _)| s), decision.charge);
    }
    let (done, rx) = watch::channel(false);
    inner
        .idem
        .start(p.key.clone(), IdemEntry { hash: p.hash, stage: Stage::Reserved { done: rx } });
    Ok(Reserved::Charge(
        Charge { approval: decision, key, domain, wallet_id, session_spent, session_cap },
        done,
    ))
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
