//! `walletctl mcp`: the wallet's MCP servers (wallet-mcp).

use clap::Args;

use crate::{Fail, Out};

/// `walletctl mcp` arguments.
#[derive(Debug, Args)]
pub(crate) struct McpArgs {}

/// Not built yet.
pub(crate) async fn run(_default_url: &str, _a: McpArgs) -> Out {
    Err(Fail(1, "mcp: not implemented yet".into()))
}
