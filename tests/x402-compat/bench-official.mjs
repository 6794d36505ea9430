#!/usr/bin/env node
// The OFFICIAL x402 client's in-process signer (@x402/core and @x402/evm, pinned in
// package.json), timed: what a user would run instead of the wallet — a raw private key in the
// agent's own process, no policy, no durability, no isolation. `wallet-bench` runs it in the same
// run as the wallet's own figures (ratio throughput_1client_over_official_client).
//
//   node bench-official.mjs <PAYMENT-REQUIRED value> [N]
//
// Signs N payments (default 2000) one after the other (1 concurrency), each one the whole client
// path: decode the header (x402HTTPClient.getPaymentRequiredResponse), select and sign
// (createPaymentPayload: EIP-712 typed data, secp256k1 via viem), encode the PAYMENT-SIGNATURE
// value. Warms up first (200 payments, not timed). The key is the public Hardhat/Anvil test key
// #0. Offline.
//
// Output: one JSON line {"n":N,"throughput":<per second>,"p50_us":…,"p99_us":…}.
import { x402Client, x402HTTPClient } from "@x402/core/client";
import { registerExactEvmScheme } from "@x402/evm/exact/client";
import { privateKeyToAccount } from "viem/accounts";

const args = process.argv.slice(2);
if (args.length < 1 || args.length > 2) {
  process.stderr.write("usage: node bench-official.mjs <PAYMENT-REQUIRED> [N]\n");
  process.exit(2);
}
const [header] = args;
const n = Number.parseInt(args[1] ?? "2000", 10);

const client = new x402Client();
client.setSpendControls(false);
registerExactEvmScheme(client, {
  signer: privateKeyToAccount("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"),
});
const http = new x402HTTPClient(client);

async function pay() {
  const required = http.getPaymentRequiredResponse((name) => (name === "PAYMENT-REQUIRED" ? header : null));
  const payload = await http.createPaymentPayload(required);
  const headers = http.encodePaymentSignatureHeader(payload);
  if (Object.keys(headers).length !== 1) throw new Error("no payment header");
}

for (let i = 0; i < 200; i++) await pay();
const lat = new Float64Array(n);
const start = process.hrtime.bigint();
for (let i = 0; i < n; i++) {
  const t = process.hrtime.bigint();
  await pay();
  lat[i] = Number(process.hrtime.bigint() - t) / 1000;
}
const total = Number(process.hrtime.bigint() - start) / 1e9;
lat.sort();
const pct = (p) => lat[Math.round((n - 1) * p)];
process.stdout.write(JSON.stringify({ n, throughput: n / total, p50_us: pct(0.5), p99_us: pct(0.99) }) + "\n");
