//! The one place untrusted strings (container names, labels, Docker messages, config echoes)
//! are made safe for where they go: bounded in length, and free of control characters that
//! could break a line or drive a terminal.

/// Cut `s` to at most `max` bytes on a char boundary, saying how much was dropped.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...[{} bytes truncated]", &s[..end], s.len() - end)
}

/// Safe for a terminal or a log line: control characters (newlines, carriage returns, ESC and
/// the rest of ANSI sequences) are shown escaped (`\n`, `\u{1b}`), everything else is kept,
/// and at most `max_chars` characters are kept (`…` says more was cut).
pub fn printable(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 2));
    for (i, ch) in s.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_debug());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Longest untrusted value in a log line, characters.
const MAX_LOG: usize = 256;

/// Safe for a log line: [`printable`], bounded.
pub fn for_log(s: &str) -> String {
    printable(s, MAX_LOG)
}

/// A multi-line message (a parser's error) on one bounded line: control characters become
/// spaces, runs of white space one space.
pub fn one_line(message: &str, max_chars: usize) -> String {
    let flat: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    printable(&flat, max_chars)
}

/// Longest error report on the terminal, characters (an error chain names a few paths and
/// reasons; more than this is a runaway message).
pub const MAX_ERROR: usize = 2000;

/// The `error: ...` line a command prints when it fails: the whole chain (`{:#}`) on one line,
/// control characters escaped. A path or a value in the chain may hold a newline or an escape
/// sequence (a file name is any bytes but `/` and NUL); printed raw it would split the one error
/// line or drive the terminal.
pub fn error_line(e: &anyhow::Error) -> String {
    format!("error: {}", printable(&format!("{e:#}"), MAX_ERROR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "ж".repeat(10);
        let t = truncate(&s, 5);
        assert!(t.starts_with("жж"));
        assert!(t.contains("truncated"));
    }

    #[test]
    fn log_values_stay_on_one_line() {
        assert!(!for_log("a\nb\u{1b}[2J").contains(['\n', '\u{1b}']));
        assert!(for_log(&"x".repeat(10_000)).len() < 400);
    }

    #[test]
    fn printable_escapes_controls_and_keeps_the_rest() {
        let s = printable("eth0\u{1b}[2J\nrm -rf\r tгue \"q\"", 100);
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert_eq!(s, "eth0\\u{1b}[2J\\nrm -rf\\r tгue \"q\"");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("abc", 3), "abc");
    }

    #[test]
    fn one_line_flattens_and_bounds() {
        assert_eq!(
            one_line("expected `=`\n  |\n1 | x\r\n", 100),
            "expected `=` | 1 | x"
        );
        assert_eq!(one_line(&"y".repeat(500), 300).chars().count(), 301);
    }

    #[test]
    fn an_error_line_is_one_line_whatever_the_chain_holds() {
        let e =
            anyhow::anyhow!("/tmp/a\u{1b}[31mRED\nline2: cannot open").context("replay --input");
        let line = error_line(&e);
        assert_eq!(
            line,
            "error: replay --input: /tmp/a\\u{1b}[31mRED\\nline2: cannot open"
        );
        assert_eq!(line.lines().count(), 1);
        let long = anyhow::anyhow!("x".repeat(10 * MAX_ERROR));
        assert!(error_line(&long).chars().count() <= MAX_ERROR + "error: …".len());
    }
}
