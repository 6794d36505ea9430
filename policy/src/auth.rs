//! What a session key signs for `SignPayment`: a canonical, unambiguous encoding of the whole
//! request, so a relaying host can neither forge nor alter it.
//!
//! Encoding: the domain tag, then each field as a 4-byte big-endian length and its bytes, in a
//! fixed order; the timestamp as 8 bytes big-endian. Never JSON or protobuf bytes.

/// Domain tag; a signature for anything else never verifies here.
pub const SIGN_PAYMENT_TAG: &[u8] = b"x402-wallet/sign-payment/v1\0";

/// Maximum clock difference accepted between the agent's timestamp and the enclave, ms.
pub const FRESHNESS_WINDOW_MS: u64 = 120_000;

/// Fields of a payment request, as signed.
#[derive(Debug, Clone, Copy)]
pub struct SignPaymentFields<'a> {
    /// Session id.
    pub session_id: &'a str,
    /// `PAYMENT-REQUIRED` value, exact bytes.
    pub payment_required: &'a str,
    /// Preferred network, or empty.
    pub preferred_network: &'a str,
    /// Preferred asset, or empty.
    pub preferred_asset: &'a str,
    /// Idempotency key.
    pub idempotency_key: &'a str,
    /// Unix milliseconds.
    pub timestamp_ms: u64,
    /// Random request nonce.
    pub request_nonce: &'a [u8],
}

fn push(buf: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(field);
}

/// The bytes the session key signs.
#[must_use]
pub fn sign_payment_message(f: &SignPaymentFields<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(SIGN_PAYMENT_TAG.len() + f.payment_required.len() + 160);
    buf.extend_from_slice(SIGN_PAYMENT_TAG);
    push(&mut buf, f.session_id.as_bytes());
    push(&mut buf, f.payment_required.as_bytes());
    push(&mut buf, f.preferred_network.as_bytes());
    push(&mut buf, f.preferred_asset.as_bytes());
    push(&mut buf, f.idempotency_key.as_bytes());
    buf.extend_from_slice(&f.timestamp_ms.to_be_bytes());
    push(&mut buf, f.request_nonce);
    buf
}

/// Domain tag of admin signatures.
pub const ADMIN_TAG: &[u8] = b"x402-wallet/admin/v1\0";

/// The bytes an admin key signs for a state-changing request: the tag, the enclave's identity
/// (its audit public key), the RPC name, the timestamp, the nonce and the request's protobuf
/// encoding with its `auth` field unset.
#[must_use]
pub fn admin_message(
    enclave_id: &[u8],
    rpc: &str,
    timestamp_ms: u64,
    nonce: &[u8],
    unsigned_request: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(ADMIN_TAG.len() + rpc.len() + 32 + unsigned_request.len());
    buf.extend_from_slice(ADMIN_TAG);
    push(&mut buf, enclave_id);
    buf.extend_from_slice(rpc.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&timestamp_ms.to_be_bytes());
    push(&mut buf, nonce);
    buf.extend_from_slice(unsigned_request);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_be_shifted_between_each_other() {
        let a = SignPaymentFields {
            session_id: "s",
            payment_required: "ab",
            preferred_network: "",
            preferred_asset: "",
            idempotency_key: "k",
            timestamp_ms: 1,
            request_nonce: &[1],
        };
        let b = SignPaymentFields { payment_required: "a", preferred_network: "b", ..a };
        assert_ne!(sign_payment_message(&a), sign_payment_message(&b));
        let c = SignPaymentFields { timestamp_ms: 2, ..a };
        assert_ne!(sign_payment_message(&a), sign_payment_message(&c));
        assert!(sign_payment_message(&a).starts_with(SIGN_PAYMENT_TAG));
    }
}
