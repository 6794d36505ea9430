#!/usr/bin/env bash
# Fuzzes every decoder of untrusted bytes (issue 14): builds the cargo-fuzz targets in fuzz/ and
# runs each over its committed corpus, failing on any crash (a panic, a failed check, an input
# taking over 10 s, or over 2 GiB). Bounded: each run stops by itself after its time, and a
# `timeout` around it stops a hung one.
#
#   scripts/fuzz-smoke.sh              # CI smoke: every target for FUZZ_SECONDS (default 15) s;
#                                      # what it finds new goes to a scratch directory
#   scripts/fuzz-smoke.sh --long       # every target for 600 s (FUZZ_SECONDS overrides), new
#                                      # inputs kept in fuzz/corpus/<target> (then `cargo fuzz
#                                      # cmin <target>` to minimize it)
#   scripts/fuzz-smoke.sh --seed       # (re)writes the seeds the targets generate into
#                                      # fuzz/corpus/<target> (admin_request also frame_codec's)
#   scripts/fuzz-smoke.sh ... TARGET…  # only these targets
#
# Toolchain: nightly if rustup has it, else stable. The targets are built without a sanitizer
# (`-s none`: safe Rust; panics, overflow checks and debug assertions are what fail), which
# needs no unstable flag, so stable works as it is. FUZZ_SANITIZER=address asks for ASan, which
# on stable needs RUSTC_BOOTSTRAP=1 (set here then). Builds go to fuzz/target; crashes to
# fuzz/artifacts/<target>/ (reproduce one with `cargo fuzz run -s none <target> <file>`).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=smoke
targets=()
for a in "$@"; do
  case "$a" in
    --long) mode=long ;;
    --seed) mode=seed ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "fuzz-smoke: unknown option $a" >&2; exit 2 ;;
    *) targets+=("$a") ;;
  esac
done
case "$mode" in
  long) seconds="${FUZZ_SECONDS:-600}" ;;
  *) seconds="${FUZZ_SECONDS:-15}" ;;
esac
sanitizer="${FUZZ_SANITIZER:-none}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

toolchain=()
if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  if command -v rustup >/dev/null 2>&1; then toolchain=(+stable); fi
  if [ "$sanitizer" != none ]; then export RUSTC_BOOTSTRAP=1; fi
fi
fuzz=(cargo "${toolchain[@]}" fuzz)
build_flags=(--target-dir fuzz/target -s "$sanitizer")

if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <("${fuzz[@]}" list)
fi

start=$(date +%s)
echo "fuzz-smoke: building ${#targets[@]} targets ($("${fuzz[@]}" --version 2>/dev/null || echo cargo-fuzz), $(rustc "${toolchain[@]}" --version), sanitizer $sanitizer)"
"${fuzz[@]}" build "${build_flags[@]}"
built=$(date +%s)
echo "fuzz-smoke: built in $((built - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The admin-request target opens a simulated enclave in a temporary directory it cannot remove.
export TMPDIR="$scratch"
logs=fuzz/target/fuzz-logs
mkdir -p "$logs"

failed=()
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  log="$logs/$t.log"
  if [ "$mode" = seed ]; then
    mkdir -p "$scratch/empty-$t"
    WALLET_FUZZ_SEED_DIR="$corpus" WALLET_FUZZ_FRAME_SEED_DIR=fuzz/corpus/frame_codec \
      "${fuzz[@]}" run "${build_flags[@]}" "$t" "$scratch/empty-$t" -- -runs=0 >"$log" 2>&1 \
      || { echo "fuzz-smoke: $t failed writing its seeds (see $log)" >&2; failed+=("$t"); continue; }
    echo "fuzz-smoke: $t: $(find "$corpus" -type f | wc -l) files in $corpus"
    continue
  fi
  dirs=("$corpus")
  if [ "$mode" = smoke ]; then
    mkdir -p "$scratch/new-$t"
    dirs=("$scratch/new-$t" "$corpus")
  fi
  set +e
  timeout --kill-after=10 $((seconds + 300)) "${fuzz[@]}" run "${build_flags[@]}" "$t" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
  code=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ "$code" -ne 0 ]; then
    echo "fuzz-smoke: $t FAILED (exit $code) after ${execs:-?} executions; the log:" >&2
    tail -n 40 "$log" >&2
    failed+=("$t")
  else
    echo "fuzz-smoke: $t ok: ${seconds} s, ${execs:-?} executions (${rate:-?}/s), ${cov:-cov ?}, corpus $(find "$corpus" -type f | wc -l) files"
  fi
done

echo "fuzz-smoke: total $(( $(date +%s) - start )) s"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz-smoke: failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
