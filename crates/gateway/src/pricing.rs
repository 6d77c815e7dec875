//! What requests cost: per-model prices, in US dollars per million tokens, as providers quote
//! them. A dollar per million tokens is a micro-dollar per token, so costs are whole
//! micro-dollars and sums never drift.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One model's prices, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Per million prompt tokens.
    #[serde(default)]
    pub prompt: f64,
    /// Per million completion tokens.
    #[serde(default)]
    pub completion: f64,
}

/// Prices by model id; a model without one costs nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PriceList {
    prices: HashMap<String, ModelPrice>,
}

/// Why a price list was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "the price of model {model:?} must be a finite, non-negative number of USD per million tokens"
)]
pub struct InvalidPrice {
    pub model: String,
}

impl PriceList {
    /// Checks every price: a negative or infinite one would make costs meaningless.
    pub fn new(prices: HashMap<String, ModelPrice>) -> Result<Self, InvalidPrice> {
        for (model, price) in &prices {
            let valid = |p: f64| p.is_finite() && p >= 0.0;
            if !valid(price.prompt) || !valid(price.completion) {
                return Err(InvalidPrice {
                    model: model.clone(),
                });
            }
        }
        Ok(Self { prices })
    }

    /// The cost of a request, in micro-dollars, rounded to the nearest.
    pub fn cost_micro_usd(&self, model: &str, prompt_tokens: u32, completion_tokens: u32) -> u64 {
        let Some(price) = self.prices.get(model) else {
            return 0;
        };
        let cost = f64::from(prompt_tokens) * price.prompt
            + f64::from(completion_tokens) * price.completion;
        // Finite and non-negative by construction; at most 2^32 tokens times a finite price.
        cost.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(model: &str, prompt: f64, completion: f64) -> Result<PriceList, InvalidPrice> {
        PriceList::new(HashMap::from([(
            model.to_owned(),
            ModelPrice { prompt, completion },
        )]))
    }

    #[test]
    fn costs_are_micro_dollars_per_token_per_dollar_per_million() {
        let prices = list("qwen", 0.5, 1.5).unwrap();
        // 1000 × 0.5 + 200 × 1.5 = 800 micro-dollars.
        assert_eq!(prices.cost_micro_usd("qwen", 1000, 200), 800);
        assert_eq!(prices.cost_micro_usd("other", 1000, 200), 0);
        assert_eq!(PriceList::default().cost_micro_usd("qwen", 5, 5), 0);
    }

    #[test]
    fn negative_and_infinite_prices_are_refused() {
        assert!(list("qwen", -1.0, 0.0).is_err());
        assert!(list("qwen", 0.0, f64::INFINITY).is_err());
        assert!(list("qwen", 0.0, f64::NAN).is_err());
    }
}
