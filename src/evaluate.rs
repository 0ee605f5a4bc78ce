//! Evaluate: how faithful a saliency map is to the model that it explains. The request is
//! checked here (every field, before any model run), the perturbed images are made by the
//! plain [`crate::metrics`] library (off the async threads) and scored in batches on the
//! model's worker, as Predict's runs are.
//!
//! Deletion and insertion move pixels of the model-space input. PIC (SIC, AIC) works as
//! PAIR's does, on the 8-bit picture at the model's input size (the pixels preprocessing turns
//! into the model's input: the decoded photo resized and cropped, or a tensor input's pixels
//! recovered through the inverse of the preprocessing); each blurred picture then goes
//! through the model's normalisation.

use std::collections::HashMap;
use std::time::Instant;

use tracing::Instrument;

use crate::engine::Engine;
use crate::error::Error;
use crate::image::{Layout, Preprocessing};
use crate::metrics::{self, Causal, CausalMode, Pic, PicOptions, Reduction};
use crate::model::{Head, Model, OutputKind, TensorData};
use crate::proto::integrad::v1 as pb;

/// RISE's insertion blur: an 11 x 11 kernel of sigma 5.
const RISE_BLUR_SIZE: u32 = 11;
const RISE_BLUR_SIGMA: f32 = 5.0;
/// RISE moves 224 * 8 pixels per step of a 224-wide input: 8 rows.
const RISE_ROWS_PER_STEP: usize = 8;
/// PAIR's default fraction of pixels kept at random in the fully blurred image.
const PAIR_RANDOM_FRACTION: f32 = 0.01;
/// Rows per forward run at most.
const MAX_ROWS: u32 = 256;
/// Rows of one forward run of the curves by default for a 224x224 RGB input (scaled by input
/// size for other models, up to 128): a forward run holds no activations for a backward pass,
/// so 32 rows fit the memory of a gradient run of 16.
const FORWARD_ROWS: u32 = 32;
/// The widest blur kernel accepted (RISE's is 11).
const MAX_BLUR_SIZE: u32 = 255;
/// Curve points of a PIC at most (PAIR's default is 1000).
const MAX_DATA_POINTS: u32 = 100_000;

/// A checked Evaluate request.
struct Plan {
    model: Model,
    preprocessing: Preprocessing,
    image_input: String,
    /// The image input in model space, and the other inputs (held fixed).
    input: Vec<f32>,
    others: Vec<(String, TensorData)>,
    /// The 8-bit picture (height x width x 3) PIC works on.
    picture: Vec<u8>,
    saliency: Vec<f32>,
    target: Option<usize>,
    objective: pb::Objective,
    metrics: Vec<pb::Metric>,
    deletion: CausalPlan,
    insertion: CausalPlan,
    pic: PicPlan,
    rows: usize,
    plot: bool,
}

#[derive(Debug, Clone, Copy)]
struct CausalPlan {
    step: usize,
    substrate: pb::Substrate,
    blur_size: u32,
    blur_sigma: f32,
}

struct PicPlan {
    options: PicOptions,
    random_mask: Vec<bool>,
}

impl Engine {
    /// Computes the faithfulness curves an Evaluate request asks for.
    pub async fn evaluate(
        &self,
        request: pb::EvaluateRequest,
    ) -> Result<pb::EvaluateResponse, Error> {
        let received = Instant::now();
        let plan = plan(self, request).await?;
        run(plan, received).await
    }
}

async fn plan(engine: &Engine, request: pb::EvaluateRequest) -> Result<Plan, Error> {
    let model = engine.model(&request.model)?.clone();
    let spec = model.spec.clone();
    let name = &spec.name;
    let Some((image_spec, preprocessing)) = spec.image() else {
        return Err(Error::invalid(
            "model",
            format!(
                "model {name:?} has no image input; Evaluate's metrics move pixels of a picture"
            ),
        ));
    };
    let (image_input, preprocessing) = (image_spec.name().to_string(), preprocessing.clone());
    let kind = match &spec.head {
        Head::Classes { kind, .. } => *kind,
        _ => {
            return Err(Error::invalid(
                "model",
                format!("model {name:?} has no softmax head (one score per class); Evaluate's metrics follow a class's probability"),
            ))
        }
    };
    let Some(classes) = spec.classes() else {
        return Err(Error::invalid(
            "model",
            format!(
                "Evaluate needs a [batch, classes] output; {:?} has shape {:?}",
                spec.output(),
                spec.output_spec().shape
            ),
        ));
    };
    let objective = match pb::Objective::try_from(request.objective) {
        Ok(pb::Objective::Unspecified | pb::Objective::Probability) => pb::Objective::Probability,
        Ok(pb::Objective::Logit) if kind == OutputKind::Logits => pb::Objective::Logit,
        Ok(pb::Objective::Logit) => {
            return Err(Error::invalid(
                "objective",
                format!("model {name:?} outputs probabilities, so it has no logits; use OBJECTIVE_PROBABILITY"),
            ))
        }
        Ok(pb::Objective::Value) => {
            return Err(Error::invalid(
                "objective",
                "OBJECTIVE_VALUE is a score head's; a classifier's is PROBABILITY or LOGIT",
            ))
        }
        Err(_) => {
            return Err(Error::invalid(
                "objective",
                format!("unknown value {}", request.objective),
            ))
        }
    };
    let metrics = metrics_asked(&request.metrics)?;
    let target = target(&spec, request.target, classes)?;
    let reduction = match pb::SaliencyReduction::try_from(request.reduction) {
        Ok(pb::SaliencyReduction::Unspecified | pb::SaliencyReduction::AbsSum) => Reduction::AbsSum,
        Ok(pb::SaliencyReduction::Sum) => Reduction::Sum,
        Err(_) => {
            return Err(Error::invalid(
                "reduction",
                format!("unknown value {}", request.reduction),
            ))
        }
    };
    let (height, width) = (preprocessing.height as usize, preprocessing.width as usize);
    let pixels = height * width;
    let deletion = causal_plan(request.deletion, "deletion", pb::Substrate::Black, width)?;
    let insertion = causal_plan(request.insertion, "insertion", pb::Substrate::Blur, width)?;
    let pic = pic_plan(request.pic, height, width)?;
    if (height < 2 || width < 2)
        && metrics
            .iter()
            .any(|m| matches!(m, pb::Metric::Sic | pb::Metric::Aic))
    {
        // PIC interpolates over a triangulation of the kept pixels, which a single row or
        // column does not have.
        return Err(Error::invalid(
            "metrics",
            format!("SIC and AIC need a picture of at least 2 x 2 pixels; model {name:?} takes {height} x {width}"),
        ));
    }
    let rows = match request.batch_size {
        // At most 128, half of MAX_ROWS.
        0 => crate::explain::rows_for_input(FORWARD_ROWS, 3 * pixels).min(128) as u32,
        n if n > MAX_ROWS => {
            return Err(Error::invalid(
                "batch_size",
                format!("must be at most {MAX_ROWS}, got {n}"),
            ))
        }
        n => n,
    };
    // A fixed batch dimension (or a Triton config's limit) caps the rows of a run.
    let fixed = image_spec.tensor.shape.first().copied().filter(|&d| d > 0);
    let triton = spec
        .triton
        .as_ref()
        .map(|t| t.max_batch_size)
        .filter(|&m| m > 0);
    let rows = [fixed, triton]
        .into_iter()
        .flatten()
        .fold(rows as usize, |rows, cap| rows.min(cap as usize))
        .max(1);

    let saliency_tensor = request
        .saliency
        .ok_or_else(|| Error::invalid("saliency", "a saliency map is required"))?;
    let prepared = engine
        .prepare_input(&model, request.input, request.inputs)
        .await?;
    let input = prepared
        .get(&image_input)
        .and_then(TensorData::as_f32)
        .ok_or_else(|| Error::Internal("the image input was not prepared as float32".into()))?
        .to_vec();
    let others = prepared
        .tensors
        .iter()
        .filter(|(n, _)| *n != image_input)
        .cloned()
        .collect();
    let picture = match &prepared.image {
        Some(decoded) => crate::image::model_picture(decoded, &preprocessing),
        None => crate::image::picture_from_input(&input, &preprocessing),
    }
    .into_raw();
    let saliency = saliency_map(saliency_tensor, &preprocessing, reduction)?;
    Ok(Plan {
        model,
        preprocessing,
        image_input,
        input,
        others,
        picture,
        saliency,
        target,
        objective,
        metrics,
        deletion,
        insertion,
        pic,
        rows,
        plot: request.plot,
    })
}

/// The metrics asked for, in order; all four for none.
fn metrics_asked(asked: &[i32]) -> Result<Vec<pb::Metric>, Error> {
    if asked.is_empty() {
        return Ok(vec![
            pb::Metric::Deletion,
            pb::Metric::Insertion,
            pb::Metric::Sic,
            pb::Metric::Aic,
        ]);
    }
    let mut metrics = Vec::with_capacity(asked.len());
    for (i, &m) in asked.iter().enumerate() {
        let metric = match pb::Metric::try_from(m) {
            Ok(pb::Metric::Unspecified) | Err(_) => {
                return Err(Error::invalid(
                    format!("metrics[{i}]"),
                    format!("unknown metric {m}; give METRIC_DELETION, METRIC_INSERTION, METRIC_SIC or METRIC_AIC"),
                ))
            }
            Ok(metric) => metric,
        };
        if metrics.contains(&metric) {
            return Err(Error::invalid(
                format!("metrics[{i}]"),
                format!("{} is asked twice", metric.as_str_name()),
            ));
        }
        metrics.push(metric);
    }
    Ok(metrics)
}

/// The class asked for; None: the top-1 prediction (known after the first run).
fn target(
    spec: &crate::model::ModelSpec,
    target: Option<pb::Target>,
    classes: usize,
) -> Result<Option<usize>, Error> {
    match target.and_then(|t| t.kind) {
        None | Some(pb::target::Kind::TopK(1)) => Ok(None),
        Some(pb::target::Kind::TopK(k)) => Err(Error::invalid(
            "target.top_k",
            format!("Evaluate follows one class; got top_k {k} (give 1, a class_index or a label)"),
        )),
        Some(pb::target::Kind::ClassIndex(c)) if c >= 0 && (c as usize) < classes => {
            Ok(Some(c as usize))
        }
        Some(pb::target::Kind::ClassIndex(c)) => Err(Error::invalid(
            "target.class_index",
            format!("{c} is not a class of model {:?} (0..{classes})", spec.name),
        )),
        Some(pb::target::Kind::Label(label)) => {
            let labels = spec.labels();
            if let Some(c) = labels.iter().position(|l| *l == label) {
                return Ok(Some(c));
            }
            // As Explain: apart from case and surrounding spaces, when that leaves one.
            let wanted = label.trim().to_lowercase();
            let same: Vec<usize> = (0..labels.len())
                .filter(|&c| labels[c].trim().to_lowercase() == wanted)
                .collect();
            match same[..] {
                [c] => Ok(Some(c)),
                _ => Err(Error::invalid(
                    "target.label",
                    format!(
                        "{label:?} is not a label of model {:?} (labels.txt; or give target.class_index)",
                        spec.name
                    ),
                )),
            }
        }
    }
}

fn causal_plan(
    options: Option<pb::CausalOptions>,
    field: &str,
    default: pb::Substrate,
    width: usize,
) -> Result<CausalPlan, Error> {
    let options = options.unwrap_or_default();
    let substrate = match pb::Substrate::try_from(options.substrate) {
        Ok(pb::Substrate::Unspecified) => default,
        Ok(s) => s,
        Err(_) => {
            return Err(Error::invalid(
                format!("{field}.substrate"),
                format!("unknown value {}", options.substrate),
            ))
        }
    };
    let blur_size = options.blur_size.unwrap_or(RISE_BLUR_SIZE);
    if blur_size % 2 == 0 || blur_size > MAX_BLUR_SIZE {
        return Err(Error::invalid(
            format!("{field}.blur_size"),
            format!("must be odd and at most {MAX_BLUR_SIZE}, got {blur_size}"),
        ));
    }
    let blur_sigma = options.blur_sigma.unwrap_or(RISE_BLUR_SIGMA);
    if !(blur_sigma.is_finite() && blur_sigma > 0.0 && blur_sigma <= 1000.0) {
        return Err(Error::invalid(
            format!("{field}.blur_sigma"),
            format!("must be in (0, 1000], got {blur_sigma}"),
        ));
    }
    let step = match options.pixels_per_step {
        0 => RISE_ROWS_PER_STEP * width,
        n => n as usize,
    };
    Ok(CausalPlan {
        step,
        substrate,
        blur_size,
        blur_sigma,
    })
}

fn pic_plan(
    options: Option<pb::PicOptions>,
    height: usize,
    width: usize,
) -> Result<PicPlan, Error> {
    let options = options.unwrap_or_default();
    let thresholds = if options.thresholds.is_empty() {
        metrics::DEFAULT_THRESHOLDS.to_vec()
    } else {
        options.thresholds.iter().map(|&t| f64::from(t)).collect()
    };
    let num_data_points = options.num_data_points.unwrap_or(1000);
    if num_data_points > MAX_DATA_POINTS {
        return Err(Error::invalid(
            "pic.num_data_points",
            format!("must be at most {MAX_DATA_POINTS}, got {num_data_points}"),
        ));
    }
    let parsed = PicOptions {
        thresholds,
        min_pred_value: f64::from(options.min_pred_value.unwrap_or(0.8)),
        keep_monotonous: options.keep_monotonous.unwrap_or(true),
        num_data_points: num_data_points as usize,
    };
    parsed.validate().map_err(|e| {
        let text = e.to_string();
        match text.split_once(": ") {
            Some((field, reason)) => Error::invalid(format!("pic.{field}"), reason.to_string()),
            None => Error::invalid("pic", text),
        }
    })?;
    let pixels = height * width;
    let random_mask = match options.random_mask {
        Some(tensor) => {
            let field = "pic.random_mask";
            let data =
                TensorData::try_from(tensor).map_err(|e| crate::input::tensor_error(field, e))?;
            let values = data.as_f32().ok_or_else(|| {
                Error::invalid(format!("{field}.dtype"), "must be DATA_TYPE_FLOAT32")
            })?;
            if data.shape != [height as i64, width as i64] {
                return Err(Error::invalid(
                    field,
                    format!(
                        "shape {:?} is not the model's height x width [{height}, {width}]",
                        data.shape
                    ),
                ));
            }
            values.iter().map(|&v| v != 0.0).collect()
        }
        None => {
            let fraction = options.random_mask_fraction.unwrap_or(PAIR_RANDOM_FRACTION);
            if !(0.0..=1.0).contains(&fraction) {
                return Err(Error::invalid(
                    "pic.random_mask_fraction",
                    format!("must be in [0, 1], got {fraction}"),
                ));
            }
            metrics::random_mask(pixels, f64::from(fraction), options.seed)
        }
    };
    Ok(PicPlan {
        options: parsed,
        random_mask,
    })
}

/// One saliency per pixel from the request's map: the input's shape (reduced over the
/// channels) or height x width.
fn saliency_map(
    tensor: pb::Tensor,
    p: &Preprocessing,
    reduction: Reduction,
) -> Result<Vec<f32>, Error> {
    let field = "saliency";
    let data = TensorData::try_from(tensor).map_err(|e| crate::input::tensor_error(field, e))?;
    let values = data
        .as_f32()
        .ok_or_else(|| Error::invalid(format!("{field}.dtype"), "must be DATA_TYPE_FLOAT32"))?;
    let (h, w) = (i64::from(p.height), i64::from(p.width));
    let input_shape: Vec<i64> = p.shape().iter().map(|&d| d as i64).collect();
    let (channels, chw) = if data.shape == input_shape {
        (3, p.layout == Layout::Nchw)
    } else if data.shape == [h, w] {
        (1, true)
    } else {
        return Err(Error::invalid(
            field,
            format!(
                "shape {:?} is neither the input's {input_shape:?} nor its height x width [{h}, {w}]",
                data.shape
            ),
        ));
    };
    metrics::pixel_saliency(values, channels, chw, (h * w) as usize, reduction)
        .map_err(|e| Error::invalid(format!("{field}.data"), e.to_string()))
}

/// The images of every metric asked, made off the async threads.
struct Work {
    causal: Vec<(pb::Metric, Causal)>,
    pic: Option<Pic>,
}

async fn run(plan: Plan, received: Instant) -> Result<pb::EvaluateResponse, Error> {
    let spec = plan.model.spec.clone();
    let p = plan.preprocessing.clone();
    let mut runner = Runner {
        plan: &plan,
        runs: 0,
        images: 0,
    };
    // The original input first: its top-1 is the default target.
    let original = runner
        .score(vec![plan.input.clone()])
        .await?
        .pop()
        .ok_or_else(|| Error::Internal("no output for the input".into()))?;
    let target = match plan.target {
        Some(t) => t,
        None => argmax(&original),
    };

    let work = {
        let (h, w) = (p.height as usize, p.width as usize);
        let chw = p.layout == Layout::Nchw;
        let order = metrics::salient_order(&plan.saliency);
        let asked = plan.metrics.clone();
        let input = plan.input.clone();
        let (deletion, insertion) = (plan.deletion, plan.insertion);
        let black: Vec<f32> = (0..3).map(|c| p.normalise(c, 0)).collect();
        let pic_inputs = asked
            .iter()
            .any(|m| matches!(m, pb::Metric::Sic | pb::Metric::Aic))
            .then(|| {
                (
                    plan.picture.clone(),
                    plan.saliency.clone(),
                    plan.pic.random_mask.clone(),
                    plan.pic.options.thresholds.clone(),
                )
            });
        let span = tracing::info_span!("evaluate.images");
        tokio::task::spawn_blocking(move || {
            let _span = span.entered();
            let substrate = |plan: &CausalPlan| -> Vec<f32> {
                match plan.substrate {
                    pb::Substrate::Zeros => vec![0.0; input.len()],
                    pb::Substrate::Blur => metrics::rise_blur(
                        &input,
                        3,
                        h,
                        w,
                        chw,
                        plan.blur_size as usize,
                        f64::from(plan.blur_sigma),
                    ),
                    // Black, and the default (resolved in planning).
                    _ => (0..input.len())
                        .map(|i| black[if chw { i / (h * w) } else { i % 3 }])
                        .collect(),
                }
            };
            let mut causal = Vec::new();
            for metric in &asked {
                let (mode, options) = match metric {
                    pb::Metric::Deletion => (CausalMode::Deletion, &deletion),
                    pb::Metric::Insertion => (CausalMode::Insertion, &insertion),
                    _ => continue,
                };
                causal.push((
                    *metric,
                    Causal::new(
                        mode,
                        input.clone(),
                        substrate(options),
                        order.clone(),
                        3,
                        chw,
                        options.step,
                    ),
                ));
            }
            let pic = pic_inputs
                .map(|(picture, saliency, mask, thresholds)| {
                    Pic::new(&picture, h, w, &saliency, &mask, &thresholds)
                })
                .transpose()?;
            Ok::<_, metrics::MetricsError>(Work { causal, pic })
        })
        .await
        .map_err(|e| Error::Internal(format!("evaluation images: {e}")))?
        .map_err(|e| Error::Internal(format!("PIC's blurred pictures: {e}")))?
    };

    let mut curves: HashMap<pb::Metric, pb::Curve> = HashMap::new();
    for (metric, causal) in &work.causal {
        let points = causal.steps() + 1;
        let mut scores = Vec::with_capacity(points);
        for start in (0..points).step_by(plan.rows) {
            let batch = (start..(start + plan.rows).min(points))
                .map(|i| causal.image(i))
                .collect();
            scores.extend(runner.score(batch).await?);
        }
        let y: Vec<f64> = scores
            .iter()
            .map(|logits| objective_score(logits, target, plan.objective, &spec))
            .collect();
        curves.insert(
            *metric,
            pb::Curve {
                metric: *metric as i32,
                x: causal.x().iter().map(|&v| v as f32).collect(),
                y: y.iter().map(|&v| v as f32).collect(),
                auc: causal.area(&y),
                ..Default::default()
            },
        );
    }
    if let Some(pic) = &work.pic {
        // The original picture first, then the fully blurred one and one per threshold.
        let mut pictures = vec![crate::image::picture_tensor(&rgb(&plan.picture, &p), &p)];
        pictures.extend(
            pic.images
                .iter()
                .map(|i| crate::image::picture_tensor(&rgb(i, &p), &p)),
        );
        let mut outputs = Vec::with_capacity(pictures.len());
        let mut pictures = pictures.into_iter().peekable();
        while pictures.peek().is_some() {
            let batch: Vec<Vec<f32>> = pictures.by_ref().take(plan.rows).collect();
            outputs.extend(runner.score(batch).await?);
        }
        for metric in plan
            .metrics
            .iter()
            .filter(|m| matches!(m, pb::Metric::Sic | pb::Metric::Aic))
        {
            let score = |logits: &[f32]| match metric {
                pb::Metric::Sic => probability(logits, target, &spec),
                _ => f64::from(u8::from(argmax(logits) == target)),
            };
            let scores: Vec<f64> = outputs.iter().map(|o| score(o)).collect();
            let mut curve = pb::Curve {
                metric: *metric as i32,
                thresholds: pic.thresholds.iter().map(|&t| t as f32).collect(),
                scores: scores[2..].iter().map(|&s| s as f32).collect(),
                original_score: scores[0] as f32,
                blurred_score: scores[1] as f32,
                ..Default::default()
            };
            match pic.curve(scores[0], &scores[1..], &plan.pic.options) {
                Ok(c) => {
                    curve.x = c.x.iter().map(|&v| v as f32).collect();
                    curve.y = c.y.iter().map(|&v| v as f32).collect();
                    curve.auc = c.auc;
                    curve.information = c.points.iter().map(|p| p.0 as f32).collect();
                    curve.normalized_scores = c.points.iter().map(|p| p.1 as f32).collect();
                }
                Err(reason) => {
                    curve.auc = f64::NAN;
                    curve.skipped = reason;
                }
            }
            curves.insert(*metric, curve);
        }
    }
    let curves: Vec<pb::Curve> = plan
        .metrics
        .iter()
        .filter_map(|m| curves.remove(m))
        .collect();
    let label = spec.labels().get(target).cloned().unwrap_or_default();
    let plot_png = if plan.plot {
        plot(&curves, &label, target, plan.objective)?
    } else {
        Vec::new()
    };
    Ok(pb::EvaluateResponse {
        model: spec.name.clone(),
        target_class: target as i64,
        label,
        objective: plan.objective as i32,
        curves,
        plot_png,
        runs: runner.runs,
        images: runner.images,
        elapsed_ms: received.elapsed().as_secs_f32() * 1e3,
    })
}

/// Scores batches of image inputs on the model's worker, counting them.
struct Runner<'a> {
    plan: &'a Plan,
    runs: u32,
    images: u32,
}

impl Runner<'_> {
    /// The model's output row for each image input of `batch` (one run).
    async fn score(&mut self, batch: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, Error> {
        let plan = self.plan;
        let rows = batch.len();
        let mut shape: Vec<i64> = plan
            .preprocessing
            .shape()
            .iter()
            .map(|&d| d as i64)
            .collect();
        shape.insert(0, rows as i64);
        let mut feeds = vec![(
            plan.image_input.clone(),
            TensorData::f32(shape, batch.concat()),
        )];
        for (name, tensor) in &plan.others {
            feeds.push((name.clone(), tile(tensor, rows)));
        }
        let output = plan.model.spec.output().to_string();
        let outputs = plan
            .model
            .worker
            .run(feeds, vec![output])
            .instrument(tracing::info_span!("forward", rows))
            .await?;
        self.runs += 1;
        self.images += rows as u32;
        let output = outputs
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("the model returned no output".into()))?;
        let values = output
            .as_f32()
            .ok_or_else(|| Error::Internal("the model's output is not float32".into()))?;
        if rows == 0 || values.len() % rows != 0 {
            return Err(Error::Internal(format!(
                "the model returned {} values for {rows} rows",
                values.len()
            )));
        }
        Ok(values
            .chunks_exact(values.len() / rows)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// `rows` copies of an input held fixed, along a new batch axis.
fn tile(tensor: &TensorData, rows: usize) -> TensorData {
    let mut shape = tensor.shape.clone();
    shape.insert(0, rows as i64);
    let values = match &tensor.values {
        crate::model::Values::F32(v) => crate::model::Values::F32(v.repeat(rows)),
        crate::model::Values::I64(v) => crate::model::Values::I64(v.repeat(rows)),
    };
    TensorData { shape, values }
}

fn rgb(pixels: &[u8], p: &Preprocessing) -> ::image::RgbImage {
    ::image::RgbImage::from_raw(p.width, p.height, pixels.to_vec())
        .expect("pictures are height x width x 3")
}

/// The first class of the highest score (NaN-safe).
fn argmax(scores: &[f32]) -> usize {
    (0..scores.len())
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

/// The target's probability: the softmax in f64, or the model's own output when it outputs
/// probabilities.
fn probability(scores: &[f32], target: usize, spec: &crate::model::ModelSpec) -> f64 {
    if spec.output_kind() != OutputKind::Logits {
        return f64::from(scores[target]);
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = scores.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    (f64::from(scores[target]) - max).exp() / sum
}

fn objective_score(
    scores: &[f32],
    target: usize,
    objective: pb::Objective,
    spec: &crate::model::ModelSpec,
) -> f64 {
    match objective {
        pb::Objective::Logit => f64::from(scores[target]),
        _ => probability(scores, target, spec),
    }
}

fn plot(
    curves: &[pb::Curve],
    label: &str,
    target: usize,
    objective: pb::Objective,
) -> Result<Vec<u8>, Error> {
    let objective = match objective {
        pb::Objective::Logit => "logit",
        _ => "probability",
    };
    let plots: Vec<crate::image::CurvePlot> = curves
        .iter()
        .map(|c| {
            let metric = pb::Metric::try_from(c.metric).unwrap_or_default();
            let (name, better, x_label, y_label) = match metric {
                pb::Metric::Deletion => {
                    ("deletion", "lower", "fraction of pixels deleted", objective)
                }
                pb::Metric::Insertion => (
                    "insertion",
                    "higher",
                    "fraction of pixels inserted",
                    objective,
                ),
                pb::Metric::Sic => (
                    "SIC",
                    "higher",
                    "normalised information (WebP size)",
                    "normalised softmax",
                ),
                _ => (
                    "AIC",
                    "higher",
                    "normalised information (WebP size)",
                    "normalised accuracy",
                ),
            };
            let title = if c.skipped.is_empty() {
                format!("{name}: AUC {:.4} ({better} is better)", c.auc)
            } else {
                format!("{name}: skipped")
            };
            crate::image::CurvePlot {
                title,
                x_label: x_label.into(),
                y_label: y_label.into(),
                x: c.x.iter().map(|&v| f64::from(v)).collect(),
                y: c.y.iter().map(|&v| f64::from(v)).collect(),
            }
        })
        .collect();
    let title = format!("faithfulness of the saliency map for {label:?} (class {target})");
    crate::image::curves_png(&title, &plots).map_err(|e| Error::Internal(e.to_string()))
}
