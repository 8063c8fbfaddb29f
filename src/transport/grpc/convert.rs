//! Domain types to `casola.auth.v1` messages.

use chrono::{DateTime, Utc};

use crate::{
    authorize::explain::Explanation,
    error::Error,
    event::{EventKind, TokenEvent},
    principal::Principal,
    proto,
    scope::{Catalog, ScopeMatch},
    store::TokenRecord,
    token::{display_prefix, status::TokenStatus},
};

/// A protobuf timestamp.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).expect("below 2e9"),
    }
}

/// A stored token as the API shows it (never a secret), status as of `now`, flagged
/// `expires_soon` when it is active and expires within `soon` of `now`.
pub fn token_to_proto(
    record: &TokenRecord,
    now: DateTime<Utc>,
    soon: chrono::Duration,
) -> proto::Token {
    let status = match record.status_at(now) {
        TokenStatus::Active => proto::TokenStatus::Active,
        TokenStatus::Expired => proto::TokenStatus::Expired,
        TokenStatus::Revoked => proto::TokenStatus::Revoked,
    };
    proto::Token {
        id: record.id.to_string(),
        prefix: display_prefix(record.lookup_id.as_str()),
        name: record.name.clone(),
        description: record.description.clone(),
        scopes: record.scopes.clone(),
        org_id: record.owner.org_id.to_string(),
        user_id: record.owner.user_id.to_string(),
        created_at: Some(timestamp(record.created_at)),
        created_by: record.created_by.clone(),
        expires_at: record.expires_at.map(timestamp),
        last_used_at: record.last_used_at.map(timestamp),
        revoked_at: record.revoked_at.map(timestamp),
        status: status.into(),
        replaced_by: record
            .replaced_by
            .map(|id| id.to_string())
            .unwrap_or_default(),
        revocation_reason: record
            .revocation_reason
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        expires_soon: record.expires_soon(now, soon),
        allowed_networks: record.restrictions.networks_as_text(),
        allowed_models: record.restrictions.models_as_text(),
    }
}

/// An audit event as the API shows it.
pub fn event_to_proto(e: &TokenEvent) -> proto::TokenEvent {
    let kind = match e.event.kind {
        EventKind::Created => proto::TokenEventKind::Created,
        EventKind::Updated => proto::TokenEventKind::Updated,
        EventKind::Rotated => proto::TokenEventKind::Rotated,
        EventKind::Revoked => proto::TokenEventKind::Revoked,
        EventKind::FirstUsed => proto::TokenEventKind::FirstUsed,
        EventKind::Expired => proto::TokenEventKind::Expired,
        EventKind::Exposed => proto::TokenEventKind::Exposed,
        EventKind::Offboarded => proto::TokenEventKind::Offboarded,
    };
    proto::TokenEvent {
        id: e.id,
        token_id: e.event.token_id.to_string(),
        org_id: e.event.owner.org_id.to_string(),
        user_id: e.event.owner.user_id.to_string(),
        kind: kind.into(),
        at: Some(timestamp(e.event.at)),
        actor: e.event.actor.to_string(),
        request_id: e
            .event
            .request_id
            .as_ref()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        source_addr: e
            .event
            .source_addr
            .map(|a| a.to_string())
            .unwrap_or_default(),
        detail: match &e.event.detail {
            serde_json::Value::Object(fields) => Some(json_object(fields)),
            _ => None,
        },
    }
}

fn json_object(fields: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect(),
    }
}

/// A JSON value as `google.protobuf.Value`.
fn json_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(fields) => Kind::StructValue(json_object(fields)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The match mode of an AuthorizeRequest (unset: ALL).
pub fn scope_match_from_proto(raw: i32) -> Result<ScopeMatch, Error> {
    match proto::ScopeMatch::try_from(raw) {
        Ok(proto::ScopeMatch::Unspecified | proto::ScopeMatch::All) => Ok(ScopeMatch::All),
        Ok(proto::ScopeMatch::Any) => Ok(ScopeMatch::Any),
        Err(_) => Err(Error::invalid(
            "match",
            format!("unknown scope match {raw}"),
        )),
    }
}

/// A principal as the API shows it.
pub fn principal_to_proto(p: &Principal) -> proto::Principal {
    proto::Principal {
        token_id: p.token_id.to_string(),
        org_id: p.owner.org_id.to_string(),
        user_id: p.owner.user_id.to_string(),
        scopes: p.scopes.to_vec(),
        expires_at: p.expires_at.map(timestamp),
        allowed_networks: p.restrictions().networks_as_text(),
        allowed_models: p.restrictions().models_as_text(),
    }
}

/// A scope match mode as the API shows it.
pub fn scope_match_to_proto(mode: ScopeMatch) -> proto::ScopeMatch {
    match mode {
        ScopeMatch::All => proto::ScopeMatch::All,
        ScopeMatch::Any => proto::ScopeMatch::Any,
    }
}

/// An explanation as the API shows it.
pub fn explanation_to_proto(e: Explanation) -> proto::Explanation {
    proto::Explanation {
        decision_id: e.decision_id,
        outcome: e.outcome,
        reason: e.reason,
        requirement_source: e.requirement_source,
        required_scopes: e.required_scopes,
        r#match: scope_match_to_proto(e.mode).into(),
        granted_scopes: e.granted_scopes,
        grants: e
            .grants
            .into_iter()
            .map(|g| proto::ScopeGrant {
                scope: g.scope,
                implied_by: g.implied_by,
            })
            .collect(),
        missing_scopes: e.missing_scopes,
        failed_restriction: e.failed_restriction.unwrap_or_default().to_owned(),
        allowed_networks: e.allowed_networks,
        allowed_models: e.allowed_models,
        client_ip: e.client_ip.unwrap_or_default(),
        model: e.model.unwrap_or_default(),
    }
}

/// The catalog as ListScopes shows it.
pub fn catalog_to_proto(catalog: &Catalog) -> proto::ListScopesResponse {
    proto::ListScopesResponse {
        categories: catalog
            .categories()
            .iter()
            .map(|c| proto::ScopeCategory {
                name: c.name.clone(),
                description: c.description.clone(),
                scopes: c
                    .scopes
                    .iter()
                    .map(|s| proto::Scope {
                        name: s.name.clone(),
                        description: s.description.clone(),
                        implies: s.implies.clone(),
                    })
                    .collect(),
            })
            .collect(),
        presets: catalog
            .presets()
            .iter()
            .map(|p| proto::ScopePreset {
                id: p.id.clone(),
                label: p.label.clone(),
                description: p.description.clone(),
                scopes: p.scopes.clone(),
            })
            .collect(),
    }
}
