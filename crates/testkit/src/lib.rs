//! Test fixtures for the whole workspace (dev only): models every test loads through the real
//! loading code.
//!
//! - [`models`]: random-weight Qwen2 checkpoints written in the formats real ones ship in — a
//!   Hugging Face directory (`config.json`, `tokenizer.json` with Qwen2's byte-level BPE pipeline,
//!   `tokenizer_config.json` with the real Qwen2.5-Instruct chat template, `model.safetensors`)
//!   and a llama.cpp GGUF file (F32, F16, Q8_0, Q4_K, Q4_K_M) carrying the same weights and tokenizer.
//!   [`TinyQwen2`] writes a tiny one into a temporary directory in both formats.
//! - [`minilm`]: where the real all-MiniLM-L6-v2 weights are, for embedding tests.
//! - [`redis`]: a throwaway `redis-server` on a free loopback port, which tests can kill and
//!   restart.
//! - [`stack`] (feature `stack`): the llm service and the gateway started on loopback, wired
//!   through gRPC as in production, for whole-stack tests over real HTTP.
//! - The `passerelle-testkit` binary writes the same models for people to try:
//!   `passerelle-testkit write-qwen2 --preset qwen2.5-0.5b --format gguf --dtype q8_0 --out m.gguf`.
//!   The embedding rows beyond the learned vocabulary are `<|reserved_N|>` padding that decodes
//!   to nothing, as in real checkpoints; `--fill-vocab words` ([`VocabFill::Words`]) fills them
//!   with distinct words (` w0`, ` w1`, ...) instead, so that a random model, which samples
//!   almost only those rows, streams text whose tokens can be timed.

pub mod minilm;
pub mod models;
pub mod redis;
#[cfg(feature = "stack")]
pub mod stack;

pub use models::{
    Preset, Qwen2Checkpoint, Qwen2Spec, TestkitError, TinyQwen2, VocabFill, Vocabulary, WeightDtype,
};
