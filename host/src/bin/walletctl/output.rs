//! Output shared by the commands: the `--output` format, and times for people (with `jiff`).

use jiff::{SignedDuration, Timestamp};

/// How a listing is printed: lines for people (times in RFC 3339), or JSON for programs (the
/// raw fields, Unix times as numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Lines for people.
    #[default]
    Text,
    /// JSON with the raw fields (Unix times as numbers); messages such as "no sessions" go to
    /// stderr, so stdout stays parseable.
    Json,
}

/// Prints a JSON value on stdout (a closed pipe, as with `| head`, ends the output quietly).
pub(crate) fn print_json(v: &serde_json::Value) {
    print_line(&serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".to_owned()));
}

/// Prints one line on stdout; a closed pipe (`| head`) is not an error worth a panic.
pub(crate) fn print_line(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A Unix time in seconds as RFC 3339 UTC (the raw number if out of range).
pub(crate) fn at_secs(unix: u64) -> String {
    match i64::try_from(unix).ok().and_then(|s| Timestamp::from_second(s).ok()) {
        Some(t) => t.to_string(),
        None => unix.to_string(),
    }
}

/// The enclave's audit details name times as Unix seconds (`expires 1796119231`,
/// `valid before 1796119231`): for people, each becomes RFC 3339 (`expires
/// 2026-12-01T10:00:31Z`). Other numbers are left alone.
pub(crate) fn humanize_times(detail: &str) -> String {
    const AFTER: [&str; 3] = ["expires ", "valid before ", "valid after "];
    let mut out = String::with_capacity(detail.len() + 16);
    let mut rest = detail;
    'outer: while !rest.is_empty() {
        for word in AFTER {
            if let Some(tail) = rest.strip_prefix(word) {
                let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
                let boundary = tail[digits..].chars().next().is_none_or(|c| !c.is_alphanumeric());
                if (9..=11).contains(&digits) && boundary {
                    if let Ok(n) = tail[..digits].parse::<u64>() {
                        out.push_str(word);
                        out.push_str(&at_secs(n));
                        rest = &tail[digits..];
                        continue 'outer;
                    }
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// The current time.
fn now() -> Timestamp {
    Timestamp::now()
}

/// A Unix time in seconds for people: `2025-06-01T12:00:00Z (in 23h59m)` or `... (past)`.
pub(crate) fn when(unix: u64) -> String {
    when_at(unix, now())
}

fn when_at(unix: u64, now: Timestamp) -> String {
    let Some(t) = i64::try_from(unix).ok().and_then(|s| Timestamp::from_second(s).ok()) else {
        return format!("{unix} (far future)");
    };
    if t <= now {
        return format!("{t} (past)");
    }
    let left = t.duration_since(now);
    format!("{t} (in {})", hours_minutes(left))
}

/// `5h07m`.
fn hours_minutes(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0);
    format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
}

/// `4m05s` from now until `unix_ms` (0 if past).
pub(crate) fn minutes_seconds_until(unix_ms: u64) -> String {
    let deadline = i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(Timestamp::MAX);
    let secs = deadline.duration_since(now()).as_secs().max(0);
    format!("{}m{:02}s", secs / 60, secs % 60)
}

/// A Unix time in milliseconds as RFC 3339 UTC with milliseconds (the raw number if out of
/// range).
pub(crate) fn at_ms(unix_ms: u64) -> String {
    match i64::try_from(unix_ms).ok().and_then(|ms| Timestamp::from_millisecond(ms).ok()) {
        Some(t) => format!("{t:.3}"),
        None => unix_ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_times() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        assert_eq!(when_at(1_700_000_000, now), "2023-11-14T22:13:20Z (past)");
        assert_eq!(when_at(1_699_999_000, now), "2023-11-14T21:56:40Z (past)");
        assert_eq!(
            when_at(1_700_000_000 + 5 * 3600 + 7 * 60 + 30, now),
            "2023-11-15T03:20:50Z (in 5h07m)"
        );
        assert_eq!(when_at(u64::MAX, now), format!("{} (far future)", u64::MAX));
        assert_eq!(at_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at_ms(u64::MAX), u64::MAX.to_string());
        assert_eq!(minutes_seconds_until(0), "0m00s");
        assert_eq!(at_secs(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    /// `audit show` printed `expires 1796119231` and `valid before 1764499999` as the enclave
    /// wrote them.
    #[test]
    fn audit_details_show_times_for_people() {
        assert_eq!(
            humanize_times("cap 1, spent 0, expires 1700000000 (by admin 36f7)"),
            "cap 1, spent 0, expires 2023-11-14T22:13:20Z (by admin 36f7)"
        );
        assert_eq!(
            humanize_times(
                "0.01 USDC to 0x2096 on eip155:84532, valid before 1700000000, nonce 0x12"
            ),
            "0.01 USDC to 0x2096 on eip155:84532, valid before 2023-11-14T22:13:20Z, nonce 0x12"
        );
        for unchanged in [
            "policy v3, document sha256 1234567890abc",
            "expires 12",
            "expires 1700000000x",
            "naïve expires",
        ] {
            assert_eq!(humanize_times(unchanged), unchanged);
        }
    }
}
