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
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wallet_descriptor.bin"));

/// Version of the host<->enclave protocol spoken by this build.
pub const ENCLAVE_PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts on the host<->enclave link.
pub const MAX_FRAME: usize = 1 << 20;
