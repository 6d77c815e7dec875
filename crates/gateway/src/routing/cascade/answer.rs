//! The small model's answer as an OpenAI JSON body of either API: the parts the policy reads,
//! and the body made fit for a client that did not ask for log-probabilities.

use serde_json::Value;

use super::super::dispatch::Api;
use super::policy::ChoiceView;

/// One choice of the answer, read from its JSON.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChoiceRead {
    text: String,
    finish_reason: Option<String>,
    refusal: bool,
    logprobs: Vec<f64>,
}

impl ChoiceRead {
    pub(crate) fn view(&self) -> ChoiceView<'_> {
        ChoiceView {
            text: &self.text,
            finish_reason: self.finish_reason.as_deref(),
            refusal: self.refusal,
            logprobs: &self.logprobs,
        }
    }
}

/// Every choice of `answer`: chat's `message.content`, `message.refusal` and
/// `logprobs.content[].logprob`, or the completions API's `text` and
/// `logprobs.token_logprobs` (whose `null`s, for echoed prompt tokens, are skipped).
pub(crate) fn choices(api: Api, answer: &Value) -> Vec<ChoiceRead> {
    let Some(choices) = answer.get("choices").and_then(Value::as_array) else {
        return Vec::new();
    };
    choices
        .iter()
        .map(|choice| {
            let finish_reason = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let logprobs = choice.get("logprobs");
            match api {
                Api::Chat => {
                    let message = choice.get("message");
                    let field = |name: &str| {
                        message
                            .and_then(|m| m.get(name))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                    };
                    ChoiceRead {
                        text: field("content").to_owned(),
                        refusal: !field("refusal").is_empty(),
                        finish_reason,
                        logprobs: logprobs
                            .and_then(|l| l.get("content"))
                            .and_then(Value::as_array)
                            .map(|tokens| {
                                tokens
                                    .iter()
                                    .filter_map(|t| t.get("logprob").and_then(Value::as_f64))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                }
                Api::Completions => ChoiceRead {
                    text: choice
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    refusal: false,
                    finish_reason,
                    logprobs: logprobs
                        .and_then(|l| l.get("token_logprobs"))
                        .and_then(Value::as_array)
                        .map(|values| values.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default(),
                },
            }
        })
        .collect()
}

/// Removes what the gateway asked for and the client did not: every choice's `logprobs`
/// becomes `null`, as in an answer to a request without them.
pub(crate) fn strip_logprobs(answer: &mut Value) {
    if let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices.iter_mut().filter_map(Value::as_object_mut) {
            choice.insert("logprobs".to_owned(), Value::Null);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn chat_answers_give_their_text_refusal_and_token_logprobs() {
        let answer = json!({"choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hi", "refusal": null},
            "logprobs": {"content": [{"token": "H", "logprob": -0.5}, {"token": "i", "logprob": -1.5}]},
            "finish_reason": "stop"
        }, {
            "index": 1,
            "message": {"role": "assistant", "content": null, "refusal": "No."},
            "logprobs": null,
            "finish_reason": "stop"
        }]});
        let read = choices(Api::Chat, &answer);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].view().text, "Hi");
        assert_eq!(read[0].view().logprobs, [-0.5, -1.5]);
        assert!(!read[0].view().refusal);
        assert!(read[1].view().refusal);
        assert!(read[1].view().logprobs.is_empty());
    }

    #[test]
    fn completion_answers_skip_the_null_logprobs_of_echoed_tokens() {
        let answer = json!({"choices": [{
            "index": 0, "text": "Once upon",
            "logprobs": {"tokens": ["Once", " upon"], "token_logprobs": [null, -0.25]},
            "finish_reason": "length"
        }]});
        let read = choices(Api::Completions, &answer);
        assert_eq!(read[0].view().logprobs, [-0.25]);
        assert_eq!(read[0].view().finish_reason, Some("length"));
    }

    #[test]
    fn logprobs_are_stripped_from_every_choice() {
        let mut answer = json!({"choices": [
            {"index": 0, "text": "a", "logprobs": {"token_logprobs": [-1.0]}},
            {"index": 1, "text": "b"}
        ]});
        strip_logprobs(&mut answer);
        assert_eq!(answer["choices"][0]["logprobs"], Value::Null);
        assert_eq!(answer["choices"][1]["logprobs"], Value::Null);
    }

    #[test]
    fn a_body_without_choices_has_none() {
        assert!(choices(Api::Chat, &json!({"error": {}})).is_empty());
    }
}
