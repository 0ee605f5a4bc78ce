//! A request's input, checked against the model and turned into the tensor its graph takes:
//! an encoded picture decoded and preprocessed as the model's config says, or a tensor sent
//! as it is (through the one tensor codec, [`crate::wire`]).

use std::collections::HashMap;
use std::time::Instant;

use crate::error::{Error, Field};
use crate::image::{self, DecodeLimits};
use crate::model::{DType, InputSpec, ModelSpec, TensorData, Values};
use crate::proto::integrad::v1 as pb;
use crate::wire::TensorError;

/// A request's inputs, checked and in the model's input space (no batch dimension).
pub struct PreparedInputs {
    /// Every graph input, in the model's order.
    pub tensors: Vec<(String, TensorData)>,
    /// The decoded picture, when the image input came as an image.
    pub image: Option<::image::RgbImage>,
    /// The tokenized text, when a text model's input came as text.
    pub text: Option<crate::text::Tokenized>,
    pub preprocess_ms: f32,
}

impl PreparedInputs {
    /// The tensor of graph input `name`.
    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Checks a request's inputs against the model and turns each into the tensor its graph
/// takes: `input` is the shorthand for a one-input model (or, as a feature row, for every
/// input with named columns), `inputs` names graph inputs; every input is fed exactly once.
pub async fn prepare(
    spec: &ModelSpec,
    input: Option<pb::Input>,
    mut inputs: HashMap<String, pb::Input>,
    limits: &DecodeLimits,
) -> Result<PreparedInputs, Error> {
    let started = Instant::now();
    let names = || {
        spec.inputs
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(unknown) = inputs.keys().find(|k| spec.input(k).is_none()) {
        return Err(Error::invalid(
            "inputs",
            format!(
                "model {:?} has no input {unknown:?}; its inputs: {}",
                spec.name,
                names()
            ),
        ));
    }
    // A text fills the inputs of its tokenizer: as the shorthand, or keyed by the ids input.
    let mut input = input.and_then(|i| i.kind);
    let keyed_text = spec.text.as_ref().and_then(|t| {
        matches!(
            inputs.get(&t.ids).and_then(|i| i.kind.as_ref()),
            Some(pb::input::Kind::Text(_))
        )
        .then(|| t.ids.clone())
    });
    if let Some(ids) = keyed_text {
        if input.is_some() {
            return Err(Error::invalid(
                "input",
                format!("input {ids:?} is given twice (input and inputs); give one"),
            ));
        }
        input = inputs.remove(&ids).and_then(|i| i.kind);
    }
    let mut text = None;
    let mut filled: Vec<(String, TensorData)> = Vec::new();
    if let Some(pb::input::Kind::Text(given)) = &input {
        let tokenized = tokenize(spec, given)?;
        let spec_text = spec.text.as_ref().expect("tokenize checked");
        filled = spec_text.tensors(&tokenized, &tokenized.ids);
        if let Some((name, _)) = filled.iter().find(|(n, _)| inputs.contains_key(n)) {
            return Err(Error::invalid(
                format!("inputs[{name:?}]"),
                format!("input {name:?} is filled by the text; leave it out of inputs"),
            ));
        }
        text = Some(tokenized);
        input = None;
    }
    if let Some((name, _)) = inputs
        .iter()
        .find(|(_, i)| matches!(i.kind, Some(pb::input::Kind::Text(_))))
    {
        return Err(Error::invalid(
            format!("inputs[{name:?}].text"),
            match &spec.text {
                Some(t) => format!(
                    "a text goes in input, or in inputs[{:?}] (the token ids)",
                    t.ids
                ),
                None => format!(
                    "model {:?} is not a text model (it has no tokenizer.json); send tensors",
                    spec.name
                ),
            },
        ));
    }
    // The shorthand: one input, or a feature row for every named-column input.
    let mut row = None;
    match input {
        None => {}
        Some(pb::input::Kind::Features(r)) => {
            if spec.inputs.iter().all(|i| i.features().is_none()) {
                return Err(Error::invalid("input.features", format!("model {:?} has no named features (no features.txt or [features] in its integrad.toml); send a tensor", spec.name)));
            }
            row = Some(r);
        }
        Some(kind) => match spec.inputs.as_slice() {
            [only] if !inputs.contains_key(only.name()) => {
                inputs.insert(only.name().to_string(), pb::Input { kind: Some(kind) });
            }
            [only] => {
                return Err(Error::invalid(
                    "input",
                    format!(
                        "input {:?} is given twice (input and inputs); give one",
                        only.name()
                    ),
                ))
            }
            many => {
                return Err(Error::invalid(
                    "input",
                    format!(
                        "model {:?} has {} inputs ({}); send them in inputs, keyed by name",
                        spec.name,
                        many.len(),
                        names()
                    ),
                ))
            }
        },
    }
    if let Some(row) = &row {
        let known: Vec<&String> = spec
            .inputs
            .iter()
            .filter_map(|i| i.features())
            .flatten()
            .collect();
        if let Some(unknown) = row.values.keys().find(|k| !known.contains(k)) {
            return Err(Error::invalid(
                "input.features",
                format!(
                    "{unknown:?} is no feature of model {:?}; its features: {}",
                    spec.name,
                    known
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }

    let mut tensors = Vec::with_capacity(spec.inputs.len());
    let mut picture = None;
    for fed in &spec.inputs {
        let name = fed.name();
        let named = inputs.contains_key(name) && spec.inputs.len() > 1;
        let field = |part: &str| -> Field {
            if named {
                format!("inputs[{name:?}]{part}").into()
            } else {
                format!("input{part}").into()
            }
        };
        if let Some(at) = filled.iter().position(|(n, _)| n == name) {
            let (name, tensor) = filled.swap_remove(at);
            check_ids(spec, fed, &tensor, "input.text".into())?;
            tensors.push((name, tensor));
            continue;
        }
        let given = inputs.remove(name).and_then(|i| i.kind);
        let part = match &given {
            Some(pb::input::Kind::Tensor(_)) => ".tensor",
            Some(pb::input::Kind::Image(_)) => ".image",
            _ => ".features",
        };
        let tensor = match (given, &row) {
            (Some(_), Some(_)) if fed.features().is_some() => {
                return Err(Error::invalid(
                    field(""),
                    format!("input {name:?} is given twice (a feature row in input and inputs[{name:?}]); give one"),
                ))
            }
            (None, Some(row)) if fed.features().is_some() => {
                feature_row(fed, row, "input.features".into())?
            }
            (None, _) => {
                return Err(Error::invalid(
                    if spec.inputs.len() > 1 { "inputs" } else { "input" },
                    format!(
                        "input {name:?} of model {:?} is missing (its inputs: {})",
                        spec.name,
                        names()
                    ),
                ))
            }
            (Some(pb::input::Kind::Features(r)), _) => {
                if fed.features().is_none() {
                    return Err(Error::invalid(field(".features"), format!("input {name:?} has no named features; send a tensor")));
                }
                if let Some(unknown) = r.values.keys().find(|k| !fed.features().unwrap_or_default().contains(k)) {
                    return Err(Error::invalid(field(".features"), format!("{unknown:?} is no feature of input {name:?}; its features: {}", fed.features().unwrap_or_default().join(", "))));
                }
                feature_row(fed, &r, field(".features"))?
            }
            (Some(pb::input::Kind::Image(bytes)), _) => {
                let (decoded, tensor) = decode_image(spec, fed, bytes, limits, field(".image")).await?;
                picture = Some(decoded);
                tensor
            }
            (Some(pb::input::Kind::Text(_)), _) => {
                return Err(Error::Internal("a text left in inputs".into()))
            }
            (Some(pb::input::Kind::Tensor(tensor)), _) => tracing::info_span!(
                "decode",
                input.kind = "tensor",
                input.bytes = tensor.data.len() as i64
            )
            .in_scope(|| check_tensor(&fed.tensor, tensor, &field(".tensor")))?,
        };
        check_ids(spec, fed, &tensor, field(part))?;
        tensors.push((name.to_string(), tensor));
    }
    Ok(PreparedInputs {
        tensors,
        image: picture,
        text,
        preprocess_ms: started.elapsed().as_secs_f32() * 1e3,
    })
}

/// A text for a text model, tokenized: not empty, and at least one token besides the special
/// ones (a text of spaces has none, and nothing to attribute).
fn tokenize(spec: &ModelSpec, given: &pb::Text) -> Result<crate::text::Tokenized, Error> {
    let Some(text_spec) = &spec.text else {
        return Err(Error::invalid(
            "input.text",
            format!(
                "model {:?} is not a text model (it has no tokenizer.json); send tensors",
                spec.name
            ),
        ));
    };
    if given.text.is_empty() {
        return Err(Error::invalid("input.text.text", "the text is empty"));
    }
    let pair = (!given.pair.is_empty()).then_some(given.pair.as_str());
    let tokenized = text_spec
        .encode(&given.text, pair)
        .map_err(|e| Error::invalid("input.text", format!("the tokenizer failed: {e}")))?;
    if tokenized.special.iter().all(|&s| s) {
        return Err(Error::invalid(
            "input.text.text",
            "the text has no tokens besides the special ones (only spaces or characters the tokenizer drops)",
        ));
    }
    Ok(tokenized)
}

/// An encoded picture for image input `fed`, decoded and preprocessed off the async threads.
async fn decode_image(
    spec: &ModelSpec,
    fed: &InputSpec,
    bytes: Vec<u8>,
    limits: &DecodeLimits,
    field: Field,
) -> Result<(::image::RgbImage, TensorData), Error> {
    let Some(preprocessing) = fed.preprocessing().cloned() else {
        return Err(Error::invalid(field, format!("input {:?} of model {:?} takes tensors only (its config describes no image preprocessing); send a tensor", fed.name(), spec.name)));
    };
    let limits = *limits;
    let request_span = tracing::Span::current();
    // Decoding a large photo takes tens of milliseconds: keep it off the async threads.
    tokio::task::spawn_blocking(move || -> Result<_, Error> {
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
    .map_err(|e| Error::Internal(format!("image decoding task failed: {e}")))?
}

/// A feature row as the tensor of input `fed` (`[columns]`): every feature named exactly
/// once, finite, and integral for an int64 input.
fn feature_row(fed: &InputSpec, row: &pb::FeatureRow, field: Field) -> Result<TensorData, Error> {
    let names = fed.features().unwrap_or_default();
    let mut values = Vec::with_capacity(names.len());
    for name in names {
        let Some(&value) = row.values.get(name) else {
            let missing: Vec<&str> = names
                .iter()
                .filter(|n| !row.values.contains_key(*n))
                .map(|n| n.as_str())
                .collect();
            return Err(Error::invalid(
                field,
                format!(
                    "every feature must be given; missing: {}",
                    missing.join(", ")
                ),
            ));
        };
        if !value.is_finite() {
            return Err(Error::invalid(
                field,
                format!("feature {name:?} is {value}; values must be finite"),
            ));
        }
        values.push(value);
    }
    let shape = vec![values.len() as i64];
    match fed.tensor.dtype {
        DType::F32 => Ok(TensorData::f32(
            shape,
            values.iter().map(|&v| v as f32).collect(),
        )),
        DType::I64 => {
            let ids = names
                .iter()
                .zip(&values)
                .map(|(name, &v)| {
                    if v.fract() == 0.0 && v.abs() < 9.0e15 {
                        Ok(v as i64)
                    } else {
                        Err(Error::invalid(
                            field.clone(),
                            format!(
                                "feature {name:?} of int64 input {:?} is {v}, not an integer",
                                fed.name()
                            ),
                        ))
                    }
                })
                .collect::<Result<_, _>>()?;
            Ok(TensorData {
                shape,
                values: Values::I64(ids),
            })
        }
        DType::Other(t) => Err(Error::invalid(
            field,
            format!(
                "input {:?} is {t}; feature rows fill float32 or int64 inputs",
                fed.name()
            ),
        )),
    }
}

/// Ids out of the range of the table they index are refused here, naming the first one
/// (ONNX Runtime would fail the run, or silently wrap a negative one).
pub fn check_ids(
    spec: &ModelSpec,
    fed: &InputSpec,
    tensor: &TensorData,
    field: Field,
) -> Result<(), Error> {
    let Values::I64(ids) = &tensor.values else {
        return Ok(());
    };
    let columns = tensor.shape.last().copied().unwrap_or(1).max(1) as usize;
    for lookup in spec.lookups.iter().filter(|l| l.input == fed.name()) {
        for (i, &id) in ids.iter().enumerate() {
            let (lo, hi) = lookup.range(i, columns);
            if id < lo || id > hi {
                let what = match fed.features() {
                    Some(names) => format!(
                        "feature {:?}",
                        names.get(i % columns).map_or("?", |n| n.as_str())
                    ),
                    None => format!("element {i}"),
                };
                return Err(Error::invalid(
                    field,
                    format!(
                        "{what} of input {:?} is id {id}, outside {lo}..={hi} (the {} rows of the table {:?} looks up)",
                        fed.name(),
                        lookup.rows,
                        lookup.output
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `tensor` for graph input `input`: its shape (without the batch axis) first, then the codec's
/// checks, then its type against the input's.
fn check_tensor(
    input: &crate::model::TensorSpec,
    tensor: pb::Tensor,
    field: &Field,
) -> Result<TensorData, Error> {
    let expected = &input.shape[1.min(input.shape.len())..];
    if tensor.shape.len() != expected.len()
        || tensor
            .shape
            .iter()
            .zip(expected)
            .any(|(&got, &want)| got <= 0 || (want >= 0 && got != want))
    {
        return Err(Error::invalid(field.clone(), format!("shape {:?} does not fit input {:?}, which takes {:?} without the batch dimension (-1: any size)", tensor.shape, input.name, expected)));
    }
    let tensor = TensorData::try_from(tensor).map_err(|e| tensor_error(field, e))?;
    if tensor.dtype() != input.dtype {
        return Err(Error::invalid(
            format!("{field}.dtype"),
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
pub fn tensor_error(field: &str, error: TensorError) -> Error {
    let field = match error.part() {
        part @ (".dtype" | ".data") => format!("{field}{part}"),
        _ => field.to_string(),
    };
    Error::invalid(field, error.to_string())
}
