//! Test support: start the real binaries (simulated enclave + gateway) in a temporary data
//! directory, talk to them over gRPC or through `walletctl`, and kill them on drop.
//!
//! Storage: by default the enclave keeps its state in files under the data directory. With
//! `WALLET_E2E_STORAGE=host` (or [`StackOptions::storage`]), every stack keeps it on host storage
//! instead: the gateway serves it (`--serve-storage unix:DIR/storage.sock`, files in the same data
//! directory) and the enclave uses it (`--host-storage`), as a Nitro enclave would over vsock.

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
pub mod anchor;
pub mod etcd;
pub mod group;
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

/// Where the enclave keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Files in the enclave's data directory (sled, the journal, the audit log, the head).
    #[default]
    Local,
    /// Host storage served by the gateway (`--serve-storage`), used by the enclave
    /// (`--host-storage`), over a Unix socket: the state log, the journal, the audit log and the
    /// head as files in the gateway's data directory (the same directory in these tests).
    Host,
}

impl Storage {
    /// From `WALLET_E2E_STORAGE`: `host` for [`Storage::Host`]; unset, empty or `local` for
    /// [`Storage::Local`].
    ///
    /// # Panics
    /// On any other value (a typo must not silently test the default).
    #[must_use]
    pub fn from_env() -> Self {
        match std::env::var("WALLET_E2E_STORAGE").as_deref() {
            Ok("host") => Self::Host,
            Ok("" | "local") | Err(_) => Self::Local,
            Ok(other) => panic!("WALLET_E2E_STORAGE={other:?}: expected host or local"),
        }
    }
}

/// The Unix socket the gateway serves storage on, for a stack in `dir`.
#[must_use]
pub fn storage_socket(dir: &Path) -> PathBuf {
    dir.join("storage.sock")
}

/// How to start a [`Stack`] ([`Stack::start_with`]); the default is [`Stack::start`]'s.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Where the enclave keeps its state [default: `WALLET_E2E_STORAGE`, see [`Storage::from_env`]].
    pub storage: Option<Storage>,
    /// With host storage, the Unix socket the gateway serves it on [default:
    /// [`storage_socket`] of the stack's directory].
    pub storage_socket: Option<PathBuf>,
    /// With host storage, the Unix socket the enclave connects to [default: the gateway's]: a
    /// test puts a proxy there, forwarding to the gateway's.
    pub enclave_storage_socket: Option<PathBuf>,
    /// `RUST_LOG` for both processes [default: `info`].
    pub log_level: Option<String>,
    /// Start the enclave under `ulimit -n N` (its own descriptor limit, set in a shell that then
    /// `exec`s it; nothing system-wide changes).
    pub enclave_nofile: Option<u32>,
    /// Start the gateway under `ulimit -n N`, likewise.
    pub gateway_nofile: Option<u32>,
    /// Extra arguments for `wallet-gateway` (for example its limits).
    pub gateway_args: Vec<String>,
    /// Extra arguments for `wallet-enclave` (for example `--anchor-relay`).
    pub enclave_args: Vec<String>,
}

impl StackOptions {
    /// The socket the enclave uses on host storage, when not the default.
    fn enclave_socket(&self) -> Option<&Path> {
        self.enclave_storage_socket.as_deref().or(self.storage_socket.as_deref())
    }
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
    storage: Storage,
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
        let storage = options.storage.unwrap_or_else(Storage::from_env);
        let dir = tempfile::tempdir().expect("tempdir");
        let (enclave, gateway, url) = match storage {
            Storage::Local => {
                let enclave = start_enclave_with(
                    dir.path(),
                    level,
                    options.enclave_nofile,
                    &EnclaveStorage::Local,
                    &options.enclave_args,
                );
                let (gateway, url) = start_gateway_with(
                    dir.path(),
                    level,
                    options.gateway_nofile,
                    &options.gateway_args,
                );
                (enclave, gateway, url)
            }
            // The host first: the enclave opens its state through it.
            Storage::Host => {
                let served =
                    options.storage_socket.clone().unwrap_or_else(|| storage_socket(dir.path()));
                let (gateway, url) = start_gateway_on(
                    dir.path(),
                    level,
                    options.gateway_nofile,
                    &options.gateway_args,
                    Some(&served),
                );
                let enclave = start_enclave_with(
                    dir.path(),
                    level,
                    options.enclave_nofile,
                    &EnclaveStorage::host(dir.path(), options.enclave_socket()),
                    &options.enclave_args,
                );
                (enclave, gateway, url)
            }
        };
        let home = dir.path().join("home");
        let init = Command::new(bin("walletctl"))
            .args(["init", "--simulated"])
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
            storage,
        }
    }

    /// Where this stack's enclave keeps its state.
    #[must_use]
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// How this stack's enclave is told where its state is.
    fn enclave_storage(&self) -> EnclaveStorage {
        match self.storage {
            Storage::Local => EnclaveStorage::Local,
            Storage::Host => EnclaveStorage::host(self.dir.path(), self.options.enclave_socket()),
        }
    }

    /// Opens the stopped enclave's state store with the enclave's own code, whatever the
    /// storage (sled in `DATA/state`, or the host's `DATA/state.log`), to read what is at rest.
    /// Stop the enclave first.
    ///
    /// # Panics
    /// When the key file or the store cannot be opened.
    #[must_use]
    pub fn open_state_store(&self) -> Box<dyn wallet_enclave::platform::StateStore> {
        let data = self.data_dir();
        let sealer =
            wallet_enclave::platform::simulated::sealer_from_key_file(&data.join("sealing.key"))
                .expect("sealing key");
        match self.storage {
            Storage::Local => Box::new(
                wallet_enclave::store::Store::open(&data.join("state"), sealer).expect("store"),
            ),
            Storage::Host => Box::new(
                wallet_enclave::logstore::LogStore::open(
                    wallet_enclave::hostfile::LocalFile::open(&data.join("state.log"))
                        .expect("state.log"),
                    sealer,
                    0,
                )
                .expect("state log"),
            ),
        }
    }

    /// Starts a second enclave on this stack's state (local files or host storage, as the
    /// stack's; the stack's own enclave must be stopped) on another socket, and returns its
    /// stderr: it must refuse to start.
    ///
    /// # Panics
    /// When it starts (serves) instead, or cannot be run.
    #[must_use]
    pub fn enclave_refusal(&self) -> String {
        let sock = self.dir.path().join("refused.sock");
        let mut cmd = Command::new(bin("wallet-enclave"));
        cmd.args(["--simulated", "--data-dir"])
            .arg(self.data_dir())
            .arg("--socket")
            .arg(&sock)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let EnclaveStorage::Host(addr) = self.enclave_storage() {
            cmd.arg("--host-storage").arg(addr);
        }
        let mut child = ChildGuard(cmd.spawn().expect("spawn enclave"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                assert!(!status.success(), "the enclave exited 0");
                let mut err = String::new();
                if let Some(mut e) = child.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return err;
            }
            assert!(!sock.exists(), "the enclave started on this state (it should have refused)");
            assert!(Instant::now() < deadline, "the enclave neither started nor refused");
            std::thread::sleep(Duration::from_millis(20));
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
        self.start_enclave_again();
    }

    /// Starts the enclave again (after [`ChildGuard::kill`] or [`ChildGuard::terminate`] of
    /// [`Self::enclave`]) on whatever state its directory now holds, with this stack's options.
    pub fn start_enclave_again(&mut self) {
        self.enclave = start_enclave_with(
            self.dir.path(),
            "info",
            self.options.enclave_nofile,
            &self.enclave_storage(),
            &self.options.enclave_args,
        );
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

/// [`start_enclave`] under `ulimit -n nofile` when given. With `WALLET_E2E_STORAGE=host`, on
/// host storage at [`storage_socket`]: when no gateway serves it yet, the enclave is left
/// waiting for it (up to 30 s), and [`start_gateway`] on the same `dir` waits for the enclave.
///
/// # Panics
/// When it does not open its socket within 20 s.
#[must_use]
pub fn start_enclave_limited(dir: &Path, log_level: &str, nofile: Option<u32>) -> ChildGuard {
    let storage = match Storage::from_env() {
        Storage::Local => EnclaveStorage::Local,
        Storage::Host => EnclaveStorage::host(dir, None),
    };
    start_enclave_on(dir, log_level, nofile, &storage)
}

/// How an enclave is told where its state is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnclaveStorage {
    /// Files in `DIR/data`.
    Local,
    /// Host storage at this address (`--host-storage`).
    Host(String),
}

impl EnclaveStorage {
    /// Host storage at `socket`, or else at [`storage_socket`] of `dir`.
    #[must_use]
    pub fn host(dir: &Path, socket: Option<&Path>) -> Self {
        let socket = socket.map_or_else(|| storage_socket(dir), Path::to_path_buf);
        Self::Host(format!("unix:{}", socket.display()))
    }
}

/// A marker left in `dir` by an enclave started on host storage before its host: the gateway
/// started next waits for the enclave.
fn pending_marker(dir: &Path) -> PathBuf {
    dir.join("enclave.pending")
}

/// Starts the simulated enclave on `DIR/data` (its key file, and its state unless on host
/// storage), logging to `DIR/enclave.log`, under `ulimit -n nofile` when given. On host storage
/// whose socket does not exist yet, returns without waiting (see [`start_enclave_limited`]).
///
/// # Panics
/// When it does not open its socket within 20 s.
#[must_use]
pub fn start_enclave_on(
    dir: &Path,
    log_level: &str,
    nofile: Option<u32>,
    storage: &EnclaveStorage,
) -> ChildGuard {
    start_enclave_with(dir, log_level, nofile, storage, &[])
}

/// [`start_enclave_on`] with extra arguments.
///
/// # Panics
/// When it does not open its socket within 20 s.
#[must_use]
pub fn start_enclave_with(
    dir: &Path,
    log_level: &str,
    nofile: Option<u32>,
    storage: &EnclaveStorage,
    extra_args: &[String],
) -> ChildGuard {
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
        .args(match storage {
            EnclaveStorage::Local => Vec::new(),
            EnclaveStorage::Host(addr) => vec!["--host-storage".to_owned(), addr.clone()],
        })
        .args(extra_args)
        .env("RUST_LOG", std::env::var("WALLET_TEST_LOG").unwrap_or_else(|_| log_level.to_owned()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn enclave");
    let mut guard = ChildGuard(child);
    if let EnclaveStorage::Host(addr) = storage {
        let socket = Path::new(addr.strip_prefix("unix:").unwrap_or(addr));
        if !socket.exists() {
            // No host yet: the gateway started next (on `dir`) waits for this enclave.
            std::fs::write(pending_marker(dir), b"").expect("marker");
            return guard;
        }
    }
    // WALLET_E2E_START_SECS: how long a start may take (default 20 s; the scale measurements
    // start enclaves with long histories).
    let wait = std::env::var("WALLET_E2E_START_SECS").ok().and_then(|v| v.parse().ok());
    let deadline = Instant::now() + Duration::from_secs(wait.unwrap_or(20));
    while !sock.exists() {
        if let Ok(Some(status)) = guard.0.try_wait() {
            let log = std::fs::read_to_string(dir.join("enclave.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            panic!(
                "enclave exited with {status}; see {}; last lines:\n{}",
                dir.join("enclave.log").display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
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
    let served = (Storage::from_env() == Storage::Host).then(|| storage_socket(dir));
    start_gateway_on(dir, level, nofile, extra_args, served.as_deref())
}

/// [`start_gateway_with`], serving the enclave's storage on the Unix socket `serve_storage`
/// when given; an enclave started before it on `dir` and waiting for its host is waited for.
///
/// # Panics
/// When it does not announce its address, or a waiting enclave does not start within 20 s.
#[must_use]
pub fn start_gateway_on(
    dir: &Path,
    level: &str,
    nofile: Option<u32>,
    extra_args: &[String],
    serve_storage: Option<&Path>,
) -> (ChildGuard, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .expect("log file");
    let child = command_limited(&bin("wallet-gateway"), nofile)
        .args(["--listen", "127.0.0.1:0", "--enclave-socket"])
        .arg(dir.join("enclave.sock"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(serve_storage.map_or_else(Vec::new, |socket| {
            vec!["--serve-storage".to_owned(), format!("unix:{}", socket.display())]
        }))
        .args(extra_args)
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn gateway");
    let (guard, url) = announced(child, dir);
    if pending_marker(dir).exists() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dir.join("enclave.sock").exists() {
            assert!(
                Instant::now() < deadline,
                "the enclave waiting for host storage did not start; see {}",
                dir.join("enclave.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(pending_marker(dir));
    }
    (guard, url)
}

/// The reason code (`x-wallet-reason`) of a refused call; empty when it has none.
#[must_use]
pub fn reason(s: &tonic::Status) -> String {
    s.metadata().get("x-wallet-reason").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// The URL a gateway just started announces on its first line of stdout.
///
/// # Panics
/// When it exits or announces something else (the tail of `dir/gateway.log` is shown).
fn announced(mut child: Child, dir: &Path) -> (ChildGuard, String) {
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("gateway announces its address");
    let url = line.trim().rsplit(' ').next().expect("url").to_owned();
    if !url.starts_with("http://127.0.0.1:") {
        let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        panic!(
            "unexpected gateway line {line:?}; gateway.log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    (guard, url)
}

/// A gateway in front of the members of one group (`--enclave` once per socket), on an
/// ephemeral loopback port, logging to `dir/gateway.log`.
///
/// # Panics
/// When it does not announce its address.
#[must_use]
pub fn start_group_gateway(dir: &Path, members: &[PathBuf]) -> (ChildGuard, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .expect("log file");
    let mut cmd = Command::new(bin("wallet-gateway"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.join("data"));
    for m in members {
        cmd.arg("--enclave").arg(m);
    }
    let child = cmd
        .env("RUST_LOG", "info")
        .env_remove("WALLET_ENCLAVE_SOCKET")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn gateway");
    announced(child, dir)
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

/// Starts the simulated enclave on `DIR/data` as [`start_enclave_with`] does (logging to
/// `DIR/enclave.log`, no descriptor limit), but waits up to `wait` for its socket and returns an
/// error instead of panicking: for long runs (the soak), whose enclave reads a long history at
/// start-up.
///
/// # Errors
/// When it exits before opening its socket, or does not open it within `wait` (it is then
/// killed), with the tail of its log.
pub fn start_enclave_patiently(
    dir: &Path,
    log_level: &str,
    storage: &EnclaveStorage,
    extra_args: &[String],
    wait: Duration,
) -> Result<ChildGuard, String> {
    let data = dir.join("data");
    let sock = dir.join("enclave.sock");
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("enclave.log"))
        .map_err(|e| format!("enclave log: {e}"))?;
    let child = Command::new(bin("wallet-enclave"))
        .args(["--simulated", "--data-dir"])
        .arg(&data)
        .arg("--socket")
        .arg(&sock)
        .args(match storage {
            EnclaveStorage::Local => Vec::new(),
            EnclaveStorage::Host(addr) => vec!["--host-storage".to_owned(), addr.clone()],
        })
        .args(extra_args)
        .env("RUST_LOG", std::env::var("WALLET_TEST_LOG").unwrap_or_else(|_| log_level.to_owned()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn enclave: {e}"))?;
    let mut guard = ChildGuard(child);
    let tail = || {
        let log = std::fs::read_to_string(dir.join("enclave.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let deadline = Instant::now() + wait;
    while !sock.exists() {
        if let Ok(Some(status)) = guard.0.try_wait() {
            return Err(format!("the enclave exited with {status}; its log ends:\n{}", tail()));
        }
        if Instant::now() >= deadline {
            guard.kill();
            return Err(format!(
                "the enclave did not open its socket within {} s; its log ends:\n{}",
                wait.as_secs(),
                tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(guard)
}

/// Resident set (`VmRSS`, KiB) and open descriptors (entries of `/proc/PID/fd`) of a process;
/// `None` when it is gone (or not readable).
#[must_use]
pub fn rss_and_fds(pid: u32) -> Option<(u64, u64)> {
    let rss = status_kib(pid, "VmRSS:")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), KiB; `None` when the process is gone.
#[must_use]
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// (VmRSS, VmHWM) of a process, KiB (0 when unknown).
#[must_use]
pub fn memory_kib(pid: u32) -> (u64, u64) {
    (status_kib(pid, "VmRSS:").unwrap_or(0), status_kib(pid, "VmHWM:").unwrap_or(0))
}
