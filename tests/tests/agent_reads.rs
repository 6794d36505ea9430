//! An agent's own reads through the gateway, with the real binaries: `GetBudget`,
//! `ListPayments` and `PreviewPayment`. Each is signed by the session key and answered (and
//! signed) by the enclave for that session only; none changes anything. The attacks: another
//! session's key, a forged or altered signature, a replayed request, a signature made for one
//! RPC used for another, and a gateway that forges, alters or replays the answers.

use std::sync::{Arc, Mutex};

use tonic::{transport::Channel, Code, Request, Response, Status};
use wallet_client::{ClientError, Credential, GatewayClient, Reason};
use wallet_e2e::{header, header_json, now_ms, Stack, PAYEE, USDC_BASE_SEPOLIA};
use wallet_proto::{
    gateway::v1::{
        self as gw,
        wallet_gateway_client::WalletGatewayClient,
        wallet_gateway_server::{WalletGateway, WalletGatewayServer},
    },
    AdminRpc, SessionSigned,
};

/// Base mainnet USDC (registry: "USD Coin", version 2).
const USDC_BASE: &str = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913";

/// Limits of every kind, so each shows up in the budget.
const POLICY: &str = r#"
version = 1
[wallet]
max_per_payment = "0.10"
payments_per_minute = 100
budgets = [{ per = "1h", max = "1" }]
per_payee = [{ per = "1d", max = "0.5" }]
[session]
payments_per_minute = 50
budgets = [{ per = "1h", max = "0.3" }]
[approval]
above = "0.05"
[[rule]]
name = "testnet"
networks = ["eip155:84532"]
max_per_payment = "0.08"
action = "allow"
[[rule]]
name = "mainnet"
networks = ["eip155:8453"]
action = "allow"
"#;

async fn client(stack: &Stack) -> GatewayClient {
    GatewayClient::connect(&stack.url)
        .await
        .expect("connect")
        .with_identity(&stack.enclave_id)
        .expect("identity")
}

async fn budget(stack: &Stack, cred: &Credential) -> gw::SessionBudget {
    client(stack).await.get_budget(cred.budget_request(now_ms())).await.expect("budget")
}

async fn list(stack: &Stack, cred: &Credential, limit: u32) -> gw::ListPaymentsResponse {
    client(stack).await.list_payments(cred.payments_request(limit, now_ms())).await.expect("list")
}

async fn pay(
    stack: &Stack,
    cred: &Credential,
    hdr: &str,
    network: &str,
    key: &str,
) -> Result<gw::SignPaymentResponse, ClientError> {
    client(stack).await.sign_payment(cred.sign_request(hdr, network, "", key, now_ms())).await
}

async fn preview(stack: &Stack, cred: &Credential, hdr: &str, network: &str) -> gw::PaymentPreview {
    client(stack)
        .await
        .preview_payment(cred.preview_request(hdr, network, "", now_ms()))
        .await
        .expect("preview")
}

async fn audit_count(stack: &Stack) -> u64 {
    client(stack)
        .await
        .get_audit_head(gw::GetAuditHeadRequest { challenge: vec![7; 16] })
        .await
        .expect("audit head")
        .count
}

/// The budget's window row of `scope` and `len` (and `payee`, for payee rows).
fn window<'a>(
    b: &'a gw::SessionBudget,
    scope: &str,
    len: u64,
    payee: &str,
) -> &'a gw::BudgetWindow {
    b.windows
        .iter()
        .find(|w| {
            w.scope == scope && w.window_seconds == len && w.payee == payee && !w.max.is_empty()
        })
        .unwrap_or_else(|| panic!("no {scope} {len} s window for {payee:?} in {:?}", b.windows))
}

/// Two options: Base mainnet USDC first, Base Sepolia USDC second, `amount` atomic each.
fn two_options(amount: &str) -> String {
    let option = |network: &str, asset: &str, name: &str| {
        format!(
            r#"{{"scheme":"exact","network":"{network}","amount":"{amount}","asset":"{asset}","payTo":"{PAYEE}","maxTimeoutSeconds":60,"extra":{{"name":"{name}","version":"2"}}}}"#
        )
    };
    header_json(&format!(
        r#"{{"x402Version":2,"resource":{{"url":"https://api.example.com/x"}},"accepts":[{},{}]}}"#,
        option("eip155:8453", USDC_BASE, "USD Coin"),
        option("eip155:84532", USDC_BASE_SEPOLIA, "USDC"),
    ))
}

async fn setup(stack: &Stack) -> (gw::Wallet, Credential, Credential) {
    let w = stack.wallet("1").await;
    stack.set_document(&w, POLICY).await;
    let a = stack.session(&w, "0.5", gw::IssueSessionRequest::default()).await;
    let b = stack.session(&w, "0.5", gw::IssueSessionRequest::default()).await;
    (w, a, b)
}

#[tokio::test]
async fn budget_follows_payments_and_the_list_shows_this_sessions_decisions_only() {
    let stack = Stack::start();
    let (w, a, b) = setup(&stack).await;

    let fresh = budget(&stack, &a).await;
    assert_eq!(fresh.session_id, a.session_id);
    assert_eq!(
        (fresh.wallet_id.as_str(), fresh.wallet_address.as_str()),
        (w.wallet_id.as_str(), w.address.as_str())
    );
    assert_eq!(fresh.unit, "token");
    assert_eq!(fresh.expires_at, a.expires_at);
    assert!(!fresh.expired && !fresh.revoked && !fresh.wallet_frozen && fresh.has_policy);
    assert_eq!(
        (fresh.session_cap.as_str(), fresh.session_spent.as_str(), fresh.session_left.as_str()),
        ("0.5", "0", "0.5")
    );
    assert_eq!(fresh.max_per_payment, "0.1");
    assert_eq!(fresh.rule_limits.len(), 1, "only the rule with a limit: {:?}", fresh.rule_limits);
    let rule = &fresh.rule_limits[0];
    assert_eq!((rule.rule.as_str(), rule.max_per_payment.as_str()), ("testnet", "0.08"));
    assert_eq!(rule.networks, ["eip155:84532"]);
    assert_eq!(fresh.approval_above, "0.05");
    // min(per payment 0.1, session left 0.5, session hour 0.3, wallet hour 1).
    assert_eq!(fresh.max_payment_now, "0.1");
    let hour = window(&fresh, "session", 3600, "");
    assert_eq!((hour.max.as_str(), hour.spent.as_str(), hour.left.as_str()), ("0.3", "0", "0.3"));
    assert!(fresh.windows.iter().any(|w| w.scope == "session" && w.max_payments == 50));
    assert!(fresh.windows.iter().any(|w| w.scope == "wallet" && w.max_payments == 100));
    assert!(fresh
        .windows
        .iter()
        .any(|w| w.scope == "payee" && w.payee.is_empty() && w.max == "0.5"));

    // A pays 0.01, B pays 0.02 (to the same payee).
    let paid = pay(&stack, &a, &header("10000"), "", "a-1").await.expect("a pays");
    pay(&stack, &b, &header("20000"), "", "b-1").await.expect("b pays");
    let after = budget(&stack, &a).await;
    assert_eq!((after.session_spent.as_str(), after.session_left.as_str()), ("0.01", "0.49"));
    assert_eq!(after.session_spent, paid.session_spent, "the budget and the payment agree");
    let s = window(&after, "session", 3600, "");
    assert_eq!((s.spent.as_str(), s.left.as_str(), s.payments), ("0.01", "0.29", 1));
    let wl = window(&after, "wallet", 3600, "");
    assert_eq!((wl.spent.as_str(), wl.left.as_str(), wl.payments), ("0.03", "0.97", 2));
    let p = window(&after, "payee", 86_400, PAYEE);
    assert_eq!((p.spent.as_str(), p.left.as_str()), ("0.03", "0.47"));

    // A is denied (over the testnet rule's 0.08) and held (above 0.05).
    let denied = pay(&stack, &a, &header("90000"), "", "a-deny").await.unwrap_err();
    assert_eq!(denied.reason(), Some(Reason::PerTxLimit));
    let held = pay(&stack, &a, &header("60000"), "", "a-hold").await.unwrap_err();
    assert_eq!(held.reason(), Some(Reason::ApprovalPending));
    // A retry while pending is the same hold, not a second record.
    pay(&stack, &a, &header("60000"), "", "a-hold").await.unwrap_err();
    // A denial or a hold charges nothing.
    assert_eq!(budget(&stack, &a).await.session_spent, "0.01");

    let l = list(&stack, &a, 0).await;
    assert_eq!(l.kept, 3, "{:?}", l.payments);
    let outcomes: Vec<&str> = l.payments.iter().map(|p| p.outcome.as_str()).collect();
    assert_eq!(outcomes, ["held", "denied", "paid"], "newest first");
    let (h, d, p) = (&l.payments[0], &l.payments[1], &l.payments[2]);
    assert_eq!((h.reason.as_str(), h.approval_state.as_str()), ("APPROVAL_PENDING", "pending"));
    assert!(h.approval_id.starts_with("ap_"), "{h:?}");
    assert_eq!(
        (h.amount.as_str(), h.amount_human.as_str(), h.idempotency_key.as_str()),
        ("60000", "0.06", "a-hold")
    );
    assert_eq!(
        (h.network.as_str(), h.pay_to.as_str(), h.asset_symbol.as_str()),
        ("eip155:84532", PAYEE, "USDC")
    );
    assert!(h.message.contains("approval threshold"), "{h:?}");
    assert_eq!((d.reason.as_str(), d.idempotency_key.as_str()), ("PER_TX_LIMIT", "a-deny"));
    assert_eq!(
        (d.amount.as_str(), d.amount_human.as_str(), d.pay_to.as_str()),
        ("90000", "0.09", PAYEE)
    );
    assert!(d.message.contains("0.08"), "{d:?}");
    assert_eq!(
        (p.amount.as_str(), p.amount_human.as_str(), p.idempotency_key.as_str()),
        ("10000", "0.01", "a-1")
    );
    assert_eq!(
        (p.asset.as_str(), p.network.as_str(), p.pay_to.as_str()),
        (USDC_BASE_SEPOLIA, "eip155:84532", PAYEE)
    );
    assert!(p.reason.is_empty() && p.approval_id.is_empty());
    assert!(h.at_ms >= d.at_ms && d.at_ms >= p.at_ms && p.at_ms > 0);
    assert_eq!(list(&stack, &a, 1).await.payments.len(), 1, "the limit is applied");

    // B sees its own payment and nothing of A's.
    let lb = list(&stack, &b, 200).await;
    assert_eq!(lb.payments.len(), 1);
    assert_eq!(
        (lb.payments[0].idempotency_key.as_str(), lb.payments[0].amount.as_str()),
        ("b-1", "20000")
    );

    // The human approves; the retry pays and names the hold, which is now "used".
    client(&stack)
        .await
        .decide_approval(stack.signed(
            AdminRpc::DecideApproval,
            gw::DecideApprovalRequest {
                approval_id: h.approval_id.clone(),
                approve: true,
                note: String::new(),
                auth: None,
            },
        ))
        .await
        .expect("approve");
    pay(&stack, &a, &header("60000"), "", "a-hold").await.expect("approved retry pays");
    let l = list(&stack, &a, 0).await;
    assert_eq!(l.payments[0].outcome, "paid");
    assert_eq!(l.payments[0].approval_id, h.approval_id);
    assert_eq!(l.payments[1].approval_state, "used");
    assert_eq!(budget(&stack, &a).await.session_spent, "0.07");

    // Revoked: the session still reads its own budget and history, and says so.
    client(&stack)
        .await
        .revoke_session(stack.signed(
            AdminRpc::RevokeSession,
            gw::RevokeSessionRequest { session_id: a.session_id.clone(), auth: None },
        ))
        .await
        .expect("revoke");
    let revoked = budget(&stack, &a).await;
    assert!(revoked.revoked);
    assert_eq!(revoked.max_payment_now, "0");
    assert_eq!(list(&stack, &a, 0).await.payments.len(), 4);
    let p = preview(&stack, &a, &header("10000"), "").await;
    assert_eq!((p.outcome.as_str(), p.reason.as_str()), ("denied", "SESSION_REVOKED"));
    // The denial of a revoked session's payment is listed too.
    pay(&stack, &a, &header("10000"), "", "a-after").await.unwrap_err();
    assert_eq!(list(&stack, &a, 1).await.payments[0].reason, "SESSION_REVOKED");

    // After a restart the payments and holds are rebuilt from the journal and the state.
    let mut stack = stack;
    stack.crash_and_restart_enclave();
    let mut rebuilt = None;
    for _ in 0..100 {
        match client(&stack).await.list_payments(b.payments_request(0, now_ms())).await {
            Ok(l) => {
                rebuilt = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let lb = rebuilt.expect("the restarted enclave answers");
    assert_eq!(lb.payments.len(), 1);
    assert_eq!(lb.payments[0].idempotency_key, "b-1");
    let la = list(&stack, &a, 0).await;
    let outcomes: Vec<&str> = la.payments.iter().map(|p| p.outcome.as_str()).collect();
    assert_eq!(outcomes, ["paid", "held", "paid"], "denials are not kept across a restart");
    assert_eq!(la.payments[0].approval_id, h.approval_id);
    assert_eq!(budget(&stack, &a).await.session_spent, "0.07");
}

#[tokio::test]
async fn a_preview_is_what_the_payment_then_does_and_changes_nothing() {
    let stack = Stack::start();
    let (_, a, _) = setup(&stack).await;
    let hdr = two_options("20000");

    let before = budget(&stack, &a).await;
    let audit_before = audit_count(&stack).await;
    let p = preview(&stack, &a, &hdr, "eip155:84532").await;
    assert_eq!(p.outcome, "allowed", "{p:?}");
    assert_eq!(p.accepted_index, 1, "the preferred network's option");
    assert_eq!(
        (p.network.as_str(), p.asset.as_str(), p.asset_symbol.as_str()),
        ("eip155:84532", USDC_BASE_SEPOLIA, "USDC")
    );
    assert_eq!(
        (p.pay_to.as_str(), p.amount.as_str(), p.amount_human.as_str()),
        (PAYEE, "20000", "0.02")
    );
    assert_eq!((p.session_spent.as_str(), p.session_remaining.as_str()), ("0.02", "0.48"));
    assert_eq!(p.x402_version, 2);
    // Twice: the same answer, nothing reserved, nothing audited, nothing listed.
    let again = preview(&stack, &a, &hdr, "eip155:84532").await;
    assert_eq!(again, p);
    assert_eq!(budget(&stack, &a).await.session_spent, before.session_spent);
    assert_eq!(window(&budget(&stack, &a).await, "wallet", 3600, "").payments, 0);
    assert_eq!(audit_count(&stack).await, audit_before, "reads are not audited");
    assert_eq!(list(&stack, &a, 0).await.kept, 0);

    // The payment chooses and charges what the preview said.
    let paid = pay(&stack, &a, &hdr, "eip155:84532", "pv-1").await.expect("pays");
    assert_eq!(paid.accepted_index, p.accepted_index);
    assert_eq!(paid.accepted_json, p.accepted_json);
    assert_eq!((paid.network, paid.asset, paid.pay_to), (p.network, p.asset, p.pay_to));
    assert_eq!((paid.amount, paid.charged), (p.amount, p.amount_human));
    assert_eq!(
        (paid.session_spent, paid.session_remaining),
        (p.session_spent, p.session_remaining)
    );
    assert_eq!(paid.payer, p.payer);

    // Without a preference the server's first option (mainnet) is chosen, by both.
    let first = preview(&stack, &a, &hdr, "").await;
    assert_eq!(
        (first.outcome.as_str(), first.accepted_index, first.network.as_str()),
        ("allowed", 0, "eip155:8453")
    );
    let paid = pay(&stack, &a, &hdr, "", "pv-2").await.expect("pays");
    assert_eq!((paid.accepted_index, paid.network.as_str()), (0, "eip155:8453"));

    // A hold: the preview says so and creates no hold.
    let held = preview(&stack, &a, &header("60000"), "").await;
    assert_eq!((held.outcome.as_str(), held.reason.as_str()), ("held", "APPROVAL_PENDING"));
    assert!(held.message.contains("approval threshold"), "{held:?}");
    assert_eq!(held.amount, "60000");
    let holds = client(&stack)
        .await
        .list_approvals(gw::ListApprovalsRequest { wallet_id: String::new(), all: true })
        .await
        .expect("approvals");
    assert!(holds.approvals.is_empty(), "a preview holds nothing: {:?}", holds.approvals);

    // A denial: the code and sentence SignPayment gives, and no audit record.
    let audit_before = audit_count(&stack).await;
    let denied = preview(&stack, &a, &header("90000"), "").await;
    assert_eq!((denied.outcome.as_str(), denied.reason.as_str()), ("denied", "PER_TX_LIMIT"));
    assert!(denied.amount.is_empty() && denied.network.is_empty());
    assert_eq!(audit_count(&stack).await, audit_before);
    let real = pay(&stack, &a, &header("90000"), "", "pv-3").await.unwrap_err();
    assert_eq!(real.reason(), Some(Reason::PerTxLimit));
    assert!(real.message().contains(&denied.message), "{} / {}", real.message(), denied.message);

    // A header the enclave cannot read is an error, as for SignPayment.
    let e = client(&stack)
        .await
        .preview_payment(a.preview_request("not a header", "", "", now_ms()))
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.reason()), (Code::InvalidArgument, Some(Reason::MalformedHeader)));
}

/// Takes `from`'s signature, timestamp and nonce into `to` (the fields a signature covers that
/// the two requests share).
fn moved<F: SessionSigned, T: SessionSigned>(
    from: &F,
    mut to: T,
    set: impl FnOnce(&mut T, &str, u64, &[u8]),
) -> T {
    set(&mut to, from.session_id(), from.timestamp_ms(), from.request_nonce());
    *to.signature_mut() = from.signature().to_vec();
    to
}

#[tokio::test]
async fn reads_are_the_sessions_own_and_each_signature_serves_one_rpc_once() {
    let stack = Stack::start();
    let (w, a, b) = setup(&stack).await;
    let mut c = client(&stack).await;
    let refused = |e: ClientError, want: Reason| {
        assert_eq!((e.code(), e.reason()), (Code::Unauthenticated, Some(want)), "{e}");
    };

    // An unknown session, and a session id with another key's signature.
    let stranger = Credential::new(
        "s_nobody".into(),
        w.wallet_id.clone(),
        String::new(),
        String::new(),
        0,
        wallet_client::new_session_key(),
    );
    refused(
        c.get_budget(stranger.budget_request(now_ms())).await.unwrap_err(),
        Reason::UnknownSession,
    );
    let forger = Credential::new(
        a.session_id.clone(),
        w.wallet_id.clone(),
        String::new(),
        String::new(),
        0,
        wallet_client::new_session_key(),
    );
    refused(c.get_budget(forger.budget_request(now_ms())).await.unwrap_err(), Reason::BadSignature);
    refused(
        c.list_payments(forger.payments_request(0, now_ms())).await.unwrap_err(),
        Reason::BadSignature,
    );
    refused(
        c.preview_payment(forger.preview_request(&header("10000"), "", "", now_ms()))
            .await
            .unwrap_err(),
        Reason::BadSignature,
    );
    // B's signature with A's session id.
    let mut as_a = b.budget_request(now_ms());
    as_a.session_id.clone_from(&a.session_id);
    refused(c.get_budget(as_a).await.unwrap_err(), Reason::BadSignature);
    // Altered after signing (the host raises the limit).
    let mut altered = a.payments_request(1, now_ms());
    altered.limit = 200;
    refused(c.list_payments(altered).await.unwrap_err(), Reason::BadSignature);
    // Stale.
    refused(
        c.get_budget(a.budget_request(now_ms() - 200_000)).await.unwrap_err(),
        Reason::StaleRequest,
    );

    // Replayed: each signed read is usable once.
    let once = a.budget_request(now_ms());
    c.get_budget(once.clone()).await.expect("first use");
    refused(c.get_budget(once).await.unwrap_err(), Reason::ReplayedRequest);
    let once = a.preview_request(&header("10000"), "", "", now_ms());
    c.preview_payment(once.clone()).await.expect("first use");
    refused(c.preview_payment(once).await.unwrap_err(), Reason::ReplayedRequest);

    // A signature for one RPC, presented as another (same session, time and nonce).
    let set_list = |r: &mut gw::ListPaymentsRequest, s: &str, t: u64, n: &[u8]| {
        (r.session_id, r.timestamp_ms, r.request_nonce) = (s.into(), t, n.to_vec());
    };
    let set_budget = |r: &mut gw::GetBudgetRequest, s: &str, t: u64, n: &[u8]| {
        (r.session_id, r.timestamp_ms, r.request_nonce) = (s.into(), t, n.to_vec());
    };
    let set_pay = |r: &mut gw::SignPaymentRequest, s: &str, t: u64, n: &[u8]| {
        (r.session_id, r.timestamp_ms, r.request_nonce) = (s.into(), t, n.to_vec());
    };
    let set_preview = |r: &mut gw::PreviewPaymentRequest, s: &str, t: u64, n: &[u8]| {
        (r.session_id, r.timestamp_ms, r.request_nonce) = (s.into(), t, n.to_vec());
    };
    let budget_req = a.budget_request(now_ms());
    refused(
        c.list_payments(moved(&budget_req, gw::ListPaymentsRequest::default(), set_list))
            .await
            .unwrap_err(),
        Reason::BadSignature,
    );
    let list_req = a.payments_request(0, now_ms());
    refused(
        c.get_budget(moved(&list_req, gw::GetBudgetRequest::default(), set_budget))
            .await
            .unwrap_err(),
        Reason::BadSignature,
    );
    // A preview's signature cannot buy anything: as a payment with the same header it is refused,
    // and nothing is charged.
    let preview_req = a.preview_request(&header("10000"), "", "", now_ms());
    let as_payment = moved(
        &preview_req,
        gw::SignPaymentRequest {
            payment_required: preview_req.payment_required.clone(),
            idempotency_key: "stolen".into(),
            ..Default::default()
        },
        set_pay,
    );
    refused(c.sign_payment(as_payment).await.unwrap_err(), Reason::BadSignature);
    // Nor can a payment's signature be spent on a preview, or a budget read's on a preview.
    let pay_req = a.sign_request(&header("10000"), "", "", "k", now_ms());
    let as_preview = moved(
        &pay_req,
        gw::PreviewPaymentRequest {
            payment_required: pay_req.payment_required.clone(),
            ..Default::default()
        },
        set_preview,
    );
    refused(c.preview_payment(as_preview).await.unwrap_err(), Reason::BadSignature);
    let budget_req = a.budget_request(now_ms());
    refused(
        c.preview_payment(moved(&budget_req, gw::PreviewPaymentRequest::default(), set_preview))
            .await
            .unwrap_err(),
        Reason::BadSignature,
    );
    // The genuine requests still work (the refused ones used nothing up), and nothing was paid.
    c.get_budget(budget_req).await.expect("genuine budget read");
    c.list_payments(list_req).await.expect("genuine list");
    assert_eq!(budget(&stack, &a).await.session_spent, "0");
    assert_eq!(list(&stack, &a, 0).await.kept, 0, "refused requests are not listed");

    // An expired session reads its budget (and is told it expired).
    let short = stack
        .session(&w, "0.5", gw::IssueSessionRequest { ttl_seconds: 1, ..Default::default() })
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = budget(&stack, &short).await;
    assert!(expired.expired && !expired.revoked);
    assert_eq!(expired.max_payment_now, "0");
    let p = preview(&stack, &short, &header("10000"), "").await;
    assert_eq!((p.outcome.as_str(), p.reason.as_str()), ("denied", "SESSION_EXPIRED"));
}

// ---- a compromised gateway ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Answers the reads itself.
    Forge,
    /// Relays, then changes the answer.
    Alter,
    /// Answers with the first answer it relayed (signed for another challenge and request).
    Replay,
}

#[derive(Clone)]
struct Mitm {
    upstream: WalletGatewayClient<Channel>,
    mode: Arc<Mutex<Mode>>,
    saved: Arc<Mutex<Saved>>,
}

#[derive(Default)]
struct Saved {
    budget: Option<(tonic::metadata::MetadataMap, gw::SessionBudget)>,
    list: Option<(tonic::metadata::MetadataMap, gw::ListPaymentsResponse)>,
    preview: Option<(tonic::metadata::MetadataMap, gw::PaymentPreview)>,
}

fn forward<T>(r: Request<T>) -> Request<T> {
    let (metadata, _, message) = r.into_parts();
    let mut out = Request::new(message);
    if let Some(c) = metadata.get_bin(wallet_proto::answer::CHALLENGE_METADATA) {
        out.metadata_mut().insert_bin(wallet_proto::answer::CHALLENGE_METADATA, c.clone());
    }
    out
}

fn with_metadata<T>(metadata: tonic::metadata::MetadataMap, body: T) -> Response<T> {
    let mut r = Response::new(body);
    *r.metadata_mut() = metadata;
    r
}

impl Mitm {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }
}

/// The reads are tampered with as the mode says; every other call is relayed.
macro_rules! mitm {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl WalletGateway for Mitm {
            async fn get_budget(&self, r: Request<gw::GetBudgetRequest>) -> Result<Response<gw::SessionBudget>, Status> {
                let mode = self.mode();
                if mode == Mode::Forge {
                    return Ok(Response::new(gw::SessionBudget { session_left: "1000".into(), max_payment_now: "1000".into(), ..Default::default() }));
                }
                if mode == Mode::Replay {
                    let (m, b) = self.saved.lock().unwrap().budget.clone().expect("saved");
                    return Ok(with_metadata(m, b));
                }
                let (m, mut b, _) = self.upstream.clone().get_budget(forward(r)).await?.into_parts();
                self.saved.lock().unwrap().budget.get_or_insert((m.clone(), b.clone()));
                if mode == Mode::Alter {
                    b.session_left = "1000".into();
                }
                Ok(with_metadata(m, b))
            }
            async fn list_payments(&self, r: Request<gw::ListPaymentsRequest>) -> Result<Response<gw::ListPaymentsResponse>, Status> {
                let mode = self.mode();
                if mode == Mode::Forge {
                    return Ok(Response::new(gw::ListPaymentsResponse::default()));
                }
                if mode == Mode::Replay {
                    let (m, l) = self.saved.lock().unwrap().list.clone().expect("saved");
                    return Ok(with_metadata(m, l));
                }
                let (m, mut l, _) = self.upstream.clone().list_payments(forward(r)).await?.into_parts();
                self.saved.lock().unwrap().list.get_or_insert((m.clone(), l.clone()));
                if mode == Mode::Alter {
                    // Hide the denial.
                    l.payments.retain(|p| p.outcome != "denied");
                }
                Ok(with_metadata(m, l))
            }
            async fn preview_payment(&self, r: Request<gw::PreviewPaymentRequest>) -> Result<Response<gw::PaymentPreview>, Status> {
                let mode = self.mode();
                if mode == Mode::Forge {
                    return Ok(Response::new(gw::PaymentPreview { outcome: "allowed".into(), ..Default::default() }));
                }
                if mode == Mode::Replay {
                    let (m, p) = self.saved.lock().unwrap().preview.clone().expect("saved");
                    return Ok(with_metadata(m, p));
                }
                let (m, mut p, _) = self.upstream.clone().preview_payment(forward(r)).await?.into_parts();
                self.saved.lock().unwrap().preview.get_or_insert((m.clone(), p.clone()));
                if mode == Mode::Alter {
                    p.outcome = "allowed".into();
                    p.reason.clear();
                }
                Ok(with_metadata(m, p))
            }
            $(
                async fn $name(&self, r: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.upstream.clone().$name(forward(r)).await
                }
            )*
        }
    };
}

mitm! {
    sign_payment(gw::SignPaymentRequest) -> gw::SignPaymentResponse;
    create_wallet(gw::CreateWalletRequest) -> gw::Wallet;
    list_wallets(gw::ListWalletsRequest) -> gw::ListWalletsResponse;
    set_policy(gw::SetPolicyRequest) -> gw::Policy;
    get_policy(gw::GetPolicyRequest) -> gw::Policy;
    add_asset(gw::AddAssetRequest) -> gw::Asset;
    list_assets(gw::ListAssetsRequest) -> gw::ListAssetsResponse;
    add_kyt(gw::KytRequest) -> gw::KytResponse;
    remove_kyt(gw::KytRequest) -> gw::KytResponse;
    list_kyt(gw::ListKytRequest) -> gw::ListKytResponse;
    import_kyt(gw::ImportKytRequest) -> gw::ImportKytResponse;
    issue_session(gw::IssueSessionRequest) -> gw::Session;
    list_sessions(gw::ListSessionsRequest) -> gw::ListSessionsResponse;
    revoke_session(gw::RevokeSessionRequest) -> gw::Session;
    freeze_wallet(gw::FreezeWalletRequest) -> gw::Wallet;
    unfreeze_wallet(gw::FreezeWalletRequest) -> gw::Wallet;
    get_status(gw::GetStatusRequest) -> gw::Status;
    list_approvals(gw::ListApprovalsRequest) -> gw::ListApprovalsResponse;
    decide_approval(gw::DecideApprovalRequest) -> gw::Approval;
    add_admin(gw::AddAdminRequest) -> gw::Admin;
    remove_admin(gw::RemoveAdminRequest) -> gw::Admin;
    list_admins(gw::ListAdminsRequest) -> gw::ListAdminsResponse;
    get_audit_head(gw::GetAuditHeadRequest) -> gw::AuditHead;
    list_audit(gw::ListAuditRequest) -> gw::ListAuditResponse;
    prepare_anchor(gw::PrepareAnchorRequest) -> gw::AnchorInfo;
    provision_anchor(gw::ProvisionAnchorRequest) -> gw::AnchorInfo;
    get_attestation(gw::GetAttestationRequest) -> gw::Attestation;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_compromised_gateway_forges_alters_or_replays_are_refused() {
    let stack = Stack::start();
    let (_, a, _) = setup(&stack).await;
    pay(&stack, &a, &header("10000"), "", "m-1").await.expect("pays");
    pay(&stack, &a, &header("90000"), "", "m-2").await.unwrap_err();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mode = Arc::new(Mutex::new(Mode::Pass));
    let mitm =
        Mitm { upstream: stack.client().await, mode: Arc::clone(&mode), saved: Arc::default() };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WalletGatewayServer::new(mitm))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let pinned =
        GatewayClient::connect(&url).await.unwrap().with_identity(&stack.enclave_id).unwrap();
    let hdr = header("90000");

    // A faithful relay: every read verifies (and the answers are saved for the replay).
    let mut c = pinned.clone();
    let b = c.get_budget(a.budget_request(now_ms())).await.expect("relayed budget");
    assert_eq!(b.session_spent, "0.01");
    let l = c.list_payments(a.payments_request(0, now_ms())).await.expect("relayed list");
    assert_eq!(l.payments.len(), 2);
    let p = c
        .preview_payment(a.preview_request(&hdr, "", "", now_ms()))
        .await
        .expect("relayed preview");
    assert_eq!(p.outcome, "denied");

    for m in [Mode::Forge, Mode::Alter, Mode::Replay] {
        *mode.lock().unwrap() = m;
        let untrusted = |e: ClientError, rpc: &str| {
            assert!(e.is_untrusted(), "{m:?} {rpc}: {e}");
            assert_eq!((e.reason(), e.exit_code()), (Some(Reason::UntrustedAnswer), 5));
            assert!(e.to_string().contains(rpc), "{m:?}: {e}");
        };
        untrusted(c.get_budget(a.budget_request(now_ms())).await.unwrap_err(), "GetBudget");
        untrusted(
            c.list_payments(a.payments_request(0, now_ms())).await.unwrap_err(),
            "ListPayments",
        );
        untrusted(
            c.preview_payment(a.preview_request(&hdr, "", "", now_ms())).await.unwrap_err(),
            "PreviewPayment",
        );
    }
    // Without a pinned identity the forgery would have passed: the check is what catches it.
    *mode.lock().unwrap() = Mode::Forge;
    let mut unpinned = GatewayClient::connect(&url).await.unwrap();
    let forged = unpinned.preview_payment(a.preview_request(&hdr, "", "", now_ms())).await.unwrap();
    assert_eq!(forged.outcome, "allowed");

    *mode.lock().unwrap() = Mode::Pass;
    let b = c.get_budget(a.budget_request(now_ms())).await.expect("relayed again");
    assert_eq!(b.session_spent, "0.01", "nothing the gateway did reached the enclave");
}
