//! Reductions: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceSumSquare, with the axes as
//! an attribute (before opset 13 for ReduceSum, 18 for the others) or as an input.

use super::super::builder::Builder;
use super::super::graph::{attr_i as node_i, attr_ints as node_ints, DYNAMIC};
use super::super::registry::Registry;
use super::axis;
use crate::proto::onnx::NodeProto;

type Grads = Result<Vec<Option<String>>, String>;

pub fn register(r: &mut Registry) {
    r.rule("ReduceSum", reduce_sum);
    r.rule("ReduceMean", reduce_mean);
    r.rule("ReduceMax", reduce_extreme);
    r.rule("ReduceMin", reduce_extreme);
    r.rule("ReduceSumSquare", reduce_sum_square);
}

/// The reduced axes (sorted, non-negative) or `None` for a no-op reduction.
fn reduced_axes(b: &Builder, node: &NodeProto) -> Result<Option<Vec<usize>>, String> {
    let rank = b.info(&node.input[0])?.rank();
    let axes = match node_ints(node, "axes") {
        Some(a) => a,
        None => match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(_) => b
                .const_input(node, 1)
                .ok_or("the axes input is not a constant")?
                .ints(),
            None => vec![],
        },
    };
    if axes.is_empty() {
        if node_i(node, "noop_with_empty_axes").unwrap_or(0) == 1 {
            return Ok(None);
        }
        return Ok(Some((0..rank).collect()));
    }
    let mut v: Vec<usize> = axes.iter().map(|a| axis(*a, rank)).collect();
    v.sort_unstable();
    v.dedup();
    Ok(Some(v))
}

/// `t` (shaped like the reduction's output) with the reduced axes back as size 1.
fn keep_dims(b: &mut Builder, node: &NodeProto, t: &str, axes: &[usize]) -> String {
    if node_i(node, "keepdims").unwrap_or(1) == 1 {
        return t.to_string();
    }
    let a: Vec<i64> = axes.iter().map(|a| *a as i64).collect();
    let a = b.const_i64(&a);
    b.op("Unsqueeze", &[t, &a], vec![])
}

/// Broadcasts `t` (X's shape with the reduced axes of size 1) to X's shape.
fn expand_back(b: &mut Builder, t: &str, x: &str, axes: &[usize]) -> Result<String, String> {
    let xs = b.info(x)?.shape.clone();
    let shape = if axes.iter().any(|a| xs[*a] == DYNAMIC) {
        b.op("Shape", &[x], vec![])
    } else {
        // Dynamic axes that are not reduced are already there in `t`: 1 broadcasts them.
        let s: Vec<i64> = xs
            .iter()
            .map(|d| if *d == DYNAMIC { 1 } else { *d })
            .collect();
        b.const_i64(&s)
    };
    Ok(b.op("Expand", &[t, &shape], vec![]))
}

/// Y = sum of X over axes: dX = Expand(dY with the reduced axes kept).
fn reduce_sum(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let Some(axes) = reduced_axes(b, node)? else {
        return Ok(vec![Some(dy)]);
    };
    let t = keep_dims(b, node, &dy, &axes);
    Ok(vec![Some(expand_back(b, &t, &node.input[0], &axes)?)])
}

/// Y = mean of X over axes (n elements each): dX = Expand(dY kept) / n.
fn reduce_mean(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let Some(axes) = reduced_axes(b, node)? else {
        return Ok(vec![Some(dy)]);
    };
    let x = &node.input[0];
    let xs = b.info(x)?.shape.clone();
    if axes.iter().any(|a| xs[*a] == DYNAMIC) {
        return Err("a mean over a dynamic dimension is not supported".into());
    }
    let n: i64 = axes.iter().map(|a| xs[*a]).product();
    let k = b.scalar_like(x, 1.0 / n as f64)?;
    let t = keep_dims(b, node, &dy, &axes);
    let t = b.op("Mul", &[&t, &k], vec![]);
    Ok(vec![Some(expand_back(b, &t, x, &axes)?)])
}

/// Y = max (min) of X over axes: dX = dY kept * [X == Y kept] (every extreme at ties).
fn reduce_extreme(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let Some(axes) = reduced_axes(b, node)? else {
        return Ok(vec![Some(dy)]);
    };
    let x = &node.input[0];
    let dtype = b.info(x)?.dtype;
    let y = keep_dims(b, node, &node.output[0], &axes);
    let t = keep_dims(b, node, &dy, &axes);
    let m = b.mask("Equal", x, &y, dtype);
    Ok(vec![Some(b.op("Mul", &[&m, &t], vec![]))])
}

/// Y = sum of X^2 over axes: dX = 2 X * dY kept.
fn reduce_sum_square(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let x = &node.input[0];
    let two = b.scalar_like(x, 2.0)?;
    let tx = b.op("Mul", &[x, &two], vec![]);
    let Some(axes) = reduced_axes(b, node)? else {
        return Ok(vec![Some(b.op("Mul", &[&dy, &tx], vec![]))]);
    };
    let t = keep_dims(b, node, &dy, &axes);
    Ok(vec![Some(b.op("Mul", &[&tx, &t], vec![]))])
}
