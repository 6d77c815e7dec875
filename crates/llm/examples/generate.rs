//! Generates from a local model through the engine's Rust API and reports the speed.
//!
//! `cargo run -p passerelle-llm --example generate -- MODEL_PATH "prompt" [max_tokens] [threads]`
//!
//! MODEL_PATH is a `.gguf` file or a Hugging Face directory (for example one written by
//! `passerelle-testkit write-qwen2`). The prompt is sent as a chat message, greedy.

use std::{io::Write as _, time::Instant};

use futures::StreamExt as _;
use passerelle_llm::{
    BatchConfig, ChatMessage, ChatPrompt, Engine, EngineConfig, GenerationEvent, GenerationRequest,
    Prompt,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, prompt, rest @ ..] = args.as_slice() else {
        return Err("usage: generate MODEL_PATH PROMPT [MAX_TOKENS] [THREADS]".into());
    };
    let max_tokens: u32 = rest.first().map_or(Ok(64), |s| s.parse())?;
    let threads: Option<usize> = rest.get(1).map(|s| s.parse()).transpose()?;

    let started = Instant::now();
    let engine = Engine::load(
        EngineConfig {
            model_path: path.into(),
            model_id: "model".into(),
            device: passerelle_llm::DeviceChoice::Cpu,
            threads,
            queue_capacity: 1,
            batch: BatchConfig::default(),
        },
        &prometheus::Registry::new(),
    )
    .await?;
    eprintln!(
        "loaded in {:.2?} on {} threads",
        started.elapsed(),
        engine.threads()
    );

    let chat = ChatPrompt {
        messages: vec![ChatMessage::new("user", prompt.as_str())],
        tools: Vec::new(),
        add_generation_prompt: true,
        ..ChatPrompt::default()
    };
    let mut request = GenerationRequest::new("model", Prompt::Chat(chat));
    request.sampling.temperature = Some(0.0);
    request.stopping.max_tokens = Some(max_tokens);

    let started = Instant::now();
    let mut first_token = None;
    let mut stream = engine.generate(request)?;
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Started { prompt_tokens } => {
                eprintln!("prompt: {prompt_tokens} tokens")
            }
            GenerationEvent::Delta(delta) => {
                first_token.get_or_insert_with(|| started.elapsed());
                print!("{}", delta.text);
                std::io::stdout().flush()?;
            }
            GenerationEvent::Finished(finished) => {
                let elapsed = started.elapsed();
                let ttft = first_token.unwrap_or(elapsed);
                let decode = finished.usage.completion_tokens.saturating_sub(1);
                println!();
                eprintln!(
                    "{:?}: {} tokens, time to first token {ttft:.2?}, {:.1} tokens/s after it",
                    finished.reason,
                    finished.usage.completion_tokens,
                    decode as f64 / (elapsed - ttft).as_secs_f64().max(1e-9),
                );
            }
        }
    }
    Ok(())
}
