//! The techniques beside plain Integrated Gradients: a noise tunnel over IG, Blur IG, Guided IG
//! and XRAI, on the same step worker as IG.
//!
//! Each is a set of *walks*, one per instance, target, noise sample and baseline: a straight
//! path through the quadrature rule's alphas (IG under a noise tunnel, XRAI's IG from black
//! and from white), a path of blurs (Blur IG), or an adaptive path whose next point depends on
//! the gradient at the last one (Guided IG). Every walk asks for gradients at points; the points
//! of all walks that are ready go into one gradient run (the step model's rows: a straight
//! walk's rows interpolate inside the graph, a free point is the path from the point to itself
//! at alpha 1). A run of straight walks comes back as each walk's weighted sum, taken inside
//! the graph as IG's are; a run of free points as each row's gradient, which the walk folds in
//! on the host. The next run is queued before the one in flight is taken back, progress goes
//! out after every run, and the job stops within a run when its client is gone, as IG's does.
//!
//! When all walks of an instance are done, its attributions per target are the walks' averaged
//! over the baselines (XRAI's two), combined over the noise samples as the tunnel says, and
//! for XRAI ranked into regions ([`crate::ig::xrai`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::response::{explanation, send, Summary};
use super::served::ServedCalls;
use super::technique::Technique;
use super::{step, ExplainItem, ExplainJob, Instance, Targets};
use crate::error::Error;
use crate::ig::blur::{blur_point, BlurParams, BlurPoint, ImageAxes};
use crate::ig::guided::GuidedPath;
use crate::ig::{self, Node};
use crate::model::{Merge, TensorData};
use crate::proto::integrad::v1 as pb;

/// Blur IG's points prepared ahead of the runs that need them, per walk: enough for two runs
/// of the default batch, bounded so that their memory is (two input-sized vectors each).
const BLUR_AHEAD: usize = 32;

/// How a walk moves.
enum Course {
    /// The straight path from `baseline` to `input` through the rule's nodes.
    Straight {
        input: Arc<Vec<f32>>,
        baseline: Arc<Vec<f32>>,
        nodes: Vec<Node>,
        /// The next node to ask for.
        next: usize,
        /// sum_k w_k grad_k, in f64.
        sums: Vec<f64>,
    },
    /// Blur IG: points made ahead (the blurs are the expensive part on the host).
    Blur {
        input: Arc<Vec<f32>>,
        axes: ImageAxes,
        params: BlurParams,
        nodes: Vec<Node>,
        /// The next node to prepare.
        next: usize,
        ready: VecDeque<BlurPoint>,
        /// Asked for, waiting for their gradients, in order.
        asked: VecDeque<BlurPoint>,
        sums: Vec<f64>,
    },
    /// Guided IG: one point at a time.
    Guided { path: Box<GuidedPath>, asked: bool },
}

/// One walk: an instance's path for one target, noise sample and baseline.
struct Walk {
    instance: usize,
    /// The index of its target among the instance's targets, and the class.
    target: usize,
    class: usize,
    sample: usize,
    baseline: usize,
    course: Course,
    evaluations: usize,
    /// (alpha, score, mean |gradient|) of every point evaluated, for the path diagnostics.
    points: Vec<(f64, f32, f32)>,
    /// The (alpha of the) guided walk's step, for its path points.
    total: usize,
}

impl Walk {
    fn done(&self) -> bool {
        match &self.course {
            Course::Straight { nodes, next, .. } => {
                *next >= nodes.len() && self.evaluations >= nodes.len()
            }
            Course::Blur { nodes, .. } => self.evaluations >= nodes.len(),
            Course::Guided { path, .. } => path.done(),
        }
    }

    fn remaining(&self) -> usize {
        self.total.saturating_sub(self.evaluations)
    }

    /// The walk's attributions once done.
    fn attributions(&self) -> Vec<f64> {
        match &self.course {
            Course::Straight {
                input,
                baseline,
                sums,
                ..
            } => input
                .iter()
                .zip(baseline.iter())
                .zip(sums)
                .map(|((&x, &b), &s)| (f64::from(x) - f64::from(b)) * s)
                .collect(),
            Course::Blur { sums, .. } => sums.clone(),
            Course::Guided { path, .. } => path.attributions().to_vec(),
        }
    }
}

/// One walk's share of a gradient run.
struct Ask {
    walk: usize,
    instance: usize,
    class: usize,
    input: Arc<Vec<f32>>,
    baseline: Arc<Vec<f32>>,
    alphas: Vec<f64>,
    /// A straight walk's quadrature weights of these alphas (its rows' share of the walk's
    /// weighted sum, which the step model can take inside the graph); empty for a free point.
    weights: Vec<f32>,
}

impl Ask {
    /// The gradient at one point of walk `walk` (Blur IG's, Guided IG's) for its (instance,
    /// class): the path from the point to itself, at alpha 1.
    fn free_point(walk: usize, (instance, class): (usize, usize), point: Vec<f32>) -> Self {
        let at = Arc::new(point);
        Self {
            walk,
            instance,
            class,
            input: at.clone(),
            baseline: at,
            alphas: vec![1.0],
            weights: Vec::new(),
        }
    }
}

/// A run queued on the worker.
struct Queued {
    asks: Vec<Ask>,
    runs: Vec<Vec<(String, TensorData)>>,
    requested: Vec<String>,
    /// Whether the run sums its rows inside the graph (outputs: sums, |gradient| sums,
    /// scores) or returns each row's gradient (outputs: gradients, scores).
    in_graph: bool,
    started: Instant,
    rows: usize,
    submitted: crate::model::Submitted,
    span: tracing::Span,
}

impl ExplainJob {
    /// Runs a technique other than plain IG (the module docs).
    pub(super) async fn walk(&self, events: &mpsc::Sender<ExplainItem>) -> Result<(), Error> {
        let mut served = ServedCalls::start(self);
        let noise = self.noise;
        // Each instance's noisy inputs (or the input alone), its baselines, and the points
        // whose scores are needed: F at the input (the targets, score_input), at every noisy
        // input and at every start of a path, in one forward pass.
        let mut inputs: Vec<Vec<Arc<Vec<f32>>>> = Vec::with_capacity(self.instances.len());
        let mut starts: Vec<Vec<Arc<Vec<f32>>>> = Vec::with_capacity(self.instances.len());
        for instance in &self.instances {
            let samples = match &noise {
                Some(tunnel) => tunnel
                    .samples(&instance.x)
                    .into_iter()
                    .map(Arc::new)
                    .collect(),
                None => vec![Arc::new(instance.x.clone())],
            };
            inputs.push(samples);
            starts.push(self.starts(instance).await?);
        }
        let mut wanted: Vec<(usize, &[f32])> = Vec::new();
        for (i, instance) in self.instances.iter().enumerate() {
            wanted.push((i, &instance.x));
            if noise.is_some() {
                wanted.extend(inputs[i].iter().map(|x| (i, x.as_slice())));
            }
            wanted.extend(starts[i].iter().map(|s| (i, s.as_slice())));
        }
        let mut scores = self.scores(&wanted).await?.into_iter();
        let mut ends = Vec::with_capacity(self.instances.len());
        let mut walks = Vec::new();
        let mut own = Vec::with_capacity(self.instances.len());
        for (i, instance) in self.instances.iter().enumerate() {
            let f_input = scores
                .next()
                .ok_or_else(|| Error::Internal("no F(x)".into()))?;
            let f_samples: Vec<Vec<f32>> = match noise {
                Some(_) => (0..inputs[i].len()).filter_map(|_| scores.next()).collect(),
                None => vec![f_input.clone()],
            };
            let f_starts: Vec<Vec<f32>> =
                (0..starts[i].len()).filter_map(|_| scores.next()).collect();
            let targets: Vec<usize> = match &instance.targets {
                Targets::Classes(c) => c.clone(),
                Targets::TopK(k) => super::integrate::top_k(&f_input, *k),
            };
            let from = walks.len();
            for (j, &class) in targets.iter().enumerate() {
                for (s, input) in inputs[i].iter().enumerate() {
                    for (b, start) in starts[i].iter().enumerate() {
                        walks.push(self.new_walk(i, j, class, s, b, input, start)?);
                    }
                }
            }
            own.push(from..walks.len());
            // The mean start of the paths, for the features' baselines: Blur IG's start is no
            // baseline, and its features report none.
            let mut start_mean = vec![0f64; instance.x.len()];
            if !matches!(self.technique, Technique::BlurIg { .. }) {
                for start in &starts[i] {
                    for (m, &b) in start_mean.iter_mut().zip(start.iter()) {
                        *m += f64::from(b) / starts[i].len() as f64;
                    }
                }
            }
            ends.push(Ends {
                input: f_input,
                samples: f_samples,
                starts: f_starts,
                start_mean,
                targets,
            });
        }

        let gradient = self.gradient.caller();
        let mut reported = vec![false; self.instances.len()];
        let mut instances_done = 0u32;
        let mut in_flight: Option<Queued> = None;
        loop {
            if events.is_closed() {
                return Err(Error::Cancelled);
            }
            self.prepare_blurs(&mut walks).await?;
            let asks = self.next_asks(&mut walks);
            let next = match asks.is_empty() {
                true => None,
                false => Some(self.queue(&gradient, asks).await?),
            };
            match std::mem::replace(&mut in_flight, next) {
                Some(run) => {
                    self.take_back(run, &mut walks).await?;
                    send(
                        events,
                        pb::explain_event::Event::Progress(
                            self.walk_progress(&walks, instances_done),
                        ),
                    )
                    .await?;
                }
                // The first run: prepare its successor before waiting for it.
                None if in_flight.is_some() => continue,
                None => {}
            }
            let mut ready = Vec::new();
            for (i, instance) in self.instances.iter().enumerate() {
                if reported[i] || !walks[own[i].clone()].iter().all(Walk::done) {
                    continue;
                }
                reported[i] = true;
                instances_done += 1;
                let answer = served.take(self, i).await;
                let mine: Vec<&Walk> = walks[own[i].clone()].iter().collect();
                ready.extend(
                    self.walk_explanations(instance, &mine, &ends[i], answer.as_ref())
                        .await?,
                );
            }
            served.top_up(self);
            self.deliver(ready, events).await?;
            if instances_done as usize == self.instances.len() {
                return Ok(());
            }
            if in_flight.is_none() && walks.iter().all(Walk::done) {
                return Err(Error::Internal(
                    "walks done without their explanations".into(),
                ));
            }
        }
    }

    /// Where an instance's paths start: its baselines (IG, Guided IG), black and white (XRAI),
    /// or the input blurred by max_sigma (Blur IG), which only scores.
    async fn starts(&self, instance: &Instance) -> Result<Vec<Arc<Vec<f32>>>, Error> {
        Ok(match &self.technique {
            Technique::Xrai { .. } => {
                let pre = self
                    .model
                    .spec
                    .image()
                    .map(|(_, p)| p)
                    .ok_or_else(|| Error::Internal("XRAI without an image input".into()))?;
                vec![
                    Arc::new(ig::baseline::pixel(pre, 0)),
                    Arc::new(ig::baseline::pixel(pre, 255)),
                ]
            }
            Technique::BlurIg { params, axes } => {
                let (x, axes, sigma) = (instance.x.clone(), *axes, params.max_sigma);
                let blurred = tokio::task::spawn_blocking(move || {
                    axes.blur(&x, sigma, ig::blur::Boundary::Constant(0.0))
                })
                .await
                .map_err(|e| Error::Internal(format!("blur failed: {e}")))?;
                vec![Arc::new(blurred)]
            }
            _ => instance
                .baselines
                .iter()
                .map(|b| Arc::new(b.clone()))
                .collect(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn new_walk(
        &self,
        instance: usize,
        target: usize,
        class: usize,
        sample: usize,
        baseline: usize,
        input: &Arc<Vec<f32>>,
        start: &Arc<Vec<f32>>,
    ) -> Result<Walk, Error> {
        let len = input.len();
        let nodes = || ig::nodes(self.method, self.steps);
        let course = match &self.technique {
            Technique::IntegratedGradients | Technique::Xrai { .. } => Course::Straight {
                input: input.clone(),
                baseline: start.clone(),
                nodes: nodes(),
                next: 0,
                sums: vec![0.0; len],
            },
            Technique::BlurIg { params, axes } => Course::Blur {
                input: input.clone(),
                axes: *axes,
                params: *params,
                nodes: nodes(),
                next: 0,
                ready: VecDeque::new(),
                asked: VecDeque::new(),
                sums: vec![0.0; len],
            },
            Technique::GuidedIg(params) => Course::Guided {
                path: Box::new(
                    GuidedPath::new(input, start, *params)
                        .map_err(|e| Error::Internal(e.to_string()))?,
                ),
                asked: false,
            },
        };
        let total = match &course {
            Course::Straight { nodes, .. } | Course::Blur { nodes, .. } => nodes.len(),
            Course::Guided { path, .. } => match path.done() {
                true => 0,
                false => self.steps as usize,
            },
        };
        Ok(Walk {
            instance,
            target,
            class,
            sample,
            baseline,
            course,
            evaluations: 0,
            points: Vec::new(),
            total,
        })
    }

    /// Makes Blur IG's next points ahead, off the async threads (two blurs each).
    async fn prepare_blurs(&self, walks: &mut [Walk]) -> Result<(), Error> {
        let mut work = Vec::new();
        for (w, walk) in walks.iter().enumerate() {
            if let Course::Blur {
                input,
                axes,
                params,
                nodes,
                next,
                ready,
                ..
            } = &walk.course
            {
                let want = (self.batch as usize).clamp(1, BLUR_AHEAD);
                let take = want.saturating_sub(ready.len()).min(nodes.len() - next);
                if take > 0 {
                    work.push((
                        w,
                        input.clone(),
                        *axes,
                        *params,
                        nodes[*next..*next + take].to_vec(),
                    ));
                }
            }
        }
        if work.is_empty() {
            return Ok(());
        }
        let made = tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(w, input, axes, params, nodes)| {
                    let points: Vec<BlurPoint> = nodes
                        .into_iter()
                        .map(|n| blur_point(&input, &axes, &params, n))
                        .collect();
                    (w, points)
                })
                .collect::<Vec<_>>()
        })
        .instrument(tracing::info_span!("blur"))
        .await
        .map_err(|e| Error::Internal(format!("blur failed: {e}")))?;
        for (w, points) in made {
            if let Course::Blur { next, ready, .. } = &mut walks[w].course {
                *next += points.len();
                ready.extend(points);
            }
        }
        Ok(())
    }

    /// The next run's asks: the walks in order, as many rows as a run takes.
    fn next_asks(&self, walks: &mut [Walk]) -> Vec<Ask> {
        let mut room = self.max_rows.max(1);
        let mut asks = Vec::new();
        let mut shape_of_run = None;
        for (w, walk) in walks.iter_mut().enumerate() {
            if room == 0 {
                break;
            }
            if walk.done() {
                continue;
            }
            let shapes = self.instances[walk.instance].shapes_key();
            if *shape_of_run.get_or_insert(shapes) != shapes {
                continue;
            }
            let of = (walk.instance, walk.class);
            match &mut walk.course {
                Course::Straight {
                    input,
                    baseline,
                    nodes,
                    next,
                    ..
                } => {
                    let take = (self.batch as usize).min(room).min(nodes.len() - *next);
                    if take > 0 {
                        asks.push(Ask {
                            walk: w,
                            instance: walk.instance,
                            class: walk.class,
                            input: input.clone(),
                            baseline: baseline.clone(),
                            alphas: nodes[*next..*next + take].iter().map(|n| n.alpha).collect(),
                            weights: nodes[*next..*next + take]
                                .iter()
                                .map(|n| n.weight as f32)
                                .collect(),
                        });
                        *next += take;
                        room -= take;
                    }
                }
                Course::Blur { ready, asked, .. } => {
                    while room > 0 && asked.len() < self.batch as usize {
                        let Some(point) = ready.pop_front() else {
                            break;
                        };
                        asks.push(Ask::free_point(w, of, point.point.clone()));
                        asked.push_back(point);
                        room -= 1;
                    }
                }
                Course::Guided { path, asked } => {
                    if !*asked {
                        asks.push(Ask::free_point(w, of, path.point().to_vec()));
                        *asked = true;
                        room -= 1;
                    }
                }
            }
        }
        asks
    }

    /// Queues one gradient run over `asks`. Straight walks' rows are summed inside the graph
    /// with their quadrature weights, one sum per ask, as IG's are (unless the weights would
    /// outgrow the rows' gradients: [`super::integrate::host_sums`]); free points (and such
    /// runs) ask for each row's gradient.
    async fn queue(
        &self,
        gradient: &crate::model::Caller,
        asks: Vec<Ask>,
    ) -> Result<Queued, Error> {
        let layout = &self.set.layout;
        let len = asks
            .iter()
            .map(|a| self.instances[a.instance].x.len())
            .max()
            .unwrap_or(0);
        let in_graph = asks.iter().all(|a| !a.weights.is_empty())
            && !super::integrate::host_sums(asks.len(), len);
        let mut runs = Vec::with_capacity(asks.len());
        for ask in &asks {
            let instance = &self.instances[ask.instance];
            let class = [ask.class];
            let run = step::StepRun {
                input: &ask.input,
                shape: &instance.input_shape,
                baseline: &ask.baseline,
                fixed_f32: &instance.fixed_f32,
                fixed_i64: &instance.fixed_i64,
                fixed_f32_shape: &instance.fixed_f32_shape,
                fixed_i64_shape: &instance.fixed_i64_shape,
                alphas: &ask.alphas,
                targets: &class,
                classes: self.classes,
                weights: match in_graph {
                    true => ask.weights.clone(),
                    false => Vec::new(),
                },
            };
            runs.push(run.inputs(layout));
        }
        let rows: usize = asks.iter().map(|a| a.alphas.len()).sum();
        let requested = match in_graph {
            true => vec![
                step::STEP_SUMS.to_string(),
                step::STEP_ABS.to_string(),
                self.scored.of.clone(),
            ],
            false => vec![step::STEP_GRADS.to_string(), self.scored.of.clone()],
        };
        let merged = match runs.len() {
            1 => runs.pop().expect("one run"),
            _ => step::merge_runs(layout, &runs),
        };
        let span = tracing::info_span!(
            "gradient_batch",
            ig.steps = rows as i64,
            ig.rows = rows as i64,
            ig.paths = asks.len() as i64
        );
        let submitted = gradient
            .submit(merged, requested.clone())
            .instrument(span.clone())
            .await?;
        Ok(Queued {
            asks,
            runs,
            requested,
            in_graph,
            started: Instant::now(),
            rows,
            submitted,
            span,
        })
    }

    /// Waits for a queued run and feeds each row's gradient and score back to its walk.
    async fn take_back(&self, run: Queued, walks: &mut Vec<Walk>) -> Result<(), Error> {
        let Queued {
            asks,
            runs,
            requested,
            in_graph,
            started,
            rows,
            submitted,
            span,
        } = run;
        let outputs = submitted.answer().instrument(span).await?;
        crate::telemetry::record_gradient_batch(&self.model.spec.name, rows, started.elapsed());
        let per_ask = if runs.is_empty() {
            vec![outputs]
        } else {
            let jobs: Vec<&[(String, TensorData)]> = runs.iter().map(|r| r.as_slice()).collect();
            Merge::Paths(self.set.layout.rules())
                .split(&jobs, &requested, outputs)
                .ok_or_else(|| Error::Internal("gradient outputs do not split by walk".into()))?
        };
        let fed: Vec<(Ask, Vec<TensorData>)> = asks.into_iter().zip(per_ask).collect();
        // Folding the gradients in is host work of the size of the input per row (Guided IG's
        // step sorts it): off the async threads, with the walks.
        let mut all = std::mem::take(walks);
        let (classes, objective) = (self.classes, self.scored.objective);
        let all = tokio::task::spawn_blocking(move || -> Result<Vec<Walk>, Error> {
            for (ask, outputs) in fed {
                let score =
                    |row: &[f32], class: usize| super::integrate::score(objective, row, class);
                match in_graph {
                    true => feed_sums(&mut all[ask.walk], &ask, &outputs, classes, &score)?,
                    false => feed(&mut all[ask.walk], &ask, &outputs, classes, &score)?,
                }
            }
            Ok(all)
        })
        .await
        .map_err(|e| Error::Internal(format!("folding gradients failed: {e}")))??;
        *walks = all;
        Ok(())
    }

    fn walk_progress(&self, walks: &[Walk], instances_done: u32) -> pb::Progress {
        pb::Progress {
            steps_done: walks.iter().map(|w| w.evaluations).sum::<usize>() as u32,
            steps_total: walks
                .iter()
                .map(|w| w.evaluations + w.remaining())
                .sum::<usize>() as u32,
            elapsed_ms: self.started.elapsed().as_secs_f32() * 1e3,
            steps: self.steps,
            relative_delta: f32::NAN,
            instances_done: if self.batched { instances_done } else { 0 },
            instances_total: if self.batched {
                self.instances.len() as u32
            } else {
                0
            },
        }
    }

    /// One explanation per target of a finished instance (the module docs).
    async fn walk_explanations(
        &self,
        instance: &Instance,
        walks: &[&Walk],
        ends: &Ends,
        served: Option<&crate::predictor::Served>,
    ) -> Result<Vec<pb::Explanation>, Error> {
        let len = instance.x.len();
        let samples = ends.samples.len().max(1);
        let starts = ends.starts.len().max(1);
        let mut out = Vec::with_capacity(ends.targets.len());
        for (j, &class) in ends.targets.iter().enumerate() {
            let mine: Vec<&&Walk> = walks.iter().filter(|w| w.target == j).collect();
            // Per noise sample: the mean over the baselines.
            let mut per_sample = vec![vec![0f64; len]; samples];
            let mut worst = (0f64, 0f64);
            let mut evaluations = 0;
            for walk in &mine {
                let attributions = walk.attributions();
                for (m, a) in per_sample[walk.sample].iter_mut().zip(&attributions) {
                    *m += a / starts as f64;
                }
                evaluations += walk.evaluations;
                // Completeness of each path: its sum against F at its two ends.
                let c = ig::Completeness::new(
                    &attributions.iter().map(|&a| a as f32).collect::<Vec<_>>(),
                    f64::from(ends.samples[walk.sample][class]),
                    f64::from(ends.starts[walk.baseline][class]),
                );
                if c.relative_delta() >= worst.1 || worst == (0.0, 0.0) {
                    worst = (c.delta, c.relative_delta());
                }
            }
            let combined = match &self.noise {
                Some(tunnel) => tunnel.combine(&per_sample),
                None => per_sample.swap_remove(0),
            };
            let attributions: Vec<f32> = combined.iter().map(|&a| a as f32).collect();
            let f_start =
                ends.starts.iter().map(|s| f64::from(s[class])).sum::<f64>() / starts as f64;
            let path = mine
                .first()
                .map(|w| {
                    w.points
                        .iter()
                        .map(|&(alpha, score, mean_abs_gradient)| pb::PathPoint {
                            alpha: alpha as f32,
                            score,
                            mean_abs_gradient,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let summary = Summary {
                class,
                f_input: ends.input[class],
                f_baseline: f_start as f32,
                steps: self.steps,
                evaluations,
            };
            let mut e = explanation(
                self,
                instance,
                path,
                attributions.clone(),
                &ends.start_mean,
                summary,
            )?;
            e.technique = self.technique.proto() as i32;
            if let Some(tunnel) = &self.noise {
                e.noise_samples = tunnel.samples as u32;
            }
            // With several paths (noise samples, XRAI's two baselines) completeness is each
            // path's own: the worst of them is reported.
            if mine.len() > 1 || self.noise.is_some() {
                e.convergence_delta = worst.0 as f32;
                e.relative_delta = worst.1 as f32;
                e.converged = worst.1 <= f64::from(e.convergence_tolerance);
            }
            e.predictor = self.predictor_check(served, class, e.score_input)?;
            if let Technique::Xrai {
                params,
                axes,
                top_fraction,
            } = &self.technique
            {
                self.rank_regions(&mut e, instance, &attributions, axes, params, *top_fraction)
                    .await?;
            } else if instance.pictures.is_some() {
                super::response::draw(instance.pictures.as_ref(), &mut e).await?;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// XRAI: ranks the regions by the attributions' gain, makes the region map the
    /// explanation's attributions (the pixel map stays in `pixel_attributions`), and draws the
    /// top regions.
    async fn rank_regions(
        &self,
        e: &mut pb::Explanation,
        instance: &Instance,
        attributions: &[f32],
        axes: &ImageAxes,
        params: &ig::xrai::XraiParams,
        top_fraction: f32,
    ) -> Result<(), Error> {
        let (h, w, c) = (axes.height, axes.width, axes.channels);
        let to_hwc = |values: &[f32]| -> Vec<f32> {
            let mut out = vec![0f32; values.len()];
            for ch in 0..c {
                for p in 0..h * w {
                    let from = match axes.channels_first {
                        true => ch * h * w + p,
                        false => p * c + ch,
                    };
                    out[p * c + ch] = values[from];
                }
            }
            out
        };
        let (image, attr) = (to_hwc(&instance.x), to_hwc(attributions));
        let params = *params;
        let ranked =
            tokio::task::spawn_blocking(move || ig::xrai::xrai(&image, &attr, h, w, c, &params))
                .instrument(tracing::info_span!("xrai"))
                .await
                .map_err(|e| Error::Internal(format!("XRAI failed: {e}")))?
                // The input was checked finite and the parameters valid: what is left is the
                // attributions (NaN where the model's gradient is).
                .map_err(|e| Error::FailedPrecondition {
                    field: "technique".into(),
                    reason: format!("XRAI cannot rank this input's regions: {e}"),
                })?;
        e.pixel_attributions = e.attributions.take();
        e.attributions = Some(pb::Tensor::from(&TensorData::f32(
            vec![h as i64, w as i64],
            ranked.map.clone(),
        )));
        e.regions = ranked
            .regions
            .iter()
            .map(|r| pb::XraiRegion {
                rank: r.rank,
                gain: r.gain,
                pixels: r.pixels,
                cumulative_area: r.cumulative_area,
            })
            .collect();
        if let Some(pictures) = instance.pictures.as_ref() {
            // The pictures show the top regions up to `top_fraction` of the image, each at
            // its rank's strength (best brightest, the last at half of it), the rest dark.
            let shown = ranked
                .regions
                .iter()
                .take_while(|r| r.cumulative_area <= top_fraction + 1e-6)
                .count()
                .max(1);
            let rank_of: Vec<f32> = ranked
                .ranks
                .iter()
                .map(|&rank| match (rank as usize).checked_sub(1) {
                    // Half to full strength, so the last shown region still shows.
                    Some(r) if r < shown => 1.0 + (shown - r) as f32 / shown as f32,
                    _ => 0.0,
                })
                .collect();
            let mut tensor = vec![0f32; h * w * c];
            for ch in 0..c {
                for (p, &rank) in rank_of.iter().enumerate() {
                    let to = match axes.channels_first {
                        true => ch * h * w + p,
                        false => p * c + ch,
                    };
                    tensor[to] = rank / c as f32;
                }
            }
            let mut drawn = pb::Explanation::default();
            drawn.tensor_attributions.insert(
                pictures.input.clone(),
                pb::Tensor::from(&TensorData::f32(instance.shapes[0].clone(), tensor)),
            );
            // The ranks as they are: no clipping at a percentile.
            let mut options = pictures.options;
            options.clip_percentile = 0.0;
            let request = super::PictureRequest {
                options,
                mask: pictures.mask,
                overlay: pictures.overlay,
                input: pictures.input.clone(),
                preprocessing: pictures.preprocessing.clone(),
                picture: pictures.picture.clone(),
            };
            super::response::draw(Some(&request), &mut drawn).await?;
            e.mask_png = drawn.mask_png;
            e.overlay_png = drawn.overlay_png;
        }
        Ok(())
    }
}

/// The scores F of one instance at the points the explanations need.
struct Ends {
    /// At the input, every class.
    input: Vec<f32>,
    /// At each noisy input (the input itself without a noise tunnel).
    samples: Vec<Vec<f32>>,
    /// At each start of a path.
    starts: Vec<Vec<f32>>,
    /// The mean start of the paths (zeros for Blur IG, whose start is no baseline).
    start_mean: Vec<f64>,
    targets: Vec<usize>,
}

/// Folds one ask's outputs (its rows' gradients, then the scored tensor) into its walk.
fn feed(
    walk: &mut Walk,
    ask: &Ask,
    outputs: &[TensorData],
    classes: usize,
    score: &dyn Fn(&[f32], usize) -> f32,
) -> Result<(), Error> {
    let (grads, out) = (float_output(outputs, 0)?, float_output(outputs, 1)?);
    let rows = ask.alphas.len();
    if grads.is_empty() || grads.len() % rows != 0 || out.len() != rows * classes {
        return Err(Error::Internal(format!(
            "a run of {rows} rows returned {} gradient and {} score values",
            grads.len(),
            out.len()
        )));
    }
    let len = grads.len() / rows;
    for (grad, row) in grads.chunks_exact(len).zip(out.chunks_exact(classes)) {
        let f = score(row, walk.class);
        let mean_abs = (grad.iter().map(|g| f64::from(g.abs())).sum::<f64>() / len as f64) as f32;
        let alpha = match &mut walk.course {
            Course::Straight { nodes, sums, .. } => {
                let node = nodes[walk.evaluations];
                for (s, &g) in sums.iter_mut().zip(grad) {
                    *s += node.weight * f64::from(g);
                }
                node.alpha
            }
            Course::Blur { asked, sums, .. } => {
                let point = asked
                    .pop_front()
                    .ok_or_else(|| Error::Internal("a blur gradient nobody asked for".into()))?;
                for ((s, &g), &d) in sums.iter_mut().zip(grad).zip(&point.factor) {
                    *s += f64::from(g) * f64::from(d);
                }
                point.alpha
            }
            Course::Guided { path, asked } => {
                let alpha = path.steps_done() as f64 / walk.total.max(1) as f64;
                path.advance(grad)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                *asked = false;
                alpha
            }
        };
        walk.evaluations += 1;
        walk.points.push((alpha, f, mean_abs));
    }
    Ok(())
}

/// Folds one straight walk's share of a run that summed inside the graph (its weighted sum,
/// its rows' |gradient| sums, then the scored tensor) into the walk.
fn feed_sums(
    walk: &mut Walk,
    ask: &Ask,
    outputs: &[TensorData],
    classes: usize,
    score: &dyn Fn(&[f32], usize) -> f32,
) -> Result<(), Error> {
    let (sum, abs, out) = (
        float_output(outputs, 0)?,
        float_output(outputs, 1)?,
        float_output(outputs, 2)?,
    );
    let Course::Straight { nodes, sums, .. } = &mut walk.course else {
        return Err(Error::Internal(
            "in-graph sums for a walk that is not straight".into(),
        ));
    };
    let rows = ask.alphas.len();
    if sum.len() != sums.len() || abs.len() != rows || out.len() != rows * classes {
        return Err(Error::Internal(format!(
            "a run of {rows} rows returned {} summed, {} |gradient| and {} score values",
            sum.len(),
            abs.len(),
            out.len()
        )));
    }
    for (s, &g) in sums.iter_mut().zip(sum) {
        *s += f64::from(g);
    }
    let len = sums.len().max(1) as f32;
    for (&a, row) in abs.iter().zip(out.chunks_exact(classes)) {
        let alpha = nodes[walk.evaluations].alpha;
        walk.evaluations += 1;
        walk.points.push((alpha, score(row, walk.class), a / len));
    }
    Ok(())
}

/// Output `i` of a gradient run, as float32 values.
fn float_output(outputs: &[TensorData], i: usize) -> Result<&[f32], Error> {
    outputs
        .get(i)
        .and_then(|o| o.as_f32())
        .ok_or_else(|| Error::Internal("gradient output is not float32".into()))
}
