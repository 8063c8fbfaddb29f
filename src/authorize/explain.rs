//! Explanations of decisions (issue 13): required against granted scopes, which implication
//! granted what, what set the requirement, the restriction that refused, and the decision
//! id. Built only when asked for: the hot path never pays for one.

use std::net::IpAddr;

use serde::Serialize;
use uuid::Uuid;

use super::{Decision, Denial};
use crate::{
    principal::Principal,
    scope::{Catalog, ScopeMatch, ScopeSet},
};

/// How a held scope came to be held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopeGrant {
    /// The held scope.
    pub scope: String,
    /// The other held scopes that imply it; empty when only granted directly.
    pub implied_by: Vec<String>,
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The decision id.
    pub decision_id: String,
    /// `allow`, or the denial's stable name.
    pub outcome: String,
    /// A sentence saying why.
    pub reason: String,
    /// What set the requirement (`request`, `context_extension casola.scopes`,
    /// `route_rule GET /openai/v1`, `none`).
    pub requirement_source: String,
    /// Required scopes.
    pub required_scopes: Vec<String>,
    /// How they matched.
    #[serde(rename = "match")]
    pub mode: ScopeMatch,
    /// The token's scopes, expanded; empty when it was not valid.
    pub granted_scopes: Vec<String>,
    /// For every granted scope, what implies it.
    pub grants: Vec<ScopeGrant>,
    /// Required scopes not held.
    pub missing_scopes: Vec<String>,
    /// `network` or `model` when a restriction refused the request.
    pub failed_restriction: Option<&'static str>,
    /// The token's allowed networks (empty: any).
    pub allowed_networks: Vec<String>,
    /// The token's allowed models (empty: any).
    pub allowed_models: Vec<String>,
    /// The client address the decision saw.
    pub client_ip: Option<String>,
    /// The model the decision saw.
    pub model: Option<String>,
}

/// What the gate saw of the request, for an explanation.
#[derive(Debug, Clone, Default)]
pub struct Seen<'a> {
    /// What set the requirement.
    pub requirement_source: String,
    /// The client address.
    pub client_ip: Option<IpAddr>,
    /// The model named, if read.
    pub model: Option<&'a str>,
}

fn reason(decision: &Decision) -> String {
    match decision {
        Decision::Allow(_) => {
            "the token is valid, holds the required scopes and passes its restrictions".into()
        }
        Decision::Deny(denial) => match denial {
            Denial::Malformed => "not a token: wrong prefix, length, alphabet or checksum".into(),
            Denial::Unknown => "no such token, or a wrong secret".into(),
            Denial::Revoked => "the token is revoked".into(),
            Denial::Expired => "the token has expired".into(),
            Denial::InsufficientScope { missing, .. } => {
                format!(
                    "the token lacks the required scopes: {}",
                    missing.join(", ")
                )
            }
            Denial::Network {
                principal,
                client_ip,
            } => match client_ip {
                Some(ip) => format!(
                    "client address {ip} is outside the allowed networks {}",
                    principal.restrictions().networks_as_text().join(", ")
                ),
                None => {
                    "the token has allowed networks and the request has no client address".into()
                }
            },
            Denial::Model { principal, model } => format!(
                "model {model:?} is outside the allowed models {}",
                principal.restrictions().models_as_text().join(", ")
            ),
            Denial::ModelUnreadable { problem, .. } => format!(
                "the token has allowed models and the request's model could not be read ({})",
                problem.as_str()
            ),
        },
    }
}

/// Explains `decision`, taken on `required`/`mode` with what the gate `seen`.
pub fn explain(
    catalog: &Catalog,
    decision: &Decision,
    required: &ScopeSet,
    mode: ScopeMatch,
    seen: &Seen<'_>,
    decision_id: Uuid,
) -> Explanation {
    let principal: Option<&Principal> = match decision {
        Decision::Allow(p) => Some(p),
        Decision::Deny(denial) => denial.principal(),
    };
    let (outcome, missing, failed) = match decision {
        Decision::Allow(_) => ("allow", Vec::new(), None),
        Decision::Deny(denial) => (
            denial.as_str(),
            match denial {
                Denial::InsufficientScope { missing, .. } => missing.clone(),
                _ => Vec::new(),
            },
            denial.restriction().map(|r| r.as_str()),
        ),
    };
    let model = match decision {
        Decision::Deny(Denial::Model { model, .. }) => Some(model.clone()),
        _ => seen.model.map(str::to_owned),
    };
    Explanation {
        decision_id: decision_id.to_string(),
        outcome: outcome.into(),
        reason: reason(decision),
        requirement_source: seen.requirement_source.clone(),
        required_scopes: required.to_vec(),
        mode,
        granted_scopes: principal.map(|p| p.scopes.to_vec()).unwrap_or_default(),
        grants: principal
            .map(|p| {
                p.scopes
                    .iter()
                    .map(|s| ScopeGrant {
                        scope: s.to_owned(),
                        implied_by: catalog.implied_by(s, &p.scopes),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        missing_scopes: missing,
        failed_restriction: failed,
        allowed_networks: principal
            .map(|p| p.restrictions().networks_as_text())
            .unwrap_or_default(),
        allowed_models: principal
            .map(|p| p.restrictions().models_as_text())
            .unwrap_or_default(),
        client_ip: seen.client_ip.map(|ip| ip.to_string()),
        model,
    }
}
