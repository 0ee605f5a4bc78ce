//! The backward graph under construction: fresh tensor names, emitted nodes and initializers,
//! gradient accumulation, and the helpers rules share (un-broadcasting, reshaping back).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::graph::{self, ForwardGraph, TensorInfo, DYNAMIC};
use crate::proto::onnx::{attribute_proto, AttributeProto, NodeProto, TensorProto};

pub struct Builder<'a> {
    pub fwd: &'a ForwardGraph,
    active: &'a HashSet<String>,
    grads: HashMap<String, Vec<String>>,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    counter: usize,
}

pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_proto::AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_proto::AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

pub fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_proto::AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}

/// A tensor of `dtype` (float types, int64) holding `values`.
pub fn tensor(name: &str, dtype: i32, dims: &[i64], values: &[f64]) -> TensorProto {
    let raw: Vec<u8> = match dtype {
        graph::DOUBLE => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        graph::INT64 => values
            .iter()
            .flat_map(|v| (*v as i64).to_le_bytes())
            .collect(),
        graph::FLOAT16 => values
            .iter()
            .flat_map(|v| f32_to_f16_bits(*v as f32).to_le_bytes())
            .collect(),
        graph::BFLOAT16 => values
            .iter()
            .flat_map(|v| (((*v as f32).to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        _ => values
            .iter()
            .flat_map(|v| (*v as f32).to_le_bytes())
            .collect(),
    };
    TensorProto {
        name: Some(name.to_string()),
        data_type: Some(dtype),
        dims: dims.to_vec(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn f32_to_f16_bits(x: f32) -> u16 {
    // Round-to-nearest conversion, enough for the few constants rules emit.
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = bits & 0x7f_ffff;
    if exp >= 31 {
        sign | 0x7c00
    } else if exp <= 0 {
        sign
    } else {
        // Adding (not or-ing) lets a rounding carry move into the exponent.
        sign | (((exp as u16) << 10) + ((mant + 0x1000) >> 13) as u16)
    }
}

impl<'a> Builder<'a> {
    pub fn new(fwd: &'a ForwardGraph, active: &'a HashSet<String>) -> Self {
        Self {
            fwd,
            active,
            grads: HashMap::new(),
            nodes: Vec::new(),
            inits: Vec::new(),
            counter: 0,
        }
    }

    /// What the probe learnt about a forward tensor.
    pub fn info(&self, name: &str) -> Result<&TensorInfo, String> {
        self.fwd
            .infos
            .get(name)
            .ok_or_else(|| format!("no shape known for tensor {name:?}"))
    }

    /// Whether `tensor` depends on the differentiated tensor (needs a gradient).
    pub fn is_active(&self, tensor: &str) -> bool {
        self.active.contains(tensor)
    }

    /// The forward node that produces `tensor`.
    pub fn producer(&self, tensor: &str) -> Option<&'a NodeProto> {
        self.fwd.producers.get(tensor)
    }

    /// How many times the forward graph uses `tensor` (node inputs and graph outputs).
    pub fn uses(&self, tensor: &str) -> usize {
        self.fwd.uses.get(tensor).copied().unwrap_or(0)
    }

    /// Whether input `i` of `node` exists and needs a gradient.
    pub fn wants(&self, node: &NodeProto, i: usize) -> bool {
        node.input
            .get(i)
            .is_some_and(|n| !n.is_empty() && self.active.contains(n))
    }

    /// The constant value of input `i` of `node`, if it is a (small) constant.
    pub fn const_input(&self, node: &NodeProto, i: usize) -> Option<graph::ConstValue> {
        let name = node.input.get(i).filter(|n| !n.is_empty())?;
        self.fwd.infos.get(name)?.value.as_deref().cloned()
    }

    fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("ad/{hint}_{}", self.counter);
            if !self.fwd.infos.contains_key(&name) {
                return name;
            }
        }
    }

    /// Emits one node with one output; returns the output's name.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(op_type, inputs, 1, attrs).remove(0)
    }

    /// Emits one node with `n` outputs.
    pub fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        n: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outputs: Vec<String> = (0..n).map(|_| self.fresh(op_type)).collect();
        let name = self.fresh(&format!("{op_type}_node"));
        let (inputs, attrs) = self.legacy_form(op_type, inputs, attrs);
        self.nodes.push(NodeProto {
            input: inputs,
            output: outputs.clone(),
            name: Some(name),
            op_type: Some(op_type.to_string()),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    /// Before opset 13, ReduceSum, Squeeze and Unsqueeze take `axes` and Split takes `split`
    /// as attributes: rules always pass them as (constant) inputs, rewritten here.
    fn legacy_form(
        &self,
        op_type: &str,
        inputs: &[&str],
        mut attrs: Vec<AttributeProto>,
    ) -> (Vec<String>, Vec<AttributeProto>) {
        let mut inputs: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
        let attr = match op_type {
            "ReduceSum" | "Squeeze" | "Unsqueeze" => "axes",
            "Split" => "split",
            _ => return (inputs, attrs),
        };
        if self.fwd.opset >= 13 || inputs.len() < 2 {
            return (inputs, attrs);
        }
        let values = self
            .inits
            .iter()
            .find(|t| t.name() == inputs[1])
            .and_then(graph::tensor_values);
        if let Some(v) = values {
            attrs.push(attr_ints(attr, &v.ints()));
            inputs.truncate(1);
        }
        (inputs, attrs)
    }

    pub fn identity_to(&mut self, src: &str, dst: &str) {
        let name = self.fresh("Identity_node");
        self.nodes.push(NodeProto {
            input: vec![src.to_string()],
            output: vec![dst.to_string()],
            name: Some(name),
            op_type: Some("Identity".to_string()),
            ..Default::default()
        });
    }

    /// A 1-D int64 initializer.
    pub fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh("const");
        let vals: Vec<f64> = values.iter().map(|v| *v as f64).collect();
        self.inits
            .push(tensor(&name, graph::INT64, &[values.len() as i64], &vals));
        name
    }

    /// An initializer of element type `dtype`.
    pub fn const_tensor(&mut self, dtype: i32, dims: &[i64], values: &[f64]) -> String {
        let name = self.fresh("const");
        self.inits.push(tensor(&name, dtype, dims, values));
        name
    }

    /// A scalar of element type `dtype`.
    pub fn scalar(&mut self, dtype: i32, v: f64) -> String {
        self.const_tensor(dtype, &[], &[v])
    }

    /// A scalar of the element type of forward tensor `like`.
    pub fn scalar_like(&mut self, like: &str, v: f64) -> Result<String, String> {
        let dtype = self.info(like)?.dtype;
        Ok(self.scalar(dtype, v))
    }

    /// Records one contribution to the gradient of `tensor`.
    pub fn add_grad(&mut self, tensor: &str, grad: String) {
        self.grads.entry(tensor.to_string()).or_default().push(grad);
    }

    /// The gradient of `tensor`: the sum of its contributions (a tensor feeding several nodes
    /// gets one from each), or `None` when nothing reached it.
    pub fn take_grad(&mut self, tensor: &str) -> Option<String> {
        let parts = self.grads.remove(tensor)?;
        match parts.len() {
            0 => None,
            1 => parts.into_iter().next(),
            _ => {
                let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                Some(self.op("Sum", &refs, vec![]))
            }
        }
    }

    /// The gradient of output 0, requiring that no other output got one.
    pub fn only_first<'d>(&self, dys: &'d [Option<String>]) -> Result<&'d str, String> {
        if dys.iter().skip(1).any(Option::is_some) {
            return Err("gradient through an output other than the first is not supported".into());
        }
        dys.first()
            .and_then(|d| d.as_deref())
            .ok_or_else(|| "no gradient reached output 0".to_string())
    }

    /// Sums the broadcast gradient `g` (shaped `g_shape`) back to the shape of `target`:
    /// leading axes that broadcasting added are summed away, axes where `target` has size 1
    /// and `g` does not are summed with keepdims.
    pub fn unbroadcast(
        &mut self,
        g: &str,
        g_shape: &[i64],
        target: &str,
    ) -> Result<String, String> {
        let t_shape = self.info(target)?.shape.clone();
        self.unbroadcast_to(g, g_shape, &t_shape)
    }

    pub fn unbroadcast_to(
        &mut self,
        g: &str,
        g_shape: &[i64],
        t_shape: &[i64],
    ) -> Result<String, String> {
        let (gr, tr) = (g_shape.len(), t_shape.len());
        if tr > gr {
            return Err(format!("cannot reduce a rank-{gr} gradient to rank {tr}"));
        }
        let lead = gr - tr;
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for i in 0..tr {
            let (gd, td) = (g_shape[lead + i], t_shape[i]);
            if td == 1 && gd != 1 {
                axes.push((lead + i) as i64);
            } else if td != gd && td != DYNAMIC && gd != DYNAMIC {
                return Err(format!(
                    "shapes {g_shape:?} and {t_shape:?} do not broadcast"
                ));
            }
        }
        if axes.is_empty() {
            return Ok(g.to_string());
        }
        let axes_t = self.const_i64(&axes);
        let summed = self.op("ReduceSum", &[g, &axes_t], vec![attr_i("keepdims", 1)]);
        if lead == 0 {
            return Ok(summed);
        }
        let lead_axes: Vec<i64> = (0..lead as i64).collect();
        let lead_t = self.const_i64(&lead_axes);
        Ok(self.op("Squeeze", &[&summed, &lead_t], vec![]))
    }

    /// A shape for `Reshape` that turns a tensor shaped `from` into one shaped `to` while
    /// keeping the batch symbol: with one dynamic dimension on each side at the same index and
    /// equal static products, 0 (copy); with one dynamic dimension in `to`, -1; with several,
    /// `None` (the caller uses `Shape` of the target).
    fn reshape_spec(from: &[i64], to: &[i64]) -> Option<Vec<i64>> {
        if to.contains(&0) {
            // A literal 0 would mean "copy" to Reshape; such tensors are empty anyway.
            return None;
        }
        let dynamic: Vec<usize> = (0..to.len()).filter(|i| to[*i] == DYNAMIC).collect();
        let mut spec = to.to_vec();
        match dynamic.as_slice() {
            [] => {}
            [i] => {
                let statics = |s: &[i64]| s.iter().filter(|d| **d != DYNAMIC).product::<i64>();
                let same = from.iter().filter(|d| **d == DYNAMIC).count() == 1
                    && from.get(*i) == Some(&DYNAMIC)
                    && statics(from) == statics(to);
                spec[*i] = if same { 0 } else { -1 };
            }
            _ => return None,
        }
        Some(spec)
    }

    /// Reshapes `g` (shaped `g_shape`) to the shape of forward tensor `target`.
    pub fn reshape_like(
        &mut self,
        g: &str,
        g_shape: &[i64],
        target: &str,
    ) -> Result<String, String> {
        let t_shape = self.info(target)?.shape.clone();
        if t_shape == g_shape && !t_shape.contains(&DYNAMIC) {
            return Ok(g.to_string());
        }
        let shape = match Self::reshape_spec(g_shape, &t_shape) {
            Some(spec) => self.const_i64(&spec),
            None => self.op("Shape", &[target], vec![]),
        };
        Ok(self.op("Reshape", &[g, &shape], vec![]))
    }

    /// Zeros shaped like forward tensor `like`, of its element type.
    pub fn zeros_like(&mut self, like: &str) -> Result<String, String> {
        let info = self.info(like)?.clone();
        let value = tensor("value", info.dtype, &[1], &[0.0]);
        if !info.shape.contains(&DYNAMIC) {
            let shape = self.const_i64(&info.shape);
            return Ok(self.op("ConstantOfShape", &[&shape], vec![attr_t("value", value)]));
        }
        let shape = self.op("Shape", &[like], vec![]);
        Ok(self.op("ConstantOfShape", &[&shape], vec![attr_t("value", value)]))
    }

    /// `Cast(Greater(a, b))` or similar: a 0/1 mask of comparison `cmp` in `dtype`.
    pub fn mask(&mut self, cmp: &str, a: &str, b: &str, dtype: i32) -> String {
        let m = self.op(cmp, &[a, b], vec![]);
        self.op("Cast", &[&m], vec![attr_i("to", dtype as i64)])
    }

    pub fn emitted_ops(&self) -> BTreeSet<String> {
        self.nodes.iter().map(|n| n.op_type().to_string()).collect()
    }

    pub fn finish(self) -> (Vec<NodeProto>, Vec<TensorProto>) {
        (self.nodes, self.inits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_convert_constants_to_f16() {
        assert_eq!(f32_to_f16_bits(1.0), 0x3c00);
        assert_eq!(f32_to_f16_bits(-2.0), 0xc000);
        assert_eq!(f32_to_f16_bits(0.5), 0x3800);
        assert_eq!(f32_to_f16_bits(65504.0), 0x7bff);
        // 2047.9 rounds up to 2048: the carry moves into the exponent.
        assert_eq!(f32_to_f16_bits(2047.9), 0x6800);
    }

    #[test]
    fn should_keep_the_batch_symbol_in_reshape_specs() {
        // [N, 1280] -> [N, 1280, 1, 1]: copy the batch (0), constants elsewhere.
        assert_eq!(
            Builder::reshape_spec(&[DYNAMIC, 1280], &[DYNAMIC, 1280, 1, 1]),
            Some(vec![0, 1280, 1, 1])
        );
        // A dynamic dimension that moved: -1 once.
        assert_eq!(
            Builder::reshape_spec(&[DYNAMIC, 4], &[2, DYNAMIC]),
            Some(vec![2, -1])
        );
        assert_eq!(
            Builder::reshape_spec(&[DYNAMIC, DYNAMIC], &[3, DYNAMIC, DYNAMIC]),
            None
        );
    }
}
