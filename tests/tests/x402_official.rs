//! Payments signed by the real stack, checked by the official x402 code (@x402/core and
//! @x402/evm 2.27.0, run offline by tests/x402-compat/verify.mjs): resource-server matching of
//! `accepted` and the `exact` EIP-3009 facilitator verification, with a real signature recovery.
//!
//! Needs `npm ci --prefix tests/x402-compat` (scripts/test.sh does it). Set
//! `WALLET_SKIP_X402_COMPAT=1` to skip on a machine without Node.

use std::{path::PathBuf, process::Command};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use wallet_e2e::{header, header_json, now_ms, Stack, PAYEE, USDC_BASE_SEPOLIA};
use wallet_proto::gateway::v1 as gw;

fn harness() -> Option<PathBuf> {
    wallet_e2e::x402_compat_dir().map(|dir| dir.join("verify.mjs"))
}

fn official_verify(script: &PathBuf, required: &str, signature: &str) -> (bool, String) {
    let out = Command::new("node")
        .arg(script)
        .arg(required)
        .arg(signature)
        .output()
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "harness failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

#[tokio::test]
async fn the_official_server_and_facilitator_accept_our_payments() {
    let Some(script) = harness() else { return };
    let stack = Stack::start();
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "5", gw::IssueSessionRequest::default()).await;
    let mut client = stack.client().await;

    // 1. The spec's own requirement (Base Sepolia USDC).
    let required = header("10000");
    let resp = client
        .sign_payment(cred.sign_request(&required, "", "", "a", now_ms()))
        .await
        .unwrap()
        .into_inner();
    let (ok, line) = official_verify(&script, &required, &resp.payment_signature);
    assert!(ok, "official verify rejected our payment: {line}");
    assert!(line.contains(&w.address), "the official code recovered our wallet as payer: {line}");

    // 2. Several options, extensions to echo, and a first option the policy refuses (wrong
    //    domain): the wallet pays the second, and the official matcher agrees it is an offer.
    let multi = header_json(&format!(
        r#"{{"x402Version":2,"resource":{{"url":"https://api.example.com/tool","mimeType":"application/json"}},"accepts":[{{"scheme":"exact","network":"eip155:84532","amount":"5000","asset":"{USDC_BASE_SEPOLIA}","payTo":"{PAYEE}","maxTimeoutSeconds":30,"extra":{{"name":"USD Coin","version":"2"}}}},{{"scheme":"exact","network":"eip155:84532","amount":"7000","asset":"{USDC_BASE_SEPOLIA}","payTo":"{PAYEE}","maxTimeoutSeconds":120,"extra":{{"name":"USDC","version":"2","feeHint":"x"}}}}],"extensions":{{"payment-identifier":{{"info":{{"required":false}},"schema":{{"type":"object"}}}}}}}}"#
    ));
    let resp = client
        .sign_payment(cred.sign_request(&multi, "", "", "b", now_ms()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted_index, 1);
    let (ok, line) = official_verify(&script, &multi, &resp.payment_signature);
    assert!(ok, "official verify rejected the multi-option payment: {line}");

    // 3. The check discriminates: an altered amount in our payload is rejected by the official code.
    let mut payload: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(&resp.payment_signature).unwrap()).unwrap();
    payload["payload"]["authorization"]["value"] = "7001".into();
    let tampered = STANDARD.encode(payload.to_string());
    let (ok, line) = official_verify(&script, &multi, &tampered);
    assert!(!ok, "a tampered payment must be rejected: {line}");
}
