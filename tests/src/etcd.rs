//! A throwaway etcd cluster for tests: `members` etcd processes (etcd 3.4 or newer on PATH,
//! `scripts/etcd/install.sh`) on 127.0.0.1 with mutual TLS on clients and peers, in a fresh
//! temporary directory, killed (SIGKILL) when the [`EtcdCluster`] is dropped.
//!
//! Layout of [`EtcdCluster::dir`]:
//! * `pki/`: `ca.pem` (the anchor CA), `ca-key.pem`, `server.pem` + `server-key.pem` (every
//!   member's client-facing certificate: SAN DNS [`SERVER_NAME`] and IP 127.0.0.1, EKU
//!   serverAuth and clientAuth), `peer.pem` + `peer-key.pem` (the members' certificate between
//!   each other, same SANs and EKUs), `root.pem` + `root-key.pem` (a client certificate with
//!   CN=root, what [`EtcdCluster::etcdctl`] uses). Keys are PKCS#8 PEM, mode 0600; all ECDSA
//!   P-256, generated with `rcgen` (no openssl).
//! * `data/mN`: member N's data directory (N is the member's index, from 0);
//! * `logs/mN.log`: member N's stdout and stderr (zap JSON lines), appended across restarts.
//!
//! With `--client-cert-auth`, etcd takes a client certificate's CN as the user name once auth is
//! enabled ([`EtcdCluster::grant_prefix`]): that is how a wallet's enclave is confined to its
//! own prefix.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, PoisonError,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rand_core::{OsRng, RngCore as _};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber, SubjectPublicKeyInfo,
};

/// The DNS name in every member's server certificate (clients that do not dial by IP verify
/// this name).
pub const SERVER_NAME: &str = "etcd.anchor.test";

/// The anchor CA's common name.
const CA_NAME: &str = "x402-wallet test anchor CA";
/// How long [`EtcdCluster::start`] waits for every member to be healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Start attempts when a chosen port was taken by someone else in between.
const START_ATTEMPTS: usize = 3;
const DAY: Duration = Duration::from_secs(24 * 3600);
const INSTALL_HINT: &str = "run scripts/etcd/install.sh (scripts/test.sh does)";

/// One member: its name (`mN`), its two addresses, and its process while it runs.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Mutex<Option<Child>>,
}

/// A running etcd cluster of 1 to 5 members on 127.0.0.1 with mutual TLS (see the module
/// documentation for its files). Every member it started is killed (SIGKILL, by PID) and
/// reaped when it is dropped, then its directory is removed.
pub struct EtcdCluster {
    members: Vec<Member>,
    token: String,
    ca_cert_pem: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    auth_enabled: AtomicBool,
    // Last: removed after `Drop::drop` has killed the members.
    dir: tempfile::TempDir,
}

impl fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("dir", &self.dir.path())
            .field("client_endpoints", &self.client_endpoints())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Why one start attempt did not give a healthy cluster.
enum StartFailure {
    /// A member could not bind a port chosen for it (taken in between): worth another attempt.
    PortTaken(String),
    /// Anything else: the message to panic with.
    Fatal(String),
}

impl EtcdCluster {
    /// Starts `members` (1..=5) etcd processes in a fresh temporary directory (kept inside the
    /// struct) and waits until `etcdctl endpoint health` passes on all of them.
    ///
    /// Each member gets a free client port and a free peer port on 127.0.0.1 (bound on port 0,
    /// then closed), `--initial-cluster-state new` with a token unique to this cluster, mutual
    /// TLS on both sides (no `--cipher-suites`: Go's defaults, so TLS 1.3 and Ed25519 client
    /// certificates work), revision auto-compaction (keep 1000), heartbeat 100 ms and election
    /// timeout 1 s. When a chosen port was taken in between, the whole start is retried (3
    /// attempts).
    ///
    /// # Panics
    /// When `members` is not in 1..=5; when `etcd` or `etcdctl` is not on PATH ("etcd is not
    /// installed: run scripts/etcd/install.sh (scripts/test.sh does)"); when the cluster is not
    /// healthy within 30 s or a member exits while starting (with the tail of every member's
    /// log); on I/O errors writing its files.
    #[must_use]
    pub fn start(members: usize) -> Self {
        assert!(
            (1..=5).contains(&members),
            "an etcd test cluster has 1 to 5 members, not {members}"
        );
        for tool in ["etcd", "etcdctl"] {
            assert!(on_path(tool).is_some(), "{tool} is not installed: {INSTALL_HINT}");
        }
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let cluster = Self::spawn(members);
            match cluster.wait_started() {
                Ok(()) => return cluster,
                Err(StartFailure::PortTaken(logs)) => {
                    eprintln!("etcd start attempt {attempt}: a port was taken, retrying");
                    last = logs;
                }
                Err(StartFailure::Fatal(message)) => panic!("{message}"),
            }
            // `cluster` is dropped here: its members are killed before the next attempt.
        }
        panic!(
            "the etcd cluster did not start after {START_ATTEMPTS} attempts (ports taken)\n{last}"
        )
    }

    /// Writes the PKI and spawns every member (without waiting).
    fn spawn(members: usize) -> Self {
        let dir = tempfile::Builder::new().prefix("etcd-cluster-").tempdir().expect("temp dir");
        for sub in ["pki", "data", "logs"] {
            fs::create_dir_all(dir.path().join(sub)).expect("create cluster directories");
        }
        let (ca_params, ca_key, ca_cert_pem) = write_pki(&dir.path().join("pki"));
        let addrs = free_ports(2 * members);
        let members = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client: addrs[2 * i],
                peer: addrs[2 * i + 1],
                child: Mutex::new(None),
            })
            .collect();
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let token = format!(
            "wallet-e2e-{}-{}-{}",
            std::process::id(),
            SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let cluster = Self {
            members,
            token,
            ca_cert_pem,
            ca_params,
            ca_key,
            auth_enabled: AtomicBool::new(false),
            dir,
        };
        for i in 0..cluster.members.len() {
            let child = cluster.member_command(i, "new").spawn().expect("spawn etcd");
            *cluster.lock(i) = Some(child);
        }
        cluster
    }

    /// Waits until every member is healthy, or says why not.
    fn wait_started(&self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for i in 0..self.members.len() {
                if !self.is_running(i) {
                    let logs = self.log_tails();
                    let log = fs::read_to_string(self.log_path(i)).unwrap_or_default();
                    return Err(if log.contains("address already in use") {
                        StartFailure::PortTaken(logs)
                    } else {
                        StartFailure::Fatal(format!(
                            "etcd member {i} exited while the cluster was starting\n{logs}"
                        ))
                    });
                }
            }
            let all = self.members.iter().map(|m| m.client).collect::<Vec<_>>();
            if self
                .etcdctl_on(&all, &self.root_identity(), &["endpoint", "health"])
                .status
                .success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Fatal(format!(
                    "the etcd cluster was not healthy within {START_TIMEOUT:?}\n{}",
                    self.log_tails()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `127.0.0.1:port` of each member's client (gRPC) listener; the index is the member's.
    #[must_use]
    pub fn client_endpoints(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// The anchor CA certificate (PEM): every member's and client's certificate chains to it.
    #[must_use]
    pub fn ca_cert_pem(&self) -> String {
        self.ca_cert_pem.clone()
    }

    /// The anchor CA's private key (PKCS#8 PEM, ECDSA P-256), for tests that issue enclave
    /// client certificates with it.
    #[must_use]
    pub fn ca_key_pem(&self) -> String {
        self.ca_key.serialize_pem()
    }

    /// The cluster's temporary directory: certificates in `pki/`, data in `data/mN`, logs in
    /// `logs/mN.log` (see the module documentation).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `etcdctl` (`ETCDCTL_API=3`) with `args` against every live member (all members when
    /// none is live), as the root client certificate (CN=root), with `--cacert` the anchor CA,
    /// `--dial-timeout 2s --command-timeout 5s`. The flags come before `args`; a later
    /// `--command-timeout` in `args` overrides.
    ///
    /// # Panics
    /// When `etcdctl` cannot be run.
    #[must_use]
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_on(&self.live_endpoints(), &self.root_identity(), args)
    }

    /// [`Self::etcdctl`], as the client certificate `cert` with its key `key` (PEM files)
    /// instead of root's.
    ///
    /// # Panics
    /// When `etcdctl` cannot be run.
    #[must_use]
    pub fn etcdctl_as(&self, cert: &Path, key: &Path, args: &[&str]) -> Output {
        self.etcdctl_on(&self.live_endpoints(), &(cert.to_path_buf(), key.to_path_buf()), args)
    }

    /// [`Self::etcdctl`] that must succeed; returns its stdout.
    ///
    /// # Panics
    /// When etcdctl fails (with its stderr).
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills member `member` (SIGKILL) and waits for it; nothing happens when it is not running.
    ///
    /// # Panics
    /// When there is no such member.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.lock(member).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on its existing data directory, with the same flags and
    /// `--initial-cluster-state existing`; does not wait for it to be healthy
    /// ([`Self::wait_healthy`]).
    ///
    /// # Panics
    /// When there is no such member, it is still running, or etcd cannot be spawned.
    pub fn restart(&mut self, member: usize) {
        assert!(!self.is_running(member), "etcd member {member} is still running");
        let child = self.member_command(member, "existing").spawn().expect("spawn etcd");
        *self.lock(member) = Some(child);
    }

    /// Waits up to `timeout` until member `member` answers `etcdctl endpoint health`; false when
    /// it does not, or it is not running (or stops).
    ///
    /// # Panics
    /// When there is no such member.
    #[must_use]
    pub fn wait_healthy(&self, member: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let endpoint = [self.members[member].client];
        loop {
            if !self.is_running(member) {
                return false;
            }
            let probe = self.etcdctl_on(
                &endpoint,
                &self.root_identity(),
                &["endpoint", "health", "--command-timeout", "2s"],
            );
            if probe.status.success() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether member `member`'s process (started by this struct) is alive.
    ///
    /// # Panics
    /// When there is no such member.
    #[must_use]
    pub fn is_running(&self, member: usize) -> bool {
        let mut child = self.lock(member);
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            None => false,
            Some(Ok(Some(_)) | Err(_)) => {
                *child = None; // exited (reaped): no longer ours to kill
                false
            }
        }
    }

    /// The index of the current leader among the live members, from `etcdctl endpoint status
    /// -w json` (the member whose `member_id` equals the `leader` it reports); `None` when no
    /// live member reports itself as the leader.
    #[must_use]
    pub fn leader(&self) -> Option<usize> {
        let live = self.live_endpoints();
        let out = self.etcdctl_on(
            &live,
            &self.root_identity(),
            &["endpoint", "status", "-w", "json", "--command-timeout", "2s"],
        );
        // With an unreachable endpoint etcdctl exits non-zero but still prints the others.
        let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        statuses.as_array()?.iter().find_map(|s| {
            let status = &s["Status"];
            let member_id = status["header"]["member_id"].as_u64()?;
            if member_id == 0 || status["leader"].as_u64()? != member_id {
                return None;
            }
            let endpoint = s["Endpoint"].as_str()?;
            self.members.iter().position(|m| endpoint == format!("https://{}", m.client))
        })
    }

    /// Turns on etcd auth with a role per wallet: creates the user `root` (no password, role
    /// `root`) unless it exists; then the user `user` (no password: it authenticates with its
    /// client certificate, whose CN is `user`) and a role also named `user` with readwrite on
    /// every key starting with `prefix`, and grants that role to the user; finally `auth
    /// enable`, on the first call only. Calling it again for another wallet (or the same) is
    /// fine.
    ///
    /// # Panics
    /// When an etcdctl step fails.
    pub fn grant_prefix(&self, user: &str, prefix: &str) {
        if !self.auth_enabled.load(Ordering::SeqCst) {
            if !self.exists("user", "root") {
                self.etcdctl_ok(&["user", "add", "root", "--no-password"]);
            }
            self.etcdctl_ok(&["user", "grant-role", "root", "root"]);
        }
        if !self.exists("user", user) {
            self.etcdctl_ok(&["user", "add", user, "--no-password"]);
        }
        if !self.exists("role", user) {
            self.etcdctl_ok(&["role", "add", user]);
        }
        self.etcdctl_ok(&["role", "grant-permission", user, "--prefix=true", "readwrite", prefix]);
        self.etcdctl_ok(&["user", "grant-role", user, user]);
        if !self.auth_enabled.swap(true, Ordering::SeqCst) {
            self.etcdctl_ok(&["auth", "enable"]);
        }
    }

    /// Issues a client certificate (PEM) from the anchor CA for the public key `spki_der` (a DER
    /// SubjectPublicKeyInfo of a key type rcgen knows: Ed25519, ECDSA P-256, P-384…) with subject CN=`cn`, EKU
    /// clientAuth, key usage digitalSignature, a random serial, valid from 1 day ago to 1 year
    /// ahead. The key's owner need not be here: only the CA signs.
    ///
    /// # Panics
    /// When `spki_der` is not one of those keys.
    #[must_use]
    pub fn issue_client_cert(&self, cn: &str, spki_der: &[u8]) -> String {
        let key = SubjectPublicKeyInfo::from_der(spki_der)
            .unwrap_or_else(|e| panic!("not a DER SubjectPublicKeyInfo rcgen knows: {e}"));
        let mut params = leaf_params(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        params.signed_by(&key, &issuer).expect("sign the client certificate").pem()
    }

    /// The root client certificate and key files.
    fn root_identity(&self) -> (PathBuf, PathBuf) {
        let pki = self.dir.path().join("pki");
        (pki.join("root.pem"), pki.join("root-key.pem"))
    }

    fn live_endpoints(&self) -> Vec<SocketAddr> {
        let live = (0..self.members.len())
            .filter(|&i| self.is_running(i))
            .map(|i| self.members[i].client)
            .collect::<Vec<_>>();
        if live.is_empty() {
            self.client_endpoints()
        } else {
            live
        }
    }

    fn etcdctl_on(
        &self,
        endpoints: &[SocketAddr],
        identity: &(PathBuf, PathBuf),
        args: &[&str],
    ) -> Output {
        let endpoints =
            endpoints.iter().map(|a| format!("https://{a}")).collect::<Vec<_>>().join(",");
        without_etcd_env(&mut Command::new("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .arg("--cacert")
            .arg(self.dir.path().join("pki/ca.pem"))
            .arg("--cert")
            .arg(&identity.0)
            .arg("--key")
            .arg(&identity.1)
            .args(["--dial-timeout", "2s", "--command-timeout", "5s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run etcdctl: {e}: {INSTALL_HINT}"))
    }

    /// Whether `etcdctl user|role get NAME` finds it.
    fn exists(&self, kind: &str, name: &str) -> bool {
        let out = self.etcdctl(&[kind, "get", name]);
        if out.status.success() {
            return true;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not found"), "etcdctl {kind} get {name} failed: {stderr}");
        false
    }

    fn lock(&self, member: usize) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.members[member].child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log_path(&self, member: usize) -> PathBuf {
        self.dir.path().join("logs").join(format!("{}.log", self.members[member].name))
    }

    /// The last lines of every member's log, for a panic message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for i in 0..self.members.len() {
            let path = self.log_path(i);
            let log = fs::read_to_string(&path).unwrap_or_default();
            let lines = log.lines().collect::<Vec<_>>();
            out.push_str(&format!("--- {} (last 30 lines) ---\n", path.display()));
            for line in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// The command that runs member `i` with `--initial-cluster-state state`, its output
    /// appended to its log.
    fn member_command(&self, i: usize, state: &str) -> Command {
        let m = &self.members[i];
        let dir = self.dir.path();
        let pki = dir.join("pki");
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=https://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open the member's log");
        let mut cmd = Command::new("etcd");
        without_etcd_env(&mut cmd)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(dir.join("data").join(&m.name))
            .arg("--listen-client-urls")
            .arg(format!("https://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("https://{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("https://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("https://{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(pki.join("ca.pem"))
            .arg("--cert-file")
            .arg(pki.join("server.pem"))
            .arg("--key-file")
            .arg(pki.join("server-key.pem"))
            .arg("--peer-client-cert-auth")
            .arg("--peer-trusted-ca-file")
            .arg(pki.join("ca.pem"))
            .arg("--peer-cert-file")
            .arg(pki.join("peer.pem"))
            .arg("--peer-key-file")
            .arg(pki.join("peer-key.pem"))
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        cmd
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Removes `ETCD_*` and `ETCDCTL_*` variables of the caller's environment (etcd reads its flags
/// from them too, and refuses a flag given both ways).
fn without_etcd_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("ETCD_") || k.starts_with("ETCDCTL_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The first `name` in a PATH directory.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `n` distinct free ports on 127.0.0.1: bound together on port 0, then all closed.
fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"))
        .collect::<Vec<_>>();
    listeners.iter().map(|l| l.local_addr().expect("local address")).collect()
}

/// Parameters of an end-entity certificate with CN=`cn`: random serial, digitalSignature,
/// valid from 1 day ago to 1 year ahead (EKUs and SANs are the caller's).
fn leaf_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(random_serial());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, DAY, 365 * DAY);
    params
}

/// From `back` ago to `ahead` from now (rcgen takes the `time` crate's `OffsetDateTime`, built
/// here from the Unix epoch so this crate needs no `time` dependency of its own).
fn set_validity(params: &mut CertificateParams, back: Duration, ahead: Duration) {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch - back;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch + ahead;
}

/// 16 random bytes, positive (RFC 5280: at most 20 octets, non-negative).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Generates the PKI into `pki` (see the module documentation); returns the CA's parameters,
/// key and certificate PEM.
fn write_pki(pki: &Path) -> (CertificateParams, KeyPair, String) {
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::CommonName, CA_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.serial_number = Some(random_serial());
    set_validity(&mut ca_params, DAY, 2 * 365 * DAY);
    let ca_cert_pem = ca_params.self_signed(&ca_key).expect("self-sign the CA").pem();
    write_file(&pki.join("ca.pem"), &ca_cert_pem, 0o644);
    write_file(&pki.join("ca-key.pem"), &ca_key.serialize_pem(), 0o600);

    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let both = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    for (name, cn, ekus, sans) in [
        // etcd 3.4 also presents its server certificate as a client: its gRPC gateway dials the
        // member's own client port. Hence clientAuth too.
        ("server", SERVER_NAME, &both[..], true),
        ("peer", "etcd.anchor.test peer", &both[..], true),
        ("root", "root", &both[1..], false),
    ] {
        let key = KeyPair::generate().expect("generate a key");
        let mut params = leaf_params(cn);
        if sans {
            let san = CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
                .expect("SANs");
            params.subject_alt_names = san.subject_alt_names;
        }
        params.extended_key_usages = ekus.to_vec();
        let cert = params.signed_by(&key, &issuer).expect("sign a certificate");
        write_file(&pki.join(format!("{name}.pem")), &cert.pem(), 0o644);
        write_file(&pki.join(format!("{name}-key.pem")), &key.serialize_pem(), 0o600);
    }
    (ca_params, ca_key, ca_cert_pem)
}

fn write_file(path: &Path, contents: &str, mode: u32) {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(contents.as_bytes()).expect("write a PKI file");
}
