//! A job's predictor calls: each instance's model-space inputs go to the predictor while the
//! gradients run, so that the check adds no more than the wait for the slowest answer after
//! the last gradient run, and each explanation gets its [`pb::PredictorCheck`].

use std::sync::Arc;

use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::ExplainJob;
use crate::engine::logit;
use crate::predictor::{Failure, Predictor, Served};
use crate::proto::integrad::v1 as pb;

/// Instances whose calls run ahead of the instances delivered: enough to keep the predictor
/// busy while a batch integrates, without a copy of every instance's input in flight.
const AHEAD: usize = 32;

enum Call {
    NotStarted,
    Running(AbortOnDropHandle<Served>),
    Taken,
}

/// The predictor calls of one job, one per instance, started in instance order. Dropped with
/// the job (a cancelled request, a passed deadline), they are aborted.
pub(super) struct ServedCalls {
    predictor: Option<Arc<Predictor>>,
    calls: Vec<Call>,
}

impl ServedCalls {
    /// The job's calls, the first [`AHEAD`] started; none without a predictor.
    pub fn start(job: &ExplainJob) -> Self {
        let mut calls = Self {
            predictor: job.predictor.clone(),
            calls: job.instances.iter().map(|_| Call::NotStarted).collect(),
        };
        calls.top_up(job);
        calls
    }

    /// Starts calls in instance order until [`AHEAD`] are running.
    pub fn top_up(&mut self, job: &ExplainJob) {
        if self.predictor.is_none() {
            return;
        }
        let running = self
            .calls
            .iter()
            .filter(|c| matches!(c, Call::Running(_)))
            .count();
        let waiting: Vec<usize> = (0..self.calls.len())
            .filter(|&i| matches!(self.calls[i], Call::NotStarted))
            .take(AHEAD.saturating_sub(running))
            .collect();
        for i in waiting {
            self.calls[i] = self.call(job, i);
        }
    }

    fn call(&self, job: &ExplainJob, i: usize) -> Call {
        let Some(predictor) = &self.predictor else {
            return Call::Taken;
        };
        let spec = &job.model.spec;
        let asked = predictor.infer(&spec.name, &job.instances[i].inputs.tensors, spec.output());
        let span = tracing::info_span!(
            "predictor",
            predictor.url = predictor.url(),
            ig.instance = i as i64
        );
        Call::Running(AbortOnDropHandle::new(tokio::spawn(asked.instrument(span))))
    }

    /// Instance `i`'s answer, once it has come (its call is started now if it was not yet):
    /// the explained output's row, or why there is none. None without a predictor.
    pub async fn take(&mut self, job: &ExplainJob, i: usize) -> Option<Served> {
        self.predictor.as_ref()?;
        if matches!(self.calls[i], Call::NotStarted) {
            self.calls[i] = self.call(job, i);
        }
        let served = match std::mem::replace(&mut self.calls[i], Call::Taken) {
            Call::Running(handle) => handle
                .await
                .unwrap_or_else(|e| Err(Failure::unusable(format!("the call failed: {e}")))),
            _ => return None,
        };
        Some(served.and_then(|row| match row.len() == job.classes {
            true => Ok(row),
            false => Err(Failure::unusable(format!(
                "its output {:?} has {} values for one input; integrad's model has {}",
                job.model.spec.output(),
                row.len(),
                job.classes
            ))),
        }))
    }
}

impl ExplainJob {
    /// The check of one explanation of `class`, whose own F(x) is `own`, against the
    /// predictor's answer `served` for its instance: None without a predictor, an error when
    /// --require-consistent refuses it.
    pub(super) fn predictor_check(
        &self,
        served: Option<&Served>,
        class: usize,
        own: f32,
    ) -> Result<Option<pb::PredictorCheck>, crate::error::Error> {
        let (Some(predictor), Some(served)) = (&self.predictor, served) else {
            return Ok(None);
        };
        let score = served.as_ref().map(|row| self.served_score(row, class));
        predictor
            .judge(&self.model.spec.name, class, score, own)
            .map(Some)
    }

    /// The objective of `class` from a row of the served output, as F(x) is computed from the
    /// scored tensor: the same function, unless the scored tensor is a final Sigmoid's logits
    /// (which the predictor does not return): then the logit of the served probability.
    fn served_score(&self, row: &[f32], class: usize) -> f32 {
        if self.scored.of == self.model.spec.output() {
            self.objective_score(row, class)
        } else {
            logit(row[class])
        }
    }
}
