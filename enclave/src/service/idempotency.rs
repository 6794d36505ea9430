//! The idempotency index (which stage each `(session, idempotency key)` is at) and the replay
//! cache of request nonces.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::watch;
use wallet_proto::{auth::FRESHNESS_WINDOW_MS, Reason};

use super::ledger::Posted;
use crate::platform::UnixMillis;

/// Default time an idempotency key is remembered: 24 hours.
pub const DEFAULT_IDEMPOTENCY_TTL_SECONDS: u64 = 24 * 3600;

/// `(session id, idempotency key)`.
pub(crate) type IdemKey = (String, String);

/// Where the payment under an idempotency key is in its life (see [`super::ledger`]).
#[derive(Debug)]
pub(crate) enum Stage {
    /// Reserved: being signed or made durable; `done` flips when it settles.
    Reserved { done: watch::Receiver<bool> },
    /// Posted: durable; a retry gets the same payload, read back from the spend log.
    Posted(Posted),
    /// Posted, but revoked or frozen before release: never released.
    Withheld { reason: Reason, at: UnixMillis },
    /// Failed after the reservation (the spend may be recorded): the key cannot be reused.
    Failed { at: UnixMillis },
    /// Held for a human's approval (see `Inner::approvals`).
    Held { approval_id: String },
}

/// An idempotency entry: the request it was used for, and its stage.
#[derive(Debug)]
pub(crate) struct IdemEntry {
    /// Hash of the request (header bytes and preferences) first used with the key.
    pub hash: [u8; 32],
    pub stage: Stage,
}

impl IdemEntry {
    /// When a settled entry was decided (`None` while reserved or held).
    pub(crate) fn settled_at(&self) -> Option<UnixMillis> {
        match &self.stage {
            Stage::Reserved { .. } | Stage::Held { .. } => None,
            Stage::Posted(posted) => Some(posted.decided),
            Stage::Withheld { at, .. } | Stage::Failed { at } => Some(*at),
        }
    }
}

/// The index, with the order keys settled in (to forget them after the TTL in O(1) each).
#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: HashMap<IdemKey, IdemEntry>,
    order: VecDeque<(UnixMillis, IdemKey)>,
}

impl Index {
    pub fn get(&self, key: &IdemKey) -> Option<&IdemEntry> {
        self.entries.get(key)
    }

    /// Sets an entry that has not settled (reserved or held).
    pub fn start(&mut self, key: IdemKey, entry: IdemEntry) {
        self.entries.insert(key, entry);
    }

    /// Records a settled entry (and when, to forget it after the TTL).
    pub fn settle(&mut self, key: IdemKey, entry: IdemEntry) {
        if let Some(at) = entry.settled_at() {
            self.order.push_back((at, key.clone()));
        }
        self.entries.insert(key, entry);
    }

    /// Removes a held entry whose hold could not be made durable.
    pub fn remove_hold(&mut self, key: &IdemKey, approval_id: &str) {
        if matches!(self.entries.get(key), Some(IdemEntry { stage: Stage::Held { approval_id: a }, .. }) if a == approval_id)
        {
            self.entries.remove(key);
        }
    }

    /// The settled entries in the order they settled (a key settled twice is given at its
    /// latest place).
    pub fn settled(&self) -> impl Iterator<Item = (&IdemKey, &IdemEntry)> {
        self.order.iter().filter_map(|(at, key)| {
            self.entries.get_key_value(key).filter(|(_, e)| e.settled_at() == Some(*at))
        })
    }

    /// The settled entries, taken, in the order they settled.
    pub fn into_settled(mut self) -> impl Iterator<Item = (IdemKey, IdemEntry)> {
        std::mem::take(&mut self.order).into_iter().filter_map(move |(at, key)| {
            match self.entries.get(&key).and_then(IdemEntry::settled_at) {
                Some(t) if t == at => self.entries.remove_entry(&key),
                _ => None,
            }
        })
    }

    /// Forgets settled keys older than `ttl_ms` (O(1) per settled key).
    pub fn prune(&mut self, now: UnixMillis, ttl_ms: u64) {
        while self.order.front().is_some_and(|(at, _)| at.plus_millis(ttl_ms) <= now) {
            if let Some((at, key)) = self.order.pop_front() {
                // Only if the key was not settled again since (a newer entry has a later time).
                if self.entries.get(&key).and_then(IdemEntry::settled_at) == Some(at) {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

/// Request nonces seen within the freshness window, and the same in expiry order (pruned from
/// the front in O(1) per request).
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    seen: HashSet<(String, Vec<u8>)>,
    order: VecDeque<(UnixMillis, (String, Vec<u8>))>,
}

impl ReplayCache {
    /// Records `(session, nonce)`; `false` if it was already seen (a replay).
    pub fn first_use(&mut self, key: (String, Vec<u8>), now: UnixMillis) -> bool {
        // A request is accepted until `timestamp + window`, and `timestamp <= now + window`.
        while self.order.front().is_some_and(|(exp, _)| *exp <= now) {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains(&key) {
            return false;
        }
        self.seen.insert(key.clone());
        self.order.push_back((now.plus_millis(2 * FRESHNESS_WINDOW_MS), key));
        true
    }
}
