//! The checks on cache requests and the defaults they fall back on, pure.

use std::time::Duration;

use super::{CacheConfig, semantic::NamespaceKey};
use crate::error::EmbeddingsError;

/// A checked `CacheLookup`.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupQuery {
    pub namespace: NamespaceKey,
    pub prompt: String,
    /// Within 0..=1; the configured default when the request said 0.
    pub min_similarity: f32,
}

/// A checked `CacheStore`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreCommand {
    pub namespace: NamespaceKey,
    pub prompt: String,
    pub response_json: String,
    /// The configured default when the request said 0.
    pub ttl: Duration,
}

impl LookupQuery {
    pub fn new(
        namespace: String,
        model: String,
        prompt: String,
        min_similarity: f32,
        config: &CacheConfig,
    ) -> Result<Self, EmbeddingsError> {
        let namespace = checked_key(namespace, model)?;
        required("prompt", &prompt)?;
        if !(0.0..=1.0).contains(&min_similarity) {
            return Err(EmbeddingsError::invalid(
                "min_similarity",
                format!("min_similarity must be between 0 and 1, got {min_similarity}"),
            ));
        }
        Ok(Self {
            namespace,
            prompt,
            min_similarity: if min_similarity == 0.0 {
                config.default_min_similarity
            } else {
                min_similarity
            },
        })
    }
}

impl StoreCommand {
    pub fn new(
        namespace: String,
        model: String,
        prompt: String,
        response_json: String,
        ttl_seconds: u32,
        config: &CacheConfig,
    ) -> Result<Self, EmbeddingsError> {
        let namespace = checked_key(namespace, model)?;
        required("prompt", &prompt)?;
        required("response_json", &response_json)?;
        Ok(Self {
            namespace,
            prompt,
            response_json,
            ttl: match ttl_seconds {
                0 => config.default_ttl,
                seconds => Duration::from_secs(u64::from(seconds)),
            },
        })
    }
}

fn checked_key(namespace: String, model: String) -> Result<NamespaceKey, EmbeddingsError> {
    required("namespace", &namespace)?;
    Ok(NamespaceKey { namespace, model })
}

fn required(param: &str, value: &str) -> Result<(), EmbeddingsError> {
    if value.is_empty() {
        return Err(EmbeddingsError::invalid(
            param,
            format!("{param} must not be empty"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(err: EmbeddingsError) -> String {
        match err {
            EmbeddingsError::InvalidArgument { param, .. } => param,
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        }
    }

    fn lookup(namespace: &str, prompt: &str, min: f32) -> Result<LookupQuery, EmbeddingsError> {
        LookupQuery::new(
            namespace.into(),
            "m".into(),
            prompt.into(),
            min,
            &CacheConfig::default(),
        )
    }

    #[test]
    fn lookups_need_a_namespace_a_prompt_and_a_threshold_within_0_and_1() {
        assert_eq!(param(lookup("", "p", 0.9).unwrap_err()), "namespace");
        assert_eq!(param(lookup("t", "", 0.9).unwrap_err()), "prompt");
        for bad in [-0.1, 1.01, f32::NAN, f32::INFINITY] {
            assert_eq!(param(lookup("t", "p", bad).unwrap_err()), "min_similarity");
        }
        assert_eq!(lookup("t", "p", 0.0).unwrap().min_similarity, 0.95);
        assert_eq!(lookup("t", "p", 1.0).unwrap().min_similarity, 1.0);
        assert_eq!(lookup("t", "p", 0.8).unwrap().namespace.model, "m");
    }

    #[test]
    fn stores_need_an_answer_and_default_their_ttl() {
        let config = CacheConfig::default();
        let store = |prompt: &str, response: &str, ttl| {
            StoreCommand::new(
                "t".into(),
                "m".into(),
                prompt.into(),
                response.into(),
                ttl,
                &config,
            )
        };
        assert_eq!(param(store("p", "", 5).unwrap_err()), "response_json");
        assert_eq!(param(store("", "{}", 5).unwrap_err()), "prompt");
        assert_eq!(store("p", "{}", 0).unwrap().ttl, Duration::from_secs(3600));
        assert_eq!(store("p", "{}", 5).unwrap().ttl, Duration::from_secs(5));
        let err = StoreCommand::new("".into(), "m".into(), "p".into(), "{}".into(), 0, &config);
        assert_eq!(param(err.unwrap_err()), "namespace");
    }
}
