//! `walletctl kyt`: the KYT denylist of payees (add, remove, list, import a file).

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use clap::Subcommand;
use wallet_client::{random_idempotency_key, AdminRpc, GatewayClient};
use wallet_host::kyt_import::{parse, Format, MAX_INPUT_BYTES};
use wallet_proto::gateway::v1 as gw;

use crate::{admin::signed, client, Fail, Out};

/// The `walletctl kyt` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum KytCmd {
    /// Deny payments to these addresses (any letter case).
    Add {
        /// Addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Allow these addresses again.
    Remove {
        /// Addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// List denied addresses (every page), one per line on stdout; an empty list is said on
    /// stderr.
    List,
    /// Load a denylist file: plain (one address per line, # comments), CSV (a column named
    /// address, or --column) or JSON (an array of addresses, as in the published lists of
    /// sanctioned digital-currency addresses, or of objects with an address field).
    ///
    /// Addresses are deduplicated; bad lines are reported with their line numbers and skipped
    /// (or refused, with --strict). The whole file is applied at once: payments see the old list
    /// or the new one, never part of it.
    Import {
        /// The file ("-" for stdin).
        file: PathBuf,
        /// Input format.
        #[arg(long, value_enum, default_value_t = Format::Auto)]
        format: Format,
        /// CSV/JSON field holding the address.
        #[arg(long)]
        column: Option<String>,
        /// Make the list exactly this file (remove addresses not in it).
        #[arg(long)]
        replace: bool,
        /// Refuse the whole file if any line is bad.
        #[arg(long)]
        strict: bool,
        /// Parse and report, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs one `walletctl kyt` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: KytCmd) -> Out {
    let mut cl = client(url).await?;
    match c {
        KytCmd::Add { addresses } => {
            let r = cl
                .add_kyt(signed(home, AdminRpc::AddKyt, gw::KytRequest { addresses, auth: None })?)
                .await?;
            println!("added {} (denylist now {})", r.changed, r.total);
        }
        KytCmd::Remove { addresses } => {
            let r = cl
                .remove_kyt(signed(
                    home,
                    AdminRpc::RemoveKyt,
                    gw::KytRequest { addresses, auth: None },
                )?)
                .await?;
            println!("removed {} (denylist now {})", r.changed, r.total);
        }
        KytCmd::List => {
            let mut offset = 0u64;
            loop {
                let page = cl.list_kyt(gw::ListKytRequest { offset, limit: 10_000 }).await?;
                let n = page.addresses.len() as u64;
                for a in page.addresses {
                    crate::output::print_line(&a);
                }
                offset += n;
                if n == 0 || offset >= page.total {
                    break;
                }
            }
            // The addresses alone go to stdout (one per line, for scripts); an empty list says
            // so on stderr.
            if offset == 0 {
                eprintln!(
                    "the KYT denylist is empty (walletctl kyt add ADDRESS, or kyt import FILE)"
                );
            }
        }
        KytCmd::Import { file, format, column, replace, strict, dry_run } => {
            kyt_import(&mut cl, home, &file, format, column.as_deref(), replace, strict, dry_run)
                .await?;
        }
    }
    Ok(())
}

/// Addresses per `ImportKyt` chunk: 40,000 × 20 bytes stays well under the 1 MiB frame.
pub(crate) const KYT_CHUNK: usize = 40_000;

#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub(crate) async fn kyt_import(
    cl: &mut GatewayClient,
    home: &Path,
    file: &Path,
    format: Format,
    column: Option<&str>,
    replace: bool,
    strict: bool,
    dry_run: bool,
) -> Out {
    let mut text = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().take(MAX_INPUT_BYTES as u64 + 1).read_to_string(&mut text)
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_INPUT_BYTES as u64 + 1).read_to_string(&mut text))
    };
    read.map_err(|e| Fail(2, format!("invalid: cannot read {}: {e}", file.display())))?;
    let parsed = parse(&text, format, column)
        .map_err(|e| Fail(2, format!("invalid: {}: {e}", file.display())))?;
    for b in parsed.bad.iter().take(20) {
        eprintln!("{}:{}: {} ({:?})", file.display(), b.line, b.reason, b.text);
    }
    if parsed.bad.len() > 20 {
        eprintln!("... and {} more bad lines", parsed.bad.len() - 20);
    }
    println!(
        "{}: {:?} format, {} entries: {} addresses, {} duplicates, {} bad",
        file.display(),
        parsed.format,
        parsed.entries,
        parsed.addresses.len(),
        parsed.duplicates,
        parsed.bad.len()
    );
    if strict && !parsed.bad.is_empty() {
        return Err(Fail(
            2,
            format!("invalid: {} bad lines (--strict); nothing was changed", parsed.bad.len()),
        ));
    }
    if parsed.addresses.is_empty() && !replace {
        return Err(Fail(2, "invalid: no addresses to import".into()));
    }
    if dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    let import_id = random_idempotency_key();
    let chunks: Vec<&[[u8; 20]]> = if parsed.addresses.is_empty() {
        vec![&[]]
    } else {
        parsed.addresses.chunks(KYT_CHUNK).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let req = gw::ImportKytRequest {
            import_id: import_id.clone(),
            addresses: chunk.concat(),
            commit: i == last,
            replace,
            expected_total: parsed.addresses.len() as u64,
            auth: None,
        };
        let r = cl.import_kyt(signed(home, AdminRpc::ImportKyt, req)?).await?;
        if r.committed {
            println!(
                "imported: {} added, {} removed, denylist now {}",
                r.added, r.removed, r.total
            );
        }
    }
    Ok(())
}
