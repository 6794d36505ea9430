#!/usr/bin/env node
// Offline x402 compatibility check for payments produced by our wallet.
//
//   node verify.mjs [--now <unix seconds>] <PAYMENT-REQUIRED value> <PAYMENT-SIGNATURE value>
//   node verify.mjs [--now <unix seconds>] '<x402 v1 402 JSON body>' <X-PAYMENT value>
//
// The first argument is read as the official client reads what a server sent
// (x402HTTPClient.getPaymentRequiredResponse): a value starting with "{" is the JSON itself (the
// v1 402 body, x402Version 1), anything else the base64 PAYMENT-REQUIRED header.
//
// x402 v1: the v2 resource server does not read X-PAYMENT (v1 servers are the legacy packages),
// so the v1 path matches the payment to the offered requirement by scheme and network, as the
// legacy servers do, and runs the official v1 facilitator in-process:
//   x402Facilitator.registerV1 (@x402/core/facilitator) + ExactEvmSchemeV1
//   (@x402/evm/exact/v1/facilitator) -> verify: scheme, network (v1 name), EIP-712 signature,
//   recipient, validBefore >= now + 6, validAfter <= now, value == maxAmountRequired, simulation.
//
// Runs the OFFICIAL code of @x402/core and @x402/evm (versions pinned in package.json)
// in the same order as x402HTTPResourceServer.processHTTPRequest (@x402/core 2.27.0):
//   1. decodePaymentRequiredHeader / decodePaymentSignatureHeader   (@x402/core/http)
//   2. x402ResourceServer.findMatchingRequirements(accepts, payload) (@x402/core/server)
//      -> internally paymentRequirementsMatchAccepted (not exported)
//   3. x402ResourceServer.validateExtensions(paymentRequired, payload)
//   4. x402ResourceServer.verifyPayment(payload, matched)
//      -> x402Facilitator.verify (@x402/core/facilitator, in-process, no HTTP)
//      -> ExactEvmScheme.verify (@x402/evm/exact/facilitator) -> verifyEIP3009
//
// Only the chain is mocked (see makeOfflineChain). Signature checking is real:
// @x402/evm hashes the EIP-712 typed data and recovers the signer with viem itself.
//
// --now <s>: replaces Date.now() for the whole process, so the facilitator's
// validBefore/validAfter checks run as if the current time were <s>. Needed for
// fixed vectors whose validBefore is in the past. Without it the real clock is used.
//
// Output: one JSON line. Exit 0 = accepted, 1 = rejected (invalidReason printed),
// 2 = usage error or unexpected harness failure.

import { decodePaymentRequiredHeader, decodePaymentSignatureHeader } from "@x402/core/http";
import { x402ResourceServer } from "@x402/core/server";
import { x402Facilitator } from "@x402/core/facilitator";
import { ExactEvmScheme as ExactEvmServerScheme } from "@x402/evm/exact/server";
import { ExactEvmScheme as ExactEvmFacilitatorScheme } from "@x402/evm/exact/facilitator";
import { ExactEvmSchemeV1 as ExactEvmFacilitatorSchemeV1 } from "@x402/evm/exact/v1/facilitator";
import { EVM_NETWORK_CHAIN_ID_MAP } from "@x402/evm/v1";
import { toFacilitatorEvmSigner, authorizationTypes } from "@x402/evm";
import { getAddress, isAddressEqual, recoverTypedDataAddress, verifyTypedData } from "viem";

function out(obj, code) {
  process.stdout.write(JSON.stringify(obj, (_k, v) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
  process.exit(code);
}

// ---- arguments ------------------------------------------------------------------
const argv = process.argv.slice(2);
let nowOverride;
const positional = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--now") {
    const v = argv[++i];
    if (!/^\d+$/.test(v ?? "")) out({ ok: false, error: "--now needs unix seconds" }, 2);
    nowOverride = Number(v);
  } else {
    positional.push(argv[i]);
  }
}
if (positional.length !== 2) {
  out({ ok: false, error: "usage: node verify.mjs [--now <unix seconds>] <PAYMENT-REQUIRED> <PAYMENT-SIGNATURE>" }, 2);
}
const [paymentRequiredHeader, paymentSignatureHeader] = positional;
if (nowOverride !== undefined) {
  const fixedMs = nowOverride * 1000;
  Date.now = () => fixedMs; // the facilitator reads time only via Math.floor(Date.now() / 1e3)
}
const now = Math.floor(Date.now() / 1000);

// ---- offline chain --------------------------------------------------------------
// The FacilitatorEvmSigner interface (@x402/evm dist signer-*.d.mts) is
// { getAddresses, readContract, verifyTypedData, writeContract, sendTransaction,
//   waitForTransactionReceipt, getCode }. Verify (EIP-3009 path) uses only getCode and
// readContract; ExactEvmScheme.verify always simulates (no option turns it off: it
// passes `options = undefined` to verifyEIP3009, and only `simulate === false` skips).
// The mock models one healthy FiatToken-style contract at `asset`:
//   - getCode(asset) = non-empty bytecode (passes the asset_not_deployed_contract check);
//     getCode(anything else) = "0x" (payer is an EOA -> ECDSA path, no ERC-1271/6492).
//   - readContract(asset, transferWithAuthorization, [from,to,value,after,before,nonce,v,r,s]):
//     the eth_call simulation. Balance is unlimited, no nonce is used, and the token's
//     EIP-712 name/version are the ones in requirements.extra. It still enforces what
//     FiatTokenV2 enforces: after < now < before, and the (v,r,s) split that the
//     facilitator passes recovers to `from` under the token's domain.
//   - Any other read or any write throws (and is listed in the output), so a change in
//     the official code path shows up instead of being silently approved.
function makeOfflineChain() {
  let requirements, asset, chainId; // set by useToken() to the matched (server-offered) requirement
  const calls = [];
  const unexpected = [];
  const fail = (what) => {
    unexpected.push(what);
    throw new Error(`offline harness: no mock for ${what}`);
  };
  const client = {
    address: "0x0000000000000000000000000000000000000001", // facilitator address, never used to sign
    async getCode({ address }) {
      calls.push(`getCode(${address})`);
      return asset && isAddressEqual(address, asset) ? "0x6080604052" : "0x";
    },
    async readContract({ address, functionName, args }) {
      calls.push(`readContract(${address}.${functionName})`);
      if (!(asset && isAddressEqual(address, asset) && functionName === "transferWithAuthorization" && args?.length === 9)) {
        fail(`readContract ${address}.${functionName}`);
      }
      const [from, to, value, validAfter, validBefore, nonce, v, r, s] = args;
      const t = BigInt(Math.floor(Date.now() / 1000));
      if (!(t > validAfter)) throw new Error("FiatTokenV2: authorization is not yet valid");
      if (!(t < validBefore)) throw new Error("FiatTokenV2: authorization is expired");
      const recovered = await recoverTypedDataAddress({
        domain: { name: requirements.extra?.name, version: requirements.extra?.version, chainId, verifyingContract: asset },
        types: authorizationTypes,
        primaryType: "TransferWithAuthorization",
        message: { from, to, value, validAfter, validBefore, nonce },
        signature: { r, s, v: BigInt(v) },
      });
      if (!isAddressEqual(recovered, from)) throw new Error("FiatTokenV2: invalid signature");
      return undefined; // transferWithAuthorization returns nothing; no revert = success
    },
    // Not used by the 2.27.0 EIP-3009 verify path (it recovers via its own
    // verifyTypedDataSignature), but part of the interface: real, pure EOA recovery.
    async verifyTypedData(params) {
      calls.push("verifyTypedData");
      return verifyTypedData(params);
    },
    async writeContract({ functionName }) { fail(`writeContract ${functionName}`); },
    async sendTransaction() { fail("sendTransaction"); },
    async waitForTransactionReceipt() { fail("waitForTransactionReceipt"); },
  };
  const useToken = (req) => {
    requirements = req;
    asset = getAddress(req.asset);
    chainId = EVM_NETWORK_CHAIN_ID_MAP[req.network] ?? Number(String(req.network).split(":")[1]);
  };
  return { signer: toFacilitatorEvmSigner(client), calls, unexpected, useToken };
}

// ---- 1. decode (official helpers) -----------------------------------------------
let paymentRequired, paymentPayload;
try {
  paymentRequired = paymentRequiredHeader.trimStart().startsWith("{")
    ? JSON.parse(paymentRequiredHeader)
    : decodePaymentRequiredHeader(paymentRequiredHeader);
} catch (e) {
  out({ ok: false, stage: "decode", invalidReason: `PAYMENT-REQUIRED: ${e.message}` }, 1);
}
try {
  paymentPayload = decodePaymentSignatureHeader(paymentSignatureHeader);
} catch (e) {
  // x402HTTPResourceServer.extractPayment logs this and treats the request as unpaid.
  out({ ok: false, stage: "decode", invalidReason: `PAYMENT-SIGNATURE: ${e.message}` }, 1);
}
if (!Array.isArray(paymentRequired?.accepts)) {
  out({ ok: false, stage: "decode", invalidReason: "PAYMENT-REQUIRED has no accepts[]" }, 1);
}

if (paymentRequired.x402Version === 1) {
  try {
    // ---- x402 v1: legacy matching + the official v1 facilitator, in-process -----------
    const chain = makeOfflineChain();
    const v1Networks = [...new Set(paymentRequired.accepts.map((r) => r.network).filter((n) => n in EVM_NETWORK_CHAIN_ID_MAP))];
    const facilitator = new x402Facilitator();
    if (v1Networks.length) facilitator.registerV1(v1Networks, new ExactEvmFacilitatorSchemeV1(chain.signer));
    if (paymentPayload?.x402Version !== 1) {
      out({ ok: false, stage: "match", invalidReason: `X-PAYMENT carries x402Version ${paymentPayload?.x402Version}, not 1` }, 1);
    }
    const matched = paymentRequired.accepts.find((r) => r.scheme === paymentPayload.scheme && r.network === paymentPayload.network);
    if (!matched) {
      out({ ok: false, stage: "match", invalidReason: "No matching payment requirements" }, 1);
    }
    const matchedIndex = paymentRequired.accepts.indexOf(matched);
    chain.useToken(matched);
    const result = await facilitator.verify(paymentPayload, matched);
    const report = { stage: "verify", x402Version: 1, matchedIndex, now, clock: nowOverride !== undefined ? "--now" : "system", chainCalls: chain.calls };
    if (chain.unexpected.length) report.unmockedChainCalls = chain.unexpected;
    if (!result.isValid) {
      out({ ok: false, ...report, invalidReason: result.invalidReason, invalidMessage: result.invalidMessage, payer: result.payer }, 1);
    }
    out({
      ok: true,
      payer: result.payer,
      scheme: matched.scheme,
      network: matched.network,
      asset: matched.asset,
      amount: matched.maxAmountRequired,
      payTo: matched.payTo,
      ...report,
    }, 0);
  } catch (e) {
    out({ ok: false, stage: "exception", invalidReason: e?.message ?? String(e) }, 1);
  }
}

try {
  // ---- official server + in-process official facilitator ------------------------
  const evmNetworks = [...new Set(paymentRequired.accepts.map((r) => r.network).filter((n) => /^eip155:\d+$/.test(n)))];
  const chain = makeOfflineChain();

  const facilitator = new x402Facilitator();
  if (evmNetworks.length) facilitator.register(evmNetworks, new ExactEvmFacilitatorScheme(chain.signer));

  const server = new x402ResourceServer(facilitator); // FacilitatorClient = the in-process facilitator
  server.register("eip155:*", new ExactEvmServerScheme());
  await server.initialize(); // calls facilitator.getSupported(); no network

  // ---- 2. match ----------------------------------------------------------------
  const matched = server.findMatchingRequirements(paymentRequired.accepts, paymentPayload);
  if (!matched) {
    out({ ok: false, stage: "match", invalidReason: "No matching payment requirements" }, 1);
  }
  const matchedIndex = paymentRequired.accepts.indexOf(matched);
  chain.useToken(matched); // the mock token is the asset the server offered

  // ---- 3. extension echo ------------------------------------------------------
  const ext = server.validateExtensions(paymentRequired, paymentPayload);
  if (!ext.valid) {
    out({ ok: false, stage: "extensions", invalidReason: ext.invalidReason, extensionKey: ext.extensionKey }, 1);
  }

  // ---- 4. facilitator verify via the resource server ----------------------------
  const paymentFlow = server.getPaymentFlow(paymentPayload, matched);
  let result = await server.verifyPayment(paymentPayload, matched, paymentRequired.extensions);
  // Flows with verifyBeforeHandler=false ("upfront") skip the facilitator in verifyPayment;
  // the facilitator's verify still runs inside settle, so run it directly here.
  if (paymentFlow !== "authorization") result = await facilitator.verify(paymentPayload, matched);

  const report = {
    stage: "verify",
    matchedIndex,
    paymentFlow,
    now,
    clock: nowOverride !== undefined ? "--now" : "system",
    chainCalls: chain.calls,
  };
  if (chain.unexpected.length) report.unmockedChainCalls = chain.unexpected;
  if (!result.isValid) {
    out({ ok: false, ...report, invalidReason: result.invalidReason, invalidMessage: result.invalidMessage, payer: result.payer }, 1);
  }
  out({
    ok: true,
    payer: result.payer,
    scheme: matched.scheme,
    network: matched.network,
    asset: matched.asset,
    amount: matched.amount,
    payTo: matched.payTo,
    ...report,
  }, 0);
} catch (e) {
  // x402HTTPResourceServer.processHTTPRequest answers a thrown error with a 402 carrying e.message.
  out({ ok: false, stage: "exception", invalidReason: e?.message ?? String(e) }, 1);
}
