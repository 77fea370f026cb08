//! The whole daemon: `sentinel run` with its config, collector, detection and healing wired
//! together, against a real Docker engine. The healing engine's own behaviour is tested in
//! healing.rs; here the question is whether the daemon runs it, reports it and obeys the
//! config and flags.

mod support;

use std::time::{Duration, Instant};

use sentinel::model::Decision;
use serde_json::Value;
use support::{
    docker::{self, Container, IMAGE, StartEvents},
    sentinel::{BIN, SentinelRun},
};

const FIRST: Duration = Duration::from_secs(30);

fn unhealthy_container(name: &str, labelled: bool) -> Container {
    let mut extra = vec![
        "--health-cmd",
        "test -f /tmp/healthy",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--health-start-period",
        "0s",
    ];
    if labelled {
        extra.extend(["--label", "sentinel.heal=true"]);
    }
    Container::run(name, &extra, IMAGE, &["sleep", "100000"])
}

fn audit_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every audit line is JSON"))
        .collect()
}

/// The default configuration (no file at all) restarts a labelled container that Docker reports
/// unhealthy, leaves an unlabelled one alone, audits both decisions, and shows them in the
/// interval output (`actions`, `healing`).
#[test]
fn daemon_with_no_config_heals_labelled_unhealthy_containers_only() {
    if !docker::ensure() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let audit_arg = audit.to_str().unwrap();
    let labelled = unhealthy_container("snt-pipe-labelled", true);
    let plain = unhealthy_container("snt-pipe-plain", false);
    // Only starts after creation count.
    let events = StartEvents::record();
    let mut run = SentinelRun::start(&["--interval", "500ms", "--audit-log", audit_arg]);
    run.next_interval(FIRST);
    let started = Instant::now();
    let mut restarted = false;
    let mut seen_in_output = false;
    while started.elapsed() < Duration::from_secs(60) {
        let iv = run.next_interval(FIRST);
        assert!(iv.healing.is_some(), "healing state in every interval");
        seen_in_output |= iv
            .actions
            .iter()
            .any(|a| a.container_id == labelled.id && a.decision == Decision::Taken);
        if events.starts(&labelled.id) >= 1 && seen_in_output {
            restarted = true;
            break;
        }
    }
    let took = started.elapsed();
    // Keep running a little so the unlabelled container has every chance to be (wrongly) hit.
    for _ in 0..4 {
        run.next_interval(FIRST);
    }
    let done = run.stop();
    assert!(done.status.success(), "{}", done.stderr);
    eprintln!("labelled unhealthy container restarted by the daemon after {took:?}");
    assert!(
        restarted,
        "labelled container restarted and reported in `actions`"
    );
    assert_eq!(
        events.starts(&plain.id),
        0,
        "unlabelled container never touched"
    );
    let lines = audit_lines(&audit);
    assert!(
        lines
            .iter()
            .any(|l| l["container_id"] == labelled.id.as_str() && l["decision"] == "taken"),
        "audit has the restart: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l["container_id"] == plain.id.as_str()
            && l["decision"] == "skipped"
            && l["reason"] == "not_labelled"),
        "audit says why the unlabelled one was left alone: {lines:?}"
    );
}

/// `--dry-run` decides and audits but never acts.
#[test]
fn dry_run_records_the_decision_and_acts_on_nothing() {
    if !docker::ensure() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let labelled = unhealthy_container("snt-pipe-dry", true);
    let events = StartEvents::record();
    labelled
        .wait_health("unhealthy", Duration::from_secs(30))
        .unwrap();
    let mut run = SentinelRun::start(&[
        "--interval",
        "500ms",
        "--dry-run",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let started = Instant::now();
    let mut decided = false;
    while started.elapsed() < Duration::from_secs(30) && !decided {
        run.next_interval(FIRST);
        decided = audit_lines(&audit)
            .iter()
            .any(|l| l["container_id"] == labelled.id.as_str() && l["reason"] == "dry_run");
    }
    for _ in 0..4 {
        run.next_interval(FIRST);
    }
    let done = run.stop();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        decided,
        "dry-run decision audited: {:?}",
        audit_lines(&audit)
    );
    assert_eq!(events.starts(&labelled.id), 0, "dry run acted on nothing");
    let last = done
        .intervals
        .iter()
        .rev()
        .find_map(|iv| iv.healing.clone());
    assert!(last.unwrap().dry_run);
}

/// A bad config file stops `sentinel run` before anything is loaded, with one line naming the
/// file, line and key, and exit status 78 (EX_CONFIG, which the unit does not restart);
/// `sentinel config check` says the same with exit status 1.
#[test]
fn bad_config_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sentinel.toml");
    std::fs::write(
        &path,
        "[daemon]\ninterval = \"250ms\"\n\n[heal]\ndry_runn = true\n",
    )
    .unwrap();
    for (args, code) in [
        (vec!["run", "--config", path.to_str().unwrap()], 78),
        (vec!["config", "check", path.to_str().unwrap()], 1),
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("line 5") && stderr.contains("heal.dry_runn"),
            "names line and key: {stderr}"
        );
        assert!(!stderr.contains("attached"), "nothing loaded: {stderr}");
    }
    std::fs::write(&path, "[daemon]\ninterval = \"250ms\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Settings come from the file, and flags override the file.
#[test]
fn config_file_settings_apply_and_flags_override_them() {
    if !support::require_root("config_file_settings_apply_and_flags_override_them") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sentinel.toml");
    std::fs::write(
        &path,
        "[daemon]\ninterval = \"200ms\"\ndocker = false\n\n[collector]\niface_capacity = 77\n",
    )
    .unwrap();
    let mut run = SentinelRun::start(&["--config", path.to_str().unwrap()]);
    let ivs: Vec<_> = (0..3).map(|_| run.next_interval(FIRST)).collect();
    let done = run.stop();
    assert!(done.status.success(), "{}", done.stderr);
    let last = &ivs[2];
    assert_eq!(last.collector.iface_capacity, 77, "from the file");
    assert!(
        (150.0..400.0).contains(&last.interval_ms),
        "interval from the file: {}",
        last.interval_ms
    );
    assert_eq!(last.docker, "disabled", "docker = false in the file");
    assert!(last.healing.is_none(), "no Docker, no healing");
    let mut run =
        SentinelRun::start(&["--config", path.to_str().unwrap(), "--iface-capacity", "99"]);
    let iv = run.next_interval(FIRST);
    let done = run.stop();
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(iv.collector.iface_capacity, 99, "flag overrides the file");
}
