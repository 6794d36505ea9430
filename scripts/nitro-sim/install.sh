#!/usr/bin/env bash
# Installs what the Nitro emulation needs, from the project's own files, on a fresh Debian 12:
#
#   scripts/nitro-sim/install.sh [--print-env]
#
#   qemu.sh    QEMU 10 with the `nitro-enclave` machine, built from Debian's source (apt-get
#              source) with libcbor, the nitro-only device set and our patch that makes the
#              emulated NSM sign its attestation documents with the project's TEST chain;
#   vhost.sh   vhost-device-vsock from crates.io with our build fix, without AF_VSOCK support:
#              it maps the guest's vsock to Unix sockets;
#   kernel.sh  Debian's cloud kernel (apt-get download + dpkg-deb -x, never installed), its
#              nsm/virtio_mmio/vsock modules, and our virtio-mmio shim module.
#
# Each caches what it built under NITRO_SIM_CACHE (default target/nitro-sim) with a stamp of its
# inputs, so a second run takes seconds; CI points NITRO_SIM_CACHE at a directory it keeps.
# QEMU's runtime libraries are installed by name; its firmware (qboot, the option ROMs) is
# built from the same source and found beside the binary.
# With --print-env, stdout gets shell assignments for scripts: QEMU, VHOST_DEVICE_VSOCK,
# KERNEL_DIR; progress goes to stderr.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export NITRO_SIM_CACHE="${NITRO_SIM_CACHE:-$ROOT/target/nitro-sim}"
PRINT_ENV=0
case "${1:-}" in
  --print-env) PRINT_ENV=1 ;;
  -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac
start=$(date +%s)
"$HERE/qemu.sh" >&2
"$HERE/vhost.sh" >&2
KERNEL_DIR="$("$HERE/kernel.sh" --print-dir)"
QEMU="$NITRO_SIM_CACHE/qemu/bin/qemu-system-x86_64"
VHOST_DEVICE_VSOCK="$NITRO_SIM_CACHE/bin/vhost-device-vsock"
for f in "$QEMU" "$VHOST_DEVICE_VSOCK" "$KERNEL_DIR/bzImage"; do
  [ -e "$f" ] || { echo "install.sh: $f is missing after the install" >&2; exit 1; }
done
echo "nitro-sim: ready in $(( $(date +%s) - start )) s (cache $NITRO_SIM_CACHE)" >&2
if [ "$PRINT_ENV" = 1 ]; then
  printf 'QEMU=%q\nVHOST_DEVICE_VSOCK=%q\nKERNEL_DIR=%q\n' "$QEMU" "$VHOST_DEVICE_VSOCK" "$KERNEL_DIR"
fi
