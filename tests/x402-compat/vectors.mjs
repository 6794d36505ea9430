#!/usr/bin/env node
// Discrimination check for verify.mjs: runs it (as a child process, exactly like a user
// would) on the official vector V-1 of x402-wire.md §8 and on tampered variants, and
// checks each outcome. Exit 0 only if every case gives the expected result.
//
//   node vectors.mjs
//
// "re-signed" cases are signed here with the public Hardhat/Anvil test key #0 (the key
// V-1 was made with) so that the signature is valid and a later facilitator check is hit.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { privateKeyToAccount } from "viem/accounts";
import { authorizationTypes } from "@x402/evm";

const VERIFY = fileURLToPath(new URL("./verify.mjs", import.meta.url));
const NOW = "1740672154"; // the `now` V-1 was generated at (validBefore = NOW + 60)

// PaymentRequired = x402-wire.md §2.3 example with error "Payment required" (§8 inputs).
const paymentRequired = {
  x402Version: 2,
  error: "Payment required",
  resource: { url: "https://api.example.com/premium-data", description: "Access to premium market data", mimeType: "application/json" },
  accepts: [{
    scheme: "exact", network: "eip155:84532", amount: "10000",
    asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    payTo: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
    maxTimeoutSeconds: 60, extra: { name: "USDC", version: "2" },
  }],
};
// V-1 PAYMENT-SIGNATURE header value, verbatim from x402-wire.md §8.
const V1 = "eyJ4NDAyVmVyc2lvbiI6MiwicGF5bG9hZCI6eyJhdXRob3JpemF0aW9uIjp7ImZyb20iOiIweGYzOUZkNmU1MWFhZDg4RjZGNGNlNmFCODgyNzI3OWNmZkZiOTIyNjYiLCJ0byI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsInZhbHVlIjoiMTAwMDAiLCJ2YWxpZEFmdGVyIjoiMCIsInZhbGlkQmVmb3JlIjoiMTc0MDY3MjIxNCIsIm5vbmNlIjoiMHgwMTAyMDMwNDA1MDYwNzA4MDkwYTBiMGMwZDBlMGYxMDExMTIxMzE0MTUxNjE3MTgxOTFhMWIxYzFkMWUxZjIwIn0sInNpZ25hdHVyZSI6IjB4NDQ4ZDkxMzZmODdlZTMyZmYyNTdlZmY1ODM5MWNmZmU1ZWFhN2E0NmYzYjVlYjhlNjEzMTBiOWE2NTJlOGM3OTQzM2U2M2M3ZTljZDc2YzhmYjBlNTAzZjAyZTc2Nzc1YjVhOTk1NWJjMjdlNzIwZmJjYTU2OThjM2VhY2RkNDQxYyJ9LCJyZXNvdXJjZSI6eyJ1cmwiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS9wcmVtaXVtLWRhdGEiLCJkZXNjcmlwdGlvbiI6IkFjY2VzcyB0byBwcmVtaXVtIG1hcmtldCBkYXRhIiwibWltZVR5cGUiOiJhcHBsaWNhdGlvbi9qc29uIn0sImFjY2VwdGVkIjp7InNjaGVtZSI6ImV4YWN0IiwibmV0d29yayI6ImVpcDE1NTo4NDUzMiIsImFtb3VudCI6IjEwMDAwIiwiYXNzZXQiOiIweDAzNkNiRDUzODQyYzU0MjY2MzRlNzkyOTU0MWVDMjMxOGYzZENGN2UiLCJwYXlUbyI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsIm1heFRpbWVvdXRTZWNvbmRzIjo2MCwiZXh0cmEiOnsibmFtZSI6IlVTREMiLCJ2ZXJzaW9uIjoiMiJ9fX0=";

// x402 v1 (x402-wire.md §8 V-3): the v1 402 body (x402-next.md §2.1) and the X-PAYMENT value.
const V1_BODY = JSON.stringify({
  x402Version: 1,
  error: "Payment required to access this resource",
  accepts: [{
    scheme: "exact", network: "base-sepolia", maxAmountRequired: "10000",
    asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    payTo: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
    resource: "https://api.example.com/premium-data", description: "Access to premium market data",
    mimeType: "application/json", outputSchema: null, maxTimeoutSeconds: 60, extra: { name: "USDC", version: "2" },
  }],
});
const V3 = "eyJ4NDAyVmVyc2lvbiI6MSwic2NoZW1lIjoiZXhhY3QiLCJuZXR3b3JrIjoiYmFzZS1zZXBvbGlhIiwicGF5bG9hZCI6eyJhdXRob3JpemF0aW9uIjp7ImZyb20iOiIweGYzOUZkNmU1MWFhZDg4RjZGNGNlNmFCODgyNzI3OWNmZkZiOTIyNjYiLCJ0byI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsInZhbHVlIjoiMTAwMDAiLCJ2YWxpZEFmdGVyIjoiMTc0MDY3MTU1NCIsInZhbGlkQmVmb3JlIjoiMTc0MDY3MjIxNCIsIm5vbmNlIjoiMHgwMTAyMDMwNDA1MDYwNzA4MDkwYTBiMGMwZDBlMGYxMDExMTIxMzE0MTUxNjE3MTgxOTFhMWIxYzFkMWUxZjIwIn0sInNpZ25hdHVyZSI6IjB4M2UzYTQ1NGQzMGQ3ZjhjMDBjZWZhZWZiZThmMzUzMjMwYTEwMTk3OTVmM2ZlNTIwMzg3NjgzODQxY2M3NWVhMzA4OWM4NzdiMGZkNjc1YjY4OTJjYzllMWMyZGU3MmZkMDJhMjBjZTdkMGI0YmZmZGM3OGExZmQ3MmRjMGIyOTMxYiJ9fQ==";
const v3 = () => unb64(V3);

const b64 = (o) => Buffer.from(JSON.stringify(o), "utf8").toString("base64");
const unb64 = (s) => JSON.parse(Buffer.from(s, "base64").toString("utf8"));
const PR = b64(paymentRequired);
const v1 = () => unb64(V1);

const account = privateKeyToAccount("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80");
async function resign(p) {
  const a = p.payload.authorization;
  p.payload.signature = await account.signTypedData({
    domain: { name: p.accepted.extra.name, version: p.accepted.extra.version, chainId: 84532, verifyingContract: p.accepted.asset },
    types: authorizationTypes,
    primaryType: "TransferWithAuthorization",
    message: { from: a.from, to: a.to, value: BigInt(a.value), validAfter: BigInt(a.validAfter), validBefore: BigInt(a.validBefore), nonce: a.nonce },
  });
  return p;
}
const flipByte = (sig, i) => sig.slice(0, 2 + 2 * i) + (parseInt(sig.slice(2 + 2 * i, 4 + 2 * i), 16) ^ 0x01).toString(16).padStart(2, "0") + sig.slice(4 + 2 * i);

const cases = [
  ["V-1 as published", async () => V1, { ok: true }],
  ["V-1 re-signed with Hardhat #0 reproduces the published signature", async () => {
    const p = v1(); const before = p.payload.signature; await resign(p);
    if (p.payload.signature !== before) throw new Error(`re-signed ${p.payload.signature} != ${before}`);
    return b64(p);
  }, { ok: true }],
  ["V-1 without --now (real clock; validBefore 1740672214 is in the past)", async () => V1, { reason: "invalid_exact_evm_payload_authorization_valid_before" }, []],
  ["V-1 with --now = validBefore - 5 (inside the 6 s buffer)", async () => V1, { reason: "invalid_exact_evm_payload_authorization_valid_before" }, ["--now", "1740672209"]],
  ["authorization.value 10000 -> 10001 (signature not redone)", async () => { const p = v1(); p.payload.authorization.value = "10001"; return b64(p); }, { reason: "invalid_exact_evm_signature" }],
  ["signature byte 10 flipped", async () => { const p = v1(); p.payload.signature = flipByte(p.payload.signature, 10); return b64(p); }, { reason: "invalid_exact_evm_signature" }],
  ["signature v 0x1c -> 0x1b", async () => { const p = v1(); p.payload.signature = p.payload.signature.slice(0, -2) + "1b"; return b64(p); }, { reason: "invalid_exact_evm_signature" }],
  ["signature truncated to 64 bytes", async () => { const p = v1(); p.payload.signature = p.payload.signature.slice(0, -2); return b64(p); }, { reason: "invalid_exact_evm_signature" }],
  ["authorization.nonce changed", async () => { const p = v1(); p.payload.authorization.nonce = "0x" + "00".repeat(31) + "01"; return b64(p); }, { reason: "invalid_exact_evm_signature" }],
  ["accepted.payTo changed", async () => { const p = v1(); p.accepted.payTo = "0x9876543210987654321098765432109876543210"; return b64(p); }, { reason: "No matching payment requirements" }],
  ["accepted.amount changed to 1", async () => { const p = v1(); p.accepted.amount = "1"; return b64(p); }, { reason: "No matching payment requirements" }],
  ["accepted.payTo lower-cased (not echoed verbatim)", async () => { const p = v1(); p.accepted.payTo = p.accepted.payTo.toLowerCase(); return b64(p); }, { reason: "No matching payment requirements" }],
  ["accepted.extra.name USDC -> USD Coin", async () => { const p = v1(); p.accepted.extra.name = "USD Coin"; return b64(p); }, { reason: "No matching payment requirements" }],
  ["accepted.maxTimeoutSeconds as string \"60\"", async () => { const p = v1(); p.accepted.maxTimeoutSeconds = "60"; return b64(p); }, { reason: "No matching payment requirements" }],
  ["re-signed: authorization.value 10001 (valid signature, wrong amount)", async () => { const p = v1(); p.payload.authorization.value = "10001"; return b64(await resign(p)); }, { reason: "invalid_exact_evm_payload_authorization_value_mismatch" }],
  ["re-signed: authorization.to = other address", async () => { const p = v1(); p.payload.authorization.to = "0x9876543210987654321098765432109876543210"; return b64(await resign(p)); }, { reason: "invalid_exact_evm_recipient_mismatch" }],
  ["re-signed: validAfter in the future", async () => { const p = v1(); p.payload.authorization.validAfter = "1740672200"; return b64(await resign(p)); }, { reason: "invalid_exact_evm_payload_authorization_valid_after" }],
  ["PAYMENT-SIGNATURE wrapped at 76 chars (whitespace in base64)", async () => V1.match(/.{1,76}/g).join("\n"), { reason: "PAYMENT-SIGNATURE: Invalid payment signature header" }],
  ["x402 v1: V-3 as published, against the v1 body", async () => V3, { ok: true }, ["--now", NOW], V1_BODY],
  ["x402 v1: V-3 with value 10000 -> 10001 (signature not redone)", async () => { const p = v3(); p.payload.authorization.value = "10001"; return b64(p); }, { reason: "invalid_exact_evm_signature" }, ["--now", NOW], V1_BODY],
  ["x402 v1: V-3 with --now before validAfter", async () => V3, { reason: "invalid_exact_evm_payload_authorization_valid_after" }, ["--now", "1740671000"], V1_BODY],
  ["x402 v1: V-3 with network base (not offered)", async () => { const p = v3(); p.network = "base"; return b64(p); }, { reason: "No matching payment requirements" }, ["--now", NOW], V1_BODY],
];

let failures = 0;
for (const [name, make, expect, args = ["--now", NOW], required = PR] of cases) {
  let header;
  try { header = await make(); } catch (e) { console.log(`FAIL  ${name}: ${e.message}`); failures++; continue; }
  const r = spawnSync(process.execPath, [VERIFY, ...args, required, header], { encoding: "utf8" });
  let res = {};
  try { res = JSON.parse(r.stdout.trim().split("\n").pop()); } catch { /* keep {} */ }
  const good = expect.ok ? r.status === 0 && res.ok === true : r.status === 1 && res.ok === false && res.invalidReason === expect.reason;
  if (!good) failures++;
  const got = res.ok ? "accepted" : `${res.stage}: ${res.invalidReason}`;
  console.log(`${good ? "ok  " : "FAIL"}  exit=${r.status}  ${name}  ->  ${got}${good ? "" : `  (stdout=${r.stdout.trim()} stderr=${r.stderr.trim()})`}`);
}
console.log(failures ? `${failures} case(s) FAILED` : `all ${cases.length} cases as expected`);
process.exit(failures ? 1 : 0);
