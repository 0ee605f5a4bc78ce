//! The model repository (integrad's layout and Triton's, see [`triton`]) and ONNX Runtime
//! sessions.
//!
//! Each loaded model owns one session on its own worker thread ([`worker`]); requests reach it
//! through a bounded channel, so ONNX Runtime never runs on tokio's threads.

pub mod batch;
pub mod config;
mod load;
mod repository;
pub mod triton;
mod worker;

use std::path::PathBuf;

pub use batch::{Batching, BatchingMode, Merge};
pub use config::{ModelConfig, OutputKind};
pub use load::{load_model, LoadOptions};
pub use repository::{ModelEntry, Repository};
pub use worker::{Caller, Worker, WorkerOptions};

use crate::image::Preprocessing;

/// Element types integrad moves across its API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I64,
    /// Any other ONNX element type (named as ONNX Runtime names it); such inputs can't be fed.
    Other(&'static str),
}

/// A dense row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub shape: Vec<i64>,
    pub values: Values,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl TensorData {
    pub fn f32(shape: Vec<i64>, data: Vec<f32>) -> Self {
        Self {
            shape,
            values: Values::F32(data),
        }
    }

    pub fn dtype(&self) -> DType {
        match self.values {
            Values::F32(_) => DType::F32,
            Values::I64(_) => DType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.values {
            Values::F32(v) => Some(v),
            Values::I64(_) => None,
        }
    }
}

/// A graph input or output as the session reports it; unknown dimensions are -1.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

/// The image input of a model: which graph input, and how pictures become its tensor.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub input: String,
    pub preprocessing: Preprocessing,
}

/// Everything known about a loaded model, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The input a Predict request fills (the config's, or the first).
    pub input: String,
    pub image: Option<ImageInput>,
    /// The output Predict reads and Explain differentiates.
    pub output: String,
    pub output_kind: OutputKind,
    pub labels: Vec<String>,
    /// `Err(reason)` when the model can't be explained.
    pub explainable: Result<(), String>,
    /// Set for a model from a Triton layout.
    pub triton: Option<TritonServing>,
    /// Where its sessions run.
    pub device: crate::device::Placement,
}

/// What a Triton-layout model adds to its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct TritonServing {
    /// The version directory served.
    pub version: u64,
    /// From config.pbtxt: above 0, the largest batch a request may send.
    pub max_batch_size: i64,
}

impl ModelSpec {
    pub fn input_spec(&self) -> &TensorSpec {
        self.inputs
            .iter()
            .find(|i| i.name == self.input)
            .expect("input validated at load")
    }

    pub fn output_spec(&self) -> &TensorSpec {
        self.outputs
            .iter()
            .find(|o| o.name == self.output)
            .expect("output validated at load")
    }
}

/// A model ready to serve: its facts and its worker.
#[derive(Clone)]
pub struct Model {
    pub spec: std::sync::Arc<ModelSpec>,
    pub worker: Worker,
    /// The gradient models, when the graph can be differentiated.
    pub gradients: Option<Gradients>,
}

/// IG step models of the served output w.r.t. the input ([`crate::ig::step`]: the gradient
/// model with interpolation and weighted sums inside).
#[derive(Clone)]
pub struct Gradients {
    /// Of the output as is (logits, or the probabilities of a model that outputs them).
    pub output: Worker,
    /// Of the softmax of the output; for models that output logits.
    pub softmax: Option<Worker>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("ONNX Runtime failed on model {model}: {reason}")]
    Runtime { model: String, reason: String },
    #[error("model {model} is shutting down")]
    WorkerGone { model: String },
}
