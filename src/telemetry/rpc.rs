//! A span and metrics per RPC, as a tower layer on the whole router (every service on the
//! port, health included).
//!
//! The span continues the caller's trace when the request carries W3C `traceparent` metadata
//! (and a propagator is installed, that is with `--otlp-endpoint`). An RPC ends when its
//! response body ends: a streamed Explain is timed to its last message. Its status code comes
//! from the `grpc-status` header (a trailers-only error) or trailer; a body dropped before
//! its end (the client went away) counts as CANCELLED.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::propagation::Extractor;
use opentelemetry::KeyValue;
use tonic::Code;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics;

tokio::task_local! {
    /// The model the current request resolved to, for its span and metrics.
    static MODEL: Arc<OnceLock<String>>;
}

/// Names the model the current RPC is about (called where a request's model is resolved;
/// a no-op outside an RPC). Only resolved names reach here, so the label's values are
/// bounded by the repository.
pub fn note_model(name: &str) {
    let _ = MODEL.try_with(|model| model.set(name.to_string()));
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

impl<S, B, ResBody> tower_service::Service<http::Request<B>> for RpcService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let name = request.uri().path().trim_start_matches('/').to_string();
        let rpc = Rpc::start(name, "grpc", request.headers());
        let span = rpc.span.clone();
        let model = rpc.model.clone();
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            let result = MODEL.scope(model, future.instrument(span)).await;
            match result {
                Ok(response) => {
                    let mut rpc = rpc;
                    rpc.header_code = grpc_status(response.headers());
                    Ok(response.map(|inner| RpcBody {
                        inner,
                        rpc: Some(rpc),
                    }))
                }
                Err(error) => {
                    rpc.finish(Code::Unknown);
                    Err(error)
                }
            }
        })
    }
}

/// The same span and metrics for a call of the HTTP API, named by its route (never by its
/// path, which holds whatever model name the caller wrote), its code from the HTTP status; a
/// streamed answer is timed to its end.
pub async fn http_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let name = http_route(request.method(), request.uri().path());
    let mut rpc = Rpc::start(name, "http", request.headers());
    let span = rpc.span.clone();
    let model = rpc.model.clone();
    let response = MODEL.scope(model, next.run(request).instrument(span)).await;
    rpc.header_code = Some(http_code(response.status()));
    response.map(|inner| {
        axum::body::Body::new(RpcBody {
            inner,
            rpc: Some(rpc),
        })
    })
}

/// The HTTP API's routes, as metric labels.
fn http_route(method: &http::Method, path: &str) -> String {
    let route = match path.strip_prefix("/v1/models") {
        Some("") => "/v1/models",
        Some(rest) if rest.starts_with('/') && !rest[1..].contains('/') => {
            match rest.rsplit_once(':').map(|(_, verb)| verb) {
                Some("predict") => "/v1/models/{name}:predict",
                Some("explain") => "/v1/models/{name}:explain",
                Some(_) => "/v1/models/{name}:unknown",
                None => "/v1/models/{name}",
            }
        }
        _ => match path {
            "/" | "/v2/health/live" | "/v2/health/ready" => path,
            _ if path.starts_with("/ui/") => "/ui/*",
            _ => return UNKNOWN_RPC.to_string(),
        },
    };
    format!("{method} {route}")
}

/// The gRPC code of an HTTP status, as the HTTP API maps them.
fn http_code(status: http::StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        413 | 429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// The label of RPCs no service answers to.
const UNKNOWN_RPC: &str = "unknown";

/// RPC names some service has answered (with any code but UNIMPLEMENTED): the in-flight
/// gauge, counted before the answer, labels only these by name, so a caller cannot mint label
/// values by calling made-up methods. (A method's very first call is in flight as "unknown".)
fn answered_names() -> &'static std::sync::Mutex<std::collections::HashSet<String>> {
    static NAMES: OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    NAMES.get_or_init(Default::default)
}

fn answered(name: &str) {
    if let Ok(mut names) = answered_names().lock() {
        if !names.contains(name) {
            names.insert(name.to_string());
        }
    }
}

fn answered_label(name: &str) -> String {
    match answered_names().lock() {
        Ok(names) if names.contains(name) => name.to_string(),
        _ => UNKNOWN_RPC.to_string(),
    }
}

/// One RPC being served: its span, clock and labels.
struct Rpc {
    span: tracing::Span,
    /// "package.Service/Method".
    name: String,
    model: Arc<OnceLock<String>>,
    /// The label it is counted in flight under (kept so the decrement matches).
    in_flight: KeyValue,
    /// The code of a trailers-only response (an error before any message).
    header_code: Option<Code>,
    started: Instant,
    finished: bool,
}

impl Rpc {
    /// `name`: "package.Service/Method" for gRPC, "VERB /route" for HTTP; `system` the
    /// protocol ("grpc", "http").
    fn start(name: String, system: &'static str, headers: &http::HeaderMap) -> Self {
        let (service, method) = name.split_once('/').unwrap_or((&name, ""));
        let span = tracing::info_span!(
            "grpc",
            otel.name = %name,
            otel.kind = "server",
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            integrad.model = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Metadata(headers))
        });
        // Without an OpenTelemetry layer there is nothing to parent: the error says so.
        let _ = span.set_parent(parent);
        span.set_attribute("rpc.system", system);
        span.set_attribute("rpc.service", service.to_string());
        span.set_attribute("rpc.method", method.to_string());
        let in_flight = KeyValue::new("rpc", answered_label(&name));
        metrics().in_flight.add(1, std::slice::from_ref(&in_flight));
        Self {
            span,
            name,
            in_flight,
            model: Arc::default(),
            header_code: None,
            started: Instant::now(),
            finished: false,
        }
    }

    fn finish(mut self, code: Code) {
        self.finished = true;
        self.record(code);
    }

    fn record(&self, code: Code) {
        let model = self.model.get().cloned().unwrap_or_default();
        self.span.record("rpc.grpc.status_code", code as i32);
        if !model.is_empty() {
            self.span.record("integrad.model", model.as_str());
        }
        if server_error(code) {
            self.span.record("otel.status_code", "error");
        }
        // UNIMPLEMENTED: a path no service has; its name is whatever the caller sent, so it
        // is no label value (the span keeps it).
        let rpc = if code == Code::Unimplemented {
            UNKNOWN_RPC.to_string()
        } else {
            answered(&self.name);
            self.name.clone()
        };
        let metrics = metrics();
        metrics
            .in_flight
            .add(-1, std::slice::from_ref(&self.in_flight));
        let labels = [
            KeyValue::new("rpc", rpc),
            KeyValue::new("model", model),
            KeyValue::new("code", code_name(code)),
        ];
        metrics.requests.add(1, &labels);
        metrics
            .duration
            .record(self.started.elapsed().as_secs_f64(), &labels);
    }
}

impl Drop for Rpc {
    fn drop(&mut self) {
        // A trailers-only body may be dropped unread (it says it is at its end); any other
        // body dropped before its end means the client went away.
        if !self.finished {
            self.record(self.header_code.unwrap_or(Code::Cancelled));
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that finishes its [`Rpc`] when it ends.
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        rpc: Option<Rpc>,
    }
}

impl<B: http_body::Body> http_body::Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().and_then(grpc_status),
            Poll::Ready(Some(Err(_))) => Some(Code::Internal),
            Poll::Ready(None) => Some(
                this.rpc
                    .as_ref()
                    .and_then(|rpc| rpc.header_code)
                    .unwrap_or(Code::Unknown),
            ),
            Poll::Pending => None,
        };
        if let Some(code) = code {
            if let Some(rpc) = this.rpc.take() {
                rpc.finish(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

/// The codes OpenTelemetry's gRPC conventions count as a server's own failure.
fn server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The code's name as gRPC spells it ("OK", "NOT_FOUND", ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// gRPC metadata as OpenTelemetry's propagator reads it.
struct Metadata<'a>(&'a http::HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}
