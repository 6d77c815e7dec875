//! The configuration file and how it merges with flags and `PASSERELLE_*` variables.
//!
//! Every option has one name used three ways: `--model` on the command line, `PASSERELLE_MODEL`
//! in the environment, `model = "..."` in the TOML file. Flags beat variables (clap reads both),
//! both beat the file, and the file beats the built-in default.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// Built-in model: small enough for a laptop, fetched from the hub on first run.
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf";
/// Where the gateway listens unless told otherwise: loopback only, so a fresh install is not
/// exposed to the network by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where `passerelle llm` listens for gRPC unless told otherwise.
pub const DEFAULT_LLM_LISTEN: &str = "127.0.0.1:50051";
/// Where `passerelle embeddings` listens for gRPC unless told otherwise.
pub const DEFAULT_EMBEDDINGS_LISTEN: &str = "127.0.0.1:50052";
/// Where `passerelle safety` listens for gRPC unless told otherwise.
pub const DEFAULT_SAFETY_LISTEN: &str = "127.0.0.1:50053";
/// The embedding model `passerelle embeddings` serves unless told otherwise.
pub const DEFAULT_EMBEDDING_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Keys of the TOML configuration file. Unknown keys are an error, so typos do not go unnoticed.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub model: Option<String>,
    pub model_id: Option<String>,
    pub threads: Option<usize>,
    pub device: Option<String>,
    pub offline: Option<bool>,
    pub hf_cache: Option<PathBuf>,
    pub revision: Option<String>,
    pub queue_capacity: Option<usize>,
    pub kv_cache_tokens: Option<usize>,
    pub max_running: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub prefill_chunk: Option<usize>,
    pub max_wait_ms: Option<u64>,
    pub listen: Option<String>,
    pub llm_endpoint: Option<String>,
    pub embedding_model: Option<String>,
    pub embedding_model_id: Option<String>,
    pub embedding_matryoshka: Option<bool>,
    pub embeddings_endpoint: Option<String>,
    pub semantic_cache: Option<bool>,
    pub semantic_cache_threshold: Option<f32>,
    pub semantic_cache_ttl_secs: Option<u64>,
    pub semantic_cache_shared: Option<bool>,
    pub semantic_cache_max_entries: Option<usize>,
    pub redis_failure_policy: Option<String>,
    pub rate_limit_rpm: Option<u32>,
    pub rate_limit_tpm: Option<u32>,
    pub rate_limit_concurrency: Option<u32>,
    pub rate_limit_adaptive: Option<bool>,
    pub safety_checks: Option<String>,
    pub safety_refusal_message: Option<String>,
    pub safety_failure_policy: Option<String>,
    pub safety_timeout_ms: Option<u64>,
    pub safety_sequential: Option<bool>,
    pub safety_model: Option<String>,
    pub safety_threshold: Option<f32>,
    pub safety_categories: Option<Vec<String>>,
    pub injection_model: Option<String>,
    pub injection_threshold: Option<f32>,
    pub safety_endpoint: Option<String>,
    pub safety_rules: Option<PathBuf>,
    pub no_safety: Option<bool>,
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<PathBuf>,
    pub jwt_jwks: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub trust_forwarded_for: Option<bool>,
    pub workers: Option<usize>,
    pub log_prompts: Option<bool>,
    pub watch_config: Option<bool>,
    pub prices: Option<std::collections::HashMap<String, passerelle_gateway::pricing::ModelPrice>>,
    pub drift: Option<bool>,
    pub drift_sample_rate: Option<f64>,
    pub drift_window: Option<usize>,
    pub drift_threshold: Option<f64>,
    pub documents_dir: Option<PathBuf>,
    pub api_keys: Option<ApiKeysValue>,
    pub data_dir: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub require_auth: Option<bool>,
    pub max_body_bytes: Option<usize>,
    pub request_timeout_secs: Option<u64>,
    pub log_format: Option<String>,
    pub log_filter: Option<String>,
    pub otlp_endpoint: Option<String>,
    /// `[[upstreams]]`: external OpenAI-compatible servers, one entry per replica.
    pub upstreams: Option<Vec<crate::routing::UpstreamEntry>>,
    /// `[routing]`: aliases, fallbacks, retries, timeouts, ejection.
    pub routing: Option<crate::routing::RoutingFile>,
}

/// `api_keys` may be a TOML array or one comma-separated string, like the variable.
#[derive(Debug, Deserialize, PartialEq, Clone)]
#[serde(untagged)]
pub enum ApiKeysValue {
    List(Vec<String>),
    Joined(String),
}

impl ApiKeysValue {
    pub fn into_keys(self) -> Vec<String> {
        match self {
            Self::List(keys) => keys,
            Self::Joined(joined) => split_keys(&joined),
        }
    }
}

/// Splits a comma-separated key list, dropping blanks.
pub fn split_keys(joined: &str) -> Vec<String> {
    joined
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .collect()
}

impl FileConfig {
    /// Reads the file, or an empty configuration when no file was named.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// The default data directory: `$XDG_DATA_HOME/passerelle`, else `~/.local/share/passerelle`.
pub fn default_data_dir() -> PathBuf {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    from_env("XDG_DATA_HOME")
        .or_else(|| from_env("HOME").map(|home| home.join(".local/share")))
        .map(|base| base.join("passerelle"))
        .unwrap_or_else(|| PathBuf::from("passerelle-data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_documented_key() {
        let config: FileConfig = toml::from_str(
            r#"
            model = "./qwen.gguf"
            threads = 2
            listen = "0.0.0.0:8080"
            api_keys = ["a", "b"]
            require_auth = true
            "#,
        )
        .unwrap();
        assert_eq!(config.model.as_deref(), Some("./qwen.gguf"));
        assert_eq!(config.threads, Some(2));
        assert_eq!(config.api_keys.unwrap().into_keys(), vec!["a", "b"]);
    }

    #[test]
    fn keys_may_be_one_comma_separated_string() {
        let config: FileConfig = toml::from_str(r#"api_keys = "k1, k2,,""#).unwrap();
        assert_eq!(config.api_keys.unwrap().into_keys(), vec!["k1", "k2"]);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<FileConfig>("modle = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
