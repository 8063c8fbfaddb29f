//! Admission control around every gRPC call: a bound on the calls in flight across all
//! connections, and a deadline on each.
//!
//! - Past `limits.max_in_flight` a call is answered RESOURCE_EXHAUSTED at once, never queued:
//!   a queued call would be answered after its caller gave up (the gateway's ext_authz
//!   timeout), and memory would grow with the backlog. Health checks are never shed, so a
//!   saturated replica still tells Kubernetes it is alive.
//! - Every call runs under the earlier of the caller's `grpc-timeout` and, for Authorize and
//!   Check (the calls a gateway waits on), `limits.decision_deadline_ms`. When it passes the
//!   work is dropped (a cold lookup waiting for the argon2 pool leaves the queue) and the call
//!   answers DEADLINE_EXCEEDED: no answer arrives as OK after its deadline.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tower::{Layer, Service};

use super::{connections, grpc::status};
use crate::telemetry::metrics::{
    CALL_WAIT_SECONDS, LIMITED_TOTAL, RUNTIME_QUEUE_DELAY_SECONDS, call_wait, limits,
};

/// Calls whose deadline is capped by the decision ceiling.
const DECISION_METHODS: [&str; 2] = [
    "/casola.auth.v1.AuthorizationService/Authorize",
    "/envoy.service.auth.v3.Authorization/Check",
];

/// Calls never shed (probes must answer on a saturated replica).
const NEVER_SHED_PREFIX: &str = "/grpc.health.v1.Health/";

/// Admission settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Most calls in flight at once.
    pub max_in_flight: usize,
    /// Ceiling on the deadline of Authorize and Check.
    pub decision_deadline: Duration,
}

/// The admission layer; cheap to clone, one permit pool for every connection.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    decision_deadline: Duration,
    lag: Arc<QueueLag>,
}

impl AdmissionLayer {
    /// A layer with these settings.
    pub fn new(settings: Admission) -> Self {
        Self::with_lag(settings, QueueLag::start())
    }

    fn with_lag(settings: Admission, lag: Arc<QueueLag>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            decision_deadline: settings.decision_deadline,
            lag,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitted {
            inner,
            layer: self.clone(),
            copied: None,
        }
    }
}

/// A service behind admission control.
#[derive(Debug)]
pub struct Admitted<S> {
    inner: S,
    layer: AdmissionLayer,
    /// For a copy not yet called: since when its request has waited, and whether that
    /// includes the connection's read. hyper-util's `TowerToHyperService` copies the
    /// service for each request on the connection's task, as the request's headers are
    /// decoded, and calls the copy once the stream's own task runs.
    copied: Option<Arrival>,
}

/// Since when a call's request has waited in this process.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    since: tokio::time::Instant,
    /// The connection's task's wait for it (its bytes arrived, the task ran).
    connection_waited: Duration,
    /// `since` is when its bytes arrived (the connection's read measured, see
    /// [`connections::read_since`]), not only when it was decoded.
    read: bool,
}

impl Arrival {
    /// Taken on the connection's task, as the request is decoded.
    fn now() -> Self {
        match connections::read_since() {
            Some(at) => Self {
                since: tokio::time::Instant::from_std(at),
                connection_waited: at.elapsed(),
                read: true,
            },
            None => Self {
                since: tokio::time::Instant::now(),
                connection_waited: Duration::ZERO,
                read: false,
            },
        }
    }
}

impl<S: Clone> Clone for Admitted<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
            copied: Some(Arrival::now()),
        }
    }
}

/// The `grpc-timeout` of a request: up to eight digits and a unit (gRPC over HTTP/2 spec).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, B> Service<http::Request<B>> for Admitted<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let ceiling = DECISION_METHODS
            .contains(&path)
            .then_some(self.layer.decision_deadline);
        let deadline = match (grpc_timeout(req.headers()), ceiling) {
            (Some(asked), Some(ceiling)) => Some(asked.min(ceiling)),
            (asked, ceiling) => asked.or(ceiling),
        };
        // A unary call crosses the runtime's queue four times: its connection's task reads
        // the request, the stream's task calls this (two waits behind it), sends the
        // headers and runs again for the message, and the connection's task writes them
        // (two ahead). The waits behind are measured for the call where hyper's copy of
        // this service saw them arrive (`Arrival`), estimated from the queue's current
        // wait (the canary) where not. The ones ahead are estimated: the canary's wait for
        // the message, and for the write the longer of that and the wait the connection's
        // task had to read this request (a connection starved then is starved now).
        // (Health checks are answered whatever the queue: they keep their own clock.)
        let never_shed = path.starts_with(NEVER_SHED_PREFIX);
        let now = tokio::time::Instant::now();
        let (waited, behind, write) = if never_shed {
            (Duration::ZERO, Duration::ZERO, Duration::ZERO)
        } else {
            let waited = self.layer.lag.current();
            let copied = self.copied.take();
            let (behind, seen) = match copied {
                Some(Arrival {
                    since, read: true, ..
                }) => (now.saturating_duration_since(since), call_wait::READ),
                Some(Arrival {
                    since, read: false, ..
                }) => (
                    waited + now.saturating_duration_since(since),
                    call_wait::DECODED,
                ),
                None => (waited * 2, call_wait::ESTIMATED),
            };
            metrics::histogram!(CALL_WAIT_SECONDS, "seen" => seen).record(behind.as_secs_f64());
            let write = copied.map_or(waited, |a| a.connection_waited.max(waited));
            (waited, behind, write)
        };
        let permit = if never_shed {
            None
        } else {
            // A call whose waits, so far and ahead, take its whole deadline would be
            // answered late. Shed it now, cheaply, rather than do work nobody reads.
            if let Some(d) = deadline
                && behind + waited + write > d
            {
                metrics::counter!(LIMITED_TOTAL, "limit" => limits::QUEUE_DELAY).increment(1);
                return Box::pin(async move { Ok(status::queued_too_long(behind).into_http()) });
            }
            match self.layer.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics::counter!(LIMITED_TOTAL, "limit" => limits::IN_FLIGHT).increment(1);
                    return Box::pin(async { Ok(status::overloaded().into_http()) });
                }
            }
        };
        let called = now.checked_sub(behind).unwrap_or(now);
        let expires = deadline.map(|d| (d, called + d));
        let lag = Ahead {
            lag: self.layer.lag.clone(),
            connection: write,
        };
        // The ready service is the one to call; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // The deadline goes with the call, so the cold path can refuse work that would
        // finish after it (the argon2 pool) instead of starting it.
        let future = crate::deadline::within(expires.map(|(_, at)| at), inner.call(req));
        Box::pin(async move {
            let Some((deadline, at)) = expires else {
                let answer = future.await?;
                return Ok(answer.map(|body| Body::new(Guarded::new(body, permit, None, lag))));
            };
            match tokio::time::timeout_at(at, future).await {
                // `timeout_at` polls the call before its timer: an answer that became
                // ready only after the deadline (a starved task, a long poll) would
                // still be sent. The caller has given up on it: never a late OK.
                Ok(Ok(answer)) if tokio::time::Instant::now() <= at => Ok(answer
                    .map(|body| Body::new(Guarded::new(body, permit, Some((deadline, at)), lag)))),
                Ok(Err(e)) => Err(e),
                _ => Ok(status::deadline_exceeded(deadline).into_http()),
            }
        })
    }
}

/// How long a task waits in the runtime's queue right now, measured by a canary: a thread
/// that hands the runtime a tiny task every [`QueueLag::EVERY`] (or as soon as the last one
/// ran, if later) and notes how long it took to run (a task handed in from outside the
/// runtime joins the same global queue the overflowing stream tasks do). The figure is the
/// least of the last [`QueueLag::WINDOW`] canaries' waits, so one stall of the process
/// (a CPU quota's throttling, a page fault) is not taken for a queue, as in CoDel. A canary
/// that has not run for [`QueueLag::STALL`] or more counts with its age, so a runtime that
/// stopped running tasks reads as such, not as the last good figure (shorter waits are left
/// to the window: a busy test machine stalls a process for tens of milliseconds).
#[derive(Debug)]
pub struct QueueLag {
    /// The least wait of the last [`QueueLag::WINDOW`] canaries, in microseconds.
    latest: AtomicU64,
    /// The last canaries' waits (written by the canaries, one at a time).
    recent: std::sync::Mutex<[u64; Self::WINDOW]>,
    /// Canaries run so far.
    runs: AtomicU64,
    /// The send time of the canary not run yet (microseconds since `epoch`; 0: none).
    pending: AtomicU64,
    epoch: std::time::Instant,
}

impl QueueLag {
    /// How often a canary is sent.
    pub const EVERY: Duration = Duration::from_millis(5);
    /// Canaries whose least wait is the figure.
    pub const WINDOW: usize = 4;
    /// A canary still waiting this long counts with its age.
    pub const STALL: Duration = Duration::from_millis(100);

    /// A measure of the current runtime's queue, with its canary thread (which ends when the
    /// measure is dropped). Outside a runtime the measure stays at zero.
    pub fn start() -> Arc<Self> {
        let lag = Self::unsampled();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&lag);
            let spawned = std::thread::Builder::new()
                .name("queue-lag".into())
                .spawn(move || Self::run(&weak, &runtime));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no queue-lag canary: calls are not shed on queue delay");
            }
        }
        lag
    }

    /// A measure no canary feeds: zero until [`QueueLag::note`] says otherwise.
    fn unsampled() -> Arc<Self> {
        Arc::new(Self {
            latest: AtomicU64::new(0),
            recent: std::sync::Mutex::new([0; Self::WINDOW]),
            runs: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        })
    }

    fn run(weak: &std::sync::Weak<Self>, runtime: &tokio::runtime::Handle) {
        loop {
            std::thread::sleep(Self::EVERY);
            let Some(lag) = weak.upgrade() else { return };
            if lag.pending.load(Ordering::Acquire) != 0 {
                continue; // the last one has not run yet; `current` reads its age
            }
            let sent = lag.micros();
            lag.pending.store(sent.max(1), Ordering::Release);
            let canary = Arc::downgrade(&lag);
            drop(lag);
            runtime.spawn(async move {
                if let Some(lag) = canary.upgrade() {
                    lag.note(lag.micros().saturating_sub(sent));
                }
            });
        }
    }

    /// Records one canary's wait.
    fn note(&self, waited: u64) {
        let run = self.runs.fetch_add(1, Ordering::AcqRel);
        let least = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent[(run % Self::WINDOW as u64) as usize] = waited;
            recent.iter().copied().min().unwrap_or(waited)
        };
        self.latest.store(least, Ordering::Release);
        self.pending.store(0, Ordering::Release);
        metrics::gauge!(RUNTIME_QUEUE_DELAY_SECONDS).set(least as f64 / 1e6);
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The queue's wait now: the window's figure, or the age of a canary still waiting if
    /// that is past [`QueueLag::STALL`] and more.
    pub fn current(&self) -> Duration {
        let latest = Duration::from_micros(self.latest.load(Ordering::Acquire));
        let pending = match self.pending.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            sent => Duration::from_micros(self.micros().saturating_sub(sent)),
        };
        if pending >= Self::STALL {
            latest.max(pending)
        } else {
            latest
        }
    }
}

/// How long the connection's task will take to write a message handed to it now: the
/// queue's wait, or the wait it had to read the call's request, whichever is longer.
struct Ahead {
    lag: Arc<QueueLag>,
    connection: Duration,
}

impl Ahead {
    fn wait(&self) -> Duration {
        self.lag.current().max(self.connection)
    }
}

/// A response body that holds the call's admission permit until it ends, and whose message
/// is replaced by DEADLINE_EXCEEDED trailers when it is first polled too late to reach the
/// wire by the deadline (after it, less the queue's current wait: the connection's task
/// still has to run to write it).
///
/// A unary gRPC answer leaves in two steps: the headers when the call's future is ready,
/// then the message and the trailers when the stream's task runs again (after HTTP/2 has
/// granted it room to send), which under load is another trip through the runtime's queue.
/// The permit covers both (a bound on calls in flight that freed its slot at the headers let
/// thousands of answers wait unseen), and so does the deadline: an OK whose message would be
/// sent after it is never sent.
struct Guarded {
    inner: Body,
    _permit: Option<OwnedSemaphorePermit>,
    deadline: Option<(Duration, tokio::time::Instant)>,
    /// The connection's write, still ahead of a message sent now.
    lag: Ahead,
    /// A data frame has been passed on (from then on the answer stands).
    sent: bool,
    /// The body ended here (the deadline's trailers were sent).
    ended: bool,
}

impl Guarded {
    fn new(
        inner: Body,
        permit: Option<OwnedSemaphorePermit>,
        deadline: Option<(Duration, tokio::time::Instant)>,
        lag: Ahead,
    ) -> Self {
        Self {
            inner,
            _permit: permit,
            deadline,
            lag,
            sent: false,
            ended: false,
        }
    }

    /// The deadline, when a message passed on now would reach the wire after it (the
    /// connection's task has one more wait in the queue ahead of it).
    fn late(&self) -> Option<Duration> {
        let (deadline, at) = self.deadline?;
        (!self.sent && tokio::time::Instant::now() + self.lag.wait() > at).then_some(deadline)
    }

    fn end_late(&mut self, deadline: Duration) -> Frame<Bytes> {
        self.ended = true;
        // The answer is dropped unsent; its slot is free as of now.
        self._permit = None;
        let mut trailers = http::HeaderMap::new();
        // Only a status whose message cannot be encoded fails here; this one always can.
        let _ = status::deadline_exceeded(deadline).add_header(&mut trailers);
        Frame::trailers(trailers)
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(deadline) = self.late() {
            return Poll::Ready(Some(Ok(self.end_late(deadline))));
        }
        let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && frame.is_data()
        {
            // Ready only now, after the deadline: the same rule.
            if let Some(deadline) = self.late() {
                return Poll::Ready(Some(Ok(self.end_late(deadline))));
            }
            self.sent = true;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.ended || self.deadline.is_some() && !self.sent {
            // The message may yet be swapped for trailers.
            http_body::SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::Code;
    use tower::{ServiceExt, service_fn, util::BoxCloneService};

    use super::*;

    /// The services under test: requests without a body, answers from `answer`.
    type TestService = BoxCloneService<http::Request<()>, http::Response<Body>, Infallible>;

    /// A service that answers OK after `delay`.
    fn slow(delay: Duration) -> TestService {
        BoxCloneService::new(service_fn(move |_req: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok(http::Response::new(Body::empty()))
        }))
    }

    fn code(response: &http::Response<Body>) -> Option<Code> {
        let value = response.headers().get("grpc-status")?.to_str().ok()?;
        Some(Code::from(value.parse::<i32>().ok()?))
    }

    fn request(path: &str, timeout: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(t) = timeout {
            builder = builder.header("grpc-timeout", t);
        }
        builder.body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_grpc_timeout_and_the_decision_ceiling_both_bound_a_call() {
        let layer = AdmissionLayer::new(Admission {
            max_in_flight: 8,
            decision_deadline: Duration::from_millis(150),
        });
        let service = layer.layer(slow(Duration::from_secs(1)));
        let call = |path, timeout| service.clone().oneshot(request(path, timeout));
        // The caller's deadline, on any method.
        let answer = call("/casola.auth.v1.TokenService/ListTokens", Some("20m"))
            .await
            .unwrap();
        assert_eq!(code(&answer), Some(Code::DeadlineExceeded));
        // The ceiling on a decision, even when the caller allows more.
        let answer = call("/casola.auth.v1.AuthorizationService/Authorize", Some("5S"))
            .await
            .unwrap();
        assert_eq!(code(&answer), Some(Code::DeadlineExceeded));
        // No deadline at all: the slow answer arrives.
        let answer = call("/casola.auth.v1.TokenService/ListTokens", None)
            .await
            .unwrap();
        assert_eq!(code(&answer), None, "the inner service's own answer");
    }

    #[tokio::test(start_paused = true)]
    async fn the_service_sees_the_calls_deadline() {
        let layer = AdmissionLayer::with_lag(
            Admission {
                max_in_flight: 8,
                decision_deadline: Duration::from_millis(150),
            },
            QueueLag::unsampled(),
        );
        // The service answers with the time left to the deadline it sees, in ms.
        let service = layer.layer(BoxCloneService::new(service_fn(
            |_req: http::Request<()>| async {
                let left = crate::deadline::current()
                    .map(|at| (at - tokio::time::Instant::now()).as_millis().to_string());
                let mut answer = http::Response::new(Body::empty());
                if let Some(left) = left {
                    answer.headers_mut().insert("left", left.parse().unwrap());
                }
                Ok::<_, Infallible>(answer)
            },
        )));
        let left = |path, timeout| {
            let service = service.clone();
            async move {
                let answer = service.oneshot(request(path, timeout)).await.unwrap();
                answer
                    .headers()
                    .get("left")
                    .map(|v| v.to_str().unwrap().to_owned())
            }
        };
        let authorize = "/casola.auth.v1.AuthorizationService/Authorize";
        assert_eq!(left(authorize, Some("200m")).await.as_deref(), Some("150"));
        assert_eq!(left(authorize, Some("40m")).await.as_deref(), Some("40"));
        let list = "/casola.auth.v1.TokenService/ListTokens";
        assert_eq!(left(list, Some("2S")).await.as_deref(), Some("2000"));
        assert_eq!(left(list, None).await, None, "no deadline, none seen");
    }

    #[tokio::test]
    async fn an_answer_ready_only_after_the_deadline_is_deadline_exceeded_not_a_late_ok() {
        let layer = AdmissionLayer::new(Admission {
            max_in_flight: 8,
            decision_deadline: Duration::from_millis(150),
        });
        // A call whose work blocks its thread past the caller's deadline and is then ready
        // at its first poll (as a warm answer is when its task is polled late): the timer
        // never got a chance to fire first.
        let blocking = service_fn(|_req: http::Request<()>| async {
            std::thread::sleep(Duration::from_millis(30));
            Ok::<_, Infallible>(http::Response::new(Body::empty()))
        });
        let answer = layer
            .layer(blocking)
            .oneshot(request(
                "/casola.auth.v1.AuthorizationService/Authorize",
                Some("5m"),
            ))
            .await
            .unwrap();
        assert_eq!(code(&answer), Some(Code::DeadlineExceeded));
    }

    /// A body whose message is ready only after `delay` of blocking work (as a message is
    /// when its task runs again late), then trailers OK.
    struct LateMessage {
        delay: Duration,
        step: u8,
    }

    impl http_body::Body for LateMessage {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.step += 1;
            Poll::Ready(match self.step {
                1 => {
                    std::thread::sleep(self.delay);
                    Some(Ok(Frame::data(Bytes::from_static(b"answer"))))
                }
                2 => {
                    let mut ok = http::HeaderMap::new();
                    ok.insert("grpc-status", http::HeaderValue::from_static("0"));
                    Some(Ok(Frame::trailers(ok)))
                }
                _ => None,
            })
        }
    }

    /// A service whose answer's headers are ready at once and its message after `delay`.
    fn late_message(delay: Duration) -> TestService {
        BoxCloneService::new(service_fn(move |_req: http::Request<()>| async move {
            Ok(http::Response::new(Body::new(LateMessage {
                delay,
                step: 0,
            })))
        }))
    }

    /// The frames of a body: data bytes and the trailers' grpc-status.
    async fn frames(body: Body) -> (Vec<Bytes>, Option<String>) {
        use http_body::Body as _;
        let mut body = std::pin::pin!(body);
        let (mut data, mut status) = (Vec::new(), None);
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = frame.unwrap();
            if let Some(trailers) = frame.trailers_ref() {
                status = trailers
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap().to_owned());
            } else if let Ok(bytes) = frame.into_data() {
                data.push(bytes);
            }
        }
        (data, status)
    }

    #[tokio::test]
    async fn a_message_ready_only_after_the_deadline_is_replaced_by_deadline_exceeded() {
        let layer = AdmissionLayer::new(Admission {
            max_in_flight: 8,
            decision_deadline: Duration::from_millis(150),
        });
        let decide = "/casola.auth.v1.AuthorizationService/Authorize";
        // Headers at once, the message 30 ms later: past a 5 ms deadline.
        let answer = layer
            .layer(late_message(Duration::from_millis(30)))
            .oneshot(request(decide, Some("5m")))
            .await
            .unwrap();
        assert_eq!(code(&answer), None, "the headers left in time");
        let (data, status) = frames(answer.into_body()).await;
        assert!(data.is_empty(), "the late message is not sent: {data:?}");
        assert_eq!(
            status.as_deref(),
            Some("4"),
            "DEADLINE_EXCEEDED in the trailers"
        );
        // In time, the same body passes unchanged.
        let answer = layer
            .layer(late_message(Duration::ZERO))
            .oneshot(request(decide, Some("5S")))
            .await
            .unwrap();
        let (data, status) = frames(answer.into_body()).await;
        assert_eq!(data, [Bytes::from_static(b"answer")]);
        assert_eq!(status.as_deref(), Some("0"));
    }

    #[tokio::test]
    async fn every_trip_through_the_queue_counts_against_the_deadline() {
        // The queue's wait reads 40 ms (as under a flood): a call has two such waits behind
        // it when it is seen and two ahead (its answer's message, the connection's write).
        let lag = QueueLag::unsampled();
        for _ in 0..QueueLag::WINDOW {
            lag.note(40_000);
        }
        let layer = AdmissionLayer::with_lag(
            Admission {
                max_in_flight: 8,
                decision_deadline: Duration::from_secs(10),
            },
            lag,
        );
        let decide = "/casola.auth.v1.AuthorizationService/Authorize";
        // Four waits (160 ms) are past a 150 ms deadline: shed at once, no work done.
        let answer = layer
            .layer(late_message(Duration::ZERO))
            .oneshot(request(decide, Some("150m")))
            .await
            .unwrap();
        assert_eq!(code(&answer), Some(Code::ResourceExhausted));
        // Within 200 ms they fit; the deadline started two waits (80 ms) before the call,
        // so 120 ms are left. A message ready after 90 ms would be written after another
        // wait, at 130 ms: replaced, though the clock alone (90 < 120) would have sent it.
        let answer = layer
            .layer(late_message(Duration::from_millis(90)))
            .oneshot(request(decide, Some("200m")))
            .await
            .unwrap();
        assert_eq!(code(&answer), None, "admitted");
        let (data, status) = frames(answer.into_body()).await;
        assert!(data.is_empty(), "a message that would land late: {data:?}");
        assert_eq!(status.as_deref(), Some("4"));
        // Ready at once, the same call's answer lands at 40 ms: sent.
        let answer = layer
            .layer(late_message(Duration::ZERO))
            .oneshot(request(decide, Some("200m")))
            .await
            .unwrap();
        let (data, status) = frames(answer.into_body()).await;
        assert_eq!(data, [Bytes::from_static(b"answer")]);
        assert_eq!(status.as_deref(), Some("0"));
    }

    #[tokio::test]
    async fn a_calls_own_wait_before_it_is_called_counts_against_its_deadline() {
        // The queue's canary reads no wait: only the call's own wait counts. (Real time:
        // the waits are blocking, as a starved task's are; every margin is 50 ms or more.)
        let layer = AdmissionLayer::with_lag(
            Admission {
                max_in_flight: 8,
                decision_deadline: Duration::from_secs(10),
            },
            QueueLag::unsampled(),
        );
        let decide = "/casola.auth.v1.AuthorizationService/Authorize";
        // hyper copies the service as it decodes a request and calls the copy when the
        // stream's task runs: here 250 ms later, past the call's 200 ms. Shed, no work done.
        let copy = layer.layer(late_message(Duration::ZERO)).clone();
        std::thread::sleep(Duration::from_millis(250));
        let answer = copy.oneshot(request(decide, Some("200m"))).await.unwrap();
        assert_eq!(code(&answer), Some(Code::ResourceExhausted));
        // 100 ms later: admitted, with at most 100 ms left. A message ready 150 ms on would
        // land late: replaced, though the call's own clock (150 < 200 ms) would send it.
        let copy = layer
            .layer(late_message(Duration::from_millis(150)))
            .clone();
        std::thread::sleep(Duration::from_millis(100));
        let answer = copy.oneshot(request(decide, Some("200m"))).await.unwrap();
        assert_eq!(code(&answer), None, "admitted");
        let (data, status) = frames(answer.into_body()).await;
        assert!(data.is_empty(), "a message that would land late: {data:?}");
        assert_eq!(status.as_deref(), Some("4"));
        // 20 ms, then a message 20 ms on: well in time, sent.
        let copy = layer.layer(late_message(Duration::from_millis(20))).clone();
        std::thread::sleep(Duration::from_millis(20));
        let answer = copy.oneshot(request(decide, Some("200m"))).await.unwrap();
        let (data, status) = frames(answer.into_body()).await;
        assert_eq!(data, [Bytes::from_static(b"answer")]);
        assert_eq!(status.as_deref(), Some("0"));
    }

    #[tokio::test]
    async fn a_call_holds_its_slot_until_its_answer_is_sent() {
        let layer = AdmissionLayer::new(Admission {
            max_in_flight: 1,
            decision_deadline: Duration::from_millis(150),
        });
        let service = layer.layer(late_message(Duration::ZERO));
        let path = "/casola.auth.v1.TokenService/ListTokens";
        let first = service.clone().oneshot(request(path, None)).await.unwrap();
        assert_eq!(code(&first), None, "admitted");
        // Its headers are out, its message is not: the slot is still taken.
        let second = service.clone().oneshot(request(path, None)).await.unwrap();
        assert_eq!(code(&second), Some(Code::ResourceExhausted));
        let (data, _) = frames(first.into_body()).await;
        assert_eq!(data.len(), 1);
        let third = service.clone().oneshot(request(path, None)).await.unwrap();
        assert_eq!(code(&third), None, "admitted once the first answer ended");
    }

    #[test]
    fn a_call_whose_trips_through_the_queue_would_outlast_its_deadline_is_shed() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let layer = AdmissionLayer::new(Admission {
                max_in_flight: 8,
                decision_deadline: Duration::from_millis(150),
            });
            let service = layer.layer(late_message(Duration::ZERO));
            let call = |path, timeout| service.clone().oneshot(request(path, timeout));
            // The runtime's only thread is busy for 200 ms: whatever runs next waited that
            // long, and four such waits are far past the 150 ms decision ceiling.
            std::thread::sleep(Duration::from_millis(200));
            let decide = "/casola.auth.v1.AuthorizationService/Authorize";
            let shed = call(decide, None).await.unwrap();
            assert_eq!(code(&shed), Some(Code::ResourceExhausted));
            let message = shed.headers()["grpc-message"].to_str().unwrap();
            assert!(message.contains("for%20a%20worker"), "{message}");
            // A call without a deadline has none to outlast; health is never shed.
            let listed = call("/casola.auth.v1.TokenService/ListTokens", None).await;
            assert_eq!(code(&listed.unwrap()), None);
            let health = call("/grpc.health.v1.Health/Check", Some("10m")).await;
            assert_eq!(code(&health.unwrap()), None);
            // Once the queue is short again, decisions are admitted.
            let started = std::time::Instant::now();
            loop {
                let answer = call(decide, None).await.unwrap();
                if code(&answer).is_none() {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "still shed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    #[test]
    fn the_queue_lag_is_the_least_of_the_last_canaries_and_a_stalled_runtime_reads_stalled() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let lag = QueueLag::start();
            // The runtime's only thread is busy: the canary waits, and its age is the lag.
            std::thread::sleep(Duration::from_millis(200));
            let stalled = lag.current();
            assert!(stalled >= Duration::from_millis(100), "{stalled:?}");
            // Running again: the next canaries wait next to nothing.
            let started = std::time::Instant::now();
            while lag.current() >= Duration::from_millis(50) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{:?}",
                    lag.current()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        // One slow canary among quick ones is not a queue (the least of the window).
        let lag = QueueLag::start();
        for waited in [100_000, 200, 300, 100] {
            lag.note(waited);
        }
        assert_eq!(lag.current(), Duration::from_micros(100));
        lag.note(150_000);
        assert_eq!(lag.current(), Duration::from_micros(100));
        for _ in 0..QueueLag::WINDOW {
            lag.note(90_000);
        }
        assert_eq!(
            lag.current(),
            Duration::from_millis(90),
            "a standing queue is one"
        );
    }

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_garbage_is_none() {
        assert_eq!(timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("150u"), Some(Duration::from_micros(150)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "12x", "-5m", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
    }
}
