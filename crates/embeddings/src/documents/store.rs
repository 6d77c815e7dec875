//! The document store, pure: namespaces of documents with their embedded chunks, the chunk bound
//! per namespace, and the exact cosine search.
//!
//! Documents are shared as `Arc`s, so a search takes a snapshot of a namespace under the lock in
//! a few pointer copies and scores it outside. The search is an exact scan: a tenant's store is
//! bounded (`max_chunks_per_namespace`, 20,000 by default), and scanning that many 384-value
//! vectors takes a few milliseconds, which an approximate index would not repay.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

/// One chunk of a document, embedded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredChunk {
    /// A slice of the document's text.
    pub text: String,
    /// Tokens of `text`, by the model's tokenizer.
    pub tokens: u32,
    /// The chunk's unit-length embedding.
    #[serde(with = "super::persist::vector_base64")]
    pub vector: Vec<f32>,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDocument {
    pub id: String,
    pub title: String,
    pub metadata: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created_unix: i64,
    /// Size of the text in bytes.
    pub bytes: u64,
    /// Tokens of the text.
    pub tokens: u64,
    /// The model the chunks were embedded with: only documents of the served model are searched.
    pub model: String,
    pub chunks: Vec<StoredChunk>,
}

/// A chunk found by a search.
#[derive(Debug, Clone)]
pub struct ScoredChunk {
    pub document: Arc<StoredDocument>,
    pub chunk_index: usize,
    /// Cosine similarity to the query.
    pub score: f32,
}

impl ScoredChunk {
    pub fn text(&self) -> &str {
        &self.document.chunks[self.chunk_index].text
    }
}

/// A namespace would hold more chunks than allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this namespace would hold {would_hold} chunks, more than the limit of {limit}; delete \
     documents or split them out to another key"
)]
pub struct NamespaceFull {
    pub would_hold: usize,
    pub limit: usize,
}

#[derive(Debug, Default)]
struct Namespace {
    documents: HashMap<String, Arc<StoredDocument>>,
    chunks: usize,
}

/// Every namespace's documents.
#[derive(Debug)]
pub struct DocumentStore {
    namespaces: HashMap<String, Namespace>,
    max_chunks_per_namespace: usize,
}

impl DocumentStore {
    pub fn new(max_chunks_per_namespace: usize) -> Self {
        Self {
            namespaces: HashMap::new(),
            max_chunks_per_namespace,
        }
    }

    /// Documents in all namespaces.
    pub fn documents(&self) -> usize {
        self.namespaces.values().map(|ns| ns.documents.len()).sum()
    }

    /// Chunks in all namespaces.
    pub fn chunks(&self) -> usize {
        self.namespaces.values().map(|ns| ns.chunks).sum()
    }

    /// Whether storing `document` in `namespace` stays within the chunk bound, counting the
    /// chunks of a document it would replace as gone.
    pub fn check_room(
        &self,
        namespace: &str,
        document: &StoredDocument,
    ) -> Result<(), NamespaceFull> {
        let (held, replaced) = match self.namespaces.get(namespace) {
            Some(ns) => (
                ns.chunks,
                ns.documents.get(&document.id).map_or(0, |d| d.chunks.len()),
            ),
            None => (0, 0),
        };
        let would_hold = held - replaced + document.chunks.len();
        if would_hold > self.max_chunks_per_namespace {
            return Err(NamespaceFull {
                would_hold,
                limit: self.max_chunks_per_namespace,
            });
        }
        Ok(())
    }

    /// Stores `document`, replacing the one with its id; returns the replaced one.
    pub fn insert(
        &mut self,
        namespace: &str,
        document: StoredDocument,
    ) -> Result<Option<Arc<StoredDocument>>, NamespaceFull> {
        self.check_room(namespace, &document)?;
        Ok(self.insert_unchecked(namespace, Arc::new(document)))
    }

    /// Stores `document` whatever the bound: for documents loaded from disk, which were within
    /// it when stored.
    pub fn insert_unchecked(
        &mut self,
        namespace: &str,
        document: Arc<StoredDocument>,
    ) -> Option<Arc<StoredDocument>> {
        let ns = self.namespaces.entry(namespace.to_owned()).or_default();
        ns.chunks += document.chunks.len();
        let replaced = ns.documents.insert(document.id.clone(), document);
        if let Some(old) = &replaced {
            ns.chunks -= old.chunks.len();
        }
        replaced
    }

    /// Removes a document; `None` when the namespace has none by that id.
    pub fn remove(&mut self, namespace: &str, id: &str) -> Option<Arc<StoredDocument>> {
        let ns = self.namespaces.get_mut(namespace)?;
        let removed = ns.documents.remove(id)?;
        ns.chunks -= removed.chunks.len();
        if ns.documents.is_empty() {
            self.namespaces.remove(namespace);
        }
        Some(removed)
    }

    pub fn get(&self, namespace: &str, id: &str) -> Option<Arc<StoredDocument>> {
        self.namespaces.get(namespace)?.documents.get(id).cloned()
    }

    /// A namespace's documents, oldest first (then by id).
    pub fn list(&self, namespace: &str) -> Vec<Arc<StoredDocument>> {
        let mut documents: Vec<Arc<StoredDocument>> = self
            .namespaces
            .get(namespace)
            .map(|ns| ns.documents.values().cloned().collect())
            .unwrap_or_default();
        documents.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
        documents
    }
}

/// What a search asks for.
#[derive(Debug, Clone, Copy)]
pub struct SearchParams<'a> {
    pub top_k: usize,
    pub min_score: Option<f32>,
    /// Documents embedded with another model are skipped: their vectors live in another space.
    pub model: &'a str,
}

/// The `top_k` chunks of `documents` most similar to `query` (a unit vector), best first; ties
/// in document and chunk order, so equal stores answer equally.
pub fn search(
    documents: &[Arc<StoredDocument>],
    query: &[f32],
    params: SearchParams<'_>,
) -> Vec<ScoredChunk> {
    let mut scored: Vec<(f32, usize, usize)> = Vec::new();
    for (d, document) in documents.iter().enumerate() {
        if document.model != params.model {
            continue;
        }
        for (c, chunk) in document.chunks.iter().enumerate() {
            if chunk.vector.len() != query.len() {
                continue;
            }
            let score: f32 = chunk.vector.iter().zip(query).map(|(a, b)| a * b).sum();
            if params.min_score.is_none_or(|min| score >= min) {
                scored.push((score, d, c));
            }
        }
    }
    let order = |a: &(f32, usize, usize), b: &(f32, usize, usize)| {
        b.0.total_cmp(&a.0)
            .then_with(|| documents[a.1].id.cmp(&documents[b.1].id))
            .then(a.2.cmp(&b.2))
    };
    if scored.len() > params.top_k && params.top_k > 0 {
        scored.select_nth_unstable_by(params.top_k - 1, order);
    }
    scored.truncate(params.top_k);
    scored.sort_by(order);
    scored
        .into_iter()
        .map(|(score, d, c)| ScoredChunk {
            document: Arc::clone(&documents[d]),
            chunk_index: c,
            score,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(id: &str, created_unix: i64, vectors: &[[f32; 2]]) -> StoredDocument {
        StoredDocument {
            id: id.to_owned(),
            title: format!("title of {id}"),
            metadata: BTreeMap::new(),
            created_unix,
            bytes: 10,
            tokens: 3,
            model: "m".to_owned(),
            chunks: vectors
                .iter()
                .enumerate()
                .map(|(i, v)| StoredChunk {
                    text: format!("{id} chunk {i}"),
                    tokens: 2,
                    vector: v.to_vec(),
                })
                .collect(),
        }
    }

    fn params(top_k: usize, min_score: Option<f32>) -> SearchParams<'static> {
        SearchParams {
            top_k,
            min_score,
            model: "m",
        }
    }

    #[test]
    fn namespaces_never_see_each_other() {
        let mut store = DocumentStore::new(100);
        store
            .insert("tenant-a", document("doc_1", 1, &[[1.0, 0.0]]))
            .unwrap();
        assert_eq!(store.list("tenant-a").len(), 1);
        assert!(store.list("tenant-b").is_empty());
        assert!(store.get("tenant-b", "doc_1").is_none());
        assert!(store.remove("tenant-b", "doc_1").is_none());
        assert!(store.get("tenant-a", "doc_1").is_some());
    }

    #[test]
    fn replace_and_delete_keep_the_chunk_count() {
        let mut store = DocumentStore::new(3);
        store
            .insert("a", document("d1", 1, &[[1.0, 0.0], [0.0, 1.0]]))
            .unwrap();
        let full = store
            .insert("a", document("d2", 2, &[[1.0, 0.0], [0.0, 1.0]]))
            .unwrap_err();
        assert_eq!(
            full,
            NamespaceFull {
                would_hold: 4,
                limit: 3
            }
        );
        // Replacing d1 frees its two chunks first.
        let replaced = store
            .insert(
                "a",
                document("d1", 3, &[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
            )
            .unwrap();
        assert_eq!(replaced.unwrap().chunks.len(), 2);
        assert_eq!(store.chunks(), 3);
        // Another namespace has its own bound.
        store.insert("b", document("d1", 1, &[[1.0, 0.0]])).unwrap();
        assert_eq!(store.remove("a", "d1").unwrap().chunks.len(), 3);
        assert_eq!(store.chunks(), 1);
        assert_eq!(store.documents(), 1);
    }

    #[test]
    fn lists_oldest_first() {
        let mut store = DocumentStore::new(100);
        for (id, at) in [("c", 5), ("a", 9), ("b", 5)] {
            store.insert("n", document(id, at, &[[1.0, 0.0]])).unwrap();
        }
        let ids: Vec<String> = store.list("n").iter().map(|d| d.id.clone()).collect();
        assert_eq!(ids, vec!["b", "c", "a"]);
    }

    #[test]
    fn search_ranks_by_cosine_with_k_threshold_and_model() {
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let docs = vec![
            Arc::new(document("x", 1, &[[1.0, 0.0], [0.0, 1.0]])),
            Arc::new(document("y", 2, &[[s, s], [-1.0, 0.0]])),
        ];
        let query = [1.0, 0.0];
        let found = search(&docs, &query, params(3, None));
        let got: Vec<(&str, usize)> = found
            .iter()
            .map(|c| (c.document.id.as_str(), c.chunk_index))
            .collect();
        assert_eq!(got, vec![("x", 0), ("y", 0), ("x", 1)]);
        assert!((found[1].score - s).abs() < 1e-6);
        assert_eq!(found[0].text(), "x chunk 0");

        let above = search(&docs, &query, params(10, Some(0.5)));
        assert_eq!(above.len(), 2);
        assert_eq!(search(&docs, &query, params(10, None)).len(), 4);

        let mut other = document("z", 3, &[[1.0, 0.0]]);
        other.model = "another-model".to_owned();
        let with_other = [docs.clone(), vec![Arc::new(other)]].concat();
        assert!(
            search(&with_other, &query, params(10, None))
                .iter()
                .all(|c| c.document.id != "z")
        );
    }

    #[test]
    fn equal_scores_come_in_document_then_chunk_order() {
        let docs = vec![
            Arc::new(document("b", 1, &[[1.0, 0.0], [1.0, 0.0]])),
            Arc::new(document("a", 2, &[[1.0, 0.0]])),
        ];
        let got: Vec<(String, usize)> = search(&docs, &[1.0, 0.0], params(2, None))
            .into_iter()
            .map(|c| (c.document.id.clone(), c.chunk_index))
            .collect();
        assert_eq!(got, vec![("a".to_owned(), 0), ("b".to_owned(), 0)]);
    }
}
