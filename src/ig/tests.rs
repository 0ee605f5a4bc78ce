//! Quadrature, integrator and whole-IG tests against integrals known in closed form.

use super::path::{attributions, interpolate, Completeness};
use super::quadrature::{nodes, refine_trapezoid, trapezoid_weights, Integrator, Method, Node};
use super::IgError;

const ALL: [Method; 5] = [
    Method::Trapezoid,
    Method::Left,
    Method::Right,
    Method::Midpoint,
    Method::GaussLegendre,
];

fn integrate(n: &[Node], f: impl Fn(f64) -> f64) -> f64 {
    n.iter().map(|n| n.weight * f(n.alpha)).sum()
}

#[test]
fn method_names_round_trip() {
    for m in ALL {
        assert_eq!(m.as_str().parse::<Method>(), Ok(m));
    }
    assert_eq!(
        "simpson".parse::<Method>(),
        Err(IgError::UnknownMethod("simpson".into()))
    );
}

#[test]
fn weights_sum_to_exactly_one() {
    for method in ALL {
        for steps in (1..=300).chain([500, 999, 1000, 1024, 4096]) {
            let n = nodes(method, steps);
            assert_eq!(n.len(), method.evaluations(steps));
            let total: f64 = n.iter().map(|n| n.weight).sum();
            assert_eq!(total, 1.0, "{method} {steps}");
            assert!(n.iter().all(|n| n.weight > 0.0));
            assert!(n.windows(2).all(|p| p[0].alpha < p[1].alpha));
            assert!(n.iter().all(|n| (0.0..=1.0).contains(&n.alpha)));
        }
    }
    assert!(nodes(Method::Trapezoid, 0).is_empty());
}

#[test]
fn rules_have_the_textbook_nodes() {
    let t = nodes(Method::Trapezoid, 4);
    let alphas: Vec<f64> = t.iter().map(|n| n.alpha).collect();
    assert_eq!(alphas, [0.0, 0.25, 0.5, 0.75, 1.0]);
    let weights: Vec<f64> = t.iter().map(|n| n.weight).collect();
    // Powers of two: exact, so the renormalisation leaves them alone.
    assert_eq!(weights, [0.125, 0.25, 0.25, 0.25, 0.125]);
    let l: Vec<f64> = nodes(Method::Left, 4).iter().map(|n| n.alpha).collect();
    assert_eq!(l, [0.0, 0.25, 0.5, 0.75]);
    let r: Vec<f64> = nodes(Method::Right, 4).iter().map(|n| n.alpha).collect();
    assert_eq!(r, [0.25, 0.5, 0.75, 1.0]);
    let m: Vec<f64> = nodes(Method::Midpoint, 4).iter().map(|n| n.alpha).collect();
    assert_eq!(m, [0.125, 0.375, 0.625, 0.875]);
    // Two-point Gauss-Legendre: x = +-1/sqrt(3) on [-1, 1], weights 1/2 each on [0, 1].
    let g = nodes(Method::GaussLegendre, 2);
    let a = 0.5 - 0.5 / 3f64.sqrt();
    assert!((g[0].alpha - a).abs() < 1e-15 && (g[1].alpha - (1.0 - a)).abs() < 1e-15);
    assert_eq!((g[0].weight, g[1].weight), (0.5, 0.5));
}

/// The integral of a^d over [0, 1] is 1/(d + 1).
fn monomial_error(n: &[Node], d: i32) -> f64 {
    (integrate(n, |a| a.powi(d)) - 1.0 / f64::from(d + 1)).abs()
}

#[test]
fn each_rule_is_exact_up_to_its_degree() {
    // Sums of at most a few thousand terms of size <= 1: rounding stays under 1e-12.
    let tol = 1e-12;
    for steps in [1, 2, 3, 7, 50] {
        for method in ALL {
            assert!(monomial_error(&nodes(method, steps), 0) < tol, "{method}");
        }
        for method in [Method::Trapezoid, Method::Midpoint] {
            assert!(monomial_error(&nodes(method, steps), 1) < tol, "{method}");
        }
        // Left and right are exact on constants only: on a their error is exactly 1/(2m).
        for method in [Method::Left, Method::Right] {
            let e = monomial_error(&nodes(method, steps), 1);
            assert!((e - 0.5 / f64::from(steps)).abs() < tol, "{method} {e}");
        }
        // And trapezoid and midpoint miss a^2, by 1/(6m^2) and 1/(12m^2).
        let m2 = f64::from(steps).powi(2);
        let e = monomial_error(&nodes(Method::Trapezoid, steps), 2);
        assert!((e - 1.0 / (6.0 * m2)).abs() < tol);
        let e = monomial_error(&nodes(Method::Midpoint, steps), 2);
        assert!((e - 1.0 / (12.0 * m2)).abs() < tol);
    }
}

#[test]
fn gauss_legendre_with_n_nodes_is_exact_to_degree_2n_minus_1() {
    for n in 1..=20u32 {
        let g = nodes(Method::GaussLegendre, n);
        let top = 2 * n as i32 - 1;
        for d in 0..=top {
            // Exact integrals of size >= 1/40, rounded in 20-term sums: 1e-14 is ~100 ulps.
            assert!(monomial_error(&g, d) < 1e-14, "n {n} degree {d}");
        }
        // Degree 2n is the first it misses: on [0, 1] the error on a^2n is
        // (n!)^4 / ((2n + 1) ((2n)!)^2), 1/12 at n = 1 down to 1.4e-6 at n = 5.
        if n <= 5 {
            assert!(monomial_error(&g, top + 1) > 1e-6, "n {n}");
        }
    }
}

#[test]
fn gauss_legendre_works_for_a_thousand_nodes_and_more() {
    for n in [1000u32, 1500] {
        let g = nodes(Method::GaussLegendre, n);
        // Symmetric about 1/2: the Newton roots of the upper half mirrored, to rounding.
        for k in 0..n as usize {
            let mirror = g[n as usize - 1 - k];
            assert!((g[k].alpha + mirror.alpha - 1.0).abs() < 1e-15);
        }
        // Exact on a high degree (2n - 1 would be a^2999, whose integral 1/3000 is dominated
        // by the last few nodes; it still must come out right) and on a smooth function.
        let d = 2 * n as i32 - 1;
        let e = monomial_error(&g, d) * f64::from(d + 1);
        // Relative error: each alpha is rounded to 1.1e-16, which a^2999 amplifies 3000-fold
        // (3e-13), on top of the weights' own rounding; 1e-11 leaves room for both.
        assert!(e < 1e-11, "n {n} relative {e}");
        let e = (integrate(&g, |a| (3.0 * a).sin()) - (1.0 - 3f64.cos()) / 3.0).abs();
        assert!(e < 1e-14, "n {n} sin {e}");
    }
}

#[test]
fn convergence_orders_match_theory() {
    // f = exp(a), integral e - 1. Doubling m divides the error by 2^p for a rule of order p:
    // 2 for left and right, 4 for trapezoid and midpoint. Between m = 64 and 128 the next
    // term of the error expansion changes the ratio by about 1/m, so +-0.1 is ample.
    let exact = std::f64::consts::E - 1.0;
    for (method, ratio) in [
        (Method::Left, 2.0),
        (Method::Right, 2.0),
        (Method::Trapezoid, 4.0),
        (Method::Midpoint, 4.0),
    ] {
        let e64 = (integrate(&nodes(method, 64), f64::exp) - exact).abs();
        let e128 = (integrate(&nodes(method, 128), f64::exp) - exact).abs();
        let r = e64 / e128;
        assert!((r - ratio).abs() < 0.1, "{method} ratio {r}");
    }
    // Gauss-Legendre converges faster than any power: 5 nodes already beat trapezoid at 1000.
    let gl = (integrate(&nodes(Method::GaussLegendre, 5), f64::exp) - exact).abs();
    let tr = (integrate(&nodes(Method::Trapezoid, 1000), f64::exp) - exact).abs();
    assert!(gl < 1e-10 && gl < tr, "{gl} {tr}");
}

#[test]
fn refinement_adds_exactly_the_new_alphas_of_the_doubled_rule() {
    for m in [1u32, 2, 3, 10, 50, 333] {
        let old: Vec<f64> = nodes(Method::Trapezoid, m)
            .iter()
            .map(|n| n.alpha)
            .collect();
        let new = refine_trapezoid(m);
        assert_eq!(new.len(), m as usize);
        let mut both: Vec<f64> = old.iter().chain(&new).copied().collect();
        both.sort_by(f64::total_cmp);
        let fresh: Vec<f64> = nodes(Method::Trapezoid, 2 * m)
            .iter()
            .map(|n| n.alpha)
            .collect();
        // Bit-identical: k/m and 2k/(2m) are the same real number, rounded once.
        assert_eq!(both, fresh, "m {m}");
    }
    let (end, interior) = trapezoid_weights(1);
    assert_eq!((end, interior), (0.5, 0.0));
}

/// A vector-valued "gradient" along the path for the integrator tests: g_i(a) for input
/// feature i and target t, smooth and different per feature and target.
fn fake_grad(a: f64, i: usize, t: usize) -> f32 {
    ((i as f64 + 1.0) * a + t as f64).sin() as f32 * (1.0 + i as f32 / 10.0)
}

fn run(it: &mut Integrator, batch: usize) {
    let (len, targets) = (it.input_len(), it.targets());
    while let Some(b) = it.next_batch(batch) {
        let mut grads = Vec::with_capacity(b.len() * targets * len);
        let mut scores = Vec::with_capacity(b.len() * targets);
        for &a in b.alphas() {
            for t in 0..targets {
                grads.extend((0..len).map(|i| fake_grad(a, i, t)));
                scores.push(a as f32 + t as f32);
            }
        }
        it.feed(&b, &grads, &scores).unwrap();
    }
}

#[test]
fn batch_size_does_not_change_the_answer() {
    // 1, 7 and 64 split 101 nodes as every batch full, a ragged last batch, and one batch
    // larger than the round. Batches are fed in order, so every sum sees its terms in alpha
    // order whatever the split: the results are bit-identical, not merely close (through a
    // real model the gradients themselves may differ by f32 rounding between batch sizes;
    // that is the model's business, not the accumulation's).
    for method in ALL {
        let results: Vec<Vec<Vec<f32>>> = [1, 7, 64]
            .iter()
            .map(|&b| {
                let mut it = Integrator::new(method, 100, 13, 3).unwrap();
                run(&mut it, b);
                (0..3).map(|t| it.average_gradient(t).unwrap()).collect()
            })
            .collect();
        assert_eq!(results[0], results[1], "{method}");
        assert_eq!(results[0], results[2], "{method}");
    }
}

#[test]
fn integrator_matches_the_rule_applied_directly() {
    for method in ALL {
        let mut it = Integrator::new(method, 40, 5, 2).unwrap();
        run(&mut it, 9);
        let n = nodes(method, 40);
        for t in 0..2 {
            let avg = it.average_gradient(t).unwrap();
            for (i, v) in avg.iter().enumerate() {
                let direct = integrate(&n, |a| f64::from(fake_grad(a, i, t)));
                // Same terms, same f64 sums up to grouping; the f32 result rounds at 6e-8.
                assert!((f64::from(*v) - direct).abs() < 1e-6, "{method} {t} {i}");
            }
        }
    }
}

#[test]
fn refinement_reuses_every_gradient_and_equals_the_fresh_rule() {
    for m in [1u32, 5, 50] {
        let mut refined = Integrator::new(Method::Trapezoid, m, 11, 2).unwrap();
        run(&mut refined, 8);
        let first = refined.evaluations();
        refined.refine().unwrap();
        // Mid-round, the estimate stays the complete one at m.
        assert_eq!(refined.estimate_steps(), Some(m));
        run(&mut refined, 8);
        refined.refine().unwrap();
        run(&mut refined, 3);
        // m + 1 + m + 2m evaluations for 4m steps: 4m + 1, exactly a fresh rule's count.
        assert_eq!(refined.evaluations(), first + 3 * m as usize);
        assert_eq!(refined.evaluations(), 4 * m as usize + 1);
        assert_eq!(refined.steps(), 4 * m);

        let mut fresh = Integrator::new(Method::Trapezoid, 4 * m, 11, 2).unwrap();
        run(&mut fresh, 64);
        for t in 0..2 {
            let a = refined.average_gradient(t).unwrap();
            let b = fresh.average_gradient(t).unwrap();
            for (x, y) in a.iter().zip(&b) {
                // Same terms summed in a different order in f64 (error ~1e-15), then rounded
                // to f32: at most one f32 ulp apart, 1.2e-7 relative on values of size <= 2.
                assert!((x - y).abs() <= 2.5e-7, "m {m} {x} {y}");
            }
        }
        let pr = refined.path(1).unwrap();
        let pf = fresh.path(1).unwrap();
        assert_eq!(pr, pf, "path points, sorted by alpha");
    }
}

#[test]
fn integrator_rejects_misuse() {
    assert_eq!(
        Integrator::new(Method::Left, 0, 3, 1).unwrap_err(),
        IgError::ZeroSteps(0)
    );
    let mut it = Integrator::new(Method::Trapezoid, 4, 2, 1).unwrap();
    assert!(matches!(
        it.average_gradient(0),
        Err(IgError::NoEstimate { remaining: 5 })
    ));
    let first = it.next_batch(2).unwrap();
    let second = it.next_batch(2).unwrap();
    assert!(matches!(
        it.feed(&second, &[0.0; 4], &[0.0; 2]),
        Err(IgError::OutOfOrder { expected: 0, .. })
    ));
    assert!(matches!(
        it.feed(&first, &[0.0; 3], &[0.0; 2]),
        Err(IgError::LengthMismatch {
            what: "gradients",
            ..
        })
    ));
    it.feed(&first, &[0.0; 4], &[0.0; 2]).unwrap();
    assert!(matches!(
        it.refine(),
        Err(IgError::RoundIncomplete { remaining: 3 })
    ));
    assert!(matches!(
        it.average_gradient(1),
        Err(IgError::NoSuchTarget { .. })
    ));
    let mut gl = Integrator::new(Method::GaussLegendre, 4, 2, 1).unwrap();
    run(&mut gl, 4);
    assert!(matches!(gl.refine(), Err(IgError::NotRefinable { .. })));
}

/// softmax(W x)_t for a small fixed W, and its gradient p_t (W_t - sum_j p_j W_j).
struct SoftmaxLinear {
    w: Vec<[f64; 4]>,
}

impl SoftmaxLinear {
    fn new() -> Self {
        SoftmaxLinear {
            w: vec![
                [1.5, -2.0, 0.5, 1.0],
                [-1.0, 1.0, 2.0, -0.5],
                [0.3, 0.8, -1.2, 2.2],
            ],
        }
    }

    fn probs(&self, x: &[f32]) -> Vec<f64> {
        let logits: Vec<f64> = self
            .w
            .iter()
            .map(|r| r.iter().zip(x).map(|(w, v)| w * f64::from(*v)).sum())
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect()
    }

    fn score(&self, x: &[f32], t: usize) -> f64 {
        self.probs(x)[t]
    }

    fn grad(&self, x: &[f32], t: usize) -> Vec<f32> {
        let p = self.probs(x);
        (0..4)
            .map(|i| {
                let mean: f64 = (0..3).map(|j| p[j] * self.w[j][i]).sum();
                (p[t] * (self.w[t][i] - mean)) as f32
            })
            .collect()
    }
}

/// The whole loop as the server runs it: interpolate a batch, evaluate, feed, scale, check.
fn explain(
    f: &SoftmaxLinear,
    x: &[f32],
    b: &[f32],
    it: &mut Integrator,
    batch: usize,
) -> Vec<Completeness> {
    let targets = it.targets();
    let mut buf = Vec::new();
    while let Some(bt) = it.next_batch(batch) {
        buf.resize(bt.len() * x.len(), 0.0);
        interpolate(x, b, bt.alphas(), &mut buf);
        let (mut grads, mut scores) = (Vec::new(), Vec::new());
        for z in buf.chunks(x.len()) {
            for t in 0..targets {
                grads.extend(f.grad(z, t));
                scores.push(f.score(z, t) as f32);
            }
        }
        it.feed(&bt, &grads, &scores).unwrap();
    }
    (0..targets)
        .map(|t| {
            let ig = attributions(x, b, &it.average_gradient(t).unwrap());
            Completeness::new(&ig, f.score(x, t), f.score(b, t))
        })
        .collect()
}

#[test]
fn ig_on_softmax_of_a_linear_map_converges_to_completeness() {
    let f = SoftmaxLinear::new();
    let x = [1.2f32, -0.7, 0.9, 0.4];
    let b = [0.0f32; 4];
    for method in ALL {
        let deltas: Vec<f64> = [8u32, 32, 128]
            .iter()
            .map(|&m| {
                let mut it = Integrator::new(method, m, 4, 3).unwrap();
                let c = explain(&f, &x, &b, &mut it, 7);
                c.iter().map(|c| c.delta.abs()).fold(0.0, f64::max)
            })
            .collect();
        match method {
            // Order 1: 4x the steps, about 4x smaller delta; never worse than 3x here.
            Method::Left | Method::Right => {
                assert!(deltas[0] > 3.0 * deltas[1] && deltas[1] > 3.0 * deltas[2]);
                assert!(deltas[2] < 1e-2, "{method} {deltas:?}");
            }
            // Order 2: 16x smaller per 4x steps until the f32 gradients' floor (~1e-7 of
            // scores ~1) is reached; 10x is asked for, and 1e-4 at 128 steps.
            Method::Trapezoid | Method::Midpoint => {
                assert!(deltas[0] > 10.0 * deltas[1], "{method} {deltas:?}");
                assert!(deltas[2] < 1e-4, "{method} {deltas:?}");
            }
            // Already at the f32 floor with 8 nodes: the integrand is analytic, and its
            // gradient rounds to f32 (6e-8 relative) on four features.
            Method::GaussLegendre => {
                assert!(deltas.iter().all(|d| *d < 1e-6), "{deltas:?}");
            }
        }
    }
}

#[test]
fn ig_matches_the_closed_form_of_a_separable_function() {
    // F(x) = sum_i c_i sin(x_i) has dF/dx_i depending on x_i alone, so the IG integral has a
    // closed form per feature: IG_i = c_i (sin x_i - sin x'_i). Every feature must match it,
    // not just the sum.
    let c = [0.5f64, -1.5, 2.0, 1.0, 0.25];
    let x = [1.0f32, 2.5, -0.3, 3.0, -2.0];
    let b = [0.2f32, -1.0, 0.5, 0.0, 1.0];
    let mut it = Integrator::new(Method::Trapezoid, 16, 5, 1).unwrap();
    let mut errors = Vec::new();
    for round in 0..5 {
        if round > 0 {
            it.refine().unwrap();
        }
        let mut buf = Vec::new();
        while let Some(bt) = it.next_batch(7) {
            buf.resize(bt.len() * 5, 0.0);
            interpolate(&x, &b, bt.alphas(), &mut buf);
            let grads: Vec<f32> = buf
                .chunks(5)
                .flat_map(|z| (0..5).map(move |i| (c[i] * f64::from(z[i]).cos()) as f32))
                .collect();
            let scores = vec![0.0; bt.len()];
            it.feed(&bt, &grads, &scores).unwrap();
        }
        let ig = attributions(&x, &b, &it.average_gradient(0).unwrap());
        let worst = (0..5)
            .map(|i| {
                let exact = c[i] * (f64::from(x[i]).sin() - f64::from(b[i]).sin());
                (f64::from(ig[i]) - exact).abs()
            })
            .fold(0.0, f64::max);
        errors.push(worst);
    }
    // Steps 16, 32, 64, 128, 256: trapezoid's error quarters with each doubling (ratio 4 +-
    // 0.5 while above the f32 floor of ~1e-6 on attributions of size ~3).
    for w in errors.windows(2).take(3) {
        let r = w[0] / w[1];
        assert!((r - 4.0).abs() < 0.5, "{errors:?}");
    }
    assert!(errors[4] < 1e-4, "{errors:?}");
    assert_eq!(it.evaluations(), 257);
}

#[test]
fn adaptive_refinement_stops_when_the_delta_is_within_tolerance() {
    // The adaptive loop: double until |delta| <= 1 % of |F(x) - F(x')|.
    let f = SoftmaxLinear::new();
    let x = [2.0f32, -1.5, 1.8, 0.9];
    let b = [0.0f32; 4];
    let mut it = Integrator::new(Method::Trapezoid, 2, 4, 1).unwrap();
    let mut history = Vec::new();
    loop {
        let c = explain(&f, &x, &b, &mut it, 16)[0];
        history.push((it.steps(), c.relative_delta()));
        if c.within(0.01) || it.steps() >= 1024 {
            break;
        }
        it.refine().unwrap();
    }
    let (steps, rel) = *history.last().unwrap();
    assert!(rel <= 0.01, "{history:?}");
    // Each doubling must shrink the delta (trapezoid: about 4x here, 12 % -> 0.26 % over
    // 2..16 steps); the progress events show exactly this sequence.
    assert!(history.windows(2).all(|w| w[1].1 < w[0].1), "{history:?}");
    // Two steps is far from 1 % on this curved path; the loop must have refined at least once
    // and never needed more than 1024.
    assert!(history.len() >= 2 && steps <= 1024, "{history:?}");
    assert_eq!(it.evaluations(), steps as usize + 1);
}

/// What the IG step model computes from `grads` ([alpha][target][input]) with the weights
/// of `sum_weights`, in f64: `weights x grads`, per-row sums of |grad|.
fn sums_like_the_step_model(
    it: &Integrator,
    batch: &super::Batch,
    grads: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let len = it.input_len();
    let rows = grads.len() / len;
    let w = it.sum_weights(batch);
    let sums_n = w.len() / rows;
    let mut sums = vec![0f32; sums_n * len];
    for s in 0..sums_n {
        for i in 0..len {
            let v: f64 = (0..rows)
                .map(|r| f64::from(w[s * rows + r]) * f64::from(grads[r * len + i]))
                .sum();
            sums[s * len + i] = v as f32;
        }
    }
    let abs = (0..rows)
        .map(|r| grads[r * len..(r + 1) * len].iter().map(|g| g.abs()).sum())
        .collect();
    (sums, abs)
}

#[test]
fn summed_batches_give_what_per_alpha_gradients_give() {
    // Two targets, 5 values, smooth made-up gradients of alpha: both feeding paths must reach
    // the same estimate, through a refinement too (trapezoid) and for a weighted rule.
    let grad = |alpha: f64, target: usize, i: usize| {
        ((1.0 + i as f64) * alpha + target as f64).sin() as f32
    };
    for method in [Method::Trapezoid, Method::GaussLegendre] {
        let (len, t) = (5, 2);
        let mut per_alpha = Integrator::new(method, 6, len, t).unwrap();
        let mut summed = Integrator::new(method, 6, len, t).unwrap();
        for round in 0..2 {
            while let Some(batch) = per_alpha.next_batch(4) {
                let other = summed.next_batch(4).unwrap();
                let grads: Vec<f32> = batch
                    .alphas()
                    .iter()
                    .flat_map(|&a| (0..t).flat_map(move |j| (0..len).map(move |i| grad(a, j, i))))
                    .collect();
                let scores: Vec<f32> = (0..batch.len() * t).map(|r| r as f32).collect();
                per_alpha.feed(&batch, &grads, &scores).unwrap();
                let (sums, abs) = sums_like_the_step_model(&summed, &other, &grads);
                summed.feed_sums(&other, &sums, &scores, &abs).unwrap();
            }
            for j in 0..t {
                let (a, b) = (
                    per_alpha.average_gradient(j).unwrap(),
                    summed.average_gradient(j).unwrap(),
                );
                // The sums pass through f32 once (the model's output): ~1e-7 relative.
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{method} {x} {y}");
                }
                assert_eq!(
                    per_alpha.path(j).unwrap().len(),
                    summed.path(j).unwrap().len()
                );
                for (p, q) in per_alpha
                    .path(j)
                    .unwrap()
                    .iter()
                    .zip(summed.path(j).unwrap())
                {
                    assert_eq!((p.alpha, p.score), (q.alpha, q.score));
                    assert!((p.mean_abs_gradient - q.mean_abs_gradient).abs() <= 1e-6);
                }
            }
            if method != Method::Trapezoid || round == 1 {
                break;
            }
            per_alpha.refine().unwrap();
            summed.refine().unwrap();
        }
    }
}

#[test]
fn summed_feeding_checks_lengths_and_order() {
    let mut it = Integrator::new(Method::Trapezoid, 4, 3, 1).unwrap();
    let first = it.next_batch(2).unwrap();
    let second = it.next_batch(2).unwrap();
    assert!(matches!(
        it.feed_sums(&second, &[0.0; 6], &[0.0; 2], &[0.0; 2]),
        Err(IgError::OutOfOrder { .. })
    ));
    assert!(matches!(
        it.feed_sums(&first, &[0.0; 5], &[0.0; 2], &[0.0; 2]),
        Err(IgError::LengthMismatch {
            what: "gradient sums",
            ..
        })
    ));
    // Trapezoid 4 steps: alphas 0 and 0.25; 0 is an endpoint (sum 0), 0.25 interior (sum 1).
    assert_eq!(it.sum_weights(&first), [1.0, 0.0, 0.0, 1.0]);
}
