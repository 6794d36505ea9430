//! The wallet's MCP servers: the agent's payment tools and the paying proxy for remote paid
//! MCP tools (the x402 MCP binding).
