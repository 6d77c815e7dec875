//! Output checks: the text of each choice is sent to the safety service in windows as it is
//! generated, without holding the stream back. When a window is unsafe the choice ends at once
//! with `finish_reason: "content_filter"`; its end always waits for the verdict on its whole
//! text, so no choice finishes normally with an unchecked tail. A cached answer is screened the
//! same way as it is replayed.

use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use passerelle_proto::common::ChatMessage;
use passerelle_proto::safety::{CheckRequest, CheckResponse, Stage, Verdict};

use crate::backend::BackendError;
use crate::generation::Progress;
use crate::llm::{Delta, FinishReason, Finished};
use crate::safety::{Refusal, Reporter, SafetyBackend};

/// Characters of new text that make a window worth checking.
const WINDOW_CHARS: usize = 256;

type Check = BoxFuture<'static, (u32, Result<CheckResponse, BackendError>)>;

/// What the screen did with one event from the answer.
pub(crate) enum Screened {
    /// Pass it on.
    Pass(Progress),
    /// Drop it: its choice was already ended by the filter.
    Drop,
}

/// The output screen of one answer.
pub(crate) struct OutputScreen {
    backend: SafetyBackend,
    request_id: String,
    /// The conversation that led to the answer, for context.
    prompt: Vec<ChatMessage>,
    choices: Vec<ChoiceText>,
    pending: FuturesUnordered<Check>,
    reporter: Reporter,
}

#[derive(Default)]
struct ChoiceText {
    text: String,
    /// Characters in `text`.
    chars: usize,
    /// Characters already sent for checking.
    checked_chars: usize,
    /// Checks sent and not yet answered.
    outstanding: usize,
    /// An unsafe verdict, not yet acted on.
    flagged: Option<Refusal>,
    ended: bool,
}

impl OutputScreen {
    pub(crate) fn new(
        backend: SafetyBackend,
        request_id: String,
        prompt: Vec<ChatMessage>,
        choices: u32,
        reporter: Reporter,
    ) -> Self {
        Self {
            backend,
            request_id,
            prompt,
            choices: (0..choices).map(|_| ChoiceText::default()).collect(),
            pending: FuturesUnordered::new(),
            reporter,
        }
    }

    /// A choice that a window check found unsafe, ended now, if any. Never waits.
    pub(crate) fn ended_by_filter(&mut self) -> Option<Finished> {
        while let Some(Some((index, verdict))) = self.pending.next().now_or_never() {
            self.absorb(index, verdict);
        }
        let (index, choice) = self
            .choices
            .iter_mut()
            .enumerate()
            .find(|(_, c)| c.flagged.is_some() && !c.ended)?;
        choice.ended = true;
        let refusal = choice.flagged.clone()?;
        tokio::spawn(self.reporter.refused("output", &refusal));
        Some(Finished {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            reason: FinishReason::ContentFilter,
            usage: None,
        })
    }

    /// Whether every choice has ended.
    pub(crate) fn all_ended(&self) -> bool {
        self.choices.iter().all(|c| c.ended)
    }

    /// Screens one event of the answer.
    pub(crate) async fn screen(&mut self, progress: Progress) -> Screened {
        match progress {
            Progress::Delta(delta) => self.delta(delta),
            Progress::Finished(finished) => self.finish(finished).await,
        }
    }

    fn delta(&mut self, delta: Delta) -> Screened {
        let index = delta.index;
        let Some(choice) = self.choices.get_mut(index as usize) else {
            return Screened::Pass(Progress::Delta(delta));
        };
        if choice.ended {
            return Screened::Drop;
        }
        choice.text.push_str(&delta.text);
        choice.chars += delta.text.chars().count();
        if choice.chars - choice.checked_chars >= WINDOW_CHARS {
            choice.checked_chars = choice.chars;
            let text = choice.text.clone();
            self.send(index, text);
        }
        Screened::Pass(Progress::Delta(delta))
    }

    /// A choice's end waits for the verdicts on all of its text.
    async fn finish(&mut self, mut finished: Finished) -> Screened {
        let index = finished.index;
        let Some(choice) = self.choices.get(index as usize) else {
            return Screened::Pass(Progress::Finished(finished));
        };
        if choice.ended {
            return Screened::Drop;
        }
        let text = choice.text.clone();
        self.send(index, text);
        while self.choices[index as usize].outstanding > 0 {
            let Some((checked, verdict)) = self.pending.next().await else {
                break;
            };
            self.absorb(checked, verdict);
        }
        let choice = &mut self.choices[index as usize];
        choice.ended = true;
        if let Some(refusal) = choice.flagged.clone() {
            finished.reason = FinishReason::ContentFilter;
            tokio::spawn(self.reporter.refused("output", &refusal));
        }
        Screened::Pass(Progress::Finished(finished))
    }

    fn absorb(&mut self, index: u32, verdict: Result<CheckResponse, BackendError>) {
        let Some(choice) = self.choices.get_mut(index as usize) else {
            return;
        };
        choice.outstanding = choice.outstanding.saturating_sub(1);
        if choice.flagged.is_none() {
            choice.flagged = unsafe_verdict(verdict);
        }
    }

    fn send(&mut self, index: u32, text: String) {
        if let Some(choice) = self.choices.get_mut(index as usize) {
            choice.outstanding += 1;
        }
        let backend = self.backend.clone();
        let mut messages = self.prompt.clone();
        messages.push(ChatMessage {
            role: "assistant".to_owned(),
            content: text,
            ..ChatMessage::default()
        });
        let request = CheckRequest {
            messages,
            stage: Stage::Output.into(),
            request_id: self.request_id.clone(),
            ..CheckRequest::default()
        };
        self.pending.push(Box::pin(
            async move { (index, backend.check(request).await) },
        ));
    }
}

/// The refusal in an unsafe verdict. A check that failed lets the text stand: the input was
/// checked, and cutting answers whenever the safety service blinks would be worse.
fn unsafe_verdict(verdict: Result<CheckResponse, BackendError>) -> Option<Refusal> {
    match verdict {
        Ok(response) if response.verdict() == Verdict::Unsafe => {
            Some(Refusal::from_verdict(&response))
        }
        Ok(_) => None,
        Err(err) => {
            tracing::warn!(error = %err, "an output check failed; the text was not checked");
            None
        }
    }
}
