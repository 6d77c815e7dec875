//! Command-line arguments. Every option also reads a `PASSERELLE_*` variable and a key of the
//! TOML file (see `config`); the doc comment of each field is its `--help` text.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use passerelle_telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "passerelle",
    version,
    about = "Self-hosted, OpenAI-compatible LLM inference gateway"
)]
pub struct Cli {
    /// TOML configuration file; flags and PASSERELLE_* variables override its keys.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "PASSERELLE_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway and the llm service in one process, the service on a loopback port.
    Serve(ServeArgs),
    /// Run only the HTTP gateway, in front of an llm service running elsewhere.
    Gateway(GatewayArgs),
    /// Run only the llm gRPC service.
    Llm(LlmArgs),
    /// Run only the embeddings gRPC service.
    Embeddings(EmbeddingsArgs),
    /// Create, list and revoke API keys in the embedded store.
    Keys(KeysArgs),
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format: `text` or `json` [default: text].
    #[arg(long, global = true, env = "PASSERELLE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter in tracing's EnvFilter syntax [default: info].
    #[arg(long, global = true, env = "PASSERELLE_LOG_FILTER")]
    pub log_filter: Option<String>,
    /// OTLP/gRPC collector to export traces to, e.g. http://127.0.0.1:4317 [default: none].
    #[arg(long, global = true, env = "PASSERELLE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Which model to serve and how.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model: a local .gguf file, a local safetensors directory, or a Hugging Face repo id
    /// (`owner/name`, `owner/name:file.gguf`, `owner/name:Q4_K_M`)
    /// [default: Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf].
    #[arg(long, short = 'm', env = "PASSERELLE_MODEL")]
    pub model: Option<String>,
    /// Id clients use to name the model [default: the repo id, or the file or folder name].
    #[arg(long, env = "PASSERELLE_MODEL_ID")]
    pub model_id: Option<String>,
    /// CPU threads for model work [default: all cores].
    #[arg(long, short = 't', env = "PASSERELLE_THREADS")]
    pub threads: Option<usize>,
    /// Generation requests that may wait for the model; more get 429 [default: 64].
    #[arg(long, env = "PASSERELLE_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// How models named by a hub repo id are fetched.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// Never contact the Hugging Face hub; use only cached files [default: false, or HF_HUB_OFFLINE].
    #[arg(long, env = "PASSERELLE_OFFLINE", num_args = 0..=1, default_missing_value = "true")]
    pub offline: Option<bool>,
    /// Hugging Face cache directory [default: $HF_HOME/hub or ~/.cache/huggingface/hub].
    #[arg(long, env = "PASSERELLE_HF_CACHE")]
    pub hf_cache: Option<PathBuf>,
    /// Hub revision (branch, tag or commit) [default: main].
    #[arg(long, env = "PASSERELLE_REVISION")]
    pub revision: Option<String>,
}

/// Which sentence-embedding model to serve.
#[derive(Debug, Args)]
pub struct EmbeddingArgs {
    /// Sentence-transformers model: a local directory or a Hugging Face repo id, e.g.
    /// sentence-transformers/all-MiniLM-L6-v2 [default: none for `serve`; that model for
    /// `embeddings`].
    #[arg(long, env = "PASSERELLE_EMBEDDING_MODEL")]
    pub embedding_model: Option<String>,
    /// Id clients use to name the embedding model [default: the repo id or folder name].
    #[arg(long, env = "PASSERELLE_EMBEDDING_MODEL_ID")]
    pub embedding_model_id: Option<String>,
    /// The embedding model is a Matryoshka model, so `dimensions` may shorten its vectors
    /// [default: false].
    #[arg(long, env = "PASSERELLE_EMBEDDING_MATRYOSHKA", num_args = 0..=1, default_missing_value = "true")]
    pub embedding_matryoshka: Option<bool>,
    /// Most answers the semantic cache holds, all tenants together; the least recently used
    /// goes first [default: 100000].
    #[arg(long, env = "PASSERELLE_SEMANTIC_CACHE_MAX_ENTRIES")]
    pub semantic_cache_max_entries: Option<usize>,
    /// Directory the document store (`/v1/documents`) keeps its documents in, so they survive
    /// a restart [default: `documents` in the data directory].
    #[arg(long, env = "PASSERELLE_DOCUMENTS_DIR")]
    pub documents_dir: Option<PathBuf>,
}

/// How the HTTP gateway runs.
#[derive(Debug, Args)]
pub struct GatewayOptions {
    /// Comma-separated API keys accepted in addition to those in the key store; hashed at load,
    /// never logged [default: none].
    #[arg(long, env = "PASSERELLE_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Directory of the embedded store (API keys) [default: ~/.local/share/passerelle].
    #[arg(long, env = "PASSERELLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Require an API key even when none is configured [default: false; keys are always
    /// required once any exists].
    #[arg(long, env = "PASSERELLE_REQUIRE_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub require_auth: Option<bool>,
    /// Largest request body in bytes; larger ones get 413 [default: 4194304].
    #[arg(long, env = "PASSERELLE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Longest one generation may run, in seconds; then 504 [default: 600].
    #[arg(long, env = "PASSERELLE_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Answer repeated questions from the semantic cache (needs an embedding model or
    /// embeddings endpoint) [default: false].
    #[arg(long, env = "PASSERELLE_SEMANTIC_CACHE", num_args = 0..=1, default_missing_value = "true")]
    pub semantic_cache: Option<bool>,
    /// Cosine similarity a cached question needs to answer a new one, in (0, 1] [default: 0.95].
    #[arg(long, env = "PASSERELLE_SEMANTIC_CACHE_THRESHOLD")]
    pub semantic_cache_threshold: Option<f32>,
    /// How long a cached answer lives, in seconds [default: 3600].
    #[arg(long, env = "PASSERELLE_SEMANTIC_CACHE_TTL_SECS")]
    pub semantic_cache_ttl_secs: Option<u64>,
    /// Let every API key receive answers cached for another key [default: false].
    #[arg(long, env = "PASSERELLE_SEMANTIC_CACHE_SHARED", num_args = 0..=1, default_missing_value = "true")]
    pub semantic_cache_shared: Option<bool>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the HTTP gateway listens on [default: 127.0.0.1:8080].
    #[arg(long, short = 'l', env = "PASSERELLE_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub embedding: EmbeddingArgs,
    #[command(flatten)]
    pub gateway: GatewayOptions,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address the HTTP gateway listens on [default: 127.0.0.1:8080].
    #[arg(long, short = 'l', env = "PASSERELLE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The llm service's gRPC endpoint [default: http://127.0.0.1:50051].
    #[arg(long, env = "PASSERELLE_LLM_ENDPOINT")]
    pub llm_endpoint: Option<String>,
    /// The embeddings service's gRPC endpoint, when one runs [default: none].
    #[arg(long, env = "PASSERELLE_EMBEDDINGS_ENDPOINT")]
    pub embeddings_endpoint: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayOptions,
}

#[derive(Debug, Args)]
pub struct LlmArgs {
    /// Address the llm gRPC service listens on [default: 127.0.0.1:50051].
    #[arg(long, short = 'l', env = "PASSERELLE_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct EmbeddingsArgs {
    /// Address the embeddings gRPC service listens on [default: 127.0.0.1:50052].
    #[arg(long, short = 'l', env = "PASSERELLE_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub embedding: EmbeddingArgs,
    /// CPU threads for model work [default: all cores].
    #[arg(long, short = 't', env = "PASSERELLE_THREADS")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub hub: HubArgs,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Directory of the embedded store [default: ~/.local/share/passerelle].
    #[arg(long, env = "PASSERELLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print its secret (shown only this once).
    Create {
        /// A label to tell the key apart, e.g. the team or app using it.
        #[arg(long, short = 'n')]
        name: String,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id or by its displayed prefix.
    Revoke {
        /// Key id or prefix as shown by `keys list`.
        key: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_takes_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "passerelle",
            "serve",
            "--model",
            "./m.gguf",
            "--listen",
            "127.0.0.1:9000",
            "--threads",
            "2",
        ])
        .unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.model.model.as_deref(), Some("./m.gguf"));
        assert_eq!(serve.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(serve.model.threads, Some(2));
    }

    #[test]
    fn boolean_flags_work_bare_and_with_values() {
        let cli = Cli::try_parse_from(["passerelle", "serve", "--offline", "--require-auth=false"])
            .unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.model.hub.offline, Some(true));
        assert_eq!(serve.gateway.require_auth, Some(false));
    }

    #[test]
    fn bad_values_are_rejected_by_the_parser() {
        assert!(Cli::try_parse_from(["passerelle", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["passerelle", "serve", "--threads", "-1"]).is_err());
        assert!(Cli::try_parse_from(["passerelle", "keys", "revoke"]).is_err());
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
