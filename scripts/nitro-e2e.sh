#!/usr/bin/env bash
# Boots the wallet's enclave image (EIF) under QEMU's `nitro-enclave` machine (software
# emulation, TCG) and pays through it, end to end:
#
#   scripts/nitro-e2e.sh [--keep]      (--keep: leave the run directory for inspection)
#
# What runs: the production wallet-enclave binary, byte for byte the one in the image that
# scripts/build-eif.sh builds, as /init of that image; QEMU's emulated NSM signing its attestation
# documents with the project's TEST chain (scripts/nitro-sim/qemu/); vhost-device-vsock mapping
# the guest's vsock to Unix sockets (no AF_VSOCK on this machine); on the host side,
# wallet-gateway (agents' gRPC, the enclave's storage, its boot configuration and its KMS relay)
# and wallet-kms-sim, the KMS stand-in that enforces the key policy's PCR conditions.
#
# Scenarios, in four boots:
#   boot 1  the image starts, unseals through KMS (the policy pins its PCRs); walletctl init
#           verifies the emulated NSM's signed document against build-eif.sh's PCRs, the KMS key
#           and the service id; a payment is signed and the official x402 verifier accepts it.
#           walletctl anchor provision: the enclave's TLS to a 3-member etcd (mutual TLS, on this
#           machine) crosses the gateway's relays on vsock; its first head is written there.
#   boot 2  the same image, stopped and booted again from the state the host kept: same identity,
#           the spend still counted, the next payment counted on top; the anchor serving.
#   boot 2b the host puts back its copy of the state from after boot 1: the image refuses to
#           sign (ROLLED BACK against the head in etcd), and walletctl status says so.
#   boot 3  an image whose app ramdisk differs (one extra file: PCR2 and PCR0 change): KMS
#           refuses it the sealing key, and the enclave halts without serving.
#   boot 4  the same tampered image with a KMS key whose policy names ITS PCRs (a host that
#           controls its own KMS key): it serves, and walletctl init refuses it on PCR2.
# Each check prints "ok - ..." or "FAIL - ..."; the last line is "nitro-e2e: N passed, M failed",
# and the exit code is 0 only when nothing failed. QEMU is stopped over QMP (and killed by PID if
# it does not go); every process the script starts is stopped on exit.
#
# Needs: scripts/nitro-sim/install.sh (run here; cached under NITRO_SIM_CACHE, default
# target/nitro-sim), Node.js with tests/x402-compat's packages (npm ci, run here when missing).
# Takes about 10 minutes the first time on 2 cores (QEMU, vhost backend, kernel, image), then
# 2–4 minutes (the boots under TCG).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
export NITRO_SIM_CACHE="${NITRO_SIM_CACHE:-$ROOT/target/nitro-sim}"
RUN="$(mktemp -d "${TMPDIR:-/tmp}/nitro-e2e.XXXXXX")"
say() { echo "nitro-e2e: $*" >&2; }
PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); echo "ok - $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL - $*"; }
# check NAME COMMAND...: runs the command, its output in $RUN/check.out.
check() {
  local name="$1"; shift
  if "$@" >"$RUN/check.out" 2>&1; then ok "$name"; else fail "$name"; sed 's/^/    /' "$RUN/check.out" | tail -20; fi
}

PIDS=()
cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ] || [ "$code" != 0 ]; then say "run directory kept: $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT

# --- What the emulation needs, the images, the host binaries -----------------------------------
say "preparing the emulation (scripts/nitro-sim/install.sh)"
eval "$("$ROOT/scripts/nitro-sim/install.sh" --print-env)"   # QEMU, VHOST_DEVICE_VSOCK, KERNEL_DIR
say "building the image (scripts/build-eif.sh)"
"$ROOT/scripts/build-eif.sh" --out "$RUN/eif/good" >"$RUN/good.json"
echo "tampered: one extra file in the app ramdisk" >"$RUN/tampered.txt"
"$ROOT/scripts/build-eif.sh" --out "$RUN/eif/tampered" --app-file "$RUN/tampered.txt=etc/tampered" >"$RUN/tampered.json"
pcr() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Measurements"][sys.argv[2]])' "$1" "$2"; }
GOOD="$RUN/eif/good/wallet.pcrs.json"
BAD="$RUN/eif/tampered/wallet.pcrs.json"
check "the image's /init is the production build (no simulated platform; --simulated refused)" \
  "$ROOT/scripts/check-enclave-build.sh" production "$RUN/eif/good/wallet-enclave"
check "the tampered image has another PCR0 and PCR2, and the same PCR1 (kernel, boot ramdisk)" \
  test "$(pcr "$GOOD" PCR2)" != "$(pcr "$BAD" PCR2)" -a "$(pcr "$GOOD" PCR0)" != "$(pcr "$BAD" PCR0)" \
       -a "$(pcr "$GOOD" PCR1)" = "$(pcr "$BAD" PCR1)"

say "building the host side (gateway, walletctl, kms-sim: development builds that know the test root)"
(cd "$ROOT" && cargo build --quiet --workspace --bins --features wallet-enclave/simulated,wallet-enclave/fault-injection)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
if [ ! -d "$ROOT/tests/x402-compat/node_modules" ]; then (cd "$ROOT/tests/x402-compat" && npm ci --silent); fi

# The rollback anchor: a 3-member etcd with mutual TLS on 127.0.0.1 (wallet-etcd-cluster, the
# tests' harness), the enclave's user granted its prefix. The gateway relays the guest's vsock
# ports 8101-8103 to the members.
"$ROOT/scripts/etcd/install.sh" >/dev/null
"$BIN/wallet-etcd-cluster" --dir "$RUN/etcd" --members 3 --grant "wallet-nitro=/x402-wallet/nitro/" \
  >"$RUN/etcd.out" 2>"$RUN/etcd.log" &
PIDS+=($!)
for _ in $(seq 600); do grep -qx ready "$RUN/etcd.out" 2>/dev/null && break; sleep 0.1; done
grep -qx ready "$RUN/etcd.out" || { say "etcd did not start:"; tail -20 "$RUN/etcd.log" >&2; exit 1; }
mapfile -t ETCD <"$RUN/etcd/endpoints"

# --- Host processes ----------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_kms NAME MEASUREMENTS: a kms-sim whose key policy pins MEASUREMENTS' PCR0..2; sets
# KMS_PORT, KMS_ARN and the AWS_* credentials.
start_kms() {
  local name="$1" measurements="$2"
  # The parent role and key administrator of kms-sim's test account (TEST_PRINCIPAL, TEST_KEY_ADMIN).
  "$BIN/wallet-kms-sim" --print-policy --measurements "$measurements" \
    --principal arn:aws:iam::111122223333:role/wallet-enclave-parent \
    --key-admin arn:aws:iam::111122223333:role/wallet-key-admin >"$RUN/$name-policy.json"
  "$BIN/wallet-kms-sim" --policy "$RUN/$name-policy.json" --state "$RUN/$name-key.json" \
    >"$RUN/$name.out" 2>"$RUN/$name.log" &
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$RUN/$name.out" ] && break; sleep 0.1; done
  local line; line="$(head -1 "$RUN/$name.out")"
  KMS_PORT="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["listen"].rsplit(":",1)[1])' "$line")"
  KMS_ARN="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key_arn"])' "$line")"
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  AWS_ACCESS_KEY_ID="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["access_key_id"])' "$line")"
  AWS_SECRET_ACCESS_KEY="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["secret_access_key"])' "$line")"
}

SERVICE="nitro-e2e-wallet"
GATEWAY_PID=""
# start_gateway DATA_DIR: the gateway, serving agents on 127.0.0.1:$GATEWAY_PORT and the
# enclave's storage, boot configuration and KMS relay on the vhost backend's Unix sockets
# (the guest's vsock ports 7000, 7001, 8000 at CID 2).
start_gateway() {
  GATEWAY_PORT="$(free_port)"
  export WALLET_GATEWAY="http://127.0.0.1:$GATEWAY_PORT"
  "$BIN/wallet-gateway" --data-dir "$1" --listen "127.0.0.1:$GATEWAY_PORT" \
    --enclave "hybrid-vsock:$RUN/vm.vsock:5000" \
    --serve-storage "$RUN/vm.vsock_7000" \
    --serve-boot "$RUN/vm.vsock_7001" \
    --enclave-args "--vsock-port 5000 --host-storage vsock:7000 --kms-relay vsock:8000 --kms-key $KMS_ARN --service-id $SERVICE --anchor-relay vsock:8101 --anchor-relay vsock:8102 --anchor-relay vsock:8103" \
    --kms-relay "$RUN/vm.vsock_8000" --kms-target "127.0.0.1:$KMS_PORT" \
    --anchor-relay "$RUN/vm.vsock_8101=${ETCD[0]}" --anchor-relay "$RUN/vm.vsock_8102=${ETCD[1]}" \
    --anchor-relay "$RUN/vm.vsock_8103=${ETCD[2]}" \
    >>"$RUN/gateway.log" 2>&1 &
  GATEWAY_PID=$!
  PIDS+=("$GATEWAY_PID")
  for _ in $(seq 100); do [ -S "$RUN/vm.vsock_7001" ] && return 0; sleep 0.1; done
  say "the gateway did not start:"; tail -20 "$RUN/gateway.log" >&2; return 1
}

# The Nitro heartbeat (nitro-cli waits for it): echoes the byte on the guest's port 9000.
python3 - "$RUN/vm.vsock_9000" "$RUN/heartbeats" <<'PY' &
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(4)
while True:
    c, _ = s.accept()
    b = c.recv(1)
    c.sendall(b)
    with open(log, "a") as f: f.write(b.hex() + "\n")
    c.close()
PY
PIDS+=($!)

QEMU_PID=""
VHOST_PID=""
# boot N EIF: starts the vhost backend and QEMU; the console goes to $RUN/console-N.log.
boot() {
  local n="$1" eif="$2"
  rm -f "$RUN/vhost.socket" "$RUN/vm.vsock" "$RUN/qmp.sock"
  "$VHOST_DEVICE_VSOCK" --vm "guest-cid=4,socket=$RUN/vhost.socket,uds-path=$RUN/vm.vsock" \
    >"$RUN/vhost-$n.log" 2>&1 &
  VHOST_PID=$!
  PIDS+=("$VHOST_PID")
  for _ in $(seq 100); do [ -S "$RUN/vhost.socket" ] && break; sleep 0.1; done
  local pki="$ROOT/attestation/testdata/test-pki"
  "$QEMU" -M "nitro-enclave,vsock=c,id=i-0e2e0000000000000-enc0000000000000$n" \
    -kernel "$eif" -m 1024M -smp 2 -accel tcg \
    -chardev "socket,id=c,path=$RUN/vhost.socket" \
    -append "wallet.parent_cid=2" \
    -global "virtio-nsm-device.signing-key=$pki/leaf.key.pk8.der" \
    -global "virtio-nsm-device.certificate=$pki/leaf.der" \
    -global "virtio-nsm-device.cabundle=$pki/root.der:$pki/intermediate.der" \
    -display none -monitor none -serial "file:$RUN/console-$n.log" \
    -qmp "unix:$RUN/qmp.sock,server=on,wait=off" -no-reboot \
    >"$RUN/qemu-$n.log" 2>&1 &
  QEMU_PID=$!
  PIDS+=("$QEMU_PID")
  CONSOLE="$RUN/console-$n.log"
}

# wait_console PATTERN SECONDS: until the console shows PATTERN (0), the enclave halts or QEMU
# exits (1), or the time is up (1).
wait_console() {
  local pattern="$1" seconds="$2" t=0
  while [ "$t" -lt "$((seconds * 5))" ]; do
    grep -q -- "$pattern" "$CONSOLE" 2>/dev/null && return 0
    grep -q "wallet-enclave init: halting" "$CONSOLE" 2>/dev/null && return 1
    kill -0 "$QEMU_PID" 2>/dev/null || return 1
    sleep 0.2; t=$((t + 1))
  done
  return 1
}

# stop_qemu: QMP quit (the guest does not always power off on its own), then by PID.
stop_qemu() {
  python3 - "$RUN/qmp.sock" <<'PY' || true
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", "quit"):
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush(); f.readline()
PY
  for _ in $(seq 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
  kill "$QEMU_PID" 2>/dev/null || true
  wait "$QEMU_PID" 2>/dev/null || true
  kill "$VHOST_PID" 2>/dev/null || true
  wait "$VHOST_PID" 2>/dev/null || true
}

show_console() { say "console ($CONSOLE), last lines:"; tail -25 "$CONSOLE" | sed 's/^/    /' >&2; }

# --- Boot 1: first start, verified first contact, a payment --------------------------------------
start_kms kms "$GOOD"
GOOD_ARN="$KMS_ARN"
start_gateway "$RUN/host"
DEMO_PORT="$(free_port)"
python3 "$ROOT/scripts/demo-402-server.py" "$DEMO_PORT" >"$RUN/demo.log" 2>&1 &
PIDS+=($!)
export WALLETCTL_HOME="$RUN/admin"

say "boot 1: the image, under TCG (a minute or two)"
boot 1 "$RUN/eif/good/wallet.eif"
if wait_console "listening on vsock" 600; then
  ok "boot 1: the enclave image starts, unseals with a KMS data key and serves on vsock"
else
  fail "boot 1: the enclave image did not start serving"; show_console
fi
check "boot 1: the image's /init loaded the kernel modules and sent the Nitro heartbeat" \
  bash -c "grep -q 'kernel modules loaded' '$CONSOLE' && grep -qx b7 '$RUN/heartbeats'"
check "boot 1: KMS generated the data key for the image's attested Recipient, and only that" \
  bash -c "grep -qx 'wallet-kms-sim: TrentService.GenerateDataKey recipient=attested -> allowed' '$RUN/kms.log' && [ \$(grep -c '^wallet-kms-sim: Trent' '$RUN/kms.log') = 1 ]"

check "walletctl init verifies the emulated NSM's signed document: PCRs from build-eif.sh, KMS key, service" \
  "$BIN/walletctl" init --simulated --measurements "$GOOD" --expect-kms-key "$GOOD_ARN" --expect-service "$SERVICE"
check "boot 1: walletctl anchor provision: the image's own TLS to etcd (over vsock) writes its first head" \
  "$BIN/walletctl" anchor provision --ca-cert "$RUN/etcd/ca.pem" --ca-key "$RUN/etcd/ca-key.pem" \
    --client-name wallet-nitro --key /x402-wallet/nitro/anchor/head --members 3
"$BIN/walletctl" attest >"$RUN/attest.txt" 2>&1 || true
check "walletctl attest reports the image's PCR2 and KMS sealing" \
  bash -c "grep -qi '$(pcr "$GOOD" PCR2)' '$RUN/attest.txt' && grep -qi 'kms' '$RUN/attest.txt'"

WALLET="$("$BIN/walletctl" wallet create --label nitro-e2e 2>>"$RUN/walletctl.log" | awk '/^wallet/ {print $2}')" || true
"$BIN/walletctl" policy set --wallet "$WALLET" --max-per-payment '$0.10' --networks eip155:84532 >>"$RUN/walletctl.log" 2>&1 || true
"$BIN/walletctl" session issue --wallet "$WALLET" --cap "0.05 USDC" --ttl 1h --out "$RUN/agent.json" --force >>"$RUN/walletctl.log" 2>&1 || true
export WALLET_SESSION="$RUN/agent.json"

# pay N: one paid request to the demo server; the offer in $RUN/pr-N, the payment in $RUN/ps-N.
pay() {
  curl -si "http://127.0.0.1:$DEMO_PORT/premium" | tr -d '\r' | grep -i '^payment-required:' >"$RUN/pr-$1"
  "$BIN/walletctl" pay <"$RUN/pr-$1" >"$RUN/ps-$1"
}
official_verify() {
  (cd "$ROOT/tests/x402-compat" && node verify.mjs "$(sed 's/^[^:]*: *//' "$RUN/pr-$1")" "$(cat "$RUN/ps-$1")")
}
pay_verified() { pay "$1" && official_verify "$1"; }
refused_halted() { ! pay "$1" 2>"$RUN/pay-$1.err" && grep -q ANCHOR_HALTED "$RUN/pay-$1.err"; }
check "boot 1: a payment is signed through the emulated enclave" pay 1
check "boot 1: the official x402 verifier (@x402/core + @x402/evm) accepts it" official_verify 1
check "boot 1: the session has spent 0.01" bash -c "'$BIN/walletctl' session list --wallet '$WALLET' | grep -q 'spent 0.01 '"
stop_qemu
# The host keeps a copy of the state it holds for the enclave (used in boot 2b).
cp -a "$RUN/host" "$RUN/host-after-boot-1"

# --- Boot 2: the same image again, from the state the host kept ----------------------------------
say "boot 2: the same image, restarted from the host-held state"
boot 2 "$RUN/eif/good/wallet.eif"
if wait_console "listening on vsock" 600; then
  ok "boot 2: the image starts again and unseals the same state through KMS"
else
  fail "boot 2: the image did not start again"; show_console
fi
check "boot 2: the wrapped key the host kept was opened by KMS Decrypt for the attested image" \
  grep -qx 'wallet-kms-sim: TrentService.Decrypt recipient=attested -> allowed' "$RUN/kms.log"
check "boot 2: walletctl status answers under the pinned identity" "$BIN/walletctl" status
check "boot 2: the spend is still counted (spent 0.01)" \
  bash -c "'$BIN/walletctl' session list --wallet '$WALLET' | grep -q 'spent 0.01 '"
check "boot 2: the next payment is signed and accepted by the official verifier" pay_verified 2
check "boot 2: the session has spent 0.02" \
  bash -c "'$BIN/walletctl' session list --wallet '$WALLET' | grep -q 'spent 0.02 '"
check "boot 2: the anchor serves: the restart's head is in etcd (epoch 2)" \
  bash -c "'$BIN/walletctl' status | grep -q 'anchor:   serving · /x402-wallet/nitro/anchor/head epoch 2 '"
stop_qemu

# --- Boot 2b: the whole state rolled back by the host ---------------------------------------------
say "boot 2b: the host puts back its copy of the state from after boot 1"
kill "$GATEWAY_PID" 2>/dev/null || true; wait "$GATEWAY_PID" 2>/dev/null || true
mv "$RUN/host" "$RUN/host-current"
cp -a "$RUN/host-after-boot-1" "$RUN/host"
start_gateway "$RUN/host"
boot 2b "$RUN/eif/good/wallet.eif"
if wait_console "listening on vsock" 600; then
  check "boot 2b: walletctl status: ANCHOR HALTED, ROLLED BACK against the head in etcd (exit 5)" \
    bash -c "'$BIN/walletctl' status >'$RUN/status-2b.txt' 2>&1; [ \$? = 5 ] && grep -q 'ANCHOR HALTED' '$RUN/status-2b.txt' && grep -q 'ROLLED BACK' '$RUN/status-2b.txt'"
  check "boot 2b: the rolled-back image signs nothing (ANCHOR_HALTED)" \
    refused_halted 2b
else
  fail "boot 2b: the image did not start"; show_console
fi
stop_qemu
kill "$GATEWAY_PID" 2>/dev/null || true; wait "$GATEWAY_PID" 2>/dev/null || true
rm -rf "$RUN/host"; mv "$RUN/host-current" "$RUN/host"
start_gateway "$RUN/host"

# --- Boot 3: a tampered image against the real policy ---------------------------------------------
say "boot 3: the tampered image, same host state and KMS key"
boot 3 "$RUN/eif/tampered/wallet.eif"
if wait_console "listening on vsock" 600; then
  fail "boot 3: the tampered image was given the sealing key and serves"
else
  check "boot 3: KMS refuses the tampered image the sealing key; the enclave halts without serving" \
    bash -c "grep -q 'wallet-enclave init: halting.*AccessDenied' '$CONSOLE' && grep -qx 'wallet-kms-sim: TrentService.Decrypt recipient=attested -> AccessDeniedException' '$RUN/kms.log'"
fi
stop_qemu

# --- Boot 4: the tampered image under a key whose policy names it ---------------------------------
say "boot 4: the tampered image under a KMS key of the host's own"
kill "$GATEWAY_PID" 2>/dev/null || true; wait "$GATEWAY_PID" 2>/dev/null || true
start_kms kms-host "$BAD"
start_gateway "$RUN/host-own"
boot 4 "$RUN/eif/tampered/wallet.eif"
if wait_console "listening on vsock" 600; then
  ok "boot 4: the tampered image serves under the host's own key"
else
  fail "boot 4: the tampered image did not start under its own key"; show_console
fi
check "boot 4: walletctl init refuses it: PCR2 is not the one build-eif.sh printed" \
  bash -c "! WALLETCTL_HOME='$RUN/admin-2' '$BIN/walletctl' init --simulated --measurements '$GOOD' --expect-kms-key '$KMS_ARN' --expect-service '$SERVICE' >'$RUN/init-4.txt' 2>&1 && grep -q 'PCR2' '$RUN/init-4.txt'"
check "boot 4: the admin who pinned the real enclave refuses it too (a new identity)" \
  bash -c "! '$BIN/walletctl' status >'$RUN/status-4.txt' 2>&1 && grep -q 'presents a new identity' '$RUN/status-4.txt'"
stop_qemu

echo "nitro-e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
