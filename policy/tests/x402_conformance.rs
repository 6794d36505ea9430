//! Payer conformance (issue 10, items 4 and 5): x402 v1 signed byte for byte as the official v1
//! client signs it (x402-wire.md §8, V-2 and V-3), and each input that a new user or another
//! client's bug report found failing, kept as a test of its whole class.

use std::collections::HashSet;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use k256::ecdsa::SigningKey;
use serde_json::{json, Value};
use wallet_policy::{
    address::parse_address,
    eip712::Authorization,
    registry::{default_assets, AssetInfo},
    rules::{
        choose, Approval, AssetLookup, Context, Denial, DenyReason, EmptyLedger, Policy, Scope,
        SessionState,
    },
    x402::{decode_payment_required, encode_header, payment_header_name, payment_payload_json},
    Address, U256,
};

const HARDHAT0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const PAYEE: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const BASE_SEPOLIA_USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const BASE_USDC: &str = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913";
/// `now` of the vectors (x402-wire.md §8).
const NOW: u64 = 1_740_672_154;

/// V-3's input: a PaymentRequiredV1 (x402-next.md §2.1) with `network: "base-sepolia"`,
/// `maxAmountRequired: "10000"`, the §2.3 payTo/asset/extra and `maxTimeoutSeconds` 60.
const V1_BODY: &str = r#"{"x402Version":1,"error":"Payment required to access this resource","accepts":[{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","resource":"https://api.example.com/premium-data","description":"Access to premium market data","mimeType":"application/json","outputSchema":null,"maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]}"#;

/// V-3: the v1 payload, byte-exact from the official client.
const V3_PAYLOAD: &str = r#"{"x402Version":1,"scheme":"exact","network":"base-sepolia","payload":{"authorization":{"from":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","to":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","value":"10000","validAfter":"1740671554","validBefore":"1740672214","nonce":"0x0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"},"signature":"0x3e3a454d30d7f8c00cefaefbe8f353230a1019795f3fe520387683841cc75ea3089c877b0fd675b6892cc9e1c2de72fd02a20ce7d0b4bffdc78a1fd72dc0b2931b"}}"#;

/// V-3: the `X-PAYMENT` value.
const V3_X_PAYMENT: &str = "eyJ4NDAyVmVyc2lvbiI6MSwic2NoZW1lIjoiZXhhY3QiLCJuZXR3b3JrIjoiYmFzZS1zZXBvbGlhIiwicGF5bG9hZCI6eyJhdXRob3JpemF0aW9uIjp7ImZyb20iOiIweGYzOUZkNmU1MWFhZDg4RjZGNGNlNmFCODgyNzI3OWNmZkZiOTIyNjYiLCJ0byI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsInZhbHVlIjoiMTAwMDAiLCJ2YWxpZEFmdGVyIjoiMTc0MDY3MTU1NCIsInZhbGlkQmVmb3JlIjoiMTc0MDY3MjIxNCIsIm5vbmNlIjoiMHgwMTAyMDMwNDA1MDYwNzA4MDkwYTBiMGMwZDBlMGYxMDExMTIxMzE0MTUxNjE3MTgxOTFhMWIxYzFkMWUxZjIwIn0sInNpZ25hdHVyZSI6IjB4M2UzYTQ1NGQzMGQ3ZjhjMDBjZWZhZWZiZThmMzUzMjMwYTEwMTk3OTVmM2ZlNTIwMzg3NjgzODQxY2M3NWVhMzA4OWM4NzdiMGZkNjc1YjY4OTJjYzllMWMyZGU3MmZkMDJhMjBjZTdkMGI0YmZmZGM3OGExZmQ3MmRjMGIyOTMxYiJ9fQ==";

struct Registry(Vec<AssetInfo>);
impl AssetLookup for Registry {
    fn lookup(&self, network: &str, asset: &Address) -> Option<&AssetInfo> {
        self.0.iter().find(|a| a.network == network && a.address == *asset)
    }
}

/// A wallet whose policy is `doc`, a session with a cap of 1 and no scope, at `NOW`.
struct Wallet {
    policy: Policy,
    scope: Scope,
    kyt: HashSet<Address>,
    registry: Registry,
}

impl Wallet {
    fn new(doc: &str) -> Self {
        Self {
            policy: Policy::parse(doc).unwrap(),
            scope: Scope::default(),
            kyt: HashSet::new(),
            registry: Registry(default_assets()),
        }
    }

    /// Base mainnet and Base Sepolia allowed, 0.10 a payment.
    fn base_and_sepolia() -> Self {
        Self::new(
            "version = 1\n[wallet]\nmax_per_payment = \"0.10\"\n[[rule]]\nnetworks = [\"eip155:8453\", \"eip155:84532\"]\naction = \"allow\"\n",
        )
    }

    fn pay(
        &self,
        required: &str,
        network: Option<&str>,
        asset: Option<&str>,
    ) -> Result<Approval, Denial> {
        let required = decode_payment_required(required).unwrap();
        let ctx = Context {
            policy: Some(&self.policy),
            wallet_frozen: false,
            session: SessionState {
                cap: U256::from(10u64).pow(U256::from(18u64)),
                spent: U256::ZERO,
                expires_at: NOW + 3600,
                revoked: false,
                scope: &self.scope,
            },
            kyt: &self.kyt,
            registry: &self.registry,
            now: NOW,
            approved: false,
        };
        let asset = asset.map(|a| parse_address(a).unwrap());
        choose(&ctx, &mut EmptyLedger, &required, network, asset.as_ref())
    }

    fn index(&self, required: &str, network: Option<&str>) -> usize {
        self.pay(required, network, None).unwrap_or_else(|d| panic!("denied: {d}")).index
    }

    fn reason(&self, required: &str, network: Option<&str>) -> DenyReason {
        self.pay(required, network, None).expect_err("must be denied").reason
    }
}

fn option(network: &str, asset: &str, amount: &str, name: &str) -> Value {
    json!({"scheme":"exact","network":network,"amount":amount,"asset":asset,"payTo":PAYEE,"maxTimeoutSeconds":60,"extra":{"name":name,"version":"2"}})
}

fn mainnet() -> Value {
    option("eip155:8453", BASE_USDC, "10000", "USD Coin")
}

fn sepolia() -> Value {
    option("eip155:84532", BASE_SEPOLIA_USDC, "10000", "USDC")
}

fn header(accepts: Vec<Value>) -> String {
    STANDARD.encode(
        json!({"x402Version":2,"resource":{"url":"https://x"},"accepts":accepts}).to_string(),
    )
}

fn sign(digest: &[u8; 32]) -> [u8; 65] {
    let key = SigningKey::from_slice(&hex::decode(HARDHAT0).unwrap()).unwrap();
    let (sig, recid) = key.sign_prehash_recoverable(digest).unwrap();
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&sig.to_bytes());
    out[64] = 27 + recid.to_byte();
    out
}

/// Item 4: the v1 body goes through the same decision as a v2 header, and what is signed is
/// byte for byte what the official v1 client signs: `validAfter = now - 600`,
/// `validBefore = now + maxTimeoutSeconds`, `value = maxAmountRequired`, the v1 payload, and its
/// `X-PAYMENT` value (V-2's digest and signature, V-3's payload and header).
#[test]
fn v1_is_signed_byte_for_byte_as_the_official_v1_client() {
    let w = Wallet::base_and_sepolia();
    let required = decode_payment_required(V1_BODY).unwrap();
    assert_eq!(required.x402_version, 1);
    assert_eq!(payment_header_name(required.x402_version), "X-PAYMENT");
    let a = w.pay(V1_BODY, None, None).unwrap();
    assert_eq!((a.index, a.valid_after, a.valid_before), (0, 1_740_671_554, 1_740_672_214));
    assert_eq!(a.requirement.network, "eip155:84532", "policy sees the CAIP-2 id");
    let mut nonce = [0u8; 32];
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = u8::try_from(i + 1).unwrap();
    }
    let auth = Authorization {
        from: parse_address("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266").unwrap(),
        to: a.requirement.pay_to,
        value: a.requirement.amount,
        valid_after: a.valid_after,
        valid_before: a.valid_before,
        nonce,
    };
    let digest = auth.signing_hash(&a.asset.domain_separator());
    assert_eq!(
        format!("{digest:#x}"),
        "0xff36ba41759c992f365984891d57e7e1150a3dde30ae65350c378c2925479d25",
        "V-2 digest"
    );
    let sig = sign(&digest.0);
    assert_eq!(
        hex::encode(sig),
        "3e3a454d30d7f8c00cefaefbe8f353230a1019795f3fe520387683841cc75ea3089c877b0fd675b6892cc9e1c2de72fd02a20ce7d0b4bffdc78a1fd72dc0b2931b",
        "V-2 signature"
    );
    let json =
        payment_payload_json(&required, &required.accepts[a.index], &auth, &sig, "pay_unused");
    assert_eq!(json, V3_PAYLOAD);
    assert_eq!(encode_header(&json), V3_X_PAYMENT);
    // The same body in base64 is the same payment.
    assert_eq!(w.pay(&STANDARD.encode(V1_BODY), None, None).unwrap(), a);
    // v2 keeps the current official client's validAfter = 0.
    assert_eq!(w.pay(&header(vec![sepolia()]), None, None).unwrap().valid_after, 0);
}

/// Item 4: the same policy applies to v1 and v2 (networks, limits, scope: all on CAIP-2).
#[test]
fn v1_payments_meet_the_same_policy() {
    let mainnet_only = Wallet::new(
        "version = 1\n[wallet]\nmax_per_payment = \"0.10\"\n[[rule]]\nnetworks = [\"eip155:8453\"]\naction = \"allow\"\n",
    );
    let d = mainnet_only.pay(V1_BODY, None, None).unwrap_err();
    assert_eq!(d.reason, DenyReason::NetworkNotAllowed);
    assert!(d.message.contains("eip155:84532"), "{d}");
    let big = V1_BODY.replace("\"10000\"", "\"200000\"");
    assert_eq!(Wallet::base_and_sepolia().reason(&big, None), DenyReason::PerTxLimit);
    let mut scoped = Wallet::base_and_sepolia();
    scoped.scope.networks = vec!["eip155:8453".into()];
    assert_eq!(scoped.reason(V1_BODY, None), DenyReason::NetworkNotAllowed);
    scoped.scope.networks = vec!["eip155:84532".into()];
    assert!(scoped.pay(V1_BODY, None, None).is_ok());
    let mut kyt = Wallet::base_and_sepolia();
    kyt.kyt.insert(parse_address(PAYEE).unwrap());
    assert_eq!(kyt.reason(V1_BODY, None), DenyReason::KytDenied);
    // v1 preferences, by v1 name or CAIP-2.
    assert_eq!(Wallet::base_and_sepolia().index(V1_BODY, Some("base-sepolia")), 0);
    assert_eq!(
        Wallet::base_and_sepolia().reason(V1_BODY, Some("base")),
        DenyReason::PreferenceNotOffered
    );
}

/// Item 5, first input: Base mainnet offered first, Base Sepolia second, both allowed;
/// `--network base-sepolia` signed the mainnet option. A preference is a filter: the v1 name is
/// mapped, a CAIP-2 id is matched, and when nothing matches (or the preference cannot be read)
/// the payment is refused, never paid on another network.
#[test]
fn a_network_preference_filters_and_never_falls_back() {
    let w = Wallet::base_and_sepolia();
    let h = header(vec![mainnet(), sepolia()]);
    assert_eq!(w.index(&h, None), 0, "no preference: the server's order");
    assert_eq!(w.index(&h, Some("base-sepolia")), 1, "the v1 name is mapped to eip155:84532");
    assert_eq!(w.index(&h, Some("eip155:84532")), 1);
    assert_eq!(w.index(&h, Some("base")), 0);
    for (pref, says) in [
        ("eip155:1", "on eip155:1"),
        ("ethereum", "on eip155:1"),
        ("base-sepolia-typo", "neither a CAIP-2 id"),
        ("Base Sepolia", "neither a CAIP-2 id"),
        ("solana", "not an EVM network"),
    ] {
        let d = w.pay(&h, Some(pref), None).unwrap_err();
        assert_eq!(d.reason, DenyReason::PreferenceNotOffered, "{pref}: {d}");
        assert!(d.message.contains(says), "{pref}: {d}");
    }
    // The asset preference filters too, alone or with the network.
    assert_eq!(w.pay(&h, None, Some(BASE_SEPOLIA_USDC)).unwrap().index, 1);
    let d = w.pay(&h, Some("eip155:8453"), Some(BASE_SEPOLIA_USDC)).unwrap_err();
    assert_eq!(d.reason, DenyReason::PreferenceNotOffered);
    assert!(
        d.message.contains("offered: eip155:8453") && d.message.contains("never falls back"),
        "{d}"
    );
    // The preferred option denied by policy is denied: the other network is not paid instead.
    let big_sepolia = option("eip155:84532", BASE_SEPOLIA_USDC, "200000", "USDC");
    let d = w.pay(&header(vec![mainnet(), big_sepolia]), Some("base-sepolia"), None).unwrap_err();
    assert_eq!(d.reason, DenyReason::PerTxLimit);
    assert!(
        d.message.contains("1 option not on the preferred network/asset not considered"),
        "{d}"
    );
}

/// Item 5, second input: the same payment offered with `extra.paymentFlow: "upfront"` and
/// without; the wallet must sign the one without (the official client prefers the
/// `authorization` flow, which a missing `paymentFlow` is, and drops flows it does not know).
#[test]
fn the_authorization_flow_is_preferred_and_unknown_flows_are_dropped() {
    let w = Wallet::base_and_sepolia();
    let with_flow = |flow: Value| {
        let mut o = sepolia();
        o["extra"]["paymentFlow"] = flow;
        o
    };
    let upfront = with_flow("upfront".into());
    assert_eq!(w.index(&header(vec![upfront.clone(), sepolia()]), None), 1);
    assert_eq!(w.index(&header(vec![sepolia(), upfront.clone()]), None), 0);
    assert_eq!(
        w.index(&header(vec![with_flow("escrow".into()), with_flow("authorization".into())]), None),
        1
    );
    assert_eq!(w.index(&header(vec![upfront.clone(), with_flow(Value::Null)]), None), 1);
    // escrow is refused: the official exact server does not support it (it supports
    // authorization and upfront only).
    let d = w.pay(&header(vec![with_flow("escrow".into())]), None, None).unwrap_err();
    assert_eq!(d.reason, DenyReason::UnsupportedScheme);
    assert!(d.message.contains("escrow"), "{d}");
    // upfront alone is paid, as the official client pays it and the server accepts it.
    assert_eq!(w.index(&header(vec![upfront.clone()]), None), 0);
    // An unknown flow is never paid, and does not hide the others.
    let later = with_flow("later".into());
    assert_eq!(w.index(&header(vec![later.clone(), upfront]), None), 1);
    let d = w.pay(&header(vec![later, with_flow(json!({"x":1}))]), None, None).unwrap_err();
    assert_eq!(d.reason, DenyReason::UnsupportedScheme);
    assert!(d.message.contains("paymentFlow \"later\""), "{d}");
}

/// Item 5, third input: a `payTo` (or `asset`) written `0X…` was signed and charged, but the
/// official verifier (viem `getAddress`) throws on it, so the payment could never settle.
#[test]
fn addresses_the_official_verifier_refuses_are_never_signed() {
    let w = Wallet::base_and_sepolia();
    for (field, value) in [
        ("payTo", format!("0X{}", &PAYEE[2..])),
        ("payTo", format!("0X{}", PAYEE[2..].to_lowercase())),
        ("asset", format!("0X{}", &BASE_SEPOLIA_USDC[2..])),
        ("payTo", "0x209693bc6afc0C5328bA36FaF03C514EF312287C".to_owned()),
    ] {
        let mut o = sepolia();
        o[field] = value.clone().into();
        let d = w.pay(&header(vec![o.clone()]), None, None).unwrap_err();
        assert_eq!(d.reason, DenyReason::InvalidRequirement, "{field}={value}: {d}");
        assert!(d.message.contains(field), "{d}");
        // Next to a good option, the good one is paid.
        assert_eq!(w.index(&header(vec![o, mainnet()]), None), 1);
    }
    // What viem accepts is accepted: all-lowercase and all-uppercase digits, the checksum.
    for pay_to in [PAYEE.to_lowercase(), format!("0x{}", PAYEE[2..].to_uppercase())] {
        let mut o = sepolia();
        o["payTo"] = pay_to.into();
        assert!(w.pay(&header(vec![o]), None, None).is_ok());
    }
}

/// Item 5, fourth input: base64 without `=` padding, `"maxTimeoutSeconds": 60.0` and
/// `"x402Version": 2.0` were refused; the official client accepts all three.
#[test]
fn what_the_official_decoder_accepts_is_paid() {
    let w = Wallet::base_and_sepolia();
    let json =
        json!({"x402Version":2,"resource":{"url":"https://x"},"accepts":[sepolia()]}).to_string();
    // A JSON text whose base64 is padded (pad the resource until it is).
    let json = (0..3)
        .map(|n| json.replace("https://x", &format!("https://x{}", "y".repeat(n))))
        .find(|j| j.len() % 3 != 0)
        .unwrap();
    let unpadded = STANDARD.encode(&json).trim_end_matches('=').to_owned();
    assert!(STANDARD.encode(&json).ends_with('='));
    assert!(w.pay(&unpadded, None, None).is_ok());
    let float_timeout = json.replace("\"maxTimeoutSeconds\":60", "\"maxTimeoutSeconds\":60.0");
    assert_ne!(float_timeout, json);
    let a = w.pay(&STANDARD.encode(&float_timeout), None, None).unwrap();
    assert_eq!(a.valid_before, NOW + 60);
    let float_version = json.replace("\"x402Version\":2", "\"x402Version\":2.0");
    assert_ne!(float_version, json);
    assert!(w.pay(&STANDARD.encode(&float_version), None, None).is_ok());
    // A fractional timeout stays refused, with the reason.
    let half = json.replace("\"maxTimeoutSeconds\":60", "\"maxTimeoutSeconds\":60.5");
    let d = w.pay(&STANDARD.encode(&half), None, None).unwrap_err();
    assert_eq!(d.reason, DenyReason::InvalidRequirement);
    assert!(d.message.contains("60.5 is not a whole number"), "{d}");
}

/// Item 5, last input: an option on an allowed network over its per-payment limit, next to an
/// option on a network the policy does not allow, gave `NETWORK_NOT_ALLOWED`. The reason is the
/// one of the option whose evaluation got furthest, whatever the order.
#[test]
fn the_denial_names_the_reason_that_bound_the_best_option() {
    let sepolia_only = Wallet::new(
        "version = 1\n[wallet]\nmax_per_payment = \"0.10\"\n[[rule]]\nnetworks = [\"eip155:84532\"]\naction = \"allow\"\n",
    );
    let over = option("eip155:84532", BASE_SEPOLIA_USDC, "200000", "USDC");
    for accepts in [vec![mainnet(), over.clone()], vec![over.clone(), mainnet()]] {
        let d = sepolia_only.pay(&header(accepts), None, None).unwrap_err();
        assert_eq!(d.reason, DenyReason::PerTxLimit, "{d}");
        assert!(
            d.message.contains("NETWORK_NOT_ALLOWED") && d.message.contains("PER_TX_LIMIT"),
            "{d}"
        );
    }
    // Further is further: a domain mismatch beats an unreadable option, a session cap beats a
    // per-payment limit, and on a tie the first option's reason is given.
    let mismatch = option("eip155:84532", BASE_SEPOLIA_USDC, "1000", "USD Coin");
    assert_eq!(
        sepolia_only.reason(&header(vec![json!({"scheme":"upto"}), mismatch.clone()]), None),
        DenyReason::DomainMismatch
    );
    let capped = Wallet::new(
        "version = 1\n[session]\ncap = \"0.05\"\n[wallet]\nmax_per_payment = \"0.10\"\n[[rule]]\naction = \"allow\"\n",
    );
    let cap_bound = option("eip155:8453", BASE_USDC, "60000", "USD Coin");
    assert_eq!(capped.reason(&header(vec![over.clone(), cap_bound]), None), DenyReason::SessionCap);
    let d = sepolia_only.pay(
        &header(vec![
            mismatch,
            option("eip155:84532", "0x0000000000000000000000000000000000000001", "1", "USDC"),
        ]),
        None,
        None,
    );
    assert_eq!(d.unwrap_err().reason, DenyReason::DomainMismatch, "registry < domain");
    let two_over = vec![over.clone(), option("eip155:84532", BASE_SEPOLIA_USDC, "300000", "USDC")];
    let d = sepolia_only.pay(&header(two_over), None, None).unwrap_err();
    assert!(d.message.starts_with("no accepts[] option is allowed: accepts[0]"), "{d}");
}
