//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; never in a default build,
//! and no simulated platform: a fixed test key and a fixed nonce source of its own). They reach
//! the recovery code of the file-backed stores, which is crate-private, on bytes in memory, with
//! the checks a fuzzer can make besides "no panic": recovery is idempotent (what was recovered,
//! with its torn tail cleared as the store clears it, recovers to the same records).
//!
//! Nothing here is a way into a running enclave: the functions take bytes and a key of their own.

use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::{
    hostfile::StorageFile,
    journal::{clear_tail, recover_frames, scan_frames, Framing, Record, JOURNAL_FRAMING},
    logstore::{LogStore, FRAMING as STATE_LOG_FRAMING},
    platform::{Entropy, Mode, Nsm, NsmError, TrustRoot},
    seal::Sealer,
};

/// The fuzz targets' sealing key (a constant: a test key, never a real one).
pub const TEST_KEY: [u8; 32] = [0x5e; 32];

/// An NSM whose randomness is a constant, so that what a target seals is the same on every run
/// (a crash found once reproduces). Attests nothing.
#[derive(Debug)]
struct FixedNsm;

impl Nsm for FixedNsm {
    fn mode(&self) -> Mode {
        Mode::Simulated
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        buf.fill(0x42);
        Ok(())
    }
    fn attest(
        &self,
        _: Option<&[u8]>,
        _: Option<&[u8]>,
        _: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        Err(NsmError::Unsupported("attestation (fuzzing)"))
    }
    fn trust_root(&self) -> TrustRoot {
        TrustRoot::SimulatedTest
    }
}

/// A sealer with [`TEST_KEY`] and constant nonces.
#[must_use]
pub fn test_sealer() -> Sealer {
    Sealer::new(&Zeroizing::new(TEST_KEY), Entropy::new(Arc::new(FixedNsm)))
}

/// A [`StorageFile`] in memory.
#[derive(Debug, Default)]
pub struct MemFile(Mutex<Vec<u8>>);

impl MemFile {
    /// A file holding `bytes`.
    #[must_use]
    pub fn new(bytes: &[u8]) -> Arc<Self> {
        Arc::new(Self(Mutex::new(bytes.to_vec())))
    }

    /// What the file holds now.
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl StorageFile for MemFile {
    fn label(&self) -> &str {
        "memory"
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.lock().len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let data = self.lock();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    fn read_all(&self) -> std::io::Result<Vec<u8>> {
        Ok(self.bytes())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut data = self.lock();
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = start.checked_add(buf.len()).ok_or_else(|| std::io::Error::other("too far"))?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.lock().resize(usize::try_from(len).map_err(std::io::Error::other)?, 0);
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn sync_all(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Which log a structured input is laid out for.
#[derive(Debug, Clone, Copy)]
pub enum Log {
    /// The spend journal (`spends.journal`).
    Journal,
    /// The state store on host storage (`state.log`).
    StateLog,
}

impl Log {
    fn framing(self) -> Framing {
        match self {
            Self::Journal => JOURNAL_FRAMING,
            Self::StateLog => STATE_LOG_FRAMING,
        }
    }
}

/// Lays out a log file from a fuzzer's input, so that the fuzzer reaches past authentication:
/// a sequence of operations, each a tag byte and its operands —
///
/// * `0, n, bytes[n]`: `n` raw bytes;
/// * `1, i, w, n1, n0, bytes[n]`: a frame sealed for index `i` with watermark `w` and plaintext
///   `bytes[n]` (the length header included; `n` big-endian in two bytes);
/// * `2, n`: `n` zero bytes;
/// * `3, i, w, n, bytes[n]`: as `1`, with the frame cut to half its length;
/// * anything else: the rest of the input as raw bytes.
///
/// `i` and `w` are single bytes, and so is `n` for raw bytes and zeros (times 4).
#[must_use]
pub fn lay_out(log: Log, input: &[u8]) -> Vec<u8> {
    let sealer = test_sealer();
    let aad = log.framing().aad;
    let mut out = Vec::new();
    let mut rest = input;
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        match tag {
            0 => {
                let n = usize::from(byte(&mut rest)) * 4;
                out.extend_from_slice(take(n, &mut rest));
            }
            1 | 3 => {
                let (i, w) = (u64::from(byte(&mut rest)), u64::from(byte(&mut rest)));
                let n = usize::from(u16::from_be_bytes([byte(&mut rest), byte(&mut rest)]));
                let mut plain = w.to_be_bytes().to_vec();
                plain.extend_from_slice(take(n, &mut rest));
                let blob = sealer.seal(&aad(i), &plain);
                let mut frame =
                    u32::try_from(blob.len()).unwrap_or(u32::MAX).to_be_bytes().to_vec();
                frame.extend(blob);
                if tag == 3 {
                    frame.truncate(frame.len() / 2);
                }
                out.extend(frame);
            }
            2 => {
                let n = usize::from(byte(&mut rest)) * 4;
                out.resize(out.len() + n, 0);
            }
            _ => {
                out.extend_from_slice(rest);
                break;
            }
        }
    }
    out
}

/// The first `n` bytes of `rest` (fewer at its end), taken off it.
fn take<'a>(n: usize, rest: &mut &'a [u8]) -> &'a [u8] {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    head
}

/// The first byte of `rest` (0 at its end), taken off it.
fn byte(rest: &mut &[u8]) -> u8 {
    take(1, rest).first().copied().unwrap_or(0)
}

/// What recovering a log found: the records (without watermarks) and where the valid data ends.
pub type Recovered = (Vec<Record>, usize);

/// Recovers the spend journal from `bytes` as `Journal::open` does (the frames, then every
/// record read back as a spend or a withheld signature), and checks that recovery is
/// idempotent: clearing the torn tail and recovering again gives the same records.
///
/// # Errors
/// The refusal, as a sentence (the journal is corrupt, or a record does not parse).
///
/// # Panics
/// When recovery is not idempotent (a bug).
pub fn recover_journal(bytes: &[u8]) -> Result<Recovered, String> {
    let sealer = test_sealer();
    let (records, end) =
        recover_frames(bytes, &sealer, JOURNAL_FRAMING).map_err(|e| e.to_string())?;
    check_idempotent(bytes, &sealer, JOURNAL_FRAMING, &records, end);
    // What the enclave does at start-up: the same frames, read a window at a time, each record
    // read back as a spend or a withheld signature.
    let mut recovery = crate::service::replay::Ledger::default();
    let (count, streamed_end) =
        scan_frames(&bytes, &sealer, JOURNAL_FRAMING, &mut |at, r| recovery.visit(at, r))
            .map_err(|e| e.to_string())?;
    assert_eq!((count, streamed_end), (records.len() as u64, end as u64));
    assert_eq!(recovery.visited, records.len() as u64);
    Ok((records, end))
}

/// Opens the state store on host storage from `bytes` as the platform does (`LogStore::open`:
/// the frames, each batch decoded and applied, the torn tail cleared), checks that reopening
/// what it left gives the same batch count, and returns it.
///
/// # Errors
/// The refusal, as a sentence.
///
/// # Panics
/// When reopening is not idempotent (a bug).
pub fn open_state_log(bytes: &[u8]) -> Result<u64, String> {
    let file = MemFile::new(bytes);
    let store = LogStore::open(file.clone(), test_sealer(), 0).map_err(|e| e.to_string())?;
    let seq = store.seq();
    drop(store);
    let after = file.bytes();
    let again = LogStore::open(MemFile::new(&after), test_sealer(), seq)
        .unwrap_or_else(|e| panic!("a state log that opened does not reopen: {e}"));
    assert_eq!(again.seq(), seq, "reopening a state log changed its batch count");
    let (records, end) = recover_frames(bytes, &test_sealer(), STATE_LOG_FRAMING)
        .unwrap_or_else(|e| panic!("a state log that opened does not recover: {e}"));
    check_idempotent(bytes, &test_sealer(), STATE_LOG_FRAMING, &records, end);
    Ok(seq)
}

/// Clears the tail after `end` (as the stores do) and recovers again: the same records, the
/// same end.
fn check_idempotent(
    bytes: &[u8],
    sealer: &Sealer,
    framing: Framing,
    records: &[Record],
    end: usize,
) {
    assert!(end <= bytes.len(), "recovery ended past the data");
    let file = MemFile::new(bytes);
    clear_tail(file.as_ref(), bytes, end).expect("memory writes do not fail");
    let cleared = file.bytes();
    let (again, end_again) = recover_frames(&cleared, sealer, framing)
        .unwrap_or_else(|e| panic!("recovered data does not recover again: {e}"));
    assert_eq!(end_again, end, "recovery is not idempotent (end)");
    assert!(again.iter().map(|r| r.as_slice()).eq(records.iter().map(|r| r.as_slice())));
}
