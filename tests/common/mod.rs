//! Shared test support: a real server on 127.0.0.1:0 over a real store, and clients.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

pub mod pg;

use casola_auth::{
    config::{Config, ConsoleConfig, DatabaseUrl},
    manage::{Caller, CreateRequest},
    proto::{
        authorization_service_client::AuthorizationServiceClient,
        token_service_client::TokenServiceClient,
    },
    server::{self, Running},
    token::hash::HashParams,
};
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
        // Enabled only by the console tests (tests/console.rs), on an ephemeral port.
        console: ConsoleConfig {
            enabled: false,
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        ..Config::default()
    }
}

/// A running server and a channel to it.
pub struct TestServer {
    /// The server.
    pub running: Running,
    /// A channel to its gRPC port.
    pub channel: Channel,
    /// The database, when on Postgres.
    pub db: Option<pg::TestDb>,
}

impl TestServer {
    /// A server on the in-memory store.
    pub async fn memory() -> Self {
        Self::with_config(test_config(None), None).await
    }

    /// A server on a fresh Postgres database.
    pub async fn postgres() -> Self {
        let db = pg::fresh_database().await;
        Self::with_config(test_config(Some(&db.url)), Some(db)).await
    }

    /// A server with this configuration.
    pub async fn with_config(config: Config, db: Option<pg::TestDb>) -> Self {
        let running = server::start(config).await.expect("server starts");
        let channel = Endpoint::from_shared(format!("http://{}", running.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect");
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

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    request
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
