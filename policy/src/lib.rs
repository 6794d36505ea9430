//! Pure policy engine and x402 payment types for the agent wallet.
//!
//! * [`x402`]: decoding `PAYMENT-REQUIRED`, building `PAYMENT-SIGNATURE` exactly as the official
//!   client does.
//! * [`eip712`]: EIP-3009 `TransferWithAuthorization` typed-data hashing.
//! * [`registry`]: which assets may be signed for, with their EIP-712 domains.
//! * [`rules`]: the decision (default deny, ordered rules, per-payment limits, session caps,
//!   time-window budgets, rate limits, payee lists, KYT, approval holds), with stable reason codes.
//! * [`document`]: the policy file (TOML) an owner writes, compiled and checked.
//! * [`window`]: rolling time-window sums for budgets and rate limits.
//! * [`share`]: limits shared by several enclave processes through grants kept in one book.
//! * [`amount`]: money as integers.
//!
//! This crate does no I/O, reads no clock (time is a parameter) and holds no keys. It depends on
//! no other crate of ours: the enclave and the host both use it, and what crosses the trust
//! boundary (reason codes, signed bytes, frames) lives in `wallet-proto`.
#![forbid(unsafe_code)]

pub mod address;
pub mod amount;
pub mod audit;
pub mod document;
pub mod eip712;
pub mod registry;
pub mod rules;
pub mod share;
pub mod window;
pub mod x402;

pub use alloy_primitives::{Address, B256, U256};
