#!/usr/bin/env bash
# Builds (once, then cached) a QEMU with the AWS `nitro-enclave` machine whose emulated NSM
# (virtio-nsm) signs attestation documents with a given PKI, for the simulated Nitro platform.
# Debian 12 (bookworm), x86_64, root or sudo. Run with --help for details.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PATCH="$HERE/qemu/virtio-nsm-sign.patch"
DEVICES_MAK="$HERE/qemu/nitro.mak"
TEST_PKI="$REPO/attestation/testdata/test-pki"
# The Debian source version the patch was written and tested against.
TESTED_QEMU_VERSION='1:10.0.2+ds-2+deb13u1~bpo12+1'

usage() {
    cat <<EOF
Usage: scripts/nitro-sim/qemu.sh [--force] [--help]

Builds qemu-system-x86_64 with only the AWS Nitro Enclave machine (\`-M nitro-enclave\`) and
a patched virtio-nsm that can sign attestation documents (COSE_Sign1, ES384) so that
wallet_attestation's verifier accepts them under the test root. Prints the binary's path
on stdout (progress goes to stderr, prefixed "nitro-sim/qemu:").

Steps (each one says what failed, if it fails):
  1. scripts/nitro-sim/apt-backports.sh (bookworm-backports, deb + deb-src);
  2. runtime packages (bookworm): libcbor0.8 libfdt1 libglib2.0-0 libgnutls30 seabios;
  3. if the cache is current (stamp = hash of this script, the patch, nitro.mak and the QEMU
     source version), only the self-check runs, in seconds;
  4. otherwise: build packages (bookworm, plus meson >= 1.5 and python3-pycotap from
     bookworm-backports); the QEMU source from bookworm-backports (\`apt-get source
     --download-only\`; the orig tarball is checked against the SHA-256 in apt's signed Sources
     index); the "+ds" EDK2 meson fix; the nitro-only device set (qemu/nitro.mak); the signing
     patch (qemu/virtio-nsm-sign.patch); configure; ninja; the x86 option ROMs and qboot;
  5. self-check: -M help lists nitro-enclave, -device help lists virtio-nsm-device, its new
     properties exist, the device realizes with the committed test PKI and refuses a bad key.

Output (under \$NITRO_SIM_CACHE/qemu, default $REPO/target/nitro-sim/qemu):
  bin/qemu-system-x86_64   stripped binary
  share/qemu/              qboot.rom (the firmware nitro-enclave boots, acpi=off) and the option
                           ROMs (linuxboot_dma.bin, pvh.bin, ...), built from the same source and
                           found by the binary without -L (relocatable data dir); SeaBIOS's
                           bios-microvm.bin (plain microvm) comes from /usr/share/seabios
  stamp                    what the binary was built from
The source and build trees are deleted after a successful build.

Use (the NSM signs with the committed test PKI):
  \$QEMU -M nitro-enclave,vsock=c,id=<module id> -kernel app.eif -accel tcg -nographic -m 512M \\
    -chardev socket,id=c,path=<vhost-device-vsock socket> \\
    -global virtio-nsm-device.signing-key=$TEST_PKI/leaf.key.pk8.der \\
    -global virtio-nsm-device.certificate=$TEST_PKI/leaf.der \\
    -global virtio-nsm-device.cabundle=$TEST_PKI/root.der:$TEST_PKI/intermediate.der

Options:
  --force    rebuild even when the stamp matches
  --help     this text

Environment:
  NITRO_SIM_CACHE=DIR          cache root (default: $REPO/target/nitro-sim)
  NITRO_SIM_KEEP_BUILD=1       keep the source and build trees (incremental rebuilds)
  NITRO_SIM_QEMU_VERSION=V     Debian source version (default: newest in bookworm-backports;
                               tested: $TESTED_QEMU_VERSION)
  NITRO_SIM_JOBS=N             ninja -j (default: nproc)
EOF
}

FORCE=0
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --force) FORCE=1 ;;
        *) echo "nitro-sim/qemu: unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'nitro-sim/qemu: %s\n' "$*" >&2; }
STEP="starting"
LOG=""
on_error() {
    local rc=$?
    [ "$BASH_SUBSHELL" -eq 0 ] || exit "$rc"   # reported once, by the main shell
    say "FAILED (exit $rc) while: $STEP"
    if [ -n "$LOG" ] && [ -s "$LOG" ]; then
        say "last lines of $LOG:"
        tail -n 25 "$LOG" | sed 's/^/    /' >&2
    fi
    exit "$rc"
}
trap on_error ERR
die() { say "FAILED while: $STEP: $*"; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "needs an x86_64 host (this is $(uname -m))"
grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null \
    || say "warning: not Debian 12 (bookworm); package names may not match"
APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
[ "$(id -u)" -eq 0 ] || APT=(sudo "${APT[@]}")

CACHE="${NITRO_SIM_CACHE:-$REPO/target/nitro-sim}/qemu"
BIN="$CACHE/bin/qemu-system-x86_64"
SHARE="$CACHE/share/qemu"
STAMP="$CACHE/stamp"
WORK="$CACHE/work"          # source, build tree and logs; deleted after success
mkdir -p "$CACHE"

# One build at a time per cache (another helper may run this script concurrently).
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    say "another qemu.sh holds $CACHE/.lock; waiting for it"
    flock 9
fi

# --- packages ------------------------------------------------------------------------------

# Debian packages not installed yet (no apt call when everything is there).
missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed \
            || printf '%s\n' "$p"
    done
}

apt_install() { # apt_install LOGNAME [-t RELEASE] PACKAGES...
    local log="$CACHE/apt-$1.log"; shift
    LOG="$log"
    "${APT[@]}" install -y --no-install-recommends "$@" >"$log" 2>&1
    LOG=""
    rm -f "$log"
}

STEP="adding bookworm-backports (scripts/nitro-sim/apt-backports.sh)"
say "$STEP"
"$REPO/scripts/nitro-sim/apt-backports.sh"

RUNTIME_PKGS=(libcbor0.8 libfdt1 libglib2.0-0 libgnutls30 seabios)
STEP="installing runtime packages (${RUNTIME_PKGS[*]})"
mapfile -t need < <(missing_packages "${RUNTIME_PKGS[@]}")
if [ "${#need[@]}" -gt 0 ]; then
    say "installing runtime packages: ${need[*]}"
    apt_install runtime "${need[@]}"
fi

# --- which QEMU source ---------------------------------------------------------------------

STEP="finding the qemu source package in bookworm-backports (apt-cache showsrc qemu)"
SOURCES=$(apt-cache showsrc qemu 2>/dev/null) || true
[ -n "$SOURCES" ] || die "apt knows no qemu source package; is deb-src for bookworm-backports \
configured and 'apt-get update' done?"
if [ -n "${NITRO_SIM_QEMU_VERSION:-}" ]; then
    QEMU_VERSION=$NITRO_SIM_QEMU_VERSION
else
    QEMU_VERSION=""
    while read -r v; do
        if [ -z "$QEMU_VERSION" ] || dpkg --compare-versions "$v" gt "$QEMU_VERSION"; then
            QEMU_VERSION=$v
        fi
    done < <(printf '%s\n' "$SOURCES" | sed -n 's/^Version: \(.*~bpo12.*\)$/\1/p')
    [ -n "$QEMU_VERSION" ] || die "no qemu source version from bookworm-backports (~bpo12) \
in apt's lists"
fi
# The orig tarball's name and SHA-256 from that version's record of the (signed) Sources index.
read -r ORIG_SHA256 ORIG_TARBALL < <(printf '%s\n' "$SOURCES" | awk -v ver="$QEMU_VERSION" '
    /^Package: /          { pkg = $2 }
    /^Version: /          { inver = (pkg == "qemu" && $2 == ver) }
    /^[^ ]/ && !/^Checksums-Sha256:/ { insum = 0 }
    /^Checksums-Sha256:/  { insum = inver }
    insum && /^ / && $3 ~ /\.orig\.tar\./ { print $1, $3; exit }') || true
[ -n "${ORIG_TARBALL:-}" ] || die "qemu $QEMU_VERSION: no orig tarball in apt's Sources \
records (available: $(printf '%s\n' "$SOURCES" | sed -n 's/^Version: //p' | tr '\n' ' '))"
if [ "$QEMU_VERSION" != "$TESTED_QEMU_VERSION" ]; then
    say "warning: qemu $QEMU_VERSION is not the tested $TESTED_QEMU_VERSION; the patch or the \
meson fix may need rebasing"
fi

# --- stamp: the binary is current when its inputs are unchanged ---------------------------

STAMP_WANT=$(printf 'qemu %s\norig %s %s\ninputs %s\n' "$QEMU_VERSION" "$ORIG_TARBALL" \
    "$ORIG_SHA256" "$(cat "$HERE/qemu.sh" "$PATCH" "$DEVICES_MAK" | sha256sum | cut -d' ' -f1)")

selfcheck() {
    local q=$1 out props tmp
    STEP="self-check of $q"
    say "self-check: $("$q" --version | head -n 1)"
    out=$("$q" -M help)
    grep -E '^nitro-enclave ' <<<"$out" >&2 || die "-M help does not list nitro-enclave"
    out=$("$q" -device help)
    grep -F '"virtio-nsm-device"' <<<"$out" >&2 || die "-device help lists no virtio-nsm-device"
    props=$("$q" -device virtio-nsm-device,help)
    for p in signing-key certificate cabundle module-id; do
        grep -E "^ +$p=" <<<"$props" >&2 || die "virtio-nsm-device has no property '$p'"
    done
    # Firmware without -L: qboot.rom (nitro-enclave), bios-microvm.bin (seabios; microvm with
    # ACPI) and the option ROMs that load the kernel.
    out=$("$q" -L help)
    local d f
    for f in "$SHARE/qboot.rom" /usr/share/seabios/bios-microvm.bin "$SHARE/linuxboot_dma.bin" \
        "$SHARE/pvh.bin"; do
        d=$(dirname "$f")
        [ -s "$f" ] || die "missing firmware $f"
        while read -r dir; do
            [ "$(cd "$dir" 2>/dev/null && pwd -P)" = "$(cd "$d" && pwd -P)" ] && continue 2
        done <<<"$out"
        die "$d is not in the binary's firmware search path (-L help: ${out//$'\n'/ })"
    done
    say "  firmware found without -L: qboot.rom, bios-microvm.bin (seabios), linuxboot_dma.bin, \
pvh.bin"
    # The device realizes with the committed test PKI (on microvm, which the nitro device set
    # includes; nitro-enclave itself would also need a vhost-user vsock backend) ...
    local qmp='{"execute":"qmp_capabilities"}
{"execute":"quit"}'
    local base=("$q" -M microvm -accel tcg -nodefaults -display none -S -qmp stdio)
    if [ -f "$TEST_PKI/leaf.key.pk8.der" ]; then
        out=$("${base[@]}" -device "virtio-nsm-device,signing-key=$TEST_PKI/leaf.key.pk8.der,\
certificate=$TEST_PKI/leaf.der,cabundle=$TEST_PKI/root.der:$TEST_PKI/intermediate.der" \
            2>&1 <<<"$qmp") || die "virtio-nsm-device with the test PKI does not realize: $out"
        say "  realize with the test PKI: ok"
        # ... and refuses a key that is not there, saying so.
        tmp=$("${base[@]}" -device "virtio-nsm-device,signing-key=/nonexistent/leaf.key,\
certificate=$TEST_PKI/leaf.der,cabundle=$TEST_PKI/root.der" 2>&1 <<<"$qmp") \
            && die "virtio-nsm-device realized with a missing signing key"
        grep -q "signing-key: cannot read '/nonexistent/leaf.key'" <<<"$tmp" \
            || die "unexpected error for a missing signing key: $tmp"
        say "  a missing key is refused: $(grep -m1 'signing-key' <<<"$tmp")"
    else
        say "  (no $TEST_PKI; realize checks skipped)"
    fi
}

if [ "$FORCE" = 0 ] && [ -x "$BIN" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_WANT" ]
then
    say "cached build is current (qemu $QEMU_VERSION); checking it"
    selfcheck "$BIN"
    say "ready: $BIN"
    echo "$BIN"
    exit 0
fi
say "building qemu $QEMU_VERSION (nitro-enclave + signing virtio-nsm); expect 3-6 min on 2 cores, more when busy"
T0=$(date +%s)

# --- build dependencies --------------------------------------------------------------------

BUILD_PKGS=(gcc make binutils pkgconf ninja-build flex bison xz-utils patch python3 python3-venv
    libglib2.0-dev zlib1g-dev libcbor-dev libgnutls28-dev libfdt-dev)
STEP="installing build packages (${BUILD_PKGS[*]})"
mapfile -t need < <(missing_packages "${BUILD_PKGS[@]}")
if [ "${#need[@]}" -gt 0 ]; then
    say "installing build packages: ${need[*]}"
    apt_install build "${need[@]}"
fi
# QEMU 10's configure wants meson >= 1.5 (bookworm has 1.0, bookworm-backports 1.7) and pycotap
# (only in bookworm-backports); the +ds tarball has no python/wheels to fall back on.
STEP="installing meson >= 1.5 and python3-pycotap from bookworm-backports"
meson_ok() { command -v meson >/dev/null && dpkg --compare-versions "$(meson --version)" ge 1.5; }
if ! meson_ok || [ -n "$(missing_packages python3-pycotap)" ]; then
    say "installing meson and python3-pycotap from bookworm-backports"
    apt_install backports -t bookworm-backports meson python3-pycotap
    meson_ok || die "meson $(meson --version 2>/dev/null) is still older than 1.5"
fi

# --- source --------------------------------------------------------------------------------

# With NITRO_SIM_KEEP_BUILD=1 a kept tree of the same source is reused: the previous patch is
# undone from pristine copies, the current one applied, and ninja rebuilds only what changed.
SOURCE_ID="$QEMU_VERSION $ORIG_SHA256"
REUSE=0
if [ "${NITRO_SIM_KEEP_BUILD:-0}" = 1 ] && [ -f "$WORK/source.id" ] \
    && [ "$(cat "$WORK/source.id")" = "$SOURCE_ID" ] && [ -f "$WORK/patched-files" ]; then
    REUSE=1
fi

if [ "$REUSE" = 1 ]; then
    SRC=$(cat "$WORK/src.path")
    STEP="undoing the previous patch in the kept tree $SRC"
    say "reusing the kept tree $SRC (NITRO_SIM_KEEP_BUILD=1)"
    while read -r f; do
        if [ -f "$WORK/pristine/$f" ]; then cp "$WORK/pristine/$f" "$SRC/$f"; else rm -f "$SRC/$f"; fi
    done <"$WORK/patched-files"
    rm -f "$WORK/patched-files"
else
    rm -rf "$WORK"
    mkdir -p "$WORK/dl"
    STEP="downloading the qemu $QEMU_VERSION source (apt-get source --download-only)"
    say "$STEP"
    LOG="$WORK/apt-source.log"
    # apt may also fail on the .dsc/.debian.tar.xz (404 on some mirrors); only the orig tarball
    # is needed, and its SHA-256 is checked below against apt's Sources index either way.
    (cd "$WORK/dl" && "${APT[@]}" source --download-only "qemu=$QEMU_VERSION") >"$LOG" 2>&1 \
        || say "note: apt-get source reported errors (see $LOG); checking the orig tarball"
    [ -f "$WORK/dl/$ORIG_TARBALL" ] || die "apt-get source did not fetch $ORIG_TARBALL"
    STEP="checking $ORIG_TARBALL against SHA-256 $ORIG_SHA256 (apt Sources index)"
    echo "$ORIG_SHA256  $WORK/dl/$ORIG_TARBALL" | sha256sum --quiet -c - >&2 \
        || die "checksum mismatch for $ORIG_TARBALL"
    say "source $ORIG_TARBALL: SHA-256 ok"
    LOG=""

    STEP="unpacking $ORIG_TARBALL"
    mkdir -p "$WORK/src"
    tar --no-same-owner -xf "$WORK/dl/$ORIG_TARBALL" -C "$WORK/src"
    rm -rf "$WORK/dl"
    SRC=$(find "$WORK/src" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    if [ ! -f "$SRC/configure" ] || [ ! -f "$SRC/hw/virtio/virtio-nsm.c" ]; then
        die "$ORIG_TARBALL has no QEMU tree with hw/virtio/virtio-nsm.c"
    fi

    # The "+ds" tarball drops the EDK2 firmware blobs that pc-bios/meson.build would unpack.
    STEP="patching meson.build for the +ds tarball (no EDK2 blobs)"
    sed -i 's/^\([[:space:]]*\)unpack_edk2_blobs = bzip2\.found()$/\1unpack_edk2_blobs = false/' \
        "$SRC/meson.build"
    if ! grep -q '^[[:space:]]*unpack_edk2_blobs = false$' "$SRC/meson.build" \
        || grep -q 'unpack_edk2_blobs = bzip2.found()' "$SRC/meson.build"; then
        die "meson.build: 'unpack_edk2_blobs = bzip2.found()' not found; QEMU changed?"
    fi
    printf '%s\n' "$SRC" >"$WORK/src.path"
    printf '%s\n' "$SOURCE_ID" >"$WORK/source.id"
fi

STEP="adding the nitro-only device set (configs/devices/x86_64-softmmu/nitro.mak)"
cmp -s "$DEVICES_MAK" "$SRC/configs/devices/x86_64-softmmu/nitro.mak" \
    || cp "$DEVICES_MAK" "$SRC/configs/devices/x86_64-softmmu/nitro.mak"

STEP="applying $(basename "$PATCH")"
LOG="$WORK/patch.log"
sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$PATCH" >"$WORK/patch-files"
[ -s "$WORK/patch-files" ] || die "$PATCH names no files (+++ b/...)"
while read -r f; do   # pristine copies, to undo this patch on a later reuse
    if [ -f "$SRC/$f" ] && [ ! -f "$WORK/pristine/$f" ]; then
        mkdir -p "$(dirname "$WORK/pristine/$f")"
        cp "$SRC/$f" "$WORK/pristine/$f"
    fi
done <"$WORK/patch-files"
mv "$WORK/patch-files" "$WORK/patched-files"   # before patching: a partial apply is undone too
patch -d "$SRC" -p1 --forward --batch <"$PATCH" >"$LOG" 2>&1
say "applied $(basename "$PATCH")"
LOG=""

# --- configure and build -------------------------------------------------------------------

BUILD="$SRC/build"
# --python: Debian's python3 has meson and pycotap; the orig tarball has no python/wheels.
# --firmwarepath: bios-microvm.bin from Debian's seabios (absolute, so not relocated).
CONFIGURE_ARGS=(
    --python=/usr/bin/python3
    --target-list=x86_64-softmmu
    --without-default-features --without-default-devices --with-devices-x86_64=nitro
    --enable-tcg --enable-kvm --enable-libcbor --enable-gnutls --enable-fdt=system
    --enable-vhost-user --enable-vhost-kernel
    --disable-docs --disable-werror --disable-install-blobs
    --firmwarepath=/usr/share/seabios
)
if [ -f "$BUILD/build.ninja" ] && [ "$(cat "$WORK/configure.args" 2>/dev/null)" = "${CONFIGURE_ARGS[*]}" ]
then
    say "configure: kept (same arguments)"
else
    STEP="configuring QEMU"
    say "configuring (x86_64-softmmu, nitro devices only)"
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    LOG="$WORK/configure.log"
    (cd "$BUILD" && ../configure "${CONFIGURE_ARGS[@]}") >"$LOG" 2>&1
    LOG=""
    printf '%s\n' "${CONFIGURE_ARGS[*]}" >"$WORK/configure.args"
fi
grep -qx 'CONFIG_NITRO_ENCLAVE=y' "$BUILD/x86_64-softmmu-config-devices.mak" 2>/dev/null \
    || die "configure did not enable CONFIG_NITRO_ENCLAVE (libcbor/gnutls/fdt/vhost-user \
missing?); see $WORK/configure.log"

JOBS=${NITRO_SIM_JOBS:-$(nproc)}
STEP="building qemu-system-x86_64 (ninja -j$JOBS)"
say "$STEP; progress every 100 steps"
LOG="$WORK/ninja.log"
T1=$(date +%s)
ninja -C "$BUILD" -j"$JOBS" qemu-system-x86_64 2>&1 | tee "$LOG" | awk '
    /^\[[0-9]+\/[0-9]+\]/ {
        gsub(/[][]/, "", $1); split($1, a, "/")
        if (a[1] > 0 && (a[1] % 100 == 0 || a[1] == a[2])) {
            printf "nitro-sim/qemu:   ninja [%s/%s]\n", a[1], a[2]; fflush()
        }
    }
    /^FAILED:|error:/ { print "nitro-sim/qemu:   " $0; fflush() }' >&2
say "ninja: $(( $(date +%s) - T1 )) s"

# x86 option ROMs (linuxboot_dma.bin loads the EIF's kernel, pvh.bin a PVH one). Debian ships
# them in qemu-system-data; building them from this source keeps this QEMU self-contained.
STEP="building the x86 option ROMs (pc-bios/optionrom)"
ROMS="$BUILD/pc-bios/optionrom"
if [ ! -f "$ROMS/config.mak" ]; then
    # configure skips them when `cc -m32 ... -lgcc` fails (no 32-bit libgcc without
    # gcc-multilib), but the ROMs are linked with -nostdlib: the host gcc builds them as is.
    mkdir -p "$ROMS"
    [ -e "$ROMS/Makefile" ] || ln -s "$SRC/pc-bios/optionrom/Makefile" "$ROMS/Makefile"
    printf '%s\n' "TOPSRC_DIR=$SRC" EXTRA_CFLAGS=-m32 CC=cc CCAS=cc AR=ar AS=as LD=ld NM=nm \
        OBJCOPY=objcopy RANLIB=ranlib STRIP=strip >"$ROMS/config.mak"
fi
LOG="$WORK/optionrom.log"
make -C "$ROMS" PYTHON=/usr/bin/python3 >"$LOG" 2>&1
for f in linuxboot_dma.bin pvh.bin; do
    [ -s "$ROMS/$f" ] || die "no $f after building the option ROMs; see $LOG"
done

# qboot: the firmware nitro-enclave boots (it forces acpi=off, and microvm then loads qboot.rom
# instead of SeaBIOS's bios-microvm.bin). Debian ships it in qemu-system-data; it is built
# here from roms/qboot of the same source (meson, host gcc -m32, -nostdlib).
STEP="building qboot (roms/qboot -> qboot.rom)"
LOG="$WORK/qboot.log"
[ -f "$SRC/roms/qboot/meson.build" ] || die "the source has no roms/qboot"
rm -rf "$WORK/qboot"
{ meson setup "$SRC/roms/qboot" "$WORK/qboot" && ninja -C "$WORK/qboot"; } >"$LOG" 2>&1
[ -s "$WORK/qboot/bios.bin" ] || die "qboot built no bios.bin; see $LOG"
LOG=""

# --- install into the cache and check ------------------------------------------------------

STEP="installing into $CACHE"
rm -rf "$CACHE/bin.new" "$CACHE/share.new"
mkdir -p "$CACHE/bin.new" "$CACHE/share.new/qemu"
strip -o "$CACHE/bin.new/qemu-system-x86_64" "$BUILD/qemu-system-x86_64"
cp "$BUILD"/pc-bios/optionrom/*.bin "$CACHE/share.new/qemu/"
cp "$WORK/qboot/bios.bin" "$CACHE/share.new/qemu/qboot.rom"
rm -rf "${CACHE:?}/bin" "${CACHE:?}/share"
mv "$CACHE/bin.new" "$CACHE/bin"
mv "$CACHE/share.new" "$CACHE/share"
rm -f "$STAMP"

selfcheck "$BIN"

printf '%s\n' "$STAMP_WANT" >"$STAMP"
if [ "${NITRO_SIM_KEEP_BUILD:-0}" = 1 ]; then
    say "keeping the source and build tree: $BUILD (NITRO_SIM_KEEP_BUILD=1)"
else
    STEP="removing the source and build tree"
    rm -rf "$WORK"
fi
say "built in $(( $(date +%s) - T0 )) s: $(du -h "$BIN" | cut -f1) stripped"
say "ready: $BIN"
echo "$BIN"
