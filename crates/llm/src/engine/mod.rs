//! The generation engine as an actor.
//!
//! One dedicated OS thread (`worker`) owns the model and its KV cache and runs candle inside a
//! rayon pool of the configured size. Handlers hold a cloneable [`EngineHandle`]: it checks and
//! renders a request on the caller's side ([`crate::plan`]), then sends it over a bounded queue
//! with its tracing span and its own reply channel. A full queue is refused at once
//! ([`LlmError::QueueFull`]). The loop runs one sequence at a time; the per-request state lives in
//! `sequence::Sequence` so that a batching scheduler can later drive several of them.

mod metrics;
mod sequence;
mod worker;

use passerelle_model_runtime::lifecycle::{ModelState, WaitError, wait_ready};
use std::{
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures::Stream;
use prometheus::Registry;
use tokio::sync::{mpsc, watch};

pub use metrics::EngineStats;

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
    /// Compute threads; candle's default (physical cores, or `RAYON_NUM_THREADS`) when `None`.
    pub threads: Option<usize>,
    /// Requests that may wait for the engine before new ones are refused.
    pub queue_capacity: usize,
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
        let worker = Worker {
            files,
            model_id: config.model_id.clone(),
            threads,
            state: state_tx,
            commands: receiver,
            metrics: metrics.clone(),
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

    /// Admits `request` and queues it. Validation errors, an unknown model, a model still
    /// loading and a full queue are returned here; the stream then yields `Started`, deltas and
    /// `Finished`. Dropping the stream cancels the generation before its next forward pass.
    pub fn generate(&self, request: GenerationRequest) -> Result<GenerationStream, LlmError> {
        let served = self.served(&request.model)?;
        let plan = plan::plan(&served, &request)?;
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
        // Counted before sending so the engine's decrement can never run first.
        self.inner.metrics.queue_depth.inc();
        match self.inner.commands.try_send(Command::Generate(job)) {
            Ok(()) => Ok(GenerationStream { events }),
            Err(err) => {
                self.inner.metrics.queue_depth.dec();
                Err(match err {
                    mpsc::error::TrySendError::Full(_) => LlmError::QueueFull {
                        capacity: self.inner.queue_capacity,
                    },
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
        let handle = EngineHandle {
            inner: Arc::new(Inner {
                model_id: "m".to_owned(),
                format: ModelFormat::Gguf,
                threads: 1,
                queue_capacity: 1,
                commands,
                state,
                metrics: EngineMetrics::register(&Registry::new()).unwrap(),
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
