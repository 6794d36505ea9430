#!/usr/bin/env bash
# Regenerates kms-sim's TEST PKI (committed; tests never run openssl). TEST ONLY: the private keys
# are public, in this repository. The enclave trusts ca.der only when built with its `simulated`
# feature; a default (production) build never does.
#
#   ca.der / ca.pem              "wallet kms-sim TEST CA" (P-256, valid 2020-01-01 .. 2120-01-01)
#   server.der (.pem), server.key.der (PKCS#8)
#                                the server certificate kms-sim presents, for
#                                kms.us-east-1.amazonaws.com, localhost and 127.0.0.1
#   rogue-ca.der, rogue-server.der (.pem), rogue-server.key.der
#                                a second CA and a certificate for the same names: what a host
#                                faking KMS could present (the enclave must refuse it)
#
# Usage: bash kms-sim/testdata/generate.sh   (needs openssl 3)
set -euo pipefail
cd "$(dirname "$0")"
sans="subjectAltName = DNS:kms.us-east-1.amazonaws.com,DNS:localhost,IP:127.0.0.1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# `openssl ca` rather than `req -x509`: it can backdate (valid 2020-01-01 .. 2120-01-01), so a
# machine whose clock lags the generating one still accepts the certificates.
make_pki() { # prefix, CA common name
  local p=$1 cn=$2 d="$tmp/$1"
  mkdir -p "$d/new"
  : > "$d/index.txt"
  cat > "$d/ca.cnf" <<CNF
[ca]
default_ca = ca_default
[ca_default]
dir = $d
database = $d/index.txt
new_certs_dir = $d/new
serial = $d/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
[v3_ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
$sans
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
CNF
  echo 01 > "$d/serial"
  local dates=(-startdate 20200101000000Z -enddate 21200101000000Z)
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key"
  openssl req -new -key "$d/ca.key" -subj "/CN=$cn" -out "$d/ca.csr"
  openssl ca -batch -notext -selfsign -config "$d/ca.cnf" -extensions v3_ca -keyfile "$d/ca.key" \
    "${dates[@]}" -in "$d/ca.csr" -out "$tmp/$p-ca.pem" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/$p-server.key"
  openssl req -new -key "$tmp/$p-server.key" -subj "/CN=kms.us-east-1.amazonaws.com" \
    -out "$d/server.csr"
  openssl ca -batch -notext -config "$d/ca.cnf" -extensions v3_server -cert "$tmp/$p-ca.pem" \
    -keyfile "$d/ca.key" "${dates[@]}" -in "$d/server.csr" -out "$tmp/$p-server.pem" 2>/dev/null
}

make_pki test "wallet kms-sim TEST CA (never trust in production)"
make_pki rogue "rogue CA (a host faking KMS)"

openssl x509 -in "$tmp/test-ca.pem" -outform DER -out ca.der
cp "$tmp/test-ca.pem" ca.pem
cp "$tmp/test-server.pem" server.pem
openssl x509 -in "$tmp/test-server.pem" -outform DER -out server.der
openssl pkcs8 -topk8 -nocrypt -in "$tmp/test-server.key" -outform DER -out server.key.der
openssl x509 -in "$tmp/rogue-ca.pem" -outform DER -out rogue-ca.der
cp "$tmp/rogue-server.pem" rogue-server.pem
openssl x509 -in "$tmp/rogue-server.pem" -outform DER -out rogue-server.der
openssl pkcs8 -topk8 -nocrypt -in "$tmp/rogue-server.key" -outform DER -out rogue-server.key.der
echo "kms-sim test PKI written to $(pwd)"
