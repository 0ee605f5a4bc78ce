//! A Triton model repository served as is: config.pbtxt read, the newest version chosen,
//! integrad.toml beside config.pbtxt honoured, mixed with integrad's own layout, and the
//! Triton-layout model explained.

use crate::common;

use std::path::Path;

use common::*;
use integrad::proto::inference as oip;
use integrad::proto::inference::model_infer_request::InferInputTensor;
use integrad::proto::integrad::v1 as pb;
use tonic::Code;

const CONFIG: &str = r#"
# As Triton's own examples write it.
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 1000 ]
  }
]
instance_group [ { count: 1, kind: KIND_CPU } ]
"#;

/// `classifier` (Triton layout: version 1 is not even ONNX, version 3 is the demo model, with
/// the demo's integrad.toml and labels beside config.pbtxt), `efficientnet-lite0` (integrad's
/// layout) and `mismatched` (a config.pbtxt whose dims the graph does not have).
fn repository(dir: &Path) {
    let demo = demo_models().join("efficientnet-lite0");
    let classifier = dir.join("classifier");
    std::fs::create_dir_all(classifier.join("1")).unwrap();
    std::fs::create_dir_all(classifier.join("3")).unwrap();
    std::fs::write(classifier.join("1/model.onnx"), b"version 1: not a model").unwrap();
    std::os::unix::fs::symlink(demo.join("model.onnx"), classifier.join("3/model.onnx")).unwrap();
    std::fs::write(classifier.join("config.pbtxt"), CONFIG).unwrap();
    for file in ["integrad.toml", "labels.txt"] {
        std::fs::copy(demo.join(file), classifier.join(file)).unwrap();
    }
    std::os::unix::fs::symlink(&demo, dir.join("efficientnet-lite0")).unwrap();
    let mismatched = dir.join("mismatched");
    std::fs::create_dir_all(mismatched.join("1")).unwrap();
    std::os::unix::fs::symlink(demo.join("model.onnx"), mismatched.join("1/model.onnx")).unwrap();
    std::fs::write(
        mismatched.join("config.pbtxt"),
        CONFIG
            .replace("classifier", "mismatched")
            .replace("224, 224", "256, 256"),
    )
    .unwrap();
}

fn infer(model: &str, version: &str, batch: usize) -> oip::ModelInferRequest {
    let (_, data) = fixture("coffee_input.npy");
    let one: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    oip::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![batch as i64, 3, 224, 224],
            ..Default::default()
        }],
        raw_input_contents: vec![one.repeat(batch)],
        ..Default::default()
    }
}

#[tokio::test]
async fn should_serve_and_explain_a_triton_repository() {
    let dir = tempfile::tempdir().unwrap();
    repository(dir.path());
    let server = TestServer::start(&["--models", dir.path().to_str().unwrap()]).await;

    // Both layouts in one repository; a bad config.pbtxt fails that model only, with why.
    let mut explainer = server.client().await;
    let models = explainer
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["classifier", "efficientnet-lite0", "mismatched"]);
    assert!(models[0].error.is_empty(), "{:?}", models[0].error);
    assert!(models[1].error.is_empty(), "{:?}", models[1].error);
    assert!(
        models[2].error.contains("does not fit"),
        "{:?}",
        models[2].error
    );

    let mut client = server.inference().await;
    let metadata = client
        .model_metadata(oip::ModelMetadataRequest {
            name: "classifier".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.versions, ["3"]);
    assert_eq!(metadata.platform, "onnxruntime_onnx");
    let input = &metadata.inputs[0];
    assert_eq!(
        (
            input.name.as_str(),
            input.datatype.as_str(),
            &input.shape[..]
        ),
        ("input", "FP32", &[-1, 3, 224, 224][..])
    );
    let output = &metadata.outputs[0];
    assert_eq!(
        (
            output.name.as_str(),
            output.datatype.as_str(),
            &output.shape[..]
        ),
        ("logits", "FP32", &[-1, 1000][..])
    );

    for (version, ready) in [("", true), ("3", true), ("1", false)] {
        let answer = client
            .model_ready(oip::ModelReadyRequest {
                name: "classifier".into(),
                version: version.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.ready, ready, "version {version:?}");
    }

    // Version 3 answers (version 1 is not a model: had it been picked, nothing would load),
    // with the same logits as the same file in integrad's layout.
    let triton = client
        .model_infer(infer("classifier", "3", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(triton.model_version, "3");
    assert_eq!(triton.outputs[0].shape, vec![2, 1000]);
    let plain = client
        .model_infer(infer("efficientnet-lite0", "", 2))
        .await
        .unwrap()
        .into_inner();
    let a = integrad::wire::f32s(&triton.raw_output_contents[0]);
    let b = integrad::wire::f32s(&plain.raw_output_contents[0]);
    // Same file, same input, two sessions with the same settings: the same floats up to how
    // ONNX Runtime splits a reduction (1e-5 on logits of ~10, ~1e-6 relative).
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5, "max |logit diff| {diff}");

    let refused = [
        (infer("classifier", "1", 1), Code::NotFound, "version"),
        (
            infer("classifier", "", 5),
            Code::InvalidArgument,
            "max_batch_size",
        ),
        (
            infer("mismatched", "", 1),
            Code::FailedPrecondition,
            "does not fit",
        ),
    ];
    for (request, code, mentions) in refused {
        let status = client.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(mentions), "{status:?}");
    }

    // Explain: the gradient models were built at load, the labels come from integrad.toml
    // beside config.pbtxt.
    let mut stream = explainer
        .explain(pb::ExplainRequest {
            model: "classifier".into(),
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Image(sample("coffee.png"))),
            }),
            steps: Some(16),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut explanation = None;
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(pb::explain_event::Event::Result(r)) = event.event {
            explanation = Some(r);
        }
    }
    let explanation = explanation.expect("an explanation");
    assert_eq!(
        (explanation.target_class, explanation.label.as_str()),
        (967, "espresso")
    );
    assert_eq!(
        explanation.attributions.as_ref().unwrap().shape,
        vec![3, 224, 224]
    );
    assert!(explanation.score_input > explanation.score_baseline);
    server.stop().await;
}
