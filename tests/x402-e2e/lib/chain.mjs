// The local chain: anvil from the npm package @foundry-rs/anvil-linux-amd64, the EIP-3009 token
// in contracts/EIP3009Token.sol compiled with solc-js and deployed with viem.

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  createPublicClient,
  createWalletClient,
  defineChain,
  getAddress,
  http,
  nonceManager,
  publicActions,
} from "viem";
import { privateKeyToAccount } from "viem/accounts";

const here = dirname(fileURLToPath(import.meta.url));
export const root = dirname(here);
const require = createRequire(import.meta.url);

/** The chain id anvil runs with: Base Sepolia's, so the v1 name `base-sepolia` maps to it too. */
export const CHAIN_ID = 84532;
export const NETWORK = `eip155:${CHAIN_ID}`;
export const V1_NETWORK = "base-sepolia";

/**
 * anvil's well-known development keys (mnemonic "test test ... junk"); public, test-only.
 * #0 deploys and mints, #1 is the facilitator's settlement key, #2 is the self-test payer.
 */
export const DEV_KEYS = [
  "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
  "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
  "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
];

/** The token's EIP-712 domain and metadata (what servers put in `extra`). */
export const TOKEN = { name: "USD Coin", version: "2", symbol: "USDC", decimals: 6 };

/** Path of the anvil binary inside node_modules. */
export function anvilPath() {
  let pkg;
  try {
    pkg = require.resolve("@foundry-rs/anvil-linux-amd64/package.json");
  } catch {
    throw new Error(
      "anvil is not installed: `npm ci --prefix tests/x402-e2e` installs @foundry-rs/anvil-linux-amd64 (Linux x86-64 only)",
    );
  }
  const bin = join(dirname(pkg), "bin", "anvil");
  if (!existsSync(bin)) throw new Error(`anvil binary missing at ${bin}`);
  return bin;
}

/**
 * Starts anvil on 127.0.0.1 on a port it picks; resolves once it listens.
 * @returns {Promise<{child: import("node:child_process").ChildProcess, rpcUrl: string}>}
 */
export function startAnvil({ timeoutMs = 20000 } = {}) {
  const child = spawn(
    anvilPath(),
    [
      "--host", "127.0.0.1",
      "--port", "0",
      "--chain-id", String(CHAIN_ID),
      "--accounts", "4",
      "--balance", "1000",
      "--hardfork", "prague",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  return new Promise((resolve, reject) => {
    let out = "";
    let done = false;
    const timer = setTimeout(() => {
      if (done) return;
      done = true;
      child.kill("SIGKILL");
      reject(new Error(`anvil did not start within ${timeoutMs} ms: ${out.slice(-2000)}`));
    }, timeoutMs);
    const onData = (chunk) => {
      out += chunk.toString();
      const m = out.match(/Listening on (127\.0\.0\.1:\d+)/);
      if (m && !done) {
        done = true;
        clearTimeout(timer);
        child.stdout.removeListener("data", onData);
        child.stdout.resume(); // keep draining so anvil never blocks on a full pipe
        resolve({ child, rpcUrl: `http://${m[1]}` });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (c) => {
      out += c.toString();
    });
    child.on("exit", (code, signal) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(new Error(`anvil exited (${code ?? signal}) before listening: ${out.slice(-2000)}`));
    });
    child.on("error", (e) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** viem chain definition for the local chain. */
export function localChain(rpcUrl) {
  return defineChain({
    id: CHAIN_ID,
    name: "anvil (chain id of base-sepolia)",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
}

/** A public client that polls quickly (anvil mines at once; viem's default is 4 s). */
export function publicClient(rpcUrl) {
  return createPublicClient({
    chain: localChain(rpcUrl),
    transport: http(rpcUrl, { timeout: 15000 }),
    pollingInterval: 50,
  });
}

/** A wallet client (with public actions) for one of anvil's development keys. */
export function walletClient(rpcUrl, key) {
  const account = privateKeyToAccount(key, { nonceManager });
  return createWalletClient({
    account,
    chain: localChain(rpcUrl),
    transport: http(rpcUrl, { timeout: 15000 }),
    pollingInterval: 50,
  }).extend(publicActions);
}

/** Runs async jobs one at a time (transactions from one key must not race for a nonce). */
export function serialQueue() {
  let tail = Promise.resolve();
  return (job) => {
    const run = tail.then(job, job);
    tail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  };
}

const SOLC_SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: { "*": { EIP3009Token: ["abi", "evm.bytecode.object"] } },
};

/**
 * Compiles contracts/EIP3009Token.sol with solc-js. The artifact is cached in
 * $X402_E2E_CACHE_DIR (default: <tmpdir>/x402-e2e-<uid>), keyed by the source, the settings and
 * the compiler version: a first compile takes about 2.5 s on 2 cores, a cached one nothing.
 * X402_E2E_NO_CACHE=1 forces a fresh compile.
 */
export function compileToken() {
  const source = readFileSync(join(root, "contracts", "EIP3009Token.sol"), "utf8");
  const solcVersion = require("solc/package.json").version;
  const key = createHash("sha256")
    .update(JSON.stringify({ source, SOLC_SETTINGS, solcVersion }))
    .digest("hex")
    .slice(0, 24);
  const cacheDir = process.env.X402_E2E_CACHE_DIR || join(tmpdir(), `x402-e2e-${process.getuid?.() ?? "user"}`);
  const cacheFile = join(cacheDir, `EIP3009Token-${key}.json`);
  if (!process.env.X402_E2E_NO_CACHE && existsSync(cacheFile)) {
    return { ...JSON.parse(readFileSync(cacheFile, "utf8")), cached: true };
  }
  const solc = require("solc");
  const input = {
    language: "Solidity",
    sources: { "EIP3009Token.sol": { content: source } },
    settings: SOLC_SETTINGS,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors ?? []).filter((e) => e.severity === "error");
  if (errors.length) {
    throw new Error(`solc: ${errors.map((e) => e.formattedMessage).join("\n")}`);
  }
  const c = output.contracts["EIP3009Token.sol"].EIP3009Token;
  const artifact = { abi: c.abi, bytecode: `0x${c.evm.bytecode.object}`, compiler: solc.version() };
  try {
    mkdirSync(cacheDir, { recursive: true });
    const tmp = `${cacheFile}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(artifact));
    renameSync(tmp, cacheFile);
  } catch {
    // A read-only checkout only loses the cache.
  }
  return { ...artifact, cached: false };
}

/** Deploys the token with key #0 and returns its checksummed address. */
export async function deployToken(deployer, artifact) {
  const hash = await deployer.deployContract({
    abi: artifact.abi,
    bytecode: artifact.bytecode,
    args: [TOKEN.name, TOKEN.version, TOKEN.symbol],
  });
  const receipt = await deployer.waitForTransactionReceipt({ hash, timeout: 15000 });
  if (receipt.status !== "success" || !receipt.contractAddress) {
    throw new Error(`token deployment failed: ${JSON.stringify(receipt)}`);
  }
  return getAddress(receipt.contractAddress);
}
