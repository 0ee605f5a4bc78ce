//! Deletion and insertion (Petsiuk et al., "RISE", BMVC 2018, its `CausalMetric`): the
//! pixels in order of decreasing saliency move, a fixed number per step, from a start image
//! to a finish image; the curve is the target's score after each step. Deletion starts from
//! the input and ends at a substrate (black, zeros or a blur): a faithful map makes the score
//! fall at once (low area). Insertion starts from the blurred input and ends at the input: a
//! faithful map makes the score rise at once (high area). Every channel of a pixel moves
//! together, in the model's input space.

use super::trapezoid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CausalMode {
    Deletion,
    Insertion,
}

/// One deletion or insertion curve, ready to make its images.
#[derive(Debug, Clone)]
pub struct Causal {
    start: Vec<f32>,
    finish: Vec<f32>,
    order: Vec<usize>,
    channels: usize,
    chw: bool,
    step: usize,
}

impl Causal {
    /// `input` and `substrate` are model-space tensors of `channels` values per pixel
    /// (channels-first when `chw`), `order` the pixels most salient first, and `step` the
    /// pixels moved per step (at least 1).
    pub fn new(
        mode: CausalMode,
        input: Vec<f32>,
        substrate: Vec<f32>,
        order: Vec<usize>,
        channels: usize,
        chw: bool,
        step: usize,
    ) -> Self {
        let (start, finish) = match mode {
            CausalMode::Deletion => (input, substrate),
            CausalMode::Insertion => (substrate, input),
        };
        Self {
            start,
            finish,
            order,
            channels,
            chw,
            step: step.max(1),
        }
    }

    /// RISE's `n_steps`: enough steps to move every pixel (the last may move fewer).
    pub fn steps(&self) -> usize {
        self.order.len().div_ceil(self.step)
    }

    /// The curve's x: the fraction of the pixels moved at each of its `steps() + 1` points.
    pub fn x(&self) -> Vec<f64> {
        let pixels = self.order.len();
        (0..=self.steps())
            .map(|i| (i * self.step).min(pixels) as f64 / pixels as f64)
            .collect()
    }

    /// The image at point `i` (0 = the start, `steps()` = the finish): the first
    /// `i * step` pixels of the order taken from the finish.
    pub fn image(&self, i: usize) -> Vec<f32> {
        let pixels = self.order.len();
        let mut image = self.start.clone();
        for &p in &self.order[..(i * self.step).min(pixels)] {
            for c in 0..self.channels {
                let at = if self.chw {
                    c * pixels + p
                } else {
                    p * self.channels + c
                };
                image[at] = self.finish[at];
            }
        }
        image
    }

    /// The area under the curve of `scores` (one per point) over [0, 1].
    pub fn area(&self, scores: &[f64]) -> f64 {
        trapezoid(&self.x(), scores)
    }
}

/// RISE's insertion substrate: each channel convolved with its kernel `gkern(size, sigma)`
/// (a delta at the centre of a size x size array blurred by scipy's `gaussian_filter` with
/// its default reflecting border and truncation at 4 sigma), zero-padded at the image's
/// border as RISE's `conv2d(x, kern, padding=size // 2)` is. RISE: size 11, sigma 5.
///
/// NOTE: RISE's own kernel, written here rather than shared with a general Gaussian blur:
/// reflecting a sigma-5 Gaussian inside 11 x 11 is not a truncated Gaussian, and the
/// reference implementation's numbers depend on exactly this kernel.
pub fn rise_blur(
    input: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    chw: bool,
    size: usize,
    sigma: f64,
) -> Vec<f32> {
    let kernel = rise_kernel(size, sigma);
    let half = (size / 2) as isize;
    let at = |c: usize, y: usize, x: usize| {
        if chw {
            (c * height + y) * width + x
        } else {
            (y * width + x) * channels + c
        }
    };
    let mut out = vec![0.0f32; input.len()];
    for c in 0..channels {
        for y in 0..height {
            for x in 0..width {
                let mut sum = 0.0f32;
                for (ky, row) in kernel.iter().enumerate() {
                    let sy = y as isize + ky as isize - half;
                    if sy < 0 || sy >= height as isize {
                        continue;
                    }
                    for (kx, &k) in row.iter().enumerate() {
                        let sx = x as isize + kx as isize - half;
                        if sx < 0 || sx >= width as isize {
                            continue;
                        }
                        sum += k * input[at(c, sy as usize, sx as usize)];
                    }
                }
                out[at(c, y, x)] = sum;
            }
        }
    }
    out
}

/// RISE's `gkern(size, sigma)` for one channel, as float32 (its kernel tensor's type).
fn rise_kernel(size: usize, sigma: f64) -> Vec<Vec<f32>> {
    // scipy's 1-D Gaussian: radius int(4 sigma + 0.5), weights exp(-x^2 / (2 sigma^2))
    // normalised to sum 1.
    let radius = (4.0 * sigma + 0.5) as isize;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // The filtered delta at `centre`: each output gathers the weights whose tap, reflected
    // into the array (scipy's "reflect": d c b a | a b c d | d c b a), lands on the centre.
    let n = size as isize;
    let reflect = |i: isize| {
        let m = i.rem_euclid(2 * n);
        if m < n {
            m
        } else {
            2 * n - 1 - m
        }
    };
    let centre = n / 2;
    let line: Vec<f64> = (0..n)
        .map(|i| {
            (-radius..=radius)
                .filter(|&j| reflect(i + j) == centre)
                .map(|j| weights[(j + radius) as usize] / total)
                .sum()
        })
        .collect();
    // The delta is separable, so filtering both axes gives the outer product.
    line.iter()
        .map(|&a| line.iter().map(|&b| (a * b) as f32).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_moves_the_most_salient_pixels_first() {
        // 4 pixels, 1 channel; order 2, 0, 3, 1; two pixels per step.
        let c = Causal::new(
            CausalMode::Deletion,
            vec![1.0, 2.0, 3.0, 4.0],
            vec![0.0; 4],
            vec![2, 0, 3, 1],
            1,
            true,
            2,
        );
        assert_eq!(c.steps(), 2);
        assert_eq!(c.x(), vec![0.0, 0.5, 1.0]);
        assert_eq!(c.image(0), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(c.image(1), vec![0.0, 2.0, 0.0, 4.0]);
        assert_eq!(c.image(2), vec![0.0; 4]);
    }

    #[test]
    fn insertion_of_channels_last_moves_whole_pixels() {
        // 3 pixels x 2 channels (HWC), 2 pixels per step: the last step moves one.
        let input = vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
        let c = Causal::new(
            CausalMode::Insertion,
            input.clone(),
            vec![0.0; 6],
            vec![1, 2, 0],
            2,
            false,
            2,
        );
        assert_eq!(c.x(), vec![0.0, 2.0 / 3.0, 1.0]);
        assert_eq!(c.image(1), vec![0.0, 0.0, 2.0, 20.0, 3.0, 30.0]);
        assert_eq!(c.image(2), input);
    }

    #[test]
    fn rise_kernel_sums_to_one_and_is_flat_for_a_wide_sigma() {
        // Reflecting keeps all of the Gaussian's mass inside: the kernel sums to 1 (to f32
        // rounding of 121 terms). Sigma 5 on 11 taps is nearly flat: the centre and the
        // corner differ by less than a factor 2 (a truncated Gaussian's would be e^-1 apart).
        let k = rise_kernel(11, 5.0);
        let sum: f32 = k.iter().flatten().sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        assert!(k[5][5] > k[0][0] && k[5][5] < 2.0 * k[0][0]);
    }

    #[test]
    fn rise_blur_of_a_constant_darkens_at_the_zero_padded_border() {
        let blurred = rise_blur(&[1.0; 15 * 15], 1, 15, 15, true, 11, 5.0);
        // Far from the border: the kernel's whole mass.
        assert!((blurred[7 * 15 + 7] - 1.0).abs() < 1e-6);
        // At a corner only the kernel's lower-right quarter (plus the centre row and column)
        // sees the image.
        assert!(blurred[0] < 0.5);
    }
}
