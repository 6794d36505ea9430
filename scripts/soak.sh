#!/usr/bin/env bash
# The soak (issue 14): the simulated stack at half its measured maximum throughput for 30 minutes,
# with sessions issued and revoked, policies changed and the enclave restarted (SIGTERM and
# SIGKILL) along the way; checks that no request fails that should not, that the ledger adds up
# and that resident memory and descriptors stay flat. Prints a summary; exits 1 on any violation.
# What it does and how "flat" is judged: tests/src/bin/soak.rs.
#
#   scripts/soak.sh                        # 30 minutes, release binaries (built first)
#   scripts/soak.sh --seconds 100 --debug  # CI: the debug binaries (a no-op build when CI built them)
#   SOAK_SECONDS=100 SOAK_PROFILE=debug scripts/soak.sh   # the same
#
# Options: --seconds N (or SOAK_SECONDS; at least 30), --debug / --release (or SOAK_PROFILE),
# --no-build (or SOAK_BUILD=0: run the binaries as they are). Other knobs are read by the binary:
# SOAK_RATE (a fixed rate instead of half the maximum), SOAK_RATE_FRACTION, SOAK_MEASURE_SECONDS,
# SOAK_SAMPLE_SECONDS, SOAK_IDEMPOTENCY_TTL, SOAK_RESTARTS, SOAK_KEEP_LOGS=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${SOAK_SECONDS:-1800}"
profile="${SOAK_PROFILE:-release}"
build="${SOAK_BUILD:-1}"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="${2:?--seconds takes a number}"; shift 2 ;;
    --seconds=*) seconds="${1#--seconds=}"; shift ;;
    --debug) profile=debug; shift ;;
    --release) profile=release; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "soak.sh: --seconds takes a whole number of seconds" >&2; exit 2 ;; esac
if [ "$seconds" -lt 30 ]; then echo "soak.sh: at least 30 seconds" >&2; exit 2; fi

case "$profile" in
  release)
    [ "$build" = 0 ] || cargo build --release --locked --workspace --bins --features wallet-enclave/simulated ;;
  debug)
    [ "$build" = 0 ] || cargo build --locked --workspace --bins --features wallet-enclave/simulated,wallet-enclave/fault-injection ;;
  *) echo "soak.sh: SOAK_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac

# The soak runs the binaries beside its own: copy the four aside, so that a build during the run
# (another `cargo build`) cannot swap the enclave under a restart.
bins=$(mktemp -d "${TMPDIR:-/tmp}/soak-bin.XXXXXX")
trap 'rm -rf "$bins"' EXIT
for b in soak wallet-enclave wallet-gateway walletctl; do
  [ -x "target/$profile/$b" ] || { echo "soak.sh: target/$profile/$b is not built" >&2; exit 2; }
  cp "target/$profile/$b" "$bins/"
done
bin="$bins/soak"
echo "soak.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), target/$profile/soak --seconds $seconds (copied to $bins), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
# Bounded even if the soak hangs: its own watchdog stops everything 300 s past the end; this is
# the last resort (SIGINT first: the soak stops its load and its stack; SIGKILL 60 s later).
status=0
timeout --signal=INT --kill-after=60 $((seconds + 420)) "$bin" --seconds "$seconds" || status=$?
echo "soak.sh: exit $status after $(( $(date +%s) - start )) s"
exit "$status"
