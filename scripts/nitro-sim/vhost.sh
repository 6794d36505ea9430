#!/usr/bin/env bash
# Builds vhost-device-vsock (rust-vmm) 0.3.0 from crates.io WITHOUT the `backend_vsock` feature,
# so the binary has no AF_VSOCK code at all: it maps the guest's vsock to Unix sockets only
# (Firecracker hybrid-vsock protocol). Installs $CACHE/bin/vhost-device-vsock.
#
# Steps: download the .crate, check its sha256 against the pin below AND the crates.io index,
# apply scripts/nitro-sim/vhost/*.patch, check `cargo tree` has no `vsock` crate, build
# --release --locked --no-default-features with its own CARGO_TARGET_DIR under the cache,
# then a smoke test without any VM (the daemon must create its vhost-user socket).
# A stamp (hash of this script, the patch, the pinned version/checksum, rustc/cargo versions)
# makes a second run finish in seconds; any input change rebuilds.
set -euo pipefail

log() { printf 'nitro-sim/vhost: %s\n' "$*" >&2; }
die() { printf 'nitro-sim/vhost: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: scripts/nitro-sim/vhost.sh [--force] [--no-smoke] [--help]

Builds vhost-device-vsock ${VHOST_VERSION:-0.3.0} (Unix-socket backend only, no AF_VSOCK) and installs it at
  \${NITRO_SIM_CACHE:-<repo>/target/nitro-sim}/bin/vhost-device-vsock

  --force      rebuild even if the stamp says the cached binary is current
  --no-smoke   skip the smoke test (start the daemon, wait for its vhost-user socket, stop it)
  --help       this text

Environment: NITRO_SIM_CACHE (cache root), CARGO (cargo binary, default: cargo).
Needs network access to crates.io on a (re)build; none when the cache is current.
EOF
}

VHOST_VERSION=0.3.0
# sha256 of vhost-device-vsock-0.3.0.crate as published in the crates.io index ("cksum").
VHOST_CRATE_SHA256=52ce95d81af89ad693d067c650e42df0f217addfbc96cc4820f7c62eb4a28b13
CRATE_URL="https://static.crates.io/crates/vhost-device-vsock/vhost-device-vsock-${VHOST_VERSION}.crate"
INDEX_URL="https://index.crates.io/vh/os/vhost-device-vsock"

FORCE=0
SMOKE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --no-smoke) SMOKE=0 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${NITRO_SIM_CACHE:-$REPO/target/nitro-sim}"
CARGO="${CARGO:-cargo}"
PATCH_DIR="$HERE/vhost"
WORK="$CACHE/vhost"
BIN="$CACHE/bin/vhost-device-vsock"
STAMP="$CACHE/stamps/vhost.stamp"

# Binary apt sources for backports (the kit's common first step; this script needs nothing from apt).
"$HERE/apt-backports.sh"

for tool in "$CARGO" curl sha256sum tar patch python3 flock; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH"
done

mkdir -p "$CACHE/bin" "$CACHE/stamps" "$WORK"
exec 9>"$WORK/.lock"
flock 9 || die "cannot lock $WORK/.lock"

shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob
[ ${#PATCHES[@]} -gt 0 ] || die "no patch found in $PATCH_DIR"

stamp_inputs() {
    printf 'version=%s\ncrate_sha256=%s\n' "$VHOST_VERSION" "$VHOST_CRATE_SHA256"
    sha256sum "${BASH_SOURCE[0]}" "${PATCHES[@]}" | awk '{print $1}'
    "$CARGO" -V
    rustc -vV 2>/dev/null || true
}
WANT_STAMP="$(stamp_inputs | sha256sum | awk '{print $1}')"

SMOKE_PID=
# Stop the smoke-test daemon (only that PID) if the script is interrupted.
trap '[ -z "$SMOKE_PID" ] || kill "$SMOKE_PID" 2>/dev/null || true' EXIT
smoke_test() {
    local tmp pid ok=0 t0 ms
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/nitro-sim-vhost.XXXXXX")"
    log "smoke test: $BIN --vm guest-cid=4,socket=$tmp/vhost4.socket,uds-path=$tmp/vm4.vsock"
    t0=$(date +%s%N)
    "$BIN" --vm "guest-cid=4,socket=$tmp/vhost4.socket,uds-path=$tmp/vm4.vsock" \
        >"$tmp/log" 2>&1 &
    pid=$!
    SMOKE_PID=$pid
    for _ in $(seq 1 100); do
        # vhost4.socket: the vhost-user socket QEMU connects to; vm4.vsock: the host-side
        # listener for host->guest connections (both are Unix sockets, bound at start-up).
        if [ -S "$tmp/vhost4.socket" ] && [ -S "$tmp/vm4.vsock" ]; then ok=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    ms=$((($(date +%s%N) - t0) / 1000000))
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    else
        wait "$pid" 2>/dev/null || true
        ok=0
        log "the daemon exited early; its output:"
        sed 's/^/    /' "$tmp/log" >&2
    fi
    SMOKE_PID=
    if [ "$ok" = 1 ]; then
        log "smoke test ok: vhost4.socket and vm4.vsock appeared within ${ms} ms; daemon (pid $pid) stopped"
        rm -rf "$tmp"
    else
        die "smoke test failed: $tmp/vhost4.socket and $tmp/vm4.vsock did not both appear within 5 s (log kept in $tmp/log)"
    fi
}

if [ "$FORCE" = 0 ] && [ -x "$BIN" ] && [ -f "$STAMP" ] \
    && [ "$(sed -n 1p "$STAMP")" = "$WANT_STAMP" ] \
    && [ "$(sed -n 2p "$STAMP")" = "$(sha256sum "$BIN" | awk '{print $1}')" ]; then
    log "up to date: $BIN (vhost-device-vsock $VHOST_VERSION, stamp ${WANT_STAMP:0:12})"
    [ "$SMOKE" = 0 ] || smoke_test
    exit 0
fi

# --- download and verify the crate -------------------------------------------------------------
DL="$WORK/dl"
CRATE="$DL/vhost-device-vsock-${VHOST_VERSION}.crate"
mkdir -p "$DL"
if [ ! -f "$CRATE" ] || [ "$(sha256sum "$CRATE" | awk '{print $1}')" != "$VHOST_CRATE_SHA256" ]; then
    log "downloading $CRATE_URL"
    curl -fsSL --retry 3 -o "$CRATE.part" "$CRATE_URL" \
        || die "download failed: $CRATE_URL (network? crate version $VHOST_VERSION yanked or removed?)"
    mv "$CRATE.part" "$CRATE"
fi
log "checking the crate checksum against the crates.io index ($INDEX_URL)"
INDEX_SHA="$(curl -fsSL --retry 3 "$INDEX_URL" | python3 -c '
import json, sys
want = sys.argv[1]
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    entry = json.loads(line)
    if entry.get("vers") == want:
        if entry.get("yanked"):
            sys.stderr.write("version %s is yanked on crates.io\n" % want)
        print(entry["cksum"])
        break
' "$VHOST_VERSION")" || die "cannot read the crates.io index at $INDEX_URL"
[ -n "$INDEX_SHA" ] || die "vhost-device-vsock $VHOST_VERSION is not in the crates.io index"
GOT_SHA="$(sha256sum "$CRATE" | awk '{print $1}')"
[ "$INDEX_SHA" = "$VHOST_CRATE_SHA256" ] \
    || die "crates.io index checksum $INDEX_SHA differs from the pinned $VHOST_CRATE_SHA256 (update VHOST_CRATE_SHA256 in $0 only after checking why)"
[ "$GOT_SHA" = "$VHOST_CRATE_SHA256" ] \
    || { rm -f "$CRATE"; die "downloaded crate sha256 $GOT_SHA != index/pinned $VHOST_CRATE_SHA256 (file removed; retry)"; }
log "crate sha256 ok: $GOT_SHA"

# --- unpack and patch ---------------------------------------------------------------------------
SRC="$WORK/src/vhost-device-vsock-${VHOST_VERSION}"
rm -rf "$WORK/src"
mkdir -p "$WORK/src"
tar -xzf "$CRATE" -C "$WORK/src"
[ -f "$SRC/Cargo.lock" ] || die "the crate has no Cargo.lock; --locked cannot work"
for p in "${PATCHES[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$SRC" -p1 --forward --batch --quiet <"$p" \
        || die "patch $(basename "$p") does not apply to vhost-device-vsock $VHOST_VERSION; refresh it"
done
# The cache usually lies inside this repo's cargo workspace; an empty [workspace] table makes the
# crate its own workspace root (no effect on dependency resolution or on Cargo.lock).
printf '\n[workspace]\n' >>"$SRC/Cargo.toml"

# --- feature check: no `vsock` crate (the AF_VSOCK backend) in the dependency graph -------------
export CARGO_TARGET_DIR="$WORK/target"
log "cargo tree --no-default-features -e normal (must not contain the vsock crate)"
TREE="$(cd "$SRC" && "$CARGO" tree --locked --no-default-features -e normal --prefix none --format '{p}')" \
    || die "cargo tree failed in $SRC"
printf '%s\n' "$TREE" | sed 's/ (\*)$//' | sort -u >"$WORK/cargo-tree.txt"
if awk '$1 == "vsock" { found = 1 } END { exit !found }' "$WORK/cargo-tree.txt"; then
    die "the dependency graph contains the 'vsock' crate (AF_VSOCK backend); see $WORK/cargo-tree.txt"
fi
awk '$1 == "virtio-vsock" { found = 1 } END { exit !found }' "$WORK/cargo-tree.txt" \
    || die "unexpected dependency graph: no virtio-vsock crate; see $WORK/cargo-tree.txt"
log "no vsock crate among $(wc -l <"$WORK/cargo-tree.txt") packages"

# --- build --------------------------------------------------------------------------------------
log "cargo build --release --locked --no-default-features (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
START=$SECONDS
(cd "$SRC" && "$CARGO" build --release --locked --no-default-features) \
    || die "cargo build failed in $SRC"
log "built in $((SECONDS - START)) s"
BUILT="$CARGO_TARGET_DIR/release/vhost-device-vsock"
[ -x "$BUILT" ] || die "cargo reported success but $BUILT is missing"

# Belt and braces: the AF_VSOCK options exist only with backend_vsock.
if "$BUILT" --help | grep -q -- 'forward-cid'; then
    die "$BUILT --help offers forward-cid: it was built with the AF_VSOCK backend"
fi
install -m 0755 "$BUILT" "$BIN.new"
mv -f "$BIN.new" "$BIN"
log "installed $BIN ($(stat -c %s "$BIN") bytes, sha256 $(sha256sum "$BIN" | awk '{print $1}'))"

[ "$SMOKE" = 0 ] || smoke_test

printf '%s\n%s\n' "$WANT_STAMP" "$(sha256sum "$BIN" | awk '{print $1}')" >"$STAMP.new"
mv -f "$STAMP.new" "$STAMP"
log "done; stamp $STAMP"
