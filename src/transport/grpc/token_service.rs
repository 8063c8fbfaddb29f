//! `casola.auth.v1.TokenService`: thin handlers over [`TokenManager`].

use chrono::Utc;
use tonic::{Request, Response, Status};

use super::convert::{catalog_to_proto, event_to_proto, token_to_proto};
use crate::{
    error::Error,
    event::{Origin, RequestId},
    manage::{
        Caller, CreateRequest, EventsRequest, ExpiringRequest, ListRequest, TokenManager,
        UpdateRequest,
    },
    principal::Principal,
    proto::{self, token_service_server::TokenService},
};

/// The TokenService implementation; runs behind [`super::CallerAuthLayer`].
#[derive(Clone)]
pub struct TokenApi {
    manager: TokenManager,
}

impl TokenApi {
    /// Handlers over `manager`.
    pub fn new(manager: TokenManager) -> Self {
        Self { manager }
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

    async fn list_scopes(
        &self,
        _request: Request<proto::ListScopesRequest>,
    ) -> Result<Response<proto::ListScopesResponse>, Status> {
        Ok(Response::new(catalog_to_proto(self.manager.catalog())))
    }
}
