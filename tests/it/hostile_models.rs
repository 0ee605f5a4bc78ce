//! Hostile model files in a repository beside a good model: not ONNX, cut short, a graph with
//! a cycle, an initializer that claims terabytes, external data outside the model's folder
//! (relative with `..`, absolute) or past its file's end, an operator from an unknown domain. Each is refused at load
//! with its reason in ListModels; the good model serves. And a model whose gradient graph
//! would be far larger than its forward graph: it loads, but Explain's gradient models are
//! refused, with the reason in ListModels.

use crate::common;

use common::*;
use integrad::proto::integrad::v1 as pb;
use integrad::proto::onnx;
use prost::Message;

/// The tiny classifier's graph, to be spoiled.
fn tiny() -> onnx::ModelProto {
    onnx::ModelProto::decode(tiny_classifier("Softmax").as_slice()).unwrap()
}

fn graph(model: &mut onnx::ModelProto) -> &mut onnx::GraphProto {
    model.graph.as_mut().unwrap()
}

/// Its weights kept as external data: `length` bytes of `location`.
fn external_weights(location: &str, length: &str) -> Vec<u8> {
    let mut model = tiny();
    let w = &mut graph(&mut model).initializer[0];
    w.float_data.clear();
    w.data_location = Some(onnx::tensor_proto::DataLocation::External as i32);
    w.external_data = vec![
        onnx::StringStringEntryProto {
            key: Some("location".into()),
            value: Some(location.into()),
        },
        onnx::StringStringEntryProto {
            key: Some("length".into()),
            value: Some(length.into()),
        },
    ];
    model.encode_to_vec()
}

fn hostile() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = tiny_classifier("Softmax");
    let mut cycle = tiny();
    // scores = MatMul(features, W) now reads probs, which Softmax makes from scores.
    graph(&mut cycle).node[0].input[0] = "probs".into();
    let mut huge = tiny();
    // 2 x 2^40 floats (8 TiB) claimed, 6 given; the graph agrees with the claim.
    graph(&mut huge).initializer[0].dims = vec![2, 1 << 40];
    graph(&mut huge).output[0] = value_info("probs", &[None, Some(1 << 40)]);
    let mut unknown = tiny();
    graph(&mut unknown).node[1].op_type = Some("Frobnicate".into());
    graph(&mut unknown).node[1].domain = Some("com.example.unknown".into());
    unknown.opset_import.push(onnx::OperatorSetIdProto {
        domain: Some("com.example.unknown".into()),
        version: Some(1),
    });
    vec![
        (
            "not-onnx",
            b"this is not an ONNX model".to_vec(),
            "is not an ONNX model",
        ),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "is not an ONNX model",
        ),
        ("cycle", cycle.encode_to_vec(), "not acyclic"),
        (
            "huge-initializer",
            huge.encode_to_vec(),
            "declares a size of 8796093022208 bytes",
        ),
        (
            "huge-external-data",
            external_weights("weights.bin", "8796093022208"),
            "which has 24 bytes",
        ),
        (
            "outside-relative",
            external_weights("../secret.bin", "24"),
            "not a relative path inside the model's folder",
        ),
        (
            "outside-absolute",
            external_weights("/etc/passwd", "24"),
            "not a relative path inside the model's folder",
        ),
        (
            "unknown-domain",
            unknown.encode_to_vec(),
            "com.example.unknown:Frobnicate",
        ),
    ]
}

#[tokio::test]
async fn should_refuse_hostile_model_files_with_their_reason_and_serve_the_others() {
    let repo = demo_repository(&["penguins"]);
    // What `..` would reach: never read.
    std::fs::write(repo.path().join("secret.bin"), [0u8; 24]).unwrap();
    let cases = hostile();
    for (name, bytes, _) in &cases {
        let dir = repo.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), bytes).unwrap();
        // The file external data may name: 24 bytes, the weights' size.
        std::fs::write(dir.join("weights.bin"), [0u8; 24]).unwrap();
    }
    let server = TestServer::start(&["--models", repo.path().to_str().unwrap()]).await;
    let mut client = server.client().await;
    let listed = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    for (name, _, reason) in &cases {
        let model = listed
            .models
            .iter()
            .find(|m| m.name == *name)
            .unwrap_or_else(|| panic!("{name} is listed: {listed:?}"));
        assert_eq!(
            model.state(),
            pb::ModelState::Failed,
            "{name} is refused: {model:?}"
        );
        assert!(!model.error.is_empty(), "{name} says why");
        assert!(
            model.error.contains(reason),
            "{name}: {:?} should say {reason:?}",
            model.error
        );
    }
    let penguins = listed.models.iter().find(|m| m.name == "penguins").unwrap();
    assert_eq!(penguins.state(), pb::ModelState::Ready);
    let row = [
        ("bill_length_mm", 49.0),
        ("bill_depth_mm", 19.5),
        ("flipper_length_mm", 210.0),
        ("body_mass_g", 3950.0),
        ("island", 1.0),
        ("sex", 1.0),
    ];
    let predicted = client
        .predict(pb::PredictRequest {
            model: "penguins".into(),
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Features(pb::FeatureRow {
                    values: row.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                })),
            }),
            ..Default::default()
        })
        .await;
    assert!(predicted.is_ok(), "the good model serves: {predicted:?}");
}

/// logits = Flatten(AveragePool(x, kernel 128 x 128)), x `[batch, 640, 128, 128]`: a model of
/// two nodes and no weights, whose gradient graph holds a kernel of ones for the pool's
/// backward pass (640 x 128 x 128 floats: 40 MiB), five times the 8 MiB a weightless
/// forward graph is allowed by default.
fn huge_gradient() -> Vec<u8> {
    let node = |op: &str, input: &str, output: &str, attribute| onnx::NodeProto {
        op_type: Some(op.into()),
        name: Some(op.into()),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute,
        ..Default::default()
    };
    let kernel = onnx::AttributeProto {
        name: Some("kernel_shape".into()),
        r#type: Some(onnx::attribute_proto::AttributeType::Ints as i32),
        ints: vec![128, 128],
        ..Default::default()
    };
    model_bytes(onnx::GraphProto {
        name: Some("huge-gradient".into()),
        node: vec![
            node("AveragePool", "x", "pooled", vec![kernel]),
            node("Flatten", "pooled", "logits", vec![]),
        ],
        input: vec![value_info("x", &[None, Some(640), Some(128), Some(128)])],
        output: vec![value_info("logits", &[None, Some(640)])],
        ..Default::default()
    })
}

/// A model whose gradient graph would be huge next to its forward graph is not made
/// explainable (ListModels says why, naming the flag that sets the limit); it still serves
/// Predict's model, and the others are explainable.
#[tokio::test]
async fn should_refuse_a_huge_gradient_graph_with_its_reason_and_serve_the_others() {
    let repo = demo_repository(&["penguins"]);
    std::fs::create_dir(repo.path().join("huge-gradient")).unwrap();
    std::fs::write(
        repo.path().join("huge-gradient/model.onnx"),
        huge_gradient(),
    )
    .unwrap();
    let server = TestServer::start(&["--models", repo.path().to_str().unwrap()]).await;
    let mut client = server.client().await;
    let listed = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let huge = listed
        .models
        .iter()
        .find(|m| m.name == "huge-gradient")
        .unwrap();
    assert_eq!(huge.state(), pb::ModelState::Ready, "{huge:?}");
    assert!(!huge.explainable);
    let reason = &huge.not_explainable_reason;
    assert!(
        reason.contains("gradient graph would be too large")
            && reason.contains("bytes of initializers, the forward graph has 0;")
            && reason.contains("--max-gradient-bytes-ratio"),
        "says why and how to allow it: {reason}"
    );
    let penguins = listed.models.iter().find(|m| m.name == "penguins").unwrap();
    assert!(penguins.explainable, "{penguins:?}");
}
