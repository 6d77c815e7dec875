//! What a check looks at and what it concludes, in the crate's own types; the service turns
//! them into the generated ones at its edge.

use passerelle_pii::PiiKind;

/// Which side of the model a check guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The prompt, before generation.
    Input,
    /// The answer, after generation.
    Output,
}

impl Stage {
    /// The metric label and the name used in rule files.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Input => "input",
            Stage::Output => "output",
        }
    }
}

/// The layers a check runs through, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// Operator-configured rules: phrase lists and patterns.
    Rules,
    /// The prompt-injection classifier (not served yet).
    Injection,
    /// Personal-data detection and redaction.
    Pii,
    /// Llama Guard 3 (not served yet).
    LlamaGuard,
}

impl LayerKind {
    /// The layer's id in `ListModels`, logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            LayerKind::Rules => "rules",
            LayerKind::Injection => "injection",
            LayerKind::Pii => "pii",
            LayerKind::LlamaGuard => "llama_guard",
        }
    }
}

/// One message of the conversation under check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// "system", "developer", "user", "assistant" or "tool".
    pub role: String,
    pub content: String,
}

/// A validated check request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInput {
    /// The conversation, oldest first; never empty.
    pub messages: Vec<Message>,
    pub stage: Stage,
    /// Categories to enforce; all when empty.
    pub categories: Vec<String>,
}

impl CheckInput {
    /// Indices of the messages a check judges. At the input stage, every message the caller's
    /// side wrote (user and tool messages, and roles this service does not know); the system
    /// and developer prompts are the operator's and assistant turns were checked as outputs.
    /// At the output stage, the last message: the answer.
    pub fn checked(&self) -> impl Iterator<Item = usize> + '_ {
        let last = self.messages.len().saturating_sub(1);
        self.messages
            .iter()
            .enumerate()
            .filter(move |(index, message)| match self.stage {
                Stage::Output => *index == last,
                Stage::Input => {
                    !matches!(message.role.as_str(), "system" | "developer" | "assistant")
                }
            })
            .map(|(index, _)| index)
    }

    /// Whether `category` is enforced by this request.
    pub fn enforces(&self, category: &str) -> bool {
        self.categories.is_empty() || self.categories.iter().any(|c| c == category)
    }
}

/// Why a layer blocked the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Stable category code, e.g. `prompt_injection`, or a Llama Guard code such as `S1`.
    pub category: String,
    /// Human-readable category name.
    pub category_name: String,
    /// The rule that matched, for the rules layer.
    pub rule_id: Option<String>,
    /// Confidence in 0..1 (1 for a rule match).
    pub score: f32,
    /// The message the violation is in.
    pub message_index: usize,
}

/// One piece of personal data found in a checked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PiiFound {
    pub kind: PiiKind,
    pub message_index: usize,
    /// Byte offsets into that message's original content.
    pub start: usize,
    pub end: usize,
}

/// Messages with personal data replaced, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Redaction {
    /// `(message index, redacted content)` for every message that changed, in order.
    pub messages: Vec<(usize, String)>,
    pub found: Vec<PiiFound>,
}

/// What one layer concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerOutcome {
    /// Nothing found.
    Pass,
    /// The text must not pass; later layers are not consulted.
    Block(Violation),
    /// The text may pass once redacted, unless a later layer blocks it.
    Redact(Redaction),
}

/// The conclusion of a whole check.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Safe,
    Unsafe {
        layer: LayerKind,
        violation: Violation,
    },
    Redacted {
        layer: LayerKind,
        redaction: Redaction,
    },
}

impl Verdict {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Safe => "safe",
            Verdict::Unsafe { .. } => "unsafe",
            Verdict::Redacted { .. } => "redacted",
        }
    }

    /// The layer that decided, `None` when every layer passed.
    pub fn layer(&self) -> Option<LayerKind> {
        match self {
            Verdict::Safe => None,
            Verdict::Unsafe { layer, .. } | Verdict::Redacted { layer, .. } => Some(*layer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(stage: Stage, roles: &[&str]) -> CheckInput {
        CheckInput {
            messages: roles
                .iter()
                .map(|role| Message {
                    role: (*role).to_owned(),
                    content: String::new(),
                })
                .collect(),
            stage,
            categories: Vec::new(),
        }
    }

    #[test]
    fn input_checks_the_callers_messages_and_output_the_answer() {
        let roles = ["system", "user", "assistant", "tool", "user"];
        let checked: Vec<usize> = input(Stage::Input, &roles).checked().collect();
        assert_eq!(checked, [1, 3, 4]);
        let checked: Vec<usize> = input(Stage::Output, &[&roles[..], &["assistant"]].concat())
            .checked()
            .collect();
        assert_eq!(checked, [5]);
    }

    #[test]
    fn empty_category_list_enforces_everything() {
        let mut request = input(Stage::Input, &["user"]);
        assert!(request.enforces("jailbreak"));
        request.categories = vec!["prompt_injection".into()];
        assert!(request.enforces("prompt_injection"));
        assert!(!request.enforces("jailbreak"));
    }
}
