//! Integrating: every path (one per instance and baseline sample) evaluated batch by batch on
//! the model's IG step worker, several paths sharing a run, F at both ends, progress after
//! every run, refinement until the tolerance, and each instance's explanations as soon as all
//! of its paths are done.

use std::time::Instant;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::response::{draw, explanation, send, Summary};
use super::served::ServedCalls;
use super::technique::Technique;
use super::{step, ExplainItem, ExplainJob, Instance, Targets};
use crate::autodiff::Objective;
use crate::engine::{sigmoid, softmax, softmax_at};
use crate::error::Error;
use crate::ig::{self, Batch, Integrator};
use crate::model::{Merge, TensorData};
use crate::proto::integrad::v1 as pb;

/// Values of one run's weights matrix at most when several paths share it (about 2 MB).
const MAX_WEIGHTS: usize = 1 << 19;

impl ExplainJob {
    /// Runs the job, sending events to `events`. Stops within one run when the receiver is
    /// gone (the client cancelled or its deadline passed), freeing the model for others.
    pub async fn run(self, events: mpsc::Sender<ExplainItem>) {
        let plain =
            matches!(self.technique, Technique::IntegratedGradients) && self.noise.is_none();
        let done = match plain {
            true => self.explain(&events).await,
            false => self.walk(&events).await,
        };
        if let Err(error) = done {
            let _ = events.send(Err(error)).await;
        }
    }

    async fn explain(&self, events: &mpsc::Sender<ExplainItem>) -> Result<(), Error> {
        // The predictor (if any) is asked first, so that its answers come while this works.
        let mut served = ServedCalls::start(self);
        // F(x) and F(x') for every class come from the path's own rows at alpha 1 and 0 where
        // the rule evaluates there (trapezoid: both ends), exactly those points through the
        // same model, with no forward run of their own. A forward run computes the others,
        // and F(x) up front when the targets depend on the prediction: all of them that are
        // needed before the first path in one run.
        let rule = ig::quadrature::nodes(self.method, self.steps);
        let on_path = |alpha: f64| rule.iter().any(|n| n.alpha == alpha);
        let (input_on_path, baseline_on_path) = (on_path(1.0), on_path(0.0));
        let mut first: Vec<(usize, &[f32])> = Vec::new();
        let mut input_first = Vec::with_capacity(self.instances.len());
        for (i, instance) in self.instances.iter().enumerate() {
            let needed = matches!(instance.targets, Targets::TopK(_)) || !input_on_path;
            if needed {
                first.push((i, &instance.x));
            }
            if !baseline_on_path {
                for baseline in &instance.baselines {
                    first.push((i, baseline));
                }
            }
            input_first.push(needed);
        }
        let mut known = self.scores(&first).await?.into_iter();

        let mut paths = Vec::new();
        // Each instance's paths, which are pushed one instance after another.
        let mut own = Vec::with_capacity(self.instances.len());
        for (i, instance) in self.instances.iter().enumerate() {
            let from = paths.len();
            let score_input = if input_first[i] { known.next() } else { None };
            let targets: Vec<usize> = match (&instance.targets, &score_input) {
                (Targets::Classes(c), _) => c.clone(),
                (Targets::TopK(k), Some(scores)) => top_k(scores, *k),
                (Targets::TopK(_), None) => {
                    return Err(Error::Internal("top-k without F(x)".into()))
                }
            };
            for sample in 0..instance.baselines.len() {
                let score_baseline = if baseline_on_path { None } else { known.next() };
                let integrator =
                    Integrator::new(self.method, self.steps, instance.x.len(), targets.len())
                        .map_err(|e| Error::invalid("steps", e.to_string()))?;
                paths.push(Path {
                    instance: i,
                    sample,
                    targets: targets.clone(),
                    integrator,
                    ends: Ends {
                        input: score_input.clone(),
                        baseline: score_baseline,
                    },
                    done: false,
                    delta: None,
                });
            }
            own.push(from..paths.len());
        }

        // While it integrates, this request counts as active on the gradient worker: its
        // batcher may wait briefly for this request's next batch to merge it with others'.
        let gradient = self.gradient.caller();
        let mut reported = vec![false; self.instances.len()];
        let mut instances_done = 0;
        let mut in_flight: Option<InFlight> = None;
        let mut last_answer = Instant::now();
        loop {
            // Fill one run from the paths in order, so that early instances finish early.
            let mut room = self.max_rows;
            let (mut rows, mut sums) = (0, 0);
            let mut chunks: Vec<(usize, Batch)> = Vec::new();
            // Paths share a run only with paths of the same shapes (texts of one length).
            let mut shape_of_run = None;
            for (p, path) in paths.iter_mut().enumerate().filter(|(_, p)| !p.done) {
                let shapes = self.instances[path.instance].shapes_key();
                if *shape_of_run.get_or_insert(shapes) != shapes {
                    continue;
                }
                let t = path.targets.len();
                let alphas = (room / t).min(self.batch as usize);
                if alphas == 0 {
                    break;
                }
                // The run's weights are [sums, rows], block-diagonal over its paths: bounded,
                // or many short paths (few steps) would make them quadratic in the paths.
                // Once they would outgrow the rows' gradients the run asks for those instead
                // (the step module's docs), and only the rows bound it.
                let len = self.instances[path.instance].x.len();
                let bigger = (sums + 2 * t) * (rows + alphas * t);
                if !chunks.is_empty() && !host_sums(sums + 2 * t, len) && bigger > MAX_WEIGHTS {
                    break;
                }
                if let Some(batch) = path.integrator.next_batch(alphas) {
                    room -= batch.len() * t;
                    rows += batch.len() * t;
                    sums += 2 * t;
                    chunks.push((p, batch));
                }
            }
            // The next run is queued before the one in flight is taken back, so that the
            // worker computes while this side feeds, reports and prepares.
            let next = match chunks.is_empty() {
                true => None,
                false => Some(self.submit(&gradient, &paths, chunks).await?),
            };
            match std::mem::replace(&mut in_flight, next) {
                Some(run) => {
                    // The worker began it when the run before it ended, or when it came.
                    let began = run.started.max(last_answer);
                    self.complete(run, began, &mut paths).await?;
                    last_answer = Instant::now();
                    let progress = self.progress(&paths, instances_done);
                    send(events, pb::explain_event::Event::Progress(progress)).await?;
                }
                // The first run: prepare its successor before waiting for it.
                None if in_flight.is_some() => continue,
                None => {}
            }
            // Paths whose round is complete: refine them, or they are done.
            for path in paths.iter_mut().filter(|p| !p.done) {
                if path.integrator.remaining() > 0 {
                    continue;
                }
                let converged =
                    self.tolerance <= 0.0 || path.delta.is_some_and(|d| d <= self.tolerance);
                if converged || path.integrator.steps().saturating_mul(2) > self.max_steps {
                    path.done = true;
                } else {
                    path.integrator
                        .refine()
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    path.delta = self.worst_delta(path);
                }
            }
            let mut ready = Vec::new();
            for (i, instance) in self.instances.iter().enumerate() {
                let mine = || paths[own[i].clone()].iter();
                if reported[i] || !mine().all(|p| p.done) {
                    continue;
                }
                reported[i] = true;
                instances_done += 1;
                let answer = served.take(self, i).await;
                ready.extend(
                    self.explanations(instance, &mine().collect::<Vec<_>>(), answer.as_ref())
                        .await?,
                );
            }
            served.top_up(self);
            self.deliver(ready, events).await?;
            if instances_done as usize == self.instances.len() {
                return Ok(());
            }
        }
    }

    /// Where the whole job stands after a run.
    fn progress(&self, paths: &[Path], instances_done: u32) -> pb::Progress {
        pb::Progress {
            steps_done: paths
                .iter()
                .map(|p| p.integrator.evaluations())
                .sum::<usize>() as u32,
            steps_total: paths
                .iter()
                .map(|p| p.integrator.evaluations() + p.integrator.remaining())
                .sum::<usize>() as u32,
            elapsed_ms: self.started.elapsed().as_secs_f32() * 1e3,
            steps: paths
                .iter()
                .filter_map(|p| p.integrator.estimate_steps())
                .max()
                .unwrap_or(0),
            relative_delta: paths
                .iter()
                .filter_map(|p| p.delta)
                .reduce(f32::max)
                .unwrap_or(f32::NAN),
            instances_done: if self.batched { instances_done } else { 0 },
            instances_total: if self.batched {
                self.instances.len() as u32
            } else {
                0
            },
        }
    }

    /// Queues one gradient run over the chunks (one batch of alphas of one path each).
    async fn submit(
        &self,
        gradient: &crate::model::Caller,
        paths: &[Path],
        chunks: Vec<(usize, Batch)>,
    ) -> Result<InFlight, Error> {
        let layout = &self.set.layout;
        let sums: usize = chunks
            .iter()
            .map(|(p, _)| 2 * paths[*p].targets.len())
            .sum();
        let len = chunks
            .iter()
            .map(|(p, _)| self.instances[paths[*p].instance].x.len())
            .max()
            .unwrap_or(0);
        let on_host = host_sums(sums, len);
        let mut runs = Vec::with_capacity(chunks.len());
        for (p, batch) in &chunks {
            let path = &paths[*p];
            let instance = &self.instances[path.instance];
            let run = step::StepRun {
                input: &instance.x,
                shape: &instance.input_shape,
                baseline: &instance.baselines[path.sample],
                fixed_f32: &instance.fixed_f32,
                fixed_i64: &instance.fixed_i64,
                fixed_f32_shape: &instance.fixed_f32_shape,
                fixed_i64_shape: &instance.fixed_i64_shape,
                alphas: batch.alphas(),
                targets: &path.targets,
                classes: self.classes,
                weights: match on_host {
                    true => Vec::new(),
                    false => path.integrator.sum_weights(batch),
                },
            };
            runs.push(run.inputs(layout));
        }
        let rows: usize = chunks
            .iter()
            .map(|(p, b)| b.len() * paths[*p].targets.len())
            .sum();
        let requested = match on_host {
            true => vec![step::STEP_GRADS.to_string(), self.scored.of.clone()],
            false => vec![
                step::STEP_SUMS.to_string(),
                step::STEP_ABS.to_string(),
                self.scored.of.clone(),
            ],
        };
        let started = Instant::now();
        let merged = match runs.len() {
            1 => runs.pop().expect("one run"),
            _ => step::merge_runs(layout, &runs),
        };
        let steps: usize = chunks.iter().map(|(_, b)| b.len()).sum();
        let span = tracing::info_span!(
            "gradient_batch",
            ig.steps = steps as i64,
            ig.rows = rows as i64,
            ig.paths = chunks.len() as i64
        );
        let submitted = gradient
            .submit(merged, requested.clone())
            .instrument(span.clone())
            .await?;
        Ok(InFlight {
            chunks,
            runs,
            requested,
            on_host,
            steps,
            started,
            span,
            submitted,
        })
    }

    /// Waits for a queued run (which the worker `began`) and feeds its outputs back to their
    /// paths.
    async fn complete(
        &self,
        run: InFlight,
        began: Instant,
        paths: &mut [Path],
    ) -> Result<(), Error> {
        let InFlight {
            chunks,
            runs,
            requested,
            on_host,
            steps,
            span,
            submitted,
            ..
        } = run;
        let outputs = submitted.answer().instrument(span).await?;
        crate::telemetry::record_gradient_batch(&self.model.spec.name, steps, began.elapsed());
        let per_path = if runs.is_empty() {
            vec![outputs]
        } else {
            let jobs: Vec<&[(String, TensorData)]> = runs.iter().map(|r| r.as_slice()).collect();
            Merge::Paths(self.set.layout.rules())
                .split(&jobs, &requested, outputs)
                .ok_or_else(|| Error::Internal("IG step outputs do not split by path".into()))?
        };
        for ((p, batch), outputs) in chunks.into_iter().zip(per_path) {
            self.feed(&mut paths[p], &batch, &outputs, on_host)?;
            paths[p].delta = self.worst_delta(&paths[p]);
        }
        Ok(())
    }

    /// One path's share of a run: its weighted sums (or, `on_host`, its rows' gradients to
    /// sum here), |gradient| sums and scores.
    fn feed(
        &self,
        path: &mut Path,
        batch: &Batch,
        outputs: &[TensorData],
        on_host: bool,
    ) -> Result<(), Error> {
        let (classes, t) = (self.classes, path.targets.len());
        let rows = batch.len() * t;
        let float = |i: usize| {
            outputs
                .get(i)
                .and_then(|o| o.as_f32())
                .ok_or_else(|| Error::Internal("IG step output is not float32".into()))
        };
        let out = float(outputs.len().saturating_sub(1))?;
        if out.len() != rows * classes {
            return Err(Error::Internal(format!(
                "IG step output has {} scores for {rows} rows of {classes} classes",
                out.len()
            )));
        }
        let mut scores = Vec::with_capacity(rows);
        for (r, row) in out.chunks_exact(classes).enumerate() {
            scores.push(self.objective_score(row, path.targets[r % t]));
            // The ends of the path: F at exactly x' and x (any target's row).
            let end = match batch.alphas()[r / t] {
                0.0 => &mut path.ends.baseline,
                1.0 => &mut path.ends.input,
                _ => continue,
            };
            if end.is_none() {
                *end = Some(self.objective_scores(row));
            }
        }
        let fed = match on_host {
            // The rows' gradients, summed here in f64 (the step module's docs).
            true => path.integrator.feed(batch, float(0)?, &scores),
            false => path
                .integrator
                .feed_sums(batch, float(0)?, &scores, float(1)?),
        };
        fed.map_err(|e| Error::Internal(e.to_string()))
    }

    /// Sends `explanations` (those of the instances that completed together): each its own
    /// `result` event, or in `results` events of up to [`ExplainJob::results_per_event`].
    pub(super) async fn deliver(
        &self,
        explanations: Vec<pb::Explanation>,
        events: &mpsc::Sender<ExplainItem>,
    ) -> Result<(), Error> {
        if self.results_per_event <= 1 {
            for explanation in explanations {
                send(events, pb::explain_event::Event::Result(explanation)).await?;
            }
            return Ok(());
        }
        let mut explanations = explanations.into_iter().peekable();
        while explanations.peek().is_some() {
            let group = explanations.by_ref().take(self.results_per_event).collect();
            let results = pb::Explanations {
                explanations: group,
            };
            send(events, pb::explain_event::Event::Results(results)).await?;
        }
        Ok(())
    }

    /// The explanations of one instance (one per target), its paths' attributions averaged
    /// over the baseline samples, with the pictures asked for and the predictor's check
    /// against its answer `served`.
    async fn explanations(
        &self,
        instance: &Instance,
        paths: &[&Path],
        served: Option<&crate::predictor::Served>,
    ) -> Result<Vec<pb::Explanation>, Error> {
        let first = paths[0];
        let samples = paths.len();
        let t = first.targets.len();
        let len = instance.x.len();
        let mut attribution_sums = vec![vec![0f64; len]; t];
        let mut baseline_scores = vec![0f64; t];
        let mut baseline_mean = vec![0f64; len];
        let (mut evaluations, mut steps) = (0usize, 0u32);
        let mut score_input = None;
        for path in paths {
            let (Some(f_input), Some(f_baseline)) = (&path.ends.input, &path.ends.baseline) else {
                return Err(Error::Internal(
                    "a path ended without F at both ends".into(),
                ));
            };
            let baseline = &instance.baselines[path.sample];
            for (j, &class) in path.targets.iter().enumerate() {
                let average = path
                    .integrator
                    .average_gradient(j)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let attributions = ig::attributions(&instance.x, baseline, &average);
                for (sum, value) in attribution_sums[j].iter_mut().zip(attributions) {
                    *sum += f64::from(value);
                }
                baseline_scores[j] += f64::from(f_baseline[class]);
            }
            for (m, &b) in baseline_mean.iter_mut().zip(baseline) {
                *m += f64::from(b) / samples as f64;
            }
            score_input.get_or_insert(f_input.clone());
            evaluations += path.integrator.evaluations();
            steps = steps.max(path.integrator.estimate_steps().unwrap_or(0));
        }
        let score_input = score_input.ok_or_else(|| Error::Internal("no baseline".into()))?;
        let mut out = Vec::with_capacity(t);
        for (j, &class) in first.targets.iter().enumerate() {
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
            let path = first
                .integrator
                .path(j)
                .map_err(|e| Error::Internal(e.to_string()))?
                .into_iter()
                .map(|p| pb::PathPoint {
                    alpha: p.alpha as f32,
                    score: p.score,
                    mean_abs_gradient: p.mean_abs_gradient,
                })
                .collect();
            let mut explanation =
                explanation(self, instance, path, attributions, &baseline_mean, summary)?;
            explanation.predictor = self.predictor_check(served, class, explanation.score_input)?;
            if instance.pictures.is_some() {
                let span = tracing::info_span!("render", ig.target = class as i64);
                draw(instance.pictures.as_ref(), &mut explanation)
                    .instrument(span)
                    .await?;
            }
            out.push(explanation);
        }
        Ok(out)
    }

    /// [`objective_scores`](Self::objective_scores)' value for `class` alone.
    pub(super) fn objective_score(&self, row: &[f32], class: usize) -> f32 {
        score(self.scored.objective, row, class)
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

    /// The objective for every class at each of `points` (an instance, and its points packed),
    /// in as few forward runs as the model allows (one per point where its batch axis is
    /// fixed). A scored tensor that is no output of the forward model (a final Sigmoid's
    /// logits) goes through the step worker, as do points at inner tensors other than an
    /// instance's own (a baseline embedding has no ids to feed the model).
    pub(super) async fn scores(&self, points: &[(usize, &[f32])]) -> Result<Vec<Vec<f32>>, Error> {
        let spec = &self.model.spec;
        if !spec.outputs.iter().any(|o| o.name == self.scored.of) {
            return self.scores_on_step_worker(points).await;
        }
        let all_inputs = self.set.points.iter().all(|p| p.is_input());
        let own =
            |&(i, packed): &(usize, &[f32])| std::ptr::eq(packed, self.instances[i].x.as_slice());
        let forward = |p: &(usize, &[f32])| all_inputs || own(p);
        let (ahead, inner): (Vec<_>, Vec<_>) = points.iter().partition(|p| forward(p));
        let mut ahead = self.scores_forward(&ahead).await?.into_iter();
        let mut inner = self.scores_on_step_worker(&inner).await?.into_iter();
        points
            .iter()
            .map(|p| match forward(p) {
                true => ahead.next(),
                false => inner.next(),
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Internal("fewer scores than points".into()))
    }

    /// [`Self::scores`] through the forward model: `points` at graph inputs, or an instance's
    /// own (whose graph inputs are the instance's).
    async fn scores_forward(&self, points: &[(usize, &[f32])]) -> Result<Vec<Vec<f32>>, Error> {
        if points.is_empty() {
            return Ok(Vec::new());
        }
        let spec = &self.model.spec;
        let fixed_batch = spec
            .inputs
            .iter()
            .any(|i| i.tensor.shape.first().is_some_and(|&d| d > 0));
        let len = self.instances.first().map_or(1, |i| i.x.len());
        let per_run = if fixed_batch {
            1
        } else {
            super::shared_rows(len).clamp(16, 1024)
        };
        let mut all = Vec::with_capacity(points.len());
        for run in same_shapes(points, per_run, |&(i, _)| &self.instances[i]) {
            let feeds = run
                .iter()
                .map(|&(i, packed)| self.feeds(&self.instances[i], packed))
                .collect::<Result<Vec<_>, Error>>()?;
            let jobs: Vec<&[(String, TensorData)]> = feeds.iter().map(|f| f.as_slice()).collect();
            let inputs = match jobs.as_slice() {
                [one] => one.to_vec(),
                many => Merge::Forward.merge(many),
            };
            let outputs = self
                .model
                .worker
                .run(inputs, vec![spec.output().to_string()])
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

    /// The forward model's inputs (batch 1) at `packed`, the points being graph inputs: each
    /// point's values in place of the instance's, the other inputs as they are.
    fn feeds(
        &self,
        instance: &Instance,
        packed: &[f32],
    ) -> Result<Vec<(String, TensorData)>, Error> {
        let mut offset = 0;
        let mut replaced = Vec::new();
        for (point, shape) in self.set.points.iter().zip(&instance.shapes) {
            let len = shape.iter().product::<i64>() as usize;
            replaced.push((point.tensor(), &packed[offset..offset + len], shape));
            offset += len;
        }
        Ok(instance
            .inputs
            .tensors
            .iter()
            .map(|(name, tensor)| {
                let mut tensor = match replaced.iter().find(|(n, _, _)| n == name) {
                    Some((_, values, shape)) => TensorData::f32(shape.to_vec(), values.to_vec()),
                    None => tensor.clone(),
                };
                tensor.shape.insert(0, 1);
                (name.clone(), tensor)
            })
            .collect())
    }

    /// [`Self::scores`] through the step worker: each point at alpha 1 of the path from the
    /// point to itself, with zero weights, several points in one run.
    async fn scores_on_step_worker(
        &self,
        points: &[(usize, &[f32])],
    ) -> Result<Vec<Vec<f32>>, Error> {
        if points.is_empty() {
            return Ok(Vec::new());
        }
        let layout = &self.set.layout;
        let mut all = Vec::with_capacity(points.len());
        let per_run = crate::explain::MAX_ROWS as usize;
        for run in same_shapes(points, per_run, |&(i, _)| &self.instances[i]) {
            let runs: Vec<_> = run
                .iter()
                .map(|&(i, point)| {
                    let instance = &self.instances[i];
                    step::StepRun {
                        input: point,
                        shape: &instance.input_shape,
                        baseline: point,
                        fixed_f32: &instance.fixed_f32,
                        fixed_i64: &instance.fixed_i64,
                        fixed_f32_shape: &instance.fixed_f32_shape,
                        fixed_i64_shape: &instance.fixed_i64_shape,
                        alphas: &[1.0],
                        targets: &[0],
                        classes: self.classes,
                        // No sums: only the scores are asked for.
                        weights: Vec::new(),
                    }
                    .inputs(layout)
                })
                .collect();
            let merged = match runs.as_slice() {
                [one] => one.clone(),
                _ => step::merge_runs(layout, &runs),
            };
            let outputs = self
                .gradient
                .run(merged, vec![self.scored.of.clone()])
                .instrument(tracing::info_span!("forward", ig.points = run.len() as i64))
                .await?;
            let rows = outputs[0]
                .as_f32()
                .filter(|rows| rows.len() == run.len() * self.classes)
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "{:?} is not one row of floats per point",
                        self.scored.of
                    ))
                })?;
            all.extend(
                rows.chunks_exact(self.classes)
                    .map(|row| self.objective_scores(row)),
            );
        }
        Ok(all)
    }

    /// The largest |delta| / |F(x) - F(x')| of a path over its targets, once a round is
    /// complete.
    fn worst_delta(&self, path: &Path) -> Option<f32> {
        path.integrator.estimate_steps()?;
        let instance = &self.instances[path.instance];
        let (ends_input, ends_baseline) = (path.ends.input.as_ref()?, path.ends.baseline.as_ref()?);
        let baseline = &instance.baselines[path.sample];
        let mut worst = 0f64;
        for (j, &class) in path.targets.iter().enumerate() {
            let average = path.integrator.average_gradient(j).ok()?;
            let attributions = ig::attributions(&instance.x, baseline, &average);
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

/// The `k` classes of highest score, best first (ties: the lower class first).
pub(super) fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// The `objective` for `class` at one input, from the scored tensor's row.
pub(super) fn score(objective: Objective, row: &[f32], class: usize) -> f32 {
    match objective {
        Objective::Probability => softmax_at(row, class),
        Objective::Sigmoid => sigmoid(row[class]),
        Objective::Logit => row[class],
    }
}

/// `items` cut into runs of consecutive items whose instances have the same shapes, of at most
/// `per_run` each.
fn same_shapes<'a, T>(
    items: &'a [T],
    per_run: usize,
    instance: impl Fn(&T) -> &'a Instance,
) -> Vec<&'a [T]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for end in 1..=items.len() {
        let cut = end == items.len()
            || end - start == per_run.max(1)
            || instance(&items[end]).shapes_key() != instance(&items[start]).shapes_key();
        if cut {
            runs.push(&items[start..end]);
            start = end;
        }
    }
    runs
}

/// A gradient run queued on the worker, and what taking it back needs.
struct InFlight {
    /// The path and batch of alphas of each of its parts.
    chunks: Vec<(usize, Batch)>,
    /// Each part's inputs when it has several (empty: one), to split the outputs by.
    runs: Vec<Vec<(String, TensorData)>>,
    requested: Vec<String>,
    on_host: bool,
    steps: usize,
    started: Instant,
    span: tracing::Span,
    submitted: crate::model::Submitted,
}

/// Whether a run of `sums` weighted sums over points of `len` values asks for its rows'
/// gradients and sums them here: when its weights (`sums` per row) would be larger than the
/// gradients (`len` per row).
pub(super) fn host_sums(sums: usize, len: usize) -> bool {
    sums > len
}

/// One path to integrate: an instance with one of its baselines.
struct Path {
    instance: usize,
    sample: usize,
    targets: Vec<usize>,
    integrator: Integrator,
    ends: Ends,
    /// Converged, or refined as far as allowed.
    done: bool,
    /// [`ExplainJob::worst_delta`] as of the path's last change (a path that no run touched
    /// keeps it, so a batch's progress doesn't recompute every path's attributions).
    delta: Option<f32>,
}

/// F at x and at x' for every class: known before the path runs (a forward run), or taken
/// from the path's own rows at alpha 1 and 0 as they come.
struct Ends {
    input: Option<Vec<f32>>,
    baseline: Option<Vec<f32>>,
}
