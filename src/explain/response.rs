//! The results of an Explain: one Explanation per target (attributions, completeness, the
//! path's diagnostics) with the pictures asked for, and the events that carry them.

use tokio::sync::mpsc;

use super::{ExplainItem, ExplainJob, Instance, PictureRequest};
use crate::error::Error;
use crate::ig;
use crate::model::{ModelSpec, Point, TensorData, Values};
use crate::proto::integrad::v1 as pb;
use crate::wire;

/// The numbers of one target's explanation that come from outside the path integrator.
pub(super) struct Summary {
    pub class: usize,
    pub f_input: f32,
    pub f_baseline: f32,
    pub steps: u32,
    pub evaluations: usize,
}

/// Adds the requested pictures to `explanation` (drawing is CPU work: off the async threads).
pub(super) async fn draw(
    request: Option<&PictureRequest>,
    explanation: &mut pb::Explanation,
) -> Result<(), Error> {
    let Some(request) = request else {
        return Ok(());
    };
    let attributions = explanation
        .tensor_attributions
        .get(&request.input)
        .map(|t| wire::f32s(&t.data))
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

/// The Explanation of target `j` of `instance`: its (averaged) attributions at every point,
/// per feature where inputs have named columns, the completeness numbers, and the path
/// diagnostics `path` (of the first baseline's path). `baseline` is the (mean) baseline,
/// packed like the attributions.
pub(super) fn explanation(
    job: &ExplainJob,
    instance: &Instance,
    path: Vec<pb::PathPoint>,
    attributions: Vec<f32>,
    baseline: &[f64],
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
    let convergence_tolerance = match job.tolerance {
        t if t > 0.0 => f64::from(t),
        _ => ig::DEFAULT_CONVERGENCE_TOLERANCE,
    };
    // Each point's slice of the packed values.
    let mut slices = Vec::with_capacity(job.set.points.len());
    let mut offset = 0;
    for (point, shape) in job.set.points.iter().zip(&instance.shapes) {
        let len = shape.iter().product::<i64>() as usize;
        slices.push((point, shape, offset..offset + len));
        offset += len;
    }
    let spec = &job.model.spec;
    let (features, groups) = features(spec, instance, &slices, &attributions, baseline);
    let tensor_attributions = slices
        .iter()
        .map(|(point, shape, range)| {
            let tensor = TensorData::f32(shape.to_vec(), attributions[range.clone()].to_vec());
            (point.tensor().to_string(), pb::Tensor::from(&tensor))
        })
        .collect::<std::collections::HashMap<_, _>>();
    let first = slices.first().map(|(p, _, _)| p.tensor().to_string());
    let (tokens, words) = match &instance.inputs.text {
        Some(text) => text_attributions(text, &slices, &attributions, job.token_normalization),
        None => (Vec::new(), Vec::new()),
    };
    Ok(pb::Explanation {
        attributions: first
            .as_ref()
            .and_then(|f| tensor_attributions.get(f).cloned()),
        tensor_attributions,
        attributed: slices
            .iter()
            .map(|(p, _, _)| p.tensor().to_string())
            .collect(),
        target_class: class as i64,
        label: spec.labels().get(class).cloned().unwrap_or_default(),
        score_input: f_input,
        score_baseline: f_baseline,
        attribution_sum: c.attribution_sum as f32,
        convergence_delta: c.delta as f32,
        relative_delta: c.relative_delta() as f32,
        converged: c.within(convergence_tolerance),
        convergence_tolerance: convergence_tolerance as f32,
        steps,
        method: pb::Method::from(job.method) as i32,
        objective: job.objective as i32,
        evaluations: evaluations as u32,
        elapsed_ms: job.started.elapsed().as_secs_f32() * 1e3,
        path,
        mask_png: Vec::new(),
        overlay_png: Vec::new(),
        features,
        feature_groups: groups,
        instance: instance.index,
        truncated: instance.inputs.text.as_ref().is_some_and(|t| t.truncated),
        token_normalization: match instance.inputs.text {
            Some(_) => job.token_normalization as i32,
            None => 0,
        },
        tokens,
        words,
        // Set by the caller from the predictor's answer, when the server has one.
        predictor: None,
        technique: pb::Technique::IntegratedGradients as i32,
        noise_samples: 0,
        regions: Vec::new(),
        pixel_attributions: None,
    })
}

/// A text's tokens and words with their attributions: each token's the sum over the hidden
/// axis of its row of the first attributed tensor with one row per token (`[tokens, ...]`),
/// each word's the sum of its tokens, both scaled as `normalization` asks. None when no
/// attributed tensor has a row per token.
fn text_attributions(
    text: &crate::text::Tokenized,
    slices: &[Slice<'_>],
    attributions: &[f32],
    normalization: pb::TokenNormalization,
) -> (Vec<pb::TokenAttribution>, Vec<pb::WordAttribution>) {
    let n = text.ids.len();
    let Some((_, _, range)) = slices
        .iter()
        .find(|(_, shape, _)| shape.first() == Some(&(n as i64)) && n > 0)
    else {
        return (Vec::new(), Vec::new());
    };
    let values = &attributions[range.clone()];
    let per_token = values.len() / n;
    let mut sums: Vec<f64> = values
        .chunks_exact(per_token.max(1))
        .map(|row| row.iter().map(|&v| f64::from(v)).sum())
        .collect();
    let scale = match normalization {
        pb::TokenNormalization::None => 1.0,
        pb::TokenNormalization::L1 => sums.iter().map(|s| s.abs()).sum::<f64>(),
        pb::TokenNormalization::L2 => sums.iter().map(|s| s * s).sum::<f64>().sqrt(),
    };
    if scale > 0.0 {
        sums.iter_mut().for_each(|s| *s /= scale);
    }
    let tokens = (0..n)
        .map(|i| pb::TokenAttribution {
            token: text.tokens[i].clone(),
            id: text.ids[i],
            start: text.offsets[i].0,
            end: text.offsets[i].1,
            attribution: sums[i] as f32,
            special: text.special[i],
            pair: text.sequence[i] == Some(1),
        })
        .collect();
    // Words: consecutive tokens of one pre-tokenized word of one sequence.
    let mut words: Vec<pb::WordAttribution> = Vec::new();
    let mut last: Option<(Option<usize>, u32)> = None;
    for (i, &sum) in sums.iter().enumerate() {
        let (Some(word), false) = (text.words[i], text.special[i]) else {
            last = None;
            continue;
        };
        let key = (text.sequence[i], word);
        let (start, end) = text.offsets[i];
        match words.last_mut() {
            Some(w) if last == Some(key) => {
                w.end = w.end.max(end);
                w.attribution += sum as f32;
            }
            _ => words.push(pb::WordAttribution {
                word: String::new(),
                start,
                end,
                attribution: sum as f32,
                pair: text.sequence[i] == Some(1),
            }),
        }
        last = Some(key);
    }
    for w in &mut words {
        w.word = crate::text::TextSpec::cut(text, w.pair, (w.start, w.end));
    }
    (tokens, words)
}

type Slice<'a> = (&'a Point, &'a Vec<i64>, std::ops::Range<usize>);

/// Per feature, in the model's column order: the inputs with named columns that are attributed
/// themselves, or whose ids are looked up in an attributed embedding (each column's
/// attribution summed over the embedding's axis); then the groups.
fn features(
    spec: &ModelSpec,
    instance: &Instance,
    slices: &[Slice<'_>],
    attributions: &[f32],
    baseline: &[f64],
) -> (
    Vec<pb::FeatureAttribution>,
    Vec<pb::FeatureGroupAttribution>,
) {
    let mut out = Vec::new();
    for input in &spec.inputs {
        let Some(names) = input.features() else {
            continue;
        };
        let Some(value) = instance.inputs.get(input.name()) else {
            continue;
        };
        let values: Vec<f64> = match &value.values {
            Values::F32(v) => v.iter().map(|&x| decimal(x)).collect(),
            Values::I64(v) => v.iter().map(|&x| x as f64).collect(),
        };
        let at = |tensor: &str| slices.iter().find(|(p, _, _)| p.tensor() == tensor);
        if let Some((_, _, range)) = at(input.name()) {
            for (c, name) in names.iter().enumerate() {
                out.push(pb::FeatureAttribution {
                    name: name.clone(),
                    value: values[c],
                    baseline: decimal(baseline[range.start + c] as f32),
                    attribution: attributions[range.start + c],
                });
            }
            continue;
        }
        let embedded = spec
            .lookups
            .iter()
            .find_map(|l| (l.input == input.name()).then(|| at(&l.output)).flatten());
        if let Some((_, _, range)) = embedded {
            // [columns, dim]: each column's embedding is `dim` consecutive values.
            let dim = range.len() / names.len().max(1);
            for (c, name) in names.iter().enumerate() {
                let start = range.start + c * dim;
                let sum: f64 = attributions[start..start + dim]
                    .iter()
                    .map(|&a| f64::from(a))
                    .sum();
                out.push(pb::FeatureAttribution {
                    name: name.clone(),
                    value: values[c],
                    baseline: f64::NAN,
                    attribution: sum as f32,
                });
            }
        }
    }
    let groups = spec
        .tabular
        .groups
        .iter()
        .map(|(group, members)| pb::FeatureGroupAttribution {
            name: group.clone(),
            attribution: out
                .iter()
                .filter(|f| members.contains(&f.name))
                .map(|f| f64::from(f.attribution))
                .sum::<f64>() as f32,
        })
        .collect();
    (out, groups)
}

pub(super) async fn send(
    events: &mpsc::Sender<ExplainItem>,
    event: pb::explain_event::Event,
) -> Result<(), Error> {
    events
        .send(Ok(pb::ExplainEvent { event: Some(event) }))
        .await
        .map_err(|_| Error::Cancelled)
}

/// The f64 nearest the shortest decimal that reads back as `x`: a feature sent as 39.1 is
/// reported as 39.1, not as its float32's 39.099998474121094.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}
