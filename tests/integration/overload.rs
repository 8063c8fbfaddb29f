//! Under fire (issue 11): a call past its deadline answers DEADLINE_EXCEEDED with its work
//! dropped, never a late OK; calls past the in-flight bound are shed with RESOURCE_EXHAUSTED
//! at once, while health checks keep answering. Correctness only: the figures are in
//! docs/reliability.md.

use std::time::Duration;

use casola_auth::{
    proto::{Decision, WhoAmIRequest},
    token::hash::HashParams,
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{TestServer, authorize, bearer, eventually, pg, test_config};

/// argon2 heavy enough that one cold verify stays in flight for a long while (hundreds of
/// milliseconds), so the test never races it.
const SLOW_ARGON2: HashParams = HashParams {
    memory_kib: 256 * 1024,
    iterations: 2,
    parallelism: 1,
};

#[tokio::test]
async fn a_call_past_its_deadline_answers_deadline_exceeded_and_the_token_still_works() {
    let mut config = test_config(None);
    config.argon2 = SLOW_ARGON2;
    // The server's own ceiling (a client's grpc-timeout would also be enforced by the
    // client, which could answer first; the layer's unit tests cover the header).
    config.limits.decision_deadline_ms = 5;
    let server = TestServer::with_config(config, None).await;
    let token = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let mut authz = server.authz();

    // A cold Authorize needs a verify that takes far longer than 5 ms.
    let status = authz
        .authorize(tonic::Request::new(authorize(&token, &[])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("within the deadline"),
        "answered by the server: {}",
        status.message()
    );

    // Without a deadline the same token is verified and allowed.
    let who = authz
        .who_am_i(bearer(&token, WhoAmIRequest {}))
        .await
        .expect("WhoAmI has no ceiling");
    assert!(who.into_inner().principal.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_in_flight_bound_are_shed_while_health_answers() {
    let mut config = test_config(None);
    config.argon2 = SLOW_ARGON2;
    config.limits.max_in_flight = 1;
    let server = TestServer::with_config(config, None).await;
    let token = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;

    // One slow call (a cold verify) holds the only slot; it is retried until admitted, in
    // case a probe held the slot when it arrived.
    let mut authz = server.authz();
    let blocker = tokio::spawn(async move {
        loop {
            match authz.who_am_i(bearer(&token, WhoAmIRequest {})).await {
                Err(s) if s.code() == Code::ResourceExhausted => continue,
                answer => return answer,
            }
        }
    });

    let mut probes = server.authz();
    let mut health = HealthClient::new(server.channel.clone());
    let mut shed = 0;
    while !blocker.is_finished() {
        match probes
            .authorize(tonic::Request::new(authorize("not-a-token", &[])))
            .await
        {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("retry"), "{}", s.message());
                shed += 1;
            }
            Ok(_) => {}
            Err(other) => panic!("a probe got {other:?}"),
        }
        let serving = health
            .check(HealthCheckRequest {
                service: "liveness".into(),
            })
            .await
            .expect("health is never shed")
            .into_inner()
            .status();
        assert_eq!(serving, ServingStatus::Serving);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    blocker
        .await
        .unwrap()
        .expect("the admitted call is answered");
    assert!(shed > 0, "no probe was shed while the slot was taken");
}

/// A store turned slow (here: its tokens table locked): cold lookups that could not finish
/// before their deadline are refused at once, RESOURCE_EXHAUSTED and retryable, instead of
/// each holding a store connection and a stream until the deadline and answering
/// DEADLINE_EXCEEDED. The refusal rests on the reads' recent pace, which only reads measure:
/// one probe every 100 ms goes anyway, so a store that is fast again is seen again (without
/// it, one stall would refuse every first use for ever).
#[tokio::test]
async fn cold_lookups_that_cannot_finish_before_their_deadline_are_refused_at_once() {
    let db = pg::TestDb::new().await;
    let url = db.url.clone();
    let mut config = test_config(Some(&url));
    config.limits.decision_deadline_ms = 100;
    let server = TestServer::with_config(config, Some(db)).await;
    let tokens = user_read_tokens(&server, 40).await;
    let mut authz = server.authz();

    // The table locked: the first cold lookup's read waits past the call's deadline.
    let (locker, connection) = lock_tokens_table(&url).await;
    let status = authz
        .authorize(tonic::Request::new(authorize(&tokens[0], &[])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Half a second later the lock goes; the read (it outlives its call) ends, and its time
    // is the reads' pace: far past the 100 ms any Authorize gets.
    tokio::time::sleep(Duration::from_millis(400)).await;
    locker.batch_execute("commit").await.unwrap();
    eventually(Duration::from_secs(10), "the first token verified", || {
        allowed(server.authz(), vec![tokens[0].clone()])
    })
    .await;

    // Cold lookups now: refused at once for their deadline, but for the probes.
    let (mut refused, mut probed) = (0, 0);
    for token in &tokens[1..] {
        match authz
            .authorize(tonic::Request::new(authorize(token, &[])))
            .await
        {
            Ok(answer) if answer.get_ref().decision() == Decision::Allow => probed += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(
                    s.message()
                        .contains("would not finish before the call's deadline"),
                    "{}",
                    s.message()
                );
                refused += 1;
            }
            other => panic!("a cold lookup got {other:?}"),
        }
    }
    assert!(refused > 0, "no cold lookup was refused for its deadline");
    assert!(probed > 0, "no probe went to the store");
    // The probes were fast: the pace comes down, and every first use works again.
    eventually(Duration::from_secs(10), "first uses allowed again", || {
        allowed(server.authz(), tokens[1..].to_vec())
    })
    .await;
    drop(locker);
    let _ = connection.await;
}

/// A flood of first uses starts no more store reads than the argon2 queue can take verifies
/// from: each read holds a place in the queue, and a call with no place left is refused
/// before its read, at once, instead of after it (a read for nobody, and a refusal as late
/// as the read). Here one worker and one place in the queue: two reads, held up by a lock
/// on the tokens table; the other first uses are refused while those two still wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_uses_past_the_argon2_queue_are_refused_before_their_store_read() {
    let db = pg::TestDb::new().await;
    let url = db.url.clone();
    let mut config = test_config(Some(&url));
    config.verify.workers = Some(1);
    config.verify.queue = Some(1);
    // Calls that outlast the lock: their reads wait for it, not their deadline.
    config.limits.decision_deadline_ms = 60_000;
    let server = TestServer::with_config(config, Some(db)).await;
    let tokens = user_read_tokens(&server, 6).await;

    let (locker, connection) = lock_tokens_table(&url).await;
    let calls: Vec<_> = tokens
        .iter()
        .map(|token| {
            let mut authz = server.authz();
            let request = authorize(token, &[]);
            tokio::spawn(async move { authz.authorize(tonic::Request::new(request)).await })
        })
        .collect();

    // Two reads reach the store and wait on the lock; the other four are refused.
    let (watcher, watching) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let watching = tokio::spawn(watching);
    let waiting_reads = || async {
        let row = watcher
            .query_one(
                "select count(*) from pg_stat_activity \
                 where wait_event_type = 'Lock' and query like '%\"lookup_id\" = $1%'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    eventually(
        Duration::from_secs(10),
        "two reads waiting on the lock",
        || async {
            waiting_reads().await == 2 && calls.iter().filter(|c| c.is_finished()).count() == 4
        },
    )
    .await;
    let mut answered = 0;
    let mut pending = Vec::new();
    for call in calls {
        if !call.is_finished() {
            pending.push(call);
            continue;
        }
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .contains("too many token verifications queued"),
            "{}",
            status.message()
        );
        answered += 1;
    }
    assert_eq!((answered, pending.len()), (4, 2));
    assert_eq!(
        waiting_reads().await,
        2,
        "no read started for a refused call"
    );

    // The lock goes: the two reads end, and their tokens are verified and allowed.
    locker.batch_execute("commit").await.unwrap();
    for call in pending {
        let answer = call.await.unwrap().expect("a call that held a place");
        assert_eq!(answer.get_ref().decision(), Decision::Allow);
    }
    drop((locker, watcher));
    let _ = connection.await;
    let _ = watching.await;
}

/// `n` new tokens of as many users, each with the user-read preset.
async fn user_read_tokens(server: &TestServer, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for i in 0..n {
        tokens.push(
            server
                .operator_token("acme", &format!("user{i}"), "user-read", &[])
                .await,
        );
    }
    tokens
}

/// A transaction holding the tokens table locked (every read of it waits) until it commits,
/// and its connection's task.
async fn lock_tokens_table(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (locker, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    locker
        .batch_execute("begin; lock table api_tokens in access exclusive mode")
        .await
        .unwrap();
    (locker, connection)
}

/// Whether every one of `tokens` is allowed now.
async fn allowed(
    mut authz: casola_auth::proto::authorization_service_client::AuthorizationServiceClient<
        tonic::transport::Channel,
    >,
    tokens: Vec<String>,
) -> bool {
    for token in tokens {
        match authz
            .authorize(tonic::Request::new(authorize(&token, &[])))
            .await
        {
            Ok(answer) if answer.get_ref().decision() == Decision::Allow => {}
            _ => return false,
        }
    }
    true
}
