//! Explain's gradient models: for every model that can be explained, the IG step models
//! ([`super::step`]) of its served output w.r.t. its attribution point, each on a worker of its
//! own on the model's device, warmed up before the server says it is ready.
//!
//! The model layer knows nothing of these: it loads and serves the forward graph, and
//! [`prepare`] adds what Explain needs once the repository is loaded. A model whose graph
//! can't be differentiated keeps serving Predict; its spec then says why Explain can't.

use std::collections::HashMap;
use std::sync::Arc;

use ort::environment::Environment;
use prost::Message;

use super::step;
use crate::autodiff::{build_gradient, GradOptions, Objective};
use crate::model::{
    open_worker, Batching, Head, LoadOptions, Merge, Model, ModelEntry, OutputKind, Repository,
    SigmoidKind, Worker, WorkerOptions,
};
use crate::proto::onnx::ModelProto;

/// Why a model's gradient models could not be made; the text is what GetModel reports.
#[derive(Debug, thiserror::Error)]
pub enum GradientError {
    #[error("Explain takes one attribution point; the model has {0}")]
    Points(usize),
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
    Autodiff(#[from] crate::autodiff::AutodiffError),
    #[error(transparent)]
    Step(#[from] step::StepModelError),
    #[error(transparent)]
    Open(#[from] crate::model::LoadError),
    #[error("gradient warm-up run failed: {0}")]
    WarmUp(#[from] crate::model::ModelError),
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

/// The IG step models of one model's head w.r.t. its attribution point, one per
/// [`differentiated`] entry.
#[derive(Clone)]
pub struct Gradients {
    workers: Vec<(Differentiated, Worker)>,
}

impl Gradients {
    /// The step worker of `what`.
    pub fn get(&self, what: &Differentiated) -> Option<&Worker> {
        self.workers
            .iter()
            .find(|(d, _)| d == what)
            .map(|(_, worker)| worker)
    }
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

/// Builds and warms up the gradient models of every ready model in `repository`. A model
/// whose gradients can't be built has its attribution set to the reason (GetModel shows it).
pub fn prepare(
    repository: &mut Repository,
    env: &Environment,
    options: &LoadOptions,
) -> Explainers {
    let mut models = HashMap::new();
    for (name, entry) in repository.iter_mut() {
        let ModelEntry::Ready(model) = entry else {
            continue;
        };
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

/// The step models of `model`'s output w.r.t. its (one) attribution point, warmed up.
fn build(
    model: &Model,
    env: &Environment,
    options: &LoadOptions,
) -> Result<Gradients, GradientError> {
    let spec = &model.spec;
    let started = std::time::Instant::now();
    let point = match spec.attribution.as_deref() {
        Ok([point]) => point.tensor().to_string(),
        Ok(points) => return Err(GradientError::Points(points.len())),
        Err(_) => unreachable!("prepare skips models that can't be explained"),
    };
    let bytes = std::fs::read(&spec.path).map_err(|source| GradientError::Read {
        path: spec.path.clone(),
        source,
    })?;
    let graph = ModelProto::decode(bytes.as_slice()).map_err(|source| GradientError::Decode {
        path: spec.path.clone(),
        source,
    })?;
    drop(bytes);
    let open = |what: &Differentiated| -> Result<Worker, GradientError> {
        let grad = build_gradient(
            &graph,
            &GradOptions {
                wrt: Some(point.clone()),
                of: Some(what.of.clone()),
                objective: what.objective,
            },
        )?;
        let step_model = step::build_step_model(&grad.model, &point)?;
        // A model with inputs besides the explained one has them in the step model too, and
        // the batcher does not know how their rows go: such step jobs run alone.
        let merge = if fed_inputs(&step_model) == step::STEP_INPUTS.len() {
            Merge::Paths(step::MERGE)
        } else {
            Merge::Off
        };
        let worker = WorkerOptions {
            merge,
            batching: options.batching,
            keep_bound: Some(step::KEEP_BOUND),
        };
        Ok(open_worker(
            spec,
            "grad",
            &step_model.encode_to_vec(),
            env,
            options,
            worker,
        )?)
    };
    let gradients = Gradients {
        workers: differentiated(&spec.head)
            .into_iter()
            .map(|what| Ok((what.clone(), open(&what)?)))
            .collect::<Result<_, GradientError>>()?,
    };
    tracing::info!(
        model = %spec.name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "gradient models built"
    );
    warm_up(model, &gradients, &options.batching.on(spec.device))?;
    Ok(gradients)
}

/// The graph inputs a caller feeds (those without an initializer of the same name).
fn fed_inputs(model: &ModelProto) -> usize {
    let Some(graph) = &model.graph else {
        return 0;
    };
    graph
        .input
        .iter()
        .filter(|i| !graph.initializer.iter().any(|t| t.name == i.name))
        .count()
}

/// IG step runs per gradient worker at the default Explain batch and, with batching on, at the
/// largest merged run (ONNX Runtime's first run at a batch size is about 1.8x slower than the
/// next: docs/autodiff.md), so the first Explains cost what later ones do.
fn warm_up(model: &Model, gradients: &Gradients, batching: &Batching) -> Result<(), GradientError> {
    let spec = &model.spec;
    let Some(&classes) = spec.output_spec().shape.last() else {
        return Ok(());
    };
    let [input] = spec.inputs.as_slice() else {
        return Ok(());
    };
    let input = &input.tensor;
    if classes < 1 || input.shape.iter().skip(1).any(|&d| d < 1) {
        return Ok(());
    }
    let shape = &input.shape[1..];
    let len = shape.iter().product::<i64>() as usize;
    let default = super::default_batch(len) as usize;
    let mut sizes = vec![default];
    if batching.enabled() && batching.max_rows > default {
        sizes.push(batching.max_rows);
    }
    let zeros = vec![0f32; len];
    for (_, worker) in &gradients.workers {
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
            worker.run_blocking(run.inputs(), vec![step::STEP_SUMS.into()])?;
        }
    }
    Ok(())
}
