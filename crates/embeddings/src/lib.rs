//! Sentence embeddings on candle (CPU) for BERT-family sentence-transformers models, as a
//! library and as a gRPC service.
//!
//! - [`model`]: a sentence-transformers directory ([`model::layout`]: `modules.json`, the
//!   pooling config, `sentence_bert_config.json`), its tokenizer set up as sentence-transformers
//!   uses it, the BERT encoder over memory-mapped safetensors, and the pooling modes.
//! - [`batch`], [`request`], [`vector`]: pure policies — grouping texts into forward passes,
//!   request limits and the `normalize` / `dimensions` options, L2 arithmetic.
//! - [`engine`]: the actor that owns the model on its own thread; [`EmbeddingHandle`] is the
//!   plain Rust API (`EmbeddingEngine::load`, `EmbeddingHandle::embed`).
//! - [`service`] and [`serve`]: the `passerelle.embeddings.v1.Embeddings` gRPC service, with
//!   health flipped to SERVING once the model is warm.
//! - [`cache`]: the semantic cache behind `CacheLookup` / `CacheStore`: exact match on the
//!   normalised prompt, then nearest neighbour by embedding (exact scan or HNSW), per
//!   namespace, bounded by entry count (LRU) and TTL; optionally shared between replicas (and
//!   kept across restarts) through a Redis Stream.
//! - [`documents`]: the document store behind `IngestDocument`, `ListDocuments`, `GetDocument`,
//!   `DeleteDocument` and `Retrieve`: texts chunked by the model's tokenizer, embedded, kept
//!   per namespace in memory and optionally on disk, and searched by exact cosine scan.
//!
//! Errors are [`EmbeddingsError`] (and [`LoadError`] for loading), turned into `tonic::Status`
//! in one `From` impl.

pub mod batch;
pub mod cache;
pub mod documents;
pub mod engine;
pub mod error;
pub mod model;
pub mod request;
mod serve;
pub mod service;
pub mod vector;

pub use cache::CacheConfig;
pub use documents::DocumentsConfig;
pub use engine::{
    EmbeddingEngine, EmbeddingHandle, EngineConfig, EngineState, EngineStats, ServedModel,
};
pub use error::{EmbedFailure, EmbeddingsError, LoadError};
pub use model::{ModelSpec, SentenceModel, SentenceVector};
pub use passerelle_model_runtime::DeviceChoice;
pub use request::{EmbedOptions, Embedded, Inputs, MAX_INPUTS};
pub use serve::{EmbeddingsServiceConfig, serve};
pub use service::{EmbeddingsService, TRUNCATED_METADATA};
