//! Append-only JSON-lines audit log of every healing decision.
//!
//! Each line is one `AuditRecord` serialised by serde_json, so quotes, newlines and ANSI escapes
//! in workload-controlled strings (names, labels, Docker messages) are escaped and can never break
//! a line. Long values are cut to a bound first, so a 1 MiB label cannot bloat the log.
//!
//! Fail-safe: the engine writes the `intent` line before it acts; if that write fails, it does
//! not act (an action that cannot be audited is not taken) and `write_errors` counts it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::model::AuditRecord;
use crate::model::Decision;
pub use crate::sanitize::{for_log, truncate};

/// Longest name or id kept in a record, bytes.
pub const MAX_NAME: usize = 256;
/// Longest free-text field (Docker error message, reason detail), bytes.
pub const MAX_TEXT: usize = 2048;

impl AuditRecord {
    pub fn new(id: &str, name: &str, decision: Decision, reason: &str) -> Self {
        Self {
            ts: now_rfc3339(),
            container_id: truncate(id, MAX_NAME),
            container_name: truncate(name, MAX_NAME),
            decision,
            reason: truncate(reason, MAX_TEXT),
            rule: None,
            action: None,
            outcome: None,
            duration_ms: None,
            breaker: None,
            global_breaker: None,
            from: None,
            wait_secs: None,
            exit_code: None,
            error: None,
            dry_run: false,
        }
    }
}

impl AuditRecord {
    /// Every free-text field cut to its bound; applied on every write, so a caller that fills a
    /// field directly cannot bloat the log.
    fn bounded(mut self) -> Self {
        for f in [&mut self.container_id, &mut self.container_name] {
            if f.len() > MAX_NAME {
                *f = truncate(f, MAX_NAME);
            }
        }
        if self.reason.len() > MAX_TEXT {
            self.reason = truncate(&self.reason, MAX_TEXT);
        }
        for f in [&mut self.rule, &mut self.outcome, &mut self.error]
            .into_iter()
            .flatten()
        {
            if f.len() > MAX_TEXT {
                *f = truncate(f, MAX_TEXT);
            }
        }
        self
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub struct AuditLog {
    path: PathBuf,
    file: Option<File>,
    recent: VecDeque<AuditRecord>,
    recent_cap: usize,
    write_errors: u64,
    lines: u64,
}

impl AuditLog {
    /// Opens (creating, mode 0600) for append. A failure to open is not fatal here: every later
    /// write fails and the engine stays fail-safe (decides, never acts).
    pub fn open(path: &Path, recent_cap: usize) -> Self {
        let file = open_append(path).ok();
        Self {
            path: path.to_path_buf(),
            file,
            recent: VecDeque::new(),
            recent_cap,
            write_errors: 0,
            lines: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line. The whole line goes out in one `write_all` on an O_APPEND file, so
    /// concurrent readers never see half a record from us.
    pub fn write(&mut self, rec: AuditRecord) -> Result<(), AuditError> {
        let rec = rec.bounded();
        let mut line = serde_json::to_string(&rec).expect("AuditRecord always serialises");
        line.push('\n');
        let res = match self.file.as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => match open_append(&self.path) {
                // Retry the open each time: the directory may have appeared since.
                Ok(mut f) => {
                    let r = f.write_all(line.as_bytes());
                    self.file = Some(f);
                    r
                }
                Err(e) => Err(e),
            },
        };
        if self.recent_cap > 0 && rec.decision != Decision::Intent {
            if self.recent.len() == self.recent_cap {
                self.recent.pop_front();
            }
            self.recent.push_back(rec);
        }
        match res {
            Ok(()) => {
                self.lines += 1;
                Ok(())
            }
            Err(source) => {
                self.write_errors += 1;
                // Drop the handle so the next write reopens (e.g. after log rotation).
                self.file = None;
                Err(AuditError {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    pub fn recent(&self) -> impl Iterator<Item = &AuditRecord> {
        self.recent.iter()
    }

    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_stay_one_parseable_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 4);
        let huge = "x".repeat(1 << 20);
        let evil = "a\"b\nc\u{1b}[31mred\u{1b}[0m\r\u{0}tгue";
        let mut r = AuditRecord::new(evil, &huge, Decision::Skipped, evil);
        r.error = Some(huge.clone());
        log.write(r).unwrap();
        log.write(AuditRecord::new(
            "id2",
            "n",
            Decision::Skipped,
            "not_labelled",
        ))
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            text.len() < 10_000,
            "huge value not truncated: {}",
            text.len()
        );
        assert!(!text.contains('\u{1b}'), "raw ESC in the log");
        let back: AuditRecord = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(back.container_id, evil);
        assert!(back.container_name.ends_with("bytes truncated]"));
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["ts", "container_id", "container_name", "decision", "reason"] {
                assert!(v.get(k).is_some(), "missing {k}");
            }
        }
        assert!(!for_log(evil).contains('\n'));
        assert_eq!(log.recent().count(), 2);
    }

    #[test]
    fn write_failure_is_reported_and_counted() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let mut log = AuditLog::open(Path::new("/dev/full"), 4);
        assert!(
            log.write(AuditRecord::new("a", "b", Decision::Intent, "x"))
                .is_err()
        );
        assert_eq!(log.write_errors(), 1);
        let mut missing = AuditLog::open(Path::new("/nonexistent-dir/audit.jsonl"), 4);
        assert!(
            missing
                .write(AuditRecord::new("a", "b", Decision::Intent, "x"))
                .is_err()
        );
        assert_eq!(missing.write_errors(), 1);
    }
}
