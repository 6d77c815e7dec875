//! The text the rules see: NFKC-normalised (full-width and stylised letters become plain ones),
//! invisible format characters removed, and every run of whitespace collapsed to one space, so
//! "IGNORE   previous\ninstructions" and "ｉｇｎｏｒｅ previous instructions" read alike. Case
//! is left to the rules, which match case-insensitively.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization as _;

/// `text` as the rules match it; borrowed when it is already in that form.
pub fn for_rules(text: &str) -> Cow<'_, str> {
    if is_normal_ascii(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut space_pending = false;
    for c in text.nfkc() {
        if is_invisible(c) {
            continue;
        }
        if c.is_whitespace() {
            space_pending = !out.is_empty();
            continue;
        }
        if space_pending {
            out.push(' ');
            space_pending = false;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// ASCII is its own NFKC form; it only needs work for leading, trailing or repeated
/// whitespace, or whitespace other than a plain space.
fn is_normal_ascii(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.is_ascii()
        && !bytes.first().is_some_and(u8::is_ascii_whitespace)
        && !bytes.last().is_some_and(u8::is_ascii_whitespace)
        && !bytes
            .iter()
            .any(|b| b.is_ascii_whitespace() && *b != b' ' || b.is_ascii_control())
        && !bytes.windows(2).any(|pair| pair == b"  ")
}

/// Characters that render as nothing and would split a phrase unseen: soft hyphen, zero-width
/// spaces and joiners, direction marks and embeddings, word joiner, byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_whitespace_and_trims() {
        assert_eq!(
            for_rules("  IGNORE   previous\ninstructions\t\r\n"),
            "IGNORE previous instructions"
        );
        assert_eq!(for_rules("a\u{00A0}b\u{3000}c"), "a b c");
    }

    #[test]
    fn folds_compatibility_forms_and_drops_invisible_characters() {
        assert_eq!(for_rules("ｉｇｎｏｒｅ"), "ignore");
        assert_eq!(
            for_rules("ig\u{200B}no\u{00AD}re pre\u{FEFF}vious"),
            "ignore previous"
        );
        assert_eq!(for_rules("ﬁle"), "file");
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(for_rules("hello there"), Cow::Borrowed(_)));
        assert!(matches!(for_rules("hello  there"), Cow::Owned(_)));
        assert!(matches!(for_rules("hello\tthere"), Cow::Owned(_)));
        assert!(matches!(for_rules("café"), Cow::Owned(_)));
    }
}
