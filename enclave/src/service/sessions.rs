//! Sessions: issue (an agent's key and what it may spend), list, revoke.

use alloy_primitives::U256;
use wallet_policy::{address::parse_address, rules::Scope, window::History};
use wallet_proto::gateway::v1 as gw;

use super::{
    auth::AdminAuthorized,
    parse_amount, parse_list, parse_networks, random_id,
    records::{json, SessionRecord},
    session_key,
    state::SessionEntry,
    wire::session_proto,
    Enclave, Failure, Result,
};
use crate::store::{Op, Table};

/// Longest session lifetime an admin may grant: one year (366 days), in seconds.
pub const MAX_SESSION_TTL_SECONDS: u64 = 366 * 24 * 3600;

impl Enclave {
    pub(super) async fn issue_session(
        &self,
        _: &AdminAuthorized,
        r: gw::IssueSessionRequest,
    ) -> Result<gw::Session> {
        let public_key = hex::encode(&r.public_key);
        session_key(&public_key)?;
        let cap = parse_amount(&r.cap, "cap")?;
        if r.ttl_seconds == 0 || r.ttl_seconds > MAX_SESSION_TTL_SECONDS {
            return Err(Failure::bad_argument(format!(
                "ttl_seconds must be between 1 and {MAX_SESSION_TTL_SECONDS}"
            )));
        }
        let scope = Scope {
            networks: parse_networks(&r.networks)?,
            assets: parse_list(&r.assets, "asset", parse_address)?,
            payees: parse_list(&r.payees, "payee", parse_address)?,
        };
        if !self.lock().wallets.contains_key(&r.wallet_id) {
            return Err(Failure::not_found(format!("wallet {:?} does not exist", r.wallet_id)));
        }
        let now = self.clock.now().as_secs();
        let record = SessionRecord {
            id: random_id(&self.entropy, "s_"),
            wallet_id: r.wallet_id,
            public_key,
            cap,
            expires_at: now.saturating_add(r.ttl_seconds),
            revoked: false,
            scope,
            created_at: now,
            label: r.label.trim().to_owned(),
        };
        self.persist(vec![Op::Put(Table::Sessions, record.id.as_bytes().to_vec(), json(&record))])
            .await?;
        tracing::info!(session = %record.id, wallet = %record.wallet_id, "session issued");
        let entry = SessionEntry {
            key: session_key(&record.public_key)?,
            record,
            spent: U256::ZERO,
            history: History::new(),
        };
        let out = session_proto(&entry);
        self.lock().sessions.insert(entry.record.id.clone(), entry);
        Ok(out)
    }

    pub(super) fn list_sessions(&self, wallet_id: &str) -> gw::ListSessionsResponse {
        let inner = self.lock();
        let mut sessions: Vec<_> = inner
            .sessions
            .values()
            .filter(|s| wallet_id.is_empty() || s.record.wallet_id == wallet_id)
            .map(session_proto)
            .collect();
        sessions.sort_by_key(|s| (s.created_at, s.session_id.clone()));
        gw::ListSessionsResponse { sessions }
    }

    /// Effective in memory at once (no signature is released after this point), then durable.
    pub(super) async fn revoke_session(
        &self,
        by: &AdminAuthorized,
        session_id: &str,
    ) -> Result<gw::Session> {
        let record = {
            let mut inner = self.lock();
            let s = inner.sessions.get_mut(session_id).ok_or_else(|| {
                Failure::not_found(format!("session {session_id:?} does not exist"))
            })?;
            s.record.revoked = true;
            s.record.clone()
        };
        self.persist(vec![Op::Put(Table::Sessions, record.id.as_bytes().to_vec(), json(&record))])
            .await?;
        tracing::info!(session = %session_id, "session revoked");
        // A group: the other members take no more grants for it (they spend what their grant
        // has left for at most `sharing::LEASE_MS`).
        self.mark_shared(super::sharing::Scope::Session(session_id.to_owned()), true, by.timestamp_ms).await.map_err(
            |f| Failure {
                message: format!("the session is revoked at this enclave, but the group's shared book was not updated ({}): retry the revocation", f.message),
                ..f
            },
        )?;
        let inner = self.lock();
        inner
            .sessions
            .get(session_id)
            .map(session_proto)
            .ok_or_else(|| Failure::internal("session vanished"))
    }
}
