//! Loading one model: read and check the file, open an ONNX Runtime session, reconcile the
//! graph with `integrad.toml`, read labels, warm up. Other layers open more sessions on the
//! model's device with the same settings through [`open_worker`] (Explain's gradient models).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use prost::Message;

use super::batch::{Batching, Merge};
use super::config::{ModelConfig, OutputKind};
use super::{
    DType, Feed, Head, InputSpec, Model, ModelError, Point, SigmoidKind, TensorData, TensorSpec,
    Values, Worker, WorkerOptions,
};
use crate::device::{Device, DeviceError, Placement};
use crate::image::Layout;
use crate::proto::onnx::ModelProto;

/// Session settings shared by every model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where models run unless their config says otherwise.
    pub device: Device,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// ONNX Runtime inter-op threads per session; above 1 turns on parallel execution.
    pub inter_threads: usize,
    /// Whether idle pool threads spin before sleeping during a run (and only then:
    /// [`with_threads`]).
    pub intra_spin: bool,
    /// Cross-request batching in every worker.
    pub batching: Batching,
    /// The workers of every session opened with these options (stopped together).
    pub workers: super::Workers,
    /// How much larger than its forward graph a model's gradient graph may be.
    pub gradient_limits: GradientLimits,
}

/// How much larger than the forward graph Explain lets a gradient graph be before it refuses
/// to open it. A gradient graph is a few times its forward graph's size: the backward pass of
/// each node is a handful of nodes, and the weights are shared. A rule that builds a constant
/// the size of a tensor (AveragePool's window map and kernel of ones) can make it far larger
/// than the forward graph, and so can a hostile model built for that; ONNX Runtime would then
/// hold it, its optimised copy and its activations in memory beside every other model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientLimits {
    /// Nodes, as a multiple of the forward graph's (at least [`GradientLimits::MIN_NODES`]).
    pub nodes_ratio: f64,
    /// Initializer bytes, as a multiple of the forward graph's (at least
    /// [`GradientLimits::MIN_BYTES`]).
    pub bytes_ratio: f64,
}

impl GradientLimits {
    /// A small graph is measured as if it had this many nodes.
    pub const MIN_NODES: usize = 1000;
    /// A graph with few weights is measured as if it had this many bytes of them.
    pub const MIN_BYTES: u64 = 8 << 20;

    /// The most nodes a gradient graph of a `forward`-node graph may have.
    pub fn max_nodes(&self, forward: usize) -> usize {
        (forward.max(Self::MIN_NODES) as f64 * self.nodes_ratio) as usize
    }

    /// The most initializer bytes a gradient graph of a graph with `forward` bytes may have.
    pub fn max_bytes(&self, forward: u64) -> u64 {
        (forward.max(Self::MIN_BYTES) as f64 * self.bytes_ratio) as u64
    }
}

impl Default for GradientLimits {
    fn default() -> Self {
        // NOTE: the demo models' gradient graphs have at most 2.3x their forward graphs'
        // nodes and 1.01x their bytes (docs/reliability.md, "Huge gradient graphs"): these
        // leave a wide margin for models with heavier backward rules.
        Self {
            nodes_ratio: 16.0,
            bytes_ratio: 4.0,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        // NOTE: available_parallelism reads the cgroup CPU quota (and the affinity mask), so a
        // sidecar limited to 2 CPUs on a 64-core node starts 2 threads, not 64.
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            device: Device::Cpu,
            intra_threads: cores,
            inter_threads: 1,
            intra_spin: true,
            batching: Batching::default(),
            workers: super::Workers::default(),
            gradient_limits: GradientLimits::default(),
        }
    }
}

/// Why a model did not load; its text is the reason the log and ListModels show.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not an ONNX model: {reason}", path.display())]
    NotOnnx { path: PathBuf, reason: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("ONNX Runtime cannot load {what} on {placement}: {source}")]
    Session {
        what: String,
        placement: Placement,
        source: ort::Error,
    },
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    #[error(transparent)]
    ExternalData(#[from] super::external::ExternalDataError),
    #[error(transparent)]
    Text(#[from] crate::text::TextError),
    #[error(transparent)]
    Features(#[from] super::tabular::FeaturesError),
    /// The config (`integrad.toml`, `config.pbtxt`, labels) does not fit the graph.
    #[error("{0}")]
    Mismatch(String),
    #[error("cannot start a worker thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("warm-up run failed: {0}")]
    WarmUp(ModelError),
}

/// Loads `file` as model `name`.
pub fn load_model(
    name: &str,
    file: &Path,
    config: &ModelConfig,
    base_dir: &Path,
    env: &Environment,
    options: &LoadOptions,
) -> Result<Model, LoadError> {
    let bytes = std::fs::read(file).map_err(|source| LoadError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let not_onnx = |reason: String| LoadError::NotOnnx {
        path: file.to_path_buf(),
        reason,
    };
    let graph = ModelProto::decode(bytes.as_slice()).map_err(|e| not_onnx(e.to_string()))?;
    if graph.graph.is_none() {
        return Err(not_onnx("it has no graph".into()));
    }
    super::external::check(&graph, file.parent().unwrap_or(Path::new(".")))?;
    let sha256 = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    drop(bytes);

    let placement = crate::device::resolve(
        config.device.unwrap_or(options.device),
        env,
        crate::runtime::loaded_library(),
    )?;
    let session = session_builder(env, options, placement)
        .and_then(|mut b| b.commit_from_file(file))
        .map_err(|source| LoadError::Session {
            what: file.display().to_string(),
            placement,
            source,
        })?;
    let graph_inputs: Vec<TensorSpec> = session
        .inputs()
        .iter()
        .map(|o| spec(o.name(), o.dtype()))
        .collect();
    let graph_outputs: Vec<TensorSpec> = session
        .outputs()
        .iter()
        .map(|o| spec(o.name(), o.dtype()))
        .collect();
    // A Triton config.pbtxt orders and shapes them (checked against the graph).
    let (inputs, outputs) = match &config.triton {
        Some(triton) => triton
            .reconcile(graph_inputs, graph_outputs)
            .map_err(LoadError::Mismatch)?,
        None => (graph_inputs, graph_outputs),
    };

    let fed = pick(&config.input.name, &inputs, "input")?;
    let preprocessing = config.input.preprocessing()?;
    if let Some(p) = &preprocessing {
        check_image_input(&fed, p)?;
    }
    let output = pick(&config.output.name, &outputs, "output")?;
    let labels = match &config.output.labels {
        Some(path) => read_labels(&base_dir.join(path), &output)?,
        None => Vec::new(),
    };
    let head = head(&graph, &output, config.output.kind, labels);
    let tabular = super::tabular::read(&config.features, base_dir, &inputs)?;
    let lookups = super::tabular::lookups(&graph, &inputs);
    // A tokenizer.json beside the model (or [text] in its config) makes it a text model.
    let text_dir = file.parent().unwrap_or(base_dir);
    let text_dir = match text_dir.join("tokenizer.json").exists() {
        true => text_dir,
        false => base_dir,
    };
    let positions = crate::text::position_table(&graph);
    let text = crate::text::TextSpec::load(text_dir, config.text.as_ref(), &inputs, positions)?;
    // Explain checks these points when it builds its gradient models; a model that can't be
    // differentiated still serves Predict, and GetModel says why. A text model's default is
    // the lookup of its token ids alone (not the token types' or positions').
    let attribution = match &text {
        Some(text) => {
            let ids: Vec<_> = lookups
                .iter()
                .filter(|l| l.input == text.ids)
                .cloned()
                .collect();
            default_points(&graph, &inputs, &ids, head.output())
        }
        None => default_points(&graph, &inputs, &lookups, head.output()),
    };
    let inputs = inputs
        .into_iter()
        .map(|tensor| {
            let feed = match (&preprocessing, tabular.features_of(&tensor.name)) {
                (Some(p), _) if tensor.name == fed.name => Feed::Image(p.clone()),
                (_, Some(names)) => Feed::Features(names.to_vec()),
                _ => Feed::Tensor,
            };
            InputSpec { tensor, feed }
        })
        .collect();

    // Jobs merge on axis 0 only if every input and output has a dynamic first axis.
    let batchable = session
        .inputs()
        .iter()
        .map(|i| i.dtype())
        .chain(session.outputs().iter().map(|o| o.dtype()))
        .all(|ty| matches!(ty, ValueType::Tensor { shape, .. } if shape.first() == Some(&-1)));
    let merge = if batchable {
        Merge::Forward
    } else {
        Merge::Off
    };
    let worker = Worker::spawn(
        name,
        session,
        WorkerOptions {
            merge,
            batching: options.batching.on(placement),
            keep_bound: None,
        },
        &options.workers,
    )?;
    let spec = super::ModelSpec {
        name: name.to_string(),
        path: file.to_path_buf(),
        sha256,
        inputs,
        outputs,
        head,
        lookups,
        tabular,
        text,
        attribution,
        triton: config.triton.as_ref().map(|t| super::TritonServing {
            version: t.version,
            max_batch_size: t.config.max_batch_size,
        }),
        device: placement,
    };
    let model = Model {
        spec: Arc::new(spec),
        worker,
    };
    warm_up(&model)?;
    Ok(model)
}

/// A worker for another graph (`bytes`, an encoded ONNX model) on `model`'s device, with the
/// session settings of every model: how Explain runs its gradient models.
pub fn open_worker(
    model: &super::ModelSpec,
    suffix: &str,
    bytes: &[u8],
    env: &Environment,
    options: &LoadOptions,
    worker: WorkerOptions,
) -> Result<Worker, LoadError> {
    let placement = model.device;
    let session = session_builder(env, options, placement)
        .and_then(|mut b| b.commit_from_memory(bytes))
        .map_err(|source| LoadError::Session {
            what: format!("the {suffix} model of {:?}", model.name),
            placement,
            source,
        })?;
    // Inputs kept bound save their copy to the device; on the CPU there is no copy to save,
    // and binding would clone every input once more.
    let keep_bound = worker
        .keep_bound
        .filter(|_| matches!(placement, Placement::Cuda(_)));
    let worker = WorkerOptions {
        batching: options.batching.on(placement),
        keep_bound,
        ..worker
    };
    Ok(Worker::spawn(
        &format!("{}-{suffix}", model.name),
        session,
        worker,
        &options.workers,
    )?)
}

/// Every session integrad opens: its threads, and its execution provider (CUDA registered so
/// that failing to start it is an error, not ONNX Runtime's quiet CPU fallback).
fn session_builder(
    env: &Environment,
    options: &LoadOptions,
    placement: Placement,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    let builder = Session::builder(env)?.with_optimization_level(GraphOptimizationLevel::All)?;
    let mut builder = with_threads(builder, options)?;
    crate::device::register(&mut builder, placement)?;
    Ok(builder)
}

/// A session's threads as `options` say: intra-op and inter-op pool sizes, parallel execution
/// above one inter-op thread, and spinning.
///
/// NOTE: with `intra_spin` the pool threads spin for the next operator *during* a run and stop
/// when it returns (ONNX Runtime's `session.force_spinning_stop`): its default spinning goes
/// on after a run, on the cores that integrad's own work between runs and a model server
/// beside it need (docs/devices.md).
pub fn with_threads(
    builder: ort::session::builder::SessionBuilder,
    options: &LoadOptions,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    Ok(builder
        .with_intra_threads(options.intra_threads)?
        .with_inter_threads(options.inter_threads)?
        .with_parallel_execution(options.inter_threads > 1)?
        .with_intra_op_spinning(options.intra_spin)?
        .with_inter_op_spinning(options.intra_spin)?
        .with_config_entry(
            "session.force_spinning_stop",
            if options.intra_spin { "1" } else { "0" },
        )?)
}

fn spec(name: &str, ty: &ValueType) -> TensorSpec {
    let (dtype, shape) = match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = match ty {
                TensorElementType::Float32 => DType::F32,
                TensorElementType::Int64 => DType::I64,
                other => DType::Other(element_name(*other)),
            };
            (dtype, shape.to_vec())
        }
        _ => (DType::Other("non-tensor"), Vec::new()),
    };
    TensorSpec {
        name: name.to_string(),
        dtype,
        shape,
    }
}

fn element_name(ty: TensorElementType) -> &'static str {
    match ty {
        TensorElementType::Float16 => "float16",
        TensorElementType::Float64 => "float64",
        TensorElementType::Int32 => "int32",
        TensorElementType::Int8 => "int8",
        TensorElementType::Uint8 => "uint8",
        TensorElementType::Bool => "bool",
        TensorElementType::String => "string",
        _ => "other",
    }
}

fn pick(
    wanted: &Option<String>,
    specs: &[TensorSpec],
    what: &str,
) -> Result<TensorSpec, LoadError> {
    match wanted {
        Some(name) => specs
            .iter()
            .find(|s| &s.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                LoadError::Mismatch(format!(
                    "the config names {what} {name:?}, but the graph's {what}s are {names:?}"
                ))
            }),
        None => specs
            .first()
            .cloned()
            .ok_or_else(|| LoadError::Mismatch(format!("the graph has no {what}"))),
    }
}

fn check_image_input(input: &TensorSpec, p: &crate::image::Preprocessing) -> Result<(), LoadError> {
    if input.dtype != DType::F32 {
        return Err(LoadError::Mismatch(format!(
            "image input {:?} must be float32, the graph says {:?}",
            input.name, input.dtype
        )));
    }
    let expected = p.shape().map(|d| d as i64);
    let actual = input.shape.get(1..).unwrap_or_default();
    let fits =
        input.shape.len() == 4 && actual.iter().zip(expected).all(|(&a, e)| a == -1 || a == e);
    if !fits {
        let layout = match p.layout {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        };
        return Err(LoadError::Mismatch(format!(
            "image input {:?} has shape {:?}, which does not fit {layout} {}x{} from the config",
            input.name, input.shape, p.height, p.width
        )));
    }
    Ok(())
}

/// Where Explain attributes by default: every float graph input, and the output of every
/// embedding lookup of an int64 input, that `output` depends on.
fn default_points(
    model: &ModelProto,
    inputs: &[TensorSpec],
    lookups: &[super::Lookup],
    output: &str,
) -> Result<Vec<Point>, String> {
    let mut needed = std::collections::HashSet::from([output.to_string()]);
    if let Some(graph) = &model.graph {
        for node in graph.node.iter().rev() {
            if node.output.iter().any(|o| needed.contains(o)) {
                needed.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
            }
        }
    }
    let mut points = Vec::new();
    for input in inputs.iter().filter(|i| needed.contains(&i.name)) {
        match input.dtype {
            DType::F32 => points.push(Point::Input(input.name.clone())),
            _ => points.extend(
                lookups
                    .iter()
                    .filter(|l| l.input == input.name && needed.contains(&l.output))
                    .map(|l| Point::Embedding {
                        tensor: l.output.clone(),
                        input: l.input.clone(),
                    }),
            ),
        }
    }
    if points.is_empty() {
        let described: Vec<String> = inputs
            .iter()
            .map(|i| format!("{:?} ({:?})", i.name, i.dtype))
            .collect();
        return Err(format!("output {output:?} depends on no float32 input and no embedding lookup of int64 ids (inputs: {}); attributions need one", described.join(", ")));
    }
    Ok(points)
}

/// How the output is read: the config's `kind` if it says, else a Softmax or Sigmoid output
/// holds probabilities and anything else logits; a one-column output or one that ends in a
/// Sigmoid is a sigmoid head (a softmax over one column would be the constant 1).
fn head(
    model: &ModelProto,
    output: &TensorSpec,
    kind: Option<OutputKind>,
    labels: Vec<String>,
) -> Head {
    let producer = model
        .graph
        .as_ref()
        .and_then(|g| g.node.iter().find(|n| n.output.contains(&output.name)));
    let op = producer.and_then(|n| n.op_type.as_deref());
    let sigmoid_input = match (op, producer) {
        (Some("Sigmoid"), Some(node)) => node.input.first().cloned(),
        _ => None,
    };
    let kind = kind.unwrap_or(match op {
        Some("Softmax") | Some("Sigmoid") => OutputKind::Probabilities,
        _ => OutputKind::Logits,
    });
    let one_column = output.shape.last() == Some(&1);
    let name = output.name.clone();
    match kind {
        OutputKind::Scores => Head::Scores {
            output: name,
            names: labels,
        },
        OutputKind::Probabilities if one_column || sigmoid_input.is_some() => Head::Sigmoid {
            output: name,
            kind: SigmoidKind::Probabilities {
                logits: sigmoid_input,
            },
            labels,
        },
        OutputKind::Logits if one_column => Head::Sigmoid {
            output: name,
            kind: SigmoidKind::Logits,
            labels,
        },
        kind => Head::Classes {
            output: name,
            kind,
            labels,
        },
    }
}

fn read_labels(path: &PathBuf, output: &TensorSpec) -> Result<Vec<String>, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError::Mismatch(format!("cannot read labels {}: {e}", path.display())))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    let labels = match labels.iter().rposition(|l| !l.is_empty()) {
        Some(last) => labels[..=last].to_vec(),
        None => Vec::new(),
    };
    if let Some(&classes) = output.shape.last().filter(|&&d| d > 0) {
        if labels.len() as i64 != classes {
            return Err(LoadError::Mismatch(format!(
                "{} has {} labels but output {:?} has {classes} classes",
                path.display(),
                labels.len(),
                output.name
            )));
        }
    }
    Ok(labels)
}

/// One run at batch 1 so the first request doesn't pay ONNX Runtime's first-run cost (about
/// 1.8x a warm run). Skipped when the input has unknown dimensions besides the batch.
fn warm_up(model: &Model) -> Result<(), LoadError> {
    let mut feeds = Vec::new();
    for input in &model.spec.inputs {
        let input = &input.tensor;
        if input.shape.iter().skip(1).any(|&d| d < 0) {
            return Ok(());
        }
        let shape: Vec<i64> = std::iter::once(1)
            .chain(input.shape.iter().skip(1).copied())
            .collect();
        let count = shape.iter().product::<i64>() as usize;
        // Ids start at the lowest valid one of their table (0 unless offsets say otherwise).
        let id = |i: usize| {
            let columns = input.shape.last().copied().unwrap_or(1).max(1) as usize;
            model
                .spec
                .lookups
                .iter()
                .filter(|l| l.input == input.name)
                .map(|l| l.range(i, columns).0)
                .max()
                .unwrap_or(0)
        };
        let values = match input.dtype {
            DType::F32 => Values::F32(vec![0.0; count]),
            DType::I64 => Values::I64((0..count).map(id).collect()),
            DType::Other(_) => return Ok(()),
        };
        feeds.push((input.name.clone(), TensorData { shape, values }));
    }
    model
        .worker
        .run_blocking(feeds, vec![model.spec.output().to_string()])
        .map(|_| ())
        .map_err(LoadError::WarmUp)
}
