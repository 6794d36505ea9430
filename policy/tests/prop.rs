//! Property tests of the policy engine.

use std::collections::HashSet;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use proptest::prelude::*;
use serde_json::{json, Value};
use wallet_policy::{
    amount::atomic_to_units,
    registry::{default_assets, AssetInfo},
    rules::{choose, AssetLookup, Context, EmptyLedger, Policy, Scope, SessionState},
    window::{History, ScopeLedger, WalletHistory},
    x402::decode_payment_required,
    Address, U256,
};

struct Registry(Vec<AssetInfo>);
impl AssetLookup for Registry {
    fn lookup(&self, network: &str, asset: &Address) -> Option<&AssetInfo> {
        self.0.iter().find(|a| a.network == network && a.address == *asset)
    }
}

fn header(amount: u64) -> String {
    STANDARD.encode(
        json!({"x402Version":2,"resource":{"url":"https://x"},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":amount.to_string(),"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]})
            .to_string(),
    )
}

/// `Ok(charge)` or `Err(())` for one payment of `amount` atomic USDC.
fn decide(amount: u64, limit: u64, cap: u64, spent: u64) -> Result<U256, ()> {
    let registry = Registry(default_assets());
    let kyt: HashSet<Address> = HashSet::new();
    let scope = Scope::default();
    let policy = Policy::parse(&Policy::basic_document(
        atomic_to_units(U256::from(limit), 6).unwrap(),
        &[],
        &[],
        300,
    ))
    .unwrap();
    let ctx = Context {
        policy: Some(&policy),
        wallet_frozen: false,
        session: SessionState {
            cap: atomic_to_units(U256::from(cap), 6).unwrap(),
            spent: atomic_to_units(U256::from(spent), 6).unwrap(),
            expires_at: 2_000,
            revoked: false,
            scope: &scope,
        },
        kyt: &kyt,
        registry: &registry,
        now: 1_000,
        approved: false,
    };
    let required = decode_payment_required(&header(amount)).unwrap();
    choose(&ctx, &mut EmptyLedger, &required, None, None).map(|a| a.charge).map_err(|_| ())
}

/// One payment of `amount` atomic USDC under `policy` with these histories, no session cap, no
/// KYT list: the decision.
fn decide_with(
    policy: &Policy,
    wallet: &mut WalletHistory,
    session: &mut History,
    amount: u64,
    now: u64,
) -> Result<wallet_policy::rules::Approval, wallet_policy::rules::Denial> {
    let registry = Registry(default_assets());
    let kyt: HashSet<Address> = HashSet::new();
    let scope = Scope::default();
    let ctx = Context {
        policy: Some(policy),
        wallet_frozen: false,
        session: SessionState {
            cap: U256::MAX,
            spent: U256::ZERO,
            expires_at: u64::MAX,
            revoked: false,
            scope: &scope,
        },
        kyt: &kyt,
        registry: &registry,
        now,
        approved: false,
    };
    let required = decode_payment_required(&header(amount)).unwrap();
    choose(&ctx, &mut ScopeLedger { wallet, session }, &required, None, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_allows_past_the_cap_or_the_limit(amount in 1u64..10_000_000, limit in 0u64..10_000_000, cap in 0u64..10_000_000, spent in 0u64..10_000_000) {
        if let Ok(charge) = decide(amount, limit, cap, spent) {
            let units = |v: u64| atomic_to_units(U256::from(v), 6).unwrap();
            prop_assert_eq!(charge, units(amount));
            prop_assert!(charge <= units(limit));
            prop_assert!(units(spent) + charge <= units(cap));
        }
    }

    #[test]
    fn denial_is_monotone_in_amount(a in 1u64..5_000_000, extra in 0u64..5_000_000, limit in 0u64..5_000_000, cap in 0u64..10_000_000, spent in 0u64..5_000_000) {
        let b = a + extra;
        if decide(b, limit, cap, spent).is_ok() {
            prop_assert!(decide(a, limit, cap, spent).is_ok(), "{} allowed but the smaller {} denied", b, a);
        }
    }

    #[test]
    fn no_panic_on_arbitrary_policy_documents(s in "(version = 1\n)?(\\[\\[?[a-z_]{0,10}\\]\\]?\n|[a-z_]{1,20} = (\"[-0-9a-z.$ ]{0,12}\"|[0-9.e-]{1,25}|\\[.{0,30}\\]|\\{.{0,30}\\}|true)\n|.{0,20}\n){0,12}") {
        let _ = wallet_policy::document::Policy::parse(&s);
    }

    #[test]
    fn no_panic_on_arbitrary_header_text(s in ".{0,400}") {
        let _ = decode_payment_required(&s);
    }

    #[test]
    fn no_panic_on_arbitrary_base64_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_payment_required(&STANDARD.encode(bytes));
    }

    #[test]
    fn no_panic_on_arbitrary_requirement_fields(
        scheme in prop_oneof![Just(json!("exact")), any::<i64>().prop_map(Value::from), ".{0,8}".prop_map(Value::from)],
        network in prop_oneof![Just(json!("eip155:84532")), ".{0,20}".prop_map(Value::from), Just(Value::Null)],
        amount in prop_oneof![Just(json!("10000")), "[0-9]{0,90}".prop_map(Value::from), any::<f64>().prop_map(Value::from)],
        timeout in prop_oneof![any::<u64>().prop_map(Value::from), any::<i64>().prop_map(Value::from), Just(json!("60"))],
        extra in prop_oneof![Just(json!({"name":"USDC","version":"2"})), Just(json!([])), Just(Value::Null), ".{0,8}".prop_map(Value::from)],
    ) {
        let required = json!({"x402Version":2,"accepts":[{"scheme":scheme,"network":network,"amount":amount,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":timeout,"extra":extra}]});
        if let Ok(required) = decode_payment_required(&STANDARD.encode(required.to_string())) {
            let registry = Registry(default_assets());
            let kyt: HashSet<Address> = HashSet::new();
            let scope = Scope::default();
            let policy = Policy::parse(&Policy::basic_document(U256::MAX, &[], &[], 300)).unwrap();
            let ctx = Context {
                policy: Some(&policy),
                wallet_frozen: false,
                session: SessionState { cap: U256::MAX, spent: U256::ZERO, expires_at: u64::MAX, revoked: false, scope: &scope },
                kyt: &kyt,
                registry: &registry,
                now: u64::MAX - 1,
                approved: false,
            };
            let _ = choose(&ctx, &mut EmptyLedger, &required, None, None);
        }
    }

    /// The history agrees with the plain definition: the sum of the spends whose (effective)
    /// second lies in `(now - len, now]`, where a late spend counts at the newest second seen.
    #[test]
    fn window_totals_agree_with_a_simple_model(
        ops in proptest::collection::vec((0u64..120, 0u64..20, 1u64..1_000, 1u64..400, any::<bool>()), 1..200),
    ) {
        let mut h = History::new();
        let mut model: Vec<(u64, u64)> = Vec::new();
        let mut t = 1_000u64;
        let mut newest = 0u64;
        for (advance, late, amount, len, query) in ops {
            t += advance;
            if query {
                let want: u64 = model.iter().filter(|(sec, _)| sec + len > t).map(|(_, a)| a).sum();
                let want_n = model.iter().filter(|(sec, _)| sec + len > t).count() as u64;
                let got = h.totals(len, t);
                prop_assert_eq!(got.amount, U256::from(want));
                prop_assert_eq!(got.count, want_n);
            } else {
                // Sometimes a spend is recorded a little late (out of order).
                let sec = t.saturating_sub(late);
                h.record(sec, U256::from(amount));
                newest = newest.max(sec);
                model.push((newest, amount));
            }
        }
    }

    /// Payments decided one after another against a wallet budget of `max` per `len` seconds,
    /// each allowed one recorded as the enclave does: the decision is exactly the model's (allow
    /// iff the window's spends plus this one fit), so the budget is never exceeded.
    #[test]
    fn window_budgets_never_overspend_and_agree_with_the_model(
        len in 1u64..3_600,
        max in 1u64..5_000_000,
        payments in proptest::collection::vec((0u64..900, 1u64..2_000_000), 1..120),
    ) {
        let doc = format!(
            "version = 1\n[wallet]\nbudgets = [{{ per = \"{len}s\", max = \"{}\" }}]\n[session]\nbudgets = [{{ per = \"{len}s\", max = \"{}\" }}]\n[[rule]]\naction = \"allow\"\n",
            wallet_policy::amount::format_decimal(U256::from(max), 6),
            wallet_policy::amount::format_decimal(U256::from(max), 6),
        );
        let policy = Policy::parse(&doc).unwrap();
        let mut wallet = WalletHistory::default();
        let mut session = History::new();
        let mut allowed: Vec<(u64, u64)> = Vec::new();
        let mut now = 1_000_000u64;
        for (advance, amount) in payments {
            now += advance;
            let decision = decide_with(&policy, &mut wallet, &mut session, amount, now);
            let in_window: u64 = allowed.iter().filter(|(t, _)| t + len > now).map(|(_, a)| a).sum();
            let model_allows = in_window + amount <= max;
            prop_assert_eq!(decision.is_ok(), model_allows, "at {} spent {} in window, paying {} of {}", now, in_window, amount, max);
            if let Ok(a) = decision {
                wallet.record(a.requirement.pay_to, now, a.charge);
                session.record(now, a.charge);
                allowed.push((now, amount));
            }
        }
    }

    /// With every control on (windows, payee cap, rate limit, rules with thresholds, approval),
    /// whatever was paid before: if an amount is allowed (or held), every smaller one is allowed
    /// or held too, and a denial for a budget never turns into an allowance for more.
    #[test]
    fn denial_is_monotone_in_amount_under_the_full_policy(
        history in proptest::collection::vec((0u64..4_000, 1u64..300_000), 0..40),
        a in 1u64..2_000_000,
        extra in 0u64..2_000_000,
    ) {
        let doc = "version = 1
[wallet]
max_per_payment = \"1.5\"
payments_per_minute = 30
budgets = [{ per = \"1h\", max = \"3\" }]
per_payee = [{ per = \"1d\", max = \"4\" }]
[session]
budgets = [{ per = \"10m\", max = \"2\" }]
[approval]
above = \"0.5\"
[[rule]]
above = \"1\"
action = \"approve\"
[[rule]]
assets = [\"USDC\"]
action = \"allow\"
";
        let policy = Policy::parse(doc).unwrap();
        let now = 10_000u64;
        let mut wallet = WalletHistory::default();
        let mut session = History::new();
        let payee: Address = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".parse().unwrap();
        for (ago, amount) in &history {
            let charge = atomic_to_units(U256::from(*amount), 6).unwrap();
            wallet.record(payee, now - 4_000 + ago, charge);
            session.record(now - 4_000 + ago, charge);
        }
        let decide = |amount: u64| {
            let (mut w, mut s) = (wallet.clone(), session.clone());
            decide_with(&policy, &mut w, &mut s, amount, now).is_ok()
        };
        let b = a + extra;
        if decide(b) {
            prop_assert!(decide(a), "{} allowed or held but the smaller {} denied", b, a);
        }
    }
}
