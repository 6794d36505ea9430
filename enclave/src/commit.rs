//! Group commit: many writers, one durability round at a time.
//!
//! Writers call [`GroupCommit::wrote`] after their write reached the OS (or the engine), then
//! await [`GroupCommit::durable`]. One dedicated thread runs rounds: it notes how many writes
//! exist, makes them durable with one `flush` (an fsync or equivalent), and wakes every writer
//! the round covered. Concurrent writers share rounds, so the fsync cost is amortised instead of
//! skipped.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    thread::JoinHandle,
};

use tokio::sync::oneshot;

type Waiter = (u64, oneshot::Sender<Result<(), String>>);

#[derive(Default)]
struct State {
    /// A round has been asked for.
    pending: bool,
    /// Highest ticket known durable.
    durable: u64,
    /// Writers waiting, with the ticket they need.
    waiters: Vec<Waiter>,
    /// Set by the first failed flush, for good: after a failed fsync the kernel may have dropped
    /// the dirty pages and marked them clean, so a later "successful" fsync proves nothing.
    failed: Option<String>,
}

struct Shared {
    written: AtomicU64,
    state: Mutex<State>,
    wake: Condvar,
    shutdown: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a round failed.
#[derive(Debug)]
pub enum RoundError {
    /// The data may not be durable (a failed `fsync`): every later round fails too, until
    /// restart.
    Fatal(std::io::Error),
    /// The data is durable but the round could not be confirmed (the rollback anchor did not
    /// answer): this round's writers get the error, later rounds try again.
    Transient(String),
}

impl From<std::io::Error> for RoundError {
    fn from(e: std::io::Error) -> Self {
        Self::Fatal(e)
    }
}

/// The group-commit coordinator. Dropping it runs a last round and joins the thread.
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("written", &self.shared.written.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the round thread. `flush` makes everything written so far durable.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn<F>(name: &str, mut flush: F) -> std::io::Result<Self>
    where
        F: FnMut() -> Result<(), RoundError> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            state: Mutex::default(),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let label = name.to_owned();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let shared = thread_shared;
            let mut last_writers = 0usize;
            loop {
                {
                    let mut st = shared.state();
                    while !st.pending && !shared.shutdown.load(Ordering::SeqCst) {
                        st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                    }
                    st.pending = false;
                }
                let stopping = shared.shutdown.load(Ordering::SeqCst);
                if last_writers > 1 && !stopping {
                    // Under load, let a few more writers join this round: fewer fsyncs, less CPU.
                    std::thread::sleep(std::time::Duration::from_micros(150));
                }
                // Every write recorded before this load is covered by the flush below.
                let target = shared.written.load(Ordering::SeqCst);
                let started = std::time::Instant::now();
                let mut st = shared.state();
                let result = match st.failed.clone() {
                    Some(e) => Err(format!("flush or fsync failed: {e}")),
                    None => {
                        drop(st);
                        let r = flush();
                        st = shared.state();
                        match r {
                            Ok(()) => Ok(()),
                            Err(RoundError::Fatal(e)) => {
                                st.failed = Some(e.to_string());
                                Err(format!("flush or fsync failed: {e}"))
                            }
                            Err(RoundError::Transient(e)) => Err(e),
                        }
                    }
                };
                let (done, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut st.waiters).into_iter().partition(|(t, _)| *t <= target);
                st.waiters = waiting;
                match &result {
                    Ok(()) => st.durable = st.durable.max(target),
                    Err(e) => tracing::error!(store = %label, error = %e, "durable sync failed; signatures waiting on it are withheld"),
                }
                drop(st);
                last_writers = done.len();
                tracing::trace!(store = %label, writers = done.len(), micros = started.elapsed().as_micros(), "durable round");
                for (_, tx) in done {
                    let _ = tx.send(result.clone());
                }
                if stopping {
                    return;
                }
            }
        })?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// How many writes are known durable.
    pub fn durable_count(&self) -> u64 {
        self.shared.state().durable
    }

    /// Records that one more write has been applied; returns its ticket.
    pub fn wrote(&self) -> u64 {
        self.shared.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until every write recorded before this call is durable. Each waiter is woken once,
    /// by the round that covers it.
    ///
    /// # Errors
    /// A sentence when the round covering this call failed or the thread is gone.
    pub async fn durable(&self) -> Result<(), String> {
        let target = self.shared.written.load(Ordering::SeqCst);
        let rx = {
            let mut st = self.shared.state();
            if let Some(e) = &st.failed {
                return Err(format!("an earlier flush failed ({e}); restart to recover"));
            }
            if st.durable >= target {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push((target, tx));
            st.pending = true;
            self.shared.wake.notify_one();
            rx
        };
        rx.await.map_err(|_| "sync thread stopped".to_owned())?
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let mut st = self.shared.state();
            st.pending = true;
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_writers_share_rounds_and_failures_propagate() {
        let rounds = Arc::new(AtomicU64::new(0));
        let r = Arc::clone(&rounds);
        let gc = Arc::new(
            GroupCommit::spawn("test", move || {
                r.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            })
            .unwrap(),
        );
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let gc = Arc::clone(&gc);
            tasks.push(tokio::spawn(async move {
                gc.wrote();
                gc.durable().await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let n = rounds.load(Ordering::SeqCst);
        assert!((1..64).contains(&n), "64 writers needed {n} rounds: rounds must be shared");

        let failing =
            GroupCommit::spawn("fail", || Err(std::io::Error::other("disk gone").into())).unwrap();
        failing.wrote();
        assert!(failing.durable().await.is_err(), "a failed fsync is never reported durable");
        failing.wrote();
        assert!(failing.durable().await.is_err(), "a failed fsync fails every later round");
    }

    #[tokio::test]
    async fn a_transient_failure_fails_its_round_only() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&calls);
        let gc = GroupCommit::spawn("transient", move || {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(RoundError::Transient("anchor away".into()))
            } else {
                Ok(())
            }
        })
        .unwrap();
        gc.wrote();
        assert_eq!(gc.durable().await, Err("anchor away".to_owned()));
        gc.wrote();
        assert_eq!(gc.durable().await, Ok(()), "the next round confirms");
    }
}
