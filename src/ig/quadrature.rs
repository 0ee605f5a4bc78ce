//! Quadrature rules on [0, 1] and the [`Integrator`] that accumulates gradients over them.
//!
//! A rule is a list of [`Node`]s (alpha, weight) whose weights sum to exactly 1, so that the
//! weighted sum of gradients is an average gradient along the path. "steps" is m, the number
//! of intervals for the Newton-Cotes style rules and the number of nodes for Gauss-Legendre:
//!
//! | method         | alphas                  | weights                     | exact up to degree |
//! |----------------|-------------------------|-----------------------------|--------------------|
//! | trapezoid      | k/m, k = 0..=m (m+1)    | 1/(2m) at the ends, 1/m     | 1                  |
//! | left           | k/m, k = 0..m           | 1/m                         | 0                  |
//! | right          | k/m, k = 1..=m          | 1/m                         | 0                  |
//! | midpoint       | (k + 1/2)/m, k = 0..m   | 1/m                         | 1                  |
//! | gauss-legendre | roots of P_m, mapped    | Christoffel numbers / 2     | 2m - 1             |
//!
//! Errors fall as m^-2 for trapezoid and midpoint, m^-1 for left and right, and faster than
//! any power for Gauss-Legendre on smooth integrands.
//!
//! The [`Integrator`] is the loop's bookkeeping: it hands out alphas in batches, takes back
//! the gradients (and scores) the model computed there, and keeps only running sums, so its
//! gradient memory is input size x targets x 3 f64s whatever the step count. Trapezoid can be
//! refined by doubling m, reusing every gradient already computed.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use super::IgError;

/// A quadrature rule on [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Trapezoid,
    Left,
    Right,
    Midpoint,
    GaussLegendre,
}

impl Method {
    /// The name used on the command line, in requests and in `explanation.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Trapezoid => "trapezoid",
            Method::Left => "left",
            Method::Right => "right",
            Method::Midpoint => "midpoint",
            Method::GaussLegendre => "gauss-legendre",
        }
    }

    /// How many gradient evaluations `steps` costs with this rule.
    pub fn evaluations(self, steps: u32) -> usize {
        match self {
            Method::Trapezoid => steps as usize + 1,
            _ => steps as usize,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = IgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "trapezoid" => Ok(Method::Trapezoid),
            "left" => Ok(Method::Left),
            "right" => Ok(Method::Right),
            "midpoint" => Ok(Method::Midpoint),
            "gauss-legendre" => Ok(Method::GaussLegendre),
            other => Err(IgError::UnknownMethod(other.to_string())),
        }
    }
}

/// One point of a rule: evaluate the gradient at `alpha`, count it with `weight`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    pub alpha: f64,
    pub weight: f64,
}

/// The nodes of `method` with `steps` (m) intervals or nodes, alphas ascending, weights summing
/// to exactly 1.0 when added in order. `steps == 0` gives no nodes (callers reject it first).
pub fn nodes(method: Method, steps: u32) -> Vec<Node> {
    if steps == 0 {
        return Vec::new();
    }
    let m = f64::from(steps);
    let at = |k: u32| f64::from(k) / m;
    let mut out: Vec<Node> = match method {
        Method::Trapezoid => (0..=steps)
            .map(|k| Node {
                alpha: at(k),
                weight: if k == 0 || k == steps {
                    0.5 / m
                } else {
                    1.0 / m
                },
            })
            .collect(),
        Method::Left => (0..steps)
            .map(|k| Node {
                alpha: at(k),
                weight: 1.0 / m,
            })
            .collect(),
        Method::Right => (1..=steps)
            .map(|k| Node {
                alpha: at(k),
                weight: 1.0 / m,
            })
            .collect(),
        Method::Midpoint => (0..steps)
            .map(|k| Node {
                alpha: (f64::from(k) + 0.5) / m,
                weight: 1.0 / m,
            })
            .collect(),
        Method::GaussLegendre => gauss_legendre(steps as usize),
    };
    normalise(&mut out);
    out
}

/// Makes the weights sum to exactly 1.0 (summed in order, as `Iterator::sum` does).
fn normalise(nodes: &mut [Node]) {
    let total: f64 = nodes.iter().map(|n| n.weight).sum();
    for n in nodes.iter_mut() {
        n.weight /= total;
    }
    // NOTE: after the division the sum is only within a few ulps of 1. Setting the last weight
    // to 1 - (sum of the others) makes it exact: in every rule here the last weight is at most
    // 1/2, so the others sum to a value in [1/2, 1], where 1 - others is exact (Sterbenz) and
    // others + (1 - others) is then exactly 1. The change to the last weight is a few ulps.
    if let Some((last, rest)) = nodes.split_last_mut() {
        let others: f64 = rest.iter().map(|n| n.weight).sum();
        last.weight = 1.0 - others;
    }
}

/// Gauss-Legendre on [0, 1]: the roots x of the Legendre polynomial P_n, found by Newton's
/// method, mapped by alpha = (1 + x) / 2, with weights w / 2 where w = 2 / ((1 - x^2) P_n'(x)^2)
/// is the weight on [-1, 1].
fn gauss_legendre(n: usize) -> Vec<Node> {
    let mut out = vec![
        Node {
            alpha: 0.0,
            weight: 0.0
        };
        n
    ];
    let nf = n as f64;
    // The roots are symmetric about 0, so only the non-negative half is searched.
    for i in 0..n.div_ceil(2) {
        // Tricomi's approximation of the (i+1)-th largest root: close enough that Newton
        // converges to that root (and not a neighbour) even for n in the thousands, where the
        // roots near +-1 are only ~1/n^2 apart.
        let theta = PI * (i as f64 + 0.75) / (nf + 0.5);
        let mut x = (1.0 - (nf - 1.0) / (8.0 * nf * nf * nf)) * theta.cos();
        for _ in 0..100 {
            let (p, dp) = legendre(n, x);
            let dx = p / dp;
            x -= dx;
            if dx.abs() <= 1e-15 * x.abs().max(1e-3) {
                break;
            }
        }
        let (_, dp) = legendre(n, x);
        // (1 - x)(1 + x) keeps its precision near x = 1, where 1 - x * x would not.
        let w = 2.0 / ((1.0 - x) * (1.0 + x) * dp * dp);
        out[n - 1 - i] = Node {
            alpha: (1.0 + x) / 2.0,
            weight: w / 2.0,
        };
        out[i] = Node {
            alpha: (1.0 - x) / 2.0,
            weight: w / 2.0,
        };
    }
    out
}

/// P_n(x) and P_n'(x) by the three-term recurrence (stable for |x| <= 1).
fn legendre(n: usize, x: f64) -> (f64, f64) {
    let (mut prev, mut p) = (1.0, x);
    for k in 2..=n {
        let kf = k as f64;
        let next = ((2.0 * kf - 1.0) * x * p - (kf - 1.0) * prev) / kf;
        prev = p;
        p = next;
    }
    if n == 0 {
        return (1.0, 0.0);
    }
    // P_n'(x) = n (x P_n - P_{n-1}) / (x^2 - 1); the roots are strictly inside (-1, 1).
    let dp = n as f64 * (x * p - prev) / ((x - 1.0) * (x + 1.0));
    (p, dp)
}

/// The alphas that doubling trapezoid's m adds: the m midpoints (2k + 1) / (2m), k = 0..m.
/// The m + 1 old alphas k/m are exactly the even alphas 2k/(2m) of the doubled rule (the same
/// real number, rounded the same way), so every gradient already computed is reused.
pub fn refine_trapezoid(steps: u32) -> Vec<f64> {
    let two_m = 2.0 * f64::from(steps);
    (0..steps)
        .map(|k| (2.0 * f64::from(k) + 1.0) / two_m)
        .collect()
}

/// Trapezoid's (endpoint, interior) weights for m steps, as [`nodes`] gives them.
pub fn trapezoid_weights(steps: u32) -> (f64, f64) {
    let n = nodes(Method::Trapezoid, steps);
    let end = n.first().map_or(0.0, |n| n.weight);
    let interior = if steps >= 2 { n[1].weight } else { 0.0 };
    (end, interior)
}

/// How a node's gradient enters the running sums.
#[derive(Debug, Clone, Copy)]
enum Coef {
    /// Trapezoid's alpha 0 or 1: added unweighted to the endpoint sum.
    Endpoint,
    /// Trapezoid's inner alphas: added unweighted to the interior sum.
    Interior,
    /// Every other rule: added with its weight.
    Weighted(f64),
}

/// A batch of alphas handed out by [`Integrator::next_batch`]; feed it back with the gradients
/// computed at its alphas.
#[derive(Debug)]
pub struct Batch {
    round: u32,
    start: usize,
    alphas: Vec<f64>,
}

impl Batch {
    /// The alphas to evaluate, in order.
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }

    pub fn len(&self) -> usize {
        self.alphas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alphas.is_empty()
    }
}

/// One evaluated point of the path, for the saturation plots: the target's score and the mean
/// absolute gradient at `alpha`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathPoint {
    pub alpha: f64,
    pub score: f32,
    pub mean_abs_gradient: f32,
}

/// Accumulates the average gradient over a quadrature rule, batch by batch, for one or more
/// targets at once.
///
/// Use: `while let Some(b) = it.next_batch(max)` evaluate the model at `b.alphas()` and
/// [`feed`](Integrator::feed) the gradients back; then read
/// [`average_gradient`](Integrator::average_gradient). With trapezoid, call
/// [`refine`](Integrator::refine) to double the steps and continue the same loop.
///
/// Memory: three f64 sums of `input_len x targets` values for gradients (no per-alpha
/// gradient is kept), plus a few scalars per alpha (the rule's nodes and the path points).
///
/// Trapezoid refinement, the maths. With E = g(0) + g(1) and I_m = sum_{k=1..m-1} g(k/m),
/// trapezoid is T_m = E / (2m) + I_m / m. Doubling m keeps every old alpha (k/m = 2k/(2m)) and
/// adds the m midpoints, which are all interior for 2m: I_2m = I_m + sum_{k=0..m-1}
/// g((2k+1)/(2m)), and T_2m = E / (4m) + I_2m / (2m). So the integrator keeps E and I
/// unweighted, adds each new midpoint to I, and applies the weights only when asked for the
/// average: nothing is recomputed and nothing per alpha is stored. The other rules share no
/// nodes between m and 2m and keep one weighted sum.
#[derive(Debug)]
pub struct Integrator {
    method: Method,
    steps: u32,
    input_len: usize,
    targets: usize,
    round: u32,
    /// The nodes of the current round: all of them for round 0, the midpoints after a refine.
    pending: Vec<(f64, Coef)>,
    handed: usize,
    fed: usize,
    /// Trapezoid's E (empty for the other rules); [target][input].
    ends: Vec<f64>,
    /// Trapezoid's I, or the other rules' weighted sum, over completed rounds.
    done: Vec<f64>,
    /// The current round's contribution, moved into `done` when the round completes, so that
    /// the last complete estimate stays readable while a refinement is in progress.
    fresh: Vec<f64>,
    /// The steps of the latest complete round.
    complete_steps: Option<u32>,
    path_alpha: Vec<f64>,
    /// [alpha][target].
    path_score: Vec<f32>,
    /// [alpha][target].
    path_grad: Vec<f32>,
}

impl Integrator {
    /// An integrator for `targets` targets of an input with `input_len` values.
    pub fn new(
        method: Method,
        steps: u32,
        input_len: usize,
        targets: usize,
    ) -> Result<Self, IgError> {
        if steps == 0 {
            return Err(IgError::ZeroSteps(steps));
        }
        let pending = match method {
            Method::Trapezoid => nodes(method, steps)
                .into_iter()
                .enumerate()
                .map(|(k, n)| {
                    let coef = if k == 0 || k == steps as usize {
                        Coef::Endpoint
                    } else {
                        Coef::Interior
                    };
                    (n.alpha, coef)
                })
                .collect(),
            _ => nodes(method, steps)
                .into_iter()
                .map(|n| (n.alpha, Coef::Weighted(n.weight)))
                .collect(),
        };
        let len = input_len * targets;
        let ends = if method == Method::Trapezoid {
            vec![0.0; len]
        } else {
            Vec::new()
        };
        Ok(Integrator {
            method,
            steps,
            input_len,
            targets,
            round: 0,
            pending,
            handed: 0,
            fed: 0,
            ends,
            done: vec![0.0; len],
            fresh: vec![0.0; len],
            complete_steps: None,
            path_alpha: Vec::new(),
            path_score: Vec::new(),
            path_grad: Vec::new(),
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// The steps (m) of the round in progress, or of the last one when all are complete.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    pub fn targets(&self) -> usize {
        self.targets
    }

    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Nodes of the current round not yet fed back.
    pub fn remaining(&self) -> usize {
        self.pending.len() - self.fed
    }

    /// Gradient evaluations fed so far, over all rounds.
    pub fn evaluations(&self) -> usize {
        self.path_alpha.len()
    }

    /// The steps behind [`average_gradient`](Integrator::average_gradient): the latest round
    /// whose every node has been fed.
    pub fn estimate_steps(&self) -> Option<u32> {
        self.complete_steps
    }

    /// The next at most `max` alphas to evaluate, or `None` when the whole round has been
    /// handed out. A `max` of 0 is taken as 1.
    pub fn next_batch(&mut self, max: usize) -> Option<Batch> {
        if self.handed == self.pending.len() {
            return None;
        }
        let end = (self.handed + max.max(1)).min(self.pending.len());
        let batch = Batch {
            round: self.round,
            start: self.handed,
            alphas: self.pending[self.handed..end]
                .iter()
                .map(|(a, _)| *a)
                .collect(),
        };
        self.handed = end;
        Some(batch)
    }

    /// Takes back a batch's results: `grads` is `[alpha][target][input]` row-major
    /// (`batch.len() * targets * input_len` values), `scores` is `[alpha][target]`.
    ///
    /// Batches must come back in the order they were handed out. That makes the summation
    /// order the alpha order whatever the batch size, so splitting into batches of 1, 7 or 64
    /// gives bit-identical sums.
    pub fn feed(&mut self, batch: &Batch, grads: &[f32], scores: &[f32]) -> Result<(), IgError> {
        self.check_order(batch)?;
        let n = batch.len();
        let (t, len) = (self.targets, self.input_len);
        if grads.len() != n * t * len {
            return Err(IgError::LengthMismatch {
                what: "gradients",
                expected: n * t * len,
                got: grads.len(),
            });
        }
        if scores.len() != n * t {
            return Err(IgError::LengthMismatch {
                what: "scores",
                expected: n * t,
                got: scores.len(),
            });
        }
        for (j, &alpha) in batch.alphas.iter().enumerate() {
            let coef = self.pending[batch.start + j].1;
            self.path_alpha.push(alpha);
            for target in 0..t {
                let g = &grads[(j * t + target) * len..][..len];
                let range = target * len..(target + 1) * len;
                match coef {
                    Coef::Endpoint => add(&mut self.ends[range], g, 1.0),
                    Coef::Interior => add(&mut self.fresh[range], g, 1.0),
                    Coef::Weighted(w) => add(&mut self.fresh[range], g, w),
                }
                self.path_score.push(scores[j * t + target]);
                let abs: f64 = g.iter().map(|v| f64::from(v.abs())).sum();
                self.path_grad.push((abs / len.max(1) as f64) as f32);
            }
        }
        self.round_fed(n);
        Ok(())
    }

    /// Batches come back in the order they were handed out, from the current round.
    fn check_order(&self, batch: &Batch) -> Result<(), IgError> {
        if batch.round != self.round || batch.start != self.fed {
            return Err(IgError::OutOfOrder {
                round: batch.round,
                got: batch.start,
                current: self.round,
                expected: self.fed,
            });
        }
        Ok(())
    }

    /// Counts `n` more nodes of the round as fed; a complete round becomes the estimate.
    fn round_fed(&mut self, n: usize) {
        self.fed += n;
        if self.fed == self.pending.len() {
            for (d, f) in self.done.iter_mut().zip(self.fresh.iter_mut()) {
                *d += *f;
                *f = 0.0;
            }
            self.complete_steps = Some(self.steps);
        }
    }

    /// The row weights of `batch` for a model that sums gradients itself (the IG step model,
    /// [`super::step`]): `[2 * targets][batch.len() * targets]` row-major, rows evaluated in
    /// the order of [`feed`](Integrator::feed) (row `a * targets + j` is alpha `a`, target
    /// `j`). Sum `2j` collects target j's trapezoid endpoints, sum `2j + 1` everything else
    /// with the coefficient `feed` would give it.
    pub fn sum_weights(&self, batch: &Batch) -> Vec<f32> {
        let t = self.targets;
        let rows = batch.len() * t;
        let mut w = vec![0f32; 2 * t * rows];
        for a in 0..batch.len() {
            let (sum, coef) = match self.pending[batch.start + a].1 {
                Coef::Endpoint => (0, 1.0),
                Coef::Interior => (1, 1.0),
                Coef::Weighted(w) => (1, w as f32),
            };
            for j in 0..t {
                w[(2 * j + sum) * rows + a * t + j] = coef;
            }
        }
        w
    }

    /// Takes back a batch evaluated with [`sum_weights`](Integrator::sum_weights): `sums` is
    /// `[2 * targets][input]`, `scores` and `abs_sums` (the sum of |gradient| of each row)
    /// are `[alpha][target]`. Same ordering rule as [`feed`](Integrator::feed); the sums are
    /// the model's, so the result depends on the batch split only through float32 rounding.
    pub fn feed_sums(
        &mut self,
        batch: &Batch,
        sums: &[f32],
        scores: &[f32],
        abs_sums: &[f32],
    ) -> Result<(), IgError> {
        self.check_order(batch)?;
        let (n, t, len) = (batch.len(), self.targets, self.input_len);
        for (what, got, expected) in [
            ("gradient sums", sums.len(), 2 * t * len),
            ("scores", scores.len(), n * t),
            ("gradient magnitudes", abs_sums.len(), n * t),
        ] {
            if got != expected {
                return Err(IgError::LengthMismatch {
                    what,
                    expected,
                    got,
                });
            }
        }
        for j in 0..t {
            let range = j * len..(j + 1) * len;
            if self.method == Method::Trapezoid {
                add(
                    &mut self.ends[range.clone()],
                    &sums[2 * j * len..][..len],
                    1.0,
                );
            }
            add(
                &mut self.fresh[range],
                &sums[(2 * j + 1) * len..][..len],
                1.0,
            );
        }
        for (a, &alpha) in batch.alphas.iter().enumerate() {
            self.path_alpha.push(alpha);
            for j in 0..t {
                self.path_score.push(scores[a * t + j]);
                self.path_grad.push(abs_sums[a * t + j] / len.max(1) as f32);
            }
        }
        self.round_fed(n);
        Ok(())
    }

    /// Doubles trapezoid's steps; the next batches are the m new midpoints. The current round
    /// must be complete; the estimate at m stays readable until the new round completes.
    pub fn refine(&mut self) -> Result<(), IgError> {
        if self.method != Method::Trapezoid {
            return Err(IgError::NotRefinable {
                method: self.method,
            });
        }
        if self.remaining() > 0 {
            return Err(IgError::RoundIncomplete {
                remaining: self.remaining(),
            });
        }
        let doubled = self.steps.checked_mul(2).ok_or(IgError::TooManySteps {
            steps: self.steps,
            max: u32::MAX,
        })?;
        self.pending = refine_trapezoid(self.steps)
            .into_iter()
            .map(|a| (a, Coef::Interior))
            .collect();
        self.steps = doubled;
        self.round += 1;
        self.handed = 0;
        self.fed = 0;
        Ok(())
    }

    /// The average gradient of `target` over the latest complete round (input_len values).
    pub fn average_gradient(&self, target: usize) -> Result<Vec<f32>, IgError> {
        if target >= self.targets {
            return Err(IgError::NoSuchTarget {
                target,
                targets: self.targets,
            });
        }
        let steps = self.complete_steps.ok_or(IgError::NoEstimate {
            remaining: self.remaining(),
        })?;
        let range = target * self.input_len..(target + 1) * self.input_len;
        let done = &self.done[range.clone()];
        Ok(match self.method {
            Method::Trapezoid => {
                let (w_end, w_int) = trapezoid_weights(steps);
                self.ends[range]
                    .iter()
                    .zip(done)
                    .map(|(e, i)| (w_end * e + w_int * i) as f32)
                    .collect()
            }
            _ => done.iter().map(|v| *v as f32).collect(),
        })
    }

    /// Every point evaluated so far for `target`, sorted by alpha (refinement rounds interleave
    /// with the earlier ones).
    pub fn path(&self, target: usize) -> Result<Vec<PathPoint>, IgError> {
        if target >= self.targets {
            return Err(IgError::NoSuchTarget {
                target,
                targets: self.targets,
            });
        }
        let mut points: Vec<PathPoint> = self
            .path_alpha
            .iter()
            .enumerate()
            .map(|(j, &alpha)| PathPoint {
                alpha,
                score: self.path_score[j * self.targets + target],
                mean_abs_gradient: self.path_grad[j * self.targets + target],
            })
            .collect();
        points.sort_by(|a, b| a.alpha.total_cmp(&b.alpha));
        Ok(points)
    }
}

/// sum += w * g, in f64 so that a thousand small f32 terms do not lose their low bits.
fn add(sum: &mut [f64], g: &[f32], w: f64) {
    for (s, v) in sum.iter_mut().zip(g) {
        *s += w * f64::from(*v);
    }
}
