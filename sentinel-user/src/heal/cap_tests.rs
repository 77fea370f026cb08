//! The `cap_contender` action (issue 20, item 3) against the in-memory Docker on tokio's paused
//! clock: who it caps, when it does not, and that every cap is lifted (calm, shutdown, the next
//! start-up after a crash) with the quota it replaced.

use std::time::Duration;

use super::config::{ActionConfig, HealConfig, RuleConfig, Trigger};
use super::docker::DockerError;
use super::fake::{Harness, OPT_IN, test_cfg};
use super::{ContainerAnomaly, Contender};
use crate::model::{ActionKind, BreakerState, Decision};

const S: Duration = Duration::from_secs(1);
const PROTECT: (&str, &str) = ("sentinel.protect", "true");
const LIFT_AFTER: u32 = 3;

fn cap_cfg() -> HealConfig {
    let mut cfg = test_cfg();
    cfg.rules = vec![RuleConfig {
        name: "noisy-neighbour".into(),
        trigger: Trigger::Anomaly {
            signal: "runq_latency".parse().unwrap(),
            intervals: 1,
        },
        action: ActionConfig::CapContender {
            cpus: 0.5,
            period_us: 100_000,
            lift_after_intervals: LIFT_AFTER,
            protect_label: "sentinel.protect".into(),
            min_share: 0.5,
            min_wait_percent: 1.0,
        },
        ..RuleConfig::autoheal()
    }];
    cfg
}

/// The victim's run-queue anomaly, naming `by` as its top contender (80% of the wait, 8% of
/// the interval).
fn slowed(victim: &str, by: &str) -> ContainerAnomaly {
    slowed_with(victim, by, 0.8, 0.08)
}

fn slowed_with(victim: &str, by: &str, share: f64, wait_fraction: f64) -> ContainerAnomaly {
    ContainerAnomaly {
        container_id: victim.to_string(),
        signal: "runq_latency".parse().unwrap(),
        score: 5.0,
        slowed_by: Some(format!("{by} ({:.0}%)", share * 100.0)),
        contender: Some(Contender {
            name: by.to_string(),
            share,
            wait_fraction,
        }),
    }
}

/// A victim (protected or not) and an aggressor named `noisy` (opted in or not).
fn pair(h: &Harness, protect: bool, opt_in: bool) -> (String, String) {
    let victim = h
        .docker
        .add("latency", if protect { &[PROTECT] } else { &[] }, "none");
    let noisy = h
        .docker
        .add("noisy", if opt_in { &[OPT_IN] } else { &[] }, "none");
    (victim, noisy)
}

fn quota(h: &Harness, id: &str) -> (i64, i64) {
    let c = h.docker.info(id).unwrap();
    (c.cpu_quota, c.cpu_period)
}

#[tokio::test(start_paused = true)]
async fn the_contender_is_capped_only_when_the_victim_is_protected_and_it_opted_in() {
    let mut h = Harness::new(cap_cfg());
    let (victim, noisy) = pair(&h, true, true);
    h.run_with(2 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(quota(&h, &noisy), (50_000, 100_000));
    assert_eq!(h.docker.actions_on(&noisy).len(), 1, "capped once");
    assert!(
        h.docker.actions_on(&victim).is_empty(),
        "the victim is left alone"
    );
    let audit = h.audit();
    let intent = audit
        .iter()
        .find(|r| r.decision == Decision::Intent)
        .unwrap();
    assert_eq!(intent.container_id, noisy);
    assert_eq!(intent.action, Some(ActionKind::CapContender));
    assert!(
        intent.reason.contains("slowed by noisy") && intent.reason.contains("protects latency"),
        "{}",
        intent.reason
    );
    let cpu = intent.cpu.expect("the replaced quota is recorded");
    assert_eq!(
        (cpu.quota, cpu.period, cpu.prev_quota),
        (50_000, 100_000, 0)
    );
    assert_eq!(h.count(&noisy, Decision::Taken, Some("done")), 1);
}

#[tokio::test(start_paused = true)]
async fn no_cap_without_both_labels_or_on_the_host() {
    // The victim without the protect label.
    let mut h = Harness::new(cap_cfg());
    let (victim, noisy) = pair(&h, false, true);
    h.run_with(3 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(h.docker.actions(), 0);
    assert_eq!(quota(&h, &noisy).0, 0);
    assert_eq!(
        h.count(&victim, Decision::Skipped, Some("not_protected")),
        1
    );
    // The contender without the opt-in label: the gate refuses it.
    let mut h = Harness::new(cap_cfg());
    let (victim, noisy) = pair(&h, true, false);
    h.run_with(3 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(h.docker.actions(), 0);
    assert_eq!(quota(&h, &noisy).0, 0);
    assert_eq!(h.count(&noisy, Decision::Skipped, Some("not_labelled")), 1);
    // Waiting behind the host (or a name Docker does not know): nothing to cap.
    let mut h = Harness::new(cap_cfg());
    let (victim, _) = pair(&h, true, true);
    h.run_with(2 * S, &[slowed(&victim, "host")]).await;
    h.run_with(2 * S, &[slowed(&victim, "podman-thing")]).await;
    assert_eq!(h.docker.actions(), 0);
    assert_eq!(h.count(&victim, Decision::Skipped, Some("no_contender")), 1);
}

/// A contender that caused a minority of the wait, or a sliver of the interval, is not capped
/// (CI once saw an idle neighbour, woken every 100 ms, capped while the host's own work kept
/// an anomaly open); the same contender is capped once it weighs enough.
#[tokio::test(start_paused = true)]
async fn a_minor_contender_is_not_capped() {
    let mut h = Harness::new(cap_cfg());
    let (victim, noisy) = pair(&h, true, true);
    // Top contender, but 30% of the wait.
    h.run_with(3 * S, &[slowed_with(&victim, "noisy", 0.3, 0.08)])
        .await;
    // The main cause, but 0.2% of the interval.
    h.run_with(3 * S, &[slowed_with(&victim, "noisy", 0.9, 0.002)])
        .await;
    assert_eq!(h.docker.actions(), 0);
    assert_eq!(quota(&h, &noisy).0, 0);
    assert_eq!(
        h.count(&victim, Decision::Skipped, Some("minor_contender")),
        1,
        "audited once while the state holds"
    );
    // At the thresholds: capped.
    h.run_with(2 * S, &[slowed_with(&victim, "noisy", 0.5, 0.01)])
        .await;
    assert_eq!(quota(&h, &noisy), (50_000, 100_000));
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_caps_nothing_but_audits() {
    let mut cfg = cap_cfg();
    cfg.dry_run = true;
    let mut h = Harness::new(cfg);
    let (victim, noisy) = pair(&h, true, true);
    h.run_with(3 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(h.docker.actions(), 0);
    assert_eq!(quota(&h, &noisy), (0, 0));
    let skip = h
        .audit()
        .into_iter()
        .find(|r| r.decision == Decision::Skipped)
        .unwrap();
    assert_eq!(
        (skip.container_id.as_str(), skip.reason.as_str()),
        (noisy.as_str(), "dry_run")
    );
    assert!(skip.dry_run);
    h.engine.shutdown(h.now).await;
    assert_eq!(h.docker.lifts_on(&noisy), 0, "nothing to lift");
}

#[tokio::test(start_paused = true)]
async fn the_cap_is_lifted_after_n_calm_intervals_restoring_the_old_quota() {
    let mut h = Harness::new(cap_cfg());
    let (victim, noisy) = pair(&h, true, true);
    h.docker.set(&noisy, |c| {
        c.cpu_quota = 150_000;
        c.cpu_period = 100_000;
    });
    // Contention goes on: the cap stays (and is not set twice).
    h.run_with(6 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(quota(&h, &noisy), (50_000, 100_000));
    assert_eq!(h.docker.actions_on(&noisy).len(), 1);
    // Calm for one interval less than needed: still capped.
    h.run((LIFT_AFTER - 1) * S).await;
    assert_eq!(quota(&h, &noisy).0, 50_000);
    assert_eq!(h.docker.lifts_on(&noisy), 0);
    // One more calm interval: lifted.
    h.run(S).await;
    assert_eq!(quota(&h, &noisy), (150_000, 100_000));
    assert_eq!(h.count(&noisy, Decision::Lifted, Some("calm")), 1);
    // An anomaly in between starts the count over.
    let mut h = Harness::new(cap_cfg());
    let (victim, noisy) = pair(&h, true, true);
    h.run_with(S, &[slowed(&victim, "noisy")]).await;
    h.run((LIFT_AFTER - 1) * S).await;
    h.run_with(S, &[slowed(&victim, "noisy")]).await;
    h.run((LIFT_AFTER - 1) * S).await;
    assert_eq!(h.docker.lifts_on(&noisy), 0);
    h.run(S).await;
    assert_eq!(h.docker.lifts_on(&noisy), 1);
    assert_eq!(
        quota(&h, &noisy).0,
        -1,
        "unlimited again, as Docker stores it"
    );
}

/// Seen against a real dockerd: the capped spinner waits for a CPU too, and its own
/// `runq_latency` anomaly fires the rule for it (not protected: skipped). That must not count
/// as its cap failing verification.
#[tokio::test(start_paused = true)]
async fn the_contenders_own_anomaly_does_not_fail_its_cap() {
    let mut h = Harness::new(cap_cfg());
    let (victim, noisy) = pair(&h, true, true);
    let both = [slowed(&victim, "noisy"), slowed(&noisy, "latency")];
    h.run_with(10 * S, &both).await;
    assert_eq!(quota(&h, &noisy).0, 50_000);
    assert_eq!(h.count(&noisy, Decision::Skipped, Some("not_protected")), 1);
    let failures: usize = h
        .snapshot()
        .state
        .breakers
        .iter()
        .map(|b| b.view.failures_in_window)
        .sum();
    assert_eq!(failures, 0, "{:?}", h.audit());
}

#[tokio::test(start_paused = true)]
async fn the_cap_is_lifted_on_shutdown() {
    let mut h = Harness::new(cap_cfg());
    let (victim, noisy) = pair(&h, true, true);
    h.run_with(2 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(quota(&h, &noisy).0, 50_000);
    h.engine.shutdown(h.now).await;
    assert_eq!(quota(&h, &noisy).0, -1);
    assert_eq!(h.count(&noisy, Decision::Lifted, Some("shutdown")), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cap_left_by_a_crash_is_lifted_at_the_next_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut first = Harness::with_audit(cap_cfg(), path.clone(), tempfile::tempdir().unwrap());
    first.docker.connect();
    let (victim, noisy) = pair(&first, true, true);
    first.docker.set(&noisy, |c| c.cpu_quota = 200_000);
    first.run_with(2 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(quota(&first, &noisy).0, 50_000);
    drop(first); // a crash: no shutdown, no lift
    // The next process, with the cap rule gone from its config: the cap is lifted anyway.
    let mut second = Harness::with_audit(test_cfg(), path, dir);
    let noisy2 = second.docker.add("noisy", &[OPT_IN], "none");
    assert_eq!(noisy, noisy2);
    second.docker.set(&noisy, |c| {
        c.cpu_quota = 50_000;
        c.cpu_period = 100_000;
    });
    second.run(S).await;
    assert_eq!(
        quota(&second, &noisy).0,
        50_000,
        "Docker down: nothing lifted yet"
    );
    second.docker.connect();
    second.run(S).await;
    assert_eq!(quota(&second, &noisy).0, 200_000);
    assert_eq!(second.count(&noisy, Decision::Lifted, Some("start_up")), 1);
    // Lifted once: a third start finds nothing to lift.
    second.run(3 * S).await;
    assert_eq!(second.docker.lifts_on(&noisy), 1);
    assert!(super::audit::unlifted_caps(&second.audit_path).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_breaker_and_back_off_apply_to_the_contender() {
    let mut cfg = cap_cfg();
    cfg.breaker.failure_threshold = 1;
    cfg.breaker.open_secs = 30.0;
    cfg.grace_secs = 0.0;
    let mut h = Harness::new(cfg);
    let (victim, noisy) = pair(&h, true, true);
    h.docker.fail_next(
        &noisy,
        DockerError::Api {
            status: 500,
            message: "boom".into(),
        },
    );
    h.run_with(10 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(h.docker.actions_on(&noisy).len(), 1, "one try, then OPEN");
    assert_eq!(h.count(&noisy, Decision::Failed, None), 1);
    assert_eq!(h.breaker_path(&noisy)[0].0, BreakerState::Open);
    assert_eq!(h.count(&noisy, Decision::Skipped, Some("breaker_open")), 1);
    assert_eq!(quota(&h, &noisy).0, 0);
    // The breaker half-opens after its wait: one trial, which caps.
    h.run_with(25 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(h.docker.actions_on(&noisy).len(), 2);
    assert_eq!(quota(&h, &noisy).0, 50_000);

    // Back-off: a cap lifted and needed again waits out the container's back-off.
    let mut cfg = cap_cfg();
    cfg.backoff.initial_secs = 20.0;
    cfg.backoff.max_secs = 60.0;
    cfg.grace_secs = 0.0;
    let mut h = Harness::new(cfg);
    let (victim, noisy) = pair(&h, true, true);
    h.run_with(S, &[slowed(&victim, "noisy")]).await;
    h.run(LIFT_AFTER * S).await;
    assert_eq!(h.docker.lifts_on(&noisy), 1);
    h.run_with(5 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(h.docker.actions_on(&noisy).len(), 1);
    assert_eq!(h.count(&noisy, Decision::Skipped, Some("backoff")), 1);
    h.run_with(20 * S, &[slowed(&victim, "noisy")]).await;
    assert_eq!(h.docker.actions_on(&noisy).len(), 2);
}

#[test]
fn a_bad_cap_rule_is_one_error_line_per_key() {
    let mut cfg = cap_cfg();
    cfg.rules[0].action = ActionConfig::CapContender {
        cpus: 0.001,
        period_us: 100_000,
        lift_after_intervals: 0,
        protect_label: "sentinel.heal".into(),
        min_share: 0.0,
        min_wait_percent: 101.0,
    };
    cfg.rules[0].trigger = Trigger::Unhealthy;
    let errs: Vec<String> = cfg
        .validate()
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    for key in [
        "rules[0].trigger",
        "rules[0].action.cpus",
        "rules[0].action.lift_after_intervals",
        "rules[0].action.protect_label",
        "rules[0].action.min_share",
        "rules[0].action.min_wait_percent",
    ] {
        assert_eq!(
            errs.iter()
                .filter(|e| e.starts_with(&format!("heal.{key}:")))
                .count(),
            1,
            "{key}: {errs:?}"
        );
    }
    assert_eq!(errs.len(), 6, "{errs:?}");
    assert!(cap_cfg().validate().is_ok());
}
