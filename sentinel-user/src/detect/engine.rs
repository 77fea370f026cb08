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
