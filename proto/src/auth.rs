//! What agents and admins sign, built in one place for both ends of the trust boundary.
//!
//! * A session key (Ed25519) signs [`sign_payment_message`]: a canonical, unambiguous encoding
//!   of the whole `SignPaymentRequest`, so a relaying host can neither forge nor alter it. The
//!   agent's read-only calls are signed the same way, each under its own domain tag
//!   ([`get_budget_message`], [`list_payments_message`], [`preview_payment_message`]), so a
//!   signature made for one RPC is useless for another; [`SessionSigned`] is what they share.
//! * An admin key (Ed25519) signs [`AdminSigned::signed_message`]: the enclave's identity, the
//!   [`AdminRpc`], a timestamp, a nonce and the request's protobuf encoding without `auth`.
//!
//! Encoding: a domain tag, then each variable field as a 4-byte big-endian length and its
//! bytes, in a fixed order; timestamps as 8 bytes big-endian. Never JSON.

use prost::Message;

use crate::gateway::v1 as gw;

/// Domain tag of session signatures over payment requests.
pub const SIGN_PAYMENT_TAG: &[u8] = b"x402-wallet/sign-payment/v1\0";

/// Domain tag of session signatures over `GetBudget` requests.
pub const GET_BUDGET_TAG: &[u8] = b"x402-wallet/get-budget/v1\0";

/// Domain tag of session signatures over `ListPayments` requests.
pub const LIST_PAYMENTS_TAG: &[u8] = b"x402-wallet/list-payments/v1\0";

/// Domain tag of session signatures over `PreviewPayment` requests.
pub const PREVIEW_PAYMENT_TAG: &[u8] = b"x402-wallet/preview-payment/v1\0";

/// Domain tag of admin signatures.
pub const ADMIN_TAG: &[u8] = b"x402-wallet/admin/v1\0";

/// Largest difference accepted between a signed request's timestamp and the enclave's clock,
/// in milliseconds (both for agents and admins).
pub const FRESHNESS_WINDOW_MS: u64 = 120_000;

fn push(buf: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(field);
}

/// The bytes a session key signs for `r`: every field of the request except `signature`.
#[must_use]
pub fn sign_payment_message(r: &gw::SignPaymentRequest) -> Vec<u8> {
    let mut buf = Vec::with_capacity(SIGN_PAYMENT_TAG.len() + r.payment_required.len() + 160);
    buf.extend_from_slice(SIGN_PAYMENT_TAG);
    push(&mut buf, r.session_id.as_bytes());
    push(&mut buf, r.payment_required.as_bytes());
    push(&mut buf, r.preferred_network.as_bytes());
    push(&mut buf, r.preferred_asset.as_bytes());
    push(&mut buf, r.idempotency_key.as_bytes());
    buf.extend_from_slice(&r.timestamp_ms.to_be_bytes());
    push(&mut buf, &r.request_nonce);
    buf
}

/// The bytes a session key signs for a `GetBudgetRequest`: [`GET_BUDGET_TAG`], the session id,
/// the timestamp and the nonce.
#[must_use]
pub fn get_budget_message(r: &gw::GetBudgetRequest) -> Vec<u8> {
    let mut buf = Vec::with_capacity(GET_BUDGET_TAG.len() + 128);
    buf.extend_from_slice(GET_BUDGET_TAG);
    push(&mut buf, r.session_id.as_bytes());
    buf.extend_from_slice(&r.timestamp_ms.to_be_bytes());
    push(&mut buf, &r.request_nonce);
    buf
}

/// The bytes a session key signs for a `ListPaymentsRequest`: [`LIST_PAYMENTS_TAG`], the
/// session id, the limit (4 bytes big-endian), the timestamp and the nonce.
#[must_use]
pub fn list_payments_message(r: &gw::ListPaymentsRequest) -> Vec<u8> {
    let mut buf = Vec::with_capacity(LIST_PAYMENTS_TAG.len() + 128);
    buf.extend_from_slice(LIST_PAYMENTS_TAG);
    push(&mut buf, r.session_id.as_bytes());
    buf.extend_from_slice(&r.limit.to_be_bytes());
    buf.extend_from_slice(&r.timestamp_ms.to_be_bytes());
    push(&mut buf, &r.request_nonce);
    buf
}

/// The bytes a session key signs for a `PreviewPaymentRequest`: [`PREVIEW_PAYMENT_TAG`], then
/// the fields of [`sign_payment_message`] without the idempotency key.
#[must_use]
pub fn preview_payment_message(r: &gw::PreviewPaymentRequest) -> Vec<u8> {
    let mut buf = Vec::with_capacity(PREVIEW_PAYMENT_TAG.len() + r.payment_required.len() + 160);
    buf.extend_from_slice(PREVIEW_PAYMENT_TAG);
    push(&mut buf, r.session_id.as_bytes());
    push(&mut buf, r.payment_required.as_bytes());
    push(&mut buf, r.preferred_network.as_bytes());
    push(&mut buf, r.preferred_asset.as_bytes());
    buf.extend_from_slice(&r.timestamp_ms.to_be_bytes());
    push(&mut buf, &r.request_nonce);
    buf
}

/// A request signed by a session key: what the enclave checks before it acts on one (the
/// signature over [`Self::signed_message`], the timestamp's freshness, the nonce used once) and
/// what a client fills in to sign one.
pub trait SessionSigned {
    /// The RPC's name as in `wallet.gateway.v1` (for messages and logs).
    const RPC: &'static str;
    /// The session that signs.
    fn session_id(&self) -> &str;
    /// Unix milliseconds when the agent signed.
    fn timestamp_ms(&self) -> u64;
    /// 16 to 64 random bytes, usable once.
    fn request_nonce(&self) -> &[u8];
    /// The Ed25519 signature (64 bytes).
    fn signature(&self) -> &[u8];
    /// The signature, to fill in.
    fn signature_mut(&mut self) -> &mut Vec<u8>;
    /// The bytes the session key signs: the RPC's own domain tag, then every field but the
    /// signature.
    fn signed_message(&self) -> Vec<u8>;
}

macro_rules! session_signed {
    ($($t:ident => $rpc:literal, $message:ident;)*) => {$(
        impl SessionSigned for gw::$t {
            const RPC: &'static str = $rpc;
            fn session_id(&self) -> &str {
                &self.session_id
            }
            fn timestamp_ms(&self) -> u64 {
                self.timestamp_ms
            }
            fn request_nonce(&self) -> &[u8] {
                &self.request_nonce
            }
            fn signature(&self) -> &[u8] {
                &self.signature
            }
            fn signature_mut(&mut self) -> &mut Vec<u8> {
                &mut self.signature
            }
            fn signed_message(&self) -> Vec<u8> {
                $message(self)
            }
        }
    )*};
}

session_signed! {
    SignPaymentRequest => "SignPayment", sign_payment_message;
    GetBudgetRequest => "GetBudget", get_budget_message;
    ListPaymentsRequest => "ListPayments", list_payments_message;
    PreviewPaymentRequest => "PreviewPayment", preview_payment_message;
}

macro_rules! admin_rpcs {
    ($( $(#[doc = $doc:literal])* $variant:ident, )*) => {
        /// A state-changing RPC. Its name is part of what an admin signs, so a signature for one
        /// RPC is useless for another (`AddKyt` and `RemoveKyt` share a message).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum AdminRpc {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl AdminRpc {
            /// Every admin RPC.
            pub const ALL: &'static [AdminRpc] = &[$(AdminRpc::$variant,)*];

            /// The RPC's name as in `wallet.gateway.v1`, e.g. `"SetPolicy"`: the signed name.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(AdminRpc::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

admin_rpcs! {
    /// `CreateWallet`
    CreateWallet,
    /// `SetPolicy`
    SetPolicy,
    /// `AddAsset`
    AddAsset,
    /// `AddKyt`
    AddKyt,
    /// `RemoveKyt`
    RemoveKyt,
    /// `ImportKyt`
    ImportKyt,
    /// `IssueSession`
    IssueSession,
    /// `RevokeSession`
    RevokeSession,
    /// `FreezeWallet`
    FreezeWallet,
    /// `UnfreezeWallet`
    UnfreezeWallet,
    /// `AddAdmin`
    AddAdmin,
    /// `RemoveAdmin`
    RemoveAdmin,
    /// `DecideApproval`
    DecideApproval,
    /// `PrepareAnchor`
    PrepareAnchor,
    /// `ProvisionAnchor`
    ProvisionAnchor,
}

impl std::fmt::Display for AdminRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state-changing admin request with an `auth` field.
pub trait AdminSigned: Message + Clone {
    /// The `auth` field.
    fn auth(&self) -> Option<&gw::AdminAuth>;
    /// The `auth` field, to fill in.
    fn auth_mut(&mut self) -> &mut Option<gw::AdminAuth>;
    /// The protobuf encoding of the request with `auth` unset: what the signature covers.
    /// prost's encoding of a given message is deterministic and drops unknown fields, so
    /// anything a relay adds, drops or changes breaks the signature.
    fn unsigned_bytes(&self) -> Vec<u8> {
        let mut c = self.clone();
        *c.auth_mut() = None;
        c.encode_to_vec()
    }
    /// The bytes an admin key signs: [`ADMIN_TAG`], the enclave's identity (its Ed25519 identity
    /// public key), `rpc`'s name, `timestamp_ms`, `nonce` and [`Self::unsigned_bytes`].
    fn signed_message(
        &self,
        enclave_id: &[u8],
        rpc: AdminRpc,
        timestamp_ms: u64,
        nonce: &[u8],
    ) -> Vec<u8> {
        let unsigned = self.unsigned_bytes();
        let rpc = rpc.as_str();
        let mut buf = Vec::with_capacity(ADMIN_TAG.len() + rpc.len() + 96 + unsigned.len());
        buf.extend_from_slice(ADMIN_TAG);
        push(&mut buf, enclave_id);
        buf.extend_from_slice(rpc.as_bytes());
        buf.push(0);
        buf.extend_from_slice(&timestamp_ms.to_be_bytes());
        push(&mut buf, nonce);
        buf.extend_from_slice(&unsigned);
        buf
    }
}

macro_rules! admin_signed {
    ($($t:ident),* $(,)?) => {$(
        impl AdminSigned for gw::$t {
            fn auth(&self) -> Option<&gw::AdminAuth> {
                self.auth.as_ref()
            }
            fn auth_mut(&mut self) -> &mut Option<gw::AdminAuth> {
                &mut self.auth
            }
        }
    )*};
}

admin_signed! {
    CreateWalletRequest,
    SetPolicyRequest,
    AddAssetRequest,
    KytRequest,
    IssueSessionRequest,
    RevokeSessionRequest,
    FreezeWalletRequest,
    AddAdminRequest,
    RemoveAdminRequest,
    ImportKytRequest,
    DecideApprovalRequest,
    PrepareAnchorRequest,
    ProvisionAnchorRequest,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> gw::SignPaymentRequest {
        gw::SignPaymentRequest {
            session_id: "s".into(),
            payment_required: "ab".into(),
            idempotency_key: "k".into(),
            timestamp_ms: 1,
            request_nonce: vec![1],
            ..Default::default()
        }
    }

    #[test]
    fn payment_fields_cannot_be_shifted_between_each_other() {
        let a = req();
        let b = gw::SignPaymentRequest {
            payment_required: "a".into(),
            preferred_network: "b".into(),
            ..req()
        };
        assert_ne!(sign_payment_message(&a), sign_payment_message(&b));
        let c = gw::SignPaymentRequest { timestamp_ms: 2, ..req() };
        assert_ne!(sign_payment_message(&a), sign_payment_message(&c));
        assert!(sign_payment_message(&a).starts_with(SIGN_PAYMENT_TAG));
        // The signature itself is not signed.
        let d = gw::SignPaymentRequest { signature: vec![9; 64], ..req() };
        assert_eq!(sign_payment_message(&a), sign_payment_message(&d));
    }

    #[test]
    fn each_session_signed_rpc_has_its_own_domain() {
        let budget = gw::GetBudgetRequest {
            session_id: "s".into(),
            timestamp_ms: 1,
            request_nonce: vec![1; 16],
            signature: vec![],
        };
        let list = gw::ListPaymentsRequest {
            session_id: "s".into(),
            limit: 0,
            timestamp_ms: 1,
            request_nonce: vec![1; 16],
            signature: vec![],
        };
        let preview = gw::PreviewPaymentRequest {
            session_id: "s".into(),
            timestamp_ms: 1,
            request_nonce: vec![1; 16],
            ..Default::default()
        };
        let pay = gw::SignPaymentRequest {
            session_id: "s".into(),
            timestamp_ms: 1,
            request_nonce: vec![1; 16],
            ..Default::default()
        };
        let messages = [
            budget.signed_message(),
            list.signed_message(),
            preview.signed_message(),
            pay.signed_message(),
        ];
        for (i, a) in messages.iter().enumerate() {
            for b in &messages[i + 1..] {
                assert_ne!(a, b, "two RPCs sign the same bytes");
                // Not even a prefix of each other: the tags differ in their first bytes.
                assert!(!a.starts_with(b) && !b.starts_with(a));
            }
        }
        assert!(budget.signed_message().starts_with(GET_BUDGET_TAG));
        assert!(list.signed_message().starts_with(LIST_PAYMENTS_TAG));
        assert!(preview.signed_message().starts_with(PREVIEW_PAYMENT_TAG));
        // Every field is bound.
        let more = gw::ListPaymentsRequest { limit: 5, ..list.clone() };
        assert_ne!(list.signed_message(), more.signed_message());
        let other_net =
            gw::PreviewPaymentRequest { preferred_network: "eip155:1".into(), ..preview.clone() };
        assert_ne!(preview.signed_message(), other_net.signed_message());
        let later = gw::GetBudgetRequest { timestamp_ms: 2, ..budget.clone() };
        assert_ne!(budget.signed_message(), later.signed_message());
        // The signature is not signed.
        let signed = gw::GetBudgetRequest { signature: vec![9; 64], ..budget.clone() };
        assert_eq!(budget.signed_message(), signed.signed_message());
    }

    #[test]
    fn admin_messages_name_the_rpc_and_the_enclave() {
        let r = gw::KytRequest { auth: None, addresses: vec!["0x1".into()] };
        let add = r.signed_message(b"enclave", AdminRpc::AddKyt, 5, &[1; 16]);
        assert_ne!(add, r.signed_message(b"enclave", AdminRpc::RemoveKyt, 5, &[1; 16]));
        assert_ne!(add, r.signed_message(b"other", AdminRpc::AddKyt, 5, &[1; 16]));
        assert_ne!(add, r.signed_message(b"enclave", AdminRpc::AddKyt, 6, &[1; 16]));
        let mut signed = r.clone();
        signed.auth = Some(gw::AdminAuth { signature: vec![1; 64], ..Default::default() });
        assert_eq!(add, signed.signed_message(b"enclave", AdminRpc::AddKyt, 5, &[1; 16]));
        assert!(add.starts_with(ADMIN_TAG));
    }
}
