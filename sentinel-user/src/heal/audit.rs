//! Append-only JSON-lines audit log of every healing decision.
//!
//! Each line is one `AuditRecord` serialised by serde_json, so quotes, newlines and ANSI escapes
//! in workload-controlled strings (names, labels, Docker messages) are escaped and can never break
//! a line. Long values are cut to a bound first, so a 1 MiB label cannot bloat the log.
//!
//! Fail-safe: the engine writes the `intent` line before it acts; if that write fails, it does
//! not act (an action that cannot be audited is not taken) and `write_errors` counts it.
//!
//! Replay: at start-up `read_past` reads the log's tail back, so that a restart of sentinel
//! resets neither limits nor OPEN breakers.
//!
//! Rotation: logrotate (deploy/sentinel.logrotate) renames the file. Before every record the
//! path's inode is compared with the open file's; when they differ (or the path is gone) the
//! record goes to a new file created at the path. No signal is needed, and a record is never
//! split: it is one `write_all` into one file or the other. A record racing the rename lands
//! in the renamed file, which `delaycompress` keeps as plain text until the next rotation.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use super::breaker::BreakerState;
use super::config::{HealConfig, secs};
use super::gate::Restored;
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
            cpu: None,
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
    /// Records written since start (what the file gained from this process).
    written: u64,
    /// Non-intent records since start (how far the `recent` window has moved).
    decided: u64,
    /// Times a rotated (renamed or removed) file was replaced by a new one at the path.
    reopened: u64,
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
            written: 0,
            decided: 0,
            reopened: 0,
        }
    }

    /// Drops the open file when the path no longer names it (renamed by logrotate, removed):
    /// the next open creates a new file there. One `stat` per record; records are rare.
    fn follow_rotation(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let Some(f) = &self.file else { return };
        let same = match (f.metadata(), std::fs::metadata(&self.path)) {
            (Ok(open), Ok(at_path)) => open.dev() == at_path.dev() && open.ino() == at_path.ino(),
            // The path is gone (rotated with `nocreate`) or unreadable: open it again (an error
            // there is a write error like any other).
            _ => false,
        };
        if !same {
            self.file = None;
            self.reopened += 1;
            tracing::info!(path = %self.path.display(), "audit log rotated: continuing in a new file at the path");
        }
    }

    /// Append one line. The whole line goes out in one `write_all` on an O_APPEND file, so
    /// concurrent readers never see half a record from us.
    pub fn write(&mut self, rec: AuditRecord) -> Result<(), AuditError> {
        let rec = rec.bounded();
        let mut line = serde_json::to_string(&rec).expect("AuditRecord always serialises");
        line.push('\n');
        self.follow_rotation();
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
        if rec.decision != Decision::Intent {
            self.decided += 1;
        }
        if self.recent_cap > 0 && rec.decision != Decision::Intent {
            if self.recent.len() == self.recent_cap {
                self.recent.pop_front();
            }
            self.recent.push_back(rec);
        }
        match res {
            Ok(()) => {
                self.written += 1;
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

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn decided(&self) -> u64 {
        self.decided
    }

    pub fn reopened(&self) -> u64 {
        self.reopened
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

/// Longest bytes of an existing audit log read back at start-up (its tail).
const PAST_TAIL: u64 = 4 << 20;

/// The file logrotate renames the log to (deploy/sentinel.logrotate: numbered, and
/// `delaycompress` keeps this newest one uncompressed).
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The last `PAST_TAIL` bytes of the log, oldest first: the live file's tail, preceded by the
/// rotated file's when the live one is shorter (right after a rotation it is empty or absent,
/// and the decisions that matter are in `.1`). Unreadable files count as empty. A tail that
/// starts inside a line only spoils that line, which the parser skips.
fn read_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    fn tail(path: &Path, budget: u64) -> Vec<u8> {
        let mut out = Vec::new();
        if budget == 0 {
            return out;
        }
        let Ok(mut f) = std::fs::File::open(path) else {
            return out;
        };
        // Only regular files: a FIFO or a device would never end.
        let Ok(meta) = f.metadata() else { return out };
        if !meta.is_file() {
            return out;
        }
        let start = meta.len().saturating_sub(budget);
        if f.seek(SeekFrom::Start(start)).is_err() || f.take(budget).read_to_end(&mut out).is_err()
        {
            out.clear();
        }
        out
    }
    let live = tail(path, PAST_TAIL);
    let rest = PAST_TAIL.saturating_sub(live.len() as u64);
    let mut bytes = tail(&rotated_path(path), rest);
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(&live);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A breaker restored OPEN: container id, name, seconds left of its wait.
type Reopened = (String, String, f64);

/// What earlier sentinel processes decided, from the tail of the audit log: the actions
/// (`intent` lines) and the breakers last OPEN or HALF_OPEN, within the longest window any
/// limit looks back. Unreadable or foreign lines are skipped. Also returns, for the audit,
/// each restored OPEN breaker with the seconds left of its wait.
pub fn read_past(
    path: &Path,
    cfg: &HealConfig,
    now: Instant,
    wall: SystemTime,
) -> (BTreeMap<String, Restored>, Vec<Reopened>) {
    let mut past: BTreeMap<String, Restored> = BTreeMap::new();
    let text = read_tail(path);
    let horizon = cfg
        .rules
        .iter()
        .map(|r| r.limit_window_secs.max(r.cooldown_secs))
        .chain([
            cfg.global_cap.window_secs,
            cfg.backoff.reset_after_secs,
            cfg.breaker.open_max_secs,
        ])
        .fold(0.0, f64::max);
    // (name, opened at, wait) per container whose breaker was last OPEN or HALF_OPEN.
    let mut breakers: BTreeMap<String, (String, Instant, Duration)> = BTreeMap::new();
    for line in text.lines() {
        let Ok(r) = serde_json::from_str::<AuditRecord>(line) else {
            continue;
        };
        let Ok(ts) = humantime::parse_rfc3339_weak(&r.ts) else {
            continue;
        };
        let age = wall.duration_since(ts).unwrap_or(Duration::ZERO);
        if age.as_secs_f64() > horizon || r.container_id.is_empty() {
            continue;
        }
        let Some(at) = now.checked_sub(age) else {
            continue;
        };
        match r.decision {
            Decision::Intent => {
                if let Some(rule) = cfg
                    .rules
                    .iter()
                    .position(|x| Some(&x.name) == r.rule.as_ref())
                {
                    past.entry(r.container_id)
                        .or_default()
                        .actions
                        .push((rule, at));
                }
            }
            Decision::Breaker => match r.breaker {
                Some(BreakerState::Open) => {
                    let wait = secs(r.wait_secs.unwrap_or(cfg.breaker.open_secs));
                    breakers.insert(r.container_id, (r.container_name, at, wait));
                }
                // HALF_OPEN: restored as OPEN whose wait has elapsed (one trial, not CLOSED).
                Some(BreakerState::HalfOpen) => {
                    if let Some(b) = breakers.get_mut(&r.container_id) {
                        b.1 = at.checked_sub(b.2).unwrap_or(at);
                    }
                }
                _ => {
                    breakers.remove(&r.container_id);
                }
            },
            _ => {}
        }
    }
    let mut reopened = Vec::new();
    for (id, (name, at, wait)) in breakers {
        let left = (at + wait).saturating_duration_since(now).as_secs_f64();
        past.entry(id.clone()).or_default().open = Some((at, wait));
        reopened.push((id, name, left));
    }
    (past, reopened)
}

/// CPU caps the audit log shows sentinel set and did not lift (a crash, or Docker away at
/// shutdown): (container id, name, the cap with the quota it replaced). A cap counts as set
/// from its `intent` line (the update may have reached Docker), and as gone after its `lifted`
/// line or a failure that says Docker did not apply it. Unlike `read_past`, no time horizon: a
/// cap is never too old to lift.
pub fn unlifted_caps(path: &Path) -> Vec<(String, String, crate::model::CpuCap)> {
    use crate::model::ActionKind;
    let mut caps: BTreeMap<String, (String, crate::model::CpuCap)> = BTreeMap::new();
    for line in read_tail(path).lines() {
        let Ok(r) = serde_json::from_str::<AuditRecord>(line) else {
            continue;
        };
        if r.action != Some(ActionKind::CapContender) || r.container_id.is_empty() {
            continue;
        }
        match r.decision {
            Decision::Intent => {
                if let Some(cpu) = r.cpu {
                    caps.insert(r.container_id, (r.container_name, cpu));
                }
            }
            Decision::Lifted | Decision::NotRecorded => {
                caps.remove(&r.container_id);
            }
            // A timed-out update may have been applied; a failed lift is still a cap.
            Decision::Failed if r.reason != "timeout" && r.reason != "lift_failed" => {
                caps.remove(&r.container_id);
            }
            _ => {}
        }
    }
    caps.into_iter()
        .map(|(id, (name, cpu))| (id, name, cpu))
        .collect()
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

    /// The interval's `actions`: the last N decisions, oldest first, intents left out (the
    /// `taken`/`failed` line that follows says more).
    #[test]
    fn recent_keeps_the_last_decisions_without_intents() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(&dir.path().join("a.jsonl"), 2);
        for (i, d) in [
            Decision::Intent,
            Decision::Taken,
            Decision::Skipped,
            Decision::Failed,
        ]
        .into_iter()
        .enumerate()
        {
            log.write(AuditRecord::new(&format!("c{i}"), "n", d, "r"))
                .unwrap();
        }
        let recent: Vec<Decision> = log.recent().map(|r| r.decision).collect();
        assert_eq!(recent, [Decision::Skipped, Decision::Failed]);
        let text = std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 4, "the file keeps every line");
    }

    /// logrotate renames the file (no copytruncate, no signal): the next record goes to a new
    /// file at the path; the renamed file keeps what was written before, whole lines only.
    #[test]
    fn a_renamed_log_continues_in_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 4);
        for i in 0..3 {
            log.write(AuditRecord::new(
                &format!("a{i}"),
                "n",
                Decision::Skipped,
                "r",
            ))
            .unwrap();
        }
        std::fs::rename(&path, rotated_path(&path)).unwrap();
        assert!(!path.exists());
        for i in 0..2 {
            log.write(AuditRecord::new(
                &format!("b{i}"),
                "n",
                Decision::Skipped,
                "r",
            ))
            .unwrap();
        }
        let ids = |p: &Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap().container_id)
                .collect()
        };
        assert_eq!(ids(&rotated_path(&path)), ["a0", "a1", "a2"]);
        assert_eq!(ids(&path), ["b0", "b1"]);
        assert_eq!(log.reopened(), 1);
        assert_eq!(log.written(), 5);
        // Rotated again with a file put in its place (logrotate's `create`): that file is used.
        std::fs::rename(&path, rotated_path(&path)).unwrap();
        std::fs::write(&path, "").unwrap();
        log.write(AuditRecord::new("c0", "n", Decision::Skipped, "r"))
            .unwrap();
        assert_eq!(ids(&path), ["c0"]);
        assert_eq!(log.reopened(), 2);
        // Not rotated: the same file, no reopen.
        log.write(AuditRecord::new("c1", "n", Decision::Skipped, "r"))
            .unwrap();
        assert_eq!(ids(&path), ["c0", "c1"]);
        assert_eq!(log.reopened(), 2);
        assert_eq!(log.write_errors(), 0);
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

#[cfg(test)]
mod restore_tests {
    use super::*;
    use crate::heal::breaker::BreakerState;
    use crate::heal::gate::{Consent, Facts, Gate, Request, SkipReason, Verdict};
    use std::time::{Duration, Instant, SystemTime};

    fn line(id: &str, age_secs: f64, decision: &str, extra: &str) -> String {
        let ts = time::OffsetDateTime::now_utc() - time::Duration::seconds_f64(age_secs);
        let ts = ts
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        format!(
            r#"{{"ts":"{ts}","container_id":"{id}","container_name":"n","decision":"{decision}","reason":"r"{extra}}}"#
        )
    }

    fn req(id: &str, limit: u32) -> Request<'_> {
        Request {
            container_id: id,
            rule: 0,
            cooldown: Duration::ZERO,
            rule_limit: (limit, Duration::from_secs(60)),
            facts: Facts {
                consent: Consent::Labelled,
                stopped_by_operator: false,
                restart_policy_active: false,
            },
            docker_up: true,
            dry_run: false,
        }
    }

    /// Regression (chaos soak, seed 7): a SIGKILLed and restarted sentinel forgot its
    /// actions and breakers, and restarted a flapper 6 times within 60 s (rule limit 4).
    #[test]
    fn restart_keeps_limits_and_open_breakers_from_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rule = r#","rule":"autoheal","action":"restart""#;
        let lines = [
            line("old", 4000.0, "intent", rule),
            line("a", 40.0, "intent", rule),
            line("a", 30.0, "intent", rule),
            line("a", 20.0, "intent", rule),
            line("a", 5.0, "intent", rule),
            line("b", 3.0, "intent", rule),
            line(
                "b",
                2.0,
                "breaker",
                r#","from":"CLOSED","breaker":"OPEN","wait_secs":16.0"#,
            ),
            line(
                "c",
                30.0,
                "breaker",
                r#","from":"CLOSED","breaker":"OPEN","wait_secs":4.0"#,
            ),
            line(
                "c",
                20.0,
                "breaker",
                r#","from":"OPEN","breaker":"HALF_OPEN""#,
            ),
            line(
                "c",
                10.0,
                "breaker",
                r#","from":"HALF_OPEN","breaker":"CLOSED""#,
            ),
            "not json".to_string(),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let mut cfg = HealConfig::default();
        cfg.rules[0].max_actions = 4;
        cfg.rules[0].limit_window_secs = 60.0;
        cfg.backoff.initial_secs = 1.0;
        cfg.backoff.max_secs = 1.0;
        cfg.grace_secs = 1.0;
        let now = Instant::now();
        let (past, reopened) = read_past(&path, &cfg, now, SystemTime::now());
        assert_eq!(past["a"].actions.len(), 4);
        assert!(!past.contains_key("old"), "older than every window");
        assert!(
            past.get("c").is_none_or(|r| r.open.is_none()),
            "closed since"
        );
        assert_eq!(reopened.len(), 1);
        assert_eq!(reopened[0].0, "b");
        assert!(
            reopened[0].2 > 12.0 && reopened[0].2 <= 14.5,
            "{reopened:?}"
        );
        let mut gate = Gate::new(&cfg);
        gate.restore(&past);
        assert_eq!(
            gate.decide(now, &req("a", 4)),
            Verdict::Skip(SkipReason::RuleLimit)
        );
        assert_eq!(gate.breaker_state("b"), Some(BreakerState::Open));
        assert_eq!(
            gate.decide(now + Duration::from_secs(2), &req("b", 4)),
            Verdict::Skip(SkipReason::BreakerOpen)
        );
        assert!(matches!(
            gate.decide(now, &req("fresh", 4)),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn replay_skips_foreign_lines_and_reads_half_open_as_open_with_its_wait_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let lines = [
            line("a", 10.0, "intent", r#","rule":"nonexistent""#),
            line("a", 10.0, "bogus", r#","rule":"autoheal""#),
            line("b", 20.0, "breaker", r#","from":"CLOSED","breaker":"OPEN","wait_secs":60.0"#),
            line("b", 5.0, "breaker", r#","from":"OPEN","breaker":"HALF_OPEN""#),
            r#"{"ts":"not a time","container_id":"c","container_name":"n","decision":"intent","reason":"r","rule":"autoheal"}"#.to_string(),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let cfg = HealConfig::default();
        let now = Instant::now();
        let (past, reopened) = read_past(&path, &cfg, now, SystemTime::now());
        assert!(
            past.get("a").is_none_or(|r| r.actions.is_empty()),
            "unknown rule / decision"
        );
        assert!(!past.contains_key("c"), "bad timestamp");
        assert_eq!(reopened.len(), 1);
        assert_eq!(reopened[0].0, "b");
        assert!(
            reopened[0].2 < 1.0,
            "HALF_OPEN: its wait is over: {reopened:?}"
        );
        let mut gate = Gate::new(&cfg);
        gate.restore(&past);
        gate.tick(now);
        assert_eq!(gate.breaker_state("b"), Some(BreakerState::HalfOpen));
    }

    /// A restart right after logrotate renamed the log (`nocreate`: no live file yet) still
    /// restores limits and OPEN breakers from the rotated file; when both exist, the live
    /// file's newer lines win (a breaker closed since).
    #[test]
    fn restart_right_after_a_rotation_reads_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rule = r#","rule":"autoheal","action":"restart""#;
        let rotated = [
            line("a", 30.0, "intent", rule),
            line("a", 20.0, "intent", rule),
            line(
                "b",
                5.0,
                "breaker",
                r#","from":"CLOSED","breaker":"OPEN","wait_secs":60.0"#,
            ),
            line(
                "c",
                5.0,
                "breaker",
                r#","from":"CLOSED","breaker":"OPEN","wait_secs":60.0"#,
            ),
        ];
        // logrotate leaves the last line without its newline only if sentinel was cut mid-write;
        // tolerate it.
        std::fs::write(rotated_path(&path), rotated.join("\n")).unwrap();
        let mut cfg = HealConfig::default();
        cfg.rules[0].max_actions = 2;
        cfg.rules[0].limit_window_secs = 60.0;
        cfg.backoff.initial_secs = 0.5;
        cfg.backoff.max_secs = 0.5;
        cfg.grace_secs = 0.5;
        let now = Instant::now();
        let (past, reopened) = read_past(&path, &cfg, now, SystemTime::now());
        assert_eq!(past["a"].actions.len(), 2, "actions from the rotated file");
        let ids: Vec<&str> = reopened.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        // The live file has begun: c closed since, a acted once more.
        std::fs::write(
            &path,
            [
                line(
                    "c",
                    1.0,
                    "breaker",
                    r#","from":"HALF_OPEN","breaker":"CLOSED""#,
                ),
                line("a", 2.0, "intent", rule),
            ]
            .join("\n")
                + "\n",
        )
        .unwrap();
        let (past, reopened) = read_past(&path, &cfg, now, SystemTime::now());
        assert_eq!(past["a"].actions.len(), 3, "both files");
        let ids: Vec<&str> = reopened.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(ids, ["b"], "the live file's newer line wins");
        let mut gate = Gate::new(&cfg);
        gate.restore(&past);
        assert_eq!(
            gate.decide(now, &req("a", 2)),
            Verdict::Skip(SkipReason::RuleLimit)
        );
    }

    /// The live file alone fills the 4 MiB budget: the rotated file is not read.
    #[test]
    fn a_long_live_log_is_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rule = r#","rule":"autoheal","action":"restart""#;
        std::fs::write(rotated_path(&path), line("old", 5.0, "intent", rule) + "\n").unwrap();
        let filler = line("x", 5.0, "skipped", "");
        let mut text = String::new();
        while text.len() < PAST_TAIL as usize + 1000 {
            text.push_str(&filler);
            text.push('\n');
        }
        text.push_str(&line("new", 5.0, "intent", rule));
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        let (past, _) = read_past(
            &path,
            &HealConfig::default(),
            Instant::now(),
            SystemTime::now(),
        );
        assert!(past.contains_key("new"));
        assert!(!past.contains_key("old"), "beyond the 4 MiB tail");
    }

    #[test]
    fn replay_of_a_missing_log_is_empty() {
        let (past, reopened) = read_past(
            Path::new("/nonexistent/audit.jsonl"),
            &HealConfig::default(),
            Instant::now(),
            SystemTime::now(),
        );
        assert!(past.is_empty() && reopened.is_empty());
    }
}
