#!/usr/bin/env bash
# The test command (README, CI): format check, clippy with warnings as errors, the production
# enclave build check, every test, then the enclave image: built twice to show it reproducible,
# and booted under QEMU's emulated Nitro machine (WALLET_SKIP_NITRO=1 skips that last part).
# No system protoc is needed: protos are compiled by protox in proto/build.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The image builder is a workspace of its own (eif/).
cargo fmt --manifest-path eif/Cargo.toml -- --check
cargo clippy --manifest-path eif/Cargo.toml --target-dir target/eif-tool --all-targets --locked -- -D warnings
cargo test --manifest-path eif/Cargo.toml --target-dir target/eif-tool --locked
# The fuzz targets (fuzz/, a workspace of its own; instrumented builds in fuzz/target): each
# decoder of untrusted bytes fuzzed for 15 s over its committed corpus (scripts/fuzz-smoke.sh).
# (Clippy on fuzz/ is left to `cargo clippy --manifest-path fuzz/Cargo.toml --target-dir
# fuzz/target`: its check build would add minutes to every run.)
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
scripts/fuzz-smoke.sh
# The official x402 packages (pinned, offline at run time) for the compatibility test.
if [ -z "${WALLET_SKIP_X402_COMPAT:-}" ]; then
  command -v npm >/dev/null || { echo "npm is required for the official x402 check (or set WALLET_SKIP_X402_COMPAT=1)" >&2; exit 1; }
  npm ci --prefix tests/x402-compat --no-audit --no-fund --loglevel=error
  npm ci --prefix tests/x402-e2e --no-audit --no-fund --loglevel=error
  npm test --prefix tests/x402-compat --silent   # the harness itself: official vectors + tamper cases
fi
# A production build of the enclave (default features): lint it as built, and check it contains no
# simulated platform and no fault injection, and refuses --simulated.
cargo clippy -p wallet-enclave --locked -- -D warnings
cargo build -p wallet-enclave --bin wallet-enclave --locked
cp target/debug/wallet-enclave target/wallet-enclave.production
scripts/check-enclave-build.sh production target/wallet-enclave.production
# Production host binaries and verifier: the TEST attestation root is not in them, and the
# verifier built without `test-pki` refuses a document the test PKI signed.
cargo build -p wallet-host --bins --locked
cp target/debug/walletctl target/walletctl.production
cp target/debug/wallet-gateway target/wallet-gateway.production
scripts/check-test-root.sh production target/wallet-enclave.production target/walletctl.production target/wallet-gateway.production
cargo test -p wallet-attestation --locked
# The end-to-end tests start wallet-enclave, wallet-gateway and walletctl: `cargo test` alone does
# not build another package's binaries, so build them first (the enclave with its simulated
# platform, which the tests turn on; the control check shows the markers above are real).
cargo build --workspace --bins --locked --features wallet-enclave/simulated,wallet-enclave/fault-injection
scripts/check-enclave-build.sh simulated target/debug/wallet-enclave
scripts/check-test-root.sh simulated target/debug/wallet-enclave target/debug/walletctl
# The rollback anchor's tests run a 3-member etcd cluster (Debian's etcd-server).
scripts/etcd/install.sh
cargo test --workspace --locked
# The end-to-end suite again with the enclave's state on storage the host provides (the Nitro
# path: the gateway serves it, the enclave has no data directory of its own).
WALLET_E2E_STORAGE=host cargo test -p wallet-e2e --locked
# A short soak (about 2 minutes; the full one is 30: scripts/soak.sh): half the measured maximum
# rate with sessions issued and revoked, policies changed and the enclave restarted; no request
# may fail that should not, the ledger must add up, memory and descriptors must stay flat.
SOAK_SECONDS=100 SOAK_PROFILE=debug scripts/soak.sh
# The enclave image (scripts/build-eif.sh): the same sources give the same PCRs and bytes from
# another path and an empty target directory; then the image boots under QEMU's nitro-enclave
# machine, unseals through the KMS stand-in, pays, restarts, and a tampered image is refused.
if [ -z "${WALLET_SKIP_NITRO:-}" ]; then
  scripts/check-eif-reproducible.sh
  scripts/nitro-e2e.sh
fi
