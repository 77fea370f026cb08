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

/// What one interval says about a series, for the event hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    Anomalous,
    Normal,
    /// Nothing new: the score is at the event threshold only because of a score held from an
    /// earlier observation (the learned detector's, between two block ends). It neither
    /// extends nor restarts a run, so one novel block cannot meet `raise_after` by itself.
    Hold,
}

/// Settings of the event hysteresis.
#[derive(Clone, Copy, Debug)]
pub struct EventParams {
    /// Anomalous intervals in a row before an event is raised (k).
    pub raise_after: u32,
    /// Normal intervals in a row before a raised event is cleared (m).
    pub clear_after: u32,
    /// Intervals after a raise during which another excursion is the same incident (the
    /// onset shaper's `refractory`): it raises no second event ...
    pub refractory: u32,
    /// ... unless its score is at least this much above the raised one (`rearm_margin`).
    pub margin: f64,
}

/// Raised after `raise_after` anomalous intervals in a row, cleared after `clear_after` normal
/// ones in a row; one incident raises one event, as replay's onset shaper reports one alarm.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hysteresis {
    run: u32,
    active: bool,
    /// An event was raised before, `since_raise` intervals ago, at score `raised_level`.
    raised: bool,
    since_raise: u32,
    raised_level: f64,
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

    /// Feeds one interval's evidence and its (unshaped) score.
    pub fn update(&mut self, p: &EventParams, ev: Evidence, level: f64) -> Option<EventKind> {
        self.since_raise = self.since_raise.saturating_add(1);
        // `run` counts consecutive intervals that argue for leaving the current state.
        match ev {
            Evidence::Hold => {}
            Evidence::Anomalous | Evidence::Normal => {
                if (ev == Evidence::Anomalous) != self.active {
                    self.run = self.run.saturating_add(1);
                } else {
                    self.run = 0;
                }
            }
        }
        if self.active {
            if self.run >= p.clear_after {
                self.active = false;
                self.run = 0;
                return Some(EventKind::Cleared);
            }
            return None;
        }
        if self.run < p.raise_after {
            return None;
        }
        // A score that dipped under the threshold long enough to clear and came back within
        // the refractory span is the same incident: no second event, unless it is clearly
        // stronger. If it lasts beyond the span, it raises then.
        let same_incident =
            self.raised && self.since_raise <= p.refractory && level < self.raised_level + p.margin;
        if same_incident {
            return None;
        }
        self.active = true;
        self.run = 0;
        self.raised = true;
        self.since_raise = 0;
        self.raised_level = level;
        Some(EventKind::Raised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(k: u32, m: u32, refractory: u32) -> EventParams {
        EventParams {
            raise_after: k,
            clear_after: m,
            refractory,
            margin: 0.2,
        }
    }

    #[test]
    fn hysteresis_raises_after_k_and_clears_after_m() {
        let p = events(3, 2, 0);
        let mut h = Hysteresis::default();
        let mut up = |a: bool| {
            let ev = if a {
                Evidence::Anomalous
            } else {
                Evidence::Normal
            };
            h.update(&p, ev, 0.5)
        };
        // Two anomalous, one normal: the run restarts, nothing raised.
        assert_eq!(up(true), None);
        assert_eq!(up(true), None);
        assert_eq!(up(false), None);
        assert_eq!(up(true), None);
        assert_eq!(up(true), None);
        assert_eq!(up(true), Some(EventKind::Raised));
        assert_eq!(up(true), None);
        // One normal then anomalous again: still raised.
        assert_eq!(up(false), None);
        assert_eq!(up(true), None);
        assert_eq!(up(false), None);
        assert_eq!(up(false), Some(EventKind::Cleared));
        assert!(!h.active());
    }

    #[test]
    fn a_held_score_neither_extends_nor_restarts_a_run() {
        let p = events(2, 3, 0);
        let mut h = Hysteresis::default();
        // One observation followed by its hold (a learned block of 4 intervals): no event.
        assert_eq!(h.update(&p, Evidence::Anomalous, 0.5), None);
        for _ in 0..3 {
            assert_eq!(h.update(&p, Evidence::Hold, 0.5), None);
        }
        assert!(!h.active());
        // A second, independent observation completes the run.
        assert_eq!(
            h.update(&p, Evidence::Anomalous, 0.5),
            Some(EventKind::Raised)
        );
        // Held rows do not count as normal either: the event stays open.
        for _ in 0..10 {
            assert_eq!(h.update(&p, Evidence::Hold, 0.5), None);
        }
        assert!(h.active());
    }

    /// Raised events for `seq` (true: anomalous interval) at score `level`.
    fn raises(p: &EventParams, seq: &[(bool, f64)]) -> usize {
        let mut h = Hysteresis::default();
        seq.iter()
            .filter(|(a, level)| {
                let ev = if *a {
                    Evidence::Anomalous
                } else {
                    Evidence::Normal
                };
                h.update(p, ev, *level) == Some(EventKind::Raised)
            })
            .count()
    }

    #[test]
    fn one_incident_raises_one_event() {
        // An incident that flickers: anomalous, quiet long enough to clear, anomalous again.
        let burst = |n: usize, level: f64| vec![(true, level); n];
        let quiet = |n: usize| vec![(false, 0.0); n];
        let flicker = [
            burst(4, 0.5),
            quiet(12),
            burst(4, 0.5),
            quiet(12),
            burst(4, 0.55),
        ]
        .concat();
        // Without the refractory span it raises three events; with it, one.
        assert_eq!(raises(&events(2, 10, 0), &flicker), 3);
        assert_eq!(raises(&events(2, 10, 200), &flicker), 1);
        // A clearly stronger excursion (+0.2) raises a second event within the span...
        let stronger = [burst(4, 0.5), quiet(12), burst(4, 0.75)].concat();
        assert_eq!(raises(&events(2, 10, 200), &stronger), 2);
        // ... and so does an excursion after the span, or one that outlasts it.
        let later = [burst(4, 0.5), quiet(250), burst(4, 0.5)].concat();
        assert_eq!(raises(&events(2, 10, 200), &later), 2);
        let long = [burst(4, 0.5), quiet(12), burst(300, 0.5)].concat();
        assert_eq!(raises(&events(2, 10, 200), &long), 2);
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
