//! Elementwise arithmetic with numpy broadcasting: every operand's gradient is summed back to
//! its own shape (`Builder::unbroadcast`).

use super::super::builder::{attr_i, Builder};
use super::super::registry::Registry;
use crate::proto::onnx::NodeProto;

type Grads = Result<Vec<Option<String>>, String>;

pub fn register(r: &mut Registry) {
    r.rule("Add", add);
    r.rule("Sub", sub);
    r.rule("Mul", mul);
    r.rule("Div", div);
    r.rule("Pow", pow);
    r.rule("Neg", neg);
    r.rule("Abs", abs);
    r.rule("Sqrt", sqrt);
    r.rule("Exp", exp);
    r.rule("Log", log);
    r.rule("Reciprocal", reciprocal);
    r.rule("Erf", erf);
    r.rule("Max", max);
    r.rule("Min", min);
    r.rule("Sum", sum);
    r.rule("Mean", mean);
    r.rule("Where", where_);
    r.rule("Identity", identity);
    r.rule("Dropout", identity);
    r.rule("Cast", cast);
}

fn out_shape(b: &Builder, node: &NodeProto) -> Result<Vec<i64>, String> {
    Ok(b.info(&node.output[0])?.shape.clone())
}

/// Y = A + B: dA = unb(dY), dB = unb(dY).
fn add(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = out_shape(b, node)?;
    let mut out = vec![None, None];
    for (i, slot) in out.iter_mut().enumerate() {
        if b.wants(node, i) {
            *slot = Some(b.unbroadcast(&dy, &ys, &node.input[i])?);
        }
    }
    Ok(out)
}

/// Y = A - B: dA = unb(dY), dB = unb(-dY).
fn sub(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = out_shape(b, node)?;
    let mut out = vec![None, None];
    if b.wants(node, 0) {
        out[0] = Some(b.unbroadcast(&dy, &ys, &node.input[0])?);
    }
    if b.wants(node, 1) {
        let neg = b.op("Neg", &[&dy], vec![]);
        out[1] = Some(b.unbroadcast(&neg, &ys, &node.input[1])?);
    }
    Ok(out)
}

/// Y = A * B: dA = unb(dY * B), dB = unb(dY * A).
fn mul(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = out_shape(b, node)?;
    let mut out = vec![None, None];
    for (i, slot) in out.iter_mut().enumerate() {
        if b.wants(node, i) {
            let g = b.op("Mul", &[&dy, &node.input[1 - i]], vec![]);
            *slot = Some(b.unbroadcast(&g, &ys, &node.input[i])?);
        }
    }
    Ok(out)
}

/// Y = A / B: dA = unb(dY / B), dB = unb(-dY * Y / B).
fn div(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = out_shape(b, node)?;
    let mut out = vec![None, None];
    let da = b.op("Div", &[&dy, &node.input[1]], vec![]);
    if b.wants(node, 0) {
        out[0] = Some(b.unbroadcast(&da, &ys, &node.input[0])?);
    }
    if b.wants(node, 1) {
        let t = b.op("Mul", &[&da, &node.output[0]], vec![]);
        let g = b.op("Neg", &[&t], vec![]);
        out[1] = Some(b.unbroadcast(&g, &ys, &node.input[1])?);
    }
    Ok(out)
}

/// Y = A ^ B: dA = unb(dY * B * A^(B-1)), dB = unb(dY * Y * ln A).
fn pow(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = out_shape(b, node)?;
    let (a, e, y) = (&node.input[0], &node.input[1], &node.output[0]);
    let mut out = vec![None, None];
    if b.wants(node, 0) {
        // The exponent may have another type than the base (Pow allows it).
        let dtype = b.info(a)?.dtype;
        let e_cast = if b.info(e)?.dtype != dtype {
            b.op("Cast", &[e], vec![attr_i("to", dtype as i64)])
        } else {
            e.clone()
        };
        let one = b.scalar(dtype, 1.0);
        let em1 = b.op("Sub", &[&e_cast, &one], vec![]);
        let p = b.op("Pow", &[a, &em1], vec![]);
        let t = b.op("Mul", &[&p, &e_cast], vec![]);
        let g = b.op("Mul", &[&dy, &t], vec![]);
        out[0] = Some(b.unbroadcast(&g, &ys, a)?);
    }
    if b.wants(node, 1) {
        let ln = b.op("Log", &[a], vec![]);
        let t = b.op("Mul", &[y, &ln], vec![]);
        let g = b.op("Mul", &[&dy, &t], vec![]);
        out[1] = Some(b.unbroadcast(&g, &ys, e)?);
    }
    Ok(out)
}

/// Y = -X: dX = -dY.
fn neg(b: &mut Builder, _node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    Ok(vec![Some(b.op("Neg", &[&dy], vec![]))])
}

/// Y = |X|: dX = dY * sign(X) (0 at X = 0, like PyTorch).
fn abs(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let s = b.op("Sign", &[&node.input[0]], vec![]);
    Ok(vec![Some(b.op("Mul", &[&dy, &s], vec![]))])
}

/// Y = sqrt(X): dX = dY * 0.5 / Y.
fn sqrt(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let half = b.scalar_like(&node.input[0], 0.5)?;
    let t = b.op("Div", &[&half, &node.output[0]], vec![]);
    Ok(vec![Some(b.op("Mul", &[&dy, &t], vec![]))])
}

/// Y = exp(X): dX = dY * Y.
fn exp(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    Ok(vec![Some(b.op("Mul", &[&dy, &node.output[0]], vec![]))])
}

/// Y = ln(X): dX = dY / X.
fn log(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    Ok(vec![Some(b.op("Div", &[&dy, &node.input[0]], vec![]))])
}

/// Y = 1 / X: dX = -dY * Y * Y.
fn reciprocal(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let y = &node.output[0];
    let yy = b.op("Mul", &[y, y], vec![]);
    let t = b.op("Mul", &[&dy, &yy], vec![]);
    Ok(vec![Some(b.op("Neg", &[&t], vec![]))])
}

/// Y = erf(X): dX = dY * 2/sqrt(pi) * exp(-X^2).
fn erf(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let x = &node.input[0];
    let xx = b.op("Mul", &[x, x], vec![]);
    let nxx = b.op("Neg", &[&xx], vec![]);
    let e = b.op("Exp", &[&nxx], vec![]);
    let k = b.scalar_like(x, 2.0 / std::f64::consts::PI.sqrt())?;
    let t = b.op("Mul", &[&e, &k], vec![]);
    Ok(vec![Some(b.op("Mul", &[&dy, &t], vec![]))])
}

/// Y = max(X_1..X_n) (broadcast): dX_i = unb(dY * [X_i == Y]). At ties every maximal
/// operand gets the full gradient (a subgradient; ties have measure zero).
fn max(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    select(b, node, dys)
}

/// Y = min(X_1..X_n): as for Max.
fn min(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    select(b, node, dys)
}

fn select(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = out_shape(b, node)?;
    let y = &node.output[0];
    let dtype = b.info(y)?.dtype;
    let mut out = vec![None; node.input.len()];
    for (i, x) in node.input.iter().enumerate() {
        if b.wants(node, i) {
            let m = b.mask("Equal", x, y, dtype);
            let g = b.op("Mul", &[&dy, &m], vec![]);
            out[i] = Some(b.unbroadcast(&g, &ys, x)?);
        }
    }
    Ok(out)
}

/// Y = X_1 + ... + X_n (broadcast): dX_i = unb(dY).
fn sum(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = out_shape(b, node)?;
    let mut out = vec![None; node.input.len()];
    for (i, x) in node.input.iter().enumerate() {
        if b.wants(node, i) {
            out[i] = Some(b.unbroadcast(&dy, &ys, x)?);
        }
    }
    Ok(out)
}

/// Y = (X_1 + ... + X_n) / n: dX_i = unb(dY / n).
fn mean(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = out_shape(b, node)?;
    let k = b.scalar_like(&node.output[0], 1.0 / node.input.len() as f64)?;
    let g = b.op("Mul", &[&dy, &k], vec![]);
    let mut out = vec![None; node.input.len()];
    for (i, x) in node.input.iter().enumerate() {
        if b.wants(node, i) {
            out[i] = Some(b.unbroadcast(&g, &ys, x)?);
        }
    }
    Ok(out)
}

/// Y = Where(C, A, B): dA = unb(Where(C, dY, 0)), dB = unb(Where(C, 0, dY)).
fn where_(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = out_shape(b, node)?;
    let c = &node.input[0];
    let zero = b.scalar_like(&node.output[0], 0.0)?;
    let mut out = vec![None, None, None];
    if b.wants(node, 1) {
        let g = b.op("Where", &[c, &dy, &zero], vec![]);
        out[1] = Some(b.unbroadcast(&g, &ys, &node.input[1])?);
    }
    if b.wants(node, 2) {
        let g = b.op("Where", &[c, &zero, &dy], vec![]);
        out[2] = Some(b.unbroadcast(&g, &ys, &node.input[2])?);
    }
    Ok(out)
}

/// Y = X (Identity; Dropout at inference): dX = dY.
fn identity(b: &mut Builder, _node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    Ok(vec![Some(dy)])
}

/// Y = Cast(X) between float types: dX = Cast(dY) back to X's type.
fn cast(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let dtype = b.info(&node.input[0])?.dtype;
    if dtype == b.info(&node.output[0])?.dtype {
        return Ok(vec![Some(dy)]);
    }
    Ok(vec![Some(b.op(
        "Cast",
        &[&dy],
        vec![attr_i("to", dtype as i64)],
    ))])
}
