//! `walletctl mcp --http`: the server over streamable HTTP, with rmcp's client: the tools answer;
//! a bearer token, when set, is required; a browser's request (with an `Origin`) is refused.

use std::net::SocketAddr;

use rmcp::{
    model::CallToolRequestParams,
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
    ServiceExt as _,
};
use serde_json::{json, Value};
use wallet_mcp::{
    http::{router, MCP_PATH},
    proxy::client_config,
    wallet::{Fetched, HttpCall, Signed},
    HttpOptions, HttpServer, McpServer, Options, Wallet, WalletError,
};

#[derive(Debug)]
struct BudgetOnly;

impl Wallet for BudgetOnly {
    async fn fetch(&self, _c: HttpCall) -> Result<Fetched, WalletError> {
        Err(WalletError::other("no HTTP here"))
    }
    async fn inspect(&self, _c: HttpCall) -> Result<Value, WalletError> {
        Err(WalletError::other("no HTTP here"))
    }
    async fn sign(&self, _p: &Value, _m: Option<&str>, _k: &str) -> Result<Signed, WalletError> {
        Err(WalletError::other("no signing here"))
    }
    async fn budget(&self) -> Result<Value, WalletError> {
        Ok(json!({"sessionLeft": "0.04"}))
    }
    async fn payments(&self, _limit: u32) -> Result<Value, WalletError> {
        Ok(json!({"payments": []}))
    }
    fn describe(&self) -> String {
        "session s_http".into()
    }
}

async fn serve(token: Option<&str>) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let options = HttpOptions { allow_non_loopback: false, token: token.map(str::to_owned) };
    let (app, _stop) = router(McpServer::new(BudgetOnly, Options::default()), &addr, &options);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}{MCP_PATH}")
}

async fn connect(
    url: &str,
    token: Option<&str>,
) -> Result<rmcp::service::RunningService<rmcp::RoleClient, rmcp::model::ClientConfig>, String> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    if let Some(t) = token {
        config = config.auth_header(t);
    }
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    client_config().serve(transport).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn tools_answer_over_streamable_http() {
    let url = serve(None).await;
    let client = connect(&url, None).await.expect("connects");
    let tools = client.peer().list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 4);
    let r = client.peer().call_tool(CallToolRequestParams::new("get_budget")).await.unwrap();
    assert_eq!(r.structured_content.unwrap()["sessionLeft"], "0.04");
}

#[tokio::test]
async fn a_token_is_required_when_set() {
    let url = serve(Some("s3cret")).await;
    assert!(connect(&url, None).await.is_err(), "no token");
    assert!(connect(&url, Some("wrong")).await.is_err(), "wrong token");
    let client = connect(&url, Some("s3cret")).await.expect("the right token");
    assert_eq!(client.peer().list_all_tools().await.unwrap().len(), 4);
    let raw = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
}

#[tokio::test]
async fn browser_requests_are_refused() {
    let url = serve(None).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "page", "version": "1"}}});
    let send = |origin: Option<&'static str>| {
        let mut req = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(init.to_string());
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let from_page = send(Some("https://evil.example")).await.unwrap();
    assert_eq!(from_page.status(), 403, "a web page cannot drive the wallet");
    let from_tool = send(None).await.unwrap();
    assert!(from_tool.status().is_success(), "{}", from_tool.status());
}

/// Finding: `--http` without `--http-token` served the spending tools to anyone on the host.
#[tokio::test]
async fn without_a_token_one_is_generated_and_required() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = McpServer::new(BudgetOnly, Options::default());
    let bound = HttpServer::bind(server, "127.0.0.1:0".parse().unwrap(), HttpOptions::default())
        .await
        .expect("binds");
    let token = bound.token().to_owned();
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let url = format!("http://{}{MCP_PATH}", bound.local_addr());
    tokio::spawn(bound.serve());
    assert!(connect(&url, None).await.is_err(), "no token: refused");
    assert!(connect(&url, Some("guess")).await.is_err(), "wrong token: refused");
    let client = connect(&url, Some(&token)).await.expect("the generated token");
    assert_eq!(client.peer().list_all_tools().await.unwrap().len(), 4);
}

#[tokio::test]
async fn non_loopback_needs_an_explicit_token() {
    let server = McpServer::new(BudgetOnly, Options::default());
    let open = HttpOptions { allow_non_loopback: true, token: None };
    let e = HttpServer::bind(server.clone(), "0.0.0.0:0".parse().unwrap(), open).await.unwrap_err();
    assert!(e.contains("explicit bearer token"), "{e}");
    let empty = HttpOptions { allow_non_loopback: false, token: Some(String::new()) };
    let e = HttpServer::bind(server, "127.0.0.1:0".parse().unwrap(), empty).await.unwrap_err();
    assert!(e.contains("empty"), "{e}");
}
