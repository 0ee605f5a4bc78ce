//! The metrics as Prometheus text (exposition format 0.0.4) at `GET /metrics`, read on each
//! scrape from the meter provider. Names follow OpenTelemetry's Prometheus conventions: dots
//! become underscores, a unit of seconds adds `_seconds`, a monotonic counter adds `_total`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

/// A reader the meter provider owns and the endpoint shares, collected on each scrape.
#[derive(Debug, Clone, Default)]
pub struct PrometheusReader(Arc<ManualReader>);

impl MetricReader for PrometheusReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }

    fn collect(&self, metrics: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(metrics)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        // Prometheus counters and histograms are cumulative.
        self.0.temporality(kind)
    }
}

impl PrometheusReader {
    /// Every metric, as Prometheus text.
    pub fn render(&self) -> Result<String, String> {
        let mut metrics = ResourceMetrics::default();
        self.collect(&mut metrics).map_err(|e| e.to_string())?;
        let mut text = String::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics() {
                write_metric(&mut text, metric);
            }
        }
        Ok(text)
    }
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, reader: PrometheusReader) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let reader = reader.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let reader = reader.clone();
                async move { Ok::<_, Infallible>(respond(&request, &reader)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics endpoint: connection failed");
            }
        });
    }
}

fn respond<B>(
    request: &http::Request<B>,
    reader: &PrometheusReader,
) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, content_type: &str, body: String| {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => match reader.render() {
            Ok(text) => reply(
                http::StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            ),
            Err(e) => reply(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                format!("cannot collect metrics: {e}\n"),
            ),
        },
        (_, "/metrics") => reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "GET /metrics\n".into(),
        ),
        _ => reply(
            http::StatusCode::NOT_FOUND,
            TEXT,
            "metrics are at /metrics\n".into(),
        ),
    }
}

fn write_metric(text: &mut String, metric: &Metric) {
    match metric.data() {
        AggregatedMetrics::F64(data) => write_data(text, metric, data),
        AggregatedMetrics::U64(data) => write_data(text, metric, data),
        AggregatedMetrics::I64(data) => write_data(text, metric, data),
    }
}

/// A sample value: Prometheus spells infinities +Inf and -Inf.
trait Sample: Copy {
    fn as_f64(self) -> f64;
}

impl Sample for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}

impl Sample for u64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Sample for i64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

fn number(value: f64) -> String {
    if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else if value.is_nan() {
        "NaN".into()
    } else {
        value.to_string()
    }
}

fn write_data<T: Sample>(text: &mut String, metric: &Metric, data: &MetricData<T>) {
    let base = base_name(metric);
    match data {
        MetricData::Gauge(gauge) => {
            header(text, &base, metric, "gauge");
            for point in gauge.data_points() {
                sample(
                    text,
                    &base,
                    point.attributes(),
                    None,
                    point.value().as_f64(),
                );
            }
        }
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{base}_total"), "counter")
            } else {
                (base, "gauge")
            };
            header(text, &name, metric, kind);
            for point in sum.data_points() {
                sample(
                    text,
                    &name,
                    point.attributes(),
                    None,
                    point.value().as_f64(),
                );
            }
        }
        MetricData::Histogram(histogram) => {
            header(text, &base, metric, "histogram");
            let bucket = format!("{base}_bucket");
            for point in histogram.data_points() {
                let mut cumulative = 0u64;
                let bounds = point.bounds().map(number).chain(["+Inf".to_string()]);
                for (bound, count) in bounds.zip(point.bucket_counts()) {
                    cumulative += count;
                    let le = ("le", bound.as_str());
                    sample(
                        text,
                        &bucket,
                        point.attributes(),
                        Some(le),
                        cumulative as f64,
                    );
                }
                let sum = point.sum().as_f64();
                sample(text, &format!("{base}_sum"), point.attributes(), None, sum);
                let count = point.count() as f64;
                sample(
                    text,
                    &format!("{base}_count"),
                    point.attributes(),
                    None,
                    count,
                );
            }
        }
        // integrad makes no exponential histograms.
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// `integrad.rpc.duration` in seconds -> `integrad_rpc_duration_seconds`.
fn base_name(metric: &Metric) -> String {
    let mut name: String = metric
        .name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let suffix = match metric.unit() {
        "s" => "_seconds",
        "By" => "_bytes",
        _ => "",
    };
    if !name.ends_with(suffix) {
        name.push_str(suffix);
    }
    name
}

fn header(text: &mut String, name: &str, metric: &Metric, kind: &str) {
    let help = metric
        .description()
        .replace('\\', "\\\\")
        .replace('\n', "\\n");
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} {kind}");
}

fn sample<'a>(
    text: &mut String,
    name: &str,
    attributes: impl Iterator<Item = &'a KeyValue>,
    extra: Option<(&str, &str)>,
    value: f64,
) {
    let mut labels: Vec<String> = attributes
        .map(|kv| label(kv.key.as_str(), &kv.value.as_str()))
        .collect();
    labels.extend(extra.map(|(key, value)| label(key, value)));
    let _ = if labels.is_empty() {
        writeln!(text, "{name} {}", number(value))
    } else {
        writeln!(text, "{name}{{{}}} {}", labels.join(","), number(value))
    };
}

fn label(key: &str, value: &str) -> String {
    let key: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let value = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{key}=\"{value}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a.b", "x\"y\\z\n"), r#"a_b="x\"y\\z\n""#);
    }

    #[test]
    fn infinities_are_spelled_the_prometheus_way() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.25), "0.25");
    }
}
