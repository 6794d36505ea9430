//! An agent's own reads: its budget ([`Enclave::get_budget`]), its recent payments, denials and
//! holds ([`Enclave::list_payments`]) and a dry run of a payment ([`Enclave::preview_payment`]).
//!
//! Each request is signed by the session key under its own domain tag and authenticated exactly
//! like a payment request ([`Enclave::authenticate_read`]: signature, freshness, replay floor,
//! nonce used once). None of them changes state: nothing is charged, reserved, held, audited or
//! put under an idempotency key. A revoked or expired session may still read (its answer says
//! so); an unknown session or a bad signature is refused.
//!
//! **The decision's inputs are built in one place**, [`decision_inputs`]: the [`Context`] and
//! the [`ScopeLedger`] of a session, as a payment's reservation needs them. The dry run runs
//! `wallet_policy::rules::choose` on them exactly as `SignPayment` does, then stops: it never
//! records the charge (the reservation is the only thing that does) — `choose` can only read
//! the ledger: the `rules::Ledger` trait it takes has no way to record (its `&mut` is for the
//! window histories' cursor caches, which a denied payment moves the same way). So no copy of
//! the histories is made: one can hold a slot per second for 31 days, and copying it under the
//! state lock on every preview would cost more than the decision.
//!
//! **The session's history** ([`Activity`]) is kept in memory, bounded: at most
//! [`MAX_LIST_PAYMENTS`] records per session and [`MAX_ACTIVITY_RECORDS`] in all (the oldest go
//! first). Every `SignPayment` answer adds one ([`Enclave::note_payment`], from the dispatch):
//! paid, denied, held or withheld — only for requests whose session signature verifies, so a
//! host cannot write into an agent's history. At start-up it is rebuilt from the spend journal
//! (payments, withheld) and the holds; denials are in the audit log only, and are not read back
//! (that would mean reading the whole log), so a restart forgets them. A list costs
//! O(`limit`) under a short lock: no scan of the audit log or the journal per call.

use std::collections::{HashMap, VecDeque};

use alloy_primitives::{Address, U256};
use wallet_policy::{
    address::parse_address,
    amount::{format_decimal, format_units, parse_decimal},
    rules::{self, Action, AssetLookup as _, Context, Ledger as _, SessionState},
    window::{ScopeLedger, Totals},
    x402::{caip2_network, decode_payment_required, parse_requirement_for, PaymentRequired},
};
use wallet_proto::{enclave::v1::ErrorCode, gateway::v1 as gw, Reason};

use super::{
    idempotency::{IdemEntry, Stage},
    records::{ApprovalRecord, SessionRecord},
    replay::Recent,
    state::{Inner, Registry, SessionEntry, WalletEntry},
    Enclave, Failure, Result,
};
use crate::platform::UnixMillis;

/// `ListPayments` returns this many records when the request names no limit.
pub const DEFAULT_LIST_PAYMENTS: u32 = 20;
/// The most records `ListPayments` returns, and the most the enclave keeps per session.
pub const MAX_LIST_PAYMENTS: u32 = 200;
/// The most records kept for all sessions together (the oldest are forgotten first): a few
/// tens of MiB at most.
pub const MAX_ACTIVITY_RECORDS: usize = 32_768;
/// `GetBudget` reports the payee caps for at most this many payees (those the session paid
/// most recently).
const MAX_PAYEE_ROWS: usize = 16;
/// A record's message is cut to this many bytes.
const MAX_RECORD_MESSAGE: usize = 512;

/// `PaymentRecord.outcome` of a signature released.
const PAID: &str = "paid";
/// `PaymentRecord.outcome` of a refusal.
const DENIED: &str = "denied";
/// `PaymentRecord.outcome` of a hold for approval.
const HELD: &str = "held";
/// `PaymentRecord.outcome` of a signature withheld in flight.
const WITHHELD: &str = "withheld";

// ---- the decision's inputs ---------------------------------------------------------------------

/// What the decision (`rules::choose`) reads for one session, borrowed from the state: the
/// [`Context`], the session's and the wallet's histories as a [`ScopeLedger`], and the records
/// the caller needs around it. A reservation adds the charge to `spent` and to the `ledger`.
pub(super) struct DecisionInputs<'a> {
    /// Everything the decision reads.
    pub ctx: Context<'a>,
    /// The session's and the wallet's spends (window budgets, payee caps, rate limits).
    pub ledger: ScopeLedger<'a>,
    /// The session's spent total (released and reserved), token units.
    pub spent: &'a mut U256,
    /// The session.
    pub session: &'a SessionRecord,
    /// The paying wallet.
    pub wallet: &'a WalletEntry,
    /// The wallet's policy, if it has one.
    pub policy: Option<&'a rules::Policy>,
    /// The asset registry with its EIP-712 domain separators.
    pub registry: &'a Registry,
}

/// Builds the decision's inputs for `session_id` at `now`, as a payment does (`approved`: the
/// request is the retry of a hold a human approved). `payment.rs`'s reservation builds the same
/// [`Context`] with it.
///
/// # Errors
/// `UNKNOWN_SESSION`; `INTERNAL` when the session's wallet is missing.
pub(super) fn decision_inputs<'a>(
    inner: &'a mut Inner,
    session_id: &str,
    now: UnixMillis,
    approved: bool,
) -> Result<DecisionInputs<'a>> {
    let Inner { sessions, wallets, policies, kyt, registry, wallet_history, .. } = inner;
    let session = sessions
        .get_mut(session_id)
        .ok_or_else(|| Failure::unauthenticated(Reason::UnknownSession, "unknown session"))?;
    let SessionEntry { record, spent, history, .. } = session;
    let record: &'a SessionRecord = record;
    let wallets: &'a _ = wallets;
    let wallet: &'a WalletEntry = wallets
        .get(&record.wallet_id)
        .ok_or_else(|| Failure::internal("session's wallet is missing"))?;
    let policies: &'a _ = policies;
    let policy = policies.get(&wallet.record.id);
    let kyt: &'a _ = kyt;
    let registry: &'a _ = registry;
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
        kyt,
        registry,
        now: now.as_secs(),
        approved,
    };
    let ledger = ScopeLedger {
        wallet: wallet_history.entry(wallet.record.id.clone()).or_default(),
        session: history,
    };
    Ok(DecisionInputs { ctx, ledger, spent, session: record, wallet, policy, registry })
}

/// What a payment request asks, as the decision takes it: the payment requirements and the
/// network preference as a CAIP-2 id. `SignPayment` (`payment.rs` `Decoded::new`) and
/// `PreviewPayment` both read their request with it.
///
/// # Errors
/// The header's error (`MALFORMED_HEADER`, `UNSUPPORTED_VERSION`, ...); a network preference
/// the wallet cannot read (`INVALID_ARGUMENT`: refused, never ignored).
pub(super) fn read_payment_ask(
    payment_required: &str,
    preferred_network: &str,
) -> Result<(PaymentRequired, Option<String>)> {
    let required = decode_payment_required(payment_required)?;
    let preferred_network = if preferred_network.is_empty() {
        None
    } else {
        Some(
            caip2_network(preferred_network)
                .map_err(|e| Failure::bad_argument(format!("preferred_network: {e}")))?,
        )
    };
    Ok((required, preferred_network))
}

/// The session cap in force: the lower of the issued cap and the policy's session cap.
pub(super) fn effective_cap(session: &SessionRecord, policy: Option<&rules::Policy>) -> U256 {
    policy.and_then(|p| p.session.cap).map_or(session.cap, |c| c.min(session.cap))
}

// ---- the session's history ---------------------------------------------------------------------

/// The recent `SignPayment` decisions of each session, newest last (module docs).
#[derive(Debug, Default)]
pub(super) struct Activity {
    sessions: HashMap<String, VecDeque<(u64, gw::PaymentRecord)>>,
    /// Every record added, in order (sequence number and session), to forget the oldest in O(1)
    /// each; entries of records already forgotten (per-session cap) are skipped.
    order: VecDeque<(u64, String)>,
    next: u64,
}

impl Activity {
    /// Adds a record for `session`, forgetting the oldest past the bounds.
    fn push(&mut self, session: &str, record: gw::PaymentRecord) {
        let seq = self.next;
        self.next += 1;
        let ring = self.sessions.entry(session.to_owned()).or_default();
        ring.push_back((seq, record));
        if ring.len() > MAX_LIST_PAYMENTS as usize {
            ring.pop_front();
        }
        self.order.push_back((seq, session.to_owned()));
        while self.order.len() > MAX_ACTIVITY_RECORDS {
            let Some((seq, session)) = self.order.pop_front() else { break };
            if let Some(ring) = self.sessions.get_mut(&session) {
                if ring.front().is_some_and(|(s, _)| *s == seq) {
                    ring.pop_front();
                }
                if ring.is_empty() {
                    self.sessions.remove(&session);
                }
            }
        }
    }

    /// Adds the record of a `SignPayment` answer: a hold or a withheld signature already listed
    /// (an agent retrying while a hold is pending) is not listed twice, and a payment made after
    /// an approval names its hold.
    fn note(&mut self, session: &str, mut record: gw::PaymentRecord) {
        let ring = self.sessions.get(session);
        let listed = |f: &dyn Fn(&gw::PaymentRecord) -> bool| {
            ring.is_some_and(|r| r.iter().rev().any(|(_, x)| f(x)))
        };
        match record.outcome.as_str() {
            HELD if listed(&|x| x.outcome == HELD && x.approval_id == record.approval_id) => return,
            WITHHELD
                if listed(&|x| {
                    x.outcome == WITHHELD && x.idempotency_key == record.idempotency_key
                }) =>
            {
                return
            }
            PAID => {
                if let Some((_, hold)) = ring.and_then(|r| {
                    r.iter().rev().find(|(_, x)| {
                        x.outcome == HELD && x.idempotency_key == record.idempotency_key
                    })
                }) {
                    record.approval_id.clone_from(&hold.approval_id);
                }
            }
            _ => {}
        }
        self.push(session, record);
    }

    /// The newest `limit` records of `session`, newest first, and how many are kept.
    fn recent(&self, session: &str, limit: usize) -> (Vec<gw::PaymentRecord>, usize) {
        self.sessions.get(session).map_or((Vec::new(), 0), |r| {
            (r.iter().rev().take(limit).map(|(_, x)| x.clone()).collect(), r.len())
        })
    }

    /// The payees `session` paid most recently (at most `max`, distinct).
    fn recent_payees(&self, session: &str, max: usize) -> Vec<Address> {
        let mut out: Vec<Address> = Vec::new();
        for (_, r) in self.sessions.get(session).into_iter().flatten().rev() {
            if out.len() >= max {
                break;
            }
            if r.outcome == PAID {
                if let Ok(a) = parse_address(&r.pay_to) {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
        }
        out
    }

    /// Rebuilds the history at start-up from the newest journal records the ledger kept
    /// (payments, and the withheld ones; see `replay::RECENT`) and the holds in the state,
    /// keeping only what the bounds allow. The records are read newest first: a record past its
    /// session's bound is skipped at the cost of a map lookup.
    pub fn rebuild(journal: &VecDeque<Recent>, inner: &Inner) -> Self {
        let mut withheld: HashMap<(&str, &str), Reason> = HashMap::new();
        let mut kept: HashMap<&str, usize> = HashMap::new();
        let mut records: Vec<(&str, gw::PaymentRecord)> = Vec::new();
        let used_holds: HashMap<(&str, &str), &str> = inner
            .approvals
            .values()
            .map(|a| ((a.session_id.as_str(), a.idempotency_key.as_str()), a.id.as_str()))
            .collect();
        for r in journal.iter().rev() {
            if records.len() >= MAX_ACTIVITY_RECORDS {
                break;
            }
            match r {
                Recent::Withheld { session_id, idempotency_key, reason } => {
                    withheld.insert((session_id, idempotency_key), *reason);
                }
                Recent::Posted { shown, session_id, idempotency_key } => {
                    let n = kept.entry(session_id).or_default();
                    if *n >= MAX_LIST_PAYMENTS as usize {
                        continue;
                    }
                    *n += 1;
                    let key = (session_id.as_str(), idempotency_key.as_str());
                    let (outcome, reason) = match withheld.get(&key) {
                        Some(reason) => (WITHHELD, reason.as_str().to_owned()),
                        None => (PAID, String::new()),
                    };
                    let mut record = (**shown).clone();
                    record.outcome = outcome.into();
                    record.reason = reason;
                    record.idempotency_key.clone_from(idempotency_key);
                    record.approval_id =
                        used_holds.get(&key).map(|id| (*id).to_owned()).unwrap_or_default();
                    records.push((session_id, record));
                }
            }
        }
        // Oldest first again, so that records of the same millisecond keep the journal's order.
        records.reverse();
        records.extend(inner.approvals.values().map(|a| {
            (a.session_id.as_str(), hold_record(a, inner.registry.lookup(&a.network, &a.asset)))
        }));
        records.sort_by_key(|(_, r)| r.at_ms);
        let mut activity = Self::default();
        for (session, record) in records {
            activity.push(session, record);
        }
        activity
    }
}

/// The record of a hold (its state is filled in when listed).
fn hold_record(
    a: &ApprovalRecord,
    asset: Option<&wallet_policy::registry::AssetInfo>,
) -> gw::PaymentRecord {
    let amount = asset
        .and_then(|i| parse_decimal(&a.amount, i.decimals).ok())
        .map(|v| v.to_string())
        .unwrap_or_default();
    gw::PaymentRecord {
        at_ms: a.created_ms,
        outcome: HELD.into(),
        reason: Reason::ApprovalPending.as_str().into(),
        message: clip(&a.reason),
        amount,
        amount_human: a.amount.clone(),
        asset: a.asset.to_checksum(None),
        asset_symbol: a.asset_symbol.clone(),
        network: a.network.clone(),
        pay_to: a.pay_to.to_checksum(None),
        idempotency_key: a.idempotency_key.clone(),
        approval_id: a.id.clone(),
        approval_state: String::new(),
    }
}

/// Cuts `s` to [`MAX_RECORD_MESSAGE`] bytes on a character boundary.
fn clip(s: &str) -> String {
    if s.len() <= MAX_RECORD_MESSAGE {
        return s.to_owned();
    }
    let mut end = MAX_RECORD_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

// ---- the three reads ---------------------------------------------------------------------------

fn amount_row(
    scope: &str,
    payee: String,
    b: &wallet_policy::document::Budget,
    t: Totals,
) -> gw::BudgetWindow {
    gw::BudgetWindow {
        scope: scope.into(),
        payee,
        window_seconds: b.per_seconds,
        max: format_units(b.max),
        spent: format_units(t.amount),
        left: format_units(b.max.saturating_sub(t.amount)),
        max_payments: 0,
        payments: t.count,
    }
}

fn rate_row(scope: &str, max: u64, t: Totals) -> gw::BudgetWindow {
    gw::BudgetWindow {
        scope: scope.into(),
        window_seconds: 60,
        max_payments: max,
        payments: t.count,
        ..Default::default()
    }
}

fn rule_limit(r: &wallet_policy::document::Rule, max: U256) -> gw::RuleLimit {
    use wallet_policy::document::AssetMatch;
    gw::RuleLimit {
        rule: r.name.clone(),
        max_per_payment: format_units(max),
        networks: r.networks.clone(),
        assets: r
            .assets
            .iter()
            .map(|a| match a {
                AssetMatch::Address(a) => a.to_checksum(None),
                AssetMatch::Symbol(s) => s.clone(),
            })
            .collect(),
        payees: u32::try_from(r.payees.len()).unwrap_or(u32::MAX),
        above: r.above.map(format_units).unwrap_or_default(),
        action: if r.action == Action::Approve { "approve" } else { "allow" }.into(),
    }
}

/// The session's budget from the decision's own inputs: the same totals `rules::evaluate` reads.
fn budget(d: &mut DecisionInputs<'_>, payees: &[Address], now: UnixMillis) -> gw::SessionBudget {
    let now_s = now.as_secs();
    let cap = effective_cap(d.session, d.policy);
    let spent = *d.spent;
    let left = cap.saturating_sub(spent);
    let mut room = left;
    let mut windows = Vec::new();
    let mut rule_limits = Vec::new();
    if let Some(p) = d.policy {
        for b in &p.session.budgets {
            let t = d.ledger.session(b.per_seconds, now_s);
            room = room.min(b.max.saturating_sub(t.amount));
            windows.push(amount_row("session", String::new(), b, t));
        }
        if let Some(n) = p.session.payments_per_minute {
            windows.push(rate_row("session", n, d.ledger.session(60, now_s)));
        }
        for b in &p.wallet.budgets {
            let t = d.ledger.wallet(b.per_seconds, now_s);
            room = room.min(b.max.saturating_sub(t.amount));
            windows.push(amount_row("wallet", String::new(), b, t));
        }
        if let Some(n) = p.wallet.payments_per_minute {
            windows.push(rate_row("wallet", n, d.ledger.wallet(60, now_s)));
        }
        for b in &p.wallet.per_payee {
            windows.push(gw::BudgetWindow {
                scope: "payee".into(),
                window_seconds: b.per_seconds,
                max: format_units(b.max),
                ..Default::default()
            });
            for payee in payees {
                let t = d.ledger.payee(payee, b.per_seconds, now_s);
                windows.push(amount_row("payee", payee.to_checksum(None), b, t));
            }
        }
        if let Some(m) = p.wallet.max_per_payment {
            room = room.min(m);
        }
        rule_limits = p
            .rules
            .iter()
            .filter(|r| r.action != Action::Deny)
            .filter_map(|r| r.max_per_payment.map(|m| rule_limit(r, m)))
            .collect();
    }
    let s = d.session;
    let expired = d.ctx.now >= s.expires_at;
    let blocked = d.policy.is_none() || s.revoked || expired || d.wallet.record.frozen;
    gw::SessionBudget {
        session_id: s.id.clone(),
        wallet_id: s.wallet_id.clone(),
        wallet_address: d.wallet.record.address.to_checksum(None),
        unit: "token".into(),
        as_of_ms: now.as_millis(),
        expires_at: s.expires_at,
        expired,
        revoked: s.revoked,
        wallet_frozen: d.wallet.record.frozen,
        has_policy: d.policy.is_some(),
        policy_version: d.policy.map_or(0, |p| p.version),
        session_cap: format_units(cap),
        session_spent: format_units(spent),
        session_left: format_units(left),
        max_per_payment: d
            .policy
            .and_then(|p| p.wallet.max_per_payment)
            .map(format_units)
            .unwrap_or_default(),
        rule_limits,
        windows,
        max_payment_now: format_units(if blocked { U256::ZERO } else { room }),
        approval_above: d
            .policy
            .and_then(|p| p.approval.above)
            .map(format_units)
            .unwrap_or_default(),
        approval_first_time_payee: d.policy.is_some_and(|p| p.approval.first_time_payee),
        networks: s.scope.networks.clone(),
        assets: s.scope.assets.iter().map(|a| a.to_checksum(None)).collect(),
        payees: s.scope.payees.iter().map(|a| a.to_checksum(None)).collect(),
    }
}

impl Enclave {
    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        // Every mutation of the history is a single push: a panic leaves it consistent.
        self.activity.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `GetBudget`: the session's limits and what is left of them, as the decision sees them.
    ///
    /// # Errors
    /// Authentication failures (`UNKNOWN_SESSION`, `BAD_SIGNATURE`, `STALE_REQUEST`,
    /// `REPLAYED_REQUEST`, `INVALID_NONCE`).
    pub(super) async fn get_budget(&self, r: gw::GetBudgetRequest) -> Result<gw::SessionBudget> {
        let who = self.authenticate_read(&r).await?;
        let payees = self.activity().recent_payees(who.session_id(), MAX_PAYEE_ROWS);
        let mut inner = self.lock();
        let mut d = decision_inputs(&mut inner, who.session_id(), who.now(), false)?;
        Ok(budget(&mut d, &payees, who.now()))
    }

    /// `ListPayments`: the session's newest records, newest first (at most
    /// [`MAX_LIST_PAYMENTS`]; [`DEFAULT_LIST_PAYMENTS`] when the request names no limit).
    ///
    /// # Errors
    /// Authentication failures, as [`Self::get_budget`].
    pub(super) async fn list_payments(
        &self,
        r: gw::ListPaymentsRequest,
    ) -> Result<gw::ListPaymentsResponse> {
        let who = self.authenticate_read(&r).await?;
        let limit = match r.limit {
            0 => DEFAULT_LIST_PAYMENTS,
            n => n.min(MAX_LIST_PAYMENTS),
        };
        let (mut payments, kept) = self.activity().recent(who.session_id(), limit as usize);
        let now_ms = who.now().as_millis();
        let inner = self.lock();
        for p in payments.iter_mut().filter(|p| !p.approval_id.is_empty()) {
            if let Some(a) = inner.approvals.get(&p.approval_id) {
                a.state_name(now_ms).clone_into(&mut p.approval_state);
            }
        }
        Ok(gw::ListPaymentsResponse { payments, kept: u32::try_from(kept).unwrap_or(u32::MAX) })
    }

    /// `PreviewPayment`: runs the decision of `SignPayment` (same parsing, same
    /// `rules::choose`, same inputs) and answers what it would do. Nothing is reserved, held,
    /// signed, audited or remembered under an idempotency key.
    ///
    /// # Errors
    /// Authentication failures, as [`Self::get_budget`]; a `PAYMENT-REQUIRED` value or a
    /// preferred asset the enclave cannot read (`MALFORMED_HEADER`, `INVALID_ARGUMENT`, ...), as
    /// `SignPayment` would answer. A policy denial is not an error: the preview says "denied".
    pub(super) async fn preview_payment(
        &self,
        r: gw::PreviewPaymentRequest,
    ) -> Result<gw::PaymentPreview> {
        let preferred_asset = if r.preferred_asset.is_empty() {
            None
        } else {
            Some(
                parse_address(&r.preferred_asset)
                    .map_err(|e| Failure::bad_argument(format!("preferred_asset: {e}")))?,
            )
        };
        let who = self.authenticate_read(&r).await?;
        let (required, preferred_network) =
            read_payment_ask(&r.payment_required, &r.preferred_network)?;
        let mut inner = self.lock();
        let mut d = decision_inputs(&mut inner, who.session_id(), who.now(), false)?;
        let decision = rules::choose(
            &d.ctx,
            &mut d.ledger,
            &required,
            preferred_network.as_deref(),
            preferred_asset.as_ref(),
        );
        let x402_version = u32::try_from(required.x402_version).unwrap_or(u32::MAX);
        let payer = d.wallet.record.address.to_checksum(None);
        Ok(match decision {
            Err(denial) => {
                let f = Failure::from(denial);
                gw::PaymentPreview {
                    outcome: DENIED.into(),
                    reason: f.reason.as_str().into(),
                    message: f.message,
                    payer,
                    x402_version,
                    ..Default::default()
                }
            }
            Ok(a) => {
                let after = d.spent.saturating_add(a.charge);
                let cap = effective_cap(d.session, d.policy);
                let req = &a.requirement;
                let (outcome, reason, message) = match &a.hold {
                    None => ("allowed", String::new(), String::new()),
                    Some(why) => (HELD, Reason::ApprovalPending.as_str().to_owned(), why.clone()),
                };
                gw::PaymentPreview {
                    outcome: outcome.into(),
                    reason,
                    message,
                    accepted_index: u32::try_from(a.index).unwrap_or(u32::MAX),
                    accepted_json: required.accepts[a.index].to_string(),
                    network: req.network.clone(),
                    asset: req.asset.to_checksum(None),
                    asset_symbol: a.asset.symbol.clone(),
                    pay_to: req.pay_to.to_checksum(None),
                    amount: req.amount.to_string(),
                    amount_human: format_decimal(req.amount, a.asset.decimals),
                    session_spent: format_units(after),
                    session_remaining: format_units(cap.saturating_sub(after)),
                    payer,
                    x402_version,
                }
            }
        })
    }

    /// Adds the answer to a `SignPayment` request to its session's history: a payment released
    /// (not an idempotent replay of one), a denial, a hold, or a signature withheld. Other
    /// failures (bad input, authentication, conflicts, internal errors) are not listed, and a
    /// request whose session signature does not verify is never listed: the host cannot write
    /// into an agent's history.
    pub(super) fn note_payment(
        &self,
        r: &gw::SignPaymentRequest,
        result: &Result<gw::SignPaymentResponse>,
    ) {
        let at_ms = self.clock.now().as_millis();
        let record = match result {
            Ok(resp) if resp.replayed => return,
            // Only a verified request gets a signature.
            Ok(resp) => gw::PaymentRecord {
                at_ms,
                outcome: PAID.into(),
                amount: resp.amount.clone(),
                amount_human: resp.charged.clone(),
                asset: resp.asset.clone(),
                asset_symbol: resp.asset_symbol.clone(),
                network: resp.network.clone(),
                pay_to: resp.pay_to.clone(),
                idempotency_key: r.idempotency_key.clone(),
                ..Default::default()
            },
            Err(f) if f.reason == Reason::ApprovalPending || f.code == ErrorCode::Denied => {
                if !self.session_signature_verifies(r) {
                    return;
                }
                match self.failure_record(r, f, at_ms) {
                    Some(record) => record,
                    None => return,
                }
            }
            Err(_) => return,
        };
        self.activity().note(&r.session_id, record);
    }

    /// The record of a held or denied `SignPayment` request.
    fn failure_record(
        &self,
        r: &gw::SignPaymentRequest,
        f: &Failure,
        at_ms: u64,
    ) -> Option<gw::PaymentRecord> {
        // The option denied, when the server offered only one (parsed outside the lock).
        let option = (f.reason != Reason::ApprovalPending)
            .then(|| decode_payment_required(&r.payment_required).ok())
            .flatten()
            .filter(|p| p.accepts.len() == 1)
            .and_then(|p| parse_requirement_for(p.x402_version, &p.accepts[0]).ok());
        let inner = self.lock();
        let stage = inner
            .idem
            .get(&(r.session_id.clone(), r.idempotency_key.clone()))
            .map(|e: &IdemEntry| &e.stage);
        if f.reason == Reason::ApprovalPending {
            let Some(Stage::Held { approval_id }) = stage else { return None };
            let hold = inner.approvals.get(approval_id)?;
            return Some(hold_record(hold, inner.registry.lookup(&hold.network, &hold.asset)));
        }
        let outcome = if matches!(stage, Some(Stage::Withheld { .. })) { WITHHELD } else { DENIED };
        let mut record = gw::PaymentRecord {
            at_ms,
            outcome: outcome.into(),
            reason: f.reason.as_str().into(),
            message: clip(&f.message),
            idempotency_key: r.idempotency_key.clone(),
            ..Default::default()
        };
        if let Some(req) = option {
            if let Some(asset) = inner.registry.lookup(&req.network, &req.asset) {
                record.amount_human = format_decimal(req.amount, asset.decimals);
                record.asset_symbol.clone_from(&asset.symbol);
            }
            record.amount = req.amount.to_string();
            record.asset = req.asset.to_checksum(None);
            record.network = req.network;
            record.pay_to = req.pay_to.to_checksum(None);
        }
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(outcome: &str, key: &str, approval: &str) -> gw::PaymentRecord {
        gw::PaymentRecord {
            outcome: outcome.into(),
            idempotency_key: key.into(),
            approval_id: approval.into(),
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            ..Default::default()
        }
    }

    #[test]
    fn history_is_bounded_per_session_and_in_all() {
        let mut a = Activity::default();
        for i in 0..(MAX_LIST_PAYMENTS as usize + 50) {
            a.push("s1", rec(PAID, &format!("k{i}"), ""));
        }
        let (newest, kept) = a.recent("s1", 1000);
        assert_eq!(kept, MAX_LIST_PAYMENTS as usize);
        assert_eq!(newest.len(), MAX_LIST_PAYMENTS as usize);
        assert_eq!(newest[0].idempotency_key, format!("k{}", MAX_LIST_PAYMENTS + 49));
        assert_eq!(a.recent("s1", 3).0.len(), 3);
        assert_eq!(a.recent("nobody", 3), (Vec::new(), 0));
        // Across sessions: never more than the global bound, the oldest forgotten first.
        for i in 0..MAX_ACTIVITY_RECORDS {
            a.push(&format!("t{}", i % 500), rec(DENIED, "k", ""));
        }
        let total: usize = a.sessions.values().map(VecDeque::len).sum();
        assert!(total <= MAX_ACTIVITY_RECORDS, "{total}");
        assert!(a.order.len() <= MAX_ACTIVITY_RECORDS);
        assert_eq!(a.recent("s1", 10).1, 0, "the oldest session's records went first");
        assert!(a.recent("t499", 1000).1 > 0);
    }

    #[test]
    fn holds_and_withheld_are_listed_once_and_a_paid_retry_names_its_hold() {
        let mut a = Activity::default();
        a.note("s", rec(HELD, "k1", "ap_1"));
        a.note("s", rec(HELD, "k1", "ap_1")); // the agent retried while pending
        a.note("s", rec(WITHHELD, "k2", ""));
        a.note("s", rec(WITHHELD, "k2", ""));
        a.note("s", rec(DENIED, "k3", ""));
        a.note("s", rec(DENIED, "k3", "")); // two attempts, two denials
        a.note("s", rec(PAID, "k1", ""));
        let (list, kept) = a.recent("s", 10);
        assert_eq!(kept, 5);
        assert_eq!(list[0].outcome, PAID);
        assert_eq!(list[0].approval_id, "ap_1");
        assert_eq!(a.recent_payees("s", 4).len(), 1);
        assert_eq!(clip(&"é".repeat(600)).len(), MAX_RECORD_MESSAGE + "…".len());
    }
}
