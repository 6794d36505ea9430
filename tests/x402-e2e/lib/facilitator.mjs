// The official facilitator (x402Facilitator from @x402/core with the `exact` EVM scheme from
// @x402/evm, v2 and v1) settling on the local chain, served over HTTP: POST /verify, POST /settle,
// GET /supported, with the request/response shapes HTTPFacilitatorClient (v2) and the legacy
// x402 `useFacilitator` (v1) send and expect.

import express from "express";
import { x402Facilitator } from "@x402/core/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { registerExactEvmScheme } from "@x402/evm/exact/facilitator";
import { NETWORK, serialQueue } from "./chain.mjs";

/**
 * The FacilitatorEvmSigner over a viem wallet client; transactions are sent one at a time
 * (parallel tests settle concurrently with one key).
 */
export function facilitatorSigner(client) {
  const queue = serialQueue();
  return toFacilitatorEvmSigner(
    {
      address: client.account.address,
      readContract: (a) => client.readContract(a),
      verifyTypedData: (a) => client.verifyTypedData(a),
      writeContract: (a) => queue(() => client.writeContract(a)),
      sendTransaction: (a) => queue(() => client.sendTransaction(a)),
      waitForTransactionReceipt: (a) => client.waitForTransactionReceipt(a),
      getCode: (a) => client.getCode(a),
    },
    { confirmationTimeoutMs: 30000 },
  );
}

/** The official facilitator with `exact` on the local network (v2) and every v1 EVM name. */
export function createFacilitator(signer) {
  const facilitator = new x402Facilitator();
  registerExactEvmScheme(facilitator, { signer, networks: NETWORK });
  return facilitator;
}

/**
 * Express app serving the facilitator. `log` receives one entry per verify/settle call.
 */
export function facilitatorApp(facilitator, log) {
  const app = express();
  app.use(express.json({ limit: "1mb" }));
  app.get("/supported", (_req, res) => {
    res.json(facilitator.getSupported());
  });
  for (const op of ["verify", "settle"]) {
    app.post(`/${op}`, async (req, res) => {
      const { paymentPayload, paymentRequirements } = req.body ?? {};
      if (!paymentPayload || !paymentRequirements) {
        res.status(400).json({ error: "paymentPayload and paymentRequirements are required" });
        return;
      }
      try {
        const result = await facilitator[op](paymentPayload, paymentRequirements);
        log({ op, x402Version: paymentPayload.x402Version, payTo: paymentRequirements.payTo, result });
        res.json(result);
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        log({ op, x402Version: paymentPayload.x402Version, payTo: paymentRequirements.payTo, error: message });
        const network = paymentRequirements.network ?? "";
        res
          .status(400)
          .json(
            op === "verify"
              ? { isValid: false, invalidReason: "unexpected_verify_error", invalidMessage: message }
              : { success: false, errorReason: "unexpected_settle_error", errorMessage: message, transaction: "", network },
          );
      }
    });
  }
  return app;
}
