//! The admin HTTP port: `/healthz` and `/readyz` for HTTP probes, `/metrics` for Prometheus.
//! Plain HTTP/1 on its own address, so it can stay off the public network.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::{
    store::TokenStore,
    telemetry::metrics::{self as names, STORE_POOL_CONNECTIONS},
    transport::connections::SideListener,
};

/// The Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin routes read.
#[derive(Clone)]
pub struct AdminState {
    /// Whether the store answers (kept by the health watcher).
    pub ready: Arc<AtomicBool>,
    /// The metrics recorder.
    pub metrics: PrometheusHandle,
    /// The store, for pool gauges sampled at scrape time.
    pub store: Arc<dyn TokenStore>,
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    if let Some((in_use, idle)) = state.store.pool_connections() {
        metrics::gauge!(STORE_POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
        metrics::gauge!(STORE_POOL_CONNECTIONS, "state" => "idle").set(idle as f64);
    }
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        names::render(&state.metrics),
    )
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `stopped`.
pub async fn serve(listener: SideListener, state: AdminState, mut stopped: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}
