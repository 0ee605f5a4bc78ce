//! The HTTP/JSON API beside gRPC (`--http-listen`): KServe's V1 protocol, which KServe routes
//! `:predict` and `:explain` of an InferenceService to, plus Open Inference Protocol health
//! probes.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v1/models` | `{"models": [ModelInfo...]}` |
//! | `GET /v1/models/{name}` | `{"name", "ready", ...}`; 503 while not ready |
//! | `POST /v1/models/{name}:predict` | `{"predictions": [...]}` for `{"instances": [...]}` |
//! | `POST /v1/models/{name}:explain` | `{"explanations": [...]}`, or server-sent events |
//! | `POST /v1/models/{name}:evaluate` | `{"evaluation": EvaluateResponse}` for one instance |
//! | `GET /` | `{"status": "alive"}` (KServe's V1 liveness); with `--web`, the page to browsers |
//! | `GET /v2/health/live`, `/v2/health/ready` | 200, or 503 while not ready |
//! | `GET /ui/...` | with `--web`, the web viewer's files ([`web`]) |
//!
//! Every call goes through the same [`ExplainerService`] as gRPC, so the models, limits,
//! admission queue, shutdown drain and errors are the gRPC ones; the bearer token is checked
//! here (probes are open, as on gRPC); TLS is the gRPC port's; telemetry counts each route as
//! an RPC. How instances and parameters map onto requests: [`body`].

mod body;
mod error;
pub mod web;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_stream::{Stream, StreamExt};
use tonic::Request as GrpcRequest;

use super::auth::TokenCheck;
use super::ExplainerService;
use crate::proto::integrad::v1 as pb;
use crate::proto::integrad::v1::explainer_server::Explainer;
use error::HttpError;

/// What the routes share.
pub struct HttpApi {
    service: ExplainerService,
    health: tonic_health::server::HealthService,
    token: TokenCheck,
    /// KServe's `--model_name`: the name KServe routes by, answered by the default model when
    /// no model has that name.
    model_alias: Option<String>,
    /// The largest body read (the gRPC message limit); a larger one gets 413.
    max_body_bytes: usize,
    /// Whether the web viewer is served (`--web`).
    web: bool,
}

impl HttpApi {
    pub fn new(
        service: ExplainerService,
        health: tonic_health::server::HealthService,
        token: TokenCheck,
        model_alias: Option<String>,
        max_body_bytes: usize,
        web: bool,
    ) -> Self {
        Self {
            service,
            health,
            token,
            model_alias,
            max_body_bytes,
            web,
        }
    }

    /// The routes, with the token check and telemetry around them.
    pub fn router(self) -> Router {
        let web = self.web;
        let state = Arc::new(self);
        let router = Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/models/{target}", get(model_status).post(model_verb))
            .route("/v2/health/live", get(live))
            .route("/v2/health/ready", get(ready));
        let router = if web {
            router
                .route("/", get(web::page_or_alive))
                .merge(web::routes())
        } else {
            router.route("/", get(alive))
        };
        router
            .fallback(not_found)
            // The handlers read bodies up to max_body_bytes themselves (a JSON 413 beyond).
            .layer(DefaultBodyLimit::disable())
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                authenticate,
            ))
            .layer(axum::middleware::from_fn(crate::telemetry::http_request))
            .with_state(state)
    }

    /// The model a route names: KServe's model name stands for the default model.
    fn model_name(&self, name: &str) -> String {
        let aliased = self.model_alias.as_deref() == Some(name);
        if aliased && self.service.model_is_missing(name) {
            String::new()
        } else {
            name.to_string()
        }
    }
}

type Api = State<Arc<HttpApi>>;

/// Routes open without a token: the probes, as gRPC's health service is.
const OPEN_ROUTES: &[&str] = &["/", "/v2/health/live", "/v2/health/ready"];

async fn authenticate(State(api): Api, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if OPEN_ROUTES.contains(&path) || (api.web && web::is_open(path)) {
        return next.run(request).await;
    }
    match api.token.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(reason) => HttpError::new(tonic::Code::Unauthenticated, reason).into_response(),
    }
}

/// KServe's V1 liveness answer (what its model servers say at `/`).
async fn alive() -> Json<Value> {
    liveness()
}

fn liveness() -> Json<Value> {
    Json(json!({ "status": "alive" }))
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(api): Api) -> Response {
    let ready = api.serving().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

impl HttpApi {
    /// Whether the server is SERVING (models loaded, not draining), as gRPC health says.
    async fn serving(&self) -> bool {
        use tonic_health::pb::health_server::Health;
        let request = GrpcRequest::new(tonic_health::pb::HealthCheckRequest::default());
        self.health.check(request).await.is_ok_and(|r| {
            r.into_inner().status()
                == tonic_health::pb::health_check_response::ServingStatus::Serving
        })
    }
}

async fn not_found(request: Request) -> HttpError {
    HttpError::new(
        tonic::Code::NotFound,
        format!(
            "no route {} {}; this server answers GET /v1/models, GET /v1/models/NAME, POST /v1/models/NAME:predict, POST /v1/models/NAME:explain, POST /v1/models/NAME:evaluate and GET /v2/health/live|ready",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn list_models(State(api): Api) -> Result<Json<Value>, HttpError> {
    let listed = api
        .service
        .list_models(GrpcRequest::new(pb::ListModelsRequest {}))
        .await?
        .into_inner();
    let models: Vec<Value> = listed.models.iter().map(body::model_info).collect();
    Ok(Json(
        json!({ "models": models, "default_model": listed.default_model }),
    ))
}

async fn model_status(State(api): Api, Path(target): Path<String>) -> Result<Response, HttpError> {
    let info = api.model_info(&api.model_name(&target)).await?;
    let ready = info.state() == pb::ModelState::Ready;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut answer = body::model_info(&info);
    answer["ready"] = json!(ready);
    Ok((status, Json(answer)).into_response())
}

impl HttpApi {
    async fn model_info(&self, name: &str) -> Result<pb::ModelInfo, HttpError> {
        let request = GrpcRequest::new(pb::GetModelRequest {
            model: name.to_string(),
        });
        Ok(self.service.get_model(request).await?.into_inner())
    }
}

/// `POST /v1/models/{name}:predict` and `:explain` (the verb is part of the path's last
/// segment, as KServe writes it).
async fn model_verb(
    State(api): Api,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, HttpError> {
    let Some((name, verb)) = target.rsplit_once(':') else {
        return Err(HttpError::new(
            tonic::Code::NotFound,
            format!("POST /v1/models/{target}: say what to do, as in /v1/models/{target}:predict or :explain"),
        ));
    };
    let name = api.model_name(name);
    let bytes = axum::body::to_bytes(body, api.max_body_bytes)
        .await
        .map_err(|_| {
            HttpError::new(
                tonic::Code::ResourceExhausted,
                format!(
                    "the body is larger than this server takes ({} bytes, --max-message-bytes)",
                    api.max_body_bytes
                ),
            )
            .too_large()
        })?;
    let payload = body::Payload::parse(&bytes)?;
    let info = api.model_info(&name).await?;
    match verb {
        "predict" => predict(&api, &info, payload).await,
        "explain" => {
            let stream = wants_events(&headers);
            explain(&api, &info, payload, stream).await
        }
        "evaluate" => evaluate(&api, &info, payload).await,
        other => Err(HttpError::new(
            tonic::Code::NotFound,
            format!("unknown verb {other:?}: POST /v1/models/NAME:predict, :explain or :evaluate"),
        )),
    }
}

/// Whether the client asked for server-sent events (`Accept: text/event-stream`).
fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().starts_with("text/event-stream"))
}

async fn predict(
    api: &HttpApi,
    info: &pb::ModelInfo,
    payload: body::Payload,
) -> Result<Response, HttpError> {
    let top_k = payload.predict_top_k()?;
    let mut predictions = Vec::with_capacity(payload.instances.len());
    for (i, instance) in payload.instances.iter().enumerate() {
        let (input, inputs) = body::instance(info, instance).map_err(|e| e.at_instance(i))?;
        let request = pb::PredictRequest {
            model: info.name.clone(),
            input,
            inputs,
            top_k,
        };
        let response = api
            .service
            .predict(GrpcRequest::new(request))
            .await
            .map_err(|status| HttpError::from(status).at_instance(i))?;
        predictions.push(body::prediction(&response.into_inner()));
    }
    Ok(Json(json!({ "predictions": predictions })).into_response())
}

/// `POST /v1/models/{name}:evaluate`: one instance, the Evaluate options in `parameters`.
async fn evaluate(
    api: &HttpApi,
    info: &pb::ModelInfo,
    payload: body::Payload,
) -> Result<Response, HttpError> {
    let options = payload.evaluate_request(&info.name)?;
    if payload.instances.len() != 1 {
        return Err(HttpError::invalid(
            "instances",
            format!(
                "an evaluation takes one instance (its saliency map is in parameters), got {}",
                payload.instances.len()
            ),
        ));
    }
    let (input, inputs) =
        body::instance(info, &payload.instances[0]).map_err(|e| e.at_instance(0))?;
    let request = pb::EvaluateRequest {
        input,
        inputs,
        ..options
    };
    let response = api.service.evaluate(GrpcRequest::new(request)).await?;
    Ok(Json(json!({ "evaluation": body::evaluation(&response.into_inner()) })).into_response())
}

async fn explain(
    api: &HttpApi,
    info: &pb::ModelInfo,
    payload: body::Payload,
    stream: bool,
) -> Result<Response, HttpError> {
    let options = payload.explain_request(&info.name)?;
    let events = match payload.instances.len() {
        1 => {
            let (input, inputs) =
                body::instance(info, &payload.instances[0]).map_err(|e| e.at_instance(0))?;
            let request = pb::ExplainRequest {
                input,
                inputs,
                ..options
            };
            api.service
                .explain(GrpcRequest::new(request))
                .await?
                .into_inner()
        }
        _ => {
            let mut instances = Vec::with_capacity(payload.instances.len());
            for (i, instance) in payload.instances.iter().enumerate() {
                let (input, inputs) =
                    body::instance(info, instance).map_err(|e| e.at_instance(i))?;
                instances.push(pb::Instance {
                    input,
                    inputs,
                    target: None,
                });
            }
            let request = pb::ExplainBatchRequest {
                request: Some(options),
                instances,
                results_per_event: 1,
            };
            api.service
                .explain_batch(GrpcRequest::new(request))
                .await?
                .into_inner()
        }
    };
    if stream {
        return Ok(server_sent_events(events).into_response());
    }
    let mut explanations = Vec::with_capacity(payload.instances.len());
    let mut events = events;
    while let Some(event) = events.next().await {
        explanations.extend(results(event?));
    }
    explanations.sort_by_key(|e| e.instance);
    let explanations: Vec<Value> = explanations.iter().map(body::explanation).collect();
    Ok(Json(json!({ "explanations": explanations })).into_response())
}

/// The results an event carries (none for progress).
fn results(event: pb::ExplainEvent) -> Vec<pb::Explanation> {
    match event.event {
        Some(pb::explain_event::Event::Result(one)) => vec![one],
        Some(pb::explain_event::Event::Results(many)) => many.explanations,
        Some(pb::explain_event::Event::Progress(_)) | None => Vec::new(),
    }
}

/// The Explain's events as server-sent events: `progress` as the work goes, `explanation` for
/// each result (in the order they complete, each with its `instance`), then `done`; a failure
/// on the way ends the stream with an `error` event instead (the HTTP status is already sent).
/// A client that goes away drops the Explain at once, which cancels it.
fn server_sent_events(
    mut events: impl Stream<Item = Result<pb::ExplainEvent, tonic::Status>> + Send + Unpin + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            // A client that went away cancels the Explain now (dropping it), not at the next
            // event it would have been sent, which can be a whole gradient run later.
            let event = tokio::select! {
                event = events.next() => event,
                () = sender.closed() => return,
            };
            let Some(event) = event else { break };
            let sent = match event {
                Ok(pb::ExplainEvent {
                    event: Some(pb::explain_event::Event::Progress(progress)),
                }) => vec![json_event("progress", body::progress(&progress))],
                Ok(event) => results(event)
                    .iter()
                    .map(|r| json_event("explanation", body::explanation(r)))
                    .collect(),
                Err(status) => {
                    let _ = sender
                        .send(json_event("error", HttpError::from(status).body()))
                        .await;
                    return;
                }
            };
            for event in sent {
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        }
        let _ = sender.send(json_event("done", json!({}))).await;
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(receiver).map(Ok);
    Sse::new(events).keep_alive(KeepAlive::default())
}

fn json_event(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// The HTTP port: HTTP/1.1 on the connections [`super::accept`] makes (TLS as on the gRPC
/// port), until the server starts draining; then it stops accepting, lets the requests in
/// progress end (an Explain's stream ends when the grace period cancels it) and closes.
pub struct HttpPort {
    task: tokio::task::JoinHandle<()>,
}

impl HttpPort {
    pub fn start(
        listener: tokio::net::TcpListener,
        tls: Option<super::tls::Acceptor>,
        closes: tokio_util::task::TaskTracker,
        router: Router,
        shutdown: super::shutdown::Shutdown,
    ) -> Self {
        tracing::info!(
            address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = tls.is_some(),
            "HTTP API listening"
        );
        let task = tokio::spawn(async move {
            let mut incoming = super::accept::incoming(listener, closes, tls);
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            loop {
                let connection = tokio::select! {
                    next = incoming.next() => match next {
                        Some(Ok(connection)) => connection,
                        Some(Err(error)) => {
                            tracing::debug!(%error, "HTTP connection failed before it was served");
                            continue;
                        }
                        None => break,
                    },
                    _ = shutdown.draining() => break,
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(connection), service);
                let served = graceful.watch(served);
                tokio::spawn(async move {
                    if let Err(error) = served.await {
                        tracing::debug!(%error, "HTTP connection ended with an error");
                    }
                });
            }
            drop(incoming);
            graceful.shutdown().await;
        });
        Self { task }
    }

    /// Waits up to `linger` for the port to close after the drain, then closes it anyway.
    pub async fn stop(mut self, linger: std::time::Duration) {
        if tokio::time::timeout(linger, &mut self.task).await.is_err() {
            tracing::warn!("HTTP connections still open after the drain; closing them");
            self.task.abort();
        }
    }
}
