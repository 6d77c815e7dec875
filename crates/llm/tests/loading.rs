//! Models load from the formats testkit writes, through the real loading code.

mod common;

use common::{MODEL_ID, engine, greedy, run, tiny, try_engine};
use passerelle_llm::{FinishReason, LlmError, ModelFormat, Prompt, tokenizer::TextTokenizer};
use passerelle_testkit::{Qwen2Checkpoint, Qwen2Spec, VocabFill, WeightDtype};

#[tokio::test]
async fn a_gguf_file_alone_brings_weights_tokenizer_and_chat_template() {
    let model = tiny(11);
    let engine = engine(&model.gguf_path()).await;
    assert_eq!(engine.format(), ModelFormat::Gguf);
    let served = engine.ready().await.unwrap();
    let vocab = model.checkpoint().vocabulary();
    assert_eq!(served.vocab_size, vocab.len());
    assert_eq!(served.context_length, 4096);
    assert!(
        served.template.is_some(),
        "the chat template comes from tokenizer.chat_template"
    );
    assert_eq!(
        served.eos_token_ids.iter().copied().collect::<Vec<_>>(),
        vec![vocab.endoftext_id(), vocab.im_end_id()]
    );
    let out = run(&engine, greedy("Hello, world!", 5)).await;
    assert_eq!(
        out.tokens.len(),
        out.finished.unwrap().usage.completion_tokens as usize
    );
}

#[tokio::test]
async fn a_safetensors_directory_loads_with_its_json_files() {
    let model = tiny(12);
    let engine = engine(&model.safetensors_dir()).await;
    assert_eq!(engine.format(), ModelFormat::Safetensors);
    let served = engine.ready().await.unwrap();
    let vocab = model.checkpoint().vocabulary();
    // tokenizer_config's eos_token and generation_config's eos_token_id list.
    assert_eq!(
        served.eos_token_ids.iter().copied().collect::<Vec<_>>(),
        vec![vocab.endoftext_id(), vocab.im_end_id()]
    );
    // generation_config.json's sampling values are the defaults.
    assert_eq!(served.sampling_defaults.temperature, 0.7);
    assert_eq!(served.sampling_defaults.top_k, 20);
    let out = run(&engine, greedy("The quick brown fox", 7)).await;
    assert_eq!(out.reason(), FinishReason::Length);
    assert_eq!(out.tokens.len(), 7);
}

#[tokio::test]
async fn quantized_gguf_loads_and_generates() {
    let model = tiny(13);
    for dtype in [WeightDtype::Q8_0, WeightDtype::F16] {
        let path = model.write_gguf(dtype).unwrap();
        let engine = engine(&path).await;
        let out = run(&engine, greedy("Hello", 4)).await;
        assert_eq!(out.tokens.len(), 4, "{dtype}");
    }
}

#[tokio::test]
async fn the_gguf_tokenizer_encodes_and_decodes_like_tokenizer_json() {
    let model = tiny(14);
    let from_json =
        TextTokenizer::from_file(&model.safetensors_dir().join("tokenizer.json")).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(
        &mut std::fs::File::open(model.gguf_path()).unwrap(),
    )
    .unwrap();
    let from_gguf = TextTokenizer::from_gguf(&content.metadata).unwrap();
    for text in [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "<|im_start|>user\nWhat's the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "Numbers 1234567 and 3.14159, code: fn main() { println!(\"hi\"); }",
        "日本語のテキスト 🦀🎉 naïve café\r\n\ttabs   and  spaces  ",
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call><|endoftext|>",
        "e\u{301} composed by NFC",
    ] {
        let a = from_json.encode(text, true).unwrap();
        let b = from_gguf.encode(text, true).unwrap();
        assert_eq!(a, b, "{text:?}");
        assert_eq!(
            from_json.decode(&a, false).unwrap(),
            from_gguf.decode(&b, false).unwrap()
        );
        assert_eq!(
            from_json.decode(&a, true).unwrap(),
            from_gguf.decode(&b, true).unwrap()
        );
    }
    for id in 0..model.checkpoint().vocabulary().len() as u32 {
        assert_eq!(
            from_json.pieces().bytes(id),
            from_gguf.pieces().bytes(id),
            "token {id}"
        );
        assert_eq!(
            from_json.pieces().is_special(id),
            from_gguf.pieces().is_special(id),
            "token {id}"
        );
    }
}

#[tokio::test]
async fn a_vocabulary_filled_with_words_decodes_every_id_and_streams_text() {
    // Mostly synthetic words, as in the 0.5B benchmark model: a random model samples them.
    let spec = Qwen2Spec {
        vocab_size: Some(4096),
        vocab_fill: VocabFill::Words,
        ..Qwen2Spec::tiny()
    };
    let checkpoint = Qwen2Checkpoint::new(spec, 17).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hf_dir = checkpoint
        .write_safetensors(&dir.path().join("hf"), WeightDtype::F32)
        .unwrap();
    let gguf = checkpoint
        .write_gguf(&dir.path().join("words.gguf"), WeightDtype::Q8_0)
        .unwrap();
    let from_json = TextTokenizer::from_file(&hf_dir.join("tokenizer.json")).unwrap();
    let content =
        candle_core::quantized::gguf_file::Content::read(&mut std::fs::File::open(&gguf).unwrap())
            .unwrap();
    let from_gguf = TextTokenizer::from_gguf(&content.metadata).unwrap();
    let vocab = checkpoint.vocabulary();
    for id in 0..vocab.len() as u32 {
        let text = from_gguf.decode(&[id], false).unwrap();
        assert!(!text.is_empty(), "token {id} decodes to nothing");
        assert_eq!(from_json.decode(&[id], false).unwrap(), text, "token {id}");
        assert_eq!(
            from_json.pieces().is_special(id),
            from_gguf.pieces().is_special(id),
            "token {id}"
        );
    }
    for tokenizer in [&from_json, &from_gguf] {
        assert_eq!(tokenizer.token_id("<|im_end|>"), Some(vocab.im_end_id()));
    }

    for path in [hf_dir, gguf] {
        let engine = engine(&path).await;
        let out = run(&engine, greedy("Hello, world!", 16)).await;
        assert_eq!(out.tokens.len(), 16, "{}", path.display());
        assert!(!out.text().trim().is_empty(), "{}", path.display());
    }
}

#[tokio::test]
async fn other_architectures_are_refused_by_name() {
    let model = tiny(15);
    let dir = model.safetensors_dir();
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config
            .replace("\"qwen2\"", "\"mistral\"")
            .replace("Qwen2ForCausalLM", "MistralForCausalLM"),
    )
    .unwrap();
    let err = try_engine(&dir, 1).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, LlmError::LoadFailed(_)), "{err:?}");
    assert!(
        message.contains("mistral (MistralForCausalLM)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_path_fails_before_starting() {
    let err = try_engine(std::path::Path::new("/nonexistent/model.gguf"), 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no such file or directory"),
        "{err}"
    );
}

#[tokio::test]
async fn tokenize_renders_exactly_what_generate_sees() {
    let model = tiny(16);
    let engine = engine(&model.gguf_path()).await;
    let rendered = engine
        .tokenize(MODEL_ID, &Prompt::Text("Hello".into()))
        .unwrap();
    let out = run(&engine, greedy("Hello", 1)).await;
    assert_eq!(out.prompt_tokens, Some(rendered.ids.len() as u32));
    assert!(matches!(
        engine.tokenize("other", &Prompt::Text("x".into())),
        Err(LlmError::ModelNotFound(_))
    ));
}

#[cfg(not(feature = "cuda"))]
#[tokio::test]
async fn a_gpu_asked_of_a_cpu_build_is_a_clear_load_failure() {
    let model = tiny(16);
    let err = common::try_engine_on(
        &model.gguf_path(),
        passerelle_llm::DeviceChoice::Cuda(0),
        1,
        passerelle_llm::BatchConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LlmError::LoadFailed(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("device `cuda:0` needs a build with the `cuda` feature"),
        "{err}"
    );
}
