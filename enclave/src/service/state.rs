//! The enclave's state in memory, and how it is rebuilt at start-up from the state store and the
//! spend log.

use std::{collections::HashMap, sync::Arc};

use alloy_primitives::{Address, B256, U256};
use ed25519_dalek::VerifyingKey;
use wallet_policy::{
    registry::{default_assets, AssetInfo},
    rules::{AssetLookup, Policy},
    window::{History, WalletHistory},
};

use super::{
    idempotency::{IdemEntry, Index, ReplayCache, Stage, DEFAULT_IDEMPOTENCY_TTL_SECONDS},
    records::{
        asset_key, from_json, json, AdminRecord, ApprovalRecord, SessionRecord, WalletRecord,
    },
    replay::Ledger,
    session_key,
};
use crate::{
    keys::WalletKey,
    platform::{StateStore, UnixMillis},
    store::{Op, StoreError, Table},
};

/// The asset registry with each asset's EIP-712 domain separator, computed once.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub assets: HashMap<(String, Address), AssetInfo>,
    pub domains: HashMap<(String, Address), B256>,
}

impl Registry {
    pub fn insert(&mut self, a: AssetInfo) {
        let k = (a.network.clone(), a.address);
        self.domains.insert(k.clone(), a.domain_separator());
        self.assets.insert(k, a);
    }
}

impl AssetLookup for Registry {
    fn lookup(&self, network: &str, asset: &Address) -> Option<&AssetInfo> {
        self.assets.get(&(network.to_owned(), *asset))
    }
}

/// A wallet and its key.
#[derive(Debug)]
pub(crate) struct WalletEntry {
    pub record: WalletRecord,
    pub key: Arc<WalletKey>,
}

/// A session, its key and what it has spent.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub record: SessionRecord,
    pub key: VerifyingKey,
    /// Token units charged so far (posted and reserved).
    pub spent: U256,
    /// The session's spends, for its time-window budgets and rate limit.
    pub history: History,
}

/// Everything behind the state lock.
#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub admins: HashMap<[u8; 32], AdminRecord>,
    pub wallets: HashMap<String, WalletEntry>,
    pub policies: HashMap<String, Policy>,
    pub registry: Registry,
    pub kyt: super::kyt::KytList,
    /// The results of the last KYT imports applied, the newest last (an id among them answers a
    /// repeated commit).
    pub kyt_imports: Vec<super::kyt::LastImport>,
    pub sessions: HashMap<String, SessionEntry>,
    /// Each wallet's spends, for its time-window budgets, payee caps and rate limit.
    pub wallet_history: HashMap<String, WalletHistory>,
    /// Payments held for approval, by id.
    pub approvals: HashMap<String, ApprovalRecord>,
    pub idem: Index,
    pub replay: ReplayCache,
    /// This member's grants of shared budgets (a group member only; see `sharing`).
    pub grants: super::sharing::Grants,
    /// The admin timestamp (Unix ms) of each wallet's policy in force (0: not recorded).
    pub policy_ts: HashMap<String, u64>,
}

/// What the spend log showed at start-up.
#[derive(Debug, Default)]
pub(crate) struct LedgerSummary {
    /// Next spend sequence number.
    pub next_seq: u64,
    /// Spends released (posted and not withheld).
    pub released: u64,
    /// The latest time a spend-log record was written (enclave clock).
    pub last_at: UnixMillis,
}

impl Inner {
    /// Loads the state store (initializing a fresh one with the default asset registry).
    pub async fn load(store: &dyn StateStore, now: UnixMillis) -> Result<Self, StoreError> {
        let mut inner = Self::default();
        // A fresh store gets the default registry. (The marker is not covered by the state
        // digest, so a store that already has assets is taken as initialized whatever the
        // marker says: deleting it must not put the defaults back over an admin's changes.)
        if store.get(Table::Meta, b"initialized")?.is_none()
            && store.scan(Table::Assets)?.is_empty()
        {
            let mut ops: Vec<Op> = default_assets()
                .into_iter()
                .map(|a| Op::Put(Table::Assets, asset_key(&a.network, &a.address), json(&a)))
                .collect();
            ops.push(Op::Put(Table::Meta, b"initialized".to_vec(), b"1".to_vec().into()));
            store.apply(ops)?;
            store.sync().await?;
        }
        for (_, v) in store.scan(Table::Assets)? {
            inner.registry.insert(from_json("asset", &v)?);
        }
        for (k, v) in store.scan(Table::Admins)? {
            if let Ok(pk) = <[u8; 32]>::try_from(k.as_slice()) {
                inner.admins.insert(pk, from_json("admin", &v)?);
            }
        }
        for (k, v) in store.scan(Table::Wallets)? {
            let record: WalletRecord = from_json("wallet", &v)?;
            let secret = store
                .get(Table::Keys, &k)?
                .ok_or_else(|| StoreError::Engine(format!("wallet {} has no key", record.id)))?;
            let key =
                WalletKey::from_bytes(&secret).map_err(|e| StoreError::Engine(e.to_string()))?;
            if key.address() != record.address {
                return Err(StoreError::Engine(format!(
                    "wallet {} key does not match its address",
                    record.id
                )));
            }
            inner.wallets.insert(record.id.clone(), WalletEntry { record, key: Arc::new(key) });
        }
        for (k, v) in store.scan(Table::Policies)? {
            let wallet = String::from_utf8_lossy(&k).into_owned();
            let (policy, admin_ts) = super::records::load_policy_with_ts(&v)?;
            inner.policy_ts.insert(wallet.clone(), admin_ts);
            inner.policies.insert(wallet, policy);
        }
        let kyt = super::kyt::load(store.scan(Table::Kyt)?)?;
        if !kyt.migration.is_empty() {
            // A store of the per-address layout: moved to buckets once, in one batch.
            tracing::info!(entries = kyt.list.len(), "moving the KYT list to the bucketed layout");
            store.apply(kyt.migration)?;
            store.sync().await?;
        }
        inner.kyt = kyt.list;
        inner.kyt_imports = kyt.imports;
        for (_, v) in store.scan(Table::Sessions)? {
            let record: SessionRecord = from_json("session", &v)?;
            let key = session_key(&record.public_key).map_err(|e| StoreError::Engine(e.message))?;
            inner.sessions.insert(
                record.id.clone(),
                SessionEntry { record, key, spent: U256::ZERO, history: History::new() },
            );
        }
        // Holds for approval; a retry of a held request finds its hold by idempotency key.
        let mut stale = Vec::new();
        for (k, v) in store.scan(Table::Approvals)? {
            let a: ApprovalRecord = from_json("approval", &v)?;
            // Settled holds are forgotten a day after they stopped mattering.
            if a.expires_ms.saturating_add(DEFAULT_IDEMPOTENCY_TTL_SECONDS * 1000)
                <= now.as_millis()
            {
                stale.push(Op::Delete(Table::Approvals, k));
                continue;
            }
            let hash = super::ledger::hash_of(&a.request_hash);
            inner.idem.start(
                (a.session_id.clone(), a.idempotency_key.clone()),
                IdemEntry { hash, stage: Stage::Held { approval_id: a.id.clone() } },
            );
            inner.approvals.insert(a.id.clone(), a);
        }
        if !stale.is_empty() {
            store.apply(stale)?;
        }
        Ok(inner)
    }

    /// Takes the ledger the spend journal made (a snapshot and the records after it): session
    /// totals and window histories of the sessions in the state, wallet histories and the
    /// settled idempotency keys (over the holds loaded from the state).
    pub fn load_ledger(&mut self, ledger: Ledger) -> LedgerSummary {
        let Ledger { sessions, wallets, idem, released, last_at, max_seq, .. } = ledger;
        for (id, (spent, history)) in sessions {
            if let Some(sess) = self.sessions.get_mut(&id) {
                sess.spent = spent;
                sess.history = history;
            }
        }
        self.wallet_history = wallets;
        for (key, entry) in idem.into_settled() {
            self.idem.settle(key, entry);
        }
        LedgerSummary { next_seq: max_seq + 1, released, last_at }
    }
}
