//! Generation behaviour through the engine's Rust API: determinism, stopping, usage, logprobs,
//! text integrity, cancellation and backpressure.

mod common;

use std::collections::BTreeMap;

use common::{MODEL_ID, collect, engine, greedy, run, tiny, try_engine_with, wait_for_stats};
use futures::StreamExt as _;
use passerelle_llm::{
    BatchConfig, FinishReason, GenerationEvent, GenerationRequest, LlmError, Prompt,
    ResponseFormat, detokenizer::Detokenizer,
};

fn sampled(prompt: &str, seed: Option<u64>, max_tokens: u32) -> GenerationRequest {
    let mut request = GenerationRequest::new(MODEL_ID, Prompt::Text(prompt.to_owned()));
    request.sampling.temperature = Some(1.0);
    request.sampling.top_p = Some(1.0);
    request.sampling.top_k = Some(0);
    request.sampling.seed = seed;
    request.stopping.max_tokens = Some(max_tokens);
    request.stopping.ignore_eos = true;
    request
}

#[tokio::test]
async fn greedy_and_seeded_sampling_are_deterministic() {
    let model = tiny(41);
    let engine = engine(&model.gguf_path()).await;
    let a = run(&engine, greedy("Hello, world!", 16)).await;
    let b = run(&engine, greedy("Hello, world!", 16)).await;
    assert_eq!(a.tokens, b.tokens);

    let first = run(&engine, sampled("Hello", Some(1), 32)).await;
    let again = run(&engine, sampled("Hello", Some(1), 32)).await;
    assert_eq!(first.tokens, again.tokens, "same seed, same tokens");
    let mut others = Vec::new();
    for seed in 2..5 {
        others.push(run(&engine, sampled("Hello", Some(seed), 32)).await.tokens);
    }
    assert!(
        others.iter().any(|tokens| *tokens != first.tokens),
        "other seeds differ"
    );
    assert!(
        first
            .tokens
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 4,
        "sampling is not degenerate"
    );
}

#[tokio::test]
async fn max_tokens_ends_with_length_and_counts_usage() {
    let model = tiny(42);
    let engine = engine(&model.gguf_path()).await;
    let mut request = greedy("The quick brown fox", 9);
    request.stopping.ignore_eos = true;
    let prompt_tokens = engine
        .tokenize(MODEL_ID, &request.prompt)
        .unwrap()
        .ids
        .len() as u32;
    let out = run(&engine, request).await;
    let finished = out.finished.clone().unwrap();
    assert_eq!(finished.reason, FinishReason::Length);
    assert_eq!(finished.usage.prompt_tokens, prompt_tokens);
    assert_eq!(finished.usage.completion_tokens, 9);
    assert_eq!(finished.usage.total_tokens(), prompt_tokens + 9);
    assert_eq!(out.prompt_tokens, Some(prompt_tokens));
    assert_eq!(
        out.tokens.len(),
        9,
        "every sampled token is in exactly one delta"
    );
    assert_eq!(finished.matched_stop, None);
}

#[tokio::test]
async fn logit_bias_on_eos_stops_at_once_or_never() {
    let model = tiny(43);
    let engine = engine(&model.safetensors_dir()).await;
    let im_end = model.checkpoint().vocabulary().im_end_id();
    let endoftext = model.checkpoint().vocabulary().endoftext_id();

    let mut forced = greedy("Hello", 50);
    forced.sampling.logit_bias = BTreeMap::from([(im_end, 100.0)]);
    let out = run(&engine, forced).await;
    assert_eq!(out.reason(), FinishReason::Stop);
    assert_eq!(out.tokens, vec![im_end]);
    assert_eq!(out.text(), "", "end-of-sequence tokens add no text");
    assert_eq!(out.finished.unwrap().usage.completion_tokens, 1);

    let mut suppressed = greedy("Hello", 40);
    suppressed.sampling.temperature = Some(1.0);
    suppressed.sampling.seed = Some(5);
    suppressed.sampling.logit_bias = BTreeMap::from([(im_end, -100.0), (endoftext, -100.0)]);
    let out = run(&engine, suppressed).await;
    assert_eq!(out.reason(), FinishReason::Length);
    assert_eq!(out.tokens.len(), 40);
    assert!(!out.tokens.contains(&im_end) && !out.tokens.contains(&endoftext));
}

#[tokio::test]
async fn stop_strings_end_generation_and_are_never_emitted() {
    let model = tiny(44);
    let engine = engine(&model.gguf_path()).await;
    let mut free = greedy("Once upon a time", 40);
    free.stopping.ignore_eos = true;
    let reference = run(&engine, free.clone()).await;
    let text = reference.text();
    // A stop string from the middle of what greedy decoding writes, spanning several tokens
    // when it can.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 12, "the model writes some text: {text:?}");
    let stop: String = chars[6..10].iter().collect();
    let mut stopped = free.clone();
    stopped.stopping.stop = vec!["never appears \u{1}".into(), stop.clone()];
    let out = run(&engine, stopped).await;
    let finished = out.finished.clone().unwrap();
    assert_eq!(finished.reason, FinishReason::Stop);
    assert_eq!(finished.matched_stop.as_deref(), Some(stop.as_str()));
    let expected = &text[..text.find(&stop).unwrap()];
    assert_eq!(out.text(), expected);
    assert!(!out.text().contains(&stop));
    assert!(out.tokens.len() < 40);

    // A stop token id ends generation and reports its text.
    let third = reference.tokens[2];
    let mut by_id = free;
    by_id.stopping.stop_token_ids = vec![third];
    let out = run(&engine, by_id).await;
    assert_eq!(out.reason(), FinishReason::Stop);
    assert_eq!(out.tokens, reference.tokens[..3]);
}

#[tokio::test]
async fn streamed_text_is_the_lossless_decoding_of_the_tokens() {
    let model = tiny(45);
    let engine = engine(&model.gguf_path()).await;
    let served = engine.ready().await.unwrap();
    // High temperature over a byte-level vocabulary emits partial UTF-8 sequences; deltas must
    // still concatenate to exactly the whole-sequence decoding.
    let mut request = sampled("日本語 🦀", Some(7), 300);
    request.sampling.temperature = Some(2.0);
    let out = run(&engine, request).await;
    let whole = served.tokenizer.decode(&out.tokens, true).unwrap();
    assert_eq!(out.text(), whole);
}

#[test]
fn multibyte_characters_split_across_byte_tokens_wait_for_their_last_byte() {
    let model = tiny(46);
    let tokenizer = passerelle_llm::tokenizer::TextTokenizer::from_file(
        &model.safetensors_dir().join("tokenizer.json"),
    )
    .unwrap();
    let text = "日本語 🦀 naïve";
    let ids = tokenizer.encode(text, false).unwrap();
    assert!(
        ids.len() > text.chars().count(),
        "CJK and emoji are several byte tokens each"
    );
    let mut detokenizer = Detokenizer::new(tokenizer.pieces());
    let mut out = String::new();
    for id in ids {
        let piece = detokenizer.push(id);
        assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "{piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&detokenizer.finish());
    assert_eq!(out, text);
}

#[tokio::test]
async fn logprobs_describe_each_sampled_token() {
    let model = tiny(47);
    let engine = engine(&model.gguf_path()).await;
    let mut request = greedy("Hello", 6);
    request.stopping.ignore_eos = true;
    request.logprobs = Some(3);
    let out = run(&engine, request).await;
    assert_eq!(out.logprobs.len(), 6);
    for (lp, token) in out.logprobs.iter().zip(&out.tokens) {
        assert_eq!(lp.token_id, *token);
        assert!(lp.logprob <= 0.0);
        assert_eq!(lp.top.len(), 3);
        assert_eq!(
            lp.top[0].token_id, *token,
            "greedy picks the most likely token"
        );
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
    }
}

#[tokio::test]
async fn dropping_the_stream_stops_the_computation() {
    let model = tiny(48);
    let engine = engine(&model.gguf_path()).await;
    let vocab = model.checkpoint().vocabulary();
    let mut request = sampled("Hello", Some(3), 4000);
    request.stopping.ignore_eos = false;
    request.sampling.logit_bias =
        BTreeMap::from([(vocab.im_end_id(), -100.0), (vocab.endoftext_id(), -100.0)]);
    let mut stream = engine.generate(request).unwrap();
    let mut deltas = 0;
    while deltas < 3 {
        if let GenerationEvent::Delta(_) = stream.next().await.unwrap().unwrap() {
            deltas += 1;
        }
    }
    drop(stream);
    let stats = wait_for_stats(&engine, |s| {
        s.requests_cancelled == 1 && s.active_requests == 0
    })
    .await;
    assert!(
        stats.generated_tokens < 1000,
        "generation stopped early: {stats:?}"
    );
    assert_eq!(stats.requests_length + stats.requests_stop, 0);

    // The engine is free again.
    let out = run(&engine, greedy("Hello", 2)).await;
    assert_eq!(out.tokens.len(), 2);
}

#[tokio::test]
async fn a_full_queue_is_refused_at_once() {
    let model = tiny(49);
    // One sequence runs at a time, so the second request waits in the queue.
    let batch = BatchConfig {
        max_running: 1,
        ..BatchConfig::default()
    };
    let engine = try_engine_with(&model.gguf_path(), 1, batch).await.unwrap();
    let long = || {
        let mut request = greedy("Hello", 3000);
        request.stopping.ignore_eos = true;
        request
    };
    let mut running = engine.generate(long()).unwrap();
    // Started means the engine took it off the queue.
    assert!(matches!(
        running.next().await.unwrap().unwrap(),
        GenerationEvent::Started { .. }
    ));
    let waiting = engine.generate(long()).unwrap();
    let err = engine.generate(long()).unwrap_err();
    assert!(
        matches!(err, LlmError::QueueFull { capacity: 1 }),
        "{err:?}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    drop(running);
    drop(waiting);
    wait_for_stats(&engine, |s| s.requests_cancelled == 2 && s.queue_depth == 0).await;
}

#[tokio::test]
async fn requests_the_engine_cannot_honour_are_invalid_arguments() {
    let model = tiny(50);
    let engine = engine(&model.gguf_path()).await;
    let param = |request: GenerationRequest| match engine.generate(request) {
        Err(LlmError::InvalidArgument { param, .. }) => param,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    let mut r = greedy("Hi", 5);
    r.sampling.n = 17;
    assert_eq!(param(r), "n");
    let mut r = greedy("Hi", 5);
    r.response_format = ResponseFormat::JsonSchema {
        name: "s".into(),
        schema_json: "[]".into(),
        strict: true,
    };
    assert_eq!(param(r), "response_format");
    assert_eq!(param(greedy("Hi", 5000)), "max_tokens");
    assert_eq!(param(greedy("Hi", 0)), "max_tokens");
    assert_eq!(param(greedy("", 5)), "prompt");
    let mut r = greedy("Hi", 5);
    r.sampling.temperature = Some(3.0);
    assert_eq!(param(r), "temperature");
    let mut r = greedy("Hi", 5);
    r.sampling.logit_bias = BTreeMap::from([(1_000_000, 1.0)]);
    assert_eq!(param(r), "logit_bias");
    let mut r = greedy("Hi", 5);
    r.logprobs = Some(21);
    assert_eq!(param(r), "top_logprobs");
    let mut r = greedy("Hi", 5);
    r.model = "gpt-4".into();
    assert!(matches!(engine.generate(r), Err(LlmError::ModelNotFound(m)) if m == "gpt-4"));

    // Without max_tokens the budget is what the context leaves.
    let mut r = greedy("Hi", 1);
    r.stopping.max_tokens = None;
    r.sampling.logit_bias = BTreeMap::from([(model.checkpoint().vocabulary().im_end_id(), 100.0)]);
    let out = collect(engine.generate(r).unwrap()).await;
    assert_eq!(out.reason(), FinishReason::Stop);
}

#[tokio::test]
async fn echo_starts_the_output_with_the_prompt() {
    let model = tiny(51);
    let engine = engine(&model.gguf_path()).await;
    let mut request = greedy("Hello there", 3);
    request.echo = true;
    request.stopping.ignore_eos = true;
    let out = run(&engine, request).await;
    assert_eq!(out.deltas[0], "Hello there");
    assert!(out.text().starts_with("Hello there"));
}
