//! The web console: the API Tokens page, served on its own HTTP/1.1 listener
//! (`console.listen`) together with the gRPC-Web endpoints of TokenService and
//! AuthorizationService, so the page calls the API on its own origin (no CORS).
//!
//! The console has no powers of its own: the gRPC-Web requests reach the very services of
//! the gRPC port, behind the same caller authentication and telemetry, with the token the
//! person pasted. The page is static and embedded in the binary (built from `web/` by
//! `scripts/build-console.sh`; no Node.js at run time). Every response carries the security
//! headers of [`SECURITY_HEADERS`]. docs/console.md has the whole picture.

use axum::{
    Router,
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::watch;
use tonic::service::Routes;
use tower::Layer;

use crate::transport::{connections::SideListener, telemetry::GrpcTelemetryLayer};

/// The Content-Security-Policy of every console response: scripts, styles and API calls
/// from the console's own origin only (no inline script or style, no eval), no plugins,
/// no framing, no form posts, no `<base>` tricks.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Headers set on every console response (pages, assets, gRPC-Web answers, errors).
pub const SECURITY_HEADERS: [(&str, &str); 7] = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    // For browsers that predate frame-ancestors.
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    // The page is small and holds a secret once: never keep a copy in any cache.
    ("cache-control", "no-store"),
];

/// The gRPC services the console reaches, by path prefix. Health, reflection and Envoy's
/// Check stay on the gRPC port only.
const SERVICE_PATHS: [&str; 2] = [
    "/casola.auth.v1.TokenService/{method}",
    "/casola.auth.v1.AuthorizationService/{method}",
];

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found\n",
    )
        .into_response()
}

async fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

/// The console's routes: the page, its assets, and gRPC-Web for `services` (the same
/// service stack the gRPC port serves, caller authentication included), observed by
/// `telemetry`.
pub fn router(services: Routes, telemetry: GrpcTelemetryLayer) -> Router {
    // gRPC-Web outermost: the telemetry layer then sees plain gRPC (status in trailers),
    // exactly as on the gRPC port.
    let grpc_web = tonic_web::GrpcWebLayer::new().layer(telemetry.layer(services.prepare()));
    let mut router = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        );
    for path in SERVICE_PATHS {
        router = router.route_service(path, grpc_web.clone());
    }
    router
        .fallback(not_found)
        .layer(axum::middleware::map_response(with_security_headers))
}

/// Serves the console on `listener` until `stopped`.
pub async fn serve(
    listener: SideListener,
    services: Routes,
    telemetry: GrpcTelemetryLayer,
    mut stopped: watch::Receiver<bool>,
) {
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router(services, telemetry))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "console server failed");
    }
}
