#!/usr/bin/env bash
# Makes Debian's bookworm-backports available to apt (binary and source), for the QEMU source
# and the kernel package the emulation needs. Backports are NotAutomatic: nothing is installed
# from them unless a command names them (`-t bookworm-backports`, or `apt-get source/download`).
# Idempotent; `apt-get update` runs only when the list is new. Needs root (sudo when not root).
set -euo pipefail
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
LIST=/etc/apt/sources.list.d/x402-wallet-bookworm-backports.sources
if [ ! -f "$LIST" ]; then
    $SUDO tee "$LIST" >/dev/null <<'SRC'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
fi
