//! Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

use super::super::builder::{attr_i, attr_s, attr_t, tensor, Builder};
use super::super::graph::{attr_i as node_i, attr_ints as node_ints, DYNAMIC};
use super::super::registry::Registry;
use super::conv::{transpose_to_size, window};
use crate::proto::onnx::NodeProto;

type Grads = Result<Vec<Option<String>>, String>;

pub fn register(r: &mut Registry) {
    r.rule("GlobalAveragePool", global_average_pool);
    r.rule("GlobalMaxPool", global_max_pool);
    r.rule("AveragePool", average_pool);
    r.rule("MaxPool", max_pool);
}

/// Y[n,c] = mean of X[n,c,...] over the S spatial positions: dX = Expand(dY / S).
/// NOTE: the expand shape is the constant [1, 1, H, W] (broadcast), not Shape(X), so the
/// batch dimension stays one symbol for ONNX Runtime.
fn global_average_pool(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let x = &node.input[0];
    let xs = b.info(x)?.shape.clone();
    let spatial = &xs[2..];
    let shape = if spatial.contains(&DYNAMIC) {
        return Err("dynamic spatial dimensions are not supported".into());
    } else {
        let s: Vec<i64> = [1, 1].into_iter().chain(spatial.iter().copied()).collect();
        b.const_i64(&s)
    };
    let count: i64 = spatial.iter().product();
    let k = b.scalar_like(x, 1.0 / count as f64)?;
    let scaled = b.op("Mul", &[&dy, &k], vec![]);
    Ok(vec![Some(b.op("Expand", &[&scaled, &shape], vec![]))])
}

/// Y[n,c] = max of X[n,c,...]: dX = dY * [X == Y] (every maximal position at ties).
fn global_max_pool(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let (x, y) = (&node.input[0], &node.output[0]);
    let dtype = b.info(x)?.dtype;
    let m = b.mask("Equal", x, y, dtype);
    Ok(vec![Some(b.op("Mul", &[&dy, &m], vec![]))])
}

/// The divisor of each output position along one axis: how many of the window's elements
/// count (ONNX Runtime's rule: with count_include_pad, the window clipped to the padded input;
/// without, clipped to the input itself).
fn divisors(len: i64, out: i64, k: i64, s: i64, pb: i64, pe: i64, include_pad: bool) -> Vec<i64> {
    (0..out)
        .map(|o| {
            let start = o * s - pb;
            let end = (start + k).min(len + pe);
            if include_pad {
                end - start
            } else {
                end.min(len) - start.max(0)
            }
        })
        .collect()
}

/// Y[o] = sum_{k in window(o)} X[o s + k - p_begin] / D[o], D the divisor of each window.
/// dX = ConvTranspose(dY / D, ones, group = C): each dY[o]/D[o] spread back over its window.
/// D is a constant map computed here per axis (the window is a box, so D is a product).
fn average_pool(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let x = &node.input[0];
    let xs = b.info(x)?.shape.clone();
    let ys = b.info(&node.output[0])?.shape.clone();
    let dtype = b.info(x)?.dtype;
    let kernel = node_ints(node, "kernel_shape").ok_or("no kernel_shape")?;
    let win = window(node, &xs[2..], &kernel)?;
    if win.dilations.iter().any(|d| *d != 1) {
        return Err("AveragePool with dilations is not supported".into());
    }
    let include_pad = node_i(node, "count_include_pad").unwrap_or(0) == 1;
    let channels = xs[1];
    if channels == DYNAMIC || ys[2..].contains(&DYNAMIC) {
        return Err("dynamic channel or spatial dimensions are not supported".into());
    }
    let n = kernel.len();
    let mut map = vec![1.0f64];
    for i in 0..n {
        let d = divisors(
            xs[2 + i],
            ys[2 + i],
            kernel[i],
            win.strides[i],
            win.begin[i],
            win.end[i],
            include_pad,
        );
        map = map
            .iter()
            .flat_map(|m| d.iter().map(move |v| m / *v as f64))
            .collect();
    }
    let dims: Vec<i64> = [1, 1].into_iter().chain(ys[2..].iter().copied()).collect();
    let inv = b.const_tensor(dtype, &dims, &map);
    let scaled = b.op("Mul", &[&dy, &inv], vec![]);
    let w_dims: Vec<i64> = [channels, 1]
        .into_iter()
        .chain(kernel.iter().copied())
        .collect();
    let ones = vec![1.0; w_dims.iter().product::<i64>() as usize];
    let w = b.const_tensor(dtype, &w_dims, &ones);
    Ok(vec![Some(transpose_to_size(
        b,
        &scaled,
        &w,
        &win,
        &ys[2..],
        &xs[2..],
        channels,
    ))])
}

/// Y[o] = max over window(o) of X, with Indices[o] the flat index into X of that maximum.
/// dX = ScatterElements(zeros, Indices, dY, reduction = add) over the flattened X: every
/// output adds its gradient to the position it took (overlapping windows add up).
/// NOTE: not MaxUnpool, which keeps one value per position when windows overlap.
fn max_pool(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let x = &node.input[0];
    if b.fwd.opset < 13 {
        return Err(
            "MaxPool's gradient needs opset 13 or later (it is written at opset 16, \
                    for ScatterElements with reduction)"
                .into(),
        );
    }
    if node_i(node, "storage_order").unwrap_or(0) != 0 {
        return Err("MaxPool with storage_order = 1 is not supported".into());
    }
    let indices = match node.output.get(1).filter(|s| !s.is_empty()) {
        Some(i) => i.clone(),
        None => {
            // Recompute the pool with its Indices output (the forward node has none).
            let outs = b.op_n("MaxPool", &[x], 2, node.attribute.clone());
            outs[1].clone()
        }
    };
    let dtype = b.info(x)?.dtype;
    let flat = b.const_i64(&[-1]);
    let g = b.op("Reshape", &[&dy, &flat], vec![]);
    let idx = b.op("Reshape", &[&indices, &flat], vec![]);
    let size = b.op("Size", &[x], vec![]);
    let one = b.const_i64(&[1]);
    let size = b.op("Reshape", &[&size, &one], vec![]);
    let zero = tensor("value", dtype, &[1], &[0.0]);
    let zeros = b.op("ConstantOfShape", &[&size], vec![attr_t("value", zero)]);
    let scattered = b.op(
        "ScatterElements",
        &[&zeros, &idx, &g],
        vec![attr_i("axis", 0), attr_s("reduction", "add")],
    );
    let shape = b.op("Shape", &[x], vec![]);
    Ok(vec![Some(b.op("Reshape", &[&scattered, &shape], vec![]))])
}
