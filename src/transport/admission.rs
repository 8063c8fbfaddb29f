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
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};

use super::grpc::status;

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
}

impl AdmissionLayer {
    /// A layer with these settings.
    pub fn new(settings: Admission) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            decision_deadline: settings.decision_deadline,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitted {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind admission control.
#[derive(Debug, Clone)]
pub struct Admitted<S> {
    inner: S,
    layer: AdmissionLayer,
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
        let permit = if path.starts_with(NEVER_SHED_PREFIX) {
            None
        } else {
            match self.layer.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Box::pin(async { Ok(status::overloaded().into_http()) }),
            }
        };
        let ceiling = DECISION_METHODS
            .contains(&path)
            .then_some(self.layer.decision_deadline);
        let deadline = match (grpc_timeout(req.headers()), ceiling) {
            (Some(asked), Some(ceiling)) => Some(asked.min(ceiling)),
            (asked, ceiling) => asked.or(ceiling),
        };
        // The clock starts here, when the call is made, not when its future is first polled.
        let expires = deadline.map(|d| (d, tokio::time::Instant::now() + d));
        // The ready service is the one to call; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = inner.call(req);
        Box::pin(async move {
            let _permit = permit;
            match expires {
                None => future.await,
                Some((deadline, at)) => match tokio::time::timeout_at(at, future).await {
                    // `timeout_at` polls the call before its timer: an answer that became
                    // ready only after the deadline (a starved task, a long poll) would
                    // still be sent. The caller has given up on it: never a late OK.
                    Ok(answer) if tokio::time::Instant::now() <= at => answer,
                    _ => Ok(status::deadline_exceeded(deadline).into_http()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::Code;
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// A service that answers OK after `delay`.
    fn slow(
        delay: Duration,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        service_fn(move |_req: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(http::Response::new(Body::empty()))
        })
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
