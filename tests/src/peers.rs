//! Real x402 peers for the end-to-end tests, started by `tests/x402-e2e/peers.mjs` (Node): a
//! local chain (anvil from npm) with an EIP-3009 token compiled by solc-js at test time, the
//! official facilitator (`x402Facilitator` + `@x402/evm`), the official resource servers
//! (`@x402/express` for v2, `x402-express@1.2.0` for v1), a paid MCP server speaking the x402 MCP
//! binding, and a control endpoint for balances, minting and receipts. Everything listens on
//! 127.0.0.1 only.
//!
//! [`Peers::start`] starts a launcher that is stopped on drop (SIGTERM, then SIGKILL: only the
//! processes it started); [`Peers::shared`] starts one per test binary, which stops when the
//! binary exits (the launcher stops at the end of its standard input). Both return `None`, with
//! a note on stderr, when `WALLET_SKIP_X402_COMPAT` is set (a machine without Node).
//!
//! Needs `npm ci --prefix tests/x402-e2e` (scripts/test.sh does it).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::{mpsc, OnceLock},
    time::{Duration, Instant},
};

use rand_core::{OsRng, RngCore as _};
use serde_json::Value;
use wallet_client::Credential;
use wallet_proto::gateway::v1 as gw;

use crate::{bin, Stack};

/// How long the launcher may take to print its line (a cold solc compile is ~2 s on 2 cores).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Timeout of one HTTP exchange with a peer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// Default timeout of a `walletctl` or MCP driver run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The deployed token and its EIP-712 domain.
#[derive(Debug, Clone)]
pub struct Token {
    /// Checksummed contract address.
    pub address: String,
    /// EIP-712 domain name (`extra.name`).
    pub name: String,
    /// EIP-712 domain version (`extra.version`).
    pub version: String,
    /// Symbol.
    pub symbol: String,
    /// Decimals (6).
    pub decimals: u32,
}

/// A running launcher and what it announced.
#[derive(Debug)]
pub struct Peers {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The launcher's JSON line, as printed.
    pub info: Value,
    /// How long the launcher took to print its line (process start to ready).
    pub startup: Duration,
    /// `http://127.0.0.1:PORT` of anvil.
    pub rpc_url: String,
    /// 84532 (Base Sepolia's id, so the v1 name `base-sepolia` maps to this chain).
    pub chain_id: u64,
    /// `eip155:84532`.
    pub network: String,
    /// `base-sepolia`.
    pub v1_network: String,
    /// The EIP-3009 token.
    pub token: Token,
    /// The official facilitator (`/verify`, `/settle`, `/supported`).
    pub facilitator_url: String,
    /// The paid HTTP API (v2 and v1 routes; see tests/x402-e2e/README.md).
    pub server_url: String,
    /// The paid MCP server's streamable HTTP endpoint (`…/mcp`).
    pub mcp_url: String,
    /// The control endpoint (balances, minting, receipts, logs).
    pub control_url: String,
    /// The payee used when a request names none.
    pub default_pay_to: String,
    /// anvil's process id (a child of the launcher).
    pub anvil_pid: u32,
}

/// The directory of the Node package.
#[must_use]
pub fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("x402-e2e")
}

/// Whether the peers are skipped (`WALLET_SKIP_X402_COMPAT` is set); says so on stderr.
#[must_use]
pub fn skipped() -> bool {
    if std::env::var_os("WALLET_SKIP_X402_COMPAT").is_some() {
        eprintln!("skipping the tests with real x402 peers (WALLET_SKIP_X402_COMPAT is set)");
        return true;
    }
    false
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("launcher line has no string {k:?}: {v}")).to_owned()
}

impl Peers {
    /// Starts the launcher; `None` when skipped.
    ///
    /// # Panics
    /// When the packages are not installed or the launcher does not get ready in time.
    #[must_use]
    pub fn start() -> Option<Self> {
        if skipped() {
            return None;
        }
        let dir = package_dir();
        assert!(
            dir.join("node_modules/@x402/express").exists() && dir.join("node_modules/solc").exists(),
            "the e2e peers are not installed: run `npm ci --prefix tests/x402-e2e` (scripts/test.sh does), or set WALLET_SKIP_X402_COMPAT=1"
        );
        let t0 = Instant::now();
        let mut child = Command::new("node")
            .arg(dir.join("peers.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run node (is Node.js installed?)");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // Keep draining so the launcher never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the peers launcher did not get ready within {STARTUP_TIMEOUT:?}: {other:?} (its stderr is above)");
            }
        };
        let startup = t0.elapsed();
        let info: Value = serde_json::from_str(line.trim()).expect("launcher line is JSON");
        assert_eq!(info["ready"], true, "launcher not ready: {info}");
        let t = &info["token"];
        let peers = Self {
            child,
            stdin,
            startup,
            rpc_url: s(&info, "rpcUrl"),
            chain_id: info["chainId"].as_u64().expect("chainId"),
            network: s(&info, "network"),
            v1_network: s(&info, "v1Network"),
            token: Token {
                address: s(t, "address"),
                name: s(t, "name"),
                version: s(t, "version"),
                symbol: s(t, "symbol"),
                decimals: u32::try_from(t["decimals"].as_u64().expect("decimals")).expect("small"),
            },
            facilitator_url: s(&info, "facilitatorUrl"),
            server_url: s(&info, "serverUrl"),
            mcp_url: s(&info, "mcpUrl"),
            control_url: s(&info, "controlUrl"),
            default_pay_to: s(&info, "defaultPayTo"),
            anvil_pid: u32::try_from(info["anvilPid"].as_u64().expect("anvilPid")).expect("pid"),
            info,
        };
        eprintln!("x402 peers ready in {:?} ({})", peers.startup, peers.info["timings"]);
        Some(peers)
    }

    /// One launcher for the whole test binary (started on first use); `None` when skipped.
    /// It stops when the binary exits: its standard input closes then.
    ///
    /// # Panics
    /// As [`Self::start`].
    #[must_use]
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Option<Peers>> = OnceLock::new();
        SHARED.get_or_init(Self::start).as_ref()
    }

    /// `server_url + path` with the payee and the price (atomic units) as query parameters.
    #[must_use]
    pub fn url(&self, path: &str, pay_to: &str, amount: u128) -> String {
        format!("{}{path}?payTo={pay_to}&amount={amount}", self.server_url)
    }

    /// The paid MCP server's URL for one payee and price.
    #[must_use]
    pub fn mcp_url_for(&self, pay_to: &str, amount: u128) -> String {
        format!("{}?payTo={pay_to}&amount={amount}", self.mcp_url)
    }

    fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(Value::to_string);
        let r = http(
            method,
            &format!("{}{path}", self.control_url),
            &[("content-type", "application/json")],
            body.as_deref().map(str::as_bytes),
        );
        assert_eq!(r.status, 200, "control {method} {path}: {}", r.text());
        serde_json::from_slice(&r.body).expect("control answers JSON")
    }

    /// Token balance of `address` on chain, atomic units.
    ///
    /// # Panics
    /// When the chain cannot be read.
    #[must_use]
    pub fn balance(&self, address: &str) -> u128 {
        self.control("GET", &format!("/balance/{address}"), None)["balance"]
            .as_str()
            .expect("balance")
            .parse()
            .expect("decimal")
    }

    /// Mints `amount` atomic units to `address` (mined before this returns).
    ///
    /// # Panics
    /// When the mint fails.
    pub fn mint(&self, address: &str, amount: u128) {
        let r = self.control(
            "POST",
            "/mint",
            Some(&serde_json::json!({"address": address, "amount": amount.to_string()})),
        );
        assert_eq!(r["status"], "success", "mint: {r}");
    }

    /// The receipt of a transaction: `{transaction, status, blockNumber, from, to,
    /// transfers: [{from, to, value}]}` (transfers of the token only).
    ///
    /// # Panics
    /// When the transaction is unknown.
    #[must_use]
    pub fn receipt(&self, tx: &str) -> Value {
        self.control("GET", &format!("/receipt/{tx}"), None)
    }

    /// Asserts that `tx` is a mined, successful transaction moving exactly `amount` of the token
    /// from `from` to `to`.
    ///
    /// # Panics
    /// When it is not.
    pub fn assert_settled(&self, tx: &str, from: &str, to: &str, amount: u128) {
        let r = self.receipt(tx);
        assert_eq!(r["status"], "success", "settlement transaction {tx}: {r}");
        let moved = r["transfers"].as_array().expect("transfers").iter().any(|t| {
            t["from"].as_str().is_some_and(|f| f.eq_ignore_ascii_case(from))
                && t["to"].as_str().is_some_and(|f| f.eq_ignore_ascii_case(to))
                && t["value"] == amount.to_string()
        });
        assert!(moved, "transaction {tx} does not move {amount} from {from} to {to}: {r}");
    }

    /// The launcher's log (facilitator verify/settle results, requests, MCP outcomes).
    #[must_use]
    pub fn log(&self) -> Value {
        self.control("GET", "/log", None)
    }

    /// The launcher's log entries about payee `pay_to` (facilitator calls carry `op`
    /// `verify`/`settle`; requests `kind: "request"`; `payment-identifier` and `mcp` outcomes).
    #[must_use]
    pub fn log_for(&self, pay_to: &str) -> Vec<Value> {
        let log = self.log();
        log.as_array()
            .expect("log is an array")
            .iter()
            .filter(|e| e["payTo"].as_str().is_some_and(|p| p.eq_ignore_ascii_case(pay_to)))
            .cloned()
            .collect()
    }

    /// The facilitator's `verify` and `settle` calls for payee `pay_to`.
    #[must_use]
    pub fn facilitator_calls(&self, pay_to: &str) -> Vec<Value> {
        self.log_for(pay_to)
            .into_iter()
            .filter(|e| e["op"] == "verify" || e["op"] == "settle")
            .collect()
    }

    /// Registers the token in the stack's asset registry (`walletctl asset add`), once.
    ///
    /// # Panics
    /// When walletctl fails.
    pub fn register_asset(&self, stack: &Stack) {
        let listed = crate::ok(&stack.walletctl(&["asset", "list"], ""));
        if listed.to_lowercase().contains(&self.token.address.to_lowercase()) {
            return;
        }
        let out = stack.walletctl(
            &[
                "asset",
                "add",
                "--network",
                &self.network,
                "--address",
                &self.token.address,
                "--name",
                &self.token.name,
                "--version",
                &self.token.version,
                "--symbol",
                &self.token.symbol,
                "--decimals",
                &self.token.decimals.to_string(),
            ],
            "",
        );
        crate::ok(&out);
    }

    /// A funded payer on `stack`: registers the token, creates a wallet with `policy`, mints
    /// `fund` atomic units to it and writes a session credential (cap `cap`, human units) to a
    /// 0600 file in the stack's directory.
    pub async fn payer(
        &self,
        stack: &Stack,
        policy: PayerPolicy<'_>,
        cap: &str,
        fund: u128,
    ) -> Payer {
        self.register_asset(stack);
        let wallet = match policy {
            PayerPolicy::MaxPerPayment(limit) => stack.wallet(limit).await,
            PayerPolicy::Document(document) => {
                let w = stack.wallet("1").await;
                stack.set_document(&w, document).await;
                w
            }
        };
        if fund > 0 {
            self.mint(&wallet.address, fund);
        }
        let cred = stack
            .session(&wallet, cap, gw::IssueSessionRequest::default())
            .await
            .with_enclave_id(&hex::encode(&stack.enclave_id));
        let session = stack.dir.path().join(format!("session-{}.json", cred.session_id));
        cred.write(&session).expect("write session credential");
        Payer {
            session_id: cred.session_id.clone(),
            address: wallet.address.clone(),
            wallet,
            session,
        }
    }

    /// Runs the MCP client driver (tests/x402-e2e/mcp-client.mjs, the official MCP SDK client)
    /// against `walletctl ARGS…` over stdio, with the stack's gateway and admin home in the
    /// environment, running `steps` (a JSON array, see the script).
    ///
    /// # Panics
    /// When node cannot be run or the run exceeds `timeout`.
    #[must_use]
    pub fn mcp_stdio(
        &self,
        stack: &Stack,
        walletctl_args: &[&str],
        steps: &Value,
        timeout: Duration,
    ) -> McpRun {
        let mut c = Command::new("node");
        c.arg(package_dir().join("mcp-client.mjs"))
            .arg("--steps")
            .arg(steps.to_string())
            .arg("--")
            .arg(bin("walletctl"))
            .args(walletctl_args)
            .env("WALLET_GATEWAY", &stack.url)
            .env("WALLETCTL_HOME", stack.dir.path().join("home"))
            .env_remove("WALLET_SESSION");
        McpRun::parse(run(c, "", timeout))
    }

    /// Starts the MCP client driver in interactive mode against `walletctl ARGS…` over stdio:
    /// steps are sent one at a time with [`McpSession::call`], so a test can act between two
    /// calls of one MCP session (approve a hold, read balances).
    ///
    /// # Panics
    /// When the driver cannot connect within `timeout`.
    #[must_use]
    pub fn mcp_session(
        &self,
        stack: &Stack,
        walletctl_args: &[&str],
        timeout: Duration,
    ) -> McpSession {
        let mut c = Command::new("node");
        c.arg(package_dir().join("mcp-client.mjs"))
            .arg("--steps")
            .arg("-")
            .arg("--")
            .arg(bin("walletctl"))
            .args(walletctl_args)
            .env("WALLET_GATEWAY", &stack.url)
            .env("WALLETCTL_HOME", stack.dir.path().join("home"))
            .env_remove("WALLET_SESSION");
        McpSession::start(c, timeout)
    }

    /// Runs the MCP client driver against a streamable HTTP server (the paid MCP server).
    ///
    /// # Panics
    /// As [`Self::mcp_stdio`].
    #[must_use]
    pub fn mcp_http(&self, url: &str, steps: &Value, timeout: Duration) -> McpRun {
        let mut c = Command::new("node");
        c.arg(package_dir().join("mcp-client.mjs"))
            .arg("--steps")
            .arg(steps.to_string())
            .arg("--url")
            .arg(url);
        McpRun::parse(run(c, "", timeout))
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the launcher stops at the end of its input
        let pid = self.child.id();
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            // The launcher could not stop anvil: stop it here, if it is still ours.
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.anvil_pid))
                .unwrap_or_default();
            if comm.trim() == "anvil" {
                let _ = Command::new("kill").arg("-KILL").arg(self.anvil_pid.to_string()).status();
            }
        }
    }
}

/// The policy of a [`Peers::payer`] wallet.
#[derive(Debug, Clone, Copy)]
pub enum PayerPolicy<'a> {
    /// [`Stack::wallet`]'s policy: this per-payment limit (human units), any registered asset.
    MaxPerPayment(&'a str),
    /// A policy document (TOML, README "Policy file").
    Document(&'a str),
}

/// A wallet funded on the local chain, with a session credential file.
#[derive(Debug)]
pub struct Payer {
    /// The wallet.
    pub wallet: gw::Wallet,
    /// Its address (checksummed, as the gateway reports it).
    pub address: String,
    /// The session credential file (0600).
    pub session: PathBuf,
    /// The session id.
    pub session_id: String,
}

impl Payer {
    /// The session file as a `&str` argument.
    ///
    /// # Panics
    /// When the temporary path is not UTF-8.
    #[must_use]
    pub fn session_arg(&self) -> &str {
        self.session.to_str().expect("utf-8 path")
    }

    /// Reads the credential back.
    ///
    /// # Panics
    /// When the file is unreadable.
    #[must_use]
    pub fn credential(&self) -> Credential {
        Credential::read(&self.session).expect("credential")
    }
}

/// A fresh random address (checksummed), e.g. a payee that has never received anything.
#[must_use]
pub fn fresh_address() -> String {
    let mut b = [0u8; 20];
    OsRng.fill_bytes(&mut b);
    alloy_primitives::Address::from(b).to_checksum(None)
}

/// Runs `walletctl ARGS…` with the stack's gateway and admin home, feeding `stdin`, killed after
/// `timeout`.
///
/// # Panics
/// When it cannot be started or runs past the timeout.
#[must_use]
pub fn walletctl(stack: &Stack, args: &[&str], stdin: &str, timeout: Duration) -> Output {
    let mut c = Command::new(bin("walletctl"));
    c.args(args)
        .env("WALLET_GATEWAY", &stack.url)
        .env("WALLETCTL_HOME", stack.dir.path().join("home"))
        .env_remove("WALLET_SESSION");
    run(c, stdin, timeout)
}

/// Runs a command to completion with piped stdin/stdout/stderr and a deadline (SIGKILL then).
///
/// # Panics
/// When it cannot be started or runs past `timeout`.
#[must_use]
pub fn run(mut c: Command, stdin: &str, timeout: Duration) -> Output {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {c:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let reader_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = reader_err.join().unwrap_or_default();
            panic!(
                "{c:?} ran longer than {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: reader_out.join().unwrap_or_default(),
        stderr: reader_err.join().unwrap_or_default(),
    }
}

/// What the MCP client driver printed: its connection line and one line per step.
#[derive(Debug)]
pub struct McpRun {
    /// The first line (`{"connected":…}`).
    pub connection: Value,
    /// One value per step, in order (`{"step","op","ok","result"|"error"}`).
    pub steps: Vec<Value>,
    /// The driver's and the server's stderr.
    pub stderr: String,
    /// The driver's exit status.
    pub status: ExitStatus,
}

impl McpRun {
    fn parse(out: Output) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut lines = stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("driver line is not JSON ({e}): {l}\nstderr: {stderr}"))
        });
        let connection = lines.next().unwrap_or(Value::Null);
        assert_eq!(
            connection["connected"], true,
            "the MCP client could not connect: {connection}\nstderr: {stderr}"
        );
        Self { connection, steps: lines.collect(), stderr, status: out.status }
    }

    /// Step `i`'s line.
    ///
    /// # Panics
    /// When the driver printed no such step.
    #[must_use]
    pub fn step(&self, i: usize) -> &Value {
        self.steps
            .get(i)
            .unwrap_or_else(|| panic!("no step {i} in {:?}\nstderr: {}", self.steps, self.stderr))
    }

    /// Step `i`'s result, asserting the step did not end in a JSON-RPC error.
    ///
    /// # Panics
    /// When it did.
    #[must_use]
    pub fn result(&self, i: usize) -> &Value {
        let s = self.step(i);
        assert_eq!(s["ok"], true, "step {i} failed: {s}\nstderr: {}", self.stderr);
        &s["result"]
    }
}

/// An MCP session driven step by step (see [`Peers::mcp_session`]); the driver and the server
/// it spawned stop on drop.
#[derive(Debug)]
pub struct McpSession {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: tempfile::NamedTempFile,
    next: usize,
    /// The driver's connection line.
    pub connection: Value,
}

impl McpSession {
    fn start(mut c: Command, timeout: Duration) -> Self {
        let stderr = tempfile::NamedTempFile::new().expect("temp file");
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopen"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {c:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut session = Self { child, stdin, lines, stderr, next: 0, connection: Value::Null };
        session.connection = session.read_line(timeout);
        assert_eq!(
            session.connection["connected"],
            true,
            "the MCP client could not connect: {}\nstderr: {}",
            session.connection,
            session.stderr_text()
        );
        session
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    fn read_line(&self, timeout: Duration) -> Value {
        let line = self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!(
                "no answer from the MCP client within {timeout:?} ({e}); stderr: {}",
                self.stderr_text()
            )
        });
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("driver line is not JSON ({e}): {line}"))
    }

    /// Sends one step (`{"op":"callTool","name":…,"arguments":…}` or `{"op":"listTools"}`) and
    /// returns its line (`{"step","op","ok","result"|"error"}`).
    ///
    /// # Panics
    /// When no answer comes within `timeout`.
    pub fn call(&mut self, step: &Value, timeout: Duration) -> Value {
        let stdin = self.stdin.as_mut().expect("session open");
        writeln!(stdin, "{step}").expect("send step");
        stdin.flush().expect("flush");
        let v = self.read_line(timeout);
        assert_eq!(v["step"], self.next, "answers come in order: {v}");
        self.next += 1;
        v
    }

    /// `callTool`, returning the tool result and asserting no JSON-RPC error.
    ///
    /// # Panics
    /// On a JSON-RPC error or a timeout.
    pub fn call_tool(&mut self, name: &str, arguments: &Value) -> Value {
        let v = self.call(
            &serde_json::json!({"op": "callTool", "name": name, "arguments": arguments}),
            RUN_TIMEOUT,
        );
        assert_eq!(v["ok"], true, "{name} failed: {v}\nstderr: {}", self.stderr_text());
        v["result"].clone()
    }
}

impl Drop for McpSession {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the driver closes the MCP session at the end of its input
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response from [`http`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// A minimal HTTP/1.0 client for the peers on 127.0.0.1 (`http://` only; the connection closes
/// after one exchange), with timeouts.
///
/// # Panics
/// On a URL that is not `http://host:port/…`, or any I/O error.
#[must_use]
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http:// URL: {url}"));
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let addr = authority.to_socket_addrs().expect("resolve").next().expect("an address");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("send request");
    stream.write_all(body).expect("send body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("read answer of {method} {url}: {e}"));
    parse_response(&raw).unwrap_or_else(|| {
        panic!("malformed answer of {method} {url}: {}", String::from_utf8_lossy(&raw))
    })
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    }
    Some(HttpResponse { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&b[..eol]).ok()?.split(';').next()?.trim();
        let n = usize::from_str_radix(size, 16).ok()?;
        b = &b[eol + 2..];
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..n)?);
        b = b.get(n + 2..)?;
    }
}

/// Decodes a base64 JSON header value (`PAYMENT-REQUIRED`, `PAYMENT-RESPONSE`, …).
///
/// # Panics
/// When it is not standard base64 of JSON.
#[must_use]
pub fn decode_header(value: &str) -> Value {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    serde_json::from_slice(&STANDARD.decode(value.trim()).expect("standard base64")).expect("JSON")
}

/// Every string under a key named `key`, anywhere in `v` (depth first).
#[must_use]
pub fn find_strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    fn walk<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == key {
                        if let Some(s) = x.as_str() {
                            out.push(s);
                        }
                    }
                    walk(x, key, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, key, out)),
            _ => {}
        }
    }
    walk(v, key, &mut out);
    out
}
