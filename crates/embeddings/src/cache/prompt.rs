//! The exact-match key of a prompt: a SHA-256 of its normalised text.
//!
//! Normalising is deliberately conservative: surrounding whitespace is trimmed and inner runs
//! of whitespace become one space, nothing more. Case, punctuation and Unicode forms are kept,
//! because "Delete user Bob" and "delete user bob" may well deserve different answers and an
//! exact hit skips the similarity threshold altogether. A digest rather than the text keeps raw
//! prompts out of the cache's memory and makes a false exact hit practically impossible.

use sha2::{Digest as _, Sha256};

/// The exact-match key of one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PromptKey([u8; 32]);

impl PromptKey {
    /// The key of `prompt` after [`normalise`].
    pub fn of(prompt: &str) -> Self {
        Self(Sha256::digest(normalise(prompt).as_bytes()).into())
    }

    /// A key computed elsewhere (another replica's, read back from the shared log).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest itself.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Trims `prompt` and collapses each run of whitespace into one space.
pub fn normalise(prompt: &str) -> String {
    let mut normalised = String::with_capacity(prompt.len());
    for word in prompt.split_whitespace() {
        if !normalised.is_empty() {
            normalised.push(' ');
        }
        normalised.push_str(word);
    }
    normalised
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_trimmed_and_collapsed() {
        assert_eq!(
            normalise("  How do\tI \n\n reset  it? "),
            "How do I reset it?"
        );
        assert_eq!(normalise(" \t\n"), "");
        assert_eq!(
            PromptKey::of("reset my password"),
            PromptKey::of(" reset\u{00a0}my   password\n")
        );
    }

    #[test]
    fn case_and_punctuation_still_tell_prompts_apart() {
        assert_ne!(PromptKey::of("Delete Bob"), PromptKey::of("delete bob"));
        assert_ne!(PromptKey::of("reset it"), PromptKey::of("reset it?"));
        assert_ne!(PromptKey::of("ab"), PromptKey::of("a b"));
    }
}
