//! Explain's gradient models: for every model that can be explained, the IG step models
//! ([`super::step`]) of its served output w.r.t. its attribution points, each on a worker of
//! its own on the model's device, warmed up before the server says it is ready, plus the
//! prefix model that computes inner points (embeddings) from the inputs.
//!
//! The model layer knows nothing of these: it loads and serves the forward graph, and
//! [`prepare`] adds what Explain needs once the repository is loaded. A model whose graph
//! can't be differentiated keeps serving Predict; its spec then says why Explain can't.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use prost::Message;

use super::step::{self, StepLayout};
use crate::autodiff::{build_gradient, GradOptions, Objective};
use crate::error::Error;
use crate::model::{
    open_worker, Batching, DType, Head, LoadOptions, Merge, Model, ModelEntry, ModelSpec,
    OutputKind, Point, Repository, SigmoidKind, Worker, WorkerOptions,
};
use crate::proto::onnx::ModelProto;

/// Why a model's gradient models could not be made; the text is what GetModel reports.
#[derive(Debug, thiserror::Error)]
pub enum GradientError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not an ONNX model: {source}", path.display())]
    Decode {
        path: std::path::PathBuf,
        source: prost::DecodeError,
    },
    #[error(transparent)]
    ExternalData(#[from] crate::model::external::ExternalDataError),
    #[error(transparent)]
    Autodiff(#[from] crate::autodiff::AutodiffError),
    #[error(transparent)]
    Step(#[from] step::StepModelError),
    #[error(transparent)]
    Open(#[from] crate::model::LoadError),
    #[error("gradient warm-up run failed: {0}")]
    WarmUp(#[from] crate::model::ModelError),
    #[error("its gradient graph would be too large to open: {0}")]
    TooLarge(String),
}

/// A tensor of the model and the function of it that a gradient model differentiates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Differentiated {
    /// The served output, or the logits a final Sigmoid reads.
    pub of: String,
    pub objective: Objective,
}

/// What a head's objectives differentiate (see [`super::plan`] for which request gets which):
/// the output as is always; its softmax for a softmax head of logits; its sigmoid for a
/// sigmoid head of logits; the Sigmoid's input for a sigmoid head that ends in one.
pub fn differentiated(head: &Head) -> Vec<Differentiated> {
    let of = |of: &str, objective| Differentiated {
        of: of.to_string(),
        objective,
    };
    let output = head.output();
    let mut all = vec![of(output, Objective::Logit)];
    match head {
        Head::Classes {
            kind: OutputKind::Logits,
            ..
        } => all.push(of(output, Objective::Probability)),
        Head::Sigmoid {
            kind: SigmoidKind::Logits,
            ..
        } => all.push(of(output, Objective::Sigmoid)),
        Head::Sigmoid {
            kind: SigmoidKind::Probabilities {
                logits: Some(logits),
            },
            ..
        } => all.push(of(logits, Objective::Logit)),
        _ => {}
    }
    all
}

/// The step models of one set of attribution points: one backward pass w.r.t. all of them.
pub struct PointSet {
    pub points: Vec<Point>,
    /// How the points and the inputs held fixed are packed into the step models' inputs.
    pub layout: StepLayout,
    /// Computes the inner points (embeddings, layers) from the model's inputs, one output
    /// each in `points` order; None when every point is a graph input.
    pub prefix: Option<Worker>,
    /// The graph inputs the prefix model reads, and whether they all have a dynamic batch
    /// axis (so several instances' inputs can go in one run).
    pub prefix_inputs: Vec<String>,
    pub prefix_batches: bool,
    workers: Vec<(Differentiated, Worker)>,
}

impl PointSet {
    /// The step worker of `what`.
    pub fn get(&self, what: &Differentiated) -> Option<&Worker> {
        self.workers
            .iter()
            .find(|(d, _)| d == what)
            .map(|(_, worker)| worker)
    }

    /// The inner points, in the order the prefix model outputs them.
    pub fn inner(&self) -> impl Iterator<Item = &Point> {
        self.points.iter().filter(|p| !p.is_input())
    }
}

/// What it takes to build more step models of a model on demand (a request's own
/// `attribute_to`).
struct Source {
    spec: Arc<ModelSpec>,
    graph: ModelProto,
    env: Environment,
    options: LoadOptions,
}

/// Sets built on demand, kept (most recent first) up to this many per model.
const CACHED_SETS: usize = 8;

/// One model's IG step models: those of its default attribution points (every objective its
/// head has, built and warmed up at load), and those of other points requests ask for (built
/// when first asked, one objective at a time, and cached).
#[derive(Clone)]
pub struct Gradients {
    pub default: Arc<PointSet>,
    source: Arc<Source>,
    cache: Arc<Mutex<Vec<Cached>>>,
}

/// A set built on demand: the tensors asked for, the objective, and its step models.
type Cached = (Vec<String>, Differentiated, Arc<PointSet>);

impl Gradients {
    /// The step models of the points named `names` (empty: the default ones) for `what`.
    pub async fn points(
        &self,
        names: &[String],
        what: &Differentiated,
    ) -> Result<Arc<PointSet>, Error> {
        let defaults: Vec<&str> = self.default.points.iter().map(|p| p.tensor()).collect();
        if names.is_empty()
            || names
                .iter()
                .map(|n| n.as_str())
                .eq(defaults.iter().copied())
        {
            return Ok(self.default.clone());
        }
        if let Some(at) = self.cached(names, what) {
            return Ok(at);
        }
        let points = points_named(&self.source.spec, names)?;
        let (source, what_owned) = (self.source.clone(), what.clone());
        let set = tokio::task::spawn_blocking(move || {
            build_set(
                &source.spec,
                &source.graph,
                points,
                &[what_owned],
                &source.env,
                &source.options,
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("building gradient models failed: {e}")))?
        .map_err(|e| match e {
            GradientError::Autodiff(e) => Error::invalid("attribute_to", e.to_string()),
            GradientError::Step(e) => Error::invalid("attribute_to", e.to_string()),
            other => Error::Internal(other.to_string()),
        })?;
        let set = Arc::new(set);
        let mut cache = self.cache.lock().expect("cache lock");
        cache.insert(0, (names.to_vec(), what.clone(), set.clone()));
        cache.truncate(CACHED_SETS);
        Ok(set)
    }

    fn cached(&self, names: &[String], what: &Differentiated) -> Option<Arc<PointSet>> {
        let cache = self.cache.lock().expect("cache lock");
        cache
            .iter()
            .find(|(n, w, _)| n == names && w == what)
            .map(|(_, _, set)| set.clone())
    }
}

/// The points a request's `attribute_to` names: graph inputs, embedding outputs or other inner
/// tensors. Whether they exist, are float and reach the output the gradient build says.
fn points_named(spec: &ModelSpec, names: &[String]) -> Result<Vec<Point>, Error> {
    let mut points = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(Error::invalid(
                "attribute_to",
                format!("{name:?} is named twice"),
            ));
        }
        let point = match spec.input(name) {
            Some(input) if input.tensor.dtype == DType::F32 => Point::Input(name.clone()),
            Some(input) => {
                let lookups: Vec<&str> = spec
                    .lookups
                    .iter()
                    .filter(|l| l.input == *name)
                    .map(|l| l.output.as_str())
                    .collect();
                return Err(Error::invalid(
                    "attribute_to",
                    format!(
                        "input {name:?} is {:?}, which has no gradient; attribute to a float tensor{}",
                        input.tensor.dtype,
                        if lookups.is_empty() {
                            String::new()
                        } else {
                            format!(" such as its embedding lookup {lookups:?}")
                        }
                    ),
                ));
            }
            None => match spec.lookups.iter().find(|l| l.output == *name) {
                Some(lookup) => Point::Embedding {
                    tensor: name.clone(),
                    input: lookup.input.clone(),
                },
                None => Point::Inner(name.clone()),
            },
        };
        points.push(point);
    }
    Ok(points)
}

/// Every explainable model's gradient models, by model name.
#[derive(Clone, Default)]
pub struct Explainers {
    models: HashMap<String, Gradients>,
}

impl Explainers {
    pub fn get(&self, model: &str) -> Option<&Gradients> {
        self.models.get(model)
    }
}

/// Which models get gradient models: a server's all; an in-process command's only the model
/// it explains (None: the default), or none for a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explained<'a> {
    All,
    Only(Option<&'a str>),
    None,
}

/// Builds and warms up the gradient models of the ready models of `repository` that `which`
/// names. A model whose gradients can't be built has its attribution set to the reason
/// (GetModel shows it).
pub fn prepare(
    repository: &mut Repository,
    env: &Environment,
    options: &LoadOptions,
    which: Explained<'_>,
) -> Explainers {
    let wanted = match which {
        Explained::All | Explained::None => None,
        Explained::Only(Some(name)) => Some(name.to_string()),
        Explained::Only(None) => repository.default_model().map(str::to_string),
    };
    let mut models = HashMap::new();
    for (name, entry) in repository.iter_mut() {
        let ModelEntry::Ready(model) = entry else {
            continue;
        };
        let skipped = match which {
            Explained::All => false,
            Explained::None => true,
            Explained::Only(_) => wanted.as_deref() != Some(name.as_str()),
        };
        if skipped {
            continue;
        }
        if let Err(reason) = &model.spec.attribution {
            tracing::warn!(model = %name, %reason, "model is not explainable");
            continue;
        }
        match build(model, env, options) {
            Ok(gradients) => {
                models.insert(name.clone(), gradients);
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::warn!(model = %name, %reason, "model is not explainable");
                Arc::make_mut(&mut model.spec).attribution = Err(reason);
            }
        }
    }
    Explainers { models }
}

/// The step models of `model`'s head w.r.t. its default attribution points, warmed up.
fn build(
    model: &Model,
    env: &Environment,
    options: &LoadOptions,
) -> Result<Gradients, GradientError> {
    let spec = &model.spec;
    let started = std::time::Instant::now();
    let points = match &spec.attribution {
        Ok(points) => points.clone(),
        Err(_) => unreachable!("prepare skips models that can't be explained"),
    };
    let bytes = std::fs::read(&spec.path).map_err(|source| GradientError::Read {
        path: spec.path.clone(),
        source,
    })?;
    let mut graph =
        ModelProto::decode(bytes.as_slice()).map_err(|source| GradientError::Decode {
            path: spec.path.clone(),
            source,
        })?;
    drop(bytes);
    // The gradient models are opened from memory, where external data has no folder.
    let folder = spec.path.parent().unwrap_or(std::path::Path::new("."));
    crate::model::external::inline(&mut graph, folder)?;
    let set = build_set(
        spec,
        &graph,
        points,
        &differentiated(&spec.head),
        env,
        options,
    )?;
    tracing::info!(
        model = %spec.name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "gradient models built"
    );
    warm_up(model, &set, &options.batching.on(spec.device))?;
    Ok(Gradients {
        default: Arc::new(set),
        source: Arc::new(Source {
            spec: spec.clone(),
            graph,
            env: env.clone(),
            options: options.clone(),
        }),
        cache: Default::default(),
    })
}

/// The step models of `points` for each of `whats`, and the prefix model of the inner points.
fn build_set(
    spec: &ModelSpec,
    graph: &ModelProto,
    points: Vec<Point>,
    whats: &[Differentiated],
    env: &Environment,
    options: &LoadOptions,
) -> Result<PointSet, GradientError> {
    let wrt: Vec<String> = points.iter().map(|p| p.tensor().to_string()).collect();
    let mut workers = Vec::with_capacity(whats.len());
    let mut prefix = None;
    let mut prefix_inputs = Vec::new();
    let mut layout = None;
    for what in whats {
        let grad = build_gradient(
            graph,
            &GradOptions {
                wrt: wrt.clone(),
                of: Some(what.of.clone()),
                objective: what.objective,
            },
        )?;
        let (step_model, step_layout) = step::build_step_model(&grad.model, &wrt)?;
        check_size(graph, &step_model, &options.gradient_limits)?;
        let worker = WorkerOptions {
            merge: Merge::Paths(step_layout.rules()),
            batching: options.batching,
            keep_bound: Some(step_layout.keep_bound()),
        };
        workers.push((
            what.clone(),
            open_worker(
                spec,
                "grad",
                &step_model.encode_to_vec(),
                env,
                options,
                worker,
            )?,
        ));
        if let (None, Some(p)) = (&prefix, &grad.prefix) {
            let worker = WorkerOptions {
                merge: Merge::Off,
                batching: options.batching,
                keep_bound: None,
            };
            prefix = Some(open_worker(
                spec,
                "prefix",
                &p.encode_to_vec(),
                env,
                options,
                worker,
            )?);
            if let Some(g) = &p.graph {
                prefix_inputs = g
                    .input
                    .iter()
                    .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
                    .map(|i| i.name().to_string())
                    .collect();
            }
        }
        layout.get_or_insert(step_layout);
    }
    Ok(PointSet {
        points,
        layout: layout.expect("at least one objective"),
        prefix_batches: prefix_inputs.iter().all(|name| {
            spec.input(name)
                .is_some_and(|i| i.tensor.shape.first() == Some(&-1))
        }),
        prefix,
        prefix_inputs,
        workers,
    })
}

/// Nodes and initializer bytes of a graph's top level.
fn graph_size(model: &ModelProto) -> (usize, u64) {
    let Some(graph) = &model.graph else {
        return (0, 0);
    };
    let bytes = graph
        .initializer
        .iter()
        .map(|t| {
            let raw = t.raw_data.as_ref().map_or(0, Vec::len);
            let typed = 4 * (t.float_data.len() + t.int32_data.len())
                + 8 * (t.int64_data.len() + t.double_data.len() + t.uint64_data.len());
            let strings: usize = t.string_data.iter().map(Vec::len).sum();
            (raw + typed + strings) as u64
        })
        .sum();
    (graph.node.len(), bytes)
}

/// Refuses a step model (the gradient graph ONNX Runtime would open) that is larger than
/// `limits` allow relative to its forward graph, before a session holds it.
fn check_size(
    forward: &ModelProto,
    step: &ModelProto,
    limits: &crate::model::GradientLimits,
) -> Result<(), GradientError> {
    let (forward_nodes, forward_bytes) = graph_size(forward);
    let (nodes, bytes) = graph_size(step);
    tracing::debug!(
        forward_nodes,
        forward_bytes,
        nodes,
        bytes,
        "gradient graph size"
    );
    if nodes > limits.max_nodes(forward_nodes) {
        return Err(GradientError::TooLarge(format!(
            "{nodes} nodes, the forward graph has {forward_nodes}; at most {} are allowed ({} x max({forward_nodes}, {}): --max-gradient-nodes-ratio)",
            limits.max_nodes(forward_nodes),
            limits.nodes_ratio,
            crate::model::GradientLimits::MIN_NODES,
        )));
    }
    if bytes > limits.max_bytes(forward_bytes) {
        return Err(GradientError::TooLarge(format!(
            "{bytes} bytes of initializers, the forward graph has {forward_bytes}; at most {} are allowed ({} x max({forward_bytes}, {}): --max-gradient-bytes-ratio)",
            limits.max_bytes(forward_bytes),
            limits.bytes_ratio,
            crate::model::GradientLimits::MIN_BYTES,
        )));
    }
    Ok(())
}

/// IG step runs per gradient worker at the default Explain batch and, with batching on, at the
/// largest merged run (ONNX Runtime's first run at a batch size is about 1.8x slower than the
/// next: docs/autodiff.md), so the first Explains cost what later ones do. Skipped when a
/// packed tensor's size is unknown.
fn warm_up(model: &Model, set: &PointSet, batching: &Batching) -> Result<(), GradientError> {
    let spec = &model.spec;
    let Some(&classes) = spec.output_spec().shape.last() else {
        return Ok(());
    };
    let layout = &set.layout;
    let sizes = |slots: &[step::Slot]| slots.iter().map(|s| s.values()).sum::<Option<usize>>();
    let (Some(len), Some(f32s), Some(i64s)) = (
        sizes(&layout.points),
        sizes(&layout.fixed_f32),
        sizes(&layout.fixed_i64),
    ) else {
        return Ok(());
    };
    if classes < 1 {
        return Ok(());
    }
    let shapes: Vec<&[i64]> = layout.points.iter().map(|s| s.shape.as_slice()).collect();
    let shape = layout.input_shape(&shapes);
    // Ids at the lowest valid one of their tables.
    let mut ids = Vec::with_capacity(i64s);
    for slot in &layout.fixed_i64 {
        let columns = slot.shape.last().copied().unwrap_or(1).max(1) as usize;
        ids.extend((0..slot.values().unwrap_or(0)).map(|i| {
            spec.lookups
                .iter()
                .filter(|l| l.input == slot.name)
                .map(|l| l.range(i, columns).0)
                .max()
                .unwrap_or(0)
        }));
    }
    let default = super::default_batch(len) as usize;
    let mut rows_per_run = vec![default];
    if batching.enabled() && batching.max_rows > default {
        rows_per_run.push(batching.max_rows);
    }
    let (zeros, fixed) = (vec![0f32; len], vec![0f32; f32s]);
    for (_, worker) in &set.workers {
        for &rows in &rows_per_run {
            let alphas: Vec<f64> = (0..rows).map(|r| r as f64 / rows as f64).collect();
            let run = step::StepRun {
                input: &zeros,
                shape: &shape,
                baseline: &zeros,
                fixed_f32: &fixed,
                fixed_i64: &ids,
                fixed_f32_shape: &[],
                fixed_i64_shape: &[],
                alphas: &alphas,
                targets: &[0],
                classes: classes as usize,
                weights: vec![1.0; 2 * rows],
            };
            worker.run_blocking(run.inputs(layout), vec![step::STEP_SUMS.into()])?;
        }
    }
    Ok(())
}
