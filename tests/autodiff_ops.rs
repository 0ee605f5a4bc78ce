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

fn conv_case(
    x_shape: &[i64],
    w_shape: &[i64],
    attrs: Vec<integrad::proto::onnx::AttributeProto>,
    bias: bool,
) {
    let mut r = Rng::new(11);
    let x = T::random(F32, x_shape, &mut r);
    let w = T::random(F32, w_shape, &mut r);
    let bvec = T::random(F32, &[w_shape[0]], &mut r);
    let mut m = Tiny::new(17).input("x", F32, x_shape).init("w", &w);
    let mut ins = vec!["x", "w"];
    if bias {
        m = m.init("b", &bvec);
        ins.push("b");
    }
    let m = m.node("Conv", &ins, &["y"], attrs).output("y", F32).build();
    // Conv is linear in x: central differences have no truncation error, only float32
    // rounding (~1e-7 |f| / eps).
    check(&m, "x", &[("x", &x)], F32_EPS, F32_TOL);
}

#[test]
fn should_diff_conv_stride1_pads_dilation_groups() {
    conv_case(
        &[2, 3, 6, 7],
        &[4, 3, 3, 3],
        vec![ais("pads", &[1, 1, 1, 1])],
        true,
    );
    conv_case(
        &[1, 2, 7, 6],
        &[3, 2, 3, 2],
        vec![ais("pads", &[0, 2, 1, 0])],
        false,
    );
    conv_case(
        &[1, 2, 8, 8],
        &[2, 2, 3, 3],
        vec![ais("dilations", &[2, 2]), ais("pads", &[2, 1, 0, 2])],
        false,
    );
    conv_case(
        &[1, 4, 5, 5],
        &[6, 2, 3, 3],
        vec![ai("group", 2), ais("pads", &[1, 1, 1, 1])],
        true,
    );
    conv_case(
        &[1, 4, 5, 5],
        &[4, 1, 3, 3],
        vec![ai("group", 4), ais("pads", &[1, 1, 1, 1])],
        false,
    );
    conv_case(
        &[1, 3, 5, 5],
        &[2, 3, 1, 1],
        vec![ais("pads", &[1, 0, 0, 1])],
        false,
    );
}

#[test]
fn should_diff_conv_strided_and_auto_pad() {
    conv_case(
        &[2, 3, 7, 8],
        &[4, 3, 3, 3],
        vec![ais("strides", &[2, 2]), ais("pads", &[0, 0, 1, 1])],
        true,
    );
    conv_case(
        &[1, 4, 9, 9],
        &[4, 1, 5, 5],
        vec![
            ai("group", 4),
            ais("strides", &[2, 2]),
            ais("pads", &[1, 2, 2, 1]),
        ],
        false,
    );
    conv_case(
        &[1, 2, 10, 11],
        &[3, 2, 3, 3],
        vec![ais("strides", &[3, 2]), ais("pads", &[1, 1, 1, 1])],
        false,
    );
    conv_case(
        &[1, 2, 8, 8],
        &[3, 2, 1, 1],
        vec![ais("strides", &[2, 2])],
        false,
    );
    conv_case(
        &[1, 2, 9, 9],
        &[2, 2, 3, 3],
        vec![ais("strides", &[2, 2]), ais("dilations", &[2, 2])],
        false,
    );
    conv_case(
        &[1, 2, 7, 7],
        &[2, 2, 3, 3],
        vec![ais("strides", &[2, 2]), astr("auto_pad", "SAME_UPPER")],
        false,
    );
    conv_case(
        &[1, 2, 8, 8],
        &[2, 2, 4, 4],
        vec![ais("strides", &[2, 2]), astr("auto_pad", "SAME_LOWER")],
        false,
    );
    conv_case(
        &[1, 2, 7, 7],
        &[2, 2, 3, 3],
        vec![astr("auto_pad", "VALID")],
        false,
    );
    conv_case(
        &[2, 3, 10],
        &[4, 3, 3],
        vec![ais("strides", &[2]), ais("pads", &[1, 0])],
        true,
    );
}
