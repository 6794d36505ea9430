//! Limits shared by several enclave processes through one book per budget scope.
//!
//! Several enclave processes (*members*, each named by a 16-byte member id) serve one wallet and
//! must share its limits: a session's lifetime cap, rolling time-window budgets on amount, rate
//! limits on counts. Each budget scope (a session, a wallet, a wallet's payee) keeps one [`Book`]
//! at one etcd key. Asking etcd on every payment would hold the wallet to what one contended key
//! can do (about 450 updates/s), so a member takes a [`Grant`] (a "chunk") instead: the right to
//! spend up to `amount` units in up to `count` payments during `[from_ms, until_ms]` of *its own*
//! clock (unix ms). It then spends locally, without etcd, until the grant is used up or over, and
//! may then close it with what it really used, which gives the rest back.
//!
//! The caller reads the book ([`Book::decode`]), changes it ([`Book::take`], [`Book::close`],
//! [`Book::compact`]) and writes it back ([`Book::encode`]) by compare-and-swap, retrying from a
//! fresh read when the swap fails; etcd thereby serializes every change. This module holds only
//! the data and the rules: no I/O, no clock (times are parameters), no keys. Money is integers
//! ([`U256`], checked; a sum that overflows is refused, never wrapped).
//!
//! # The rule
//!
//! A window limit `(len, max_amount, max_count)` bounds the spends made in *any* interval
//! `(a, a + len]` of true time. A new grant `G = [from, until]` is added only if, for every window
//! limit,
//!
//! ```text
//! sum(counted amount of every entry E = [f, u] in the book with
//!     f < until + len + SKEW_MS  and  u > from - len - SKEW_MS)  +  G.amount  <=  max_amount
//! ```
//!
//! and likewise for counts against `max_count`: an entry is counted when its interval meets the
//! open *check region* `(from - len - SKEW_MS, until + len + SKEW_MS)`. The lifetime cap is
//! `settled + sum(counted amount of every entry) + G.amount <= lifetime`.
//!
//! An entry's *counted* figures are `amount` and `count`: what was granted while it is open, what
//! was used once it is closed ([`Book::close`] replaces them). An open grant counts in full, so
//! a member that dies without closing leaves its grants counted in full: wasted budget, never an
//! overspend (fail closed).
//!
//! # Why it holds
//!
//! Assumptions (the caller's part, see below): (A1) every member's clock is within
//! `SKEW_MS / 2` of true time whenever it is read, so readings of two members' clocks at true
//! times `t` and `t'` differ from `t - t'` by at most [`SKEW_MS`]; (A2) a member spends from a
//! grant only at instants when its own clock reads within `[from_ms, until_ms]`, only after the
//! write that added the grant was committed, never beyond `amount`/`count`, nothing after closing
//! it, and closes it with at least what it spent; (A3) `now_ms` given to [`Book::compact`] is the
//! compacting member's clock when it read the book (never ahead of it); (A4) every member checks
//! with the same [`Limits`], whose windows are at most [`MAX_WINDOW_MS`] long.
//!
//! Two invariants hold for every entry of the book: its counted figures are at least what the
//! grants it stands for ever spend (an open grant counts what was granted; a closed one what was
//! used, and nothing is spent after closing; a merge sums them), and its interval contains the reading of every spend of those grants *by the spending member's
//! own clock* (a merge takes the union, which keeps this whichever members the two were: no
//! entry needs a single clock of its own, each reading is compared with the region with the
//! full `SKEW_MS` of margin). [`Book::compact`] moves an entry's counted amount into `settled`
//! only once no future spend can share a window with any of its spends.
//!
//! *Windows.* Take any window `W = (a, a + len]` of true time and the grants that spent in it,
//! `G1 .. Gk` in the order etcd committed them. Look at the check made when `Gk` was taken. `Gk`
//! spent at some `tk` in `W`, when its member's clock read `ck` in `[from_k, until_k]`. Each
//! earlier `Gi` spent at some `ti` in `W`, so `|ti - tk| < len`.
//! First, `Gi` had not been folded into `settled` before `Gk` was taken: folding needs
//! `u + MAX_WINDOW_MS + SKEW_MS < now` for the entry `[f, u]` holding `Gi`, read by a member at a
//! true time `tc` before `Gk`'s take, hence before `tk`; by (A1) `tc - ti > MAX_WINDOW_MS >= len`,
//! so `tk - ti > len`: a contradiction. So `Gi` was in the book, alone or inside a merged entry
//! `[f, u]`, and `Gi`'s member's clock read some `ci` in `[f, u]` at `ti`. By (A1)
//! `ci - ck = (ti - tk) + skew` with `|skew| <= SKEW_MS`, so
//! `from_k - len - SKEW_MS < ci < until_k + len + SKEW_MS`: the entry meets `Gk`'s check region
//! and was counted, with at least what `Gi` spent. Each entry is counted once, so the spends in
//! `W` are at most `sum(counted) + Gk.amount <= max_amount` (figures as they were at that check,
//! and `Gk` spends at most `Gk.amount`), and likewise for counts.
//!
//! *Lifetime.* After every take, `settled + sum(counted) <= lifetime`; closing lowers this total,
//! merging and folding keep it (or raise it, where a sum saturates), and it is always at least
//! what was spent. So the total spent stays within the cap.
//!
//! Merging is conservative: a wider interval meets more check regions, so it can only make later
//! grants smaller, never let one through that the unmerged book would have refused.
//!
//! # What callers must do
//!
//! * Keep member clocks within `SKEW_MS / 2` of true time (NTP), and take each grant in the
//!   member's own clock.
//! * Spend only inside a grant's interval by the member's own clock, only once the write that
//!   added it has committed, and never beyond its amount or count.
//! * Close grants when done (after their end, or earlier if the member stops spending from them),
//!   with at least what was used. [`Book::open_grants`] lists a member's open grants, e.g. after
//!   a restart; a restarted member that does not know what it spent closes with the granted
//!   figures, or leaves them open. A close that finds no grant ([`ShareError::UnknownGrant`]) means
//!   compaction already folded or merged it: nothing is left to return.
//! * Call [`Book::compact`] with the current time before writing the book back, so it stays
//!   within [`MAX_GRANTS`] entries (and always within [`MAX_BOOK_GRANTS`], the most
//!   [`Book::decode`] accepts).
//! * Know that a member that dies leaves its open grants counted in full until they are folded
//!   ([`MAX_WINDOW_MS`] + [`SKEW_MS`] after their end): budget wasted, never overspent.
//! * Tightening the limits applies to grants taken afterwards; grants already out keep their
//!   rights until they end.

use std::collections::{HashMap, HashSet};

use alloy_primitives::U256;

use crate::window::MAX_WINDOW_SECONDS;

/// Largest difference between two members' clocks, in ms: each member's clock must stay within
/// `SKEW_MS / 2` (1 s) of true time. A grant's interval is in its own member's clock, so every
/// check region is widened by this much on each side (module docs).
pub const SKEW_MS: u64 = 2_000;

/// Entries [`Book::compact`] brings a book down to by merging closed grants (open grants are
/// never merged, so more of them can remain).
pub const MAX_GRANTS: usize = 256;

/// Most entries a book may hold: [`Book::take`] refuses to grow past it and [`Book::decode`]
/// refuses more.
pub const MAX_BOOK_GRANTS: usize = 2 * MAX_GRANTS;

/// Longest window a limit may use, in ms ([`MAX_WINDOW_SECONDS`]): 31 days. Entries that ended
/// more than this (plus [`SKEW_MS`]) ago are folded into [`Book::settled`].
pub const MAX_WINDOW_MS: u64 = MAX_WINDOW_SECONDS * 1000;

/// First 16 bytes of an encoded book: the text `x402-wallet/bk1` (format version 1) and a zero.
pub const MAGIC: [u8; 16] = *b"x402-wallet/bk1\0";

/// Magic, settled amount, number of grants.
const HEADER_LEN: usize = 16 + 32 + 4;
/// Member, id, from, until, amount, count, closed.
const GRANT_LEN: usize = 16 + 8 + 8 + 8 + 32 + 8 + 1;

/// Why a book refused a change or could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// The grant would take the scope past its lifetime cap.
    #[error("the grant would exceed the lifetime cap")]
    Lifetime,
    /// The grant would take a window past its amount budget.
    #[error("the grant would exceed the amount budget of the {len_ms} ms window")]
    WindowAmount {
        /// Length of the window, in ms.
        len_ms: u64,
    },
    /// The grant would take a window past its number of payments.
    #[error("the grant would exceed the payment count of the {len_ms} ms window")]
    WindowCount {
        /// Length of the window, in ms.
        len_ms: u64,
    },
    /// A sum overflowed: refused rather than wrapped.
    #[error("a sum of amounts or counts overflowed")]
    Overflow,
    /// The grant or the limits make no sense (the text says why).
    #[error("invalid grant or limits: {0}")]
    Invalid(&'static str),
    /// The book already holds [`MAX_BOOK_GRANTS`] entries: compact it first.
    #[error("the book is full: compact it first")]
    Full,
    /// No grant with this member and id is in the book (never taken, or already folded or merged
    /// by compaction).
    #[error("no such grant in the book")]
    UnknownGrant,
    /// A close reports more used than was granted.
    #[error("a grant cannot be closed with more than was granted")]
    Overused,
    /// The grant is already closed, with other figures.
    #[error("the grant is already closed with other figures")]
    AlreadyClosed,
    /// The bytes are not a valid encoded book (the text says why).
    #[error("malformed book: {0}")]
    Malformed(&'static str),
}

/// One window limit: the spends in any `len_ms` of true time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Length of the window, in ms; at most [`MAX_WINDOW_MS`].
    pub len_ms: u64,
    /// Most units spent in any window; `None` for no amount budget.
    pub max_amount: Option<U256>,
    /// Most payments in any window; `None` for no rate limit.
    pub max_count: Option<u64>,
}

/// The limits of one budget scope; every member must check with the same ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most units ever spent in the scope; `None` for no cap.
    pub lifetime: Option<U256>,
    /// Rolling window limits.
    pub windows: Vec<Window>,
}

/// One member's right to spend, as kept in a book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The member that holds it.
    pub member: [u8; 16],
    /// Its id, unique per member within the book (a member should never reuse one).
    pub id: u64,
    /// Start of the interval, unix ms by the member's own clock (for an entry merged by
    /// [`Book::compact`], the union of its parts' intervals, each by its own member's clock).
    pub from_ms: u64,
    /// End of the interval (inclusive), unix ms by the member's own clock; at least `from_ms`.
    pub until_ms: u64,
    /// Units granted while open; units used once closed.
    pub amount: U256,
    /// Payments granted while open; payments made once closed.
    pub count: u64,
    /// Whether the member closed it (its figures are then what it used).
    pub closed: bool,
}

/// The shared state of one budget scope: the value stored at its etcd key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Book {
    /// Units counted towards the lifetime cap by entries folded away by [`Book::compact`].
    pub settled: U256,
    /// Grants (and merged closed grants), in the order they were added.
    pub grants: Vec<Grant>,
}

/// The largest grant that fits: `None` where no limit binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// Units; `None` for unlimited.
    pub amount: Option<U256>,
    /// Payments; `None` for unlimited.
    pub count: Option<u64>,
}

impl Headroom {
    /// Nothing fits.
    const NOTHING: Self = Self { amount: Some(U256::ZERO), count: Some(0) };
}

/// Whether `entry` (an interval of member clock readings) meets the check region of a grant over
/// `[from_ms, until_ms]` for a window of `len_ms`: the open interval
/// `(from_ms - len_ms - SKEW_MS, until_ms + len_ms + SKEW_MS)`. Computed in `u128`, so no bound
/// saturates (a region reaching below zero or past `u64::MAX` still counts everything there).
fn meets_region(entry: &Grant, from_ms: u64, until_ms: u64, len_ms: u64) -> bool {
    let reach = u128::from(len_ms) + u128::from(SKEW_MS);
    u128::from(entry.from_ms) < u128::from(until_ms) + reach
        && u128::from(entry.until_ms) + reach > u128::from(from_ms)
}

/// Refuses windows longer than [`MAX_WINDOW_MS`]: compaction would fold spends they still need.
fn check_limits(limits: &Limits) -> Result<(), ShareError> {
    if limits.windows.iter().any(|w| w.len_ms > MAX_WINDOW_MS) {
        return Err(ShareError::Invalid("a window is longer than MAX_WINDOW_MS"));
    }
    Ok(())
}

fn min_opt<T: Ord>(a: Option<T>, b: T) -> Option<T> {
    Some(match a {
        Some(a) => a.min(b),
        None => b,
    })
}

impl Book {
    /// `settled` plus every entry's counted amount; `None` on overflow.
    fn total(&self) -> Option<U256> {
        self.grants.iter().try_fold(self.settled, |sum, g| sum.checked_add(g.amount))
    }

    /// Counted amount of the entries in the check region; `None` on overflow.
    fn region_amount(&self, len_ms: u64, from_ms: u64, until_ms: u64) -> Option<U256> {
        self.grants
            .iter()
            .filter(|g| meets_region(g, from_ms, until_ms, len_ms))
            .try_fold(U256::ZERO, |sum, g| sum.checked_add(g.amount))
    }

    /// Counted payments of the entries in the check region; `None` on overflow.
    fn region_count(&self, len_ms: u64, from_ms: u64, until_ms: u64) -> Option<u64> {
        self.grants
            .iter()
            .filter(|g| meets_region(g, from_ms, until_ms, len_ms))
            .try_fold(0u64, |sum, g| sum.checked_add(g.count))
    }

    fn position(&self, member: [u8; 16], id: u64) -> Option<usize> {
        self.grants.iter().position(|g| g.member == member && g.id == id)
    }

    /// The largest grant over `[from_ms, until_ms]` (the taker's clock) that fits every limit,
    /// amount and count separately: [`Book::take`] accepts any grant within both. `None` fields
    /// mean no limit binds. Invalid input (`until_ms < from_ms`, a window longer than
    /// [`MAX_WINDOW_MS`]) and sums that overflow leave no headroom.
    #[must_use]
    pub fn headroom(&self, limits: &Limits, from_ms: u64, until_ms: u64) -> Headroom {
        if until_ms < from_ms || check_limits(limits).is_err() {
            return Headroom::NOTHING;
        }
        let mut amount = None;
        let mut count = None;
        if let Some(cap) = limits.lifetime {
            let left = self.total().map_or(U256::ZERO, |total| cap.saturating_sub(total));
            amount = min_opt(amount, left);
        }
        for w in &limits.windows {
            if let Some(max) = w.max_amount {
                let left = self
                    .region_amount(w.len_ms, from_ms, until_ms)
                    .map_or(U256::ZERO, |sum| max.saturating_sub(sum));
                amount = min_opt(amount, left);
            }
            if let Some(max) = w.max_count {
                let left = self
                    .region_count(w.len_ms, from_ms, until_ms)
                    .map_or(0, |sum| max.saturating_sub(sum));
                count = min_opt(count, left);
            }
        }
        Headroom { amount, count }
    }

    /// Adds `grant` (open, in its member's clock) if it fits every limit by the rule of the
    /// module docs; otherwise names the first limit it breaks. Also refuses an invalid grant
    /// (`until_ms < from_ms`, closed, of nothing, or a `(member, id)` already in the book),
    /// limits with a window longer than [`MAX_WINDOW_MS`], and a full book.
    ///
    /// # Errors
    ///
    /// [`ShareError::Invalid`], [`ShareError::Full`], [`ShareError::Overflow`],
    /// [`ShareError::Lifetime`], [`ShareError::WindowAmount`], [`ShareError::WindowCount`].
    pub fn take(&mut self, limits: &Limits, grant: Grant) -> Result<(), ShareError> {
        check_limits(limits)?;
        if grant.until_ms < grant.from_ms {
            return Err(ShareError::Invalid("until_ms is before from_ms"));
        }
        if grant.closed {
            return Err(ShareError::Invalid("a new grant must be open"));
        }
        if grant.amount.is_zero() && grant.count == 0 {
            return Err(ShareError::Invalid("a grant of nothing"));
        }
        if self.position(grant.member, grant.id).is_some() {
            return Err(ShareError::Invalid("this member already has a grant with this id"));
        }
        if self.grants.len() >= MAX_BOOK_GRANTS {
            return Err(ShareError::Full);
        }
        if let Some(cap) = limits.lifetime {
            let total = self
                .total()
                .and_then(|t| t.checked_add(grant.amount))
                .ok_or(ShareError::Overflow)?;
            if total > cap {
                return Err(ShareError::Lifetime);
            }
        }
        let (from_ms, until_ms) = (grant.from_ms, grant.until_ms);
        for w in &limits.windows {
            if let Some(max) = w.max_amount {
                let sum = self
                    .region_amount(w.len_ms, from_ms, until_ms)
                    .and_then(|s| s.checked_add(grant.amount))
                    .ok_or(ShareError::Overflow)?;
                if sum > max {
                    return Err(ShareError::WindowAmount { len_ms: w.len_ms });
                }
            }
            if let Some(max) = w.max_count {
                let sum = self
                    .region_count(w.len_ms, from_ms, until_ms)
                    .and_then(|s| s.checked_add(grant.count))
                    .ok_or(ShareError::Overflow)?;
                if sum > max {
                    return Err(ShareError::WindowCount { len_ms: w.len_ms });
                }
            }
        }
        self.grants.push(grant);
        Ok(())
    }

    /// Closes `member`'s grant `id` with what it used, which returns the rest. Closing a closed
    /// grant again with the same figures is a no-op (a retried write).
    ///
    /// # Errors
    ///
    /// [`ShareError::UnknownGrant`] (never taken, or folded or merged by compaction),
    /// [`ShareError::Overused`] (more than granted), [`ShareError::AlreadyClosed`] (closed with
    /// other figures).
    pub fn close(
        &mut self,
        member: [u8; 16],
        id: u64,
        used_amount: U256,
        used_count: u64,
    ) -> Result<(), ShareError> {
        let i = self.position(member, id).ok_or(ShareError::UnknownGrant)?;
        let g = &mut self.grants[i];
        if g.closed {
            return if g.amount == used_amount && g.count == used_count {
                Ok(())
            } else {
                Err(ShareError::AlreadyClosed)
            };
        }
        if used_amount > g.amount || used_count > g.count {
            return Err(ShareError::Overused);
        }
        g.amount = used_amount;
        g.count = used_count;
        g.closed = true;
        Ok(())
    }

    /// Drops what no future check can need and bounds the book's size; `now_ms` is the caller's
    /// clock when it read the book (never ahead of it).
    ///
    /// First, every entry with `until_ms + MAX_WINDOW_MS + SKEW_MS < now_ms`, open or closed, is
    /// folded into `settled` (its counted amount): no spend from now on can share a window with
    /// its spends. Then, while more than [`MAX_GRANTS`] entries remain, two closed entries that
    /// are adjacent in time (consecutive by end among one member's closed entries, or among all
    /// closed entries) are merged into one closed entry: interval the union, figures the sums,
    /// member and id the newer one's (the union holds each part's readings by its own member's
    /// clock, which is all the rule needs: module docs). The pair chosen is the one whose merged
    /// interval is shortest relative to how long ago it ended, so old history is kept coarse and
    /// recent history fine: merging always the two oldest would grow one entry holding nearly all
    /// history and ending recently, which would then fill every long window (a wallet with an
    /// hourly budget and more than [`MAX_GRANTS`] grants an hour would be refused everything).
    /// Open grants are never merged, so more than [`MAX_GRANTS`] open ones stay. Merging only
    /// widens intervals and saturating sums only grow, so every later check is at least as strict.
    pub fn compact(&mut self, now_ms: u64) {
        self.compact_with(now_ms, MAX_WINDOW_MS, MAX_GRANTS);
    }

    /// [`Book::compact`] with the longest window and the size bound as parameters (tests use
    /// small ones; `max_window_ms` must be at least every window in use).
    fn compact_with(&mut self, now_ms: u64, max_window_ms: u64, max_grants: usize) {
        let horizon = max_window_ms.saturating_add(SKEW_MS);
        let mut settled = self.settled;
        self.grants.retain(|g| {
            let fold = g.until_ms.saturating_add(horizon) < now_ms;
            if fold {
                // Saturating: a larger `settled` only leaves less headroom.
                settled = settled.saturating_add(g.amount);
            }
            !fold
        });
        self.settled = settled;
        while self.grants.len() > max_grants && self.merge_once(now_ms) {}
    }

    /// Merges the cheapest pair of time-adjacent closed entries (see [`Book::compact`]); false
    /// when fewer than two entries are closed.
    fn merge_once(&mut self, now_ms: u64) -> bool {
        let grants = &self.grants;
        let mut closed: Vec<usize> = (0..grants.len()).filter(|&i| grants[i].closed).collect();
        closed.sort_by_key(|&i| (grants[i].until_ms, grants[i].from_ms, i));
        // Candidate pairs (older, newer): consecutive among all closed entries, and consecutive
        // among each member's closed entries.
        let mut pairs: Vec<(usize, usize)> = closed.windows(2).map(|p| (p[0], p[1])).collect();
        let mut last_of: HashMap<[u8; 16], usize> = HashMap::new();
        for &i in &closed {
            if let Some(prev) = last_of.insert(grants[i].member, i) {
                pairs.push((prev, i));
            }
        }
        // Cost: merged span over the time since the merged entry ended (at least 1 ms); the
        // smallest wins, ties going to the pair that ended earlier. Compared by
        // cross-multiplication in u128 (each factor is below 2^64).
        let best = pairs
            .into_iter()
            .map(|(older, newer)| {
                let merged = merged(&grants[older], &grants[newer]);
                let span = u128::from(merged.until_ms.saturating_sub(merged.from_ms));
                let age = u128::from(now_ms.saturating_sub(merged.until_ms).max(1));
                (span, age, merged.until_ms, older, newer, merged)
            })
            .min_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)).then(a.2.cmp(&b.2)));
        let Some((_, _, _, older, newer, merged)) = best else { return false };
        self.grants[newer] = merged;
        self.grants.remove(older);
        true
    }

    /// This member's open grants: to close after a restart, or to spend from.
    pub fn open_grants(&self, member: [u8; 16]) -> impl Iterator<Item = &Grant> + '_ {
        self.grants.iter().filter(move |g| g.member == member && !g.closed)
    }

    /// Canonical bytes: [`MAGIC`], `settled` (32 bytes big-endian), the number of entries (u32
    /// big-endian), then each entry in order as member (16), id, from, until (u64 big-endian
    /// each), amount (32 big-endian), count (u64 big-endian), closed (one byte, 0 or 1). A book
    /// with more than [`MAX_BOOK_GRANTS`] entries encodes to bytes [`Book::decode`] refuses.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.grants.len() * GRANT_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.settled.to_be_bytes::<32>());
        out.extend_from_slice(&u32::try_from(self.grants.len()).unwrap_or(u32::MAX).to_be_bytes());
        for g in &self.grants {
            out.extend_from_slice(&g.member);
            out.extend_from_slice(&g.id.to_be_bytes());
            out.extend_from_slice(&g.from_ms.to_be_bytes());
            out.extend_from_slice(&g.until_ms.to_be_bytes());
            out.extend_from_slice(&g.amount.to_be_bytes::<32>());
            out.extend_from_slice(&g.count.to_be_bytes());
            out.push(u8::from(g.closed));
        }
        out
    }

    /// Reads [`Book::encode`]'s bytes, strictly: refuses a wrong magic, a wrong length, more than
    /// [`MAX_BOOK_GRANTS`] entries, a closed byte other than 0 or 1, an interval ending before it
    /// starts and a repeated `(member, id)`. Never panics.
    ///
    /// # Errors
    ///
    /// [`ShareError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ShareError> {
        let mut r = Reader(bytes);
        if r.array::<16>()? != MAGIC {
            return Err(ShareError::Malformed("wrong magic"));
        }
        let settled = U256::from_be_bytes(r.array::<32>()?);
        let n = usize::try_from(u32::from_be_bytes(r.array::<4>()?))
            .map_err(|_| ShareError::Malformed("too many grants"))?;
        if n > MAX_BOOK_GRANTS {
            return Err(ShareError::Malformed("too many grants"));
        }
        if r.0.len() != n * GRANT_LEN {
            return Err(ShareError::Malformed("wrong length"));
        }
        let mut grants = Vec::with_capacity(n);
        let mut seen = HashSet::with_capacity(n);
        for _ in 0..n {
            let g = Grant {
                member: r.array::<16>()?,
                id: r.u64()?,
                from_ms: r.u64()?,
                until_ms: r.u64()?,
                amount: U256::from_be_bytes(r.array::<32>()?),
                count: r.u64()?,
                closed: match r.array::<1>()? {
                    [0] => false,
                    [1] => true,
                    _ => return Err(ShareError::Malformed("closed byte is neither 0 nor 1")),
                },
            };
            if g.until_ms < g.from_ms {
                return Err(ShareError::Malformed("a grant ends before it starts"));
            }
            if !seen.insert((g.member, g.id)) {
                return Err(ShareError::Malformed("a (member, id) appears twice"));
            }
            grants.push(g);
        }
        Ok(Self { settled, grants })
    }
}

/// `older` and `newer` as one closed entry (see [`Book::compact`]).
fn merged(older: &Grant, newer: &Grant) -> Grant {
    Grant {
        member: newer.member,
        id: newer.id,
        from_ms: older.from_ms.min(newer.from_ms),
        until_ms: older.until_ms.max(newer.until_ms),
        amount: older.amount.saturating_add(newer.amount),
        count: older.count.saturating_add(newer.count),
        closed: true,
    }
}

/// Reads fixed-width fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ShareError> {
        let (head, rest) =
            self.0.split_first_chunk::<N>().ok_or(ShareError::Malformed("wrong length"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, ShareError> {
        self.array::<8>().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn u(n: u64) -> U256 {
        U256::from(n)
    }

    const A: [u8; 16] = [0xa; 16];
    const B: [u8; 16] = [0xb; 16];

    fn grant(member: [u8; 16], id: u64, from_ms: u64, until_ms: u64, amount: u64) -> Grant {
        Grant { member, id, from_ms, until_ms, amount: u(amount), count: 1, closed: false }
    }

    fn lifetime(cap: u64) -> Limits {
        Limits { lifetime: Some(u(cap)), windows: vec![] }
    }

    fn window(len_ms: u64, max_amount: Option<u64>, max_count: Option<u64>) -> Limits {
        Limits {
            lifetime: None,
            windows: vec![Window { len_ms, max_amount: max_amount.map(u), max_count }],
        }
    }

    #[test]
    fn lifetime_cap_exact_boundary() {
        let limits = lifetime(100);
        let mut book = Book { settled: u(30), grants: vec![] };
        book.take(&limits, grant(A, 1, 0, 1_000, 50)).unwrap();
        assert_eq!(book.headroom(&limits, 0, 1_000).amount, Some(u(20)));
        assert_eq!(
            book.clone().take(&limits, grant(B, 1, 0, 1_000, 21)),
            Err(ShareError::Lifetime)
        );
        book.take(&limits, grant(B, 1, 0, 1_000, 20)).unwrap();
        assert_eq!(book.headroom(&limits, 0, 1_000), Headroom { amount: Some(u(0)), count: None });
        assert_eq!(book.take(&limits, grant(B, 2, 0, 1_000, 1)), Err(ShareError::Lifetime));
        // The lifetime cap counts every grant, whenever it was.
        assert_eq!(
            book.take(&limits, grant(B, 3, 10_000_000, 10_000_001, 1)),
            Err(ShareError::Lifetime)
        );
    }

    #[test]
    fn window_counts_only_grants_meeting_the_check_region() {
        let len = 5_000;
        let limits = window(len, Some(10), None);
        let (from, until) = (100_000, 101_000);
        // The region is the open interval (from - len - SKEW, until + len + SKEW).
        let (start, end) = (from - len - SKEW_MS, until + len + SKEW_MS);
        let cases = [
            (start - 1_000, start, false),    // ends on the open bound: not counted
            (start - 1_000, start + 1, true), // ends just inside
            (end, end + 1_000, false),        // starts on the open bound
            (end - 1, end + 1_000, true),     // starts just inside
            (0, u64::MAX, true),              // covers it all
        ];
        for (f, u_, counted) in cases {
            let mut book = Book::default();
            book.take(&limits, grant(A, 1, f, u_, 10)).unwrap();
            let expected = if counted { 0 } else { 10 };
            assert_eq!(
                book.headroom(&limits, from, until).amount,
                Some(u(expected)),
                "[{f}, {u_}]"
            );
            let r = book.clone().take(&limits, grant(B, 1, from, until, 1));
            assert_eq!(r.is_err(), counted, "[{f}, {u_}]: {r:?}");
        }
    }

    #[test]
    fn region_reaching_below_zero_counts_early_grants() {
        // from - len - SKEW would be negative: nothing saturates, the grant at 0 is counted.
        let limits = window(5_000, Some(10), None);
        let mut book = Book::default();
        book.take(&limits, grant(A, 1, 0, 0, 10)).unwrap();
        assert_eq!(
            book.take(&limits, grant(B, 1, 1_000, 2_000, 1)),
            Err(ShareError::WindowAmount { len_ms: 5_000 })
        );
        let limits = window(0, Some(10), None);
        assert_eq!(book.take(&limits, grant(B, 1, u64::MAX, u64::MAX, 1)), Ok(()));
    }

    #[test]
    fn count_limit() {
        let limits = window(60_000, None, Some(5));
        let mut book = Book::default();
        let g = |id, count| Grant { count, amount: u(0), ..grant(A, id, 0, 1_000, 0) };
        book.take(&limits, g(1, 3)).unwrap();
        assert_eq!(book.headroom(&limits, 0, 1_000), Headroom { amount: None, count: Some(2) });
        assert_eq!(
            book.clone().take(&limits, g(2, 3)),
            Err(ShareError::WindowCount { len_ms: 60_000 })
        );
        book.take(&limits, g(2, 2)).unwrap();
        assert_eq!(book.take(&limits, g(3, 1)), Err(ShareError::WindowCount { len_ms: 60_000 }));
    }

    #[test]
    fn closed_grants_count_their_used_figures() {
        let limits = Limits {
            lifetime: Some(u(100)),
            windows: vec![Window { len_ms: 10_000, max_amount: Some(u(40)), max_count: Some(10) }],
        };
        let mut book = Book::default();
        book.take(&limits, Grant { count: 10, ..grant(A, 1, 0, 1_000, 40) }).unwrap();
        assert_eq!(
            book.headroom(&limits, 0, 1_000),
            Headroom { amount: Some(u(0)), count: Some(0) }
        );
        book.close(A, 1, u(15), 4).unwrap();
        assert_eq!(
            book.headroom(&limits, 0, 1_000),
            Headroom { amount: Some(u(25)), count: Some(6) }
        );
        // An open grant counts in full whatever was spent (a dead member never closes).
        book.take(&limits, Grant { count: 6, ..grant(B, 1, 0, 1_000, 25) }).unwrap();
        assert_eq!(
            book.headroom(&limits, 0, 1_000),
            Headroom { amount: Some(u(0)), count: Some(0) }
        );
        assert_eq!(
            book.headroom(&limits, 100_000, 101_000),
            Headroom { amount: Some(u(40)), count: Some(10) }
        );
    }

    #[test]
    fn close_refuses_used_beyond_granted_and_unknown_grants() {
        let mut book = Book::default();
        book.take(&Limits::default(), Grant { count: 3, ..grant(A, 1, 0, 1_000, 40) }).unwrap();
        let before = book.clone();
        assert_eq!(book.close(A, 1, u(41), 3), Err(ShareError::Overused));
        assert_eq!(book.close(A, 1, u(40), 4), Err(ShareError::Overused));
        assert_eq!(book.close(A, 2, u(0), 0), Err(ShareError::UnknownGrant));
        assert_eq!(book.close(B, 1, u(0), 0), Err(ShareError::UnknownGrant));
        assert_eq!(book, before);
        book.close(A, 1, u(40), 3).unwrap();
    }

    #[test]
    fn close_is_idempotent_with_the_same_figures() {
        let mut book = Book::default();
        book.take(&Limits::default(), Grant { count: 3, ..grant(A, 1, 0, 1_000, 40) }).unwrap();
        book.close(A, 1, u(7), 2).unwrap();
        let closed = book.clone();
        book.close(A, 1, u(7), 2).unwrap();
        assert_eq!(book, closed);
        assert_eq!(book.close(A, 1, u(6), 2), Err(ShareError::AlreadyClosed));
        assert_eq!(book.close(A, 1, u(7), 1), Err(ShareError::AlreadyClosed));
        assert_eq!(book.close(A, 1, u(40), 3), Err(ShareError::AlreadyClosed));
        assert_eq!(book, closed);
    }

    #[test]
    fn take_refuses_invalid_grants_and_limits() {
        let none = Limits::default();
        let mut book = Book::default();
        book.take(&none, grant(A, 1, 0, 1_000, 1)).unwrap();
        let before = book.clone();
        let invalid = |r: Result<(), ShareError>| matches!(r, Err(ShareError::Invalid(_)));
        assert!(invalid(book.take(&none, grant(A, 2, 1_000, 999, 1))));
        assert!(invalid(book.take(&none, grant(A, 1, 0, 1_000, 1))));
        assert!(invalid(book.take(&none, Grant { count: 0, ..grant(A, 2, 0, 1_000, 0) })));
        assert!(invalid(book.take(&none, Grant { closed: true, ..grant(A, 2, 0, 1_000, 1) })));
        let long = window(MAX_WINDOW_MS + 1, Some(1_000), None);
        assert!(invalid(book.take(&long, grant(A, 2, 0, 1_000, 1))));
        assert_eq!(book.headroom(&long, 0, 1_000), Headroom::NOTHING);
        assert_eq!(book.headroom(&none, 1_000, 999), Headroom::NOTHING);
        assert_eq!(book, before);
        // The same id for another member, a count-only grant, an amount-only grant: fine.
        book.take(&none, grant(B, 1, 0, 1_000, 1)).unwrap();
        book.take(&none, Grant { count: 1, ..grant(A, 2, 0, 0, 0) }).unwrap();
        book.take(&none, Grant { count: 0, ..grant(A, 3, 0, 0, 1) }).unwrap();
        assert_eq!(book.headroom(&none, 0, 1_000), Headroom { amount: None, count: None });
    }

    #[test]
    fn take_refuses_a_full_book() {
        let mut book = Book::default();
        for id in 0..MAX_BOOK_GRANTS as u64 {
            book.take(&Limits::default(), grant(A, id, 0, 1_000, 1)).unwrap();
        }
        assert_eq!(book.take(&Limits::default(), grant(B, 0, 0, 1_000, 1)), Err(ShareError::Full));
    }

    #[test]
    fn overflow_is_refused() {
        let limits = Limits {
            lifetime: Some(U256::MAX),
            windows: vec![Window {
                len_ms: 1_000,
                max_amount: Some(U256::MAX),
                max_count: Some(u64::MAX),
            }],
        };
        let mut book = Book::default();
        book.take(&limits, Grant { amount: U256::MAX, count: u64::MAX, ..grant(A, 1, 0, 0, 0) })
            .unwrap();
        assert_eq!(book.clone().take(&limits, grant(A, 2, 0, 0, 1)), Err(ShareError::Overflow));
        assert_eq!(book.headroom(&limits, 0, 0), Headroom::NOTHING);
        let windows_only = Limits { lifetime: None, ..limits.clone() };
        assert_eq!(book.take(&windows_only, grant(A, 2, 0, 0, 1)), Err(ShareError::Overflow));
        let counts_only = window(1_000, None, Some(u64::MAX));
        let g = Grant { amount: u(0), count: 1, ..grant(A, 2, 0, 0, 0) };
        assert_eq!(book.take(&counts_only, g), Err(ShareError::Overflow));
        // Far from the huge grant, nothing overflows.
        book.take(&windows_only, grant(A, 3, 10_000_000, 10_000_000, 1)).unwrap();
    }

    fn sample_book() -> Book {
        Book {
            settled: U256::from(0x0123_4567_89ab_cdef_u64) << 100,
            grants: vec![
                Grant {
                    member: *b"member-0000000aa",
                    id: u64::MAX,
                    from_ms: 1,
                    until_ms: u64::MAX,
                    amount: U256::MAX,
                    count: 7,
                    closed: true,
                },
                grant(B, 0, 5, 5, 0),
                Grant { count: u64::MAX, ..grant(A, 0, 1_700_000_000_000, 1_700_000_010_000, 9) },
            ],
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        for book in [Book::default(), sample_book()] {
            let bytes = book.encode();
            assert_eq!(bytes.len(), HEADER_LEN + book.grants.len() * GRANT_LEN);
            assert_eq!(Book::decode(&bytes), Ok(book.clone()));
            assert_eq!(Book::decode(&bytes).unwrap().encode(), bytes);
        }
        let empty = Book::default().encode();
        assert_eq!(&empty[..16], b"x402-wallet/bk1\0");
        assert_eq!(empty[16..], [0u8; 36]);
        // Field layout of one grant.
        let book = Book {
            settled: u(1),
            grants: vec![Grant { closed: true, count: 3, ..grant(A, 2, 4, 5, 6) }],
        };
        let bytes = book.encode();
        assert_eq!(bytes[47], 1);
        assert_eq!(bytes[48..52], [0, 0, 0, 1]);
        let g = &bytes[52..];
        assert_eq!(g[..16], A);
        assert_eq!(g[16..24], 2u64.to_be_bytes());
        assert_eq!(g[24..32], 4u64.to_be_bytes());
        assert_eq!(g[32..40], 5u64.to_be_bytes());
        assert_eq!(g[40..72], u(6).to_be_bytes::<32>());
        assert_eq!(g[72..80], 3u64.to_be_bytes());
        assert_eq!(g[80..], [1]);
    }

    #[test]
    fn decode_refuses_each_malformed_case() {
        let good = sample_book().encode();
        let malformed = |bytes: &[u8]| matches!(Book::decode(bytes), Err(ShareError::Malformed(_)));
        let grant_at = |k: usize| HEADER_LEN + k * GRANT_LEN;
        assert!(!malformed(&good));

        let mut b = good.clone();
        b[14] = b'2';
        assert!(malformed(&b), "magic");
        assert!(malformed(&good[..good.len() - 1]), "short");
        let mut b = good.clone();
        b.push(0);
        assert!(malformed(&b), "trailing byte");
        let mut b = good.clone();
        b[51] = 2;
        assert!(malformed(&b), "count says fewer grants than there are");
        let mut b = good.clone();
        b[51] = 4;
        assert!(malformed(&b), "count says more grants than there are");

        // More than MAX_BOOK_GRANTS entries, each well formed, with the matching length.
        let many = Book {
            settled: u(0),
            grants: (0..=MAX_BOOK_GRANTS as u64).map(|id| grant(A, id, 0, 0, 1)).collect(),
        };
        assert!(malformed(&many.encode()), "too many");
        let mut b = many.encode();
        b[48..52].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(malformed(&b), "u32::MAX grants");
        let mut most = many.clone();
        most.grants.pop();
        assert_eq!(Book::decode(&most.encode()), Ok(most));

        let mut b = good.clone();
        b[grant_at(1) + 80] = 2;
        assert!(malformed(&b), "closed byte 2");
        let mut b = good.clone();
        b[grant_at(1) + 80] = 0xff;
        assert!(malformed(&b), "closed byte 0xff");
        let mut b = good.clone();
        // Grant 2: from 1_700_000_000_000 .. until 1_700_000_010_000; make until smaller.
        b[grant_at(2) + 32..grant_at(2) + 40].copy_from_slice(&1_699_999_999_999u64.to_be_bytes());
        assert!(malformed(&b), "until before from");
        let mut b = good.clone();
        // Grant 1 becomes (A, 0), like grant 2.
        b[grant_at(1)..grant_at(1) + 16].copy_from_slice(&A);
        assert!(malformed(&b), "duplicate (member, id)");
        // The same id for two members is fine.
        let mut b = good.clone();
        b[grant_at(1)..grant_at(1) + 16].copy_from_slice(&[0xc; 16]);
        assert!(!malformed(&b));
    }

    #[test]
    fn decode_never_panics_on_truncations() {
        let good = sample_book().encode();
        for n in 0..good.len() {
            assert!(Book::decode(&good[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Book::decode(&bytes);
            // With a valid header, so the grant fields get read too.
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&[0; 32]);
            framed.extend_from_slice(&u32::try_from(bytes.len() / GRANT_LEN).unwrap().to_be_bytes());
            framed.extend_from_slice(&bytes);
            if let Ok(book) = Book::decode(&framed) {
                prop_assert_eq!(book.encode(), framed);
            }
        }

        #[test]
        fn decode_never_panics_on_mutated_encodings(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
            let mut bytes = sample_book().encode();
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            if let Ok(book) = Book::decode(&bytes) {
                prop_assert_eq!(book.encode(), bytes.clone());
            }
            let _ = Book::decode(&bytes[..cut % (bytes.len() + 1)]);
        }
    }

    #[test]
    fn compact_folds_old_grants_into_settled() {
        let now = 100 * MAX_WINDOW_MS;
        let edge = now - MAX_WINDOW_MS - SKEW_MS; // until + MAX_WINDOW + SKEW == now: kept
        let mut book = Book { settled: u(5), grants: vec![] };
        let none = Limits::default();
        book.take(&none, grant(A, 1, 0, edge - 1, 10)).unwrap(); // folded (open: in full)
        book.take(&none, grant(A, 2, 0, edge, 20)).unwrap(); // kept
        book.take(&none, grant(B, 1, edge - 5, edge - 1, 30)).unwrap();
        book.close(B, 1, u(3), 1).unwrap(); // folded with its used amount
        book.take(&none, grant(B, 2, now, now + 1, 40)).unwrap(); // kept
        let total = book.total();
        book.compact(now);
        assert_eq!(book.total(), total);
        assert_eq!(book.settled, u(5 + 10 + 3));
        let kept: Vec<_> = book.grants.iter().map(|g| (g.member, g.id)).collect();
        assert_eq!(kept, vec![(A, 2), (B, 2)]);
        assert_eq!(book.close(A, 1, u(0), 0), Err(ShareError::UnknownGrant));
        // A second compaction at the same time changes nothing.
        let once = book.clone();
        book.compact(now);
        assert_eq!(book, once);
    }

    #[test]
    fn compact_merges_closed_grants_only() {
        let none = Limits::default();
        let mut book = Book::default();
        let now = 10_000_000;
        for id in 0..(MAX_GRANTS as u64 + 100) {
            let member = if id % 3 == 0 { A } else { B };
            let from = 1_000_000 + id * 1_000;
            book.take(&none, Grant { count: 2, ..grant(member, id, from, from + 500, 10) })
                .unwrap();
            if id % 7 != 0 {
                book.close(member, id, u(4), 1).unwrap();
            }
        }
        let open: Vec<Grant> = book.grants.iter().filter(|g| !g.closed).copied().collect();
        let total = book.total();
        let counts: u64 = book.grants.iter().map(|g| g.count).sum();
        book.compact(now);
        assert_eq!(book.grants.len(), MAX_GRANTS);
        assert_eq!(book.total(), total);
        assert_eq!(book.grants.iter().map(|g| g.count).sum::<u64>(), counts);
        let open_after: Vec<Grant> = book.grants.iter().filter(|g| !g.closed).copied().collect();
        assert_eq!(open_after, open);
        assert_eq!(Book::decode(&book.encode()), Ok(book.clone()));

        // Nothing closed: nothing can be merged, the book stays above MAX_GRANTS.
        let mut book = Book::default();
        for id in 0..(MAX_GRANTS as u64 + 2) {
            book.take(&none, grant(A, id, now, now + 500, 1)).unwrap();
        }
        book.close(A, 0, u(1), 1).unwrap();
        let before = book.clone();
        book.compact(now);
        assert_eq!(book, before);
    }

    #[test]
    fn merging_takes_the_union_and_the_sums() {
        let older = Grant { closed: true, ..grant(A, 1, 10_000, 11_000, 3) };
        let newer = Grant { closed: true, ..grant(B, 9, 12_000, 13_000, 4) };
        let m = merged(&older, &newer);
        assert_eq!((m.member, m.id, m.from_ms, m.until_ms), (B, 9, 10_000, 13_000));
        assert_eq!((m.amount, m.count, m.closed), (u(7), 2, true));
        let inside = merged(&Grant { until_ms: 20_000, ..older }, &newer);
        assert_eq!((inside.from_ms, inside.until_ms), (10_000, 20_000));
        let huge = merged(
            &Grant { amount: U256::MAX, count: u64::MAX, ..older },
            &Grant { until_ms: u64::MAX, ..newer },
        );
        assert_eq!((huge.amount, huge.count, huge.until_ms), (U256::MAX, u64::MAX, u64::MAX));
    }

    /// One member, one 1 s grant every second for three hours, compacting after each: a window
    /// of an hour must still see about an hour of history, not all of it. (Merging always the
    /// two oldest entries would build one entry holding everything and ending minutes ago.)
    #[test]
    fn compaction_keeps_recent_history_fine() {
        let hour = 3_600_000;
        let limits = window(hour, Some(1_000_000), None);
        let mut book = Book::default();
        let start = 1_700_000_000_000;
        let seconds = 3 * 3_600;
        for id in 0..seconds {
            let from = start + id * 1_000;
            book.take(&Limits::default(), grant(A, id, from, from + 999, 1)).unwrap();
            book.close(A, id, u(1), 1).unwrap();
            book.compact(from + 1_000);
        }
        assert!(book.grants.len() <= MAX_GRANTS);
        let now = start + seconds * 1_000;
        let counted = u(1_000_000) - book.headroom(&limits, now, now + 1_000).amount.unwrap();
        // Exactly: the grants ending after now - hour - SKEW, about 3_602.
        assert!(counted <= u(3_602 * 110 / 100), "an hour's window counts {counted} of 10800");
    }

    /// Random books, then `compact`: open grants are kept as they were (or folded), the lifetime
    /// total is unchanged, the size is bounded, and no later check gets more headroom.
    mod compact_props {
        use super::*;

        fn arb_book() -> impl Strategy<Value = (Book, u64)> {
            let now = 40 * MAX_WINDOW_MS;
            let entry = (
                0u8..4,
                -(2 * MAX_WINDOW_MS as i64)..60_000,
                0u64..100_000,
                0u64..1_000,
                0u64..10,
                0u8..5,
            );
            (0u64..1_000, proptest::collection::vec(entry, 0..560)).prop_map(
                move |(settled, entries)| {
                    let grants = entries
                        .into_iter()
                        .enumerate()
                        .map(|(id, (m, start, len, amount, count, closed))| {
                            let from_ms = now.checked_add_signed(start).unwrap();
                            Grant {
                                member: [m; 16],
                                id: id as u64,
                                from_ms,
                                until_ms: from_ms + len,
                                amount: u(amount),
                                count,
                                closed: closed != 0,
                            }
                        })
                        .collect();
                    (Book { settled: u(settled), grants }, now)
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            #[test]
            fn compaction_keeps_every_invariant(
                (book, now) in arb_book(),
                probes in proptest::collection::vec((0u64..100_000, 0u64..20_000, 0u64..=MAX_WINDOW_MS), 8),
            ) {
                let mut after = book.clone();
                after.compact(now);
                prop_assert!(after.grants.len() <= MAX_GRANTS || after.grants.iter().filter(|g| g.closed).count() <= 1);
                prop_assert_eq!(after.total(), book.total());
                let folded = |g: &Grant| g.until_ms + MAX_WINDOW_MS + SKEW_MS < now;
                let open: Vec<&Grant> = book.grants.iter().filter(|g| !g.closed && !folded(g)).collect();
                let open_after: Vec<&Grant> = after.grants.iter().filter(|g| !g.closed).collect();
                prop_assert_eq!(open_after, open);
                prop_assert!(after.grants.iter().all(|g| !folded(g) && g.from_ms <= g.until_ms));
                prop_assert_eq!(Book::decode(&after.encode()), Ok(after.clone()));
                for (start, len, window_len) in probes {
                    let limits = Limits {
                        lifetime: Some(u(1_000_000_000)),
                        windows: vec![Window { len_ms: window_len, max_amount: Some(u(1_000_000_000)), max_count: Some(1_000_000_000) }],
                    };
                    let (from, until) = (now + start, now + start + len);
                    let (h0, h1) = (book.headroom(&limits, from, until), after.headroom(&limits, from, until));
                    prop_assert!(h1.amount <= h0.amount && h1.count <= h0.count, "{:?} then {:?}", h0, h1);
                }
            }
        }
    }

    /// The point of the module: members with skewed clocks take grants sized by `headroom`,
    /// spend inside them in true time, close some, die sometimes, compact; every window of true
    /// time and the lifetime stay within the limits.
    mod simulation {
        use super::*;

        /// splitmix64: the simulation draws from a seed, so a case is cheap and replayable.
        struct Rng(u64);

        impl Rng {
            fn next(&mut self) -> u64 {
                self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            }
            fn range(&mut self, lo: u64, hi: u64) -> u64 {
                lo + self.next() % (hi - lo + 1)
            }
            fn chance(&mut self, n: u64, d: u64) -> bool {
                self.next() % d < n
            }
        }

        struct Member {
            offset: i64,
            id: [u8; 16],
            next_grant: u64,
        }

        struct Held {
            member: usize,
            member_id: [u8; 16],
            id: u64,
            from: u64,
            until: u64,
            amount: u64,
            count: u64,
            used_amount: u64,
            used_count: u64,
            done: bool,
            /// When it spends: 0 any time, 1 only in the last 300 ms (the longest step), 2 at once.
            style: u64,
        }

        #[derive(Debug, Clone)]
        struct Params {
            seed: u64,
            offsets: Vec<i64>,
            lifetime: u64,
            short: (u64, u64, u64),
            long: Option<(u64, u64, u64)>,
        }

        fn params() -> impl Strategy<Value = Params> {
            let half = (SKEW_MS / 2) as i64;
            (
                any::<u64>(),
                // Clocks as far apart as allowed, often: that is where a rule short of the skew
                // breaks.
                proptest::collection::vec(
                    prop_oneof![Just(-half), Just(half), -half..=half],
                    2..=3,
                ),
                50u64..3_000,
                (1_000u64..=8_000, 3u64..=40, 1u64..=8),
                proptest::option::of((20_000u64..=90_000, 20u64..=200, 5u64..=40)),
            )
                .prop_map(|(seed, offsets, lifetime, short, long)| Params {
                    seed,
                    offsets,
                    lifetime,
                    short,
                    long,
                })
        }

        fn member_id(rng: &mut Rng) -> [u8; 16] {
            let mut id = [0; 16];
            id[..8].copy_from_slice(&rng.next().to_be_bytes());
            id[8..].copy_from_slice(&rng.next().to_be_bytes());
            id
        }

        /// Runs one simulation; returns the spends as (true time, amount) and the limits.
        fn run(p: &Params) -> Result<(Vec<(u64, u64)>, Limits), TestCaseError> {
            let mut rng = Rng(p.seed);
            let mut windows = vec![p.short];
            windows.extend(p.long);
            let limits = Limits {
                lifetime: Some(u(p.lifetime)),
                windows: windows
                    .iter()
                    .map(|&(len_ms, a, c)| Window {
                        len_ms,
                        max_amount: Some(u(a)),
                        max_count: Some(c),
                    })
                    .collect(),
            };
            let longest = windows.iter().map(|w| w.0).max().unwrap_or(0);
            let mut members: Vec<Member> = p
                .offsets
                .iter()
                .map(|&offset| Member { offset, id: member_id(&mut rng), next_grant: 0 })
                .collect();
            let mut held: Vec<Held> = Vec::new();
            let mut spends: Vec<(u64, u64)> = Vec::new();
            let mut book = Book::default();
            let start = 1_000_000u64;
            let end = start + 180_000;
            let mut t = start;
            while t < end {
                t += rng.range(1, 300);
                for (mi, m) in members.iter_mut().enumerate() {
                    let clock = t.checked_add_signed(m.offset).unwrap();
                    // Spend from live grants whose interval holds the member's clock.
                    for h in held.iter_mut().filter(|h| h.member == mi && !h.done) {
                        let (left, n) = (h.amount - h.used_amount, h.count - h.used_count);
                        let now = match h.style {
                            0 => rng.chance(1, 3),
                            1 => clock + 300 >= h.until && rng.chance(2, 3),
                            _ => true,
                        };
                        if h.from <= clock && clock <= h.until && left > 0 && n > 0 && now {
                            let a = if rng.chance(1, 2) { left } else { rng.range(1, left) };
                            h.used_amount += a;
                            h.used_count += 1;
                            spends.push((t, a));
                        }
                    }
                    // Take a grant sized by the headroom, now or a little later.
                    let live = held.iter().filter(|h| h.member == mi && !h.done).count();
                    if live < 3 && rng.chance(1, 8) {
                        let from = clock + if rng.chance(1, 3) { rng.range(0, 5_000) } else { 0 };
                        let until = from + rng.range(500, 10_000);
                        let room = book.headroom(&limits, from, until);
                        let ha = room.amount.map_or(u64::MAX, |a| a.saturating_to::<u64>());
                        let hc = room.count.unwrap_or(u64::MAX);
                        if ha > 0 && hc > 0 {
                            let g = |id, amount, count| Grant {
                                member: m.id,
                                id,
                                from_ms: from,
                                until_ms: until,
                                amount: u(amount),
                                count,
                                closed: false,
                            };
                            if rng.chance(1, 4) {
                                // The headroom is the largest that fits.
                                let over_a = book.clone().take(&limits, g(m.next_grant, ha + 1, 1));
                                prop_assert!(over_a.is_err(), "headroom {} + 1 accepted", ha);
                                let over_c = book.clone().take(&limits, g(m.next_grant, 1, hc + 1));
                                prop_assert!(over_c.is_err(), "count headroom {} + 1 accepted", hc);
                            }
                            let amount = if rng.chance(1, 2) { ha } else { rng.range(1, ha) };
                            let count = if rng.chance(1, 2) { hc } else { rng.range(1, hc) };
                            let r = book.take(&limits, g(m.next_grant, amount, count));
                            prop_assert_eq!(r, Ok(()), "a grant within the headroom was refused");
                            held.push(Held {
                                member: mi,
                                member_id: m.id,
                                id: m.next_grant,
                                from,
                                until,
                                amount,
                                count,
                                used_amount: 0,
                                used_count: 0,
                                done: false,
                                style: rng.range(0, 2),
                            });
                            m.next_grant += 1;
                        }
                    }
                    // Close ended grants with what they used, sometimes.
                    for h in
                        held.iter_mut().filter(|h| h.member == mi && !h.done && h.until < clock)
                    {
                        if rng.chance(1, 2) {
                            let r = book.close(h.member_id, h.id, u(h.used_amount), h.used_count);
                            // Folded by compaction already: nothing to return.
                            prop_assert!(
                                matches!(r, Ok(()) | Err(ShareError::UnknownGrant)),
                                "{:?}",
                                r
                            );
                            h.done = true;
                        }
                    }
                    // Die: the open grants stay open for ever; the member restarts under a new id
                    // or, sometimes, under the same id and closes them with the granted figures.
                    if rng.chance(1, 300) {
                        let same = rng.chance(1, 2);
                        let mid = m.id;
                        let restart: Vec<(u64, U256, u64)> =
                            book.open_grants(mid).map(|g| (g.id, g.amount, g.count)).collect();
                        for h in held.iter_mut().filter(|h| h.member == mi) {
                            h.done = true;
                        }
                        if same {
                            for (id, amount, count) in restart {
                                prop_assert_eq!(book.close(mid, id, amount, count), Ok(()));
                            }
                        } else {
                            m.id = member_id(&mut rng);
                            m.next_grant = 0;
                        }
                    }
                }
                // Compact by some member's clock, down to a few entries so merging happens.
                if rng.chance(1, 6) {
                    let mi = rng.range(0, members.len() as u64 - 1) as usize;
                    let now = t.checked_add_signed(members[mi].offset).unwrap();
                    let keep = rng.range(2, 12) as usize;
                    book.compact_with(now, longest, keep);
                }
                // Every write goes through the encoding.
                book = Book::decode(&book.encode()).unwrap();
            }
            prop_assert!(book.total().unwrap() >= u(spends.iter().map(|s| s.1).sum()));
            Ok((spends, limits))
        }

        /// Checks every window of true time ending at a spend and the lifetime; returns the
        /// highest use of any window limit, in percent.
        fn check(spends: &[(u64, u64)], limits: &Limits) -> Result<u64, TestCaseError> {
            let total: u64 = spends.iter().map(|s| s.1).sum();
            prop_assert!(
                u(total) <= limits.lifetime.unwrap(),
                "spent {} past the lifetime cap",
                total
            );
            let mut peak = 0;
            for w in &limits.windows {
                let max_a = w.max_amount.unwrap().saturating_to::<u64>();
                let max_c = w.max_count.unwrap();
                let (mut lo, mut hi, mut sum, mut n) = (0, 0, 0u64, 0u64);
                for &(end, _) in spends {
                    while hi < spends.len() && spends[hi].0 <= end {
                        sum += spends[hi].1;
                        n += 1;
                        hi += 1;
                    }
                    // The window is (end - len, end].
                    while spends[lo].0 + w.len_ms <= end {
                        sum -= spends[lo].1;
                        n -= 1;
                        lo += 1;
                    }
                    prop_assert!(
                        sum <= max_a && n <= max_c,
                        "window of {} ms ending at {}: {} units in {} payments (max {} in {})",
                        w.len_ms,
                        end,
                        sum,
                        n,
                        max_a,
                        max_c
                    );
                    peak = peak.max(sum * 100 / max_a).max(n * 100 / max_c);
                }
            }
            Ok(peak)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn simulation_never_overspends(p in params()) {
                let (spends, limits) = run(&p)?;
                check(&spends, &limits)?;
            }
        }

        /// The simulation is not vacuous: it spends, and up to the limits.
        #[test]
        fn simulation_spends_up_to_the_limits() {
            let (mut full, mut spent) = (0, 0);
            for seed in 0..20 {
                let p = Params {
                    seed,
                    offsets: vec![-1_000, 1_000, 0],
                    lifetime: 2_000,
                    short: (5_000, 20, 4),
                    long: Some((60_000, 100, 20)),
                };
                let (spends, limits) = run(&p).unwrap();
                let peak = check(&spends, &limits).unwrap();
                println!("seed {seed}: {} spends, peak {peak}%", spends.len());
                spent += spends.len();
                full += usize::from(peak == 100);
            }
            assert!(spent >= 20 * 10, "{spent} spends");
            assert!(full >= 15, "a limit was reached in {full} of 20 runs");
        }
    }
}
