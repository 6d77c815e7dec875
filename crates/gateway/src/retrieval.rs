//! Retrieval-augmented chat: a chat request with `retrieval` is answered from the caller's
//! documents. The last user message is the query; the chunks found go into the prompt as
//! numbered sources in a system message (merged into the conversation's own first system
//! message when it has one), with an instruction to cite them as `[n]`; the response lists the
//! same sources as `citations`.
//!
//! The semantic cache keys on the augmented conversation and, in addition, on which chunks were
//! retrieved (`cache_scope`): a cached answer's `[n]` markers point into the sources it was
//! generated with, so it may only answer a request that retrieved the same sources in the same
//! order. Without that, a near-duplicate prompt could replay an answer whose numbers cite
//! other passages than the `citations` sent with it.

use passerelle_proto::common::ChatMessage;
use passerelle_proto::embeddings::{RetrieveRequest, RetrievedChunk};
use passerelle_proto::llm::{GenerateRequest, prompt};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::auth::Principal;
use crate::documents::{DocumentsBackend, rename_param};
use crate::error::ApiError;
use crate::state::AppState;

/// Chunks put in the prompt when the request does not say.
pub(crate) const DEFAULT_TOP_K: u32 = 4;
/// Most chunks a chat request may put in its prompt.
pub(crate) const MAX_TOP_K: u32 = 20;

/// What the system message tells the model about the sources.
const INSTRUCTION: &str = "Use the numbered sources below to answer. Cite the sources you rely \
on by their numbers in square brackets, like [1] or [2][3]. If the sources do not hold the \
answer, say so rather than guess.";

/// A checked `retrieval` object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RetrievalPlan {
    pub(crate) top_k: u32,
    pub(crate) min_score: Option<f32>,
    pub(crate) document_ids: Vec<String>,
}

/// One source of an answer, as the response lists it; `index` is its number in the prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Citation {
    pub index: u32,
    pub document_id: String,
    pub title: String,
    pub chunk_index: u32,
    pub score: f32,
    pub text: String,
}

/// Retrieves the sources for `request`'s last user message and puts them in its prompt.
/// Returns them as citations; none found leaves the prompt as it was.
pub(crate) async fn augment(
    state: &AppState,
    principal: &Principal,
    request: &mut GenerateRequest,
    plan: RetrievalPlan,
) -> Result<Vec<Citation>, ApiError> {
    let Some(embeddings) = state.embeddings() else {
        return Err(ApiError::invalid_param(
            "retrieval",
            "`retrieval` needs an embeddings service, and none is configured.",
        ));
    };
    let messages = match request
        .prompt
        .as_mut()
        .and_then(|prompt| prompt.kind.as_mut())
    {
        Some(prompt::Kind::Chat(chat)) => &mut chat.messages,
        _ => {
            return Err(ApiError::invalid_param(
                "retrieval",
                "`retrieval` is only for chat requests.",
            ));
        }
    };
    let query = last_user_message(messages).ok_or_else(|| {
        ApiError::invalid_param(
            "messages",
            "`retrieval` searches with the last user message, and there is none with text.",
        )
    })?;
    let retrieve = RetrieveRequest {
        namespace: principal.tenant().to_owned(),
        query: query.to_owned(),
        top_k: plan.top_k,
        min_score: plan.min_score,
        document_ids: plan.document_ids,
        request_id: request.request_id.clone(),
    };
    let found = DocumentsBackend::new(embeddings)
        .retrieve(retrieve)
        .await
        .map_err(|err| {
            rename_param(err, |param| match param {
                "query" => "messages".to_owned(),
                other => format!("retrieval.{other}"),
            })
        })?;
    let citations = citations(found.chunks);
    if !citations.is_empty() {
        insert_sources(messages, &sources_block(&citations));
    }
    Ok(citations)
}

/// What the semantic cache must also match for a cached answer to be reused: the retrieved
/// chunks, in order. `None` when nothing was retrieved (the prompt is then unchanged).
pub(crate) fn cache_scope(citations: &[Citation]) -> Option<String> {
    if citations.is_empty() {
        return None;
    }
    let mut hasher = Sha256::new();
    for citation in citations {
        hasher.update(citation.document_id.as_bytes());
        hasher.update(b"#");
        hasher.update(citation.chunk_index.to_le_bytes());
        hasher.update(b"\n");
    }
    Some(format!("sources-{}", hex::encode(&hasher.finalize()[..12])))
}

fn citations(chunks: Vec<RetrievedChunk>) -> Vec<Citation> {
    chunks
        .into_iter()
        .zip(1..)
        .map(|(chunk, index)| Citation {
            index,
            document_id: chunk.document_id,
            title: chunk.title,
            chunk_index: chunk.chunk_index,
            score: chunk.score,
            text: chunk.text,
        })
        .collect()
}

/// The text of the last user message, when it has any.
fn last_user_message(messages: &[ChatMessage]) -> Option<&str> {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .filter(|content| !content.trim().is_empty())
}

/// The instruction and the numbered sources, each under its title.
fn sources_block(citations: &[Citation]) -> String {
    let mut block = String::from(INSTRUCTION);
    for citation in citations {
        block.push_str(&format!("\n\n[{}]", citation.index));
        if !citation.title.is_empty() {
            block.push(' ');
            block.push_str(&citation.title);
        }
        block.push('\n');
        block.push_str(&citation.text);
    }
    block
}

/// Puts the sources in the conversation's first system message, or in a new one before it:
/// chat templates expect a single system message, first.
fn insert_sources(messages: &mut Vec<ChatMessage>, sources: &str) {
    match messages.first_mut() {
        Some(first) if first.role == "system" => {
            if !first.content.is_empty() {
                first.content.push_str("\n\n");
            }
            first.content.push_str(sources);
        }
        _ => messages.insert(
            0,
            ChatMessage {
                role: "system".to_owned(),
                content: sources.to_owned(),
                ..Default::default()
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_owned(),
            content: content.to_owned(),
            ..Default::default()
        }
    }

    fn chunk(id: &str, title: &str, index: u32, text: &str) -> RetrievedChunk {
        RetrievedChunk {
            document_id: id.to_owned(),
            title: title.to_owned(),
            chunk_index: index,
            text: text.to_owned(),
            score: 0.5,
        }
    }

    #[test]
    fn sources_are_numbered_from_one_under_their_titles() {
        let cited = citations(vec![
            chunk("doc_a", "Cats", 0, "Cats purr."),
            chunk("doc_b", "", 3, "Rome fell."),
        ]);
        assert_eq!(cited[0].index, 1);
        assert_eq!(cited[1].index, 2);
        let block = sources_block(&cited);
        assert!(block.starts_with(INSTRUCTION));
        assert!(
            block.ends_with("\n\n[1] Cats\nCats purr.\n\n[2]\nRome fell."),
            "{block}"
        );
    }

    #[test]
    fn sources_join_the_first_system_message_or_lead_a_new_one() {
        let mut plain = vec![message("user", "q")];
        insert_sources(&mut plain, "SOURCES");
        assert_eq!(plain.len(), 2);
        assert_eq!(
            (plain[0].role.as_str(), plain[0].content.as_str()),
            ("system", "SOURCES")
        );

        let mut with_system = vec![message("system", "Be brief."), message("user", "q")];
        insert_sources(&mut with_system, "SOURCES");
        assert_eq!(with_system.len(), 2);
        assert_eq!(with_system[0].content, "Be brief.\n\nSOURCES");
    }

    #[test]
    fn the_query_is_the_last_user_message_with_text() {
        let messages = vec![
            message("user", "first"),
            message("assistant", "answer"),
            message("user", "second"),
            message("assistant", "again"),
        ];
        assert_eq!(last_user_message(&messages), Some("second"));
        assert_eq!(last_user_message(&[message("user", "  ")]), None);
        assert_eq!(last_user_message(&[message("system", "s")]), None);
    }

    #[test]
    fn the_cache_scope_follows_the_sources_and_their_order() {
        let a = citations(vec![chunk("d1", "", 0, "x"), chunk("d2", "", 1, "y")]);
        let b = citations(vec![chunk("d2", "", 1, "y"), chunk("d1", "", 0, "x")]);
        assert_eq!(cache_scope(&a), cache_scope(&a.clone()));
        assert_ne!(cache_scope(&a), cache_scope(&b));
        assert_eq!(cache_scope(&[]), None);
    }
}
