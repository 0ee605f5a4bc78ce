//! The IG step model: one ONNX Runtime run per batch of alphas that returns weighted *sums* of
//! gradients instead of one gradient per alpha.
//!
//! [`build_step_model`] wraps a gradient model (the autodiff contract: inputs the model's plus
//! `cotangent`, first output `grad`) so that interpolation and accumulation happen inside the
//! graph:
//!
//! - inputs: [`STEP_INPUT`] and [`STEP_BASELINE`] (the model input's shape with a `paths`
//!   batch: one input and baseline per path), [`STEP_PATH`] (int64 `[rows]`: the path each row
//!   interpolates), [`STEP_ALPHA`] and [`STEP_ONE_MINUS_ALPHA`] (`[rows, 1, ..., 1]`: one
//!   alpha per row, and 1 - alpha computed in f64 by the caller), [`STEP_WEIGHTS`]
//!   (`[sums, rows]`), `cotangent` (`[rows, classes]`), and any other input of the original
//!   model;
//! - outputs: [`STEP_SUMS`], `weights x grad` flattened (`[sums, input values]`), then
//!   [`STEP_ABS`], the sum of |grad| of each row (`[rows, 1]`), then the original outputs
//!   (`[rows, classes]`: the scores along the path).
//!
//! Row r evaluates the gradient at `(1 - alpha_r) * baseline_p + alpha_r * input_p` with
//! `p = ig_path[r]`, exactly the baseline at alpha 0 and exactly the input at 1 (as
//! [`super::interpolate`]). One Explain sends one path (`ig_path` all zeros); the worker's
//! batcher (src/model/batch.rs, by the rules of [`MERGE`]) merges several Explains' runs into one by stacking their paths
//! and offsetting their `ig_path`s, with their weights block-diagonal. Every row-indexed
//! tensor, `ig_path` included, shares the cotangent's batch symbol, so ONNX Runtime keeps its
//! fast layout (docs/autodiff.md, "One batch symbol"). A batch thus
//! sends two inputs and a few numbers per row, and gets back `sums` input-sized tensors
//! (a handful, whatever the batch size) instead of one per row: less data to copy, and on an
//! accelerator the batch never leaves the device.

use crate::autodiff::builder::{attr_i, attr_ints};
use crate::autodiff::{graph, COTANGENT, GRAD};
use crate::model::{PathRules, TensorData, Values};
use crate::proto::onnx::tensor_shape_proto::dimension::Value as Dim;
use crate::proto::onnx::{
    type_proto, AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};

/// The inputs x, one per path, `[paths, ...]`.
pub const STEP_INPUT: &str = "ig_input";
/// The baselines x', one per path, `[paths, ...]`.
pub const STEP_BASELINE: &str = "ig_baseline";
/// Which path each row interpolates, int64 `[rows]`.
pub const STEP_PATH: &str = "ig_path";
/// One alpha per row, `[rows, 1, ..., 1]`.
pub const STEP_ALPHA: &str = "ig_alpha";
/// 1 - alpha per row, `[rows, 1, ..., 1]`.
pub const STEP_ONE_MINUS_ALPHA: &str = "ig_one_minus_alpha";
/// The weight of each row in each sum, `[sums, rows]`.
pub const STEP_WEIGHTS: &str = "ig_weights";
/// `STEP_WEIGHTS x grad`, `[sums, input values]`.
pub const STEP_SUMS: &str = "ig_sums";
/// Sum of |grad| per row, `[rows, 1]`.
pub const STEP_ABS: &str = "ig_abs_sums";
/// Every input of the step model of a single-input model: the six above and the cotangent.
pub const STEP_INPUTS: [&str; 7] = [
    STEP_INPUT,
    STEP_BASELINE,
    STEP_PATH,
    STEP_ALPHA,
    STEP_ONE_MINUS_ALPHA,
    STEP_WEIGHTS,
    COTANGENT,
];

/// How the model worker merges several Explains' step jobs into one run (module docs).
pub const MERGE: PathRules = PathRules {
    inputs: &STEP_INPUTS,
    per_path: &[STEP_INPUT, STEP_BASELINE],
    path_index: STEP_PATH,
    per_row: &[COTANGENT, STEP_ALPHA, STEP_ONE_MINUS_ALPHA],
    weights: STEP_WEIGHTS,
    sums: STEP_SUMS,
};

/// The inputs a step worker keeps bound across runs while they are unchanged: the paths.
pub const KEEP_BOUND: &[&str] = &[STEP_INPUT, STEP_BASELINE];

/// One path's step run: `rows = alphas x targets`, row r at alpha `r / t` with target
/// `r % t`'s one-hot cotangent (the order [`super::Integrator`] expects).
pub struct StepRun<'a> {
    /// The input x, flat.
    pub input: &'a [f32],
    /// The baseline x', flat, as long as `input`.
    pub baseline: &'a [f32],
    /// The model input's shape without its batch axis.
    pub shape: &'a [i64],
    pub alphas: &'a [f64],
    /// The target class of each row within an alpha.
    pub targets: &'a [usize],
    /// The output's classes (the cotangent's width).
    pub classes: usize,
    /// `[sums, rows]`, row-major (e.g. [`super::Integrator::sum_weights`]).
    pub weights: Vec<f32>,
}

impl StepRun<'_> {
    pub fn rows(&self) -> usize {
        self.alphas.len() * self.targets.len()
    }

    /// The step model's inputs for this run, as one path (`ig_path` all zeros).
    pub fn inputs(self) -> Vec<(String, TensorData)> {
        let (rows, t) = (self.rows(), self.targets.len());
        let mut alphas = Vec::with_capacity(rows);
        let mut rests = Vec::with_capacity(rows);
        let mut cotangent = vec![0f32; rows * self.classes];
        for (a, &alpha) in self.alphas.iter().enumerate() {
            for (j, &class) in self.targets.iter().enumerate() {
                alphas.push(alpha as f32);
                // NOTE: 1 - alpha in f64, so alpha 1 gives exactly the input (module docs).
                rests.push((1.0 - alpha) as f32);
                cotangent[(a * t + j) * self.classes + class] = 1.0;
            }
        }
        let single: Vec<i64> = std::iter::once(1)
            .chain(self.shape.iter().copied())
            .collect();
        let mut alpha_shape = vec![1i64; single.len()];
        alpha_shape[0] = rows as i64;
        let sums = self.weights.len() / rows.max(1);
        vec![
            (
                STEP_INPUT.into(),
                TensorData::f32(single.clone(), self.input.to_vec()),
            ),
            (
                STEP_BASELINE.into(),
                TensorData::f32(single, self.baseline.to_vec()),
            ),
            (
                STEP_PATH.into(),
                TensorData {
                    shape: vec![rows as i64],
                    values: Values::I64(vec![0; rows]),
                },
            ),
            (
                STEP_ALPHA.into(),
                TensorData::f32(alpha_shape.clone(), alphas),
            ),
            (
                STEP_ONE_MINUS_ALPHA.into(),
                TensorData::f32(alpha_shape, rests),
            ),
            (
                STEP_WEIGHTS.into(),
                TensorData::f32(vec![sums as i64, rows as i64], self.weights),
            ),
            (
                COTANGENT.into(),
                TensorData::f32(vec![rows as i64, self.classes as i64], cotangent),
            ),
        ]
    }
}

/// Why a gradient model does not fit the autodiff contract the step model builds on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepModelError {
    #[error("the gradient model has no graph")]
    NoGraph,
    #[error("the gradient model's first output is not {GRAD:?}")]
    NoGrad,
    #[error("the model already has a tensor named {0:?}")]
    Reserved(&'static str),
    #[error("the gradient model has no input {0:?}")]
    NoInput(String),
    #[error("input {0:?} has no declared tensor type")]
    Untyped(String),
    #[error("input {0:?} must be a float32 tensor with a batch axis")]
    NotFloatBatch(String),
    #[error("the gradient model has no typed cotangent input")]
    NoCotangent,
}

/// Wraps `grad` (a gradient model of the input `input`) into the step model described in the
/// module docs.
pub fn build_step_model(grad: &ModelProto, input: &str) -> Result<ModelProto, StepModelError> {
    let mut model = grad.clone();
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .max()
        .unwrap_or(0);
    let g = model.graph.as_mut().ok_or(StepModelError::NoGraph)?;
    if g.output.first().map(|o| o.name()) != Some(GRAD) {
        return Err(StepModelError::NoGrad);
    }
    // The step model's own names (the cotangent is the gradient model's already).
    let own_inputs = STEP_INPUTS.iter().filter(|n| **n != COTANGENT);
    for &reserved in own_inputs.chain(&[STEP_SUMS, STEP_ABS]) {
        if g.input
            .iter()
            .chain(&g.output)
            .any(|v| v.name() == reserved)
        {
            return Err(StepModelError::Reserved(reserved));
        }
    }
    let at = g
        .input
        .iter()
        .position(|v| v.name() == input)
        .ok_or_else(|| StepModelError::NoInput(input.to_string()))?;
    let declared = g.input.remove(at);
    let (dtype, dims) =
        tensor_type(&declared).ok_or_else(|| StepModelError::Untyped(input.to_string()))?;
    if dtype != graph::FLOAT || dims.is_empty() {
        return Err(StepModelError::NotFloatBatch(input.to_string()));
    }
    let cotangent = g
        .input
        .iter()
        .find(|v| v.name() == COTANGENT)
        .and_then(tensor_type)
        .ok_or(StepModelError::NoCotangent)?;
    // Rows share the cotangent's batch dimension (one symbol: see docs/autodiff.md).
    let rows = cotangent.1.first().cloned().unwrap_or(Dim::DimValue(-1));
    let one = Dim::DimValue(1);
    let mut per_path = dims.clone();
    per_path[0] = Dim::DimParam("paths".into());
    let mut alpha = vec![one.clone(); dims.len()];
    alpha[0] = rows.clone();
    let sums = Dim::DimParam("sums".into());
    let values = dims[1..]
        .iter()
        .map(|d| match d {
            Dim::DimValue(v) if *v > 0 => Some(*v),
            _ => None,
        })
        .try_fold(1i64, |acc, v| v.map(|v| acc * v));
    let flat_len = values.map_or(Dim::DimParam("values".into()), Dim::DimValue);

    g.input.extend([
        typed(STEP_INPUT, &per_path),
        typed(STEP_BASELINE, &per_path),
        typed_as(STEP_PATH, graph::INT64, std::slice::from_ref(&rows)),
        typed(STEP_ALPHA, &alpha),
        typed(STEP_ONE_MINUS_ALPHA, &alpha),
        typed(STEP_WEIGHTS, &[sums.clone(), rows.clone()]),
    ]);
    // The interpolated rows take the old input's name, so the graph below is unchanged.
    g.value_info.push(declared);
    let mut nodes = vec![
        node(
            "Gather",
            &[STEP_INPUT, STEP_PATH],
            "ig/inputs",
            vec![attr_i("axis", 0)],
        ),
        node(
            "Gather",
            &[STEP_BASELINE, STEP_PATH],
            "ig/baselines",
            vec![attr_i("axis", 0)],
        ),
        node("Mul", &[STEP_ALPHA, "ig/inputs"], "ig/to_input", vec![]),
        node(
            "Mul",
            &[STEP_ONE_MINUS_ALPHA, "ig/baselines"],
            "ig/to_baseline",
            vec![],
        ),
        node("Add", &["ig/to_baseline", "ig/to_input"], input, vec![]),
    ];
    const INTERPOLATION: usize = 5;
    // Flatten with 0 for the batch axis, so it keeps the rows' symbol.
    g.initializer
        .push(int64s("ig/flat_shape", &[0, values.unwrap_or(-1)]));
    nodes.push(node("Reshape", &[GRAD, "ig/flat_shape"], "ig/flat", vec![]));
    nodes.push(node(
        "MatMul",
        &[STEP_WEIGHTS, "ig/flat"],
        STEP_SUMS,
        vec![],
    ));
    nodes.push(node("Abs", &["ig/flat"], "ig/abs", vec![]));
    if opset >= 13 {
        g.initializer.push(int64s("ig/axis1", &[1]));
        nodes.push(node(
            "ReduceSum",
            &["ig/abs", "ig/axis1"],
            STEP_ABS,
            vec![attr_i("keepdims", 1)],
        ));
    } else {
        nodes.push(node(
            "ReduceSum",
            &["ig/abs"],
            STEP_ABS,
            vec![attr_ints("axes", &[1]), attr_i("keepdims", 1)],
        ));
    }
    // Interpolation first, sums last: the node list stays topologically sorted.
    let body = std::mem::take(&mut g.node);
    g.node = nodes[..INTERPOLATION].to_vec();
    g.node.extend(body);
    g.node.extend(nodes.drain(INTERPOLATION..));

    let mut outputs = vec![
        typed(STEP_SUMS, &[sums, flat_len]),
        typed(STEP_ABS, &[rows, one]),
    ];
    outputs.extend(g.output.drain(1..));
    g.output = outputs;
    Ok(model)
}

fn tensor_type(v: &ValueInfoProto) -> Option<(i32, Vec<Dim>)> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some((
            t.elem_type(),
            t.shape
                .as_ref()?
                .dim
                .iter()
                .map(|d| d.value.clone().unwrap_or(Dim::DimParam(String::new())))
                .collect(),
        )),
        _ => None,
    }
}

fn typed(name: &str, dims: &[Dim]) -> ValueInfoProto {
    typed_as(name, graph::FLOAT, dims)
}

fn typed_as(name: &str, elem: i32, dims: &[Dim]) -> ValueInfoProto {
    let mut v = graph::value_info(name, elem, &vec![0; dims.len()]);
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        for (d, want) in t
            .shape
            .as_mut()
            .expect("value_info has a shape")
            .dim
            .iter_mut()
            .zip(dims)
        {
            d.value = Some(want.clone());
        }
    }
    v
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("ig/{op}_{output}")),
        op_type: Some(op.to_string()),
        attribute,
        ..Default::default()
    }
}

fn int64s(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: vec![values.len() as i64],
        data_type: Some(graph::INT64),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}
