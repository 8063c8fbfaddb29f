//! How long one piece of cold work has been taking (a store read, an argon2 job): a moving
//! mean that the cold path compares with the time left to a call's deadline
//! ([`crate::deadline`]), so that work which would finish after it is refused at once
//! instead of started.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// A moving mean of durations, weighing the newest 1/8: a slower machine, a loaded store
/// or a change of argon2 cost is followed within a few dozen samples. Lock-free; racing
/// updates may lose a sample, and the mean stays a mean.
///
/// Work refused for its pace is never measured, so a pace made slow by one stall would
/// refuse all such work for ever: one piece of work a [`Pace::PROBE_EVERY`] goes anyway
/// ([`Pace::probe`]) and measures it again.
#[derive(Debug)]
pub struct Pace {
    micros: AtomicU64,
    base: Instant,
    /// When the last probe went, in µs since `base` (0: never).
    probed: AtomicU64,
    probe_every: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            micros: AtomicU64::new(0),
            base: Instant::now(),
            probed: AtomicU64::new(0),
            probe_every: Self::PROBE_EVERY,
        }
    }
}

impl Pace {
    /// The least time between two probes.
    pub const PROBE_EVERY: Duration = Duration::from_millis(100);

    /// Adds one sample.
    pub fn note(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        };
        self.micros.store(new.max(1), Ordering::Relaxed);
    }

    /// The mean so far; none before the first sample.
    pub fn mean(&self) -> Option<Duration> {
        match self.micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Whether work its pace would refuse may go anyway, as the one probe of this
    /// [`Pace::PROBE_EVERY`]: true for one caller at most in each such interval.
    pub fn probe(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.probed.load(Ordering::Relaxed);
        let every = u64::try_from(self.probe_every.as_micros()).unwrap_or(u64::MAX);
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .probed
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// A pace whose probes go `every` (tests: one probe, then none).
    #[cfg(test)]
    pub(crate) fn probing_every(every: Duration) -> Self {
        Self {
            probe_every: every,
            ..Self::default()
        }
    }

    #[cfg(test)]
    pub(crate) fn set(&self, mean: Duration) {
        self.micros.store(
            u64::try_from(mean.as_micros()).unwrap_or(u64::MAX).max(1),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_follows_the_samples() {
        let pace = Pace::default();
        assert_eq!(pace.mean(), None, "no figure before the first sample");
        pace.note(Duration::from_millis(8));
        assert_eq!(
            pace.mean(),
            Some(Duration::from_millis(8)),
            "the first sets it"
        );
        for _ in 0..40 {
            pace.note(Duration::from_millis(2));
        }
        let now = pace.mean().unwrap();
        assert!(
            (Duration::from_millis(2)..Duration::from_micros(2_100)).contains(&now),
            "{now:?} after 40 samples of 2 ms"
        );
    }

    #[test]
    fn one_probe_goes_in_each_interval() {
        let pace = Pace::default();
        assert!(pace.probe(), "the first");
        assert!(!pace.probe(), "no second in the same interval");
        std::thread::sleep(Pace::PROBE_EVERY);
        let won = (0..8).filter(|_| pace.probe()).count();
        assert_eq!(won, 1, "one in the next");
    }
}
