//! Guest text on its way to a person.
//!
//! A guest chooses the text of its error messages, the messages of its traps
//! (through the names in its binary), its stderr, and the region, reason and
//! output names of its report. Any of it may be megabytes long or hold escape
//! sequences that retitle, clear or rewrite the operator's terminal. So the
//! host cuts each such text to [`GUEST_TEXT_LIMIT`] bytes where it captures
//! it ([`bound`], [`bounded`]): it never keeps more. And whatever shows it to
//! a person goes through [`shown`], which escapes every character that could
//! act on a terminal ([`acts_on_terminal`]). `--json` keeps the text itself,
//! with JSON's escapes.

use std::fmt;

/// The most bytes of one guest text the host keeps, the note that says how
/// much was cut included.
pub const GUEST_TEXT_LIMIT: usize = 4096;

/// Room left for the note at the end of cut text: `… (N more bytes)` is at
/// most 39 bytes for any `usize`.
const NOTE_ROOM: usize = 40;

/// How much of `text` fits: the longest prefix, cut at a character
/// boundary, that leaves room for the note, and how many bytes are dropped.
/// Text within the limit is kept whole, so cutting twice cuts once.
fn cut(text: &str) -> (&str, usize) {
    if text.len() <= GUEST_TEXT_LIMIT {
        return (text, 0);
    }
    let keep = text.floor_char_boundary(GUEST_TEXT_LIMIT - NOTE_ROOM);
    (&text[..keep], text.len() - keep)
}

fn note(dropped: usize) -> String {
    format!("… ({dropped} more bytes)")
}

/// `text` cut to [`GUEST_TEXT_LIMIT`] bytes, with a note saying how many
/// more there were; in place, and the rest of its memory given back.
#[must_use]
pub fn bound(mut text: String) -> String {
    let (kept, dropped) = cut(&text);
    if dropped > 0 {
        let keep = kept.len();
        text.truncate(keep);
        text.push_str(&note(dropped));
        text.shrink_to_fit();
    }
    text
}

/// [`bound`] for borrowed text: copies only what is kept.
#[must_use]
pub fn bounded(text: &str) -> String {
    let (kept, dropped) = cut(text);
    if dropped == 0 { kept.to_owned() } else { format!("{kept}{}", note(dropped)) }
}

/// Whether `c` could act on a terminal or disguise the text around it: C0
/// controls (newlines and tabs too: a message is one line), DEL, C1 controls
/// (an 8-bit CSI starts an escape sequence on some terminals), the
/// bidirectional marks, embeddings, overrides and isolates (they reorder what
/// is shown: `invoice<U+202E>fdp.exe` reads as `invoiceexe.pdf`), and the
/// line and paragraph separators.
#[must_use]
pub fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Guest text for a person: cut as [`bound`] cuts it (text already bounded
/// is shown whole), every character that [`acts_on_terminal`] written as
/// `\u{1b}`.
#[must_use]
pub fn shown(text: &str) -> Shown<'_> {
    Shown(text)
}

/// See [`shown`].
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kept, dropped) = cut(self.0);
        let mut plain = 0;
        for (at, c) in kept.char_indices() {
            if acts_on_terminal(c) {
                f.write_str(&kept[plain..at])?;
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
                plain = at + c.len_utf8();
            }
        }
        f.write_str(&kept[plain..])?;
        if dropped > 0 {
            f.write_str(&note(dropped))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(bound("north".to_owned()), "north");
        assert_eq!(bounded("north"), "north");
        let exact = "a".repeat(GUEST_TEXT_LIMIT);
        assert_eq!(bound(exact.clone()), exact);
    }

    #[test]
    fn long_text_is_cut_with_a_note_within_the_limit() {
        let long = "x".repeat(5 << 20);
        let kept = bound(long.clone());
        assert!(kept.len() <= GUEST_TEXT_LIMIT, "{}", kept.len());
        assert!(kept.ends_with(&format!("… ({} more bytes)", long.len() - (GUEST_TEXT_LIMIT - NOTE_ROOM))), "{kept}");
        assert_eq!(bounded(&long), kept);
        assert_eq!(bound(kept.clone()), kept, "cutting twice cuts once");
        assert_eq!(shown(&long).to_string(), kept);
        assert_eq!(shown(&kept).to_string(), kept);
    }

    #[test]
    fn the_cut_falls_on_a_character_boundary() {
        // 'é' is two bytes: the limit falls inside one of them either way.
        for prefix in ["", "a"] {
            let text = format!("{prefix}{}", "é".repeat(GUEST_TEXT_LIMIT));
            let kept = bound(text.clone());
            assert!(kept.len() <= GUEST_TEXT_LIMIT);
            let body = kept.split('…').next().expect("a body");
            assert!(text.starts_with(body) && body.len() >= GUEST_TEXT_LIMIT - NOTE_ROOM - 1, "{}", body.len());
        }
        let emoji = "🦀".repeat(2000);
        assert!(bounded(&emoji).starts_with("🦀"));
    }

    #[test]
    fn characters_that_act_on_a_terminal_are_escaped() {
        let hostile = "\u{1b}]0;title\u{7}\u{1b}[2J\rline\nnext\ttab\u{7f}\u{9b}31m\u{202e}fdp.exe\u{2066}";
        let shown = shown(hostile).to_string();
        assert_eq!(
            shown,
            "\\u{1b}]0;title\\u{7}\\u{1b}[2J\\u{d}line\\u{a}next\\u{9}tab\\u{7f}\\u{9b}31m\\u{202e}fdp.exe\\u{2066}"
        );
        assert!(!shown.chars().any(acts_on_terminal));
        assert_eq!(super::shown("été, 東京, a b").to_string(), "été, 東京, a b", "printable text is as it was");
    }

    #[test]
    fn escaping_a_cut_text_never_grows_past_a_few_times_the_limit() {
        let hostile = "\u{1b}".repeat(1 << 20);
        let shown = shown(&hostile).to_string();
        assert!(shown.len() < 8 * GUEST_TEXT_LIMIT, "{}", shown.len());
        assert!(shown.ends_with("more bytes)"));
    }
}
