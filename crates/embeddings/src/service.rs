//! The `passerelle.embeddings.v1.Embeddings` gRPC service over an [`EmbeddingHandle`].
//!
//! `Embed` and `ListModels` are served here. `CacheLookup` and `CacheStore` belong to the
//! semantic cache, which this service does not have yet: they answer UNIMPLEMENTED, saying so.

use passerelle_proto::{
    common,
    embeddings::{
        CacheLookupRequest, CacheLookupResponse, CacheStoreRequest, CacheStoreResponse,
        EmbedRequest, EmbedResponse, Embedding, embeddings_server::Embeddings,
    },
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    engine::{EmbeddingHandle, EngineState},
    error::EmbeddingsError,
    request::EmbedOptions,
};

/// Response metadata: how many inputs were longer than the model's `max_seq_length` and were
/// truncated before embedding. Absent when none was.
pub const TRUNCATED_METADATA: &str = "passerelle-truncated-inputs";

const NO_CACHE: &str = "semantic cache is not enabled on this service";

/// Embedding and model listing for one model.
#[derive(Debug, Clone)]
pub struct EmbeddingsService {
    engine: EmbeddingHandle,
    source: String,
}

impl EmbeddingsService {
    /// `source` is what the operator named the model by, shown in `ListModels`.
    pub fn new(engine: EmbeddingHandle, source: impl Into<String>) -> Self {
        Self {
            engine,
            source: source.into(),
        }
    }

    fn model_info(&self) -> common::ModelInfo {
        let mut info = common::ModelInfo {
            id: self.engine.model_id().to_owned(),
            family: "bert".to_owned(),
            format: "safetensors".to_owned(),
            owned_by: "passerelle".to_owned(),
            source: self.source.clone(),
            ..Default::default()
        };
        let state = match self.engine.state() {
            EngineState::Loading => common::ModelState::Loading,
            EngineState::Ready(served) => {
                info.context_length = u32::try_from(served.spec.max_seq_length).unwrap_or(u32::MAX);
                info.created_unix = served.created_unix;
                common::ModelState::Ready
            }
            EngineState::Failed(message) => {
                info.error = message.to_string();
                common::ModelState::Failed
            }
        };
        info.state = state as i32;
        info
    }
}

#[tonic::async_trait]
impl Embeddings for EmbeddingsService {
    async fn embed(
        &self,
        request: Request<EmbedRequest>,
    ) -> Result<Response<EmbedResponse>, Status> {
        let request = request.into_inner();
        let options = EmbedOptions {
            normalize: request.normalize,
            dimensions: request
                .dimensions
                .map(|d| usize::try_from(d).unwrap_or(usize::MAX)),
        };
        let span = tracing::info_span!("embeddings.request", request_id = %request.request_id);
        let embedded = self
            .engine
            .embed_with(&request.model, request.inputs, options)
            .instrument(span)
            .await?;
        let tokens = u32::try_from(embedded.total_tokens()).unwrap_or(u32::MAX);
        let truncated = embedded.truncated_inputs();
        let mut response = Response::new(EmbedResponse {
            embeddings: embedded
                .vectors
                .into_iter()
                .map(|values| Embedding { values })
                .collect(),
            usage: Some(common::Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
                ..Default::default()
            }),
            model: self.engine.model_id().to_owned(),
        });
        if truncated > 0 {
            response
                .metadata_mut()
                .insert(TRUNCATED_METADATA, truncated.into());
        }
        Ok(response)
    }

    async fn cache_lookup(
        &self,
        _request: Request<CacheLookupRequest>,
    ) -> Result<Response<CacheLookupResponse>, Status> {
        Err(EmbeddingsError::Unimplemented(NO_CACHE).into())
    }

    async fn cache_store(
        &self,
        _request: Request<CacheStoreRequest>,
    ) -> Result<Response<CacheStoreResponse>, Status> {
        Err(EmbeddingsError::Unimplemented(NO_CACHE).into())
    }

    async fn list_models(
        &self,
        _request: Request<common::ListModelsRequest>,
    ) -> Result<Response<common::ListModelsResponse>, Status> {
        Ok(Response::new(common::ListModelsResponse {
            models: vec![self.model_info()],
        }))
    }
}
