//! The engine thread: owns the model, loads and warms it up, then embeds queued requests,
//! taking those waiting together into shared forward passes. Candle and the tokenizer run
//! inside a rayon pool of the configured size.

use std::{
    any::Any,
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use passerelle_model_runtime::DeviceChoice;
use rayon::ThreadPool;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Span;

use crate::{
    engine::{
        EngineState, ServedModel,
        metrics::{EngineMetrics, Outcome},
    },
    error::{EmbeddingsError, LoadError},
    model::{SentenceModel, SentenceVector, tokenize::Encoded},
    request::Inputs,
};

/// The model's vectors for one request, or why there are none.
pub(crate) type Reply = oneshot::Sender<Result<Vec<SentenceVector>, EmbeddingsError>>;

/// A checked request on its way to the engine thread.
pub(crate) struct Job {
    pub inputs: Inputs,
    pub reply: Reply,
    /// The request's span; the batch that serves it follows from it.
    pub span: Span,
    pub admitted: Instant,
}

pub(crate) struct Worker {
    pub model_path: PathBuf,
    pub model_id: String,
    pub device: DeviceChoice,
    pub threads: usize,
    pub max_batch: usize,
    pub state: watch::Sender<EngineState>,
    pub commands: mpsc::Receiver<Job>,
    pub metrics: EngineMetrics,
}

impl Worker {
    /// Runs until every handle is dropped.
    pub fn run(mut self) {
        let loaded = self.compute_pool().and_then(|pool| {
            let model = pool.install(|| load_and_warm_up(&self.model_path, self.device))?;
            Ok((pool, model))
        });
        let (pool, model) = match loaded {
            Ok(ready) => ready,
            Err(err) => {
                tracing::error!(error = %err, model = %self.model_id, "loading the model failed");
                let message: Arc<str> = err.to_string().into();
                self.state
                    .send_replace(EngineState::Failed(message.clone()));
                // Requests admitted just before the failure was published still get an answer.
                while let Some(job) = self.commands.blocking_recv() {
                    self.metrics.queue_depth.dec();
                    let _ = job
                        .reply
                        .send(Err(EmbeddingsError::LoadFailed(message.to_string())));
                }
                return;
            }
        };
        let created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let spec = model.spec().clone();
        tracing::info!(
            model = %self.model_id,
            dimension = spec.dimension,
            max_seq_length = spec.max_seq_length,
            normalized = spec.normalized,
            pooling = ?spec.pooling,
            threads = self.threads,
            "embedding model ready"
        );
        self.state
            .send_replace(EngineState::Ready(Arc::new(ServedModel {
                spec,
                created_unix,
            })));

        while let Some(first) = self.commands.blocking_recv() {
            let jobs = self.gather(first);
            self.run_batch(&model, &pool, jobs);
        }
    }

    /// `first` and the requests queued behind it, while they add up to fewer than `max_batch`
    /// inputs: requests that arrive together share forward passes.
    fn gather(&mut self, first: Job) -> Vec<Job> {
        let mut inputs = first.inputs.len();
        let mut jobs = vec![first];
        while inputs < self.max_batch {
            match self.commands.try_recv() {
                Ok(job) => {
                    inputs += job.inputs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        self.metrics.queue_depth.sub(jobs.len() as i64);
        jobs
    }

    fn run_batch(&self, model: &SentenceModel, pool: &ThreadPool, jobs: Vec<Job>) {
        let (mut jobs, gone): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|job| !job.reply.is_closed());
        for _ in &gone {
            self.metrics.finished(Outcome::Cancelled);
        }
        if jobs.is_empty() {
            return;
        }
        let span = tracing::info_span!("embeddings.batch", requests = jobs.len());
        for job in &jobs {
            span.follows_from(&job.span);
        }
        let _entered = span.enter();
        let sizes: Vec<usize> = jobs.iter().map(|job| job.inputs.len()).collect();
        let waited = jobs.iter().map(|job| job.admitted.elapsed()).max();
        tracing::debug!(
            inputs = sizes.iter().sum::<usize>(),
            ?waited,
            "embedding batch"
        );

        // A panic is a bug in one batch; the model holds no per-request state, so the engine
        // answers these requests with an error and keeps serving.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                let encoded = encode_all(model, &mut jobs, &sizes)?;
                model.embed_encoded(&encoded, self.max_batch, |_, elapsed| {
                    self.metrics.batch_seconds.observe(elapsed.as_secs_f64());
                })
            })
        }))
        .unwrap_or_else(|panic| {
            let message = panic_message(panic.as_ref());
            tracing::error!(%message, "embedding panicked");
            Err(crate::error::EmbedFailure::Panic(message))
        });

        match result {
            Ok(vectors) => {
                self.metrics.inputs.inc_by(vectors.len() as u64);
                self.metrics
                    .tokens
                    .inc_by(vectors.iter().map(|v| v.tokens as u64).sum());
                let mut vectors = vectors.into_iter();
                for (job, size) in jobs.into_iter().zip(sizes) {
                    let own: Vec<SentenceVector> = vectors.by_ref().take(size).collect();
                    if job.reply.send(Ok(own)).is_err() {
                        self.metrics.finished(Outcome::Cancelled);
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "embedding failed");
                let err = Arc::new(err);
                for job in jobs {
                    if job
                        .reply
                        .send(Err(EmbeddingsError::Embed(err.clone())))
                        .is_err()
                    {
                        self.metrics.finished(Outcome::Cancelled);
                    }
                }
            }
        }
    }

    fn compute_pool(&self) -> Result<ThreadPool, LoadError> {
        let threads = self.threads;
        passerelle_model_runtime::compute::compute_pool("embeddings-compute", threads)
            .map_err(|source| LoadError::ThreadPool { threads, source })
    }
}

/// Every input of `jobs`, in order, ready for the model: the texts of all jobs tokenized in one
/// parallel call, token inputs taken as they are.
/// `sizes` are the jobs' input counts, taken before their texts were moved out.
fn encode_all(
    model: &SentenceModel,
    jobs: &mut [Job],
    sizes: &[usize],
) -> Result<Vec<Encoded>, crate::error::EmbedFailure> {
    let mut texts = Vec::new();
    for job in jobs.iter_mut() {
        if let Inputs::Texts(own) = &mut job.inputs {
            texts.append(own);
        }
    }
    let mut tokenized = model.tokenize(&texts)?.into_iter();
    let mut encoded = Vec::new();
    for (job, &size) in jobs.iter().zip(sizes) {
        match &job.inputs {
            Inputs::Texts(_) => encoded.extend(tokenized.by_ref().take(size)),
            Inputs::Tokens(inputs) => {
                encoded.extend(inputs.iter().map(|ids| model.encode_ids(ids)))
            }
        }
    }
    Ok(encoded)
}

/// Loads the model and embeds one text so the first request pays no first-run cost.
fn load_and_warm_up(
    path: &std::path::Path,
    device: DeviceChoice,
) -> Result<SentenceModel, LoadError> {
    let started = Instant::now();
    let model = SentenceModel::load(path, &device.open()?)?;
    model.warm_up()?;
    tracing::info!(elapsed = ?started.elapsed(), %device, "embedding model loaded and warmed up");
    Ok(model)
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
