#!/usr/bin/env bash
# Checks what an enclave binary contains (used by scripts/test.sh).
#
#   scripts/check-enclave-build.sh production BIN   # a default build: no simulated platform, no
#                                                   # fault injection, and --simulated is refused
#   scripts/check-enclave-build.sh simulated BIN    # the dev/test build: both are there (this is
#                                                   # the control that shows the markers are real)
#
# Markers: type names of the simulated platform and of the journal's fault injection (in the
# symbol table), and strings only that code contains.
set -euo pipefail
mode="${1:?usage: $0 production|simulated BIN}"
bin="${2:?usage: $0 production|simulated BIN}"
[ -x "$bin" ] || { echo "check-enclave-build: $bin is not an executable" >&2; exit 1; }

markers=(
  "SimulatedNsm"                  # the simulated NSM
  "FileSealingKey"                # the sealing key in a file beside the data
  "SIMULATED ENCLAVE: keys are sealed with a key file" # the simulated start-up
  "injected fdatasync failure"    # journal fault injection
  "x402-wallet TEST ROOT"         # the TEST attestation root (the simulated NSM signs under it)
)
# In every build, used only when the enclave's own NSM signs under the test root (the simulated
# NSM, or QEMU's emulated one running the production binary: platform::kms::https): the simulated
# build must have it (control), the production build may.
simulated_only=("kms-sim TEST CA")
found=()
for m in "${markers[@]}"; do
  if grep -aqF -- "$m" "$bin"; then found+=("$m"); fi
done

case "$mode" in
  production)
    if [ "${#found[@]}" -ne 0 ]; then
      printf 'check-enclave-build: the default build of wallet-enclave contains simulation or fault-injection code:\n' >&2
      printf '  %s\n' "${found[@]}" >&2
      exit 1
    fi
    set +e
    out=$("$bin" --simulated --data-dir "$(mktemp -d)" 2>&1)
    code=$?
    set -e
    if [ "$code" -ne 2 ] || ! grep -q "production build" <<<"$out"; then
      echo "check-enclave-build: the default build did not refuse --simulated (exit $code): $out" >&2
      exit 1
    fi
    echo "check-enclave-build: $bin is a production build (no simulated platform, no fault injection; --simulated refused)"
    ;;
  simulated)
    for m in "${simulated_only[@]}"; do
      grep -aqF -- "$m" "$bin" || { echo "check-enclave-build: the simulated build lacks $m" >&2; exit 1; }
    done
    if [ "${#found[@]}" -ne "${#markers[@]}" ]; then
      echo "check-enclave-build: the simulated build lacks some markers (found: ${found[*]:-none}); the production check would prove nothing" >&2
      exit 1
    fi
    echo "check-enclave-build: $bin has the simulated platform and fault injection (as the tests need)"
    ;;
  *) echo "usage: $0 production|simulated BIN" >&2; exit 2 ;;
esac
