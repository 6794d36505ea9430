//! Rolling time-window sums of spends, for budgets and rate limits.
//!
//! A [`History`] holds the spends of one scope (a wallet, a session, or a wallet's payments to
//! one payee) coalesced per second. For each window length in use it keeps a running sum and a
//! cursor, so asking "how much in the last hour" costs O(1) amortized, whatever the payment rate.
//! A window of `w` seconds at time `now` counts the spends made in the seconds `(now - w, now]`;
//! a spend recorded with a time earlier than the newest one is charged to the newest second, so
//! it stays counted at least as long as it should (never less: budgets can only err towards
//! denying). Time only moves forward for a history: a `now` earlier than one already asked about
//! is read as that later one, so a clock stepping back never brings old spends back in.

use std::collections::{HashMap, VecDeque};

use alloy_primitives::{Address, U256};

use crate::rules::Ledger;

/// Longest window a budget may use: 31 days. History older than this is dropped.
pub const MAX_WINDOW_SECONDS: u64 = 31 * 24 * 3600;

/// Window lengths a history keeps cursors for before it starts over (lazily, O(history) once).
const MAX_CURSORS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Slot {
    sec: u64,
    amount: U256,
    count: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    len: u64,
    /// Absolute index of the oldest slot still inside the window.
    start: u64,
    amount: U256,
    count: u64,
}

/// Spends in one scope, coalesced per second (module docs).
#[derive(Debug, Clone, Default)]
pub struct History {
    slots: VecDeque<Slot>,
    /// Absolute index of `slots[0]`.
    base: u64,
    cursors: Vec<Cursor>,
    /// Latest `now` asked about: windows only move forward.
    now: u64,
}

/// Amount and number of payments in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Sum of the amounts.
    pub amount: U256,
    /// Number of payments.
    pub count: u64,
}

impl History {
    /// An empty history.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// True when nothing was recorded within [`MAX_WINDOW_SECONDS`] of the newest spend.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Records a spend of `amount` at unix second `sec`.
    pub fn record(&mut self, sec: u64, amount: U256) {
        match self.slots.back_mut() {
            // Same second, or late (out of order, or the clock stepped back): charge the newest
            // second, which keeps the spend counted at least as long as its own second would.
            Some(last) if sec <= last.sec => {
                last.amount = last.amount.saturating_add(amount);
                last.count = last.count.saturating_add(1);
            }
            _ => self.slots.push_back(Slot { sec, amount, count: 1 }),
        }
        // Every window contains the newest slot.
        for c in &mut self.cursors {
            c.amount = c.amount.saturating_add(amount);
            c.count = c.count.saturating_add(1);
        }
        self.prune();
    }

    /// The recorded payments, oldest first, grouped by second: `(unix second, amount in token
    /// units, number of payments)` — what a ledger snapshot keeps ([`Self::from_slots`]).
    pub fn slots(&self) -> impl Iterator<Item = (u64, U256, u64)> + '_ {
        self.slots.iter().map(|s| (s.sec, s.amount, s.count))
    }

    /// The history that recorded `slots` (as [`Self::slots`] gives them, oldest first): the same
    /// totals for every window. Seconds out of order are merged into the newest, as
    /// [`Self::record`] does.
    #[must_use]
    pub fn from_slots(slots: impl IntoIterator<Item = (u64, U256, u64)>) -> Self {
        let mut h = Self::new();
        for (sec, amount, count) in slots {
            match h.slots.back_mut() {
                Some(last) if sec <= last.sec => {
                    last.amount = last.amount.saturating_add(amount);
                    last.count = last.count.saturating_add(count);
                }
                _ => h.slots.push_back(Slot { sec, amount, count }),
            }
        }
        h.prune();
        h
    }

    /// Drops slots older than the longest window, relative to the newest slot.
    fn prune(&mut self) {
        let Some(newest) = self.slots.back().map(|s| s.sec) else { return };
        while let Some(front) = self.slots.front().copied() {
            if front.sec.saturating_add(MAX_WINDOW_SECONDS) > newest {
                break;
            }
            self.slots.pop_front();
            let index = self.base;
            self.base += 1;
            for c in &mut self.cursors {
                if c.start <= index {
                    c.amount = c.amount.saturating_sub(front.amount);
                    c.count = c.count.saturating_sub(front.count);
                    c.start = index + 1;
                }
            }
        }
    }

    /// The spends in the window of `len` seconds ending at `now`: those made in `(now - len,
    /// now]` (and any recorded with a later time). `len` is clamped to 1..=[`MAX_WINDOW_SECONDS`].
    pub fn totals(&mut self, len: u64, now: u64) -> Totals {
        let len = len.clamp(1, MAX_WINDOW_SECONDS);
        self.now = self.now.max(now);
        let now = self.now;
        let i = match self.cursors.iter().position(|c| c.len == len) {
            Some(i) => i,
            None => {
                if self.cursors.len() >= MAX_CURSORS {
                    self.cursors.clear();
                }
                let (amount, count) = self.slots.iter().fold((U256::ZERO, 0u64), |(a, n), s| {
                    (a.saturating_add(s.amount), n.saturating_add(s.count))
                });
                self.cursors.push(Cursor { len, start: self.base, amount, count });
                self.cursors.len() - 1
            }
        };
        let c = &mut self.cursors[i];
        let end = self.base + self.slots.len() as u64;
        while c.start < end {
            let slot = self.slots[usize::try_from(c.start - self.base).unwrap_or(usize::MAX)];
            if slot.sec.saturating_add(len) > now {
                break;
            }
            c.amount = c.amount.saturating_sub(slot.amount);
            c.count = c.count.saturating_sub(slot.count);
            c.start += 1;
        }
        Totals { amount: c.amount, count: c.count }
    }
}

/// A wallet's spend history: all its payments, and its payments per payee.
#[derive(Debug, Clone, Default)]
pub struct WalletHistory {
    /// Every payment of the wallet.
    pub all: History,
    /// Payments per payee (a payee is here once the wallet paid it).
    pub payees: HashMap<Address, History>,
}

impl WalletHistory {
    /// Records a payment.
    pub fn record(&mut self, payee: Address, sec: u64, amount: U256) {
        self.all.record(sec, amount);
        self.payees.entry(payee).or_default().record(sec, amount);
    }
}

/// The [`Ledger`] of one payment: its wallet's history and its session's.
#[derive(Debug)]
pub struct ScopeLedger<'a> {
    /// The wallet's history.
    pub wallet: &'a mut WalletHistory,
    /// The session's history.
    pub session: &'a mut History,
}

impl Ledger for ScopeLedger<'_> {
    fn wallet(&mut self, len: u64, now: u64) -> Totals {
        self.wallet.all.totals(len, now)
    }
    fn session(&mut self, len: u64, now: u64) -> Totals {
        self.session.totals(len, now)
    }
    fn payee(&mut self, payee: &Address, len: u64, now: u64) -> Totals {
        self.wallet.payees.get_mut(payee).map(|h| h.totals(len, now)).unwrap_or_default()
    }
    fn paid_before(&self, payee: &Address) -> bool {
        self.wallet.payees.contains_key(payee)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u64) -> U256 {
        U256::from(n)
    }

    /// A history rebuilt from its slots answers every window as the original does.
    #[test]
    fn a_history_rebuilt_from_its_slots_has_the_same_totals() {
        let mut h = History::new();
        for (sec, amount) in [(100, 5), (100, 1), (150, 7), (4_000, 2), (90_000, 9)] {
            h.record(sec, u(amount));
        }
        let _ = h.totals(60, 150);
        let mut again = History::from_slots(h.slots());
        assert_eq!(again.slots().collect::<Vec<_>>(), h.slots().collect::<Vec<_>>());
        for (len, now) in
            [(60, 150), (3_600, 4_000), (86_400, 90_000), (MAX_WINDOW_SECONDS, 90_001)]
        {
            assert_eq!(again.totals(len, now), h.totals(len, now), "{len} at {now}");
        }
        assert!(History::from_slots(std::iter::empty()).is_empty());
    }

    #[test]
    fn window_counts_the_last_len_seconds() {
        let mut h = History::new();
        h.record(100, u(5));
        h.record(150, u(7));
        assert_eq!(h.totals(60, 150), Totals { amount: u(12), count: 2 });
        // At 160 the spend of second 100 is 60 s old: out of a 60 s window.
        assert_eq!(h.totals(60, 160), Totals { amount: u(7), count: 1 });
        // Time never runs backwards for a history: an earlier `now` is read as the latest seen.
        assert_eq!(h.totals(60, 159), Totals { amount: u(7), count: 1 });
        assert_eq!(h.totals(3600, 160).amount, u(12));
        assert_eq!(h.totals(60, 210), Totals::default());
    }

    #[test]
    fn late_spends_are_charged_to_the_newest_second() {
        let mut h = History::new();
        h.record(200, u(1));
        h.record(100, u(2)); // out of order
        assert_eq!(h.totals(10, 205).amount, u(3));
        assert_eq!(h.totals(10, 210).amount, U256::ZERO);
    }

    #[test]
    fn history_older_than_the_longest_window_is_dropped() {
        let mut h = History::new();
        h.record(1, u(1));
        assert_eq!(h.totals(MAX_WINDOW_SECONDS, 1).amount, u(1));
        h.record(1 + MAX_WINDOW_SECONDS, u(2));
        assert_eq!(h.slots.len(), 1);
        assert_eq!(h.totals(MAX_WINDOW_SECONDS, 1 + MAX_WINDOW_SECONDS).amount, u(2));
    }
}
