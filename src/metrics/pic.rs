//! PAIR's performance information curves (`saliency.metrics.pic.compute_pic_metric`): the
//! 8-bit image is blurred everywhere except a random few pixels, then the most salient
//! fraction of pixels (each threshold in turn) is revealed and the rest re-blurred from the
//! kept pixels. Each such image's information (its lossless WebP size, normalised between the
//! fully blurred image's and the original's) is the x, the model's normalised score the y:
//! the softmax of the target (SIC) or whether the target is top-1 (AIC). A faithful map
//! reaches the original score with little information revealed (a high area).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{create_blurred_image, trapezoid, webp_lossless_size, MetricsError};

/// PAIR's pic_metrics notebook thresholds: the fractions of the most salient pixels revealed.
pub const DEFAULT_THRESHOLDS: [f64; 13] = [
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75,
];

/// `compute_pic_metric`'s options, defaults as PAIR's.
#[derive(Debug, Clone, PartialEq)]
pub struct PicOptions {
    /// Ascending, in (0, 1].
    pub thresholds: Vec<f64>,
    /// The original image's score below this skips the image (PAIR: 0.8).
    pub min_pred_value: f64,
    /// The curve only rises: each point takes the best score so far (PAIR: true).
    pub keep_monotonous: bool,
    /// Points of the curve before x = 1 (PAIR: 1000).
    pub num_data_points: usize,
}

impl Default for PicOptions {
    fn default() -> Self {
        Self {
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
            min_pred_value: 0.8,
            keep_monotonous: true,
            num_data_points: 1000,
        }
    }
}

impl PicOptions {
    /// Checks the thresholds; the message says what is wrong with them.
    pub fn validate(&self) -> Result<(), MetricsError> {
        let t = &self.thresholds;
        if t.is_empty() {
            return Err(MetricsError::Option(
                "thresholds: at least one is needed".into(),
            ));
        }
        if let Some(bad) = t.iter().find(|&&v| !(v > 0.0 && v <= 1.0)) {
            return Err(MetricsError::Option(format!(
                "thresholds: {bad} is not in (0, 1]"
            )));
        }
        if t.windows(2).any(|w| w[1] <= w[0]) {
            return Err(MetricsError::Option(format!(
                "thresholds: must be strictly ascending, got {t:?}"
            )));
        }
        if !self.min_pred_value.is_finite() {
            return Err(MetricsError::Option(
                "min_pred_value: must be finite".into(),
            ));
        }
        if self.num_data_points == 0 {
            return Err(MetricsError::Option(
                "num_data_points: must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The images of one PIC evaluation and their information, before the model scores them.
#[derive(Debug, Clone)]
pub struct Pic {
    /// The fully blurred image, then one per threshold (8-bit, height x width x 3).
    pub images: Vec<Vec<u8>>,
    /// Their lossless WebP sizes, in the same order.
    pub entropies: Vec<usize>,
    /// The original image's.
    pub original_entropy: usize,
    pub thresholds: Vec<f64>,
}

/// One performance information curve.
#[derive(Debug, Clone, PartialEq)]
pub struct PicCurve {
    /// `num_data_points` evenly spaced x in [0, 1), then 1.
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub auc: f64,
    /// Each threshold's normalised information and normalised score (the points the curve
    /// interpolates, before (0, 0) and (1, 1) are added).
    pub points: Vec<(f64, f64)>,
}

impl Pic {
    /// Blurs `image` (8-bit RGB, height x width x 3) for every threshold of `thresholds`
    /// (ascending): the pixels of `random_mask` and those at or above the saliency quantile
    /// 1 - threshold are kept. CPU work: a Delaunay triangulation and a WebP encode per image,
    /// spread over the cores the process may use ([`in_parallel`]).
    /// Err: the picture cannot be interpolated ([`create_blurred_image`]).
    pub fn new(
        image: &[u8],
        height: usize,
        width: usize,
        saliency: &[f32],
        random_mask: &[bool],
        thresholds: &[f64],
    ) -> Result<Self, MetricsError> {
        let size = |img: &[u8]| webp_lossless_size(img, width, height).unwrap_or(img.len());
        let mut sorted = saliency.to_vec();
        sorted.sort_by(f32::total_cmp);
        // The random mask alone (the fully blurred image), then each threshold's.
        let mut masks = vec![random_mask.to_vec()];
        for &t in thresholds {
            let q = quantile(&sorted, 1.0 - t);
            masks.push(
                saliency
                    .iter()
                    .zip(random_mask)
                    .map(|(&s, &r)| s >= q || r)
                    .collect(),
            );
        }
        let made = in_parallel(masks.len(), |i| {
            let blurred = create_blurred_image(image, height, width, 3, &masks[i])?;
            let entropy = size(&blurred);
            Ok::<_, MetricsError>((blurred, entropy))
        });
        let (images, entropies) = made
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        Ok(Self {
            images,
            entropies,
            original_entropy: size(image),
            thresholds: thresholds.to_vec(),
        })
    }

    /// The curve from the model's scores: `original` of the image itself, `scores` of
    /// [`Pic::images`] in their order. Err: why PAIR would skip this image (its
    /// `ComputePicMetricError`), in its words.
    pub fn curve(
        &self,
        original: f64,
        scores: &[f64],
        options: &PicOptions,
    ) -> Result<PicCurve, String> {
        assert_eq!(scores.len(), self.images.len(), "one score per image");
        let (blurred, blurred_entropy) = (scores[0], self.entropies[0]);
        if original < options.min_pred_value {
            return Err(format!(
                "the model's score on the original image ({original:.4}) is lower than min_pred_value ({})",
                options.min_pred_value
            ));
        }
        if blurred_entropy >= self.original_entropy {
            return Err(format!(
                "the fully blurred image holds no less information than the original ({blurred_entropy} >= {} bytes of lossless WebP)",
                self.original_entropy
            ));
        }
        if blurred >= original {
            return Err(format!(
                "the model's score on the fully blurred image ({blurred:.4}) is not lower than on the original ({original:.4})"
            ));
        }
        let mut points = Vec::with_capacity(self.thresholds.len() + 2);
        let mut best = 0.0f64;
        for (&entropy, &score) in self.entropies[1..].iter().zip(&scores[1..]) {
            let x = ((entropy as f64 - blurred_entropy as f64)
                / (self.original_entropy as f64 - blurred_entropy as f64))
                .clamp(0.0, 1.0);
            let y = ((score - blurred) / (original - blurred)).clamp(0.0, 1.0);
            best = best.max(y);
            points.push((x, if options.keep_monotonous { best } else { y }));
        }
        let mut all = points.clone();
        all.push((0.0, 0.0));
        all.push((1.0, 1.0));
        // scipy's interp1d sorts its points by x, stably.
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = options.num_data_points;
        let mut x: Vec<f64> = (0..n).map(|i| i as f64 * (1.0 / n as f64)).collect();
        let mut y: Vec<f64> = x.iter().map(|&v| interp1d(&all, v)).collect();
        x.push(1.0);
        y.push(1.0);
        let auc = trapezoid(&x, &y);
        Ok(PicCurve { x, y, auc, points })
    }
}

/// `f(0)`, ..., `f(n - 1)`, in that order, computed on as many threads as the process may use
/// (its CPU quota), at most `n`. The largest index is started first: PIC's later masks keep
/// more pixels, and their triangulations take longest (Qhull's time grows faster than the
/// number of points on a dense grid, where many lifted points are coplanar and merged).
fn in_parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |c| c.get())
        .min(n);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= n {
                return done;
            }
            done.push((n - 1 - k, f(n - 1 - k)));
        }
    };
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut done = work();
        for worker in workers {
            done.extend(
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        done
    });
    done.sort_by_key(|&(i, _)| i);
    done.into_iter().map(|(_, t)| t).collect()
}

/// numpy's `quantile(values, q)` (method "linear") of ascending `sorted` float32 values, in
/// numpy's arithmetic: the virtual index in f64, the interpolation in f32, from the upper
/// end when the fraction is at least one half.
fn quantile(sorted: &[f32], q: f64) -> f32 {
    let n = sorted.len();
    let index = (n - 1) as f64 * q;
    let below = index.floor();
    let gamma = index - below;
    let below = (below as usize).min(n - 1);
    let (a, b) = (sorted[below], sorted[(below + 1).min(n - 1)]);
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * ((1.0 - gamma) as f32)
    } else {
        a + diff * (gamma as f32)
    }
}

/// scipy's `interp1d` (linear) at `x` over points sorted by x: the segment whose right end is
/// the first point at or after x (numpy's searchsorted, kept inside the points).
fn interp1d(points: &[(f64, f64)], x: f64) -> f64 {
    let i = points
        .partition_point(|p| p.0 < x)
        .clamp(1, points.len() - 1);
    let ((x0, y0), (x1, y1)) = (points[i - 1], points[i]);
    if x1 == x0 {
        // NOTE: scipy divides by zero here (0/0 gives NaN); a repeated x has no slope, so
        // the left point's value stands.
        return y0;
    }
    (y1 - y0) / (x1 - x0) * (x - x0) + y0
}

/// A random mask of `fraction` of `pixels` (PAIR's `generate_random_mask`), deterministic in
/// `seed` (integrad's own generator: the same seed does not give numpy's mask; send a mask to
/// reproduce one made in Python).
pub fn random_mask(pixels: usize, fraction: f64, seed: u64) -> Vec<bool> {
    let k = (pixels as f64 * fraction) as usize;
    let mut mask = vec![false; pixels];
    for i in crate::ig::draw_without_replacement(pixels, k, seed) {
        mask[i] = true;
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_numpys_linear() {
        // numpy.quantile(np.float32([1, 2, 4, 8]), q) for q = 0, 0.25, 0.5, 0.9, 1:
        // 1.0, 1.75, 3.0, 6.8 (to f32), 8.0.
        let v = [1.0f32, 2.0, 4.0, 8.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert!((quantile(&v, 0.9) - 6.8).abs() < 1e-6);
        assert_eq!(quantile(&v, 1.0), 8.0);
    }

    #[test]
    fn interp1d_is_piecewise_linear_through_its_points() {
        let p = [(0.0, 0.0), (0.5, 0.8), (1.0, 1.0)];
        assert_eq!(interp1d(&p, 0.0), 0.0);
        assert!((interp1d(&p, 0.25) - 0.4).abs() < 1e-12);
        assert_eq!(interp1d(&p, 0.5), 0.8);
        assert!((interp1d(&p, 0.75) - 0.9).abs() < 1e-12);
    }

    #[test]
    fn skips_as_pair_does() {
        let pic = Pic {
            images: vec![vec![]; 2],
            entropies: vec![100, 150],
            original_entropy: 200,
            thresholds: vec![0.5],
        };
        let options = PicOptions {
            thresholds: vec![0.5],
            ..Default::default()
        };
        // Below min_pred_value (0.8).
        assert!(pic
            .curve(0.5, &[0.1, 0.3], &options)
            .unwrap_err()
            .contains("min_pred_value"));
        // The blurred image scores as high as the original.
        assert!(pic
            .curve(0.9, &[0.9, 0.9], &options)
            .unwrap_err()
            .contains("fully blurred"));
        // Half the information gives half the score: the curve's points are (0, 0),
        // (0.5, 0.5), (1, 1): a straight line, area 1/2.
        let curve = pic.curve(0.9, &[0.1, 0.5], &options).unwrap();
        assert_eq!(curve.points, vec![(0.5, 0.5)]);
        assert_eq!(curve.x.len(), 1001);
        assert!((curve.auc - 0.5).abs() < 1e-12, "{}", curve.auc);
    }

    #[test]
    fn in_parallel_keeps_the_order() {
        let squares = in_parallel(50, |i| i * i);
        assert_eq!(squares, (0..50).map(|i| i * i).collect::<Vec<_>>());
        assert!(in_parallel(0, |i| i).is_empty());
    }

    #[test]
    fn random_mask_has_its_fraction() {
        let mask = random_mask(224 * 224, 0.01, 7);
        assert_eq!(mask.iter().filter(|&&m| m).count(), 501);
        assert_eq!(mask, random_mask(224 * 224, 0.01, 7));
    }
}
