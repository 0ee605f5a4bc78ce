//! `--model-file` with a model that has no config: names and the output kind come from the
//! graph, inputs are tensors only.

use crate::common;

use common::*;
use integrad::proto::integrad::v1 as pb;

#[tokio::test]
async fn should_serve_a_bare_onnx_file_with_tensor_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.onnx");
    std::fs::write(&file, tiny_classifier("Softmax")).unwrap();
    let server = TestServer::start(&["--model-file", file.to_str().unwrap()]).await;
    let mut client = server.client().await;

    let info = client
        .get_model(pb::GetModelRequest {
            model: "tiny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.inputs[0].name, "features",
        "input name read from the graph"
    );
    assert_eq!(info.output, "probs");
    assert_eq!(
        info.output_kind,
        pb::OutputKind::Probabilities as i32,
        "a Softmax at the output means probabilities"
    );
    assert!(info.preprocessing.is_none());

    // x = [1, 0.5]: scores = [1, 1, -1]; softmax = [e, e, 1/e] / (2e + 1/e).
    let response = client
        .predict(tensor_request("", &[2], &[1.0, 0.5]))
        .await
        .unwrap()
        .into_inner();
    let e = std::f32::consts::E;
    let z = 2.0 * e + 1.0 / e;
    assert_eq!(
        response.top.len(),
        3,
        "default top-5 is capped at the 3 classes"
    );
    let p = |class: i64| {
        response
            .top
            .iter()
            .find(|t| t.class_index == class)
            .unwrap()
            .clone()
    };
    // Probabilities pass through as the model gives them (no second softmax): float32 softmax
    // of O(1) values is exact to a few ulps.
    assert!((p(2).probability - (1.0 / e) / z).abs() < 1e-6);
    assert!((p(0).probability - e / z).abs() < 1e-6);
    assert!(
        (p(2).logit - p(2).probability.ln()).abs() < 1e-6,
        "logit is ln(probability) for such models"
    );
    assert_eq!(response.top[0].label, "", "no labels file, no labels");

    // Images need a preprocessing config this model does not have.
    let refused = client
        .predict(image_request("", sample("coffee.png"), 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("tensors only"),
        "{}",
        refused.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn should_serve_predict_but_refuse_explain_for_a_model_it_cannot_differentiate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wavy.onnx");
    // Sin has no gradient rule: the model predicts, but cannot be explained.
    std::fs::write(&file, tiny_classifier("Sin")).unwrap();
    let server = TestServer::start(&["--model-file", file.to_str().unwrap()]).await;
    let mut client = server.client().await;
    let info = client
        .get_model(pb::GetModelRequest {
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!info.explainable);
    assert!(
        info.not_explainable_reason.contains("Sin"),
        "names the op: {}",
        info.not_explainable_reason
    );
    let response = client
        .predict(tensor_request("", &[2], &[1.0, 0.5]))
        .await
        .unwrap()
        .into_inner();
    // sin([1, 1, -1]) = [0.841, 0.841, -0.841]: raw scores, top class 0 (ties by index).
    assert_eq!(response.top[0].class_index, 0);
    assert!((response.top[0].logit - 1f32.sin()).abs() < 1e-6);
    let request = pb::ExplainRequest {
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Tensor(pb::Tensor {
                shape: vec![2],
                dtype: 1,
                data: [1f32, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect(),
            })),
        }),
        ..Default::default()
    };
    let status = client.explain(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("Sin"), "{}", status.message());
    server.stop().await;
}
