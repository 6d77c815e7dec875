//! The same random weights give the same tokens whichever format they are loaded from: the GGUF
//! path (llama.cpp names, candle's quantized_qwen2) and the safetensors path (Hugging Face
//! names, candle's qwen2) agree, so neither mislabels or permutes a tensor.

mod common;

use common::{MODEL_ID, engine, greedy, run, tiny};
use passerelle_llm::{ChatMessage, ChatPrompt, GenerationRequest, Prompt};

#[tokio::test]
async fn safetensors_and_f32_gguf_produce_the_same_greedy_tokens() {
    let model = tiny(21);
    let from_safetensors = engine(&model.safetensors_dir()).await;
    let from_gguf = engine(&model.gguf_path()).await;
    for prompt in [
        "Hello, world!",
        "The weather in the mountains changes quickly.",
        "fn main() {",
    ] {
        let mut request = greedy(prompt, 24);
        // Both formats must run all 24 steps whatever their end-of-sequence tokens.
        request.stopping.ignore_eos = true;
        let a = run(&from_safetensors, request.clone()).await;
        let b = run(&from_gguf, request).await;
        assert_eq!(a.tokens.len(), 24);
        assert_eq!(a.tokens, b.tokens, "prompt {prompt:?}");
        assert_eq!(a.text(), b.text());
    }
}

#[tokio::test]
async fn chat_prompts_render_and_generate_identically_in_both_formats() {
    let model = tiny(22);
    let from_safetensors = engine(&model.safetensors_dir()).await;
    let from_gguf = engine(&model.gguf_path()).await;
    let chat = Prompt::Chat(ChatPrompt {
        messages: vec![ChatMessage::new("user", "Where is the station?")],
        tools: vec![],
        add_generation_prompt: true,
        ..ChatPrompt::default()
    });
    let rendered_a = from_safetensors.tokenize(MODEL_ID, &chat).unwrap();
    let rendered_b = from_gguf.tokenize(MODEL_ID, &chat).unwrap();
    assert_eq!(rendered_a, rendered_b);
    let mut request = GenerationRequest::new(MODEL_ID, chat);
    request.sampling.temperature = Some(0.9);
    request.sampling.top_k = Some(0);
    request.sampling.top_p = Some(1.0);
    request.sampling.repetition_penalty = Some(1.0);
    request.sampling.seed = Some(99);
    request.stopping.max_tokens = Some(16);
    request.stopping.ignore_eos = true;
    let a = run(&from_safetensors, request.clone()).await;
    let b = run(&from_gguf, request).await;
    assert_eq!(a.tokens, b.tokens, "seeded sampling agrees too");
}
