//! One thread per model that owns the ONNX Runtime session and runs jobs from a channel.
//!
//! Callers await a oneshot reply; the job carries the caller's tracing span so the ORT run is
//! logged under the request that caused it. With batching on, the thread merges the jobs
//! waiting in its queue into one run (src/model/batch.rs says which jobs can merge and how):
//! FIFO, up to `--batch-max-rows`; a job that does not fit goes first in the next run. When
//! more than one request is using the worker it waits up to `--batch-max-delay-us` for their
//! jobs; a lone request never waits. Each Explain has at most two jobs queued at a time (one
//! running, its next one prepared meanwhile: [`Caller::submit`]), so concurrent Explains take
//! turns run by run whatever their step counts.
//!
//! A panic on the thread (a bug: no input should cause one) is caught: the worker is failed
//! for good with the panic's message ([`Worker::failure`]), the jobs of the run that panicked
//! and every job queued or sent after it get [`ModelError::Failed`], and the thread ends (the
//! session may be half-way through a run, so it is not trusted again). The server reports
//! the model FAILED ([`Worker::failed`] tells it when).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use ort::memory::MemoryInfo;
use ort::session::{IoBinding, RunOptions, Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::sync::{oneshot, watch};

use super::batch::{self, Batching, Merge};
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
    /// Requests using the worker now ([`Caller`]s alive): the batcher waits for more jobs
    /// only when there is more than one.
    callers: Arc<AtomicUsize>,
    /// Why the thread stopped serving for good (it panicked), once it has.
    failure: watch::Receiver<Option<String>>,
}

/// The workers of one server (or command), so that it can end their runs before it exits: a
/// process that exits while a run is in progress tears ONNX Runtime down under it.
#[derive(Clone, Default)]
pub struct Workers {
    runs: Arc<Mutex<Vec<Weak<Runs>>>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").finish_non_exhaustive()
    }
}

impl Workers {
    /// Stops every worker: no run starts any more (their jobs get [`ModelError::WorkerGone`]),
    /// the runs in progress are terminated through their run options, and this waits until
    /// they have ended, at most `timeout`. Returns how many were still running then. Blocks.
    pub fn stop(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let runs: Vec<Arc<Runs>> = self
            .runs
            .lock()
            .expect("no panics while held")
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for runs in &runs {
            runs.stop();
        }
        runs.iter().filter(|runs| !runs.wait_idle(deadline)).count()
    }

    fn add(&self, runs: &Arc<Runs>) {
        let mut all = self.runs.lock().expect("no panics while held");
        all.retain(|r| r.strong_count() > 0);
        all.push(Arc::downgrade(runs));
    }
}

/// One worker's runs as [`Workers::stop`] sees them.
struct Runs {
    /// Passed to every run: terminating them ends the run in progress.
    options: RunOptions,
    /// Whether a run is in progress; false for good once stopping.
    running: Mutex<bool>,
    stopping: AtomicBool,
    idle: Condvar,
}

impl Runs {
    fn new() -> ort::Result<Self> {
        Ok(Runs {
            options: RunOptions::new()?,
            running: Mutex::new(false),
            stopping: AtomicBool::new(false),
            idle: Condvar::new(),
        })
    }

    /// Marks a run as started, unless the worker is stopping (then None: do not run).
    fn begin(&self) -> Option<RunGuard<'_>> {
        let mut running = self.running.lock().expect("no panics while held");
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        *running = true;
        Some(RunGuard(self))
    }

    fn stop(&self) {
        // Under the lock: a run either began before (and is terminated) or will not begin.
        let _running = self.running.lock().expect("no panics while held");
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.options.terminate() {
            tracing::warn!(error = %e, "could not terminate a model run");
        }
    }

    /// Waits until no run is in progress or `deadline` passes; true if none is.
    fn wait_idle(&self, deadline: Instant) -> bool {
        let running = self.running.lock().expect("no panics while held");
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (running, _) = self
            .idle
            .wait_timeout_while(running, timeout, |running| *running)
            .expect("no panics while held");
        !*running
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// A run in progress; its end wakes [`Runs::wait_idle`].
struct RunGuard<'a>(&'a Runs);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().expect("no panics while held") = false;
        self.0.idle.notify_all();
    }
}

/// How a worker runs its session.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    /// How its jobs may share runs (with batching on).
    pub merge: Merge,
    pub batching: Batching,
    /// Run through ONNX Runtime I/O binding, keeping these inputs bound across runs while
    /// they are unchanged (see `Binding`; Explain's step workers on a CUDA device keep their
    /// paths bound).
    pub keep_bound: Option<&'static [&'static str]>,
}

/// One request's use of a worker, from its first run to its last. While it lives the batcher
/// counts the request as active, so it may wait (briefly) for its next job to merge it.
pub struct Caller {
    worker: Worker,
}

impl Worker {
    /// Moves `session` onto a new thread named after the model, one of `workers`.
    pub fn spawn(
        model: &str,
        session: Session,
        options: WorkerOptions,
        workers: &Workers,
    ) -> std::io::Result<Self> {
        let WorkerOptions {
            merge,
            batching,
            keep_bound,
        } = options;
        let binding = match keep_bound {
            Some(kept) => Some(Binding::new(&session, kept).map_err(std::io::Error::other)?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let queue = tx.downgrade();
        crate::telemetry::watch_queue(model, move || {
            queue
                .upgrade()
                .map(|tx: mpsc::Sender<Job>| tx.max_capacity() - tx.capacity())
        });
        let callers = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(Runs::new().map_err(std::io::Error::other)?);
        workers.add(&runs);
        let (failed, failure) = watch::channel(None);
        let thread = Thread {
            failed,
            model: model.to_string(),
            session,
            runs,
            rx,
            merge: if batching.enabled() {
                merge
            } else {
                Merge::Off
            },
            batching,
            callers: callers.clone(),
            binding,
        };
        std::thread::Builder::new()
            .name(format!("model-{model}"))
            .spawn(move || thread.serve())?;
        Ok(Self {
            model: model.to_string(),
            tx,
            callers,
            failure,
        })
    }

    /// Why the worker stopped serving for good (its thread panicked); None while it serves.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Resolves when the worker fails, to why; to None if its thread ends without failing
    /// (every handle to the worker was dropped). Holds no handle itself, so that waiting
    /// does not keep the thread alive.
    pub fn failed(&self) -> impl std::future::Future<Output = Option<String>> + Send + 'static {
        let mut failure = self.failure.clone();
        async move {
            let failed = failure.wait_for(Option::is_some).await;
            failed.ok().and_then(|reason| reason.clone())
        }
    }

    /// Starts a request's use of the worker (see [`Caller`]).
    pub fn caller(&self) -> Caller {
        self.callers.fetch_add(1, Ordering::SeqCst);
        Caller {
            worker: self.clone(),
        }
    }

    /// Runs the session on `inputs`, returning the named `outputs` in that order: a request
    /// of one run.
    pub async fn run(&self, inputs: Vec<(String, TensorData)>, outputs: Vec<String>) -> Reply {
        self.caller().run(inputs, outputs).await
    }

    /// The blocking form of [`Worker::run`], for callers outside an async runtime.
    pub fn run_blocking(&self, inputs: Vec<(String, TensorData)>, outputs: Vec<String>) -> Reply {
        let _caller = self.caller();
        let (job, answer) = Job::new(inputs, outputs);
        self.tx.blocking_send(job).map_err(|_| self.gone())?;
        answer.blocking_recv().map_err(|_| self.gone())?
    }

    /// The error of a job the thread did not answer: it failed, or it is stopping.
    fn gone(&self) -> ModelError {
        gone(&self.model, &self.failure)
    }
}

fn gone(model: &str, failure: &watch::Receiver<Option<String>>) -> ModelError {
    match failure.borrow().clone() {
        Some(reason) => ModelError::Failed {
            model: model.to_string(),
            reason,
        },
        None => ModelError::WorkerGone {
            model: model.to_string(),
        },
    }
}

impl Caller {
    /// Like [`Worker::run`], as one run of this request.
    pub async fn run(&self, inputs: Vec<(String, TensorData)>, outputs: Vec<String>) -> Reply {
        self.submit(inputs, outputs).await?.answer().await
    }

    /// Queues a run and returns without waiting for it, so that the caller can prepare its
    /// next run while this one computes.
    pub async fn submit(
        &self,
        inputs: Vec<(String, TensorData)>,
        outputs: Vec<String>,
    ) -> Result<Submitted, ModelError> {
        let worker = &self.worker;
        let (job, answer) = Job::new(inputs, outputs);
        worker.tx.send(job).await.map_err(|_| worker.gone())?;
        Ok(Submitted {
            answer,
            model: worker.model.clone(),
            failure: worker.failure.clone(),
        })
    }
}

/// A run queued by [`Caller::submit`].
pub struct Submitted {
    answer: oneshot::Receiver<Reply>,
    model: String,
    failure: watch::Receiver<Option<String>>,
}

impl Submitted {
    /// The run's outputs, once it has run.
    pub async fn answer(self) -> Reply {
        let Self {
            answer,
            model,
            mut failure,
        } = self;
        match answer.await {
            Ok(reply) => reply,
            Err(_) => {
                // Dropped unanswered: its run panicked, and the thread records why as soon as
                // the panic has unwound (a stopping worker answers its jobs instead).
                let recorded = failure.wait_for(Option::is_some);
                let _ = tokio::time::timeout(Duration::from_secs(1), recorded).await;
                Err(gone(&model, &failure))
            }
        }
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.worker.callers.fetch_sub(1, Ordering::SeqCst);
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

/// The worker thread's state.
struct Thread {
    /// Set to the reason when the thread panics.
    failed: watch::Sender<Option<String>>,
    model: String,
    session: Session,
    runs: Arc<Runs>,
    rx: mpsc::Receiver<Job>,
    /// [`Merge::Off`] when batching is off.
    merge: Merge,
    batching: Batching,
    callers: Arc<AtomicUsize>,
    /// Runs through I/O binding, when on.
    binding: Option<Binding>,
}

impl Thread {
    fn serve(mut self) {
        // NOTE: a current-thread runtime only to wait on the channel with a timeout (the
        // batcher's max delay); ONNX Runtime itself runs on this thread, never on tokio's.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok();
        let mut next: Option<Job> = None;
        loop {
            let first = match next.take() {
                Some(job) => job,
                None => match self.rx.blocking_recv() {
                    Some(job) => job,
                    None => break,
                },
            };
            if first.reply.is_closed() {
                // The caller gave up (cancelled or timed out) while the job waited.
                continue;
            }
            let mut group = vec![first];
            if self.merge != Merge::Off && self.merge.mergeable(&group[0].inputs) {
                next = self.gather(&mut group, timer.as_ref());
            }
            // NOTE: the group's reply senders are dropped while the panic unwinds, before the
            // reason is known here: their callers wait (briefly) for it ([`Submitted::answer`]).
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.execute(group)));
            if let Err(panic) = ran {
                let reason = match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
                    (Some(text), _) => format!("its worker thread panicked: {text}"),
                    (_, Some(text)) => format!("its worker thread panicked: {text}"),
                    _ => "its worker thread panicked".to_string(),
                };
                tracing::error!(model = %self.model, %reason, "model worker failed; its model is out of service");
                self.failed.send_replace(Some(reason));
                // Every job queued or sent from now on is refused with the reason.
                self.rx.close();
                drop(next.take());
                while self.rx.try_recv().is_ok() {}
                return;
            }
        }
        tracing::debug!(model = %self.model, "model worker stopped");
    }

    /// Adds to `group` the jobs that can share its run: those queued, and while other
    /// requests are active, those arriving within the max delay. Returns the job that ended
    /// the group (too many rows, or not compatible): it goes first in the next run.
    fn gather(
        &mut self,
        group: &mut Vec<Job>,
        timer: Option<&tokio::runtime::Runtime>,
    ) -> Option<Job> {
        let merge = self.merge;
        let mut rows = merge.rows(&group[0].inputs);
        let deadline = Instant::now() + self.batching.max_delay;
        while rows < self.batching.max_rows {
            let job = match self.rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {
                    // Every active request already has its job here: nobody else is coming.
                    if group.len() >= self.callers.load(Ordering::SeqCst) {
                        return None;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    let timer = timer.filter(|_| !left.is_zero())?;
                    // The timeout is made inside the runtime: its timer needs the context.
                    let rx = &mut self.rx;
                    match timer.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                        Ok(Some(job)) => job,
                        Ok(None) | Err(_) => return None,
                    }
                }
            };
            if job.reply.is_closed() {
                continue;
            }
            let head = &group[0];
            let job_rows = merge.rows(&job.inputs);
            let fits = rows + job_rows <= self.batching.max_rows;
            if !fits
                || !merge.compatible((&head.inputs, &head.outputs), (&job.inputs, &job.outputs))
            {
                return Some(job);
            }
            rows += job_rows;
            group.push(job);
        }
        None
    }

    /// Runs `group` as one ONNX Runtime run and answers each job with its share.
    fn execute(&mut self, mut group: Vec<Job>) {
        if group.len() == 1 {
            let job = group.pop().expect("one job");
            let _entered = job.span.enter();
            let rows = self.merge.rows(&job.inputs);
            let _run = tracing::info_span!(
                "ort.run",
                worker = %self.model,
                batch.jobs = 1i64,
                batch.rows = rows as i64
            )
            .entered();
            crate::telemetry::record_batch(&self.model, 1, rows);
            let result = self.run(job.inputs, &job.outputs);
            let _ = job.reply.send(result);
            return;
        }
        let rows: usize = group.iter().map(|j| self.merge.rows(&j.inputs)).sum();
        let head_span = group[0].span.clone();
        let _entered = head_span.enter();
        let run_span = tracing::info_span!(
            "ort.run",
            worker = %self.model,
            batch.jobs = group.len() as i64,
            batch.rows = rows as i64
        );
        for job in &group[1..] {
            run_span.follows_from(&job.span);
        }
        let _run = run_span.entered();
        crate::telemetry::record_batch(&self.model, group.len(), rows);
        let parts: Vec<&[(String, TensorData)]> =
            group.iter().map(|j| j.inputs.as_slice()).collect();
        let inputs = self.merge.merge(&parts);
        let outputs = group[0].outputs.clone();
        let split = self
            .run(inputs, &outputs)
            .map(|merged| self.merge.split(&parts, &outputs, merged));
        match split {
            Ok(Some(answers)) => {
                for (job, answer) in group.into_iter().zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Ok(None) => {
                // The outputs' first axis was not the jobs' batch: this model does not batch
                // as its declared shapes said. Correct answers first: run each job alone.
                tracing::warn!(worker = %self.model, "merged outputs do not split by batch; running the jobs one by one");
                self.run_alone(group);
            }
            Err(error) if group.len() > 1 && !self.runs.stopping() => {
                // One job's values may fail the run (an index out of range, say): each job
                // alone gets its own answer or its own error, not its neighbours'.
                tracing::warn!(worker = %self.model, %error, jobs = group.len(), "merged run failed; running its jobs one by one");
                self.run_alone(group);
            }
            Err(error) => {
                for job in group {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }

    fn run_alone(&mut self, group: Vec<Job>) {
        for job in group {
            let result = self.run(job.inputs, &job.outputs);
            let _ = job.reply.send(result);
        }
    }

    fn run(&mut self, inputs: Vec<(String, TensorData)>, outputs: &[String]) -> Reply {
        #[cfg(test)]
        panic_if_asked(&self.model);
        let runs = self.runs.clone();
        let Some(_running) = runs.begin() else {
            return Err(ModelError::WorkerGone {
                model: self.model.clone(),
            });
        };
        let options = &runs.options;
        let result = match &mut self.binding {
            Some(binding) => binding.run(&mut self.session, options, inputs, outputs),
            None => run(&mut self.session, options, inputs, outputs),
        };
        result.map_err(|reason| ModelError::Runtime {
            model: self.model.clone(),
            reason,
        })
    }
}

/// A worker's ONNX Runtime I/O binding. The inputs in `kept` stay bound while a run's are the
/// previous run's (an Explain's batches all share its path, and a merged run's set of paths
/// repeats while the same requests run together): ONNX Runtime copies a bound value to the
/// session's device once, when it is bound, so on CUDA those inputs stay in device memory
/// across runs and only the others travel. The outputs are bound to host memory, so each
/// comes back in one copy. On the CPU this is the same arithmetic as [`run`] (the step-model
/// tests check it).
///
/// NOTE: the CUDA side of this (the copy at bind time, outputs fetched from the device) is
/// ONNX Runtime's documented IoBinding behaviour; `scripts/gpu_check.sh` exercises it where a
/// GPU is at hand.
struct Binding {
    io: IoBinding,
    /// The names of the inputs kept bound while unchanged.
    kept: &'static [&'static str],
    /// Host copies of the kept inputs as bound now (in `kept`'s order), to compare the next
    /// run's with.
    bound: Option<Vec<TensorData>>,
}

impl Binding {
    fn new(session: &Session, kept: &'static [&'static str]) -> Result<Self, String> {
        Ok(Self {
            io: session.create_binding().map_err(|e| e.to_string())?,
            kept,
            bound: None,
        })
    }

    fn run(
        &mut self,
        session: &mut Session,
        options: &RunOptions,
        inputs: Vec<(String, TensorData)>,
        outputs: &[String],
    ) -> Result<Vec<TensorData>, String> {
        let unchanged = self.bound.as_ref().is_some_and(|bound| {
            self.kept
                .iter()
                .zip(bound)
                .all(|(name, old)| batch::get(&inputs, name) == Some(old))
        });
        // Forgotten first: a failure below must not leave inputs believed bound.
        let previous = if unchanged { self.bound.take() } else { None };
        self.bound = None;
        let mut kept: Vec<Option<TensorData>> = vec![None; self.kept.len()];
        for (name, tensor) in inputs {
            let slot = self.kept.iter().position(|k| *k == name);
            if unchanged && slot.is_some() {
                continue;
            }
            self.bind(&name, &tensor)?;
            if let Some(slot) = slot {
                kept[slot] = Some(tensor);
            }
        }
        self.bound = previous.or_else(|| kept.into_iter().collect());
        // NOTE: rebound every run: a bound output keeps the previous run's buffer, whose
        // shape is wrong as soon as the rows change.
        self.io.clear_outputs();
        let host = MemoryInfo::default();
        for name in outputs {
            self.io
                .bind_output_to_device(name.as_str(), &host)
                .map_err(|e| e.to_string())?;
        }
        // Inputs bound to another device are copied asynchronously: done before the run.
        self.io.synchronize_inputs().map_err(|e| e.to_string())?;
        let result = session
            .run_binding_with_options(&self.io, options)
            .map_err(|e| e.to_string())?;
        read_outputs(&result, outputs)
    }

    fn bind(&mut self, name: &str, tensor: &TensorData) -> Result<(), String> {
        let shape = tensor.shape.clone();
        match &tensor.values {
            Values::F32(data) => {
                let value = Tensor::from_array((shape, data.clone())).map_err(|e| e.to_string())?;
                self.io.bind_input(name, &value)
            }
            Values::I64(data) => {
                let value = Tensor::from_array((shape, data.clone())).map_err(|e| e.to_string())?;
                self.io.bind_input(name, &value)
            }
        }
        .map_err(|e| e.to_string())
    }
}

fn run(
    session: &mut Session,
    options: &RunOptions,
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
    let result = session
        .run_with_options(values, options)
        .map_err(|e| e.to_string())?;
    read_outputs(&result, outputs)
}

/// The named `outputs` of a run, copied out of ONNX Runtime.
fn read_outputs(
    result: &ort::session::SessionOutputs<'_>,
    outputs: &[String],
) -> Result<Vec<TensorData>, String> {
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

/// Worker names whose next run panics: how the unit tests make a worker thread panic (no
/// input can: that would be a bug to fix, not a case to serve). Compiled into tests only.
#[cfg(test)]
static PANIC_ON_NEXT_RUN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Makes the next run of worker `model` panic (unit tests only).
#[cfg(test)]
pub(crate) fn panic_next_run(model: &str) {
    PANIC_ON_NEXT_RUN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(model.to_string());
}

#[cfg(test)]
fn panic_if_asked(model: &str) {
    let mut asked = PANIC_ON_NEXT_RUN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = asked.iter().position(|m| m == model) {
        asked.remove(i);
        drop(asked);
        panic!("injected by a test into worker {model}");
    }
}
