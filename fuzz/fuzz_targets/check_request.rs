//! The Envoy Check adapter's decision inputs on an arbitrary `CheckRequest`: the
//! requirement (context extensions, else the route table), the credential header and its
//! parsing. The request comes either from a structured description (headers, method, path,
//! context extensions, a route table) or from protobuf bytes as Envoy would send them.
//! Invariants: no panic; the credential is the `authorization` header, else the configured
//! token header; without `casola.scopes` the requirement is the route table's most
//! specific matching rule; a request survives a protobuf round trip unchanged.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use casola_auth::{
    config::{EnvoyConfig, RouteRule},
    scope::{Catalog, ScopeMatch},
    token::PlainToken,
    transport::envoy::{MATCH_KEY, RouteTable, SCOPES_KEY, credential_of, requirement_of},
};
use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest,
    attribute_context::{HttpRequest, Request},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Debug, Arbitrary)]
enum HeaderName {
    Authorization,
    ApiKey,
    Casola(String),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum ExtensionKey {
    Scopes,
    Match,
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Rule {
    method: Option<String>,
    path_prefix: String,
    scopes: Vec<u8>,
    any: bool,
}

#[derive(Debug, Arbitrary)]
struct Structured {
    /// Whether the attributes, request and http parts are present at all.
    layers: u8,
    method: String,
    path: String,
    headers: Vec<(HeaderName, String)>,
    extensions: Vec<(ExtensionKey, String)>,
    token_header: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Structured(Structured),
    /// Protobuf bytes, decoded as Envoy's request.
    Wire(Vec<u8>),
}

const SCOPES: [&str; 5] = [
    "user:read",
    "user:write",
    "admin:read",
    "admin:write",
    "tokens:issue",
];

fn rule_config(rules: &[Rule]) -> Vec<RouteRule> {
    rules
        .iter()
        .map(|r| RouteRule {
            method: r.method.clone(),
            path_prefix: r.path_prefix.clone(),
            scopes: r
                .scopes
                .iter()
                .map(|i| SCOPES[usize::from(*i) % SCOPES.len()].to_owned())
                .collect(),
            mode: if r.any {
                ScopeMatch::Any
            } else {
                ScopeMatch::All
            },
        })
        .collect()
}

fn request(s: &Structured) -> CheckRequest {
    let headers: HashMap<String, String> = s
        .headers
        .iter()
        .map(|(name, value)| {
            let name = match name {
                HeaderName::Authorization => "authorization".to_owned(),
                HeaderName::ApiKey => "x-api-key".to_owned(),
                HeaderName::Casola(rest) => format!("x-casola-{rest}"),
                HeaderName::Other(name) => name.clone(),
            };
            (name, value.clone())
        })
        .collect();
    let context_extensions = s
        .extensions
        .iter()
        .map(|(key, value)| {
            let key = match key {
                ExtensionKey::Scopes => SCOPES_KEY.to_owned(),
                ExtensionKey::Match => MATCH_KEY.to_owned(),
                ExtensionKey::Other(k) => k.clone(),
            };
            (key, value.clone())
        })
        .collect();
    let http = HttpRequest {
        method: s.method.clone(),
        path: s.path.clone(),
        headers,
        ..Default::default()
    };
    let request = Request {
        http: (s.layers & 4 != 0).then_some(http),
        ..Default::default()
    };
    CheckRequest {
        attributes: (s.layers & 1 != 0).then(|| AttributeContext {
            request: (s.layers & 2 != 0).then_some(request),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// The decision inputs, with their invariants; `config.routes` built `table`.
fn inspect(req: &CheckRequest, catalog: &Catalog, config: &EnvoyConfig, table: &RouteTable) {
    let headers = req.get_client_headers();
    let credential = credential_of(headers, config);
    // `authorization` decides when present (a scheme is required); else the token header.
    match headers.and_then(|h| h.get("authorization")) {
        Some(value) => {
            let schemed = value
                .trim()
                .split_once(char::is_whitespace)
                .is_some_and(|(scheme, _)| {
                    scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("key")
                });
                    assert_eq!(credential.is_ok(), schemed, "{value:?}");
        }
        None => assert!(credential.is_ok()),
    }
    if let Ok(Some(value)) = credential {
        let _ = PlainToken::parse_credential(value);
    }

    let extensions = req.attributes.as_ref().map(|a| &a.context_extensions);
    let requirement = requirement_of(req, catalog, table);
    if extensions.is_some_and(|e| e.contains_key(SCOPES_KEY)) {
        assert!(!matches!(requirement, Ok(None)));
        return;
    }
    let requirement = requirement.expect("without context extensions nothing is misconfigured");
    // Whatever the table finds is the requirement of one of its rules.
    if let Some(found) = requirement {
        assert!(config.routes.iter().any(|r| {
            let scopes = match r.scopes.as_slice() {
                [star] if star == "*" => Some(Default::default()),
                names => catalog.resolve(names).ok(),
            };
            scopes == Some(found.scopes.clone()) && found.mode == r.mode
        }));
    }
}

fuzz_target!(|input: Input| {
    let catalog = Catalog::default();
    match input {
        Input::Structured(s) => {
            let req = request(&s);
            let mut config = EnvoyConfig {
                token_header: s.token_header.clone(),
                routes: rule_config(&s.rules),
                ..Default::default()
            };
            let table = match RouteTable::from_config(&config, &catalog) {
                Ok(table) => table,
                Err(e) => {
                    assert!(e.starts_with("envoy.routes["), "{e}");
                    config.routes.clear();
                    RouteTable::default()
                }
            };
            inspect(&req, &catalog, &config, &table);
            let decoded = CheckRequest::decode(req.encode_to_vec().as_slice())
                .expect("an encoded request decodes");
            assert_eq!(decoded, req, "a request survives a protobuf round trip");
        }
        Input::Wire(bytes) => {
            let Ok(req) = CheckRequest::decode(bytes.as_slice()) else {
                return;
            };
            let config = EnvoyConfig {
                token_header: Some("X-Api-Key".into()),
                routes: rule_config(&[
                    Rule {
                        method: None,
                        path_prefix: "/openai/v1/".into(),
                        scopes: vec![0],
                        any: false,
                    },
                    Rule {
                        method: Some("POST".into()),
                        path_prefix: "/openai/v1/chat/".into(),
                        scopes: vec![1],
                        any: false,
                    },
                    Rule {
                        method: None,
                        path_prefix: "/admin/".into(),
                        scopes: vec![2, 3],
                        any: true,
                    },
                ]),
                ..Default::default()
            };
            let table = RouteTable::from_config(&config, &catalog).expect("a valid table");
            inspect(&req, &catalog, &config, &table);
        }
    }
});
