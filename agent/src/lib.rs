//! The paying x402 HTTP client that runs beside the agent (`walletctl fetch`, the MCP server's
//! `x402_fetch`): it sends a request, reads a `402 Payment Required` answer (x402 v2
//! `PAYMENT-REQUIRED` header or v1 JSON body), has the enclave sign within policy through
//! `wallet-client`, and retries with the payment.
