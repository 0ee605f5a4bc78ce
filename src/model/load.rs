//! Loading one model: read and check the file, open an ONNX Runtime session, reconcile the
//! graph with `integrad.toml`, read labels, warm up.

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
    DType, Gradients, ImageInput, Model, TensorData, TensorSpec, Values, Worker, WorkerOptions,
};
use crate::autodiff::{build_gradient, GradOptions, Objective};
use crate::device::{Device, Placement};
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
    /// Whether idle pool threads spin before sleeping during a run.
    pub intra_spin: bool,
    /// Cross-request batching in every worker.
    pub batching: Batching,
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
        }
    }
}

/// Loads `file` as model `name`. Errors are the reason, for the operator's log and ListModels.
pub fn load_model(
    name: &str,
    file: &Path,
    config: &ModelConfig,
    base_dir: &Path,
    env: &Environment,
    options: &LoadOptions,
) -> Result<Model, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let graph = ModelProto::decode(bytes.as_slice())
        .map_err(|e| format!("{} is not an ONNX model: {e}", file.display()))?;
    if graph.graph.is_none() {
        return Err(format!(
            "{} is not an ONNX model: it has no graph",
            file.display()
        ));
    }
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
    )
    .map_err(|e| e.to_string())?;
    let session = open_session(file, env, options, placement).map_err(|e| {
        format!(
            "ONNX Runtime cannot load {} on {placement}: {e}",
            file.display()
        )
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
        Some(triton) => triton.reconcile(graph_inputs, graph_outputs)?,
        None => (graph_inputs, graph_outputs),
    };

    let input = pick(&config.input.name, &inputs, "input")?;
    let output = pick(&config.output.name, &outputs, "output")?;
    let image = match config.input.preprocessing()? {
        Some(preprocessing) => {
            check_image_input(&input, &preprocessing)?;
            Some(ImageInput {
                input: input.name.clone(),
                preprocessing,
            })
        }
        None => None,
    };
    let output_kind = match config.output.kind {
        Some(kind) => kind,
        None => infer_output_kind(&graph, &output.name),
    };
    let labels = match &config.output.labels {
        Some(path) => read_labels(&base_dir.join(path), &output)?,
        None => Vec::new(),
    };
    // A model whose graph can't be differentiated still serves Predict; GetModel says why.
    let of = GradientsOf {
        input: &input.name,
        output: &output.name,
        kind: output_kind,
    };
    let gradients = build_gradients(name, &graph, &of, env, options, placement);
    let explainable = gradients.as_ref().map(|_| ()).map_err(Clone::clone);
    if let Err(reason) = &explainable {
        tracing::warn!(model = name, %reason, "model is not explainable");
    }

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
            io_binding: false,
        },
    )
    .map_err(|e| format!("cannot start a worker thread: {e}"))?;
    let spec = super::ModelSpec {
        name: name.to_string(),
        path: file.to_path_buf(),
        sha256,
        input: input.name.clone(),
        output: output.name.clone(),
        inputs,
        outputs,
        image,
        output_kind,
        labels,
        explainable,
        triton: config.triton.as_ref().map(|t| super::TritonServing {
            version: t.version,
            max_batch_size: t.config.max_batch_size,
        }),
        device: placement,
    };
    let model = Model {
        spec: Arc::new(spec),
        worker,
        gradients: gradients.ok(),
    };
    warm_up(&model)?;
    warm_up_gradients(&model, &options.batching.on(placement))?;
    Ok(model)
}

/// What a model's gradients are taken of: the served input and output, and what the output is.
#[derive(Clone, Copy)]
struct GradientsOf<'a> {
    input: &'a str,
    output: &'a str,
    kind: OutputKind,
}

/// The IG step models of the output w.r.t. the input (see [`Gradients`]), each on its own
/// worker.
fn build_gradients(
    name: &str,
    graph: &ModelProto,
    of: &GradientsOf<'_>,
    env: &Environment,
    options: &LoadOptions,
    placement: Placement,
) -> Result<Gradients, String> {
    let GradientsOf {
        input,
        output,
        kind,
    } = *of;
    let started = std::time::Instant::now();
    let build = |objective: Objective| -> Result<Worker, String> {
        let grad = build_gradient(
            graph,
            &GradOptions {
                wrt: Some(input.to_string()),
                of: Some(output.to_string()),
                objective,
            },
        )
        .map_err(|e| e.to_string())?;
        let step = crate::ig::build_step_model(&grad.model, input)?;
        let bytes = step.encode_to_vec();
        let session = session_builder(env, options, placement)
            .and_then(|mut b| b.commit_from_memory(&bytes))
            .map_err(|e| format!("ONNX Runtime cannot load the IG step model: {e}"))?;
        // A model with inputs besides the explained one has them in the step model too, and
        // the batcher does not know how their rows go: such step jobs run alone.
        let merge = if session.inputs().len() == crate::ig::step::STEP_INPUTS.len() {
            Merge::Step
        } else {
            Merge::Off
        };
        let options = WorkerOptions {
            merge,
            batching: options.batching.on(placement),
            io_binding: true,
        };
        Worker::spawn(&format!("{name}-grad"), session, options)
            .map_err(|e| format!("cannot start a worker thread: {e}"))
    };
    let gradients = Gradients {
        output: build(Objective::Logit)?,
        softmax: match kind {
            OutputKind::Logits => Some(build(Objective::Probability)?),
            OutputKind::Probabilities => None,
        },
    };
    tracing::info!(
        model = name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "gradient models built"
    );
    Ok(gradients)
}

/// Every session integrad opens: its threads, and its execution provider (CUDA registered so
/// that failing to start it is an error, not ONNX Runtime's quiet CPU fallback).
fn session_builder(
    env: &Environment,
    options: &LoadOptions,
    placement: Placement,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(options.intra_threads)?
        .with_inter_threads(options.inter_threads)?
        .with_parallel_execution(options.inter_threads > 1)?
        .with_intra_op_spinning(options.intra_spin)?
        .with_inter_op_spinning(options.intra_spin)?;
    crate::device::register(&mut builder, placement)?;
    Ok(builder)
}

fn open_session(
    file: &Path,
    env: &Environment,
    options: &LoadOptions,
    placement: Placement,
) -> ort::Result<Session> {
    session_builder(env, options, placement)?.commit_from_file(file)
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

fn pick(wanted: &Option<String>, specs: &[TensorSpec], what: &str) -> Result<TensorSpec, String> {
    match wanted {
        Some(name) => specs
            .iter()
            .find(|s| &s.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                format!("the config names {what} {name:?}, but the graph's {what}s are {names:?}")
            }),
        None => specs
            .first()
            .cloned()
            .ok_or_else(|| format!("the graph has no {what}")),
    }
}

fn check_image_input(input: &TensorSpec, p: &crate::image::Preprocessing) -> Result<(), String> {
    if input.dtype != DType::F32 {
        return Err(format!(
            "image input {:?} must be float32, the graph says {:?}",
            input.name, input.dtype
        ));
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
        return Err(format!(
            "image input {:?} has shape {:?}, which does not fit {layout} {}x{} from the config",
            input.name, input.shape, p.height, p.width
        ));
    }
    Ok(())
}

/// A model whose output comes straight from a Softmax outputs probabilities; anything else
/// is taken as logits. The config's `kind` overrides this.
fn infer_output_kind(model: &ModelProto, output: &str) -> OutputKind {
    let producer = model
        .graph
        .as_ref()
        .and_then(|g| g.node.iter().find(|n| n.output.iter().any(|o| o == output)));
    match producer.and_then(|n| n.op_type.as_deref()) {
        Some("Softmax") => OutputKind::Probabilities,
        _ => OutputKind::Logits,
    }
}

fn read_labels(path: &PathBuf, output: &TensorSpec) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read labels {}: {e}", path.display()))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    let labels = match labels.iter().rposition(|l| !l.is_empty()) {
        Some(last) => labels[..=last].to_vec(),
        None => Vec::new(),
    };
    if let Some(&classes) = output.shape.last().filter(|&&d| d > 0) {
        if labels.len() as i64 != classes {
            return Err(format!(
                "{} has {} labels but output {:?} has {classes} classes",
                path.display(),
                labels.len(),
                output.name
            ));
        }
    }
    Ok(labels)
}

/// One run at batch 1 so the first request doesn't pay ONNX Runtime's first-run cost (about
/// 1.8x a warm run). Skipped when the input has unknown dimensions besides the batch.
fn warm_up(model: &Model) -> Result<(), String> {
    let input = model.spec.input_spec();
    if model.spec.inputs.len() != 1 || input.shape.iter().skip(1).any(|&d| d < 0) {
        return Ok(());
    }
    let shape: Vec<i64> = std::iter::once(1)
        .chain(input.shape.iter().skip(1).copied())
        .collect();
    let count: i64 = shape.iter().product();
    let values = match input.dtype {
        DType::F32 => Values::F32(vec![0.0; count as usize]),
        DType::I64 => Values::I64(vec![0; count as usize]),
        DType::Other(_) => return Ok(()),
    };
    model
        .worker
        .run_blocking(
            vec![(input.name.clone(), TensorData { shape, values })],
            vec![model.spec.output.clone()],
        )
        .map(|_| ())
        .map_err(|e| format!("warm-up run failed: {e}"))
}

/// IG step runs per gradient worker at the default Explain batch and, with batching on, at the
/// largest merged run (ONNX Runtime's first run at a batch size is about 1.8x slower,
/// ORT-GRADIENTS.md), so the first Explains cost what later ones do.
fn warm_up_gradients(model: &Model, batching: &Batching) -> Result<(), String> {
    use crate::ig::step;
    let (Some(gradients), Some(&classes)) =
        (&model.gradients, model.spec.output_spec().shape.last())
    else {
        return Ok(());
    };
    let input = model.spec.input_spec();
    if classes < 1 || model.spec.inputs.len() != 1 || input.shape.iter().skip(1).any(|&d| d < 1) {
        return Ok(());
    }
    let shape = &input.shape[1..];
    let len = shape.iter().product::<i64>() as usize;
    let default = crate::explain::default_batch(len) as usize;
    let mut sizes = vec![default];
    if batching.enabled() && batching.max_rows > default {
        sizes.push(batching.max_rows);
    }
    let zeros = vec![0f32; len];
    let workers = std::iter::once(&gradients.output).chain(&gradients.softmax);
    for worker in workers {
        for &rows in &sizes {
            let alphas: Vec<f64> = (0..rows).map(|r| r as f64 / rows as f64).collect();
            let run = step::StepRun {
                input: &zeros,
                baseline: &zeros,
                shape,
                alphas: &alphas,
                targets: &[0],
                classes: classes as usize,
                weights: vec![1.0; 2 * rows],
            };
            worker
                .run_blocking(run.inputs(), vec![step::STEP_SUMS.into()])
                .map_err(|e| format!("gradient warm-up run failed: {e}"))?;
        }
    }
    Ok(())
}
