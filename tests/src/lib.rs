//! Test support: start the real binaries (simulated enclave + gateway) in a temporary data
//! directory, talk to them over gRPC or through `walletctl`, and kill them on drop.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use tonic::transport::Channel;
use wallet_client::{AdminKey, AdminRpc, Credential};
use wallet_proto::gateway::v1::{self as gw, wallet_gateway_client::WalletGatewayClient};
use wallet_proto::AdminSigned;
pub mod peers;

/// The Base Sepolia USDC of the official vectors.
pub const USDC_BASE_SEPOLIA: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
/// The payee of the official vectors.
pub const PAYEE: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// The official x402 packages' folder (`tests/x402-compat`), or `None` when the Node checks are
/// skipped (`WALLET_SKIP_X402_COMPAT` is set; said on stderr).
///
/// # Panics
/// When the packages are not installed (`npm ci --prefix tests/x402-compat`).
#[must_use]
pub fn x402_compat_dir() -> Option<PathBuf> {
    if std::env::var_os("WALLET_SKIP_X402_COMPAT").is_some() {
        eprintln!("skipping the official x402 check (WALLET_SKIP_X402_COMPAT is set)");
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("x402-compat");
    assert!(
        dir.join("node_modules/@x402/evm").exists(),
        "the official x402 packages are not installed: run `npm ci --prefix tests/x402-compat` (scripts/test.sh does), or set WALLET_SKIP_X402_COMPAT=1"
    );
    Some(dir)
}

/// Path of a workspace binary next to the running test (target/<profile>/NAME).
///
/// # Panics
/// If the binary has not been built (`cargo test --workspace` builds it).
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("target/<profile>/...").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}

/// A child process killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Sends SIGTERM and waits up to 10 s for a clean exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        signal(self.0.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal with the `kill` command (the workspace forbids `unsafe`, so no raw `kill(2)`).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// How to start a [`Stack`] ([`Stack::start_with`]); the default is [`Stack::start`]'s.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// `RUST_LOG` for both processes [default: `info`].
    pub log_level: Option<String>,
    /// Start the enclave under `ulimit -n N` (its own descriptor limit, set in a shell that then
    /// `exec`s it; nothing system-wide changes).
    pub enclave_nofile: Option<u32>,
    /// Start the gateway under `ulimit -n N`, likewise.
    pub gateway_nofile: Option<u32>,
    /// Extra arguments for `wallet-gateway` (for example its limits).
    pub gateway_args: Vec<String>,
}

/// A running local stack.
#[derive(Debug)]
pub struct Stack {
    /// Temporary directory holding the data dir and walletctl's home.
    pub dir: tempfile::TempDir,
    /// The enclave process.
    pub enclave: ChildGuard,
    /// The gateway process.
    pub gateway: ChildGuard,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin key (`walletctl init` made it in `DIR/home/admin.key` and registered it).
    pub admin: AdminKey,
    /// The enclave's identity (audit public key) pinned by `walletctl init`.
    pub enclave_id: Vec<u8>,
    admin_last: std::sync::atomic::AtomicU64,
    options: StackOptions,
}

impl Stack {
    /// Starts enclave and gateway in a fresh temporary directory.
    ///
    /// # Panics
    /// When either fails to start.
    #[must_use]
    pub fn start() -> Self {
        Self::start_logging("info")
    }

    /// Starts the stack with `RUST_LOG=level` for both processes.
    ///
    /// # Panics
    /// When either fails to start.
    #[must_use]
    pub fn start_logging(level: &str) -> Self {
        Self::start_with(StackOptions {
            log_level: Some(level.to_owned()),
            ..StackOptions::default()
        })
    }

    /// Starts the stack with `options` (descriptor limits, gateway flags, log level).
    ///
    /// # Panics
    /// When either fails to start.
    #[must_use]
    pub fn start_with(options: StackOptions) -> Self {
        let level = options.log_level.clone().unwrap_or_else(|| "info".to_owned());
        let level = level.as_str();
        let dir = tempfile::tempdir().expect("tempdir");
        let enclave = start_enclave_limited(dir.path(), level, options.enclave_nofile);
        let (gateway, url) =
            start_gateway_with(dir.path(), level, options.gateway_nofile, &options.gateway_args);
        let home = dir.path().join("home");
        let init = Command::new(bin("walletctl"))
            .arg("init")
            .env("WALLET_GATEWAY", &url)
            .env("WALLETCTL_HOME", &home)
            .env_remove("WALLET_ADMIN_KEY")
            .output()
            .expect("walletctl init");
        assert!(
            init.status.success(),
            "walletctl init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let admin =
            AdminKey::read(&home.join("admin.key")).expect("admin key written by walletctl init");
        let enclave_id = hex::decode(
            std::fs::read_to_string(home.join("audit.pub"))
                .expect("audit key pinned by walletctl init")
                .trim(),
        )
        .expect("hex");
        Self {
            dir,
            enclave,
            gateway,
            url,
            admin,
            enclave_id,
            admin_last: std::sync::atomic::AtomicU64::new(0),
            options,
        }
    }

    /// Signs a state-changing request with the admin key (timestamps strictly increasing).
    #[must_use]
    pub fn signed<R: AdminSigned>(&self, rpc: AdminRpc, mut req: R) -> R {
        use std::sync::atomic::Ordering;
        let mut last = self.admin_last.load(Ordering::SeqCst);
        let ts = loop {
            let ts = now_ms().max(last + 1);
            match self.admin_last.compare_exchange(last, ts, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break ts,
                Err(current) => last = current,
            }
        };
        self.admin.sign(&self.enclave_id, rpc, &mut req, ts);
        req
    }

    /// Data directory of the enclave.
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The enclave's log file.
    #[must_use]
    pub fn enclave_log(&self) -> PathBuf {
        self.dir.path().join("enclave.log")
    }

    /// Kills the enclave with SIGKILL and starts it again on the same state.
    pub fn crash_and_restart_enclave(&mut self) {
        self.enclave.kill();
        self.enclave = start_enclave_limited(self.dir.path(), "info", self.options.enclave_nofile);
    }

    /// A gRPC client.
    ///
    /// # Panics
    /// When the gateway cannot be reached.
    pub async fn client(&self) -> WalletGatewayClient<Channel> {
        WalletGatewayClient::connect(self.url.clone()).await.expect("connect to gateway")
    }

    /// Runs `walletctl` with this stack's gateway and home, feeding `stdin`.
    ///
    /// # Panics
    /// When walletctl cannot be started.
    #[must_use]
    pub fn walletctl(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(bin("walletctl"))
            .args(args)
            .env("WALLET_GATEWAY", &self.url)
            .env("WALLETCTL_HOME", self.dir.path().join("home"))
            .env_remove("WALLET_SESSION")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walletctl");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(data.as_bytes());
        });
        let out = child.wait_with_output().expect("walletctl output");
        let _ = writer.join();
        out
    }

    /// Creates a wallet with a policy (per-payment limit, any registry asset) over gRPC.
    pub async fn wallet(&self, max_per_payment: &str) -> gw::Wallet {
        let mut c = self.client().await;
        let w = c
            .create_wallet(self.signed(
                AdminRpc::CreateWallet,
                gw::CreateWalletRequest { auth: None, label: "e2e".into() },
            ))
            .await
            .expect("create wallet")
            .into_inner();
        c.set_policy(self.signed(
            AdminRpc::SetPolicy,
            gw::SetPolicyRequest {
                auth: None,
                policy: Some(gw::Policy {
                    wallet_id: w.wallet_id.clone(),
                    max_per_payment: max_per_payment.into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("set policy");
        w
    }

    /// Replaces a wallet's policy with a policy document over gRPC.
    pub async fn set_document(&self, wallet: &gw::Wallet, document: &str) -> gw::Policy {
        self.client()
            .await
            .set_policy(self.signed(
                AdminRpc::SetPolicy,
                gw::SetPolicyRequest {
                    auth: None,
                    policy: Some(gw::Policy {
                        wallet_id: wallet.wallet_id.clone(),
                        document: document.into(),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect("set policy document")
            .into_inner()
    }

    /// Issues a session over gRPC and returns its credential (not written to disk).
    pub async fn session(
        &self,
        wallet: &gw::Wallet,
        cap: &str,
        scope: gw::IssueSessionRequest,
    ) -> Credential {
        let key = wallet_client::new_session_key();
        let s = self
            .client()
            .await
            .issue_session(self.signed(
                AdminRpc::IssueSession,
                gw::IssueSessionRequest {
                    wallet_id: wallet.wallet_id.clone(),
                    public_key: key.verifying_key().to_bytes().to_vec(),
                    cap: cap.into(),
                    ttl_seconds: if scope.ttl_seconds == 0 { 3600 } else { scope.ttl_seconds },
                    ..scope
                },
            ))
            .await
            .expect("issue session")
            .into_inner();
        Credential::new(
            s.session_id,
            s.wallet_id,
            wallet.address.clone(),
            self.url.clone(),
            s.expires_at,
            key,
        )
    }

    /// What the session has spent, human units.
    pub async fn spent(&self, session_id: &str) -> String {
        let l = self
            .client()
            .await
            .list_sessions(gw::ListSessionsRequest::default())
            .await
            .expect("list sessions")
            .into_inner();
        l.sessions.into_iter().find(|s| s.session_id == session_id).expect("session exists").spent
    }

    /// The enclave's status.
    pub async fn status(&self) -> gw::Status {
        self.client().await.get_status(gw::GetStatusRequest {}).await.expect("status").into_inner()
    }
}

/// Starts the simulated enclave on `DIR/data`, logging to `DIR/enclave.log`.
///
/// # Panics
/// When it does not open its socket within 20 s.
#[must_use]
pub fn start_enclave(dir: &Path, log_level: &str) -> ChildGuard {
    start_enclave_limited(dir, log_level, None)
}

/// A command running `program`, under `ulimit -n N` when `nofile` is given: a shell lowers its
/// own limit and `exec`s the program (same pid, so [`ChildGuard`] stops the program itself).
fn command_limited(program: &Path, nofile: Option<u32>) -> Command {
    match nofile {
        None => Command::new(program),
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(r#"ulimit -n "$1" || exit 97; shift; exec "$@""#)
                .arg("sh")
                .arg(n.to_string())
                .arg(program);
            c
        }
    }
}

/// [`start_enclave`] under `ulimit -n nofile` when given.
///
/// # Panics
/// When it does not open its socket within 20 s.
#[must_use]
pub fn start_enclave_limited(dir: &Path, log_level: &str, nofile: Option<u32>) -> ChildGuard {
    let data = dir.join("data");
    let sock = dir.join("enclave.sock");
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("enclave.log"))
        .expect("log file");
    let child = command_limited(&bin("wallet-enclave"), nofile)
        .args(["--simulated", "--data-dir"])
        .arg(&data)
        .arg("--socket")
        .arg(&sock)
        .env("RUST_LOG", std::env::var("WALLET_TEST_LOG").unwrap_or_else(|_| log_level.to_owned()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn enclave");
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Ok(Some(status)) = guard.0.try_wait() {
            panic!("enclave exited with {status}; see {}", dir.join("enclave.log").display());
        }
        assert!(Instant::now() < deadline, "enclave did not open its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    guard
}

/// Starts the gateway on an ephemeral loopback port; returns it and its URL.
///
/// # Panics
/// When it does not announce its address.
#[must_use]
pub fn start_gateway(dir: &Path) -> (ChildGuard, String) {
    start_gateway_logging(dir, "info")
}

/// [`start_gateway`] with `RUST_LOG=level`.
///
/// # Panics
/// When it does not announce its address.
#[must_use]
pub fn start_gateway_logging(dir: &Path, level: &str) -> (ChildGuard, String) {
    start_gateway_with(dir, level, None, &[])
}

/// [`start_gateway_logging`] under `ulimit -n nofile` when given, with extra arguments.
///
/// # Panics
/// When it does not announce its address.
#[must_use]
pub fn start_gateway_with(
    dir: &Path,
    level: &str,
    nofile: Option<u32>,
    extra_args: &[String],
) -> (ChildGuard, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .expect("log file");
    let mut child = command_limited(&bin("wallet-gateway"), nofile)
        .args(["--listen", "127.0.0.1:0", "--enclave-socket"])
        .arg(dir.join("enclave.sock"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra_args)
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn gateway");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("gateway announces its address");
    let url = line.trim().rsplit(' ').next().expect("url").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "unexpected gateway line {line:?}");
    (guard, url)
}

/// A `PAYMENT-REQUIRED` value with one Base Sepolia USDC option of `amount` atomic units.
#[must_use]
pub fn header(amount: &str) -> String {
    header_json(&format!(
        r#"{{"x402Version":2,"error":"Payment required","resource":{{"url":"https://api.example.com/premium-data","description":"Access to premium market data","mimeType":"application/json"}},"accepts":[{{"scheme":"exact","network":"eip155:84532","amount":"{amount}","asset":"{USDC_BASE_SEPOLIA}","payTo":"{PAYEE}","maxTimeoutSeconds":60,"extra":{{"name":"USDC","version":"2"}}}}]}}"#
    ))
}

/// Standard base64 of a JSON text.
#[must_use]
pub fn header_json(json: &str) -> String {
    STANDARD.encode(json)
}

/// Unix milliseconds now.
#[must_use]
pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms fit u64")
}

/// Recovers the signer of a `PAYMENT-SIGNATURE` value from its EIP-712 authorization.
///
/// # Panics
/// When the value is not a well-formed x402 v2 EIP-3009 payload.
#[must_use]
pub fn recover_payer(payment_signature: &str) -> String {
    use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
    use wallet_policy::{address::parse_address, eip712::Authorization, registry::chain_id, U256};
    let v: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(payment_signature).expect("base64")).expect("json");
    let a = &v["payload"]["authorization"];
    let s = |k: &str| a[k].as_str().expect("string field").to_owned();
    let auth = Authorization {
        from: parse_address(&s("from")).expect("from"),
        to: parse_address(&s("to")).expect("to"),
        value: s("value").parse::<U256>().expect("value"),
        valid_after: s("validAfter").parse().expect("validAfter"),
        valid_before: s("validBefore").parse().expect("validBefore"),
        nonce: hex::decode(&s("nonce")[2..]).expect("nonce").try_into().expect("32 bytes"),
    };
    let acc = &v["accepted"];
    let domain = wallet_policy::eip712::domain_separator(
        acc["extra"]["name"].as_str().expect("name"),
        acc["extra"]["version"].as_str().expect("version"),
        chain_id(acc["network"].as_str().expect("network")).expect("chain"),
        parse_address(acc["asset"].as_str().expect("asset")).expect("asset"),
    );
    let digest = auth.signing_hash(&domain);
    let sig =
        hex::decode(&v["payload"]["signature"].as_str().expect("signature")[2..]).expect("hex");
    assert_eq!(sig.len(), 65);
    let vk = VerifyingKey::recover_from_prehash(
        digest.as_slice(),
        &Signature::from_slice(&sig[..64]).expect("rs"),
        RecoveryId::from_byte(sig[64] - 27).expect("v"),
    )
    .expect("recover");
    let point = vk.to_encoded_point(false);
    wallet_policy::Address::from_slice(&alloy_primitives::keccak256(&point.as_bytes()[1..])[12..])
        .to_checksum(None)
}

/// The stdout of a walletctl run that must have succeeded.
///
/// # Panics
/// When it failed (with its stderr and stdout).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "walletctl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

/// The stderr of a walletctl run.
#[must_use]
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The word after `after` in `text` (`field("wallet w_12 …", "wallet")` is `w_12`).
///
/// # Panics
/// When `after` is not in `text`.
#[must_use]
pub fn field<'a>(text: &'a str, after: &str) -> &'a str {
    text.split_whitespace()
        .skip_while(|w| *w != after)
        .nth(1)
        .unwrap_or_else(|| panic!("no {after:?} in {text:?}"))
}
