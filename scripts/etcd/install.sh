#!/usr/bin/env bash
# Installs etcd (server and etcdctl, 3.4 or newer) from Debian's packages etcd-server and
# etcd-client, for the tests that run an etcd cluster as the wallet's external anchor
# (tests/src/etcd.rs starts its own members on 127.0.0.1 in a temporary directory).
# Idempotent: when `etcd` and `etcdctl` are already on PATH at 3.4 or newer it only prints their
# versions. Note: the etcd-server package installs and enables a systemd unit (etcd.service) with
# a default member on 127.0.0.1:2379; the tests never use it (they start their own members on
# free ports), and where no systemd runs (a container) nothing is started.
set -euo pipefail

# "etcd Version: 3.4.23" -> success when the major.minor is at least 3.4.
etcd_recent_enough() {
  local v major minor
  v=$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: *\([0-9][0-9.]*\).*/\1/p' | sed -n 1p)
  [ -n "$v" ] || return 1
  major=${v%%.*}
  minor=${v#*.}; minor=${minor%%.*}
  [ "$major" -gt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -ge 4 ]; }
}

show_versions() {
  etcd --version | sed -n 1p
  etcdctl version | sed -n 1p
}

if command -v etcd >/dev/null && command -v etcdctl >/dev/null && etcd_recent_enough; then
  show_versions
  exit 0
fi

SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
install() {
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 etcd-server etcd-client
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! install 2>&1 | tee "$log"; then
  # A fresh machine has no package lists yet: fetch them once and try again. Any other failure
  # is reported as it is.
  if grep -qE 'Unable to locate package|has no installation candidate' "$log"; then
    $SUDO apt-get update -qq -o DPkg::Lock::Timeout=600
    install
  else
    echo "apt-get install etcd-server etcd-client failed" >&2
    exit 1
  fi
fi

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "etcd or etcdctl is still not on PATH after installing etcd-server and etcd-client" >&2
  exit 1
fi
etcd_recent_enough || {
  echo "etcd is older than 3.4: $(etcd --version | sed -n 1p)" >&2
  exit 1
}
show_versions
