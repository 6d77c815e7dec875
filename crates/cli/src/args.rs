//! Command-line arguments. Every option also reads a `PASSERELLE_*` variable and a key of the
//! TOML file (see `config`); the doc comment of each field is its `--help` text.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use passerelle_store::{Budget, BudgetPeriod, KeyLimits, NewKey, SafetyChecks, Scope};
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
    Serve(Box<ServeArgs>),
    /// Run only the HTTP gateway, in front of an llm service running elsewhere.
    Gateway(Box<GatewayArgs>),
    /// Run only the llm gRPC service.
    Llm(LlmArgs),
    /// Run only the embeddings gRPC service.
    Embeddings(EmbeddingsArgs),
    /// Run only the safety gRPC service: rules, PII redaction, and Llama Guard 3 and the
    /// prompt-injection classifier when their models are named.
    Safety(SafetyArgs),
    /// Create, list and revoke API keys in the embedded store or in Redis.
    Keys(KeysArgs),
    /// Load-test an OpenAI-compatible chat endpoint, or run a fast mock upstream to measure a
    /// gateway's own overhead against (see docs/benchmarks.md).
    Bench(BenchArgs),
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
    /// Device the model runs on: cpu, cuda or cuda:N (a GPU needs a build with the `cuda`
    /// feature) [default: cpu].
    #[arg(long, env = "PASSERELLE_DEVICE")]
    pub device: Option<passerelle_model_runtime::DeviceChoice>,
    /// Generation requests that may wait for the model; more get 429 [default: 64].
    #[arg(long, env = "PASSERELLE_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// How the llm engine batches requests and bounds its KV cache.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// KV cache budget in tokens, over all running sequences and the prefix cache; a request
    /// reserves prompt + max_tokens per choice [default: context length x max running].
    #[arg(long, env = "PASSERELLE_KV_CACHE_TOKENS")]
    pub kv_cache_tokens: Option<usize>,
    /// Most sequences decoding together (a request with n choices counts n) [default: 8].
    #[arg(long, env = "PASSERELLE_MAX_RUNNING")]
    pub max_running: Option<usize>,
    /// Most tokens in one forward pass, decodes and prompt chunks together [default: 512].
    #[arg(long, env = "PASSERELLE_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Most prompt tokens one request prefills per step [default: 256].
    #[arg(long, env = "PASSERELLE_PREFILL_CHUNK")]
    pub prefill_chunk: Option<usize>,
    /// Milliseconds a request may wait for room in the batch before a 429 [default: 10000].
    #[arg(long, env = "PASSERELLE_MAX_WAIT_MS")]
    pub max_wait_ms: Option<u64>,
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
    /// Device the embedding model runs on: cpu, cuda or cuda:N (a GPU needs a build with the
    /// `cuda` feature) [default: cpu].
    #[arg(long, env = "PASSERELLE_EMBEDDING_DEVICE")]
    pub embedding_device: Option<passerelle_model_runtime::DeviceChoice>,
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
    /// Redis shared by every gateway replica for keys, usage, audit and rate limits, e.g.
    /// redis://127.0.0.1:6379/ [default: none: the embedded store and in-process limits].
    #[arg(long, env = "PASSERELLE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// While Redis cannot be reached: `open` admits requests unchecked by rate limits and
    /// budgets, `closed` refuses them with 503 [default: open].
    #[arg(long, env = "PASSERELLE_REDIS_FAILURE_POLICY")]
    pub redis_failure_policy: Option<String>,
    /// Requests per minute per key or JWT subject, unless the key sets its own [default: none].
    #[arg(long, env = "PASSERELLE_RATE_LIMIT_RPM")]
    pub rate_limit_rpm: Option<u32>,
    /// Prompt + completion tokens per minute per key or JWT subject [default: none].
    #[arg(long, env = "PASSERELLE_RATE_LIMIT_TPM")]
    pub rate_limit_tpm: Option<u32>,
    /// Concurrent requests per key or JWT subject [default: none].
    #[arg(long, env = "PASSERELLE_RATE_LIMIT_CONCURRENCY")]
    pub rate_limit_concurrency: Option<u32>,
    /// Halve the rpm and tpm of a key or subject for every 3 prompts the safety filter refused
    /// in the last 10 minutes, down to a sixteenth [default: false].
    #[arg(long, env = "PASSERELLE_RATE_LIMIT_ADAPTIVE", num_args = 0..=1, default_missing_value = "true")]
    pub rate_limit_adaptive: Option<bool>,
    /// What the safety filter checks, when one runs: `both` (prompts and answers), `input`,
    /// `output` or `none` [default: both].
    #[arg(long, env = "PASSERELLE_SAFETY_CHECKS", value_name = "WHAT")]
    pub safety_checks: Option<String>,
    /// Answer a prompt the safety filter refuses with this assistant message (finish reason
    /// content_filter) instead of a 400 error [default: none, a 400 error].
    #[arg(long, env = "PASSERELLE_SAFETY_REFUSAL_MESSAGE")]
    pub safety_refusal_message: Option<String>,
    /// When a prompt's safety check fails (service down, timeout): `closed` refuses it with
    /// 503, `open` lets it through unchecked [default: closed].
    #[arg(long, env = "PASSERELLE_SAFETY_FAILURE_POLICY", value_name = "POLICY")]
    pub safety_failure_policy: Option<String>,
    /// Check each prompt before generation starts instead of alongside it: a slower first
    /// token, but a refused prompt never costs a prefill [default: false, checked alongside].
    #[arg(long, env = "PASSERELLE_SAFETY_SEQUENTIAL", num_args = 0..=1, default_missing_value = "true")]
    pub safety_sequential: Option<bool>,
    /// Longest a safety check may take, in milliseconds, before it counts as failed
    /// [default: 5000].
    #[arg(long, env = "PASSERELLE_SAFETY_TIMEOUT_MS")]
    pub safety_timeout_ms: Option<u64>,
    /// Accept HS256 JWTs signed with this secret (at least 32 bytes) [default: none].
    #[arg(long, env = "PASSERELLE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Accept RS256/ES256 JWTs verified with this PEM public key file [default: none].
    #[arg(long, env = "PASSERELLE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`) of RSA and EC public keys; each token's `kid` picks its
    /// key, so identity-provider key rotation needs only a new file and a restart.
    #[arg(long, env = "PASSERELLE_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,
    /// The `iss` JWTs must carry [default: not checked].
    #[arg(long, env = "PASSERELLE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` JWTs must carry [default: none; tokens naming an audience are refused].
    #[arg(long, env = "PASSERELLE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Read the client address for the audit log from X-Forwarded-For (set by nginx)
    /// [default: false].
    #[arg(long, env = "PASSERELLE_TRUST_FORWARDED_FOR", num_args = 0..=1, default_missing_value = "true")]
    pub trust_forwarded_for: Option<bool>,
    /// Threads serving HTTP, each with its own event loop, listening socket on the address
    /// (SO_REUSEPORT) and upstream connections; 0 serves on the shared runtime instead
    /// [default: one per core].
    #[arg(long, env = "PASSERELLE_WORKERS")]
    pub workers: Option<usize>,
    /// Reload the routing table when the configuration file changes (it is read every second);
    /// false reloads it on SIGHUP only [default: true].
    #[arg(long, env = "PASSERELLE_WATCH_CONFIG", num_args = 0..=1, default_missing_value = "true")]
    pub watch_config: Option<bool>,
    /// Store every prompt and answer, with emails, phone numbers, card numbers, IBANs and IP addresses
    /// redacted, for review and access requests [default: false].
    #[arg(long, env = "PASSERELLE_LOG_PROMPTS", num_args = 0..=1, default_missing_value = "true")]
    pub log_prompts: Option<bool>,
    /// Watch prompt embeddings for drift, reported at /admin/drift (needs an embedding model
    /// or embeddings endpoint) [default: false].
    #[arg(long, env = "PASSERELLE_DRIFT", num_args = 0..=1, default_missing_value = "true")]
    pub drift: Option<bool>,
    /// Share of prompts embedded for drift, in [0, 1] [default: 0.2].
    #[arg(long, env = "PASSERELLE_DRIFT_SAMPLE_RATE")]
    pub drift_sample_rate: Option<f64>,
    /// Prompt embeddings in the drift baseline and in the recent window [default: 500].
    #[arg(long, env = "PASSERELLE_DRIFT_WINDOW")]
    pub drift_window: Option<usize>,
    /// Drift score (share of embedding dimensions that moved) above which drift is reported,
    /// in (0, 1] [default: 0.25].
    #[arg(long, env = "PASSERELLE_DRIFT_THRESHOLD")]
    pub drift_threshold: Option<f64>,
    /// Serve MODEL from an external OpenAI-compatible server at its base URL (up to `/v1`);
    /// repeat for more models, or the same model for replicas. Replaces the file's
    /// `[[upstreams]]` of that model [default: none].
    #[arg(
        long = "upstream",
        env = "PASSERELLE_UPSTREAMS",
        value_name = "MODEL=URL",
        value_delimiter = ','
    )]
    pub upstreams: Vec<String>,
    /// The API key sent to the upstream of MODEL (`MODEL=KEY`), or to every `--upstream`
    /// without a key of its own (`KEY`); repeatable [default: none].
    #[arg(
        long = "upstream-key",
        env = "PASSERELLE_UPSTREAM_KEYS",
        value_name = "[MODEL=]KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub upstream_keys: Vec<String>,
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
    /// Rule file for the safety filter (see docs/safety.md) [default: the built-in rules].
    #[arg(long, env = "PASSERELLE_SAFETY_RULES", value_name = "FILE")]
    pub safety_rules: Option<PathBuf>,
    /// Run without the safety filter: prompts are not checked [default: checked].
    #[arg(long, env = "PASSERELLE_NO_SAFETY", conflicts_with = "safety_rules")]
    pub no_safety: bool,
    #[command(flatten)]
    pub safety_models: SafetyModelArgs,
    #[command(flatten)]
    pub gateway: GatewayOptions,
}

/// The model layers of the safety filter, both off unless a model is named.
#[derive(Debug, Args, Default)]
pub struct SafetyModelArgs {
    /// Llama Guard 3 for the safety filter: a GGUF file, a Hugging Face directory or a hub id
    /// (`repo` or `repo:file.gguf`) [default: none, the layer is off].
    #[arg(long, env = "PASSERELLE_SAFETY_MODEL", value_name = "MODEL")]
    pub safety_model: Option<String>,
    /// Flag content when Llama Guard's probability of `unsafe` is at least this, in [0, 1]
    /// [default: when `unsafe` is its most likely answer].
    #[arg(long, env = "PASSERELLE_SAFETY_THRESHOLD")]
    pub safety_threshold: Option<f32>,
    /// Hazard categories Llama Guard checks, by code, comma-separated (S1 to S14)
    /// [default: S1-S13, the template's].
    #[arg(long, env = "PASSERELLE_SAFETY_CATEGORIES", value_delimiter = ',')]
    pub safety_categories: Vec<String>,
    /// Prompt-injection classifier (a DeBERTa-v3 sequence classifier): a directory or hub id
    /// [default: none, the layer is off].
    #[arg(long, env = "PASSERELLE_INJECTION_MODEL", value_name = "MODEL")]
    pub injection_model: Option<String>,
    /// Flag a prompt when the classifier's injection probability is at least this, in (0, 1]
    /// [default: 0.5].
    #[arg(long, env = "PASSERELLE_INJECTION_THRESHOLD")]
    pub injection_threshold: Option<f32>,
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
    /// The safety service's gRPC endpoint; prompts are checked with it [default: none].
    #[arg(long, env = "PASSERELLE_SAFETY_ENDPOINT")]
    pub safety_endpoint: Option<String>,
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
    /// Serve this service's Prometheus metrics over HTTP at /metrics on this address
    /// [default: none].
    #[arg(long, env = "PASSERELLE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
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
    /// Redis the replicas of this service share their semantic cache through, which also
    /// keeps it across restarts, e.g. redis://127.0.0.1:6379/ [default: none: this process
    /// only].
    #[arg(long, env = "PASSERELLE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Serve this service's Prometheus metrics over HTTP at /metrics on this address
    /// [default: none].
    #[arg(long, env = "PASSERELLE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct SafetyArgs {
    /// Address the safety gRPC service listens on [default: 127.0.0.1:50053].
    #[arg(long, short = 'l', env = "PASSERELLE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Rule file (TOML, or JSON when named *.json) that extends or replaces the built-in
    /// prompt-injection and jailbreak rules; see docs/safety.md [default: the built-in rules].
    #[arg(long, env = "PASSERELLE_SAFETY_RULES", value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Turn the rule layer off [default: on].
    #[arg(long, env = "PASSERELLE_SAFETY_NO_RULES", conflicts_with = "rules")]
    pub no_rules: bool,
    /// Turn PII redaction off in checks; the Redact RPC still redacts [default: on].
    #[arg(long, env = "PASSERELLE_SAFETY_NO_PII")]
    pub no_pii: bool,
    #[command(flatten)]
    pub models: SafetyModelArgs,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Serve this service's Prometheus metrics over HTTP at /metrics on this address
    /// [default: none].
    #[arg(long, env = "PASSERELLE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Directory of the embedded store [default: ~/.local/share/passerelle].
    #[arg(long, env = "PASSERELLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Manage the keys in this Redis server (the one the gateways share) instead of the
    /// embedded store, e.g. redis://127.0.0.1:6379/ [default: none].
    #[arg(long, env = "PASSERELLE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print its secret (shown only this once).
    Create(CreateKeyArgs),
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id or by its displayed prefix.
    Revoke {
        /// Key id or prefix as shown by `keys list`.
        key: String,
    },
}

/// What a new key is and may do.
#[derive(Debug, Args)]
pub struct CreateKeyArgs {
    /// A label to tell the key apart, e.g. the team or app using it.
    #[arg(long, short = 'n')]
    pub name: String,
    /// The user or service the key acts for; usage and audit records name it
    /// [default: the key's name].
    #[arg(long, short = 'o')]
    pub owner: Option<String>,
    /// Comma-separated scopes: chat, completions, embeddings, audio, moderation, documents,
    /// admin [default: every scope but admin].
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<Scope>,
    /// Comma-separated models the key may use [default: every model].
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Expire this long from now: a whole number with s, m, h, d or w, e.g. 30d
    /// [default: never].
    #[arg(long, value_parser = parse_duration, conflicts_with = "expires_at")]
    pub expires_in: Option<Duration>,
    /// Expire at this time, RFC 3339, e.g. 2026-01-31T00:00:00Z [default: never].
    #[arg(long, value_parser = parse_rfc3339)]
    pub expires_at: Option<u64>,
    /// Requests per minute [default: no limit].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rpm: Option<u32>,
    /// Tokens (prompt and completion) per minute [default: no limit].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub tpm: Option<u32>,
    /// Requests in flight at once [default: no limit].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: Option<u32>,
    /// Spending cap in US dollars, e.g. 5.00; needs --budget-period [default: none].
    #[arg(long, value_parser = parse_usd, requires = "budget_period")]
    pub budget_usd: Option<u64>,
    /// The period the budget covers: daily, monthly or total [default: none].
    #[arg(long, requires = "budget_usd")]
    pub budget_period: Option<BudgetPeriod>,
    /// What the safety filter checks for this key: both, input, output or none
    /// [default: the gateway's --safety-checks].
    #[arg(long, value_name = "WHAT")]
    pub safety: Option<SafetyChecks>,
}

impl CreateKeyArgs {
    /// The key to create, with expiry measured from `now` (seconds since the epoch).
    pub fn into_new_key(self, now: u64) -> NewKey {
        let owner = self.owner.unwrap_or_else(|| self.name.clone());
        let mut new = NewKey::new(self.name, owner);
        if !self.scopes.is_empty() {
            new.scopes = self.scopes.into_iter().collect();
        }
        if !self.models.is_empty() {
            new.models = Some(self.models.into_iter().collect());
        }
        new.expires_at = self
            .expires_at
            .or_else(|| self.expires_in.map(|ttl| now.saturating_add(ttl.as_secs())));
        new.limits = KeyLimits {
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            budget: self
                .budget_usd
                .zip(self.budget_period)
                .map(|(limit_micro_usd, period)| Budget {
                    limit_micro_usd,
                    period,
                }),
        };
        new.safety = self.safety;
        new
    }
}

/// `passerelle bench`: drives chat requests at a base URL, or with `mock-upstream` answers them.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchMode {
    /// Answer `POST /v1/chat/completions` at once with a fixed small completion, or a short
    /// SSE stream when the request asks for one.
    MockUpstream(MockUpstreamArgs),
}

/// How much load `passerelle bench` sends, and where.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Base URL of the OpenAI-compatible API, up to `/v1` (plain `http://` only).
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    pub url: String,
    /// API key sent as a bearer token [default: none].
    #[arg(long, env = "PASSERELLE_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The `model` of each request.
    #[arg(long, default_value = "bench")]
    pub model: String,
    /// Measured requests, shared by all connections.
    #[arg(long, short = 'n', default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Connections, each with one request in flight at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Unmeasured requests sent first, to open connections and warm caches.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Stop the measured phase after this many seconds even if requests remain.
    #[arg(long, default_value_t = 60)]
    pub max_secs: u64,
    /// Ask for a streamed answer (with `stream_options.include_usage`) and also report the
    /// time to its first SSE event, the time to its first token (the first event carrying
    /// content, not the role-only opening) and the gaps between tokens.
    #[arg(long)]
    pub stream: bool,
    /// Send a user message of about this many tokens instead of "Say hello.": this many words
    /// of common English (one token each in the usual BPE vocabularies), after a tag of about
    /// a dozen tokens that is different for every request of every run, so that no prefix or
    /// response cache can answer a request from an earlier one [default: "Say hello."].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub prompt_tokens: Option<u32>,
    /// With `--prompt-tokens`: send the same message in every request (a tag of zeros), so
    /// that prefix and response caches may answer from the first.
    #[arg(long, requires = "prompt_tokens")]
    pub same_prompt: bool,
    /// The `max_tokens` of each request. The API has no `ignore_eos`: a model may stop earlier,
    /// and the token counts in the report are what it generated.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// A process whose CPU time (user + system, its descendants included) is divided by the
    /// measured requests; repeatable, summed.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// The mock upstream's address and answer shape.
#[derive(Debug, Args)]
pub struct MockUpstreamArgs {
    /// Address to listen on.
    #[arg(long, short = 'l', default_value = "127.0.0.1:18090")]
    pub listen: SocketAddr,
    /// Content chunks in a streamed answer.
    #[arg(long, default_value_t = 4)]
    pub chunks: u32,
    /// Pause between streamed events, in microseconds [default: none].
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_us: u64,
    /// Runtime threads serving requests.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
}

/// `90s`, `15m`, `12h`, `30d`, `2w`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h, d or w (e.g. 30d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => return Err(format!("unknown unit {other:?}; use s, m, h, d or w")),
    };
    if number == 0 {
        return Err("the duration must be positive".to_owned());
    }
    number
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// An RFC 3339 time as seconds since the epoch.
fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let time = chrono::DateTime::parse_from_rfc3339(text.trim())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2026-01-31T00:00:00Z: {e}"))?;
    u64::try_from(time.timestamp()).map_err(|_| format!("{text:?} is before 1970"))
}

/// US dollars with at most six decimals (`5`, `5.00`, `0.000001`) as micro-USD, exactly.
fn parse_usd(text: &str) -> Result<u64, String> {
    let text = text.trim().trim_start_matches('$');
    let bad = || format!("{text:?} is not an amount in dollars like 5.00");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if fraction.len() > 6 {
        return Err(format!("{text:?} has more than six decimals"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let fraction: u64 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(1_000_000)
        .and_then(|micro| micro.checked_add(fraction))
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
    fn embeddings_takes_a_redis_url_for_its_cache() {
        let cli = Cli::try_parse_from([
            "passerelle",
            "embeddings",
            "--redis-url",
            "redis://127.0.0.1:6379/",
        ])
        .unwrap();
        let Command::Embeddings(embeddings) = cli.command else {
            panic!("not embeddings")
        };
        assert_eq!(
            embeddings.redis_url.as_deref(),
            Some("redis://127.0.0.1:6379/")
        );
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
    fn safety_takes_rules_and_layer_switches() {
        let cli = Cli::try_parse_from([
            "passerelle",
            "safety",
            "--listen",
            "127.0.0.1:50053",
            "--rules",
            "rules.toml",
            "--no-pii",
        ])
        .unwrap();
        let Command::Safety(safety) = cli.command else {
            panic!("not safety")
        };
        assert_eq!(safety.rules.as_deref(), Some(Path::new("rules.toml")));
        assert!(safety.no_pii && !safety.no_rules);
        assert!(
            Cli::try_parse_from(["passerelle", "safety", "--rules", "r.toml", "--no-rules"])
                .is_err()
        );
    }

    #[test]
    fn bad_values_are_rejected_by_the_parser() {
        assert!(Cli::try_parse_from(["passerelle", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["passerelle", "serve", "--threads", "-1"]).is_err());
        assert!(Cli::try_parse_from(["passerelle", "keys", "revoke"]).is_err());
    }

    fn create_args(argv: &[&str]) -> Result<CreateKeyArgs, clap::Error> {
        let mut full = vec!["passerelle", "keys", "create"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full)?.command {
            Command::Keys(KeysArgs {
                action: KeysAction::Create(create),
                ..
            }) => Ok(create),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn keys_create_takes_scopes_models_expiry_and_limits() {
        let args = create_args(&[
            "--name",
            "app",
            "--owner",
            "alice",
            "--scopes",
            "chat,embeddings",
            "--models",
            "tiny,big",
            "--expires-in",
            "30d",
            "--rpm",
            "60",
            "--tpm",
            "1000",
            "--max-concurrent",
            "2",
            "--budget-usd",
            "5.25",
            "--budget-period",
            "monthly",
        ])
        .unwrap();
        let new = args.into_new_key(1_000);
        assert_eq!(new.owner, "alice");
        assert_eq!(
            new.scopes,
            [Scope::Chat, Scope::Embeddings].into_iter().collect()
        );
        assert_eq!(new.models.unwrap().len(), 2);
        assert_eq!(new.expires_at, Some(1_000 + 30 * 86_400));
        assert_eq!(new.limits.rpm, Some(60));
        assert_eq!(new.limits.max_concurrent, Some(2));
        assert_eq!(
            new.limits.budget,
            Some(Budget {
                limit_micro_usd: 5_250_000,
                period: BudgetPeriod::Monthly
            })
        );
    }

    #[test]
    fn keys_create_defaults_to_every_user_scope_and_the_name_as_owner() {
        let new = create_args(&["--name", "ci"]).unwrap().into_new_key(0);
        assert_eq!(new.owner, "ci");
        assert_eq!(new.scopes, Scope::all_user());
        assert_eq!(new.models, None);
        assert_eq!(new.expires_at, None);
        assert!(new.limits.is_unlimited());
        let at = create_args(&["--name", "ci", "--expires-at", "2026-01-31T00:00:00Z"]).unwrap();
        assert_eq!(at.into_new_key(0).expires_at, Some(1_769_817_600));
    }

    #[test]
    fn keys_create_rejects_nonsense() {
        for argv in [
            &["--name", "ci", "--scopes", "chat,root"][..],
            &["--name", "ci", "--rpm", "0"],
            &["--name", "ci", "--expires-in", "30"],
            &[
                "--name",
                "ci",
                "--expires-in",
                "30d",
                "--expires-at",
                "2026-01-01T00:00:00Z",
            ],
            &["--name", "ci", "--budget-usd", "5"],
            &[
                "--name",
                "ci",
                "--budget-usd",
                "5",
                "--budget-period",
                "weekly",
            ],
        ] {
            assert!(create_args(argv).is_err(), "{argv:?} was accepted");
        }
        let err = create_args(&["--name", "ci", "--scopes", "root"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("valid scopes are chat"), "{err}");
    }

    #[test]
    fn durations_and_dollars_parse_exactly() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert!(parse_duration("0d").is_err() && parse_duration("5y").is_err());
        assert!(parse_duration("d").is_err());
        assert_eq!(parse_usd("5"), Ok(5_000_000));
        assert_eq!(parse_usd("$0.10"), Ok(100_000));
        assert_eq!(parse_usd(".000001"), Ok(1));
        for bad in ["", ".", "1.0000001", "-1", "1e3", "abc"] {
            assert!(parse_usd(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
