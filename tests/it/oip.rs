//! The Open Inference Protocol (`inference.GRPCInferenceService`) on the demo model: NVIDIA's
//! stock tritonclient against the real binary, a tonic client for typed contents and every
//! refusal, readiness, and gRPC reflection listing every service.
//!
//! tritonclient runs in `$INTEGRAD_TEST_TRITON_PYTHON`, else in a venv this test makes with
//! tests/python/requirements-tritonclient.txt; without it the test fails and says so.

use crate::common;

use std::process::Command;

use common::*;
use integrad::proto::inference as oip;
use integrad::proto::inference::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use tokio_stream::StreamExt;
use tonic::Code;

/// Same model, same input values, same worker and session at batch 1: the logits should be
/// the same floats. 1e-5 (about 1e-6 relative on logits of ~10) only allows ONNX Runtime to
/// split a reduction differently between runs; any real decoding bug (a wrong byte order, a
/// shifted or truncated tensor) moves logits by far more.
const SAME_RUN_TOLERANCE: f32 = 1e-5;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Our own Predict's logits for the preprocessed coffee photo.
async fn predict_logits(url: &str, model: &str) -> Vec<f32> {
    let (shape, data) = fixture("coffee_input.npy");
    let mut client =
        integrad::proto::integrad::v1::explainer_client::ExplainerClient::connect(url.to_string())
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20);
    let response = client
        .predict(tensor_request(model, &shape, &data))
        .await
        .unwrap()
        .into_inner();
    logits(&response)
}

#[tokio::test]
async fn should_serve_the_stock_tritonclient() {
    let python = python_venv(
        "INTEGRAD_TEST_TRITON_PYTHON",
        "python-tritonclient",
        "tests/python/requirements-tritonclient.txt",
        "import tritonclient.grpc, numpy",
    );
    let server = BinaryServer::start(&["--models", demo_models().to_str().unwrap()]).await;
    let script = root().join("tests/python/triton_client.py");
    let address = server.address.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(address)
            .arg("efficientnet-lite0")
            .arg(root().join("tests/data/coffee_input.npy"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "triton_client.py failed ({})\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"));
    assert_eq!(seen["live"], true, "{seen}");
    assert_eq!(seen["ready"], true, "{seen}");
    assert_eq!(seen["model_ready"], true, "{seen}");
    assert_eq!(seen["unknown_model_ready"], false, "{seen}");
    assert_eq!(seen["server"]["name"], "integrad");
    assert_eq!(seen["server"]["version"], env!("CARGO_PKG_VERSION"));
    let model = &seen["model"];
    assert_eq!(model["name"], "efficientnet-lite0");
    assert_eq!(model["versions"], serde_json::json!([]));
    assert_eq!(model["platform"], "onnxruntime_onnx");
    assert_eq!(
        model["inputs"],
        serde_json::json!([{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}])
    );
    assert_eq!(
        model["outputs"],
        serde_json::json!([{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}])
    );
    assert_eq!(seen["id"], "coffee-1");
    assert_eq!(seen["logits_dtype"], "float32");
    assert_eq!(seen["logits_shape"], serde_json::json!([1, 1000]));
    let theirs: Vec<f32> = seen["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let ours = predict_logits(&server.url, "efficientnet-lite0").await;
    let diff = max_diff(&theirs, &ours);
    assert!(diff <= SAME_RUN_TOLERANCE, "max |logit diff| {diff}");
    // And the answer is the photo's: espresso (class 967) on top.
    let top = (0..theirs.len())
        .max_by(|&a, &b| theirs[a].total_cmp(&theirs[b]))
        .unwrap();
    assert_eq!(top, 967);
    assert_eq!(seen["unknown_model_error"], "StatusCode.NOT_FOUND");
    assert_eq!(seen["bad_shape_error"], "StatusCode.INVALID_ARGUMENT");
    assert_eq!(seen["ready_after"], true);
}

/// A model's configuration, as Triton would return it for an ONNX model (`config.pbtxt` after
/// its auto-completion), through the stock tritonclient: integrad's layout (the demo models,
/// no batching declared, so max_batch_size 0 and the graph's shapes, -1 where any size goes),
/// a Triton layout that batches (max_batch_size 4: dims without the batch dimension), and an
/// unknown model refused with NOT_FOUND and a message.
#[tokio::test]
async fn should_give_the_stock_tritonclient_model_configurations() {
    let python = python_venv(
        "INTEGRAD_TEST_TRITON_PYTHON",
        "python-tritonclient",
        "tests/python/requirements-tritonclient.txt",
        "import tritonclient.grpc, numpy",
    );
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_models();
    for model in ["efficientnet-lite0", "penguins"] {
        std::os::unix::fs::symlink(demo.join(model), dir.path().join(model)).unwrap();
    }
    let classifier = dir.path().join("classifier");
    std::fs::create_dir_all(classifier.join("1")).unwrap();
    std::os::unix::fs::symlink(
        demo.join("efficientnet-lite0/model.onnx"),
        classifier.join("1/model.onnx"),
    )
    .unwrap();
    for file in ["integrad.toml", "labels.txt"] {
        std::fs::copy(
            demo.join("efficientnet-lite0").join(file),
            classifier.join(file),
        )
        .unwrap();
    }
    std::fs::write(
        classifier.join("config.pbtxt"),
        r#"
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "input", data_type: TYPE_FP32, dims: [ 3, 224, 224 ] } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 1000 ] } ]
"#,
    )
    .unwrap();
    let server = BinaryServer::start(&["--models", dir.path().to_str().unwrap()]).await;
    let script = root().join("tests/python/triton_model_config.py");
    let address = server.address.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(address)
            .args([
                "efficientnet-lite0",
                "penguins",
                "classifier",
                "no-such-model",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "triton_model_config.py failed ({})\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"));
    // Protobuf's JSON mapping: int64 dims are strings, and fields at their default (a
    // max_batch_size of 0) are left out.
    let tensor = |name: &str, data_type: &str, dims: &[&str]| serde_json::json!({"name": name, "data_type": data_type, "dims": dims});
    let efficientnet = &seen["efficientnet-lite0"];
    assert_eq!(efficientnet["name"], "efficientnet-lite0", "{seen}");
    assert_eq!(efficientnet["platform"], "onnxruntime_onnx", "{seen}");
    assert_eq!(efficientnet["backend"], "onnxruntime", "{seen}");
    assert_eq!(efficientnet.get("max_batch_size"), None, "{seen}");
    assert_eq!(
        efficientnet["input"],
        serde_json::json!([tensor("input", "TYPE_FP32", &["-1", "3", "224", "224"])])
    );
    assert_eq!(
        efficientnet["output"],
        serde_json::json!([tensor("logits", "TYPE_FP32", &["-1", "1000"])])
    );
    let penguins = &seen["penguins"];
    assert_eq!(
        penguins["input"],
        serde_json::json!([
            tensor("numeric", "TYPE_FP32", &["-1", "4"]),
            tensor("categorical", "TYPE_INT64", &["-1", "2"]),
        ]),
        "{seen}"
    );
    let classifier = &seen["classifier"];
    assert_eq!(classifier["name"], "classifier", "{seen}");
    assert_eq!(classifier["max_batch_size"], 4, "{seen}");
    assert_eq!(
        classifier["input"],
        serde_json::json!([tensor("input", "TYPE_FP32", &["3", "224", "224"])])
    );
    assert_eq!(
        classifier["output"],
        serde_json::json!([tensor("logits", "TYPE_FP32", &["1000"])])
    );
    let unknown = &seen["no-such-model"];
    assert_eq!(unknown["error"], "StatusCode.NOT_FOUND", "{seen}");
    assert!(
        unknown["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-model")),
        "{seen}"
    );
}

fn coffee_input(datatype: &str) -> InferInputTensor {
    InferInputTensor {
        name: "input".into(),
        datatype: datatype.into(),
        shape: vec![1, 3, 224, 224],
        ..Default::default()
    }
}

fn coffee_bytes() -> Vec<u8> {
    let (_, data) = fixture("coffee_input.npy");
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn raw_request(model: &str, input: InferInputTensor, raw: Vec<u8>) -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

fn raw_floats(bytes: &[u8]) -> Vec<f32> {
    integrad::wire::f32s(bytes)
}

#[tokio::test]
async fn should_take_typed_contents_and_refuse_bad_requests_with_clear_statuses() {
    let server = TestServer::start(&["--models", demo_models().to_str().unwrap()]).await;
    let mut client = server.inference().await;
    let model = "efficientnet-lite0";

    // Raw and typed contents carry the same values: the same logits.
    let raw = client
        .model_infer(raw_request(model, coffee_input("FP32"), coffee_bytes()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw.model_name, model);
    assert_eq!(raw.outputs.len(), 1, "every output when none is requested");
    assert_eq!(raw.outputs[0].name, "logits");
    assert_eq!(raw.outputs[0].datatype, "FP32");
    assert_eq!(raw.outputs[0].shape, vec![1, 1000]);
    let raw_logits = raw_floats(&raw.raw_output_contents[0]);
    let (_, data) = fixture("coffee_input.npy");
    let typed = client
        .model_infer(oip::ModelInferRequest {
            model_name: model.into(),
            inputs: vec![InferInputTensor {
                contents: Some(oip::InferTensorContents {
                    fp32_contents: data.clone(),
                    ..Default::default()
                }),
                ..coffee_input("FP32")
            }],
            outputs: vec![InferRequestedOutputTensor {
                name: "logits".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let typed_logits = raw_floats(&typed.raw_output_contents[0]);
    let diff = max_diff(&raw_logits, &typed_logits);
    assert!(diff <= SAME_RUN_TOLERANCE, "raw vs typed: {diff}");
    let predicted = predict_logits(&server.url, model).await;
    let diff = max_diff(&raw_logits, &predicted);
    assert!(diff <= SAME_RUN_TOLERANCE, "ModelInfer vs Predict: {diff}");

    let good = || raw_request(model, coffee_input("FP32"), coffee_bytes());
    let cases: Vec<(&str, oip::ModelInferRequest, Code, &str)> = vec![
        (
            "unknown model",
            oip::ModelInferRequest {
                model_name: "resnet".into(),
                ..good()
            },
            Code::NotFound,
            "resnet",
        ),
        (
            "a version of a model without versions",
            oip::ModelInferRequest {
                model_version: "2".into(),
                ..good()
            },
            Code::NotFound,
            "version",
        ),
        (
            "no model name",
            oip::ModelInferRequest {
                model_name: String::new(),
                ..good()
            },
            Code::InvalidArgument,
            "model_name",
        ),
        (
            "wrong datatype",
            raw_request(model, coffee_input("INT64"), coffee_bytes()),
            Code::InvalidArgument,
            "datatype",
        ),
        (
            "wrong shape",
            raw_request(
                model,
                InferInputTensor {
                    shape: vec![1, 3, 224, 223],
                    ..coffee_input("FP32")
                },
                coffee_bytes()[..3 * 224 * 223 * 4].to_vec(),
            ),
            Code::InvalidArgument,
            "shape",
        ),
        (
            "wrong rank",
            raw_request(
                model,
                InferInputTensor {
                    shape: vec![3, 224, 224],
                    ..coffee_input("FP32")
                },
                coffee_bytes(),
            ),
            Code::InvalidArgument,
            "shape",
        ),
        (
            "too few bytes",
            raw_request(model, coffee_input("FP32"), coffee_bytes()[4..].to_vec()),
            Code::InvalidArgument,
            "bytes",
        ),
        // NaN and infinities are refused as on integrad's own API (one policy for every
        // tensor): they would make every logit NaN without an error.
        (
            "a NaN in raw contents",
            raw_request(model, coffee_input("FP32"), {
                let mut bytes = coffee_bytes();
                bytes[4 * 1234..4 * 1235].copy_from_slice(&f32::NAN.to_le_bytes());
                bytes
            }),
            Code::InvalidArgument,
            "element 1234",
        ),
        (
            "an infinity in typed contents",
            oip::ModelInferRequest {
                model_name: model.into(),
                inputs: vec![InferInputTensor {
                    contents: Some(oip::InferTensorContents {
                        fp32_contents: {
                            let mut values = data.clone();
                            values[1234] = f32::NEG_INFINITY;
                            values
                        },
                        ..Default::default()
                    }),
                    ..coffee_input("FP32")
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            "element 1234",
        ),
        (
            "raw contents for no input",
            oip::ModelInferRequest {
                raw_input_contents: vec![coffee_bytes(), coffee_bytes()],
                ..good()
            },
            Code::InvalidArgument,
            "raw_input_contents",
        ),
        (
            "typed contents too short",
            oip::ModelInferRequest {
                model_name: model.into(),
                inputs: vec![InferInputTensor {
                    contents: Some(oip::InferTensorContents {
                        fp32_contents: data[1..].to_vec(),
                        ..Default::default()
                    }),
                    ..coffee_input("FP32")
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            "fp32_contents",
        ),
        (
            "typed contents in the wrong field",
            oip::ModelInferRequest {
                model_name: model.into(),
                inputs: vec![InferInputTensor {
                    contents: Some(oip::InferTensorContents {
                        fp64_contents: data.iter().map(|&v| f64::from(v)).collect(),
                        ..Default::default()
                    }),
                    ..coffee_input("FP32")
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            "fp64_contents",
        ),
        (
            "no data",
            oip::ModelInferRequest {
                raw_input_contents: Vec::new(),
                ..good()
            },
            Code::InvalidArgument,
            "no data",
        ),
        (
            "unknown input",
            raw_request(
                model,
                InferInputTensor {
                    name: "image".into(),
                    ..coffee_input("FP32")
                },
                coffee_bytes(),
            ),
            Code::InvalidArgument,
            "no input \"image\"",
        ),
        (
            "missing input",
            oip::ModelInferRequest {
                model_name: model.into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "missing",
        ),
        (
            "unknown output",
            oip::ModelInferRequest {
                outputs: vec![InferRequestedOutputTensor {
                    name: "probabilities".into(),
                    ..Default::default()
                }],
                ..good()
            },
            Code::InvalidArgument,
            "no output \"probabilities\"",
        ),
        (
            "a parameter integrad does not implement",
            oip::ModelInferRequest {
                parameters: [(
                    "priority".to_string(),
                    oip::InferParameter {
                        parameter_choice: Some(oip::infer_parameter::ParameterChoice::Int64Param(
                            1,
                        )),
                    },
                )]
                .into(),
                ..good()
            },
            Code::InvalidArgument,
            "priority",
        ),
    ];
    let binary_data_size = |n: i64| {
        let mut request = good();
        request.inputs[0].parameters = [(
            "binary_data_size".to_string(),
            oip::InferParameter {
                parameter_choice: Some(oip::infer_parameter::ParameterChoice::Int64Param(n)),
            },
        )]
        .into();
        request
    };
    let binary_data = |on: bool| oip::ModelInferRequest {
        outputs: vec![InferRequestedOutputTensor {
            name: "logits".into(),
            parameters: [(
                "binary_data".to_string(),
                oip::InferParameter {
                    parameter_choice: Some(oip::infer_parameter::ParameterChoice::BoolParam(on)),
                },
            )]
            .into(),
        }],
        ..good()
    };
    let cases = cases.into_iter().chain([
        (
            "binary_data_size (as the kserve client sends it) not the raw size",
            binary_data_size(1000),
            Code::InvalidArgument,
            "binary_data_size",
        ),
        (
            "outputs asked for as typed contents",
            binary_data(false),
            Code::InvalidArgument,
            "raw_output_contents",
        ),
    ]);
    for (what, request, code, mentions) in cases {
        let status = client.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(mentions),
            "{what}: {:?} should mention {mentions:?}",
            status.message()
        );
    }

    // The binary-data parameters the kserve client sends, when they say what integrad does.
    for request in [binary_data_size(3 * 224 * 224 * 4), binary_data(true)] {
        let response = client.model_infer(request).await.unwrap().into_inner();
        assert_eq!(raw_floats(&response.raw_output_contents[0]), raw_logits);
    }

    // Metadata refusals, and readiness of what does not exist.
    let status = client
        .model_metadata(oip::ModelMetadataRequest {
            name: "resnet".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let ready = client
        .model_ready(oip::ModelReadyRequest {
            name: model.into(),
            version: "7".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready, "a version that is not served is not ready");

    // The server kept serving through all of that.
    let again = client.model_infer(good()).await.unwrap().into_inner();
    assert_eq!(raw_floats(&again.raw_output_contents[0]), raw_logits);
    server.stop().await;
}

#[tokio::test]
async fn should_not_be_ready_without_a_loaded_model() {
    // A repository whose only model cannot load: loading finishes, nothing is ready.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("broken")).unwrap();
    std::fs::write(dir.path().join("broken/model.onnx"), b"not an onnx graph").unwrap();
    let server = BinaryServer::spawn(&["--models", dir.path().to_str().unwrap()]);
    let mut client = loop {
        match integrad::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::connect(
            server.url.clone(),
        )
        .await
        {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    let live = client
        .server_live(oip::ServerLiveRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(live.live);
    // Loading is over once ModelMetadata stops answering UNAVAILABLE ("still loading").
    loop {
        let status = client
            .model_metadata(oip::ModelMetadataRequest {
                name: "broken".into(),
                version: String::new(),
            })
            .await
            .unwrap_err();
        if status.code() != Code::Unavailable {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(status.message().contains("not an ONNX model"), "{status:?}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let ready = client
        .server_ready(oip::ServerReadyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
    let model_ready = client
        .model_ready(oip::ModelReadyRequest {
            name: "broken".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!model_ready.ready);
}

#[tokio::test]
async fn should_list_every_service_over_reflection() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha;

    let server = TestServer::start(&["--models", demo_models().to_str().unwrap()]).await;
    let expected = [
        "grpc.health.v1.Health",
        "inference.GRPCInferenceService",
        "integrad.v1.Explainer",
    ];

    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel.clone());
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("inference.GRPCInferenceService".into()),
    ]
    .map(|request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    });
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in expected
        .iter()
        .chain(&["grpc.reflection.v1.ServerReflection"])
    {
        assert!(
            names.iter().any(|n| n == service),
            "{service} not in {names:?}"
        );
    }
    // What `grpcurl describe` needs: the file that defines the service.
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("no file descriptor");
    };
    let file = <prost_types::FileDescriptorProto as prost::Message>::decode(
        files.file_descriptor_proto[0].as_slice(),
    )
    .unwrap();
    assert_eq!(file.package(), "inference");
    assert!(file
        .service
        .iter()
        .any(|s| s.name() == "GRPCInferenceService"));

    // Older clients (grpcurl before v1) ask v1alpha.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("no v1alpha service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in expected {
        assert!(
            names.iter().any(|n| n == service),
            "{service} not in {names:?}"
        );
    }
    server.stop().await;
}

/// features (INT64, [batch, 2]) -> Cast to float -> scores = x @ W (FP32, [batch, 3]) with
/// W = [[1, 0, -1], [0, 2, 0]], and class = ArgMax(scores, axis 1) (INT64, [batch]).
fn int64_model() -> Vec<u8> {
    use integrad::proto::onnx;
    use onnx::tensor_proto::DataType;
    let node = |op: &str, inputs: &[&str], output: &str, attribute| onnx::NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_0")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    };
    let int = |name: &str, v: i64| onnx::AttributeProto {
        name: Some(name.into()),
        r#type: Some(onnx::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    };
    let graph = onnx::GraphProto {
        name: Some("int64".into()),
        node: vec![
            node(
                "Cast",
                &["features"],
                "x",
                vec![int("to", DataType::Float as i64)],
            ),
            node("MatMul", &["x", "W"], "scores", vec![]),
            node(
                "ArgMax",
                &["scores"],
                "class",
                vec![int("axis", 1), int("keepdims", 0)],
            ),
        ],
        initializer: vec![onnx::TensorProto {
            name: Some("W".into()),
            dims: vec![2, 3],
            data_type: Some(DataType::Float as i32),
            float_data: vec![1.0, 0.0, -1.0, 0.0, 2.0, 0.0],
            ..Default::default()
        }],
        input: vec![typed_value_info(
            "features",
            &[None, Some(2)],
            DataType::Int64,
        )],
        output: vec![
            typed_value_info("scores", &[None, Some(3)], DataType::Float),
            typed_value_info("class", &[None], DataType::Int64),
        ],
        ..Default::default()
    };
    model_bytes(graph)
}

#[tokio::test]
async fn should_take_and_return_int64_tensors_and_honour_requested_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("int64.onnx");
    std::fs::write(&file, int64_model()).unwrap();
    let server = TestServer::start(&["--model-file", file.to_str().unwrap()]).await;
    let mut client = server.inference().await;

    let metadata = client
        .model_metadata(oip::ModelMetadataRequest {
            name: "int64".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let described =
        |t: &[oip::model_metadata_response::TensorMetadata]| -> Vec<(String, String, Vec<i64>)> {
            t.iter()
                .map(|t| (t.name.clone(), t.datatype.clone(), t.shape.clone()))
                .collect()
        };
    assert_eq!(
        described(&metadata.inputs),
        [("features".into(), "INT64".into(), vec![-1, 2])]
    );
    assert_eq!(
        described(&metadata.outputs),
        [
            ("scores".into(), "FP32".into(), vec![-1, 3]),
            ("class".into(), "INT64".into(), vec![-1])
        ]
    );

    // Rows [1, 2] and [3, -1]: scores [1, 4, -1] and [3, -2, -3] (small integers, exact in
    // float32), classes 1 and 0.
    let features = [1i64, 2, 3, -1];
    let input = InferInputTensor {
        name: "features".into(),
        datatype: "INT64".into(),
        shape: vec![2, 2],
        ..Default::default()
    };
    let requested = ["class", "scores"].map(|name| InferRequestedOutputTensor {
        name: name.into(),
        ..Default::default()
    });
    let raw = oip::ModelInferRequest {
        model_name: "int64".into(),
        inputs: vec![input.clone()],
        outputs: requested.to_vec(),
        raw_input_contents: vec![features.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    };
    let typed = oip::ModelInferRequest {
        inputs: vec![InferInputTensor {
            contents: Some(oip::InferTensorContents {
                int64_contents: features.to_vec(),
                ..Default::default()
            }),
            ..input.clone()
        }],
        raw_input_contents: Vec::new(),
        ..raw.clone()
    };
    for request in [raw.clone(), typed] {
        let response = client.model_infer(request).await.unwrap().into_inner();
        let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["class", "scores"], "the requested order");
        assert_eq!(response.outputs[0].datatype, "INT64");
        assert_eq!(response.outputs[0].shape, vec![2]);
        let classes: Vec<i64> = response.raw_output_contents[0]
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(classes, [1, 0]);
        assert_eq!(response.outputs[1].shape, vec![2, 3]);
        assert_eq!(
            raw_floats(&response.raw_output_contents[1]),
            [1.0, 4.0, -1.0, 3.0, -2.0, -3.0]
        );
    }

    // One output only, when only that one is asked for.
    let response = client
        .model_infer(oip::ModelInferRequest {
            outputs: vec![requested[1].clone()],
            ..raw.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.raw_output_contents.len(), 1);
    assert_eq!(response.outputs[0].name, "scores");

    let refused = [
        (
            "FP32 data for an INT64 input",
            oip::ModelInferRequest {
                inputs: vec![InferInputTensor {
                    datatype: "FP32".into(),
                    ..input.clone()
                }],
                raw_input_contents: vec![vec![0; 16]],
                ..raw.clone()
            },
            "datatype",
        ),
        (
            "INT64 values in int_contents",
            oip::ModelInferRequest {
                inputs: vec![InferInputTensor {
                    contents: Some(oip::InferTensorContents {
                        int_contents: vec![1, 2, 3, -1],
                        ..Default::default()
                    }),
                    ..input.clone()
                }],
                raw_input_contents: Vec::new(),
                ..raw.clone()
            },
            "int_contents",
        ),
        (
            "an output twice",
            oip::ModelInferRequest {
                outputs: vec![requested[0].clone(), requested[0].clone()],
                ..raw.clone()
            },
            "twice",
        ),
    ];
    for (what, request, mentions) in refused {
        let status = client.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(mentions), "{what}: {status:?}");
    }
    server.stop().await;
}
