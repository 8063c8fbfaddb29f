//! The Postgres store: diesel 2 + diesel-async over a deadpool pool, migrations embedded in
//! the binary. Revocations are announced with NOTIFY on [`REVOCATION_CHANNEL`] in the same
//! transaction as the UPDATE, so a listener never hears of an uncommitted revocation.
//! Every change a cache may care about is also logged in `token_changes` by a trigger
//! (migration `token_changes`), which replicas poll by position.

pub mod listener;
mod schema;
pub mod tls;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    result::{DatabaseErrorKind, Error as DieselError},
    sql_types::{Array, Text, Timestamptz},
};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig,
        deadpool::{Object, Pool},
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

use self::schema::api_tokens;
use super::{ListQuery, NewToken, StoreError, TokenChange, TokenPatch, TokenRecord, TokenStore};
use crate::restriction::Restrictions;
use crate::token::{
    LookupId,
    fields::{Owner, OwnerId},
    hash::SecretHash,
};

/// The migrations of `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The NOTIFY channel of revocations; the payload is the revoked token's lookup id.
pub const REVOCATION_CHANNEL: &str = "casola_auth_revocations";

/// An arbitrary constant: the advisory lock that serialises concurrent migration runs.
const MIGRATION_LOCK_KEY: i64 = 0x6361_736f_6c61;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections held.
    pub max_size: usize,
    /// How long a call waits for a connection (including connecting) before UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// CA to trust for TLS instead of the Mozilla roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for PoolOptions {
    /// 16 connections, 3 s to get one, Mozilla roots for TLS.
    fn default() -> Self {
        Self {
            max_size: 16,
            acquire_timeout: Duration::from_secs(3),
            tls_ca_file: None,
        }
    }
}

/// Connects one diesel-async connection through `tls` (honouring the URL's sslmode).
pub async fn establish(
    url: &str,
    tls: MakeRustlsConnect,
) -> diesel::ConnectionResult<AsyncPgConnection> {
    let (client, connection) = tokio_postgres::connect(url, tls)
        .await
        .map_err(|e| diesel::ConnectionError::BadConnection(connect_error(url, &e)))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// What a failed connection says: where it went (host, port, database: never the user's
/// password) and why, with the way forward when the server's certificate did not verify.
fn connect_error(url: &str, err: &tokio_postgres::Error) -> String {
    let target = url
        .parse::<tokio_postgres::Config>()
        .map(|c| {
            let host = match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
                Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
                None => "localhost".into(),
            };
            let port = c.get_ports().first().copied().unwrap_or(5432);
            let database = c.get_dbname().or(c.get_user()).unwrap_or("postgres");
            format!("{host}:{port}, database {database:?}")
        })
        .unwrap_or_else(|_| "the database".into());
    // A server's refusal ("database ... does not exist") is in the DbError, not in Display.
    let cause = match err.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut cause = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(inner) = source {
                cause = format!("{cause}: {inner}");
                source = inner.source();
            }
            cause
        }
    };
    let hint = if cause.contains("TLS") || cause.contains("certificate") {
        ". The server's TLS certificate did not verify: set store.tls_ca_file to the CA that \
         signed it, or, on a trusted network only (e.g. loopback), add sslmode=disable to the URL"
    } else {
        ""
    };
    format!("connecting to {target}: {cause}{hint}")
}

/// Tokens in Postgres.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PgStore")
            .field("status", &self.pool.status())
            .finish()
    }
}

impl PgStore {
    /// A store over a pool to `url`. Connections are made lazily, so this does not fail
    /// when the database is down; calls then answer UNAVAILABLE.
    pub fn new(url: &str, options: PoolOptions) -> Result<Self, StoreError> {
        let tls = tls::connector(options.tls_ca_file.as_deref())?;
        let mut config = ManagerConfig::default();
        config.custom_setup = Box::new(move |url| {
            let (url, tls) = (url.to_owned(), tls.clone());
            Box::pin(async move { establish(&url, tls).await })
        });
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
        let pool = Pool::builder(manager)
            .max_size(options.max_size)
            .build()
            .map_err(|e| StoreError::Internal(format!("building the pool: {e}")))?;
        Ok(Self {
            pool,
            acquire_timeout: options.acquire_timeout,
        })
    }

    /// Connections in use and idle, for metrics.
    pub fn pool_status(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size - s.available, s.available)
    }

    async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        match tokio::time::timeout(self.acquire_timeout, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("connection pool: {e}"))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no connection within {:?}",
                self.acquire_timeout
            ))),
        }
    }
}

/// Runs pending migrations on `url`, one runner at a time across replicas. Returns the
/// versions applied.
pub async fn run_migrations(
    url: &str,
    tls_ca_file: Option<&std::path::Path>,
) -> Result<Vec<String>, StoreError> {
    let mut conn = establish(url, tls::connector(tls_ca_file)?)
        .await
        .map_err(|e| StoreError::Unavailable(format!("connecting: {e}")))?;
    diesel::sql_query("select pg_advisory_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await
        .map_err(map_err)?;
    // The harness blocks; it must run off the async workers.
    let applied = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        harness
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| StoreError::Internal(format!("migrating: {e}")))
    })
    .await
    .map_err(|e| StoreError::Internal(format!("migration task: {e}")))??;
    // The advisory lock ends with the session, which the harness closed.
    Ok(applied)
}

/// Whether the database at `url` holds the casola-auth schema, i.e. `migrate` has run there:
/// one connection and one catalog lookup, so that a command can say "run migrate" instead of
/// failing on its first query. The table is looked up on the connection's `search_path`,
/// where the queries will look for it too.
pub async fn schema_present(
    url: &str,
    tls_ca_file: Option<&std::path::Path>,
) -> Result<bool, StoreError> {
    #[derive(QueryableByName)]
    struct Probe {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        present: bool,
    }
    let mut conn = establish(url, tls::connector(tls_ca_file)?)
        .await
        .map_err(|e| StoreError::Unavailable(format!("connecting: {e}")))?;
    let probe: Probe = diesel::sql_query("select to_regclass('api_tokens') is not null as present")
        .get_result(&mut conn)
        .await
        .map_err(map_err)?;
    Ok(probe.present)
}

fn map_err(err: DieselError) -> StoreError {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            StoreError::Conflict(info.message().to_owned())
        }
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
            StoreError::Unavailable(info.message().to_owned())
        }
        // Only the message: a constraint's detail would echo the row, hash included.
        DieselError::DatabaseError(kind, info) => {
            StoreError::Internal(format!("{kind:?}: {}", info.message()))
        }
        DieselError::BrokenTransactionManager => {
            StoreError::Unavailable("broken transaction manager".into())
        }
        other => StoreError::Internal(other.to_string()),
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = api_tokens, check_for_backend(diesel::pg::Pg))]
struct TokenRow {
    id: Uuid,
    lookup_id: String,
    secret_hash: String,
    name: String,
    description: String,
    scopes: Vec<String>,
    org_id: String,
    user_id: String,
    created_at: DateTime<Utc>,
    created_by: String,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    allowed_networks: Vec<String>,
    allowed_models: Vec<String>,
}

impl From<TokenRow> for TokenRecord {
    fn from(row: TokenRow) -> Self {
        Self {
            id: row.id,
            lookup_id: LookupId::from_stored(row.lookup_id),
            secret_hash: SecretHash::from_stored(row.secret_hash),
            name: row.name,
            description: row.description,
            scopes: row.scopes,
            owner: Owner {
                org_id: OwnerId::from_stored(row.org_id),
                user_id: OwnerId::from_stored(row.user_id),
            },
            created_at: row.created_at,
            created_by: row.created_by,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
            restrictions: Restrictions::from_stored(&row.allowed_networks, &row.allowed_models),
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = api_tokens)]
struct NewTokenRow<'a> {
    id: Uuid,
    lookup_id: &'a str,
    secret_hash: &'a str,
    name: &'a str,
    description: &'a str,
    scopes: &'a [String],
    org_id: &'a str,
    user_id: &'a str,
    created_at: DateTime<Utc>,
    created_by: &'a str,
    expires_at: Option<DateTime<Utc>>,
    allowed_networks: Vec<String>,
    allowed_models: Vec<String>,
}

#[derive(AsChangeset)]
#[diesel(table_name = api_tokens)]
struct TokenChanges<'a> {
    name: Option<&'a str>,
    description: Option<&'a str>,
}

#[derive(QueryableByName)]
struct ChangeRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    position: i64,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    token_id: Uuid,
    #[diesel(sql_type = Text)]
    lookup_id: String,
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    position: i64,
}

#[async_trait]
impl TokenStore for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        diesel::sql_query("select 1")
            .execute(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn insert(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        let mut conn = self.conn().await?;
        let row = NewTokenRow {
            id: token.id,
            lookup_id: token.lookup_id.as_str(),
            secret_hash: token.secret_hash.as_str(),
            name: token.name.as_str(),
            description: token.description.as_str(),
            scopes: &token.scopes,
            org_id: token.owner.org_id.as_str(),
            user_id: token.owner.user_id.as_str(),
            created_at: token.created_at,
            created_by: &token.created_by,
            expires_at: token.expires_at,
            allowed_networks: token.restrictions.networks_as_text(),
            allowed_models: token.restrictions.models_as_text(),
        };
        diesel::insert_into(api_tokens::table)
            .values(&row)
            .returning(TokenRow::as_returning())
            .get_result(&mut conn)
            .await
            .map(Into::into)
            .map_err(map_err)
    }

    async fn get(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        let mut conn = self.conn().await?;
        api_tokens::table
            .find(id)
            .select(TokenRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map(|row| row.map(Into::into))
            .map_err(map_err)
    }

    async fn find_by_lookup_id(
        &self,
        lookup_id: &LookupId,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let mut conn = self.conn().await?;
        api_tokens::table
            .filter(api_tokens::lookup_id.eq(lookup_id.as_str()))
            .select(TokenRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map(|row| row.map(Into::into))
            .map_err(map_err)
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<TokenRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let mut query = api_tokens::table
            .filter(api_tokens::org_id.eq(q.org_id.as_str()))
            .select(TokenRow::as_select())
            .order((api_tokens::created_at.desc(), api_tokens::id.desc()))
            .limit(i64::try_from(q.limit).unwrap_or(i64::MAX))
            .into_boxed();
        if let Some(user) = &q.user_id {
            query = query.filter(api_tokens::user_id.eq(user.as_str().to_owned()));
        }
        if !q.include_revoked {
            query = query.filter(api_tokens::revoked_at.is_null());
        }
        if let Some(after) = q.after {
            query = query.filter(
                api_tokens::created_at
                    .lt(after.created_at)
                    .or(api_tokens::created_at
                        .eq(after.created_at)
                        .and(api_tokens::id.lt(after.id))),
            );
        }
        let rows: Vec<TokenRow> = query.load(&mut conn).await.map_err(map_err)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn update(
        &self,
        id: Uuid,
        patch: &TokenPatch,
    ) -> Result<Option<TokenRecord>, StoreError> {
        if patch.name.is_none() && patch.description.is_none() {
            return self.get(id).await;
        }
        let mut conn = self.conn().await?;
        let changes = TokenChanges {
            name: patch.name.as_ref().map(|n| n.as_str()),
            description: patch.description.as_ref().map(|d| d.as_str()),
        };
        diesel::update(api_tokens::table.find(id))
            .set(&changes)
            .returning(TokenRow::as_returning())
            .get_result(&mut conn)
            .await
            .optional()
            .map(|row| row.map(Into::into))
            .map_err(map_err)
    }

    async fn revoke(&self, id: Uuid, at: DateTime<Utc>) -> Result<Option<TokenRecord>, StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            let row: Option<TokenRow> = diesel::update(
                api_tokens::table
                    .find(id)
                    .filter(api_tokens::revoked_at.is_null()),
            )
            .set(api_tokens::revoked_at.eq(at))
            .returning(TokenRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
            match row {
                Some(row) => {
                    diesel::sql_query("select pg_notify($1, $2)")
                        .bind::<Text, _>(REVOCATION_CHANNEL)
                        .bind::<Text, _>(&row.lookup_id)
                        .execute(conn)
                        .await?;
                    Ok(Some(row.into()))
                }
                // Already revoked (unchanged) or no such token.
                None => api_tokens::table
                    .find(id)
                    .select(TokenRow::as_select())
                    .first(conn)
                    .await
                    .optional()
                    .map(|row| row.map(Into::into)),
            }
        })
        .await
        .map_err(map_err)
    }

    async fn replace_hash(&self, id: Uuid, hash: &SecretHash) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        diesel::update(api_tokens::table.find(id))
            .set(api_tokens::secret_hash.eq(hash.as_str()))
            .execute(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn record_last_used(&self, uses: &[(Uuid, DateTime<Utc>)]) -> Result<u64, StoreError> {
        if uses.is_empty() {
            return Ok(0);
        }
        let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = uses.iter().copied().unzip();
        let mut conn = self.conn().await?;
        // One statement for the whole batch, however many tokens it holds.
        let written = diesel::sql_query(
            "update api_tokens as t \
             set last_used_at = greatest(coalesce(t.last_used_at, u.used_at), u.used_at) \
             from unnest($1, $2) as u(id, used_at) \
             where t.id = u.id",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
        .bind::<Array<Timestamptz>, _>(times)
        .execute(&mut conn)
        .await
        .map_err(map_err)?;
        Ok(written as u64)
    }

    async fn latest_change(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let row: Position =
            diesel::sql_query("select coalesce(max(position), 0) as position from token_changes")
                .get_result(&mut conn)
                .await
                .map_err(map_err)?;
        Ok(u64::try_from(row.position).unwrap_or(0))
    }

    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TokenChange>, StoreError> {
        let mut conn = self.conn().await?;
        // Plain "position > N" is complete: the log's trigger makes positions commit in
        // order (see the migration), so no smaller position can appear later.
        let rows: Vec<ChangeRow> = diesel::sql_query(
            "select position, token_id, lookup_id from token_changes \
             where position > $1 order by position limit $2",
        )
        .bind::<diesel::sql_types::BigInt, _>(i64::try_from(after).unwrap_or(i64::MAX))
        .bind::<diesel::sql_types::BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
        .load(&mut conn)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|row| TokenChange {
                position: u64::try_from(row.position).unwrap_or(0),
                token_id: row.token_id,
                lookup_id: LookupId::from_stored(row.lookup_id),
            })
            .collect())
    }

    fn pool_connections(&self) -> Option<(usize, usize)> {
        Some(self.pool_status())
    }
}
