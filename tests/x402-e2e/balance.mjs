#!/usr/bin/env node
// Reads token balances on the local chain (the launcher's control endpoint GET /balance/ADDRESS
// answers the same).
//
//   node balance.mjs RPC_URL TOKEN ADDRESS [ADDRESS...]
//   -> {"0xAbc…":"990000","0xDef…":"10000"}   (atomic units, decimal strings)

import { erc20Abi, getAddress } from "viem";
import { publicClient } from "./lib/chain.mjs";

const [rpcUrl, token, ...addresses] = process.argv.slice(2);
if (!rpcUrl || !token || addresses.length === 0) {
  process.stderr.write("usage: node balance.mjs RPC_URL TOKEN ADDRESS [ADDRESS...]\n");
  process.exit(2);
}
const client = publicClient(rpcUrl);
const out = {};
for (const a of addresses) {
  const address = getAddress(a);
  out[address] = (
    await client.readContract({ address: getAddress(token), abi: erc20Abi, functionName: "balanceOf", args: [address] })
  ).toString();
}
process.stdout.write(`${JSON.stringify(out)}\n`);
