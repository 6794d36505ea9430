//! Small helpers every client needs.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use rand_core::{OsRng, RngCore as _};

/// Milliseconds since the Unix epoch (0 if the clock is before it): the timestamp of signed
/// requests.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A random idempotency key (`pay_` + 32 hex).
#[must_use]
pub fn random_idempotency_key() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    format!("pay_{}", hex::encode(b))
}

/// Strips whitespace and an optional `PAYMENT-REQUIRED:` prefix from what was pasted on stdin.
#[must_use]
pub fn clean_header_input(input: &str) -> &str {
    let t = input.trim();
    match t.split_once(':') {
        Some((name, rest)) if name.trim().eq_ignore_ascii_case("payment-required") => rest.trim(),
        _ => t,
    }
}

/// Default home of walletctl: `$WALLETCTL_HOME`, else `$XDG_CONFIG_HOME/agent-wallet`, else
/// `~/.config/agent-wallet`.
#[must_use]
pub fn default_home() -> PathBuf {
    if let Some(d) = std::env::var_os("WALLETCTL_HOME") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(d).join("agent-wallet");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".agent-wallet"),
        |h| PathBuf::from(h).join(".config/agent-wallet"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_input() {
        assert_eq!(clean_header_input("  abc=\n"), "abc=");
        assert_eq!(clean_header_input("PAYMENT-REQUIRED: abc="), "abc=");
        assert_eq!(clean_header_input("payment-required:abc"), "abc");
    }

    #[test]
    fn idempotency_keys_are_fresh_and_well_formed() {
        let (a, b) = (random_idempotency_key(), random_idempotency_key());
        assert_ne!(a, b);
        assert!(a.starts_with("pay_") && a.len() == 36);
        assert!(now_ms() > 1_600_000_000_000);
    }
}
