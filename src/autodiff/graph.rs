//! What the builder knows about the forward graph: every tensor's element type and shape, which
//! dimensions are dynamic, and the values of constant tensors (those that do not depend on any
//! graph input, such as the pad amounts EfficientNet computes with small subgraphs).
//!
//! NOTE: rather than re-implementing ONNX shape inference for every op, the forward graph is
//! run once by ONNX Runtime (the probe) with every intermediate tensor as an output, twice
//! over: with each symbolic dimension of the inputs set to 2, then to 3. A dimension that
//! changes between the two runs is dynamic (`DYNAMIC`); every other is fixed. Constant
//! tensors have the same value in both runs; their values are read from the first.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use prost::Message;

use super::AutodiffError;
use crate::proto::onnx::{
    tensor_proto, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto,
    NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// A dimension whose size follows the inputs' symbolic dimensions (e.g. the batch).
pub const DYNAMIC: i64 = -1;

pub const FLOAT: i32 = tensor_proto::DataType::Float as i32;
pub const DOUBLE: i32 = tensor_proto::DataType::Double as i32;
pub const FLOAT16: i32 = tensor_proto::DataType::Float16 as i32;
pub const BFLOAT16: i32 = tensor_proto::DataType::Bfloat16 as i32;
pub const INT64: i32 = tensor_proto::DataType::Int64 as i32;
pub const INT32: i32 = tensor_proto::DataType::Int32 as i32;
pub const BOOL: i32 = tensor_proto::DataType::Bool as i32;

pub fn is_float(dtype: i32) -> bool {
    matches!(dtype, FLOAT | DOUBLE | FLOAT16 | BFLOAT16)
}

/// The values of a constant tensor (integers as i64, floats as f64).
#[derive(Debug, Clone, PartialEq)]
pub enum ConstValue {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

impl ConstValue {
    pub fn ints(&self) -> Vec<i64> {
        match self {
            ConstValue::Int(v) => v.clone(),
            ConstValue::Float(v) => v.iter().map(|x| *x as i64).collect(),
        }
    }
    pub fn floats(&self) -> Vec<f64> {
        match self {
            ConstValue::Int(v) => v.iter().map(|x| *x as f64).collect(),
            ConstValue::Float(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// ONNX element type (`TensorProto.DataType`).
    pub dtype: i32,
    /// Sizes; `DYNAMIC` where the size follows the inputs' symbolic dimensions.
    pub shape: Vec<i64>,
    /// The value, for small constant tensors.
    pub value: Option<Arc<ConstValue>>,
}

impl TensorInfo {
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// The analysed forward graph.
#[derive(Debug)]
pub struct ForwardGraph {
    pub infos: HashMap<String, TensorInfo>,
    /// Graph inputs that are not initializers, in order.
    pub runtime_inputs: Vec<String>,
    /// Tensors that do not depend on any runtime input.
    pub constants: HashSet<String>,
    pub opset: i64,
    /// The node producing each tensor.
    pub producers: HashMap<String, NodeProto>,
    /// How many times each tensor is used: as a node input (once per occurrence) or as a
    /// graph output.
    pub uses: HashMap<String, usize>,
}

/// Constants with more elements than this keep no value (rules only need small ones: axes,
/// pads, shapes, clip bounds).
const MAX_CONST_VALUES: usize = 1 << 16;

impl ForwardGraph {
    pub fn analyse(model: &ModelProto) -> Result<Self, AutodiffError> {
        let graph = model.graph.as_ref().ok_or(AutodiffError::NoGraph)?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map(|o| o.version())
            .unwrap_or(1);
        let init_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        let runtime_inputs: Vec<String> = graph
            .input
            .iter()
            .map(|i| i.name().to_string())
            .filter(|n| !init_names.contains(n.as_str()))
            .collect();

        let mut constants: HashSet<String> = init_names.iter().map(|s| s.to_string()).collect();
        for node in &graph.node {
            if node.op_type().starts_with("Random") {
                continue;
            }
            if node
                .input
                .iter()
                .all(|i| i.is_empty() || constants.contains(i))
            {
                constants.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
            }
        }

        let mut infos = HashMap::new();
        for t in &graph.initializer {
            let value = if constants.contains(t.name()) {
                tensor_values(t).map(Arc::new)
            } else {
                None
            };
            infos.insert(
                t.name().to_string(),
                TensorInfo {
                    dtype: t.data_type(),
                    shape: t.dims.clone(),
                    value,
                },
            );
        }
        let first = probe(model, 2)?;
        let second = probe(model, 3)?;
        for (name, (dtype, shape, value)) in first {
            let shape = match second.get(&name) {
                Some((_, other, _)) if other.len() == shape.len() => shape
                    .iter()
                    .zip(other)
                    .map(|(a, b)| if a == b { *a } else { DYNAMIC })
                    .collect(),
                _ => shape.iter().map(|_| DYNAMIC).collect(),
            };
            let value = value.filter(|_| constants.contains(&name)).map(Arc::new);
            infos.insert(
                name,
                TensorInfo {
                    dtype,
                    shape,
                    value,
                },
            );
        }
        let producers = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(move |o| (o.clone(), n.clone())))
            .collect();
        let mut uses: HashMap<String, usize> = HashMap::new();
        let used = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str));
        for name in used.chain(graph.output.iter().map(|o| o.name())) {
            if !name.is_empty() {
                *uses.entry(name.to_string()).or_default() += 1;
            }
        }
        Ok(Self {
            infos,
            runtime_inputs,
            constants,
            opset,
            producers,
            uses,
        })
    }
}

type Probed = HashMap<String, (i32, Vec<i64>, Option<ConstValue>)>;

/// Runs `model` with every tensor as an output and symbolic input dimensions set to `size`.
fn probe(model: &ModelProto, size: i64) -> Result<Probed, AutodiffError> {
    let err = |reason: String| AutodiffError::Probe { reason };
    let graph = model.graph.as_ref().ok_or(AutodiffError::NoGraph)?;
    let mut probe = model.clone();
    let g = probe.graph.as_mut().expect("checked");
    let mut seen: HashSet<String> = HashSet::new();
    let mut outputs = Vec::new();
    let init_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    for name in graph
        .input
        .iter()
        .map(|i| i.name())
        .filter(|n| !init_names.contains(n))
        .chain(
            graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
    {
        if name.is_empty() || !seen.insert(name.to_string()) {
            continue;
        }
        let declared = graph.output.iter().find(|o| o.name() == name).cloned();
        outputs.push(declared.unwrap_or_else(|| ValueInfoProto {
            name: Some(name.to_string()),
            ..Default::default()
        }));
    }
    g.output = outputs;
    let bytes = probe.encode_to_vec();

    let env = crate::runtime::environment(&crate::runtime::RuntimeOptions::default())
        .map_err(|e| err(e.to_string()))?;
    let mut session = open_session(&env, &bytes).map_err(|e| err(e.to_string()))?;

    let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::new();
    for input in graph
        .input
        .iter()
        .filter(|i| !init_names.contains(i.name()))
    {
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(err(format!("input {:?} is not a tensor", input.name())));
        };
        let shape: Vec<i64> = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => v,
                        _ => size,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let n: usize = shape.iter().product::<i64>() as usize;
        let value: SessionInputValue = match t.elem_type() {
            FLOAT => Tensor::from_array((shape, vec![0.5f32; n])).map(Into::into),
            DOUBLE => Tensor::from_array((shape, vec![0.5f64; n])).map(Into::into),
            INT64 => Tensor::from_array((shape, vec![0i64; n])).map(Into::into),
            INT32 => Tensor::from_array((shape, vec![0i32; n])).map(Into::into),
            BOOL => Tensor::from_array((shape, vec![false; n])).map(Into::into),
            other => {
                return Err(err(format!(
                    "input {:?} has element type {other}, which the probe cannot make",
                    input.name()
                )))
            }
        }
        .map_err(|e| err(e.to_string()))?;
        inputs.push((Cow::Owned(input.name().to_string()), value));
    }
    let result = session.run(inputs).map_err(|e| err(e.to_string()))?;
    let mut probed = HashMap::new();
    for (name, value) in result.iter() {
        if let Some(entry) = read_value(&value) {
            probed.insert(name.to_string(), entry);
        }
    }
    Ok(probed)
}

fn open_session(env: &ort::environment::Environment, bytes: &[u8]) -> ort::Result<Session> {
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Disable)?
        .with_intra_threads(1)?;
    builder.commit_from_memory(bytes)
}

fn read_value(value: &DynValue) -> Option<(i32, Vec<i64>, Option<ConstValue>)> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return None;
    };
    let shape: Vec<i64> = shape.iter().copied().collect();
    let n: usize = shape.iter().product::<i64>() as usize;
    let small = n <= MAX_CONST_VALUES;
    let (dtype, values) = match ty {
        TensorElementType::Float32 => (
            FLOAT,
            small
                .then(|| value.try_extract_tensor::<f32>().ok())
                .flatten()
                .map(|(_, d)| ConstValue::Float(d.iter().map(|x| *x as f64).collect())),
        ),
        TensorElementType::Float64 => (
            DOUBLE,
            small
                .then(|| value.try_extract_tensor::<f64>().ok())
                .flatten()
                .map(|(_, d)| ConstValue::Float(d.to_vec())),
        ),
        TensorElementType::Int64 => (
            INT64,
            small
                .then(|| value.try_extract_tensor::<i64>().ok())
                .flatten()
                .map(|(_, d)| ConstValue::Int(d.to_vec())),
        ),
        TensorElementType::Int32 => (
            INT32,
            small
                .then(|| value.try_extract_tensor::<i32>().ok())
                .flatten()
                .map(|(_, d)| ConstValue::Int(d.iter().map(|x| *x as i64).collect())),
        ),
        TensorElementType::Bool => (BOOL, None),
        TensorElementType::Float16 => (FLOAT16, None),
        TensorElementType::Bfloat16 => (BFLOAT16, None),
        TensorElementType::Uint8 => (tensor_proto::DataType::Uint8 as i32, None),
        TensorElementType::Int8 => (tensor_proto::DataType::Int8 as i32, None),
        _ => (0, None),
    };
    Some((dtype, shape, values))
}

/// The values of an initializer (integer and float types; raw or typed storage).
pub fn tensor_values(t: &TensorProto) -> Option<ConstValue> {
    let raw = t.raw_data.as_deref();
    let n: usize = t.dims.iter().product::<i64>() as usize;
    if n > MAX_CONST_VALUES {
        return None;
    }
    match t.data_type() {
        INT64 => Some(ConstValue::Int(match raw {
            Some(r) => r
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            None => t.int64_data.clone(),
        })),
        INT32 => Some(ConstValue::Int(match raw {
            Some(r) => r
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            None => t.int32_data.iter().map(|x| *x as i64).collect(),
        })),
        FLOAT => Some(ConstValue::Float(match raw {
            Some(r) => r
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            None => t.float_data.iter().map(|x| *x as f64).collect(),
        })),
        DOUBLE => Some(ConstValue::Float(match raw {
            Some(r) => r
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            None => t.double_data.clone(),
        })),
        _ => None,
    }
}

/// A tensor `ValueInfoProto`; dynamic dimensions get symbolic names (`batch` for the first).
pub fn value_info(name: &str, dtype: i32, shape: &[i64]) -> ValueInfoProto {
    let dims = shape
        .iter()
        .enumerate()
        .map(|(i, d)| tensor_shape_proto::Dimension {
            value: Some(if *d == DYNAMIC {
                tensor_shape_proto::dimension::Value::DimParam(if i == 0 {
                    "batch".to_string()
                } else {
                    format!("dim{i}")
                })
            } else {
                tensor_shape_proto::dimension::Value::DimValue(*d)
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The declared `ValueInfoProto` of a graph input or output, renamed.
pub fn declared_value_info(graph: &GraphProto, name: &str, rename: &str) -> Option<ValueInfoProto> {
    graph
        .input
        .iter()
        .chain(&graph.output)
        .chain(&graph.value_info)
        .find(|v| v.name() == name && v.r#type.is_some())
        .map(|v| ValueInfoProto {
            name: Some(rename.to_string()),
            ..v.clone()
        })
}

pub fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

pub fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).and_then(|a| a.i)
}

pub fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).and_then(|a| a.f)
}

pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

pub fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).and_then(|a| {
        a.s.as_ref()
            .map(|s| String::from_utf8_lossy(s).into_owned())
    })
}
