//! End to end with real peers (tests/x402-e2e): the official x402 resource servers (v2
//! `@x402/express`, v1 `x402-express`) and the official facilitator, settling on a local chain
//! (anvil) in an EIP-3009 token; the payer is the real stack (simulated enclave + gateway) driven
//! by `walletctl`. Every payment is checked on chain: the payer's balance goes down and the
//! payee's up by the price, in a mined transaction.
//!
//! Needs `npm ci --prefix tests/x402-e2e` (scripts/test.sh does it); skipped when
//! `WALLET_SKIP_X402_COMPAT` is set. One launcher serves every test of this file; each test has
//! its own stack, wallet and payee.

use std::{process::Output, time::Duration};

use serde_json::{json, Value};
use wallet_e2e::{
    peers::{
        decode_header, find_strings, fresh_address, http, walletctl, PayerPolicy, Peers,
        RUN_TIMEOUT,
    },
    Stack,
};

/// What each wallet starts with: 1 token (6 decimals).
const FUND: u128 = 1_000_000;
/// The price of most routes here: 0.01.
const PRICE: u128 = 10_000;

fn out_text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `walletctl fetch --session FILE ARGS…`.
fn fetch(stack: &Stack, session: &str, args: &[&str]) -> Output {
    let mut all = vec!["fetch", "--session", session];
    all.extend_from_slice(args);
    walletctl(stack, &all, "", RUN_TIMEOUT)
}

/// Asserts exactly `amount` moved from `payer` to `payee` since `before` (payer's balance).
fn assert_moved(peers: &Peers, payer: &str, before: u128, payee: &str, amount: u128) {
    assert_eq!(peers.balance(payer), before - amount, "payer {payer} pays exactly {amount}");
    assert_eq!(peers.balance(payee), amount, "payee {payee} receives exactly {amount}");
}

/// The body a route answered with, from `walletctl fetch`'s stdout.
fn body_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", out_text(o)))
}

// ---------------------------------------------------------------------------------------------
// The infrastructure itself (pass today).

#[test]
fn the_official_client_pays_every_peer_route_and_it_settles_on_chain() {
    let Some(peers) = Peers::shared() else { return };
    let mut c = std::process::Command::new("node");
    c.arg(wallet_e2e::peers::package_dir().join("selftest.mjs"))
        .env("X402_E2E_INFO", peers.info.to_string());
    let o = wallet_e2e::peers::run(c, "", Duration::from_secs(180));
    let text = out_text(&o);
    assert!(o.status.success(), "selftest failed:\n{text}");
    assert!(text.contains("9 passed, 0 failed"), "{text}");
    assert!(
        peers.startup < Duration::from_secs(60),
        "the launcher took {:?} to be ready",
        peers.startup
    );
}

#[tokio::test]
async fn walletctl_pay_settles_on_chain_through_the_official_server() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "5", FUND).await;
    let payee = fresh_address();
    let url = peers.url("/v2/paid", &payee, PRICE);

    // 1. The official server asks: 402 with PAYMENT-REQUIRED for the local token.
    let first = http("GET", &url, &[], None);
    assert_eq!(first.status, 402, "{}", first.text());
    let required = first.header("payment-required").expect("PAYMENT-REQUIRED header").to_owned();
    let decoded = decode_header(&required);
    assert_eq!(decoded["accepts"][0]["asset"], peers.token.address.as_str());
    assert_eq!(decoded["accepts"][0]["payTo"], payee.as_str());
    assert_eq!(decoded["accepts"][0]["network"], peers.network.as_str());

    // 2. The wallet signs it.
    let signed =
        walletctl(&stack, &["pay", "--session", payer.session_arg()], &required, RUN_TIMEOUT);
    assert!(signed.status.success(), "walletctl pay: {}", out_text(&signed));
    let signature = String::from_utf8(signed.stdout).expect("utf-8").trim().to_owned();

    // 3. The paid retry: the official server verifies and settles through the official
    //    facilitator, on chain.
    let paid = http("GET", &url, &[("PAYMENT-SIGNATURE", &signature)], None);
    assert_eq!(paid.status, 200, "paid retry refused: {} {:?}", paid.text(), paid.headers);
    assert_eq!(paid.json()["route"], "v2/paid");
    let settle = decode_header(paid.header("payment-response").expect("PAYMENT-RESPONSE header"));
    assert_eq!(settle["success"], true, "{settle}");
    assert_eq!(settle["network"], peers.network.as_str());
    assert!(
        settle["payer"].as_str().is_some_and(|p| p.eq_ignore_ascii_case(&payer.address)),
        "{settle}"
    );
    let tx = settle["transaction"].as_str().expect("transaction");
    peers.assert_settled(tx, &payer.address, &payee, PRICE);
    assert_moved(peers, &payer.address, FUND, &payee, PRICE);
    assert_eq!(stack.spent(&payer.session_id).await, "0.01");

    // 4. The same payment again is not charged twice: the facilitator refuses the used nonce.
    let again = http("GET", &url, &[("PAYMENT-SIGNATURE", &signature)], None);
    assert_eq!(again.status, 402, "a replayed authorization must be refused: {}", again.text());
    assert_moved(peers, &payer.address, FUND, &payee, PRICE);
}

// ---------------------------------------------------------------------------------------------
// `walletctl fetch` (issue 10, item 1).

#[tokio::test]
async fn fetch_pays_a_v2_get_and_it_settles_on_chain() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "5", FUND).await;
    let payee = fresh_address();
    let o = fetch(&stack, payer.session_arg(), &[&peers.url("/v2/paid", &payee, PRICE)]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(body_json(&o)["route"], "v2/paid", "stdout is the body, as with curl");
    assert_moved(peers, &payer.address, FUND, &payee, PRICE);
    let calls: Vec<(Value, Value)> = peers
        .facilitator_calls(&payee)
        .iter()
        .map(|e| (e["op"].clone(), e["x402Version"].clone()))
        .collect();
    assert_eq!(
        calls,
        [(json!("verify"), json!(2)), (json!("settle"), json!(2))],
        "the official server verified, then settled, one v2 payment"
    );
    assert_eq!(stack.spent(&payer.session_id).await, "0.01");
}

#[tokio::test]
async fn fetch_pays_a_v2_post_and_sends_the_same_body_on_the_paid_retry() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "5", FUND).await;
    let payee = fresh_address();
    let url = peers.url("/v2/echo", &payee, PRICE);
    let body = r#"{"query":"x402","n":1}"#;
    let o = fetch(
        &stack,
        payer.session_arg(),
        &["-X", "POST", "-H", "Content-Type: application/json", "-d", body, &url],
    );
    assert!(o.status.success(), "{}", out_text(&o));
    let echoed = body_json(&o);
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], body, "the paid retry carries the request body");
    assert_eq!(echoed["contentType"], "application/json");
    assert_moved(peers, &payer.address, FUND, &payee, PRICE);

    // --json sets the content type and the method, as in curl.
    let payee2 = fresh_address();
    let o = fetch(
        &stack,
        payer.session_arg(),
        &["--json", r#"{"a":1}"#, &peers.url("/v2/echo", &payee2, PRICE)],
    );
    assert!(o.status.success(), "{}", out_text(&o));
    let echoed = body_json(&o);
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], r#"{"a":1}"#);
    assert!(echoed["contentType"].as_str().is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(peers.balance(&payee2), PRICE);
}

#[tokio::test]
async fn fetch_pays_v1_routes_get_and_post_and_they_settle_on_chain() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "5", FUND).await;
    let payee = fresh_address();

    // The v1 server answers 402 with a JSON body and no PAYMENT-REQUIRED header.
    let first = http("GET", &peers.url("/v1/paid", &payee, PRICE), &[], None);
    assert_eq!(first.status, 402);
    assert!(first.header("payment-required").is_none());
    let v1 = first.json();
    assert_eq!(v1["x402Version"], 1);
    assert_eq!(v1["accepts"][0]["network"], peers.v1_network.as_str());
    assert_eq!(v1["accepts"][0]["maxAmountRequired"], PRICE.to_string());

    let o = fetch(&stack, payer.session_arg(), &[&peers.url("/v1/paid", &payee, PRICE)]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(body_json(&o)["route"], "v1/paid");
    assert_moved(peers, &payer.address, FUND, &payee, PRICE);

    let o = fetch(
        &stack,
        payer.session_arg(),
        &["-X", "POST", "-d", "plain text body", &peers.url("/v1/echo", &payee, PRICE)],
    );
    assert!(o.status.success(), "{}", out_text(&o));
    let echoed = body_json(&o);
    assert_eq!(echoed["body"], "plain text body", "the v1 paid retry carries the body");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(peers.balance(&payer.address), FUND - 2 * PRICE);
    assert_eq!(peers.balance(&payee), 2 * PRICE);
    assert_eq!(stack.spent(&payer.session_id).await, "0.02");
    let versions: Vec<Value> =
        peers.facilitator_calls(&payee).iter().map(|e| e["x402Version"].clone()).collect();
    assert_eq!(versions, vec![json!(1); 4], "two v1 payments, each verified and settled");
}

#[tokio::test]
async fn fetch_output_json_reports_the_settlement_transaction() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "5", FUND).await;
    let payee = fresh_address();
    let o = fetch(
        &stack,
        payer.session_arg(),
        &["--output", "json", &peers.url("/v2/paid", &payee, PRICE)],
    );
    assert!(o.status.success(), "{}", out_text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("--output json prints JSON");
    let text = report.to_string();
    assert!(text.contains("v2/paid"), "the body is in the report: {text}");
    assert!(text.contains(&payee), "the payee is in the report: {text}");
    assert!(text.contains(&peers.network), "the network is in the report: {text}");
    let txs: Vec<&str> = find_strings(&report, "transaction");
    assert!(!txs.is_empty(), "the settlement transaction is in the report: {text}");
    peers.assert_settled(txs[0], &payer.address, &payee, PRICE);
    assert_moved(peers, &payer.address, FUND, &payee, PRICE);
}

#[tokio::test]
async fn fetch_fills_payment_identifier_and_retries_a_lost_response_without_paying_twice() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "5", FUND).await;

    // The server requires the extension: answers 400 without an id.
    let payee = fresh_address();
    let o = fetch(&stack, payer.session_arg(), &[&peers.url("/v2/pid", &payee, PRICE)]);
    assert!(o.status.success(), "{}", out_text(&o));
    let id = body_json(&o)["paymentId"].as_str().expect("the server saw an id").to_owned();
    assert!(
        (16..=128).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "payment-identifier id {id:?}"
    );
    assert_moved(peers, &payer.address, FUND, &payee, PRICE);

    // The server settles, then drops the connection: fetch resends the identical payment and
    // gets the stored answer; one charge on chain and in the session.
    let payee = fresh_address();
    let url = format!("{}&lose=1", peers.url("/v2/pid", &payee, PRICE));
    let o = fetch(&stack, payer.session_arg(), &[&url]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(body_json(&o)["route"], "v2/pid");
    let outcomes: Vec<Value> = peers
        .log_for(&payee)
        .into_iter()
        .filter(|e| e["kind"] == "payment-identifier")
        .map(|e| e["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        [json!("settled, response dropped"), json!("replayed")],
        "the first answer was lost, the identical payment got the stored one"
    );
    let settles =
        peers.facilitator_calls(&payee).into_iter().filter(|e| e["op"] == "settle").count();
    assert_eq!(settles, 1, "settled once");
    assert_eq!(peers.balance(&payee), PRICE, "paid exactly once");
    assert_eq!(peers.balance(&payer.address), FUND - 2 * PRICE);
    assert_eq!(stack.spent(&payer.session_id).await, "0.02");
}

#[tokio::test]
async fn fetch_refuses_above_max_amount_and_nothing_moves() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "5", FUND).await;
    let payee = fresh_address();
    for path in ["/v2/paid", "/v1/paid"] {
        let o = fetch(
            &stack,
            payer.session_arg(),
            &["--max-amount", "0.01", &peers.url(path, &payee, 50_000)],
        );
        assert_eq!(o.status.code(), Some(7), "over --max-amount: {}", out_text(&o));
        assert!(o.stdout.is_empty() || !String::from_utf8_lossy(&o.stdout).contains("route"));
    }
    assert_eq!(peers.balance(&payer.address), FUND, "nothing moved");
    assert_eq!(peers.balance(&payee), 0);
    assert_eq!(stack.spent(&payer.session_id).await, "0");
    assert!(peers.facilitator_calls(&payee).is_empty(), "no payment was sent");

    // At the limit it pays.
    let o = fetch(
        &stack,
        payer.session_arg(),
        &["--max-amount", "0.05", &peers.url("/v2/paid", &payee, 50_000)],
    );
    assert!(o.status.success(), "{}", out_text(&o));
    assert_moved(peers, &payer.address, FUND, &payee, 50_000);
}

#[tokio::test]
async fn a_payment_the_policy_denies_moves_nothing() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("0.01"), "5", FUND).await;
    let payee = fresh_address();
    for path in ["/v2/paid", "/v1/paid"] {
        let o = fetch(&stack, payer.session_arg(), &[&peers.url(path, &payee, 20_000)]);
        assert_eq!(o.status.code(), Some(3), "denied by policy: {}", out_text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("PER_TX_LIMIT"),
            "the reason is named: {}",
            out_text(&o)
        );
    }
    assert_eq!(peers.balance(&payer.address), FUND, "nothing moved");
    assert_eq!(peers.balance(&payee), 0);
    assert_eq!(stack.spent(&payer.session_id).await, "0");
    let calls = peers.facilitator_calls(&payee);
    assert!(calls.is_empty(), "nothing reached the facilitator for {payee}: {calls:?}");
}

#[tokio::test]
async fn fetch_dry_run_pays_nothing() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "5", FUND).await;
    let payee = fresh_address();
    let o =
        fetch(&stack, payer.session_arg(), &["--dry-run", &peers.url("/v2/paid", &payee, PRICE)]);
    assert!(o.status.success(), "{}", out_text(&o));
    let text = out_text(&o);
    assert!(text.contains("0.01"), "says what would be paid: {text}");
    assert_eq!(peers.balance(&payer.address), FUND);
    assert_eq!(peers.balance(&payee), 0);
    assert_eq!(stack.spent(&payer.session_id).await, "0");
}

#[tokio::test]
async fn fetch_writes_the_body_to_a_file_with_o_and_shows_headers_with_i() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "5", FUND).await;
    let payee = fresh_address();
    let file = stack.dir.path().join("body.json");
    let o = fetch(
        &stack,
        payer.session_arg(),
        &["-o", file.to_str().expect("utf-8"), &peers.url("/v2/paid", &payee, PRICE)],
    );
    assert!(o.status.success(), "{}", out_text(&o));
    let written: Value = serde_json::from_slice(&std::fs::read(&file).expect("-o wrote the file"))
        .expect("the body");
    assert_eq!(written["route"], "v2/paid");

    let o = fetch(&stack, payer.session_arg(), &["-i", &peers.url("/free", &payee, PRICE)]);
    assert!(o.status.success(), "{}", out_text(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(
        text.contains("200") && text.contains("content-type"),
        "-i shows the status and headers: {text}"
    );
    assert_moved(peers, &payer.address, FUND, &payee, PRICE);
}
