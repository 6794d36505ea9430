// The paid HTTP API: the official v2 resource server (`paymentMiddleware` from @x402/express with
// HTTPFacilitatorClient) and the official legacy v1 server (`paymentMiddleware` from
// x402-express@1.2.0), both using the local facilitator over HTTP.
//
// Routes (payee and price per request: `?payTo=0x…&amount=<atomic units>`; defaults in the
// launcher's line):
//   GET  /free            no payment
//   GET  /v2/paid         v2 (PAYMENT-REQUIRED / PAYMENT-SIGNATURE / PAYMENT-RESPONSE)
//   POST /v2/echo         v2; answers with the method, content type and body it received
//   GET  /v2/pid          v2 declaring the `payment-identifier` extension (required); answers
//                         with the id; a resent identical payment with the same id gets the
//                         stored answer (no second charge), another payment with that id 409,
//                         no id 400 (specs/extensions/payment_identifier.md). `&lose=1` drops
//                         the connection once after settling, as a lost response would.
//   GET  /v1/paid         v1 (402 JSON body / X-PAYMENT / X-PAYMENT-RESPONSE)
//   POST /v1/echo         v1; like /v2/echo

import { createHash } from "node:crypto";
import express from "express";
import { HTTPFacilitatorClient, x402ResourceServer } from "@x402/core/server";
import { decodePaymentSignatureHeader } from "@x402/core/http";
import { ExactEvmScheme } from "@x402/evm/exact/server";
import { paymentMiddlewareFromHTTPServer, x402HTTPResourceServer } from "@x402/express";
import {
  declarePaymentIdentifierExtension,
  extractPaymentIdentifier,
  paymentIdentifierResourceServerExtension,
  PAYMENT_IDENTIFIER,
} from "@x402/extensions/payment-identifier";
import { NETWORK, TOKEN, V1_NETWORK } from "./chain.mjs";

const ADDRESS = /^0x[0-9a-fA-F]{40}$/;
const AMOUNT = /^[0-9]{1,30}$/;

function one(v) {
  return Array.isArray(v) ? v[0] : v;
}

/** Sorted-key JSON, to compare two payloads as values. */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v);
}

/**
 * @param {{facilitatorUrl: string, token: string, defaultPayTo: string, defaultAmount: string, log: (e: object) => void}} o
 * @returns the Express app; `app.initialized` settles once the official server read the
 *   facilitator's /supported and validated its routes, `app.warmV1()` loads the v1 server.
 */
export function resourceApp({ facilitatorUrl, token, defaultPayTo, defaultAmount, log }) {
  const app = express();
  app.set("trust proxy", false);
  app.use(express.text({ type: () => true, limit: "1mb" }));

  const bad = (res, msg) => res.status(400).json({ error: msg });
  const params = (req) => ({
    payTo: one(req.query.payTo) ?? defaultPayTo,
    amount: one(req.query.amount) ?? defaultAmount,
  });
  app.use((req, res, next) => {
    const { payTo, amount } = params(req);
    if (!ADDRESS.test(payTo)) return bad(res, `payTo ${payTo} is not an address`);
    if (!AMOUNT.test(amount)) return bad(res, `amount ${amount} is not a decimal integer`);
    log({
      kind: "request",
      method: req.method,
      path: req.path,
      payTo,
      paymentSignature: Boolean(req.header("payment-signature")),
      xPayment: Boolean(req.header("x-payment")),
    });
    next();
  });

  // ---- v2: the official @x402/express middleware.
  const facilitatorClient = new HTTPFacilitatorClient({ url: facilitatorUrl, timeoutMs: 30000 });
  const server = new x402ResourceServer(facilitatorClient)
    .register(NETWORK, new ExactEvmScheme())
    .registerExtension(paymentIdentifierResourceServerExtension);
  const accepts = {
    scheme: "exact",
    network: NETWORK,
    maxTimeoutSeconds: 60,
    payTo: (ctx) => one(ctx.adapter.getQueryParam("payTo")) ?? defaultPayTo,
    price: (ctx) => ({
      amount: one(ctx.adapter.getQueryParam("amount")) ?? defaultAmount,
      asset: token,
      extra: { name: TOKEN.name, version: TOKEN.version },
    }),
  };
  const routes = {
    "GET /v2/paid": { accepts, description: "A paid GET (x402 v2)", mimeType: "application/json" },
    "POST /v2/echo": {
      accepts,
      description: "A paid POST that echoes its body (x402 v2)",
      mimeType: "application/json",
    },
    "GET /v2/pid": {
      accepts,
      description: "A paid GET declaring payment-identifier (x402 v2)",
      mimeType: "application/json",
      extensions: { [PAYMENT_IDENTIFIER]: declarePaymentIdentifierExtension(true) },
    },
  };

  // payment-identifier idempotency in front of the official middleware (the official server
  // extension only declares it; the spec's semantics are the server's to implement).
  const byId = new Map();
  app.use((req, res, next) => {
    if (req.path !== "/v2/pid") return next();
    const header = req.header("payment-signature");
    if (!header) return next();
    let payload;
    try {
      payload = decodePaymentSignatureHeader(header);
    } catch {
      return next();
    }
    const id = extractPaymentIdentifier(payload, true);
    if (!id) {
      res.status(400).json({ error: "payment-identifier is required: extensions[\"payment-identifier\"].info.id" });
      return;
    }
    const key = createHash("sha256").update(canonical(payload)).digest("hex");
    const seen = byId.get(id);
    if (seen && seen.key !== key) {
      log({ kind: "payment-identifier", id, payTo: params(req).payTo, outcome: "conflict" });
      res.status(409).json({ error: `payment-identifier ${id} was used with a different payment` });
      return;
    }
    if (seen?.response) {
      log({ kind: "payment-identifier", id, payTo: params(req).payTo, outcome: "replayed" });
      const { status, headers, body } = seen.response;
      res.status(status);
      for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
      res.setHeader("X-Idempotent-Replay", "true");
      res.end(body);
      return;
    }
    if (seen) {
      res.status(409).json({ error: `payment-identifier ${id} is being processed` });
      return;
    }
    const entry = { key, response: null };
    byId.set(id, entry);
    req.paymentId = id;
    const lose = one(req.query.lose) === "1";
    const end = res.end.bind(res);
    res.end = (chunk, ...rest) => {
      const paid = res.statusCode === 200 && res.getHeader("payment-response");
      if (paid) {
        const headers = {};
        for (const [k, v] of Object.entries(res.getHeaders())) {
          if (v != null && k !== "content-length" && k !== "connection") headers[k] = String(v);
        }
        entry.response = { status: 200, headers, body: chunk ? Buffer.from(chunk) : Buffer.alloc(0) };
        if (lose) {
          log({ kind: "payment-identifier", id, payTo: params(req).payTo, outcome: "settled, response dropped" });
          res.socket?.destroy();
          return res;
        }
      } else if (!entry.response) {
        byId.delete(id); // not paid: the id may be used again
      }
      return end(chunk, ...rest);
    };
    next();
  });

  // The official middleware over an HTTP resource server initialized (facilitator's /supported
  // read, routes validated) before the launcher says it is ready.
  const httpServer = new x402HTTPResourceServer(server, routes);
  const initialized = httpServer.initialize();
  app.use(paymentMiddlewareFromHTTPServer(httpServer, undefined, undefined, false));

  // ---- v1: the official legacy x402-express@1.2.0 middleware, one per payee and price. Loaded
  // on first use (its Solana dependencies take ~0.7 s to load; `warmV1` starts it early).
  let paymentMiddlewareV1 = null;
  const loadV1 = () =>
    (loadV1.promise ??= import("x402-express").then((m) => {
      paymentMiddlewareV1 = m.paymentMiddleware;
    }));
  const v1 = new Map();
  const v1Middleware = (payTo, amount) => {
    const key = `${payTo}/${amount}`;
    if (!v1.has(key)) {
      const price = {
        amount,
        asset: { address: token, decimals: TOKEN.decimals, eip712: { name: TOKEN.name, version: TOKEN.version } },
      };
      const config = { mimeType: "application/json", maxTimeoutSeconds: 60 };
      v1.set(
        key,
        paymentMiddlewareV1(
          payTo,
          {
            "GET /v1/paid": { price, network: V1_NETWORK, config: { ...config, description: "A paid GET (x402 v1)" } },
            "POST /v1/echo": {
              price,
              network: V1_NETWORK,
              config: { ...config, description: "A paid POST that echoes its body (x402 v1)" },
            },
          },
          { url: facilitatorUrl },
        ),
      );
    }
    return v1.get(key);
  };
  app.use(async (req, res, next) => {
    if (!req.path.startsWith("/v1/")) return next();
    try {
      await loadV1();
    } catch (e) {
      return next(e);
    }
    const { payTo, amount } = params(req);
    return v1Middleware(payTo, amount)(req, res, next);
  });

  // ---- the handlers (reached only once paid).
  const echo = (req) => ({
    method: req.method,
    path: req.path,
    contentType: req.header("content-type") ?? null,
    body: typeof req.body === "string" ? req.body : "",
  });
  app.get("/free", (_req, res) => res.json({ ok: true, free: true }));
  app.get("/v2/paid", (req, res) => res.json({ ok: true, route: "v2/paid", x402Version: 2 }));
  app.post("/v2/echo", (req, res) => res.json({ ok: true, route: "v2/echo", x402Version: 2, ...echo(req) }));
  app.get("/v2/pid", (req, res) => res.json({ ok: true, route: "v2/pid", x402Version: 2, paymentId: req.paymentId ?? null }));
  app.get("/v1/paid", (req, res) => res.json({ ok: true, route: "v1/paid", x402Version: 1 }));
  app.post("/v1/echo", (req, res) => res.json({ ok: true, route: "v1/echo", x402Version: 1, ...echo(req) }));
  app.use((err, _req, res, _next) => {
    log({ kind: "error", error: String(err?.stack ?? err) });
    if (!res.headersSent) res.status(500).json({ error: String(err?.message ?? err) });
  });
  app.warmV1 = loadV1;
  app.initialized = initialized;
  return app;
}
