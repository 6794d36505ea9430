#!/usr/bin/env bash
# Regenerates the CMS fixtures of `platform::kms::cms` (committed; tests never run openssl).
# TEST ONLY: recipient.key.der is a throwaway key, public in this repository.
#
#   recipient.key.der   RSA-2048 private key (PKCS#8 DER): the enclave's ephemeral key stand-in
#   data-key.bin        the 32-byte "data key" every envelope carries (bytes 0x00..0x1f)
#   short-key.bin       16 bytes (an envelope whose content is not a 32-byte key)
#   envelope.der        EnvelopedData, DER, rid = subjectKeyIdentifier (openssl -keyid)
#   envelope.ber        the same, streamed: BER with indefinite lengths and a chunked
#                       encryptedContent, as real KMS reportedly sends
#   envelope-issuer.der rid = issuerAndSerialNumber
#   envelope-short.der  content = short-key.bin
#   envelope-sha1.der   RSAES-OAEP with the default SHA-1 parameters (must be refused)
#
# Every envelope: KeyTransRecipientInfo with RSAES-OAEP (SHA-256, MGF1-SHA-256), content
# AES-256-CBC, as KMS's CiphertextForRecipient. Usage: bash generate.sh (needs openssl 3).
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/key.pem" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$tmp/key.pem" -outform DER -out recipient.key.der
openssl req -x509 -new -key "$tmp/key.pem" -subj "/CN=ephemeral enclave key (test)" -days 1 \
  -addext "subjectKeyIdentifier=hash" -out "$tmp/cert.pem"
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(32)))' > data-key.bin
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(100, 116)))' > short-key.bin
oaep=(-keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256 -keyopt rsa_mgf1_md:sha256)
enc() { openssl cms -encrypt -binary -recip "$tmp/cert.pem" -aes-256-cbc -outform DER "$@"; }
enc -keyid "${oaep[@]}" -in data-key.bin -out envelope.der
enc -keyid "${oaep[@]}" -stream -in data-key.bin -out envelope.ber
enc "${oaep[@]}" -in data-key.bin -out envelope-issuer.der
enc -keyid "${oaep[@]}" -in short-key.bin -out envelope-short.der
enc -keyid -keyopt rsa_padding_mode:oaep -in data-key.bin -out envelope-sha1.der
# The round trip through openssl itself.
openssl cms -decrypt -inform DER -in envelope.ber -inkey "$tmp/key.pem" -binary | cmp - data-key.bin
echo "CMS fixtures written to $(pwd)"
