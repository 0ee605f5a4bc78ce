//! Blur IG (Xu et al., "Attribution in Scale and Space", CVPR 2020): the path runs from the
//! input blurred by a Gaussian of sigma `max_sigma` down to the input itself (sigma 0), so
//! there is no baseline to choose: information is removed by blurring, not by replacing.
//!
//! As PAIR's `saliency` package computes it (the reference), for the model-space image tensor:
//! the blur is `scipy.ndimage.gaussian_filter` over the two spatial axes only, in "constant"
//! mode (zeros beyond the edges) with the kernel truncated at 4 sigma; the path's derivative
//! with respect to sigma is a forward difference of `grad_step`; and the attributions are
//!
//! ```text
//! A = -sum_k w_k * max_sigma * grad F(blur(x, s_k)) * (blur(x, s_k + h) - blur(x, s_k)) / h
//! ```
//!
//! with `s_k = (1 - alpha_k) max_sigma` at the nodes `alpha_k` and weights `w_k` of a
//! quadrature rule on [0, 1] (alpha 0: fully blurred, 1: the input). PAIR's sum, sigmas
//! `i / steps * max_sigma` for i in 0..steps each weighted `1 / steps`, is the right-point
//! rule, the default. They add up to about F(x) - F(blur(x, max_sigma)).
//!
//! Each blur is two matrix products per channel (`B_h X B_w^T`, where `B` is the 1-D filter
//! with its boundary as a matrix): for a sigma of 50 the kernel is wider than a 224-pixel image,
//! where a matrix product is both cheaper than a 401-tap convolution and exact about the edges.

use ndarray::{Array2, ArrayView2};

pub use crate::image::gaussian::Boundary;
use crate::image::gaussian::{gaussian_filter, half_kernel, MAX_RADIUS, TRUNCATE};

use super::quadrature::Node;

/// Blur IG's parameters (PAIR's defaults: [`BlurParams::default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlurParams {
    pub max_sigma: f64,
    pub grad_step: f64,
}

impl Default for BlurParams {
    fn default() -> Self {
        Self {
            max_sigma: 50.0,
            grad_step: 0.01,
        }
    }
}

impl BlurParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.max_sigma.is_finite() && self.max_sigma > 0.0 && self.max_sigma <= 1000.0) {
            return Err(format!(
                "max_sigma must be in (0, 1000] pixels, got {}",
                self.max_sigma
            ));
        }
        if !(self.grad_step.is_finite() && self.grad_step > 0.0 && self.grad_step <= 1.0) {
            return Err(format!(
                "grad_step must be in (0, 1], got {}",
                self.grad_step
            ));
        }
        Ok(())
    }
}

/// The 1-D Gaussian filter of `sigma` over an axis of `n` values as an `n x n` matrix: row i
/// holds the weights output i gives to each input, the edges folded in as `boundary` says.
/// It is [`gaussian_filter`] (scipy's semantics, for any sigma) applied to the identity's
/// columns, so the two blurs are one filter.
///
/// With zeros beyond the edges (Blur IG's boundary) nothing folds back, and that filter puts
/// the kernel's tap `|i - j|` at row i, column j: the same numbers (a filtered unit column is
/// one tap plus zeros), written directly instead of by a convolution of the identity, which
/// for the widest kernels cost more than the blur itself.
pub fn axis_filter(n: usize, sigma: f64, boundary: Boundary) -> Array2<f32> {
    let radius = (TRUNCATE * sigma + 0.5) as usize;
    if boundary == Boundary::Constant(0.0) && (1..=MAX_RADIUS).contains(&radius) {
        let half: Vec<f32> = half_kernel(sigma, radius)
            .into_iter()
            .map(|w| w as f32)
            .collect();
        return Array2::from_shape_fn((n, n), |(i, j)| {
            half.get(i.abs_diff(j)).copied().unwrap_or(0.0)
        });
    }
    let mut identity = vec![0f32; n * n];
    for i in 0..n {
        identity[i * n + i] = 1.0;
    }
    // NOTE: BlurParams::validate bounds sigma (1000 + 1 pixels: a radius of 4,004, within the
    // filter's limit), and the image's axes are those of a model input that loaded.
    let filtered = gaussian_filter(&identity, &[n, n], &[sigma, 0.0], boundary)
        .expect("a validated sigma over a model's image axis");
    Array2::from_shape_vec((n, n), filtered).expect("n x n values")
}

/// Blurs the spatial axes of an image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageAxes {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Channels first (`[c, h, w]`) or last (`[h, w, c]`).
    pub channels_first: bool,
}

impl ImageAxes {
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `values` blurred by a Gaussian of `sigma` pixels over height and width, each channel
    /// on its own.
    pub fn blur(&self, values: &[f32], sigma: f64, boundary: Boundary) -> Vec<f32> {
        // scipy's radius int(4 sigma + 0.5): 0 leaves the values as they are.
        if (TRUNCATE * sigma + 0.5) < 1.0 {
            return values.to_vec();
        }
        let (c, h, w) = (self.channels, self.height, self.width);
        let rows = axis_filter(h, sigma, boundary);
        let cols = match w == h {
            true => rows.t().to_owned(),
            false => axis_filter(w, sigma, boundary).reversed_axes(),
        };
        let mut out = vec![0f32; values.len()];
        let mut plane = Array2::<f32>::zeros((h, w));
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    plane[[y, x]] = values[self.index(ch, y, x)];
                }
            }
            let blurred = rows.dot(&ArrayView2::from(&plane)).dot(&cols);
            for y in 0..h {
                for x in 0..w {
                    out[self.index(ch, y, x)] = blurred[[y, x]];
                }
            }
        }
        out
    }

    fn index(&self, ch: usize, y: usize, x: usize) -> usize {
        match self.channels_first {
            true => (ch * self.height + y) * self.width + x,
            false => (y * self.width + x) * self.channels + ch,
        }
    }
}

/// One point of a Blur IG path: the blurred input where the gradient is needed, and what that
/// gradient is multiplied by (the node's weight times the path's derivative there).
#[derive(Debug, Clone)]
pub struct BlurPoint {
    pub alpha: f64,
    pub sigma: f64,
    pub point: Vec<f32>,
    pub factor: Vec<f32>,
}

/// The point of the path at `node`: `blur(x, s)` with `s = (1 - alpha) max_sigma`, and the
/// factor `-w max_sigma (blur(x, s + h) - blur(x, s)) / h`.
pub fn blur_point(input: &[f32], axes: &ImageAxes, params: &BlurParams, node: Node) -> BlurPoint {
    let sigma = (1.0 - node.alpha) * params.max_sigma;
    let point = axes.blur(input, sigma, Boundary::Constant(0.0));
    let further = axes.blur(input, sigma + params.grad_step, Boundary::Constant(0.0));
    let scale = -node.weight * params.max_sigma / params.grad_step;
    let factor = further
        .iter()
        .zip(&point)
        .map(|(&f, &p)| (scale * (f64::from(f) - f64::from(p))) as f32)
        .collect();
    BlurPoint {
        alpha: node.alpha,
        sigma,
        point,
        factor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_keep_mass_with_reflect_and_lose_it_with_zeros() {
        // Every row of a filter sums to 1 with reflection (nothing leaves the axis); with
        // zeros, a sigma wider than the axis loses most of it.
        let r = axis_filter(5, 10.0, Boundary::Reflect);
        for row in r.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-5);
        }
        let z = axis_filter(5, 10.0, Boundary::Constant(0.0));
        assert!(z.row(2).sum() < 0.3);
    }

    #[test]
    fn should_write_the_zero_boundary_filter_as_the_convolution_makes_it() {
        // The direct fill must be the identity's columns filtered, value for value (each a
        // single tap in f64 cast to f32), from a narrow kernel to one wider than the axis.
        for (n, sigma) in [(7, 0.8), (31, 3.0), (224, 50.0), (5, 10.0)] {
            let direct = axis_filter(n, sigma, Boundary::Constant(0.0));
            let mut identity = vec![0f32; n * n];
            for i in 0..n {
                identity[i * n + i] = 1.0;
            }
            let filtered =
                gaussian_filter(&identity, &[n, n], &[sigma, 0.0], Boundary::Constant(0.0))
                    .unwrap();
            assert_eq!(
                direct.as_slice().unwrap(),
                filtered.as_slice(),
                "n {n} sigma {sigma}"
            );
        }
    }

    #[test]
    fn should_blur_only_the_spatial_axes() {
        let first = ImageAxes {
            channels: 2,
            height: 3,
            width: 4,
            channels_first: true,
        };
        let last = ImageAxes {
            channels_first: false,
            ..first
        };
        let chw: Vec<f32> = (0..24).map(|i| (i * 7 % 11) as f32).collect();
        let mut hwc = vec![0f32; 24];
        for c in 0..2 {
            for p in 0..12 {
                hwc[p * 2 + c] = chw[c * 12 + p];
            }
        }
        let a = first.blur(&chw, 1.5, Boundary::Reflect);
        let b = last.blur(&hwc, 1.5, Boundary::Reflect);
        for c in 0..2 {
            for p in 0..12 {
                assert!((a[c * 12 + p] - b[p * 2 + c]).abs() < 1e-5);
            }
            // Reflection keeps each channel's mean.
            let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
            assert!((mean(&a[c * 12..c * 12 + 12]) - mean(&chw[c * 12..c * 12 + 12])).abs() < 1e-4);
        }
    }

    #[test]
    fn should_integrate_a_linear_model_exactly() {
        // F = sum(w * x) is linear, so sum(A) = sum_k w_k max_sigma g . dblur, a Riemann sum of
        // F(blur(s)) over s, which tends to F(x) - F(blur(x, max)) as steps grow; with 400
        // steps and a smooth F(blur(s)) the right-point rule is within 1 %.
        let axes = ImageAxes {
            channels: 1,
            height: 8,
            width: 8,
            channels_first: true,
        };
        let x: Vec<f32> = (0..64).map(|i| ((i * 13) % 17) as f32 / 17.0).collect();
        let w: Vec<f32> = (0..64).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
        let params = BlurParams {
            max_sigma: 3.0,
            grad_step: 0.001,
        };
        let f = |v: &[f32]| v.iter().zip(&w).map(|(a, b)| f64::from(a * b)).sum::<f64>();
        let mut total = 0f64;
        for node in crate::ig::nodes(crate::ig::Method::Right, 400) {
            let p = blur_point(&x, &axes, &params, node);
            total += p
                .factor
                .iter()
                .zip(&w)
                .map(|(a, b)| f64::from(a * b))
                .sum::<f64>();
        }
        let expected = f(&x) - f(&axes.blur(&x, 3.0, Boundary::Constant(0.0)));
        assert!(
            (total - expected).abs() < 0.01 * expected.abs().max(1.0),
            "{total} vs {expected}"
        );
    }

    /// One Blur IG point (two blurs of the coffee photo's 3x224x224 input) at a few sigmas,
    /// for docs/BENCHMARKS.md:
    /// `cargo test --release --lib blur_point_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn blur_point_timing() {
        let input = crate::npy::test_f32("coffee_input.npy");
        let axes = ImageAxes {
            channels: 3,
            height: 224,
            width: 224,
            channels_first: true,
        };
        let params = BlurParams::default();
        let mut total = 0.0;
        for alpha in [0.0, 0.5, 0.9, 0.99] {
            let node = Node {
                alpha,
                weight: 0.01,
            };
            let mut times: Vec<f64> = (0..7)
                .map(|_| {
                    let start = std::time::Instant::now();
                    std::hint::black_box(blur_point(&input, &axes, &params, node));
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            total += times[3];
            println!(
                "blur point, sigma {:.1}: {:.2} ms (median of 7)",
                (1.0 - alpha) * 50.0,
                times[3]
            );
        }
        println!("mean of the four: {:.2} ms", total / 4.0);
    }
}
