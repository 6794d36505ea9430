#!/usr/bin/env node
// Prints the official x402 tables this wallet must agree with, as one JSON object, read from
// the installed (pinned) packages, offline:
//
//   node default-assets.mjs
//
//   {"package":"@x402/evm@<version>",
//    "defaultAssets":[{network, asset, name, version, decimals, symbol, assetTransferMethod,
//                      domainSeparator}, …],          // @x402/evm DEFAULT_ASSETS, in its order
//    "v1Networks":[[name, chainId], …]}                // @x402/evm/v1 EVM_NETWORK_CHAIN_ID_MAP
//
// `domainSeparator` is viem's hashDomain of {name, version, chainId, verifyingContract: asset}
// (the EIP-712 domain the token's transferWithAuthorization is signed under); names are UTF-8
// (Flare's "USD₮0"). `assetTransferMethod` is "eip3009" when the table does not say "permit2".
// tests/tests/x402_conformance.rs compares this with wallet_policy::registry::DEFAULT_ASSETS and
// wallet_policy::x402::V1_EVM_NETWORKS.
import { readFileSync } from "node:fs";
import { DEFAULT_ASSETS } from "@x402/evm";
import { EVM_NETWORK_CHAIN_ID_MAP } from "@x402/evm/v1";
import { hashDomain } from "viem";

// The package does not export its package.json: read it from the install this script runs with.
const pkg = JSON.parse(readFileSync(new URL("./node_modules/@x402/evm/package.json", import.meta.url), "utf8"));

const defaultAssets = [];
for (const [network, entries] of Object.entries(DEFAULT_ASSETS)) {
  for (const e of entries) {
    const chainId = Number(network.split(":")[1]);
    const domain = { name: e.name, version: e.version, chainId, verifyingContract: e.asset };
    defaultAssets.push({
      network,
      asset: e.asset,
      name: e.name,
      version: e.version,
      decimals: e.decimals,
      symbol: e.symbol,
      assetTransferMethod: e.assetTransferMethod ?? "eip3009",
      domainSeparator: hashDomain({
        domain,
        types: {
          EIP712Domain: [
            { name: "name", type: "string" },
            { name: "version", type: "string" },
            { name: "chainId", type: "uint256" },
            { name: "verifyingContract", type: "address" },
          ],
        },
      }),
    });
  }
}

process.stdout.write(
  JSON.stringify({
    package: `${pkg.name}@${pkg.version}`,
    defaultAssets,
    v1Networks: Object.entries(EVM_NETWORK_CHAIN_ID_MAP),
  }) + "\n",
);
