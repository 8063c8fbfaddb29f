//! Envoy ext_authz (`envoy.service.auth.v3.Authorization/Check`): the gateway's question
//! for every HTTP request, answered by the same [`Authorizer`] as Authorize. This adapter
//! only finds the credential and the required scopes in the request, and maps the decision
//! onto HTTP: 200 upstream with identity headers, 401 / 403 with OpenAI-style JSON errors,
//! 503 when the service cannot decide (never a 401 for an outage).

use std::collections::HashMap;

use envoy_types::{
    ext_authz::v3::{
        CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
        pb::{
            Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
            HttpStatusCode,
        },
    },
    pb::google::protobuf::{Struct, Value, value::Kind},
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    authorize::{Authorizer, Decision, Denial},
    config::EnvoyConfig,
    error::Error,
    principal::Principal,
    scope::{Catalog, ScopeMatch, ScopeSet},
    telemetry::{self, Entry, Verdict, metrics::reasons},
};

/// Descriptor set of `envoy/service/auth/v3/external_auth.proto` and its imports, for
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_ext_authz_descriptor.bin"));

/// Context-extension key with the route's required scopes (space- or comma-separated).
pub const SCOPES_KEY: &str = "casola.scopes";
/// Context-extension key with the match mode: `all` (default) or `any`.
pub const MATCH_KEY: &str = "casola.match";
/// Identity headers set for the upstream.
pub const TOKEN_ID_HEADER: &str = "x-casola-token-id";
/// Owning organisation.
pub const ORG_ID_HEADER: &str = "x-casola-org-id";
/// Owning user.
pub const USER_ID_HEADER: &str = "x-casola-user-id";
/// Expanded scopes, space-separated.
pub const SCOPES_HEADER: &str = "x-casola-scopes";
const IDENTITY_HEADERS: [&str; 4] = [
    TOKEN_ID_HEADER,
    ORG_ID_HEADER,
    USER_ID_HEADER,
    SCOPES_HEADER,
];

/// What a route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Required scopes.
    pub scopes: ScopeSet,
    /// How they match.
    pub mode: ScopeMatch,
}

#[derive(Debug, Clone)]
struct Route {
    method: Option<String>,
    path_prefix: String,
    requirement: Requirement,
}

/// The fallback route table (method + path prefix -> scopes), checked at start-up; the
/// longest matching prefix wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

fn split_scopes(raw: &str) -> Vec<&str> {
    raw.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect()
}

fn unknown_scopes(catalog: &Catalog, names: &[&str]) -> Result<ScopeSet, String> {
    catalog.resolve(names).map_err(|unknown| {
        let names: Vec<_> = unknown.into_iter().map(|(_, n)| n).collect();
        format!("unknown scopes: {}", names.join(", "))
    })
}

impl RouteTable {
    /// Builds the table; unknown scope names are a configuration error.
    pub fn from_config(config: &EnvoyConfig, catalog: &Catalog) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, rule) in config.routes.iter().enumerate() {
            if !rule.path_prefix.starts_with('/') {
                return Err(format!("envoy.routes[{i}].path_prefix must start with '/'"));
            }
            let names: Vec<&str> = rule.scopes.iter().map(String::as_str).collect();
            let scopes =
                unknown_scopes(catalog, &names).map_err(|e| format!("envoy.routes[{i}]: {e}"))?;
            routes.push(Route {
                // Documented: an absent or empty method matches any method.
                method: rule
                    .method
                    .as_ref()
                    .filter(|m| !m.is_empty())
                    .map(|m| m.to_ascii_uppercase()),
                path_prefix: rule.path_prefix.clone(),
                requirement: Requirement {
                    scopes,
                    mode: rule.mode.into(),
                },
            });
        }
        // Longest prefix first, so the most specific rule matches.
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        Ok(Self { routes })
    }

    /// The requirement of the first (most specific) rule matching `method` and `path`.
    pub fn lookup(&self, method: &str, path: &str) -> Option<&Requirement> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.routes
            .iter()
            .find(|r| {
                path.starts_with(&r.path_prefix)
                    && r.method
                        .as_deref()
                        .is_none_or(|m| m.eq_ignore_ascii_case(method))
            })
            .map(|r| &r.requirement)
    }
}

/// What a Check request requires: its `casola.scopes` context extension when present
/// (unknown scopes or a `casola.match` other than all/any are `Err`: a misconfigured
/// route), else the fallback route table's rule for its method and path. Public and free of
/// any server state so the fuzz targets can drive it.
pub fn requirement_of(
    req: &CheckRequest,
    catalog: &Catalog,
    routes: &RouteTable,
) -> Result<Option<Requirement>, String> {
    let attributes = req.attributes.as_ref();
    let extensions = attributes.map(|a| &a.context_extensions);
    if let Some(raw) = extensions.and_then(|e| e.get(SCOPES_KEY)) {
        let scopes = unknown_scopes(catalog, &split_scopes(raw))
            .map_err(|e| format!("context extension {SCOPES_KEY}: {e}"))?;
        let mode = match extensions.and_then(|e| e.get(MATCH_KEY)).map(|m| m.trim()) {
            None | Some("") | Some("all") => ScopeMatch::All,
            Some("any") => ScopeMatch::Any,
            Some(other) => {
                return Err(format!(
                    "context extension {MATCH_KEY}: {other:?} is not all or any"
                ));
            }
        };
        return Ok(Some(Requirement { scopes, mode }));
    }
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let (method, path) = http.map_or(("", ""), |h| (h.method.as_str(), h.path.as_str()));
    Ok(routes.lookup(method, path).cloned())
}

/// The credential of a Check request's headers (Envoy lowercases their names): the
/// `authorization` header, else the configured extra token header. Public for the fuzz
/// targets.
pub fn credential_of<'a>(
    headers: Option<&'a HashMap<String, String>>,
    config: &EnvoyConfig,
) -> Option<&'a str> {
    let headers = headers?;
    headers
        .get("authorization")
        .map(String::as_str)
        .or_else(|| {
            let name = config.token_header.as_deref()?;
            headers.get(&name.to_ascii_lowercase()).map(String::as_str)
        })
}

/// The Check implementation.
#[derive(Clone)]
pub struct CheckApi {
    authorizer: Authorizer,
    routes: RouteTable,
    config: EnvoyConfig,
}

/// A decided HTTP answer, before it becomes a CheckResponse.
#[derive(Debug)]
enum Outcome {
    Allow(Principal),
    Unauthenticated(&'static str),
    Forbidden {
        message: String,
        missing: Vec<String>,
    },
    Misconfigured(String),
    Unavailable(&'static str),
}

impl CheckApi {
    /// Check over `authorizer`, with the fallback `routes`.
    pub fn new(authorizer: Authorizer, routes: RouteTable, config: EnvoyConfig) -> Self {
        Self {
            authorizer,
            routes,
            config,
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }

    fn requirement(&self, req: &CheckRequest) -> Result<Option<Requirement>, String> {
        requirement_of(req, self.authorizer.catalog(), &self.routes)
    }

    fn credential<'a>(&self, headers: Option<&'a HashMap<String, String>>) -> Option<&'a str> {
        credential_of(headers, &self.config)
    }

    async fn decide(&self, req: &CheckRequest) -> Outcome {
        let requirement = match self.requirement(req) {
            Ok(r) => r,
            Err(message) => {
                telemetry::record(Entry::Check, Verdict::deny(reasons::MISCONFIGURED_ROUTE));
                return Outcome::Misconfigured(message);
            }
        };
        let Some(credential) = self.credential(req.get_client_headers()) else {
            telemetry::record(Entry::Check, Verdict::deny(reasons::MISSING_CREDENTIAL));
            return Outcome::Unauthenticated(
                "You didn't provide an API key. Send it as `Authorization: Bearer <token>`.",
            );
        };
        let (required, mode, matched) = match &requirement {
            Some(r) => (r.scopes.clone(), r.mode, true),
            None => (ScopeSet::default(), ScopeMatch::All, false),
        };
        let decision = self.authorizer.authorize(credential, &required, mode).await;
        let covered = matched || self.config.allow_unmatched;
        telemetry::record(Entry::Check, check_verdict(&decision, covered));
        match decision {
            Ok(Decision::Allow(principal)) if matched || self.config.allow_unmatched => {
                Outcome::Allow(principal)
            }
            Ok(Decision::Allow(_)) => Outcome::Forbidden {
                message: "No authorization rule covers this route.".into(),
                missing: Vec::new(),
            },
            Ok(Decision::Deny(denial)) => match denial {
                Denial::Malformed => Outcome::Unauthenticated(
                    "Malformed API key provided. Casola API keys start with csl_.",
                ),
                Denial::Unknown => Outcome::Unauthenticated("Incorrect API key provided."),
                Denial::Revoked => Outcome::Unauthenticated("This API key has been revoked."),
                Denial::Expired => Outcome::Unauthenticated("This API key has expired."),
                Denial::InsufficientScope { missing, .. } => Outcome::Forbidden {
                    message: format!(
                        "This API key lacks the required scope{}: {}.",
                        if missing.len() == 1 { "" } else { "s" },
                        missing.join(", ")
                    ),
                    missing,
                },
            },
            Err(Error::ResourceExhausted(_)) => {
                Outcome::Unavailable("Authorization is overloaded; retry shortly.")
            }
            Err(e) => {
                tracing::warn!(error = %e, "check could not decide");
                Outcome::Unavailable("Authorization is temporarily unavailable; retry shortly.")
            }
        }
    }

    fn respond(&self, req: &CheckRequest, outcome: Outcome) -> CheckResponse {
        let mut response = CheckResponse::new();
        match outcome {
            Outcome::Allow(principal) => {
                let mut ok = OkHttpResponseBuilder::new();
                let scopes = principal.scopes.join(" ");
                for (name, value) in [
                    (TOKEN_ID_HEADER, principal.token_id.to_string()),
                    (ORG_ID_HEADER, principal.owner.org_id.to_string()),
                    (USER_ID_HEADER, principal.owner.user_id.to_string()),
                    (SCOPES_HEADER, scopes.clone()),
                ] {
                    // Overwrite: a client-sent value of these names never survives.
                    ok.add_header(
                        name,
                        value,
                        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                        true,
                    );
                }
                if let Some(headers) = req.get_client_headers() {
                    for name in headers.keys() {
                        let name = name.to_ascii_lowercase();
                        if name.starts_with("x-casola-")
                            && !IDENTITY_HEADERS.contains(&name.as_str())
                        {
                            ok.remove_header(name);
                        }
                    }
                }
                if !self.config.keep_authorization {
                    ok.remove_header("authorization");
                }
                if let Some(extra) = &self.config.token_header {
                    ok.remove_header(extra.to_ascii_lowercase());
                }
                let metadata = Struct {
                    fields: [
                        ("token_id", principal.token_id.to_string()),
                        ("org_id", principal.owner.org_id.to_string()),
                        ("user_id", principal.owner.user_id.to_string()),
                        ("scopes", scopes),
                    ]
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.to_owned(),
                            Value {
                                kind: Some(Kind::StringValue(v)),
                            },
                        )
                    })
                    .collect(),
                };
                response
                    .set_status(Status::ok(""))
                    .set_dynamic_metadata(Some(metadata))
                    .set_http_response(ok);
            }
            Outcome::Unauthenticated(message) => {
                let mut denied = json_error(
                    HttpStatusCode::Unauthorized,
                    message,
                    "invalid_request_error",
                    "invalid_api_key",
                );
                denied.add_header(
                    "www-authenticate",
                    r#"Bearer realm="casola", error="invalid_token""#,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
                response
                    .set_status(Status::unauthenticated(message))
                    .set_http_response(denied);
            }
            Outcome::Forbidden { message, missing } => {
                let mut denied = json_error(
                    HttpStatusCode::Forbidden,
                    &message,
                    "permission_error",
                    "insufficient_scope",
                );
                denied.add_header(
                    "www-authenticate",
                    format!(
                        r#"Bearer realm="casola", error="insufficient_scope", scope="{}""#,
                        missing.join(" ")
                    ),
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
                response
                    .set_status(Status::permission_denied(message))
                    .set_http_response(denied);
            }
            Outcome::Misconfigured(cause) => {
                tracing::error!(error = %cause, "check refused a misconfigured route");
                let denied = json_error(
                    HttpStatusCode::InternalServerError,
                    "The gateway's authorization rule for this route is misconfigured.",
                    "server_error",
                    "authorization_misconfigured",
                );
                response
                    .set_status(Status::internal("misconfigured route"))
                    .set_http_response(denied);
            }
            Outcome::Unavailable(message) => {
                let mut denied = json_error(
                    HttpStatusCode::ServiceUnavailable,
                    message,
                    "server_error",
                    "service_unavailable",
                );
                denied.add_header(
                    "retry-after",
                    "1",
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
                response
                    .set_status(Status::unavailable(message))
                    .set_http_response(denied);
            }
        }
        response
    }
}

/// The verdict of a Check: an allowed token on a route no rule covers is refused.
fn check_verdict(decision: &Result<Decision, Error>, covered: bool) -> Verdict {
    match decision {
        Ok(Decision::Allow(principal)) if !covered => Verdict {
            token_id: Some(principal.token_id),
            ..Verdict::deny(reasons::UNMATCHED_ROUTE)
        },
        other => Verdict::of_decision(other),
    }
}

fn json_error(
    status: HttpStatusCode,
    message: &str,
    kind: &str,
    code: &str,
) -> DeniedHttpResponseBuilder {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    let mut denied = DeniedHttpResponseBuilder::new();
    denied
        .set_http_status(status)
        .add_header(
            "content-type",
            "application/json",
            Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
            false,
        )
        .set_body(body.to_string());
    denied
}

#[tonic::async_trait]
impl Authorization for CheckApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let req = request.into_inner();
        // The checked request's traceparent joins our span to the caller's trace.
        let span = telemetry::check_span(req.get_client_headers());
        let outcome = self.decide(&req).instrument(span).await;
        Ok(Response::new(self.respond(&req, outcome)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteMatch, RouteRule};
    use proptest::prelude::*;

    fn rule(method: Option<&str>, prefix: &str, scopes: &[&str]) -> RouteRule {
        RouteRule {
            method: method.map(Into::into),
            path_prefix: prefix.into(),
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
            mode: RouteMatch::All,
        }
    }

    #[test]
    fn the_most_specific_route_wins_and_methods_filter() {
        let config = EnvoyConfig {
            routes: vec![
                rule(None, "/openai/v1/", &["user:read"]),
                rule(Some("post"), "/openai/v1/chat/completions", &["user:write"]),
            ],
            ..Default::default()
        };
        let table = RouteTable::from_config(&config, &Catalog::default()).unwrap();
        let need = |m, p| table.lookup(m, p).map(|r| r.scopes.to_vec());
        assert_eq!(
            need("POST", "/openai/v1/chat/completions?x=1"),
            Some(vec!["user:write".into()])
        );
        assert_eq!(
            need("GET", "/openai/v1/chat/completions"),
            Some(vec!["user:read".into()])
        );
        assert_eq!(
            need("GET", "/openai/v1/models"),
            Some(vec!["user:read".into()])
        );
        assert_eq!(need("GET", "/api/users/me"), None);
    }

    /// Regression (the check_request fuzz target's route invariant): `method = ""`
    /// matched no request, where docs/envoy.md says it matches any method.
    #[test]
    fn a_rule_with_an_empty_method_matches_every_method() {
        let config = EnvoyConfig {
            routes: vec![rule(Some(""), "/v1/", &["user:read"])],
            ..Default::default()
        };
        let table = RouteTable::from_config(&config, &Catalog::default()).unwrap();
        for method in ["GET", "POST", "delete"] {
            assert!(table.lookup(method, "/v1/models").is_some(), "{method}");
        }
    }

    #[test]
    fn unknown_scopes_in_the_route_table_fail_at_start_up() {
        let config = EnvoyConfig {
            routes: vec![rule(None, "/x", &["user:read", "jobs:launch"])],
            ..Default::default()
        };
        let err = RouteTable::from_config(&config, &Catalog::default()).unwrap_err();
        assert!(err.contains("jobs:launch"), "{err}");
    }

    fn with_extensions(extensions: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(
                envoy_types::pb::envoy::service::auth::v3::AttributeContext {
                    context_extensions: extensions
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                },
            ),
        }
    }

    proptest! {
        /// Words joined by any run of commas and white space split back into those words.
        #[test]
        fn scope_lists_split_into_their_words(
            words in proptest::collection::vec("[a-z:._-]{1,12}", 0..6),
            separators in proptest::collection::vec("[ ,\t\n\u{3000}]{1,3}", 6),
            leading in "[ ,]{0,2}",
        ) {
            let mut raw = leading;
            for (word, sep) in words.iter().zip(&separators) {
                raw.push_str(word);
                raw.push_str(sep);
            }
            prop_assert_eq!(split_scopes(&raw), words);
        }

        /// Any list splits into non-empty pieces of it without separators, and never panics.
        #[test]
        fn any_scope_list_splits_into_non_empty_words_of_it(raw in any::<String>()) {
            for word in split_scopes(&raw) {
                prop_assert!(!word.is_empty() && raw.contains(word));
                prop_assert!(!word.contains(|c: char| c == ',' || c.is_whitespace()));
            }
        }

        /// Any context extensions: a requirement of known scopes, or a misconfigured route
        /// naming the key at fault; never a panic.
        #[test]
        fn any_context_extension_gives_known_scopes_or_names_the_key(
            scopes in prop_oneof![
                "((user|admin):(read|write)|tokens:issue|jobs:run)([ ,]{1,2}((user|admin):(read|write)|jobs:run)){0,3}",
                any::<String>(),
            ],
            mode in proptest::option::of(prop_oneof![
                Just("any".to_owned()), Just(" all ".to_owned()), any::<String>()
            ]),
        ) {
            let mut extensions = vec![(SCOPES_KEY, scopes.as_str())];
            if let Some(mode) = &mode {
                extensions.push((MATCH_KEY, mode.as_str()));
            }
            let catalog = Catalog::default();
            match requirement_of(&with_extensions(&extensions), &catalog, &RouteTable::default()) {
                Ok(Some(r)) => {
                    prop_assert!(r.scopes.iter().all(|s| catalog.knows(s)));
                    let want = match mode.as_deref().map(str::trim) {
                        Some("any") => ScopeMatch::Any,
                        _ => ScopeMatch::All,
                    };
                    prop_assert_eq!(r.mode, want);
                }
                Ok(None) => prop_assert!(false, "casola.scopes always gives a requirement"),
                Err(e) => prop_assert!(
                    e.starts_with(&format!("context extension {SCOPES_KEY}:"))
                        || e.starts_with(&format!("context extension {MATCH_KEY}:")),
                    "{}", e
                ),
            }
        }
    }

    #[test]
    fn context_extension_scopes_split_on_spaces_and_commas() {
        assert_eq!(
            split_scopes("user:read, admin:read  user:write,"),
            ["user:read", "admin:read", "user:write"]
        );
    }
}
