//! argon2 verifies on a bounded pool: at most `workers` run at once on the pool's own
//! threads, at most `queue` wait; past that a call is refused with RESOURCE_EXHAUSTED
//! instead of piling up memory (each verify holds m KiB) and latency. A call with a deadline
//! ([`crate::deadline`]) is also refused at once when the jobs ahead of it, at the pool's
//! recent pace, would keep its own from finishing before that deadline: it would only
//! wait, then be dropped at its deadline, its place in the queue wasted.
//!
//! A caller with work to do before its job (the cold path's store read) holds a [`Place`]
//! through it: the places held count as taken, so that no more reads start than the queue
//! can take verifies from, and a refusal comes before the read rather than after it.
//!
//! The pool's threads run in the idle scheduling class (`SCHED_IDLE`): argon2 gets every
//! cycle nothing else wants, and any runtime worker that wakes takes the core from it at
//! once, so a flood of cold verifies delays neither the warm path nor a refusal. They are
//! the pool's own, not tokio's blocking threads: a thread cannot raise its priority back
//! without privilege, and tokio's blocking threads also run the store driver's DNS lookups.

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

/// A job for the pool's threads.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The bounded verify pool. Cheap to clone; its threads end when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct VerifyPool {
    /// Jobs for the pool's threads: at most `workers` at once (each holds a permit).
    jobs: crossbeam_channel::Sender<Job>,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    /// Places held for jobs not handed in yet ([`Place`]).
    held: Arc<AtomicUsize>,
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
    /// A pool of this size, its `workers` threads started (`argon2-N`); fails only when the
    /// system refuses a thread.
    pub fn new(options: VerifyPoolOptions) -> std::io::Result<Self> {
        Ok(Self {
            jobs: start_workers(options.workers.max(1))?,
            permits: Arc::new(Semaphore::new(options.workers.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            held: Arc::new(AtomicUsize::new(0)),
            workers: options.workers.max(1),
            queue: options.queue,
            runs: Arc::new(AtomicU64::new(0)),
            pace: Arc::new(Pace::default()),
            place_pace: Arc::new(Pace::default()),
            limit: None,
            name: "verify",
        })
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

    /// Places held now for jobs not handed in yet.
    pub fn places_held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Holds a place for a job handed in later with [`Self::run_in`], after work of its own
    /// (a store read): refused now, as a job handed in now would be, when the jobs waiting
    /// and the places already held fill the queue and the free workers.
    pub fn hold(&self) -> Result<Place, Error> {
        let before = self.held.fetch_add(1, Ordering::AcqRel);
        // Given up on every way out from here, the refusal's too.
        let mut place = Place {
            held: self.held.clone(),
            ahead: 0,
        };
        let ahead = self.waiting.load(Ordering::Relaxed) + before;
        let free = self.permits.available_permits();
        if ahead >= self.queue + free {
            return Err(self.refuse_full());
        }
        // Its place in the queue once handed in, itself counted (0: a worker is free).
        place.ahead = (ahead + 1).saturating_sub(free);
        Ok(place)
    }

    /// About how long the job `place` was held for would take to finish if handed in after
    /// `lead` (the work before it), at the pool's recent pace: the queue drains while the
    /// lead runs, so the later of the two, then the job's own run. `lead` alone before the
    /// pool has a pace.
    pub fn time_to_finish(&self, place: &Place, lead: Duration) -> Duration {
        let Some(job) = self.pace.mean() else {
            return lead;
        };
        lead.max(self.time_for(place.ahead) - job) + job
    }

    /// Runs `work` on one of the pool's threads once a worker is free. Observed: queue
    /// depth, wait and compute time, refusals; a child span when called inside a traced
    /// request.
    pub async fn run<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.run_traced(None, work).await
    }

    /// [`Self::run`] for the job `place` was held for; the place is given up as the job
    /// joins the queue (or takes a free worker).
    pub async fn run_in<T, F>(&self, place: Place, work: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.run_traced(Some(place), work).await
    }

    async fn run_traced<T, F>(&self, place: Option<Place>, work: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!("argon2", queue_wait_ms = tracing::field::Empty)
        };
        self.run_observed(place, work).instrument(span).await
    }

    async fn run_observed<T, F>(&self, held: Option<Place>, work: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let queued_at = Instant::now();
        let deadline = crate::deadline::current().map(tokio::time::Instant::into_std);
        let (permit, place) = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                drop(held);
                if finishes_after(queued_at + self.time_for(0), deadline) && !self.pace.probe() {
                    return Err(self.refuse_late());
                }
                (permit, 0)
            }
            Err(_) => {
                let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
                // In the queue now: the place held for it is no longer needed.
                drop(held);
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
        let (done, output) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let started = Instant::now();
            let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            metrics::histogram!(ARGON2_VERIFY_DURATION_SECONDS, "pool" => pool)
                .record(started.elapsed().as_secs_f64());
            // The worker is given back by the caller, on a runtime thread: this thread wakes
            // one task, not two, and leaves the semaphore's lock (which runtime threads wait
            // on) to them. A caller that gave up (its deadline) has the permit dropped here.
            let _ = done.send((output, permit));
        });
        // The threads end only with the last sender: while this pool lives they are there.
        self.jobs.send(job).map_err(|_| Error::Internal)?;
        let output = match output.await {
            Ok((Ok(output), _permit)) => Ok(output),
            Ok((Err(_), _permit)) => {
                tracing::error!(pool, "argon2 job panicked");
                Err(Error::Internal)
            }
            Err(_) => {
                tracing::error!(pool, "argon2 job dropped without a result");
                Err(Error::Internal)
            }
        };
        self.pace.note(handed.elapsed());
        output
    }
}

impl VerifyPool {
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

/// Starts `workers` threads that run the jobs sent on the returned channel, each in the
/// idle scheduling class, until the channel's last sender is dropped.
fn start_workers(workers: usize) -> std::io::Result<crossbeam_channel::Sender<Job>> {
    let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
    for n in 0..workers {
        let queue = queue.clone();
        // On an error the threads started so far end as `jobs` is dropped.
        std::thread::Builder::new()
            .name(format!("argon2-{n}"))
            .spawn(move || {
                yield_cpu_to_everything_else();
                for job in queue {
                    job();
                }
            })?;
    }
    Ok(jobs)
}

/// Nice value of argon2 threads where the idle class is refused (19 is the lowest).
const ARGON2_FALLBACK_NICE: i32 = 19;

/// Moves the calling thread to the idle scheduling class: it runs only when no other thread
/// wants the core, and a waking runtime worker preempts it at once (at nice 10, until
/// 2026-12-03, it kept the core for a slice: refusals and warm answers waited behind
/// verifies; docs/reliability.md, "argon2 in the idle class"). Where the idle class is
/// refused (a seccomp profile), the lowest nice value. Lowering one's own priority needs no
/// privilege; Linux keeps both per thread.
fn yield_cpu_to_everything_else() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    let error = std::io::Error::last_os_error();
    // SAFETY: gettid and setpriority on the calling thread only; no memory involved.
    let niced = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, ARGON2_FALLBACK_NICE)
    };
    if niced == 0 {
        tracing::info!(
            %error,
            nice = ARGON2_FALLBACK_NICE,
            "argon2 thread not in the idle class; at the lowest nice value instead"
        );
    } else {
        tracing::warn!(
            %error,
            "argon2 thread at normal priority: verifies compete with the warm path for the cores"
        );
    }
}

/// A place in a pool's queue held for a job not handed in yet ([`VerifyPool::hold`]); given
/// up when dropped, also when the caller gives up before its job.
#[derive(Debug)]
pub struct Place {
    held: Arc<AtomicUsize>,
    /// Its place in the queue as held, itself counted (0: a worker was free).
    ahead: usize,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
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

    /// The calling thread's scheduling policy and nice value.
    fn scheduling() -> (i32, i32) {
        // SAFETY: reads of the calling thread's own scheduling; no memory involved.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, tid),
            )
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn jobs_run_on_the_pools_own_threads_in_the_idle_class_and_tokios_stay_normal() {
        let pool = VerifyPool::new(VerifyPoolOptions {
            workers: 2,
            queue: 4,
        })
        .unwrap();
        for _ in 0..4 {
            let (policy, name) = pool
                .run(|| {
                    (
                        scheduling().0,
                        std::thread::current().name().map(str::to_owned),
                    )
                })
                .await
                .unwrap();
            assert_eq!(
                policy,
                libc::SCHED_IDLE,
                "argon2 yields the core to anything"
            );
            assert!(
                name.as_deref().is_some_and(|n| n.starts_with("argon2-")),
                "on the pool's own threads, not tokio's: {name:?}"
            );
        }
        // tokio's blocking threads (the store driver's DNS lookups run there) and the
        // runtime's workers are left as they were: a thread cannot raise itself back.
        let blocking = tokio::task::spawn_blocking(scheduling).await.unwrap();
        assert_eq!(blocking, (libc::SCHED_OTHER, 0));
        assert_eq!(scheduling(), (libc::SCHED_OTHER, 0));
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
        })
        .unwrap();
        let (release_tx, busy) = occupy(&pool).await;
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| 2).await })
        };
        while pool.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            pool.hold().is_err(),
            "the queue is full: said before any work"
        );
        assert_eq!(pool.places_held(), 0, "a refused hold keeps no place");
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
        })
        .unwrap();
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
        let place = pool.hold().unwrap();
        assert_eq!(
            pool.time_to_finish(&place, Duration::ZERO),
            Duration::from_millis(200)
        );
        drop(place);
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
    async fn places_held_for_later_jobs_count_as_taken_until_their_jobs_join_the_queue() {
        let pool = VerifyPool::new(VerifyPoolOptions {
            workers: 1,
            queue: 2,
        })
        .unwrap();
        // A free worker and two places in the queue: three holds, and no fourth.
        let first = pool.hold().unwrap();
        let second = pool.hold().unwrap();
        let third = pool.hold().unwrap();
        assert!(matches!(pool.hold(), Err(Error::ResourceExhausted(_))));
        assert_eq!(pool.places_held(), 3);
        // A place given up without its job (a token not found) is free again.
        drop(third);
        let third = pool.hold().unwrap();
        assert_eq!(pool.places_held(), 3);
        // Each job gives up its place as it joins the pool.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run_in(first, move || release_rx.recv().ok()).await })
        };
        while pool.places_held() > 2 {
            tokio::task::yield_now().await;
        }
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run_in(second, || 2).await })
        };
        while pool.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.places_held(), 1);
        // One held, one waiting, the worker busy: the queue is full.
        assert!(pool.hold().is_err());
        // The last held place's job still finds its place in the queue.
        let last = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run_in(third, || 3).await })
        };
        while pool.queue_depth() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.places_held(), 0);
        release_tx.send(()).unwrap();
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(queued.await.unwrap().unwrap(), 2);
        assert_eq!(last.await.unwrap().unwrap(), 3);
        assert_eq!((pool.places_held(), pool.queue_depth()), (0, 0));
    }

    #[tokio::test]
    async fn a_held_place_finishes_after_its_lead_or_the_queue_ahead_whichever_is_later() {
        let pool = VerifyPool::new(VerifyPoolOptions {
            workers: 1,
            queue: 8,
        })
        .unwrap();
        let lead = Duration::from_millis(30);
        let place = pool.hold().unwrap();
        assert_eq!(
            pool.time_to_finish(&place, lead),
            lead,
            "no pace yet: the lead"
        );
        pool.pace.set(Duration::from_millis(50));
        pool.place_pace.set(Duration::from_millis(50));
        // A free worker: the lead, then the job.
        assert_eq!(pool.time_to_finish(&place, lead), Duration::from_millis(80));
        // Two more held: the third waits for the two jobs ahead of it (100 ms) while its lead
        // runs, then runs its own.
        let (_second, third) = (pool.hold().unwrap(), pool.hold().unwrap());
        assert_eq!(
            pool.time_to_finish(&third, lead),
            Duration::from_millis(150)
        );
        assert_eq!(
            pool.time_to_finish(&third, Duration::from_millis(120)),
            Duration::from_millis(170)
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_queue() {
        let pool = VerifyPool::new(VerifyPoolOptions {
            workers: 1,
            queue: 1,
        })
        .unwrap();
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
