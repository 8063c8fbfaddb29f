//! Restrictions at the gate (issue 13) over real gRPC: allowed networks and models set at
//! creation, shown by the API and enforced by Authorize and Check; decision ids on every
//! answer; explanations.

use std::collections::HashSet;

use casola_auth::{
    config::EnvoyConfig,
    event::Origin,
    manage::{Caller, CreateRequest},
    proto::{
        AuthorizeRequest, CreateTokenRequest, Decision, DenyReason, GetTokenRequest,
        ListTokensRequest, RotateTokenRequest,
    },
};
use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context,
        authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{TestServer, authorize, bad_fields, bearer, test_config};

const NETWORKS: [&str; 2] = ["10.0.0.0/8", "2001:db8::/32"];
const MODELS: [&str; 2] = ["llama-4-*", "gpt-4o"];

/// An Authorize of `token` requiring user:read, from `client_ip`, naming `model`.
fn from(token: &str, client_ip: &str, model: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        client_ip: client_ip.into(),
        model: model.into(),
        ..authorize(token, &["user:read"])
    }
}

/// Creates a restricted token as an operator; its secret.
async fn restricted(server: &TestServer, networks: &[&str], models: &[&str]) -> String {
    server
        .running
        .services()
        .manager
        .create(
            &Caller::Operator,
            &Origin::default(),
            CreateRequest {
                name: "restricted".into(),
                preset: "user-full".into(),
                org_id: "acme".into(),
                user_id: "alice".into(),
                allowed_networks: networks.iter().map(|s| (*s).to_owned()).collect(),
                allowed_models: models.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            },
        )
        .await
        .expect("operator creates a restricted token")
        .token
        .expose()
        .to_owned()
}

async fn decide(server: &TestServer, req: AuthorizeRequest) -> (Decision, DenyReason) {
    let r = server.authz().authorize(req).await.unwrap().into_inner();
    (r.decision(), r.deny_reason())
}

#[tokio::test]
async fn restricted_tokens_are_shown_by_the_api_and_enforced_by_authorize_on_both_stores() {
    for server in TestServer::each_store().await {
        let caller = server
            .operator_token("acme", "alice", "user-full", &[])
            .await;
        let created = server
            .tokens()
            .create_token(bearer(
                &caller,
                CreateTokenRequest {
                    name: "inference only".into(),
                    preset: "user-full".into(),
                    allowed_networks: NETWORKS.map(Into::into).to_vec(),
                    allowed_models: MODELS.map(Into::into).to_vec(),
                    ..Default::default()
                },
            ))
            .await
            .expect("create")
            .into_inner();
        let token = created.token.expect("token");
        assert_eq!(token.allowed_networks, NETWORKS);
        assert_eq!(token.allowed_models, MODELS);
        let got = server
            .tokens()
            .get_token(bearer(
                &caller,
                GetTokenRequest {
                    id: token.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap();
        assert_eq!(got.allowed_networks, NETWORKS);
        let listed = server
            .tokens()
            .list_tokens(bearer(&caller, ListTokensRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let mine = listed.tokens.iter().find(|t| t.id == token.id).unwrap();
        assert_eq!(mine.allowed_models, MODELS);

        let secret = &created.secret;
        let allowed = server
            .authz()
            .authorize(from(secret, "10.1.2.3", "llama-4-scout"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(allowed.decision(), Decision::Allow);
        let principal = allowed.principal.unwrap();
        assert_eq!(principal.allowed_networks, NETWORKS);
        assert_eq!(principal.allowed_models, MODELS);
        let deny = |reason| (Decision::Deny, reason);
        for (req, want) in [
            (
                from(secret, "2001:db8::7", "gpt-4o"),
                (Decision::Allow, DenyReason::Unspecified),
            ),
            (
                from(secret, "10.1.2.3", ""),
                (Decision::Allow, DenyReason::Unspecified),
            ),
            (
                from(secret, "127.0.0.1", "llama-4-scout"),
                deny(DenyReason::Network),
            ),
            (from(secret, "", "llama-4-scout"), deny(DenyReason::Network)),
            (
                from(secret, "::ffff:127.0.0.1", ""),
                deny(DenyReason::Network),
            ),
            (
                from(secret, "10.1.2.3", "gpt-4o-mini"),
                deny(DenyReason::Model),
            ),
            (from(secret, "10.1.2.3", "llama-3"), deny(DenyReason::Model)),
        ] {
            let what = format!("{} {}", req.client_ip, req.model);
            assert_eq!(decide(&server, req).await, want, "{what}");
        }
        let bad = server
            .authz()
            .authorize(from(secret, "10.1.2.300", ""))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert_eq!(
            bad.get_details_bad_request().unwrap().field_violations[0].field,
            "client_ip"
        );
        // An unrestricted token is not affected by either field.
        assert_eq!(
            decide(&server, from(&caller, "", "anything")).await,
            (Decision::Allow, DenyReason::Unspecified)
        );
    }
}

#[tokio::test]
async fn bad_lists_are_invalid_argument_naming_each_entry() {
    let server = TestServer::memory().await;
    let caller = server
        .operator_token("acme", "alice", "user-full", &[])
        .await;
    let err = server
        .tokens()
        .create_token(bearer(
            &caller,
            CreateTokenRequest {
                name: "bad".into(),
                preset: "user-read".into(),
                allowed_networks: vec!["10.1.2.3/8".into(), "localhost".into()],
                allowed_models: vec!["*".into(), "a*b".into(), "ok".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    let fields = bad_fields(&err);
    assert_eq!(
        fields,
        [
            "allowed_networks[0]",
            "allowed_networks[1]",
            "allowed_models[0]",
            "allowed_models[1]"
        ]
    );
    assert!(
        err.message().contains("did you mean 10.0.0.0/8"),
        "{}",
        err.message()
    );
    let too_many = server
        .tokens()
        .create_token(bearer(
            &caller,
            CreateTokenRequest {
                name: "many".into(),
                preset: "user-read".into(),
                allowed_networks: (0..33).map(|i| format!("10.0.{i}.0/24")).collect(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many
            .message()
            .starts_with("allowed_networks: at most 32")
    );
}

#[tokio::test]
async fn a_restricted_caller_cannot_mint_its_way_out_of_its_restrictions() {
    let server = TestServer::memory().await;
    let caller = restricted(&server, &["10.0.0.0/8"], &["llama-4-*"]).await;
    let mint = |networks: &[&str], models: &[&str]| CreateTokenRequest {
        name: "minted".into(),
        preset: "user-read".into(),
        allowed_networks: networks.iter().map(|s| (*s).to_owned()).collect(),
        allowed_models: models.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    let inherited = server
        .tokens()
        .create_token(bearer(&caller, mint(&[], &[])))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(inherited.allowed_networks, ["10.0.0.0/8"]);
    assert_eq!(inherited.allowed_models, ["llama-4-*"]);
    let narrower = server
        .tokens()
        .create_token(bearer(&caller, mint(&["10.9.0.0/16"], &["llama-4-scout"])))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(narrower.allowed_networks, ["10.9.0.0/16"]);
    let wider = server
        .tokens()
        .create_token(bearer(&caller, mint(&["0.0.0.0/0"], &["gpt-*"])))
        .await
        .unwrap_err();
    assert_eq!(wider.code(), Code::InvalidArgument);
    assert!(
        wider.message().contains("outside the calling token's"),
        "{}",
        wider.message()
    );
}

#[tokio::test]
async fn a_restricted_caller_cannot_rotate_a_wider_token_into_its_hands() {
    let server = TestServer::memory().await;
    let caller = restricted(&server, &["10.0.0.0/8"], &["llama-4-*"]).await;
    // A colleague's kind of token the caller may revoke (same owner, scopes it holds), but
    // with no lists: its new secret would be an unrestricted token in a restricted hand.
    let open = server
        .running
        .services()
        .manager
        .create(
            &Caller::Operator,
            &Origin::default(),
            CreateRequest {
                name: "open".into(),
                preset: "user-read".into(),
                org_id: "acme".into(),
                user_id: "alice".into(),
                ..Default::default()
            },
        )
        .await
        .expect("operator creates an unrestricted token")
        .record
        .id;
    let rotate = |id: String| RotateTokenRequest {
        id,
        ..Default::default()
    };
    let refused = server
        .tokens()
        .rotate_token(bearer(&caller, rotate(open.to_string())))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("allowed networks and models"),
        "{}",
        refused.message()
    );
    // A token inside the caller's lists rotates, and the copy keeps its lists.
    let inside = server
        .tokens()
        .create_token(bearer(
            &caller,
            CreateTokenRequest {
                name: "inside".into(),
                preset: "user-read".into(),
                allowed_networks: vec!["10.9.0.0/16".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    let copy = server
        .tokens()
        .rotate_token(bearer(&caller, rotate(inside.id.clone())))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_ne!(copy.id, inside.id);
    assert_eq!(copy.allowed_networks, ["10.9.0.0/16"]);
    assert_eq!(
        copy.allowed_models,
        ["llama-4-*"],
        "inherited at creation, kept"
    );
}

#[tokio::test]
async fn every_decision_has_its_own_decision_id_and_explain_says_why() {
    let server = TestServer::memory().await;
    let full = server
        .operator_token("acme", "alice", "user-full", &[])
        .await;
    let net = restricted(&server, &["10.0.0.0/8"], &[]).await;
    let mut ids = HashSet::new();
    for req in [
        authorize(&full, &["user:read"]),
        authorize(&full, &["admin:read"]),
        authorize("csl_nope", &[]),
        from(&net, "127.0.0.1", ""),
    ] {
        for _ in 0..25 {
            let r = server
                .authz()
                .authorize(req.clone())
                .await
                .unwrap()
                .into_inner();
            let id = uuid::Uuid::parse_str(&r.decision_id).expect("a UUID");
            assert_eq!(id.get_version_num(), 7);
            assert!(r.explanation.is_none(), "only when asked");
            assert!(ids.insert(id), "decision ids are unique");
        }
    }

    let explained = |req: AuthorizeRequest| {
        let mut authz = server.authz();
        async move {
            let r = authz
                .authorize(AuthorizeRequest {
                    explain: true,
                    ..req
                })
                .await
                .unwrap()
                .into_inner();
            let e = r.explanation.expect("explanation");
            assert_eq!(e.decision_id, r.decision_id);
            e
        }
    };
    let e = explained(authorize(&full, &["user:read", "admin:read"])).await;
    assert_eq!(e.outcome, "insufficient_scope");
    assert_eq!(e.requirement_source, "request");
    assert_eq!(e.required_scopes, ["admin:read", "user:read"]);
    assert_eq!(e.granted_scopes, ["user:read", "user:write"]);
    assert_eq!(e.missing_scopes, ["admin:read"]);
    let read = e.grants.iter().find(|g| g.scope == "user:read").unwrap();
    assert_eq!(
        read.implied_by,
        ["user:write"],
        "the implication that granted it"
    );
    assert!(e.reason.contains("admin:read"), "{}", e.reason);

    let e = explained(from(&net, "127.0.0.1", "")).await;
    assert_eq!(e.outcome, "network");
    assert_eq!(e.failed_restriction, "network");
    assert_eq!(e.client_ip, "127.0.0.1");
    assert_eq!(e.allowed_networks, ["10.0.0.0/8"]);
    assert!(e.reason.contains("127.0.0.1 is outside"), "{}", e.reason);

    let e = explained(authorize(&full, &[])).await;
    assert_eq!(
        (e.outcome.as_str(), e.requirement_source.as_str()),
        ("allow", "none")
    );
    let e = explained(authorize("csl_nope", &[])).await;
    assert_eq!(e.outcome, "malformed");
    assert!(
        e.granted_scopes.is_empty(),
        "nothing about a token that is not one"
    );
}

/// A Check of `POST /openai/v1/chat/completions` requiring user:write, from `source`, with
/// this JSON body and extra headers.
fn check(token: &str, source: &str, body: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut all: Vec<(String, String)> = vec![("authorization".into(), format!("Bearer {token}"))];
    all.extend(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: source.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "POST".into(),
                    path: "/openai/v1/chat/completions".into(),
                    headers: all.into_iter().collect(),
                    size: i64::try_from(body.len()).unwrap(),
                    raw_body: body.as_bytes().to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("casola.scopes".to_owned(), "user:write".to_owned())].into(),
            ..Default::default()
        }),
    }
}

/// Status code, the value of `header` (allow: to the client), and the body of a denial.
fn answer(r: &CheckResponse, header: &str) -> (u32, Option<String>, String) {
    match r.http_response.as_ref().expect("an HTTP answer") {
        HttpResponse::OkResponse(ok) => {
            let value = ok
                .response_headers_to_add
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == header)
                .map(|h| h.value.clone());
            (200, value, String::new())
        }
        HttpResponse::DeniedResponse(denied) => {
            let value = denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == header)
                .map(|h| h.value.clone());
            let status = u32::try_from(denied.status.as_ref().unwrap().code).unwrap();
            (status, value, denied.body.clone())
        }
        HttpResponse::ErrorResponse(_) => panic!("Check answered an error response"),
    }
}

#[tokio::test]
async fn check_enforces_restrictions_names_the_model_and_explains_only_to_the_scope_holder() {
    let mut config = test_config(None);
    config.envoy = EnvoyConfig {
        explain_header: Some("x-casola-explain".into()),
        explain_scope: Some("user:write".into()),
        ..EnvoyConfig::default()
    };
    let server = TestServer::with_config(config, None).await;
    let token = restricted(&server, &["127.0.0.0/8"], &["llama-4-*"]).await;
    let reader = server
        .operator_token("acme", "alice", "user-read", &[])
        .await;
    let client = AuthorizationClient::new(server.channel.clone());
    let ask = |req: CheckRequest| {
        let mut client = client.clone();
        async move { client.check(req).await.unwrap().into_inner() }
    };
    let chat = |model: &str| {
        format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"model":"{model}"}}"#)
    };

    let ok = ask(check(&token, "127.0.0.1", &chat("llama-4-scout"), &[])).await;
    let (status, id, _) = answer(&ok, "x-casola-decision-id");
    assert_eq!(status, 200);
    let allow_id = id.expect("decision id on allow");
    let (_, explanation, _) = answer(&ok, "x-casola-explanation");
    assert!(explanation.is_none(), "not asked");

    let model = ask(check(&token, "127.0.0.1", &chat("gpt-4o"), &[])).await;
    let (status, id, body) = answer(&model, "x-casola-decision-id");
    assert_eq!(status, 403);
    assert_ne!(id.expect("decision id on deny"), allow_id);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-4o")
    );
    assert!(body.get("explanation").is_none());

    let outside = ask(check(&token, "192.0.2.1", &chat("llama-4-scout"), &[])).await;
    let (status, _, body) = answer(&outside, "x-casola-decision-id");
    assert_eq!(status, 403);
    assert!(body.contains("network_not_allowed"), "{body}");

    for (body, want) in [("", 400), ("not json", 400), (r#"{"messages":[]}"#, 400)] {
        let r = ask(check(&token, "127.0.0.1", body, &[])).await;
        assert_eq!(answer(&r, "x-casola-decision-id").0, want, "{body:?}");
    }
    let cut = ask(check(
        &token,
        "127.0.0.1",
        &chat("llama-4-scout"),
        &[("x-envoy-auth-partial-body", "true")],
    ))
    .await;
    assert_eq!(answer(&cut, "x-casola-decision-id").0, 413);
    // A token without a model list is not refused for a body it never reads.
    let free = server
        .operator_token("acme", "alice", "user-full", &[])
        .await;
    let r = ask(check(&free, "192.0.2.1", "not json", &[])).await;
    assert_eq!(answer(&r, "x-casola-decision-id").0, 200);

    // Explained: to a token holding the configured scope, on deny (in the body) and allow.
    let asked = [("x-casola-explain", "1")];
    let denied = ask(check(&token, "127.0.0.1", &chat("gpt-4o"), &asked)).await;
    let (_, id, body) = answer(&denied, "x-casola-decision-id");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["explanation"]["failed_restriction"], "model");
    assert_eq!(body["explanation"]["model"], "gpt-4o");
    assert_eq!(
        body["explanation"]["requirement_source"],
        "context_extension casola.scopes"
    );
    assert_eq!(body["explanation"]["decision_id"], id.unwrap());
    let allowed = ask(check(&token, "127.0.0.1", &chat("llama-4-x"), &asked)).await;
    let explanation = answer(&allowed, "x-casola-explanation")
        .1
        .expect("explained");
    let explanation: serde_json::Value = serde_json::from_str(&explanation).unwrap();
    assert_eq!(explanation["outcome"], "allow");
    // Not to a token without the scope: it learns only what the error says.
    let r = ask(check(&reader, "127.0.0.1", "{}", &asked)).await;
    let (status, _, body) = answer(&r, "x-casola-decision-id");
    assert_eq!(status, 403);
    assert!(!body.contains("explanation"), "{body}");
}
