//! The written files load back with the same libraries the services use.

use std::fs::File;

use candle_core::{Device, quantized::gguf_file};
use passerelle_testkit::{
    Qwen2Checkpoint, Qwen2Spec, TinyQwen2, VocabFill, WeightDtype, models::TokenKind,
};

#[test]
fn tokenizer_json_round_trips_text_and_keeps_special_tokens_whole() {
    let model = TinyQwen2::write(1).unwrap();
    let tokenizer =
        tokenizers::Tokenizer::from_file(model.safetensors_dir().join("tokenizer.json")).unwrap();
    let vocab = model.checkpoint().vocabulary();
    for text in [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "naïve café — 日本語 🦀 emoji\r\n\tand tabs   spaces",
        "fn main() {\n    println!(\"hello\");\n}\n",
    ] {
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    }
    let ids = tokenizer
        .encode("<|im_start|>user\nhi<|im_end|>", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids[0], vocab.im_start_id());
    assert_eq!(*ids.last().unwrap(), vocab.im_end_id());
    // Common words are single tokens: the merges were learned from English.
    assert_eq!(tokenizer.encode(" the", false).unwrap().get_ids().len(), 1);
    assert_eq!(tokenizer.get_vocab_size(true), vocab.tokenizer_len());
    assert!(
        vocab.tokenizer_len() < vocab.len(),
        "embedding rows are padded beyond the tokenizer"
    );
    assert_eq!(tokenizer.id_to_token(vocab.len() as u32 - 1), None);
}

#[test]
fn hugging_face_files_describe_the_checkpoint() {
    let model = TinyQwen2::write(2).unwrap();
    let dir = model.safetensors_dir();
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let config = read("config.json");
    let spec = Qwen2Spec::tiny();
    assert_eq!(config["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(config["hidden_size"], spec.hidden_size);
    assert_eq!(config["vocab_size"], model.checkpoint().vocabulary().len());
    let tokenizer_config = read("tokenizer_config.json");
    assert_eq!(tokenizer_config["eos_token"], "<|im_end|>");
    assert!(tokenizer_config["bos_token"].is_null());
    assert!(
        tokenizer_config["chat_template"]
            .as_str()
            .unwrap()
            .contains("You are Qwen")
    );
    let im_end = model.checkpoint().vocabulary().im_end_id().to_string();
    assert_eq!(
        tokenizer_config["added_tokens_decoder"][&im_end]["content"],
        "<|im_end|>"
    );
    let generation = read("generation_config.json");
    assert_eq!(generation["eos_token_id"].as_array().unwrap().len(), 2);

    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(tensors.len(), model.checkpoint().tensors().len());
    let embed = &tensors["model.embed_tokens.weight"];
    assert_eq!(
        embed.dims(),
        &[model.checkpoint().vocabulary().len(), spec.hidden_size]
    );
    assert!(
        !tensors.contains_key("lm_head.weight"),
        "tiny ties its embeddings"
    );
}

#[test]
fn gguf_carries_llama_cpp_metadata_and_the_same_weights() {
    let model = TinyQwen2::write(3).unwrap();
    let mut file = File::open(model.gguf_path()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let md = |key: &str| {
        content
            .metadata
            .get(key)
            .unwrap_or_else(|| panic!("missing {key}"))
    };
    let spec = Qwen2Spec::tiny();
    assert_eq!(md("general.architecture").to_string().unwrap(), "qwen2");
    assert_eq!(
        md("qwen2.block_count").to_u32().unwrap() as usize,
        spec.num_hidden_layers
    );
    assert_eq!(
        md("qwen2.attention.head_count_kv").to_u32().unwrap() as usize,
        spec.num_key_value_heads
    );
    assert_eq!(md("tokenizer.ggml.model").to_string().unwrap(), "gpt2");
    assert_eq!(md("tokenizer.ggml.pre").to_string().unwrap(), "qwen2");
    let vocab = model.checkpoint().vocabulary();
    let tokens = md("tokenizer.ggml.tokens").to_vec().unwrap();
    assert_eq!(tokens.len(), vocab.len());
    let types = md("tokenizer.ggml.token_type").to_vec().unwrap();
    assert_eq!(
        types[vocab.im_end_id() as usize].to_i32().unwrap(),
        TokenKind::Control.gguf_type()
    );
    let last = vocab.len() - 1;
    assert_eq!(types[last].to_i32().unwrap(), TokenKind::Unused.gguf_type());
    assert!(tokens[last].to_string().unwrap().starts_with("<|reserved_"));
    assert_eq!(
        md("tokenizer.ggml.eos_token_id").to_u32().unwrap(),
        vocab.im_end_id()
    );
    assert!(!md("tokenizer.ggml.add_bos_token").to_bool().unwrap());
    assert_eq!(
        md("tokenizer.chat_template").to_string().unwrap(),
        passerelle_testkit::models::QWEN2_5_CHAT_TEMPLATE
    );

    // The F32 GGUF holds exactly the safetensors values, unpermuted.
    let q = content
        .tensor(&mut file, "blk.1.attn_q.weight", &Device::Cpu)
        .unwrap();
    let q = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let expected = model
        .checkpoint()
        .tensors()
        .iter()
        .find(|t| t.name == "model.layers.1.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(q, expected.data);
    assert!(content.tensor_infos.contains_key("blk.0.attn_k.bias"));
    assert!(!content.tensor_infos.contains_key("output.weight"));
}

#[test]
fn words_fill_every_row_with_text_in_both_formats_and_convert_alike() {
    let spec = Qwen2Spec {
        vocab_size: Some(1024),
        vocab_fill: VocabFill::Words,
        ..Qwen2Spec::tiny()
    };
    let checkpoint = Qwen2Checkpoint::new(spec, 6).unwrap();
    let vocab = checkpoint.vocabulary();
    let dir = tempfile::tempdir().unwrap();
    let hf = checkpoint
        .write_safetensors(&dir.path().join("hf"), WeightDtype::F32)
        .unwrap();
    let written = checkpoint
        .write_gguf(&dir.path().join("written.gguf"), WeightDtype::F32)
        .unwrap();
    let converted = dir.path().join("converted.gguf");
    passerelle_testkit::models::convert_hf_to_gguf(&hf, &converted, WeightDtype::F32).unwrap();

    let tokenizer = tokenizers::Tokenizer::from_file(hf.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.get_vocab_size(true), vocab.len());
    for id in 0..vocab.len() as u32 {
        let text = tokenizer.decode(&[id], false).unwrap();
        assert!(!text.is_empty(), "token {id} decodes to nothing");
    }
    assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(vocab.im_end_id()));

    let token_metadata = |path: &std::path::Path| {
        let content = gguf_file::Content::read(&mut File::open(path).unwrap()).unwrap();
        let strings = |key: &str| -> Vec<String> {
            content.metadata[key]
                .to_vec()
                .unwrap()
                .iter()
                .map(|v| v.to_string().unwrap().clone())
                .collect()
        };
        let types: Vec<i32> = content.metadata["tokenizer.ggml.token_type"]
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| v.to_i32().unwrap())
            .collect();
        (strings("tokenizer.ggml.tokens"), types)
    };
    let (tokens, types) = token_metadata(&written);
    assert_eq!(tokens, vocab.tokens());
    assert!(!types.contains(&TokenKind::Unused.gguf_type()));
    assert_eq!(
        types[vocab.im_end_id() as usize],
        TokenKind::Control.gguf_type()
    );
    // The words follow the added tokens.
    let first = tokens.iter().position(|t| t == "Ġw0").unwrap();
    assert_eq!(first, vocab.added_tokens().last().unwrap().0 as usize + 1);
    assert_eq!(tokens[1023], format!("Ġw{}", 1023 - first));
    assert_eq!(token_metadata(&converted), (tokens, types));
}

#[test]
fn quantized_gguf_is_close_to_the_f32_weights() {
    let model = TinyQwen2::write(4).unwrap();
    let path = model.write_gguf(WeightDtype::Q8_0).unwrap();
    let mut file = File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let ffn = content
        .tensor(&mut file, "blk.0.ffn_up.weight", &Device::Cpu)
        .unwrap();
    assert_eq!(ffn.dtype(), candle_core::quantized::GgmlDType::Q8_0);
    let values = ffn
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let expected = &model
        .checkpoint()
        .tensors()
        .iter()
        .find(|t| t.name == "model.layers.0.mlp.up_proj.weight")
        .unwrap()
        .data;
    let max_err = values
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_err < 0.01, "{max_err}");
    let norm = content
        .tensor(&mut file, "blk.0.attn_norm.weight", &Device::Cpu)
        .unwrap();
    assert_eq!(norm.dtype(), candle_core::quantized::GgmlDType::F32);
}

#[test]
fn untied_checkpoints_write_an_output_matrix() {
    let mut spec = Qwen2Spec::tiny();
    spec.tie_word_embeddings = false;
    let checkpoint = Qwen2Checkpoint::new(spec, 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint
        .write_gguf(&dir.path().join("untied.gguf"), WeightDtype::F32)
        .unwrap();
    let content = gguf_file::Content::read(&mut File::open(path).unwrap()).unwrap();
    assert!(content.tensor_infos.contains_key("output.weight"));
    assert!(
        checkpoint
            .tensors()
            .iter()
            .any(|t| t.name == "lm_head.weight")
    );
}
