//! Normalisations: BatchNormalization (inference), LayerNormalization, LRN.

use super::super::builder::{attr_i, Builder};
use super::super::graph::{attr_f as node_f, attr_i as node_i, DYNAMIC};
use super::super::registry::Registry;
use super::axis;
use crate::proto::onnx::NodeProto;

type Grads = Result<Vec<Option<String>>, String>;

pub fn register(r: &mut Registry) {
    r.rule("BatchNormalization", batch_norm);
    r.rule("LayerNormalization", layer_norm);
    r.rule("LRN", lrn);
}

/// Inference: Y = (X - mean[c]) / sqrt(var[c] + eps) * scale[c] + B[c]:
/// dX = dY * scale[c] / sqrt(var[c] + eps) (per channel, axis 1).
fn batch_norm(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    if node_i(node, "training_mode").unwrap_or(0) != 0 {
        return Err("BatchNormalization in training mode is not supported".into());
    }
    if (1..5).any(|i| b.wants(node, i)) {
        return Err(
            "gradient with respect to scale, bias, mean or variance is not supported".into(),
        );
    }
    let x = &node.input[0];
    let rank = b.info(x)?.rank();
    let eps = node_f(node, "epsilon").unwrap_or(1e-5) as f64;
    let (scale, var) = (&node.input[1], &node.input[4]);
    let e = b.scalar_like(var, eps)?;
    let ve = b.op("Add", &[var, &e], vec![]);
    let sd = b.op("Sqrt", &[&ve], vec![]);
    let mut f = b.op("Div", &[scale, &sd], vec![]);
    if rank > 2 {
        let axes: Vec<i64> = (1..rank as i64 - 1).collect();
        let axes = b.const_i64(&axes);
        f = b.op("Unsqueeze", &[&f, &axes], vec![]);
    }
    Ok(vec![Some(b.op("Mul", &[&dy, &f], vec![]))])
}

/// Over the axes A = [axis, rank), D elements: mu = mean X, xc = X - mu,
/// r = 1/sqrt(mean(xc^2) + eps), xh = xc r, Y = xh * scale + B.
/// With g = dY * scale: dX = r (g - mean(g) - xh mean(g xh)) (means over A, kept dims);
/// dScale = unb(dY * xh), dB = unb(dY).
fn layer_norm(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let x = &node.input[0];
    let xs = b.info(x)?.shape.clone();
    let rank = xs.len();
    let ax = axis(node_i(node, "axis").unwrap_or(-1), rank);
    let eps = node_f(node, "epsilon").unwrap_or(1e-5) as f64;
    let dims = &xs[ax..];
    if dims.contains(&DYNAMIC) {
        return Err("dynamic normalised dimensions are not supported".into());
    }
    let d: i64 = dims.iter().product();
    let axes = b.const_i64(&(ax as i64..rank as i64).collect::<Vec<_>>());
    let inv_d = b.scalar_like(x, 1.0 / d as f64)?;
    let keep = || vec![attr_i("keepdims", 1)];
    let mean = |b: &mut Builder, t: &str| {
        let s = b.op("ReduceSum", &[t, &axes], keep());
        b.op("Mul", &[&s, &inv_d], vec![])
    };
    let mu = mean(b, x);
    let xc = b.op("Sub", &[x, &mu], vec![]);
    let sq = b.op("Mul", &[&xc, &xc], vec![]);
    let var = mean(b, &sq);
    let e = b.scalar_like(x, eps)?;
    let ve = b.op("Add", &[&var, &e], vec![]);
    let sd = b.op("Sqrt", &[&ve], vec![]);
    let one = b.scalar_like(x, 1.0)?;
    let r = b.op("Div", &[&one, &sd], vec![]);
    let xh = b.op("Mul", &[&xc, &r], vec![]);
    let mut out = vec![None, None, None];
    if b.wants(node, 0) {
        let g = b.op("Mul", &[&dy, &node.input[1]], vec![]);
        let mg = mean(b, &g);
        let gx = b.op("Mul", &[&g, &xh], vec![]);
        let mgx = mean(b, &gx);
        let t = b.op("Mul", &[&xh, &mgx], vec![]);
        let u = b.op("Sub", &[&g, &mg], vec![]);
        let u = b.op("Sub", &[&u, &t], vec![]);
        out[0] = Some(b.op("Mul", &[&u, &r], vec![]));
    }
    if b.wants(node, 1) {
        let g = b.op("Mul", &[&dy, &xh], vec![]);
        out[1] = Some(b.unbroadcast(&g, &xs, &node.input[1])?);
    }
    if b.wants(node, 2) {
        out[2] = Some(b.unbroadcast(&dy, &xs, &node.input[2])?);
    }
    Ok(out)
}

/// Sum of `t` over a channel window [c - before, c + after] (zeros outside): Pad along axis
/// 1, then the sum of before + after + 1 shifted slices.
fn channel_window_sum(
    b: &mut Builder,
    t: &str,
    rank: usize,
    channels: i64,
    before: i64,
    after: i64,
) -> String {
    let mut pads = vec![0; 2 * rank];
    pads[1] = before;
    pads[rank + 1] = after;
    let pads = b.const_i64(&pads);
    let padded = b.op("Pad", &[t, &pads], vec![]);
    let axes = b.const_i64(&[1]);
    let parts: Vec<String> = (0..=before + after)
        .map(|j| {
            let s = b.const_i64(&[j]);
            let e = b.const_i64(&[j + channels]);
            b.op("Slice", &[&padded, &s, &e, &axes], vec![])
        })
        .collect();
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    b.op("Sum", &refs, vec![])
}

/// S[c] = bias + alpha/size * sum_{c' in [c - lo, c + hi]} X[c']^2, lo = floor((size-1)/2),
/// hi = ceil((size-1)/2); Y = X S^-beta. X[c] enters S[c'] for c' in [c - hi, c + lo], so
/// dX = dY S^-beta - (2 alpha beta / size) X sum_{c' in [c - hi, c + lo]} (dY Y / S)[c'].
fn lrn(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let (x, y) = (&node.input[0], &node.output[0]);
    let xs = b.info(x)?.shape.clone();
    let rank = xs.len();
    let channels = xs[1];
    if channels == DYNAMIC {
        return Err("a dynamic channel dimension is not supported".into());
    }
    let alpha = node_f(node, "alpha").unwrap_or(1e-4) as f64;
    let beta = node_f(node, "beta").unwrap_or(0.75) as f64;
    let bias = node_f(node, "bias").unwrap_or(1.0) as f64;
    let size = node_i(node, "size").ok_or("LRN without size")?;
    let (lo, hi) = ((size - 1) / 2, size - 1 - (size - 1) / 2);
    let xx = b.op("Mul", &[x, x], vec![]);
    let ws = channel_window_sum(b, &xx, rank, channels, lo, hi);
    let k = b.scalar_like(x, alpha / size as f64)?;
    let c = b.scalar_like(x, bias)?;
    let s = b.op("Mul", &[&ws, &k], vec![]);
    let s = b.op("Add", &[&s, &c], vec![]);
    let nb = b.scalar_like(x, -beta)?;
    let sb = b.op("Pow", &[&s, &nb], vec![]);
    let first = b.op("Mul", &[&dy, &sb], vec![]);
    let t = b.op("Mul", &[&dy, y], vec![]);
    let t = b.op("Div", &[&t, &s], vec![]);
    let back = channel_window_sum(b, &t, rank, channels, hi, lo);
    let f = b.scalar_like(x, 2.0 * alpha * beta / size as f64)?;
    let second = b.op("Mul", &[x, &back], vec![]);
    let second = b.op("Mul", &[&second, &f], vec![]);
    Ok(vec![Some(b.op("Sub", &[&first, &second], vec![]))])
}
