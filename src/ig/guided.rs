//! Guided IG (Kapishnikov et al., "Guided Integrated Gradients: an Adaptive Path Method for
//! Removing Noise", CVPR 2021): instead of the straight line from the baseline x' to the input
//! x, the path moves, at each step, the features whose |gradient| is smallest, so that it
//! avoids the directions where the model is saturated and noisy.
//!
//! The walk is the reference implementation's (PAIR's `saliency` package, `guided_ig_impl`),
//! step for step, in f64 and with NumPy's order of summation, so that fed the same gradients
//! the two give the same bits (the walk is chaotic in them: [`pairwise_sum`]): step k of
//! `steps` brings the L1 distance to the input down to
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
    /// input - baseline.
    span: Vec<f64>,
    /// The current point.
    x: Vec<f64>,
    attributions: Vec<f64>,
    l1_total: f64,
    /// Steps done.
    step: u32,
    /// The point where the current step started, as f32 for the model.
    point: Vec<f32>,
    /// Working space of a step, kept between steps (a step is host work on the size of the
    /// input, run once per gradient evaluation: no allocations in it).
    scratch: Scratch,
}

#[derive(Debug, Clone, Default)]
struct Scratch {
    x_min: Vec<f64>,
    x_max: Vec<f64>,
    /// The point at the start of the current round (PAIR's `x_old`).
    x_old: Vec<f64>,
    /// The step's gradient, +inf where a feature may not move further.
    grad: Vec<f32>,
    /// Which features the current round moves.
    selected: Vec<bool>,
    /// |grad| as the bits of an f32 (ordered like the values: they are not negative).
    keys: Vec<u32>,
    /// Per feature, the terms of the sum being taken.
    values: Vec<f64>,
    /// Radix selection's buckets and candidates.
    buckets: Vec<u32>,
    candidates: Vec<u32>,
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
        let span: Vec<f64> = input.iter().zip(&baseline).map(|(x, b)| x - b).collect();
        let l1_total = pairwise_sum(&span.iter().map(|d| d.abs()).collect::<Vec<_>>());
        let n = input.len();
        let mut path = Self {
            params,
            x: baseline.clone(),
            attributions: vec![0.0; n],
            l1_total,
            // An input equal to its baseline has nothing to attribute: no step to take.
            step: if l1_total == 0.0 { params.steps } else { 0 },
            point: Vec::new(),
            input,
            baseline,
            span,
            scratch: Scratch::default(),
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
    ///
    /// The arithmetic is PAIR's operation for operation, sums included (NumPy's pairwise
    /// summation), so that the same gradients give the same path to the last bit; only the
    /// bookkeeping differs (buffers reused, the quantile by radix selection).
    pub fn advance(&mut self, gradient: &[f32]) -> Result<(), IgError> {
        let n = self.x.len();
        if gradient.len() != n {
            return Err(IgError::LengthMismatch {
                what: "gradient",
                expected: n,
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
        let alpha = f64::from(self.step + 1) / f64::from(steps);
        let alpha_min = (alpha - max_dist).max(0.0);
        let alpha_max = (alpha + max_dist).min(1.0);
        let l1_target = self.l1_total * (1.0 - f64::from(self.step + 1) / f64::from(steps));
        let Self {
            input,
            baseline,
            span,
            x,
            attributions,
            scratch: s,
            ..
        } = self;
        let at_alpha = |out: &mut Vec<f64>, alpha: f64| {
            out.clear();
            out.extend(
                baseline
                    .iter()
                    .zip(span.iter())
                    .map(|(&b, &d)| b + d * alpha),
            );
        };
        at_alpha(&mut s.x_min, alpha_min);
        at_alpha(&mut s.x_max, alpha_max);
        s.grad.clear();
        s.grad.extend_from_slice(gradient);
        s.x_old.clear();
        s.x_old.extend_from_slice(x);
        s.selected.resize(n, false);
        s.keys.resize(n, 0);
        s.values.resize(n, 0.0);
        let mut gamma = f64::INFINITY;
        while gamma > 1.0 {
            // Features that fell behind the slowest allowed point catch up with it.
            for (((x, &b), &d), &lo) in x.iter_mut().zip(&*baseline).zip(&*span).zip(&s.x_min) {
                let x_alpha = match d != 0.0 {
                    true => (*x - b) / d,
                    false => alpha_max,
                };
                if x_alpha < alpha_min {
                    *x = lo;
                }
            }
            for ((v, &x), &target) in s.values.iter_mut().zip(&*x).zip(&*input) {
                *v = (x - target).abs();
            }
            let l1_current = pairwise_sum(&s.values);
            if is_close(l1_target, l1_current) {
                accumulate(attributions, x, &mut s.x_old, gradient);
                break;
            }
            // Features already as far ahead as allowed cannot move: their |gradient| is
            // infinite so that the selection skips them.
            for (((g, key), &x), &hi) in s.grad.iter_mut().zip(&mut s.keys).zip(&*x).zip(&s.x_max) {
                if x == hi {
                    *g = f32::INFINITY;
                }
                *key = g.abs().to_bits();
            }
            let threshold = f32::from_bits(select_nth(
                &s.keys,
                quantile_lower_index(n, fraction),
                &mut s.buckets,
                &mut s.candidates,
            ));
            for ((((selected, v), &g), &x), &hi) in s
                .selected
                .iter_mut()
                .zip(&mut s.values)
                .zip(&s.grad)
                .zip(&*x)
                .zip(&s.x_max)
            {
                *selected = g.abs() <= threshold && g != f32::INFINITY;
                *v = match *selected {
                    true => (x - hi).abs(),
                    false => 0.0,
                };
            }
            let l1_selected = pairwise_sum(&s.values);
            gamma = match l1_selected > 0.0 {
                true => (l1_current - l1_target) / l1_selected,
                false => f64::INFINITY,
            };
            for ((x, &hi), &selected) in x.iter_mut().zip(&s.x_max).zip(&s.selected) {
                if selected {
                    *x = match gamma > 1.0 {
                        true => hi,
                        // The selected features move part of the way, just enough to reach
                        // the target distance.
                        false => *x + (hi - *x) * gamma,
                    };
                }
            }
            accumulate(attributions, x, &mut s.x_old, gradient);
        }
        self.step += 1;
        for (p, &v) in self.point.iter_mut().zip(&self.x) {
            *p = v as f32;
        }
        Ok(())
    }
}

/// PAIR's `attr += (x - x_old) * grad`, then `x_old` is the new `x` for the next round.
fn accumulate(attributions: &mut [f64], x: &[f64], x_old: &mut [f64], grad: &[f32]) {
    for (((a, &new), old), &g) in attributions.iter_mut().zip(x).zip(x_old).zip(grad) {
        *a += (new - *old) * f64::from(g);
        *old = new;
    }
}

/// NumPy's sum of a float64 array (`pairwise_sum` in its umath loops): below 8 values one by
/// one, up to 128 in eight interleaved partial sums, beyond that the two halves (the first a
/// multiple of 8 long) summed apart. The same order as NumPy, hence the same last bits.
///
/// NOTE: the walk is chaotic in the last bits of its L1 distances: a left-to-right sum
/// differs from NumPy's there, which moves a feature's share of a step by as much, and over
/// 200 steps PAIR's pixel map and integrad's came apart (correlation 0.84 on the coffee photo
/// with bit-identical gradients). Written here rather than taken from a crate: what matters
/// is NumPy's exact order of additions, which no summation crate promises.
fn pairwise_sum(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 8 {
        values.iter().fold(0.0, |res, &v| res + v)
    } else if n <= 128 {
        let (blocks, rest) = values.split_at(n - n % 8);
        let mut r = [0f64; 8];
        r.copy_from_slice(&blocks[..8]);
        for block in blocks[8..].chunks_exact(8) {
            for (r, &v) in r.iter_mut().zip(block) {
                *r += v;
            }
        }
        let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        rest.iter().fold(res, |res, &v| res + v)
    } else {
        let half = n / 2;
        let (a, b) = values.split_at(half - half % 8);
        pairwise_sum(a) + pairwise_sum(b)
    }
}

/// Python's `math.isclose(a, b, rel_tol=EPSILON, abs_tol=EPSILON)`.
fn is_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= (EPSILON * a.abs().max(b.abs())).max(EPSILON)
}

/// The index NumPy's `quantile(values, q, method="lower")` takes among `n` sorted values:
/// `floor(q * (n - 1))`.
fn quantile_lower_index(n: usize, q: f64) -> usize {
    ((q * (n - 1) as f64).floor() as usize).min(n - 1)
}

/// The `k`-th smallest of `keys` (the bits of non-negative f32s, which order as the values
/// do, +inf and NaN last as NumPy sorts them). A two-pass radix selection: one pass counts the
/// keys by their high 16 bits, the second keeps only the bucket holding the `k`-th and selects
/// within it. Two linear passes instead of a comparison sort's partitions: the quantile runs
/// once per round of every Guided IG step over the whole input.
fn select_nth(keys: &[u32], k: usize, buckets: &mut Vec<u32>, candidates: &mut Vec<u32>) -> u32 {
    buckets.clear();
    buckets.resize(1 << 16, 0);
    for &key in keys {
        buckets[(key >> 16) as usize] += 1;
    }
    let mut below = 0usize;
    let mut bucket = 0u32;
    for (b, &count) in buckets.iter().enumerate() {
        if below + count as usize > k {
            bucket = b as u32;
            break;
        }
        below += count as usize;
    }
    candidates.clear();
    candidates.extend(keys.iter().copied().filter(|&key| key >> 16 == bucket));
    *candidates.select_nth_unstable(k - below).1
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
        // steps, fraction 0.25, max_dist 0.1, printed as float64 (repr: round-trips). The
        // same operations in the same order, sums included: equal to the last bit.
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
        assert_eq!(path.attributions(), pair);
    }

    #[test]
    fn should_attribute_nothing_when_input_is_baseline() {
        let path = GuidedPath::new(&[1.0, 2.0], &[1.0, 2.0], GuidedParams::default()).unwrap();
        assert!(path.done());
        assert_eq!(path.attributions(), &[0.0, 0.0]);
    }

    /// `np.quantile(values, q, method="lower")` by the radix selection.
    fn quantile_lower(values: &[f32], q: f64) -> f32 {
        let keys: Vec<u32> = values.iter().map(|v| v.abs().to_bits()).collect();
        let k = quantile_lower_index(values.len(), q);
        f32::from_bits(select_nth(&keys, k, &mut Vec::new(), &mut Vec::new()))
    }

    #[test]
    fn should_match_numpy_lower_quantile() {
        // np.quantile([5, 1, 4, 2, 3], 0.25, method="lower") == 2; 0.5 -> 3; 1.0 -> 5.
        assert_eq!(quantile_lower(&[5.0, 1.0, 4.0, 2.0, 3.0], 0.25), 2.0);
        assert_eq!(quantile_lower(&[5.0, 1.0, 4.0, 2.0, 3.0], 0.5), 3.0);
        assert_eq!(quantile_lower(&[5.0, 1.0, 4.0, 2.0, 3.0], 1.0), 5.0);
        // infinities sort last, as in NumPy.
        assert_eq!(quantile_lower(&[f32::INFINITY, 1.0, 2.0], 0.5), 2.0);
        // Values that share their high 16 bits (one radix bucket) and values that do not.
        let close: Vec<f32> = (0..1000).map(|i| 1.0 + i as f32 * 1e-6).collect();
        assert_eq!(quantile_lower(&close, 0.25), close[249]);
        let spread: Vec<f32> = (0..1000).rev().map(|i| (i as f32 * 0.37).exp2()).collect();
        let mut sorted = spread.clone();
        sorted.sort_by(f32::total_cmp);
        for q in [0.0, 0.1, 0.25, 0.5, 0.999, 1.0] {
            assert_eq!(
                quantile_lower(&spread, q),
                sorted[quantile_lower_index(1000, q)]
            );
        }
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
            let values: Vec<f64> = (0..n).map(term).collect();
            let sum = pairwise_sum(&values);
            assert_eq!(
                sum.to_bits(),
                bits,
                "{n} values: {sum} vs {}",
                f64::from_bits(bits)
            );
            let left_to_right: f64 = values.iter().sum();
            assert_eq!(left_to_right.to_bits() == bits, n < 128, "{n} values");
        }
    }

    /// The host's share of a Guided IG step on a photo-sized input (3x224x224, PAIR's
    /// defaults), for docs/BENCHMARKS.md:
    /// `cargo test --release --lib guided_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn guided_timing() {
        let input = crate::npy::test_f32("coffee_input.npy");
        // A gradient of varied magnitudes (a fixed pseudo-random weight per feature), so that
        // the steps select and move features as on a real model.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let w: Vec<f32> = (0..input.len())
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect();
        let baseline = vec![0f32; input.len()];
        let mut path = GuidedPath::new(&input, &baseline, GuidedParams::default()).unwrap();
        let start = std::time::Instant::now();
        while !path.done() {
            let g: Vec<f32> = path
                .point()
                .iter()
                .zip(&w)
                .map(|(x, w)| w * (x + 0.1))
                .collect();
            path.advance(&g).unwrap();
        }
        let sum: f64 = path.attributions().iter().sum();
        println!(
            "guided IG host work, 200 steps on 3x224x224: {:.2} ms per step (sum {sum:.6})",
            start.elapsed().as_secs_f64() * 1e3 / 200.0
        );
    }
}
