//! integrad: Integrated Gradients for any ONNX model, computed inside ONNX Runtime and served
//! over gRPC beside existing model servers.
//!
//! The crate is a library plus the `integrad` binary. Data flows one way, one module each:
//! request -> `input` (decode, preprocess; tensors through the `wire` codec) -> `model` (the
//! ONNX Runtime sessions, each on its own worker thread; it knows nothing of IG) -> `explain`
//! (plan, integrate, respond) -> response. `autodiff` (the gradient-graph builder), `ig` (the
//! arithmetic of the method) and `image` (decoding, preprocessing, pictures, plots) are plain
//! libraries with no tonic or tokio; `server` is the gRPC face and `cli` the command line.

pub mod autodiff;
pub mod cli;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod ig;
pub mod image;
pub mod input;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod predictor;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod text;
pub mod wire;

/// Generated code for our API, the Open Inference Protocol and ONNX's protobuf format.
pub mod proto {
    pub mod integrad {
        pub mod v1 {
            tonic::include_proto!("integrad.v1");
        }
    }
    pub mod onnx {
        tonic::include_proto!("onnx");
    }
    /// The Open Inference Protocol (KServe V2), `proto/inference/grpc_service.proto`, and
    /// Triton's `proto/triton/model_config.proto` that it imports (the same package).
    pub mod inference {
        tonic::include_proto!("inference");
    }
    /// The encoded descriptor set of our API and the Open Inference Protocol, with their
    /// imports (for gRPC reflection, and Triton's ModelConfig for reading `config.pbtxt`).
    pub const INTEGRAD_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("integrad_descriptor");

    /// The messages of [`INTEGRAD_DESCRIPTOR_SET`], decoded once (to read and write them
    /// generically: text format, JSON).
    pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
        static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> =
            std::sync::OnceLock::new();
        // NOTE: built into the binary by build.rs; a failure is a build bug, and the unit
        // tests hit it first.
        POOL.get_or_init(|| {
            prost_reflect::DescriptorPool::decode(INTEGRAD_DESCRIPTOR_SET)
                .expect("build.rs encodes a valid descriptor set")
        })
    }

    /// The descriptor of the message `full_name` (such as `integrad.v1.ExplainRequest`).
    pub fn message_descriptor(full_name: &str) -> prost_reflect::MessageDescriptor {
        descriptor_pool()
            .get_message_by_name(full_name)
            .unwrap_or_else(|| panic!("the descriptor set declares {full_name}"))
    }
}

pub use error::Error;
