//! The whole stack on loopback: the llm service and the gateway in this process, wired through
//! the same gRPC client a split deployment uses. Tests talk to it over real HTTP.
//!
//! [`Stack::start_gateway`] starts more gateways in front of the same services, each with its own
//! store, limiter and registry: replicas sharing a Redis, or a gateway restarted on its data.

use std::{path::PathBuf, sync::Arc, time::Duration};

use passerelle_gateway::{AppState, GatewayConfig};
use passerelle_llm::LlmServiceConfig;
use passerelle_store::{EmbeddedStore, StaticKeys, Store};
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// A `.gguf` file or a safetensors directory.
    pub model_path: PathBuf,
    /// The id clients name the model by.
    pub model_id: String,
    /// Plaintext keys the gateway accepts; none means an open gateway.
    pub api_keys: Vec<String>,
    /// Gateway settings; `llm_endpoint` is filled in.
    pub gateway: GatewayConfig,
    /// Requests that may wait for the engine.
    pub queue_capacity: usize,
    /// The llm engine's batching limits and KV cache budget.
    pub batch: passerelle_llm::BatchConfig,
    /// A sentence-transformers directory to serve through the embeddings service, if any.
    pub embedding_model: Option<PathBuf>,
    /// The id clients name the embedding model by.
    pub embedding_model_id: String,
    /// Run a safety service with this configuration and check prompts and answers with it
    /// (`Some(Default::default())`: the built-in rules and PII).
    pub safety: Option<passerelle_safety::SafetyServiceConfig>,
    /// Wait for `/health/ready` to answer 200 before returning (default); false waits only
    /// for `/health/live`, for tests of a gateway that is meant to stay not ready.
    pub wait_until_ready: bool,
}

impl StackOptions {
    /// Serves `model_path` as `model_id`, with one API key, [`Stack::API_KEY`].
    pub fn new(model_path: impl Into<PathBuf>, model_id: impl Into<String>) -> Self {
        Self {
            model_path: model_path.into(),
            model_id: model_id.into(),
            api_keys: vec![Stack::API_KEY.to_owned()],
            gateway: GatewayConfig::default(),
            queue_capacity: 16,
            batch: passerelle_llm::BatchConfig::default(),
            embedding_model: None,
            embedding_model_id: "all-MiniLM-L6-v2".to_owned(),
            safety: None,
            wait_until_ready: true,
        }
    }
}

/// A running gateway and llm service. Dropping it signals both to shut down.
pub struct Stack {
    base_url: String,
    llm_endpoint: String,
    embeddings_endpoint: Option<String>,
    registry: prometheus::Registry,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    store: Arc<EmbeddedStore>,
    _data_dir: tempfile::TempDir,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("base_url", &self.base_url)
            .field("llm_endpoint", &self.llm_endpoint)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// The key [`StackOptions::new`] configures.
    pub const API_KEY: &'static str = "psk-testkit-0123456789abcdef0123456789abcdef";

    /// Starts both servers on `127.0.0.1:0` and waits until `/health/ready` answers 200.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let (stop, stopped) = watch::channel(false);
        let shutdown = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };

        let llm_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let llm_endpoint = format!("http://{}", llm_listener.local_addr()?);
        let llm_config = LlmServiceConfig {
            model_path: options.model_path.clone(),
            model_id: options.model_id.clone(),
            source: options.model_path.display().to_string(),
            device: passerelle_llm::DeviceChoice::Cpu,
            threads: Some(1),
            queue_capacity: options.queue_capacity,
            batch: options.batch.clone(),
        };
        let llm = tokio::spawn({
            let registry = registry.clone();
            let shutdown = shutdown();
            async move {
                if let Err(err) =
                    passerelle_llm::serve(llm_config, llm_listener, registry, shutdown).await
                {
                    eprintln!("testkit: llm service failed: {err}");
                }
            }
        });

        let mut tasks = vec![llm];
        let embeddings_endpoint = match &options.embedding_model {
            Some(model_path) => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let endpoint = format!("http://{}", listener.local_addr()?);
                let config = passerelle_embeddings::EmbeddingsServiceConfig {
                    model_path: model_path.clone(),
                    model_id: options.embedding_model_id.clone(),
                    source: model_path.display().to_string(),
                    threads: Some(1),
                    queue_capacity: options.queue_capacity,
                    max_batch: 32,
                    matryoshka: false,
                    device: Default::default(),
                    cache: Default::default(),
                    documents: Default::default(),
                };
                let registry = registry.clone();
                let shutdown = shutdown();
                tasks.push(tokio::spawn(async move {
                    if let Err(err) =
                        passerelle_embeddings::serve(config, listener, registry, shutdown).await
                    {
                        eprintln!("testkit: embeddings service failed: {err}");
                    }
                }));
                Some(endpoint)
            }
            None => None,
        };

        let safety = if let Some(config) = options.safety.clone() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let endpoint = format!("http://{}", listener.local_addr()?);
            let registry = registry.clone();
            let shutdown = shutdown();
            tasks.push(tokio::spawn(async move {
                if let Err(err) =
                    passerelle_safety::serve(config, listener, registry, shutdown).await
                {
                    eprintln!("testkit: safety service failed: {err}");
                }
            }));
            // The stack's service at the endpoint, with the test's other settings.
            let defaults = passerelle_gateway::safety::SafetyConfig::new(endpoint.clone());
            Some(passerelle_gateway::safety::SafetyConfig {
                endpoint,
                ..options.gateway.safety.clone().unwrap_or(defaults)
            })
        } else {
            options.gateway.safety.clone()
        };

        let data_dir = tempfile::Builder::new()
            .prefix("passerelle-stack-")
            .tempdir()?;
        let store = Arc::new(EmbeddedStore::open(data_dir.path())?);
        let gateway_store = store.clone();
        let config = GatewayConfig {
            llm_endpoint: llm_endpoint.clone(),
            embeddings_endpoint: embeddings_endpoint.clone(),
            safety,
            ..options.gateway
        };
        let state = AppState::new(
            config,
            gateway_store,
            StaticKeys::from_plaintext(&options.api_keys),
            &registry,
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let gateway = tokio::spawn({
            let shutdown = shutdown();
            async move {
                if let Err(err) = passerelle_gateway::serve(listener, state, shutdown).await {
                    eprintln!("testkit: gateway failed: {err}");
                }
            }
        });

        tasks.push(gateway);
        let stack = Self {
            base_url,
            llm_endpoint,
            embeddings_endpoint,
            registry,
            stop,
            tasks,
            store,
            _data_dir: data_dir,
        };
        let probe = if options.wait_until_ready {
            "/health/ready"
        } else {
            "/health/live"
        };
        wait_for(&stack.base_url, probe, Duration::from_secs(60)).await?;
        Ok(stack)
    }

    /// The gateway's store, to create keys with scopes and limits and read records back.
    pub fn store(&self) -> &EmbeddedStore {
        &self.store
    }

    /// `http://127.0.0.1:PORT` of the gateway.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The full URL of `path` on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The llm service's gRPC endpoint.
    pub fn llm_endpoint(&self) -> &str {
        &self.llm_endpoint
    }

    /// The registry both servers report to (what `/metrics` renders).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// The value of a counter or gauge whose labels include every pair in `labels`, summed over
    /// the matching series; 0 when none matches.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.registry, name, labels)
    }

    /// Polls `/health/ready` until it answers 200, without sleeping longer than needed.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_ready(&self.base_url, timeout).await
    }

    /// Starts another gateway in front of this stack's services (`config`'s endpoints are
    /// replaced by the stack's) with `store`, `static_keys` (empty: only the store's keys) and
    /// its own metrics registry, and waits until `/health/ready` answers 200. Its limiter is
    /// built from `config.rate_limiter`, so two gateways on one Redis share their limits.
    pub async fn start_gateway(
        &self,
        config: GatewayConfig,
        store: Arc<dyn Store>,
        static_keys: StaticKeys,
    ) -> anyhow::Result<Gateway> {
        let config = GatewayConfig {
            llm_endpoint: self.llm_endpoint.clone(),
            embeddings_endpoint: self.embeddings_endpoint.clone(),
            ..config
        };
        let registry = prometheus::Registry::new();
        let state = AppState::new(config, store, static_keys, &registry)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(passerelle_gateway::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let gateway = Gateway {
            base_url,
            registry,
            stop: Some(stop),
            task: Some(task),
        };
        wait_ready(&gateway.base_url, Duration::from_secs(60)).await?;
        Ok(gateway)
    }

    /// Polls `condition` every few milliseconds until it holds or `timeout` passes.
    pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        condition()
    }

    /// Signals both servers and waits for them to drain.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A gateway from [`Stack::start_gateway`]. Dropping it signals it to shut down;
/// [`Gateway::shutdown`] also waits until it has.
pub struct Gateway {
    base_url: String,
    registry: prometheus::Registry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// `http://127.0.0.1:PORT` of this gateway.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The full URL of `path` on this gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// This gateway's registry (what its `/metrics` renders).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Like [`Stack::metric`], on this gateway's registry.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.registry, name, labels)
    }

    /// Signals shutdown and waits until `serve` has returned: in-flight requests drained and
    /// the audit and usage records written to the store (within the configured grace).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => Ok(task.await??),
            None => Ok(()),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls `{base_url}/health/ready` until it answers 200 (`ready` or `degraded`).
async fn wait_ready(base_url: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_for(base_url, "/health/ready", timeout).await
}

/// Polls `{base_url}{path}` until it answers 200.
async fn wait_for(base_url: &str, path: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{base_url}{path}");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ready = client
            .get(&url)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{url} did not answer 200 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// See [`Stack::metric`].
fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| {
            let kind = family.get_field_type();
            family.get_metric().iter().map(move |metric| (kind, metric))
        })
        .filter(|(_, metric)| {
            labels.iter().all(|(key, value)| {
                metric
                    .get_label()
                    .iter()
                    .any(|pair| pair.name() == *key && pair.value() == *value)
            })
        })
        .map(|(kind, metric)| match kind {
            prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
            prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
            _ => 0.0,
        })
        .sum()
}
