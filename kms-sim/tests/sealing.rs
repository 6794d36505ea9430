//! End to end, in one process: the enclave's KMS client (`wallet_enclave::platform::kms`,
//! `simulated` build, so it trusts kms-sim's test CA) → a Unix socket → the host relay
//! (`wallet_host::relay`, recording every byte) → TCP on 127.0.0.1 → kms-sim over TLS, with
//! attestation documents signed by `wallet_attestation::test_pki`. Each test tries an attack.

use std::{
    collections::BTreeMap, os::unix::net::UnixStream, path::PathBuf, sync::Arc, time::Duration,
};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use serde_json::json;
use wallet_enclave::platform::{
    kms::{
        AwsCredentials, Connector, KmsConfig, KmsError, KmsSealingKey, MemoryKeyStore, ReadWrite,
    },
    Mode, Nsm, NsmError, SealingKeySource as _, SystemClock, TrustRoot,
};
use wallet_host::relay::{RecordingTap, Relay, Tap};
use wallet_kms_sim::{policy, server, KeyPolicy, Server, Sim, SimConfig};

/// The image the key policy allows.
fn good_pcrs() -> BTreeMap<u8, Vec<u8>> {
    BTreeMap::from([(0, vec![0xa0; 48]), (1, vec![0xa1; 48]), (2, vec![0xa2; 48])])
}

/// What the test NSM does to its documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doc {
    /// Signed under the test root, now.
    Good,
    /// A PCR byte changed after signing.
    Tampered,
    /// Signed under another root (the attestation crate's attack PKI), correctly.
    ForeignRoot,
    /// Signed six minutes ago.
    Stale,
}

/// An NSM that attests with the test PKI, measuring `pcrs`.
#[derive(Debug)]
struct TestNsm {
    pcrs: BTreeMap<u8, Vec<u8>>,
    doc: Doc,
}

impl TestNsm {
    fn arc(pcrs: BTreeMap<u8, Vec<u8>>, doc: Doc) -> Arc<dyn Nsm> {
        Arc::new(Self { pcrs, doc })
    }
}

impl Nsm for TestNsm {
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
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        let age = if self.doc == Doc::Stale { 6 * 60 * 1000 } else { 0 };
        let mut doc = wallet_attestation::test_pki::sign_document(
            "i-0123456789abcdef0-enc0123456789abcdef",
            wallet_kms_sim::system_now_ms() - age,
            &self.pcrs,
            public_key,
            user_data,
            nonce,
        );
        match self.doc {
            Doc::Tampered => {
                let at = doc.windows(48).position(|w| w == self.pcrs[&2].as_slice()).unwrap();
                doc[at] ^= 1;
            }
            Doc::ForeignRoot => doc = resign_under_foreign_root(&doc),
            Doc::Good | Doc::Stale => {}
        }
        Ok(doc)
    }
    fn trust_root(&self) -> TrustRoot {
        TrustRoot::SimulatedTest
    }
}

/// `doc` with its chain replaced by the attestation crate's foreign root and a leaf under it,
/// signed (ES384) with that leaf's key: a well-formed document from a PKI that is not trusted.
fn resign_under_foreign_root(doc: &[u8]) -> Vec<u8> {
    use ciborium::value::Value;
    use p384::ecdsa::{signature::Signer as _, Signature, SigningKey};
    use p384::pkcs8::DecodePrivateKey as _;
    const ROOT: &[u8] =
        include_bytes!("../../attestation/testdata/test-pki/attacks/foreign-root.der");
    const LEAF: &[u8] =
        include_bytes!("../../attestation/testdata/test-pki/attacks/foreign-leaf.der");
    const KEY: &[u8] =
        include_bytes!("../../attestation/testdata/test-pki/attacks/foreign-leaf.key.pk8.der");
    let cose: Value = ciborium::de::from_reader(doc).unwrap();
    let mut parts = match cose {
        Value::Tag(_, inner) => inner.into_array().unwrap(),
        other => other.into_array().unwrap(),
    };
    let protected = parts[0].as_bytes().unwrap().clone();
    let payload: Value =
        ciborium::de::from_reader(parts[2].as_bytes().unwrap().as_slice()).unwrap();
    let mut fields = payload.into_map().unwrap();
    for (k, v) in &mut fields {
        match k.as_text() {
            Some("certificate") => *v = Value::Bytes(LEAF.to_vec()),
            Some("cabundle") => *v = Value::Array(vec![Value::Bytes(ROOT.to_vec())]),
            _ => {}
        }
    }
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&Value::Map(fields), &mut payload).unwrap();
    let sig_structure = Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.clone()),
    ]);
    let mut to_sign = Vec::new();
    ciborium::ser::into_writer(&sig_structure, &mut to_sign).unwrap();
    let signature: Signature = SigningKey::from_pkcs8_der(KEY).unwrap().sign(&to_sign);
    parts[2] = Value::Bytes(payload);
    parts[3] = Value::Bytes(signature.to_bytes().to_vec());
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Value::Array(parts), &mut out).unwrap();
    out
}

/// kms-sim behind the host relay, as the enclave sees it.
struct Env {
    sim: Arc<Sim>,
    arn: String,
    _server: Server,
    _rt: tokio::runtime::Runtime,
    relay_socket: PathBuf,
    tap: Arc<RecordingTap>,
    _dir: tempfile::TempDir,
}

impl Env {
    /// kms-sim with one key under the recommended policy for [`good_pcrs`].
    fn new() -> Self {
        Self::with_server(None)
    }

    /// ... presenting `tls` instead of the test certificate.
    fn with_server(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let sim = Arc::new(Sim::new(SimConfig::test()));
        let pcrs = good_pcrs();
        let policy_json = policy::recommended_policy_json(
            wallet_kms_sim::TEST_PRINCIPAL,
            &[wallet_kms_sim::TEST_KEY_ADMIN],
            &[(0, &pcrs[&0]), (1, &pcrs[&1]), (2, &pcrs[&2])],
        );
        let arn = sim.create_key(KeyPolicy::from_json(&policy_json).unwrap()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Server::start_with(
            Arc::clone(&sim),
            listener,
            tls.unwrap_or_else(server::test_tls_config),
        )
        .unwrap();
        let (dir, rt, relay_socket, tap) = relay_to(&server.addr().to_string());
        Self { sim, arn, _server: server, _rt: rt, relay_socket, tap, _dir: dir }
    }

    /// The enclave's key source for `service`, attesting with `nsm`, keeping its wrapped key in
    /// `store`, reaching KMS through the relay.
    fn enclave(&self, nsm: Arc<dyn Nsm>, service: &str, store: &MemoryKeyStore) -> KmsSealingKey {
        KmsSealingKey::new(
            KmsConfig::new("us-east-1", &self.arn, service),
            AwsCredentials::new(
                wallet_kms_sim::TEST_ACCESS_KEY_ID,
                wallet_kms_sim::TEST_SECRET_ACCESS_KEY,
                None,
            ),
            connector(self.relay_socket.clone()),
            nsm,
            Arc::new(SystemClock),
            Box::new(store.clone()),
        )
        .unwrap()
    }

    fn good(&self, service: &str, store: &MemoryKeyStore) -> KmsSealingKey {
        self.enclave(TestNsm::arc(good_pcrs(), Doc::Good), service, store)
    }
}

/// A relay on a Unix socket to `target`, recording every byte, in its own runtime.
fn relay_to(
    target: &str,
) -> (tempfile::TempDir, tokio::runtime::Runtime, PathBuf, Arc<RecordingTap>) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms-relay.sock");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tap = RecordingTap::new();
    let relay = Relay::new(target).with_tap(Arc::clone(&tap) as Arc<dyn Tap>);
    let listener = {
        let _guard = rt.enter();
        tokio::net::UnixListener::bind(&socket).unwrap()
    };
    rt.spawn(relay.serve_unix(listener, std::future::pending()));
    (dir, rt, socket, tap)
}

/// What the lead wires in simulation: a Unix socket to the host relay, with timeouts.
fn connector(socket: PathBuf) -> Connector {
    Box::new(move || {
        let s = UnixStream::connect(&socket)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        Ok(Box::new(s) as Box<dyn ReadWrite + Send>)
    })
}

fn refused(err: &KmsError) -> &str {
    err.kms_error_type().unwrap_or_else(|| panic!("not a KMS refusal: {err}"))
}

/// The key in every form the host could recognise it in.
fn forms(key: &[u8]) -> Vec<Vec<u8>> {
    vec![key.to_vec(), hex::encode(key).into_bytes(), B64.encode(key).into_bytes()]
}

#[test]
fn right_pcrs_open_the_key_and_the_second_boot_gets_the_same_one() {
    let env = Env::new();
    let store = MemoryKeyStore::new();
    // First boot: GenerateDataKey; the wrapped key is stored.
    let first = env.good("wallet-prod-1", &store).data_key().unwrap();
    let blob = store.get().expect("the wrapped key was stored");
    // Second boot: a new RSA key, a new document, Decrypt of the stored blob: the same key.
    let second = env.good("wallet-prod-1", &store).sealing_key().unwrap();
    assert_eq!(*first, *second);
    assert_eq!(store.get(), Some(blob.clone()), "Decrypt does not rewrite the blob");
    // The host saw two TLS sessions, and never the key in any form, nor in the stored blob.
    assert!(env.tap.total_bytes() > 2000);
    for form in forms(first.as_ref()) {
        assert!(!env.tap.contains(&form), "the relay carried the data key in the clear");
        assert!(!blob.windows(form.len()).any(|w| w == form.as_slice()));
    }
    // Nor any readable part of the exchange (TLS ends in the enclave).
    assert!(!env.tap.contains(b"TrentService"));
    assert!(!env.tap.contains(b"CiphertextForRecipient"));
}

#[test]
fn a_changed_pcr_is_denied_and_start_up_fails_clearly() {
    let env = Env::new();
    let store = MemoryKeyStore::new();
    for (index, value) in [(2u8, 0xb2u8), (0, 0xb0)] {
        let mut pcrs = good_pcrs();
        pcrs.insert(index, vec![value; 48]);
        let key = env.enclave(TestNsm::arc(pcrs, Doc::Good), "wallet-prod-1", &store);
        let err = key.data_key().unwrap_err();
        assert_eq!(refused(&err), "AccessDeniedException", "PCR{index}: {err}");
        let msg = key.sealing_key().unwrap_err().to_string();
        assert!(msg.contains("KMS refused GenerateDataKey: AccessDeniedException"), "{msg}");
        assert!(msg.contains("PCRs"), "{msg}");
        assert_eq!(store.get(), None, "nothing stored");
    }
    // An updated image booting on the old image's stored key is denied too (Decrypt).
    env.good("wallet-prod-1", &store).data_key().unwrap();
    let mut pcrs = good_pcrs();
    pcrs.insert(2, vec![0xb2; 48]);
    let err =
        env.enclave(TestNsm::arc(pcrs, Doc::Good), "wallet-prod-1", &store).data_key().unwrap_err();
    assert!(
        matches!(&err, KmsError::Refused { operation: "Decrypt", error_type, .. } if error_type == "AccessDeniedException"),
        "{err}"
    );
}

#[test]
fn tampered_foreign_and_stale_documents_are_denied() {
    let env = Env::new();
    for doc in [Doc::Tampered, Doc::ForeignRoot, Doc::Stale] {
        let store = MemoryKeyStore::new();
        let err = env
            .enclave(TestNsm::arc(good_pcrs(), doc), "wallet-prod-1", &store)
            .data_key()
            .unwrap_err();
        assert_eq!(refused(&err), "AccessDeniedException", "{doc:?}: {err}");
        let why = err.to_string();
        match doc {
            Doc::ForeignRoot => assert!(why.contains("is not a root this build accepts"), "{why}"),
            Doc::Stale => assert!(why.contains("stale"), "{why}"),
            _ => assert!(why.contains("COSE signature does not verify"), "{why}"),
        }
        assert_eq!(store.get(), None);
    }
}

#[test]
fn a_swapped_or_garbage_wrapped_key_is_refused() {
    let env = Env::new();
    // Service B (same image, same KMS key) makes its wrapped key.
    let store_b = MemoryKeyStore::new();
    let key_b = env.good("wallet-service-b", &store_b).data_key().unwrap();
    // The host gives it to service A: KMS refuses the context mismatch.
    let store_a = MemoryKeyStore::with(store_b.get().unwrap());
    let err = env.good("wallet-service-a", &store_a).data_key().unwrap_err();
    assert_eq!(refused(&err), "InvalidCiphertextException", "{err}");
    assert!(err.to_string().contains("replaced or corrupted"), "{err}");
    // Garbage, or B's blob with one byte changed.
    let mut altered = store_b.get().unwrap();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    for blob in [b"garbage".to_vec(), altered] {
        let err = env.good("wallet-service-b", &MemoryKeyStore::with(blob)).data_key().unwrap_err();
        assert_eq!(refused(&err), "InvalidCiphertextException", "{err}");
    }
    // B itself still opens its own.
    assert_eq!(*env.good("wallet-service-b", &store_b).data_key().unwrap(), *key_b);
}

#[test]
fn the_host_with_its_credentials_and_the_blob_gets_no_key_without_attestation() {
    // The host holds the credentials and the stored blob; without a Recipient (it has no
    // enclave to attest), KMS denies.
    let env = Env::new();
    let store = MemoryKeyStore::new();
    env.good("wallet-prod-1", &store).data_key().unwrap();
    let context = json!({"x402-wallet:purpose": "state-sealing-key/v1", "x402-wallet:service": "wallet-prod-1"});
    for (op, body) in [
        (
            "Decrypt",
            json!({"CiphertextBlob": B64.encode(store.get().unwrap()), "KeyId": env.arn, "EncryptionContext": context}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": env.arn, "KeySpec": "AES_256", "EncryptionContext": context}),
        ),
        (
            "Encrypt",
            json!({"KeyId": env.arn, "Plaintext": B64.encode([7u8; 32]), "EncryptionContext": context}),
        ),
    ] {
        let body = body.to_string().into_bytes();
        let headers = wallet_kms_sim::sigv4::sign(
            &env.sim.config().credentials,
            "us-east-1",
            wallet_kms_sim::TEST_ENDPOINT,
            &wallet_kms_sim::sigv4::amz_date(wallet_kms_sim::system_now_ms()),
            &format!("TrentService.{op}"),
            &body,
        );
        let reply = env.sim.handle("POST", "/", &headers, &body);
        assert_eq!(reply.error_type().as_deref(), Some("AccessDeniedException"), "{op}");
    }
}

#[test]
fn a_policy_that_allows_encrypt_would_let_the_host_plant_a_key() {
    // Why the key policy must deny kms:Encrypt: with it, the host encrypts a key it knows under
    // the wallet's context and stores that blob; the enclave then seals under the host's key.
    let env = Env::new();
    let context = BTreeMap::from([
        ("x402-wallet:purpose".to_owned(), "state-sealing-key/v1".to_owned()),
        ("x402-wallet:service".to_owned(), "wallet-prod-1".to_owned()),
    ]);
    let planted = env.sim.encrypt_for_setup(&env.arn, &[0x42; 32], &context).unwrap();
    let key = env.good("wallet-prod-1", &MemoryKeyStore::with(planted)).data_key().unwrap();
    assert_eq!(*key, [0x42; 32], "the enclave cannot tell: only the key policy prevents this");
    // Under the recommended policy the host's Encrypt is denied (see the test above), so it
    // cannot make such a blob.
}

#[test]
fn a_fake_kms_is_refused() {
    // A TLS server with a certificate for the right name from a CA outside the built-in roots.
    let rogue =
        server::tls_config(&[server::ROGUE_SERVER_CERT_DER], server::ROGUE_SERVER_KEY_DER).unwrap();
    let env = Env::with_server(Some(rogue));
    let err = env.good("wallet-prod-1", &MemoryKeyStore::new()).data_key().unwrap_err();
    assert!(matches!(&err, KmsError::Tls(m) if m.contains("not KMS")), "{err}");
    // A plain-text server answering with a Plaintext key: no TLS, no key.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = plain.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for mut s in plain.incoming().flatten().take(1) {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body =
                json!({"KeyId": "x", "Plaintext": B64.encode([1u8; 32]), "CiphertextBlob": "AAAA"})
                    .to_string();
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    let (_dir, _rt, socket, _tap) = relay_to(&addr.to_string());
    let store = MemoryKeyStore::new();
    let key = KmsSealingKey::new(
        KmsConfig::new("us-east-1", &env.arn, "wallet-prod-1"),
        AwsCredentials::new(
            wallet_kms_sim::TEST_ACCESS_KEY_ID,
            wallet_kms_sim::TEST_SECRET_ACCESS_KEY,
            None,
        ),
        connector(socket),
        TestNsm::arc(good_pcrs(), Doc::Good),
        Arc::new(SystemClock),
        Box::new(store.clone()),
    )
    .unwrap();
    let err = key.data_key().unwrap_err();
    assert!(matches!(err, KmsError::Tls(_)), "{err}");
    assert_eq!(store.get(), None);
}

#[test]
fn a_relay_to_a_silent_endpoint_fails_start_up_at_the_deadline() {
    // The host relays to something that accepts and never answers (or the relay stalls): the
    // enclave's own deadline ends the call with a clear error, well before the relay's idle
    // timeout or the connector's socket timeouts (20 s here) would.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(120));
        drop(held);
    });
    let (_dir, _rt, socket, tap) = relay_to(&addr.to_string());
    let timeout = Duration::from_secs(1);
    let store = MemoryKeyStore::new();
    let key = KmsSealingKey::new(
        KmsConfig {
            timeout,
            ..KmsConfig::new(
                "us-east-1",
                "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "wallet-prod-1",
            )
        },
        AwsCredentials::new(
            wallet_kms_sim::TEST_ACCESS_KEY_ID,
            wallet_kms_sim::TEST_SECRET_ACCESS_KEY,
            None,
        ),
        connector(socket),
        TestNsm::arc(good_pcrs(), Doc::Good),
        Arc::new(SystemClock),
        Box::new(store.clone()),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(key.sealing_key().map(|_| ()).unwrap_err().to_string());
    });
    let msg = rx.recv_timeout(Duration::from_secs(60)).expect("start-up hung on a silent relay");
    assert!(msg.contains("KMS did not answer within 1 s through the host relay"), "{msg}");
    assert_eq!(store.get(), None);
    // The ClientHello went through the relay; nothing came back.
    assert!(tap.total_bytes() > 0);
}

#[test]
fn der_envelopes_open_too() {
    let env = Env::new();
    env.sim.set_envelope_encoding(wallet_kms_sim::cms::Encoding::Der);
    let store = MemoryKeyStore::new();
    let k1 = env.good("wallet-prod-1", &store).data_key().unwrap();
    env.sim.set_envelope_encoding(wallet_kms_sim::cms::Encoding::Ber);
    assert_eq!(*env.good("wallet-prod-1", &store).data_key().unwrap(), *k1);
}

#[test]
fn the_binary_serves_and_prints_its_endpoint() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let pcrs = good_pcrs();
    std::fs::write(
        &policy,
        policy::recommended_policy_json(
            wallet_kms_sim::TEST_PRINCIPAL,
            &[wallet_kms_sim::TEST_KEY_ADMIN],
            &[(0, &pcrs[&0])],
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wallet-kms-sim"))
        .args([
            "--policy",
            policy.to_str().unwrap(),
            "--state",
            dir.path().join("key.json").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["listen"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v["key_arn"].as_str().unwrap().starts_with("arn:aws:kms:us-east-1:111122223333:key/"));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("key.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
