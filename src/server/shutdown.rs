//! Graceful shutdown in two phases: on SIGTERM the server drains (stops accepting, refuses
//! queued Explains, lets running ones finish); when the grace period is over it cancels
//! what still runs.

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    Draining,
    Cancelling,
}

/// Drives the phases (held by `serve`).
pub struct ShutdownControl {
    phase: watch::Sender<Phase>,
}

/// What requests watch; cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    phase: watch::Receiver<Phase>,
}

pub fn channel() -> (ShutdownControl, Shutdown) {
    let (tx, rx) = watch::channel(Phase::Serving);
    (ShutdownControl { phase: tx }, Shutdown { phase: rx })
}

impl ShutdownControl {
    pub fn drain(&self) {
        self.phase.send_if_modified(|p| advance(p, Phase::Draining));
    }

    /// Another view of the phases, for whoever needs to watch them.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            phase: self.phase.subscribe(),
        }
    }

    pub fn cancel(&self) {
        self.phase
            .send_if_modified(|p| advance(p, Phase::Cancelling));
    }
}

fn advance(phase: &mut Phase, to: Phase) -> bool {
    let moved = *phase < to;
    if moved {
        *phase = to;
    }
    moved
}

impl Shutdown {
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }

    /// Resolves once the server starts shutting down.
    pub async fn draining(&self) {
        self.reached(Phase::Draining).await
    }

    /// Resolves once the grace period is over: running work must stop.
    pub async fn cancelling(&self) {
        self.reached(Phase::Cancelling).await
    }

    async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.clone();
        // An error means the control is gone, i.e. the server has stopped: as good as reached.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }
}
