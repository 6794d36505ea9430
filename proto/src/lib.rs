//! Generated protobuf types for the wallet.
//!
//! * [`gateway::v1`]: the public gRPC API (`wallet.gateway.v1`). With feature `grpc`, also the
//!   tonic client and server.
//! * [`enclave::v1`]: the host<->enclave envelope (`wallet.enclave.v1`), protobuf in
//!   length-prefixed frames.
//!
//! Code is generated at build time by protox + tonic-prost-build; no `protoc` is needed.
#![allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]

/// Protobuf packages under `wallet`.
pub mod gateway {
    /// `wallet.gateway.v1`
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/wallet.gateway.v1.rs"));
    }
}

/// Host<->enclave messages.
pub mod enclave {
    /// `wallet.enclave.v1`
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/wallet.enclave.v1.rs"));
    }
}

/// Encoded `FileDescriptorSet` of every wallet proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wallet_descriptor.bin"));

/// A state-changing admin request with an `auth` field. What is signed also names the RPC
/// (`AddKyt` and `RemoveKyt` share a message), so a signature for one RPC is useless for another.
pub trait AdminSigned: prost::Message + Clone {
    /// The `auth` field.
    fn auth(&self) -> Option<&gateway::v1::AdminAuth>;
    /// The `auth` field, to fill in.
    fn auth_mut(&mut self) -> &mut Option<gateway::v1::AdminAuth>;
    /// The protobuf encoding of the request with `auth` unset: what the signature covers.
    fn unsigned_bytes(&self) -> Vec<u8> {
        let mut c = self.clone();
        *c.auth_mut() = None;
        c.encode_to_vec()
    }
}

macro_rules! admin_signed {
    ($($t:ident),* $(,)?) => {$(
        impl AdminSigned for gateway::v1::$t {
            fn auth(&self) -> Option<&gateway::v1::AdminAuth> {
                self.auth.as_ref()
            }
            fn auth_mut(&mut self) -> &mut Option<gateway::v1::AdminAuth> {
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

/// Version of the host<->enclave protocol spoken by this build.
pub const ENCLAVE_PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts on the host<->enclave link.
pub const MAX_FRAME: usize = 1 << 20;

/// Errors of the frame codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length exceeds [`MAX_FRAME`].
    TooLarge(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the {MAX_FRAME}-byte limit"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes a message as one frame: 4-byte big-endian length, then the protobuf bytes.
///
/// # Errors
/// [`FrameError::TooLarge`] when the message is larger than [`MAX_FRAME`]: such a frame is
/// never sent.
pub fn encode_frame<M: prost::Message>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(
        &u32::try_from(len).map_err(|_| FrameError::TooLarge(len))?.to_be_bytes(),
    );
    msg.encode(&mut buf).map_err(|_| FrameError::TooLarge(len))?;
    Ok(buf)
}

/// Reads the length of a frame from its 4-byte header, before anything is allocated.
///
/// # Errors
/// [`FrameError::TooLarge`] past [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use enclave::v1::{enclave_request::Body, EnclaveRequest};
    use gateway::v1::GetStatusRequest;
    use prost::Message as _;

    #[test]
    fn frame_round_trip_and_cap() {
        let req = EnclaveRequest {
            protocol_version: 1,
            request_id: 7,
            body: Some(Body::GetStatus(GetStatusRequest {})),
        };
        let f = encode_frame(&req).unwrap();
        let len = frame_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, f.len() - 4);
        assert_eq!(EnclaveRequest::decode(&f[4..]).unwrap(), req);
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()).is_err());
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
        let huge = gateway::v1::KytRequest { auth: None, addresses: vec!["x".repeat(1024); 1100] };
        assert!(matches!(encode_frame(&huge), Err(FrameError::TooLarge(_))));
    }
}
