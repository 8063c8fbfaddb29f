//! Issue 16 over real gRPC: service tokens are out of an organisation admin's reach, and no
//! token pasted into a wrong field comes back in an error, whose size is bounded.

use crate::support::{TestServer, bearer};
use casola_auth::proto::{
    AuthorizeRequest, CreateTokenRequest, GetTokenRequest, ListTokensRequest, RevokeTokenRequest,
    ScopeMatch, UpdateTokenRequest, WhoAmIRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

/// Everything a client can read from a status: code, message and every detail.
fn everything(status: &tonic::Status) -> String {
    format!("{status:?} {:?}", status.get_error_details())
}

#[tokio::test]
async fn an_org_admin_can_neither_see_nor_touch_a_service_token() {
    for server in TestServer::each_store().await {
        let mut tokens = server.tokens();
        // The worst case: the dashboard backend's token owned by a user of the same org.
        let backend = server
            .operator_token("acme", "backend", "admin-full", &["tokens:issue"])
            .await;
        let backend_id = server
            .authz()
            .who_am_i(bearer(&backend, WhoAmIRequest {}))
            .await
            .unwrap()
            .into_inner()
            .principal
            .unwrap()
            .token_id;
        let admin = server
            .operator_token("acme", "dave", "admin-full", &[])
            .await;
        let both = server
            .operator_token("acme", "backend", "", &["user:write", "admin:write"])
            .await;
        for caller in [&admin, &both] {
            let err = tokens
                .get_token(bearer(
                    caller,
                    GetTokenRequest {
                        id: backend_id.clone(),
                    },
                ))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "get: {err:?}");
            let err = tokens
                .revoke_token(bearer(
                    caller,
                    RevokeTokenRequest {
                        id: backend_id.clone(),
                    },
                ))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "revoke: {err:?}");
            let err = tokens
                .update_token(bearer(
                    caller,
                    UpdateTokenRequest {
                        id: backend_id.clone(),
                        name: "mine now".into(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "update: {err:?}");
            for user_id in ["-", "backend"] {
                let page = tokens
                    .list_tokens(bearer(
                        caller,
                        ListTokensRequest {
                            user_id: user_id.into(),
                            page_size: 1,
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                // Walk every page: the service token is on none of them.
                let mut seen: Vec<String> = page.tokens.iter().map(|t| t.id.clone()).collect();
                let mut next = page.next_page_token;
                for _ in 0..20 {
                    if next.is_empty() {
                        break;
                    }
                    let page = tokens
                        .list_tokens(bearer(
                            caller,
                            ListTokensRequest {
                                user_id: user_id.into(),
                                page_size: 1,
                                page_token: next.clone(),
                                ..Default::default()
                            },
                        ))
                        .await
                        .unwrap()
                        .into_inner();
                    seen.extend(page.tokens.iter().map(|t| t.id.clone()));
                    next = page.next_page_token;
                }
                assert!(next.is_empty(), "listing ended");
                assert!(!seen.contains(&backend_id), "{user_id}: {seen:?}");
                assert!(!seen.is_empty() || user_id == "backend");
            }
        }
        // The service token still works, and a tokens:issue caller still sees it.
        let seen = tokens
            .get_token(bearer(
                &backend,
                GetTokenRequest {
                    id: backend_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seen.token.unwrap().id, backend_id);
    }
}

#[tokio::test]
async fn a_token_pasted_into_a_wrong_field_is_never_echoed() {
    let server = TestServer::memory().await;
    let alice = server
        .operator_token("acme", "alice", "user-full", &[])
        .await;
    let pasted = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let secret = &pasted[16..48];
    let mut tokens = server.tokens();
    let mut authz = server.authz();
    let mut errors = Vec::new();
    errors.push(
        tokens
            .create_token(bearer(
                &alice,
                CreateTokenRequest {
                    name: "n".into(),
                    preset: pasted.clone(),
                    scopes: vec![pasted.clone()],
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    );
    errors.push(
        tokens
            .update_token(bearer(
                &alice,
                UpdateTokenRequest {
                    id: uuid::Uuid::new_v4().to_string(),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![pasted.clone()],
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    );
    errors.push(
        authz
            .authorize(AuthorizeRequest {
                token: alice.clone(),
                required_scopes: vec![pasted.clone()],
                r#match: ScopeMatch::All.into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    for err in &errors {
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let text = everything(err);
        assert!(!text.contains(secret), "secret echoed: {text}");
        assert!(text.contains(&format!("{}…", &pasted[..10])), "{text}");
    }
}

#[tokio::test]
async fn twenty_one_thousand_unknown_scopes_get_a_bounded_answer() {
    let server = TestServer::memory().await;
    let alice = server
        .operator_token("acme", "alice", "user-full", &[])
        .await;
    let mut authz = server.authz();
    // The probe: a 63 KB request (one-letter names) that once produced 1.43 MB of trailers.
    let err = authz
        .authorize(AuthorizeRequest {
            token: alice,
            required_scopes: vec!["x".into(); 21_000],
            r#match: ScopeMatch::All.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let violations = err
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .clone();
    assert_eq!(violations.len(), 21);
    assert_eq!(violations[20].description, "and 20980 more");
    let size = err.message().len() + err.details().len();
    assert!(size < 8 * 1024, "{size} bytes of error");
}

#[test]
fn the_memory_store_refuses_a_non_loopback_address_unless_it_is_a_demo() {
    use casola_auth::{config::Config, server::safe_defaults};
    let open = Config {
        listen: "0.0.0.0:50051".parse().unwrap(),
        ..Config::default()
    };
    let err = safe_defaults(open.clone()).unwrap_err().to_string();
    assert!(
        err.contains("in-memory store") && err.contains("CASOLA_AUTH_DEMO"),
        "{err}"
    );
    assert!(safe_defaults(Config { demo: true, ..open }).is_ok());
    assert!(safe_defaults(Config::default()).is_ok(), "loopback is fine");
}

#[test]
fn require_tls_forces_sslmode_require_and_refuses_a_weaker_one() {
    use casola_auth::{
        config::{Config, DatabaseUrl, StoreConfig},
        server::safe_defaults,
    };
    let with = |url: &str| Config {
        database_url: Some(DatabaseUrl::new(url)),
        store: StoreConfig {
            require_tls: true,
            ..StoreConfig::default()
        },
        ..Config::default()
    };
    for (given, forced) in [
        ("postgres://u@db/x", "postgres://u@db/x?sslmode=require"),
        (
            "postgres://u@db/x?application_name=a",
            "postgres://u@db/x?application_name=a&sslmode=require",
        ),
        ("host=db user=u", "host=db user=u sslmode=require"),
        (
            "postgres://u@db/x?sslmode=require",
            "postgres://u@db/x?sslmode=require",
        ),
    ] {
        let config = safe_defaults(with(given)).unwrap();
        assert_eq!(config.database_url.unwrap().expose(), forced);
    }
    for weaker in [
        "postgres://u@db/x?sslmode=disable",
        "postgres://u@db/x?sslmode=prefer",
    ] {
        let err = safe_defaults(with(weaker)).unwrap_err().to_string();
        assert!(err.contains("require_tls"), "{err}");
        assert!(!err.contains("u@db"), "no URL in the message: {err}");
    }
    // Without require_tls the URL is left as it is (local development).
    let mut plain = with("postgres://u@db/x");
    plain.store.require_tls = false;
    let config = safe_defaults(plain).unwrap();
    assert_eq!(config.database_url.unwrap().expose(), "postgres://u@db/x");
}
