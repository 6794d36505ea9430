//! The policy document parser: TOML text to a checked `Policy` (and its warnings against the
//! built-in registry), as `SetPolicy` and `walletctl policy` read it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wallet_policy::{registry::default_assets, rules::Policy};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Policy::parse(&text) {
        Ok(policy) => {
            let _ = policy.warnings(&default_assets());
        }
        Err(e) => {
            // An error names a line of the document (or 0: the whole document).
            assert!(
                e.line <= text.lines().count() + 1,
                "line {} of {}",
                e.line,
                text.lines().count()
            );
            let _ = e.to_string();
        }
    }
});
