//! The KYT denylist file parsers (`wallet_host::kyt_import::parse`, behind `walletctl kyt
//! import`): plain lines, CSV (`,` `;` tab) with a named or guessed address column, and JSON (an
//! array of strings or objects, or an object holding one), and format detection. The counts must
//! add up: every entry is valid, a duplicate or bad.
//!
//! Input: a selector byte (format; whether a column is named, and which), then the file
//! (UTF-8, lossily).

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use wallet_host::kyt_import::{parse, Format};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let format = match sel & 3 {
        0 => Format::Auto,
        1 => Format::Plain,
        2 => Format::Csv,
        _ => Format::Json,
    };
    let column = match sel >> 2 & 3 {
        0 => None,
        1 => Some("address"),
        2 => Some("Wallet Address"),
        _ => Some("addr"),
    };
    let text = String::from_utf8_lossy(rest);
    let Ok(parsed) = parse(&text, format, column) else { return };
    assert_ne!(parsed.format, Format::Auto);
    assert_eq!(
        parsed.entries,
        parsed.addresses.len() + parsed.duplicates + parsed.bad.len(),
        "entries do not add up"
    );
    let distinct: HashSet<_> = parsed.addresses.iter().collect();
    assert_eq!(distinct.len(), parsed.addresses.len(), "duplicate addresses kept");
    let lines = text.lines().count().max(1);
    for b in &parsed.bad {
        assert!(b.line >= 1 && b.line <= lines + 1, "bad entry on line {} of {lines}", b.line);
        assert!(b.text.chars().count() <= 80);
    }
});
