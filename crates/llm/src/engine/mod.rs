//! The generation engine as an actor, with continuous batching.
//!
//! One dedicated OS thread (`worker`) owns the model and runs candle inside a rayon pool of the
//! configured size. Handlers hold a cloneable [`EngineHandle`]: it checks and renders a request
//! on the caller's side ([`crate::plan`]), fits it to the KV budget (`config`), then sends it
//! with its tracing span and its own reply channel. More than `queue_capacity` requests waiting
//! for admission are refused at once ([`LlmError::QueueFull`]).
//!
//! The thread's loop (`batcher`) runs every admitted sequence together: each step, the pure
//! [`scheduler`] decides who decodes a token and which prompts get a prefill chunk, and one
//! batched forward pass runs them all; requests join and leave between any two steps. Each
//! sequence's sampling and streaming state lives in `sequence::Sequence`. A request that finds
//! no room in the batch for `max_wait` is refused as [`LlmError::Overloaded`].

mod batcher;
mod config;
mod metrics;
pub mod scheduler;
mod sequence;
mod worker;

use passerelle_model_runtime::{
    DeviceChoice,
    lifecycle::{ModelState, WaitError, wait_ready},
};
use std::{
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use futures::Stream;
use prometheus::Registry;
use tokio::sync::{mpsc, watch};

pub use config::BatchConfig;
pub use metrics::EngineStats;
pub use scheduler::SchedulerConfigError;

use crate::{
    error::LlmError,
    model::{ModelFiles, ModelFormat},
    plan,
    request::{GenerationEvent, GenerationRequest, Prompt},
    served::{RenderedPrompt, ServedModel},
};
use metrics::EngineMetrics;
use worker::{Command, Job, Worker};

/// Events the reply channel holds per choice besides one per token: `Started` (once), the
/// echoed prompt and `Finished`. Sized so the engine never waits on a slow reader.
const REPLY_OVERHEAD: usize = 3;

/// What the engine serves and how.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A `.gguf` file or a Hugging Face model directory, already on local disk.
    pub model_path: PathBuf,
    /// The id requests name the model by.
    pub model_id: String,
    /// Where the model runs: the CPU, or a GPU in a build with the `cuda` feature.
    pub device: DeviceChoice,
    /// Compute threads; candle's default (physical cores, or `RAYON_NUM_THREADS`) when `None`.
    pub threads: Option<usize>,
    /// Requests that may wait for admission into the running batch before new ones are
    /// refused.
    pub queue_capacity: usize,
    /// Batch size, chunked prefill and the KV cache budget.
    pub batch: BatchConfig,
}

/// Where the model is in its lifecycle.
pub type EngineState = ModelState<ServedModel>;

/// Starts engines.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Starts the engine thread, which loads the model in the background. The files are
    /// resolved first, so a wrong path fails here; use [`EngineHandle::ready`] to wait for the
    /// load. Metrics are registered on `registry`.
    pub fn spawn(config: EngineConfig, registry: &Registry) -> Result<EngineHandle, LlmError> {
        config.batch.check()?;
        let files = ModelFiles::resolve(&config.model_path)?;
        let format = files.format();
        let metrics = EngineMetrics::register(registry)?;
        let threads = config
            .threads
            .unwrap_or_else(candle_core::utils::get_num_threads)
            .max(1);
        let queue_capacity = config.queue_capacity.max(1);
        let (commands, receiver) = mpsc::channel(queue_capacity);
        let (state_tx, state) = watch::channel(EngineState::Loading);
        let waiting = Arc::new(Waiting {
            count: AtomicUsize::new(0),
            gauge: metrics.queue_depth.clone(),
        });
        let worker = Worker {
            files,
            model_id: config.model_id.clone(),
            device: config.device,
            threads,
            state: state_tx,
            commands: receiver,
            metrics: metrics.clone(),
            batch: config.batch.clone(),
            waiting: waiting.clone(),
        };
        std::thread::Builder::new()
            .name("llm-engine".to_owned())
            .spawn(move || worker.run())
            .map_err(LlmError::EngineThread)?;
        Ok(EngineHandle {
            inner: Arc::new(Inner {
                model_id: config.model_id,
                format,
                threads,
                queue_capacity,
                commands,
                state,
                metrics,
                batch: config.batch,
                waiting,
            }),
        })
    }

    /// Starts the engine and waits until the model is loaded and warmed up.
    pub async fn load(config: EngineConfig, registry: &Registry) -> Result<EngineHandle, LlmError> {
        let handle = Self::spawn(config, registry)?;
        handle.ready().await?;
        Ok(handle)
    }
}

/// A cheap, cloneable way to talk to the engine thread. The thread stops when the last handle
/// is dropped.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    model_id: String,
    format: ModelFormat,
    threads: usize,
    queue_capacity: usize,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<EngineState>,
    metrics: EngineMetrics,
    batch: BatchConfig,
    waiting: Arc<Waiting>,
}

/// Requests sent to the engine and not yet admitted into the batch (or refused): the bound of
/// `queue_capacity`, mirrored in the queue depth gauge.
#[derive(Debug)]
pub(crate) struct Waiting {
    count: AtomicUsize,
    gauge: prometheus::IntGauge,
}

impl Waiting {
    /// Counts one more, unless `capacity` are already waiting.
    fn try_add(&self, capacity: usize) -> bool {
        let added = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_ok();
        if added {
            self.gauge.inc();
        }
        added
    }

    /// One request left the queue: admitted, refused or gone.
    pub(crate) fn remove(&self) {
        // Never below zero, even if a bug removed one twice.
        let _ = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.gauge.dec();
    }
}

impl EngineHandle {
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }

    pub fn format(&self) -> ModelFormat {
        self.inner.format
    }

    /// Size of the compute pool.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    pub fn state(&self) -> EngineState {
        self.inner.state.borrow().clone()
    }

    /// Waits for the load to finish.
    pub async fn ready(&self) -> Result<Arc<ServedModel>, LlmError> {
        wait_ready(&self.inner.state)
            .await
            .map_err(|err| match err {
                WaitError::Failed(why) => LlmError::LoadFailed(why.to_string()),
                WaitError::Stopped => LlmError::EngineStopped,
            })
    }

    /// Counters of everything the engine has done.
    pub fn stats(&self) -> EngineStats {
        self.inner.metrics.stats()
    }

    /// The loaded model, or why there is none yet.
    fn served(&self, model: &str) -> Result<Arc<ServedModel>, LlmError> {
        if model != self.inner.model_id {
            return Err(LlmError::ModelNotFound(model.to_owned()));
        }
        match self.state() {
            EngineState::Ready(served) => Ok(served),
            // The engine thread died while loading (a panic): it will never be ready.
            EngineState::Loading if self.inner.state.has_changed().is_err() => {
                Err(LlmError::EngineStopped)
            }
            EngineState::Loading => Err(LlmError::Loading),
            EngineState::Failed(message) => Err(LlmError::LoadFailed(message.to_string())),
        }
    }

    /// Renders and tokenizes `prompt` exactly as [`Self::generate`] would.
    pub fn tokenize(&self, model: &str, prompt: &Prompt) -> Result<RenderedPrompt, LlmError> {
        self.served(model)?.render(prompt)
    }

    /// Admits `request` and queues it. Validation errors (a request larger than the whole KV
    /// budget among them), an unknown model, a model still loading and a full queue are
    /// returned here. The stream then yields `Started` once the request joins the running batch
    /// (or [`LlmError::Overloaded`] when it found no room in time), deltas and `Finished`.
    /// Dropping the stream cancels the generation before its next forward pass.
    pub fn generate(&self, request: GenerationRequest) -> Result<GenerationStream, LlmError> {
        let served = self.served(&request.model)?;
        let mut plan = plan::plan(&served, &request)?;
        config::fit_to_budget(
            &mut plan,
            request.stopping.max_tokens.is_some(),
            &self.inner.batch.scheduler(served.context_length),
        )?;
        let span = tracing::info_span!(
            "llm.generate",
            model = %self.inner.model_id,
            request_id = %request.request_id,
            prompt_tokens = plan.prompt.ids.len(),
            max_tokens = plan.max_tokens,
        );
        let choices = plan.choices as usize;
        let (reply, events) = mpsc::channel(choices * (plan.max_tokens + REPLY_OVERHEAD));
        let job = Job {
            plan,
            reply,
            span,
            admitted: Instant::now(),
        };
        let full = LlmError::QueueFull {
            capacity: self.inner.queue_capacity,
        };
        // Counted before sending so the engine's decrement can never run first.
        if !self.inner.waiting.try_add(self.inner.queue_capacity) {
            return Err(full);
        }
        match self.inner.commands.try_send(Command::Generate(job)) {
            Ok(()) => Ok(GenerationStream { events }),
            Err(err) => {
                self.inner.waiting.remove();
                Err(match err {
                    mpsc::error::TrySendError::Full(_) => full,
                    mpsc::error::TrySendError::Closed(_) => LlmError::EngineStopped,
                })
            }
        }
    }
}

/// The events of one generation. Dropping it cancels the generation.
#[derive(Debug)]
pub struct GenerationStream {
    events: mpsc::Receiver<Result<GenerationEvent, LlmError>>,
}

impl Stream for GenerationStream {
    type Item = Result<GenerationEvent, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose engine thread has not finished loading.
    fn loading_handle() -> (
        EngineHandle,
        watch::Sender<EngineState>,
        mpsc::Receiver<Command>,
    ) {
        let (commands, receiver) = mpsc::channel(1);
        let (state_tx, state) = watch::channel(EngineState::Loading);
        let metrics = EngineMetrics::register(&Registry::new()).unwrap();
        let handle = EngineHandle {
            inner: Arc::new(Inner {
                model_id: "m".to_owned(),
                format: ModelFormat::Gguf,
                threads: 1,
                queue_capacity: 1,
                commands,
                state,
                metrics: metrics.clone(),
                batch: BatchConfig::default(),
                waiting: Arc::new(Waiting {
                    count: AtomicUsize::new(0),
                    gauge: metrics.queue_depth,
                }),
            }),
        };
        (handle, state_tx, receiver)
    }

    #[tokio::test]
    async fn requests_while_loading_are_unavailable_and_wait_for_nothing() {
        let (handle, state, _commands) = loading_handle();
        let request = GenerationRequest::new("m", Prompt::Text("hi".into()));
        let err = handle.generate(request).unwrap_err();
        assert!(matches!(err, LlmError::Loading));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "model is loading");
        // An unknown model is NotFound whatever the state.
        let other = GenerationRequest::new("other", Prompt::Text("hi".into()));
        assert!(matches!(
            handle.generate(other),
            Err(LlmError::ModelNotFound(_))
        ));
        assert_eq!(handle.stats().queue_depth, 0);

        state.send_replace(EngineState::Failed("broken file".into()));
        assert!(matches!(handle.ready().await, Err(LlmError::LoadFailed(m)) if m == "broken file"));
        drop(state);
        let (handle, state, _commands) = loading_handle();
        drop(state);
        assert!(matches!(handle.ready().await, Err(LlmError::EngineStopped)));
        let request = GenerationRequest::new("m", Prompt::Text("hi".into()));
        assert!(matches!(
            handle.generate(request),
            Err(LlmError::EngineStopped)
        ));
    }
}
