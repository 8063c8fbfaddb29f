//! Hot-path correctness (never timing): the verified-token cache, revocation across
//! replicas (two real server processes on one Postgres), the listener's reconnect, the
//! write-behind of last_used_at, single-flight verifies and exact expiry.

use std::{process::Command, time::Duration};

use casola_auth::proto::{
    Decision, DenyReason, GetTokenRequest, RevokeTokenRequest,
    authorization_service_client::AuthorizationServiceClient,
    token_service_client::TokenServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::support::{
    TestServer, authorize, bearer, eventually, forge_secret, free_port, pg,
    process::{BINARY, FAST_ARGON2_ENV, ServerProcess},
    test_config, token_id,
};

async fn decide(
    client: &mut AuthorizationServiceClient<Channel>,
    token: &str,
) -> (Decision, DenyReason) {
    let r = client
        .authorize(authorize(token, &[]))
        .await
        .expect("authorize")
        .into_inner();
    (r.decision(), r.deny_reason())
}

/// A `casola-auth serve` replica on the database at `url`, with these settings.
fn replica(url: &str, env: &[(&str, &str)]) -> ServerProcess {
    let mut env = env.to_vec();
    env.push(("DATABASE_URL", url));
    ServerProcess::start(&env)
}

/// Creates a token with the CLI (the operator path) and returns it.
fn cli_token(db: &str, user: &str, preset: &str) -> String {
    let out = Command::new(BINARY)
        .args([
            "token",
            "create",
            "--database-url",
            db,
            "--org",
            "acme",
            "--user",
            user,
        ])
        .args(["--name", "replica test", "--preset", preset])
        .envs(FAST_ARGON2_ENV)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_token_revoked_through_one_replica_is_denied_by_the_other() {
    let db = pg::TestDb::new().await;
    // Long TTL: only the revocation notice can make the second replica deny.
    let env = [("CASOLA_AUTH_CACHE__TTL_SECONDS", "3600")];
    let a = replica(&db.url, &env);
    let b = replica(&db.url, &env);
    let (ca, cb) = (a.channel().await, b.channel().await);
    let issuer = cli_token(&db.url, "backend", "admin-full");
    let mut revoker = TokenServiceClient::new(ca.clone());
    let mut on_b = AuthorizationServiceClient::new(cb.clone());

    for round in 0..5 {
        let token = cli_token(&db.url, &format!("user{round}"), "user-read");
        // Warm on B: cached there.
        assert_eq!(
            decide(&mut on_b, &token).await,
            (Decision::Allow, DenyReason::Unspecified)
        );
        assert_eq!(decide(&mut on_b, &token).await.0, Decision::Allow);
        let id = token_id(&cb, &token).await;
        revoker
            .revoke_token(bearer(&issuer, RevokeTokenRequest { id }))
            .await
            .expect("revoke on A");
        eventually(Duration::from_secs(10), "B denies the revoked token", || {
            let mut on_b = on_b.clone();
            let token = token.clone();
            async move { decide(&mut on_b, &token).await == (Decision::Deny, DenyReason::Revoked) }
        })
        .await;
        // Once denied, never allowed again.
        for _ in 0..50 {
            assert_eq!(
                decide(&mut on_b, &token).await,
                (Decision::Deny, DenyReason::Revoked)
            );
        }
    }
}

#[tokio::test]
async fn a_killed_listener_reconnects_and_drops_the_cache() {
    let db = pg::TestDb::new().await;
    let b = replica(&db.url, &[("CASOLA_AUTH_CACHE__TTL_SECONDS", "3600")]);
    let cb = b.channel().await;
    let mut on_b = AuthorizationServiceClient::new(cb.clone());
    let token = cli_token(&db.url, "alice", "user-read");
    // Wait for the listener, then warm the token.
    let app = format!("casola-auth-revocations-{}", b.pid());
    let listeners =
        format!("select count(*) from pg_stat_activity where application_name = '{app}'");
    eventually(Duration::from_secs(10), "listener connected", || {
        let (url, q) = (db.url.clone(), listeners.clone());
        async move { pg::query_i64(&url, &q).await == 1 }
    })
    .await;
    assert_eq!(decide(&mut on_b, &token).await.0, Decision::Allow);

    // Revoke behind the service's back: no NOTIFY, so only a dropped cache can notice.
    let lookup = &token[4..16];
    pg::exec(
        &db.url,
        &format!("update api_tokens set revoked_at = now() where lookup_id = '{lookup}'"),
    )
    .await;
    assert_eq!(
        decide(&mut on_b, &token).await.0,
        Decision::Allow,
        "still served from the cache: no notice was sent"
    );

    // Kill the listener's connection: it reconnects and drops the whole cache.
    let killed = pg::query_i64(
        &db.url,
        &format!("select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity where application_name = '{app}') t"),
    )
    .await;
    assert_eq!(killed, 1);
    eventually(
        Duration::from_secs(15),
        "the revoked token is denied after the reconnect",
        || {
            let mut on_b = on_b.clone();
            let token = token.clone();
            async move { decide(&mut on_b, &token).await == (Decision::Deny, DenyReason::Revoked) }
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the listener is back", || {
        let (url, q) = (db.url.clone(), listeners.clone());
        async move { pg::query_i64(&url, &q).await == 1 }
    })
    .await;
}

#[tokio::test]
async fn without_revocation_notices_cached_answers_stop_after_max_staleness() {
    let db = pg::TestDb::new().await;
    let dead = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let b = replica(
        &db.url,
        &[
            ("CASOLA_AUTH_LISTEN_DATABASE_URL", &dead),
            ("CASOLA_AUTH_CACHE__MAX_STALENESS_SECONDS", "1"),
        ],
    );
    let mut on_b = AuthorizationServiceClient::new(b.channel().await);
    let token = cli_token(&db.url, "alice", "user-read");
    eventually(Duration::from_secs(15), "fails closed with UNAVAILABLE", || {
        let mut on_b = on_b.clone();
        let token = token.clone();
        async move {
            matches!(on_b.authorize(authorize(&token, &[])).await, Err(s) if s.code() == Code::Unavailable)
        }
    })
    .await;
    // Malformed input needs no state and is still a plain denial.
    assert_eq!(decide(&mut on_b, "nope").await.1, DenyReason::Malformed);
}

#[tokio::test]
async fn last_used_is_written_behind_and_flushed_at_shutdown() {
    let db = pg::TestDb::new().await;
    let token = cli_token(&db.url, "alice", "user-read");
    let lookup = token[4..16].to_owned();
    let last_used = format!(
        "select count(*) from api_tokens where lookup_id = '{lookup}' and last_used_at is not null"
    );

    // A long interval: only the shutdown flush can write it.
    let mut slow = replica(
        &db.url,
        &[("CASOLA_AUTH_LAST_USED__FLUSH_INTERVAL_MS", "3600000")],
    );
    let mut client = AuthorizationServiceClient::new(slow.channel().await);
    for _ in 0..100 {
        assert_eq!(decide(&mut client, &token).await.0, Decision::Allow);
    }
    assert_eq!(
        pg::query_i64(&db.url, &last_used).await,
        0,
        "not written per request"
    );
    let status = slow.terminate().await;
    assert!(status.success(), "replica exited with {status}");
    assert_eq!(
        pg::query_i64(&db.url, &last_used).await,
        1,
        "flushed at shutdown"
    );

    // A short interval: written while serving.
    let other = cli_token(&db.url, "bob", "user-read");
    let other_lookup = other[4..16].to_owned();
    let fast = replica(
        &db.url,
        &[("CASOLA_AUTH_LAST_USED__FLUSH_INTERVAL_MS", "200")],
    );
    let channel = fast.channel().await;
    let mut client = AuthorizationServiceClient::new(channel.clone());
    assert_eq!(decide(&mut client, &other).await.0, Decision::Allow);
    eventually(Duration::from_secs(10), "last_used_at written while serving", || {
        let url = db.url.clone();
        let q = format!("select count(*) from api_tokens where lookup_id = '{other_lookup}' and last_used_at is not null");
        async move { pg::query_i64(&url, &q).await == 1 }
    })
    .await;
    let id = token_id(&channel, &other).await;
    let shown = TokenServiceClient::new(channel)
        .get_token(bearer(&other, GetTokenRequest { id }))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(
        shown.last_used_at.is_some(),
        "the API shows when it was last used"
    );
}

#[tokio::test]
async fn concurrent_cold_requests_for_one_token_run_one_verify() {
    for server in TestServer::each_store().await {
        let token = server
            .operator_token("acme", "alice", "user-read", &[])
            .await;
        let pool = server.running.services().authorizer.verify_pool().clone();
        let before = pool.runs();
        let calls = (0..64).map(|_| {
            let mut client = server.authz();
            let token = token.clone();
            tokio::spawn(async move { decide(&mut client, &token).await })
        });
        for call in futures::future::join_all(calls).await {
            assert_eq!(call.unwrap().0, Decision::Allow);
        }
        assert_eq!(
            pool.runs() - before,
            1,
            "one argon2 verify for 64 concurrent cold requests"
        );
    }
}

#[tokio::test]
async fn a_flood_of_wrong_secrets_for_one_lookup_id_costs_one_verify_per_interval() {
    let mut config = test_config(None);
    config.cache.negative_ttl_ms = 3_600_000;
    let server = TestServer::with_config(config, None).await;
    let token = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let pool = server.running.services().authorizer.verify_pool().clone();
    let before = pool.runs();
    let mut client = server.authz();
    for i in 0..40 {
        let forged = forge_secret(&token, i);
        assert_eq!(
            decide(&mut client, &forged).await,
            (Decision::Deny, DenyReason::Unknown)
        );
    }
    assert_eq!(pool.runs() - before, 1);
}

#[tokio::test]
async fn a_cached_token_stops_working_exactly_at_its_expiry() {
    let server = TestServer::postgres().await;
    let token = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let db = server.db();
    let lookup = &token[4..16];
    // Generous, so a slow machine still sees the token valid first; the test then waits
    // for the expiry the service itself reports.
    pg::exec(
        &db.url,
        &format!("update api_tokens set expires_at = now() + interval '4 seconds' where lookup_id = '{lookup}'"),
    )
    .await;
    let mut client = server.authz();
    let first = client
        .authorize(authorize(&token, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.decision(), Decision::Allow);
    let expires_at = first.principal.unwrap().expires_at.expect("an expiry");
    let pool = server.running.services().authorizer.verify_pool().clone();
    let cached_runs = pool.runs();
    assert_eq!(decide(&mut client, &token).await.0, Decision::Allow);
    assert_eq!(
        pool.runs(),
        cached_runs,
        "the second answer came from the cache"
    );
    let expiry =
        std::time::UNIX_EPOCH + Duration::new(expires_at.seconds as u64, expires_at.nanos as u32);
    let wait = expiry
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    assert_eq!(
        decide(&mut client, &token).await,
        (Decision::Deny, DenyReason::Expired)
    );
    assert_eq!(
        pool.runs(),
        cached_runs,
        "denied from the cache, at its expiry"
    );
}

#[tokio::test]
async fn revocation_is_instant_on_the_memory_store_too() {
    let server = TestServer::memory().await;
    let issuer = server
        .operator_token("local", "admin", "admin-full", &["tokens:issue"])
        .await;
    let token = server
        .operator_token("local", "alice", "user-read", &[])
        .await;
    let mut client = server.authz();
    assert_eq!(decide(&mut client, &token).await.0, Decision::Allow);
    let id = client
        .who_am_i(bearer(&token, casola_auth::proto::WhoAmIRequest {}))
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap()
        .token_id;
    server
        .tokens()
        .revoke_token(bearer(&issuer, RevokeTokenRequest { id }))
        .await
        .unwrap();
    assert_eq!(
        decide(&mut client, &token).await,
        (Decision::Deny, DenyReason::Revoked)
    );
}
