//! Planning an Explain: every field of the request checked against the model and the server's
//! limits (a bad one is refused here, before any work starts), the input decoded and the
//! baselines made.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::gradients::{Differentiated, PointSet};
use super::technique;
use super::{default_batch, shared_rows, ExplainJob, Instance, PictureRequest, Targets, MAX_ROWS};
use crate::autodiff::Objective;
use crate::engine::Engine;
use crate::error::{Error, Field};
use crate::ig::{self, BaselineKind, Method};
use crate::input::{tensor_error, PreparedInputs};
use crate::model::config::TabularBaseline;
use crate::model::{Head, Merge, ModelSpec, OutputKind, Point, SigmoidKind, TensorData, Values};
use crate::proto::integrad::v1 as pb;
use crate::wire;

/// Checks an Explain `request` against the model and the limits and prepares its input and
/// baselines: a batch of one instance.
pub async fn plan(engine: &Engine, mut request: pb::ExplainRequest) -> Result<ExplainJob, Error> {
    let instance = pb::Instance {
        input: request.input.take(),
        inputs: std::mem::take(&mut request.inputs),
        target: None,
    };
    plan_instances(engine, request, vec![instance], false).await
}

/// Checks an ExplainBatch request: the options once, then every instance.
pub async fn plan_batch(
    engine: &Engine,
    request: pb::ExplainBatchRequest,
) -> Result<ExplainJob, Error> {
    let limits = engine.explain_limits();
    let options = request.request.unwrap_or_default();
    if options.input.is_some() || !options.inputs.is_empty() {
        return Err(Error::invalid(
            "request.input",
            "an ExplainBatch request's options carry no input; give each instance its own",
        ));
    }
    match request.instances.len() {
        0 => Err(Error::invalid("instances", "at least one instance is required")),
        n if n > limits.max_instances as usize => Err(Error::ResourceExhausted(format!(
            "{n} instances are more than this server takes in one call ({}, --max-instances); split them over several calls",
            limits.max_instances
        ))),
        _ => {
            let mut job = plan_instances(engine, options, request.instances, true).await?;
            job.results_per_event = request.results_per_event.max(1) as usize;
            Ok(job)
        }
    }
}

async fn plan_instances(
    engine: &Engine,
    request: pb::ExplainRequest,
    instances: Vec<pb::Instance>,
    batched: bool,
) -> Result<ExplainJob, Error> {
    let started = Instant::now();
    let limits = engine.explain_limits();
    let model = engine.model(&request.model)?.clone();
    let spec = model.spec.clone();
    let gradients = match (&spec.attribution, engine.gradients(&spec.name)) {
        (Ok(_), Some(g)) => g.clone(),
        (Err(reason), _) => {
            return Err(Error::FailedPrecondition {
                field: "model".into(),
                reason: format!("model {:?} cannot be explained: {reason}", spec.name),
            })
        }
        (Ok(_), None) => {
            return Err(Error::Internal(
                "explainable model without gradients".into(),
            ))
        }
    };
    let Some(classes) = spec.classes() else {
        return Err(Error::FailedPrecondition {
            field: "model".into(),
            reason: format!(
                "Explain needs a [batch, classes] output; {:?} has shape {:?}",
                spec.output(),
                spec.output_spec().shape
            ),
        });
    };

    let (objective, what) = objective(&spec, request.objective)?;
    let requested_method = match request.method {
        0 => None,
        m => Some(wire::method(m).map_err(|e| Error::invalid("method", e))?),
    };
    let checked = technique::check(
        &request,
        &spec,
        requested_method,
        limits.max_baseline_samples,
    )?;
    let method = checked.method;
    let token_normalization = pb::TokenNormalization::try_from(request.token_normalization)
        .map_err(|_| {
            Error::invalid(
                "token_normalization",
                format!("unknown value {}", request.token_normalization),
            )
        })?;
    let steps = match request.steps.unwrap_or(checked.default_steps) {
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
    let default_targets = targets(&spec, request.target, classes, limits, "target")?;
    let mut instance_targets = Vec::with_capacity(instances.len());
    for (i, instance) in instances.iter().enumerate() {
        instance_targets.push(match &instance.target {
            None => default_targets.clone(),
            Some(t) => targets(
                &spec,
                Some(t.clone()),
                classes,
                limits,
                &format!("instances[{i}].target"),
            )?,
        });
    }
    let most_targets = instance_targets
        .iter()
        .map(|t| match t {
            Targets::Classes(c) => c.len() as u32,
            Targets::TopK(k) => *k as u32,
        })
        .max()
        .unwrap_or(1);

    let render = request.render.filter(|r| r.mask || r.overlay);
    let render_options = match &render {
        None => None,
        Some(_) if spec.image().is_none() => {
            return Err(Error::invalid(
                "render",
                format!(
                    "model {:?} takes tensors, not pictures: there is nothing to draw on",
                    spec.name
                ),
            ));
        }
        Some(r) => {
            Some(wire::render_options(r).map_err(|(field, reason)| Error::invalid(field, reason))?)
        }
    };

    // The baselines' kinds are checked before any input is decoded, their values after.
    let baselines = Baselines::check(&spec, request.baseline, request.baselines, limits)?;
    // The attribution points (a request's own are built now, once, and cached).
    let set = gradients.points(&request.attribute_to, &what).await?;
    let gradient = set
        .get(&what)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("no gradient model of {what:?}")))?;
    if let Some(image) = spec.image() {
        if render.is_some() && !set.points.iter().any(|p| p.tensor() == image.0.name()) {
            return Err(Error::invalid(
                "render",
                format!("the pictures draw the attributions of the image input {:?}, which attribute_to leaves out", image.0.name()),
            ));
        }
    }
    if let Some(stray) = baselines
        .named
        .keys()
        .find(|k| !set.points.iter().any(|p| p.tensor() == k.as_str()))
    {
        let points: Vec<&str> = set.points.iter().map(|p| p.tensor()).collect();
        return Err(Error::invalid(
            "baselines",
            format!("{stray:?} is not attributed (the attributed tensors: {points:?}); baselines are per attributed tensor"),
        ));
    }
    let reference = baselines.reference_rows(&spec, limits)?;

    let mut inputs = Vec::with_capacity(instances.len());
    for (i, instance) in instances.into_iter().enumerate() {
        inputs.push(
            engine
                .prepare_input(&model, instance.input, instance.inputs)
                .await
                .map_err(|e| in_instance(e, batched, i))?,
        );
    }
    let inner = inner_points(&set, &inputs.iter().collect::<Vec<_>>()).await?;
    let mut prepared = Vec::with_capacity(inputs.len());
    for (i, ((inputs, inner), targets)) in inputs
        .into_iter()
        .zip(inner)
        .zip(instance_targets)
        .enumerate()
    {
        let built = instance_of(
            &spec, &set, &baselines, &reference, inputs, inner, targets, i as u32,
        )
        .await
        .map_err(|e| in_instance(e, batched, i))?;
        prepared.push(built);
    }
    if let (Some(r), Some(options), Some((input, preprocessing))) =
        (&render, render_options, spec.image())
    {
        for instance in &mut prepared {
            let values = instance
                .inputs
                .get(input.name())
                .and_then(|t| t.as_f32())
                .ok_or_else(|| Error::Internal("image input is not float".into()))?;
            let picture = match &instance.inputs.image {
                Some(picture) => picture.clone(),
                None => crate::image::picture_from_input(values, preprocessing),
            };
            instance.pictures = Some(PictureRequest {
                options,
                mask: r.mask,
                overlay: r.overlay,
                input: input.name().to_string(),
                preprocessing: preprocessing.clone(),
                picture: Arc::new(picture),
            });
        }
    }

    let input_len = prepared.first().map_or(1, |i| i.x.len());
    let batch = match request.batch_size {
        0 => default_batch(input_len),
        b => b,
    }
    .clamp(1, (MAX_ROWS / most_targets).max(1));
    let walks = !matches!(checked.technique, technique::Technique::IntegratedGradients)
        || checked.noise.is_some();
    let paths: usize = prepared.iter().map(|i| i.baselines.len()).sum();
    let max_rows = if paths > 1 || walks {
        shared_rows(input_len).max((batch * most_targets) as usize)
    } else {
        (batch * most_targets) as usize
    };
    Ok(ExplainJob {
        model,
        set,
        gradient,
        scored: what,
        instances: prepared,
        classes,
        objective,
        method,
        steps,
        max_steps,
        tolerance: request.tolerance,
        batch,
        max_rows,
        batched,
        results_per_event: 1,
        token_normalization,
        started,
        predictor: engine.predictor().cloned(),
        technique: checked.technique,
        noise: checked.noise,
    })
}

/// An instance's error, naming the instance in an ExplainBatch.
fn in_instance(error: Error, batched: bool, i: usize) -> Error {
    match error {
        Error::InvalidArgument { field, reason } if batched => Error::InvalidArgument {
            field: format!("instances[{i}].{field}").into(),
            reason,
        },
        other => other,
    }
}

/// The targets a request (or an instance) asks for.
fn targets(
    spec: &ModelSpec,
    target: Option<pb::Target>,
    classes: usize,
    limits: &super::ExplainLimits,
    field: &str,
) -> Result<Targets, Error> {
    let field = |part: &str| -> Field { format!("{field}{part}").into() };
    Ok(match target.and_then(|t| t.kind) {
        None => Targets::TopK(1),
        Some(pb::target::Kind::ClassIndex(c)) => {
            if c < 0 || c as usize >= classes {
                return Err(Error::invalid(
                    field(".class_index"),
                    format!("{c} is not a class of model {:?} (0..{classes})", spec.name),
                ));
            }
            Targets::Classes(vec![c as usize])
        }
        Some(pb::target::Kind::Label(label)) => {
            if spec.labels().is_empty() {
                return Err(Error::invalid(
                    field(".label"),
                    format!(
                        "model {:?} has no labels; give target.class_index",
                        spec.name
                    ),
                ));
            }
            match label_class(spec.labels(), &label) {
                Ok(c) => Targets::Classes(vec![c]),
                Err(reason) => {
                    return Err(Error::invalid(
                        field(".label"),
                        format!("{label:?} is not a label of model {:?}{reason}", spec.name),
                    ))
                }
            }
        }
        Some(pb::target::Kind::TopK(k)) => {
            if k == 0 || k > limits.max_targets || k as usize > classes {
                return Err(Error::invalid(
                    field(".top_k"),
                    format!(
                        "must be in 1..={}, got {k}",
                        limits.max_targets.min(classes as u32)
                    ),
                ));
            }
            Targets::TopK(k as usize)
        }
    })
}

/// How many labels the refusal of a label names at most.
const CLOSEST_LABELS: usize = 5;

/// The class a target label names: the label as written; else the one label equal to it
/// apart from case and surrounding spaces (people type "egyptian cat" for ImageNet's
/// "Egyptian cat", and a CLI argument may carry a stray space). Else the rest of the refusal,
/// naming the labels it may have meant, with their classes: those it is equal to apart from
/// case when they are several (ImageNet has "Cardigan", the corgi, and "cardigan", the
/// sweater), or the closest ones, so the caller can pick one without reading labels.txt.
fn label_class(labels: &[String], label: &str) -> Result<usize, String> {
    if let Some(c) = labels.iter().position(|l| l == label) {
        return Ok(c);
    }
    let wanted = label.trim().to_lowercase();
    let folded: Vec<String> = labels.iter().map(|l| l.trim().to_lowercase()).collect();
    let same: Vec<usize> = (0..labels.len()).filter(|&c| folded[c] == wanted).collect();
    match same[..] {
        [c] => return Ok(c),
        [] => {}
        _ => {
            return Err(format!(
                " as written, and apart from case it is several: {}; give one as written, or target.class_index",
                named(labels, &same)
            ))
        }
    }
    // The closest first: labels that hold what was typed (a part of a label, "siamese"),
    // then by edit distance (a typo, "egyptain cat"), shortest first.
    let mut ranked: Vec<(bool, usize, usize)> = folded
        .iter()
        .enumerate()
        .map(|(c, l)| {
            let holds = !wanted.is_empty() && l.contains(&wanted);
            (!holds, strsim::levenshtein(&wanted, l), c)
        })
        .collect();
    ranked.sort_unstable();
    let closest: Vec<usize> = ranked.iter().take(CLOSEST_LABELS).map(|r| r.2).collect();
    Err(format!("; the closest: {}", named(labels, &closest)))
}

/// Labels with their classes: `"Egyptian cat" (285), ...`.
fn named(labels: &[String], classes: &[usize]) -> String {
    classes
        .iter()
        .map(|&c| format!("{:?} ({c})", labels[c]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The baselines a request asks for: per attributed tensor, and the shorthand for the rest.
struct Baselines {
    shorthand: Option<pb::Baseline>,
    named: HashMap<String, pb::Baseline>,
}

impl Baselines {
    /// Checks what can be checked before the inputs are decoded: sample counts, and that named
    /// baselines name tensors of the model.
    fn check(
        spec: &ModelSpec,
        shorthand: Option<pb::Baseline>,
        named: HashMap<String, pb::Baseline>,
        limits: &super::ExplainLimits,
    ) -> Result<Self, Error> {
        for (field, baseline) in std::iter::once(("baseline".to_string(), shorthand.as_ref()))
            .chain(
                named
                    .iter()
                    .map(|(k, v)| (format!("baselines[{k:?}]"), Some(v))),
            )
        {
            let Some(baseline) = baseline else { continue };
            let samples = baseline.samples.max(1);
            if samples > limits.max_baseline_samples {
                return Err(Error::invalid(
                    format!("{field}.samples"),
                    format!(
                        "{samples} is above this server's maximum of {}",
                        limits.max_baseline_samples
                    ),
                ));
            }
            if samples > 1 && !matches!(baseline.kind, Some(pb::baseline::Kind::Uniform(_))) {
                return Err(Error::invalid(format!("{field}.samples"), "only a uniform baseline has several samples (seeds seed, seed+1, ...); the others are deterministic (a reference baseline takes rows)"));
            }
            if let Some(pb::baseline::Kind::Reference(r)) = &baseline.kind {
                if spec.tabular.reference.is_none() {
                    return Err(Error::invalid(field, format!("model {:?} has no reference rows (reference in the [features] section of its integrad.toml)", spec.name)));
                }
                if pb::ReferenceStatistic::try_from(r.statistic)
                    .map_or(true, |s| s == pb::ReferenceStatistic::Unspecified)
                {
                    return Err(Error::invalid(
                        format!("{field}.reference.statistic"),
                        "must be MEDIAN, MEAN or ROWS",
                    ));
                }
            }
        }
        Ok(Self { shorthand, named })
    }

    /// The baseline of point `tensor`: its own, else the shorthand.
    fn of(&self, tensor: &str) -> (Field, Option<&pb::Baseline>) {
        match self.named.get(tensor) {
            Some(b) => (format!("baselines[{tensor:?}]").into(), Some(b)),
            None => ("baseline".into(), self.shorthand.as_ref()),
        }
    }

    /// The reference rows a ROWS baseline (or the model's `baseline = "rows"`) averages over,
    /// drawn once for every instance; empty when none is asked for.
    fn reference_rows(
        &self,
        spec: &ModelSpec,
        limits: &super::ExplainLimits,
    ) -> Result<Vec<usize>, Error> {
        let asked = std::iter::once(self.shorthand.as_ref())
            .chain(self.named.values().map(Some))
            .flatten()
            .find_map(|b| match &b.kind {
                Some(pb::baseline::Kind::Reference(r))
                    if r.statistic == pb::ReferenceStatistic::Rows as i32 =>
                {
                    Some((r.rows, r.seed))
                }
                _ => None,
            });
        let configured = (self.shorthand.is_none()
            && spec.tabular.baseline == Some(TabularBaseline::Rows))
        .then(|| (spec.tabular.baseline_rows.unwrap_or(0), 0));
        let Some((rows, seed)) = asked.or(configured) else {
            return Ok(Vec::new());
        };
        let Some(reference) = &spec.tabular.reference else {
            return Ok(Vec::new());
        };
        let wanted = match rows {
            0 => reference.rows().min(limits.max_baseline_samples as usize),
            r => r as usize,
        };
        if wanted > limits.max_baseline_samples as usize {
            return Err(Error::invalid(
                "baseline.reference.rows",
                format!(
                    "{wanted} is above this server's maximum of {} baseline samples",
                    limits.max_baseline_samples
                ),
            ));
        }
        if wanted > reference.rows() {
            return Err(Error::invalid(
                "baseline.reference.rows",
                format!(
                    "model {:?} has {} reference rows",
                    spec.name,
                    reference.rows()
                ),
            ));
        }
        Ok(ig::draw_without_replacement(reference.rows(), wanted, seed))
    }
}

/// One instance, planned: the points at its inputs, its fixed inputs and its baselines.
#[allow(clippy::too_many_arguments)]
async fn instance_of(
    spec: &ModelSpec,
    set: &PointSet,
    baselines: &Baselines,
    reference_rows: &[usize],
    inputs: PreparedInputs,
    inner: Vec<(String, TensorData)>,
    targets: Targets,
    index: u32,
) -> Result<Instance, Error> {
    let layout = &set.layout;
    let mut values: Vec<Vec<f32>> = Vec::with_capacity(set.points.len());
    let mut shapes = Vec::with_capacity(set.points.len());
    for point in &set.points {
        let tensor = match point {
            Point::Input(name) => inputs
                .get(name)
                .cloned()
                .ok_or_else(|| Error::Internal(format!("no input {name:?}")))?,
            _ => inner
                .iter()
                .find(|(n, _)| n == point.tensor())
                .map(|(_, t)| t.clone())
                .ok_or_else(|| Error::Internal(format!("no prefix output {:?}", point.tensor())))?,
        };
        let Values::F32(v) = tensor.values else {
            return Err(Error::invalid(
                "input.tensor.dtype",
                format!("Explain needs float32 values at {:?}", point.tensor()),
            ));
        };
        shapes.push(tensor.shape);
        values.push(v);
    }
    let shape_refs: Vec<&[i64]> = shapes.iter().map(|s| s.as_slice()).collect();
    let input_shape = layout.input_shape(&shape_refs);
    let x = values.concat();
    let pack = |slots: &[super::step::Slot]| -> Result<Vec<TensorData>, Error> {
        slots
            .iter()
            .map(|slot| {
                inputs
                    .get(&slot.name)
                    .cloned()
                    .ok_or_else(|| Error::Internal(format!("no input {:?}", slot.name)))
            })
            .collect()
    };
    let (fixed_f32s, fixed_i64s) = (pack(&layout.fixed_f32)?, pack(&layout.fixed_i64)?);
    let fixed_f32: Vec<f32> = fixed_f32s
        .iter()
        .flat_map(|t| t.as_f32().unwrap_or_default().iter().copied())
        .collect();
    let fixed_i64: Vec<i64> = fixed_i64s
        .iter()
        .flat_map(|t| match &t.values {
            Values::I64(v) => v.clone(),
            Values::F32(_) => Vec::new(),
        })
        .collect();
    // Stacked fixed inputs (module docs of step) must have one shape at run time too.
    let fixed_shape = |tensors: &[TensorData], int64: bool| -> Result<Vec<i64>, Error> {
        let shapes: Vec<&[i64]> = tensors.iter().map(|t| t.shape.as_slice()).collect();
        let (stacked, slots) = match int64 {
            true => (layout.stacked_i64, &layout.fixed_i64),
            false => (layout.stacked_f32, &layout.fixed_f32),
        };
        if stacked && shapes.iter().any(|s| *s != shapes[0]) {
            let given: Vec<String> = slots
                .iter()
                .zip(&shapes)
                .map(|(slot, shape)| format!("{:?} {shape:?}", slot.name))
                .collect();
            return Err(Error::invalid(
                "inputs",
                format!(
                    "the model declares these inputs with one shape, so they must have one: {}",
                    given.join(", ")
                ),
            ));
        }
        Ok(match stacked {
            true => layout.fixed_shape(int64, &shapes),
            false => Vec::new(),
        })
    };
    let fixed_f32_shape = fixed_shape(&fixed_f32s, false)?;
    let fixed_i64_shape = fixed_shape(&fixed_i64s, true)?;

    // Every point's baselines; the number of samples is the largest, and points with one
    // baseline keep it in every sample.
    let mut per_point: Vec<Vec<Vec<f32>>> = Vec::with_capacity(set.points.len());
    for ((point, value), shape) in set.points.iter().zip(&values).zip(&shapes) {
        let at = At {
            point,
            value,
            shape,
        };
        per_point.push(point_baselines(spec, set, at, baselines, reference_rows, &inputs).await?);
    }
    let samples = per_point.iter().map(|b| b.len()).max().unwrap_or(1);
    if let Some((point, b)) = set
        .points
        .iter()
        .zip(&per_point)
        .find(|(_, b)| b.len() != 1 && b.len() != samples)
    {
        return Err(Error::invalid(
            baselines.of(point.tensor()).0,
            format!(
                "{} samples at {:?}, but {samples} at another point; give one count",
                b.len(),
                point.tensor()
            ),
        ));
    }
    let packed = (0..samples)
        .map(|s| {
            per_point
                .iter()
                .flat_map(|b| b[if b.len() == 1 { 0 } else { s }].iter().copied())
                .collect()
        })
        .collect();
    Ok(Instance {
        index,
        inputs,
        x,
        shapes,
        input_shape,
        fixed_f32,
        fixed_i64,
        fixed_f32_shape,
        fixed_i64_shape,
        baselines: packed,
        targets,
        pictures: None,
    })
}

/// The inner points (embeddings, layers) at each of `inputs`, from the set's prefix model: as
/// few runs as the prefix's batch axis allows (several instances' inputs stacked), so a batch
/// of a thousand rows costs a few runs, not a thousand.
async fn inner_points(
    set: &PointSet,
    inputs: &[&PreparedInputs],
) -> Result<Vec<Vec<(String, TensorData)>>, Error> {
    let Some(prefix) = &set.prefix else {
        return Ok(vec![Vec::new(); inputs.len()]);
    };
    let names: Vec<String> = set.inner().map(|p| p.tensor().to_string()).collect();
    let feeds = inputs
        .iter()
        .map(|one| {
            set.prefix_inputs
                .iter()
                .map(|name| {
                    let mut t = one
                        .get(name)
                        .cloned()
                        .ok_or_else(|| Error::Internal(format!("no input {name:?}")))?;
                    t.shape.insert(0, 1);
                    Ok((name.clone(), t))
                })
                .collect::<Result<Vec<_>, Error>>()
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut all = Vec::with_capacity(inputs.len());
    let mut at = 0;
    while at < feeds.len() {
        // Consecutive instances whose inputs stack (the same shapes), up to a bound.
        let first = &feeds[at];
        let mut end = at + 1;
        while end < feeds.len()
            && end - at < PREFIX_BATCH
            && set.prefix_batches
            && Merge::Forward.compatible((first, &names), (&feeds[end], &names))
        {
            end += 1;
        }
        let jobs: Vec<&[(String, TensorData)]> =
            feeds[at..end].iter().map(|f| f.as_slice()).collect();
        let merged = match jobs.as_slice() {
            [one] => one.to_vec(),
            many => Merge::Forward.merge(many),
        };
        let outputs = prefix.run(merged, names.clone()).await?;
        let split = Merge::Forward
            .split(&jobs, &names, outputs)
            .ok_or_else(|| Error::Internal("prefix outputs do not split by instance".into()))?;
        for outputs in split {
            all.push(
                names
                    .iter()
                    .cloned()
                    .zip(outputs)
                    .map(|(name, mut t)| {
                        t.shape.remove(0);
                        (name, t)
                    })
                    .collect(),
            );
        }
        at = end;
    }
    Ok(all)
}

/// Instances per prefix run at most.
const PREFIX_BATCH: usize = 1024;

/// A point at one instance: its values and shape (without the batch axis).
struct At<'a> {
    point: &'a Point,
    value: &'a [f32],
    shape: &'a [i64],
}

/// The baselines at one point (one, or several samples), as its kind asks or by default: black
/// for an image sent as one, the model's configured statistic (else zeros) for a tabular
/// input, the zero vector at an embedding or another inner tensor.
async fn point_baselines(
    spec: &ModelSpec,
    set: &PointSet,
    at: At<'_>,
    baselines: &Baselines,
    reference_rows: &[usize],
    inputs: &PreparedInputs,
) -> Result<Vec<Vec<f32>>, Error> {
    let At {
        point,
        value,
        shape,
    } = at;
    let (field, asked) = baselines.of(point.tensor());
    let input = match point {
        Point::Input(name) => spec.input(name),
        _ => None,
    };
    let preprocessing = input.and_then(|i| i.preprocessing());
    let samples = asked.map_or(1, |b| b.samples.max(1));
    let kind = asked.and_then(|b| b.kind.clone());
    let invalid = |e: crate::ig::IgError| Error::invalid(field.clone(), e.to_string());
    let statistic = |median: bool| -> Result<Vec<f32>, Error> {
        if !point.is_input() {
            // At an embedding the zero vector: a median of ids has no meaning.
            return Ok(vec![0.0; value.len()]);
        }
        spec.tabular
            .reference
            .as_ref()
            .and_then(|r| r.statistic(point.tensor(), median))
            .filter(|s| s.len() == value.len())
            .map(|s| s.iter().map(|&v| v as f32).collect())
            .ok_or_else(|| {
                Error::invalid(
                    field.clone(),
                    format!(
                        "the reference rows have no columns for {:?}",
                        point.tensor()
                    ),
                )
            })
    };
    let default = || -> Result<Vec<Vec<f32>>, Error> {
        match (preprocessing, point, spec.tabular.baseline) {
            // Black when the picture came as an image; a preprocessed tensor takes zeros.
            (Some(p), _, _) if inputs.image.is_some() => {
                Ok(vec![
                    ig::make_baseline(BaselineKind::Black, value, Some(p)).map_err(invalid)?
                ])
            }
            (None, Point::Input(name), Some(kind)) if spec.tabular.features_of(name).is_some() => {
                match kind {
                    TabularBaseline::Zeros => Ok(vec![vec![0.0; value.len()]]),
                    TabularBaseline::Median => Ok(vec![statistic(true)?]),
                    TabularBaseline::Mean => Ok(vec![statistic(false)?]),
                    TabularBaseline::Rows => Ok(Vec::new()),
                }
            }
            _ => Ok(vec![vec![0.0; value.len()]]),
        }
    };
    let rows_baselines = || rows_at(spec, set, point, reference_rows, inputs);
    match kind {
        // A text: the pad token at every position but the special ones, through the layers.
        None if inputs.text.is_some() && !point.is_input() => {
            Ok(vec![text_baseline(spec, set, point, inputs, None, &field).await?])
        }
        Some(pb::baseline::Kind::Text(t)) => {
            Ok(vec![text_baseline(spec, set, point, inputs, Some(&t), &field).await?])
        }
        None => match default()? {
            empty if empty.is_empty() => rows_baselines().await,
            some => Ok(some),
        },
        Some(pb::baseline::Kind::Tensor(t)) => {
            Ok(vec![baseline_tensor(t, shape, &field)?])
        }
        Some(pb::baseline::Kind::Reference(r)) => {
            match pb::ReferenceStatistic::try_from(r.statistic) {
                Ok(pb::ReferenceStatistic::Median) => Ok(vec![statistic(true)?]),
                Ok(pb::ReferenceStatistic::Mean) => Ok(vec![statistic(false)?]),
                _ => rows_baselines().await,
            }
        }
        Some(pb::baseline::Kind::Zeros(_)) => Ok(vec![vec![0.0; value.len()]]),
        Some(other) if !point.is_input() => Err(Error::invalid(
            field,
            format!(
                "{:?} is an inner tensor: its baseline is zeros, a tensor or reference rows, not {}",
                point.tensor(),
                kind_name(&other)
            ),
        )),
        Some(pb::baseline::Kind::Uniform(u)) => (0..u64::from(samples))
            .map(|i| {
                ig::make_baseline(
                    BaselineKind::Uniform {
                        seed: u.seed.wrapping_add(i),
                    },
                    value,
                    preprocessing,
                )
                .map_err(invalid)
            })
            .collect(),
        Some(other) => {
            let kind = match other {
                pb::baseline::Kind::Black(_) => BaselineKind::Black,
                pb::baseline::Kind::White(_) => BaselineKind::White,
                pb::baseline::Kind::Blur(b) => BaselineKind::Blur { sigma: b.sigma },
                _ => BaselineKind::Zeros,
            };
            Ok(vec![ig::make_baseline(kind, value, preprocessing).map_err(invalid)?])
        }
    }
}

/// The point at each drawn reference row (expected gradients): a tabular input's values, or
/// an embedding of the row's ids through the prefix model.
async fn rows_at(
    spec: &ModelSpec,
    set: &PointSet,
    point: &Point,
    rows: &[usize],
    inputs: &PreparedInputs,
) -> Result<Vec<Vec<f32>>, Error> {
    let Some(reference) = &spec.tabular.reference else {
        return Err(Error::invalid(
            "baseline",
            "the model has no reference rows",
        ));
    };
    let row_of = |input: &str, r: usize| -> Option<Vec<f64>> {
        let values = reference.of(input)?;
        let n = values.len() / reference.rows();
        Some(values[r * n..(r + 1) * n].to_vec())
    };
    if let Point::Input(name) = point {
        return rows
            .iter()
            .map(|&r| {
                row_of(name, r)
                    .map(|row| row.iter().map(|&v| v as f32).collect())
                    .ok_or_else(|| {
                        Error::invalid(
                            "baseline",
                            format!("the reference rows have no columns for {name:?}"),
                        )
                    })
            })
            .collect();
    }
    // The request's inputs with every feature input replaced by each row's values, through
    // the prefix model together.
    let replaced: Vec<PreparedInputs> = rows
        .iter()
        .map(|&r| {
            let mut tensors = inputs.tensors.clone();
            for (name, tensor) in tensors.iter_mut() {
                if let Some(row) = row_of(name, r) {
                    tensor.values = match tensor.values {
                        Values::F32(_) => Values::F32(row.iter().map(|&v| v as f32).collect()),
                        Values::I64(_) => Values::I64(row.iter().map(|&v| v as i64).collect()),
                    };
                }
            }
            PreparedInputs {
                tensors,
                image: None,
                text: None,
                preprocess_ms: 0.0,
            }
        })
        .collect();
    let refs: Vec<&PreparedInputs> = replaced.iter().collect();
    inner_points(set, &refs)
        .await?
        .into_iter()
        .map(|inner| {
            inner
                .into_iter()
                .find(|(n, _)| n == point.tensor())
                .and_then(|(_, t)| t.as_f32().map(|v| v.to_vec()))
                .ok_or_else(|| Error::Internal("no prefix output".into()))
        })
        .collect()
}

/// A text baseline at `point`: the text's ids with every token that is not special replaced
/// (by the pad token unless `asked` says otherwise), or `asked`'s own ids, through the prefix
/// model with the text's mask and token types, as Captum's LayerIntegratedGradients takes a
/// layer's baseline.
async fn text_baseline(
    spec: &ModelSpec,
    set: &PointSet,
    point: &Point,
    inputs: &PreparedInputs,
    asked: Option<&pb::TextBaseline>,
    field: &Field,
) -> Result<Vec<f32>, Error> {
    let (Some(text), Some(tokenized)) = (&spec.text, &inputs.text) else {
        return Err(Error::invalid(
            format!("{field}.text"),
            "a text baseline needs a text input (Input.text) of a text model",
        ));
    };
    if point.is_input() {
        return Err(Error::invalid(
            format!("{field}.text"),
            format!(
                "{:?} is a graph input, not a tensor computed from the token ids",
                point.tensor()
            ),
        ));
    }
    let ids = match asked {
        Some(t) if !t.ids.is_empty() => {
            if t.ids.len() != tokenized.ids.len() {
                return Err(Error::invalid(
                    format!("{field}.text.ids"),
                    format!(
                        "{} ids for a text of {} tokens (special tokens included); give one per token",
                        t.ids.len(),
                        tokenized.ids.len()
                    ),
                ));
            }
            t.ids.clone()
        }
        _ => {
            use pb::TextBaselineToken as Token;
            let token = asked.map_or(Token::Unspecified, |t| t.token());
            let (which, chosen) = match token {
                Token::Unk => ("unknown", &text.unk),
                Token::Mask => ("mask", &text.mask_token),
                Token::Unspecified | Token::Pad => ("pad", &text.pad),
            };
            let Some((_, id)) = chosen else {
                return Err(Error::invalid(
                    format!("{field}.text.token"),
                    format!("the tokenizer of model {:?} has no {which} token; give ids, or name the pad token in [text] pad_token", spec.name),
                ));
            };
            crate::text::TextSpec::replaced(tokenized, *id)
        }
    };
    if let Some(lookup) = spec.lookups.iter().find(|l| l.input == text.ids) {
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= lookup.rows) {
            return Err(Error::invalid(
                format!("{field}.text.ids"),
                format!(
                    "id {bad} is outside the vocabulary (0 to {})",
                    lookup.rows - 1
                ),
            ));
        }
    }
    let mut tensors = inputs.tensors.clone();
    for (name, tensor) in tensors.iter_mut() {
        if *name == text.ids {
            tensor.values = Values::I64(ids.clone());
        }
    }
    let replaced = PreparedInputs {
        tensors,
        image: None,
        text: None,
        preprocess_ms: 0.0,
    };
    inner_points(set, &[&replaced])
        .await?
        .into_iter()
        .next()
        .and_then(|inner| inner.into_iter().find(|(n, _)| n == point.tensor()))
        .and_then(|(_, t)| t.as_f32().map(|v| v.to_vec()))
        .ok_or_else(|| Error::Internal("no prefix output for the text baseline".into()))
}

fn kind_name(kind: &pb::baseline::Kind) -> &'static str {
    match kind {
        pb::baseline::Kind::Zeros(_) => "zeros",
        pb::baseline::Kind::Black(_) => "black",
        pb::baseline::Kind::White(_) => "white",
        pb::baseline::Kind::Tensor(_) => "a tensor",
        pb::baseline::Kind::Uniform(_) => "uniform",
        pb::baseline::Kind::Blur(_) => "blur",
        pb::baseline::Kind::Reference(_) => "reference",
        pb::baseline::Kind::Text(_) => "text",
    }
}

/// An explicit baseline: a float32 tensor of the point's shape, through the tensor codec.
fn baseline_tensor(t: pb::Tensor, shape: &[i64], field: &Field) -> Result<Vec<f32>, Error> {
    if t.shape != shape {
        return Err(Error::invalid(
            format!("{field}.tensor"),
            format!("shape {:?} differs from the point's {:?}", t.shape, shape),
        ));
    }
    if t.dtype != pb::DataType::Float32 as i32 {
        return Err(Error::invalid(
            format!("{field}.tensor.dtype"),
            "must be DATA_TYPE_FLOAT32",
        ));
    }
    let tensor =
        TensorData::try_from(t).map_err(|e| tensor_error(&format!("{field}.tensor"), e))?;
    match tensor.values {
        Values::F32(values) => Ok(values),
        Values::I64(_) => unreachable!("dtype checked above"),
    }
}

/// The objective a request asks for (unset: the head's default) and what it differentiates:
/// a softmax head's probability is the softmax of its logits, a sigmoid head's the sigmoid of
/// its logit (never a softmax over one column), a model's own probabilities are taken as they
/// are, the logit of a Sigmoid output is the Sigmoid's input, and a score head's objective is
/// the value itself.
fn objective(spec: &ModelSpec, requested: i32) -> Result<(pb::Objective, Differentiated), Error> {
    let requested = pb::Objective::try_from(requested)
        .map_err(|_| Error::invalid("objective", format!("unknown value {requested}")))?;
    let output = spec.output();
    let of = |of: &str, objective| Differentiated {
        of: of.to_string(),
        objective,
    };
    use pb::Objective as Asked;
    let refuse = |why: String| Err(Error::invalid("objective", why));
    let name = &spec.name;
    let chosen = match (&spec.head, requested) {
        (Head::Scores { .. }, Asked::Unspecified | Asked::Value) => {
            (Asked::Value, of(output, Objective::Logit))
        }
        (Head::Scores { .. }, _) => {
            return refuse(format!("model {name:?} has a score head (raw values, no classes); its objective is the value itself: use OBJECTIVE_VALUE"))
        }
        (_, Asked::Value) => {
            return refuse(format!("model {name:?} is a classifier: use OBJECTIVE_PROBABILITY or OBJECTIVE_LOGIT"))
        }
        (Head::Classes { kind, .. }, Asked::Unspecified | Asked::Probability) => {
            let objective = match kind {
                OutputKind::Logits => Objective::Probability,
                _ => Objective::Logit,
            };
            (Asked::Probability, of(output, objective))
        }
        (Head::Classes { kind, .. }, Asked::Logit) => match kind {
            OutputKind::Logits => (Asked::Logit, of(output, Objective::Logit)),
            _ => return refuse(format!("model {name:?} outputs probabilities, so it has no logits to explain; use OBJECTIVE_PROBABILITY")),
        },
        (Head::Sigmoid { kind, .. }, Asked::Unspecified | Asked::Probability) => {
            let objective = match kind {
                SigmoidKind::Logits => Objective::Sigmoid,
                SigmoidKind::Probabilities { .. } => Objective::Logit,
            };
            (Asked::Probability, of(output, objective))
        }
        (Head::Sigmoid { kind, .. }, Asked::Logit) => match kind {
            SigmoidKind::Logits => (Asked::Logit, of(output, Objective::Logit)),
            SigmoidKind::Probabilities { logits: Some(logits) } => {
                (Asked::Logit, of(logits, Objective::Logit))
            }
            SigmoidKind::Probabilities { logits: None } => {
                return refuse(format!("model {name:?} outputs probabilities that are not a Sigmoid's, so it has no logits to explain; use OBJECTIVE_PROBABILITY"))
            }
        },
    };
    Ok(chosen)
}
