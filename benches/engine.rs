//! The engine's pieces, each on its own, at the demo model's sizes (EfficientNet-Lite0: one
//! 3x224x224 input, 1000 classes) and on a real photo (samples/coffee.png, 600x400):
//!
//! - `quadrature/<method>/<steps>`: the (alpha, weight) nodes of each rule at 50, 300 and
//!   1000 steps;
//! - `integrator/trapezoid50_batch16`: a whole 50-step trapezoid run fed back in batches of
//!   16 alphas the way the IG step model returns them (`sum_weights`, then `feed_sums` with
//!   synthetic sums of the input's size), then the average gradient;
//! - `attributions_completeness`: (x - x') x average gradient and the completeness numbers,
//!   on the real average gradient of the photo;
//! - `baseline/{black,uniform,blur_sigma5}`: the baselines of the preprocessed photo;
//! - `render/mask_overlay_png`: the mask and the overlay at the photo's resolution (600x400),
//!   both encoded as PNG, from the photo's real attributions;
//! - `build/step_model`: wrapping the demo model's gradient model (probability objective)
//!   into the IG step model;
//! - `onnx_16rows/{forward,ig_step}`: one forward run of the demo model at batch 16 against
//!   one IG step run at 16 rows (16 alphas, one target), same session settings as the server.
//!   Their ratio, printed at the end, is what an alpha costs over a forward.
//!
//!     cargo bench --bench engine [-- FILTER] [--warm-up-time S --measurement-time S]
//!
//! The real attributions are made once, untimed, before the benches that read them: a 50-step
//! IG run on the step model (4 runs of at most 16 rows), whatever FILTER selects.

mod common;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use integrad::autodiff::{build_gradient, GradOptions, Objective};
use integrad::explain::step::{self, StepRun, STEP_ABS, STEP_SUMS};
use integrad::ig::{self, BaselineKind, Completeness, Integrator, Method};
use integrad::image::{preprocess, render, RenderOptions};
use integrad::model::{LoadOptions, ModelConfig, Values};
use integrad::proto::onnx::ModelProto;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use prost::Message;

/// Rows per ONNX Runtime run, one target: 16 (the server's default batch for a 224x224 RGB
/// input was 16 when these figures were first published; it is now `explain::DEFAULT_BATCH`).
const ROWS: usize = 16;
const CLASSES: usize = 1000;
/// Espresso: the coffee photo's top class.
const TARGET: usize = 967;
const FORWARD: &str = "onnx_16rows/forward";
const IG_STEP: &str = "onnx_16rows/ig_step";

type Inputs = Vec<(Cow<'static, str>, SessionInputValue<'static>)>;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model_dir = root.join("models/efficientnet-lite0");
    let env = integrad::runtime::environment(&Default::default()).expect("ONNX Runtime");

    let config = ModelConfig::load(&model_dir.join("integrad.toml")).unwrap();
    let pre = config.input.preprocessing().unwrap().unwrap();
    let picture = image::open(root.join("samples/coffee.png"))
        .unwrap()
        .to_rgb8();
    let input = preprocess(&picture, &pre);
    let len = input.len();
    assert_eq!(len, 3 * 224 * 224, "the demo model's input");

    let model_bytes = std::fs::read(model_dir.join("model.onnx")).unwrap();
    let model = ModelProto::decode(model_bytes.as_slice()).unwrap();
    let grad = build_gradient(
        &model,
        &GradOptions {
            wrt: vec!["input".into()],
            of: Some("logits".into()),
            objective: Objective::Probability,
        },
    )
    .unwrap();
    let (step_model, _) = step::build_step_model(&grad.model, &["input".to_string()]).unwrap();
    let mut forward = session(&env, &model_bytes);
    let mut step = session(&env, &step_model.encode_to_vec());

    let mut criterion = Criterion::default().configure_from_args();

    // The cheap, pure pieces.
    {
        let mut g = criterion.benchmark_group("quadrature");
        for method in [
            Method::Trapezoid,
            Method::Left,
            Method::Right,
            Method::Midpoint,
            Method::GaussLegendre,
        ] {
            for steps in [50u32, 300, 1000] {
                g.bench_with_input(
                    BenchmarkId::new(method.as_str(), steps),
                    &steps,
                    |b, &steps| b.iter(|| ig::nodes(method, std::hint::black_box(steps))),
                );
            }
        }
        g.finish();
    }

    criterion.bench_function("integrator/trapezoid50_batch16", |b| {
        // Sums of the input's size with values of a gradient's magnitude; feed_sums does not
        // look at them beyond adding them up, so synthetic ones cost what real ones do.
        let sums: Vec<f32> = (0..2 * len)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-6 - 5e-4)
            .collect();
        let scores = [0.5f32; ROWS];
        let abs_sums = [1.0f32; ROWS];
        b.iter(|| {
            let mut it = Integrator::new(Method::Trapezoid, 50, len, 1).unwrap();
            while let Some(batch) = it.next_batch(ROWS) {
                let n = batch.len();
                std::hint::black_box(it.sum_weights(&batch));
                it.feed_sums(&batch, &sums, &scores[..n], &abs_sums[..n])
                    .unwrap();
            }
            it.average_gradient(0).unwrap()
        })
    });

    let black = ig::make_baseline(BaselineKind::Black, &input, Some(&pre)).unwrap();
    {
        let mut g = criterion.benchmark_group("baseline");
        for (name, kind) in [
            ("black", BaselineKind::Black),
            ("uniform", BaselineKind::Uniform { seed: 7 }),
            ("blur_sigma5", BaselineKind::Blur { sigma: 5.0 }),
        ] {
            g.bench_function(name, |b| {
                b.iter(|| ig::make_baseline(kind, &input, Some(&pre)).unwrap())
            });
        }
        g.finish();
    }

    // The photo's real explanation (black baseline, 50 trapezoid steps, probability of
    // espresso), for the benches that read attributions.
    let average = integrate(&mut step, &input, &black, 50);
    let f_input = probabilities(&mut forward, &input)[TARGET];
    let f_black = probabilities(&mut forward, &black)[TARGET];
    let attributions = ig::attributions(&input, &black, &average);
    let completeness = Completeness::new(&attributions, f64::from(f_input), f64::from(f_black));
    println!(
        "coffee, espresso, black baseline, 50 steps: F(x) {f_input:.4}, F(x') {f_black:.4}, \
         attribution sum {:.4}, delta {:+.4}",
        completeness.attribution_sum, completeness.delta
    );

    criterion.bench_function("attributions_completeness", |b| {
        b.iter(|| {
            let a = ig::attributions(&input, &black, &average);
            Completeness::new(&a, f64::from(f_input), f64::from(f_black))
        })
    });

    criterion.bench_function("render/mask_overlay_png", |b| {
        b.iter(|| {
            let pictures = render(&attributions, &pre, &picture, &RenderOptions::default());
            (
                integrad::image::png(&pictures.mask),
                integrad::image::png(&pictures.overlay),
            )
        })
    });

    {
        let mut g = criterion.benchmark_group("build");
        g.sample_size(10);
        g.bench_function("step_model", |b| {
            b.iter(|| step::build_step_model(&grad.model, &["input".to_string()]).unwrap())
        });
        g.finish();
    }

    // The ratio that matters: an alpha in the IG step model against the same row in a plain
    // forward, both at 16 rows.
    {
        let mut g = criterion.benchmark_group("onnx_16rows");
        // NOTE: a run takes most of a second here, so criterion's minimum of 10 samples of
        // one run each, whatever --measurement-time asks; more time gives more runs.
        g.sample_size(10).sampling_mode(SamplingMode::Flat);
        let batch: Vec<f32> = (0..ROWS)
            .flat_map(|r| {
                let a = r as f64 / (ROWS - 1) as f64;
                let mut row = vec![0f32; len];
                ig::interpolate(&input, &black, &[a], &mut row);
                row
            })
            .collect();
        g.bench_function("forward", |b| {
            b.iter(|| {
                let tensor =
                    Tensor::from_array((vec![ROWS as i64, 3, 224, 224], batch.clone())).unwrap();
                let out = forward.run(ort::inputs!["input" => tensor]).unwrap();
                std::hint::black_box(out["logits"].try_extract_tensor::<f32>().unwrap().1[0]);
            })
        });
        let alphas: Vec<f64> = (0..ROWS).map(|r| r as f64 / (ROWS - 1) as f64).collect();
        let weights = vec![1.0 / ROWS as f32; 2 * ROWS];
        g.bench_function("ig_step", |b| {
            b.iter(|| {
                let out = step
                    .run(step_inputs(&input, &black, &alphas, &weights))
                    .unwrap();
                std::hint::black_box(out[STEP_SUMS].try_extract_tensor::<f32>().unwrap().1[0]);
            })
        });
        g.finish();
    }

    criterion.final_summary();
    summary(&root);
}

/// A session with the server's settings (`model::load`): all graph optimisations, one intra-op
/// thread per available core, spinning during runs.
fn session(env: &ort::environment::Environment, bytes: &[u8]) -> Session {
    let options = LoadOptions::default();
    let builder = Session::builder(env)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap();
    integrad::model::with_threads(builder, &options)
        .unwrap()
        .commit_from_memory(bytes)
        .unwrap()
}

/// The IG step model's inputs for `alphas` (one target, [`TARGET`]) with `weights`
/// (`[2, rows]`), made by the server's own constructor ([`StepRun::inputs`]).
fn step_inputs(input: &[f32], baseline: &[f32], alphas: &[f64], weights: &[f32]) -> Inputs {
    let run = StepRun {
        input,
        baseline,
        shape: &[3, 224, 224],
        fixed_f32: &[],
        fixed_i64: &[],
        fixed_f32_shape: &[],
        fixed_i64_shape: &[],
        alphas,
        targets: &[TARGET],
        classes: CLASSES,
        weights: weights.to_vec(),
    };
    let layout = step::StepLayout {
        points: vec![step::Slot {
            name: "input".into(),
            shape: vec![3, 224, 224],
        }],
        fixed_f32: Vec::new(),
        fixed_i64: Vec::new(),
        stacked_f32: false,
        stacked_i64: false,
    };
    run.inputs(&layout)
        .into_iter()
        .map(|(name, tensor)| {
            let value: SessionInputValue<'static> = match tensor.values {
                Values::F32(data) => Tensor::from_array((tensor.shape, data)).unwrap().into(),
                Values::I64(data) => Tensor::from_array((tensor.shape, data)).unwrap().into(),
            };
            (Cow::Owned(name), value)
        })
        .collect()
}

/// The average gradient of P(espresso) from `baseline` to `input` over `steps` trapezoid
/// steps, run the way the server runs it (batches of [`ROWS`] alphas through the step model).
fn integrate(step: &mut Session, input: &[f32], baseline: &[f32], steps: u32) -> Vec<f32> {
    let mut it = Integrator::new(Method::Trapezoid, steps, input.len(), 1).unwrap();
    while let Some(batch) = it.next_batch(ROWS) {
        let weights = it.sum_weights(&batch);
        let out = step
            .run(step_inputs(input, baseline, batch.alphas(), &weights))
            .unwrap();
        let sums = out[STEP_SUMS].try_extract_tensor::<f32>().unwrap().1;
        let abs = out[STEP_ABS].try_extract_tensor::<f32>().unwrap().1;
        let logits = out["logits"].try_extract_tensor::<f32>().unwrap().1;
        let scores: Vec<f32> = logits
            .chunks_exact(CLASSES)
            .map(|row| softmax(row)[TARGET])
            .collect();
        it.feed_sums(&batch, sums, &scores, abs).unwrap();
    }
    it.average_gradient(0).unwrap()
}

fn probabilities(forward: &mut Session, x: &[f32]) -> Vec<f32> {
    let tensor = Tensor::from_array((vec![1i64, 3, 224, 224], x.to_vec())).unwrap();
    let out = forward.run(ort::inputs!["input" => tensor]).unwrap();
    softmax(out["logits"].try_extract_tensor::<f32>().unwrap().1)
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let top = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exp: Vec<f64> = logits.iter().map(|&v| f64::from(v - top).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / total) as f32).collect()
}

/// Prints the IG step run against the forward at 16 rows, from criterion's saved estimates.
fn summary(root: &Path) {
    let median_ms = |name: &str| common::median_ms(root, name);
    let (Some(forward), Some(step)) = (median_ms(FORWARD), median_ms(IG_STEP)) else {
        return;
    };
    println!("\nmedian, demo model, 16 rows, warm:");
    println!("  forward          {forward:8.1} ms");
    println!("  IG step          {step:8.1} ms");
    println!(
        "  IG step / forward {:7.2} (an alpha's forward + backward + sums over a forward)",
        step / forward
    );
}
