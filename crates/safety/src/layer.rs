//! The layers a check runs through and the pipeline that orders them.
//!
//! A layer is anything that looks at a [`CheckInput`] and passes it, blocks it or redacts it.
//! The pipeline asks each in turn, cheapest first (rules, then PII; the injection classifier
//! and Llama Guard will follow): the first block wins and ends the check, a redaction is kept
//! while later layers still get their say on the original text.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    error::SafetyError,
    verdict::{CheckInput, LayerKind, LayerOutcome, Verdict},
};

/// What `ListModels` says about a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The id clients see, e.g. `rules`.
    pub id: String,
    /// How it decides, e.g. `regex`, or the weights format of a model layer (`gguf`).
    pub format: String,
    /// Where its configuration or weights came from, e.g. `built-in` or a file path.
    pub source: String,
}

/// One stage of the safety pipeline. Async so that model-backed layers can wait on their
/// engine; the rule and PII layers answer at once.
#[async_trait]
pub trait CheckLayer: Send + Sync + std::fmt::Debug {
    /// Which layer this is, reported as the verdict's `decided_by`.
    fn kind(&self) -> LayerKind;

    /// How the layer is listed by `ListModels`.
    fn info(&self) -> LayerInfo;

    /// Judges the messages of `input` this layer cares about.
    async fn check(&self, input: &CheckInput) -> Result<LayerOutcome, SafetyError>;
}

/// The layers of a service, in the order they run.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    layers: Vec<Arc<dyn CheckLayer>>,
}

impl Pipeline {
    /// A pipeline running `layers` in the order given.
    pub fn new(layers: Vec<Arc<dyn CheckLayer>>) -> Self {
        Self { layers }
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Arc<dyn CheckLayer>] {
        &self.layers
    }

    /// Runs the layers until one blocks; a redaction (the first one) stands when none does.
    pub async fn check(&self, input: &CheckInput) -> Result<Verdict, SafetyError> {
        let mut redacted = None;
        for layer in &self.layers {
            match layer.check(input).await? {
                LayerOutcome::Pass => {}
                LayerOutcome::Block(violation) => {
                    return Ok(Verdict::Unsafe {
                        layer: layer.kind(),
                        violation,
                    });
                }
                LayerOutcome::Redact(redaction) => {
                    redacted.get_or_insert((layer.kind(), redaction));
                }
            }
        }
        Ok(match redacted {
            Some((layer, redaction)) => Verdict::Redacted { layer, redaction },
            None => Verdict::Safe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Message, Redaction, Stage, Violation};

    /// A layer that always answers the same, to test the ordering policy alone.
    #[derive(Debug)]
    struct Fixed(LayerKind, LayerOutcome);

    #[async_trait]
    impl CheckLayer for Fixed {
        fn kind(&self) -> LayerKind {
            self.0
        }
        fn info(&self) -> LayerInfo {
            LayerInfo {
                id: self.0.label().into(),
                format: "fixed".into(),
                source: "test".into(),
            }
        }
        async fn check(&self, _: &CheckInput) -> Result<LayerOutcome, SafetyError> {
            Ok(self.1.clone())
        }
    }

    fn block(category: &str) -> LayerOutcome {
        LayerOutcome::Block(Violation {
            category: category.into(),
            category_name: category.into(),
            rule_id: None,
            score: 1.0,
            message_index: 0,
        })
    }

    fn redact() -> LayerOutcome {
        LayerOutcome::Redact(Redaction {
            messages: vec![(0, "[EMAIL]".into())],
            found: Vec::new(),
        })
    }

    async fn run(layers: Vec<Fixed>) -> Verdict {
        let pipeline = Pipeline::new(
            layers
                .into_iter()
                .map(|layer| Arc::new(layer) as Arc<dyn CheckLayer>)
                .collect(),
        );
        let input = CheckInput {
            messages: vec![Message {
                role: "user".into(),
                content: "x".into(),
            }],
            stage: Stage::Input,
            categories: Vec::new(),
        };
        pipeline.check(&input).await.unwrap()
    }

    #[tokio::test]
    async fn first_block_wins_and_a_block_beats_an_earlier_redaction() {
        let verdict = run(vec![
            Fixed(LayerKind::Rules, LayerOutcome::Pass),
            Fixed(LayerKind::Pii, redact()),
            Fixed(LayerKind::Injection, block("prompt_injection")),
            Fixed(LayerKind::LlamaGuard, block("S1")),
        ])
        .await;
        let Verdict::Unsafe { layer, violation } = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(layer, LayerKind::Injection);
        assert_eq!(violation.category, "prompt_injection");
    }

    #[tokio::test]
    async fn redaction_stands_when_nothing_blocks_and_no_layer_means_safe() {
        let verdict = run(vec![
            Fixed(LayerKind::Rules, LayerOutcome::Pass),
            Fixed(LayerKind::Pii, redact()),
        ])
        .await;
        assert!(matches!(
            verdict,
            Verdict::Redacted {
                layer: LayerKind::Pii,
                ..
            }
        ));
        assert_eq!(run(Vec::new()).await, Verdict::Safe);
    }
}
