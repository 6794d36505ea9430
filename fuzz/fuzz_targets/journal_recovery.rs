//! Recovery of the spend journal (`spends.journal`) from arbitrary file bytes, as
//! `Journal::open` reads it with the enclave's sealing key (here a fixed test key): the frames,
//! the watermark rule that tells a torn tail from tampering, and every recovered record read back
//! as a spend or a withheld signature. Recovery must be idempotent (its cleared file recovers
//! the same records).
//!
//! Input: a mode byte, then either the file itself (even) or a layout of sealed frames
//! (odd: `wallet_enclave::fuzzing::lay_out`), so that the fuzzer gets past authentication.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wallet_enclave::fuzzing::{lay_out, recover_journal, Log};

#[path = "seeds.rs"]
mod seeds;

/// A spend record as an enclave wrote it (from `ledger::tests::legacy_record`, with v1 fields).
const SPEND: &str = r#"{"kind":"spend","seq":7,"session_id":"s_1","wallet_id":"w_1","charge":"0x2386f26fc10000","amount":"0x2710","network":"eip155:84532","asset":"0x036cbd53842c5426634e7929541ec2318f3dcf7e","pay_to":"0x209693bc6afc0c5328ba36faf03c514ef312287c","valid_before":1800000060,"at_ms":1800000000000,"idempotency_key":"k","request_hash":"0000000000000000000000000000000000000000000000000000000000000000","payload_json":"{\"x402Version\":2,\"payload\":{},\"accepted\":{\"scheme\":\"exact\",\"network\":\"eip155:84532\"}}","accepted_index":0,"charged":"0.01","asset_symbol":"USDC","session_spent":"0.01","session_remaining":"0.99","payer":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","x402_version":2}"#;
const WITHHELD: &str = r#"{"kind":"withheld","session_id":"s_1","idempotency_key":"k","request_hash":"0000000000000000000000000000000000000000000000000000000000000000","reason":"WALLET_FROZEN","at_ms":1800000000001}"#;

/// A sealed frame operation of `lay_out`.
fn sealed(tag: u8, index: u8, watermark: u8, plain: &[u8]) -> Vec<u8> {
    let n = u16::try_from(plain.len()).expect("short");
    let mut v = vec![tag, index, watermark];
    v.extend(n.to_be_bytes());
    v.extend_from_slice(plain);
    v
}

fn structured() -> Vec<Vec<u8>> {
    let (s, w) = (SPEND.as_bytes(), WITHHELD.as_bytes());
    let mut out = vec![
        // One spend; then zeros (preallocated space).
        [sealed(1, 0, 0, s), vec![2, 64]].concat(),
        // A spend, its withholding, another spend acknowledging both.
        [sealed(1, 0, 0, s), sealed(1, 1, 1, w), sealed(1, 2, 2, s), vec![2, 16]].concat(),
        // A torn tail: the third frame cut in half.
        [sealed(1, 0, 0, s), sealed(1, 1, 1, w), sealed(3, 2, 2, s)].concat(),
        // A record acknowledged later but corrupt: refused.
        [
            sealed(1, 0, 0, s),
            vec![0, 4, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0],
            sealed(1, 2, 2, s),
        ]
        .concat(),
        // Two records swapped.
        [sealed(1, 1, 1, w), sealed(1, 0, 0, s)].concat(),
        // Not JSON inside the seal.
        sealed(1, 0, 0, b"not json"),
    ];
    out.iter_mut().for_each(|v| v.insert(0, 1));
    out
}

fuzz_target!(
    init: {
        let structured = structured();
        let raw = structured.iter().map(|s| [vec![0], lay_out(Log::Journal, &s[1..])].concat());
        seeds::write(structured.clone().into_iter().chain(raw));
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else { return };
        let file = if mode & 1 == 0 { rest.to_vec() } else { lay_out(Log::Journal, rest) };
        let _ = recover_journal(&file);
    }
);
