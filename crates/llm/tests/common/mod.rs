//! Helpers shared by the integration tests: tiny models from testkit, engines, and collecting
//! a generation stream.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use passerelle_llm::{
    BatchConfig, DeviceChoice, Engine, EngineConfig, EngineHandle, EngineStats, FinishReason,
    Finished, GenerationEvent, GenerationRequest, GenerationStream, LlmError, Prompt,
};
use passerelle_testkit::TinyQwen2;
use prometheus::Registry;

pub const MODEL_ID: &str = "tiny-qwen2";

pub fn tiny(seed: u64) -> TinyQwen2 {
    TinyQwen2::write(seed).expect("testkit writes the tiny model")
}

pub async fn engine(path: &std::path::Path) -> EngineHandle {
    try_engine(path, 8).await.expect("the tiny model loads")
}

pub async fn try_engine(
    path: &std::path::Path,
    queue_capacity: usize,
) -> Result<EngineHandle, LlmError> {
    try_engine_with(path, queue_capacity, BatchConfig::default()).await
}

pub async fn try_engine_with(
    path: &std::path::Path,
    queue_capacity: usize,
    batch: BatchConfig,
) -> Result<EngineHandle, LlmError> {
    try_engine_on(path, DeviceChoice::Cpu, queue_capacity, batch).await
}

pub async fn try_engine_on(
    path: &std::path::Path,
    device: DeviceChoice,
    queue_capacity: usize,
    batch: BatchConfig,
) -> Result<EngineHandle, LlmError> {
    let config = EngineConfig {
        model_path: path.to_path_buf(),
        model_id: MODEL_ID.to_owned(),
        device,
        threads: Some(1),
        queue_capacity,
        batch,
    };
    Engine::load(config, &Registry::new()).await
}

/// A text request with greedy decoding and no model sampling defaults in play.
pub fn greedy(prompt: &str, max_tokens: u32) -> GenerationRequest {
    let mut request = GenerationRequest::new(MODEL_ID, Prompt::Text(prompt.to_owned()));
    request.sampling.temperature = Some(0.0);
    request.sampling.repetition_penalty = Some(1.0);
    request.stopping.max_tokens = Some(max_tokens);
    request
}

/// Everything a stream produced.
#[derive(Debug, Default)]
pub struct Collected {
    pub prompt_tokens: Option<u32>,
    pub deltas: Vec<String>,
    pub tokens: Vec<u32>,
    pub finished: Option<Finished>,
    pub logprobs: Vec<passerelle_llm::TokenLogprob>,
}

impl Collected {
    pub fn text(&self) -> String {
        self.deltas.concat()
    }

    pub fn reason(&self) -> FinishReason {
        self.finished.as_ref().expect("the stream finished").reason
    }
}

pub async fn collect(mut stream: GenerationStream) -> Collected {
    let mut out = Collected::default();
    while let Some(event) = stream.next().await {
        match event.expect("no error event") {
            GenerationEvent::Started { prompt_tokens } => {
                assert!(
                    out.prompt_tokens.is_none() && out.deltas.is_empty(),
                    "Started comes first, once"
                );
                out.prompt_tokens = Some(prompt_tokens);
            }
            GenerationEvent::Delta(delta) => {
                assert!(out.finished.is_none(), "no delta after Finished");
                out.deltas.push(delta.text);
                out.tokens.extend(delta.token_ids);
                out.logprobs.extend(delta.logprobs);
            }
            GenerationEvent::Finished(finished) => {
                assert!(out.finished.is_none(), "Finished comes once");
                out.finished = Some(finished);
            }
        }
    }
    out
}

pub async fn run(engine: &EngineHandle, request: GenerationRequest) -> Collected {
    collect(engine.generate(request).expect("the request is admitted")).await
}

/// Polls `stats` until `done` holds, failing after a generous deadline.
pub async fn wait_for_stats(
    engine: &EngineHandle,
    done: impl Fn(&EngineStats) -> bool,
) -> EngineStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = engine.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "stats never reached the expected state: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
