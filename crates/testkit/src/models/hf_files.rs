//! The JSON files of a Hugging Face Qwen2.5-Instruct checkpoint, field for field.

use serde_json::{Map, Value, json};

use crate::models::{Qwen2Spec, Vocabulary, WeightDtype};

/// Qwen2.5-Instruct's `chat_template`, verbatim from `Qwen/Qwen2.5-0.5B-Instruct`'s
/// `tokenizer_config.json` (it is the same for every Qwen2.5-Instruct size).
pub const QWEN2_5_CHAT_TEMPLATE: &str = include_str!("qwen2_5_chat_template.jinja");

/// `config.json` of a `Qwen2ForCausalLM`.
pub fn config_json(spec: &Qwen2Spec, vocab: &Vocabulary, dtype: WeightDtype) -> Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": vocab.endoftext_id(),
        "eos_token_id": vocab.im_end_id(),
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.num_hidden_layers,
        "model_type": "qwen2",
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_scaling": null,
        "rope_theta": spec.rope_theta,
        "sliding_window": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": torch_dtype(dtype),
        "transformers_version": "4.43.1",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": vocab.len(),
    })
}

fn torch_dtype(dtype: WeightDtype) -> &'static str {
    match dtype {
        WeightDtype::F16 => "float16",
        WeightDtype::Bf16 => "bfloat16",
        WeightDtype::F32 | WeightDtype::Q8_0 | WeightDtype::Q4K | WeightDtype::Q4KM => "float32",
    }
}

/// `generation_config.json`: Qwen2.5-Instruct stops at `<|im_end|>` or `<|endoftext|>`.
pub fn generation_config_json(vocab: &Vocabulary) -> Value {
    json!({
        "bos_token_id": vocab.endoftext_id(),
        "pad_token_id": vocab.endoftext_id(),
        "do_sample": true,
        "eos_token_id": [vocab.im_end_id(), vocab.endoftext_id()],
        "repetition_penalty": 1.1,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "transformers_version": "4.37.0",
    })
}

/// `tokenizer_config.json` of a Qwen2.5-Instruct tokenizer.
pub fn tokenizer_config_json(spec: &Qwen2Spec, vocab: &Vocabulary) -> Value {
    let mut decoder = Map::new();
    for (id, content, special) in vocab.added_tokens() {
        decoder.insert(
            id.to_string(),
            json!({
                "content": content,
                "lstrip": false,
                "normalized": false,
                "rstrip": false,
                "single_word": false,
                "special": special,
            }),
        );
    }
    let additional: Vec<&str> = vocab
        .added_tokens()
        .filter(|(_, content, special)| *special && *content != "<|endoftext|>")
        .map(|(_, content, _)| content)
        .collect();
    json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": additional,
        "bos_token": null,
        "chat_template": QWEN2_5_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": spec.max_position_embeddings,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null,
    })
}
