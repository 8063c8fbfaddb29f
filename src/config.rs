//! Typed configuration, layered: defaults <- TOML file (`--config`, `CASOLA_AUTH_CONFIG`)
//! <- environment <- command-line flags. Fails at start-up with a message naming the key.
//!
//! Environment variables: `CASOLA_AUTH_<KEY>` for every key below, nested keys joined by
//! `__` (e.g. `CASOLA_AUTH_ARGON2__MEMORY_KIB=65536`); `DATABASE_URL` for `database_url`.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `listen` | `127.0.0.1:50051` | gRPC address |
//! | `admin_listen` | `127.0.0.1:9090` | admin HTTP (metrics, probes) |
//! | `database_url` | none | Postgres URL; none: in-memory store |
//! | `listen_database_url` | `database_url` | direct Postgres URL for LISTEN (not through PgBouncer) |
//! | `migrate` | false | run migrations at start-up |
//! | `log_format` | `text` | `text` or `json` |
//! | `shutdown_grace_seconds` | 10 | drain time after SIGTERM |
//! | `max_message_bytes` | 65536 | largest gRPC message accepted |
//! | `health_interval_ms` | 2000 | store health check period |
//! | `argon2.memory_kib` / `iterations` / `parallelism` | 1024 / 1 / 1 | argon2id cost (the secret has about 190 bits: docs/benchmarks.md) |
//! | `verify.workers` / `verify.queue` | cores (bounded by memory) / 64 x workers | argon2 pool |
//! | `verify.create_workers` / `verify.create_queue` | 1 / 32 | argon2 pool for CreateToken's hashing, apart from the verifies |
//! | `store.pool_size` / `store.acquire_timeout_ms` | 16 / 3000 | Postgres pool |
//! | `store.tls_ca_file` | none (Mozilla roots) | CA for TLS to Postgres (`sslmode` in the URL) |
//! | `store.require_tls` | false | verified TLS to Postgres whatever the URL says (the Helm chart sets it) |
//! | `demo` | false | allow the in-memory store on a non-loopback `listen` address (a throwaway demo) |
//! | `last_used.flush_interval_ms` | 5000 | write-behind period of last_used_at |
//! | `cache.max_entries` / `idle_seconds` / `poll_interval_ms` / `negative_ttl_ms` / `wrong_secret_budget` / `max_staleness_seconds` | 100000 / 3600 / 1000 / 1000 / 8 / 30 | verified-token cache, change-log poll, lockout bounds |
//! | `catalog.file` | none | operator scope catalog (TOML), added to the defaults |
//! | `envoy.*` | see [`EnvoyConfig`] | ext_authz Check |
//! | `limits.max_in_flight` / `decision_deadline_ms` / `max_concurrent_streams` / `max_header_list_bytes` / `max_pending_accept_reset_streams` | 2048 / 150 / 32 / 16384 / 256 | admission control, deadlines, HTTP/2 limits (docs/reliability.md) |
//! | `limits.failed_verifies_burst` / `failed_verifies_per_second` / `failed_verify_cooldown_seconds` | 100 / 10 / 30 | failed verifies per source, then a cool-down without cold work (docs/security.md) |
//! | `limits.service_failed_verifies_burst` / `service_failed_verifies_per_second` | 1000 / 100 | failed verifies of an Authorize caller across the clients it names in `client_ip` |
//! | `limits.max_cold_reads` | 128 | store reads for uncached tokens in flight; past it, shed |
//! | `limits.create_burst` / `creates_per_second` | 20 / 5 | CreateToken per caller token |
//! | `limits.max_connections` / `handshake_timeout_ms` | 10000 / 10000 | accepted gRPC connections; time to send the HTTP/2 preface |
//! | `limits.side_max_connections` / `side_idle_timeout_ms` | 64 / 60000 | connections open at once on each of the admin and console ports; idle time before one is closed |
//! | `console.enabled` / `console.listen` | true / `127.0.0.1:8088` | the API Tokens page and its gRPC-Web endpoints (docs/console.md) |
//! | `expiry.soon_days` | 7 | a token expiring within this many days is `expires_soon` (1-3650); also ListExpiringTokens' default window |
//! | `expiry.sweep_interval_ms` | 60000 | how often a replica records reached expiries in the audit trail (exactly once across replicas) |
//! | `reports.per_source_per_minute` / `burst` / `max_in_progress` / `trusted_proxies` | 10 / 10 / 4 / none | ReportExposedTokens: calls per source address per minute and burst (past them RESOURCE_EXHAUSTED), reports processed at once, proxies whose `x-forwarded-for` names the source (docs/security.md) |
//!
//! Upper bounds, refused at load: the cache durations one year, `verify.workers` and
//! `verify.create_workers` 1024. Zero is refused for every limit and pool size above.

use std::{
    fmt,
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use secrecy::{ExposeSecret, SecretString};

pub use crate::telemetry::LogFormat;
use crate::{
    authorize::fairness::FairnessOptions,
    scope::{Catalog, CatalogSpec, ScopeMatch},
    token::hash::HashParams,
};

/// A database URL; may carry a password, so it is kept as a secret (zeroed on drop) and
/// `Debug` shows only the scheme.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The URL, for connecting.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for DatabaseUrl {}

/// Serialized only to layer configuration sources (figment merges serialized values): the
/// value goes from one in-memory source to another and is never written out.
impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.expose().split("://").next().unwrap_or("");
        write!(f, "DatabaseUrl({scheme}://…)")
    }
}

/// argon2 pool sizes; unset values come from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Verifies at once.
    pub workers: Option<usize>,
    /// Verifies waiting before refusals.
    pub queue: Option<usize>,
    /// argon2 workers that hash new tokens' secrets (CreateToken), apart from the verify
    /// workers so that creates never queue ahead of the gate.
    pub create_workers: usize,
    /// Hashes waiting for a create worker before creates are refused (RESOURCE_EXHAUSTED).
    pub create_queue: usize,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            workers: None,
            queue: None,
            create_workers: 1,
            create_queue: 32,
        }
    }
}

/// Postgres pool settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Connections per replica.
    pub pool_size: usize,
    /// Wait for a connection before UNAVAILABLE.
    pub acquire_timeout_ms: u64,
    /// PEM CA certificate(s) to trust for TLS to Postgres instead of the Mozilla roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Require TLS to Postgres whatever the URL says (its certificate and host name are
    /// always verified): a URL without `sslmode` gets `sslmode=require`, one with another
    /// mode stops start-up. Off by default for local development; on in the Helm chart.
    pub require_tls: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            pool_size: 16,
            acquire_timeout_ms: 3000,
            tls_ca_file: None,
            require_tls: false,
        }
    }
}

/// last_used_at write-behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LastUsedConfig {
    /// Flush period.
    pub flush_interval_ms: u64,
}

impl Default for LastUsedConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 5000,
        }
    }
}

/// Expiry notices and the expiry events of the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpiryConfig {
    /// A token expiring within this many days is flagged `expires_soon`; ListExpiringTokens
    /// looks this far ahead when the request names no window.
    pub soon_days: u32,
    /// Period of the sweep that records reached expiries as `expired` events.
    pub sweep_interval_ms: u64,
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        Self {
            soon_days: 7,
            sweep_interval_ms: 60_000,
        }
    }
}

impl ExpiryConfig {
    /// The `expires_soon` window.
    pub fn soon(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.soon_days))
    }
}

/// Where the operator's scope catalog is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// A TOML file with `[[categories]]` and `[[presets]]`, added to the defaults.
    pub file: Option<PathBuf>,
}

/// One fallback route of the Envoy Check: method + path prefix -> scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// HTTP method; absent matches any.
    #[serde(default)]
    pub method: Option<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// Required scopes.
    pub scopes: Vec<String>,
    /// `all` (default) or `any`.
    #[serde(default, rename = "match")]
    pub mode: ScopeMatch,
}

/// Limits that keep a replica answering on time under any load (docs/reliability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most gRPC calls in flight at once; past it, RESOURCE_EXHAUSTED at once.
    pub max_in_flight: usize,
    /// Ceiling on the deadline of Authorize and Check, below Envoy's 200 ms ext_authz
    /// default so that a late answer is never an OK nobody reads.
    pub decision_deadline_ms: u64,
    /// HTTP/2 streams one connection may have open.
    pub max_concurrent_streams: u32,
    /// Largest header list a request may send, in bytes.
    pub max_header_list_bytes: u32,
    /// Streams one connection may open and then reset (RST_STREAM) before this replica has
    /// taken them up, at once (the backlog of one read); past it the connection is closed
    /// with GOAWAY ENHANCE_YOUR_CALM. A gateway whose ext_authz timeouts fire while its
    /// streams wait to be read resets a whole round of them at once, so keep it several
    /// times `max_concurrent_streams`. At most [`MAX_PENDING_ACCEPT_RESET_STREAMS`].
    pub max_pending_accept_reset_streams: u32,
    /// Failed verifies (malformed, unknown, wrong secret) one source may have at once
    /// before `failed_verifies_per_second` applies. The source is Envoy's client address
    /// for Check; for Authorize, the `client_ip` the calling service names, else the
    /// calling service's address.
    pub failed_verifies_burst: u32,
    /// Failed verifies per second one source may keep up; past it the source cools down.
    pub failed_verifies_per_second: u32,
    /// Failed verifies an Authorize caller may have at once across all the clients it names
    /// in `client_ip`, before `service_failed_verifies_per_second` applies (so that naming
    /// new clients is no way around the per-source limit).
    pub service_failed_verifies_burst: u32,
    /// Failed verifies per second an Authorize caller may keep up across its clients; past
    /// it every client it names cools down.
    pub service_failed_verifies_per_second: u32,
    /// How long a source past its failed-verify rate gets no cold work (store read,
    /// argon2) for tokens not verified on this replica: a retryable refusal instead.
    pub failed_verify_cooldown_seconds: u64,
    /// Store reads for tokens not in the cache in flight at once; past it, shed
    /// (RESOURCE_EXHAUSTED).
    pub max_cold_reads: usize,
    /// CreateToken calls one caller token may make at once before `creates_per_second`
    /// applies; past it, RESOURCE_EXHAUSTED with a retry hint.
    pub create_burst: u32,
    /// CreateToken calls per second one caller token may keep up.
    pub creates_per_second: u32,
    /// Accepted gRPC connections open at once; past it a new one is closed at once. Kept
    /// below the open-file limit (raised to its hard limit at start-up).
    pub max_connections: usize,
    /// A connection that has not sent the HTTP/2 preface within this is closed.
    pub handshake_timeout_ms: u64,
    /// Connections open at once on each of the admin and console ports; at it, a new one
    /// closes the one quiet longest to make room (an idle flood cannot keep a scrape out).
    pub side_max_connections: usize,
    /// A connection to the admin or console port that sends and receives nothing for this
    /// long is closed.
    pub side_idle_timeout_ms: u64,
}

impl LimitsConfig {
    /// The settings of the fairness limits.
    pub fn fairness(&self) -> FairnessOptions {
        // validate() refuses zeros; `max(1)` keeps a caller that skipped it from panicking.
        let n = |v: u32| NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN);
        FairnessOptions {
            failed_verifies_burst: n(self.failed_verifies_burst),
            failed_verifies_per_second: n(self.failed_verifies_per_second),
            service_failed_verifies_burst: n(self.service_failed_verifies_burst),
            service_failed_verifies_per_second: n(self.service_failed_verifies_per_second),
            cooldown: Duration::from_secs(self.failed_verify_cooldown_seconds),
            create_burst: n(self.create_burst),
            creates_per_second: n(self.creates_per_second),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 2048,
            decision_deadline_ms: 150,
            max_concurrent_streams: 32,
            max_header_list_bytes: 16 * 1024,
            max_pending_accept_reset_streams: 256,
            failed_verifies_burst: 100,
            failed_verifies_per_second: 10,
            service_failed_verifies_burst: 1000,
            service_failed_verifies_per_second: 100,
            failed_verify_cooldown_seconds: 30,
            max_cold_reads: 128,
            create_burst: 20,
            creates_per_second: 5,
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            side_max_connections: 64,
            side_idle_timeout_ms: 60_000,
        }
    }
}

/// The verified-token cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Most verified tokens held.
    pub max_entries: u64,
    /// A verified token unused this long is dropped (a memory bound, not a correctness
    /// one: changes arrive through notices and the change log).
    pub idle_seconds: u64,
    /// Deprecated: the old name of `idle_seconds` (it was a TTL); when set, it wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// How often the change log is polled.
    pub poll_interval_ms: u64,
    /// The interval of the negative cache (a wrong token costs one verify per interval)
    /// and of the per-lookup-id verify budget.
    pub negative_ttl_ms: u64,
    /// Verifies of unproven secrets per lookup id per interval; past it they are answered
    /// RESOURCE_EXHAUSTED (retryable) until the interval ends.
    pub wrong_secret_budget: u32,
    /// How long cached answers may still be served while neither the revocation listener
    /// nor the change-log poll works.
    pub max_staleness_seconds: u64,
}

impl CacheConfig {
    /// The idle bound in force (`ttl_seconds`, the deprecated name, wins when set).
    pub fn idle(&self) -> u64 {
        self.ttl_seconds.unwrap_or(self.idle_seconds)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            idle_seconds: 3600,
            ttl_seconds: None,
            poll_interval_ms: 1000,
            negative_ttl_ms: 1000,
            wrong_secret_budget: 8,
            max_staleness_seconds: 30,
        }
    }
}

/// Envoy ext_authz settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvoyConfig {
    /// An extra header carrying the bare token (e.g. `x-api-key`); off by default.
    pub token_header: Option<String>,
    /// Keep the `authorization` header for the upstream (removed by default).
    pub keep_authorization: bool,
    /// Allow a request no route rule matches (denied by default). Such a request still
    /// needs a valid token.
    pub allow_unmatched: bool,
    /// Fallback route table for routes without `casola.scopes` context extensions.
    pub routes: Vec<RouteRule>,
    /// How many proxies of our own stand in front of Envoy: the client address for allowed
    /// networks is then the `x-forwarded-for` entry that many places left of the last one.
    /// 0 (the default) uses Envoy's source address and ignores `x-forwarded-for`, which any
    /// client can write (docs/security.md).
    pub trusted_hops: u32,
    /// A request header that asks Check for an explanation of its decision (e.g.
    /// `x-casola-explain`); off by default. Honoured only for tokens holding
    /// `explain_scope` (docs/security.md).
    pub explain_header: Option<String>,
    /// The scope a token needs for its requests to be explained through the gateway;
    /// required when `explain_header` is set.
    pub explain_scope: Option<String>,
}

impl EnvoyConfig {
    /// Start-up checks of the explain keys: a header needs a known scope to guard it.
    pub fn check_explain(&self, catalog: &Catalog) -> Result<(), String> {
        match (&self.explain_header, &self.explain_scope) {
            (None, _) => Ok(()),
            (Some(header), _) if header.trim().is_empty() || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
                Err("envoy.explain_header must be a header name (letters, digits, '-')".into())
            }
            (Some(_), None) => Err(
                "envoy.explain_header is set without envoy.explain_scope: name the scope a token needs to ask for explanations".into(),
            ),
            (Some(_), Some(scope)) if !catalog.knows(scope) => Err(format!(
                "envoy.explain_scope names the unknown scope {scope:?}"
            )),
            _ => Ok(()),
        }
    }
}

/// The web console (the API Tokens page, docs/console.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console. On by default so that a local `serve` shows the page; deployments
    /// with a dashboard of their own turn it off (the Helm chart does).
    pub enabled: bool,
    /// Its own HTTP/1.1 address: the page and the gRPC-Web endpoints, same origin. Not
    /// 8080, which the Envoy example's gateway takes.
    pub listen: SocketAddr,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: ([127, 0, 0, 1], 8088).into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Admin HTTP address.
    pub admin_listen: SocketAddr,
    /// Postgres URL; none: in-memory store.
    pub database_url: Option<DatabaseUrl>,
    /// Direct Postgres URL for the revocation listener; defaults to `database_url`.
    pub listen_database_url: Option<DatabaseUrl>,
    /// Run migrations at start-up.
    pub migrate: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Drain time after SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// Largest gRPC message.
    pub max_message_bytes: usize,
    /// Store health check period.
    pub health_interval_ms: u64,
    /// argon2id parameters.
    pub argon2: HashParams,
    /// argon2 pool.
    pub verify: VerifyConfig,
    /// Postgres pool.
    pub store: StoreConfig,
    /// last_used_at write-behind.
    pub last_used: LastUsedConfig,
    /// Verified-token cache.
    pub cache: CacheConfig,
    /// Operator scope catalog.
    pub catalog: CatalogConfig,
    /// Envoy ext_authz.
    pub envoy: EnvoyConfig,
    /// A throwaway demo: lets the in-memory store (and its bootstrap admin token, printed
    /// at start-up) serve on a non-loopback address, which is refused otherwise.
    pub demo: bool,
    /// The web console.
    pub console: ConsoleConfig,
    /// Admission control and HTTP/2 limits.
    pub limits: LimitsConfig,
    /// Expiry notices and expiry events.
    pub expiry: ExpiryConfig,
    /// ReportExposedTokens limits.
    pub reports: ReportsConfig,
}

/// Limits of ReportExposedTokens, the one TokenService call without a caller token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// Reports one source address may send per minute (sustained); past it and the burst,
    /// RESOURCE_EXHAUSTED.
    pub per_source_per_minute: u32,
    /// Reports one source address may send at once before the per-minute rate applies.
    pub burst: u32,
    /// Reports processed at once by a replica; past it, RESOURCE_EXHAUSTED.
    pub max_in_progress: usize,
    /// Proxies (e.g. the Envoy gateway) whose `x-forwarded-for` names the source: for a
    /// call from one of these addresses, the last address in that header is the source
    /// the limit counts. Empty: the peer address always is.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            per_source_per_minute: 10,
            burst: 10,
            max_in_progress: 4,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 50051).into(),
            admin_listen: ([127, 0, 0, 1], 9090).into(),
            database_url: None,
            listen_database_url: None,
            migrate: false,
            log_format: LogFormat::Text,
            shutdown_grace_seconds: 10,
            max_message_bytes: 64 * 1024,
            health_interval_ms: 2000,
            argon2: HashParams::default(),
            verify: VerifyConfig::default(),
            store: StoreConfig::default(),
            last_used: LastUsedConfig::default(),
            cache: CacheConfig::default(),
            catalog: CatalogConfig::default(),
            envoy: EnvoyConfig::default(),
            demo: false,
            console: ConsoleConfig::default(),
            limits: LimitsConfig::default(),
            expiry: ExpiryConfig::default(),
            reports: ReportsConfig::default(),
        }
    }
}

/// The top-level keys of [`Config`], the only ones taken from `CASOLA_AUTH_*` variables.
const TOP_LEVEL_KEYS: [&str; 21] = [
    "listen",
    "admin_listen",
    "database_url",
    "listen_database_url",
    "migrate",
    "log_format",
    "shutdown_grace_seconds",
    "max_message_bytes",
    "health_interval_ms",
    "argon2",
    "verify",
    "store",
    "last_used",
    "cache",
    "catalog",
    "envoy",
    "demo",
    "console",
    "limits",
    "expiry",
    "reports",
];

/// The longest cache durations (`cache.idle_seconds`, `cache.negative_ttl_ms`, ...): a
/// year, far past any useful setting; the caches refuse more than 1000 years with a panic.
const MAX_CACHE_SECONDS: u64 = 365 * 24 * 3600;
/// The most argon2 workers: each is a thread of the blocking pool (512 by default), and the
/// default queue is 64 per worker.
const MAX_VERIFY_WORKERS: usize = 1024;
/// The most streams a connection may reset before they are taken up, at once: 128 rounds of
/// the default 32 streams. Far past it the bound is as good as off.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: u64 = 4096;
/// Largest argon2 memory cost accepted, in KiB (4 GiB: more would exhaust a replica).
const ARGON2_MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Largest argon2 pass count accepted (each pass costs a full sweep of the memory).
const ARGON2_MAX_ITERATIONS: u32 = 64;
/// Largest argon2 lane count accepted (our verifies are single-threaded per request).
const ARGON2_MAX_PARALLELISM: u32 = 16;

/// Every error of a failed extraction, each with the key as its source spells it and the
/// source: `cache.max_entries: invalid value ... (in /etc/casola.toml TOML file)`.
fn describe(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let source = e.metadata.as_ref().map(|m| m.name.to_string());
            let key = match &source {
                Some(name) if name.contains("environment") => {
                    let var = e.path.join("__").to_ascii_uppercase();
                    if name.contains("CASOLA_AUTH_") {
                        format!("CASOLA_AUTH_{var}")
                    } else {
                        var
                    }
                }
                _ => e.path.join("."),
            };
            let source = source.map(|s| format!(" (in {s})")).unwrap_or_default();
            format!("{key}: {}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a database URL cannot be used: not a `postgres://` URL, or one that does not parse.
fn check_postgres_url(url: &str) -> Result<(), String> {
    let scheme = url.split("://").next().unwrap_or("");
    if !url.contains("://") || !matches!(scheme, "postgres" | "postgresql") {
        return Err("not a Postgres URL".into());
    }
    url.parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|e| format!("not a usable Postgres URL: {e}"))
}

/// `CASOLA_AUTH_*` variables among `names` that set no configuration key, each with the
/// closest key: a typo (`CASOLA_AUTH_LISTN`) is reported rather than silently ignored.
/// Variables that are not ours to refuse stay quiet: the Kubernetes service links of a
/// Service named casola-auth (`CASOLA_AUTH_SERVICE_*`, `CASOLA_AUTH_PORT*`) and the
/// command line's own `CASOLA_AUTH_CONFIG`.
pub fn misspelt_variables(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut warnings = Vec::new();
    for name in names {
        let Some(rest) = name.strip_prefix("CASOLA_AUTH_") else {
            continue;
        };
        let top = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
        let foreign = top == "config"
            || top == "port"
            || top.starts_with("port_")
            || top.starts_with("service_");
        if foreign || TOP_LEVEL_KEYS.contains(&top.as_str()) {
            continue;
        }
        let closest = TOP_LEVEL_KEYS
            .iter()
            .map(|key| (strsim::levenshtein(key, &top), *key))
            .min()
            .filter(|(distance, _)| *distance <= 3);
        warnings.push(match closest {
            Some((_, key)) => format!(
                "{name} sets nothing; did you mean CASOLA_AUTH_{}?",
                key.to_ascii_uppercase()
            ),
            None => format!("{name} sets nothing: no configuration key is called {top:?}"),
        });
    }
    warnings
}

/// Flag overrides for [`Config::load`] when there are none.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NoOverrides {}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A key has a bad value (the message names the key as its source spells it: the
    /// variable `CASOLA_AUTH_CACHE__TTL_SECONDS`, or `cache.ttl_seconds` in a file).
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A value that parses but cannot work (the message names the key and what is allowed).
    #[error("invalid configuration: {0}")]
    Unusable(String),
    /// The scope catalog file cannot be read or does not hold together.
    #[error("scope catalog {path}: {message}")]
    Catalog {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads defaults <- `file` <- environment <- `overrides` (flags; `None` fields are
    /// left alone).
    pub fn load<T: Serialize>(file: Option<&Path>, overrides: T) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment
            .merge(Env::raw().only(&["DATABASE_URL"]))
            // Only our own keys: other CASOLA_AUTH_* variables exist in the wild (Kubernetes
            // service links for a Service named casola-auth, test harness variables) and
            // must not stop start-up. A misspelt key is still refused in the file.
            .merge(Env::prefixed("CASOLA_AUTH_").split("__").filter(|key| {
                let top = key.as_str().split('.').next().unwrap_or("");
                TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
            }))
            .merge(Serialized::defaults(overrides));
        let config: Self = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses at start-up what parses but cannot work, naming the key.
    fn validate(&self) -> Result<(), ConfigError> {
        let unusable = |message: String| Err(ConfigError::Unusable(message));
        for (key, url) in [
            ("database_url", &self.database_url),
            ("listen_database_url", &self.listen_database_url),
        ] {
            if let Some(url) = url
                && let Err(why) = check_postgres_url(url.expose())
            {
                // Never the URL itself: it may carry a password.
                return unusable(format!(
                    "{key}: {why} (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
                ));
            }
        }
        if let Some(path) = &self.store.tls_ca_file
            && let Err(e) = std::fs::File::open(path)
        {
            return unusable(format!(
                "store.tls_ca_file: cannot read {}: {e}",
                path.display()
            ));
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return unusable(format!(
                "listen and admin_listen are both {}: give the admin port its own address",
                self.listen
            ));
        }
        if !(1..=3650).contains(&self.expiry.soon_days) {
            return unusable(format!(
                "expiry.soon_days must be between 1 and 3650, is {}",
                self.expiry.soon_days
            ));
        }
        self.validate_argon2()?;
        self.validate_bounds()
    }

    /// argon2's parameters within what argon2 accepts and a replica can afford.
    fn validate_argon2(&self) -> Result<(), ConfigError> {
        let unusable = |message: String| Err(ConfigError::Unusable(message));
        let HashParams {
            memory_kib,
            iterations,
            parallelism,
        } = self.argon2;
        if !(1..=ARGON2_MAX_PARALLELISM).contains(&parallelism) {
            return unusable(format!(
                "argon2.parallelism must be between 1 and {ARGON2_MAX_PARALLELISM}, is {parallelism}"
            ));
        }
        if !(8 * parallelism..=ARGON2_MAX_MEMORY_KIB).contains(&memory_kib) {
            return unusable(format!(
                "argon2.memory_kib must be between 8 x parallelism ({}) and {ARGON2_MAX_MEMORY_KIB}, is {memory_kib}",
                8 * parallelism
            ));
        }
        if !(1..=ARGON2_MAX_ITERATIONS).contains(&iterations) {
            return unusable(format!(
                "argon2.iterations must be between 1 and {ARGON2_MAX_ITERATIONS}, is {iterations}"
            ));
        }
        Ok(())
    }

    /// Values past which start-up would panic.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        // Past these the cache (moka refuses more than 1000 years) or the pool's queue
        // arithmetic would stop start-up with a panic.
        let workers = self
            .verify
            .workers
            .map_or(0, |w| u64::try_from(w).unwrap_or(u64::MAX));
        let bounds = [
            (
                "cache.idle_seconds",
                self.cache.idle_seconds,
                MAX_CACHE_SECONDS,
            ),
            (
                "cache.ttl_seconds",
                self.cache.ttl_seconds.unwrap_or(0),
                MAX_CACHE_SECONDS,
            ),
            (
                "cache.poll_interval_ms",
                self.cache.poll_interval_ms,
                MAX_CACHE_SECONDS * 1000,
            ),
            (
                "cache.max_staleness_seconds",
                self.cache.max_staleness_seconds,
                MAX_CACHE_SECONDS,
            ),
            (
                "cache.negative_ttl_ms",
                self.cache.negative_ttl_ms,
                MAX_CACHE_SECONDS * 1000,
            ),
            ("verify.workers", workers, MAX_VERIFY_WORKERS as u64),
            (
                "verify.create_workers",
                self.verify.create_workers as u64,
                MAX_VERIFY_WORKERS as u64,
            ),
            (
                "limits.failed_verify_cooldown_seconds",
                self.limits.failed_verify_cooldown_seconds,
                MAX_CACHE_SECONDS,
            ),
            (
                "limits.handshake_timeout_ms",
                self.limits.handshake_timeout_ms,
                MAX_CACHE_SECONDS * 1000,
            ),
            (
                "limits.max_pending_accept_reset_streams",
                u64::from(self.limits.max_pending_accept_reset_streams),
                MAX_PENDING_ACCEPT_RESET_STREAMS,
            ),
            (
                "expiry.sweep_interval_ms",
                self.expiry.sweep_interval_ms,
                MAX_CACHE_SECONDS * 1000,
            ),
        ];
        for (key, value, max) in bounds {
            if value > max {
                return Err(ConfigError::Unusable(format!(
                    "{key} = {value} is above its limit of {max}"
                )));
            }
        }
        let limits = &self.limits;
        let positive = [
            ("verify.create_workers", self.verify.create_workers as u64),
            (
                "limits.failed_verifies_burst",
                u64::from(limits.failed_verifies_burst),
            ),
            (
                "limits.failed_verifies_per_second",
                u64::from(limits.failed_verifies_per_second),
            ),
            (
                "limits.service_failed_verifies_burst",
                u64::from(limits.service_failed_verifies_burst),
            ),
            (
                "limits.service_failed_verifies_per_second",
                u64::from(limits.service_failed_verifies_per_second),
            ),
            ("limits.max_in_flight", limits.max_in_flight as u64),
            ("limits.decision_deadline_ms", limits.decision_deadline_ms),
            (
                "limits.max_concurrent_streams",
                u64::from(limits.max_concurrent_streams),
            ),
            (
                "limits.max_header_list_bytes",
                u64::from(limits.max_header_list_bytes),
            ),
            (
                "limits.max_pending_accept_reset_streams",
                u64::from(limits.max_pending_accept_reset_streams),
            ),
            ("limits.max_cold_reads", limits.max_cold_reads as u64),
            ("limits.create_burst", u64::from(limits.create_burst)),
            (
                "limits.creates_per_second",
                u64::from(limits.creates_per_second),
            ),
            ("limits.max_connections", limits.max_connections as u64),
            ("limits.handshake_timeout_ms", limits.handshake_timeout_ms),
            (
                "limits.side_max_connections",
                limits.side_max_connections as u64,
            ),
            ("limits.side_idle_timeout_ms", limits.side_idle_timeout_ms),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Unusable(format!(
                "{key} must be at least 1 (a zero would refuse everything)"
            )));
        }
        Ok(())
    }

    /// The scope catalog: the defaults plus the operator's file, if any.
    pub fn catalog(&self) -> Result<Catalog, ConfigError> {
        let Some(path) = &self.catalog.file else {
            return Ok(Catalog::default());
        };
        let err = |message: String| ConfigError::Catalog {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let spec = CatalogSpec::from_toml(&text).map_err(err)?;
        Catalog::build(spec).map_err(|e| err(e.to_string()))
    }

    /// The drain time after SIGTERM.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment's Jail closures return figment::Error"
)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_never_print_their_password() {
        let url = DatabaseUrl::new("postgres://app:hunter2@db:5432/auth");
        let shown = format!("{url:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.starts_with("DatabaseUrl(postgres://"));
        let config = Config {
            database_url: Some(url),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn file_then_environment_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "casola.toml",
                r#"
                listen = "0.0.0.0:6000"
                admin_listen = "0.0.0.0:6001"
                [argon2]
                memory_kib = 8192
                [[envoy.routes]]
                method = "GET"
                path_prefix = "/api/"
                scopes = ["user:read"]
                "#,
            )?;
            jail.set_env("CASOLA_AUTH_ADMIN_LISTEN", "0.0.0.0:7001");
            jail.set_env("CASOLA_AUTH_ARGON2__ITERATIONS", "3");
            jail.set_env("DATABASE_URL", "postgres://x@y/z");
            #[derive(Serialize)]
            struct Flags {
                listen: Option<String>,
            }
            let c = Config::load(
                Some(Path::new("casola.toml")),
                Flags {
                    listen: Some("127.0.0.1:7000".into()),
                },
            )
            .unwrap();
            assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
            assert_eq!(c.admin_listen, "0.0.0.0:7001".parse().unwrap());
            assert_eq!(c.argon2.memory_kib, 8192);
            assert_eq!(c.argon2.iterations, 3);
            assert_eq!(c.database_url.unwrap().expose(), "postgres://x@y/z");
            assert_eq!(c.envoy.routes[0].scopes, ["user:read"]);
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CASOLA_AUTH_SHUTDOWN_GRACE_SECONDS", "soon");
            let err = Config::load(None, NoOverrides {}).unwrap_err().to_string();
            assert!(
                err.contains("SHUTDOWN_GRACE_SECONDS") && err.contains("CASOLA_AUTH_"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_environment_key_list_is_every_top_level_key() {
        let value = figment::value::Value::serialize(Config {
            database_url: Some(DatabaseUrl::new("x")),
            listen_database_url: Some(DatabaseUrl::new("x")),
            ..Config::default()
        })
        .unwrap();
        let mut keys: Vec<String> = value.into_dict().unwrap().into_keys().collect();
        keys.sort();
        let mut listed: Vec<String> = TOP_LEVEL_KEYS.iter().map(|k| (*k).to_owned()).collect();
        listed.sort();
        assert_eq!(keys, listed);
    }

    #[test]
    fn foreign_casola_auth_variables_do_not_stop_start_up() {
        figment::Jail::expect_with(|jail| {
            // What Kubernetes injects for a Service named casola-auth.
            jail.set_env("CASOLA_AUTH_PORT", "tcp://10.0.0.7:50051");
            jail.set_env("CASOLA_AUTH_SERVICE_HOST", "10.0.0.7");
            jail.set_env("CASOLA_AUTH_BIN", "/usr/local/bin/casola-auth");
            jail.set_env("CASOLA_AUTH_LISTEN", "0.0.0.0:50051");
            let c = Config::load(None, NoOverrides {}).unwrap();
            assert_eq!(c.listen, "0.0.0.0:50051".parse().unwrap());
            Ok(())
        });
    }

    #[test]
    fn a_misspelt_variable_is_reported_with_the_closest_key() {
        let warnings = misspelt_variables(
            [
                "CASOLA_AUTH_LISTN",
                "CASOLA_AUTH_LISTEN",
                "CASOLA_AUTH_SERVICE_HOST",
                "CASOLA_AUTH_SERVICE_PORT_GRPC",
                "CASOLA_AUTH_PORT",
                "CASOLA_AUTH_PORT_50051_TCP_ADDR",
                "CASOLA_AUTH_CONFIG",
                "CASOLA_AUTH_CACHE__TTL_SECONDS",
                "PATH",
            ]
            .map(String::from),
        );
        assert_eq!(
            warnings,
            ["CASOLA_AUTH_LISTN sets nothing; did you mean CASOLA_AUTH_LISTEN?"]
        );
    }

    #[test]
    fn what_cannot_work_is_refused_at_start_up_naming_the_key() {
        let refused = |vars: &[(&str, &str)], key: &str| {
            figment::Jail::expect_with(|jail| {
                for (name, value) in vars {
                    jail.set_env(name, value);
                }
                let err = Config::load(None, NoOverrides {}).unwrap_err().to_string();
                assert!(err.contains(key), "{err}");
                assert!(!err.contains("hunter2"), "{err}");
                Ok(())
            });
        };
        refused(
            &[("DATABASE_URL", "mysql://u:hunter2@db/x")],
            "database_url",
        );
        refused(
            &[("DATABASE_URL", "postgres://u:hunter2@db:notaport/x")],
            "database_url",
        );
        refused(
            &[("CASOLA_AUTH_STORE__TLS_CA_FILE", "/nonexistent/ca.pem")],
            "store.tls_ca_file",
        );
        refused(
            &[
                ("CASOLA_AUTH_LISTEN", "127.0.0.1:7000"),
                ("CASOLA_AUTH_ADMIN_LISTEN", "127.0.0.1:7000"),
            ],
            "admin_listen",
        );
        refused(
            &[("CASOLA_AUTH_ARGON2__MEMORY_KIB", "4")],
            "argon2.memory_kib",
        );
        refused(
            &[("CASOLA_AUTH_ARGON2__ITERATIONS", "0")],
            "argon2.iterations",
        );
        refused(
            &[("CASOLA_AUTH_ARGON2__PARALLELISM", "0")],
            "argon2.parallelism",
        );
        // A zero limit would refuse everything (no stream, no header, no call in flight,
        // every decision past its deadline).
        for (var, key) in [
            ("CASOLA_AUTH_LIMITS__MAX_IN_FLIGHT", "limits.max_in_flight"),
            (
                "CASOLA_AUTH_LIMITS__DECISION_DEADLINE_MS",
                "limits.decision_deadline_ms",
            ),
            (
                "CASOLA_AUTH_LIMITS__MAX_CONCURRENT_STREAMS",
                "limits.max_concurrent_streams",
            ),
            (
                "CASOLA_AUTH_LIMITS__MAX_HEADER_LIST_BYTES",
                "limits.max_header_list_bytes",
            ),
            (
                "CASOLA_AUTH_LIMITS__MAX_PENDING_ACCEPT_RESET_STREAMS",
                "limits.max_pending_accept_reset_streams",
            ),
            (
                "CASOLA_AUTH_LIMITS__FAILED_VERIFIES_BURST",
                "limits.failed_verifies_burst",
            ),
            (
                "CASOLA_AUTH_LIMITS__FAILED_VERIFIES_PER_SECOND",
                "limits.failed_verifies_per_second",
            ),
            (
                "CASOLA_AUTH_LIMITS__SERVICE_FAILED_VERIFIES_BURST",
                "limits.service_failed_verifies_burst",
            ),
            (
                "CASOLA_AUTH_LIMITS__SERVICE_FAILED_VERIFIES_PER_SECOND",
                "limits.service_failed_verifies_per_second",
            ),
            (
                "CASOLA_AUTH_LIMITS__MAX_COLD_READS",
                "limits.max_cold_reads",
            ),
            ("CASOLA_AUTH_LIMITS__CREATE_BURST", "limits.create_burst"),
            (
                "CASOLA_AUTH_LIMITS__CREATES_PER_SECOND",
                "limits.creates_per_second",
            ),
            (
                "CASOLA_AUTH_LIMITS__MAX_CONNECTIONS",
                "limits.max_connections",
            ),
            (
                "CASOLA_AUTH_LIMITS__HANDSHAKE_TIMEOUT_MS",
                "limits.handshake_timeout_ms",
            ),
            (
                "CASOLA_AUTH_LIMITS__SIDE_MAX_CONNECTIONS",
                "limits.side_max_connections",
            ),
            (
                "CASOLA_AUTH_LIMITS__SIDE_IDLE_TIMEOUT_MS",
                "limits.side_idle_timeout_ms",
            ),
            (
                "CASOLA_AUTH_VERIFY__CREATE_WORKERS",
                "verify.create_workers",
            ),
        ] {
            refused(&[(var, "0")], key);
        }
        refused(
            &[(
                "CASOLA_AUTH_LIMITS__FAILED_VERIFY_COOLDOWN_SECONDS",
                "99999999999",
            )],
            "limits.failed_verify_cooldown_seconds",
        );
        // Past this the bound on a read's backlog of reset streams is as good as off.
        refused(
            &[(
                "CASOLA_AUTH_LIMITS__MAX_PENDING_ACCEPT_RESET_STREAMS",
                "4097",
            )],
            "limits.max_pending_accept_reset_streams",
        );
        refused(
            &[("CASOLA_AUTH_EXPIRY__SOON_DAYS", "0")],
            "expiry.soon_days",
        );
        refused(
            &[("CASOLA_AUTH_EXPIRY__SOON_DAYS", "3651")],
            "expiry.soon_days",
        );
    }

    #[test]
    fn the_expiry_notice_window_defaults_to_a_week_and_comes_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, NoOverrides {}).unwrap();
            assert_eq!(c.expiry.soon(), chrono::Duration::days(7));
            assert_eq!(c.expiry.sweep_interval_ms, 60_000);
            jail.set_env("CASOLA_AUTH_EXPIRY__SOON_DAYS", "14");
            jail.set_env("CASOLA_AUTH_EXPIRY__SWEEP_INTERVAL_MS", "5000");
            let c = Config::load(None, NoOverrides {}).unwrap();
            assert_eq!(c.expiry.soon(), chrono::Duration::days(14));
            assert_eq!(c.expiry.sweep_interval_ms, 5000);
            Ok(())
        });
    }

    #[test]
    fn cache_keys_come_from_the_environment_and_the_old_ttl_name_still_works() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CASOLA_AUTH_CACHE__POLL_INTERVAL_MS", "250");
            jail.set_env("CASOLA_AUTH_CACHE__WRONG_SECRET_BUDGET", "3");
            let c = Config::load(None, NoOverrides {}).unwrap();
            assert_eq!(c.cache.poll_interval_ms, 250);
            assert_eq!(c.cache.wrong_secret_budget, 3);
            assert_eq!(c.cache.idle(), 3600);
            jail.set_env("CASOLA_AUTH_CACHE__TTL_SECONDS", "1800");
            let c = Config::load(None, NoOverrides {}).unwrap();
            assert_eq!(c.cache.idle(), 1800);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "lisen = \"0.0.0.0:1\"")?;
            let err = Config::load(Some(Path::new("c.toml")), NoOverrides {})
                .unwrap_err()
                .to_string();
            assert!(err.contains("lisen"), "{err}");
            Ok(())
        });
    }

    /// Keys of every section, a few unknown ones, and dotted forms TOML allows.
    const KEYS: [&str; 33] = [
        "listen",
        "admin_listen",
        "database_url",
        "migrate",
        "log_format",
        "shutdown_grace_seconds",
        "max_message_bytes",
        "health_interval_ms",
        "argon2.memory_kib",
        "argon2.iterations",
        "argon2.parallelism",
        "verify.workers",
        "verify.queue",
        "store.pool_size",
        "store.acquire_timeout_ms",
        "store.tls_ca_file",
        "last_used.flush_interval_ms",
        "cache.max_entries",
        "cache.ttl_seconds",
        "cache.negative_ttl_ms",
        "cache.max_staleness_seconds",
        "catalog.file",
        "envoy.token_header",
        "envoy.keep_authorization",
        "envoy.allow_unmatched",
        "envoy.routes",
        "expiry.soon_days",
        "expiry.sweep_interval_ms",
        "envoy.trusted_hops",
        "envoy.explain_header",
        "envoy.explain_scope",
        "lisen",
        "cache.size",
    ];

    const NUMERIC_KEYS: [&str; 17] = [
        "shutdown_grace_seconds",
        "max_message_bytes",
        "health_interval_ms",
        "argon2.memory_kib",
        "argon2.iterations",
        "argon2.parallelism",
        "verify.workers",
        "verify.queue",
        "store.pool_size",
        "store.acquire_timeout_ms",
        "last_used.flush_interval_ms",
        "cache.max_entries",
        "cache.ttl_seconds",
        "cache.negative_ttl_ms",
        "cache.max_staleness_seconds",
        "expiry.soon_days",
        "expiry.sweep_interval_ms",
    ];

    fn toml_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            // Edges: zero, 32-bit, float-exact, and the largest TOML integer.
            prop::sample::select(vec![0, 1, u32::MAX.into(), 1 << 53, 1 << 58, i64::MAX])
                .prop_map(|n: i64| n.to_string()),
            (0u64..100_000).prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            "[a-z0-9:./_-]{0,20}".prop_map(|s| format!("\"{s}\"")),
            Just("\"127.0.0.1:0\"".to_owned()),
            Just("\"json\"".to_owned()),
            Just("[]".to_owned()),
            Just("[\"user:read\"]".to_owned()),
            Just("{}".to_owned()),
            Just(r#"[{ path_prefix = "/v1/", scopes = ["user:read"], match = "any" }]"#.to_owned()),
            Just(r#"[{ method = "", path_prefix = "v1", scopes = ["nope"] }]"#.to_owned()),
        ]
    }

    /// Files of known keys with values of any type, and any text at all.
    fn config_files() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let line = (prop::sample::select(KEYS.to_vec()), toml_value())
            .prop_map(|(key, value)| format!("{key} = {value}\n"));
        // Every numeric key with edge values: the likeliest way to break start-up.
        let number = (
            prop::sample::select(NUMERIC_KEYS.to_vec()),
            prop::sample::select(vec![0, 1, u32::MAX.into(), 1 << 53, 1 << 58, i64::MAX]),
        )
            .prop_map(|(key, n): (&str, i64)| format!("{key} = {n}\n"));
        prop_oneof![
            4 => proptest::collection::vec(line, 0..6).prop_map(|lines| lines.concat()),
            2 => proptest::collection::vec(number, 1..4).prop_map(|lines| lines.concat()),
            1 => any::<String>(),
        ]
    }

    /// Any file: an error or a configuration that starts (in memory) without a panic and
    /// survives a serialization round trip.
    #[test]
    fn any_config_file_loads_or_is_refused_and_what_loads_starts_up() {
        use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // In a jail: no other test changes the environment while these load.
        figment::Jail::expect_with(|jail| {
            let mut runner = TestRunner::new(RunnerConfig {
                cases: 256,
                ..RunnerConfig::default()
            });
            let result = runner.run(&config_files(), |text| {
                jail.create_file("fuzz.toml", &text)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let Ok(config) = Config::load(Some(Path::new("fuzz.toml")), NoOverrides {}) else {
                    return Ok(());
                };
                let again = Config::load(None, config.clone())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                proptest::prop_assert_eq!(&again, &config);
                let memory = Config {
                    database_url: None,
                    listen_database_url: None,
                    catalog: CatalogConfig::default(),
                    ..config
                };
                // A panic here fails the case (the runner catches it) and is shrunk.
                let _ = runtime.block_on(crate::server::Services::open(&memory));
                Ok(())
            });
            result.map_err(|e| e.to_string().into())
        });
    }

    /// Regression: each of these loaded, then panicked at start-up (moka refuses a TTL past
    /// 1000 years; `workers * 64` overflowed).
    #[test]
    fn values_that_would_panic_at_start_up_are_refused_naming_their_key() {
        figment::Jail::expect_with(|jail| {
            for (text, key) in [
                ("[cache]\nttl_seconds = 9999999999999", "cache.ttl_seconds"),
                (
                    "[cache]\nnegative_ttl_ms = 9999999999999999",
                    "cache.negative_ttl_ms",
                ),
                ("[verify]\nworkers = 288230376151711744", "verify.workers"),
            ] {
                jail.create_file("c.toml", text)?;
                let err = Config::load(Some(Path::new("c.toml")), NoOverrides {})
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key), "{err}");
            }
            jail.create_file(
                "c.toml",
                "[cache]\nttl_seconds = 31536000\nnegative_ttl_ms = 31536000000\n[verify]\nworkers = 1024",
            )?;
            let c = Config::load(Some(Path::new("c.toml")), NoOverrides {}).unwrap();
            assert_eq!(c.verify.workers, Some(1024));
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        assert!(matches!(
            Config::load(Some(Path::new("/nonexistent/casola.toml")), NoOverrides {}),
            Err(ConfigError::MissingFile(_))
        ));
    }
}
