//! The document store as the gRPC handlers share it.
//!
//! Reads (list, get, the snapshot a search scores) take a `std::sync::Mutex` for a few map
//! lookups and `Arc` copies, never across an await. Changes are serialised by an async mutex
//! held from the bound check to the in-memory update, across the file write in between, so the
//! chunk bound holds under concurrent ingestion and the disk never disagrees with memory about
//! what was acknowledged; a change runs on its own task, so a request cancelled mid-write cannot
//! split it. The slow parts of an ingestion — tokenizing, chunking, embedding —
//! happen before that lock is taken.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use prometheus::Registry;
use tokio::sync::OnceCell;

use super::{
    DocumentsConfig,
    chunk::{self, TokenStarts},
    metrics::DocumentMetrics,
    persist::{DocumentFiles, PersistError},
    request::{IngestCommand, IngestFields, RetrieveQuery},
    store::{self, DocumentStore, ScoredChunk, SearchParams, StoredChunk, StoredDocument},
};
use crate::{
    engine::EmbeddingHandle,
    error::{EmbedFailure, EmbeddingsError, LoadError},
    model::{layout::ModelLayout, tokenize::TextEncoder},
    request::EmbedOptions,
};

/// Chunks embedded per engine request: big enough to fill forward passes, small enough that
/// other requests interleave with a long document's.
const EMBED_BATCH: usize = 64;

/// A stored document and what embedding it cost.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub document: Arc<StoredDocument>,
    /// Tokens the model read, special tokens included.
    pub tokens: usize,
}

/// The chunks a query found and what embedding it cost.
#[derive(Debug, Clone)]
pub struct Retrieved {
    pub chunks: Vec<ScoredChunk>,
    pub tokens: usize,
}

/// A cloneable handle on one service's documents.
#[derive(Clone)]
pub struct DocumentsHandle {
    inner: Arc<Inner>,
}

struct Inner {
    config: DocumentsConfig,
    engine: EmbeddingHandle,
    model_path: PathBuf,
    store: Mutex<DocumentStore>,
    files: Option<DocumentFiles>,
    changes: tokio::sync::Mutex<()>,
    /// The model's tokenizer, which measures chunks; loaded at the first ingestion.
    text: OnceCell<Arc<TextEncoder>>,
    metrics: DocumentMetrics,
}

impl std::fmt::Debug for DocumentsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentsHandle")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl DocumentsHandle {
    /// The store, with the documents kept in `config.dir` loaded; `model_path` is the served
    /// model's directory, whose tokenizer measures chunks.
    pub async fn open(
        config: DocumentsConfig,
        engine: EmbeddingHandle,
        model_path: PathBuf,
        registry: &Registry,
    ) -> Result<Self, EmbeddingsError> {
        let metrics = DocumentMetrics::register(registry)?;
        let mut store = DocumentStore::new(config.max_chunks_per_namespace);
        let files = match config.dir.clone() {
            Some(dir) => {
                let (files, loaded) = tokio::task::spawn_blocking(move || {
                    let files = DocumentFiles::open(&dir)?;
                    let loaded = files.load()?;
                    Ok::<_, EmbeddingsError>((files, loaded))
                })
                .await
                .map_err(|err| EmbeddingsError::DocumentsTask(err.to_string()))??;
                let stale = loaded
                    .iter()
                    .filter(|(_, d)| d.model != engine.model_id())
                    .count();
                if stale > 0 {
                    tracing::warn!(
                        stale,
                        model = %engine.model_id(),
                        "documents embedded with another model are kept but not searched; \
                         ingest them again to search them"
                    );
                }
                tracing::info!(documents = loaded.len(), "documents loaded");
                for (namespace, document) in loaded {
                    store.insert_unchecked(&namespace, Arc::new(document));
                }
                Some(files)
            }
            None => None,
        };
        metrics.stored(store.documents(), store.chunks());
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                engine,
                model_path,
                store: Mutex::new(store),
                files,
                changes: tokio::sync::Mutex::new(()),
                text: OnceCell::new(),
                metrics,
            }),
        })
    }

    pub fn config(&self) -> &DocumentsConfig {
        &self.inner.config
    }

    /// Chunks, embeds and stores a document for a request naming `model` (empty: the served
    /// one), replacing one with the same id in its namespace.
    pub async fn ingest(
        &self,
        model: &str,
        fields: IngestFields,
    ) -> Result<Ingested, EmbeddingsError> {
        let served = self.inner.engine.served(model)?;
        let text = self.text_encoder().await?;
        let max_chunk_tokens = served
            .spec
            .max_seq_length
            .saturating_sub(text.special_tokens());
        let command = IngestCommand::new(fields, &self.inner.config, max_chunk_tokens)?;
        let (command, spans, tokens) = tokio::task::spawn_blocking(move || {
            let starts = text
                .token_starts(&command.text)
                .map_err(|err| EmbeddingsError::Embed(Arc::new(EmbedFailure::Tokenizer(err))))?;
            let spans = chunk::chunk(&command.text, TokenStarts::new(&starts), command.chunking);
            Ok::<_, EmbeddingsError>((command, spans, starts.len()))
        })
        .await
        .map_err(|err| EmbeddingsError::DocumentsTask(err.to_string()))??;
        let limit = self.inner.config.max_chunks_per_namespace;
        if spans.len() > limit {
            // Refused before embedding: it could never fit.
            return Err(store::NamespaceFull {
                would_hold: spans.len(),
                limit,
            }
            .into());
        }

        let texts: Vec<String> = spans
            .iter()
            .map(|span| command.text[span.range.clone()].to_owned())
            .collect();
        let unit = EmbedOptions {
            normalize: true,
            dimensions: None,
        };
        let mut chunks = Vec::with_capacity(texts.len());
        let mut used = 0;
        for batch in texts.chunks(EMBED_BATCH) {
            let embedded = self.inner.engine.embed(batch.to_vec(), unit).await?;
            used += embedded.total_tokens();
            for ((text, vector), span) in batch
                .iter()
                .zip(embedded.vectors)
                .zip(&spans[chunks.len()..])
            {
                chunks.push(StoredChunk {
                    text: text.clone(),
                    tokens: u32::try_from(span.tokens).unwrap_or(u32::MAX),
                    vector,
                });
            }
        }
        let IngestCommand {
            namespace,
            id,
            title,
            text,
            metadata,
            ..
        } = command;
        let document = StoredDocument {
            id,
            title,
            metadata,
            created_unix: now_unix(),
            bytes: text.len() as u64,
            tokens: tokens as u64,
            model: self.inner.engine.model_id().to_owned(),
            chunks,
        };

        if document.chunks.len() != spans.len() {
            return Err(EmbeddingsError::DocumentsTask(format!(
                "the engine embedded {} of {} chunks",
                document.chunks.len(),
                spans.len()
            )));
        }
        // Committed on its own task: a caller that goes away mid-write cannot leave a document
        // on disk that memory lacks.
        let this = self.clone();
        let document = tokio::spawn(async move { this.commit(namespace, document).await })
            .await
            .map_err(|err| EmbeddingsError::DocumentsTask(err.to_string()))??;
        self.inner.metrics.ingested(document.chunks.len());
        Ok(Ingested {
            document,
            tokens: used,
        })
    }

    /// Checks the bound, writes the file, then updates memory, as one change.
    async fn commit(
        &self,
        namespace: String,
        document: StoredDocument,
    ) -> Result<Arc<StoredDocument>, EmbeddingsError> {
        let document = Arc::new(document);
        let _change = self.inner.changes.lock().await;
        self.lock().check_room(&namespace, &document)?;
        let (on_disk, namespace_copy) = (Arc::clone(&document), namespace.clone());
        self.on_disk(move |files| files.write(&namespace_copy, &on_disk))
            .await?;
        let mut store = self.lock();
        store.insert_unchecked(&namespace, Arc::clone(&document));
        self.inner.metrics.stored(store.documents(), store.chunks());
        Ok(document)
    }

    /// A namespace's documents, oldest first.
    pub fn list(&self, namespace: &str) -> Vec<Arc<StoredDocument>> {
        self.lock().list(namespace)
    }

    pub fn get(&self, namespace: &str, id: &str) -> Result<Arc<StoredDocument>, EmbeddingsError> {
        self.lock()
            .get(namespace, id)
            .ok_or_else(|| EmbeddingsError::DocumentNotFound(id.to_owned()))
    }

    /// Deletes a document, from disk first: once this returns, a restart cannot bring it back.
    pub async fn delete(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Arc<StoredDocument>, EmbeddingsError> {
        let this = self.clone();
        let (namespace, id) = (namespace.to_owned(), id.to_owned());
        // On its own task, like a commit: half a deletion is never left behind.
        tokio::spawn(async move {
            let _change = this.inner.changes.lock().await;
            let document = this.get(&namespace, &id)?;
            let (owned_namespace, owned_id) = (namespace.clone(), document.id.clone());
            this.on_disk(move |files| files.remove(&owned_namespace, &owned_id))
                .await?;
            let mut store = this.lock();
            store.remove(&namespace, &id);
            this.inner.metrics.stored(store.documents(), store.chunks());
            Ok(document)
        })
        .await
        .map_err(|err| EmbeddingsError::DocumentsTask(err.to_string()))?
    }

    /// The chunks closest to the query, best first.
    pub async fn retrieve(&self, query: RetrieveQuery) -> Result<Retrieved, EmbeddingsError> {
        let started = Instant::now();
        let documents = {
            let store = self.lock();
            if query.document_ids.is_empty() {
                store.list(&query.namespace)
            } else {
                let mut found = Vec::with_capacity(query.document_ids.len());
                for (i, id) in query.document_ids.iter().enumerate() {
                    let document = store.get(&query.namespace, id).ok_or_else(|| {
                        EmbeddingsError::invalid(
                            format!("document_ids[{i}]"),
                            format!("There is no document `{id}`."),
                        )
                    })?;
                    if !found
                        .iter()
                        .any(|d: &Arc<StoredDocument>| d.id == document.id)
                    {
                        found.push(document);
                    }
                }
                found
            }
        };
        if documents.is_empty() {
            return Ok(Retrieved {
                chunks: Vec::new(),
                tokens: 0,
            });
        }
        let unit = EmbedOptions {
            normalize: true,
            dimensions: None,
        };
        let mut embedded = self.inner.engine.embed(vec![query.query], unit).await?;
        let tokens = embedded.total_tokens();
        let vector = embedded.vectors.pop().unwrap_or_default();
        let model = self.inner.engine.model_id().to_owned();
        let (top_k, min_score) = (query.top_k, query.min_score);
        let chunks = tokio::task::spawn_blocking(move || {
            let params = SearchParams {
                top_k,
                min_score,
                model: &model,
            };
            store::search(&documents, &vector, params)
        })
        .await
        .map_err(|err| EmbeddingsError::DocumentsTask(err.to_string()))?;
        self.inner.metrics.retrieved(started.elapsed());
        Ok(Retrieved { chunks, tokens })
    }

    /// Runs a file step on the blocking pool; nothing when documents live in memory only.
    async fn on_disk(
        &self,
        step: impl FnOnce(&DocumentFiles) -> Result<(), PersistError> + Send + 'static,
    ) -> Result<(), EmbeddingsError> {
        let Some(files) = self.inner.files.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || step(&files))
            .await
            .map_err(|err| EmbeddingsError::DocumentsTask(err.to_string()))??;
        Ok(())
    }

    /// The tokenizer, loaded from the model directory the first time it is needed.
    async fn text_encoder(&self) -> Result<Arc<TextEncoder>, EmbeddingsError> {
        let path = self.inner.model_path.clone();
        self.inner
            .text
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    let layout = ModelLayout::read(&path)?;
                    let pad_id = u32::try_from(layout.bert.pad_token_id).unwrap_or(0);
                    let text = TextEncoder::load(
                        &layout.tokenizer,
                        layout.max_seq_length,
                        layout.lowercase,
                        pad_id,
                    )?;
                    Ok::<_, LoadError>(Arc::new(text))
                })
                .await
                .map_err(|err| EmbeddingsError::DocumentsTask(err.to_string()))?
                .map_err(EmbeddingsError::from)
            })
            .await
            .cloned()
    }

    /// The store. A panic while it was held leaves it as it was before the panicking step,
    /// since every step is a single map operation, so the poison is cleared.
    fn lock(&self) -> MutexGuard<'_, DocumentStore> {
        self.inner.store.lock().unwrap_or_else(|poisoned| {
            self.inner.store.clear_poison();
            poisoned.into_inner()
        })
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
