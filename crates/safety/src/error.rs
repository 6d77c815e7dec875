//! The errors of this crate and their one mapping to `tonic::Status`.

use std::time::Duration;

use passerelle_grpc_server::status::{invalid_argument, retryable};
use tonic::{Code, Status};

use crate::{injection::InjectionError, rules::RulesError};

/// How long a client should wait before retrying a check refused for load.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a request or the service failed.
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    /// The request is malformed or over a limit.
    #[error("{message}")]
    InvalidArgument { param: String, message: String },
    #[error("model `{model}` is not served here (served: {served})")]
    ModelNotFound { model: String, served: String },
    /// The rule set could not be built: a startup error.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// The injection classifier could not be loaded, is overloaded or failed.
    #[error("injection classifier: {0}")]
    Injection(#[from] InjectionError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Serve(#[from] passerelle_grpc_server::ServeError),
    /// A model layer failed to run on a request.
    #[error("{0}")]
    Model(String),
    /// The Llama Guard model could not be loaded: a startup error.
    #[error(transparent)]
    LlamaGuard(#[from] crate::llama_guard::LlamaGuardError),
}

impl SafetyError {
    /// An `INVALID_ARGUMENT` about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            param: param.into(),
            message: message.into(),
        }
    }
}

impl From<SafetyError> for Status {
    fn from(err: SafetyError) -> Self {
        let message = err.to_string();
        match err {
            SafetyError::InvalidArgument { param, .. } => invalid_argument(&param, message),
            SafetyError::ModelNotFound { .. } => Status::not_found(message),
            SafetyError::Injection(InjectionError::QueueFull { .. }) => {
                retryable(Code::ResourceExhausted, message, RETRY_AFTER)
            }
            SafetyError::Injection(InjectionError::Stopped) => Status::unavailable(message),
            SafetyError::Injection(_) => Status::internal(message),
            SafetyError::Rules(_)
            | SafetyError::Metrics(_)
            | SafetyError::Serve(_)
            | SafetyError::Model(_)
            | SafetyError::LlamaGuard(_) => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use passerelle_grpc_server::status::PARAM_METADATA;
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_keeps_its_grpc_code() {
        let status = Status::from(SafetyError::invalid("stage", "say which"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "say which");
        assert_eq!(status.metadata().get(PARAM_METADATA).unwrap(), "stage");
        let missing = Status::from(SafetyError::ModelNotFound {
            model: "x".into(),
            served: "rules".into(),
        });
        assert_eq!(missing.code(), Code::NotFound);
        assert_eq!(
            Status::from(SafetyError::Rules(RulesError::DuplicateId("a".into()))).code(),
            Code::Internal
        );
        let busy = Status::from(SafetyError::from(InjectionError::QueueFull { capacity: 2 }));
        assert_eq!(busy.code(), Code::ResourceExhausted);
        assert!(passerelle_grpc_server::status::retry_after(&busy).is_some());
        assert_eq!(
            Status::from(SafetyError::from(InjectionError::Stopped)).code(),
            Code::Unavailable
        );
    }
}
