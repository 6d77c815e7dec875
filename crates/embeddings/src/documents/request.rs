//! The checks on document requests and the defaults they fall back on, pure. Every refusal is
//! an INVALID_ARGUMENT naming the request field at fault.

use std::collections::BTreeMap;

use super::{DocumentsConfig, chunk::ChunkParams};
use crate::error::EmbeddingsError;

/// Longest document id, title, metadata key and value, in bytes; most metadata pairs. The
/// metadata bounds are OpenAI's for its `metadata` fields.
pub const MAX_ID_BYTES: usize = 64;
pub const MAX_TITLE_BYTES: usize = 512;
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_BYTES: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 512;
/// Most ids in a `Retrieve` filter.
pub const MAX_FILTER_IDS: usize = 256;
/// Smallest chunk a request may ask for: below it a chunk holds too little to mean anything.
pub const MIN_CHUNK_TOKENS: usize = 16;

/// A checked `IngestDocument`.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestCommand {
    pub namespace: String,
    /// Generated when the request gave none.
    pub id: String,
    pub title: String,
    pub text: String,
    pub metadata: BTreeMap<String, String>,
    pub chunking: ChunkParams,
}

/// What an `IngestDocument` request carries, before the checks.
#[derive(Debug, Clone, Default)]
pub struct IngestFields {
    pub namespace: String,
    pub document_id: Option<String>,
    pub title: String,
    pub text: String,
    pub metadata: BTreeMap<String, String>,
    pub chunk_tokens: u32,
    pub chunk_overlap_tokens: Option<u32>,
}

impl IngestCommand {
    /// `max_chunk_tokens`: the model's input length less its special tokens, the most a chunk
    /// can hold without the model cutting it.
    pub fn new(
        fields: IngestFields,
        config: &DocumentsConfig,
        max_chunk_tokens: usize,
    ) -> Result<Self, EmbeddingsError> {
        required("namespace", &fields.namespace)?;
        let id = match fields.document_id {
            Some(id) => {
                check_id("document_id", &id)?;
                id
            }
            None => format!("doc_{}", uuid::Uuid::new_v4().simple()),
        };
        if fields.title.len() > MAX_TITLE_BYTES {
            return Err(EmbeddingsError::invalid(
                "title",
                format!(
                    "`title` may be at most {MAX_TITLE_BYTES} bytes, got {}.",
                    fields.title.len()
                ),
            ));
        }
        if fields.text.trim().is_empty() {
            return Err(EmbeddingsError::invalid(
                "text",
                "`text` must hold some non-whitespace text.",
            ));
        }
        if fields.text.len() > config.max_document_bytes {
            return Err(EmbeddingsError::invalid(
                "text",
                format!(
                    "`text` may be at most {} bytes, got {}; split the document.",
                    config.max_document_bytes,
                    fields.text.len()
                ),
            ));
        }
        check_metadata(&fields.metadata)?;
        let chunking = chunking(
            fields.chunk_tokens,
            fields.chunk_overlap_tokens,
            config,
            max_chunk_tokens,
        )?;
        Ok(Self {
            namespace: fields.namespace,
            id,
            title: fields.title,
            text: fields.text,
            metadata: fields.metadata,
            chunking,
        })
    }
}

fn chunking(
    chunk_tokens: u32,
    overlap: Option<u32>,
    config: &DocumentsConfig,
    max_chunk_tokens: usize,
) -> Result<ChunkParams, EmbeddingsError> {
    let max_chunk_tokens = max_chunk_tokens.max(1);
    let max_tokens = match usize::try_from(chunk_tokens).unwrap_or(usize::MAX) {
        0 => config.chunk_tokens.clamp(1, max_chunk_tokens),
        n if (MIN_CHUNK_TOKENS..=max_chunk_tokens).contains(&n) => n,
        n => {
            return Err(EmbeddingsError::invalid(
                "chunk_tokens",
                format!(
                    "`chunk_tokens` must be between {MIN_CHUNK_TOKENS} and {max_chunk_tokens} \
                     (the model's input length), got {n}."
                ),
            ));
        }
    };
    let overlap_tokens = match overlap {
        // The configured overlap, in proportion when the chunks are smaller than configured.
        None => {
            let scaled = config.chunk_overlap_tokens * max_tokens / config.chunk_tokens.max(1);
            scaled.min(config.chunk_overlap_tokens).min(max_tokens / 2)
        }
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > max_tokens / 2 {
                return Err(EmbeddingsError::invalid(
                    "chunk_overlap_tokens",
                    format!(
                        "`chunk_overlap_tokens` may be at most half a chunk ({}), got {n}.",
                        max_tokens / 2
                    ),
                ));
            }
            n
        }
    };
    Ok(ChunkParams {
        max_tokens,
        overlap_tokens,
    })
}

/// A checked `Retrieve`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrieveQuery {
    pub namespace: String,
    pub query: String,
    pub top_k: usize,
    pub min_score: Option<f32>,
    /// Empty: every document of the namespace.
    pub document_ids: Vec<String>,
}

impl RetrieveQuery {
    pub fn new(
        namespace: String,
        query: String,
        top_k: u32,
        min_score: Option<f32>,
        document_ids: Vec<String>,
        config: &DocumentsConfig,
    ) -> Result<Self, EmbeddingsError> {
        required("namespace", &namespace)?;
        if query.trim().is_empty() {
            return Err(EmbeddingsError::invalid(
                "query",
                "`query` must hold some non-whitespace text.",
            ));
        }
        let top_k = match usize::try_from(top_k).unwrap_or(usize::MAX) {
            0 => config.default_top_k.max(1),
            k if k <= config.max_top_k => k,
            k => {
                return Err(EmbeddingsError::invalid(
                    "top_k",
                    format!(
                        "`top_k` must be between 1 and {}, got {k}.",
                        config.max_top_k
                    ),
                ));
            }
        };
        if let Some(score) = min_score
            && !(-1.0..=1.0).contains(&score)
        {
            return Err(EmbeddingsError::invalid(
                "min_score",
                format!("`min_score` must be between -1 and 1, got {score}."),
            ));
        }
        if document_ids.len() > MAX_FILTER_IDS {
            return Err(EmbeddingsError::invalid(
                "document_ids",
                format!(
                    "`document_ids` may name at most {MAX_FILTER_IDS} documents, got {}.",
                    document_ids.len()
                ),
            ));
        }
        for (i, id) in document_ids.iter().enumerate() {
            check_id(&format!("document_ids[{i}]"), id)?;
        }
        Ok(Self {
            namespace,
            query,
            top_k,
            min_score,
            document_ids,
        })
    }
}

fn required(param: &str, value: &str) -> Result<(), EmbeddingsError> {
    if value.is_empty() {
        return Err(EmbeddingsError::invalid(
            param,
            format!("`{param}` is required."),
        ));
    }
    Ok(())
}

/// Ids name files on disk: letters, digits, `_`, `-` and `.` (not leading), at most
/// [`MAX_ID_BYTES`].
pub fn check_id(param: &str, id: &str) -> Result<(), EmbeddingsError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !valid {
        return Err(EmbeddingsError::invalid(
            param,
            format!(
                "`{param}` must be 1 to {MAX_ID_BYTES} letters, digits, `_`, `-` or `.` \
                 (not leading)."
            ),
        ));
    }
    Ok(())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), EmbeddingsError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(EmbeddingsError::invalid(
            "metadata",
            format!(
                "`metadata` may hold at most {MAX_METADATA_PAIRS} pairs, got {}.",
                metadata.len()
            ),
        ));
    }
    for (key, value) in metadata {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_BYTES {
            return Err(EmbeddingsError::invalid(
                "metadata",
                format!("`metadata` keys must be 1 to {MAX_METADATA_KEY_BYTES} bytes."),
            ));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(EmbeddingsError::invalid(
                format!("metadata.{key}"),
                format!("`metadata` values may be at most {MAX_METADATA_VALUE_BYTES} bytes."),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(err: EmbeddingsError) -> String {
        match err {
            EmbeddingsError::InvalidArgument { param, .. } => param,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn fields(text: &str) -> IngestFields {
        IngestFields {
            namespace: "ns".to_owned(),
            text: text.to_owned(),
            ..Default::default()
        }
    }

    fn ingest(fields: IngestFields) -> Result<IngestCommand, EmbeddingsError> {
        IngestCommand::new(fields, &DocumentsConfig::default(), 254)
    }

    #[test]
    fn ingest_defaults_generate_an_id_and_the_configured_chunking() {
        let command = ingest(fields("Hello.")).unwrap();
        assert!(command.id.starts_with("doc_"), "{}", command.id);
        assert!(check_id("id", &command.id).is_ok());
        assert_eq!(
            command.chunking,
            ChunkParams {
                max_tokens: 200,
                overlap_tokens: 40
            }
        );
        // A model with a short input length caps the default chunk, overlap in proportion.
        let short = IngestCommand::new(fields("Hello."), &DocumentsConfig::default(), 100)
            .unwrap()
            .chunking;
        assert_eq!(
            short,
            ChunkParams {
                max_tokens: 100,
                overlap_tokens: 20
            }
        );
    }

    #[test]
    fn ingest_limits_name_their_param() {
        assert_eq!(param(ingest(fields("  \n")).unwrap_err()), "text");
        let big = "x".repeat(DocumentsConfig::default().max_document_bytes + 1);
        assert_eq!(param(ingest(fields(&big)).unwrap_err()), "text");
        let mut bad_id = fields("x");
        bad_id.document_id = Some("../etc/passwd".to_owned());
        assert_eq!(param(ingest(bad_id).unwrap_err()), "document_id");
        let mut long_title = fields("x");
        long_title.title = "t".repeat(MAX_TITLE_BYTES + 1);
        assert_eq!(param(ingest(long_title).unwrap_err()), "title");
        let mut many = fields("x");
        many.metadata = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(param(ingest(many).unwrap_err()), "metadata");
        let mut long_value = fields("x");
        long_value
            .metadata
            .insert("k".to_owned(), "v".repeat(MAX_METADATA_VALUE_BYTES + 1));
        assert_eq!(param(ingest(long_value).unwrap_err()), "metadata.k");
        let mut no_namespace = fields("x");
        no_namespace.namespace.clear();
        assert_eq!(param(ingest(no_namespace).unwrap_err()), "namespace");
    }

    #[test]
    fn chunk_sizes_must_fit_the_model() {
        let with = |tokens: u32, overlap: Option<u32>| {
            let mut f = fields("x");
            f.chunk_tokens = tokens;
            f.chunk_overlap_tokens = overlap;
            ingest(f)
        };
        assert_eq!(param(with(255, None).unwrap_err()), "chunk_tokens");
        assert_eq!(param(with(8, None).unwrap_err()), "chunk_tokens");
        assert_eq!(with(254, Some(0)).unwrap().chunking.overlap_tokens, 0);
        assert_eq!(with(64, None).unwrap().chunking.overlap_tokens, 12);
        assert_eq!(
            param(with(64, Some(33)).unwrap_err()),
            "chunk_overlap_tokens"
        );
    }

    #[test]
    fn retrieve_checks_top_k_score_and_filter() {
        let config = DocumentsConfig::default();
        let query = |top_k, min_score, ids: Vec<&str>| {
            RetrieveQuery::new(
                "ns".to_owned(),
                "what?".to_owned(),
                top_k,
                min_score,
                ids.into_iter().map(str::to_owned).collect(),
                &config,
            )
        };
        assert_eq!(query(0, None, vec![]).unwrap().top_k, 4);
        assert_eq!(param(query(51, None, vec![]).unwrap_err()), "top_k");
        assert_eq!(param(query(3, Some(1.5), vec![]).unwrap_err()), "min_score");
        assert_eq!(
            param(query(3, Some(f32::NAN), vec![]).unwrap_err()),
            "min_score"
        );
        assert_eq!(
            param(query(3, None, vec!["doc_1", "bad id"]).unwrap_err()),
            "document_ids[1]"
        );
        let empty = RetrieveQuery::new("ns".to_owned(), " ".to_owned(), 1, None, vec![], &config);
        assert_eq!(param(empty.unwrap_err()), "query");
    }
}
