//! Telemetry end to end, through the real binary (the tracer and meter providers are
//! process-wide, so the server gets a process of its own): an OTLP receiver in the test
//! collects the spans and metrics of a Predict, a refused Predict and an Explain of the demo
//! model, and the Prometheus endpoint is scraped before and after them; and Explains refused
//! at admission are counted under their model.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use integrad::proto::integrad::v1 as pb;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use tonic::{Request, Response, Status};

/// What the OTLP receiver was sent.
#[derive(Clone, Default)]
struct Received {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts the receiver on a free loopback port; it serves until the test's runtime ends.
async fn otlp_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received = Received::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(received.clone()))
        .add_service(MetricsServiceServer::new(received.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (address, received)
}

/// The binary, its JSON log lines as they come, and the addresses it reported.
struct Server {
    child: Child,
    url: String,
    metrics: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `integrad serve` on free ports, exporting to `otlp`, logging JSON lines.
    fn start(otlp: SocketAddr) -> Self {
        Self::start_with(&["--otlp-endpoint", &format!("http://{otlp}")])
    }

    /// `integrad serve <args>` on free ports, with metrics, logging JSON lines.
    fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(args)
            .env("OTEL_SERVICE_NAME", SERVICE_NAME)
            .env_remove("RUST_LOG")
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (lines_tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let logs = logs.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    logs.lock().unwrap().push(line.clone());
                    let _ = lines_tx.send(line);
                }
            }
        });
        let (mut url, mut metrics) = (None, None);
        // Both addresses are logged before the models load, within a second; the bound only
        // stops a broken binary from hanging the test.
        let deadline = Instant::now() + Duration::from_secs(60);
        while url.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                panic!(
                    "the server never logged its addresses:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            };
            // Every line must be a JSON object (--log-format json).
            let record: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            let fields = &record["fields"];
            let address = fields["address"].as_str().map(|a| a.parse().unwrap());
            match fields["message"].as_str() {
                Some("listening") => url = address.map(|a: SocketAddr| format!("http://{a}")),
                Some(m) if m.starts_with("metrics listening") => metrics = address,
                _ => {}
            }
        }
        Self {
            child,
            url: url.unwrap(),
            metrics: metrics.unwrap(),
            logs,
        }
    }

    /// SIGTERM, and the exit status once the server has drained and flushed.
    fn terminate(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        // Draining and flushing is quick; the bound only stops a hang from hanging the test.
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let logs = self.logs.lock().unwrap().clone();
        assert!(status.success(), "{status}:\n{}", logs.join("\n"));
        logs
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

const SERVICE_NAME: &str = "integrad-telemetry-test";
const MODEL: &str = "efficientnet-lite0";
const PREDICT: &str = "integrad.v1.Explainer/Predict";
const EXPLAIN: &str = "integrad.v1.Explainer/Explain";
/// The caller's trace (W3C trace-context's example ids).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn int_attribute(span: &Span, key: &str) -> Option<i64> {
    match attribute(&span.attributes, key)? {
        any_value::Value::IntValue(v) => Some(*v),
        _ => None,
    }
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attribute(attributes, key)? {
        any_value::Value::StringValue(v) => Some(v),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn should_export_spans_and_metrics_of_real_requests() {
    let (otlp, received) = otlp_receiver().await;
    let server = Server::start(otlp);
    wait_serving(&server.url, None).await;
    let mut client = pb::explainer_client::ExplainerClient::connect(server.url.clone())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);

    let (content_type, before) = scrape(server.metrics);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let before = parse(&before);

    // A Predict, one refused with NOT_FOUND, and an Explain continuing the caller's trace.
    let predicted = client
        .predict(image_request(MODEL, sample("coffee.png"), 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(predicted.model, MODEL);
    let refused = client
        .predict(image_request("no-such-model", sample("coffee.png"), 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let mut request = Request::new(pb::ExplainRequest {
        model: MODEL.into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(sample("chelsea.png"))),
        }),
        steps: Some(8),
        batch_size: 3,
        render: Some(pb::RenderOptions {
            mask: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    let mut stream = client.explain(request).await.unwrap().into_inner();
    let (mut batches, mut results) = (0usize, Vec::new());
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            // One progress event per gradient batch.
            pb::explain_event::Event::Progress(_) => batches += 1,
            pb::explain_event::Event::Result(r) => results.push(r),
            pb::explain_event::Event::Results(_) => panic!("Explain sends each result alone"),
        }
    }
    assert_eq!(results.len(), 1);
    assert!(!results[0].mask_png.is_empty());
    let evaluations = f64::from(results[0].evaluations);
    assert!(batches >= 2, "8 steps in batches of 3 take several runs");

    // Prometheus: the counters and histograms moved by exactly these requests.
    let (_, after) = scrape(server.metrics);
    let after = parse(&after);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let ok = |rpc| [("rpc", rpc), ("model", MODEL), ("code", "OK")];
    assert_eq!(delta("integrad_rpc_requests_total", &ok(PREDICT)), 1.0);
    assert_eq!(delta("integrad_rpc_requests_total", &ok(EXPLAIN)), 1.0);
    // The refused request named no model of this server: it has no model label value.
    let not_found = [("rpc", PREDICT), ("model", ""), ("code", "NOT_FOUND")];
    assert_eq!(delta("integrad_rpc_requests_total", &not_found), 1.0);
    for rpc in [PREDICT, EXPLAIN] {
        assert_eq!(
            delta("integrad_rpc_duration_seconds_count", &ok(rpc)),
            1.0,
            "{rpc}"
        );
        assert!(delta("integrad_rpc_duration_seconds_sum", &ok(rpc)) > 0.0);
        let mut inf = ok(rpc).to_vec();
        inf.push(("le", "+Inf"));
        assert_eq!(delta("integrad_rpc_duration_seconds_bucket", &inf), 1.0);
        // Nothing is in flight once the replies are in.
        assert_eq!(
            value(&after, "integrad_rpc_in_flight", &[("rpc", rpc)]),
            0.0
        );
    }
    // The steps counter agrees with the evaluations the Explanation reports, and the batch
    // histogram counted one run per progress event.
    let model = [("model", MODEL)];
    assert_eq!(delta("integrad_ig_steps_total", &model), evaluations);
    assert_eq!(
        delta("integrad_ig_batch_duration_seconds_count", &model),
        batches as f64
    );
    let gradient_worker = format!("{MODEL}-grad");
    assert_eq!(
        value(
            &after,
            "integrad_model_queue_depth",
            &[("worker", &gradient_worker)]
        ),
        0.0
    );
    assert!(after["integrad_model_queue_depth"]
        .iter()
        .any(|(labels, _)| labels["worker"] == gradient_worker));

    // SIGTERM: the server drains, then flushes every span and a last metrics export.
    let logs = server.terminate();
    let traces = received.traces.lock().unwrap().clone();
    assert!(
        !traces.is_empty(),
        "no spans exported:\n{}",
        logs.join("\n")
    );
    let mut spans: Vec<Span> = Vec::new();
    for export in &traces {
        for resource_spans in &export.resource_spans {
            let resource = resource_spans.resource.as_ref().unwrap();
            assert_eq!(
                string_attribute(&resource.attributes, "service.name"),
                Some(SERVICE_NAME),
                "OTEL_SERVICE_NAME names the service"
            );
            for scope in &resource_spans.scope_spans {
                spans.extend(scope.spans.iter().cloned());
            }
        }
    }
    let children = |parent: &Span, name: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.name == name)
            .cloned()
            .collect()
    };

    // The Explain's span continues the caller's trace, as a server span under its span.
    let explain: Vec<&Span> = spans.iter().filter(|s| s.name == EXPLAIN).collect();
    assert_eq!(explain.len(), 1, "one span per RPC");
    let explain = explain[0];
    assert_eq!(hex(&explain.trace_id), TRACE_ID);
    assert_eq!(hex(&explain.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(explain.kind, SpanKind::Server as i32);
    assert_eq!(int_attribute(explain, "rpc.grpc.status_code"), Some(0));
    assert_eq!(
        string_attribute(&explain.attributes, "integrad.model"),
        Some(MODEL)
    );
    assert_eq!(
        string_attribute(&explain.attributes, "rpc.system"),
        Some("grpc")
    );
    // Its children: decode and preprocess of the photo, one span per gradient batch (with
    // the ONNX Runtime run inside it, on the model's worker thread), one render per target.
    assert_eq!(children(explain, "decode").len(), 1);
    assert_eq!(children(explain, "preprocess").len(), 1);
    let gradient_batches = children(explain, "gradient_batch");
    assert_eq!(gradient_batches.len(), batches);
    let steps: i64 = gradient_batches
        .iter()
        .map(|s| int_attribute(s, "ig.steps").unwrap())
        .sum();
    assert_eq!(steps as f64, evaluations);
    for batch in &gradient_batches {
        assert_eq!(batch.trace_id, explain.trace_id);
        assert_eq!(children(batch, "ort.run").len(), 1);
        // A child lies within its parent.
        assert!(batch.start_time_unix_nano >= explain.start_time_unix_nano);
        assert!(batch.end_time_unix_nano <= explain.end_time_unix_nano);
    }
    assert_eq!(children(explain, "render").len(), results.len());
    assert!(!children(explain, "forward").is_empty());

    // The Predicts start traces of their own.
    let predicts: Vec<&Span> = spans.iter().filter(|s| s.name == PREDICT).collect();
    assert_eq!(predicts.len(), 2);
    for predict in &predicts {
        assert!(predict.parent_span_id.is_empty(), "a root span");
        assert_ne!(hex(&predict.trace_id), TRACE_ID);
    }
    let served = predicts
        .iter()
        .find(|s| int_attribute(s, "rpc.grpc.status_code") == Some(0))
        .unwrap();
    for child in ["decode", "preprocess", "forward"] {
        assert_eq!(children(served, child).len(), 1, "{child}");
    }
    assert!(
        predicts
            .iter()
            .any(|s| int_attribute(s, "rpc.grpc.status_code") == Some(tonic::Code::NotFound as i64)),
        "the refused Predict's span carries its status"
    );

    // Metrics over OTLP: the last (shutdown) export holds the cumulative counts.
    let exports = received.metrics.lock().unwrap().clone();
    let last = exports.last().expect("metrics exported at shutdown");
    let metrics: Vec<_> = last
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .collect();
    let requests = metrics
        .iter()
        .find(|m| m.name == "integrad.rpc.requests")
        .expect("integrad.rpc.requests exported");
    let Some(metric::Data::Sum(sum)) = &requests.data else {
        panic!("integrad.rpc.requests is a sum: {requests:?}");
    };
    let explained = sum
        .data_points
        .iter()
        .find(|p| {
            string_attribute(&p.attributes, "rpc") == Some(EXPLAIN)
                && string_attribute(&p.attributes, "code") == Some("OK")
        })
        .expect("the Explain is counted");
    assert_eq!(
        explained.value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(1))
    );
    assert!(metrics.iter().any(|m| m.name == "integrad.rpc.duration"));
    assert!(metrics.iter().any(|m| m.name == "integrad.ig.steps"));
}

/// An Explain refused at admission (RESOURCE_EXHAUSTED), before any model is looked at, is
/// counted under the model it is about: the one it names, or the default model for a request
/// that names none.
#[tokio::test(flavor = "multi_thread")]
async fn should_count_refused_explains_under_their_model() {
    let server = Server::start_with(&[
        "--max-concurrent-explains",
        "1",
        "--max-queued-explains",
        "0",
    ]);
    wait_serving(&server.url, None).await;
    let mut client = pb::explainer_client::ExplainerClient::connect(server.url.clone())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    let explain = |model: &str, steps: u32| pb::ExplainRequest {
        model: model.into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(sample("rocket.jpg"))),
        }),
        steps: Some(steps),
        ..Default::default()
    };
    // Minutes of work: it holds the only slot while the test runs, then is cancelled.
    let mut running = client
        .explain(explain("", 4096))
        .await
        .unwrap()
        .into_inner();
    running.message().await.unwrap().unwrap();

    let before = parse(&scrape(server.metrics).1);
    for model in ["", MODEL, "no-such-model"] {
        let refused = client.explain(explain(model, 4)).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
    }
    let after = parse(&scrape(server.metrics).1);
    let delta = |model: &str| {
        let labels = [
            ("rpc", EXPLAIN),
            ("model", model),
            ("code", "RESOURCE_EXHAUSTED"),
        ];
        value(&after, "integrad_rpc_requests_total", &labels)
            - value(&before, "integrad_rpc_requests_total", &labels)
    };
    // The demo repository's default model is MODEL (its default-model file).
    assert_eq!(delta(MODEL), 2.0, "the default and the named");
    assert_eq!(
        delta(""),
        1.0,
        "a model this server does not have has no label value"
    );
    drop(running);
}
