//! Pointwise activations and the softmax family.
//!
//! NOTE: masks of piecewise-linear activations are computed from the *output* y as
//! `Clip(2^100 * y, 0, 1)` (1 where y > 2^-100, 0 where y <= 0), one HardSigmoid for float32:
//! unlike Greater/Where/Cast this keeps tensors in ONNX Runtime's blocked layout and leaves the
//! forward Conv+Clip fusion alone (see docs/autodiff.md); it is exact except for
//! 0 < y < 2^-100.

use super::super::builder::{attr_f, attr_i, Builder};
use super::super::graph::{self, attr_f as node_f, attr_i as node_i, attr_s as node_s};
use super::super::registry::Registry;
use super::axis;
use super::conv::NCHWC_BLOCK;
use crate::proto::onnx::NodeProto;

type Grads = Result<Vec<Option<String>>, String>;

/// 2^100: large enough that Clip(BIG * t, 0, 1) is a step at 0 for any realistic t.
pub(crate) const BIG: f64 = 1.2676506002282294e30;

pub fn register(r: &mut Registry) {
    r.rule("Relu", relu);
    r.rule("Clip", clip);
    r.rule("LeakyRelu", leaky_relu);
    r.rule("PRelu", prelu);
    r.rule("Elu", elu);
    r.rule("Selu", selu);
    r.rule("Sigmoid", sigmoid);
    r.rule("HardSigmoid", hard_sigmoid);
    r.rule("HardSwish", hard_swish);
    r.rule("Tanh", tanh);
    r.rule("Softplus", softplus);
    r.rule("Gelu", gelu);
    r.rule("Softmax", softmax);
    r.rule("LogSoftmax", log_softmax);
}

/// `Clip(BIG * t, 0, 1)`: a 0/1 step of t at 0 (t > 0 gives 1).
fn step(b: &mut Builder, t: &str, like: &str) -> Result<String, String> {
    affine_step(b, t, like, BIG, 0.0)
}

/// `Clip(scale * t + shift, 0, 1)`. For float32 one HardSigmoid (alpha = scale, beta =
/// shift): ONNX Runtime runs it in its blocked layout, and it is the cheapest mask measured
/// (docs/autodiff.md: 20 % off a whole EfficientNet gradient run against the depthwise 1x1
/// Conv + Clip it replaced). Other float types (HardSigmoid is float-only in ONNX Runtime's
/// CPU kernels): Mul, Add, Clip.
pub(crate) fn affine_step(
    b: &mut Builder,
    t: &str,
    like: &str,
    scale: f64,
    shift: f64,
) -> Result<String, String> {
    if b.info(like)?.dtype == graph::FLOAT {
        return Ok(b.op(
            "HardSigmoid",
            &[t],
            vec![attr_f("alpha", scale as f32), attr_f("beta", shift as f32)],
        ));
    }
    let k = b.scalar_like(like, scale)?;
    let mut s = b.op("Mul", &[t, &k], vec![]);
    if shift != 0.0 {
        let c = b.scalar_like(like, shift)?;
        s = b.op("Add", &[&s, &c], vec![]);
    }
    let zero = b.scalar_like(like, 0.0)?;
    let one = b.scalar_like(like, 1.0)?;
    Ok(b.op("Clip", &[&s, &zero, &one], vec![]))
}

/// The mask `[lo < t] * [t < hi]` of a Clip's output `t` (or of an exact copy of it, such as
/// one phase of it) of shape `shape`; `like` is the forward tensor that gives its type.
///
/// NOTE: for ReLU6-like clips of NCHW float32 tensors (lo = 0, channels a multiple of 16) it
/// takes two passes instead of three: `m_lo = [t > 0]` (a HardSigmoid step), then
/// `HardSigmoid(BIG * (m_lo - t / 2^k + hi / 2^k - 1))` with 2^k the power of two at or above
/// hi, written as a depthwise 1x1 Conv (weight -1/2^k, bias hi/2^k - 1) + Add(m_lo) +
/// HardSigmoid, which ONNX Runtime fuses into one blocked-layout Conv. The sum is
/// `hi/2^k - 1 <= 0` where t = 0 (needs 2^k >= hi), `(hi - t)/2^k > 0` where 0 < t < hi and
/// exactly 0 at t = hi: with hi/2^k >= 3/4 every operation on the way is exact in float32 for
/// t >= 2^(k-1) (Sterbenz), and below that the sum is at least 1/4, so the mask is exactly
/// the one of the two-step form (docs/autodiff.md measures it).
pub(crate) fn clip_mask(
    b: &mut Builder,
    t: &str,
    shape: &[i64],
    like: &str,
    lo: f64,
    hi: f64,
) -> Result<String, String> {
    let fused = if b.info(like)?.dtype == graph::FLOAT && lo == 0.0 && hi > 0.0 {
        let pow2 = 2f64.powi(hi.log2().ceil() as i32);
        let channels = match shape {
            [_, c, _, _] if *c > 0 && c % NCHWC_BLOCK == 0 => Some(*c),
            _ => None,
        };
        channels.filter(|_| hi / pow2 >= 0.75).map(|c| (c, pow2))
    } else {
        None
    };
    let Some((c, pow2)) = fused else {
        let m_lo = affine_step(b, t, like, BIG, -BIG * lo)?;
        let m_hi = affine_step(b, t, like, -BIG, BIG * hi)?;
        return Ok(b.op("Mul", &[&m_lo, &m_hi], vec![]));
    };
    let m_lo = affine_step(b, t, like, BIG, 0.0)?;
    let w = b.const_tensor(graph::FLOAT, &[c, 1, 1, 1], &vec![-1.0 / pow2; c as usize]);
    let bias = b.const_tensor(graph::FLOAT, &[c], &vec![hi / pow2 - 1.0; c as usize]);
    let lin = b.op("Conv", &[t, &w, &bias], vec![attr_i("group", c)]);
    let sum = b.op("Add", &[&lin, &m_lo], vec![]);
    affine_step(b, &sum, like, BIG, 0.0)
}

/// Y = max(X, 0): dX = dY * [Y > 0].
fn relu(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let m = step(b, &node.output[0], &node.output[0])?;
    Ok(vec![Some(b.op("Mul", &[&dy, &m], vec![]))])
}

/// Y = min(max(X, lo), hi): dX = dY * [lo < Y] * [Y < hi] (0 on the bounds, like PyTorch's
/// hardtanh/ReLU6). ReLU6 (lo = 0, hi = 6) is the mask Clip(2^100 y,0,1)*Clip(2^100 (6-y),0,1).
fn clip(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let y = node.output[0].clone();
    let lo = node.input.get(1).filter(|s| !s.is_empty()).cloned();
    let hi = node.input.get(2).filter(|s| !s.is_empty()).cloned();
    let bounds = (b.const_input(node, 1), b.const_input(node, 2));
    if let (Some(l), Some(h)) = &bounds {
        if let ([l], [h]) = (l.floats().as_slice(), h.floats().as_slice()) {
            let shape = b.info(&y)?.shape.clone();
            let m = clip_mask(b, &y, &shape, &y, *l, *h)?;
            return Ok(vec![Some(b.op("Mul", &[&dy, &m], vec![]))]);
        }
    }
    let mut mask: Option<String> = None;
    if let Some(lo) = lo {
        let t = match b.const_input(node, 1) {
            Some(v) if v.floats() == [0.0] => y.clone(),
            _ => b.op("Sub", &[&y, &lo], vec![]),
        };
        mask = Some(step(b, &t, &y)?);
    }
    if let Some(hi) = hi {
        let t = b.op("Sub", &[&hi, &y], vec![]);
        let m = step(b, &t, &y)?;
        mask = Some(match mask {
            Some(prev) => b.op("Mul", &[&prev, &m], vec![]),
            None => m,
        });
    }
    Ok(vec![Some(match mask {
        Some(m) => b.op("Mul", &[&dy, &m], vec![]),
        None => dy,
    })])
}

/// Y = X > 0 ? X : alpha X: dX = dY * (alpha + (1 - alpha) [X > 0]).
fn leaky_relu(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let alpha = node_f(node, "alpha").unwrap_or(0.01) as f64;
    let x = &node.input[0];
    let m = step(b, x, x)?;
    let k = b.scalar_like(x, 1.0 - alpha)?;
    let a = b.scalar_like(x, alpha)?;
    let t = b.op("Mul", &[&m, &k], vec![]);
    let s = b.op("Add", &[&t, &a], vec![]);
    Ok(vec![Some(b.op("Mul", &[&dy, &s], vec![]))])
}

/// Y = X > 0 ? X : slope X (slope broadcast): dX = dY * (X > 0 ? 1 : slope),
/// dSlope = unb(dY * X * [X <= 0]).
fn prelu(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let (x, slope) = (&node.input[0], &node.input[1]);
    let pos = step(b, x, x)?;
    let one = b.scalar_like(x, 1.0)?;
    let neg = b.op("Sub", &[&one, &pos], vec![]);
    let mut out = vec![None, None];
    if b.wants(node, 0) {
        let t = b.op("Mul", &[&neg, slope], vec![]);
        let s = b.op("Add", &[&t, &pos], vec![]);
        out[0] = Some(b.op("Mul", &[&dy, &s], vec![]));
    }
    if b.wants(node, 1) {
        let ys = b.info(&node.output[0])?.shape.clone();
        let t = b.op("Mul", &[&neg, x], vec![]);
        let g = b.op("Mul", &[&dy, &t], vec![]);
        out[1] = Some(b.unbroadcast(&g, &ys, slope)?);
    }
    Ok(out)
}

/// Y = X > 0 ? X : alpha (e^X - 1): dX = dY * (X > 0 ? 1 : Y + alpha).
fn elu(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let alpha = node_f(node, "alpha").unwrap_or(1.0) as f64;
    exp_linear(b, node, &dy, 1.0, alpha)
}

/// Y = gamma (X > 0 ? X : alpha (e^X - 1)): dX = dY * (X > 0 ? gamma : Y + gamma alpha).
fn selu(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let alpha = node_f(node, "alpha").unwrap_or(1.673_263_2) as f64;
    let gamma = node_f(node, "gamma").unwrap_or(1.050_701) as f64;
    exp_linear(b, node, &dy, gamma, gamma * alpha)
}

fn exp_linear(b: &mut Builder, node: &NodeProto, dy: &str, slope: f64, shift: f64) -> Grads {
    let (x, y) = (&node.input[0], &node.output[0]);
    let pos = step(b, x, x)?;
    let one = b.scalar_like(x, 1.0)?;
    let neg = b.op("Sub", &[&one, &pos], vec![]);
    let c = b.scalar_like(x, shift)?;
    let yc = b.op("Add", &[y, &c], vec![]);
    let n = b.op("Mul", &[&neg, &yc], vec![]);
    let k = b.scalar_like(x, slope)?;
    let p = b.op("Mul", &[&pos, &k], vec![]);
    let s = b.op("Add", &[&p, &n], vec![]);
    Ok(vec![Some(b.op("Mul", &[dy, &s], vec![]))])
}

/// Y = 1 / (1 + e^-X): dX = dY * Y * (1 - Y).
fn sigmoid(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let y = &node.output[0];
    let one = b.scalar_like(y, 1.0)?;
    let omy = b.op("Sub", &[&one, y], vec![]);
    let t = b.op("Mul", &[y, &omy], vec![]);
    Ok(vec![Some(b.op("Mul", &[&dy, &t], vec![]))])
}

/// Y = max(0, min(1, alpha X + beta)): dX = dY * alpha * [0 < Y < 1].
fn hard_sigmoid(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let alpha = node_f(node, "alpha").unwrap_or(0.2) as f64;
    let y = &node.output[0];
    let lo = step(b, y, y)?;
    let one = b.scalar_like(y, 1.0)?;
    let omy = b.op("Sub", &[&one, y], vec![]);
    let hi = step(b, &omy, y)?;
    let m = b.op("Mul", &[&lo, &hi], vec![]);
    let a = b.scalar_like(y, alpha)?;
    let t = b.op("Mul", &[&m, &a], vec![]);
    Ok(vec![Some(b.op("Mul", &[&dy, &t], vec![]))])
}

/// Y = X * max(0, min(1, X/6 + 1/2)): dX = dY * (X < -3: 0; X > 3: 1; else X/3 + 1/2).
fn hard_swish(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let x = &node.input[0];
    let three = b.scalar_like(x, 3.0)?;
    let xp3 = b.op("Add", &[x, &three], vec![]);
    let above_lo = step(b, &xp3, x)?; // X > -3
    let xm3 = b.op("Sub", &[x, &three], vec![]);
    let above_hi = step(b, &xm3, x)?; // X > 3
    let inside = b.op("Sub", &[&above_lo, &above_hi], vec![]);
    let third = b.scalar_like(x, 1.0 / 3.0)?;
    let half = b.scalar_like(x, 0.5)?;
    let s = b.op("Mul", &[x, &third], vec![]);
    let s = b.op("Add", &[&s, &half], vec![]);
    let s = b.op("Mul", &[&s, &inside], vec![]);
    let s = b.op("Add", &[&s, &above_hi], vec![]);
    Ok(vec![Some(b.op("Mul", &[&dy, &s], vec![]))])
}

/// Y = tanh(X): dX = dY * (1 - Y^2).
fn tanh(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let y = &node.output[0];
    let one = b.scalar_like(y, 1.0)?;
    let yy = b.op("Mul", &[y, y], vec![]);
    let t = b.op("Sub", &[&one, &yy], vec![]);
    Ok(vec![Some(b.op("Mul", &[&dy, &t], vec![]))])
}

/// Y = ln(1 + e^X): dX = dY * sigmoid(X).
fn softplus(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let s = b.op("Sigmoid", &[&node.input[0]], vec![]);
    Ok(vec![Some(b.op("Mul", &[&dy, &s], vec![]))])
}

/// Exact: Y = X Phi(X): dX = dY * (Phi(X) + X phi(X)), Phi(X) = (1 + erf(X/sqrt2))/2,
/// phi(X) = e^(-X^2/2)/sqrt(2 pi).
/// tanh: Y = X/2 (1 + tanh u), u = sqrt(2/pi) (X + 0.044715 X^3):
/// dX = dY * ((1 + t)/2 + X/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 X^2)), t = tanh u.
fn gelu(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let x = &node.input[0];
    let half = b.scalar_like(x, 0.5)?;
    let one = b.scalar_like(x, 1.0)?;
    let xx = b.op("Mul", &[x, x], vec![]);
    let d = if node_s(node, "approximate").as_deref() == Some("tanh") {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let k = b.scalar_like(x, 0.044715)?;
        let k3 = b.scalar_like(x, 3.0 * 0.044715)?;
        let cc = b.scalar_like(x, c)?;
        let kxx = b.op("Mul", &[&xx, &k], vec![]);
        let inner = b.op("Add", &[&one, &kxx], vec![]);
        let u = b.op("Mul", &[x, &inner], vec![]);
        let u = b.op("Mul", &[&u, &cc], vec![]);
        let t = b.op("Tanh", &[&u], vec![]);
        let opt = b.op("Add", &[&one, &t], vec![]);
        let first = b.op("Mul", &[&opt, &half], vec![]);
        let tt = b.op("Mul", &[&t, &t], vec![]);
        let omtt = b.op("Sub", &[&one, &tt], vec![]);
        let k3xx = b.op("Mul", &[&xx, &k3], vec![]);
        let du = b.op("Add", &[&one, &k3xx], vec![]);
        let du = b.op("Mul", &[&du, &cc], vec![]);
        let s = b.op("Mul", &[&omtt, &du], vec![]);
        let s = b.op("Mul", &[&s, x], vec![]);
        let s = b.op("Mul", &[&s, &half], vec![]);
        b.op("Add", &[&first, &s], vec![])
    } else {
        let r2 = b.scalar_like(x, std::f64::consts::FRAC_1_SQRT_2)?;
        let xs = b.op("Mul", &[x, &r2], vec![]);
        let e = b.op("Erf", &[&xs], vec![]);
        let ope = b.op("Add", &[&one, &e], vec![]);
        let cdf = b.op("Mul", &[&ope, &half], vec![]);
        let nhxx = b.op("Mul", &[&xx, &half], vec![]);
        let nhxx = b.op("Neg", &[&nhxx], vec![]);
        let g = b.op("Exp", &[&nhxx], vec![]);
        let k = b.scalar_like(x, 1.0 / (2.0 * std::f64::consts::PI).sqrt())?;
        let pdf = b.op("Mul", &[&g, &k], vec![]);
        let xpdf = b.op("Mul", &[x, &pdf], vec![]);
        b.op("Add", &[&cdf, &xpdf], vec![])
    };
    Ok(vec![Some(b.op("Mul", &[&dy, &d], vec![]))])
}

/// The axes a Softmax/LogSoftmax normalises over: `axis` from opset 13; before, the input is
/// coerced to 2-D at `axis` (default 1), i.e. every axis from `axis` on.
fn softmax_axes(b: &Builder, node: &NodeProto) -> Result<Vec<i64>, String> {
    let rank = b.info(&node.input[0])?.rank();
    if b.fwd.opset >= 13 {
        return Ok(vec![axis(node_i(node, "axis").unwrap_or(-1), rank) as i64]);
    }
    let first = axis(node_i(node, "axis").unwrap_or(1), rank);
    Ok((first as i64..rank as i64).collect())
}

/// Y = softmax(X) along axis: dX = Y * (dY - sum(dY * Y, axis, keepdims)).
fn softmax(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let axes = softmax_axes(b, node)?;
    let y = &node.output[0];
    let t = b.op("Mul", &[&dy, y], vec![]);
    let axes = b.const_i64(&axes);
    let s = b.op("ReduceSum", &[&t, &axes], vec![attr_i("keepdims", 1)]);
    let d = b.op("Sub", &[&dy, &s], vec![]);
    Ok(vec![Some(b.op("Mul", &[y, &d], vec![]))])
}

/// Y = X - log(sum(exp X, axis)): dX = dY - exp(Y) * sum(dY, axis, keepdims).
fn log_softmax(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let axes = softmax_axes(b, node)?;
    let axes = b.const_i64(&axes);
    let s = b.op("ReduceSum", &[&dy, &axes], vec![attr_i("keepdims", 1)]);
    let p = b.op("Exp", &[&node.output[0]], vec![]);
    let t = b.op("Mul", &[&p, &s], vec![]);
    Ok(vec![Some(b.op("Sub", &[&dy, &t], vec![]))])
}
