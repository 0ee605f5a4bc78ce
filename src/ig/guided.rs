//! Guided IG (Kapishnikov et al., "Guided Integrated Gradients: an Adaptive Path Method for
//! Removing Noise", CVPR 2021): instead of the straight line from the baseline x' to the input
//! x, the path moves, at each step, the features whose |gradient| is smallest, so that it
//! avoids the directions where the model is saturated and noisy.
//!
//! The walk is the reference implementation's (PAIR's `saliency` package, `guided_ig_impl`),
//! step for step, in f64 and with NumPy's order of summation, so that fed the same gradients
//! the two give the same bits (the walk is chaotic in them: [`numpy_sum`]): step k of `steps` brings the L1 distance to the input down to
//! `(1 - k / steps)` of the total by moving the `fraction` of features with the smallest
//! |gradient| towards the input, no feature getting more than `max_dist` (in alpha) ahead of
//! the straight path nor falling more than that behind it. Each step evaluates one gradient,
//! at the point where the step starts, and the attributions add up `(x_new - x_old) * grad`:
//! a first-order path integral, so that they sum to about F(x) - F(x') (completeness, closer
//! with more steps).
//!
//! The caller evaluates the gradient at [`GuidedPath::point`] and hands it to
//! [`GuidedPath::advance`]; the path needs nothing else from the model.

use super::IgError;

/// Two L1 distances that differ by less than this (relatively and absolutely) are equal.
const EPSILON: f64 = 1e-9;

/// Guided IG's parameters (PAIR's defaults: [`GuidedParams::default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuidedParams {
    pub steps: u32,
    /// The fraction of features moved at each step.
    pub fraction: f64,
    /// How far (in alpha) a feature may deviate from the straight path.
    pub max_dist: f64,
}

impl Default for GuidedParams {
    fn default() -> Self {
        Self {
            steps: 200,
            fraction: 0.25,
            max_dist: 0.02,
        }
    }
}

impl GuidedParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.steps == 0 {
            return Err("steps must be at least 1".into());
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(format!("fraction must be in (0, 1], got {}", self.fraction));
        }
        if !(0.0..=1.0).contains(&self.max_dist) {
            return Err(format!("max_dist must be in [0, 1], got {}", self.max_dist));
        }
        Ok(())
    }
}

/// One Guided IG walk from a baseline to an input.
#[derive(Debug, Clone)]
pub struct GuidedPath {
    params: GuidedParams,
    input: Vec<f64>,
    baseline: Vec<f64>,
    /// The current point.
    x: Vec<f64>,
    attributions: Vec<f64>,
    l1_total: f64,
    /// Steps done.
    step: u32,
    /// The point where the current step started, as f32 for the model.
    point: Vec<f32>,
}

impl GuidedPath {
    pub fn new(input: &[f32], baseline: &[f32], params: GuidedParams) -> Result<Self, IgError> {
        if input.len() != baseline.len() {
            return Err(IgError::LengthMismatch {
                what: "baseline",
                expected: input.len(),
                got: baseline.len(),
            });
        }
        let input: Vec<f64> = input.iter().map(|&v| f64::from(v)).collect();
        let baseline: Vec<f64> = baseline.iter().map(|&v| f64::from(v)).collect();
        let l1_total = l1(&input, &baseline);
        let mut path = Self {
            params,
            x: baseline.clone(),
            attributions: vec![0.0; input.len()],
            l1_total,
            // An input equal to its baseline has nothing to attribute: no step to take.
            step: if l1_total == 0.0 { params.steps } else { 0 },
            point: Vec::new(),
            input,
            baseline,
        };
        path.point = path.x.iter().map(|&v| v as f32).collect();
        Ok(path)
    }

    /// Whether every step is done.
    pub fn done(&self) -> bool {
        self.step >= self.params.steps
    }

    /// Steps done so far (gradient evaluations).
    pub fn steps_done(&self) -> u32 {
        self.step.min(self.params.steps)
    }

    /// Where the next gradient is needed: the current point of the path.
    pub fn point(&self) -> &[f32] {
        &self.point
    }

    /// The accumulated attributions: the full path's once [`done`](Self::done).
    pub fn attributions(&self) -> &[f64] {
        &self.attributions
    }

    /// Takes one step with `gradient`, the model's gradient at [`point`](Self::point).
    pub fn advance(&mut self, gradient: &[f32]) -> Result<(), IgError> {
        if gradient.len() != self.x.len() {
            return Err(IgError::LengthMismatch {
                what: "gradient",
                expected: self.x.len(),
                got: gradient.len(),
            });
        }
        if self.done() {
            return Ok(());
        }
        let GuidedParams {
            steps,
            fraction,
            max_dist,
        } = self.params;
        let grad_actual: Vec<f64> = gradient.iter().map(|&g| f64::from(g)).collect();
        let mut grad = grad_actual.clone();
        let alpha = f64::from(self.step + 1) / f64::from(steps);
        let alpha_min = (alpha - max_dist).max(0.0);
        let alpha_max = (alpha + max_dist).min(1.0);
        let x_min = self.at_alpha(alpha_min);
        let x_max = self.at_alpha(alpha_max);
        let l1_target = self.l1_total * (1.0 - f64::from(self.step + 1) / f64::from(steps));
        let n = self.x.len();
        let mut magnitudes = vec![0f64; n];
        let mut selected = vec![false; n];
        let mut gamma = f64::INFINITY;
        while gamma > 1.0 {
            let x_old = self.x.clone();
            // Features that fell behind the slowest allowed point catch up with it.
            for (i, x) in self.x.iter_mut().enumerate() {
                let span = self.input[i] - self.baseline[i];
                let x_alpha = match span != 0.0 {
                    true => (*x - self.baseline[i]) / span,
                    false => alpha_max,
                };
                if x_alpha < alpha_min {
                    *x = x_min[i];
                }
            }
            let l1_current = l1(&self.x, &self.input);
            if is_close(l1_target, l1_current) {
                self.accumulate(&x_old, &grad_actual);
                break;
            }
            // Features already as far ahead as allowed cannot move: their |gradient| is
            // infinite so that the selection skips them.
            for i in 0..n {
                if self.x[i] == x_max[i] {
                    grad[i] = f64::INFINITY;
                }
                magnitudes[i] = grad[i].abs();
            }
            let threshold = quantile_lower(&mut magnitudes, fraction);
            for i in 0..n {
                selected[i] = grad[i].abs() <= threshold && grad[i] != f64::INFINITY;
            }
            // Over every feature, 0 for those not selected: NumPy's order (numpy_sum).
            let l1_selected = numpy_sum(n, &|i| match selected[i] {
                true => (self.x[i] - x_max[i]).abs(),
                false => 0.0,
            });
            gamma = match l1_selected > 0.0 {
                true => (l1_current - l1_target) / l1_selected,
                false => f64::INFINITY,
            };
            for i in (0..n).filter(|&i| selected[i]) {
                self.x[i] = match gamma > 1.0 {
                    true => x_max[i],
                    // The selected features move part of the way, just enough to reach the
                    // target distance.
                    false => self.x[i] + (x_max[i] - self.x[i]) * gamma,
                };
            }
            self.accumulate(&x_old, &grad_actual);
        }
        self.step += 1;
        for (p, &v) in self.point.iter_mut().zip(&self.x) {
            *p = v as f32;
        }
        Ok(())
    }

    /// The straight path's point at `alpha`.
    fn at_alpha(&self, alpha: f64) -> Vec<f64> {
        self.baseline
            .iter()
            .zip(&self.input)
            .map(|(&b, &x)| b + (x - b) * alpha)
            .collect()
    }

    fn accumulate(&mut self, x_old: &[f64], grad: &[f64]) {
        for (((a, &new), &old), &g) in self
            .attributions
            .iter_mut()
            .zip(&self.x)
            .zip(x_old)
            .zip(grad)
        {
            *a += (new - old) * g;
        }
    }
}

fn l1(a: &[f64], b: &[f64]) -> f64 {
    numpy_sum(a.len(), &|i| (a[i] - b[i]).abs())
}

/// The sum of `term(0) .. term(n - 1)` rounded as NumPy's `ndarray.sum()` of a contiguous
/// float64 array rounds it: pairwise summation (blocks of up to 128 values summed in 8
/// interleaved partial sums, larger ranges split in two at a multiple of 8).
///
/// NOTE: the walk is chaotic in the last bits of these L1 distances: a left-to-right sum
/// differs from NumPy's in the last bits, which moves a feature's share of a step by as much,
/// and over 200 steps PAIR's pixel map and integrad's came apart (correlation 0.84 on the
/// coffee photo with bit-identical gradients). Written here rather than taken from a crate:
/// what matters is NumPy's exact order of additions, which no summation crate promises
/// (they are free to pick their own, compensated or SIMD, orders). Pairwise summation is
/// also the more accurate of the two (error growing with log n rather than n).
fn numpy_sum(n: usize, term: &impl Fn(usize) -> f64) -> f64 {
    pairwise(0, n, term)
}

/// [`numpy_sum`] of the terms `start .. start + n`.
fn pairwise(start: usize, n: usize, term: &impl Fn(usize) -> f64) -> f64 {
    const BLOCK: usize = 128;
    if n < 8 {
        (start..start + n).fold(0.0, |sum, i| sum + term(i))
    } else if n <= BLOCK {
        let mut partial = [0f64; 8];
        for (j, p) in partial.iter_mut().enumerate() {
            *p = term(start + j);
        }
        let whole = n - n % 8;
        for block in (8..whole).step_by(8) {
            for (j, p) in partial.iter_mut().enumerate() {
                *p += term(start + block + j);
            }
        }
        let [a, b, c, d, e, f, g, h] = partial;
        let sum = ((a + b) + (c + d)) + ((e + f) + (g + h));
        (whole..n).fold(sum, |sum, i| sum + term(start + i))
    } else {
        let half = n / 2 - (n / 2) % 8;
        pairwise(start, half, term) + pairwise(start + half, n - half, term)
    }
}

/// Python's `math.isclose(a, b, rel_tol=EPSILON, abs_tol=EPSILON)`.
fn is_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= (EPSILON * a.abs().max(b.abs())).max(EPSILON)
}

/// NumPy's `quantile(values, q, method="lower")`: the sorted values' element at
/// `floor(q * (n - 1))` (reorders `values`).
fn quantile_lower(values: &mut [f64], q: f64) -> f64 {
    let k = ((q * (values.len() - 1) as f64).floor() as usize).min(values.len() - 1);
    *values.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a walk on F(x) = sum(w_i x_i^2) (gradient 2 w_i x_i), returning it.
    fn walk(input: &[f32], baseline: &[f32], w: &[f32], params: GuidedParams) -> GuidedPath {
        let mut path = GuidedPath::new(input, baseline, params).unwrap();
        while !path.done() {
            let g: Vec<f32> = path
                .point()
                .iter()
                .zip(w)
                .map(|(x, w)| 2.0 * w * x)
                .collect();
            path.advance(&g).unwrap();
        }
        path
    }

    #[test]
    fn should_end_at_the_input() {
        let input = [1.0, -2.0, 0.5, 3.0, 0.0];
        let path = walk(
            &input,
            &[0.0; 5],
            &[1.0, 0.1, 5.0, 0.01, 2.0],
            GuidedParams::default(),
        );
        for (p, x) in path.point().iter().zip(input) {
            assert!((p - x).abs() < 1e-6, "{p} != {x}");
        }
    }

    #[test]
    fn should_be_complete_on_a_smooth_function() {
        // F(x) = sum w x^2 from 0: F(x) - F(0) = sum w x^2. A first-order sum over 200 steps
        // errs by about one step's change of the gradient: well under 1 %.
        let input = [1.0, -2.0, 0.5, 3.0];
        let w = [1.0, 0.1, 5.0, 0.01];
        let path = walk(&input, &[0.0; 4], &w, GuidedParams::default());
        let expected: f64 = input.iter().zip(w).map(|(x, w)| f64::from(w * x * x)).sum();
        let sum: f64 = path.attributions().iter().sum();
        assert!(
            (sum - expected).abs() < 0.01 * expected,
            "{sum} vs {expected}"
        );
    }

    #[test]
    fn should_move_the_small_gradients_first() {
        // Feature 0 has the largest gradient: half way, the small-gradient features are
        // further along their part of the path than it is.
        let input = [1.0f32; 8];
        let w = [100.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let params = GuidedParams {
            max_dist: 1.0,
            ..GuidedParams::default()
        };
        let mut path = GuidedPath::new(&input, &[0.0; 8], params).unwrap();
        for _ in 0..100 {
            let g: Vec<f32> = path
                .point()
                .iter()
                .zip(w)
                .map(|(x, w)| 2.0 * w * (x + 0.1))
                .collect();
            path.advance(&g).unwrap();
        }
        let x = path.point();
        assert!(x[0] < x[1], "{x:?}");
    }

    #[test]
    fn should_follow_the_straight_line_with_zero_max_dist() {
        // max_dist 0 is IG on the straight line (a left Riemann sum): for a linear F the
        // attributions are exactly w (x - x').
        let input = [1.0, -2.0, 0.5];
        let w = [0.3f32, -1.0, 2.0];
        let params = GuidedParams {
            steps: 10,
            max_dist: 0.0,
            ..GuidedParams::default()
        };
        let mut path = GuidedPath::new(&input, &[0.0; 3], params).unwrap();
        while !path.done() {
            path.advance(&w).unwrap();
        }
        for ((a, x), w) in path.attributions().iter().zip(input).zip(w) {
            assert!((a - f64::from(w * x)).abs() < 1e-9, "{a} vs {}", w * x);
        }
    }

    #[test]
    fn should_take_pairs_steps() {
        // PAIR's guided_ig_impl (saliency 0.2.1, NumPy 2 with its quantile's `interpolation`
        // passed as `method`) on this input from zeros, gradient 2 w x + w in float32, 20
        // steps, fraction 0.25, max_dist 0.1, printed as float64 (repr: the exact values).
        // The same arithmetic in f64, summed in NumPy's order: the same bits.
        let x = [1.0f32, -2.0, 0.5, 3.0, 0.25, -1.5, 2.0, 0.0];
        let w = [1.0f32, 0.1, 5.0, 0.01, 2.0, -0.7, 0.3, 1.2];
        let pair = [
            1.9350000023841856,
            0.17450439420661754,
            3.6687499999999997,
            0.11454789554421492,
            0.6168749958276749,
            -0.40156944493452745,
            1.7280000699417934,
            0.0,
        ];
        let params = GuidedParams {
            steps: 20,
            fraction: 0.25,
            max_dist: 0.1,
        };
        let mut path = GuidedPath::new(&x, &[0.0; 8], params).unwrap();
        while !path.done() {
            let g: Vec<f32> = path
                .point()
                .iter()
                .zip(w)
                .map(|(&p, w)| 2.0 * w * p + w)
                .collect();
            path.advance(&g).unwrap();
        }
        assert_eq!(path.attributions(), &pair);
    }

    #[test]
    fn should_sum_in_numpys_order() {
        // np.array([1 / (1 + i % 1000) for i in range(n)]).sum() in NumPy 2.4, as bits:
        // below 8 values and at 8 and 13 the same as a left-to-right sum, from 128 on not
        // (checked below, so that the case is one where the order shows).
        let term = |i: usize| 1.0 / (1.0 + (i % 1000) as f64);
        let numpy: [(usize, u64); 7] = [
            (5, 0x4002444444444444),
            (8, 0x4005be2be2be2be2),
            (13, 0x400970e9f759a426),
            (128, 0x4015bb8ae9541ca7),
            (129, 0x4015c37b09149ba9),
            (1000, 0x401df11f45f4e61a),
            (150528, 0x4091a6abeac0f4ec),
        ];
        for (n, bits) in numpy {
            let sum = numpy_sum(n, &term);
            assert_eq!(
                sum.to_bits(),
                bits,
                "{n} values: {sum} vs {}",
                f64::from_bits(bits)
            );
            let left_to_right: f64 = (0..n).map(term).sum();
            assert_eq!(left_to_right.to_bits() == bits, n < 128, "{n} values");
        }
    }

    #[test]
    fn should_attribute_nothing_when_input_is_baseline() {
        let path = GuidedPath::new(&[1.0, 2.0], &[1.0, 2.0], GuidedParams::default()).unwrap();
        assert!(path.done());
        assert_eq!(path.attributions(), &[0.0, 0.0]);
    }

    #[test]
    fn should_match_numpy_lower_quantile() {
        // np.quantile([5, 1, 4, 2, 3], 0.25, method="lower") == 2; 0.5 -> 3; 1.0 -> 5.
        assert_eq!(quantile_lower(&mut [5.0, 1.0, 4.0, 2.0, 3.0], 0.25), 2.0);
        assert_eq!(quantile_lower(&mut [5.0, 1.0, 4.0, 2.0, 3.0], 0.5), 3.0);
        assert_eq!(quantile_lower(&mut [5.0, 1.0, 4.0, 2.0, 3.0], 1.0), 5.0);
        // infinities sort last, as in NumPy.
        assert_eq!(quantile_lower(&mut [f64::INFINITY, 1.0, 2.0], 0.5), 2.0);
    }
}
