//! The engine thread: loads and warms up the model, then hands it to the batching loop
//! (`batcher`). Candle work runs inside a rayon pool of the configured size.

use std::{
    any::Any,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use passerelle_model_runtime::DeviceChoice;
use rayon::ThreadPool;
use tokio::sync::{mpsc, watch};
use tracing::Span;

use crate::{
    engine::{
        BatchConfig, EngineState, Waiting,
        batcher::Batcher,
        metrics::EngineMetrics,
        scheduler::{BLOCK_TOKENS, Scheduler},
        sequence::Reply,
    },
    error::{LlmError, LoadError},
    model::{self, CausalLm, Decoder, KvCache, ModelFiles, decoder::RopeScaling},
    plan::GenerationPlan,
    served::ServedModel,
};

/// A validated request on its way to the engine thread.
pub(crate) struct Job {
    pub plan: GenerationPlan,
    pub reply: Reply,
    /// The request's span, entered while the engine works on it.
    pub span: Span,
    pub admitted: Instant,
}

/// What handlers can ask of the engine thread.
pub(crate) enum Command {
    Generate(Job),
}

pub(crate) struct Worker {
    pub files: ModelFiles,
    pub model_id: String,
    pub device: DeviceChoice,
    pub threads: usize,
    pub state: watch::Sender<EngineState>,
    pub commands: mpsc::Receiver<Command>,
    pub metrics: EngineMetrics,
    pub batch: BatchConfig,
    pub waiting: Arc<Waiting>,
}

impl Worker {
    /// Runs until every handle is dropped and every admitted request has ended.
    pub fn run(mut self) {
        let loaded = self.compute_pool().and_then(|pool| {
            let (model, served) =
                pool.install(|| load_and_warm_up(&self.files, &self.model_id, self.device))?;
            let scheduler = Scheduler::new(self.batch.scheduler(served.context_length))?;
            Ok((pool, model, served, scheduler))
        });
        let (pool, model, served, scheduler) = match loaded {
            Ok(ready) => ready,
            Err(err) => {
                tracing::error!(error = %err, model = %self.model_id, "loading the model failed");
                let message: Arc<str> = err.to_string().into();
                self.state
                    .send_replace(EngineState::Failed(message.clone()));
                // Requests admitted just before the failure was published still get an answer.
                while let Some(Command::Generate(job)) = self.commands.blocking_recv() {
                    self.waiting.remove();
                    let _ = job
                        .reply
                        .blocking_send(Err(LlmError::LoadFailed(message.to_string())));
                }
                return;
            }
        };
        let decoder = model.decoder().clone();
        let limits = scheduler.config();
        let kv_tokens = limits.total_blocks * BLOCK_TOKENS;
        let kv_bytes = kv_tokens as u64 * kv_bytes_per_token(&decoder);
        self.metrics.kv_blocks_total.set(limits.total_blocks as i64);
        tracing::info!(
            model = %self.model_id,
            format = %served.format,
            device = %self.device,
            threads = self.threads,
            kv_cache_tokens = kv_tokens,
            kv_cache_gib = kv_bytes as f64 / f64::from(1u32 << 30),
            max_running = limits.max_running,
            max_batch_tokens = limits.max_batch_tokens,
            prefill_chunk = limits.prefill_chunk,
            "model ready"
        );
        self.state.send_replace(EngineState::Ready(served.clone()));
        let batcher = Batcher::new(
            &decoder,
            &served,
            &pool,
            &self.metrics,
            &self.waiting,
            scheduler,
            prefix_limit(&decoder),
        );
        batcher.run(&mut self.commands);
    }

    fn compute_pool(&self) -> Result<ThreadPool, LoadError> {
        let threads = self.threads;
        passerelle_model_runtime::compute::compute_pool("llm-compute", threads)
            .map_err(|source| LoadError::ThreadPool { threads, source })
    }
}

/// Loads the model and runs one token through it so the first request pays no warm-up cost.
fn load_and_warm_up(
    files: &ModelFiles,
    model_id: &str,
    device: DeviceChoice,
) -> Result<(CausalLm, Arc<ServedModel>), LoadError> {
    let started = Instant::now();
    let model::LoadedModel { mut model, assets } = model::load(files, &device.open()?)?;
    let warm_up_token = assets.eos_token_ids.first().copied().unwrap_or(0);
    model.forward(&[warm_up_token], 0)?;
    model.clear_kv_cache();
    // The batched path too, with two sequences.
    let mut caches = [KvCache::new(), KvCache::new()];
    let [a, b] = &mut caches;
    model.decoder().forward_batch(&mut [
        model::BatchItem {
            tokens: &[warm_up_token],
            cache: a,
        },
        model::BatchItem {
            tokens: &[warm_up_token, warm_up_token],
            cache: b,
        },
    ])?;
    let created_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let served = ServedModel::new(model_id.to_owned(), assets, created_unix)?;
    tracing::info!(elapsed = ?started.elapsed(), %device, context_length = served.context_length, "model loaded and warmed up");
    Ok((model, Arc::new(served)))
}

/// Bytes one cached position takes: keys and values of every layer, in f32.
fn kv_bytes_per_token(decoder: &Decoder) -> u64 {
    let config = decoder.config();
    (2 * config.num_layers * config.kv_width() * std::mem::size_of::<f32>()) as u64
}

/// Longest cache the prefix cache may keep. Past a longrope model's original context, the whole
/// cache is rotated with the long factors, which a shorter sequence starting from it must not
/// inherit.
fn prefix_limit(decoder: &Decoder) -> Option<usize> {
    match &decoder.config().rope.scaling {
        Some(RopeScaling::LongRope(long)) => Some(long.original_max_position_embeddings),
        Some(RopeScaling::Divisors(_)) | None => None,
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
