//! `--model-file` with a model that has no config: names and the output kind come from the
//! graph, inputs are tensors only.

mod common;

use common::*;
use integrad::proto::integrad::v1 as pb;
use integrad::proto::onnx;
use prost::Message;

fn value_info(name: &str, dims: &[Option<i64>]) -> onnx::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| onnx::tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => onnx::tensor_shape_proto::dimension::Value::DimValue(*v),
                None => onnx::tensor_shape_proto::dimension::Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    onnx::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(
                onnx::type_proto::Tensor {
                    elem_type: Some(onnx::tensor_proto::DataType::Float as i32),
                    shape: Some(onnx::TensorShapeProto { dim }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// probs = Softmax(x @ W) with W = [[1, 0, -1], [0, 2, 0]]: a 2-feature, 3-class classifier
/// whose output is already probabilities.
fn softmax_classifier() -> Vec<u8> {
    let weights = [1.0f32, 0.0, -1.0, 0.0, 2.0, 0.0];
    let w = onnx::TensorProto {
        name: Some("W".into()),
        dims: vec![2, 3],
        data_type: Some(onnx::tensor_proto::DataType::Float as i32),
        float_data: weights.to_vec(),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str| onnx::NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_0")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let graph = onnx::GraphProto {
        name: Some("tiny".into()),
        node: vec![
            node("MatMul", &["features", "W"], "scores"),
            node("Softmax", &["scores"], "probs"),
        ],
        initializer: vec![w],
        input: vec![value_info("features", &[None, Some(2)])],
        output: vec![value_info("probs", &[None, Some(3)])],
        ..Default::default()
    };
    let model = onnx::ModelProto {
        ir_version: Some(8),
        opset_import: vec![onnx::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

#[tokio::test]
async fn should_serve_a_bare_onnx_file_with_tensor_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.onnx");
    std::fs::write(&file, softmax_classifier()).unwrap();
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
