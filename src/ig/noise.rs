//! The noise tunnel (Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017;
//! Adebayo et al. 2018 for VarGrad): a technique's attributions for several copies of the
//! input with Gaussian noise added, combined into one map. The noise's standard deviation is a
//! fraction of the input's range (PAIR's `stdev_spread`), and it is drawn from a seeded
//! generator (ChaCha8: portable and stable), so the same request gives the same map, bit for
//! bit.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// How the samples' attributions are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseKind {
    /// Their mean.
    SmoothGrad,
    /// The mean of their squares.
    SmoothGradSquared,
    /// Their variance (the mean of squares minus the square of the mean).
    VarGrad,
}

impl NoiseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoiseKind::SmoothGrad => "smoothgrad",
            NoiseKind::SmoothGradSquared => "smoothgrad-sq",
            NoiseKind::VarGrad => "vargrad",
        }
    }
}

/// A noise tunnel's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseTunnel {
    pub samples: usize,
    /// The standard deviation as a fraction of the input's range.
    pub stdev: f64,
    pub kind: NoiseKind,
    pub seed: u64,
}

/// PAIR's and the SmoothGrad paper's default noise: 15 % of the input's range.
pub const DEFAULT_STDEV: f64 = 0.15;

impl NoiseTunnel {
    /// The `samples` noisy copies of `input`: sample s adds independent Gaussian noise of
    /// standard deviation `stdev * (max - min)` of `input` to every value, from a generator
    /// seeded with `seed` (one stream for all samples, in order).
    pub fn samples(&self, input: &[f32]) -> Vec<Vec<f32>> {
        let (min, max) = input
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let sigma = match max > min {
            true => self.stdev * f64::from(max - min),
            false => 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let normal = Normal::new(0.0, sigma.max(0.0)).expect("a finite, non-negative sigma");
        (0..self.samples)
            .map(|_| {
                input
                    .iter()
                    .map(|&v| (f64::from(v) + normal.sample(&mut rng)) as f32)
                    .collect()
            })
            .collect()
    }

    /// The samples' attributions combined as [`NoiseKind`] says.
    pub fn combine(&self, samples: &[Vec<f64>]) -> Vec<f64> {
        let n = samples.len().max(1) as f64;
        let len = samples.first().map_or(0, Vec::len);
        let mut sum = vec![0f64; len];
        let mut squares = vec![0f64; len];
        for sample in samples {
            for ((s, q), &a) in sum.iter_mut().zip(&mut squares).zip(sample) {
                *s += a;
                *q += a * a;
            }
        }
        match self.kind {
            NoiseKind::SmoothGrad => sum.iter().map(|s| s / n).collect(),
            NoiseKind::SmoothGradSquared => squares.iter().map(|q| q / n).collect(),
            NoiseKind::VarGrad => sum
                .iter()
                .zip(&squares)
                .map(|(s, q)| (q / n - (s / n) * (s / n)).max(0.0))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(kind: NoiseKind) -> NoiseTunnel {
        NoiseTunnel {
            samples: 3,
            stdev: 0.1,
            kind,
            seed: 7,
        }
    }

    #[test]
    fn should_draw_the_same_noise_for_the_same_seed() {
        let input: Vec<f32> = (0..100).map(|i| i as f32 / 10.0).collect();
        let t = tunnel(NoiseKind::SmoothGrad);
        assert_eq!(t.samples(&input), t.samples(&input));
        let other = NoiseTunnel { seed: 8, ..t };
        assert_ne!(t.samples(&input), other.samples(&input));
    }

    #[test]
    fn should_scale_the_noise_by_the_range() {
        // 100,000 draws of a normal with sigma 0.1 * 10 = 1: the sample stdev is within
        // 1 % of 1 (its standard error is 1 / sqrt(2 n) = 0.2 %).
        let mut input = vec![0f32; 100_000];
        input[0] = 10.0;
        let t = NoiseTunnel {
            samples: 1,
            ..tunnel(NoiseKind::SmoothGrad)
        };
        let noisy = &t.samples(&input)[0];
        let noise: Vec<f64> = noisy[1..].iter().map(|&v| f64::from(v)).collect();
        let mean = noise.iter().sum::<f64>() / noise.len() as f64;
        let var = noise.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / noise.len() as f64;
        assert!((var.sqrt() - 1.0).abs() < 0.01, "stdev {}", var.sqrt());
    }

    #[test]
    fn should_combine_by_kind() {
        let samples = vec![vec![1.0, -2.0], vec![3.0, 2.0]];
        assert_eq!(
            tunnel(NoiseKind::SmoothGrad).combine(&samples),
            vec![2.0, 0.0]
        );
        assert_eq!(
            tunnel(NoiseKind::SmoothGradSquared).combine(&samples),
            vec![5.0, 4.0]
        );
        assert_eq!(tunnel(NoiseKind::VarGrad).combine(&samples), vec![1.0, 4.0]);
    }
}
