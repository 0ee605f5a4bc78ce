//! Shared set-up for integration tests: a real integrad server on a loopback port, a real
//! tonic client, and the shipped fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use integrad::config::{Cli, Command};
use integrad::proto::integrad::v1 as pb;
use integrad::proto::integrad::v1::explainer_client::ExplainerClient;
use integrad::proto::onnx;
use prost::Message;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn demo_models() -> PathBuf {
    root().join("models")
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(root().join("samples").join(name)).unwrap()
}

pub fn fixture(name: &str) -> (Vec<usize>, Vec<f32>) {
    match integrad::npy::read(&root().join("tests/data").join(name)).unwrap() {
        integrad::npy::NpyArray::F32 { shape, data } => (shape, data),
        other => panic!("{name}: expected float32, got {other:?}"),
    }
}

pub struct TestServer {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), integrad::server::ServeError>>,
}

impl TestServer {
    /// Starts `integrad serve <args>` in-process on a free loopback port and waits for SERVING.
    pub async fn start(args: &[&str]) -> Self {
        let mut argv = vec!["integrad", "serve"];
        argv.extend_from_slice(args);
        let Command::Serve(serve) = Cli::parse_from(argv).command else {
            unreachable!()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(integrad::server::serve(serve, listener, async move {
            let _ = stopped.await;
        }));
        let server = Self {
            url,
            stop: Some(stop),
            task,
        };
        server.wait_serving().await;
        server
    }

    pub async fn client(&self) -> ExplainerClient<Channel> {
        ExplainerClient::connect(self.url.clone())
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn health(&self) -> ServingStatus {
        health(&self.url).await
    }

    async fn wait_serving(&self) {
        wait_serving(&self.url).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

/// The overall status of the server at `url` (grpc.health.v1).
pub async fn health(url: &str) -> ServingStatus {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    ServingStatus::try_from(response.into_inner().status).unwrap()
}

/// Waits until the server at `url` (in-process or the binary) reports SERVING.
pub async fn wait_serving(url: &str) {
    // Loading and warming up the demo model takes well under a second warm; a cold first
    // run also fetches ONNX Runtime with pip, hence the generous bound.
    for _ in 0..1200 {
        let connected = Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
            .is_ok();
        if connected && health(url).await == ServingStatus::Serving {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server at {url} never reported SERVING");
}

pub fn image_request(model: &str, bytes: Vec<u8>, top_k: u32) -> pb::PredictRequest {
    pb::PredictRequest {
        model: model.into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(bytes)),
        }),
        top_k,
    }
}

pub fn tensor_request(model: &str, shape: &[usize], data: &[f32]) -> pb::PredictRequest {
    let tensor = pb::Tensor {
        shape: shape.iter().map(|&d| d as i64).collect(),
        dtype: pb::DataType::Float32 as i32,
        data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    pb::PredictRequest {
        model: model.into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Tensor(tensor)),
        }),
        top_k: 0,
    }
}

pub fn logits(response: &pb::PredictResponse) -> Vec<f32> {
    let t = response.logits.as_ref().unwrap();
    t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_integrad"))
}

pub fn value_info(name: &str, dims: &[Option<i64>]) -> onnx::ValueInfoProto {
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

/// out = op(x @ W) with W = [[1, 0, -1], [0, 2, 0]]: a 2-feature, 3-class classifier; with
/// op "Softmax" its output is probabilities.
pub fn tiny_classifier(op: &str) -> Vec<u8> {
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
            node(op, &["scores"], "probs"),
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
