//! The PII layer: finds personal data in the checked messages with [`passerelle_pii`] and
//! asks for it to be replaced by placeholders. It never blocks; the `categories` of a request
//! do not apply to it.

use async_trait::async_trait;

use crate::{
    error::SafetyError,
    layer::{CheckLayer, LayerInfo},
    verdict::{CheckInput, LayerKind, LayerOutcome, PiiFound, Redaction},
};

/// Redacts emails, phone numbers, card numbers, IBANs and IP addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct PiiLayer;

impl PiiLayer {
    /// The synchronous check.
    pub fn check_now(&self, input: &CheckInput) -> LayerOutcome {
        let mut redaction = Redaction::default();
        for index in input.checked() {
            let redacted = passerelle_pii::redact(&input.messages[index].content);
            if redacted.spans.is_empty() {
                continue;
            }
            redaction
                .found
                .extend(redacted.spans.iter().map(|span| PiiFound {
                    kind: span.kind,
                    message_index: index,
                    start: span.start,
                    end: span.end,
                }));
            redaction.messages.push((index, redacted.text));
        }
        if redaction.found.is_empty() {
            LayerOutcome::Pass
        } else {
            LayerOutcome::Redact(redaction)
        }
    }
}

#[async_trait]
impl CheckLayer for PiiLayer {
    fn kind(&self) -> LayerKind {
        LayerKind::Pii
    }

    fn info(&self) -> LayerInfo {
        LayerInfo {
            id: LayerKind::Pii.label().to_owned(),
            format: "regex".to_owned(),
            source: "built-in".to_owned(),
        }
    }

    async fn check(&self, input: &CheckInput) -> Result<LayerOutcome, SafetyError> {
        Ok(self.check_now(input))
    }
}

#[cfg(test)]
mod tests {
    use passerelle_pii::PiiKind;

    use super::*;
    use crate::verdict::{Message, Stage};

    fn message(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn redacts_every_checked_message_and_leaves_the_rest() {
        let input = CheckInput {
            messages: vec![
                message("system", "Support for ops@example.com"),
                message("user", "my card is 4111 1111 1111 1111"),
                message("assistant", "noted"),
                message("user", "and my server is 203.0.113.9"),
            ],
            stage: Stage::Input,
            categories: Vec::new(),
        };
        let LayerOutcome::Redact(redaction) = PiiLayer.check_now(&input) else {
            panic!("nothing redacted")
        };
        assert_eq!(
            redaction.messages,
            [
                (1, "my card is [CARD]".to_owned()),
                (3, "and my server is [IP]".to_owned())
            ]
        );
        let kinds: Vec<_> = redaction
            .found
            .iter()
            .map(|f| (f.message_index, f.kind))
            .collect();
        assert_eq!(kinds, [(1, PiiKind::CardNumber), (3, PiiKind::IpAddress)]);
        assert_eq!(
            &input.messages[3].content[redaction.found[1].start..],
            "203.0.113.9"
        );

        let clean = CheckInput {
            messages: vec![message("user", "hello")],
            ..input
        };
        assert_eq!(PiiLayer.check_now(&clean), LayerOutcome::Pass);
    }
}
