//! Human output shared by the commands: times (with `jiff`).

use jiff::{SignedDuration, Timestamp};

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
    }
}
