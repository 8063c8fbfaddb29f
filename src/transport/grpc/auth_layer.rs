//! TokenService caller authentication as a tower layer: the check needs I/O (a store read
//! and an argon2 verify), so it is not an interceptor. The principal goes into the request
//! extensions; health and reflection are not wrapped and pass untouched. One TokenService
//! call needs no caller token: ReportExposedTokens, where possession of the reported token
//! is the proof (it is rate limited per source address instead).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Status, server::NamedService, transport::server::TcpConnectInfo};
use tower::{Layer, Service};

use super::status;
use crate::{
    authorize::{
        Authorizer,
        fairness::{Entry as SourceEntry, Source},
    },
    telemetry::{Verdict, metrics::reasons},
    transport::verdict::{self, Entry},
};

/// The one TokenService method callable without a caller token.
pub const REPORT_EXPOSED_PATH: &str = "/casola.auth.v1.TokenService/ReportExposedTokens";

/// Wraps a service with caller authentication.
#[derive(Clone)]
pub struct CallerAuthLayer {
    authorizer: Authorizer,
}

impl CallerAuthLayer {
    /// A layer deciding with `authorizer`.
    pub fn new(authorizer: Authorizer) -> Self {
        Self { authorizer }
    }
}

impl<S> Layer<S> for CallerAuthLayer {
    type Service = CallerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerAuth {
            inner,
            authorizer: self.authorizer.clone(),
        }
    }
}

/// A service whose callers must present a valid token.
#[derive(Clone)]
pub struct CallerAuth<S> {
    inner: S,
    authorizer: Authorizer,
}

impl<S: NamedService> NamedService for CallerAuth<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for CallerAuth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The ready service is the one to call; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authorizer = self.authorizer.clone();
        Box::pin(async move {
            if req.uri().path() == REPORT_EXPOSED_PATH {
                // Any `authorization` header is ignored, not checked: the call must answer
                // the same whoever sends it.
                return inner.call(req).await;
            }
            let Some(credential) = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
            else {
                verdict::record(
                    Entry::CallerAuth,
                    Verdict::deny(reasons::MISSING_CREDENTIAL),
                );
                return Ok(status::missing_credentials().into_http());
            };
            // The caller's address, for the failed-verify limit (none through the console's
            // gRPC-Web, which has its own listener).
            let source = req
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map(|peer| Source::new(SourceEntry::TokenService, peer.ip()));
            let authenticated = authorizer
                .authenticate_from(credential, source.as_ref())
                .await;
            verdict::record(
                Entry::CallerAuth,
                verdict::of_authentication(&authenticated),
            );
            match authenticated {
                Ok(Ok(authenticated)) => {
                    req.extensions_mut().insert(authenticated.principal);
                    inner.call(req).await
                }
                Ok(Err(denial)) => {
                    tracing::info!(reason = denial.as_str(), "caller token refused");
                    Ok(status::caller_refused().into_http())
                }
                Err(e) => Ok(Status::from(e).into_http()),
            }
        })
    }
}
