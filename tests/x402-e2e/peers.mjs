#!/usr/bin/env node
// Starts every real peer the wallet's end-to-end tests talk to, all on 127.0.0.1:
//   anvil (chain id 84532, so it is `base-sepolia` for x402 v1 too) with the EIP-3009 token
//   deployed; the official facilitator; the official v2 and v1 resource servers; a paid MCP
//   server; a control endpoint (balances, minting, receipts, logs).
// Prints ONE JSON line when everything is ready (see README.md), then runs until SIGTERM,
// SIGINT or the end of its standard input (so it never outlives the test that started it).
//
//   node peers.mjs            # prints {"ready":true,...}
//
// Exit codes: 0 stopped cleanly, 1 failed to start.

import { createServer } from "node:http";
import { getAddress, isAddress } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import {
  CHAIN_ID,
  compileToken,
  deployToken,
  DEV_KEYS,
  NETWORK,
  publicClient,
  serialQueue,
  startAnvil,
  TOKEN,
  V1_NETWORK,
  walletClient,
} from "./lib/chain.mjs";
import { createFacilitator, facilitatorApp, facilitatorSigner } from "./lib/facilitator.mjs";
import { mcpApp } from "./lib/mcp-server.mjs";
import { resourceApp } from "./lib/resource.mjs";
import express from "express";

const t0 = Date.now();
const STARTUP_TIMEOUT_MS = Number(process.env.X402_E2E_STARTUP_TIMEOUT_MS ?? 60000);
const DEFAULT_AMOUNT = "10000"; // 0.01 of a 6-decimal token

const servers = [];
let anvil = null;
let mcpClose = async () => {};
let stopping = false;
const logs = [];
const log = (e) => {
  logs.push({ t: Date.now(), ...e });
  if (logs.length > 2000) logs.splice(0, logs.length - 2000);
  if (process.env.X402_E2E_DEBUG) process.stderr.write(`[peers] ${JSON.stringify(e)}\n`);
};

function anvilRunning() {
  return anvil && anvil.exitCode === null && anvil.signalCode === null;
}
function killAnvil() {
  if (anvilRunning()) anvil.kill("SIGKILL");
}
/** Kills anvil and waits (up to 2 s) until it is reaped, so no zombie is left behind. */
function stopAnvil() {
  if (!anvilRunning()) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, 2000);
    anvil.once("exit", () => {
      clearTimeout(t);
      resolve();
    });
    anvil.kill("SIGKILL");
  });
}
process.on("exit", killAnvil);

async function stop(code) {
  if (stopping) return;
  stopping = true;
  const hard = setTimeout(() => {
    killAnvil();
    process.exit(code);
  }, 3000);
  hard.unref();
  await mcpClose().catch(() => {});
  for (const s of servers) {
    s.closeAllConnections?.();
    s.close();
  }
  await stopAnvil();
  process.exit(code);
}
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(sig, () => stop(0));
process.stdin.on("end", () => stop(0));
process.stdin.on("error", () => stop(0));
process.stdin.resume();

function listen(app) {
  return new Promise((resolve, reject) => {
    const server = createServer(app);
    server.keepAliveTimeout = 1000;
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      servers.push(server);
      resolve(`http://127.0.0.1:${server.address().port}`);
    });
  });
}

function controlApp({ rpcUrl, token, abi, minter }) {
  const pub = publicClient(rpcUrl);
  const mintQueue = serialQueue();
  const app = express();
  app.use(express.json());
  const wrap = (f) => async (req, res) => {
    try {
      await f(req, res);
    } catch (e) {
      res.status(500).json({ error: String(e?.message ?? e) });
    }
  };
  app.get("/health", (_req, res) => res.json({ ok: true }));
  app.get(
    "/balance/:address",
    wrap(async (req, res) => {
      if (!isAddress(req.params.address, { strict: false })) {
        res.status(400).json({ error: "not an address" });
        return;
      }
      const balance = await pub.readContract({
        address: token,
        abi,
        functionName: "balanceOf",
        args: [getAddress(req.params.address)],
      });
      res.json({ address: getAddress(req.params.address), balance: balance.toString() });
    }),
  );
  app.post(
    "/mint",
    wrap(async (req, res) => {
      const { address, amount } = req.body ?? {};
      if (!isAddress(String(address), { strict: false }) || !/^[0-9]{1,30}$/.test(String(amount))) {
        res.status(400).json({ error: "body must be {address, amount (atomic units, decimal string)}" });
        return;
      }
      const hash = await mintQueue(() =>
        minter.writeContract({ address: token, abi, functionName: "mint", args: [getAddress(address), BigInt(amount)] }),
      );
      const receipt = await pub.waitForTransactionReceipt({ hash, timeout: 15000 });
      res.json({ transaction: hash, status: receipt.status });
    }),
  );
  app.get(
    "/receipt/:hash",
    wrap(async (req, res) => {
      const receipt = await pub.getTransactionReceipt({ hash: req.params.hash });
      const transfers = receipt.logs
        .filter(
          (l) =>
            l.address.toLowerCase() === token.toLowerCase() &&
            l.topics[0] === "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
        )
        .map((l) => ({
          from: getAddress(`0x${l.topics[1].slice(26)}`),
          to: getAddress(`0x${l.topics[2].slice(26)}`),
          value: BigInt(l.data).toString(),
        }));
      res.json({
        transaction: receipt.transactionHash,
        status: receipt.status,
        blockNumber: receipt.blockNumber.toString(),
        from: receipt.from,
        to: receipt.to,
        transfers,
      });
    }),
  );
  app.get("/log", (_req, res) => res.json(logs));
  return app;
}

async function main() {
  const compiled = Promise.resolve().then(() => compileToken());
  const chain = await startAnvil();
  anvil = chain.child;
  anvil.on("exit", (code, signal) => {
    if (!stopping) {
      process.stderr.write(`peers: anvil exited unexpectedly (${code ?? signal})\n`);
      stop(1);
    }
  });
  const tChain = Date.now();
  const artifact = await compiled;
  const tCompiled = Date.now();
  const deployer = walletClient(chain.rpcUrl, DEV_KEYS[0]);
  const token = await deployToken(deployer, artifact);
  const tDeployed = Date.now();

  const settler = walletClient(chain.rpcUrl, DEV_KEYS[1]);
  const facilitator = createFacilitator(facilitatorSigner(settler));
  const facilitatorUrl = await listen(facilitatorApp(facilitator, log));
  const defaultPayTo = privateKeyToAccount(generatePrivateKey()).address;
  const common = { facilitatorUrl, token, defaultPayTo, defaultAmount: DEFAULT_AMOUNT, log };
  const resource = resourceApp(common);
  await resource.initialized;
  const serverUrl = await listen(resource);
  const mcp = mcpApp(common);
  mcpClose = mcp.close;
  await mcp.ready();
  const mcpBase = await listen(mcp.app);
  const controlUrl = await listen(controlApp({ rpcUrl: chain.rpcUrl, token, abi: artifact.abi, minter: deployer }));

  const info = {
    ready: true,
    pid: process.pid,
    anvilPid: anvil.pid,
    startupMs: Date.now() - t0,
    timings: {
      anvilMs: tChain - t0,
      compileMs: tCompiled - t0,
      compileCached: artifact.cached,
      deployMs: tDeployed - tCompiled,
    },
    chainId: CHAIN_ID,
    network: NETWORK,
    v1Network: V1_NETWORK,
    rpcUrl: chain.rpcUrl,
    token: { address: token, ...TOKEN, compiler: artifact.compiler },
    minter: deployer.account.address,
    facilitatorUrl,
    facilitatorAddress: settler.account.address,
    serverUrl,
    mcpUrl: `${mcpBase}/mcp`,
    controlUrl,
    defaultPayTo,
    defaultAmount: DEFAULT_AMOUNT,
    routes: {
      free: "GET /free",
      v2Get: "GET /v2/paid",
      v2Post: "POST /v2/echo",
      v2PaymentIdentifier: "GET /v2/pid",
      v1Get: "GET /v1/paid",
      v1Post: "POST /v1/echo",
    },
    mcpTools: ["paid_echo", "paid_echo_rpc402", "paid_echo_rpc32042", "paid_echo_rpc32042_nested", "free_echo"],
  };
  process.stdout.write(`${JSON.stringify(info)}\n`);
  // Load the v1 server's modules now, while the tests set up their wallets.
  setImmediate(() => resource.warmV1().catch((e) => log({ kind: "error", error: String(e) })));
}

const startup = setTimeout(() => {
  process.stderr.write(`peers: not ready within ${STARTUP_TIMEOUT_MS} ms\n`);
  stop(1);
}, STARTUP_TIMEOUT_MS);
main().then(
  () => clearTimeout(startup),
  (e) => {
    process.stderr.write(`peers: failed to start: ${e?.stack ?? e}\n`);
    stop(1);
  },
);
