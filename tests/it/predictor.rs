//! The explained model is the served model: `integrad serve --predictor URL` asks the model
//! server that answers users (here a second integrad process, whose Open Inference Protocol
//! service stands in for Triton) for the explained input's score, and reports in every
//! explanation whether it is integrad's own F(x). A predictor with the same model files agrees;
//! one that serves another file under the same name is reported, counted, and with
//! --require-consistent refused; one that cannot be reached is reported as an error.

use std::net::SocketAddr;

use integrad::config::{Cli, Command};
use integrad::proto::integrad::v1 as pb;
use integrad::proto::integrad::v1::explainer_client::ExplainerClient;
use integrad::proto::onnx;
use prost::Message;
use tonic::transport::Channel;

use crate::common::{
    demo_models, first_explanation, free_address, integrad, parse, root, sample, scrape, strings,
    value, BinaryServer,
};

/// The server's default --consistency-tolerance.
const TOLERANCE: f32 = 1e-3;
/// What the altered predictor adds to class 0's logit (its bias).
const SHIFT: f32 = 2.0;

fn penguin(bill_length_mm: f64) -> pb::Input {
    let values = [
        ("bill_length_mm", bill_length_mm),
        ("bill_depth_mm", 19.5),
        ("flipper_length_mm", 210.0),
        ("body_mass_g", 3950.0),
        ("island", 1.0),
        ("sex", 1.0),
    ];
    pb::Input {
        kind: Some(pb::input::Kind::Features(pb::FeatureRow {
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        })),
    }
}

fn explain_penguin(objective: pb::Objective, class: Option<i64>) -> pb::ExplainRequest {
    pb::ExplainRequest {
        model: "penguins".into(),
        input: Some(penguin(49.0)),
        objective: objective as i32,
        target: class.map(|c| pb::Target {
            kind: Some(pb::target::Kind::ClassIndex(c)),
        }),
        ..Default::default()
    }
}

async fn client(url: &str) -> ExplainerClient<Channel> {
    ExplainerClient::connect(url.to_string())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
}

/// `integrad serve --models MODELS --metrics-listen ADDR <args>`, and where its metrics are.
async fn start_explainer(models: &str, args: &[&str]) -> (BinaryServer, SocketAddr) {
    let metrics = free_address();
    let metrics_arg = metrics.to_string();
    let mut all = vec!["--models", models, "--metrics-listen", &metrics_arg];
    all.extend_from_slice(args);
    (BinaryServer::start(&all).await, metrics)
}

/// integrad_predictor_checks_total{model, result} as scraped now.
fn checks(metrics: SocketAddr, model: &str, result: &str) -> f64 {
    let samples = parse(&scrape(metrics).1);
    value(
        &samples,
        "integrad_predictor_checks_total",
        &[("model", model), ("result", result)],
    )
}

/// A repository with only the penguins model.
fn penguins_repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root().join("models/penguins"), repo.path().join("penguins"))
        .unwrap();
    repo
}

/// A repository where `penguins` is another model: the demo's files, but model.onnx with
/// [`SHIFT`] added to the bias of class 0's logit. Same inputs, outputs and labels, so only
/// its scores tell it apart.
fn altered_penguins_repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let folder = repo.path().join("penguins");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(root().join("models/penguins")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    let bytes = std::fs::read(folder.join("model.onnx")).unwrap();
    let mut model = onnx::ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let bias = graph
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some("mlp.2.bias"))
        .expect("the classifier's last bias");
    let raw = bias.raw_data.as_mut().expect("stored as raw bytes");
    let first = f32::from_le_bytes(raw[..4].try_into().unwrap()) + SHIFT;
    raw[..4].copy_from_slice(&first.to_le_bytes());
    std::fs::write(folder.join("model.onnx"), model.encode_to_vec()).unwrap();
    repo
}

/// The check of `r`, which a server with a predictor always adds.
fn check(r: &pb::Explanation) -> &pb::PredictorCheck {
    r.predictor
        .as_ref()
        .expect("an explanation with a predictor check")
}

/// Same models on both sides: every kind of model's score is the predictor's, and the check
/// says so. Without --predictor (the predictor server itself) there is no check at all.
#[tokio::test]
async fn should_agree_with_a_predictor_that_serves_the_same_models() {
    let models = demo_models();
    let models = models.to_str().unwrap();
    let predictor = BinaryServer::start(&["--models", models]).await;
    let (server, metrics) = start_explainer(models, &["--predictor", &predictor.url]).await;
    let mut explainer = client(&server.url).await;

    let image = pb::ExplainRequest {
        model: "efficientnet-lite0".into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(sample("chelsea.png"))),
        }),
        steps: Some(4),
        ..Default::default()
    };
    let text = pb::ExplainRequest {
        model: "sentiment".into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Text(pb::Text {
                text: "a wonderful, moving film".into(),
                pair: String::new(),
            })),
        }),
        steps: Some(8),
        ..Default::default()
    };
    let requests = [
        (
            "penguins",
            explain_penguin(pb::Objective::Unspecified, None),
        ),
        ("penguins", explain_penguin(pb::Objective::Logit, Some(0))),
        ("efficientnet-lite0", image),
        ("sentiment", text),
    ];
    for (model, request) in requests {
        let r = first_explanation(&mut explainer, request).await.unwrap();
        let c = check(&r);
        assert_eq!(c.url, predictor.url, "{model}");
        assert_eq!(c.model, model);
        assert_eq!(c.own_score, r.score_input, "{model}: own is F(x)");
        assert!(c.consistent, "{model}: {c:?}");
        assert!(c.warning.is_empty(), "{model}: {c:?}");
        // The same file in the same runtime: integrad's F(x) comes from its gradient graph's
        // row at alpha 1, the predictor's from the plain model, so only float32 rounding of
        // the two graphs differs, far inside the server's 1e-3.
        assert!(c.relative_difference <= 1e-5, "{model}: {c:?}");
        let scale = r.score_input.abs().max(integrad::predictor::SCORE_FLOOR);
        assert!(
            (c.served_score - r.score_input).abs() <= TOLERANCE * scale,
            "{model}: {c:?}"
        );
    }
    assert_eq!(checks(metrics, "penguins", "consistent"), 2.0);
    assert_eq!(checks(metrics, "efficientnet-lite0", "consistent"), 1.0);
    assert_eq!(checks(metrics, "sentiment", "consistent"), 1.0);

    let mut plain = client(&predictor.url).await;
    let r = first_explanation(
        &mut plain,
        explain_penguin(pb::Objective::Unspecified, None),
    )
    .await
    .unwrap();
    assert_eq!(r.predictor, None, "no --predictor, no check");
}

/// The predictor serves another file under the same name: every explanation of an Explain and
/// of each ExplainBatch instance says so with both scores, and the mismatches are counted.
#[tokio::test]
async fn should_report_and_count_a_predictor_that_serves_another_model() {
    let altered = altered_penguins_repository();
    let predictor = BinaryServer::start(&["--models", altered.path().to_str().unwrap()]).await;
    let repo = penguins_repository();
    let (server, metrics) = start_explainer(
        repo.path().to_str().unwrap(),
        &["--predictor", &predictor.url],
    )
    .await;
    let mut explainer = client(&server.url).await;

    // Class 0's logit: the altered model's is integrad's plus SHIFT.
    let r = first_explanation(
        &mut explainer,
        explain_penguin(pb::Objective::Logit, Some(0)),
    )
    .await
    .unwrap();
    let c = check(&r);
    assert!(!c.consistent, "{c:?}");
    assert_eq!(c.own_score, r.score_input);
    // SHIFT is added in float32 to a logit of a few units: rounding of the order of 1e-6.
    assert!((c.served_score - c.own_score - SHIFT).abs() < 1e-4, "{c:?}");
    assert!(c.relative_difference > TOLERANCE, "{c:?}");
    for part in [
        predictor.url.as_str(),
        &c.served_score.to_string(),
        &c.own_score.to_string(),
        "not the served model",
    ] {
        assert!(c.warning.contains(part), "{part:?} in {:?}", c.warning);
    }
    // The default objective (a probability) of the top class moves too.
    let r = first_explanation(
        &mut explainer,
        explain_penguin(pb::Objective::Unspecified, None),
    )
    .await
    .unwrap();
    assert!(!check(&r).consistent, "{:?}", r.predictor);
    assert_eq!(checks(metrics, "penguins", "mismatch"), 2.0);

    // ExplainBatch: one check per instance, each against that instance's own score.
    let bills = [39.0, 45.5, 52.0];
    let batch = pb::ExplainBatchRequest {
        request: Some(pb::ExplainRequest {
            model: "penguins".into(),
            objective: pb::Objective::Logit as i32,
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::ClassIndex(0)),
            }),
            ..Default::default()
        }),
        instances: bills
            .iter()
            .map(|&b| pb::Instance {
                input: Some(penguin(b)),
                ..Default::default()
            })
            .collect(),
        results_per_event: 0,
    };
    let mut stream = explainer.explain_batch(batch).await.unwrap().into_inner();
    let mut results = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(pb::explain_event::Event::Result(r)) = event.event {
            results.push(r);
        }
    }
    results.sort_by_key(|r| r.instance);
    assert_eq!(results.len(), bills.len());
    for r in &results {
        let c = check(r);
        assert_eq!(c.own_score, r.score_input, "instance {}", r.instance);
        assert!(!c.consistent, "instance {}: {c:?}", r.instance);
        // As above: SHIFT through float32 rounding.
        assert!(
            (c.served_score - c.own_score - SHIFT).abs() < 1e-4,
            "instance {}: {c:?}",
            r.instance
        );
    }
    assert_ne!(
        results[0].score_input, results[2].score_input,
        "the instances differ, so each was checked with its own input"
    );
    assert_eq!(checks(metrics, "penguins", "mismatch"), 5.0);

    // explain-batch through the server: each line carries its check, and a warning at the end
    // says how many are not consistent.
    let out = tempfile::tempdir().unwrap();
    let lines = out.path().join("penguins.jsonl");
    let rows = root().join("models/penguins/rows.csv");
    let output = integrad(strings(&[
        "explain-batch",
        "--server",
        &server.url,
        "--model",
        "penguins",
        "--input",
        rows.to_str().unwrap(),
        "--exclude",
        "species",
        "--out",
        lines.to_str().unwrap(),
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("explanations are not consistent with the server's predictor"),
        "{stderr}"
    );
    let lines = std::fs::read_to_string(&lines).unwrap();
    for line in lines.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["predictor"]["url"], predictor.url.as_str(), "{line}");
    }
}

/// With --require-consistent a mismatch fails the Explain with FAILED_PRECONDITION, naming the
/// predictor and both scores.
#[tokio::test]
async fn should_refuse_a_mismatch_with_require_consistent() {
    let altered = altered_penguins_repository();
    let predictor = BinaryServer::start(&["--models", altered.path().to_str().unwrap()]).await;
    let repo = penguins_repository();
    let (server, _) = start_explainer(
        repo.path().to_str().unwrap(),
        &["--predictor", &predictor.url, "--require-consistent"],
    )
    .await;
    let mut explainer = client(&server.url).await;
    let refused = first_explanation(
        &mut explainer,
        explain_penguin(pb::Objective::Logit, Some(0)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let message = refused.message();
    assert!(message.contains(&predictor.url), "{message}");
    // "... scores class 0 SERVED where integrad's model scores OWN: ..."
    let number = |after: &str| -> f32 {
        let rest = &message[message
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} in {message}"))
            + after.len()..];
        rest.split([' ', ':']).next().unwrap().parse().unwrap()
    };
    let (served, own) = (
        number("scores class 0 "),
        number("integrad's model scores "),
    );
    // SHIFT through float32 rounding, as in the report.
    assert!((served - own - SHIFT).abs() < 1e-4, "{message}");
}

/// A predictor that cannot be reached: reported as an error in the result and counted; with
/// --require-consistent, UNAVAILABLE (the predictor may come back; a retry may pass).
#[tokio::test]
async fn should_report_an_unreachable_predictor() {
    let nothing = format!("http://{}", free_address());
    let repo = penguins_repository();
    let models = repo.path().to_str().unwrap();
    let (server, metrics) = start_explainer(models, &["--predictor", &nothing]).await;
    let mut explainer = client(&server.url).await;
    let r = first_explanation(
        &mut explainer,
        explain_penguin(pb::Objective::Unspecified, None),
    )
    .await
    .unwrap();
    let c = check(&r);
    assert!(!c.consistent, "{c:?}");
    assert!(c.served_score.is_nan(), "no served score: {c:?}");
    assert_eq!(c.own_score, r.score_input);
    assert!(c.warning.contains("cannot check"), "{c:?}");
    assert!(c.warning.contains(&nothing), "{c:?}");
    assert_eq!(checks(metrics, "penguins", "error"), 1.0);
    let json = integrad::cli::json::explanation(&r, false);
    assert_eq!(json["predictor"]["served_score"], serde_json::Value::Null);
    assert_eq!(json["predictor"]["consistent"], false);

    let (strict, _) =
        start_explainer(models, &["--predictor", &nothing, "--require-consistent"]).await;
    let mut strict = client(&strict.url).await;
    let refused = first_explanation(
        &mut strict,
        explain_penguin(pb::Objective::Unspecified, None),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains(&nothing), "{refused:?}");
}

/// KServe's --predictor_host HOST is http://HOST (port 80 unless it names one); --predictor
/// wins over it, and a URL without a scheme is plaintext.
#[test]
fn should_map_kserve_predictor_host_to_a_url() {
    let url = |args: &[&str]| {
        let mut argv = vec!["integrad", "serve"];
        argv.extend_from_slice(args);
        let Command::Serve(serve) = Cli::parse_with_config(argv).unwrap().command else {
            unreachable!()
        };
        serve.predictor.url(&serve.kserve)
    };
    assert_eq!(url(&[]), None);
    assert_eq!(
        url(&["--predictor_host", "penguins-predictor.default"]).as_deref(),
        Some("http://penguins-predictor.default:80")
    );
    assert_eq!(
        url(&["--predictor_host", "penguins-predictor.default:8081"]).as_deref(),
        Some("http://penguins-predictor.default:8081")
    );
    assert_eq!(
        url(&["--predictor_host", "[::1]"]).as_deref(),
        Some("http://[::1]:80")
    );
    assert_eq!(
        url(&["--predictor", "127.0.0.1:8001"]).as_deref(),
        Some("http://127.0.0.1:8001")
    );
    assert_eq!(
        url(&[
            "--predictor",
            "https://triton:8001",
            "--predictor_host",
            "penguins-predictor.default"
        ])
        .as_deref(),
        Some("https://triton:8001")
    );
}
