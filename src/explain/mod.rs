//! Explain: Integrated Gradients through a model's gradient graph, streamed as it goes.
//!
//! The data path, one file each:
//! - [`gradients`]: when the repository loads, the IG step models ([`step`]: the gradient
//!   model with interpolation and weighted sums inside) of each explainable model, on workers
//!   of their own, warmed up;
//! - [`plan`]: checks the whole request (every field that can be wrong is refused here,
//!   before any work starts), decodes the inputs, computes the inner attribution points
//!   (embeddings) at them and makes the baselines, for each instance of an ExplainBatch;
//! - `integrate`: [`ExplainJob::run`] evaluates gradients batch by batch on the step worker
//!   (the graph interpolates and sums the weighted gradients itself, so a batch returns a few
//!   input-sized sums, not one gradient per alpha), sending a progress event after each batch;
//!   several targets share each run (every alpha's row is repeated once per target with that
//!   target's one-hot cotangent), and so do several paths (the instances of a batch, the
//!   samples of expected gradients);
//! - `response`: one explanation per target as each instance completes, with the attributions
//!   at every point, per feature for tabular inputs, and the pictures asked for;
//! - `served`: with a predictor, each instance's input also goes to the model server that
//!   answers users while the gradients run, and each explanation says whether it scores the
//!   input as integrad does ([`crate::predictor`]).

pub mod gradients;
mod integrate;
mod plan;
mod response;
mod served;
pub mod step;
pub mod technique;
mod walk;

use std::sync::Arc;
use std::time::Instant;

pub use gradients::{Explainers, Gradients, PointSet};
pub use plan::{plan, plan_batch};

use crate::error::Error;
use crate::ig::Method;
use crate::image::RenderOptions;
use crate::input::PreparedInputs;
use crate::model::{Model, Worker};
use crate::proto::integrad::v1 as pb;

/// Steps when the request says 0 (the classic recipe's figure).
pub const DEFAULT_STEPS: u32 = 50;
/// Alphas per gradient run by default for a 224x224 RGB input. Measured on the demo model
/// (docs/BENCHMARKS.md, "Rows per run"): a row costs about 12 % less in runs of 4 than of 16
/// (the activations of a small run stay in cache; ONNX Runtime's threads spin during runs),
/// and Explains of 101 alphas, 100 blurs or 10 x 21 noisy alphas were as fast or faster.
/// Other models scale it by their input size, since activation memory grows with it (see
/// [`default_batch`]).
pub const DEFAULT_BATCH: u32 = 4;
const DEFAULT_BATCH_INPUT: usize = 3 * 224 * 224;

/// `rows` for a 224x224 RGB input, scaled for an input of `input_len` values: more for smaller
/// inputs, fewer for larger ones, at least 1.
pub fn rows_for_input(rows: u32, input_len: usize) -> usize {
    (rows as usize * DEFAULT_BATCH_INPUT / input_len.max(1)).max(1)
}

/// The default alphas per run for an input of `input_len` values: DEFAULT_BATCH at 224x224
/// RGB, more for smaller inputs (up to 64), fewer for larger ones (down to 1).
pub fn default_batch(input_len: usize) -> u32 {
    rows_for_input(DEFAULT_BATCH, input_len).min(64) as u32
}
/// Rows per gradient run at most (alphas x targets), whatever the request asks.
pub(crate) const MAX_ROWS: u32 = 256;

/// Server-wide bounds on Explain.
#[derive(Debug, Clone)]
pub struct ExplainLimits {
    pub max_steps: u32,
    pub max_targets: u32,
    pub max_baseline_samples: u32,
    /// Instances of one ExplainBatch at most.
    pub max_instances: u32,
}

impl Default for ExplainLimits {
    fn default() -> Self {
        Self {
            max_steps: 4096,
            max_targets: 16,
            max_baseline_samples: 64,
            max_instances: 1024,
        }
    }
}

/// Rows of one gradient run at most when several paths (instances, baseline samples) share
/// it: as many values as the default batch of a 224x224 RGB image, and no more than this.
/// (8,192 rows of a small tabular model made the fewest, cheapest runs: docs/BENCHMARKS.md.)
const MAX_SHARED_ROWS: usize = 8192;

/// The rows a run of several paths may take for points of `input_len` values.
pub fn shared_rows(input_len: usize) -> usize {
    (DEFAULT_BATCH as usize * DEFAULT_BATCH_INPUT / input_len.max(1)).clamp(1, MAX_SHARED_ROWS)
}

#[derive(Debug, Clone)]
enum Targets {
    Classes(Vec<usize>),
    TopK(usize),
}

/// A checked Explain (or ExplainBatch) request, ready to run.
pub struct ExplainJob {
    model: Model,
    /// The attribution points and their step models.
    set: Arc<PointSet>,
    gradient: Worker,
    /// The tensor the objective reads (the output, or a final Sigmoid's logits) and how.
    scored: gradients::Differentiated,
    instances: Vec<Instance>,
    /// The output's classes (the cotangent's width).
    classes: usize,
    objective: pb::Objective,
    method: Method,
    steps: u32,
    max_steps: u32,
    tolerance: f32,
    /// Alphas per gradient run of one path (times its targets).
    batch: u32,
    /// Rows per gradient run at most, when several paths share runs.
    max_rows: usize,
    /// Whether it answers ExplainBatch (progress then counts instances).
    batched: bool,
    /// Explanations per event at most (ExplainBatchRequest.results_per_event; 1: each its
    /// own `result` event).
    results_per_event: usize,
    /// The scaling of a text's token and word attributions.
    token_normalization: pb::TokenNormalization,
    /// What `elapsed_ms` counts from: the request's arrival on a server, its planning in
    /// an in-process command.
    started: Instant,
    /// The model server each instance's score is checked against (`serve --predictor`).
    predictor: Option<Arc<crate::predictor::Predictor>>,
    /// The technique (plain IG runs on the straight-path engine, the others walk: `walk`),
    /// and its noise tunnel.
    technique: technique::Technique,
    noise: Option<crate::ig::noise::NoiseTunnel>,
}

/// One instance of a request: its inputs, the points at them, its baselines and targets.
struct Instance {
    /// Its index in the request's instances (0 for Explain).
    index: u32,
    /// Every graph input's tensor, without the batch axis.
    inputs: PreparedInputs,
    /// The attribution points at the input, packed ([`step::StepLayout`]), and each point's
    /// shape without the batch axis.
    x: Vec<f32>,
    shapes: Vec<Vec<i64>>,
    /// The shape of the step model's input for this instance.
    input_shape: Vec<i64>,
    /// The inputs held fixed along the path, packed.
    fixed_f32: Vec<f32>,
    fixed_i64: Vec<i64>,
    /// Their shapes in the step model's inputs, without the paths axis.
    fixed_f32_shape: Vec<i64>,
    fixed_i64_shape: Vec<i64>,
    /// One baseline, or several samples whose IG is averaged (expected gradients), packed.
    baselines: Vec<Vec<f32>>,
    targets: Targets,
    pictures: Option<PictureRequest>,
}

impl Instance {
    /// What must be equal for instances to share a run: the shapes of the step model's
    /// inputs (a text's length).
    fn shapes_key(&self) -> (&[i64], &[i64], &[i64]) {
        (
            &self.input_shape,
            &self.fixed_f32_shape,
            &self.fixed_i64_shape,
        )
    }
}

/// Which pictures to draw, how, and over what.
struct PictureRequest {
    options: RenderOptions,
    mask: bool,
    overlay: bool,
    /// The image input whose attributions are drawn.
    input: String,
    preprocessing: crate::image::Preprocessing,
    picture: Arc<::image::RgbImage>,
}

/// Events a stream buffers for a slow reader at least, and the attribution values its
/// buffered results may hold beyond that (32 MB of float32).
const EVENTS_BUFFERED: usize = 16;
const VALUES_BUFFERED: usize = 8 << 20;

impl ExplainJob {
    /// How many events its stream may hold for the client before the work waits for it:
    /// a batch's results all (small ones: a tabular row's are a few dozen values), so that
    /// the work never waits on a client that reads them one by one, up to a bound on their
    /// attributions' size (an image's are 150,000 values: the 16 events of a single Explain).
    pub fn events_buffered(&self) -> usize {
        let len = self.instances.iter().map(|i| i.x.len()).max().unwrap_or(1);
        let results: usize = self
            .instances
            .iter()
            .map(|i| match &i.targets {
                Targets::Classes(c) => c.len(),
                Targets::TopK(k) => *k,
            })
            .sum();
        let fit = VALUES_BUFFERED / len.max(1);
        EVENTS_BUFFERED + results.min(fit)
    }

    /// Counts its `elapsed_ms` (results and progress) from `received`, when its RPC arrived,
    /// instead of from its planning: the proto promises wall time from the request, and a
    /// server under load makes a request wait for an admission slot before it is planned,
    /// time its client sees and the server's report must not hide.
    pub fn received_at(mut self, received: Instant) -> Self {
        self.started = self.started.min(received);
        self
    }
}

/// What a stream of Explain events carries: an event, or the error that ended it.
pub type ExplainItem = Result<pb::ExplainEvent, Error>;
