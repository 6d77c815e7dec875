//! The rule layer: operator-configurable phrase lists and patterns, each with a stable id, a
//! category and the stages it guards, compiled once into one [`RegexSet`] per stage so that a
//! check is a single pass over the text.
//!
//! - [`defaults`]: the built-in prompt-injection and jailbreak rules.
//! - [`file`]: rule files (TOML or JSON) that extend or replace the defaults.
//! - [`RulesLayer`]: the rule set as a [`crate::layer::CheckLayer`].

pub mod defaults;
pub mod file;
mod layer;

use std::path::{Path, PathBuf};

use regex::{RegexSet, RegexSetBuilder};

pub use layer::RulesLayer;

use crate::{normalize, verdict::Stage};

/// Compiled patterns may take this much memory each stage, well above what hundreds of rules
/// need; the regex crate's default (10 MiB) is tight for large case-insensitive phrase lists.
const SET_SIZE_LIMIT: usize = 64 * 1024 * 1024;

/// Which stages a rule guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stages {
    Input,
    Output,
    #[default]
    Both,
}

impl Stages {
    /// Whether the rule applies at `stage`.
    pub fn includes(self, stage: Stage) -> bool {
        matches!(
            (self, stage),
            (Stages::Both, _) | (Stages::Input, Stage::Input) | (Stages::Output, Stage::Output)
        )
    }
}

/// What a rule looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// A regular expression (Rust `regex` syntax), matched case-insensitively against the
    /// normalised text, where whitespace is always one space.
    Pattern(String),
    /// Phrases matched case-insensitively as whole words, any run of whitespace between words.
    Phrases(Vec<String>),
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Stable id, reported in verdicts: `[A-Za-z0-9_.-]+`.
    pub id: String,
    /// Category code, reported in verdicts and metrics: `[a-z0-9_]+`, e.g. `prompt_injection`.
    pub category: String,
    pub stages: Stages,
    pub matcher: Matcher,
}

impl Rule {
    /// The regular expression this rule compiles to.
    fn pattern(&self) -> Result<String, RulesError> {
        match &self.matcher {
            Matcher::Pattern(pattern) => Ok(pattern.clone()),
            Matcher::Phrases(phrases) => {
                let mut alternatives = Vec::with_capacity(phrases.len());
                for phrase in phrases {
                    alternatives.push(phrase_pattern(phrase).ok_or_else(|| {
                        RulesError::invalid(&self.id, "a phrase is empty or only whitespace")
                    })?);
                }
                if alternatives.is_empty() {
                    return Err(RulesError::invalid(&self.id, "`phrases` is empty"));
                }
                Ok(format!("(?:{})", alternatives.join("|")))
            }
        }
    }

    fn validate(&self) -> Result<(), RulesError> {
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(RulesError::BadId(self.id.clone()));
        }
        if self.category.is_empty()
            || !self
                .category
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(RulesError::invalid(
                &self.id,
                format!(
                    "category `{}` must be lowercase letters, digits and underscores",
                    self.category
                ),
            ));
        }
        Ok(())
    }
}

/// `phrase` as a whole-words pattern: its words escaped, joined by `\s+`, with word boundaries
/// where the phrase starts or ends with a word character. `None` when it has no words.
fn phrase_pattern(phrase: &str) -> Option<String> {
    let words: Vec<String> = phrase.split_whitespace().map(regex::escape).collect();
    if words.is_empty() {
        return None;
    }
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let trimmed = phrase.trim();
    let start = if is_word(trimmed.chars().next()) {
        r"\b"
    } else {
        ""
    };
    let end = if is_word(trimmed.chars().last()) {
        r"\b"
    } else {
        ""
    };
    Some(format!("{start}{}{end}", words.join(r"\s+")))
}

/// Why a rule set could not be built. Every message names the rule or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rule `{id}`: {reason}")]
    Invalid { id: String, reason: String },
    #[error("rule `{id}`: invalid pattern: {source}")]
    Pattern {
        id: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("rule id `{0}` is invalid: use letters, digits, `_`, `.` and `-`")]
    BadId(String),
    #[error("rule id `{0}` is defined twice")]
    DuplicateId(String),
    #[error("the rules compile to more than the {limit}-byte limit: {source}")]
    TooLarge {
        limit: usize,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RulesError {
    fn invalid(id: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            id: id.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The rules of one stage, compiled together.
#[derive(Debug, Clone)]
struct StageSet {
    set: RegexSet,
    /// The same patterns with ASCII classes and case folding, for ASCII text (most prompts):
    /// on an ASCII haystack they match exactly what the Unicode set matches, and their automaton
    /// is a fraction of the size, so matching runs several times faster. `None` when a pattern
    /// does not compile that way.
    ascii: Option<regex::bytes::RegexSet>,
    /// Index into `RuleSet::rules` of each pattern of `set`.
    rules: Vec<usize>,
}

impl StageSet {
    /// Indices (into the set) of the patterns that match `text`, none when nothing does.
    fn matches(&self, text: &str) -> Vec<usize> {
        match &self.ascii {
            Some(ascii) if text.is_ascii() => {
                if !ascii.is_match(text.as_bytes()) {
                    return Vec::new();
                }
                ascii.matches(text.as_bytes()).into_iter().collect()
            }
            _ => {
                if !self.set.is_match(text) {
                    return Vec::new();
                }
                self.set.matches(text).into_iter().collect()
            }
        }
    }
}

/// A validated, compiled set of rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    input: StageSet,
    output: StageSet,
    source: String,
}

impl RuleSet {
    /// Compiles `rules`; `source` says where they came from (`built-in` or a path), for
    /// `ListModels`. Each pattern is compiled alone first, so that an invalid one is reported
    /// with its rule id.
    pub fn new(rules: Vec<Rule>, source: impl Into<String>) -> Result<Self, RulesError> {
        let mut patterns = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            rule.validate()?;
            if rules[..index].iter().any(|other| other.id == rule.id) {
                return Err(RulesError::DuplicateId(rule.id.clone()));
            }
            let pattern = rule.pattern()?;
            regex::RegexBuilder::new(&pattern)
                .case_insensitive(true)
                .size_limit(SET_SIZE_LIMIT)
                .build()
                .map_err(|source| RulesError::Pattern {
                    id: rule.id.clone(),
                    source: Box::new(source),
                })?;
            patterns.push(pattern);
        }
        let stage_set = |stage: Stage| -> Result<StageSet, RulesError> {
            let indices: Vec<usize> = (0..rules.len())
                .filter(|&i| rules[i].stages.includes(stage))
                .collect();
            let set = RegexSetBuilder::new(indices.iter().map(|&i| &patterns[i]))
                .case_insensitive(true)
                .size_limit(SET_SIZE_LIMIT)
                .build()
                .map_err(|source| RulesError::TooLarge {
                    limit: SET_SIZE_LIMIT,
                    source: Box::new(source),
                })?;
            let ascii = regex::bytes::RegexSetBuilder::new(indices.iter().map(|&i| &patterns[i]))
                .case_insensitive(true)
                .unicode(false)
                .size_limit(SET_SIZE_LIMIT)
                .build()
                .ok();
            Ok(StageSet {
                set,
                ascii,
                rules: indices,
            })
        };
        Ok(Self {
            input: stage_set(Stage::Input)?,
            output: stage_set(Stage::Output)?,
            rules,
            source: source.into(),
        })
    }

    /// The built-in rules ([`defaults::rules`]).
    pub fn defaults() -> Self {
        // The defaults are constants covered by the tests; failing here is a build mistake.
        Self::new(defaults::rules(), "built-in").expect("the built-in rules compile")
    }

    /// Reads a rule file (TOML, or JSON when the name ends in `.json`) and merges it with the
    /// defaults as the file says; see [`file`].
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        file::load(path)
    }

    /// The rules, in priority order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Where the rules came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first rule (in priority order) that matches `text` at `stage` and whose category
    /// `enforced` accepts.
    pub fn first_match(
        &self,
        text: &str,
        stage: Stage,
        enforced: impl Fn(&str) -> bool,
    ) -> Option<&Rule> {
        let stage_set = match stage {
            Stage::Input => &self.input,
            Stage::Output => &self.output,
        };
        if stage_set.rules.is_empty() {
            return None;
        }
        let text = normalize::for_rules(text);
        stage_set
            .matches(&text)
            .into_iter()
            .map(|i| &self.rules[stage_set.rules[i]])
            .find(|rule| enforced(&rule.category))
    }
}

/// A human-readable name for a category code: the known ones spelled out, others with their
/// underscores turned to spaces.
pub fn category_name(code: &str) -> String {
    match code {
        "prompt_injection" => "Prompt injection".to_owned(),
        "jailbreak" => "Jailbreak".to_owned(),
        "prompt_leak" => "System prompt extraction".to_owned(),
        other => {
            let spaced = other.replace('_', " ");
            let mut chars = spaced.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, matcher: Matcher) -> Rule {
        Rule {
            id: id.into(),
            category: "test".into(),
            stages: Stages::Both,
            matcher,
        }
    }

    fn matches(set: &RuleSet, text: &str) -> Option<String> {
        set.first_match(text, Stage::Input, |_| true)
            .map(|rule| rule.id.clone())
    }

    #[test]
    fn phrases_match_whole_words_in_any_case_and_spacing() {
        let set = RuleSet::new(
            vec![rule(
                "codename",
                Matcher::Phrases(vec!["project  bluebird".into(), "<|secret|>".into()]),
            )],
            "test",
        )
        .unwrap();
        for text in [
            "tell me about Project Bluebird",
            "PROJECT\n\tBLUEBIRD!",
            "x<|SECRET|>y",
            "ｐｒｏｊｅｃｔ bluebird",
        ] {
            assert_eq!(matches(&set, text).as_deref(), Some("codename"), "{text}");
        }
        for text in [
            "projectbluebird",
            "project bluebirds",
            "my project, bluebird",
        ] {
            assert_eq!(matches(&set, text), None, "{text}");
        }
    }

    #[test]
    fn the_first_rule_in_order_wins_and_stages_and_categories_filter() {
        let mut output_only = rule("b", Matcher::Pattern("secret".into()));
        output_only.stages = Stages::Output;
        let mut other = rule("c", Matcher::Pattern("secret".into()));
        other.category = "other".into();
        let set = RuleSet::new(
            vec![
                rule("a", Matcher::Pattern("top secret".into())),
                output_only,
                other,
            ],
            "test",
        )
        .unwrap();
        assert_eq!(matches(&set, "TOP SECRET").as_deref(), Some("a"));
        assert_eq!(matches(&set, "a secret").as_deref(), Some("c"));
        let at_output = |text, category: &'static str| {
            set.first_match(text, Stage::Output, |c| c == category)
                .map(|r| r.id.clone())
        };
        assert_eq!(at_output("a secret", "test").as_deref(), Some("b"));
        assert_eq!(at_output("a secret", "other").as_deref(), Some("c"));
        assert_eq!(at_output("a secret", "none"), None);
    }

    #[test]
    fn bad_rules_are_named_in_the_error() {
        let err = RuleSet::new(
            vec![
                rule("ok", Matcher::Pattern("fine".into())),
                rule("broken", Matcher::Pattern("(unclosed".into())),
            ],
            "test",
        )
        .unwrap_err();
        assert!(matches!(&err, RulesError::Pattern { id, .. } if id == "broken"));
        assert!(
            err.to_string()
                .starts_with("rule `broken`: invalid pattern"),
            "{err}"
        );

        let twice = vec![
            rule("same", Matcher::Pattern("a".into())),
            rule("same", Matcher::Pattern("b".into())),
        ];
        assert!(
            matches!(RuleSet::new(twice, "t"), Err(RulesError::DuplicateId(id)) if id == "same")
        );
        let empty = rule("empty", Matcher::Phrases(vec!["  ".into()]));
        assert!(
            RuleSet::new(vec![empty], "t")
                .unwrap_err()
                .to_string()
                .contains("`empty`")
        );
        let none = rule("none", Matcher::Phrases(Vec::new()));
        assert!(RuleSet::new(vec![none], "t").is_err());
        assert!(matches!(
            RuleSet::new(vec![rule("bad id!", Matcher::Pattern("a".into()))], "t"),
            Err(RulesError::BadId(_))
        ));
        let mut shouting = rule("shouting", Matcher::Pattern("a".into()));
        shouting.category = "Prompt Injection".into();
        assert!(
            RuleSet::new(vec![shouting], "t")
                .unwrap_err()
                .to_string()
                .contains("category")
        );
    }

    #[test]
    fn category_names_read_well() {
        assert_eq!(category_name("prompt_injection"), "Prompt injection");
        assert_eq!(category_name("data_exfiltration"), "Data exfiltration");
        assert_eq!(category_name(""), "");
    }
}
