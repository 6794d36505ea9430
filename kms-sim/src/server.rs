//! The HTTPS front of the sim: TLS (rustls, ring) on a TCP listener, one request per
//! connection, a thread per connection, at most [`MAX_CONNECTIONS`] at once.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    ServerConfig,
};

use crate::{Reply, Sim, MAX_REQUEST_BODY};

/// The test CA's certificate (DER): what a client of the sim must trust.
pub const TEST_CA_DER: &[u8] = include_bytes!("../testdata/ca.der");
/// The test server certificate (DER) for `kms.us-east-1.amazonaws.com`, `localhost`, 127.0.0.1.
pub const TEST_SERVER_CERT_DER: &[u8] = include_bytes!("../testdata/server.der");
/// Its private key (PKCS#8 DER). Public test material.
pub const TEST_SERVER_KEY_DER: &[u8] = include_bytes!("../testdata/server.key.der");
/// A certificate for the same names from another CA (what a host faking KMS could present).
pub const ROGUE_SERVER_CERT_DER: &[u8] = include_bytes!("../testdata/rogue-server.der");
/// Its private key (PKCS#8 DER).
pub const ROGUE_SERVER_KEY_DER: &[u8] = include_bytes!("../testdata/rogue-server.key.der");

/// Connections served at once; more are closed.
pub const MAX_CONNECTIONS: usize = 32;
/// Largest request head, bytes.
const MAX_HEAD: usize = 16 * 1024;
/// Read and write timeout per connection.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS server configuration presenting `cert_chain` (DER, leaf first) with `key_pkcs8`.
///
/// # Errors
/// When rustls refuses the certificate or key.
pub fn tls_config(
    cert_chain: &[&[u8]],
    key_pkcs8: &[u8],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let chain = cert_chain.iter().map(|c| CertificateDer::from(c.to_vec())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    Ok(Arc::new(
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?,
    ))
}

/// The test server configuration (the certificate under the test CA).
///
/// # Panics
/// Never with the committed test certificate.
#[must_use]
pub fn test_tls_config() -> Arc<ServerConfig> {
    tls_config(&[TEST_SERVER_CERT_DER], TEST_SERVER_KEY_DER)
        .expect("the committed test certificate")
}

/// A running HTTPS server; stopped when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `sim` on `listen` (e.g. `127.0.0.1:0`) with the test certificate.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub fn start(sim: Arc<Sim>, listen: &str) -> io::Result<Self> {
        Self::start_with(sim, TcpListener::bind(listen)?, test_tls_config())
    }

    /// Serves `sim` on `listener` with `tls`.
    ///
    /// # Errors
    /// When the listener's address cannot be read.
    pub fn start_with(
        sim: Arc<Sim>,
        listener: TcpListener,
        tls: Arc<ServerConfig>,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (sim, tls, active) = (Arc::clone(&sim), Arc::clone(&tls), Arc::clone(&active));
                std::thread::spawn(move || {
                    let _ = serve_one(&sim, tls, stream);
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self { addr, stop, thread: Some(thread) })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bad_request() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "bad request")
}

/// One TLS connection, one request.
fn serve_one(sim: &Sim, tls: Arc<ServerConfig>, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (method, path, headers, head_len, len) = loop {
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            return Err(bad_request());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut raw);
        match req.parse(&buf).map_err(|_| bad_request())? {
            httparse::Status::Complete(head_len) => {
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let len = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .filter(|l| *l <= MAX_REQUEST_BODY)
                    .ok_or_else(bad_request)?;
                break (
                    req.method.unwrap_or_default().to_owned(),
                    req.path.unwrap_or_default().to_owned(),
                    headers,
                    head_len,
                    len,
                );
            }
            httparse::Status::Partial if buf.len() > MAX_HEAD => return Err(bad_request()),
            httparse::Status::Partial => {}
        }
    };
    let mut body = buf.split_off(head_len);
    if body.len() > len {
        return Err(bad_request());
    }
    let have = body.len();
    body.resize(len, 0);
    tls.read_exact(&mut body[have..])?;
    let target = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-target"))
        .map_or("-", |(_, v)| v.as_str())
        .to_owned();
    let recipient = serde_json::from_slice::<serde_json::Value>(&body)
        .is_ok_and(|v| v.get("Recipient").is_some_and(|r| !r.is_null()));
    let Reply { status, body } = sim.handle(&method, &path, &headers, &body);
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    // One line per request on stderr (what a CloudTrail entry would say): the operation, whether
    // it carried a Recipient attestation, and the outcome.
    let outcome = if status == 200 {
        "allowed".to_owned()
    } else {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("__type").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"))
    };
    eprintln!(
        "wallet-kms-sim: {target} recipient={} -> {outcome}",
        if recipient { "attested" } else { "none" }
    );
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())?;
    tls.write_all(&body)?;
    tls.conn.send_close_notify();
    tls.flush()
}
