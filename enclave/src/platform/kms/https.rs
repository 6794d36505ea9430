//! One HTTPS/1.1 exchange with KMS over a host-relayed byte stream: TLS ends here, in the
//! enclave, against trust roots built into the binary.
//!
//! Trust roots are compiled in, never configured at run time: the host sets the enclave's flags,
//! and a host that could choose the root could stand in for KMS and choose the data key.
//! * Every build: the Amazon Trust Services roots that KMS endpoints chain to ([`AMAZON_ROOTS`]).
//! * Only when this enclave's own NSM signs under the project's TEST root (the simulated NSM, or
//!   QEMU's emulated one: [`crate::platform::TrustRoot`]): kms-sim's test CA
//!   (`kms-sim/testdata/ca.der`), whose private key is public in this repository. On real
//!   hardware the NSM signs under the AWS root and this CA is not trusted; where it is trusted,
//!   the emulator's operator holds the enclave's memory anyway.
//!
//! The response is bounded: [`MAX_HEAD`] bytes of status line and headers, [`MAX_BODY`] bytes
//! of body, framed by `Content-Length` or chunked transfer coding (anything else is refused),
//! at most [`MAX_HEADERS`] trailer lines. So is the time: the whole exchange (TLS handshake,
//! request, response) must end before a deadline ([`DeadlineStream`]).

use std::{
    fmt,
    io::{self, Read, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{pki_types::CertificateDer, ClientConfig, RootCertStore};

/// Largest response head (status line and headers), bytes.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest response body, bytes (KMS's answers are below 4 KiB).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Most response headers read, and most trailer lines after a chunked body.
pub(crate) const MAX_HEADERS: usize = 64;

/// The Amazon Trust Services roots (DER), as in Mozilla's root store (Debian `ca-certificates`
/// 20230311), with their SHA-256 fingerprints (checked by a test). KMS's certificates chain to
/// Amazon Root CA 1 (RSA); the others are AWS's published alternates and Starfield Services
/// Root G2, the cross-signer of the Amazon roots.
pub(crate) const AMAZON_ROOTS: &[(&str, &[u8], &str)] = &[
    (
        "Amazon Root CA 1",
        include_bytes!("roots/amazon-root-ca-1.der"),
        "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e",
    ),
    (
        "Amazon Root CA 2",
        include_bytes!("roots/amazon-root-ca-2.der"),
        "1ba5b2aa8c65401a82960118f80bec4f62304d83cec4713a19c39c011ea46db4",
    ),
    (
        "Amazon Root CA 3",
        include_bytes!("roots/amazon-root-ca-3.der"),
        "18ce6cfe7bf14e60b2e347b8dfe868cb31d02ebb3ada271569f50343b46db3a4",
    ),
    (
        "Amazon Root CA 4",
        include_bytes!("roots/amazon-root-ca-4.der"),
        "e35d28419ed02025cfa69038cd623962458da5c695fbdea3c22b0bfb25897092",
    ),
    (
        "Starfield Services Root Certificate Authority - G2",
        include_bytes!("roots/starfield-services-root-g2.der"),
        "568d6905a2c88708a4b3025190edcfedb1974a606a13c6e5290fcb2ae63edab5",
    ),
];

/// kms-sim's TEST CA (DER), trusted only by an enclave whose NSM signs under the test root.
pub(crate) const SIMULATED_KMS_TEST_CA: &[u8] =
    include_bytes!("../../../../kms-sim/testdata/ca.der");

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpsError {
    /// TLS refused the server (a certificate not from the built-in roots, a wrong name) or the
    /// session failed.
    #[error("TLS with KMS failed: {0}")]
    Tls(String),
    /// The stream broke, or the response is not HTTP/1.1 within bounds.
    #[error("bad HTTP response from KMS: {0}")]
    Http(String),
    /// The deadline passed before the exchange ended.
    #[error("the exchange with KMS did not end before its deadline")]
    Timeout,
}

/// The error a [`DeadlineStream`] fails with once its deadline has passed.
#[derive(Debug)]
struct DeadlinePassed;

impl fmt::Display for DeadlinePassed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the deadline of the exchange with KMS passed")
    }
}

impl std::error::Error for DeadlinePassed {}

fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, DeadlinePassed)
}

/// A relayed stream bounded by a deadline. Before every read, write and flush it checks the
/// time left, failing once there is none; on a Unix or TCP socket it also sets that time as
/// the socket's read and write timeout, so that a read blocked on a silent relay returns at the
/// deadline. A stream that drips bytes therefore fails at its first read past the deadline.
pub(crate) struct DeadlineStream {
    inner: Box<dyn super::ReadWrite + Send>,
    deadline: Instant,
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream").field("deadline", &self.deadline).finish_non_exhaustive()
    }
}

impl DeadlineStream {
    /// `inner`, bounded by `deadline`.
    pub(crate) fn new(inner: Box<dyn super::ReadWrite + Send>, deadline: Instant) -> Self {
        Self { inner, deadline }
    }

    /// Fails once the deadline has passed; otherwise sets the time left as the socket's
    /// timeouts, when the stream is a socket.
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(deadline_passed());
        }
        super::set_socket_timeouts(&*self.inner, left)?;
        Ok(())
    }

    /// A socket timeout at (or within a hair of) the deadline is the deadline's; an earlier
    /// one is the stream's own and stays what it is.
    fn check(&self, e: io::Error) -> io::Error {
        let timed_out = matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
        if timed_out && Instant::now() + Duration::from_millis(50) >= self.deadline {
            deadline_passed()
        } else {
            e
        }
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.inner.read(buf).map_err(|e| self.check(e))
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.inner.write(buf).map_err(|e| self.check(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.arm()?;
        self.inner.flush().map_err(|e| self.check(e))
    }
}

/// A response: status code and body (the headers are not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// 200, 400, ...
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// The TLS client configuration: ring, TLS 1.2 and 1.3, the built-in roots; kms-sim's test CA
/// too when `test_ca` (the NSM signs under the test root).
pub(crate) fn client_config(test_ca: bool) -> Result<Arc<ClientConfig>, HttpsError> {
    let mut roots = RootCertStore::empty();
    for (name, der, _) in AMAZON_ROOTS {
        roots
            .add(CertificateDer::from(*der))
            .map_err(|e| HttpsError::Tls(format!("built-in root {name}: {e}")))?;
    }
    if test_ca {
        roots
            .add(CertificateDer::from(SIMULATED_KMS_TEST_CA))
            .map_err(|e| HttpsError::Tls(format!("kms-sim test CA: {e}")))?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpsError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends `request` (a complete HTTP/1.1 request) over TLS to `server_name` on `stream`, and
/// reads the response, all before `deadline` ([`HttpsError::Timeout`] past it).
pub(crate) fn exchange(
    config: Arc<ClientConfig>,
    server_name: &str,
    stream: Box<dyn super::ReadWrite + Send>,
    request: &[u8],
    deadline: Instant,
) -> Result<Response, HttpsError> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| HttpsError::Tls(format!("server name {server_name:?}: {e}")))?;
    let conn =
        rustls::ClientConnection::new(config, name).map_err(|e| HttpsError::Tls(e.to_string()))?;
    let mut tls = rustls::StreamOwned::new(conn, DeadlineStream::new(stream, deadline));
    tls.write_all(request).and_then(|()| tls.flush()).map_err(io_error)?;
    read_response(&mut tls).map_err(|e| match e {
        ReadError::Io(e) => io_error(e),
        ReadError::Http(m) => HttpsError::Http(m),
    })
}

/// A TLS failure (rustls's error inside the `io::Error`), the deadline, or a broken stream.
fn io_error(e: io::Error) -> HttpsError {
    if e.get_ref().is_some_and(|inner| inner.is::<DeadlinePassed>()) {
        return HttpsError::Timeout;
    }
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(cert)) => HttpsError::Tls(format!(
            "the server's certificate is refused ({cert:?}): it is not KMS under the built-in \
             roots (a host impersonating KMS?)"
        )),
        Some(tls) => HttpsError::Tls(tls.to_string()),
        None => HttpsError::Http(format!("stream: {e}")),
    }
}

/// A failure of [`read_response`].
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream failed (or ended early: `UnexpectedEof`).
    Io(io::Error),
    /// Not a bounded HTTP/1.1 response.
    Http(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

fn http(m: impl Into<String>) -> ReadError {
    ReadError::Http(m.into())
}

/// Reads one HTTP/1.1 response from `r`, within the bounds.
pub(crate) fn read_response(r: &mut impl Read) -> Result<Response, ReadError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (status, framing, head_len) = loop {
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.ok_or_else(|| http("no status code"))?;
                if resp.version != Some(1) {
                    return Err(http("not HTTP/1.1"));
                }
                if !(200..600).contains(&status) {
                    return Err(http(format!("unexpected status {status}")));
                }
                break (status, framing(resp.headers)?, len);
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(http("response head too large"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(http(format!("response head: {e}"))),
        }
    };
    let mut rest = buf.split_off(head_len);
    let body = match framing {
        Framing::Length(len) => {
            if rest.len() > len {
                return Err(http("more bytes than Content-Length"));
            }
            let have = rest.len();
            rest.resize(len, 0);
            r.read_exact(&mut rest[have..])?;
            rest
        }
        Framing::Chunked => dechunk(r, &mut rest)?,
    };
    Ok(Response { status, body })
}

/// How the body is delimited.
enum Framing {
    Length(usize),
    Chunked,
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, ReadError> {
    let mut length = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| http("bad Content-Length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(http("conflicting Content-Length headers"));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !h.value.eq_ignore_ascii_case(b"chunked") {
                return Err(http("unsupported Transfer-Encoding"));
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err(http("both Content-Length and chunked")),
        (Some(len), false) if len > MAX_BODY => Err(http("body too large")),
        (Some(len), false) => Ok(Framing::Length(len)),
        (None, true) => Ok(Framing::Chunked),
        (None, false) => Err(http("no Content-Length")),
    }
}

/// Reads a chunked body; `pending` holds bytes already read past the head.
fn dechunk(r: &mut impl Read, pending: &mut Vec<u8>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, pending)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| http("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line: as many as headers at most.
            for _ in 0..=MAX_HEADERS {
                if read_line(r, pending)?.is_empty() {
                    return Ok(body);
                }
            }
            return Err(http("too many trailer lines"));
        }
        if size > MAX_BODY - body.len() {
            return Err(http("body too large"));
        }
        take(r, pending, size + 2)?;
        if !pending[size..size + 2].eq(b"\r\n") {
            return Err(http("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&pending[..size]);
        pending.drain(..size + 2);
    }
}

/// Ensures `pending` holds at least `n` bytes.
fn take(r: &mut impl Read, pending: &mut Vec<u8>, n: usize) -> Result<(), ReadError> {
    let mut chunk = [0u8; 4096];
    while pending.len() < n {
        let got = r.read(&mut chunk)?;
        if got == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        pending.extend_from_slice(&chunk[..got]);
        if pending.len() > MAX_BODY + MAX_HEAD {
            return Err(http("chunked body too large"));
        }
    }
    Ok(())
}

/// One CRLF-terminated line (at most 1 KiB) from `pending`, then from `r`.
fn read_line(r: &mut impl Read, pending: &mut Vec<u8>) -> Result<String, ReadError> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8(pending[..i].to_vec()).map_err(|_| http("bad line"))?;
            pending.drain(..i + 2);
            return Ok(line);
        }
        if pending.len() > 1024 {
            return Err(http("line too long"));
        }
        let got = r.read(&mut chunk)?;
        if got == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        pending.extend_from_slice(&chunk[..got]);
    }
}
