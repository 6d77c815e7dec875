//! Documents on disk: one JSON file per document, `<dir>/<namespace digest>/<id>.json`, written
//! to a temporary file, flushed to disk and renamed over the old one, so a crash leaves either
//! the old document or the new, never half of one. The namespace (an API key id) names the
//! folder only through a digest, since it may hold characters a file name cannot; the file
//! carries the namespace itself. Vectors are stored as base64 of little-endian `f32`s, a third
//! of the size of JSON numbers and exact.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::store::StoredDocument;

/// The version of the file layout; files of another one are skipped with a warning.
const FORMAT: u32 = 1;
const EXTENSION: &str = "json";
const TEMP_SUFFIX: &str = ".tmp";

#[derive(Serialize, Deserialize)]
struct DocumentFile<T> {
    format: u32,
    namespace: String,
    document: T,
}

/// Why a document could not be written or removed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PersistError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The folder documents are kept in.
#[derive(Debug, Clone)]
pub struct DocumentFiles {
    dir: PathBuf,
}

impl DocumentFiles {
    /// Uses `dir`, creating it when missing.
    pub fn open(dir: &Path) -> Result<Self, PersistError> {
        fs::create_dir_all(dir).map_err(|source| PersistError {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Every readable document, with its namespace. Unreadable files are logged and left in
    /// place for the operator, leftover temporary files removed.
    pub fn load(&self) -> Result<Vec<(String, StoredDocument)>, PersistError> {
        let mut documents = Vec::new();
        for folder in read_dir(&self.dir)? {
            if !folder.is_dir() {
                continue;
            }
            for path in read_dir(&folder)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(TEMP_SUFFIX) {
                    // A write that never reached its rename.
                    let _ = fs::remove_file(&path);
                    continue;
                }
                if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
                    continue;
                }
                match read_document(&path) {
                    Ok(found) => documents.push(found),
                    Err(reason) => tracing::warn!(
                        path = %path.display(),
                        %reason,
                        "skipping an unreadable document file"
                    ),
                }
            }
        }
        Ok(documents)
    }

    /// Writes `document` durably, replacing its previous version.
    pub fn write(&self, namespace: &str, document: &StoredDocument) -> Result<(), PersistError> {
        let folder = self.folder(namespace);
        let path = folder.join(format!("{}.{EXTENSION}", document.id));
        let temp = folder.join(format!("{}.{EXTENSION}{TEMP_SUFFIX}", document.id));
        let at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PersistError { path, source }
        };
        fs::create_dir_all(&folder).map_err(at(&folder))?;
        let json = serde_json::to_vec(&DocumentFile {
            format: FORMAT,
            namespace: namespace.to_owned(),
            document,
        })
        .map_err(|err| io::Error::other(err.to_string()))
        .map_err(at(&path))?;
        let mut file = fs::File::create(&temp).map_err(at(&temp))?;
        file.write_all(&json).map_err(at(&temp))?;
        file.sync_all().map_err(at(&temp))?;
        drop(file);
        fs::rename(&temp, &path).map_err(at(&path))?;
        sync_dir(&folder);
        Ok(())
    }

    /// Removes a document's file; a file already gone is not an error.
    pub fn remove(&self, namespace: &str, id: &str) -> Result<(), PersistError> {
        let folder = self.folder(namespace);
        let path = folder.join(format!("{id}.{EXTENSION}"));
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&folder);
                Ok(())
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PersistError { path, source }),
        }
    }

    fn folder(&self, namespace: &str) -> PathBuf {
        let digest = Sha256::digest(namespace.as_bytes());
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(name)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, PersistError> {
    let entries = fs::read_dir(dir).map_err(|source| PersistError {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

fn read_document(path: &Path) -> Result<(String, StoredDocument), String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let file: DocumentFile<StoredDocument> =
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if file.format != FORMAT {
        return Err(format!("file format {} (expected {FORMAT})", file.format));
    }
    Ok((file.namespace, file.document))
}

/// Makes a rename or removal in `dir` durable. Best effort: not every platform can open a
/// directory for syncing, and the file's own data is already on disk.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// `serde(with)` for vectors as base64 of little-endian `f32`s.
pub(crate) mod vector_base64 {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(vector: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = STANDARD.decode(text).map_err(D::Error::custom)?;
        if bytes.len() % 4 != 0 {
            return Err(D::Error::custom("a vector's bytes are not whole f32s"));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::documents::store::StoredChunk;

    fn document(id: &str) -> StoredDocument {
        StoredDocument {
            id: id.to_owned(),
            title: "Tïtle".to_owned(),
            metadata: BTreeMap::from([("source".to_owned(), "wiki".to_owned())]),
            created_unix: 1_700_000_000,
            bytes: 12,
            tokens: 4,
            model: "m".to_owned(),
            chunks: vec![StoredChunk {
                text: "some text ✓".to_owned(),
                tokens: 4,
                vector: vec![0.6, -0.8, f32::MIN_POSITIVE, 1.0 / 3.0],
            }],
        }
    }

    #[test]
    fn documents_survive_a_reload_exactly_and_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        let files = DocumentFiles::open(&dir.path().join("documents")).unwrap();
        files
            .write("key/1 with: odd chars", &document("doc_a"))
            .unwrap();
        files.write("other", &document("doc_b")).unwrap();
        let mut changed = document("doc_a");
        changed.title = "New".to_owned();
        files.write("key/1 with: odd chars", &changed).unwrap();

        let reopened = DocumentFiles::open(&dir.path().join("documents")).unwrap();
        let mut loaded = reopened.load().unwrap();
        loaded.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            loaded,
            vec![
                ("key/1 with: odd chars".to_owned(), changed),
                ("other".to_owned(), document("doc_b"))
            ]
        );

        reopened.remove("other", "doc_b").unwrap();
        reopened.remove("other", "doc_b").unwrap();
        let loaded = reopened.load().unwrap();
        assert_eq!(loaded.len(), 1);
    }

    #[test]
    fn broken_and_temporary_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let files = DocumentFiles::open(dir.path()).unwrap();
        files.write("n", &document("doc_ok")).unwrap();
        let folder = files.folder("n");
        fs::write(folder.join("doc_bad.json"), b"{not json").unwrap();
        fs::write(folder.join("doc_half.json.tmp"), b"{\"format\":").unwrap();
        let loaded = files.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].1.id, "doc_ok");
        assert!(!folder.join("doc_half.json.tmp").exists());
        assert!(
            folder.join("doc_bad.json").exists(),
            "left for the operator"
        );
    }
}
