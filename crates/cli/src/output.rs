//! Printing shared by the commands: pretty JSON, documents (escaped on a
//! terminal), a library's story for people, warnings, progress bars.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::text::{safe, safe_lines};

/// A writer that passes text through [`safe_lines`]: for what a library
/// writes for people (the demo's story) when it quotes devices. Each write
/// is taken as whole UTF-8 text, which `write!`/`writeln!` guarantee.
pub(crate) struct SafeText<W: std::io::Write>(pub(crate) W);

impl<W: std::io::Write> std::io::Write for SafeText<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write_all(safe_lines(&String::from_utf8_lossy(buf)).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Prints a document (a report, an export) on stdout as it is when stdout
/// is a file or a pipe, and through [`safe_lines`] when it is a terminal.
pub(crate) fn print_document(text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        print!("{}", safe_lines(text));
    } else {
        print!("{text}");
    }
}

/// `v` as pretty JSON on stdout (a struct's fields in their order; a
/// `serde_json::Value`'s keys in alphabetical order).
pub(crate) fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A progress bar on stderr up to `total`, showing `counts` after the bar
/// (an indicatif template: `{pos}/{len} {msg}`, `{bytes}/{total_bytes}`);
/// hidden with `--json`, and by indicatif when stderr is no terminal.
pub(crate) fn progress_bar(json: bool, total: u64, counts: &str) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} [{{bar:30}}] {counts}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}

/// A line of text-mode output while `bar` runs: above the bar on a
/// terminal, and on stdout, as text mode prints, when the bar is hidden
/// (output piped or redirected), where the bar's own lines would be lost.
pub(crate) fn bar_line(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// Prints each warning on stderr.
pub(crate) fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {}", safe(w));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_safe_text_writer_escapes_what_a_library_writes() {
        let mut out = super::SafeText(Vec::new());
        std::io::Write::write_fmt(&mut out, format_args!("{} ok\n", "dev\u{9b}2J")).unwrap();
        assert_eq!(out.0, b"dev\\u{9b}2J ok\n");
    }
}
