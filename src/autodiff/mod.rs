//! ONNX autodiff: turns a forward ONNX graph into a gradient graph that ONNX Runtime runs.
//!
//! [`build_gradient`] takes a forward [`ModelProto`], the tensor to differentiate with respect
//! to (`wrt`), the output to differentiate (`of`) and an [`Objective`], and returns a new model
//! with this interface (a contract other tools rely on):
//!
//! - inputs: every input of the original model (same names and shapes), plus `cotangent`,
//!   shaped like the chosen output, of the output's element type (float32 for float32 models);
//! - outputs: first `grad`, the gradient of `sum(cotangent * objective(output))` with respect
//!   to `wrt` (its shape), then, when several tensors are differentiated with respect to, the
//!   gradients of the others in order ([`grad_name`]: `grad_1`, `grad_2`, ...), then the
//!   original outputs unchanged, then the differentiated tensor itself when it is not one of
//!   them (an inner tensor named as `of`).
//!
//! The module is a registry of rules ([`registry`]): every op type is in exactly one class:
//! it has a gradient rule (one file per op family under `ops/`), it has no gradient (its
//! outputs are not differentiable, e.g. `Shape`), or it is refused. An op in no class, or a
//! refused op, on a path from `wrt` to `of` is a hard error naming the op type and the node.
//! Only nodes on such a path get backward nodes; everything else is a constant.
//!
//! Plain library: no tonic, no tokio. It needs ONNX Runtime once, to probe the shapes (and the
//! values of constant subgraphs) of the forward graph; see [`graph`].

pub mod builder;
mod cli;
pub mod graph;
mod ops;
pub mod registry;

use std::collections::{BTreeSet, HashSet};

use crate::proto::onnx::{ModelProto, NodeProto};

pub use cli::run_autodiff_cli;

use builder::Builder;
use graph::{ForwardGraph, TensorInfo};
use registry::{Class, Registry};

/// The name of the extra input that carries the output's cotangent (the seed).
pub const COTANGENT: &str = "cotangent";
/// The name of the gradient output (always the first output).
pub const GRAD: &str = "grad";

/// The output holding the gradient w.r.t. the `i`-th `wrt` tensor: [`GRAD`], then `grad_1`, ...
pub fn grad_name(i: usize) -> String {
    match i {
        0 => GRAD.to_string(),
        i => format!("{GRAD}_{i}"),
    }
}

/// What is differentiated: the chosen output itself, its softmax, or its sigmoid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Objective {
    /// The output as is (e.g. logits).
    #[default]
    Logit,
    /// Softmax over the output's last axis, added inside the gradient graph.
    Probability,
    /// The logistic sigmoid of each value (a binary or multi-label head's probability from its
    /// logits), added inside the gradient graph.
    Sigmoid,
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "logit" => Ok(Objective::Logit),
            "probability" => Ok(Objective::Probability),
            "sigmoid" => Ok(Objective::Sigmoid),
            other => Err(format!(
                "unknown objective {other:?} (expected logit, probability or sigmoid)"
            )),
        }
    }
}

/// Which gradient to build.
#[derive(Debug, Clone, Default)]
pub struct GradOptions {
    /// The tensors to differentiate with respect to, together (one backward pass, one gradient
    /// output each); empty: the first float graph input. An inner tensor makes it an input of
    /// the gradient model (see [`GradientModel::prefix`]); no tensor may depend on another.
    pub wrt: Vec<String>,
    /// The tensor to differentiate: an output, or an inner tensor (which the gradient model
    /// then also outputs); default: the first graph output.
    pub of: Option<String>,
    pub objective: Objective,
}

/// The result of [`build_gradient`].
#[derive(Debug, Clone)]
pub struct GradientModel {
    /// The gradient model (see the module docs for its interface).
    pub model: ModelProto,
    /// When some `wrt` tensors are inner ones: a model computing them from the original inputs
    /// (one output each, named as the tensor, in `wrt` order). The gradient model then takes
    /// those tensors as inputs in place of the subgraphs that produced them.
    pub prefix: Option<ModelProto>,
    /// The tensors differentiated with respect to, and the output differentiated.
    pub wrt: Vec<String>,
    pub of: String,
    /// The op types of the forward nodes that got backward nodes.
    pub differentiated_ops: BTreeSet<String>,
    /// The op types of the backward nodes emitted.
    pub emitted_ops: BTreeSet<String>,
}

/// One node that cannot be differentiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub op_type: String,
    pub node: String,
    pub reason: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (node {:?}): {}",
            self.op_type, self.node, self.reason
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    #[error("the model has no graph")]
    NoGraph,
    #[error("the model has no float input to differentiate with respect to")]
    NoFloatInput,
    #[error("the model has no tensor named {name:?} (wrt)")]
    UnknownWrt { name: String },
    #[error("the model has no tensor named {name:?} (of)")]
    UnknownOutput { name: String },
    #[error("{name:?} has element type {dtype}, not a float type")]
    NotFloat { name: String, dtype: i32 },
    #[error("output {of:?} does not depend on {wrt:?}")]
    NoPath { wrt: String, of: String },
    #[error("{inner:?} depends on {on:?}: tensors differentiated with respect to together must not depend on one another")]
    Nested { inner: String, on: String },
    #[error("the model already has a tensor named {name:?}, reserved for the gradient model")]
    ReservedName { name: String },
    /// Every node on the path that cannot be differentiated (op type, node name, reason).
    #[error("cannot differentiate {} node(s) on the path from the input to the output: {}", .0.len(), .0.iter().map(|u| u.to_string()).collect::<Vec<_>>().join("; "))]
    Unsupported(Vec<Unsupported>),
    #[error("{op_type} node {node:?}: {reason}")]
    Rule {
        op_type: String,
        node: String,
        reason: String,
    },
    #[error("the model uses opset {opset}; autodiff supports opsets {MIN_OPSET} and later")]
    OldOpset { opset: i64 },
    #[error("probing the forward graph with ONNX Runtime failed: {reason}")]
    Probe { reason: String },
}

/// Builds the gradient model of `model` (see the module docs for its interface).
pub fn build_gradient(
    model: &ModelProto,
    options: &GradOptions,
) -> Result<GradientModel, AutodiffError> {
    let fwd = ForwardGraph::analyse(model)?;
    if fwd.opset < MIN_OPSET {
        return Err(AutodiffError::OldOpset { opset: fwd.opset });
    }
    let wrts: Vec<String> = match options.wrt.as_slice() {
        [] => vec![fwd
            .runtime_inputs
            .iter()
            .find(|name| {
                fwd.infos
                    .get(*name)
                    .is_some_and(|i| graph::is_float(i.dtype))
            })
            .cloned()
            .ok_or(AutodiffError::NoFloatInput)?],
        names => names.to_vec(),
    };
    for wrt in &wrts {
        let Some(info) = fwd.infos.get(wrt) else {
            return Err(AutodiffError::UnknownWrt { name: wrt.clone() });
        };
        if !graph::is_float(info.dtype) {
            return Err(AutodiffError::NotFloat {
                name: wrt.clone(),
                dtype: info.dtype,
            });
        }
    }
    let graph = model.graph.as_ref().ok_or(AutodiffError::NoGraph)?;
    let of = match &options.of {
        Some(name) => {
            // An output, or an inner tensor (e.g. the logits a final Sigmoid reads).
            if !fwd.infos.contains_key(name) {
                return Err(AutodiffError::UnknownOutput { name: name.clone() });
            }
            name.clone()
        }
        None => graph.output.first().map(|o| o.name().to_string()).ok_or(
            AutodiffError::UnknownOutput {
                name: String::new(),
            },
        )?,
    };
    let of_info = fwd.infos[&of].clone();
    if !graph::is_float(of_info.dtype) {
        return Err(AutodiffError::NotFloat {
            name: of,
            dtype: of_info.dtype,
        });
    }
    let reserved = std::iter::once(COTANGENT.to_string()).chain((0..wrts.len()).map(grad_name));
    for reserved in reserved {
        if fwd.infos.contains_key(&reserved) {
            return Err(AutodiffError::ReservedName { name: reserved });
        }
    }

    let registry = Registry::standard();
    let class = |node: &NodeProto| registry.class_of(node);
    let nodes = &graph.node;

    // Forward: the tensors that depend on a `wrt` through differentiable ops.
    let reach = |from: &[String]| {
        let mut active: HashSet<String> = from.iter().cloned().collect();
        for node in nodes {
            if !node.input.iter().any(|i| active.contains(i)) {
                continue;
            }
            if let Some(Class::NoGradient) = class(node) {
                continue;
            }
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                if fwd.infos.get(out).is_some_and(|i| graph::is_float(i.dtype)) {
                    active.insert(out.clone());
                }
            }
        }
        active
    };
    let active = reach(&wrts);
    for (i, wrt) in wrts.iter().enumerate() {
        let from_it = reach(std::slice::from_ref(wrt));
        if !from_it.contains(&of) {
            return Err(AutodiffError::NoPath {
                wrt: wrt.clone(),
                of,
            });
        }
        if let Some((_, other)) = wrts
            .iter()
            .enumerate()
            .find(|&(j, w)| j != i && from_it.contains(w))
        {
            return Err(AutodiffError::Nested {
                inner: other.clone(),
                on: wrt.clone(),
            });
        }
    }
    // Backward: the tensors `of` depends on.
    let mut needed: HashSet<String> = HashSet::from([of.clone()]);
    for node in nodes.iter().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            needed.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
        }
    }

    // The nodes on a path from `wrt` to `of`, and the refusals among them.
    let on_path = |node: &NodeProto| {
        node.input.iter().any(|i| active.contains(i))
            && node.output.iter().any(|o| needed.contains(o))
    };
    let mut refused = Vec::new();
    for node in nodes.iter().filter(|n| on_path(n)) {
        let reason = match class(node) {
            Some(Class::Rule(_)) | Some(Class::NoGradient) => continue,
            Some(Class::Refused(reason)) => reason.to_string(),
            None if node.domain() == "com.microsoft" => "an ONNX Runtime contrib op (the fused ops of onnxruntime.transformers.optimizer and of offline graph optimization have no gradient rules); explain the graph as exported (torch.onnx.export, before the optimizer): ONNX Runtime still fuses it in memory when it runs".to_string(),
            None => "no gradient rule for this op type".to_string(),
        };
        let domain = node.domain();
        refused.push(Unsupported {
            op_type: if domain.is_empty() || domain == "ai.onnx" {
                node.op_type().to_string()
            } else {
                format!("{domain}.{}", node.op_type())
            },
            node: node.name().to_string(),
            reason,
        });
    }
    if !refused.is_empty() {
        return Err(AutodiffError::Unsupported(refused));
    }

    // The backward pass, in reverse topological order.
    let mut b = Builder::new(&fwd, &active);
    let seed = seed(&mut b, &of, &of_info, options.objective);
    b.add_grad(&of, seed);
    let mut differentiated_ops = BTreeSet::new();
    for node in nodes.iter().rev().filter(|n| on_path(n)) {
        let Some(Class::Rule(rule)) = class(node) else {
            continue;
        };
        let dys: Vec<Option<String>> = node.output.iter().map(|o| b.take_grad(o)).collect();
        if dys.iter().all(Option::is_none) {
            continue;
        }
        differentiated_ops.insert(node.op_type().to_string());
        let dxs = rule(&mut b, node, &dys).map_err(|reason| AutodiffError::Rule {
            op_type: node.op_type().to_string(),
            node: node.name().to_string(),
            reason,
        })?;
        for (input, dx) in node.input.iter().zip(dxs) {
            if let Some(dx) = dx {
                if active.contains(input) {
                    b.add_grad(input, dx);
                }
            }
        }
    }
    for (i, wrt) in wrts.iter().enumerate() {
        let grad = b.take_grad(wrt).ok_or_else(|| AutodiffError::NoPath {
            wrt: wrt.clone(),
            of: of.clone(),
        })?;
        b.identity_to(&grad, &grad_name(i));
    }
    let emitted_ops = b.emitted_ops();
    let (bw_nodes, bw_inits) = b.finish();

    let (model, prefix) = assemble(model, &fwd, &wrts, &of, &of_info, bw_nodes, bw_inits)?;
    Ok(GradientModel {
        model,
        prefix,
        wrt: wrts,
        of,
        differentiated_ops,
        emitted_ops,
    })
}

/// The cotangent of `of` for the objective: `cotangent` itself for logits; for probabilities
/// p = softmax(y) over the last axis, d sum(c * p) / dy = p * (c - sum(c * p, last axis)); for
/// s = sigmoid(y) elementwise, d sum(c * s) / dy = c * s * (1 - s).
fn seed(b: &mut Builder, of: &str, info: &TensorInfo, objective: Objective) -> String {
    match objective {
        Objective::Logit => COTANGENT.to_string(),
        Objective::Probability => {
            let rank = info.shape.len() as i64;
            let p = b.op("Softmax", &[of], vec![builder::attr_i("axis", rank - 1)]);
            let cp = b.op("Mul", &[COTANGENT, &p], vec![]);
            let axes = b.const_i64(&[rank - 1]);
            let s = b.op(
                "ReduceSum",
                &[&cp, &axes],
                vec![builder::attr_i("keepdims", 1)],
            );
            let d = b.op("Sub", &[COTANGENT, &s], vec![]);
            b.op("Mul", &[&p, &d], vec![])
        }
        Objective::Sigmoid => {
            let s = b.op("Sigmoid", &[of], vec![]);
            let one = b.scalar(info.dtype, 1.0);
            let rest = b.op("Sub", &[&one, &s], vec![]);
            let slope = b.op("Mul", &[&s, &rest], vec![]);
            b.op("Mul", &[COTANGENT, &slope], vec![])
        }
    }
}

/// The oldest default-domain opset supported (Clip, Pad and Slice take their arguments as
/// inputs from 11; before 13 the builder writes the attribute forms of ReduceSum, Squeeze,
/// Unsqueeze and Split).
pub const MIN_OPSET: i64 = 11;
/// ScatterElements with `reduction` (MaxPool's gradient) needs opset 16; a model between 13 and
/// 15 that needs it is raised to 16 (no op integrad differentiates changes meaning there).
const SCATTER_OPSET: i64 = 16;

fn assemble(
    model: &ModelProto,
    fwd: &ForwardGraph,
    wrts: &[String],
    of: &str,
    of_info: &TensorInfo,
    bw_nodes: Vec<NodeProto>,
    bw_inits: Vec<crate::proto::onnx::TensorProto>,
) -> Result<(ModelProto, Option<ModelProto>), AutodiffError> {
    let graph = model.graph.as_ref().ok_or(AutodiffError::NoGraph)?;
    let mut out = model.clone();
    for op in out.opset_import.iter_mut() {
        let default_domain = op.domain().is_empty() || op.domain() == "ai.onnx";
        if default_domain && bw_nodes.iter().any(|n| n.op_type() == "ScatterElements") {
            op.version = Some(op.version().max(SCATTER_OPSET));
        }
    }
    if out.ir_version() < 8 {
        out.ir_version = Some(8);
    }
    let g = out.graph.as_mut().expect("checked above");
    let inner: Vec<&String> = wrts
        .iter()
        .filter(|w| !fwd.runtime_inputs.contains(w))
        .collect();
    let mut prefix = None;
    for &wrt in &inner {
        // The wrt tensor becomes an input; its producer goes (the prefix model computes it),
        // or, when the producer has other outputs, only stops writing that tensor.
        g.node
            .retain(|n| !(n.output.iter().any(|o| o == wrt) && n.output.len() == 1));
        for n in g.node.iter_mut() {
            for o in n.output.iter_mut().filter(|o| *o == wrt) {
                *o = format!("{wrt}/replaced_by_input");
            }
        }
        let info = &fwd.infos[wrt];
        g.input
            .push(graph::value_info(wrt, info.dtype, &info.shape));
    }
    if !inner.is_empty() {
        let mut p = model.clone();
        let pg = p.graph.as_mut().expect("checked above");
        pg.output = inner
            .iter()
            .map(|w| {
                let info = &fwd.infos[w.as_str()];
                graph::value_info(w, info.dtype, &info.shape)
            })
            .collect();
        prune(pg, Inputs::Drop);
        prefix = Some(p);
    }
    g.input.push(
        graph::declared_value_info(graph, of, COTANGENT)
            .unwrap_or_else(|| graph::value_info(COTANGENT, of_info.dtype, &of_info.shape)),
    );
    let mut outputs: Vec<_> = wrts
        .iter()
        .enumerate()
        .map(|(i, wrt)| {
            let info = &fwd.infos[wrt];
            let name = grad_name(i);
            graph::declared_value_info(graph, wrt, &name)
                .unwrap_or_else(|| graph::value_info(&name, info.dtype, &info.shape))
        })
        .collect();
    outputs.extend(graph.output.iter().cloned());
    // The differentiated tensor's values, when it is an inner one (a Sigmoid's input): the
    // caller reads F along the path from them.
    if !graph.output.iter().any(|o| o.name() == of) {
        outputs.push(
            graph::declared_value_info(graph, of, of)
                .unwrap_or_else(|| graph::value_info(of, of_info.dtype, &of_info.shape)),
        );
    }
    g.output = outputs;
    g.node.extend(bw_nodes);
    g.initializer.extend(bw_inits);
    // What only fed a tensor that is now an input (the ids' arithmetic before an embedding's
    // Gather) goes: ONNX Runtime would run it on every row for nothing. The inputs stay, so
    // the gradient model is fed like the model.
    prune(g, Inputs::Keep);
    Ok((out, prefix))
}

/// What [`prune`] does with graph inputs nothing reads.
#[derive(Clone, Copy, PartialEq)]
enum Inputs {
    Keep,
    Drop,
}

/// Drops nodes whose outputs nothing uses (the prefix model keeps only what computes its
/// output), the initializers they alone read, and, with [`Inputs::Drop`], unread inputs.
fn prune(g: &mut crate::proto::onnx::GraphProto, inputs: Inputs) {
    let mut needed: HashSet<String> = g.output.iter().map(|o| o.name().to_string()).collect();
    let mut keep = vec![false; g.node.len()];
    for (i, node) in g.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            reads(node, &mut needed);
        }
    }
    let mut it = keep.iter();
    g.node.retain(|_| *it.next().unwrap());
    match inputs {
        Inputs::Drop => {
            g.initializer.retain(|t| needed.contains(t.name()));
            g.input.retain(|i| needed.contains(i.name()));
        }
        // An initializer that is also an input is the input's default: it stays with it.
        Inputs::Keep => {
            let declared: HashSet<&str> = g.input.iter().map(|i| i.name()).collect();
            g.initializer
                .retain(|t| needed.contains(t.name()) || declared.contains(t.name()));
        }
    }
}

/// Adds to `names` every tensor `node` reads, its subgraphs' reads from the outer scope
/// included (an If branch may read a tensor that no input of the If names).
fn reads(node: &crate::proto::onnx::NodeProto, names: &mut HashSet<String>) {
    names.extend(node.input.iter().cloned());
    for attribute in &node.attribute {
        for sub in attribute.g.iter().chain(&attribute.graphs) {
            for n in &sub.node {
                reads(n, names);
            }
        }
    }
}
