//! The decision: may this wallet sign this payment for this session, now?
//!
//! Pure: the caller passes the policy, the session's state, the registry, the KYT list and the
//! time. Default deny: without a policy nothing is signed, and every rule must allow.

use std::collections::HashSet;

use alloy_primitives::{Address, U256};
use serde::{Deserialize, Serialize};

use crate::{
    amount::{atomic_to_units, format_decimal, format_units},
    document::Budget,
    registry::AssetInfo,
    window::Totals,
    x402::{
        caip2_network, option_network, parse_requirement_for, PaymentFlow, PaymentRequired,
        Requirement, RequirementError, TransferMethod, V1_VALID_AFTER_LEEWAY_SECONDS,
    },
};

pub use crate::document::{
    Action, Policy, DEFAULT_MAX_VALIDITY_SECONDS, MAX_VALIDITY_SECONDS, MIN_VALIDITY_SECONDS,
};

/// What a session may pay for, beyond the wallet's policy. Empty lists do not narrow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// CAIP-2 networks.
    pub networks: Vec<String>,
    /// Asset addresses.
    pub assets: Vec<Address>,
    /// Payees.
    pub payees: Vec<Address>,
}

/// A session as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct SessionState<'a> {
    /// Session cap, units.
    pub cap: U256,
    /// Already released, units.
    pub spent: U256,
    /// Unix seconds.
    pub expires_at: u64,
    /// Revoked by an admin.
    pub revoked: bool,
    /// Narrowing of the policy.
    pub scope: &'a Scope,
}

/// Screening of payees (KYT). Implementations must answer in O(1).
pub trait Denylist {
    /// True when payments to `a` must be refused.
    fn is_denied(&self, a: &Address) -> bool;
}

impl<S: std::hash::BuildHasher> Denylist for HashSet<Address, S> {
    fn is_denied(&self, a: &Address) -> bool {
        self.contains(a)
    }
}

/// What a wallet and a session already spent, as the budgets, rate limits and approval rules
/// need it. Times are unix seconds; a window of `len` seconds at `now` covers `(now - len, now]`.
pub trait Ledger {
    /// The wallet's payments in the window.
    fn wallet(&mut self, len: u64, now: u64) -> Totals;
    /// The session's payments in the window.
    fn session(&mut self, len: u64, now: u64) -> Totals;
    /// The wallet's payments to `payee` in the window.
    fn payee(&mut self, payee: &Address, len: u64, now: u64) -> Totals;
    /// Whether the wallet ever paid `payee` (released or in flight).
    fn paid_before(&self, payee: &Address) -> bool;
}

/// A ledger with nothing in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyLedger;

impl Ledger for EmptyLedger {
    fn wallet(&mut self, _: u64, _: u64) -> Totals {
        Totals::default()
    }
    fn session(&mut self, _: u64, _: u64) -> Totals {
        Totals::default()
    }
    fn payee(&mut self, _: &Address, _: u64, _: u64) -> Totals {
        Totals::default()
    }
    fn paid_before(&self, _: &Address) -> bool {
        false
    }
}

/// The asset registry as the decision needs it.
pub trait AssetLookup {
    /// The entry for this token on this network.
    fn lookup(&self, network: &str, asset: &Address) -> Option<&AssetInfo>;
}

/// Why a payment is denied. The codes are stable: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// The wallet has no policy: default deny.
    NoPolicy,
    /// Above the policy's per-payment limit.
    PerTxLimit,
    /// Would take the session past its cap.
    SessionCap,
    /// `payTo` is on the KYT denylist.
    KytDenied,
    /// The network is not allowed by policy or session.
    NetworkNotAllowed,
    /// The asset is not in the registry or not allowed by policy or session.
    AssetNotAllowed,
    /// `extra.name`/`extra.version` disagree with the registry's EIP-712 domain.
    DomainMismatch,
    /// Not `exact` with EIP-3009.
    UnsupportedScheme,
    /// The payee is outside the session's allowed payees.
    PayeeNotAllowed,
    /// The session has expired.
    SessionExpired,
    /// The session was revoked.
    SessionRevoked,
    /// The wallet is frozen.
    WalletFrozen,
    /// The requirement is malformed (bad address, amount, timeout).
    InvalidRequirement,
    /// No rule of the policy matches: default deny.
    NoMatchingRule,
    /// A `deny` rule matches.
    RuleDenied,
    /// The payee is on the policy's payee denylist.
    PayeeDenied,
    /// Would exceed one of the wallet's time-window budgets.
    WalletBudget,
    /// Would exceed one of the session's time-window budgets.
    SessionBudget,
    /// Would exceed the wallet's budget for this payee.
    PayeeCap,
    /// Too many payments in the last minute.
    RateLimited,
    /// The request asked for a network or asset (its preference) that no `accepts[]` option
    /// offers, or a preference that names no network this wallet knows. Preferences filter the
    /// options; they never fall back silently to another network or asset.
    PreferenceNotOffered,
}

impl DenyReason {
    /// Stable reason code.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::NoPolicy => "NO_POLICY",
            Self::PerTxLimit => "PER_TX_LIMIT",
            Self::SessionCap => "SESSION_CAP",
            Self::KytDenied => "KYT_DENIED",
            Self::NetworkNotAllowed => "NETWORK_NOT_ALLOWED",
            Self::AssetNotAllowed => "ASSET_NOT_ALLOWED",
            Self::DomainMismatch => "DOMAIN_MISMATCH",
            Self::UnsupportedScheme => "UNSUPPORTED_SCHEME",
            Self::PayeeNotAllowed => "PAYEE_NOT_ALLOWED",
            Self::SessionExpired => "SESSION_EXPIRED",
            Self::SessionRevoked => "SESSION_REVOKED",
            Self::WalletFrozen => "WALLET_FROZEN",
            Self::InvalidRequirement => "INVALID_REQUIREMENT",
            Self::NoMatchingRule => "NO_MATCHING_RULE",
            Self::RuleDenied => "RULE_DENIED",
            Self::PayeeDenied => "PAYEE_DENIED",
            Self::WalletBudget => "WALLET_BUDGET",
            Self::SessionBudget => "SESSION_BUDGET",
            Self::PayeeCap => "PAYEE_CAP",
            Self::RateLimited => "RATE_LIMITED",
            Self::PreferenceNotOffered => "PREFERENCE_NOT_OFFERED",
        }
    }

    /// Every reason, for tests and docs.
    pub const ALL: [Self; 21] = [
        Self::NoPolicy,
        Self::PerTxLimit,
        Self::SessionCap,
        Self::KytDenied,
        Self::NetworkNotAllowed,
        Self::AssetNotAllowed,
        Self::DomainMismatch,
        Self::UnsupportedScheme,
        Self::PayeeNotAllowed,
        Self::SessionExpired,
        Self::SessionRevoked,
        Self::WalletFrozen,
        Self::InvalidRequirement,
        Self::NoMatchingRule,
        Self::RuleDenied,
        Self::PayeeDenied,
        Self::WalletBudget,
        Self::SessionBudget,
        Self::PayeeCap,
        Self::RateLimited,
        Self::PreferenceNotOffered,
    ];
}

/// A denial: stable reason and one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", reason.code())]
pub struct Denial {
    /// Stable reason.
    pub reason: DenyReason,
    /// For people.
    pub message: String,
}

fn deny(reason: DenyReason, message: impl Into<String>) -> Denial {
    Denial { reason, message: message.into() }
}

/// Everything the decision reads.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The wallet's policy, if any.
    pub policy: Option<&'a Policy>,
    /// Whether the wallet is frozen.
    pub wallet_frozen: bool,
    /// The session.
    pub session: SessionState<'a>,
    /// KYT denylist.
    pub kyt: &'a dyn Denylist,
    /// Asset registry.
    pub registry: &'a dyn AssetLookup,
    /// Unix seconds.
    pub now: u64,
    /// A human approved this very request: approval holds are skipped (every limit still
    /// applies).
    pub approved: bool,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("policy", &self.policy)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// An allowed payment: what to sign and what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Index in `accepts[]`.
    pub index: usize,
    /// The requirement.
    pub requirement: Requirement,
    /// The registry entry whose domain is signed under.
    pub asset: AssetInfo,
    /// Cost in units (what the session and limits are charged).
    pub charge: U256,
    /// `validAfter` of the authorization, unix seconds: 0 for x402 v2 (as the current official
    /// client), `now - 600` for x402 v1 (as the official v1 client,
    /// [`V1_VALID_AFTER_LEEWAY_SECONDS`]).
    pub valid_after: u64,
    /// `validBefore` of the authorization, unix seconds: `now + min(maxTimeoutSeconds, the
    /// policy's max validity)`, at least `now + 10`.
    pub valid_before: u64,
    /// Why it must wait for a human's approval (`None`: sign now).
    pub hold: Option<String>,
}

/// Request-level checks: wallet frozen, session revoked or expired.
///
/// # Errors
/// The [`Denial`].
pub fn check_session(ctx: &Context<'_>) -> Result<(), Denial> {
    if ctx.wallet_frozen {
        return Err(deny(DenyReason::WalletFrozen, "the wallet is frozen"));
    }
    if ctx.session.revoked {
        return Err(deny(DenyReason::SessionRevoked, "the session was revoked"));
    }
    if ctx.now >= ctx.session.expires_at {
        return Err(deny(DenyReason::SessionExpired, "the session has expired"));
    }
    Ok(())
}

fn allowed<T: PartialEq>(list: &[T], item: &T) -> bool {
    list.is_empty() || list.contains(item)
}

/// The budgets a charge must fit: `(window, max)` pairs and the totals so far, checked with
/// checked arithmetic (an overflow denies).
fn over_budget(
    budgets: &[Budget],
    charge: U256,
    mut spent: impl FnMut(u64) -> Totals,
) -> Option<(Budget, U256)> {
    budgets.iter().find_map(|b| {
        let so_far = spent(b.per_seconds).amount;
        so_far.checked_add(charge).is_none_or(|after| after > b.max).then_some((*b, so_far))
    })
}

fn window_name(seconds: u64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// An address shown with its EIP-55 checksum, computed only when displayed.
struct Checksummed<'a>(&'a Address);

impl std::fmt::Display for Checksummed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_checksum(None))
    }
}

/// "0.25 USDC", formatted only when displayed.
struct Paying<'a> {
    amount: U256,
    asset: &'a AssetInfo,
}

impl std::fmt::Display for Paying<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", format_decimal(self.amount, self.asset.decimals), self.asset.symbol)
    }
}

/// The denial when no rule matches: the one condition that kept every allowing rule from
/// matching (network, asset or payee) when there is one, else `NO_MATCHING_RULE`.
fn no_rule(policy: &Policy, req: &Requirement, symbol: &str, charge: U256, paying: &str) -> Denial {
    let payee = req.pay_to.to_checksum(None);
    let allowing = || policy.rules.iter().filter(|r| r.action != Action::Deny);
    let relaxed = |f: fn(&mut crate::document::Rule)| {
        allowing().any(|r| {
            let mut r = r.clone();
            f(&mut r);
            r.matches(&req.network, &req.asset, symbol, &req.pay_to, charge)
        })
    };
    if relaxed(|r| r.networks.clear()) {
        return deny(
            DenyReason::NetworkNotAllowed,
            format!("network {} is not allowed by the policy", req.network),
        );
    }
    if relaxed(|r| r.assets.clear()) {
        return deny(
            DenyReason::AssetNotAllowed,
            format!(
                "asset {} ({symbol}) is not allowed by the policy",
                req.asset.to_checksum(None)
            ),
        );
    }
    if relaxed(|r| r.payees.clear()) {
        return deny(
            DenyReason::PayeeNotAllowed,
            format!("payee {payee} is not allowed by the policy"),
        );
    }
    deny(
        DenyReason::NoMatchingRule,
        format!("no policy rule allows {paying} to {payee} on {} (default deny)", req.network),
    )
}

/// What one parsed requirement is allowed, if anything: the asset, the charge, `validBefore`,
/// and a reason to hold it for approval.
type Allowed = (AssetInfo, U256, u64, Option<String>);

/// How far the evaluation of one option got before it was denied, in evaluation order (later is
/// further). When no option is allowed, [`choose`] reports the reason of the option that got
/// furthest: that is the limit that actually bound the payment (an option refused for its
/// per-payment limit tells more than one on a network the policy never allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// The `accepts[]` entry could not be read (scheme, network, fields).
    Parse,
    /// `extra.paymentFlow` the official client does not know.
    Flow,
    /// Not EIP-3009.
    Transfer,
    /// Not in the asset registry.
    Registry,
    /// The EIP-712 domain disagrees with the registry.
    Domain,
    /// The wallet has no policy.
    Policy,
    /// The payee is on the KYT list.
    Kyt,
    /// Outside the session's scope.
    SessionScope,
    /// The policy's payee deny and allow lists.
    PayeeLists,
    /// The amount cannot be charged.
    Amount,
    /// No rule matches.
    Rules,
    /// A deny rule matches.
    DenyRule,
    /// Over a per-payment limit.
    PerPayment,
    /// Over the session's cap.
    SessionCap,
    /// Over the session's windows.
    SessionBudget,
    /// Over the wallet's windows.
    WalletBudget,
    /// Over a per-payee window.
    PayeeBudget,
    /// Over a rate limit.
    Rate,
}

/// A denial and how far the evaluation got.
#[derive(Debug, Clone)]
struct Ranked {
    stage: Stage,
    denial: Denial,
}

fn at(stage: Stage, denial: Denial) -> Ranked {
    Ranked { stage, denial }
}

/// Evaluates one parsed requirement.
///
/// # Errors
/// The first rule that denies it.
pub fn evaluate(
    ctx: &Context<'_>,
    ledger: &mut dyn Ledger,
    req: &Requirement,
) -> Result<Allowed, Denial> {
    evaluate_ranked(ctx, ledger, req).map_err(|r| r.denial)
}

/// [`evaluate`], with how far it got when it denies.
#[allow(clippy::too_many_lines)]
fn evaluate_ranked(
    ctx: &Context<'_>,
    ledger: &mut dyn Ledger,
    req: &Requirement,
) -> Result<Allowed, Ranked> {
    match &req.payment_flow {
        PaymentFlow::Authorization | PaymentFlow::Upfront => {}
        PaymentFlow::Escrow => {
            return Err(at(
                Stage::Flow,
                deny(
                    DenyReason::UnsupportedScheme,
                    "extra.paymentFlow \"escrow\" is not supported by the exact scheme (the official server accepts authorization and upfront only)",
                ),
            ))
        }
        PaymentFlow::Unknown(flow) => {
            return Err(at(
                Stage::Flow,
                deny(
                    DenyReason::UnsupportedScheme,
                    format!(
                        "extra.paymentFlow {flow} is not a flow the official client knows (authorization, upfront, escrow); such options are dropped"
                    ),
                ),
            ))
        }
    }
    if req.transfer_method != TransferMethod::Eip3009 {
        return Err(at(
            Stage::Transfer,
            deny(DenyReason::UnsupportedScheme, "only EIP-3009 transfers are signed (not Permit2)"),
        ));
    }
    let asset = ctx.registry.lookup(&req.network, &req.asset).ok_or_else(|| {
        at(
            Stage::Registry,
            deny(
                DenyReason::AssetNotAllowed,
                format!(
                    "asset {} on {} is not in the asset registry",
                    req.asset.to_checksum(None),
                    req.network
                ),
            ),
        )
    })?;
    if req.extra_name.as_deref() != Some(asset.name.as_str())
        || req.extra_version.as_deref() != Some(asset.version.as_str())
    {
        return Err(at(
            Stage::Domain,
            deny(
                DenyReason::DomainMismatch,
                format!(
                    "extra.name/version {:?}/{:?} differ from the registry's {:?}/{:?} for {}",
                    req.extra_name.as_deref().unwrap_or(""),
                    req.extra_version.as_deref().unwrap_or(""),
                    asset.name,
                    asset.version,
                    asset.symbol
                ),
            ),
        ));
    }
    let Some(policy) = ctx.policy else {
        return Err(at(
            Stage::Policy,
            deny(
                DenyReason::NoPolicy,
                "the wallet has no policy; nothing is signed until one is set",
            ),
        ));
    };
    // Formatted only when a message needs them (checksumming costs a keccak).
    let payee = Checksummed(&req.pay_to);
    if ctx.kyt.is_denied(&req.pay_to) {
        return Err(at(
            Stage::Kyt,
            deny(DenyReason::KytDenied, format!("payee {payee} is on the KYT denylist")),
        ));
    }
    if !allowed(&ctx.session.scope.networks, &req.network) {
        return Err(at(
            Stage::SessionScope,
            deny(
                DenyReason::NetworkNotAllowed,
                format!("network {} is not allowed for this session", req.network),
            ),
        ));
    }
    if !allowed(&ctx.session.scope.assets, &req.asset) {
        return Err(at(
            Stage::SessionScope,
            deny(
                DenyReason::AssetNotAllowed,
                format!("asset {} is not allowed for this session", req.asset.to_checksum(None)),
            ),
        ));
    }
    if !allowed(&ctx.session.scope.payees, &req.pay_to) {
        return Err(at(
            Stage::SessionScope,
            deny(
                DenyReason::PayeeNotAllowed,
                format!("payee {payee} is not allowed for this session"),
            ),
        ));
    }
    if policy.deny_payees.contains(&req.pay_to) {
        return Err(at(
            Stage::PayeeLists,
            deny(DenyReason::PayeeDenied, format!("payee {payee} is on the policy's denylist")),
        ));
    }
    if !policy.allow_payees.is_empty() && !policy.allow_payees.contains(&req.pay_to) {
        return Err(at(
            Stage::PayeeLists,
            deny(
                DenyReason::PayeeNotAllowed,
                format!("payee {payee} is not on the policy's payee allowlist"),
            ),
        ));
    }
    let charge = atomic_to_units(req.amount, asset.decimals).ok_or_else(|| {
        at(Stage::Amount, deny(DenyReason::InvalidRequirement, "amount is too large"))
    })?;
    let paying = Paying { amount: req.amount, asset };
    // Ordered rules: the first that matches decides; none: deny.
    let rule = policy
        .rules
        .iter()
        .find(|r| r.matches(&req.network, &req.asset, &asset.symbol, &req.pay_to, charge))
        .ok_or_else(|| {
            at(Stage::Rules, no_rule(policy, req, &asset.symbol, charge, &paying.to_string()))
        })?;
    if rule.action == Action::Deny {
        return Err(at(
            Stage::DenyRule,
            deny(
                DenyReason::RuleDenied,
                format!(
                    "policy rule {:?} (line {}) denies {paying} to {payee}",
                    rule.name, rule.line
                ),
            ),
        ));
    }
    for (limit, from) in [
        (policy.wallet.max_per_payment, String::from("the per-payment limit")),
        (rule.max_per_payment, format!("the per-payment limit of rule {:?}", rule.name)),
    ] {
        if let Some(limit) = limit.filter(|l| charge > *l) {
            return Err(at(
                Stage::PerPayment,
                deny(
                    DenyReason::PerTxLimit,
                    format!("{paying} is above {from} of {}", format_units(limit)),
                ),
            ));
        }
    }
    let cap = policy.session.cap.map_or(ctx.session.cap, |c| c.min(ctx.session.cap));
    if ctx.session.spent.checked_add(charge).is_none_or(|a| a > cap) {
        let left = cap.saturating_sub(ctx.session.spent);
        return Err(at(
            Stage::SessionCap,
            deny(
                DenyReason::SessionCap,
                format!(
                    "{paying} is more than the {} the session has left of its {} cap",
                    format_units(left),
                    format_units(cap)
                ),
            ),
        ));
    }
    let now = ctx.now;
    if let Some((b, spent)) =
        over_budget(&policy.session.budgets, charge, |w| ledger.session(w, now))
    {
        return Err(at(
            Stage::SessionBudget,
            deny(
                DenyReason::SessionBudget,
                format!(
                    "{paying} would take the session past its budget of {} per {} ({} spent)",
                    format_units(b.max),
                    window_name(b.per_seconds),
                    format_units(spent)
                ),
            ),
        ));
    }
    if let Some((b, spent)) = over_budget(&policy.wallet.budgets, charge, |w| ledger.wallet(w, now))
    {
        return Err(at(
            Stage::WalletBudget,
            deny(
                DenyReason::WalletBudget,
                format!(
                    "{paying} would take the wallet past its budget of {} per {} ({} spent)",
                    format_units(b.max),
                    window_name(b.per_seconds),
                    format_units(spent)
                ),
            ),
        ));
    }
    if let Some((b, spent)) =
        over_budget(&policy.wallet.per_payee, charge, |w| ledger.payee(&req.pay_to, w, now))
    {
        return Err(at(
            Stage::PayeeBudget,
            deny(
                DenyReason::PayeeCap,
                format!(
                    "{paying} would take payments to {payee} past {} per {} ({} paid)",
                    format_units(b.max),
                    window_name(b.per_seconds),
                    format_units(spent)
                ),
            ),
        ));
    }
    for (limit, count, whose) in [
        (policy.session.payments_per_minute, ledger.session(60, now).count, "session"),
        (policy.wallet.payments_per_minute, ledger.wallet(60, now).count, "wallet"),
    ] {
        if let Some(limit) = limit.filter(|l| count >= *l) {
            return Err(at(
                Stage::Rate,
                deny(
                    DenyReason::RateLimited,
                    format!("the {whose} made {count} payments in the last minute (limit {limit})"),
                ),
            ));
        }
    }
    let hold = if ctx.approved {
        None
    } else if rule.action == Action::Approve {
        Some(format!("policy rule {:?} requires approval", rule.name))
    } else if let Some(t) = policy.approval.above.filter(|t| charge > *t) {
        Some(format!("{paying} is above the approval threshold of {}", format_units(t)))
    } else if policy.approval.first_time_payee && !ledger.paid_before(&req.pay_to) {
        Some(format!("first payment to {payee}"))
    } else {
        None
    };
    let cap = policy.wallet.max_validity_seconds.clamp(MIN_VALIDITY_SECONDS, MAX_VALIDITY_SECONDS);
    let validity = req.max_timeout_seconds.clamp(MIN_VALIDITY_SECONDS, cap);
    let valid_before = ctx.now.saturating_add(validity);
    Ok((asset.clone(), charge, valid_before, hold))
}

/// What an `accepts[]` option offers, read leniently, for matching a preference: its CAIP-2
/// network and its asset, when they can be read (an option whose other fields are malformed
/// still matches, and is then denied for what is malformed).
fn offered(x402_version: u64, v: &serde_json::Value) -> (Option<String>, Option<Address>) {
    let network = v
        .get("network")
        .and_then(serde_json::Value::as_str)
        .and_then(|n| option_network(x402_version, n).ok())
        .map(|(n, _)| n);
    let asset = v
        .get("asset")
        .and_then(serde_json::Value::as_str)
        .and_then(|a| crate::address::parse_address(a).ok());
    (network, asset)
}

/// Chooses the `accepts[]` option to sign, as the official client selects one
/// (`@x402/core` 2.27.0 `x402Client.selectPaymentRequirements`), with this wallet's policy as
/// the client's policy:
///
/// 1. **Preferences filter.** `preferred_network` (a CAIP-2 id such as `eip155:84532`, or an
///    x402 v1 name such as `base-sepolia`, mapped by the official table) and `preferred_asset`
///    keep only the options on that network and in that token. When no option matches, or the
///    network preference cannot be read, the payment is refused with `PREFERENCE_NOT_OFFERED`:
///    a preference never falls back to another network or asset.
/// 2. **Flows.** An option whose `extra.paymentFlow` the official client does not know is
///    dropped (denied `UNSUPPORTED_SCHEME`), and so is `escrow`, which the official `exact`
///    server refuses. Options with the `authorization` flow (or none) are tried before
///    `upfront` ones, as the official client prefers them; then the server's order.
/// 3. **Policy.** The first option the policy allows and that can be signed now is chosen; one
///    held for approval is chosen only when no option can be signed now.
///
/// `validAfter` is 0 for x402 v2 and `now - 600` for v1 (the official clients' values).
///
/// # Errors
/// When no option is allowed: the reason of the option whose evaluation got furthest through
/// the checks (in the order [`evaluate`] makes them; the first such option on a tie), with
/// every option's reason in the message.
pub fn choose(
    ctx: &Context<'_>,
    ledger: &mut dyn Ledger,
    required: &PaymentRequired,
    preferred_network: Option<&str>,
    preferred_asset: Option<&Address>,
) -> Result<Approval, Denial> {
    check_session(ctx)?;
    let version = required.x402_version;
    let preferred_network = preferred_network
        .map(|n| {
            caip2_network(n).map_err(|e| {
                deny(DenyReason::PreferenceNotOffered, format!("preferred network: {e}"))
            })
        })
        .transpose()?;
    let wanted = |v: &serde_json::Value| {
        let (network, asset) = offered(version, v);
        preferred_network.as_ref().is_none_or(|p| network.as_ref() == Some(p))
            && preferred_asset.is_none_or(|p| asset.as_ref() == Some(p))
    };
    let candidates: Vec<usize> =
        (0..required.accepts.len()).filter(|&i| wanted(&required.accepts[i])).collect();
    if candidates.is_empty() {
        return Err(not_offered(required, preferred_network.as_deref(), preferred_asset));
    }
    let skipped = required.accepts.len() - candidates.len();
    let parsed: Vec<(usize, Result<Requirement, Ranked>)> = candidates
        .into_iter()
        .map(|i| {
            let r = parse_requirement_for(version, &required.accepts[i]).map_err(|e| {
                let reason = match e {
                    RequirementError::UnsupportedScheme(_) => DenyReason::UnsupportedScheme,
                    RequirementError::UnsupportedNetwork(_) => DenyReason::NetworkNotAllowed,
                    RequirementError::Invalid(_) => DenyReason::InvalidRequirement,
                };
                at(Stage::Parse, deny(reason, e.to_string()))
            });
            (i, r)
        })
        .collect();
    let mut order: Vec<&(usize, Result<Requirement, Ranked>)> = parsed.iter().collect();
    // Stable: within a flow rank, the server's order.
    order.sort_by_key(|(_, r)| r.as_ref().map_or(u8::MAX, |r| r.payment_flow.rank()));
    let mut denials: Vec<(usize, Ranked)> = Vec::new();
    // An option that can be signed now wins over one that must wait for approval.
    let mut held: Option<Approval> = None;
    let valid_after =
        if version == 1 { ctx.now.saturating_sub(V1_VALID_AFTER_LEEWAY_SECONDS) } else { 0 };
    for (i, parsed) in order {
        let outcome =
            parsed.clone().and_then(|req| evaluate_ranked(ctx, ledger, &req).map(|ok| (req, ok)));
        match outcome {
            Ok((requirement, (asset, charge, valid_before, hold))) => {
                let a = Approval {
                    index: *i,
                    requirement,
                    asset,
                    charge,
                    valid_after,
                    valid_before,
                    hold,
                };
                if a.hold.is_none() {
                    return Ok(a);
                }
                held.get_or_insert(a);
            }
            Err(d) => denials.push((*i, d)),
        }
    }
    if let Some(a) = held {
        return Ok(a);
    }
    // The option that got furthest; the first of them on a tie.
    let best = denials
        .iter()
        .fold(None::<&(usize, Ranked)>, |best, d| match best {
            Some(b) if b.1.stage >= d.1.stage => Some(b),
            _ => Some(d),
        })
        .map(|(_, r)| r.denial.clone())
        .unwrap_or_else(|| deny(DenyReason::InvalidRequirement, "no accepts[] options"));
    let not_considered = if skipped > 0 {
        format!(
            " ({skipped} option{} not on the preferred network/asset not considered)",
            if skipped == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    if denials.len() == 1 {
        return Err(deny(best.reason, format!("{}{not_considered}", best.message)));
    }
    let mut all: Vec<String> =
        denials.iter().take(8).map(|(i, d)| format!("accepts[{i}] {}", d.denial)).collect();
    if denials.len() > 8 {
        all.push(format!("and {} more", denials.len() - 8));
    }
    Err(deny(
        best.reason,
        format!("no accepts[] option is allowed: {}{not_considered}", all.join("; ")),
    ))
}

/// The refusal when no option matches the preferences: what was asked, and what is offered.
fn not_offered(
    required: &PaymentRequired,
    network: Option<&str>,
    asset: Option<&Address>,
) -> Denial {
    let wanted = match (network, asset) {
        (Some(n), Some(a)) => format!("on {n} in asset {}", a.to_checksum(None)),
        (Some(n), None) => format!("on {n}"),
        (None, Some(a)) => format!("in asset {}", a.to_checksum(None)),
        (None, None) => "at all".to_owned(),
    };
    let mut offers: Vec<String> = required
        .accepts
        .iter()
        .take(8)
        .map(|v| {
            let s = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or("?");
            format!("{} {}", s("network"), s("asset"))
        })
        .collect();
    if required.accepts.len() > 8 {
        offers.push(format!("and {} more", required.accepts.len() - 8));
    }
    deny(
        DenyReason::PreferenceNotOffered,
        format!(
            "no accepts[] option is {wanted} (the preference filters the options, it never falls back); offered: {}",
            offers.join(", ")
        ),
    )
}
