//! What a caller asks for and gets back, and the pure checks and finishing steps around the
//! model: request limits, `normalize`, `dimensions`.
//!
//! Decisions, following OpenAI's `/v1/embeddings` where it has one:
//! - an empty input list, an empty string, or more than [`MAX_INPUTS`] inputs are
//!   INVALID_ARGUMENT; a whitespace-only string is a text like any other;
//! - an input longer than the model's `max_seq_length` is truncated, as sentence-transformers
//!   does, and reported in [`Embedded::truncated`];
//! - a model whose pipeline ends in `Normalize` always returns unit vectors; `normalize` asks
//!   for unit vectors from the others too;
//! - `dimensions` below the native size is for Matryoshka models (declared by the operator,
//!   since checkpoints carry no marker): the vector is cut and, when it was a unit vector,
//!   re-normalised. Other models accept only their native size.

use crate::{error::EmbeddingsError, model::SentenceVector, vector};

/// Most inputs one request may carry, as in OpenAI's API.
pub const MAX_INPUTS: usize = 2048;

/// What to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inputs {
    Texts(Vec<String>),
    /// The model's own token ids, special tokens included, as its tokenizer produces them.
    Tokens(Vec<Vec<u32>>),
}

impl Inputs {
    pub fn len(&self) -> usize {
        match self {
            Inputs::Texts(texts) => texts.len(),
            Inputs::Tokens(ids) => ids.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How to shape the vectors of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Scale every vector to unit length. Models whose pipeline normalises do so regardless.
    pub normalize: bool,
    /// Keep only the first `dimensions` values.
    pub dimensions: Option<usize>,
}

/// The vectors of one request, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model read per input, special tokens included.
    pub tokens: Vec<usize>,
    /// Per input: it was longer than the model's `max_seq_length` and lost its tail.
    pub truncated: Vec<bool>,
}

impl Embedded {
    /// Tokens of the whole request: the `usage` an OpenAI response reports.
    pub fn total_tokens(&self) -> usize {
        self.tokens.iter().sum()
    }

    /// How many inputs were truncated.
    pub fn truncated_inputs(&self) -> usize {
        self.truncated.iter().filter(|t| **t).count()
    }
}

/// What the checks need to know about the model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits<'a> {
    pub model_id: &'a str,
    pub dimension: usize,
    pub matryoshka: bool,
    pub vocab_size: usize,
}

/// Checks a request before it is queued.
pub(crate) fn validate(
    inputs: &Inputs,
    options: &EmbedOptions,
    limits: Limits<'_>,
) -> Result<(), EmbeddingsError> {
    if inputs.is_empty() {
        return Err(EmbeddingsError::invalid(
            "input",
            "`input` must hold at least one text.",
        ));
    }
    if inputs.len() > MAX_INPUTS {
        return Err(EmbeddingsError::invalid(
            "input",
            format!(
                "`input` may hold at most {MAX_INPUTS} inputs, got {}.",
                inputs.len()
            ),
        ));
    }
    match inputs {
        Inputs::Texts(texts) => {
            if let Some(index) = texts.iter().position(String::is_empty) {
                return Err(EmbeddingsError::invalid(
                    format!("input[{index}]"),
                    "Inputs must not be empty strings.",
                ));
            }
        }
        Inputs::Tokens(inputs) => {
            if let Some(index) = inputs.iter().position(Vec::is_empty) {
                return Err(EmbeddingsError::invalid(
                    format!("input[{index}]"),
                    "Token inputs must hold at least one token id.",
                ));
            }
            let vocab = limits.vocab_size;
            for (index, ids) in inputs.iter().enumerate() {
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(EmbeddingsError::invalid(
                        format!("input[{index}]"),
                        format!(
                            "Token id {id} is outside the vocabulary of model `{}` \
                             (0 to {}).",
                            limits.model_id,
                            vocab.saturating_sub(1)
                        ),
                    ));
                }
            }
        }
    }
    if let Some(dimensions) = options.dimensions {
        let native = limits.dimension;
        if dimensions == 0 {
            return Err(EmbeddingsError::invalid(
                "dimensions",
                "`dimensions` must be at least 1.",
            ));
        }
        if dimensions > native {
            return Err(EmbeddingsError::invalid(
                "dimensions",
                format!(
                    "`dimensions` may be at most {native} for model `{}`, got {dimensions}.",
                    limits.model_id
                ),
            ));
        }
        if dimensions != native && !limits.matryoshka {
            return Err(EmbeddingsError::invalid(
                "dimensions",
                format!(
                    "Model `{}` produces {native}-dimensional vectors and is not a Matryoshka \
                     model, so its vectors cannot be shortened: leave `dimensions` unset or \
                     set it to {native}.",
                    limits.model_id
                ),
            ));
        }
    }
    Ok(())
}

/// Applies `options` to the model's vectors. `model_normalized`: the model's pipeline already
/// made them unit vectors.
pub(crate) fn finish(
    vectors: Vec<SentenceVector>,
    options: &EmbedOptions,
    model_normalized: bool,
) -> Embedded {
    let unit = model_normalized || options.normalize;
    let mut embedded = Embedded {
        vectors: Vec::with_capacity(vectors.len()),
        tokens: Vec::with_capacity(vectors.len()),
        truncated: Vec::with_capacity(vectors.len()),
    };
    for sentence in vectors {
        let mut values = sentence.values;
        if options.normalize && !model_normalized {
            vector::l2_normalize(&mut values);
        }
        if let Some(dimensions) = options.dimensions {
            vector::truncate(&mut values, dimensions, unit);
        }
        embedded.vectors.push(values);
        embedded.tokens.push(sentence.tokens);
        embedded.truncated.push(sentence.truncated);
    }
    embedded
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits<'static> = Limits {
        model_id: "m",
        dimension: 4,
        matryoshka: false,
        vocab_size: 10,
    };

    fn texts(items: &[&str]) -> Inputs {
        Inputs::Texts(items.iter().map(|s| (*s).to_owned()).collect())
    }

    fn param(err: EmbeddingsError) -> String {
        match err {
            EmbeddingsError::InvalidArgument { param, .. } => param,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn limits_on_inputs_name_their_param() {
        let none = EmbedOptions::default();
        assert_eq!(
            param(validate(&texts(&[]), &none, LIMITS).unwrap_err()),
            "input"
        );
        let too_many = vec!["x".to_owned(); MAX_INPUTS + 1];
        let inputs = Inputs::Texts(too_many.clone());
        assert_eq!(
            param(validate(&inputs, &none, LIMITS).unwrap_err()),
            "input"
        );
        let inputs = Inputs::Texts(too_many[..MAX_INPUTS].to_vec());
        assert!(validate(&inputs, &none, LIMITS).is_ok());
        assert_eq!(
            param(validate(&texts(&["ok", ""]), &none, LIMITS).unwrap_err()),
            "input[1]"
        );
        assert!(validate(&texts(&[" "]), &none, LIMITS).is_ok());
    }

    #[test]
    fn token_inputs_must_be_non_empty_and_in_the_vocabulary() {
        let none = EmbedOptions::default();
        let tokens =
            |inputs: &[&[u32]]| Inputs::Tokens(inputs.iter().map(|i| i.to_vec()).collect());
        assert!(validate(&tokens(&[&[0, 9], &[3]]), &none, LIMITS).is_ok());
        assert_eq!(
            param(validate(&tokens(&[&[1], &[]]), &none, LIMITS).unwrap_err()),
            "input[1]"
        );
        let err = validate(&tokens(&[&[1], &[2, 10]]), &none, LIMITS).unwrap_err();
        assert!(err.to_string().contains("10"), "{err}");
        assert_eq!(param(err), "input[1]");
    }

    #[test]
    fn dimensions_other_than_native_need_a_matryoshka_model() {
        let input = texts(&["x"]);
        let with = |d| EmbedOptions {
            normalize: true,
            dimensions: Some(d),
        };
        assert!(validate(&input, &with(4), LIMITS).is_ok());
        let err = validate(&input, &with(2), LIMITS).unwrap_err();
        assert!(err.to_string().contains("not a Matryoshka model"), "{err}");
        assert_eq!(param(err), "dimensions");
        let matryoshka = Limits {
            matryoshka: true,
            ..LIMITS
        };
        assert!(validate(&input, &with(2), matryoshka).is_ok());
        assert_eq!(
            param(validate(&input, &with(5), matryoshka).unwrap_err()),
            "dimensions"
        );
        assert_eq!(
            param(validate(&input, &with(0), matryoshka).unwrap_err()),
            "dimensions"
        );
    }

    fn raw(values: &[f32]) -> Vec<SentenceVector> {
        vec![SentenceVector {
            values: values.to_vec(),
            tokens: 3,
            truncated: false,
        }]
    }

    #[test]
    fn normalize_and_dimensions_shape_the_vectors() {
        let plain = EmbedOptions::default();
        assert_eq!(
            finish(raw(&[3.0, 4.0]), &plain, false).vectors[0],
            vec![3.0, 4.0]
        );
        let unit = EmbedOptions {
            normalize: true,
            dimensions: None,
        };
        assert_eq!(
            finish(raw(&[3.0, 4.0]), &unit, false).vectors[0],
            vec![0.6, 0.8]
        );
        // A model that normalises itself keeps its vectors as they are.
        assert_eq!(
            finish(raw(&[0.6, 0.8]), &plain, true).vectors[0],
            vec![0.6, 0.8]
        );
        let cut = EmbedOptions {
            normalize: false,
            dimensions: Some(1),
        };
        assert_eq!(finish(raw(&[0.6, 0.8]), &cut, true).vectors[0], vec![1.0]);
        assert_eq!(finish(raw(&[3.0, 4.0]), &cut, false).vectors[0], vec![3.0]);
        let embedded = finish(raw(&[3.0, 4.0]), &cut, false);
        assert_eq!(embedded.total_tokens(), 3);
        assert_eq!(embedded.truncated_inputs(), 0);
    }
}
