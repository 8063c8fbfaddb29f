//! argon2 verifies on a bounded pool: at most `workers` run at once on blocking threads,
//! at most `queue` wait; past that a call is refused with RESOURCE_EXHAUSTED instead of
//! piling up memory (each verify holds m KiB) and latency.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::{
    error::Error,
    telemetry::metrics::{
        ARGON2_QUEUE_DEPTH, ARGON2_QUEUE_WAIT_SECONDS, ARGON2_REJECTED_TOTAL,
        ARGON2_VERIFY_DURATION_SECONDS, LIMITED_TOTAL,
    },
};

/// Pool sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyPoolOptions {
    /// Verifies running at once.
    pub workers: usize,
    /// Verifies waiting for a worker before new ones are refused.
    pub queue: usize,
}

impl VerifyPoolOptions {
    /// One worker per core, bounded by memory (`memory_kib` per verify, at most a quarter of
    /// `total_memory_kib`), and a queue of 64 per worker.
    pub fn from_machine(cores: usize, total_memory_kib: u64, memory_kib: u32) -> Self {
        let by_memory = (total_memory_kib / 4 / u64::from(memory_kib.max(1))).max(1);
        let workers = cores
            .max(1)
            .min(usize::try_from(by_memory).unwrap_or(usize::MAX));
        Self {
            workers,
            queue: workers * 64,
        }
    }
}

/// The bounded verify pool. Cheap to clone.
#[derive(Clone, Debug)]
pub struct VerifyPool {
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    queue: usize,
    runs: Arc<AtomicU64>,
    limit: Option<&'static str>,
    /// The `pool` label of its metrics: `verify` (the gate's) or `create`.
    name: &'static str,
}

impl VerifyPool {
    /// A pool of this size.
    pub fn new(options: VerifyPoolOptions) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(options.workers.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue: options.queue,
            runs: Arc::new(AtomicU64::new(0)),
            limit: None,
            name: "verify",
        }
    }

    /// The pool's `pool` metric label (`verify` by default), so that the create pool's queue
    /// and refusals are told apart from the gate's.
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Also counts each refusal as `casola_auth_limited_total{limit}` (the create pool's
    /// full queue is a fairness limit, told apart from the verify pool's).
    pub fn refusals_counted_as(mut self, limit: &'static str) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Calls waiting for a worker now.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Jobs run since start (hashes and verifies).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs `work` on a blocking thread once a worker is free. Observed: queue depth, wait
    /// and compute time, refusals; a child span when called inside a traced request.
    pub async fn run<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!("argon2", queue_wait_ms = tracing::field::Empty)
        };
        self.run_observed(work).instrument(span).await
    }

    async fn run_observed<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let queued_at = Instant::now();
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    metrics::counter!(ARGON2_REJECTED_TOTAL, "pool" => self.name).increment(1);
                    if let Some(limit) = self.limit {
                        metrics::counter!(LIMITED_TOTAL, "limit" => limit).increment(1);
                    }
                    return Err(Error::ResourceExhausted(
                        "too many token verifications queued",
                    ));
                }
                // Leaves the queue however the wait ends, also when the caller gives up.
                let _waiting = Waiting::enter(&self.waiting, self.name);
                let permit = self.permits.clone().acquire_owned().await;
                permit.map_err(|_| Error::Internal)?
            }
        };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let waited = queued_at.elapsed();
        metrics::histogram!(ARGON2_QUEUE_WAIT_SECONDS, "pool" => self.name)
            .record(waited.as_secs_f64());
        tracing::Span::current().record("queue_wait_ms", waited.as_secs_f64() * 1000.0);
        let pool = self.name;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            yield_cpu_to_the_warm_path();
            let started = Instant::now();
            let output = work();
            metrics::histogram!(ARGON2_VERIFY_DURATION_SECONDS, "pool" => pool)
                .record(started.elapsed().as_secs_f64());
            output
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "verify task failed");
            Error::Internal
        })
    }
}

/// Niceness of threads that run argon2 (0 is normal, 19 lowest).
const ARGON2_NICE: i32 = 10;

/// Lowers the scheduling priority of the current blocking thread, once per thread: argon2
/// still gets every idle cycle, but the warm path (cache hits on the runtime's workers) is
/// not made to wait behind a flood of cold verifies when the cores are busy. Linux keeps the
/// nice value per thread; lowering one's own priority needs no privilege.
fn yield_cpu_to_the_warm_path() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            // SAFETY: gettid and setpriority on the calling thread only; no memory involved.
            let result = unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, ARGON2_NICE)
            };
            if result != 0 {
                tracing::debug!("could not lower the argon2 thread's priority");
            }
        }
    });
}

/// One call counted in the queue (already added to `waiting`) until dropped.
struct Waiting<'a>(&'a AtomicUsize, &'static str);

impl<'a> Waiting<'a> {
    fn enter(waiting: &'a AtomicUsize, pool: &'static str) -> Self {
        metrics::gauge!(ARGON2_QUEUE_DEPTH, "pool" => pool).increment(1.0);
        Self(waiting, pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(ARGON2_QUEUE_DEPTH, "pool" => self.1).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_follows_cores_and_memory() {
        // 2 cores, 24 GiB, 19 MiB per verify: memory is no limit.
        let o = VerifyPoolOptions::from_machine(2, 24 * 1024 * 1024, 19_456);
        assert_eq!(o.workers, 2);
        assert_eq!(o.queue, 128);
        // 64 cores but 256 MiB: a quarter of memory holds three verifies.
        let o = VerifyPoolOptions::from_machine(64, 256 * 1024, 19_456);
        assert_eq!(o.workers, 3);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_waiting() {
        let pool = VerifyPool::new(VerifyPoolOptions {
            workers: 1,
            queue: 1,
        });
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move || release_rx.recv().ok()).await })
        };
        // Wait until the worker is taken.
        while pool.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| 2).await })
        };
        while pool.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = pool.run(|| 3).await;
        assert!(matches!(refused, Err(Error::ResourceExhausted(_))));
        release_tx.send(()).unwrap();
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(queued.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_queue() {
        let pool = VerifyPool::new(VerifyPoolOptions {
            workers: 1,
            queue: 1,
        });
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move || release_rx.recv().ok()).await })
        };
        while pool.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| 2).await })
        };
        while pool.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        // The request is cancelled while it waits: its place in the queue is freed.
        queued.abort();
        let _ = queued.await;
        assert_eq!(pool.queue_depth(), 0);
        release_tx.send(()).unwrap();
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(pool.run(|| 4).await.unwrap(), 4);
    }
}
