//! Life cycle of a series (warming up, ready, fallback), the onset shaper of the score, and the
//! k/m hysteresis that turns scores into raised/cleared events.

use serde::Serialize;

/// State of a series' detection, as shown in status output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesState {
    /// Not enough data yet: scores are 0 and no event is raised.
    WarmingUp,
    /// Every configured detector is contributing.
    Ready,
    /// The learned detector is configured but has no usable model: the statistical detector
    /// alone produces the score.
    Fallback,
}

impl SeriesState {
    pub fn as_str(self) -> &'static str {
        match self {
            SeriesState::WarmingUp => "warming_up",
            SeriesState::Ready => "ready",
            SeriesState::Fallback => "fallback",
        }
    }
}

/// Reports the first row of an excursion and then stays quiet for `refractory` rows unless the
/// evidence becomes clearly stronger. NAB (and an operator) rewards one alarm per event; a score
/// that stays high turns every further row into a false positive.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shaper {
    since: u32,
    last: f64,
    fired: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct ShaperParams {
    pub arm: f64,
    pub refractory: u32,
    pub margin: f64,
}

impl Shaper {
    /// Returns the shaped score: the score itself on an alarm row, else 0.
    pub fn shape(&mut self, p: &ShaperParams, score: f64) -> f64 {
        self.since = self.since.saturating_add(1);
        let quiet = self.fired && self.since <= p.refractory;
        let alarm = score >= p.arm && (!quiet || score >= self.last + p.margin);
        if alarm {
            self.fired = true;
            self.since = 0;
            self.last = score;
            score
        } else {
            0.0
        }
    }
}

/// Raised after `k` anomalous intervals in a row, cleared after `m` normal ones in a row.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hysteresis {
    run: u32,
    active: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Raised,
    Cleared,
}

impl Hysteresis {
    pub fn active(&self) -> bool {
        self.active
    }

    pub fn update(&mut self, anomalous: bool, k: u32, m: u32) -> Option<EventKind> {
        // `run` counts consecutive intervals that argue for leaving the current state.
        if anomalous != self.active {
            self.run += 1;
        } else {
            self.run = 0;
        }
        let need = if self.active { m } else { k };
        if self.run >= need {
            self.active = !self.active;
            self.run = 0;
            Some(if self.active {
                EventKind::Raised
            } else {
                EventKind::Cleared
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_raises_after_k_and_clears_after_m() {
        let (k, m) = (3, 2);
        let mut h = Hysteresis::default();
        // Two anomalous, one normal: the run restarts, nothing raised.
        assert_eq!(h.update(true, k, m), None);
        assert_eq!(h.update(true, k, m), None);
        assert_eq!(h.update(false, k, m), None);
        assert_eq!(h.update(true, k, m), None);
        assert_eq!(h.update(true, k, m), None);
        assert_eq!(h.update(true, k, m), Some(EventKind::Raised));
        assert!(h.active());
        assert_eq!(h.update(true, k, m), None);
        // One normal then anomalous again: still raised.
        assert_eq!(h.update(false, k, m), None);
        assert_eq!(h.update(true, k, m), None);
        assert_eq!(h.update(false, k, m), None);
        assert_eq!(h.update(false, k, m), Some(EventKind::Cleared));
        assert!(!h.active());
    }

    #[test]
    fn shaper_reports_onset_then_refractory_unless_much_stronger() {
        let p = ShaperParams {
            arm: 0.5,
            refractory: 3,
            margin: 0.2,
        };
        let mut s = Shaper::default();
        assert_eq!(s.shape(&p, 0.4), 0.0);
        assert_eq!(s.shape(&p, 0.6), 0.6);
        assert_eq!(s.shape(&p, 0.7), 0.0);
        assert_eq!(s.shape(&p, 0.9), 0.9);
        assert_eq!(s.shape(&p, 0.6), 0.0);
        assert_eq!(s.shape(&p, 0.6), 0.0);
        assert_eq!(s.shape(&p, 0.6), 0.0);
        assert_eq!(s.shape(&p, 0.6), 0.6);
    }
}
