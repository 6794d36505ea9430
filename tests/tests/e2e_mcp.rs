//! `walletctl mcp` driven by the official MCP TypeScript SDK client over stdio
//! (tests/x402-e2e/mcp-client.mjs), paying real peers (tests/x402-e2e): the official x402
//! resource server and facilitator on a local chain, and a paid MCP server speaking the x402 MCP
//! binding (tool-result and JSON-RPC error variants) for the paying proxy
//! (`walletctl mcp --upstream URL`). Every payment is checked on chain.
//!
//! Needs `npm ci --prefix tests/x402-e2e` (scripts/test.sh does it); skipped when
//! `WALLET_SKIP_X402_COMPAT` is set. One launcher serves every test of this file.

use std::time::Duration;

use serde_json::{json, Value};
use wallet_e2e::{
    ok,
    peers::{find_strings, fresh_address, McpSession, PayerPolicy, Peers, RUN_TIMEOUT},
    Stack,
};

const FUND: u128 = 1_000_000;
const PRICE: u128 = 10_000;
const WALLET_TOOLS: [&str; 4] = ["x402_fetch", "x402_inspect", "get_budget", "list_payments"];
/// Words no agent-facing tool may offer: changing limits, approving, exporting, moving funds.
const FORBIDDEN: [&str; 10] = [
    "limit", "approve", "export", "policy", "revoke", "freeze", "key", "transfer", "withdraw",
    "set_",
];

fn session(peers: &Peers, stack: &Stack, args: &[&str]) -> McpSession {
    peers.mcp_session(stack, args, Duration::from_secs(60))
}

fn is_error(result: &Value) -> bool {
    result["isError"] == true
}

/// Everything the agent sees of a result (text content and structured content), for searching.
fn seen(result: &Value) -> String {
    result.to_string()
}

/// The first `ap_…` hold id in `text`.
fn hold_id(text: &str) -> Option<String> {
    let i = text.find("ap_")?;
    let id: String = text[i..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (id.len() > 3).then_some(id)
}

fn tool<'a>(tools: &'a [Value], name: &str) -> &'a Value {
    tools
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name} in {tools:?}"))
}

#[tokio::test]
async fn the_mcp_server_lists_the_wallet_tools_with_truthful_annotations() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "1", 0).await;
    let run = peers.mcp_stdio(
        &stack,
        &["mcp", "--session", payer.session_arg()],
        &json!([{"op": "listTools"}]),
        RUN_TIMEOUT,
    );
    let tools = run.result(0)["tools"].as_array().expect("tools").clone();
    for name in WALLET_TOOLS {
        tool(&tools, name);
    }
    let fetch = tool(&tools, "x402_fetch");
    assert_ne!(fetch["annotations"]["readOnlyHint"], true, "x402_fetch spends: not read-only");
    assert_eq!(fetch["annotations"]["openWorldHint"], true, "x402_fetch reaches the web");
    let props = &fetch["inputSchema"]["properties"];
    for p in ["url", "method", "headers", "body", "maxAmount"] {
        assert!(props.get(p).is_some(), "x402_fetch input {p}: {fetch}");
    }
    assert_eq!(fetch["inputSchema"]["required"], json!(["url"]), "{fetch}");
    for name in ["x402_inspect", "get_budget", "list_payments"] {
        let t = tool(&tools, name);
        assert_eq!(t["annotations"]["readOnlyHint"], true, "{name} is read-only: {t}");
    }
    for t in &tools {
        let name = t["name"].as_str().expect("name").to_lowercase();
        for word in FORBIDDEN {
            assert!(!name.contains(word), "no tool may offer {word:?}: {name}");
        }
    }
}

#[tokio::test]
async fn x402_fetch_pays_within_budget_settles_and_the_budget_shows_it() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("0.5"), "1", FUND).await;
    let payee = fresh_address();
    let mut s = session(peers, &stack, &["mcp", "--session", payer.session_arg()]);

    // Inspect pays nothing and tells what would be paid.
    let inspected =
        s.call_tool("x402_inspect", &json!({"url": peers.url("/v2/paid", &payee, PRICE)}));
    assert!(!is_error(&inspected), "{inspected}");
    assert!(seen(&inspected).contains("0.01"), "{inspected}");
    assert_eq!(peers.balance(&payee), 0);

    let paid = s.call_tool("x402_fetch", &json!({"url": peers.url("/v2/paid", &payee, PRICE)}));
    assert!(!is_error(&paid), "{paid}");
    assert!(seen(&paid).contains("v2/paid"), "the body is returned: {paid}");
    assert!(seen(&paid).contains("200"), "the status is returned: {paid}");
    assert_eq!(peers.balance(&payee), PRICE, "settled on chain");
    assert_eq!(peers.balance(&payer.address), FUND - PRICE);

    // A POST with a body, v1.
    let payee_v1 = fresh_address();
    let posted = s.call_tool(
        "x402_fetch",
        &json!({"url": peers.url("/v1/echo", &payee_v1, PRICE), "method": "POST",
                "headers": {"content-type": "text/plain"}, "body": "from the agent"}),
    );
    assert!(!is_error(&posted), "{posted}");
    assert!(
        seen(&posted).contains("from the agent"),
        "the body went with the paid retry: {posted}"
    );
    assert_eq!(peers.balance(&payee_v1), PRICE);

    let budget = s.call_tool("get_budget", &json!({}));
    assert!(!is_error(&budget), "{budget}");
    let b = seen(&budget);
    assert!(b.contains("0.02"), "spent 0.02 of the session's 1: {budget}");
    assert!(b.contains("0.98"), "0.98 left: {budget}");
    assert!(b.contains("0.5"), "the per-payment limit: {budget}");

    let payments = s.call_tool("list_payments", &json!({}));
    assert!(!is_error(&payments), "{payments}");
    let p = seen(&payments).to_lowercase();
    assert!(p.contains(&payee.to_lowercase()), "the payment is listed: {payments}");
    assert_eq!(stack.spent(&payer.session_id).await, "0.02");
}

#[tokio::test]
async fn a_payment_above_the_per_payment_limit_is_refused_and_nothing_moves() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("0.01"), "1", FUND).await;
    let payee = fresh_address();
    let mut s = session(peers, &stack, &["mcp", "--session", payer.session_arg()]);
    let refused = s.call_tool("x402_fetch", &json!({"url": peers.url("/v2/paid", &payee, 20_000)}));
    assert!(seen(&refused).contains("PER_TX_LIMIT"), "the reason is named: {refused}");
    assert!(!seen(&refused).contains("v2/paid\""), "no paid body: {refused}");

    // maxAmount below the price: refused before anything is signed.
    let capped = s.call(
        &json!({"op": "callTool", "name": "x402_fetch",
                "arguments": {"url": peers.url("/v2/paid", &payee, PRICE), "maxAmount": "0.005"}}),
        RUN_TIMEOUT,
    );
    assert!(
        capped["ok"] == false || is_error(&capped["result"]),
        "over maxAmount must not pay: {capped}"
    );
    assert_eq!(peers.balance(&payer.address), FUND, "nothing moved");
    assert_eq!(peers.balance(&payee), 0);
    assert_eq!(stack.spent(&payer.session_id).await, "0");
    assert!(peers.facilitator_calls(&payee).is_empty(), "no payment was sent");
}

#[tokio::test]
async fn a_held_payment_names_its_hold_and_the_retry_after_approval_pays() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let policy = "version = 1\n[wallet]\nmax_per_payment = \"0.10\"\n[approval]\nabove = \"0.005\"\n[[rule]]\nnetworks = [\"eip155:84532\"]\naction = \"allow\"\n";
    let payer = peers.payer(&stack, PayerPolicy::Document(policy), "1", FUND).await;
    let payee = fresh_address();
    let url = peers.url("/v2/paid", &payee, PRICE);
    let mut s = session(peers, &stack, &["mcp", "--session", payer.session_arg()]);

    let held = s.call_tool("x402_fetch", &json!({"url": url}));
    let text = seen(&held);
    let id = hold_id(&text).unwrap_or_else(|| panic!("the result names the hold: {held}"));
    assert!(text.to_lowercase().contains("approv"), "it says approval is needed: {held}");
    assert_eq!(peers.balance(&payee), 0, "nothing paid while held");

    // The result gives the agent what it needs to retry the same payment once approved.
    let key =
        find_strings(&held, "idempotencyKey").first().map(|k| (*k).to_owned()).unwrap_or_else(
            || panic!("the held result carries the idempotency key to retry with: {held}"),
        );

    ok(&stack.walletctl(&["approvals", "approve", &id, "--note", "e2e"], ""));
    let paid = s.call_tool("x402_fetch", &json!({"url": url, "idempotencyKey": key}));
    assert!(!is_error(&paid), "the retry after approval pays: {paid}");
    assert!(seen(&paid).contains("v2/paid"), "{paid}");
    assert_eq!(peers.balance(&payee), PRICE, "settled on chain");
    assert_eq!(peers.balance(&payer.address), FUND - PRICE);
}

// ---------------------------------------------------------------------------------------------
// The paying proxy in front of a paid MCP server (issue 10, item 3).

fn assert_paid_tool_result(peers: &Peers, result: &Value, payer: &str, payee: &str, amount: u128) {
    assert!(!is_error(result), "the paid call succeeded: {result}");
    assert_eq!(result["content"][0]["text"], "echo: hi", "the tool's own content: {result}");
    let settle = &result["_meta"]["x402/payment-response"];
    assert_eq!(settle["success"], true, "the settlement is returned in _meta: {result}");
    let tx = settle["transaction"].as_str().expect("transaction");
    peers.assert_settled(tx, payer, payee, amount);
}

#[tokio::test]
async fn the_proxy_pays_a_paid_mcp_tool_using_the_x402_binding() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "1", FUND).await;
    let payee = fresh_address();
    let upstream = peers.mcp_url_for(&payee, PRICE);
    let mut s =
        session(peers, &stack, &["mcp", "--session", payer.session_arg(), "--upstream", &upstream]);

    let listed = s.call(&json!({"op": "listTools"}), RUN_TIMEOUT);
    assert_eq!(listed["ok"], true, "{listed}");
    let tools = listed["result"]["tools"].as_array().expect("tools").clone();
    tool(&tools, "paid_echo");
    tool(&tools, "free_echo");

    let free = s.call_tool("free_echo", &json!({"text": "a"}));
    assert_eq!(free["content"][0]["text"], "echo: a", "{free}");
    assert_eq!(peers.balance(&payer.address), FUND, "a free tool costs nothing");

    let paid = s.call_tool("paid_echo", &json!({"text": "hi"}));
    assert_paid_tool_result(peers, &paid, &payer.address, &payee, PRICE);
    assert_eq!(peers.balance(&payee), PRICE);
    assert_eq!(peers.balance(&payer.address), FUND - PRICE);
    assert_eq!(stack.spent(&payer.session_id).await, "0.01");
}

#[tokio::test]
async fn the_proxy_pays_tools_that_ask_with_a_json_rpc_payment_error() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("1"), "1", FUND).await;
    let payee = fresh_address();
    let upstream = peers.mcp_url_for(&payee, PRICE);
    let mut s =
        session(peers, &stack, &["mcp", "--session", payer.session_arg(), "--upstream", &upstream]);
    let variants = ["paid_echo_rpc402", "paid_echo_rpc32042", "paid_echo_rpc32042_nested"];
    for (i, name) in variants.iter().enumerate() {
        let paid = s.call_tool(name, &json!({"text": "hi"}));
        assert_paid_tool_result(peers, &paid, &payer.address, &payee, PRICE);
        let n = u128::try_from(i + 1).expect("small");
        assert_eq!(peers.balance(&payee), n * PRICE, "{name}");
    }
    assert_eq!(peers.balance(&payer.address), FUND - 3 * PRICE);
}

#[tokio::test]
async fn the_proxy_refuses_a_paid_tool_above_the_limit_and_nothing_moves() {
    let Some(peers) = Peers::shared() else { return };
    let stack = Stack::start();
    let payer = peers.payer(&stack, PayerPolicy::MaxPerPayment("0.01"), "1", FUND).await;
    let payee = fresh_address();
    let upstream = peers.mcp_url_for(&payee, 20_000);
    let mut s =
        session(peers, &stack, &["mcp", "--session", payer.session_arg(), "--upstream", &upstream]);
    for name in ["paid_echo", "paid_echo_rpc402"] {
        let r = s.call(
            &json!({"op": "callTool", "name": name, "arguments": {"text": "hi"}}),
            RUN_TIMEOUT,
        );
        assert!(r["ok"] == false || is_error(&r["result"]), "{name} must not be paid: {r}");
        assert!(r.to_string().contains("PER_TX_LIMIT"), "the reason is named: {r}");
    }
    assert_eq!(peers.balance(&payer.address), FUND, "nothing moved");
    assert_eq!(peers.balance(&payee), 0);
    let calls = peers.facilitator_calls(&payee);
    assert!(calls.is_empty(), "no payment reached the facilitator: {calls:?}");
}
