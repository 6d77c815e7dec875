//! The errors of this crate and their one mapping to `tonic::Status`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use passerelle_grpc_server::status::{invalid_argument, retryable};
use tonic::{Code, Status};

/// How long a client should wait before retrying a request refused for load.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Metadata key naming the request parameter an `INVALID_ARGUMENT` is about (`input[3]`,
/// `dimensions`), for the gateway's OpenAI `param` field. The same key every service uses.
pub use passerelle_grpc_server::status::PARAM_METADATA;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {reason}")]
    NotAModel { path: PathBuf, reason: String },
    #[error(
        "{path}: unsupported architecture `{found}` (this service runs BERT-family sentence-transformers models)"
    )]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{path}: unsupported sentence-transformers pipeline: {reason}")]
    UnsupportedPipeline { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Pooling { path: PathBuf, reason: String },
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
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("model weights: {reason}")]
    Weights { reason: String },
    #[error("the warm-up pass failed: {0}")]
    WarmUp(String),
    #[error(transparent)]
    Device(#[from] passerelle_model_runtime::DeviceError),
    #[error("cannot start {threads} compute threads: {source}")]
    ThreadPool {
        threads: usize,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
}

/// Why embedding a batch failed inside the model: a bug or a broken checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum EmbedFailure {
    #[error("tokenizing failed: {0}")]
    Tokenizer(tokenizers::Error),
    #[error("the model failed: {0}")]
    Model(#[from] candle_core::Error),
    /// The engine panicked on this batch (and recovered for the next ones).
    #[error("the engine panicked: {0}")]
    Panic(String),
}

/// Why a request or the service failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingsError {
    /// The request is malformed or asks for something this model cannot do.
    #[error("{message}")]
    InvalidArgument { param: String, message: String },
    #[error("model `{0}` is not served here")]
    ModelNotFound(String),
    #[error("the embedding queue is full ({capacity} requests waiting); retry later")]
    QueueFull { capacity: usize },
    #[error("model is loading")]
    Loading,
    #[error("model failed to load: {0}")]
    LoadFailed(String),
    #[error("the embedding engine has stopped")]
    EngineStopped,
    #[error("cannot start the engine thread: {0}")]
    EngineThread(#[source] std::io::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A failure inside the model, shared by every request of the batch it hit.
    #[error("embedding failed: {0}")]
    Embed(Arc<EmbedFailure>),
    /// A gap this service declares rather than fakes.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// A vector that does not fit its cache namespace: a bug, since one engine embeds them all.
    #[error("semantic cache: {0}")]
    Cache(#[from] crate::cache::index::DimensionMismatch),
    /// The semantic cache's Redis log could not be set up (a bad URL, no runtime); failures
    /// once running are only logged, never returned.
    #[error("semantic cache Redis: {0}")]
    CacheRedis(String),
    /// A cache step panicked (the cache starts afresh on the next call).
    #[error("semantic cache: {0}")]
    CacheTask(String),
    /// The namespace holds no document by this id.
    #[error("No such document: {0}.")]
    DocumentNotFound(String),
    /// Storing a document would take its namespace past the chunk bound.
    #[error(transparent)]
    NamespaceFull(#[from] crate::documents::store::NamespaceFull),
    /// A document could not be written to or removed from disk.
    #[error("document store: {0}")]
    DocumentFiles(#[from] crate::documents::persist::PersistError),
    /// A document step panicked.
    #[error("document store: {0}")]
    DocumentsTask(String),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Serve(#[from] passerelle_grpc_server::ServeError),
}

impl EmbeddingsError {
    /// An `INVALID_ARGUMENT` about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            param: param.into(),
            message: message.into(),
        }
    }
}

impl From<EmbeddingsError> for Status {
    fn from(err: EmbeddingsError) -> Self {
        let message = err.to_string();
        match err {
            EmbeddingsError::InvalidArgument { param, .. } => invalid_argument(&param, message),
            EmbeddingsError::ModelNotFound(_) | EmbeddingsError::DocumentNotFound(_) => {
                Status::not_found(message)
            }
            EmbeddingsError::NamespaceFull(_) => Status::failed_precondition(message),
            EmbeddingsError::QueueFull { .. } => {
                retryable(Code::ResourceExhausted, message, RETRY_AFTER)
            }
            EmbeddingsError::Loading => retryable(Code::Unavailable, message, RETRY_AFTER),
            EmbeddingsError::LoadFailed(_) | EmbeddingsError::EngineStopped => {
                Status::unavailable(message)
            }
            EmbeddingsError::Unimplemented(_) => Status::unimplemented(message),
            EmbeddingsError::Load(_)
            | EmbeddingsError::EngineThread(_)
            | EmbeddingsError::Embed(_)
            | EmbeddingsError::Cache(_)
            | EmbeddingsError::CacheTask(_)
            | EmbeddingsError::CacheRedis(_)
            | EmbeddingsError::DocumentFiles(_)
            | EmbeddingsError::DocumentsTask(_)
            | EmbeddingsError::Metrics(_)
            | EmbeddingsError::Serve(_) => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_its_grpc_code() {
        let status = Status::from(EmbeddingsError::invalid("input[2]", "empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.metadata().get(PARAM_METADATA).unwrap(), "input[2]");
        assert_eq!(
            Status::from(EmbeddingsError::ModelNotFound("x".into())).code(),
            Code::NotFound
        );
        let full = Status::from(EmbeddingsError::QueueFull { capacity: 4 });
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(passerelle_grpc_server::status::retry_after(&full).is_some());
        let loading = Status::from(EmbeddingsError::Loading);
        assert_eq!(loading.code(), Code::Unavailable);
        assert!(passerelle_grpc_server::status::retry_after(&loading).is_some());
        assert_eq!(
            Status::from(EmbeddingsError::EngineStopped).code(),
            Code::Unavailable
        );
        assert_eq!(
            Status::from(EmbeddingsError::Unimplemented("not here")).code(),
            Code::Unimplemented
        );
        assert_eq!(
            Status::from(EmbeddingsError::Embed(Arc::new(EmbedFailure::Panic(
                "bug".into()
            ))))
            .code(),
            Code::Internal
        );
    }
}
