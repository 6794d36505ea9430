//! The sim's request handling, in process (no TLS): each test tries an attack on the policy.

use std::sync::OnceLock;

use rsa::{pkcs8::EncodePublicKey as _, RsaPrivateKey};

use super::*;

/// One RSA key for all tests (making one takes a while).
fn spki() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        let k = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        k.to_public_key().to_public_key_der().unwrap().as_bytes().to_vec()
    })
}

fn pcrs(image: u8) -> BTreeMap<u8, Vec<u8>> {
    BTreeMap::from([(0, vec![image; 48]), (1, vec![0x11; 48]), (2, vec![0x22; 48])])
}

fn doc(pcrs: &BTreeMap<u8, Vec<u8>>, age_ms: u64) -> Vec<u8> {
    wallet_attestation::test_pki::sign_document(
        "i-sim-enc0000000000000001",
        system_now_ms() - age_ms,
        pcrs,
        Some(spki()),
        Some(b"x402-wallet:kms-recipient/v1"),
        None,
    )
}

fn recipient(doc: &[u8]) -> Value {
    json!({"AttestationDocument": B64.encode(doc), "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"})
}

fn context(service: &str) -> Value {
    json!({"x402-wallet:purpose": "state-sealing-key/v1", "x402-wallet:service": service})
}

/// The recommended policy for PCR0 = [0xaa; 48] and PCR2.
fn recommended() -> String {
    let p = pcrs(0xaa);
    policy::recommended_policy_json(TEST_PRINCIPAL, &[TEST_KEY_ADMIN], &[(0, &p[&0]), (2, &p[&2])])
}

/// A sim with one key under the recommended policy for PCR0 = [0xaa; 48] and PCR2.
fn sim() -> (Sim, String) {
    let sim = Sim::new(SimConfig::test());
    let arn = sim.create_key(KeyPolicy::from_json(&recommended()).unwrap()).unwrap();
    (sim, arn)
}

fn call(sim: &Sim, op: &str, body: &Value) -> Reply {
    let body = body.to_string().into_bytes();
    let headers = sigv4::sign(
        &sim.config().credentials,
        TEST_REGION,
        TEST_ENDPOINT,
        &sigv4::amz_date(system_now_ms()),
        &format!("TrentService.{op}"),
        &body,
    );
    sim.handle("POST", "/", &headers, &body)
}

fn answer(r: &Reply) -> Map<String, Value> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).unwrap()
}

fn denied(r: &Reply) -> String {
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_type().as_deref(),
        Some("AccessDeniedException"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn attested_generate_and_decrypt_return_only_envelopes() {
    let (sim, arn) = sim();
    let d = doc(&pcrs(0xaa), 0);
    let gen = answer(&call(
        &sim,
        "GenerateDataKey",
        &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context("a"), "Recipient": recipient(&d)}),
    ));
    assert!(!gen.contains_key("Plaintext"));
    assert_eq!(gen["KeyId"], arn.as_str());
    let env = B64.decode(gen["CiphertextForRecipient"].as_str().unwrap()).unwrap();
    assert_eq!(&env[..2], &[0x30, 0x80], "BER, indefinite length");
    let blob = gen["CiphertextBlob"].as_str().unwrap();
    let dec = answer(&call(
        &sim,
        "Decrypt",
        &json!({"CiphertextBlob": blob, "KeyId": arn, "EncryptionContext": context("a"), "Recipient": recipient(&d)}),
    ));
    assert!(!dec.contains_key("Plaintext"));
    assert!(dec.contains_key("CiphertextForRecipient"));
    // GenerateRandom to a recipient, too.
    let rnd = answer(&call(
        &sim,
        "GenerateRandom",
        &json!({"NumberOfBytes": 32, "Recipient": recipient(&d)}),
    ));
    assert!(!rnd.contains_key("Plaintext") && rnd.contains_key("CiphertextForRecipient"));
}

#[test]
fn no_recipient_means_no_key() {
    let (sim, arn) = sim();
    let msg = denied(&call(
        &sim,
        "GenerateDataKey",
        &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context("a")}),
    ));
    assert!(msg.contains("explicit deny"), "{msg}");
    let blob = sim
        .encrypt_for_setup(
            &arn,
            &[1; 32],
            &BTreeMap::from([
                ("x402-wallet:purpose".into(), "state-sealing-key/v1".into()),
                ("x402-wallet:service".into(), "a".into()),
            ]),
        )
        .unwrap();
    denied(&call(
        &sim,
        "Decrypt",
        &json!({"CiphertextBlob": B64.encode(&blob), "EncryptionContext": context("a")}),
    ));
    // Recipient: null is no recipient.
    denied(&call(
        &sim,
        "Decrypt",
        &json!({"CiphertextBlob": B64.encode(&blob), "EncryptionContext": context("a"), "Recipient": null}),
    ));
}

#[test]
fn another_image_is_denied() {
    let (sim, arn) = sim();
    // PCR0 changed (another image), or only PCR2 (another application ramdisk).
    let msg = denied(&call(
        &sim,
        "GenerateDataKey",
        &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context("a"), "Recipient": recipient(&doc(&pcrs(0xbb), 0))}),
    ));
    // Denied explicitly (to everyone), not merely left unallowed.
    assert!(msg.contains("explicit deny") && msg.contains("(NoKeyToAnotherImage)"), "{msg}");
    let mut p = pcrs(0xaa);
    p.insert(2, vec![0x23; 48]);
    let msg = denied(&call(
        &sim,
        "GenerateDataKey",
        &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context("a"), "Recipient": recipient(&doc(&p, 0))}),
    ));
    assert!(msg.contains("(NoKeyToAnotherImagePCR2)"), "{msg}");
    // A document without PCR2 at all.
    p.remove(&2);
    denied(&call(
        &sim,
        "GenerateDataKey",
        &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context("a"), "Recipient": recipient(&doc(&p, 0))}),
    ));
}

#[test]
fn stale_tampered_and_unsigned_documents_are_denied() {
    let (sim, arn) = sim();
    let gen = |d: &[u8]| {
        call(
            &sim,
            "GenerateDataKey",
            &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context("a"), "Recipient": recipient(d)}),
        )
    };
    assert!(denied(&gen(&doc(&pcrs(0xaa), MAX_DOCUMENT_AGE_MS + 60_000))).contains("stale"));
    // Just inside the window is fine.
    answer(&gen(&doc(&pcrs(0xaa), MAX_DOCUMENT_AGE_MS - 60_000)));
    // One PCR byte changed after signing: find the 48 bytes of 0xaa and change one.
    let mut tampered = doc(&pcrs(0xaa), 0);
    let at = tampered.windows(48).position(|w| w == [0xaa; 48]).unwrap();
    tampered[at + 10] = 0xab;
    assert!(denied(&gen(&tampered)).contains("not valid"));
    // Garbage and truncation.
    denied(&gen(b"not a document"));
    let d = doc(&pcrs(0xaa), 0);
    denied(&gen(&d[..d.len() - 1]));
}

#[test]
fn wrapped_keys_are_bound_to_their_context_and_key() {
    let (sim, arn) = sim();
    let d = doc(&pcrs(0xaa), 0);
    let gen = answer(&call(
        &sim,
        "GenerateDataKey",
        &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context("service-b"), "Recipient": recipient(&d)}),
    ));
    let blob_b = gen["CiphertextBlob"].as_str().unwrap();
    // Service A presented with B's wrapped key.
    let r = call(
        &sim,
        "Decrypt",
        &json!({"CiphertextBlob": blob_b, "KeyId": arn, "EncryptionContext": context("service-a"), "Recipient": recipient(&d)}),
    );
    assert_eq!(r.error_type().as_deref(), Some("InvalidCiphertextException"));
    // Garbage, and a blob of another key.
    let r = call(
        &sim,
        "Decrypt",
        &json!({"CiphertextBlob": B64.encode(b"garbage"), "KeyId": arn, "EncryptionContext": context("service-a"), "Recipient": recipient(&d)}),
    );
    assert_eq!(r.error_type().as_deref(), Some("InvalidCiphertextException"));
    let other = sim
        .create_key(
            KeyPolicy::from_json(
                r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}"#,
            )
            .unwrap(),
        )
        .unwrap();
    let foreign = sim.encrypt_for_setup(&other, &[9; 32], &BTreeMap::new()).unwrap();
    let r = call(
        &sim,
        "Decrypt",
        &json!({"CiphertextBlob": B64.encode(foreign), "KeyId": arn, "EncryptionContext": context("service-a"), "Recipient": recipient(&d)}),
    );
    assert_eq!(r.error_type().as_deref(), Some("IncorrectKeyException"));
}

#[test]
fn the_recommended_policy_denies_encrypt_to_the_host() {
    let (sim, arn) = sim();
    let r = call(
        &sim,
        "Encrypt",
        &json!({"KeyId": arn, "Plaintext": B64.encode([7u8; 32]), "EncryptionContext": context("a")}),
    );
    denied(&r);
}

#[test]
fn requests_must_be_signed_with_the_test_credentials() {
    let (sim, arn) = sim();
    let body = json!({"KeyId": arn, "KeySpec": "AES_256"}).to_string().into_bytes();
    let mut other = sim.config().credentials.clone();
    other.secret_access_key = Zeroizing::new("wrong".into());
    let headers = sigv4::sign(
        &other,
        TEST_REGION,
        TEST_ENDPOINT,
        &sigv4::amz_date(system_now_ms()),
        "TrentService.GenerateDataKey",
        &body,
    );
    let r = sim.handle("POST", "/", &headers, &body);
    assert_eq!(r.error_type().as_deref(), Some("InvalidSignatureException"));
    let r = sim.handle("POST", "/", &[], &body);
    assert_eq!(r.error_type().as_deref(), Some("MissingAuthenticationTokenException"));
    // Unknown operation, bad JSON.
    let r = call(&sim, "ScheduleKeyDeletion", &json!({}));
    assert_eq!(r.error_type().as_deref(), Some("UnknownOperationException"));
}

#[test]
fn the_example_policy_file_is_the_recommended_policy() {
    let example =
        KeyPolicy::from_json(include_str!("../testdata/key-policy.example.json")).unwrap();
    let (p0, p1, p2) = ([0xa0u8; 48], [0xa1u8; 48], [0xa2u8; 48]);
    let recommended = policy::recommended_policy_json(
        TEST_PRINCIPAL,
        &[TEST_KEY_ADMIN],
        &[(0, &p0), (1, &p1), (2, &p2)],
    );
    assert_eq!(example, KeyPolicy::from_json(&recommended).unwrap());
}

/// Another principal of the test account, whose IAM policies allow `kms:*`.
const OTHER_PRINCIPAL: &str = "arn:aws:iam::111122223333:role/someone-else";

/// The same key (id, secret, `policy`) seen by `caller`, whose IAM policies allow `iam`.
fn sim_as(caller: &str, iam: &[&str], policy: &str) -> (Sim, String) {
    let mut config = SimConfig::test();
    config.principal = caller.to_owned();
    config
        .identity_policies
        .insert(caller.to_owned(), iam.iter().map(|a| (*a).to_owned()).collect());
    let sim = Sim::new(config);
    let arn = sim
        .add_key(
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            Zeroizing::new([0x5a; 32]),
            KeyPolicy::from_json(policy).unwrap(),
            LockoutCheck::Enforce,
        )
        .unwrap();
    (sim, arn)
}

#[test]
fn the_account_root_and_other_principals_cannot_plant_a_key_under_the_recommended_policy() {
    // The key keeps AWS's default "Enable IAM User Permissions" statement; the callers are the
    // account's root user and another role whose IAM policy allows kms:*.
    let policy = policy::with_account_root_statement(&recommended(), TEST_ACCOUNT);
    let encrypt = |arn: &str| json!({"KeyId": arn, "Plaintext": B64.encode([7u8; 32]), "EncryptionContext": context("a")});
    for caller in ["arn:aws:iam::111122223333:root", OTHER_PRINCIPAL, TEST_KEY_ADMIN] {
        let (sim, arn) = sim_as(caller, &["kms:*"], &policy);
        let msg = denied(&call(&sim, "Encrypt", &encrypt(&arn)));
        assert!(
            msg.contains("explicit deny") && msg.contains("NobodyPlantsMovesOrDelegates"),
            "{msg}"
        );
        // Nor a key for them from an enclave of their own (another image), nor without one.
        let msg = denied(&call(
            &sim,
            "GenerateDataKey",
            &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context("a"), "Recipient": recipient(&doc(&pcrs(0xbb), 0))}),
        ));
        assert!(msg.contains("NoKeyToAnotherImage"), "{msg}");
        let msg = denied(&call(
            &sim,
            "GenerateDataKey",
            &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context("a")}),
        ));
        assert!(msg.contains("NoPlaintextToAnyone"), "{msg}");
    }
    // The sim does model the delegation: with the Encrypt denial naming only the parent role
    // (the gap this policy closes), the other role plants a key.
    let narrowed = policy.replace(
        r#""Sid":"NobodyPlantsMovesOrDelegates","Effect":"Deny","Principal":"*""#,
        &format!(
            r#""Sid":"NobodyPlantsMovesOrDelegates","Effect":"Deny","Principal":{{"AWS":"{TEST_PRINCIPAL}"}}"#
        ),
    );
    assert_ne!(narrowed, policy);
    let (sim, arn) = sim_as(OTHER_PRINCIPAL, &["kms:*"], &narrowed);
    answer(&call(&sim, "Encrypt", &encrypt(&arn)));
    // Without an IAM grant of its own, the other role gets nothing from the root statement.
    let (sim, arn) = sim_as(OTHER_PRINCIPAL, &[], &narrowed);
    denied(&call(&sim, "Encrypt", &encrypt(&arn)));
}

#[test]
fn keys_are_created_only_under_policies_their_administrator_can_change() {
    let sim = Sim::new(SimConfig::test());
    // No statement lets the key administrator PutKeyPolicy: refused, unless bypassed.
    let p = pcrs(0xaa);
    let unmanageable = format!(
        r#"{{"Statement": [{{"Sid": "enclave", "Effect": "Allow", "Principal": {{"AWS": "{TEST_PRINCIPAL}"}},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
            "Condition": {{"StringEqualsIgnoreCase": {{"kms:RecipientAttestation:ImageSha384": "{}"}}}}}}]}}"#,
        hex::encode(&p[&0])
    );
    let unmanageable = KeyPolicy::from_json(&unmanageable).unwrap();
    let err = sim.create_key(unmanageable.clone()).unwrap_err();
    assert!(err.to_string().contains(TEST_KEY_ADMIN), "{err}");
    let arn = sim.create_key_with(unmanageable.clone(), LockoutCheck::Bypass).unwrap();
    // Replacing a policy runs the same check.
    let ok = KeyPolicy::from_json(&recommended()).unwrap();
    let managed = sim.create_key(ok.clone()).unwrap();
    assert!(sim.set_policy(&managed, unmanageable.clone(), LockoutCheck::Enforce).is_err());
    sim.set_policy(&arn, ok, LockoutCheck::Enforce).unwrap();
    // AWS's default policy passes for an administrator whose IAM policies allow PutKeyPolicy.
    let default = KeyPolicy::from_json(&format!(
        r#"{{"Statement": [{{"Effect": "Allow", "Principal": {{"AWS": "arn:aws:iam::{TEST_ACCOUNT}:root"}}, "Action": "kms:*", "Resource": "*"}}]}}"#
    ))
    .unwrap();
    assert!(sim.create_key(default.clone()).is_err());
    let mut config = SimConfig::test();
    config.identity_policies.insert(TEST_KEY_ADMIN.into(), vec!["kms:PutKeyPolicy".into()]);
    assert!(Sim::new(config).create_key(default).is_ok());
}

#[test]
fn debug_never_shows_key_secrets_or_credentials() {
    let mut config = SimConfig::test();
    config.identity_policies.insert(OTHER_PRINCIPAL.into(), vec!["kms:*".into()]);
    let sim = Sim::new(config);
    let secret = [0x5au8; 32];
    sim.add_key(
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        Zeroizing::new(secret),
        KeyPolicy::from_json(&recommended()).unwrap(),
        LockoutCheck::Enforce,
    )
    .unwrap();
    let shown = format!("{sim:?} {:?}", sim.config());
    assert!(!shown.contains(&hex::encode(secret)), "{shown}");
    assert!(!shown.contains(&format!("{:?}", secret.as_slice())), "{shown}");
    assert!(!shown.contains(TEST_SECRET_ACCESS_KEY), "{shown}");
    assert!(shown.contains(TEST_ACCESS_KEY_ID), "{shown}");
}
