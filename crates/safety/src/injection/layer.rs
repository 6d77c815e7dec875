//! The classifier as a layer of the pipeline: a thread owns the model and scores queued
//! checks one after the other inside its own compute pool; the layer is a handle that queues.

use std::{any::Any, panic::AssertUnwindSafe};

use async_trait::async_trait;
use rayon::ThreadPool;
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use super::{
    CATEGORY, InjectionConfig,
    error::InjectionError,
    model::{InjectionClassifier, TextScore},
};
use crate::{
    error::SafetyError,
    layer::{CheckLayer, LayerInfo},
    rules::category_name,
    verdict::{CheckInput, LayerKind, LayerOutcome, Stage, Violation},
};

type Reply = oneshot::Sender<Result<Vec<TextScore>, InjectionError>>;

struct Job {
    texts: Vec<String>,
    reply: Reply,
    span: Span,
}

/// Blocks a prompt when the classifier scores one of the caller's messages at or over the
/// threshold. Answers are not checked: injection is an attack through the input.
#[derive(Debug, Clone)]
pub struct InjectionLayer {
    jobs: mpsc::Sender<Job>,
    capacity: usize,
    threshold: f32,
    source: String,
}

impl InjectionLayer {
    /// Opens the device, loads the classifier and starts it. Blocks for as long as loading
    /// and the warm-up pass take (seconds for a base-sized model).
    pub fn load(config: &InjectionConfig) -> Result<Self, InjectionError> {
        let device = config.device.open()?;
        let classifier =
            InjectionClassifier::load_with(&config.model, config.classifier.clone(), &device)?;
        Self::start(classifier, config.threads, config.queue_capacity)
    }

    /// Runs `classifier` on its own thread with a pool of `threads` compute threads, after a
    /// warm-up pass; at most `queue_capacity` checks wait for it.
    pub fn start(
        classifier: InjectionClassifier,
        threads: usize,
        queue_capacity: usize,
    ) -> Result<Self, InjectionError> {
        let threads = threads.max(1);
        let capacity = queue_capacity.max(1);
        let pool = passerelle_model_runtime::compute::compute_pool("injection-compute", threads)
            .map_err(|source| InjectionError::ThreadPool { threads, source })?;
        pool.install(|| classifier.warm_up())?;
        let threshold = classifier.options().threshold;
        let source = classifier.source().display().to_string();
        tracing::info!(
            source = %source,
            labels = ?classifier.labels(),
            max_length = classifier.max_length(),
            threshold,
            threads,
            "injection classifier ready"
        );
        let (jobs, queue) = mpsc::channel(capacity);
        std::thread::Builder::new()
            .name("injection".to_owned())
            .spawn(move || run(&classifier, &pool, queue))
            .map_err(|err| InjectionError::Option(format!("cannot start its thread: {err}")))?;
        Ok(Self {
            jobs,
            capacity,
            threshold,
            source,
        })
    }

    /// The classifier's score of each of `texts`, in order.
    pub async fn score(&self, texts: Vec<String>) -> Result<Vec<TextScore>, InjectionError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            texts,
            reply,
            span: Span::current(),
        };
        self.jobs.try_send(job).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => InjectionError::QueueFull {
                capacity: self.capacity,
            },
            mpsc::error::TrySendError::Closed(_) => InjectionError::Stopped,
        })?;
        answer.await.map_err(|_| InjectionError::Stopped)?
    }

    /// The threshold the classifier decides at.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }
}

/// The classifier thread: until every handle is dropped, scores the jobs in arrival order. A
/// check whose caller has gone is skipped.
fn run(classifier: &InjectionClassifier, pool: &ThreadPool, mut queue: mpsc::Receiver<Job>) {
    while let Some(job) = queue.blocking_recv() {
        if job.reply.is_closed() {
            continue;
        }
        let _entered = tracing::debug_span!(parent: &job.span, "injection.score").entered();
        let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
        // The model holds no per-request state: a panic fails this check, not the next.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| classifier.score(&texts))
        }))
        .unwrap_or_else(|panic| Err(InjectionError::Panic(panic_message(panic.as_ref()))));
        if let Err(err) = &result {
            tracing::error!(error = %err, "injection classifier failed");
        }
        let _ = job.reply.send(result);
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[async_trait]
impl CheckLayer for InjectionLayer {
    fn kind(&self) -> LayerKind {
        LayerKind::Injection
    }

    fn info(&self) -> LayerInfo {
        LayerInfo {
            id: LayerKind::Injection.label().to_owned(),
            format: "safetensors".to_owned(),
            source: self.source.clone(),
        }
    }

    async fn check(&self, input: &CheckInput) -> Result<LayerOutcome, SafetyError> {
        if input.stage == Stage::Output || !input.enforces(CATEGORY) {
            return Ok(LayerOutcome::Pass);
        }
        let indices: Vec<usize> = input.checked().collect();
        if indices.is_empty() {
            return Ok(LayerOutcome::Pass);
        }
        let texts = indices
            .iter()
            .map(|&i| input.messages[i].content.clone())
            .collect();
        let scores = self.score(texts).await?;
        let worst = indices
            .into_iter()
            .zip(scores)
            .max_by(|(_, a), (_, b)| a.probability.total_cmp(&b.probability));
        Ok(match worst {
            Some((message_index, score)) if score.probability >= self.threshold => {
                if score.skipped > 0 {
                    tracing::debug!(
                        message_index,
                        skipped = score.skipped,
                        "long message: middle windows not scored"
                    );
                }
                LayerOutcome::Block(Violation {
                    category: CATEGORY.to_owned(),
                    category_name: category_name(CATEGORY),
                    rule_id: None,
                    score: score.probability,
                    message_index,
                })
            }
            _ => LayerOutcome::Pass,
        })
    }
}
