//! Logs, traces and metrics (docs/observability.md has the operator's view).
//!
//! - Logs: `tracing` to stderr, readable text (colours on a terminal) or one JSON object per
//!   line (`log_format = "json"`), filtered by `RUST_LOG` (default `info`). One line per
//!   gRPC call (written by the transport's call layer); never a token, a secret or a hash.
//! - Traces: OpenTelemetry over OTLP/gRPC through `tracing-opentelemetry`, configured only by
//!   the standard variables, and off unless an endpoint is set:
//!
//!   | variable | meaning |
//!   |---|---|
//!   | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT` | collector, `http://host:4317`; tracing is off without one |
//!   | `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` | `grpc` only (anything else stops start-up) |
//!   | `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `_COMPRESSION` (and `_TRACES_` forms) | read by the exporter |
//!   | `OTEL_SERVICE_NAME` | `service.name`, default `casola-auth` |
//!   | `OTEL_RESOURCE_ATTRIBUTES` | more resource attributes (`k=v,k=v`) |
//!   | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampler, default `parentbased_always_on` |
//!   | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | batching |
//!   | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` | tracing off |
//!
//!   The incoming W3C `traceparent`/`tracestate` is the parent of each call's span
//!   ([`context`]; the transport's call layer opens the spans).
//! - Metrics: the `metrics` facade into a Prometheus recorder, served at `/metrics` by the
//!   admin port; every name is in [`metrics`].

pub mod call;
pub mod context;
pub mod metrics;

use std::io::IsTerminal;

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt,
};

pub use self::call::{Verdict, note_token_id, record};

/// Log output format (`log_format` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Text,
    /// One JSON object per line, for production.
    Json,
}

/// The `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` sets one.
pub const DEFAULT_SERVICE_NAME: &str = "casola-auth";

/// A telemetry set-up that cannot start; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TelemetryError(String);

/// Where traces go, read from the standard OpenTelemetry variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC endpoint.
    pub endpoint: String,
}

impl OtlpSettings {
    /// The settings from `var` (the environment in production); `None`: tracing is off.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TelemetryError> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporter) = set("OTEL_TRACES_EXPORTER") {
            match exporter.as_str() {
                "none" => return Ok(None),
                "otlp" => {}
                other => {
                    return Err(TelemetryError(format!(
                        "OTEL_TRACES_EXPORTER={other:?} is not supported: use otlp or none"
                    )));
                }
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = set(name)
                && protocol != "grpc"
            {
                return Err(TelemetryError(format!(
                    "{name}={protocol:?} is not supported: casola-auth exports OTLP over gRPC only"
                )));
            }
        }
        let Some((name, endpoint)) = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|name| set(name).map(|v| (name, v))) else {
            return Ok(None);
        };
        if endpoint.starts_with("https://") {
            return Err(TelemetryError(format!(
                "{name}: https is not supported (no TLS in this build); send plaintext OTLP/gRPC \
                 to a collector agent beside the service"
            )));
        }
        if !endpoint.starts_with("http://") || endpoint.parse::<http::Uri>().is_err() {
            return Err(TelemetryError(format!(
                "{name}={endpoint:?} is not an http:// URL"
            )));
        }
        Ok(Some(Self { endpoint }))
    }
}

/// Installed telemetry; [`Telemetry::shutdown`] flushes the spans still buffered.
#[derive(Debug)]
#[must_use = "call shutdown() at exit, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter. Blocks a thread of its own: the
    /// exporter needs the runtime while it flushes.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter shutdown failed"),
            Err(e) => tracing::warn!(error = %e, "trace exporter shutdown panicked"),
        }
    }
}

/// The log filter from `RUST_LOG`, `info` when unset; a bad value stops start-up.
fn log_filter() -> Result<EnvFilter, TelemetryError> {
    let builder = EnvFilter::builder().with_default_directive(LevelFilter::INFO.into());
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => builder
            .parse(&value)
            .map_err(|e| TelemetryError(format!("RUST_LOG={value:?}: {e}"))),
        _ => Ok(builder.parse_lossy("")),
    }
}

/// The resource of our spans: the standard variables, with our service name by default.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let builder = if named {
        Resource::builder()
    } else {
        Resource::builder().with_service_name(DEFAULT_SERVICE_NAME)
    };
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn tracer_provider(settings: &OtlpSettings) -> Result<SdkTracerProvider, TelemetryError> {
    // Builds a tonic channel: must run inside the tokio runtime.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .build()
        .map_err(|e| TelemetryError(format!("OTLP exporter for {}: {e}", settings.endpoint)))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build())
}

/// Installs logging for `format`, and trace export when the environment asks for it
/// (see the module docs): for `serve`. Call once, inside the tokio runtime.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    install(
        format,
        OtlpSettings::from_vars(|name| std::env::var(name).ok())?,
    )
}

/// Installs logging only: for the short store commands of the CLI.
pub fn init_logs(format: LogFormat) -> Result<(), TelemetryError> {
    install(format, None).map(|_| ())
}

fn install(format: LogFormat, otlp: Option<OtlpSettings>) -> Result<Telemetry, TelemetryError> {
    let filter = log_filter()?;
    let provider = otlp.as_ref().map(tracer_provider).transpose()?;

    // Logs go to stderr: stdout carries only what a script reads (tokens printed once).
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);

    // Spans go out for our own code only, whatever RUST_LOG says: quieter logs never cut a
    // trace, and library internals (h2, the exporter's own calls) never become spans.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("casola-auth"))
            .with_filter(Targets::new().with_target("casola_auth", LevelFilter::DEBUG))
    });

    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError(format!("installing the log subscriber: {e}")))?;
    if let Some(otlp) = &otlp {
        tracing::info!(endpoint = %otlp.endpoint, "exporting traces over OTLP/gRPC");
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<OtlpSettings>, TelemetryError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpSettings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn tracing_is_off_without_an_endpoint() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            None
        );
    }

    #[test]
    fn the_traces_endpoint_wins_over_the_general_one() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "http://traces:4317");
    }

    #[test]
    fn disabling_variables_turn_tracing_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert_eq!(
            settings(&[endpoint, ("OTEL_SDK_DISABLED", "true")]).unwrap(),
            None
        );
        assert_eq!(
            settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
    }

    #[test]
    fn unsupported_settings_stop_start_up_naming_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        for (vars, variable) in [
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c:4317")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER",
            ),
        ] {
            let err = settings(&vars).unwrap_err().to_string();
            assert!(err.contains(variable), "{err}");
        }
    }
}
