//! The records the enclave keeps in its state store, as serialized (JSON, then sealed). Field
//! names are the on-disk format: renaming one is a migration.

use alloy_primitives::{Address, U256};
use serde::{Deserialize, Serialize};
use wallet_policy::rules::{Policy, Scope};
use zeroize::Zeroizing;

use crate::store::StoreError;

/// Serializes a record into a zeroizing buffer (records may hold keys).
pub(crate) fn json<T: Serialize>(v: &T) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(serde_json::to_vec(v).expect("records serialize infallibly. qed"))
}

/// Parses a stored record; `what` names it in the error.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Engine(format!("corrupt {what} record: {e}")))
}

/// A wallet (its key is a separate record of the key table, under the same id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WalletRecord {
    pub id: String,
    pub address: Address,
    pub label: String,
    pub frozen: bool,
    /// Unix seconds.
    pub created_at: u64,
}

/// An admin, keyed by its Ed25519 public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AdminRecord {
    pub label: String,
    /// Unix seconds.
    pub added_at: u64,
    /// Timestamp (Unix ms) of the last request accepted from this admin.
    pub last_ts: u64,
}

/// A session: what an agent's key may spend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub id: String,
    pub wallet_id: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// Token units.
    pub cap: U256,
    /// Unix seconds.
    pub expires_at: u64,
    pub revoked: bool,
    pub scope: Scope,
    /// Unix seconds.
    pub created_at: u64,
    pub label: String,
}

/// A policy as stored: the document and the version the enclave gave it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredPolicy {
    pub version: u64,
    pub document: String,
    /// The signing admin's timestamp (Unix ms) of the request that set it; 0 when stored
    /// before it was kept. A group's members compare it in the wallet's shared book.
    #[serde(default)]
    pub admin_ts: u64,
}

/// A policy as stored before policy documents: converted to the basic document when read.
#[derive(Debug, Deserialize)]
struct LegacyPolicy {
    version: u64,
    max_per_payment: U256,
    networks: Vec<String>,
    assets: Vec<Address>,
    max_validity_seconds: u64,
}

/// Parses a stored policy (either form), with the admin timestamp it was set with (0 when not
/// recorded).
pub(crate) fn load_policy_with_ts(bytes: &[u8]) -> Result<(Policy, u64), StoreError> {
    let stored = match serde_json::from_slice::<StoredPolicy>(bytes) {
        Ok(s) => s,
        Err(_) => {
            let l: LegacyPolicy = from_json("policy", bytes)?;
            StoredPolicy {
                admin_ts: 0,
                version: l.version,
                document: Policy::basic_document(
                    l.max_per_payment,
                    &l.networks,
                    &l.assets,
                    l.max_validity_seconds,
                ),
            }
        }
    };
    let mut p = Policy::parse(&stored.document)
        .map_err(|e| StoreError::Engine(format!("stored policy does not parse: {e}")))?;
    p.version = stored.version;
    Ok((p, stored.admin_ts))
}

/// Where a hold for approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HoldState {
    Pending,
    Approved,
    Denied,
    /// Signed after approval.
    Used,
}

/// A payment held for a human's approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ApprovalRecord {
    pub id: String,
    pub wallet_id: String,
    pub session_id: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub network: String,
    pub asset: Address,
    pub asset_symbol: String,
    pub pay_to: Address,
    pub amount: String,
    pub reason: String,
    pub state: HoldState,
    /// Unix ms.
    pub created_ms: u64,
    /// Unix ms. Pending: decided by then or expired. Approved: retried by then or expired.
    pub expires_ms: u64,
    /// How long a decision or a retry may take, ms.
    pub hold_ms: u64,
    pub decided_by: String,
    pub note: String,
    /// The `accepts[]` option held: the only one an approval lets the retry sign.
    #[serde(default)]
    pub accepted_index: usize,
}

impl ApprovalRecord {
    pub fn expired(&self, now_ms: u64) -> bool {
        matches!(self.state, HoldState::Pending | HoldState::Approved) && now_ms >= self.expires_ms
    }
    pub fn state_name(&self, now_ms: u64) -> &'static str {
        if self.expired(now_ms) {
            return "expired";
        }
        match self.state {
            HoldState::Pending => "pending",
            HoldState::Approved => "approved",
            HoldState::Denied => "denied",
            HoldState::Used => "used",
        }
    }
}

/// Key of an asset in the registry table.
pub(crate) fn asset_key(network: &str, address: &Address) -> Vec<u8> {
    format!("{network}/{address:#x}").into_bytes()
}
