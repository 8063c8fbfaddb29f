//! Every metric name of the service, as constants both the code that records and
//! docs/observability.md use, their help texts ([`describe`]) and the Prometheus recorder
//! ([`install`]) whose text the admin port serves at `/metrics`.
//!
//! Rules for every metric here: Prometheus naming (`casola_auth_` prefix, `_total` on
//! counters, base units in the name: `_seconds`), and only bounded label values: method
//! names from the served descriptor sets, gRPC code names, fixed reason and operation
//! names. Never a token id, an owner or anything a client chooses freely.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter, labels `rpc` (`package.Service/Method`, or `unknown`) and `code` (gRPC status
/// name): finished gRPC calls.
pub const REQUESTS_TOTAL: &str = "casola_auth_requests_total";
/// Histogram, label `rpc`: seconds from the request's headers to the end of the response.
pub const REQUEST_DURATION_SECONDS: &str = "casola_auth_request_duration_seconds";
/// Counter, labels `rpc` (`authorize`, `check`, `caller_auth`, `who_am_i`), `decision`
/// (`allow`, `deny`, `error`) and `reason` (`none` for allow, else a [`reasons`] value).
pub const DECISIONS_TOTAL: &str = "casola_auth_decisions_total";

/// Counter: verified-token cache lookups that found an entry.
pub const CACHE_HITS_TOTAL: &str = "casola_auth_cache_hits_total";
/// Counter: verified-token cache lookups that found nothing.
pub const CACHE_MISSES_TOTAL: &str = "casola_auth_cache_misses_total";
/// Counter: entries evicted from the verified-token cache (capacity, expiry, revocation).
pub const CACHE_EVICTIONS_TOTAL: &str = "casola_auth_cache_evictions_total";
/// Gauge: entries in the verified-token cache now.
pub const CACHE_ENTRIES: &str = "casola_auth_cache_entries";
/// Counter: lookups answered by the negative cache (a token recently found wrong or unknown).
pub const NEGATIVE_CACHE_HITS_TOTAL: &str = "casola_auth_negative_cache_hits_total";

/// Counter, label `outcome` (`match`, `mismatch`, `error`): argon2 verifies of a secret.
pub const ARGON2_VERIFIES_TOTAL: &str = "casola_auth_argon2_verifies_total";
/// Histogram: seconds one argon2 job (a verify, or the hash of a new token) computes.
pub const ARGON2_VERIFY_DURATION_SECONDS: &str = "casola_auth_argon2_verify_duration_seconds";
/// Gauge: argon2 jobs waiting for a worker now.
pub const ARGON2_QUEUE_DEPTH: &str = "casola_auth_argon2_queue_depth";
/// Histogram: seconds an argon2 job waited for a worker (0 when one was free).
pub const ARGON2_QUEUE_WAIT_SECONDS: &str = "casola_auth_argon2_queue_wait_seconds";
/// Counter: argon2 jobs refused because the queue was full (RESOURCE_EXHAUSTED).
pub const ARGON2_REJECTED_TOTAL: &str = "casola_auth_argon2_rejected_total";

/// Histogram, label `op` (the `TokenStore` method): seconds per store call.
pub const STORE_CALL_DURATION_SECONDS: &str = "casola_auth_store_call_duration_seconds";
/// Counter, labels `op` and `kind` (`unavailable`, `conflict`, `internal`): failed store calls.
pub const STORE_ERRORS_TOTAL: &str = "casola_auth_store_errors_total";
/// Gauge, label `state` (`in_use`, `idle`): Postgres pool connections, sampled at scrape.
pub const STORE_POOL_CONNECTIONS: &str = "casola_auth_store_pool_connections";

/// Counter: revocation notices received from the store (Postgres NOTIFY).
pub const REVOCATION_NOTICES_TOTAL: &str = "casola_auth_revocation_notices_total";
/// Gauge: 1 while the revocation listener is connected and listening, else 0.
pub const REVOCATION_LISTENER_UP: &str = "casola_auth_revocation_listener_up";
/// Gauge: position of the newest change-log entry this replica has applied.
pub const CHANGE_LOG_POSITION: &str = "casola_auth_change_log_position";
/// Gauge: Unix time (seconds) of the last successful change-log poll; `time() - this` is
/// the poll lag.
pub const CHANGE_LOG_LAST_POLL_TIMESTAMP_SECONDS: &str =
    "casola_auth_change_log_last_poll_timestamp_seconds";
/// Counter: change-log entries applied to the cache.
pub const CHANGE_LOG_APPLIED_TOTAL: &str = "casola_auth_change_log_applied_total";
/// Counter: failed change-log polls.
pub const CHANGE_LOG_POLL_ERRORS_TOTAL: &str = "casola_auth_change_log_poll_errors_total";
/// Counter: cached tokens re-read from the store after a change (no argon2).
pub const CACHE_REFRESHES_TOTAL: &str = "casola_auth_cache_refreshes_total";
/// Counter: verifies refused with RESOURCE_EXHAUSTED because a lookup id spent its budget
/// of wrong secrets.
pub const VERIFY_BUDGET_EXHAUSTED_TOTAL: &str = "casola_auth_verify_budget_exhausted_total";
/// Counter, label `limit` (see [`limits`]): requests and connections refused by a fairness
/// limit (per-source failed verifies, cold store reads, per-caller creates, connections).
pub const LIMITED_TOTAL: &str = "casola_auth_limited_total";
/// Counter, label `entry` (`check`, `authorize`, `token_service`): sources that went past
/// the failed-verify rate and started a cool-down.
pub const SOURCE_COOLDOWNS_TOTAL: &str = "casola_auth_source_cooldowns_total";
/// Gauge: accepted gRPC connections open now (handshaking or serving).
pub const CONNECTIONS_OPEN: &str = "casola_auth_connections_open";
/// Gauge: how long a task waits in the runtime's queue now (the admission canary's figure);
/// it stands in for the trips of a call's answer still ahead (and for the ones behind it
/// where those were not measured).
pub const RUNTIME_QUEUE_DELAY_SECONDS: &str = "casola_auth_runtime_queue_delay_seconds";
/// Histogram, label `seen` (see [`call_wait`]): how long a call (health checks aside) had
/// waited in this process when admission saw it, the figure its deadline starts from.
pub const CALL_WAIT_SECONDS: &str = "casola_auth_call_wait_seconds";
/// Counter: reconnects of the revocation listener.
pub const REVOCATION_LISTENER_RECONNECTS_TOTAL: &str =
    "casola_auth_revocation_listener_reconnects_total";

/// Counter: last-used flushes that wrote a batch.
pub const LAST_USED_FLUSHES_TOTAL: &str = "casola_auth_last_used_flushes_total";
/// Histogram: tokens per last-used flush.
pub const LAST_USED_FLUSH_SIZE: &str = "casola_auth_last_used_flush_size";
/// Counter: last-used flushes that failed (the batch is kept and retried).
pub const LAST_USED_FLUSH_ERRORS_TOTAL: &str = "casola_auth_last_used_flush_errors_total";

/// Every metric name, for docs and tests.
pub const ALL: &[&str] = &[
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    DECISIONS_TOTAL,
    CACHE_HITS_TOTAL,
    CACHE_MISSES_TOTAL,
    CACHE_EVICTIONS_TOTAL,
    CACHE_ENTRIES,
    NEGATIVE_CACHE_HITS_TOTAL,
    CACHE_REFRESHES_TOTAL,
    VERIFY_BUDGET_EXHAUSTED_TOTAL,
    LIMITED_TOTAL,
    SOURCE_COOLDOWNS_TOTAL,
    CONNECTIONS_OPEN,
    RUNTIME_QUEUE_DELAY_SECONDS,
    CALL_WAIT_SECONDS,
    ARGON2_VERIFIES_TOTAL,
    ARGON2_VERIFY_DURATION_SECONDS,
    ARGON2_QUEUE_DEPTH,
    ARGON2_QUEUE_WAIT_SECONDS,
    ARGON2_REJECTED_TOTAL,
    STORE_CALL_DURATION_SECONDS,
    STORE_ERRORS_TOTAL,
    STORE_POOL_CONNECTIONS,
    REVOCATION_NOTICES_TOTAL,
    REVOCATION_LISTENER_UP,
    REVOCATION_LISTENER_RECONNECTS_TOTAL,
    CHANGE_LOG_POSITION,
    CHANGE_LOG_LAST_POLL_TIMESTAMP_SECONDS,
    CHANGE_LOG_APPLIED_TOTAL,
    CHANGE_LOG_POLL_ERRORS_TOTAL,
    LAST_USED_FLUSHES_TOTAL,
    LAST_USED_FLUSH_SIZE,
    LAST_USED_FLUSH_ERRORS_TOTAL,
];

/// The values of the `reason` label of [`DECISIONS_TOTAL`] besides the domain's stable
/// denial names (`malformed`, `unknown`, `revoked`, `expired`, `insufficient_scope`,
/// `network`, `model` and the `body_*` names of an unreadable model).
pub mod reasons {
    /// An allow.
    pub const NONE: &str = "none";
    /// No credential in the request.
    pub const MISSING_CREDENTIAL: &str = "missing_credential";
    /// Check: a valid token on a route no rule covers.
    pub const UNMATCHED_ROUTE: &str = "unmatched_route";
    /// Check: the route's scope extension is invalid.
    pub const MISCONFIGURED_ROUTE: &str = "misconfigured_route";
    /// The store could not be reached.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The argon2 queue was full.
    pub const OVERLOADED: &str = "overloaded";
    /// A fairness limit refused the request (its source is in a failed-verify cool-down).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Anything else that kept the service from deciding.
    pub const INTERNAL: &str = "internal";
}

/// The values of the `seen` label of [`CALL_WAIT_SECONDS`].
pub mod call_wait {
    /// From the moment its request's bytes arrived (the connection's read was measured).
    pub const READ: &str = "read";
    /// From the moment its request was decoded, plus the canary's wait for the read.
    pub const DECODED: &str = "decoded";
    /// Two of the canary's waits: the call was not seen before admission.
    pub const ESTIMATED: &str = "estimated";
}

/// The values of the `limit` label of [`LIMITED_TOTAL`].
pub mod limits {
    /// Check: the end client's address is in a failed-verify cool-down.
    pub const SOURCE_CHECK: &str = "source_check";
    /// Authorize: the calling service's address is in a failed-verify cool-down.
    pub const SOURCE_AUTHORIZE: &str = "source_authorize";
    /// TokenService: the calling client's address is in a failed-verify cool-down.
    pub const SOURCE_TOKEN_SERVICE: &str = "source_token_service";
    /// Too many cold store reads (lookups of tokens not cached) in flight.
    pub const COLD_READS: &str = "cold_reads";
    /// CreateToken: the calling token went past its create rate.
    pub const CREATE_CALLER: &str = "create_caller";
    /// CreateToken: the create pool's queue was full.
    pub const CREATE_QUEUE: &str = "create_queue";
    /// A connection accepted past `limits.max_connections`, closed at once.
    pub const CONNECTIONS: &str = "connections";
    /// A connection still handshaking, closed at the cap to make room for a new one.
    pub const HANDSHAKE_EVICTED: &str = "handshake_evicted";
    /// A connection that sent no HTTP/2 preface within the handshake timeout, closed.
    pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";
    /// An admin or console connection idle past `limits.side_idle_timeout_ms`, closed.
    pub const SIDE_IDLE: &str = "side_idle";
    /// An admin or console connection, the quietest, closed at the cap to make room for a
    /// new one.
    pub const SIDE_EVICTED: &str = "side_evicted";
    /// A call past `limits.max_in_flight`, shed at once.
    pub const IN_FLIGHT: &str = "in_flight";
    /// A call whose waits in the runtime's queue (its own so far, and the canary's for
    /// the trips of its answer) would outlast its deadline, shed.
    pub const QUEUE_DELAY: &str = "queue_delay";
    /// Cold work (a store read, an argon2 job) refused at once: at its recent pace it would
    /// not finish before the call's deadline.
    pub const DEADLINE_UNMET: &str = "deadline_unmet";
}

/// Buckets for latencies, in seconds: 0.5 ms (a cache hit) to 10 s (a stuck store).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for last-used flush sizes, in tokens.
const FLUSH_SIZE_BUCKETS: [f64; 7] = [1.0, 10.0, 100.0, 1_000.0, 10_000.0, 50_000.0, 100_000.0];

/// Registers the help text and unit of every metric with the installed recorder.
// Long on purpose: one statement per metric, in the order of the names above, so that a
// new metric's description is one obvious addition.
pub fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Finished gRPC calls by method and status."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "gRPC call latency by method, from request headers to the end of the response."
    );
    describe_counter!(
        DECISIONS_TOTAL,
        Unit::Count,
        "Authorization decisions by entry point, decision (allow, deny, error) and reason."
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        Unit::Count,
        "Verified-token cache lookups that found an entry."
    );
    describe_counter!(
        CACHE_MISSES_TOTAL,
        Unit::Count,
        "Verified-token cache lookups that found nothing."
    );
    describe_counter!(
        CACHE_EVICTIONS_TOTAL,
        Unit::Count,
        "Entries evicted from the verified-token cache."
    );
    describe_gauge!(
        CACHE_ENTRIES,
        Unit::Count,
        "Entries in the verified-token cache."
    );
    describe_counter!(
        NEGATIVE_CACHE_HITS_TOTAL,
        Unit::Count,
        "Lookups answered by the negative cache of recently wrong or unknown tokens."
    );
    describe_counter!(
        CACHE_REFRESHES_TOTAL,
        Unit::Count,
        "Cached tokens re-read from the store after a change, without argon2."
    );
    describe_counter!(
        VERIFY_BUDGET_EXHAUSTED_TOTAL,
        Unit::Count,
        "Verifies refused because a lookup id spent its budget of wrong secrets."
    );
    describe_counter!(
        LIMITED_TOTAL,
        Unit::Count,
        "Requests and connections refused by a fairness limit, by limit."
    );
    describe_counter!(
        SOURCE_COOLDOWNS_TOTAL,
        Unit::Count,
        "Sources that went past the failed-verify rate and started a cool-down, by entry point."
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        Unit::Count,
        "Accepted gRPC connections open now, handshaking or serving."
    );
    describe_gauge!(
        RUNTIME_QUEUE_DELAY_SECONDS,
        Unit::Seconds,
        "How long a task waits in the runtime's queue now (a canary's wait)."
    );
    describe_histogram!(
        CALL_WAIT_SECONDS,
        Unit::Seconds,
        "How long a call had waited in this process when admitted or shed, by how it was seen."
    );
    describe_gauge!(
        CHANGE_LOG_POSITION,
        Unit::Count,
        "Position of the newest change-log entry applied by this replica."
    );
    describe_gauge!(
        CHANGE_LOG_LAST_POLL_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the last successful change-log poll."
    );
    describe_counter!(
        CHANGE_LOG_APPLIED_TOTAL,
        Unit::Count,
        "Change-log entries applied to the verified-token cache."
    );
    describe_counter!(
        CHANGE_LOG_POLL_ERRORS_TOTAL,
        Unit::Count,
        "Failed change-log polls."
    );
    describe_counter!(
        ARGON2_VERIFIES_TOTAL,
        Unit::Count,
        "argon2 verifies of a token secret by outcome (match, mismatch, error)."
    );
    describe_histogram!(
        ARGON2_VERIFY_DURATION_SECONDS,
        Unit::Seconds,
        "Compute time of one argon2 job on the verify pool."
    );
    describe_gauge!(
        ARGON2_QUEUE_DEPTH,
        Unit::Count,
        "argon2 jobs waiting for a verify worker."
    );
    describe_histogram!(
        ARGON2_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time an argon2 job waited for a verify worker."
    );
    describe_counter!(
        ARGON2_REJECTED_TOTAL,
        Unit::Count,
        "argon2 jobs refused with RESOURCE_EXHAUSTED because the queue was full."
    );
    describe_histogram!(
        STORE_CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Token store call latency by operation."
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Failed token store calls by operation and kind (unavailable, conflict, internal)."
    );
    describe_gauge!(
        STORE_POOL_CONNECTIONS,
        Unit::Count,
        "Postgres pool connections by state (in_use, idle)."
    );
    describe_counter!(
        REVOCATION_NOTICES_TOTAL,
        Unit::Count,
        "Revocation notices received from the store."
    );
    describe_gauge!(
        REVOCATION_LISTENER_UP,
        "1 while the revocation listener is connected, else 0."
    );
    describe_counter!(
        REVOCATION_LISTENER_RECONNECTS_TOTAL,
        Unit::Count,
        "Reconnects of the revocation listener."
    );
    describe_counter!(
        LAST_USED_FLUSHES_TOTAL,
        Unit::Count,
        "last_used_at flushes that wrote a batch."
    );
    describe_histogram!(
        LAST_USED_FLUSH_SIZE,
        Unit::Count,
        "Tokens written per last_used_at flush."
    );
    describe_counter!(
        LAST_USED_FLUSH_ERRORS_TOTAL,
        Unit::Count,
        "last_used_at flushes that failed; the batch is retried."
    );
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once (later calls return the same handle)
/// and describes every metric. The recorder has no HTTP listener of its own: the admin port
/// renders the handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(LAST_USED_FLUSH_SIZE.into()),
                        &FLUSH_SIZE_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                // Only an embedding program can get here; its recorder gets our metrics.
                tracing::warn!("a metrics recorder was installed already; /metrics stays empty");
            }
            describe();
            // Zero the counters and gauges alerts watch, so a rate exists from the start.
            for pool in ["verify", "create"] {
                metrics::counter!(ARGON2_REJECTED_TOTAL, "pool" => pool).absolute(0);
                metrics::gauge!(ARGON2_QUEUE_DEPTH, "pool" => pool).increment(0.0);
            }
            metrics::counter!(LAST_USED_FLUSH_ERRORS_TOTAL).absolute(0);
            handle
        })
        .clone()
}

/// Whether [`install`] has run, so the process-wide recorder is fixed: a handle resolved
/// before that is a no-op for good, so code that keeps handles resolves them only after.
pub fn installed() -> bool {
    HANDLE.get().is_some()
}

/// The Prometheus text of every metric, as `/metrics` serves it.
pub fn render(handle: &PrometheusHandle) -> String {
    // Publishes pending descriptions and drains histogram samples into their buckets.
    handle.run_upkeep();
    handle.render()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn metric_names_are_unique_and_prometheus_style() {
        assert_eq!(ALL.iter().collect::<HashSet<_>>().len(), ALL.len());
        for name in ALL {
            assert!(name.starts_with("casola_auth_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
    }
}
