//! Checks against scipy.ndimage.gaussian_filter's own outputs (made by
//! scripts/make_gaussian_fixtures.py with the real scipy), plus the error cases.

use super::*;
use crate::npy::{self, NpyArray};
use std::path::Path;

fn fixture(name: &str) -> (Vec<usize>, Vec<f32>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    match npy::read(&path).unwrap() {
        NpyArray::F32 { shape, data } => (shape, data),
        other => panic!("{name}: expected float32, got shape {:?}", other.shape()),
    }
}

/// Distance between `got` and `want` in units of f32's spacing at `want`.
fn ulps(got: f32, want: f32) -> f32 {
    let spacing = f32::from_bits(want.abs().to_bits() + 1) - want.abs();
    (got - want).abs() / spacing.max(f32::MIN_POSITIVE)
}

/// The bound on every comparison with scipy: the kernel's weights come from a different `exp`
/// and a different summation order than numpy's (pairwise), which moves the f64 sums in their
/// last bits; that can flip one f32 rounding per pass, and a flip in the first pass moves the
/// second pass's input by one ulp, so two passes can end up to 2 ulps apart.
const MAX_ULPS: f32 = 2.0;

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (worst, at) = got
        .iter()
        .zip(want)
        .enumerate()
        .map(|(i, (&g, &w))| (ulps(g, w), i))
        .fold((0.0f32, 0), |a, b| if b.0 > a.0 { b } else { a });
    assert!(
        worst <= MAX_ULPS,
        "{what}: value {at} is {} where scipy has {} ({worst} ulps apart)",
        got[at],
        want[at]
    );
}

const LINES: [usize; 12] = [0, 1, 2, 3, 50, 111, 112, 200, 220, 221, 222, 223];
const SIGMAS: [(f64, &str); 4] = [(0.8, "0.8"), (3.0, "3"), (50.0, "50"), (120.0, "120")];

#[test]
fn matches_scipy_on_the_coffee_photo() {
    let (shape, image) = fixture("coffee_input.npy");
    assert_eq!(shape, [3, 224, 224]);
    let (_, stats) = fixture("techniques/gaussian_coffee_stats.npy");
    let modes = [
        ("reflect", Boundary::Reflect),
        ("constant", Boundary::Constant(0.0)),
    ];
    for (m, (mode, boundary)) in modes.into_iter().enumerate() {
        for (s, (sigma, label)) in SIGMAS.into_iter().enumerate() {
            let what = format!("{mode}, sigma {label}");
            let out = gaussian_filter(&image, &shape, &[0.0, sigma, sigma], boundary).unwrap();
            let (lshape, want) =
                fixture(&format!("techniques/gaussian_coffee_{mode}_s{label}.npy"));
            assert_eq!(lshape, [3, 2, 12, 224]);
            let mut got = Vec::with_capacity(want.len());
            for c in 0..3 {
                let plane = &out[c * 224 * 224..(c + 1) * 224 * 224];
                for &y in &LINES {
                    got.extend_from_slice(&plane[y * 224..(y + 1) * 224]);
                }
                for &x in &LINES {
                    got.extend((0..224).map(|y| plane[y * 224 + x]));
                }
            }
            assert_close(&got, &want, &what);
            // Every pixel, through each channel's mean and mean square (float64 in numpy, kept
            // as float32 in the fixture).
            for c in 0..3 {
                let plane = &out[c * 224 * 224..(c + 1) * 224 * 224];
                let n = plane.len() as f64;
                let mean = plane.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let square = plane.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n;
                let at = ((m * 4 + s) * 3 + c) * 2;
                // The fixture's float32 rounding (6e-8 relative) dominates; the sums of 50,176
                // values differ from numpy's pairwise sums by far less than that.
                for (got, want, name) in [
                    (mean, stats[at], "mean"),
                    (square, stats[at + 1], "mean square"),
                ] {
                    assert!(
                        (got - f64::from(want)).abs() <= 1e-7 * f64::from(want.abs()).max(1e-3),
                        "{what}, channel {c}: {name} {got}, scipy {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn matches_scipy_where_the_kernel_is_far_wider_than_the_line() {
    // Sigma 10 gives radius 40: reflect wraps around these lines many times, constant pads.
    for n in [1usize, 2, 5] {
        let (shape, data) = fixture(&format!("techniques/gaussian_tiny_{n}.npy"));
        assert_eq!(shape, [3, n]);
        let (x, reflect, constant) = (&data[..n], &data[n..2 * n], &data[2 * n..]);
        let got = gaussian_filter(x, &[n], &[10.0], Boundary::Reflect).unwrap();
        assert_close(&got, reflect, &format!("reflect, length {n}"));
        let got = gaussian_filter(x, &[n], &[10.0], Boundary::Constant(0.5)).unwrap();
        assert_close(&got, constant, &format!("constant, length {n}"));
    }
    // Two axes with their own sigmas.
    let (shape, data) = fixture("techniques/gaussian_tiny_2x5.npy");
    assert_eq!(shape, [3, 2, 5]);
    let (x, reflect, constant) = (&data[..10], &data[10..20], &data[20..]);
    let got = gaussian_filter(x, &[2, 5], &[10.0, 0.7], Boundary::Reflect).unwrap();
    assert_close(&got, reflect, "reflect, 2x5");
    let got = gaussian_filter(x, &[2, 5], &[10.0, 0.7], Boundary::Constant(0.5)).unwrap();
    assert_close(&got, constant, "constant, 2x5");
}

#[test]
fn sigma_zero_leaves_the_values_as_they_are() {
    let values: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
    for sigma in [0.0, 1e-16] {
        let out = gaussian_filter(&values, &[2, 3, 4], &[sigma; 3], Boundary::Constant(9.0));
        assert_eq!(out.unwrap(), values);
    }
}

#[test]
fn refuses_what_it_cannot_blur() {
    let v = [0.0f32; 6];
    assert_eq!(
        gaussian_filter(&v, &[2, 4], &[1.0, 1.0], Boundary::Reflect),
        Err(GaussianError::ShapeMismatch {
            values: 6,
            shape: vec![2, 4],
            expected: 8
        })
    );
    assert_eq!(
        gaussian_filter(&v, &[2, 3], &[1.0], Boundary::Reflect),
        Err(GaussianError::SigmaCount { sigmas: 1, axes: 2 })
    );
    for sigma in [-1.0, f64::NAN, f64::INFINITY] {
        let err = gaussian_filter(&v, &[2, 3], &[0.0, sigma], Boundary::Reflect).unwrap_err();
        assert!(
            matches!(err, GaussianError::BadSigma { axis: 1, .. }),
            "{err}"
        );
    }
    let err = gaussian_filter(&v, &[2, 3], &[5000.0, 0.0], Boundary::Reflect).unwrap_err();
    assert_eq!(
        err,
        GaussianError::TooWide {
            axis: 0,
            sigma: 5000.0,
            radius: 20000
        }
    );
}

#[test]
fn float64_input_is_blurred_without_float32_rounding() {
    // An impulse: the output is the kernel itself, which float32 rounding would change.
    let mut line = vec![0.0f64; 41];
    line[20] = 1.0;
    let out = gaussian_filter(&line, &[41], &[3.0], Boundary::Constant(0.0)).unwrap();
    let half = half_kernel(3.0, 12);
    for (i, v) in out.iter().enumerate() {
        let want = half.get(i.abs_diff(20)).copied().unwrap_or(0.0);
        assert_eq!(*v, want, "tap {i}");
    }
}

/// The cost of one blur of a model input (3x224x224, both spatial axes) at a few sigmas, for
/// docs/BENCHMARKS.md; run with
/// `cargo test --release --lib gaussian_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn gaussian_timing() {
    let (shape, image) = fixture("coffee_input.npy");
    for sigma in [0.8, 3.0, 10.0, 25.0, 50.0] {
        let mut times: Vec<_> = (0..7)
            .map(|_| {
                let start = std::time::Instant::now();
                let out = gaussian_filter(
                    &image,
                    &shape,
                    &[0.0, sigma, sigma],
                    Boundary::Constant(0.0),
                );
                std::hint::black_box(out.unwrap());
                start.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "gaussian_filter 3x224x224, sigma {sigma}: median {:?}",
            times[3]
        );
    }
}
