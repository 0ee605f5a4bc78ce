//! Request-level errors. `server::status` maps each to its gRPC code in one place.

use crate::image::ImageError;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model {name:?} not found; models: {available}")]
    ModelNotFound { name: String, available: String },
    #[error(
        "the request names no model and this server has no default model; models: {available}"
    )]
    NoDefaultModel { available: String },
    #[error("model {model:?} has no version {version:?}; served version: {served}")]
    VersionNotFound {
        model: String,
        version: String,
        served: String,
    },
    #[error("model {name:?} failed to load: {reason}")]
    ModelFailed { name: String, reason: String },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{field}: {reason}")]
    FailedPrecondition { field: &'static str, reason: String },
    #[error("input.image: {0}")]
    Image(#[from] ImageError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the client went away (cancelled, or its deadline passed)")]
    Cancelled,
    #[error("the request's deadline passed")]
    DeadlineExceeded,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
