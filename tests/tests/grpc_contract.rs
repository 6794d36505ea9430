//! The gRPC contract with the real binaries: status codes, reason codes, nothing charged on
//! denial or bad input, 64 concurrent payments against a cap, crash and restart.

use std::sync::Arc;
use wallet_proto::AdminRpc;

use tonic::Code;
use wallet_client::Credential;
use wallet_e2e::{header, header_json, now_ms, recover_payer, Stack, PAYEE, USDC_BASE_SEPOLIA};
use wallet_proto::gateway::v1 as gw;

async fn pay(
    stack: &Stack,
    cred: &Credential,
    hdr: &str,
    idem: &str,
) -> Result<gw::SignPaymentResponse, tonic::Status> {
    stack
        .client()
        .await
        .sign_payment(cred.sign_request(hdr, "", "", idem, now_ms()))
        .await
        .map(tonic::Response::into_inner)
}

fn reason(s: &tonic::Status) -> String {
    s.metadata().get("x-wallet-reason").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn each_denial_has_its_reason_and_charges_nothing() {
    let stack = Stack::start();
    let w = stack.wallet("0.10").await;
    let cred = stack.session(&w, "0.15", gw::IssueSessionRequest::default()).await;
    let mut c = stack.client().await;
    let other = |network: &str, asset: &str, name: &str| {
        header_json(&format!(
            r#"{{"x402Version":2,"resource":{{"url":"https://x"}},"accepts":[{{"scheme":"exact","network":"{network}","amount":"1000","asset":"{asset}","payTo":"{PAYEE}","maxTimeoutSeconds":60,"extra":{{"name":"{name}","version":"2"}}}}]}}"#
        ))
    };
    let cases = [
        (header("100001"), "PER_TX_LIMIT"),
        (
            other("eip155:84532", "0x0000000000000000000000000000000000000001", "USDC"),
            "ASSET_NOT_ALLOWED",
        ),
        (other("eip155:84532", USDC_BASE_SEPOLIA, "USD Coin"), "DOMAIN_MISMATCH"),
        (
            header_json(
                r#"{"x402Version":2,"resource":{"url":"https://x"},"accepts":[{"scheme":"upto","network":"eip155:84532"}]}"#,
            ),
            "UNSUPPORTED_SCHEME",
        ),
    ];
    for (hdr, want) in cases {
        let e = pay(&stack, &cred, &hdr, "k").await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::PermissionDenied, want),
            "{}",
            e.message()
        );
        assert!(e.message().starts_with(want));
    }
    c.set_policy(stack.signed(
        AdminRpc::SetPolicy,
        gw::SetPolicyRequest {
            auth: None,
            policy: Some(gw::Policy {
                wallet_id: w.wallet_id.clone(),
                max_per_payment: "1".into(),
                networks: vec!["eip155:8453".into()],
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        reason(&pay(&stack, &cred, &header("1000"), "k").await.unwrap_err()),
        "NETWORK_NOT_ALLOWED"
    );
    c.set_policy(stack.signed(
        AdminRpc::SetPolicy,
        gw::SetPolicyRequest {
            auth: None,
            policy: Some(gw::Policy {
                wallet_id: w.wallet_id.clone(),
                max_per_payment: "1".into(),
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();
    c.add_kyt(stack.signed(
        AdminRpc::AddKyt,
        gw::KytRequest {
            auth: None,
            addresses: vec![PAYEE.to_uppercase().replacen("0X", "0x", 1)],
        },
    ))
    .await
    .unwrap();
    assert_eq!(reason(&pay(&stack, &cred, &header("1000"), "k").await.unwrap_err()), "KYT_DENIED");
    c.remove_kyt(
        stack.signed(
            AdminRpc::RemoveKyt,
            gw::KytRequest { auth: None, addresses: vec![PAYEE.into()] },
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        reason(&pay(&stack, &cred, &header("160000"), "k").await.unwrap_err()),
        "SESSION_CAP"
    );
    let narrow = stack
        .session(
            &w,
            "1",
            gw::IssueSessionRequest {
                payees: vec!["0x0000000000000000000000000000000000000002".into()],
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        reason(&pay(&stack, &narrow, &header("1000"), "k").await.unwrap_err()),
        "PAYEE_NOT_ALLOWED"
    );
    let fresh = stack.wallet("1").await;
    let mut c2 = stack.client().await;
    let unpolicied = c2
        .create_wallet(stack.signed(AdminRpc::CreateWallet, gw::CreateWalletRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let no_policy = stack.session(&unpolicied, "1", gw::IssueSessionRequest::default()).await;
    assert_eq!(
        reason(&pay(&stack, &no_policy, &header("1000"), "k").await.unwrap_err()),
        "NO_POLICY"
    );
    let short = stack
        .session(&fresh, "1", gw::IssueSessionRequest { ttl_seconds: 1, ..Default::default() })
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        reason(&pay(&stack, &short, &header("1000"), "k").await.unwrap_err()),
        "SESSION_EXPIRED"
    );

    assert_eq!(stack.spent(&cred.session_id).await, "0");
    assert_eq!(stack.status().await.payments_signed, 0);
}

#[tokio::test]
async fn malformed_input_gets_clear_errors_and_changes_nothing() {
    let stack = Stack::start();
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    let megabytes = "A".repeat(1_500_000);
    let cases: Vec<(String, Code, &str)> = vec![
        ("%%% not base64 %%%".into(), Code::InvalidArgument, "MALFORMED_HEADER"),
        (header_json("{not json"), Code::InvalidArgument, "MALFORMED_HEADER"),
        (
            header_json(r#"{"x402Version":3,"accepts":[]}"#),
            Code::InvalidArgument,
            "UNSUPPORTED_VERSION",
        ),
        (header_json(r#"{"x402Version":2,"accepts":[]}"#), Code::InvalidArgument, "NO_ACCEPTS"),
        (
            header_json(
                r#"{"x402Version":2,"resource":{"url":"x"},"accepts":[{"scheme":"upto"},{"scheme":"stream"}]}"#,
            ),
            Code::PermissionDenied,
            "UNSUPPORTED_SCHEME",
        ),
        (megabytes, Code::InvalidArgument, "HEADER_TOO_LARGE"),
    ];
    for (hdr, code, want) in cases {
        let e = pay(&stack, &cred, &hdr, "k").await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, want), "{}", e.message());
    }
    // Larger than the gateway accepts at all: refused by the transport with a clear status.
    let huge = "A".repeat(3 << 20);
    let e = pay(&stack, &cred, &huge, "k").await.unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument),
        "{e:?}"
    );
    // A request whose session signature does not match.
    let mut forged = cred.sign_request(&header("1000"), "", "", "k", now_ms());
    forged.payment_required = header("2000");
    let e = stack.client().await.sign_payment(forged).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_str()), (Code::Unauthenticated, "BAD_SIGNATURE"));

    assert_eq!(stack.spent(&cred.session_id).await, "0");
    assert_eq!(stack.status().await.payments_signed, 0);
    // And the stack still works.
    let ok = pay(&stack, &cred, &header("1000"), "k2").await.unwrap();
    assert_eq!(recover_payer(&ok.payment_signature), w.address);
}

#[tokio::test]
async fn sixty_four_parallel_payments_against_a_cap_worth_seven() {
    let stack = Arc::new(Stack::start());
    let w = stack.wallet("1").await;
    // 7 payments of 0.01.
    let cred = Arc::new(stack.session(&w, "0.07", gw::IssueSessionRequest::default()).await);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let stack = Arc::clone(&stack);
        let cred = Arc::clone(&cred);
        tasks.push(tokio::spawn(async move {
            pay(&stack, &cred, &header("10000"), &format!("k{i}")).await
        }));
    }
    let mut signed = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => signed.push(r),
            Err(e) => assert_eq!(reason(&e), "SESSION_CAP", "{e:?}"),
        }
    }
    assert_eq!(signed.len(), 7, "exactly the cap's worth is signed");
    let mut nonces: Vec<_> = signed
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.payment_payload_json).unwrap()["payload"]
                ["authorization"]["nonce"]
                .clone()
        })
        .collect();
    nonces.sort_by_key(ToString::to_string);
    nonces.dedup();
    assert_eq!(nonces.len(), 7, "every authorization has its own nonce");
    assert_eq!(stack.spent(&cred.session_id).await, "0.07");
}

#[tokio::test]
async fn spends_survive_an_enclave_crash_and_an_unreachable_enclave_is_unavailable() {
    let mut stack = Stack::start();
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "0.03", gw::IssueSessionRequest::default()).await;
    let first = pay(&stack, &cred, &header("10000"), "a").await.unwrap();
    pay(&stack, &cred, &header("10000"), "b").await.unwrap();

    stack.enclave.kill();
    let e = pay(&stack, &cred, &header("10000"), "c").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let s = stack.status().await;
    assert!(!s.enclave_reachable, "status reports the enclave as unreachable");

    stack.crash_and_restart_enclave();
    assert_eq!(stack.spent(&cred.session_id).await, "0.02", "the ledger survived SIGKILL");
    // Idempotent replay across the crash: same payload, not charged.
    let again = pay(&stack, &cred, &header("10000"), "a").await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.payment_signature, first.payment_signature);
    pay(&stack, &cred, &header("10000"), "c").await.unwrap();
    assert_eq!(
        reason(&pay(&stack, &cred, &header("10000"), "d").await.unwrap_err()),
        "SESSION_CAP"
    );
    assert_eq!(stack.spent(&cred.session_id).await, "0.03");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let stack = Stack::start();
    let channel = tonic::transport::Endpoint::from_shared(stack.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "wallet.gateway.v1.WalletGateway".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let channel = tonic::transport::Endpoint::from_shared(stack.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("reflection did not list services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"wallet.gateway.v1.WalletGateway".to_owned()), "{names:?}");
}

#[tokio::test]
async fn a_compromised_host_cannot_change_state_through_the_gateway() {
    let stack = Stack::start();
    let w = stack.wallet("0.10").await;
    let mut c = stack.client().await;
    let raise = gw::SetPolicyRequest {
        auth: None,
        policy: Some(gw::Policy {
            wallet_id: w.wallet_id.clone(),
            max_per_payment: "1000".into(),
            ..Default::default()
        }),
    };
    // No signature.
    let e = c.set_policy(raise.clone()).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unauthenticated, "ADMIN_SIGNATURE_REQUIRED")
    );
    // A genuine signed request for something else, with its body swapped.
    let mut swapped = stack.signed(
        AdminRpc::SetPolicy,
        gw::SetPolicyRequest {
            auth: None,
            policy: Some(gw::Policy {
                wallet_id: w.wallet_id.clone(),
                max_per_payment: "0.05".into(),
                ..Default::default()
            }),
        },
    );
    swapped.policy = raise.policy.clone();
    let e = c.set_policy(swapped).await.unwrap_err();
    assert_eq!(reason(&e), "BAD_ADMIN_SIGNATURE");
    // A genuine request replayed.
    let genuine = stack
        .signed(AdminRpc::AddKyt, gw::KytRequest { auth: None, addresses: vec![PAYEE.into()] });
    c.add_kyt(genuine.clone()).await.unwrap();
    let e = c.add_kyt(genuine).await.unwrap_err();
    assert_eq!(reason(&e), "REPLAYED_ADMIN_REQUEST");
    // Still the admin's policy, and reads stay open to the host.
    let p = c
        .get_policy(gw::GetPolicyRequest { wallet_id: w.wallet_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.max_per_payment, "0.1");
    assert_eq!(c.list_admins(gw::ListAdminsRequest {}).await.unwrap().into_inner().admins.len(), 1);
}

#[tokio::test]
async fn a_compromised_host_cannot_alter_or_replay_an_agents_payment() {
    let stack = Stack::start();
    let w = stack.wallet("1").await;
    let cred = stack.session(&w, "1", gw::IssueSessionRequest::default()).await;
    let mut c = stack.client().await;
    let genuine = cred.sign_request(&header("10000"), "", "", "k", now_ms());
    let payee_swapped = header_json(
        &String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, header("10000"))
                .unwrap(),
        )
        .unwrap()
        .replace(PAYEE, "0x000000000000000000000000000000000000dEaD"),
    );
    let asset_swapped = header_json(
        &String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, header("10000"))
                .unwrap(),
        )
        .unwrap()
        .replace(USDC_BASE_SEPOLIA, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
    );
    for (what, hdr, pref_asset) in [
        ("amount", header("999999"), ""),
        ("payee", payee_swapped, ""),
        ("asset", asset_swapped, ""),
        ("preferred asset", header("10000"), "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
    ] {
        let mut altered = genuine.clone();
        altered.payment_required = hdr;
        altered.preferred_asset = pref_asset.into();
        let e = c.sign_payment(altered).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::Unauthenticated, "BAD_SIGNATURE"),
            "altered {what}"
        );
    }
    c.sign_payment(genuine.clone()).await.unwrap();
    let e = c.sign_payment(genuine).await.unwrap_err();
    assert_eq!(reason(&e), "REPLAYED_REQUEST");
    assert_eq!(stack.spent(&cred.session_id).await, "0.01");
}
