//! Test support for the autodiff tests: tiny ONNX models built in code, running models in ONNX
//! Runtime, and the numerical gradient check (central finite differences through ONNX Runtime).
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::HashMap;

use integrad::autodiff::{build_gradient, GradOptions, Objective, COTANGENT, GRAD};
use integrad::proto::onnx::{
    attribute_proto, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};
use prost::Message;

pub const F32: i32 = 1;
pub const F64: i32 = 11;
pub const I64: i32 = 7;

/// A tensor for tests: values as f64 whatever the element type.
#[derive(Debug, Clone)]
pub struct T {
    pub dtype: i32,
    pub shape: Vec<i64>,
    pub data: Vec<f64>,
}

impl T {
    pub fn new(dtype: i32, shape: &[i64], data: Vec<f64>) -> Self {
        assert_eq!(shape.iter().product::<i64>() as usize, data.len());
        Self {
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }
    pub fn random(dtype: i32, shape: &[i64], rng: &mut Rng) -> Self {
        let n = shape.iter().product::<i64>() as usize;
        Self::new(
            dtype,
            shape,
            (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect(),
        )
    }
    /// Distinct values at least `gap` apart (a shuffled grid), for max-like ops whose
    /// finite differences must not cross a tie.
    pub fn distinct(dtype: i32, shape: &[i64], gap: f64, rng: &mut Rng) -> Self {
        let n = shape.iter().product::<i64>() as usize;
        let mut v: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0) * gap).collect();
        for i in (1..n).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        Self::new(dtype, shape, v)
    }
    pub fn ints(shape: &[i64], data: &[i64]) -> Self {
        Self::new(I64, shape, data.iter().map(|v| *v as f64).collect())
    }
}

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

pub fn env() -> std::sync::Arc<ort::environment::Environment> {
    integrad::runtime::environment(&integrad::runtime::RuntimeOptions::default())
        .expect("ONNX Runtime")
}

/// Attribute helpers.
pub fn ai(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}
pub fn af(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}
pub fn ais(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}
pub fn astr(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn value_info(name: &str, dtype: i32, shape: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype),
                shape: Some(TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: Some(if *d < 0 {
                                tensor_shape_proto::dimension::Value::DimParam("batch".into())
                            } else {
                                tensor_shape_proto::dimension::Value::DimValue(*d)
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn tensor_proto(name: &str, t: &T) -> TensorProto {
    let raw: Vec<u8> = match t.dtype {
        F64 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        I64 => t
            .data
            .iter()
            .flat_map(|v| (*v as i64).to_le_bytes())
            .collect(),
        _ => t
            .data
            .iter()
            .flat_map(|v| (*v as f32).to_le_bytes())
            .collect(),
    };
    TensorProto {
        name: Some(name.into()),
        data_type: Some(t.dtype),
        dims: t.shape.clone(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A model built in code. Shapes use -1 for the symbolic `batch` dimension.
pub struct Tiny {
    graph: GraphProto,
    opset: i64,
}

impl Tiny {
    pub fn new(opset: i64) -> Self {
        Self {
            graph: GraphProto {
                name: Some("tiny".into()),
                ..Default::default()
            },
            opset,
        }
    }
    pub fn input(mut self, name: &str, dtype: i32, shape: &[i64]) -> Self {
        self.graph.input.push(value_info(name, dtype, shape));
        self
    }
    pub fn init(mut self, name: &str, t: &T) -> Self {
        self.graph.initializer.push(tensor_proto(name, t));
        self
    }
    pub fn node(
        mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> Self {
        let n = self.graph.node.len();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(format!("{op}_{n}")),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        self
    }
    /// An output with an unknown shape (ONNX Runtime infers it).
    pub fn output(mut self, name: &str, dtype: i32) -> Self {
        self.graph.output.push(ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(dtype),
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
        self
    }
    pub fn build(self) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("integrad-tests".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

/// Runs `model` on `inputs` in a fresh session; returns every output by name.
pub fn run(model: &ModelProto, inputs: &[(&str, &T)]) -> HashMap<String, T> {
    let env = env();
    let mut session = Session::builder(&env)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .commit_from_memory(&model.encode_to_vec())
        .unwrap_or_else(|e| panic!("ONNX Runtime refused the model: {e}"));
    run_session(&mut session, inputs)
}

/// What a numerical check measured.
#[derive(Debug)]
pub struct Check {
    pub max_abs_err: f64,
    pub max_abs_fd: f64,
}

/// Checks d sum(c * Y) / d wrt from the gradient model against central finite differences
/// through ONNX Runtime, for a random cotangent c. `inputs` are all the model's inputs; `wrt`
/// is one of them. Asserts `max |grad - fd| <= tol * max(1, max |fd|)`.
pub fn check(model: &ModelProto, wrt: &str, inputs: &[(&str, &T)], eps: f64, tol: f64) -> Check {
    check_with(model, wrt, inputs, eps, tol, Objective::Logit)
}

pub fn check_with(
    model: &ModelProto,
    wrt: &str,
    inputs: &[(&str, &T)],
    eps: f64,
    tol: f64,
    objective: Objective,
) -> Check {
    let grad = build_gradient(
        model,
        &GradOptions {
            wrt: vec![wrt.into()],
            of: None,
            objective,
        },
    )
    .unwrap_or_else(|e| panic!("build_gradient: {e}"));
    let out_name = model.graph.as_ref().unwrap().output[0].name().to_string();
    let fwd = run(model, inputs);
    let y = &fwd[&out_name];
    let mut rng = Rng::new(7);
    let c = T::random(y.dtype, &y.shape, &mut rng);
    let mut gin: Vec<(&str, &T)> = inputs.to_vec();
    gin.push((COTANGENT, &c));
    let gout = run(&grad.model, &gin);
    let g = &gout[GRAD];
    // The gradient model also returns the forward outputs unchanged.
    let y2 = &gout[&out_name];
    assert_eq!(y2.shape, y.shape);
    for (a, b) in y.data.iter().zip(&y2.data) {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
            "forward output changed: {a} vs {b}"
        );
    }
    let x = inputs.iter().find(|(n, _)| *n == wrt).unwrap().1;
    assert_eq!(g.shape, x.shape, "grad has the shape of {wrt}");
    let objective_value = |out: &T| -> f64 {
        match objective {
            Objective::Logit => out.data.iter().zip(&c.data).map(|(a, b)| a * b).sum(),
            Objective::Probability => {
                let last = *out.shape.last().unwrap() as usize;
                let mut total = 0.0;
                for (row, crow) in out.data.chunks(last).zip(c.data.chunks(last)) {
                    let m = row.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    total += e.iter().zip(crow).map(|(p, c)| p / s * c).sum::<f64>();
                }
                total
            }
            Objective::Sigmoid => out
                .data
                .iter()
                .zip(&c.data)
                .map(|(y, c)| c / (1.0 + (-y).exp()))
                .sum(),
        }
    };
    let mut fd = Vec::with_capacity(x.data.len());
    for i in 0..x.data.len() {
        let mut f = [0.0; 2];
        for (k, sign) in [1.0, -1.0].iter().enumerate() {
            let mut xp = x.clone();
            xp.data[i] += sign * eps;
            let ins: Vec<(&str, &T)> = inputs
                .iter()
                .map(|(n, t)| if *n == wrt { (*n, &xp) } else { (*n, *t) })
                .collect();
            let out = run_cached(model, &ins);
            f[k] = objective_value(&out[&out_name]);
        }
        fd.push((f[0] - f[1]) / (2.0 * eps));
    }
    let max_abs_fd = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let max_abs_err = fd
        .iter()
        .zip(&g.data)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        max_abs_err <= tol * max_abs_fd.max(1.0),
        "gradient w.r.t. {wrt} differs from finite differences: max |err| {max_abs_err:e}, \
         max |fd| {max_abs_fd:e}, tol {tol:e}\n grad {:?}\n fd   {:?}",
        &g.data[..g.data.len().min(12)],
        &fd[..fd.len().min(12)]
    );
    Check {
        max_abs_err,
        max_abs_fd,
    }
}

thread_local! {
    static SESSIONS: std::cell::RefCell<HashMap<Vec<u8>, Session>> = std::cell::RefCell::new(HashMap::new());
}

/// `run`, keeping one session per model (finite differences run the same model many times).
pub fn run_cached(model: &ModelProto, inputs: &[(&str, &T)]) -> HashMap<String, T> {
    let bytes = model.encode_to_vec();
    SESSIONS.with(|s| {
        let mut map = s.borrow_mut();
        if !map.contains_key(&bytes) {
            let env = env();
            let session = Session::builder(&env)
                .unwrap()
                .with_optimization_level(GraphOptimizationLevel::All)
                .unwrap()
                .with_intra_threads(1)
                .unwrap()
                .commit_from_memory(&bytes)
                .unwrap();
            map.insert(bytes.clone(), session);
        }
        let session = map.get_mut(&bytes).unwrap();
        run_session(session, inputs)
    })
}

fn run_session(session: &mut Session, inputs: &[(&str, &T)]) -> HashMap<String, T> {
    let values: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = inputs
        .iter()
        .map(|(name, t)| {
            let v: SessionInputValue = match t.dtype {
                F64 => Tensor::from_array((t.shape.clone(), t.data.clone()))
                    .unwrap()
                    .into(),
                I64 => Tensor::from_array((
                    t.shape.clone(),
                    t.data.iter().map(|v| *v as i64).collect::<Vec<_>>(),
                ))
                .unwrap()
                .into(),
                _ => Tensor::from_array((
                    t.shape.clone(),
                    t.data.iter().map(|v| *v as f32).collect::<Vec<_>>(),
                ))
                .unwrap()
                .into(),
            };
            (Cow::Owned(name.to_string()), v)
        })
        .collect();
    let out = session
        .run(values)
        .unwrap_or_else(|e| panic!("run failed: {e}"));
    let mut result = HashMap::new();
    for (name, v) in out.iter() {
        let ValueType::Tensor { ty, .. } = v.dtype() else {
            continue;
        };
        let t = match ty {
            TensorElementType::Float64 => {
                let (s, d) = v.try_extract_tensor::<f64>().unwrap();
                T::new(F64, s, d.to_vec())
            }
            TensorElementType::Float32 => {
                let (s, d) = v.try_extract_tensor::<f32>().unwrap();
                T::new(F32, s, d.iter().map(|x| *x as f64).collect())
            }
            TensorElementType::Int64 => {
                let (s, d) = v.try_extract_tensor::<i64>().unwrap();
                T::new(I64, s, d.iter().map(|x| *x as f64).collect())
            }
            _ => continue,
        };
        result.insert(name.to_string(), t);
    }
    result
}

/// Finite-difference settings. float64: eps 1e-6 gives truncation error ~eps^2 and rounding
/// error ~1e-16/eps, both far below 1e-6 relative. float32 (ops ONNX Runtime only has in
/// float32): eps 1e-2 keeps the rounding error (~1e-7 |f| / eps) near 1e-5 |f|; piecewise-linear
/// ops (conv, pools) have no truncation error, smooth ones ~eps^2 = 1e-4, hence 2e-3 relative.
pub const F64_EPS: f64 = 1e-6;
pub const F64_TOL: f64 = 1e-6;
pub const F32_EPS: f64 = 1e-2;
pub const F32_TOL: f64 = 2e-3;
