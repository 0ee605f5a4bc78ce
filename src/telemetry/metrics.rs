//! The instruments, made once from the global meter provider (no-ops when none is set).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, ObservableGauge, UpDownCounter};
use opentelemetry::KeyValue;

/// Bucket bounds for durations in seconds: a Predict takes milliseconds, an Explain of a
/// photo seconds to minutes.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub struct Metrics {
    /// Finished RPCs by rpc, model and code.
    pub requests: Counter<u64>,
    /// RPC latency (to the last message of a stream) by rpc, model and code.
    pub duration: Histogram<f64>,
    /// RPCs started and not finished, by rpc.
    pub in_flight: UpDownCounter<i64>,
    /// IG path points whose gradients were evaluated, by model.
    pub ig_steps: Counter<u64>,
    /// Time of one gradient batch (one ONNX Runtime run over several path points), by model.
    pub ig_batch_duration: Histogram<f64>,
    /// Jobs (requests' runs) merged into one ONNX Runtime run, by worker.
    pub batch_jobs: Histogram<u64>,
    /// Rows (batch entries: images, or alphas x targets) of one ONNX Runtime run, by worker.
    pub batch_rows: Histogram<u64>,
    /// Explanations checked against the predictor, by model and result (consistent,
    /// mismatch or error).
    pub predictor_checks: Counter<u64>,
    _queue_depth: ObservableGauge<i64>,
}

/// Bucket bounds for jobs and rows per run (the default --batch-max-rows is 32).
const COUNT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0,
];

/// How to read one worker's queue: its name, and its depth (None once it is gone).
type QueueProbe = (String, Box<dyn Fn() -> Option<usize> + Send + Sync>);

fn queues() -> &'static Mutex<Vec<QueueProbe>> {
    static QUEUES: OnceLock<Mutex<Vec<QueueProbe>>> = OnceLock::new();
    QUEUES.get_or_init(Default::default)
}

/// Reports `depth` as `integrad.model.queue_depth{worker}` until it returns None.
pub fn watch_queue(worker: &str, depth: impl Fn() -> Option<usize> + Send + Sync + 'static) {
    if let Ok(mut queues) = queues().lock() {
        queues.push((worker.to_string(), Box::new(depth)));
    }
}

/// The process's instruments.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("integrad");
        Metrics {
            requests: meter
                .u64_counter("integrad.rpc.requests")
                .with_description("gRPC requests finished, by rpc, model and status code")
                .with_unit("{request}")
                .build(),
            duration: meter
                .f64_histogram("integrad.rpc.duration")
                .with_description("gRPC request latency, to the end of the response stream")
                .with_unit("s")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            in_flight: meter
                .i64_up_down_counter("integrad.rpc.in_flight")
                .with_description("gRPC requests being served")
                .with_unit("{request}")
                .build(),
            ig_steps: meter
                .u64_counter("integrad.ig.steps")
                .with_description(
                    "Integrated Gradients path points evaluated (one gradient each per target)",
                )
                .with_unit("{step}")
                .build(),
            ig_batch_duration: meter
                .f64_histogram("integrad.ig.batch.duration")
                .with_description("time of one batch of gradients (one ONNX Runtime run)")
                .with_unit("s")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            batch_jobs: meter
                .u64_histogram("integrad.batch.jobs")
                .with_description(
                    "jobs (one per request's run) merged into one ONNX Runtime run by the batcher",
                )
                .with_unit("{job}")
                .with_boundaries(COUNT_BUCKETS.to_vec())
                .build(),
            batch_rows: meter
                .u64_histogram("integrad.batch.rows")
                .with_description("rows (batch entries) of one ONNX Runtime run")
                .with_unit("{row}")
                .with_boundaries(COUNT_BUCKETS.to_vec())
                .build(),
            predictor_checks: meter
                .u64_counter("integrad.predictor.checks")
                .with_description(
                    "explanations whose score was checked against the predictor's, by model and result (consistent, mismatch, error)",
                )
                .with_unit("{check}")
                .build(),
            _queue_depth: meter
                .i64_observable_gauge("integrad.model.queue_depth")
                .with_description("jobs waiting for a model worker's ONNX Runtime session")
                .with_unit("{job}")
                .with_callback(|observer| {
                    let Ok(mut queues) = queues().lock() else {
                        return;
                    };
                    queues.retain(|(worker, depth)| match depth() {
                        Some(depth) => {
                            let worker = KeyValue::new("worker", worker.clone());
                            observer.observe(depth as i64, &[worker]);
                            true
                        }
                        None => false,
                    });
                })
                .build(),
        }
    })
}

/// One batch of `steps` gradients of `model` took `elapsed`.
pub fn record_gradient_batch(model: &str, steps: usize, elapsed: Duration) {
    let metrics = metrics();
    let model = [KeyValue::new("model", model.to_string())];
    metrics.ig_steps.add(steps as u64, &model);
    metrics
        .ig_batch_duration
        .record(elapsed.as_secs_f64(), &model);
}

/// Worker `worker` ran `jobs` jobs of `rows` rows in all as one ONNX Runtime run.
pub fn record_batch(worker: &str, jobs: usize, rows: usize) {
    let metrics = metrics();
    let worker = [KeyValue::new("worker", worker.to_string())];
    metrics.batch_jobs.record(jobs as u64, &worker);
    metrics.batch_rows.record(rows as u64, &worker);
}

/// An explanation of `model` was checked against the predictor: `result` is consistent,
/// mismatch or error.
pub fn record_predictor_check(model: &str, result: &'static str) {
    metrics().predictor_checks.add(
        1,
        &[
            KeyValue::new("model", model.to_string()),
            KeyValue::new("result", result),
        ],
    );
}
