//! Baselines x' in the model's input space: the "absence of the feature" that IG integrates
//! from.
//!
//! For image models the baseline is made in pixel terms and mapped through the model's own
//! preprocessing, so black means pixel 0 *before* normalisation (zeros in normalised space are
//! mean grey, not black). Everything here is a pure function of the input tensor, the
//! preprocessing facts and a seed: the same request gives the same baseline.

use crate::image::{Layout, Preprocessing};

use super::IgError;

/// The baselines this module makes. A user-supplied tensor needs no making.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BaselineKind {
    /// All zeros in the model's input space (for images: the mean colour).
    Zeros,
    /// Pixel 0 in every channel, through the preprocessing.
    Black,
    /// Pixel 255 in every channel, through the preprocessing.
    White,
    /// Independent uniform noise per value, deterministic in `seed`.
    Uniform { seed: u64 },
    /// The input blurred by a Gaussian of `sigma` pixels, per channel.
    Blur { sigma: f32 },
}

impl BaselineKind {
    fn name(self) -> &'static str {
        match self {
            BaselineKind::Zeros => "zeros",
            BaselineKind::Black => "black",
            BaselineKind::White => "white",
            BaselineKind::Uniform { .. } => "uniform",
            BaselineKind::Blur { .. } => "blur",
        }
    }
}

/// Makes the baseline for `input` (one example, no batch dimension). `pre` describes the image
/// preprocessing when the input came from an image; black, white and blur need it.
pub fn make_baseline(
    kind: BaselineKind,
    input: &[f32],
    pre: Option<&Preprocessing>,
) -> Result<Vec<f32>, IgError> {
    if let Some(p) = pre {
        let expected = p.shape().iter().product::<usize>();
        if input.len() != expected {
            return Err(IgError::LengthMismatch {
                what: "image input",
                expected,
                got: input.len(),
            });
        }
    }
    let needs_image = || IgError::NeedsImage { kind: kind.name() };
    match kind {
        BaselineKind::Zeros => Ok(zeros(input.len())),
        BaselineKind::Black => Ok(pixel(pre.ok_or_else(needs_image)?, 0)),
        BaselineKind::White => Ok(pixel(pre.ok_or_else(needs_image)?, 255)),
        BaselineKind::Uniform { seed } => Ok(match pre {
            Some(p) => uniform_image(p, seed),
            None => uniform_tensor(input, seed),
        }),
        BaselineKind::Blur { sigma } => gaussian_blur(input, pre.ok_or_else(needs_image)?, sigma),
    }
}

pub fn zeros(len: usize) -> Vec<f32> {
    vec![0.0; len]
}

/// Every pixel set to `value` in all three channels, in model space and the model's layout.
pub fn pixel(p: &Preprocessing, value: u8) -> Vec<f32> {
    let per_channel = [0, 1, 2].map(|c| p.normalise(c, value));
    let mut out = vec![0.0; p.shape().iter().product()];
    for (i, v) in out.iter_mut().enumerate() {
        *v = per_channel[channel_of(p, i)];
    }
    out
}

/// Uniform noise over the model-space image of pixel values [0, 255] in each channel: what a
/// random-noise image would look like after the preprocessing.
pub fn uniform_image(p: &Preprocessing, seed: u64) -> Vec<f32> {
    let ends = [0, 1, 2].map(|c| (p.normalise(c, 0), p.normalise(c, 255)));
    let mut rng = SplitMix64::new(seed);
    let mut out = vec![0.0; p.shape().iter().product()];
    for (i, v) in out.iter_mut().enumerate() {
        // lo + u (hi - lo) also covers a negative std, where pixel 255 maps below pixel 0.
        let (lo, hi) = ends[channel_of(p, i)];
        *v = lo + rng.next_unit() * (hi - lo);
    }
    out
}

/// `k` distinct indices of `0..n`, drawn with `seed` (a partial Fisher-Yates shuffle), in the
/// order drawn: the reference rows of expected gradients.
pub fn draw_without_replacement(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in 0..k.min(n) {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(k.min(n));
    all
}

/// Uniform noise for an input with no image behind it.
///
/// NOTE: with no pixel range to map, the range is the input's own [min, max]: noise of the
/// input's scale, where a fixed range such as [0, 1] would be wrong for most tensors.
pub fn uniform_tensor(input: &[f32], seed: u64) -> Vec<f32> {
    let lo = input.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = input.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut rng = SplitMix64::new(seed);
    input
        .iter()
        .map(|_| lo + rng.next_unit() * (hi - lo))
        .collect()
}

/// The input blurred by a Gaussian of standard deviation `sigma` pixels, each channel on its
/// own, honouring the layout. Separable: one horizontal pass, then one vertical pass, with a
/// kernel cut at 3 sigma (it holds 99.7 % of the mass) and renormalised to sum to 1, so a flat
/// image stays flat. Beyond the border the edge pixel is repeated, so edges do not darken.
pub fn gaussian_blur(input: &[f32], p: &Preprocessing, sigma: f32) -> Result<Vec<f32>, IgError> {
    let (h, w) = (p.height as usize, p.width as usize);
    let max = p.height.max(p.width);
    if !sigma.is_finite() || sigma < 0.0 || sigma > max as f32 {
        return Err(IgError::BadSigma { sigma, max });
    }
    let expected = 3 * h * w;
    if input.len() != expected {
        return Err(IgError::LengthMismatch {
            what: "image input",
            expected,
            got: input.len(),
        });
    }
    let kernel = gaussian_kernel(sigma);
    let r = (kernel.len() / 2) as isize;
    // (channel stride, row stride, column stride) of the layout.
    let (cs, ys, xs) = match p.layout {
        Layout::Nchw => (h * w, w, 1),
        Layout::Nhwc => (1, 3 * w, 3),
    };
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    let mut across = vec![0.0f32; input.len()];
    let mut out = vec![0.0f32; input.len()];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let s: f64 = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| {
                        let xx = clamp(x as isize + k as isize - r, w);
                        wk * f64::from(input[c * cs + y * ys + xx * xs])
                    })
                    .sum();
                across[c * cs + y * ys + x * xs] = s as f32;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let s: f64 = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| {
                        let yy = clamp(y as isize + k as isize - r, h);
                        wk * f64::from(across[c * cs + yy * ys + x * xs])
                    })
                    .sum();
                out[c * cs + y * ys + x * xs] = s as f32;
            }
        }
    }
    Ok(out)
}

/// The sampled Gaussian, radius ceil(3 sigma), normalised to sum 1; sigma 0 is the identity.
fn gaussian_kernel(sigma: f32) -> Vec<f64> {
    if sigma == 0.0 {
        return vec![1.0];
    }
    let sigma = f64::from(sigma);
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f64> = (-r..=r)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = k.iter().sum();
    k.into_iter().map(|v| v / total).collect()
}

/// The colour channel of flat index `i` in the model's layout.
fn channel_of(p: &Preprocessing, i: usize) -> usize {
    match p.layout {
        Layout::Nchw => i / (p.height as usize * p.width as usize),
        Layout::Nhwc => i % 3,
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and every seed, 0 included, gives a good
/// stream. Its output is fixed by the algorithm, so seeded baselines are reproducible across
/// versions and platforms, which a dependency's generator need not promise.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 24 bits, exactly the precision of an f32 mantissa.
    fn next_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ResizePolicy;

    /// ImageNet normalisation on a small image, so every per-channel number differs.
    fn imagenet(layout: Layout, height: u32, width: u32) -> Preprocessing {
        Preprocessing {
            layout,
            height,
            width,
            resize: ResizePolicy::Stretch,
            crop_fraction: 1.0,
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    #[test]
    fn zeros_are_zeros_of_the_input_length() {
        let b = make_baseline(BaselineKind::Zeros, &[1.0, 2.0, 3.0], None).unwrap();
        assert_eq!(b, vec![0.0; 3]);
    }

    #[test]
    fn black_and_white_go_through_the_preprocessing_per_channel() {
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let p = imagenet(layout, 2, 3);
            let input = vec![0.0; 18];
            let black = make_baseline(BaselineKind::Black, &input, Some(&p)).unwrap();
            let white = make_baseline(BaselineKind::White, &input, Some(&p)).unwrap();
            for i in 0..18 {
                let c = match layout {
                    Layout::Nchw => i / 6,
                    Layout::Nhwc => i % 3,
                };
                // Black is -mean/std: about -2.1, -2.0, -1.8 for ImageNet; exact by formula.
                assert_eq!(black[i], -p.mean[c] / p.std[c], "black {layout:?} {i}");
                assert_eq!(white[i], p.normalise(c, 255), "white {layout:?} {i}");
            }
        }
    }

    #[test]
    fn black_needs_an_image() {
        assert_eq!(
            make_baseline(BaselineKind::Black, &[0.0], None),
            Err(IgError::NeedsImage { kind: "black" })
        );
        let p = imagenet(Layout::Nchw, 2, 2);
        assert!(matches!(
            make_baseline(BaselineKind::White, &[0.0; 5], Some(&p)),
            Err(IgError::LengthMismatch { expected: 12, .. })
        ));
    }

    #[test]
    fn uniform_is_seeded_in_range_and_centred() {
        let p = imagenet(Layout::Nhwc, 32, 32);
        let input = vec![0.0; 3 * 32 * 32];
        let a = make_baseline(BaselineKind::Uniform { seed: 7 }, &input, Some(&p)).unwrap();
        let b = make_baseline(BaselineKind::Uniform { seed: 7 }, &input, Some(&p)).unwrap();
        let c = make_baseline(BaselineKind::Uniform { seed: 8 }, &input, Some(&p)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        for ch in 0..3 {
            let (lo, hi) = (p.normalise(ch, 0), p.normalise(ch, 255));
            let values: Vec<f32> = a.iter().skip(ch).step_by(3).copied().collect();
            assert!(values.iter().all(|v| *v >= lo && *v <= hi));
            // 1024 samples of U(0, 1) have a mean with standard deviation 0.289 / 32 = 0.009;
            // 0.05 of the range is over 5 of those, so a correct generator never fails here.
            let mean = values.iter().map(|v| (v - lo) / (hi - lo)).sum::<f32>() / 1024.0;
            assert!((mean - 0.5).abs() < 0.05, "channel {ch} mean {mean}");
        }
    }

    #[test]
    fn uniform_without_an_image_spans_the_inputs_range() {
        let input: Vec<f32> = (0..1000).map(|i| i as f32 / 100.0 - 3.0).collect();
        let b = make_baseline(BaselineKind::Uniform { seed: 0 }, &input, None).unwrap();
        assert!(b.iter().all(|v| (-3.0..=6.99).contains(v)));
        // 1000 draws over a range of ~10: the extremes land within a few percent of the ends.
        let min = b.iter().copied().fold(f32::INFINITY, f32::min);
        let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(min < -2.7 && max > 6.7, "{min} {max}");
    }

    #[test]
    fn draws_distinct_rows_reproducibly() {
        let a = draw_without_replacement(10, 4, 7);
        assert_eq!(a, draw_without_replacement(10, 4, 7));
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "{a:?}");
        assert!(a.iter().all(|&i| i < 10));
        assert_eq!(draw_without_replacement(3, 9, 0).len(), 3);
    }

    #[test]
    fn splitmix64_matches_its_reference_output() {
        // The first outputs for seed 0 published with the algorithm (and in its C reference).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn blur_keeps_a_flat_image_flat_and_sigma_zero_is_identity() {
        let p = imagenet(Layout::Nchw, 5, 6);
        let flat = vec![0.75f32; 90];
        let b = gaussian_blur(&flat, &p, 1.5).unwrap();
        // The kernel sums to 1 in f64; rounding to f32 leaves at most an ulp or two of 0.75.
        assert!(b.iter().all(|v| (v - 0.75).abs() < 1e-6));
        let ramp: Vec<f32> = (0..90).map(|i| i as f32).collect();
        assert_eq!(gaussian_blur(&ramp, &p, 0.0).unwrap(), ramp);
    }

    #[test]
    fn blur_spreads_an_impulse_as_a_gaussian_keeping_its_mass() {
        let p = imagenet(Layout::Nchw, 21, 21);
        let mut input = vec![0.0f32; 3 * 21 * 21];
        let centre = 21 * 10 + 10;
        input[441 + centre] = 1.0; // channel 1 only
        let sigma = 2.0;
        let b = gaussian_blur(&input, &p, sigma).unwrap();
        // Channels 0 and 2 must stay untouched: blur is per channel.
        assert!(b[..441].iter().chain(&b[882..]).all(|v| *v == 0.0));
        let g = &b[441..882];
        // Radius 6 fits inside the 21x21 image, so no mass leaks past a border: sum is 1 up to
        // f32 rounding of 441 terms.
        let total: f32 = g.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        // The 2-D kernel is the outer product of the 1-D one: peak k0^2, one step off k0 k1.
        let k = gaussian_kernel(sigma);
        let (k0, k1) = (k[6], k[7]);
        assert!((f64::from(g[centre]) - k0 * k0).abs() < 1e-7);
        assert!((f64::from(g[centre + 1]) - k0 * k1).abs() < 1e-7);
        assert!((f64::from(g[centre + 21]) - k0 * k1).abs() < 1e-7);
        // The peak is 1 / sum_{|i|<=6} exp(-i^2/8): the sum over all integers is
        // sqrt(2 pi) sigma = 5.01326 (to 1e-17 at this sigma, by Poisson summation), less the
        // tail beyond 3 sigma, 2 (e^-49/8 + e^-8 + e^-81/8 + ...) = 0.00513, so 1/5.00813.
        assert!((k0 - 0.199675).abs() < 1e-6, "{k0}");
    }

    #[test]
    fn blur_is_the_same_in_either_layout() {
        let (h, w) = (7usize, 9usize);
        let nchw = imagenet(Layout::Nchw, h as u32, w as u32);
        let nhwc = imagenet(Layout::Nhwc, h as u32, w as u32);
        let mut rng = SplitMix64::new(3);
        let chw: Vec<f32> = (0..3 * h * w).map(|_| rng.next_unit()).collect();
        let mut hwc = vec![0.0; chw.len()];
        for c in 0..3 {
            for i in 0..h * w {
                hwc[i * 3 + c] = chw[c * h * w + i];
            }
        }
        let a = gaussian_blur(&chw, &nchw, 1.2).unwrap();
        let b = gaussian_blur(&hwc, &nhwc, 1.2).unwrap();
        for c in 0..3 {
            for i in 0..h * w {
                // Same arithmetic in the same order: bit-identical.
                assert_eq!(a[c * h * w + i], b[i * 3 + c]);
            }
        }
    }

    #[test]
    fn blur_rejects_bad_sigma() {
        let p = imagenet(Layout::Nchw, 4, 4);
        for sigma in [-1.0, f32::NAN, 5.0] {
            assert!(matches!(
                gaussian_blur(&[0.0; 48], &p, sigma),
                Err(IgError::BadSigma { max: 4, .. })
            ));
        }
    }
}
