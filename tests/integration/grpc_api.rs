//! gRPC integration tests over loopback through the generated clients: the token lifecycle
//! on both stores and every error code of the API.

use casola_auth::proto::{
    AuthorizeRequest, CreateTokenRequest, Decision, DenyReason, GetTokenRequest, ListScopesRequest,
    ListTokensRequest, RevokeTokenRequest, ScopeMatch, TokenStatus, UpdateTokenRequest,
    WhoAmIRequest,
};
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{
    TestServer, authorize, bad_fields, bearer, forge_secret, free_port, http_get, pg, test_config,
};

fn create(name: &str, preset: &str) -> CreateTokenRequest {
    CreateTokenRequest {
        name: name.into(),
        preset: preset.into(),
        ..Default::default()
    }
}

async fn lifecycle(server: &TestServer) {
    let issuer = server
        .operator_token("acme", "backend", "admin-full", &["tokens:issue"])
        .await;
    let mut tokens = server.tokens();
    let mut authz = server.authz();

    // The dashboard backend creates a token for alice.
    let created = tokens
        .create_token(bearer(
            &issuer,
            CreateTokenRequest {
                name: "  CI pipeline ".into(),
                description: "nightly builds".into(),
                preset: "user-full".into(),
                expires_in_days: Some(30),
                org_id: "acme".into(),
                user_id: "alice".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("create")
        .into_inner();
    let secret = created.secret.clone();
    let token = created.token.expect("token");
    assert_eq!(secret.len(), 54);
    assert!(secret.starts_with(&token.prefix));
    assert_eq!(token.prefix.len(), 10);
    assert_eq!(token.name, "CI pipeline", "trimmed");
    assert_eq!(token.scopes, ["user:read", "user:write"]);
    assert_eq!(
        (token.org_id.as_str(), token.user_id.as_str()),
        ("acme", "alice")
    );
    assert_eq!(token.status(), TokenStatus::Active);
    assert!(token.expires_at.is_some());
    assert!(token.created_by.starts_with("token:"));

    // Test token: who-am-I with the new one.
    let me = authz
        .who_am_i(bearer(&secret, WhoAmIRequest {}))
        .await
        .expect("who am i")
        .into_inner();
    let principal = me.principal.expect("principal");
    assert_eq!(principal.token_id, token.id);
    assert_eq!(principal.user_id, "alice");
    assert_eq!(principal.scopes, ["user:read", "user:write"]);
    assert_eq!(me.token.expect("token").id, token.id);

    // Authorize: allowed, denied for a missing scope, ANY matching, header forms.
    let allowed = authz
        .authorize(authorize(&secret, &["user:write"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.decision(), Decision::Allow);
    assert_eq!(allowed.principal.unwrap().org_id, "acme");
    let denied = authz
        .authorize(authorize(&secret, &["user:read", "admin:read"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.decision(), Decision::Deny);
    assert_eq!(denied.deny_reason(), DenyReason::InsufficientScope);
    assert_eq!(denied.missing_scopes, ["admin:read"]);
    let any = authz
        .authorize(AuthorizeRequest {
            r#match: ScopeMatch::Any.into(),
            ..authorize(&secret, &["user:read", "admin:read"])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(any.decision(), Decision::Allow);
    for form in [format!("Bearer {secret}"), format!("key {secret}")] {
        let r = authz
            .authorize(authorize(&form, &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.decision(), Decision::Allow, "{}", &form[..4]);
    }

    // alice sees her token in the list and by id, never the secret.
    let listed = tokens
        .list_tokens(bearer(&secret, ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert_eq!(listed.tokens[0].id, token.id);
    assert!(!format!("{listed:?}").contains(&secret[14..46]));
    let got = tokens
        .get_token(bearer(
            &secret,
            GetTokenRequest {
                id: token.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(got.name, "CI pipeline");

    // Rename.
    let renamed = tokens
        .update_token(bearer(
            &secret,
            UpdateTokenRequest {
                id: token.id.clone(),
                name: "CI (old runner)".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(renamed.name, "CI (old runner)");
    assert_eq!(renamed.description, "nightly builds");

    // Revoke: immediate, irreversible, idempotent.
    let revoked = tokens
        .revoke_token(bearer(
            &issuer,
            RevokeTokenRequest {
                id: token.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(revoked.status(), TokenStatus::Revoked);
    let after = authz
        .authorize(authorize(&secret, &["user:read"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.decision(), Decision::Deny);
    assert_eq!(after.deny_reason(), DenyReason::Revoked);
    assert!(after.principal.is_none());
    let again = tokens
        .revoke_token(bearer(
            &issuer,
            RevokeTokenRequest {
                id: token.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);
    let who = authz
        .who_am_i(bearer(&secret, WhoAmIRequest {}))
        .await
        .unwrap_err();
    assert_eq!(who.code(), Code::Unauthenticated);
    let listed = tokens
        .list_tokens(bearer(
            &issuer,
            ListTokensRequest {
                org_id: "acme".into(),
                user_id: "alice".into(),
                include_revoked: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert_eq!(listed.tokens[0].status(), TokenStatus::Revoked);
    let active = tokens
        .list_tokens(bearer(
            &issuer,
            ListTokensRequest {
                org_id: "acme".into(),
                user_id: "alice".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        active.tokens.is_empty(),
        "revoked tokens are hidden by default"
    );
}

#[tokio::test]
async fn the_whole_lifecycle_works_on_the_memory_store() {
    lifecycle(&TestServer::memory().await).await;
}

#[tokio::test]
async fn the_whole_lifecycle_works_on_postgres_and_the_dump_holds_no_secret() {
    let server = TestServer::postgres().await;
    let issuer = server
        .operator_token("acme", "backend", "", &["tokens:issue", "user:write"])
        .await;
    lifecycle(&server).await;
    let dump = pg::dump(server.db());
    assert!(dump.contains("CI (old runner)"), "the dump holds the data");
    assert!(!dump.contains(&issuer), "no whole token in the database");
    assert!(
        !dump.contains(&issuer[16..48]),
        "no secret part in the database"
    );
    assert!(dump.contains("$argon2id$"), "only hashes");
}

#[tokio::test]
async fn malformed_unknown_and_wrong_secret_tokens_are_denied_not_errors() {
    for server in TestServer::each_store().await {
        let mut authz = server.authz();
        let real = server
            .operator_token("acme", "alice", "user-read", &[])
            .await;
        let cases = [
            ("".to_owned(), DenyReason::Malformed),
            ("Bearer".to_owned(), DenyReason::Malformed),
            ("sk-not-ours".to_owned(), DenyReason::Malformed),
            (real[..53].to_owned(), DenyReason::Malformed),
            (
                casola_auth::token::PlainToken::generate()
                    .expose()
                    .to_owned(),
                DenyReason::Unknown,
            ),
        ];
        for (token, reason) in cases {
            let r = authz
                .authorize(authorize(&token, &[]))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.decision(), Decision::Deny);
            assert_eq!(r.deny_reason(), reason, "{token:.12}");
            assert!(r.principal.is_none());
        }
        // Right lookup id, wrong secret (checksum recomputed so it parses): unknown.
        let forged = forge_secret(&real, 0);
        let r = authz
            .authorize(authorize(&forged, &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.deny_reason(), DenyReason::Unknown);
    }
}

#[tokio::test]
async fn an_expired_token_is_denied_as_expired() {
    let server = TestServer::postgres().await;
    let token = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let db = server.db();
    let lookup = &token[4..16];
    let n = pg::exec(
        &db.url,
        &format!("update api_tokens set expires_at = now() - interval '1 second' where lookup_id = '{lookup}'"),
    )
    .await;
    assert_eq!(n, 1);
    let r = server
        .authz()
        .authorize(authorize(&token, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision(), Decision::Deny);
    assert_eq!(r.deny_reason(), DenyReason::Expired);
    let caller = server
        .tokens()
        .list_tokens(bearer(&token, ListTokensRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(caller.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn token_service_needs_a_valid_caller_token() {
    for server in TestServer::each_store().await {
        let mut tokens = server.tokens();
        let none = tokens
            .list_tokens(Request::new(ListTokensRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(none.code(), Code::Unauthenticated);
        let bad = tokens
            .list_tokens(bearer("csl_nope", ListTokensRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::Unauthenticated);
        let unknown = casola_auth::token::PlainToken::generate();
        let err = tokens
            .create_token(bearer(unknown.expose(), create("x", "user-read")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(
            !err.message().contains(unknown.expose()),
            "no token in errors"
        );
        let scopes = tokens
            .list_scopes(Request::new(ListScopesRequest {}))
            .await
            .unwrap_err();
        assert_eq!(scopes.code(), Code::Unauthenticated);
    }
}

#[tokio::test]
async fn invalid_requests_name_every_bad_field() {
    let server = TestServer::memory().await;
    let alice = server
        .operator_token("acme", "alice", "user-full", &[])
        .await;
    let mut tokens = server.tokens();
    let err = tokens
        .create_token(bearer(
            &alice,
            CreateTokenRequest {
                name: "   ".into(),
                description: "d".repeat(1001),
                preset: "superuser".into(),
                scopes: vec!["user:read".into(), "jobs:launch".into()],
                expires_in_days: Some(0),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    let fields = bad_fields(&err);
    for field in [
        "name",
        "description",
        "preset",
        "scopes[1]",
        "expires_in_days",
    ] {
        assert!(fields.contains(&field.to_owned()), "{field} in {fields:?}");
    }
    assert!(err.message().contains("name"));

    let no_scopes = tokens
        .create_token(bearer(&alice, create("x", "")))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&no_scopes), ["scopes"]);
    let too_long = tokens
        .create_token(bearer(&alice, create(&"n".repeat(101), "user-read")))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&too_long), ["name"]);
    let too_many = tokens
        .create_token(bearer(
            &alice,
            CreateTokenRequest {
                scopes: vec!["user:read".into(); 65],
                ..create("x", "")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&too_many), ["scopes"]);
    let too_far = tokens
        .create_token(bearer(
            &alice,
            CreateTokenRequest {
                expires_in_days: Some(3651),
                ..create("x", "user-read")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&too_far), ["expires_in_days"]);

    let bad_id = tokens
        .get_token(bearer(&alice, GetTokenRequest { id: "42".into() }))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_id), ["id"]);
    let bad_page = tokens
        .list_tokens(bearer(
            &alice,
            ListTokensRequest {
                page_size: -1,
                page_token: "garbage".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_page), ["page_size", "page_token"]);
    let bad_mask = tokens
        .update_token(bearer(
            &alice,
            UpdateTokenRequest {
                id: uuid::Uuid::new_v4().to_string(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["scopes".into()],
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_mask), ["update_mask"]);
    let nothing = tokens
        .update_token(bearer(
            &alice,
            UpdateTokenRequest {
                id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&nothing), ["update_mask"]);

    let mut authz = server.authz();
    let unknown_scope = authz
        .authorize(authorize(&alice, &["user:read", "nope"]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&unknown_scope), ["required_scopes[1]"]);
    let bad_match = authz
        .authorize(AuthorizeRequest {
            r#match: 9,
            ..authorize(&alice, &[])
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_match), ["match"]);
}

#[tokio::test]
async fn minting_a_token_never_escalates_privileges() {
    let server = TestServer::memory().await;
    let mut tokens = server.tokens();
    let reader = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let writer = server
        .operator_token("acme", "alice", "user-full", &[])
        .await;

    let err = tokens
        .create_token(bearer(&reader, create("x", "user-read")))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "user:read cannot create"
    );
    let err = tokens
        .create_token(bearer(&writer, create("x", "admin-read")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("admin:read"), "{}", err.message());
    let err = tokens
        .create_token(bearer(
            &writer,
            CreateTokenRequest {
                scopes: vec!["tokens:issue".into()],
                ..create("x", "")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = tokens
        .create_token(bearer(
            &writer,
            CreateTokenRequest {
                org_id: "acme".into(),
                user_id: "bob".into(),
                ..create("x", "user-read")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "only tokens:issue names other owners"
    );
    // Naming oneself explicitly is fine; a narrower token is fine.
    let own = tokens
        .create_token(bearer(
            &writer,
            CreateTokenRequest {
                org_id: "acme".into(),
                user_id: "alice".into(),
                expires_in_days: Some(7),
                ..create("narrow", "user-read")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.token.unwrap().scopes, ["user:read"]);

    // A token that expires cannot mint one that outlives it.
    let short = server
        .tokens()
        .create_token(bearer(
            &writer,
            CreateTokenRequest {
                expires_in_days: Some(7),
                ..create("short", "user-full")
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let err = tokens
        .create_token(bearer(&short, create("forever", "user-read")))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["expires_in_days"]);
    let err = tokens
        .create_token(bearer(
            &short,
            CreateTokenRequest {
                expires_in_days: Some(8),
                ..create("longer", "user-read")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["expires_in_days"]);
}

#[tokio::test]
async fn organisation_admins_see_and_revoke_their_organisation_only() {
    for server in TestServer::each_store().await {
        let mut tokens = server.tokens();
        let bob = server.operator_token("acme", "bob", "user-full", &[]).await;
        let admin_read = server
            .operator_token("acme", "carol", "admin-read", &[])
            .await;
        let admin_full = server
            .operator_token("acme", "dave", "admin-full", &[])
            .await;
        let stranger = server
            .operator_token("globex", "eve", "admin-full", &[])
            .await;
        let bobs = tokens
            .create_token(bearer(&bob, create("bob's laptop", "user-read")))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap();
        let get = |id: &str| GetTokenRequest { id: id.into() };

        let seen = tokens
            .get_token(bearer(&admin_read, get(&bobs.id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seen.token.unwrap().user_id, "bob");
        let everyone = tokens
            .list_tokens(bearer(
                &admin_read,
                ListTokensRequest {
                    user_id: "-".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let users: std::collections::BTreeSet<_> =
            everyone.tokens.iter().map(|t| t.user_id.clone()).collect();
        assert_eq!(
            users.into_iter().collect::<Vec<_>>(),
            ["bob", "carol", "dave"]
        );
        let one = tokens
            .list_tokens(bearer(
                &admin_read,
                ListTokensRequest {
                    user_id: "bob".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(one.tokens.len(), 2);

        let err = tokens
            .revoke_token(bearer(
                &admin_read,
                RevokeTokenRequest {
                    id: bobs.id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "admin:read cannot revoke"
        );
        let err = tokens
            .update_token(bearer(
                &admin_full,
                UpdateTokenRequest {
                    id: bobs.id.clone(),
                    name: "mine now".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "admins revoke, they do not rename"
        );

        // Other organisations cannot even tell the token exists.
        let err = tokens
            .get_token(bearer(&stranger, get(&bobs.id)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = tokens
            .revoke_token(bearer(
                &stranger,
                RevokeTokenRequest {
                    id: bobs.id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = tokens
            .list_tokens(bearer(
                &stranger,
                ListTokensRequest {
                    org_id: "acme".into(),
                    user_id: "-".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        // A colleague without admin scopes neither.
        let alice = server
            .operator_token("acme", "alice", "user-full", &[])
            .await;
        let err = tokens
            .get_token(bearer(&alice, get(&bobs.id)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = tokens
            .list_tokens(bearer(
                &alice,
                ListTokensRequest {
                    user_id: "-".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = tokens
            .get_token(bearer(&alice, get(&uuid::Uuid::new_v4().to_string())))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        // Offboarding: admin:write revokes bob's token.
        let revoked = tokens
            .revoke_token(bearer(
                &admin_full,
                RevokeTokenRequest {
                    id: bobs.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(revoked.token.unwrap().status(), TokenStatus::Revoked);
    }
}

#[tokio::test]
async fn listing_pages_through_tokens_newest_first_without_gaps() {
    for server in TestServer::each_store().await {
        let alice = server
            .operator_token("acme", "alice", "user-full", &[])
            .await;
        let mut tokens = server.tokens();
        let mut made = Vec::new();
        for i in 0..6 {
            let t = tokens
                .create_token(bearer(&alice, create(&format!("t{i}"), "user-read")))
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap();
            made.push(t.id);
        }
        let mut seen = Vec::new();
        let mut page_token = String::new();
        let mut pages = 0;
        loop {
            let page = tokens
                .list_tokens(bearer(
                    &alice,
                    ListTokensRequest {
                        page_size: 3,
                        page_token: page_token.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            assert!(page.tokens.len() <= 3);
            seen.extend(page.tokens.into_iter().map(|t| (t.id, t.name)));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(pages, 3, "7 tokens in pages of 3");
        let names: Vec<_> = seen.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(&names[..6], ["t5", "t4", "t3", "t2", "t1", "t0"]);
        assert_eq!(seen.len(), 7, "the caller's own token is listed too");
    }
}

#[tokio::test]
async fn list_scopes_shows_categories_and_the_four_presets() {
    let server = TestServer::memory().await;
    let alice = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let scopes = server
        .tokens()
        .list_scopes(bearer(&alice, ListScopesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let presets: Vec<_> = scopes
        .presets
        .iter()
        .map(|p| (p.id.as_str(), p.scopes.join(",")))
        .collect();
    assert_eq!(
        presets,
        [
            ("user-read", "user:read".to_owned()),
            ("user-full", "user:read,user:write".to_owned()),
            ("admin-read", "admin:read".to_owned()),
            ("admin-full", "admin:write".to_owned()),
        ]
    );
    let user = scopes.categories.iter().find(|c| c.name == "user").unwrap();
    let write = user.scopes.iter().find(|s| s.name == "user:write").unwrap();
    assert_eq!(write.implies, ["user:read"]);
}

#[tokio::test]
async fn an_unreachable_store_is_unavailable_never_an_invalid_token() {
    let port = free_port();
    let mut config = test_config(Some(&format!("postgres://postgres@127.0.0.1:{port}/gone")));
    config.store.acquire_timeout_ms = 300;
    let server = TestServer::with_config(config, None).await;
    let token = casola_auth::token::PlainToken::generate();
    let err = server
        .authz()
        .authorize(authorize(token.expose(), &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let err = server
        .tokens()
        .list_tokens(bearer(token.expose(), ListTokensRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // A malformed token needs no store: still a plain denial.
    let r = server
        .authz()
        .authorize(authorize("nope", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deny_reason(), DenyReason::Malformed);

    let mut health = HealthClient::new(server.channel.clone());
    let status = |s: tonic_health::pb::HealthCheckResponse| s.status();
    let overall = health.check(health_check("")).await.unwrap().into_inner();
    assert_eq!(
        status(overall),
        ServingStatus::NotServing,
        "not ready without a store"
    );
    let live = health
        .check(health_check("liveness"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status(live),
        ServingStatus::Serving,
        "liveness never depends on the database"
    );
}

fn health_check(service: &str) -> tonic_health::pb::HealthCheckRequest {
    tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn health_serves_once_the_store_answers_and_the_admin_probes_answer() {
    let server = TestServer::postgres().await;
    let mut health = HealthClient::new(server.channel.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for service in [
        "",
        "casola.auth.v1.TokenService",
        "casola.auth.v1.AuthorizationService",
        "envoy.service.auth.v3.Authorization",
    ] {
        loop {
            let s = health
                .check(health_check(service))
                .await
                .unwrap()
                .into_inner()
                .status();
            if s == ServingStatus::Serving {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{service:?} never served"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let ready = http_get(server.running.admin_addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let live = http_get(server.running.admin_addr, "/healthz").await;
    assert_eq!(live.status, 200, "{}", live.body);
}
