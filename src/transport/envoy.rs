//! Envoy ext_authz (`envoy.service.auth.v3.Authorization/Check`): the gateway's question
//! for every HTTP request, answered by the same [`Authorizer`] as Authorize. This adapter
//! only finds the credential and the required scopes in the request, and maps the decision
//! onto HTTP: 200 upstream with identity headers, 401 / 403 with OpenAI-style JSON errors,
//! 503 when the service cannot decide (never a 401 for an outage), 429 when the client's
//! address is in a failed-verify cool-down.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use envoy_types::{
    ext_authz::v3::{
        CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
        pb::{CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode},
    },
    pb::{
        envoy::{config::core::v3::address, service::auth::v3::attribute_context::HttpRequest},
        google::protobuf::{Struct, Value, value::Kind},
    },
};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::{
    grpc::status,
    telemetry::check_span,
    verdict::{self, Entry},
};
use crate::{
    authorize::{
        Authorizer, Decision, Denial, RequestFacts,
        explain::{Explanation, Seen, explain},
        fairness::{Entry as SourceEntry, Source},
    },
    config::EnvoyConfig,
    error::Error,
    principal::Principal,
    proto::envoy_ext_authz::authorization_server::{Authorization, AuthorizationServer},
    restriction::{BodyProblem, ModelOf, client_from_forwarded_for},
    scope::{Catalog, ScopeMatch, ScopeSet},
    telemetry::{self, Verdict, metrics::reasons},
    token::{contains_token, redact},
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
/// The decision id, on every answer: to the client (allow and deny) and to the upstream.
pub const DECISION_ID_HEADER: &str = "x-casola-decision-id";
/// The explanation of an allowed request, to the client (a denial carries it in its body).
pub const EXPLANATION_HEADER: &str = "x-casola-explanation";
/// Set by Envoy on a CheckRequest whose body was cut at `max_request_bytes`.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";
/// The `casola.scopes` value (and the route table's `scopes = ["*"]`) that lets any valid
/// token through: the explicit opt-in, since an empty requirement is a misconfiguration.
pub const ANY_VALID_TOKEN: &str = "*";
/// Headers that carry credentials and never reach the upstream (besides `authorization`,
/// kept only with `keep_authorization`, and the configured `token_header`).
pub const CREDENTIAL_HEADERS: [&str; 2] = ["proxy-authorization", "x-api-key"];
/// Verdict reason of a request refused for its path (not in canonical form).
const NON_CANONICAL_PATH: &str = "non_canonical_path";
/// Verdict reason of an `authorization` header without a Bearer or Key scheme.
const BAD_SCHEME: &str = "malformed";
/// Most distinct misconfigured routes remembered for logging once each; context
/// extensions come from the Envoy config, not from clients, so this is never reached in
/// practice: it only bounds the memory.
const MAX_LOGGED_ROUTES: usize = 1024;
const IDENTITY_HEADERS: [&str; 5] = [
    TOKEN_ID_HEADER,
    ORG_ID_HEADER,
    USER_ID_HEADER,
    SCOPES_HEADER,
    DECISION_ID_HEADER,
];

/// What a route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Required scopes.
    pub scopes: ScopeSet,
    /// How they match.
    pub mode: ScopeMatch,
    /// What set it (for explanations).
    pub source: RequirementSource,
}

/// Where a Check requirement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequirementSource {
    /// The route's `casola.scopes` context extension.
    ContextExtension,
    /// The fallback route table's rule at this index of `envoy.routes`.
    RouteRule(usize),
}

#[derive(Debug, Clone)]
struct Route {
    method: Option<String>,
    /// The rule's prefix without its trailing `/` (empty for `/`): it matches itself and
    /// everything below it, on segment boundaries only.
    prefix: String,
    requirement: Requirement,
}

/// The fallback route table (method + path prefix -> scopes), checked at start-up; the
/// longest matching prefix wins.
///
/// Paths are matched whole segment by segment (`/api/feedback` covers `/api/feedback/x`,
/// never `/api/feedback-admin`) and ignoring ASCII letter case (`/api/ADMIN/` needs what
/// `/api/admin/` needs, since some upstreams ignore case). Only canonical paths are looked
/// up: see [`canonical_path`].
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

fn split_scopes(raw: &str) -> Vec<&str> {
    raw.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Why a request path is refused before any rule is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonCanonical {
    /// Not starting with `/`.
    NotAbsolute,
    /// An empty segment (`//`).
    EmptySegment,
    /// A `.` or `..` segment.
    DotSegment,
    /// A backslash, a control character or a byte outside ASCII.
    BadCharacter,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// An escaped character that needs no escape (`%61` for `a`): a second spelling.
    NeedlessEscape,
    /// An escaped `/` or `\` (`%2F`, `%5C`): a segment boundary in disguise.
    EscapedSlash,
}

/// The path of `raw` (query and fragment cut off) if it is canonical: absolute, no empty,
/// `.` or `..` segment, no backslash, control or non-ASCII byte, and percent escapes only
/// for characters that need one, never for `/` or `\`. Envoy's `normalize_path`,
/// `merge_slashes` and `path_with_escaped_slashes_action` make every request that reaches
/// us canonical; anything else is somebody walking around the rules, refused with 400.
pub fn canonical_path(raw: &str) -> Result<&str, NonCanonical> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..end];
    let Some(rest) = path.strip_prefix('/') else {
        return Err(NonCanonical::NotAbsolute);
    };
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' | 0..=0x1f | 0x7f.. => return Err(NonCanonical::BadCharacter),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(NonCanonical::BadEscape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| NonCanonical::BadEscape)?;
                let value = u8::from_str_radix(hex, 16).map_err(|_| NonCanonical::BadEscape)?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return Err(NonCanonical::BadEscape);
                }
                match value {
                    b'/' | b'\\' => return Err(NonCanonical::EscapedSlash),
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        return Err(NonCanonical::NeedlessEscape);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            // A trailing slash (and the root path) is one empty last segment: fine.
            "" if i == last => {}
            "" => return Err(NonCanonical::EmptySegment),
            "." | ".." => return Err(NonCanonical::DotSegment),
            _ => {}
        }
    }
    Ok(path)
}

/// Whether the rule prefix `prefix` (trailing `/` removed) covers the canonical `path`:
/// equal, or followed by a `/`, ignoring ASCII case.
fn covers(prefix: &str, path: &str) -> bool {
    let (p, q) = (prefix.as_bytes(), path.as_bytes());
    q.len() >= p.len()
        && q[..p.len()].eq_ignore_ascii_case(p)
        && (q.len() == p.len() || q[p.len()] == b'/')
}

impl RouteTable {
    /// Builds the table; unknown scope names, an empty scope list (write `["*"]` for any
    /// valid token) and a prefix that is not a canonical path are configuration errors.
    pub fn from_config(config: &EnvoyConfig, catalog: &Catalog) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, rule) in config.routes.iter().enumerate() {
            if !rule.path_prefix.starts_with('/')
                || rule.path_prefix.contains(['?', '#'])
                || canonical_path(&rule.path_prefix).is_err()
            {
                return Err(format!(
                    "envoy.routes[{i}].path_prefix must be a canonical path starting with '/' \
                     (no '//', '.', '..', '\\', query or needless percent escapes)"
                ));
            }
            let names: Vec<&str> = rule.scopes.iter().map(String::as_str).collect();
            let scopes = match names.as_slice() {
                [ANY_VALID_TOKEN] => ScopeSet::default(),
                [] => {
                    return Err(format!(
                        "envoy.routes[{i}].scopes is empty: name the scopes, or write \
                         [\"{ANY_VALID_TOKEN}\"] for any valid token"
                    ));
                }
                _ => catalog
                    .resolve(&names)
                    .map_err(|e| format!("envoy.routes[{i}]: {}", redact(&e.to_string())))?,
            };
            routes.push(Route {
                method: rule.method.as_ref().map(|m| m.to_ascii_uppercase()),
                prefix: rule.path_prefix.trim_end_matches('/').to_owned(),
                requirement: Requirement {
                    scopes,
                    mode: rule.mode,
                    source: RequirementSource::RouteRule(i),
                },
            });
        }
        // Longest prefix first, so the most specific rule matches (a stable sort: between
        // equal lengths the first in the file wins).
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Self { routes })
    }

    /// How a requirement's source reads in an explanation.
    pub fn describe(&self, source: Option<RequirementSource>) -> String {
        match source {
            None => "none".into(),
            Some(RequirementSource::ContextExtension) => format!("context_extension {SCOPES_KEY}"),
            Some(RequirementSource::RouteRule(index)) => {
                let rule = self
                    .routes
                    .iter()
                    .find(|r| r.requirement.source == RequirementSource::RouteRule(index));
                match rule {
                    Some(r) => format!(
                        "route_rule envoy.routes[{index}]: {} {}/",
                        r.method.as_deref().filter(|m| !m.is_empty()).unwrap_or("*"),
                        r.prefix
                    ),
                    None => format!("route_rule envoy.routes[{index}]"),
                }
            }
        }
    }

    /// The requirement of the first (most specific) rule matching `method` and the
    /// canonical `path` (see [`canonical_path`]; the query string is ignored).
    pub fn lookup(&self, method: &str, path: &str) -> Option<&Requirement> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.routes
            .iter()
            .find(|r| {
                covers(&r.prefix, path)
                    && r.method
                        .as_deref()
                        .is_none_or(|m| m.is_empty() || m.eq_ignore_ascii_case(method))
            })
            .map(|r| &r.requirement)
    }
}

/// An `authorization` header without a `Bearer` or `Key` scheme: refused, as no client we
/// serve sends a bare token there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingScheme;

/// What a Check request requires: its `casola.scopes` context extension when present (an
/// empty one, unknown scopes or a `casola.match` other than all/any are `Err`: a
/// misconfigured route), else the fallback route table's rule for its method and path. Free
/// of any server state, so the fuzz targets drive it as the server does.
pub fn requirement_of(
    req: &CheckRequest,
    catalog: &Catalog,
    routes: &RouteTable,
) -> Result<Option<Requirement>, String> {
    let attributes = req.attributes.as_ref();
    let extensions = attributes.map(|a| &a.context_extensions);
    if let Some(raw) = extensions.and_then(|e| e.get(SCOPES_KEY)) {
        let names = split_scopes(raw);
        let scopes = match names.as_slice() {
            [ANY_VALID_TOKEN] => ScopeSet::default(),
            // An empty value is a mistake, not "any token": it would override
            // allow_unmatched = false without anybody meaning it.
            [] => {
                return Err(format!(
                    "context extension {SCOPES_KEY} is empty; name scopes, or write \
                     \"{ANY_VALID_TOKEN}\" for any valid token"
                ));
            }
            _ => catalog
                .resolve(&names)
                .map_err(|e| format!("context extension {SCOPES_KEY}: {e}"))?,
        };
        let mode = extensions
            .and_then(|e| e.get(MATCH_KEY))
            .map_or(Ok(ScopeMatch::All), |m| m.parse())
            .map_err(|e| format!("context extension {MATCH_KEY}: {e}"))?;
        return Ok(Some(Requirement {
            scopes,
            mode,
            source: RequirementSource::ContextExtension,
        }));
    }
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let (method, path) = http.map_or(("", ""), |h| (h.method.as_str(), h.path.as_str()));
    Ok(routes.lookup(method, path).cloned())
}

/// The token to check: from `authorization` (`Bearer <t>` or `Key <t>`, the scheme
/// case-insensitive; a bare token there is refused, as no client we serve sends one),
/// else from the configured `token_header` (a bare token). Public for the fuzz targets.
pub fn credential_of<'a>(
    headers: Option<&'a HashMap<String, String>>,
    config: &EnvoyConfig,
) -> Result<Option<&'a str>, MissingScheme> {
    let Some(headers) = headers else {
        return Ok(None);
    };
    if let Some(value) = headers.get("authorization") {
        return match value.trim().split_once(char::is_whitespace) {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("key") =>
            {
                Ok(Some(token.trim()))
            }
            _ => Err(MissingScheme),
        };
    }
    Ok(config
        .token_header
        .as_deref()
        .and_then(|name| headers.get(&name.to_ascii_lowercase()))
        .map(|v| v.trim()))
}

/// The client address of a Check request: Envoy's source address, or with `trusted_hops`
/// set, the `x-forwarded-for` entry behind our proxies (none if that entry is missing:
/// never the source address instead, which is then one of our proxies).
pub fn client_ip_of(req: &CheckRequest, trusted_hops: u32) -> Option<IpAddr> {
    let attributes = req.attributes.as_ref()?;
    if trusted_hops > 0 {
        let xff = attributes
            .request
            .as_ref()?
            .http
            .as_ref()?
            .headers
            .get("x-forwarded-for")?;
        return client_from_forwarded_for(xff, trusted_hops);
    }
    let address = attributes
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?;
    match address {
        envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(socket) => socket
            .address
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical()),
        _ => None,
    }
}

/// The `model` of a Check request's JSON body. Only asked for model-restricted tokens.
/// A request without a body whose method carries none (GET, HEAD, DELETE, OPTIONS) names no
/// model; any other must send a whole JSON object with a string `model`.
pub fn model_of(http: Option<&HttpRequest>) -> ModelOf<'_> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    let Some(http) = http else {
        return ModelOf::NotNamed;
    };
    let body: &[u8] = if http.raw_body.is_empty() {
        http.body.as_bytes()
    } else {
        &http.raw_body
    };
    let partial = http
        .headers
        .get(PARTIAL_BODY_HEADER)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    // `size` is the Content-Length (-1 when unknown): more than was sent means a cut body.
    let cut = usize::try_from(http.size).is_ok_and(|size| size > body.len());
    if partial || cut {
        return ModelOf::Unreadable(BodyProblem::TooLarge);
    }
    if body.is_empty() {
        return match http.method.to_ascii_uppercase().as_str() {
            "GET" | "HEAD" | "DELETE" | "OPTIONS" => ModelOf::NotNamed,
            _ => ModelOf::Unreadable(BodyProblem::Missing),
        };
    }
    match serde_json::from_slice::<Body<'_>>(body) {
        Ok(Body { model: Some(model) }) => ModelOf::Named(model),
        Ok(Body { model: None }) => ModelOf::Unreadable(BodyProblem::NoModel),
        Err(_) => ModelOf::Unreadable(BodyProblem::NotJson),
    }
}

/// What Check knows of the request, read only when a restricted token asks for it.
struct CheckFacts<'a> {
    req: &'a CheckRequest,
    trusted_hops: u32,
}

impl CheckFacts<'_> {
    fn http(&self) -> Option<&HttpRequest> {
        self.req
            .attributes
            .as_ref()?
            .request
            .as_ref()?
            .http
            .as_ref()
    }
}

impl RequestFacts for CheckFacts<'_> {
    fn client_ip(&self) -> Option<IpAddr> {
        client_ip_of(self.req, self.trusted_hops)
    }

    fn model(&self) -> ModelOf<'_> {
        model_of(self.http())
    }
}

/// The Check implementation.
#[derive(Clone)]
pub struct CheckApi {
    authorizer: Authorizer,
    routes: RouteTable,
    config: EnvoyConfig,
    /// Misconfigured routes already logged (by their context extensions): one ERROR line
    /// per route, not one per request.
    logged: Arc<Mutex<HashSet<String>>>,
    /// The scope set of each valid `casola.scopes` value seen, resolved once: a gateway
    /// has a handful of routes, and splitting and resolving the value again on every
    /// Check showed in its profile (docs/benchmarks.md).
    resolved: Arc<quick_cache::sync::Cache<String, Arc<ScopeSet>>>,
}

/// What the route of a Check requires, without copying a scope set.
struct Required<'a> {
    scopes: RequiredScopes<'a>,
    mode: ScopeMatch,
    /// What set it (for explanations).
    source: RequirementSource,
}

enum RequiredScopes<'a> {
    /// Resolved from a `casola.scopes` context extension, shared.
    Extension(Arc<ScopeSet>),
    /// The fallback route table's rule.
    Route(&'a ScopeSet),
}

impl std::ops::Deref for RequiredScopes<'_> {
    type Target = ScopeSet;

    fn deref(&self) -> &ScopeSet {
        match self {
            Self::Extension(scopes) => scopes,
            Self::Route(scopes) => scopes,
        }
    }
}

/// A decided HTTP answer, before it becomes a CheckResponse.
#[derive(Debug)]
enum Outcome {
    Allow(Principal),
    Unauthenticated(&'static str),
    BadPath(NonCanonical),
    Forbidden {
        message: String,
        missing: Vec<String>,
    },
    /// Refused by a restriction (403), or a body the model could not be read from
    /// (400/413).
    Restricted {
        status: HttpStatusCode,
        kind: &'static str,
        code: &'static str,
        message: String,
    },
    /// The route's requirement is broken (logged where it was found).
    Misconfigured,
    Unavailable(&'static str),
    /// A fairness limit (the client's address is in a failed-verify cool-down): 429.
    TooManyRequests {
        message: &'static str,
        retry_after: Duration,
    },
}

impl CheckApi {
    /// Check over `authorizer`, with the fallback `routes`.
    pub fn new(authorizer: Authorizer, routes: RouteTable, config: EnvoyConfig) -> Self {
        Self {
            authorizer,
            routes,
            config,
            logged: Arc::default(),
            resolved: Arc::new(quick_cache::sync::Cache::new(MAX_LOGGED_ROUTES)),
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }

    /// [`requirement_of`], with each `casola.scopes` value resolved once.
    fn requirement(&self, req: &CheckRequest) -> Result<Option<Required<'_>>, String> {
        let attributes = req.attributes.as_ref();
        let extensions = attributes.map(|a| &a.context_extensions);
        let Some(raw) = extensions.and_then(|e| e.get(SCOPES_KEY)) else {
            let http = attributes
                .and_then(|a| a.request.as_ref())
                .and_then(|r| r.http.as_ref());
            let (method, path) = http.map_or(("", ""), |h| (h.method.as_str(), h.path.as_str()));
            return Ok(self.routes.lookup(method, path).map(|r| Required {
                scopes: RequiredScopes::Route(&r.scopes),
                mode: r.mode,
                source: r.source,
            }));
        };
        if let Some(scopes) = self.resolved.get(raw.as_str()) {
            // The scopes are valid (only those are kept); the match mode is read as
            // requirement_of reads it.
            let mode = extensions
                .and_then(|e| e.get(MATCH_KEY))
                .map_or(Ok(ScopeMatch::All), |m| m.parse())
                .map_err(|e| format!("context extension {MATCH_KEY}: {e}"))?;
            return Ok(Some(Required {
                scopes: RequiredScopes::Extension(scopes),
                mode,
                source: RequirementSource::ContextExtension,
            }));
        }
        let Some(requirement) = requirement_of(req, self.authorizer.catalog(), &self.routes)?
        else {
            return Ok(None);
        };
        let scopes = Arc::new(requirement.scopes);
        self.resolved.insert(raw.clone(), scopes.clone());
        Ok(Some(Required {
            scopes: RequiredScopes::Extension(scopes),
            mode: requirement.mode,
            source: requirement.source,
        }))
    }

    fn credential<'a>(
        &self,
        headers: Option<&'a HashMap<String, String>>,
    ) -> Result<Option<&'a str>, MissingScheme> {
        credential_of(headers, &self.config)
    }

    /// Logs a misconfigured route once (per distinct context extensions), with every
    /// token-shaped word redacted: a token pasted into `casola.scopes` stays out of logs.
    fn log_misconfigured(&self, req: &CheckRequest, cause: &str) {
        let mut key: Vec<String> = req
            .attributes
            .as_ref()
            .map(|a| {
                a.context_extensions
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect()
            })
            .unwrap_or_default();
        key.sort();
        let route = redact(&key.join(" ")).into_owned();
        let first = {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            logged.len() < MAX_LOGGED_ROUTES && logged.insert(route.clone())
        };
        if first {
            tracing::error!(route = %route, error = %redact(cause), "check refuses a misconfigured route (logged once per route)");
        } else {
            tracing::debug!(route = %route, "check refused a misconfigured route");
        }
    }

    async fn decide(
        &self,
        req: &CheckRequest,
        decision_id: uuid::Uuid,
    ) -> (Outcome, Option<Explanation>) {
        let raw_path = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map_or("", |h| h.path.as_str());
        // No HTTP request at all (not Envoy's HTTP filter): nothing to walk around; the
        // fallback table then matches no rule.
        if !raw_path.is_empty()
            && let Err(why) = canonical_path(raw_path)
        {
            verdict::record(Entry::Check, Verdict::deny(NON_CANONICAL_PATH));
            return (Outcome::BadPath(why), None);
        }
        let requirement = match self.requirement(req) {
            Ok(r) => r,
            Err(message) => {
                verdict::record(Entry::Check, Verdict::deny(reasons::MISCONFIGURED_ROUTE));
                self.log_misconfigured(req, &message);
                return (Outcome::Misconfigured, None);
            }
        };
        let credential = match self.credential(req.get_client_headers()) {
            Ok(Some(credential)) => credential,
            Ok(None) => {
                verdict::record(Entry::Check, Verdict::deny(reasons::MISSING_CREDENTIAL));
                return (
                    Outcome::Unauthenticated(
                        "You didn't provide an API key. Send it as `Authorization: Bearer <token>`.",
                    ),
                    None,
                );
            }
            Err(MissingScheme) => {
                verdict::record(Entry::Check, Verdict::deny(BAD_SCHEME));
                return (
                    Outcome::Unauthenticated(
                        "Unsupported authorization scheme. Send the API key as `Authorization: Bearer <token>`.",
                    ),
                    None,
                );
            }
        };
        let none = ScopeSet::default();
        let (required, mode, rule) = match &requirement {
            Some(r) => (&*r.scopes, r.mode, Some(r.source)),
            None => (&none, ScopeMatch::All, None),
        };
        let facts = CheckFacts {
            req,
            trusted_hops: self.config.trusted_hops,
        };
        let decision = self
            .authorizer
            .authorize_from(credential, required, mode, source_of(req).as_ref(), &facts)
            .await;
        let covered = rule.is_some() || self.config.allow_unmatched;
        verdict::record(Entry::Check, check_verdict(&decision, covered));
        let explanation = match &decision {
            Ok(decided) if self.wants_explanation(req, decided) => {
                let model = facts.model();
                let seen = Seen {
                    requirement_source: self.routes.describe(rule),
                    client_ip: facts.client_ip(),
                    model: match &model {
                        ModelOf::Named(m) => Some(m.as_ref()),
                        _ => None,
                    },
                };
                let catalog = self.authorizer.catalog();
                Some(explain(
                    catalog,
                    decided,
                    required,
                    mode,
                    &seen,
                    decision_id,
                ))
            }
            _ => None,
        };
        (outcome(decision, covered), explanation)
    }

    /// Whether the request asks for an explanation (the operator's `explain_header`, off by
    /// default) and its token may have one: an explanation shows the token's grants and
    /// restrictions, so only tokens holding `explain_scope` get it.
    fn wants_explanation(&self, req: &CheckRequest, decision: &Decision) -> bool {
        let (Some(header), Some(scope)) = (&self.config.explain_header, &self.config.explain_scope)
        else {
            return false;
        };
        let asked = req
            .get_client_headers()
            .and_then(|h| h.get(&header.to_ascii_lowercase()))
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        let principal = match decision {
            Decision::Allow(p) => Some(p),
            Decision::Deny(denial) => denial.principal(),
        };
        asked && principal.is_some_and(|p| p.has(scope))
    }

    fn respond(
        &self,
        req: &CheckRequest,
        outcome: Outcome,
        decision_id: uuid::Uuid,
        explanation: Option<Explanation>,
    ) -> CheckResponse {
        let mut response = CheckResponse::new();
        let id = decision_id.to_string();
        let (code, message, mut denied) = match outcome {
            Outcome::Allow(principal) => {
                // Formatted once for the headers and the metadata.
                let identity = identity(&principal);
                let metadata = identity_metadata(&identity);
                let mut ok = self.allowed(req, identity);
                // To the upstream (its logs), and to the client (a support ticket's handle).
                ok.add_header(
                    DECISION_ID_HEADER,
                    id.clone(),
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    true,
                );
                ok.add_response_header(
                    DECISION_ID_HEADER,
                    id,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
                if let Some(explanation) = &explanation {
                    ok.add_response_header(
                        EXPLANATION_HEADER,
                        serde_json::to_string(explanation).unwrap_or_default(),
                        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                        false,
                    );
                }
                response
                    .set_status(status::check(Code::Ok, ""))
                    .set_dynamic_metadata(Some(metadata))
                    .set_http_response(ok);
                return response;
            }
            refused => refusal(refused),
        };
        set_header(&mut denied, DECISION_ID_HEADER, id);
        if let Some(explanation) = explanation {
            // The explanation beside the OpenAI-style error object, which clients read.
            let mut body: serde_json::Value =
                serde_json::from_str(denied.get_body()).unwrap_or_default();
            body["explanation"] = serde_json::to_value(explanation).unwrap_or_default();
            denied.set_body(body.to_string());
        }
        response
            .set_status(status::check(code, &message))
            .set_http_response(denied);
        response
    }

    /// The allow: identity headers set (overwriting any a client sent), and removed: every
    /// other client header that reads as an `x-casola-*` header once case and underscores
    /// are folded (`x_casola_org_id` reaches a WSGI app as `HTTP_X_CASOLA_ORG_ID`), every
    /// credential header, and any other header whose value holds a token.
    fn allowed(&self, req: &CheckRequest, identity: Identity) -> OkHttpResponseBuilder {
        let mut ok = OkHttpResponseBuilder::new();
        for (name, value) in identity {
            ok.add_header(
                name,
                value,
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                true,
            );
        }
        let token_header = self
            .config
            .token_header
            .as_deref()
            .map(str::to_ascii_lowercase);
        let mut removed: Vec<String> = CREDENTIAL_HEADERS.iter().map(|&h| h.into()).collect();
        removed.extend(token_header.clone());
        if !self.config.keep_authorization {
            removed.push("authorization".into());
        }
        if let Some(headers) = req.get_client_headers() {
            for (name, value) in headers {
                // Envoy sends names in lower case: allocate only for a name that is not.
                let name: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(name.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(name)
                };
                let spoofed = reads_as_casola_header(&name) && !IDENTITY_HEADERS.contains(&&*name);
                let kept_credential = name == "authorization" && self.config.keep_authorization;
                if (spoofed || (contains_token(value) && !kept_credential))
                    && !removed.iter().any(|r| *r == name)
                {
                    removed.push(name.into_owned());
                }
            }
        }
        for name in removed {
            ok.remove_header(name);
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
        Outcome::BadPath(why) => {
            let denied = json_error(
                HttpStatusCode::BadRequest,
                "The request path is not in canonical form.",
                "invalid_request_error",
                "invalid_path",
            );
            (
                Code::InvalidArgument,
                format!("non-canonical path: {why:?}"),
                denied,
            )
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
        Outcome::Restricted {
            status,
            kind,
            code,
            message,
        } => {
            let denied = json_error(status, &message, kind, code);
            let grpc = if status == HttpStatusCode::Forbidden {
                Code::PermissionDenied
            } else {
                Code::InvalidArgument
            };
            (grpc, message, denied)
        }
        // Logged once per route where it was decided (`CheckApi::log_misconfigured`).
        Outcome::Misconfigured => {
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
        // OpenAI's shape for a 429, which its SDKs retry after `retry-after`.
        Outcome::TooManyRequests {
            message,
            retry_after,
        } => {
            let mut denied = json_error(
                HttpStatusCode::TooManyRequests,
                message,
                "requests",
                "rate_limit_exceeded",
            );
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            set_header(&mut denied, "retry-after", seconds.max(1).to_string());
            (Code::ResourceExhausted, message.to_owned(), denied)
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

/// Whether a lower-case header name is an `x-casola-*` name once underscores read as
/// dashes (`x_casola_org_id` reaches a WSGI app as `HTTP_X_CASOLA_ORG_ID`).
fn reads_as_casola_header(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-casola-";
    name.len() >= PREFIX.len()
        && name.as_bytes()[..PREFIX.len()]
            .iter()
            .map(|&b| if b == b'_' { b'-' } else { b })
            .eq(PREFIX.iter().copied())
}

/// The identity of an allowed request: header names with their values.
type Identity = [(&'static str, String); 4];

/// The identity of an allowed request: the header names with their values.
fn identity(principal: &Principal) -> Identity {
    [
        (TOKEN_ID_HEADER, principal.token_id.to_string()),
        (ORG_ID_HEADER, principal.owner.org_id.to_string()),
        (USER_ID_HEADER, principal.owner.user_id.to_string()),
        (SCOPES_HEADER, principal.scopes.join(" ")),
    ]
}

/// The identity as Envoy dynamic metadata (`token_id`, `org_id`, `user_id`, `scopes`), for
/// the access log and later filters.
fn identity_metadata(identity: &Identity) -> Struct {
    let keys = ["token_id", "org_id", "user_id", "scopes"];
    Struct {
        fields: keys
            .into_iter()
            .zip(identity)
            .map(|(key, (_, value))| {
                (
                    key.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(value.clone())),
                    },
                )
            })
            .collect(),
    }
}

/// The client Envoy saw (`attributes.source.address`), for the failed-verify limit; none
/// when Envoy sent no socket address (then no per-source limit applies).
fn source_of(req: &CheckRequest) -> Option<Source> {
    let address = req.attributes.as_ref()?.source.as_ref()?.address.as_ref()?;
    match address.address.as_ref()? {
        address::Address::SocketAddress(socket) => socket
            .address
            .parse()
            .ok()
            .map(|ip| Source::new(SourceEntry::Check, ip)),
        _ => None,
    }
}

/// The HTTP answer to a decision; `covered`: a rule (or `allow_unmatched`) covers the route.
fn outcome(decision: Result<Decision, Error>, covered: bool) -> Outcome {
    match decision {
        Ok(Decision::Allow(principal)) if covered => Outcome::Allow(principal),
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
            Denial::Network { client_ip, .. } => Outcome::Restricted {
                status: HttpStatusCode::Forbidden,
                kind: "permission_error",
                code: "network_not_allowed",
                message: match client_ip {
                    Some(ip) => format!("This API key may not be used from {ip}."),
                    None => "This API key is restricted to certain networks, and the request's address is unknown.".into(),
                },
            },
            Denial::Model { model, .. } => Outcome::Restricted {
                status: HttpStatusCode::Forbidden,
                kind: "permission_error",
                code: "model_not_allowed",
                message: format!(
                    "This API key may not use the model \"{}\".",
                    status::echo(&model)
                ),
            },
            Denial::ModelUnreadable { problem, .. } => {
                let (status, code, why) = match problem {
                    BodyProblem::TooLarge => (
                        HttpStatusCode::PayloadTooLarge,
                        "request_too_large",
                        "the request body is larger than the gateway reads",
                    ),
                    BodyProblem::Missing => (
                        HttpStatusCode::BadRequest,
                        "model_required",
                        "the request has no body",
                    ),
                    BodyProblem::NotJson => (
                        HttpStatusCode::BadRequest,
                        "model_required",
                        "the request body is not a JSON object",
                    ),
                    BodyProblem::NoModel => (
                        HttpStatusCode::BadRequest,
                        "model_required",
                        "the request body names no model",
                    ),
                };
                Outcome::Restricted {
                    status,
                    kind: "invalid_request_error",
                    code,
                    message: format!(
                        "This API key is restricted to certain models, and {why}, so the model cannot be checked."
                    ),
                }
            }
        },
        Err(Error::ResourceExhausted(_)) => {
            Outcome::Unavailable("Authorization is overloaded; retry shortly.")
        }
        Err(Error::RateLimited { retry_after, .. }) => Outcome::TooManyRequests {
            message: "Too many failed API key attempts from this address; retry later.",
            retry_after,
        },
        Err(e) => {
            tracing::warn!(error = %e, "check could not decide");
            Outcome::Unavailable("Authorization is temporarily unavailable; retry shortly.")
        }
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
        let decision_id = telemetry::call::new_decision_id();
        let (outcome, explanation) = self.decide(&req, decision_id).instrument(span).await;
        Ok(Response::new(self.respond(
            &req,
            outcome,
            decision_id,
            explanation,
        )))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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

    fn hardened_table() -> RouteTable {
        let config = EnvoyConfig {
            routes: vec![
                rule(Some("GET"), "/api/", &["user:read"]),
                rule(Some("POST"), "/api/", &["user:write"]),
                rule(None, "/api/admin/", &["admin:read"]),
                rule(Some("POST"), "/api/feedback", &["user:read"]),
            ],
            ..Default::default()
        };
        RouteTable::from_config(&config, &Catalog::default()).unwrap()
    }

    /// The audit's probes against an `/api/admin/` rule: each is either refused as not
    /// canonical or needs admin:read; none reads as a plain `/api/` path.
    #[test]
    fn the_admin_rule_cannot_be_walked_around() {
        let table = hardened_table();
        let need = |p: &str| table.lookup("GET", p).map(|r| r.scopes.to_vec());
        for refused in [
            "/api//admin/settings",
            "/api/./admin/",
            "/api/x/../admin/",
            "/api/%61dmin/",
            "/api/admin%2Fsettings",
            "/api/admin%2fsettings",
            "/api/admin%5Csettings",
            "/api/admin\\settings",
            "api/admin/",
            "/api/admin/%zz",
            "/api/admin/\u{e9}",
            "/api/adm\tin/",
        ] {
            assert!(
                canonical_path(refused).is_err(),
                "{refused} passed as canonical"
            );
        }
        for admin in [
            "/api/admin",
            "/api/admin/",
            "/api/admin/settings",
            "/api/ADMIN/",
            "/api/Admin/settings?x=1",
        ] {
            let path = canonical_path(admin).unwrap();
            assert_eq!(need(path), Some(vec!["admin:read".into()]), "{admin}");
        }
        assert_eq!(need("/api/administrators"), Some(vec!["user:read".into()]));
        assert_eq!(canonical_path("/api/a%20b/?q=/../"), Ok("/api/a%20b/"));
        assert_eq!(canonical_path("/"), Ok("/"));
    }

    #[test]
    fn rules_match_on_segment_boundaries() {
        let table = hardened_table();
        let need = |m, p| table.lookup(m, p).map(|r| r.scopes.to_vec());
        assert_eq!(
            need("POST", "/api/feedback"),
            Some(vec!["user:read".into()])
        );
        assert_eq!(
            need("POST", "/api/feedback/42"),
            Some(vec!["user:read".into()])
        );
        assert_eq!(
            need("POST", "/api/feedback-admin/purge"),
            Some(vec!["user:write".into()]),
            "a sibling with a longer name is not covered by the shorter rule"
        );
    }

    #[test]
    fn an_empty_or_non_canonical_rule_fails_at_start_up_and_star_means_any_token() {
        for (prefix, scopes) in [
            ("/api/", &[][..]),
            ("/api//x", &["user:read"][..]),
            ("/api/%61", &["user:read"][..]),
        ] {
            let config = EnvoyConfig {
                routes: vec![rule(None, prefix, scopes)],
                ..Default::default()
            };
            assert!(RouteTable::from_config(&config, &Catalog::default()).is_err());
        }
        let config = EnvoyConfig {
            routes: vec![rule(None, "/public/", &["*"])],
            ..Default::default()
        };
        let table = RouteTable::from_config(&config, &Catalog::default()).unwrap();
        assert!(table.lookup("GET", "/public/x").unwrap().scopes.is_empty());
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
                    prop_assert!(!r.scopes.is_empty() || scopes.trim() == ANY_VALID_TOKEN);
                    let want = match mode.as_deref().map(str::trim) {
                        Some("any") => ScopeMatch::Any,
                        _ => ScopeMatch::All,
                    };
                    prop_assert_eq!(r.mode, want);
                }
                Ok(None) => prop_assert!(false, "casola.scopes always gives a requirement"),
                Err(e) => prop_assert!(
                    e.starts_with(&format!("context extension {SCOPES_KEY}"))
                        || e.starts_with(&format!("context extension {MATCH_KEY}")),
                    "{}", e
                ),
            }
        }
    }

    fn http(method: &str, body: &[u8], headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            raw_body: body.to_vec(),
            size: i64::try_from(body.len()).unwrap(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_model_comes_from_a_whole_json_body_or_the_request_is_refused() {
        let named = |m: &'static str| ModelOf::Named(m.into());
        let chat = br#"{"messages":[{"role":"user","content":"hi"}],"model":"llama-4-scout"}"#;
        assert_eq!(
            model_of(Some(&http("POST", chat, &[]))),
            named("llama-4-scout")
        );
        let as_text = HttpRequest {
            body: r#"{"model":"gpt-4o"}"#.into(),
            ..http("POST", b"", &[])
        };
        assert_eq!(model_of(Some(&as_text)), named("gpt-4o"));
        let escaped = br#"{"model":"llama-4"}"#;
        assert_eq!(
            model_of(Some(&http("POST", escaped, &[]))),
            named("llama-4")
        );
        let unreadable = |p| ModelOf::Unreadable(p);
        assert_eq!(
            model_of(Some(&http("POST", b"", &[]))),
            unreadable(BodyProblem::Missing)
        );
        assert_eq!(
            model_of(Some(&http("POST", b"model=llama", &[]))),
            unreadable(BodyProblem::NotJson)
        );
        assert_eq!(
            model_of(Some(&http("POST", br#"{"model": 4}"#, &[]))),
            unreadable(BodyProblem::NotJson)
        );
        assert_eq!(
            model_of(Some(&http("POST", br#"{"messages":[]}"#, &[]))),
            unreadable(BodyProblem::NoModel)
        );
        assert_eq!(
            model_of(Some(&http(
                "POST",
                br#"{"model":"a"}"#,
                &[(PARTIAL_BODY_HEADER, "true")]
            ))),
            unreadable(BodyProblem::TooLarge),
            "a cut body is never read as whole"
        );
        let cut = HttpRequest {
            size: 100_000,
            ..http("POST", br#"{"model":"a"}"#, &[])
        };
        assert_eq!(model_of(Some(&cut)), unreadable(BodyProblem::TooLarge));
        assert_eq!(model_of(Some(&http("GET", b"", &[]))), ModelOf::NotNamed);
        assert_eq!(
            model_of(Some(&http("GET", br#"{"model":"x"}"#, &[]))),
            named("x"),
            "a body is read whatever the method"
        );
    }

    fn from(source: Option<&str>, xff: Option<&str>) -> CheckRequest {
        use envoy_types::pb::envoy::{
            config::core::v3::{Address, SocketAddress, address},
            service::auth::v3::{AttributeContext, attribute_context},
        };
        let headers: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
        CheckRequest {
            attributes: Some(AttributeContext {
                source: source.map(|ip| attribute_context::Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: ip.into(),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                }),
                request: Some(attribute_context::Request {
                    http: Some(http("GET", b"", &headers)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_client_is_the_source_address_unless_trusted_hops_are_configured() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let req = from(Some("127.0.0.1"), Some("203.0.113.9, 10.0.0.2"));
        assert_eq!(
            client_ip_of(&req, 0),
            ip("127.0.0.1"),
            "x-forwarded-for ignored"
        );
        assert_eq!(client_ip_of(&req, 1), ip("203.0.113.9"));
        assert_eq!(client_ip_of(&req, 2), None, "too few entries: no address");
        assert_eq!(client_ip_of(&from(None, None), 0), None);
        assert_eq!(
            client_ip_of(&from(Some("::ffff:10.0.0.1"), None), 0),
            ip("10.0.0.1")
        );
        assert_eq!(client_ip_of(&from(Some("127.0.0.1"), None), 1), None);
    }

    #[test]
    fn context_extension_scopes_split_on_spaces_and_commas() {
        assert_eq!(
            split_scopes("user:read, admin:read  user:write,"),
            ["user:read", "admin:read", "user:write"]
        );
    }
}
