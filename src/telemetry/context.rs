//! W3C trace context (`traceparent`, `tracestate`): read from gRPC metadata and from the HTTP
//! headers Envoy forwards in a CheckRequest, and the rule that picks a Check span's parent
//! when both carry one.

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// gRPC metadata (HTTP/2 headers) as an OpenTelemetry carrier.
struct HeaderCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Envoy's header map (names in lower case) as a carrier.
struct MapCarrier<'a>(&'a HashMap<String, String>);

impl Extractor for MapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The remote context in gRPC metadata; an empty context when there is none or it is invalid.
pub fn from_metadata(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderCarrier(headers))
}

/// The remote context in the HTTP headers of a checked request.
pub fn from_http_headers(headers: &HashMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(&MapCarrier(headers))
}

/// The remote span of `cx`, if it carries a valid one.
pub fn remote_span(cx: &Context) -> Option<SpanContext> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// The parent of a Check span, and a span to link to.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckParent {
    /// The parent (an empty context: a new trace).
    pub parent: Option<SpanContext>,
    /// A second context worth keeping: linked, not parent.
    pub link: Option<SpanContext>,
}

/// Picks the parent of a Check span from the gRPC metadata of the Check call (`grpc`: set
/// by Envoy's own tracing, if on) and the HTTP headers of the request being checked
/// (`http`: the caller's trace, when Envoy forwards `traceparent`).
///
/// - Both in one trace: the gRPC one. Envoy's ext_authz span sits inside the caller's
///   trace, between the caller's span and ours, so it is the more precise parent.
/// - Different traces: the HTTP one. The request being checked is what an operator
///   follows ("why was my request denied?"); Envoy's unrelated trace is kept as a link.
/// - Only one: that one. None: a new trace.
pub fn check_parent(grpc: &Context, http: &Context) -> CheckParent {
    match (remote_span(grpc), remote_span(http)) {
        (Some(g), Some(h)) if g.trace_id() == h.trace_id() => CheckParent {
            parent: Some(g),
            link: None,
        },
        (Some(g), Some(h)) => CheckParent {
            parent: Some(h),
            link: Some(g),
        },
        (g, h) => CheckParent {
            parent: h.or(g),
            link: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const ENVOY_SAME_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01";
    const ENVOY_OTHER_TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b9c7c989f97918e1-01";

    fn metadata(traceparent: Option<&str>) -> Context {
        let mut headers = http::HeaderMap::new();
        if let Some(tp) = traceparent {
            headers.insert("traceparent", tp.parse().unwrap());
            headers.insert("tracestate", "casola=1".parse().unwrap());
        }
        from_metadata(&headers)
    }

    fn http_headers(traceparent: Option<&str>) -> Context {
        let headers: HashMap<String, String> = traceparent
            .map(|tp| ("traceparent".to_owned(), tp.to_owned()))
            .into_iter()
            .collect();
        from_http_headers(&headers)
    }

    fn span_id(cx: Option<SpanContext>) -> Option<String> {
        cx.map(|c| c.span_id().to_string())
    }

    #[test]
    fn traceparent_and_tracestate_are_read_from_metadata() {
        let cx = remote_span(&metadata(Some(CALLER))).expect("valid");
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_remote() && cx.is_sampled());
        assert_eq!(cx.trace_state().get("casola"), Some("1"));
    }

    #[test]
    fn a_malformed_traceparent_is_no_context() {
        assert_eq!(remote_span(&metadata(Some("00-zz-yy-01"))), None);
        assert_eq!(remote_span(&metadata(None)), None);
    }

    #[test]
    fn check_prefers_the_checked_request_unless_envoy_is_in_the_same_trace() {
        let pick = |g, h| {
            let p = check_parent(&metadata(g), &http_headers(h));
            (span_id(p.parent), span_id(p.link))
        };
        let caller = Some("00f067aa0ba902b7".to_owned());
        // Only the caller's headers (Envoy without tracing): the caller's span.
        assert_eq!(pick(None, Some(CALLER)), (caller.clone(), None));
        // Envoy traces inside the caller's trace: Envoy's ext_authz span, the closer parent.
        assert_eq!(
            pick(Some(ENVOY_SAME_TRACE), Some(CALLER)),
            (Some("b7ad6b7169203331".into()), None)
        );
        // Envoy's own unrelated trace: the caller's, with Envoy's linked.
        assert_eq!(
            pick(Some(ENVOY_OTHER_TRACE), Some(CALLER)),
            (caller, Some("b9c7c989f97918e1".into()))
        );
        // Only gRPC metadata: that.
        assert_eq!(
            pick(Some(ENVOY_OTHER_TRACE), None),
            (Some("b9c7c989f97918e1".into()), None)
        );
        assert_eq!(pick(None, None), (None, None));
    }
}
