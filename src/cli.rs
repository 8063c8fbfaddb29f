//! The `casola-auth` command line: `serve`; store commands for bootstrap and emergencies
//! (`migrate`, `token create|list|get|update|revoke|rotate|revoke-all`, `events`) that talk
//! to the database directly; `scopes`, `check-config` and `completions`.
//!
//! Results go to stdout, as a table with a header row (`--output table`, the default) or as
//! JSON with stable keys (`--output json`); messages go to stderr. A closed stdout (`| head`)
//! ends a command quietly with status 0. Request errors name the flag (`--expires-in-days`),
//! not the API field.

mod output;

use std::{io, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{ArgGroup, Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use serde::Serialize;

pub use self::output::Format;
use self::output::{
    CatalogView, EventView, TokenView, emit, event_table, json, note, token_detail, token_table,
};
use crate::{
    config::{Config, DatabaseUrl, misspelt_variables},
    error::{Error, FieldViolation},
    event::Origin,
    manage::{
        Caller, CreateRequest, EventsRequest, ListRequest, RotateRequest, TokenManager,
        UpdateRequest,
    },
    server::{self, Services},
    store::{
        TokenRecord,
        postgres::{self, run_migrations},
    },
    telemetry,
    token::hash::TokenHasher,
    transport::envoy::RouteTable,
};

/// casola-auth: API tokens and authorization for the Casola platform.
#[derive(Debug, Parser)]
#[command(name = "casola-auth", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--config`, which every command reads.
#[derive(Debug, Args, Clone)]
pub struct ConfigFile {
    /// Configuration file (TOML); the environment and flags override it.
    #[arg(long, env = "CASOLA_AUTH_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `--database-url` for the commands that work on the database and need one.
#[derive(Debug, Args, Clone)]
pub struct Database {
    /// Postgres URL (required here: from this flag, DATABASE_URL or `database_url` in the
    /// configuration file).
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,
}

/// `--output`.
#[derive(Debug, Args, Clone, Copy)]
pub struct Output {
    /// Output format: a table with a header row, or JSON with stable keys and RFC 3339
    /// times.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (TokenService, AuthorizationService, Envoy ext_authz, health, reflection)
    /// and the admin HTTP port.
    Serve(ServeArgs),
    /// Run pending database migrations on Postgres and exit (there is nothing to migrate in
    /// memory: this command needs a database).
    Migrate {
        /// The database to migrate.
        #[command(flatten)]
        database: Database,
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Manage tokens directly in the Postgres database (for bootstrap and emergencies; no
    /// caller token needed, so guard access to the database URL).
    Token {
        /// What to do with tokens.
        #[command(subcommand)]
        command: TokenCommand,
        /// The database.
        #[command(flatten)]
        database: Database,
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Show the audit trail of one token or of an organisation, newest first, from the
    /// Postgres database (events never hold a secret).
    Events {
        /// Whose events.
        #[command(flatten)]
        args: EventsArgs,
        /// The database.
        #[command(flatten)]
        database: Database,
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Check a configuration (file, environment, scope catalog, Envoy route table, argon2
    /// parameters) without starting or connecting to anything; prints a summary without
    /// secrets.
    CheckConfig {
        /// Postgres URL, read as `serve` would read it; no connection is made.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
        database_url: Option<String>,
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print the scope catalog (defaults plus the operator's `catalog.file`) and presets.
    Scopes {
        /// The format.
        #[command(flatten)]
        output: Output,
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print a shell completion script, e.g. `casola-auth completions bash >
    /// /etc/bash_completion.d/casola-auth`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// gRPC listen address [env CASOLA_AUTH_LISTEN; default 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin HTTP listen address [env CASOLA_AUTH_ADMIN_LISTEN; default 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Run pending migrations before serving.
    #[arg(long)]
    pub migrate: bool,
    /// Postgres URL; without one, the server runs on an in-memory store that keeps nothing
    /// and prints a bootstrap token.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// The configuration file.
    #[command(flatten)]
    pub config: ConfigFile,
}

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token. The secret is printed once: alone on stdout, or as `token` in JSON.
    Create(CreateArgs),
    /// List the tokens of an organisation (every user) or of one user, newest first.
    List(ListArgs),
    /// Show one token (never its secret).
    Get {
        /// Token id (UUID).
        id: String,
        /// The format.
        #[command(flatten)]
        output: Output,
    },
    /// Rename a token or change its description; prints the token.
    #[command(group(ArgGroup::new("change").required(true).multiple(true)))]
    Update {
        /// Token id (UUID).
        id: String,
        /// New name.
        #[arg(long, group = "change")]
        name: Option<String>,
        /// New description (`--description ""` clears it).
        #[arg(long, group = "change")]
        description: Option<String>,
        /// The format.
        #[command(flatten)]
        output: Output,
    },
    /// Revoke a token by id, at once and for good.
    Revoke {
        /// Token id (UUID).
        id: String,
    },
    /// Replace a token with a new one (same name, description, scopes, owner and expiry);
    /// the old one keeps working for the overlap, then is revoked on every replica. The new
    /// secret is printed once.
    Rotate {
        /// Token id (UUID).
        id: String,
        /// How long the old token keeps working, e.g. `0s`, `30m`, `1h`, `7d` (at most 7
        /// days).
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
        overlap: Duration,
        /// Idempotency key: running the command again with the same key returns the same
        /// new token (without its secret) instead of making another.
        #[arg(long, value_name = "KEY", default_value = "")]
        request_id: String,
        /// The format.
        #[command(flatten)]
        output: Output,
    },
    /// Revoke every working token of one user, or of a whole organisation (offboarding),
    /// in one transaction; prints how many.
    RevokeAll {
        /// Organisation.
        #[arg(long)]
        org: String,
        /// One user; without it, every user of the organisation.
        #[arg(long)]
        user: Option<String>,
    },
}

/// `token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Owner organisation.
    #[arg(long)]
    pub org: String,
    /// Owner user.
    #[arg(long)]
    pub user: String,
    /// Label, e.g. "CI pipeline".
    #[arg(long)]
    pub name: String,
    /// Notes.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Preset id (user-read, user-full, admin-read, admin-full, or one of the catalog file).
    #[arg(long)]
    pub preset: Option<String>,
    /// Scope to grant (repeatable); tokens:issue may be granted here.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Days until the token expires (1 to 3650); without it, it never expires.
    // Negative numbers must reach the validator, not read as an unknown flag.
    #[arg(long, value_name = "DAYS", allow_negative_numbers = true)]
    pub expires_in_days: Option<i32>,
    /// A network the token may be used from, CIDR or address (repeatable, at most 32);
    /// without it, any network.
    #[arg(long = "allow-network", value_name = "CIDR")]
    pub allowed_networks: Vec<String>,
    /// A model the token may name, or a trailing-wildcard pattern like `llama-4-*`
    /// (repeatable, at most 32); without it, any model.
    #[arg(long = "allow-model", value_name = "MODEL")]
    pub allowed_models: Vec<String>,
    /// The format.
    #[command(flatten)]
    pub output: Output,
}

/// `token list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Organisation.
    #[arg(long)]
    pub org: String,
    /// One user only.
    #[arg(long)]
    pub user: Option<String>,
    /// Include revoked tokens.
    #[arg(long)]
    pub include_revoked: bool,
    /// The format.
    #[command(flatten)]
    pub output: Output,
}

/// `events`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("whose").required(true).args(["token", "org"])))]
pub struct EventsArgs {
    /// One token's events (token id, a UUID).
    #[arg(long, value_name = "ID")]
    pub token: Option<String>,
    /// Every event of an organisation's tokens.
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
    /// At most this many events, the newest.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: usize,
    /// The format.
    #[command(flatten)]
    pub output: Output,
}

/// Why a command stopped.
#[derive(Debug)]
enum Failure {
    /// Told to the operator on stderr; exit status 1.
    Message(String),
    /// The reader of stdout has gone (`| head`): nothing more to do or say.
    Closed,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::Message(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Self::Message(message.to_owned())
    }
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::BrokenPipe => Self::Closed,
            _ => Self::Message(format!("writing the output: {err}")),
        }
    }
}

type Outcome = Result<(), Failure>;

/// What a command says when the database has not been migrated.
const NO_SCHEMA: &str = "the database has no casola-auth schema: run `casola-auth migrate`";

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

fn load(
    file: &ConfigFile,
    database_url: Option<&String>,
    overrides: Overrides,
) -> Result<Config, String> {
    let overrides = Overrides {
        database_url: database_url.cloned().map(DatabaseUrl::new),
        ..overrides
    };
    let config = Config::load(file.config.as_deref(), overrides).map_err(|e| e.to_string())?;
    for warning in misspelt_variables(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
    {
        note(&format!("casola-auth: warning: {warning}"));
    }
    Ok(config)
}

/// Runs the command line.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(()) | Err(Failure::Closed) => ExitCode::SUCCESS,
        Err(Failure::Message(message)) => {
            note(&format!("casola-auth: {message}"));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Outcome {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate { database, config } => migrate(&config, &database).await,
        Command::Token {
            command,
            database,
            config,
        } => {
            let services = store_services(&config, &database).await?;
            token_command(&services.manager, command).await
        }
        Command::Events {
            args,
            database,
            config,
        } => {
            let services = store_services(&config, &database).await?;
            events(&services.manager, args).await
        }
        Command::CheckConfig {
            database_url,
            config,
        } => check_config(&config, database_url.as_ref()),
        Command::Scopes { output, config } => scopes(&config, output.output),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "casola-auth", &mut script);
            Ok(emit(&script)?)
        }
    }
}

/// Whether `migrate` has prepared the database, within the pool's connect patience.
async fn schema_present(config: &Config, url: &DatabaseUrl) -> Result<bool, String> {
    let patience =
        Duration::from_millis(config.store.acquire_timeout_ms).max(Duration::from_secs(5));
    let check = postgres::schema_present(url.expose(), config.store.tls_ca_file.as_deref());
    match tokio::time::timeout(patience, check).await {
        Ok(found) => found.map_err(|e| e.to_string()),
        Err(_) => Err(format!("the database did not answer within {patience:?}")),
    }
}

async fn store_services(file: &ConfigFile, database: &Database) -> Result<Services, Failure> {
    let mut config = load(file, database.database_url.as_ref(), Overrides::default())?;
    telemetry::init_logs(config.log_format).map_err(|e| e.to_string())?;
    // store.require_tls holds for the CLI's connections as for the server's.
    server::store_tls(&mut config).map_err(|e| e.to_string())?;
    let Some(url) = &config.database_url else {
        return Err(
            "this command needs a database: pass --database-url or set DATABASE_URL".into(),
        );
    };
    if !schema_present(&config, url).await? {
        return Err(NO_SCHEMA.into());
    }
    Ok(Services::open(&config).await.map_err(|e| e.to_string())?)
}

async fn migrate(file: &ConfigFile, database: &Database) -> Outcome {
    let mut config = load(file, database.database_url.as_ref(), Overrides::default())?;
    telemetry::init_logs(config.log_format).map_err(|e| e.to_string())?;
    server::store_tls(&mut config).map_err(|e| e.to_string())?;
    let url = config
        .database_url
        .ok_or("migrate needs a database: pass --database-url or set DATABASE_URL")?;
    let applied = run_migrations(url.expose(), config.store.tls_ca_file.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    note(&format!("applied {} migration(s)", applied.len()));
    for version in applied {
        note(&format!("  {version}"));
    }
    Ok(())
}

fn check_config(file: &ConfigFile, database_url: Option<&String>) -> Outcome {
    let config = load(file, database_url, Overrides::default())?;
    let catalog = config.catalog().map_err(|e| e.to_string())?;
    TokenHasher::new(config.argon2).map_err(|e| e.to_string())?;
    RouteTable::from_config(&config.envoy, &catalog)
        .map_err(|e| format!("envoy route table: {e}"))?;
    let scopes: usize = catalog.categories().iter().map(|c| c.scopes.len()).sum();
    let store = if config.database_url.is_some() {
        "postgres"
    } else {
        "in-memory"
    };
    let a = config.argon2;
    let summary = [
        "configuration ok".to_owned(),
        format!("  listen {} / admin {}", config.listen, config.admin_listen),
        format!("  store: {store}"),
        format!(
            "  argon2id m={} KiB t={} p={}",
            a.memory_kib, a.iterations, a.parallelism
        ),
        format!(
            "  catalog: {scopes} scopes, {} presets",
            catalog.presets().len()
        ),
        format!("  envoy: {} fallback routes", config.envoy.routes.len()),
    ];
    Ok(emit(summary.join("\n") + "\n")?)
}

fn scopes(file: &ConfigFile, format: Format) -> Outcome {
    let config = load(file, None, Overrides::default())?;
    let catalog = config.catalog().map_err(|e| e.to_string())?;
    let view = CatalogView::new(&catalog);
    Ok(emit(match format {
        Format::Table => view.render_tables(),
        Format::Json => json(&view),
    })?)
}

async fn token_command(manager: &TokenManager, command: TokenCommand) -> Outcome {
    let operator = &Caller::Operator;
    match command {
        TokenCommand::Create(args) => token_create(manager, args).await,
        TokenCommand::List(args) => token_list(manager, args).await,
        TokenCommand::Get { id, output } => {
            let record = manager.get(operator, &id).await.map_err(describe)?;
            print_token(manager, &record, output.output)
        }
        TokenCommand::Update {
            id,
            name,
            description,
            output,
        } => {
            // The mask names exactly the flags given, so `--description ""` clears it.
            let mut mask = Vec::new();
            if name.is_some() {
                mask.push("name".to_owned());
            }
            if description.is_some() {
                mask.push("description".to_owned());
            }
            let request = UpdateRequest {
                id,
                name: name.unwrap_or_default(),
                description: description.unwrap_or_default(),
                mask,
            };
            let record = manager
                .update(operator, &Origin::default(), request)
                .await
                .map_err(describe)?;
            print_token(manager, &record, output.output)
        }
        TokenCommand::Revoke { id } => {
            let record = manager
                .revoke(operator, &Origin::default(), &id)
                .await
                .map_err(describe)?;
            let view = TokenView::new(&record, chrono::Utc::now(), manager.expires_soon_window());
            note(&format!("revoked token {} ({})", view.id, view.prefix));
            Ok(())
        }
        TokenCommand::Rotate {
            id,
            overlap,
            request_id,
            output,
        } => token_rotate(manager, id, overlap, request_id, output.output).await,
        TokenCommand::RevokeAll { org, user } => {
            let user = user.unwrap_or_else(|| "-".into());
            let revoked = manager
                .revoke_all(operator, &Origin::default(), &org, &user)
                .await
                .map_err(describe)?;
            let whose = match user.as_str() {
                "-" => format!("organisation {org}"),
                user => format!("user {user} of organisation {org}"),
            };
            note(&format!("revoked {} tokens of {whose}", revoked.len()));
            Ok(emit(format!("{}\n", revoked.len()))?)
        }
    }
}

async fn token_rotate(
    manager: &TokenManager,
    id: String,
    overlap: Duration,
    request_id: String,
    format: Format,
) -> Outcome {
    let request = RotateRequest {
        id,
        overlap_seconds: i64::try_from(overlap.as_secs()).unwrap_or(i64::MAX),
        request_id,
    };
    let rotated = manager
        .rotate(&Caller::Operator, &Origin::default(), request)
        .await
        .map_err(describe)?;
    let now = chrono::Utc::now();
    let (old, new) = (
        TokenView::new(&rotated.old, now, manager.expires_soon_window()),
        TokenView::new(&rotated.new, now, manager.expires_soon_window()),
    );
    let until = old.revoked_at.clone().unwrap_or_default();
    match (format, &rotated.token) {
        (Format::Table, Some(token)) => {
            note(&format!(
                "rotated token {} ({}): it works until {until}; its replacement is {} ({}), and the secret below is shown once:",
                old.id, old.prefix, new.id, new.prefix
            ));
            Ok(emit(format!("{}\n", token.expose()))?)
        }
        (Format::Table, None) => {
            note(&format!(
                "token {} ({}) was already rotated with this request id: its replacement is {} ({}); the secret was shown then and is not shown again",
                old.id, old.prefix, new.id, new.prefix
            ));
            Ok(emit(format!("{}\n", new.id))?)
        }
        (Format::Json, token) => {
            /// A rotation: the new token (with its secret the first time), the old one.
            #[derive(Serialize)]
            struct RotatedView<'a> {
                #[serde(flatten)]
                new: &'a TokenView,
                #[serde(skip_serializing_if = "Option::is_none")]
                token: Option<&'a str>,
                secret_shown: bool,
                old_token: &'a TokenView,
            }
            let view = RotatedView {
                new: &new,
                token: token.as_ref().map(|t| t.expose()),
                secret_shown: token.is_some(),
                old_token: &old,
            };
            Ok(emit(json(&view))?)
        }
    }
}

fn print_token(manager: &TokenManager, record: &TokenRecord, format: Format) -> Outcome {
    let view = TokenView::new(record, chrono::Utc::now(), manager.expires_soon_window());
    Ok(emit(match format {
        Format::Table => token_detail(&view).render(),
        Format::Json => json(&view),
    })?)
}

async fn token_create(manager: &TokenManager, args: CreateArgs) -> Outcome {
    let request = CreateRequest {
        name: args.name,
        description: args.description,
        preset: args.preset.unwrap_or_default(),
        scopes: args.scopes,
        expires_in_days: args.expires_in_days,
        org_id: args.org,
        user_id: args.user,
        allowed_networks: args.allowed_networks,
        allowed_models: args.allowed_models,
    };
    let created = manager
        .create(&Caller::Operator, &Origin::default(), request)
        .await
        .map_err(describe)?;
    let view = TokenView::new(
        &created.record,
        chrono::Utc::now(),
        manager.expires_soon_window(),
    );
    match args.output.output {
        Format::Table => {
            note(&format!(
                "created token {} ({}) for {}/{} with scopes {}; the secret below is shown once:",
                view.id,
                view.prefix,
                view.org_id,
                view.user_id,
                view.scopes.join(", ")
            ));
            Ok(emit(format!("{}\n", created.token.expose()))?)
        }
        Format::Json => {
            /// The one output that carries a secret: the create response.
            #[derive(Serialize)]
            struct WithSecret<'a> {
                #[serde(flatten)]
                view: &'a TokenView,
                token: &'a str,
            }
            let with_secret = WithSecret {
                view: &view,
                token: created.token.expose(),
            };
            Ok(emit(json(&with_secret))?)
        }
    }
}

async fn token_list(manager: &TokenManager, args: ListArgs) -> Outcome {
    let now = chrono::Utc::now();
    let mut views = Vec::new();
    let mut page_token = String::new();
    // Bounded by the organisation's tokens; each page moves the cursor forward.
    loop {
        let request = ListRequest {
            page_size: 500,
            page_token,
            // `-`: every user of the organisation.
            user_id: args.user.clone().unwrap_or_else(|| "-".into()),
            include_revoked: args.include_revoked,
            org_id: args.org.clone(),
        };
        let page = manager
            .list(&Caller::Operator, request)
            .await
            .map_err(describe)?;
        views.extend(
            page.tokens
                .iter()
                .map(|r| TokenView::new(r, now, manager.expires_soon_window())),
        );
        match page.next_page_token {
            Some(next) => page_token = next,
            None => break,
        }
    }
    Ok(emit(match args.output.output {
        Format::Table => token_table(&views).render(),
        Format::Json => json(&views),
    })?)
}

async fn events(manager: &TokenManager, args: EventsArgs) -> Outcome {
    let mut views = Vec::new();
    let mut page_token = String::new();
    // Bounded by --limit; each page moves the cursor back in time.
    while views.len() < args.limit {
        let request = EventsRequest {
            token_id: args.token.clone().unwrap_or_default(),
            org_id: args.org.clone().unwrap_or_default(),
            page_size: i32::try_from((args.limit - views.len()).min(500)).unwrap_or(500),
            page_token,
        };
        let page = manager
            .events(&Caller::Operator, request)
            .await
            .map_err(describe)?;
        views.extend(page.events.iter().map(EventView::new));
        match page.next_page_token {
            Some(next) => page_token = next,
            None => break,
        }
    }
    views.truncate(args.limit);
    Ok(emit(match args.output.output {
        Format::Table => event_table(&views).render(),
        Format::Json => json(&views),
    })?)
}

/// A domain error for the operator, invalid fields named by their flags.
fn describe(err: Error) -> String {
    match err {
        Error::InvalidArgument(violations) => violations
            .iter()
            .map(|v: &FieldViolation| format!("{}: {}", flag_of(&v.field), v.description))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// The CLI's name for an API request field.
fn flag_of(field: &str) -> &str {
    match field {
        "org_id" => "--org",
        "user_id" => "--user",
        "name" => "--name",
        "description" => "--description",
        "preset" => "--preset",
        "scopes" => "--scope/--preset",
        "expires_in_days" => "--expires-in-days",
        "update_mask" => "--name/--description",
        "overlap_seconds" => "--overlap",
        "request_id" => "--request-id",
        "id" => "ID",
        "token_id" => "--token",
        f if f.starts_with("scopes[") => "--scope",
        f if f.starts_with("allowed_networks") => "--allow-network",
        f if f.starts_with("allowed_models") => "--allow-model",
        other => other,
    }
}

async fn serve(args: ServeArgs) -> Outcome {
    let overrides = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        migrate: args.migrate,
        ..Default::default()
    };
    let config = load(&args.config, args.database_url.as_ref(), overrides)?;
    let telemetry = telemetry::init(config.log_format).map_err(|e| e.to_string())?;
    let started = match refuse_unmigrated(&config).await {
        Ok(()) => server::start(config).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let running = match started {
        Ok(running) => running,
        Err(e) => {
            telemetry.shutdown().await;
            return Err(e.into());
        }
    };
    if let Some(token) = &running.bootstrap_token {
        let line = format!(
            "bootstrap token (local use only, in-memory store, admin-full + tokens:issue): {}\n",
            token.expose()
        );
        // A server whose stdout is gone keeps serving; only the token line is lost.
        if let Err(e) = emit(line) {
            tracing::warn!(error = %e, "could not print the bootstrap token to stdout");
        }
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

/// `serve` on a database that was never migrated would answer every call with an internal
/// error: refuse at start-up instead. A database that does not answer is no reason to
/// refuse (the server starts not ready and waits for it), so that case only warns.
async fn refuse_unmigrated(config: &Config) -> Result<(), String> {
    let (Some(url), false) = (&config.database_url, config.migrate) else {
        return Ok(());
    };
    match schema_present(config, url).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(NO_SCHEMA.into()),
        Err(cause) => {
            tracing::warn!(error = %cause, "could not check the database schema; starting anyway");
            Ok(())
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn field_violations_name_the_flags() {
        let err = Error::InvalidArgument(vec![
            FieldViolation::new("expires_in_days", "must be between 1 and 3650 days, is -5"),
            FieldViolation::new("scopes[1]", "unknown scope \"nope\""),
            FieldViolation::new("org_id", "must not be empty"),
        ]);
        assert_eq!(
            describe(err),
            "--expires-in-days: must be between 1 and 3650 days, is -5; \
             --scope: unknown scope \"nope\"; --org: must not be empty"
        );
    }

    #[test]
    fn negative_days_parse_as_a_value_for_the_validator() {
        let cli = Cli::try_parse_from([
            "casola-auth",
            "token",
            "create",
            "--org",
            "a",
            "--user",
            "u",
            "--name",
            "n",
            "--expires-in-days",
            "-5",
        ])
        .expect("a negative number is a value, not a flag");
        let Command::Token {
            command: TokenCommand::Create(args),
            ..
        } = cli.command
        else {
            panic!("parsed as another command");
        };
        assert_eq!(args.expires_in_days, Some(-5));
    }

    #[test]
    fn update_without_a_change_is_refused_by_the_parser() {
        let err = Cli::try_parse_from(["casola-auth", "token", "update", "some-id"])
            .expect_err("nothing to change");
        assert!(err.to_string().contains("--name"), "{err}");
    }

    #[test]
    fn migrate_help_promises_no_in_memory_fallback() {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("migrate")
            .expect("migrate exists")
            .render_long_help()
            .to_string();
        assert!(!help.contains("in-memory"), "{help}");
        assert!(help.contains("needs a database"), "{help}");
    }
}
