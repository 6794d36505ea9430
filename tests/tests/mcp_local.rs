//! `walletctl mcp` with the real binaries: an MCP client (rmcp) runs `walletctl mcp` over stdio
//! against a simulated enclave and its gateway, and reads the tool list and annotations, the
//! session's budget and history (answered by the enclave); it pays a paid HTTP API with
//! `x402_fetch`, and, through `--upstream`, a paid MCP server (in the test, speaking the official
//! x402 MCP binding over streamable HTTP) — allowed, held then approved, over the client-side
//! guard, and denied by the session cap.
//!
//! The official MCP TypeScript SDK client and real x402 servers drive it in `e2e_mcp.rs`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ErrorData, ListToolsResult,
        MetaObject, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    },
    service::{RequestContext, RunningService},
    transport::{
        streamable_http_server::session::local::LocalSessionManager, StreamableHttpServerConfig,
        StreamableHttpService, TokioChildProcess,
    },
    RoleClient, RoleServer, ServerHandler, ServiceExt as _,
};
use serde_json::{json, Value};
use wallet_e2e::{bin, header_json, recover_payer, Stack, PAYEE, USDC_BASE_SEPOLIA};
use wallet_proto::{gateway::v1 as gw, AdminRpc};

/// Per payment at most 0.10; payments above 0.05 wait for a human's approval.
const POLICY: &str = r#"
version = 1
[wallet]
max_per_payment = "0.10"
[approval]
above = "0.05"
[[rule]]
name = "testnet"
networks = ["eip155:84532"]
action = "allow"
"#;

/// A stack, a wallet with [`POLICY`], and a session credential (cap 0.1 USDC) on disk.
async fn setup() -> (Stack, gw::Wallet, PathBuf, String) {
    let stack = Stack::start();
    let w = stack.wallet("0.10").await;
    stack.set_document(&w, POLICY).await;
    let cred = stack
        .session(&w, "0.1", gw::IssueSessionRequest::default())
        .await
        .with_enclave_id(&hex::encode(&stack.enclave_id));
    let path = stack.dir.path().join("agent.json");
    cred.write(&path).expect("write credential");
    let session = cred.session_id.clone();
    (stack, w, path, session)
}

/// `walletctl mcp --session FILE ARGS` as an MCP server over stdio.
async fn mcp(stack: &Stack, session: &Path, args: &[&str]) -> RunningService<RoleClient, ()> {
    let mut cmd = tokio::process::Command::new(bin("walletctl"));
    cmd.arg("mcp")
        .arg("--session")
        .arg(session)
        .args(args)
        .env("WALLET_GATEWAY", &stack.url)
        .env("WALLETCTL_HOME", stack.dir.path().join("home"))
        .env_remove("WALLET_SESSION");
    ().serve(TokioChildProcess::new(cmd).expect("spawn walletctl mcp"))
        .await
        .expect("MCP handshake with walletctl mcp")
}

/// [`mcp`], with what it writes on stderr collected (and passed on to the test's stderr).
async fn mcp_logged(
    stack: &Stack,
    session: &Path,
    args: &[&str],
) -> (RunningService<RoleClient, ()>, Arc<Mutex<String>>) {
    use tokio::io::AsyncBufReadExt as _;
    let mut cmd = tokio::process::Command::new(bin("walletctl"));
    cmd.arg("mcp")
        .arg("--session")
        .arg(session)
        .args(args)
        .env("WALLET_GATEWAY", &stack.url)
        .env("WALLETCTL_HOME", stack.dir.path().join("home"))
        .env_remove("WALLET_SESSION");
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn walletctl mcp");
    let log = Arc::new(Mutex::new(String::new()));
    if let Some(stderr) = stderr {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[walletctl mcp] {line}");
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let client = ().serve(transport).await.expect("MCP handshake with walletctl mcp");
    (client, log)
}

/// Waits (a few seconds at most) until `log` contains `needle`.
async fn wait_for(log: &Mutex<String>, needle: &str) -> String {
    for _ in 0..100 {
        if log.lock().unwrap().contains(needle) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    log.lock().unwrap().clone()
}

async fn call(client: &RunningService<RoleClient, ()>, tool: &str, args: Value) -> CallToolResult {
    let mut p = CallToolRequestParams::new(tool.to_owned());
    p.arguments = args.as_object().cloned();
    client.peer().call_tool(p).await.unwrap_or_else(|e| panic!("{tool}: {e}"))
}

fn structured(r: &CallToolResult) -> Value {
    r.structured_content.clone().unwrap_or_else(|| panic!("no structuredContent: {r:?}"))
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

fn amount(v: &Value) -> f64 {
    v.as_str().unwrap_or_else(|| panic!("not an amount: {v}")).parse().expect("decimal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_tools_over_stdio_read_the_enclave() {
    let (stack, w, path, session) = setup().await;
    let client = mcp(&stack, &path, &[]).await;

    let info = client.peer().peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("walletctl-mcp"));
    let instructions = info.instructions.clone().unwrap_or_default();
    assert!(instructions.contains(&session), "{instructions}");

    let tools = client.peer().list_all_tools().await.expect("tools/list");
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["x402_fetch", "x402_inspect", "get_budget", "list_payments"]);
    let hints = |n: &str| {
        let a = tools.iter().find(|t| t.name == n).unwrap().annotations.clone().unwrap();
        (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint)
    };
    assert_eq!(hints("x402_fetch"), (Some(false), Some(true), Some(false), Some(true)));
    assert_eq!(hints("x402_inspect"), (Some(true), Some(false), Some(true), Some(true)));
    assert_eq!(hints("get_budget"), (Some(true), Some(false), Some(true), Some(false)));
    assert_eq!(hints("list_payments"), (Some(true), Some(false), Some(true), Some(false)));
    let fetch = tools.iter().find(|t| t.name == "x402_fetch").unwrap();
    let props: Vec<_> =
        fetch.input_schema["properties"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(props, ["url", "method", "headers", "body", "maxAmount", "idempotencyKey"]);
    // No tool changes a limit, approves a hold or exports anything.
    for t in &tools {
        for word in ["approve", "limit", "export", "set_", "transfer"] {
            assert!(!t.name.contains(word), "{}", t.name);
        }
    }

    let r = call(&client, "get_budget", json!({})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let b = structured(&r);
    assert_eq!(
        (b["sessionId"].as_str(), b["walletAddress"].as_str()),
        (Some(session.as_str()), Some(w.address.as_str()))
    );
    assert_eq!(
        (amount(&b["sessionCap"]), amount(&b["sessionSpent"]), amount(&b["sessionLeft"])),
        (0.1, 0.0, 0.1)
    );
    assert_eq!(amount(&b["maxPerPayment"]), 0.1);
    assert_eq!(amount(&b["approvalAbove"]), 0.05);
    assert!(b["expiresInSeconds"].as_u64().unwrap() > 3000, "{b}");
    assert!(b["expiresAt"].as_str().unwrap().ends_with('Z'), "{b}");
    let t = text(&r);
    assert!(t.contains("Session cap: 0.1; spent 0, left 0.1"), "{t}");
    assert!(t.contains("Payments above 0.05 are held"), "{t}");

    let r = call(&client, "list_payments", json!({"limit": 5})).await;
    let l = structured(&r);
    assert_eq!((l["count"].as_u64(), l["payments"].as_array().map(Vec::len)), (Some(0), Some(0)));
    assert!(text(&r).contains("No payments"), "{}", text(&r));

    // Bad input is a tool error the model reads, not a protocol error.
    let r = call(&client, "x402_fetch", json!({"method": "GET"})).await;
    assert_eq!(r.is_error, Some(true));
    assert_eq!(structured(&r)["error"]["code"], "INVALID_ARGUMENTS");
    let r = call(&client, "list_payments", json!({"limit": 0})).await;
    assert_eq!(r.is_error, Some(true));
    client.cancel().await.expect("close");
}

/// A paid HTTP API: `GET /data` costs 0.01 USDC (x402 v2 headers); the payment must be signed
/// by `payer`.
async fn paid_api(payer: String) -> String {
    use axum::{
        http::{HeaderMap, StatusCode},
        response::IntoResponse as _,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/data", listener.local_addr().unwrap());
    let required = header_json(&format!(
        r#"{{"x402Version":2,"error":"Payment required","resource":{{"url":"{url}","description":"premium data","mimeType":"text/plain"}},"accepts":[{{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"{USDC_BASE_SEPOLIA}","payTo":"{PAYEE}","maxTimeoutSeconds":60,"extra":{{"name":"USDC","version":"2"}}}}]}}"#
    ));
    let app = axum::Router::new().route(
        "/data",
        axum::routing::get(move |headers: HeaderMap| {
            let (required, payer) = (required.clone(), payer.clone());
            async move {
                match headers.get("payment-signature").and_then(|v| v.to_str().ok()) {
                    None => (StatusCode::PAYMENT_REQUIRED, [("payment-required", required)], "{}".to_owned())
                        .into_response(),
                    Some(sig) if recover_payer(sig).eq_ignore_ascii_case(&payer) => {
                        let settled = STANDARD.encode(
                            json!({"success": true, "transaction": "0xabc1", "network": "eip155:84532", "payer": payer})
                                .to_string(),
                        );
                        (StatusCode::OK, [("payment-response", settled)], "premium data".to_owned())
                            .into_response()
                    }
                    Some(_) => (StatusCode::PAYMENT_REQUIRED, [("payment-required", required)], "{}".to_owned())
                        .into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x402_fetch_pays_an_http_api_within_policy() {
    let (stack, w, path, _) = setup().await;
    let url = paid_api(w.address.clone()).await;
    let client = mcp(&stack, &path, &[]).await;

    let r = call(&client, "x402_inspect", json!({"url": url})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let i = structured(&r);
    assert_eq!((i["status"].as_u64(), i["x402Version"].as_u64()), (Some(402), Some(2)), "{i}");
    assert_eq!(i["accepts"][0]["payTo"], PAYEE, "the server's options verbatim");
    assert!(text(&r).contains("Nothing was paid"), "{}", text(&r));

    let r = call(&client, "x402_fetch", json!({"url": url, "maxAmount": "0.001"})).await;
    assert_eq!(r.is_error, Some(true));
    assert_eq!(structured(&r)["error"]["code"], "OVER_MAX_AMOUNT", "{r:?}");

    let r = call(&client, "x402_fetch", json!({"url": url, "maxAmount": "0.05 USDC"})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let f = structured(&r);
    assert_eq!(
        (f["outcome"].as_str(), f["status"].as_u64(), f["body"].as_str()),
        (Some("paid"), Some(200), Some("premium data"))
    );
    let p = &f["payment"];
    assert_eq!(
        (p["charged"].as_str(), p["assetSymbol"].as_str(), p["network"].as_str()),
        (Some("0.01"), Some("USDC"), Some("eip155:84532"))
    );
    assert_eq!((p["payTo"].as_str(), p["transaction"].as_str()), (Some(PAYEE), Some("0xabc1")));
    assert!(text(&r).starts_with("HTTP 200. Paid 0.01 USDC"), "{}", text(&r));

    let r = call(&client, "get_budget", json!({})).await;
    assert_eq!(amount(&structured(&r)["sessionSpent"]), 0.01);
    let r = call(&client, "list_payments", json!({})).await;
    let l = structured(&r);
    assert_eq!(l["payments"][0]["outcome"], "paid", "{l}");
    assert_eq!(l["payments"][0]["payTo"], PAYEE);
    assert_eq!(l["count"], 1, "the refusal over maxAmount never reached the enclave: {l}");
    client.cancel().await.expect("close");
}

/// A paid MCP server using the official x402 MCP binding: each tool costs its price in Base
/// Sepolia USDC; a paid call must carry `_meta["x402/payment"]` as an object signed by `payer`.
#[derive(Debug, Clone)]
struct PaidTools {
    payer: String,
    prices: HashMap<&'static str, &'static str>,
    /// The tools that were paid (after the payment was checked).
    paid: Arc<Mutex<Vec<String>>>,
}

impl PaidTools {
    fn requirement(&self, tool: &str, error: &str) -> Value {
        json!({
            "x402Version": 2,
            "error": error,
            "resource": {"url": format!("mcp://tool/{tool}"), "description": tool, "mimeType": "application/json"},
            "accepts": [{
                "scheme": "exact", "network": "eip155:84532", "amount": self.prices[tool],
                "asset": USDC_BASE_SEPOLIA, "payTo": PAYEE, "maxTimeoutSeconds": 60,
                "extra": {"name": "USDC", "version": "2"}
            }]
        })
    }

    fn check(&self, tool: &str, payment: &Value) -> Result<(), String> {
        let required = self.requirement(tool, "");
        if !payment.is_object() {
            return Err("x402/payment is not an object".into());
        }
        if payment["accepted"] != required["accepts"][0] {
            return Err("accepted is not the option offered".into());
        }
        if payment["resource"] != required["resource"] {
            return Err("resource is not echoed".into());
        }
        if payment["payload"]["authorization"]["value"] != required["accepts"][0]["amount"] {
            return Err("wrong amount".into());
        }
        let signer = recover_payer(&STANDARD.encode(payment.to_string()));
        if !signer.eq_ignore_ascii_case(&self.payer) {
            return Err(format!("signed by {signer}, not the wallet"));
        }
        Ok(())
    }
}

impl ServerHandler for PaidTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema =
            Arc::new(json!({"type": "object", "properties": {}}).as_object().cloned().unwrap());
        let mut names: Vec<_> = self.prices.keys().copied().collect();
        names.sort_unstable();
        Ok(ListToolsResult::with_all_items(
            names
                .into_iter()
                .map(|n| Tool::new(n, format!("paid tool {n}"), schema.clone()))
                .collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tool = request.name.to_string();
        if !self.prices.contains_key(tool.as_str()) {
            return Err(ErrorData::invalid_params(format!("no tool {tool}"), None));
        }
        let Some(payment) = context.meta.get("x402/payment") else {
            let pr = self.requirement(&tool, "Payment required to access this resource");
            return Ok(CallToolResult::structured_error(pr).into());
        };
        if let Err(why) = self.check(&tool, payment) {
            return Ok(CallToolResult::structured_error(self.requirement(&tool, &why)).into());
        }
        self.paid.lock().unwrap().push(tool.clone());
        let mut r = CallToolResult::structured(json!({"tool": tool, "answer": 42}));
        let mut meta = MetaObject::new();
        meta.insert(
            "x402/payment-response".into(),
            json!({"success": true, "transaction": format!("0x{:064x}", self.paid.lock().unwrap().len()), "network": "eip155:84532", "payer": self.payer}),
        );
        r.meta = Some(meta);
        Ok(r.into())
    }
}

async fn paid_mcp_server(tools: PaidTools) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_pays_a_paid_mcp_tool_through_the_enclave() {
    let (stack, w, path, _) = setup().await;
    let paid = Arc::new(Mutex::new(Vec::new()));
    let upstream = paid_mcp_server(PaidTools {
        payer: w.address.clone(),
        // weather 0.01; report 0.06 (above the approval threshold); premium 0.08 (over the
        // proxy's --max-amount 0.07); snack 0.04 (over what the session cap leaves by then);
        // get_budget 0.01, named like the wallet's own tool.
        prices: HashMap::from([
            ("get_budget", "10000"),
            ("weather", "10000"),
            ("report", "60000"),
            ("premium", "80000"),
            ("snack", "40000"),
        ]),
        paid: paid.clone(),
    })
    .await;
    let (client, log) =
        mcp_logged(&stack, &path, &["--upstream", &upstream, "--max-amount", "0.07"]).await;

    let tools = client.peer().list_all_tools().await.expect("tools/list");
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    // The upstream's paid get_budget cannot take the wallet's over: it is renamed, and the
    // operator is told on stderr (stdout is the MCP channel).
    assert_eq!(
        names,
        [
            "upstream_get_budget",
            "premium",
            "report",
            "snack",
            "weather",
            "x402_fetch",
            "x402_inspect",
            "get_budget",
            "list_payments"
        ]
    );
    let said = wait_for(&log, "upstream_get_budget").await;
    assert!(
        said.contains("lists a tool named \"get_budget\"") && said.contains("upstream_get_budget"),
        "{said}"
    );
    let renamed = tools.iter().find(|t| t.name == "upstream_get_budget").unwrap();
    assert!(renamed.description.as_deref().unwrap().contains("NOT the wallet's"), "{renamed:?}");

    // Paid within policy: the tool's result, the settlement kept in _meta, the payment told.
    let r = call(&client, "weather", json!({})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert_eq!(structured(&r)["answer"], 42);
    let meta = r.meta.clone().expect("_meta");
    assert!(meta["x402/payment-response"]["success"].as_bool().unwrap());
    let p = &meta["walletctl/payment"];
    assert_eq!((p["charged"].as_str(), p["payTo"].as_str()), (Some("0.01"), Some(PAYEE)));
    assert_eq!(p["transaction"], meta["x402/payment-response"]["transaction"]);
    assert!(text(&r).contains("[x402] paid 0.01 USDC"), "{}", text(&r));
    assert_eq!(*paid.lock().unwrap(), ["weather"]);

    // Held for approval: said so, with the hold id; nothing paid until a human approves.
    let r = call(&client, "report", json!({})).await;
    assert_eq!(r.is_error, Some(true));
    let held = structured(&r);
    assert_eq!(held["outcome"], "held", "{held}");
    let hold = held["holdId"].as_str().unwrap().to_owned();
    assert!(hold.starts_with("ap_"), "{held}");
    assert!(text(&r).contains(&hold), "{}", text(&r));
    assert_eq!(paid.lock().unwrap().len(), 1);
    stack
        .client()
        .await
        .decide_approval(stack.signed(
            AdminRpc::DecideApproval,
            gw::DecideApprovalRequest {
                approval_id: hold.clone(),
                approve: true,
                note: String::new(),
                auth: None,
            },
        ))
        .await
        .expect("approve");
    // The same call again: the approved payment (same idempotency key) is used, once.
    let r = call(&client, "report", json!({})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert_eq!(
        r.meta.clone().unwrap()["walletctl/payment"]["idempotencyKey"],
        held["idempotencyKey"]
    );
    assert_eq!(*paid.lock().unwrap(), ["weather", "report"]);

    // Over the operator's --max-amount: refused before signing.
    let r = call(&client, "premium", json!({})).await;
    assert_eq!(r.is_error, Some(true));
    assert_eq!(structured(&r)["error"]["code"], "OVER_MAX_AMOUNT", "{r:?}");

    // Over what the session cap leaves (0.1 - 0.07): denied by the enclave, reason readable.
    let r = call(&client, "snack", json!({})).await;
    assert_eq!(r.is_error, Some(true));
    let s = structured(&r);
    assert_eq!(
        (s["outcome"].as_str(), s["error"]["code"].as_str()),
        (Some("denied"), Some("SESSION_CAP")),
        "{s}"
    );
    assert!(text(&r).starts_with("SESSION_CAP: "), "{}", text(&r));
    assert_eq!(paid.lock().unwrap().len(), 2, "nothing more was paid");

    let r = call(&client, "get_budget", json!({})).await;
    let b = structured(&r);
    assert!((amount(&b["sessionSpent"]) - 0.07).abs() < 1e-9, "{b}");
    let r = call(&client, "list_payments", json!({"limit": 10})).await;
    let outcomes: Vec<_> = structured(&r)["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["outcome"].as_str().unwrap().to_owned(),
                p["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(outcomes[0], ("denied".to_owned(), "SESSION_CAP".to_owned()), "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|(o, _)| o == "paid").count(), 2, "{outcomes:?}");
    client.cancel().await.expect("close");
}

/// The status of one raw HTTP/1.1 MCP `initialize` POST to `url`, with `auth` if given.
async fn initialize_status(url: &str, auth: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let mut req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.expect("status line");
    std::str::from_utf8(&head[9..12]).expect("status").parse().expect("a status code")
}

/// `--http` without a token: one is generated, printed once on stderr, and required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_a_token_generates_and_requires_one() {
    use tokio::io::AsyncBufReadExt as _;
    let (stack, _w, path, _) = setup().await;
    let mut child = tokio::process::Command::new(bin("walletctl"))
        .arg("mcp")
        .arg("--session")
        .arg(&path)
        .args(["--http", "127.0.0.1:0"])
        .env("WALLET_GATEWAY", &stack.url)
        .env("WALLETCTL_HOME", stack.dir.path().join("home"))
        .env_remove("WALLET_SESSION")
        .env_remove("WALLET_MCP_HTTP_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn walletctl mcp --http");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut url, mut token) = (None, None);
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[walletctl mcp] {line}");
            if let Some((_, u)) = line.split_once("(streamable HTTP) at ") {
                url = Some(u.split_whitespace().next().unwrap().to_owned());
            }
            let t = line.trim();
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                token = Some(t.to_owned());
            }
            if url.is_some() && token.is_some() {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read).await.expect("serving");
    let (url, token) = (url.expect("the URL"), token.expect("the generated token"));
    assert_eq!(initialize_status(&url, None).await, 401, "no token: refused");
    assert_eq!(initialize_status(&url, Some("guess")).await, 401, "wrong token: refused");
    assert_eq!(initialize_status(&url, Some(&token)).await, 200, "the generated token");
    child.kill().await.expect("stop");
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stdout.take().unwrap(), &mut out)
        .await
        .expect("stdout");
    assert!(out.is_empty(), "nothing on stdout: {out}");
}
