//! The decision: may this wallet sign this payment for this session, now?
//!
//! Pure: the caller passes the policy, the session's state, the registry, the KYT list and the
//! time. Default deny: without a policy nothing is signed, and every rule must allow.

use std::collections::HashSet;

use alloy_primitives::{Address, U256};
use serde::{Deserialize, Serialize};

use crate::{
    amount::{atomic_to_units, format_decimal, format_units},
    registry::AssetInfo,
    x402::{parse_requirement, PaymentRequired, Requirement, RequirementError, TransferMethod},
};

/// Default upper bound on an authorization's validity, seconds.
pub const DEFAULT_MAX_VALIDITY_SECONDS: u64 = 300;
/// Hard upper bound on an authorization's validity, seconds: one hour.
pub const MAX_VALIDITY_SECONDS: u64 = 3600;
/// Lower bound: facilitators require `validBefore >= now + 6` when they verify, after the
/// round trip to the server; anything shorter is charged but cannot settle.
pub const MIN_VALIDITY_SECONDS: u64 = 10;

/// A wallet's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Bumped by every change.
    pub version: u64,
    /// Largest single payment, 18-decimal units.
    pub max_per_payment: U256,
    /// Allowed CAIP-2 networks; empty: every registry network.
    pub networks: Vec<String>,
    /// Allowed asset addresses; empty: every registry asset.
    pub assets: Vec<Address>,
    /// Upper bound on `validBefore - now`, seconds.
    pub max_validity_seconds: u64,
}

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
        }
    }

    /// Every reason, for tests and docs.
    pub const ALL: [Self; 13] = [
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
    /// `validBefore` of the authorization.
    pub valid_before: u64,
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

/// Evaluates one parsed requirement.
///
/// # Errors
/// The first rule that denies it.
pub fn evaluate(ctx: &Context<'_>, req: &Requirement) -> Result<(AssetInfo, U256, u64), Denial> {
    if req.transfer_method != TransferMethod::Eip3009 {
        return Err(deny(
            DenyReason::UnsupportedScheme,
            "only EIP-3009 transfers are signed (not Permit2)",
        ));
    }
    let asset = ctx.registry.lookup(&req.network, &req.asset).ok_or_else(|| {
        deny(
            DenyReason::AssetNotAllowed,
            format!(
                "asset {} on {} is not in the asset registry",
                req.asset.to_checksum(None),
                req.network
            ),
        )
    })?;
    if req.extra_name.as_deref() != Some(asset.name.as_str())
        || req.extra_version.as_deref() != Some(asset.version.as_str())
    {
        return Err(deny(
            DenyReason::DomainMismatch,
            format!(
                "extra.name/version {:?}/{:?} differ from the registry's {:?}/{:?} for {}",
                req.extra_name.as_deref().unwrap_or(""),
                req.extra_version.as_deref().unwrap_or(""),
                asset.name,
                asset.version,
                asset.symbol
            ),
        ));
    }
    let Some(policy) = ctx.policy else {
        return Err(deny(
            DenyReason::NoPolicy,
            "the wallet has no policy; nothing is signed until one is set",
        ));
    };
    if !allowed(&policy.networks, &req.network)
        || !allowed(&ctx.session.scope.networks, &req.network)
    {
        return Err(deny(
            DenyReason::NetworkNotAllowed,
            format!("network {} is not allowed", req.network),
        ));
    }
    if !allowed(&policy.assets, &req.asset) || !allowed(&ctx.session.scope.assets, &req.asset) {
        return Err(deny(
            DenyReason::AssetNotAllowed,
            format!("asset {} is not allowed", req.asset.to_checksum(None)),
        ));
    }
    if ctx.kyt.is_denied(&req.pay_to) {
        return Err(deny(
            DenyReason::KytDenied,
            format!("payee {} is on the KYT denylist", req.pay_to.to_checksum(None)),
        ));
    }
    if !allowed(&ctx.session.scope.payees, &req.pay_to) {
        return Err(deny(
            DenyReason::PayeeNotAllowed,
            format!("payee {} is not allowed for this session", req.pay_to.to_checksum(None)),
        ));
    }
    let charge = atomic_to_units(req.amount, asset.decimals)
        .ok_or_else(|| deny(DenyReason::InvalidRequirement, "amount is too large"))?;
    let human = format_decimal(req.amount, asset.decimals);
    if charge > policy.max_per_payment {
        return Err(deny(
            DenyReason::PerTxLimit,
            format!(
                "{human} {} is above the per-payment limit of {}",
                asset.symbol,
                format_units(policy.max_per_payment)
            ),
        ));
    }
    let after = ctx.session.spent.checked_add(charge);
    if after.is_none_or(|a| a > ctx.session.cap) {
        let left = ctx.session.cap.saturating_sub(ctx.session.spent);
        return Err(deny(
            DenyReason::SessionCap,
            format!(
                "{human} {} is more than the {} the session has left of its {} cap",
                asset.symbol,
                format_units(left),
                format_units(ctx.session.cap)
            ),
        ));
    }
    let cap = policy.max_validity_seconds.clamp(MIN_VALIDITY_SECONDS, MAX_VALIDITY_SECONDS);
    let validity = req.max_timeout_seconds.clamp(MIN_VALIDITY_SECONDS, cap);
    let valid_before = ctx.now.saturating_add(validity);
    Ok((asset.clone(), charge, valid_before))
}

/// Chooses the first `accepts[]` option that policy allows, options matching the preferred
/// network/asset first, and otherwise in the server's order.
///
/// # Errors
/// When no option is allowed: the most telling denial (a policy reason over a structural one),
/// with every option's reason in the message.
pub fn choose(
    ctx: &Context<'_>,
    required: &PaymentRequired,
    preferred_network: Option<&str>,
    preferred_asset: Option<&Address>,
) -> Result<Approval, Denial> {
    check_session(ctx)?;
    let parsed: Vec<Result<Requirement, Denial>> = required
        .accepts
        .iter()
        .map(|v| {
            parse_requirement(v).map_err(|e| match e {
                RequirementError::UnsupportedScheme(_) => {
                    deny(DenyReason::UnsupportedScheme, e.to_string())
                }
                RequirementError::UnsupportedNetwork(_) => {
                    deny(DenyReason::NetworkNotAllowed, e.to_string())
                }
                RequirementError::Invalid(_) => deny(DenyReason::InvalidRequirement, e.to_string()),
            })
        })
        .collect();
    let mut order: Vec<usize> = (0..parsed.len()).collect();
    order.sort_by_key(|&i| {
        let r = parsed[i].as_ref().ok();
        let net_miss = preferred_network.is_some_and(|n| r.is_none_or(|r| r.network != n));
        let asset_miss = preferred_asset.is_some_and(|a| r.is_none_or(|r| r.asset != *a));
        (net_miss, asset_miss)
    });
    let mut denials: Vec<(usize, Denial)> = Vec::new();
    for i in order {
        let outcome = parsed[i].clone().and_then(|req| evaluate(ctx, &req).map(|ok| (req, ok)));
        match outcome {
            Ok((requirement, (asset, charge, valid_before))) => {
                return Ok(Approval { index: i, requirement, asset, charge, valid_before });
            }
            Err(d) => denials.push((i, d)),
        }
    }
    let structural =
        |r: DenyReason| matches!(r, DenyReason::UnsupportedScheme | DenyReason::InvalidRequirement);
    let best = denials
        .iter()
        .find(|(_, d)| !structural(d.reason))
        .or_else(|| denials.first())
        .map(|(_, d)| d.clone());
    let best = best.unwrap_or_else(|| deny(DenyReason::InvalidRequirement, "no accepts[] options"));
    if denials.len() == 1 {
        return Err(best);
    }
    let mut all: Vec<String> =
        denials.iter().take(8).map(|(i, d)| format!("accepts[{i}] {d}")).collect();
    if denials.len() > 8 {
        all.push(format!("and {} more", denials.len() - 8));
    }
    Err(deny(best.reason, format!("no accepts[] option is allowed: {}", all.join("; "))))
}
