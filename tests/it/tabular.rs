//! Tabular models with several inputs through a real server: the penguins demo
//! (models/penguins: numeric measurements and categorical ids looked up in one embedding
//! table) against Captum's Integrated Gradients on its one-hot equivalent
//! (tests/data/tabular/README.md), ExplainBatch against single Explains, the checks on
//! several inputs, and layer attribution.

use std::collections::HashMap;

use crate::common;

use common::{first_explanation, integrad, relative_l2, root, strings, TestServer};
use integrad::proto::integrad::v1 as pb;
use tonic::Code;

const MODEL: &str = "penguins";
const EMBEDDING: &str = "/embedding/Gather_output_0";
const NUMERIC: [&str; 4] = [
    "bill_length_mm",
    "bill_depth_mm",
    "flipper_length_mm",
    "body_mass_g",
];
const CATEGORICAL: [&str; 2] = ["island", "sex"];

/// Captum ran in float64, integrad in float32 through the same quadrature nodes; what
/// differs is float32 rounding in the model and in the sums over 64 alphas. Measured
/// (2026-12-04): at most 2.7e-6 relative L2 over a row's six feature attributions (all eight
/// cases, both objectives and methods); 1e-4 bounds it with a wide margin, while a wrong
/// baseline, a categorical attribution not summed over the embedding, or the wrong target is
/// off by tens of percents.
const CAPTUM_TOLERANCE: f64 = 1e-4;

type Client = pb::explainer_client::ExplainerClient<tonic::transport::Channel>;

fn data(name: &str) -> std::path::PathBuf {
    root().join("tests/data/tabular").join(name)
}

fn f32s(name: &str) -> (Vec<usize>, Vec<f32>) {
    match integrad::npy::read(&data(name)).unwrap() {
        integrad::npy::NpyArray::F32 { shape, data } => (shape, data),
        other => panic!("{name}: expected float32, got {other:?}"),
    }
}

fn i64s(name: &str) -> (Vec<usize>, Vec<i64>) {
    match integrad::npy::read(&data(name)).unwrap() {
        integrad::npy::NpyArray::I64 { shape, data } => (shape, data),
        other => panic!("{name}: expected int64, got {other:?}"),
    }
}

/// The rows of `numeric` / `categorical` fixtures (e.g. "numeric.npy", "categorical.npy").
struct Rows {
    numeric: Vec<f32>,
    categorical: Vec<i64>,
    count: usize,
}

impl Rows {
    fn load(numeric: &str, categorical: &str) -> Self {
        let (shape, numeric) = f32s(numeric);
        let (_, categorical) = i64s(categorical);
        Self {
            numeric,
            categorical,
            count: shape[0],
        }
    }

    /// Row `r` as tensors by input name.
    fn tensors(&self, r: usize) -> HashMap<String, pb::Input> {
        let numeric = &self.numeric[r * 4..(r + 1) * 4];
        let categorical = &self.categorical[r * 2..(r + 1) * 2];
        HashMap::from([
            (
                "numeric".to_string(),
                tensor_input(
                    &[4],
                    pb::DataType::Float32,
                    numeric.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
            ),
            (
                "categorical".to_string(),
                tensor_input(
                    &[2],
                    pb::DataType::Int64,
                    categorical.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
            ),
        ])
    }

    /// Row `r` as one feature row for both inputs.
    fn features(&self, r: usize) -> pb::Input {
        let mut values: HashMap<String, f64> = NUMERIC
            .iter()
            .zip(&self.numeric[r * 4..(r + 1) * 4])
            .map(|(n, &v)| (n.to_string(), f64::from(v)))
            .collect();
        for (n, &v) in CATEGORICAL
            .iter()
            .zip(&self.categorical[r * 2..(r + 1) * 2])
        {
            values.insert(n.to_string(), v as f64);
        }
        features_input(values)
    }
}

fn tensor_input(shape: &[i64], dtype: pb::DataType, data: Vec<u8>) -> pb::Input {
    pb::Input {
        kind: Some(pb::input::Kind::Tensor(pb::Tensor {
            shape: shape.to_vec(),
            dtype: dtype as i32,
            data,
        })),
    }
}

fn features_input(values: HashMap<String, f64>) -> pb::Input {
    pb::Input {
        kind: Some(pb::input::Kind::Features(pb::FeatureRow { values })),
    }
}

async fn server() -> TestServer {
    TestServer::start(&["--models", root().join("models").to_str().unwrap()]).await
}

/// Every explanation of an ExplainBatch call, by instance, and its progress events.
async fn explain_batch(
    client: &mut Client,
    request: pb::ExplainBatchRequest,
) -> Result<(Vec<pb::Explanation>, Vec<pb::Progress>), tonic::Status> {
    let mut stream = client.explain_batch(request).await?.into_inner();
    let (mut results, mut progress) = (Vec::new(), Vec::new());
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(pb::explain_event::Event::Result(r)) => results.push(r),
            Some(pb::explain_event::Event::Results(r)) => results.extend(r.explanations),
            Some(pb::explain_event::Event::Progress(p)) => progress.push(p),
            None => {}
        }
    }
    Ok((results, progress))
}

fn feature(r: &pb::Explanation, name: &str) -> f32 {
    r.features
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no feature {name} in {:?}", r.features))
        .attribution
}

fn values(t: &pb::Tensor) -> Vec<f32> {
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn should_describe_the_inputs_and_their_attribution_points() {
    let server = server().await;
    let mut client = server.client().await;
    let info = client
        .get_model(pb::GetModelRequest {
            model: MODEL.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.explainable, "{}", info.not_explainable_reason);
    let input = |name: &str| info.inputs.iter().find(|i| i.name == name).unwrap().clone();
    let (numeric, categorical) = (input("numeric"), input("categorical"));
    assert_eq!(numeric.kind, pb::InputKind::Features as i32);
    assert_eq!(numeric.features, NUMERIC);
    assert_eq!(categorical.kind, pb::InputKind::Features as i32);
    assert_eq!(categorical.features, CATEGORICAL);
    assert_eq!(categorical.dtype, pb::DataType::Int64 as i32);
    // Offsets [0, 3] into a 5-row table: island 0..=2, sex 0..=1.
    assert_eq!(
        (categorical.id_min, categorical.id_max),
        (vec![0, 0], vec![2, 1])
    );
    let points: Vec<(String, i32, String, Vec<i64>)> = info
        .attribution_points
        .iter()
        .map(|p| (p.tensor.clone(), p.kind, p.input.clone(), p.shape.clone()))
        .collect();
    assert_eq!(
        points,
        vec![
            (
                "numeric".into(),
                pb::AttributionPointKind::Input as i32,
                "numeric".into(),
                vec![-1, 4]
            ),
            (
                EMBEDDING.into(),
                pb::AttributionPointKind::Embedding as i32,
                "categorical".into(),
                vec![-1, 2, 3]
            ),
        ]
    );
}

#[tokio::test]
async fn should_match_captum_on_the_one_hot_equivalent() {
    let server = server().await;
    let mut client = server.client().await;
    let captum: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("captum.json")).unwrap()).unwrap();
    let rows = Rows::load("numeric.npy", "categorical.npy");
    let targets: Vec<i64> = captum["rows"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    let mut worst = 0f64;
    for (case, spec) in captum["cases"].as_object().unwrap() {
        let (objective, method) = (
            spec["objective"].as_str().unwrap(),
            spec["integrad_method"].as_str().unwrap(),
        );
        let mut request = pb::ExplainRequest {
            model: MODEL.into(),
            objective: match objective {
                "logit" => pb::Objective::Logit,
                _ => pb::Objective::Probability,
            } as i32,
            method: match method {
                "TRAPEZOID" => pb::Method::Trapezoid,
                _ => pb::Method::GaussLegendre,
            } as i32,
            steps: Some(spec["integrad_steps"].as_u64().unwrap() as u32),
            ..Default::default()
        };
        // The median is the model's configured default; zeros are asked for at the numeric
        // input only (the embedding's default is the zero vector either way).
        if spec["baseline"] == "zeros" {
            request.baselines.insert(
                "numeric".into(),
                pb::Baseline {
                    kind: Some(pb::baseline::Kind::Zeros(true)),
                    samples: 0,
                },
            );
        }
        // Half the rows as tensors by input name, half as feature rows: the same explanation.
        let instances = (0..rows.count)
            .map(|r| pb::Instance {
                input: (r % 2 == 1).then(|| rows.features(r)),
                inputs: if r % 2 == 0 {
                    rows.tensors(r)
                } else {
                    HashMap::new()
                },
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::ClassIndex(targets[r])),
                }),
            })
            .collect();
        let (mut results, _) = explain_batch(
            &mut client,
            pb::ExplainBatchRequest {
                request: Some(request),
                instances,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        results.sort_by_key(|r| r.instance);
        assert_eq!(results.len(), rows.count, "{case}");
        let (_, numeric_ref) = f32s(&format!("{case}_numeric.npy"));
        let (_, categorical_ref) = f32s(&format!("{case}_categorical.npy"));
        for (r, result) in results.iter().enumerate() {
            assert_eq!(result.target_class, targets[r]);
            let ours: Vec<f32> = NUMERIC
                .iter()
                .chain(&CATEGORICAL)
                .map(|n| feature(result, n))
                .collect();
            let theirs: Vec<f32> = numeric_ref[r * 4..(r + 1) * 4]
                .iter()
                .chain(&categorical_ref[r * 2..(r + 1) * 2])
                .copied()
                .collect();
            let d = relative_l2(&theirs, &ours);
            worst = worst.max(d);
            assert!(
                d < CAPTUM_TOLERANCE,
                "{case} row {r}: relative L2 {d}\n ours {ours:?}\n Captum {theirs:?}"
            );
            // F at both ends as Captum's float64 forward gives them (float32: 1e-5 relative).
            for (ours, key) in [
                (result.score_input, "score_input"),
                (result.score_baseline, "score_baseline"),
            ] {
                let want = spec[key][r].as_f64().unwrap();
                assert!(
                    (f64::from(ours) - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{case} row {r} {key}: {ours} vs {want}"
                );
            }
            // Completeness over both points together: the features add up to the sum.
            let total: f64 = ours.iter().map(|&a| f64::from(a)).sum();
            assert!(
                (total - f64::from(result.attribution_sum)).abs() < 1e-5,
                "{case} row {r}"
            );
            let tensors: f64 = result
                .tensor_attributions
                .values()
                .flat_map(values)
                .map(f64::from)
                .sum();
            assert!((tensors - f64::from(result.attribution_sum)).abs() < 1e-5);
            assert_eq!(result.attributed, ["numeric", EMBEDDING]);
            // The feature rows report values and baselines: a median's, and NaN at an
            // embedding (no id has the zero vector).
            let island = result.features.iter().find(|f| f.name == "island").unwrap();
            assert_eq!(island.value, rows.categorical[r * 2] as f64);
            assert!(island.baseline.is_nan());
        }
    }
    eprintln!("worst relative L2 to Captum: {worst:.2e}");
}

#[tokio::test]
async fn should_give_the_same_answer_alone_and_in_a_batch_of_64() {
    let server = server().await;
    let mut client = server.client().await;
    let rows = Rows::load("rows64_numeric.npy", "rows64_categorical.npy");
    let options = pb::ExplainRequest {
        model: MODEL.into(),
        target: Some(pb::Target {
            kind: Some(pb::target::Kind::TopK(2)),
        }),
        ..Default::default()
    };
    let (mut batched, progress) = explain_batch(
        &mut client,
        pb::ExplainBatchRequest {
            request: Some(options.clone()),
            instances: (0..rows.count)
                .map(|r| pb::Instance {
                    inputs: rows.tensors(r),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(batched.len(), 2 * rows.count, "two targets per row");
    // Progress covers the whole batch: it counts instances and every path's gradients.
    let last = progress.last().unwrap();
    assert_eq!(last.instances_total, rows.count as u32);
    assert_eq!(last.steps_done, last.steps_total);
    assert_eq!(last.steps_total as usize, rows.count * 51);
    assert!(
        progress.len() < rows.count,
        "rows shared gradient runs: {} runs",
        progress.len()
    );
    batched.sort_by_key(|r| (r.instance, r.target_class));
    for r in 0..rows.count {
        let mut alone = Vec::new();
        let mut stream = client
            .explain(pb::ExplainRequest {
                inputs: rows.tensors(r),
                ..options.clone()
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(event) = stream.message().await.unwrap() {
            if let Some(pb::explain_event::Event::Result(x)) = event.event {
                alone.push(x);
            }
        }
        alone.sort_by_key(|x| x.target_class);
        for (a, b) in alone.iter().zip(&batched[2 * r..2 * r + 2]) {
            assert_eq!(b.instance, r as u32);
            assert_eq!(a.target_class, b.target_class, "row {r}");
            for name in [&"numeric".to_string(), &EMBEDDING.to_string()] {
                let (x, y) = (
                    values(&a.tensor_attributions[name]),
                    values(&b.tensor_attributions[name]),
                );
                for (p, q) in x.iter().zip(&y) {
                    // The same rows through the same graph; alone, a row's gradients are
                    // summed by the step model's float32 MatMul, in the batch here in f64
                    // (measured: a few ulps apart).
                    assert!(
                        (p - q).abs() <= 1e-5 * p.abs().max(1.0),
                        "row {r} {name}: {x:?} vs {y:?}"
                    );
                }
            }
            assert!((a.score_input - b.score_input).abs() < 1e-6);
        }
    }
}

#[tokio::test]
async fn should_send_the_same_results_grouped_per_event() {
    let server = server().await;
    let mut client = server.client().await;
    let rows = Rows::load("rows64_numeric.npy", "rows64_categorical.npy");
    let request = |per_event: u32| pb::ExplainBatchRequest {
        request: Some(pb::ExplainRequest {
            model: MODEL.into(),
            ..Default::default()
        }),
        instances: (0..rows.count)
            .map(|r| pb::Instance {
                input: Some(rows.features(r)),
                ..Default::default()
            })
            .collect(),
        results_per_event: per_event,
    };
    let (mut one_by_one, _) = explain_batch(&mut client, request(0)).await.unwrap();
    let mut stream = client
        .explain_batch(request(10))
        .await
        .unwrap()
        .into_inner();
    let (mut grouped, mut sizes) = (Vec::new(), Vec::new());
    while let Some(event) = stream.message().await.unwrap() {
        match event.event {
            Some(pb::explain_event::Event::Results(r)) => {
                sizes.push(r.explanations.len());
                grouped.extend(r.explanations);
            }
            Some(pb::explain_event::Event::Result(_)) => panic!("a lone result"),
            _ => {}
        }
    }
    assert!(sizes.iter().all(|&n| (1..=10).contains(&n)), "{sizes:?}");
    assert_eq!(grouped.len(), rows.count);
    assert!(sizes.len() < rows.count, "{sizes:?}");
    one_by_one.sort_by_key(|r| r.instance);
    grouped.sort_by_key(|r| r.instance);
    for (a, b) in one_by_one.iter().zip(&grouped) {
        assert_eq!(a.instance, b.instance);
        // The same runs in the same order: only how the results travel differs, so every
        // number is bit-identical (elapsed_ms aside).
        assert_eq!(
            a.tensor_attributions, b.tensor_attributions,
            "row {}",
            a.instance
        );
        let bits = |r: &pb::Explanation| -> Vec<(String, u64, u64, u32)> {
            // As bits: an embedded column's baseline is NaN, which equals nothing.
            r.features
                .iter()
                .map(|f| {
                    let (v, b, a) = (f.value.to_bits(), f.baseline.to_bits(), f.attribution);
                    (f.name.clone(), v, b, a.to_bits())
                })
                .collect()
        };
        assert_eq!(bits(a), bits(b));
        assert_eq!(a.path, b.path);
        assert_eq!(a.score_input.to_bits(), b.score_input.to_bits());
        assert_eq!(a.score_baseline.to_bits(), b.score_baseline.to_bits());
    }
}

#[tokio::test]
async fn should_average_over_reference_rows_and_attribute_at_any_layer() {
    let server = server().await;
    let mut client = server.client().await;
    let rows = Rows::load("numeric.npy", "categorical.npy");
    // Expected gradients over 16 reference rows: F(x') is the mean over them, and the
    // attributions still add up to F(x) minus it (up to the quadrature error).
    let rows16 = first_explanation(
        &mut client,
        pb::ExplainRequest {
            model: MODEL.into(),
            input: Some(rows.features(0)),
            baseline: Some(pb::Baseline {
                kind: Some(pb::baseline::Kind::Reference(pb::ReferenceBaseline {
                    statistic: pb::ReferenceStatistic::Rows as i32,
                    rows: 16,
                    seed: 3,
                })),
                samples: 0,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(rows16.evaluations, 16 * 51);
    let gap = f64::from(rows16.score_input - rows16.score_baseline);
    // Trapezoid at 50 steps over 16 paths with a few ReLU kinks each: a few percent at most.
    assert!(
        f64::from(rows16.convergence_delta).abs() < 0.05 * gap.abs(),
        "{rows16:?}"
    );

    // Layer attribution at the Concat that feeds the MLP (Captum's LayerIntegratedGradients):
    // ten columns, zero baseline there, completeness at that layer.
    let layer = first_explanation(
        &mut client,
        pb::ExplainRequest {
            model: MODEL.into(),
            input: Some(rows.features(0)),
            attribute_to: vec!["/Concat_output_0".into()],
            objective: pb::Objective::Logit as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(layer.attributed, ["/Concat_output_0"]);
    assert_eq!(layer.attributions.as_ref().unwrap().shape, vec![10]);
    assert!(layer.features.is_empty(), "no named input is attributed");
    let relative =
        f64::from(layer.convergence_delta) / f64::from(layer.score_input - layer.score_baseline);
    assert!(relative.abs() < 0.05, "{layer:?}");

    // An explicit baseline at the embedding, in its shape: zeros as a tensor is the default.
    let zeros = |shape: &[i64]| pb::Baseline {
        kind: Some(pb::baseline::Kind::Tensor(pb::Tensor {
            shape: shape.to_vec(),
            dtype: pb::DataType::Float32 as i32,
            data: vec![0; 4 * shape.iter().product::<i64>() as usize],
        })),
        samples: 0,
    };
    let with_baseline = |baseline: pb::Baseline| pb::ExplainRequest {
        model: MODEL.into(),
        input: Some(rows.features(0)),
        baselines: HashMap::from([(EMBEDDING.to_string(), baseline)]),
        ..Default::default()
    };
    let default = first_explanation(&mut client, with_baseline(pb::Baseline::default()))
        .await
        .unwrap();
    let explicit = first_explanation(&mut client, with_baseline(zeros(&[2, 3])))
        .await
        .unwrap();
    let attributions =
        |r: &pb::Explanation| -> Vec<f32> { r.features.iter().map(|f| f.attribution).collect() };
    assert_eq!(attributions(&explicit), attributions(&default));
    let status = first_explanation(&mut client, with_baseline(zeros(&[6])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("[2, 3]"), "{status:?}");

    // Only the numeric input: the categorical ids are held fixed, so only four features.
    let numeric = first_explanation(
        &mut client,
        pb::ExplainRequest {
            model: MODEL.into(),
            input: Some(rows.features(0)),
            attribute_to: vec!["numeric".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let names: Vec<&str> = numeric.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, NUMERIC);
}

#[tokio::test]
async fn should_refuse_bad_inputs_by_name_and_keep_serving() {
    let server = TestServer::start(&[
        "--models",
        root().join("models").to_str().unwrap(),
        "--max-instances",
        "4",
    ])
    .await;
    let mut client = server.client().await;
    let rows = Rows::load("numeric.npy", "categorical.npy");
    let explain_with =
        |inputs: HashMap<String, pb::Input>, input: Option<pb::Input>| pb::ExplainRequest {
            model: MODEL.into(),
            inputs,
            input,
            ..Default::default()
        };
    let attributing = |name: &str| pb::ExplainRequest {
        attribute_to: vec![name.into()],
        ..explain_with(rows.tensors(0), None)
    };
    let mut missing = rows.tensors(0);
    missing.remove("categorical");
    let mut unknown = rows.tensors(0);
    unknown.insert("extra".into(), rows.tensors(0)["numeric"].clone());
    let mut wrong_type = rows.tensors(0);
    wrong_type.insert(
        "categorical".into(),
        tensor_input(
            &[2],
            pb::DataType::Float32,
            [1f32, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    );
    let mut out_of_range = rows.tensors(0);
    out_of_range.insert(
        "categorical".into(),
        tensor_input(
            &[2],
            pb::DataType::Int64,
            [0i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    );
    let mut row = HashMap::from([("island".to_string(), 3.0), ("sex".to_string(), 1.0)]);
    for (n, v) in NUMERIC.iter().zip([40.0, 18.0, 190.0, 3800.0]) {
        row.insert(n.to_string(), v);
    }
    let mut half_id = row.clone();
    half_id.insert("island".into(), 1.5);
    let mut unknown_feature = row.clone();
    unknown_feature.insert("age".into(), 3.0);
    unknown_feature.insert("island".into(), 1.0);
    let mut missing_feature = row.clone();
    missing_feature.remove("body_mass_g");
    missing_feature.insert("island".into(), 1.0);
    let cases: Vec<(&str, pb::ExplainRequest, &str, &[&str])> = vec![
        (
            "missing input",
            explain_with(missing, None),
            "inputs",
            &["\"categorical\"", "missing"],
        ),
        (
            "unknown input",
            explain_with(unknown, None),
            "inputs",
            &["\"extra\""],
        ),
        (
            "wrong dtype",
            explain_with(wrong_type, None),
            "inputs[\"categorical\"].tensor.dtype",
            &["I64"],
        ),
        (
            "id out of range",
            explain_with(out_of_range, None),
            "inputs[\"categorical\"].tensor",
            &["feature \"sex\"", "id 2", "0..=1"],
        ),
        (
            "id out of range in a row",
            explain_with(HashMap::new(), Some(features_input(row.clone()))),
            "input.features",
            &["\"island\"", "id 3", "0..=2"],
        ),
        (
            "fractional id",
            explain_with(HashMap::new(), Some(features_input(half_id))),
            "input.features",
            &["1.5", "not an integer"],
        ),
        (
            "unknown feature",
            explain_with(HashMap::new(), Some(features_input(unknown_feature))),
            "input.features",
            &["\"age\""],
        ),
        (
            "missing feature",
            explain_with(HashMap::new(), Some(features_input(missing_feature))),
            "input.features",
            &["body_mass_g"],
        ),
        (
            "one input for two",
            explain_with(HashMap::new(), Some(rows.tensors(0)["numeric"].clone())),
            "input",
            &["2 inputs", "keyed by name"],
        ),
        (
            "attribute_to unknown",
            attributing("nope"),
            "attribute_to",
            &["\"nope\""],
        ),
        (
            "attribute_to ids",
            attributing("categorical"),
            "attribute_to",
            &["no gradient", EMBEDDING],
        ),
        (
            "attribute_to an int tensor",
            attributing("/Add_output_0"),
            "attribute_to",
            &["not a float"],
        ),
        (
            "baseline of no point",
            pb::ExplainRequest {
                baselines: HashMap::from([(
                    "logits".to_string(),
                    pb::Baseline {
                        kind: Some(pb::baseline::Kind::Zeros(true)),
                        samples: 0,
                    },
                )]),
                ..explain_with(rows.tensors(0), None)
            },
            "baselines",
            &["\"logits\""],
        ),
        (
            "black at an embedding",
            pb::ExplainRequest {
                baselines: HashMap::from([(
                    EMBEDDING.to_string(),
                    pb::Baseline {
                        kind: Some(pb::baseline::Kind::Black(true)),
                        samples: 0,
                    },
                )]),
                ..explain_with(rows.tensors(0), None)
            },
            "baselines",
            &["inner tensor"],
        ),
    ];
    for (what, request, field, words) in cases {
        let status = first_explanation(&mut client, request)
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let message = status.message();
        assert!(message.starts_with(field), "{what}: {message}");
        for word in words {
            assert!(message.contains(word), "{what}: {word:?} not in {message}");
        }
    }
    // Predict checks inputs the same way.
    let status = client
        .predict(pb::PredictRequest {
            model: MODEL.into(),
            input: Some(features_input(row)),
            ..Default::default()
        })
        .await
        .expect_err("island 3");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Past --max-instances: RESOURCE_EXHAUSTED before any work; an empty batch is invalid.
    let batch = |n: usize| pb::ExplainBatchRequest {
        request: Some(pb::ExplainRequest {
            model: MODEL.into(),
            ..Default::default()
        }),
        instances: (0..n)
            .map(|r| pb::Instance {
                input: Some(rows.features(r)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let status = explain_batch(&mut client, batch(5)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-instances"), "{status:?}");
    let status = explain_batch(&mut client, batch(0)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A bad instance is named by its index.
    let mut bad = batch(3);
    bad.instances[2].input = Some(rows.tensors(0)["numeric"].clone());
    let status = explain_batch(&mut client, bad).await.unwrap_err();
    assert!(
        status.message().starts_with("instances[2].input"),
        "{status:?}"
    );

    // And the server kept serving.
    let (results, _) = explain_batch(&mut client, batch(4)).await.unwrap();
    assert_eq!(results.len(), 4);
}

/// `integrad explain-batch` of the demo's test rows (its label column left out) to `out`,
/// through `via` (a server or a repository), which must succeed.
async fn explain_batch_cli(via: &[&str], out: &std::path::Path, extra: &[&str]) {
    let rows = root().join("models/penguins/rows.csv");
    let mut args = strings(&["explain-batch", "--model", MODEL, "--exclude", "species"]);
    args.extend(strings(via));
    args.extend(strings(&[
        "--input",
        rows.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    args.extend(strings(extra));
    let run = integrad(args).await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[tokio::test]
async fn should_explain_a_row_and_a_data_set_from_the_cli() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let models = root().join("models");
    let models = models.to_str().unwrap();
    let rows_csv = root().join("models/penguins/rows.csv");
    let row = "bill_length_mm=39.1,bill_depth_mm=18.7,flipper_length_mm=181,body_mass_g=3750,island=2,sex=1";

    // One row: the features sorted by size, and features.png beside explanation.json.
    let out = dir.path().join("row");
    let run = integrad(strings(&[
        "explain",
        "--models",
        models,
        "--model",
        MODEL,
        "--features",
        row,
        "--out",
        out.to_str().unwrap(),
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("explanation.json")).unwrap())
            .unwrap();
    let features = json["features"].as_array().unwrap();
    assert_eq!(features.len(), 6);
    assert_eq!(features[0]["value"], 39.1, "the value as sent");
    let mut printed: Vec<(usize, f64)> = features
        .iter()
        .map(|f| {
            let name = f["name"].as_str().unwrap();
            let at = stdout
                .find(&format!("  {name} "))
                .unwrap_or_else(|| panic!("{name} not in {stdout}"));
            (at, f["attribution"].as_f64().unwrap().abs())
        })
        .collect();
    printed.sort_by_key(|&(at, _)| at);
    assert!(
        printed.windows(2).all(|w| w[0].1 >= w[1].1),
        "largest first: {stdout}"
    );
    let png = image::open(out.join("features.png")).unwrap();
    assert!(png.height() > 100);

    // A data set through the server and in-process: the same results, one line per row.
    let all = dir.path().join("all.jsonl");
    explain_batch_cli(&["--server", &server.url], &all, &["--chunk", "25"]).await;
    let read = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let lines = read(&all);
    let truth: Vec<i64> = std::fs::read_to_string(&rows_csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(lines.len(), truth.len());
    let rows: Vec<u64> = lines.iter().map(|l| l["row"].as_u64().unwrap()).collect();
    assert_eq!(
        rows,
        (0..truth.len() as u64).collect::<Vec<_>>(),
        "every row once, in order"
    );
    // The demo model is right on every test row (models/penguins/README.md: 84/84).
    for line in &lines {
        let row = line["row"].as_u64().unwrap() as usize;
        assert_eq!(line["target_class"], truth[row], "row {row}");
        let sum: f64 = line["tensor_attributions"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|t| {
                t["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
            })
            .sum();
        assert!((sum - line["attribution_sum"].as_f64().unwrap()).abs() < 1e-4);
    }

    // Shard 1 of 3 in-process: rows 1, 4, 7, ..., the same explanations as through the server.
    let shard = dir.path().join("shard.jsonl");
    explain_batch_cli(&["--models", models], &shard, &["--shard", "1/3"]).await;
    let shard = read(&shard);
    assert_eq!(
        shard.len(),
        truth.len().div_ceil(3) - usize::from(truth.len() % 3 == 1)
    );
    for line in &shard {
        let row = line["row"].as_u64().unwrap() as usize;
        assert_eq!(row % 3, 1);
        // The same rows through the same graph in other batches: float32 sums in another
        // order at most.
        let (a, b) = (&lines[row]["attribution_sum"], &line["attribution_sum"]);
        assert!(
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5,
            "row {row}: {a} vs {b}"
        );
    }

    // A column that is no feature, left in: the row is named and nothing is written after it.
    let bad = integrad(strings(&[
        "explain-batch",
        "--server",
        &server.url,
        "--model",
        MODEL,
        "--input",
        rows_csv.to_str().unwrap(),
        "--out",
        dir.path().join("bad.jsonl").to_str().unwrap(),
    ]))
    .await;
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("\"species\"") && stderr.contains("row 0"),
        "{stderr}"
    );
    // An output that can't be written fails before any work, naming the path.
    let unwritable = integrad(strings(&[
        "explain-batch",
        "--server",
        &server.url,
        "--model",
        MODEL,
        "--input",
        rows_csv.to_str().unwrap(),
        "--out",
        "/proc/nope/out.jsonl",
    ]))
    .await;
    assert!(String::from_utf8_lossy(&unwritable.stderr).contains("/proc/nope/out.jsonl"));
}

#[tokio::test]
async fn should_serve_both_inputs_over_the_open_inference_protocol() {
    use integrad::proto::inference as oip;
    use oip::model_infer_request::InferInputTensor;
    let server = server().await;
    let rows = Rows::load("numeric.npy", "categorical.npy");
    let request = |categorical: Vec<i64>| oip::ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![
            InferInputTensor {
                name: "numeric".into(),
                datatype: "FP32".into(),
                shape: vec![1, 4],
                contents: Some(oip::InferTensorContents {
                    fp32_contents: rows.numeric[..4].to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            InferInputTensor {
                name: "categorical".into(),
                datatype: "INT64".into(),
                shape: vec![1, 2],
                contents: Some(oip::InferTensorContents {
                    int64_contents: categorical,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let mut inference = server.inference().await;
    let answer = inference
        .model_infer(request(rows.categorical[..2].to_vec()))
        .await
        .unwrap()
        .into_inner();
    let logits = integrad::wire::f32s(&answer.raw_output_contents[0]);
    // The same model through integrad's own Predict: the same logits, bit for bit.
    let predicted = server
        .client()
        .await
        .predict(pb::PredictRequest {
            model: MODEL.into(),
            inputs: rows.tensors(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(logits, values(predicted.logits.as_ref().unwrap()));
    // An island id past its block of the shared table: refused before the run.
    let status = inference
        .model_infer(request(vec![3, 0]))
        .await
        .expect_err("island 3");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("\"island\""), "{status:?}");
}

#[tokio::test]
async fn should_sum_feature_groups_and_refuse_a_group_of_unknown_features() {
    let dir = tempfile::tempdir().unwrap();
    let copy = |to: &str, toml: &str| {
        let model = dir.path().join(to);
        std::fs::create_dir(&model).unwrap();
        for file in [
            "model.onnx",
            "labels.txt",
            "features.txt",
            "categorical.txt",
            "reference.csv",
        ] {
            std::fs::copy(root().join("models/penguins").join(file), model.join(file)).unwrap();
        }
        let base = std::fs::read_to_string(root().join("models/penguins/integrad.toml")).unwrap();
        std::fs::write(model.join("integrad.toml"), format!("{base}{toml}")).unwrap();
    };
    copy(
        "grouped",
        "groups = { size = [\"flipper_length_mm\", \"body_mass_g\"], where = [\"island\"] }\n",
    );
    copy("misgrouped", "groups = { size = [\"wingspan\"] }\n");
    let server = TestServer::start(&["--models", dir.path().to_str().unwrap()]).await;
    let mut client = server.client().await;
    let list = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let failed = list.models.iter().find(|m| m.name == "misgrouped").unwrap();
    assert_eq!(failed.state, pb::ModelState::Failed as i32);
    assert!(failed.error.contains("\"wingspan\""), "{}", failed.error);
    let info = list.models.iter().find(|m| m.name == "grouped").unwrap();
    assert_eq!(info.feature_groups.len(), 2);

    let rows = Rows::load("numeric.npy", "categorical.npy");
    let r = first_explanation(
        &mut client,
        pb::ExplainRequest {
            model: "grouped".into(),
            input: Some(rows.features(3)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let group = |name: &str| {
        r.feature_groups
            .iter()
            .find(|g| g.name == name)
            .unwrap()
            .attribution
    };
    let size = feature(&r, "flipper_length_mm") + feature(&r, "body_mass_g");
    assert!(
        (group("size") - size).abs() < 1e-6,
        "{:?}",
        r.feature_groups
    );
    assert_eq!(group("where"), feature(&r, "island"));
}
