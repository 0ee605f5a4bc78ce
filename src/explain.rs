//! Explain: Integrated Gradients through a model's gradient graph, streamed as it goes.
//!
//! [`Engine::plan_explain`] checks the whole request (every field that can be wrong is
//! refused here, before any work starts) and decodes the input; [`ExplainJob::run`] then
//! evaluates gradients batch by batch on the model's IG step worker ([`crate::ig::step`]:
//! the graph interpolates and sums the weighted gradients itself, so a batch returns a few
//! input-sized sums, not one gradient per alpha), sending a progress event after each batch
//! and one explanation per target at the end. Several targets share each run: every alpha's
//! row is repeated once per target with that target's one-hot cotangent.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::engine::{f32s, softmax, to_proto, Engine, PreparedInput};
use crate::error::Error;
use crate::ig::{self, step, BaselineKind, Integrator, Method};
use crate::image::{Colormap, RenderOptions};
use crate::model::{Model, OutputKind, TensorData, Worker};
use crate::proto::integrad::v1 as pb;

/// Steps when the request says 0 (the classic recipe's figure).
pub const DEFAULT_STEPS: u32 = 50;
/// Alphas per gradient run by default for a 224x224 RGB input: ORT-GRADIENTS.md measured
/// 17 x 3 runs as fast as 51 at once with a third of the peak memory. Other models scale it
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
const MAX_ROWS: u32 = 256;

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

impl Engine {
    /// Checks `request` against the model and the limits and prepares its input and baseline.
    pub async fn plan_explain(&self, request: pb::ExplainRequest) -> Result<ExplainJob, Error> {
        let started = Instant::now();
        let limits = self.explain_limits();
        let model = self.model(&request.model)?.clone();
        let spec = model.spec.clone();
        let gradients = match (&spec.explainable, &model.gradients) {
            (Ok(()), Some(g)) => g.clone(),
            (Err(reason), _) => {
                return Err(Error::FailedPrecondition {
                    field: "model",
                    reason: format!("model {:?} cannot be explained: {reason}", spec.name),
                })
            }
            (Ok(()), None) => {
                return Err(Error::Internal(
                    "explainable model without gradients".into(),
                ))
            }
        };
        let classes = spec
            .output_spec()
            .shape
            .last()
            .copied()
            .filter(|&k| k > 0)
            .unwrap_or(spec.labels.len() as i64) as usize;
        if spec.output_spec().shape.len() != 2 || classes == 0 {
            return Err(Error::FailedPrecondition {
                field: "model",
                reason: format!(
                    "Explain needs a [batch, classes] output; {:?} has shape {:?}",
                    spec.output,
                    spec.output_spec().shape
                ),
            });
        }

        let objective = match pb::Objective::try_from(request.objective) {
            Ok(pb::Objective::Unspecified) | Ok(pb::Objective::Probability) => {
                pb::Objective::Probability
            }
            Ok(pb::Objective::Logit) if spec.output_kind == OutputKind::Probabilities => {
                return Err(Error::invalid("objective", format!("model {:?} outputs probabilities, so it has no logits to explain; use OBJECTIVE_PROBABILITY", spec.name)));
            }
            Ok(pb::Objective::Logit) => pb::Objective::Logit,
            Err(_) => {
                return Err(Error::invalid(
                    "objective",
                    format!("unknown value {}", request.objective),
                ))
            }
        };
        let gradient = match (objective, spec.output_kind) {
            (pb::Objective::Probability, OutputKind::Logits) => gradients
                .softmax
                .clone()
                .ok_or_else(|| Error::Internal("no softmax gradient model".into()))?,
            _ => gradients.output.clone(),
        };
        let method = match pb::Method::try_from(request.method) {
            Ok(pb::Method::Unspecified) | Ok(pb::Method::Trapezoid) => Method::Trapezoid,
            Ok(pb::Method::Left) => Method::Left,
            Ok(pb::Method::Right) => Method::Right,
            Ok(pb::Method::Midpoint) => Method::Midpoint,
            Ok(pb::Method::GaussLegendre) => Method::GaussLegendre,
            Err(_) => {
                return Err(Error::invalid(
                    "method",
                    format!("unknown value {}", request.method),
                ))
            }
        };
        let steps = match request.steps.unwrap_or(DEFAULT_STEPS) {
            0 => {
                return Err(Error::invalid(
                    "steps",
                    "must be at least 1 (leave it unset for the default)",
                ))
            }
            s if s > limits.max_steps => {
                return Err(Error::invalid(
                    "steps",
                    format!("{s} is above this server's maximum of {}", limits.max_steps),
                ))
            }
            s => s,
        };
        if !request.tolerance.is_finite() || request.tolerance < 0.0 {
            return Err(Error::invalid(
                "tolerance",
                format!("must be a finite number >= 0, got {}", request.tolerance),
            ));
        }
        let max_steps = match request.max_steps {
            0 => limits.max_steps.max(steps),
            m if m < steps => {
                return Err(Error::invalid(
                    "max_steps",
                    format!("{m} is below steps ({steps})"),
                ))
            }
            m if m > limits.max_steps => {
                return Err(Error::invalid(
                    "max_steps",
                    format!("{m} is above this server's maximum of {}", limits.max_steps),
                ))
            }
            m => m,
        };
        if request.tolerance > 0.0 && method != Method::Trapezoid {
            return Err(Error::invalid("tolerance", "adaptive refinement reuses gradients by doubling trapezoid steps; use METHOD_TRAPEZOID (or tolerance 0)"));
        }
        let targets = match request.target.and_then(|t| t.kind) {
            None => Targets::TopK(1),
            Some(pb::target::Kind::ClassIndex(c)) => {
                if c < 0 || c as usize >= classes {
                    return Err(Error::invalid(
                        "target.class_index",
                        format!("{c} is not a class of model {:?} (0..{classes})", spec.name),
                    ));
                }
                Targets::Classes(vec![c as usize])
            }
            Some(pb::target::Kind::Label(label)) => {
                match spec.labels.iter().position(|l| *l == label) {
                    Some(c) => Targets::Classes(vec![c]),
                    None if spec.labels.is_empty() => {
                        return Err(Error::invalid(
                            "target.label",
                            format!(
                                "model {:?} has no labels; give target.class_index",
                                spec.name
                            ),
                        ))
                    }
                    None => {
                        return Err(Error::invalid(
                            "target.label",
                            format!("{label:?} is not a label of model {:?}", spec.name),
                        ))
                    }
                }
            }
            Some(pb::target::Kind::TopK(k)) => {
                if k == 0 || k > limits.max_targets || k as usize > classes {
                    return Err(Error::invalid(
                        "target.top_k",
                        format!(
                            "must be in 1..={}, got {k}",
                            limits.max_targets.min(classes as u32)
                        ),
                    ));
                }
                Targets::TopK(k as usize)
            }
        };
        let target_count = match &targets {
            Targets::Classes(c) => c.len() as u32,
            Targets::TopK(k) => *k as u32,
        };
        let input_len: i64 = spec
            .input_spec()
            .shape
            .iter()
            .skip(1)
            .map(|&d| d.max(1))
            .product();
        let batch = match request.batch_size {
            0 => default_batch(input_len as usize),
            b => b,
        }
        .clamp(1, (MAX_ROWS / target_count).max(1));

        let render = request.render.filter(|r| r.mask || r.overlay);
        let render_options = match &render {
            None => None,
            Some(_) if spec.image.is_none() => {
                return Err(Error::invalid(
                    "render",
                    format!(
                        "model {:?} takes tensors, not pictures: there is nothing to draw on",
                        spec.name
                    ),
                ));
            }
            Some(r) => Some(render_options(r)?),
        };

        // The baseline's kind is checked before the input is decoded, the rest after.
        let samples = request.baseline.as_ref().map_or(1, |b| b.samples.max(1));
        let kind = request.baseline.and_then(|b| b.kind);
        if samples > limits.max_baseline_samples {
            return Err(Error::invalid(
                "baseline.samples",
                format!(
                    "{samples} is above this server's maximum of {}",
                    limits.max_baseline_samples
                ),
            ));
        }
        if samples > 1 && !matches!(kind, Some(pb::baseline::Kind::Uniform(_))) {
            return Err(Error::invalid("baseline.samples", "only a uniform baseline has several samples (seeds seed, seed+1, ...); the others are deterministic"));
        }
        let input = self.prepare_input(&model, request.input).await?;
        let values = input
            .tensor
            .as_f32()
            .ok_or_else(|| Error::invalid("input.tensor.dtype", "Explain needs a float32 input"))?;
        let preprocessing = spec.image.as_ref().map(|i| &i.preprocessing);
        let baselines = match kind {
            Some(pb::baseline::Kind::Tensor(t)) => vec![baseline_tensor(t, &input.tensor)?],
            Some(pb::baseline::Kind::Uniform(u)) => (0..u64::from(samples))
                .map(|i| {
                    ig::make_baseline(
                        BaselineKind::Uniform {
                            seed: u.seed.wrapping_add(i),
                        },
                        values,
                        preprocessing,
                    )
                })
                .collect::<Result<_, _>>()
                .map_err(|e| Error::invalid("baseline", e.to_string()))?,
            other => {
                let kind = match other {
                    None if input.image.is_some() => BaselineKind::Black,
                    None | Some(pb::baseline::Kind::Zeros(_)) => BaselineKind::Zeros,
                    Some(pb::baseline::Kind::Black(_)) => BaselineKind::Black,
                    Some(pb::baseline::Kind::White(_)) => BaselineKind::White,
                    Some(pb::baseline::Kind::Uniform(u)) => BaselineKind::Uniform { seed: u.seed },
                    Some(pb::baseline::Kind::Blur(b)) => BaselineKind::Blur { sigma: b.sigma },
                    Some(pb::baseline::Kind::Tensor(_)) => unreachable!("handled above"),
                };
                vec![ig::make_baseline(kind, values, preprocessing)
                    .map_err(|e| Error::invalid("baseline", e.to_string()))?]
            }
        };
        Ok(ExplainJob {
            model,
            gradient,
            baselines,
            targets,
            objective,
            classes,
            method,
            steps,
            max_steps,
            tolerance: request.tolerance,
            pictures: match (render, render_options, spec.image.as_ref()) {
                (Some(r), Some(options), Some(image)) => Some(PictureRequest {
                    options,
                    mask: r.mask,
                    overlay: r.overlay,
                    preprocessing: image.preprocessing.clone(),
                    picture: Arc::new(match &input.image {
                        Some(picture) => picture.clone(),
                        None => crate::image::picture_from_input(values, &image.preprocessing),
                    }),
                }),
                _ => None,
            },
            batch,
            input,
            started,
        })
    }
}

fn render_options(r: &pb::RenderOptions) -> Result<RenderOptions, Error> {
    let defaults = RenderOptions::default();
    let clip_percentile = r.clip_percentile.unwrap_or(defaults.clip_percentile);
    if !(0.0..=100.0).contains(&clip_percentile) {
        return Err(Error::invalid(
            "render.clip_percentile",
            format!("must be in [0, 100], got {clip_percentile}"),
        ));
    }
    let overlay_alpha = r.overlay_alpha.unwrap_or(defaults.overlay_alpha);
    if !(0.0..=1.0).contains(&overlay_alpha) {
        return Err(Error::invalid(
            "render.overlay_alpha",
            format!("must be in [0, 1], got {overlay_alpha}"),
        ));
    }
    let colormap = match pb::Colormap::try_from(r.colormap) {
        Ok(pb::Colormap::Unspecified) | Ok(pb::Colormap::Inferno) => Colormap::Inferno,
        Ok(pb::Colormap::Viridis) => Colormap::Viridis,
        Err(_) => {
            return Err(Error::invalid(
                "render.colormap",
                format!("unknown value {}", r.colormap),
            ))
        }
    };
    Ok(RenderOptions {
        colormap,
        clip_percentile,
        overlay_alpha,
    })
}

fn baseline_tensor(t: pb::Tensor, input: &TensorData) -> Result<Vec<f32>, Error> {
    if t.shape != input.shape {
        return Err(Error::invalid(
            "baseline.tensor",
            format!(
                "shape {:?} differs from the input's {:?}",
                t.shape, input.shape
            ),
        ));
    }
    if t.dtype != pb::DataType::Float32 as i32 {
        return Err(Error::invalid(
            "baseline.tensor.dtype",
            "must be DATA_TYPE_FLOAT32",
        ));
    }
    if t.data.len() != input.len() * 4 {
        return Err(Error::invalid(
            "baseline.tensor.data",
            format!(
                "has {} bytes; shape {:?} needs {}",
                t.data.len(),
                t.shape,
                input.len() * 4
            ),
        ));
    }
    let values = f32s(&t.data);
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "baseline.tensor.data",
            format!("element {i} is {}", values[i]),
        ));
    }
    Ok(values)
}

impl ExplainJob {
    /// Runs the job, sending events to `events`. Stops within one batch when the receiver is
    /// gone (the client cancelled or its deadline passed), freeing the model for others.
    pub async fn run(self, events: mpsc::Sender<ExplainItem>) {
        if let Err(error) = self.explain(&events).await {
            let _ = events.send(Err(error)).await;
        }
    }

    async fn explain(&self, events: &mpsc::Sender<ExplainItem>) -> Result<(), Error> {
        let input = self.input.tensor.as_f32().expect("checked in plan_explain");
        let input_len = input.len();
        // F(x) and F(x') for every class come from the path's own rows at alpha 1 and 0 where
        // the rule evaluates there (trapezoid: both ends), exactly those points through the
        // same model, with no forward run of their own. A forward run computes the others,
        // and F(x) up front when the targets depend on the prediction: all of them that are
        // needed before the first path in one run.
        let rule = ig::quadrature::nodes(self.method, self.steps);
        let on_path = |alpha: f64| rule.iter().any(|n| n.alpha == alpha);
        let (input_on_path, baseline_on_path) = (on_path(1.0), on_path(0.0));
        let input_first = matches!(self.targets, Targets::TopK(_)) || !input_on_path;
        let mut first = Vec::new();
        if input_first {
            first.push(input);
        }
        if !baseline_on_path {
            first.push(self.baselines[0].as_slice());
        }
        let mut known = self.scores(&first).await?.into_iter();
        let mut score_input = if input_first { known.next() } else { None };
        let targets: Vec<usize> = match (&self.targets, &score_input) {
            (Targets::Classes(c), _) => c.clone(),
            (Targets::TopK(k), Some(scores)) => {
                let mut order: Vec<usize> = (0..scores.len()).collect();
                order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                order.truncate(*k);
                order
            }
            (Targets::TopK(_), None) => return Err(Error::Internal("top-k without F(x)".into())),
        };
        let t = targets.len();

        // With several baselines (expected gradients), IG is averaged over them: the mean
        // attributions add up to F(x) minus the mean F(x').
        let samples = self.baselines.len();
        let mut attribution_sums = vec![vec![0f64; input_len]; t];
        let mut baseline_scores = vec![0f64; t];
        let mut first_path: Option<Integrator> = None;
        let (mut evaluations, mut steps) = (0usize, 0u32);
        for (sample, baseline) in self.baselines.iter().enumerate() {
            let score_baseline = match (sample, baseline_on_path) {
                (_, true) => None,
                (0, false) => known.next(),
                (_, false) => self.scores(&[baseline]).await?.pop(),
            };
            let mut path = Path {
                baseline,
                targets: &targets,
                ends: Ends {
                    input: score_input.clone(),
                    baseline: score_baseline,
                },
            };
            let progress = Plan {
                done_before: evaluations,
                samples_left: samples - sample,
            };
            let integrator = self.integrate(&mut path, progress, events).await?;
            let (Some(f_input), Some(f_baseline)) = (path.ends.input, path.ends.baseline) else {
                return Err(Error::Internal(
                    "a path ended without F at both ends".into(),
                ));
            };
            for (j, &class) in targets.iter().enumerate() {
                let average = integrator
                    .average_gradient(j)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let attributions = ig::attributions(input, baseline, &average);
                for (sum, value) in attribution_sums[j].iter_mut().zip(attributions) {
                    *sum += f64::from(value);
                }
                baseline_scores[j] += f64::from(f_baseline[class]);
            }
            score_input.get_or_insert(f_input);
            evaluations += integrator.evaluations();
            steps = steps.max(integrator.estimate_steps().unwrap_or(0));
            first_path.get_or_insert(integrator);
        }
        let (Some(first), Some(score_input)) = (first_path, score_input) else {
            return Err(Error::Internal("no baseline".into()));
        };

        for (j, &class) in targets.iter().enumerate() {
            let attributions: Vec<f32> = attribution_sums[j]
                .iter()
                .map(|s| (s / samples as f64) as f32)
                .collect();
            let summary = Summary {
                class,
                f_input: score_input[class],
                f_baseline: (baseline_scores[j] / samples as f64) as f32,
                steps,
                evaluations,
            };
            let mut explanation = self.explanation(&first, j, attributions, summary)?;
            if self.pictures.is_some() {
                let span = tracing::info_span!("render", ig.target = class as i64);
                self.draw(&mut explanation).instrument(span).await?;
            }
            send(events, pb::explain_event::Event::Result(explanation)).await?;
        }
        Ok(())
    }

    /// Integrates along one path (one baseline), streaming progress, refining if asked.
    async fn integrate(
        &self,
        path: &mut Path<'_>,
        plan: Plan,
        events: &mpsc::Sender<ExplainItem>,
    ) -> Result<Integrator, Error> {
        let spec = &self.model.spec;
        let input = self.input.tensor.as_f32().expect("checked in plan_explain");
        let input_len = input.len();
        let (targets, t) = (path.targets, path.targets.len());
        let classes = self.classes;
        let mut integrator = Integrator::new(self.method, self.steps, input_len, t)
            .map_err(|e| Error::invalid("steps", e.to_string()))?;
        // While it integrates, this request counts as active on the gradient worker: its
        // batcher may wait briefly for this request's next batch to merge it with others'.
        let gradient = self.gradient.caller();
        loop {
            while let Some(batch) = integrator.next_batch(self.batch as usize) {
                let run = step::StepRun {
                    input,
                    baseline: path.baseline,
                    shape: &self.input.tensor.shape,
                    alphas: batch.alphas(),
                    targets,
                    classes,
                    weights: integrator.sum_weights(&batch),
                };
                let rows = run.rows();
                let batch_started = Instant::now();
                let outputs = gradient
                    .run(
                        run.inputs(),
                        vec![
                            step::STEP_SUMS.to_string(),
                            step::STEP_ABS.to_string(),
                            spec.output.clone(),
                        ],
                    )
                    .instrument(tracing::info_span!(
                        "gradient_batch",
                        ig.steps = batch.len() as i64,
                        ig.rows = rows as i64
                    ))
                    .await?;
                crate::telemetry::record_gradient_batch(
                    &spec.name,
                    batch.len(),
                    batch_started.elapsed(),
                );
                let float = |i: usize| {
                    outputs[i]
                        .as_f32()
                        .ok_or_else(|| Error::Internal("IG step output is not float32".into()))
                };
                let (sums, abs_sums, out) = (float(0)?, float(1)?, float(2)?);
                if out.len() != rows * classes {
                    return Err(Error::Internal(format!(
                        "IG step output has {} scores for {rows} rows of {classes} classes",
                        out.len()
                    )));
                }
                let mut scores = Vec::with_capacity(rows);
                for (r, row) in out.chunks_exact(classes).enumerate() {
                    let all = self.objective_scores(row);
                    scores.push(all[targets[r % t]]);
                    // The ends of the path: F at exactly x' and x (any target's row).
                    let end = match batch.alphas()[r / t] {
                        0.0 => &mut path.ends.baseline,
                        1.0 => &mut path.ends.input,
                        _ => continue,
                    };
                    end.get_or_insert(all);
                }
                integrator
                    .feed_sums(&batch, sums, &scores, abs_sums)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let per_path = integrator.evaluations() + integrator.remaining();
                let progress = pb::Progress {
                    steps_done: (plan.done_before + integrator.evaluations()) as u32,
                    steps_total: (plan.done_before + per_path * plan.samples_left) as u32,
                    elapsed_ms: self.started.elapsed().as_secs_f32() * 1e3,
                    steps: integrator.estimate_steps().unwrap_or(0),
                    relative_delta: self.worst_delta(&integrator, path).unwrap_or(f32::NAN),
                };
                send(events, pb::explain_event::Event::Progress(progress)).await?;
            }
            let converged = self.tolerance <= 0.0
                || self
                    .worst_delta(&integrator, path)
                    .is_some_and(|d| d <= self.tolerance);
            if converged || integrator.steps().saturating_mul(2) > self.max_steps {
                return Ok(integrator);
            }
            integrator
                .refine()
                .map_err(|e| Error::Internal(e.to_string()))?;
        }
    }

    /// Adds the requested pictures to `explanation` (drawing is CPU work: off the async threads).
    async fn draw(&self, explanation: &mut pb::Explanation) -> Result<(), Error> {
        let Some(request) = &self.pictures else {
            return Ok(());
        };
        let attributions = explanation
            .attributions
            .as_ref()
            .map(|t| f32s(&t.data))
            .unwrap_or_default();
        let (options, preprocessing, picture) = (
            request.options,
            request.preprocessing.clone(),
            request.picture.clone(),
        );
        let pictures = tokio::task::spawn_blocking(move || {
            crate::image::render(&attributions, &preprocessing, &picture, &options)
        })
        .await
        .map_err(|e| Error::Internal(format!("drawing failed: {e}")))?;
        if request.mask {
            explanation.mask_png = crate::image::png(&pictures.mask);
        }
        if request.overlay {
            explanation.overlay_png = crate::image::png(&pictures.overlay);
        }
        Ok(())
    }

    /// The objective for every class at one input: softmax or logits (or the model's own
    /// probabilities).
    fn objective_scores(&self, output: &[f32]) -> Vec<f32> {
        match (self.objective, self.model.spec.output_kind) {
            (pb::Objective::Probability, OutputKind::Logits) => softmax(output),
            _ => output.to_vec(),
        }
    }

    /// The objective for every class at each of `points` (inputs of the model's input shape),
    /// in one forward run (one per point where the model's batch axis is fixed).
    async fn scores(&self, points: &[&[f32]]) -> Result<Vec<Vec<f32>>, Error> {
        let spec = &self.model.spec;
        let fixed_batch = spec.input_spec().shape.first().is_some_and(|&d| d > 0);
        let per_run = if fixed_batch { 1 } else { points.len().max(1) };
        let mut all = Vec::with_capacity(points.len());
        for run in points.chunks(per_run) {
            let mut shape = vec![run.len() as i64];
            shape.extend_from_slice(&self.input.tensor.shape);
            let outputs = self
                .model
                .worker
                .run(
                    vec![(spec.input.clone(), TensorData::f32(shape, run.concat()))],
                    vec![spec.output.clone()],
                )
                .instrument(tracing::info_span!("forward", ig.points = run.len() as i64))
                .await?;
            let out = outputs[0]
                .as_f32()
                .ok_or_else(|| Error::Internal("output is not float32".into()))?;
            if out.len() != run.len() * self.classes {
                return Err(Error::Internal(format!(
                    "forward output has {} values for {} points of {} classes",
                    out.len(),
                    run.len(),
                    self.classes
                )));
            }
            all.extend(
                out.chunks_exact(self.classes)
                    .map(|row| self.objective_scores(row)),
            );
        }
        Ok(all)
    }

    /// The largest |delta| / |F(x) - F(x')| over the targets, once a round is complete.
    fn worst_delta(&self, integrator: &Integrator, path: &Path<'_>) -> Option<f32> {
        integrator.estimate_steps()?;
        let input = self.input.tensor.as_f32()?;
        let (ends_input, ends_baseline) = (path.ends.input.as_ref()?, path.ends.baseline.as_ref()?);
        let mut worst = 0f64;
        for (j, &class) in path.targets.iter().enumerate() {
            let average = integrator.average_gradient(j).ok()?;
            let attributions = ig::attributions(input, path.baseline, &average);
            let c = ig::Completeness::new(
                &attributions,
                f64::from(ends_input[class]),
                f64::from(ends_baseline[class]),
            );
            worst = worst.max(c.relative_delta());
        }
        Some(worst as f32)
    }

    /// The Explanation of target `j`: its (averaged) attributions, the completeness numbers,
    /// and the path diagnostics of `integrator` (the first baseline's path).
    fn explanation(
        &self,
        integrator: &Integrator,
        j: usize,
        attributions: Vec<f32>,
        summary: Summary,
    ) -> Result<pb::Explanation, Error> {
        let Summary {
            class,
            f_input,
            f_baseline,
            steps,
            evaluations,
        } = summary;
        let c = ig::Completeness::new(&attributions, f64::from(f_input), f64::from(f_baseline));
        let path = integrator
            .path(j)
            .map_err(|e| Error::Internal(e.to_string()))?
            .into_iter()
            .map(|p| pb::PathPoint {
                alpha: p.alpha as f32,
                score: p.score,
                mean_abs_gradient: p.mean_abs_gradient,
            })
            .collect();
        Ok(pb::Explanation {
            attributions: Some(to_proto(&TensorData::f32(
                self.input.tensor.shape.clone(),
                attributions,
            ))),
            target_class: class as i64,
            label: self
                .model
                .spec
                .labels
                .get(class)
                .cloned()
                .unwrap_or_default(),
            score_input: f_input,
            score_baseline: f_baseline,
            attribution_sum: c.attribution_sum as f32,
            convergence_delta: c.delta as f32,
            steps,
            method: pb::Method::from(self.method) as i32,
            objective: self.objective as i32,
            evaluations: evaluations as u32,
            elapsed_ms: self.started.elapsed().as_secs_f32() * 1e3,
            path,
            mask_png: Vec::new(),
            overlay_png: Vec::new(),
        })
    }
}

/// One path to integrate: its baseline, the targets, and F at both ends for every class.
struct Path<'a> {
    baseline: &'a [f32],
    targets: &'a [usize],
    ends: Ends,
}

/// F at x and at x' for every class: known before the path runs (a forward run), or taken
/// from the path's own rows at alpha 1 and 0 as they come.
struct Ends {
    input: Option<Vec<f32>>,
    baseline: Option<Vec<f32>>,
}

/// Where one path sits in the whole job, for progress events.
#[derive(Clone, Copy)]
struct Plan {
    done_before: usize,
    samples_left: usize,
}

/// The numbers of one target's explanation that come from outside the path integrator.
struct Summary {
    class: usize,
    f_input: f32,
    f_baseline: f32,
    steps: u32,
    evaluations: usize,
}

impl From<Method> for pb::Method {
    fn from(method: Method) -> Self {
        match method {
            Method::Trapezoid => pb::Method::Trapezoid,
            Method::Left => pb::Method::Left,
            Method::Right => pb::Method::Right,
            Method::Midpoint => pb::Method::Midpoint,
            Method::GaussLegendre => pb::Method::GaussLegendre,
        }
    }
}

async fn send(
    events: &mpsc::Sender<ExplainItem>,
    event: pb::explain_event::Event,
) -> Result<(), Error> {
    events
        .send(Ok(pb::ExplainEvent { event: Some(event) }))
        .await
        .map_err(|_| Error::Cancelled)
}
