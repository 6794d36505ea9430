//! Time as the enclave sees it: Unix milliseconds from a [`Clock`] the platform provides.
//!
//! The host controls the clock of a simulated enclave (and, in Nitro, the enclave's time comes
//! from the host's hypervisor too): the enclave uses time only where being wrong errs towards
//! denying (freshness windows, expiries, rolling budgets that never move backwards).

use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time: milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Milliseconds since the epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down).
    #[must_use]
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// `self + ms`, saturating.
    #[must_use]
    pub const fn plus_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}

/// The source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> UnixMillis;
}

/// The operating system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

/// A clock a test sets by hand (shared: clones see the same time).
#[cfg(feature = "simulated")]
#[derive(Debug, Clone, Default)]
pub struct ManualClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

#[cfg(feature = "simulated")]
impl ManualClock {
    /// A clock showing `at`.
    #[must_use]
    pub fn new(at: UnixMillis) -> Self {
        Self(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(at.0)))
    }
    /// Sets the time.
    pub fn set(&self, at: UnixMillis) {
        self.0.store(at.0, std::sync::atomic::Ordering::SeqCst);
    }
    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
    /// The shared counter (ms), for tests that hold it directly.
    #[must_use]
    pub fn handle(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        std::sync::Arc::clone(&self.0)
    }
}

#[cfg(feature = "simulated")]
impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}
