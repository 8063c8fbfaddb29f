//! Under fire (issue 11): a call past its deadline answers DEADLINE_EXCEEDED with its work
//! dropped, never a late OK; calls past the in-flight bound are shed with RESOURCE_EXHAUSTED
//! at once, while health checks keep answering. Correctness only: the figures are in
//! docs/reliability.md.

use std::time::Duration;

use casola_auth::{proto::WhoAmIRequest, token::hash::HashParams};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{TestServer, authorize, bearer, test_config};

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
