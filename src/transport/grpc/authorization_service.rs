//! `casola.auth.v1.AuthorizationService`: Authorize and WhoAmI over [`Authorizer`].

use std::net::IpAddr;

use chrono::Utc;
use tonic::{Request, Response, Status};

use super::{
    convert::{explanation_to_proto, principal_to_proto, scope_match_from_proto, token_to_proto},
    status,
};
use crate::{
    authorize::{
        Authenticated, Authorizer, Decision, Denial, StatedFacts,
        explain::{Seen, explain},
        fairness::{Entry as SourceEntry, Source},
    },
    error::Error,
    proto::{self, authorization_service_server::AuthorizationService},
    telemetry::{self, Verdict, metrics::reasons},
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
            ..Default::default()
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
        Decision::Deny(denial @ Denial::Network { .. }) => proto::AuthorizeResponse {
            principal: denial.principal().map(principal_to_proto),
            ..deny(R::Network)
        },
        Decision::Deny(denial @ (Denial::Model { .. } | Denial::ModelUnreadable { .. })) => {
            proto::AuthorizeResponse {
                principal: denial.principal().map(principal_to_proto),
                ..deny(R::Model)
            }
        }
    }
}

/// Authorize's `client_ip`: empty for none, else an IPv4 or IPv6 address.
fn client_ip_from_proto(raw: &str) -> Result<Option<IpAddr>, Error> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| Error::invalid("client_ip", "must be an IPv4 or IPv6 address"))
}

#[tonic::async_trait]
impl AuthorizationService for AuthorizationApi {
    async fn authorize(
        &self,
        request: Request<proto::AuthorizeRequest>,
    ) -> Result<Response<proto::AuthorizeResponse>, Status> {
        let peer = request.remote_addr();
        let r = request.into_inner();
        let decision_id = telemetry::call::new_decision_id();
        let mode = scope_match_from_proto(r.r#match)?;
        let required = self
            .authorizer
            .required_scopes("required_scopes", &r.required_scopes)?;
        let facts = StatedFacts {
            client_ip: client_ip_from_proto(&r.client_ip)?,
            model: Some(r.model.as_str()).filter(|m| !m.is_empty()),
        };
        // Whom the failed-verify limit counts: the client the calling service names (one
        // bad client of a service must not hold back every other), and the service for all
        // its clients together; else the service. None through the console's gRPC-Web,
        // which only a signed-in page calls.
        let source = peer.map(|peer| match facts.client_ip {
            Some(client) => Source::relayed(SourceEntry::Authorize, client, peer.ip()),
            None => Source::new(SourceEntry::Authorize, peer.ip()),
        });
        let decision = self
            .authorizer
            .authorize_from(&r.token, &required, mode, source.as_ref(), &facts)
            .await;
        verdict::record(Entry::Authorize, verdict::of_decision(&decision));
        let decision = decision?;
        let explanation = r.explain.then(|| {
            let seen = Seen {
                requirement_source: if required.is_empty() {
                    "none".into()
                } else {
                    "request".into()
                },
                client_ip: facts.client_ip,
                model: facts.model,
            };
            let catalog = self.authorizer.catalog();
            explanation_to_proto(explain(
                catalog,
                &decision,
                &required,
                mode,
                &seen,
                decision_id,
            ))
        });
        Ok(Response::new(proto::AuthorizeResponse {
            decision_id: decision_id.to_string(),
            explanation,
            ..decision_to_proto(decision)
        }))
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
