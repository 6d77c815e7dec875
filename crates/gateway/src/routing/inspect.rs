//! The work done on a relayed answer only when a feature asks for it: recording it for the
//! semantic cache, and screening its text with the output checks as our own answers are (see
//! `output_screen`). Without either, the relay passes the upstream's bytes as they come and
//! none of this runs.
//!
//! A stream is inspected chunk by chunk as it passes, never held back: each choice's text goes
//! to the screen as it arrives, a choice that a window check finds unsafe is ended at once with
//! a `content_filter` finish chunk of the gateway's and the upstream's further text for it is
//! dropped, and a choice's own finish waits for the verdict on all of its text. Once every
//! choice was ended, the rest of the upstream's stream is not read.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::dispatch::Api;
use crate::generation::Progress;
use crate::llm::{Delta, FinishReason, Finished, Usage};
use crate::output_screen::{OutputScreen, Screened};
use crate::semantic_cache::{CacheKey, SemanticCache, StoredAnswer};

/// Most choices a relayed answer is screened or recorded for (OpenAI's limit on `n`); a
/// choice beyond those it was asked for is not passed on when answers are screened.
pub(crate) const MAX_CHOICES: u32 = 128;

/// The inspection of one relayed answer.
pub(crate) struct Inspector {
    api: Api,
    recording: Option<Recording>,
    screen: Option<Screen>,
    /// `id`, `object`, `created`, `model` of the stream's chunks, for the chunks the gateway
    /// adds to it.
    head: Map<String, Value>,
}

struct Screen {
    screen: OutputScreen,
    /// Choices asked for; the screen knows these.
    choices: u32,
    /// Choices of a stream seen and not yet finished, to finish at its end if the upstream
    /// never did, so that no text goes unchecked.
    open: BTreeSet<u32>,
    /// Whether a window check ended a choice before its finish.
    cut: bool,
}

/// The answer as it passes, for the cache.
struct Recording {
    cache: SemanticCache,
    key: CacheKey,
    model: String,
    texts: Vec<String>,
    reasons: Vec<Option<FinishReason>>,
}

/// What the screen made of one choice of a chunk.
enum Outcome {
    Keep,
    /// Its text was found unsafe when it finished: it finishes with `content_filter`.
    Filtered,
    /// Not passed on: the choice was already ended, or is one the screen does not know.
    Drop,
}

impl Inspector {
    /// An inspector recording the answer into `cache` under `key` (with `model` as the stored
    /// answer's model) and screening it with `screen` (built for `choices` choices); `None`
    /// when neither is wanted. Boxed: most answers are not inspected, and inline its state would
    /// be part of (and copied with) the future of every relayed request.
    pub(crate) fn new(
        api: Api,
        record: Option<(SemanticCache, CacheKey, String)>,
        screen: Option<(OutputScreen, u32)>,
    ) -> Option<Box<Self>> {
        if record.is_none() && screen.is_none() {
            return None;
        }
        Some(Box::new(Self {
            api,
            recording: record.map(|(cache, key, model)| Recording {
                cache,
                key,
                model,
                texts: Vec::new(),
                reasons: Vec::new(),
            }),
            screen: screen.map(|(screen, choices)| Screen {
                screen,
                choices,
                open: BTreeSet::new(),
                cut: false,
            }),
            head: Map::new(),
        }))
    }

    /// A whole answer: screened choice by choice, recorded once it passed. The bytes to send:
    /// `body` itself unless the screen changed something.
    pub(crate) async fn json(&mut self, body: Bytes, usage: Usage) -> Bytes {
        let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(&body) else {
            return body;
        };
        let Some(Value::Array(choices)) = answer.get_mut("choices") else {
            return body;
        };
        let mut changed = false;
        if let Some(screen) = &mut self.screen {
            // Every text first, so the windows of long ones are checked alongside each other.
            choices.retain(|choice| {
                let known = index_of(choice) < screen.choices;
                changed |= !known;
                known
            });
            for choice in choices.iter() {
                let delta = Delta {
                    index: index_of(choice),
                    text: screened_text(self.api, choice, "message"),
                    ..Delta::default()
                };
                screen.screen.screen(Progress::Delta(delta)).await;
            }
            for choice in choices.iter_mut() {
                // A choice without a finish reason is checked whole all the same.
                let reason = choice.get("finish_reason").and_then(Value::as_str);
                if let Outcome::Filtered = screen.finish(index_of(choice), reason).await {
                    choice["finish_reason"] = json!("content_filter");
                    changed = true;
                    self.recording = None;
                }
            }
        }
        if let Some(mut recording) = self.recording.take()
            && choices
                .iter()
                .all(|choice| recording.add(self.api, choice, "message"))
        {
            recording.store(usage);
        }
        if !changed {
            return body;
        }
        serde_json::to_vec(&answer).map_or(body, Bytes::from)
    }

    /// One `data:` event of a stream (`raw` as received): the events to send in its place.
    pub(crate) async fn event(&mut self, data: &str, raw: Bytes) -> Vec<Bytes> {
        let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(data) else {
            return vec![raw];
        };
        if self.head.is_empty() {
            for field in ["id", "object", "created", "model", "system_fingerprint"] {
                if let Some(value) = chunk.get(field) {
                    self.head.insert(field.to_owned(), value.clone());
                }
            }
        }
        let Some(Value::Array(choices)) = chunk.get_mut("choices") else {
            return vec![raw];
        };
        let had_choices = !choices.is_empty();
        let mut changed = false;
        let mut kept = Vec::with_capacity(choices.len());
        for mut choice in std::mem::take(choices) {
            if let Some(recording) = &mut self.recording
                && !recording.add(self.api, &choice, "delta")
            {
                self.recording = None;
            }
            if let Some(screen) = &mut self.screen {
                match screen.chunk_choice(self.api, &choice).await {
                    Outcome::Keep => {}
                    Outcome::Filtered => {
                        choice["finish_reason"] = json!("content_filter");
                        changed = true;
                        self.recording = None;
                    }
                    Outcome::Drop => {
                        changed = true;
                        continue;
                    }
                }
            }
            kept.push(choice);
        }
        if !changed {
            return vec![raw];
        }
        let has_usage = chunk.get("usage").is_some_and(|u| !u.is_null());
        if had_choices && kept.is_empty() && !has_usage {
            return Vec::new();
        }
        chunk.insert("choices".to_owned(), Value::Array(kept));
        vec![data_event(&Value::Object(chunk))]
    }

    /// The finish chunks of choices a window check found unsafe since the last call, each
    /// ended now with `content_filter`. Never waits.
    pub(crate) fn ended_by_filter(&mut self) -> Vec<Bytes> {
        let Some(screen) = &mut self.screen else {
            return Vec::new();
        };
        let mut ended = Vec::new();
        while let Some(finished) = screen.screen.ended_by_filter() {
            screen.cut = true;
            screen.open.remove(&finished.index);
            ended.push(finished);
        }
        if !ended.is_empty() {
            self.recording = None;
        }
        ended
            .into_iter()
            .map(|finished| self.filtered_event(finished.index))
            .collect()
    }

    /// A chunk of the gateway's ending choice `index` with `content_filter`.
    fn filtered_event(&self, index: u32) -> Bytes {
        let choice = match self.api {
            Api::Chat => json!({"index": index, "delta": {},
                                "logprobs": null, "finish_reason": "content_filter"}),
            Api::Completions => json!({"index": index, "text": "",
                                       "logprobs": null, "finish_reason": "content_filter"}),
        };
        self.chunk_event("choices", json!([choice]))
    }

    /// Whether every choice has ended and one was cut short: the rest of the upstream's
    /// stream is not wanted.
    pub(crate) fn all_ended_early(&self) -> bool {
        self.screen
            .as_ref()
            .is_some_and(|s| s.cut && s.screen.all_ended())
    }

    /// The usage chunk for a stream the gateway ended before the upstream's own came.
    pub(crate) fn usage_event(&self, usage: Usage) -> Bytes {
        let mut event = self.head_with("choices", json!([]));
        event.insert(
            "usage".to_owned(),
            json!({"prompt_tokens": usage.prompt_tokens,
                   "completion_tokens": usage.completion_tokens,
                   "total_tokens": usage.total_tokens}),
        );
        data_event(&Value::Object(event))
    }

    /// The stream ended whole (`[DONE]`): a choice the upstream never finished is checked
    /// whole now (the events returned end it when unsafe, to send before `[DONE]`), and the
    /// recorded answer goes to the cache.
    pub(crate) async fn completed(&mut self, usage: Usage) -> Vec<Bytes> {
        let mut filtered = Vec::new();
        if let Some(screen) = &mut self.screen {
            for index in std::mem::take(&mut screen.open) {
                if let Outcome::Filtered = screen.finish(index, None).await {
                    filtered.push(index);
                }
            }
        }
        if !filtered.is_empty() {
            self.recording = None;
        }
        if let Some(recording) = self.recording.take() {
            recording.store(usage);
        }
        filtered
            .into_iter()
            .map(|index| self.filtered_event(index))
            .collect()
    }

    fn chunk_event(&self, field: &str, value: Value) -> Bytes {
        data_event(&Value::Object(self.head_with(field, value)))
    }

    fn head_with(&self, field: &str, value: Value) -> Map<String, Value> {
        let mut event = self.head.clone();
        if !event.contains_key("object") {
            let object = match self.api {
                Api::Chat => "chat.completion.chunk",
                Api::Completions => "text_completion",
            };
            event.insert("object".to_owned(), json!(object));
        }
        event.insert(field.to_owned(), value);
        event
    }
}

impl Screen {
    /// One choice of a chunk: its text to the screen as a delta, then its finish, if it has
    /// one, which waits for the verdicts on all of its text.
    async fn chunk_choice(&mut self, api: Api, choice: &Value) -> Outcome {
        let index = index_of(choice);
        if index >= self.choices {
            return Outcome::Drop;
        }
        let delta = Delta {
            index,
            text: screened_text(api, choice, "delta"),
            ..Delta::default()
        };
        if let Screened::Drop = self.screen.screen(Progress::Delta(delta)).await {
            return Outcome::Drop;
        }
        match choice.get("finish_reason").and_then(Value::as_str) {
            Some(reason) => {
                self.open.remove(&index);
                self.finish(index, Some(reason)).await
            }
            None => {
                self.open.insert(index);
                Outcome::Keep
            }
        }
    }

    /// Choice `index` finishes, for `reason` as the upstream gave it: once the verdicts on all
    /// of its text are in.
    async fn finish(&mut self, index: u32, reason: Option<&str>) -> Outcome {
        let finished = Finished {
            index,
            // Only whether the screen turns it into `content_filter` matters here.
            reason: reason.and_then(finish_reason).unwrap_or(FinishReason::Stop),
            usage: None,
        };
        match self.screen.screen(Progress::Finished(finished)).await {
            Screened::Pass(Progress::Finished(f))
                if f.reason == FinishReason::ContentFilter && reason != Some("content_filter") =>
            {
                Outcome::Filtered
            }
            Screened::Drop => Outcome::Drop,
            Screened::Pass(_) => Outcome::Keep,
        }
    }
}

impl Recording {
    /// One choice of the answer, or of a chunk: its text and finish. False for a choice a
    /// replay could not give (tool calls, a refusal field, too many choices): the answer is
    /// then not to be stored.
    fn add(&mut self, api: Api, choice: &Value, content: &str) -> bool {
        let index = index_of(choice) as usize;
        let part = choice.get(content);
        let replayable = index < MAX_CHOICES as usize
            && ["tool_calls", "function_call", "refusal"]
                .iter()
                .all(|field| part.and_then(|p| p.get(field)).is_none_or(Value::is_null));
        if !replayable {
            return false;
        }
        if self.texts.len() <= index {
            self.texts.resize(index + 1, String::new());
            self.reasons.resize(index + 1, None);
        }
        self.texts[index].push_str(text_of(api, choice, content));
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            // A reason a replay cannot give leaves the choice unfinished: not stored.
            self.reasons[index] = finish_reason(reason).filter(|r| *r != FinishReason::ToolCalls);
        }
        true
    }

    /// Stores the answer when every choice finished; in the background.
    fn store(self, usage: Usage) {
        if self.texts.is_empty() {
            return;
        }
        if let Some(answer) = StoredAnswer::finished(self.model, self.texts, self.reasons, &usage) {
            self.cache.store(self.key, &answer);
        }
    }
}

fn index_of(choice: &Value) -> u32 {
    choice
        .get("index")
        .and_then(Value::as_u64)
        .map_or(0, |i| u32::try_from(i).unwrap_or(u32::MAX))
}

/// A choice's text: `text` (completions) or `<content>.content` (chat: `message` or `delta`).
fn text_of<'a>(api: Api, choice: &'a Value, content: &str) -> &'a str {
    let text = match api {
        Api::Chat => choice.get(content).and_then(|m| m.get("content")),
        Api::Completions => choice.get("text"),
    };
    text.and_then(Value::as_str).unwrap_or_default()
}

/// What the output screen reads of a choice: its text and, for chat, the arguments of its
/// tool calls (or legacy function call), which are the model's output as much as its text is.
/// A stream's argument fragments, screened in order, add up to the whole arguments.
fn screened_text(api: Api, choice: &Value, content: &str) -> String {
    let mut text = text_of(api, choice, content).to_owned();
    let Some(part) = choice.get(content).filter(|_| api == Api::Chat) else {
        return text;
    };
    let calls = part.get("tool_calls").and_then(Value::as_array);
    let functions = calls
        .into_iter()
        .flatten()
        .filter_map(|call| call.get("function"))
        .chain(part.get("function_call"));
    for arguments in functions.filter_map(|f| f.get("arguments").and_then(Value::as_str)) {
        text.push_str(arguments);
    }
    text
}

fn finish_reason(reason: &str) -> Option<FinishReason> {
    match reason {
        "stop" => Some(FinishReason::Stop),
        "length" => Some(FinishReason::Length),
        "content_filter" => Some(FinishReason::ContentFilter),
        "tool_calls" => Some(FinishReason::ToolCalls),
        _ => None,
    }
}

fn data_event(value: &Value) -> Bytes {
    // A `Value` always serialises.
    let json = serde_json::to_string(value).unwrap_or_default();
    Bytes::from(format!("data: {json}\n\n"))
}
