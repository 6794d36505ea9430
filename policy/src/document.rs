//! The policy document: a TOML file an owner writes, and the compiled [`Policy`] it becomes.
//!
//! The document is parsed in the enclave (the host only carries the text), so what is enforced
//! is exactly what the admin signed. A bad document is rejected whole, with the line and the
//! reason; nothing of it is applied.
//!
//! ```toml
//! version = 1                          # schema version of this document
//!
//! [wallet]                             # limits on everything the wallet pays
//! max_per_payment = "1.00"             # human units of the asset paid ("1.00" = 1 USDC)
//! max_validity = "5m"                  # longest authorization validity
//! payments_per_minute = 60
//! budgets = [{ per = "1h", max = "20" }, { per = "1d", max = "100" }]
//! per_payee = [{ per = "1d", max = "10" }]   # to any one payee
//!
//! [session]                            # limits on each session (agent credential)
//! cap = "10"                           # lifetime cap, on top of the cap the session was issued
//! payments_per_minute = 20
//! budgets = [{ per = "1h", max = "5" }]
//!
//! [approval]
//! above = "0.50"                       # hold payments above this for a human
//! first_time_payee = true              # and the first payment to a payee never paid
//! expires = "15m"                      # undecided holds are denied after this
//!
//! [payees]
//! deny = ["0x000000000000000000000000000000000000dEaD"]
//!
//! [[rule]]                             # ordered; first match wins; no match: deny
//! name = "USDC on Base"
//! networks = ["eip155:8453"]
//! assets = ["USDC"]
//! action = "allow"                     # allow | deny | approve
//! ```

use std::{collections::HashSet, fmt, ops::Range};

use alloy_primitives::{Address, U256};
use serde::{de, Deserialize, Deserializer};

use crate::{
    address::parse_address,
    amount::{format_units, parse_plain, AmountError, UNIT_DECIMALS},
    registry::{chain_id, AssetInfo},
    window::MAX_WINDOW_SECONDS,
};

/// The document schema this engine reads.
pub const SCHEMA_VERSION: u64 = 1;
/// Default upper bound on an authorization's validity, seconds.
pub const DEFAULT_MAX_VALIDITY_SECONDS: u64 = 300;
/// Hard upper bound on an authorization's validity, seconds: one hour.
pub const MAX_VALIDITY_SECONDS: u64 = 3600;
/// Lower bound: facilitators require `validBefore >= now + 6` when they verify, after the
/// round trip to the server; anything shorter is charged but cannot settle.
pub const MIN_VALIDITY_SECONDS: u64 = 10;
/// Default life of a hold for approval: 15 minutes.
pub const DEFAULT_APPROVAL_EXPIRY_SECONDS: u64 = 15 * 60;
/// Longest life of a hold for approval: one day.
pub const MAX_APPROVAL_EXPIRY_SECONDS: u64 = 24 * 3600;
/// Largest document accepted, bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// At most this many rules, budgets per scope, and payees per list.
pub const MAX_RULES: usize = 256;
/// At most this many windows per scope.
pub const MAX_BUDGETS: usize = 8;
/// At most this many entries in a payee list.
pub const MAX_PAYEES: usize = 10_000;

/// A rolling time-window budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Window length, seconds.
    pub per_seconds: u64,
    /// Most that may be paid within any such window, 18-decimal units.
    pub max: U256,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Sign (subject to every limit).
    Allow,
    /// Refuse.
    Deny,
    /// Hold for a human's approval (subject to every limit).
    Approve,
}

/// An asset as a rule names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetMatch {
    /// A token contract address (on any network).
    Address(Address),
    /// A registry symbol, case-insensitive ("USDC").
    Symbol(String),
}

/// One rule of the ordered list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Name, for denial messages and audit.
    pub name: String,
    /// Line in the document where the rule starts.
    pub line: usize,
    /// CAIP-2 networks matched; empty: any.
    pub networks: Vec<String>,
    /// Assets matched; empty: any.
    pub assets: Vec<AssetMatch>,
    /// Payees matched; empty: any.
    pub payees: Vec<Address>,
    /// Matches only amounts strictly above this (units).
    pub above: Option<U256>,
    /// What happens on a match.
    pub action: Action,
    /// A per-payment limit for payments this rule allows (units).
    pub max_per_payment: Option<U256>,
}

impl Rule {
    /// Whether the rule applies to this payment.
    #[must_use]
    pub fn matches(
        &self,
        network: &str,
        asset: &Address,
        symbol: &str,
        payee: &Address,
        charge: U256,
    ) -> bool {
        (self.networks.is_empty() || self.networks.iter().any(|n| n == network))
            && (self.assets.is_empty()
                || self.assets.iter().any(|a| match a {
                    AssetMatch::Address(x) => x == asset,
                    AssetMatch::Symbol(s) => s.eq_ignore_ascii_case(symbol),
                }))
            && (self.payees.is_empty() || self.payees.contains(payee))
            && self.above.is_none_or(|t| charge > t)
    }
}

/// Limits on everything a wallet pays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalletLimits {
    /// Largest single payment (units).
    pub max_per_payment: Option<U256>,
    /// Upper bound on `validBefore - now`, seconds.
    pub max_validity_seconds: u64,
    /// Payments per rolling minute.
    pub payments_per_minute: Option<u64>,
    /// Rolling budgets over all the wallet's payments.
    pub budgets: Vec<Budget>,
    /// Rolling budgets over the wallet's payments to any one payee.
    pub per_payee: Vec<Budget>,
}

/// Limits on each session of the wallet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionLimits {
    /// Lifetime cap of every session (the lower of this and the session's own cap applies).
    pub cap: Option<U256>,
    /// Payments per rolling minute, per session.
    pub payments_per_minute: Option<u64>,
    /// Rolling budgets per session.
    pub budgets: Vec<Budget>,
}

/// When a payment is held for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Hold payments strictly above this (units).
    pub above: Option<U256>,
    /// Hold the wallet's first payment to a payee.
    pub first_time_payee: bool,
    /// Undecided holds are denied after this many seconds.
    pub expires_seconds: u64,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        Self {
            above: None,
            first_time_payee: false,
            expires_seconds: DEFAULT_APPROVAL_EXPIRY_SECONDS,
        }
    }
}

/// A compiled policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Bumped by every change (set by the enclave, not the document).
    pub version: u64,
    /// The document as the admin wrote it.
    pub source: String,
    /// Wallet limits.
    pub wallet: WalletLimits,
    /// Session limits.
    pub session: SessionLimits,
    /// Approval holds.
    pub approval: ApprovalPolicy,
    /// Payees always refused.
    pub deny_payees: HashSet<Address>,
    /// When non-empty, the only payees allowed.
    pub allow_payees: HashSet<Address>,
    /// Ordered rules; first match wins; no match denies.
    pub rules: Vec<Rule>,
}

/// Why a document was rejected: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// 1-based line (0 when the whole document is at fault).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// What is wrong, for people.
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}", self.message),
            (l, 0) => write!(f, "line {l}: {}", self.message),
            (l, c) => write!(f, "line {l}, column {c}: {}", self.message),
        }
    }
}

impl std::error::Error for DocumentError {}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset - before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
    (line, col)
}

fn at(src: &str, span: Option<Range<usize>>, message: impl Into<String>) -> DocumentError {
    let (line, column) = span.map_or((0, 0), |s| line_col(src, s.start));
    DocumentError { line, column, message: message.into() }
}

// ---- value types that validate as they deserialize (so errors carry the value's position) ----

/// A human amount: a decimal string ("0.25") or an integer; never a float.
#[derive(Debug, Clone, Copy)]
struct Amount(U256);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount in human units as a string, such as \"0.25\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Amount, E> {
                parse_plain(s).map(Amount).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Amount, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(AmountError::Negative(n.to_string())))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Amount, E> {
                Ok(Amount(U256::from(n) * U256::from(10u64).pow(U256::from(UNIT_DECIMALS))))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Amount, E> {
                Err(E::custom(format!(
                    "amount {n} is a float; write it as a string (\"{n}\") so it is exact"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a duration: `90s`, `15m`, `24h`, `7d`, or plain seconds.
///
/// # Errors
/// A sentence saying what was expected.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 =
        num.parse().map_err(|_| format!("{s:?} is not a duration (write 90s, 15m, 24h or 7d)"))?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("duration {s:?} must be positive and reasonable"))
}

/// A duration: "90s", "15m", "24h", "7d" or integer seconds.
#[derive(Debug, Clone, Copy)]
struct Seconds(u64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"90s\", \"15m\", \"24h\" or \"7d\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Seconds, E> {
                parse_duration(s).map(Seconds).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Seconds, E> {
                u64::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Seconds)
                    .ok_or_else(|| E::custom("a duration must be positive"))
            }
        }
        d.deserialize_any(V)
    }
}

struct Network(String);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let s = s.trim().to_owned();
        chain_id(&s).map_err(de::Error::custom)?;
        Ok(Self(s))
    }
}

struct Payee(Address);

impl<'de> Deserialize<'de> for Payee {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Lists are matched by address, whatever the case they were written in.
        parse_address(&s.trim().to_ascii_lowercase())
            .map(Payee)
            .map_err(|e| de::Error::custom(format!("payee {s:?}: {e}")))
    }
}

impl<'de> Deserialize<'de> for AssetMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        if t.starts_with("0x") || t.starts_with("0X") {
            return parse_address(&t.to_ascii_lowercase())
                .map(AssetMatch::Address)
                .map_err(|e| de::Error::custom(format!("asset {s:?}: {e}")));
        }
        if t.is_empty() || t.len() > 16 || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        {
            return Err(de::Error::custom(format!(
                "asset {s:?}: write a token address (0x...) or a registry symbol such as \"USDC\""
            )));
        }
        Ok(AssetMatch::Symbol(t.to_ascii_uppercase()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ActionDoc {
    Allow,
    Deny,
    Approve,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetDoc {
    per: Seconds,
    max: Amount,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WalletDoc {
    max_per_payment: Option<Amount>,
    max_validity: Option<toml::Spanned<Seconds>>,
    payments_per_minute: Option<toml::Spanned<u64>>,
    budgets: Option<toml::Spanned<Vec<BudgetDoc>>>,
    per_payee: Option<toml::Spanned<Vec<BudgetDoc>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionDoc {
    cap: Option<Amount>,
    payments_per_minute: Option<toml::Spanned<u64>>,
    budgets: Option<toml::Spanned<Vec<BudgetDoc>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalDoc {
    above: Option<Amount>,
    #[serde(default)]
    first_time_payee: bool,
    expires: Option<toml::Spanned<Seconds>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PayeesDoc {
    allow: Option<toml::Spanned<Vec<Payee>>>,
    deny: Option<toml::Spanned<Vec<Payee>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: Option<String>,
    action: ActionDoc,
    #[serde(default)]
    networks: Vec<Network>,
    #[serde(default)]
    assets: Vec<AssetMatch>,
    #[serde(default)]
    payees: Vec<Payee>,
    above: Option<Amount>,
    max_per_payment: Option<Amount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    version: toml::Spanned<u64>,
    #[serde(default)]
    wallet: WalletDoc,
    #[serde(default)]
    session: SessionDoc,
    approval: Option<ApprovalDoc>,
    #[serde(default)]
    payees: PayeesDoc,
    #[serde(default)]
    rule: Vec<toml::Spanned<RuleDoc>>,
}

fn budgets(
    src: &str,
    list: Option<toml::Spanned<Vec<BudgetDoc>>>,
    what: &str,
) -> Result<Vec<Budget>, DocumentError> {
    let Some(list) = list else { return Ok(Vec::new()) };
    let span = list.span();
    let list = list.into_inner();
    if list.len() > MAX_BUDGETS {
        return Err(at(src, Some(span), format!("{what}: at most {MAX_BUDGETS} budgets")));
    }
    let mut out: Vec<Budget> = Vec::with_capacity(list.len());
    for b in list {
        if b.per.0 > MAX_WINDOW_SECONDS {
            return Err(at(
                src,
                Some(span.clone()),
                format!("{what}: a window may be at most {} days", MAX_WINDOW_SECONDS / 86_400),
            ));
        }
        if out.iter().any(|o| o.per_seconds == b.per.0) {
            return Err(at(
                src,
                Some(span.clone()),
                format!("{what}: two budgets for the same window"),
            ));
        }
        out.push(Budget { per_seconds: b.per.0, max: b.max.0 });
    }
    Ok(out)
}

fn rate(src: &str, v: Option<toml::Spanned<u64>>) -> Result<Option<u64>, DocumentError> {
    match v {
        Some(v) if *v.get_ref() == 0 => Err(at(
            src,
            Some(v.span()),
            "payments_per_minute must be at least 1 (to stop payments, freeze the wallet)",
        )),
        Some(v) => Ok(Some(v.into_inner())),
        None => Ok(None),
    }
}

fn payee_set(
    src: &str,
    list: Option<toml::Spanned<Vec<Payee>>>,
    what: &str,
) -> Result<HashSet<Address>, DocumentError> {
    let Some(list) = list else { return Ok(HashSet::new()) };
    let span = list.span();
    let list = list.into_inner();
    if list.len() > MAX_PAYEES {
        return Err(at(
            src,
            Some(span),
            format!("{what}: at most {MAX_PAYEES} payees (use the KYT list for large denylists)"),
        ));
    }
    Ok(list.into_iter().map(|p| p.0).collect())
}

impl Policy {
    /// Parses and checks a policy document.
    ///
    /// # Errors
    /// The first problem, with its line and column.
    pub fn parse(src: &str) -> Result<Self, DocumentError> {
        if src.len() > MAX_DOCUMENT_BYTES {
            return Err(at(
                src,
                None,
                format!("the document is larger than {MAX_DOCUMENT_BYTES} bytes"),
            ));
        }
        let doc: Doc = toml::from_str(src).map_err(|e| {
            let message = e.message().trim_end().to_owned();
            at(src, e.span(), message)
        })?;
        if *doc.version.get_ref() != SCHEMA_VERSION {
            return Err(at(
                src,
                Some(doc.version.span()),
                format!(
                    "unsupported document version {} (this enclave reads version {SCHEMA_VERSION})",
                    doc.version.get_ref()
                ),
            ));
        }
        let w = doc.wallet;
        let max_validity_seconds = match w.max_validity {
            None => DEFAULT_MAX_VALIDITY_SECONDS,
            Some(v) if (MIN_VALIDITY_SECONDS..=MAX_VALIDITY_SECONDS).contains(&v.get_ref().0) => {
                v.get_ref().0
            }
            Some(v) => {
                let s = v.get_ref().0;
                return Err(at(src, Some(v.span()), format!(
                    "wallet.max_validity {s} s must be between {MIN_VALIDITY_SECONDS} s and {MAX_VALIDITY_SECONDS} s"
                )));
            }
        };
        let wallet = WalletLimits {
            max_per_payment: w.max_per_payment.map(|a| a.0),
            max_validity_seconds,
            payments_per_minute: rate(src, w.payments_per_minute)?,
            budgets: budgets(src, w.budgets, "wallet.budgets")?,
            per_payee: budgets(src, w.per_payee, "wallet.per_payee")?,
        };
        let s = doc.session;
        let session = SessionLimits {
            cap: s.cap.map(|a| a.0),
            payments_per_minute: rate(src, s.payments_per_minute)?,
            budgets: budgets(src, s.budgets, "session.budgets")?,
        };
        let approval = match doc.approval {
            None => ApprovalPolicy::default(),
            Some(a) => ApprovalPolicy {
                above: a.above.map(|x| x.0),
                first_time_payee: a.first_time_payee,
                expires_seconds: match a.expires {
                    None => DEFAULT_APPROVAL_EXPIRY_SECONDS,
                    Some(e) if e.get_ref().0 <= MAX_APPROVAL_EXPIRY_SECONDS => e.get_ref().0,
                    Some(e) => {
                        return Err(at(
                            src,
                            Some(e.span()),
                            format!(
                                "approval.expires may be at most {} hours",
                                MAX_APPROVAL_EXPIRY_SECONDS / 3600
                            ),
                        ))
                    }
                },
            },
        };
        let allow_payees = payee_set(src, doc.payees.allow, "payees.allow")?;
        let deny_payees = payee_set(src, doc.payees.deny, "payees.deny")?;
        if let Some(both) = allow_payees.intersection(&deny_payees).next() {
            return Err(at(
                src,
                None,
                format!("payee {} is in both payees.allow and payees.deny", both.to_checksum(None)),
            ));
        }
        if doc.rule.len() > MAX_RULES {
            return Err(at(src, None, format!("at most {MAX_RULES} rules")));
        }
        let mut rules = Vec::with_capacity(doc.rule.len());
        for (i, r) in doc.rule.into_iter().enumerate() {
            let (line, _) = line_col(src, r.span().start);
            let span = r.span();
            let r = r.into_inner();
            let action = match r.action {
                ActionDoc::Allow => Action::Allow,
                ActionDoc::Deny => Action::Deny,
                ActionDoc::Approve => Action::Approve,
            };
            if action == Action::Deny && r.max_per_payment.is_some() {
                return Err(at(
                    src,
                    Some(span),
                    "a deny rule cannot have max_per_payment (it signs nothing)",
                ));
            }
            let name = r
                .name
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("rule {}", i + 1));
            if name.len() > 80 {
                return Err(at(src, Some(span), "a rule name may be at most 80 characters"));
            }
            rules.push(Rule {
                name,
                line,
                networks: r.networks.into_iter().map(|n| n.0).collect(),
                assets: r.assets,
                payees: r.payees.into_iter().map(|p| p.0).collect(),
                above: r.above.map(|a| a.0),
                action,
                max_per_payment: r.max_per_payment.map(|a| a.0),
            });
        }
        Ok(Self {
            version: 0,
            source: src.to_owned(),
            wallet,
            session,
            approval,
            deny_payees,
            allow_payees,
            rules,
        })
    }

    /// What a valid document probably does not mean to do, checked against an asset
    /// `registry` (the enclave's, or [`crate::registry::default_assets`] offline): no rule at
    /// all, or none that lets a payment through (every payment is denied); a rule's network
    /// with no registered asset, an asset that is not registered, or assets none of which is on
    /// the rule's networks (the rule can never match). Sentences for people, in document order.
    #[must_use]
    pub fn warnings(&self, registry: &[AssetInfo]) -> Vec<String> {
        let mut out = Vec::new();
        if self.rules.is_empty() {
            out.push("no [[rule]]: every payment is denied (NO_MATCHING_RULE); add a rule with action = \"allow\" or \"approve\"".to_owned());
        } else if self.rules.iter().all(|r| r.action == Action::Deny) {
            out.push("every rule is action = \"deny\": every payment is denied".to_owned());
        }
        let registered = |a: &AssetMatch, asset: &AssetInfo| match a {
            AssetMatch::Address(x) => *x == asset.address,
            AssetMatch::Symbol(s) => s.eq_ignore_ascii_case(&asset.symbol),
        };
        for r in &self.rules {
            let at = format!("rule {:?} (line {})", r.name, r.line);
            let mut lone = false;
            for n in &r.networks {
                if !registry.iter().any(|a| &a.network == n) {
                    lone = true;
                    out.push(format!(
                        "{at}: network {n} has no registered asset, so the rule matches no payment there (register one with walletctl asset add --network {n} ...)"
                    ));
                }
            }
            for a in &r.assets {
                if !registry.iter().any(|x| registered(a, x)) {
                    lone = true;
                    let name = match a {
                        AssetMatch::Address(x) => x.to_checksum(None),
                        AssetMatch::Symbol(s) => s.clone(),
                    };
                    out.push(format!(
                        "{at}: asset {name} is not in the asset registry, so the rule never matches it (walletctl asset list; walletctl asset add)"
                    ));
                }
            }
            if !lone
                && !r.networks.is_empty()
                && !r.assets.is_empty()
                && !registry.iter().any(|x| {
                    r.networks.contains(&x.network) && r.assets.iter().any(|a| registered(a, x))
                })
            {
                out.push(format!(
                    "{at}: none of its assets is registered on its networks, so the rule matches no payment"
                ));
            }
        }
        out
    }

    /// The document for the basic policy (one per-payment limit, optional network and asset
    /// lists, a validity bound): what `SetPolicy` without a document means.
    #[must_use]
    pub fn basic_document(
        max_per_payment: U256,
        networks: &[String],
        assets: &[Address],
        max_validity_seconds: u64,
    ) -> String {
        let quoted =
            |v: Vec<String>| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let mut doc = format!(
            "version = 1\n\n[wallet]\nmax_per_payment = {:?}\nmax_validity = \"{max_validity_seconds}s\"\n\n[[rule]]\nname = \"basic policy\"\naction = \"allow\"\n",
            format_units(max_per_payment)
        );
        if !networks.is_empty() {
            doc.push_str(&format!("networks = [{}]\n", quoted(networks.to_vec())));
        }
        if !assets.is_empty() {
            doc.push_str(&format!(
                "assets = [{}]\n",
                quoted(assets.iter().map(|a| a.to_checksum(None)).collect())
            ));
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::default_assets;

    fn warnings(doc: &str) -> Vec<String> {
        Policy::parse(doc).unwrap().warnings(&default_assets())
    }

    #[test]
    fn policies_that_deny_everything_or_never_match_are_warned_about() {
        let w = warnings("version = 1\n[wallet]\nmax_per_payment = \"1\"\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("no [[rule]]") && w[0].contains("every payment is denied"));
        let w = warnings("version = 1\n[[rule]]\naction = \"deny\"\n");
        assert!(w[0].contains("every rule is action = \"deny\""), "{w:?}");

        let w = warnings(
            "version = 1\n[[rule]]\nname = \"x\"\nassets = [\"FOO\"]\naction = \"allow\"\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("rule \"x\" (line 2)")
                && w[0].contains("asset FOO is not in the asset registry"),
            "{w:?}"
        );
        let w = warnings("version = 1\n[[rule]]\nassets = [\"0x5FbDB2315678afecb367f032d93F642f64180aa3\"]\naction = \"allow\"\n");
        assert!(
            w[0].contains(
                "0x5FbDB2315678afecb367f032d93F642f64180aa3 is not in the asset registry"
            ),
            "{w:?}"
        );
        let w =
            warnings("version = 1\n[[rule]]\nnetworks = [\"eip155:31337\"]\naction = \"allow\"\n");
        assert!(w[0].contains("network eip155:31337 has no registered asset"), "{w:?}");
        // Base mainnet USDC on Base Sepolia only.
        let w = warnings("version = 1\n[[rule]]\nnetworks = [\"eip155:84532\"]\nassets = [\"0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913\"]\naction = \"allow\"\n");
        assert!(w[0].contains("none of its assets is registered on its networks"), "{w:?}");

        // A sound policy: nothing to say.
        let ok = "version = 1\n[[rule]]\nnetworks = [\"eip155:84532\"]\nassets = [\"usdc\"]\naction = \"allow\"\n";
        assert_eq!(warnings(ok), Vec::<String>::new());
        // An asset an admin registered counts.
        let mut registry = default_assets();
        registry.push(
            AssetInfo::new(
                "eip155:31337",
                "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                "T",
                "1",
                6,
                "TUSD",
            )
            .unwrap(),
        );
        let local = "version = 1\n[[rule]]\nnetworks = [\"eip155:31337\"]\nassets = [\"TUSD\"]\naction = \"allow\"\n";
        assert!(Policy::parse(local).unwrap().warnings(&registry).is_empty());
    }

    #[test]
    fn document_amounts_use_the_shared_parser() {
        let e = Policy::parse("version = 1\n[wallet]\nmax_per_payment = \"-1\"\n").unwrap_err();
        assert!(e.to_string().contains("amount must not be negative"), "{e}");
        let e = Policy::parse("version = 1\n[wallet]\nmax_per_payment = -1\n").unwrap_err();
        assert!(e.to_string().contains("amount must not be negative"), "{e}");
        let e = Policy::parse("version = 1\n[wallet]\nmax_per_payment = \"1 FOO\"\n").unwrap_err();
        assert!(e.to_string().contains("plain decimal"), "{e}");
    }
}
