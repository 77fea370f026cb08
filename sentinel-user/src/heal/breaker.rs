//! Circuit breaker: a plain state machine driven by an injected monotonic clock (`now`).
//!
//! CLOSED -> OPEN when `failure_threshold` failures fall inside the sliding `window`.
//! OPEN -> HALF_OPEN when `tick(now)` sees the current wait elapsed. The transition is made on
//! the tick, not lazily on the next action, so status shows HALF_OPEN on time even when nothing
//! is due (FAULT-MATRIX D12, resilience4j#2093).
//! HALF_OPEN grants at most `half_open_trials` trials; `close_after_successes` successes close
//! it, any failure re-opens it with a doubled wait (capped: never OPEN forever).
//! A trial that holds its slot longer than `half_open_max_wait` re-opens it (D11), so no
//! breaker can sit in HALF_OPEN with a slot that will never be returned.
//! `Outcome::Neutral` (permit-wait time-out, shutdown cancel, Docker unreachable, API denial)
//! gives a trial slot back and changes nothing else: waiting is not failing (D10).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::{BreakerConfig, secs};

pub use crate::model::BreakerState;

/// What an action's result means for a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Not the container's fault and not evidence of health: slot returned, nothing counted.
    Neutral,
}

/// Handed out by `try_begin`; must be passed back to `record` exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trial {
    half_open: bool,
    /// HALF_OPEN episode the trial belongs to: a late outcome from an earlier episode must not
    /// count in a later one.
    epoch: u64,
}

/// A state change, for the audit log and the interval output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: &'static str,
    /// Wait before HALF_OPEN when `to` is OPEN, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Breaker {
    threshold: u32,
    window: Duration,
    base_wait: Duration,
    max_wait: Duration,
    trials: u32,
    close_after: u32,
    half_open_max_wait: Duration,

    state: BreakerState,
    failures: VecDeque<Instant>,
    /// Current OPEN wait (grows on re-open, back to `base_wait` on close).
    wait: Duration,
    opened_at: Option<Instant>,
    half_open_since: Option<Instant>,
    trials_started: u32,
    in_flight: u32,
    successes: u32,
    epoch: u64,
}

/// The part of a breaker that an observer can see; used to state properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observable {
    pub state: BreakerState,
    pub failures: usize,
    pub wait: Duration,
    pub trials_started: u32,
    pub in_flight: u32,
    pub successes: u32,
}

impl Breaker {
    pub fn new(cfg: &BreakerConfig) -> Self {
        let base_wait = secs(cfg.open_secs);
        Self {
            threshold: cfg.failure_threshold.max(1),
            window: secs(cfg.window_secs),
            base_wait,
            max_wait: secs(cfg.open_max_secs).max(base_wait),
            trials: cfg.half_open_trials.max(1),
            close_after: cfg
                .close_after_successes
                .clamp(1, cfg.half_open_trials.max(1)),
            half_open_max_wait: secs(cfg.half_open_max_wait_secs),
            state: BreakerState::Closed,
            failures: VecDeque::new(),
            wait: base_wait,
            opened_at: None,
            half_open_since: None,
            trials_started: 0,
            in_flight: 0,
            successes: 0,
            epoch: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Current (or next) OPEN wait.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Failures currently inside the window.
    pub fn failures(&self) -> usize {
        self.failures.len()
    }

    pub fn observable(&self) -> Observable {
        Observable {
            state: self.state,
            failures: self.failures.len(),
            wait: self.wait,
            trials_started: self.trials_started,
            in_flight: self.in_flight,
            successes: self.successes,
        }
    }

    /// Put back an OPEN state a previous process recorded (opened at `opened_at` with `wait`),
    /// so a restart of sentinel does not close a breaker. An elapsed wait half-opens on the
    /// next tick.
    pub fn restore_open(&mut self, opened_at: Instant, wait: Duration) {
        self.state = BreakerState::Open;
        self.opened_at = Some(opened_at);
        self.wait = wait.clamp(self.base_wait, self.max_wait);
        self.half_open_since = None;
        self.trials_started = 0;
        self.in_flight = 0;
        self.successes = 0;
        self.epoch += 1;
    }

    /// Time left in OPEN, if OPEN.
    pub fn open_remaining(&self, now: Instant) -> Option<Duration> {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(t)) => Some((t + self.wait).saturating_duration_since(now)),
            _ => None,
        }
    }

    /// Time-driven transitions. Call on every engine tick with the monotonic clock.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        self.prune(now);
        match self.state {
            BreakerState::Open => {
                let opened = self.opened_at.unwrap_or(now);
                if now >= opened + self.wait {
                    self.state = BreakerState::HalfOpen;
                    self.half_open_since = Some(now);
                    self.trials_started = 0;
                    self.in_flight = 0;
                    self.successes = 0;
                    self.epoch += 1;
                    return Some(Transition {
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                        reason: "recovery_timeout",
                        wait_secs: None,
                    });
                }
                None
            }
            BreakerState::HalfOpen => {
                let since = self.half_open_since.unwrap_or(now);
                // Only a held slot expires: with no trial at all there is nothing to wait for,
                // and the next due action becomes the single trial.
                if self.in_flight > 0 && now >= since + self.half_open_max_wait {
                    return Some(self.reopen(now, "trial_timeout"));
                }
                None
            }
            BreakerState::Closed => None,
        }
    }

    /// Ask to run one action. CLOSED: always. OPEN: never. HALF_OPEN: while trial slots remain.
    pub fn try_begin(&mut self, now: Instant) -> Result<Trial, BreakerState> {
        // Never judge on a stale state: a due OPEN->HALF_OPEN happens here too.
        let _ = self.tick(now);
        match self.state {
            BreakerState::Closed => Ok(Trial {
                half_open: false,
                epoch: self.epoch,
            }),
            BreakerState::Open => Err(BreakerState::Open),
            BreakerState::HalfOpen => {
                if self.trials_started < self.trials {
                    self.trials_started += 1;
                    self.in_flight += 1;
                    if self.in_flight == 1 {
                        // The max wait measures how long a trial holds its slot.
                        self.half_open_since = Some(now);
                    }
                    Ok(Trial {
                        half_open: true,
                        epoch: self.epoch,
                    })
                } else {
                    Err(BreakerState::HalfOpen)
                }
            }
        }
    }

    /// Report the outcome of a trial granted by `try_begin`.
    pub fn record(&mut self, now: Instant, trial: Trial, outcome: Outcome) -> Option<Transition> {
        self.prune(now);
        let current_trial =
            trial.half_open && self.state == BreakerState::HalfOpen && trial.epoch == self.epoch;
        if current_trial {
            self.in_flight = self.in_flight.saturating_sub(1);
            match outcome {
                Outcome::Neutral => {
                    self.trials_started = self.trials_started.saturating_sub(1);
                    None
                }
                Outcome::Success => {
                    self.successes += 1;
                    if self.successes >= self.close_after {
                        self.state = BreakerState::Closed;
                        self.failures.clear();
                        self.wait = self.base_wait;
                        self.opened_at = None;
                        self.half_open_since = None;
                        self.trials_started = 0;
                        self.successes = 0;
                        return Some(Transition {
                            from: BreakerState::HalfOpen,
                            to: BreakerState::Closed,
                            reason: "trial_succeeded",
                            wait_secs: None,
                        });
                    }
                    None
                }
                Outcome::Failure => Some(self.reopen(now, "trial_failed")),
            }
        } else {
            // A CLOSED-state action, or a stale trial from an earlier episode: only failures
            // matter, and only while CLOSED (an OPEN breaker is already open).
            if outcome == Outcome::Failure && self.state == BreakerState::Closed {
                self.failures.push_back(now);
                if self.failures.len() as u32 >= self.threshold {
                    self.state = BreakerState::Open;
                    self.opened_at = Some(now);
                    self.wait = self.base_wait;
                    return Some(Transition {
                        from: BreakerState::Closed,
                        to: BreakerState::Open,
                        reason: "failure_threshold",
                        wait_secs: Some(self.wait.as_secs_f64()),
                    });
                }
            }
            None
        }
    }

    fn reopen(&mut self, now: Instant, reason: &'static str) -> Transition {
        self.wait = (self.wait * 2).min(self.max_wait);
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.half_open_since = None;
        self.trials_started = 0;
        self.in_flight = 0;
        self.successes = 0;
        self.epoch += 1;
        Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Open,
            reason,
            wait_secs: Some(self.wait.as_secs_f64()),
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&t) = self.failures.front() {
            if now.saturating_duration_since(t) > self.window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            window_secs: 60.0,
            open_secs: 10.0,
            open_max_secs: 80.0,
            half_open_trials: 2,
            close_after_successes: 2,
            half_open_max_wait_secs: 30.0,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Advance(u64), // milliseconds
        Begin,
        Finish(u8, u8), // which held trial, outcome 0/1/2
        Tick,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..40_000).prop_map(Op::Advance),
            Just(Op::Begin),
            (any::<u8>(), 0u8..3).prop_map(|(a, b)| Op::Finish(a, b)),
            Just(Op::Tick),
        ]
    }

    fn outcome(b: u8) -> Outcome {
        match b {
            0 => Outcome::Success,
            1 => Outcome::Failure,
            _ => Outcome::Neutral,
        }
    }

    #[test]
    fn opens_at_threshold_and_recovers() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg());
        for i in 0..3 {
            let t = b.try_begin(t0).unwrap();
            let tr = b.record(t0 + Duration::from_secs(i), t, Outcome::Failure);
            assert_eq!(tr.is_some(), i == 2);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_begin(t0 + Duration::from_secs(5)).is_err());
        // Recovery on the tick, without any action asking (D12).
        let tr = b.tick(t0 + Duration::from_secs(12)).unwrap();
        assert_eq!(tr.to, BreakerState::HalfOpen);
        let a = b.try_begin(t0 + Duration::from_secs(12)).unwrap();
        let c = b.try_begin(t0 + Duration::from_secs(12)).unwrap();
        assert!(
            b.try_begin(t0 + Duration::from_secs(12)).is_err(),
            "only 2 trials"
        );
        b.record(t0 + Duration::from_secs(13), a, Outcome::Success);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let tr = b
            .record(t0 + Duration::from_secs(13), c, Outcome::Success)
            .unwrap();
        assert_eq!(tr.to, BreakerState::Closed);
    }

    #[test]
    fn reopen_waits_grow_and_are_capped() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg());
        for _ in 0..3 {
            let t = b.try_begin(t0).unwrap();
            b.record(t0, t, Outcome::Failure);
        }
        let mut now = t0;
        let mut waits = vec![b.wait().as_secs()];
        for _ in 0..5 {
            now += b.wait();
            b.tick(now).unwrap();
            let t = b.try_begin(now).unwrap();
            let tr = b.record(now, t, Outcome::Failure).unwrap();
            assert_eq!(tr.to, BreakerState::Open);
            waits.push(b.wait().as_secs());
        }
        assert_eq!(waits, vec![10, 20, 40, 80, 80, 80]);
    }

    #[test]
    fn held_trial_expires_to_open() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg());
        for _ in 0..3 {
            let t = b.try_begin(t0).unwrap();
            b.record(t0, t, Outcome::Failure);
        }
        b.tick(t0 + Duration::from_secs(10)).unwrap();
        let held = b.try_begin(t0 + Duration::from_secs(10)).unwrap();
        assert!(b.tick(t0 + Duration::from_secs(39)).is_none());
        let tr = b.tick(t0 + Duration::from_secs(40)).unwrap();
        assert_eq!((tr.to, tr.reason), (BreakerState::Open, "trial_timeout"));
        // The late outcome of the expired trial does not count in the new episode.
        assert!(
            b.record(t0 + Duration::from_secs(41), held, Outcome::Success)
                .is_none()
        );
        assert_eq!(b.state(), BreakerState::Open);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// After `tick(now)`, an OPEN breaker has been open for less than its wait: it always
        /// leaves OPEN once the recovery time-out passed, and the wait never exceeds the cap.
        /// A HALF_OPEN breaker never holds a slot longer than the max wait (D11), never grants
        /// more trials than configured, and a permit wait (begin + Neutral) changes nothing.
        #[test]
        fn breaker_properties(ops in proptest::collection::vec(op(), 1..200)) {
            let c = cfg();
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = Breaker::new(&c);
            let mut held: Vec<Trial> = Vec::new();
            let mut granted_this_episode = 0u32;
            let mut last_state = b.state();
            for o in ops {
                match o {
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Tick => { b.tick(now); }
                    Op::Begin => {
                        // Permit waits never change breaker state: a begin that ends Neutral is
                        // invisible.
                        let mut probe = b.clone();
                        probe.tick(now);
                        let mut reference = b.clone();
                        reference.tick(now);
                        if let Ok(t) = probe.try_begin(now) {
                            probe.record(now, t, Outcome::Neutral);
                        }
                        prop_assert_eq!(probe.observable(), reference.observable());

                        let s0 = { b.tick(now); b.state() };
                        if s0 != last_state { if s0 == BreakerState::HalfOpen { granted_this_episode = 0; } last_state = s0; }
                        match b.try_begin(now) {
                            Ok(t) => {
                                prop_assert!(s0 != BreakerState::Open);
                                if t.half_open { granted_this_episode += 1; }
                                held.push(t);
                            }
                            Err(s) => prop_assert_ne!(s, BreakerState::Closed),
                        }
                    }
                    Op::Finish(i, oc) => {
                        if !held.is_empty() {
                            let t = held.remove(i as usize % held.len());
                            let oc = outcome(oc);
                            if oc == Outcome::Neutral && t.half_open && b.state() == BreakerState::HalfOpen {
                                granted_this_episode = granted_this_episode.saturating_sub(1);
                            }
                            b.record(now, t, oc);
                        }
                    }
                }
                b.tick(now);
                let s = b.state();
                if s != last_state {
                    if s == BreakerState::HalfOpen { granted_this_episode = 0; }
                    last_state = s;
                }
                if let Some(rem) = b.open_remaining(now) {
                    prop_assert!(rem > Duration::ZERO, "still OPEN after its wait");
                }
                prop_assert!(b.wait() <= secs(c.open_max_secs));
                prop_assert!(b.observable().trials_started <= c.half_open_trials);
                prop_assert!(granted_this_episode <= c.half_open_trials);
                if s == BreakerState::HalfOpen && b.observable().in_flight > 0 {
                    let since = b.half_open_since.unwrap();
                    prop_assert!(now < since + secs(c.half_open_max_wait_secs));
                }
            }
        }
    }
}
