//! The change-log poller: every replica asks its store for "changes after position N" about
//! once a second and hands each to a [`ChangeSink`] (the verified-token cache). The cost is
//! one small indexed query per interval plus one row per change, whatever the number of
//! cached tokens. NOTIFY (the listener) stays the fast path; this is what makes a lost
//! notice (a listener reconnecting, PgBouncer in transaction mode) harmless: it is caught
//! within one interval, and a reconnect needs no cache drop.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{Notify, watch};

use super::{TokenChange, TokenStore};
use crate::telemetry::metrics::{
    CHANGE_LOG_APPLIED_TOTAL, CHANGE_LOG_LAST_POLL_TIMESTAMP_SECONDS, CHANGE_LOG_POLL_ERRORS_TOTAL,
    CHANGE_LOG_POSITION,
};

/// Where polled changes go.
pub trait ChangeSink: Send + Sync + 'static {
    /// A token changed: whatever is held about it must be re-read before it is used again.
    fn changed(&self, change: &TokenChange);
    /// A poll succeeded: every change up to `position` has been handed over.
    fn polled(&self, position: u64);
    /// The poller starts at the newest position without replaying the log: anything held
    /// from before (a replica serves while its first poll is under way) must be re-read.
    fn resync(&self);
}

/// Poller timing.
#[derive(Debug, Clone)]
pub struct PollerOptions {
    /// Time between polls.
    pub interval: Duration,
    /// Most changes read per query (a backlog is read in several).
    pub batch: usize,
}

impl Default for PollerOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            batch: 1000,
        }
    }
}

/// Polls until `stopped` turns true. `nudge` asks for a poll now (the listener reconnected:
/// catch up at once rather than at the next tick).
pub async fn run(
    store: Arc<dyn TokenStore>,
    sink: impl ChangeSink,
    options: PollerOptions,
    nudge: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    // None until the first success: a replica starts with an empty cache, so it begins at
    // the newest change rather than replaying history.
    let mut position: Option<u64> = None;
    let mut failing = false;
    let batch = options.batch.max(1);
    loop {
        match poll_once(store.as_ref(), &sink, position, batch).await {
            Ok(now) => {
                position = Some(now);
                sink.polled(now);
                metrics::gauge!(CHANGE_LOG_POSITION).set(now as f64);
                let unix = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                metrics::gauge!(CHANGE_LOG_LAST_POLL_TIMESTAMP_SECONDS).set(unix.as_secs_f64());
                if failing {
                    tracing::info!(position = now, "change log readable again");
                    failing = false;
                }
            }
            Err(e) => {
                metrics::counter!(CHANGE_LOG_POLL_ERRORS_TOTAL).increment(1);
                // Once per outage, not once per second.
                if !failing {
                    tracing::warn!(error = %e, "change log poll failed; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(options.interval) => {}
            _ = nudge.notified() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// One poll: every change after `from` (in batches), or the newest position when there is
/// no position yet. Returns the position reached.
async fn poll_once(
    store: &dyn TokenStore,
    sink: &impl ChangeSink,
    from: Option<u64>,
    batch: usize,
) -> Result<u64, super::StoreError> {
    let Some(mut position) = from else {
        let latest = store.latest_change().await?;
        sink.resync();
        return Ok(latest);
    };
    loop {
        let changes = store.changes_after(position, batch).await?;
        for change in &changes {
            sink.changed(change);
            position = position.max(change.position);
        }
        metrics::counter!(CHANGE_LOG_APPLIED_TOTAL).increment(changes.len() as u64);
        if changes.len() < batch {
            return Ok(position);
        }
    }
}
