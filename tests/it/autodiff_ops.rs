//! Per-op numerical checks of the gradient rules: tiny graphs built in code, the gradient model
//! compared with central finite differences through ONNX Runtime (see `ad_support::check`).
//! The maths of each rule is in the comment above it in `src/autodiff/ops/`.

use crate::ad_support;

use ad_support::*;
use integrad::autodiff::{build_gradient, GradOptions, Objective, COTANGENT, GRAD};

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
    let x32 = T::new(F32, &x.shape, x.data.clone());
    unary("Erf", F32, vec![], &x32, 17);
    unary("Softplus", F32, vec![], &x32, 17);
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
    // Dense strided convs on fewer than 16 channels take ConvTranspose, from 16 on the
    // polyphase form (ops/conv.rs): one case of the latter, asymmetric pads.
    conv_case(
        &[1, 16, 7, 8],
        &[4, 16, 3, 3],
        vec![ais("strides", &[2, 2]), ais("pads", &[0, 1, 1, 0])],
        true,
    );
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

fn attrs() -> Vec<integrad::proto::onnx::AttributeProto> {
    vec![]
}

/// One-input op with extra constant inputs given as initializers.
fn with_consts(
    op: &str,
    dtype: i32,
    x: &T,
    consts: &[(&str, T)],
    attrs: Vec<integrad::proto::onnx::AttributeProto>,
    opset: i64,
    n_out: usize,
) {
    let mut m = Tiny::new(opset).input("x", dtype, &x.shape);
    let mut ins = vec!["x".to_string()];
    for (name, t) in consts {
        if name.is_empty() {
            ins.push(String::new());
        } else {
            m = m.init(name, t);
            ins.push(name.to_string());
        }
    }
    let outs: Vec<String> = (0..n_out).map(|i| format!("y{i}")).collect();
    let ins_ref: Vec<&str> = ins.iter().map(String::as_str).collect();
    let outs_ref: Vec<&str> = outs.iter().map(String::as_str).collect();
    let m = m
        .node(op, &ins_ref, &outs_ref, attrs)
        .output("y0", dtype)
        .build();
    let (eps, tol) = if dtype == F64 {
        (F64_EPS, F64_TOL)
    } else {
        (F32_EPS, F32_TOL)
    };
    check(&m, "x", &[("x", x)], eps, tol);
}

#[test]
fn should_diff_relu_family() {
    let mut r = Rng::new(4);
    let x = T::random(F64, &[3, 4], &mut r);
    unary("Relu", F64, attrs(), &x, 17);
    unary(
        "LeakyRelu",
        F32,
        vec![af("alpha", 0.1)],
        &T::random(F32, &[3, 4], &mut r),
        17,
    );
    unary(
        "Elu",
        F32,
        vec![af("alpha", 0.7)],
        &T::random(F32, &[3, 4], &mut r),
        17,
    );
    unary("Selu", F32, attrs(), &T::random(F32, &[3, 4], &mut r), 17);
    unary(
        "HardSigmoid",
        F32,
        vec![af("alpha", 0.4), af("beta", 0.4)],
        &T::random(F32, &[3, 4], &mut r),
        17,
    );
    let wide = T::new(
        F32,
        &[2, 6],
        (0..12).map(|i| -5.3 + i as f64 * 0.93).collect(),
    );
    unary("HardSwish", F32, attrs(), &wide, 17);
}

#[test]
fn should_diff_prelu_with_broadcast_slope() {
    let mut r = Rng::new(5);
    let x = T::random(F32, &[2, 3, 2, 2], &mut r);
    let slope = T::random(F32, &[3, 1, 1], &mut r);
    let m = Tiny::new(17)
        .input("x", F32, &x.shape)
        .input("s", F32, &slope.shape)
        .node("PRelu", &["x", "s"], &["y"], vec![])
        .output("y", F32)
        .build();
    check(&m, "x", &[("x", &x), ("s", &slope)], F32_EPS, F32_TOL);
    check(&m, "s", &[("x", &x), ("s", &slope)], F32_EPS, F32_TOL);
}

#[test]
fn should_diff_gelu_exact_and_tanh() {
    let mut r = Rng::new(6);
    let x = T::random(F32, &[2, 5], &mut r);
    unary("Gelu", F32, attrs(), &x, 20);
    unary("Gelu", F32, vec![astr("approximate", "tanh")], &x, 20);
}

#[test]
fn should_diff_clip_as_relu6_and_one_sided() {
    let mut r = Rng::new(8);
    // Values spread over [-2, 8] so both bounds are active, none within eps of a bound.
    let x = T::new(
        F64,
        &[2, 3, 2, 2],
        (0..24).map(|i| -2.05 + i as f64 * 0.43).collect(),
    );
    let lo = T::new(F64, &[], vec![0.0]);
    let hi = T::new(F64, &[], vec![6.0]);
    with_consts(
        "Clip",
        F64,
        &x,
        &[("lo", lo.clone()), ("hi", hi.clone())],
        attrs(),
        17,
        1,
    );
    with_consts("Clip", F64, &x, &[("lo", lo.clone())], attrs(), 17, 1);
    with_consts(
        "Clip",
        F64,
        &x,
        &[("", lo.clone()), ("hi", hi.clone())],
        attrs(),
        17,
        1,
    );
    // float32 with 3 channels: the two-step mask (the fused one needs 16k channels, below).
    let x32 = T::new(F32, &x.shape, x.data.clone());
    let lo32 = T::new(F32, &[], vec![0.0]);
    let hi32 = T::new(F32, &[], vec![6.0]);
    with_consts(
        "Clip",
        F32,
        &x32,
        &[("lo", lo32), ("hi", hi32)],
        attrs(),
        17,
        1,
    );
    let _ = r.next();
}

/// Values of x for the bound checks of ReLU6-like clips: exactly on both bounds, one float32
/// step inside and outside them, tiny positives, around 2^(k-1) (where the fused mask's
/// exactness argument changes case, see `clip_mask`) and far out on both sides.
fn bound_values(hi: f32) -> Vec<f64> {
    let below = |v: f32| f32::from_bits(v.to_bits() - 1);
    let above = |v: f32| f32::from_bits(v.to_bits() + 1);
    let half = 2f32.powi(hi.log2().ceil() as i32 - 1);
    let v = [
        0.0,
        -0.0,
        hi,
        below(hi),
        above(hi),
        f32::from_bits(1),
        1e-30,
        1e-20,
        -1e-20,
        below(half),
        half,
        above(half),
        hi / 3.0,
        -2.0,
        hi + 1.0,
        1e6,
    ];
    v.iter().map(|&x| x as f64).collect()
}

/// Clip(0, hi) on float32 NCHW with 16 channels takes the fused mask (HardSigmoid step +
/// depthwise 1x1 Conv with Add and HardSigmoid, `clip_mask`). Its gradient must be exactly
/// cotangent * [0 < x < hi] in every element, bounds included: no tolerance, because the mask
/// is 0 or 1 and the multiplication by 1 is exact. The one documented exception, 0 < y <
/// 2^-100 (the HardSigmoid step's slope, 2^100, falls short of 1 there: the mask is 0 or 1
/// depending on hi), is the smallest subnormal here: that element may be either.
#[test]
fn should_mask_relu6_exactly_on_and_next_to_its_bounds() {
    for hi in [6.0f32, 1.0, 0.75] {
        let vals = bound_values(hi);
        let n = 16 * 2 * 8;
        let x = T::new(
            F32,
            &[1, 16, 2, 8],
            (0..n)
                .map(|i| vals[(i * 7 + i / 16) % vals.len()])
                .collect(),
        );
        let c = T::random(F32, &x.shape, &mut Rng::new(9));
        let m = Tiny::new(17)
            .input("x", F32, &x.shape)
            .init("lo", &T::new(F32, &[], vec![0.0]))
            .init("hi", &T::new(F32, &[], vec![hi as f64]))
            .node("Clip", &["x", "lo", "hi"], &["y"], vec![])
            .output("y", F32)
            .build();
        let grad = build_gradient(
            &m,
            &GradOptions {
                wrt: vec!["x".into()],
                of: None,
                objective: Objective::Logit,
            },
        )
        .unwrap();
        assert!(
            grad.emitted_ops.contains("Conv"),
            "hi {hi}: the fused mask is a depthwise Conv, got {:?}",
            grad.emitted_ops
        );
        let out = run(&grad.model, &[("x", &x), (COTANGENT, &c)]);
        for (i, (&xi, (&ci, &gi))) in x
            .data
            .iter()
            .zip(c.data.iter().zip(&out[GRAD].data))
            .enumerate()
        {
            let inside = xi > 0.0 && xi < hi as f64;
            // The model runs in float32: the cotangent passes through as its float32 value.
            let want = if inside { ci as f32 as f64 } else { 0.0 };
            let exception = xi > 0.0 && xi < 2f64.powi(-100);
            assert!(
                gi == want || (exception && gi == 0.0),
                "hi {hi}, element {i}: x = {xi:e}, gradient {gi:e}, expected {want:e}"
            );
        }
    }
}

/// Conv1x1 (identity, 16 or 48 channels) -> Clip(0, 6) -> depthwise stride-2 Conv: the
/// per-phase masks of `masked_adjoint` in their fused form, with the phases of the Clip's
/// output recomputed from the phases of x (16 channels) and taken from the output itself (48).
/// With z = x exactly, the gradient must be 0 exactly wherever x is on or outside a bound and
/// equal the same chain without the Clip elsewhere (to 1e-6 relative: the two graphs sum the
/// same products, maybe in another order), but for the 0 < x < 2^-100 exception of the test
/// above, which may also be 0.
#[test]
fn should_mask_per_phase_exactly_after_an_expansion_conv() {
    for ch in [16i64, 48] {
        per_phase_masks_exact(ch);
    }
}

fn per_phase_masks_exact(ch: i64) {
    let vals = bound_values(6.0);
    let shape = [1i64, ch, 4, 6];
    let n = (ch * 4 * 6) as usize;
    let x = T::new(
        F32,
        &shape,
        (0..n)
            .map(|i| vals[(i * 5 + i / 16) % vals.len()])
            .collect(),
    );
    let k = ch as usize;
    let eye = T::new(
        F32,
        &[ch, ch, 1, 1],
        (0..k * k)
            .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
            .collect(),
    );
    let w2 = T::random(F32, &[ch, 1, 3, 3], &mut Rng::new(11));
    let dw = vec![
        ai("group", ch),
        ais("strides", &[2, 2]),
        ais("pads", &[1, 1, 1, 1]),
    ];
    let model = |clipped: bool| {
        let mut m = Tiny::new(17)
            .input("x", F32, &shape)
            .init("eye", &eye)
            .init("w2", &w2)
            .init("lo", &T::new(F32, &[], vec![0.0]))
            .init("hi", &T::new(F32, &[], vec![6.0]))
            .node("Conv", &["x", "eye"], &["z"], vec![]);
        m = if clipped {
            m.node("Clip", &["z", "lo", "hi"], &["a"], vec![])
        } else {
            m.node("Identity", &["z"], &["a"], vec![])
        };
        m.node("Conv", &["a", "w2"], &["y"], dw.clone())
            .output("y", F32)
            .build()
    };
    let options = GradOptions {
        wrt: vec!["x".into()],
        of: None,
        objective: Objective::Logit,
    };
    let c = T::random(F32, &[1, ch, 2, 3], &mut Rng::new(12));
    let masked = build_gradient(&model(true), &options).unwrap();
    let plain = build_gradient(&model(false), &options).unwrap();
    let g = &run(&masked.model, &[("x", &x), (COTANGENT, &c)])[GRAD];
    let full = &run(&plain.model, &[("x", &x), (COTANGENT, &c)])[GRAD];
    for (i, (&xi, (&gi, &fi))) in x.data.iter().zip(g.data.iter().zip(&full.data)).enumerate() {
        let inside = xi > 0.0 && xi < 6.0;
        let exception = xi > 0.0 && xi < 2f64.powi(-100);
        if inside && !(exception && gi == 0.0) {
            assert!(
                (gi - fi).abs() <= 1e-6 * (1.0 + fi.abs()),
                "{ch} channels, element {i}: x = {xi:e}, gradient {gi:e}, without the clip {fi:e}"
            );
        } else {
            assert!(
                gi == 0.0,
                "{ch} channels, element {i}: x = {xi:e} is masked, gradient {gi:e}"
            );
        }
    }
}

#[test]
fn should_diff_softmax_and_log_softmax_on_any_axis() {
    let mut r = Rng::new(9);
    let x = T::random(F64, &[2, 3, 4], &mut r);
    for axis in [-1, 1, 0] {
        unary("Softmax", F64, vec![ai("axis", axis)], &x, 13);
        unary(
            "LogSoftmax",
            F32,
            vec![ai("axis", axis)],
            &T::new(F32, &x.shape, x.data.clone()),
            13,
        );
    }
}

#[test]
fn should_diff_gemm_all_transposes() {
    let mut r = Rng::new(10);
    for (ta, tb) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let a = T::random(F64, if ta == 1 { &[4, 3] } else { &[3, 4] }, &mut r);
        let b = T::random(F64, if tb == 1 { &[5, 4] } else { &[4, 5] }, &mut r);
        let c = T::random(F64, &[5], &mut r);
        let m = Tiny::new(17)
            .input("a", F64, &a.shape)
            .input("b", F64, &b.shape)
            .input("c", F64, &c.shape)
            .node(
                "Gemm",
                &["a", "b", "c"],
                &["y"],
                vec![
                    ai("transA", ta),
                    ai("transB", tb),
                    af("alpha", 0.7),
                    af("beta", 1.3),
                ],
            )
            .output("y", F64)
            .build();
        let ins = [("a", &a), ("b", &b), ("c", &c)];
        for wrt in ["a", "b", "c"] {
            check(&m, wrt, &ins, F64_EPS, F64_TOL);
        }
    }
}

#[test]
fn should_diff_matmul_batched_broadcast_and_vectors() {
    let mut r = Rng::new(12);
    let cases: [(&[i64], &[i64]); 5] = [
        (&[2, 3, 4], &[4, 5]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[4], &[2, 4, 3]),
        (&[2, 3, 4], &[4]),
        (&[3, 4], &[4, 2]),
    ];
    for (sa, sb) in cases {
        let a = T::random(F64, sa, &mut r);
        let b = T::random(F64, sb, &mut r);
        binary("MatMul", F64, &a, &b);
    }
}

#[test]
fn should_diff_conv_transpose() {
    let mut r = Rng::new(13);
    let cases: Vec<(
        Vec<i64>,
        Vec<i64>,
        Vec<integrad::proto::onnx::AttributeProto>,
    )> = vec![
        (vec![1, 3, 4, 5], vec![3, 2, 3, 3], vec![]),
        (
            vec![2, 2, 4, 4],
            vec![2, 3, 3, 3],
            vec![ais("strides", &[2, 2]), ais("pads", &[1, 0, 1, 1])],
        ),
        (
            vec![1, 4, 3, 3],
            vec![4, 1, 3, 3],
            vec![
                ai("group", 2),
                ais("strides", &[2, 2]),
                ais("output_padding", &[1, 1]),
            ],
        ),
        (
            vec![1, 2, 4, 4],
            vec![2, 2, 2, 2],
            vec![ais("dilations", &[2, 2]), ais("pads", &[1, 1, 1, 1])],
        ),
    ];
    for (xs, ws, at) in cases {
        let x = T::random(F32, &xs, &mut r);
        let w = T::random(F32, &ws, &mut r);
        let m = Tiny::new(17)
            .input("x", F32, &xs)
            .init("w", &w)
            .node("ConvTranspose", &["x", "w"], &["y"], at)
            .output("y", F32)
            .build();
        check(&m, "x", &[("x", &x)], F32_EPS, F32_TOL);
    }
}

#[test]
fn should_diff_batch_normalization_inference() {
    let mut r = Rng::new(14);
    let x = T::random(F64, &[2, 3, 2, 2], &mut r);
    let scale = T::random(F64, &[3], &mut r);
    let bias = T::random(F64, &[3], &mut r);
    let mean = T::random(F64, &[3], &mut r);
    let var = positive(&T::random(F64, &[3], &mut r));
    with_consts(
        "BatchNormalization",
        F64,
        &x,
        &[("s", scale), ("b", bias), ("m", mean), ("v", var)],
        vec![af("epsilon", 1e-3)],
        15,
        1,
    );
}

#[test]
fn should_diff_layer_normalization() {
    let mut r = Rng::new(15);
    let x = T::random(F32, &[2, 3, 4], &mut r);
    let scale = T::random(F32, &[4], &mut r);
    let bias = T::random(F32, &[4], &mut r);
    let m = Tiny::new(17)
        .input("x", F32, &x.shape)
        .input("s", F32, &[4])
        .input("b", F32, &[4])
        .node(
            "LayerNormalization",
            &["x", "s", "b"],
            &["y"],
            vec![af("epsilon", 1e-5)],
        )
        .output("y", F32)
        .build();
    let ins = [("x", &x), ("s", &scale), ("b", &bias)];
    for wrt in ["x", "s", "b"] {
        check(&m, wrt, &ins, F32_EPS, F32_TOL);
    }
    let scale2 = T::random(F32, &[3, 4], &mut r);
    with_consts(
        "LayerNormalization",
        F32,
        &x,
        &[("s", scale2)],
        vec![ai("axis", 1)],
        17,
        1,
    );
}

#[test]
fn should_diff_lrn() {
    let mut r = Rng::new(16);
    let x = T::random(F32, &[2, 6, 2, 3], &mut r);
    // ONNX Runtime implements odd sizes only.
    for size in [1, 3, 5] {
        unary(
            "LRN",
            F32,
            vec![
                ai("size", size),
                af("alpha", 0.5),
                af("beta", 0.75),
                af("bias", 1.5),
            ],
            &x,
            17,
        );
    }
}

#[test]
fn should_diff_max_pool_overlapping_padded_ceil_dilated() {
    let mut r = Rng::new(17);
    let cases: Vec<Vec<integrad::proto::onnx::AttributeProto>> = vec![
        vec![
            ais("kernel_shape", &[3, 3]),
            ais("strides", &[2, 2]),
            ais("pads", &[1, 1, 1, 1]),
        ],
        vec![ais("kernel_shape", &[3, 3]), ais("strides", &[1, 1])],
        vec![
            ais("kernel_shape", &[2, 3]),
            ais("strides", &[2, 2]),
            ai("ceil_mode", 1),
        ],
        vec![
            ais("kernel_shape", &[2, 2]),
            ais("dilations", &[2, 2]),
            ais("pads", &[0, 1, 1, 0]),
        ],
    ];
    for at in cases {
        // Distinct values 0.05 apart: eps 1e-3 never changes which element is the maximum.
        let x = T::distinct(F32, &[2, 2, 6, 7], 0.05, &mut r);
        let m = Tiny::new(17)
            .input("x", F32, &x.shape)
            .node("MaxPool", &["x"], &["y"], at.clone())
            .output("y", F32)
            .build();
        check(&m, "x", &[("x", &x)], 4e-3, F32_TOL);
        let m = Tiny::new(13)
            .input("x", F32, &x.shape)
            .node("MaxPool", &["x"], &["y", "i"], at)
            .output("y", F32)
            .build();
        check(&m, "x", &[("x", &x)], 4e-3, F32_TOL);
    }
}

#[test]
fn should_diff_average_pool_pads_ceil_count_include_pad() {
    let mut r = Rng::new(18);
    for include in [0, 1] {
        let cases: Vec<Vec<integrad::proto::onnx::AttributeProto>> = vec![
            vec![
                ais("kernel_shape", &[3, 3]),
                ais("strides", &[2, 2]),
                ais("pads", &[1, 1, 1, 1]),
            ],
            vec![
                ais("kernel_shape", &[3, 2]),
                ais("strides", &[1, 1]),
                ais("pads", &[1, 0, 0, 1]),
            ],
            vec![
                ais("kernel_shape", &[3, 3]),
                ais("strides", &[2, 2]),
                ai("ceil_mode", 1),
            ],
            vec![
                ais("kernel_shape", &[3, 3]),
                ais("strides", &[2, 2]),
                ais("pads", &[1, 1, 1, 1]),
                ai("ceil_mode", 1),
            ],
        ];
        for mut at in cases {
            at.push(ai("count_include_pad", include));
            let x = T::random(F32, &[1, 2, 6, 7], &mut r);
            unary("AveragePool", F32, at, &x, 17);
        }
    }
}

#[test]
fn should_diff_global_pools() {
    let mut r = Rng::new(19);
    unary(
        "GlobalAveragePool",
        F32,
        attrs(),
        &T::random(F32, &[2, 3, 4, 5], &mut r),
        17,
    );
    unary(
        "GlobalMaxPool",
        F32,
        attrs(),
        &T::distinct(F32, &[2, 3, 4, 5], 0.05, &mut r),
        17,
    );
}

#[test]
fn should_diff_reductions_axes_attribute_and_input() {
    let mut r = Rng::new(20);
    let x = T::distinct(F64, &[2, 3, 4], 0.05, &mut r);
    for keep in [0, 1] {
        // ReduceSum: axes input since opset 13; ReduceMean/Max/Min: attribute until 17.
        with_consts(
            "ReduceSum",
            F64,
            &x,
            &[("a", T::ints(&[2], &[0, -1]))],
            vec![ai("keepdims", keep)],
            13,
            1,
        );
        with_consts("ReduceSum", F64, &x, &[], vec![ai("keepdims", keep)], 13, 1);
        for op in ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare"] {
            with_consts(
                op,
                F64,
                &x,
                &[],
                vec![ai("keepdims", keep), ais("axes", &[1])],
                13,
                1,
            );
            with_consts(
                op,
                F64,
                &x,
                &[("a", T::ints(&[2], &[2, 0]))],
                vec![ai("keepdims", keep)],
                18,
                1,
            );
        }
    }
}

#[test]
fn should_diff_concat_and_split_both_forms() {
    let mut r = Rng::new(21);
    let a = T::random(F64, &[2, 3], &mut r);
    let b = T::random(F64, &[2, 2], &mut r);
    let m = Tiny::new(17)
        .input("a", F64, &a.shape)
        .input("b", F64, &b.shape)
        .node("Concat", &["a", "b", "a"], &["y"], vec![ai("axis", -1)])
        .output("y", F64)
        .build();
    check(&m, "a", &[("a", &a), ("b", &b)], F64_EPS, F64_TOL);
    check(&m, "b", &[("a", &a), ("b", &b)], F64_EPS, F64_TOL);
    // Split with sizes as input (opset 13), then only some outputs used.
    let x = T::random(F64, &[2, 7], &mut r);
    let m = Tiny::new(13)
        .input("x", F64, &x.shape)
        .init("s", &T::ints(&[3], &[2, 4, 1]))
        .node("Split", &["x", "s"], &["p", "q", "u"], vec![ai("axis", 1)])
        .node("Mul", &["p", "u"], &["pu"], vec![])
        .node("Concat", &["pu", "q"], &["y"], vec![ai("axis", 1)])
        .output("y", F64)
        .build();
    check(&m, "x", &[("x", &x)], F64_EPS, F64_TOL);
    // Split with num_outputs (opset 18), one output unused.
    let x = T::random(F64, &[4, 3], &mut r);
    let m = Tiny::new(18)
        .input("x", F64, &x.shape)
        .node(
            "Split",
            &["x"],
            &["p", "q"],
            vec![ai("axis", 0), ai("num_outputs", 2)],
        )
        .node("Exp", &["q"], &["y"], vec![])
        .output("y", F64)
        .build();
    check(&m, "x", &[("x", &x)], F64_EPS, F64_TOL);
}

#[test]
fn should_diff_slice_steps_and_negative_indices() {
    let mut r = Rng::new(22);
    let x = T::random(F64, &[3, 8, 5], &mut r);
    // (starts, ends, axes, steps)
    type SliceCase<'a> = (&'a [i64], &'a [i64], &'a [i64], &'a [i64]);
    let cases: [SliceCase; 4] = [
        (&[1, 0], &[3, 6], &[0, 1], &[1, 2]),
        (&[-1], &[-100], &[1], &[-2]),
        (&[0, -4], &[2, 1000], &[2, 1], &[1, 1]),
        (&[4, 1], &[0, 3], &[-1, 0], &[-1, 1]),
    ];
    for (s, e, a, st) in cases {
        let n = s.len() as i64;
        with_consts(
            "Slice",
            F64,
            &x,
            &[
                ("s", T::ints(&[n], s)),
                ("e", T::ints(&[n], e)),
                ("a", T::ints(&[n], a)),
                ("t", T::ints(&[n], st)),
            ],
            attrs(),
            13,
            1,
        );
    }
}

#[test]
fn should_diff_pad_constant_including_crops() {
    let mut r = Rng::new(23);
    let x = T::random(F64, &[2, 3, 4], &mut r);
    with_consts(
        "Pad",
        F64,
        &x,
        &[("p", T::ints(&[6], &[0, 1, 2, 0, 0, 1]))],
        attrs(),
        13,
        1,
    );
    with_consts(
        "Pad",
        F64,
        &x,
        &[("p", T::ints(&[6], &[0, -1, 2, 0, 1, -2]))],
        attrs(),
        13,
        1,
    );
    with_consts(
        "Pad",
        F64,
        &x,
        &[
            ("p", T::ints(&[4], &[1, 2, 0, 3])),
            ("v", T::new(F64, &[], vec![0.5])),
            ("ax", T::ints(&[2], &[1, 2])),
        ],
        attrs(),
        18,
        1,
    );
}

#[test]
fn should_diff_reshape_flatten_squeeze_unsqueeze_transpose_expand() {
    let mut r = Rng::new(24);
    let x = T::random(F64, &[2, 3, 4], &mut r);
    with_consts(
        "Reshape",
        F64,
        &x,
        &[("s", T::ints(&[2], &[4, -1]))],
        attrs(),
        13,
        1,
    );
    with_consts(
        "Reshape",
        F64,
        &x,
        &[("s", T::ints(&[3], &[0, 2, 6]))],
        attrs(),
        13,
        1,
    );
    unary("Flatten", F64, vec![ai("axis", 2)], &x, 13);
    unary("Transpose", F64, vec![ais("perm", &[2, 0, 1])], &x, 13);
    unary("Transpose", F64, attrs(), &x, 13);
    with_consts(
        "Unsqueeze",
        F64,
        &x,
        &[("a", T::ints(&[2], &[0, -1]))],
        attrs(),
        13,
        1,
    );
    let y = T::random(F64, &[2, 1, 4, 1], &mut r);
    with_consts(
        "Squeeze",
        F64,
        &y,
        &[("a", T::ints(&[1], &[3]))],
        attrs(),
        13,
        1,
    );
    with_consts("Squeeze", F64, &y, &[], attrs(), 13, 1);
    with_consts(
        "Expand",
        F64,
        &y,
        &[("s", T::ints(&[5], &[3, 2, 5, 4, 2]))],
        attrs(),
        13,
        1,
    );
}

#[test]
fn should_diff_identity_dropout_cast_where_max_min_sum_mean() {
    let mut r = Rng::new(25);
    let x = T::random(F64, &[2, 3], &mut r);
    unary("Identity", F64, attrs(), &x, 13);
    with_consts("Dropout", F64, &x, &[], attrs(), 13, 2);
    let m = Tiny::new(13)
        .input("x", F32, &x.shape)
        .node("Cast", &["x"], &["y"], vec![ai("to", F64 as i64)])
        .output("y", F64)
        .build();
    let x32 = T::new(F32, &x.shape, x.data.clone());
    check(&m, "x", &[("x", &x32)], F32_EPS, F32_TOL);
    let a = T::distinct(F64, &[2, 3], 0.05, &mut r);
    let b = T::distinct(F64, &[3], 0.07, &mut r);
    binary("Max", F64, &a, &b);
    binary("Min", F64, &a, &b);
    binary("Sum", F64, &a, &b);
    // ONNX Runtime has no float64 Mean.
    let (a32, b32) = (
        T::new(F32, &a.shape, a.data.clone()),
        T::new(F32, &b.shape, b.data.clone()),
    );
    binary("Mean", F32, &a32, &b32);
    // Where(k > 0, a, b), the condition from another input.
    let k = T::random(F64, &[2, 3], &mut r);
    let m = Tiny::new(16)
        .input("a", F64, &[2, 3])
        .input("b", F64, &[3])
        .input("k", F64, &[2, 3])
        .init("z", &T::new(F64, &[], vec![0.0]))
        .node("Greater", &["k", "z"], &["c"], vec![])
        .node("Where", &["c", "a", "b"], &["y"], vec![])
        .output("y", F64)
        .build();
    let ins = [("a", &a), ("b", &b), ("k", &k)];
    check(&m, "a", &ins, F64_EPS, F64_TOL);
    check(&m, "b", &ins, F64_EPS, F64_TOL);
    // Greater has no gradient: k does not reach the output through differentiable ops.
    let err = integrad::autodiff::build_gradient(
        &m,
        &integrad::autodiff::GradOptions {
            wrt: vec!["k".into()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, integrad::autodiff::AutodiffError::NoPath { .. }),
        "{err}"
    );
}

#[test]
fn should_diff_gather_constant_scalar_and_dynamic_indices() {
    let mut r = Rng::new(26);
    let x = T::random(F64, &[5, 4], &mut r);
    with_consts(
        "Gather",
        F64,
        &x,
        &[("i", T::ints(&[3], &[4, 0, -2]))],
        vec![ai("axis", 0)],
        13,
        1,
    );
    with_consts(
        "Gather",
        F64,
        &x,
        &[("i", T::ints(&[2], &[3, 1]))],
        vec![ai("axis", 1)],
        13,
        1,
    );
    with_consts(
        "Gather",
        F64,
        &x,
        &[("i", T::ints(&[], &[2]))],
        vec![ai("axis", 1)],
        13,
        1,
    );
    with_consts(
        "Gather",
        F64,
        &x,
        &[("i", T::ints(&[2, 2], &[1, 1, 4, 0]))],
        vec![ai("axis", 0)],
        13,
        1,
    );
    // Indices as a runtime input (an embedding lookup, repeated ids).
    let ids = T::ints(&[2, 3], &[0, 4, 4, 2, 0, 1]);
    let m = Tiny::new(13)
        .input("x", F64, &[5, 4])
        .input("ids", I64, &[2, 3])
        .node("Gather", &["x", "ids"], &["y"], vec![])
        .output("y", F64)
        .build();
    check(&m, "x", &[("x", &x), ("ids", &ids)], F64_EPS, F64_TOL);
}

/// Opsets 11 and 12: axes (and split sizes) are attributes of ReduceSum, Squeeze, Unsqueeze
/// and Split, in the forward graph and in the backward nodes the builder writes; Softmax
/// normalises over every axis from `axis` on.
#[test]
fn should_diff_opset_11_attribute_forms() {
    let mut r = Rng::new(27);
    let x = T::random(F64, &[2, 3, 4], &mut r);
    for keep in [0, 1] {
        unary(
            "ReduceSum",
            F64,
            vec![ais("axes", &[0, 2]), ai("keepdims", keep)],
            &x,
            11,
        );
        unary(
            "ReduceMean",
            F64,
            vec![ais("axes", &[1]), ai("keepdims", keep)],
            &x,
            11,
        );
    }
    unary("Unsqueeze", F64, vec![ais("axes", &[0, 3])], &x, 11);
    let y = T::random(F64, &[2, 1, 4, 1], &mut r);
    unary("Squeeze", F64, vec![ais("axes", &[1])], &y, 11);
    unary("Softmax", F64, vec![ai("axis", 1)], &x, 11);
    unary("LogSoftmax", F64, vec![], &x, 12);
    let m = Tiny::new(11)
        .input("x", F64, &[2, 7])
        .node(
            "Split",
            &["x"],
            &["p", "q"],
            vec![ai("axis", 1), ais("split", &[3, 4])],
        )
        .node("Exp", &["q"], &["y"], vec![])
        .output("y", F64)
        .build();
    check(
        &m,
        "x",
        &[("x", &T::random(F64, &[2, 7], &mut r))],
        F64_EPS,
        F64_TOL,
    );
    // Backward nodes that un-broadcast (ReduceSum + Squeeze) or handle 1-D MatMul operands.
    let a = T::random(F64, &[2, 3, 4], &mut r);
    let b = T::random(F64, &[4], &mut r);
    let m = Tiny::new(11)
        .input("a", F64, &a.shape)
        .input("b", F64, &b.shape)
        .node("Add", &["a", "b"], &["s"], vec![])
        .node("MatMul", &["s", "b"], &["y"], vec![])
        .output("y", F64)
        .build();
    check(&m, "a", &[("a", &a), ("b", &b)], F64_EPS, F64_TOL);
    check(&m, "b", &[("a", &a), ("b", &b)], F64_EPS, F64_TOL);
}

/// Conv1x1 -> Clip(0, 6) -> (Pad ->) depthwise stride-2 Conv: the strided conv's adjoint
/// takes the mask and the 1x1 conv's adjoint per phase (`masked_adjoint` in ops/conv.rs).
#[test]
fn should_diff_strided_conv_after_relu6_expansion() {
    let w1 = T::new(
        F32,
        &[4, 2, 1, 1],
        vec![3.0, 1.0, 1.0, -4.0, 2.0, 2.5, -3.0, 2.0],
    );
    let b1 = T::new(F32, &[4], vec![3.0, 2.0, 1.0, 4.0]);
    let w2 = T::random(F32, &[4, 1, 3, 3], &mut Rng::new(5));
    // Inputs whose pre-activations stay 0.05 away from both kinks (a step moves them by
    // at most 0.016 with eps 4e-3), so no central difference crosses one.
    let x = (0..500)
        .map(|seed| T::random(F32, &[1, 2, 4, 6], &mut Rng::new(100 + seed)))
        .find(|x| {
            (0..4).all(|o| {
                (0..24).all(|p| {
                    let w = &w1.data;
                    let z = w[2 * o] * x.data[p] + w[2 * o + 1] * x.data[24 + p] + b1.data[o];
                    z.abs() > 0.05 && (z - 6.0).abs() > 0.05
                })
            })
        })
        .expect("an input away from the kinks");
    for padded in [false, true] {
        let lo = T::new(F32, &[], vec![0.0]);
        let hi = T::new(F32, &[], vec![6.0]);
        let mut m = Tiny::new(17)
            .input("x", F32, &x.shape)
            .init("w1", &w1)
            .init("b1", &b1)
            .init("w2", &w2)
            .init("lo", &lo)
            .init("hi", &hi)
            .node("Conv", &["x", "w1", "b1"], &["z"], vec![])
            .node("Clip", &["z", "lo", "hi"], &["a"], vec![]);
        m = if padded {
            m.init("pads", &T::ints(&[8], &[0, 0, 0, 1, 0, 0, 1, 2]))
                .node("Pad", &["a", "pads"], &["ap"], vec![])
                .node(
                    "Conv",
                    &["ap", "w2"],
                    &["y"],
                    vec![ai("group", 4), ais("strides", &[2, 2])],
                )
        } else {
            m.node(
                "Conv",
                &["a", "w2"],
                &["y"],
                vec![
                    ai("group", 4),
                    ais("strides", &[2, 2]),
                    ais("pads", &[1, 1, 1, 1]),
                ],
            )
        };
        let m = m.output("y", F32).build();
        check(&m, "x", &[("x", &x)], 4e-3, F32_TOL);
    }
}

/// Gather along a dynamic axis with constant indices (a transformer pooler's `hidden[:, 0]`):
/// a scalar index, distinct indices with a negative one, and a repeated index (whose
/// gradients add up), the axis declared with unknown size. (The builder probes the graph at
/// size 2 for unknown dimensions, so the indices stay within [-2, 1].)
#[test]
fn should_diff_gather_along_a_dynamic_axis() {
    let mut r = Rng::new(61);
    // Both unknown dimensions share the test models' one symbol: equal sizes.
    let x = T::random(F64, &[5, 5, 4], &mut r);
    for (shape, indices) in [
        (vec![], vec![0]),
        (vec![3], vec![1, 0, -1]),
        (vec![3], vec![1, 1, 0]),
    ] {
        let m = Tiny::new(17)
            .input("x", F64, &[-1, -1, 4])
            .init("i", &T::ints(&shape, &indices))
            .node("Gather", &["x", "i"], &["y"], vec![ai("axis", 1)])
            .output("y", F64)
            .build();
        check(&m, "x", &[("x", &x)], F64_EPS, F64_TOL);
    }
}

/// Slice with sizes known only at run time: ends from Shape (`x[:, 1:len - 1]`, as exporters
/// write `position_ids[:, :seq_len]`), and constant starts and ends on an axis of unknown
/// size (negative, and past the end).
#[test]
fn should_diff_slice_with_run_time_sizes() {
    let mut r = Rng::new(62);
    // Both unknown dimensions share the test models' one symbol: equal sizes.
    let x = T::random(F64, &[5, 5, 4], &mut r);
    let from_shape = Tiny::new(17)
        .input("x", F64, &[-1, -1, 4])
        .init("one", &T::ints(&[1], &[1]))
        .init("two", &T::ints(&[1], &[2]))
        .init("axes", &T::ints(&[1], &[1]))
        .node("Shape", &["x"], &["shape"], vec![])
        .node("Slice", &["shape", "one", "two"], &["len"], vec![])
        .node("Sub", &["len", "one"], &["end"], vec![])
        .node("Slice", &["x", "one", "end", "axes"], &["y"], vec![])
        .output("y", F64)
        .build();
    check(&from_shape, "x", &[("x", &x)], F64_EPS, F64_TOL);
    for (starts, ends) in [(-3, i64::MAX), (1, -1), (0, 2)] {
        let m = Tiny::new(17)
            .input("x", F64, &[-1, -1, 4])
            .init("starts", &T::ints(&[1], &[starts]))
            .init("ends", &T::ints(&[1], &[ends]))
            .init("axes", &T::ints(&[1], &[1]))
            .node("Slice", &["x", "starts", "ends", "axes"], &["y"], vec![])
            .output("y", F64)
            .build();
        check(&m, "x", &[("x", &x)], F64_EPS, F64_TOL);
    }
}
