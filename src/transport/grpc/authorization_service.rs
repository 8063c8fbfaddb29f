//! `casola.auth.v1.AuthorizationService`: Authorize and WhoAmI over [`Authorizer`].

use chrono::Utc;
use tonic::{Request, Response, Status};

use super::{
    convert::{principal_to_proto, scope_match_from_proto, token_to_proto},
    status,
};
use crate::{
    authorize::{
        Authenticated, Authorizer, Decision, Denial,
        fairness::{Entry as SourceEntry, Source},
    },
    proto::{self, authorization_service_server::AuthorizationService},
    telemetry::{Verdict, metrics::reasons},
    transport::verdict::{self, Entry},
};

/// The AuthorizationService implementation.
#[derive(Clone)]
pub struct AuthorizationApi {
    authorizer: Authorizer,
    expires_soon: chrono::Duration,
}

impl AuthorizationApi {
    /// Handlers over `authorizer`.
    pub fn new(authorizer: Authorizer) -> Self {
        Self {
            authorizer,
            expires_soon: crate::config::ExpiryConfig::default().soon(),
        }
    }

    /// The same handlers with another `expires_soon` window (`expiry.soon_days`).
    pub fn with_expires_soon(mut self, window: chrono::Duration) -> Self {
        self.expires_soon = window;
        self
    }
}

/// The wire form of a decision.
pub(crate) fn decision_to_proto(decision: Decision) -> proto::AuthorizeResponse {
    use proto::{Decision as D, DenyReason as R};
    let deny = |reason: R| proto::AuthorizeResponse {
        decision: D::Deny.into(),
        deny_reason: reason.into(),
        ..Default::default()
    };
    match decision {
        Decision::Allow(principal) => proto::AuthorizeResponse {
            decision: D::Allow.into(),
            deny_reason: R::Unspecified.into(),
            principal: Some(principal_to_proto(&principal)),
            missing_scopes: Vec::new(),
        },
        Decision::Deny(Denial::Malformed) => deny(R::Malformed),
        Decision::Deny(Denial::Unknown) => deny(R::Unknown),
        Decision::Deny(Denial::Revoked) => deny(R::Revoked),
        Decision::Deny(Denial::Expired) => deny(R::Expired),
        Decision::Deny(Denial::InsufficientScope { principal, missing }) => {
            proto::AuthorizeResponse {
                principal: Some(principal_to_proto(&principal)),
                missing_scopes: missing,
                ..deny(R::InsufficientScope)
            }
        }
    }
}

#[tonic::async_trait]
impl AuthorizationService for AuthorizationApi {
    async fn authorize(
        &self,
        request: Request<proto::AuthorizeRequest>,
    ) -> Result<Response<proto::AuthorizeResponse>, Status> {
        // The calling service, for the failed-verify limit (none through the console's
        // gRPC-Web, which only a signed-in page calls).
        let source = request
            .remote_addr()
            .map(|peer| Source::new(SourceEntry::Authorize, peer.ip()));
        let r = request.into_inner();
        let mode = scope_match_from_proto(r.r#match)?;
        let required = self
            .authorizer
            .required_scopes("required_scopes", &r.required_scopes)?;
        let decision = self
            .authorizer
            .authorize_from(&r.token, &required, mode, source.as_ref())
            .await;
        verdict::record(Entry::Authorize, verdict::of_decision(&decision));
        Ok(Response::new(decision_to_proto(decision?)))
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let Some(credential) = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        else {
            verdict::record(Entry::WhoAmI, Verdict::deny(reasons::MISSING_CREDENTIAL));
            return Err(status::missing_credentials());
        };
        let authenticated = self.authorizer.authenticate(credential).await;
        verdict::record(Entry::WhoAmI, verdict::of_authentication(&authenticated));
        match authenticated? {
            Ok(Authenticated { principal, .. }) => {
                // The cache keeps only what decisions need; the full row is read here.
                let Some(record) = self.authorizer.record(principal.token_id).await? else {
                    // Deleted between the decision and this read.
                    return Err(status::token_not_accepted(&Denial::Unknown));
                };
                Ok(Response::new(proto::WhoAmIResponse {
                    principal: Some(principal_to_proto(&principal)),
                    token: Some(token_to_proto(&record, Utc::now(), self.expires_soon)),
                }))
            }
            Err(denial) => {
                tracing::info!(reason = denial.as_str(), "who-am-I token refused");
                Err(status::token_not_accepted(&denial))
            }
        }
    }
}
