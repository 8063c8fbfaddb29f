//! Limits that keep one source from spending the gate's cold work (store reads, argon2) on
//! tokens that fail, and one caller from spending the create pool (issue 11 item 3,
//! docs/security.md "Brute force").
//!
//! - Failed verifies per source: every failure (malformed, unknown lookup id, wrong secret;
//!   not a repeat of a token already found wrong, which costs nothing) counts against its
//!   source in a keyed GCRA limiter (`governor`):
//!   a burst, then a steady rate. A failure past the rate puts the source in a cool-down:
//!   until it ends, that source's tokens that are not already verified on this replica are
//!   answered at once with a retryable refusal (RESOURCE_EXHAUSTED with a retry hint; 429
//!   through Envoy), with no store read and no argon2. Cache hits are decided before the
//!   limiter is asked: a token verified on this replica keeps working from any source.
//! - The source is Envoy's downstream address for Check, the gRPC peer for TokenService's
//!   caller authentication, and for Authorize the client the calling service names in
//!   `client_ip` (else the calling service itself). IPv6 addresses count per /64, the block
//!   one host usually holds.
//! - A calling service that names its clients relays them: one bad client cools down alone,
//!   not every user behind the service. So that naming new clients is no way around the
//!   limit, the service's own failures (all its clients together) count too, against a
//!   larger allowance (`limits.service_failed_verifies_*`); past it the whole service cools.
//! - Creates per caller token: a second keyed limiter, so one caller's flood is refused
//!   before it reaches the create pool.
//!
//! Memory: the limiters keep a few words per key seen recently; [`FairnessLimits::sweep`]
//! drops keys whose state is back to full (called every few seconds), and the cool-down
//! set is bounded in entries.

use std::{hash::Hash, net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use uuid::Uuid;

use crate::telemetry::metrics::{LIMITED_TOTAL, SOURCE_COOLDOWNS_TOTAL, limits};

/// Sources in a cool-down at once, at most (a bound on memory, far above any real count:
/// past it the oldest are forgotten early).
const MAX_COOLING_SOURCES: u64 = 100_000;

/// Which entry point a request came through; sources of each are counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// Envoy's Check: the source is the end client.
    Check,
    /// Authorize: the source is the calling service.
    Authorize,
    /// TokenService's caller authentication: the source is the calling client.
    TokenService,
}

impl Entry {
    /// The `limit` label of a request refused for its source.
    fn limit(self) -> &'static str {
        match self {
            Self::Check => limits::SOURCE_CHECK,
            Self::Authorize => limits::SOURCE_AUTHORIZE,
            Self::TokenService => limits::SOURCE_TOKEN_SERVICE,
        }
    }

    /// The `entry` label of a cool-down.
    fn label(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::Authorize => "authorize",
            Self::TokenService => "token_service",
        }
    }
}

/// Where a request came from: the client, and the service that relayed it, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    entry: Entry,
    addr: IpAddr,
    relay: Option<IpAddr>,
}

/// What the limiters count and cool down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// A client on an entry point.
    Client(Entry, IpAddr),
    /// A calling service, for all the clients it names together.
    Relay(IpAddr),
}

/// An IPv6 address stands for its /64 (an IPv4-mapped one for its IPv4 address).
fn block(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl Source {
    /// The source `addr` on `entry`.
    pub fn new(entry: Entry, addr: IpAddr) -> Self {
        Self {
            entry,
            addr: block(addr),
            relay: None,
        }
    }

    /// The client `client` on `entry`, named by the calling service at `relay`.
    pub fn relayed(entry: Entry, client: IpAddr, relay: IpAddr) -> Self {
        Self {
            relay: Some(block(relay)),
            ..Self::new(entry, client)
        }
    }

    /// The entry point.
    pub fn entry(&self) -> Entry {
        self.entry
    }

    /// The keys a request from here counts under: its client's, then its relay's.
    fn keys(&self) -> impl Iterator<Item = Key> {
        std::iter::once(Key::Client(self.entry, self.addr)).chain(self.relay.map(Key::Relay))
    }
}

/// Settings of [`FairnessLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairnessOptions {
    /// Failures a source may have at once before the rate applies.
    pub failed_verifies_burst: NonZeroU32,
    /// Failures per second a source may keep up.
    pub failed_verifies_per_second: NonZeroU32,
    /// Failures a calling service may have at once, across all the clients it names.
    pub service_failed_verifies_burst: NonZeroU32,
    /// Failures per second a calling service may keep up, across all its clients.
    pub service_failed_verifies_per_second: NonZeroU32,
    /// How long a source that went past the rate is refused cold work.
    pub cooldown: Duration,
    /// Creates a caller token may make at once before the rate applies.
    pub create_burst: NonZeroU32,
    /// Creates per second a caller token may keep up.
    pub creates_per_second: NonZeroU32,
}

/// A request refused by a limit: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// When a retry can succeed, at the earliest.
    pub retry_after: Duration,
}

/// The per-source failure limiter and the per-caller create limiter. Cheap to clone.
#[derive(Clone)]
pub struct FairnessLimits {
    failures: Arc<DefaultKeyedRateLimiter<Key>>,
    relayed: Arc<DefaultKeyedRateLimiter<Key>>,
    cooling: moka::sync::Cache<Key, ()>,
    cooldown: Duration,
    creates: Arc<DefaultKeyedRateLimiter<Uuid>>,
}

impl std::fmt::Debug for FairnessLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairnessLimits")
            .field("cooldown", &self.cooldown)
            .field("cooling", &self.cooling.entry_count())
            .finish_non_exhaustive()
    }
}

impl FairnessLimits {
    /// Limits with these settings.
    pub fn new(options: FairnessOptions) -> Self {
        let quota = |burst, per_second| Quota::per_second(per_second).allow_burst(burst);
        Self {
            failures: Arc::new(RateLimiter::keyed(quota(
                options.failed_verifies_burst,
                options.failed_verifies_per_second,
            ))),
            relayed: Arc::new(RateLimiter::keyed(quota(
                options.service_failed_verifies_burst,
                options.service_failed_verifies_per_second,
            ))),
            cooling: moka::sync::Cache::builder()
                .max_capacity(MAX_COOLING_SOURCES)
                .time_to_live(options.cooldown.max(Duration::from_millis(1)))
                .build(),
            cooldown: options.cooldown,
            creates: Arc::new(RateLimiter::keyed(quota(
                options.create_burst,
                options.creates_per_second,
            ))),
        }
    }

    /// Whether `source` is in a cool-down: its tokens that are not verified on this
    /// replica get no cold work until it ends.
    pub fn cooling(&self, source: Option<&Source>) -> Option<Limited> {
        source?
            .keys()
            .any(|key| self.cooling.contains_key(&key))
            .then_some(Limited {
                retry_after: self.cooldown,
            })
    }

    /// Counts a request refused because its source is cooling.
    pub fn refused(&self, source: Option<&Source>) {
        if let Some(source) = source {
            metrics::counter!(LIMITED_TOTAL, "limit" => source.entry.limit()).increment(1);
        }
    }

    /// A verify from `source` failed (malformed, unknown, wrong secret). Past the rate, the
    /// source's cool-down starts (or starts again). A client already cooling is not
    /// counted against the service that relays it: its failures then cost nothing (only a
    /// malformed token still reaches here), and one client's flood must not cool the
    /// service's other clients.
    pub fn failed(&self, source: Option<&Source>) {
        let Some(source) = source else {
            return;
        };
        let client_cooling = self
            .cooling
            .contains_key(&Key::Client(source.entry, source.addr));
        for key in source.keys() {
            let limiter = match key {
                Key::Client(..) => &self.failures,
                Key::Relay(_) if client_cooling => continue,
                Key::Relay(_) => &self.relayed,
            };
            if limiter.check_key(&key).is_err() {
                if !self.cooling.contains_key(&key) {
                    let label = match key {
                        Key::Client(entry, _) => entry.label(),
                        Key::Relay(_) => "authorize_service",
                    };
                    metrics::counter!(SOURCE_COOLDOWNS_TOTAL, "entry" => label).increment(1);
                    tracing::info!(entry = label, cooldown = ?self.cooldown, "a source went past the failed-verify rate");
                }
                self.cooling.insert(key, ());
            }
        }
    }

    /// Takes one create of `caller`'s allowance; `Err` says when to retry.
    pub fn take_create(&self, caller: Uuid) -> Result<(), Limited> {
        self.creates.check_key(&caller).map_err(|not_until| {
            metrics::counter!(LIMITED_TOTAL, "limit" => limits::CREATE_CALLER).increment(1);
            Limited {
                retry_after: not_until
                    .wait_time_from(self.creates.clock().now())
                    .max(Duration::from_millis(1)),
            }
        })
    }

    /// Forgets keys whose allowance is full again (memory stays bounded by the keys active
    /// within one refill), and expired cool-downs.
    pub fn sweep(&self) {
        sweep(&self.failures);
        sweep(&self.relayed);
        sweep(&self.creates);
        self.cooling.run_pending_tasks();
    }
}

fn sweep<K: Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
    limiter.retain_recent();
    limiter.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(burst: u32, cooldown: Duration) -> FairnessOptions {
        let n = |v| NonZeroU32::new(v).unwrap();
        FairnessOptions {
            failed_verifies_burst: n(burst),
            // Slow enough that no allowance comes back during a test.
            failed_verifies_per_second: n(1),
            service_failed_verifies_burst: n(burst * 2),
            service_failed_verifies_per_second: n(1),
            cooldown,
            create_burst: n(burst),
            creates_per_second: n(1),
        }
    }

    fn source(entry: Entry, addr: &str) -> Source {
        Source::new(entry, addr.parse().unwrap())
    }

    #[test]
    fn a_source_past_its_failures_cools_down_and_other_sources_do_not() {
        let limits = FairnessLimits::new(options(3, Duration::from_secs(3600)));
        let mallory = source(Entry::Check, "203.0.113.7");
        let alice = source(Entry::Check, "198.51.100.1");
        for _ in 0..3 {
            limits.failed(Some(&mallory));
        }
        assert!(limits.cooling(Some(&mallory)).is_none(), "within the burst");
        limits.failed(Some(&mallory));
        let limited = limits.cooling(Some(&mallory)).expect("cooling");
        assert_eq!(limited.retry_after, Duration::from_secs(3600));
        assert!(limits.cooling(Some(&alice)).is_none());
        // The same address through the other entry point is another source.
        let service = source(Entry::Authorize, "203.0.113.7");
        assert!(limits.cooling(Some(&service)).is_none());
        // No source, no limit.
        limits.failed(None);
        assert!(limits.cooling(None).is_none());
    }

    #[test]
    fn a_cool_down_ends() {
        let limits = FairnessLimits::new(options(1, Duration::from_millis(1)));
        let mallory = source(Entry::Authorize, "192.0.2.1");
        limits.failed(Some(&mallory));
        limits.failed(Some(&mallory));
        std::thread::sleep(Duration::from_millis(20));
        limits.sweep();
        assert!(limits.cooling(Some(&mallory)).is_none());
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a = source(Entry::Check, "2001:db8:1:2:aaaa::1");
        let b = source(Entry::Check, "2001:db8:1:2:bbbb::2");
        let c = source(Entry::Check, "2001:db8:1:3::1");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            source(Entry::Check, "::ffff:192.0.2.1"),
            source(Entry::Check, "192.0.2.1")
        );
    }

    #[test]
    fn a_client_named_by_a_service_cools_alone_until_the_service_is_past_its_own_allowance() {
        // Burst 3 per client, 6 for the service across its clients.
        let limits = FairnessLimits::new(options(3, Duration::from_secs(3600)));
        let service: IpAddr = "10.0.0.5".parse().unwrap();
        let relayed =
            |client: &str| Source::relayed(Entry::Authorize, client.parse().unwrap(), service);
        let (mallory, alice) = (relayed("203.0.113.7"), relayed("198.51.100.1"));
        for _ in 0..4 {
            limits.failed(Some(&mallory));
        }
        assert!(
            limits.cooling(Some(&mallory)).is_some(),
            "past the client's burst"
        );
        assert!(
            limits.cooling(Some(&alice)).is_none(),
            "another client of the same service is not held back"
        );
        // Her further failures while she cools (malformed tokens still reach the count)
        // are not the service's.
        for _ in 0..10 {
            limits.failed(Some(&mallory));
        }
        assert!(limits.cooling(Some(&alice)).is_none(), "still only mallory");
        // Naming new clients is no way around it: the service's own allowance runs out
        // (4 counted so far, 6 in its burst), and then every client of it cools.
        for n in 0..3 {
            limits.failed(Some(&relayed(&format!("192.0.2.{n}"))));
        }
        assert!(limits.cooling(Some(&alice)).is_some(), "the service cools");
        // The service calling without naming a client is another source.
        assert!(
            limits
                .cooling(Some(&source(Entry::Authorize, "10.0.0.5")))
                .is_none()
        );
    }

    #[test]
    fn creates_past_a_callers_burst_are_refused_with_a_retry_hint() {
        let limits = FairnessLimits::new(options(2, Duration::from_secs(1)));
        let (mallory, alice) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(limits.take_create(mallory).is_ok());
        assert!(limits.take_create(mallory).is_ok());
        let refused = limits.take_create(mallory).expect_err("past the burst");
        assert!(refused.retry_after > Duration::ZERO);
        assert!(refused.retry_after <= Duration::from_secs(1));
        assert!(limits.take_create(alice).is_ok(), "per caller");
    }
}
