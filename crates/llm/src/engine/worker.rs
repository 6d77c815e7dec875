//! The engine thread: owns the model and its KV cache, loads and warms it up, then runs queued
//! generations one at a time, and the choices of a request with `n > 1` one after the other
//! (batching them is the scheduler's job, later). Candle work runs inside a rayon pool of the
//! configured size.

use std::{
    any::Any,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use candle_core::Device;
use rayon::ThreadPool;
use tokio::sync::{mpsc, watch};
use tracing::Span;

use crate::{
    engine::{
        EngineState,
        metrics::{EngineMetrics, Outcome},
        sequence::{Choice, Reply, Sequence, Step},
    },
    error::{LlmError, LoadError},
    model::{self, CausalLm, ModelFiles},
    plan::GenerationPlan,
    request::GenerationEvent,
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
    pub threads: usize,
    pub state: watch::Sender<EngineState>,
    pub commands: mpsc::Receiver<Command>,
    pub metrics: EngineMetrics,
}

impl Worker {
    /// Runs until every handle is dropped.
    pub fn run(mut self) {
        let loaded = self.compute_pool().and_then(|pool| {
            let loaded = pool.install(|| load_and_warm_up(&self.files, &self.model_id))?;
            Ok((pool, loaded))
        });
        let (pool, (mut model, served)) = match loaded {
            Ok(ready) => ready,
            Err(err) => {
                tracing::error!(error = %err, model = %self.model_id, "loading the model failed");
                let message: Arc<str> = err.to_string().into();
                self.state
                    .send_replace(EngineState::Failed(message.clone()));
                // Requests admitted just before the failure was published still get an answer.
                while let Some(Command::Generate(job)) = self.commands.blocking_recv() {
                    self.metrics.queue_depth.dec();
                    let _ = job
                        .reply
                        .blocking_send(Err(LlmError::LoadFailed(message.to_string())));
                }
                return;
            }
        };
        tracing::info!(model = %self.model_id, format = %served.format, threads = self.threads, "model ready");
        self.state.send_replace(EngineState::Ready(served.clone()));

        while let Some(Command::Generate(job)) = self.commands.blocking_recv() {
            self.metrics.queue_depth.dec();
            let span = job.span.clone();
            let _entered = span.enter();
            self.metrics.active_requests.inc();
            let reply = job.reply.clone();
            // A panic is a bug in one request; the next request clears the KV cache anyway, so
            // the engine answers this one with an error and keeps serving.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                generate(&mut model, &served, job, &pool, &self.metrics)
            }))
            .unwrap_or_else(|panic| {
                let message = panic_message(panic.as_ref());
                tracing::error!(%message, "generation panicked");
                let _ = reply.blocking_send(Err(LlmError::Internal(format!(
                    "the engine panicked: {message}"
                ))));
                Outcome::Error
            });
            self.metrics.active_requests.dec();
            self.metrics.finished(outcome);
            tracing::debug!(?outcome, "generation ended");
        }
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
) -> Result<(CausalLm, Arc<ServedModel>), LoadError> {
    let started = Instant::now();
    let model::LoadedModel { mut model, assets } = model::load(files, &Device::Cpu)?;
    let warm_up_token = assets.eos_token_ids.first().copied().unwrap_or(0);
    model.forward(&[warm_up_token], 0)?;
    model.clear_kv_cache();
    let created_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let served = ServedModel::new(model_id.to_owned(), assets, created_unix)?;
    tracing::info!(elapsed = ?started.elapsed(), context_length = served.context_length, "model loaded and warmed up");
    Ok((model, Arc::new(served)))
}

/// Runs one request to its end: its choices one after the other, each from a cleared KV cache.
fn generate(
    model: &mut CausalLm,
    served: &ServedModel,
    job: Job,
    pool: &ThreadPool,
    metrics: &EngineMetrics,
) -> Outcome {
    let Job {
        plan,
        reply,
        admitted,
        ..
    } = job;
    let prompt_tokens = u32::try_from(plan.prompt.ids.len()).unwrap_or(u32::MAX);
    if reply
        .blocking_send(Ok(GenerationEvent::Started { prompt_tokens }))
        .is_err()
    {
        return Outcome::Cancelled;
    }
    let mut outcome = Outcome::Stop;
    let mut earlier_tokens = 0u32;
    for index in 0..plan.choices {
        let choice = Choice {
            index,
            earlier_tokens,
        };
        let mut sequence = Sequence::new(
            &plan,
            choice,
            reply.clone(),
            served.tokenizer.pieces(),
            admitted,
        );
        outcome = run_choice(model, &mut sequence, pool, metrics);
        if matches!(outcome, Outcome::Cancelled | Outcome::Error) {
            return outcome;
        }
        earlier_tokens = earlier_tokens.saturating_add(sequence.generated());
    }
    outcome
}

/// Generates one choice; the KV cache is cleared first: one sequence at a time.
fn run_choice(
    model: &mut CausalLm,
    sequence: &mut Sequence<'_>,
    pool: &ThreadPool,
    metrics: &EngineMetrics,
) -> Outcome {
    if !sequence.start() || sequence.is_cancelled() {
        return Outcome::Cancelled;
    }
    model.clear_kv_cache();
    let prompt = sequence.prompt().to_vec();
    let mut logits = match pool.install(|| model.forward(&prompt, 0)) {
        Ok(logits) => logits,
        Err(err) => return sequence.fail(err.into()),
    };
    metrics.prompt_tokens.inc_by(prompt.len() as u64);
    let mut position = prompt.len();
    loop {
        let token = match sequence.accept(&mut logits, metrics) {
            Step::Continue(token) => token,
            Step::Finished(outcome) => return outcome,
        };
        if sequence.is_cancelled() {
            return Outcome::Cancelled;
        }
        logits = match pool.install(|| model.forward(&[token], position)) {
            Ok(logits) => logits,
            Err(err) => return sequence.fail(err.into()),
        };
        position += 1;
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
