//! One thread per model that owns the ONNX Runtime session and runs jobs from a channel.
//!
//! Callers await a oneshot reply; the job carries the caller's tracing span so the ORT run is
//! logged under the request that caused it.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};
use tokio::sync::{mpsc, oneshot};

use super::{ModelError, TensorData, Values};

/// Jobs waiting for a model beyond this block their senders (backpressure, not a backlog).
const QUEUE_DEPTH: usize = 64;

type Reply = Result<Vec<TensorData>, ModelError>;

struct Job {
    inputs: Vec<(String, TensorData)>,
    outputs: Vec<String>,
    reply: oneshot::Sender<Reply>,
    span: tracing::Span,
}

/// A handle to a model's worker thread; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    model: String,
    tx: mpsc::Sender<Job>,
}

impl Worker {
    /// Moves `session` onto a new thread named after the model.
    pub fn spawn(model: &str, session: Session) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let queue = tx.downgrade();
        crate::telemetry::watch_queue(model, move || {
            queue
                .upgrade()
                .map(|tx: mpsc::Sender<Job>| tx.max_capacity() - tx.capacity())
        });
        let name = model.to_string();
        std::thread::Builder::new()
            .name(format!("model-{model}"))
            .spawn(move || serve(name, session, rx))?;
        Ok(Self {
            model: model.to_string(),
            tx,
        })
    }

    /// Runs the session on `inputs`, returning the named `outputs` in that order.
    pub async fn run(&self, inputs: Vec<(String, TensorData)>, outputs: Vec<String>) -> Reply {
        let (job, answer) = Job::new(inputs, outputs);
        self.tx.send(job).await.map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())?
    }

    /// The blocking form of [`Worker::run`], for callers outside an async runtime.
    pub fn run_blocking(&self, inputs: Vec<(String, TensorData)>, outputs: Vec<String>) -> Reply {
        let (job, answer) = Job::new(inputs, outputs);
        self.tx.blocking_send(job).map_err(|_| self.gone())?;
        answer.blocking_recv().map_err(|_| self.gone())?
    }

    fn gone(&self) -> ModelError {
        ModelError::WorkerGone {
            model: self.model.clone(),
        }
    }
}

impl Job {
    /// A job under the caller's span, and the receiver its answer arrives on.
    fn new(
        inputs: Vec<(String, TensorData)>,
        outputs: Vec<String>,
    ) -> (Self, oneshot::Receiver<Reply>) {
        let (reply, answer) = oneshot::channel();
        let span = tracing::Span::current();
        let job = Job {
            inputs,
            outputs,
            reply,
            span,
        };
        (job, answer)
    }
}

fn serve(model: String, mut session: Session, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.blocking_recv() {
        let _entered = job.span.enter();
        if job.reply.is_closed() {
            // The caller gave up (cancelled or timed out) while the job waited.
            continue;
        }
        let _run = tracing::info_span!("ort.run", worker = %model).entered();
        let result =
            run(&mut session, job.inputs, &job.outputs).map_err(|reason| ModelError::Runtime {
                model: model.clone(),
                reason,
            });
        let _ = job.reply.send(result);
    }
    tracing::debug!(%model, "model worker stopped");
}

fn run(
    session: &mut Session,
    inputs: Vec<(String, TensorData)>,
    outputs: &[String],
) -> Result<Vec<TensorData>, String> {
    let mut values: Vec<(Cow<'static, str>, SessionInputValue<'static>)> =
        Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        let value: SessionInputValue = match tensor.values {
            Values::F32(data) => Tensor::from_array((tensor.shape, data))
                .map_err(|e| e.to_string())?
                .into(),
            Values::I64(data) => Tensor::from_array((tensor.shape, data))
                .map_err(|e| e.to_string())?
                .into(),
        };
        values.push((Cow::Owned(name), value));
    }
    let result = session.run(values).map_err(|e| e.to_string())?;
    outputs
        .iter()
        .map(|name| {
            let value = result
                .get(name.as_str())
                .ok_or_else(|| format!("the session produced no output {name:?}"))?;
            match value.dtype() {
                ValueType::Tensor {
                    ty: TensorElementType::Float32,
                    ..
                } => extract(value, Values::F32),
                ValueType::Tensor {
                    ty: TensorElementType::Int64,
                    ..
                } => extract(value, Values::I64),
                other => Err(format!(
                    "output {name:?} has type {other:?}; only float32 and int64 outputs are read"
                )),
            }
        })
        .collect()
}

fn extract<T: ort::value::PrimitiveTensorElementType + Clone>(
    value: &ort::value::DynValue,
    wrap: fn(Vec<T>) -> Values,
) -> Result<TensorData, String> {
    let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
    Ok(TensorData {
        shape: shape.to_vec(),
        values: wrap(data.to_vec()),
    })
}
