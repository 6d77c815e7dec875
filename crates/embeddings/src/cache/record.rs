//! One entry of the shared log, as the fields of a Redis Stream entry, pure.
//!
//! | field | value |
//! |---|---|
//! | `f` | format version, `1`; entries of another version are skipped |
//! | `r` | the replica that stored it (a random id per process), so it skips its own |
//! | `ns`, `m` | the namespace (tenant and generation parameters) and the generating model |
//! | `k` | the 32-byte SHA-256 exact-match key of the normalised prompt |
//! | `v` | the prompt's unit vector as little-endian `f32`s; empty when the model truncated it |
//! | `j` | the cached response JSON |
//! | `c`, `e` | created and expires, Unix milliseconds |
//!
//! The prompt itself is never written, only its digest and its embedding.

use std::{collections::HashMap, sync::Arc};

use super::{prompt::PromptKey, semantic::NamespaceKey};

/// The version written in `f`.
pub const FORMAT: &str = "1";

/// A stored entry as replicas share it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedEntry {
    pub replica: Arc<str>,
    pub namespace: NamespaceKey,
    pub prompt: PromptKey,
    /// `None` for an entry only an exact lookup may find.
    pub vector: Option<Vec<f32>>,
    pub response_json: Arc<str>,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// Why a log entry could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("written in format {0:?}, not {FORMAT}")]
    Format(String),
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{0}` is malformed")]
    Malformed(&'static str),
}

impl SharedEntry {
    /// The stream entry's fields and values, in the order written.
    pub fn fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let vector = self
            .vector
            .as_deref()
            .unwrap_or_default()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        vec![
            ("f", FORMAT.as_bytes().to_vec()),
            ("r", self.replica.as_bytes().to_vec()),
            ("ns", self.namespace.namespace.as_bytes().to_vec()),
            ("m", self.namespace.model.as_bytes().to_vec()),
            ("k", self.prompt.as_bytes().to_vec()),
            ("v", vector),
            ("j", self.response_json.as_bytes().to_vec()),
            ("c", self.created_ms.to_string().into_bytes()),
            ("e", self.expires_ms.to_string().into_bytes()),
        ]
    }

    /// Reads back what [`Self::fields`] wrote.
    pub fn parse(fields: &HashMap<String, Vec<u8>>) -> Result<Self, RecordError> {
        let format = text(fields, "f")?;
        if format != FORMAT {
            return Err(RecordError::Format(format.to_owned()));
        }
        let key: [u8; 32] = field(fields, "k")?
            .try_into()
            .map_err(|_| RecordError::Malformed("k"))?;
        let vector = field(fields, "v")?;
        if vector.len() % 4 != 0 {
            return Err(RecordError::Malformed("v"));
        }
        let vector: Vec<f32> = vector
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Self {
            replica: text(fields, "r")?.into(),
            namespace: NamespaceKey {
                namespace: text(fields, "ns")?.to_owned(),
                model: text(fields, "m")?.to_owned(),
            },
            prompt: PromptKey::from_bytes(key),
            vector: (!vector.is_empty()).then_some(vector),
            response_json: text(fields, "j")?.into(),
            created_ms: millis(fields, "c")?,
            expires_ms: millis(fields, "e")?,
        })
    }
}

fn field<'a>(
    fields: &'a HashMap<String, Vec<u8>>,
    name: &'static str,
) -> Result<&'a [u8], RecordError> {
    fields
        .get(name)
        .map(Vec::as_slice)
        .ok_or(RecordError::Missing(name))
}

fn text<'a>(
    fields: &'a HashMap<String, Vec<u8>>,
    name: &'static str,
) -> Result<&'a str, RecordError> {
    std::str::from_utf8(field(fields, name)?).map_err(|_| RecordError::Malformed(name))
}

fn millis(fields: &HashMap<String, Vec<u8>>, name: &'static str) -> Result<u64, RecordError> {
    text(fields, name)?
        .parse()
        .map_err(|_| RecordError::Malformed(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vector: Option<Vec<f32>>) -> SharedEntry {
        SharedEntry {
            replica: "replica-1".into(),
            namespace: NamespaceKey {
                namespace: "tenant:t=0.7".to_owned(),
                model: "llama".to_owned(),
            },
            prompt: PromptKey::of("reset my password"),
            vector,
            response_json: r#"{"a":"é"}"#.into(),
            created_ms: 1_700_000_000_000,
            expires_ms: 1_700_000_360_000,
        }
    }

    fn map(entry: &SharedEntry) -> HashMap<String, Vec<u8>> {
        entry
            .fields()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }

    #[test]
    fn entries_read_back_as_written_with_or_without_a_vector() {
        for vector in [Some(vec![0.6, -0.8, f32::MIN_POSITIVE]), None] {
            let entry = entry(vector);
            assert_eq!(SharedEntry::parse(&map(&entry)).unwrap(), entry);
        }
    }

    #[test]
    fn other_formats_and_damaged_fields_are_refused() {
        let good = map(&entry(Some(vec![1.0, 0.0])));
        let with = |name: &str, value: &[u8]| {
            let mut fields = good.clone();
            fields.insert(name.to_owned(), value.to_vec());
            SharedEntry::parse(&fields).unwrap_err()
        };
        assert_eq!(with("f", b"2"), RecordError::Format("2".to_owned()));
        assert_eq!(with("k", &[0; 31]), RecordError::Malformed("k"));
        assert_eq!(with("v", &[0; 5]), RecordError::Malformed("v"));
        assert_eq!(with("e", b"soon"), RecordError::Malformed("e"));
        assert_eq!(with("j", &[0xff]), RecordError::Malformed("j"));
        let mut missing = good.clone();
        missing.remove("ns");
        assert_eq!(
            SharedEntry::parse(&missing).unwrap_err(),
            RecordError::Missing("ns")
        );
    }
}
