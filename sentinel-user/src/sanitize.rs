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

/// Longest untrusted value in a log line, bytes.
const MAX_LOG: usize = 256;

/// Safe for a log line: bounded and with control characters (newlines, ESC) escaped.
pub fn for_log(s: &str) -> String {
    truncate(s, MAX_LOG).escape_debug().to_string()
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
}
