//! Gradient rules, one file per op family. Each family's `register` puts its ops in the
//! registry; ops with no gradient and refused ops are listed here.

mod activation;
mod conv;
mod elementwise;
mod matmul;
mod norm;
mod pool;
mod reduce;
mod shape;

use super::registry::Registry;

pub fn register(r: &mut Registry) {
    elementwise::register(r);
    activation::register(r);
    matmul::register(r);
    conv::register(r);
    pool::register(r);
    norm::register(r);
    reduce::register(r);
    shape::register(r);

    // Outputs that are integers, booleans, or piecewise constant: no gradient flows.
    r.no_gradient(&[
        "Shape",
        "Size",
        "ArgMax",
        "ArgMin",
        "Equal",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "And",
        "Or",
        "Not",
        "Xor",
        "IsNaN",
        "IsInf",
        "Constant",
        "ConstantOfShape",
        "NonZero",
        "Range",
        "EyeLike",
        "OneHot",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "TopK",
        "NonMaxSuppression",
        "QuantizeLinear",
    ]);

    r.refuse(
        "MaxUnpool",
        "its gradient is not implemented (and MaxPool gradients do not use it)",
    );
    for op in ["If", "Loop", "Scan"] {
        r.refuse(op, "control flow (subgraphs) is not differentiated");
    }
}

/// Normalises a possibly negative axis for a tensor of rank `rank`.
pub(crate) fn axis(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64) as usize
    } else {
        a as usize
    }
}
