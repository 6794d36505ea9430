//! One test per deny reason, plus selection among accepts[].

use std::collections::HashSet;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::{json, Value};
use wallet_policy::{
    address::parse_address,
    amount::parse_human,
    registry::{default_assets, AssetInfo},
    rules::{choose, AssetLookup, Context, DenyReason, Policy, Scope, SessionState},
    x402::decode_payment_required,
    Address, U256,
};

const PAYEE: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const BASE_SEPOLIA_USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
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
}

impl Fixture {
    fn new() -> Self {
        Self {
            policy: Some(Policy {
                version: 1,
                max_per_payment: units("0.10"),
                networks: vec![],
                assets: vec![],
                max_validity_seconds: 300,
            }),
            frozen: false,
            cap: units("1"),
            spent: U256::ZERO,
            expires_at: 2_000,
            revoked: false,
            scope: Scope::default(),
            kyt: HashSet::new(),
            registry: Registry(default_assets()),
        }
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
        };
        choose(&ctx, &required, None, None)
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
    f.policy.as_mut().unwrap().max_validity_seconds = 30;
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
    net.policy.as_mut().unwrap().networks = vec!["eip155:8453".into()];
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
    };
    assert_eq!(choose(&ctx, &required, Some("eip155:8453"), None).unwrap().index, 1);
    assert_eq!(
        choose(&ctx, &required, None, Some(&parse_address(BASE_USDC).unwrap())).unwrap().index,
        1
    );
    assert_eq!(
        choose(&ctx, &required, Some("eip155:1"), None).unwrap().index,
        0,
        "no match: server order"
    );
}

#[test]
fn cap_exactly_reached_is_allowed_once() {
    let f = Fixture { spent: units("0.99"), ..Fixture::new() };
    assert!(f.run(vec![good()]).is_ok(), "spent + amount == cap is allowed");
    let f = Fixture { spent: units("0.990000000000000001"), ..Fixture::new() };
    assert_eq!(f.deny(vec![good()]), DenyReason::SessionCap);
}
