//! `casola.auth.v1.TokenService`: thin handlers over [`TokenManager`].

use std::{
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::Arc,
};

use chrono::Utc;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::{Request, Response, Status};

use super::{
    convert::{catalog_to_proto, event_to_proto, token_to_proto},
    status,
};
use crate::{
    config::ReportsConfig,
    error::Error,
    event::{Origin, RequestId},
    manage::{
        Caller, CreateRequest, EventsRequest, ExpiringRequest, ListRequest, RotateRequest,
        TokenManager, UpdateRequest,
    },
    principal::Principal,
    proto::{self, token_service_server::TokenService},
};

/// Source addresses tracked by the report limiter before idle ones are forgotten.
const REPORT_SOURCES_KEPT: usize = 10_000;

/// The TokenService implementation; runs behind [`super::CallerAuthLayer`], which lets
/// ReportExposedTokens through without a caller token.
#[derive(Clone)]
pub struct TokenApi {
    manager: TokenManager,
    /// ReportExposedTokens calls per source address.
    reports: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Peers whose `x-forwarded-for` names the source.
    trusted_proxies: Arc<[IpAddr]>,
}

impl TokenApi {
    /// Handlers over `manager`, reports limited per `reports`.
    pub fn new(manager: TokenManager, reports: ReportsConfig) -> Self {
        let per_minute = NonZeroU32::new(reports.per_source_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(reports.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            manager,
            reports: Arc::new(RateLimiter::keyed(
                Quota::per_minute(per_minute).allow_burst(burst),
            )),
            trusted_proxies: reports.trusted_proxies.into(),
        }
    }

    /// The source a report is counted against: the peer address, or, for a call through a
    /// trusted proxy, the last `x-forwarded-for` address (the one the proxy appended; any
    /// before it came from the client and prove nothing). Without a peer address (an
    /// in-process transport) all such calls share one source.
    fn source<T>(&self, request: &Request<T>) -> IpAddr {
        let peer = request
            .remote_addr()
            .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |a| a.ip().to_canonical());
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        request
            .metadata()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse::<IpAddr>().ok())
            .map_or(peer, |ip| ip.to_canonical())
    }

    /// Spends one report of `source`'s quota; false when it is spent.
    fn report_allowed(&self, source: IpAddr) -> bool {
        if self.reports.len() > REPORT_SOURCES_KEPT {
            // Forget sources whose quota has refilled: the map stays bounded under a
            // spray of addresses, and a forgotten source has lost nothing.
            self.reports.retain_recent();
        }
        self.reports.check_key(&source).is_ok()
    }
}

fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .map(Caller::Token)
        // Only reachable if the service were mounted without its auth layer.
        .ok_or_else(|| Error::Unauthenticated("missing credentials").into())
}

/// Where a request came from, for the audit trail: `x-request-id` (else the trace id: ours
/// when tracing is on, else the caller's `traceparent`), and the peer address.
fn origin<T>(req: &Request<T>) -> Origin {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let request_id = req
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
        .or_else(|| {
            let cx = tracing::Span::current().context();
            let ours = cx.span().span_context().clone();
            let trace = if ours.is_valid() {
                Some(ours)
            } else {
                let headers = req.metadata().clone().into_headers();
                crate::telemetry::context::remote_span(&crate::telemetry::context::from_metadata(
                    &headers,
                ))
            };
            trace.and_then(|sc| RequestId::parse(&sc.trace_id().to_string()))
        });
    Origin {
        request_id,
        source_addr: req.remote_addr().map(|a| a.ip().to_canonical()),
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let origin = origin(&request);
        let r = request.into_inner();
        let created = self
            .manager
            .create(
                &caller,
                &origin,
                CreateRequest {
                    name: r.name,
                    description: r.description,
                    preset: r.preset,
                    scopes: r.scopes,
                    expires_in_days: r.expires_in_days,
                    org_id: r.org_id,
                    user_id: r.user_id,
                    allowed_networks: r.allowed_networks,
                    allowed_models: r.allowed_models,
                },
            )
            .await?;
        Ok(Response::new(proto::CreateTokenResponse {
            token: Some(token_to_proto(
                &created.record,
                Utc::now(),
                self.manager.expires_soon_window(),
            )),
            secret: created.token.expose().to_owned(),
        }))
    }

    async fn get_token(
        &self,
        request: Request<proto::GetTokenRequest>,
    ) -> Result<Response<proto::GetTokenResponse>, Status> {
        let caller = caller(&request)?;
        let record = self.manager.get(&caller, &request.get_ref().id).await?;
        Ok(Response::new(proto::GetTokenResponse {
            token: Some(token_to_proto(
                &record,
                Utc::now(),
                self.manager.expires_soon_window(),
            )),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let page = self
            .manager
            .list(
                &caller,
                ListRequest {
                    page_size: r.page_size,
                    page_token: r.page_token,
                    user_id: r.user_id,
                    include_revoked: r.include_revoked,
                    org_id: r.org_id,
                },
            )
            .await?;
        let now = Utc::now();
        Ok(Response::new(proto::ListTokensResponse {
            tokens: page
                .tokens
                .iter()
                .map(|t| token_to_proto(t, now, self.manager.expires_soon_window()))
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_token(
        &self,
        request: Request<proto::UpdateTokenRequest>,
    ) -> Result<Response<proto::UpdateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let origin = origin(&request);
        let r = request.into_inner();
        let record = self
            .manager
            .update(
                &caller,
                &origin,
                UpdateRequest {
                    id: r.id,
                    name: r.name,
                    description: r.description,
                    mask: r.update_mask.map(|m| m.paths).unwrap_or_default(),
                },
            )
            .await?;
        Ok(Response::new(proto::UpdateTokenResponse {
            token: Some(token_to_proto(
                &record,
                Utc::now(),
                self.manager.expires_soon_window(),
            )),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let caller = caller(&request)?;
        let record = self
            .manager
            .revoke(&caller, &origin(&request), &request.get_ref().id)
            .await?;
        Ok(Response::new(proto::RevokeTokenResponse {
            token: Some(token_to_proto(
                &record,
                Utc::now(),
                self.manager.expires_soon_window(),
            )),
        }))
    }

    async fn list_token_events(
        &self,
        request: Request<proto::ListTokenEventsRequest>,
    ) -> Result<Response<proto::ListTokenEventsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let page = self
            .manager
            .events(
                &caller,
                EventsRequest {
                    token_id: r.token_id,
                    org_id: r.org_id,
                    page_size: r.page_size,
                    page_token: r.page_token,
                },
            )
            .await?;
        Ok(Response::new(proto::ListTokenEventsResponse {
            events: page.events.iter().map(event_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn list_expiring_tokens(
        &self,
        request: Request<proto::ListExpiringTokensRequest>,
    ) -> Result<Response<proto::ListExpiringTokensResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let page = self
            .manager
            .expiring(
                &caller,
                ExpiringRequest {
                    within_days: r.within_days,
                    page_size: r.page_size,
                    page_token: r.page_token,
                    org_id: r.org_id,
                },
            )
            .await?;
        let (now, soon) = (Utc::now(), self.manager.expires_soon_window());
        Ok(Response::new(proto::ListExpiringTokensResponse {
            tokens: page
                .tokens
                .iter()
                .map(|t| token_to_proto(t, now, soon))
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn rotate_token(
        &self,
        request: Request<proto::RotateTokenRequest>,
    ) -> Result<Response<proto::RotateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let origin = origin(&request);
        let r = request.into_inner();
        let rotated = self
            .manager
            .rotate(
                &caller,
                &origin,
                RotateRequest {
                    id: r.id,
                    overlap_seconds: r.overlap_seconds.into(),
                    request_id: r.request_id,
                },
            )
            .await?;
        let (now, soon) = (Utc::now(), self.manager.expires_soon_window());
        Ok(Response::new(proto::RotateTokenResponse {
            token: Some(token_to_proto(&rotated.new, now, soon)),
            secret_shown: rotated.token.is_some(),
            secret: rotated
                .token
                .map(|t| t.expose().to_owned())
                .unwrap_or_default(),
            old_token: Some(token_to_proto(&rotated.old, now, soon)),
        }))
    }

    async fn revoke_tokens(
        &self,
        request: Request<proto::RevokeTokensRequest>,
    ) -> Result<Response<proto::RevokeTokensResponse>, Status> {
        let caller = caller(&request)?;
        let origin = origin(&request);
        let r = request.get_ref();
        let revoked = self
            .manager
            .revoke_all(&caller, &origin, &r.org_id, &r.user_id)
            .await?;
        Ok(Response::new(proto::RevokeTokensResponse {
            revoked_count: u32::try_from(revoked.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn report_exposed_tokens(
        &self,
        request: Request<proto::ReportExposedTokensRequest>,
    ) -> Result<Response<proto::ReportExposedTokensResponse>, Status> {
        // No caller token here (the auth layer lets this call through): the limit is per
        // source address.
        let source = self.source(&request);
        if !self.report_allowed(source) {
            tracing::info!(source = %source, "exposure report refused: rate limit");
            return Err(status::reports_rate_limited());
        }
        let origin = origin(&request);
        let r = request.into_inner();
        let received = self
            .manager
            .report_exposed(&origin, r.tokens, &r.source_url)?;
        Ok(Response::new(proto::ReportExposedTokensResponse {
            received: u32::try_from(received).unwrap_or(u32::MAX),
        }))
    }

    async fn list_scopes(
        &self,
        _request: Request<proto::ListScopesRequest>,
    ) -> Result<Response<proto::ListScopesResponse>, Status> {
        Ok(Response::new(catalog_to_proto(self.manager.catalog())))
    }
}
