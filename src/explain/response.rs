//! The results of an Explain: one Explanation per target (attributions, completeness, the
//! path's diagnostics) with the pictures asked for, and the events that carry them.

use tokio::sync::mpsc;

use super::{ExplainItem, ExplainJob, PictureRequest};
use crate::error::Error;
use crate::ig::{self, Integrator};
use crate::model::TensorData;
use crate::proto::integrad::v1 as pb;
use crate::wire;

/// The numbers of one target's explanation that come from outside the path integrator.
pub(super) struct Summary {
    pub class: usize,
    pub f_input: f32,
    pub f_baseline: f32,
    pub steps: u32,
    pub evaluations: usize,
}

/// Adds the requested pictures to `explanation` (drawing is CPU work: off the async threads).
pub(super) async fn draw(
    request: Option<&PictureRequest>,
    explanation: &mut pb::Explanation,
) -> Result<(), Error> {
    let Some(request) = request else {
        return Ok(());
    };
    let attributions = explanation
        .attributions
        .as_ref()
        .map(|t| wire::f32s(&t.data))
        .unwrap_or_default();
    let (options, preprocessing, picture) = (
        request.options,
        request.preprocessing.clone(),
        request.picture.clone(),
    );
    let pictures = tokio::task::spawn_blocking(move || {
        crate::image::render(&attributions, &preprocessing, &picture, &options)
    })
    .await
    .map_err(|e| Error::Internal(format!("drawing failed: {e}")))?;
    if request.mask {
        explanation.mask_png = crate::image::png(&pictures.mask);
    }
    if request.overlay {
        explanation.overlay_png = crate::image::png(&pictures.overlay);
    }
    Ok(())
}

/// The Explanation of target `j`: its (averaged) attributions, the completeness numbers,
/// and the path diagnostics of `integrator` (the first baseline's path).
pub(super) fn explanation(
    job: &ExplainJob,
    integrator: &Integrator,
    j: usize,
    attributions: Vec<f32>,
    summary: Summary,
) -> Result<pb::Explanation, Error> {
    let Summary {
        class,
        f_input,
        f_baseline,
        steps,
        evaluations,
    } = summary;
    let c = ig::Completeness::new(&attributions, f64::from(f_input), f64::from(f_baseline));
    let path = integrator
        .path(j)
        .map_err(|e| Error::Internal(e.to_string()))?
        .into_iter()
        .map(|p| pb::PathPoint {
            alpha: p.alpha as f32,
            score: p.score,
            mean_abs_gradient: p.mean_abs_gradient,
        })
        .collect();
    Ok(pb::Explanation {
        attributions: Some(pb::Tensor::from(&TensorData::f32(
            job.input.tensor.shape.clone(),
            attributions,
        ))),
        target_class: class as i64,
        label: job
            .model
            .spec
            .labels()
            .get(class)
            .cloned()
            .unwrap_or_default(),
        score_input: f_input,
        score_baseline: f_baseline,
        attribution_sum: c.attribution_sum as f32,
        convergence_delta: c.delta as f32,
        steps,
        method: pb::Method::from(job.method) as i32,
        objective: job.objective as i32,
        evaluations: evaluations as u32,
        elapsed_ms: job.started.elapsed().as_secs_f32() * 1e3,
        path,
        mask_png: Vec::new(),
        overlay_png: Vec::new(),
    })
}

pub(super) async fn send(
    events: &mpsc::Sender<ExplainItem>,
    event: pb::explain_event::Event,
) -> Result<(), Error> {
    events
        .send(Ok(pb::ExplainEvent { event: Some(event) }))
        .await
        .map_err(|_| Error::Cancelled)
}
