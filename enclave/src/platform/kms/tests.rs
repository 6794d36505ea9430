//! Tests of the KMS client against fake servers in this process (the full flow against kms-sim,
//! with real attestation documents and the host relay, is in `kms-sim/tests`).

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

use super::*;
use crate::platform::{Mode, SystemClock, TrustRoot};

const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const TEST_SERVER: &[u8] = include_bytes!("../../../../kms-sim/testdata/server.der");
const TEST_SERVER_KEY: &[u8] = include_bytes!("../../../../kms-sim/testdata/server.key.der");
const ROGUE_SERVER: &[u8] = include_bytes!("../../../../kms-sim/testdata/rogue-server.der");
const ROGUE_SERVER_KEY: &[u8] = include_bytes!("../../../../kms-sim/testdata/rogue-server.key.der");

/// An NSM whose "documents" are a fixed string (the fake servers here do not verify them).
#[derive(Debug, Default)]
struct FakeNsm;

impl Nsm for FakeNsm {
    fn mode(&self) -> Mode {
        Mode::Simulated
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, buf)
            .map_err(|e| NsmError::Device(e.to_string()))
    }
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        _nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        assert_eq!(user_data, Some(ATTESTATION_USER_DATA));
        assert!(public_key.is_some_and(|k| k.len() < 1024));
        Ok(b"fake attestation document".to_vec())
    }
    fn trust_root(&self) -> TrustRoot {
        TrustRoot::SimulatedTest
    }
}

/// What the fake server saw: target and JSON body of each request, and the raw head.
#[derive(Debug, Default, Clone)]
struct Seen(Arc<Mutex<Vec<(String, Value, String)>>>);

/// A connector to a fake "KMS" presenting `cert`; `respond(target, body)` gives the raw HTTP
/// response bytes.
fn fake_kms(
    cert: &'static [u8],
    key: &'static [u8],
    respond: impl Fn(&str, &Value) -> Vec<u8> + Send + Sync + 'static,
) -> (Connector, Seen) {
    let seen = Seen::default();
    let respond = Arc::new(respond);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .unwrap(),
    );
    let seen2 = seen.clone();
    let connector: Connector = Box::new(move || {
        let (client, server) = UnixStream::pair()?;
        let (config, respond, seen) = (Arc::clone(&config), Arc::clone(&respond), seen2.clone());
        std::thread::spawn(move || {
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, server);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then Content-Length bytes of body (a failed handshake ends the thread).
            let (head, body) = loop {
                let Ok(n) = tls.read(&mut chunk) else { return };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8(buf[..i].to_vec()).unwrap();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    while buf.len() < i + 4 + len {
                        let n = tls.read(&mut chunk).unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break (head, buf[i + 4..i + 4 + len].to_vec());
                }
            };
            let target = head
                .lines()
                .find_map(|l| l.strip_prefix("X-Amz-Target: "))
                .unwrap_or_default()
                .to_owned();
            let body: Value = serde_json::from_slice(&body).unwrap();
            let response = respond(&target, &body);
            seen.0.lock().unwrap().push((target, body, head));
            let _ = tls.write_all(&response);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        Ok(Box::new(client) as Box<dyn ReadWrite + Send>)
    });
    (connector, seen)
}

fn http_json(status: u16, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn source(connector: Connector, store: MemoryKeyStore) -> KmsSealingKey {
    source_with_timeout(connector, store, DEFAULT_TIMEOUT)
}

fn source_with_timeout(
    connector: Connector,
    store: MemoryKeyStore,
    timeout: Duration,
) -> KmsSealingKey {
    KmsSealingKey::new(
        KmsConfig { timeout, ..KmsConfig::new("us-east-1", KEY_ARN, "wallet-test") },
        AwsCredentials::new("AKIDEXAMPLE", SECRET, Some("session-token".into())),
        connector,
        Arc::new(FakeNsm),
        Arc::new(SystemClock),
        Box::new(store),
    )
    .unwrap()
}

/// The same fake NSM, signing (so it says) under the given root.
#[derive(Debug)]
struct RootedNsm(TrustRoot);

impl Nsm for RootedNsm {
    fn mode(&self) -> Mode {
        Mode::Nitro
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        FakeNsm.fill_random(buf)
    }
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        FakeNsm.attest(user_data, nonce, public_key)
    }
    fn trust_root(&self) -> TrustRoot {
        self.0
    }
}

/// On real hardware (an NSM signing under the AWS root) kms-sim's TEST CA is no trust root: a
/// server with a kms-sim certificate is refused before the request is sent. Under the test roots
/// (simulated, emulated) the same server is reached.
#[test]
fn kms_test_ca_is_never_trusted_on_real_hardware() {
    let reached = |root: TrustRoot| {
        let (connector, seen) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}".to_vec()
        });
        let key = KmsSealingKey::new(
            KmsConfig::new("us-east-1", KEY_ARN, "wallet-test"),
            AwsCredentials::new("AKIDEXAMPLE", SECRET, None),
            connector,
            Arc::new(RootedNsm(root)),
            Arc::new(SystemClock),
            Box::new(MemoryKeyStore::new()),
        )
        .unwrap();
        let err = key.data_key().unwrap_err();
        let was_tls = matches!(&err, KmsError::Tls(_));
        let requests = seen.0.lock().unwrap().len();
        (was_tls, requests)
    };
    assert_eq!(reached(TrustRoot::AwsNitro), (true, 0), "real hardware must refuse the test CA");
    for root in [TrustRoot::SimulatedTest, TrustRoot::EmulatedTest] {
        let (was_tls, requests) = reached(root);
        assert!(!was_tls && requests == 1, "{root:?}: ({was_tls}, {requests})");
    }
}

#[test]
fn kms_refuses_a_server_outside_the_built_in_roots() {
    // A host faking KMS with a certificate for the right name from its own CA: TLS refuses it
    // before a byte of the request is sent.
    let (connector, seen) = fake_kms(ROGUE_SERVER, ROGUE_SERVER_KEY, |_, _| unreachable!());
    let store = MemoryKeyStore::new();
    let err = source(connector, store.clone()).data_key().unwrap_err();
    assert!(
        matches!(&err, KmsError::Tls(m) if m.contains("not KMS under the built-in roots")),
        "{err}"
    );
    assert!(seen.0.lock().unwrap().is_empty());
    assert_eq!(store.get(), None);
}

#[test]
fn kms_refuses_an_answer_carrying_plaintext() {
    // Even from a server the roots accept: KMS never returns Plaintext to a Recipient request.
    let (connector, _) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
        http_json(
            200,
            &json!({
                "KeyId": KEY_ARN,
                "Plaintext": B64.encode([7u8; 32]),
                "CiphertextBlob": B64.encode(b"blob"),
            }),
        )
    });
    let store = MemoryKeyStore::new();
    let err = source(connector, store.clone()).data_key().unwrap_err();
    assert!(matches!(err, KmsError::PlaintextInResponse("GenerateDataKey")), "{err}");
    assert_eq!(store.get(), None, "nothing stored");
}

#[test]
fn kms_refuses_an_answer_for_another_key_or_without_envelope() {
    let (connector, _) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
        http_json(
            200,
            &json!({"KeyId": "arn:aws:kms:us-east-1:999999999999:key/other", "CiphertextForRecipient": "AAAA"}),
        )
    });
    let err = source(connector, MemoryKeyStore::new()).data_key().unwrap_err();
    assert!(
        matches!(&err, KmsError::BadResponse { reason, .. } if reason.contains("999999999999")),
        "{err}"
    );
    let (connector, _) =
        fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| http_json(200, &json!({"KeyId": KEY_ARN})));
    let err = source(connector, MemoryKeyStore::new()).data_key().unwrap_err();
    assert!(
        matches!(&err, KmsError::BadResponse { reason, .. } if reason == "no CiphertextForRecipient")
    );
    let (connector, _) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
        http_json(200, &json!({"KeyId": KEY_ARN, "CiphertextForRecipient": B64.encode(b"not CMS")}))
    });
    let err = source(connector, MemoryKeyStore::new()).data_key().unwrap_err();
    assert!(matches!(err, KmsError::Envelope(_)), "{err}");
}

#[test]
fn kms_refusal_is_a_clear_start_up_error() {
    let (connector, _) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
        http_json(
            400,
            &json!({"__type": "com.amazonaws.kms#AccessDeniedException", "message": "no\npolicy"}),
        )
    });
    let key = source(connector, MemoryKeyStore::new());
    let err = key.data_key().unwrap_err();
    assert_eq!(err.kms_error_type(), Some("AccessDeniedException"));
    let (connector, _) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
        http_json(400, &json!({"__type": "AccessDeniedException", "message": "denied"}))
    });
    let msg = source(connector, MemoryKeyStore::new()).sealing_key().unwrap_err().to_string();
    assert!(msg.contains("KMS refused GenerateDataKey: AccessDeniedException: denied"), "{msg}");
    assert!(msg.contains("PCRs"), "{msg}");
    assert!(msg.contains(KEY_ARN) && msg.contains("wallet-test"), "{msg}");
}

#[test]
fn kms_requests_are_signed_json_with_recipient_and_context() {
    let (connector, seen) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
        http_json(400, &json!({"__type": "AccessDeniedException", "message": "x"}))
    });
    // First start: GenerateDataKey.
    let key = source(connector, MemoryKeyStore::new());
    let _ = key.data_key();
    // A stored blob: Decrypt with it.
    let (connector2, seen2) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
        http_json(400, &json!({"__type": "AccessDeniedException", "message": "x"}))
    });
    let _ = source(connector2, MemoryKeyStore::with(b"wrapped".to_vec())).data_key();

    let context = json!({"x402-wallet:purpose": "state-sealing-key/v1", "x402-wallet:service": "wallet-test"});
    let recipient = json!({
        "AttestationDocument": B64.encode(b"fake attestation document"),
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
    });
    let seen = seen.0.lock().unwrap();
    let (target, body, head) = &seen[0];
    assert_eq!(target, "TrentService.GenerateDataKey");
    assert_eq!(
        body,
        &json!({"KeyId": KEY_ARN, "KeySpec": "AES_256", "EncryptionContext": context, "Recipient": recipient})
    );
    assert!(head.starts_with("POST / HTTP/1.1\r\n"));
    assert!(head.contains("Content-Type: application/x-amz-json-1.1\r\n"));
    assert!(head.contains("Host: kms.us-east-1.amazonaws.com\r\n"));
    assert!(head.contains("X-Amz-Security-Token: session-token\r\n"));
    assert!(head.contains("Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
    assert!(head.contains("/us-east-1/kms/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature="));
    assert!(!head.contains(SECRET), "the secret is never sent");
    let seen2 = seen2.0.lock().unwrap();
    let (target, body, _) = &seen2[0];
    assert_eq!(target, "TrentService.Decrypt");
    assert_eq!(
        body,
        &json!({"CiphertextBlob": B64.encode(b"wrapped"), "KeyId": KEY_ARN, "EncryptionContext": context, "Recipient": recipient})
    );
}

#[test]
fn kms_refuses_garbage_and_truncated_answers() {
    for answer in [
        b"not http at all\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}".to_vec(),
        b"HTTP/1.1 200 OK\r\n\r\n{}".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]".to_vec(),
    ] {
        let (connector, _) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, move |_, _| answer.clone());
        let err = source(connector, MemoryKeyStore::new()).data_key().unwrap_err();
        assert!(matches!(err, KmsError::Http(_) | KmsError::BadResponse { .. }), "{err}");
    }
    // No relay at all.
    let connector: Connector = Box::new(|| Err(io::ErrorKind::ConnectionRefused.into()));
    assert!(matches!(
        source(connector, MemoryKeyStore::new()).data_key(),
        Err(KmsError::Connect(_))
    ));
}

#[test]
fn kms_answer_opens_to_exactly_32_bytes() {
    // The CMS fixtures (openssl) are encrypted to a fixed test key: open them as answers.
    use rsa::pkcs8::DecodePrivateKey as _;
    let rsa_key =
        rsa::RsaPrivateKey::from_pkcs8_der(include_bytes!("testdata/recipient.key.der")).unwrap();
    let connector: Connector = Box::new(|| Err(io::ErrorKind::ConnectionRefused.into()));
    let source = source(connector, MemoryKeyStore::new());
    let mut rng = crate::platform::nsm::test_entropy();
    let answer = |env: &[u8]| {
        json!({"KeyId": KEY_ARN, "CiphertextForRecipient": B64.encode(env)})
            .as_object()
            .unwrap()
            .clone()
    };
    let key = source
        .open_answer(
            "Decrypt",
            &answer(include_bytes!("testdata/envelope.ber")),
            &rsa_key,
            &mut rng,
        )
        .unwrap();
    assert_eq!(key.as_slice(), include_bytes!("testdata/data-key.bin"));
    let err = source
        .open_answer(
            "Decrypt",
            &answer(include_bytes!("testdata/envelope-short.der")),
            &rsa_key,
            &mut rng,
        )
        .unwrap_err();
    assert!(matches!(err, KmsError::DataKeyLength(16)), "{err}");
    // `"Plaintext": null` is no plaintext; any value is refused.
    let mut with_null = answer(include_bytes!("testdata/envelope.der"));
    with_null.insert("Plaintext".into(), Value::Null);
    assert!(source.open_answer("Decrypt", &with_null, &rsa_key, &mut rng).is_ok());
    with_null.insert("Plaintext".into(), "AAAA".into());
    assert!(matches!(
        source.open_answer("Decrypt", &with_null, &rsa_key, &mut rng),
        Err(KmsError::PlaintextInResponse("Decrypt"))
    ));
}

#[test]
fn kms_config_refuses_non_kms_endpoints_aliases_and_bad_ids() {
    let good = KmsConfig::new("us-east-1", KEY_ARN, "wallet-test");
    assert!(good.validate().is_ok());
    assert_eq!(good.timeout, Duration::from_secs(30));
    assert!(KmsConfig { endpoint: "kms-fips.us-east-1.amazonaws.com".into(), ..good.clone() }
        .validate()
        .is_ok());
    for bad in [
        // A server under Amazon's roots that is not KMS (ACM certifies customers' names).
        KmsConfig { endpoint: "evil.example.com".into(), ..good.clone() },
        KmsConfig { endpoint: "kms.eu-west-1.amazonaws.com".into(), ..good.clone() },
        KmsConfig { endpoint: "s3.us-east-1.amazonaws.com".into(), ..good.clone() },
        // Aliases can be repointed; other regions, accounts that are not 12 digits.
        KmsConfig { key_id: "alias/wallet".into(), ..good.clone() },
        KmsConfig {
            key_id: "arn:aws:kms:us-east-1:111122223333:alias/wallet".into(),
            ..good.clone()
        },
        KmsConfig { key_id: "arn:aws:kms:eu-west-1:111122223333:key/abc".into(), ..good.clone() },
        KmsConfig { key_id: "arn:aws:kms:us-east-1:1111:key/abc".into(), ..good.clone() },
        KmsConfig { key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(), ..good.clone() },
        KmsConfig { service_id: String::new(), ..good.clone() },
        KmsConfig { service_id: "a\"b".into(), ..good.clone() },
        KmsConfig { region: "US-EAST-1".into(), ..good.clone() },
        KmsConfig { timeout: Duration::ZERO, ..good.clone() },
        KmsConfig { timeout: MAX_TIMEOUT + Duration::from_secs(1), ..good.clone() },
    ] {
        assert!(matches!(bad.validate(), Err(KmsError::InvalidConfig(_))), "{bad:?}");
    }
    // Credentials that would inject headers.
    let connector: Connector = Box::new(|| Err(io::ErrorKind::ConnectionRefused.into()));
    let err = KmsSealingKey::new(
        good,
        AwsCredentials::new("AKID", SECRET, Some("tok\r\nX-Evil: 1".into())),
        connector,
        Arc::new(FakeNsm),
        Arc::new(SystemClock),
        Box::new(MemoryKeyStore::new()),
    )
    .unwrap_err();
    assert!(matches!(err, KmsError::InvalidConfig(_)));
}

#[test]
fn kms_debug_never_shows_secrets() {
    let creds = AwsCredentials::new("AKIDEXAMPLE", SECRET, Some("the-session-token".into()));
    let shown = format!("{creds:?}");
    assert!(shown.contains("AKIDEXAMPLE") && shown.contains("<redacted>"));
    assert!(!shown.contains(SECRET) && !shown.contains("the-session-token"));
    let connector: Connector = Box::new(|| Err(io::ErrorKind::ConnectionRefused.into()));
    let key = source(connector, MemoryKeyStore::new());
    let shown = format!("{key:?}");
    assert!(!shown.contains(SECRET) && !shown.contains("session-token"), "{shown}");
}

#[test]
fn kms_built_in_roots_are_the_pinned_certificates() {
    use sha2::{Digest as _, Sha256};
    for (name, der, fingerprint) in https::AMAZON_ROOTS {
        assert_eq!(hex::encode(Sha256::digest(der)), *fingerprint, "{name}");
    }
    assert!(https::client_config(false).is_ok());
}

/// kms-sim's test CA is a trust root only when the NSM signs under the test root: the same
/// server is refused when the NSM is real hardware's.
#[test]
fn kms_test_ca_is_trusted_only_for_a_test_rooted_nsm() {
    let ok = |_: &str, _: &Value| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    let (connector, _) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, ok);
    let request =
        b"POST / HTTP/1.1\r\nHost: kms.us-east-1.amazonaws.com\r\nContent-Length: 2\r\n\r\n{}";
    let deadline = || std::time::Instant::now() + Duration::from_secs(30);
    let name = "kms.us-east-1.amazonaws.com";
    let answer = https::exchange(
        https::client_config(true).unwrap(),
        name,
        connector().unwrap(),
        request,
        deadline(),
    )
    .unwrap();
    assert_eq!(answer.status, 200);
    let refused = https::exchange(
        https::client_config(false).unwrap(),
        name,
        connector().unwrap(),
        request,
        deadline(),
    )
    .unwrap_err();
    assert!(matches!(refused, https::HttpsError::Tls(_)), "{refused}");
}

/// Runs `f` on a thread and waits a minute at most: a KMS call without an overall deadline
/// would hang the test instead of failing it.
fn or_hang<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the KMS call hung: no overall deadline")
}

/// A stream that accepts every write and answers reads as `read` says.
struct FakeStream<F: FnMut(&mut [u8]) -> io::Result<usize> + Send + 'static>(F);

impl<F: FnMut(&mut [u8]) -> io::Result<usize> + Send + 'static> io::Read for FakeStream<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (self.0)(buf)
    }
}

impl<F: FnMut(&mut [u8]) -> io::Result<usize> + Send + 'static> io::Write for FakeStream<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The call's outcome must be the deadline's error.
fn assert_timed_out(err: &KmsError, timeout: Duration) {
    assert!(matches!(err, KmsError::Timeout(t) if *t == timeout), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "KMS did not answer within {} s through the host relay",
            timeout.as_secs_f64()
        )),
        "{msg}"
    );
}

#[test]
fn kms_a_silent_relay_fails_at_the_deadline() {
    // The relay accepts the connection and never sends a byte (a socket: its read timeout is
    // set to the time left).
    let held = Arc::new(Mutex::new(Vec::new()));
    let held2 = Arc::clone(&held);
    let connector: Connector = Box::new(move || {
        let (client, relay_end) = UnixStream::pair()?;
        held2.lock().unwrap().push(relay_end);
        Ok(Box::new(client) as Box<dyn ReadWrite + Send>)
    });
    let timeout = Duration::from_millis(800);
    let store = MemoryKeyStore::new();
    let key = source_with_timeout(connector, store.clone(), timeout);
    let err = or_hang(move || key.data_key().unwrap_err());
    assert_timed_out(&err, timeout);
    assert_eq!(store.get(), None);
    // The same through the sealing-key interface: a clear start-up error.
    let connector: Connector = Box::new(move || {
        let (client, relay_end) = UnixStream::pair()?;
        held.lock().unwrap().push(relay_end);
        Ok(Box::new(client) as Box<dyn ReadWrite + Send>)
    });
    let key = source_with_timeout(connector, MemoryKeyStore::new(), timeout);
    let msg = or_hang(move || key.sealing_key().unwrap_err().to_string());
    assert!(msg.contains("KMS did not answer within 0.8 s through the host relay"), "{msg}");
}

#[test]
fn kms_a_relay_dripping_a_byte_a_second_fails_at_the_deadline() {
    // A real answer from a server the roots accept, relayed one byte a second (not a socket:
    // only the client's check before every read bounds it).
    let (connector, _) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
        http_json(400, &json!({"__type": "AccessDeniedException", "message": "x"}))
    });
    let drip: Connector = Box::new(move || {
        let mut inner = connector()?;
        Ok(Box::new(FakeStream(move |buf: &mut [u8]| {
            std::thread::sleep(Duration::from_secs(1));
            let n = buf.len().min(1);
            inner.read(&mut buf[..n])
        })) as Box<dyn ReadWrite + Send>)
    });
    let timeout = Duration::from_secs(2);
    let key = source_with_timeout(drip, MemoryKeyStore::new(), timeout);
    let err = or_hang(move || key.data_key().unwrap_err());
    assert_timed_out(&err, timeout);
}

#[test]
fn kms_a_stream_or_connector_that_never_returns_is_abandoned_at_the_deadline() {
    // A read that blocks for ever and ignores every timeout: the call's thread is abandoned.
    let blocked: Connector = Box::new(|| {
        Ok(Box::new(FakeStream(|_: &mut [u8]| -> io::Result<usize> {
            loop {
                std::thread::park();
            }
        })) as Box<dyn ReadWrite + Send>)
    });
    let timeout = Duration::from_millis(500);
    let key = source_with_timeout(blocked, MemoryKeyStore::new(), timeout);
    assert_timed_out(&or_hang(move || key.data_key().unwrap_err()), timeout);
    // A relay that never accepts: the connector itself never returns.
    let never: Connector = Box::new(|| -> io::Result<Box<dyn ReadWrite + Send>> {
        loop {
            std::thread::park();
        }
    });
    let key = source_with_timeout(never, MemoryKeyStore::new(), timeout);
    assert_timed_out(&or_hang(move || key.data_key().unwrap_err()), timeout);
}

#[test]
fn kms_a_prompt_answer_is_not_cut_short() {
    // The deadline stream (socket timeouts re-armed before every read and write) does not
    // disturb an exchange that ends in time.
    let (connector, seen) = fake_kms(TEST_SERVER, TEST_SERVER_KEY, |_, _| {
        http_json(400, &json!({"__type": "AccessDeniedException", "message": "x"}))
    });
    let key = source_with_timeout(connector, MemoryKeyStore::new(), Duration::from_secs(20));
    let err = or_hang(move || key.data_key().unwrap_err());
    assert_eq!(err.kms_error_type(), Some("AccessDeniedException"), "{err}");
    assert_eq!(seen.0.lock().unwrap().len(), 1);
}

mod http {
    use super::super::https::{read_response, ReadError, MAX_BODY, MAX_HEADERS};

    fn read(bytes: &[u8]) -> Result<super::super::https::Response, ReadError> {
        read_response(&mut std::io::Cursor::new(bytes))
    }

    #[test]
    fn kms_http_reads_content_length_and_chunked_bodies() {
        let r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"hello".as_slice()));
        let r = read(
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\nT: v\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (400, b"hello".as_slice()));
    }

    #[test]
    fn kms_http_truncated_answers_never_panic_and_never_parse() {
        for full in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".as_slice(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
                .as_slice(),
        ] {
            assert!(read(full).is_ok());
            for n in 0..full.len() {
                assert!(read(&full[..n]).is_err(), "prefix {n}");
            }
        }
    }

    #[test]
    fn kms_http_bounds_and_ambiguity() {
        let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(read(huge.as_bytes()).is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n")
            .is_err());
        assert!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").is_err()
        );
        assert!(read(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\na"
        )
        .is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab").is_err());
        assert!(read(b"HTTP/1.1 100 Continue\r\n\r\n").is_err());
        // Trailer lines are bounded like headers (they were read until the empty line, however
        // many came).
        let trailers = |n: usize| {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
            for i in 0..n {
                r.extend_from_slice(format!("X-T{i}: v\r\n").as_bytes());
            }
            r.extend_from_slice(b"\r\n");
            r
        };
        assert!(read(&trailers(MAX_HEADERS)).is_ok());
        assert!(read(&trailers(MAX_HEADERS + 1)).is_err());
        assert!(read(&trailers(10_000)).is_err());
        let mut long_head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while long_head.len() <= super::super::https::MAX_HEAD {
            long_head.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(read(&long_head).is_err());
        // Bytes of every value never panic.
        for b in 0..=255u8 {
            let _ = read(&[b; 64]);
        }
    }
}
