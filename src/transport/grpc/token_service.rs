//! `casola.auth.v1.TokenService`: thin handlers over [`TokenManager`].

use chrono::Utc;
use tonic::{Request, Response, Status};

use super::convert::{catalog_to_proto, token_to_proto};
use crate::{
    error::Error,
    manage::{Caller, CreateRequest, ListRequest, TokenManager, UpdateRequest},
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

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let created = self
            .manager
            .create(
                &caller,
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
            token: Some(token_to_proto(&created.record, Utc::now())),
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
            token: Some(token_to_proto(&record, Utc::now())),
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
            tokens: page.tokens.iter().map(|t| token_to_proto(t, now)).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_token(
        &self,
        request: Request<proto::UpdateTokenRequest>,
    ) -> Result<Response<proto::UpdateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let record = self
            .manager
            .update(
                &caller,
                UpdateRequest {
                    id: r.id,
                    name: r.name,
                    description: r.description,
                    mask: r.update_mask.map(|m| m.paths).unwrap_or_default(),
                },
            )
            .await?;
        Ok(Response::new(proto::UpdateTokenResponse {
            token: Some(token_to_proto(&record, Utc::now())),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let caller = caller(&request)?;
        let record = self.manager.revoke(&caller, &request.get_ref().id).await?;
        Ok(Response::new(proto::RevokeTokenResponse {
            token: Some(token_to_proto(&record, Utc::now())),
        }))
    }

    async fn list_scopes(
        &self,
        _request: Request<proto::ListScopesRequest>,
    ) -> Result<Response<proto::ListScopesResponse>, Status> {
        Ok(Response::new(catalog_to_proto(self.manager.catalog())))
    }
}
