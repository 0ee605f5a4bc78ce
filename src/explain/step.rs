//! The IG step model: one ONNX Runtime run per batch of alphas that returns weighted *sums* of
//! gradients instead of one gradient per alpha.
//!
//! [`build_step_model`] wraps a gradient model (the autodiff contract: inputs the model's plus
//! `cotangent`, first outputs `grad`, `grad_1`, ... one per attributed tensor) so that
//! interpolation and accumulation happen inside the graph. Every attributed tensor (a graph
//! input, or an inner tensor such as an embedding) is one *point*; several points are packed,
//! flattened and in order, into one vector of `L` values ([`StepLayout`]), while a single
//! point keeps its own shape (which may then have any unknown dimensions):
//!
//! - inputs: [`STEP_INPUT`] and [`STEP_BASELINE`] (`[paths, L]`, or `[paths, ...]` in the
//!   point's shape: one input and baseline per path), [`STEP_PATH`] (int64 `[rows]`: the path
//!   each row interpolates), [`STEP_ALPHA`] and [`STEP_ONE_MINUS_ALPHA`] (`[rows, 1, ...]`, of
//!   the input's rank: one alpha per row, and 1 - alpha computed in f64 by the caller), [`STEP_WEIGHTS`] (`[sums, rows]`), `cotangent` (`[rows, classes]`), and,
//!   when the model has inputs that are not attributed (ids, masks), [`STEP_FIXED_F32`] and
//!   [`STEP_FIXED_I64`] (`[paths, n]`: those inputs, packed the same way, held fixed along
//!   the path);
//! - outputs: [`STEP_SUMS`], `weights x grad` with the points' gradients packed like the
//!   input (`[sums, L]`), then [`STEP_ABS`], the sum of |grad| of each row (`[rows, 1]`), then
//!   [`STEP_GRADS`], each row's packed gradient (`[rows, L]`), then the original outputs
//!   (`[rows, classes]`: the scores along the path).
//!
//! Which of the sums and the rows' gradients a run asks for is a matter of size: the weights
//! are `sums x rows` values, the rows' gradients `rows x L`. One path of an image (2 sums per
//! target, L in the hundreds of thousands) sends its weights and gets back 2 sums; a thousand
//! tabular rows (L about 10, 2 sums per path) would need a weights matrix of paths x rows, so
//! such a run sends empty weights (`[0, rows]`) and asks for the rows' gradients, and the
//! caller sums each path's own rows.
//!
//! Row r evaluates the gradient at `(1 - alpha_r) * baseline_p + alpha_r * input_p` with
//! `p = ig_path[r]`, exactly the baseline at alpha 0 and exactly the input at 1; each point's
//! slice of that row is reshaped to the point's shape and takes its name, so the graph below
//! is unchanged. Several paths in one run (the instances of an ExplainBatch, the samples of
//! expected gradients, or the worker's batcher merging several Explains by the rules of
//! [`StepLayout::rules`]: src/model/batch.rs) stack their per-path inputs, offset their
//! `ig_path`s and lay their weights out block-diagonally. Every row-indexed tensor, `ig_path`
//! included, shares the cotangent's batch symbol, so ONNX Runtime keeps its fast layout
//! (docs/autodiff.md, "One batch symbol"). A batch thus sends the paths and a few numbers per
//! row, and gets back `sums` input-sized tensors (a handful, whatever the batch size) instead
//! of one per row: less data to copy, and on an accelerator the batch never leaves the device.

use crate::autodiff::builder::{attr_i, attr_ints};
use crate::autodiff::{grad_name, graph, COTANGENT};
use crate::model::{Merge, PathRules, TensorData, Values};
use crate::proto::onnx::tensor_shape_proto::dimension::Value as Dim;
use crate::proto::onnx::{
    type_proto, AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};

/// The inputs x, one per path, `[paths, L]` (or `[paths, ...]`: module docs).
pub const STEP_INPUT: &str = "ig_input";
/// The baselines x', one per path, `[paths, L]`.
pub const STEP_BASELINE: &str = "ig_baseline";
/// Which path each row interpolates, int64 `[rows]`.
pub const STEP_PATH: &str = "ig_path";
/// One alpha per row, `[rows, 1, ...]`.
pub const STEP_ALPHA: &str = "ig_alpha";
/// 1 - alpha per row, `[rows, 1, ...]`.
pub const STEP_ONE_MINUS_ALPHA: &str = "ig_one_minus_alpha";
/// The weight of each row in each sum, `[sums, rows]`.
pub const STEP_WEIGHTS: &str = "ig_weights";
/// Float inputs held fixed along the path, packed, `[paths, n]`.
pub const STEP_FIXED_F32: &str = "ig_fixed_f32";
/// Int64 inputs held fixed along the path (ids), packed, `[paths, n]`.
pub const STEP_FIXED_I64: &str = "ig_fixed_i64";
/// `STEP_WEIGHTS x grad`, `[sums, L]`.
pub const STEP_SUMS: &str = "ig_sums";
/// Sum of |grad| per row, `[rows, 1]`.
pub const STEP_ABS: &str = "ig_abs_sums";
/// Each row's gradient, the points packed like the input (`[rows, L]`): for runs of many
/// short paths, whose sums the caller makes itself (module docs).
pub const STEP_GRADS: &str = "ig_grads";
/// Every input a step model may have: the six above, the cotangent, and the fixed inputs.
const ALL_INPUTS: [&str; 9] = [
    STEP_INPUT,
    STEP_BASELINE,
    STEP_PATH,
    STEP_ALPHA,
    STEP_ONE_MINUS_ALPHA,
    STEP_WEIGHTS,
    COTANGENT,
    STEP_FIXED_F32,
    STEP_FIXED_I64,
];
/// The inputs of every step model: the six above and the cotangent.
pub const STEP_INPUTS: [&str; 7] = pick([0, 1, 2, 3, 4, 5, 6]);
/// With each combination of fixed inputs (the merge rules name them statically).
const INPUTS_F32: [&str; 8] = pick([0, 1, 2, 3, 4, 5, 6, 7]);
const INPUTS_I64: [&str; 8] = pick([0, 1, 2, 3, 4, 5, 6, 8]);
const INPUTS_BOTH: [&str; 9] = ALL_INPUTS;

/// The entries of [`ALL_INPUTS`] at `indices`.
const fn pick<const N: usize>(indices: [usize; N]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = ALL_INPUTS[indices[i]];
        i += 1;
    }
    out
}

const PATHS: [&str; 2] = [STEP_INPUT, STEP_BASELINE];
const PATHS_F32: [&str; 3] = [STEP_INPUT, STEP_BASELINE, STEP_FIXED_F32];
const PATHS_I64: [&str; 3] = [STEP_INPUT, STEP_BASELINE, STEP_FIXED_I64];
const PATHS_BOTH: [&str; 4] = [STEP_INPUT, STEP_BASELINE, STEP_FIXED_F32, STEP_FIXED_I64];

/// One tensor packed into a step model input: its name and shape without the batch axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<i64>,
}

impl Slot {
    /// Its values per row, when its shape is known.
    pub fn values(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| (d >= 0).then(|| acc * d as usize))
    }
}

/// How a step model packs the attributed tensors (points) and the inputs held fixed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLayout {
    /// The attributed tensors, in order, packed into [`STEP_INPUT`] and [`STEP_BASELINE`].
    pub points: Vec<Slot>,
    /// Graph inputs held fixed along the path, packed by element type.
    pub fixed_f32: Vec<Slot>,
    pub fixed_i64: Vec<Slot>,
    /// Fixed inputs of one type whose shapes have unknown dimensions but are all the same
    /// (a text's ids, mask and token types, `[sequence]`) are stacked, not packed flat: that
    /// input is `[paths, slots, shape...]` ([`StepLayout::fixed_shape`]).
    pub stacked_f32: bool,
    pub stacked_i64: bool,
}

impl StepLayout {
    /// Whether the points are packed flat (several), or the one point keeps its shape.
    pub fn packed(&self) -> bool {
        self.points.len() > 1
    }

    /// The shape of one path's [`STEP_INPUT`] (without the paths axis) for points of the given
    /// shapes (each without its batch axis).
    pub fn input_shape(&self, shapes: &[&[i64]]) -> Vec<i64> {
        match shapes {
            [one] if !self.packed() => one.to_vec(),
            many => vec![many.iter().map(|s| s.iter().product::<i64>()).sum()],
        }
    }

    /// The shape of one path's fixed input of a type (without the paths axis) whose slots'
    /// tensors have `shapes`: `[values]` packed flat, or `[slots, shape...]` stacked.
    pub fn fixed_shape(&self, int64: bool, shapes: &[&[i64]]) -> Vec<i64> {
        let stacked = if int64 {
            self.stacked_i64
        } else {
            self.stacked_f32
        };
        match (stacked, shapes.first()) {
            (true, Some(first)) => std::iter::once(shapes.len() as i64)
                .chain(first.iter().copied())
                .collect(),
            _ => vec![shapes.iter().map(|s| s.iter().product::<i64>()).sum()],
        }
    }

    /// How the worker's batcher merges several step jobs into one run (module docs).
    pub fn rules(&self) -> PathRules {
        let (inputs, per_path): (&'static [&'static str], &'static [&'static str]) =
            match (self.fixed_f32.is_empty(), self.fixed_i64.is_empty()) {
                (true, true) => (&STEP_INPUTS, &PATHS),
                (false, true) => (&INPUTS_F32, &PATHS_F32),
                (true, false) => (&INPUTS_I64, &PATHS_I64),
                (false, false) => (&INPUTS_BOTH, &PATHS_BOTH),
            };
        PathRules {
            inputs,
            per_path,
            path_index: STEP_PATH,
            per_row: &[COTANGENT, STEP_ALPHA, STEP_ONE_MINUS_ALPHA],
            weights: STEP_WEIGHTS,
            sums: STEP_SUMS,
        }
    }

    /// The inputs a step worker keeps bound across runs while they are unchanged: the paths.
    pub fn keep_bound(&self) -> &'static [&'static str] {
        self.rules().per_path
    }
}

/// One path's step run: `rows = alphas x targets`, row r at alpha `r / t` with target
/// `r % t`'s one-hot cotangent (the order [`crate::ig::Integrator`] expects).
pub struct StepRun<'a> {
    /// The input x, the points packed (flat, [`StepLayout::points`] in order).
    pub input: &'a [f32],
    /// Its shape without the paths axis ([`StepLayout::input_shape`]).
    pub shape: &'a [i64],
    /// The baseline x', as long as `input`.
    pub baseline: &'a [f32],
    /// The inputs held fixed, packed ([`StepLayout::fixed_f32`], [`StepLayout::fixed_i64`]),
    /// and their shapes without the paths axis ([`StepLayout::fixed_shape`]; empty: flat).
    pub fixed_f32: &'a [f32],
    pub fixed_i64: &'a [i64],
    pub fixed_f32_shape: &'a [i64],
    pub fixed_i64_shape: &'a [i64],
    pub alphas: &'a [f64],
    /// The target class of each row within an alpha.
    pub targets: &'a [usize],
    /// The output's classes (the cotangent's width).
    pub classes: usize,
    /// `[sums, rows]`, row-major (e.g. [`crate::ig::Integrator::sum_weights`]).
    pub weights: Vec<f32>,
}

impl StepRun<'_> {
    pub fn rows(&self) -> usize {
        self.alphas.len() * self.targets.len()
    }

    /// The step model's inputs for this run, as one path (`ig_path` all zeros).
    pub fn inputs(self, layout: &StepLayout) -> Vec<(String, TensorData)> {
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
        let fixed = |len: usize, shape: &[i64]| match shape {
            [] => vec![1, len as i64],
            given => std::iter::once(1).chain(given.iter().copied()).collect(),
        };
        let single: Vec<i64> = std::iter::once(1)
            .chain(self.shape.iter().copied())
            .collect();
        let mut alpha_shape = vec![1i64; single.len()];
        alpha_shape[0] = rows as i64;
        let sums = self.weights.len() / rows.max(1);
        let mut inputs = vec![
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
        ];
        if !layout.fixed_f32.is_empty() {
            inputs.push((
                STEP_FIXED_F32.into(),
                TensorData::f32(
                    fixed(self.fixed_f32.len(), self.fixed_f32_shape),
                    self.fixed_f32.to_vec(),
                ),
            ));
        }
        if !layout.fixed_i64.is_empty() {
            inputs.push((
                STEP_FIXED_I64.into(),
                TensorData {
                    shape: fixed(self.fixed_i64.len(), self.fixed_i64_shape),
                    values: Values::I64(self.fixed_i64.to_vec()),
                },
            ));
        }
        inputs
    }
}

/// Several paths' runs as one: stacked paths, offset path indices, block-diagonal weights (the
/// worker batcher's arithmetic). Their outputs come apart again with [`Merge::split`].
pub fn merge_runs(
    layout: &StepLayout,
    runs: &[Vec<(String, TensorData)>],
) -> Vec<(String, TensorData)> {
    let jobs: Vec<&[(String, TensorData)]> = runs.iter().map(|r| r.as_slice()).collect();
    Merge::Paths(layout.rules()).merge(&jobs)
}

/// Why a gradient model does not fit the autodiff contract the step model builds on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepModelError {
    #[error("the gradient model has no graph")]
    NoGraph,
    #[error("the gradient model's first outputs are not the gradients {0:?}")]
    NoGrad(Vec<String>),
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
    #[error(
        "input {name:?} is {dtype}; only float32 and int64 inputs can be held fixed along the path"
    )]
    Unfeedable { name: String, dtype: i32 },
    #[error("{0:?} has a shape with unknown dimensions besides the batch, and shares its packed input with other tensors; Explain needs their sizes")]
    Dynamic(String),
}

/// Wraps `grad` (a gradient model w.r.t. the tensors `points`, in order) into the step model
/// described in the module docs.
pub fn build_step_model(
    grad: &ModelProto,
    points: &[String],
) -> Result<(ModelProto, StepLayout), StepModelError> {
    let mut model = grad.clone();
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .max()
        .unwrap_or(0);
    let g = model.graph.as_mut().ok_or(StepModelError::NoGraph)?;
    let grads: Vec<String> = (0..points.len()).map(grad_name).collect();
    if g.output.len() < grads.len()
        || g.output
            .iter()
            .zip(&grads)
            .any(|(o, want)| o.name() != want)
    {
        return Err(StepModelError::NoGrad(grads));
    }
    // The step model's own names (the cotangent is the gradient model's already).
    let own_inputs = INPUTS_BOTH.iter().filter(|n| **n != COTANGENT);
    for &reserved in own_inputs.chain(&[STEP_SUMS, STEP_ABS, STEP_GRADS]) {
        if g.input
            .iter()
            .chain(&g.output)
            .any(|v| v.name() == reserved)
        {
            return Err(StepModelError::Reserved(reserved));
        }
    }
    let cotangent = g
        .input
        .iter()
        .find(|v| v.name() == COTANGENT)
        .and_then(tensor_type)
        .ok_or(StepModelError::NoCotangent)?;
    // Rows share the cotangent's batch dimension (one symbol: see docs/autodiff.md).
    let rows = cotangent.1.first().cloned().unwrap_or(Dim::DimValue(-1));

    let mut layout = StepLayout {
        points: Vec::new(),
        fixed_f32: Vec::new(),
        fixed_i64: Vec::new(),
        stacked_f32: false,
        stacked_i64: false,
    };
    let mut moved = Vec::new();
    for point in points {
        let at = g
            .input
            .iter()
            .position(|v| v.name() == point)
            .ok_or_else(|| StepModelError::NoInput(point.clone()))?;
        let declared = g.input.remove(at);
        let (dtype, dims) =
            tensor_type(&declared).ok_or_else(|| StepModelError::Untyped(point.clone()))?;
        if dtype != graph::FLOAT || dims.is_empty() {
            return Err(StepModelError::NotFloatBatch(point.clone()));
        }
        layout.points.push(slot(point, &dims));
        moved.push(declared);
    }
    // Every other input a node reads is held fixed; one that nothing reads any more (ids whose
    // lookup is now an input) goes.
    let read: std::collections::HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(|i| i.as_str()))
        .chain(g.output.iter().map(|o| o.name()))
        .collect();
    let initializers: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name()).collect();
    let mut kept = Vec::new();
    for input in std::mem::take(&mut g.input) {
        let name = input.name().to_string();
        if name == COTANGENT || initializers.contains(name.as_str()) {
            kept.push(input);
            continue;
        }
        if !read.contains(name.as_str()) {
            continue;
        }
        let (dtype, dims) =
            tensor_type(&input).ok_or_else(|| StepModelError::Untyped(name.clone()))?;
        match dtype {
            graph::FLOAT => layout.fixed_f32.push(slot(&name, &dims)),
            graph::INT64 => layout.fixed_i64.push(slot(&name, &dims)),
            other => return Err(StepModelError::Unfeedable { name, dtype: other }),
        }
        moved.push(input);
    }
    g.input = kept;
    // Packed tensors need their sizes: known, or for a lone one at most one unknown dimension.
    // Fixed inputs of one shape with unknown dimensions are stacked instead.
    let unknown = |s: &Slot| s.shape.iter().filter(|&&d| d < 0).count();
    let stackable = |group: &[Slot]| {
        group.len() > 1
            && group.iter().any(|s| unknown(s) > 0)
            && group.iter().all(|s| s.shape == group[0].shape)
    };
    layout.stacked_f32 = stackable(&layout.fixed_f32);
    layout.stacked_i64 = stackable(&layout.fixed_i64);
    for (group, packed) in [
        (&layout.points, layout.packed()),
        (&layout.fixed_f32, !layout.stacked_f32),
        (&layout.fixed_i64, !layout.stacked_i64),
    ] {
        let bad = match group.len() {
            1 => group.iter().find(|s| packed && unknown(s) > 1),
            _ => group.iter().find(|s| packed && unknown(s) > 0),
        };
        if let Some(dynamic) = bad {
            return Err(StepModelError::Dynamic(dynamic.name.clone()));
        }
    }
    // The packed tensors keep their types as inner values of the same names.
    g.value_info.extend(moved.iter().cloned());

    let one = Dim::DimValue(1);
    let per_path = |group: &[Slot]| {
        let len = group.iter().map(|s| s.values()).sum::<Option<usize>>();
        vec![
            Dim::DimParam("paths".into()),
            len.map_or(Dim::DimParam("values".into()), |l| Dim::DimValue(l as i64)),
        ]
    };
    let sums = Dim::DimParam("sums".into());
    // A lone point keeps its declared shape, with a `paths` batch.
    let point_input = match (layout.packed(), moved.first().and_then(tensor_type)) {
        (false, Some((_, mut dims))) => {
            dims[0] = Dim::DimParam("paths".into());
            dims
        }
        _ => per_path(&layout.points),
    };
    let mut alpha = vec![one.clone(); point_input.len()];
    alpha[0] = rows.clone();
    g.input.extend([
        typed(STEP_INPUT, &point_input),
        typed(STEP_BASELINE, &point_input),
        typed_as(STEP_PATH, graph::INT64, std::slice::from_ref(&rows)),
        typed(STEP_ALPHA, &alpha),
        typed(STEP_ONE_MINUS_ALPHA, &alpha),
        typed(STEP_WEIGHTS, &[sums.clone(), rows.clone()]),
    ]);
    let mut nodes = Nodes::default();
    nodes.gather(STEP_INPUT, "ig/inputs");
    nodes.gather(STEP_BASELINE, "ig/baselines");
    nodes.push(node(
        "Mul",
        &[STEP_ALPHA, "ig/inputs"],
        "ig/to_input",
        vec![],
    ));
    nodes.push(node(
        "Mul",
        &[STEP_ONE_MINUS_ALPHA, "ig/baselines"],
        "ig/to_baseline",
        vec![],
    ));
    if layout.packed() {
        nodes.push(node(
            "Add",
            &["ig/to_baseline", "ig/to_input"],
            "ig/rows",
            vec![],
        ));
        nodes.unpack("ig/rows", &layout.points);
    } else {
        // The interpolated rows take the point's name, so the graph below is unchanged.
        let point = &layout.points[0].name;
        nodes.push(node(
            "Add",
            &["ig/to_baseline", "ig/to_input"],
            point,
            vec![],
        ));
    }
    for (group, input, elem, stacked) in [
        (
            &layout.fixed_f32,
            STEP_FIXED_F32,
            graph::FLOAT,
            layout.stacked_f32,
        ),
        (
            &layout.fixed_i64,
            STEP_FIXED_I64,
            graph::INT64,
            layout.stacked_i64,
        ),
    ] {
        if group.is_empty() {
            continue;
        }
        let rows_of = format!("{input}/rows");
        if stacked {
            // [paths, slots, shape...]: the unknown dimensions get names of their own.
            let dims: Vec<Dim> = [
                Dim::DimParam("paths".into()),
                Dim::DimValue(group.len() as i64),
            ]
            .into_iter()
            .chain(
                group[0]
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(d, &size)| match size {
                        s if s >= 0 => Dim::DimValue(s),
                        _ => Dim::DimParam(format!("{input}_{d}")),
                    }),
            )
            .collect();
            g.input.push(typed_as(input, elem, &dims));
            nodes.gather(input, &rows_of);
            nodes.unstack(&rows_of, group);
        } else {
            g.input.push(typed_as(input, elem, &per_path(group)));
            nodes.gather(input, &rows_of);
            nodes.unpack(&rows_of, group);
        }
    }
    let interpolation = std::mem::take(&mut nodes.nodes);
    // Each point's gradient flattened, with 0 for the batch axis so it keeps the rows'
    // symbol, then packed like the input.
    let mut flats = Vec::new();
    for (i, (grad, point)) in grads.iter().zip(&layout.points).enumerate() {
        let shape = format!("ig/flat_shape_{i}");
        let len = point.values().map_or(-1, |l| l as i64);
        nodes.initializers.push(int64s(&shape, &[0, len]));
        let flat = format!("ig/flat_{i}");
        nodes.push(node("Reshape", &[grad, &shape], &flat, vec![]));
        flats.push(flat);
    }
    let flat = if let [one] = flats.as_slice() {
        one.clone()
    } else {
        let refs: Vec<&str> = flats.iter().map(|f| f.as_str()).collect();
        nodes.push(node("Concat", &refs, "ig/flat", vec![attr_i("axis", 1)]));
        "ig/flat".to_string()
    };
    nodes.push(node("MatMul", &[STEP_WEIGHTS, &flat], STEP_SUMS, vec![]));
    nodes.push(node("Identity", &[&flat], STEP_GRADS, vec![]));
    nodes.push(node("Abs", &[&flat], "ig/abs", vec![]));
    if opset >= 13 {
        nodes.initializers.push(int64s("ig/axis1", &[1]));
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
    g.node = interpolation;
    g.node.extend(body);
    g.node.append(&mut nodes.nodes);
    g.initializer.append(&mut nodes.initializers);

    let len = layout
        .points
        .iter()
        .map(|s| s.values())
        .sum::<Option<usize>>();
    let flat_len = len.map_or(Dim::DimParam("values".into()), |l| Dim::DimValue(l as i64));
    let mut outputs = vec![
        typed(STEP_SUMS, &[sums, flat_len.clone()]),
        typed(STEP_ABS, &[rows.clone(), one]),
        typed(STEP_GRADS, &[rows, flat_len]),
    ];
    outputs.extend(g.output.drain(grads.len()..));
    g.output = outputs;
    Ok((model, layout))
}

/// A packed tensor's slot from its declared dimensions (the first is the batch).
fn slot(name: &str, dims: &[Dim]) -> Slot {
    Slot {
        name: name.to_string(),
        shape: dims[1.min(dims.len())..]
            .iter()
            .map(|d| match d {
                Dim::DimValue(v) if *v > 0 => *v,
                _ => -1,
            })
            .collect(),
    }
}

/// The nodes and constants the step model adds.
#[derive(Default)]
struct Nodes {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Nodes {
    fn push(&mut self, node: NodeProto) {
        self.nodes.push(node);
    }

    /// Each row's path of a `[paths, n]` input: `[rows, n]`.
    fn gather(&mut self, input: &str, output: &str) {
        self.push(node(
            "Gather",
            &[input, STEP_PATH],
            output,
            vec![attr_i("axis", 0)],
        ));
    }

    /// `[rows, slots, shape...]` taken apart on axis 1, each slot's `[rows, shape...]` under
    /// its name.
    fn unstack(&mut self, stacked: &str, slots: &[Slot]) {
        for (i, slot) in slots.iter().enumerate() {
            let index = format!("ig/index/{}", slot.name);
            self.initializers.push(TensorProto {
                name: Some(index.clone()),
                dims: Vec::new(),
                data_type: Some(graph::INT64),
                int64_data: vec![i as i64],
                ..Default::default()
            });
            self.push(node(
                "Gather",
                &[stacked, &index],
                &slot.name,
                vec![attr_i("axis", 1)],
            ));
        }
    }

    /// `[rows, n]` cut into the slots, each reshaped to `[rows, shape...]` under its name.
    fn unpack(&mut self, packed: &str, slots: &[Slot]) {
        let mut offset = 0i64;
        for slot in slots {
            let shape_name = format!("ig/shape/{}", slot.name);
            self.initializers.push(int64s(
                &shape_name,
                &std::iter::once(0)
                    .chain(slot.shape.iter().copied())
                    .collect::<Vec<_>>(),
            ));
            let source = if slots.len() == 1 {
                packed.to_string()
            } else {
                let len = slot
                    .values()
                    .expect("checked: packed slots have known sizes")
                    as i64;
                let (starts, ends, axes) = (
                    format!("ig/starts/{}", slot.name),
                    format!("ig/ends/{}", slot.name),
                    format!("ig/axes/{}", slot.name),
                );
                self.initializers.push(int64s(&starts, &[offset]));
                self.initializers.push(int64s(&ends, &[offset + len]));
                self.initializers.push(int64s(&axes, &[1]));
                let sliced = format!("ig/slice/{}", slot.name);
                self.push(node(
                    "Slice",
                    &[packed, &starts, &ends, &axes],
                    &sliced,
                    vec![],
                ));
                offset += len;
                sliced
            };
            self.push(node("Reshape", &[&source, &shape_name], &slot.name, vec![]));
        }
    }
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
