//! Whole-model checks: integrad's gradient graphs, run by ONNX Runtime in float32, against
//! PyTorch autograd in float64 on the same weights (fixtures made by
//! `scripts/make_autodiff_fixtures.py`, see `tests/data/autodiff/README.md`), at batch 3 with a
//! different target class per row, for both objectives.
//!
//! Metrics per row: relative L2 error |g - ref| / |ref| and the Pearson correlation of g with
//! ref. Max error alone would mislead: a few ReLU6 units sit on a kink and flip between float32
//! and float64, moving single pixels (docs/autodiff.md).

use crate::ad_support;

use std::path::Path;

use ad_support::*;
use integrad::autodiff::{build_gradient, GradOptions, Objective, COTANGENT, GRAD};
use integrad::npy::{self, NpyArray};
use integrad::proto::onnx::ModelProto;
use prost::Message;

fn load(path: &str) -> ModelProto {
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    ModelProto::decode(bytes.as_slice()).unwrap()
}

fn read(path: &str) -> (Vec<usize>, Vec<f32>) {
    match npy::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap() {
        NpyArray::F32 { shape, data } => (shape, data),
        other => panic!("{path}: unexpected {:?}", other.shape()),
    }
}

fn targets(model: &str, objective: &str) -> Vec<usize> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/autodiff/targets.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[model][objective]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as usize)
        .collect()
}

/// Per row: (relative L2 error, correlation).
fn compare(got: &[f64], want: &[f32], rows: usize) -> Vec<(f64, f64)> {
    let n = got.len() / rows;
    (0..rows)
        .map(|r| {
            let g = &got[r * n..(r + 1) * n];
            let w: Vec<f64> = want[r * n..(r + 1) * n].iter().map(|v| *v as f64).collect();
            let err: f64 = g
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm: f64 = w.iter().map(|b| b * b).sum::<f64>().sqrt();
            let (mg, mw) = (
                g.iter().sum::<f64>() / n as f64,
                w.iter().sum::<f64>() / n as f64,
            );
            let cov: f64 = g.iter().zip(&w).map(|(a, b)| (a - mg) * (b - mw)).sum();
            let vg: f64 = g.iter().map(|a| (a - mg).powi(2)).sum();
            let vw: f64 = w.iter().map(|b| (b - mw).powi(2)).sum();
            (err / norm, cov / (vg * vw).sqrt())
        })
        .collect()
}

/// Runs the gradient model of `model` on `input` (batch 3) with one-hot cotangent rows.
fn gradient(model: &ModelProto, input: &T, targets: &[usize], objective: Objective) -> (T, T) {
    let grad = build_gradient(
        model,
        &GradOptions {
            objective,
            ..Default::default()
        },
    )
    .unwrap();
    // The interface contract: inputs = original inputs + cotangent; outputs = grad first,
    // then the original outputs.
    let g = grad.model.graph.as_ref().unwrap();
    let orig = model.graph.as_ref().unwrap();
    let names: Vec<&str> = g.input.iter().map(|i| i.name()).collect();
    let mut want: Vec<&str> = orig.input.iter().map(|i| i.name()).collect();
    want.push(COTANGENT);
    assert_eq!(names, want);
    let outs: Vec<&str> = g.output.iter().map(|o| o.name()).collect();
    let mut want: Vec<&str> = vec![GRAD];
    want.extend(orig.output.iter().map(|o| o.name()));
    assert_eq!(outs, want);

    let logits = run(model, &[("input", input)])["logits"].clone();
    let classes = logits.shape[1] as usize;
    let mut c = vec![0.0; targets.len() * classes];
    for (r, t) in targets.iter().enumerate() {
        c[r * classes + t] = 1.0;
    }
    let c = T::new(F32, &logits.shape, c);
    let out = run(&grad.model, &[("input", input), (COTANGENT, &c)]);
    (out[GRAD].clone(), out["logits"].clone())
}

fn check_model(name: &str, model: &ModelProto, input: T, max_rel_l2: f64, min_corr: f64) {
    for objective in ["logit", "probability"] {
        let obj: Objective = objective.parse().unwrap();
        let t = targets(name, objective);
        let (g, logits) = gradient(model, &input, &t, obj);
        assert_eq!(g.shape, input.shape);
        assert_eq!(logits.shape[0], 3);
        let (_, want) = read(&format!("tests/data/autodiff/{name}_grad_{objective}.npy"));
        let rows = compare(&g.data, &want, 3);
        println!("{name} {objective}: per row (relative L2, correlation) {rows:?}");
        for (rel, corr) in rows {
            assert!(rel <= max_rel_l2, "{name} {objective}: relative L2 {rel}");
            assert!(corr >= min_corr, "{name} {objective}: correlation {corr}");
        }
    }
}

fn fixture_input(path: &str) -> T {
    let (shape, data) = read(path);
    let shape: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
    T::new(F32, &shape, data.iter().map(|v| *v as f64).collect())
}

/// EfficientNet-Lite0 (Conv incl. depthwise, stride 2 and asymmetric Pad, ReLU6 as Clip, Add,
/// GlobalAveragePool, Reshape, Gemm). Tolerance: float32 vs float64 through ~65 layers. Measured
/// ~1e-6 relative L2 on chelsea and coffee and ~4e-4 on rocket, where a few ReLU6 units sit on
/// a kink and flip between precisions; 1e-2 leaves headroom while a wrong rule gives O(1).
#[test]
fn should_diff_efficientnet_lite0_like_pytorch() {
    let model = load("models/efficientnet-lite0/model.onnx");
    let mut data = Vec::new();
    for n in ["chelsea", "coffee", "rocket"] {
        data.extend(read(&format!("tests/data/{n}_input.npy")).1);
    }
    let input = T::new(
        F32,
        &[3, 3, 224, 224],
        data.iter().map(|v| *v as f64).collect(),
    );
    check_model("effnet", &model, input, 1e-2, 0.9999);
}

/// A small Inception-style CNN (overlapping MaxPool, AveragePool without pad counting, Concat
/// of branches). float32 vs float64 over a few layers: measured ~1e-7 relative L2; 1e-5 allows
/// for a ReLU kink flipping.
#[test]
fn should_diff_inception_like_pytorch() {
    let model = load("tests/data/autodiff/inception.onnx");
    let input = fixture_input("tests/data/autodiff/inception_input.npy");
    check_model("inception", &model, input, 1e-5, 0.999_999);
}

/// A transformer encoder block (LayerNormalization, attention with MatMul and Softmax, GELU via
/// Erf, Split, residuals). Smooth, so float32 rounding only: measured ~1e-7; 1e-5 leaves
/// headroom.
#[test]
fn should_diff_transformer_block_like_pytorch() {
    let model = load("tests/data/autodiff/transformer.onnx");
    let input = fixture_input("tests/data/autodiff/transformer_input.npy");
    check_model("transformer", &model, input, 1e-5, 0.999_999);
}

/// The model as ONNX Runtime's basic (level 1) optimiser leaves it: constants folded, Identity
/// and Dropout removed, Conv+BatchNorm/Add/Mul fusions, standard ops only.
fn ort_optimised(path: &str) -> ModelProto {
    use ort::session::builder::GraphOptimizationLevel;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("optimised.onnx");
    let _session = ort::session::Session::builder(&env())
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .unwrap()
        .with_optimized_model_path(&out)
        .unwrap()
        .commit_from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap();
    ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap()
}

/// Graphs out of ONNX Runtime's own optimiser differentiate like the exported ones (same
/// fixtures and tolerances as above).
#[test]
fn should_diff_models_optimised_by_onnx_runtime() {
    let model = ort_optimised("tests/data/autodiff/inception.onnx");
    let input = fixture_input("tests/data/autodiff/inception_input.npy");
    check_model("inception", &model, input, 1e-5, 0.999_999);
    let model = ort_optimised("tests/data/autodiff/transformer.onnx");
    let input = fixture_input("tests/data/autodiff/transformer_input.npy");
    check_model("transformer", &model, input, 1e-5, 0.999_999);
}

/// The same two models from PyTorch's dynamo exporter (opset 18: ReduceMean with axes as an
/// input, Split with sizes, no Flatten/Shape subgraphs), same weights and fixtures.
#[test]
fn should_diff_models_from_the_dynamo_exporter() {
    let model = load("tests/data/autodiff/inception_dynamo.onnx");
    let input = fixture_input("tests/data/autodiff/inception_input.npy");
    check_model("inception", &model, input, 1e-5, 0.999_999);
    let model = load("tests/data/autodiff/transformer_dynamo.onnx");
    let input = fixture_input("tests/data/autodiff/transformer_input.npy");
    check_model("transformer", &model, input, 1e-5, 0.999_999);
}

/// A tiny BERT classifier (BertForSequenceClassification: its pooler takes `hidden[:, 0]`,
/// a Gather along the dynamic sequence axis; attention-mask and position subgraphs of Shape,
/// Slice, Range, Expand, Where, ConstantOfShape) as both torch exporters write it
/// (`scripts/make_bert_graphs.py`, tests/data/autodiff/bert/README.md): the gradient of the
/// target logit at the word-embedding output, through the prefix model and the gradient
/// model, against PyTorch autograd in float64, row by row (one row padded). Tolerance:
/// float32 through two layers, measured about 1e-6 relative; 1e-4 leaves room, while a
/// dropped mask or a wrong pooler position is off by tens of percents.
#[test]
fn should_diff_bert_classifiers_from_both_exporters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/autodiff/bert");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("graphs.json")).unwrap()).unwrap();
    let inputs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("inputs.json")).unwrap()).unwrap();
    let ints = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    for (file, wrt) in [
        (
            "bert_cls_script.onnx",
            "/m/bert/embeddings/word_embeddings/Gather_output_0",
        ),
        ("bert_cls_dynamo.onnx", "embedding"),
    ] {
        let model = load(&format!("tests/data/autodiff/bert/{file}"));
        let grad = build_gradient(
            &model,
            &GradOptions {
                wrt: vec![wrt.to_string()],
                objective: Objective::Logit,
                ..Default::default()
            },
        )
        .unwrap();
        let prefix = grad
            .prefix
            .as_ref()
            .expect("an inner point has a prefix model");
        for (row, target) in ints(&meta["targets"]).iter().enumerate() {
            let r = &inputs["rows"][row];
            let ids = ints(&r["input_ids"]);
            let len = ids.len() as i64;
            let t = |name: &str| T::ints(&[1, len], &ints(&r[name]));
            let (ids, mask, types) = (t("input_ids"), t("attention_mask"), t("token_type_ids"));
            let feeds = [
                ("input_ids", &ids),
                ("attention_mask", &mask),
                ("token_type_ids", &types),
            ];
            let reads = |m: &ModelProto, name: &str| {
                m.graph
                    .as_ref()
                    .unwrap()
                    .input
                    .iter()
                    .any(|i| i.name() == name)
            };
            let prefix_feeds: Vec<_> = feeds
                .iter()
                .copied()
                .filter(|(n, _)| reads(prefix, n))
                .collect();
            let embedding = run(prefix, &prefix_feeds)[wrt].clone();
            let mut c = vec![0.0; 3];
            c[*target as usize] = 1.0;
            let c = T::new(F32, &[1, 3], c);
            let mut all = feeds.to_vec();
            all.push((wrt, &embedding));
            all.push((COTANGENT, &c));
            // Each model takes only the inputs it reads.
            all.retain(|(n, _)| reads(&grad.model, n));
            let out = run(&grad.model, &all);
            let (_, want) = read(&format!("tests/data/autodiff/bert/grad_{row}.npy"));
            let [(rel, corr)] = compare(&out[GRAD].data, &want, 1)[..] else {
                unreachable!()
            };
            println!("{file} row {row}: relative L2 {rel:.2e}, correlation {corr:.8}");
            assert!(rel < 1e-4, "{file} row {row}: relative L2 {rel}");
            assert!(corr > 0.999_99, "{file} row {row}: correlation {corr}");
        }
    }
}

/// ONNX Runtime's transformer optimizer fuses the same model into com.microsoft ops
/// (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu): refused, naming
/// each op and how to get a graph integrad can differentiate.
#[test]
fn should_refuse_fused_transformer_ops_saying_what_to_export() {
    let model = load("tests/data/autodiff/bert/bert_cls_optimized.onnx");
    let err = build_gradient(
        &model,
        &GradOptions {
            wrt: vec!["EmbedLayerNormalization_0_output".into()],
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    for op in [
        "com.microsoft.Attention",
        "com.microsoft.SkipLayerNormalization",
        "com.microsoft.BiasGelu",
    ] {
        assert!(err.contains(op), "{op} not named: {err}");
    }
    assert!(err.contains("before the optimizer"), "{err}");
}
