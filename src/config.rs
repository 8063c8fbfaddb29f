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
//! | `argon2.memory_kib` / `iterations` / `parallelism` | 19456 / 2 / 1 | argon2id cost |
//! | `verify.workers` / `verify.queue` | cores (bounded by memory) / 64 x workers | argon2 pool |
//! | `store.pool_size` / `store.acquire_timeout_ms` | 16 / 3000 | Postgres pool |
//! | `store.tls_ca_file` | none (Mozilla roots) | CA for TLS to Postgres (`sslmode` in the URL) |
//! | `last_used.flush_interval_ms` | 5000 | write-behind period of last_used_at |
//! | `cache.max_entries` / `ttl_seconds` / `negative_ttl_ms` / `max_staleness_seconds` | 100000 / 60 / 1000 / 30 | verified-token cache |
//! | `catalog.file` | none | operator scope catalog (TOML), added to the defaults |
//! | `envoy.*` | see [`EnvoyConfig`] | ext_authz Check |
//! | `console.enabled` / `console.listen` | true / `127.0.0.1:8088` | the API Tokens page and its gRPC-Web endpoints (docs/console.md) |

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use secrecy::{ExposeSecret, SecretString};

use crate::{
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

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Text,
    /// One JSON object per line, for production.
    Json,
}

/// argon2 pool sizes; unset values come from the machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Verifies at once.
    pub workers: Option<usize>,
    /// Verifies waiting before refusals.
    pub queue: Option<usize>,
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            pool_size: 16,
            acquire_timeout_ms: 3000,
            tls_ca_file: None,
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

/// The verified-token cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Most verified tokens held.
    pub max_entries: u64,
    /// How long a verified token is trusted without a store read (backstop for a missed
    /// revocation notice).
    pub ttl_seconds: u64,
    /// The verify-slot interval per lookup id after a wrong secret.
    pub negative_ttl_ms: u64,
    /// How long cached answers may still be served while the revocation listener is down.
    pub max_staleness_seconds: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            ttl_seconds: 60,
            negative_ttl_ms: 1000,
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
    /// The web console.
    pub console: ConsoleConfig,
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
            console: ConsoleConfig::default(),
        }
    }
}

/// The top-level keys of [`Config`], the only ones taken from `CASOLA_AUTH_*` variables.
const TOP_LEVEL_KEYS: [&str; 17] = [
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
    "console",
];

/// Flag overrides for [`Config::load`] when there are none.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NoOverrides {}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A key has a bad value (the message names the key and its source).
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
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
        figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))
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

    #[test]
    fn a_missing_config_file_is_an_error() {
        assert!(matches!(
            Config::load(Some(Path::new("/nonexistent/casola.toml")), NoOverrides {}),
            Err(ConfigError::MissingFile(_))
        ));
    }
}
