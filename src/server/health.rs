//! The health-only port (`--health-listen`): grpc.health.v1.Health and nothing else, in
//! plaintext and without a token, for probes that cannot pass the main port's TLS, mutual TLS
//! or bearer token (the kubelet's gRPC probe speaks plaintext and carries no certificate).
//!
//! It answers from the main port's reporter, so it says NOT_SERVING while models load and
//! while the server drains. It opens with the main port and closes only after the main port
//! has closed, so that probes read NOT_SERVING through the drain instead of a refused
//! connection.

use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::task::TaskTracker;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::pb::health_server::{Health, HealthServer};

use super::ServeError;

/// Binds the health port; a failure is a start-up error naming the flag.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::HealthListen { address, source })
}

/// The health port, serving until [`HealthPort::stop`].
pub struct HealthPort {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl HealthPort {
    pub fn start<H: Health>(listener: TcpListener, health: HealthServer<H>) -> Self {
        tracing::info!(
            address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "health-only port listening (plaintext, no token)"
        );
        let (stop, stopped) = oneshot::channel::<()>();
        // NOTE: no TLS, no auth layer, no reflection: nothing but health is routed here, so
        // any other service is UNIMPLEMENTED. Telemetry counts probes as on the main port.
        let server = tonic::transport::Server::builder()
            .layer(crate::telemetry::RpcLayer)
            .add_service(health)
            // A probe's close need not be waited for: nothing is lost if it is cut short.
            .serve_with_incoming_shutdown(
                super::accept::incoming(listener, TaskTracker::new(), None),
                async {
                    let _ = stopped.await;
                },
            );
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!("health port stopped: {e}");
            }
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Closes the port. Open calls (a probe's Check, a Watch stream) get a moment to end, then
    /// their connections are dropped: a Watch never ends by itself.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let linger = Duration::from_secs(1);
        if tokio::time::timeout(linger, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for HealthPort {
    /// A `serve` future dropped before it returned must not leave the port open.
    fn drop(&mut self) {
        self.task.abort();
    }
}
