//! TLS to Postgres: a real cluster offering TLS with a throwaway CA's certificate.

use casola_auth::store::{
    StoreError, TokenStore,
    postgres::{PgStore, PoolOptions, run_migrations},
};

use crate::support::pg;

async fn ssl_connections(base: &str) -> i64 {
    // This admin connection itself is plain (NoTls), so it is not counted.
    pg::query_i64(
        &format!("{base}/postgres?sslmode=disable"),
        "select count(*) from pg_stat_ssl where ssl",
    )
    .await
}

#[tokio::test]
async fn tls_is_required_and_verified_against_the_configured_ca() {
    let (base, ca) = pg::tls_server();
    let url = format!("{base}/postgres?sslmode=require");
    run_migrations(&url, Some(&ca))
        .await
        .expect("migrations over TLS");
    let store = PgStore::new(
        &url,
        PoolOptions {
            tls_ca_file: Some(ca),
            ..PoolOptions::default()
        },
    )
    .unwrap();
    store.ping().await.expect("a verified TLS connection");
    assert!(
        ssl_connections(&base).await >= 1,
        "the pool's connection is encrypted"
    );
}

#[tokio::test]
async fn a_server_certificate_from_an_untrusted_ca_is_refused() {
    let (base, _ca) = pg::tls_server();
    // Mozilla's roots do not include the throwaway CA.
    let store = PgStore::new(
        &format!("{base}/postgres?sslmode=require"),
        PoolOptions {
            acquire_timeout: std::time::Duration::from_secs(2),
            ..PoolOptions::default()
        },
    )
    .unwrap();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn sslmode_disable_connects_in_plain_text() {
    let (base, _ca) = pg::tls_server();
    let store = PgStore::new(
        &format!("{base}/postgres?sslmode=disable"),
        PoolOptions::default(),
    )
    .unwrap();
    store.ping().await.expect("plain connection");
}

#[tokio::test]
async fn an_unreadable_ca_file_is_a_clear_error() {
    let err = PgStore::new(
        "postgres://postgres@127.0.0.1:1/x",
        PoolOptions {
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..PoolOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
