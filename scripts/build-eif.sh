#!/usr/bin/env bash
# Builds the wallet's enclave image file (EIF), reproducibly, and prints its PCRs as JSON.
#
#   scripts/build-eif.sh [--out DIR] [--kernel-dir DIR] [--cmdline STR] [--target-dir DIR]
#                        [--name NAME] [--image-version V] [--app-file SOURCE=PATH]...
#
# 1. wallet-enclave, static (x86_64-unknown-linux-musl), profile `eif` (no debug info, no
#    symbols), with build paths remapped (/build, /cargo, /target) so the bytes do not depend on
#    where the checkout or the cargo home is;
# 2. the kernel: DIR/bzImage and DIR/modules/ (the .ko files and modules.load, the load order).
#    Default: Debian's cloud kernel with the virtio-mmio shim, from scripts/nitro-sim/kernel.sh
#    (what the QEMU emulation boots; on real Nitro see README "Deploying on AWS Nitro");
# 3. the image, with `wallet-eif` (eif/, on AWS's aws-nitro-enclaves-image-format crate):
#    bootstrap ramdisk = /dev, /proc, /sys, lib/modules (PCR1, with kernel and command line);
#    app ramdisk = /init, the wallet-enclave binary, nothing else (PCR2).
#
# The image version (EIF metadata, not measured) defaults to `git describe --always --dirty`.
# Output in DIR (default target/eif): NAME.eif, NAME.pcrs.json (nitro-cli's format, which
# `walletctl init --measurements` reads), NAME.build-info.txt (the toolchain: the same sources
# give the same PCRs with the same rustc and musl-gcc, and the same kernel files), bootstrap.cpio,
# app.cpio, wallet-enclave. The same JSON
# goes to stdout; progress goes to stderr. `--app-file` adds a file to the app ramdisk, which
# changes PCR2: for tests of a tampered image only.
#
# Environment: NITRO_SIM_CACHE (where kernel.sh caches; default target/nitro-sim).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/target/eif"
KERNEL_DIR=""
CMDLINE="console=ttyS0 reboot=k panic=30 pci=off random.trust_cpu=on"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
NAME="wallet"
IMAGE_VERSION=""
APP_FILES=()
say() { echo "build-eif: $*" >&2; }
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --kernel-dir) KERNEL_DIR="$2"; shift 2 ;;
    --cmdline) CMDLINE="$2"; shift 2 ;;
    --target-dir) TARGET_DIR="$2"; shift 2 ;;
    --name) NAME="$2"; shift 2 ;;
    --image-version) IMAGE_VERSION="$2"; shift 2 ;;
    --app-file) APP_FILES+=(--app-file "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-eif: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" "$TARGET_DIR"
TARGET_DIR="$(cd "$TARGET_DIR" && pwd)"
MUSL=x86_64-unknown-linux-musl

# 1. The enclave binary.
if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
  say "adding the Rust target $MUSL"
  rustup target add "$MUSL" >&2
fi
if ! command -v musl-gcc >/dev/null; then
  say "installing musl-tools (musl-gcc, for ring's C parts)"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq musl-tools >&2
fi
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
say "building wallet-enclave ($MUSL, profile eif) with $(rustc --version)"
# A clean environment: flags, wrappers and profile overrides from the caller's environment would
# change the binary (CARGO_ENCODED_RUSTFLAGS beats RUSTFLAGS, CFLAGS reach ring's C code,
# CARGO_PROFILE_* reach the profile). Only what cargo needs to find its tools and the registry
# passes. Paths end up in panic messages: they are mapped to fixed names, so the binary, and PCR2,
# depend on the sources and the toolchain only (rustc, musl-gcc; a cargo config file in
# CARGO_HOME still applies: keep it free of build flags).
keep=()
for v in PATH HOME CARGO_HOME RUSTUP_HOME RUSTUP_TOOLCHAIN TMPDIR LANG SSL_CERT_FILE SSL_CERT_DIR \
         CARGO_HTTP_CAINFO HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  [ -n "${!v:-}" ] && keep+=("$v=${!v}")
done
(
  cd "$ROOT"
  env -i "${keep[@]}" \
    CC_x86_64_unknown_linux_musl=musl-gcc \
    CARGO_TARGET_DIR="$TARGET_DIR" \
    RUSTFLAGS="--remap-path-prefix=$ROOT=/build --remap-path-prefix=$CARGO_HOME_DIR=/cargo --remap-path-prefix=$TARGET_DIR=/target" \
    cargo build --locked --quiet -p wallet-enclave --bin wallet-enclave --target "$MUSL" --profile eif >&2
)
BIN="$TARGET_DIR/$MUSL/eif/wallet-enclave"
file_type="$(head -c 4 "$BIN" | od -An -c | tr -d ' ')"
[ "$file_type" = '177ELF' ] || { say "$BIN is not an ELF binary"; exit 1; }
cp "$BIN" "$OUT/wallet-enclave"

# 2. The kernel.
KERNEL_VERSION=custom
if [ -z "$KERNEL_DIR" ]; then
  say "kernel: Debian's cloud kernel with the virtio-mmio shim (scripts/nitro-sim/kernel.sh)"
  KERNEL_DIR="$("$ROOT/scripts/nitro-sim/kernel.sh" --print-dir)"
  KERNEL_VERSION="$(basename "$KERNEL_DIR")"
fi
[ -f "$KERNEL_DIR/bzImage" ] || { say "no bzImage in $KERNEL_DIR"; exit 1; }
MODULES=()
[ -f "$KERNEL_DIR/modules/modules.load" ] && MODULES=(--modules "$KERNEL_DIR/modules")

# 3. The image.
say "building the image tool (eif/)"
cargo build --locked --quiet --release --manifest-path "$ROOT/eif/Cargo.toml" --target-dir "$TARGET_DIR/eif-tool" >&2
"$TARGET_DIR/eif-tool/release/wallet-eif" build \
  --kernel "$KERNEL_DIR/bzImage" "${MODULES[@]}" --cmdline "$CMDLINE" \
  --init "$OUT/wallet-enclave" "${APP_FILES[@]}" \
  --out "$OUT" --name "$NAME" --kernel-version "$KERNEL_VERSION" \
  --image-version "${IMAGE_VERSION:-$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)}"
{
  echo "rustc: $(rustc --version)"
  echo "cargo: $(cargo --version)"
  echo "musl-gcc: $(musl-gcc --version 2>/dev/null | head -1)"
  echo "kernel: $KERNEL_VERSION ($(sha256sum "$KERNEL_DIR/bzImage" | cut -c1-64))"
} >"$OUT/$NAME.build-info.txt"
say "wrote $OUT/$NAME.eif ($(stat -c %s "$OUT/$NAME.eif") bytes) and $OUT/$NAME.pcrs.json"
