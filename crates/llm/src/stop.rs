//! Stop strings matched across token boundaries.
//!
//! Text that could still turn into a stop string is held back; when a stop string appears the
//! text before it is released and the stop string itself (and anything after it) never is.

/// What pushing text produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Keep generating; `emit` is safe to send.
    Continue { emit: String },
    /// A stop string matched: send `emit`, then finish.
    Stopped { emit: String, matched: String },
}

/// Watches generated text for any of a request's stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored: they would match before any text.
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue {
                emit: text.to_owned(),
            };
        }
        self.held.push_str(text);
        // The earliest match wins; at the same position, the longest stop string.
        let found = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()).map(|at| (at, stop)))
            .min_by(|(a, sa), (b, sb)| a.cmp(b).then(sb.len().cmp(&sa.len())));
        if let Some((at, stop)) = found {
            let matched = stop.clone();
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return StopOutcome::Stopped { emit, matched };
        }
        let keep = self.longest_partial_suffix();
        let emit = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        StopOutcome::Continue { emit }
    }

    /// The held text, released because generation ended for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of the held text that begins some stop string.
    fn longest_partial_suffix(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(start, _)| &held[start..])
            .find(|suffix| self.stops.iter().any(|stop| stop.starts_with(suffix)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, Option<String>) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for chunk in chunks {
            match matcher.push(chunk) {
                StopOutcome::Continue { emit } => out.push_str(&emit),
                StopOutcome::Stopped { emit, matched } => {
                    out.push_str(&emit);
                    return (out, Some(matched));
                }
            }
        }
        out.push_str(&matcher.flush());
        (out, None)
    }

    #[test]
    fn a_stop_split_across_chunks_is_found_and_not_emitted() {
        assert_eq!(
            run(&["STOP"], &["abc S", "TO", "P and more"]),
            ("abc ".into(), Some("STOP".into()))
        );
    }

    #[test]
    fn text_that_only_looked_like_a_stop_is_released() {
        let mut matcher = StopMatcher::new(["end".to_string()]);
        assert_eq!(
            matcher.push("the e"),
            StopOutcome::Continue {
                emit: "the ".into()
            }
        );
        assert_eq!(
            matcher.push("n"),
            StopOutcome::Continue {
                emit: String::new()
            }
        );
        assert_eq!(
            matcher.push("ough"),
            StopOutcome::Continue {
                emit: "enough".into()
            }
        );
        assert_eq!(run(&["end"], &["the e", "n"]), ("the en".into(), None));
    }

    #[test]
    fn earliest_match_wins_then_longest() {
        assert_eq!(
            run(&["b", "ab"], &["xxab"]),
            ("xx".into(), Some("ab".into()))
        );
        assert_eq!(
            run(&["abc", "ab"], &["_abc"]),
            ("_".into(), Some("abc".into()))
        );
    }

    #[test]
    fn multibyte_text_is_split_only_at_char_boundaries() {
        assert_eq!(
            run(&["日本"], &["こんにちは日", "本語"]),
            ("こんにちは".into(), Some("日本".into()))
        );
        assert_eq!(run(&["🦀!"], &["a🦀", "b"]), ("a🦀b".into(), None));
    }

    #[test]
    fn no_stops_passes_text_through() {
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), None));
    }
}
