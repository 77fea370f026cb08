//! FAULT-MATRIX rows D1-D15 and L1-L5 (docs/FAULT-MATRIX.md) against the in-memory Docker
//! (`heal::fake`) on tokio's paused clock: no Docker engine, no real waiting. The same rows
//! run against a real dockerd in tests/healing.rs.

use std::time::Duration;

use super::config::{ActionConfig, RuleConfig, Trigger};
use super::docker::DockerError;
use super::fake::{AfterStart, HOSTILE_VALUES, Harness, OPT_IN, test_cfg};
use super::{ContainerAnomaly, DockerState};
use crate::model::{BreakerState, Decision};

const S: Duration = Duration::from_secs(1);

fn anomaly_rule(signal: &str, intervals: u32) -> RuleConfig {
    RuleConfig {
        name: format!("anomaly-{signal}"),
        trigger: Trigger::Anomaly {
            signal: signal.parse().unwrap(),
            intervals,
        },
        action: ActionConfig::Restart {
            stop_timeout_secs: 1,
        },
        ..RuleConfig::autoheal()
    }
}

fn died_rule() -> RuleConfig {
    RuleConfig {
        name: "died".into(),
        trigger: Trigger::Died { oom_only: false },
        action: ActionConfig::Start,
        ..RuleConfig::autoheal()
    }
}

fn anomaly(id: &str, signal: &str) -> ContainerAnomaly {
    ContainerAnomaly {
        container_id: id.to_string(),
        signal: signal.parse().unwrap(),
        score: 1.0,
        slowed_by: None,
        contender: None,
    }
}

/// The next action on `id` fails for the container (a server error): one breaker failure.
fn fail_once(h: &Harness, id: &str) {
    h.docker.fail_next(
        id,
        DockerError::Api {
            status: 500,
            message: "boom".into(),
        },
    );
}

/// Settings where one failure opens a container's breaker for `open_secs`.
fn one_failure_opens(open_secs: f64) -> crate::heal::config::HealConfig {
    let mut cfg = test_cfg();
    cfg.breaker.failure_threshold = 1;
    cfg.breaker.open_secs = open_secs;
    cfg.backoff.initial_secs = 0.0;
    cfg.grace_secs = 0.0;
    cfg
}

/// Docker did nothing to `id`, and the audit says why exactly once.
fn left_alone(h: &Harness, id: &str, reason: &str) {
    assert!(h.docker.actions_on(id).is_empty(), "{:?}", h.audit());
    assert_eq!(
        h.count(id, Decision::Skipped, Some(reason)),
        1,
        "{:?}",
        h.audit()
    );
}

/// `id` stopped with this exit code.
fn exited(h: &Harness, id: &str, code: i64) {
    h.docker.set(id, |c| {
        c.running = false;
        c.status = "exited".into();
        c.exit_code = code;
    });
}

fn sick(h: &Harness, id: &str) {
    h.docker.set(id, |c| c.health = "unhealthy".into());
}

// ---- D1 Docker down at start ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d1_docker_down_at_start_is_monitor_only_with_one_audit_line() {
    let mut cfg = test_cfg();
    cfg.rules.push(anomaly_rule("cpu", 1));
    let mut h = Harness::without_docker(cfg);
    h.docker
        .disconnect("docker unreachable at unix:///x: Socket not found");
    let a = [anomaly("feedface", "cpu")];
    h.run_with(3 * S, &a).await;
    // The watcher keeps retrying: every attempt fails again.
    for _ in 0..3 {
        h.docker
            .disconnect("docker unreachable at unix:///x: Socket not found");
    }
    h.run_with(3 * S, &a).await;
    let s = h.snapshot();
    assert_eq!(s.state.docker, DockerState::Unreachable);
    assert!(s.state.docker_reason.unwrap().contains("unix:///x"));
    let docker_lines = h
        .audit()
        .iter()
        .filter(|r| r.decision == Decision::Docker)
        .count();
    assert_eq!(docker_lines, 1, "one line per transition: {:?}", h.audit());
    assert_eq!(
        h.count("feedface", Decision::Skipped, Some("docker_unreachable")),
        1,
        "due action audited once"
    );
    assert_eq!(h.docker.actions(), 0);
}

#[tokio::test(start_paused = true)]
async fn d1_nothing_is_acted_on_before_docker_first_answers() {
    let mut cfg = test_cfg();
    cfg.rules.push(anomaly_rule("cpu", 1));
    let mut h = Harness::without_docker(cfg);
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.run_with(3 * S, &[anomaly(&id, "cpu")]).await;
    assert_eq!(h.snapshot().state.docker, DockerState::Connecting);
    left_alone(&h, &id, "docker_unreachable");
}

// ---- D2 Docker stopped mid-run, then back -----------------------------------------------

#[tokio::test(start_paused = true)]
async fn d2_container_gone_bad_while_docker_was_away_is_healed_on_return_once() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "healthy");
    h.run(2 * S).await;
    h.docker.disconnect("event stream ended");
    h.run(2 * S).await;
    assert_eq!(h.snapshot().state.docker, DockerState::Unreachable);
    sick(&h, &id);
    h.run(3 * S).await;
    assert_eq!(h.docker.actions(), 0, "nothing acted on while away");
    h.docker.connect();
    // The return is noticed on the next tick, which re-reads every container at once.
    h.tick().await;
    h.advance(Duration::from_millis(10)).await;
    h.tick().await;
    assert_eq!(
        h.docker.actions_on(&id).len(),
        1,
        "within one tick of the return"
    );
    h.run(10 * S).await;
    assert_eq!(h.docker.actions_on(&id).len(), 1, "no duplicate action");
    let docker: Vec<String> = h
        .audit()
        .iter()
        .filter(|r| r.decision == Decision::Docker)
        .map(|r| r.reason.clone())
        .collect();
    assert_eq!(docker, ["reachable", "unreachable", "reachable"]);
}

#[tokio::test(start_paused = true)]
async fn d2_a_container_removed_while_docker_was_away_is_forgotten_on_return() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.run(2 * S).await;
    assert_eq!(h.engine.tracked_containers(), 1);
    h.docker.disconnect("gone");
    h.run(S).await;
    h.docker.remove(&id);
    h.docker.connect();
    h.run(2 * S).await;
    assert_eq!(
        h.engine.tracked_containers(),
        0,
        "state of the gone id dropped"
    );
}

// ---- D3 Docker hung -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d3_a_hung_docker_costs_each_pass_half_an_interval_and_calls_never_pile_up() {
    let mut h = Harness::new(test_cfg());
    h.docker.add("web", &[OPT_IN], "healthy");
    h.run(3 * S).await;
    h.docker.hang(true);
    for _ in 0..5 {
        let t0 = tokio::time::Instant::now();
        h.engine.on_interval(h.now, &[]).await;
        assert!(
            t0.elapsed() <= Duration::from_millis(510),
            "pass bounded: {:?}",
            t0.elapsed()
        );
        for _ in 0..4 {
            h.advance(Duration::from_millis(250)).await;
            h.tick().await;
        }
    }
    let s = h.snapshot();
    assert!(
        s.state.counters.passes_cut_short >= 5,
        "{:?}",
        s.state.counters
    );
    assert_eq!(
        h.docker.calls_max(),
        1,
        "one call at a time, cut off each time"
    );
}

#[tokio::test(start_paused = true)]
async fn d3_an_action_cut_off_while_docker_hangs_counts_only_for_the_global_breaker() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.docker.action_delay(60 * S);
    h.interval_with(&[]).await;
    assert_eq!(h.snapshot().state.in_flight, 1);
    h.docker.hang(true);
    // Action time-out 5 s, then a bounded ping finds Docker hung.
    for _ in 0..30 {
        h.advance(Duration::from_millis(250)).await;
        h.tick().await;
    }
    let failed = h.count(&id, Decision::Failed, Some("timeout"));
    assert_eq!(failed, 1, "{:?}", h.audit());
    let s = h.snapshot();
    let b = s
        .state
        .breakers
        .iter()
        .find(|b| b.container_id == id)
        .unwrap();
    assert_eq!(b.view.failures_in_window, 0, "not the container's fault");
    assert_eq!(s.state.global_breaker.failures_in_window, 1);
}

// ---- D4 container removed while its restart is in flight ---------------------------------

#[tokio::test(start_paused = true)]
async fn d4_container_gone_under_an_action_is_a_clean_failure_and_its_state_is_freed() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    let other = h.docker.add("db", &[OPT_IN], "healthy");
    h.docker.fail_next(
        &id,
        DockerError::ContainerGone {
            message: "No such container: web".into(),
        },
    );
    h.run(S).await;
    let f = h
        .audit()
        .into_iter()
        .find(|r| r.container_id == id && r.decision == Decision::Failed)
        .expect("failed line");
    assert_eq!(f.reason, "container_gone");
    assert!(f.error.unwrap().contains("No such container: web"));
    h.docker.remove(&id);
    h.docker.event(&id, "destroy", h.now);
    sick(&h, &other);
    h.run(3 * S).await;
    assert_eq!(
        h.docker.actions_on(&id).len(),
        1,
        "no retry for the gone id"
    );
    assert_eq!(h.docker.actions_on(&other).len(), 1, "others unaffected");
    assert!(
        h.snapshot()
            .state
            .breakers
            .iter()
            .all(|b| b.container_id != id),
        "state for the id dropped"
    );
}

// ---- D5 operator stops a labelled container ----------------------------------------------

#[tokio::test(start_paused = true)]
async fn d5_a_container_stopped_by_an_operator_is_left_alone_until_started_again() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    exited(&h, &id, 0);
    h.docker.event(&id, "stop", h.now);
    h.run(60 * S).await;
    left_alone(&h, &id, "stopped_by_operator");
    // Someone else starts it; it is unhealthy: now it is sentinel's again.
    h.docker.set(&id, |c| {
        c.running = true;
        c.status = "running".into();
    });
    h.docker.event(&id, "start", h.now);
    h.run(3 * S).await;
    assert_eq!(h.docker.actions_on(&id).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn d5_a_stop_seen_only_as_its_exit_code_is_an_operator_stop_too() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    exited(&h, &id, 143);
    h.run(10 * S).await;
    left_alone(&h, &id, "stopped_by_operator");
}

#[tokio::test(start_paused = true)]
async fn d5_echoes_of_sentinels_own_restart_are_not_an_operator_stop() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.run(S).await;
    assert_eq!(h.docker.actions_on(&id).len(), 1);
    // The restart's own kill/die/start events arrive a moment after the call returned.
    h.docker.event(&id, "kill", h.now);
    h.docker.event(&id, "start", h.now);
    sick(&h, &id);
    h.run(30 * S).await;
    assert_eq!(
        h.count(&id, Decision::Skipped, Some("stopped_by_operator")),
        0
    );
    assert!(h.docker.actions_on(&id).len() >= 2, "still healed");
}

// ---- D6 Docker's own restart policy --------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d6_a_container_docker_is_restarting_is_left_to_docker() {
    let mut cfg = test_cfg();
    cfg.rules = vec![died_rule()];
    let mut h = Harness::new(cfg);
    let id = h.docker.add("worker", &[OPT_IN], "none");
    h.docker.set(&id, |c| {
        c.running = false;
        c.restarting = true;
        c.status = "restarting".into();
        c.exit_code = 1;
        c.restart_policy = "always".into();
    });
    h.run(20 * S).await;
    left_alone(&h, &id, "docker_restart_policy_active");
}

#[tokio::test(start_paused = true)]
async fn d6_a_crashed_worker_whose_policy_gave_up_is_started() {
    let mut cfg = test_cfg();
    cfg.rules = vec![died_rule()];
    let mut h = Harness::new(cfg);
    let id = h.docker.add("worker", &[OPT_IN], "none");
    h.docker.set(&id, |c| {
        c.running = false;
        c.status = "exited".into();
        c.exit_code = 3;
        c.restart_policy = "on-failure".into();
        c.max_retry = 2;
        c.restart_count = 2;
    });
    h.run(2 * S).await;
    assert!(matches!(
        h.docker.actions_on(&id).as_slice(),
        [ActionConfig::Start]
    ));
    let intent = h
        .audit()
        .into_iter()
        .find(|r| r.decision == Decision::Intent)
        .unwrap();
    assert_eq!(intent.reason, "died: exit_code 3");
}

// ---- D7 flapping container ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d7_a_flapper_is_bounded_and_its_breaker_opens_then_tries_once_per_half_open() {
    let mut h = Harness::new(crate::heal::config::HealConfig {
        storm_hold_secs: 0.0,
        ..Default::default()
    });
    let id = h.docker.add("flapper", &[OPT_IN], "unhealthy");
    h.docker.after_start(&id, AfterStart::StaysSick);
    h.run(600 * S).await;
    let actions = h.docker.actions_on(&id).len();
    assert!(
        (3..=7).contains(&actions),
        "default curve: at most 7 in 10 min, got {actions}"
    );
    let path = h.breaker_path(&id);
    let states: Vec<BreakerState> = path.iter().map(|p| p.0).collect();
    assert!(
        states.starts_with(&[
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::Open
        ]),
        "{path:?}"
    );
    let waits: Vec<f64> = path
        .iter()
        .filter(|p| p.0 == BreakerState::Open)
        .filter_map(|p| p.1)
        .collect();
    assert!(
        waits.windows(2).all(|w| w[1] > w[0]),
        "growing waits {waits:?}"
    );
    // Exactly one trial per HALF_OPEN: between a HALF_OPEN line and the next breaker line,
    // one intent.
    let lines: Vec<_> = h
        .audit()
        .into_iter()
        .filter(|r| r.container_id == id)
        .collect();
    for (i, r) in lines.iter().enumerate() {
        if r.decision == Decision::Breaker && r.breaker == Some(BreakerState::HalfOpen) {
            let trials = lines[i + 1..]
                .iter()
                .take_while(|x| x.decision != Decision::Breaker)
                .filter(|x| x.decision == Decision::Intent)
                .count();
            assert!(trials <= 1, "{trials} trials in one HALF_OPEN");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn d7_back_off_doubles_between_actions_on_one_container() {
    let mut cfg = test_cfg();
    cfg.backoff.initial_secs = 2.0;
    cfg.backoff.max_secs = 16.0;
    cfg.grace_secs = 0.0;
    cfg.breaker.failure_threshold = 100;
    let mut h = Harness::new(cfg);
    let id = h.docker.add("flapper", &[OPT_IN], "unhealthy");
    h.docker.after_start(&id, AfterStart::StaysSick);
    h.run(32 * S).await;
    // Actions at about 0, 2, 6, 14, 30 s: 5 in 32 s, not 32.
    let n = h.docker.actions_on(&id).len();
    assert!((4..=6).contains(&n), "{n} actions");
    assert!(h.count(&id, Decision::Skipped, Some("backoff")) >= 3);
}

// ---- D8 restart storm across containers -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d8_most_containers_tripping_together_is_a_storm_and_none_is_touched() {
    let mut h = Harness::new(test_cfg());
    let ids: Vec<String> = (0..6)
        .map(|i| h.docker.add(&format!("c{i}"), &[OPT_IN], "healthy"))
        .collect();
    h.run(2 * S).await;
    for id in &ids[..4] {
        sick(&h, id);
    }
    h.run(5 * S).await;
    assert_eq!(h.docker.actions(), 0);
    let alerts: Vec<_> = h
        .audit()
        .into_iter()
        .filter(|r| r.decision == Decision::Alert)
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].reason, "storm_guard");
    for id in &ids[..4] {
        assert_eq!(h.count(id, Decision::Skipped, Some("storm_guard")), 1);
    }
    for id in &ids[..4] {
        h.docker.set(id, |c| c.health = "healthy".into());
    }
    h.run(3 * S).await;
    assert!(h.audit().iter().any(|r| r.reason == "storm_over"));
}

#[tokio::test(start_paused = true)]
async fn d8_the_storm_hold_counts_containers_whose_events_arrive_apart() {
    let mut cfg = test_cfg();
    cfg.storm_hold_secs = 1.0;
    let mut h = Harness::new(cfg);
    let ids: Vec<String> = (0..6)
        .map(|i| h.docker.add(&format!("c{i}"), &[OPT_IN], "healthy"))
        .collect();
    h.run(2 * S).await;
    // Health events 200 ms apart, each handled on its own tick.
    for id in &ids[..4] {
        sick(&h, id);
        h.docker.event(id, "health_status: unhealthy", h.now);
        h.advance(Duration::from_millis(200)).await;
        h.tick().await;
    }
    h.run(3 * S).await;
    assert_eq!(h.docker.actions(), 0, "{:?}", h.audit());
}

#[tokio::test(start_paused = true)]
async fn d8_the_host_wide_cap_holds_in_every_window() {
    let mut cfg = test_cfg();
    cfg.global_cap.max_actions = 3;
    cfg.global_cap.window_secs = 60.0;
    cfg.storm_min_containers = 100;
    let mut h = Harness::new(cfg);
    let ids: Vec<String> = (0..6)
        .map(|i| h.docker.add(&format!("c{i}"), &[OPT_IN], "healthy"))
        .collect();
    for id in &ids {
        sick(&h, id);
        h.run(2 * S).await;
    }
    h.run(20 * S).await;
    assert_eq!(h.docker.actions(), 3);
    assert!(
        ids.iter()
            .any(|id| h.count(id, Decision::Skipped, Some("rate_cap")) == 1)
    );
}

// ---- D9 healing action hangs ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d9_a_hanging_action_is_cut_at_its_time_out_and_the_permit_returns() {
    let mut cfg = test_cfg();
    cfg.action_timeout_secs = 2.0;
    cfg.max_concurrent_actions = 1;
    let mut h = Harness::new(cfg);
    let id = h.docker.add("stuck", &[OPT_IN], "unhealthy");
    h.docker.action_delay(600 * S);
    h.run(4 * S).await;
    let f = h
        .audit()
        .into_iter()
        .find(|r| r.container_id == id && r.decision == Decision::Failed)
        .expect("cut off");
    assert_eq!(f.reason, "timeout");
    assert!(f.duration_ms.unwrap() <= 3000, "{f:?}");
    let s = h.snapshot();
    assert_eq!(s.state.permits_available, s.state.permits_total);
    // The next due action proceeds.
    h.docker.action_delay(Duration::ZERO);
    let next = h.docker.add("next", &[OPT_IN], "unhealthy");
    h.run(2 * S).await;
    assert_eq!(h.count(&next, Decision::Taken, Some("done")), 1);
}

#[tokio::test(start_paused = true)]
async fn d9_an_exec_with_a_non_zero_exit_is_a_failure_with_its_code() {
    let mut cfg = test_cfg();
    cfg.rules[0].action = ActionConfig::Exec {
        cmd: vec!["redis-cli".into(), "FLUSHALL".into()],
    };
    let mut h = Harness::new(cfg);
    let id = h.docker.add("cache", &[OPT_IN], "unhealthy");
    h.docker.exec_exit(3);
    h.run(S).await;
    let f = h
        .audit()
        .into_iter()
        .find(|r| r.container_id == id && r.decision == Decision::Failed)
        .unwrap();
    assert_eq!(
        (f.reason.as_str(), f.exit_code),
        ("exec_exit_nonzero", Some(3))
    );
    let s = h.snapshot();
    assert_eq!(s.state.breakers[0].view.failures_in_window, 1);
}

// ---- D10 concurrency limit saturated -----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d10_permit_waits_are_bounded_and_never_breaker_failures() {
    let mut cfg = test_cfg();
    cfg.max_concurrent_actions = 1;
    cfg.permit_wait_secs = 1.0;
    let mut h = Harness::new(cfg);
    let ids: Vec<String> = (0..3)
        .map(|i| h.docker.add(&format!("c{i}"), &[OPT_IN], "unhealthy"))
        .collect();
    h.docker.action_delay(3 * S);
    h.run(5 * S).await;
    let waited: usize = ids
        .iter()
        .map(|id| h.count(id, Decision::NotRecorded, Some("permit_wait_timeout")))
        .sum();
    assert!(waited >= 2, "{:?}", h.audit());
    let s = h.snapshot();
    assert!(
        s.state
            .breakers
            .iter()
            .all(|b| b.view.failures_in_window == 0 && b.view.state == BreakerState::Closed)
    );
    assert_eq!(s.state.global_breaker.failures_in_window, 0);
    assert_eq!(s.state.counters.not_recorded as usize, waited);
}

// ---- D11 trial never completes / cancelled at shutdown ------------------------------------

#[tokio::test(start_paused = true)]
async fn d11_shutdown_cancels_in_flight_actions_without_blaming_anyone() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.docker.action_delay(30 * S);
    h.interval_with(&[]).await;
    assert_eq!(h.snapshot().state.in_flight, 1);
    h.engine.shutdown(h.now).await;
    assert_eq!(
        h.count(&id, Decision::Cancelled, Some("cancelled_shutdown")),
        1
    );
    let s = h.snapshot();
    assert_eq!(s.state.in_flight, 0);
    assert_eq!(s.state.permits_available, s.state.permits_total);
    assert_eq!(s.state.breakers[0].view.failures_in_window, 0);
    assert_eq!(s.state.global_breaker.failures_in_window, 0);
}

#[tokio::test(start_paused = true)]
async fn d11_a_half_open_trial_that_never_reports_reopens_the_breaker() {
    let mut cfg = one_failure_opens(2.0);
    cfg.breaker.half_open_max_wait_secs = 3.0;
    cfg.action_timeout_secs = 100.0;
    let mut h = Harness::new(cfg);
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    fail_once(&h, &id);
    h.run(S).await;
    h.docker.action_delay(1000 * S);
    h.run(8 * S).await;
    let path = h.breaker_path(&id);
    assert!(
        path.iter().map(|p| p.0).collect::<Vec<_>>().starts_with(&[
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::Open
        ]),
        "{path:?}"
    );
    assert!(
        h.audit().iter().any(|r| r.reason == "trial_timeout"),
        "{:?}",
        h.audit()
    );
}

// ---- D12 breaker recovery with no traffic ------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d12_an_open_breaker_half_opens_on_time_with_no_trigger_at_all() {
    let mut h = Harness::new(one_failure_opens(10.0));
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    fail_once(&h, &id);
    h.run(S).await;
    let opened = h.now;
    assert_eq!(
        h.snapshot().state.breakers[0].view.state,
        BreakerState::Open
    );
    h.docker.set(&id, |c| c.health = "healthy".into());
    while h.now < opened + 10 * S {
        h.advance(Duration::from_millis(250)).await;
        h.tick().await;
    }
    h.advance(Duration::from_millis(250)).await;
    h.tick().await;
    assert_eq!(
        h.snapshot().state.breakers[0].view.state,
        BreakerState::HalfOpen,
        "on time, from the tick alone"
    );
    assert_eq!(h.docker.actions_on(&id).len(), 1, "no action needed for it");
}

#[tokio::test(start_paused = true)]
async fn d12_a_successful_trial_closes_the_breaker_after_its_verify_window() {
    let mut h = Harness::new(one_failure_opens(2.0));
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    fail_once(&h, &id);
    h.run(12 * S).await;
    let states: Vec<BreakerState> = h.breaker_path(&id).into_iter().map(|p| p.0).collect();
    assert_eq!(
        states,
        [
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::Closed
        ]
    );
}

// ---- D13 Docker API access partly denied ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d13_a_denied_action_is_audited_and_is_not_a_container_failure() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.docker.fail_next(
        &id,
        DockerError::DeniedByApi {
            method: "POST",
            path: format!("/containers/{id}/restart"),
            message: "Forbidden".into(),
        },
    );
    h.run(S).await;
    let f = h
        .audit()
        .into_iter()
        .find(|r| r.decision == Decision::Failed)
        .unwrap();
    assert_eq!(f.reason, "denied_by_docker_api");
    assert!(f.error.unwrap().contains("POST /containers/"));
    let s = h.snapshot();
    assert_eq!(s.state.breakers[0].view.failures_in_window, 0);
    assert_eq!(s.state.global_breaker.failures_in_window, 0);
}

// ---- D14 API version ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn d14_the_negotiated_api_version_is_reported_and_audited() {
    let mut h = Harness::new(test_cfg());
    h.run(S).await;
    assert_eq!(h.snapshot().state.api_version.as_deref(), Some("1.41"));
    let up = h
        .audit()
        .into_iter()
        .find(|r| r.decision == Decision::Docker)
        .unwrap();
    assert_eq!(
        (up.reason.as_str(), up.outcome.as_deref()),
        ("reachable", Some("api 1.41"))
    );
    h.docker.disconnect("gone");
    h.tick().await;
    assert_eq!(
        h.snapshot().state.api_version,
        None,
        "no version while away"
    );
}

// ---- D15 health start period and post-action grace ---------------------------------------

#[tokio::test(start_paused = true)]
async fn d15_a_container_still_starting_is_never_judged() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("slow", &[OPT_IN], "starting");
    h.run(30 * S).await;
    assert_eq!(h.docker.actions(), 0);
    assert!(h.audit().iter().all(|r| r.container_id != id));
}

#[tokio::test(start_paused = true)]
async fn d15_a_second_trigger_inside_the_grace_period_is_skipped() {
    let mut cfg = test_cfg();
    cfg.grace_secs = 10.0;
    cfg.backoff.initial_secs = 0.0;
    let mut h = Harness::new(cfg);
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.docker.after_start(&id, AfterStart::StaysSick);
    h.run(5 * S).await;
    assert_eq!(h.docker.actions_on(&id).len(), 1);
    assert_eq!(h.count(&id, Decision::Skipped, Some("grace_period")), 1);
    h.run(10 * S).await;
    assert_eq!(
        h.docker.actions_on(&id).len(),
        2,
        "judged again after the grace"
    );
}

// ---- L1 unlabelled ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn l1_an_unlabelled_container_is_never_touched_and_audited_once() {
    let mut h = Harness::new(test_cfg());
    let bare = h.docker.add("bare", &[], "unhealthy");
    let opted = h.docker.add("opted", &[OPT_IN], "unhealthy");
    h.run(20 * S).await;
    assert!(h.docker.actions_on(&bare).is_empty());
    assert_eq!(h.count(&bare, Decision::Skipped, Some("not_labelled")), 1);
    assert_eq!(h.docker.actions_on(&opted).len(), 1);
}

// ---- L2 label from the image -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn l2_an_opt_in_inherited_from_the_image_is_refused_unless_allowed() {
    for allow in [false, true] {
        let mut cfg = test_cfg();
        cfg.allow_image_label = allow;
        let mut h = Harness::new(cfg);
        let id = h.docker.add("img", &[OPT_IN], "unhealthy");
        h.docker.set(&id, |c| {
            c.image_labels.insert(OPT_IN.0.into(), "true".into());
        });
        h.run(3 * S).await;
        if allow {
            assert_eq!(h.docker.actions_on(&id).len(), 1);
        } else {
            assert!(h.docker.actions_on(&id).is_empty());
            assert_eq!(h.count(&id, Decision::Skipped, Some("label_from_image")), 1);
        }
    }
}

// ---- L3 hostile label values --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn l3_only_the_exact_value_true_opts_in() {
    let mut h = Harness::new(test_cfg());
    let huge = "true".repeat(1 << 18);
    let ids: Vec<String> = HOSTILE_VALUES
        .iter()
        .chain([&huge.as_str()])
        .enumerate()
        .map(|(i, v)| {
            h.docker
                .add(&format!("h{i}"), &[(OPT_IN.0, v)], "unhealthy")
        })
        .collect();
    h.run(10 * S).await;
    assert_eq!(h.docker.actions(), 0);
    for id in &ids {
        assert_eq!(h.count(id, Decision::Skipped, Some("not_labelled")), 1);
    }
    let size = std::fs::metadata(&h.audit_path).unwrap().len();
    assert!(size < 64 * 1024, "the 1 MiB value is not copied: {size}");
}

// ---- L4 workload tuning labels -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn l4_tuning_labels_never_reach_the_docker_call() {
    let mut cfg = test_cfg();
    cfg.rules[0].action = ActionConfig::Restart {
        stop_timeout_secs: 7,
    };
    let mut h = Harness::new(cfg);
    let id = h.docker.add(
        "tuned",
        &[
            OPT_IN,
            ("sentinel.stop_timeout", "-1"),
            ("sentinel.heal.stop_timeout_secs", "1e12"),
            ("sentinel.heal.cmd", "10s; rm -rf /"),
            ("com.docker.stop-timeout", "NaN"),
        ],
        "unhealthy",
    );
    h.run(2 * S).await;
    assert_eq!(
        h.docker.actions_on(&id),
        [ActionConfig::Restart {
            stop_timeout_secs: 7
        }],
        "only the config's values"
    );
}

// ---- L5 hostile names in output -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn l5_hostile_names_stay_one_escaped_line_in_the_audit() {
    let mut h = Harness::new(test_cfg());
    let names = [
        "quo\"te",
        "new\nline",
        "esc\u{1b}[2Jclear",
        &"n".repeat(255),
        "{}\\",
    ];
    for n in names {
        h.docker.add(n, &[OPT_IN, ("x{}", "\\\"")], "unhealthy");
    }
    h.run(3 * S).await;
    let text = std::fs::read_to_string(&h.audit_path).unwrap();
    assert!(!text.contains('\u{1b}'), "raw ESC in the audit");
    let lines = text.lines().count();
    assert_eq!(lines, h.audit().len(), "one record per line");
    assert!(
        h.audit().iter().any(|r| r.container_name == "new\nline"),
        "names kept, escaped by JSON"
    );
}

// ---- more of the engine's decisions -------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_anomaly_rule_fires_after_k_consecutive_intervals_only() {
    let mut cfg = test_cfg();
    cfg.rules = vec![anomaly_rule("runq_latency", 3)];
    let mut h = Harness::new(cfg);
    let id = h.docker.add("web", &[OPT_IN], "healthy");
    let hit = [anomaly(&id, "runq_latency")];
    h.run_with(2 * S, &hit).await;
    h.run(S).await; // a quiet interval starts the count over
    h.run_with(2 * S, &hit).await;
    assert_eq!(h.docker.actions(), 0);
    h.run_with(S, &hit).await;
    assert_eq!(h.docker.actions_on(&id).len(), 1);
    let intent = h
        .audit()
        .into_iter()
        .find(|r| r.decision == Decision::Intent)
        .unwrap();
    assert_eq!(intent.reason, "anomaly: runq_latency for 3 intervals");
}

/// Issue 20: a run-queue latency anomaly that names its top contender carries it into the
/// audit line of the decision it triggers (the intent, and a skip's trigger text).
#[tokio::test(start_paused = true)]
async fn a_runq_latency_trigger_names_the_top_contender_in_the_audit() {
    let mut cfg = test_cfg();
    cfg.rules = vec![anomaly_rule("runq_latency", 1)];
    let mut h = Harness::new(cfg);
    let id = h.docker.add("web", &[OPT_IN], "healthy");
    let mut hit = anomaly(&id, "runq_latency");
    hit.slowed_by = Some("noisy (62%)".into());
    h.run_with(S, &[hit]).await;
    assert_eq!(h.docker.actions_on(&id).len(), 1);
    let intent = h
        .audit()
        .into_iter()
        .find(|r| r.decision == Decision::Intent)
        .unwrap();
    assert_eq!(
        intent.reason,
        "anomaly: runq_latency for 1 intervals, slowed by noisy (62%)"
    );
    // Dry run: the skip's trigger text names it too.
    let mut cfg = test_cfg();
    cfg.dry_run = true;
    cfg.rules = vec![anomaly_rule("runq_latency", 1)];
    let mut h = Harness::new(cfg);
    let id = h.docker.add("web", &[OPT_IN], "healthy");
    let mut hit = anomaly(&id, "runq_latency");
    hit.slowed_by = Some("noisy (62%)".into());
    h.run_with(S, &[hit]).await;
    let skipped = h
        .audit()
        .into_iter()
        .find(|r| r.decision == Decision::Skipped && r.container_id == id)
        .expect("a dry-run skip");
    assert_eq!(
        skipped.outcome.as_deref(),
        Some("anomaly: runq_latency for 1 intervals, slowed by noisy (62%)")
    );
}

#[tokio::test(start_paused = true)]
async fn an_anomaly_on_another_signal_is_not_a_trigger_and_a_short_id_resolves() {
    let mut cfg = test_cfg();
    cfg.rules = vec![anomaly_rule("cpu", 1)];
    let mut h = Harness::new(cfg);
    let id = h.docker.add("web", &[OPT_IN], "healthy");
    // A container the engine has inspected (here: it was unhealthy once) is known by its
    // full id.
    h.docker.set(&id, |c| c.health = "unhealthy".into());
    h.run(S).await;
    h.docker.set(&id, |c| c.health = "healthy".into());
    h.run_with(2 * S, &[anomaly(&id, "oom_kills")]).await;
    assert_eq!(h.docker.actions(), 0, "another signal");
    h.run_with(S, &[anomaly(&id[..12], "cpu")]).await;
    assert_eq!(h.docker.actions_on(&id).len(), 1, "short id resolved");
}

#[tokio::test(start_paused = true)]
async fn dry_run_decides_and_audits_everything_and_acts_on_nothing() {
    let mut cfg = test_cfg();
    cfg.dry_run = true;
    let mut h = Harness::new(cfg);
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.run(10 * S).await;
    assert_eq!(h.docker.actions(), 0);
    let d: Vec<_> = h
        .audit()
        .into_iter()
        .filter(|r| r.container_id == id && r.reason == "dry_run")
        .collect();
    assert!(!d.is_empty() && d.iter().all(|r| r.dry_run));
    assert!(h.snapshot().state.dry_run);
}

/// P5: an action that cannot be audited is not taken.
#[tokio::test(start_paused = true)]
async fn an_unwritable_audit_log_suspends_every_action() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::with_audit(test_cfg(), "/dev/full".into(), dir);
    h.docker.connect();
    h.docker.add("web", &[OPT_IN], "unhealthy");
    h.run(5 * S).await;
    assert_eq!(h.docker.actions(), 0);
    let c = h.snapshot().state.counters;
    assert!(c.audit_write_errors > 0 && c.not_recorded > 0, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_rule_cooldown_and_limit_bound_one_container() {
    let mut cfg = test_cfg();
    cfg.rules[0].cooldown_secs = 5.0;
    cfg.rules[0].max_actions = 2;
    cfg.rules[0].limit_window_secs = 60.0;
    cfg.backoff.initial_secs = 0.0;
    cfg.grace_secs = 0.0;
    cfg.breaker.failure_threshold = 100;
    let mut h = Harness::new(cfg);
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.docker.after_start(&id, AfterStart::StaysSick);
    h.run(30 * S).await;
    assert_eq!(h.docker.actions_on(&id).len(), 2);
    assert!(h.count(&id, Decision::Skipped, Some("cooldown")) >= 1);
    assert_eq!(h.count(&id, Decision::Skipped, Some("rule_limit")), 1);
}

#[tokio::test(start_paused = true)]
async fn the_global_breaker_opens_on_docker_failures_of_many_containers() {
    let mut cfg = test_cfg();
    cfg.global_breaker.failure_threshold = 2;
    cfg.storm_min_containers = 100;
    let mut h = Harness::new(cfg);
    let ids: Vec<String> = (0..3)
        .map(|i| h.docker.add(&format!("c{i}"), &[OPT_IN], "healthy"))
        .collect();
    for id in &ids {
        h.docker.fail_next(
            id,
            DockerError::DockerUnreachable {
                endpoint: "unix:///x".into(),
                message: "reset".into(),
            },
        );
    }
    for id in &ids {
        sick(&h, id);
        h.run(2 * S).await;
    }
    let s = h.snapshot();
    assert_eq!(s.state.global_breaker.state, BreakerState::Open);
    assert!(
        s.state
            .breakers
            .iter()
            .all(|b| b.view.failures_in_window == 0),
        "Docker's fault, not the containers'"
    );
    assert_eq!(
        h.count(&ids[2], Decision::Skipped, Some("global_breaker_open")),
        1
    );
}

/// A restarted sentinel books what the last one did (audit replay): the rule limit holds
/// across the restart.
#[tokio::test(start_paused = true)]
async fn limits_survive_a_restart_of_the_engine() {
    let mut cfg = test_cfg();
    cfg.rules[0].max_actions = 1;
    cfg.rules[0].limit_window_secs = 600.0;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut first = Harness::with_audit(cfg.clone(), path.clone(), tempfile::tempdir().unwrap());
    first.docker.connect();
    let id = first.docker.add("web", &[OPT_IN], "unhealthy");
    first.docker.after_start(&id, AfterStart::StaysSick);
    first.run(3 * S).await;
    assert_eq!(first.docker.actions_on(&id).len(), 1);
    drop(first);
    let mut second = Harness::with_audit(cfg, path, dir);
    second.docker.connect();
    let id2 = second.docker.add("web", &[OPT_IN], "unhealthy");
    assert_eq!(id, id2);
    second.run(20 * S).await;
    assert_eq!(
        second.docker.actions(),
        0,
        "the limit was booked from the audit log"
    );
    assert_eq!(second.count(&id, Decision::Skipped, Some("rule_limit")), 1);
}

#[tokio::test(start_paused = true)]
async fn an_http_probe_rule_acts_on_its_named_container_after_k_failures() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l); // nothing listens: every probe fails at connect
    let mut cfg = test_cfg();
    cfg.rules = vec![RuleConfig {
        name: "api-probe".into(),
        selector: crate::heal::config::Selector {
            names: vec!["api".into()],
            ..Default::default()
        },
        trigger: Trigger::HttpProbe {
            url: format!("http://127.0.0.1:{port}/health"),
            timeout_ms: 200,
            max_latency_ms: None,
            intervals: 2,
            ca_file: None,
        },
        action: ActionConfig::Restart {
            stop_timeout_secs: 1,
        },
        cooldown_secs: 0.0,
        max_actions: 0,
        limit_window_secs: 600.0,
    }];
    let mut h = Harness::new(cfg);
    let api = h.docker.add("api", &[OPT_IN], "healthy");
    let other = h.docker.add("other", &[OPT_IN], "healthy");
    for _ in 0..6 {
        h.run(S).await;
        // Let the probe's connect fail on the real loopback.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !h.docker.actions_on(&api).is_empty() {
            break;
        }
    }
    assert_eq!(h.docker.actions_on(&api).len(), 1, "{:?}", h.audit());
    assert!(h.docker.actions_on(&other).is_empty(), "not selected");
}

#[tokio::test(start_paused = true)]
async fn a_kill_action_sends_the_configured_signal_only() {
    let mut cfg = test_cfg();
    cfg.rules[0].action = ActionConfig::Kill {
        signal: "SIGHUP".into(),
    };
    let mut h = Harness::new(cfg);
    let id = h
        .docker
        .add("web", &[OPT_IN, ("signal", "SIGKILL")], "unhealthy");
    h.run(S).await;
    assert_eq!(
        h.docker.actions_on(&id),
        [ActionConfig::Kill {
            signal: "SIGHUP".into()
        }]
    );
    let taken = h
        .audit()
        .into_iter()
        .find(|r| r.decision == Decision::Taken)
        .unwrap();
    assert_eq!(taken.action, Some(crate::model::ActionKind::Kill));
}

#[tokio::test(start_paused = true)]
async fn a_die_followed_by_a_stop_event_is_read_as_an_operator_stop() {
    let mut cfg = test_cfg();
    cfg.rules = vec![died_rule()];
    let mut h = Harness::new(cfg);
    let id = h.docker.add("worker", &[OPT_IN], "none");
    h.run(S).await;
    exited(&h, &id, 1);
    // `docker stop` sends die, then stop: the die is judged only after the stop was seen.
    h.docker.event(&id, "die", h.now);
    h.advance(Duration::from_millis(100)).await;
    h.tick().await;
    h.docker.event(&id, "stop", h.now);
    h.run(5 * S).await;
    left_alone(&h, &id, "stopped_by_operator");
}

#[tokio::test(start_paused = true)]
async fn d4_a_container_destroyed_under_its_action_is_forgotten_once_the_action_ends() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.docker.action_delay(3 * S);
    h.interval_with(&[]).await;
    assert_eq!(h.snapshot().state.in_flight, 1);
    h.docker.remove(&id);
    h.docker.event(&id, "destroy", h.now);
    h.tick().await;
    assert_eq!(
        h.engine.tracked_containers(),
        1,
        "kept while the action runs"
    );
    h.run(5 * S).await;
    assert_eq!(h.count(&id, Decision::Failed, Some("container_gone")), 1);
    assert_eq!(h.engine.tracked_containers(), 0, "forgotten after it");
}

/// A health event is acted on at the next tick, not at the next interval.
#[tokio::test(start_paused = true)]
async fn a_health_event_is_handled_between_intervals() {
    let mut h = Harness::new(test_cfg());
    h.interval = 10 * S;
    let id = h.docker.add("web", &[OPT_IN], "healthy");
    h.run(10 * S).await;
    sick(&h, &id);
    h.docker.event(&id, "health_status: unhealthy", h.now);
    h.advance(Duration::from_millis(250)).await;
    h.tick().await;
    assert_eq!(
        h.count(&id, Decision::Intent, None),
        1,
        "decided on the tick"
    );
    h.advance(Duration::from_millis(1)).await;
    assert_eq!(h.docker.actions_on(&id).len(), 1, "{:?}", h.audit());
}

/// An action Docker did that did not heal: the same trigger after the grace, inside the verify
/// window, is a failure for the container's breaker.
#[tokio::test(start_paused = true)]
async fn an_action_that_did_not_heal_is_a_breaker_failure() {
    let mut cfg = test_cfg();
    cfg.grace_secs = 1.0;
    cfg.verify_secs = 10.0;
    cfg.backoff.initial_secs = 30.0;
    cfg.backoff.max_secs = 30.0;
    let mut h = Harness::new(cfg);
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.docker.after_start(&id, AfterStart::StaysSick);
    h.run(5 * S).await;
    assert_eq!(
        h.count(&id, Decision::Taken, Some("done")),
        1,
        "Docker did it"
    );
    let b = &h.snapshot().state.breakers[0];
    assert_eq!(b.view.failures_in_window, 1, "but it did not heal");
}

/// A healed container's action counts as a success: no failure after the verify window.
#[tokio::test(start_paused = true)]
async fn an_action_that_healed_leaves_the_breaker_clean() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "unhealthy");
    h.run(10 * S).await;
    let s = h.snapshot();
    let b = s
        .state
        .breakers
        .iter()
        .find(|b| b.container_id == id)
        .unwrap();
    assert_eq!(
        (
            b.view.state,
            b.view.failures_in_window,
            b.container_name.as_str()
        ),
        (BreakerState::Closed, 0, "web")
    );
    assert_eq!(s.state.counters.actions_taken, 1);
}

/// While Docker is away, a health event acts on nothing.
#[tokio::test(start_paused = true)]
async fn events_while_monitor_only_act_on_nothing() {
    let mut h = Harness::new(test_cfg());
    let id = h.docker.add("web", &[OPT_IN], "healthy");
    h.run(S).await;
    h.docker.disconnect("gone");
    h.tick().await;
    sick(&h, &id);
    h.docker.event(&id, "health_status: unhealthy", h.now);
    h.run(5 * S).await;
    assert_eq!(h.docker.actions(), 0);
    assert_eq!(h.snapshot().state.docker, DockerState::Unreachable);
}

/// The snapshot and the recent decisions are what the interval carries.
#[tokio::test(start_paused = true)]
async fn the_snapshot_carries_recent_decisions_but_not_intents() {
    let mut cfg = test_cfg();
    cfg.recent_actions = 3;
    let mut h = Harness::new(cfg);
    for i in 0..3 {
        h.docker.add(&format!("c{i}"), &[OPT_IN], "unhealthy");
    }
    h.run(3 * S).await;
    let s = h.snapshot();
    assert_eq!(s.recent.len(), 3, "bounded by recent_actions");
    assert!(s.recent.iter().all(|r| r.decision != Decision::Intent));
    assert_eq!(s.state.permits_total, 2);
}
