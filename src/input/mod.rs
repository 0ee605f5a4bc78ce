//! A request's input, checked against the model and turned into the tensor its graph takes:
//! an encoded picture decoded and preprocessed as the model's config says, or a tensor sent
//! as it is (through the one tensor codec, [`crate::wire`]).

use std::time::Instant;

use crate::error::Error;
use crate::image::{self, DecodeLimits};
use crate::model::{ModelSpec, TensorData};
use crate::proto::integrad::v1 as pb;
use crate::wire::TensorError;

/// A request's input, checked and in the model's input space (no batch dimension).
pub struct PreparedInput {
    pub tensor: TensorData,
    /// The decoded picture, when the input was an image.
    pub image: Option<::image::RgbImage>,
    pub preprocess_ms: f32,
}

/// Checks the request's input against the model and turns it into the model's tensor.
pub async fn prepare(
    spec: &ModelSpec,
    input: Option<pb::Input>,
    limits: &DecodeLimits,
) -> Result<PreparedInput, Error> {
    let [fed] = spec.inputs.as_slice() else {
        let names: Vec<&str> = spec.inputs.iter().map(|i| i.name()).collect();
        return Err(Error::FailedPrecondition {
            field: "model",
            reason: format!(
                "model {:?} has {} inputs ({names:?}); integrad feeds models with one input",
                spec.name,
                names.len()
            ),
        });
    };
    let kind = input
        .and_then(|i| i.kind)
        .ok_or_else(|| Error::invalid("input", "required: an image or a tensor"))?;
    match kind {
        pb::input::Kind::Image(bytes) => {
            let Some(preprocessing) = fed.preprocessing().cloned() else {
                return Err(Error::invalid("input.image", format!("model {:?} takes tensors only (its config describes no image preprocessing); send input.tensor", spec.name)));
            };
            let limits = *limits;
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
                let data = preprocess.in_scope(|| image::preprocess(&picture, &preprocessing));
                let shape = preprocessing.shape().iter().map(|&d| d as i64).collect();
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
            .in_scope(|| check_tensor(&fed.tensor, tensor))?;
            Ok(PreparedInput {
                tensor,
                image: None,
                preprocess_ms: started.elapsed().as_secs_f32() * 1e3,
            })
        }
    }
}

/// `tensor` for graph input `input`: its shape (without the batch axis) first, then the codec's
/// checks, then its type against the input's.
fn check_tensor(input: &crate::model::TensorSpec, tensor: pb::Tensor) -> Result<TensorData, Error> {
    let expected = &input.shape[1.min(input.shape.len())..];
    if tensor.shape.len() != expected.len()
        || tensor
            .shape
            .iter()
            .zip(expected)
            .any(|(&got, &want)| got <= 0 || (want >= 0 && got != want))
    {
        return Err(Error::invalid("input.tensor", format!("shape {:?} does not fit input {:?}, which takes {:?} without the batch dimension (-1: any size)", tensor.shape, input.name, expected)));
    }
    let tensor = TensorData::try_from(tensor).map_err(|e| tensor_error("input.tensor", e))?;
    if tensor.dtype() != input.dtype {
        return Err(Error::invalid(
            "input.tensor.dtype",
            format!(
                "is {:?} but input {:?} is {:?}",
                tensor.dtype(),
                input.name,
                input.dtype
            ),
        ));
    }
    Ok(tensor)
}

/// A codec error as INVALID_ARGUMENT on the part of the `Tensor` field `field` it concerns.
pub fn tensor_error(field: &'static str, error: TensorError) -> Error {
    let field = match (field, error.part()) {
        ("input.tensor", ".dtype") => "input.tensor.dtype",
        ("input.tensor", ".data") => "input.tensor.data",
        ("baseline.tensor", ".dtype") => "baseline.tensor.dtype",
        ("baseline.tensor", ".data") => "baseline.tensor.data",
        (field, _) => field,
    };
    Error::invalid(field, error.to_string())
}
