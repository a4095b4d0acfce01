//! Text for a terminal: fields that came from a store (channel, target, key,
//! label, error text, a holder's command line, a path) may hold terminal
//! escape sequences (`\x1b]0;title\x07`, `\x1b[2J`) that would retitle or
//! clear the reader's terminal. Every human-readable list and show prints such
//! fields through [`clean`]; `--json` output is never changed.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal raw: C0 controls (tab and newline
/// too: they break a table row), DEL, C1 controls (U+0080–U+009F, `\u{9b}` is
/// a one-byte CSI), and the bidirectional overrides and isolates that reorder
/// what is shown (U+202A–U+202E, U+2066–U+2069).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with each unsafe character (see above) replaced by a visible escape:
/// `\x1b` for ASCII controls, `\u{9b}` for the others. Borrowed, unchanged,
/// when there is none.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if c.is_ascii() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn escapes_controls_and_keeps_text() {
        assert_eq!(
            clean("a\u{1b}]0;pwned\u{7}\u{1b}[2Jb"),
            "a\\x1b]0;pwned\\x07\\x1b[2Jb"
        );
        assert_eq!(clean("x\ny\tz\u{7f}"), "x\\x0ay\\x09z\\x7f");
        assert_eq!(clean("\u{9b}31m\u{202e}abc"), "\\u{9b}31m\\u{202e}abc");
        assert!(matches!(
            clean("plain ünïcode ✓"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
