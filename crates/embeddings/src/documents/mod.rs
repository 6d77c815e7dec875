//! The document store behind `IngestDocument`, `ListDocuments`, `GetDocument`,
//! `DeleteDocument` and `Retrieve`: texts cut into chunks, embedded with the served model, kept
//! per namespace (one per tenant), searched by meaning.
//!
//! - [`chunk`]: the pure chunker — sentences packed into chunks of a token budget, with overlap.
//! - [`store`]: the pure store — namespaces, the chunk bound, the exact cosine search.
//! - [`persist`]: one durable JSON file per document in an optional data directory.
//! - [`request`]: checks and defaults of the RPCs.
//! - [`handle`]: what the gRPC handlers share — the store behind a mutex, the engine, the
//!   tokenizer that measures chunks, the files and the `passerelle_documents_*` metrics.

pub mod chunk;
pub mod handle;
mod metrics;
pub mod persist;
pub mod request;
pub mod store;

use std::path::PathBuf;

pub use handle::{DocumentsHandle, Ingested, Retrieved};
pub use store::{ScoredChunk, StoredChunk, StoredDocument};

/// Where documents are kept, how big they may be, and the defaults requests fall back on.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentsConfig {
    /// A directory to keep documents in, so they survive a restart; in memory only when `None`.
    pub dir: Option<PathBuf>,
    /// Largest document text, in bytes.
    pub max_document_bytes: usize,
    /// Most chunks one namespace (tenant) may hold, all its documents together.
    pub max_chunks_per_namespace: usize,
    /// Tokens per chunk when a request leaves it at 0 (capped by the model's input length).
    pub chunk_tokens: usize,
    /// Tokens repeated between consecutive chunks when a request does not say.
    pub chunk_overlap_tokens: usize,
    /// Chunks `Retrieve` returns when a request leaves `top_k` at 0.
    pub default_top_k: usize,
    /// Most chunks one `Retrieve` may ask for.
    pub max_top_k: usize,
}

impl Default for DocumentsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_document_bytes: 1024 * 1024,
            max_chunks_per_namespace: 20_000,
            chunk_tokens: 200,
            chunk_overlap_tokens: 40,
            default_top_k: 4,
            max_top_k: 50,
        }
    }
}
