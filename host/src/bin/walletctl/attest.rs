//! `walletctl attest`, and the verified first contact of `walletctl init`: ask the enclave for
//! an attestation document over a fresh nonce, verify it (wallet-attestation: COSE signature,
//! certificate chain to a built-in root, nonce, limits), check the PCRs, the KMS key and the
//! service id against what the admin expects, and only then trust the identity key the document
//! binds. What was expected is pinned in `HOME/enclave.json` with the identity.

use std::path::{Path, PathBuf};

use clap::Args;
use rand_core::{OsRng, RngCore as _};
use wallet_attestation::{hex_pcr, AttestationDoc, Measurements, Root};
use wallet_proto::{attest::identity_claims, gateway::v1 as gw};

use crate::{output::at_ms, Fail, Out};

/// What `walletctl init` pins beside the identity: the mode, the measurements and the sealing
/// the admin expected.
pub(crate) const ENCLAVE_FILE: &str = "enclave.json";

/// What the admin expects the enclave to be.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Expect {
    /// Expected PCR0, the whole enclave image (hex, 96 digits: SHA-384), as
    /// `scripts/build-eif.sh` or `nitro-cli describe-eif` prints it. Required for a Nitro
    /// enclave (here or in --measurements).
    #[arg(long = "expect-pcr0", value_name = "HEX")]
    pcr0: Option<String>,
    /// Expected PCR1 (kernel and boot ramdisk).
    #[arg(long = "expect-pcr1", value_name = "HEX")]
    pcr1: Option<String>,
    /// Expected PCR2 (the application: the wallet's enclave build).
    #[arg(long = "expect-pcr2", value_name = "HEX")]
    pcr2: Option<String>,
    /// Expected measurements as JSON: nitro-cli's `{"Measurements": {"PCR0": "…", …}}` or
    /// `{"PCR0": "…", …}`. A PCR given here and as a flag must agree.
    #[arg(long, value_name = "FILE")]
    measurements: Option<PathBuf>,
    /// The KMS key (ARN) that must wrap the enclave's sealing key. Required for a Nitro enclave:
    /// the host starts the enclave and could name a key of its own, whose policy lets it read
    /// the sealing key.
    #[arg(long, value_name = "ARN")]
    expect_kms_key: Option<String>,
    /// The wallet service id the sealing key must be bound to (its KMS encryption context).
    /// Required for a Nitro enclave.
    #[arg(long, value_name = "ID")]
    expect_service: Option<String>,
    /// Accept a SIMULATED enclave: a document signed by the project's TEST root, which only
    /// development builds of walletctl know. Its private key is public, so such a document
    /// proves nothing: use it only for an enclave you started yourself (scripts/dev-up.sh).
    #[arg(long)]
    simulated: bool,
}

/// What `HOME/enclave.json` holds (and what a first contact expects).
#[derive(Debug, Clone, Default)]
struct Pinned {
    /// `"simulated"` or `"nitro"`.
    mode: String,
    measurements: Option<Measurements>,
    kms_key_id: String,
    service_id: String,
}

impl Pinned {
    fn read(home: &Path) -> Result<Option<Self>, Fail> {
        let path = home.join(ENCLAVE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Fail(1, format!("cannot read {}: {e}", path.display()))),
        };
        let bad = |why: String| Fail(5, format!("{} is unreadable: {why}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_owned();
        let measurements = match v.get("Measurements") {
            Some(_) => Some(Measurements::from_json(&text).map_err(|e| bad(e.to_string()))?),
            None => None,
        };
        let mode = field("mode");
        if mode != "simulated" && mode != "nitro" {
            return Err(bad(format!("mode {mode:?} is neither \"simulated\" nor \"nitro\"")));
        }
        Ok(Some(Self {
            mode,
            measurements,
            kms_key_id: field("kms_key_id"),
            service_id: field("service_id"),
        }))
    }

    fn write(&self, home: &Path) -> Out {
        let path = home.join(ENCLAVE_FILE);
        let mut v = serde_json::json!({
            "mode": self.mode,
            "kms_key_id": self.kms_key_id,
            "service_id": self.service_id,
        });
        if let Some(m) = &self.measurements {
            let map: serde_json::Map<String, serde_json::Value> =
                m.0.iter().map(|(i, v)| (format!("PCR{i}"), hex_pcr(v).into())).collect();
            v["Measurements"] = serde_json::Value::Object(map);
        }
        std::fs::write(&path, format!("{v:#}\n"))
            .map_err(|e| Fail(1, format!("cannot write {}: {e}", path.display())))?;
        println!("expectations:   pinned in {}", path.display());
        Ok(())
    }
}

impl Expect {
    /// The measurements given on the command line, if any: PCR0 must be among them (PCR1 or
    /// PCR2 alone let another image through), and no value may be all zeros (a debug-mode
    /// enclave, whose memory the host can read, reports zeros).
    fn measurements(&self) -> Result<Option<Measurements>, Fail> {
        let bad = |e: String| Fail(2, format!("invalid: {e}"));
        let mut m = match &self.measurements {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Fail(2, format!("cannot read {}: {e}", path.display())))?;
                Some(
                    Measurements::from_json(&text)
                        .map_err(|e| bad(format!("--measurements {}: {e}", path.display())))?,
                )
            }
            None => None,
        };
        for (index, hex) in [(0u8, &self.pcr0), (1, &self.pcr1), (2, &self.pcr2)] {
            if let Some(hex) = hex {
                m.get_or_insert_with(Measurements::default)
                    .insert_hex(index, hex)
                    .map_err(|e| bad(format!("--expect-pcr{index}: {e}")))?;
            }
        }
        if let Some(m) = &m {
            if !m.0.contains_key(&0) {
                return Err(bad("the expected measurements must include PCR0 (the whole image): PCR1 and PCR2 alone also match other images".into()));
            }
            if let Some((i, _)) = m.0.iter().find(|(_, v)| v.iter().all(|b| *b == 0)) {
                return Err(bad(format!("PCR{i} is all zeros: that is what an enclave in debug mode reports (the host can read its memory); expect a production image's measurements")));
            }
        }
        Ok(m)
    }

    /// What this run expects: the flags, else what `HOME/enclave.json` pinned.
    fn resolve(&self, pinned: Option<&Pinned>) -> Result<Pinned, Fail> {
        let given = self.measurements()?;
        let mut p = pinned.cloned().unwrap_or_default();
        if let Some(m) = given {
            p.measurements = Some(m);
        }
        if let Some(k) = &self.expect_kms_key {
            k.clone_into(&mut p.kms_key_id);
        }
        if let Some(s) = &self.expect_service {
            s.clone_into(&mut p.service_id);
        }
        Ok(p)
    }
}

/// `walletctl attest` flags.
#[derive(Debug, Args)]
pub(crate) struct AttestArgs {
    #[command(flatten)]
    expect: Expect,
    /// Also write the raw attestation document (COSE_Sign1, CBOR) to FILE, for an auditor.
    #[arg(long, value_name = "FILE")]
    save_document: Option<PathBuf>,
}

/// A verified identity document, checked against what the admin expects.
pub(crate) struct Attested {
    claims: gw::IdentityClaims,
    /// What was expected of it, to pin with the identity.
    expected: Pinned,
}

impl Attested {
    /// The identity key the document binds, hex.
    pub(crate) fn identity_hex(&self) -> String {
        hex::encode(&self.claims.identity)
    }
    /// Pins what was expected (mode, measurements, KMS key, service id) in `HOME/enclave.json`.
    pub(crate) fn pin(&self, home: &Path) -> Out {
        self.expected.write(home)
    }
}

/// `s` for a terminal: control characters (escape sequences a forged document could carry)
/// replaced, at most 200 characters.
fn printable(s: &str) -> String {
    let mut out: String =
        s.chars().take(200).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// Asks the enclave at `url` for an identity document over a fresh 32-byte nonce and verifies
/// it. Exit code 5 when it does not verify or does not bind an identity.
async fn fetch_verified(url: &str) -> Result<(AttestationDoc, gw::IdentityClaims, Vec<u8>), Fail> {
    let mut cl = crate::unpinned_client(url).await?;
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let raw =
        cl.get_attestation(gw::GetAttestationRequest { nonce: nonce.to_vec() }).await?.document;
    let doc = wallet_attestation::verify(&raw, wallet_client::now_ms(), Some(&nonce)).map_err(|e| {
        let build = if wallet_attestation::accepted_roots().contains(&Root::Test) {
            ""
        } else {
            " (this walletctl is a production build: it accepts only the AWS Nitro root, so a simulated enclave's documents are refused too)"
        };
        untrusted(format!("the enclave's attestation document does not verify: {}{build}", printable(&e.to_string())))
    })?;
    let claims =
        identity_claims(doc.user_data.as_deref(), doc.public_key.as_deref()).map_err(|e| {
            untrusted(format!("the attestation document does not bind an identity: {e}"))
        })?;
    if !claimed_mode_fits(doc.root, &claims.mode) {
        return Err(untrusted(format!(
            "the document is signed under the {} but claims mode {:?}",
            doc.root,
            printable(&claims.mode)
        )));
    }
    Ok((doc, claims, raw))
}

fn untrusted(what: String) -> Fail {
    Fail(5, format!("{what}. The enclave's identity cannot be trusted: do not use this host."))
}

/// Prints what a verified document says.
fn show(doc: &AttestationDoc, claims: &gw::IdentityClaims) {
    if doc.root == Root::Test {
        let what = if claims.mode == "emulated" {
            "an EMULATED Nitro enclave (QEMU's NSM)"
        } else {
            "a SIMULATED enclave"
        };
        println!(
            "attestation:    VERIFIED under the {} — {what}: no hardware isolation, not for real funds",
            doc.root
        );
    } else {
        println!("attestation:    VERIFIED ({})", doc.root);
    }
    println!("module:         {}", printable(&doc.module_id));
    println!("signed at:      {}", at_ms(doc.timestamp_ms));
    for (index, value) in &doc.pcrs {
        let shown = *index <= 2 || ((*index <= 4 || *index == 8) && value.iter().any(|b| *b != 0));
        if shown {
            println!(
                "PCR{index}:{:width$}{}",
                "",
                hex_pcr(value),
                width = 11 - index.to_string().len()
            );
        }
    }
    println!("identity:       {}", hex::encode(&claims.identity));
    match claims.sealing.as_str() {
        "kms" => println!(
            "sealing:        KMS data key (key {}, service {})",
            printable(&claims.kms_key_id),
            printable(&claims.service_id)
        ),
        "key-file" => println!(
            "sealing:        key file on the host (SIMULATED: whoever reads the data directory can read it)"
        ),
        other => println!("sealing:        {}", printable(other)),
    }
    println!("enclave:        {} {}", printable(&claims.mode), printable(&claims.enclave_version));
}

/// Whether the mode an enclave claims fits the root its document is signed under: the AWS root
/// for `nitro`; the TEST root for `simulated` (the simulated NSM) and `emulated` (the production
/// binary on QEMU's emulated NSM, which signs under the TEST root). Either TEST-rooted mode proves
/// nothing and needs `--simulated`.
fn claimed_mode_fits(root: Root, mode: &str) -> bool {
    match root {
        Root::Test => mode == "simulated" || mode == "emulated",
        _ => mode == "nitro",
    }
}

/// Checks a verified document against `expected`. `required` (first contact): a Nitro enclave
/// needs measurements, a KMS key and a service id to compare with; `walletctl attest` reports
/// what it could not check instead.
fn check(
    doc: &AttestationDoc,
    claims: &gw::IdentityClaims,
    expected: &Pinned,
    allow_simulated: bool,
    required: bool,
) -> Out {
    let refuse = |what: String| Err(Fail(5, what));
    let mode = if doc.root == Root::Test { "simulated" } else { "nitro" };
    if !expected.mode.is_empty() && expected.mode != mode {
        return refuse(format!(
            "the enclave you pinned was {}, this one is {mode}: a different enclave. Refusing it.",
            expected.mode
        ));
    }
    if doc.root == Root::Test && !allow_simulated && expected.mode != "simulated" {
        return refuse("this enclave's document is signed by the project's TEST root: a SIMULATED enclave — or a host forging one, since the test key is public. If you started it yourself for development, say so: walletctl init --simulated".into());
    }
    match &expected.measurements {
        Some(m) => {
            m.check(doc).map_err(|e| {
                Fail(5, format!("the enclave does not run what you expect:\n{e}\nRefusing to trust it: the host may run another image (or you gave the measurements of another build)."))
            })?;
            let names: Vec<String> = m.0.keys().map(|i| format!("PCR{i}")).collect();
            println!("measurements:   match what you expect ({})", names.join(", "));
        }
        None if doc.root == Root::Test => {
            println!("measurements:   not checked (simulated: its PCRs measure the local binary and prove nothing)");
        }
        None if required => return refuse(
            "this is a Nitro enclave and you gave no measurements to expect: an enclave is trusted only once its image is checked. Give the PCRs that scripts/build-eif.sh (or nitro-cli describe-eif) printed for the image you deploy: --expect-pcr0 HEX (and --expect-pcr1, --expect-pcr2), or --measurements FILE".into(),
        ),
        None => println!("measurements:   NOT CHECKED: give --expect-pcr0 (or --measurements), or pin them with walletctl init"),
    }
    // Nitro: the sealing key must come from KMS, under the key and service the admin names (a
    // simulated enclave may seal with KMS too: what the admin names is then compared as well).
    let nitro = doc.root != Root::Test;
    if nitro && claims.sealing != "kms" {
        return refuse(format!(
            "this Nitro enclave seals its state with {:?}, not a KMS key released to its measurements. Refusing it.",
            printable(&claims.sealing)
        ));
    }
    for (what, flag, want, got) in [
        ("KMS key", "--expect-kms-key ARN", &expected.kms_key_id, &claims.kms_key_id),
        ("service id", "--expect-service ID", &expected.service_id, &claims.service_id),
    ] {
        if want.is_empty() {
            if !nitro {
                continue;
            }
            if required {
                return refuse(format!("this Nitro enclave was started with the {what} {:?}, chosen by the host; name the one you expect: {flag}", printable(got)));
            }
            println!("{what}:{:width$}NOT CHECKED ({flag})", "", width = 15 - what.len());
        } else if want != got {
            return refuse(format!(
                "this enclave seals its state under the {what} {:?}, not {want:?}: the host chose another (a key of its own would let it read every wallet key). Refusing it.",
                printable(got)
            ));
        } else {
            println!("{what}:{:width$}as you expect", "", width = 15 - what.len());
        }
    }
    Ok(())
}

/// The first contact of `walletctl init`: verify the document and check it against what the
/// admin expects (required for a Nitro enclave). Nothing is pinned here: the caller pins the
/// identity and [`Attested::pin`] once the enclave has answered under it.
pub(crate) async fn first_contact(
    url: &str,
    home: &Path,
    expect: &Expect,
) -> Result<Attested, Fail> {
    let pinned = Pinned::read(home)?;
    let mut expected = expect.resolve(pinned.as_ref())?;
    let (doc, claims, _) = fetch_verified(url).await?;
    show(&doc, &claims);
    check(&doc, &claims, &expected, expect.simulated, true)?;
    if doc.root == Root::AwsNitroG1 {
        "nitro".clone_into(&mut expected.mode);
    } else {
        "simulated".clone_into(&mut expected.mode);
    }
    Ok(Attested { claims, expected })
}

/// `walletctl attest`.
pub(crate) async fn run(url: &str, home: &Path, args: &AttestArgs) -> Out {
    let pinned = Pinned::read(home)?;
    let expected = args.expect.resolve(pinned.as_ref())?;
    let (doc, claims, raw) = fetch_verified(url).await?;
    show(&doc, &claims);
    if let Some(path) = &args.save_document {
        std::fs::write(path, &raw)
            .map_err(|e| Fail(1, format!("cannot write {}: {e}", path.display())))?;
        println!("document:       saved to {} ({} bytes)", path.display(), raw.len());
    }
    check(&doc, &claims, &expected, args.expect.simulated, false)?;
    let identity = hex::encode(&claims.identity);
    if let Some(pinned) = crate::pinned_identity() {
        if pinned != identity {
            return Err(Fail(5, crate::setup::identity_changed(url, home, &pinned, &identity)));
        }
        println!("identity:       the one pinned in {}", home.join("audit.pub").display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(root: Root) -> AttestationDoc {
        AttestationDoc {
            module_id: "i-0123-enc0123".into(),
            digest: "SHA384".into(),
            timestamp_ms: 1,
            pcrs: [(0u8, vec![1; 48]), (1, vec![2; 48]), (2, vec![3; 48])].into_iter().collect(),
            public_key: Some(vec![7; 32]),
            user_data: None,
            nonce: None,
            root,
        }
    }

    fn claims(sealing: &str) -> gw::IdentityClaims {
        gw::IdentityClaims {
            mode: "nitro".into(),
            identity: vec![7; 32],
            sealing: sealing.into(),
            kms_key_id: "arn:aws:kms:us-east-1:111122223333:key/good".into(),
            service_id: "prod".into(),
            ..Default::default()
        }
    }

    fn expected(pcr0: u8, key: &str, service: &str) -> Pinned {
        Pinned {
            mode: String::new(),
            measurements: Some(Measurements([(0u8, vec![pcr0; 48])].into_iter().collect())),
            kms_key_id: key.into(),
            service_id: service.into(),
        }
    }

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/good";

    fn refused(r: Out, what: &str) {
        match r {
            Err(Fail(5, msg)) => assert!(msg.contains(what), "expected {what:?} in {msg}"),
            Err(Fail(code, msg)) => panic!("exit {code}: {msg}"),
            Ok(()) => panic!("accepted; expected a refusal naming {what:?}"),
        }
    }

    #[test]
    fn a_nitro_first_contact_needs_measurements_kms_key_and_service_and_all_must_match() {
        let d = doc(Root::AwsNitroG1);
        assert!(check(&d, &claims("kms"), &expected(1, KEY, "prod"), false, true).is_ok());
        refused(check(&d, &claims("kms"), &Pinned::default(), false, true), "no measurements");
        refused(check(&d, &claims("kms"), &expected(9, KEY, "prod"), false, true), "PCR0");
        refused(
            check(&d, &claims("kms"), &expected(1, "", "prod"), false, true),
            "--expect-kms-key",
        );
        refused(check(&d, &claims("kms"), &expected(1, KEY, ""), false, true), "--expect-service");
        refused(
            check(
                &d,
                &claims("kms"),
                &expected(1, "arn:aws:kms:us-east-1:999:key/host", "prod"),
                false,
                true,
            ),
            "a key of its own",
        );
        refused(check(&d, &claims("kms"), &expected(1, KEY, "staging"), false, true), "service id");
        refused(
            check(&d, &claims("key-file"), &expected(1, KEY, "prod"), false, true),
            "not a KMS key",
        );
        // `attest` (not a first contact) reports what it could not check instead.
        assert!(check(&d, &claims("kms"), &Pinned::default(), false, false).is_ok());
        // The pinned mode binds: a simulated pin refuses a Nitro enclave and vice versa.
        let mut pinned = expected(1, KEY, "prod");
        pinned.mode = "simulated".into();
        refused(check(&d, &claims("kms"), &pinned, true, true), "a different enclave");
    }

    #[test]
    fn a_test_root_document_needs_the_admins_word_or_a_simulated_pin() {
        let d = doc(Root::Test);
        let c = gw::IdentityClaims {
            mode: "simulated".into(),
            sealing: "key-file".into(),
            ..claims("")
        };
        refused(check(&d, &c, &Pinned::default(), false, true), "--simulated");
        assert!(check(&d, &c, &Pinned::default(), true, true).is_ok());
        let pinned = Pinned { mode: "simulated".into(), ..Pinned::default() };
        assert!(check(&d, &c, &pinned, false, true).is_ok());
        let nitro = Pinned { mode: "nitro".into(), ..Pinned::default() };
        refused(check(&d, &c, &nitro, true, true), "a different enclave");
        // Measurements given for a simulated enclave are still compared.
        refused(check(&d, &c, &expected(9, "", ""), true, true), "PCR0");
    }

    #[test]
    fn the_claimed_mode_must_fit_the_root() {
        assert!(claimed_mode_fits(Root::AwsNitroG1, "nitro"));
        assert!(claimed_mode_fits(Root::Test, "simulated"));
        assert!(claimed_mode_fits(Root::Test, "emulated"));
        for (root, mode) in [
            (Root::AwsNitroG1, "simulated"),
            (Root::AwsNitroG1, "emulated"),
            (Root::Test, "nitro"),
            (Root::Test, ""),
        ] {
            assert!(!claimed_mode_fits(root, mode), "{root:?} {mode}");
        }
        // An emulated enclave (KMS sealing under the TEST root) still needs --simulated, and
        // what the admin names is compared.
        let d = doc(Root::Test);
        let c = gw::IdentityClaims { mode: "emulated".into(), ..claims("kms") };
        refused(check(&d, &c, &Pinned::default(), false, true), "--simulated");
        assert!(check(&d, &c, &expected(1, KEY, "prod"), true, true).is_ok());
        refused(check(&d, &c, &expected(9, KEY, "prod"), true, true), "PCR0");
        refused(
            check(&d, &c, &expected(1, "arn:aws:kms:us-east-1:999:key/host", "prod"), true, true),
            "a key of its own",
        );
    }

    #[test]
    fn weak_expectations_are_refused() {
        let pcr = |s: &str| Expect { pcr0: None, pcr2: Some(s.into()), ..Expect::default() };
        assert!(
            matches!(pcr(&"ab".repeat(48)).measurements(), Err(Fail(2, m)) if m.contains("PCR0"))
        );
        let zero = Expect { pcr0: Some("00".repeat(48)), ..Expect::default() };
        assert!(matches!(zero.measurements(), Err(Fail(2, m)) if m.contains("all zeros")));
        let ok = Expect { pcr0: Some("ab".repeat(48)), ..Expect::default() };
        assert_eq!(ok.measurements().ok().flatten().map(|m| m.0.len()), Some(1));
    }

    #[test]
    fn control_characters_from_a_document_never_reach_the_terminal() {
        assert_eq!(printable("ok\u{1b}[2Kx"), "ok\u{fffd}[2Kx");
        assert!(printable(&"a".repeat(500)).chars().count() <= 201);
    }
}
