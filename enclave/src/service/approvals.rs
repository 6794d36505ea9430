//! Payments held for a human's approval: the hold, the decision, and the retry's gate.

use wallet_proto::{enclave::v1::ErrorCode, gateway::v1 as gw, Reason};

use super::{
    auth::AdminAuthorized,
    records::{json, ApprovalRecord, HoldState},
    wire::approval_proto,
    Enclave, Failure, Result,
};
use crate::{
    platform::UnixMillis,
    store::{Op, Table},
};

/// Whether the retry of a held payment may go ahead: only once approved, before expiry.
pub(super) fn check_hold(hold: &ApprovalRecord, now: UnixMillis) -> Result<()> {
    let now_ms = now.as_millis();
    if hold.expired(now_ms) {
        return Err(Failure::denied(
            Reason::ApprovalExpired,
            format!(
                "the hold {} expired before it was {}",
                hold.id,
                if hold.state == HoldState::Pending { "decided" } else { "used" }
            ),
        ));
    }
    match hold.state {
        HoldState::Approved => Ok(()),
        HoldState::Pending => Err(pending(hold, now_ms)),
        HoldState::Denied => Err(Failure::denied(
            Reason::ApprovalDenied,
            format!(
                "a human denied this payment (hold {}){}",
                hold.id,
                if hold.note.is_empty() { String::new() } else { format!(": {}", hold.note) }
            ),
        )),
        HoldState::Used => Err(Failure::internal("approved hold already used")),
    }
}

fn pending(hold: &ApprovalRecord, now_ms: u64) -> Failure {
    Failure::precondition(
        Reason::ApprovalPending,
        format!(
            "held for human approval as {} ({}); retry with the same idempotency key once it is approved (walletctl approvals approve {}); the hold expires in {} s",
            hold.id,
            hold.reason,
            hold.id,
            hold.expires_ms.saturating_sub(now_ms) / 1000
        ),
    )
}

impl Enclave {
    /// Makes a new hold durable and audits it. Returns the answer for the agent.
    pub(super) async fn hold(&self, hold: ApprovalRecord) -> Failure {
        let key = (hold.session_id.clone(), hold.idempotency_key.clone());
        if let Err(e) = self
            .persist(vec![Op::Put(Table::Approvals, hold.id.as_bytes().to_vec(), json(&hold))])
            .await
        {
            let mut inner = self.lock();
            inner.approvals.remove(&hold.id);
            inner.idem.remove_hold(&key, &hold.id);
            return Failure::from(e);
        }
        tracing::info!(session = %hold.session_id, approval = %hold.id, "payment held for approval");
        self.audit_hold(&hold);
        pending(&hold, hold.created_ms)
    }

    /// Marks an approved hold as used once its payment was released.
    pub(super) async fn mark_hold_used(&self, id: &str) {
        let record = {
            let mut inner = self.lock();
            let Some(a) = inner.approvals.get_mut(id) else { return };
            a.state = HoldState::Used;
            a.clone()
        };
        // The spend log already says the payment was released; this is bookkeeping.
        if let Err(e) = self
            .persist(vec![Op::Put(Table::Approvals, id.as_bytes().to_vec(), json(&record))])
            .await
        {
            tracing::error!(error = %e, approval = %id, "could not record the hold as used");
        }
    }

    pub(super) fn list_approvals(&self, r: &gw::ListApprovalsRequest) -> gw::ListApprovalsResponse {
        let now_ms = self.clock.now().as_millis();
        let inner = self.lock();
        let mut approvals: Vec<_> = inner
            .approvals
            .values()
            .filter(|a| r.wallet_id.is_empty() || a.wallet_id == r.wallet_id)
            .filter(|a| r.all || (a.state == HoldState::Pending && !a.expired(now_ms)))
            .map(|a| approval_proto(a, now_ms))
            .collect();
        approvals.sort_by_key(|a| (a.created_at_ms, a.approval_id.clone()));
        gw::ListApprovalsResponse { approvals }
    }

    pub(super) async fn decide_approval(
        &self,
        by: &AdminAuthorized,
        r: &gw::DecideApprovalRequest,
    ) -> Result<gw::Approval> {
        let now_ms = self.clock.now().as_millis();
        if r.note.len() > 200 {
            return Err(Failure::bad_argument("note may be at most 200 bytes"));
        }
        let record = {
            let inner = self.lock();
            let a = inner.approvals.get(&r.approval_id).ok_or_else(|| {
                Failure::not_found(format!(
                    "no hold {:?} (see walletctl approvals list)",
                    r.approval_id
                ))
            })?;
            if a.expired(now_ms) {
                return Err(Failure::new(
                    ErrorCode::FailedPrecondition,
                    Reason::ApprovalExpired,
                    format!("hold {} expired; the agent must ask again", a.id),
                ));
            }
            if a.state != HoldState::Pending {
                return Err(Failure::precondition(
                    Reason::ApprovalDecided,
                    format!("hold {} was already decided ({})", a.id, a.state_name(now_ms)),
                ));
            }
            let mut a = a.clone();
            a.state = if r.approve { HoldState::Approved } else { HoldState::Denied };
            a.decided_by.clone_from(&by.admin);
            a.note = r.note.trim().to_owned();
            // An approval gives the agent as long to retry as the hold had to be decided.
            a.expires_ms = now_ms.saturating_add(a.hold_ms);
            a
        };
        self.persist(vec![Op::Put(Table::Approvals, record.id.as_bytes().to_vec(), json(&record))])
            .await?;
        tracing::info!(approval = %record.id, approve = r.approve, "hold decided");
        let out = approval_proto(&record, now_ms);
        self.lock().approvals.insert(record.id.clone(), record);
        Ok(out)
    }
}
