//! Opening the state store on host storage (`state.log`, `LogStore::open`) from arbitrary file
//! bytes with a fixed test sealing key: the journal's frame recovery with the state log's
//! framing, then each batch decoded and applied. Reopening what it left must give the same
//! batch count, and recovery must be idempotent.
//!
//! Input: a mode byte, then either the file itself (even) or a layout of sealed frames (odd:
//! `wallet_enclave::fuzzing::lay_out`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wallet_enclave::fuzzing::{lay_out, open_state_log, Log};

#[path = "seeds.rs"]
mod seeds;

/// A batch as `logstore::encode` writes it: version 1, the count, then per operation a tag
/// (1 put, 2 delete), the full key and, for a put, the value.
fn batch(ops: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
    let mut b = vec![1];
    b.extend(u32::try_from(ops.len()).expect("few").to_be_bytes());
    for (key, value) in ops {
        b.push(if value.is_some() { 1 } else { 2 });
        b.extend(u32::try_from(key.len()).expect("short").to_be_bytes());
        b.extend_from_slice(key);
        if let Some(v) = value {
            b.extend(u32::try_from(v.len()).expect("short").to_be_bytes());
            b.extend_from_slice(v);
        }
    }
    b
}

fn sealed(tag: u8, index: u8, watermark: u8, plain: &[u8]) -> Vec<u8> {
    let n = u16::try_from(plain.len()).expect("short");
    let mut v = vec![tag, index, watermark];
    v.extend(n.to_be_bytes());
    v.extend_from_slice(plain);
    v
}

fn structured() -> Vec<Vec<u8>> {
    let wallet: &[u8] = br#"{"id":"w_1","label":"ops","address":"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266","frozen":false}"#;
    let b1 = batch(&[(b"wallet/w_1", Some(wallet)), (b"meta/version", Some(b"1"))]);
    let b2 = batch(&[
        (b"kyt/0x209693bc6afc0c5328ba36faf03c514ef312287c", Some(b"1")),
        (b"wallet/w_1", None),
    ]);
    let b3 = batch(&[]);
    let mut out = vec![
        [sealed(1, 0, 0, &b1), vec![2, 8]].concat(),
        [sealed(1, 0, 0, &b1), sealed(1, 1, 1, &b2), sealed(1, 2, 2, &b3)].concat(),
        [sealed(1, 0, 0, &b1), sealed(3, 1, 1, &b2)].concat(),
        [sealed(1, 0, 0, &b1), sealed(1, 1, 1, &b2[..b2.len() - 3])].concat(),
        [sealed(1, 1, 1, &b2), sealed(1, 0, 0, &b1)].concat(),
    ];
    out.iter_mut().for_each(|v| v.insert(0, 1));
    out
}

fuzz_target!(
    init: {
        let structured = structured();
        let raw = structured.iter().map(|s| [vec![0], lay_out(Log::StateLog, &s[1..])].concat());
        seeds::write(structured.clone().into_iter().chain(raw));
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else { return };
        let file = if mode & 1 == 0 { rest.to_vec() } else { lay_out(Log::StateLog, rest) };
        let _ = open_state_log(&file);
    }
);
