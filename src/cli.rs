//! The `casola-auth` command line: `serve`, and store commands for bootstrap and
//! emergencies (`migrate`, `token create|list|revoke`, `scopes`) that talk to the
//! configured store directly.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::{
    config::{Config, DatabaseUrl},
    manage::{Caller, CreateRequest, ListRequest},
    server::{self, Services},
    store::postgres::run_migrations,
    telemetry,
    token::hash::TokenHasher,
    transport::{envoy::RouteTable, grpc::token_to_proto},
};

/// casola-auth: API tokens and authorization for the Casola platform.
#[derive(Debug, Parser)]
#[command(name = "casola-auth", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command shares.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Configuration file (TOML).
    #[arg(long, env = "CASOLA_AUTH_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Postgres URL; without one the server uses the in-memory store.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (TokenService, AuthorizationService, Envoy ext_authz, health, reflection).
    Serve {
        /// gRPC listen address [env CASOLA_AUTH_LISTEN; default 127.0.0.1:50051].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin HTTP listen address [env CASOLA_AUTH_ADMIN_LISTEN; default 127.0.0.1:9090].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Run pending migrations before serving.
        #[arg(long)]
        migrate: bool,
        /// Shared options.
        #[command(flatten)]
        common: Common,
    },
    /// Run pending database migrations and exit.
    Migrate {
        /// Shared options.
        #[command(flatten)]
        common: Common,
    },
    /// Manage tokens directly in the store.
    Token {
        /// What to do with tokens.
        #[command(subcommand)]
        command: TokenCommand,
        /// Shared options.
        #[command(flatten)]
        common: Common,
    },
    /// Check a configuration (file, environment, scope catalog, Envoy route table, argon2
    /// parameters) without starting anything; prints a summary without secrets.
    CheckConfig {
        /// Shared options.
        #[command(flatten)]
        common: Common,
    },
    /// Print the scope catalog and presets.
    Scopes {
        /// Shared options.
        #[command(flatten)]
        common: Common,
    },
}

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints the secret alone on stdout, once.
    Create {
        /// Owner organisation.
        #[arg(long)]
        org: String,
        /// Owner user.
        #[arg(long)]
        user: String,
        /// Label.
        #[arg(long)]
        name: String,
        /// Notes.
        #[arg(long, default_value = "")]
        description: String,
        /// Preset id (user-read, user-full, admin-read, admin-full, ...).
        #[arg(long)]
        preset: Option<String>,
        /// Extra scope (repeatable); tokens:issue is allowed here.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Days to expiry; never expires without it.
        #[arg(long)]
        expires_in_days: Option<i32>,
    },
    /// List tokens of an organisation (every user) or one user.
    List {
        /// Organisation.
        #[arg(long)]
        org: String,
        /// One user only.
        #[arg(long)]
        user: Option<String>,
        /// Include revoked tokens.
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke a token by id, at once and for good.
    Revoke {
        /// Token id (UUID).
        id: String,
    },
}

#[derive(Serialize, Default)]
struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<DatabaseUrl>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    migrate: bool,
}

fn load(common: &Common, overrides: Overrides) -> Result<Config, String> {
    let overrides = Overrides {
        database_url: common.database_url.clone().map(DatabaseUrl::new),
        ..overrides
    };
    Config::load(common.config.as_deref(), overrides).map_err(|e| e.to_string())
}

/// Runs the command line.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("casola-auth: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn store_services(common: &Common) -> Result<Services, String> {
    let config = load(common, Overrides::default())?;
    telemetry::init_logs(config.log_format).map_err(|e| e.to_string())?;
    if config.database_url.is_none() {
        return Err(
            "this command needs a database: pass --database-url or set DATABASE_URL".into(),
        );
    }
    Services::open(&config).await.map_err(|e| e.to_string())
}

async fn dispatch(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            listen,
            admin_listen,
            migrate,
            common,
        } => {
            let config = load(
                &common,
                Overrides {
                    listen,
                    admin_listen,
                    migrate,
                    ..Default::default()
                },
            )?;
            let telemetry = telemetry::init(config.log_format).map_err(|e| e.to_string())?;
            serve(config, telemetry).await
        }
        Command::Migrate { common } => {
            let config = load(&common, Overrides::default())?;
            telemetry::init_logs(config.log_format).map_err(|e| e.to_string())?;
            let url = config
                .database_url
                .ok_or("migrate needs a database: pass --database-url or set DATABASE_URL")?;
            let applied = run_migrations(url.expose(), config.store.tls_ca_file.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("applied {} migration(s)", applied.len());
            for version in applied {
                eprintln!("  {version}");
            }
            Ok(())
        }
        Command::CheckConfig { common } => {
            let config = load(&common, Overrides::default())?;
            let catalog = config.catalog().map_err(|e| e.to_string())?;
            TokenHasher::new(config.argon2).map_err(|e| e.to_string())?;
            RouteTable::from_config(&config.envoy, &catalog)
                .map_err(|e| format!("envoy route table: {e}"))?;
            let scopes: usize = catalog.categories().iter().map(|c| c.scopes.len()).sum();
            println!("configuration ok");
            println!("  listen {} / admin {}", config.listen, config.admin_listen);
            println!(
                "  store: {}",
                if config.database_url.is_some() {
                    "postgres"
                } else {
                    "in-memory"
                }
            );
            println!(
                "  argon2id m={} KiB t={} p={}",
                config.argon2.memory_kib, config.argon2.iterations, config.argon2.parallelism
            );
            println!(
                "  catalog: {scopes} scopes, {} presets",
                catalog.presets().len()
            );
            println!("  envoy: {} fallback routes", config.envoy.routes.len());
            Ok(())
        }
        Command::Scopes { common } => {
            let config = load(&common, Overrides::default())?;
            let catalog = config.catalog().map_err(|e| e.to_string())?;
            for category in catalog.categories() {
                println!("{} - {}", category.name, category.description);
                for scope in &category.scopes {
                    let implies = if scope.implies.is_empty() {
                        String::new()
                    } else {
                        format!(" (implies {})", scope.implies.join(", "))
                    };
                    println!("  {:<16} {}{implies}", scope.name, scope.description);
                }
            }
            println!("presets:");
            for preset in catalog.presets() {
                println!(
                    "  {:<12} {:<18} {}",
                    preset.id,
                    preset.label,
                    preset.scopes.join(", ")
                );
            }
            Ok(())
        }
        Command::Token { command, common } => {
            let services = store_services(&common).await?;
            token_command(&services, command).await
        }
    }
}

async fn token_command(services: &Services, command: TokenCommand) -> Result<(), String> {
    let now = chrono::Utc::now();
    match command {
        TokenCommand::Create {
            org,
            user,
            name,
            description,
            preset,
            scopes,
            expires_in_days,
        } => {
            let created = services
                .manager
                .create(
                    &Caller::Operator,
                    CreateRequest {
                        name,
                        description,
                        preset: preset.unwrap_or_default(),
                        scopes,
                        expires_in_days,
                        org_id: org,
                        user_id: user,
                    },
                )
                .await
                .map_err(describe)?;
            let t = token_to_proto(&created.record, now);
            eprintln!(
                "created token {} ({}) for {}/{} with scopes {}; the secret below is shown once:",
                t.id,
                t.prefix,
                t.org_id,
                t.user_id,
                t.scopes.join(", ")
            );
            println!("{}", created.token.expose());
            Ok(())
        }
        TokenCommand::List {
            org,
            user,
            include_revoked,
        } => {
            let mut page_token = String::new();
            loop {
                let page = services
                    .manager
                    .list(
                        &Caller::Operator,
                        ListRequest {
                            page_size: 500,
                            page_token,
                            user_id: user.clone().unwrap_or_else(|| "-".into()),
                            include_revoked,
                            org_id: org.clone(),
                        },
                    )
                    .await
                    .map_err(describe)?;
                for record in &page.tokens {
                    let t = token_to_proto(record, now);
                    let status = crate::proto::TokenStatus::try_from(t.status)
                        .map(|s| {
                            s.as_str_name()
                                .trim_start_matches("TOKEN_STATUS_")
                                .to_ascii_lowercase()
                        })
                        .unwrap_or_default();
                    println!(
                        "{}\t{}\t{}\t{}/{}\t{}\t{}",
                        t.id,
                        t.prefix,
                        t.name,
                        t.org_id,
                        t.user_id,
                        status,
                        t.scopes.join(",")
                    );
                }
                match page.next_page_token {
                    Some(next) => page_token = next,
                    None => return Ok(()),
                }
            }
        }
        TokenCommand::Revoke { id } => {
            let record = services
                .manager
                .revoke(&Caller::Operator, &id)
                .await
                .map_err(describe)?;
            eprintln!(
                "revoked token {} ({})",
                record.id,
                crate::token::display_prefix(record.lookup_id.as_str())
            );
            Ok(())
        }
    }
}

fn describe(err: crate::error::Error) -> String {
    match err {
        crate::error::Error::InvalidArgument(violations) => violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

async fn serve(config: Config, telemetry: telemetry::Telemetry) -> Result<(), String> {
    let running = match server::start(config).await {
        Ok(running) => running,
        Err(e) => {
            telemetry.shutdown().await;
            return Err(e.to_string());
        }
    };
    if let Some(token) = &running.bootstrap_token {
        println!(
            "bootstrap token (local use only, in-memory store, admin-full + tokens:issue): {}",
            token.expose()
        );
    }
    // After the bootstrap token: its line stays the first on stdout.
    if let Some(addr) = running.console_addr {
        println!("console (API Tokens page): http://{addr}/");
    }
    shutdown_signal().await;
    tracing::info!("shutdown signal received; draining");
    running.shutdown().await;
    // Last: the spans of the drained calls are still to be exported.
    telemetry.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
