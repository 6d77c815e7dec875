//! `POST /v1/moderations`: OpenAI's moderation API, answered by the safety service. Each input
//! is checked as a user's message by every layer the service runs; `categories` names the
//! built-in rule categories and any other category a layer reported.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use passerelle_proto::safety::Verdict;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{AppJson, RequestId};
use crate::state::AppState;

/// Most inputs one request may carry.
const MAX_INPUTS: usize = 32;
/// Longest input, in bytes.
const MAX_INPUT_BYTES: usize = 64 * 1024;
/// The model id responses name: the layered safety service.
const MODEL: &str = "passerelle-safety";
/// The categories of the built-in rules, reported (false) even when nothing matched.
const RULE_CATEGORIES: [&str; 3] = ["jailbreak", "prompt_injection", "prompt_leak"];

/// OpenAI's moderation categories a Llama Guard hazard code also sets, so clients written for
/// OpenAI's taxonomy see Llama Guard's findings. Codes without a counterpart (defamation,
/// specialized advice, privacy, intellectual property, elections) are reported by code only.
fn openai_categories(code: &str) -> &'static [&'static str] {
    match code {
        "S1" => &["violence", "illicit/violent"],
        "S2" | "S14" => &["illicit"],
        "S3" | "S12" => &["sexual"],
        "S4" => &["sexual/minors"],
        "S9" => &["illicit/violent"],
        "S10" => &["hate"],
        "S11" => &["self-harm"],
        _ => &[],
    }
}

/// `model` and other fields are accepted and ignored: the service's layers decide.
#[derive(Debug, Deserialize)]
pub(crate) struct ModerationRequest {
    input: ModerationInput,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ModerationInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Serialize)]
pub(crate) struct ModerationResponse {
    id: String,
    model: &'static str,
    results: Vec<ModerationResult>,
}

#[derive(Debug, Serialize)]
struct ModerationResult {
    flagged: bool,
    categories: BTreeMap<String, bool>,
    category_scores: BTreeMap<String, f32>,
}

const DISABLED: ApiError = ApiError::FeatureDisabled {
    feature: "Moderation",
    how: "run it with the safety filter (serve) or --safety-endpoint (gateway)",
};

pub(crate) async fn create(
    State(state): State<AppState>,
    request_id: RequestId,
    body: Result<AppJson<ModerationRequest>, ApiError>,
) -> Result<Json<ModerationResponse>, ApiError> {
    let AppJson(body) = body?;
    let safety = state.safety().ok_or(DISABLED)?;
    let inputs = match body.input {
        ModerationInput::One(text) => vec![text],
        ModerationInput::Many(texts) => texts,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid_param(
            "input",
            format!("`input` must hold 1 to {MAX_INPUTS} texts."),
        ));
    }
    if let Some(index) = inputs
        .iter()
        .position(|t| t.is_empty() || t.len() > MAX_INPUT_BYTES)
    {
        return Err(ApiError::invalid_param(
            format!("input[{index}]"),
            format!("Each input must be a non-empty text of at most {MAX_INPUT_BYTES} bytes."),
        ));
    }
    let checks = inputs
        .into_iter()
        .map(|text| safety.moderate(text, &request_id));
    let verdicts = futures::future::try_join_all(checks).await?;
    let results = verdicts
        .into_iter()
        .map(|verdict| {
            let mut categories: BTreeMap<String, bool> = RULE_CATEGORIES
                .iter()
                .map(|c| ((*c).to_owned(), false))
                .collect();
            let mut category_scores: BTreeMap<String, f32> = RULE_CATEGORIES
                .iter()
                .map(|c| ((*c).to_owned(), 0.0))
                .collect();
            let flagged = verdict.verdict() == Verdict::Unsafe;
            for violation in &verdict.categories {
                categories.insert(violation.code.clone(), flagged);
                category_scores.insert(violation.code.clone(), violation.score);
                for openai in openai_categories(&violation.code) {
                    categories.insert((*openai).to_owned(), flagged);
                    category_scores.insert((*openai).to_owned(), violation.score);
                }
            }
            ModerationResult {
                flagged,
                categories,
                category_scores,
            }
        })
        .collect();
    Ok(Json(ModerationResponse {
        id: format!("modr-{}", uuid::Uuid::new_v4().simple()),
        model: MODEL,
        results,
    }))
}
