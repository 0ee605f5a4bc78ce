//! The gRPC server on one port: our Explainer service, the Open Inference Protocol
//! (`inference.GRPCInferenceService`, [`oip`]), the standard health service, and gRPC reflection
//! (v1 and v1alpha) describing all of them.
//!
//! Start-up order: ONNX Runtime is loaded first (a missing library stops the server with a
//! clear error), then the port opens with health NOT_SERVING while models load and warm up on
//! a blocking thread, then health flips to SERVING.
//!
//! Every service shares the port, the message-size limit, TLS (`tls`) and the bearer-token
//! layer (`auth`, which leaves only health open). Shutdown (`shutdown`) drains in-flight
//! Explains for a grace period, then cancels them; connections close by lingering (`linger`),
//! so a client still reading gets the end of its stream. With `--health-listen`, a second port
//! serves the same health status alone, in plaintext and without a token (`health`).

mod accept;
pub mod auth;
mod explainer;
mod health;
mod http;
pub mod limits;
mod linger;
mod oip;
pub mod shutdown;
mod status;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use explainer::ExplainerService;
pub use oip::InferenceService;

use crate::config::{ModelSource, ServeArgs};
use crate::engine::{Engine, EngineLimits};
use crate::explain::Explainers;
use crate::model::{LoadOptions, Repository};
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
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
    #[error("--models {0}")]
    NotARepository(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Predictor(String),
    #[error("cannot listen on {address} (--http-listen): {source}")]
    HttpListen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {address} (--health-listen): {source}")]
    HealthListen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("model loading task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Loads the models of `source` and builds the gradient models of the explainable ones
/// (blocking: call off the async threads).
pub fn load_repository(
    source: &ModelSource,
    runtime: &RuntimeOptions,
    load: &LoadOptions,
    default_model: Option<&str>,
    explained: crate::explain::gradients::Explained<'_>,
) -> Result<(Repository, Explainers), ServeError> {
    if let ModelSource::Repository(dir) = source {
        crate::model::check_dir(dir).map_err(ServeError::NotARepository)?;
    }
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
        ModelSource::File(file, tokenizer) => {
            Repository::load_file(file, tokenizer.as_deref(), &env, load)
        }
    };
    if let Some(name) = default_model {
        repository
            .set_default(name)
            .map_err(ServeError::DefaultModel)?;
    }
    let explainers = crate::explain::gradients::prepare(&mut repository, &env, load, explained);
    Ok((repository, explainers))
}

/// Logs what integrad makes of the arguments KServe's controller appends.
fn note_kserve_arguments(args: &ServeArgs) {
    let kserve = &args.kserve;
    if let (Some(port), Some(listen)) = (kserve.http_port, args.http_listen) {
        if port != listen.port() {
            tracing::warn!(http_port = port, http_listen = %listen, "--http_port and --http-listen differ; the HTTP API listens on --http-listen");
        }
    }
    if let Some(workers) = kserve.workers {
        tracing::info!(workers, "--workers: integrad is one process; set its concurrency with --max-concurrent-explains and --intra-threads");
    }
    if let Some(name) = &kserve.model_name {
        tracing::info!(model_name = %name, "--model_name: HTTP requests for this name go to the default model unless a model has it");
    }
}

/// Health per model: the gRPC health service answers each model's name with SERVING, or
/// NOT_SERVING for a model that failed to load. A model whose worker fails later is turned
/// NOT_SERVING then, and when no model serves any more, so is the server (the empty name,
/// the Explainer service, and so the HTTP API's `/v2/health/ready`).
async fn watch_models(engine: &Arc<Engine>, reporter: &tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    for (name, entry) in engine.repository().iter() {
        let status = match entry.failure() {
            None => ServingStatus::Serving,
            Some(_) => ServingStatus::NotServing,
        };
        reporter.set_service_status(name, status).await;
        let crate::model::ModelEntry::Ready(model) = entry else {
            continue;
        };
        let (name, failed) = (name.clone(), model.worker.failed());
        // Weak: a stopped server's models are dropped, which ends this wait.
        let (engine, reporter) = (Arc::downgrade(engine), reporter.clone());
        tokio::spawn(async move {
            let Some(reason) = failed.await else {
                return;
            };
            tracing::error!(model = %name, %reason, "model is out of service; health says NOT_SERVING for it");
            reporter
                .set_service_status(&name, ServingStatus::NotServing)
                .await;
            let serving = engine.upgrade().is_some_and(|engine| {
                engine
                    .repository()
                    .iter()
                    .any(|(_, entry)| entry.failure().is_none())
            });
            if !serving {
                tracing::error!("no model serves any more; health says NOT_SERVING");
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                reporter
                    .set_not_serving::<ExplainerServer<ExplainerService>>()
                    .await;
            }
        });
    }
}

/// How long a stopping server waits for the model runs it terminated to end (ONNX Runtime
/// checks its terminate flag between kernels, so one kernel's time).
const RUNS_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves on `listener` until `shutdown` resolves, then drains in-flight Explains for
/// `--shutdown-grace` seconds, cancels those still running, and returns.
pub async fn serve(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Everything a misconfiguration can break is checked before anything slow starts.
    let token = args.security.auth_token()?;
    let token_check = auth::TokenCheck::new(token.as_deref());
    let tls = tls::acceptor(&args.security)?;
    let health_listener = match args.health_listen {
        Some(address) => Some(health::bind(address).await?),
        None => None,
    };
    let http_listener = match args.http_address() {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|source| ServeError::HttpListen { address, source })?,
        ),
        None => None,
    };
    note_kserve_arguments(&args);
    let predictor = crate::predictor::Predictor::from_args(&args.predictor, &args.kserve)
        .map_err(ServeError::Predictor)?
        .map(Arc::new);
    if let Some(predictor) = &predictor {
        tracing::info!(
            predictor = predictor.url(),
            tolerance = %args.predictor.consistency_tolerance,
            require_consistent = args.predictor.require_consistent,
            "every Explain is checked against the predictor"
        );
    }
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
    let gate = Arc::new(limits::ExplainGate::new(
        args.max_concurrent_explains,
        args.max_queued_explains,
    ));
    let (control, shutdown_state) = shutdown::channel();
    let service = ExplainerService::new(gate.clone(), shutdown_state, args.shutdown_grace);
    let http_service = service.clone();
    let inference = InferenceService::default();

    let load_options = args.load_options();
    let workers = load_options.workers.clone();
    let loader = {
        let service = service.clone();
        let inference = inference.clone();
        let args = args.clone();
        let predictor = predictor.clone();
        tokio::task::spawn_blocking(move || {
            let (repository, explainers) = load_repository(
                &args.models.source(),
                &runtime_options,
                &load_options,
                args.default_model.as_deref(),
                crate::explain::gradients::Explained::All,
            )?;
            let ready = repository.len() - repository.failures().count();
            tracing::info!(
                ready,
                failed = repository.failures().count(),
                "models loaded"
            );
            let engine = Engine::new(
                Arc::new(repository),
                explainers,
                EngineLimits {
                    explain: crate::explain::ExplainLimits {
                        max_steps: args.max_steps,
                        max_instances: args.max_instances,
                        ..Default::default()
                    },
                    decode: args.decode_limits(),
                },
            )
            .with_predictor(predictor);
            let engine = Arc::new(engine);
            service.set_engine(engine.clone());
            inference.set_engine(engine.clone());
            Ok::<(usize, Arc<Engine>), ServeError>((ready, engine))
        })
    };
    let health_flip = {
        let reporter = reporter.clone();
        async move {
            match loader.await {
                Ok(Ok((ready, engine))) if ready > 0 => {
                    watch_models(&engine, &reporter).await;
                    reporter
                        .set_serving::<ExplainerServer<ExplainerService>>()
                        .await;
                    reporter
                        .set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                    tracing::info!("SERVING");
                    Ok(())
                }
                Ok(Ok((_, engine))) => {
                    watch_models(&engine, &reporter).await;
                    tracing::error!("no model loaded; health stays NOT_SERVING");
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(ServeError::Join(e)),
            }
        }
    };

    let max = args.max_message_bytes;
    let explainer = ExplainerServer::new(service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let inference = GrpcInferenceServiceServer::new(inference)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let descriptors = [
        crate::proto::INTEGRAD_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ];
    let reflection_v1 = descriptors
        .iter()
        .fold(tonic_reflection::server::Builder::configure(), |b, set| {
            b.register_encoded_file_descriptor_set(set)
        })
        .build_v1()?;
    let reflection_v1alpha = descriptors
        .iter()
        .fold(tonic_reflection::server::Builder::configure(), |b, set| {
            b.register_encoded_file_descriptor_set(set)
        })
        .build_v1alpha()?;
    // NOTE: the health-only port keeps tonic's default 4 MiB limit: it is open to anyone
    // without a token, and a health check is a few bytes.
    let health_only = health.clone();
    let health = health
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    tracing::info!(
        address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        mutual_tls = args.security.tls_client_ca.is_some(),
        auth = token.is_some(),
        health_listen = ?args.health_listen,
        "listening"
    );
    let builder = tonic::transport::Server::builder();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let closes = TaskTracker::new();
    let grace = std::time::Duration::from_secs(args.shutdown_grace);
    let control = Arc::new(control);
    match (&http_listener, args.web) {
        (Some(listener), true) => {
            if let Ok(address) = listener.local_addr() {
                let url = http::web::viewer_url(address, tls.is_some());
                tracing::info!("web viewer: open {url} in a browser");
            }
        }
        _ => tracing::info!(
            "web viewer: off; `integrad serve --web` serves it (on --http-listen, else on http://{}/)",
            crate::config::WEB_HTTP_LISTEN
        ),
    }
    let http_port = http_listener.map(|listener| {
        let api = http::HttpApi::new(
            http_service,
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
            token_check.clone(),
            args.kserve.model_name.clone(),
            max,
            args.web,
        );
        http::HttpPort::start(
            listener,
            tls.clone(),
            closes.clone(),
            api.router(),
            control.subscribe(),
        )
    });
    let stopping = {
        let control = control.clone();
        let gate = gate.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_rx => {}
            }
            // Probes see NOT_SERVING at once, so traffic moves elsewhere while we drain.
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            reporter
                .set_not_serving::<ExplainerServer<ExplainerService>>()
                .await;
            control.drain();
            tracing::info!(
                running_explains = gate.running(),
                grace_s = grace.as_secs(),
                "shutting down: no new connections; running Explains may finish"
            );
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if gate.running() > 0 {
                    tracing::warn!(
                        running_explains = gate.running(),
                        "grace period over: cancelling the Explains still running"
                    );
                }
                control.cancel();
            });
        }
    };
    // NOTE: the layers wrap the whole router, so services added below (or later) are behind
    // the token unless auth::OPEN_SERVICES lists them. Telemetry is outermost, so refused
    // calls (UNAUTHENTICATED, RESOURCE_EXHAUSTED) are counted and traced too.
    let server = builder
        .layer(crate::telemetry::RpcLayer)
        .layer(auth::AuthLayer::new(token_check))
        .add_service(health)
        .add_service(explainer)
        .add_service(inference)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(accept::incoming(listener, closes.clone(), tls), stopping);
    let mut server = tokio::spawn(server);
    let health_port =
        health_listener.map(|listener| health::HealthPort::start(listener, health_only));
    let served = async {
        if let Err(e) = health_flip.await {
            // A repository that cannot be read at all is fatal; stop the server with the reason.
            let _ = stop_tx.send(());
            let _ = server.await;
            return Err(e);
        }
        let phases = control.subscribe();
        let cancelled = phases.cancelling();
        tokio::select! {
            result = &mut server => result??,
            _ = cancelled => {
                // Cancelled Explains end their streams within one batch; a connection that still
                // lingers after that must not keep the process alive.
                let linger = std::time::Duration::from_secs(5);
                match tokio::time::timeout(linger, &mut server).await {
                    Ok(result) => result??,
                    Err(_) => {
                        tracing::warn!("connections still open {}s after cancelling; stopping anyway", linger.as_secs());
                        server.abort();
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    // The last connections' clients may still be reading what they were sent.
    closes.close();
    let _ = tokio::time::timeout(linger::LINGER, closes.wait()).await;
    // A cancelled Explain's last gradient run may still be in progress: ended here, so that
    // the process does not exit (and unload ONNX Runtime) under it.
    let still_running = tokio::task::spawn_blocking(move || workers.stop(RUNS_STOP_TIMEOUT))
        .await
        .unwrap_or(0);
    if still_running > 0 {
        tracing::warn!(
            models = still_running,
            "model runs still in progress {}s after terminating them",
            RUNS_STOP_TIMEOUT.as_secs()
        );
    }
    if let Some(port) = http_port {
        port.stop(linger::LINGER).await;
    }
    // Only now: probes read NOT_SERVING on the health port for the whole drain.
    if let Some(port) = health_port {
        port.stop().await;
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
