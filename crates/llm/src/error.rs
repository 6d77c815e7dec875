//! The errors of this crate and their one mapping to `tonic::Status`.

use std::{path::PathBuf, time::Duration};

use passerelle_grpc_server::status::{invalid_argument, retryable};
use tonic::{Code, Status};

/// How long a client should wait before retrying a request refused for load.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Metadata key naming the request parameter an `INVALID_ARGUMENT` is about, for the gateway's
/// OpenAI `param` field.
pub use passerelle_grpc_server::status::PARAM_METADATA;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {reason}")]
    NotAModel { path: PathBuf, reason: String },
    #[error(
        "{path}: unsupported architecture `{found}` (this service runs qwen2, qwen3, llama and phi3 models)"
    )]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),
    #[error("GGUF metadata key `{key}`: {reason}")]
    GgufMetadata { key: String, reason: String },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] tokenizers::Error),
    #[error("chat template does not compile: {0}")]
    Template(#[source] minijinja::Error),
    #[error(transparent)]
    Grammar(#[from] crate::grammar::GrammarSetupError),
    #[error("model weights: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Device(#[from] passerelle_model_runtime::DeviceError),
    #[error("the engine's batching limits do not fit this model: {0}")]
    Limits(#[from] crate::engine::SchedulerConfigError),
    #[error("cannot start {threads} compute threads: {source}")]
    ThreadPool {
        threads: usize,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
}

/// Why a request or the service failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The request is malformed or asks for something this model cannot do.
    #[error("{message}")]
    InvalidArgument {
        param: &'static str,
        message: String,
    },
    #[error("model `{0}` is not served here")]
    ModelNotFound(String),
    #[error("the generation queue is full ({capacity} requests waiting); retry later")]
    QueueFull { capacity: usize },
    /// The running batch had no room (KV cache budget or running sequences) for as long as a
    /// request may wait.
    #[error(
        "the engine is at capacity: no room in the running batch after waiting {:.1}s; retry later",
        waited.as_secs_f64()
    )]
    Overloaded { waited: Duration },
    #[error("model is loading")]
    Loading,
    #[error("model failed to load: {0}")]
    LoadFailed(String),
    #[error("the generation engine has stopped")]
    EngineStopped,
    #[error("invalid engine configuration: {0}")]
    Config(#[from] crate::engine::SchedulerConfigError),
    #[error("cannot start the engine thread: {0}")]
    EngineThread(#[source] std::io::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A failure inside the model during generation: a bug or a broken checkpoint.
    #[error("generation failed: {0}")]
    Generation(#[from] candle_core::Error),
    /// A bug: the engine panicked on this request (and recovered for the next ones).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Serve(#[from] passerelle_grpc_server::ServeError),
}

impl LlmError {
    /// An `INVALID_ARGUMENT` about `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            param,
            message: message.into(),
        }
    }
}

impl From<LlmError> for Status {
    fn from(err: LlmError) -> Self {
        let message = err.to_string();
        match err {
            LlmError::InvalidArgument { param, .. } => invalid_argument(param, message),
            LlmError::ModelNotFound(_) => Status::not_found(message),
            LlmError::QueueFull { .. } | LlmError::Overloaded { .. } => {
                retryable(Code::ResourceExhausted, message, RETRY_AFTER)
            }
            LlmError::Loading => retryable(Code::Unavailable, message, RETRY_AFTER),
            LlmError::LoadFailed(_) | LlmError::EngineStopped => Status::unavailable(message),
            LlmError::Load(_)
            | LlmError::Config(_)
            | LlmError::EngineThread(_)
            | LlmError::Generation(_)
            | LlmError::Internal(_)
            | LlmError::Metrics(_)
            | LlmError::Serve(_) => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_its_grpc_code() {
        let status = Status::from(LlmError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.metadata().get(PARAM_METADATA).unwrap(), "max_tokens");
        assert_eq!(
            Status::from(LlmError::ModelNotFound("x".into())).code(),
            Code::NotFound
        );
        let full = Status::from(LlmError::QueueFull { capacity: 4 });
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(passerelle_grpc_server::status::retry_after(&full).is_some());
        let overloaded = Status::from(LlmError::Overloaded {
            waited: Duration::from_millis(2500),
        });
        assert_eq!(overloaded.code(), Code::ResourceExhausted);
        assert!(
            overloaded.message().contains("2.5s"),
            "{}",
            overloaded.message()
        );
        assert!(passerelle_grpc_server::status::retry_after(&overloaded).is_some());
        let loading = Status::from(LlmError::Loading);
        assert_eq!(loading.code(), Code::Unavailable);
        assert_eq!(loading.message(), "model is loading");
        assert_eq!(
            Status::from(LlmError::EngineStopped).code(),
            Code::Unavailable
        );
    }
}
