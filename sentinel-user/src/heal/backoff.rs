//! Per-container exponential back-off (CrashLoopBackOff-like) and the sliding-window rate cap.
//! Plain structs over an injected clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::{BackoffConfig, RateCapConfig, secs};

/// After the n-th action in a row, the next one waits `initial * multiplier^(n-1)`, capped.
/// A container left alone for `reset_after` starts again from `initial`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    reset_after: Duration,
    consecutive: u32,
    last_action: Option<Instant>,
    next_allowed: Option<Instant>,
}

impl Backoff {
    pub fn new(cfg: &BackoffConfig) -> Self {
        Self {
            initial: secs(cfg.initial_secs),
            multiplier: cfg.multiplier.max(1.0),
            max: secs(cfg.max_secs),
            reset_after: secs(cfg.reset_after_secs),
            consecutive: 0,
            last_action: None,
            next_allowed: None,
        }
    }

    /// `Err(remaining)` while the back-off still holds.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        match self.next_allowed {
            Some(t) if now < t => Err(t - now),
            _ => Ok(()),
        }
    }

    /// Wait that the n-th consecutive action (1-based) imposes.
    pub fn delay_for(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(64) as i32;
        let d = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        secs(d).min(self.max)
    }

    pub fn record_action(&mut self, now: Instant) {
        if let Some(last) = self.last_action
            && now.saturating_duration_since(last) >= self.reset_after
        {
            self.consecutive = 0;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.last_action = Some(now);
        self.next_allowed = Some(now + self.delay_for(self.consecutive));
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }
}

/// At most `max` events in any window of length `window` (sliding, exact).
#[derive(Clone, Debug)]
pub struct RateCap {
    max: u32,
    window: Duration,
    events: VecDeque<Instant>,
}

impl RateCap {
    pub fn new(cfg: &RateCapConfig) -> Self {
        Self::with(cfg.max_actions, secs(cfg.window_secs))
    }

    pub fn with(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            events: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&t) = self.events.front() {
            if now.saturating_duration_since(t) >= self.window {
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// True when one more event now keeps every window at or under the cap.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.prune(now);
        self.max == 0 || (self.events.len() as u32) < self.max
    }

    pub fn record(&mut self, now: Instant) {
        self.prune(now);
        self.events.push_back(now);
    }

    pub fn count(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn curve_is_10_20_40_capped_and_resets() {
        let mut b = Backoff::new(&BackoffConfig::default());
        let d: Vec<u64> = (1..=7).map(|n| b.delay_for(n).as_secs()).collect();
        assert_eq!(d, vec![10, 20, 40, 80, 160, 300, 300]);
        let t0 = Instant::now();
        b.record_action(t0);
        assert!(b.check(t0 + Duration::from_secs(9)).is_err());
        assert!(b.check(t0 + Duration::from_secs(10)).is_ok());
        b.record_action(t0 + Duration::from_secs(10));
        assert_eq!(b.consecutive(), 2);
        b.record_action(t0 + Duration::from_secs(10 + 600));
        assert_eq!(b.consecutive(), 1, "quiet for reset_after starts over");
    }

    proptest! {
        /// FAULT-MATRIX D7: a flapper that is due again every `step` gets at most 7 actions in
        /// 10 minutes from the default curve, whatever its period.
        #[test]
        fn default_curve_bounds_a_flapper(step_ms in 1u64..20_000, start_ms in 0u64..5_000) {
            let mut b = Backoff::new(&BackoffConfig::default());
            let t0 = Instant::now();
            let mut now = t0 + Duration::from_millis(start_ms);
            let end = now + Duration::from_secs(600);
            let mut actions = 0;
            while now < end {
                if b.check(now).is_ok() {
                    b.record_action(now);
                    actions += 1;
                }
                now += Duration::from_millis(step_ms);
            }
            prop_assert!(actions <= 7, "{} actions", actions);
        }

        /// Never more than `max` events in any window, for any arrival pattern.
        #[test]
        fn rate_cap_never_exceeded(max in 1u32..15, gaps in proptest::collection::vec(0u64..30_000, 1..300)) {
            let window = Duration::from_secs(60);
            let mut cap = RateCap::with(max, window);
            let t0 = Instant::now();
            let mut now = t0;
            let mut taken: Vec<Instant> = Vec::new();
            for g in gaps {
                now += Duration::from_millis(g);
                if cap.allows(now) {
                    cap.record(now);
                    taken.push(now);
                }
            }
            for (i, &t) in taken.iter().enumerate() {
                let in_window = taken[i..].iter().take_while(|&&u| u - t < window).count();
                prop_assert!(in_window as u32 <= max);
            }
        }
    }
}
