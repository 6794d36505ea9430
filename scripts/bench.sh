#!/usr/bin/env bash
# Builds release binaries and runs the benchmark (raw k256 vs end-to-end SignPayment at 1 and 64
# clients). Record its output in BENCHMARKS.md with the date and machine.
# `scripts/bench.sh anchor`: the rollback anchor's cost (etcd on vs off, a leader change).
# `scripts/bench.sh group`: one wallet's budgets shared by two enclaves against one.
# Default mode also measures the floor (fdatasync, Ed25519 verify, an empty relayed RPC), the official
# @x402 client in process (node, tests/x402-compat) and an open loop at half the max, and ends with
# the issue-14 ratio lines. WALLET_BENCH_COMPARE=0 skips the full-policy comparison.
# `scripts/bench.sh profile`: payments under callgrind (see BENCHMARKS.md, "Toward the floor").
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins --features wallet-enclave/simulated
exec target/release/wallet-bench "$@"
