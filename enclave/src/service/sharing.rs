//! Budgets shared by the members of a group: several enclaves serving the same wallets (copies
//! of one sealed state, each with a head of its own in the anchor) spend against one session
//! cap, one set of window budgets and rate limits, through books kept in etcd beside the heads.
//!
//! # How a payment is charged when its wallet is shared
//!
//! A member never asks etcd per payment (one contended key takes some 450 updates a second):
//! it holds a **grant** per scope — the right to spend up to an amount and a number of payments
//! during a short interval ([`LEASE_MS`]) of its own clock — taken from the scope's book
//! ([`wallet_policy::share`]: the rule, and why no window can exceed its maximum whatever the
//! members do) by one etcd transaction that also compares this member's head, so an instance
//! another one superseded (a clone, a stale copy) takes nothing. The scopes: the session (its
//! cap in force, its window budgets and rate limit), the wallet (its window budgets and rate
//! limit) and, when the policy has per-payee budgets, the wallet's payee. A scope with no limit
//! has no book.
//!
//! The decision under the state lock is the ordinary one (`rules::choose`), but it sees what is
//! left of this member's grants instead of its local history ([`SharedLedger`]): "spent" is the
//! maximum less the grant's headroom, so a charge passes only if every grant it draws on covers
//! it, and a denial names the limit that binds. When a grant is missing or short, the payment
//! takes new grants (all the scopes it needs in one transaction, sized for [`CHUNK_PAYMENTS`]
//! payments like it, at most half of what the book has left), then decides again. Only when a
//! book itself has no room is the payment denied.
//!
//! # What is given back, and what is lost
//!
//! A grant replaced by a new one is closed in the same transaction with what was used (the rest
//! returns to the book). A grant's interval ends after [`LEASE_MS`]; the window budgets stop
//! counting it once it ages out. A member that crashes or is killed never closes its open
//! grants: they stay counted in full — budget wasted (at most one grant per scope per crash),
//! never overspent. After a restart the member starts with no grant.
//!
//! # What this does not share (ARCHITECTURE.md, "One budget, several enclaves")
//!
//! Idempotency keys and request nonces are each member's own: a request the host delivers to
//! two members is signed and charged twice within the shared limits, but with one EIP-3009
//! nonce (`ledger::authorization_nonce`), so the token settles it once. "Paid this payee
//! before" (first-payment approval) is each member's own knowledge, so a member may hold a
//! payment the other would not (stricter, never looser). Sessions, policies and admins are each
//! member's own state: an admin change must reach every member — the books carry what makes a
//! member that missed one safe: a revocation or freeze closes the scope's book for the group, and
//! a member whose policy is older than the newest any member applied takes no grant.

use std::collections::HashMap;

use alloy_primitives::{Address, U256};
use wallet_policy::{
    rules::{Ledger, Policy},
    share::{Book, Grant, Limits, Window},
    window::{ScopeLedger, Totals},
};
use wallet_proto::Reason;

use super::{records::SessionRecord, Enclave, Failure, Result};
use crate::anchor::{etcd, Anchor};

/// How long a grant may be spent from, ms of the member's clock.
pub const LEASE_MS: u64 = 5_000;
/// A grant is sized for this many payments like the one that asked (at most half of what the
/// book has left, at least the payment).
pub const CHUNK_PAYMENTS: u64 = 64;
/// Transactions one payment tries before it gives up on a contended book.
const TXN_TRIES: usize = 8;

/// A scope whose limits members share.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Scope {
    /// A session: its cap in force, window budgets and rate limit.
    Session(String),
    /// A wallet: its window budgets and rate limit.
    Wallet(String),
    /// A wallet's payments to one payee: the policy's per-payee budgets.
    Payee(String, Address),
}

impl Scope {
    /// The book's etcd key under the group's shared prefix.
    fn key(&self, prefix: &str) -> String {
        match self {
            Self::Session(s) => format!("{prefix}s/{s}"),
            Self::Wallet(w) => format!("{prefix}w/{w}"),
            Self::Payee(w, p) => format!("{prefix}p/{w}/{}", hex::encode(p)),
        }
    }
}

/// This member's grant in one book, as it spends from it (in memory only).
#[derive(Debug, Clone)]
pub(crate) struct Active {
    id: u64,
    from_ms: u64,
    until_ms: u64,
    amount: U256,
    count: u64,
    used: U256,
    used_count: u64,
    /// When it was taken, by the enclave's own monotonic timer: a grant is spent from for at
    /// most [`LEASE_MS`] of it too, whatever the (host-set) clock says.
    taken: std::time::Instant,
}

impl Active {
    fn lease_over(&self) -> bool {
        self.taken.elapsed() > std::time::Duration::from_millis(LEASE_MS)
    }

    /// What is left to spend at `now_ms`: nothing outside the grant's interval, nor after its
    /// lease by the enclave's own timer.
    fn headroom(&self, now_ms: u64) -> (U256, u64) {
        if now_ms < self.from_ms || now_ms > self.until_ms || self.lease_over() {
            return (U256::ZERO, 0);
        }
        (self.amount.saturating_sub(self.used), self.count.saturating_sub(self.used_count))
    }
}

/// A grant this member no longer spends from, to be closed in its book with what it used.
#[derive(Debug, Clone)]
pub(crate) struct Retired {
    scope: Scope,
    id: u64,
    used: U256,
    used_count: u64,
}

/// The grants of this member (behind the state lock, so a reservation and a retirement never
/// interleave).
#[derive(Debug, Default)]
pub(crate) struct Grants {
    active: HashMap<Scope, Active>,
    retired: Vec<Retired>,
    /// Bumped by every retirement of a wallet's grants (a policy change): grants a transaction
    /// started before it are not put in force (they were sized under the old limits).
    generation: u64,
}

impl Grants {
    /// Stops spending from `scope`'s grant (a policy change, a revocation): a new one is taken,
    /// under the limits then in force, by the next payment that needs it.
    pub fn retire(&mut self, scope: &Scope) {
        if let Some(a) = self.active.remove(scope) {
            self.retired.push(Retired {
                scope: scope.clone(),
                id: a.id,
                used: a.used,
                used_count: a.used_count,
            });
        }
    }

    /// Retires every grant of `wallet` and its sessions (a policy change).
    pub fn retire_wallet(&mut self, wallet: &str, sessions: &[String]) {
        self.generation = self.generation.wrapping_add(1);
        let scopes: Vec<Scope> = self
            .active
            .keys()
            .filter(|s| match s {
                Scope::Wallet(w) | Scope::Payee(w, _) => w == wallet,
                Scope::Session(s) => sessions.contains(s),
            })
            .cloned()
            .collect();
        for s in &scopes {
            self.retire(s);
        }
    }

    fn headroom(&self, scope: &Scope, now_ms: u64) -> (U256, u64) {
        self.active.get(scope).map_or((U256::ZERO, 0), |a| a.headroom(now_ms))
    }

    /// Changes with every retirement of a wallet's grants (a policy change).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether this member's grant for `scope` covers one more payment of `charge` now.
    pub fn covers(&self, scope: &Scope, now_ms: u64, charge: U256) -> bool {
        let (amount, count) = self.headroom(scope, now_ms);
        amount >= charge && count > 0
    }

    /// Charges a reserved payment to the grants it drew on.
    pub fn charge<'s>(&mut self, scopes: impl IntoIterator<Item = &'s Scope>, amount: U256) {
        for s in scopes {
            if let Some(a) = self.active.get_mut(s) {
                a.used = a.used.saturating_add(amount);
                a.used_count = a.used_count.saturating_add(1);
            }
        }
    }
}

/// The scopes of a payment and their limits, from the policy and the session.
#[derive(Debug, Clone)]
pub(crate) struct Needs {
    pub scopes: Vec<(Scope, Limits)>,
}

impl Needs {
    /// The paying wallet.
    pub fn wallet_id(&self) -> Option<String> {
        self.scopes.iter().find_map(|(s, _)| match s {
            Scope::Wallet(w) => Some(w.clone()),
            _ => None,
        })
    }
}

fn windows(budgets: &[wallet_policy::document::Budget], per_minute: Option<u64>) -> Vec<Window> {
    let mut w: Vec<Window> = budgets
        .iter()
        .map(|b| Window {
            len_ms: b.per_seconds.saturating_mul(1000),
            max_amount: Some(b.max),
            max_count: None,
        })
        .collect();
    if let Some(n) = per_minute {
        w.push(Window { len_ms: 60_000, max_amount: None, max_count: Some(n) });
    }
    w
}

/// The limited scopes a payment by `session` to `payee` draws on.
pub(crate) fn needs(
    policy: &Policy,
    session: &SessionRecord,
    cap: U256,
    payee: Option<Address>,
) -> Needs {
    let mut scopes = Vec::new();
    let session_windows = windows(&policy.session.budgets, policy.session.payments_per_minute);
    // The cap in force is always finite (a session is issued with one).
    scopes.push((
        Scope::Session(session.id.clone()),
        Limits { lifetime: Some(cap), windows: session_windows },
    ));
    // Always: the wallet's book also carries its freeze for the group.
    let wallet_windows = windows(&policy.wallet.budgets, policy.wallet.payments_per_minute);
    scopes.push((
        Scope::Wallet(session.wallet_id.clone()),
        Limits { lifetime: None, windows: wallet_windows },
    ));
    if let (Some(payee), false) = (payee, policy.wallet.per_payee.is_empty()) {
        scopes.push((
            Scope::Payee(session.wallet_id.clone(), payee),
            Limits { lifetime: None, windows: windows(&policy.wallet.per_payee, None) },
        ));
    }
    Needs { scopes }
}

/// The decision's ledger for a shared wallet: each window's "spent" is its maximum less what
/// this member's grant for the scope has left, so `rules::choose` allows a charge only if the
/// grants cover it. First-payment approval reads the local history (stricter: a payee another
/// member paid is new here).
pub(crate) struct SharedLedger<'a> {
    /// The local history (for `paid_before` only).
    pub local: ScopeLedger<'a>,
    pub grants: &'a Grants,
    pub policy: &'a Policy,
    pub session: Scope,
    pub wallet: Scope,
    pub wallet_id: &'a str,
    pub now_ms: u64,
}

fn as_spent(
    budgets: &[wallet_policy::document::Budget],
    per_minute: Option<u64>,
    len: u64,
    headroom: (U256, u64),
) -> Totals {
    let max = budgets.iter().filter(|b| b.per_seconds == len).map(|b| b.max).min();
    let amount = max.map_or(U256::ZERO, |m| m.saturating_sub(headroom.0));
    let count = match per_minute {
        Some(n) if len == 60 => n.saturating_sub(headroom.1),
        _ => 0,
    };
    Totals { amount, count }
}

impl Ledger for SharedLedger<'_> {
    fn wallet(&mut self, len: u64, _now: u64) -> Totals {
        let h = self.grants.headroom(&self.wallet, self.now_ms);
        as_spent(&self.policy.wallet.budgets, self.policy.wallet.payments_per_minute, len, h)
    }
    fn session(&mut self, len: u64, _now: u64) -> Totals {
        let h = self.grants.headroom(&self.session, self.now_ms);
        as_spent(&self.policy.session.budgets, self.policy.session.payments_per_minute, len, h)
    }
    fn payee(&mut self, payee: &Address, len: u64, _now: u64) -> Totals {
        let scope = Scope::Payee(self.wallet_id.to_owned(), *payee);
        let h = self.grants.headroom(&scope, self.now_ms);
        as_spent(&self.policy.wallet.per_payee, None, len, h)
    }
    fn paid_before(&self, payee: &Address) -> bool {
        self.local.paid_before(payee)
    }
}

impl SharedLedger<'_> {
    /// The session's cap in force less what its grant has left: the "spent" the cap check sees.
    pub fn session_spent(&self, cap: U256) -> U256 {
        cap.saturating_sub(self.grants.headroom(&self.session, self.now_ms).0)
    }
}

/// What an attempt to take grants came to.
#[derive(Debug)]
pub(crate) enum Taken {
    /// The grants are in force: decide again.
    Granted,
    /// A book has no room for the charge: the decision's denial stands.
    Exhausted,
    /// The scope is closed for the group: the session was revoked, or the wallet frozen, at a
    /// member.
    Closed(Scope),
}

/// A book's stored bytes before the MAC: [`BOOK_FORMAT`] ‖ flags ‖ `policy_ts` ‖ `freeze_ts`
/// (u64 big-endian each) ‖ the book ([`Book::encode`]).
const BOOK_FORMAT: u8 = 2;
/// Flag: the scope is closed for the group (a revoked session, a frozen wallet): no member
/// takes a grant from it.
const CLOSED: u8 = 1;

/// What a book carries beside the grants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Header {
    flags: u8,
    /// A wallet's book: the newest admin timestamp (Unix ms) of a policy any member applied.
    /// A member whose policy is older takes no grant (it missed a policy change).
    policy_ts: u64,
    /// A wallet's book: the admin timestamp of the freeze or unfreeze in force for the group;
    /// an older one (a replayed request) does not change it.
    freeze_ts: u64,
}

fn seal_book(anchor: &Anchor, key: &str, h: Header, book: &Book) -> Vec<u8> {
    let mut bytes = vec![BOOK_FORMAT, h.flags];
    bytes.extend_from_slice(&h.policy_ts.to_be_bytes());
    bytes.extend_from_slice(&h.freeze_ts.to_be_bytes());
    bytes.extend_from_slice(&book.encode());
    anchor.seal_shared(key, &bytes)
}

/// Reads a stored book (`None`: absent, an empty open book).
fn open_book(anchor: &Anchor, key: &str, stored: Option<&[u8]>) -> Result<(Header, Book)> {
    let Some(stored) = stored else { return Ok((Header::default(), Book::default())) };
    let bytes = anchor.open_shared(key, stored).map_err(|e| {
        Failure::precondition(
            Reason::AnchorHalted,
            format!("the shared book at {key} cannot be authenticated ({e}): nothing is charged against it"),
        )
    })?;
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_be_bytes(w)
    };
    match bytes {
        [BOOK_FORMAT, flags, rest @ ..] if flags & !CLOSED == 0 && rest.len() >= 16 => {
            let h = Header {
                flags: *flags,
                policy_ts: word(&rest[..8]),
                freeze_ts: word(&rest[8..16]),
            };
            Book::decode(&rest[16..])
                .map(|b| (h, b))
                .map_err(|e| internal(format!("the shared book at {key} cannot be read: {e}")))
        }
        _ => {
            Err(internal(format!("the shared book at {key} is not in a format this enclave reads")))
        }
    }
}

/// The books this member last read or wrote, with their etcd revisions (the next transaction
/// compares them; a stale one costs a conflict, which returns the current value), and the keys
/// it has seen exist (a book that disappears was deleted in etcd: refused, never read as an
/// empty one).
#[derive(Debug, Default)]
pub(crate) struct BookCache {
    books: HashMap<String, Option<(Vec<u8>, i64)>>,
    seen: std::collections::HashSet<String>,
}

impl BookCache {
    /// Records what etcd holds at `key`.
    fn put(&mut self, key: &str, value: Option<(Vec<u8>, i64)>) -> Result<()> {
        if value.is_some() {
            self.seen.insert(key.to_owned());
        } else if self.seen.contains(key) {
            self.books.remove(key);
            return Err(Failure::precondition(
                Reason::AnchorHalted,
                format!("the shared book at {key} was deleted from etcd after this member saw it: its grants, revocation or freeze would be forgotten, so nothing is charged against it (an operator must restore the group's books, or re-create the group)"),
            ));
        }
        self.books.insert(key.to_owned(), value);
        Ok(())
    }

    /// Reads `keys` this member holds no value for.
    async fn fill(&mut self, anchor: &std::sync::Arc<Anchor>, keys: &[String]) -> Result<()> {
        let unknown: Vec<String> =
            keys.iter().filter(|k| !self.books.contains_key(*k)).cloned().collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let read = anchor
            .read_shared(unknown.clone())
            .await
            .map_err(|(reason, why)| Failure::precondition(reason, why))?;
        for (k, v) in unknown.into_iter().zip(read) {
            self.put(&k, v.map(|v| (v.value, v.revision)))?;
        }
        Ok(())
    }

    /// Forgets `key`'s value: the next use reads it again.
    fn forget(&mut self, key: &str) {
        self.books.remove(key);
    }
}

fn internal(message: impl Into<String>) -> Failure {
    Failure::internal(message)
}

/// What this member knows of a scope, to check its book against.
struct Local {
    /// A wallet's book: the admin timestamp of the policy this member applied.
    policy_ts: Option<u64>,
    /// This member has spent in the scope (so its book must exist).
    spent: bool,
}

fn local_facts(inner: &super::state::Inner, scope: &Scope) -> Local {
    match scope {
        Scope::Wallet(w) => Local {
            policy_ts: Some(inner.policy_ts.get(w).copied().unwrap_or(0)),
            spent: inner.wallet_history.get(w).is_some_and(|h| !h.payees.is_empty()),
        },
        Scope::Session(id) => Local {
            policy_ts: None,
            spent: inner.sessions.get(id).is_some_and(|s| s.spent > U256::ZERO),
        },
        Scope::Payee(w, p) => Local {
            policy_ts: None,
            spent: inner.wallet_history.get(w).is_some_and(|h| h.payees.contains_key(p)),
        },
    }
}

/// The longest a payment may wait between its authentication and taking its grants: grants
/// start, and books are compacted, at times the request's fresh timestamp vouches for.
pub const MAX_GRANT_DELAY_MS: u64 = 3_000;

impl Enclave {
    /// The anchor, when this enclave shares its budgets.
    pub(super) fn sharing(&self) -> Option<std::sync::Arc<Anchor>> {
        self.anchor.get().filter(|a| a.shared_prefix().is_some())
    }

    /// Takes grants for `needs` covering `charge` now (module docs), closing this member's
    /// grants they replace. `request_ms` is when the request was authenticated (an agent's
    /// fresh timestamp vouched for it); the grants start at this member's monotonic clock once
    /// the books are held, which must not be more than [`MAX_GRANT_DELAY_MS`] later (else the
    /// host stepped the clock, or held the request: refused), and the books are compacted at
    /// `request_ms`. `generation` is [`Grants::generation`] when the payment was decided: a
    /// policy change since makes the new grants unusable (sized under the old limits).
    pub(super) async fn take_grants(
        &self,
        anchor: &std::sync::Arc<Anchor>,
        needs: &Needs,
        charge: U256,
        request_ms: u64,
        generation: u64,
    ) -> Result<Taken> {
        let Some(prefix) = anchor.shared_prefix().map(str::to_owned) else {
            return Ok(Taken::Granted);
        };
        let member = anchor.member();
        let mut cache = self.books.lock().await;
        let now_ms = self.monotonic_now().as_millis();
        if now_ms.saturating_sub(request_ms) > MAX_GRANT_DELAY_MS {
            return Err(Failure::precondition(
                Reason::AnchorUnavailable,
                format!("the request waited {} ms for the shared budgets (the clock moved, or the host held it): nothing is taken for it; retry", now_ms.saturating_sub(request_ms)),
            ));
        }
        // Another payment may have taken what this one needs while it waited for the lock.
        let (missing, local) = {
            let inner = self.lock();
            let missing: Vec<&(Scope, Limits)> = needs
                .scopes
                .iter()
                .filter(|(s, _)| !inner.grants.covers(s, now_ms, charge))
                .collect();
            let local: Vec<Local> = missing.iter().map(|(s, _)| local_facts(&inner, s)).collect();
            (missing, local)
        };
        if missing.is_empty() {
            return Ok(Taken::Granted);
        }
        let keys: Vec<String> = missing.iter().map(|(s, _)| s.key(&prefix)).collect();
        cache.fill(anchor, &keys).await?;
        for _ in 0..TXN_TRIES {
            // This member stops spending from the grants being replaced; they are closed in
            // the same transaction as the new ones are taken.
            let retired: Vec<Retired> = {
                let mut inner = self.lock();
                for (s, _) in &missing {
                    inner.grants.retire(s);
                }
                inner.grants.retired.clone()
            };
            let mut puts = Vec::with_capacity(missing.len());
            let mut new = Vec::with_capacity(missing.len());
            for (((scope, limits), key), local) in missing.iter().zip(&keys).zip(&local) {
                let mut cached = cache.books.get(key).cloned().flatten();
                let (mut header, mut book) =
                    open_book(anchor, key, cached.as_ref().map(|c| c.0.as_slice()))?;
                if header.flags & CLOSED != 0 {
                    // Closed as this member last saw it: read it again (another member may
                    // have reopened it — an unfreeze) before refusing.
                    cache.forget(key);
                    cache.fill(anchor, std::slice::from_ref(key)).await?;
                    cached = cache.books.get(key).cloned().flatten();
                    (header, book) =
                        open_book(anchor, key, cached.as_ref().map(|c| c.0.as_slice()))?;
                    if header.flags & CLOSED != 0 {
                        return Ok(Taken::Closed(scope.clone()));
                    }
                }
                if cached.is_none() && local.spent {
                    // This member has spent in this scope, so its book existed: it was deleted
                    // (an operator), and must not start over empty.
                    return Err(Failure::precondition(
                        Reason::AnchorHalted,
                        format!("the shared book at {key} is missing, though this member has spent in its scope: it was deleted from etcd, and is not started over (an operator must restore the group's books, or re-create the group)"),
                    ));
                }
                if let Some(local) = local.policy_ts {
                    if local < header.policy_ts {
                        return Err(Failure::precondition(
                            Reason::AnchorUnavailable,
                            format!("another member of the group applied a newer policy for this wallet (admin time {}) than this one (admin time {local}): send this member the policy (walletctl policy set) — until then it takes no shared budget", header.policy_ts),
                        ));
                    }
                }
                // Members' clocks must agree within SKEW_MS: a member behind a grant already in
                // the book (another member's, or its own from before its clock was set back)
                // stops, rather than take grants the check regions would not see together.
                if let Some(ahead) = book
                    .grants
                    .iter()
                    .map(|g| g.from_ms)
                    .max()
                    .filter(|from| *from > now_ms.saturating_add(wallet_policy::share::SKEW_MS))
                {
                    return Err(Failure::precondition(
                        Reason::AnchorUnavailable,
                        format!("this member's clock is behind a grant in the group's book by more than {} ms (a grant from {ahead}, now {now_ms}): it takes no shared budget until the clocks agree", wallet_policy::share::SKEW_MS),
                    ));
                }
                // Compacted at the request's time, which an agent's fresh timestamp vouched
                // for: never further ahead than the grant's start.
                book.compact(request_ms.min(now_ms));
                for r in retired.iter().filter(|r| &r.scope == scope) {
                    // A grant already folded away, or closed by an earlier attempt whose answer
                    // was lost, needs nothing more.
                    let _ = book.close(member, r.id, r.used, r.used_count);
                }
                let until_ms = now_ms.saturating_add(LEASE_MS);
                let room = book.headroom(limits, now_ms, until_ms);
                let Some((amount, count)) = chunk(room.amount, room.count, charge) else {
                    return Ok(Taken::Exhausted);
                };
                let id = u64::from_be_bytes(self.entropy.bytes::<8>());
                let grant =
                    Grant { member, id, from_ms: now_ms, until_ms, amount, count, closed: false };
                book.take(limits, grant).map_err(|e| {
                    internal(format!("a grant sized by the book's headroom did not fit: {e}"))
                })?;
                puts.push(etcd::Put {
                    key: key.clone().into_bytes(),
                    expected: cached.as_ref().map(|(_, rev)| *rev),
                    value: seal_book(anchor, key, header, &book),
                });
                new.push((
                    scope.clone(),
                    Active {
                        id,
                        from_ms: now_ms,
                        until_ms,
                        amount,
                        count,
                        used: U256::ZERO,
                        used_count: 0,
                        taken: std::time::Instant::now(),
                    },
                ));
            }
            // Until etcd confirms them, the new grants are retired (unused): if this payment is
            // cancelled, or the answer is lost, they are closed by a later transaction instead
            // of staying open and counted for good.
            {
                let mut inner = self.lock();
                for (scope, a) in &new {
                    inner.grants.retired.push(Retired {
                        scope: scope.clone(),
                        id: a.id,
                        used: U256::ZERO,
                        used_count: 0,
                    });
                }
            }
            let outcome = match anchor.write_shared(puts.clone()).await {
                Ok(o) => o,
                Err((reason, why)) => {
                    for k in &keys {
                        cache.forget(k);
                    }
                    return Err(Failure::precondition(reason, why));
                }
            };
            match outcome {
                etcd::Multi::Committed(rev) => {
                    for p in puts {
                        let key = String::from_utf8(p.key).unwrap_or_default();
                        cache.put(&key, Some((p.value, rev)))?;
                    }
                    let mut inner = self.lock();
                    let closed: Vec<&Scope> = missing.iter().map(|(s, _)| s).collect();
                    // The grants this transaction closed, and the new ones, leave the list.
                    inner.grants.retired.retain(|r| {
                        let was_closed = closed.contains(&&r.scope)
                            && retired.iter().any(|x| x.scope == r.scope && x.id == r.id);
                        let is_new = new.iter().any(|(s, a)| *s == r.scope && a.id == r.id);
                        !(was_closed || is_new)
                    });
                    let stale = inner.grants.generation != generation;
                    for (scope, active) in new {
                        if stale {
                            // A policy change since the payment was decided: sized under the
                            // old limits, so never spent from; closed unused later.
                            inner.grants.retired.push(Retired {
                                scope,
                                id: active.id,
                                used: U256::ZERO,
                                used_count: 0,
                            });
                        } else {
                            inner.grants.active.insert(scope, active);
                        }
                    }
                    return Ok(Taken::Granted);
                }
                etcd::Multi::Conflict { keys: now, .. } => {
                    // Another member wrote a book meanwhile: take its value and try again.
                    for (k, v) in keys.iter().zip(now) {
                        cache.put(k, v.map(|v| (v.value, v.revision)))?;
                    }
                }
            }
        }
        Err(Failure::precondition(
            Reason::AnchorUnavailable,
            format!("the shared budgets stayed contended for {TXN_TRIES} tries; retry"),
        ))
    }
}

/// How often expired grants are closed (their unused part returned to the books).
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Enclave {
    /// Runs for the life of the process: every [`SWEEP_INTERVAL`], when this enclave shares
    /// its budgets, closes its grants whose interval ended, so what they did not use returns to
    /// the books (otherwise a session's leftover would stay counted against its cap until this
    /// member next paid for it).
    pub fn spawn_grant_sweeper(self: &std::sync::Arc<Self>) {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                let Some(this) = weak.upgrade() else { break };
                this.close_expired_grants().await;
            }
        });
    }

    /// Retires this member's grants whose interval ended and closes every retired grant in its
    /// book. Only closes: it never compacts (a book is compacted only by a payment taking a
    /// grant, at a time an agent's fresh request vouches for — a sweep at a clock the host set
    /// far ahead would otherwise fold every window's history away for the whole group).
    async fn close_expired_grants(&self) {
        let Some(anchor) = self.sharing() else { return };
        let Some(prefix) = anchor.shared_prefix().map(str::to_owned) else { return };
        if anchor.gate().is_err() {
            return;
        }
        let member = anchor.member();
        let mut cache = self.books.lock().await;
        let now_ms = self.monotonic_now().as_millis();
        let retired: Vec<Retired> = {
            let mut inner = self.lock();
            let expired: Vec<Scope> = inner
                .grants
                .active
                .iter()
                .filter(|(_, a)| a.until_ms < now_ms || a.lease_over())
                .map(|(s, _)| s.clone())
                .collect();
            for s in &expired {
                inner.grants.retire(s);
            }
            inner.grants.retired.clone()
        };
        let mut scopes: Vec<Scope> = retired.iter().map(|r| r.scope.clone()).collect();
        scopes.sort();
        scopes.dedup();
        // One book at a time: a book that cannot be read or written leaves its grants for the
        // next sweep, and does not hold up the others.
        for scope in scopes {
            let key = scope.key(&prefix);
            let mine: Vec<&Retired> = retired.iter().filter(|r| r.scope == scope).collect();
            let closed = self.close_in_book(&anchor, &mut cache, &key, member, &mine).await;
            match closed {
                Ok(()) => self
                    .lock()
                    .grants
                    .retired
                    .retain(|r| !mine.iter().any(|x| x.scope == r.scope && x.id == r.id)),
                Err(f) => {
                    tracing::debug!(book = %key, error = %f.message, "shared budgets: grants not closed yet; the next sweep retries")
                }
            }
        }
    }

    async fn close_in_book(
        &self,
        anchor: &std::sync::Arc<Anchor>,
        cache: &mut BookCache,
        key: &str,
        member: [u8; 16],
        retired: &[&Retired],
    ) -> Result<()> {
        cache.fill(anchor, &[key.to_owned()]).await?;
        for _ in 0..TXN_TRIES {
            let Some((value, rev)) = cache.books.get(key).cloned().flatten() else {
                return Ok(());
            };
            let (header, mut book) = open_book(anchor, key, Some(&value))?;
            let mut changed = false;
            for r in retired {
                changed |= book.close(member, r.id, r.used, r.used_count).is_ok()
                    && book.grants.iter().any(|g| g.member == member && g.id == r.id);
            }
            if !changed {
                return Ok(());
            }
            let put = etcd::Put {
                key: key.as_bytes().to_vec(),
                expected: Some(rev),
                value: seal_book(anchor, key, header, &book),
            };
            match anchor
                .write_shared(vec![put.clone()])
                .await
                .map_err(|(reason, why)| Failure::precondition(reason, why))?
            {
                etcd::Multi::Committed(rev) => return cache.put(key, Some((put.value, rev))),
                etcd::Multi::Conflict { keys, .. } => {
                    cache.put(
                        key,
                        keys.into_iter().next().flatten().map(|v| (v.value, v.revision)),
                    )?;
                }
            }
        }
        Err(Failure::precondition(
            Reason::AnchorUnavailable,
            format!("the shared book at {key} stayed contended"),
        ))
    }

    /// Closes (`closed`) or reopens a scope's book for the whole group: a session revoked, a
    /// wallet frozen or unfrozen at this member, by an admin request signed at `admin_ts`. A
    /// freeze or unfreeze older than the one in force for the group (a replayed request)
    /// changes nothing there. Other members stop taking grants at once and spend what their
    /// current grant has left for at most [`LEASE_MS`].
    ///
    /// # Errors
    /// `ANCHOR_UNAVAILABLE` when etcd did not confirm (the change holds at this member
    /// already; retry for the group); `INVALID_ARGUMENT` when a newer freeze or unfreeze holds
    /// for the group.
    pub(super) async fn mark_shared(
        &self,
        scope: Scope,
        closed: bool,
        admin_ts: u64,
    ) -> Result<()> {
        let wallet = matches!(scope, Scope::Wallet(_));
        self.rewrite_header(scope, |mut header, _| {
            if wallet {
                // A freeze always holds (the kill switch); an unfreeze only if it is newer than
                // the freeze or unfreeze in force (else it is a request the host kept).
                if !closed && admin_ts <= header.freeze_ts {
                    return Err(Failure::precondition(
                        Reason::InvalidArgument,
                        format!("a newer freeze or unfreeze (admin time {}) holds for the group than this unfreeze ({admin_ts}): nothing changed", header.freeze_ts),
                    ));
                }
                header.freeze_ts = header.freeze_ts.max(admin_ts);
            }
            // Written even when the cached value already says so: the cache may be stale, and
            // the compare on its revision is what makes the write land on the current book.
            header.flags = if closed { header.flags | CLOSED } else { header.flags & !CLOSED };
            Ok(Some(header))
        })
        .await
    }

    /// Records, in the wallet's book, that a member applied a policy the admin signed at
    /// `admin_ts`: members whose policy is older take no grant until they apply it.
    ///
    /// # Errors
    /// `ANCHOR_UNAVAILABLE` when etcd did not confirm (the policy holds at this member).
    pub(super) async fn publish_policy(&self, wallet: &str, admin_ts: u64) -> Result<()> {
        self.rewrite_header(Scope::Wallet(wallet.to_owned()), |mut header, exists| {
            // The timestamp only grows, so a stale cached value at or past it is past it in
            // etcd too.
            if header.policy_ts >= admin_ts && exists {
                return Ok(None);
            }
            header.policy_ts = header.policy_ts.max(admin_ts);
            Ok(Some(header))
        })
        .await
    }

    /// Rewrites a scope's book header with `change` (given the header and whether the book
    /// exists; `None`: nothing to write), by compare-and-swap on the book, when this enclave
    /// shares its budgets.
    async fn rewrite_header(
        &self,
        scope: Scope,
        change: impl Fn(Header, bool) -> Result<Option<Header>>,
    ) -> Result<()> {
        let Some(anchor) = self.sharing() else { return Ok(()) };
        let Some(prefix) = anchor.shared_prefix().map(str::to_owned) else { return Ok(()) };
        let key = scope.key(&prefix);
        let mut cache = self.books.lock().await;
        cache.fill(&anchor, std::slice::from_ref(&key)).await?;
        for _ in 0..TXN_TRIES {
            let cached = cache.books.get(&key).cloned().flatten();
            let (header, book) = open_book(&anchor, &key, cached.as_ref().map(|c| c.0.as_slice()))?;
            let Some(header) = change(header, cached.is_some())? else { return Ok(()) };
            let value = seal_book(&anchor, &key, header, &book);
            let put = etcd::Put {
                key: key.clone().into_bytes(),
                expected: cached.as_ref().map(|(_, rev)| *rev),
                value: value.clone(),
            };
            match anchor.write_shared(vec![put]).await {
                Err((reason, why)) => {
                    cache.forget(&key);
                    return Err(Failure::precondition(reason, why));
                }
                Ok(etcd::Multi::Committed(rev)) => return cache.put(&key, Some((value, rev))),
                Ok(etcd::Multi::Conflict { keys, .. }) => {
                    let now = keys.into_iter().next().flatten();
                    cache.put(&key, now.map(|v| (v.value, v.revision)))?;
                }
            }
        }
        Err(Failure::precondition(
            Reason::AnchorUnavailable,
            format!("the shared book at {key} stayed contended for {TXN_TRIES} tries; retry"),
        ))
    }
}

/// The grant to ask for: at least `charge` and one payment, about [`CHUNK_PAYMENTS`] payments
/// like it, at most half of what is left (so the other members find room); `None` when the
/// book cannot cover `charge`.
fn chunk(room_amount: Option<U256>, room_count: Option<u64>, charge: U256) -> Option<(U256, u64)> {
    let want = charge.saturating_mul(U256::from(CHUNK_PAYMENTS));
    let amount = match room_amount {
        None => want,
        Some(room) if room < charge => return None,
        Some(room) => want.min(room / U256::from(2u8)).max(charge),
    };
    let count = match room_count {
        None => CHUNK_PAYMENTS,
        Some(0) => return None,
        Some(room) => CHUNK_PAYMENTS.min(room / 2).max(1),
    };
    Some((amount, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u64) -> U256 {
        U256::from(n)
    }

    #[test]
    fn chunks_cover_the_charge_and_leave_room() {
        // Plenty of room: CHUNK_PAYMENTS payments.
        assert_eq!(chunk(Some(u(1_000_000)), None, u(10)), Some((u(640), CHUNK_PAYMENTS)));
        // Little room: half of it, never less than the charge.
        assert_eq!(chunk(Some(u(100)), Some(10), u(10)), Some((u(50), 5)));
        assert_eq!(chunk(Some(u(15)), Some(1), u(10)), Some((u(10), 1)));
        // No room for the charge, or for one more payment.
        assert_eq!(chunk(Some(u(9)), None, u(10)), None);
        assert_eq!(chunk(Some(u(100)), Some(0), u(10)), None);
        // Unlimited.
        assert_eq!(chunk(None, None, u(1)), Some((u(CHUNK_PAYMENTS), CHUNK_PAYMENTS)));
    }

    #[test]
    fn a_grant_is_spent_only_inside_its_interval_and_amount() {
        let a = Active {
            id: 1,
            from_ms: 1_000,
            until_ms: 6_000,
            amount: u(100),
            count: 3,
            used: u(40),
            used_count: 1,
            taken: std::time::Instant::now(),
        };
        assert_eq!(a.headroom(999), (U256::ZERO, 0));
        assert_eq!(a.headroom(1_000), (u(60), 2));
        assert_eq!(a.headroom(6_000), (u(60), 2));
        assert_eq!(a.headroom(6_001), (U256::ZERO, 0));
    }

    #[test]
    fn spent_as_the_decision_sees_it_is_the_maximum_less_the_headroom() {
        let budgets = vec![
            wallet_policy::document::Budget { per_seconds: 3600, max: u(1000) },
            wallet_policy::document::Budget { per_seconds: 3600, max: u(800) },
        ];
        // The tighter of two budgets of one length binds.
        assert_eq!(as_spent(&budgets, Some(5), 3600, (u(300), 2)).amount, u(500));
        // The rate limit's window is the minute.
        assert_eq!(
            as_spent(&budgets, Some(5), 60, (u(300), 2)),
            Totals { amount: U256::ZERO, count: 3 }
        );
        // No grant: every window is full.
        assert_eq!(as_spent(&budgets, Some(5), 60, (U256::ZERO, 0)).count, 5);
        assert_eq!(as_spent(&budgets, None, 3600, (U256::ZERO, 0)).amount, u(800));
    }
}
