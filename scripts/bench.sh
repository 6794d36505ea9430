#!/usr/bin/env bash
# Builds release binaries and runs the benchmark (raw k256 vs end-to-end SignPayment at 1 and 64
# clients). Record its output in BENCHMARKS.md with the date and machine.
# `scripts/bench.sh anchor`: the rollback anchor's cost (etcd on vs off, a leader change).
# `scripts/bench.sh group`: one wallet's budgets shared by two enclaves against one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins --features wallet-enclave/simulated
exec target/release/wallet-bench "$@"
