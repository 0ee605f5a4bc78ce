//! The gRPC server: our Explainer service and the standard health service on one port.
//!
//! Start-up order: ONNX Runtime is loaded first (a missing library stops the server with a
//! clear error), then the port opens with health NOT_SERVING while models load and warm up on
//! a blocking thread, then health flips to SERVING.

mod explainer;
mod status;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use explainer::{model_info, ExplainerService};

use crate::config::{ModelSource, ServeArgs};
use crate::engine::{Engine, EngineLimits};
use crate::model::{LoadOptions, Repository};
use crate::proto::integrad::v1::explainer_server::ExplainerServer;
use crate::runtime::{self, RuntimeOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("cannot read the model repository {path}: {source}")]
    Repository {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    DefaultModel(String),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("model loading task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Loads the models of `source` (blocking: call off the async threads).
pub fn load_repository(
    source: &ModelSource,
    runtime: &RuntimeOptions,
    load: &LoadOptions,
    default_model: Option<&str>,
) -> Result<Repository, ServeError> {
    let env = runtime::environment(runtime)?;
    // The server's device is proved once, before any model: CUDA that cannot run stops the
    // start here with the cause; `auto` settles on CUDA or the CPU for every model.
    let mut load = load.clone();
    load.device = crate::device::resolve(load.device, &env, runtime::loaded_library())?.into();
    tracing::info!(device = %load.device, "sessions run on");
    let load = &load;
    let mut repository = match source {
        ModelSource::Repository(dir) => {
            Repository::load_dir(dir, &env, load).map_err(|source| ServeError::Repository {
                path: dir.display().to_string(),
                source,
            })?
        }
        ModelSource::File(file) => Repository::load_file(file, &env, load),
    };
    if let Some(name) = default_model {
        repository
            .set_default(name)
            .map_err(ServeError::DefaultModel)?;
    }
    Ok(repository)
}

/// Accepted connections with Nagle's algorithm off: a reply written in pieces would otherwise
/// wait for the client's delayed ACK (about 40 ms on Linux) before its last piece leaves.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let runtime_options = args.runtime.runtime_options();
    // Fetching ONNX Runtime on a first run takes seconds: not on the async threads.
    let options = runtime_options.clone();
    tokio::task::spawn_blocking(move || runtime::environment(&options)).await??;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_not_serving::<ExplainerServer<ExplainerService>>()
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let service = ExplainerService::default();

    let loader = {
        let service = service.clone();
        let args = args.clone();
        tokio::task::spawn_blocking(move || {
            let repository = load_repository(
                &args.models.source(),
                &runtime_options,
                &args.runtime.load_options(),
                args.default_model.as_deref(),
            )?;
            let ready = repository.len() - repository.failures().count();
            tracing::info!(
                ready,
                failed = repository.failures().count(),
                "models loaded"
            );
            let engine = Engine::new(
                Arc::new(repository),
                EngineLimits {
                    explain: crate::explain::ExplainLimits {
                        max_steps: args.max_steps,
                        ..Default::default()
                    },
                    decode: args.decode_limits(),
                },
            );
            service.set_engine(Arc::new(engine));
            Ok::<usize, ServeError>(ready)
        })
    };
    let health_flip = async move {
        match loader.await {
            Ok(Ok(ready)) if ready > 0 => {
                reporter
                    .set_serving::<ExplainerServer<ExplainerService>>()
                    .await;
                reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                tracing::info!("SERVING");
                Ok(())
            }
            Ok(Ok(_)) => {
                tracing::error!("no model loaded; health stays NOT_SERVING");
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(ServeError::Join(e)),
        }
    };

    let explainer = ExplainerServer::new(service)
        .max_decoding_message_size(args.max_message_bytes)
        .max_encoding_message_size(args.max_message_bytes);
    tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(explainer)
        .serve_with_incoming_shutdown(incoming(listener), async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_rx => {}
            }
        });
    let server = tokio::spawn(server);
    if let Err(e) = health_flip.await {
        // A repository that cannot be read at all is fatal; stop the server with the reason.
        let _ = stop_tx.send(());
        let _ = server.await;
        return Err(e);
    }
    server.await??;
    tracing::info!("stopped");
    Ok(())
}
