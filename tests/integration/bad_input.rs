//! Issue 10's table: every bad input, the code and the field it gets, and that nothing was
//! written, on both stores.

use casola_auth::proto::{
    CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, UpdateTokenRequest,
    token_service_client::TokenServiceClient,
};
use prost_types::FieldMask;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::support::{TestServer, bearer, token_id};

/// One bad request and what it must get.
struct Case {
    what: &'static str,
    request: Request,
    code: Code,
    /// The BadRequest field it names (INVALID_ARGUMENT only).
    field: Option<&'static str>,
}

enum Request {
    Create(CreateTokenRequest),
    Update(UpdateTokenRequest),
    List(ListTokensRequest),
}

fn create(f: impl FnOnce(&mut CreateTokenRequest)) -> Request {
    let mut request = CreateTokenRequest {
        name: "ci".into(),
        preset: "user-read".into(),
        org_id: "acme".into(),
        user_id: "bob".into(),
        ..Default::default()
    };
    f(&mut request);
    Request::Create(request)
}

fn cases(victim: &str, revoked: &str, foreign_page: &str, pasted: &str) -> Vec<Case> {
    let invalid = |what, request, field| Case {
        what,
        request,
        code: Code::InvalidArgument,
        field: Some(field),
    };
    vec![
        invalid(
            "name too long",
            create(|r| r.name = "n".repeat(101)),
            "name",
        ),
        invalid(
            "unknown preset",
            create(|r| r.preset = "nope".into()),
            "preset",
        ),
        invalid(
            "unknown scope",
            create(|r| {
                r.preset.clear();
                r.scopes = vec!["jobs:launch".into()];
            }),
            "scopes[0]",
        ),
        invalid(
            "negative expiry",
            create(|r| r.expires_in_days = Some(-5)),
            "expires_in_days",
        ),
        invalid(
            "org_id without user_id",
            create(|r| r.user_id.clear()),
            "user_id",
        ),
        invalid(
            "user_id without org_id",
            create(|r| r.org_id.clear()),
            "org_id",
        ),
        invalid(
            "a name of invisible characters",
            create(|r| r.name = "\u{200B}\u{2060}".into()),
            "name",
        ),
        invalid(
            "a name with a right-to-left override",
            create(|r| r.name = "CI \u{202E}dorp".into()),
            "name",
        ),
        invalid(
            "a description with a bidirectional isolate",
            create(|r| r.description = "x\u{2066}y".into()),
            "description",
        ),
        invalid(
            "a user id with a zero-width space",
            create(|r| r.user_id = "bo\u{200B}b".into()),
            "user_id",
        ),
        invalid(
            "a token pasted into the preset",
            create(|r| r.preset = pasted.into()),
            "preset",
        ),
        invalid(
            "an update mask naming a field that cannot change",
            Request::Update(UpdateTokenRequest {
                id: victim.into(),
                name: "renamed".into(),
                update_mask: Some(FieldMask {
                    paths: vec!["scopes".into()],
                }),
                ..Default::default()
            }),
            "update_mask",
        ),
        Case {
            what: "renaming a revoked token",
            request: Request::Update(UpdateTokenRequest {
                id: revoked.into(),
                name: "renamed".into(),
                ..Default::default()
            }),
            code: Code::FailedPrecondition,
            field: None,
        },
        invalid(
            "a page token of another query",
            Request::List(ListTokensRequest {
                org_id: "acme".into(),
                user_id: "-".into(),
                include_revoked: false,
                page_token: foreign_page.into(),
                ..Default::default()
            }),
            "page_token",
        ),
    ]
}

async fn send(
    tokens: &mut TokenServiceClient<Channel>,
    caller: &str,
    request: Request,
) -> Result<(), Status> {
    match request {
        Request::Create(r) => tokens.create_token(bearer(caller, r)).await.map(drop),
        Request::Update(r) => tokens.update_token(bearer(caller, r)).await.map(drop),
        Request::List(r) => tokens.list_tokens(bearer(caller, r)).await.map(drop),
    }
}

/// Every token of acme and globex, revoked ones included, as (id, name) pairs.
async fn everything(
    tokens: &mut TokenServiceClient<Channel>,
    caller: &str,
) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for org in ["acme", "globex"] {
        let page = tokens
            .list_tokens(bearer(
                caller,
                ListTokensRequest {
                    org_id: org.into(),
                    user_id: "-".into(),
                    include_revoked: true,
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner();
        all.extend(page.tokens.into_iter().map(|t| (t.id, t.name)));
    }
    all.sort();
    all
}

#[tokio::test]
async fn every_bad_input_gets_its_code_and_field_and_writes_nothing_on_either_store() {
    for server in TestServer::each_store().await {
        let mut tokens = server.tokens();
        let issuer = server
            .operator_token(
                "casola-services",
                "backend",
                "admin-full",
                &["tokens:issue", "user:write"],
            )
            .await;
        let victim_token = server.operator_token("acme", "bob", "user-full", &[]).await;
        let victim = token_id(&server.channel, &victim_token).await;
        let gone = server
            .operator_token("acme", "carol", "user-read", &[])
            .await;
        let revoked = token_id(&server.channel, &gone).await;
        tokens
            .revoke_token(bearer(
                &issuer,
                RevokeTokenRequest {
                    id: revoked.clone(),
                },
            ))
            .await
            .expect("revoke");
        // A page token issued for acme's active tokens, replayed with include_revoked.
        let first = tokens
            .list_tokens(bearer(
                &issuer,
                ListTokensRequest {
                    org_id: "acme".into(),
                    user_id: "-".into(),
                    include_revoked: true,
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .expect("first page")
            .into_inner();
        assert!(!first.next_page_token.is_empty());
        let before = everything(&mut tokens, &issuer).await;
        for case in cases(&victim, &revoked, &first.next_page_token, &victim_token) {
            let status = send(&mut tokens, &issuer, case.request)
                .await
                .expect_err(case.what);
            assert_eq!(status.code(), case.code, "{}: {status:?}", case.what);
            if let Some(field) = case.field {
                let details = status.get_error_details();
                let fields: Vec<&str> = details
                    .bad_request()
                    .expect("BadRequest details")
                    .field_violations
                    .iter()
                    .map(|v| v.field.as_str())
                    .collect();
                assert_eq!(fields, [field], "{}", case.what);
                assert!(
                    status.message().starts_with(&format!("{field}: ")),
                    "{}: the reason is in the message: {}",
                    case.what,
                    status.message()
                );
            }
            let shown = format!("{status:?} {:?}", status.get_error_details());
            assert!(!shown.contains(&victim_token), "{}: {shown}", case.what);
            assert_eq!(
                everything(&mut tokens, &issuer).await,
                before,
                "{}: nothing written",
                case.what
            );
        }
    }
}
