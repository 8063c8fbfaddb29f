//! The token lifecycle beyond create/list/revoke (issue 12): the audit trail
//! (ListTokenEvents) and expiry notices (ListExpiringTokens, `expires_soon`), through the
//! generated clients against a server on each store.

use std::time::Duration;

use casola_auth::{
    event::EventContext,
    proto::{
        CreateTokenRequest, GetTokenRequest, ListExpiringTokensRequest, ListTokenEventsRequest,
        RevokeTokenRequest, TokenEvent, TokenEventKind, UpdateTokenRequest,
    },
    restriction::Restrictions,
    store::{NewToken, now_micros},
    token::{
        PlainToken,
        fields::{Description, Owner, OwnerId, TokenName},
        hash::SecretHash,
    },
};
use tonic::Code;
use uuid::Uuid;

use crate::support::{
    TestServer, bad_fields, bearer, eventually, pg, test_config, token_id, with_metadata,
};

/// A request with a bearer token and an `x-request-id`.
fn traced<T>(token: &str, request_id: &str, message: T) -> tonic::Request<T> {
    with_metadata(
        message,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-request-id", request_id),
        ],
    )
}

fn for_user(user: &str, preset: &str, days: Option<i32>) -> CreateTokenRequest {
    CreateTokenRequest {
        name: format!("{user} {preset}"),
        preset: preset.into(),
        expires_in_days: days,
        org_id: "acme".into(),
        user_id: user.into(),
        ..Default::default()
    }
}

fn of_token(id: &str) -> ListTokenEventsRequest {
    ListTokenEventsRequest {
        token_id: id.into(),
        ..Default::default()
    }
}

fn of_org(org: &str) -> ListTokenEventsRequest {
    ListTokenEventsRequest {
        org_id: org.into(),
        ..Default::default()
    }
}

async fn events(server: &TestServer, caller: &str, req: ListTokenEventsRequest) -> Vec<TokenEvent> {
    server
        .tokens()
        .list_token_events(bearer(caller, req))
        .await
        .expect("list events")
        .into_inner()
        .events
}

fn kinds(events: &[TokenEvent]) -> Vec<TokenEventKind> {
    events.iter().map(TokenEvent::kind).collect()
}

/// Creates a token for `user` of acme through the API as the tokens:issue backend; returns
/// its secret and id.
async fn issue(server: &TestServer, issuer: &str, req: CreateTokenRequest) -> (String, String) {
    let created = server
        .tokens()
        .create_token(bearer(issuer, req))
        .await
        .expect("create")
        .into_inner();
    (created.secret, created.token.expect("token").id)
}

async fn every_change_is_in_the_trail_with_who_and_where(server: &TestServer) {
    let issuer = server
        .operator_token("acme", "backend", "admin-read", &["tokens:issue"])
        .await;
    let admin = server
        .operator_token("acme", "root", "admin-full", &[])
        .await;
    let issuer_id = token_id(&server.channel, &issuer).await;
    let admin_id = token_id(&server.channel, &admin).await;
    let mut tokens = server.tokens();

    let created = tokens
        .create_token(traced(
            &issuer,
            "req-create-1",
            for_user("alice", "user-full", Some(30)),
        ))
        .await
        .unwrap()
        .into_inner();
    let alice = created.secret;
    let id = created.token.unwrap().id;
    tokens
        .update_token(traced(
            &alice,
            "req-update-2",
            UpdateTokenRequest {
                id: id.clone(),
                description: "nightly".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    tokens
        .revoke_token(traced(
            &admin,
            "req-revoke-3",
            RevokeTokenRequest { id: id.clone() },
        ))
        .await
        .unwrap();
    // Revoking again changes nothing, so it records nothing.
    tokens
        .revoke_token(bearer(&admin, RevokeTokenRequest { id: id.clone() }))
        .await
        .unwrap();

    let trail = events(server, &admin, of_token(&id)).await;
    assert_eq!(
        kinds(&trail),
        [
            TokenEventKind::Revoked,
            TokenEventKind::Updated,
            TokenEventKind::Created
        ],
        "newest first: {trail:?}"
    );
    let who: Vec<_> = trail.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(
        who,
        [
            format!("admin:{admin_id}"),
            format!("token:{id}"),
            format!("token:{issuer_id}")
        ]
    );
    let requests: Vec<_> = trail.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(requests, ["req-revoke-3", "req-update-2", "req-create-1"]);
    for e in &trail {
        assert_eq!(e.token_id, id);
        assert_eq!((e.org_id.as_str(), e.user_id.as_str()), ("acme", "alice"));
        assert_eq!(e.source_addr, "127.0.0.1", "the peer of a loopback call");
        assert!(e.at.is_some());
    }
    let fields = &trail[1].detail.as_ref().unwrap().fields["fields"];
    assert_eq!(
        format!("{fields:?}").matches("description").count(),
        1,
        "{fields:?}"
    );
    let scopes = &trail[2].detail.as_ref().unwrap().fields["scopes"];
    assert!(format!("{scopes:?}").contains("user:write"), "{scopes:?}");
}

#[tokio::test]
async fn every_change_is_in_the_trail_with_who_and_where_on_each_store() {
    for server in TestServer::each_store().await {
        every_change_is_in_the_trail_with_who_and_where(&server).await;
    }
}

async fn first_use_is_recorded_once_by_the_last_used_flush(server: &TestServer) {
    let admin = server
        .operator_token("acme", "root", "admin-full", &[])
        .await;
    let user = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let id = token_id(&server.channel, &user).await;
    let services = server.running.services();
    for _ in 0..3 {
        server
            .authz()
            .authorize(crate::support::authorize(&user, &["user:read"]))
            .await
            .unwrap();
        services
            .last_used
            .flush(services.store.as_ref())
            .await
            .unwrap();
    }
    let trail = events(server, &admin, of_token(&id)).await;
    let firsts: Vec<_> = trail
        .iter()
        .filter(|e| e.kind() == TokenEventKind::FirstUsed)
        .collect();
    assert_eq!(firsts.len(), 1, "{trail:?}");
    assert_eq!(firsts[0].actor, "system");
}

#[tokio::test]
async fn first_use_is_recorded_once_by_the_last_used_flush_on_each_store() {
    for server in TestServer::each_store().await {
        first_use_is_recorded_once_by_the_last_used_flush(&server).await;
    }
}

#[tokio::test]
async fn events_are_visible_to_whoever_may_list_the_tokens() {
    let server = TestServer::memory().await;
    let issuer = server
        .operator_token("acme", "backend", "admin-read", &["tokens:issue"])
        .await;
    let service_id = token_id(&server.channel, &issuer).await;
    let reader = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let alice_id = token_id(&server.channel, &reader).await;
    let admin = server
        .operator_token("acme", "root", "admin-read", &[])
        .await;
    let stranger = server
        .operator_token("globex", "carol", "admin-full", &[])
        .await;
    let (_, bob_id) = issue(&server, &issuer, for_user("bob", "user-read", None)).await;
    let mut tokens = server.tokens();

    // Own token: user:read. A colleague's: not even its existence.
    assert_eq!(events(&server, &reader, of_token(&alice_id)).await.len(), 1);
    let hidden = tokens
        .list_token_events(bearer(&reader, of_token(&bob_id)))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let org_wide = tokens
        .list_token_events(bearer(&reader, of_org("acme")))
        .await
        .unwrap_err();
    assert_eq!(org_wide.code(), Code::PermissionDenied);

    // admin:read: every token of its organisation but the service token, nothing elsewhere.
    let seen = events(&server, &admin, of_org("acme")).await;
    let ids: Vec<_> = seen.iter().map(|e| e.token_id.as_str()).collect();
    assert!(ids.contains(&bob_id.as_str()) && ids.contains(&alice_id.as_str()));
    assert!(!ids.contains(&service_id.as_str()), "{ids:?}");
    let service = tokens
        .list_token_events(bearer(&admin, of_token(&service_id)))
        .await
        .unwrap_err();
    assert_eq!(service.code(), Code::NotFound);
    for other in [
        tokens
            .list_token_events(bearer(&admin, of_org("globex")))
            .await
            .unwrap_err(),
        tokens
            .list_token_events(bearer(&stranger, of_org("acme")))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    }
    let elsewhere = tokens
        .list_token_events(bearer(&stranger, of_token(&bob_id)))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::NotFound);

    // tokens:issue: any organisation, service tokens included.
    let all = events(&server, &issuer, of_org("acme")).await;
    assert!(all.iter().any(|e| e.token_id == service_id));
    assert_eq!(events(&server, &issuer, of_org("globex")).await.len(), 1);
}

#[tokio::test]
async fn bad_event_requests_are_invalid_arguments_naming_the_field() {
    let server = TestServer::memory().await;
    let admin = server
        .operator_token("acme", "root", "admin-read", &[])
        .await;
    let id = token_id(&server.channel, &admin).await;
    let mut tokens = server.tokens();
    let page_of_other_query = {
        // A real page token, issued for another filter.
        server.operator_token("acme", "bob", "user-read", &[]).await;
        tokens
            .list_token_events(bearer(
                &admin,
                ListTokenEventsRequest {
                    page_size: 1,
                    ..of_org("acme")
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .next_page_token
    };
    assert!(!page_of_other_query.is_empty());
    let cases = [
        (ListTokenEventsRequest::default(), "token_id"),
        (
            ListTokenEventsRequest {
                org_id: "acme".into(),
                ..of_token(&id)
            },
            "org_id",
        ),
        (of_token("not-a-uuid"), "token_id"),
        (
            ListTokenEventsRequest {
                page_size: -1,
                ..of_org("acme")
            },
            "page_size",
        ),
        (
            ListTokenEventsRequest {
                page_token: "garbage".into(),
                ..of_org("acme")
            },
            "page_token",
        ),
        (
            ListTokenEventsRequest {
                page_token: page_of_other_query,
                ..of_token(&id)
            },
            "page_token",
        ),
    ];
    for (req, field) in cases {
        let err = tokens
            .list_token_events(bearer(&admin, req.clone()))
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), [field], "{req:?}");
    }
}

#[tokio::test]
async fn event_pages_walk_the_whole_trail_once_newest_first() {
    let server = TestServer::postgres().await;
    let issuer = server
        .operator_token("acme", "backend", "admin-read", &["tokens:issue"])
        .await;
    for user in ["a", "b", "c", "d", "e"] {
        issue(&server, &issuer, for_user(user, "user-read", None)).await;
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10 {
        let page = server
            .tokens()
            .list_token_events(bearer(
                &issuer,
                ListTokenEventsRequest {
                    page_size: 2,
                    page_token,
                    ..of_org("acme")
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 2);
        seen.extend(page.events.iter().map(|e| e.id));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 6, "five tokens and the issuer's own: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
}

#[tokio::test]
async fn a_secret_pasted_anywhere_never_reaches_the_trail() {
    let server = TestServer::postgres().await;
    let issuer = server
        .operator_token("acme", "backend", "admin-read", &["tokens:issue"])
        .await;
    let pasted = PlainToken::generate();
    let secret = pasted.expose();
    let mut tokens = server.tokens();

    // Into the name: refused (and so not recorded).
    let refused = tokens
        .create_token(bearer(
            &issuer,
            CreateTokenRequest {
                name: format!("ci {secret}"),
                ..for_user("alice", "user-full", None)
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&refused), ["name"]);
    // Into the request id and, on update, the description.
    let created = tokens
        .create_token(traced(
            &issuer,
            &format!("req-{secret}"),
            for_user("alice", "user-full", None),
        ))
        .await
        .unwrap()
        .into_inner();
    let (alice, id) = (created.secret, created.token.unwrap().id);
    let refused = tokens
        .update_token(bearer(
            &alice,
            UpdateTokenRequest {
                id: id.clone(),
                description: format!("mine: {alice}"),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&refused), ["description"]);
    tokens
        .revoke_token(traced(
            &alice,
            secret,
            RevokeTokenRequest { id: id.clone() },
        ))
        .await
        .unwrap();

    let trail = events(&server, &issuer, of_token(&id)).await;
    assert_eq!(
        kinds(&trail),
        [TokenEventKind::Revoked, TokenEventKind::Created]
    );
    let shown = format!("{trail:?}");
    assert!(
        shown.contains("req-csl_"),
        "the request id is kept, cut: {shown}"
    );
    let table = pg::dump(server.db());
    let events_part = &table[table.find("token_events").expect("table in the dump")..];
    for whole in [secret, alice.as_str(), issuer.as_str()] {
        assert!(!shown.contains(whole));
        assert!(!events_part.contains(whole), "a full token in the dump");
        assert!(!table.contains(&whole[16..48]), "a secret part in the dump");
    }
}

#[tokio::test]
async fn the_expiry_sweep_records_a_reached_expiry_once() {
    let db = pg::TestDb::new().await;
    let mut config = test_config(Some(&db.url));
    config.expiry.sweep_interval_ms = 100;
    let server = TestServer::with_config(config, Some(db)).await;
    let admin = server
        .operator_token("acme", "root", "admin-read", &[])
        .await;
    // The API cannot make an expired token; the store can.
    let plain = PlainToken::generate();
    let expired_at = now_micros() - chrono::Duration::minutes(1);
    let id = Uuid::new_v4();
    server
        .running
        .services()
        .store
        .insert(
            NewToken {
                id,
                lookup_id: plain.lookup_id().clone(),
                secret_hash: SecretHash::from_stored("$argon2id$v=19$m=1024,t=1,p=1$x$y".into()),
                name: TokenName::parse("old").unwrap(),
                description: Description::parse("").unwrap(),
                scopes: vec!["user:read".into()],
                owner: Owner {
                    org_id: OwnerId::parse("acme").unwrap(),
                    user_id: OwnerId::parse("alice").unwrap(),
                },
                created_at: expired_at - chrono::Duration::days(1),
                created_by: "cli".into(),
                expires_at: Some(expired_at),
                restrictions: Restrictions::none(),
            },
            &EventContext::cli(),
        )
        .await
        .unwrap();
    let id = id.to_string();
    eventually(
        Duration::from_secs(30),
        "the expiry is recorded",
        || async {
            kinds(&events(&server, &admin, of_token(&id)).await).contains(&TokenEventKind::Expired)
        },
    )
    .await;
    // Several more sweeps: still one.
    let before = pg::query_i64(&server.db().url, "select count(*) from token_events").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trail = events(&server, &admin, of_token(&id)).await;
    assert_eq!(
        kinds(&trail),
        [TokenEventKind::Expired, TokenEventKind::Created]
    );
    let expired = &trail[0];
    assert_eq!(expired.actor, "system");
    assert_eq!(
        expired.at.as_ref().unwrap().seconds,
        expired_at.timestamp(),
        "at the expiry instant"
    );
    assert_eq!(
        pg::query_i64(&server.db().url, "select count(*) from token_events").await,
        before
    );
}

async fn expiring_tokens_are_listed_soonest_first(server: &TestServer) {
    let issuer = server
        .operator_token("acme", "backend", "admin-read", &["tokens:issue"])
        .await;
    let admin = server
        .operator_token("acme", "root", "admin-read", &[])
        .await;
    let reader = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let mut ids = std::collections::HashMap::new();
    for days in [3, 1, 10] {
        let (_, id) = issue(server, &issuer, for_user("alice", "user-read", Some(days))).await;
        ids.insert(days, id);
    }
    issue(server, &issuer, for_user("alice", "user-read", None)).await;
    let (_, revoked) = issue(server, &issuer, for_user("bob", "user-read", Some(2))).await;
    let mut tokens = server.tokens();
    tokens
        .revoke_token(bearer(&issuer, RevokeTokenRequest { id: revoked }))
        .await
        .unwrap();
    let (_, elsewhere) = issue(
        server,
        &issuer,
        CreateTokenRequest {
            org_id: "globex".into(),
            ..for_user("carol", "user-read", Some(2))
        },
    )
    .await;

    let list = |caller: &str, within_days: i32, org: &str| {
        let mut tokens = server.tokens();
        let req = bearer(
            caller,
            ListExpiringTokensRequest {
                within_days,
                org_id: org.into(),
                ..Default::default()
            },
        );
        async move { tokens.list_expiring_tokens(req).await }
    };
    // The default window (7 days), organisation-wide, active only, soonest first.
    let week = list(&admin, 0, "").await.unwrap().into_inner().tokens;
    let got: Vec<_> = week.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(got, [ids[&1].as_str(), ids[&3].as_str()]);
    assert!(week.iter().all(|t| t.expires_soon));
    let fortnight = list(&admin, 15, "acme").await.unwrap().into_inner().tokens;
    assert_eq!(fortnight.len(), 3);
    assert_eq!(fortnight[2].id, ids[&10]);
    assert!(
        !fortnight[2].expires_soon,
        "10 days is outside the notice window"
    );
    // The flag on the other reads.
    let got = tokens
        .get_token(bearer(
            &issuer,
            GetTokenRequest {
                id: ids[&1].clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(got.expires_soon);

    // tokens:issue: any organisation, or every one.
    let globex = list(&issuer, 0, "globex")
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(globex.len(), 1);
    assert_eq!(globex[0].id, elsewhere);
    let everywhere = list(&issuer, 0, "-").await.unwrap().into_inner().tokens;
    let got: Vec<_> = everywhere.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        got,
        [ids[&1].as_str(), elsewhere.as_str(), ids[&3].as_str()]
    );

    // Nobody else.
    for (caller, org) in [(&reader, ""), (&admin, "globex"), (&admin, "-")] {
        let err = list(caller, 0, org).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{org}: {err:?}");
    }
    for days in [-1, 3651] {
        let err = list(&admin, days, "").await.unwrap_err();
        assert_eq!(bad_fields(&err), ["within_days"]);
    }

    // Pages of one walk the same list.
    let mut paged = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10 {
        let page = tokens
            .list_expiring_tokens(bearer(
                &admin,
                ListExpiringTokensRequest {
                    within_days: 15,
                    page_size: 1,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.tokens.into_iter().map(|t| t.id));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    let want: Vec<_> = fortnight.into_iter().map(|t| t.id).collect();
    assert_eq!(paged, want);
}

#[tokio::test]
async fn expiring_tokens_are_listed_soonest_first_on_each_store() {
    for server in TestServer::each_store().await {
        expiring_tokens_are_listed_soonest_first(&server).await;
    }
}

#[tokio::test]
async fn the_expires_soon_window_is_configurable() {
    let mut config = test_config(None);
    config.expiry.soon_days = 2;
    let server = TestServer::with_config(config, None).await;
    let issuer = server
        .operator_token("acme", "backend", "admin-read", &["tokens:issue"])
        .await;
    let (_, one) = issue(&server, &issuer, for_user("alice", "user-read", Some(1))).await;
    let (_, three) = issue(&server, &issuer, for_user("alice", "user-read", Some(3))).await;
    let mut tokens = server.tokens();
    for (id, soon) in [(&one, true), (&three, false)] {
        let t = tokens
            .get_token(bearer(&issuer, GetTokenRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap();
        assert_eq!(t.expires_soon, soon, "{id}");
    }
    let listed = tokens
        .list_expiring_tokens(bearer(&issuer, ListExpiringTokensRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let got: Vec<_> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        got,
        [one.as_str()],
        "the default window is the configured one"
    );
}
