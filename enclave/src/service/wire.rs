//! Records in their `wallet.gateway.v1` form, as answers carry them.

use wallet_policy::{
    amount::format_units,
    document::AssetMatch,
    registry::AssetInfo,
    rules::{self, Policy},
};
use wallet_proto::gateway::v1 as gw;

use super::{
    records::{AdminRecord, ApprovalRecord, WalletRecord},
    state::SessionEntry,
};

pub(super) fn approval_proto(a: &ApprovalRecord, now_ms: u64) -> gw::Approval {
    gw::Approval {
        approval_id: a.id.clone(),
        wallet_id: a.wallet_id.clone(),
        session_id: a.session_id.clone(),
        network: a.network.clone(),
        asset: a.asset.to_checksum(None),
        asset_symbol: a.asset_symbol.clone(),
        pay_to: a.pay_to.to_checksum(None),
        amount: a.amount.clone(),
        reason: a.reason.clone(),
        state: a.state_name(now_ms).to_owned(),
        created_at_ms: a.created_ms,
        expires_at_ms: a.expires_ms,
        decided_by: a.decided_by.clone(),
        note: a.note.clone(),
        idempotency_key: a.idempotency_key.clone(),
    }
}

pub(super) fn admin_proto(pk: &[u8; 32], r: &AdminRecord) -> gw::Admin {
    gw::Admin { public_key: pk.to_vec(), label: r.label.clone(), added_at: r.added_at }
}

pub(super) fn wallet_proto(w: &WalletRecord) -> gw::Wallet {
    gw::Wallet {
        wallet_id: w.id.clone(),
        address: w.address.to_checksum(None),
        label: w.label.clone(),
        frozen: w.frozen,
        created_at: w.created_at,
    }
}

pub(super) fn policy_proto(wallet_id: &str, p: &Policy) -> gw::Policy {
    // The basic fields summarise the document where it has one clear value.
    let allowing: Vec<_> = p.rules.iter().filter(|r| r.action != rules::Action::Deny).collect();
    let (networks, assets) = match allowing.as_slice() {
        [only] => (
            only.networks.clone(),
            only.assets
                .iter()
                .map(|a| match a {
                    AssetMatch::Address(a) => a.to_checksum(None),
                    AssetMatch::Symbol(s) => s.clone(),
                })
                .collect(),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    gw::Policy {
        wallet_id: wallet_id.to_owned(),
        version: p.version,
        max_per_payment: p.wallet.max_per_payment.map(format_units).unwrap_or_default(),
        networks,
        assets,
        max_validity_seconds: p.wallet.max_validity_seconds,
        document: p.source.clone(),
    }
}

pub(super) fn asset_proto(a: &AssetInfo) -> gw::Asset {
    gw::Asset {
        network: a.network.clone(),
        address: a.address.to_checksum(None),
        name: a.name.clone(),
        version: a.version.clone(),
        decimals: u32::from(a.decimals),
        symbol: a.symbol.clone(),
    }
}

pub(super) fn session_proto(s: &SessionEntry) -> gw::Session {
    let r = &s.record;
    gw::Session {
        session_id: r.id.clone(),
        wallet_id: r.wallet_id.clone(),
        public_key: s.key.to_bytes().to_vec(),
        cap: format_units(r.cap),
        spent: format_units(s.spent),
        expires_at: r.expires_at,
        revoked: r.revoked,
        networks: r.scope.networks.clone(),
        assets: r.scope.assets.iter().map(|a| a.to_checksum(None)).collect(),
        payees: r.scope.payees.iter().map(|a| a.to_checksum(None)).collect(),
        created_at: r.created_at,
        label: r.label.clone(),
    }
}
