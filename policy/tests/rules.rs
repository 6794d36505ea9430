//! One test per deny reason, plus selection among accepts[].

use std::collections::HashSet;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::{json, Value};
use wallet_policy::{
    address::parse_address,
    amount::{atomic_to_units, parse_human},
    registry::{default_assets, AssetInfo},
    rules::{choose, AssetLookup, Context, DenyReason, EmptyLedger, Policy, Scope, SessionState},
    window::{History, ScopeLedger, WalletHistory},
    x402::decode_payment_required,
    Address, U256,
};

const PAYEE: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const BASE_SEPOLIA_USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const OTHER: &str = "0x00000000000000000000000000000000000000aa";
const BASE_USDC: &str = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913";

struct Registry(Vec<AssetInfo>);
impl AssetLookup for Registry {
    fn lookup(&self, network: &str, asset: &Address) -> Option<&AssetInfo> {
        self.0.iter().find(|a| a.network == network && a.address == *asset)
    }
}

fn units(s: &str) -> U256 {
    parse_human(s).unwrap().units
}

fn option(network: &str, asset: &str, amount: &str, name: &str) -> Value {
    json!({"scheme":"exact","network":network,"amount":amount,"asset":asset,"payTo":PAYEE,"maxTimeoutSeconds":60,"extra":{"name":name,"version":"2"}})
}

fn header(accepts: Vec<Value>) -> String {
    STANDARD.encode(
        json!({"x402Version":2,"resource":{"url":"https://x"},"accepts":accepts}).to_string(),
    )
}

struct Fixture {
    policy: Option<Policy>,
    frozen: bool,
    cap: U256,
    spent: U256,
    expires_at: u64,
    revoked: bool,
    scope: Scope,
    kyt: HashSet<Address>,
    registry: Registry,
    wallet_history: WalletHistory,
    session_history: History,
    approved: bool,
    /// The request's network preference.
    prefer_network: Option<&'static str>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            policy: Some(
                Policy::parse(&Policy::basic_document(units("0.10"), &[], &[], 300)).unwrap(),
            ),
            frozen: false,
            cap: units("1"),
            spent: U256::ZERO,
            expires_at: 2_000,
            revoked: false,
            scope: Scope::default(),
            kyt: HashSet::new(),
            registry: Registry(default_assets()),
            wallet_history: WalletHistory::default(),
            session_history: History::new(),
            approved: false,
            prefer_network: None,
        }
    }

    /// A fixture whose policy is this document.
    fn with(doc: &str) -> Self {
        Self { policy: Some(Policy::parse(doc).unwrap()), ..Self::new() }
    }

    /// Records an earlier payment of `amount` (atomic USDC) to `payee` at `sec`.
    fn paid(mut self, payee: &str, amount: u64, sec: u64) -> Self {
        let a = atomic_to_units(U256::from(amount), 6).unwrap();
        self.wallet_history.record(parse_address(payee).unwrap(), sec, a);
        self.session_history.record(sec, a);
        self.spent += a;
        self
    }

    fn run(
        &self,
        accepts: Vec<Value>,
    ) -> Result<wallet_policy::rules::Approval, wallet_policy::rules::Denial> {
        let required = decode_payment_required(&header(accepts)).unwrap();
        let ctx = Context {
            policy: self.policy.as_ref(),
            wallet_frozen: self.frozen,
            session: SessionState {
                cap: self.cap,
                spent: self.spent,
                expires_at: self.expires_at,
                revoked: self.revoked,
                scope: &self.scope,
            },
            kyt: &self.kyt,
            registry: &self.registry,
            now: 1_000,
            approved: self.approved,
        };
        let mut wallet = self.wallet_history.clone();
        let mut session = self.session_history.clone();
        let mut ledger = ScopeLedger { wallet: &mut wallet, session: &mut session };
        choose(&ctx, &mut ledger, &required, self.prefer_network, None)
    }

    fn deny(&self, accepts: Vec<Value>) -> DenyReason {
        self.run(accepts).expect_err("must be denied").reason
    }
}

fn good() -> Value {
    option("eip155:84532", BASE_SEPOLIA_USDC, "10000", "USDC")
}

#[test]
fn allows_within_every_rule() {
    let a = Fixture::new().run(vec![good()]).unwrap();
    assert_eq!(a.index, 0);
    assert_eq!(a.charge, units("0.01"));
    assert_eq!(
        a.valid_before, 1_060,
        "validBefore = now + maxTimeoutSeconds when under the policy bound"
    );
}

#[test]
fn validity_has_a_floor_a_facilitator_can_settle() {
    let mut short = good();
    short["maxTimeoutSeconds"] = 3.into();
    assert_eq!(Fixture::new().run(vec![short]).unwrap().valid_before, 1_010, "at least 10 s");
}

#[test]
fn validity_is_capped_by_policy() {
    let mut f = Fixture::new();
    f.policy.as_mut().unwrap().wallet.max_validity_seconds = 30;
    assert_eq!(f.run(vec![good()]).unwrap().valid_before, 1_030);
}

#[test]
fn every_reason_is_reachable() {
    let mut seen = HashSet::new();
    let mut check = |f: &Fixture, accepts: Vec<Value>, want: DenyReason| {
        assert_eq!(f.deny(accepts), want);
        seen.insert(want);
    };
    check(&Fixture { policy: None, ..Fixture::new() }, vec![good()], DenyReason::NoPolicy);
    check(
        &Fixture::new(),
        vec![option("eip155:84532", BASE_SEPOLIA_USDC, "100001", "USDC")],
        DenyReason::PerTxLimit,
    );
    check(
        &Fixture { spent: units("0.995"), ..Fixture::new() },
        vec![good()],
        DenyReason::SessionCap,
    );
    let mut kyt = Fixture::new();
    kyt.kyt.insert(parse_address(&PAYEE.to_lowercase()).unwrap());
    check(&kyt, vec![good()], DenyReason::KytDenied);
    let mut net = Fixture::new();
    net.policy.as_mut().unwrap().rules[0].networks = vec!["eip155:8453".into()];
    check(&net, vec![good()], DenyReason::NetworkNotAllowed);
    check(
        &Fixture::new(),
        vec![option("eip155:84532", "0x0000000000000000000000000000000000000001", "1", "USDC")],
        DenyReason::AssetNotAllowed,
    );
    check(
        &Fixture::new(),
        vec![option("eip155:84532", BASE_SEPOLIA_USDC, "10000", "USD Coin")],
        DenyReason::DomainMismatch,
    );
    let mut upto = good();
    upto["scheme"] = "upto".into();
    check(&Fixture::new(), vec![upto], DenyReason::UnsupportedScheme);
    let mut payees = Fixture::new();
    payees.scope.payees =
        vec![parse_address("0x0000000000000000000000000000000000000002").unwrap()];
    check(&payees, vec![good()], DenyReason::PayeeNotAllowed);
    check(
        &Fixture { expires_at: 1_000, ..Fixture::new() },
        vec![good()],
        DenyReason::SessionExpired,
    );
    check(&Fixture { revoked: true, ..Fixture::new() }, vec![good()], DenyReason::SessionRevoked);
    check(&Fixture { frozen: true, ..Fixture::new() }, vec![good()], DenyReason::WalletFrozen);
    let mut bad = good();
    bad["amount"] = "ten".into();
    check(&Fixture::new(), vec![bad], DenyReason::InvalidRequirement);
    check(
        &Fixture::with(
            "version = 1\n[[rule]]\nassets = [\"USDC\"]\nabove = \"1\"\naction = \"allow\"\n",
        ),
        vec![good()],
        DenyReason::NoMatchingRule,
    );
    check(
        &Fixture::with("version = 1\n[[rule]]\nname = \"no testnets\"\nnetworks = [\"eip155:84532\"]\naction = \"deny\"\n[[rule]]\naction = \"allow\"\n"),
        vec![good()],
        DenyReason::RuleDenied,
    );
    check(
        &Fixture::with(&format!(
            "version = 1\n[payees]\ndeny = [\"{PAYEE}\"]\n[[rule]]\naction = \"allow\"\n"
        )),
        vec![good()],
        DenyReason::PayeeDenied,
    );
    check(
        &Fixture::with("version = 1\n[wallet]\nbudgets = [{ per = \"1h\", max = \"0.05\" }]\n[[rule]]\naction = \"allow\"\n").paid(OTHER, 45_000, 990),
        vec![good()],
        DenyReason::WalletBudget,
    );
    check(
        &Fixture::with("version = 1\n[session]\nbudgets = [{ per = \"1h\", max = \"0.05\" }]\n[[rule]]\naction = \"allow\"\n").paid(OTHER, 45_000, 990),
        vec![good()],
        DenyReason::SessionBudget,
    );
    check(
        &Fixture::with("version = 1\n[wallet]\nper_payee = [{ per = \"1d\", max = \"0.05\" }]\n[[rule]]\naction = \"allow\"\n").paid(PAYEE, 45_000, 10),
        vec![good()],
        DenyReason::PayeeCap,
    );
    check(
        &Fixture::with(
            "version = 1\n[wallet]\npayments_per_minute = 1\n[[rule]]\naction = \"allow\"\n",
        )
        .paid(OTHER, 1, 950),
        vec![good()],
        DenyReason::RateLimited,
    );
    check(
        &Fixture { prefer_network: Some("eip155:8453"), ..Fixture::new() },
        vec![good()],
        DenyReason::PreferenceNotOffered,
    );
    for r in DenyReason::ALL {
        assert!(seen.contains(&r), "{r:?} has no test");
    }
}

#[test]
fn domain_version_mismatch_and_missing_extra_are_denied() {
    let mut v = good();
    v["extra"]["version"] = "1".into();
    assert_eq!(Fixture::new().deny(vec![v]), DenyReason::DomainMismatch);
    let mut v = good();
    v.as_object_mut().unwrap().remove("extra");
    assert_eq!(Fixture::new().deny(vec![v]), DenyReason::DomainMismatch);
    let mut v = good();
    v["extra"]["assetTransferMethod"] = "permit2".into();
    assert_eq!(Fixture::new().deny(vec![v]), DenyReason::UnsupportedScheme);
}

#[test]
fn session_scope_narrows_assets_and_networks() {
    let mut f = Fixture::new();
    f.scope.assets = vec![parse_address(BASE_USDC).unwrap()];
    assert_eq!(f.deny(vec![good()]), DenyReason::AssetNotAllowed);
    let mut f = Fixture::new();
    f.scope.networks = vec!["eip155:8453".into()];
    assert_eq!(f.deny(vec![good()]), DenyReason::NetworkNotAllowed);
}

#[test]
fn first_allowed_option_wins_and_reasons_are_reported() {
    let f = Fixture::new();
    let too_big = option("eip155:84532", BASE_SEPOLIA_USDC, "5000000", "USDC");
    let base = option("eip155:8453", BASE_USDC, "20000", "USD Coin");
    let a = f.run(vec![too_big.clone(), base.clone(), good()]).unwrap();
    assert_eq!(a.index, 1, "accepts[0] is over the limit; accepts[1] is the first allowed");
    let err = f.run(vec![json!({"scheme":"upto"}), too_big]).unwrap_err();
    assert_eq!(
        err.reason,
        DenyReason::PerTxLimit,
        "a policy reason is more telling than an unsupported scheme"
    );
    assert!(err.message.contains("accepts[0]") && err.message.contains("accepts[1]"));
}

#[test]
fn preference_reorders_options() {
    let f = Fixture::new();
    let required = decode_payment_required(&header(vec![
        good(),
        option("eip155:8453", BASE_USDC, "20000", "USD Coin"),
    ]))
    .unwrap();
    let ctx = Context {
        policy: f.policy.as_ref(),
        wallet_frozen: false,
        session: SessionState {
            cap: f.cap,
            spent: f.spent,
            expires_at: f.expires_at,
            revoked: false,
            scope: &f.scope,
        },
        kyt: &f.kyt,
        registry: &f.registry,
        now: 1_000,
        approved: false,
    };
    let l = &mut EmptyLedger;
    assert_eq!(choose(&ctx, l, &required, Some("eip155:8453"), None).unwrap().index, 1);
    assert_eq!(
        choose(&ctx, l, &required, None, Some(&parse_address(BASE_USDC).unwrap())).unwrap().index,
        1
    );
    assert_eq!(
        choose(&ctx, l, &required, Some("eip155:1"), None).unwrap_err().reason,
        DenyReason::PreferenceNotOffered,
        "no match: refused, never a silent fallback to another network (issue 10)"
    );
}

#[test]
fn cap_exactly_reached_is_allowed_once() {
    let f = Fixture { spent: units("0.99"), ..Fixture::new() };
    assert!(f.run(vec![good()]).is_ok(), "spent + amount == cap is allowed");
    let f = Fixture { spent: units("0.990000000000000001"), ..Fixture::new() };
    assert_eq!(f.deny(vec![good()]), DenyReason::SessionCap);
}

#[test]
fn budgets_count_only_their_window() {
    let doc = "version = 1\n[wallet]\nbudgets = [{ per = \"10m\", max = \"0.05\" }]\n[[rule]]\naction = \"allow\"\n";
    // now = 1000. A spend at second 401 is 599 s old: inside the 10 min window.
    let f = Fixture::with(doc).paid(OTHER, 45_000, 401);
    assert_eq!(f.deny(vec![good()]), DenyReason::WalletBudget);
    // At second 400 it is 600 s old: it has left the window.
    assert!(Fixture::with(doc).paid(OTHER, 45_000, 400).run(vec![good()]).is_ok());
    // Exactly at the budget is allowed.
    assert!(Fixture::with(doc).paid(OTHER, 40_000, 999).run(vec![good()]).is_ok());
}

#[test]
fn session_cap_in_the_policy_tightens_the_issued_cap() {
    let doc = "version = 1\n[session]\ncap = \"0.015\"\n[[rule]]\naction = \"allow\"\n";
    assert!(Fixture::with(doc).run(vec![good()]).is_ok());
    assert_eq!(
        Fixture::with(doc).paid(OTHER, 10_000, 1).deny(vec![good()]),
        DenyReason::SessionCap
    );
}

#[test]
fn first_matching_rule_decides() {
    let doc = "version = 1
[[rule]]
name = \"big ones need a human\"
above = \"0.05\"
action = \"approve\"
[[rule]]
name = \"small USDC\"
assets = [\"usdc\"]
max_per_payment = \"0.02\"
action = \"allow\"
";
    let f = Fixture::with(doc);
    let a = f.run(vec![good()]).unwrap();
    assert_eq!(a.hold, None, "0.01 matches the second rule: signed now");
    let mid = option("eip155:84532", BASE_SEPOLIA_USDC, "30000", "USDC");
    assert_eq!(f.deny(vec![mid]), DenyReason::PerTxLimit, "0.03: the rule's own limit");
    let big = option("eip155:84532", BASE_SEPOLIA_USDC, "60000", "USDC");
    let held = f.run(vec![big.clone()]).unwrap();
    assert!(held.hold.unwrap().contains("big ones need a human"));
    let approved = Fixture { approved: true, ..Fixture::with(doc) };
    assert_eq!(approved.run(vec![big]).unwrap().hold, None, "an approved request is signed");
}

#[test]
fn approval_threshold_and_first_time_payees_hold() {
    let doc = "version = 1
[approval]
above = \"0.005\"
[[rule]]
action = \"allow\"
";
    assert!(Fixture::with(doc)
        .run(vec![good()])
        .unwrap()
        .hold
        .unwrap()
        .contains("approval threshold"));
    let doc = "version = 1
[approval]
first_time_payee = true
[[rule]]
action = \"allow\"
";
    assert!(Fixture::with(doc).run(vec![good()]).unwrap().hold.unwrap().contains("first payment"));
    assert_eq!(Fixture::with(doc).paid(PAYEE, 1, 5).run(vec![good()]).unwrap().hold, None);
    // Limits still apply to an approved payment.
    let doc = "version = 1
[wallet]
max_per_payment = \"0.001\"
[approval]
above = \"0.0001\"
[[rule]]
action = \"allow\"
";
    let f = Fixture { approved: true, ..Fixture::with(doc) };
    assert_eq!(f.deny(vec![good()]), DenyReason::PerTxLimit);
}

#[test]
fn an_option_signable_now_beats_one_that_must_wait() {
    let doc = "version = 1
[[rule]]
networks = [\"eip155:84532\"]
action = \"approve\"
[[rule]]
action = \"allow\"
";
    let base = option("eip155:8453", BASE_USDC, "20000", "USD Coin");
    let a = Fixture::with(doc).run(vec![good(), base]).unwrap();
    assert_eq!((a.index, a.hold), (1, None));
}
