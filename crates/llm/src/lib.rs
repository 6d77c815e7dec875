//! Text generation on candle (CPU, or CUDA with the `cuda` feature) for Qwen2, Qwen3, Llama and
//! Phi-3 models, as a library and as a gRPC service.
//!
//! - [`model`]: a model's files ([`ModelFiles`]: one GGUF file, or a Hugging Face directory with
//!   safetensors weights) and the decoder forward pass over them (shared weights, one KV cache
//!   per sequence).
//! - [`tokenizer`]: `tokenizer.json`, or a tokenizer rebuilt from GGUF metadata, with each
//!   token's bytes; [`detokenizer`] turns tokens into text without ever splitting a character.
//! - [`template`]: the model's own Jinja chat template, rendered like `transformers` does.
//! - [`sampler`], [`stop`], [`tool_calls`]: pure policies — OpenAI sampling semantics, stop
//!   strings across token boundaries, `<tool_call>` blocks parsed out of streamed text.
//! - [`grammar`]: constrained decoding with llguidance — JSON `response_format`s and forced
//!   tool calls as token masks applied before sampling.
//! - [`plan`]: admission — a request checked against the model and turned into a plan.
//! - [`engine`]: the actor that owns the model on its own thread; [`EngineHandle`] is the plain
//!   Rust API (`Engine::load`, `EngineHandle::generate -> Stream`).
//! - [`service`] and [`serve`]: the `passerelle.llm.v1.Llm` gRPC service, with health flipped
//!   to SERVING once the model is warm.
//!
//! Errors are [`LlmError`] (and [`LoadError`] for loading), turned into `tonic::Status` in one
//! `From` impl.

pub mod convert;
pub mod detokenizer;
pub mod engine;
pub mod error;
pub mod grammar;
pub mod kernels;
pub mod model;
pub mod plan;
pub mod request;
pub mod sampler;
mod serve;
pub mod served;
pub mod service;
pub mod stop;
pub mod template;
pub mod tokenizer;
pub mod tool_calls;

pub use engine::{
    BatchConfig, Engine, EngineConfig, EngineHandle, EngineState, EngineStats, GenerationStream,
};
pub use error::{LlmError, LoadError};
pub use model::{ModelFiles, ModelFormat};
pub use passerelle_model_runtime::DeviceChoice;
pub use request::{
    ChatMessage, ChatPrompt, FinishReason, Finished, GenerationEvent, GenerationRequest, Prompt,
    ResponseFormat, SamplingParams, StoppingParams, TokenDelta, TokenLogprob, ToolCall,
    ToolCallDelta, ToolChoice, ToolSpec, TopLogprob, Usage,
};
pub use serve::{LlmServiceConfig, serve};
pub use served::{RenderedPrompt, ServedModel};
pub use service::LlmService;
