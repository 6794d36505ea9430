#!/usr/bin/env node
// Checks the peers themselves, with the official x402 client (@x402/core x402Client +
// x402HTTPClient, @x402/evm `exact` v2 and v1) and the official MCP client, paying with anvil's
// public development key #2: every paid route and paid MCP tool must answer 402 first, accept
// the official client's payment, and settle on chain (payer down, payee up, by the price).
//
//   node selftest.mjs                 # starts its own peers (peers.mjs)
//   X402_E2E_INFO='<peers line>' node selftest.mjs   # uses running peers
//
// Prints one JSON line per check and a final `N passed, N failed` line; exit 0 when all pass.

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { x402Client, x402HTTPClient } from "@x402/core/client";
import { registerExactEvmScheme } from "@x402/evm/exact/client";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { McpError } from "@modelcontextprotocol/sdk/types.js";
import { privateKeyToAccount, generatePrivateKey } from "viem/accounts";
import { DEV_KEYS } from "./lib/chain.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const deadline = setTimeout(() => {
  console.error("selftest: timed out");
  process.exit(2);
}, Number(process.env.X402_E2E_SELFTEST_TIMEOUT_MS ?? 120000));

async function peers() {
  if (process.env.X402_E2E_INFO) return { info: JSON.parse(process.env.X402_E2E_INFO), stop: () => {} };
  const child = spawn(process.execPath, [join(here, "peers.mjs")], { stdio: ["pipe", "pipe", "inherit"] });
  const line = await new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once("line", resolve);
    child.once("exit", (c) => reject(new Error(`peers.mjs exited ${c}`)));
  });
  return { info: JSON.parse(line), stop: () => child.kill("SIGTERM") };
}

const { info, stop } = await peers();
const payer = privateKeyToAccount(DEV_KEYS[2]);
const client = new x402Client();
registerExactEvmScheme(client, { signer: payer });
// The local token is not in the official default-asset table: allow it explicitly (v2 and v1 names).
client.setSpendControls({
  allowedAssets: [
    { network: info.network, asset: info.token.address },
    { network: info.v1Network, asset: info.token.address },
  ],
});
const http = new x402HTTPClient(client);

async function control(path, body) {
  const r = await fetch(`${info.controlUrl}${path}`, body ? { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) } : {});
  if (!r.ok) throw new Error(`control ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}
const balance = async (a) => BigInt((await control(`/balance/${a}`)).balance);
await control("/mint", { address: payer.address, amount: "100000000" });

let passed = 0;
let failed = 0;
async function check(name, f) {
  const payTo = privateKeyToAccount(generatePrivateKey()).address;
  const amount = String(1000 + passed + failed);
  const before = await balance(payer.address);
  try {
    const detail = await f({ payTo, amount });
    const [after, got] = [await balance(payer.address), await balance(payTo)];
    if (before - after !== BigInt(amount) || got !== BigInt(amount)) {
      throw new Error(`balances: payer -${before - after}, payee +${got}, expected ${amount}`);
    }
    if (detail?.transaction) {
      const r = await control(`/receipt/${detail.transaction}`);
      if (r.status !== "success" || !r.transfers.some((t) => t.to === payTo && t.value === amount)) {
        throw new Error(`receipt ${JSON.stringify(r)}`);
      }
    }
    passed++;
    console.log(JSON.stringify({ check: name, ok: true, ...detail }));
  } catch (e) {
    failed++;
    console.log(JSON.stringify({ check: name, ok: false, error: String(e?.stack ?? e) }));
  }
}

async function payHttp(method, path, { payTo, amount }, body) {
  const url = `${info.serverUrl}${path}?payTo=${payTo}&amount=${amount}`;
  const init = { method, headers: body ? { "content-type": "application/json" } : {}, body };
  const first = await fetch(url, init);
  if (first.status !== 402) throw new Error(`expected 402, got ${first.status}`);
  const firstBody = await first.json().catch(() => undefined);
  const required = http.getPaymentRequiredResponse((h) => first.headers.get(h), firstBody);
  const payload = await http.createPaymentPayload(required);
  const paid = await fetch(url, { ...init, headers: { ...init.headers, ...http.encodePaymentSignatureHeader(payload) } });
  const text = await paid.text();
  if (paid.status !== 200) throw new Error(`paid retry: ${paid.status} ${text}`);
  const settle = http.getPaymentSettleResponse((h) => paid.headers.get(h));
  if (!settle.success) throw new Error(`settle ${JSON.stringify(settle)}`);
  return { x402Version: required.x402Version, body: JSON.parse(text), transaction: settle.transaction, network: settle.network };
}

await check("v2 GET", (p) => payHttp("GET", "/v2/paid", p));
await check("v2 POST echoes the body on the paid retry", async (p) => {
  const r = await payHttp("POST", "/v2/echo", p, JSON.stringify({ hello: "world" }));
  if (r.body.body !== '{"hello":"world"}') throw new Error(`echo ${JSON.stringify(r.body)}`);
  return r;
});
await check("v1 GET", async (p) => {
  const r = await payHttp("GET", "/v1/paid", p);
  if (r.x402Version !== 1 || r.network !== "base-sepolia") throw new Error(JSON.stringify(r));
  return r;
});
await check("v1 POST echoes the body on the paid retry", async (p) => {
  const r = await payHttp("POST", "/v1/echo", p, "plain body");
  if (r.body.body !== "plain body") throw new Error(`echo ${JSON.stringify(r.body)}`);
  return r;
});
await check("payment-identifier: declared, id echoed, lost response replayed once", async (p) => {
  const url = `${info.serverUrl}/v2/pid?payTo=${p.payTo}&amount=${p.amount}&lose=1`;
  const first = await fetch(url);
  const required = http.getPaymentRequiredResponse((h) => first.headers.get(h));
  if (!required.extensions?.["payment-identifier"]?.info?.required) throw new Error("extension not declared");
  const noId = await fetch(url, { headers: http.encodePaymentSignatureHeader(await http.createPaymentPayload(required)) });
  if (noId.status !== 400) throw new Error(`no id: expected 400, got ${noId.status}`);
  const id = `pay_selftest${Date.now()}`;
  required.extensions["payment-identifier"].info.id = id;
  const payload = await http.createPaymentPayload(required);
  const headers = http.encodePaymentSignatureHeader(payload);
  const lost = await fetch(url, { headers }).then(
    (r) => `status ${r.status}`,
    () => "lost",
  );
  if (lost !== "lost") throw new Error(`first paid response should be dropped, got ${lost}`);
  const again = await fetch(url, { headers });
  const body = await again.json();
  if (again.status !== 200 || body.paymentId !== id || again.headers.get("x-idempotent-replay") !== "true") {
    throw new Error(`replay: ${again.status} ${JSON.stringify(body)}`);
  }
  const other = await http.createPaymentPayload(required);
  const conflict = await fetch(url, { headers: http.encodePaymentSignatureHeader(other) });
  if (conflict.status !== 409) throw new Error(`reused id: expected 409, got ${conflict.status}`);
  return { transaction: http.getPaymentSettleResponse((h) => again.headers.get(h)).transaction };
});

async function mcpSession(p) {
  const c = new Client({ name: "x402-e2e-selftest", version: "0.0.0" });
  await c.connect(new StreamableHTTPClientTransport(new URL(`${info.mcpUrl}?payTo=${p.payTo}&amount=${p.amount}`)));
  return c;
}
function paymentRequiredOf(resultOrError) {
  if (resultOrError instanceof McpError) {
    const d = resultOrError.data;
    return d?.x402 ?? d;
  }
  return resultOrError.structuredContent ?? JSON.parse(resultOrError.content[0].text);
}
for (const tool of ["paid_echo", "paid_echo_rpc402", "paid_echo_rpc32042", "paid_echo_rpc32042_nested"]) {
  await check(`MCP ${tool}`, async (p) => {
    const c = await mcpSession(p);
    try {
      const first = await c.callTool({ name: tool, arguments: { text: "hi" } }).catch((e) => e);
      if (tool === "paid_echo" && !(first.isError && first.structuredContent && first.content?.[0]?.text)) {
        throw new Error(`expected an isError PaymentRequired result: ${JSON.stringify(first)}`);
      }
      if (tool !== "paid_echo" && !(first instanceof McpError)) throw new Error(`expected a JSON-RPC error: ${JSON.stringify(first)}`);
      const required = paymentRequiredOf(first);
      if (required.resource?.url !== `mcp://tool/${tool}`) throw new Error(`resource ${JSON.stringify(required.resource)}`);
      const payload = await client.createPaymentPayload(required);
      const paid = await c.callTool({ name: tool, arguments: { text: "hi" }, _meta: { "x402/payment": payload } });
      const settle = paid._meta?.["x402/payment-response"];
      if (paid.isError || !settle?.success || paid.content[0].text !== "echo: hi") throw new Error(JSON.stringify(paid));
      return { transaction: settle.transaction };
    } finally {
      await c.close();
    }
  });
}

console.log(`${passed} passed, ${failed} failed`);
stop();
clearTimeout(deadline);
process.exit(failed ? 1 : 0);
