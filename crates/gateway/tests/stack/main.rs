//! Whole-stack tests: the real gateway in front of the real llm service, serving a tiny
//! random-weight Qwen2 model written by testkit, over HTTP and gRPC on loopback.

mod access;
mod admin;
mod balancing;
mod cancellation;
mod cascade;
mod chat;
mod completions;
mod documents;
mod drift;
mod embeddings;
mod errors;
/// The upstream tests' mock OpenAI server: the large model of a cascade, an upstream whose
/// answers are cached and screened.
#[path = "../upstream/mock.rs"]
#[allow(dead_code, reason = "the stack tests use only part of the mock")]
mod mock;
mod relayed;
mod safety;
mod semantic_cache;
mod shared_redis;
mod structured;
mod support;
mod tokenize;
mod usage;
