#!/usr/bin/env bash
# Runs the local simulated stack: the enclave (simulated NSM, Unix socket) and the gateway
# (gRPC on 127.0.0.1:7402). Ctrl-C stops both.
#
#   WALLET_DATA_DIR        state directory   (default: $XDG_DATA_HOME/agent-wallet or ~/.local/share/agent-wallet)
#   WALLET_GATEWAY_LISTEN  gateway address   (default: 127.0.0.1:7402)
#   PROFILE                cargo profile dir (default: release)
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR="${WALLET_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/agent-wallet}"
LISTEN="${WALLET_GATEWAY_LISTEN:-127.0.0.1:7402}"
PROFILE="${PROFILE:-release}"
BIN="target/$PROFILE"

echo "building ($PROFILE)..." >&2
# The same build as scripts/bench.sh and the tests (whole workspace), so switching between them
# does not rebuild with other features. The enclave's simulated platform is a cargo feature, off
# in a default (production) build.
if [ "$PROFILE" = release ]; then
  cargo build --release --locked --workspace --bins --features wallet-enclave/simulated
else
  cargo build --locked --workspace --bins --features wallet-enclave/simulated
fi

mkdir -p "$DATA_DIR"
chmod 700 "$DATA_DIR"
SOCK="$DATA_DIR/enclave.sock"

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped." >&2
}
trap cleanup INT TERM EXIT

"$BIN/wallet-enclave" --simulated --data-dir "$DATA_DIR" --socket "$SOCK" &
pids+=($!)
for _ in $(seq 1 100); do
  [ -S "$SOCK" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "the enclave failed to start" >&2; exit 1; }
  sleep 0.1
done
[ -S "$SOCK" ] || { echo "the enclave did not open $SOCK" >&2; exit 1; }

"$BIN/wallet-gateway" --listen "$LISTEN" --enclave-socket "$SOCK" --data-dir "$DATA_DIR" >/dev/null &
pids+=($!)

cat <<MSG

  Agent wallet — local SIMULATED stack (development only, not for real funds)
  gateway (gRPC):  http://$LISTEN
  enclave socket:  $SOCK
  data directory:  $DATA_DIR

  In another shell:   export PATH="$PWD/$BIN:\$PATH"; walletctl init
  Ctrl-C stops both.

MSG

# Stop when either process exits.
wait -n "${pids[@]}"
