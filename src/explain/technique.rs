//! Which technique an Explain runs, and its options, checked against the model: Integrated
//! Gradients (the default), Blur IG, Guided IG or XRAI, with or without a noise tunnel.
//! Options that do not apply to the chosen technique are refused, never ignored.

use crate::error::Error;
use crate::ig::blur::{BlurParams, ImageAxes};
use crate::ig::guided::GuidedParams;
use crate::ig::noise::{NoiseKind, NoiseTunnel, DEFAULT_STDEV};
use crate::ig::Method;
use crate::image::Layout;
use crate::model::ModelSpec;
use crate::proto::integrad::v1 as pb;

/// Default steps per technique: IG's recipe, and PAIR's for the others.
pub const BLUR_IG_STEPS: u32 = 100;
pub const GUIDED_IG_STEPS: u32 = 200;
pub const XRAI_STEPS: u32 = 100;
/// The fraction of the image XRAI's pictures show (its top regions), as in the paper's figures.
pub const XRAI_TOP_FRACTION: f32 = 0.3;

/// A checked technique.
#[derive(Debug, Clone)]
pub enum Technique {
    IntegratedGradients,
    BlurIg {
        params: BlurParams,
        axes: ImageAxes,
    },
    GuidedIg(GuidedParams),
    Xrai {
        params: crate::ig::xrai::XraiParams,
        axes: ImageAxes,
        /// The fraction of the image the pictures show.
        top_fraction: f32,
    },
}

impl Technique {
    pub fn proto(&self) -> pb::Technique {
        match self {
            Technique::IntegratedGradients => pb::Technique::IntegratedGradients,
            Technique::BlurIg { .. } => pb::Technique::BlurIg,
            Technique::GuidedIg(_) => pb::Technique::GuidedIg,
            Technique::Xrai { .. } => pb::Technique::Xrai,
        }
    }
}

/// What [`check`] makes of a request: the technique, its noise tunnel, its steps and the
/// quadrature rule it integrates with.
pub struct Checked {
    pub technique: Technique,
    pub noise: Option<NoiseTunnel>,
    pub default_steps: u32,
    pub method: Method,
}

/// Checks the request's technique fields against the model. `method` is the request's rule
/// (None: unset); `max_samples` bounds the noise tunnel's samples.
pub fn check(
    request: &pb::ExplainRequest,
    spec: &ModelSpec,
    method: Option<Method>,
    max_samples: u32,
) -> Result<Checked, Error> {
    let chosen = pb::Technique::try_from(request.technique)
        .map_err(|_| Error::invalid("technique", format!("unknown value {}", request.technique)))?;
    let name = match chosen {
        pb::Technique::Unspecified | pb::Technique::IntegratedGradients => "integrated gradients",
        pb::Technique::BlurIg => "Blur IG",
        pb::Technique::GuidedIg => "Guided IG",
        pb::Technique::Xrai => "XRAI",
    };
    let stray = |field: &'static str, owner: &str| {
        Error::invalid(
            field,
            format!("{field} options are for {owner}; this request's technique is {name}"),
        )
    };
    if request.blur_ig.is_some() && chosen != pb::Technique::BlurIg {
        return Err(stray("blur_ig", "TECHNIQUE_BLUR_IG"));
    }
    if request.guided_ig.is_some() && chosen != pb::Technique::GuidedIg {
        return Err(stray("guided_ig", "TECHNIQUE_GUIDED_IG"));
    }
    if request.xrai.is_some() && chosen != pb::Technique::Xrai {
        return Err(stray("xrai", "TECHNIQUE_XRAI"));
    }
    if request.tolerance > 0.0
        && chosen != pb::Technique::Unspecified
        && chosen != pb::Technique::IntegratedGradients
    {
        return Err(Error::invalid(
            "tolerance",
            format!("adaptive refinement is for integrated gradients; {name} takes a fixed number of steps (tolerance 0)"),
        ));
    }
    let no_baseline = |why: &str| -> Result<(), Error> {
        if request.baseline.is_some() || !request.baselines.is_empty() {
            return Err(Error::invalid(
                if request.baseline.is_some() {
                    "baseline"
                } else {
                    "baselines"
                },
                format!("{name} takes no baseline: {why}"),
            ));
        }
        Ok(())
    };
    let (technique, default_steps) = match chosen {
        pb::Technique::Unspecified | pb::Technique::IntegratedGradients => {
            (Technique::IntegratedGradients, super::DEFAULT_STEPS)
        }
        pb::Technique::BlurIg => {
            no_baseline("its path starts at the input blurred by max_sigma")?;
            let axes = image_axes(request, spec, name)?;
            let o = request.blur_ig.unwrap_or_default();
            let defaults = BlurParams::default();
            let params = BlurParams {
                max_sigma: o.max_sigma.map_or(defaults.max_sigma, f64::from),
                grad_step: o.grad_step.map_or(defaults.grad_step, f64::from),
            };
            params
                .validate()
                .map_err(|reason| Error::invalid("blur_ig", reason))?;
            (Technique::BlurIg { params, axes }, BLUR_IG_STEPS)
        }
        pb::Technique::GuidedIg => {
            if method.is_some() {
                return Err(Error::invalid(
                    "method",
                    "Guided IG's path is not a straight line: it takes no quadrature rule (leave method unset)",
                ));
            }
            let o = request.guided_ig.unwrap_or_default();
            let defaults = GuidedParams::default();
            let params = GuidedParams {
                steps: request.steps.unwrap_or(GUIDED_IG_STEPS),
                fraction: o.fraction.map_or(defaults.fraction, f64::from),
                max_dist: o.max_dist.map_or(defaults.max_dist, f64::from),
            };
            if request.steps != Some(0) {
                params
                    .validate()
                    .map_err(|reason| Error::invalid("guided_ig", reason))?;
            }
            (Technique::GuidedIg(params), GUIDED_IG_STEPS)
        }
        pb::Technique::Xrai => {
            no_baseline("it integrates from black and from white and averages the two")?;
            let axes = image_axes(request, spec, name)?;
            let o = request.xrai.unwrap_or_default();
            let defaults = crate::ig::xrai::XraiParams::default();
            let params = crate::ig::xrai::XraiParams {
                min_pixel_diff: o
                    .min_pixel_diff
                    .map_or(defaults.min_pixel_diff, |v| v as usize),
                area_threshold: o.area_threshold.unwrap_or(defaults.area_threshold),
            };
            if !(params.area_threshold > 0.0 && params.area_threshold <= 1.0) {
                return Err(Error::invalid(
                    "xrai.area_threshold",
                    format!("must be in (0, 1], got {}", params.area_threshold),
                ));
            }
            let top_fraction = o.top_fraction.unwrap_or(XRAI_TOP_FRACTION);
            if !(top_fraction > 0.0 && top_fraction <= 1.0) {
                return Err(Error::invalid(
                    "xrai.top_fraction",
                    format!("must be in (0, 1], got {top_fraction}"),
                ));
            }
            let technique = Technique::Xrai {
                params,
                axes,
                top_fraction,
            };
            (technique, XRAI_STEPS)
        }
    };
    let method = match (method, &technique) {
        (Some(m), _) => m,
        // PAIR's Blur IG sums at sigmas i / steps * max_sigma, i < steps: the right-point
        // rule in alpha (alpha 1 is the input).
        (None, Technique::BlurIg { .. }) => Method::Right,
        (None, _) => Method::Trapezoid,
    };
    let noise = noise_tunnel(request.noise_tunnel.as_ref(), max_samples)?;
    if noise.is_some() && request.tolerance > 0.0 {
        return Err(Error::invalid(
            "tolerance",
            "adaptive refinement is for a single path; a noise tunnel takes a fixed number of steps (tolerance 0)",
        ));
    }
    Ok(Checked {
        technique,
        noise,
        default_steps,
        method,
    })
}

/// The image input's axes, which must be the only attributed tensor.
fn image_axes(
    request: &pb::ExplainRequest,
    spec: &ModelSpec,
    name: &str,
) -> Result<ImageAxes, Error> {
    let Some((input, preprocessing)) = spec.image() else {
        return Err(Error::FailedPrecondition {
            field: "technique".into(),
            reason: format!(
                "{name} works on images and model {:?} takes no picture",
                spec.name
            ),
        });
    };
    if request.attribute_to.iter().any(|t| t != input.name()) {
        return Err(Error::invalid(
            "attribute_to",
            format!(
                "{name} attributes to the image input {:?} alone",
                input.name()
            ),
        ));
    }
    Ok(ImageAxes {
        channels: 3,
        height: preprocessing.height as usize,
        width: preprocessing.width as usize,
        channels_first: preprocessing.layout == Layout::Nchw,
    })
}

fn noise_tunnel(
    tunnel: Option<&pb::NoiseTunnel>,
    max_samples: u32,
) -> Result<Option<NoiseTunnel>, Error> {
    let Some(t) = tunnel else {
        return Ok(None);
    };
    let kind = match pb::NoiseKind::try_from(t.kind) {
        Ok(pb::NoiseKind::Unspecified | pb::NoiseKind::Smoothgrad) => NoiseKind::SmoothGrad,
        Ok(pb::NoiseKind::SmoothgradSq) => NoiseKind::SmoothGradSquared,
        Ok(pb::NoiseKind::Vargrad) => NoiseKind::VarGrad,
        Err(_) => {
            return Err(Error::invalid(
                "noise_tunnel.kind",
                format!("unknown value {}", t.kind),
            ))
        }
    };
    let stdev = t.stdev.map_or(DEFAULT_STDEV, f64::from);
    if !(stdev.is_finite() && stdev > 0.0 && stdev <= 10.0) {
        return Err(Error::invalid(
            "noise_tunnel.stdev",
            format!("must be in (0, 10] (a fraction of the input's range), got {stdev}"),
        ));
    }
    if t.samples > max_samples {
        return Err(Error::ResourceExhausted(format!(
            "noise_tunnel.samples: {} samples are more than this server takes ({max_samples}, --max-baseline-samples)",
            t.samples
        )));
    }
    if t.samples <= 1 {
        if t.stdev.is_some() || t.kind != 0 || t.seed != 0 {
            return Err(Error::invalid(
                "noise_tunnel.samples",
                "the noise tunnel's options are set but samples is 0 or 1 (no noise tunnel): give at least 2",
            ));
        }
        return Ok(None);
    }
    Ok(Some(NoiseTunnel {
        samples: t.samples as usize,
        stdev,
        kind,
        seed: t.seed,
    }))
}
