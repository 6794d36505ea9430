#!/usr/bin/env node
// An MCP client driven by a list of steps: the official MCP TypeScript SDK `Client` over stdio
// (it spawns the given command, e.g. `walletctl mcp --session FILE`) or over streamable HTTP.
//
//   node mcp-client.mjs --steps '<JSON array>' -- COMMAND [ARGS...]
//   node mcp-client.mjs --steps '<JSON array>' --url http://127.0.0.1:PORT/mcp [--token TOKEN]
//     (TOKEN: the bearer token `walletctl mcp --http` requires; also read from
//     WALLET_MCP_HTTP_TOKEN)
//   node mcp-client.mjs --steps - -- COMMAND [ARGS...]   # interactive: one step per stdin line
//
// Steps (run in order, in one MCP session):
//   {"op":"listTools"}
//   {"op":"callTool","name":"x402_fetch","arguments":{...},"meta":{...}?,"timeoutMs":60000?}
//   {"op":"sleep","ms":100}
// Output: one JSON line per step, in order:
//   {"step":0,"op":"listTools","ok":true,"result":{"tools":[...]}}
//   {"step":1,"op":"callTool","ok":true,"result":{content, structuredContent?, isError?, _meta?}}
//   {"step":1,"op":"callTool","ok":false,"error":{"code":402,"message":"...","data":{...}}}
// (a JSON-RPC error of a step is reported and the next step runs). Interactive mode reads one
// JSON step per line of standard input, answers each with its line, and stops at end of input.
// First line, before the steps:
//   {"connected":true,"server":{name,version},"capabilities":{...}}
// The child's stderr passes through to this process's stderr; its environment is this one's.
// Exit codes: 0 every step ran (whatever its outcome), 1 connection or usage failure,
// 2 overall timeout (X402_E2E_MCP_TIMEOUT_MS, default 180000).

import { createInterface } from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const fail = (msg, code = 1) => {
  out({ connected: false, error: msg });
  process.exit(code);
};

const argv = process.argv.slice(2);
let steps = null;
let url = null;
let token = process.env.WALLET_MCP_HTTP_TOKEN ?? null;
let command = null;
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--steps") steps = argv[++i];
  else if (argv[i] === "--url") url = argv[++i];
  else if (argv[i] === "--token") token = argv[++i];
  else if (argv[i] === "--") {
    command = argv.slice(i + 1);
    break;
  } else fail(`unknown argument ${argv[i]}`);
}
const interactive = steps === "-";
if (!interactive) {
  try {
    steps = JSON.parse(steps ?? "null");
  } catch (e) {
    fail(`--steps is not JSON: ${e.message}`);
  }
  if (!Array.isArray(steps)) fail("--steps must be a JSON array or -");
}
if (!url && !command?.length) fail("give -- COMMAND [ARGS...] or --url URL");

const overall = setTimeout(() => {
  out({ timeout: true });
  process.exit(2);
}, Number(process.env.X402_E2E_MCP_TIMEOUT_MS ?? 180000));

const transport = url
  ? new StreamableHTTPClientTransport(
      new URL(url),
      token ? { requestInit: { headers: { Authorization: `Bearer ${token}` } } } : undefined,
    )
  : new StdioClientTransport({
      command: command[0],
      args: command.slice(1),
      env: Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined)),
      stderr: "inherit",
    });
const client = new Client({ name: "x402-e2e-mcp-client", version: "0.0.0" }, { capabilities: {} });

const errorOf = (e) =>
  e && typeof e === "object" && "code" in e
    ? { code: e.code, message: e.message, ...(e.data !== undefined && { data: e.data }) }
    : { message: String(e?.message ?? e) };

try {
  await client.connect(transport, { timeout: 30000 });
} catch (e) {
  fail(`connect: ${e?.message ?? e}`);
}
out({ connected: true, server: client.getServerVersion(), capabilities: client.getServerCapabilities() });

async function runStep(i, step) {
  const base = { step: i, op: step?.op };
  const options = { timeout: step.timeoutMs ?? 60000 };
  try {
    if (step.op === "listTools") {
      out({ ...base, ok: true, result: await client.listTools(undefined, options) });
    } else if (step.op === "callTool") {
      const params = { name: step.name, arguments: step.arguments ?? {} };
      if (step.meta) params._meta = step.meta;
      out({ ...base, name: step.name, ok: true, result: await client.callTool(params, undefined, options) });
    } else if (step.op === "sleep") {
      await new Promise((r) => setTimeout(r, step.ms ?? 0));
      out({ ...base, ok: true });
    } else {
      out({ ...base, ok: false, error: { message: `unknown op ${step.op}` } });
    }
  } catch (e) {
    out({ ...base, ...(step.name && { name: step.name }), ok: false, error: errorOf(e) });
  }
}

if (interactive) {
  let i = 0;
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    let step;
    try {
      step = JSON.parse(line);
    } catch (e) {
      out({ step: i++, ok: false, error: { message: `step is not JSON: ${e.message}` } });
      continue;
    }
    await runStep(i++, step);
  }
} else {
  for (const [i, step] of steps.entries()) await runStep(i, step);
}

clearTimeout(overall);
await client.close().catch(() => {});
process.exit(0);
