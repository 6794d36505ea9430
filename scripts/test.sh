#!/usr/bin/env bash
# The test command (README, CI): format check, clippy with warnings as errors, every test.
# No system protoc is needed: protos are compiled by protox in proto/build.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The official x402 packages (pinned, offline at run time) for the compatibility test.
if [ -z "${WALLET_SKIP_X402_COMPAT:-}" ]; then
  command -v npm >/dev/null || { echo "npm is required for the official x402 check (or set WALLET_SKIP_X402_COMPAT=1)" >&2; exit 1; }
  npm ci --prefix tests/x402-compat --no-audit --no-fund --loglevel=error
  npm test --prefix tests/x402-compat --silent   # the harness itself: official vectors + tamper cases
fi
# The end-to-end tests start wallet-enclave, wallet-gateway and walletctl: `cargo test` alone does
# not build another package's binaries, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
