//! Faithfulness metrics of a saliency map: how much the model's score depends on the pixels
//! the map ranks first. Deletion and insertion (Petsiuk et al., RISE, BMVC 2018) and PAIR's
//! performance information curves, SIC and AIC (Kapishnikov et al., XRAI, ICCV 2019; PAIR's
//! `saliency.metrics.pic`). A plain library (no tonic, no tokio): it makes the perturbed
//! inputs and turns the model's scores of them into curves; the caller runs the model
//! (`crate::evaluate` batches them on the model's worker).

mod causal;
mod entropy;
mod interpolate;
mod pic;

pub use causal::{rise_blur, Causal, CausalMode};
pub use entropy::webp_lossless_size;
pub use interpolate::create_blurred_image;
pub use pic::{random_mask, Pic, PicCurve, PicOptions, DEFAULT_THRESHOLDS};

/// Why a saliency map (or an option) cannot be used; the message names what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("has {got} values; expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("holds {what} at index {index}; every value must be finite")]
    NotFinite { what: &'static str, index: usize },
    #[error("{0}")]
    Option(String),
    /// PIC's blurred picture could not be interpolated (see [`create_blurred_image`]).
    #[error("{0}")]
    Interpolation(String),
}

/// How a map with channels becomes one saliency per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The sum of |value| over the channels (what integrad's masks show).
    #[default]
    AbsSum,
    /// The signed sum over the channels: pixels that push the score down rank last.
    Sum,
}

/// One saliency per pixel (row-major, `height * width`) from a map of `channels` values per
/// pixel, laid out channels-first (`chw`) or channels-last. Every value must be finite: a NaN
/// would make the order of the pixels meaningless.
pub fn pixel_saliency(
    map: &[f32],
    channels: usize,
    chw: bool,
    pixels: usize,
    reduction: Reduction,
) -> Result<Vec<f32>, MetricsError> {
    if map.len() != channels * pixels {
        return Err(MetricsError::Length {
            got: map.len(),
            expected: channels * pixels,
        });
    }
    if let Some(index) = map.iter().position(|v| !v.is_finite()) {
        let what = if map[index].is_nan() {
            "NaN"
        } else {
            "an infinity"
        };
        return Err(MetricsError::NotFinite { what, index });
    }
    let at = |p: usize, c: usize| {
        if chw {
            map[c * pixels + p]
        } else {
            map[p * channels + c]
        }
    };
    Ok((0..pixels)
        .map(|p| {
            // Channel by channel in order, as numpy's sum over the channel axis adds them.
            (0..channels).fold(0.0f32, |sum, c| match reduction {
                Reduction::AbsSum => sum + at(p, c).abs(),
                Reduction::Sum => sum + at(p, c),
            })
        })
        .collect())
}

/// The pixels in order of decreasing saliency; equal saliencies in pixel order (a stable
/// order, so the same map always gives the same curve).
pub fn salient_order(saliency: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..saliency.len()).collect();
    order.sort_by(|&a, &b| saliency[b].total_cmp(&saliency[a]).then(a.cmp(&b)));
    order
}

/// The area under the piecewise-linear curve through (x, y), by the trapezoid rule (numpy's
/// `trapezoid`).
pub fn trapezoid(x: &[f64], y: &[f64]) -> f64 {
    x.windows(2)
        .zip(y.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_first_and_last_give_the_same_saliency() {
        // Two pixels, three channels: pixel 0 = (1, -2, 3), pixel 1 = (-4, 5, -6).
        let chw = [1.0, -4.0, -2.0, 5.0, 3.0, -6.0];
        let hwc = [1.0, -2.0, 3.0, -4.0, 5.0, -6.0];
        let a = pixel_saliency(&chw, 3, true, 2, Reduction::AbsSum).unwrap();
        let b = pixel_saliency(&hwc, 3, false, 2, Reduction::AbsSum).unwrap();
        assert_eq!(a, vec![6.0, 15.0]);
        assert_eq!(a, b);
        let signed = pixel_saliency(&hwc, 3, false, 2, Reduction::Sum).unwrap();
        assert_eq!(signed, vec![2.0, -5.0]);
    }

    #[test]
    fn nan_and_wrong_length_are_refused() {
        let err = pixel_saliency(&[1.0, f32::NAN], 1, true, 2, Reduction::AbsSum).unwrap_err();
        assert_eq!(
            err,
            MetricsError::NotFinite {
                what: "NaN",
                index: 1
            }
        );
        let err = pixel_saliency(&[1.0; 5], 3, true, 2, Reduction::AbsSum).unwrap_err();
        assert_eq!(
            err,
            MetricsError::Length {
                got: 5,
                expected: 6
            }
        );
    }

    #[test]
    fn order_is_decreasing_with_ties_in_pixel_order() {
        assert_eq!(salient_order(&[0.5, 2.0, 0.5, 3.0]), vec![3, 1, 0, 2]);
    }

    #[test]
    fn trapezoid_of_a_line() {
        // y = x on [0, 1]: exactly 1/2 with any breakpoints.
        let x = [0.0, 0.1, 0.5, 1.0];
        assert_eq!(trapezoid(&x, &x), 0.5);
    }
}
