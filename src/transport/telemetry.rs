//! The gRPC server's telemetry layer, around every service: per call a span joined to the
//! caller's W3C trace, the request counter and latency histogram, and one log line. Also the
//! rule that picks the parent of an Envoy Check span ([`check_span`]), which only the Check
//! handler can apply: the checked request's headers are inside the request message.
//!
//! A call ends when its response body ends (for unary calls: the trailers with
//! `grpc-status`), or when the body is dropped unfinished (the client went away:
//! CANCELLED); that is when the status is known and everything is recorded.
//!
//! Labels stay bounded: the `rpc` label is a method of the served descriptor sets or
//! `unknown`, whatever path a client sends.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, LazyLock, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::{
    Context,
    trace::{SpanContext, Status as SpanStatus, TraceContextExt},
};
use prost::Message;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};
use tracing::{Instrument, Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::{
    call::{self, Call, DecisionKind, Note},
    context,
    metrics::{self as names, REQUEST_DURATION_SECONDS, REQUESTS_TOTAL},
};

/// The Envoy Check method: its span's parent comes from the checked request's headers,
/// which only the handler sees ([`check_span`]).
pub const CHECK_METHOD: &str = "envoy.service.auth.v3.Authorization/Check";

/// Services that get metrics and log lines but no span: probes and reflection would fill
/// a tracing backend with one-span traces every few seconds.
const UNTRACED_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Calls whose log line is at INFO when they succeed: writes, which are rare and worth an
/// audit trail. Every other success (Authorize and Check allows at thousands a second,
/// reads, probes) is at DEBUG.
const LOGGED_WRITES: [&str; 3] = [
    "casola.auth.v1.TokenService/CreateToken",
    "casola.auth.v1.TokenService/UpdateToken",
    "casola.auth.v1.TokenService/RevokeToken",
];

/// The `rpc` label of a path outside the served descriptor sets.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The log target of the per-call line, to filter it apart (`RUST_LOG=info,casola_auth::request=warn`).
pub const REQUEST_LOG_TARGET: &str = "casola_auth::request";

#[derive(Debug)]
struct Method {
    /// `package.Service/Method`: span name and `rpc` label. Shared strings: every call
    /// clones them into labels and attributes.
    rpc: Arc<str>,
    service: Arc<str>,
    method: Arc<str>,
    traced: bool,
    parent_from_handler: bool,
    info_on_success: bool,
    /// The method's request counter per gRPC code (indexed by the code's number) and its
    /// latency histogram, resolved on first use and kept: `counter!` with labels builds
    /// and hashes its key and looks it up in the registry on every call, which was a
    /// measurable share of a no-op call (docs/benchmarks.md). Resolved lazily, so a code a
    /// method never answers never appears in `/metrics`, as before.
    requests: [OnceLock<metrics::Counter>; CODES],
    duration: OnceLock<metrics::Histogram>,
}

/// gRPC status codes (0 to 16).
const CODES: usize = 17;

impl Method {
    fn new(service: &str, method: &str) -> Self {
        let rpc = format!("{service}/{method}");
        Self {
            traced: !UNTRACED_SERVICES.contains(&service),
            parent_from_handler: rpc == CHECK_METHOD,
            info_on_success: LOGGED_WRITES.contains(&rpc.as_str()),
            rpc: rpc.into(),
            service: service.into(),
            method: method.into(),
            requests: Default::default(),
            duration: OnceLock::new(),
        }
    }

    fn unknown() -> Self {
        Self {
            rpc: UNKNOWN_METHOD.into(),
            service: UNKNOWN_METHOD.into(),
            method: UNKNOWN_METHOD.into(),
            traced: false,
            parent_from_handler: false,
            info_on_success: false,
            requests: Default::default(),
            duration: OnceLock::new(),
        }
    }

    /// Counts a finished call and its latency.
    fn record(&self, code: Code, elapsed: std::time::Duration) {
        let counter = || metrics::counter!(REQUESTS_TOTAL, "rpc" => self.rpc.clone(), "code" => code_name(code));
        let histogram = || metrics::histogram!(REQUEST_DURATION_SECONDS, "rpc" => self.rpc.clone());
        // Before the recorder is installed a handle would be a no-op forever: keep none.
        if names::installed() {
            let slot = &self.requests[(code as usize).min(CODES - 1)];
            slot.get_or_init(counter).increment(1);
            self.duration
                .get_or_init(histogram)
                .record(elapsed.as_secs_f64());
        } else {
            counter().increment(1);
            histogram().record(elapsed.as_secs_f64());
        }
    }
}

/// Adds telemetry to every call of a tonic server (`Server::builder().layer(..)`).
#[derive(Clone, Debug)]
pub struct GrpcTelemetryLayer {
    /// By request path (`/package.Service/Method`).
    methods: Arc<HashMap<String, Arc<Method>>>,
    unknown: Arc<Method>,
}

impl GrpcTelemetryLayer {
    /// A layer that knows the methods of these encoded `FileDescriptorSet`s (those the
    /// server serves).
    pub fn new(descriptor_sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut methods = HashMap::new();
        for encoded in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*encoded)?;
            for file in &set.file {
                for service in &file.service {
                    let name = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        let m = Method::new(&name, method.name());
                        methods.insert(format!("/{}", m.rpc), Arc::new(m));
                    }
                }
            }
        }
        Ok(Self {
            methods: Arc::new(methods),
            unknown: Arc::new(Method::unknown()),
        })
    }

    /// The `rpc` label values, sorted.
    pub fn methods(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.methods.values().map(|m| &*m.rpc).collect();
        names.sort_unstable();
        names
    }
}

impl<S> Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service with telemetry.
#[derive(Clone, Debug)]
pub struct GrpcTelemetry<S> {
    inner: S,
    layer: GrpcTelemetryLayer,
}

impl<S, B> Service<http::Request<B>> for GrpcTelemetry<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let start = Instant::now();
        let method = self
            .layer
            .methods
            .get(req.uri().path())
            .unwrap_or(&self.layer.unknown)
            .clone();
        let remote = context::from_metadata(req.headers());
        let span = if method.traced {
            tracing::info_span!(
                parent: None,
                "grpc",
                otel.name = &*method.rpc,
                otel.kind = "server",
            )
        } else {
            Span::none()
        };
        span.set_attribute("rpc.system", "grpc");
        span.set_attribute("rpc.service", method.service.clone());
        span.set_attribute("rpc.method", method.method.clone());
        // Check's parent is picked by its handler, from the checked request's headers; it
        // must not be entered (started) before that.
        let entered = if method.parent_from_handler {
            Span::none()
        } else {
            if context::remote_span(&remote).is_some() {
                let _ = span.set_parent(remote.clone());
            }
            span.clone()
        };
        let call = Call::new(span, remote);
        // The ready service is the one to call; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = inner.call(req).instrument(entered);
        Box::pin(async move {
            // Recorded when dropped: at the end of the body, or here if the call fails or
            // the client goes away before the response.
            let mut finish = Finish {
                start,
                method,
                call: call.clone(),
                code: None,
            };
            let response = match call.run(future).await {
                Ok(response) => response,
                Err(e) => {
                    finish.code = Some(Code::Unknown);
                    return Err(e);
                }
            };
            let (parts, body) = response.into_parts();
            finish.code = grpc_status(&parts.headers);
            let body = ObservedBody {
                inner: body,
                finish: Some(finish),
            };
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// The `grpc-status` of a header or trailer map.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from)
}

/// The canonical name of a gRPC code, as the `code` label and in logs.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Codes that are the server's fault (OpenTelemetry's rule for gRPC server spans, plus
/// RESOURCE_EXHAUSTED: our overload answer).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    )
}

/// The level of a call's log line. Trouble of ours is WARN (the cause was logged where it
/// happened); a refusal (a denial, a client error) INFO, since someone may be locked out
/// or probing; a success DEBUG, except token writes (INFO), so that allows at high rates
/// cost nothing unless asked for.
fn log_level(code: Code, note: &Note, info_on_success: bool) -> Level {
    // Overload's answers come in floods: one WARN line a second sums them up
    // (`OverloadLog`), and the metrics count each.
    if matches!(code, Code::ResourceExhausted | Code::DeadlineExceeded) {
        return Level::DEBUG;
    }
    if is_server_error(code) && code != Code::Unimplemented {
        return Level::WARN;
    }
    if code != Code::Ok {
        return Level::INFO;
    }
    match note.verdict.map(|v| v.decision) {
        Some(DecisionKind::Error) => Level::WARN,
        Some(DecisionKind::Deny) => Level::INFO,
        _ if info_on_success => Level::INFO,
        _ => Level::DEBUG,
    }
}

/// The calls answered RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED (shed by admission or a
/// fairness limit, a full argon2 queue, past a deadline), logged as one WARN line a second
/// at most while they last; each call's own line is DEBUG (`log_level`). At WARN, a flood
/// would write a line for every refusal, tens of thousands a second, and spend on logging
/// the CPU the replica lacks. The metrics count every call. One for the process: the gRPC
/// port and the console share it.
static OVERLOAD_LOG: LazyLock<OverloadLog> = LazyLock::new(OverloadLog::default);

#[derive(Debug)]
struct OverloadLog {
    resource_exhausted: AtomicU64,
    deadline_exceeded: AtomicU64,
    /// When the last line was written (microseconds since `epoch`, plus one period).
    written: AtomicU64,
    epoch: Instant,
}

impl Default for OverloadLog {
    fn default() -> Self {
        Self {
            resource_exhausted: AtomicU64::new(0),
            deadline_exceeded: AtomicU64::new(0),
            written: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl OverloadLog {
    /// Lines at most this often.
    const EVERY: Duration = Duration::from_secs(1);

    /// Counts a finished call, if its code is one of overload's.
    fn note(&self, code: Code) {
        let count = match code {
            Code::ResourceExhausted => &self.resource_exhausted,
            Code::DeadlineExceeded => &self.deadline_exceeded,
            _ => return,
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.write();
    }

    /// Writes the counts since the last line, if that was [`OverloadLog::EVERY`] ago (the
    /// first call of a burst writes at once; calls after the last line of a burst are
    /// carried by the next one). Answers whether it wrote.
    fn write(&self) -> bool {
        let every = u64::try_from(Self::EVERY.as_micros()).unwrap_or(u64::MAX);
        // Offset by one period, so that the first line is written at once.
        let now = u64::try_from(self.epoch.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .saturating_add(every);
        let written = self.written.load(Ordering::Relaxed);
        if now.saturating_sub(written) < every
            || self
                .written
                .compare_exchange(written, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        let resource_exhausted = self.resource_exhausted.swap(0, Ordering::Relaxed);
        let deadline_exceeded = self.deadline_exceeded.swap(0, Ordering::Relaxed);
        tracing::warn!(
            resource_exhausted,
            deadline_exceeded,
            "overloaded: calls answered RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED since the \
             last such line (each call's own line is DEBUG)"
        );
        true
    }
}

/// Records a call when dropped.
struct Finish {
    start: Instant,
    method: Arc<Method>,
    call: Arc<Call>,
    /// The status, once seen (in the response headers or trailers).
    code: Option<Code>,
}

macro_rules! request_event {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            Level::ERROR => tracing::error!(target: REQUEST_LOG_TARGET, parent: None, $($rest)+),
            Level::WARN => tracing::warn!(target: REQUEST_LOG_TARGET, parent: None, $($rest)+),
            Level::INFO => tracing::info!(target: REQUEST_LOG_TARGET, parent: None, $($rest)+),
            Level::DEBUG => tracing::debug!(target: REQUEST_LOG_TARGET, parent: None, $($rest)+),
            Level::TRACE => tracing::trace!(target: REQUEST_LOG_TARGET, parent: None, $($rest)+),
        }
    };
}

impl Drop for Finish {
    fn drop(&mut self) {
        // No status seen and the body is gone: the client cancelled or the connection broke.
        let code = self.code.unwrap_or(Code::Cancelled);
        let elapsed = self.start.elapsed();
        let rpc = &*self.method.rpc;
        let code_label = code_name(code);
        self.method.record(code, elapsed);
        OVERLOAD_LOG.note(code);

        let note = self.call.note();
        let span = &self.call.span;
        span.set_attribute("rpc.grpc.status_code", i64::from(code as i32));
        if let Some(verdict) = note.verdict {
            span.set_attribute("decision", verdict.decision.as_str());
            if verdict.decision != DecisionKind::Allow {
                span.set_attribute("deny.reason", verdict.reason);
            }
        }
        if let Some(id) = note.token_id {
            span.set_attribute("token.id", id.to_string());
        }
        if let Some(id) = note.decision_id {
            span.set_attribute("decision.id", id.to_string());
        }
        if is_server_error(code) {
            span.set_status(SpanStatus::error(code_label));
        } else if note
            .verdict
            .is_some_and(|v| v.decision == DecisionKind::Error)
        {
            span.set_status(SpanStatus::error("no decision"));
        }
        let (trace_id, span_id) = ids(&self.call);

        let verdict = note.verdict;
        request_event!(
            log_level(code, &note, self.method.info_on_success),
            rpc,
            code = code_label,
            latency_ms = elapsed.as_micros() as f64 / 1000.0,
            decision = verdict.map(|v| v.decision.as_str()),
            reason = verdict
                .filter(|v| v.decision != DecisionKind::Allow)
                .map(|v| v.reason),
            token.id = note.token_id.map(tracing::field::display),
            decision_id = note.decision_id.map(tracing::field::display),
            trace_id = trace_id.map(tracing::field::display),
            span_id = span_id.map(tracing::field::display),
            "request"
        );
    }
}

/// The trace and span id of a call, for log correlation: ours when tracing is on, else the
/// caller's trace id as it came in.
fn ids(call: &Call) -> (Option<String>, Option<String>) {
    let cx = call.span.context();
    let span = cx.span();
    let ours = span.span_context();
    if ours.is_valid() {
        return (
            Some(ours.trace_id().to_string()),
            Some(ours.span_id().to_string()),
        );
    }
    let remote = context::remote_span(&call.remote);
    (remote.map(|r| r.trace_id().to_string()), None)
}

/// The span of the current Check call, its parent chosen by [`check_parent`] from the
/// checked request's `headers` and the call's gRPC metadata. The layer leaves a Check span
/// unentered until this picks its parent; the caller runs the decision in it.
pub fn check_span(headers: Option<&HashMap<String, String>>) -> Span {
    call::with_current(|call| {
        let http = headers.map(context::from_http_headers).unwrap_or_default();
        let choice = check_parent(&call.remote, &http);
        if let Some(parent) = choice.parent {
            // Fails only when tracing is off (no OpenTelemetry layer): nothing to join.
            let _ = call
                .span
                .set_parent(Context::new().with_remote_span_context(parent));
        }
        if let Some(link) = choice.link {
            call.span.add_link(link);
        }
        call.span.clone()
    })
    .unwrap_or_else(Span::current)
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
    match (context::remote_span(grpc), context::remote_span(http)) {
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

/// A response body that completes its call's telemetry when it ends (or is dropped).
struct ObservedBody {
    inner: Body,
    finish: Option<Finish>,
}

impl ObservedBody {
    /// Ends the call's telemetry with `code`, or the status seen in the headers.
    fn complete(&mut self, code: Option<Code>) {
        if let Some(mut finish) = self.finish.take() {
            finish.code = code.or(finish.code);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers);
                    self.complete(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.complete(Some(code));
            }
            Poll::Ready(None) => self.complete(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{call::Verdict, metrics::reasons};

    #[test]
    fn only_served_methods_become_labels() {
        let layer = GrpcTelemetryLayer::new(&[
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            crate::proto::ENVOY_EXT_AUTHZ_FILE_DESCRIPTOR_SET,
        ])
        .unwrap();
        let methods = layer.methods();
        assert!(methods.contains(&"casola.auth.v1.AuthorizationService/Authorize"));
        assert!(methods.contains(&CHECK_METHOD));
        assert!(methods.contains(&"grpc.health.v1.Health/Check"));
        assert!(
            !layer
                .methods
                .contains_key("/casola.auth.v1.TokenService/Nope")
        );
        assert!(layer.methods[&format!("/{CHECK_METHOD}")].parent_from_handler);
        assert!(!layer.methods["/grpc.health.v1.Health/Check"].traced);
        assert!(layer.methods["/casola.auth.v1.TokenService/RevokeToken"].info_on_success);
    }

    #[test]
    fn overload_is_logged_once_a_second_with_the_counts_since_the_last_line() {
        let log = OverloadLog::default();
        // The first refusal of a burst is written at once.
        assert!(log.write());
        // The rest of the second is counted, not written.
        for _ in 0..1000 {
            log.resource_exhausted.fetch_add(1, Ordering::Relaxed);
            assert!(!log.write());
        }
        log.note(Code::DeadlineExceeded);
        log.note(Code::Ok);
        assert_eq!(log.resource_exhausted.load(Ordering::Relaxed), 1000);
        assert_eq!(log.deadline_exceeded.load(Ordering::Relaxed), 1);
        // A second later the next one writes them, and starts counting again.
        std::thread::sleep(OverloadLog::EVERY);
        assert!(log.write());
        assert_eq!(log.resource_exhausted.load(Ordering::Relaxed), 0);
        assert_eq!(log.deadline_exceeded.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn log_levels_follow_outcome() {
        let none = Note::default();
        let allow = Note {
            verdict: Some(Verdict::allow(uuid::Uuid::nil())),
            token_id: None,
            decision_id: None,
        };
        let deny = Note {
            verdict: Some(Verdict::deny("revoked")),
            token_id: None,
            decision_id: None,
        };
        let error = Note {
            verdict: Some(Verdict::error(reasons::UNAVAILABLE)),
            token_id: None,
            decision_id: None,
        };
        assert_eq!(log_level(Code::Ok, &allow, false), Level::DEBUG);
        assert_eq!(log_level(Code::Ok, &none, false), Level::DEBUG);
        assert_eq!(log_level(Code::Ok, &allow, true), Level::INFO);
        assert_eq!(log_level(Code::Ok, &deny, false), Level::INFO);
        // Check answers OK with a 503 inside when it cannot decide.
        assert_eq!(log_level(Code::Ok, &error, false), Level::WARN);
        assert_eq!(log_level(Code::Unauthenticated, &deny, false), Level::INFO);
        assert_eq!(log_level(Code::Unimplemented, &none, false), Level::INFO);
        assert_eq!(log_level(Code::Unavailable, &none, false), Level::WARN);
        // Overload's floods: summed up by admission, one line a second.
        assert_eq!(
            log_level(Code::ResourceExhausted, &none, false),
            Level::DEBUG
        );
        assert_eq!(
            log_level(Code::DeadlineExceeded, &none, false),
            Level::DEBUG
        );
    }

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(code_name(Code::from(0)), "OK");
        assert_eq!(code_name(Code::from(14)), "UNAVAILABLE");
        assert_eq!(code_name(Code::from(16)), "UNAUTHENTICATED");
    }

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const ENVOY_SAME_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01";
    const ENVOY_OTHER_TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b9c7c989f97918e1-01";

    fn metadata(traceparent: Option<&str>) -> Context {
        let mut headers = http::HeaderMap::new();
        if let Some(tp) = traceparent {
            headers.insert("traceparent", tp.parse().unwrap());
        }
        context::from_metadata(&headers)
    }

    fn http_headers(traceparent: Option<&str>) -> Context {
        let headers: HashMap<String, String> = traceparent
            .map(|tp| ("traceparent".to_owned(), tp.to_owned()))
            .into_iter()
            .collect();
        context::from_http_headers(&headers)
    }

    fn span_id(cx: Option<SpanContext>) -> Option<String> {
        cx.map(|c| c.span_id().to_string())
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
