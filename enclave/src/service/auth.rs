//! Who is asking: agents' requests (session keys) and admins' state changes (admin keys). The
//! proofs made here — [`Authenticated`] (a payment request), [`SessionAuthenticated`] (an
//! agent's read) and [`AdminAuthorized`] — can be made nowhere else, and the steps that act on
//! a request take them.

use alloy_primitives::Address;
use ed25519_dalek::{Signature, VerifyingKey};
use wallet_policy::address::parse_address;
use wallet_proto::{
    auth::FRESHNESS_WINDOW_MS, gateway::v1 as gw, AdminRpc, AdminSigned, Reason, SessionSigned,
};

use super::{
    records::{json, AdminRecord},
    Enclave, Failure, Result,
};
use crate::{
    platform::UnixMillis,
    store::{Op, Table},
};

/// A payment request whose session signature verified, fresh, and seen for the first time.
#[derive(Debug)]
pub(crate) struct Authenticated {
    request: gw::SignPaymentRequest,
    preferred_asset: Option<Address>,
    now: UnixMillis,
}

impl Authenticated {
    /// The request, exactly as signed.
    pub fn request(&self) -> &gw::SignPaymentRequest {
        &self.request
    }
    /// The preferred asset, parsed.
    pub fn preferred_asset(&self) -> Option<&Address> {
        self.preferred_asset.as_ref()
    }
    /// When it was authenticated: the time every later step of this payment uses.
    pub fn now(&self) -> UnixMillis {
        self.now
    }
}

/// An agent's read-only request (`GetBudget`, `ListPayments`, `PreviewPayment`) whose session
/// signature verified under its own RPC's domain tag, fresh, and seen for the first time. The
/// session exists; it may be revoked or expired (reads answer with that state).
#[derive(Debug)]
pub(crate) struct SessionAuthenticated {
    session_id: String,
    now: UnixMillis,
}

impl SessionAuthenticated {
    /// The session that signed.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }
    /// When it was authenticated: the time the answer is computed for.
    pub fn now(&self) -> UnixMillis {
        self.now
    }
}

/// A state change signed by an admin of this enclave, fresh and newer than every admin request
/// accepted before.
#[derive(Debug)]
pub(crate) struct AdminAuthorized {
    /// The first 8 bytes of the admin's key, hex: how the audit log names the admin.
    pub admin: String,
    /// The request's signed timestamp (Unix ms): orders a group's freezes and policies.
    pub timestamp_ms: u64,
}

/// How far ahead of the newest request timestamp the durable replay floor is set, ms. After a
/// restart, requests signed up to this long after the last one accepted are refused (clients
/// sign again; a restart itself takes longer); under load the floor is written about once per
/// this interval (one state-store sync, which the request that crosses it waits for).
pub const REPLAY_FLOOR_MARGIN_MS: u64 = 100;

/// The state-store key (floors table, covered by the state digest) of the replay floor: Unix
/// ms, JSON.
pub(super) const REPLAY_FLOOR_KEY: &[u8] = b"replay-floor";

/// A request nonce is 16 to 64 bytes.
fn check_nonce<R: SessionSigned>(r: &R) -> Result<()> {
    if (16..=64).contains(&r.request_nonce().len()) {
        Ok(())
    } else {
        Err(Failure::invalid(Reason::InvalidNonce, "request_nonce must be 16 to 64 bytes"))
    }
}

fn valid_idempotency_key(k: &str) -> bool {
    (1..=128).contains(&k.len())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

impl Enclave {
    /// Step "authenticate" of a payment: shapes, then the session's Ed25519 signature over the
    /// canonical request (no lock held), its freshness, and its nonce (a signed request is used
    /// once, whatever its outcome, so a denied request cannot be replayed after a policy change —
    /// nor after a restart: see [`Enclave::cover_by_replay_floor`]).
    pub(super) async fn authenticate(&self, r: gw::SignPaymentRequest) -> Result<Authenticated> {
        if !valid_idempotency_key(&r.idempotency_key) {
            return Err(Failure::invalid(
                Reason::InvalidIdempotencyKey,
                "idempotency_key must be 1-128 characters of [A-Za-z0-9_.:-]",
            ));
        }
        check_nonce(&r)?;
        let preferred_asset = if r.preferred_asset.is_empty() {
            None
        } else {
            Some(
                parse_address(&r.preferred_asset)
                    .map_err(|e| Failure::bad_argument(format!("preferred_asset: {e}")))?,
            )
        };
        let now = self.verify_session_request(&r).await?;
        Ok(Authenticated { request: r, preferred_asset, now })
    }

    /// Authenticates an agent's read-only request exactly as a payment request is (signature
    /// under the RPC's own domain tag, freshness, replay floor, nonce used once), so a signature
    /// made for one RPC — a payment, a budget read — cannot be replayed as another.
    pub(super) async fn authenticate_read<R: SessionSigned>(
        &self,
        r: &R,
    ) -> Result<SessionAuthenticated> {
        check_nonce(r)?;
        let now = self.verify_session_request(r).await?;
        Ok(SessionAuthenticated { session_id: r.session_id().to_owned(), now })
    }

    /// Whether `r` carries a valid signature of its session (no freshness or replay check, and
    /// nothing recorded): for bookkeeping about requests already answered.
    pub(super) fn session_signature_verifies<R: SessionSigned>(&self, r: &R) -> bool {
        let Some(key) = self.lock().sessions.get(r.session_id()).map(|s| s.key) else {
            return false;
        };
        Signature::from_slice(r.signature())
            .is_ok_and(|sig| key.verify_strict(&r.signed_message(), &sig).is_ok())
    }

    /// The checks every session-signed request passes: the session's Ed25519 signature over the
    /// request's canonical bytes (no lock held), its freshness, the replay floor, and its nonce
    /// (recorded: a signed request is used once, whatever its outcome). Returns the time the
    /// request is answered for.
    async fn verify_session_request<R: SessionSigned>(&self, r: &R) -> Result<UnixMillis> {
        let session_key = self.lock().sessions.get(r.session_id()).map(|s| s.key);
        let Some(session_key) = session_key else {
            return Err(Failure::unauthenticated(Reason::UnknownSession, "unknown session"));
        };
        let sig = Signature::from_slice(r.signature()).map_err(|_| {
            Failure::unauthenticated(Reason::BadSignature, "request signature is not 64 bytes")
        })?;
        session_key.verify_strict(&r.signed_message(), &sig).map_err(|_| {
            Failure::unauthenticated(
                Reason::BadSignature,
                format!(
                    "request signature does not verify with the session key (as a {} request)",
                    R::RPC
                ),
            )
        })?;
        // Time never goes back for freshness and the replay cache: a host that steps the clock
        // forward (so a nonce is pruned) and back (so its request looks fresh) gets nothing.
        let now = self.monotonic_now();
        let timestamp_ms = r.timestamp_ms();
        if now.as_millis().abs_diff(timestamp_ms) > FRESHNESS_WINDOW_MS {
            return Err(Failure::unauthenticated(
                Reason::StaleRequest,
                format!(
                    "request timestamp is more than {} s from the enclave clock",
                    FRESHNESS_WINDOW_MS / 1000
                ),
            ));
        }
        if timestamp_ms <= self.replay_floor.as_millis() {
            return Err(Failure::unauthenticated(
                Reason::StaleRequest,
                "request was signed before the enclave last started (its replay cache starts empty, so older requests are refused); sign it again",
            ));
        }
        self.cover_by_replay_floor(timestamp_ms, now).await?;
        let nonce = (r.session_id().to_owned(), r.request_nonce().to_vec());
        if !self.lock().replay.first_use(nonce, now) {
            return Err(Failure::unauthenticated(
                Reason::ReplayedRequest,
                "this signed request was already used",
            ));
        }
        Ok(now)
    }

    /// The clock, but never earlier than it has read before in this run.
    pub(super) fn monotonic_now(&self) -> UnixMillis {
        use std::sync::atomic::Ordering;
        let now = self.clock.now().as_millis();
        UnixMillis(self.max_now.fetch_max(now, Ordering::SeqCst).max(now))
    }

    /// Makes sure a request signed at `timestamp_ms` would be refused after a restart: the
    /// enclave keeps a durable high-water mark of request timestamps (in the state store, advanced
    /// [`REPLAY_FLOOR_MARGIN_MS`] ahead at a time, so about ten times a second under load), and at
    /// start-up refuses every request signed at or before it. The replay cache itself can then
    /// stay in memory. Called before a request's nonce is used or any answer is given.
    async fn cover_by_replay_floor(&self, timestamp_ms: u64, now: UnixMillis) -> Result<()> {
        use std::sync::atomic::Ordering;
        if timestamp_ms <= self.replay_high_water.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one_writer = self.replay_high_water_lock.lock().await;
        if timestamp_ms <= self.replay_high_water.load(Ordering::Acquire) {
            return Ok(());
        }
        let mark = timestamp_ms.max(now.as_millis()).saturating_add(REPLAY_FLOOR_MARGIN_MS);
        // Durable and covered by the commit head before the request goes on: a state store put
        // back by one batch would otherwise lower the floor.
        self.persist(vec![Op::Put(Table::Floors, REPLAY_FLOOR_KEY.to_vec(), json(&mark))]).await?;
        self.replay_high_water.store(mark, Ordering::Release);
        Ok(())
    }

    /// Verifies an admin's signature over a state-changing request, its freshness, and that its
    /// timestamp is newer than the last one accepted from any admin (persisted, so a request
    /// cannot be replayed after a restart either). `bootstrap` allows a self-signed request from
    /// an unknown key when the enclave has no admin yet. Called with the admin lock held.
    pub(super) async fn authorize<R: AdminSigned>(
        &self,
        rpc: AdminRpc,
        req: &R,
        bootstrap: bool,
    ) -> Result<AdminAuthorized> {
        let deny = |reason: Reason, message: &str| Failure::unauthenticated(reason, message);
        let auth = req.auth().ok_or_else(|| {
            deny(
                Reason::AdminSignatureRequired,
                "state-changing requests must be signed by an admin key (see walletctl init)",
            )
        })?;
        let pk: [u8; 32] =
            auth.public_key.as_slice().try_into().map_err(|_| {
                deny(Reason::BadAdminSignature, "admin public key must be 32 bytes")
            })?;
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| {
            deny(Reason::BadAdminSignature, "admin public key is not an Ed25519 point")
        })?;
        if !(16..=64).contains(&auth.nonce.len()) {
            return Err(Failure::invalid(
                Reason::InvalidNonce,
                "admin nonce must be 16 to 64 bytes",
            ));
        }
        let last_ts =
            {
                let inner = self.lock();
                // One clock for all admins: requests from different admins cannot be reordered.
                let newest = inner.admins.values().map(|a| a.last_ts).max();
                let fresh_enclave =
                    inner.admins.is_empty() && inner.wallets.is_empty() && self.audit.head().0 == 0;
                match (inner.admins.contains_key(&pk), newest) {
                    (true, Some(newest)) => Some(newest),
                    (false, None) if bootstrap && fresh_enclave => None,
                    (false, None) if fresh_enclave => {
                        return Err(deny(
                            Reason::NoAdmin,
                            "this enclave has no admin yet: register one with walletctl init",
                        ))
                    }
                    (false, None) => return Err(deny(
                        Reason::NoAdmin,
                        "this enclave has state but no admin; refusing to let a new key take over",
                    )),
                    _ => {
                        return Err(deny(
                            Reason::UnknownAdmin,
                            "the signing key is not an admin of this enclave",
                        ))
                    }
                }
            };
        let sig = Signature::from_slice(&auth.signature)
            .map_err(|_| deny(Reason::BadAdminSignature, "admin signature is not 64 bytes"))?;
        let msg = req.signed_message(&self.identity(), rpc, auth.timestamp_ms, &auth.nonce);
        key.verify_strict(&msg, &sig).map_err(|_| {
            deny(Reason::BadAdminSignature, "admin signature does not verify over this request")
        })?;
        if self.clock.now().as_millis().abs_diff(auth.timestamp_ms) > FRESHNESS_WINDOW_MS {
            return Err(deny(
                Reason::StaleAdminRequest,
                "admin request timestamp is more than 120 s from the enclave clock",
            ));
        }
        if let Some(last) = last_ts {
            if auth.timestamp_ms <= last {
                return Err(deny(
                    Reason::ReplayedAdminRequest,
                    "admin request is not newer than the last admin request this enclave accepted",
                ));
            }
            let record: AdminRecord = {
                let mut inner = self.lock();
                let a =
                    inner.admins.get_mut(&pk).ok_or_else(|| Failure::internal("admin vanished"))?;
                a.last_ts = auth.timestamp_ms;
                a.clone()
            };
            self.persist_state(vec![Op::Put(Table::Admins, pk.to_vec(), json(&record))]).await?;
        }
        let admin = hex::encode(&pk[..8]);
        tracing::info!(%rpc, %admin, "admin request authorized");
        Ok(AdminAuthorized { admin, timestamp_ms: auth.timestamp_ms })
    }
}
