//! When a cascade keeps its small model's answer and when it asks the large model instead: a
//! pure judgement on the answer's token log-probabilities, finish reasons and refusals.

use super::super::config::CascadeConfig;

/// How far into an answer a refusal phrase is looked for: refusals open the answer.
const REFUSAL_WINDOW_CHARS: usize = 200;

/// What the policy reads of one choice of the small model's answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChoiceView<'a> {
    /// The generated text.
    pub(crate) text: &'a str,
    pub(crate) finish_reason: Option<&'a str>,
    /// Whether the answer carried a non-empty `refusal` field (chat).
    pub(crate) refusal: bool,
    /// The log-probability of each generated token.
    pub(crate) logprobs: &'a [f64],
}

/// Why a cascade answered as it did; a closed set, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The small answer's mean token log-probability reached the threshold.
    Confident,
    /// It did not.
    LowConfidence,
    /// The small model refused.
    Refusal,
    /// The small answer came without token log-probabilities (an upstream that ignores
    /// `logprobs`, or no tokens at all), so its confidence cannot be judged.
    NoLogprobs,
    /// The small model failed in a way the large one may not (unreachable, overloaded).
    SmallFailed,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Confident => "confident",
            Reason::LowConfidence => "low_logprob",
            Reason::Refusal => "refusal",
            Reason::NoLogprobs => "no_logprobs",
            Reason::SmallFailed => "small_failed",
        }
    }

    /// Whether the large model answers.
    pub(crate) fn escalates(self) -> bool {
        self != Reason::Confident
    }
}

/// The policy's judgement of one small answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) reason: Reason,
    /// The mean token log-probability over every choice, when there were tokens.
    pub(crate) mean_logprob: Option<f64>,
}

/// A cascade's escalation policy, from its [`CascadeConfig`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    min_mean_logprob: f64,
    escalate_on_refusal: bool,
    /// Lower-cased, apostrophes normalised.
    refusal_phrases: Vec<String>,
}

impl Policy {
    pub(crate) fn new(config: &CascadeConfig) -> Self {
        Self {
            min_mean_logprob: config.min_mean_logprob,
            escalate_on_refusal: config.escalate_on_refusal,
            refusal_phrases: config
                .refusal_phrases
                .iter()
                .map(|p| normalise(p))
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// Judges an answer: a refusal (when those escalate) first, then the mean token
    /// log-probability of all its choices together against the threshold.
    pub(crate) fn judge(&self, choices: &[ChoiceView<'_>]) -> Verdict {
        let mean_logprob = mean(choices.iter().flat_map(|c| c.logprobs.iter().copied()));
        let reason = if self.escalate_on_refusal && choices.iter().any(|c| self.refuses(c)) {
            Reason::Refusal
        } else {
            match mean_logprob {
                None => Reason::NoLogprobs,
                Some(mean) if mean < self.min_mean_logprob => Reason::LowConfidence,
                Some(_) => Reason::Confident,
            }
        };
        Verdict {
            reason,
            mean_logprob,
        }
    }

    fn refuses(&self, choice: &ChoiceView<'_>) -> bool {
        if choice.refusal || choice.finish_reason == Some("content_filter") {
            return true;
        }
        let opening: String = choice.text.chars().take(REFUSAL_WINDOW_CHARS).collect();
        let opening = normalise(&opening);
        self.refusal_phrases
            .iter()
            .any(|phrase| opening.contains(phrase.as_str()))
    }
}

/// The mean of the values that are numbers; `None` when there are none.
fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values
        .filter(|v| !v.is_nan())
        .fold((0.0, 0_u32), |(sum, count), v| (sum + v, count + 1));
    (count > 0).then(|| sum / f64::from(count))
}

fn normalise(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .replace(['\u{2019}', '\u{2018}'], "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(&CascadeConfig {
            min_mean_logprob: -1.5,
            ..CascadeConfig::new("small", "large")
        })
    }

    fn choice<'a>(text: &'a str, logprobs: &'a [f64]) -> ChoiceView<'a> {
        ChoiceView {
            text,
            finish_reason: Some("stop"),
            refusal: false,
            logprobs,
        }
    }

    #[test]
    fn a_confident_answer_is_kept() {
        let verdict = policy().judge(&[choice("Paris.", &[-0.1, -0.3, -0.2])]);
        assert_eq!(verdict.reason, Reason::Confident);
        assert!(!verdict.reason.escalates());
        let mean = verdict.mean_logprob.unwrap();
        assert!((mean + 0.2).abs() < 1e-9, "{mean}");
    }

    #[test]
    fn a_mean_under_the_threshold_escalates() {
        let verdict = policy().judge(&[choice("Maybe Lyon?", &[-0.5, -3.0, -2.0])]);
        assert_eq!(verdict.reason, Reason::LowConfidence);
        assert!(verdict.reason.escalates());
    }

    #[test]
    fn the_threshold_itself_is_confident() {
        let verdict = policy().judge(&[choice("x", &[-1.5, -1.5])]);
        assert_eq!(verdict.reason, Reason::Confident);
    }

    #[test]
    fn every_choice_counts_toward_the_mean() {
        let verdict = policy().judge(&[choice("a", &[-0.1]), choice("b", &[-3.0, -3.0])]);
        assert_eq!(verdict.reason, Reason::LowConfidence);
    }

    #[test]
    fn an_answer_without_logprobs_cannot_be_judged_and_escalates() {
        let verdict = policy().judge(&[choice("Paris.", &[])]);
        assert_eq!(verdict.reason, Reason::NoLogprobs);
        assert_eq!(verdict.mean_logprob, None);
        assert!(verdict.reason.escalates());
        assert_eq!(policy().judge(&[]).reason, Reason::NoLogprobs);
    }

    #[test]
    fn refusals_escalate_however_they_are_signalled() {
        let confident = [-0.01];
        let filtered = ChoiceView {
            finish_reason: Some("content_filter"),
            ..choice("", &confident)
        };
        let field = ChoiceView {
            refusal: true,
            ..choice("", &confident)
        };
        let phrase = choice(
            "I\u{2019}m sorry, but I can\u{2019}t help with that.",
            &confident,
        );
        for refusal in [filtered, field, phrase] {
            let verdict = policy().judge(&[refusal]);
            assert_eq!(verdict.reason, Reason::Refusal, "{refusal:?}");
            assert!(verdict.mean_logprob.is_some());
        }
    }

    #[test]
    fn refusal_phrases_late_in_an_answer_do_not_count() {
        let long = format!(
            "{} I cannot help with that.",
            "Here is the answer. ".repeat(20)
        );
        assert_eq!(
            policy().judge(&[choice(&long, &[-0.1])]).reason,
            Reason::Confident
        );
    }

    #[test]
    fn refusals_can_be_let_through() {
        let policy = Policy::new(&CascadeConfig {
            escalate_on_refusal: false,
            ..CascadeConfig::new("small", "large")
        });
        let refusal = choice("I cannot help with that.", &[-0.1]);
        assert_eq!(policy.judge(&[refusal]).reason, Reason::Confident);
    }

    #[test]
    fn operators_choose_their_phrases() {
        let policy = Policy::new(&CascadeConfig {
            refusal_phrases: vec!["Je ne peux pas".into()],
            ..CascadeConfig::new("small", "large")
        });
        let french = choice("Désolé, je ne peux pas répondre.", &[-0.1]);
        assert_eq!(policy.judge(&[french]).reason, Reason::Refusal);
        let english = choice("I cannot help with that.", &[-0.1]);
        assert_eq!(policy.judge(&[english]).reason, Reason::Confident);
    }
}
