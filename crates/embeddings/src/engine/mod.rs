//! The embedding engine as an actor.
//!
//! One dedicated OS thread (`worker`) owns the model and runs candle inside a rayon pool of the
//! configured size. Handlers hold a cloneable [`EmbeddingHandle`]: it checks a request on the
//! caller's side ([`crate::request`]), then sends it over a bounded queue with its tracing span
//! and its own reply channel. A full queue is refused at once ([`EmbeddingsError::QueueFull`]).
//! The worker takes the requests waiting together, up to `max_batch` texts, and runs their
//! texts as shared forward passes sorted by length ([`crate::batch`]).

mod metrics;
mod worker;

use passerelle_model_runtime::{
    DeviceChoice,
    lifecycle::{ModelState, WaitError, wait_ready},
};
use std::{path::PathBuf, sync::Arc, time::Instant};

use prometheus::Registry;
use tokio::sync::{mpsc, oneshot, watch};

pub use metrics::EngineStats;

use crate::{
    error::EmbeddingsError,
    model::ModelSpec,
    request::{self, EmbedOptions, Embedded, Inputs, Limits},
};
use metrics::{EngineMetrics, Outcome};
use worker::{Job, Worker};

/// What the engine serves and how.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A sentence-transformers model directory on local disk.
    pub model_path: PathBuf,
    /// The id requests name the model by.
    pub model_id: String,
    /// Compute threads; candle's default (physical cores, or `RAYON_NUM_THREADS`) when `None`.
    pub threads: Option<usize>,
    /// Where the model runs. CPU threads still tokenize and pool on a GPU.
    pub device: DeviceChoice,
    /// Requests that may wait for the engine before new ones are refused.
    pub queue_capacity: usize,
    /// Most texts in one forward pass.
    pub max_batch: usize,
    /// The model was trained with a Matryoshka loss, so prefixes of its vectors are embeddings
    /// too and `dimensions` may shorten them. Checkpoints carry no marker for this: the operator
    /// says so.
    pub matryoshka: bool,
}

/// A loaded model as the service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModel {
    pub spec: ModelSpec,
    /// When loading finished, seconds since the Unix epoch.
    pub created_unix: i64,
}

/// Where the model is in its lifecycle.
pub type EngineState = ModelState<ServedModel>;

/// Starts engines.
#[derive(Debug)]
pub struct EmbeddingEngine;

impl EmbeddingEngine {
    /// Starts the engine thread, which loads the model in the background; use
    /// [`EmbeddingHandle::ready`] to wait for it. Metrics are registered on `registry`.
    pub fn spawn(
        config: EngineConfig,
        registry: &Registry,
    ) -> Result<EmbeddingHandle, EmbeddingsError> {
        let metrics = EngineMetrics::register(registry)?;
        let threads = config
            .threads
            .unwrap_or_else(candle_core::utils::get_num_threads)
            .max(1);
        let queue_capacity = config.queue_capacity.max(1);
        let (commands, receiver) = mpsc::channel(queue_capacity);
        let (state_tx, state) = watch::channel(EngineState::Loading);
        let worker = Worker {
            model_path: config.model_path,
            model_id: config.model_id.clone(),
            device: config.device,
            threads,
            max_batch: config.max_batch.max(1),
            state: state_tx,
            commands: receiver,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("embeddings-engine".to_owned())
            .spawn(move || worker.run())
            .map_err(EmbeddingsError::EngineThread)?;
        Ok(EmbeddingHandle {
            inner: Arc::new(Inner {
                model_id: config.model_id,
                matryoshka: config.matryoshka,
                threads,
                queue_capacity,
                commands,
                state,
                metrics,
            }),
        })
    }

    /// Starts the engine and waits until the model is loaded and warmed up.
    pub async fn load(
        config: EngineConfig,
        registry: &Registry,
    ) -> Result<EmbeddingHandle, EmbeddingsError> {
        let handle = Self::spawn(config, registry)?;
        handle.ready().await?;
        Ok(handle)
    }
}

/// A cheap, cloneable way to talk to the engine thread. The thread stops when the last handle
/// is dropped.
#[derive(Debug, Clone)]
pub struct EmbeddingHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    model_id: String,
    matryoshka: bool,
    threads: usize,
    queue_capacity: usize,
    commands: mpsc::Sender<Job>,
    state: watch::Receiver<EngineState>,
    metrics: EngineMetrics,
}

impl EmbeddingHandle {
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }

    /// Size of the compute pool.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    pub fn state(&self) -> EngineState {
        self.inner.state.borrow().clone()
    }

    /// Waits for the load to finish.
    pub async fn ready(&self) -> Result<Arc<ServedModel>, EmbeddingsError> {
        wait_ready(&self.inner.state)
            .await
            .map_err(|err| match err {
                WaitError::Failed(why) => EmbeddingsError::LoadFailed(why.to_string()),
                WaitError::Stopped => EmbeddingsError::EngineStopped,
            })
    }

    /// Counters of everything the engine has done.
    pub fn stats(&self) -> EngineStats {
        self.inner.metrics.stats()
    }

    /// Embeds `texts` with this engine's model.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        options: EmbedOptions,
    ) -> Result<Embedded, EmbeddingsError> {
        self.embed_with("", Inputs::Texts(texts), options).await
    }

    /// Embeds `inputs` for a request naming `model`; an empty name means this engine's model.
    /// Validation errors, an unknown model, a model still loading and a full queue are returned
    /// without waiting. Dropping the future before the vectors arrive cancels the request if
    /// its batch has not started.
    pub async fn embed_with(
        &self,
        model: &str,
        inputs: Inputs,
        options: EmbedOptions,
    ) -> Result<Embedded, EmbeddingsError> {
        let result = self.embed_inner(model, inputs, options).await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(EmbeddingsError::InvalidArgument { .. } | EmbeddingsError::ModelNotFound(_)) => {
                Outcome::Invalid
            }
            Err(
                EmbeddingsError::QueueFull { .. }
                | EmbeddingsError::Loading
                | EmbeddingsError::LoadFailed(_)
                | EmbeddingsError::EngineStopped,
            ) => Outcome::Unavailable,
            Err(_) => Outcome::Error,
        };
        self.inner.metrics.finished(outcome);
        result
    }

    async fn embed_inner(
        &self,
        model: &str,
        inputs: Inputs,
        options: EmbedOptions,
    ) -> Result<Embedded, EmbeddingsError> {
        let served = self.served(model)?;
        request::validate(
            &inputs,
            &options,
            Limits {
                model_id: &self.inner.model_id,
                dimension: served.spec.dimension,
                matryoshka: self.inner.matryoshka,
                vocab_size: served.spec.vocab_size,
            },
        )?;
        let span = tracing::info_span!(
            "embeddings.embed",
            model = %self.inner.model_id,
            inputs = inputs.len(),
        );
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            reply,
            span,
            admitted: Instant::now(),
        };
        // Counted before sending so the engine's decrement can never run first.
        self.inner.metrics.queue_depth.inc();
        if let Err(err) = self.inner.commands.try_send(job) {
            self.inner.metrics.queue_depth.dec();
            return Err(match err {
                mpsc::error::TrySendError::Full(_) => EmbeddingsError::QueueFull {
                    capacity: self.inner.queue_capacity,
                },
                mpsc::error::TrySendError::Closed(_) => EmbeddingsError::EngineStopped,
            });
        }
        let vectors = answer.await.map_err(|_| EmbeddingsError::EngineStopped)??;
        Ok(request::finish(vectors, &options, served.spec.normalized))
    }

    /// The loaded model, or why there is none yet, for a request naming `model` (empty: this
    /// engine's).
    pub(crate) fn served(&self, model: &str) -> Result<Arc<ServedModel>, EmbeddingsError> {
        if !model.is_empty() && model != self.inner.model_id {
            return Err(EmbeddingsError::ModelNotFound(model.to_owned()));
        }
        match self.state() {
            EngineState::Ready(served) => Ok(served),
            // The engine thread died while loading (a panic): it will never be ready.
            EngineState::Loading if self.inner.state.has_changed().is_err() => {
                Err(EmbeddingsError::EngineStopped)
            }
            EngineState::Loading => Err(EmbeddingsError::Loading),
            EngineState::Failed(message) => Err(EmbeddingsError::LoadFailed(message.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose engine thread has not finished loading.
    fn loading_handle() -> (
        EmbeddingHandle,
        watch::Sender<EngineState>,
        mpsc::Receiver<Job>,
    ) {
        let (commands, receiver) = mpsc::channel(1);
        let (state_tx, state) = watch::channel(EngineState::Loading);
        let handle = EmbeddingHandle {
            inner: Arc::new(Inner {
                model_id: "m".to_owned(),
                matryoshka: false,
                threads: 1,
                queue_capacity: 1,
                commands,
                state,
                metrics: EngineMetrics::register(&Registry::new()).unwrap(),
            }),
        };
        (handle, state_tx, receiver)
    }

    fn ready(dimension: usize) -> EngineState {
        EngineState::Ready(Arc::new(ServedModel {
            spec: ModelSpec {
                dimension,
                max_seq_length: 8,
                normalized: true,
                pooling: vec!["mean"],
                vocab_size: 10,
            },
            created_unix: 0,
        }))
    }

    #[tokio::test]
    async fn requests_while_loading_are_unavailable_and_wait_for_nothing() {
        let (handle, state, _commands) = loading_handle();
        let texts = vec!["hi".to_owned()];
        let err = handle
            .embed(texts.clone(), EmbedOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, EmbeddingsError::Loading));
        assert!(matches!(
            handle
                .embed_with(
                    "other",
                    Inputs::Texts(texts.clone()),
                    EmbedOptions::default()
                )
                .await,
            Err(EmbeddingsError::ModelNotFound(_))
        ));
        assert_eq!(handle.stats().requests_unavailable, 1);
        assert_eq!(handle.stats().requests_invalid, 1);

        state.send_replace(EngineState::Failed("broken file".into()));
        assert!(
            matches!(handle.ready().await, Err(EmbeddingsError::LoadFailed(m)) if m == "broken file")
        );
        let (handle, state, _commands) = loading_handle();
        drop(state);
        assert!(matches!(
            handle.ready().await,
            Err(EmbeddingsError::EngineStopped)
        ));
        assert!(matches!(
            handle.embed(texts, EmbedOptions::default()).await,
            Err(EmbeddingsError::EngineStopped)
        ));
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let (handle, state, _commands) = loading_handle();
        state.send_replace(ready(4));
        // Nothing drains the queue of one: the first request waits in it, the second is refused.
        let waiting = handle.clone();
        let first = tokio::spawn(async move {
            waiting
                .embed(vec!["a".to_owned()], EmbedOptions::default())
                .await
        });
        while handle.stats().queue_depth == 0 {
            tokio::task::yield_now().await;
        }
        let err = handle
            .embed(vec!["b".to_owned()], EmbedOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, EmbeddingsError::QueueFull { capacity: 1 }));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        first.abort();
    }
}
