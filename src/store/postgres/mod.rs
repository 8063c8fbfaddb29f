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
    sql_types::{Array, Nullable, Text, Timestamptz},
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

use self::schema::{api_tokens, token_rotations};
use super::{
    ExpiringQuery, ListQuery, NewToken, OwnedTokens, RevocationReason, RotateOutcome, Rotation,
    RotationRequest, StoreError, TokenChange, TokenPatch, TokenRecord, TokenStore, events,
    now_micros,
};
use crate::{
    event::{EventContext, EventFilter, EventQuery, NewEvent, RequestId, TokenEvent},
    restriction::Restrictions,
    token::{
        LookupId,
        fields::{Owner, OwnerId},
        hash::SecretHash,
    },
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
    replaced_by: Option<Uuid>,
    revocation_reason: Option<String>,
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
            replaced_by: row.replaced_by,
            revocation_reason: row
                .revocation_reason
                .as_deref()
                .map(RevocationReason::from_stored),
            restrictions: Restrictions::from_stored(&row.allowed_networks, &row.allowed_models),
        }
    }
}

impl<'a> NewTokenRow<'a> {
    fn of(token: &'a NewToken) -> Self {
        Self {
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
        }
    }
}

/// Announces a change of these tokens to every replica's listener (delivered at commit).
async fn notify(conn: &mut AsyncPgConnection, lookup_ids: &[String]) -> Result<(), DieselError> {
    if lookup_ids.is_empty() {
        return Ok(());
    }
    // One statement however many tokens: offboarding sends thousands.
    diesel::sql_query("select pg_notify($1, l) from unnest($2) as l")
        .bind::<Text, _>(REVOCATION_CHANNEL)
        .bind::<Array<Text>, _>(lookup_ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Reads one token, locked until the transaction ends.
async fn get_for_update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<TokenRow>, DieselError> {
    api_tokens::table
        .find(id)
        .select(TokenRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

async fn get_row(conn: &mut AsyncPgConnection, id: Uuid) -> Result<Option<TokenRow>, DieselError> {
    api_tokens::table
        .find(id)
        .select(TokenRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The rotation made with this request id: `(old id, new id)`.
async fn find_rotation(
    conn: &mut AsyncPgConnection,
    request: &RotationRequest,
) -> Result<Option<(Uuid, Uuid)>, DieselError> {
    token_rotations::table
        .find((&request.requested_by, &request.request_id))
        .select((token_rotations::old_token_id, token_rotations::new_token_id))
        .first(conn)
        .await
        .optional()
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

#[derive(QueryableByName)]
struct EventRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    token_id: Uuid,
    #[diesel(sql_type = Text)]
    org_id: String,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Timestamptz)]
    at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    actor: String,
    #[diesel(sql_type = Nullable<Text>)]
    request_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    source_addr: Option<String>,
    #[diesel(sql_type = Text)]
    detail: String,
}

impl TryFrom<EventRow> for TokenEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        let bad = |what: &str| StoreError::Internal(format!("event {}: bad {what}", row.id));
        Ok(TokenEvent {
            id: row.id,
            event: NewEvent {
                token_id: row.token_id,
                owner: Owner {
                    org_id: OwnerId::from_stored(row.org_id.clone()),
                    user_id: OwnerId::from_stored(row.user_id.clone()),
                },
                kind: row.kind.parse().map_err(|_| bad("kind"))?,
                at: row.at,
                actor: row.actor.parse().map_err(|_| bad("actor"))?,
                request_id: row.request_id.as_deref().and_then(RequestId::parse),
                source_addr: row
                    .source_addr
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|_| bad("source address"))?,
                detail: serde_json::from_str(&row.detail).map_err(|_| bad("detail"))?,
            },
        })
    }
}

/// Appends `events` to the audit trail on `conn`: call it inside the transaction of the
/// change the events describe, so both commit or neither does. One statement for any number
/// of events. A second `created`, `first_used` or `expired` event of a token is dropped
/// (unique index, ON CONFLICT DO NOTHING).
pub async fn append_events(
    conn: &mut AsyncPgConnection,
    events: &[NewEvent],
) -> Result<(), DieselError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut token_ids = Vec::with_capacity(events.len());
    let mut org_ids = Vec::with_capacity(events.len());
    let mut user_ids = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut ats = Vec::with_capacity(events.len());
    let mut actors = Vec::with_capacity(events.len());
    let mut request_ids = Vec::with_capacity(events.len());
    let mut addrs = Vec::with_capacity(events.len());
    let mut details = Vec::with_capacity(events.len());
    for e in events {
        token_ids.push(e.token_id);
        org_ids.push(e.owner.org_id.as_str().to_owned());
        user_ids.push(e.owner.user_id.as_str().to_owned());
        kinds.push(e.kind.as_str());
        ats.push(e.at);
        actors.push(e.actor.to_string());
        request_ids.push(e.request_id.as_ref().map(|r| r.as_str().to_owned()));
        addrs.push(e.source_addr.map(|a| a.to_string()));
        details.push(e.detail.to_string());
    }
    diesel::sql_query(
        "insert into token_events \
             (token_id, org_id, user_id, kind, at, actor, request_id, source_addr, detail) \
         select e.token_id, e.org_id, e.user_id, e.kind, e.at, e.actor, e.request_id, \
                e.source_addr, e.detail::jsonb \
         from unnest($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             as e(token_id, org_id, user_id, kind, at, actor, request_id, source_addr, detail) \
         on conflict do nothing",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(token_ids)
    .bind::<Array<Text>, _>(org_ids)
    .bind::<Array<Text>, _>(user_ids)
    .bind::<Array<Text>, _>(kinds)
    .bind::<Array<Timestamptz>, _>(ats)
    .bind::<Array<Text>, _>(actors)
    .bind::<Array<Nullable<Text>>, _>(request_ids)
    .bind::<Array<Nullable<Text>>, _>(addrs)
    .bind::<Array<Text>, _>(details)
    .execute(conn)
    .await?;
    Ok(())
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

    async fn insert(&self, token: NewToken, ctx: &EventContext) -> Result<TokenRecord, StoreError> {
        let mut conn = self.conn().await?;
        let row = NewTokenRow::of(&token);
        conn.transaction(async |conn| {
            let record: TokenRecord = diesel::insert_into(api_tokens::table)
                .values(&row)
                .returning(TokenRow::as_returning())
                .get_result::<TokenRow>(conn)
                .await?
                .into();
            append_events(conn, &[events::created(&record, ctx)]).await?;
            Ok(record)
        })
        .await
        .map_err(map_err)
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<TokenRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let rows: Vec<TokenRow> = api_tokens::table
            .filter(api_tokens::id.eq_any(ids))
            .select(TokenRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(rows.into_iter().map(Into::into).collect())
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
            // A token inside a rotation overlap still works: it is listed.
            query = query.filter(
                api_tokens::revoked_at
                    .is_null()
                    .or(api_tokens::revoked_at.gt(diesel::dsl::now)),
            );
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
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError> {
        if patch.name.is_none() && patch.description.is_none() {
            return self.get(id).await;
        }
        let mut conn = self.conn().await?;
        let changes = TokenChanges {
            name: patch.name.as_ref().map(|n| n.as_str()),
            description: patch.description.as_ref().map(|d| d.as_str()),
        };
        conn.transaction(async |conn| {
            let row: Option<TokenRow> = diesel::update(api_tokens::table.find(id))
                .set(&changes)
                .returning(TokenRow::as_returning())
                .get_result(conn)
                .await
                .optional()?;
            let Some(row) = row else { return Ok(None) };
            let record = TokenRecord::from(row);
            append_events(conn, &[events::updated(&record, patch, now_micros(), ctx)]).await?;
            Ok(Some(record))
        })
        .await
        .map_err(map_err)
    }

    async fn revoke_for(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            let Some(row) = get_for_update(conn, id).await? else {
                return Ok(None);
            };
            let row = match row.revoked_at {
                None => {
                    diesel::update(api_tokens::table.find(id))
                        .set((
                            api_tokens::revoked_at.eq(at),
                            api_tokens::revocation_reason.eq(reason.as_str()),
                        ))
                        .returning(TokenRow::as_returning())
                        .get_result(conn)
                        .await?
                }
                // Inside a rotation overlap: the end moves to now (the reason stays
                // `rotated`).
                Some(set) if set > at => {
                    diesel::update(api_tokens::table.find(id))
                        .set(api_tokens::revoked_at.eq(at))
                        .returning(TokenRow::as_returning())
                        .get_result(conn)
                        .await?
                }
                // Already revoked: unchanged.
                Some(_) => return Ok(Some(row.into())),
            };
            notify(conn, std::slice::from_ref(&row.lookup_id)).await?;
            let record = TokenRecord::from(row);
            append_events(conn, &[events::revoked_for(&record, at, reason, ctx)]).await?;
            Ok(Some(record))
        })
        .await
        .map_err(map_err)
    }

    async fn rotate(
        &self,
        rotation: Rotation,
        ctx: &EventContext,
    ) -> Result<RotateOutcome, StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            if let Some(request) = &rotation.request
                && let Some((old_id, new_id)) = find_rotation(conn, request).await?
            {
                if old_id != rotation.old_id {
                    return Ok(RotateOutcome::RequestIdReused { old_id });
                }
                let (Some(old), Some(new)) =
                    (get_row(conn, old_id).await?, get_row(conn, new_id).await?)
                else {
                    return Err(DieselError::NotFound);
                };
                return Ok(RotateOutcome::Replayed {
                    old: old.into(),
                    new: new.into(),
                });
            }
            // Locked: two rotations of one token wait for each other, and the second sees
            // the first's overlap.
            let Some(old) = get_for_update(conn, rotation.old_id).await? else {
                return Ok(RotateOutcome::NotFound);
            };
            let old: TokenRecord = old.into();
            if old.revoked_at.is_some()
                || old.status_at(rotation.now) != crate::token::status::TokenStatus::Active
            {
                return Ok(RotateOutcome::NotActive(old));
            }
            let new: TokenRow = diesel::insert_into(api_tokens::table)
                .values(&NewTokenRow::of(&rotation.new))
                .returning(TokenRow::as_returning())
                .get_result(conn)
                .await?;
            // The change-log trigger logs this in the same transaction: every replica
            // re-reads the old token and learns when it stops working.
            let old: TokenRow = diesel::update(api_tokens::table.find(old.id))
                .set((
                    api_tokens::revoked_at.eq(rotation.old_ends_at),
                    api_tokens::revocation_reason.eq(RevocationReason::Rotated.as_str()),
                    api_tokens::replaced_by.eq(new.id),
                ))
                .returning(TokenRow::as_returning())
                .get_result(conn)
                .await?;
            if let Some(request) = &rotation.request {
                diesel::insert_into(token_rotations::table)
                    .values((
                        token_rotations::requested_by.eq(&request.requested_by),
                        token_rotations::request_id.eq(&request.request_id),
                        token_rotations::old_token_id.eq(old.id),
                        token_rotations::new_token_id.eq(new.id),
                        token_rotations::created_at.eq(rotation.now),
                    ))
                    .execute(conn)
                    .await?;
            }
            notify(conn, std::slice::from_ref(&old.lookup_id)).await?;
            let (old, new) = (TokenRecord::from(old), TokenRecord::from(new));
            append_events(
                conn,
                &events::rotated(&old, &new, rotation.old_ends_at, ctx),
            )
            .await?;
            Ok(RotateOutcome::Rotated { old, new })
        })
        .await
        .map_err(map_err)
    }

    async fn find_rotation(
        &self,
        request: &RotationRequest,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        let mut conn = self.conn().await?;
        find_rotation(&mut conn, request).await.map_err(map_err)
    }

    async fn revoke_owned(
        &self,
        which: &OwnedTokens,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let mut conn = self.conn().await?;
        conn.transaction(async |conn| {
            // One statement for all of them. A token inside a rotation overlap is revoked
            // now and keeps its reason (`rotated`); the others get `reason`.
            let mut query = diesel::update(api_tokens::table)
                .filter(api_tokens::org_id.eq(which.org_id.as_str()))
                .filter(
                    api_tokens::revoked_at
                        .is_null()
                        .or(api_tokens::revoked_at.gt(at)),
                )
                .filter(
                    api_tokens::expires_at
                        .is_null()
                        .or(api_tokens::expires_at.gt(at)),
                )
                .filter(diesel::dsl::not(
                    api_tokens::scopes.overlaps_with(&which.except_scopes),
                ))
                .into_boxed();
            if let Some(user) = &which.user_id {
                query = query.filter(api_tokens::user_id.eq(user.as_str()));
            }
            let rows: Vec<TokenRow> = query
                .set((
                    api_tokens::revoked_at.eq(at),
                    api_tokens::revocation_reason.eq(diesel::dsl::sql::<
                        diesel::sql_types::Nullable<Text>,
                    >(
                        "coalesce(revocation_reason, "
                    )
                    .bind::<Text, _>(reason.as_str())
                    .sql(")")),
                ))
                .returning(TokenRow::as_returning())
                .get_results(conn)
                .await?;
            let lookup_ids: Vec<String> = rows.iter().map(|r| r.lookup_id.clone()).collect();
            notify(conn, &lookup_ids).await?;
            let records: Vec<TokenRecord> = rows.into_iter().map(Into::into).collect();
            // One event per token, in one statement.
            let events: Vec<NewEvent> = records
                .iter()
                .map(|r| events::revoked_for(r, at, reason, ctx))
                .collect();
            append_events(conn, &events).await?;
            Ok(records)
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
        // One statement for the whole batch, however many tokens it holds. `before` reads
        // the rows as of the statement's snapshot: a token whose last use was unset there
        // gets its first_used event in the same statement. Two replicas flushing the same
        // token's first use at once both see it unset; the unique index on
        // (token_id, kind) for first_used and ON CONFLICT DO NOTHING keep one event.
        #[derive(QueryableByName)]
        struct Written {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            written: i64,
        }
        let written: Written = diesel::sql_query(
            "with u as (select * from unnest($1, $2) as u(id, used_at)), \
             before as ( \
                 select t.id, t.org_id, t.user_id, t.last_used_at is null as first \
                 from api_tokens t join u on t.id = u.id), \
             updated as ( \
                 update api_tokens as t \
                 set last_used_at = greatest(coalesce(t.last_used_at, u.used_at), u.used_at) \
                 from u where t.id = u.id \
                 returning t.id), \
             first_uses as ( \
                 insert into token_events (token_id, org_id, user_id, kind, at, actor) \
                 select b.id, b.org_id, b.user_id, 'first_used', u.used_at, 'system' \
                 from before b join u on b.id = u.id join updated x on x.id = b.id \
                 where b.first \
                 on conflict do nothing) \
             select count(*) as written from updated",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
        .bind::<Array<Timestamptz>, _>(times)
        .get_result(&mut conn)
        .await
        .map_err(map_err)?;
        Ok(u64::try_from(written.written).unwrap_or(0))
    }

    async fn record_expiries(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        // Resumes at the latest expiry already recorded, less an hour: a token whose expiry
        // lies behind the mark was recorded by an earlier sweep (no API sets an expiry in
        // the past; the margin covers a sweep racing a slow insert). The range is an index
        // scan of api_tokens_expiring_idx, plus revoked tokens, which are few.
        // Exactly once: token_events_once_idx and ON CONFLICT DO NOTHING.
        let written = diesel::sql_query(
            "insert into token_events (token_id, org_id, user_id, kind, at, actor) \
             select t.id, t.org_id, t.user_id, 'expired', t.expires_at, 'system' \
             from api_tokens t \
             where t.expires_at <= $1 \
               and t.expires_at > coalesce( \
                   (select max(at) from token_events where kind = 'expired'), \
                   '-infinity'::timestamptz) - interval '1 hour' \
               and (t.revoked_at is null or t.revoked_at > t.expires_at) \
             order by t.expires_at, t.id \
             on conflict do nothing",
        )
        .bind::<Timestamptz, _>(now)
        .execute(&mut conn)
        .await
        .map_err(map_err)?;
        Ok(written as u64)
    }

    async fn list_events(&self, q: &EventQuery) -> Result<Vec<TokenEvent>, StoreError> {
        let mut conn = self.conn().await?;
        let (column, key) = match &q.filter {
            EventFilter::Token(id) => ("token_id", id.to_string()),
            EventFilter::Org(org) => ("org_id", org.as_str().to_owned()),
        };
        // `column` is one of two constants, never input. token_id compares as text so that
        // both filters bind the same type; the cast keeps the (token_id, id) index usable.
        let sql = format!(
            "select id, token_id, org_id, user_id, kind, at, actor, request_id, source_addr, \
                    detail::text as detail \
             from token_events \
             where {column} = $1{cast} and id < $2 \
             order by id desc limit $3",
            cast = if column == "token_id" { "::uuid" } else { "" },
        );
        let rows: Vec<EventRow> = diesel::sql_query(sql)
            .bind::<Text, _>(key)
            .bind::<diesel::sql_types::BigInt, _>(q.before.unwrap_or(i64::MAX))
            .bind::<diesel::sql_types::BigInt, _>(i64::try_from(q.limit).unwrap_or(i64::MAX))
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn list_expiring(&self, q: &ExpiringQuery) -> Result<Vec<TokenRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let mut query = api_tokens::table
            .filter(api_tokens::revoked_at.is_null())
            .filter(api_tokens::expires_at.gt(q.after_time))
            .filter(api_tokens::expires_at.le(q.until))
            .select(TokenRow::as_select())
            .order((api_tokens::expires_at.asc(), api_tokens::id.asc()))
            .limit(i64::try_from(q.limit).unwrap_or(i64::MAX))
            .into_boxed();
        if let Some(org) = &q.org_id {
            query = query.filter(api_tokens::org_id.eq(org.as_str().to_owned()));
        }
        if let Some(after) = q.after {
            query = query.filter(
                api_tokens::expires_at
                    .gt(after.created_at)
                    .or(api_tokens::expires_at
                        .eq(after.created_at)
                        .and(api_tokens::id.gt(after.id))),
            );
        }
        let rows: Vec<TokenRow> = query.load(&mut conn).await.map_err(map_err)?;
        Ok(rows.into_iter().map(Into::into).collect())
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
