//! Generated protobuf types for the wallet.
//!
//! * [`gateway::v1`]: the public gRPC API (`wallet.gateway.v1`). With feature `grpc`, also the
//!   tonic client and server.
//! * [`enclave::v1`]: the host<->enclave envelope (`wallet.enclave.v1`), protobuf in
//!   length-prefixed frames.
//! * [`storage::v1`]: storage the host provides to the enclave (`wallet.storage.v1`): reads,
//!   writes and syncs of a few whitelisted files, in the same frames.
//!
//! * [`reason`]: the stable reason codes of every error ([`Reason`]).
//! * [`answer`]: the enclave's signed answers (the envelope, end to end).
//! * [`attest`]: what an identity attestation document binds (`IdentityClaims`).
//! * [`auth`]: what session and admin keys sign ([`SessionSigned`], [`AdminRpc`],
//!   [`AdminSigned`]).
//! * [`frame`]: the host<->enclave frame codec used by both ends (with feature `io`, an async
//!   frame reader).
//!
//! This crate is the vocabulary of the trust boundary: the enclave, the gateway and every client
//! build what crosses it from here, and nothing else. It depends on prost (and, with features,
//! tonic and tokio's I/O traits) only.
//!
//! Code is generated at build time by protox + tonic-prost-build; no `protoc` is needed.

pub mod answer;
pub mod attest;
pub mod auth;
pub mod frame;
pub mod reason;

pub use auth::{AdminRpc, AdminSigned, SessionSigned};
pub use frame::{encode_frame, frame_len, FrameError, MAX_FRAME};
pub use reason::{Reason, ERROR_DOMAIN, REASON_METADATA};

/// Protobuf packages under `wallet`.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod gateway {
    /// `wallet.gateway.v1`
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/wallet.gateway.v1.rs"));
    }
}

/// Host<->enclave messages.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod enclave {
    /// `wallet.enclave.v1`
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/wallet.enclave.v1.rs"));
    }
}

/// Storage the host provides to the enclave.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod storage {
    /// `wallet.storage.v1`
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/wallet.storage.v1.rs"));
    }

    /// Version of the storage protocol spoken by this build.
    pub const STORAGE_PROTOCOL_VERSION: u32 = 1;

    /// The files the host stores for the enclave, by name (no paths): the state store's log, the
    /// spend journal, the audit log, the commit head, the KMS-wrapped sealing key (Nitro
    /// configuration) and the two ledger snapshot slots. Both ends refuse any other name.
    pub const FILES: [&str; 7] = [
        "state.log",
        "spends.journal",
        "audit.log",
        "commit.head",
        "sealing-key.kms",
        "ledger.snapshot.0",
        "ledger.snapshot.1",
    ];

    /// Largest `Read.length` and `Write.data` in bytes (a frame holds at most 1 MiB).
    pub const MAX_CHUNK: usize = 512 * 1024;
}

/// Encoded `FileDescriptorSet` of every wallet proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wallet_descriptor.bin"));

/// Version of the host<->enclave protocol spoken by this build.
pub const ENCLAVE_PROTOCOL_VERSION: u32 = 1;
