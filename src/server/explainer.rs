//! The `integrad.v1.Explainer` service: a thin gRPC face over the [`Engine`].

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::limits::ExplainGate;
use super::shutdown::Shutdown;
use crate::engine::Engine;
use crate::error::Error;
use crate::proto::integrad::v1 as pb;
use crate::proto::integrad::v1::explainer_server::Explainer;
use crate::wire::model_info;

/// Serves requests once the engine (models loaded and warmed up) is set; UNAVAILABLE before.
#[derive(Clone)]
pub struct ExplainerService {
    engine: Arc<OnceLock<Arc<Engine>>>,
    gate: Arc<ExplainGate>,
    shutdown: Shutdown,
    /// For the message of an Explain cancelled at the end of the grace period.
    grace_s: u64,
}

impl ExplainerService {
    pub fn new(gate: Arc<ExplainGate>, shutdown: Shutdown, grace_s: u64) -> Self {
        Self {
            engine: Default::default(),
            gate,
            shutdown,
            grace_s,
        }
    }

    /// Called once, when every model has loaded (or failed to).
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// Whether the models have loaded and none is called `name`.
    pub fn model_is_missing(&self, name: &str) -> bool {
        self.engine
            .get()
            .is_some_and(|engine| engine.repository().get(name).is_none())
    }

    fn engine(&self) -> Result<&Engine, Status> {
        self.engine.get().map(|e| e.as_ref()).ok_or_else(|| Status::unavailable("models are still loading; retry shortly (the health service says SERVING when ready)"))
    }
}

type ExplainStream = Pin<Box<dyn Stream<Item = Result<pb::ExplainEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Explainer for ExplainerService {
    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let repository = self.engine()?.repository();
        let models = repository
            .iter()
            .map(|(name, entry)| model_info(name, entry))
            .collect();
        Ok(Response::new(pb::ListModelsResponse {
            models,
            default_model: repository.default_model().unwrap_or_default().to_string(),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let engine = self.engine()?;
        let name = request.into_inner().model;
        // A model that failed to load is still described (with its reason), not an error.
        let name = match engine.model(&name) {
            Ok(model) => model.spec.name.clone(),
            Err(Error::ModelFailed { name, .. })
            | Err(Error::Model(crate::model::ModelError::Failed { model: name, .. })) => name,
            Err(other) => return Err(other.into()),
        };
        let entry = engine
            .repository()
            .get(&name)
            .ok_or_else(|| Status::internal("model vanished"))?;
        Ok(Response::new(model_info(&name, entry)))
    }

    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let response = self.engine()?.predict(request.into_inner()).await?;
        Ok(Response::new(response))
    }

    type ExplainStream = ExplainStream;

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<Self::ExplainStream>, Status> {
        // Its explanations' elapsed_ms count from here: the wait for a slot is in them.
        let received = std::time::Instant::now();
        let deadline = grpc_timeout(request.metadata()).map(|t| tokio::time::Instant::now() + t);
        let engine = self.engine()?;
        engine.note_model(&request.get_ref().model);
        // Admission first, so that an overloaded server refuses before decoding anything.
        let slot = self.gate.acquire(deadline, &self.shutdown).await?;
        // Every check happens here, before the stream starts: a bad request is a status.
        let job = engine.plan_explain(request.into_inner()).await?;
        Ok(Response::new(self.stream(
            job.received_at(received),
            slot,
            deadline,
        )))
    }

    type ExplainBatchStream = ExplainStream;

    async fn explain_batch(
        &self,
        request: Request<pb::ExplainBatchRequest>,
    ) -> Result<Response<Self::ExplainBatchStream>, Status> {
        let received = std::time::Instant::now();
        let deadline = grpc_timeout(request.metadata()).map(|t| tokio::time::Instant::now() + t);
        let engine = self.engine()?;
        let model = request.get_ref().request.as_ref().map(|r| r.model.as_str());
        engine.note_model(model.unwrap_or_default());
        let slot = self.gate.acquire(deadline, &self.shutdown).await?;
        let job = engine.plan_explain_batch(request.into_inner()).await?;
        Ok(Response::new(self.stream(
            job.received_at(received),
            slot,
            deadline,
        )))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let deadline = grpc_timeout(request.metadata()).map(|t| tokio::time::Instant::now() + t);
        let engine = self.engine()?;
        engine.note_model(&request.get_ref().model);
        // An Evaluate runs the model tens of times: it takes an Explain slot, so that the
        // server's bound on concurrent heavy requests holds for both.
        let _slot = self.gate.acquire(deadline, &self.shutdown).await?;
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        // A client that goes away drops this future, and with it the evaluation between two
        // model runs.
        let response = tokio::select! {
            response = engine.evaluate(request.into_inner()) => response?,
            _ = expired => return Err(Error::DeadlineExceeded.into()),
            _ = self.shutdown.cancelling() => {
                let reason = format!("the server is shutting down and its grace period ({} s) is over; the Evaluate was cancelled", self.grace_s);
                return Err(Error::Unavailable(reason).into());
            }
        };
        Ok(Response::new(response))
    }
}

impl ExplainerService {
    /// Runs `job` holding its admission `slot`, streaming its events until it ends, the
    /// deadline passes or the grace period of a shutdown is over.
    fn stream(
        &self,
        job: crate::explain::ExplainJob,
        slot: super::limits::ExplainSlot,
        deadline: Option<tokio::time::Instant>,
    ) -> ExplainStream {
        let (events, stream) = tokio::sync::mpsc::channel(job.events_buffered());
        let shutdown = self.shutdown.clone();
        let grace_s = self.grace_s;
        // In the RPC's span, so the job's spans (gradient batches, render) are its children.
        let job_span = tracing::Span::current();
        tokio::spawn(
            async move {
                let _slot = slot;
                let stopped = events.clone();
                let expired = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = job.run(events) => {}
                    _ = expired => {
                        let _ = stopped.send(Err(Error::DeadlineExceeded)).await;
                    }
                    _ = shutdown.cancelling() => {
                        let reason = format!("the server is shutting down and its grace period ({grace_s} s) is over; the Explain was cancelled");
                        let _ = stopped.send(Err(Error::Unavailable(reason))).await;
                    }
                }
            }
            .instrument(job_span),
        );
        let stream = tokio_stream::wrappers::ReceiverStream::new(stream)
            .map(|item| item.map_err(Status::from));
        Box::pin(stream)
    }
}

/// The client's deadline from the `grpc-timeout` header ("<digits><unit>", unit one of
/// H M S m u n, as the gRPC over HTTP/2 spec defines it).
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    let nanos_per_unit: u64 = match unit {
        "H" => 3_600_000_000_000,
        "M" => 60_000_000_000,
        "S" => 1_000_000_000,
        "m" => 1_000_000,
        "u" => 1_000,
        "n" => 1,
        _ => return None,
    };
    Some(std::time::Duration::from_nanos(
        value.saturating_mul(nanos_per_unit),
    ))
}
