//! The straight path from the baseline x' to the input x, and what is computed at its ends:
//! the interpolated inputs z = x' + a (x - x'), the attributions (x - x') * average gradient,
//! and the completeness check sum(attributions) = F(x) - F(x').

/// Writes the inputs at `alphas` into `out`, laid out `[alpha][input]` row-major (a batch in
/// the model's input layout when `input` is one example in that layout).
///
/// Computed as (1 - a) x' + a x in f64: the same point as x' + a (x - x'), but exactly x' at
/// a = 0 and exactly x at a = 1, so the path's ends are the very tensors whose scores the
/// completeness check compares.
///
/// # Panics
/// When `baseline` and `input` differ in length or `out` is not `alphas.len() * input.len()`
/// long: both are the caller's bookkeeping, not user input.
pub fn interpolate(input: &[f32], baseline: &[f32], alphas: &[f64], out: &mut [f32]) {
    assert_eq!(input.len(), baseline.len(), "baseline length");
    assert_eq!(out.len(), alphas.len() * input.len(), "batch buffer length");
    if input.is_empty() {
        return;
    }
    for (row, &a) in out.chunks_exact_mut(input.len()).zip(alphas) {
        for ((z, &x), &b) in row.iter_mut().zip(input).zip(baseline) {
            *z = ((1.0 - a) * f64::from(b) + a * f64::from(x)) as f32;
        }
    }
}

/// IG = (x - x') * average gradient, elementwise; the input's shape.
///
/// # Panics
/// When the three lengths differ.
pub fn attributions(input: &[f32], baseline: &[f32], avg_grad: &[f32]) -> Vec<f32> {
    assert_eq!(input.len(), baseline.len(), "baseline length");
    assert_eq!(input.len(), avg_grad.len(), "average gradient length");
    input
        .iter()
        .zip(baseline)
        .zip(avg_grad)
        .map(|((&x, &b), &g)| ((f64::from(x) - f64::from(b)) * f64::from(g)) as f32)
        .collect()
}

/// The sum of the attributions, in f64 (a 150k-term f32 sum would lose the digits the
/// convergence delta is made of).
pub fn attribution_sum(attributions: &[f32]) -> f64 {
    attributions.iter().map(|v| f64::from(*v)).sum()
}

/// sum(IG) - (F(x) - F(x')): zero for the exact integral, so it measures the quadrature error.
pub fn convergence_delta(attr_sum: f64, f_input: f64, f_baseline: f64) -> f64 {
    attr_sum - (f_input - f_baseline)
}

/// The relative delta an explanation must stay within to count as converged when its request
/// set no tolerance: past 5 % of F(x) - F(x'), the attributions visibly fail to add up.
pub const DEFAULT_CONVERGENCE_TOLERANCE: f64 = 0.05;

/// The completeness numbers every explanation reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completeness {
    pub attribution_sum: f64,
    pub score_input: f64,
    pub score_baseline: f64,
    pub delta: f64,
}

impl Completeness {
    pub fn new(attributions: &[f32], score_input: f64, score_baseline: f64) -> Self {
        let attribution_sum = attribution_sum(attributions);
        Completeness {
            attribution_sum,
            score_input,
            score_baseline,
            delta: convergence_delta(attribution_sum, score_input, score_baseline),
        }
    }

    /// |delta| / |F(x) - F(x')|; infinite when the scores are equal and delta is not zero
    /// (no relative accuracy can be claimed then), zero when both are zero.
    pub fn relative_delta(&self) -> f64 {
        let gap = (self.score_input - self.score_baseline).abs();
        if self.delta == 0.0 {
            0.0
        } else if gap == 0.0 {
            f64::INFINITY
        } else {
            self.delta.abs() / gap
        }
    }

    /// The adaptive loop's stopping rule: |delta| <= tolerance * |F(x) - F(x')|.
    pub fn within(&self, tolerance: f64) -> bool {
        self.delta.abs() <= tolerance * (self.score_input - self.score_baseline).abs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolate_hits_both_ends_exactly_and_the_middle() {
        let x = [1.0f32, -3.0, 0.1];
        let b = [0.3f32, 2.0, 0.7];
        let alphas = [0.0, 0.5, 1.0];
        let mut out = vec![0.0f32; 9];
        interpolate(&x, &b, &alphas, &mut out);
        // Exact equality at the ends is the point of the (1 - a) x' + a x form.
        assert_eq!(&out[0..3], &b);
        assert_eq!(&out[6..9], &x);
        for i in 0..3 {
            // f32 rounding of a value of size <= 3: a few 1e-7.
            assert!((out[3 + i] - (x[i] + b[i]) / 2.0).abs() < 1e-6);
        }
    }

    #[test]
    fn attributions_scale_by_the_difference() {
        let a = attributions(&[2.0, 1.0, 5.0], &[1.0, 1.0, -1.0], &[0.5, 9.0, 2.0]);
        // Small integers and halves: exact in f32.
        assert_eq!(a, vec![0.5, 0.0, 12.0]);
        assert_eq!(attribution_sum(&a), 12.5);
    }

    #[test]
    fn completeness_reports_delta_and_relative_delta() {
        let c = Completeness::new(&[0.25, 0.5], 1.0, 0.2);
        // 0.75 - 0.8: the expected value, rounded like the code rounds it.
        assert!((c.delta - (-0.05)).abs() < 1e-12);
        assert!((c.relative_delta() - 0.0625).abs() < 1e-12);
        assert!(c.within(0.07));
        assert!(!c.within(0.06));
        let flat = Completeness::new(&[0.0], 0.5, 0.5);
        assert_eq!(flat.relative_delta(), 0.0);
        let off = Completeness::new(&[0.1], 0.5, 0.5);
        assert!(off.relative_delta().is_infinite());
    }
}
