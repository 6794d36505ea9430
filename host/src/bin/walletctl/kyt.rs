//! `walletctl kyt`: the KYT denylist of payees (add, remove, list, import a file).

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Subcommand;
use wallet_client::{random_idempotency_key, AdminRpc, ClientError, GatewayClient};
use wallet_host::kyt_import::{parse, Format, MAX_INPUT_BYTES};
use wallet_proto::{gateway::v1 as gw, Reason};

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
/// How long an import whose outcome is unknown (its answer lost or late) is followed before
/// walletctl gives up and says the outcome is unknown.
const FOLLOW_FOR: Duration = Duration::from_secs(600);
/// Pause between two questions about an import whose outcome is unknown.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// Times a chunk whose answer was lost is sent again.
const CHUNK_RETRIES: u32 = 3;
/// Longest wait for one call's answer (below the enclave's 120 s validity of an admin request).
const REQUEST_WAIT: Duration = Duration::from_secs(60);

fn percent(part: usize, whole: usize) -> usize {
    part.saturating_mul(100).checked_div(whole).unwrap_or(100)
}

/// What one `ImportKyt` call came to.
enum Reply {
    /// The enclave's verified answer.
    Done(gw::ImportKytResponse),
    /// An error: the enclave's signed refusal, or the host's word (see [`ClientError`]).
    Failed(ClientError),
    /// Nothing within [`REQUEST_WAIT`].
    NoAnswer,
}

/// Sends one `ImportKyt`, signed afresh (an admin request is valid once, for 120 s), and waits at
/// most [`REQUEST_WAIT`] for its answer.
async fn ask(
    cl: &mut GatewayClient,
    home: &Path,
    request: gw::ImportKytRequest,
) -> Result<Reply, Fail> {
    let req = signed(home, AdminRpc::ImportKyt, request)?;
    Ok(match tokio::time::timeout(REQUEST_WAIT, cl.import_kyt(req)).await {
        Ok(Ok(r)) => Reply::Done(r),
        Ok(Err(e)) => Reply::Failed(e),
        Err(_) => Reply::NoAnswer,
    })
}

/// Sends one chunk (not the commit); sent again when its answer was lost, since a repeated
/// chunk changes nothing.
async fn upload_chunk(
    cl: &mut GatewayClient,
    home: &Path,
    request: impl Fn() -> gw::ImportKytRequest,
) -> Out {
    let mut attempt = 0;
    loop {
        let why = match ask(cl, home, request()).await? {
            Reply::Done(_) => return Ok(()),
            Reply::Failed(e) if !e.outcome_unknown() || attempt >= CHUNK_RETRIES => {
                return Err(e.into())
            }
            Reply::Failed(e) => e.to_string(),
            Reply::NoAnswer if attempt >= CHUNK_RETRIES => {
                return Err(Fail(
                    1,
                    format!(
                        "no answer to a chunk in {} s, {} times; nothing was applied (the import is applied only by its last step)",
                        REQUEST_WAIT.as_secs(),
                        attempt + 1
                    ),
                ))
            }
            Reply::NoAnswer => format!("no answer in {} s", REQUEST_WAIT.as_secs()),
        };
        attempt += 1;
        eprintln!("a chunk's answer was lost ({why}); sending it again");
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// Sends the committing chunk. When its answer is lost or late (a timeout, a broken
/// connection, an answer that does not verify, a refusal that says nothing about the import),
/// the import may have been applied, may still be applying, or may never have arrived:
/// walletctl asks again with the same import id (the operation id) until the enclave says
/// which — it answers a commit of one of its last 16 imports with that import's result and
/// applies nothing twice, and refuses one whose chunks it no longer holds with
/// `KYT_IMPORT_INCOMPLETE` — or [`FOLLOW_FOR`] has passed.
async fn commit(
    cl: &mut GatewayClient,
    home: &Path,
    import_id: &str,
    request: impl Fn() -> gw::ImportKytRequest,
) -> Result<gw::ImportKytResponse, Fail> {
    let started = std::time::Instant::now();
    let mut asked = 0u32;
    loop {
        let why = match ask(cl, home, request()).await? {
            Reply::Done(r) if r.committed => {
                if asked > 0 {
                    eprintln!(
                        "import {import_id}: confirmed applied after {} s",
                        started.elapsed().as_secs()
                    );
                }
                return Ok(r);
            }
            Reply::Done(_) => {
                return Err(Fail(
                    1,
                    format!("import {import_id}: the enclave staged the last chunk but did not apply the import; nothing was changed"),
                ))
            }
            // The first answer, a refusal that is the enclave's own (or the gateway was never
            // reached): this commit did nothing.
            Reply::Failed(e) if asked == 0 && !e.outcome_unknown() => return Err(e.into()),
            Reply::Failed(e)
                if e.is_enclave_signed() && e.reason() == Some(Reason::KytImportIncomplete) =>
            {
                return Err(Fail(
                    e.exit_code(),
                    format!(
                        "import {import_id} was not applied: the enclave no longer holds its chunks and it is not among the last imports applied ({e}). Nothing was changed; run the import again"
                    ),
                ));
            }
            Reply::Failed(e) => e.to_string(),
            Reply::NoAnswer => format!("no answer in {} s", REQUEST_WAIT.as_secs()),
        };
        if started.elapsed() >= FOLLOW_FOR {
            return Err(Fail(
                1,
                format!(
                    "import {import_id}: no confirmation after {} s ({why}). Whether it was applied is unknown: `walletctl kyt list` shows the list in force",
                    FOLLOW_FOR.as_secs()
                ),
            ));
        }
        asked += 1;
        eprintln!(
            "import {import_id}: not confirmed yet ({why}); asking the enclave again ({} s so far)",
            started.elapsed().as_secs()
        );
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

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
    let total = parsed.addresses.len();
    let last = chunks.len() - 1;
    let mut sent = 0usize;
    let request = |chunk: &[[u8; 20]], commit: bool| gw::ImportKytRequest {
        import_id: import_id.clone(),
        addresses: chunk.concat(),
        commit,
        replace,
        expected_total: total as u64,
        auth: None,
    };
    // Progress and the operation id go to stderr; stdout carries the result alone.
    eprintln!("import {import_id}: uploading {total} addresses in {} chunks", chunks.len());
    for (i, chunk) in chunks.into_iter().enumerate() {
        if i < last {
            // A chunk whose answer was lost is sent again: the enclave counts an address once
            // however often it arrives.
            upload_chunk(cl, home, || request(chunk, false)).await?;
            sent += chunk.len();
            eprintln!("import {import_id}: uploaded {sent}/{total} ({}%)", percent(sent, total));
            continue;
        }
        eprintln!("import {import_id}: applying {total} addresses");
        let r = commit(cl, home, &import_id, || request(chunk, true)).await?;
        println!("imported: {} added, {} removed, denylist now {}", r.added, r.removed, r.total);
    }
    Ok(())
}
