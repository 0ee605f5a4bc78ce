//! Planning an Explain: every field of the request checked against the model and the server's
//! limits (a bad one is refused here, before any work starts), the input decoded and the
//! baselines made.

use std::sync::Arc;
use std::time::Instant;

use super::gradients::Differentiated;
use super::{default_batch, ExplainJob, PictureRequest, Targets, DEFAULT_STEPS, MAX_ROWS};
use crate::autodiff::Objective;
use crate::engine::Engine;
use crate::error::Error;
use crate::ig::{self, BaselineKind, Method};
use crate::input::tensor_error;
use crate::model::{Head, ModelSpec, OutputKind, SigmoidKind, TensorData, Values};
use crate::proto::integrad::v1 as pb;
use crate::wire;

/// Checks `request` against the model and the limits and prepares its input and baseline.
pub async fn plan(engine: &Engine, request: pb::ExplainRequest) -> Result<ExplainJob, Error> {
    let started = Instant::now();
    let limits = engine.explain_limits();
    let model = engine.model(&request.model)?.clone();
    let spec = model.spec.clone();
    let gradients = match (&spec.attribution, engine.gradients(&spec.name)) {
        (Ok(_), Some(g)) => g.clone(),
        (Err(reason), _) => {
            return Err(Error::FailedPrecondition {
                field: "model",
                reason: format!("model {:?} cannot be explained: {reason}", spec.name),
            })
        }
        (Ok(_), None) => {
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
        .unwrap_or(spec.labels().len() as i64) as usize;
    if spec.output_spec().shape.len() != 2 || classes == 0 {
        return Err(Error::FailedPrecondition {
            field: "model",
            reason: format!(
                "Explain needs a [batch, classes] output; {:?} has shape {:?}",
                spec.output(),
                spec.output_spec().shape
            ),
        });
    }

    let (objective, what) = objective(&spec, request.objective)?;
    let gradient = gradients
        .get(&what)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("no gradient model of {what:?}")))?;
    let method = wire::method(request.method).map_err(|e| Error::invalid("method", e))?;
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
            match spec.labels().iter().position(|l| *l == label) {
                Some(c) => Targets::Classes(vec![c]),
                None if spec.labels().is_empty() => {
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
    // The attributed input's size (without its batch axis) sizes the default batch.
    let attributed = spec
        .attribution
        .iter()
        .flatten()
        .find_map(|point| spec.input(point.tensor()))
        .ok_or_else(|| Error::Internal("no attributed input".into()))?;
    let input_len: i64 = attributed
        .tensor
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
    let input = engine.prepare_input(&model, request.input).await?;
    let values = input
        .tensor
        .as_f32()
        .ok_or_else(|| Error::invalid("input.tensor.dtype", "Explain needs a float32 input"))?;
    let preprocessing = spec.image().map(|(_, p)| p);
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
        scored: what,
        baselines,
        targets,
        objective,
        classes,
        method,
        steps,
        max_steps,
        tolerance: request.tolerance,
        pictures: match (render, render_options, spec.image()) {
            (Some(r), Some(options), Some((_, preprocessing))) => Some(PictureRequest {
                options,
                mask: r.mask,
                overlay: r.overlay,
                preprocessing: preprocessing.clone(),
                picture: Arc::new(match &input.image {
                    Some(picture) => picture.clone(),
                    None => crate::image::picture_from_input(values, preprocessing),
                }),
            }),
            _ => None,
        },
        batch,
        input,
        started,
    })
}

/// An explicit baseline: a float32 tensor of the input's shape, through the tensor codec.
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
    let tensor = TensorData::try_from(t).map_err(|e| tensor_error("baseline.tensor", e))?;
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
