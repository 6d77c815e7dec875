//! Which windows of a long text are scored.
//!
//! A text longer than the model's input is cut into overlapping windows (the tokenizer's
//! truncation with a stride), each scored on its own, and the text scores its most suspicious
//! window. Scoring costs a forward pass per window, so at most `max_windows` are scored: when a
//! text has more, its first half and last half of that budget, since an injection usually
//! opens a text ("ignore the above and ...") or closes it (an instruction appended to a
//! pasted document). The middle of a very long text goes unscored, and the verdict says how
//! many windows were skipped.

/// The indices of the windows to score among `count`, at most `max_windows` (at least one),
/// in order.
pub fn chosen(count: usize, max_windows: usize) -> Vec<usize> {
    let max_windows = max_windows.max(1);
    if count <= max_windows {
        return (0..count).collect();
    }
    let head = max_windows.div_ceil(2);
    let tail = max_windows - head;
    (0..head).chain(count - tail..count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_score_every_window() {
        assert_eq!(chosen(1, 16), [0]);
        assert_eq!(chosen(3, 3), [0, 1, 2]);
        assert!(chosen(0, 4).is_empty());
    }

    #[test]
    fn long_texts_score_their_head_and_tail() {
        assert_eq!(chosen(10, 4), [0, 1, 8, 9]);
        assert_eq!(chosen(10, 5), [0, 1, 2, 8, 9]);
        assert_eq!(chosen(10, 1), [0]);
        assert_eq!(chosen(10, 0), [0]);
    }
}
