//! Sigmoid and score heads through a real server: two breast-cancer classifiers with the same
//! weights (one outputs a logit, the other ends in a Sigmoid) and a diabetes regression, all
//! made by scripts/make_head_fixtures.py, against Captum's Integrated Gradients on the PyTorch
//! models they were exported from (tests/data/heads/README.md).

use crate::common;

use common::{first_explanation, relative_l2, root, tensor, TestServer};
use integrad::proto::integrad::v1 as pb;
use tonic::Code;

const LOGIT: &str = "cancer-logit";
const SIGMOID: &str = "cancer-sigmoid";
const REGRESSION: &str = "diabetes-regression";

/// Float32 on both sides through the same quadrature nodes: what differs is the order of the
/// float32 sums over 64 alphas and the two runtimes' kernels. Measured (2026-12-03): at most
/// 2.0e-5 relative L2 (the probability from zeros, trapezoid, row 3; the logit and the
/// regression stay below 1e-6); 1e-4 bounds every case with a 5x margin, while a
/// wrong objective is off by far more (a softmax over the one column has no gradient at all:
/// error 1; the logit's gradient for the probability's misses the factor s(1 - s)).
const CAPTUM_TOLERANCE: f64 = 1e-4;

fn heads() -> std::path::PathBuf {
    root().join("tests/data/heads")
}

fn npy(model: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    match integrad::npy::read(&heads().join(model).join(name)).unwrap() {
        integrad::npy::NpyArray::F32 { shape, data } => (shape, data),
        other => panic!("{model}/{name}: expected float32, got {other:?}"),
    }
}

/// Row `r` of the model's `inputs.npy`, as an Input.
fn row(model: &str, r: usize) -> (Vec<f32>, pb::Input) {
    let (shape, data) = npy(model, "inputs.npy");
    let n = shape[1];
    let values = data[r * n..(r + 1) * n].to_vec();
    let input = pb::Input {
        kind: Some(pb::input::Kind::Tensor(tensor(&[n], &values))),
    };
    (values, input)
}

#[tokio::test]
async fn should_read_sigmoid_and_score_heads_and_match_captum() {
    let server = TestServer::start(&["--models", heads().to_str().unwrap()]).await;
    let mut client = server.client().await;
    let captum: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(heads().join("captum.json")).unwrap())
            .unwrap();

    // GetModel says which head each is, and where a Sigmoid output's logits are.
    let info = |name: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .get_model(pb::GetModelRequest { model: name.into() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let (logit, sigmoid, regression) = (
        info(LOGIT).await,
        info(SIGMOID).await,
        info(REGRESSION).await,
    );
    assert_eq!(
        logit.head,
        pb::HeadKind::Sigmoid as i32,
        "one column: not a softmax"
    );
    assert_eq!(logit.output_kind, pb::OutputKind::Logits as i32);
    assert_eq!(sigmoid.head, pb::HeadKind::Sigmoid as i32);
    assert_eq!(sigmoid.output_kind, pb::OutputKind::Probabilities as i32);
    assert!(!sigmoid.logits.is_empty(), "the Sigmoid's input is named");
    assert_eq!(regression.head, pb::HeadKind::Scores as i32);
    assert_eq!(regression.output_kind, pb::OutputKind::Scores as i32);
    assert!(logit.explainable && sigmoid.explainable && regression.explainable);

    // Predict: the logit model's probability is the sigmoid of its logit, and the same as the
    // Sigmoid model's (same weights); ONNX Runtime's outputs recorded by the script agree.
    for r in 0..4 {
        let predict = |model: &'static str| {
            let mut client = client.clone();
            let input = row(model, r).1;
            async move {
                client
                    .predict(pb::PredictRequest {
                        model: model.into(),
                        input: Some(input),
                        top_k: 0,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
            }
        };
        let (a, b) = (predict(LOGIT).await, predict(SIGMOID).await);
        assert_eq!((a.top.len(), b.top.len()), (1, 1), "one class: malignant");
        assert_eq!(a.top[0].label, "malignant");
        let expected = 1.0 / (1.0 + (-f64::from(a.top[0].logit)).exp());
        // Both are float32 probabilities of the same logits: a few ulps apart.
        assert!((f64::from(a.top[0].probability) - expected).abs() < 1e-6);
        assert!((a.top[0].probability - b.top[0].probability).abs() < 1e-6);
        let ort = captum["models"][SIGMOID]["ort_outputs"][r]
            .as_f64()
            .unwrap();
        assert!(
            (f64::from(b.top[0].probability) - ort).abs() < 1e-6,
            "row {r}"
        );
        let value = predict(REGRESSION).await;
        assert!(value.top.is_empty(), "a score head has no classes");
        let got = common::logits(&value)[0];
        let ort = captum["models"][REGRESSION]["ort_outputs"][r]
            .as_f64()
            .unwrap();
        // Outputs of ~100-300 in float32: 1e-5 relative is a few ulps.
        assert!((f64::from(got) - ort).abs() <= 1e-5 * ort.abs(), "row {r}");
    }

    // Explain against Captum, every case the script made, all four rows.
    let cases = [
        (LOGIT, pb::Objective::Logit, "logit"),
        (LOGIT, pb::Objective::Probability, "probability"),
        (SIGMOID, pb::Objective::Logit, "logit"),
        (SIGMOID, pb::Objective::Probability, "probability"),
        (REGRESSION, pb::Objective::Unspecified, "output"),
    ];
    for (model, objective, objective_name) in cases {
        for baseline in ["zeros", "median"] {
            let (_, baseline_values) = npy(model, &format!("baseline_{baseline}.npy"));
            for (method, suffix) in [
                (pb::Method::GaussLegendre, "gl64"),
                (pb::Method::Trapezoid, "trap64"),
            ] {
                let case = format!("ig_{objective_name}_{baseline}_{suffix}");
                let (shape, reference) = npy(model, &format!("{case}.npy"));
                let n = shape[1];
                let scores = &captum["models"][model]["cases"][&case];
                for r in 0..4 {
                    let explanation = first_explanation(
                        &mut client,
                        pb::ExplainRequest {
                            model: model.into(),
                            input: Some(row(model, r).1),
                            target: Some(pb::Target {
                                kind: Some(pb::target::Kind::ClassIndex(0)),
                            }),
                            objective: objective as i32,
                            baseline: Some(pb::Baseline {
                                kind: Some(pb::baseline::Kind::Tensor(tensor(
                                    &[n],
                                    &baseline_values,
                                ))),
                                samples: 0,
                            }),
                            method: method as i32,
                            steps: Some(64),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{model} {case} row {r}: {e}"));
                    let got = integrad::wire::f32s(&explanation.attributions.unwrap().data);
                    let want = &reference[r * n..(r + 1) * n];
                    let error = relative_l2(want, &got);
                    assert!(
                        error < CAPTUM_TOLERANCE,
                        "{model} {case} row {r}: relative L2 {error:.2e}"
                    );
                    // F at both ends is the objective Captum's forward computed (float32).
                    let f_input = scores["score_input"][r].as_f64().unwrap();
                    let f_baseline = scores["score_baseline"][r].as_f64().unwrap();
                    let close = |a: f32, b: f64| (f64::from(a) - b).abs() <= 1e-5 * (1.0 + b.abs());
                    assert!(
                        close(explanation.score_input, f_input),
                        "{model} {case} F(x)"
                    );
                    assert!(
                        close(explanation.score_baseline, f_baseline),
                        "{model} {case} F(x')"
                    );
                    let expected = match objective {
                        pb::Objective::Unspecified => pb::Objective::Value,
                        other => other,
                    };
                    assert_eq!(explanation.objective, expected as i32);
                }
            }
        }
    }

    // Objectives a head does not have are refused before any work; the server keeps serving.
    let refused = |model: &'static str, objective: pb::Objective| {
        let mut client = client.clone();
        async move {
            first_explanation(
                &mut client,
                pb::ExplainRequest {
                    model: model.into(),
                    input: Some(row(model, 0).1),
                    objective: objective as i32,
                    ..Default::default()
                },
            )
            .await
            .expect_err("refused")
        }
    };
    for (model, objective, mentions) in [
        (REGRESSION, pb::Objective::Probability, "OBJECTIVE_VALUE"),
        (REGRESSION, pb::Objective::Logit, "OBJECTIVE_VALUE"),
        (LOGIT, pb::Objective::Value, "classifier"),
    ] {
        let status = refused(model, objective).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{model} {objective:?}"
        );
        assert!(status.message().contains(mentions), "{}", status.message());
    }
    assert_eq!(
        server.health().await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// The CLI on a model without an image input writes the attributions, explanation.json and
/// the saturation plot, and no mask or overlay (there is no picture to draw on), in-process
/// and against a server.
#[tokio::test]
async fn should_explain_a_tabular_row_from_the_cli_without_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let (values, _) = row(REGRESSION, 0);
    let tensor = dir.path().join("row.npy");
    integrad::npy::write_f32(&tensor, &[values.len()], &values).unwrap();
    let model = heads().join(REGRESSION).join("model.onnx");
    let server = TestServer::start(&["--model-file", model.to_str().unwrap()]).await;
    for via_server in [false, true] {
        let out = dir.path().join(format!("out-{via_server}"));
        let mut command = std::process::Command::new(common::binary());
        command.args(["explain", "--tensor", tensor.to_str().unwrap()]);
        command.args(["--out", out.to_str().unwrap()]);
        match via_server {
            true => command.args(["--server", &server.url]),
            false => command.args(["--model-file", model.to_str().unwrap()]),
        };
        // Off the test's runtime thread, which also serves the in-process server.
        let run = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("explanation.json")).unwrap())
                .unwrap();
        assert_eq!(
            json["objective"], "OBJECTIVE_VALUE",
            "a score head's default"
        );
        assert!(out.join("attributions.npy").exists());
        assert!(out.join("saturation.png").exists());
        assert!(!out.join("mask.png").exists() && !out.join("overlay.png").exists());
    }

    // Predict prints a score head's values (it has no classes to rank).
    let run = std::process::Command::new(common::binary())
        .args(["predict", "--json", "--tensor", tensor.to_str().unwrap()])
        .args(["--model-file", model.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let captum: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(heads().join("captum.json")).unwrap())
            .unwrap();
    let ort = captum["models"][REGRESSION]["ort_outputs"][0]
        .as_f64()
        .unwrap();
    let got = json["values"][0].as_f64().unwrap();
    // ~200 in float32: 1e-5 relative is a few ulps.
    assert!((got - ort).abs() <= 1e-5 * ort.abs(), "{got} vs {ort}");
}
