//! The IG step model (interpolation and weighted sums inside the graph, src/ig/step.rs) gives
//! the attributions of the plain path (interpolate in Rust, one gradient per alpha from the
//! autodiff gradient model, sums in Rust), on the demo model with a real photo, through the
//! real ONNX Runtime; and several paths merged into one run (the batcher's rules,
//! src/model/batch.rs) give each path's own sums.

use crate::common;

use std::borrow::Cow;

use common::*;
use integrad::autodiff::{build_gradient, GradOptions, Objective, COTANGENT, GRAD};
use integrad::explain::step;
use integrad::ig::{self, Integrator, Method};
use integrad::model::{Batching, BatchingMode, Merge, TensorData, Values, Worker, WorkerOptions};
use integrad::proto::onnx::ModelProto;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use prost::Message;

const CLASSES: usize = 1000;
/// espresso: the coffee photo's top-1 (tests/it/predict.rs).
const TARGETS: [usize; 2] = [967, 968];

fn session(model: &ModelProto) -> Session {
    let env = integrad::runtime::environment(&Default::default()).expect("ONNX Runtime");
    Session::builder(&env)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .with_intra_threads(2)
        .unwrap()
        .commit_from_memory(&model.encode_to_vec())
        .unwrap()
}

fn tensor(shape: Vec<i64>, data: Vec<f32>) -> SessionInputValue<'static> {
    Tensor::from_array((shape, data)).unwrap().into()
}

fn output(outputs: &ort::session::SessionOutputs, name: &str) -> Vec<f32> {
    outputs[name]
        .try_extract_tensor::<f32>()
        .unwrap()
        .1
        .to_vec()
}

fn softmax_at(logits: &[f32], class: usize) -> f32 {
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let sum: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    (logits[class] - max).exp() / sum
}

/// The demo model's gradient model for `objective`.
fn demo_gradient(objective: Objective) -> ModelProto {
    let model = ModelProto::decode(
        std::fs::read(demo_models().join("efficientnet-lite0/model.onnx"))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    build_gradient(
        &model,
        &GradOptions {
            objective,
            ..Default::default()
        },
    )
    .unwrap()
    .model
}

/// IG of the coffee photo for two targets both ways; returns the worst relative L2 distance
/// between the two attributions over the targets, after checking the path diagnostics.
/// `f32_path`: the plain path interpolates as the step model does (float32) instead of in f64.
fn compare(f32_path: bool) -> f64 {
    let grad = demo_gradient(Objective::Probability);
    let (stepped, _) = step::build_step_model(&grad, &["input".to_string()]).unwrap();
    let (mut plain, mut summing) = (session(&grad), session(&stepped));

    let (shape, x) = fixture("coffee_input.npy");
    let len = x.len();
    // The fixture is one CHW image; the model's input has a batch axis.
    let single: Vec<i64> = std::iter::once(1)
        .chain(shape.iter().map(|&d| d as i64))
        .collect();
    // A non-zero, non-uniform baseline, so both interpolation ends matter.
    let baseline: Vec<f32> = x.iter().map(|v| 0.25 * v - 0.5).collect();
    let t = TARGETS.len();
    // Trapezoid refined once (10 -> 20 steps) in batches of 4 alphas that straddle rounds'
    // endpoints and interiors.
    let mut a = Integrator::new(Method::Trapezoid, 10, len, t).unwrap();
    let mut b = Integrator::new(Method::Trapezoid, 10, len, t).unwrap();
    for round in 0..2 {
        while let Some(batch) = a.next_batch(4) {
            let other = b.next_batch(4).unwrap();
            let n = batch.len();
            let rows = n * t;
            let mut cotangent = vec![0f32; rows * CLASSES];
            for r in 0..rows {
                cotangent[r * CLASSES + TARGETS[r % t]] = 1.0;
            }

            let mut z = vec![0f32; n * len];
            if f32_path {
                // The step model's own arithmetic: alpha x + (1 - alpha) x' in float32.
                for (row, &alpha) in z.chunks_exact_mut(len).zip(batch.alphas()) {
                    let (to_x, to_b) = (alpha as f32, (1.0 - alpha) as f32);
                    for ((v, xi), bi) in row.iter_mut().zip(&x).zip(&baseline) {
                        *v = to_x * xi + to_b * bi;
                    }
                }
            } else {
                ig::interpolate(&x, &baseline, batch.alphas(), &mut z);
            }
            let rowwise: Vec<f32> = (0..rows)
                .flat_map(|r| z[(r / t) * len..(r / t + 1) * len].iter().copied())
                .collect();
            let mut batch_shape = single.clone();
            batch_shape[0] = rows as i64;
            let out = plain
                .run(vec![
                    (Cow::Borrowed("input"), tensor(batch_shape, rowwise)),
                    (
                        Cow::Borrowed(COTANGENT),
                        tensor(vec![rows as i64, CLASSES as i64], cotangent.clone()),
                    ),
                ])
                .unwrap();
            let (grads, logits) = (output(&out, GRAD), output(&out, "logits"));
            let scores: Vec<f32> = (0..rows)
                .map(|r| softmax_at(&logits[r * CLASSES..(r + 1) * CLASSES], TARGETS[r % t]))
                .collect();
            a.feed(&batch, &grads, &scores).unwrap();

            let alphas: Vec<f32> = (0..rows).map(|r| other.alphas()[r / t] as f32).collect();
            let rests: Vec<f32> = (0..rows)
                .map(|r| (1.0 - other.alphas()[r / t]) as f32)
                .collect();
            let mut alpha_shape = vec![1i64; single.len()];
            alpha_shape[0] = rows as i64;
            let out = summing
                .run(vec![
                    (
                        Cow::Borrowed(step::STEP_INPUT),
                        tensor(single.clone(), x.clone()),
                    ),
                    (
                        Cow::Borrowed(step::STEP_BASELINE),
                        tensor(single.clone(), baseline.clone()),
                    ),
                    (
                        Cow::Borrowed(step::STEP_PATH),
                        Tensor::from_array((vec![rows as i64], vec![0i64; rows]))
                            .unwrap()
                            .into(),
                    ),
                    (
                        Cow::Borrowed(step::STEP_ALPHA),
                        tensor(alpha_shape.clone(), alphas),
                    ),
                    (
                        Cow::Borrowed(step::STEP_ONE_MINUS_ALPHA),
                        tensor(alpha_shape, rests),
                    ),
                    (
                        Cow::Borrowed(step::STEP_WEIGHTS),
                        tensor(vec![2 * t as i64, rows as i64], b.sum_weights(&other)),
                    ),
                    (
                        Cow::Borrowed(COTANGENT),
                        tensor(vec![rows as i64, CLASSES as i64], cotangent),
                    ),
                ])
                .unwrap();
            let logits = output(&out, "logits");
            let scores2: Vec<f32> = (0..rows)
                .map(|r| softmax_at(&logits[r * CLASSES..(r + 1) * CLASSES], TARGETS[r % t]))
                .collect();
            b.feed_sums(
                &other,
                &output(&out, step::STEP_SUMS),
                &scores2,
                &output(&out, step::STEP_ABS),
            )
            .unwrap();
        }
        if round == 0 {
            a.refine().unwrap();
            b.refine().unwrap();
        }
    }

    let mut worst = 0f64;
    for j in 0..t {
        let ia = ig::attributions(&x, &baseline, &a.average_gradient(j).unwrap());
        let ib = ig::attributions(&x, &baseline, &b.average_gradient(j).unwrap());
        let norm = ia.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        let diff = ia
            .iter()
            .zip(&ib)
            .map(|(p, q)| f64::from(p - q).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(norm > 0.0);
        worst = worst.max(diff / norm);
        let (pa, pb) = (a.path(j).unwrap(), b.path(j).unwrap());
        assert_eq!(pa.len(), 21);
        for (p, q) in pa.iter().zip(&pb) {
            assert_eq!(p.alpha, q.alpha);
            // Scores: the same logits up to rounding (the softmax of an ulp-moved input).
            // Mean |grad|: a sum over 150k values, moved by the kink flips described below.
            assert!((p.score - q.score).abs() <= 1e-5, "{} {}", p.score, q.score);
            let rel = (p.mean_abs_gradient - q.mean_abs_gradient).abs() / p.mean_abs_gradient;
            assert!(
                rel < 2e-2,
                "mean |grad| {} {}",
                p.mean_abs_gradient,
                q.mean_abs_gradient
            );
        }
    }
    worst
}

#[test]
fn should_give_the_plain_paths_attributions() {
    // Same points: the gradients are bit-identical (measured), so only the summation differs:
    // float32 MatMul over at most 8 rows inside the model against f64 sums outside, ~1e-7.
    let same_points = compare(true);
    assert!(same_points < 1e-5, "relative L2 {same_points}");
    // The f64 interpolation of the plain path (ig::interpolate) differs from the model's
    // float32 one by an ulp in a third of the values, and this ReLU6 network's gradient is
    // discontinuous: an ulp flips units sitting on a kink and moves a single alpha's gradient
    // by up to 0.7 % (measured on this photo); averaged over the path it stays well under 1 %.
    // A wrong weight, alpha or baseline moves it by tens of percents.
    let f64_points = compare(false);
    assert!(f64_points < 1e-2, "relative L2 {f64_points}");
}

fn ort_inputs(
    inputs: Vec<(String, TensorData)>,
) -> Vec<(Cow<'static, str>, SessionInputValue<'static>)> {
    inputs
        .into_iter()
        .map(|(name, t)| {
            let value: SessionInputValue = match t.values {
                Values::F32(v) => Tensor::from_array((t.shape, v)).unwrap().into(),
                Values::I64(v) => Tensor::from_array((t.shape, v)).unwrap().into(),
            };
            (Cow::Owned(name), value)
        })
        .collect()
}

const OUTPUTS: [&str; 3] = [step::STEP_SUMS, step::STEP_ABS, "logits"];

fn run_step(session: &mut Session, inputs: Vec<(String, TensorData)>) -> Vec<TensorData> {
    let out = session.run(ort_inputs(inputs)).unwrap();
    OUTPUTS
        .iter()
        .map(|name| {
            let (shape, data) = out[*name].try_extract_tensor::<f32>().unwrap();
            TensorData::f32(shape.to_vec(), data.to_vec())
        })
        .collect()
}

#[test]
fn should_give_each_path_its_own_sums_when_paths_share_a_run() {
    let grad = demo_gradient(Objective::Probability);
    let (stepped, layout) = step::build_step_model(&grad, &["input".to_string()]).unwrap();
    let mut session = session(&stepped);
    let (shape, coffee) = fixture("coffee_input.npy");
    let (_, cat) = fixture("chelsea_input.npy");
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let dark: Vec<f32> = coffee.iter().map(|v| 0.25 * v - 0.5).collect();
    let zeros = vec![0f32; cat.len()];
    // Two different paths, alpha counts, target counts and weights, so a misplaced row, path
    // or weight block changes some sum.
    let (a_alphas, b_alphas) = ([0.0, 0.3, 0.7, 1.0], [0.1, 0.5, 0.9]);
    let (a_targets, b_targets) = ([967], [281, 285]);
    let weights = |rows: usize, seed: f32| -> Vec<f32> {
        (0..2 * rows).map(|i| seed + 0.125 * i as f32).collect()
    };
    let a = step::StepRun {
        input: &coffee,
        baseline: &dark,
        shape: &shape,
        fixed_f32: &[],
        fixed_i64: &[],
        fixed_f32_shape: &[],
        fixed_i64_shape: &[],
        alphas: &a_alphas,
        targets: &a_targets,
        classes: CLASSES,
        weights: weights(4, 0.5),
    }
    .inputs(&layout);
    let b = step::StepRun {
        input: &cat,
        baseline: &zeros,
        shape: &shape,
        fixed_f32: &[],
        fixed_i64: &[],
        fixed_f32_shape: &[],
        fixed_i64_shape: &[],
        alphas: &b_alphas,
        targets: &b_targets,
        classes: CLASSES,
        weights: weights(6, -1.0),
    }
    .inputs(&layout);
    let outputs: Vec<String> = OUTPUTS.iter().map(|s| s.to_string()).collect();
    assert!(Merge::Paths(layout.rules()).compatible((&a, &outputs), (&b, &outputs)));

    let alone = [
        run_step(&mut session, a.clone()),
        run_step(&mut session, b.clone()),
    ];
    let merged = run_step(&mut session, Merge::Paths(layout.rules()).merge(&[&a, &b]));
    let split = Merge::Paths(layout.rules())
        .split(&[&a, &b], &outputs, merged)
        .unwrap();
    for (job, (one, together)) in alone.iter().zip(&split).enumerate() {
        for (name, (p, q)) in OUTPUTS.iter().zip(one.iter().zip(together)) {
            assert_eq!(p.shape, q.shape, "job {job} {name}");
            let d = relative_l2(p.as_f32().unwrap(), q.as_f32().unwrap());
            // The same points through the same graph: only float32 rounding can differ, from
            // kernels blocked differently at another batch size (10 rows vs 4 and 6; on this
            // CPU it measured bit-identical). A row, path or weight in the wrong place moves a
            // sum by tens of percents.
            assert!(d < 1e-5, "job {job} {name}: relative L2 {d}");
        }
    }
}

#[test]
fn should_give_the_same_outputs_through_io_binding() {
    let grad = demo_gradient(Objective::Logit);
    let (stepped, layout) = step::build_step_model(&grad, &["input".to_string()]).unwrap();
    let worker = |name: &str, io_binding: bool| {
        let options = WorkerOptions {
            merge: Merge::Paths(layout.rules()),
            batching: Batching {
                mode: BatchingMode::Off,
                ..Batching::default()
            },
            keep_bound: io_binding.then_some(layout.keep_bound()),
        };
        Worker::spawn(name, session(&stepped), options, &Default::default()).unwrap()
    };
    let (plain, bound) = (worker("plain", false), worker("bound", true));
    let (shape, coffee) = fixture("coffee_input.npy");
    let (_, cat) = fixture("chelsea_input.npy");
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let dark: Vec<f32> = coffee.iter().map(|v| 0.25 * v - 0.5).collect();
    let zeros = vec![0f32; cat.len()];
    // The same path twice (inputs kept bound), another path (rebound), then the first again:
    // a stale or misbound input shows as a different sum.
    let runs: [(&[f32], &[f32], &[f64]); 4] = [
        (&coffee, &dark, &[0.0, 0.5, 1.0]),
        (&coffee, &dark, &[0.25, 0.75]),
        (&cat, &zeros, &[0.1, 0.9]),
        (&coffee, &dark, &[0.3]),
    ];
    let outputs: Vec<String> = OUTPUTS.iter().map(|s| s.to_string()).collect();
    for (i, (input, baseline, alphas)) in runs.into_iter().enumerate() {
        let inputs = step::StepRun {
            input,
            baseline,
            shape: &shape,
            fixed_f32: &[],
            fixed_i64: &[],
            fixed_f32_shape: &[],
            fixed_i64_shape: &[],
            alphas,
            targets: &[967, 968],
            classes: CLASSES,
            weights: vec![1.0; 4 * 2 * alphas.len()],
        }
        .inputs(&layout);
        let want = plain.run_blocking(inputs.clone(), outputs.clone()).unwrap();
        let have = bound.run_blocking(inputs, outputs.clone()).unwrap();
        // The same kernels on the same values on the CPU: bit-identical.
        assert_eq!(want, have, "run {i}");
    }
}
