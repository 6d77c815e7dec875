//! The `passerelle.embeddings.v1.Embeddings` gRPC service over an [`EmbeddingHandle`].
//!
//! `Embed` and `ListModels` go to the engine; `CacheLookup` and `CacheStore` to the semantic
//! cache ([`crate::cache`]); the document RPCs to the document store ([`crate::documents`]). Generated types stop here: each handler turns its request into the
//! crate's own types and the answer back.

use passerelle_proto::{
    common,
    embeddings::{
        CacheLookupRequest, CacheLookupResponse, CacheStoreRequest, CacheStoreResponse,
        DeleteDocumentRequest, DeleteDocumentResponse, Document, EmbedRequest, EmbedResponse,
        Embedding, GetDocumentRequest, IngestDocumentRequest, IngestDocumentResponse,
        ListDocumentsRequest, ListDocumentsResponse, RetrieveRequest, RetrieveResponse,
        RetrievedChunk, embeddings_server::Embeddings,
    },
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    cache::{
        CacheHandle,
        request::{LookupQuery, StoreCommand},
    },
    documents::{
        DocumentsHandle, StoredDocument,
        request::{IngestFields, RetrieveQuery},
    },
    engine::{EmbeddingHandle, EngineState},
    error::EmbeddingsError,
    request::EmbedOptions,
    request::Inputs,
};

/// Response metadata: how many inputs were longer than the model's `max_seq_length` and were
/// truncated before embedding. Absent when none was.
pub const TRUNCATED_METADATA: &str = "passerelle-truncated-inputs";

/// Embedding, model listing, the semantic cache and the document store for one model.
#[derive(Debug, Clone)]
pub struct EmbeddingsService {
    engine: EmbeddingHandle,
    source: String,
    cache: CacheHandle,
    documents: DocumentsHandle,
}

impl EmbeddingsService {
    /// `source` is what the operator named the model by, shown in `ListModels`.
    pub fn new(
        engine: EmbeddingHandle,
        source: impl Into<String>,
        cache: CacheHandle,
        documents: DocumentsHandle,
    ) -> Self {
        Self {
            engine,
            source: source.into(),
            cache,
            documents,
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
        let inputs = match (request.inputs.is_empty(), request.token_inputs.is_empty()) {
            (false, false) => {
                return Err(Status::invalid_argument(
                    "send either texts or token ids as inputs, not both",
                ));
            }
            (true, false) => {
                Inputs::Tokens(request.token_inputs.into_iter().map(|t| t.ids).collect())
            }
            _ => Inputs::Texts(request.inputs),
        };
        let span = tracing::info_span!("embeddings.request", request_id = %request.request_id);
        let embedded = self
            .engine
            .embed_with(&request.model, inputs, options)
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
        request: Request<CacheLookupRequest>,
    ) -> Result<Response<CacheLookupResponse>, Status> {
        let request = request.into_inner();
        let query = LookupQuery::new(
            request.namespace,
            request.model,
            request.prompt,
            request.min_similarity,
            self.cache.config(),
        )?;
        let span = tracing::info_span!("embeddings.cache_lookup");
        let hit = self.cache.lookup(query).instrument(span).await?;
        Ok(Response::new(match hit {
            Some(hit) => CacheLookupResponse {
                hit: true,
                response_json: hit.response_json.to_string(),
                similarity: hit.similarity,
                entry_id: hit.id.to_string(),
            },
            None => CacheLookupResponse::default(),
        }))
    }

    async fn cache_store(
        &self,
        request: Request<CacheStoreRequest>,
    ) -> Result<Response<CacheStoreResponse>, Status> {
        let request = request.into_inner();
        let command = StoreCommand::new(
            request.namespace,
            request.model,
            request.prompt,
            request.response_json,
            request.ttl_seconds,
            self.cache.config(),
        )?;
        let span = tracing::info_span!("embeddings.cache_store");
        let id = self.cache.store(command).instrument(span).await?;
        Ok(Response::new(CacheStoreResponse {
            entry_id: id.to_string(),
        }))
    }

    async fn list_models(
        &self,
        _request: Request<common::ListModelsRequest>,
    ) -> Result<Response<common::ListModelsResponse>, Status> {
        Ok(Response::new(common::ListModelsResponse {
            models: vec![self.model_info()],
        }))
    }

    async fn ingest_document(
        &self,
        request: Request<IngestDocumentRequest>,
    ) -> Result<Response<IngestDocumentResponse>, Status> {
        let request = request.into_inner();
        let fields = IngestFields {
            namespace: request.namespace,
            document_id: request.document_id,
            title: request.title,
            text: request.text,
            metadata: request.metadata.into_iter().collect(),
            chunk_tokens: request.chunk_tokens,
            chunk_overlap_tokens: request.chunk_overlap_tokens,
        };
        let span = tracing::info_span!(
            "embeddings.ingest_document",
            request_id = %request.request_id,
            bytes = fields.text.len(),
        );
        let ingested = self
            .documents
            .ingest(&request.model, fields)
            .instrument(span)
            .await?;
        let tokens = u32::try_from(ingested.tokens).unwrap_or(u32::MAX);
        Ok(Response::new(IngestDocumentResponse {
            document: Some(document(&ingested.document)),
            usage: Some(common::Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
                ..Default::default()
            }),
        }))
    }

    async fn list_documents(
        &self,
        request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        let namespace = request.into_inner().namespace;
        required_namespace(&namespace)?;
        Ok(Response::new(ListDocumentsResponse {
            documents: self
                .documents
                .list(&namespace)
                .iter()
                .map(|d| document(d))
                .collect(),
        }))
    }

    async fn get_document(
        &self,
        request: Request<GetDocumentRequest>,
    ) -> Result<Response<Document>, Status> {
        let request = request.into_inner();
        required_namespace(&request.namespace)?;
        let found = self
            .documents
            .get(&request.namespace, &request.document_id)?;
        Ok(Response::new(document(&found)))
    }

    async fn delete_document(
        &self,
        request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        let request = request.into_inner();
        required_namespace(&request.namespace)?;
        let deleted = self
            .documents
            .delete(&request.namespace, &request.document_id)
            .await?;
        Ok(Response::new(DeleteDocumentResponse {
            document_id: deleted.id.clone(),
            chunks: u32::try_from(deleted.chunks.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn retrieve(
        &self,
        request: Request<RetrieveRequest>,
    ) -> Result<Response<RetrieveResponse>, Status> {
        let request = request.into_inner();
        let query = RetrieveQuery::new(
            request.namespace,
            request.query,
            request.top_k,
            request.min_score,
            request.document_ids,
            self.documents.config(),
        )?;
        let span = tracing::info_span!("embeddings.retrieve", request_id = %request.request_id);
        let retrieved = self.documents.retrieve(query).instrument(span).await?;
        let tokens = u32::try_from(retrieved.tokens).unwrap_or(u32::MAX);
        Ok(Response::new(RetrieveResponse {
            chunks: retrieved
                .chunks
                .iter()
                .map(|found| RetrievedChunk {
                    document_id: found.document.id.clone(),
                    title: found.document.title.clone(),
                    chunk_index: u32::try_from(found.chunk_index).unwrap_or(u32::MAX),
                    text: found.text().to_owned(),
                    score: found.score,
                })
                .collect(),
            usage: Some(common::Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
                ..Default::default()
            }),
        }))
    }
}

fn required_namespace(namespace: &str) -> Result<(), EmbeddingsError> {
    if namespace.is_empty() {
        return Err(EmbeddingsError::invalid(
            "namespace",
            "`namespace` is required.",
        ));
    }
    Ok(())
}

/// A stored document as the contract describes it, without its chunks.
fn document(document: &StoredDocument) -> Document {
    Document {
        id: document.id.clone(),
        title: document.title.clone(),
        metadata: document
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        chunks: u32::try_from(document.chunks.len()).unwrap_or(u32::MAX),
        bytes: document.bytes,
        tokens: document.tokens,
        created_unix: document.created_unix,
        model: document.model.clone(),
    }
}
