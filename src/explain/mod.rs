//! Explain: Integrated Gradients through a model's gradient graph, streamed as it goes.
//!
//! The data path, one file each:
//! - [`gradients`]: when the repository loads, the IG step models ([`step`]: the gradient
//!   model with interpolation and weighted sums inside) of each explainable model, on workers
//!   of their own, warmed up;
//! - [`plan`]: checks the whole request (every field that can be wrong is refused here,
//!   before any work starts), decodes the input and makes the baselines;
//! - `integrate`: [`ExplainJob::run`] evaluates gradients batch by batch on the step worker
//!   (the graph interpolates and sums the weighted gradients itself, so a batch returns a few
//!   input-sized sums, not one gradient per alpha), sending a progress event after each batch;
//!   several targets share each run: every alpha's row is repeated once per target with that
//!   target's one-hot cotangent;
//! - `response`: one explanation per target at the end, with the pictures asked for.

pub mod gradients;
mod integrate;
mod plan;
mod response;
pub mod step;

use std::sync::Arc;
use std::time::Instant;

pub use gradients::{Explainers, Gradients};
pub use plan::plan;

use crate::error::Error;
use crate::ig::Method;
use crate::image::RenderOptions;
use crate::input::PreparedInput;
use crate::model::{Model, Worker};
use crate::proto::integrad::v1 as pb;

/// Steps when the request says 0 (the classic recipe's figure).
pub const DEFAULT_STEPS: u32 = 50;
/// Alphas per gradient run by default for a 224x224 RGB input: 17 x 3 runs measured as fast as
/// 51 at once with a third of the peak memory (docs/autodiff.md). Other models scale it
/// by their input size, since activation memory grows with it (see [`default_batch`]).
pub const DEFAULT_BATCH: u32 = 16;
const DEFAULT_BATCH_INPUT: usize = 3 * 224 * 224;

/// The default alphas per run for an input of `input_len` values: DEFAULT_BATCH at 224x224
/// RGB, more for smaller inputs (up to 64), fewer for larger ones (down to 1).
pub fn default_batch(input_len: usize) -> u32 {
    let scaled = DEFAULT_BATCH as usize * DEFAULT_BATCH_INPUT / input_len.max(1);
    scaled.clamp(1, 64) as u32
}
/// Rows per gradient run at most (alphas x targets), whatever the request asks.
pub(crate) const MAX_ROWS: u32 = 256;

/// Server-wide bounds on Explain.
#[derive(Debug, Clone)]
pub struct ExplainLimits {
    pub max_steps: u32,
    pub max_targets: u32,
    pub max_baseline_samples: u32,
}

impl Default for ExplainLimits {
    fn default() -> Self {
        Self {
            max_steps: 4096,
            max_targets: 16,
            max_baseline_samples: 64,
        }
    }
}

enum Targets {
    Classes(Vec<usize>),
    TopK(usize),
}

/// A checked Explain request, ready to run.
pub struct ExplainJob {
    model: Model,
    gradient: Worker,
    /// The tensor the objective reads (the output, or a final Sigmoid's logits) and how.
    scored: gradients::Differentiated,
    input: PreparedInput,
    /// One baseline, or several samples whose IG is averaged (expected gradients).
    baselines: Vec<Vec<f32>>,
    targets: Targets,
    /// The output's classes (the cotangent's width).
    classes: usize,
    objective: pb::Objective,
    method: Method,
    steps: u32,
    max_steps: u32,
    tolerance: f32,
    batch: u32,
    pictures: Option<PictureRequest>,
    started: Instant,
}

/// Which pictures to draw, how, and over what.
struct PictureRequest {
    options: RenderOptions,
    mask: bool,
    overlay: bool,
    preprocessing: crate::image::Preprocessing,
    picture: Arc<::image::RgbImage>,
}

/// What a stream of Explain events carries: an event, or the error that ended it.
pub type ExplainItem = Result<pb::ExplainEvent, Error>;
