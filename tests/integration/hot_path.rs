//! Hot-path correctness (never timing): the verified-token cache, revocation across
//! replicas (two real server processes on one Postgres), the change log behind NOTIFY, the
//! listener's reconnect, refreshes without argon2, no lockout through a lookup id, the
//! write-behind of last_used_at, single-flight verifies and exact expiry.

use std::time::{Duration, Instant};

use casola_auth::proto::{
    AuthorizeRequest, Decision, DenyReason, GetTokenRequest, RevokeTokenRequest,
    authorization_service_client::AuthorizationServiceClient,
    token_service_client::TokenServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::support::{
    TestServer, authorize, bearer, eventually, forge_secret, free_port, pg,
    process::{ServerProcess, cli_token},
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

#[tokio::test]
async fn a_token_revoked_through_one_replica_is_denied_by_the_other() {
    let db = pg::TestDb::new().await;
    // Only the revocation notice (or the change log) can make the second replica deny.
    let env = [("CASOLA_AUTH_CACHE__IDLE_SECONDS", "3600")];
    let a = replica(&db.url, &env);
    let b = replica(&db.url, &env);
    let (ca, cb) = (a.channel().await, b.channel().await);
    let issuer = cli_token(&db.url, "backend", "admin-full", &[]);
    let mut revoker = TokenServiceClient::new(ca.clone());
    let mut on_b = AuthorizationServiceClient::new(cb.clone());

    for round in 0..5 {
        let token = cli_token(&db.url, &format!("user{round}"), "user-read", &[]);
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

/// Whether `app`'s LISTEN connection is in pg_stat_activity.
async fn listener_count(db: &str, app: &str) -> i64 {
    pg::query_i64(
        db,
        &format!("select count(*) from pg_stat_activity where application_name = '{app}'"),
    )
    .await
}

async fn revoke_by_hand(db: &str, token: &str) {
    let lookup = &token[4..16];
    pg::exec(
        db,
        &format!("update api_tokens set revoked_at = now() where lookup_id = '{lookup}'"),
    )
    .await;
}

async fn eventually_revoked(client: &AuthorizationServiceClient<Channel>, token: &str) {
    eventually(Duration::from_secs(15), "the revoked token is denied", || {
        let mut client = client.clone();
        let token = token.to_owned();
        async move { decide(&mut client, &token).await == (Decision::Deny, DenyReason::Revoked) }
    })
    .await;
}

// Contract change (issue 14): a reconnect used to drop the whole cache; now the change log
// catches up with what the listener missed, and the cache is kept.
#[tokio::test]
async fn a_killed_listener_reconnects_and_keeps_the_cache_while_the_change_log_catches_up() {
    let db = pg::TestDb::new().await;
    let b = replica(&db.url, &[]);
    let cb = b.channel().await;
    let mut on_b = AuthorizationServiceClient::new(cb.clone());
    let revoked = cli_token(&db.url, "alice", "user-read", &[]);
    let kept = cli_token(&db.url, "bob", "user-read", &[]);
    let app = format!("casola-auth-revocations-{}", b.pid());
    eventually(Duration::from_secs(10), "listener connected", || {
        let (url, app) = (db.url.clone(), app.clone());
        async move { listener_count(&url, &app).await == 1 }
    })
    .await;
    assert_eq!(decide(&mut on_b, &revoked).await.0, Decision::Allow);
    assert_eq!(decide(&mut on_b, &kept).await.0, Decision::Allow);
    let verifies = b.metric("casola_auth_argon2_verifies_total").await;
    assert_eq!(verifies, 2.0);

    let killed = pg::query_i64(
        &db.url,
        &format!("select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity where application_name = '{app}') t"),
    )
    .await;
    assert_eq!(killed, 1);
    // Behind the service's back: no NOTIFY; only the change log tells.
    revoke_by_hand(&db.url, &revoked).await;
    eventually_revoked(&on_b, &revoked).await;
    eventually(Duration::from_secs(10), "the listener is back", || {
        let (url, app) = (db.url.clone(), app.clone());
        async move { listener_count(&url, &app).await == 1 }
    })
    .await;
    assert_eq!(decide(&mut on_b, &kept).await.0, Decision::Allow);
    assert_eq!(
        b.metric("casola_auth_argon2_verifies_total").await,
        verifies,
        "the reconnect kept the cache: no secret proven twice"
    );
}

#[tokio::test]
async fn without_notify_a_revocation_by_hand_is_denied_through_the_change_log() {
    let db = pg::TestDb::new().await;
    // The listener can never connect: no notice ever arrives. The poll keeps answers fresh.
    let dead = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let b = replica(
        &db.url,
        &[
            ("CASOLA_AUTH_LISTEN_DATABASE_URL", &dead),
            ("CASOLA_AUTH_CACHE__POLL_INTERVAL_MS", "100"),
        ],
    );
    let mut on_b = AuthorizationServiceClient::new(b.channel().await);
    // The poller's first read only takes the newest position (and drops the cache); on a
    // loaded machine it can come late, after the first revocation, which would then never be
    // counted as a change. Start once it has polled.
    eventually(Duration::from_secs(30), "the change log polled", || async {
        b.metric("casola_auth_change_log_last_poll_timestamp_seconds")
            .await
            > 0.0
    })
    .await;
    for round in 0..3 {
        let token = cli_token(&db.url, &format!("user{round}"), "user-read", &[]);
        let hits = b.metric("casola_auth_cache_hits_total").await;
        assert_eq!(decide(&mut on_b, &token).await.0, Decision::Allow);
        assert_eq!(decide(&mut on_b, &token).await.0, Decision::Allow);
        assert!(
            b.metric("casola_auth_cache_hits_total").await > hits,
            "cached before the revocation"
        );
        revoke_by_hand(&db.url, &token).await;
        eventually_revoked(&on_b, &token).await;
        for _ in 0..20 {
            assert_eq!(
                decide(&mut on_b, &token).await,
                (Decision::Deny, DenyReason::Revoked)
            );
        }
    }
    assert_eq!(b.metric("casola_auth_revocation_notices_total").await, 0.0);
    // The poller counts a batch after applying it: the last denial can be seen a moment
    // before its change is counted.
    eventually(Duration::from_secs(10), "three changes counted", || async {
        b.metric("casola_auth_change_log_applied_total").await >= 3.0
    })
    .await;
}

#[tokio::test]
async fn a_cached_token_refreshed_after_a_change_costs_no_argon2_verify() {
    let db = pg::TestDb::new().await;
    let mut config = test_config(Some(&db.url));
    config.cache.poll_interval_ms = 100;
    let server = TestServer::with_config(config, Some(db)).await;
    let db = server.db.as_ref().unwrap();
    let token = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let pool = server.running.services().authorizer.verify_pool().clone();
    let write = AuthorizeRequest {
        token: token.clone(),
        required_scopes: vec!["user:write".into()],
        ..Default::default()
    };
    let mut client = server.authz();
    let before = pool.runs();
    let first = client.authorize(write.clone()).await.unwrap().into_inner();
    assert_eq!(first.deny_reason(), DenyReason::InsufficientScope);
    let proven = pool.runs();
    assert_eq!(proven - before, 1, "proven once");

    // A change to something the cache holds, by hand (so no NOTIFY either): the entry must
    // be re-read, and the secret must not be proven again.
    let lookup = &token[4..16];
    pg::exec(
        &db.url,
        &format!(
            "update api_tokens set scopes = '{{user:read,user:write}}' where lookup_id = '{lookup}'"
        ),
    )
    .await;
    eventually(Duration::from_secs(15), "the new scope is seen", || {
        let mut client = client.clone();
        let write = write.clone();
        async move {
            client
                .authorize(write)
                .await
                .unwrap()
                .into_inner()
                .decision()
                == Decision::Allow
        }
    })
    .await;
    // A second change: the refreshed entry refreshes again.
    pg::exec(
        &db.url,
        &format!("update api_tokens set scopes = '{{user:read}}' where lookup_id = '{lookup}'"),
    )
    .await;
    eventually(Duration::from_secs(15), "the scope is gone again", || {
        let mut client = client.clone();
        let write = write.clone();
        async move {
            client
                .authorize(write)
                .await
                .unwrap()
                .into_inner()
                .deny_reason()
                == DenyReason::InsufficientScope
        }
    })
    .await;
    assert_eq!(
        pool.runs(),
        proven,
        "refreshes re-read the row, never argon2"
    );
}

// Contract change (issue 14): the change-log poll now keeps answers fresh on its own, so
// failing closed needs both the listener and the poll to fail.
#[tokio::test]
async fn without_notices_or_the_change_log_cached_answers_stop_after_max_staleness() {
    let db = pg::TestDb::new().await;
    let dead = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let b = replica(
        &db.url,
        &[
            ("CASOLA_AUTH_LISTEN_DATABASE_URL", &dead),
            ("CASOLA_AUTH_CACHE__MAX_STALENESS_SECONDS", "3"),
            ("CASOLA_AUTH_CACHE__POLL_INTERVAL_MS", "100"),
        ],
    );
    let on_b = AuthorizationServiceClient::new(b.channel().await);
    let token = cli_token(&db.url, "alice", "user-read", &[]);
    let allowed = || {
        let mut on_b = on_b.clone();
        let token = token.clone();
        async move {
            matches!(on_b.authorize(authorize(&token, &[])).await,
                Ok(r) if r.get_ref().decision() == Decision::Allow)
        }
    };
    // The poll alone keeps it serving, past the start-up grace too.
    eventually(
        Duration::from_secs(15),
        "serving on the poll alone",
        allowed,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(allowed().await, "still serving after max_staleness");

    // Now the change log cannot be read either.
    pg::exec(
        &db.url,
        "alter table token_changes rename to token_changes_away",
    )
    .await;
    eventually(Duration::from_secs(15), "fails closed with UNAVAILABLE", || {
        let mut on_b = on_b.clone();
        let token = token.clone();
        async move {
            matches!(on_b.authorize(authorize(&token, &[])).await, Err(s) if s.code() == Code::Unavailable)
        }
    })
    .await;
    // Malformed input needs no state and is still a plain denial.
    assert_eq!(
        decide(&mut on_b.clone(), "nope").await.1,
        DenyReason::Malformed
    );

    pg::exec(
        &db.url,
        "alter table token_changes_away rename to token_changes",
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "serves again once the log is back",
        allowed,
    )
    .await;
}

#[tokio::test]
async fn last_used_is_written_behind_and_flushed_at_shutdown() {
    let db = pg::TestDb::new().await;
    let token = cli_token(&db.url, "alice", "user-read", &[]);
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
    slow.terminate().await;
    assert_eq!(
        pg::query_i64(&db.url, &last_used).await,
        1,
        "flushed at shutdown"
    );

    // A short interval: written while serving.
    let other = cli_token(&db.url, "bob", "user-read", &[]);
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

// Contract change (issue 16): different wrong secrets used to share one verify slot per
// lookup id, which also kept the right secret out. Now a repeated wrong secret costs one
// verify per interval, different ones a bounded budget, answered RESOURCE_EXHAUSTED past it.
#[tokio::test]
async fn a_repeated_wrong_secret_costs_one_verify_and_different_ones_a_bounded_budget() {
    let mut config = test_config(None);
    config.cache.negative_ttl_ms = 3_600_000;
    config.cache.wrong_secret_budget = 4;
    let server = TestServer::with_config(config, None).await;
    let token = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let pool = server.running.services().authorizer.verify_pool().clone();
    let before = pool.runs();
    let mut client = server.authz();
    let forged = forge_secret(&token, 0);
    for _ in 0..40 {
        assert_eq!(
            decide(&mut client, &forged).await,
            (Decision::Deny, DenyReason::Unknown)
        );
    }
    assert_eq!(pool.runs() - before, 1, "one verify for one wrong secret");

    let mut exhausted = 0;
    for i in 1..40 {
        match client
            .authorize(authorize(&forge_secret(&token, i), &[]))
            .await
        {
            Ok(r) => assert_eq!(r.get_ref().deny_reason(), DenyReason::Unknown),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                exhausted += 1;
            }
        }
    }
    assert_eq!(pool.runs() - before, 4, "the budget bounds the verifies");
    assert_eq!(exhausted, 39 - 3);
    // The right secret is never called unknown: while the budget is spent it gets a
    // retryable refusal.
    let answer = client.authorize(authorize(&token, &[])).await;
    assert!(
        matches!(&answer, Err(s) if s.code() == Code::ResourceExhausted),
        "{answer:?}"
    );
}

/// Floods `channel` with `forged` (cycled) from 8 tasks until `until`; returns how many
/// answers were "unknown" and how many RESOURCE_EXHAUSTED. Anything else fails.
fn flood(
    channel: Channel,
    forged: Vec<String>,
    until: Instant,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let forged = std::sync::Arc::new(forged);
        let tasks = (0..8).map(|t| {
            let mut client = AuthorizationServiceClient::new(channel.clone());
            let forged = forged.clone();
            tokio::spawn(async move {
                let (mut unknown, mut exhausted, mut i) = (0u64, 0u64, t);
                while Instant::now() < until {
                    let token = &forged[i % forged.len()];
                    i += 8;
                    match client.authorize(authorize(token, &[])).await {
                        Ok(r) => {
                            assert_eq!(
                                (r.get_ref().decision(), r.get_ref().deny_reason()),
                                (Decision::Deny, DenyReason::Unknown)
                            );
                            unknown += 1;
                        }
                        Err(s) if s.code() == Code::ResourceExhausted => exhausted += 1,
                        Err(s) => panic!("flood answered {s:?}"),
                    }
                }
                (unknown, exhausted)
            })
        });
        let mut total = (0, 0);
        for task in futures::future::join_all(tasks).await {
            let (u, e) = task.unwrap();
            total = (total.0 + u, total.1 + e);
        }
        total
    })
}

/// The per-source failed-verify limit out of the way: here the stranger and the victim share
/// one loopback address, and the subject is the per-lookup-id budget (the per-source limit
/// is fairness.rs's).
const NO_SOURCE_LIMIT: (&str, &str) = ("CASOLA_AUTH_LIMITS__FAILED_VERIFIES_BURST", "1000000000");

/// How long each lockout flood runs (loopback only, bounded): the 30 s of the audit's probe
/// (issue 16), during which the valid token is used first and again after its entry is gone.
const FLOOD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_forged_token_never_keeps_the_right_secret_out() {
    let db = pg::TestDb::new().await;
    // Entries idle out after a second, so the valid token is proven again mid-flood.
    let b = replica(
        &db.url,
        &[("CASOLA_AUTH_CACHE__IDLE_SECONDS", "1"), NO_SOURCE_LIMIT],
    );
    let channel = b.channel().await;
    let valid = cli_token(&db.url, "victim", "user-read", &[]);
    let forged = forge_secret(&valid, 0);
    let until = Instant::now() + FLOOD;
    let flooding = flood(channel.clone(), vec![forged], until);
    let mut client = AuthorizationServiceClient::new(channel);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tries = 0;
    while Instant::now() + Duration::from_secs(3) < until {
        // First use (or first since the entry idled out), then warm uses.
        for _ in 0..3 {
            assert_eq!(
                decide(&mut client, &valid).await,
                (Decision::Allow, DenyReason::Unspecified),
                "the valid token during the flood"
            );
            tries += 1;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let (unknown, exhausted) = flooding.await.unwrap();
    assert!(unknown > 0, "the flood ran");
    assert_eq!(exhausted, 0, "one wrong secret never spends the budget");
    assert!(tries >= 6);
    let matches = b
        .metric("casola_auth_argon2_verifies_total{outcome=\"match\"}")
        .await;
    assert!(
        matches >= 2.0,
        "the valid token was proven again after its entry was gone ({matches})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_varying_forged_secrets_never_gets_the_right_secret_called_unknown() {
    let db = pg::TestDb::new().await;
    let b = replica(
        &db.url,
        &[("CASOLA_AUTH_CACHE__IDLE_SECONDS", "1"), NO_SOURCE_LIMIT],
    );
    let channel = b.channel().await;
    let valid = cli_token(&db.url, "victim", "user-read", &[]);
    let forged: Vec<_> = (1..1900).map(|n| forge_secret(&valid, n)).collect();
    let until = Instant::now() + FLOOD;
    let flooding = flood(channel.clone(), forged, until);
    let mut client = AuthorizationServiceClient::new(channel);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut allowed, mut retry) = (0, 0);
    while Instant::now() + Duration::from_secs(1) < until {
        match client.authorize(authorize(&valid, &[])).await {
            Ok(r) => {
                assert_eq!(
                    (r.get_ref().decision(), r.get_ref().deny_reason()),
                    (Decision::Allow, DenyReason::Unspecified),
                    "the valid token is never refused as unknown"
                );
                allowed += 1;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                retry += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let (unknown, exhausted) = flooding.await.unwrap();
    assert!(unknown > 0 && exhausted > 0, "the flood spent the budget");
    assert!(allowed + retry >= 5, "the valid token was tried");
}

#[tokio::test]
async fn a_cached_token_stops_working_exactly_at_its_expiry() {
    let server = TestServer::postgres().await;
    let token = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let db = server.db.as_ref().unwrap();
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
