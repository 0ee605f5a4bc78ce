//! Backpressure for Explain: at most `max_concurrent` run at once and `max_queued` wait;
//! beyond that a request fails at once with RESOURCE_EXHAUSTED and a retry hint, so the
//! server never builds an unbounded backlog. A queued request still honours its deadline,
//! its client's cancellation, and shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::shutdown::Shutdown;

/// The retry hint before any Explain has finished.
const FIRST_HINT: Duration = Duration::from_secs(1);
/// Bounds on the retry hint: not so soon that retries hammer us, not so late that clients
/// give up on a server that frees up.
const MIN_HINT: Duration = Duration::from_millis(100);
const MAX_HINT: Duration = Duration::from_secs(60);

/// Admission to Explain, shared by every request.
pub struct ExplainGate {
    /// Running plus waiting: a request without one of these is refused at once.
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    max_concurrent: u32,
    max_queued: u32,
    /// Recent Explain durations (exponential moving average, ms), for the retry hint.
    mean_ms: Arc<AtomicU64>,
}

/// A running Explain's slot; dropping it lets the next one in.
pub struct ExplainSlot {
    _admitted: OwnedSemaphorePermit,
    _running: OwnedSemaphorePermit,
    started: Instant,
    mean_ms: Arc<AtomicU64>,
}

impl Drop for ExplainSlot {
    fn drop(&mut self) {
        let ms = self.started.elapsed().as_millis() as u64;
        // Weight 1/4 for the newest: follows a change of load within a few requests.
        let _ = self
            .mean_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 { ms } else { (3 * mean + ms) / 4 })
            });
    }
}

impl ExplainGate {
    pub fn new(max_concurrent: u32, max_queued: u32) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self {
            admitted: Arc::new(Semaphore::new((max_concurrent + max_queued) as usize)),
            running: Arc::new(Semaphore::new(max_concurrent as usize)),
            max_concurrent,
            max_queued,
            mean_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Explains running now.
    pub fn running(&self) -> usize {
        self.max_concurrent as usize - self.running.available_permits()
    }

    /// Waits for a slot: refuses at once when the queue is full, and gives up when
    /// `deadline` passes or the server starts shutting down.
    pub async fn acquire(
        &self,
        deadline: Option<tokio::time::Instant>,
        shutdown: &Shutdown,
    ) -> Result<ExplainSlot, Status> {
        if shutdown.is_draining() {
            return Err(Status::unavailable(
                "the server is shutting down; send the Explain to another replica",
            ));
        }
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.overloaded())?;
        let wait = self.running.clone().acquire_owned();
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let running = tokio::select! {
            permit = wait => permit.map_err(|_| Status::internal("the Explain gate closed"))?,
            _ = expired => {
                return Err(Status::deadline_exceeded(
                    "the request's deadline passed while it waited for an Explain slot",
                ))
            }
            _ = shutdown.draining() => {
                return Err(Status::unavailable(
                    "the server started shutting down while the Explain waited for a slot",
                ))
            }
        };
        Ok(ExplainSlot {
            _admitted: admitted,
            _running: running,
            started: Instant::now(),
            mean_ms: self.mean_ms.clone(),
        })
    }

    /// RESOURCE_EXHAUSTED with a retry hint: about when a queue place should free up.
    fn overloaded(&self) -> Status {
        let mean = self.mean_ms.load(Ordering::Relaxed);
        let hint = if mean == 0 {
            FIRST_HINT
        } else {
            // The queue drains max_concurrent Explains per mean duration.
            Duration::from_millis(mean / u64::from(self.max_concurrent))
        }
        .clamp(MIN_HINT, MAX_HINT);
        let mut metadata = MetadataMap::new();
        let ms = hint.as_millis().to_string();
        let secs = hint.as_secs_f64().ceil().max(1.0).to_string();
        // grpc-retry-pushback-ms is what gRPC's own retry policies read; retry-after is the
        // HTTP convention that other clients and proxies know.
        metadata.insert("grpc-retry-pushback-ms", ms.parse().expect("ASCII digits"));
        metadata.insert("retry-after", secs.parse().expect("ASCII digits"));
        Status::with_metadata(
            Code::ResourceExhausted,
            format!(
                "too many Explains: {} running and {} queued (--max-concurrent-explains, --max-queued-explains); retry in about {ms} ms",
                self.max_concurrent, self.max_queued
            ),
            metadata,
        )
    }
}
