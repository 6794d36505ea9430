#!/usr/bin/env bash
# The test command (README, CI): format check, clippy with warnings as errors, every test.
# No system protoc is needed: protos are compiled by protox in proto/build.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Builds every binary too: the end-to-end tests start wallet-enclave, wallet-gateway, walletctl.
cargo test --workspace --locked
