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
    InvalidArgument { field: Field, reason: String },
    #[error("{field}: {reason}")]
    FailedPrecondition { field: Field, reason: String },
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
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The request field an error is about: a fixed path (`steps`), or one with a name in it
/// (`inputs["ids"].tensor`).
pub type Field = std::borrow::Cow<'static, str>;

impl Error {
    pub fn invalid(field: impl Into<Field>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
