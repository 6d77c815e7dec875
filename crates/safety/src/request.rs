//! Request limits and validation: generated requests in, the crate's own types out.

use passerelle_proto::safety::{CheckRequest, RedactRequest, Stage as ProtoStage};

use crate::{
    error::SafetyError,
    verdict::{CheckInput, Message, Stage},
};

/// Bounds on one request, so that a check stays fast whatever is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most messages in a `Check`, most texts in a `Redact`.
    pub max_messages: usize,
    /// Most bytes of content in one request, all messages or texts together.
    pub max_bytes: usize,
}

impl Default for RequestLimits {
    /// 1,024 messages and 1 MiB: far beyond a long conversation, and about a millisecond of
    /// rule matching.
    fn default() -> Self {
        Self {
            max_messages: 1024,
            max_bytes: 1024 * 1024,
        }
    }
}

impl RequestLimits {
    fn check_sizes<'a>(
        &self,
        param: &str,
        what: &str,
        contents: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<(), SafetyError> {
        let count = contents.len();
        if count == 0 {
            return Err(SafetyError::invalid(
                param,
                format!("`{param}` must not be empty: send the {what} to check"),
            ));
        }
        if count > self.max_messages {
            return Err(SafetyError::invalid(
                param,
                format!(
                    "`{param}` has {count} entries, more than the limit of {}",
                    self.max_messages
                ),
            ));
        }
        let bytes: usize = contents.map(str::len).sum();
        if bytes > self.max_bytes {
            return Err(SafetyError::invalid(
                param,
                format!(
                    "`{param}` hold {bytes} bytes of text, more than the limit of {}",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Validates a `Check` request.
pub fn check_input(
    request: CheckRequest,
    limits: &RequestLimits,
) -> Result<CheckInput, SafetyError> {
    let stage = match ProtoStage::try_from(request.stage) {
        Ok(ProtoStage::Input) => Stage::Input,
        Ok(ProtoStage::Output) => Stage::Output,
        Ok(ProtoStage::Unspecified) | Err(_) => {
            return Err(SafetyError::invalid(
                "stage",
                "`stage` must be STAGE_INPUT (a prompt) or STAGE_OUTPUT (an answer)",
            ));
        }
    };
    limits.check_sizes(
        "messages",
        "conversation",
        request.messages.iter().map(|m| m.content.as_str()),
    )?;
    Ok(CheckInput {
        messages: request
            .messages
            .into_iter()
            .map(|message| Message {
                role: message.role,
                content: message.content,
            })
            .collect(),
        stage,
        categories: request.categories,
    })
}

/// Validates a `Redact` request into its texts.
pub fn redact_texts(
    request: RedactRequest,
    limits: &RequestLimits,
) -> Result<Vec<String>, SafetyError> {
    limits.check_sizes("texts", "texts", request.texts.iter().map(String::as_str))?;
    Ok(request.texts)
}

#[cfg(test)]
mod tests {
    use passerelle_proto::common::ChatMessage;

    use super::*;

    fn request(stage: ProtoStage, contents: &[&str]) -> CheckRequest {
        CheckRequest {
            messages: contents
                .iter()
                .map(|content| ChatMessage {
                    role: "user".into(),
                    content: (*content).into(),
                    ..Default::default()
                })
                .collect(),
            stage: stage as i32,
            ..Default::default()
        }
    }

    fn error(result: Result<impl std::fmt::Debug, SafetyError>) -> (String, String) {
        match result.unwrap_err() {
            SafetyError::InvalidArgument { param, message } => (param, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_valid_request_keeps_its_messages_and_stage() {
        let input = check_input(
            request(ProtoStage::Output, &["a", "b"]),
            &RequestLimits::default(),
        )
        .unwrap();
        assert_eq!(input.stage, Stage::Output);
        assert_eq!(input.messages[1].content, "b");
    }

    #[test]
    fn bad_requests_name_the_field_at_fault() {
        let limits = RequestLimits {
            max_messages: 2,
            max_bytes: 8,
        };
        let (param, message) = error(check_input(request(ProtoStage::Input, &[]), &limits));
        assert_eq!(param, "messages");
        assert!(message.contains("must not be empty"), "{message}");
        let (param, message) = error(check_input(
            request(ProtoStage::Unspecified, &["a"]),
            &limits,
        ));
        assert_eq!(param, "stage");
        assert!(message.contains("STAGE_INPUT"), "{message}");
        let mut unknown = request(ProtoStage::Input, &["a"]);
        unknown.stage = 7;
        assert_eq!(error(check_input(unknown, &limits)).0, "stage");
        let (_, message) = error(check_input(
            request(ProtoStage::Input, &["a", "b", "c"]),
            &limits,
        ));
        assert!(
            message.contains("3 entries") && message.contains("limit of 2"),
            "{message}"
        );
        let (_, message) = error(check_input(
            request(ProtoStage::Input, &["12345", "6789"]),
            &limits,
        ));
        assert!(
            message.contains("9 bytes") && message.contains("limit of 8"),
            "{message}"
        );

        let (param, _) = error(redact_texts(RedactRequest::default(), &limits));
        assert_eq!(param, "texts");
    }
}
