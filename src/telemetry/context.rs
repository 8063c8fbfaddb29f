//! W3C trace context (`traceparent`, `tracestate`), read with OpenTelemetry's own carriers
//! from gRPC metadata and from a plain header map (the headers of a request Envoy asks
//! about).

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::TextMapPropagator,
    trace::{SpanContext, TraceContextExt},
};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The header without which there is no remote context (`tracestate` alone is ignored).
const TRACEPARENT: &str = "traceparent";

/// The remote context in gRPC metadata; an empty context when there is none or it is invalid.
pub fn from_metadata(headers: &http::HeaderMap) -> Context {
    // Most calls carry no trace: skip the propagator (it builds a context from the current
    // one and looks both headers up) when it could only find nothing.
    if !headers.contains_key(TRACEPARENT) {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The remote context in a map of HTTP headers (names in lower case).
pub fn from_http_headers(headers: &HashMap<String, String>) -> Context {
    if !headers.contains_key(TRACEPARENT) {
        return Context::new();
    }
    TraceContextPropagator::new().extract(headers)
}

/// The remote span of `cx`, if it carries a valid one.
pub fn remote_span(cx: &Context) -> Option<SpanContext> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn metadata(traceparent: Option<&str>) -> Context {
        let mut headers = http::HeaderMap::new();
        if let Some(tp) = traceparent {
            headers.insert("traceparent", tp.parse().unwrap());
            headers.insert("tracestate", "casola=1".parse().unwrap());
        }
        from_metadata(&headers)
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
    fn traceparent_is_read_from_a_plain_header_map() {
        let headers: HashMap<String, String> =
            [("traceparent".to_owned(), CALLER.to_owned())].into();
        let cx = remote_span(&from_http_headers(&headers)).expect("valid");
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn a_malformed_traceparent_is_no_context() {
        assert_eq!(remote_span(&metadata(Some("00-zz-yy-01"))), None);
        assert_eq!(remote_span(&metadata(None)), None);
    }
}
