//! The KYT denylist: the in-memory list, its sealed layout, add, remove, list, and the chunked,
//! atomic, idempotent bulk import.
//!
//! **In memory** ([`KytList`]): the addresses sorted in one vector (20 bytes each) and an index of
//! 65,537 offsets by an address's first two bytes. A lookup reads the index and binary-searches
//! the few entries that share those two bytes (random addresses: about 15 at a million entries,
//! 31 at the [`MAX_KYT_ENTRIES`] limit, so at most 5 comparisons): constant time for any list the
//! enclave accepts, in 20 bytes per entry plus 256 KiB.
//!
//! **At rest** (table `kyt/` of the state store, every record sealed): one record per *bucket*,
//! the addresses whose first 12 bits are the bucket's number (4,096 buckets; key: the number, two
//! bytes big-endian; value: [`BUCKET_FORMAT`], then the bucket's addresses, sorted, 20 bytes
//! each; an empty bucket has no record), and the record `import`: the id and result of the last
//! import applied, written in the same atomic batch as its buckets. A change rewrites only the
//! buckets it touches (at a million entries about 5 KB each); an import rewrites at most all of
//! them (20 MB at a million) in one batch. Start-up unseals at most 4,096 records. The record
//! `import` holds the results of the last 16 imports (id and counts).
//!
//! Stores written before this layout hold one record per address (a 20-byte key, an empty
//! value); they are read, and rewritten into buckets in one batch, at the first start-up.
//!
//! **Imports** are uploaded in chunks under an id the client chooses and applied by the chunk
//! that commits. The id doubles as the operation id: a commit whose id is one of the last 16
//! imports applied answers with that import's result without applying anything, so a client whose
//! answer was lost or late asks again (with a freshly signed request) until it has the truth —
//! applied, with its counts, or refused with nothing changed (`KYT_IMPORT_INCOMPLETE`: the staged
//! chunks are gone and the import is not among those applied). Chunks staged again under an id
//! already applied are refused: an id names one import.
//!
//! Memory follows the store from the moment a change's batch is applied, before it is synced and
//! confirmed: if that confirmation fails, the list in force, the stored buckets and the import's
//! result still agree (the next change's diff is against what is stored), and the client, told
//! the outcome is unknown, learns it by asking.

use std::sync::Arc;

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};
use wallet_policy::rules::Denylist;
use wallet_proto::{enclave::v1::ErrorCode, gateway::v1 as gw, Reason};
use zeroize::Zeroizing;

use super::{
    auth::AdminAuthorized,
    parse_kyt_address, parse_list,
    records::{from_json, json},
    Enclave, Failure, Result,
};
use crate::store::{Op, Record, StoreError, Table};

/// Most entries a KYT list may hold.
pub const MAX_KYT_ENTRIES: usize = 2_000_000;
/// Most KYT entries one `ListKyt` page returns (keeps the answer under one frame).
const MAX_KYT_PAGE: u64 = 10_000;
/// Index slots: one per value of an address's first 16 bits, plus the end.
const INDEX_SLOTS: usize = 1 << 16;
/// Stored buckets: one per value of an address's first 12 bits.
const BUCKETS: usize = 1 << 12;
/// Index slots per bucket.
const SLOTS_PER_BUCKET: usize = INDEX_SLOTS / BUCKETS;
/// The first byte of a stored bucket: its format.
const BUCKET_FORMAT: u8 = 1;
/// The key of the record of the recent imports' results.
const LAST_IMPORT_KEY: &[u8] = b"import";
/// Imports whose results are remembered (the newest last), so that a commit asked about again is
/// answered even after other imports were applied.
const RECENT_IMPORTS: usize = 16;
/// Addresses staged for one import, duplicates included: the list's limit with room for chunks
/// sent again after a lost answer (the commit counts each address once).
const MAX_STAGED: usize = MAX_KYT_ENTRIES + MAX_KYT_ENTRIES / 10;
/// The key length of a record of the layout before buckets (one per address).
const LEGACY_KEY_LEN: usize = 20;

fn slot(a: &Address) -> usize {
    usize::from(u16::from_be_bytes([a[0], a[1]]))
}

fn bucket_of(a: &Address) -> usize {
    slot(a) / SLOTS_PER_BUCKET
}

/// A bucket's key: its number, two bytes big-endian (below [`BUCKETS`]).
fn bucket_key(b: usize) -> Vec<u8> {
    u16::try_from(b).expect("bucket numbers are below 4096. qed").to_be_bytes().to_vec()
}

/// The KYT denylist in memory (see the module docs). Cloning is cheap (shared).
#[derive(Clone, Default)]
pub(crate) struct KytList {
    /// Sorted, no duplicates, no zero address, at most [`MAX_KYT_ENTRIES`].
    addrs: Arc<Vec<Address>>,
    /// `index[s]..index[s + 1]`: the entries whose first two bytes are `s` (empty when the
    /// list is).
    index: Arc<Vec<u32>>,
}

impl std::fmt::Debug for KytList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KytList").field("len", &self.addrs.len()).finish()
    }
}

impl Denylist for KytList {
    fn is_denied(&self, a: &Address) -> bool {
        self.contains(a)
    }
}

impl KytList {
    /// A list from addresses already sorted and free of duplicates.
    fn from_sorted(mut addrs: Vec<Address>) -> Self {
        debug_assert!(addrs.windows(2).all(|w| w[0] < w[1]));
        if addrs.is_empty() {
            return Self::default();
        }
        addrs.shrink_to_fit();
        let mut index = vec![0u32; INDEX_SLOTS + 1];
        for a in &addrs {
            index[slot(a) + 1] += 1;
        }
        for s in 1..=INDEX_SLOTS {
            index[s] += index[s - 1];
        }
        Self { addrs: Arc::new(addrs), index: Arc::new(index) }
    }

    /// Entries in the list.
    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether `a` is listed: one index read and a binary search over the entries sharing its
    /// first two bytes.
    pub(crate) fn contains(&self, a: &Address) -> bool {
        if self.addrs.is_empty() {
            return false;
        }
        let s = slot(a);
        self.addrs[self.index[s] as usize..self.index[s + 1] as usize].binary_search(a).is_ok()
    }

    /// The entries of stored bucket `b`.
    fn bucket(&self, b: usize) -> &[Address] {
        if self.addrs.is_empty() {
            return &[];
        }
        let from = self.index[b * SLOTS_PER_BUCKET] as usize;
        let to = self.index[(b + 1) * SLOTS_PER_BUCKET] as usize;
        &self.addrs[from..to]
    }

    /// The writes that turn the stored buckets of `self` into those of `new`.
    fn changes_to(&self, new: &Self) -> Vec<Op> {
        (0..BUCKETS)
            .filter_map(|b| {
                let (before, after) = (self.bucket(b), new.bucket(b));
                if before == after {
                    None
                } else if after.is_empty() {
                    Some(Op::Delete(Table::Kyt, bucket_key(b)))
                } else {
                    Some(Op::Put(Table::Kyt, bucket_key(b), encode_bucket(after)))
                }
            })
            .collect()
    }

    /// Every stored bucket, written whole.
    fn all_buckets(&self) -> Vec<Op> {
        Self::default().changes_to(self)
    }
}

fn encode_bucket(addrs: &[Address]) -> Zeroizing<Vec<u8>> {
    let mut v = Vec::with_capacity(1 + addrs.len() * 20);
    v.push(BUCKET_FORMAT);
    for a in addrs {
        v.extend_from_slice(a.as_slice());
    }
    Zeroizing::new(v)
}

/// Opens a stored bucket: the format byte, then whole addresses, each in bucket `b`, ascending,
/// none zero. A sealed record can only have been written by an enclave, so a failure here is a
/// bug or a store from another version: refused rather than half-read.
/// Appends them to `out`.
fn decode_bucket(
    b: usize,
    bytes: &[u8],
    out: &mut Vec<Address>,
) -> std::result::Result<(), String> {
    let Some((&BUCKET_FORMAT, body)) = bytes.split_first() else {
        return Err("unknown bucket format".into());
    };
    if body.is_empty() || !body.len().is_multiple_of(20) {
        return Err(format!("a bucket of {} bytes is not whole addresses", body.len()));
    }
    let mut last: Option<Address> = None;
    for a in body.chunks_exact(20).map(Address::from_slice) {
        if bucket_of(&a) != b || a == Address::ZERO {
            return Err(format!("bucket {b} holds an address that does not belong to it"));
        }
        if last.is_some_and(|l| l >= a) {
            return Err(format!("bucket {b} is not sorted"));
        }
        last = Some(a);
        out.push(a);
    }
    Ok(())
}

/// The record of the last import applied (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LastImport {
    pub import_id: String,
    /// Distinct addresses the import held.
    pub staged: u64,
    pub added: u64,
    pub removed: u64,
    /// Entries in the list after it.
    pub total: u64,
}

impl LastImport {
    fn response(&self) -> gw::ImportKytResponse {
        gw::ImportKytResponse {
            staged: self.staged,
            committed: true,
            added: self.added,
            removed: self.removed,
            total: self.total,
        }
    }
}

/// The KYT table as read at start-up.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub list: KytList,
    /// The recent imports' results, the newest last.
    pub imports: Vec<LastImport>,
    /// Writes that move a store of the per-address layout to buckets (empty when there is
    /// nothing to move).
    pub migration: Vec<Op>,
}

/// Reads the KYT table's records (in key order, as a store scan gives them).
///
/// # Errors
/// [`StoreError::Engine`] for a record no enclave writes: refusing to start is better than
/// screening with part of the list.
pub(crate) fn load(records: Vec<Record>) -> std::result::Result<Loaded, StoreError> {
    let corrupt = |why: String| StoreError::Engine(format!("corrupt KYT record: {why}"));
    // Sized once (the buckets' entries), so loading holds the records and the list, no more.
    let entries = records.iter().filter(|(k, _)| k.len() == 2).map(|(_, v)| v.len() / 20).sum();
    let mut addrs = Vec::with_capacity(entries);
    let mut legacy = Vec::new();
    let mut imports = Vec::new();
    for (k, v) in records {
        if k == LAST_IMPORT_KEY {
            imports = from_json::<Vec<LastImport>>("KYT imports", &v)?;
        } else if let Ok(b) = <[u8; 2]>::try_from(k.as_slice()) {
            let b = usize::from(u16::from_be_bytes(b));
            if b >= BUCKETS {
                return Err(corrupt(format!("bucket {b} out of range")));
            }
            decode_bucket(b, &v, &mut addrs).map_err(corrupt)?;
        } else if k.len() == LEGACY_KEY_LEN {
            legacy.push(Address::from_slice(&k));
        } else {
            return Err(corrupt(format!("unknown key of {} bytes", k.len())));
        }
    }
    // Buckets come in key order, so `addrs` is sorted unless a store engine reorders keys:
    // checked, not assumed.
    if !addrs.windows(2).all(|w| w[0] < w[1]) {
        addrs.sort_unstable();
        addrs.dedup();
    }
    let mut migration = Vec::new();
    if !legacy.is_empty() {
        migration.extend(legacy.iter().map(|a| Op::Delete(Table::Kyt, a.to_vec())));
        if legacy.contains(&Address::ZERO) {
            // Listing it was allowed once; it is nobody's address and cannot be paid.
            tracing::warn!("the zero address was on the KYT list: dropped in the move to buckets");
            legacy.retain(|a| *a != Address::ZERO);
        }
        legacy.sort_unstable();
        let (merged, _) = merge(&addrs, &legacy);
        addrs = merged;
    }
    let list = KytList::from_sorted(addrs);
    if !migration.is_empty() {
        migration.extend(list.all_buckets());
    }
    Ok(Loaded { list, imports, migration })
}

/// The sorted union of two sorted, duplicate-free lists, and how many of `b` were not in `a`.
fn merge(a: &[Address], b: &[Address]) -> (Vec<Address>, u64) {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j, mut new) = (0, 0, 0u64);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
                new += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    new += (b.len() - j) as u64;
    out.extend_from_slice(&b[j..]);
    (out, new)
}

/// How many entries of sorted `a` are not in sorted `b`.
fn missing_from(a: &[Address], b: &[Address]) -> u64 {
    let (mut j, mut n) = (0, 0u64);
    for x in a {
        while j < b.len() && b[j] < *x {
            j += 1;
        }
        if j == b.len() || b[j] != *x {
            n += 1;
        }
    }
    n
}

impl Enclave {
    /// Applies a KYT change's batch, puts `new` (and `imports`, when given) in force, then waits
    /// for the batch to be durable and confirmed. Memory follows the store from the apply on
    /// (see the module docs), so a failure after it leaves them agreeing.
    async fn write_kyt(
        &self,
        ops: Vec<Op>,
        new: KytList,
        imports: Option<Vec<LastImport>>,
    ) -> std::result::Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.state.apply(ops)?;
        {
            let mut inner = self.lock();
            inner.kyt = new;
            if let Some(imports) = imports {
                inner.kyt_imports = imports;
            }
        }
        self.state.sync().await?;
        self.checkpoint().await
    }

    pub(super) async fn change_kyt(
        &self,
        _: &AdminAuthorized,
        r: gw::KytRequest,
        add: bool,
    ) -> Result<gw::KytResponse> {
        if r.addresses.is_empty() {
            return Err(Failure::bad_argument("no addresses given"));
        }
        let mut given = parse_list(&r.addresses, "address", parse_kyt_address)?;
        if add && given.contains(&Address::ZERO) {
            return Err(Failure::bad_argument("the zero address cannot be listed"));
        }
        given.sort_unstable();
        given.dedup();
        // State changes are serialised by the admin lock: the list cannot change between this
        // read and the swap below.
        let old = self.lock().kyt.clone();
        let (new, changed) = if add {
            let (merged, added) = merge(&old.addrs, &given);
            (merged, added)
        } else {
            let kept: Vec<Address> =
                old.addrs.iter().filter(|a| given.binary_search(a).is_err()).copied().collect();
            let removed = (old.len() - kept.len()) as u64;
            (kept, removed)
        };
        // A removal is always allowed (a list over the limit, from before it, can shrink).
        if add && new.len() > MAX_KYT_ENTRIES {
            return Err(Failure::invalid(
                Reason::KytTooLarge,
                format!("a KYT list may hold at most {MAX_KYT_ENTRIES} addresses"),
            ));
        }
        let new = KytList::from_sorted(new);
        let ops = old.changes_to(&new);
        let total = new.len() as u64;
        self.write_kyt(ops, new, None).await?;
        tracing::info!(added = add, changed, total, "kyt list changed");
        Ok(gw::KytResponse { changed, total })
    }

    pub(super) fn list_kyt(&self, r: &gw::ListKytRequest) -> gw::ListKytResponse {
        let limit = if r.limit == 0 { MAX_KYT_PAGE } else { r.limit.min(MAX_KYT_PAGE) };
        let list = self.lock().kyt.clone();
        let addresses = list
            .addrs
            .iter()
            .skip(usize::try_from(r.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|a| a.to_checksum(None))
            .collect();
        gw::ListKytResponse { addresses, total: list.len() as u64 }
    }

    /// Bulk KYT load: chunks accumulate under an import id (one import at a time; a new id
    /// discards an unfinished one); the committing chunk applies them in one atomic, durable
    /// batch with the import's result, then swaps the in-memory list, so a payment sees the old
    /// list or the new one. A commit of the import last applied answers with its result again
    /// (see the module docs).
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
        let applied = self.lock().kyt_imports.iter().find(|d| d.import_id == r.import_id).cloned();
        if let Some(done) = applied {
            let staging =
                self.kyt_staging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if staging.as_ref().is_some_and(|(id, _)| *id == r.import_id) || !r.commit {
                // New chunks under an id already applied: another import reusing it.
                return Err(Failure::bad_argument(format!(
                    "import {} was already applied; a new import needs a new id",
                    r.import_id
                )));
            }
            tracing::info!(import = %r.import_id, "kyt import already applied: its result again");
            return Ok(done.response());
        }
        let chunk: Vec<Address> = r.addresses.chunks_exact(20).map(Address::from_slice).collect();
        if chunk.contains(&Address::ZERO) {
            return Err(Failure::bad_argument("the zero address cannot be listed"));
        }
        let mut staged = {
            let mut staging =
                self.kyt_staging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if staging.as_ref().is_none_or(|(id, _)| *id != r.import_id) {
                if let Some((old, _)) = staging.as_ref() {
                    tracing::warn!(import = %old, "unfinished KYT import discarded");
                }
                // Room for what the client says it will send (bounded), so the list is not
                // reallocated as it grows.
                let expected = usize::try_from(r.expected_total).unwrap_or(usize::MAX);
                *staging =
                    Some((r.import_id.clone(), Vec::with_capacity(expected.min(MAX_KYT_ENTRIES))));
            }
            let (_, list) =
                staging.as_mut().ok_or_else(|| Failure::internal("staging vanished"))?;
            if list.len() + chunk.len() > MAX_STAGED {
                *staging = None;
                return Err(Failure::invalid(
                    Reason::KytTooLarge,
                    format!("a KYT list may hold at most {MAX_KYT_ENTRIES} addresses"),
                ));
            }
            list.extend_from_slice(&chunk);
            if !r.commit {
                return Ok(gw::ImportKytResponse {
                    staged: list.len() as u64,
                    ..Default::default()
                });
            }
            let (_, list) = staging.take().ok_or_else(|| Failure::internal("staging vanished"))?;
            list
        };
        staged.sort_unstable();
        staged.dedup();
        if r.expected_total != staged.len() as u64 {
            return Err(Failure::new(
                ErrorCode::Aborted,
                Reason::KytImportIncomplete,
                format!(
                    "the enclave received {} distinct addresses under import {} but the client sent {}; nothing was changed",
                    staged.len(),
                    r.import_id,
                    r.expected_total
                ),
            ));
        }
        // State changes are serialised by the admin lock (see `change_kyt`).
        let old = self.lock().kyt.clone();
        let (new, added, removed) = if r.replace {
            let added = missing_from(&staged, &old.addrs);
            let removed = missing_from(&old.addrs, &staged);
            (staged, added, removed)
        } else {
            let (merged, added) = merge(&old.addrs, &staged);
            drop(staged);
            (merged, added, 0)
        };
        if new.len() > MAX_KYT_ENTRIES {
            return Err(Failure::invalid(
                Reason::KytTooLarge,
                format!("a KYT list may hold at most {MAX_KYT_ENTRIES} addresses"),
            ));
        }
        let new = KytList::from_sorted(new);
        let done = LastImport {
            import_id: r.import_id.clone(),
            staged: r.expected_total,
            added,
            removed,
            total: new.len() as u64,
        };
        let mut ops = old.changes_to(&new);
        drop(old);
        let mut imports = self.lock().kyt_imports.clone();
        imports.push(done.clone());
        if imports.len() > RECENT_IMPORTS {
            imports.remove(0);
        }
        ops.push(Op::Put(Table::Kyt, LAST_IMPORT_KEY.to_vec(), json(&imports)));
        self.write_kyt(ops, new, Some(imports)).await?;
        tracing::info!(import = %r.import_id, added, removed, total = done.total, "kyt list imported");
        Ok(done.response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(first: u8, second: u8, last: u8) -> Address {
        let mut b = [0u8; 20];
        b[0] = first;
        b[1] = second;
        b[19] = last;
        Address::from(b)
    }

    fn random(n: usize, seed: u64) -> Vec<Address> {
        // A small xorshift: deterministic, spread over every bucket.
        let mut x = seed | 1;
        let mut v: Vec<Address> = (0..n)
            .map(|_| {
                let mut b = [0u8; 20];
                for chunk in b.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_be_bytes()[..chunk.len()]);
                }
                Address::from(b)
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn lookups_find_exactly_the_listed_addresses() {
        let listed = random(20_000, 7);
        let list = KytList::from_sorted(listed.clone());
        assert_eq!(list.len(), listed.len());
        assert!(listed.iter().all(|a| list.contains(a)));
        let others = random(20_000, 11);
        for a in &others {
            assert_eq!(list.contains(a), listed.binary_search(a).is_ok());
        }
        // Neighbours in the same index slot and at the slot edges.
        let edge = KytList::from_sorted(vec![addr(0, 0, 1), addr(0xff, 0xff, 0xff)]);
        assert!(edge.contains(&addr(0, 0, 1)) && edge.contains(&addr(0xff, 0xff, 0xff)));
        assert!(!edge.contains(&addr(0, 0, 2)) && !edge.contains(&addr(0xff, 0xff, 0xfe)));
        assert!(!KytList::default().contains(&addr(0, 0, 1)));
    }

    fn stored(ops: Vec<Op>) -> Vec<Record> {
        let mut map = std::collections::BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(_, k, v) => {
                    map.insert(k, v);
                }
                Op::Delete(_, k) => {
                    map.remove(&k);
                }
            }
        }
        map.into_iter().collect()
    }

    #[test]
    fn buckets_round_trip_and_changes_touch_only_their_buckets() {
        let listed = random(50_000, 3);
        let list = KytList::from_sorted(listed.clone());
        let back = load(stored(list.all_buckets())).unwrap();
        assert_eq!(*back.list.addrs, listed);
        assert!(back.migration.is_empty() && back.imports.is_empty());
        // One address added: one bucket rewritten.
        let extra = addr(0x12, 0x34, 0x56);
        let (merged, added) = merge(&listed, &[extra]);
        assert_eq!(added, 1);
        let ops = list.changes_to(&KytList::from_sorted(merged));
        assert_eq!(ops.len(), 1);
        assert!(matches!(&ops[0], Op::Put(_, k, _) if *k == bucket_key(bucket_of(&extra))));
        // Emptying a bucket deletes its record.
        let one = KytList::from_sorted(vec![extra]);
        let ops = one.changes_to(&KytList::default());
        assert!(matches!(&ops[..], [Op::Delete(_, k)] if *k == bucket_key(0x123)));
    }

    #[test]
    fn corrupt_or_foreign_records_are_refused() {
        let ok = |k: Vec<u8>, v: Vec<u8>| vec![(k, Zeroizing::new(v))];
        let a = addr(0x12, 0x34, 1);
        let mut good = vec![BUCKET_FORMAT];
        good.extend_from_slice(a.as_slice());
        assert!(load(ok(bucket_key(0x123), good.clone())).is_ok());
        // In the wrong bucket, a cut address, another format, out of range, unsorted, zero.
        assert!(load(ok(bucket_key(0x124), good.clone())).is_err());
        assert!(load(ok(bucket_key(0x123), good[..20].to_vec())).is_err());
        assert!(load(ok(bucket_key(0x123), [&[2u8][..], &good[1..]].concat())).is_err());
        assert!(load(ok(vec![0x10, 0x00], good.clone())).is_err());
        let b = addr(0x12, 0x34, 0);
        let unsorted = [&[BUCKET_FORMAT][..], a.as_slice(), b.as_slice()].concat();
        assert!(load(ok(bucket_key(0x123), unsorted)).is_err());
        let zero = [&[BUCKET_FORMAT][..], Address::ZERO.as_slice()].concat();
        assert!(load(ok(bucket_key(0), zero)).is_err());
        assert!(load(ok(b"other".to_vec(), Vec::new())).is_err());
    }

    #[test]
    fn the_per_address_layout_is_read_and_moved_to_buckets() {
        let old = random(3_000, 5);
        let records = old.iter().map(|a| (a.to_vec(), Zeroizing::new(Vec::new()))).collect();
        let loaded = load(records).unwrap();
        assert_eq!(*loaded.list.addrs, old);
        // The migration deletes every per-address record and writes the buckets.
        let mut all: Vec<Record> =
            old.iter().map(|a| (a.to_vec(), Zeroizing::new(Vec::new()))).collect();
        let mut map: std::collections::BTreeMap<_, _> = all.drain(..).collect();
        for op in loaded.migration {
            match op {
                Op::Put(_, k, v) => {
                    map.insert(k, v);
                }
                Op::Delete(_, k) => {
                    map.remove(&k);
                }
            }
        }
        assert!(map.keys().all(|k| k.len() == 2));
        assert_eq!(*load(map.into_iter().collect()).unwrap().list.addrs, old);
    }

    #[test]
    fn merge_and_difference_count_right() {
        let a = random(1_000, 1);
        let b = random(1_000, 2);
        let (m, new) = merge(&a, &b);
        let mut want: Vec<Address> = a.iter().chain(&b).copied().collect();
        want.sort_unstable();
        want.dedup();
        assert_eq!(m, want);
        assert_eq!(new, missing_from(&b, &a));
        assert_eq!(missing_from(&a, &a), 0);
        assert_eq!(missing_from(&a, &[]), a.len() as u64);
    }
}
