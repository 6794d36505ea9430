#!/usr/bin/env bash
# Runs the local simulated stack: the enclave (simulated NSM, Unix socket) and the gateway
# (gRPC on 127.0.0.1:7402). Ctrl-C stops both.
#
#   WALLET_DATA_DIR        state directory   (default: $XDG_DATA_HOME/agent-wallet or ~/.local/share/agent-wallet)
#   WALLET_GATEWAY_LISTEN  gateway address   (default: 127.0.0.1:7402)
#   PROFILE                cargo profile dir (default: release)
#
# A stack already running on the same data directory or address is detected before anything is
# built, and "ready" is printed only once both processes run and the gateway listens.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR="${WALLET_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/agent-wallet}"
LISTEN="${WALLET_GATEWAY_LISTEN:-127.0.0.1:7402}"
PROFILE="${PROFILE:-release}"
BIN="target/$PROFILE"
SOCK="$DATA_DIR/enclave.sock"
LOCK="$DATA_DIR/state/db" # the enclave's store holds an exclusive lock on it while it runs

fail() {
  echo "dev-up.sh: $*" >&2
  exit 1
}

# Whether an enclave runs on DATA_DIR: its store's lock is held (flock(1), util-linux), or else
# a process has the lock file open (fuser, lsof); without any of them, a socket that exists
# while the gateway address is taken is taken as a yes.
enclave_running() {
  [ -e "$LOCK" ] || return 1
  if command -v flock >/dev/null 2>&1; then
    local rc=0
    flock -n -E 75 "$LOCK" true 2>/dev/null || rc=$?
    [ "$rc" -eq 75 ]
  elif command -v fuser >/dev/null 2>&1; then
    fuser "$LOCK" >/dev/null 2>&1
  elif command -v lsof >/dev/null 2>&1; then
    lsof "$LOCK" >/dev/null 2>&1
  else
    [ -S "$SOCK" ] && port_taken
  fi
}

# Whether something accepts connections on LISTEN (host:port or [v6]:port).
port_taken() {
  local host="${LISTEN%:*}" port="${LISTEN##*:}"
  host="${host#[}"
  host="${host%]}"
  [ "$host" = "0.0.0.0" ] && host=127.0.0.1
  [ "$host" = "::" ] && host=::1
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

holders() {
  command -v fuser >/dev/null 2>&1 && fuser "$LOCK" 2>/dev/null | tr -s ' ' | sed 's/^ //' || true
}

# ---- 1. already running? (before building, so a second dev-up.sh says so at once) ----
if enclave_running; then
  pids="$(holders)"
  fail "a stack is already running on $DATA_DIR${pids:+ (enclave pid $pids)}: its enclave holds the data directory's lock.
  Use it (its gateway is the address it printed when it started: http://127.0.0.1:7402 unless WALLET_GATEWAY_LISTEN said otherwise),
  stop it (Ctrl-C in the shell that runs it${pids:+, or: kill $pids}),
  or run a second, separate stack: WALLET_DATA_DIR=/tmp/wallet2 WALLET_GATEWAY_LISTEN=127.0.0.1:7403 scripts/dev-up.sh"
fi
if port_taken; then
  fail "something already listens on $LISTEN (another stack's gateway?).
  Stop it, or give this stack another address: WALLET_GATEWAY_LISTEN=127.0.0.1:7403 scripts/dev-up.sh
  (then point walletctl at it: export WALLET_GATEWAY=http://127.0.0.1:7403)"
fi

# ---- 2. build ----
# The same build as scripts/bench.sh and the tests (whole workspace), so switching between them
# does not rebuild with other features. The enclave's simulated platform is a cargo feature, off
# in a default (production) build. Times: README.md, "Two commands".
if [ "$PROFILE" = release ]; then
  echo "building ($PROFILE; the first build takes ~5-10 minutes on a 2-core machine, later ones seconds)..." >&2
  cargo build --release --locked --workspace --bins --features wallet-enclave/simulated
else
  echo "building ($PROFILE; the first build takes several minutes on a 2-core machine, later ones seconds)..." >&2
  cargo build --locked --workspace --bins --features wallet-enclave/simulated
fi

mkdir -p "$DATA_DIR"
chmod 700 "$DATA_DIR"
# The build took a while: look again.
enclave_running && fail "a stack started on $DATA_DIR while this one was building; stop one of them"
# No enclave holds the lock, so a socket left here is stale (a killed stack).
[ -S "$SOCK" ] && rm -f "$SOCK"

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped." >&2
}
trap 'cleanup; exit 0' INT TERM # Ctrl-C is how this stack is stopped
trap cleanup EXIT

# ---- 3. start, and check each process really runs ----
"$BIN/wallet-enclave" --simulated --data-dir "$DATA_DIR" --socket "$SOCK" &
pids+=($!)
for _ in $(seq 1 300); do
  kill -0 "${pids[0]}" 2>/dev/null || fail "the enclave failed to start (its error is above); nothing is running"
  [ -S "$SOCK" ] && break
  sleep 0.1
done
[ -S "$SOCK" ] || fail "the enclave did not open $SOCK within 30 s; nothing is running"

GATEWAY_OUT="$(mktemp "${TMPDIR:-/tmp}/wallet-gateway.XXXXXX")"
"$BIN/wallet-gateway" --listen "$LISTEN" --enclave-socket "$SOCK" --data-dir "$DATA_DIR" >"$GATEWAY_OUT" &
pids+=($!)
URL=""
for _ in $(seq 1 300); do
  kill -0 "${pids[1]}" 2>/dev/null || break
  URL="$(sed -n 's/^wallet-gateway listening on //p' "$GATEWAY_OUT")"
  [ -n "$URL" ] && break
  sleep 0.1
done
rm -f "$GATEWAY_OUT"
kill -0 "${pids[1]}" 2>/dev/null || fail "the gateway failed to start on $LISTEN (its error is above); nothing is running"
[ -n "$URL" ] || fail "the gateway did not start listening on $LISTEN within 30 s; nothing is running"
kill -0 "${pids[0]}" 2>/dev/null || fail "the enclave stopped (its error is above); nothing is running"

EXPORTS="export PATH=\"$PWD/$BIN:\$PATH\""
[ "$URL" = "http://127.0.0.1:7402" ] || EXPORTS="$EXPORTS WALLET_GATEWAY=$URL"
cat <<MSG

  Agent wallet — local SIMULATED stack, ready (development only, not for real funds)
  gateway (gRPC):  $URL
  enclave socket:  $SOCK
  data directory:  $DATA_DIR

  In another shell:   $EXPORTS; walletctl init --simulated
  Ctrl-C stops both.

MSG

# Stop when either process exits.
wait -n "${pids[@]}"
