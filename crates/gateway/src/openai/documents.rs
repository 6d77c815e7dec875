//! `/v1/documents`: request validation, the document store's field names translated to the
//! API's, and the response shapes (`document`, `list`, `document.deleted`, `document.chunk`).

use std::collections::BTreeMap;

use passerelle_proto::embeddings::{
    DeleteDocumentResponse, Document, IngestDocumentRequest, RetrieveRequest, RetrieveResponse,
};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Most documents one `POST /v1/documents` may carry.
pub(crate) const MAX_BATCH: usize = 64;
/// Most chunks one search may return (the store's own bound).
pub(crate) const MAX_SEARCH_TOP_K: u32 = 50;

/// `POST /v1/documents`: one document, or several under `documents`. Unknown fields are
/// ignored, as elsewhere.
#[derive(Debug, Deserialize)]
pub struct CreateDocumentsRequest {
    /// The embedding model; the service's when absent.
    pub model: Option<String>,
    pub documents: Option<Vec<DocumentFields>>,
    pub id: Option<String>,
    pub title: Option<String>,
    pub text: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub chunking: Option<ChunkingIn>,
}

/// What describes one document.
#[derive(Debug, Default, Deserialize)]
pub struct DocumentFields {
    /// Stores under this id, replacing a document that has it; generated when absent.
    pub id: Option<String>,
    pub title: Option<String>,
    pub text: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub chunking: Option<ChunkingIn>,
}

/// How to cut the text.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkingIn {
    pub max_tokens: Option<u32>,
    pub overlap_tokens: Option<u32>,
}

/// Checked ingestion requests, each with the field prefix its errors are reported under.
#[derive(Debug)]
pub(crate) struct IngestPlan {
    pub(crate) requests: Vec<(String, IngestDocumentRequest)>,
    /// The body was a `documents` batch: answer with a list.
    pub(crate) batch: bool,
}

impl CreateDocumentsRequest {
    pub(crate) fn into_plan(
        self,
        namespace: &str,
        request_id: &str,
    ) -> Result<IngestPlan, ApiError> {
        let model = self.model.unwrap_or_default();
        let single = DocumentFields {
            id: self.id,
            title: self.title,
            text: self.text,
            metadata: self.metadata,
            chunking: self.chunking,
        };
        let has_single = single.text.is_some()
            || single.title.is_some()
            || single.id.is_some()
            || single.metadata.is_some()
            || single.chunking.is_some();
        let (documents, batch) = match self.documents {
            Some(_) if has_single => {
                return Err(ApiError::invalid_param(
                    "documents",
                    "Send either one document (`text`, `title`, ...) or a `documents` list, not both.",
                ));
            }
            Some(documents) => {
                if documents.is_empty() || documents.len() > MAX_BATCH {
                    return Err(ApiError::invalid_param(
                        "documents",
                        format!("`documents` must hold 1 to {MAX_BATCH} documents."),
                    ));
                }
                let prefixed = documents
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| (format!("documents[{i}]."), d))
                    .collect();
                (prefixed, true)
            }
            None => (vec![(String::new(), single)], false),
        };
        let requests = documents
            .into_iter()
            .map(|(prefix, fields)| {
                let request = fields.into_request(&prefix, namespace, &model, request_id)?;
                Ok((prefix, request))
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(IngestPlan { requests, batch })
    }
}

impl DocumentFields {
    fn into_request(
        self,
        prefix: &str,
        namespace: &str,
        model: &str,
        request_id: &str,
    ) -> Result<IngestDocumentRequest, ApiError> {
        let text = self.text.unwrap_or_default();
        if text.trim().is_empty() {
            return Err(ApiError::invalid_param(
                format!("{prefix}text"),
                "`text` is required and must hold some non-whitespace text.",
            ));
        }
        let chunking = self.chunking;
        Ok(IngestDocumentRequest {
            namespace: namespace.to_owned(),
            model: model.to_owned(),
            document_id: self.id,
            title: self.title.unwrap_or_default(),
            text,
            metadata: self.metadata.unwrap_or_default().into_iter().collect(),
            chunk_tokens: chunking.and_then(|c| c.max_tokens).unwrap_or(0),
            chunk_overlap_tokens: chunking.and_then(|c| c.overlap_tokens),
            request_id: request_id.to_owned(),
        })
    }
}

/// The API's name for a field the document store named.
pub(crate) fn ingest_param(prefix: &str, param: &str) -> String {
    let field = match param {
        "document_id" => "id",
        "chunk_tokens" => "chunking.max_tokens",
        "chunk_overlap_tokens" => "chunking.overlap_tokens",
        other => other,
    };
    format!("{prefix}{field}")
}

/// `POST /v1/documents/search`.
#[derive(Debug, Deserialize)]
pub struct SearchRequest {
    pub query: String,
    pub top_k: Option<u32>,
    pub min_score: Option<f32>,
    pub document_ids: Option<Vec<String>>,
}

impl SearchRequest {
    pub(crate) fn into_request(
        self,
        namespace: &str,
        request_id: &str,
    ) -> Result<RetrieveRequest, ApiError> {
        if self.query.trim().is_empty() {
            return Err(ApiError::invalid_param(
                "query",
                "`query` must hold some non-whitespace text.",
            ));
        }
        Ok(RetrieveRequest {
            namespace: namespace.to_owned(),
            query: self.query,
            top_k: check_top_k("top_k", self.top_k, MAX_SEARCH_TOP_K)?,
            min_score: check_min_score("min_score", self.min_score)?,
            document_ids: self.document_ids.unwrap_or_default(),
            request_id: request_id.to_owned(),
        })
    }
}

/// `top_k` within 1..=`max`; 0 (the store's default) when absent.
pub(crate) fn check_top_k(param: &str, top_k: Option<u32>, max: u32) -> Result<u32, ApiError> {
    match top_k {
        None => Ok(0),
        Some(k) if (1..=max).contains(&k) => Ok(k),
        Some(k) => Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be between 1 and {max}, got {k}."),
        )),
    }
}

/// A cosine similarity threshold: within -1..=1.
pub(crate) fn check_min_score(param: &str, score: Option<f32>) -> Result<Option<f32>, ApiError> {
    match score {
        Some(s) if !(-1.0..=1.0).contains(&s) => Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be between -1 and 1, got {s}."),
        )),
        other => Ok(other),
    }
}

/// A stored document.
#[derive(Debug, Serialize)]
pub struct DocumentOut {
    id: String,
    object: &'static str,
    title: String,
    metadata: BTreeMap<String, String>,
    /// Chunks the text was cut into.
    chunks: u32,
    /// Size of the text in bytes.
    bytes: u64,
    /// Tokens of the text.
    tokens: u64,
    /// The embedding model the chunks were embedded with.
    model: String,
    created_at: i64,
}

impl From<Document> for DocumentOut {
    fn from(d: Document) -> Self {
        Self {
            id: d.id,
            object: "document",
            title: d.title,
            metadata: d.metadata.into_iter().collect(),
            chunks: d.chunks,
            bytes: d.bytes,
            tokens: d.tokens,
            model: d.model,
            created_at: d.created_unix,
        }
    }
}

/// Tokens an ingestion or search made the embedding model read.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EmbeddingUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}

impl EmbeddingUsage {
    pub(crate) fn new(tokens: u32) -> Self {
        Self {
            prompt_tokens: tokens,
            total_tokens: tokens,
        }
    }

    pub(crate) fn add(&mut self, tokens: u32) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(tokens);
        self.total_tokens = self.prompt_tokens;
    }
}

/// A document just stored, with what embedding it cost.
#[derive(Debug, Serialize)]
pub struct CreatedDocument {
    #[serde(flatten)]
    pub(crate) document: DocumentOut,
    pub(crate) usage: EmbeddingUsage,
}

/// Documents just stored by a batch.
#[derive(Debug, Serialize)]
pub struct CreatedDocuments {
    object: &'static str,
    data: Vec<DocumentOut>,
    usage: EmbeddingUsage,
}

impl CreatedDocuments {
    pub(crate) fn new(data: Vec<DocumentOut>, usage: EmbeddingUsage) -> Self {
        Self {
            object: "list",
            data,
            usage,
        }
    }
}

/// `GET /v1/documents`.
#[derive(Debug, Serialize)]
pub struct DocumentList {
    object: &'static str,
    data: Vec<DocumentOut>,
    has_more: bool,
}

impl DocumentList {
    pub(crate) fn new(documents: Vec<Document>) -> Self {
        Self {
            object: "list",
            data: documents.into_iter().map(DocumentOut::from).collect(),
            has_more: false,
        }
    }
}

/// `DELETE /v1/documents/{id}`.
#[derive(Debug, Serialize)]
pub struct DeletedDocument {
    id: String,
    object: &'static str,
    deleted: bool,
}

impl From<DeleteDocumentResponse> for DeletedDocument {
    fn from(d: DeleteDocumentResponse) -> Self {
        Self {
            id: d.document_id,
            object: "document.deleted",
            deleted: true,
        }
    }
}

/// `POST /v1/documents/search`.
#[derive(Debug, Serialize)]
pub struct SearchResults {
    object: &'static str,
    data: Vec<ChunkOut>,
    usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
struct ChunkOut {
    object: &'static str,
    document_id: String,
    title: String,
    chunk_index: u32,
    score: f32,
    text: String,
}

impl From<RetrieveResponse> for SearchResults {
    fn from(r: RetrieveResponse) -> Self {
        Self {
            object: "list",
            data: r
                .chunks
                .into_iter()
                .map(|c| ChunkOut {
                    object: "document.chunk",
                    document_id: c.document_id,
                    title: c.title,
                    chunk_index: c.chunk_index,
                    score: c.score,
                    text: c.text,
                })
                .collect(),
            usage: EmbeddingUsage::new(r.usage.map_or(0, |u| u.prompt_tokens)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;

    fn plan(body: serde_json::Value) -> Result<IngestPlan, ApiError> {
        parse_json::<CreateDocumentsRequest>(body.to_string().as_bytes())?.into_plan("key:k1", "r1")
    }

    fn param(err: ApiError) -> String {
        match err {
            ApiError::InvalidRequest { param: Some(p), .. } => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_document_becomes_one_request() {
        let p = plan(
            serde_json::json!({"title": "T", "text": "Hello.", "metadata": {"a": "b"},
            "chunking": {"max_tokens": 64, "overlap_tokens": 8}}),
        )
        .unwrap();
        assert!(!p.batch);
        let (prefix, request) = &p.requests[0];
        assert_eq!(prefix, "");
        assert_eq!(request.namespace, "key:k1");
        assert_eq!(request.title, "T");
        assert_eq!(request.chunk_tokens, 64);
        assert_eq!(request.chunk_overlap_tokens, Some(8));
        assert_eq!(request.metadata["a"], "b");
        assert_eq!(request.document_id, None);
    }

    #[test]
    fn a_batch_names_the_document_at_fault() {
        let p = plan(serde_json::json!({"documents": [{"text": "a"}, {"text": "b", "id": "x"}]}))
            .unwrap();
        assert!(p.batch);
        assert_eq!(p.requests[1].0, "documents[1].");
        assert_eq!(p.requests[1].1.document_id.as_deref(), Some("x"));
        assert_eq!(
            param(
                plan(serde_json::json!({"documents": [{"text": "a"}, {"text": " "}]})).unwrap_err()
            ),
            "documents[1].text"
        );
        assert_eq!(
            param(plan(serde_json::json!({"documents": [], "text": "x"})).unwrap_err()),
            "documents"
        );
        assert_eq!(
            param(plan(serde_json::json!({"documents": []})).unwrap_err()),
            "documents"
        );
        assert_eq!(
            ingest_param("documents[1].", "chunk_tokens"),
            "documents[1].chunking.max_tokens"
        );
        assert_eq!(ingest_param("", "document_id"), "id");
    }

    #[test]
    fn bad_fields_name_their_param() {
        assert_eq!(
            param(plan(serde_json::json!({"title": "t"})).unwrap_err()),
            "text"
        );
        assert_eq!(
            param(plan(serde_json::json!({"text": ""})).unwrap_err()),
            "text"
        );
        assert_eq!(
            param(plan(serde_json::json!({"text": "x", "metadata": {"k": 1}})).unwrap_err()),
            "metadata.k"
        );
    }

    #[test]
    fn search_limits() {
        let search = |body: serde_json::Value| {
            parse_json::<SearchRequest>(body.to_string().as_bytes())
                .unwrap()
                .into_request("anonymous", "r")
        };
        assert_eq!(search(serde_json::json!({"query": "q"})).unwrap().top_k, 0);
        assert_eq!(
            param(search(serde_json::json!({"query": "q", "top_k": 0})).unwrap_err()),
            "top_k"
        );
        assert_eq!(
            param(search(serde_json::json!({"query": "q", "top_k": 51})).unwrap_err()),
            "top_k"
        );
        assert_eq!(
            param(search(serde_json::json!({"query": "q", "min_score": 2})).unwrap_err()),
            "min_score"
        );
        assert_eq!(
            param(search(serde_json::json!({"query": " "})).unwrap_err()),
            "query"
        );
    }
}
