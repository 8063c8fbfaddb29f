//! argon2 verifies on a bounded pool: at most `workers` run at once on blocking threads,
//! at most `queue` wait; past that a call is refused with RESOURCE_EXHAUSTED instead of
//! piling up memory (each verify holds m KiB) and latency. A call with a deadline
//! ([`crate::deadline`]) is also refused at once when the jobs ahead of it, at the pool's
//! recent pace, would keep its own from finishing before that deadline: it would only
//! wait, then be dropped at its deadline, its place in the queue wasted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::pace::Pace;
use crate::{
    error::Error,
    telemetry::metrics::{
        ARGON2_QUEUE_DEPTH, ARGON2_QUEUE_WAIT_SECONDS, ARGON2_REJECTED_TOTAL,
        ARGON2_VERIFY_DURATION_SECONDS, LIMITED_TOTAL, limits,
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
    workers: usize,
    queue: usize,
    runs: Arc<AtomicU64>,
    /// How long one job has been taking, from its worker taken to its result back.
    pace: Arc<Pace>,
    /// How long a queued job has been waiting per place it had in the queue: the pace at
    /// which the queue drains, hand-overs between jobs included.
    place_pace: Arc<Pace>,
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
            workers: options.workers.max(1),
            queue: options.queue,
            runs: Arc::new(AtomicU64::new(0)),
            pace: Arc::new(Pace::default()),
            place_pace: Arc::new(Pace::default()),
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
        let deadline = crate::deadline::current().map(tokio::time::Instant::into_std);
        let (permit, place) = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                if finishes_after(queued_at + self.time_for(0), deadline) && !self.pace.probe() {
                    return Err(self.refuse_late());
                }
                (permit, 0)
            }
            Err(_) => {
                let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
                if ahead < self.queue
                    && finishes_after(queued_at + self.time_for(ahead + 1), deadline)
                    && !self.pace.probe()
                {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(self.refuse_late());
                }
                if ahead >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(self.refuse_full());
                }
                // Leaves the queue however the wait ends, also when the caller gives up.
                let _waiting = Waiting::enter(&self.waiting, self.name);
                let permit = self.permits.clone().acquire_owned().await;
                (permit.map_err(|_| Error::Internal)?, ahead + 1)
            }
        };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let waited = queued_at.elapsed();
        if let Ok(place) = u32::try_from(place)
            && place > 0
        {
            self.place_pace.note(waited / place);
        }
        metrics::histogram!(ARGON2_QUEUE_WAIT_SECONDS, "pool" => self.name)
            .record(waited.as_secs_f64());
        tracing::Span::current().record("queue_wait_ms", waited.as_secs_f64() * 1000.0);
        let pool = self.name;
        let handed = Instant::now();
        let output = tokio::task::spawn_blocking(move || {
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
        });
        self.pace.note(handed.elapsed());
        output
    }
}

impl VerifyPool {
    /// About how long a job handed in now would take to finish, at the pool's recent pace:
    /// its wait (its place in the queue, at the pace the queue has been draining), then its
    /// own run. Zero before the pool has a pace.
    pub fn time_to_finish(&self) -> Duration {
        let waiting = self.waiting.load(Ordering::Relaxed);
        let free = self.permits.available_permits() > 0;
        self.time_for(if free && waiting == 0 { 0 } else { waiting + 1 })
    }

    /// The time to finish of a job with `place` jobs before it in the queue, itself
    /// counted (0: a worker is free).
    fn time_for(&self, place: usize) -> Duration {
        let Some(job) = self.pace.mean() else {
            return Duration::ZERO;
        };
        let place = u32::try_from(place).unwrap_or(u32::MAX);
        // Before any job has waited, the queue drains at one job per worker at a time.
        let per_place = self
            .place_pace
            .mean()
            .unwrap_or(job / u32::try_from(self.workers).unwrap_or(u32::MAX));
        job + per_place.saturating_mul(place)
    }

    /// A refusal now if the queue is full (a job handed in would be refused): lets a caller
    /// skip the work it would do before the job (the cold path's store read).
    pub fn full(&self) -> Option<Error> {
        (self.permits.available_permits() == 0
            && self.waiting.load(Ordering::Relaxed) >= self.queue)
            .then(|| self.refuse_full())
    }

    fn refuse_full(&self) -> Error {
        metrics::counter!(ARGON2_REJECTED_TOTAL, "pool" => self.name).increment(1);
        if let Some(limit) = self.limit {
            metrics::counter!(LIMITED_TOTAL, "limit" => limit).increment(1);
        }
        Error::ResourceExhausted("too many token verifications queued")
    }

    fn refuse_late(&self) -> Error {
        metrics::counter!(ARGON2_REJECTED_TOTAL, "pool" => self.name).increment(1);
        metrics::counter!(LIMITED_TOTAL, "limit" => limits::DEADLINE_UNMET).increment(1);
        Error::ResourceExhausted(
            "argon2 hashing would not finish before the call's deadline; retry with backoff",
        )
    }
}

/// Whether work expected to finish at `finish` would end after `deadline` (none: never).
pub(super) fn finishes_after(finish: Instant, deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|deadline| finish > deadline)
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

    /// Takes the pool's only worker with a job that runs until released.
    async fn occupy(
        pool: &VerifyPool,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<Option<()>, Error>>,
    ) {
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move || release_rx.recv().ok()).await })
        };
        while pool.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        (release_tx, busy)
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_waiting() {
        let pool = VerifyPool::new(VerifyPoolOptions {
            workers: 1,
            queue: 1,
        });
        let (release_tx, busy) = occupy(&pool).await;
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| 2).await })
        };
        while pool.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            pool.full().is_some(),
            "the queue is full: said before any work"
        );
        let refused = pool.run(|| 3).await;
        assert!(matches!(refused, Err(Error::ResourceExhausted(_))));
        release_tx.send(()).unwrap();
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(queued.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_job_that_would_end_after_the_calls_deadline_is_refused_at_once() {
        use crate::deadline;

        let mut pool = VerifyPool::new(VerifyPoolOptions {
            workers: 1,
            queue: 8,
        });
        // One probe in the test's whole run.
        pool.pace = Arc::new(Pace::probing_every(Duration::from_secs(3600)));
        let in_ms = |ms| Some(tokio::time::Instant::now() + Duration::from_millis(ms));
        // No pace yet (no job has run): nothing is refused for its deadline.
        assert_eq!(deadline::within(in_ms(1), pool.run(|| 1)).await.unwrap(), 1);
        // At 50 ms a job, a free worker, a call with 30 ms left: the first goes anyway, as
        // the probe that measures the pace again; the next is refused, and 200 ms is not.
        pool.pace.set(Duration::from_millis(50));
        assert_eq!(
            deadline::within(in_ms(30), pool.run(|| 7)).await.unwrap(),
            7
        );
        pool.pace.set(Duration::from_millis(50));
        let refused = deadline::within(in_ms(30), pool.run(|| 2)).await;
        assert!(matches!(refused, Err(Error::ResourceExhausted(m)) if m.contains("deadline")));
        assert_eq!(
            deadline::within(in_ms(200), pool.run(|| 3)).await.unwrap(),
            3
        );
        // The worker busy and two jobs waiting: a new one ends after four jobs (200 ms).
        let (release_tx, busy) = occupy(&pool).await;
        let queued: Vec<_> = (0..2)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move || i).await })
            })
            .collect();
        while pool.queue_depth() < 2 {
            tokio::task::yield_now().await;
        }
        pool.pace.set(Duration::from_millis(50));
        assert_eq!(pool.time_to_finish(), Duration::from_millis(200));
        let refused = deadline::within(in_ms(150), pool.run(|| 4)).await;
        assert!(matches!(refused, Err(Error::ResourceExhausted(_))));
        assert_eq!(
            pool.queue_depth(),
            2,
            "a refused call leaves no place taken"
        );
        // With time for all four it waits its turn; a call with no deadline always does.
        let waits = {
            let pool = pool.clone();
            tokio::spawn(deadline::within(in_ms(10_000), async move {
                pool.run(|| 5).await
            }))
        };
        let no_deadline = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| 6).await })
        };
        while pool.queue_depth() < 4 {
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        assert!(busy.await.unwrap().is_ok());
        for (i, q) in queued.into_iter().enumerate() {
            assert_eq!(q.await.unwrap().unwrap(), i);
        }
        assert_eq!(waits.await.unwrap().unwrap(), 5);
        assert_eq!(no_deadline.await.unwrap().unwrap(), 6);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_queue() {
        let pool = VerifyPool::new(VerifyPoolOptions {
            workers: 1,
            queue: 1,
        });
        let (release_tx, busy) = occupy(&pool).await;
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
