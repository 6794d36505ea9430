//! The boot configuration of an enclave image: the arguments (and the few environment
//! variables) that `wallet-enclave`, running as `/init` in the EIF, asks the parent instance for
//! at start-up (vsock port 7001; `wallet-gateway --serve-boot`).
//!
//! Wire format, one answer per connection, then end of stream: a JSON object
//! `{"args": ["--vsock-port", "5000", ...], "env": {"AWS_ACCESS_KEY_ID": "...", ...}}`.
//!
//! The enclave treats all of it as untrusted, as it treats command-line flags: whatever this
//! sends, the enclave refuses `--simulated`, and the KMS key and service id it ends up using are
//! in its attestation document, which `walletctl init` checks. The AWS credentials are the
//! parent's own (they sign the enclave's KMS calls; KMS releases the key to the attested
//! enclave only).

use std::{fmt, io, sync::Arc, time::Duration};

use tokio::io::AsyncWriteExt as _;
use zeroize::Zeroizing;

/// Environment variables passed to the enclave when set here: the credentials its KMS calls are
/// signed with.
pub const PASSED_ENV: &[&str] =
    &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];
/// This gateway's variable whose value becomes the enclave's `RUST_LOG`.
pub const ENCLAVE_LOG_ENV: &str = "WALLET_ENCLAVE_LOG";
/// How long one answer may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the enclave is told at boot. `Debug` shows the arguments and the names of the variables,
/// never their values.
pub struct BootConfig {
    args: Vec<String>,
    env: Vec<(String, Zeroizing<String>)>,
}

impl BootConfig {
    /// The arguments, as on the enclave's command line (without the program name).
    #[must_use]
    pub fn new(args: Vec<String>) -> Self {
        Self { args, env: Vec::new() }
    }

    /// Adds the variables of [`PASSED_ENV`] that `lookup` finds (non-empty), and
    /// [`ENCLAVE_LOG_ENV`]'s value as `RUST_LOG`.
    #[must_use]
    pub fn with_env(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        for name in PASSED_ENV {
            if let Some(v) = lookup(name).filter(|v| !v.is_empty()) {
                self.env.push(((*name).to_owned(), Zeroizing::new(v)));
            }
        }
        if let Some(v) = lookup(ENCLAVE_LOG_ENV).filter(|v| !v.is_empty()) {
            self.env.push(("RUST_LOG".to_owned(), Zeroizing::new(v)));
        }
        self
    }

    /// The names of the variables passed.
    pub fn env_names(&self) -> impl Iterator<Item = &str> {
        self.env.iter().map(|(k, _)| k.as_str())
    }

    /// The answer's bytes (wiped on drop: they hold the credentials).
    #[must_use]
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let env: serde_json::Map<String, serde_json::Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(String::clone(v))))
            .collect();
        let mut value = serde_json::json!({ "args": self.args, "env": env });
        let bytes = Zeroizing::new(serde_json::to_vec(&value).unwrap_or_default());
        // The credentials also sit in `value`'s strings: overwrite them before it drops.
        if let Some(serde_json::Value::Object(env)) = value.get_mut("env") {
            for v in env.values_mut() {
                if let serde_json::Value::String(s) = v {
                    zeroize::Zeroize::zeroize(s);
                }
            }
        }
        bytes
    }

    /// Writes the answer on one accepted stream, within [`WRITE_TIMEOUT`].
    async fn answer<S: tokio::io::AsyncWrite + Unpin>(self: Arc<Self>, mut stream: S) {
        let answer = self.to_json();
        let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await
        })
        .await;
        match sent {
            Ok(Ok(())) => tracing::info!(
                args = self.args.len(),
                env = ?self.env_names().collect::<Vec<_>>(),
                "boot configuration sent to the enclave"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "boot configuration: write failed"),
            Err(_) => tracing::warn!("boot configuration: the enclave did not read it in time"),
        }
    }

    /// Serves on a Unix socket at `path` (0600): every connection gets the answer, each on its
    /// own task (a peer that does not read delays nobody else). A socket file left at `path` is
    /// replaced; anything else there is an error.
    ///
    /// # Errors
    /// When the socket cannot be bound, or `path` holds something other than a socket.
    pub fn serve_unix(
        self,
        path: &std::path::Path,
    ) -> io::Result<impl std::future::Future<Output = ()>> {
        let listener = crate::bind_unix_0600(path)?;
        let config = Arc::new(self);
        Ok(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(Arc::clone(&config).answer(stream));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "boot configuration: accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }

    /// Serves on vsock `port` of this (parent) instance, answering only the enclave at context
    /// id `enclave_cid` (the credentials are for it; another enclave or a local process asking
    /// is refused and logged). Each connection on its own task.
    ///
    /// # Errors
    /// When the port cannot be bound.
    #[cfg(target_os = "linux")]
    pub fn serve_vsock(
        self,
        port: u32,
        enclave_cid: u32,
    ) -> io::Result<impl std::future::Future<Output = ()>> {
        let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
            tokio_vsock::VMADDR_CID_ANY,
            port,
        ))?;
        let config = Arc::new(self);
        Ok(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) if peer.cid() == enclave_cid => {
                        tokio::spawn(Arc::clone(&config).answer(stream));
                    }
                    Ok((_, peer)) => tracing::warn!(
                        peer_cid = peer.cid(),
                        enclave_cid,
                        "boot configuration: refused a peer that is not the enclave"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "boot configuration: accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }
}

impl fmt::Debug for BootConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootConfig")
            .field("args", &self.args)
            .field("env", &self.env_names().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("very-secret".into()),
            "AWS_SESSION_TOKEN" => Some(String::new()),
            "WALLET_ENCLAVE_LOG" => Some("debug".into()),
            "HOME" => Some("/root".into()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn serves_the_arguments_and_the_passed_variables_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.sock");
        let config = BootConfig::new(vec!["--vsock-port".into(), "5000".into()]).with_env(lookup);
        let shown = format!("{config:?}");
        assert!(
            shown.contains("AWS_SECRET_ACCESS_KEY") && !shown.contains("very-secret"),
            "{shown}"
        );
        let server = tokio::spawn(config.serve_unix(&path).unwrap());
        for _ in 0..2 {
            let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
            assert_eq!(
                v,
                serde_json::json!({
                    "args": ["--vsock-port", "5000"],
                    "env": {
                        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                        "AWS_SECRET_ACCESS_KEY": "very-secret",
                        "RUST_LOG": "debug"
                    }
                })
            );
        }
        server.abort();
    }

    /// A peer that connects and never reads does not hold up the enclave's own request.
    #[tokio::test]
    async fn a_silent_peer_delays_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.sock");
        let config = BootConfig::new(vec!["--x".into(); 20_000]);
        let server = tokio::spawn(config.serve_unix(&path).unwrap());
        let _silent = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got.len() > 100_000);
        server.abort();
    }

    #[tokio::test]
    async fn only_a_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(BootConfig::new(vec![]).serve_unix(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
