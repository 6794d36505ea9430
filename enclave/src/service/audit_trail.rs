//! What the enclave writes to the audit log (the text of each record kind), and its answers
//! about the log: the signed head and the pages of records.

use ed25519_dalek::Signer as _;
use sha2::{Digest as _, Sha256};
use wallet_policy::audit::{head_message, Record as AuditRecord};
use wallet_proto::{
    enclave::v1::enclave_response::Body as Resp, gateway::v1 as gw, AdminRpc, Reason,
};

use super::{auth::AdminAuthorized, records::ApprovalRecord, Enclave, Failure, Result};
use crate::platform::UnixMillis;

impl Enclave {
    /// Appends a record; it rides on the next durability round.
    fn audit(&self, r: AuditRecord) {
        if let Err(e) = self.audit.append(r) {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    /// Appends a record and makes it durable now, covered by the commit head.
    async fn audit_now(&self, r: AuditRecord) {
        self.audit(r);
        if let Err(e) = self.checkpoint().await {
            tracing::error!(error = %e, "audit sync failed");
        }
    }

    /// A policy denial (rides on the next durability round).
    pub(super) fn audit_denial(&self, now: UnixMillis, session: &str, wallet: &str, f: &Failure) {
        self.audit(AuditRecord {
            at_ms: now.as_millis(),
            kind: "deny".into(),
            session: session.to_owned(),
            wallet: wallet.to_owned(),
            reason: f.reason.as_str().to_owned(),
            detail: f.message.clone(),
            ..Default::default()
        });
    }

    /// A signature withheld in flight (made durable at once).
    pub(super) async fn audit_withheld(
        &self,
        session: &str,
        wallet: &str,
        denial: &Failure,
        idempotency_key: &str,
    ) {
        self.audit_now(AuditRecord {
            at_ms: self.clock.now().as_millis(),
            kind: "withheld".into(),
            session: session.to_owned(),
            wallet: wallet.to_owned(),
            reason: denial.reason.as_str().to_owned(),
            detail: format!("idempotency key {idempotency_key}"),
            ..Default::default()
        })
        .await;
    }

    /// A new hold for approval (rides on the next durability round).
    pub(super) fn audit_hold(&self, hold: &ApprovalRecord) {
        self.audit(AuditRecord {
            at_ms: hold.created_ms,
            kind: "hold".into(),
            session: hold.session_id.clone(),
            wallet: hold.wallet_id.clone(),
            reason: Reason::ApprovalPending.as_str().into(),
            detail: format!(
                "{} {} {} to {} on {}: {}",
                hold.id,
                hold.amount,
                hold.asset_symbol,
                hold.pay_to.to_checksum(None),
                hold.network,
                hold.reason
            ),
            ..Default::default()
        });
    }

    /// An admin change (made durable at once: admin changes are rare).
    pub(super) async fn audit_admin(&self, rpc: AdminRpc, by: &AdminAuthorized, resp: &Resp) {
        let (wallet, session, what) = match resp {
            Resp::Wallet(w) => (
                w.wallet_id.clone(),
                String::new(),
                format!(
                    "wallet {} {}{}",
                    w.wallet_id,
                    w.address,
                    if w.frozen { " frozen" } else { "" }
                ),
            ),
            Resp::Policy(p) => (
                p.wallet_id.clone(),
                String::new(),
                format!(
                    "policy v{}, document sha256 {}",
                    p.version,
                    hex::encode(Sha256::digest(p.document.as_bytes()))
                ),
            ),
            // Staged chunks are not changes; only the commit is.
            Resp::KytImport(k) if !k.committed => return,
            Resp::KytImport(k) => (
                String::new(),
                String::new(),
                format!("import: {} added, {} removed, {} listed", k.added, k.removed, k.total),
            ),
            Resp::Approval(a) => (
                a.wallet_id.clone(),
                a.session_id.clone(),
                format!(
                    "hold {} {}: {} {} to {} ({}){}",
                    a.approval_id,
                    a.state,
                    a.amount,
                    a.asset_symbol,
                    a.pay_to,
                    a.reason,
                    if a.note.is_empty() { String::new() } else { format!(", note: {}", a.note) }
                ),
            ),
            Resp::Asset(a) => (
                String::new(),
                String::new(),
                format!(
                    "asset {} {} on {} ({:?} v{})",
                    a.symbol, a.address, a.network, a.name, a.version
                ),
            ),
            Resp::Kyt(k) => {
                (String::new(), String::new(), format!("{} changed, {} listed", k.changed, k.total))
            }
            Resp::Session(s) => (
                s.wallet_id.clone(),
                s.session_id.clone(),
                format!(
                    "cap {}, spent {}, expires {}{}",
                    s.cap,
                    s.spent,
                    s.expires_at,
                    if s.revoked { ", revoked" } else { "" }
                ),
            ),
            Resp::Admin(a) => {
                (String::new(), String::new(), format!("admin key {}", hex::encode(&a.public_key)))
            }
            Resp::Anchor(a) if a.key.is_empty() => (
                String::new(),
                String::new(),
                format!("anchor client key {}", a.client_public_key),
            ),
            // Which head was accepted (re-anchoring included).
            Resp::Anchor(a) => (
                String::new(),
                String::new(),
                format!(
                    "anchor {} epoch {}: accepted head of {} spend records, {} audit records, state batch {}, chain {} (etcd revision {})",
                    a.key, a.epoch, a.journal_records, a.audit_records, a.store_seq, a.chain_hash, a.revision
                ),
            ),
            _ => (String::new(), String::new(), String::new()),
        };
        self.audit_now(AuditRecord {
            at_ms: self.clock.now().as_millis(),
            kind: "admin".into(),
            session,
            wallet,
            reason: rpc.as_str().into(),
            detail: format!("{what} (by admin {})", by.admin),
            ..Default::default()
        })
        .await;
    }

    /// The audit head signed by the enclave's identity key, bound to the caller's challenge.
    pub(super) fn audit_head(&self, challenge: &[u8]) -> gw::AuditHead {
        let (count, hash) = self.audit.head();
        gw::AuditHead {
            count,
            hash: hash.to_vec(),
            signature: self
                .identity_key
                .sign(&head_message(count, &hash, challenge))
                .to_bytes()
                .to_vec(),
            public_key: self.identity().to_vec(),
            mode: self.nsm.mode().as_str().to_owned(),
            pcrs: self.wire_pcrs(),
        }
    }

    pub(super) fn list_audit(&self, from: u64, limit: u64) -> Result<gw::ListAuditResponse> {
        let limit = if limit == 0 { 1000 } else { limit.min(1000) };
        let (records, total) = self.audit.read(from, limit).map_err(|e| {
            tracing::error!(error = %e, "audit log check failed");
            Failure::precondition(Reason::AuditTampered, e.to_string())
        })?;
        Ok(gw::ListAuditResponse { records, total })
    }
}
