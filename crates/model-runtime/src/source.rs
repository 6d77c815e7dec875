//! Naming a model and resolving it to local files.
//!
//! A model is named by a local path (a `.gguf` file, or a directory holding `config.json`,
//! `tokenizer.json`, `tokenizer_config.json` and safetensors weights) or by a Hugging Face repo
//! id: `owner/name` for a safetensors repo, `owner/name:file.gguf` for one GGUF file of a repo,
//! `owner/name:Q4_K_M` for the GGUF file of that quantisation.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use hf_hub::{Cache, Repo, RepoType, api::tokio::ApiBuilder};

/// Files a safetensors model directory must have besides its weights.
const SAFETENSORS_REQUIRED: [&str; 3] = ["config.json", "tokenizer.json", "tokenizer_config.json"];
/// Files used when present: generation defaults, and the sentence-transformers description of
/// an embedding model (its modules, pooling and sequence length).
const SAFETENSORS_OPTIONAL: [&str; 5] = [
    "generation_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];
const SINGLE_WEIGHTS: &str = "model.safetensors";
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// A model as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A path on this machine.
    Local(PathBuf),
    /// A Hugging Face model repository.
    Hub {
        repo: String,
        /// What follows `:`: a GGUF file name or a quantisation tag. `None` for safetensors.
        file: Option<String>,
    },
}

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Cache directory; the standard Hugging Face cache (`HF_HOME`, `~/.cache/huggingface/hub`)
    /// when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Never contact the hub; use only cached files.
    pub offline: bool,
    /// Branch, tag or commit.
    pub revision: String,
    /// Show a download progress bar.
    pub progress: bool,
    /// How long to wait for the hub to answer its first request before giving up.
    pub connect_timeout: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            offline: false,
            revision: "main".to_owned(),
            progress: true,
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// A model's files on local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// A `.gguf` file or a safetensors model directory.
    pub path: PathBuf,
    /// The id to serve the model under unless configured otherwise.
    pub default_id: String,
}

/// Why a model could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "model `{0}` is neither an existing path nor a Hugging Face repo id (`owner/name`, `owner/name:file.gguf` or `owner/name:QUANT`)"
    )]
    Unrecognised(String),
    #[error("{path} is not a model: {reason}")]
    NotAModel { path: PathBuf, reason: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("repo `{repo}` has no GGUF file matching `{wanted}`; it has: {available}")]
    NoMatchingFile {
        repo: String,
        wanted: String,
        available: String,
    },
    #[error("downloading `{file}` from `{repo}` failed: {reason}")]
    Download {
        repo: String,
        file: String,
        reason: String,
    },
}

impl std::str::FromStr for ModelSource {
    type Err = SourceError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let path = Path::new(name);
        if path.exists() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        let (repo, file) = match name.split_once(':') {
            Some((repo, file)) if !file.is_empty() => (repo, Some(file.to_owned())),
            Some(_) => return Err(SourceError::Unrecognised(name.to_owned())),
            None => (name, None),
        };
        let mut parts = repo.split('/');
        let well_formed = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(owner), Some(model), None) if is_repo_part(owner) && is_repo_part(model)
        );
        if !well_formed || name.starts_with('.') || name.starts_with('/') {
            return Err(SourceError::Unrecognised(name.to_owned()));
        }
        Ok(Self::Hub {
            repo: repo.to_owned(),
            file,
        })
    }
}

fn is_repo_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ModelSource {
    /// Resolves the model to local files, downloading hub files that are not cached yet.
    pub async fn resolve(&self, options: &HubOptions) -> Result<ResolvedModel, SourceError> {
        match self {
            Self::Local(path) => resolve_local(path),
            Self::Hub { repo, file } => {
                HubRequest::new(repo, file.as_deref(), options)
                    .resolve()
                    .await
            }
        }
    }
}

fn resolve_local(path: &Path) -> Result<ResolvedModel, SourceError> {
    let not_a_model = |reason: String| SourceError::NotAModel {
        path: path.to_path_buf(),
        reason,
    };
    let default_id = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_owned());
    if path.is_file() {
        return if path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
        {
            Ok(ResolvedModel {
                path: path.to_path_buf(),
                default_id,
            })
        } else {
            Err(not_a_model(
                "a model file must be a `.gguf` file".to_owned(),
            ))
        };
    }
    let missing: Vec<&str> = SAFETENSORS_REQUIRED
        .into_iter()
        .filter(|file| !path.join(file).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(not_a_model(format!(
            "the directory lacks {}",
            missing.join(", ")
        )));
    }
    if !path.join(SINGLE_WEIGHTS).is_file() && !path.join(SHARD_INDEX).is_file() {
        return Err(not_a_model(format!(
            "the directory has neither {SINGLE_WEIGHTS} nor {SHARD_INDEX}"
        )));
    }
    Ok(ResolvedModel {
        path: path.to_path_buf(),
        default_id,
    })
}

/// One hub resolution: cache first, then the network.
struct HubRequest<'a> {
    repo_id: &'a str,
    file: Option<&'a str>,
    options: &'a HubOptions,
    cache: Cache,
}

impl<'a> HubRequest<'a> {
    fn new(repo_id: &'a str, file: Option<&'a str>, options: &'a HubOptions) -> Self {
        let cache = options
            .cache_dir
            .clone()
            .map(Cache::new)
            .unwrap_or_else(Cache::from_env);
        Self {
            repo_id,
            file,
            options,
            cache,
        }
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(
            self.repo_id.to_owned(),
            RepoType::Model,
            self.options.revision.clone(),
        )
    }

    async fn resolve(self) -> Result<ResolvedModel, SourceError> {
        if let Some(resolved) = self.cached() {
            return Ok(resolved);
        }
        if self.options.offline {
            return Err(self.unavailable("offline mode is on"));
        }
        let mut builder = ApiBuilder::from_env().with_progress(self.options.progress);
        if let Some(dir) = &self.options.cache_dir {
            builder = builder.with_cache_dir(dir.clone());
        }
        let api = builder
            .build()
            .map_err(|err| self.unavailable(&err.to_string()))?;
        let api_repo = api.repo(self.repo());
        let info = match tokio::time::timeout(self.options.connect_timeout, api_repo.info()).await {
            Ok(Ok(info)) => info,
            Ok(Err(err)) => return Err(self.unavailable(&format!("the hub answered: {err}"))),
            Err(_) => {
                return Err(self.unavailable(&format!(
                    "no answer from the hub within {:?}",
                    self.options.connect_timeout
                )));
            }
        };
        let listing: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let files = self.files_to_fetch(&listing)?;
        let mut first = None;
        for file in &files {
            tracing::info!(repo = self.repo_id, file, "fetching model file");
            let path = api_repo
                .get(file)
                .await
                .map_err(|err| SourceError::Download {
                    repo: self.repo_id.to_owned(),
                    file: file.clone(),
                    reason: err.to_string(),
                })?;
            first.get_or_insert(path);
        }
        let first = first.ok_or_else(|| self.unavailable("the repo lists no usable file"))?;
        Ok(self.resolved(first, files.first().is_some_and(|f| f.ends_with(".gguf"))))
    }

    /// The files to download, from the repo's listing.
    fn files_to_fetch(&self, listing: &[String]) -> Result<Vec<String>, SourceError> {
        match self.file {
            Some(wanted) => Ok(vec![self.pick_gguf(wanted, listing)?]),
            None => {
                let mut files: Vec<String> = SAFETENSORS_REQUIRED
                    .iter()
                    .map(|f| (*f).to_owned())
                    .collect();
                files.extend(
                    SAFETENSORS_OPTIONAL
                        .iter()
                        .filter(|f| listing.iter().any(|l| l == *f))
                        .map(|f| (*f).to_owned()),
                );
                files.extend(
                    listing
                        .iter()
                        .filter(|name| name.ends_with(".safetensors") && !name.contains('/'))
                        .cloned(),
                );
                if listing.iter().any(|l| l == SHARD_INDEX) {
                    files.push(SHARD_INDEX.to_owned());
                }
                Ok(files)
            }
        }
    }

    fn pick_gguf(&self, wanted: &str, listing: &[String]) -> Result<String, SourceError> {
        if wanted.ends_with(".gguf") {
            return Ok(wanted.to_owned());
        }
        let tag = wanted.to_ascii_lowercase();
        let ggufs: Vec<&String> = listing.iter().filter(|f| f.ends_with(".gguf")).collect();
        ggufs
            .iter()
            .find(|f| f.to_ascii_lowercase().contains(&tag))
            .map(|f| (*f).clone())
            .ok_or_else(|| SourceError::NoMatchingFile {
                repo: self.repo_id.to_owned(),
                wanted: wanted.to_owned(),
                available: ggufs
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Everything needed is already in the cache: no network at all.
    fn cached(&self) -> Option<ResolvedModel> {
        let cached = self.cache.repo(self.repo());
        match self.file {
            Some(file) if file.ends_with(".gguf") => {
                cached.get(file).map(|path| self.resolved(path, true))
            }
            Some(tag) => {
                // A quantisation tag: look for a matching GGUF in the cached snapshot folder.
                let snapshot = cached.get(".")?;
                let tag = tag.to_ascii_lowercase();
                std::fs::read_dir(&snapshot)
                    .ok()?
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .find(|path| {
                        let name = path
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .to_ascii_lowercase();
                        name.ends_with(".gguf") && name.contains(&tag)
                    })
                    .map(|path| self.resolved(path, true))
            }
            None => {
                let config = cached.get("config.json")?;
                let dir = config.parent()?.to_path_buf();
                resolve_local(&dir)
                    .ok()
                    .map(|_| self.resolved(config, false))
            }
        }
    }

    fn resolved(&self, first_file: PathBuf, gguf: bool) -> ResolvedModel {
        let path = if gguf {
            first_file
        } else {
            first_file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or(first_file)
        };
        ResolvedModel {
            path,
            default_id: self.repo_id.to_owned(),
        }
    }

    /// The error that tells the user exactly what to fetch by hand.
    fn unavailable(&self, reason: &str) -> SourceError {
        let name = self.repo_id.rsplit('/').next().unwrap_or(self.repo_id);
        let (files, model_arg) = match self.file {
            Some(file) if file.ends_with(".gguf") => (file.to_owned(), format!("./{name}/{file}")),
            Some(tag) => (
                format!("--include '*{tag}*.gguf'"),
                format!("./{name}/<the .gguf file>"),
            ),
            None => (String::new(), format!("./{name}")),
        };
        let cache_folder = self
            .cache
            .path()
            .join(format!("models--{}", self.repo_id.replace('/', "--")));
        SourceError::Unavailable(format!(
            "model `{repo}` is not in the Hugging Face cache and cannot be downloaded ({reason}).\n\
             On a machine with network access, run:\n    \
             huggingface-cli download {repo} {files} --local-dir ./{name}\n\
             then copy ./{name} here and start with `--model {model_arg}`;\n\
             or copy that machine's cache folder to {cache}.",
            repo = self.repo_id,
            files = files,
            cache = cache_folder.display(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids_and_rejects_nonsense() {
        assert_eq!(
            "Qwen/Qwen2.5-0.5B-Instruct".parse::<ModelSource>().unwrap(),
            ModelSource::Hub {
                repo: "Qwen/Qwen2.5-0.5B-Instruct".into(),
                file: None
            }
        );
        assert_eq!(
            "Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf"
                .parse::<ModelSource>()
                .unwrap(),
            ModelSource::Hub {
                repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF".into(),
                file: Some("qwen2.5-0.5b-instruct-q4_k_m.gguf".into())
            }
        );
        for bad in [
            "",
            "just-a-name",
            "a/b/c",
            "./missing/model",
            "/no/such/file.gguf",
            "a/b:",
        ] {
            assert!(
                bad.parse::<ModelSource>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn local_directories_must_hold_a_whole_model() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        for file in SAFETENSORS_REQUIRED {
            std::fs::write(dir.path().join(file), "{}").unwrap();
        }
        assert!(
            resolve_local(dir.path())
                .unwrap_err()
                .to_string()
                .contains(SINGLE_WEIGHTS)
        );
        std::fs::write(dir.path().join(SINGLE_WEIGHTS), "").unwrap();
        assert_eq!(resolve_local(dir.path()).unwrap().path, dir.path());
    }

    #[test]
    fn local_files_must_be_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weights.bin");
        std::fs::write(&file, "").unwrap();
        assert!(resolve_local(&file).is_err());
        let gguf = dir.path().join("tiny-q8.gguf");
        std::fs::write(&gguf, "").unwrap();
        assert_eq!(resolve_local(&gguf).unwrap().default_id, "tiny-q8");
    }

    #[tokio::test]
    async fn uncached_model_offline_fails_at_once_with_instructions() {
        let cache = tempfile::tempdir().unwrap();
        let options = HubOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            offline: true,
            ..HubOptions::default()
        };
        let source: ModelSource =
            "Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf"
                .parse()
                .unwrap();
        let err = source.resolve(&options).await.unwrap_err().to_string();
        assert!(err.contains("huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct-GGUF qwen2.5-0.5b-instruct-q4_k_m.gguf"), "{err}");
        assert!(
            err.contains("--model ./Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cached_gguf_resolves_without_the_network() {
        let cache = tempfile::tempdir().unwrap();
        let repo = Repo::with_revision("acme/tiny-GGUF".into(), RepoType::Model, "main".into());
        let cached = Cache::new(cache.path().to_path_buf()).repo(repo.clone());
        cached.create_ref("0123456789abcdef").unwrap();
        let snapshot = cache
            .path()
            .join(repo.folder_name())
            .join("snapshots/0123456789abcdef");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("tiny-Q8_0.gguf"), "").unwrap();
        let options = HubOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            offline: true,
            ..HubOptions::default()
        };
        for name in ["acme/tiny-GGUF:tiny-Q8_0.gguf", "acme/tiny-GGUF:q8_0"] {
            let resolved = name
                .parse::<ModelSource>()
                .unwrap()
                .resolve(&options)
                .await
                .unwrap();
            assert_eq!(resolved.path, snapshot.join("tiny-Q8_0.gguf"));
            assert_eq!(resolved.default_id, "acme/tiny-GGUF");
        }
    }
}
