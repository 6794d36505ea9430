//! The spend ledger: the one path by which a signature leaves the enclave.
//!
//! # The life of a spend
//!
//! ```text
//!              decide + reserve            sign                 post (durable)         release
//!  request ─────────────────────▶ Reserved ─────▶ SignedSpend ─────────────▶ DurableSpend ─────▶ released
//!     │                              │                 │                        │
//!     └─▶ held for approval          └─────────────────┴─▶ failed               └─▶ withheld
//!         (not charged; the retry      (charge kept, key spent:                    (revoked or frozen in
//!          after approval starts        never released)                            flight; durable; never
//!          again at "reserve")                                                      released)
//! ```
//!
//! Each stage is a type, and each type can only be made from the one before it:
//! [`Reservation`](super::payment::Reservation) only by the decision under the state lock, which
//! takes the proof of authentication ([`Authenticated`](super::auth::Authenticated));
//! [`SignedSpend`] only by [`sign`], which takes a reservation; [`DurableSpend`] only by [`post`]
//! (after the spend log confirmed durability) or by [`recover`] (records read back from the log);
//! and the answer that carries a signature (`SignPaymentResponse`) only by
//! [`DurableSpend::response`]. So releasing a signature whose spend is not durable does not
//! compile.
//!
//! # Invariants
//!
//! 1. **Durable before released.** A signature leaves only inside a `SignPaymentResponse`, which
//!    only a [`DurableSpend`] makes.
//! 2. **Reserved before signed.** A spend's charge is counted (session total, rolling windows)
//!    under the state lock before it is signed, so concurrent requests never jointly exceed a cap
//!    or budget.
//! 3. **Charged once per idempotency key.** A key maps to one stage at a time; a posted spend is
//!    answered again from its record, never signed again.
//! 4. **Fail closed.** When signing or the durability round fails after the reservation, the
//!    charge stays and the key is marked failed: a crash or an error can waste budget, never
//!    exceed it.
//! 5. **Withheld is final.** A spend revoked or frozen between reservation and release is
//!    recorded as withheld in the log, so no retry — after a restart or an unfreeze — releases it.
//! 6. **Recovery rebuilds everything from the log**: session totals, window histories and the
//!    idempotency index.

use std::sync::Arc;

use super::{payment::Reservation, records::json};
use crate::{
    journal::{JournalError, RecordRef},
    platform::{SpendLog, UnixMillis},
    store::StoreError,
};
use alloy_primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};
use wallet_policy::{
    amount::{format_decimal, format_units},
    eip712::Authorization,
    rules,
    x402::{encode_header, payment_payload_json, PaymentRequired},
};
use wallet_proto::{gateway::v1 as gw, Reason};

/// A spend as recorded in the spend log: what was authorized, and what is needed to answer an
/// idempotent retry with the same response.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpendRecord {
    seq: u64,
    session_id: String,
    wallet_id: String,
    /// Token units charged against caps and budgets.
    charge: U256,
    /// Token units authorized.
    amount: U256,
    network: String,
    asset: Address,
    pay_to: Address,
    /// Unix seconds.
    valid_before: u64,
    /// Unix ms.
    at_ms: u64,
    idempotency_key: String,
    request_hash: String,
    payload_json: String,
    accepted_index: u32,
    charged: String,
    asset_symbol: String,
    session_spent: String,
    session_remaining: String,
    payer: String,
    /// The x402 version of the payment (1: `X-PAYMENT`, 2: `PAYMENT-SIGNATURE`). Records
    /// written before x402 v1 support have none: they are v2.
    #[serde(default = "x402_v2")]
    x402_version: u32,
    /// The chosen `accepts[]` entry as echoed, for a v1 payment (whose payload does not carry
    /// it); `None` for v2, whose payload's `accepted` is it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accepted_json: Option<String>,
}

/// The x402 version of a spend record that does not say (written before v1 support).
fn x402_v2() -> u32 {
    2
}

/// A record of the spend log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    /// An authorization the enclave signed and decided to release.
    Spend(Box<SpendRecord>),
    /// A spend whose signature was withheld (revoked or frozen in flight).
    Withheld {
        session_id: String,
        idempotency_key: String,
        request_hash: String,
        reason: String,
        #[serde(default)]
        at_ms: u64,
    },
}

/// A signed spend, not yet durable. Its signature cannot be read from it: only [`post`] turns
/// it into something that can be released.
///
/// ```compile_fail
/// // There is no way from a signed spend to the response that carries its signature.
/// fn release(
///     s: wallet_enclave::service::ledger::SignedSpend,
/// ) -> wallet_proto::gateway::v1::SignPaymentResponse {
///     s.response()
/// }
/// ```
pub struct SignedSpend {
    record: SpendRecord,
}

impl std::fmt::Debug for SignedSpend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedSpend").field("seq", &self.record.seq).finish_non_exhaustive()
    }
}

/// A spend the spend log holds durably (or the enclave read back from it). The only maker of
/// the response that releases its signature; made only by [`post`] and [`recover`].
///
/// ```compile_fail
/// // Outside this module a durable spend cannot be made up: its field is private.
/// use wallet_enclave::service::ledger::DurableSpend;
/// fn forge(posted: &DurableSpend) -> DurableSpend {
///     DurableSpend(std::sync::Arc::clone(&posted.0))
/// }
/// ```
#[derive(Clone)]
pub struct DurableSpend(Arc<SpendRecord>, RecordRef, [u8; 32]);

impl std::fmt::Debug for DurableSpend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSpend").field("seq", &self.0.seq).finish_non_exhaustive()
    }
}

/// A posted spend as the idempotency index keeps it: where its record lies in the spend log
/// (a retry reads the payload back from there, see [`read_back`]), its wallet and when it was
/// decided — about 100 bytes, where the record is ~1.6 KB.
#[derive(Debug, Clone)]
pub(crate) struct Posted {
    pub record: RecordRef,
    /// SHA-256 of the record's plaintext: what is read back must be these bytes, not another
    /// genuine record sealed at the same number (a host that forked the journal keeps those).
    pub digest: [u8; 32],
    pub wallet_id: String,
    pub decided: UnixMillis,
}

/// SHA-256 of a spend-log record's plaintext ([`Posted::digest`]).
pub(crate) fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

impl DurableSpend {
    /// Where its record lies in the spend log.
    pub(crate) fn record(&self) -> RecordRef {
        self.1
    }

    /// What the idempotency index keeps of it.
    pub(crate) fn posted(&self) -> Posted {
        Posted {
            record: self.1,
            digest: self.2,
            wallet_id: self.0.wallet_id.clone(),
            decided: self.at(),
        }
    }
    /// The wallet that paid.
    #[must_use]
    pub fn wallet_id(&self) -> &str {
        &self.0.wallet_id
    }
    /// When it was decided.
    #[must_use]
    pub fn at(&self) -> UnixMillis {
        UnixMillis(self.0.at_ms)
    }
    /// The response that releases this spend's signature.
    #[must_use]
    pub fn response(&self) -> gw::SignPaymentResponse {
        let r = &self.0;
        let accepted_json = r.accepted_json.clone().unwrap_or_else(|| {
            serde_json::from_str::<serde_json::Value>(&r.payload_json)
                .map(|v| v["accepted"].to_string())
                .unwrap_or_default()
        });
        gw::SignPaymentResponse {
            payment_signature: encode_header(&r.payload_json),
            payment_payload_json: r.payload_json.clone(),
            accepted_json,
            accepted_index: r.accepted_index,
            network: r.network.clone(),
            asset: r.asset.to_checksum(None),
            pay_to: r.pay_to.to_checksum(None),
            amount: r.amount.to_string(),
            charged: r.charged.clone(),
            asset_symbol: r.asset_symbol.clone(),
            session_spent: r.session_spent.clone(),
            session_remaining: r.session_remaining.clone(),
            payer: r.payer.clone(),
            valid_before: r.valid_before,
            replayed: false,
            x402_version: r.x402_version,
        }
    }
}

/// What signing needs beyond the reservation.
#[derive(Debug)]
pub(crate) struct SignContext<'a> {
    pub required: &'a PaymentRequired,
    pub session_id: &'a str,
    pub idempotency_key: &'a str,
    pub request_hash: [u8; 32],
    /// The x402 `payment-identifier` id to echo when offered.
    pub payment_id: &'a str,
    pub seq: u64,
    pub now: UnixMillis,
    /// The session's spent total and cap after this reservation (token units), for the answer.
    pub session_spent: U256,
    pub session_cap: U256,
}

/// The EIP-3009 nonce of the authorization signed for one payment: SHA-256 over a tag, the
/// paying wallet's address, the session id, the idempotency key and the request's hash (the
/// `PAYMENT-REQUIRED` bytes and the preferences, which the key is bound to). The same payment
/// — a retry with the same key, or one request a host delivers to two enclaves of a group —
/// gets one nonce wherever it is signed, so the token contract settles only one of its
/// authorizations (EIP-3009 `authorizationState`) and the payee is paid once; two different
/// payments (another key, or the same key for another request after its time to live) get two.
/// The same key reused for a byte-identical request after the key's time to live
/// (`--idempotency-ttl`) is signed and charged again with the same nonce: it settles once.
#[must_use]
pub(crate) fn authorization_nonce(
    from: &Address,
    session_id: &str,
    idempotency_key: &str,
    request_hash: &[u8; 32],
) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::new()
        .chain_update(b"x402-wallet/eip3009-nonce/v1\0")
        .chain_update(from.as_slice())
        .chain_update((session_id.len() as u64).to_be_bytes())
        .chain_update(session_id.as_bytes())
        .chain_update((idempotency_key.len() as u64).to_be_bytes())
        .chain_update(idempotency_key.as_bytes())
        .chain_update(request_hash)
        .finalize()
        .into()
}

/// Step "sign": the request's 32-byte EIP-3009 nonce ([`authorization_nonce`]), the EIP-712 digest with the registry's domain,
/// a k256 signature, and the payload JSON as the official client of the requirement's x402
/// version writes it (v2: `validAfter` 0, the `PAYMENT-SIGNATURE` payload; v1: `validAfter`
/// `now - 600`, the `X-PAYMENT` payload), `validAfter`/`validBefore` as the decision set them.
///
/// # Errors
/// A k256 failure (never expected).
pub(crate) fn sign(
    reservation: &Reservation<'_>,
    cx: &SignContext<'_>,
) -> Result<(SignedSpend, [u8; 32]), String> {
    let charge = &reservation.charge;
    let approval: &rules::Approval = &charge.approval;
    let key = &charge.key;
    let nonce =
        authorization_nonce(&key.address(), cx.session_id, cx.idempotency_key, &cx.request_hash);
    let req = &approval.requirement;
    let auth = Authorization {
        from: key.address(),
        to: req.pay_to,
        value: req.amount,
        valid_after: approval.valid_after,
        valid_before: approval.valid_before,
        nonce,
    };
    let digest = auth.signing_hash(&charge.domain);
    let signature = key.sign_digest(&digest).map_err(|e| e.to_string())?;
    let accepted = &cx.required.accepts[approval.index];
    let payload_json =
        payment_payload_json(cx.required, accepted, &auth, &signature, cx.payment_id);
    let x402_version = u32::try_from(cx.required.x402_version).unwrap_or(u32::MAX);
    let record = SpendRecord {
        seq: cx.seq,
        session_id: cx.session_id.to_owned(),
        wallet_id: charge.wallet_id.clone(),
        charge: approval.charge,
        amount: req.amount,
        network: req.network.clone(),
        asset: req.asset,
        pay_to: req.pay_to,
        valid_before: approval.valid_before,
        at_ms: cx.now.as_millis(),
        idempotency_key: cx.idempotency_key.to_owned(),
        request_hash: hex::encode(cx.request_hash),
        payload_json,
        accepted_index: u32::try_from(approval.index).unwrap_or(u32::MAX),
        charged: format_decimal(req.amount, approval.asset.decimals),
        asset_symbol: approval.asset.symbol.clone(),
        session_spent: format_units(cx.session_spent),
        session_remaining: format_units(cx.session_cap.saturating_sub(cx.session_spent)),
        payer: key.address().to_checksum(None),
        x402_version,
        accepted_json: (x402_version == 1).then(|| accepted.to_string()),
    };
    Ok((SignedSpend { record }, nonce))
}

impl SignedSpend {
    /// The audit line's text: amount, asset, payee, network, validity and nonce (no signature).
    pub(crate) fn audit_detail(&self, nonce: &[u8; 32]) -> String {
        let r = &self.record;
        format!(
            "{} {} to {} on {}, valid before {}, nonce 0x{}",
            r.charged,
            r.asset_symbol,
            r.pay_to.to_checksum(None),
            r.network,
            r.valid_before,
            hex::encode(nonce)
        )
    }
    /// The wallet that pays.
    pub(crate) fn wallet_id(&self) -> &str {
        &self.record.wallet_id
    }
}

/// Step "make durable": appends the spend to the log and waits for its durability round (group
/// commit). The only maker of a fresh [`DurableSpend`].
///
/// # Errors
/// [`JournalError`]: the spend may or may not be on disk; it is not released.
pub(crate) async fn post(
    log: &dyn SpendLog,
    spend: SignedSpend,
) -> Result<DurableSpend, JournalError> {
    let entry = Entry::Spend(Box::new(spend.record));
    let bytes = json(&entry);
    let at = log.append(&bytes)?;
    log.durable().await?;
    let Entry::Spend(record) = entry else { unreachable!("constructed as a spend above. qed") };
    Ok(DurableSpend(Arc::new(*record), at, digest(&bytes)))
}

/// Reads a posted spend back from the spend log for a retry under `(session_id,
/// idempotency_key)` with request hash `request_hash`: the record must open as record number
/// `posted.record.index` (its seal), have the plaintext digest the index kept (so not another
/// genuine record of that number from a forked journal), and be that spend (the same session,
/// key and request).
///
/// # Errors
/// [`JournalError`] when it cannot be read or is not that spend (the retry gets an internal
/// error; nothing is released).
pub(crate) fn read_back(
    log: &dyn SpendLog,
    posted: &Posted,
    session_id: &str,
    idempotency_key: &str,
    request_hash: &[u8; 32],
) -> Result<DurableSpend, JournalError> {
    let bytes = log.read(posted.record)?;
    let not_it = |reason: &str| JournalError::Corrupt {
        index: posted.record.index,
        offset: posted.record.offset,
        reason: reason.to_owned(),
    };
    if digest(&bytes) != posted.digest {
        return Err(not_it("the record read back is not the one this spend was posted as"));
    }
    match super::records::from_json::<Entry>("journal", &bytes) {
        Ok(Entry::Spend(s))
            if s.session_id == session_id
                && s.idempotency_key == idempotency_key
                && hash_of(&s.request_hash) == *request_hash =>
        {
            Ok(DurableSpend(Arc::from(s), posted.record, posted.digest))
        }
        Ok(_) => Err(not_it("the record read back is not the spend the index points to")),
        Err(_) => Err(not_it("the record read back does not parse")),
    }
}

/// Records durably that a posted spend is withheld for good.
///
/// # Errors
/// [`JournalError`].
pub(crate) async fn withhold(
    log: &dyn SpendLog,
    spend: &DurableSpend,
    reason: Reason,
    at: UnixMillis,
) -> Result<(), JournalError> {
    let r = &spend.0;
    let entry = Entry::Withheld {
        session_id: r.session_id.clone(),
        idempotency_key: r.idempotency_key.clone(),
        request_hash: r.request_hash.clone(),
        reason: reason.as_str().to_owned(),
        at_ms: at.as_millis(),
    };
    log.append(&json(&entry))?;
    log.durable().await
}

/// A spend-log record as read back at start-up.
#[derive(Debug)]
pub(crate) enum Recovered {
    /// A posted spend.
    Posted {
        posted: Posted,
        seq: u64,
        session_id: String,
        pay_to: Address,
        charge: U256,
        idempotency_key: String,
        request_hash: [u8; 32],
        /// The activity-list entry (outcome, reason and approval left to fill).
        shown: Box<gw::PaymentRecord>,
    },
    /// A withheld one (it follows its posted record).
    Withheld {
        session_id: String,
        idempotency_key: String,
        request_hash: [u8; 32],
        reason: Reason,
        at: UnixMillis,
    },
}

/// A request hash as stored (hex) back to its 32 bytes (zeros if malformed: it then matches no
/// request, so the key cannot be reused).
pub(crate) fn hash_of(h: &str) -> [u8; 32] {
    hex::decode(h).ok().and_then(|h| <[u8; 32]>::try_from(h).ok()).unwrap_or_default()
}

/// A spend's activity-list entry as recorded (outcome, reason and approval left to fill).
fn shown(spend: &DurableSpend) -> gw::PaymentRecord {
    let resp = spend.response();
    gw::PaymentRecord {
        at_ms: spend.at().as_millis(),
        amount: resp.amount,
        amount_human: resp.charged,
        asset: resp.asset,
        asset_symbol: resp.asset_symbol,
        network: resp.network,
        pay_to: resp.pay_to,
        ..Default::default()
    }
}

/// Reads one record of the log back (read at `at`).
///
/// # Errors
/// [`StoreError`] for a record that does not parse.
pub(crate) fn recovered(at: RecordRef, bytes: &[u8]) -> Result<Recovered, StoreError> {
    Ok(match super::records::from_json::<Entry>("journal", bytes)? {
        Entry::Spend(s) => {
            let spend = DurableSpend(Arc::from(s), at, digest(bytes));
            let r = &spend.0;
            Recovered::Posted {
                posted: spend.posted(),
                seq: r.seq,
                session_id: r.session_id.clone(),
                pay_to: r.pay_to,
                charge: r.charge,
                idempotency_key: r.idempotency_key.clone(),
                request_hash: hash_of(&r.request_hash),
                shown: Box::new(shown(&spend)),
            }
        }
        Entry::Withheld { session_id, idempotency_key, request_hash, reason, at_ms } => {
            Recovered::Withheld {
                session_id,
                idempotency_key,
                request_hash: hash_of(&request_hash),
                reason: Reason::from_code(&reason).unwrap_or(Reason::Internal),
                at: UnixMillis(at_ms),
            }
        }
    })
}

/// The domain separator a reservation signs under (from the registry).
pub(crate) type Domain = B256;

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;

    #[test]
    fn the_authorization_nonce_is_the_payments_and_nothing_else() {
        let (a, b) = (Address::repeat_byte(1), Address::repeat_byte(2));
        let n = authorization_nonce(&a, "s_1", "k1", &[7; 32]);
        // The same payment, wherever it is signed: one nonce (the token settles it once).
        assert_eq!(n, authorization_nonce(&a, "s_1", "k1", &[7; 32]));
        // Another key, request, session or wallet: another nonce.
        assert_ne!(n, authorization_nonce(&a, "s_1", "k2", &[7; 32]));
        assert_ne!(n, authorization_nonce(&a, "s_1", "k1", &[8; 32]));
        assert_ne!(n, authorization_nonce(&a, "s_2", "k1", &[7; 32]));
        assert_ne!(n, authorization_nonce(&b, "s_1", "k1", &[7; 32]));
        // Length-prefixed: moving a byte between the session id and the key changes it.
        assert_ne!(authorization_nonce(&a, "s_1k", "1", &[7; 32]), n);
    }

    /// A spend-log record as the enclave wrote it before x402 v1 support: no `x402_version`,
    /// no `accepted_json`.
    fn legacy_record() -> serde_json::Value {
        serde_json::json!({
            "kind": "spend",
            "seq": 7,
            "session_id": "s_1",
            "wallet_id": "w_1",
            "charge": "0x2386f26fc10000",
            "amount": "0x2710",
            "network": "eip155:84532",
            "asset": "0x036cbd53842c5426634e7929541ec2318f3dcf7e",
            "pay_to": "0x209693bc6afc0c5328ba36faf03c514ef312287c",
            "valid_before": 1_800_000_060u64,
            "at_ms": 1_800_000_000_000u64,
            "idempotency_key": "k",
            "request_hash": "00".repeat(32),
            "payload_json": r#"{"x402Version":2,"payload":{},"accepted":{"scheme":"exact","network":"eip155:84532"}}"#,
            "accepted_index": 0,
            "charged": "0.01",
            "asset_symbol": "USDC",
            "session_spent": "0.01",
            "session_remaining": "0.99",
            "payer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        })
    }

    fn recovered(record: &serde_json::Value) -> DurableSpend {
        let bytes = Zeroizing::new(serde_json::to_vec(record).unwrap());
        match super::super::records::from_json::<Entry>("journal", &bytes).unwrap() {
            Entry::Spend(s) => {
                DurableSpend(Arc::from(s), RecordRef { index: 0, offset: 0, len: 0 }, [0; 32])
            }
            Entry::Withheld { .. } => panic!("a spend record"),
        }
    }

    /// Records written before v1 support stay readable, and are v2 payments.
    #[test]
    fn a_legacy_spend_record_is_read_as_x402_v2() {
        let resp = recovered(&legacy_record()).response();
        assert_eq!(resp.x402_version, 2);
        assert_eq!(resp.accepted_json, r#"{"scheme":"exact","network":"eip155:84532"}"#);
        assert_eq!(resp.charged, "0.01");
    }

    /// A v1 spend keeps its version and its option across the log (replays after a restart
    /// answer with `X-PAYMENT`'s version and the option paid).
    #[test]
    fn a_v1_spend_record_round_trips_its_version_and_option() {
        let mut v1 = legacy_record();
        v1["x402_version"] = 1.into();
        v1["accepted_json"] = r#"{"network":"base-sepolia"}"#.into();
        v1["payload_json"] =
            r#"{"x402Version":1,"scheme":"exact","network":"base-sepolia","payload":{}}"#.into();
        let spend = recovered(&v1);
        let resp = spend.response();
        assert_eq!(resp.x402_version, 1);
        assert_eq!(resp.accepted_json, r#"{"network":"base-sepolia"}"#);
        // Written back as it was read.
        let again: serde_json::Value =
            serde_json::from_slice(&json(&Entry::Spend(Box::new((*spend.0).clone())))).unwrap();
        assert_eq!(again["x402_version"], 1);
        assert_eq!(again["accepted_json"], v1["accepted_json"]);
        let v2_written: serde_json::Value = serde_json::from_slice(&json(&Entry::Spend(Box::new(
            (*recovered(&legacy_record()).0).clone(),
        ))))
        .unwrap();
        assert_eq!(v2_written["x402_version"], 2);
        assert!(v2_written.get("accepted_json").is_none(), "v2 records do not repeat accepted");
    }
}
