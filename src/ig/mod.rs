//! Integrated Gradients as a plain library: no model, no tonic, no tokio.
//!
//! The method, as docs/method.md states it:
//!
//! ```text
//! IG_i(x) = (x_i - x'_i) * integral_{a=0..1} dF(x' + a (x - x')) / dx_i  da
//! ```
//!
//! The pieces, in the order a caller uses them:
//! - [`baseline`] makes x' in the model's input space (zeros, black, white, seeded uniform
//!   noise, a Gaussian-blurred copy of the input).
//! - [`quadrature`] turns the integral into (alpha, weight) nodes (trapezoid, left, right,
//!   midpoint, Gauss-Legendre; weights sum to exactly 1) and provides the [`Integrator`], which
//!   hands out alphas in batches, takes back the gradients the model computed there and keeps
//!   only running sums, so memory is the input size times the number of targets whatever the
//!   step count. Trapezoid can be refined by doubling the steps without recomputing a single
//!   gradient.
//! - [`path`] writes the interpolated inputs z = x' + a (x - x') for a batch of alphas into a
//!   caller's buffer, scales the average gradient into attributions and checks completeness
//!   (sum of attributions against F(x) - F(x')).
//!
//! - [`xrai`] ranks image regions by their attributions as PAIR's XRAI does (the segments, the
//!   greedy ranking), given the attributions.
//!
//! Evaluating F and its gradient is the caller's business (the model worker); this module only
//! does the arithmetic around it, so that it can be tested against analytic functions.

pub mod baseline;
pub mod path;
pub mod quadrature;
pub mod xrai;

#[cfg(test)]
mod tests;

pub use baseline::{draw_without_replacement, make_baseline, BaselineKind};
pub use path::{
    attribution_sum, attributions, convergence_delta, interpolate, Completeness,
    DEFAULT_CONVERGENCE_TOLERANCE,
};
pub use quadrature::{nodes, refine_trapezoid, Batch, Integrator, Method, Node, PathPoint};

/// What can go wrong in the arithmetic of Integrated Gradients. Every variant names the value
/// that was wrong, so that the server can pass the message on as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IgError {
    #[error("unknown quadrature method {0:?}; expected one of trapezoid, left, right, midpoint, gauss-legendre")]
    UnknownMethod(String),
    #[error("steps must be at least 1, got {0}")]
    ZeroSteps(u32),
    #[error("steps would exceed {max} when refining from {steps}")]
    TooManySteps { steps: u32, max: u32 },
    #[error("{what} has {got} values, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("batch starting at node {got} of round {round} fed out of order; expected node {expected} of round {current}")]
    OutOfOrder {
        round: u32,
        got: usize,
        current: u32,
        expected: usize,
    },
    #[error("{method} cannot be refined; only trapezoid reuses its old nodes when doubling")]
    NotRefinable { method: Method },
    #[error("the current round has {remaining} nodes left to evaluate")]
    RoundIncomplete { remaining: usize },
    #[error("no complete estimate yet: the first round has {remaining} nodes left to evaluate")]
    NoEstimate { remaining: usize },
    #[error("target {target} out of range; the integrator holds {targets} targets")]
    NoSuchTarget { target: usize, targets: usize },
    #[error("baseline {kind} needs image preprocessing facts and this input has none")]
    NeedsImage { kind: &'static str },
    #[error("blur sigma must be finite, non-negative and at most the image's larger side ({max}), got {sigma}")]
    BadSigma { sigma: f32, max: u32 },
}
