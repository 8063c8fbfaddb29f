//! The revocation listener: a dedicated Postgres connection (not from the pool, and not
//! through PgBouncer in transaction mode, where LISTEN does not work) that LISTENs on
//! [`REVOCATION_CHANNEL`], reconnects with exponential backoff, and heartbeats so a silently
//! dead connection is noticed.

use std::time::Duration;

use futures::{StreamExt, stream};
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::REVOCATION_CHANNEL;
use crate::token::LookupId;

/// What the listener reports.
pub trait RevocationSink: Send + Sync + 'static {
    /// LISTEN is active (again): anything revoked before now may have gone unheard.
    fn connected(&self);
    /// A token was revoked.
    fn revoked(&self, lookup_id: LookupId);
    /// The connection is gone; notices may be missed until `connected`.
    fn disconnected(&self);
}

/// Listener timing.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// CA to trust for TLS instead of the Mozilla roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            heartbeat: Duration::from_secs(5),
            tls_ca_file: None,
        }
    }
}

/// Listens until `stopped` turns true.
pub async fn run(
    url: String,
    sink: impl RevocationSink,
    options: ListenerOptions,
    mut stopped: watch::Receiver<bool>,
) {
    let tls = match super::tls::connector(options.tls_ca_file.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            // Without a connector nothing can be heard: stay down, so max_staleness fails closed.
            tracing::error!(error = %e, "revocation listener cannot start");
            sink.disconnected();
            return;
        }
    };
    let mut backoff = options.min_backoff;
    loop {
        let session = listen_once(&url, &sink, options.heartbeat, tls.clone());
        let ended = tokio::select! {
            ended = session => ended,
            _ = stopped.wait_for(|s| *s) => return,
        };
        sink.disconnected();
        match ended {
            Ok(()) => {
                // A session that got going resets the backoff.
                backoff = options.min_backoff;
                tracing::warn!("revocation listener connection closed; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "revocation listener down"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// One connection: Ok when it was established and then ended, Err when it never got going.
async fn listen_once(
    url: &str,
    sink: &impl RevocationSink,
    heartbeat: Duration,
    tls: MakeRustlsConnect,
) -> Result<(), String> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| format!("listener URL: {e}"))?;
    // Named per process so operators (and tests) can tell the listener apart in pg_stat_activity.
    config.application_name(format!("casola-auth-revocations-{}", std::process::id()));
    let connect = config.connect(tls);
    let (client, mut connection) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {REVOCATION_CHANNEL}"))
            .await
            .map_err(|e| format!("LISTEN: {e}"))?;
        sink.connected();
        tracing::info!("revocation listener connected");
        let mut beat = tokio::time::interval(heartbeat);
        beat.tick().await;
        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Some(payload) => sink.revoked(LookupId::from_stored(payload)),
                    None => return Ok(()),
                },
                _ = beat.tick() => {
                    let alive = tokio::time::timeout(heartbeat, client.simple_query("select 1")).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}
