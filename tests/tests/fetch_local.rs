//! `walletctl fetch` (and the `wallet-agent` library under it) against the real enclave and
//! gateway, and a small x402 server in the test that checks every payment it is sent: the
//! enclave's signature, that the retry carries the same body, that a lost answer is retried
//! with the identical payment and charged once, that a refused payment is not paid again, that
//! a denial, a hold, `--max-amount` and `--dry-run` charge nothing (`--max-amount` prices what
//! the enclave charges, and needs a pinned enclave identity), that what the official decoder
//! accepts is paid, and that a redirect to another origin carries neither the payment, nor
//! secret headers, nor the body.
//!
//! The v1 test needs the enclave's x402 v1 support (a JSON `payment_required`); it fails until
//! that is in.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Output,
    sync::{Arc, Mutex},
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Bytes, service::service_fn, Request, Response};
use serde_json::{json, Value};
use wallet_e2e::{recover_payer, Stack, PAYEE, USDC_BASE_SEPOLIA};
use wallet_proto::gateway::v1 as gw;

// ---------------------------------------------------------------------------------------------
// The x402 server.

/// A request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    method: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Seen {
    fn payment(&self) -> Option<&str> {
        self.headers
            .get("payment-signature")
            .or_else(|| self.headers.get("x-payment"))
            .map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct ServerState {
    seen: Vec<Seen>,
    /// How many paid requests each path has dropped so far.
    dropped: HashMap<String, u32>,
}

/// An x402 server on 127.0.0.1 (its own origin, so two are two origins).
///
/// Routes (`amount` is a comma-separated list of atomic amounts: one `accepts[]` option each,
/// Base Sepolia USDC to [`PAYEE`]):
/// * `/v2/...?amount=A`: 402 with `PAYMENT-REQUIRED`; a valid `PAYMENT-SIGNATURE` gets 200,
///   `PAYMENT-RESPONSE` and the body `paid:` + the request body. `&drop=N`: the first N paid
///   requests are answered by closing the connection. `&refuse=1`: a paid request gets 402
///   again with a failed settlement. `&redirect=URL`: a paid request gets 307 to URL.
///   `&nopad=1`: the header's base64 without `=` padding. `&float=1`: `"x402Version": 2.0`.
/// * `/v1/...?amount=A`: the same in x402 v1 (402 JSON body, `X-PAYMENT`, `X-PAYMENT-RESPONSE`).
///   `&trick=1`: each option also shows `"amount": "1"` (v1 charges `maxAmountRequired`).
/// * `/free`: 200 `free`. `/landing`: 200 `landed`. `/to?url=URL`: 307 to URL.
#[derive(Debug, Clone)]
struct X402Server {
    base: String,
    state: Arc<Mutex<ServerState>>,
    payer: String,
}

impl X402Server {
    async fn start(payer: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let server =
            Self { base: format!("http://{addr}"), state: Arc::default(), payer: payer.to_owned() };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let s = s.clone();
                        async move { s.handle(req).await }
                    });
                    // An Err from the service (a dropped answer) closes the connection.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self, path_prefix: &str) -> Vec<Seen> {
        let st = self.state.lock().expect("lock");
        st.seen.iter().filter(|s| s.path.starts_with(path_prefix)).cloned().collect()
    }

    fn paid(&self, path_prefix: &str) -> Vec<Seen> {
        self.seen(path_prefix).into_iter().filter(|s| s.payment().is_some()).collect()
    }

    async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes().to_vec();
        let path = parts.uri.path().to_owned();
        let query: HashMap<String, String> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let headers: HashMap<String, String> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let seen = Seen { path: path.clone(), method: parts.method.to_string(), headers, body };
        self.state.lock().expect("lock").seen.push(seen.clone());
        let amounts: Vec<String> = query
            .get("amount")
            .map(|a| a.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let respond = |status: u16, headers: &[(&str, String)], body: Vec<u8>| {
            let mut r = Response::builder().status(status);
            for (k, v) in headers {
                r = r.header(*k, v);
            }
            Ok(r.body(Full::new(Bytes::from(body))).expect("response"))
        };
        if path == "/free" {
            return respond(200, &[], b"free".to_vec());
        }
        if path == "/landing" {
            return respond(200, &[], b"landed".to_vec());
        }
        if path == "/to" {
            return respond(307, &[("location", query["url"].clone())], Vec::new());
        }
        let v1 = path.starts_with("/v1/");
        let mut required = if v1 { v1_required(&amounts) } else { v2_required(&amounts) };
        if query.contains_key("trick") {
            for o in required["accepts"].as_array_mut().expect("accepts") {
                o["amount"] = json!("1");
            }
        }
        if query.contains_key("float") {
            required["x402Version"] = json!(2.0);
        }
        let encode = |v: &Value| {
            let b64 = STANDARD.encode(v.to_string());
            if query.contains_key("nopad") {
                b64.trim_end_matches('=').to_owned()
            } else {
                b64
            }
        };
        let Some(payment) = seen.payment() else {
            return if v1 {
                respond(
                    402,
                    &[("content-type", "application/json".into())],
                    required.to_string().into_bytes(),
                )
            } else {
                respond(
                    402,
                    &[
                        ("payment-required", encode(&required)),
                        ("content-type", "application/json".into()),
                    ],
                    b"{}".to_vec(),
                )
            };
        };
        // A paid request: check it is the enclave's payment for what was asked.
        if let Err(why) = self.check(v1, &seen, payment, &required) {
            return respond(400, &[], format!("bad payment: {why}").into_bytes());
        }
        let drops: u32 = query.get("drop").and_then(|d| d.parse().ok()).unwrap_or(0);
        {
            let mut st = self.state.lock().expect("lock");
            let n = st.dropped.entry(path.clone()).or_default();
            if *n < drops {
                *n += 1;
                return Err(std::io::Error::other("the answer is lost"));
            }
        }
        let (settle_header, network) = if v1 {
            ("x-payment-response", "base-sepolia")
        } else {
            ("payment-response", "eip155:84532")
        };
        if query.contains_key("refuse") {
            let failed = json!({"success": false, "errorReason": "insufficient_funds", "transaction": "", "network": network, "payer": self.payer});
            let mut again = required.clone();
            again["error"] = json!("invalid_exact_evm_payload_signature");
            return respond(
                402,
                &[
                    (settle_header, STANDARD.encode(failed.to_string())),
                    ("payment-required", STANDARD.encode(again.to_string())),
                ],
                b"{\"error\":\"refused\"}".to_vec(),
            );
        }
        let tx = format!("0x{}", "ab".repeat(32));
        let settled =
            json!({"success": true, "transaction": tx, "network": network, "payer": self.payer});
        let settle = (settle_header, STANDARD.encode(settled.to_string()));
        if let Some(to) = query.get("redirect") {
            return respond(307, &[("location", to.clone()), settle], Vec::new());
        }
        let mut out = b"paid:".to_vec();
        out.extend_from_slice(&seen.body);
        respond(200, &[settle, ("content-type", "application/octet-stream".into())], out)
    }

    /// Checks a payment header against what was asked: the version's shape, an option offered
    /// verbatim, the amount, the payee, and (v2) the signer recovered from the signature.
    fn check(&self, v1: bool, seen: &Seen, value: &str, required: &Value) -> Result<(), String> {
        let (want_header, other) = if v1 {
            ("x-payment", "payment-signature")
        } else {
            ("payment-signature", "x-payment")
        };
        if !seen.headers.contains_key(want_header) || seen.headers.contains_key(other) {
            return Err(format!("expected the {want_header} header only"));
        }
        let payload: Value = serde_json::from_slice(
            &STANDARD.decode(value).map_err(|e| format!("not standard base64: {e}"))?,
        )
        .map_err(|e| format!("not JSON: {e}"))?;
        let auth = &payload["payload"]["authorization"];
        if auth["from"] != self.payer.as_str() || auth["to"] != PAYEE {
            return Err(format!("wrong from/to: {auth}"));
        }
        if v1 {
            let offered = &required["accepts"][0];
            if payload["x402Version"] != 1
                || payload["scheme"] != "exact"
                || payload["network"] != "base-sepolia"
                || auth["value"] != offered["maxAmountRequired"]
            {
                return Err(format!("not the v1 payment asked for: {payload}"));
            }
            return Ok(());
        }
        if payload["x402Version"].as_f64() != Some(2.0)
            || payload["resource"] != required["resource"]
        {
            return Err(format!("not a v2 payload echoing the resource: {payload}"));
        }
        let accepts = required["accepts"].as_array().expect("accepts");
        if !accepts.contains(&payload["accepted"]) {
            return Err("accepted is not one of the offered options, verbatim".to_owned());
        }
        if auth["value"] != payload["accepted"]["amount"] {
            return Err("the authorization's value is not the option's amount".to_owned());
        }
        if recover_payer(value) != self.payer {
            return Err("not signed by the wallet".to_owned());
        }
        Ok(())
    }
}

const RESOURCE: &str = "https://api.example.com/premium-data";

fn v2_required(amounts: &[String]) -> Value {
    json!({
        "x402Version": 2,
        "error": "Payment required",
        "resource": {"url": RESOURCE, "description": "Access to premium market data", "mimeType": "application/json"},
        "accepts": amounts.iter().map(|a| json!({
            "scheme": "exact", "network": "eip155:84532", "amount": a, "asset": USDC_BASE_SEPOLIA,
            "payTo": PAYEE, "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}
        })).collect::<Vec<_>>(),
    })
}

fn v1_required(amounts: &[String]) -> Value {
    json!({
        "x402Version": 1,
        "error": "Payment required to access this resource",
        "accepts": amounts.iter().map(|a| json!({
            "scheme": "exact", "network": "base-sepolia", "maxAmountRequired": a,
            "asset": USDC_BASE_SEPOLIA, "payTo": PAYEE, "resource": RESOURCE,
            "description": "Access to premium market data", "mimeType": "application/json",
            "outputSchema": null, "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}
        })).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------------------------
// The wallet side.

/// A stack with one wallet (per-payment limit 0.10, or `document`) and one session (cap 1),
/// its credential written to a file, pinned to the enclave's identity.
struct Agent {
    stack: Stack,
    session: String,
    session_id: String,
    address: String,
}

async fn agent(document: Option<&str>) -> Agent {
    let stack = Stack::start();
    let wallet = stack.wallet("0.10").await;
    if let Some(d) = document {
        stack.set_document(&wallet, d).await;
    }
    let cred = stack
        .session(&wallet, "1", gw::IssueSessionRequest::default())
        .await
        .with_enclave_id(&hex::encode(&stack.enclave_id));
    let path = stack.dir.path().join("agent.json");
    cred.write(&path).expect("write credential");
    Agent {
        session: path.display().to_string(),
        session_id: cred.session_id.clone(),
        address: wallet.address.clone(),
        stack,
    }
}

impl Agent {
    /// `walletctl fetch --session FILE ARGS...` (blocking: the server runs on the runtime's
    /// worker threads).
    fn fetch(&self, args: &[&str]) -> Output {
        let mut all = vec!["fetch", "--session", self.session.as_str()];
        all.extend_from_slice(args);
        self.stack.walletctl(&all, "")
    }

    async fn spent(&self) -> String {
        self.stack.spent(&self.session_id).await
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(o)))
}

/// The word after `--idempotency-key ` in `s`.
fn idempotency_key_in(s: &str) -> String {
    s.split("--idempotency-key ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no idempotency key in {s:?}"))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pays_a_get_and_a_post_and_resends_the_same_body() {
    let a = agent(None).await;
    let srv = X402Server::start(&a.address).await;

    // GET, text output: the body on stdout, what was paid on stderr with -v.
    let o = a.fetch(&["-v", &srv.url("/v2/get?amount=10000")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(o.stdout, b"paid:", "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("paid 0.01 USDC") && err.contains(PAYEE), "{err}");
    assert!(err.contains(&format!("transaction 0x{}", "ab".repeat(32))), "{err}");
    let seen = srv.seen("/v2/get");
    assert_eq!(seen.len(), 2, "one unpaid request, one paid");
    assert!(seen[0].payment().is_none() && seen[1].payment().is_some());
    assert_eq!(a.spent().await, "0.01");

    // POST of a binary body from a file: the paid retry carries the same bytes and headers.
    let body: Vec<u8> = (0u8..=255).chain(*b"\r\n\0tail").collect();
    let file = a.stack.dir.path().join("body.bin");
    std::fs::write(&file, &body).unwrap();
    let o = a.fetch(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/octet-stream",
        "-H",
        "X-Trace: 7",
        "-d",
        &format!("@{}", file.display()),
        &srv.url("/v2/post?amount=10000"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut want = b"paid:".to_vec();
    want.extend_from_slice(&body);
    assert_eq!(o.stdout, want, "the body is echoed byte for byte (binary safe)");
    let seen = srv.seen("/v2/post");
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.body, body, "the same body on the first request and the paid retry");
        assert_eq!(s.headers["content-type"], "application/octet-stream");
        assert_eq!(s.headers["x-trace"], "7");
    }

    // --json, --output json: the settlement and payment details.
    let o =
        a.fetch(&["--json", "{\"q\":1}", "--output", "json", &srv.url("/v2/json?amount=20000")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = stdout_json(&o);
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], "paid:{\"q\":1}");
    let p = &v["payment"];
    assert_eq!(
        (p["x402_version"].clone(), p["amount"].clone(), p["charged"].clone()),
        (json!(2), json!("20000"), json!("0.02"))
    );
    assert_eq!(
        (p["asset_symbol"].as_str(), p["network"].as_str()),
        (Some("USDC"), Some("eip155:84532"))
    );
    assert_eq!(p["pay_to"], PAYEE);
    assert_eq!(p["payer"], a.address.as_str());
    assert_eq!(p["transaction"], format!("0x{}", "ab".repeat(32)));
    assert_eq!(p["settle_response"]["success"], true);
    let seen = srv.seen("/v2/json");
    assert!(seen
        .iter()
        .all(|s| s.body == b"{\"q\":1}" && s.headers["content-type"] == "application/json"));
    assert_eq!(a.spent().await, "0.04");

    // -i: the status line and headers first. A free URL pays nothing.
    let o = a.fetch(&["-i", &srv.url("/free")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("\r\n\r\nfree"), "{out}");
    assert_eq!(a.spent().await, "0.04");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pays_a_v1_402_with_x_payment() {
    let a = agent(None).await;
    let srv = X402Server::start(&a.address).await;
    let o = a.fetch(&["--output", "json", "-d", "v1 body", &srv.url("/v1/x?amount=10000")]);
    assert_eq!(o.status.code(), Some(0), "needs the enclave's v1 support: {}", text(&o));
    let v = stdout_json(&o);
    assert_eq!(v["body"], "paid:v1 body");
    assert_eq!(v["payment"]["x402_version"], 1);
    assert_eq!(v["payment"]["settle_response"]["network"], "base-sepolia");
    let paid = srv.paid("/v1/x");
    assert_eq!(paid.len(), 1);
    assert!(paid[0].headers.contains_key("x-payment"));
    assert!(srv.seen("/v1/x").iter().all(|s| s.body == b"v1 body"));
    assert_eq!(a.spent().await, "0.01");
}

/// What the official client's decoder (and the enclave) accepts is paid: a `PAYMENT-REQUIRED`
/// header without its `=` padding, and `"x402Version": 2.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpadded_headers_and_a_float_version_are_paid() {
    let a = agent(None).await;
    let srv = X402Server::start(&a.address).await;
    // Both unpadded requirements below would be padded: their JSON is not a multiple of 3.
    let plain = v2_required(&["10000".to_owned()]);
    let mut float = v2_required(&["9000".to_owned()]);
    float["x402Version"] = json!(2.0);
    for r in [plain, float] {
        assert!(STANDARD.encode(r.to_string()).ends_with('='), "the test needs padding: {r}");
    }
    for (path, want) in [
        ("/v2/nopad?amount=10000&nopad=1", "0.01"),
        ("/v2/float?amount=10000&float=1", "0.02"),
        ("/v2/both?amount=9000&float=1&nopad=1", "0.029"),
    ] {
        let o = a.fetch(&["--max-amount", "0.01", &srv.url(path)]);
        assert_eq!(o.status.code(), Some(0), "{path}: {}", text(&o));
        assert_eq!(o.stdout, b"paid:", "{path}");
        assert_eq!(a.spent().await, want, "{path}");
    }
    assert_eq!(srv.paid("/v2/both").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_retried_with_the_identical_payment_and_charged_once() {
    let a = agent(None).await;
    let srv = X402Server::start(&a.address).await;

    // The server drops the connection on the first paid request: sent again, same payment.
    let o = a.fetch(&["-d", "once", &srv.url("/v2/drop1?amount=10000&drop=1")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(o.stdout, b"paid:once");
    let paid = srv.paid("/v2/drop1");
    assert!(paid.len() >= 2, "the paid request was sent again: {}", paid.len());
    assert!(paid.iter().all(|s| s.payment() == paid[0].payment()), "the identical payment");
    assert!(paid.iter().all(|s| s.body == b"once"), "and the same body");
    assert_eq!(a.spent().await, "0.01", "charged once");

    // Every answer lost: exit 8 with the idempotency key; retrying with it later sends the
    // same payment again (the enclave replays it) and is not charged again.
    let o = a.fetch(&[&srv.url("/v2/dropall?amount=10000&drop=100")]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    let key = idempotency_key_in(&String::from_utf8_lossy(&o.stderr));
    let first = srv.paid("/v2/dropall");
    assert_eq!(first.len(), 3, "sent once and retried twice");
    assert!(first.iter().all(|s| s.payment() == first[0].payment()));
    assert_eq!(a.spent().await, "0.02");
    let o = a.fetch(&[
        "--idempotency-key",
        &key,
        "--output",
        "json",
        &srv.url("/v2/later?amount=10000"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout_json(&o)["payment"]["replayed"], true);
    assert_eq!(srv.paid("/v2/later")[0].payment(), first[0].payment(), "the same payment");
    assert_eq!(a.spent().await, "0.02", "not charged again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_payment_is_not_paid_again() {
    let a = agent(None).await;
    let srv = X402Server::start(&a.address).await;
    let o = a.fetch(&[&srv.url("/v2/refuse?amount=10000&refuse=1")]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refused") && err.contains("insufficient_funds"), "{err}");
    assert_eq!(o.stdout, b"{\"error\":\"refused\"}", "the 402's body, as curl shows it");
    assert_eq!(srv.paid("/v2/refuse").len(), 1, "one payment, never a second");
    assert_eq!(a.spent().await, "0.01");

    let o = a.fetch(&["--output", "json", &srv.url("/v2/refuse2?amount=10000&refuse=1")]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    let v = stdout_json(&o);
    assert_eq!((v["ok"].clone(), v["reason"].clone()), (json!(false), json!("SERVER_REFUSED")));
    assert_eq!(v["settle_response"]["errorReason"], "insufficient_funds");
    assert_eq!(srv.paid("/v2/refuse2").len(), 1);

    // With -i, as curl: the refusing 402's status line and headers before its body.
    let o = a.fetch(&["-i", &srv.url("/v2/refuse3?amount=10000&refuse=1")]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("HTTP/1.1 402 Payment Required\r\n"), "{out}");
    assert!(out.to_ascii_lowercase().contains("\r\npayment-required: "), "{out}");
    assert!(out.ends_with("\r\n\r\n{\"error\":\"refused\"}"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_max_amount_and_dry_runs_charge_nothing() {
    let a = agent(None).await;
    let srv = X402Server::start(&a.address).await;

    // Over the policy's per-payment limit (0.10).
    let o = a.fetch(&[&srv.url("/v2/deny?amount=200000")]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("PER_TX_LIMIT"), "{}", text(&o));
    assert!(o.stdout.is_empty());

    // Over --max-amount: refused before signing.
    for max in ["0.005", "0.005 USDC", "$0.009", "1 USDT0"] {
        let o = a.fetch(&["--max-amount", max, &srv.url("/v2/max?amount=10000")]);
        assert_eq!(o.status.code(), Some(7), "{max}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("--max-amount"), "{}", text(&o));
    }
    for bad in ["lots", "1 EURC"] {
        let o = a.fetch(&["--max-amount", bad, &srv.url("/v2/max?amount=10000")]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
    }

    // Dry runs: what would be paid, and the policy's verdict.
    let o = a.fetch(&["--dry-run", &srv.url("/v2/dry?amount=10000")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("would pay 0.01 USDC") && out.contains(PAYEE), "{out}");
    let o = a.fetch(&["--dry-run", "--output", "json", &srv.url("/v2/dry?amount=200000")]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v = stdout_json(&o);
    assert_eq!(
        (v["preview"]["allowed"].clone(), v["preview"]["reason"].clone()),
        (json!(false), json!("PER_TX_LIMIT"))
    );
    assert_eq!(v["options"][0]["amount_human"], "0.2");
    let o = a.fetch(&["--dry-run", "--max-amount", "0.005", &srv.url("/v2/dry?amount=10000")]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    // A v1 server showing `"amount": "1"` beside `"maxAmountRequired": "60000"` (0.06, what
    // the enclave charges, within the policy's 0.10): priced at 0.06, refused before signing,
    // so the session's budget is not charged either.
    let o = a.fetch(&[
        "--max-amount",
        "0.05",
        "--output",
        "json",
        &srv.url("/v1/trick?amount=60000&trick=1"),
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let v = stdout_json(&o);
    assert_eq!(v["signed_not_sent"], false, "refused before signing: {v}");
    assert_eq!(v["asked"], "0.06 USDC on base-sepolia", "{v}");
    assert!(srv.paid("/v1/trick").is_empty());

    assert!(srv.seen("/v2/").iter().all(|s| s.payment().is_none()), "no payment was ever sent");
    assert_eq!(a.spent().await, "0", "nothing charged");

    // At the limit it pays; with a cheaper option among dearer ones, only that one is signed.
    let o = a.fetch(&["--max-amount", "0.01 USDC", &srv.url("/v2/at?amount=10000")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = a.fetch(&["--max-amount", "0.02", &srv.url("/v2/pick?amount=50000,15000,90000")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let paid = srv.paid("/v2/pick");
    let payload: Value =
        serde_json::from_slice(&STANDARD.decode(paid[0].payment().unwrap()).unwrap()).unwrap();
    assert_eq!(payload["accepted"]["amount"], "15000", "the option within --max-amount");
    assert_eq!(a.spent().await, "0.025");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_payment_pays_on_the_retry_after_approval() {
    let a = agent(Some(
        r#"
version = 1
[wallet]
max_per_payment = "1"
[approval]
above = "0.05"
[[rule]]
name = "testnet"
networks = ["eip155:84532"]
action = "allow"
"#,
    ))
    .await;
    let srv = X402Server::start(&a.address).await;
    let url = srv.url("/v2/held?amount=60000");
    let o = a.fetch(&[&url]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let key = idempotency_key_in(&err);
    let hold = err
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("ap_"))
        .unwrap_or_else(|| panic!("no hold id in {err}"))
        .to_owned();
    assert!(srv.paid("/v2/held").is_empty());
    assert_eq!(a.spent().await, "0");

    a.stack
        .client()
        .await
        .decide_approval(a.stack.signed(
            wallet_client::AdminRpc::DecideApproval,
            gw::DecideApprovalRequest { approval_id: hold, approve: true, ..Default::default() },
        ))
        .await
        .expect("approve");
    let o = a.fetch(&["--idempotency-key", &key, &url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(srv.paid("/v2/held").len(), 1);
    assert_eq!(a.spent().await, "0.06");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_header_never_follows_a_redirect_to_another_origin() {
    let a = agent(None).await;
    let srv = X402Server::start(&a.address).await;
    let other = X402Server::start(&a.address).await;
    let landing = other.url("/landing");

    // The paid request is answered with a redirect to another origin: followed with -L, and
    // the other origin sees neither the payment nor the Authorization header.
    let url = srv.url(&format!("/v2/r?amount=10000&redirect={landing}"));
    let o = a.fetch(&[
        "-L",
        "-v",
        "-H",
        "Authorization: Bearer secret",
        "-H",
        "X-Api-Key: key",
        "-H",
        "X-Auth-Token: token",
        "-H",
        "Cookie: c=1",
        "-H",
        "Accept: text/plain",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(o.stdout, b"landed");
    assert!(String::from_utf8_lossy(&o.stderr).contains("transaction 0x"), "{}", text(&o));
    assert_eq!(srv.paid("/v2/r").len(), 1);
    let landed = other.seen("/landing");
    assert_eq!(landed.len(), 1);
    assert!(landed[0].payment().is_none(), "no payment header at the other origin");
    for secret in ["authorization", "x-api-key", "x-auth-token", "cookie"] {
        assert!(!landed[0].headers.contains_key(secret), "{secret} went to the other origin");
    }
    assert_eq!(landed[0].headers["accept"], "text/plain", "harmless headers do go");
    assert!(landed[0].headers["user-agent"].starts_with("walletctl/"));
    let paid = &srv.paid("/v2/r")[0];
    assert_eq!(
        (paid.headers["x-api-key"].as_str(), paid.headers["cookie"].as_str()),
        ("key", "c=1")
    );

    // Without -L the redirect is the answer.
    let o = a.fetch(&["-i", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("HTTP/1.1 307"), "{}", text(&o));
    assert_eq!(other.seen("/landing").len(), 1);

    // A 307 would carry the body to another origin: not followed, the redirect is the answer.
    // To the same origin it is followed, body and all.
    let to_other = srv.url(&format!("/to?url={}", other.url("/landing")));
    let o = a.fetch(&["-L", "-i", "-d", "secret body", "-H", "X-Api-Key: key", &to_other]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("HTTP/1.1 307"), "{}", text(&o));
    assert_eq!(other.seen("/landing").len(), 1, "the body did not go to the other origin");
    let o =
        a.fetch(&["-L", "-d", "secret body", &srv.url(&format!("/to?url={}", srv.url("/free")))]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(o.stdout, b"free");
    assert_eq!(srv.seen("/free")[0].body, b"secret body");

    // A redirect before the 402: the origin that asks is the one paid.
    let o = a.fetch(&["-L", &srv.url(&format!("/to?url={}", other.url("/v2/there?amount=10000")))]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(other.paid("/v2/there").len(), 1);
    assert!(srv.seen("/to").iter().all(|s| s.payment().is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_inspects_and_signs_for_other_transports() {
    use wallet_agent::{FetchRequest, PayOptions, Payer};
    let a = agent(None).await;
    let srv = X402Server::start(&a.address).await;
    let cred = wallet_client::Credential::read(a.session.as_ref()).expect("credential");
    let payer = Payer::connect(cred, Some(&a.stack.url)).await.expect("connect");
    assert!(payer.verifies_answers());
    assert!(!format!("{payer:?}").contains("session_secret"));

    let i = payer
        .inspect(FetchRequest::get(&srv.url("/v2/i?amount=30000,10000")))
        .await
        .expect("inspect");
    assert_eq!((i.status, i.x402_version, i.accepts.len()), (402, 2, 2));
    assert_eq!(i.options[1].amount_human.as_deref(), Some("0.01"));
    let p = i.preview.expect("the enclave previews");
    assert!(p.allowed, "{p:?}");
    assert_eq!(p.chosen.expect("chosen").charged, "0.03");

    // A requirement handed over as JSON (an MCP tool result), signed for the caller to send.
    let required = v2_required(&["10000".to_owned()]).to_string();
    let s = payer
        .sign(
            &required,
            &PayOptions { idempotency_key: Some("mcp-1".into()), ..Default::default() },
        )
        .await
        .expect("needs the enclave's JSON payment_required support");
    assert_eq!((s.header_name, s.x402_version), ("PAYMENT-SIGNATURE", 2));
    assert_eq!(s.payload["accepted"]["amount"], "10000");
    assert_eq!(recover_payer(&s.header_value), a.address);
    assert_eq!(a.spent().await, "0.01");
    assert!(srv.seen("/v2/i").iter().all(|s| s.payment().is_none()), "inspect pays nothing");

    // A credential that pins no enclave identity (issued before signed answers): prices and
    // signed amounts would be the gateway's unverified word, so --max-amount is refused before
    // anything is sent, rather than claimed and unchecked.
    let old = wallet_client::Credential::read(a.session.as_ref()).expect("credential");
    let unpinned = Payer::connect(old.with_enclave_id(""), Some(&a.stack.url)).await.unwrap();
    assert!(!unpinned.verifies_answers());
    let limited = || PayOptions { max_amount: Some("0.05".into()), ..Default::default() };
    let e = unpinned
        .fetch(FetchRequest { options: limited(), ..FetchRequest::get(&srv.url("/v2/u?amount=1")) })
        .await
        .expect_err("refused");
    assert!(matches!(e, wallet_agent::PayError::Usage(_)), "{e:?}");
    assert!(e.to_string().contains("pins no enclave identity"), "{e}");
    assert!(srv.seen("/v2/u").is_empty(), "refused before anything is sent");
    let e = unpinned.sign(&required, &limited()).await.expect_err("refused");
    assert!(e.to_string().contains("Issue a new session"), "{e}");
    assert_eq!(a.spent().await, "0.01", "nothing charged");
}
