//! A [`TokenStore`] decorator that observes every call: a latency histogram and an error
//! counter per operation, and a child span when the call is part of a traced request.
//!
//! Calls outside any span (the health check's ping, the last-used flush loop) get metrics
//! only: a root trace every few seconds would be noise.

use std::{future::Future, sync::Arc, time::Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opentelemetry::trace::Status as SpanStatus;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::{
    ExpiringQuery, ListQuery, NewToken, OwnedTokens, RevocationReason, RotateOutcome, Rotation,
    RotationRequest, StoreError, TokenChange, TokenPatch, TokenRecord, TokenStore,
};
use crate::{
    event::{EventContext, EventQuery, TokenEvent},
    telemetry::metrics::{STORE_CALL_DURATION_SECONDS, STORE_ERRORS_TOTAL},
    token::{LookupId, hash::SecretHash},
};

/// A store with metrics and spans around every call.
pub struct TimedStore {
    inner: Arc<dyn TokenStore>,
    /// `db.system.name` of the spans: `postgresql`, or `memory`.
    system: &'static str,
}

impl TimedStore {
    /// Observes `inner`; `system` names the backend in spans (`postgresql`, `memory`).
    pub fn new(inner: Arc<dyn TokenStore>, system: &'static str) -> Self {
        Self { inner, system }
    }

    async fn observe<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let span = if Span::current().is_none() {
            Span::none()
        } else {
            tracing::info_span!(
                "store",
                otel.name = format_args!("store {op}").to_string(),
                otel.kind = "client",
                db.system.name = self.system,
                db.operation.name = op,
            )
        };
        let start = Instant::now();
        let result = call.instrument(span.clone()).await;
        metrics::histogram!(STORE_CALL_DURATION_SECONDS, "op" => op)
            .record(start.elapsed().as_secs_f64());
        if let Err(e) = &result {
            let kind = error_kind(e);
            metrics::counter!(STORE_ERRORS_TOTAL, "op" => op, "kind" => kind).increment(1);
            span.set_attribute("error.type", kind);
            span.set_status(SpanStatus::error(kind));
        }
        result
    }
}

/// The `kind` label of a store error.
pub fn error_kind(err: &StoreError) -> &'static str {
    match err {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Conflict(_) => "conflict",
        StoreError::Internal(_) => "internal",
    }
}

#[async_trait]
impl TokenStore for TimedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.observe("ping", self.inner.ping()).await
    }

    async fn insert(&self, token: NewToken, ctx: &EventContext) -> Result<TokenRecord, StoreError> {
        self.observe("insert", self.inner.insert(token, ctx)).await
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<TokenRecord>, StoreError> {
        self.observe("get_many", self.inner.get_many(ids)).await
    }

    async fn get(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        self.observe("get", self.inner.get(id)).await
    }

    async fn find_by_lookup_id(
        &self,
        lookup_id: &LookupId,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.observe("find_by_lookup_id", self.inner.find_by_lookup_id(lookup_id))
            .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<TokenRecord>, StoreError> {
        self.observe("list", self.inner.list(query)).await
    }

    async fn update(
        &self,
        id: Uuid,
        patch: &TokenPatch,
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.observe("update", self.inner.update(id, patch, ctx))
            .await
    }

    async fn revoke(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.observe("revoke", self.inner.revoke(id, at, ctx)).await
    }

    async fn revoke_for(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.observe("revoke", self.inner.revoke_for(id, at, reason, ctx))
            .await
    }

    async fn rotate(
        &self,
        rotation: Rotation,
        ctx: &EventContext,
    ) -> Result<RotateOutcome, StoreError> {
        self.observe("rotate", self.inner.rotate(rotation, ctx))
            .await
    }

    async fn find_rotation(
        &self,
        request: &RotationRequest,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        self.observe("find_rotation", self.inner.find_rotation(request))
            .await
    }

    async fn revoke_owned(
        &self,
        which: &OwnedTokens,
        at: DateTime<Utc>,
        reason: RevocationReason,
        ctx: &EventContext,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.observe(
            "revoke_owned",
            self.inner.revoke_owned(which, at, reason, ctx),
        )
        .await
    }

    async fn replace_hash(&self, id: Uuid, hash: &SecretHash) -> Result<(), StoreError> {
        self.observe("replace_hash", self.inner.replace_hash(id, hash))
            .await
    }

    async fn record_last_used(&self, uses: &[(Uuid, DateTime<Utc>)]) -> Result<u64, StoreError> {
        self.observe("record_last_used", self.inner.record_last_used(uses))
            .await
    }

    async fn record_expiries(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.observe("record_expiries", self.inner.record_expiries(now))
            .await
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Vec<TokenEvent>, StoreError> {
        self.observe("list_events", self.inner.list_events(query))
            .await
    }

    async fn list_expiring(&self, query: &ExpiringQuery) -> Result<Vec<TokenRecord>, StoreError> {
        self.observe("list_expiring", self.inner.list_expiring(query))
            .await
    }

    async fn latest_change(&self) -> Result<u64, StoreError> {
        self.observe("latest_change", self.inner.latest_change())
            .await
    }

    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TokenChange>, StoreError> {
        self.observe("changes_after", self.inner.changes_after(after, limit))
            .await
    }

    fn pool_connections(&self) -> Option<(usize, usize)> {
        self.inner.pool_connections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    struct Down;

    #[async_trait]
    impl TokenStore for Down {
        async fn ping(&self) -> Result<(), StoreError> {
            Err(StoreError::Unavailable("refused".into()))
        }
        async fn insert(&self, _: NewToken, _: &EventContext) -> Result<TokenRecord, StoreError> {
            unreachable!()
        }
        async fn get_many(&self, _: &[Uuid]) -> Result<Vec<TokenRecord>, StoreError> {
            unreachable!()
        }
        async fn record_expiries(&self, _: DateTime<Utc>) -> Result<u64, StoreError> {
            unreachable!()
        }
        async fn list_events(&self, _: &EventQuery) -> Result<Vec<TokenEvent>, StoreError> {
            unreachable!()
        }
        async fn list_expiring(&self, _: &ExpiringQuery) -> Result<Vec<TokenRecord>, StoreError> {
            unreachable!()
        }
        async fn get(&self, _: Uuid) -> Result<Option<TokenRecord>, StoreError> {
            unreachable!()
        }
        async fn find_by_lookup_id(&self, _: &LookupId) -> Result<Option<TokenRecord>, StoreError> {
            unreachable!()
        }
        async fn list(&self, _: &ListQuery) -> Result<Vec<TokenRecord>, StoreError> {
            unreachable!()
        }
        async fn update(
            &self,
            _: Uuid,
            _: &TokenPatch,
            _: &EventContext,
        ) -> Result<Option<TokenRecord>, StoreError> {
            unreachable!()
        }
        async fn revoke_for(
            &self,
            _: Uuid,
            _: DateTime<Utc>,
            _: RevocationReason,
            _: &EventContext,
        ) -> Result<Option<TokenRecord>, StoreError> {
            unreachable!()
        }
        async fn rotate(&self, _: Rotation, _: &EventContext) -> Result<RotateOutcome, StoreError> {
            unreachable!()
        }
        async fn find_rotation(
            &self,
            _: &RotationRequest,
        ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
            unreachable!()
        }
        async fn revoke_owned(
            &self,
            _: &OwnedTokens,
            _: DateTime<Utc>,
            _: RevocationReason,
            _: &EventContext,
        ) -> Result<Vec<TokenRecord>, StoreError> {
            unreachable!()
        }
        async fn replace_hash(&self, _: Uuid, _: &SecretHash) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn record_last_used(&self, _: &[(Uuid, DateTime<Utc>)]) -> Result<u64, StoreError> {
            unreachable!()
        }
        async fn latest_change(&self) -> Result<u64, StoreError> {
            unreachable!()
        }
        async fn changes_after(&self, _: u64, _: usize) -> Result<Vec<TokenChange>, StoreError> {
            unreachable!()
        }
    }

    #[tokio::test]
    async fn calls_and_errors_pass_through_unchanged() {
        let store = TimedStore::new(Arc::new(MemoryStore::new()), "memory");
        assert!(store.ping().await.is_ok());
        assert_eq!(store.get(Uuid::new_v4()).await.unwrap(), None);
        let down = TimedStore::new(Arc::new(Down), "memory");
        assert!(matches!(down.ping().await, Err(StoreError::Unavailable(_))));
        assert_eq!(down.pool_connections(), None);
    }
}
