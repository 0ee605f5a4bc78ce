//! The model repository (integrad's layout and Triton's, see [`triton`]) and ONNX Runtime
//! sessions.
//!
//! Each loaded model owns one session on its own worker thread ([`worker`]); requests reach it
//! through a bounded channel, so ONNX Runtime never runs on tokio's threads.

pub mod batch;
pub mod config;
pub mod external;
mod load;
mod repository;
pub mod tabular;
pub mod triton;
pub mod weights;
mod worker;

use std::path::PathBuf;

pub use batch::{Batching, BatchingMode, Merge, PathRules};
pub use config::{ModelConfig, OutputKind};
pub use load::{load_model, open_worker, with_threads, GradientLimits, LoadError, LoadOptions};
pub use repository::{check_dir, ModelEntry, Repository};
pub use tabular::{Lookup, Reference, Tabular};
#[cfg(test)]
pub(crate) use worker::panic_next_run;
pub use worker::{Caller, Submitted, Worker, WorkerOptions, Workers};

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

/// How a request fills a graph input.
#[derive(Debug, Clone)]
pub enum Feed {
    /// A tensor, sent as it is (without the batch axis).
    Tensor,
    /// An encoded picture, decoded and preprocessed into the tensor (or a tensor already so).
    Image(Preprocessing),
    /// Named columns of a `[batch, n]` input (a feature row), or its tensor.
    Features(Vec<String>),
}

/// One graph input and how it is fed.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub tensor: TensorSpec,
    pub feed: Feed,
}

impl InputSpec {
    pub fn name(&self) -> &str {
        &self.tensor.name
    }

    /// The image preprocessing, for an image input.
    pub fn preprocessing(&self) -> Option<&Preprocessing> {
        match &self.feed {
            Feed::Image(p) => Some(p),
            Feed::Tensor | Feed::Features(_) => None,
        }
    }

    /// The column names, for a tabular input.
    pub fn features(&self) -> Option<&[String]> {
        match &self.feed {
            Feed::Features(names) => Some(names),
            Feed::Tensor | Feed::Image(_) => None,
        }
    }
}

/// What the served output is, and how Predict and Explain read it.
#[derive(Debug, Clone)]
pub enum Head {
    /// One score per class on the output's last axis; probabilities are their softmax
    /// (`kind` Logits) or the output itself (Probabilities).
    Classes {
        output: String,
        kind: OutputKind,
        /// Class names (from `labels.txt`), or empty.
        labels: Vec<String>,
    },
    /// Independent yes/no scores (a one-column output, or one ending in a Sigmoid: binary or
    /// multi-label): a probability is the sigmoid of a logit.
    Sigmoid {
        output: String,
        kind: SigmoidKind,
        labels: Vec<String>,
    },
    /// Raw values (regression, several outputs), optionally named.
    Scores { output: String, names: Vec<String> },
}

impl Head {
    /// The output the head reads.
    pub fn output(&self) -> &str {
        match self {
            Head::Classes { output, .. }
            | Head::Sigmoid { output, .. }
            | Head::Scores { output, .. } => output,
        }
    }
}

/// What a sigmoid head's output holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigmoidKind {
    /// Logits: the probabilities are their sigmoid.
    Logits,
    /// Probabilities; `logits` names the tensor they are the sigmoid of (the final Sigmoid's
    /// input), when the graph ends in one.
    Probabilities { logits: Option<String> },
}

/// A tensor attributions are taken at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// A float graph input.
    Input(String),
    /// The output of a lookup of the int64 ids of graph input `input` in a float table.
    Embedding { tensor: String, input: String },
    /// Any other inner float tensor (layer attribution).
    Inner(String),
}

impl Point {
    /// The graph tensor's name.
    pub fn tensor(&self) -> &str {
        match self {
            Point::Input(name) | Point::Inner(name) => name,
            Point::Embedding { tensor, .. } => tensor,
        }
    }

    /// Whether the point is a graph input (fed directly) rather than an inner tensor.
    pub fn is_input(&self) -> bool {
        matches!(self, Point::Input(_))
    }
}

/// Everything known about a loaded model, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    /// Every graph input, in the graph's order (a Triton config's where it has one).
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<TensorSpec>,
    pub head: Head,
    /// Tables that int64 inputs index (embedding lookups), with their valid ids.
    pub lookups: Vec<Lookup>,
    /// Named columns, reference rows and groups of tabular inputs.
    pub tabular: Tabular,
    /// The tokenizer of a text model, and the inputs a text fills.
    pub text: Option<crate::text::TextSpec>,
    /// Where Explain attributes by default, or why the model can't be explained.
    pub attribution: Result<Vec<Point>, String>,
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
    /// The input called `name`.
    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name() == name)
    }

    /// The input of a model that has one image input, with its preprocessing.
    pub fn image(&self) -> Option<(&InputSpec, &Preprocessing)> {
        self.inputs
            .iter()
            .find_map(|i| i.preprocessing().map(|p| (i, p)))
    }

    /// The output Predict reads and Explain differentiates.
    pub fn output(&self) -> &str {
        self.head.output()
    }

    pub fn output_spec(&self) -> &TensorSpec {
        let name = self.output();
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .expect("output validated at load")
    }

    /// The classes (scores) of a `[batch, classes]` output: its last dimension, or the
    /// number of labels where that is unknown; None for any other output shape or none.
    pub fn classes(&self) -> Option<usize> {
        let shape = &self.output_spec().shape;
        let classes = shape
            .last()
            .copied()
            .filter(|&k| k > 0)
            .unwrap_or(self.labels().len() as i64) as usize;
        (shape.len() == 2 && classes > 0).then_some(classes)
    }

    /// Class (or score) names, or empty.
    pub fn labels(&self) -> &[String] {
        match &self.head {
            Head::Classes { labels, .. } | Head::Sigmoid { labels, .. } => labels,
            Head::Scores { names, .. } => names,
        }
    }

    /// What the output's values are.
    pub fn output_kind(&self) -> OutputKind {
        match &self.head {
            Head::Classes { kind, .. } => *kind,
            Head::Sigmoid {
                kind: SigmoidKind::Logits,
                ..
            } => OutputKind::Logits,
            Head::Sigmoid { .. } => OutputKind::Probabilities,
            Head::Scores { .. } => OutputKind::Scores,
        }
    }
}

/// A model ready to serve: its facts and its worker.
#[derive(Clone)]
pub struct Model {
    pub spec: std::sync::Arc<ModelSpec>,
    pub worker: Worker,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("ONNX Runtime failed on model {model}: {reason}")]
    Runtime { model: String, reason: String },
    #[error("model {model} is shutting down")]
    WorkerGone { model: String },
    #[error("model {model} is out of service: {reason}")]
    Failed { model: String, reason: String },
}
