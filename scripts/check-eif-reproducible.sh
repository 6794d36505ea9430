#!/usr/bin/env bash
# Checks that the enclave image is reproducible: builds it twice from the same sources, the
# second time from a copy of them at another path with an empty cargo target directory, and
# compares the PCRs and the bytes of the binary, the ramdisks and the EIF.
#
#   scripts/check-eif-reproducible.sh
#
# The copy is the working tree's files that git tracks or would track (`git ls-files --cached
# --others --exclude-standard`), so uncommitted changes are in both builds. Takes one extra
# from-scratch release build of wallet-enclave (about 5 minutes on 2 cores). Exit 0 when both
# builds agree.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
say() { echo "check-eif-reproducible: $*" >&2; }
VERSION="$(git -C "$ROOT" describe --always --dirty)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/eif-repro.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
say "build 1: this checkout"
"$ROOT/scripts/build-eif.sh" --out "$WORK/one" --image-version "$VERSION" >"$WORK/one.json"
say "build 2: a copy of the sources in $WORK/src, target directory $WORK/target (from scratch)"
mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -c) | tar -x -C "$WORK/src"
NITRO_SIM_CACHE="${NITRO_SIM_CACHE:-$ROOT/target/nitro-sim}" CARGO_TARGET_DIR= \
  "$WORK/src/scripts/build-eif.sh" --out "$WORK/two" --image-version "$VERSION" --target-dir "$WORK/target" >"$WORK/two.json"
status=0
if cmp -s "$WORK/one.json" "$WORK/two.json"; then
  say "same PCRs: $(tr -d ' \n' <"$WORK/one.json")"
else
  say "the PCRs differ:"; diff "$WORK/one.json" "$WORK/two.json" >&2 || true; status=1
fi
for f in wallet-enclave app.cpio bootstrap.cpio wallet.eif; do
  if cmp -s "$WORK/one/$f" "$WORK/two/$f"; then
    say "same $f ($(sha256sum "$WORK/one/$f" | cut -c1-16)…)"
  else
    say "$f differs between the builds"; status=1
  fi
done
[ "$status" = 0 ] && say "reproducible" || say "NOT reproducible"
exit "$status"
