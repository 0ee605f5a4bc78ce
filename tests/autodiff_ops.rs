//! Per-op numerical checks of the gradient rules: tiny graphs built in code, the gradient model
//! compared with central finite differences through ONNX Runtime (see `ad_support::check`).
//! The maths of each rule is in the comment above it in `src/autodiff/ops/`.

mod ad_support;

use ad_support::*;

fn unary(
    op: &str,
    dtype: i32,
    attrs: Vec<integrad::proto::onnx::AttributeProto>,
    x: &T,
    opset: i64,
) {
    let m = Tiny::new(opset)
        .input("x", dtype, &x.shape)
        .node(op, &["x"], &["y"], attrs)
        .output("y", dtype)
        .build();
    let (eps, tol) = if dtype == F64 {
        (F64_EPS, F64_TOL)
    } else {
        (F32_EPS, F32_TOL)
    };
    check(&m, "x", &[("x", x)], eps, tol);
}

fn binary(op: &str, dtype: i32, a: &T, b: &T) {
    let m = Tiny::new(17)
        .input("a", dtype, &a.shape)
        .input("b", dtype, &b.shape)
        .node(op, &["a", "b"], &["y"], vec![])
        .output("y", dtype)
        .build();
    let (eps, tol) = if dtype == F64 {
        (F64_EPS, F64_TOL)
    } else {
        (F32_EPS, F32_TOL)
    };
    check(&m, "a", &[("a", a), ("b", b)], eps, tol);
    check(&m, "b", &[("a", a), ("b", b)], eps, tol);
}

fn positive(t: &T) -> T {
    T::new(
        t.dtype,
        &t.shape,
        t.data.iter().map(|v| v.abs() + 0.5).collect(),
    )
}

#[test]
fn should_diff_add_sub_mul_div_with_broadcasting() {
    let mut r = Rng::new(1);
    let a = T::random(F64, &[2, 3, 4], &mut r);
    let b = T::random(F64, &[3, 1], &mut r);
    for op in ["Add", "Sub", "Mul"] {
        binary(op, F64, &a, &b);
        binary(op, F64, &b, &a);
    }
    binary("Div", F64, &a, &positive(&b));
    binary("Div", F64, &b, &positive(&a));
    let s = T::random(F64, &[], &mut r);
    binary("Mul", F64, &a, &s);
}

#[test]
fn should_diff_pow() {
    let mut r = Rng::new(2);
    let a = positive(&T::random(F64, &[2, 3], &mut r));
    let b = T::random(F64, &[3], &mut r);
    binary("Pow", F64, &a, &b);
}

#[test]
fn should_diff_unary_math() {
    let mut r = Rng::new(3);
    let x = T::random(F64, &[2, 5], &mut r);
    let px = positive(&x);
    for op in ["Neg", "Abs", "Exp", "Tanh", "Sigmoid"] {
        unary(op, F64, vec![], &x, 17);
    }
    for op in ["Sqrt", "Log", "Reciprocal"] {
        unary(op, F64, vec![], &px, 17);
    }
    unary("Erf", F32, vec![], &x, 17);
    unary("Softplus", F32, vec![], &x, 17);
}
