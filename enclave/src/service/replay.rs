//! The ledger the spend journal makes: session totals, window histories, the idempotency index,
//! the spend counters and the newest records for the activity list — what start-up replays, and
//! what a ledger snapshot ([`crate::snapshot`]) keeps so that start-up replays only the records
//! after it.
//!
//! A [`Ledger`] is a pure function of the journal's records: start-up and the snapshotter build
//! it with the same [`Ledger::visit`], so a snapshot plus the records after it gives exactly the
//! ledger a replay from the first record gives (up to idempotency keys past their TTL, which a
//! snapshot drops as a running enclave does). A snapshot is bound to the journal position it
//! covers (record number, byte offset and chain hash): the records after it open only at their
//! own numbers, and the chain continued from its hash is what the commit head and the anchor
//! check.

use std::collections::{HashMap, VecDeque};

use alloy_primitives::{Address, U256};
use serde::{Deserialize, Serialize};
use wallet_policy::window::{History, WalletHistory};
use wallet_proto::{gateway::v1 as gw, Reason};

use super::{
    idempotency::{IdemEntry, IdemKey, Index, Stage},
    ledger::{Posted, Recovered},
};
use crate::{
    audit,
    journal::{JournalStart, RecordRef},
    platform::UnixMillis,
};

/// How many of the newest journal records the ledger keeps for the activity list: as many as
/// the list holds (`agent::MAX_ACTIVITY_RECORDS`).
pub(crate) const RECENT: usize = super::agent::MAX_ACTIVITY_RECORDS;

/// A journal record as the activity list needs it.
#[derive(Debug, Clone)]
pub(crate) enum Recent {
    /// A posted spend, with its list entry (outcome, reason and approval left to fill).
    Posted { session_id: String, idempotency_key: String, shown: Box<gw::PaymentRecord> },
    /// A withheld one.
    Withheld { session_id: String, idempotency_key: String, reason: Reason },
}

/// The ledger after some prefix of the spend journal (see the module docs).
#[derive(Debug, Default)]
pub struct Ledger {
    /// Where the journal continues after what this ledger was loaded from (a snapshot's
    /// position; the journal's start without one). Records visited since are not counted here.
    pub(crate) start: JournalStart,
    /// Where the audit log's verification starts (from a snapshot; `None`: from its first
    /// record).
    pub(crate) audit: Option<audit::Start>,
    /// Records visited since `start`.
    pub(crate) visited: u64,
    /// Per session: total charged (token units) and window history.
    pub(crate) sessions: HashMap<String, (U256, History)>,
    /// Per wallet: window histories.
    pub(crate) wallets: HashMap<String, WalletHistory>,
    /// Settled idempotency keys (posted or withheld).
    pub(crate) idem: Index,
    /// Spends released: posted, less withheld.
    pub(crate) released: u64,
    /// The latest time a record was written (enclave clock).
    pub(crate) last_at: UnixMillis,
    /// The highest spend sequence number.
    pub(crate) max_seq: u64,
    /// The newest [`RECENT`] records, oldest first.
    pub(crate) recent: VecDeque<Recent>,
}

impl Ledger {
    /// An empty ledger that continues the journal at `start`.
    #[must_use]
    pub fn at(start: JournalStart) -> Self {
        Self { start, ..Self::default() }
    }

    /// Takes the next record of the journal (read at `at`).
    ///
    /// # Errors
    /// A sentence, for a record that does not parse or a total that overflows.
    pub fn visit(&mut self, at: RecordRef, bytes: &[u8]) -> Result<(), String> {
        let r = super::ledger::recovered(at, bytes).map_err(|e| e.to_string())?;
        self.apply(r)?;
        self.visited += 1;
        Ok(())
    }

    fn apply(&mut self, r: Recovered) -> Result<(), String> {
        let recent = match r {
            Recovered::Posted {
                posted,
                seq,
                session_id,
                pay_to,
                charge,
                idempotency_key,
                request_hash,
                shown,
            } => {
                self.max_seq = self.max_seq.max(seq);
                self.released += 1;
                self.last_at = self.last_at.max(posted.decided);
                let at_s = posted.decided.as_secs();
                let session = self.sessions.entry(session_id.clone()).or_default();
                session.0 = session.0.checked_add(charge).ok_or("spend total overflows")?;
                session.1.record(at_s, charge);
                self.wallets
                    .entry(posted.wallet_id.clone())
                    .or_default()
                    .record(pay_to, at_s, charge);
                let recent = Recent::Posted {
                    session_id: session_id.clone(),
                    idempotency_key: idempotency_key.clone(),
                    shown,
                };
                self.idem.settle(
                    (session_id, idempotency_key),
                    IdemEntry { hash: request_hash, stage: Stage::Posted(posted) },
                );
                recent
            }
            Recovered::Withheld { session_id, idempotency_key, request_hash, reason, at } => {
                self.released = self.released.saturating_sub(1);
                self.last_at = self.last_at.max(at);
                let recent = Recent::Withheld {
                    session_id: session_id.clone(),
                    idempotency_key: idempotency_key.clone(),
                    reason,
                };
                self.idem.settle(
                    (session_id, idempotency_key),
                    IdemEntry { hash: request_hash, stage: Stage::Withheld { reason, at } },
                );
                recent
            }
        };
        self.recent.push_back(recent);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        Ok(())
    }

    /// Serializes the ledger as a snapshot at `start` (the position after the last record it
    /// covers), with the audit log's verification starting at `audit`. Idempotency keys
    /// settled `ttl_ms` or more before the newest record are left out; list entries are kept
    /// for the newest records only (the rest are read back when needed).
    pub(crate) fn saved(
        &self,
        start: JournalStart,
        audit: Option<&audit::Start>,
        ttl_ms: u64,
    ) -> Vec<u8> {
        let idem = self
            .idem
            .settled()
            .filter(|(_, e)| e.settled_at().is_some_and(|at| at.plus_millis(ttl_ms) > self.last_at))
            .filter_map(|(key, e)| SavedIdem::of(key, e))
            .collect();
        let mut sessions: Vec<(String, U256, Slots)> = self
            .sessions
            .iter()
            .map(|(id, (spent, h))| (id.clone(), *spent, h.slots().collect()))
            .collect();
        sessions.sort_by(|x, y| x.0.cmp(&y.0));
        let mut wallets: Vec<SavedWallet> = self
            .wallets
            .iter()
            .map(|(id, w)| {
                let mut payees: Vec<(Address, Slots)> =
                    w.payees.iter().map(|(a, h)| (*a, h.slots().collect())).collect();
                payees.sort_by_key(|(a, _)| *a);
                SavedWallet { id: id.clone(), all: w.all.slots().collect(), payees }
            })
            .collect();
        wallets.sort_by(|x, y| x.id.cmp(&y.id));
        // Sorted: the same ledger always gives the same bytes.
        let saved = Saved {
            version: SNAPSHOT_VERSION,
            journal: SavedStart::of(&start),
            audit: audit.map(SavedAudit::of),
            released: self.released,
            last_at_ms: self.last_at.as_millis(),
            max_seq: self.max_seq,
            sessions,
            wallets,
            idem,
            recent: self.recent.iter().map(SavedRecent::of).collect(),
        };
        serde_json::to_vec(&saved).unwrap_or_default()
    }

    /// The ledger a snapshot holds ([`Self::saved`]).
    ///
    /// # Errors
    /// A sentence, for bytes that are not a snapshot of this version.
    pub(crate) fn from_saved(bytes: &[u8]) -> Result<Self, String> {
        let s: Saved = serde_json::from_slice(bytes).map_err(|e| format!("snapshot: {e}"))?;
        if s.version != SNAPSHOT_VERSION {
            return Err(format!(
                "snapshot version {} (this build reads {SNAPSHOT_VERSION})",
                s.version
            ));
        }
        let mut idem = Index::default();
        for i in s.idem {
            let (key, entry) = i.entry()?;
            idem.settle(key, entry);
        }
        Ok(Self {
            start: s.journal.start()?,
            audit: s.audit.map(SavedAudit::start).transpose()?,
            visited: 0,
            sessions: s
                .sessions
                .into_iter()
                .map(|(id, spent, slots)| (id, (spent, History::from_slots(slots))))
                .collect(),
            wallets: s
                .wallets
                .into_iter()
                .map(|w| {
                    let history = WalletHistory {
                        all: History::from_slots(w.all),
                        payees: w
                            .payees
                            .into_iter()
                            .map(|(a, slots)| (a, History::from_slots(slots)))
                            .collect(),
                    };
                    (w.id, history)
                })
                .collect(),
            idem,
            released: s.released,
            last_at: UnixMillis(s.last_at_ms),
            max_seq: s.max_seq,
            recent: s.recent.into_iter().map(SavedRecent::recent).collect::<Result<_, _>>()?,
        })
    }
}

/// Version of the snapshot's content.
const SNAPSHOT_VERSION: u32 = 1;

type Slots = Vec<(u64, U256, u64)>;

/// A snapshot's content (JSON inside the seal).
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    journal: SavedStart,
    audit: Option<SavedAudit>,
    released: u64,
    last_at_ms: u64,
    max_seq: u64,
    sessions: Vec<(String, U256, Slots)>,
    wallets: Vec<SavedWallet>,
    idem: Vec<SavedIdem>,
    recent: Vec<SavedRecent>,
}

#[derive(Serialize, Deserialize)]
struct SavedStart {
    index: u64,
    offset: u64,
    chain: String,
}

impl SavedStart {
    fn of(s: &JournalStart) -> Self {
        Self { index: s.index, offset: s.offset, chain: hex::encode(s.chain) }
    }
    fn start(self) -> Result<JournalStart, String> {
        Ok(JournalStart { index: self.index, offset: self.offset, chain: hash(&self.chain)? })
    }
}

#[derive(Serialize, Deserialize)]
struct SavedAudit {
    count: u64,
    offset: u64,
    prev: String,
    /// Every read checkpoint up to `count`: `(byte offset, hex hash before it)`.
    marks: Vec<(u64, String)>,
}

impl SavedAudit {
    fn of(a: &audit::Start) -> Self {
        Self {
            count: a.count,
            offset: a.offset,
            prev: hex::encode(a.prev),
            marks: a.marks.iter().map(|(o, h)| (*o, hex::encode(h))).collect(),
        }
    }
    fn start(self) -> Result<audit::Start, String> {
        Ok(audit::Start {
            count: self.count,
            offset: self.offset,
            prev: hash(&self.prev)?,
            marks: self
                .marks
                .into_iter()
                .map(|(o, h)| Ok((o, hash(&h)?)))
                .collect::<Result<_, String>>()?,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct SavedWallet {
    id: String,
    all: Slots,
    payees: Vec<(Address, Slots)>,
}

/// A settled idempotency key: posted (`record`: index, offset, length; `wallet`; `at_ms`) or
/// withheld (`reason`; `at_ms`).
#[derive(Serialize, Deserialize)]
struct SavedIdem {
    session: String,
    key: String,
    hash: String,
    at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<(u64, u64, u32)>,
    /// Hex SHA-256 of the posted record's plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wallet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl SavedIdem {
    fn of(key: &IdemKey, e: &IdemEntry) -> Option<Self> {
        let (session, k) = key.clone();
        let hash = hex::encode(e.hash);
        match &e.stage {
            Stage::Posted(p) => Some(Self {
                session,
                key: k,
                hash,
                at_ms: p.decided.as_millis(),
                record: Some((p.record.index, p.record.offset, p.record.len)),
                digest: Some(hex::encode(p.digest)),
                wallet: Some(p.wallet_id.clone()),
                reason: None,
            }),
            Stage::Withheld { reason, at } => Some(Self {
                session,
                key: k,
                hash,
                at_ms: at.as_millis(),
                record: None,
                digest: None,
                wallet: None,
                reason: Some(reason.as_str().to_owned()),
            }),
            // Only settled stages are in a ledger.
            Stage::Reserved { .. } | Stage::Held { .. } | Stage::Failed { .. } => None,
        }
    }

    fn entry(self) -> Result<(IdemKey, IdemEntry), String> {
        let at = UnixMillis(self.at_ms);
        let stage = match (self.record, self.digest, self.wallet, self.reason) {
            (Some((index, offset, len)), Some(digest), Some(wallet_id), None) => {
                Stage::Posted(Posted {
                    record: RecordRef { index, offset, len },
                    digest: hash(&digest)?,
                    wallet_id,
                    decided: at,
                })
            }
            (None, None, None, Some(reason)) => Stage::Withheld {
                reason: Reason::from_code(&reason).unwrap_or(Reason::Internal),
                at,
            },
            _ => return Err("snapshot: an idempotency entry is neither posted nor withheld".into()),
        };
        Ok(((self.session, self.key), IdemEntry { hash: hash(&self.hash)?, stage }))
    }
}

/// A list entry as kept: the fields of `gw::PaymentRecord` a spend record gives.
#[derive(Serialize, Deserialize)]
struct SavedShown {
    at_ms: u64,
    amount: String,
    amount_human: String,
    asset: String,
    asset_symbol: String,
    network: String,
    pay_to: String,
}

#[derive(Serialize, Deserialize)]
struct SavedRecent {
    session: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shown: Option<SavedShown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl SavedRecent {
    fn of(r: &Recent) -> Self {
        match r {
            Recent::Posted { session_id, idempotency_key, shown: s } => Self {
                session: session_id.clone(),
                key: idempotency_key.clone(),
                shown: Some(SavedShown {
                    at_ms: s.at_ms,
                    amount: s.amount.clone(),
                    amount_human: s.amount_human.clone(),
                    asset: s.asset.clone(),
                    asset_symbol: s.asset_symbol.clone(),
                    network: s.network.clone(),
                    pay_to: s.pay_to.clone(),
                }),
                reason: None,
            },
            Recent::Withheld { session_id, idempotency_key, reason } => Self {
                session: session_id.clone(),
                key: idempotency_key.clone(),
                shown: None,
                reason: Some(reason.as_str().to_owned()),
            },
        }
    }

    fn recent(self) -> Result<Recent, String> {
        Ok(match (self.shown, self.reason) {
            (Some(s), None) => Recent::Posted {
                session_id: self.session,
                idempotency_key: self.key,
                shown: Box::new(gw::PaymentRecord {
                    at_ms: s.at_ms,
                    amount: s.amount,
                    amount_human: s.amount_human,
                    asset: s.asset,
                    asset_symbol: s.asset_symbol,
                    network: s.network,
                    pay_to: s.pay_to,
                    ..Default::default()
                }),
            },
            (None, Some(reason)) => Recent::Withheld {
                session_id: self.session,
                idempotency_key: self.key,
                reason: Reason::from_code(&reason).unwrap_or(Reason::Internal),
            },
            _ => return Err("snapshot: a recent record is neither posted nor withheld".into()),
        })
    }
}

fn hash(h: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).map_err(|e| format!("snapshot: a hash: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spend record as the journal holds it.
    fn spend(i: u64, session: &str, key: &str, payee: u8, at_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "kind": "spend",
            "seq": i + 1,
            "session_id": session,
            "wallet_id": if payee.is_multiple_of(2) { "w_1" } else { "w_2" },
            "charge": format!("{:#x}", 10_000 + i),
            "amount": format!("{:#x}", 10_000 + i),
            "network": "eip155:84532",
            "asset": "0x036cbd53842c5426634e7929541ec2318f3dcf7e",
            "pay_to": format!("0x{}", hex::encode([payee; 20])),
            "valid_before": 1_800_000_060u64,
            "at_ms": at_ms,
            "idempotency_key": key,
            "request_hash": hex::encode([u8::try_from(i % 256).unwrap(); 32]),
            "payload_json": r#"{"x402Version":2,"payload":{},"accepted":{}}"#,
            "accepted_index": 0,
            "charged": "0.01",
            "asset_symbol": "USDC",
            "session_spent": "0.01",
            "session_remaining": "0.99",
            "payer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        }))
        .unwrap()
    }

    fn withheld(key: &str, session: &str, at_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "kind": "withheld",
            "session_id": session,
            "idempotency_key": key,
            "request_hash": hex::encode([7u8; 32]),
            "reason": "SESSION_REVOKED",
            "at_ms": at_ms,
        }))
        .unwrap()
    }

    /// A journal of spends over three sessions, two wallets and days of time, with withheld
    /// ones and keys used twice.
    fn journal() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in 0..400u64 {
            let session = ["s_a", "s_b", "s_c"][usize::try_from(i % 3).unwrap()];
            let at = 1_800_000_000_000 + i * 997_000;
            out.push(spend(i, session, &format!("k{}", i % 350), u8::try_from(i % 5).unwrap(), at));
            if i.is_multiple_of(37) {
                out.push(withheld(&format!("k{}", i % 350), session, at + 1));
            }
        }
        out
    }

    fn visit_all(ledger: &mut Ledger, records: &[Vec<u8>], from: u64) {
        for (i, r) in records.iter().enumerate() {
            let index = from + i as u64;
            ledger.visit(RecordRef { index, offset: index * 1_000, len: 900 }, r).unwrap();
        }
    }

    /// A snapshot at any record, read back and continued with the records after it, is the
    /// ledger a replay of every record gives: the same bytes, and the same window totals.
    #[test]
    fn a_snapshot_and_the_records_after_it_are_the_whole_replay() {
        let records = journal();
        let n = records.len() as u64;
        let end = JournalStart { index: n, offset: n * 1_000, chain: [9; 32] };
        let mut whole = Ledger::default();
        visit_all(&mut whole, &records, 0);
        let expected = whole.saved(end, None, u64::MAX);
        for k in [0, 1, 36, 37, 38, 200, records.len() - 1, records.len()] {
            let mut first = Ledger::default();
            visit_all(&mut first, &records[..k], 0);
            let at = JournalStart { index: k as u64, offset: k as u64 * 1_000, chain: [1; 32] };
            let mut resumed = Ledger::from_saved(&first.saved(at, None, u64::MAX)).unwrap();
            assert_eq!(resumed.start, at);
            visit_all(&mut resumed, &records[k..], k as u64);
            assert_eq!(
                String::from_utf8(resumed.saved(end, None, u64::MAX)).unwrap(),
                String::from_utf8(expected.clone()).unwrap(),
                "snapshot at {k}"
            );
            assert_eq!(resumed.released, whole.released);
            let now = 1_800_000_000 + 400 * 997;
            for s in ["s_a", "s_b", "s_c"] {
                let (x, y) = (
                    &mut resumed.sessions.get_mut(s).unwrap().1,
                    &mut whole.sessions.get_mut(s).unwrap().1,
                );
                assert_eq!(x.totals(86_400, now), y.totals(86_400, now), "{s} at {k}");
            }
        }
    }

    /// Keys settled a TTL before the newest record are left out of a snapshot; the others, and
    /// the audit start, come back as they were.
    #[test]
    fn a_snapshot_drops_keys_past_their_ttl_and_keeps_the_rest() {
        let records = journal();
        let mut l = Ledger::default();
        visit_all(&mut l, &records, 0);
        let audit = audit::Start {
            count: 1024,
            offset: 99,
            prev: [3; 32],
            marks: vec![(0, [0; 32]), (99, [3; 32])],
        };
        let ttl_ms = 3_600_000;
        let back =
            Ledger::from_saved(&l.saved(JournalStart::default(), Some(&audit), ttl_ms)).unwrap();
        assert_eq!(back.audit, Some(audit));
        let kept: Vec<_> = back.idem.settled().map(|(k, _)| k.clone()).collect();
        let expected: Vec<_> = l
            .idem
            .settled()
            .filter(|(_, e)| e.settled_at().unwrap().plus_millis(ttl_ms) > l.last_at)
            .map(|(k, _)| k.clone())
            .collect();
        assert!(!kept.is_empty() && kept.len() < 10, "{}", kept.len());
        assert_eq!(kept, expected);
        assert!(Ledger::from_saved(b"{}").is_err());
        assert!(Ledger::from_saved(&bumped(l.saved(JournalStart::default(), None, 0))).is_err());
    }

    /// A snapshot of another version's content.
    fn bumped(saved: Vec<u8>) -> Vec<u8> {
        let text = String::from_utf8(saved).unwrap();
        text.replacen("\"version\":1", "\"version\":2", 1).into_bytes()
    }
}
