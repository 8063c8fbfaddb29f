//! last_used_at written behind: uses are noted in memory and flushed in one batched
//! statement per interval and at shutdown, so a token used 10,000 times a second costs one
//! row update per interval.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    store::{StoreError, TokenStore, truncate_micros},
    telemetry::metrics::{
        LAST_USED_FLUSH_ERRORS_TOTAL, LAST_USED_FLUSH_SIZE, LAST_USED_FLUSHES_TOTAL,
    },
};

/// Pending last-used times. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct LastUsed {
    pending: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>>,
}

impl LastUsed {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a use; only the newest time per token is kept.
    pub fn note(&self, id: Uuid, at: DateTime<Utc>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let slot = pending.entry(id).or_insert(at);
        if at > *slot {
            *slot = at;
        }
    }

    /// Writes everything pending in one store call. On failure the batch is put back
    /// (newer notes win) so nothing is lost before the next try.
    pub async fn flush(&self, store: &dyn TokenStore) -> Result<usize, StoreError> {
        let batch: Vec<(Uuid, DateTime<Utc>)> = {
            // Taken, not drained: a burst of first uses (a fill, a new replica) must not
            // leave its map's capacity behind for the life of the process.
            let pending =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
            pending
                .into_iter()
                .map(|(id, at)| (id, truncate_micros(at)))
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        match store.record_last_used(&batch).await {
            Ok(_) => {
                metrics::counter!(LAST_USED_FLUSHES_TOTAL).increment(1);
                metrics::histogram!(LAST_USED_FLUSH_SIZE).record(batch.len() as f64);
                Ok(batch.len())
            }
            Err(e) => {
                metrics::counter!(LAST_USED_FLUSH_ERRORS_TOTAL).increment(1);
                for (id, at) in batch {
                    self.note(id, at);
                }
                Err(e)
            }
        }
    }
}
