//! Shared fixtures: a real server on 127.0.0.1:0 over a real store (in this process, or the
//! real binary as a child process), the requests every area sends, and the Postgres harness.

pub mod otlp;
pub mod pg;
pub mod process;

use std::{
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use casola_auth::{
    config::{Config, ConsoleConfig, DatabaseUrl, LimitsConfig},
    manage::{Caller, CreateRequest},
    proto::{
        AuthorizeRequest, ScopeMatch, WhoAmIRequest,
        authorization_service_client::AuthorizationServiceClient,
        token_service_client::TokenServiceClient,
    },
    server::{self, Running},
    token::hash::HashParams,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

/// Cheap argon2 for tests (the parameters are configuration; hashing is the same code).
pub const FAST_ARGON2: HashParams = HashParams {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

/// A test configuration on loopback with ephemeral ports.
pub fn test_config(database_url: Option<&str>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.map(DatabaseUrl::new),
        argon2: FAST_ARGON2,
        health_interval_ms: 200,
        shutdown_grace_seconds: 5,
        // Deadlines are overload.rs's subject (it sets its own); elsewhere a CPU-starved CI
        // machine must not turn a slow first verify into DEADLINE_EXCEEDED (nor a busy test
        // runtime's queue into a shed: the ceiling also bounds the queue-delay rule).
        limits: LimitsConfig {
            decision_deadline_ms: 10_000,
            ..LimitsConfig::default()
        },
        // Enabled only by the console tests (console.rs), on an ephemeral port.
        console: ConsoleConfig {
            enabled: false,
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        ..Config::default()
    }
}

/// A server running in this process, and a channel to it.
pub struct TestServer {
    /// The server.
    pub running: Running,
    /// A channel to its gRPC port.
    pub channel: Channel,
    /// The database, when on Postgres; dropped (with the database) after the server.
    pub db: Option<pg::TestDb>,
}

impl TestServer {
    /// A server on the in-memory store.
    pub async fn memory() -> Self {
        Self::with_config(test_config(None), None).await
    }

    /// A server on a fresh Postgres database.
    pub async fn postgres() -> Self {
        let db = pg::TestDb::new().await;
        Self::with_config(test_config(Some(&db.url)), Some(db)).await
    }

    /// A server with this configuration.
    pub async fn with_config(config: Config, db: Option<pg::TestDb>) -> Self {
        let running = server::start(config).await.expect("server starts");
        let channel = connect(running.grpc_addr).await;
        Self {
            running,
            channel,
            db,
        }
    }

    /// Both store kinds, for tests that must hold on each.
    pub async fn each_store() -> [Self; 2] {
        [Self::memory().await, Self::postgres().await]
    }

    /// The database of a server on Postgres.
    pub fn db(&self) -> &pg::TestDb {
        self.db.as_ref().expect("a server on Postgres")
    }

    /// A TokenService client.
    pub fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel.clone())
    }

    /// An AuthorizationService client.
    pub fn authz(&self) -> AuthorizationServiceClient<Channel> {
        AuthorizationServiceClient::new(self.channel.clone())
    }

    /// Creates a token straight through the domain as an operator (like the CLI).
    pub async fn operator_token(
        &self,
        org: &str,
        user: &str,
        preset: &str,
        scopes: &[&str],
    ) -> String {
        self.running
            .services()
            .manager
            .create(
                &Caller::Operator,
                &casola_auth::event::Origin::default(),
                CreateRequest {
                    name: format!("{user} {preset}"),
                    preset: preset.into(),
                    scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                    org_id: org.into(),
                    user_id: user.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("operator creates a token")
            .token
            .expose()
            .to_owned()
    }
}

/// A channel to a gRPC server that is already listening.
pub async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to casola-auth")
}

/// An Authorize request for `token` that requires all of `scopes`.
pub fn authorize(token: &str, scopes: &[&str]) -> AuthorizeRequest {
    AuthorizeRequest {
        token: token.into(),
        required_scopes: scopes.iter().map(|s| (*s).into()).collect(),
        r#match: ScopeMatch::All.into(),
        ..Default::default()
    }
}

/// The id of `token`, as WhoAmI reports it.
pub async fn token_id(channel: &Channel, token: &str) -> String {
    AuthorizationServiceClient::new(channel.clone())
        .who_am_i(bearer(token, WhoAmIRequest {}))
        .await
        .expect("who am I")
        .into_inner()
        .principal
        .expect("principal")
        .token_id
}

/// A request carrying these metadata entries.
pub fn with_metadata<T>(message: T, pairs: &[(&'static str, &str)]) -> Request<T> {
    let mut request = Request::new(message);
    for (name, value) in pairs {
        request
            .metadata_mut()
            .insert(*name, MetadataValue::try_from(*value).unwrap());
    }
    request
}

/// The fields of an INVALID_ARGUMENT status's BadRequest details, in order.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details.bad_request().expect("BadRequest details");
    bad.field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, message: T) -> Request<T> {
    with_metadata(message, &[("authorization", &format!("Bearer {token}"))])
}

/// The same lookup id as `real` with another secret (variant `n`) and a valid checksum.
pub fn forge_secret(real: &str, n: usize) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut body: Vec<u8> = real[..48].bytes().collect();
    let pos = 16 + n % 32;
    let current = BASE62.iter().position(|&c| c == body[pos]).unwrap();
    body[pos] = BASE62[(current + 1 + n / 32) % 62];
    let body = String::from_utf8(body).unwrap();
    let sum = casola_auth::token::checksum(&body);
    format!("{body}{sum}")
}

/// A loopback port that was free a moment ago (for a server that must be told its port,
/// or for an address where nothing listens).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Polls until `check` holds, failing after `limit` (a bound for a correctness test, not a
/// speed claim).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.1 response: status, content type, body.
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `content-type` header (empty when absent).
    pub content_type: String,
    /// The body.
    pub body: String,
}

/// `GET path` over a bare HTTP/1.1 connection, enough for the admin port (probes, metrics).
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP/1.1 status line: {head}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    HttpResponse {
        status,
        content_type,
        body: body.to_owned(),
    }
}
