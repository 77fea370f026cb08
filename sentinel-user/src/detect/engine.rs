//! The per-series detector pipeline (statistical + learned -> fused score -> onset shaper and
//! k/m hysteresis) and the engine that runs one pipeline per metric series of an [`Interval`].
//! `sentinel replay` drives [`SeriesDetector`] directly, so replay and the daemon share it.

use std::sync::{
    Arc, LazyLock,
    atomic::{AtomicUsize, Ordering},
};
use std::{collections::HashMap, hash::BuildHasher};

use serde::Serialize;

use super::config::{DetectConfig, DetectorKind};
use super::learned::{ForestParams, LearnedDetector, LearnedStatus, Trainer};
use super::lifecycle::{
    EventKind, EventParams, Evidence, Hysteresis, SeriesState, Shaper, ShaperParams,
};
use super::prefetch::prefetch_lines;
use super::stats::{StatChannels, StatDetector, StatParams};
use crate::model::{
    AnomalyRecord, CONTAINER_SERIES, ContainerDelta, ContainerSeries, DetectionSummary, Interval,
};

/// Everything derived from a validated [`DetectConfig`], shared by all series of an engine.
#[derive(Clone, Debug)]
pub struct Params {
    pub kind: DetectorKind,
    pub warmup: u64,
    pub stat: StatParams,
    pub forest: ForestParams,
    pub shaper: ShaperParams,
    pub event_threshold: f64,
    pub events: EventParams,
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
            events: EventParams {
                raise_after: c.raise_after,
                clear_after: c.clear_after,
                refractory: c.refractory,
                margin: c.rearm_margin,
            },
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
    /// The learned part went out of use or came back on this row (the engine sums these
    /// into one log line per interval).
    pub fallback: Option<FallbackChange>,
    /// Each channel's calibrated score before fusion (`sentinel replay --channels`).
    pub channels: Channels,
}

/// Every channel's calibrated score on one row, before fusion: `level` is the largest of those
/// the detector kind and state use (the statistical ones and the learned ones for `combined`,
/// the learned ones alone for `learned` once its model is ready), and 0 while warming up.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Channels {
    pub stat: StatChannels,
    /// The isolation forest's score, held between block ends (0 without a learned seat).
    pub forest: f64,
    /// The pattern memory's score, held between block ends (0 without a learned seat).
    pub pattern: f64,
}

/// How a series' use of its learned detector changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackChange {
    /// Statistical detector only: the learned one has no model yet.
    NoModel,
    /// Statistical detector only: the learned one failed (see `SeriesDetector::unavailable`).
    Unavailable,
    /// The learned detector is ready: the fallback ended.
    Ended,
}

impl FallbackChange {
    /// What the change means, for a log line about one series.
    pub fn message(self) -> &'static str {
        match self {
            Self::NoModel => {
                "learned detector has no model yet; statistical detector only (fallback)"
            }
            Self::Unavailable => {
                "learned detector unavailable; statistical detector only (fallback)"
            }
            Self::Ended => "learned detector ready; fallback ended",
        }
    }
}

/// The fallback changes of one interval: at 1000 containers a line per series was thousands
/// of lines as they started and again when their models arrived, so the engine logs one line
/// per interval with the counts (each series at DEBUG).
#[derive(Debug, Default)]
struct FallbackChanges {
    no_model: u64,
    unavailable: u64,
    ended: u64,
    /// The first unavailable series of the interval and why.
    example: Option<(Arc<str>, Arc<str>)>,
}

impl FallbackChanges {
    /// Counts one series' (or cohort's) change; the interval's first unavailable detector
    /// becomes the example its line names.
    fn count(&mut self, change: FallbackChange, series: &str, det: &SeriesDetector, p: &Params) {
        match change {
            FallbackChange::NoModel => self.no_model += 1,
            FallbackChange::Unavailable => {
                self.unavailable += 1;
                if self.example.is_none() {
                    let reason = det.unavailable(p).unwrap_or_else(|| Arc::from("unknown"));
                    self.example = Some((Arc::from(series), reason));
                }
            }
            FallbackChange::Ended => self.ended += 1,
        }
    }

    /// Logs the interval's changes, if any, and starts the next interval's count.
    fn flush(&mut self) {
        let c = std::mem::take(self);
        // `count` sets the example with the first unavailable series.
        if let Some((series, reason)) = &c.example {
            tracing::warn!(
                unavailable = c.unavailable,
                example = &**series,
                reason = &**reason,
                no_model_yet = c.no_model,
                ready = c.ended,
                "learned detector unavailable for some series: statistical detector only \
                 (fallback; each series at debug level)"
            );
        } else if c.no_model + c.ended > 0 {
            tracing::info!(
                no_model_yet = c.no_model,
                ready = c.ended,
                "learned detector fallback: series without a model yet (statistical detector \
                 only), series ready (fallback ended); each series at debug level"
            );
        }
    }
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
    /// Fallback log lines emitted so far (for tests and status).
    fallback_logs: u32,
    /// The learned score at the last block end.
    learned_prev: f64,
    /// The engine's seat its learned part holds (`detect.learned_max_series`); none for a
    /// detector outside an engine (replay's). Only held: dropping it gives the seat back.
    #[allow(dead_code)]
    seat: Option<LearnedSeat>,
}

/// How many detectors of an engine may hold a learned part (`detect.learned_max_series`): the
/// forest, its ring and its training are most of a series' memory and of the detection's CPU
/// time, so they are bounded like the series table. A detector created or copied when every
/// seat is taken is judged by the robust statistics alone, for its whole life (counted in
/// `DetectionSummary::statistical_only`).
#[derive(Debug)]
pub struct LearnedBudget {
    held: Arc<AtomicUsize>,
    max: usize,
    /// Detectors made without a learned part for want of a seat.
    refused: AtomicUsize,
}

/// A seat of a [`LearnedBudget`], given back when the detector holding it is dropped: the
/// count is exact by construction, whichever path drops a detector.
#[derive(Debug)]
struct LearnedSeat(Arc<AtomicUsize>);

impl Drop for LearnedSeat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LearnedBudget {
    pub fn new(max: usize) -> Self {
        Self {
            held: Arc::default(),
            max,
            refused: AtomicUsize::new(0),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Detectors made without a learned part for want of a seat, so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Seats taken.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A seat, if one is free. (One engine's detectors are made on one thread.)
    fn take(&self) -> Option<LearnedSeat> {
        if self.held() >= self.max {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        Some(LearnedSeat(self.held.clone()))
    }
}

impl SeriesDetector {
    /// A detector on its own (replay's): the learned part as the detector kind says.
    pub fn new(p: &Params) -> Self {
        Self::with_learned(p, p.kind != DetectorKind::Statistical, None)
    }

    /// An engine's detector (or replay's, which judges its one series as the daemon would): the
    /// learned part only if the kind has one and a seat of `budget` is free.
    pub fn budgeted(p: &Params, budget: &LearnedBudget) -> Self {
        let seat = (p.kind != DetectorKind::Statistical)
            .then(|| budget.take())
            .flatten();
        Self::with_learned(p, seat.is_some(), seat)
    }

    fn with_learned(p: &Params, learned: bool, seat: Option<LearnedSeat>) -> Self {
        let learned = learned.then(|| Box::new(LearnedDetector::new(&p.forest)));
        Self {
            stat: StatDetector::default(),
            learned,
            shaper: Shaper::default(),
            hyst: Hysteresis::default(),
            state: SeriesState::WarmingUp,
            level: 0.0,
            fallback_logged: false,
            fallback_logs: 0,
            learned_prev: 0.0,
            seat,
        }
    }

    /// A copy that goes on alone from here (see `LearnedDetector::fork`), learned part and
    /// all if a seat of `budget` is free; without one, the statistics alone go on.
    fn fork(&self, budget: &LearnedBudget) -> Self {
        let seat = self.learned.as_ref().and_then(|_| budget.take());
        Self {
            stat: self.stat.clone(),
            learned: seat
                .as_ref()
                .and(self.learned.as_ref())
                .map(|l| Box::new(l.fork())),
            seat,
            ..*self
        }
    }

    /// Whether it has a learned part.
    pub fn learned(&self) -> bool {
        self.learned.is_some()
    }

    /// How many times the fallback was logged: once per fallback episode.
    pub fn fallback_logs(&self) -> u32 {
        self.fallback_logs
    }

    pub fn state(&self) -> SeriesState {
        self.state
    }

    /// Last fused score.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// Finite values observed so far.
    pub fn seen(&self) -> u64 {
        self.stat.seen()
    }

    /// Whether an event is currently raised for this series.
    pub fn active(&self) -> bool {
        self.hyst.active()
    }

    /// Starts loading this detector's own lines (the first stage of `prefetch_deep`).
    #[inline]
    fn prefetch_state(&self, _: &Params) {
        prefetch_lines(self);
    }

    /// Starts loading what an update reads behind this detector's pointers: the seasonal
    /// ring's slots and the learned detector. Its own lines should be loaded already (they
    /// hold the pointers), by `prefetch_state` a little earlier.
    #[inline]
    fn prefetch_deep(&self, _: &Params) {
        self.stat.prefetch();
        if let Some(l) = &self.learned {
            l.prefetch();
        }
    }

    /// The learned detector's ring and model, if the next update scores (after `prefetch_deep`).
    #[inline]
    fn prefetch_model(&self, p: &Params) {
        if let Some(l) = &self.learned {
            l.prefetch_model(&p.forest);
        }
    }

    /// The lines where the learned model's trees begin, if the next update scores (after
    /// `prefetch_model`).
    #[inline]
    fn prefetch_tops(&self, p: &Params) {
        if let Some(l) = &self.learned {
            l.prefetch_tops(&p.forest);
        }
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
                fallback: None,
                channels: Channels::default(),
            };
        }
        let stat = self.stat.update(&p.stat, x);
        let learned = self.learned.as_mut().map(|l| {
            let s = l.update(&p.forest, trainer, x.clamp(-1e100, 1e100));
            // The learned score is new once per block of `downsample` rows, and a novel block
            // stays in the shingles of the next few blocks: their scores, high but falling,
            // echo one observation. A block-end score is a new observation when it is higher
            // than the one before.
            let new = l.fresh() && s > self.learned_prev;
            if l.fresh() {
                self.learned_prev = s;
            }
            (s, l.status(&p.forest), new)
        });

        let mut fallback = None;
        // `own`: the part of the score observed on this row; the rest of `level` repeats an
        // observation already counted (see `Evidence::Hold`).
        let (state, level, own) = if self.stat.seen() <= p.warmup {
            (SeriesState::WarmingUp, 0.0, 0.0)
        } else {
            match (p.kind, learned) {
                (DetectorKind::Statistical, _) | (_, None) => {
                    (SeriesState::Ready, stat.score, stat.own)
                }
                (kind, Some((ls, status, new))) => {
                    // Without a model yet (or with none possible) the series is in fallback:
                    // the statistics, and the pattern memory, which needs none (`ls` is its
                    // score then), judge it, whatever the detector kind.
                    let ready = matches!(status, LearnedStatus::Ready);
                    let (state, stat_part, stat_own) = match kind {
                        DetectorKind::Learned if ready => (SeriesState::Ready, 0.0, 0.0),
                        _ if ready => (SeriesState::Ready, stat.score, stat.own),
                        _ => {
                            fallback = self.log_fallback(name, &status);
                            (SeriesState::Fallback, stat.score, stat.own)
                        }
                    };
                    let own = if new { stat_own.max(ls) } else { stat_own };
                    (state, stat_part.max(ls), own)
                }
            }
        };
        if state == SeriesState::Ready && self.fallback_logged {
            self.fallback_logged = false;
            fallback = Some(FallbackChange::Ended);
            tracing::debug!(series = name, "{}", FallbackChange::Ended.message());
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
            let evidence = if level < p.event_threshold {
                Evidence::Normal
            } else if own >= p.event_threshold {
                Evidence::Anomalous
            } else {
                Evidence::Hold
            };
            let event = self.hyst.update(&p.events, evidence, level);
            (score, event)
        };
        let (forest, pattern) = self.learned.as_ref().map_or((0.0, 0.0), |l| l.channels());
        Step {
            score,
            level,
            baseline: stat.baseline,
            state,
            event,
            fallback,
            channels: Channels {
                stat: stat.channels,
                forest,
                pattern,
            },
        }
    }

    /// Logs a fallback episode's start (once per episode, not per row) and returns it.
    fn log_fallback(&mut self, name: &str, status: &LearnedStatus) -> Option<FallbackChange> {
        if self.fallback_logged {
            return None;
        }
        self.fallback_logged = true;
        self.fallback_logs = self.fallback_logs.saturating_add(1);
        let change = match status {
            LearnedStatus::Unavailable(reason) => {
                tracing::debug!(
                    series = name,
                    reason = &**reason,
                    "{}",
                    FallbackChange::Unavailable.message()
                );
                FallbackChange::Unavailable
            }
            _ => {
                tracing::debug!(series = name, "{}", FallbackChange::NoModel.message());
                FallbackChange::NoModel
            }
        };
        Some(change)
    }

    /// Why the learned detector is out of use, when it failed.
    pub fn unavailable(&self, p: &Params) -> Option<Arc<str>> {
        match self.learned.as_ref()?.status(&p.forest) {
            LearnedStatus::Unavailable(reason) => Some(reason),
            _ => None,
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
    /// Series name: a host series (`sched_switch`, `system.cpu_percent`, ...) or a container
    /// series `container.<name>.<signal>`.
    pub series: String,
    /// The signal measured: the host series name, or the container signal (`cpu`,
    /// `runq_latency`, `tcp_retrans`, ...).
    pub signal: String,
    /// Docker id of the container the series belongs to (`None` for host series).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The interval's `ts`.
    pub ts: String,
    pub value: f64,
    pub baseline: f64,
    pub score: f64,
    pub severity: Severity,
}

impl AnomalyEvent {
    /// The form the interval output carries.
    pub fn to_record(&self) -> AnomalyRecord {
        AnomalyRecord {
            kind: match self.kind {
                EventKind::Raised => "raised",
                EventKind::Cleared => "cleared",
            }
            .to_string(),
            series: self.series.clone(),
            signal: self.signal.clone(),
            container_id: self.container_id.clone(),
            // Filled by the daemon's analysis from the interval's contention (issue 20).
            slowed_by: None,
            value: self.value,
            baseline: self.baseline,
            score: self.score,
            severity: match self.severity {
                Severity::Warning => "warning",
                Severity::Critical => "critical",
            }
            .to_string(),
        }
    }
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
            if let Some(rest) = name.strip_prefix("container.") {
                // `container.<name>.<signal>`; names may contain dots, signals do not.
                let (cname, signal) = rest.rsplit_once('.')?;
                let c = iv
                    .containers
                    .iter()
                    .find(|c| container_label(c) == Some(cname));
                return match c {
                    Some(c) => container_signal(c, signal).map(|v| v.filter(|v| v.is_finite())),
                    // The container is not in this interval: no value, not an error.
                    None if CONTAINER_SIGNALS.contains(&signal) => Some(None),
                    None => None,
                };
            }
            let key = name.strip_prefix("counters.").unwrap_or(name);
            return iv.counters.get(key).map(|v| v.map(|v| v as f64));
        }
    };
    Some(Some(v))
}

/// How a watched per-container signal is read.
#[derive(Clone, Copy)]
enum Reading {
    /// Derived by detection (a share or a quantile, not a counter's delta); `None`: nothing
    /// measured (no run-queue samples in the interval).
    Derived(fn(&ContainerDelta) -> Option<f64>),
    /// The delta of a `model::CONTAINER_SERIES` row marked `watch`; `None` where the record
    /// does not measure it (a network series of a container without its own namespace).
    Series(&'static ContainerSeries),
}

impl Reading {
    fn value(self, c: &ContainerDelta) -> Option<f64> {
        match self {
            Reading::Derived(read) => read(c),
            Reading::Series(series) => series.value(c),
        }
    }
}

/// Per-container signals, in the order they are fed: the CPU share and the run-queue p99,
/// then every `model::CONTAINER_SERIES` row marked `watch`, so a watched kernel counter is one
/// field of its row there, not a list here.
static WATCHED: LazyLock<Vec<(&'static str, Reading)>> = LazyLock::new(|| {
    let derived: [(&'static str, Reading); 2] = [
        ("cpu", Reading::Derived(|c| Some(c.cpu_percent))),
        (
            "runq_latency",
            Reading::Derived(|c| {
                (c.runqueue_latency_us.count > 0).then_some(c.runqueue_latency_us.p99)
            }),
        ),
    ];
    let series = CONTAINER_SERIES
        .iter()
        .filter_map(|s| Some((s.watch?, Reading::Series(s))));
    let watched: Vec<_> = derived.into_iter().chain(series).collect();
    // A container's series are found through a fixed array of this many (see `Slots`).
    assert!(
        watched.len() <= MAX_WATCHED,
        "more watched signals than MAX_WATCHED"
    );
    watched
});

/// The most per-container signals `WATCHED` may hold.
const MAX_WATCHED: usize = 8;

/// The names of the per-container signals (series `container.<name>.<signal>`, heal
/// triggers' `signal`), in the order they are fed.
pub static CONTAINER_SIGNALS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| WATCHED.iter().map(|&(name, _)| name).collect());

/// A container signal's value: `None` no such signal, `Some(None)` nothing measured (no
/// run-queue samples in the interval).
fn container_signal(c: &ContainerDelta, signal: &str) -> Option<Option<f64>> {
    let &(_, reading) = WATCHED.iter().find(|&&(name, _)| name == signal)?;
    Some(reading.value(c))
}

/// The `<name>` in `container.<name>.<signal>`: the container name, else the short id, else
/// nothing (such an entry is not tracked).
pub fn container_label(c: &ContainerDelta) -> Option<&str> {
    if !c.name.is_empty() {
        Some(c.name.trim_start_matches('/'))
    } else if !c.id.is_empty() {
        Some(
            c.id.char_indices()
                .nth(12)
                .map_or(&c.id[..], |(end, _)| &c.id[..end]),
        )
    } else {
        None
    }
}

/// The host series the engine watches in an interval, in a fixed order (the containers'
/// follow, see [`container_values`]).
fn for_each_host_series(iv: &Interval, mut f: impl FnMut(&str, f64)) {
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

/// A container's watched signals that have a value in this interval, in `WATCHED` order:
/// (position in `WATCHED`, value).
fn container_values(c: &ContainerDelta) -> impl Iterator<Item = (usize, f64)> + '_ {
    WATCHED
        .iter()
        .enumerate()
        .filter_map(|(k, &(_, reading))| Some((k, reading.value(c)?)))
}

/// What the engine knows about one series (see [`DetectionEngine::series_detail`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SeriesInfo<'a> {
    pub name: &'a str,
    pub signal: &'a str,
    pub container_id: Option<&'a str>,
    pub state: SeriesState,
    /// Last fused score.
    pub score: f64,
    /// Values observed so far, and the count needed before the series is ready.
    pub seen: u64,
    pub warmup: u64,
    /// An event is open.
    pub active: bool,
}

/// A series' detector: its own, or the one it shares with the series created in the same
/// interval that have seen nothing but +0.0 since (a container's `oom_kills`, `abnormal_exits`:
/// at 1000 idle containers, half the series). Fed the same values, their detectors would be
/// equal, so one is fed once per interval for all; a series copies it (`fork`) when it sees
/// anything else, or misses an interval, and goes on alone.
#[derive(Debug)]
enum Detector {
    /// Boxed: a member of a cohort is a few bytes.
    Own(Box<SeriesDetector>),
    /// The key of its cohort in `DetectionEngine::cohorts`: the interval it was created in.
    Cohort(u64),
}

/// The shared detector of the series created in one interval that have seen only +0.0.
#[derive(Debug)]
struct Cohort {
    det: SeriesDetector,
    members: usize,
    /// Members observed in this interval (each with +0.0).
    fed: usize,
}

/// The name a cohort's detector logs under (its learned part's fallback).
const COHORT_NAME: &str = "(series with only zeros so far)";

fn detector<'a>(cohorts: &'a HashMap<u64, Cohort, Hasher>, t: &'a Tracked) -> &'a SeriesDetector {
    match &t.det {
        Detector::Own(det) => det,
        Detector::Cohort(id) => &cohorts[id].det,
    }
}

type Hasher = foldhash::quality::RandomState;

/// One tracked series.
#[derive(Debug)]
struct Tracked {
    /// Shared with the status every interval publishes (a count, not a copy).
    name: Arc<str>,
    /// A container's series: its label (the key of `DetectionEngine::containers`) and the
    /// signal's position in `WATCHED`.
    container: Option<(Arc<str>, usize)>,
    det: Detector,
    signal: String,
    container_id: Option<String>,
    /// Engine interval count when last observed.
    last_seen: u64,
    value: f64,
    baseline: f64,
}

impl Tracked {
    /// An event of this series in the interval `ts`.
    fn event(
        &self,
        kind: EventKind,
        ts: &str,
        value: f64,
        baseline: f64,
        score: f64,
    ) -> AnomalyEvent {
        AnomalyEvent {
            kind,
            series: self.name.to_string(),
            signal: self.signal.clone(),
            container_id: self.container_id.clone(),
            ts: ts.to_string(),
            value,
            baseline,
            score,
            severity: Severity::from_score(score),
        }
    }
}

/// A container's series: the place in `DetectionEngine::tracked` of each watched signal's.
#[derive(Debug)]
struct Slots {
    /// The container id they were last fed with.
    id: Option<Box<str>>,
    place: [usize; MAX_WATCHED],
}

impl Slots {
    /// No series (the signal has had no value yet, or the table was full).
    const NONE: usize = usize::MAX;

    fn places(&self) -> impl Iterator<Item = usize> + '_ {
        placed(&self.place)
    }
}

/// The places in `place` that hold a series.
fn placed(place: &[usize; MAX_WATCHED]) -> impl Iterator<Item = usize> + '_ {
    place.iter().copied().filter(|&p| p != Slots::NONE)
}

/// A container's entry in `DetectionEngine::containers`.
#[derive(Debug)]
struct Known {
    label: Arc<str>,
    /// The record name it was last found by. Attribution shares a key's name from one
    /// interval to the next, so the same `Arc` finds its entry without comparing the text
    /// (a cold string per container per interval: 5% of the daemon's CPU at 1000 containers).
    found_by: Option<Arc<str>>,
    slots: Slots,
}

impl Known {
    /// The entry of `label`; `name` is the record's name it was derived from.
    fn is(&self, name: &Arc<str>, label: &str) -> bool {
        self.found_by.as_ref().is_some_and(|n| Arc::ptr_eq(n, name)) || *self.label == *label
    }
}

type PrefetchStage = fn(&SeriesDetector, &Params);

/// A container as found at the start of an interval: its entry's bucket in
/// `DetectionEngine::containers` and its series' places (`Slots::NONE` each if it is not known).
#[derive(Debug, Clone, Copy)]
struct Found {
    bucket: Option<usize>,
    place: [usize; MAX_WATCHED],
}

/// How many containers ahead of the one being fed each stage of a series' state is asked
/// for: each stage reads pointers the one before loaded.
const PREFETCH_STAGES: [(usize, PrefetchStage); 4] = [
    (4, SeriesDetector::prefetch_state),
    (3, SeriesDetector::prefetch_deep),
    (2, SeriesDetector::prefetch_model),
    (1, SeriesDetector::prefetch_tops),
];

/// One detector pipeline per series, created lazily, bounded by `max_series`, and dropped when
/// not observed for `series_ttl` intervals.
#[derive(Debug)]
pub struct DetectionEngine {
    params: Params,
    max_series: usize,
    ttl: u64,
    trainer: Trainer,
    /// Every tracked series, dense: an expired one's place is taken by the last. Walked in
    /// place every interval (summary, expiry); what is shown in name order is sorted when
    /// asked for.
    tracked: Vec<Tracked>,
    /// Series name -> its place in `tracked`: hashed, for names with long common prefixes.
    by_name: HashMap<Arc<str>, usize, foldhash::quality::RandomState>,
    /// Container label -> its series' places: one lookup per container per interval, no name
    /// built for a series that exists. At 1000 containers the per-series lookups by name
    /// (each a cold key compared) were a fifth of the daemon's CPU. Hashed by label with
    /// `label_hasher`; see [`Known`] for how an entry is recognised.
    containers: hashbrown::HashTable<Known>,
    label_hasher: Hasher,
    /// Shared detectors of series that have seen only +0.0, by the interval they were created.
    cohorts: HashMap<u64, Cohort, Hasher>,
    /// Seats for learned parts (`detect.learned_max_series`), taken first come: the host's
    /// series are created first.
    learned: LearnedBudget,
    /// A series was turned away from the learned budget (logged once).
    learned_full_logged: bool,
    /// Intervals observed.
    tick: u64,
    /// This interval's fallback changes, logged at its end.
    fallback_changes: FallbackChanges,
    /// Each container of the interval being observed, as found before any is fed (see
    /// `observe_interval`); kept for its allocation.
    ahead: Vec<Found>,
    /// Observations of series that found the table full (counted, never silently lost).
    overflow: u64,
    /// Series dropped because they were not observed for `series_ttl` intervals.
    expired: u64,
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
            ttl: u64::from(cfg.series_ttl),
            trainer,
            tracked: Vec::new(),
            by_name: HashMap::default(),
            containers: hashbrown::HashTable::new(),
            label_hasher: Hasher::default(),
            cohorts: HashMap::default(),
            learned: LearnedBudget::new(cfg.learned_max_series as usize),
            learned_full_logged: false,
            tick: 0,
            fallback_changes: FallbackChanges::default(),
            ahead: Vec::new(),
            overflow: 0,
            expired: 0,
        }
    }

    /// Feeds every series of one interval (host series, then each container's); returns the
    /// events raised or cleared by it, including the clearing of open events of series that
    /// expired.
    pub fn observe_interval(&mut self, iv: &Interval) -> Vec<AnomalyEvent> {
        self.tick += 1;
        let mut events = Vec::new();
        for_each_host_series(iv, |name, value| {
            let place = match self.by_name.get(name) {
                Some(&place) => Some(place),
                None => self.create(Arc::from(name), name, None, None, value),
            };
            if let Some(place) = place {
                self.feed(place, value, &iv.ts, &mut events);
            }
        });
        // Every container is found first, so that its series' state can be asked for a few
        // containers ahead, in stages (the detectors, what they point to, the learned ring and
        // model, then where the model's trees begin: `PREFETCH_STAGES`): when a container is fed
        // its state is in the cache (see `prefetch`). `observe_container` starts from what was
        // found (checked: a container created before it may have moved the entries).
        let mut ahead = std::mem::take(&mut self.ahead);
        ahead.clear();
        ahead.extend(iv.containers.iter().map(|c| self.find(c)));
        for (k, c) in iv.containers.iter().enumerate() {
            for (distance, stage) in PREFETCH_STAGES {
                if let Some(found) = ahead.get(k + distance) {
                    self.prefetch_series(&found.place, stage);
                }
            }
            self.observe_container(c, ahead[k].bucket, &iv.ts, &mut events);
        }
        self.ahead = ahead;
        self.feed_cohorts(&iv.ts, &mut events);
        self.expire(&iv.ts, &mut events);
        self.fallback_changes.flush();
        if !self.learned_full_logged && self.learned.refused() > 0 {
            self.learned_full_logged = true;
            tracing::warn!(
                learned_max_series = self.learned.max(),
                "every learned-model seat is taken: further series are judged by the robust \
                 statistics alone (detect.learned_max_series; counted as statistical_only)"
            );
        }
        events
    }

    /// Feeds each cohort's detector its interval's +0.0, once for all its members, after a
    /// member that was not observed left with the detector as it was (not fed, as its own
    /// would not have been).
    fn feed_cohorts(&mut self, ts: &str, events: &mut Vec<AnomalyEvent>) {
        let tick = self.tick;
        let Self {
            params,
            trainer,
            tracked,
            cohorts,
            fallback_changes,
            learned,
            ..
        } = self;
        cohorts.retain(|id, c| {
            if c.fed < c.members {
                for t in tracked.iter_mut() {
                    if matches!(t.det, Detector::Cohort(of) if of == *id) && t.last_seen != tick {
                        t.det = Detector::Own(Box::new(c.det.fork(learned)));
                        c.members -= 1;
                    }
                }
            }
            c.fed = 0;
            if c.members == 0 {
                return false;
            }
            let step = c.det.update(params, trainer, COHORT_NAME, 0.0);
            if let Some(change) = step.fallback {
                // One for the cohort: its members share the detector.
                fallback_changes.count(change, COHORT_NAME, &c.det, params);
            }
            if let Some(kind) = step.event {
                events.extend(
                    tracked
                        .iter()
                        .filter(|t| matches!(t.det, Detector::Cohort(of) if of == *id))
                        .map(|t| t.event(kind, ts, 0.0, step.baseline, step.level)),
                );
            }
            true
        });
    }

    /// A container's entry, if it is known.
    fn find(&self, c: &ContainerDelta) -> Found {
        let mut place = [Slots::NONE; MAX_WATCHED];
        // The places are copied by the match itself: the table is read once.
        let bucket = container_label(c).and_then(|label| {
            let hash = self.label_hasher.hash_one(label);
            self.containers.find_bucket_index(hash, |e| {
                let hit = e.is(&c.name, label);
                if hit {
                    place = e.slots.place;
                }
                hit
            })
        });
        Found { bucket, place }
    }

    fn prefetch_series(&self, places: &[usize; MAX_WATCHED], stage: PrefetchStage) {
        for place in placed(places) {
            // A cohort's detector is shared (fed once, after the containers).
            if let Some(Tracked {
                det: Detector::Own(det),
                ..
            }) = self.tracked.get(place)
            {
                stage(det, &self.params);
            }
        }
    }

    /// Feeds a container's series, creating those it has not had yet; `found` is its entry's
    /// bucket in `containers` as `find` saw it at the start of the interval.
    fn observe_container(
        &mut self,
        c: &ContainerDelta,
        found: Option<usize>,
        ts: &str,
        events: &mut Vec<AnomalyEvent>,
    ) {
        let Some(label) = container_label(c) else {
            return;
        };
        let id = (!c.id.is_empty()).then_some(c.id.as_str());
        // One lookup for a known container whose series all exist, done by `find`; the entry
        // is written again only when one is created or the id changed. A container none of
        // whose series could be created (the table full) gets no entry.
        let hash = self.label_hasher.hash_one(label);
        let bucket = found
            .filter(|&b| {
                self.containers
                    .get_bucket(b)
                    .is_some_and(|e| e.is(&c.name, label))
            })
            .or_else(|| {
                self.containers
                    .find_bucket_index(hash, |e| e.is(&c.name, label))
            });
        let known = bucket.and_then(|b| self.containers.get_bucket_mut(b));
        let (mut place, known_id) = match known {
            Some(e) => {
                if !e.found_by.as_ref().is_some_and(|n| Arc::ptr_eq(n, &c.name)) {
                    e.found_by = Some(c.name.clone());
                }
                (e.slots.place, Some(e.slots.id.as_deref() == id))
            }
            None => ([Slots::NONE; MAX_WATCHED], None),
        };
        // A container recreated under the same name keeps its series; the id follows.
        if known_id == Some(false) {
            for p in placed(&place) {
                self.tracked[p].container_id = id.map(str::to_string);
            }
        }
        let mut created = false;
        let mut key: Option<Arc<str>> = None;
        for (k, value) in container_values(c) {
            if place[k] == Slots::NONE {
                let signal = WATCHED[k].0;
                let label = key
                    .get_or_insert_with(|| {
                        self.containers
                            .find(hash, |e| *e.label == *label)
                            .map_or_else(|| Arc::from(label), |e| e.label.clone())
                    })
                    .clone();
                let name = Arc::from(format!("container.{label}.{signal}"));
                match self.create(name, signal, Some((label, k)), id, value) {
                    Some(p) => {
                        place[k] = p;
                        created = true;
                    }
                    None => continue,
                }
            }
            self.feed(place[k], value, ts, events);
        }
        if created || known_id == Some(false) {
            let slots = Slots {
                id: id.map(Box::from),
                place,
            };
            let Self {
                containers,
                label_hasher,
                ..
            } = self;
            match containers.find_mut(hash, |e| *e.label == *label) {
                Some(e) => e.slots = slots,
                None => {
                    let label = key.expect("set when a series was created");
                    containers.insert_unique(
                        hash,
                        Known {
                            label,
                            found_by: Some(c.name.clone()),
                            slots,
                        },
                        |e| label_hasher.hash_one(&*e.label),
                    );
                }
            }
        }
    }

    /// A new series' place, or `None` (counted) when `max_series` are tracked. A first value
    /// of +0.0 joins the cohort of this interval.
    fn create(
        &mut self,
        name: Arc<str>,
        signal: &str,
        container: Option<(Arc<str>, usize)>,
        container_id: Option<&str>,
        first: f64,
    ) -> Option<usize> {
        if self.tracked.len() >= self.max_series {
            self.overflow += 1;
            return None;
        }
        let (params, budget) = (&self.params, &self.learned);
        let det = if first.to_bits() == 0 {
            let cohort = self.cohorts.entry(self.tick).or_insert_with(|| Cohort {
                det: SeriesDetector::budgeted(params, budget),
                members: 0,
                fed: 0,
            });
            cohort.members += 1;
            Detector::Cohort(self.tick)
        } else {
            Detector::Own(Box::new(SeriesDetector::budgeted(params, budget)))
        };
        let place = self.tracked.len();
        self.by_name.insert(name.clone(), place);
        self.tracked.push(Tracked {
            name,
            container,
            det,
            signal: signal.to_string(),
            container_id: container_id.map(str::to_string),
            last_seen: 0,
            value: 0.0,
            baseline: 0.0,
        });
        Some(place)
    }

    fn feed(&mut self, place: usize, value: f64, ts: &str, events: &mut Vec<AnomalyEvent>) {
        let t = &mut self.tracked[place];
        // Fed twice in one interval: two containers whose labels collide ("web", "/web").
        let again = t.last_seen == self.tick;
        t.last_seen = self.tick;
        if let Detector::Cohort(id) = t.det {
            let cohort = self.cohorts.get_mut(&id).expect("a member's cohort exists");
            if value.to_bits() == 0 && !again {
                // Fed with the others at the end of the interval.
                cohort.fed += 1;
                t.value = value;
                return;
            }
            // Cohorts are fed at the end of the interval: this is the detector as its own
            // would be before this interval's values.
            let mut own = Box::new(cohort.det.fork(&self.learned));
            if again {
                // Its first value, +0.0, was left for the cohort's feed: it is its own now.
                cohort.fed -= 1;
                let step = own.update(&self.params, &self.trainer, &t.name, 0.0);
                if let Some(change) = step.fallback {
                    self.fallback_changes
                        .count(change, &t.name, &own, &self.params);
                }
                t.baseline = step.baseline;
                if let Some(kind) = step.event {
                    events.push(t.event(kind, ts, 0.0, step.baseline, step.level));
                }
            }
            t.det = Detector::Own(own);
            cohort.members -= 1;
            if cohort.members == 0 {
                self.cohorts.remove(&id);
            }
        }
        let Detector::Own(det) = &mut t.det else {
            unreachable!("a series that left its cohort has its own detector");
        };
        let step = det.update(&self.params, &self.trainer, &t.name, value);
        if let Some(change) = step.fallback {
            self.fallback_changes
                .count(change, &t.name, det, &self.params);
        }
        t.value = value;
        t.baseline = step.baseline;
        if let Some(kind) = step.event {
            events.push(t.event(kind, ts, value, step.baseline, step.level));
        }
    }

    /// Drops series not observed for `series_ttl` intervals; an open event is cleared.
    fn expire(&mut self, ts: &str, events: &mut Vec<AnomalyEvent>) {
        let (tick, ttl) = (self.tick, self.ttl);
        let mut cleared = Vec::new();
        let mut place = 0;
        while place < self.tracked.len() {
            let t = &self.tracked[place];
            if tick - t.last_seen < ttl {
                place += 1;
                continue;
            }
            self.expired += 1;
            if detector(&self.cohorts, t).active() {
                cleared.push(t.event(EventKind::Cleared, ts, t.value, t.baseline, 0.0));
            }
            let gone = self.tracked.swap_remove(place);
            self.by_name.remove(&gone.name);
            // (A member not observed left its cohort at the end of that interval already.)
            if let Detector::Cohort(id) = gone.det
                && let Some(c) = self.cohorts.get_mut(&id)
            {
                c.members -= 1;
                if c.members == 0 {
                    self.cohorts.remove(&id);
                }
            }
            if let Some((label, k)) = &gone.container
                && let Ok(mut entry) = self
                    .containers
                    .find_entry(self.label_hasher.hash_one(&**label), |e| e.label == *label)
            {
                let slots = &mut entry.get_mut().slots;
                slots.place[*k] = Slots::NONE;
                if slots.places().next().is_none() {
                    entry.remove();
                }
            }
            // The last series took the gone one's place (and is looked at next).
            if let Some(moved) = self.tracked.get(place) {
                self.by_name.insert(moved.name.clone(), place);
                if let Some((label, k)) = &moved.container
                    && let Some(e) = self
                        .containers
                        .find_mut(self.label_hasher.hash_one(&**label), |e| e.label == *label)
                {
                    e.slots.place[*k] = place;
                }
            }
        }
        // In name order, whatever the table's.
        cleared.sort_by(|a, b| a.series.cmp(&b.series));
        events.append(&mut cleared);
    }

    /// (series name, state, last fused score), sorted by name.
    pub fn series_states(&self) -> impl Iterator<Item = (&str, SeriesState, f64)> + '_ {
        self.by_name().map(|(name, t)| {
            let d = detector(&self.cohorts, t);
            (&**name, d.state(), d.level())
        })
    }

    /// Whether `series` is tracked.
    pub fn tracks(&self, series: &str) -> bool {
        self.by_name.contains_key(series)
    }

    /// (series name, state, last fused score) in no particular order, names shared.
    pub fn series_unordered(&self) -> impl Iterator<Item = (&Arc<str>, SeriesState, f64)> + '_ {
        self.tracked.iter().map(|t| {
            let d = detector(&self.cohorts, t);
            (&t.name, d.state(), d.level())
        })
    }

    fn by_name(&self) -> impl Iterator<Item = (&Arc<str>, &Tracked)> + '_ {
        let mut all: Vec<(&Arc<str>, &Tracked)> =
            self.tracked.iter().map(|t| (&t.name, t)).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    /// Every tracked series with its warm-up progress (`seen` of `warmup` values, for a
    /// `warming (n/W)` status), sorted by name.
    pub fn series_detail(&self) -> impl Iterator<Item = SeriesInfo<'_>> + '_ {
        let warmup = self.params.warmup;
        self.by_name().map(move |(name, t)| {
            let d = detector(&self.cohorts, t);
            SeriesInfo {
                name,
                signal: &t.signal,
                container_id: t.container_id.as_deref(),
                state: d.state(),
                score: d.level(),
                seen: d.seen(),
                warmup,
                active: d.active(),
            }
        })
    }

    /// Life-cycle counts and open events, as the interval output carries them.
    pub fn summary(&self) -> DetectionSummary {
        let mut s = DetectionSummary {
            enabled: true,
            series: self.tracked.len() as u64,
            series_overflow: self.overflow,
            ..DetectionSummary::default()
        };
        for t in &self.tracked {
            let d = detector(&self.cohorts, t);
            match d.state() {
                SeriesState::WarmingUp => s.warming_up += 1,
                SeriesState::Ready => s.ready += 1,
                SeriesState::Fallback => s.fallback += 1,
            }
            if d.active() {
                s.open.push(t.name.to_string());
            }
            if self.params.kind != DetectorKind::Statistical && !d.learned() {
                s.statistical_only += 1;
            }
        }
        s.open.sort_unstable();
        s
    }

    /// Observations dropped because `max_series` series were already tracked.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// Series dropped after `series_ttl` intervals without an observation.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    pub fn tracked_series(&self) -> usize {
        self.tracked.len()
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

    /// Both detectors (explicitly, whatever the default).
    fn combined() -> DetectConfig {
        DetectConfig {
            detector: DetectorKind::Combined,
            ..DetectConfig::default()
        }
    }

    fn inline_engine(cfg: DetectConfig) -> DetectionEngine {
        DetectionEngine::with_trainer(cfg, Trainer::Inline)
    }

    #[test]
    fn warm_up_never_raises_even_on_wild_input() {
        // Every detector kind, including the learned one alone (FAULT-MATRIX M1: the learned
        // detector is never consulted before it is warm).
        for kind in [
            DetectorKind::Statistical,
            DetectorKind::Learned,
            DetectorKind::Combined,
        ] {
            let cfg = DetectConfig {
                raise_after: 1,
                detector: kind,
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
                // Progress is visible as `warming (n/W)`.
                let cpu = e
                    .series_detail()
                    .find(|s| s.name == "system.cpu_percent")
                    .unwrap();
                assert_eq!((cpu.seen, cpu.warmup), (i + 1, u64::from(cfg.warmup)));
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
                    (0.0, 0.0, None, SeriesState::WarmingUp),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn a_value_that_keeps_climbing_raises_one_event_that_lasts_while_it_climbs() {
        // The climb of `stats::tests::a_value_that_keeps_climbing_holds_its_first_breakouts_score`
        // in the daemon: replay reports it once, and the daemon raises one event that stays
        // raised while the value stays out (a breakout scored on its row alone would never
        // meet `raise_after`).
        let climb = crate::detect::stats::tests::noise_then_slide(55.0, 0.3);
        for kind in [DetectorKind::Statistical, DetectorKind::Combined] {
            let p = Params::new(&DetectConfig {
                detector: kind,
                ..DetectConfig::default()
            });
            let mut d = SeriesDetector::new(&p);
            let mut events = vec![];
            for i in 0..2300u64 {
                if let Some(e) = d.update(&p, &Trainer::Inline, "gauge", climb(i)).event {
                    events.push((i, e));
                }
            }
            assert_eq!(events.len(), 1, "{kind:?}: {events:?}");
            let (row, kind_of) = events[0];
            assert_eq!(kind_of, EventKind::Raised, "{kind:?}");
            assert!((2000..2010).contains(&row), "{kind:?}: raised at {row}");
        }
    }

    #[test]
    fn one_novel_block_does_not_raise_an_event_by_itself() {
        // The learned detector alone: its score is new once per block of `downsample` rows,
        // held in between, and a novel block echoes in the shingles of the next few blocks.
        let cfg = DetectConfig {
            detector: DetectorKind::Learned,
            raise_after: 2,
            ..DetectConfig::default()
        };
        let p = Params::new(&cfg);
        let ds = u64::from(cfg.downsample);
        let mut d = SeriesDetector::new(&p);
        let trainer = Trainer::Inline;
        let mut i = 0u64;
        // Ready, settled, and at a block start.
        while d.state() != SeriesState::Ready || i < 3000 || !i.is_multiple_of(ds) {
            d.update(&p, &trainer, "x", noisy(i));
            i += 1;
        }
        // Feeds `blocks` novel blocks, then normal rows; returns the longest run of rows at
        // the event threshold and the events raised.
        let mut novel = |d: &mut SeriesDetector, blocks: u64| {
            let (mut run, mut longest, mut raised) = (0, 0, 0);
            for k in 0..blocks * ds + 40 {
                let x = if k < blocks * ds { 400.0 } else { noisy(i) };
                let s = d.update(&p, &trainer, "x", x);
                i += 1;
                run = if s.level >= p.event_threshold {
                    run + 1
                } else {
                    0
                };
                longest = longest.max(run);
                raised += usize::from(s.event == Some(EventKind::Raised));
            }
            (longest, raised)
        };
        let (longest, raised) = novel(&mut d, 1);
        // Counted row by row, the held score and its echo would meet `raise_after` (four
        // times over).
        assert!(
            longest >= 4 * cfg.raise_after,
            "score held for {longest} rows"
        );
        assert_eq!(raised, 0, "one novel block raised an event");
        // Two novel blocks in a row are two observations: one event.
        let (_, raised) = novel(&mut d, 2);
        assert_eq!(raised, 1);
    }

    #[test]
    fn learned_fallback_is_visible() {
        // A constant series cannot train an isolation forest: the learned detector is
        // unavailable and the series reports `fallback`, scored by the statistical detector (and
        // the pattern memory, which needs no model).
        let p = Params::new(&combined());
        let mut d = SeriesDetector::new(&p);
        let mut last = None;
        for _ in 0..3000 {
            last = Some(d.update(&p, &Trainer::Inline, "flat", 42.0));
        }
        assert_eq!(last.unwrap().state, SeriesState::Fallback);
        assert_eq!(d.state().as_str(), "fallback");
        // Logged once, not once per row.
        assert_eq!(d.fallback_logs(), 1);
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
    fn a_young_series_is_judged_by_the_pattern_memory_before_its_forest() {
        // The forest trains once its ring of block means has filled (1024 rows at the
        // defaults); the pattern memory needs no model, so the combined detector judges a
        // young series by it as well as by the statistics (their maximum, in state
        // `fallback`). A spike (up 8, then back by 4) every 240 rows, then at row 840, inside
        // the range, a shape it has never shown: the same values in the other order. The
        // statistics see the jump and let go of it within a few rows (0.24 to 0.30 by rows 851
        // to 862); the pattern memory holds the new shape above 0.38 there.
        let shape = |i: u64, first: f64, second: f64| match i % 240 {
            120..=123 => first,
            124..=127 => second,
            _ => 10.0 + 0.1 * crate::detect::stats::tests::noise(i),
        };
        let series = |i: u64| {
            if (840..1000).contains(&i) {
                shape(i, 14.0, 18.0)
            } else {
                shape(i, 18.0, 14.0)
            }
        };
        let p = Params::new(&combined());
        let ps = Params::new(&DetectConfig {
            detector: DetectorKind::Statistical,
            ..DetectConfig::default()
        });
        let (mut d, mut s) = (SeriesDetector::new(&p), SeriesDetector::new(&ps));
        let mut gain: f64 = 0.0;
        for i in 0..1000 {
            let c = d.update(&p, &Trainer::Inline, "young", series(i));
            let st = s.update(&ps, &Trainer::Inline, "young", series(i));
            assert!(c.level >= st.level, "row {i}: {} < {}", c.level, st.level);
            if i > 150 {
                assert_eq!(c.state, SeriesState::Fallback, "row {i}");
            }
            if i >= 840 {
                gain = gain.max(c.level - st.level);
            }
        }
        assert!(
            gain > 0.1,
            "the new shape scored only {gain} above the statistics"
        );
    }

    #[test]
    fn background_trainer_swaps_a_model_in() {
        let p = Params::new(&combined());
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
        // 352 with the stuck-value channel's 72 bytes, 376 with the last breakout's 24
        // (2026-12-07).
        assert!(
            std::mem::size_of::<StatDetector>() <= 376,
            "{}",
            std::mem::size_of::<StatDetector>()
        );
        let p = Params::new(&combined());
        let mut d = SeriesDetector::new(&p);
        let ring = |d: &SeriesDetector| d.learned.as_ref().map(|l| l.ring_capacity());
        let before = ring(&d);
        for i in 0..50_000 {
            d.update(&p, &Trainer::Inline, "m", noisy(i));
        }
        assert_eq!(ring(&d), before);
        let f = d.learned.as_ref().unwrap().model_nodes();
        // Trees are bounded by the sample size: at most 2 * sample - 1 nodes each, in lines at
        // least half full (see `lay_out`).
        assert!(
            f > 0 && f <= 2 * p.forest.trees * (2 * p.forest.sample - 1) + 8,
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
    fn one_incident_raises_one_event_in_the_engine() {
        // An incident whose score dips long enough for the event to clear (clear_after 10),
        // then comes back: one raised event, as replay reports one alarm. Without the
        // refractory span (refractory 0) the same input raises two.
        let raised = |refractory: u32| {
            let mut e = inline_engine(DetectConfig {
                warmup: 400,
                detector: DetectorKind::Statistical,
                refractory,
                ..DetectConfig::default()
            });
            let mut n = 0;
            for i in 0..2200u64 {
                let cpu = if (2000..2003).contains(&i) || (2080..2083).contains(&i) {
                    400.0
                } else {
                    noisy(i)
                };
                let evs = e.observe_interval(&interval(i, cpu));
                n += evs
                    .iter()
                    .filter(|ev| ev.series == "system.cpu_percent" && ev.kind == EventKind::Raised)
                    .count();
            }
            n
        };
        assert_eq!(raised(DetectConfig::default().refractory), 1);
        assert_eq!(raised(0), 2);
    }

    fn container(id: &str, name: &str, cpu: f64) -> ContainerDelta {
        let mut c = ContainerDelta {
            id: id.into(),
            name: name.into(),
            cpu_percent: cpu,
            tcp_retransmits: 3,
            ..ContainerDelta::default()
        };
        c.runqueue_latency_us.p99 = 50.0;
        c.runqueue_latency_us.count = 10;
        c
    }

    /// Containers that start together enter the fallback together and leave it together:
    /// one log line each time with the counts, not one per series (thousands at 1000
    /// containers); the counts add up to the series that became ready.
    #[test]
    fn fallback_changes_are_logged_once_per_interval() {
        const CONTAINERS: usize = 12;
        let mut e = inline_engine(DetectConfig {
            warmup: 20,
            train_window: 64,
            ..combined()
        });
        let mut rng = crate::detect::learned::Rng(7);
        let (intervals, log) = crate::detect::config::tests::logged(|| {
            let mut changed = 0;
            for i in 0..600u64 {
                let iv = Interval {
                    ts: format!("t{i}"),
                    seq: i,
                    containers: (0..CONTAINERS)
                        .map(|k| {
                            let cpu = 10.0 + (rng.next_u64() % 1000) as f64 / 100.0;
                            let mut c = container(&format!("{k:064x}"), &format!("c{k}"), cpu);
                            c.runqueue_latency_us.p99 = 40.0 + (rng.next_u64() % 20) as f64;
                            c
                        })
                        .collect(),
                    ..Interval::default()
                };
                let before = e.summary();
                e.observe_interval(&iv);
                let after = e.summary();
                changed +=
                    u32::from((before.ready, before.fallback) != (after.ready, after.fallback));
            }
            changed
        });
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("learned detector"))
            .collect();
        let sum = |field: &str| -> u64 {
            lines
                .iter()
                .filter_map(|l| l.split(&format!("{field}=")).nth(1))
                .map(|v| v.split(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        let ready = e.summary().ready;
        assert!(ready >= 2 * CONTAINERS as u64, "{:?}", e.summary());
        assert_eq!(sum("ready"), ready, "{log}");
        assert!(sum("no_model_yet") >= ready, "{log}");
        // At most one line per interval in which a series entered or left the fallback.
        assert!(
            !lines.is_empty() && lines.len() as u32 <= intervals,
            "{log}"
        );
        assert!(lines.len() < 8, "{} lines: {log}", lines.len());
        assert!(
            !log.contains("series="),
            "no line per series at INFO: {log}"
        );
    }

    /// A model that failed is a WARN line naming a series and the reason, also when the
    /// detector that failed is the all-zero cohort's (it once went unlogged).
    #[test]
    fn a_failed_model_is_logged_whichever_detector_failed() {
        // Warm-up past the first training: series enter the fallback with a failed model
        // (constant values), not "no model yet". All-zero series share the cohort's detector.
        let mut e = inline_engine(DetectConfig {
            warmup: 400,
            train_window: 64,
            ..combined()
        });
        let (_, log) = crate::detect::config::tests::logged(|| {
            for i in 0..600u64 {
                let iv = Interval {
                    ts: format!("t{i}"),
                    seq: i,
                    containers: (0..4)
                        .map(|k| ContainerDelta {
                            id: format!("{k:064x}"),
                            name: format!("c{k}").into(),
                            ..ContainerDelta::default()
                        })
                        .collect(),
                    ..Interval::default()
                };
                e.observe_interval(&iv);
            }
        });
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("learned detector unavailable"))
            .collect();
        assert!(!warned.is_empty(), "{log}");
        assert!(
            warned
                .iter()
                .all(|l| l.contains(&format!("example=\"{COHORT_NAME}\""))
                    || l.contains(&format!("example={COHORT_NAME}"))),
            "{log}"
        );
        assert!(warned.iter().all(|l| !l.contains("unknown")), "{log}");
    }

    #[test]
    fn containers_yield_named_series_and_events_carry_the_id() {
        let mut e = inline_engine(DetectConfig {
            warmup: 400,
            detector: DetectorKind::Statistical,
            ..DetectConfig::default()
        });
        let mut events = Vec::new();
        for i in 0..3000u64 {
            let mut iv = interval(i, noisy(i));
            let cpu = if (2000..2100).contains(&i) {
                400.0
            } else {
                noisy(i + 77)
            };
            iv.containers.push(container("abc123", "/web", cpu));
            // A container without run-queue samples this interval: no runq_latency value.
            let mut idle = container("def456", "db", 1.0);
            idle.runqueue_latency_us.count = 0;
            // In the host's network namespace: its TCP fields are not measured.
            idle.network = crate::model::Network::Host;
            iv.containers.push(idle);
            events.extend(e.observe_interval(&iv));
        }
        let names: Vec<_> = e.series_states().map(|(n, _, _)| n.to_string()).collect();
        for n in [
            "container.web.cpu",
            "container.web.runq_latency",
            "container.web.tcp_retrans",
            "container.web.abnormal_exits",
            "container.db.cpu",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
        for n in [
            "container.db.runq_latency",
            "container.db.tcp_retrans",
            "container.db.tcp_resets",
        ] {
            assert!(!names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        assert!(names.iter().any(|x| x == "container.db.oom_kills"));
        let web: Vec<_> = events
            .iter()
            .filter(|ev| ev.series == "container.web.cpu")
            .collect();
        assert!(!web.is_empty(), "{events:?}");
        assert_eq!(web[0].kind, EventKind::Raised);
        assert_eq!(web[0].ts, "t2001");
        assert_eq!(web[0].signal, "cpu");
        assert_eq!(web[0].container_id.as_deref(), Some("abc123"));
        let rec = web[0].to_record();
        assert_eq!(
            (rec.kind.as_str(), rec.container_id.as_deref()),
            ("raised", Some("abc123"))
        );
        // Host series carry no container id.
        assert!(
            events
                .iter()
                .filter(|ev| !ev.series.starts_with("container."))
                .all(|ev| ev.container_id.is_none() && ev.signal == ev.series)
        );
        // Replay can address the same series in recorded intervals.
        let mut iv = interval(0, 1.0);
        iv.containers.push(container("abc123", "/web", 12.5));
        assert_eq!(metric_value(&iv, "container.web.cpu"), Some(Some(12.5)));
        assert_eq!(metric_value(&iv, "container.gone.cpu"), Some(None));
        assert_eq!(metric_value(&iv, "container.web.nope"), None);
        let mut db = container("def456", "db", 1.0);
        db.network = crate::model::Network::Host;
        iv.containers.push(db);
        assert_eq!(
            metric_value(&iv, "container.web.tcp_retrans"),
            Some(Some(3.0))
        );
        assert_eq!(metric_value(&iv, "container.db.tcp_retrans"), Some(None));
    }

    /// The watched per-container signals are the two detection derives plus exactly the
    /// `CONTAINER_SERIES` rows marked `watch`, each read through its row: a watched kernel
    /// counter needs no list of its own here.
    #[test]
    fn watched_container_signals_follow_the_series_rows() {
        let marked: Vec<&str> = CONTAINER_SERIES.iter().filter_map(|s| s.watch).collect();
        assert_eq!(CONTAINER_SIGNALS[..2], ["cpu", "runq_latency"]);
        assert_eq!(CONTAINER_SIGNALS[2..], marked[..]);
        for name in ["tcp_retrans", "tcp_resets", "abnormal_exits", "oom_kills"] {
            assert!(marked.contains(&name), "{name} not watched: {marked:?}");
        }
        let mut c = container("abc123", "web", 1.0);
        c.stats.oom_kills = 2;
        c.tcp_resets = 5;
        let mut iv = interval(0, 1.0);
        iv.containers.push(c);
        assert_eq!(
            metric_value(&iv, "container.web.oom_kills"),
            Some(Some(2.0))
        );
        assert_eq!(
            metric_value(&iv, "container.web.tcp_resets"),
            Some(Some(5.0))
        );
        assert_eq!(
            metric_value(&iv, "container.web.tcp_retrans"),
            Some(Some(3.0))
        );
        // An exported-only row is no detection signal.
        assert_eq!(metric_value(&iv, "container.web.forks"), None);
        let fed: Vec<(String, f64)> = container_values(&iv.containers[0])
            .map(|(k, value)| (WATCHED[k].0.to_string(), value))
            .collect();
        let signals: Vec<&str> = fed.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(signals, *CONTAINER_SIGNALS);
        assert!(fed.contains(&("oom_kills".to_string(), 2.0)), "{fed:?}");
    }

    /// The engine finds a series by its place (containers by label, series by slot, the last
    /// series moved into an expired one's place): under churn, a full table and id changes it
    /// feeds every value to the detector a plain table by name would, and raises, clears,
    /// expires and overflows exactly as that table does.
    #[test]
    fn series_found_by_place_behave_as_a_table_by_name() {
        series_behave_as_a_table_by_name(DetectorKind::Statistical, 1500);
        // The learned part too (forked with the rest), trained inline.
        series_behave_as_a_table_by_name(DetectorKind::Combined, 600);
    }

    fn series_behave_as_a_table_by_name(detector: DetectorKind, intervals: u64) {
        struct ByName {
            series: std::collections::BTreeMap<String, (SeriesDetector, u64, Option<String>)>,
            tick: u64,
            overflow: u64,
        }
        let cfg = DetectConfig {
            warmup: 20,
            max_series: 60,
            series_ttl: 4,
            detector,
            ..DetectConfig::default()
        };
        let p = Params::new(&cfg);
        let mut e = inline_engine(cfg.clone());
        let mut r = ByName {
            series: Default::default(),
            tick: 0,
            overflow: 0,
        };
        let (mut raised, mut cleared, mut shared) = (0, 0, 0);
        // As attribution does, most records share a name from one interval to the next (the
        // engine then finds them by the shared name); odd-numbered ones get a new copy each time.
        let names: Vec<Arc<str>> = (0..14u64).map(|n| Arc::from(format!("c{n}"))).collect();
        let twin_name: Arc<str> = Arc::from("/c3");
        for i in 0..intervals {
            let mut iv = interval(i, noisy(i));
            // 14 container names, each present in stretches, some recreated with a new id,
            // with spikes; 14 x 6 signals and the host's do not all fit in 60.
            for n in 0..14u64 {
                let h = (i / (7 + n)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60;
                if h % 4 == 0 {
                    continue;
                }
                let spike = if (i + 13 * n) % 97 == 0 { 50.0 } else { 0.0 };
                let mut c = container(
                    &format!("id{n}-{}", h % 2),
                    &format!("c{n}"),
                    noisy(i + n) + spike,
                );
                if n % 2 == 0 {
                    c.name = names[n as usize].clone();
                }
                c.stats.oom_kills = u64::from((i + n) % 211 == 0);
                c.tcp_retransmits = (noisy(i * 3 + n) as u64 % 7) * u64::from(spike > 0.0);
                c.runqueue_latency_us.count = (i + n) % 3;
                // "/c3" is labelled "c3" too: in some intervals its series are fed twice,
                // zero-only ones included (still sharing a detector).
                let twin = (n == 3 && i % 5 < 2).then(|| {
                    let mut t = c.clone();
                    t.name = twin_name.clone();
                    t.id = "twin3".into();
                    t.cpu_percent = if i % 10 == 0 { noisy(i + 77) } else { 0.0 };
                    t
                });
                iv.containers.push(c);
                iv.containers.extend(twin);
            }
            let mut got: Vec<(String, EventKind, Option<String>)> = e
                .observe_interval(&iv)
                .into_iter()
                .map(|ev| (ev.series, ev.kind, ev.container_id))
                .collect();
            // The same interval through the table by name.
            r.tick += 1;
            let mut want = Vec::new();
            let mut feed = |name: String, id: Option<&str>, value: f64, r: &mut ByName| {
                if !r.series.contains_key(&name) {
                    if r.series.len() >= 60 {
                        r.overflow += 1;
                        return;
                    }
                    r.series
                        .insert(name.clone(), (SeriesDetector::new(&p), 0, None));
                }
                let (det, last, cid) = r.series.get_mut(&name).expect("inserted");
                *last = r.tick;
                *cid = id.map(str::to_string);
                if let Some(kind) = det.update(&p, &Trainer::Inline, &name, value).event {
                    want.push((name, kind, cid.clone()));
                }
            };
            for_each_host_series(&iv, |name, value| {
                feed(name.to_string(), None, value, &mut r);
            });
            for c in &iv.containers {
                for (k, value) in container_values(c) {
                    let name = format!(
                        "container.{}.{}",
                        container_label(c).expect("named"),
                        WATCHED[k].0
                    );
                    feed(name, Some(&c.id), value, &mut r);
                }
            }
            let tick = r.tick;
            r.series.retain(|name, (det, last, cid)| {
                let keep = tick - *last < 4;
                if !keep && det.active() {
                    want.push((name.clone(), EventKind::Cleared, cid.clone()));
                }
                keep
            });
            got.sort_by(|a, b| a.0.cmp(&b.0));
            want.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got, want, "interval {i}");
            raised += got.iter().filter(|g| g.1 == EventKind::Raised).count();
            cleared += got.iter().filter(|g| g.1 == EventKind::Cleared).count();
            let names: Vec<&str> = e.series_states().map(|(n, _, _)| n).collect();
            assert!(
                names
                    .iter()
                    .copied()
                    .eq(r.series.keys().map(String::as_str)),
                "interval {i}"
            );
            assert_eq!(e.overflow(), r.overflow, "interval {i}");
            for info in e.series_detail() {
                let own = &r.series[info.name].0;
                assert_eq!(
                    (info.seen, info.state, info.score.to_bits(), info.active),
                    (own.seen(), own.state(), own.level().to_bits(), own.active()),
                    "{} at {i}",
                    info.name
                );
            }
            shared += e
                .tracked
                .iter()
                .filter(|t| matches!(t.det, Detector::Cohort(_)))
                .count();
        }
        // The comparison saw what it is about.
        assert!(
            raised > 5 && cleared > 5,
            "raised {raised} cleared {cleared}"
        );
        assert!(
            e.overflow() > 100 && e.expired() > 100,
            "{} {}",
            e.overflow(),
            e.expired()
        );
        // Series shared a detector (their zeros) before they left with a copy.
        assert!(shared > 1000, "{shared}");
    }

    #[test]
    fn container_churn_keeps_memory_bounded() {
        let ttl = 5;
        let mut e = inline_engine(DetectConfig {
            max_series: 40,
            series_ttl: ttl,
            detector: DetectorKind::Statistical,
            ..DetectConfig::default()
        });
        // 1000 short-lived containers, each alive for 3 intervals, 2 alive at a time.
        let mut peak = 0;
        for i in 0..3000u64 {
            let mut iv = interval(i, 5.0);
            for k in [i / 3, i / 3 + 1000] {
                iv.containers
                    .push(container(&format!("id{k}"), &format!("c{k}"), 1.0));
            }
            e.observe_interval(&iv);
            peak = peak.max(e.tracked_series());
        }
        // 5 host series + 2 containers x 5 signals, alive or within their TTL: bounded by
        // max_series, and old containers are dropped rather than filling the table.
        assert!(peak <= 40, "{peak}");
        assert!(e.expired() > 5000, "{}", e.expired());
        let s = e.summary();
        assert_eq!(s.series as usize, e.tracked_series());
        assert!(e.series_states().any(|(n, _, _)| n == "container.c999.cpu"));
        assert!(!e.series_states().any(|(n, _, _)| n == "container.c0.cpu"));
    }

    /// Detectors (a series' own, a cohort's shared one) that hold a learned part.
    fn learned_detectors(e: &DetectionEngine) -> usize {
        let own = e
            .tracked
            .iter()
            .filter(|t| matches!(&t.det, Detector::Own(d) if d.learned()))
            .count();
        own + e.cohorts.values().filter(|c| c.det.learned()).count()
    }

    fn without_learned(e: &DetectionEngine) -> Vec<&str> {
        e.tracked
            .iter()
            .filter(|t| !detector(&e.cohorts, t).learned())
            .map(|t| &*t.name)
            .collect()
    }

    #[test]
    fn learned_models_are_bounded_and_their_seats_come_back() {
        let max = 12;
        let mut e = inline_engine(DetectConfig {
            learned_max_series: max,
            series_ttl: 4,
            warmup: 20,
            ..combined()
        });
        let (mut refused_late, mut peak) = (false, 0);
        // Containers come and go, two or three alive at a time; some series start at zero
        // (cohorts) and leave them with a copy, which needs a seat of its own.
        for i in 0..600u64 {
            let mut iv = interval(i, noisy(i));
            for k in [i / 7, i / 11 + 500] {
                let cpu = if (i + k) % 5 < 2 { 0.0 } else { noisy(i + k) };
                iv.containers
                    .push(container(&format!("id{k}"), &format!("c{k}"), cpu));
            }
            let before = e.learned.refused();
            e.observe_interval(&iv);
            if i > 300 && e.learned.refused() > before {
                refused_late = true;
            }
            // Exact whichever way detectors were made, copied or dropped.
            let held = e.learned.held();
            assert_eq!(held, learned_detectors(&e), "interval {i}");
            assert!(held <= max as usize, "interval {i}: {held}");
            peak = peak.max(held);
            let s = e.summary();
            assert_eq!(s.statistical_only as usize, without_learned(&e).len());
        }
        // The budget filled, turned series away all along, and the seats of expired series
        // went to newer ones: a container of the last intervals has a learned model.
        assert_eq!(peak, max as usize);
        assert!(refused_late);
        assert!(e.expired() > 100, "{}", e.expired());
        let newest = e
            .tracked
            .iter()
            .filter(|t| detector(&e.cohorts, t).learned())
            .filter_map(|t| t.container.as_ref())
            .filter_map(|(label, _)| label.strip_prefix('c')?.parse::<u64>().ok())
            .max();
        assert!(newest.is_some_and(|k| k > 80), "{newest:?}");
    }

    #[test]
    fn the_hosts_series_take_the_seats_first() {
        let mut e = inline_engine(DetectConfig {
            learned_max_series: 5,
            ..combined()
        });
        let mut iv = interval(0, 5.0);
        iv.containers.push(container("a", "a", 1.0));
        e.observe_interval(&iv);
        let capped = without_learned(&e);
        assert!(!capped.is_empty());
        assert!(
            capped.iter().all(|n| n.starts_with("container.a.")),
            "{capped:?}"
        );
        assert_eq!(e.summary().statistical_only as usize, capped.len());
        // Statistical: no learned part is wanted, none is counted missing.
        let mut e = inline_engine(DetectConfig {
            learned_max_series: 0,
            detector: DetectorKind::Statistical,
            ..DetectConfig::default()
        });
        e.observe_interval(&iv);
        assert_eq!(e.summary().statistical_only, 0);
    }

    #[test]
    fn a_series_without_a_seat_is_judged_as_by_the_statistical_detector() {
        let run = |cfg: DetectConfig| {
            let mut e = inline_engine(cfg);
            let mut out = Vec::new();
            for i in 0..900u64 {
                let shift = if (500..560).contains(&i) { 60.0 } else { 0.0 };
                let mut iv = interval(i, noisy(i) + shift);
                iv.containers
                    .push(container("a", "a", noisy(i + 7) / 10.0 + shift));
                for ev in e.observe_interval(&iv) {
                    out.push((ev.kind, ev.series, ev.score.to_bits()));
                }
                let s = e.summary();
                out.push((
                    EventKind::Cleared,
                    format!("{} {} {}", s.warming_up, s.ready, s.fallback),
                    0,
                ));
            }
            (out, e.summary().statistical_only)
        };
        let (capped, statistical_only) = run(DetectConfig {
            learned_max_series: 0,
            warmup: 100,
            ..combined()
        });
        let (statistical, _) = run(DetectConfig {
            detector: DetectorKind::Statistical,
            warmup: 100,
            ..DetectConfig::default()
        });
        assert!(statistical_only > 5, "{statistical_only}");
        assert!(
            capped.iter().any(|(k, _, _)| *k == EventKind::Raised),
            "the shift raised nothing"
        );
        assert_eq!(capped, statistical);
        // And a seat changes the judgement (the comparison can tell them apart).
        let (seated, _) = run(DetectConfig {
            warmup: 100,
            ..combined()
        });
        assert_ne!(seated, statistical);
    }

    #[test]
    fn container_series_over_max_series_are_counted() {
        let mut e = inline_engine(DetectConfig {
            max_series: 7,
            detector: DetectorKind::Statistical,
            ..DetectConfig::default()
        });
        let mut iv = interval(0, 5.0);
        iv.containers.push(container("a", "a", 1.0));
        e.observe_interval(&iv);
        // 5 host series + 2 of the container's 6 signals; the other 4 overflow.
        assert_eq!(e.tracked_series(), 7);
        assert_eq!(e.overflow(), 4);
        assert_eq!(e.summary().series_overflow, 4);
    }

    #[test]
    fn expired_series_with_an_open_event_are_cleared() {
        let mut e = inline_engine(DetectConfig {
            warmup: 400,
            series_ttl: 3,
            detector: DetectorKind::Statistical,
            ..DetectConfig::default()
        });
        let mut raised = false;
        for i in 0..2010u64 {
            let mut iv = interval(i, noisy(i));
            let cpu = if i >= 2000 { 900.0 } else { noisy(i + 5) };
            iv.containers.push(container("x1", "x", cpu));
            raised |= e
                .observe_interval(&iv)
                .iter()
                .any(|ev| ev.series == "container.x.cpu" && ev.kind == EventKind::Raised);
        }
        assert!(raised);
        assert!(e.summary().open.iter().any(|n| n == "container.x.cpu"));
        // The container goes away: after the TTL its series is dropped and its event cleared.
        let mut cleared = Vec::new();
        for i in 2010..2014u64 {
            cleared.extend(e.observe_interval(&interval(i, noisy(i))));
        }
        let c: Vec<_> = cleared
            .iter()
            .filter(|ev| ev.series == "container.x.cpu")
            .collect();
        assert_eq!(c.len(), 1, "{cleared:?}");
        assert_eq!(c[0].kind, EventKind::Cleared);
        assert_eq!(c[0].container_id.as_deref(), Some("x1"));
        assert!(!e.summary().open.iter().any(|n| n == "container.x.cpu"));
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
                false,
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
