//! Detection engine: one streaming detector pipeline per metric series (constant memory, no
//! look-ahead), producing an anomaly score in [0, 1] per series per interval and raised/cleared
//! anomaly events.
//!
//! * [`stats`]: robust statistical detector (EW baselines, MAD scales, spike / level shift /
//!   new extreme), calibrated per series by [`calib`];
//! * [`learned`]: isolation forest over shingles, trained off the hot path and swapped in
//!   atomically;
//! * [`lifecycle`]: warming up / ready / fallback, onset shaping, k/m hysteresis;
//! * [`engine`]: the per-series pipeline and the [`DetectionEngine`] the daemon calls.

pub mod calib;
pub mod config;
pub mod engine;
pub mod learned;
pub mod lifecycle;
mod prefetch;
pub mod stats;

pub use config::{DetectConfig, DetectorKind};
pub use engine::{
    AnomalyEvent, Channels, DetectionEngine, FallbackChange, LearnedBudget, Params, SeriesDetector,
    SeriesInfo, Severity, Step,
};
pub use learned::Trainer;
pub use lifecycle::{EventKind, SeriesState};
