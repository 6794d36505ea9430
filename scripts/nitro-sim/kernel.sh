#!/usr/bin/env bash
# Prepares the enclave kernel for the QEMU `nitro-enclave` simulation: Debian's pinned
# bookworm-backports cloud kernel, five of its modules (decompressed, byte-identical to Debian's),
# and our virtio_mmio_shim.ko (scripts/nitro-sim/shim/), built against the matching headers.
#
# Nothing is installed on the system: the .debs are fetched with `apt-get download` and unpacked
# with `dpkg-deb -x` into the cache; the kbuild tree is made usable from there.
#
# Output ($CACHE = ${NITRO_SIM_CACHE:-<repo>/target/nitro-sim}):
#   $CACHE/kernel/<KVER>/bzImage
#   $CACHE/kernel/<KVER>/modules/{virtio_mmio,virtio_mmio_shim,vsock,vmw_vsock_virtio_transport_common,
#                                 vmw_vsock_virtio_transport,nsm}.ko
#   $CACHE/kernel/<KVER>/modules/modules.load   (load order: "FILE [PREFIX]" per line)
#   $CACHE/kernel/<KVER>/SHA256SUMS             (bzImage and every .ko)
# A stamp (hash of this script, the shim source, the pinned versions, the compiler) makes a
# second run finish in seconds; any input change rebuilds.
set -euo pipefail

log() { printf 'nitro-sim/kernel: %s\n' "$*" >&2; }
die() { printf 'nitro-sim/kernel: ERROR: %s\n' "$*" >&2; exit 1; }

# --- pins ---------------------------------------------------------------------------------------
KVER=6.12.95+deb12-cloud-amd64      # kernel release (uname -r) = module vermagic prefix
PKGVER=6.12.95-1~bpo12+1            # Debian package version, suite bookworm-backports
ABI=${KVER%-cloud-amd64}            # 6.12.95+deb12
IMAGE_PKG=linux-image-$KVER-unsigned
HEADER_PKGS=(linux-headers-$KVER linux-headers-$ABI-common linux-kbuild-$ABI)
VERMAGIC="$KVER SMP preempt mod_unload modversions"
# The .debs' SHA-256, pinned here (not only apt's current lists, which forget a version once it
# leaves the archive): the kernel and the bootstrap ramdisk are measured into PCR0 and PCR1.
# The kernel itself (vmlinuz from the image package), checked on every run, cached or not.
BZIMAGE_SHA256=1e1b20f533828d752b7e822dbf8d86898677f00727f39b36896e3d13881c4a05
declare -A PINNED_SHA256=(
    [linux-image-$KVER-unsigned]=6ed2b95055a96af9f543a427cc1bc56f67e5e72ec16b227ec965a9325aeb3480
    [linux-headers-$KVER]=8e4ad8e4a06b2ed286ab086d4c450ec00694a7724a0f80cb5d7a8f3bd1038446
    [linux-headers-$ABI-common]=5f0ddff86b25a7c8ba07ee2e6f7f74b17d4c0a3f621b08b50fa91290e689fd72
    [linux-kbuild-$ABI]=7770286db28850f6d589c89908823368cdd4aca3e489155fdcc371d95c103cbc
)
# Load order. FILE [PREFIX]: with PREFIX, the init passes each kernel command-line word
# PREFIX.NAME=VALUE to the module as NAME=VALUE (as modprobe does from /proc/cmdline).
LOAD_ORDER=(
    "virtio_mmio.ko"
    "virtio_mmio_shim.ko virtio_mmio"
    "vsock.ko"
    "vmw_vsock_virtio_transport_common.ko"
    "vmw_vsock_virtio_transport.ko"
    "nsm.ko"
)
REQUIRED_CONFIG=(CONFIG_NSM=m CONFIG_VIRTIO_MMIO=m CONFIG_VSOCKETS=m CONFIG_VIRTIO_VSOCKETS=m
                 CONFIG_DEVTMPFS=y CONFIG_VIRTIO=y)

usage() {
    cat <<EOF
Usage: scripts/nitro-sim/kernel.sh [--force] [--print-dir] [--help]

Fetches Debian's $IMAGE_PKG ($PKGVER, bookworm-backports) and the matching
headers (${HEADER_PKGS[*]}) with apt-get download + dpkg-deb -x,
builds scripts/nitro-sim/shim/virtio_mmio_shim.ko against them, and writes
  \${NITRO_SIM_CACHE:-<repo>/target/nitro-sim}/kernel/$KVER/{bzImage,modules/,SHA256SUMS}

  --force   rebuild even if the stamp says the output is current
  --print-dir  print the output directory on stdout when done (for scripts)
  --help    this text

Environment: NITRO_SIM_CACHE (cache root).
To use .debs fetched by other means (e.g. from snapshot.debian.org when the pinned version has left
the archive), put them in \$CACHE/kernel/build/$KVER/debs/ under their usual file names.
EOF
}

FORCE=0
PRINT_DIR=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --print-dir) PRINT_DIR=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${NITRO_SIM_CACHE:-$REPO/target/nitro-sim}"
SHIM_SRC="$HERE/shim"
SHIM_FILES=("$SHIM_SRC/virtio_mmio_shim.c" "$SHIM_SRC/Kbuild")
OUT="$CACHE/kernel/$KVER"
BUILD="$CACHE/kernel/build/$KVER"
DEBS="$BUILD/debs"
ROOT="$BUILD/root"
STAMP="$CACHE/stamps/kernel-$KVER.stamp"

"$HERE/apt-backports.sh"

APT_OPTS=(-o DPkg::Lock::Timeout=600)
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
# The tools below, by Debian package name (a fresh machine of this kind has most of them).
need_pkgs=()
for pkg in gcc-12 make binutils xz-utils findutils util-linux; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    $SUDO apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2 \
        || die "apt-get install ${need_pkgs[*]} failed"
fi

for tool in apt-get apt-cache dpkg-deb xz objcopy strip make sha256sum flock find; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH"
done
command -v x86_64-linux-gnu-gcc-12 >/dev/null 2>&1 \
    || die "x86_64-linux-gnu-gcc-12 not found: Debian built $KVER with gcc-12 (apt-get install gcc-12)"
for f in "${SHIM_FILES[@]}"; do [ -f "$f" ] || die "missing shim source $f"; done

mkdir -p "$CACHE/stamps" "$BUILD"
exec 9>"$BUILD/.lock"
flock 9 || die "cannot lock $BUILD/.lock"

stamp_inputs() {
    printf 'kver=%s\npkgver=%s\n' "$KVER" "$PKGVER"
    sha256sum "${BASH_SOURCE[0]}" "${SHIM_FILES[@]}" | awk '{print $1}'
    x86_64-linux-gnu-gcc-12 --version | head -n 1
}
WANT_STAMP="$(stamp_inputs | sha256sum | awk '{print $1}')"

if [ "$FORCE" = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT_STAMP" ] \
    && [ -f "$OUT/SHA256SUMS" ] && [ -f "$OUT/modules/modules.load" ] \
    && (cd "$OUT" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1) \
    && [ "$(sha256sum "$OUT/bzImage" | awk '{print $1}')" = "$BZIMAGE_SHA256" ]; then
    log "up to date: $OUT (stamp ${WANT_STAMP:0:12}; SHA256SUMS verified)"
    [ "$PRINT_DIR" = 0 ] || printf '%s\n' "$OUT"
    exit 0
fi

# --- helpers ------------------------------------------------------------------------------------
# As root, apt's download sandbox user (_apt) cannot write into the cache; download as root.
[ "$(id -u)" -ne 0 ] || APT_OPTS+=(-o APT::Sandbox::User=root)

deb_file() { # pkg -> path of its cached .deb (any architecture suffix)
    local pkg=$1 f
    for f in "$DEBS/${pkg}_${PKGVER//:/%3a}"_*.deb; do
        [ -f "$f" ] && { printf '%s\n' "$f"; return 0; }
    done
    return 1
}

apt_has_version() { # pkg -> success when apt's lists have $pkg at $PKGVER
    apt-cache madison "$1" 2>/dev/null \
        | awk -F'|' -v v="$PKGVER" '{ gsub(/ /, "", $2) } $2 == v { f = 1 } END { exit !f }'
}

gone_from_archive() { # explain what to change when the pinned version cannot be downloaded
    local pkg=$1 avail
    avail="$(apt-cache madison "$pkg" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | sort -u | paste -sd' ' -)"
    local others
    others="$(apt-cache search --names-only '^linux-image-[0-9.]+\+deb12-cloud-amd64-unsigned$' 2>/dev/null \
        | awk '{print $1}' | sort -V | paste -sd' ' -)"
    die "cannot download $pkg=$PKGVER: the pinned version seems gone from the archive
    (a suite keeps only the newest upload of a package). apt knows $pkg versions: ${avail:-none}.
    Cloud kernel packages apt knows now (any suite; see apt-cache policy): ${others:-none}.
    Fix: set KVER and PKGVER at the top of $0 to an available kernel (and re-run; the config and
    module checks will tell whether it still fits), or put the pinned .debs from
    https://snapshot.debian.org/ into $DEBS/."
}

download_debs() {
    local missing=() pkg
    for pkg in "$IMAGE_PKG" "${HEADER_PKGS[@]}"; do
        deb_file "$pkg" >/dev/null || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || { log "using cached .debs in $DEBS"; return 0; }
    mkdir -p "$DEBS"
    local specs=()
    for pkg in "${missing[@]}"; do specs+=("$pkg=$PKGVER"); done
    log "apt-get download ${specs[*]}"
    if ! (cd "$DEBS" && apt-get "${APT_OPTS[@]}" -q download "${specs[@]}" >&2); then
        log "download failed; refreshing the apt lists once and retrying"
        $SUDO apt-get "${APT_OPTS[@]}" -qq update >&2 || log "apt-get update failed (continuing)"
        if ! (cd "$DEBS" && apt-get "${APT_OPTS[@]}" -q download "${specs[@]}" >&2); then
            for pkg in "${missing[@]}"; do
                apt_has_version "$pkg" || gone_from_archive "$pkg"
            done
            die "apt-get download failed for ${specs[*]} (network? see the apt output above)"
        fi
    fi
}

verify_debs() { # against the SHA256 apt's package lists record (when apt still knows the version)
    local pkg f want got
    for pkg in "$IMAGE_PKG" "${HEADER_PKGS[@]}"; do
        f="$(deb_file "$pkg")" || die "no .deb for $pkg in $DEBS"
        got="$(sha256sum "$f" | awk '{print $1}')"
        if [ "${PINNED_SHA256[$pkg]:-}" != "$got" ]; then
            rm -f "$f"
            die "$(basename "$f") has sha256 $got, not the pinned ${PINNED_SHA256[$pkg]:-<none>} (file removed; a new KVER needs new pins)"
        fi
        want="$(apt-cache show "$pkg=$PKGVER" 2>/dev/null | awk '/^SHA256:/ {print $2; exit}')"
        if [ -z "$want" ]; then
            log "note: apt no longer lists $pkg=$PKGVER; cannot cross-check $(basename "$f") ($got)"
        elif [ "$want" != "$got" ]; then
            rm -f "$f"
            die "$(basename "$f") has sha256 $got, apt's lists say $want (file removed; re-run)"
        fi
        [ "$(dpkg-deb -f "$f" Version)" = "$PKGVER" ] || die "$(basename "$f") is not version $PKGVER"
    done
    log "the 4 .debs match the pinned SHA-256, apt's lists and version $PKGVER"
}

modinfo_field() { # file field -> value(s), one per line; modinfo when installed, else .modinfo
    local file=$1 field=$2 tmp
    if command -v modinfo >/dev/null 2>&1; then
        modinfo -F "$field" "$file"
        return
    fi
    tmp="$(mktemp)"
    objcopy -O binary --only-section=.modinfo "$file" "$tmp" \
        || { rm -f "$tmp"; die "cannot read .modinfo of $file"; }
    tr '\0' '\n' <"$tmp" | sed -n "s/^$field=//p"
    rm -f "$tmp"
}

# --- download and unpack ------------------------------------------------------------------------
download_debs
verify_debs
log "unpacking into $ROOT"
rm -rf "$ROOT"
mkdir -p "$ROOT"
for pkg in "$IMAGE_PKG" "${HEADER_PKGS[@]}"; do
    dpkg-deb -x "$(deb_file "$pkg")" "$ROOT"
done

# Make the kbuild tree usable from the cache: absolute symlinks (lib/modules/*/build, source)
# become relative ones inside $ROOT, and the headers' one-line Makefile includes the common
# Makefile by absolute path. The relative links (headers/scripts -> ../../lib/linux-kbuild-*/...)
# already resolve inside $ROOT.
while IFS= read -r -d '' link; do
    target="$(readlink "$link")"
    case "$target" in
        /*)
            rel="${link#"$ROOT"/}"
            up="$(dirname "$rel" | sed -e 's#[^/][^/]*#..#g')"   # lib/modules/K -> ../../..
            [ "$up" != ".." ] || [ "$(dirname "$rel")" != "." ] || up=.
            ln -sfn "$up$target" "$link"
            ;;
    esac
done < <(find "$ROOT" -type l -print0)
HDRS="$ROOT/usr/src/linux-headers-$KVER"
COMMON="$ROOT/usr/src/linux-headers-$ABI-common"
[ -f "$HDRS/Makefile" ] && [ -f "$COMMON/Makefile" ] || die "headers tree incomplete under $ROOT/usr/src"
grep -qx "include /usr/src/linux-headers-$ABI-common/Makefile" "$HDRS/Makefile" \
    || die "unexpected $HDRS/Makefile (Debian changed the headers layout?): $(cat "$HDRS/Makefile")"
printf 'include %s/Makefile\n' "$COMMON" >"$HDRS/Makefile"
[ -x "$HDRS/scripts/basic/fixdep" ] && [ -x "$HDRS/scripts/mod/modpost" ] \
    || die "kbuild tools not reachable through $HDRS/scripts (linux-kbuild-$ABI unpacked?)"
if find "$ROOT" -type l -lname '/*' | grep -q .; then
    die "absolute symlinks left in $ROOT: $(find "$ROOT" -type l -lname '/*' | head -3)"
fi

# --- kernel config checks -----------------------------------------------------------------------
CONFIG="$ROOT/boot/config-$KVER"
[ -f "$CONFIG" ] || die "$IMAGE_PKG has no /boot/config-$KVER"
# The headers' .config must be the image's, except for build-time-only signing/salt settings.
CONFIG_IGNORE='^(CONFIG_BUILD_SALT|CONFIG_MODULE_SIG_ALL|CONFIG_MODULE_SIG_KEY|CONFIG_SYSTEM_TRUSTED_KEYS)='
diff -q <(grep -Ev "$CONFIG_IGNORE" "$CONFIG") <(grep -Ev "$CONFIG_IGNORE" "$HDRS/.config") >/dev/null \
    || die "the headers' .config differs from the image's $CONFIG (mismatched packages?)"
for want in "${REQUIRED_CONFIG[@]}"; do
    grep -qx "$want" "$CONFIG" \
        || die "kernel config: want $want, have '$(grep -E "^(# )?${want%%=*}[= ]" "$CONFIG" || echo unset)'"
done
if grep -q '^CONFIG_MODULE_SIG_FORCE=' "$CONFIG"; then
    die "kernel config sets CONFIG_MODULE_SIG_FORCE: the unsigned shim module could not be loaded"
fi
if grep -q '^CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y' "$CONFIG"; then
    die "kernel config sets CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES: virtio_mmio itself would take virtio_mmio.device=, and the shim would register every device twice; drop the shim from LOAD_ORDER"
fi
log "kernel config ok: ${REQUIRED_CONFIG[*]}, no CONFIG_MODULE_SIG_FORCE, no VIRTIO_MMIO_CMDLINE_DEVICES"

# --- assemble the output in a staging dir, then swap it in --------------------------------------
STAGE="$OUT.new"
rm -rf "$STAGE"
mkdir -p "$STAGE/modules"
VMLINUZ="$ROOT/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || die "$IMAGE_PKG has no /boot/vmlinuz-$KVER"
cp "$VMLINUZ" "$STAGE/bzImage"
[ "$(sha256sum "$STAGE/bzImage" | awk '{print $1}')" = "$BZIMAGE_SHA256" ] || die "the kernel from the .deb is not the pinned one (sha256 $BZIMAGE_SHA256)"

MODDIR="$ROOT/lib/modules/$KVER/kernel"
for entry in "${LOAD_ORDER[@]}"; do
    file=${entry%% *}
    [ "$file" != virtio_mmio_shim.ko ] || continue
    mapfile -t found < <(find "$MODDIR" \( -name "$file.xz" -o -name "$file" \) -type f)
    [ ${#found[@]} -eq 1 ] || die "expected exactly one $file(.xz) under $MODDIR, found ${#found[@]}"
    case "${found[0]}" in
        *.xz) xz -dc "${found[0]}" >"$STAGE/modules/$file" ;;
        *) cp "${found[0]}" "$STAGE/modules/$file" ;;
    esac
    log "module $file <- ${found[0]#"$ROOT"/}"
done

# --- build the shim -----------------------------------------------------------------------------
SHIM_BUILD="$BUILD/shim"
rm -rf "$SHIM_BUILD"
mkdir -p "$SHIM_BUILD"
cp "${SHIM_FILES[@]}" "$SHIM_BUILD/"
HOST_CC="$(x86_64-linux-gnu-gcc-12 --version | head -n 1)"
KERNEL_CC="$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\(.*\)"$/\1/p' "$CONFIG")"
[ "$HOST_CC" = "$KERNEL_CC" ] || log "warning: compiler '$HOST_CC' differs from the kernel's '$KERNEL_CC'"
# CONFIG_DEBUG_INFO_BTF_MODULES= : no BTF for the shim (would need pahole; the shim needs none).
log "make -C $HDRS M=$SHIM_BUILD modules"
if ! make -C "$HDRS" M="$SHIM_BUILD" CONFIG_DEBUG_INFO_BTF_MODULES= W=1 modules \
        >"$SHIM_BUILD/build.log" 2>&1; then
    sed 's/^/    /' "$SHIM_BUILD/build.log" >&2
    die "building virtio_mmio_shim.ko failed (log: $SHIM_BUILD/build.log)"
fi
if grep -E 'warning:|error:' "$SHIM_BUILD/build.log" >&2; then
    die "the shim build printed warnings (log: $SHIM_BUILD/build.log)"
fi
strip --strip-debug -o "$STAGE/modules/virtio_mmio_shim.ko" "$SHIM_BUILD/virtio_mmio_shim.ko"
log "module virtio_mmio_shim.ko <- built, $(stat -c %s "$STAGE/modules/virtio_mmio_shim.ko") bytes after strip --strip-debug"

# --- module checks: vermagic, name, shim parameter, dependency order ----------------------------
seen=" "
for entry in "${LOAD_ORDER[@]}"; do
    file=${entry%% *}
    mod="${file%.ko}"
    ko="$STAGE/modules/$file"
    vm="$(modinfo_field "$ko" vermagic | sed 's/[[:space:]]*$//')"
    [ "$vm" = "$VERMAGIC" ] || die "$file: vermagic '$vm', want '$VERMAGIC'"
    name="$(modinfo_field "$ko" name)"
    [ "$name" = "$mod" ] || die "$file: module name '$name', want '$mod'"
    deps="$(modinfo_field "$ko" depends | tr ',' ' ' | tr '-' '_')"
    for dep in $deps; do
        case "$seen" in
            *" $dep "*) ;;
            *)
                found_later=0
                for e in "${LOAD_ORDER[@]}"; do [ "${e%% *}" != "$dep.ko" ] || found_later=1; done
                [ "$found_later" = 0 ] \
                    || die "$file depends on $dep, which comes later in the load order"
                die "$file depends on $dep, which is not in the load order (unexpected dependency)"
                ;;
        esac
    done
    seen="$seen$mod "
    log "checked $file: vermagic ok, depends: ${deps:-(none)}"
done
SHIM_KO="$STAGE/modules/virtio_mmio_shim.ko"
modinfo_field "$SHIM_KO" parm | grep -q '^device:' || die "virtio_mmio_shim.ko has no 'device' parameter"
[ -z "$(modinfo_field "$SHIM_KO" depends)" ] || die "virtio_mmio_shim.ko should depend on nothing"
[ "$(modinfo_field "$SHIM_KO" license)" = GPL ] || die "virtio_mmio_shim.ko license is not GPL"

printf '%s\n' "${LOAD_ORDER[@]}" >"$STAGE/modules/modules.load"
(cd "$STAGE" && sha256sum bzImage modules/*.ko >SHA256SUMS)

rm -rf "$OUT.old"
[ ! -e "$OUT" ] || mv "$OUT" "$OUT.old"
mv "$STAGE" "$OUT"
rm -rf "$OUT.old"
printf '%s\n' "$WANT_STAMP" >"$STAMP.new"
mv -f "$STAMP.new" "$STAMP"
log "done: $OUT"
sed 's/^/    /' "$OUT/SHA256SUMS" >&2
[ "$PRINT_DIR" = 0 ] || printf '%s\n' "$OUT"
