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
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::{
    grpc::status,
    telemetry::check_span,
    verdict::{self, Entry},
};
use crate::{
    authorize::{Authorizer, Decision, Denial},
    config::EnvoyConfig,
    error::Error,
    principal::Principal,
    scope::{Catalog, ScopeMatch, ScopeSet},
    telemetry::{Verdict, metrics::reasons},
};

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

impl RouteTable {
    /// Builds the table; unknown scope names are a configuration error.
    pub fn from_config(config: &EnvoyConfig, catalog: &Catalog) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, rule) in config.routes.iter().enumerate() {
            if !rule.path_prefix.starts_with('/') {
                return Err(format!("envoy.routes[{i}].path_prefix must start with '/'"));
            }
            let names: Vec<&str> = rule.scopes.iter().map(String::as_str).collect();
            let scopes = catalog
                .resolve(&names)
                .map_err(|e| format!("envoy.routes[{i}]: {e}"))?;
            routes.push(Route {
                method: rule.method.as_ref().map(|m| m.to_ascii_uppercase()),
                path_prefix: rule.path_prefix.clone(),
                requirement: Requirement {
                    scopes,
                    mode: rule.mode,
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
        let attributes = req.attributes.as_ref();
        let extensions = attributes.map(|a| &a.context_extensions);
        if let Some(raw) = extensions.and_then(|e| e.get(SCOPES_KEY)) {
            let scopes = self
                .authorizer
                .catalog()
                .resolve(&split_scopes(raw))
                .map_err(|e| format!("context extension {SCOPES_KEY}: {e}"))?;
            let mode = extensions
                .and_then(|e| e.get(MATCH_KEY))
                .map_or(Ok(ScopeMatch::All), |m| m.parse())
                .map_err(|e| format!("context extension {MATCH_KEY}: {e}"))?;
            return Ok(Some(Requirement { scopes, mode }));
        }
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let (method, path) = http.map_or(("", ""), |h| (h.method.as_str(), h.path.as_str()));
        Ok(self.routes.lookup(method, path).cloned())
    }

    fn credential<'a>(&self, headers: Option<&'a HashMap<String, String>>) -> Option<&'a str> {
        let headers = headers?;
        headers
            .get("authorization")
            .map(String::as_str)
            .or_else(|| {
                let name = self.config.token_header.as_deref()?;
                headers.get(&name.to_ascii_lowercase()).map(String::as_str)
            })
    }

    async fn decide(&self, req: &CheckRequest) -> Outcome {
        let requirement = match self.requirement(req) {
            Ok(r) => r,
            Err(message) => {
                verdict::record(Entry::Check, Verdict::deny(reasons::MISCONFIGURED_ROUTE));
                return Outcome::Misconfigured(message);
            }
        };
        let Some(credential) = self.credential(req.get_client_headers()) else {
            verdict::record(Entry::Check, Verdict::deny(reasons::MISSING_CREDENTIAL));
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
        verdict::record(Entry::Check, check_verdict(&decision, covered));
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
        let (code, message, denied) = match outcome {
            Outcome::Allow(principal) => {
                response
                    .set_status(status::check(Code::Ok, ""))
                    .set_dynamic_metadata(Some(identity_metadata(&principal)))
                    .set_http_response(self.allowed(req, &principal));
                return response;
            }
            refused => refusal(refused),
        };
        response
            .set_status(status::check(code, &message))
            .set_http_response(denied);
        response
    }

    /// The allow: identity headers set (overwriting any a client sent), every other
    /// client `x-casola-*` header and the credential headers removed.
    fn allowed(&self, req: &CheckRequest, principal: &Principal) -> OkHttpResponseBuilder {
        let mut ok = OkHttpResponseBuilder::new();
        for (name, value) in identity(principal) {
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
                if name.starts_with("x-casola-") && !IDENTITY_HEADERS.contains(&name.as_str()) {
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
        ok
    }
}

/// A refusal: the status behind it and the HTTP answer Envoy sends (an OpenAI-style JSON
/// error, `WWW-Authenticate` on 401 and 403, `Retry-After` on 503).
fn refusal(outcome: Outcome) -> (Code, String, DeniedHttpResponseBuilder) {
    match outcome {
        Outcome::Allow(_) => unreachable!("an allow is no refusal"),
        Outcome::Unauthenticated(message) => {
            let mut denied = json_error(
                HttpStatusCode::Unauthorized,
                message,
                "invalid_request_error",
                "invalid_api_key",
            );
            set_header(
                &mut denied,
                "www-authenticate",
                r#"Bearer realm="casola", error="invalid_token""#.into(),
            );
            (Code::Unauthenticated, message.to_owned(), denied)
        }
        Outcome::Forbidden { message, missing } => {
            let mut denied = json_error(
                HttpStatusCode::Forbidden,
                &message,
                "permission_error",
                "insufficient_scope",
            );
            let challenge = format!(
                r#"Bearer realm="casola", error="insufficient_scope", scope="{}""#,
                missing.join(" ")
            );
            set_header(&mut denied, "www-authenticate", challenge);
            (Code::PermissionDenied, message, denied)
        }
        Outcome::Misconfigured(cause) => {
            tracing::error!(error = %cause, "check refused a misconfigured route");
            let denied = json_error(
                HttpStatusCode::InternalServerError,
                "The gateway's authorization rule for this route is misconfigured.",
                "server_error",
                "authorization_misconfigured",
            );
            (Code::Internal, "misconfigured route".to_owned(), denied)
        }
        Outcome::Unavailable(message) => {
            let mut denied = json_error(
                HttpStatusCode::ServiceUnavailable,
                message,
                "server_error",
                "service_unavailable",
            );
            set_header(&mut denied, "retry-after", "1".into());
            (Code::Unavailable, message.to_owned(), denied)
        }
    }
}

fn set_header(denied: &mut DeniedHttpResponseBuilder, name: &str, value: String) {
    denied.add_header(
        name,
        value,
        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
        false,
    );
}

/// The identity of an allowed request: the header names with their values.
fn identity(principal: &Principal) -> [(&'static str, String); 4] {
    [
        (TOKEN_ID_HEADER, principal.token_id.to_string()),
        (ORG_ID_HEADER, principal.owner.org_id.to_string()),
        (USER_ID_HEADER, principal.owner.user_id.to_string()),
        (SCOPES_HEADER, principal.scopes.join(" ")),
    ]
}

/// The identity as Envoy dynamic metadata (`token_id`, `org_id`, `user_id`, `scopes`), for
/// the access log and later filters.
fn identity_metadata(principal: &Principal) -> Struct {
    let keys = ["token_id", "org_id", "user_id", "scopes"];
    Struct {
        fields: keys
            .into_iter()
            .zip(identity(principal))
            .map(|(key, (_, value))| {
                (
                    key.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(value)),
                    },
                )
            })
            .collect(),
    }
}

/// The verdict of a Check: an allowed token on a route no rule covers is refused.
fn check_verdict(decision: &Result<Decision, Error>, covered: bool) -> Verdict {
    match decision {
        Ok(Decision::Allow(principal)) if !covered => {
            Verdict::deny(reasons::UNMATCHED_ROUTE).about(principal.token_id)
        }
        other => verdict::of_decision(other),
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
        let span = check_span(req.get_client_headers());
        let outcome = self.decide(&req).instrument(span).await;
        Ok(Response::new(self.respond(&req, outcome)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteRule;

    fn rule(method: Option<&str>, prefix: &str, scopes: &[&str]) -> RouteRule {
        RouteRule {
            method: method.map(Into::into),
            path_prefix: prefix.into(),
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
            mode: ScopeMatch::All,
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

    #[test]
    fn unknown_scopes_in_the_route_table_fail_at_start_up() {
        let config = EnvoyConfig {
            routes: vec![rule(None, "/x", &["user:read", "jobs:launch"])],
            ..Default::default()
        };
        let err = RouteTable::from_config(&config, &Catalog::default()).unwrap_err();
        assert!(err.contains("jobs:launch"), "{err}");
    }

    #[test]
    fn context_extension_scopes_split_on_spaces_and_commas() {
        assert_eq!(
            split_scopes("user:read, admin:read  user:write,"),
            ["user:read", "admin:read", "user:write"]
        );
    }
}
