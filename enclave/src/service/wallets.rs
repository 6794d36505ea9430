//! Wallets (create, list, freeze), their policies, and the asset registry.

use std::sync::Arc;

use wallet_policy::{
    address::parse_address,
    registry::{chain_id, AssetInfo},
    rules::{Policy, DEFAULT_MAX_VALIDITY_SECONDS, MAX_VALIDITY_SECONDS, MIN_VALIDITY_SECONDS},
};
use wallet_proto::{gateway::v1 as gw, Reason};

use super::{
    auth::AdminAuthorized,
    parse_amount, parse_list, parse_networks, random_id,
    records::{asset_key, json, StoredPolicy, WalletRecord},
    state::WalletEntry,
    wire::{asset_proto, policy_proto, wallet_proto},
    Enclave, Failure, Result,
};
use crate::{
    keys::WalletKey,
    store::{Op, Table},
};

impl Enclave {
    pub(super) async fn create_wallet(
        &self,
        _: &AdminAuthorized,
        r: gw::CreateWalletRequest,
    ) -> Result<gw::Wallet> {
        let key = WalletKey::generate(&mut self.entropy.clone());
        let record = WalletRecord {
            id: random_id(&self.entropy, "w_"),
            address: key.address(),
            label: r.label.trim().to_owned(),
            frozen: false,
            created_at: self.clock.now().as_secs(),
        };
        self.persist(vec![
            Op::Put(Table::Keys, record.id.as_bytes().to_vec(), key.secret_bytes()),
            Op::Put(Table::Wallets, record.id.as_bytes().to_vec(), json(&record)),
        ])
        .await?;
        tracing::info!(wallet = %record.id, address = %record.address, "wallet created");
        let out = wallet_proto(&record);
        self.lock().wallets.insert(record.id.clone(), WalletEntry { record, key: Arc::new(key) });
        Ok(out)
    }

    pub(super) fn list_wallets(&self) -> gw::ListWalletsResponse {
        let inner = self.lock();
        let mut wallets: Vec<_> = inner.wallets.values().map(|w| wallet_proto(&w.record)).collect();
        wallets.sort_by_key(|w| (w.created_at, w.wallet_id.clone()));
        gw::ListWalletsResponse { wallets }
    }

    /// The kill switch. Freezing takes effect in memory at once, before it is durable and before
    /// it returns (every payment in flight re-checks it before release); unfreezing only once it
    /// is durable.
    pub(super) async fn set_frozen(
        &self,
        by: &AdminAuthorized,
        wallet_id: &str,
        frozen: bool,
    ) -> Result<gw::Wallet> {
        let mut record =
            self.lock().wallets.get(wallet_id).map(|w| w.record.clone()).ok_or_else(|| {
                Failure::not_found(format!("wallet {wallet_id:?} does not exist"))
            })?;
        record.frozen = frozen;
        let scope = super::sharing::Scope::Wallet(wallet_id.to_owned());
        let group = |f: Failure| Failure {
            message: format!("the group's shared book was not updated: {}", f.message),
            ..f
        };
        if frozen {
            if let Some(w) = self.lock().wallets.get_mut(wallet_id) {
                w.record.frozen = true;
            }
        } else {
            // A group: an unfreeze is checked against the group's book first (a newer freeze
            // there wins, and this member stays frozen).
            self.mark_shared(scope.clone(), false, by.timestamp_ms).await.map_err(group)?;
        }
        self.persist(vec![Op::Put(Table::Wallets, record.id.as_bytes().to_vec(), json(&record))])
            .await?;
        if !frozen {
            if let Some(w) = self.lock().wallets.get_mut(wallet_id) {
                w.record.frozen = false;
            }
        }
        tracing::info!(wallet = %wallet_id, frozen, "wallet freeze changed");
        if frozen {
            // A group: the other members take no more grants while it is frozen (they spend
            // what their grant has left for at most `sharing::LEASE_MS`).
            self.mark_shared(scope, true, by.timestamp_ms).await.map_err(|f| {
                let message = format!(
                    "the wallet is frozen at this enclave, but {}: retry",
                    group(f.clone()).message
                );
                Failure { message, ..f }
            })?;
        }
        Ok(wallet_proto(&record))
    }

    pub(super) async fn set_policy(
        &self,
        by: &AdminAuthorized,
        r: gw::SetPolicyRequest,
    ) -> Result<gw::Policy> {
        let p = r.policy.ok_or_else(|| Failure::bad_argument("policy is required"))?;
        let document = if p.document.trim().is_empty() {
            let max_per_payment = parse_amount(&p.max_per_payment, "max_per_payment")?;
            let networks = parse_networks(&p.networks)?;
            let assets = parse_list(&p.assets, "asset", parse_address)?;
            let max_validity_seconds = match p.max_validity_seconds {
                0 => DEFAULT_MAX_VALIDITY_SECONDS,
                s if !(MIN_VALIDITY_SECONDS..=MAX_VALIDITY_SECONDS).contains(&s) => {
                    return Err(Failure::bad_argument(format!(
                        "max_validity_seconds {s} must be between {MIN_VALIDITY_SECONDS} and {MAX_VALIDITY_SECONDS}"
                    )));
                }
                s => s,
            };
            Policy::basic_document(max_per_payment, &networks, &assets, max_validity_seconds)
        } else {
            p.document
        };
        // Parsed here, in the enclave: what is enforced is what the admin signed.
        let mut policy = Policy::parse(&document).map_err(|e| {
            Failure::invalid(Reason::InvalidPolicy, format!("policy document: {e}"))
        })?;
        policy.version = {
            let inner = self.lock();
            if !inner.wallets.contains_key(&p.wallet_id) {
                return Err(Failure::not_found(format!("wallet {:?} does not exist", p.wallet_id)));
            }
            inner.policies.get(&p.wallet_id).map_or(1, |old| old.version + 1)
        };
        let stored = StoredPolicy { version: policy.version, document, admin_ts: by.timestamp_ms };
        self.persist(vec![Op::Put(
            Table::Policies,
            p.wallet_id.as_bytes().to_vec(),
            json(&stored),
        )])
        .await?;
        tracing::info!(wallet = %p.wallet_id, version = policy.version, "policy set");
        let out = policy_proto(&p.wallet_id, &policy);
        {
            let mut inner = self.lock();
            // Shared budgets: grants taken under the old limits are not spent from any more.
            let sessions: Vec<String> = inner
                .sessions
                .values()
                .filter(|s| s.record.wallet_id == p.wallet_id)
                .map(|s| s.record.id.clone())
                .collect();
            inner.grants.retire_wallet(&p.wallet_id, &sessions);
            inner.policy_ts.insert(p.wallet_id.clone(), by.timestamp_ms);
            inner.policies.insert(p.wallet_id.clone(), policy);
        }
        // A group: members whose policy is older take no grant until they apply this one.
        self.publish_policy(&p.wallet_id, by.timestamp_ms).await.map_err(|f| Failure {
            message: format!("the policy is set at this enclave, but the group's shared book was not updated ({}): set it again", f.message),
            ..f
        })?;
        Ok(out)
    }

    pub(super) fn get_policy(&self, wallet_id: &str) -> Result<gw::Policy> {
        let inner = self.lock();
        if !inner.wallets.contains_key(wallet_id) {
            return Err(Failure::not_found(format!("wallet {wallet_id:?} does not exist")));
        }
        inner.policies.get(wallet_id).map(|p| policy_proto(wallet_id, p)).ok_or_else(|| {
            Failure::not_found(format!(
                "wallet {wallet_id} has no policy yet: every payment is denied (NO_POLICY)"
            ))
        })
    }

    pub(super) async fn add_asset(
        &self,
        _: &AdminAuthorized,
        r: gw::AddAssetRequest,
    ) -> Result<gw::Asset> {
        let a = r.asset.ok_or_else(|| Failure::bad_argument("asset is required"))?;
        let info = AssetInfo::new(
            a.network.trim(),
            a.address.trim(),
            &a.name,
            &a.version,
            a.decimals,
            &a.symbol,
        )
        .map_err(Failure::bad_argument)?;
        self.persist(vec![Op::Put(
            Table::Assets,
            asset_key(&info.network, &info.address),
            json(&info),
        )])
        .await?;
        tracing::info!(network = %info.network, asset = %info.address, "asset registered");
        let out = asset_proto(&info);
        self.lock().registry.insert(info);
        Ok(out)
    }

    pub(super) fn list_assets(&self) -> gw::ListAssetsResponse {
        let inner = self.lock();
        let mut assets: Vec<_> = inner.registry.assets.values().map(asset_proto).collect();
        assets.sort_by(|a, b| {
            (chain_id(&a.network).unwrap_or(0), &a.address)
                .cmp(&(chain_id(&b.network).unwrap_or(0), &b.address))
        });
        gw::ListAssetsResponse { assets }
    }
}
