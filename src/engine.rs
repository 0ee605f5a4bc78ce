//! What a request does, independent of how it arrived: the gRPC service and the in-process
//! CLI both call the [`Engine`]. Input checks happen here, before any model work starts.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::error::Error;
use crate::explain::{ExplainJob, Explainers, Gradients};
use crate::image::DecodeLimits;
use crate::input::PreparedInputs;
use crate::model::{
    Head, Model, ModelEntry, ModelSpec, OutputKind, Repository, SigmoidKind, Values,
};
use crate::proto::integrad::v1 as pb;

/// Predict's top-k when the request leaves it at 0.
pub const DEFAULT_TOP_K: u32 = 5;

#[derive(Debug, Clone, Default)]
pub struct EngineLimits {
    pub decode: DecodeLimits,
    pub explain: crate::explain::ExplainLimits,
}

pub struct Engine {
    repository: Arc<Repository>,
    /// The gradient models of the explainable ones.
    explainers: Explainers,
    limits: EngineLimits,
    /// The model server whose answers every Explain is checked against, if any.
    predictor: Option<Arc<crate::predictor::Predictor>>,
}

impl Engine {
    pub fn new(repository: Arc<Repository>, explainers: Explainers, limits: EngineLimits) -> Self {
        Self {
            repository,
            explainers,
            limits,
            predictor: None,
        }
    }

    /// Checks every Explain against `predictor` (`serve --predictor`).
    pub fn with_predictor(mut self, predictor: Option<Arc<crate::predictor::Predictor>>) -> Self {
        self.predictor = predictor;
        self
    }

    pub fn predictor(&self) -> Option<&Arc<crate::predictor::Predictor>> {
        self.predictor.as_ref()
    }

    pub fn decode_limits(&self) -> &DecodeLimits {
        &self.limits.decode
    }

    /// The gradient models of `model`, if it can be explained.
    pub fn gradients(&self, model: &str) -> Option<&Gradients> {
        self.explainers.get(model)
    }

    /// Checks an Explain request and prepares it (see [`crate::explain::plan`]).
    pub async fn plan_explain(&self, request: pb::ExplainRequest) -> Result<ExplainJob, Error> {
        crate::explain::plan(self, request).await
    }

    /// Checks an ExplainBatch request and prepares every instance.
    pub async fn plan_explain_batch(
        &self,
        request: pb::ExplainBatchRequest,
    ) -> Result<ExplainJob, Error> {
        crate::explain::plan_batch(self, request).await
    }

    pub fn explain_limits(&self) -> &crate::explain::ExplainLimits {
        &self.limits.explain
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// Names the model a request's `model` field means (the default for an empty one) in its
    /// RPC's span and metrics, before anything else about the request is looked at: a request
    /// refused before it is planned (RESOURCE_EXHAUSTED at admission) is counted under its
    /// model too. A name of no model of this server leaves the label empty.
    pub fn note_model(&self, name: &str) {
        if let Some(name) = self.resolve(name) {
            if self.repository.get(name).is_some() {
                crate::telemetry::note_model(name);
            }
        }
    }

    /// The model name a request's `model` field means: itself, or the default for an empty
    /// one (None when there is no default).
    fn resolve<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if name.is_empty() {
            self.repository.default_model()
        } else {
            Some(name)
        }
    }

    /// The ready model a request names, or the default for an empty name.
    pub fn model(&self, name: &str) -> Result<&Model, Error> {
        let available = || {
            self.repository
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let name = self.resolve(name).ok_or_else(|| Error::NoDefaultModel {
            available: available(),
        })?;
        self.note_model(name);
        let entry = self.repository.get(name);
        match entry {
            Some(ModelEntry::Ready(model)) => match model.worker.failure() {
                None => Ok(model),
                Some(reason) => Err(Error::Model(crate::model::ModelError::Failed {
                    model: name.to_string(),
                    reason,
                })),
            },
            Some(ModelEntry::Failed { reason }) => Err(Error::ModelFailed {
                name: name.to_string(),
                reason: reason.clone(),
            }),
            None => Err(Error::ModelNotFound {
                name: name.to_string(),
                available: available(),
            }),
        }
    }

    pub async fn predict(&self, request: pb::PredictRequest) -> Result<pb::PredictResponse, Error> {
        let model = self.model(&request.model)?;
        let spec = &model.spec;
        let classes = classes(spec);
        let top_k = match (request.top_k, classes) {
            (0, Some(k)) => DEFAULT_TOP_K.min(k as u32),
            (k, Some(classes)) if k as usize > classes => {
                return Err(Error::invalid(
                    "top_k",
                    format!("{k} is more than the model's {classes} classes"),
                ));
            }
            (k, _) => k,
        };
        let input = self
            .prepare_input(model, request.input, request.inputs)
            .await?;

        let started = Instant::now();
        let feeds = input
            .tensors
            .into_iter()
            .map(|(name, mut tensor)| {
                tensor.shape.insert(0, 1);
                (name, tensor)
            })
            .collect();
        let outputs = model
            .worker
            .run(feeds, vec![spec.output().to_string()])
            .instrument(tracing::info_span!("forward"))
            .await?;
        let inference_ms = started.elapsed().as_secs_f32() * 1e3;
        let mut output = outputs
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("the model returned no output".into()))?;
        if output.shape.first() == Some(&1) {
            output.shape.remove(0);
        }
        let top = match (&output.values, output.shape.len()) {
            (Values::F32(scores), 1) => top_predictions(scores, spec, top_k as usize),
            _ => Vec::new(),
        };
        Ok(pb::PredictResponse {
            top,
            logits: Some(pb::Tensor::from(&output)),
            model: spec.name.clone(),
            preprocess_ms: input.preprocess_ms,
            inference_ms,
        })
    }

    /// Checks the request's inputs against the model and turns them into the model's tensors.
    pub async fn prepare_input(
        &self,
        model: &Model,
        input: Option<pb::Input>,
        inputs: std::collections::HashMap<String, pb::Input>,
    ) -> Result<PreparedInputs, Error> {
        crate::input::prepare(&model.spec, input, inputs, &self.limits.decode).await
    }
}

/// The number of classes, when the output is one score vector per batch row.
fn classes(spec: &ModelSpec) -> Option<usize> {
    match spec.output_spec().shape.as_slice() {
        [_, k] if *k > 0 => Some(*k as usize),
        _ if !spec.labels().is_empty() => Some(spec.labels().len()),
        _ => None,
    }
}

/// The k most probable classes. A score head has none (its values are in the response's
/// tensor).
fn top_predictions(scores: &[f32], spec: &ModelSpec, k: usize) -> Vec<pb::Prediction> {
    let (probabilities, logits): (Vec<f32>, Vec<f32>) = match &spec.head {
        Head::Classes {
            kind: OutputKind::Logits,
            ..
        } => (softmax(scores), scores.to_vec()),
        Head::Classes { .. } => (scores.to_vec(), scores.iter().map(|p| p.ln()).collect()),
        Head::Sigmoid {
            kind: SigmoidKind::Logits,
            ..
        } => (
            scores.iter().map(|&l| sigmoid(l)).collect(),
            scores.to_vec(),
        ),
        Head::Sigmoid { .. } => (scores.to_vec(), scores.iter().map(|&p| logit(p)).collect()),
        Head::Scores { .. } => return Vec::new(),
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // NaN-safe: total_cmp orders every float, so a broken model output can't panic the sort.
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(k)
        .map(|i| pb::Prediction {
            class_index: i as i64,
            label: spec.labels().get(i).cloned().unwrap_or_default(),
            probability: probabilities[i],
            logit: logits[i],
        })
        .collect()
}

/// The logistic sigmoid, in f64.
pub fn sigmoid(logit: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(logit)).exp())) as f32
}

/// The logit of a probability, ln(p / (1 - p)), in f64 (infinite at 0 and 1).
pub fn logit(p: f32) -> f32 {
    let p = f64::from(p);
    (p.ln() - (1.0 - p).ln()) as f32
}

/// Softmax in f64, shifted by the maximum so no exponent overflows.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// `softmax(logits)[class]` without the other classes' probabilities (the same arithmetic,
/// so the same value).
pub fn softmax_at(logits: &[f32], class: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    ((logits[class] as f64 - max).exp() / sum) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_at_is_softmax_of_one_class() {
        // The same f64 arithmetic in the same order: bit-identical, not merely close.
        let logits = [2.5f32, -1.0, 0.3, 7.25];
        let all = softmax(&logits);
        for (class, &p) in all.iter().enumerate() {
            assert_eq!(softmax_at(&logits, class).to_bits(), p.to_bits());
        }
    }

    #[test]
    fn softmax_survives_large_logits() {
        // exp(1000) overflows f64; the max shift makes this [1/3, 1/3, 1/3] exactly representable
        // to f32 rounding.
        let p = softmax(&[1000.0, 1000.0, 1000.0]);
        for v in p {
            assert!((v - 1.0 / 3.0).abs() < 1e-7);
        }
    }
}
