#!/usr/bin/env bash
# Generates the TEST PKI of wallet-attestation (run once; the outputs are committed).
#
#   attestation/testdata/gen-test-pki.sh          # rewrites attestation/testdata/test-pki/
#
# Everything here is for tests and the simulated enclave only. The root is compiled into the
# library only with the `test-pki` feature, and never into a production build.
#
# test-pki/                      the chain sign_document uses (all P-384, ecdsa-with-SHA384,
#   root.der                       valid 2020-01-01 .. 2120-01-01, GeneralizedTime)
#   intermediate.der               CA, pathlen 0, issued by root
#   leaf.der, leaf.key.pk8.der     the NSM signing certificate and its PKCS#8 key
# test-pki/attacks/              certificates only the verifier's own tests use
#   expired-leaf.der               the leaf key, issued by the intermediate, valid 2020 .. 2021
#   foreign-root.der               a different root (same shape, different key and name)
#   foreign-leaf.der               issued by the foreign root, key foreign-leaf.key.pk8.der
#   impostor-intermediate.der      claims the test root as issuer, signed by another key
#   impostor-leaf.der              the leaf key, issued by the impostor intermediate
#   sub-ca.der, sub-ca-leaf.der    a CA under the intermediate (breaks its pathlen 0), and a
#                                  leaf (the leaf key) under it
#   ee-under-root.der              an end-entity (not a CA; the leaf key) under the root
#   issued-by-ee.der               the leaf key, "issued" by ee-under-root
#   leaf-sha256.der                the leaf key, signed ecdsa-with-SHA256 by the intermediate
#   leaf-p256.der                  a P-256 leaf issued by the intermediate
#
# After regenerating, refresh testdata/simulated-document.cbor:
#   cargo test -p wallet-attestation --features test-pki -- --ignored regenerate_simulated_document
set -euo pipefail
cd "$(dirname "$0")"
command -v openssl >/dev/null || { echo "gen-test-pki.sh: needs the openssl CLI" >&2; exit 1; }

OUT=test-pki
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/newcerts"
: >"$WORK/index.txt"
echo 1000 >"$WORK/serial"

START=20200101000000Z
END=21200101000000Z
NOTE="simulated, never production"
ORG="/O=x402-wallet TEST PKI/OU=simulated attestation"

cat >"$WORK/ca.cnf" <<CNF
[ ca ]
default_ca = test_ca
[ test_ca ]
database = $WORK/index.txt
new_certs_dir = $WORK/newcerts
serial = $WORK/serial
default_md = sha384
policy = policy_any
unique_subject = no
copy_extensions = none
preserve = yes
[ policy_any ]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
[ req ]
distinguished_name = dn
string_mask = utf8only
utf8 = yes
prompt = no
[ dn ]
CN = unused
[ v3_root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ v3_intermediate ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ v3_sub_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ v3_leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF

key() { # key NAME CURVE
  openssl genpkey -algorithm EC -pkeyopt "ec_paramgen_curve:$2" -pkeyopt ec_param_enc:named_curve \
    -out "$WORK/$1.key.pem"
}

# issue NAME SUBJECT_CN KEY ISSUER_CERT(or -) ISSUER_KEY EXTENSIONS [START END MD]
issue() {
  local name=$1 cn=$2 subject_key=$3 issuer=$4 issuer_key=$5 ext=$6
  local start=${7:-$START} end=${8:-$END} md=${9:-sha384}
  openssl req -new -config "$WORK/ca.cnf" -key "$WORK/$subject_key.key.pem" -utf8 \
    -subj "/CN=$cn$ORG" -out "$WORK/$name.csr"
  local issuer_args=(-cert "$WORK/$issuer.pem")
  [ "$issuer" = - ] && issuer_args=(-selfsign)
  openssl ca -batch -config "$WORK/ca.cnf" -utf8 -preserveDN -rand_serial -notext \
    "${issuer_args[@]}" -keyfile "$WORK/$issuer_key.key.pem" -md "$md" \
    -startdate "$start" -enddate "$end" -extensions "$ext" \
    -in "$WORK/$name.csr" -out "$WORK/$name.pem" 2>"$WORK/ca.log" ||
    { cat "$WORK/ca.log" >&2; exit 1; }
}

der() { openssl x509 -in "$WORK/$1.pem" -outform DER -out "$2"; }
pk8() { openssl pkcs8 -topk8 -nocrypt -in "$WORK/$1.key.pem" -outform DER -out "$2"; }

key root P-384
key intermediate P-384
key leaf P-384
key foreign-root P-384
key foreign-leaf P-384
key impostor P-384
key impostor-intermediate P-384
key sub-ca P-384
key leaf-p256 P-256

issue root "x402-wallet TEST ROOT — $NOTE" root - root v3_root
issue intermediate "x402-wallet TEST INTERMEDIATE — $NOTE" intermediate root root v3_intermediate
issue leaf "x402-wallet TEST NSM LEAF — $NOTE" leaf intermediate intermediate v3_leaf

issue expired-leaf "x402-wallet TEST EXPIRED LEAF — $NOTE" leaf intermediate intermediate v3_leaf \
  20200101000000Z 20210101000000Z
issue foreign-root "x402-wallet FOREIGN TEST ROOT — $NOTE" foreign-root - foreign-root v3_root
issue foreign-leaf "x402-wallet FOREIGN TEST LEAF — $NOTE" foreign-leaf foreign-root foreign-root v3_leaf
# A root with the test root's exact name but another key, to sign an intermediate whose issuer
# name matches the real test root while its signature does not.
issue impostor "x402-wallet TEST ROOT — $NOTE" impostor - impostor v3_root
issue impostor-intermediate "x402-wallet TEST INTERMEDIATE — $NOTE" impostor-intermediate \
  impostor impostor v3_intermediate
issue impostor-leaf "x402-wallet TEST NSM LEAF — $NOTE" leaf impostor-intermediate \
  impostor-intermediate v3_leaf
issue sub-ca "x402-wallet TEST SUB-CA — $NOTE" sub-ca intermediate intermediate v3_sub_ca
issue sub-ca-leaf "x402-wallet TEST SUB-CA LEAF — $NOTE" leaf sub-ca sub-ca v3_leaf
# An end-entity (not a CA) directly under the root, and a certificate it "issued".
issue ee-under-root "x402-wallet TEST EE UNDER ROOT — $NOTE" leaf root root v3_leaf
issue issued-by-ee "x402-wallet TEST ISSUED BY EE — $NOTE" leaf ee-under-root leaf v3_leaf
issue leaf-sha256 "x402-wallet TEST SHA-256 LEAF — $NOTE" leaf intermediate intermediate v3_leaf \
  "$START" "$END" sha256
issue leaf-p256 "x402-wallet TEST P-256 LEAF — $NOTE" leaf-p256 intermediate intermediate v3_leaf

rm -rf "$OUT"
mkdir -p "$OUT/attacks"
der root "$OUT/root.der"
der intermediate "$OUT/intermediate.der"
der leaf "$OUT/leaf.der"
pk8 leaf "$OUT/leaf.key.pk8.der"
for c in expired-leaf foreign-root foreign-leaf impostor-intermediate impostor-leaf sub-ca \
  sub-ca-leaf ee-under-root issued-by-ee leaf-sha256 leaf-p256; do
  der "$c" "$OUT/attacks/$c.der"
done
pk8 foreign-leaf "$OUT/attacks/foreign-leaf.key.pk8.der"

# A sanity check with openssl's own path validation (at 2030-01-01).
openssl verify -attime 1893456000 -x509_strict -CAfile "$WORK/root.pem" \
  -untrusted "$WORK/intermediate.pem" "$WORK/leaf.pem"
for f in "$OUT"/*.der "$OUT"/attacks/*.der; do
  printf '%s  %s\n' "$(openssl dgst -sha256 -r "$f" | cut -d' ' -f1)" "$f"
done >"$OUT/SHA256SUMS"
echo "wrote $OUT/ (see $OUT/SHA256SUMS)"
