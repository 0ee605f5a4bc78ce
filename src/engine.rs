//! What a request does, independent of how it arrived: the gRPC service and the in-process
//! CLI both call the [`Engine`]. Input checks happen here, before any model work starts.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::error::Error;
use crate::image::{self, DecodeLimits};
use crate::model::{
    DType, Model, ModelEntry, ModelSpec, OutputKind, Repository, TensorData, Values,
};
use crate::proto::integrad::v1 as pb;

/// Predict's top-k when the request leaves it at 0.
pub const DEFAULT_TOP_K: u32 = 5;

/// A tensor whose element count exceeds this is refused before it is copied (1 Gi elements,
/// 4 GiB of float32: far beyond any model input, far below a usize overflow).
pub const MAX_ELEMENTS: i64 = 1 << 30;

#[derive(Debug, Clone, Default)]
pub struct EngineLimits {
    pub decode: DecodeLimits,
    pub explain: crate::explain::ExplainLimits,
}

pub struct Engine {
    repository: Arc<Repository>,
    limits: EngineLimits,
}

/// A request's input, checked and in the model's input space (no batch dimension).
pub struct PreparedInput {
    pub tensor: TensorData,
    /// The decoded picture, when the input was an image.
    pub image: Option<::image::RgbImage>,
    pub preprocess_ms: f32,
}

impl Engine {
    pub fn new(repository: Arc<Repository>, limits: EngineLimits) -> Self {
        Self { repository, limits }
    }

    pub fn explain_limits(&self) -> &crate::explain::ExplainLimits {
        &self.limits.explain
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
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
        let name = if name.is_empty() {
            self.repository
                .default_model()
                .ok_or_else(|| Error::NoDefaultModel {
                    available: available(),
                })?
        } else {
            name
        };
        let entry = self.repository.get(name);
        if entry.is_some() {
            crate::telemetry::note_model(name);
        }
        match entry {
            Some(ModelEntry::Ready(model)) => Ok(model),
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
        let input = self.prepare_input(model, request.input).await?;

        let started = Instant::now();
        let mut batched = input.tensor;
        batched.shape.insert(0, 1);
        let outputs = model
            .worker
            .run(
                vec![(spec.input.clone(), batched)],
                vec![spec.output.clone()],
            )
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
            logits: Some(to_proto(&output)),
            model: spec.name.clone(),
            preprocess_ms: input.preprocess_ms,
            inference_ms,
        })
    }

    /// Checks the request's input against the model and turns it into the model's tensor.
    pub async fn prepare_input(
        &self,
        model: &Model,
        input: Option<pb::Input>,
    ) -> Result<PreparedInput, Error> {
        let spec = &model.spec;
        if spec.inputs.len() != 1 {
            let names: Vec<&str> = spec.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(Error::FailedPrecondition {
                field: "model",
                reason: format!(
                    "model {:?} has {} inputs ({names:?}); integrad feeds models with one input",
                    spec.name,
                    names.len()
                ),
            });
        }
        let kind = input
            .and_then(|i| i.kind)
            .ok_or_else(|| Error::invalid("input", "required: an image or a tensor"))?;
        match kind {
            pb::input::Kind::Image(bytes) => {
                let Some(image_input) = spec.image.clone() else {
                    return Err(Error::invalid("input.image", format!("model {:?} takes tensors only (its config describes no image preprocessing); send input.tensor", spec.name)));
                };
                let limits = self.limits.decode;
                let started = Instant::now();
                let request_span = tracing::Span::current();
                // Decoding a large photo takes tens of milliseconds: keep it off the async threads.
                let (picture, tensor) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
                    let decode = tracing::info_span!(parent: &request_span, "decode", input.kind = "image", input.bytes = bytes.len() as i64, image.width = tracing::field::Empty, image.height = tracing::field::Empty);
                    let picture = decode.in_scope(|| image::decode(&bytes, &limits))?;
                    // Signed: OpenTelemetry attributes are i64 (tracing's u64 would become text).
                    decode.record("image.width", i64::from(picture.width()));
                    decode.record("image.height", i64::from(picture.height()));
                    drop(decode);
                    let preprocess = tracing::info_span!(parent: &request_span, "preprocess");
                    let data = preprocess
                        .in_scope(|| image::preprocess(&picture, &image_input.preprocessing));
                    let shape = image_input
                        .preprocessing
                        .shape()
                        .iter()
                        .map(|&d| d as i64)
                        .collect();
                    Ok((picture, TensorData::f32(shape, data)))
                })
                .await
                .map_err(|e| Error::Internal(format!("image decoding task failed: {e}")))??;
                Ok(PreparedInput {
                    tensor,
                    image: Some(picture),
                    preprocess_ms: started.elapsed().as_secs_f32() * 1e3,
                })
            }
            pb::input::Kind::Tensor(tensor) => {
                let started = Instant::now();
                let tensor = tracing::info_span!(
                    "decode",
                    input.kind = "tensor",
                    input.bytes = tensor.data.len() as i64
                )
                .in_scope(|| check_tensor(spec, tensor))?;
                Ok(PreparedInput {
                    tensor,
                    image: None,
                    preprocess_ms: started.elapsed().as_secs_f32() * 1e3,
                })
            }
        }
    }
}

/// The number of classes, when the output is one score vector per batch row.
fn classes(spec: &ModelSpec) -> Option<usize> {
    match spec.output_spec().shape.as_slice() {
        [_, k] if *k > 0 => Some(*k as usize),
        _ if !spec.labels.is_empty() => Some(spec.labels.len()),
        _ => None,
    }
}

fn check_tensor(spec: &ModelSpec, tensor: pb::Tensor) -> Result<TensorData, Error> {
    let input = spec.input_spec();
    let expected = &input.shape[1.min(input.shape.len())..];
    let field = "input.tensor";
    if tensor.shape.len() != expected.len()
        || tensor
            .shape
            .iter()
            .zip(expected)
            .any(|(&got, &want)| got <= 0 || (want >= 0 && got != want))
    {
        return Err(Error::invalid(field, format!("shape {:?} does not fit input {:?}, which takes {:?} without the batch dimension (-1: any size)", tensor.shape, input.name, expected)));
    }
    let elements = tensor.shape.iter().try_fold(1i64, |acc, &d| {
        acc.checked_mul(d).filter(|n| *n <= MAX_ELEMENTS)
    });
    let Some(elements) = elements else {
        return Err(Error::invalid(
            field,
            format!(
                "shape {:?} has more than {MAX_ELEMENTS} elements",
                tensor.shape
            ),
        ));
    };
    let dtype = match pb::DataType::try_from(tensor.dtype) {
        Ok(pb::DataType::Float32) => DType::F32,
        Ok(pb::DataType::Int64) => DType::I64,
        _ => {
            return Err(Error::invalid(
                "input.tensor.dtype",
                format!(
                    "must be DATA_TYPE_FLOAT32 or DATA_TYPE_INT64, got {}",
                    tensor.dtype
                ),
            ))
        }
    };
    if dtype != input.dtype {
        return Err(Error::invalid(
            "input.tensor.dtype",
            format!(
                "is {dtype:?} but input {:?} is {:?}",
                input.name, input.dtype
            ),
        ));
    }
    let width = if dtype == DType::F32 { 4 } else { 8 };
    let needed = elements as usize * width;
    if tensor.data.len() != needed {
        return Err(Error::invalid(
            "input.tensor.data",
            format!(
                "has {} bytes; shape {:?} of {dtype:?} needs {needed}",
                tensor.data.len(),
                tensor.shape
            ),
        ));
    }
    let values = if dtype == DType::F32 {
        let data = f32s(&tensor.data);
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "input.tensor.data",
                format!(
                    "element {i} is {} (NaN and infinities are refused)",
                    data[i]
                ),
            ));
        }
        Values::F32(data)
    } else {
        Values::I64(
            tensor
                .data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("chunk of 8")))
                .collect(),
        )
    };
    Ok(TensorData {
        shape: tensor.shape,
        values,
    })
}

fn top_predictions(scores: &[f32], spec: &ModelSpec, k: usize) -> Vec<pb::Prediction> {
    let (probabilities, logits): (Vec<f32>, Vec<f32>) = match spec.output_kind {
        OutputKind::Logits => (softmax(scores), scores.to_vec()),
        OutputKind::Probabilities => (scores.to_vec(), scores.iter().map(|p| p.ln()).collect()),
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
            label: spec.labels.get(i).cloned().unwrap_or_default(),
            probability: probabilities[i],
            logit: logits[i],
        })
        .collect()
}

/// Softmax in f64, shifted by the maximum so no exponent overflows.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// The float32 values of a `Tensor.data` (little-endian; a trailing partial value is ignored,
/// callers check the length first).
pub fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub fn to_proto(tensor: &TensorData) -> pb::Tensor {
    let (dtype, data) = match &tensor.values {
        Values::F32(v) => (
            pb::DataType::Float32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Values::I64(v) => (
            pb::DataType::Int64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    pb::Tensor {
        shape: tensor.shape.clone(),
        dtype: dtype as i32,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
