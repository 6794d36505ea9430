#!/usr/bin/env bash
# Checks whether binaries contain the project's TEST attestation root (used by scripts/test.sh).
#
#   scripts/check-test-root.sh production BIN...   # none may contain it: a production build must
#                                                  # never accept a document signed by the test PKI
#   scripts/check-test-root.sh simulated BIN...    # each must (the control: the marker is real)
#
# The marker is the test root certificate's subject, which is in its DER bytes
# (attestation/testdata/test-pki/root.der); the verifier compiles that certificate in only with
# the `test-pki` feature of wallet-attestation.
set -euo pipefail
mode="${1:?usage: $0 production|simulated BIN...}"
shift
[ "$#" -gt 0 ] || { echo "usage: $0 production|simulated BIN..." >&2; exit 2; }
marker="x402-wallet TEST ROOT"
for bin in "$@"; do
  [ -x "$bin" ] || { echo "check-test-root: $bin is not an executable" >&2; exit 1; }
  if grep -aqF -- "$marker" "$bin"; then has=1; else has=0; fi
  case "$mode" in
    production)
      [ "$has" -eq 0 ] || { echo "check-test-root: the production build $bin contains the TEST attestation root: it would accept simulated documents" >&2; exit 1; } ;;
    simulated)
      [ "$has" -eq 1 ] || { echo "check-test-root: $bin lacks the TEST root marker; the production check would prove nothing" >&2; exit 1; } ;;
    *) echo "usage: $0 production|simulated BIN..." >&2; exit 2 ;;
  esac
done
echo "check-test-root: $mode: $* as expected"
