//! What agents and admins sign, built in one place for both ends of the trust boundary.
//!
//! * A session key (Ed25519) signs [`sign_payment_message`]: a canonical, unambiguous encoding
//!   of the whole `SignPaymentRequest`, so a relaying host can neither forge nor alter it.
//! * An admin key (Ed25519) signs [`AdminSigned::signed_message`]: the enclave's identity, the
//!   [`AdminRpc`], a timestamp, a nonce and the request's protobuf encoding without `auth`.
//!
//! Encoding: a domain tag, then each variable field as a 4-byte big-endian length and its
//! bytes, in a fixed order; timestamps as 8 bytes big-endian. Never JSON.

use prost::Message;

use crate::gateway::v1 as gw;

/// Domain tag of session signatures over payment requests.
pub const SIGN_PAYMENT_TAG: &[u8] = b"x402-wallet/sign-payment/v1\0";

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
