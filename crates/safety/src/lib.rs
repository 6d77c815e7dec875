//! Safety checks for prompts and answers, as a library and as a gRPC service, in layers run
//! cheapest first: the first layer that blocks decides, and a redaction stands when none does.
//!
//! - [`verdict`]: what a check looks at ([`CheckInput`], [`Stage`]) and concludes
//!   ([`Verdict`], [`Violation`], [`Redaction`]).
//! - [`layer`]: the [`CheckLayer`] trait every layer implements and the [`Pipeline`] that
//!   orders them.
//! - [`rules`]: the rule layer: phrase lists and patterns with ids, categories and stages,
//!   compiled into one `RegexSet` per stage; the built-in prompt-injection and jailbreak rules;
//!   rule files. [`normalize`] is the text the rules see.
//! - [`pii`]: the PII layer over `passerelle-pii`.
//! - [`llama_guard`]: Llama Guard 3 on candle (GGUF or safetensors through `passerelle-llm`),
//!   its prompt rendered as the model's published template does.
//! - [`injection`]: the prompt-injection classifier (DeBERTa-v3 on candle) and its layer.
//! - [`request`], [`service`], [`serve`]: limits and validation, the
//!   `passerelle.safety.v1.Safety` gRPC service (`Check`, `Redact`, `ListModels`) and serving
//!   it with health, reflection and metrics.
//!
//! Errors are [`SafetyError`] (and [`RulesError`] for rule sets), turned into `tonic::Status`
//! in one `From` impl.

pub mod error;
pub mod injection;
pub mod layer;
pub mod llama_guard;
mod metrics;
pub mod normalize;
pub mod pii;
pub mod request;
pub mod rules;
mod serve;
pub mod service;
pub mod verdict;

pub use error::SafetyError;
pub use injection::{
    ClassifierOptions, InjectionClassifier, InjectionConfig, InjectionError, InjectionLayer,
    TextScore,
};
pub use layer::{CheckLayer, LayerInfo, Pipeline};
pub use llama_guard::{
    GuardOptions, LlamaGuard, LlamaGuardConfig, LlamaGuardError, LlamaGuardLayer,
};
pub use pii::PiiLayer;
pub use request::RequestLimits;
pub use rules::{Matcher, Rule, RuleSet, RulesError, RulesLayer, Stages};
pub use serve::{SafetyServiceConfig, serve};
pub use service::SafetyService;
pub use verdict::{
    CheckInput, LayerKind, LayerOutcome, Message, PiiFound, Redaction, Stage, Verdict, Violation,
};
