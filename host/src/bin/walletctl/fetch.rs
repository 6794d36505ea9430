//! `walletctl fetch URL`: a paying curl (wallet-agent).

use clap::Args;

use crate::{Fail, Out};

/// `walletctl fetch` arguments.
#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// The URL to fetch.
    url: String,
}

/// Not built yet.
pub(crate) async fn run(_default_url: &str, a: FetchArgs) -> Out {
    Err(Fail(1, format!("fetch {}: not implemented yet", a.url)))
}
