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

/// A gateway address as people write it, as a URL the client can dial: `127.0.0.1:7402` and
/// `localhost:7402` get `http://`; `http://` and `https://` URLs are kept (without a trailing
/// `/`). Anything else is refused with a sentence naming the problem, rather than failing later
/// as an unreachable gateway.
///
/// # Errors
/// An empty address, another scheme, a scheme without `//`, a path, or a malformed host or port.
pub fn normalize_gateway_url(input: &str) -> Result<String, String> {
    let t = input.trim();
    if t.is_empty() {
        return Err(
            "the gateway URL is empty (expected http://HOST:PORT, e.g. http://127.0.0.1:7402)"
                .to_owned(),
        );
    }
    let (scheme, rest) = match t.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => {
            let lower = t.to_ascii_lowercase();
            if lower.starts_with("http:") || lower.starts_with("https:") {
                return Err(format!(
                    "gateway URL {t:?} is missing \"//\" after the scheme (expected http://HOST:PORT)"
                ));
            }
            ("http".to_owned(), t)
        }
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "gateway URL {t:?} has the scheme {scheme:?}; the gateway speaks gRPC over http:// (or https:// behind TLS)"
        ));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "gateway URL {t:?} has a path; give only the scheme, host and port (http://127.0.0.1:7402)"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        _ if authority.ends_with(']') => (authority, None),
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'));
    if !host_ok {
        return Err(format!("gateway URL {t:?} has no valid host (expected http://HOST:PORT)"));
    }
    if let Some(p) = port {
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || p.parse::<u16>().is_ok_and(|n| n == 0)
            || p.parse::<u16>().is_err()
        {
            return Err(format!("gateway URL {t:?} has an invalid port {p:?} (1 to 65535)"));
        }
    }
    Ok(format!("{scheme}://{authority}"))
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

    /// A gateway given as `host:port` is dialled over http (it was reported as "is the stack
    /// running?" while the stack ran); what cannot be a gateway URL is named.
    #[test]
    fn gateway_urls_are_normalised_or_refused() {
        for (given, want) in [
            ("127.0.0.1:7402", "http://127.0.0.1:7402"),
            ("localhost:7402", "http://localhost:7402"),
            (" http://127.0.0.1:7402/ ", "http://127.0.0.1:7402"),
            ("HTTPS://wallet.example.com", "https://wallet.example.com"),
            ("[::1]:7402", "http://[::1]:7402"),
            ("http://[::1]:7402", "http://[::1]:7402"),
        ] {
            assert_eq!(normalize_gateway_url(given).as_deref(), Ok(want), "{given}");
        }
        for (bad, words) in [
            ("", "empty"),
            ("ftp://127.0.0.1:7402", "scheme \"ftp\""),
            ("http:127.0.0.1:7402", "missing \"//\""),
            ("http://127.0.0.1:7402/wallet", "has a path"),
            ("127.0.0.1:99999", "invalid port"),
            ("127.0.0.1:", "invalid port"),
            ("http://:7402", "no valid host"),
            ("not a url", "no valid host"),
        ] {
            let e = normalize_gateway_url(bad).unwrap_err();
            assert!(e.contains(words), "{bad}: {e}");
        }
    }

    #[test]
    fn idempotency_keys_are_fresh_and_well_formed() {
        let (a, b) = (random_idempotency_key(), random_idempotency_key());
        assert_ne!(a, b);
        assert!(a.starts_with("pay_") && a.len() == 36);
        assert!(now_ms() > 1_600_000_000_000);
    }
}
