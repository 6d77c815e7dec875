//! The engine's batching limits, and fitting a request to them at admission.

use std::time::Duration;

use crate::{
    engine::scheduler::{BLOCK_TOKENS, SchedulerConfig, SchedulerConfigError},
    error::LlmError,
    plan::GenerationPlan,
};

/// Most cached prompt prefixes kept, whatever room the KV budget leaves.
const MAX_PREFIXES: usize = 64;

/// How the engine batches sequences and bounds their KV cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// The KV cache budget in tokens (positions), over all running sequences and the prefix
    /// cache. A request reserves `prompt + max_tokens` for each of its choices when admitted.
    /// `None`: the model's context length times `max_running`, so that `max_running` requests
    /// of any length fit. In bytes, a token costs `2 x layers x kv_heads x head_dim x 4` (f32
    /// keys and values); the engine logs the figure at startup.
    pub kv_cache_tokens: Option<usize>,
    /// Most sequences in the running batch (a request with `n` choices counts `n`).
    pub max_running: usize,
    /// Most tokens one forward pass runs: a decoded token per running sequence, then prompt
    /// chunks.
    pub max_batch_tokens: usize,
    /// Most prompt tokens one sequence prefills per step: the longest a long prompt delays the
    /// running streams each step.
    pub prefill_chunk: usize,
    /// How long a request may wait for room in the batch before it is refused as overloaded.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            kv_cache_tokens: None,
            max_running: 8,
            max_batch_tokens: 512,
            prefill_chunk: 256,
            max_wait: Duration::from_secs(10),
        }
    }
}

impl BatchConfig {
    /// The scheduler's limits for a model of `context_length` tokens.
    pub(crate) fn scheduler(&self, context_length: usize) -> SchedulerConfig {
        let tokens = self
            .kv_cache_tokens
            .unwrap_or_else(|| context_length.saturating_mul(self.max_running));
        SchedulerConfig {
            total_blocks: tokens / BLOCK_TOKENS,
            max_running: self.max_running,
            max_batch_tokens: self.max_batch_tokens,
            prefill_chunk: self.prefill_chunk,
            max_wait: self.max_wait,
            max_prefixes: MAX_PREFIXES,
        }
    }

    /// Refuses limits that could never run anything, before any model is loaded.
    pub fn check(&self) -> Result<(), SchedulerConfigError> {
        // A context of one block stands for any model; only the explicit budget matters here.
        self.scheduler(BLOCK_TOKENS).check()
    }
}

/// Fits `plan` to the KV budget: without a requested `max_tokens`, the completion may use what
/// the budget leaves each choice (as it may use what the context leaves); a request that could
/// never be admitted, even alone, is refused as the client's to change.
pub(crate) fn fit_to_budget(
    plan: &mut GenerationPlan,
    max_tokens_requested: bool,
    limits: &SchedulerConfig,
) -> Result<(), LlmError> {
    let rows = plan.choices as usize;
    if rows > limits.max_running {
        return Err(LlmError::invalid(
            "n",
            format!(
                "n must be at most {}, the sequences this engine runs at once; got {rows}",
                limits.max_running
            ),
        ));
    }
    let prompt = plan.prompt.ids.len();
    let per_choice = limits.total_blocks / rows * BLOCK_TOKENS;
    if !max_tokens_requested && per_choice > prompt {
        plan.max_tokens = plan.max_tokens.min(per_choice - prompt);
    }
    if limits.blocks_for(prompt, plan.max_tokens, rows) > limits.total_blocks {
        let budget = limits.total_blocks * BLOCK_TOKENS;
        let (param, advice) = if max_tokens_requested {
            ("max_tokens", "reduce the prompt, max_tokens or n")
        } else {
            ("prompt", "shorten the prompt or reduce n")
        };
        return Err(LlmError::invalid(
            param,
            format!(
                "this request needs KV cache for {} tokens ({rows} x ({prompt} prompt + {} \
                 completion)), more than this engine's whole budget of {budget} tokens; {advice}",
                rows * (prompt + plan.max_tokens),
                plan.max_tokens,
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{sampler::SamplerConfig, served::RenderedPrompt};

    fn plan(prompt: usize, max_tokens: usize, choices: u32) -> GenerationPlan {
        GenerationPlan {
            request_id: "r".into(),
            prompt: RenderedPrompt {
                ids: vec![1; prompt],
                text: String::new(),
            },
            sampler: SamplerConfig::default(),
            max_tokens,
            stop: Vec::new(),
            eos_token_ids: BTreeSet::new(),
            stop_token_ids: BTreeSet::new(),
            echo: false,
            choices,
            constraint: None,
            parse_tool_calls: false,
        }
    }

    fn limits(tokens: usize) -> SchedulerConfig {
        BatchConfig {
            kv_cache_tokens: Some(tokens),
            max_running: 4,
            ..BatchConfig::default()
        }
        .scheduler(4096)
    }

    #[test]
    fn requests_are_fitted_to_the_budget_or_refused_as_invalid() {
        let mut fits = plan(100, 100, 2);
        fit_to_budget(&mut fits, true, &limits(512)).unwrap();
        assert_eq!(fits.max_tokens, 100);

        let mut too_big = plan(100, 200, 2);
        let err = fit_to_budget(&mut too_big, true, &limits(512)).unwrap_err();
        assert!(
            matches!(&err, LlmError::InvalidArgument { param: "max_tokens", message } if message.contains("512")),
            "{err:?}"
        );

        // Without max_tokens, what the context leaves is capped by what the budget leaves.
        let mut open = plan(100, 3996, 2);
        fit_to_budget(&mut open, false, &limits(512)).unwrap();
        assert_eq!(open.max_tokens, 156);
        let mut prompt_too_long = plan(600, 3496, 1);
        let err = fit_to_budget(&mut prompt_too_long, false, &limits(512)).unwrap_err();
        assert!(matches!(
            err,
            LlmError::InvalidArgument {
                param: "prompt",
                ..
            }
        ));

        let mut many = plan(10, 10, 5);
        let err = fit_to_budget(&mut many, true, &limits(512)).unwrap_err();
        assert!(matches!(err, LlmError::InvalidArgument { param: "n", .. }));
    }

    #[test]
    fn the_default_budget_holds_max_running_full_contexts() {
        let config = BatchConfig::default();
        assert_eq!(config.scheduler(4096).total_blocks, 4096 * 8 / BLOCK_TOKENS);
        assert!(config.check().is_ok());
        let tiny = BatchConfig {
            kv_cache_tokens: Some(8),
            ..BatchConfig::default()
        };
        assert_eq!(tiny.check(), Err(SchedulerConfigError::NoBlocks));
    }
}
