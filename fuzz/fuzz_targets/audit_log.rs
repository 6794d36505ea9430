//! Opening the audit log (`AuditLog::open_file`) from arbitrary file bytes: the torn last line
//! cut, the hash chain verified, then the MACs checked under the audit key (`attach_key`, here a
//! fixed test key) and the log read back. And, from structured input, records appended with
//! arbitrary text and a torn tail after them: the log must reopen with exactly those records.
//!
//! Input: a mode byte, then the file (even), or (odd) fields separated by `0xff` — kind,
//! session, reason, detail for each record — whose last field, with its newlines dropped, is the
//! torn tail.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wallet_enclave::{audit::AuditLog, fuzzing::MemFile};
use wallet_policy::audit::Record;
use zeroize::Zeroizing;

#[path = "seeds.rs"]
mod seeds;

const KEY: [u8; 32] = [0xa5; 32];

/// Opens `bytes` as the enclave does at start-up; on success, the log's head.
fn open(bytes: &[u8]) -> Option<(u64, [u8; 32])> {
    let file = MemFile::new(bytes);
    let log = AuditLog::open_file(file.clone()).ok()?;
    let head = log.head();
    // What open left (a torn line cut) opens again to the same head.
    let again = AuditLog::open_file(MemFile::new(&file.bytes())).expect("an opened log reopens");
    assert_eq!(again.head(), head);
    if log.attach_key(Zeroizing::new(KEY)).is_ok() {
        let (lines, count) = log.read(0, u64::MAX).expect("a verified log reads");
        assert_eq!(count, head.0);
        assert!(lines.len() as u64 <= count);
    }
    Some(head)
}

/// Appends records made of `fields` to an empty log, then `tail` (a torn line); the log's file.
fn write(fields: &[&[u8]], tail: &[u8]) -> (Vec<u8>, u64) {
    let file = MemFile::new(&[]);
    let log = AuditLog::open_file(file.clone()).expect("an empty log opens");
    log.attach_key(Zeroizing::new(KEY)).expect("no records to check");
    let text =
        |i: usize| String::from_utf8_lossy(fields.get(i).copied().unwrap_or_default()).into_owned();
    let mut n = 0;
    for i in (0..fields.len()).step_by(4) {
        let r = Record {
            at_ms: 1_800_000_000_000 + i as u64,
            kind: text(i),
            session: text(i + 1),
            reason: text(i + 2),
            detail: text(i + 3),
            ..Default::default()
        };
        log.append(r).expect("appends to memory");
        n += 1;
    }
    let mut bytes = file.bytes();
    bytes.extend(tail.iter().filter(|b| **b != b'\n'));
    (bytes, n)
}

fn seed_logs() -> Vec<Vec<u8>> {
    let records: Vec<&[u8]> = vec![
        b"admin",
        b"",
        b"CreateWallet",
        b"wallet w_1 created",
        b"payment",
        b"s_1",
        b"",
        b"0.01 USDC to 0x2096 on eip155:84532",
        b"deny",
        b"s_1",
        b"PER_TX_LIMIT",
        b"1 USDC is over the 0.10 limit",
        b"withheld",
        b"s_1",
        b"WALLET_FROZEN",
        b"\xe2\x82\xac \"quoted\"\nnew line",
    ];
    let (full, _) = write(&records, b"");
    let (torn, _) = write(&records, b"{\"seq\":4,\"at_ms\"");
    let mut structured = records.join(&0xffu8);
    structured.insert(0, 1);
    vec![[vec![0], full].concat(), [vec![0], torn].concat(), structured]
}

fuzz_target!(
    init: seeds::write(seed_logs()),
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else { return };
        if mode & 1 == 0 {
            open(rest);
            return;
        }
        let mut fields: Vec<&[u8]> = rest.split(|b| *b == 0xff).collect();
        let tail = if fields.len() % 4 == 1 { fields.pop().unwrap_or_default() } else { &[] };
        let (bytes, n) = write(&fields, tail);
        let head = open(&bytes).expect("a log this enclave wrote opens");
        assert_eq!(head.0, n, "records lost or invented on reopen");
    }
);
