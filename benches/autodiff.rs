//! The autodiff benchmark (docs/autodiff.md): on the demo model (EfficientNet-Lite0) at batch
//! 32 on CPU, one gradient-model run against one forward run of the original model, in the
//! same process with the same session options, and the time to build the gradient graph;
//! then the same ratio on alternating runs (see [`paired_ratio`]).
//!
//!     cargo bench --bench autodiff

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use integrad::autodiff::{build_gradient, GradOptions, COTANGENT};
use integrad::proto::onnx::ModelProto;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;
use prost::Message;

const BATCH: i64 = 32;

fn session(bytes: &[u8]) -> Session {
    let env = integrad::runtime::environment(&Default::default()).expect("ONNX Runtime");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    Session::builder(&env)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .with_intra_threads(threads)
        .unwrap()
        .commit_from_memory(bytes)
        .unwrap()
}

/// The input tensors, made once outside the timed loop: the input (a fixed pattern in
/// [-1, 1)) and, for the gradient model, a one-hot cotangent row per batch row.
fn inputs() -> (Tensor<f32>, Tensor<f32>) {
    let n = (BATCH * 3 * 224 * 224) as usize;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();
    let mut c = vec![0f32; (BATCH * 1000) as usize];
    for r in 0..BATCH as usize {
        c[r * 1000 + (r * 37) % 1000] = 1.0;
    }
    (
        Tensor::from_array((vec![BATCH, 3, 224, 224], x)).unwrap(),
        Tensor::from_array((vec![BATCH, 1000], c)).unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0/model.onnx");
    let model = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let grad = build_gradient(&model, &GradOptions::default()).unwrap();

    let mut g = c.benchmark_group("autodiff");
    g.sample_size(10).warm_up_time(Duration::from_secs(3));
    g.bench_function("build_gradient", |b| {
        b.iter(|| build_gradient(&model, &GradOptions::default()).unwrap())
    });

    let mut forward = session(&model.encode_to_vec());
    let mut backward = session(&grad.model.encode_to_vec());
    let (x, cotangent) = inputs();
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("forward_batch32", |b| {
        b.iter(|| {
            forward.run(ort::inputs!["input" => &x]).unwrap();
        })
    });
    g.bench_function("gradient_batch32", |b| {
        b.iter(|| {
            backward
                .run(ort::inputs!["input" => &x, COTANGENT => &cotangent])
                .unwrap();
        })
    });
    g.finish();
    paired_ratio(&mut forward, &mut backward, &x, &cotangent);
}

/// (forward, gradient) run pairs for [`paired_ratio`].
const PAIRS: usize = 21;

/// The ratio on alternating runs. Criterion times the forward for 20 s and then the gradient
/// for 20 s, so when the machine's speed drifts between those minutes (on a shared 2-vCPU VM
/// it does, by 10-30 %) their ratio drifts with it. Each pair here runs the forward and then
/// the gradient model back to back; the median and quartiles of the per-pair ratios are
/// printed next to criterion's figures (docs/BENCHMARKS.md).
fn paired_ratio(
    forward: &mut Session,
    backward: &mut Session,
    x: &Tensor<f32>,
    cotangent: &Tensor<f32>,
) {
    let mut ratios = Vec::with_capacity(PAIRS);
    let mut times = (Vec::with_capacity(PAIRS), Vec::with_capacity(PAIRS));
    for _ in 0..PAIRS {
        let started = Instant::now();
        forward.run(ort::inputs!["input" => x]).unwrap();
        let f = started.elapsed().as_secs_f64();
        let started = Instant::now();
        backward
            .run(ort::inputs!["input" => x, COTANGENT => cotangent])
            .unwrap();
        let g = started.elapsed().as_secs_f64();
        ratios.push(g / f);
        times.0.push(f);
        times.1.push(g);
    }
    let quartiles = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |q: usize| v[(v.len() - 1) * q / 4];
        (at(1), at(2), at(3))
    };
    let (lo, mid, hi) = quartiles(&mut ratios);
    let (_, f, _) = quartiles(&mut times.0);
    let (_, g, _) = quartiles(&mut times.1);
    println!(
        "autodiff/paired_batch32: {PAIRS} alternating (forward, gradient) pairs: ratio median \
         {mid:.2}x (quartiles {lo:.2}-{hi:.2}); medians forward {:.1} ms, gradient {:.1} ms",
        f * 1e3,
        g * 1e3
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
