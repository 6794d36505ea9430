#!/usr/bin/env node
// What the OFFICIAL x402 client (@x402/core and @x402/evm, pinned in package.json) does with a
// server's payment requirements, offline: the judge for what the wallet must accept and which
// option it must pay.
//
//   node client-select.mjs <PAYMENT-REQUIRED value | x402 v1 402 JSON body>
//
// Runs x402HTTPClient.getPaymentRequiredResponse (the header, or a body with x402Version 1),
// then x402Client.createPaymentPayload with registerExactEvmScheme (every eip155 network and
// every v1 name) and the public Hardhat/Anvil test key #0, spend controls off (the wallet's
// policy plays their part), and the default selector (the first option left).
//
// Output: one JSON line. Exit 0 = the client would pay:
//   {"ok":true,"x402Version":1|2,"index":<accepts[] index paid>,"header":"PAYMENT-SIGNATURE"|"X-PAYMENT",
//    "value":<the header value>,"authorization":{…}}
// (What the client pays is not always what a server accepts: feed "value" to verify.mjs.)
// Exit 1 = the client refuses: {"ok":false,"stage":"decode|select|sign","error":"…"}.
// Exit 2 = usage error.
import { x402Client, x402HTTPClient } from "@x402/core/client";
import { registerExactEvmScheme } from "@x402/evm/exact/client";
import { privateKeyToAccount } from "viem/accounts";

function out(obj, code) {
  process.stdout.write(JSON.stringify(obj, (_k, v) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
  process.exit(code);
}

const args = process.argv.slice(2);
if (args.length !== 1) out({ ok: false, error: "usage: node client-select.mjs <PAYMENT-REQUIRED | v1 JSON body>" }, 2);
const [input] = args;

const client = new x402Client();
client.setSpendControls(false);
registerExactEvmScheme(client, {
  signer: privateKeyToAccount("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"),
});
const http = new x402HTTPClient(client);

// As a fetch wrapper hands it over: a JSON body is parsed (v1), anything else is the header.
let paymentRequired;
try {
  const isBody = input.trimStart().startsWith("{");
  const body = isBody ? JSON.parse(input) : undefined;
  paymentRequired = http.getPaymentRequiredResponse((name) => (!isBody && name === "PAYMENT-REQUIRED" ? input : null), body);
} catch (e) {
  out({ ok: false, stage: "decode", error: e?.message ?? String(e) }, 1);
}

let selected;
try {
  selected = client.selectPaymentRequirements(paymentRequired.x402Version, paymentRequired.accepts);
} catch (e) {
  out({ ok: false, stage: "select", error: e?.message ?? String(e) }, 1);
}
try {
  const payload = await http.createPaymentPayload(paymentRequired);
  const [[header, value]] = Object.entries(http.encodePaymentSignatureHeader(payload));
  out({
    ok: true,
    x402Version: payload.x402Version,
    index: paymentRequired.accepts.indexOf(selected),
    header,
    value,
    authorization: payload.payload?.authorization,
  }, 0);
} catch (e) {
  out({ ok: false, stage: "sign", error: e?.message ?? String(e) }, 1);
}
