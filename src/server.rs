//! Server wiring: builds the store, the domain services and both transports, serves gRPC
//! and the admin HTTP port, and shuts down gracefully.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::transport::{Server, server::Router};
use tonic_health::{
    ServingStatus,
    pb::health_server::{Health, HealthServer},
    server::HealthReporter,
};
use tower::{
    Layer,
    layer::util::{Identity, Stack},
};

use crate::{
    admin::AdminState,
    authorize::{
        Authorizer, ColdLimits, VerifyPool, VerifyPoolOptions, cache::TokenCache,
        fairness::FairnessLimits, last_used::LastUsed,
    },
    config::{Config, ConfigError, DatabaseUrl},
    event::Origin,
    manage::{Caller, CreateRequest, TokenManager},
    proto::{
        self, authorization_service_server::AuthorizationServiceServer,
        token_service_server::TokenServiceServer,
    },
    scope::{ADMIN_WRITE, TOKENS_ISSUE},
    store::{
        StoreError, TokenStore,
        changes::PollerOptions,
        memory::MemoryStore,
        postgres::{
            PgStore, PoolOptions,
            listener::{self, ListenerOptions, RevocationSink},
            run_migrations,
        },
        timed::TimedStore,
    },
    telemetry::{
        self,
        metrics::{
            CACHE_ENTRIES, REVOCATION_LISTENER_RECONNECTS_TOTAL, REVOCATION_LISTENER_UP,
            REVOCATION_NOTICES_TOTAL,
        },
    },
    token::{
        PlainToken,
        hash::{HashError, TokenHasher},
    },
    transport::{
        admission::{Admission, AdmissionLayer},
        connections::{self, ConnectionLimits, SideListener},
        envoy::{CheckApi, RouteTable},
        grpc::{AuthorizationApi, CallerAuthLayer, TokenApi},
        telemetry::GrpcTelemetryLayer,
    },
};

/// The health service name that is SERVING whenever the process serves: for liveness
/// probes, which must not depend on the database.
pub const LIVENESS_SERVICE: &str = "liveness";

/// Health service names that follow the store.
pub const STORE_BOUND_SERVICES: [&str; 4] = [
    "",
    "casola.auth.v1.TokenService",
    "casola.auth.v1.AuthorizationService",
    "envoy.service.auth.v3.Authorization",
];

/// Streams one connection's peer may have refused or reset for its own faults over the
/// connection's life, streams opened past `limits.max_concurrent_streams` among them; past
/// it the connection is closed with GOAWAY ENHANCE_YOUR_CALM. hyper's default, set here on
/// purpose: a client that honours the server's SETTINGS never meets it (docs/reliability.md,
/// "Overload: deadlines and shedding").
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad argon2 parameters.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The argon2 pools' threads could not be started.
    #[error("starting the argon2 threads: {0}")]
    Threads(#[source] std::io::Error),
    /// Anything else during start-up.
    #[error("{0}")]
    Other(String),
}

/// Which store the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// In memory: nothing is kept.
    Memory,
    /// Postgres.
    Postgres,
}

/// The domain services over one store.
#[derive(Clone)]
pub struct Services {
    /// The store.
    pub store: Arc<dyn TokenStore>,
    /// Which store.
    pub kind: StoreKind,
    /// The decision path.
    pub authorizer: Authorizer,
    /// The token lifecycle.
    pub manager: TokenManager,
    /// Pending last-used times.
    pub last_used: LastUsed,
}

fn total_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(4 * 1024 * 1024)
}

impl Services {
    /// Opens the configured store (migrating first when asked) and builds the services.
    pub async fn open(config: &Config) -> Result<Self, StartError> {
        let catalog = Arc::new(config.catalog()?);
        let hasher = TokenHasher::new(config.argon2)?;
        let (store, kind): (Arc<dyn TokenStore>, _) = match &config.database_url {
            None => (Arc::new(MemoryStore::new()), StoreKind::Memory),
            Some(url) => {
                if config.migrate {
                    let applied =
                        run_migrations(url.expose(), config.store.tls_ca_file.as_deref()).await?;
                    tracing::info!(applied = applied.len(), "migrations applied");
                }
                let store = PgStore::new(
                    url.expose(),
                    PoolOptions {
                        max_size: config.store.pool_size,
                        acquire_timeout: Duration::from_millis(config.store.acquire_timeout_ms),
                        tls_ca_file: config.store.tls_ca_file.clone(),
                    },
                )?;
                (Arc::new(store), StoreKind::Postgres)
            }
        };
        let system = match kind {
            StoreKind::Memory => "memory",
            StoreKind::Postgres => "postgresql",
        };
        let store: Arc<dyn TokenStore> = Arc::new(TimedStore::new(store, system));
        let machine = VerifyPoolOptions::from_machine(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            total_memory_kib(),
            config.argon2.memory_kib,
        );
        let workers = config.verify.workers.unwrap_or(machine.workers);
        let pool = VerifyPool::new(VerifyPoolOptions {
            workers,
            queue: config.verify.queue.unwrap_or(workers * 64),
        })
        .map_err(StartError::Threads)?;
        // Hashing for creates has its own workers and queue: a create flood fills this
        // queue, never the gate's (issue 11: 250 creates in flight refused fresh tokens).
        let create_pool = VerifyPool::new(VerifyPoolOptions {
            workers: config.verify.create_workers,
            queue: config.verify.create_queue,
        })
        .map_err(StartError::Threads)?
        .named("create")
        .refusals_counted_as(telemetry::metrics::limits::CREATE_QUEUE);
        let fairness = FairnessLimits::new(config.limits.fairness());
        let last_used = LastUsed::new();
        // In memory, revocations are in-process: the "listener" is always up.
        let cache = TokenCache::new(config.cache, kind == StoreKind::Memory);
        let authorizer = Authorizer::new(
            store.clone(),
            catalog.clone(),
            hasher.clone(),
            pool,
            last_used.clone(),
            cache.clone(),
            ColdLimits {
                fairness: fairness.clone(),
                max_cold_reads: config.limits.max_cold_reads,
            },
        );
        let manager =
            TokenManager::new(store.clone(), catalog, hasher, create_pool, cache, fairness)
                .with_report_slots(config.reports.max_in_progress)
                .with_expires_soon(config.expiry.soon());
        Ok(Self {
            store,
            kind,
            authorizer,
            manager,
            last_used,
        })
    }
}

/// A running server.
pub struct Running {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound admin HTTP address.
    pub admin_addr: SocketAddr,
    /// The bound console address, when the console is enabled.
    pub console_addr: Option<SocketAddr>,
    /// With the in-memory store: a token with admin-full + tokens:issue, for local use.
    pub bootstrap_token: Option<PlainToken>,
    services: Services,
    health: HealthReporter,
    grace: Duration,
    stop: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    admin: JoinHandle<()>,
    console: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

async fn set_store_bound(health: &HealthReporter, status: ServingStatus) {
    for name in STORE_BOUND_SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// The gRPC router with every service, the telemetry layer around them all.
type GrpcRouter = Router<Stack<AdmissionLayer, Stack<GrpcTelemetryLayer, Identity>>>;

/// What the console's gRPC-Web serves: the service stacks of the gRPC port (caller
/// authentication included) and its telemetry layer.
struct ConsoleApi {
    services: tonic::service::Routes,
    telemetry: GrpcTelemetryLayer,
}

/// The runtime the binary serves on: tokio's multi-threaded scheduler, one worker per core,
/// with the global queue visited every second task instead of every few dozen.
///
/// Why (issue 11, docs/reliability.md "Overload"): hyper runs every HTTP/2 stream as a task
/// of its own. Under a flood a worker's local queue (256 tasks) overflows into the global
/// queue, which tokio by default visits only every few dozen tasks: the streams that landed
/// there waited hundreds of milliseconds behind the ones that did not, and were answered OK
/// long after their deadline while the median stayed at 5 ms. Every second task keeps the
/// two queues' waits about equal. Every task (1) starved the local queues instead: with
/// 2,048 streams some waited seconds. Measured with `scripts/overload.py` (10,240 streams,
/// 200 ms deadlines): answers after their deadline 13.3 % -> 0, the probe's p99 499 ->
/// 137 ms, peak RSS 110 -> 70 MiB; unloaded throughput unchanged.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .global_queue_interval(2)
        .build()
}

/// Starts serving per `config`.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let config = safe_defaults(config)?;
    let metrics = telemetry::metrics::install();
    let services = Services::open(&config).await?;
    let bootstrap_token = match services.kind {
        StoreKind::Memory => {
            tracing::warn!(
                "no database configured: using the in-memory store, nothing is kept across restarts"
            );
            Some(bootstrap(&services).await?)
        }
        StoreKind::Postgres => None,
    };
    let (health, health_service) = health().await;
    let (router, console_api) = grpc_router(&config, &services, health_service)?;
    let (listener, grpc_addr) = bind(config.listen).await?;
    let (admin_listener, admin_addr) = bind(config.admin_listen).await?;
    let console_listener = match config.console.enabled {
        true => Some(bind(config.console.listen).await?),
        false => None,
    };
    let console_addr = console_listener.as_ref().map(|(_, addr)| *addr);
    let side_listener = |listener| {
        SideListener::new(
            listener,
            config.limits.side_max_connections,
            Duration::from_millis(config.limits.side_idle_timeout_ms),
        )
    };

    let (stop, stopped) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let connections = ConnectionLimits {
        max_connections: connections::effective_max_connections(
            config.limits.max_connections,
            connections::raise_open_file_limit(),
        ),
        handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
    };
    let grpc = tokio::spawn(serve_grpc(router, listener, connections, stopped.clone()));
    let console = console_listener.map(|(listener, _)| {
        tokio::spawn(crate::console::serve(
            side_listener(listener),
            console_api.services,
            console_api.telemetry,
            stopped.clone(),
        ))
    });
    let admin = tokio::spawn(crate::admin::serve(
        side_listener(admin_listener),
        AdminState {
            ready: ready.clone(),
            metrics: metrics.clone(),
            store: services.store.clone(),
        },
        stopped.clone(),
    ));
    let background = spawn_background(&config, &services, &health, ready, metrics, &stop);
    tracing::info!(%grpc_addr, %admin_addr, console_addr = ?console_addr, store = ?services.kind, "casola-auth serving");
    Ok(Running {
        grpc_addr,
        admin_addr,
        console_addr,
        bootstrap_token,
        services,
        health,
        grace: config.shutdown_grace(),
        stop,
        grpc,
        admin,
        console,
        background,
    })
}

/// The health service: store-bound names NOT_SERVING until the store answers, liveness
/// SERVING from the start.
async fn health() -> (HealthReporter, HealthServer<impl Health>) {
    let (health, service) = tonic_health::server::health_reporter();
    set_store_bound(&health, ServingStatus::NotServing).await;
    health
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    (health, service)
}

/// The tasks beside the servers: store health, the last-used flush, the expiry sweep,
/// metrics upkeep, the
/// change-log poller and (on Postgres) the revocation listener.
fn spawn_background(
    config: &Config,
    services: &Services,
    health: &HealthReporter,
    ready: Arc<AtomicBool>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    stop: &watch::Sender<bool>,
) -> Vec<JoinHandle<()>> {
    let mut background = vec![
        tokio::spawn(watch_store_health(
            services.store.clone(),
            health.clone(),
            ready,
            Duration::from_millis(config.health_interval_ms.max(100)),
            stop.subscribe(),
        )),
        tokio::spawn(flush_last_used(
            services.clone(),
            Duration::from_millis(config.last_used.flush_interval_ms.max(100)),
            stop.subscribe(),
        )),
        tokio::spawn(sweep_expiries(
            services.store.clone(),
            Duration::from_millis(config.expiry.sweep_interval_ms.max(100)),
            stop.subscribe(),
        )),
        tokio::spawn(metrics_upkeep(
            metrics,
            services.authorizer.clone(),
            stop.subscribe(),
        )),
    ];
    // The listener nudges the poller when it reconnects: catch up at once.
    let nudge = Arc::new(tokio::sync::Notify::new());
    background.push(tokio::spawn(crate::store::changes::run(
        services.store.clone(),
        services.authorizer.cache().clone(),
        PollerOptions {
            interval: Duration::from_millis(config.cache.poll_interval_ms.max(10)),
            ..PollerOptions::default()
        },
        nudge.clone(),
        stop.subscribe(),
    )));
    background.extend(spawn_revocation_listener(config, services, stop, nudge));
    background
}

/// Every gRPC service: health, reflection (v1 for current clients, v1alpha for grpcurl
/// 1.8.6 and other older ones), TokenService behind caller authentication,
/// AuthorizationService and Envoy's Check; and the console's share of them.
fn grpc_router(
    config: &Config,
    services: &Services,
    health_service: HealthServer<impl Health>,
) -> Result<(GrpcRouter, ConsoleApi), StartError> {
    let routes = RouteTable::from_config(&config.envoy, services.authorizer.catalog())
        .map_err(|e| StartError::Other(format!("envoy route table: {e}")))?;
    config
        .envoy
        .check_explain(services.authorizer.catalog())
        .map_err(StartError::Other)?;
    let reflection = proto::reflection;
    let reflection_error = |e| StartError::Other(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let grpc_telemetry = GrpcTelemetryLayer::new(&[
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        proto::ENVOY_EXT_AUTHZ_FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])
    .map_err(|e| StartError::Other(format!("descriptor sets: {e}")))?;

    let max = config.max_message_bytes;
    let token_service = CallerAuthLayer::new(services.authorizer.clone()).layer(
        TokenServiceServer::new(TokenApi::new(
            services.manager.clone(),
            config.reports.clone(),
        ))
        .max_decoding_message_size(max),
    );
    let authorization_service = AuthorizationServiceServer::new(
        AuthorizationApi::new(services.authorizer.clone()).with_expires_soon(config.expiry.soon()),
    )
    .max_decoding_message_size(max);
    let check_service = CheckApi::new(services.authorizer.clone(), routes, config.envoy.clone())
        .into_server()
        .max_decoding_message_size(max);
    let console = ConsoleApi {
        services: tonic::service::Routes::new(token_service.clone())
            .add_service(authorization_service.clone()),
        telemetry: grpc_telemetry.clone(),
    };
    let limits = config.limits;
    let router = Server::builder()
        // A dead peer's connection is found and closed: a PING every 30 s, 20 s to answer.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // Bounds per connection (streams, header bytes); admission bounds the total.
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        // h2's default (20) takes a saturated gateway's burst of timeouts for a reset flood.
        .http2_max_pending_accept_reset_streams(Some(
            limits.max_pending_accept_reset_streams as usize,
        ))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        // Telemetry outside admission: shed and late calls are counted and logged too.
        .layer(grpc_telemetry)
        .layer(AdmissionLayer::new(Admission {
            max_in_flight: limits.max_in_flight,
            decision_deadline: Duration::from_millis(limits.decision_deadline_ms.max(1)),
        }))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(token_service)
        .add_service(authorization_service)
        .add_service(check_service);
    Ok((router, console))
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;
    Ok((listener, bound))
}

async fn serve_grpc(
    router: GrpcRouter,
    listener: TcpListener,
    limits: ConnectionLimits,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    // Our own accept loop: the connection cap and the handshake timeout (and nodelay).
    let incoming = connections::incoming(listener, limits, stopped.clone());
    router
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
}

/// The start-up safety rules of issue 16: no in-memory store (whose bootstrap admin token
/// is printed) on a non-loopback address unless `demo` says so, and the TLS mode to
/// Postgres made explicit: enforced with `store.require_tls`, and logged either way.
pub fn safe_defaults(mut config: Config) -> Result<Config, StartError> {
    if config.database_url.is_none() && !config.listen.ip().is_loopback() && !config.demo {
        return Err(StartError::Other(format!(
            "refusing to start the in-memory store on the non-loopback address {}: it would \
             print an admin token into the logs and keep nothing. Set a database URL \
             (DATABASE_URL), listen on 127.0.0.1, or, for a throwaway demo, set demo = true \
             (CASOLA_AUTH_DEMO=true)",
            config.listen
        )));
    }
    let roots = match &config.store.tls_ca_file {
        Some(path) => format!("the CA in {}", path.display()),
        None => "the Mozilla roots".to_owned(),
    };
    for (key, mode) in store_tls(&mut config)? {
        log_tls_mode(key, mode, &roots);
    }
    Ok(config)
}

/// Applies `store.require_tls` to the database URLs of `config` (appending `sslmode=require`
/// where the URL says nothing, refusing a URL that asks for another mode) and answers the
/// TLS mode in force for each URL. The server and the CLI's database commands both go
/// through it, so no path to Postgres skips the rule.
pub fn store_tls(config: &mut Config) -> Result<Vec<(&'static str, &'static str)>, StartError> {
    let require = config.store.require_tls;
    let mut modes = Vec::new();
    for (key, url) in [
        ("database_url", &mut config.database_url),
        ("listen_database_url", &mut config.listen_database_url),
    ] {
        let Some(current) = url.as_ref() else {
            continue;
        };
        let raw = current.expose();
        let mode = raw
            .parse::<tokio_postgres::Config>()
            .map(|c| c.get_ssl_mode())
            .map_err(|_| StartError::Other(format!("{key} is not a Postgres URL")))?;
        let given = raw.contains("sslmode=");
        let mode = match (mode, given, require) {
            (tokio_postgres::config::SslMode::Require, _, _) => "require",
            (_, false, true) => {
                // Appended last, so it wins over the URL's defaults.
                let sep = if !raw.contains("://") {
                    " "
                } else if raw.contains('?') {
                    "&"
                } else {
                    "?"
                };
                *url = Some(DatabaseUrl::new(format!("{raw}{sep}sslmode=require")));
                "require"
            }
            (_, true, true) => {
                return Err(StartError::Other(format!(
                    "store.require_tls is set (CASOLA_AUTH_STORE__REQUIRE_TLS, the Helm \
                     chart's database.tls) but {key} asks for another sslmode: use \
                     sslmode=require, or turn store.require_tls off"
                )));
            }
            (tokio_postgres::config::SslMode::Disable, _, false) => "disable",
            (_, _, false) => "prefer",
        };
        modes.push((key, mode));
    }
    Ok(modes)
}

/// Says at start-up which TLS mode is in force towards Postgres for the URL `key`.
fn log_tls_mode(key: &str, mode: &str, roots: &str) {
    match mode {
        "require" => tracing::info!(
            url = key,
            tls = "require",
            "TLS to Postgres required, certificate and host name verified against {roots}"
        ),
        "disable" => tracing::warn!(
            url = key,
            tls = "disable",
            "TLS to Postgres disabled: the connection is plaintext"
        ),
        _ => tracing::warn!(
            url = key,
            tls = "prefer",
            "TLS to Postgres only if the server offers it (verified against {roots}), \
             else plaintext, which anyone on the path can force: set sslmode=require \
             or store.require_tls"
        ),
    }
}

/// On Postgres: the task that hears revocations from every replica.
fn spawn_revocation_listener(
    config: &Config,
    services: &Services,
    stop: &watch::Sender<bool>,
    nudge: Arc<tokio::sync::Notify>,
) -> Option<JoinHandle<()>> {
    let url = config
        .listen_database_url
        .as_ref()
        .or(config.database_url.as_ref())?;
    metrics::gauge!(REVOCATION_LISTENER_UP).set(0.0);
    Some(tokio::spawn(listener::run(
        url.expose().to_owned(),
        CacheSink(services.authorizer.cache().clone(), nudge),
        ListenerOptions {
            tls_ca_file: config.store.tls_ca_file.clone(),
            ..ListenerOptions::default()
        },
        stop.subscribe(),
    )))
}

/// Revocation notices into the verified-token cache; a reconnect nudges the change poller.
struct CacheSink(TokenCache, Arc<tokio::sync::Notify>);

impl RevocationSink for CacheSink {
    fn connected(&self) {
        self.0.listener_connected();
        self.1.notify_one();
        metrics::gauge!(REVOCATION_LISTENER_UP).set(1.0);
    }

    fn revoked(&self, lookup_id: crate::token::LookupId) {
        self.0.revoked(lookup_id);
        metrics::counter!(REVOCATION_NOTICES_TOTAL).increment(1);
    }

    fn disconnected(&self) {
        self.0.listener_disconnected();
        metrics::gauge!(REVOCATION_LISTENER_UP).set(0.0);
        metrics::counter!(REVOCATION_LISTENER_RECONNECTS_TOTAL).increment(1);
    }
}

async fn bootstrap(services: &Services) -> Result<PlainToken, StartError> {
    let created = services
        .manager
        .create(
            &Caller::Operator,
            &Origin::default(),
            CreateRequest {
                name: "bootstrap (in-memory store)".into(),
                description: "Printed at start-up for local use; gone when the process stops"
                    .into(),
                preset: "admin-full".into(),
                scopes: vec![ADMIN_WRITE.into(), TOKENS_ISSUE.into()],
                org_id: "local".into(),
                user_id: "admin".into(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| StartError::Other(format!("creating the bootstrap token: {e}")))?;
    Ok(created.token)
}

async fn watch_store_health(
    store: Arc<dyn TokenStore>,
    health: HealthReporter,
    ready: Arc<AtomicBool>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut was_ok = None;
    loop {
        let ok = match tokio::time::timeout(every, store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if was_ok != Some(false) {
                    tracing::warn!(error = %e, "store health check failed");
                }
                false
            }
            Err(_) => false,
        };
        if was_ok != Some(ok) {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_store_bound(&health, status).await;
            ready.store(ok, Ordering::Relaxed);
            tracing::info!(serving = ok, "store health changed");
            was_ok = Some(ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

async fn flush_last_used(services: Services, every: Duration, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        match services.last_used.flush(services.store.as_ref()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(tokens = n, "last_used_at flushed"),
            Err(e) => tracing::warn!(error = %e, "last_used_at flush failed; will retry"),
        }
    }
}

/// Records reached expiries in the audit trail, once per interval (and once at start-up).
/// Every replica sweeps; the store writes each expiry exactly once whoever sweeps first,
/// and each sweep reads only what expired since the last recorded expiry.
async fn sweep_expiries(
    store: Arc<dyn TokenStore>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        match store.record_expiries(crate::store::now_micros()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tokens = n, "expiries recorded in the audit trail"),
            Err(e) => tracing::warn!(error = %e, "recording expiries failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Drains histogram samples into their buckets between scrapes, so memory stays bounded
/// when nobody scrapes; sweeps the cache's idle entries and the fairness limiters' keys.
async fn metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    authorizer: Authorizer,
    mut stopped: watch::Receiver<bool>,
) {
    let cache = authorizer.cache();
    loop {
        // The cache's idle bound: the sweep rate-limits itself.
        cache.sweep_idle();
        // The limiters forget sources and callers whose allowance is full again.
        authorizer.fairness().sweep();
        metrics::gauge!(CACHE_ENTRIES).set(cache.entry_count() as f64);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

impl Running {
    /// The domain services, for tests and tools running in-process.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Graceful shutdown: health NOT_SERVING at once, in-flight calls drain for up to the
    /// grace period, pending last-used times are flushed.
    pub async fn shutdown(self) {
        set_store_bound(&self.health, ServingStatus::NotServing).await;
        self.health
            .set_service_status(LIVENESS_SERVICE, ServingStatus::NotServing)
            .await;
        let _ = self.stop.send(true);
        match tokio::time::timeout(self.grace, self.grpc).await {
            Ok(Ok(Ok(()))) => tracing::info!("gRPC server drained"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server error"),
            Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
            Err(_) => tracing::warn!(grace = ?self.grace, "drain timed out; closing open calls"),
        }
        for task in self.background {
            let _ = task.await;
        }
        if let Err(e) = self
            .services
            .last_used
            .flush(self.services.store.as_ref())
            .await
        {
            tracing::warn!(error = %e, "final last_used_at flush failed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin).await;
        if let Some(console) = self.console {
            let _ = tokio::time::timeout(Duration::from_secs(1), console).await;
        }
        tracing::info!("casola-auth stopped");
    }
}
