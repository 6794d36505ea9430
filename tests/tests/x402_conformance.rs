//! Payer conformance through the real stack (issue 10, items 4 and 5): x402 v1 payments, and
//! each input that failed before, with the official x402 packages (@x402/core, @x402/evm 2.27.0,
//! run offline by tests/x402-compat) as the judge of what a client must pay and what a verifier
//! accepts:
//!
//! * `client-select.mjs`: what the official client does with a server's requirements (which
//!   option it pays, or that it refuses);
//! * `verify.mjs`: whether the official resource server and facilitator (v2) or the official
//!   v1 facilitator accept the payment the wallet produced;
//! * `default-assets.mjs`: the official default-asset table and v1 network names.
//!
//! Needs `npm ci --prefix tests/x402-compat` (scripts/test.sh does it). Set
//! `WALLET_SKIP_X402_COMPAT=1` to skip the parts that run Node (the rest still runs).

use std::{path::PathBuf, process::Command};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::{json, Value};
use tonic::Code;
use wallet_client::Credential;
use wallet_e2e::{now_ms, ok, stderr, Stack, PAYEE, USDC_BASE_SEPOLIA};
use wallet_policy::{
    address::parse_address,
    registry::{default_assets, DEFAULT_ASSETS},
    x402::V1_EVM_NETWORKS,
};
use wallet_proto::gateway::v1 as gw;

const BASE_USDC: &str = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913";

/// The x402 v1 402 body of x402-next.md §2.1 (V-3's input).
const V1_BODY: &str = r#"{"x402Version":1,"error":"Payment required to access this resource","accepts":[{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","resource":"https://api.example.com/premium-data","description":"Access to premium market data","mimeType":"application/json","outputSchema":null,"maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]}"#;

/// Base mainnet and Base Sepolia allowed, 0.10 a payment.
const BASE_AND_SEPOLIA: &str = "version = 1\n[wallet]\nmax_per_payment = \"0.10\"\n[[rule]]\nnetworks = [\"eip155:8453\", \"eip155:84532\"]\naction = \"allow\"\n";

/// The x402-compat folder, or `None` when the Node checks are skipped.
fn compat() -> Option<PathBuf> {
    wallet_e2e::x402_compat_dir()
}

/// Runs a script of tests/x402-compat; its one JSON line and whether it exited 0.
fn node(dir: &std::path::Path, script: &str, args: &[&str]) -> (bool, Value) {
    let out = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .output()
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{script} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script} printed {stdout:?}: {e}"));
    (out.status.success(), line)
}

fn reason(s: &tonic::Status) -> String {
    s.metadata().get("x-wallet-reason").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

fn option(network: &str, asset: &str, amount: &str, name: &str) -> Value {
    json!({"scheme":"exact","network":network,"amount":amount,"asset":asset,"payTo":PAYEE,"maxTimeoutSeconds":60,"extra":{"name":name,"version":"2"}})
}

fn mainnet() -> Value {
    option("eip155:8453", BASE_USDC, "10000", "USD Coin")
}

fn sepolia() -> Value {
    option("eip155:84532", USDC_BASE_SEPOLIA, "10000", "USDC")
}

/// A v2 `PaymentRequired` JSON with these options.
fn required(accepts: &[Value]) -> String {
    json!({"x402Version":2,"error":"Payment required","resource":{"url":"https://api.example.com/x","mimeType":"application/json"},"accepts":accepts}).to_string()
}

fn b64(json: &str) -> String {
    STANDARD.encode(json)
}

fn decoded(header_value: &str) -> Value {
    serde_json::from_slice(&STANDARD.decode(header_value).expect("standard base64")).expect("json")
}

/// A wallet with this policy document and a session of `cap`, its credential written to a file
/// for walletctl.
async fn wallet_and_session(
    stack: &Stack,
    doc: &str,
    cap: &str,
) -> (gw::Wallet, Credential, PathBuf) {
    let w = stack.wallet("1").await;
    stack.set_document(&w, doc).await;
    let cred = stack
        .session(&w, cap, gw::IssueSessionRequest::default())
        .await
        .with_enclave_id(&hex::encode(&stack.enclave_id));
    let path = stack.dir.path().join(format!("{}.json", cred.session_id));
    cred.write(&path).expect("write credential");
    (w, cred, path)
}

async fn pay(
    stack: &Stack,
    cred: &Credential,
    required: &str,
    network: &str,
    idem: &str,
) -> Result<gw::SignPaymentResponse, tonic::Status> {
    stack
        .client()
        .await
        .sign_payment(cred.sign_request(required, network, "", idem, now_ms()))
        .await
        .map(tonic::Response::into_inner)
}

/// Item 4: a v1 402 body is paid with a v1 payload (`X-PAYMENT`, `validAfter = now - 600`,
/// `value = maxAmountRequired`) that the official v1 facilitator accepts; the answer says
/// `x402_version` 1, also on an idempotent replay and after a crash and restart (the spend
/// record carries it); `walletctl pay` prints only the header value and, with -v, which header.
#[tokio::test]
async fn v1_payments_are_signed_as_the_official_v1_client_and_survive_restart() {
    let mut stack = Stack::start();
    let (w, cred, path) = wallet_and_session(&stack, BASE_AND_SEPOLIA, "1").await;

    let before = now_ms() / 1000;
    let resp = pay(&stack, &cred, V1_BODY, "", "v1-a").await.unwrap();
    let after = now_ms() / 1000;
    assert_eq!(resp.x402_version, 1);
    assert_eq!((resp.network.as_str(), resp.amount.as_str()), ("eip155:84532", "10000"));
    let original: Value = serde_json::from_str(V1_BODY).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&resp.accepted_json).unwrap(), original["accepts"][0]);
    let payload = decoded(&resp.payment_signature);
    assert_eq!(resp.payment_payload_json, payload.to_string());
    assert_eq!(
        payload.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["x402Version", "scheme", "network", "payload"],
        "the v1 payload's keys, in the official client's order"
    );
    assert_eq!(
        (payload["x402Version"].clone(), payload["network"].clone()),
        (json!(1), json!("base-sepolia"))
    );
    let auth = &payload["payload"]["authorization"];
    let num = |k: &str| auth[k].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(auth["value"], "10000");
    assert_eq!(auth["from"], w.address.as_str());
    assert_eq!(num("validBefore") - num("validAfter"), 660, "now + 60 and now - 600");
    assert!((before..=after).contains(&(num("validAfter") + 600)));

    // The same body in base64 is read the same way.
    let again = pay(&stack, &cred, &b64(V1_BODY), "", "v1-b").await.unwrap();
    assert_eq!(again.x402_version, 1);

    if let Some(dir) = compat() {
        let (accepted, line) = node(&dir, "verify.mjs", &[V1_BODY, &resp.payment_signature]);
        assert!(accepted, "the official v1 facilitator rejected our payment: {line}");
        assert_eq!(line["payer"], w.address.as_str());
        assert_eq!(line["x402Version"], 1);
        // The check discriminates: the same payment against another amount is refused.
        let other = V1_BODY.replace("\"10000\"", "\"10001\"");
        let (accepted, line) = node(&dir, "verify.mjs", &[&other, &resp.payment_signature]);
        assert!(!accepted, "{line}");
    }

    // walletctl: the header value alone on stdout; -v names the header.
    let out = stack.walletctl(&["pay", "-v", "--session", path.to_str().unwrap()], V1_BODY);
    let value = ok(&out);
    assert_eq!(value.trim().lines().count(), 1, "stdout is only the header value");
    assert_eq!(decoded(value.trim())["x402Version"], 1);
    assert!(stderr(&out).contains("X-PAYMENT header (x402 v1)"), "{}", stderr(&out));
    let v2 = b64(&required(&[sepolia()]));
    let out = stack.walletctl(&["pay", "-v", "--session", path.to_str().unwrap()], &v2);
    assert_eq!(decoded(ok(&out).trim())["x402Version"], 2);
    assert!(stderr(&out).contains("PAYMENT-SIGNATURE header (x402 v2)"), "{}", stderr(&out));

    // An idempotent replay answers v1 again, and so does one after a crash and restart.
    let replay = pay(&stack, &cred, V1_BODY, "", "v1-a").await.unwrap();
    assert!(replay.replayed);
    assert_eq!((replay.x402_version, &replay.payment_signature), (1, &resp.payment_signature));
    stack.crash_and_restart_enclave();
    let mut recovered = None;
    for _ in 0..100 {
        match pay(&stack, &cred, V1_BODY, "", "v1-a").await {
            Ok(r) => {
                recovered = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let recovered = recovered.expect("the restarted enclave answers");
    assert!(recovered.replayed);
    assert_eq!(recovered.x402_version, 1);
    assert_eq!(recovered.payment_signature, resp.payment_signature);
    assert_eq!(recovered.accepted_json, resp.accepted_json);
    assert_eq!(stack.spent(&cred.session_id).await, "0.04", "v1-a, v1-b, and two by walletctl");
}

/// Item 5, first input: both Base networks allowed, mainnet offered first, Sepolia second;
/// `walletctl pay --network base-sepolia` signed the mainnet option. Now the preference
/// filters (v1 names mapped), an unreadable one is refused early by walletctl and by the
/// enclave, and one that matches nothing is refused, never paid elsewhere.
#[tokio::test]
async fn a_network_preference_is_a_filter_checked_in_walletctl_and_the_enclave() {
    let stack = Stack::start();
    let (_, cred, path) = wallet_and_session(&stack, BASE_AND_SEPOLIA, "1").await;
    let header = b64(&required(&[mainnet(), sepolia()]));
    let session = path.to_str().unwrap();

    let out = stack.walletctl(&["pay", "--session", session, "--network", "base-sepolia"], &header);
    let paid = decoded(ok(&out).trim());
    assert_eq!(paid["accepted"]["network"], "eip155:84532", "the Sepolia option, not mainnet");
    let out = stack.walletctl(&["pay", "--session", session, "--network", "eip155:84532"], &header);
    assert_eq!(decoded(ok(&out).trim())["accepted"]["network"], "eip155:84532");

    // Not offered: refused (a denial, exit 3), nothing charged.
    let spent = stack.spent(&cred.session_id).await;
    let out = stack.walletctl(&["pay", "--session", session, "--network", "eip155:1"], &header);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("PREFERENCE_NOT_OFFERED"), "{}", stderr(&out));
    let out = stack.walletctl(
        &["pay", "--session", session, "--network", "base", "--asset", USDC_BASE_SEPOLIA],
        &header,
    );
    assert!(stderr(&out).contains("PREFERENCE_NOT_OFFERED"), "{}", stderr(&out));
    // Unreadable: refused by walletctl before anything is sent (exit 2)...
    for bad in ["base-sepoila", "Base Sepolia", "solana"] {
        let out = stack.walletctl(&["pay", "--session", session, "--network", bad], &header);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--network"), "{}", stderr(&out));
    }
    let out = stack.walletctl(
        &["pay", "--session", session, "--asset", &format!("0X{}", &USDC_BASE_SEPOLIA[2..])],
        &header,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // ...and by the enclave, for a client that sends it anyway.
    let e = pay(&stack, &cred, &header, "base-sepoila", "typo").await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "INVALID_ARGUMENT"));
    assert!(e.message().contains("preferred_network"), "{}", e.message());
    // A v1 name sent by a gRPC client is mapped in the enclave.
    let r = pay(&stack, &cred, &header, "base-sepolia", "v1-name").await.unwrap();
    assert_eq!(r.accepted_index, 1);
    assert_eq!(stack.spent(&cred.session_id).await, "0.03", "{spent} before the refusals");
}

/// Item 5, last input: an option on an allowed network refused for its per-payment limit next
/// to one on a network the policy does not allow: the code names the limit that bound.
#[tokio::test]
async fn a_denial_names_the_reason_that_bound_the_best_option() {
    let stack = Stack::start();
    let doc = "version = 1\n[wallet]\nmax_per_payment = \"0.10\"\n[[rule]]\nnetworks = [\"eip155:84532\"]\naction = \"allow\"\n";
    let (_, cred, _) = wallet_and_session(&stack, doc, "1").await;
    let over = option("eip155:84532", USDC_BASE_SEPOLIA, "200000", "USDC");
    for (i, accepts) in [[mainnet(), over.clone()], [over.clone(), mainnet()]].iter().enumerate() {
        let e =
            pay(&stack, &cred, &b64(&required(accepts)), "", &format!("k{i}")).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (Code::PermissionDenied, "PER_TX_LIMIT"));
        assert!(
            e.message().contains("NETWORK_NOT_ALLOWED"),
            "every option's reason: {}",
            e.message()
        );
    }
    assert_eq!(stack.spent(&cred.session_id).await, "0");
}

/// Item 5, the other inputs, judged by the official client: what it pays, the wallet pays (the
/// same option), and the official verifier accepts the payment; what it refuses, the wallet
/// refuses and charges nothing. Two deliberate differences, each checked against the official
/// server: the official client picks the first option before it reads its addresses, so a `0X`
/// payTo in accepts[0] makes it fail even when a good option follows (the wallet pays the good
/// one, which the official verifier accepts); and the client pays an `escrow` option, which the
/// official `exact` server refuses (the wallet does not sign it).
#[tokio::test]
async fn the_official_client_is_the_judge_of_what_is_paid() {
    let Some(dir) = compat() else { return };
    let stack = Stack::start();
    let (_, cred, _) = wallet_and_session(&stack, BASE_AND_SEPOLIA, "10").await;
    let with_extra = |mut o: Value, k: &str, v: Value| {
        o["extra"][k] = v;
        o
    };
    let with = |mut o: Value, k: &str, v: Value| {
        o[k] = v;
        o
    };
    let upfront = with_extra(sepolia(), "paymentFlow", "upfront".into());
    let padded_json = (0..3)
        .map(|n| required(&[sepolia()]).replace("/x\"", &format!("/x{}\"", "y".repeat(n))))
        .find(|j| j.len() % 3 != 0)
        .unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "upfront first, then the same payment without a flow",
            b64(&required(&[upfront.clone(), sepolia()])),
        ),
        ("without a flow first, then upfront", b64(&required(&[sepolia(), upfront.clone()]))),
        ("upfront only", b64(&required(&[upfront]))),
        (
            "an unknown flow, then upfront",
            b64(&required(&[
                with_extra(sepolia(), "paymentFlow", "later".into()),
                with_extra(sepolia(), "paymentFlow", "upfront".into()),
            ])),
        ),
        (
            "payTo with 0X",
            b64(&required(&[with(sepolia(), "payTo", format!("0X{}", &PAYEE[2..]).into())])),
        ),
        (
            "asset with 0X",
            b64(&required(&[with(
                sepolia(),
                "asset",
                format!("0X{}", &USDC_BASE_SEPOLIA[2..]).into(),
            )])),
        ),
        ("base64 without = padding", b64(&padded_json).trim_end_matches('=').to_owned()),
        (
            "maxTimeoutSeconds 60.0",
            b64(&required(&[sepolia()])
                .replace("\"maxTimeoutSeconds\":60", "\"maxTimeoutSeconds\":60.0")),
        ),
        (
            "maxTimeoutSeconds 60.5",
            b64(&required(&[sepolia()])
                .replace("\"maxTimeoutSeconds\":60", "\"maxTimeoutSeconds\":60.5")),
        ),
        (
            "x402Version 2.0",
            b64(&required(&[sepolia()]).replace("\"x402Version\":2", "\"x402Version\":2.0")),
        ),
        ("x402 v1 body", V1_BODY.to_owned()),
        (
            "x402 v1 body, maxTimeoutSeconds 60.0",
            V1_BODY.replace("\"maxTimeoutSeconds\":60", "\"maxTimeoutSeconds\":60.0"),
        ),
        (
            "x402 v1 body with a CAIP-2 network",
            V1_BODY.replace("\"base-sepolia\"", "\"eip155:84532\""),
        ),
    ];
    assert!(b64(&padded_json).ends_with('='));
    let mut paid = 0u32;
    for (i, (name, input)) in cases.iter().enumerate() {
        let (official_pays, official) = node(&dir, "client-select.mjs", &[input]);
        let spent = stack.spent(&cred.session_id).await;
        let ours = pay(&stack, &cred, input, "", &format!("judge-{i}")).await;
        match (official_pays, ours) {
            (true, Ok(resp)) => {
                paid += 1;
                assert_eq!(
                    u64::from(resp.accepted_index),
                    official["index"].as_u64().unwrap(),
                    "{name}: the official client pays another option: {official}"
                );
                assert_eq!(
                    u64::from(resp.x402_version),
                    official["x402Version"].as_u64().unwrap(),
                    "{name}"
                );
                let (accepted, line) = node(&dir, "verify.mjs", &[input, &resp.payment_signature]);
                assert!(accepted, "{name}: the official verifier rejects our payment: {line}");
            }
            (false, Err(e)) => {
                assert_eq!(stack.spent(&cred.session_id).await, spent, "{name}: {e:?}");
                assert!(!reason(&e).is_empty(), "{name}: {e:?}");
            }
            (true, Err(e)) => {
                panic!("{name}: the official client pays ({official}), the wallet refuses: {e:?}")
            }
            (false, Ok(r)) => panic!(
                "{name}: the official client refuses ({official}), the wallet paid accepts[{}]",
                r.accepted_index
            ),
        }
    }
    assert_eq!(paid, 9, "the cases the official client pays");

    let bad_then_good =
        b64(&required(&[with(sepolia(), "payTo", format!("0X{}", &PAYEE[2..]).into()), mainnet()]));
    let (official_pays, official) = node(&dir, "client-select.mjs", &[&bad_then_good]);
    assert!(!official_pays && official["stage"] == "sign", "{official}");
    let resp = pay(&stack, &cred, &bad_then_good, "", "bad-then-good").await.unwrap();
    assert_eq!(resp.accepted_index, 1);
    let (accepted, line) = node(&dir, "verify.mjs", &[&bad_then_good, &resp.payment_signature]);
    assert!(accepted, "{line}");

    let escrow = b64(&required(&[
        with_extra(sepolia(), "paymentFlow", "later".into()),
        with_extra(sepolia(), "paymentFlow", "escrow".into()),
    ]));
    let (official_pays, official) = node(&dir, "client-select.mjs", &[&escrow]);
    assert!(
        official_pays && official["index"] == 1,
        "the client drops 'later', pays escrow: {official}"
    );
    let (accepted, line) =
        node(&dir, "verify.mjs", &[&escrow, official["value"].as_str().unwrap()]);
    assert!(
        !accepted
            && line["invalidReason"].as_str().unwrap().contains("does not support paymentFlow"),
        "the official server refuses the client's escrow payment: {line}"
    );
    let spent = stack.spent(&cred.session_id).await;
    let e = pay(&stack, &cred, &escrow, "", "escrow").await.unwrap_err();
    assert_eq!(reason(&e), "UNSUPPORTED_SCHEME", "{}", e.message());
    assert_eq!(stack.spent(&cred.session_id).await, spent);
}

/// Item 5: the preloaded registry is the official default table's EIP-3009 entries, field by
/// field (Permit2-only entries left out: the wallet signs EIP-3009 only), with viem's EIP-712
/// domain separators; the v1 network names are the official table; and a non-ASCII token name
/// (`USD₮0`) is listed, signed for, and accepted by the official verifier.
#[tokio::test]
async fn the_registry_is_the_official_default_table() {
    let Some(dir) = compat() else { return };
    let (_, official) = node(&dir, "default-assets.mjs", &[]);
    assert_eq!(official["package"], "@x402/evm@2.27.0");
    let entries = official["defaultAssets"].as_array().unwrap();
    let (eip3009, permit2): (Vec<&Value>, Vec<&Value>) =
        entries.iter().partition(|e| e["assetTransferMethod"] == "eip3009");
    assert!(!permit2.is_empty() && permit2.iter().all(|e| e["assetTransferMethod"] == "permit2"));
    assert_eq!(
        DEFAULT_ASSETS.len(),
        eip3009.len(),
        "one registry entry per official EIP-3009 default"
    );
    let ours = default_assets();
    for (i, e) in eip3009.iter().enumerate() {
        let s = |k: &str| e[k].as_str().unwrap().to_owned();
        let (network, address, name, version, decimals, _symbol) = DEFAULT_ASSETS[i];
        assert_eq!(
            (network, address, name, version, u64::from(decimals)),
            (
                s("network").as_str(),
                s("asset").as_str(),
                s("name").as_str(),
                s("version").as_str(),
                e["decimals"].as_u64().unwrap()
            ),
            "entry {i}"
        );
        assert_eq!(
            format!("{:#x}", ours[i].domain_separator()),
            s("domainSeparator"),
            "{network} {name}"
        );
    }
    for e in permit2 {
        let a = parse_address(e["asset"].as_str().unwrap()).unwrap();
        assert!(
            !ours.iter().any(|x| x.network == e["network"].as_str().unwrap() && x.address == a),
            "Permit2-only {e} must not be in the registry"
        );
    }
    let v1: Vec<(String, u64)> = official["v1Networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_u64().unwrap()))
        .collect();
    let ours_v1: Vec<(String, u64)> =
        V1_EVM_NETWORKS.iter().map(|(n, id)| ((*n).to_owned(), *id)).collect();
    assert_eq!(ours_v1, v1, "the v1 network names are the official table");

    // USD₮0 on Flare, through the stack.
    let stack = Stack::start();
    let list = ok(&stack.walletctl(&["asset", "list"], ""));
    assert!(list.contains("eip155:14") && list.contains("USD₮0"), "{list}");
    let (w, cred, _) =
        wallet_and_session(&stack, "version = 1\n[[rule]]\naction = \"allow\"\n", "1").await;
    let flare = required(&[
        json!({"scheme":"exact","network":"eip155:14","amount":"10000","asset":"0xe7cd86e13AC4309349F30B3435a9d337750fC82D","payTo":PAYEE,"maxTimeoutSeconds":60,"extra":{"name":"USD₮0","version":"1"}}),
    ]);
    let resp = pay(&stack, &cred, &b64(&flare), "", "flare").await.unwrap();
    assert_eq!((resp.asset_symbol.as_str(), resp.charged.as_str()), ("USDT0", "0.01"));
    let (accepted, line) = node(&dir, "verify.mjs", &[&b64(&flare), &resp.payment_signature]);
    assert!(accepted, "the official verifier rejects a USD₮0 payment: {line}");
    assert_eq!(line["payer"], w.address.as_str());
}
