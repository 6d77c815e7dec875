//! The engine runs its requests together: a long prompt is prefilled in chunks between the
//! running streams' tokens, a full KV budget refuses with "overloaded" rather than failing,
//! batched greedy output equals each request run alone, cached prefixes change nothing but the
//! work done, and the choices of one request share its prefill.

mod common;

use std::time::{Duration, Instant};

use common::{MODEL_ID, collect, greedy, run, tiny, try_engine_with, wait_for_stats};
use futures::StreamExt as _;
use passerelle_llm::{
    BatchConfig, EngineHandle, GenerationEvent, GenerationRequest, GenerationStream, LlmError,
    Prompt,
};
use passerelle_testkit::{Qwen2Checkpoint, Qwen2Spec, WeightDtype};

fn tokens_request(prompt: Vec<u32>, max_tokens: u32) -> GenerationRequest {
    let mut request = GenerationRequest::new(MODEL_ID, Prompt::Tokens(prompt));
    request.sampling.temperature = Some(0.0);
    request.sampling.repetition_penalty = Some(1.0);
    request.stopping.max_tokens = Some(max_tokens);
    request.stopping.ignore_eos = true;
    request
}

/// When each delta arrived, until `stop` changes or the stream ends.
async fn delta_times(
    mut stream: GenerationStream,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Instant> {
    let mut times = Vec::new();
    let mut stop = stop;
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(GenerationEvent::Delta(_))) => times.push(Instant::now()),
                Some(Ok(_)) => {}
                Some(Err(err)) => panic!("stream failed: {err}"),
                None => return times,
            },
            _ = stop.changed() => return times,
        }
    }
}

/// Time from sending `request` to its first token.
async fn time_to_first_token(engine: &EngineHandle, request: GenerationRequest) -> Duration {
    let started = Instant::now();
    let mut stream = engine.generate(request).unwrap();
    loop {
        match stream.next().await.unwrap().unwrap() {
            GenerationEvent::Delta(_) => return started.elapsed(),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_long_prompt_does_not_stall_the_running_streams_beyond_a_chunk() {
    // Wider than the tiny model, so that a chunk costs more than the noise of the machine.
    let spec = Qwen2Spec {
        hidden_size: 256,
        intermediate_size: 768,
        num_hidden_layers: 4,
        ..Qwen2Spec::tiny()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = Qwen2Checkpoint::new(spec, 81)
        .unwrap()
        .write_safetensors(dir.path(), WeightDtype::F32)
        .unwrap();
    const CHUNK: usize = 64;
    const CHUNKS: usize = 16;
    let batch = BatchConfig {
        prefill_chunk: CHUNK,
        max_batch_tokens: CHUNK + 8,
        ..BatchConfig::default()
    };
    let engine = try_engine_with(&path, 8, batch).await.unwrap();
    let long = |step: usize| -> Vec<u32> {
        (0..CHUNK * CHUNKS)
            .map(|i| 50 + ((i + 1) * step % 300) as u32)
            .collect()
    };

    // One chunk's time: the long prompt alone, per chunk (later chunks attend to more
    // positions, so the average is a fair figure for all of them).
    let alone = time_to_first_token(&engine, tokens_request(long(7), 1)).await;
    let chunk_time = alone / CHUNKS as u32;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let streams: Vec<_> = (0..4)
        .map(|i| {
            let stream = engine
                .generate(tokens_request(vec![10 + i, 20, 30 + i], 3000))
                .unwrap();
            tokio::spawn(delta_times(stream, stop.clone()))
        })
        .collect();
    wait_for_stats(&engine, |s| s.generated_tokens > 4 * 8).await;
    let decode_before = Instant::now();
    let tokens_before = engine.stats().generated_tokens;
    wait_for_stats(&engine, |s| s.generated_tokens >= tokens_before + 4 * 8).await;
    let decode_step = decode_before.elapsed() / 8;

    // Another prompt than the measured one, which the prefix cache now holds.
    let sent = Instant::now();
    let long_first_token = time_to_first_token(&engine, tokens_request(long(11), 1)).await;
    let window = (sent, sent + long_first_token);
    stop_tx.send(true).unwrap();
    assert_eq!(engine.stats().prefix_cache_hits, 0);

    let bound = (chunk_time + decode_step) * 3;
    for (i, stream) in streams.into_iter().enumerate() {
        let times = stream.await.unwrap();
        let in_window: Vec<Duration> = times
            .windows(2)
            .filter(|w| w[1] > window.0 && w[0] < window.1)
            .map(|w| w[1] - w[0])
            .collect();
        assert!(
            in_window.len() >= CHUNKS / 2,
            "stream {i} kept producing while the prompt was prefilled: {} tokens",
            in_window.len()
        );
        let worst = in_window.iter().max().copied().unwrap_or_default();
        assert!(
            worst <= bound,
            "stream {i}: worst gap {worst:?} during the prefill, over {bound:?} \
             (chunk {chunk_time:?}, decode step {decode_step:?}, whole prompt alone {alone:?})"
        );
    }
    // Prefilled whole, the prompt would have stalled the streams far beyond the bound.
    assert!(alone > bound * 2, "alone {alone:?}, bound {bound:?}");
}

#[tokio::test]
async fn a_full_kv_budget_refuses_as_overloaded_and_the_engine_keeps_serving() {
    let model = tiny(82);
    let batch = BatchConfig {
        kv_cache_tokens: Some(256),
        // A request that does not fit is refused at the first step it cannot join.
        max_wait: Duration::ZERO,
        ..BatchConfig::default()
    };
    let engine = try_engine_with(&model.gguf_path(), 8, batch).await.unwrap();
    let big = || tokens_request(vec![5, 6, 7, 8], 200);

    // Larger than the whole budget: refused at once, as the client's to change.
    let err = engine
        .generate(tokens_request(vec![5; 8], 300))
        .unwrap_err();
    assert!(
        matches!(
            err,
            LlmError::InvalidArgument {
                param: "max_tokens",
                ..
            }
        ),
        "{err:?}"
    );

    let mut running = engine.generate(big()).unwrap();
    loop {
        if let GenerationEvent::Delta(_) = running.next().await.unwrap().unwrap() {
            break;
        }
    }
    let mut refused = engine.generate(big()).unwrap();
    let err = refused.next().await.unwrap().unwrap_err();
    assert!(matches!(err, LlmError::Overloaded { .. }), "{err:?}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(passerelle_grpc_server::status::retry_after(&status).is_some());
    assert!(refused.next().await.is_none());

    let first = collect(running).await;
    assert_eq!(
        first.tokens.len(),
        199,
        "the running request was not disturbed"
    );
    let stats = wait_for_stats(&engine, |s| s.active_requests == 0 && s.kv_blocks_used == 0).await;
    assert_eq!(stats.overloaded, 1);
    let again = run(&engine, big()).await;
    assert_eq!(again.tokens.len(), 200);
}

#[tokio::test]
async fn batched_greedy_output_equals_each_request_alone() {
    let model = tiny(83);
    let prompts = [
        "The quick brown fox",
        "Once upon a time there was",
        "Hello",
        "A list of colours: red, green,",
        "Rust is a language",
    ];
    let request = |prompt: &str, i: usize| {
        let mut request = greedy(prompt, 12 + 5 * i as u32);
        request.stopping.ignore_eos = true;
        request
    };
    let engine = try_engine_with(&model.gguf_path(), 8, BatchConfig::default())
        .await
        .unwrap();
    let mut alone = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        alone.push(run(&engine, request(prompt, i)).await.tokens);
    }

    // A fresh engine, so that no prompt comes from the prefix cache.
    let engine = try_engine_with(&model.gguf_path(), 8, BatchConfig::default())
        .await
        .unwrap();
    let streams: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| engine.generate(request(prompt, i)).unwrap())
        .collect();
    let together = futures::future::join_all(streams.into_iter().map(collect)).await;
    for (i, (out, expected)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(&out.tokens, expected, "request {i}");
    }
    assert_eq!(engine.stats().prefix_cache_hits, 0);
}

#[tokio::test]
async fn a_cached_prefix_gives_the_tokens_of_a_cold_run() {
    let model = tiny(84);
    let system = "You are a helpful assistant. Answer briefly and politely, in English. ";
    let first = format!("{system}What is the capital of France?");
    let second = format!("{system}Name three colours.");
    let request = |prompt: &str| {
        let mut request = greedy(prompt, 10);
        request.stopping.ignore_eos = true;
        request
    };
    let cold = async |prompt: &str| {
        let engine = try_engine_with(&model.gguf_path(), 8, BatchConfig::default())
            .await
            .unwrap();
        run(&engine, request(prompt)).await.tokens
    };
    let expected = cold(&second).await;
    let expected_first = cold(&first).await;

    let engine = try_engine_with(&model.gguf_path(), 8, BatchConfig::default())
        .await
        .unwrap();
    run(&engine, request(&first)).await;
    let prompt_tokens = engine.stats().prompt_tokens;
    let second_len = engine
        .tokenize(MODEL_ID, &request(&second).prompt)
        .unwrap()
        .ids
        .len() as u64;
    let out = run(&engine, request(&second)).await;
    assert_eq!(out.tokens, expected);
    let stats = engine.stats();
    assert_eq!(stats.prefix_cache_hits, 1);
    assert!(stats.prefix_cache_tokens >= 10, "{stats:?}");
    assert_eq!(
        stats.prompt_tokens - prompt_tokens,
        second_len - stats.prefix_cache_tokens,
        "only the rest of the prompt was computed"
    );

    // The very same prompt again: everything but its last token is reused.
    let out = run(&engine, request(&first)).await;
    assert_eq!(out.tokens, expected_first);
    assert_eq!(engine.stats().prefix_cache_hits, 2);
}

#[tokio::test]
async fn the_choices_of_a_request_share_one_prefill() {
    let model = tiny(85);
    let engine = try_engine_with(&model.gguf_path(), 8, BatchConfig::default())
        .await
        .unwrap();
    let mut request = greedy("Once upon a time, in a land far away,", 9);
    request.stopping.ignore_eos = true;
    request.sampling.temperature = Some(1.0);
    request.sampling.seed = Some(3);
    request.sampling.n = 3;
    let prompt_len = engine
        .tokenize(MODEL_ID, &request.prompt)
        .unwrap()
        .ids
        .len() as u64;
    let mut stream = engine.generate(request).unwrap();
    let mut tokens = vec![0u32; 3];
    let mut finished = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerationEvent::Delta(delta) => {
                tokens[delta.index as usize] += delta.token_ids.len() as u32
            }
            GenerationEvent::Finished(f) => finished.push(f),
            GenerationEvent::Started { .. } => {}
        }
    }
    assert_eq!(tokens, vec![9, 9, 9]);
    assert_eq!(finished.len(), 3);
    assert_eq!(finished.last().unwrap().usage.completion_tokens, 27);
    let stats = wait_for_stats(&engine, |s| {
        s.requests_length == 1 && s.running_sequences == 0
    })
    .await;
    assert_eq!(
        stats.prompt_tokens, prompt_len,
        "the prompt was computed once"
    );
}

/// Aggregate decode throughput of 8 concurrent streams against one stream, printed (a
/// measurement, not a check). `PASSERELLE_BENCH_MODEL` names a model to measure; otherwise a
/// random model with Qwen2.5-0.5B's blocks (8 of them) is written, f32
/// (Q8_0 with `PASSERELLE_BENCH_Q8`).
#[tokio::test]
#[ignore = "a measurement: cargo test -p passerelle-llm --test continuous_batching -- --ignored --nocapture"]
async fn decode_throughput_of_8_streams_against_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = match std::env::var_os("PASSERELLE_BENCH_MODEL") {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            // Qwen2.5-0.5B's blocks, fewer of them, and the tiny vocabulary.
            let spec = Qwen2Spec {
                hidden_size: 896,
                intermediate_size: 4864,
                num_hidden_layers: 8,
                num_attention_heads: 14,
                num_key_value_heads: 2,
                ..Qwen2Spec::tiny()
            };
            let checkpoint = Qwen2Checkpoint::new(spec, 86).unwrap();
            match std::env::var("PASSERELLE_BENCH_Q8").is_ok() {
                true => checkpoint
                    .write_gguf(&dir.path().join("bench.gguf"), WeightDtype::Q8_0)
                    .unwrap(),
                false => checkpoint
                    .write_safetensors(dir.path(), WeightDtype::F32)
                    .unwrap(),
            }
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = passerelle_llm::EngineConfig {
        model_path: path,
        model_id: MODEL_ID.to_owned(),
        device: passerelle_llm::DeviceChoice::Cpu,
        threads: Some(threads),
        queue_capacity: 16,
        batch: BatchConfig::default(),
    };
    let engine = passerelle_llm::Engine::load(config, &prometheus::Registry::new())
        .await
        .unwrap();
    const TOKENS: u32 = 64;
    let throughput = async |streams: u32| {
        let started = Instant::now();
        let runs = (0..streams).map(|i| {
            let stream = engine
                .generate(tokens_request(vec![40 + i, 41, 42], TOKENS))
                .unwrap();
            collect(stream)
        });
        let outs = futures::future::join_all(runs).await;
        let tokens: usize = outs.iter().map(|o| o.tokens.len()).sum();
        tokens as f64 / started.elapsed().as_secs_f64()
    };
    let one = throughput(1).await;
    let eight = throughput(8).await;
    println!(
        "{threads} threads: 1 stream {one:.1} tokens/s, 8 streams {eight:.1} tokens/s, x{:.2}",
        eight / one
    );
}
