//! The per-series detector pipeline (statistical + learned -> fused score -> onset shaper and
//! k/m hysteresis) and the engine that runs one pipeline per metric series of an [`Interval`].
//! `sentinel replay` drives [`SeriesDetector`] directly, so replay and the daemon share it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::{DetectConfig, DetectorKind};
use super::learned::{ForestParams, LearnedDetector, LearnedStatus, Trainer};
use super::lifecycle::{EventKind, Hysteresis, SeriesState, Shaper, ShaperParams};
use super::stats::{StatDetector, StatParams};
use crate::model::Interval;

/// Everything derived from a validated [`DetectConfig`], shared by all series of an engine.
#[derive(Clone, Debug)]
pub struct Params {
    pub kind: DetectorKind,
    pub warmup: u64,
    pub stat: StatParams,
    pub forest: ForestParams,
    pub shaper: ShaperParams,
    pub event_threshold: f64,
    pub raise_after: u32,
    pub clear_after: u32,
}

impl Params {
    pub fn new(c: &DetectConfig) -> Self {
        Self {
            kind: c.detector,
            warmup: u64::from(c.warmup),
            stat: StatParams::new(c),
            forest: ForestParams::new(c),
            shaper: ShaperParams {
                arm: c.arm_level,
                refractory: c.refractory,
                margin: c.rearm_margin,
            },
            event_threshold: c.event_threshold,
            raise_after: c.raise_after,
            clear_after: c.clear_after,
        }
    }
}

/// Result of feeding one value to a series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// Onset-shaped score in [0, 1]: the fused score on the first row of an excursion, 0
    /// otherwise. This is what `sentinel replay` writes.
    pub score: f64,
    /// Fused score in [0, 1] before shaping (drives the hysteresis).
    pub level: f64,
    /// Expected value (slow baseline) before this row.
    pub baseline: f64,
    pub state: SeriesState,
    pub event: Option<EventKind>,
}

/// Detector state of one series. Its size is fixed once created: the learned part holds a
/// ring of `train_window` values and a shared pointer to the current model.
#[derive(Debug)]
pub struct SeriesDetector {
    stat: StatDetector,
    learned: Option<Box<LearnedDetector>>,
    shaper: Shaper,
    hyst: Hysteresis,
    state: SeriesState,
    level: f64,
    /// The fallback was logged (once per episode, not per row).
    fallback_logged: bool,
}

impl SeriesDetector {
    pub fn new(p: &Params) -> Self {
        let learned = match p.kind {
            DetectorKind::Statistical => None,
            DetectorKind::Learned | DetectorKind::Combined => {
                Some(Box::new(LearnedDetector::new(&p.forest)))
            }
        };
        Self {
            stat: StatDetector::default(),
            learned,
            shaper: Shaper::default(),
            hyst: Hysteresis::default(),
            state: SeriesState::WarmingUp,
            level: 0.0,
            fallback_logged: false,
        }
    }

    pub fn state(&self) -> SeriesState {
        self.state
    }

    /// Last fused score.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// Whether an event is currently raised for this series.
    pub fn active(&self) -> bool {
        self.hyst.active()
    }

    /// Feeds one value. Non-finite values are skipped (state untouched, score 0).
    pub fn update(&mut self, p: &Params, trainer: &Trainer, name: &str, x: f64) -> Step {
        if !x.is_finite() {
            return Step {
                score: 0.0,
                level: 0.0,
                baseline: self.stat.baseline(),
                state: self.state,
                event: None,
            };
        }
        let stat = self.stat.update(&p.stat, x);
        let learned = self.learned.as_mut().map(|l| {
            let s = l.update(&p.forest, trainer, x.clamp(-1e100, 1e100));
            (s, l.status(&p.forest))
        });

        let (state, level) = if self.stat.seen() <= p.warmup {
            (SeriesState::WarmingUp, 0.0)
        } else {
            match (p.kind, learned) {
                (DetectorKind::Statistical, _) | (_, None) => (SeriesState::Ready, stat.score),
                (kind, Some((ls, LearnedStatus::Ready))) => {
                    let fused = match kind {
                        DetectorKind::Learned => ls,
                        _ => stat.score.max(ls),
                    };
                    (SeriesState::Ready, fused)
                }
                (_, Some((_, status))) => {
                    self.log_fallback(name, &status);
                    (SeriesState::Fallback, stat.score)
                }
            }
        };
        if state == SeriesState::Ready && self.fallback_logged {
            tracing::info!(series = name, "learned detector ready; fallback ended");
            self.fallback_logged = false;
        }
        self.state = state;
        let level = if level.is_finite() {
            level.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.level = level;
        let (score, event) = if state == SeriesState::WarmingUp {
            (0.0, None)
        } else {
            let score = self.shaper.shape(&p.shaper, level);
            let event = self
                .hyst
                .update(level >= p.event_threshold, p.raise_after, p.clear_after);
            (score, event)
        };
        Step {
            score,
            level,
            baseline: stat.baseline,
            state,
            event,
        }
    }

    fn log_fallback(&mut self, name: &str, status: &LearnedStatus) {
        if self.fallback_logged {
            return;
        }
        self.fallback_logged = true;
        match status {
            LearnedStatus::Unavailable(reason) => tracing::warn!(
                series = name,
                reason = reason.as_str(),
                "learned detector unavailable; statistical detector only (fallback)"
            ),
            _ => tracing::info!(
                series = name,
                "learned detector has no model yet; statistical detector only (fallback)"
            ),
        }
    }
}

/// How bad an anomaly is, from its score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn from_score(score: f64) -> Self {
        // Score 0.8 is a Gaussian tail of ~1e-8 per interval.
        if score >= 0.8 {
            Severity::Critical
        } else {
            Severity::Warning
        }
    }
}

/// A raised or cleared anomaly of one series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnomalyEvent {
    pub kind: EventKind,
    pub series: String,
    /// The interval's `ts`.
    pub ts: String,
    pub value: f64,
    pub baseline: f64,
    pub score: f64,
    pub severity: Severity,
}

/// The value of a named metric in an interval. `None`: no such metric; `Some(None)`: the
/// metric exists but has no value (a disabled counter).
pub fn metric_value(iv: &Interval, name: &str) -> Option<Option<f64>> {
    let v = match name {
        "interval_ms" => iv.interval_ms,
        "runqueue_latency_us.p50" => iv.runqueue_latency_us.p50,
        "runqueue_latency_us.p99" => iv.runqueue_latency_us.p99,
        "runqueue_latency_us.max" => iv.runqueue_latency_us.max,
        "runqueue_latency_us.count" => iv.runqueue_latency_us.count as f64,
        "system.cpu_percent" => iv.system.cpu_percent,
        "system.mem_used_percent" => iv.system.mem_used_percent,
        "system.disk_used_percent" => iv.system.disk_used_percent,
        "system.load1" => iv.system.load1,
        "system.context_switches" => iv.system.context_switches as f64,
        _ => {
            let key = name.strip_prefix("counters.").unwrap_or(name);
            return iv.counters.get(key).map(|v| v.map(|v| v as f64));
        }
    };
    Some(Some(v))
}

/// The series the engine watches in an interval, in a fixed order.
fn for_each_series(iv: &Interval, mut f: impl FnMut(&str, f64)) {
    for (name, v) in &iv.counters {
        if let Some(v) = v {
            f(name, *v as f64);
        }
    }
    f("runqueue_latency_us.p99", iv.runqueue_latency_us.p99);
    f("system.cpu_percent", iv.system.cpu_percent);
    f("system.mem_used_percent", iv.system.mem_used_percent);
    f("system.load1", iv.system.load1);
}

/// One detector pipeline per series, created lazily and bounded by `max_series`.
#[derive(Debug)]
pub struct DetectionEngine {
    params: Params,
    max_series: usize,
    trainer: Trainer,
    index: BTreeMap<String, usize>,
    series: Vec<SeriesDetector>,
    /// Observations of series that found the table full (counted, never silently lost).
    overflow: u64,
}

impl DetectionEngine {
    /// Engine for the daemon: the learned models are trained on a background thread. An
    /// invalid config is reported and replaced by the defaults.
    pub fn new(cfg: DetectConfig) -> Self {
        let trainer = if cfg.detector == DetectorKind::Statistical {
            Trainer::Inline
        } else {
            Trainer::background().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot start the training thread; training inline");
                Trainer::Inline
            })
        };
        Self::with_trainer(cfg, trainer)
    }

    /// Engine with an explicit trainer ([`Trainer::Inline`] is deterministic).
    pub fn with_trainer(cfg: DetectConfig, trainer: Trainer) -> Self {
        let cfg = match cfg.validate() {
            Ok(()) => cfg,
            Err(e) => {
                tracing::error!(error = e.as_str(), "invalid detect config; using defaults");
                DetectConfig::default()
            }
        };
        Self {
            params: Params::new(&cfg),
            max_series: cfg.max_series as usize,
            trainer,
            index: BTreeMap::new(),
            series: Vec::new(),
            overflow: 0,
        }
    }

    /// Feeds every series of one interval; returns the events raised or cleared by it.
    pub fn observe_interval(&mut self, iv: &Interval) -> Vec<AnomalyEvent> {
        let mut events = Vec::new();
        let Self {
            params,
            max_series,
            trainer,
            index,
            series,
            overflow,
        } = self;
        for_each_series(iv, |name, value| {
            let i = match index.get(name) {
                Some(&i) => i,
                None if series.len() < *max_series => {
                    series.push(SeriesDetector::new(params));
                    index.insert(name.to_string(), series.len() - 1);
                    series.len() - 1
                }
                None => {
                    *overflow += 1;
                    return;
                }
            };
            let step = series[i].update(params, trainer, name, value);
            if let Some(kind) = step.event {
                events.push(AnomalyEvent {
                    kind,
                    series: name.to_string(),
                    ts: iv.ts.clone(),
                    value,
                    baseline: step.baseline,
                    score: step.level,
                    severity: Severity::from_score(step.level),
                });
            }
        });
        events
    }

    /// (series name, state, last fused score), sorted by name.
    pub fn series_states(&self) -> impl Iterator<Item = (&str, SeriesState, f64)> + '_ {
        self.index.iter().map(|(name, &i)| {
            let s = &self.series[i];
            (name.as_str(), s.state(), s.level())
        })
    }

    /// Observations dropped because `max_series` series were already tracked.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    pub fn tracked_series(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(i: u64) -> f64 {
        // Deterministic pseudo-noise around a slow wave.
        let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        100.0 + 10.0 * (i as f64 * 0.02).sin() + (h % 1000) as f64 / 100.0
    }

    fn interval(i: u64, cpu: f64) -> Interval {
        let mut iv = Interval {
            ts: format!("t{i}"),
            seq: i,
            ..Interval::default()
        };
        iv.counters
            .insert("sched_switch".into(), Some(1000 + i % 5));
        iv.counters.insert("disabled_probe".into(), None);
        iv.system.cpu_percent = cpu;
        iv
    }

    fn inline_engine(cfg: DetectConfig) -> DetectionEngine {
        DetectionEngine::with_trainer(cfg, Trainer::Inline)
    }

    #[test]
    fn warm_up_never_raises_even_on_wild_input() {
        let cfg = DetectConfig {
            raise_after: 1,
            ..DetectConfig::default()
        };
        let mut e = inline_engine(cfg.clone());
        for i in 0..u64::from(cfg.warmup) {
            // Alternating extremes would alarm immediately on a ready detector.
            let cpu = if i % 2 == 0 { 0.0 } else { 1e9 };
            assert!(e.observe_interval(&interval(i, cpu)).is_empty(), "row {i}");
            assert!(
                e.series_states()
                    .all(|(_, s, score)| s == SeriesState::WarmingUp && score == 0.0)
            );
        }
        // And a series detector never raises or scores before it is ready.
        let p = Params::new(&cfg);
        let mut d = SeriesDetector::new(&p);
        for i in 0..u64::from(cfg.warmup) {
            let s = d.update(
                &p,
                &Trainer::Inline,
                "x",
                if i % 3 == 0 { -1e12 } else { 5.0 },
            );
            assert_eq!(
                (s.score, s.level, s.event, s.state),
                (0.0, 0.0, None, SeriesState::WarmingUp)
            );
        }
    }

    #[test]
    fn learned_fallback_is_visible() {
        // A constant series cannot train an isolation forest: the learned detector is
        // unavailable and the series reports `fallback`, scored by the statistical detector.
        let p = Params::new(&DetectConfig::default());
        let mut d = SeriesDetector::new(&p);
        let mut last = None;
        for _ in 0..3000 {
            last = Some(d.update(&p, &Trainer::Inline, "flat", 42.0));
        }
        assert_eq!(last.unwrap().state, SeriesState::Fallback);
        assert_eq!(d.state().as_str(), "fallback");
        let l = d.learned.as_ref().unwrap();
        assert!(matches!(l.status(&p.forest), LearnedStatus::Unavailable(_)));

        // A varying series gets a model and becomes ready; the statistical-only detector is
        // ready without one.
        let mut d = SeriesDetector::new(&p);
        for i in 0..3000 {
            last = Some(d.update(&p, &Trainer::Inline, "wave", noisy(i)));
        }
        assert_eq!(last.unwrap().state, SeriesState::Ready);
        let ps = Params::new(&DetectConfig {
            detector: DetectorKind::Statistical,
            ..DetectConfig::default()
        });
        let mut d = SeriesDetector::new(&ps);
        for i in 0..300 {
            last = Some(d.update(&ps, &Trainer::Inline, "wave", noisy(i)));
        }
        assert_eq!(last.unwrap().state, SeriesState::Ready);
    }

    #[test]
    fn background_trainer_swaps_a_model_in() {
        let p = Params::new(&DetectConfig::default());
        let trainer = Trainer::background().unwrap();
        let mut d = SeriesDetector::new(&p);
        let mut i = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while d.state() != SeriesState::Ready {
            d.update(&p, &trainer, "wave", noisy(i));
            i += 1;
            assert!(
                std::time::Instant::now() < deadline,
                "no model after {i} rows"
            );
        }
    }

    #[test]
    fn score_is_finite_and_in_unit_range_for_hostile_input() {
        for kind in [
            DetectorKind::Statistical,
            DetectorKind::Learned,
            DetectorKind::Combined,
        ] {
            let p = Params::new(&DetectConfig {
                detector: kind,
                ..DetectConfig::default()
            });
            let mut d = SeriesDetector::new(&p);
            let hostile = [
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MAX,
                -f64::MAX,
                1e300,
                0.0,
                -0.0,
                f64::MIN_POSITIVE,
            ];
            for i in 0..5000u64 {
                let x = if i % 7 == 0 {
                    hostile[(i / 7) as usize % hostile.len()]
                } else {
                    noisy(i)
                };
                let s = d.update(&p, &Trainer::Inline, "h", x);
                for v in [s.score, s.level] {
                    assert!(
                        v.is_finite() && (0.0..=1.0).contains(&v),
                        "{kind:?} row {i}: {v}"
                    );
                }
                assert!(s.baseline.is_finite());
            }
        }
    }

    #[test]
    fn memory_per_series_is_constant() {
        // The per-series state is a fixed-size struct plus boxed buffers sized at creation;
        // nothing in it grows with the number of rows.
        // (A few hundred bytes inline; the heap part is checked below.)
        assert!(
            std::mem::size_of::<SeriesDetector>() <= 512,
            "{}",
            std::mem::size_of::<SeriesDetector>()
        );
        assert!(
            std::mem::size_of::<StatDetector>() <= 320,
            "{}",
            std::mem::size_of::<StatDetector>()
        );
        let p = Params::new(&DetectConfig::default());
        let mut d = SeriesDetector::new(&p);
        let ring = |d: &SeriesDetector| d.learned.as_ref().map(|l| l.ring_capacity());
        let before = ring(&d);
        for i in 0..50_000 {
            d.update(&p, &Trainer::Inline, "m", noisy(i));
        }
        assert_eq!(ring(&d), before);
        let f = d.learned.as_ref().unwrap().model_nodes();
        // Trees are bounded by the sample size: at most 2 * sample - 1 nodes each.
        assert!(
            f > 0 && f <= p.forest.trees * (2 * p.forest.sample - 1),
            "{f}"
        );
    }

    #[test]
    fn engine_bounds_series_and_counts_overflow() {
        let mut e = inline_engine(DetectConfig {
            max_series: 2,
            ..DetectConfig::default()
        });
        for i in 0..10 {
            e.observe_interval(&interval(i, 5.0));
        }
        assert_eq!(e.tracked_series(), 2);
        // 5 series per interval (one counter is null and skipped): 3 overflow each time.
        assert_eq!(e.overflow(), 30);
    }

    #[test]
    fn engine_raises_and_clears_events_with_hysteresis() {
        let cfg = DetectConfig {
            // Warm up over more than one period of the test wave (314 rows): a detector that
            // has seen only part of it rightly finds the first trough new.
            warmup: 400,
            raise_after: 2,
            clear_after: 3,
            detector: DetectorKind::Statistical,
            ..DetectConfig::default()
        };
        let mut e = inline_engine(cfg);
        let mut events = Vec::new();
        for i in 0..3000u64 {
            let cpu = if (2000..2100).contains(&i) {
                400.0
            } else {
                noisy(i)
            };
            events.extend(e.observe_interval(&interval(i, cpu)));
        }
        let cpu: Vec<_> = events
            .iter()
            .filter(|ev| ev.series == "system.cpu_percent")
            .collect();
        assert!(cpu.len() >= 2, "{events:?}");
        assert_eq!(cpu[0].kind, EventKind::Raised);
        // Raised on the second anomalous interval (k = 2).
        assert_eq!(cpu[0].ts, "t2001");
        assert!(cpu[0].score >= 0.3 && cpu[0].value == 400.0 && cpu[0].baseline < 150.0);
        assert_eq!(cpu[1].kind, EventKind::Cleared);
        let names: Vec<_> = e.series_states().map(|(n, _, _)| n.to_string()).collect();
        assert_eq!(
            names,
            [
                "runqueue_latency_us.p99",
                "sched_switch",
                "system.cpu_percent",
                "system.load1",
                "system.mem_used_percent"
            ]
        );
    }

    #[test]
    fn replay_is_deterministic() {
        let mut input = String::from("timestamp,value\n");
        for i in 0..4000u64 {
            let v = if i == 3000 { 500.0 } else { noisy(i) };
            input.push_str(&format!("{i},{v}\n"));
        }
        let run = || {
            let mut out = Vec::new();
            crate::replay::replay(
                &DetectConfig::default(),
                input.as_bytes(),
                std::path::Path::new("x.csv"),
                None,
                &mut out,
            )
            .unwrap();
            out
        };
        let a = run();
        assert_eq!(a, run());
        assert_eq!(String::from_utf8(a).unwrap().lines().count(), 4001);
    }
}
