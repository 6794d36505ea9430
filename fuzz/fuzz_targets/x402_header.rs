//! The x402 payment requirements as the enclave reads them: a `PAYMENT-REQUIRED` header value
//! (base64 JSON) or a v1 body (JSON), each `accepts[]` option, the selection among them under a
//! policy (`rules::choose`), and the payload built for the chosen option.
//!
//! Input: one byte of selectors (network and asset preferences, which policy), then the header
//! value (UTF-8, lossily).

#![no_main]

use std::{collections::HashSet, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use wallet_policy::{
    address::parse_address,
    eip712::Authorization,
    registry::{default_assets, AssetInfo},
    rules::{choose, AssetLookup, Context, EmptyLedger, Policy, Scope, SessionState},
    x402::{decode_payment_required, encode_header, parse_requirement_for, payment_payload_json},
    Address, U256,
};

const NOW: u64 = 1_800_000_000;

struct Registry(Vec<AssetInfo>);

impl AssetLookup for Registry {
    fn lookup(&self, network: &str, asset: &Address) -> Option<&AssetInfo> {
        self.0.iter().find(|a| a.network == network && a.address == *asset)
    }
}

struct World {
    policies: [Policy; 2],
    registry: Registry,
    kyt: HashSet<Address>,
    scope: Scope,
    usdc: Address,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| World {
        policies: [
            // Anything in the registry, up to a large amount.
            Policy::parse("version = 1\n[wallet]\nmax_per_payment = \"1000000\"\n[[rule]]\naction = \"allow\"\n")
                .expect("policy"),
            // Base and Base Sepolia only, small payments, larger ones held for approval.
            Policy::parse(
                "version = 1\n[wallet]\nmax_per_payment = \"0.10\"\n[[rule]]\nnetworks = [\"eip155:8453\", \"eip155:84532\"]\naction = \"allow\"\n",
            )
            .expect("policy"),
        ],
        registry: Registry(default_assets()),
        kyt: HashSet::new(),
        scope: Scope::default(),
        usdc: parse_address("0x036CbD53842c5426634e7929541eC2318f3dCF7e").expect("address"),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let Ok(required) = decode_payment_required(&text) else { return };
    assert!(matches!(required.x402_version, 1 | 2));
    assert!(!required.accepts.is_empty());
    for option in &required.accepts {
        for version in [1, 2] {
            if let Ok(r) = parse_requirement_for(version, option) {
                assert!(!r.amount.is_zero() && r.max_timeout_seconds > 0);
            }
        }
    }
    let w = world();
    let network = match sel & 3 {
        0 => None,
        1 => Some("eip155:84532"),
        2 => Some("base-sepolia"),
        _ => Some("eip155:8453"),
    };
    let asset = (sel & 4 != 0).then_some(&w.usdc);
    let ctx = Context {
        policy: Some(&w.policies[usize::from(sel >> 3 & 1)]),
        wallet_frozen: false,
        session: SessionState {
            cap: U256::from(10u64).pow(U256::from(30u64)),
            spent: U256::ZERO,
            expires_at: NOW + 3600,
            revoked: false,
            scope: &w.scope,
        },
        kyt: &w.kyt,
        registry: &w.registry,
        now: NOW,
        approved: sel & 16 != 0,
    };
    let Ok(approval) = choose(&ctx, &mut EmptyLedger, &required, network, asset) else { return };
    assert!(approval.index < required.accepts.len());
    assert!(approval.valid_before > NOW);
    let auth = Authorization {
        from: Address::repeat_byte(1),
        to: approval.requirement.pay_to,
        value: approval.requirement.amount,
        valid_after: approval.valid_after,
        valid_before: approval.valid_before,
        nonce: [7; 32],
    };
    let _ = auth.signing_hash(&approval.asset.domain_separator());
    let json =
        payment_payload_json(&required, &required.accepts[approval.index], &auth, &[0; 65], "pid");
    let value: serde_json::Value = serde_json::from_str(&json).expect("the payload is JSON");
    assert_eq!(value["x402Version"].as_u64(), Some(required.x402_version));
    let _ = encode_header(&json);
});
