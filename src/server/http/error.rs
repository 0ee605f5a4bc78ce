//! Errors of the HTTP API: the gRPC status of the same failure, as an HTTP status and a JSON
//! body `{"error": message, "code": "INVALID_ARGUMENT", "field": ...}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tonic::Code;

use crate::telemetry::code_name;

#[derive(Debug)]
pub struct HttpError {
    code: Code,
    message: String,
    /// The part of the body the error is about (`instances[2]`, `parameters`), when known.
    field: Option<String>,
    /// Seconds until a retry may succeed (from the admission queue's hint).
    retry_after: Option<HeaderValue>,
    /// The request was too large rather than the server too busy (413, not 429).
    too_large: bool,
}

impl HttpError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            too_large: false,
        }
    }

    /// A bad part of the body: 400 naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message).field(field)
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The error is about the `i`th instance: its field, if any, is within that instance.
    pub fn at_instance(self, i: usize) -> Self {
        match self.code {
            Code::InvalidArgument | Code::FailedPrecondition => {
                self.within(&format!("instances[{i}]"))
            }
            _ => self,
        }
    }

    /// The field named so far is within `outer` (`[2]` within `x` is `x[2]`, `b64` is `x.b64`).
    pub fn within(mut self, outer: &str) -> Self {
        let inner = self.field.take().unwrap_or_default();
        self.field = Some(match inner.chars().next() {
            None => outer.to_string(),
            Some('[') => format!("{outer}{inner}"),
            Some(_) => format!("{outer}.{inner}"),
        });
        self
    }

    pub fn too_large(mut self) -> Self {
        self.too_large = true;
        self
    }

    pub fn status(&self) -> StatusCode {
        match self.code {
            Code::Ok => StatusCode::OK,
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResourceExhausted if self.too_large || self.retry_after.is_none() => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            // nginx's "client closed request": nobody is left to read it.
            Code::Cancelled => StatusCode::from_u16(499).expect("a valid status"),
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body (also the data of a server-sent `error` event).
    pub fn body(&self) -> Value {
        let mut body = json!({
            "error": match &self.field {
                Some(field) => format!("{field}: {}", self.message),
                None => self.message.clone(),
            },
            "code": code_name(self.code),
        });
        if let Some(field) = &self.field {
            body["field"] = json!(field);
        }
        body
    }
}

impl From<tonic::Status> for HttpError {
    fn from(status: tonic::Status) -> Self {
        let mut error = Self::new(status.code(), status.message());
        error.retry_after = status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok().and_then(|v| HeaderValue::from_str(v).ok()));
        error
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = &self.retry_after {
            headers.insert(header::RETRY_AFTER, seconds.clone());
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
