#!/usr/bin/env bash
# A million-entry KYT list, measured (tests/src/bin/kyt-scale.rs): `walletctl kyt import` wall
# time and exit code, the simulated enclave's peak and resident memory during the import and at
# rest, its start-up time with the list, and screening after the restart. Release binaries.
#   KYT_ENTRIES   entries (default 1000000)
# Figures: BENCHMARKS.md, "A million-entry KYT list".
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins --features wallet-enclave/simulated
exec target/release/kyt-scale "$@"
