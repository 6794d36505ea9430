//! The KYT denylist: add, remove, list, and the chunked, atomic bulk import.

use std::collections::HashSet;

use alloy_primitives::Address;
use wallet_proto::{enclave::v1::ErrorCode, gateway::v1 as gw, Reason};
use zeroize::Zeroizing;

use super::{auth::AdminAuthorized, parse_kyt_address, parse_list, Enclave, Failure, Result};
use crate::store::{Op, Table};

/// Most entries a KYT list may hold.
pub const MAX_KYT_ENTRIES: usize = 2_000_000;
/// Most KYT entries one `ListKyt` page returns (keeps the answer under one frame).
const MAX_KYT_PAGE: u64 = 10_000;

impl Enclave {
    pub(super) async fn change_kyt(
        &self,
        _: &AdminAuthorized,
        r: gw::KytRequest,
        add: bool,
    ) -> Result<gw::KytResponse> {
        if r.addresses.is_empty() {
            return Err(Failure::bad_argument("no addresses given"));
        }
        let addrs: HashSet<Address> =
            parse_list(&r.addresses, "address", parse_kyt_address)?.into_iter().collect();
        let changes: Vec<Address> = {
            let inner = self.lock();
            addrs.into_iter().filter(|a| inner.kyt.contains(a) != add).collect()
        };
        let ops = changes
            .iter()
            .map(|a| {
                if add {
                    Op::Put(Table::Kyt, a.to_vec(), Zeroizing::default())
                } else {
                    Op::Delete(Table::Kyt, a.to_vec())
                }
            })
            .collect::<Vec<_>>();
        if !ops.is_empty() {
            self.persist(ops).await?;
        }
        let mut inner = self.lock();
        for a in &changes {
            if add {
                inner.kyt.insert(*a);
            } else {
                inner.kyt.remove(a);
            }
        }
        tracing::info!(
            added = add,
            changed = changes.len(),
            total = inner.kyt.len(),
            "kyt list changed"
        );
        Ok(gw::KytResponse { changed: changes.len() as u64, total: inner.kyt.len() as u64 })
    }

    pub(super) fn list_kyt(&self, r: &gw::ListKytRequest) -> gw::ListKytResponse {
        let limit = if r.limit == 0 { MAX_KYT_PAGE } else { r.limit.min(MAX_KYT_PAGE) };
        let inner = self.lock();
        let mut all: Vec<&Address> = inner.kyt.iter().collect();
        all.sort_unstable();
        let addresses = all
            .into_iter()
            .skip(usize::try_from(r.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|a| a.to_checksum(None))
            .collect();
        gw::ListKytResponse { addresses, total: inner.kyt.len() as u64 }
    }

    /// Bulk KYT load: chunks accumulate under an import id (one import at a time; a new id
    /// discards an unfinished one); the committing chunk applies them in one atomic, durable
    /// batch, then swaps the in-memory list, so a payment sees the old list or the new one.
    pub(super) async fn import_kyt(
        &self,
        _: &AdminAuthorized,
        r: gw::ImportKytRequest,
    ) -> Result<gw::ImportKytResponse> {
        if r.import_id.is_empty() || r.import_id.len() > 64 {
            return Err(Failure::bad_argument("import_id must be 1-64 bytes"));
        }
        if !r.addresses.len().is_multiple_of(20) {
            return Err(Failure::bad_argument("addresses must be a multiple of 20 bytes"));
        }
        let staged = {
            let mut staging =
                self.kyt_staging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if staging.as_ref().is_none_or(|(id, _)| *id != r.import_id) {
                if let Some((old, _)) = staging.as_ref() {
                    tracing::warn!(import = %old, "unfinished KYT import discarded");
                }
                *staging = Some((r.import_id.clone(), HashSet::new()));
            }
            let (_, set) = staging.as_mut().ok_or_else(|| Failure::internal("staging vanished"))?;
            for chunk in r.addresses.chunks_exact(20) {
                let a = Address::from_slice(chunk);
                if a == Address::ZERO {
                    return Err(Failure::bad_argument("the zero address cannot be listed"));
                }
                set.insert(a);
            }
            if set.len() > MAX_KYT_ENTRIES {
                *staging = None;
                return Err(Failure::invalid(
                    Reason::KytTooLarge,
                    format!("a KYT list may hold at most {MAX_KYT_ENTRIES} addresses"),
                ));
            }
            if !r.commit {
                return Ok(gw::ImportKytResponse {
                    staged: set.len() as u64,
                    ..Default::default()
                });
            }
            let (_, set) = staging.take().ok_or_else(|| Failure::internal("staging vanished"))?;
            set
        };
        if r.expected_total != staged.len() as u64 {
            return Err(Failure::new(
                ErrorCode::Aborted,
                Reason::KytImportIncomplete,
                format!(
                    "the enclave received {} distinct addresses but the client sent {}; nothing was changed",
                    staged.len(),
                    r.expected_total
                ),
            ));
        }
        let (added, removed): (Vec<Address>, Vec<Address>) = {
            let inner = self.lock();
            let added = staged.iter().filter(|a| !inner.kyt.contains(*a)).copied().collect();
            let removed = if r.replace {
                inner.kyt.iter().filter(|a| !staged.contains(*a)).copied().collect()
            } else {
                Vec::new()
            };
            (added, removed)
        };
        let ops: Vec<Op> = added
            .iter()
            .map(|a| Op::Put(Table::Kyt, a.to_vec(), Zeroizing::default()))
            .chain(removed.iter().map(|a| Op::Delete(Table::Kyt, a.to_vec())))
            .collect();
        if !ops.is_empty() {
            self.persist(ops).await?;
        }
        let total = {
            let mut inner = self.lock();
            if r.replace {
                inner.kyt = staged;
            } else {
                inner.kyt.extend(added.iter().copied());
            }
            inner.kyt.len() as u64
        };
        tracing::info!(added = added.len(), removed = removed.len(), total, "kyt list imported");
        Ok(gw::ImportKytResponse {
            staged: r.expected_total,
            committed: true,
            added: added.len() as u64,
            removed: removed.len() as u64,
            total,
        })
    }
}
