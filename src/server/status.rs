//! Every error a request can meet, mapped to its gRPC status in one place.

use tonic::{Code, Status};

use crate::error::Error;
use crate::model::ModelError;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::ModelNotFound { .. } | Error::VersionNotFound { .. } => Code::NotFound,
            Error::NoDefaultModel { .. } | Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::ModelFailed { .. } | Error::FailedPrecondition { .. } => {
                Code::FailedPrecondition
            }
            Error::Image(_) => Code::InvalidArgument,
            Error::Model(ModelError::WorkerGone { .. })
            | Error::Model(ModelError::Failed { .. })
            | Error::Unavailable(_) => Code::Unavailable,
            Error::Cancelled => Code::Cancelled,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded => Code::DeadlineExceeded,
            Error::Model(ModelError::Runtime { .. }) | Error::Internal(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(%error, "request failed");
        } else {
            tracing::debug!(%error, ?code, "request refused");
        }
        Status::new(code, error.to_string())
    }
}
