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
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
};

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, Default)]
struct Round {
    durable: u64,
    failed: u64,
}

struct Shared {
    written: AtomicU64,
    pending: Mutex<bool>,
    wake: Condvar,
    shutdown: AtomicBool,
}

/// The group-commit coordinator. Dropping it runs a last round and joins the thread.
pub struct GroupCommit {
    shared: Arc<Shared>,
    rounds: watch::Receiver<Round>,
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
        F: FnMut() -> std::io::Result<()> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            pending: Mutex::new(false),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let (tx, rx) = watch::channel(Round::default());
        let thread_shared = Arc::clone(&shared);
        let label = name.to_owned();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let shared = thread_shared;
            loop {
                {
                    let Ok(mut p) = shared.pending.lock() else { return };
                    while !*p {
                        p = match shared.wake.wait(p) {
                            Ok(p) => p,
                            Err(_) => return,
                        };
                    }
                    *p = false;
                }
                let stopping = shared.shutdown.load(Ordering::SeqCst);
                let target = shared.written.load(Ordering::SeqCst);
                let started = std::time::Instant::now();
                let result = flush();
                tx.send_modify(|r| match &result {
                    Ok(()) => {
                        tracing::trace!(store = %label, writes = target.saturating_sub(r.durable), micros = started.elapsed().as_micros(), "durable round");
                        r.durable = r.durable.max(target);
                    }
                    Err(e) => {
                        tracing::error!(store = %label, error = %e, "durable sync failed; signatures waiting on it are withheld");
                        r.failed = r.failed.max(target);
                    }
                });
                if stopping {
                    return;
                }
            }
        })?;
        Ok(Self { shared, rounds: rx, thread: Some(thread) })
    }

    /// Records that one more write has been applied; returns its ticket.
    pub fn wrote(&self) -> u64 {
        self.shared.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until every write recorded before this call is durable.
    ///
    /// # Errors
    /// A sentence when the round covering this call failed or the thread is gone.
    pub async fn durable(&self) -> Result<(), String> {
        let target = self.shared.written.load(Ordering::SeqCst);
        let mut rx = self.rounds.clone();
        if rx.borrow().durable >= target {
            return Ok(());
        }
        {
            let mut p =
                self.shared.pending.lock().map_err(|_| "sync thread poisoned".to_owned())?;
            *p = true;
            self.shared.wake.notify_one();
        }
        let r = rx
            .wait_for(|r| r.durable >= target || r.failed >= target)
            .await
            .map_err(|_| "sync thread stopped".to_owned())?;
        if r.durable >= target {
            Ok(())
        } else {
            Err("flush or fsync failed".to_owned())
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        if let Ok(mut p) = self.shared.pending.lock() {
            *p = true;
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
            GroupCommit::spawn("fail", || Err(std::io::Error::other("disk gone"))).unwrap();
        failing.wrote();
        assert!(failing.durable().await.is_err(), "a failed fsync is never reported durable");
    }
}
