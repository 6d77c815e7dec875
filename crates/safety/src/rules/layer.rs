//! The rule set as the first layer of the pipeline.

use async_trait::async_trait;

use super::{RuleSet, category_name};
use crate::{
    error::SafetyError,
    layer::{CheckLayer, LayerInfo},
    verdict::{CheckInput, LayerKind, LayerOutcome, Violation},
};

/// Blocks the first checked message that a rule of an enforced category matches.
#[derive(Debug, Clone)]
pub struct RulesLayer {
    rules: RuleSet,
}

impl RulesLayer {
    pub fn new(rules: RuleSet) -> Self {
        Self { rules }
    }

    /// The compiled rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The synchronous check, for callers without a runtime (and the benchmark).
    pub fn check_now(&self, input: &CheckInput) -> LayerOutcome {
        for index in input.checked() {
            let content = &input.messages[index].content;
            if let Some(rule) = self
                .rules
                .first_match(content, input.stage, |category| input.enforces(category))
            {
                return LayerOutcome::Block(Violation {
                    category: rule.category.clone(),
                    category_name: category_name(&rule.category),
                    rule_id: Some(rule.id.clone()),
                    score: 1.0,
                    message_index: index,
                });
            }
        }
        LayerOutcome::Pass
    }
}

#[async_trait]
impl CheckLayer for RulesLayer {
    fn kind(&self) -> LayerKind {
        LayerKind::Rules
    }

    fn info(&self) -> LayerInfo {
        LayerInfo {
            id: LayerKind::Rules.label().to_owned(),
            format: "regex".to_owned(),
            source: self.rules.source().to_owned(),
        }
    }

    async fn check(&self, input: &CheckInput) -> Result<LayerOutcome, SafetyError> {
        Ok(self.check_now(input))
    }
}
