//! Integrating: the path of each baseline evaluated batch by batch on the model's IG step
//! worker, F at both ends, progress after every batch, refinement until the tolerance, and
//! one explanation per target at the end.

use std::time::Instant;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::response::{draw, explanation, send, Summary};
use super::{step, ExplainItem, ExplainJob, Targets};
use crate::autodiff::Objective;
use crate::engine::{sigmoid, softmax};
use crate::error::Error;
use crate::ig::{self, Integrator};
use crate::model::TensorData;
use crate::proto::integrad::v1 as pb;

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
            let mut explanation = explanation(self, &first, j, attributions, summary)?;
            if self.pictures.is_some() {
                let span = tracing::info_span!("render", ig.target = class as i64);
                draw(self.pictures.as_ref(), &mut explanation)
                    .instrument(span)
                    .await?;
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
                            self.scored.of.clone(),
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

    /// The objective for every class at one input, from the scored tensor's row: its softmax,
    /// its sigmoid, or the values as they are.
    fn objective_scores(&self, row: &[f32]) -> Vec<f32> {
        match self.scored.objective {
            Objective::Probability => softmax(row),
            Objective::Sigmoid => row.iter().map(|&l| sigmoid(l)).collect(),
            Objective::Logit => row.to_vec(),
        }
    }

    /// The objective for every class at each of `points` (inputs of the model's input shape),
    /// in one forward run (one per point where the model's batch axis is fixed). An inner
    /// scored tensor (a final Sigmoid's logits) is no output of the forward model: the step
    /// worker, which outputs it, evaluates each point instead.
    async fn scores(&self, points: &[&[f32]]) -> Result<Vec<Vec<f32>>, Error> {
        let spec = &self.model.spec;
        if !spec.outputs.iter().any(|o| o.name == self.scored.of) {
            return self.scores_on_step_worker(points).await;
        }
        let input = &spec.inputs[0].tensor;
        let fixed_batch = input.shape.first().is_some_and(|&d| d > 0);
        let per_run = if fixed_batch { 1 } else { points.len().max(1) };
        let mut all = Vec::with_capacity(points.len());
        for run in points.chunks(per_run) {
            let mut shape = vec![run.len() as i64];
            shape.extend_from_slice(&self.input.tensor.shape);
            let outputs = self
                .model
                .worker
                .run(
                    vec![(input.name.clone(), TensorData::f32(shape, run.concat()))],
                    vec![spec.output().to_string()],
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

    /// [`Self::scores`] through the step worker: one run per point, at alpha 1 of the path
    /// from the point to itself, with zero weights.
    async fn scores_on_step_worker(&self, points: &[&[f32]]) -> Result<Vec<Vec<f32>>, Error> {
        let mut all = Vec::with_capacity(points.len());
        for &point in points {
            let run = step::StepRun {
                input: point,
                baseline: point,
                shape: &self.input.tensor.shape,
                alphas: &[1.0],
                targets: &[0],
                classes: self.classes,
                weights: vec![0.0],
            };
            let outputs = self
                .gradient
                .run(run.inputs(), vec![self.scored.of.clone()])
                .instrument(tracing::info_span!("forward", ig.points = 1))
                .await?;
            let row = outputs[0]
                .as_f32()
                .filter(|row| row.len() == self.classes)
                .ok_or_else(|| {
                    Error::Internal(format!("{:?} is not one row of floats", self.scored.of))
                })?;
            all.push(self.objective_scores(row));
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
