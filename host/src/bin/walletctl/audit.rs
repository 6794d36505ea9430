//! `walletctl audit`: show the audit log and verify its chain against the enclave's signed head.

use std::path::Path;

use clap::Subcommand;
use ed25519_dalek::Verifier as _;
use rand_core::{OsRng, RngCore as _};
use wallet_client::GatewayClient;
use wallet_policy::audit::{head_message, verify_chain, verify_chain_from, Record};
use wallet_proto::gateway::v1 as gw;

use crate::{
    client,
    output::{at_ms, humanize_times, Format},
    Fail, Out,
};

/// The kinds of audit record the enclave writes.
pub(crate) const KINDS: [&str; 5] = ["payment", "deny", "withheld", "hold", "admin"];

/// The `walletctl audit` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Show audit records, newest last (times in RFC 3339; --output json for the stored
    /// records, one JSON object per line, times in Unix milliseconds).
    Show {
        /// Only this session (it must exist).
        #[arg(long, value_parser = crate::session_id)]
        session: Option<String>,
        /// Only this wallet (it must exist).
        #[arg(long, value_parser = crate::wallet_id)]
        wallet: Option<String>,
        /// Only this kind: payment (signed), deny (refused), withheld (signed but not released:
        /// revoked or frozen in flight), hold (held for approval) or admin (a signed change).
        #[arg(long, value_parser = KINDS)]
        kind: Option<String>,
        /// How many of the newest matching records.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// text: for people; json: the stored records, one per line.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Check the whole chain, the enclave's signature on its head (key pinned at init), and that
    /// it still contains the head verified last time. Names the first bad record. Exit code 5 on
    /// any failure. Each verified head is kept as a checkpoint (HOME/audit.head, and all of them
    /// in HOME/audit.heads).
    Verify {
        /// Check only the records after the head verified last, chained from it, up to the
        /// enclave's signed head: for a log whose older records were archived (the enclave
        /// reports pages of an archived stretch as tampered). The records before were checked
        /// by the verify that recorded that head.
        #[arg(long)]
        since_last: bool,
        /// Check an archived copy of the log's beginning, offline (no enclave is asked): its
        /// chain from the first record, and that it reaches a head verified before (a
        /// checkpoint in HOME/audit.heads) and agrees with every checkpoint it covers.
        #[arg(long, value_name = "FILE", conflicts_with = "since_last")]
        archive: Option<std::path::PathBuf>,
    },
}

/// The heads verified on this machine, oldest first: `HOME/audit.heads` (one `count hash` per
/// line) and the last one, `HOME/audit.head` (alone in a home older than the history).
fn checkpoints(home: &Path) -> Vec<(u64, String)> {
    let parse = |l: &str| {
        let mut it = l.split_whitespace();
        Some((it.next()?.parse::<u64>().ok()?, it.next()?.to_owned()))
    };
    let mut all: Vec<(u64, String)> = std::fs::read_to_string(home.join("audit.heads"))
        .unwrap_or_default()
        .lines()
        .filter_map(parse)
        .collect();
    if let Some(last) =
        std::fs::read_to_string(home.join("audit.head")).ok().and_then(|l| parse(&l))
    {
        if !all.contains(&last) {
            all.push(last);
        }
    }
    all.sort();
    all
}

/// Writes `text` to `path` through a temporary file and a rename (never half-written).
fn write_atomically(path: &Path, text: &str) -> Result<(), Fail> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Fail(1, format!("cannot write {}: {e}", path.display())))
}

/// Records a verified head: a line of `HOME/audit.heads`, then `HOME/audit.head` (the last).
fn record_checkpoint(home: &Path, count: u64, hash: &[u8; 32]) -> Result<(), Fail> {
    let line = format!("{count} {}\n", hex::encode(hash));
    let heads = home.join("audit.heads");
    let mut all = std::fs::read_to_string(&heads).unwrap_or_default();
    if !all.lines().any(|l| l.trim() == line.trim()) {
        all.push_str(&line);
        write_atomically(&heads, &all)?;
    }
    write_atomically(&home.join("audit.head"), &line)
}

/// `walletctl audit verify --archive FILE`: the archived records' chain from the first one,
/// checked against every verified head it covers. Every record must be covered: the archive must
/// end at or before a verified head's count and reach one (records after the last head it
/// reaches are vouched for by nothing this machine verified, since the chain alone is public).
fn verify_archive(home: &Path, file: &Path) -> Out {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Fail(1, format!("cannot read {}: {e}", file.display())))?;
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    verify_chain(lines.iter().copied())
        .map_err(|e| Fail(5, format!("the archive is broken: {e}")))?;
    let marks = checkpoints(home);
    if marks.is_empty() {
        return Err(Fail(5, "no verified head on this machine to check the archive against: run walletctl audit verify first (against the whole log)".into()));
    }
    let mut upto = 0u64;
    for (count, hash) in &marks {
        let Some(line) =
            usize::try_from(*count).ok().and_then(|n| n.checked_sub(1)).and_then(|i| lines.get(i))
        else {
            continue;
        };
        let r: Record = serde_json::from_str(line)
            .map_err(|e| Fail(5, format!("the archive is broken: {e}")))?;
        if &r.hash != hash {
            return Err(Fail(5, format!("the archive disagrees with the head verified before at record {}: it is not this enclave's log as it was", count - 1)));
        }
        upto = upto.max(*count);
    }
    if upto == 0 {
        return Err(Fail(5, format!("the archive holds {} records and reaches no head verified on this machine (the first is at {} records): it cannot be checked", lines.len(), marks[0].0)));
    }
    if lines.len() as u64 > upto {
        return Err(Fail(5, format!("UNVERIFIED: the archive's first {upto} records match a head verified before, but records {upto}..{} are covered by none (the chain alone proves nothing: anyone can recompute it). Archive exactly the records a verify covered: the first N lines after a verify of N records", lines.len())));
    }
    println!("archive OK: {upto} records, ending at a head verified on this machine");
    Ok(())
}

/// Every audit record, in order (paged).
pub(crate) async fn audit_records(cl: &mut GatewayClient) -> Result<Vec<String>, Fail> {
    let mut all = Vec::new();
    loop {
        let page =
            cl.list_audit(gw::ListAuditRequest { from_seq: all.len() as u64, limit: 1000 }).await?;
        let n = page.records.len();
        all.extend(page.records);
        if n == 0 || all.len() as u64 >= page.total {
            return Ok(all);
        }
        if all.len() > 50_000_000 {
            return Err(Fail(5, "the audit log is larger than walletctl will read".into()));
        }
    }
}

/// The enclave's audit head over a fresh challenge: `check_key` vets the key that signed it
/// (pinned, or pinned now), then the signature is verified. Returns the head and its hash.
async fn signed_head(
    cl: &mut wallet_client::GatewayClient,
    check_key: impl FnOnce(&[u8]) -> Result<(), Fail>,
) -> Result<(gw::AuditHead, [u8; 32]), Fail> {
    let mut challenge = [0u8; 16];
    OsRng.fill_bytes(&mut challenge);
    let head = cl.get_audit_head(gw::GetAuditHeadRequest { challenge: challenge.to_vec() }).await?;
    check_key(&head.public_key)?;
    let malformed = |what: &str| Fail(5, format!("malformed {what}"));
    let hash: [u8; 32] = head.hash.as_slice().try_into().map_err(|_| malformed("audit head"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(
        &head.public_key.as_slice().try_into().map_err(|_| malformed("audit key"))?,
    )
    .map_err(|_| malformed("audit key"))?;
    let sig = ed25519_dalek::Signature::from_slice(&head.signature)
        .map_err(|_| malformed("head signature"))?;
    key.verify(&head_message(head.count, &hash, &challenge), &sig).map_err(|_| {
        Fail(5, "the audit head's signature does not verify with the pinned enclave key and this challenge: the answer did not come from the enclave (the host is not to be trusted)".into())
    })?;
    Ok((head, hash))
}

/// The identity the enclave at `url` presents (hex): the key that signs its audit head over a
/// fresh challenge, checked, so whoever answers holds that key. Nothing is pinned or trusted by
/// this: it is compared with the pinned identity.
pub(crate) async fn presented_identity(url: &str) -> Result<String, Fail> {
    let mut cl = crate::unpinned_client(url).await?;
    let (head, _) = signed_head(&mut cl, |_| Ok(())).await?;
    Ok(hex::encode(head.public_key))
}

/// The enclave's audit head, signed over a fresh challenge and checked against the key pinned in
/// `HOME/audit.pub`, compared with the head this machine verified last (`HOME/audit.head`).
/// `Ok(None)` when nothing is pinned yet. A head with fewer records than the last verified one
/// means the enclave's data directory was replaced by an older copy (or records were deleted):
/// exit code 5. (A head as long or longer is only fully checked by `walletctl audit verify`.)
pub(crate) async fn check_against_last_verified(
    cl: &mut wallet_client::GatewayClient,
    home: &Path,
) -> Result<Option<String>, Fail> {
    let (Ok(pinned), Ok(last)) = (
        std::fs::read_to_string(home.join("audit.pub")),
        std::fs::read_to_string(home.join("audit.head")),
    ) else {
        return Ok(None);
    };
    let last_count =
        last.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let (head, _) = signed_head(cl, |key| {
        if hex::encode(key) == pinned.trim() {
            Ok(())
        } else {
            Err(Fail(5, format!("the enclave's identity changed (pinned {}, now {}): a different enclave, or its state was replaced. If you started it over yourself with a new data directory, pin the new identity with: walletctl init --reset-identity; otherwise the host is not to be trusted", pinned.trim(), hex::encode(key))))
        }
    })
    .await?;
    if head.count < last_count {
        return Err(Fail(
            5,
            format!(
                "ROLLED BACK: the enclave's signed audit head has {} records, fewer than the {last_count} this machine verified last: its data directory was replaced by an older copy (or records were deleted). Spends, revocations and freezes made since that copy are forgotten by the enclave; see ARCHITECTURE.md (known gaps)",
                head.count
            ),
        ));
    }
    Ok(Some(format!("{} records (signed; {last_count} verified last)", head.count)))
}

/// Pins the enclave's audit key in `HOME/audit.pub` on first use; afterwards checks it.
pub(crate) fn pin_audit_key(home: &Path, key: &[u8]) -> Result<(), Fail> {
    let path = home.join("audit.pub");
    match std::fs::read_to_string(&path) {
        Ok(pinned) if pinned.trim() == hex::encode(key) => Ok(()),
        Ok(pinned) => Err(Fail(5, format!("the enclave's identity (audit key) changed (pinned {} in {}, now {}): a different enclave, or its state was replaced. If you started it over yourself with a new data directory, pin the new identity with: walletctl init --reset-identity; otherwise do not use this host", pinned.trim(), path.display(), hex::encode(key)))),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Fail(1, format!("cannot read {}: {e}", path.display()))),
        Err(_) => {
            std::fs::write(&path, format!("{}\n", hex::encode(key))).map_err(|e| Fail(1, format!("cannot write {}: {e}", path.display())))?;
            println!("pinned the enclave's identity {} in {}", hex::encode(key), path.display());
            Ok(())
        }
    }
}

/// Runs one `walletctl audit` subcommand.
pub(crate) async fn run(url: &str, home: &Path, c: AuditCmd) -> Out {
    if let AuditCmd::Verify { archive: Some(file), .. } = &c {
        return verify_archive(home, file);
    }
    let mut cl = client(url).await?;
    match c {
        AuditCmd::Show { session, wallet, kind, last, output } => {
            // A filter naming nothing printed nothing: say so instead.
            if let Some(w) = &wallet {
                let wallets = cl.list_wallets(gw::ListWalletsRequest {}).await?.wallets;
                if !wallets.iter().any(|x| &x.wallet_id == w) {
                    return Err(Fail(
                        1,
                        format!(
                            "not found: no wallet {w:?} in this enclave (walletctl wallet list)"
                        ),
                    ));
                }
            }
            if let Some(s) = &session {
                let sessions = cl
                    .list_sessions(gw::ListSessionsRequest { wallet_id: String::new() })
                    .await?
                    .sessions;
                if !sessions.iter().any(|x| &x.session_id == s) {
                    return Err(Fail(
                        1,
                        format!(
                            "not found: no session {s:?} in this enclave (walletctl session list)"
                        ),
                    ));
                }
            }
            let records = audit_records(&mut cl).await?;
            let matching: Vec<(&String, Record)> = records
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok().map(|r| (l, r)))
                .filter(|(_, r): &(&String, Record)| {
                    session.as_ref().is_none_or(|s| &r.session == s)
                        && wallet.as_ref().is_none_or(|w| &r.wallet == w)
                        && kind.as_ref().is_none_or(|k| &r.kind == k)
                })
                .collect();
            if matching.is_empty() || last == 0 {
                eprintln!("no audit records match");
                return Ok(());
            }
            for (line, r) in &matching[matching.len().saturating_sub(last)..] {
                if output == Format::Json {
                    crate::output::print_line(line);
                    continue;
                }
                let mut who = String::new();
                if !r.wallet.is_empty() {
                    who.push_str(&format!(" wallet {}", r.wallet));
                }
                if !r.session.is_empty() {
                    who.push_str(&format!(" session {}", r.session));
                }
                println!(
                    "#{:<6} {} {:<8}{who} {} {}",
                    r.seq,
                    at_ms(r.at_ms),
                    r.kind,
                    r.reason,
                    humanize_times(&r.detail)
                );
            }
        }
        AuditCmd::Verify { since_last: true, .. } => {
            let (head, hash) = signed_head(&mut cl, |key| pin_audit_key(home, key)).await?;
            let Some((from, from_hash)) = checkpoints(home).pop() else {
                return Err(Fail(5, "no head verified on this machine yet: run walletctl audit verify (the whole log) first".into()));
            };
            if head.count < from {
                return Err(Fail(5, format!("ROLLED BACK: the enclave's signed head has {} records, fewer than the {from} verified last", head.count)));
            }
            let mut prev = [0u8; 32];
            hex::decode_to_slice(&from_hash, &mut prev).map_err(|_| {
                Fail(5, format!("{}: a malformed head", home.join("audit.heads").display()))
            })?;
            let mut records = Vec::new();
            while (from + records.len() as u64) < head.count {
                let page = cl
                    .list_audit(gw::ListAuditRequest {
                        from_seq: from + records.len() as u64,
                        limit: 1000,
                    })
                    .await
                    .map_err(|e| Fail(5, Fail::from(e).1))?;
                if page.records.is_empty() {
                    break;
                }
                records.extend(page.records);
            }
            records.truncate(usize::try_from(head.count - from).unwrap_or(usize::MAX));
            let (count, last) = verify_chain_from(records.iter().map(String::as_str), from, prev)
                .map_err(|e| {
                Fail(5, format!("audit log broken after the head verified last: {e}"))
            })?;
            if count != head.count || last != hash {
                return Err(Fail(
                    5,
                    format!(
                        "the records after the head verified last ({from}..{count}) do not end at the signed head ({} records)",
                        head.count
                    ),
                ));
            }
            record_checkpoint(home, count, &last)?;
            println!(
                "audit log OK: records {from}..{count} chained from the head verified last to the head {} signed by the enclave",
                hex::encode(last)
            );
        }
        AuditCmd::Verify { .. } => {
            let (head, hash) = signed_head(&mut cl, |key| pin_audit_key(home, key)).await?;
            let mut records = audit_records(&mut cl).await.map_err(|Fail(_, m)| Fail(5, m))?;
            // Payments may have been audited since the head was read: check up to the head.
            let n = usize::try_from(head.count).unwrap_or(usize::MAX);
            if records.len() < n {
                return Err(Fail(
                    5,
                    format!(
                        "the log holds {} records, fewer than the signed head's {}",
                        records.len(),
                        head.count
                    ),
                ));
            }
            records.truncate(n);
            let (count, last) = verify_chain(records.iter().map(String::as_str))
                .map_err(|e| Fail(5, format!("audit log broken: {e}")))?;
            if count != head.count || last != hash {
                return Err(Fail(
                    5,
                    format!(
                        "the records ({count}) do not end at the signed head ({} records)",
                        head.count
                    ),
                ));
            }
            let head_file = home.join("audit.head");
            if let Ok(prev) = std::fs::read_to_string(&head_file) {
                let mut it = prev.split_whitespace();
                let (n, h) = (
                    it.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0),
                    it.next().unwrap_or(""),
                );
                let still_there = n == 0
                    || records
                        .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                        .and_then(|l| serde_json::from_str::<Record>(l).ok())
                        .is_some_and(|r| r.hash == h);
                if !still_there {
                    return Err(Fail(5, format!("the log no longer contains record {} as verified before (hash {h}): records were deleted or rewritten", n.saturating_sub(1))));
                }
            }
            record_checkpoint(home, count, &last)?;
            println!(
                "audit log OK: {count} records, head {} signed by the enclave",
                hex::encode(last)
            );
        }
    }
    Ok(())
}
