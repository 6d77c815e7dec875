//! Flags and variables (already merged by clap) layered over the file, over the defaults, into
//! the domain configuration each component takes.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use passerelle_model_runtime::HubOptions;
use passerelle_telemetry::{LogFormat, TelemetryConfig};

use crate::{
    args::{BatchArgs, EmbeddingArgs, GatewayOptions, HubArgs, LogArgs, ModelArgs},
    config::{self, FileConfig},
};

/// The model to load and how to fetch it.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub model: String,
    pub model_id: Option<String>,
    pub threads: Option<usize>,
    pub device: passerelle_model_runtime::DeviceChoice,
    pub hub: HubOptions,
    pub queue_capacity: usize,
    pub batch: passerelle_llm::BatchConfig,
}

/// The embedding model to load and how to fetch it.
#[derive(Debug, Clone)]
pub struct EmbeddingSettings {
    pub model: String,
    pub model_id: Option<String>,
    pub matryoshka: bool,
    pub cache_max_entries: usize,
    /// Redis the semantic cache is shared through, if any.
    pub redis_url: Option<String>,
    /// Where the document store keeps its documents.
    pub documents_dir: PathBuf,
    pub threads: Option<usize>,
    pub device: passerelle_model_runtime::DeviceChoice,
    pub hub: HubOptions,
}

/// The gateway's configuration plus the key sources it reads.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub config: passerelle_gateway::GatewayConfig,
    pub api_keys: Vec<String>,
    pub data_dir: PathBuf,
    pub redis_url: Option<String>,
    /// HTTP worker threads; 0 serves on the shared runtime.
    pub workers: usize,
}

pub fn telemetry(
    args: &LogArgs,
    file: &FileConfig,
    service_name: &str,
) -> anyhow::Result<TelemetryConfig> {
    let log_format = match (&args.log_format, &file.log_format) {
        (Some(format), _) => *format,
        (None, Some(format)) => format.parse().map_err(anyhow::Error::msg)?,
        (None, None) => LogFormat::Text,
    };
    Ok(TelemetryConfig {
        service_name: service_name.to_owned(),
        log_format,
        log_filter: pick(args.log_filter.clone(), file.log_filter.clone(), || {
            "info".to_owned()
        }),
        otlp_endpoint: args
            .otlp_endpoint
            .clone()
            .or_else(|| file.otlp_endpoint.clone()),
    })
}

pub fn model(args: &ModelArgs, file: &FileConfig) -> anyhow::Result<ModelSettings> {
    let queue_capacity = args.queue_capacity.or(file.queue_capacity).unwrap_or(64);
    if queue_capacity == 0 {
        anyhow::bail!("queue_capacity must be at least 1");
    }
    Ok(ModelSettings {
        model: pick(args.model.clone(), file.model.clone(), || {
            config::DEFAULT_MODEL.to_owned()
        }),
        model_id: args.model_id.clone().or_else(|| file.model_id.clone()),
        threads: threads(args.threads, file)?,
        device: match (args.device, &file.device) {
            (Some(device), _) => device,
            (None, Some(device)) => device
                .parse()
                .map_err(|err| anyhow::anyhow!("`device` in the configuration file: {err}"))?,
            (None, None) => passerelle_model_runtime::DeviceChoice::Cpu,
        },
        hub: hub(&args.hub, file),
        queue_capacity,
        batch: batch(&args.batch, file)?,
    })
}

/// The engine's batching limits: flags over the file over the defaults.
pub fn batch(args: &BatchArgs, file: &FileConfig) -> anyhow::Result<passerelle_llm::BatchConfig> {
    let defaults = passerelle_llm::BatchConfig::default();
    let config = passerelle_llm::BatchConfig {
        kv_cache_tokens: args.kv_cache_tokens.or(file.kv_cache_tokens),
        max_running: args
            .max_running
            .or(file.max_running)
            .unwrap_or(defaults.max_running),
        max_batch_tokens: args
            .max_batch_tokens
            .or(file.max_batch_tokens)
            .unwrap_or(defaults.max_batch_tokens),
        prefill_chunk: args
            .prefill_chunk
            .or(file.prefill_chunk)
            .unwrap_or(defaults.prefill_chunk),
        max_wait: args
            .max_wait_ms
            .or(file.max_wait_ms)
            .map_or(defaults.max_wait, Duration::from_millis),
    };
    config.check()?;
    Ok(config)
}

/// The embedding model to serve, if any: `default` applies when none is configured.
pub fn embedding(
    args: &EmbeddingArgs,
    file: &FileConfig,
    threads: Option<usize>,
    hub: HubOptions,
    default: Option<&str>,
) -> Option<EmbeddingSettings> {
    let model = args
        .embedding_model
        .clone()
        .or_else(|| file.embedding_model.clone())
        .or_else(|| default.map(str::to_owned))?;
    Some(EmbeddingSettings {
        model,
        model_id: args
            .embedding_model_id
            .clone()
            .or_else(|| file.embedding_model_id.clone()),
        matryoshka: args
            .embedding_matryoshka
            .or(file.embedding_matryoshka)
            .unwrap_or(false),
        cache_max_entries: args
            .semantic_cache_max_entries
            .or(file.semantic_cache_max_entries)
            .unwrap_or(passerelle_embeddings::CacheConfig::default().max_entries),
        // Set by the command: `embeddings` has its own flag, `serve` passes the gateway's.
        redis_url: None,
        documents_dir: args
            .documents_dir
            .clone()
            .or_else(|| file.documents_dir.clone())
            .unwrap_or_else(|| {
                file.data_dir
                    .clone()
                    .unwrap_or_else(config::default_data_dir)
                    .join("documents")
            }),
        threads,
        device: args.embedding_device.unwrap_or_default(),
        hub,
    })
}

/// `threads` from the flag or the file; zero is refused.
pub fn threads(flag: Option<usize>, file: &FileConfig) -> anyhow::Result<Option<usize>> {
    let threads = flag.or(file.threads);
    if threads == Some(0) {
        anyhow::bail!("threads must be at least 1");
    }
    Ok(threads)
}

/// How hub repo ids are fetched.
pub fn hub(args: &HubArgs, file: &FileConfig) -> HubOptions {
    let hf_offline = std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|value| matches!(value.as_str(), "1" | "true" | "TRUE" | "yes"));
    HubOptions {
        cache_dir: args.hf_cache.clone().or_else(|| file.hf_cache.clone()),
        offline: args.offline.or(file.offline).unwrap_or(hf_offline),
        revision: pick(args.revision.clone(), file.revision.clone(), || {
            "main".to_owned()
        }),
        ..HubOptions::default()
    }
}

pub fn gateway(
    args: &GatewayOptions,
    file: &FileConfig,
    llm_endpoint: String,
    embeddings_endpoint: Option<String>,
) -> anyhow::Result<GatewaySettings> {
    let defaults = passerelle_gateway::GatewayConfig::default();
    let api_keys = match &args.api_keys {
        Some(joined) => config::split_keys(joined),
        None => file
            .api_keys
            .clone()
            .map(config::ApiKeysValue::into_keys)
            .unwrap_or_default(),
    };
    let body_limit_bytes = args
        .max_body_bytes
        .or(file.max_body_bytes)
        .unwrap_or(defaults.body_limit_bytes);
    if body_limit_bytes == 0 {
        anyhow::bail!("max_body_bytes must be at least 1");
    }
    let request_timeout = args
        .request_timeout_secs
        .or(file.request_timeout_secs)
        .map(Duration::from_secs)
        .unwrap_or(defaults.request_timeout);
    let semantic_cache = semantic_cache(args, file)?;
    let drift = drift(args, file)?;
    let redis_url = args.redis_url.clone().or_else(|| file.redis_url.clone());
    let rate_limiter = rate_limiter(args, file, redis_url.as_deref())?;
    let jwt = jwt(args, file)?;
    let prices =
        passerelle_gateway::pricing::PriceList::new(file.prices.clone().unwrap_or_default())?;
    let routing = routing_source(args, file, None).build(file)?;
    Ok(GatewaySettings {
        workers: args
            .workers
            .or(file.workers)
            .unwrap_or_else(|| passerelle_gateway::workers::default_count().get()),
        redis_url,
        config: passerelle_gateway::GatewayConfig {
            semantic_cache,
            drift,
            rate_limiter,
            jwt,
            prices,
            routing,
            rate_limits: passerelle_gateway::ratelimit::Limits {
                rpm: args.rate_limit_rpm.or(file.rate_limit_rpm),
                tpm: args.rate_limit_tpm.or(file.rate_limit_tpm),
                max_concurrent: args.rate_limit_concurrency.or(file.rate_limit_concurrency),
            },
            trust_forwarded_for: args
                .trust_forwarded_for
                .or(file.trust_forwarded_for)
                .unwrap_or(defaults.trust_forwarded_for),
            log_prompts: args
                .log_prompts
                .or(file.log_prompts)
                .unwrap_or(defaults.log_prompts),
            llm_endpoint,
            embeddings_endpoint,
            body_limit_bytes,
            request_timeout,
            require_auth: args
                .require_auth
                .or(file.require_auth)
                .unwrap_or(defaults.require_auth),
            ..defaults
        },
        api_keys,
        data_dir: args
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(config::default_data_dir),
    })
}

/// Where the routing table comes from: the flags, and the file at `config_path` on reload.
pub fn routing_source(
    args: &GatewayOptions,
    file: &FileConfig,
    config_path: Option<&std::path::Path>,
) -> crate::routing::RoutingSource {
    crate::routing::RoutingSource {
        config_path: config_path.map(std::path::Path::to_path_buf),
        upstreams: args.upstreams.clone(),
        upstream_keys: args.upstream_keys.clone(),
        watch_file: args.watch_config.or(file.watch_config).unwrap_or(true),
    }
}

fn semantic_cache(
    args: &GatewayOptions,
    file: &FileConfig,
) -> anyhow::Result<Option<passerelle_gateway::SemanticCacheConfig>> {
    if !args.semantic_cache.or(file.semantic_cache).unwrap_or(false) {
        return Ok(None);
    }
    let defaults = passerelle_gateway::SemanticCacheConfig::default();
    let min_similarity = args
        .semantic_cache_threshold
        .or(file.semantic_cache_threshold)
        .unwrap_or(defaults.min_similarity);
    if !(min_similarity > 0.0 && min_similarity <= 1.0) {
        anyhow::bail!("semantic_cache_threshold must be in (0, 1], got {min_similarity}");
    }
    Ok(Some(passerelle_gateway::SemanticCacheConfig {
        min_similarity,
        ttl: args
            .semantic_cache_ttl_secs
            .or(file.semantic_cache_ttl_secs)
            .map(Duration::from_secs)
            .unwrap_or(defaults.ttl),
        shared_across_keys: args
            .semantic_cache_shared
            .or(file.semantic_cache_shared)
            .unwrap_or(defaults.shared_across_keys),
    }))
}

fn rate_limiter(
    args: &GatewayOptions,
    file: &FileConfig,
    redis_url: Option<&str>,
) -> anyhow::Result<passerelle_gateway::ratelimit::RateLimiterConfig> {
    use passerelle_gateway::ratelimit::{FailurePolicy, RateLimiterConfig, RedisLimiterConfig};
    let policy = match args
        .redis_failure_policy
        .as_deref()
        .or(file.redis_failure_policy.as_deref())
    {
        None | Some("open") => FailurePolicy::Open,
        Some("closed") => FailurePolicy::Closed,
        Some(other) => anyhow::bail!("redis_failure_policy must be open or closed, got {other:?}"),
    };
    Ok(RateLimiterConfig {
        redis: redis_url.map(|url| RedisLimiterConfig {
            failure_policy: policy,
            ..RedisLimiterConfig::new(url)
        }),
        adaptive: args
            .rate_limit_adaptive
            .or(file.rate_limit_adaptive)
            .unwrap_or(false)
            .then(passerelle_gateway::ratelimit::AdaptiveConfig::default),
    })
}

/// The gateway's use of the safety service at `endpoint`, if one runs.
pub fn safety(
    args: &GatewayOptions,
    file: &FileConfig,
    endpoint: Option<String>,
) -> anyhow::Result<Option<passerelle_gateway::safety::SafetyConfig>> {
    let (check_input, check_output) = match args
        .safety_checks
        .as_deref()
        .or(file.safety_checks.as_deref())
    {
        None | Some("both") => (true, true),
        Some("input") => (true, false),
        Some("output") => (false, true),
        Some("none") => (false, false),
        Some(other) => {
            anyhow::bail!("safety_checks must be both, input, output or none, got {other:?}")
        }
    };
    let failure_policy = match args
        .safety_failure_policy
        .as_deref()
        .or(file.safety_failure_policy.as_deref())
    {
        None | Some("closed") => passerelle_gateway::ratelimit::FailurePolicy::Closed,
        Some("open") => passerelle_gateway::ratelimit::FailurePolicy::Open,
        Some(other) => {
            anyhow::bail!("safety_failure_policy must be open or closed, got {other:?}")
        }
    };
    let timeout = match args.safety_timeout_ms.or(file.safety_timeout_ms) {
        Some(0) => anyhow::bail!("safety_timeout_ms must be at least 1"),
        Some(ms) => Some(std::time::Duration::from_millis(ms)),
        None => None,
    };
    Ok(endpoint.map(|endpoint| {
        let mut config = passerelle_gateway::safety::SafetyConfig::new(endpoint);
        config.check_input = check_input;
        config.check_output = check_output;
        config.failure_policy = failure_policy;
        config.overlap = !args
            .safety_sequential
            .or(file.safety_sequential)
            .unwrap_or(false);
        config.refusal_message = args
            .safety_refusal_message
            .clone()
            .or_else(|| file.safety_refusal_message.clone());
        if let Some(timeout) = timeout {
            config.timeout = timeout;
        }
        config
    }))
}

fn jwt(
    args: &GatewayOptions,
    file: &FileConfig,
) -> anyhow::Result<Option<passerelle_gateway::jwt::JwtConfig>> {
    let secret = args.jwt_secret.clone().or_else(|| file.jwt_secret.clone());
    let public_key = match args
        .jwt_public_key
        .as_ref()
        .or(file.jwt_public_key.as_ref())
    {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read the JWT public key {}: {e}", path.display())
        })?),
        None => None,
    };
    let jwks_path = args.jwt_jwks.clone().or_else(|| file.jwt_jwks.clone());
    if secret.is_none() && public_key.is_none() && jwks_path.is_none() {
        return Ok(None);
    }
    Ok(Some(passerelle_gateway::jwt::JwtConfig {
        hs256_secret: secret,
        public_key_pem: public_key,
        jwks_path,
        issuer: args.jwt_issuer.clone().or_else(|| file.jwt_issuer.clone()),
        audience: args
            .jwt_audience
            .clone()
            .or_else(|| file.jwt_audience.clone()),
        ..Default::default()
    }))
}

fn drift(
    args: &GatewayOptions,
    file: &FileConfig,
) -> anyhow::Result<Option<passerelle_gateway::DriftConfig>> {
    if !args.drift.or(file.drift).unwrap_or(false) {
        return Ok(None);
    }
    let defaults = passerelle_gateway::DriftConfig::default();
    let sample_rate = args
        .drift_sample_rate
        .or(file.drift_sample_rate)
        .unwrap_or(defaults.sample_rate);
    if !(0.0..=1.0).contains(&sample_rate) {
        anyhow::bail!("drift_sample_rate must be in [0, 1], got {sample_rate}");
    }
    let window = args
        .drift_window
        .or(file.drift_window)
        .unwrap_or(defaults.window);
    if window < 10 {
        anyhow::bail!("drift_window must be at least 10, got {window}");
    }
    let threshold = args
        .drift_threshold
        .or(file.drift_threshold)
        .unwrap_or(defaults.threshold);
    if !(threshold > 0.0 && threshold <= 1.0) {
        anyhow::bail!("drift_threshold must be in (0, 1], got {threshold}");
    }
    Ok(Some(passerelle_gateway::DriftConfig {
        sample_rate,
        window,
        // A fifth of a window is enough for a stable test and reports drift sooner.
        min_recent: (window / 5).max(2),
        threshold,
        ..defaults
    }))
}

/// The listen address: flag or variable, else the file, else `default`.
pub fn listen(
    flag: Option<SocketAddr>,
    file: &FileConfig,
    default: &str,
) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = flag {
        return Ok(addr);
    }
    let text = file.listen.as_deref().unwrap_or(default);
    text.parse().with_context(|| {
        format!("invalid listen address `{text}` (expected host:port, e.g. 127.0.0.1:8080)")
    })
}

fn pick<T>(flag: Option<T>, file: Option<T>, default: impl FnOnce() -> T) -> T {
    flag.or(file).unwrap_or_else(default)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    fn serve_args(argv: &[&str]) -> crate::args::ServeArgs {
        let mut full = vec!["passerelle", "serve"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Serve(serve) => *serve,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file: FileConfig =
            toml::from_str("model = \"from-file.gguf\"\nthreads = 3\nlisten = \"0.0.0.0:9999\"")
                .unwrap();
        let serve = serve_args(&["--model", "from-flag.gguf"]);
        let model = model(&serve.model, &file).unwrap();
        assert_eq!(model.model, "from-flag.gguf");
        assert_eq!(model.threads, Some(3));
        assert_eq!(
            listen(serve.listen, &file, config::DEFAULT_LISTEN).unwrap(),
            "0.0.0.0:9999".parse().unwrap()
        );
    }

    #[test]
    fn batching_limits_come_from_flags_then_the_file_and_bad_ones_are_refused() {
        let file: FileConfig =
            toml::from_str("kv_cache_tokens = 8192\nmax_running = 4\nmax_wait_ms = 250").unwrap();
        let serve = serve_args(&["--max-running", "6", "--prefill-chunk", "128"]);
        let settings = model(&serve.model, &file).unwrap();
        assert_eq!(
            settings.batch,
            passerelle_llm::BatchConfig {
                kv_cache_tokens: Some(8192),
                max_running: 6,
                max_batch_tokens: 512,
                prefill_chunk: 128,
                max_wait: Duration::from_millis(250),
            }
        );
        let defaults = model(&serve_args(&[]).model, &FileConfig::default()).unwrap();
        assert_eq!(defaults.batch, passerelle_llm::BatchConfig::default());
        let bad = serve_args(&["--max-running", "600"]);
        let err = model(&bad.model, &FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("max_batch_tokens"), "{err}");
    }

    #[test]
    fn workers_come_from_the_flag_then_the_file_then_the_cores() {
        let gateway_of = |argv: &[&str], file: &str| {
            let file: FileConfig = toml::from_str(file).unwrap();
            let serve = serve_args(argv);
            gateway(&serve.gateway, &file, "http://127.0.0.1:1".to_owned(), None).unwrap()
        };
        assert_eq!(gateway_of(&["--workers", "0"], "workers = 3").workers, 0);
        assert_eq!(gateway_of(&[], "workers = 3").workers, 3);
        assert_eq!(
            gateway_of(&[], "").workers,
            passerelle_gateway::workers::default_count().get()
        );
    }

    #[test]
    fn upstream_flags_reach_the_gateway_config() {
        let serve = serve_args(&[
            "--upstream",
            "llama=http://127.0.0.1:8000/v1",
            "--upstream",
            "llama=http://127.0.0.1:8001/v1",
            "--upstream-key",
            "llama=secret",
        ]);
        let settings = gateway(
            &serve.gateway,
            &FileConfig::default(),
            "http://127.0.0.1:50051".to_owned(),
            None,
        )
        .unwrap();
        let upstreams = &settings.config.routing.upstreams;
        assert_eq!(upstreams.len(), 2);
        assert!(
            upstreams
                .iter()
                .all(|u| u.api_key.as_deref() == Some("secret"))
        );
        assert!(
            !format!("{:?}", settings.config).contains("secret"),
            "keys stay out of debug output"
        );
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let serve = serve_args(&[]);
        let file = FileConfig::default();
        let model = model(&serve.model, &file).unwrap();
        assert_eq!(model.model, config::DEFAULT_MODEL);
        assert_eq!(model.queue_capacity, 64);
        assert_eq!(
            listen(None, &file, config::DEFAULT_LISTEN)
                .unwrap()
                .to_string(),
            "127.0.0.1:8080"
        );
        let gateway = gateway(&serve.gateway, &file, "http://127.0.0.1:1".into(), None).unwrap();
        assert!(gateway.api_keys.is_empty());
        assert!(!gateway.config.require_auth);
    }

    #[test]
    fn api_keys_come_from_the_flag_or_the_file() {
        let file: FileConfig = toml::from_str("api_keys = [\"file-key\"]").unwrap();
        let from_file = gateway(&serve_args(&[]).gateway, &file, String::new(), None).unwrap();
        assert_eq!(from_file.api_keys, vec!["file-key"]);
        let from_flag = gateway(
            &serve_args(&["--api-keys", "a,b"]).gateway,
            &file,
            String::new(),
            None,
        )
        .unwrap();
        assert_eq!(from_flag.api_keys, vec!["a", "b"]);
    }

    #[test]
    fn jwt_keys_and_prompt_logging_come_from_flags_or_the_file() {
        let file: FileConfig =
            toml::from_str("jwt_jwks = \"/etc/idp/jwks.json\"\nlog_prompts = true").unwrap();
        let settings = gateway(&serve_args(&[]).gateway, &file, String::new(), None).unwrap();
        let jwt = settings.config.jwt.expect("a JWKS turns JWT auth on");
        assert_eq!(
            jwt.jwks_path.as_deref(),
            Some(std::path::Path::new("/etc/idp/jwks.json"))
        );
        assert!(settings.config.log_prompts);
        let defaults = gateway(
            &serve_args(&[]).gateway,
            &FileConfig::default(),
            String::new(),
            None,
        )
        .unwrap();
        assert!(defaults.config.jwt.is_none());
        assert!(!defaults.config.log_prompts);
        let flagged = gateway(
            &serve_args(&["--log-prompts", "--jwt-jwks", "keys.json"]).gateway,
            &FileConfig::default(),
            String::new(),
            None,
        )
        .unwrap();
        assert!(flagged.config.log_prompts);
        assert!(flagged.config.jwt.is_some());
    }

    #[test]
    fn the_file_is_watched_unless_turned_off() {
        let path = Some(std::path::Path::new("passerelle.toml"));
        let watched = |args: &[&str], file: &str| {
            let file: FileConfig = toml::from_str(file).unwrap();
            routing_source(&serve_args(args).gateway, &file, path).watch_file
        };
        assert!(watched(&[], ""));
        assert!(!watched(&[], "watch_config = false"));
        assert!(!watched(&["--watch-config", "false"], ""));
        assert!(watched(&["--watch-config"], "watch_config = false"));
    }

    #[test]
    fn nonsense_values_are_clear_errors() {
        let file: FileConfig = toml::from_str("listen = \"localhost\"").unwrap();
        let err = listen(None, &file, config::DEFAULT_LISTEN)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid listen address"), "{err}");
        let zero_threads = serve_args(&["--threads", "0"]);
        assert!(model(&zero_threads.model, &FileConfig::default()).is_err());
    }

    #[test]
    fn the_model_device_comes_from_the_flag_then_the_file_then_cpu() {
        use passerelle_model_runtime::DeviceChoice;

        let none = FileConfig::default();
        assert_eq!(
            model(&serve_args(&[]).model, &none).unwrap().device,
            DeviceChoice::Cpu
        );
        let file: FileConfig = toml::from_str("device = \"cuda:1\"").unwrap();
        assert_eq!(
            model(&serve_args(&[]).model, &file).unwrap().device,
            DeviceChoice::Cuda(1)
        );
        let flagged = serve_args(&["--device", "cpu"]);
        assert_eq!(
            model(&flagged.model, &file).unwrap().device,
            DeviceChoice::Cpu
        );
        let typo: FileConfig = toml::from_str("device = \"tpu\"").unwrap();
        let err = model(&serve_args(&[]).model, &typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`device`") && err.contains("cuda:N"), "{err}");
        assert!(Cli::try_parse_from(["passerelle", "llm", "--device", "tpu"]).is_err());
    }
}
