//! Text that came from a device, a trail or a file, made safe to print on a
//! reviewer's terminal: control characters (C0, DEL, C1) and the Unicode
//! bidirectional overrides, which can clear a screen, move the cursor or
//! reorder a line, are shown escaped instead of acting. JSON output is for
//! programs: serde_json escapes C0 controls, `"` and `\` there, and leaves
//! the rest of Unicode as it is, as JSON allows.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as itself.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{061C}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `s` with every dangerous character written as `\u{..}` (and `\` as `\\`
/// when anything was escaped, so the escape cannot be forged); `s` itself
/// when it has none.
pub fn safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if dangerous(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A multi-line text from a device or a file (a report, pretty JSON, an
/// export, an error with its causes) made safe for a terminal: line breaks
/// and tabs stay, every other control character is escaped as [`safe`] does.
pub fn safe_lines(text: &str) -> String {
    text.split('\n')
        .map(|line| line.split('\t').map(safe).collect::<Vec<_>>().join("\t"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// [`safe_lines`] with every line after the first indented by four
/// spaces: for a message printed after a label (`error: `), so that text a
/// device put into it cannot start a line of its own.
pub fn continued(text: &str) -> String {
    safe_lines(text).replace('\n', "\n    ")
}

#[cfg(test)]
mod tests {
    use super::{continued, safe, safe_lines};

    #[test]
    fn continued_lines_are_indented() {
        assert_eq!(continued("one"), "one");
        assert_eq!(
            continued("bad\nerror: all good\u{1b}[2J"),
            "bad\n    error: all good\\u{1b}[2J"
        );
    }

    #[test]
    fn safe_lines_keeps_lines_and_tabs() {
        assert_eq!(safe_lines("a\tb\nc\u{1b}[2J\n"), "a\tb\nc\\u{1b}[2J\n");
        assert_eq!(safe_lines("x\r\ny"), "x\\u{d}\ny");
    }

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(
            safe("op-1 drive-001 ä"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(safe("a\\b"), "a\\b");
    }

    #[test]
    fn escapes_clear_screen_newlines_c1_and_bidi() {
        assert_eq!(safe("x\u{1b}[2J\u{1b}[Hy"), "x\\u{1b}[2J\\u{1b}[Hy");
        assert_eq!(safe("a\nb\rc"), "a\\u{a}b\\u{d}c");
        assert_eq!(safe("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(safe("evil\u{202e}gnp.exe"), "evil\\u{202e}gnp.exe");
        // The Arabic letter mark and the Unicode line and paragraph separators.
        assert_eq!(
            safe("a\u{61c}b\u{2028}c\u{2029}"),
            "a\\u{61c}b\\u{2028}c\\u{2029}"
        );
        assert_eq!(safe("\\u{1b}\u{7f}"), "\\\\u{1b}\\u{7f}");
    }
}
