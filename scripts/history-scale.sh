#!/usr/bin/env bash
# What a long history costs at start-up (tests/src/bin/history-scale.rs): HISTORY_PAYMENTS
# payments (default 1000000) through the release stack, then the enclave's start-up time, peak and
# resident memory, and the sizes of the files it reads. Figures: BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins --features wallet-enclave/simulated
WALLET_E2E_START_SECS="${WALLET_E2E_START_SECS:-600}" exec target/release/history-scale "$@"
