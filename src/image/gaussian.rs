//! Gaussian blur with the semantics of `scipy.ndimage.gaussian_filter`, which PAIR's saliency
//! package (Blur IG, and XRAI through scikit-image's Felzenszwalb segmentation) uses; the
//! techniques that must match PAIR blur with this, not with the IG blur baseline's kernel.
//!
//! What "scipy's semantics" means here, axis by axis in order:
//! - an axis with sigma at most 1e-15 is left untouched (scipy skips it);
//! - the kernel is the sampled Gaussian `exp(-x^2 / (2 sigma^2))` for integer `x` in
//!   `-radius..=radius`, `radius = int(4.0 * sigma + 0.5)` (scipy's `truncate` 4.0), divided by
//!   its sum; weights and sums in f64;
//! - the line is extended beyond its ends by the [`Boundary`] mode, as far as the radius needs,
//!   even when that is many times the line's length;
//! - each output value is rounded to the array's type before the next axis reads it (scipy
//!   writes every pass into the output array, float32 for float32 input), and the sum is taken
//!   in scipy's order (the centre tap, then
//!   the pairs of taps at distance `radius` down to 1, each pair added before it is weighted), so
//!   results agree with scipy's to the last bit or so.
//!
//! Hand-written rather than taken from a crate: the image crates' blurs (`image`'s `blur`,
//! `imageproc`'s `gaussian_blur_f32`) choose their own kernel radius, clamp at the border and
//! work on 2-D images only; matching scipy's radius, boundary modes and rounding is the point.
//! Speed: separable passes over precomputed kernel halves and index tables, with contiguous
//! inner loops the compiler vectorises; no allocation per element.

/// The element types blurred: f32 (model tensors) and f64 (scikit-image's float64 images).
pub trait Sample: Copy {
    fn to_f64(self) -> f64;
    fn from_f64(value: f64) -> Self;
}

impl Sample for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(value: f64) -> Self {
        value as f32
    }
}

impl Sample for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(value: f64) -> Self {
        value
    }
}

/// How a line is extended beyond its ends (scipy's `mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Boundary {
    /// scipy's `'reflect'` (its default): `d c b a | a b c d | d c b a | a b c d ...`, the line
    /// mirrored about its edge, over and over for a kernel wider than the line.
    Reflect,
    /// scipy's `'constant'`: the value `cval` beyond both ends.
    Constant(f64),
}

/// scipy's default `truncate`: the kernel reaches this many sigmas either side.
pub const TRUNCATE: f64 = 4.0;

/// Sigmas at or below this leave their axis untouched (scipy's cut-off).
const SIGMA_EPSILON: f64 = 1e-15;

/// The largest kernel radius accepted (sigma about 4096): far beyond any image this crate
/// blurs, and it bounds the work and memory one call may take.
pub const MAX_RADIUS: usize = 1 << 14;

/// Why a blur was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GaussianError {
    #[error("{values} values do not fill shape {shape:?} ({expected} elements)")]
    ShapeMismatch {
        values: usize,
        shape: Vec<usize>,
        expected: usize,
    },
    #[error("{sigmas} sigmas given for an array of {axes} axes; give one per axis")]
    SigmaCount { sigmas: usize, axes: usize },
    #[error("sigma for axis {axis} must be finite and non-negative, got {sigma}")]
    BadSigma { axis: usize, sigma: f64 },
    #[error("sigma {sigma} for axis {axis} needs a kernel radius of {radius}, above the limit of {max}", max = MAX_RADIUS)]
    TooWide {
        axis: usize,
        sigma: f64,
        radius: usize,
    },
}

/// Blurs the row-major array `values` of `shape`, axis by axis, with the Gaussian of standard
/// deviation `sigmas[axis]` (0 leaves that axis alone), as
/// `scipy.ndimage.gaussian_filter(values, sigmas, mode=..., cval=...)` does for a float32 (or
/// float64) array.
pub fn gaussian_filter<T: Sample>(
    values: &[T],
    shape: &[usize],
    sigmas: &[f64],
    boundary: Boundary,
) -> Result<Vec<T>, GaussianError> {
    let expected = shape.iter().product::<usize>();
    if values.len() != expected {
        return Err(GaussianError::ShapeMismatch {
            values: values.len(),
            shape: shape.to_vec(),
            expected,
        });
    }
    if sigmas.len() != shape.len() {
        return Err(GaussianError::SigmaCount {
            sigmas: sigmas.len(),
            axes: shape.len(),
        });
    }
    let mut kernels = Vec::with_capacity(sigmas.len());
    for (axis, &sigma) in sigmas.iter().enumerate() {
        if !sigma.is_finite() || sigma < 0.0 {
            return Err(GaussianError::BadSigma { axis, sigma });
        }
        if sigma <= SIGMA_EPSILON {
            kernels.push(None);
            continue;
        }
        // Python's int() of a positive float: truncation.
        let radius = (TRUNCATE * sigma + 0.5) as usize;
        if radius > MAX_RADIUS {
            return Err(GaussianError::TooWide {
                axis,
                sigma,
                radius,
            });
        }
        kernels.push(Some(half_kernel(sigma, radius)));
    }

    let mut out = values.to_vec();
    if expected == 0 {
        return Ok(out);
    }
    let mut scratch = Scratch::default();
    for (axis, kernel) in kernels.iter().enumerate() {
        if let Some(kernel) = kernel {
            filter_axis(&mut out, shape, axis, kernel, boundary, &mut scratch);
        }
    }
    Ok(out)
}

/// The kernel's weights for offsets `0..=radius` (it is symmetric), as scipy's
/// `_gaussian_kernel1d` computes them: `exp(-0.5 / sigma^2 * x^2)` over `-radius..=radius`,
/// divided by their sum.
pub(crate) fn half_kernel(sigma: f64, radius: usize) -> Vec<f64> {
    let factor = -0.5 / (sigma * sigma);
    let half: Vec<f64> = (0..=radius)
        .map(|x| (factor * (x * x) as f64).exp())
        .collect();
    let total = half[0] + 2.0 * half[1..].iter().sum::<f64>();
    half.into_iter().map(|w| w / total).collect()
}

/// Buffers reused across lines and axes.
#[derive(Default)]
struct Scratch {
    /// Extended-line index table: for position `p` of the extended line (`p - radius` on the
    /// line itself), the source index, or `n` for the constant value.
    index: Vec<usize>,
    /// One line (or slab of lines) in f64, plus a row holding the constant value.
    source: Vec<f64>,
    /// The extended line (last-axis path).
    extended: Vec<f64>,
    /// Sums being accumulated.
    acc: Vec<f64>,
}

/// Fills `index` for a line of `n` values and a kernel of `radius`.
fn index_table(index: &mut Vec<usize>, n: usize, radius: usize, boundary: Boundary) {
    index.clear();
    let period = 2 * n as isize;
    index.extend((0..n + 2 * radius).map(|p| {
        let q = p as isize - radius as isize;
        match boundary {
            Boundary::Reflect => {
                // Mirrored about both ends, repeating with period 2n.
                let m = q.rem_euclid(period) as usize;
                if m < n {
                    m
                } else {
                    2 * n - 1 - m
                }
            }
            Boundary::Constant(_) => {
                if (0..n as isize).contains(&q) {
                    q as usize
                } else {
                    n
                }
            }
        }
    }));
}

/// One separable pass along `axis`, in place.
fn filter_axis<T: Sample>(
    data: &mut [T],
    shape: &[usize],
    axis: usize,
    half: &[f64],
    boundary: Boundary,
    scratch: &mut Scratch,
) {
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let radius = half.len() - 1;
    let cval = match boundary {
        Boundary::Reflect => 0.0,
        Boundary::Constant(c) => c,
    };
    index_table(&mut scratch.index, n, radius, boundary);
    if inner == 1 {
        for line in data.chunks_exact_mut(n) {
            filter_line(line, half, cval, scratch);
        }
    } else {
        for slab in data.chunks_exact_mut(n * inner).take(outer) {
            filter_slab(slab, inner, half, cval, scratch);
        }
    }
}

/// A contiguous line: extended into a buffer, then each tap pair added over the whole line.
fn filter_line<T: Sample>(line: &mut [T], half: &[f64], cval: f64, s: &mut Scratch) {
    let n = line.len();
    let radius = half.len() - 1;
    s.source.clear();
    s.source.extend(line.iter().map(|&v| v.to_f64()));
    s.source.push(cval);
    s.extended.clear();
    s.extended.extend(s.index.iter().map(|&i| s.source[i]));
    s.acc.clear();
    s.acc
        .extend(s.extended[radius..radius + n].iter().map(|&v| v * half[0]));
    // scipy's order: the outermost pair first, each pair summed before it is weighted.
    for j in (1..=radius).rev() {
        let w = half[j];
        let left = &s.extended[radius - j..radius - j + n];
        let right = &s.extended[radius + j..radius + j + n];
        for ((a, l), r) in s.acc.iter_mut().zip(left).zip(right) {
            *a += (l + r) * w;
        }
    }
    for (o, a) in line.iter_mut().zip(&s.acc) {
        *o = T::from_f64(*a);
    }
}

/// Lines of stride `inner`, interleaved (an axis that is not the last; the slab holds the
/// line's length times `inner` values): whole rows of `inner` values are combined at a time, so
/// the inner loop is contiguous.
fn filter_slab<T: Sample>(slab: &mut [T], inner: usize, half: &[f64], cval: f64, s: &mut Scratch) {
    let radius = half.len() - 1;
    s.source.clear();
    s.source.extend(slab.iter().map(|&v| v.to_f64()));
    s.source.extend(std::iter::repeat_n(cval, inner));
    s.acc.clear();
    s.acc.resize(inner, 0.0);
    let row = |i: usize| &s.source[s.index[i] * inner..(s.index[i] + 1) * inner];
    for (i, out) in slab.chunks_exact_mut(inner).enumerate() {
        let centre = row(radius + i);
        for (a, c) in s.acc.iter_mut().zip(centre) {
            *a = c * half[0];
        }
        for j in (1..=radius).rev() {
            let w = half[j];
            let left = row(radius + i - j);
            let right = row(radius + i + j);
            for ((a, l), r) in s.acc.iter_mut().zip(left).zip(right) {
                *a += (l + r) * w;
            }
        }
        for (o, a) in out.iter_mut().zip(&s.acc) {
            *o = T::from_f64(*a);
        }
    }
}

#[cfg(test)]
mod tests;
