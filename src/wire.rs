//! Between the API's messages and integrad's own types, in one place: the tensor codec every
//! path uses (Predict and Explain inputs, Explain baselines, the Open Inference Protocol), the
//! enums of the request options, and the model descriptions ListModels and GetModel return.
//!
//! One policy for tensor values, wherever they come from: little-endian bytes whose length
//! is exactly the shape's; at most [`MAX_ELEMENTS`] elements; float32 values must be finite
//! (a NaN or an infinity in an input makes every attribution and score NaN, silently, so it
//! is refused with the element's index).

use crate::image::{Colormap, Layout, RenderOptions, ResizePolicy};
use crate::model::{
    DType, Feed, Head, InputSpec, ModelEntry, ModelSpec, OutputKind, Point, SigmoidKind,
    TensorData, TensorSpec, Values,
};
use crate::proto::integrad::v1 as pb;

/// A tensor whose element count exceeds this is refused before it is copied (1 Gi elements,
/// 4 GiB of float32: far beyond any model input, far below a usize overflow).
pub const MAX_ELEMENTS: i64 = 1 << 30;

/// What is wrong with a tensor's shape, type or bytes (the field's name is the caller's).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} has a dimension below 1")]
    EmptyDimension { shape: Vec<i64> },
    #[error("shape {shape:?} has more than {MAX_ELEMENTS} elements")]
    TooLarge { shape: Vec<i64> },
    #[error("must be DATA_TYPE_FLOAT32 or DATA_TYPE_INT64, got {0}")]
    UnknownType(i32),
    #[error("has {got} bytes; shape {shape:?} of {dtype:?} needs {needed}")]
    Length {
        got: usize,
        needed: usize,
        shape: Vec<i64>,
        dtype: DType,
    },
    #[error("element {index} is {value} (NaN and infinities are refused)")]
    NotFinite { index: usize, value: f32 },
}

impl TensorError {
    /// Which part of a `Tensor` message is wrong: "" (the shape), ".dtype" or ".data".
    pub fn part(&self) -> &'static str {
        match self {
            TensorError::EmptyDimension { .. } | TensorError::TooLarge { .. } => "",
            TensorError::UnknownType(_) => ".dtype",
            TensorError::Length { .. } | TensorError::NotFinite { .. } => ".data",
        }
    }
}

/// The number of elements of `shape`, every dimension at least 1 and the product within
/// [`MAX_ELEMENTS`].
pub fn elements(shape: &[i64]) -> Result<usize, TensorError> {
    if shape.iter().any(|&d| d < 1) {
        return Err(TensorError::EmptyDimension {
            shape: shape.to_vec(),
        });
    }
    shape
        .iter()
        .try_fold(1i64, |acc, &d| {
            acc.checked_mul(d).filter(|n| *n <= MAX_ELEMENTS)
        })
        .map(|n| n as usize)
        .ok_or_else(|| TensorError::TooLarge {
            shape: shape.to_vec(),
        })
}

/// The tensor of `dtype` and `shape` in `bytes` (row-major, little-endian), checked as the
/// module says.
pub fn decode(dtype: DType, shape: Vec<i64>, bytes: &[u8]) -> Result<TensorData, TensorError> {
    let elements = elements(&shape)?;
    let width = match dtype {
        DType::F32 => 4,
        DType::I64 => 8,
        DType::Other(_) => unreachable!("callers decode only float32 and int64"),
    };
    let needed = elements * width;
    if bytes.len() != needed {
        return Err(TensorError::Length {
            got: bytes.len(),
            needed,
            shape,
            dtype,
        });
    }
    let values = match dtype {
        DType::F32 => Values::F32(finite(f32s(bytes))?),
        _ => Values::I64(
            bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("chunk of 8")))
                .collect(),
        ),
    };
    Ok(TensorData { shape, values })
}

/// `values`, if every one is finite.
pub fn finite(values: Vec<f32>) -> Result<Vec<f32>, TensorError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(TensorError::NotFinite {
            index,
            value: values[index],
        }),
        None => Ok(values),
    }
}

impl TryFrom<pb::Tensor> for TensorData {
    type Error = TensorError;

    fn try_from(tensor: pb::Tensor) -> Result<Self, TensorError> {
        let dtype = match pb::DataType::try_from(tensor.dtype) {
            Ok(pb::DataType::Float32) => DType::F32,
            Ok(pb::DataType::Int64) => DType::I64,
            _ => return Err(TensorError::UnknownType(tensor.dtype)),
        };
        // `decode` checks the size first: a shape that claims gigabytes is refused before the
        // bytes are read.
        decode(dtype, tensor.shape, &tensor.data)
    }
}

impl From<&TensorData> for pb::Tensor {
    fn from(tensor: &TensorData) -> Self {
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
}

/// The float32 values of little-endian bytes (a trailing partial value is ignored; callers
/// check the length first).
pub fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

impl From<DType> for pb::DataType {
    fn from(dtype: DType) -> Self {
        match dtype {
            DType::F32 => pb::DataType::Float32,
            DType::I64 => pb::DataType::Int64,
            DType::Other(_) => pb::DataType::Unspecified,
        }
    }
}

impl From<crate::ig::Method> for pb::Method {
    fn from(method: crate::ig::Method) -> Self {
        use crate::ig::Method;
        match method {
            Method::Trapezoid => pb::Method::Trapezoid,
            Method::Left => pb::Method::Left,
            Method::Right => pb::Method::Right,
            Method::Midpoint => pb::Method::Midpoint,
            Method::GaussLegendre => pb::Method::GaussLegendre,
        }
    }
}

/// The quadrature a request's `method` names (unset: trapezoid).
pub fn method(value: i32) -> Result<crate::ig::Method, String> {
    use crate::ig::Method;
    match pb::Method::try_from(value) {
        Ok(pb::Method::Unspecified) | Ok(pb::Method::Trapezoid) => Ok(Method::Trapezoid),
        Ok(pb::Method::Left) => Ok(Method::Left),
        Ok(pb::Method::Right) => Ok(Method::Right),
        Ok(pb::Method::Midpoint) => Ok(Method::Midpoint),
        Ok(pb::Method::GaussLegendre) => Ok(Method::GaussLegendre),
        Err(_) => Err(format!("unknown value {value}")),
    }
}

/// A request's render options, each checked; `Err((field, reason))`.
pub fn render_options(r: &pb::RenderOptions) -> Result<RenderOptions, (&'static str, String)> {
    let defaults = RenderOptions::default();
    let clip_percentile = r.clip_percentile.unwrap_or(defaults.clip_percentile);
    if !(0.0..=100.0).contains(&clip_percentile) {
        return Err((
            "render.clip_percentile",
            format!("must be in [0, 100], got {clip_percentile}"),
        ));
    }
    let overlay_alpha = r.overlay_alpha.unwrap_or(defaults.overlay_alpha);
    if !(0.0..=1.0).contains(&overlay_alpha) {
        return Err((
            "render.overlay_alpha",
            format!("must be in [0, 1], got {overlay_alpha}"),
        ));
    }
    let colormap = match pb::Colormap::try_from(r.colormap) {
        Ok(pb::Colormap::Unspecified) | Ok(pb::Colormap::Inferno) => Colormap::Inferno,
        Ok(pb::Colormap::Viridis) => Colormap::Viridis,
        Err(_) => return Err(("render.colormap", format!("unknown value {}", r.colormap))),
    };
    Ok(RenderOptions {
        colormap,
        clip_percentile,
        overlay_alpha,
    })
}

/// What ListModels and GetModel say of a model.
pub fn model_info(name: &str, entry: &ModelEntry) -> pb::ModelInfo {
    match entry {
        ModelEntry::Failed { reason } => pb::ModelInfo {
            name: name.to_string(),
            state: pb::ModelState::Failed as i32,
            error: reason.clone(),
            ..Default::default()
        },
        // A model whose worker failed after loading is described, as FAILED with the reason.
        ModelEntry::Ready(model) => match model.worker.failure() {
            Some(reason) => pb::ModelInfo {
                state: pb::ModelState::Failed as i32,
                error: reason,
                ..ready_info(&model.spec)
            },
            None => ready_info(&model.spec),
        },
    }
}

fn ready_info(spec: &ModelSpec) -> pb::ModelInfo {
    let preprocessing = spec.image().map(|(input, p)| pb::Preprocessing {
        input: input.name().to_string(),
        layout: match p.layout {
            Layout::Nchw => pb::Layout::Nchw,
            Layout::Nhwc => pb::Layout::Nhwc,
        } as i32,
        height: p.height,
        width: p.width,
        resize: match p.resize {
            ResizePolicy::ShorterSideCrop => pb::ResizePolicy::ShorterSideCrop,
            ResizePolicy::Stretch => pb::ResizePolicy::Stretch,
        } as i32,
        crop_fraction: p.crop_fraction,
        scale: p.scale,
        mean: p.mean.to_vec(),
        std: p.std.to_vec(),
    });
    pb::ModelInfo {
        name: spec.name.clone(),
        state: pb::ModelState::Ready as i32,
        error: String::new(),
        inputs: spec.inputs.iter().map(|i| input_info(spec, i)).collect(),
        outputs: spec.outputs.iter().map(tensor_info).collect(),
        output: spec.output().to_string(),
        output_kind: match spec.output_kind() {
            OutputKind::Logits => pb::OutputKind::Logits,
            OutputKind::Probabilities => pb::OutputKind::Probabilities,
            OutputKind::Scores => pb::OutputKind::Scores,
        } as i32,
        head: match &spec.head {
            Head::Classes { .. } => pb::HeadKind::Softmax,
            Head::Sigmoid { .. } => pb::HeadKind::Sigmoid,
            Head::Scores { .. } => pb::HeadKind::Scores,
        } as i32,
        logits: match &spec.head {
            Head::Sigmoid {
                kind: SigmoidKind::Probabilities { logits: Some(l) },
                ..
            } => l.clone(),
            _ => String::new(),
        },
        labels: spec.labels().to_vec(),
        preprocessing,
        explainable: spec.attribution.is_ok(),
        not_explainable_reason: spec.attribution.clone().err().unwrap_or_default(),
        path: spec.path.display().to_string(),
        device: spec.device.to_string(),
        sha256: spec.sha256.clone(),
        attribution_points: spec
            .attribution
            .iter()
            .flatten()
            .map(|point| attribution_point(spec, point))
            .collect(),
        text: spec.text.as_ref().map(|t| pb::TextInfo {
            ids: t.ids.clone(),
            attention_mask: t.mask.clone().unwrap_or_default(),
            token_type_ids: t.type_ids.clone().unwrap_or_default(),
            max_length: t.max_length as u32,
            pad_token: t.pad.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
        }),
        feature_groups: spec
            .tabular
            .groups
            .iter()
            .map(|(name, features)| pb::FeatureGroup {
                name: name.clone(),
                features: features.clone(),
            })
            .collect(),
    }
}

fn tensor_info(spec: &TensorSpec) -> pb::TensorInfo {
    pb::TensorInfo {
        name: spec.name.clone(),
        dtype: pb::DataType::from(spec.dtype) as i32,
        shape: spec.shape.clone(),
        ..Default::default()
    }
}

/// An input with how it is fed, its feature names and the valid ids of the tables it indexes.
fn input_info(spec: &ModelSpec, input: &InputSpec) -> pb::TensorInfo {
    let kind = match &input.feed {
        Feed::Tensor => pb::InputKind::Tensor,
        Feed::Image(_) => pb::InputKind::Image,
        Feed::Features(_) => pb::InputKind::Features,
    };
    // Where several tables share the ids, the narrowest range of each column.
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for lookup in spec.lookups.iter().filter(|l| l.input == input.name()) {
        if ranges.is_empty() {
            ranges = lookup.ranges.clone();
        } else if ranges.len() == lookup.ranges.len() {
            for (r, l) in ranges.iter_mut().zip(&lookup.ranges) {
                *r = (r.0.max(l.0), r.1.min(l.1));
            }
        }
    }
    pb::TensorInfo {
        kind: kind as i32,
        features: input.features().unwrap_or_default().to_vec(),
        id_min: ranges.iter().map(|r| r.0).collect(),
        id_max: ranges.iter().map(|r| r.1).collect(),
        ..tensor_info(&input.tensor)
    }
}

fn attribution_point(spec: &ModelSpec, point: &Point) -> pb::AttributionPoint {
    let (kind, input) = match point {
        Point::Input(name) => (pb::AttributionPointKind::Input, name.clone()),
        Point::Embedding { input, .. } => (pb::AttributionPointKind::Embedding, input.clone()),
        Point::Inner(_) => (pb::AttributionPointKind::Inner, String::new()),
    };
    let shape = match point {
        Point::Input(name) => spec.input(name).map(|i| i.tensor.shape.clone()),
        // The ids' shape, then one table row's.
        Point::Embedding { tensor, input } => spec
            .lookups
            .iter()
            .find(|l| l.output == *tensor)
            .zip(spec.input(input))
            .map(|(l, i)| [i.tensor.shape.as_slice(), &l.row_shape].concat()),
        Point::Inner(_) => None,
    };
    pb::AttributionPoint {
        tensor: point.tensor().to_string(),
        kind: kind as i32,
        input,
        shape: shape.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: &[i64], dtype: pb::DataType, data: Vec<u8>) -> pb::Tensor {
        pb::Tensor {
            shape: shape.to_vec(),
            dtype: dtype as i32,
            data,
        }
    }

    #[test]
    fn should_round_trip_both_types() {
        for original in [
            TensorData::f32(vec![2, 2], vec![0.5, -1.0, 3.25, 1e-30]),
            TensorData {
                shape: vec![3],
                values: Values::I64(vec![-7, 0, i64::MAX]),
            },
        ] {
            let decoded = TensorData::try_from(pb::Tensor::from(&original)).unwrap();
            assert_eq!(decoded, original);
        }
    }

    #[test]
    fn should_refuse_non_finite_values_with_their_index() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let values = [1.0, 2.0, bad, 4.0];
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let err = TensorData::try_from(tensor(&[4], pb::DataType::Float32, data));
            assert!(
                matches!(err, Err(TensorError::NotFinite { index: 2, .. })),
                "{err:?}"
            );
        }
    }

    #[test]
    fn should_refuse_a_huge_shape_before_reading_bytes() {
        // 2^31 x 2^31 overflows no i64 but is far past MAX_ELEMENTS; the 4 bytes sent must
        // not matter.
        let huge = tensor(&[1 << 31, 1 << 31], pb::DataType::Float32, vec![0; 4]);
        assert!(matches!(
            TensorData::try_from(huge),
            Err(TensorError::TooLarge { .. })
        ));
        let overflow = tensor(&[i64::MAX, 2], pb::DataType::Int64, vec![]);
        assert!(matches!(
            TensorData::try_from(overflow),
            Err(TensorError::TooLarge { .. })
        ));
    }

    #[test]
    fn should_refuse_wrong_lengths_types_and_empty_dimensions() {
        let short = tensor(&[2], pb::DataType::Int64, vec![0; 12]);
        let err = TensorData::try_from(short).unwrap_err();
        assert_eq!(err.part(), ".data");
        assert!(err.to_string().contains("needs 16"), "{err}");
        let unknown = tensor(&[1], pb::DataType::Unspecified, vec![0; 4]);
        assert_eq!(TensorData::try_from(unknown).unwrap_err().part(), ".dtype");
        let empty = tensor(&[0, 3], pb::DataType::Float32, vec![]);
        assert!(matches!(
            TensorData::try_from(empty),
            Err(TensorError::EmptyDimension { .. })
        ));
    }
}
