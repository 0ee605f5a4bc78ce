//! The builder's contract beyond single ops: refusals name the op and node, ops off the path do
//! not matter, inner tensors (a prefix model plus a gradient model), and the CLI entry point
//! (the gradient model, or with `--step` the IG step model Explain runs).

use crate::ad_support;
use crate::common;

use ad_support::*;
use integrad::autodiff::registry::{Class, Registry};
use integrad::autodiff::{
    build_gradient, run_autodiff_cli, AutodiffError, GradOptions, Objective, COTANGENT, GRAD,
};
use integrad::explain::step;
use integrad::proto::onnx::{ModelProto, NodeProto, OperatorSetIdProto};
use prost::Message;

fn options(wrt: Option<&str>) -> GradOptions {
    GradOptions {
        wrt: wrt.map(str::to_string).into_iter().collect(),
        ..Default::default()
    }
}

#[test]
fn should_refuse_an_unsupported_op_on_the_path_naming_it() {
    let m = Tiny::new(17)
        .input("x", F32, &[2, 3])
        .node("Relu", &["x"], &["r"], vec![])
        .node("Sin", &["r"], &["s"], vec![])
        .node("Add", &["s", "x"], &["y"], vec![])
        .output("y", F32)
        .build();
    let err = build_gradient(&m, &options(None)).unwrap_err();
    match &err {
        AutodiffError::Unsupported(list) => {
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].op_type, "Sin");
            assert_eq!(list[0].node, "Sin_1");
        }
        other => panic!("unexpected error {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("Sin") && text.contains("Sin_1"), "{text}");
}

#[test]
fn should_refuse_ops_of_other_domains_and_refused_classes() {
    let m = Tiny::new(17)
        .input("x", F32, &[1, 1, 4, 4])
        .node(
            "MaxPool",
            &["x"],
            &["p", "i"],
            vec![ais("kernel_shape", &[2, 2]), ais("strides", &[2, 2])],
        )
        .node(
            "MaxUnpool",
            &["p", "i"],
            &["y"],
            vec![ais("kernel_shape", &[2, 2]), ais("strides", &[2, 2])],
        )
        .output("y", F32)
        .build();
    let err = build_gradient(&m, &options(None)).unwrap_err();
    assert!(err.to_string().contains("MaxUnpool"), "{err}");

    // An op of another domain is in no class, even one whose name has a rule in the ONNX
    // domain: Gelu of com.microsoft (an ONNX Runtime contrib op). ONNX Runtime runs the
    // forward model, so the builder's probe passes and the refusal can only be the registry's.
    let gelu = |domain: &str, opset: i64| {
        let mut m = Tiny::new(opset)
            .input("x", F32, &[2, 3])
            .node("Gelu", &["x"], &["y"], vec![])
            .output("y", F32)
            .build();
        m.graph.as_mut().unwrap().node[0].domain = Some(domain.into());
        if !domain.is_empty() {
            m.opset_import.push(OperatorSetIdProto {
                domain: Some(domain.into()),
                version: Some(1),
            });
        }
        m
    };
    let x = T::new(F32, &[2, 3], vec![-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]);
    let foreign = gelu("com.microsoft", 17);
    assert!(run(&foreign, &[("x", &x)]).contains_key("y"));
    let err = build_gradient(&foreign, &options(None)).unwrap_err();
    match &err {
        AutodiffError::Unsupported(list) => {
            assert_eq!(list.len(), 1, "{err}");
            assert_eq!(list[0].op_type, "com.microsoft.Gelu");
            assert_eq!(list[0].node, "Gelu_0");
            // Said as what it is, with what to serve instead.
            assert!(list[0].reason.contains("ONNX Runtime contrib op"), "{err}");
            assert!(list[0].reason.contains("as exported"), "{err}");
        }
        other => panic!("expected the registry's refusal, got: {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("com.microsoft.Gelu") && text.contains("Gelu_0"),
        "{text}"
    );
    // The same node in the ONNX domain (Gelu is ONNX's since opset 20) has its rule.
    build_gradient(&gelu("", 20), &options(None)).unwrap();
}

#[test]
fn should_class_no_op_of_a_custom_domain_in_the_registry() {
    // The registry alone, on nodes built here: ONNX Runtime never sees them.
    let registry = Registry::standard();
    let node = |domain: &str, op: &str| NodeProto {
        domain: Some(domain.into()),
        op_type: Some(op.into()),
        name: Some(format!("{op}_0")),
        input: vec!["x".into()],
        output: vec!["y".into()],
        ..Default::default()
    };
    assert!(registry
        .class_of(&node("com.example", "Frobnicate"))
        .is_none());
    // The domain decides, not the op type's name.
    for domain in ["", "ai.onnx"] {
        assert!(matches!(
            registry.class_of(&node(domain, "Gelu")),
            Some(Class::Rule(_))
        ));
    }
    assert!(registry.class_of(&node("com.example", "Gelu")).is_none());
}

#[test]
fn should_ignore_unsupported_ops_off_the_path() {
    // Sin of a constant, and Sin of x feeding an output that is not differentiated.
    let m = Tiny::new(17)
        .input("x", F32, &[2, 3])
        .init("c", &T::new(F32, &[3], vec![0.1, 0.2, 0.3]))
        .node("Sin", &["c"], &["sc"], vec![])
        .node("Mul", &["x", "sc"], &["y"], vec![])
        .node("Sin", &["x"], &["other"], vec![])
        .output("y", F32)
        .output("other", F32)
        .build();
    let mut r = Rng::new(1);
    let x = T::random(F32, &[2, 3], &mut r);
    check(&m, "x", &[("x", &x)], F32_EPS, F32_TOL);
    let grad = build_gradient(&m, &options(None)).unwrap();
    let outs: Vec<&str> = grad
        .model
        .graph
        .as_ref()
        .unwrap()
        .output
        .iter()
        .map(|o| o.name())
        .collect();
    assert_eq!(outs, [GRAD, "y", "other"]);
}

#[test]
fn should_sum_gradients_of_a_tensor_used_twice_and_keep_batch_dynamic() {
    // y = x * x + relu(x): x feeds three places; the batch dimension is symbolic.
    let m = Tiny::new(17)
        .input("x", F64, &[-1, 3])
        .node("Mul", &["x", "x"], &["xx"], vec![])
        .node("Relu", &["x"], &["r"], vec![])
        .node("Add", &["xx", "r"], &["y"], vec![])
        .output("y", F64)
        .build();
    let mut r = Rng::new(2);
    for batch in [1, 4] {
        let x = T::random(F64, &[batch, 3], &mut r);
        check(&m, "x", &[("x", &x)], F64_EPS, F64_TOL);
    }
}

#[test]
fn should_diff_the_probability_objective() {
    let m = Tiny::new(17)
        .input("x", F64, &[-1, 4])
        .node("Tanh", &["x"], &["y"], vec![])
        .output("y", F64)
        .build();
    let mut r = Rng::new(3);
    let x = T::random(F64, &[3, 4], &mut r);
    check_with(
        &m,
        "x",
        &[("x", &x)],
        F64_EPS,
        F64_TOL,
        Objective::Probability,
    );
}

/// A binary or multi-label head's probability: sigmoid(y) elementwise, never a softmax.
#[test]
fn should_diff_the_sigmoid_objective() {
    let m = Tiny::new(17)
        .input("x", F64, &[-1, 4])
        .node("Tanh", &["x"], &["y"], vec![])
        .output("y", F64)
        .build();
    let mut r = Rng::new(5);
    let x = T::random(F64, &[3, 4], &mut r);
    check_with(&m, "x", &[("x", &x)], F64_EPS, F64_TOL, Objective::Sigmoid);
}

/// An embedding lookup: ids -> Gather -> e -> MatMul -> Tanh -> y, differentiated with respect
/// to the inner tensor e (layer attribution for token inputs).
#[test]
fn should_diff_with_respect_to_an_inner_tensor() {
    let mut r = Rng::new(4);
    let emb = T::random(F32, &[6, 4], &mut r);
    let w = T::random(F32, &[4, 3], &mut r);
    let m = Tiny::new(17)
        .input("ids", I64, &[-1, 2])
        .init("emb", &emb)
        .init("w", &w)
        .node("Gather", &["emb", "ids"], &["e"], vec![])
        .node("MatMul", &["e", "w"], &["h"], vec![])
        .node("Tanh", &["h"], &["y"], vec![])
        .output("y", F32)
        .build();
    let grad = build_gradient(&m, &options(Some("e"))).unwrap();
    let prefix = grad.prefix.as_ref().expect("a prefix model");
    let ids = T::ints(&[2, 2], &[1, 5, 0, 1]);
    let e = run(prefix, &[("ids", &ids)])["e"].clone();
    assert_eq!(e.shape, [2, 2, 4]);
    let inputs: Vec<&str> = grad
        .model
        .graph
        .as_ref()
        .unwrap()
        .input
        .iter()
        .map(|i| i.name())
        .collect();
    assert_eq!(inputs, ["ids", "e", COTANGENT]);
    // Finite differences on e through the gradient model itself (it returns y too).
    let c = T::random(F32, &[2, 2, 3], &mut r);
    let f = |e: &T| -> f64 {
        let out = run_cached(&grad.model, &[("ids", &ids), ("e", e), (COTANGENT, &c)]);
        out["y"].data.iter().zip(&c.data).map(|(a, b)| a * b).sum()
    };
    let g = run(&grad.model, &[("ids", &ids), ("e", &e), (COTANGENT, &c)])[GRAD].clone();
    assert_eq!(g.shape, e.shape);
    for i in 0..e.data.len() {
        let (mut ep, mut em) = (e.clone(), e.clone());
        ep.data[i] += F32_EPS;
        em.data[i] -= F32_EPS;
        let fd = (f(&ep) - f(&em)) / (2.0 * F32_EPS);
        assert!(
            (fd - g.data[i]).abs() <= F32_TOL * 2.0,
            "{i}: fd {fd} grad {}",
            g.data[i]
        );
    }
}

/// Two tensors in one backward pass: a float input x and the inner embedding e (as a tabular
/// model's numeric columns and its categorical lookup). Each gradient must be what the
/// single-tensor gradient model gives, and tensors that depend on one another are refused.
#[test]
fn should_diff_with_respect_to_several_tensors_at_once() {
    let mut r = Rng::new(9);
    let emb = T::random(F32, &[6, 4], &mut r);
    let w = T::random(F32, &[4, 3], &mut r);
    let m = Tiny::new(17)
        .input("ids", I64, &[-1, 2])
        .input("x", F32, &[-1, 2, 4])
        .init("emb", &emb)
        .init("w", &w)
        .node("Gather", &["emb", "ids"], &["e"], vec![])
        .node("Mul", &["e", "x"], &["ex"], vec![])
        .node("MatMul", &["ex", "w"], &["h"], vec![])
        .node("Tanh", &["h"], &["y"], vec![])
        .output("y", F32)
        .build();
    let both = GradOptions {
        wrt: vec!["x".into(), "e".into()],
        ..options(None)
    };
    let grad = build_gradient(&m, &both).unwrap();
    assert_eq!(grad.wrt, ["x", "e"]);
    let outputs: Vec<&str> = grad
        .model
        .graph
        .as_ref()
        .unwrap()
        .output
        .iter()
        .map(|o| o.name())
        .collect();
    assert_eq!(outputs[..3], [GRAD, "grad_1", "y"]);
    let ids = T::ints(&[2, 2], &[1, 5, 0, 1]);
    let x = T::random(F32, &[2, 2, 4], &mut r);
    let e = run(grad.prefix.as_ref().unwrap(), &[("ids", &ids)])["e"].clone();
    let c = T::random(F32, &[2, 2, 3], &mut r);
    let feeds = [("ids", &ids), ("x", &x), ("e", &e), (COTANGENT, &c)];
    let together = run(&grad.model, &feeds);
    for (name, output) in [("x", GRAD), ("e", "grad_1")] {
        let alone = build_gradient(&m, &options(Some(name))).unwrap();
        let feeds: Vec<(&str, &T)> = match name {
            "x" => vec![("ids", &ids), ("x", &x), (COTANGENT, &c)],
            _ => vec![("ids", &ids), ("x", &x), ("e", &e), (COTANGENT, &c)],
        };
        let want = run(&alone.model, &feeds)[GRAD].clone();
        // The same backward nodes for each tensor: equal to float32 rounding.
        assert_eq!(together[output].shape, want.shape);
        for (a, b) in together[output].data.iter().zip(&want.data) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{name}: {a} vs {b}"
            );
        }
    }
    // ex depends on x: the two can't move independently.
    let nested = GradOptions {
        wrt: vec!["x".into(), "ex".into()],
        ..options(None)
    };
    let err = build_gradient(&m, &nested).unwrap_err().to_string();
    assert!(err.contains("\"ex\" depends on \"x\""), "{err}");
}

#[test]
fn should_write_a_gradient_model_from_the_cli_entry_point() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grad.onnx");
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/efficientnet-lite0/model.onnx");
    let report = run_autodiff_cli(&model, &out, &[], None, Objective::Probability, false).unwrap();
    assert!(
        report.contains("Conv") && report.contains("Clip"),
        "{report}"
    );
    let written = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let g = written.graph.unwrap();
    assert_eq!(g.output[0].name(), GRAD);
    assert_eq!(g.input.last().unwrap().name(), COTANGENT);
    // A refusal is an error that names the op.
    let bad = dir.path().join("bad.onnx");
    let m = Tiny::new(17)
        .input("x", F32, &[2])
        .node("Sin", &["x"], &["y"], vec![])
        .output("y", F32)
        .build();
    std::fs::write(&bad, m.encode_to_vec()).unwrap();
    let err = run_autodiff_cli(&bad, &out, &[], None, Objective::Logit, false).unwrap_err();
    assert!(format!("{err:#}").contains("Sin"), "{err:#}");
}

#[test]
fn should_write_explains_step_model_with_step() {
    // `--step`: the IG step model Explain runs, so that a script can compute Explain's
    // gradients outside integrad (scripts/make_technique_fixtures.py's Guided IG).
    let dir = tempfile::tempdir().unwrap();
    let (grad_path, step_path) = (dir.path().join("grad.onnx"), dir.path().join("step.onnx"));
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/efficientnet-lite0/model.onnx");
    run_autodiff_cli(&model, &grad_path, &[], None, Objective::Probability, false).unwrap();
    let report =
        run_autodiff_cli(&model, &step_path, &[], None, Objective::Probability, true).unwrap();
    assert!(report.contains("the IG step model of grad"), "{report}");
    let read = |path: &std::path::Path| {
        ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
    };
    let (grad, written) = (read(&grad_path), read(&step_path));
    let g = written.graph.as_ref().unwrap();
    let names = |values: &[integrad::proto::onnx::ValueInfoProto]| -> Vec<String> {
        values.iter().map(|v| v.name().to_string()).collect()
    };
    let mut inputs = names(&g.input);
    inputs.sort();
    let mut expected: Vec<String> = step::STEP_INPUTS.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(inputs, expected);
    assert_eq!(
        names(&g.output[..3]),
        [step::STEP_SUMS, step::STEP_ABS, step::STEP_GRADS]
    );

    // One row from the photo to itself at alpha 1, as Explain asks for the gradient at a free
    // point (Guided IG's, Blur IG's): the gradient file's gradient there, bit for bit (the
    // interpolation at alpha 1 is the point exactly, and the backward graph is the same).
    let (shape, x) = common::fixture("coffee_input.npy");
    let mut shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    shape.insert(0, 1);
    let point = T::new(F32, &shape, x.iter().map(|&v| f64::from(v)).collect());
    let mut one_hot = vec![0.0; 1000];
    one_hot[967] = 1.0;
    let cotangent = T::new(F32, &[1, 1000], one_hot);
    let from_grad = run(&grad, &[("input", &point), (COTANGENT, &cotangent)]);
    let from_step = run(
        &written,
        &[
            (step::STEP_INPUT, &point),
            (step::STEP_BASELINE, &point),
            (step::STEP_PATH, &T::ints(&[1], &[0])),
            (step::STEP_ALPHA, &T::new(F32, &[1, 1, 1, 1], vec![1.0])),
            (
                step::STEP_ONE_MINUS_ALPHA,
                &T::new(F32, &[1, 1, 1, 1], vec![0.0]),
            ),
            (step::STEP_WEIGHTS, &T::new(F32, &[0, 1], vec![])),
            (COTANGENT, &cotangent),
        ],
    );
    let (want, got) = (&from_grad[GRAD].data, &from_step[step::STEP_GRADS].data);
    assert_eq!(want.len(), x.len());
    let differ = want.iter().zip(got).filter(|(a, b)| a != b).count();
    assert_eq!((got.len(), differ), (x.len(), 0));
}

#[test]
fn should_document_every_registered_op_type() {
    let doc = include_str!("../../docs/autodiff.md");
    let words: std::collections::HashSet<&str> =
        doc.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    for (op, class) in integrad::autodiff::registry::Registry::standard().op_types() {
        assert!(
            words.contains(op),
            "docs/autodiff.md does not list {op} ({class})"
        );
    }
}

#[test]
fn should_pick_the_output_and_reject_unknown_names() {
    let m = Tiny::new(17)
        .input("x", F64, &[2, 3])
        .node("Exp", &["x"], &["first"], vec![])
        .node("Tanh", &["x"], &["second"], vec![])
        .output("first", F64)
        .output("second", F64)
        .build();
    let mut r = Rng::new(5);
    let x = T::random(F64, &[2, 3], &mut r);
    let grad = build_gradient(
        &m,
        &GradOptions {
            of: Some("second".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(grad.of, "second");
    let c = T::random(F64, &[2, 3], &mut r);
    let out = run(&grad.model, &[("x", &x), (COTANGENT, &c)]);
    // d sum(c * tanh x) / dx = c (1 - tanh^2 x)
    for i in 0..6 {
        let want = c.data[i] * (1.0 - x.data[i].tanh().powi(2));
        assert!((out[GRAD].data[i] - want).abs() < 1e-12);
    }
    let unknown = |wrt: Option<&str>, of: Option<&str>| {
        build_gradient(
            &m,
            &GradOptions {
                wrt: wrt.map(str::to_string).into_iter().collect(),
                of: of.map(str::to_string),
                ..Default::default()
            },
        )
        .unwrap_err()
    };
    assert!(matches!(
        unknown(Some("nope"), None),
        AutodiffError::UnknownWrt { .. }
    ));
    assert!(matches!(
        unknown(None, Some("nope")),
        AutodiffError::UnknownOutput { .. }
    ));
}

#[test]
fn should_diff_with_respect_to_one_output_of_a_multi_output_node() {
    // x -> Split -> (p, q); y = p * q. With respect to p, q stays computed from x.
    let m = Tiny::new(13)
        .input("x", F64, &[2, 4])
        .node("Split", &["x"], &["p", "q"], vec![ai("axis", 1)])
        .node("Mul", &["p", "q"], &["y"], vec![])
        .output("y", F64)
        .build();
    let grad = build_gradient(&m, &options(Some("p"))).unwrap();
    let mut r = Rng::new(6);
    let x = T::random(F64, &[2, 4], &mut r);
    let p = run(grad.prefix.as_ref().unwrap(), &[("x", &x)])["p"].clone();
    let c = T::random(F64, &[2, 2], &mut r);
    let out = run(&grad.model, &[("x", &x), ("p", &p), (COTANGENT, &c)]);
    // d sum(c * p * q) / dp = c * q, q = the right half of x.
    for row in 0..2 {
        for j in 0..2 {
            let want = c.data[row * 2 + j] * x.data[row * 4 + 2 + j];
            assert!((out[GRAD].data[row * 2 + j] - want).abs() < 1e-12);
        }
    }
}
