//! The official client's vectors (x402-wire.md §8), reproduced byte for byte.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use k256::ecdsa::SigningKey;
use wallet_policy::{
    address::parse_address,
    eip712::Authorization,
    registry::default_assets,
    x402::{decode_payment_required, encode_header, parse_requirement, payment_payload_json},
    U256,
};

const HARDHAT0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// PAYMENT-REQUIRED of the vectors: the §2.3 example with `error: "Payment required"`.
const REQUIRED_JSON: &str = r#"{"x402Version":2,"error":"Payment required","resource":{"url":"https://api.example.com/premium-data","description":"Access to premium market data","mimeType":"application/json"},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]}"#;

const V1_PAYLOAD: &str = r#"{"x402Version":2,"payload":{"authorization":{"from":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","to":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","value":"10000","validAfter":"0","validBefore":"1740672214","nonce":"0x0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"},"signature":"0x448d9136f87ee32ff257eff58391cffe5eaa7a46f3b5eb8e61310b9a652e8c79433e63c7e9cd76c8fb0e503f02e76775b5a9955bc27e720fbca5698c3eacdd441c"},"resource":{"url":"https://api.example.com/premium-data","description":"Access to premium market data","mimeType":"application/json"},"accepted":{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}}"#;

const V1_HEADER: &str = "eyJ4NDAyVmVyc2lvbiI6MiwicGF5bG9hZCI6eyJhdXRob3JpemF0aW9uIjp7ImZyb20iOiIweGYzOUZkNmU1MWFhZDg4RjZGNGNlNmFCODgyNzI3OWNmZkZiOTIyNjYiLCJ0byI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsInZhbHVlIjoiMTAwMDAiLCJ2YWxpZEFmdGVyIjoiMCIsInZhbGlkQmVmb3JlIjoiMTc0MDY3MjIxNCIsIm5vbmNlIjoiMHgwMTAyMDMwNDA1MDYwNzA4MDkwYTBiMGMwZDBlMGYxMDExMTIxMzE0MTUxNjE3MTgxOTFhMWIxYzFkMWUxZjIwIn0sInNpZ25hdHVyZSI6IjB4NDQ4ZDkxMzZmODdlZTMyZmYyNTdlZmY1ODM5MWNmZmU1ZWFhN2E0NmYzYjVlYjhlNjEzMTBiOWE2NTJlOGM3OTQzM2U2M2M3ZTljZDc2YzhmYjBlNTAzZjAyZTc2Nzc1YjVhOTk1NWJjMjdlNzIwZmJjYTU2OThjM2VhY2RkNDQxYyJ9LCJyZXNvdXJjZSI6eyJ1cmwiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS9wcmVtaXVtLWRhdGEiLCJkZXNjcmlwdGlvbiI6IkFjY2VzcyB0byBwcmVtaXVtIG1hcmtldCBkYXRhIiwibWltZVR5cGUiOiJhcHBsaWNhdGlvbi9qc29uIn0sImFjY2VwdGVkIjp7InNjaGVtZSI6ImV4YWN0IiwibmV0d29yayI6ImVpcDE1NTo4NDUzMiIsImFtb3VudCI6IjEwMDAwIiwiYXNzZXQiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMxOGYzZENGN2UiLCJwYXlUbyI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsIm1heFRpbWVvdXRTZWNvbmRzIjo2MCwiZXh0cmEiOnsibmFtZSI6IlVTREMiLCJ2ZXJzaW9uIjoiMiJ9fX0=";

/// Signs like the enclave does: RFC 6979 prehash signature, `v = 27 + recovery id`.
fn sign(key: &SigningKey, digest: &[u8; 32]) -> [u8; 65] {
    let (sig, recid) = key.sign_prehash_recoverable(digest).unwrap();
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&sig.to_bytes());
    out[64] = 27 + recid.to_byte();
    out
}

fn vector_auth(valid_after: u64) -> Authorization {
    let mut nonce = [0u8; 32];
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = u8::try_from(i + 1).unwrap();
    }
    Authorization {
        from: parse_address("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266").unwrap(),
        to: parse_address("0x209693Bc6afc0C5328bA36FaF03C514EF312287C").unwrap(),
        value: U256::from(10000u64),
        valid_after,
        valid_before: 1_740_672_214,
        nonce,
    }
}

#[test]
fn v1_payload_and_header_are_byte_identical() {
    let key = SigningKey::from_slice(&hex::decode(HARDHAT0).unwrap()).unwrap();
    let required = decode_payment_required(&STANDARD.encode(REQUIRED_JSON)).unwrap();
    let req = parse_requirement(&required.accepts[0]).unwrap();
    let asset = default_assets()
        .into_iter()
        .find(|a| a.network == req.network && a.address == req.asset)
        .unwrap();
    let auth = vector_auth(0);
    let digest = auth.signing_hash(&asset.domain_separator());
    let sig = sign(&key, &digest.0);
    assert_eq!(
        hex::encode(sig),
        "448d9136f87ee32ff257eff58391cffe5eaa7a46f3b5eb8e61310b9a652e8c79433e63c7e9cd76c8fb0e503f02e76775b5a9955bc27e720fbca5698c3eacdd441c"
    );
    let json = payment_payload_json(&required, &required.accepts[0], &auth, &sig, "pay_unused");
    assert_eq!(json, V1_PAYLOAD);
    assert_eq!(encode_header(&json), V1_HEADER);
}

#[test]
fn v2_signature_matches() {
    let key = SigningKey::from_slice(&hex::decode(HARDHAT0).unwrap()).unwrap();
    let asset = default_assets().into_iter().find(|a| a.network == "eip155:84532").unwrap();
    let sig = sign(&key, &vector_auth(1_740_671_554).signing_hash(&asset.domain_separator()).0);
    assert_eq!(
        hex::encode(sig),
        "3e3a454d30d7f8c00cefaefbe8f353230a1019795f3fe520387683841cc75ea3089c877b0fd675b6892cc9e1c2de72fd02a20ce7d0b4bffdc78a1fd72dc0b2931b"
    );
}

#[test]
fn extensions_are_echoed_and_accepted_is_verbatim() {
    // Unknown extra keys, odd key order and lower-case payTo must survive untouched in `accepted`.
    let json = r#"{"x402Version":2,"resource":{"url":"mcp://tool/x"},"accepts":[{"payTo":"0x209693bc6afc0c5328ba36faf03c514ef312287c","scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","maxTimeoutSeconds":60,"extra":{"version":"2","name":"USDC","feeHint":{"a":[1,2]}}}],"extensions":{"payment-identifier":{"info":{"required":false}}}}"#;
    let required = decode_payment_required(&STANDARD.encode(json)).unwrap();
    let out = payment_payload_json(
        &required,
        &required.accepts[0],
        &vector_auth(0),
        &[0u8; 65],
        "pay_0123456789abcdef0123",
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let original: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["accepted"], original["accepts"][0]);
    let mut expected_ext = original["extensions"].clone();
    expected_ext["payment-identifier"]["info"]["id"] = "pay_0123456789abcdef0123".into();
    assert_eq!(v["extensions"], expected_ext, "extensions echoed, with the payment id added");
    assert_eq!(v["resource"], original["resource"]);
    assert!(
        out.contains(r#""payTo":"0x209693bc6afc0c5328ba36faf03c514ef312287c","scheme""#),
        "key order and case kept"
    );
    assert_eq!(v["payload"]["authorization"]["to"], "0x209693Bc6afc0C5328bA36FaF03C514EF312287C");
    assert!(out.find("\"extensions\"").unwrap() < out.find("\"resource\"").unwrap());
}
