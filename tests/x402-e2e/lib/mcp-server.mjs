// A paid MCP server (streamable HTTP, official MCP TypeScript SDK) implementing the x402 MCP
// binding (specs/transports-v2/mcp.md; x402-next.md §3.1) the way the official @x402/mcp
// `createPaymentWrapper` does (that package is not published on npm), with verify and settle
// through the official x402ResourceServer and the local facilitator.
//
// Tools:
//   paid_echo                 tool-result binding: unpaid -> isError result, structuredContent =
//                             PaymentRequired, content[0].text = JSON of it; paid retry carries
//                             params._meta["x402/payment"] (a JSON object); success result has
//                             _meta["x402/payment-response"] (the SettleResponse)
//   paid_echo_rpc402          JSON-RPC error variant: error.code 402, error.data = PaymentRequired
//   paid_echo_rpc32042        JSON-RPC error variant: error.code -32042, error.data = PaymentRequired
//   paid_echo_rpc32042_nested JSON-RPC error variant: error.code -32042, error.data.x402 = PaymentRequired
//   free_echo                 no payment
// Payee and price per MCP session from the URL the session was opened with:
// /mcp?payTo=0x…&amount=<atomic units>.

import { randomUUID } from "node:crypto";
import express from "express";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema,
  isInitializeRequest,
  ListToolsRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";
import { HTTPFacilitatorClient, x402ResourceServer } from "@x402/core/server";
import { ExactEvmScheme } from "@x402/evm/exact/server";
import { NETWORK, TOKEN } from "./chain.mjs";

const PAYMENT_META = "x402/payment";
const PAYMENT_RESPONSE_META = "x402/payment-response";
const ADDRESS = /^0x[0-9a-fA-F]{40}$/;
const AMOUNT = /^[0-9]{1,30}$/;

const textArg = {
  type: "object",
  properties: { text: { type: "string", description: "Text to echo" } },
  required: ["text"],
};

const TOOLS = [
  { name: "paid_echo", variant: "result", description: "Echoes its text; paid (x402 MCP binding, tool result)" },
  { name: "paid_echo_rpc402", variant: "rpc402", description: "Echoes its text; paid (JSON-RPC error 402)" },
  { name: "paid_echo_rpc32042", variant: "rpc32042", description: "Echoes its text; paid (JSON-RPC error -32042)" },
  {
    name: "paid_echo_rpc32042_nested",
    variant: "rpc32042nested",
    description: "Echoes its text; paid (JSON-RPC error -32042, PaymentRequired in data.x402)",
  },
  { name: "free_echo", variant: "free", description: "Echoes its text; free" },
];

/**
 * A JSON-RPC error for the SDK to send as is (McpError would prefix "MCP error <code>: " to the
 * message on the wire).
 */
function rpcError(code, message, data) {
  return Object.assign(new Error(message), { code, data });
}

function isPaymentPayload(v) {
  return (
    v !== null &&
    typeof v === "object" &&
    !Array.isArray(v) &&
    typeof v.x402Version === "number" &&
    v.payload !== null &&
    typeof v.payload === "object"
  );
}

function mcpServer({ resourceServer, token, payTo, amount, log }) {
  const server = new Server({ name: "x402-e2e-paid-mcp", version: "0.0.0" }, { capabilities: { tools: {} } });
  server.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: TOOLS.map((t) => ({
      name: t.name,
      description: t.description,
      inputSchema: textArg,
      annotations: { readOnlyHint: true, openWorldHint: false },
    })),
  }));
  server.setRequestHandler(CallToolRequestSchema, async (request) => {
    const { name, arguments: args = {}, _meta } = request.params;
    const tool = TOOLS.find((t) => t.name === name);
    if (!tool) throw rpcError(-32602, `unknown tool ${name}`);
    const text = typeof args.text === "string" ? args.text : "";
    const ok = { content: [{ type: "text", text: `echo: ${text}` }] };
    if (tool.variant === "free") return ok;

    const accepts = await resourceServer.buildPaymentRequirements({
      scheme: "exact",
      network: NETWORK,
      payTo,
      price: { amount, asset: token, extra: { name: TOKEN.name, version: TOKEN.version } },
      maxTimeoutSeconds: 60,
    });
    const resource = { url: `mcp://tool/${name}`, description: `Tool: ${name}`, mimeType: "application/json" };
    const paymentRequired = async (error, extra = {}) => {
      const pr = await resourceServer.createPaymentRequiredResponse(accepts, resource, error);
      const data = { ...pr, ...extra };
      log({ kind: "mcp", tool: name, payTo, outcome: "payment required", error });
      switch (tool.variant) {
        case "rpc402":
          throw rpcError(402, error, data);
        case "rpc32042":
          throw rpcError(-32042, error, data);
        case "rpc32042nested":
          throw rpcError(-32042, error, { x402: data });
        default:
          return { isError: true, structuredContent: data, content: [{ type: "text", text: JSON.stringify(data) }] };
      }
    };

    const payment = _meta?.[PAYMENT_META];
    if (payment === undefined) return paymentRequired("Payment required to access this resource");
    if (!isPaymentPayload(payment)) {
      return paymentRequired(`_meta["${PAYMENT_META}"] must be a PaymentPayload JSON object`);
    }
    const requirements = resourceServer.findMatchingRequirements(accepts, payment);
    if (!requirements) return paymentRequired("No matching payment requirements");
    const verified = await resourceServer.verifyPayment(payment, requirements);
    if (!verified.isValid) return paymentRequired(verified.invalidReason || "Payment verification failed");
    let settled;
    try {
      settled = await resourceServer.settlePayment(payment, requirements);
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      return paymentRequired("Settlement failed", {
        [PAYMENT_RESPONSE_META]: { success: false, errorReason: message, transaction: "", network: NETWORK },
      });
    }
    if (!settled.success) {
      return paymentRequired("Settlement failed", { [PAYMENT_RESPONSE_META]: settled });
    }
    log({ kind: "mcp", tool: name, payTo, outcome: "paid", transaction: settled.transaction });
    return { ...ok, _meta: { [PAYMENT_RESPONSE_META]: settled } };
  });
  return server;
}

/**
 * Express app serving the paid MCP server at /mcp (stateful streamable HTTP sessions).
 * @returns {{app: import("express").Express, ready: () => Promise<void>, close: () => Promise<void>}}
 *   `ready()` reads the facilitator's /supported (also done on the first session if it failed).
 */
export function mcpApp({ facilitatorUrl, token, defaultPayTo, defaultAmount, log }) {
  const resourceServer = new x402ResourceServer(
    new HTTPFacilitatorClient({ url: facilitatorUrl, timeoutMs: 30000 }),
  ).register(NETWORK, new ExactEvmScheme());
  let initialized = null;
  const ready = () => {
    initialized ??= resourceServer.initialize().catch((e) => {
      initialized = null;
      throw e;
    });
    return initialized;
  };
  const sessions = new Map();
  const app = express();
  app.use(express.json({ limit: "1mb" }));
  const rpcError = (res, status, code, message) =>
    res.status(status).json({ jsonrpc: "2.0", error: { code, message }, id: null });

  app.post("/mcp", async (req, res) => {
    try {
      const sid = req.header("mcp-session-id");
      if (sid) {
        const s = sessions.get(sid);
        if (!s) return rpcError(res, 404, -32001, "Session not found");
        await s.transport.handleRequest(req, res, req.body);
        return;
      }
      if (!isInitializeRequest(req.body)) {
        return rpcError(res, 400, -32000, "Bad Request: No valid session ID provided");
      }
      const payTo = [req.query.payTo].flat()[0] ?? defaultPayTo;
      const amount = [req.query.amount].flat()[0] ?? defaultAmount;
      if (!ADDRESS.test(payTo) || !AMOUNT.test(amount)) {
        return rpcError(res, 400, -32000, "payTo must be an address and amount a decimal integer");
      }
      await ready();
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => sessions.set(id, { transport, server }),
      });
      transport.onclose = () => {
        if (transport.sessionId) sessions.delete(transport.sessionId);
      };
      const server = mcpServer({ resourceServer, token, payTo, amount, log });
      await server.connect(transport);
      await transport.handleRequest(req, res, req.body);
    } catch (e) {
      log({ kind: "error", error: String(e?.stack ?? e) });
      if (!res.headersSent) rpcError(res, 500, -32603, "Internal server error");
    }
  });
  const bySession = async (req, res) => {
    const s = sessions.get(req.header("mcp-session-id") ?? "");
    if (!s) return rpcError(res, 400, -32000, "Invalid or missing session ID");
    await s.transport.handleRequest(req, res);
  };
  app.get("/mcp", bySession);
  app.delete("/mcp", bySession);
  const close = async () => {
    await Promise.allSettled([...sessions.values()].map((s) => s.server.close()));
    sessions.clear();
  };
  return { app, ready, close };
}
