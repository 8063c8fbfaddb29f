//! Observability end to end, against the real binary (a child process: the tracer provider
//! and the metrics recorder are process-wide, as in production): traces joined to the
//! caller's W3C context arrive at an OTLP receiver, `/metrics` is valid Prometheus text that
//! moves with traffic, and with every log level on no secret shows up anywhere.

use std::collections::{HashMap, HashSet};

use casola_auth::{
    proto::{
        CreateTokenRequest, Decision, DenyReason, ReportExposedTokensRequest, RevokeTokenRequest,
        RotateTokenRequest, authorization_service_client::AuthorizationServiceClient,
        token_service_client::TokenServiceClient,
    },
    token::{LOOKUP_ID_LEN, PlainToken, SECRET_LEN, TOKEN_PREFIX},
};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest,
    attribute_context::{HttpRequest, Request as AttributesRequest},
    authorization_client::AuthorizationClient,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::support::{
    HttpResponse, authorize, bearer,
    otlp::{Received, Receiver, attr, hex},
    pg,
    process::{BOOTSTRAP_LINE, ServerProcess},
    token_id, with_metadata,
};

const AUTHORIZE: &str = "casola.auth.v1.AuthorizationService/Authorize";
const CHECK: &str = "envoy.service.auth.v3.Authorization/Check";

/// A Check of `GET /v1/models` requiring `scopes`, with these HTTP headers.
fn check_request(scopes: &str, headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttributesRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/v1/models".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("casola.scopes".to_owned(), scopes.to_owned())].into(),
            ..Default::default()
        }),
    }
}

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

fn in_trace<'a>(name: &'a str, trace_id: &'a str) -> impl Fn(&Received) -> bool + 'a {
    move |r| r.span.name == name && hex(&r.span.trace_id) == trace_id
}

/// The children of `parent` among `spans`, by name.
fn children<'a>(spans: &'a [Received], parent: &Received) -> Vec<&'a str> {
    spans
        .iter()
        .filter(|r| r.span.trace_id == parent.span.trace_id)
        .filter(|r| r.span.parent_span_id == parent.span.span_id)
        .map(|r| r.span.name.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_callers_trace_from_metadata_and_from_checked_http_headers() {
    let receiver = Receiver::start().await;
    let server = ServerProcess::start(&[
        ("CASOLA_AUTH_LOG_FORMAT", "json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        ),
    ]);
    let channel = server.channel().await;
    let token = server.bootstrap.clone();
    let mut authz = AuthorizationServiceClient::new(channel.clone());
    let mut check = AuthorizationClient::new(channel.clone());

    // Authorize with the caller's context in gRPC metadata: the token's first use, so the
    // cold path (store read, argon2) runs under it.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let response = authz
        .authorize(with_metadata(
            authorize(&token, &["admin:read"]),
            &[
                ("traceparent", &traceparent(trace, parent)),
                ("tracestate", "vendor=opaque"),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.decision(), Decision::Allow);
    let token_id = token_id(&channel, &token).await;
    let span = receiver
        .wait_for("Authorize in the sent trace", in_trace(AUTHORIZE, trace))
        .await;
    assert_eq!(hex(&span.span.parent_span_id), parent);
    assert_eq!(span.span.trace_state, "vendor=opaque");
    assert_eq!(span.span.kind(), SpanKind::Server);
    let attrs = &span.span.attributes;
    assert_eq!(attr(attrs, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attr(attrs, "rpc.service").as_deref(),
        Some("casola.auth.v1.AuthorizationService")
    );
    assert_eq!(attr(attrs, "rpc.method").as_deref(), Some("Authorize"));
    assert_eq!(attr(attrs, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(attr(attrs, "decision").as_deref(), Some("allow"));
    assert_eq!(attr(attrs, "token.id"), Some(token_id.clone()));
    // The decision id the answer carries is the span's.
    assert_eq!(
        attr(attrs, "decision.id"),
        Some(response.decision_id.clone())
    );
    let resource = &span.resource.attributes;
    assert_eq!(
        attr(resource, "service.name").as_deref(),
        Some("casola-auth")
    );
    assert_eq!(
        attr(resource, "deployment.environment.name").as_deref(),
        Some("test")
    );
    // The decision path below it: authenticate, and under it the store and argon2.
    let spans = receiver.spans();
    assert_eq!(children(&spans, &span), ["authenticate"]);
    let authenticate = spans
        .iter()
        .find(|r| r.span.name == "authenticate" && r.span.parent_span_id == span.span.span_id)
        .unwrap();
    assert_eq!(
        attr(&authenticate.span.attributes, "token.id"),
        Some(token_id.clone())
    );
    assert_eq!(
        attr(&authenticate.span.attributes, "cache").as_deref(),
        Some("miss")
    );
    let mut below: Vec<&str> = children(&spans, authenticate);
    below.sort_unstable();
    assert_eq!(below, ["argon2", "store find_by_lookup_id"]);

    // A denial names its reason.
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let refused = authz
        .authorize(with_metadata(
            authorize("csl_not-a-token", &[]),
            &[("traceparent", &traceparent(trace, parent))],
        ))
        .await
        .unwrap()
        .into_inner();
    let denied = receiver
        .wait_for("denied Authorize", in_trace(AUTHORIZE, trace))
        .await;
    assert_eq!(
        attr(&denied.span.attributes, "decision").as_deref(),
        Some("deny")
    );
    assert_eq!(
        attr(&denied.span.attributes, "deny.reason").as_deref(),
        Some("malformed")
    );
    // Its log line carries the trace and span ids, to go from a log to the trace.
    let logged = server
        .stderr()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "request" && l["trace_id"] == trace)
        .expect("a request line in the trace");
    assert_eq!(logged["span_id"], hex(&denied.span.span_id));
    assert_eq!(logged["reason"], "malformed");
    // And the decision id the client got, to go from a client's report to the line.
    assert_eq!(logged["decision_id"], refused.decision_id.as_str());
    assert_eq!(
        attr(&denied.span.attributes, "decision.id"),
        Some(refused.decision_id.clone())
    );

    // Check: the caller's context is in the checked request's HTTP headers.
    let (trace, parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let bearer_header = format!("Bearer {token}");
    let response = check
        .check(check_request(
            "admin:read",
            &[
                ("authorization", &bearer_header),
                ("traceparent", &traceparent(trace, parent)),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status.unwrap().code, 0, "allowed");
    let span = receiver
        .wait_for(
            "Check in the checked request's trace",
            in_trace(CHECK, trace),
        )
        .await;
    assert_eq!(hex(&span.span.parent_span_id), parent);
    assert_eq!(span.span.kind(), SpanKind::Server);
    assert_eq!(
        attr(&span.span.attributes, "decision").as_deref(),
        Some("allow")
    );
    assert_eq!(children(&receiver.spans(), &span), ["authenticate"]);

    // Envoy traces in a trace of its own: the checked request still wins, Envoy's is linked.
    let (envoy_trace, envoy_span) = ("1af7651916cd43dd8448eb211c80319c", "c7ad6b7169203331");
    let trace = "2af7651916cd43dd8448eb211c80319c";
    check
        .check(with_metadata(
            check_request(
                "admin:read",
                &[
                    ("authorization", &bearer_header),
                    ("traceparent", &traceparent(trace, parent)),
                ],
            ),
            &[("traceparent", &traceparent(envoy_trace, envoy_span))],
        ))
        .await
        .unwrap();
    let span = receiver
        .wait_for("Check with two contexts", in_trace(CHECK, trace))
        .await;
    assert_eq!(hex(&span.span.parent_span_id), parent);
    let links: Vec<(String, String)> = span
        .span
        .links
        .iter()
        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
        .collect();
    assert_eq!(links, [(envoy_trace.to_owned(), envoy_span.to_owned())]);
}

/// Strict Prometheus text format: every line is a HELP, a TYPE or a sample of a family
/// whose TYPE came first, with a valid name, labels and value.
fn assert_prometheus_text(text: &str) {
    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut typed: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
        } else {
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            assert!(
                value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                "{line}"
            );
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, Some(labels)),
                None => (series, None),
            };
            assert!(valid_name(name), "{line}");
            if let Some(labels) = labels {
                let labels = labels.strip_suffix('}').expect("closing brace");
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                    assert!(valid_name(key), "{line}");
                    assert!(!value.trim_end_matches('"').contains('"'), "{line}");
                }
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(typed.contains_key(family), "sample before its TYPE: {line}");
        }
    }
}

struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn parse(text: &str) -> Self {
        assert_prometheus_text(text);
        Self(
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
                .expect("Prometheus text"),
        )
    }

    /// The value of a counter (0 when the series does not exist yet).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                ref other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    /// The `+Inf` bucket (the count) of a histogram series.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map_or(0.0, |b| b.count),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    }

    fn names(&self) -> HashSet<&str> {
        self.0.samples.iter().map(|s| s.metric.as_str()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_on_the_admin_port_and_move_with_traffic() {
    let server = ServerProcess::start(&[("CASOLA_AUTH_LOG_FORMAT", "json")]);
    let channel = server.channel().await;
    let mut authz = AuthorizationServiceClient::new(channel.clone());

    assert_eq!(server.admin_get("/healthz").await.status, 200);
    let HttpResponse {
        status,
        content_type,
        body,
    } = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let before = Scrape::parse(&body);

    let token = server.bootstrap.clone();
    let allowed = 3;
    for _ in 0..allowed {
        let r = authz
            .authorize(authorize(&token, &["admin:read"]))
            .await
            .unwrap();
        assert_eq!(r.into_inner().decision(), Decision::Allow);
    }
    let malformed = authz
        .authorize(authorize("csl_nope", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(malformed.deny_reason(), DenyReason::Malformed);
    let unknown = PlainToken::generate();
    let r = authz
        .authorize(authorize(unknown.expose(), &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deny_reason(), DenyReason::Unknown);
    // An invalid argument: a failed call, no decision.
    let err = authz
        .authorize(authorize(&token, &["no:such-scope"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Check: an allow, and a request without a key.
    let mut check = AuthorizationClient::new(channel.clone());
    let bearer_header = format!("Bearer {token}");
    for headers in [vec![("authorization", bearer_header.as_str())], vec![]] {
        check
            .check(check_request("admin:read", &headers))
            .await
            .unwrap();
    }

    // The last-used flush runs every 100 ms; wait for it (bounded) rather than for a time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let after = loop {
        let body = server.admin_get("/metrics").await.body;
        let scrape = Scrape::parse(&body);
        if scrape.counter("casola_auth_last_used_flushes_total", &[]) > 0.0 {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no flush counted: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.counter(name, labels) - before.counter(name, labels)
    };
    let ok = [("rpc", AUTHORIZE), ("code", "OK")];
    assert_eq!(delta("casola_auth_requests_total", &ok), 5.0);
    assert_eq!(
        delta(
            "casola_auth_requests_total",
            &[("rpc", AUTHORIZE), ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    assert_eq!(
        after.histogram_count(
            "casola_auth_request_duration_seconds",
            &[("rpc", AUTHORIZE)]
        ) - before.histogram_count(
            "casola_auth_request_duration_seconds",
            &[("rpc", AUTHORIZE)]
        ),
        6.0
    );
    let decision = |decision, reason| {
        delta(
            "casola_auth_decisions_total",
            &[
                ("rpc", "authorize"),
                ("decision", decision),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(decision("allow", "none"), 3.0);
    assert_eq!(decision("deny", "malformed"), 1.0);
    assert_eq!(decision("deny", "unknown"), 1.0);
    // Every call's wait was measured from its bytes' arrival: hyper copies the service on
    // the connection's task as it decodes a request, where the connection's read noted when
    // the bytes came (none fell back to a decode time or to the queue canary's estimate).
    let waits = |seen| {
        after.histogram_count("casola_auth_call_wait_seconds", &[("seen", seen)])
            - before.histogram_count("casola_auth_call_wait_seconds", &[("seen", seen)])
    };
    assert_eq!(waits("read"), 8.0, "6 Authorize and 2 Check calls");
    assert_eq!(waits("decoded") + waits("estimated"), 0.0);
    let check_decision = |decision, reason| {
        delta(
            "casola_auth_decisions_total",
            &[("rpc", "check"), ("decision", decision), ("reason", reason)],
        )
    };
    assert_eq!(check_decision("allow", "none"), 1.0);
    assert_eq!(check_decision("deny", "missing_credential"), 1.0);
    assert_eq!(
        delta(
            "casola_auth_requests_total",
            &[("rpc", CHECK), ("code", "OK")]
        ),
        2.0
    );
    // The verified-token cache: the bootstrap token is verified once; its other two
    // Authorize calls and the Check are hits; the unknown token is a miss with no verify.
    assert_eq!(
        delta("casola_auth_argon2_verifies_total", &[("outcome", "match")]),
        1.0
    );
    assert_eq!(delta("casola_auth_cache_hits_total", &[]), 3.0);
    assert_eq!(delta("casola_auth_cache_misses_total", &[]), 2.0);
    assert_eq!(
        after.histogram_count(
            "casola_auth_store_call_duration_seconds",
            &[("op", "find_by_lookup_id")]
        ) - before.histogram_count(
            "casola_auth_store_call_duration_seconds",
            &[("op", "find_by_lookup_id")]
        ),
        2.0,
        "one store read per cache miss"
    );

    // One JSON log line per call, at INFO for refusals; allowed Authorize calls are DEBUG.
    let lines: Vec<serde_json::Value> = server
        .stderr()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "request" && l["rpc"] == AUTHORIZE)
        .collect();
    let seen: Vec<(&str, &str, &str, &str)> = requests
        .iter()
        .map(|l| {
            assert!(l["latency_ms"].as_f64().is_some(), "{l}");
            let field = |k: &str| l[k].as_str().unwrap_or("-");
            (
                field("level"),
                field("code"),
                field("decision"),
                field("reason"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("INFO", "OK", "deny", "malformed"),
            ("INFO", "OK", "deny", "unknown"),
            ("INFO", "INVALID_ARGUMENT", "-", "-"),
        ]
    );

    let names = after.names();
    for name in [
        "casola_auth_requests_total",
        "casola_auth_request_duration_seconds",
        "casola_auth_decisions_total",
        "casola_auth_argon2_verifies_total",
        "casola_auth_argon2_verify_duration_seconds",
        "casola_auth_argon2_queue_wait_seconds",
        "casola_auth_argon2_queue_depth",
        "casola_auth_argon2_rejected_total",
        "casola_auth_store_call_duration_seconds",
        "casola_auth_call_wait_seconds",
        "casola_auth_last_used_flushes_total",
        "casola_auth_last_used_flush_size",
        "casola_auth_last_used_flush_errors_total",
    ] {
        assert!(names.contains(name), "{name} missing from /metrics");
        assert!(after.0.docs.contains_key(name), "{name} has no HELP");
    }
    // No unbounded label values: no token id, no lookup id, no client-chosen path.
    for sample in &after.0.samples {
        for (key, value) in sample.labels.iter() {
            assert!(
                uuid::Uuid::parse_str(value).is_err() && !value.starts_with(TOKEN_PREFIX),
                "{}{{{key}={value}}}",
                sample.metric
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_metrics_and_pool_connections_are_exported_on_postgres() {
    let db = pg::TestDb::new().await;
    let server = ServerProcess::start(&[("DATABASE_URL", &db.url)]);
    let channel = server.channel().await;
    let unknown = PlainToken::generate();
    let r = AuthorizationServiceClient::new(channel)
        .authorize(authorize(unknown.expose(), &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deny_reason(), DenyReason::Unknown);

    let body = server.admin_get("/metrics").await.body;
    let scrape = Scrape::parse(&body);
    let pool = |state: &str| {
        scrape
            .0
            .samples
            .iter()
            .find(|s| {
                s.metric == "casola_auth_store_pool_connections"
                    && s.labels.get("state") == Some(state)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                ref other => panic!("not a gauge: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no pool gauge {state}: {body}"))
    };
    // The read above held a connection and gave it back.
    assert!(pool("in_use") + pool("idle") >= 1.0, "{body}");
    assert_eq!(
        scrape.histogram_count(
            "casola_auth_store_call_duration_seconds",
            &[("op", "find_by_lookup_id")]
        ),
        1.0
    );
    assert_eq!(
        scrape.counter("casola_auth_store_errors_total", &[]),
        0.0,
        "{body}"
    );
}

/// The secret of a token and its 32-character secret part.
fn secret_forms(token: &str) -> [String; 2] {
    let start = TOKEN_PREFIX.len() + LOOKUP_ID_LEN;
    [
        token.to_owned(),
        token[start..start + SECRET_LEN].to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lifecycle_with_every_log_level_on_leaves_no_secret_anywhere() {
    let receiver = Receiver::start().await;
    let mut server = ServerProcess::start(&[
        ("RUST_LOG", "trace"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
        // Nothing leaves before shutdown: the spans arrive only if shutdown flushes them.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ]);
    let channel = server.channel().await;
    let mut tokens = TokenServiceClient::new(channel.clone());
    let mut authz = AuthorizationServiceClient::new(channel.clone());
    let mut check = AuthorizationClient::new(channel.clone());
    let admin = server.bootstrap.clone();

    let created = tokens
        .create_token(bearer(
            &admin,
            CreateTokenRequest {
                name: "laptop".into(),
                preset: "user-full".into(),
                org_id: "local".into(),
                user_id: "alice".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("create")
        .into_inner();
    let secret = created.secret.clone();
    let id = created.token.expect("token").id;

    let allow = authz
        .authorize(authorize(&secret, &["user:write"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allow.decision(), Decision::Allow);
    let deny = authz
        .authorize(authorize(&secret, &["admin:read"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deny.deny_reason(), DenyReason::InsufficientScope);
    assert_eq!(token_id(&channel, &secret).await, id);
    let checked = check
        .check(check_request(
            "user:read",
            &[("authorization", &format!("Bearer {secret}"))],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.status.unwrap().code, 0);
    // A rotation, then a report of the new token (also pasted into the source URL): neither
    // secret may reach a log line, a span or a metric.
    let rotated = tokens
        .rotate_token(bearer(
            &admin,
            RotateTokenRequest {
                id: id.clone(),
                overlap_seconds: 60,
                request_id: "observability-1".into(),
            },
        ))
        .await
        .expect("rotate")
        .into_inner();
    let rotated_secret = rotated.secret.clone();
    tokens
        .report_exposed_tokens(ReportExposedTokensRequest {
            tokens: vec![rotated_secret.clone(), "not a token".into()],
            source_url: format!("https://example.com/leak?t={rotated_secret}"),
        })
        .await
        .expect("report");
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the reported token is revoked",
        || {
            let (mut authz, t) = (authz.clone(), rotated_secret.clone());
            async move {
                authz
                    .authorize(authorize(&t, &[]))
                    .await
                    .unwrap()
                    .into_inner()
                    .deny_reason()
                    == DenyReason::Revoked
            }
        },
    )
    .await;
    // A well-formed token that does not exist, as a caller of TokenService.
    let stranger = PlainToken::generate().expose().to_owned();
    let refused = tokens
        .revoke_token(bearer(&stranger, RevokeTokenRequest { id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    tokens
        .revoke_token(bearer(&admin, RevokeTokenRequest { id: id.clone() }))
        .await
        .expect("revoke");
    let revoked = authz
        .authorize(authorize(&secret, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.deny_reason(), DenyReason::Revoked);

    let metrics = server.admin_get("/metrics").await.body;
    drop(channel);
    let status = server.terminate().await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    // Shutdown flushed the spans (none was sent before): the last call is there.
    receiver
        .wait_for("RevokeToken", |r| {
            r.span.name == "casola.auth.v1.TokenService/RevokeToken"
        })
        .await;
    assert!(
        !server
            .stderr()
            .iter()
            .any(|l| l.contains("drain timed out")),
        "calls drained before the grace period"
    );

    let stdout = server.stdout();
    let bootstrap_line = format!("{BOOTSTRAP_LINE}{admin}");
    assert_eq!(
        stdout.iter().filter(|l| **l == bootstrap_line).count(),
        1,
        "the bootstrap line, once: {stdout:?}"
    );
    let stdout_rest: Vec<&String> = stdout.iter().filter(|l| **l != bootstrap_line).collect();
    let stderr = server.stderr();
    let spans: Vec<String> = receiver.spans().iter().map(|r| format!("{r:?}")).collect();

    // The captures are not empty: every level was on, spans and logs name the token by id.
    assert!(
        stderr.iter().any(|l| l.contains(" TRACE ")),
        "trace level on"
    );
    assert!(
        stderr.iter().any(|l| l.contains(&id)),
        "logs name the token id"
    );
    assert!(
        spans.iter().any(|s| s.contains(&id)),
        "spans name the token id"
    );
    assert!(spans.iter().any(|s| s.contains("\"authenticate\"")));
    assert!(metrics.contains("casola_auth_decisions_total"));

    let secrets: Vec<String> = [&admin, &secret, &stranger, &rotated_secret]
        .into_iter()
        .flat_map(|t| secret_forms(t))
        .collect();
    for secret in &secrets {
        for (place, lines) in [
            ("stdout (less the bootstrap line)", stdout_rest.clone()),
            ("stderr", stderr.iter().collect()),
            ("spans", spans.iter().collect()),
        ] {
            if let Some(line) = lines.iter().find(|l| l.contains(secret.as_str())) {
                panic!("a secret in {place}: {line}");
            }
        }
        assert!(!metrics.contains(secret.as_str()), "a secret in /metrics");
    }
}
